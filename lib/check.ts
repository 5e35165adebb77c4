// The checking vocabulary every public function uses, so that the same mistake gets the
// same error class and the same kind of message everywhere: TypeError for a wrong kind
// (not an object, not a number, an unknown option), RangeError for a bad value of the
// right kind (out of range, NaN where a finite number belongs).

export function describe(v: unknown): string {
  if (v === null) return 'null';
  if (v === undefined) return 'undefined';
  if (Array.isArray(v)) return 'an Array';
  if (ArrayBuffer.isView(v)) return `a ${v.constructor.name}`;
  if (typeof v === 'number') return String(v);
  if (typeof v === 'string') return `the string ${JSON.stringify(v)}`;
  if (typeof v === 'object') return `an object (${(v as object).constructor?.name ?? 'Object'})`;
  return `a ${typeof v}`;
}

// Spellings from TensorFlow, Keras and PyTorch that users type, mapped to the names this
// API uses. The first name that the function accepts is suggested; `note` explains a
// difference in meaning.
const FOREIGN: Record<string, { names: string[]; note?: string }> = {
  keep_dims: { names: ['keepDims'] },
  keepdims: { names: ['keepDims'] },
  keepdim: { names: ['keepDims'] },
  is_training: { names: ['isTraining', 'training'] },
  training: { names: ['isTraining'] },
  isTraining: { names: ['training'] },
  variance_epsilon: { names: ['epsilon'], note: "batchNormalization takes it as its 6th argument, varianceEpsilon" },
  varianceEpsilon: { names: ['epsilon'], note: 'batchNormalization takes it as its 6th argument' },
  eps: { names: ['epsilon'], note: 'batchNormalization takes it as its 6th argument, varianceEpsilon' },
  data_format: { names: ['dataFormat', 'axis'] },
  dataFormat: { names: ['axis'], note: "the layer's channel axis is `axis` (-1 = NHWC, 1 = NCHW)" },
  exponential_avg_factor: {
    names: ['exponentialAvgFactor', 'momentum'],
    note: "in BatchNormalization it is momentum with momentumKind 'factor'",
  },
  momentum: {
    names: ['exponentialAvgFactor'],
    note: "PyTorch's momentum is a factor: running = (1 − f)·running + f·batch; Keras' momentum is a decay, exponentialAvgFactor = 1 − momentum",
  },
  decay: { names: ['momentum'], note: "TF's decay is momentum with momentumKind 'decay'" },
  zero_debias: { names: ['zeroDebias'] },
  unbiased: { names: ['correction'], note: 'unbiased: true is correction: 1' },
  ddof: { names: ['correction'] },
  running_mean: { names: ['mean'] },
  moving_mean: { names: ['mean'] },
  running_var: { names: ['variance'] },
  moving_variance: { names: ['variance'] },
  num_features: { names: ['channels'] },
  affine: { names: ['center', 'scale'], note: 'affine: false is center: false, scale: false' },
  on_device: { names: ['onDevice'] },
};

/** Edit distance (insert, delete, substitute, swap adjacent), case-insensitive. */
function distance(a: string, b: string): number {
  a = a.toLowerCase();
  b = b.toLowerCase();
  const d: number[][] = Array.from({ length: a.length + 1 }, (_, i) => [i, ...new Array<number>(b.length).fill(0)]);
  for (let j = 1; j <= b.length; j++) d[0][j] = j;
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      d[i][j] = Math.min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) d[i][j] = Math.min(d[i][j], d[i - 2][j - 2] + 1);
    }
  }
  return d[a.length][b.length];
}

const camel = (s: string) => s.replace(/_([a-z])/g, (_, c: string) => c.toUpperCase());

/** What to say about an unknown key: a suggestion (near miss or foreign spelling), or nothing. */
export function suggest(key: string, allowed: readonly string[]): string {
  const foreign = Object.prototype.hasOwnProperty.call(FOREIGN, key) ? FOREIGN[key] : undefined;
  const hit = foreign?.names.find((n) => allowed.includes(n));
  if (hit) return `; did you mean '${hit}'?${foreign?.note ? ` (${foreign.note})` : ''}`;
  const c = camel(key);
  if (c !== key && allowed.includes(c)) return `; did you mean '${c}'?`;
  let best: string | undefined;
  let bestD = Infinity;
  for (const a of allowed) {
    const dd = distance(key, a);
    if (dd < bestD) { best = a; bestD = dd; }
  }
  if (best !== undefined && bestD <= Math.max(1, Math.min(2, Math.floor(best.length / 3)))) return `; did you mean '${best}'?`;
  return foreign?.note ? ` (${foreign.note})` : '';
}

/**
 * `options` of a public function: undefined or a plain object whose keys are all in
 * `allowed`. Returns it (or {}). An unknown key is a TypeError naming it, with a
 * suggestion for near misses and for TensorFlow / PyTorch spellings.
 */
export function checkOptions<T extends object>(fn: string, options: unknown, allowed: readonly string[], name = 'options'): T {
  if (options === undefined) return {} as T;
  if (options === null || typeof options !== 'object' || Array.isArray(options) || ArrayBuffer.isView(options)) {
    throw new TypeError(`${fn}: ${name} must be an object {${allowed.join(', ')}} or undefined, got ${describe(options)}`);
  }
  for (const key of Object.keys(options)) {
    if (!allowed.includes(key)) {
      throw new TypeError(`${fn}: unknown option ${name}.${key}${suggest(key, allowed)} (${name}: ${allowed.join(', ')})`);
    }
  }
  return options as T;
}

/** A boolean option; `dflt` when undefined. */
export function checkBoolean(fn: string, name: string, v: unknown, dflt: boolean): boolean {
  if (v === undefined) return dflt;
  if (typeof v !== 'boolean') throw new TypeError(`${fn}: ${name} must be a boolean, got ${describe(v)}`);
  return v;
}

export interface NumberRange {
  min?: number;
  max?: number;
  /** Must be an integer (TypeError otherwise, as for axes and shapes). */
  integer?: boolean;
}

function rangeText(r: NumberRange): string {
  const what = r.integer ? 'an integer' : 'a finite number';
  if (r.min !== undefined && r.max !== undefined) return `${what} in [${r.min}, ${r.max}]`;
  if (r.min !== undefined) return `${what} >= ${r.min}`;
  if (r.max !== undefined) return `${what} <= ${r.max}`;
  return what;
}

/**
 * A number: TypeError when it is not one (or not an integer where one is needed),
 * RangeError when NaN, infinite or outside [min, max]. `dflt` when undefined.
 */
export function checkNumber(fn: string, name: string, v: unknown, r: NumberRange = {}, dflt?: number): number {
  if (v === undefined && dflt !== undefined) return dflt;
  if (typeof v !== 'number') throw new TypeError(`${fn}: ${name} must be ${rangeText(r)}, got ${describe(v)}`);
  if (r.integer && Number.isFinite(v) && !Number.isInteger(v)) throw new TypeError(`${fn}: ${name} must be ${rangeText(r)}, got ${v}`);
  if (!Number.isFinite(v) || (r.min !== undefined && v < r.min) || (r.max !== undefined && v > r.max)) {
    throw new RangeError(`${fn}: ${name} must be ${rangeText(r)}, got ${v}`);
  }
  return v;
}

/** An integer (checkNumber with integer: true). */
export function checkInteger(fn: string, name: string, v: unknown, r: Omit<NumberRange, 'integer'> = {}, dflt?: number): number {
  return checkNumber(fn, name, v, { ...r, integer: true }, dflt);
}

/** One of a few strings: TypeError naming the choices. `dflt` when undefined. */
export function checkOneOf<T extends string>(fn: string, name: string, v: unknown, choices: readonly T[], dflt?: T): T {
  if (v === undefined && dflt !== undefined) return dflt;
  if (typeof v !== 'string' || !(choices as readonly string[]).includes(v)) {
    throw new TypeError(`${fn}: ${name} must be one of ${choices.map((c) => `'${c}'`).join(', ')}, got ${describe(v)}`);
  }
  return v as T;
}

/** An ε: a finite number >= 0 (TypeError for a non-number, RangeError for NaN, ∞, < 0). */
export function checkEpsilon(fn: string, name: string, eps: unknown): number {
  if (typeof eps !== 'number') throw new TypeError(`${fn}: ${name} must be a number, got ${describe(eps)}`);
  if (!Number.isFinite(eps) || eps < 0) throw new RangeError(`${fn}: ${name} must be a finite number >= 0, got ${eps}`);
  return eps;
}

/** The options each public function accepts (host and DeviceTensor paths alike). */
export const OPTION_KEYS = {
  moments: ['keepDims', 'correction', 'shift', 'backend', 'out', 'sync'],
  batchNormalization: ['backend', 'out'],
  sufficientStatistics: ['keepDims', 'backend'],
  finalizeMoments: ['correction'],
  fusedBatchNorm: ['mean', 'variance', 'epsilon', 'exponentialAvgFactor', 'dataFormat', 'axis', 'isTraining', 'backend', 'out', 'sync'],
  batchNormalizationGrad: ['isTraining', 'dataFormat', 'axis', 'backend', 'out', 'epsilon', 'sync'],
  explain: ['backend', 'onDevice', 'shape', 'axis', 'dataFormat', 'epsilon', 'isTraining'],
  layer: [
    'convention', 'axis', 'momentum', 'momentumKind', 'runningVariance', 'epsilon', 'zeroDebias',
    'initialMean', 'initialVariance', 'center', 'scale', 'channels', 'sync',
  ],
  forward: ['training'],
} as const satisfies Record<string, readonly string[]>;

/** keepDims and correction of moments / momentsAsync (host and device). */
export function checkMomentsOptions(fn: string, o: { keepDims?: unknown; correction?: unknown }): { keepDims: boolean; correction: number } {
  return {
    keepDims: checkBoolean(fn, 'options.keepDims', o.keepDims, false),
    correction: checkNumber(fn, 'options.correction', o.correction, { min: 0 }, 0),
  };
}
