// A batch-normalization layer with explicit training conventions.
import { backends } from './backend';
import { DeviceTensor } from './device';
import { checkBoolean, checkEpsilon, checkInteger, checkNumber, checkOneOf, checkOptions, OPTION_KEYS } from './check';
import { BackendError, prefixed } from './errors';
import { batchNormalization } from './ops';
import { checkTensor, describe, fmtShape, product, type Tensor } from './tensor';
import {
  batchNormalizationGrad, batchNormalizationGradAsync, fusedBatchNorm, fusedBatchNormAsync,
  type DeviceFusedBatchNormOptions, type DeviceFusedBatchNormResult,
} from './training';
import { checkCommunicator, type Communicator } from './sync/communicator';
import { syncFusedBatchNorm } from './sync/ops';
import {
  addVectors, DeviceSum, deviceIO, emaStep, MirroredVector, momentumStep, runningUpdate, UploadCache, type RunningUpdate,
} from './layer-device';

export type Convention = 'keras' | 'tf-fused' | 'pytorch' | 'tf-moments-ema';

/**
 * How running statistics are kept. 'decay': run = run·m + batch·(1 − m) (TF/Keras);
 * 'factor': run = (1 − m)·run + m·batch (PyTorch, TF's exponential_avg_factor), with
 * m = null meaning a cumulative average (PyTorch momentum=None). runningVariance says
 * whether the biased batch variance or the unbiased n/(n−1) one is averaged.
 * initialMean / initialVariance: the running values before the first training step.
 * zeroDebias: TF's ExponentialMovingAverage(zero_debias=True) — a biased average from 0,
 * divided by (1 − m^t). TF 1.x's default is zero_debias=False: shadows start at 0 and are
 * used as they are.
 */
export interface ConventionSpec {
  momentumKind: 'decay' | 'factor';
  momentum: number | null;
  runningVariance: 'biased' | 'unbiased';
  epsilon: number;
  zeroDebias: boolean;
  initialMean: number;
  initialVariance: number;
}

export const CONVENTIONS: Readonly<Record<Convention, Readonly<ConventionSpec>>> = {
  // tf.keras.layers.BatchNormalization: moving_mean_initializer zeros, moving_variance ones.
  keras: { momentumKind: 'decay', momentum: 0.99, runningVariance: 'biased', epsilon: 1e-3, zeroDebias: false, initialMean: 0, initialVariance: 1 },
  // FusedBatchNormV3 as Keras drives it (fused=True): exponential_avg_factor = 1 − 0.99.
  'tf-fused': { momentumKind: 'factor', momentum: 0.01, runningVariance: 'unbiased', epsilon: 1e-3, zeroDebias: false, initialMean: 0, initialVariance: 1 },
  // torch.nn.BatchNorm*d: running_mean zeros, running_var ones.
  pytorch: { momentumKind: 'factor', momentum: 0.1, runningVariance: 'unbiased', epsilon: 1e-5, zeroDebias: false, initialMean: 0, initialVariance: 1 },
  // The classic TF 1.x layer: ema = tf.train.ExponentialMovingAverage(decay=0.9) applied to
  // tf.nn.moments' tensors. Shadows of tensors are created as zeros (mean and variance
  // alike) and, with TF 1.x's default zero_debias=False, never debiased.
  'tf-moments-ema': { momentumKind: 'decay', momentum: 0.9, runningVariance: 'biased', epsilon: 1e-3, zeroDebias: false, initialMean: 0, initialVariance: 0 },
};

export interface BatchNormalizationOptions {
  /** Preset of the conventions below (default 'keras'). */
  convention?: Convention;
  /** Channel axis (default -1, or 1 for 'pytorch' — NCHW). */
  axis?: number;
  /** Momentum in the preset's momentumKind (decay or factor); null = cumulative average ('factor' only). */
  momentum?: number | null;
  momentumKind?: 'decay' | 'factor';
  runningVariance?: 'biased' | 'unbiased';
  epsilon?: number;
  /** TF's ExponentialMovingAverage(zero_debias=True) ('decay' only; default false). */
  zeroDebias?: boolean;
  /** Running values before the first training step (default: the preset's). */
  initialMean?: number;
  initialVariance?: number;
  /** Learn an offset beta (default true). */
  center?: boolean;
  /** Learn a scale gamma (default true). */
  scale?: boolean;
  /** Number of channels; when omitted, set by the first forward. */
  channels?: number;
  /**
   * Synchronized batch norm: training statistics of the whole batch across the
   * communicator's ranks (train with forwardAsync / backwardAsync). On a device layer the
   * communicator goes to the device ops, which decide whether they can exchange it.
   */
  sync?: Communicator;
}

/**
 * Plain, JSON-able layer state. Non-finite numbers in the vectors are written as the
 * strings 'NaN', 'Infinity' and '-Infinity' (JSON would turn them into null).
 */
export interface BatchNormalizationState {
  format: 'batchnorm-layer@1';
  convention: Convention | 'custom';
  spec: ConventionSpec;
  axis: number;
  center: boolean;
  scale: boolean;
  channels: number | null;
  gamma: number[] | null;
  beta: number[] | null;
  runningMean: number[] | null;
  runningVariance: number[] | null;
  /** Training steps taken (PyTorch's num_batches_tracked; TF EMA's step for zero debias). */
  steps: number;
  /** Per-channel count n of the last training batch (for biased ↔ unbiased conversion). */
  lastBatchCount: number | null;
  /** zeroDebias accumulators (the biased EMA), when zeroDebias. */
  emaMean: number[] | null;
  emaVariance: number[] | null;
}

interface Cache {
  x: Tensor | DeviceTensor;
  mean: Float32Array | DeviceTensor;
  invStd: Float32Array | DeviceTensor;
  training: boolean;
  /** The statistics came from every rank: backward must exchange too. */
  synced?: boolean;
}

/** A device forward's plan: the fused op's options and how the running statistics are updated. */
interface DeviceStep {
  options: DeviceFusedBatchNormOptions;
  update: RunningUpdate;
  /** The running update's share of the old value (the EMA of the biased running variance). */
  keep: number;
  training: boolean;
}

/** Frees the DeviceTensors a cache holds (the saved statistics of a device forward). */
function releaseCache(c: Cache | null): void {
  if (c?.mean instanceof DeviceTensor) c.mean.dispose();
  if (c?.invStd instanceof DeviceTensor) c.invStd.dispose();
}

function checkSpec(fn: string, s: ConventionSpec): void {
  checkOneOf(fn, 'options.momentumKind', s.momentumKind, ['decay', 'factor'] as const);
  if (s.momentum === null) {
    if (s.momentumKind !== 'factor') throw new RangeError(`${fn}: options.momentum null (a cumulative average) needs momentumKind 'factor'`);
  } else {
    checkNumber(fn, 'options.momentum', s.momentum, { min: 0, max: 1 });
  }
  checkOneOf(fn, 'options.runningVariance', s.runningVariance, ['biased', 'unbiased'] as const);
  checkEpsilon(fn, 'options.epsilon', s.epsilon);
  checkBoolean(fn, 'options.zeroDebias', s.zeroDebias, false);
  if (s.zeroDebias && s.momentumKind !== 'decay') throw new RangeError(`${fn}: options.zeroDebias needs momentumKind 'decay'`);
  checkNumber(fn, 'options.initialMean', s.initialMean);
  checkNumber(fn, 'options.initialVariance', s.initialVariance, { min: 0 });
}

/** JSON keeps these strings where it would turn NaN and ±Infinity into null. */
function encodeNumber(v: number): number {
  return (Number.isFinite(v) ? v : String(v)) as number;
}

const NON_FINITE: Readonly<Record<string, number>> = { NaN: NaN, Infinity: Infinity, '-Infinity': -Infinity };

/** A state's number array: numbers (or the strings state() writes for NaN/±Infinity), C of them. */
function stateVector(fn: string, name: string, a: unknown, C: number, nonNegative: boolean): number[] | null {
  if (a === null || a === undefined) return null;
  if (!Array.isArray(a)) throw new TypeError(`${fn}: state.${name} must be an array of ${C} numbers or null, got ${describe(a)}`);
  if (a.length !== C) throw new RangeError(`${fn}: state.${name} has ${a.length} elements but state.channels is ${C}`);
  return a.map((v, i) => {
    const x = typeof v === 'number' ? v : typeof v === 'string' && Object.prototype.hasOwnProperty.call(NON_FINITE, v) ? NON_FINITE[v] : undefined;
    if (x === undefined) throw new TypeError(`${fn}: state.${name}[${i}] must be a number, got ${describe(v)}`);
    if (nonNegative && x < 0) throw new RangeError(`${fn}: state.${name}[${i}] = ${x} is negative`);
    return x;
  });
}

/** Every field of a state checked (errors name the field); number arrays decoded. */
function checkState(fn: string, state: unknown): BatchNormalizationState {
  if (state === null || typeof state !== 'object' || Array.isArray(state)) {
    throw new TypeError(`${fn}: state must be a batchnorm layer state object, got ${describe(state)}`);
  }
  const s = state as Record<string, unknown>;
  if (s.format !== 'batchnorm-layer@1') throw new TypeError(`${fn}: not a batchnorm layer state (format 'batchnorm-layer@1'), got format ${describe(s.format)}`);
  const conv = s.convention;
  if (conv !== 'custom' && (typeof conv !== 'string' || !Object.prototype.hasOwnProperty.call(CONVENTIONS, conv))) {
    throw new TypeError(`${fn}: state.convention must be one of ${Object.keys(CONVENTIONS).map((k) => `'${k}'`).join(', ')} or 'custom', got ${describe(conv)}`);
  }
  if (s.spec === null || typeof s.spec !== 'object') throw new TypeError(`${fn}: state.spec must be an object, got ${describe(s.spec)}`);
  const sp = s.spec as ConventionSpec;
  const spec: ConventionSpec = {
    momentumKind: sp.momentumKind, momentum: sp.momentum, runningVariance: sp.runningVariance, epsilon: sp.epsilon, zeroDebias: sp.zeroDebias,
    // States written before the initial values were part of the spec started every
    // convention at mean 0, variance 1; they load with those values.
    initialMean: sp.initialMean ?? 0, initialVariance: sp.initialVariance ?? 1,
  };
  if (typeof spec.zeroDebias !== 'boolean') throw new TypeError(`${fn}: state.spec.zeroDebias must be a boolean, got ${describe(spec.zeroDebias)}`);
  checkSpec(`${fn}: state.spec`, spec);
  if (typeof s.axis !== 'number' || !Number.isInteger(s.axis)) throw new TypeError(`${fn}: state.axis must be an integer, got ${describe(s.axis)}`);
  if (typeof s.center !== 'boolean') throw new TypeError(`${fn}: state.center must be a boolean, got ${describe(s.center)}`);
  if (typeof s.scale !== 'boolean') throw new TypeError(`${fn}: state.scale must be a boolean, got ${describe(s.scale)}`);
  const C = s.channels;
  if (C !== null && (typeof C !== 'number' || !Number.isSafeInteger(C) || C < 1)) {
    throw new TypeError(`${fn}: state.channels must be a positive integer or null, got ${describe(C)}`);
  }
  if (typeof s.steps !== 'number' || !Number.isSafeInteger(s.steps) || s.steps < 0) {
    throw new TypeError(`${fn}: state.steps must be a non-negative integer, got ${describe(s.steps)}`);
  }
  const n = s.lastBatchCount;
  if (n !== null && (typeof n !== 'number' || !Number.isSafeInteger(n) || n < 2)) {
    throw new TypeError(`${fn}: state.lastBatchCount must be an integer >= 2 or null, got ${describe(n)}`);
  }
  const vectors = { gamma: false, beta: false, runningMean: false, runningVariance: true, emaMean: false, emaVariance: true } as const;
  const out = {
    format: 'batchnorm-layer@1', convention: conv as Convention | 'custom', spec, axis: s.axis, center: s.center, scale: s.scale,
    channels: C as number | null, steps: s.steps, lastBatchCount: n as number | null,
  } as BatchNormalizationState;
  for (const [name, nonNegative] of Object.entries(vectors) as [keyof typeof vectors, boolean][]) {
    out[name] = C === null ? null : stateVector(fn, name, s[name], C, nonNegative);
  }
  if (C !== null && (out.runningMean === null || out.runningVariance === null)) {
    throw new TypeError(`${fn}: state.runningMean and state.runningVariance are required when state.channels is set`);
  }
  return out;
}

/**
 * Batch normalization over every axis but the channel axis, with learnable gamma/beta
 * and running statistics kept by an explicit convention.
 */
export class BatchNormalization {
  readonly convention: Convention | 'custom';
  readonly spec: Readonly<ConventionSpec>;
  readonly axis: number;
  readonly center: boolean;
  readonly scale: boolean;
  private C: number | null = null;
  private gamma: Float32Array | null = null;
  private beta: Float32Array | null = null;
  /** dgamma/dbeta: host arrays, plus the device sum of the passes since gradients() was read. */
  private dGamma: DeviceSum<DeviceTensor> | null = null;
  private dBeta: DeviceSum<DeviceTensor> | null = null;
  /** Running statistics: host arrays with a device twin on the device; read() brings the host copy up to date. */
  private runMean: MirroredVector<DeviceTensor> | null = null;
  private runVar: MirroredVector<DeviceTensor> | null = null;
  /** Device copies of gamma, beta and the constants of the vector updates, uploaded when their values change. */
  private readonly uploads = {
    gamma: new UploadCache(deviceIO), beta: new UploadCache(deviceIO),
    zero: new UploadCache(deviceIO), one: new UploadCache(deviceIO),
  };
  private emaMean: Float64Array | null = null;
  private emaVar: Float64Array | null = null;
  private steps = 0;
  private lastCount: number | null = null;
  private cache: Cache | null = null;
  private onDevice = false;
  private readonly sync: Communicator | null;

  constructor(options?: BatchNormalizationOptions) {
    const fn = 'new BatchNormalization';
    const o = checkOptions<BatchNormalizationOptions>(fn, options, OPTION_KEYS.layer);
    const conv = checkOneOf(fn, 'options.convention', o.convention, Object.keys(CONVENTIONS) as Convention[], 'keras');
    const preset = CONVENTIONS[conv];
    const spec: ConventionSpec = {
      momentumKind: o.momentumKind ?? preset.momentumKind,
      momentum: o.momentum === undefined ? preset.momentum : o.momentum,
      runningVariance: o.runningVariance ?? preset.runningVariance,
      epsilon: o.epsilon ?? preset.epsilon,
      zeroDebias: o.zeroDebias ?? preset.zeroDebias,
      initialMean: o.initialMean ?? preset.initialMean,
      initialVariance: o.initialVariance ?? preset.initialVariance,
    };
    checkSpec(fn, spec);
    const custom = (Object.keys(spec) as (keyof ConventionSpec)[]).some((k) => spec[k] !== preset[k]);
    this.convention = custom ? 'custom' : conv;
    this.spec = Object.freeze(spec);
    this.axis = checkInteger(fn, 'options.axis', o.axis, {}, conv === 'pytorch' ? 1 : -1);
    this.center = checkBoolean(fn, 'options.center', o.center, true);
    this.scale = checkBoolean(fn, 'options.scale', o.scale, true);
    if (o.channels !== undefined) this.build(checkInteger(fn, 'options.channels', o.channels, { min: 1 }));
    this.sync = o.sync === undefined ? null : checkCommunicator(fn, 'options.sync', o.sync);
  }

  private build(C: number): void {
    // The vectors are replaced: their device copies go without being read.
    this.runMean?.discard();
    this.runVar?.discard();
    this.dGamma?.discard();
    this.dBeta?.discard();
    this.C = C;
    this.gamma = this.scale ? new Float32Array(C).fill(1) : null;
    this.beta = this.center ? new Float32Array(C) : null;
    const add = (a: DeviceTensor, b: DeviceTensor) => addVectors(a, b, this.constant('zero', 0), this.constant('one', 1));
    this.dGamma = this.scale ? new DeviceSum(new Float32Array(C), deviceIO, add) : null;
    this.dBeta = this.center ? new DeviceSum(new Float32Array(C), deviceIO, add) : null;
    this.runMean = new MirroredVector(new Float32Array(C).fill(this.spec.initialMean), deviceIO);
    this.runVar = new MirroredVector(new Float32Array(C).fill(this.spec.initialVariance), deviceIO);
    if (this.spec.zeroDebias) {
      this.emaMean = new Float64Array(C);
      this.emaVar = new Float64Array(C);
    }
  }

  private channelAxis(fn: string, x: { shape: readonly number[] }): number {
    const rank = x.shape.length;
    if (rank < 2) throw new RangeError(`${fn}: x must have rank >= 2, got shape ${fmtShape(x.shape)}`);
    const ax = this.axis < 0 ? this.axis + rank : this.axis;
    if (ax < 0 || ax >= rank) throw new RangeError(`${fn}: axis ${this.axis} is out of range for x of shape ${fmtShape(x.shape)}`);
    const C = x.shape[ax];
    if (C === 0) throw new RangeError(`${fn}: x has 0 channels on axis ${this.axis} (shape ${fmtShape(x.shape)})`);
    if (this.C === null) this.build(C);
    else if (C !== this.C) throw new RangeError(`${fn}: x has ${C} channels on axis ${this.axis}; the layer has ${this.C}`);
    return ax;
  }

  /**
   * Keeps the layer's work on the GPU: forward() and backward() (and their Async twins)
   * then take and return DeviceTensors (cuDNN's fused training forward and backward where
   * it applies, our CUDA kernels otherwise). The running statistics move to the device
   * (uploaded here, or at the first forward when the channel count is not known yet) and
   * the fused training op updates them there; their host arrays are brought up to date —
   * one download — when read (runningStatistics(), state(), toHost()). dgamma/dbeta are
   * summed on the device and downloaded when gradients() is read. gamma and beta stay
   * host arrays that optimizers update in place; a step uploads them (C floats each) when
   * they changed. Only TF's zero-debiased average (zeroDebias) keeps its update on the
   * host: it downloads the batch statistics each training step. Throws BackendError
   * (ERR_BACKEND_UNAVAILABLE, with the reason) when the CUDA backend is unavailable.
   */
  toDevice(): this {
    const cuda = backends().find((b) => b.name === 'cuda');
    if (!cuda?.available) {
      throw new BackendError(`BatchNormalization.toDevice: backend 'cuda' is unavailable: ${cuda?.reason ?? 'unknown'}`, 'ERR_BACKEND_UNAVAILABLE');
    }
    this.onDevice = true;
    this.runMean?.device();
    this.runVar?.device();
    return this;
  }

  /**
   * Back to host tensors (the default): the running statistics and pending gradient sums
   * are downloaded and the layer's device memory is freed (except the last device
   * forward's saved statistics, kept for its backward until the next forward).
   */
  toHost(): this {
    this.runMean?.release();
    this.runVar?.release();
    this.dGamma?.read();
    this.dBeta?.read();
    for (const u of Object.values(this.uploads)) u.release();
    this.onDevice = false;
    return this;
  }

  /** True after toDevice(). */
  get isOnDevice(): boolean {
    return this.onDevice;
  }

  /**
   * Training: normalizes with the batch statistics and updates the running ones.
   * Inference: normalizes with the running statistics. After toDevice(), x and the
   * result are DeviceTensors.
   */
  forward(x: DeviceTensor, options?: { training?: boolean }): DeviceTensor;
  forward(x: Tensor, options?: { training?: boolean }): Tensor;
  forward(x: Tensor | DeviceTensor, options?: { training?: boolean }): Tensor | DeviceTensor {
    const fn = 'BatchNormalization.forward';
    const { x: xt, training } = this.checkForward(fn, x, options);
    if (training && this.sync) throw new TypeError(`${fn}: the layer synchronizes its statistics (options.sync); train with forwardAsync`);
    try {
      return this.forwardChecked(fn, xt, training);
    } catch (e) {
      throw prefixed(fn, e);
    }
  }

  /** forward's arguments checked: x on the layer's side (host or device), options.training. */
  private checkForward(fn: string, x: unknown, options: unknown): { x: Tensor | DeviceTensor; training: boolean } {
    if (typeof options === 'boolean') {
      throw new TypeError(`${fn}: options must be an object, got ${options}; write forward(x, {training: ${options}})`);
    }
    const o = checkOptions<{ training?: boolean }>(fn, options, OPTION_KEYS.forward);
    const training = checkBoolean(fn, 'options.training', o.training, false);
    if ((x instanceof DeviceTensor) !== this.onDevice) {
      throw new TypeError(this.onDevice
        ? `${fn}: the layer is on the device (toDevice()); x must be a DeviceTensor, got ${describe(x)}`
        : `${fn}: x is a DeviceTensor; call toDevice() on the layer first`);
    }
    if (x instanceof DeviceTensor) {
      x.handle(fn, 'x');
      return { x, training };
    }
    return { x: checkTensor(fn, 'x', x), training };
  }

  /** The per-channel count of a training batch, checked (RangeError for one value per channel). */
  private trainingCount(fn: string, x: { shape: readonly number[] }): number {
    const n = product(x.shape) / this.C!;
    if (n <= 1) {
      throw new RangeError(`${fn}: training needs more than 1 value per channel, got x of shape ${fmtShape(x.shape)} (as PyTorch)`);
    }
    return n;
  }

  private forwardChecked(fn: string, x: Tensor | DeviceTensor, training: boolean): Tensor | DeviceTensor {
    const ax = this.channelAxis(fn, x);
    const n = training ? this.trainingCount(fn, x) : 0;
    if (training) {
      // A failed training forward leaves nothing to differentiate.
      releaseCache(this.cache);
      this.cache = null;
    }
    if (x instanceof DeviceTensor) {
      const step = this.deviceStep(ax, training);
      const r = fusedBatchNorm(x, this.deviceParam('gamma'), this.deviceParam('beta'), step.options);
      let stats: [Float32Array, Float32Array] | null = null;
      if (training && step.update === 'host') {
        // Only TF's zero-debiased average brings the batch statistics to the host.
        try {
          stats = [r.batchMean.download(), this.runningSource(r).download()];
        } catch (e) {
          for (const t of Object.values(r) as DeviceTensor[]) t.dispose();
          throw e;
        }
      }
      return this.finishDevice(x, r, step, n, stats, false);
    }
    const eps = this.spec.epsilon;
    const ps = x.shape.slice(ax).map((d, i) => (i === 0 ? d : 1));
    if (!training) {
      const rm = this.runMean!.read();
      const rv = this.runVar!.read();
      const params = [{ data: rm, shape: ps }, { data: rv, shape: ps },
        this.beta ? { data: this.beta, shape: ps } : null, this.gamma ? { data: this.gamma, shape: ps } : null] as const;
      const y = batchNormalization(x, ...params, eps);
      releaseCache(this.cache);
      this.cache = { x, mean: rm.slice(), invStd: Float32Array.from(rv, (v) => 1 / Math.sqrt(v + eps)), training: false };
      return y;
    }
    const r = fusedBatchNorm(x, this.gamma, this.beta, { axis: ax, epsilon: eps, isTraining: true });
    this.updateRunning(r.batchMean.data, this.spec.runningVariance === 'biased' ? r.batchVarianceBiased.data : r.batchVariance.data);
    this.lastCount = n;
    this.cache = { x, mean: r.savedMean.data, invStd: r.savedInvStd.data, training: true };
    return r.y;
  }

  /** The batch variance the running variance averages: biased or Bessel-corrected, as the convention says. */
  private runningSource<T>(r: { batchVariance: T; batchVarianceBiased: T }): T {
    return this.spec.runningVariance === 'biased' ? r.batchVarianceBiased : r.batchVariance;
  }

  /** A device-side operand: gamma/beta uploaded when changed on a device layer; the host array otherwise. */
  private deviceParam(name: 'gamma' | 'beta'): DeviceTensor | Float32Array | null {
    const host = this[name];
    if (!host) return null;
    return this.onDevice ? this.uploads[name].get(host) : host;
  }

  /** A one-element device vector of a constant of the vector updates. */
  private constant(name: 'zero' | 'one', v: number): DeviceTensor {
    return this.uploads[name].get(Float32Array.of(v));
  }

  /**
   * The fused op's options for a device forward. Inference: the running statistics (device
   * copies). Training: they go in with the convention's factor, and the op writes the
   * updated ones — except for the host update, which starts from the batch statistics.
   */
  private deviceStep(ax: number, training: boolean): DeviceStep {
    const update = runningUpdate(this.spec);
    const { keep, factor } = momentumStep(this.spec, this.steps + 1);
    const options: DeviceFusedBatchNormOptions = { axis: ax, epsilon: this.spec.epsilon, isTraining: training };
    if (!training || update !== 'host') {
      options.mean = this.runMean!.device();
      options.variance = this.runVar!.device();
    }
    if (training && update !== 'host') options.exponentialAvgFactor = factor;
    return { options, update, keep, training };
  }

  /**
   * After a device forward's op: the running statistics take the op's outputs (or the
   * host update runs on the downloaded batch statistics), the saved statistics become the
   * backward's cache, and every other output is freed. On failure every output is freed
   * and the layer is unchanged.
   */
  private finishDevice(
    x: DeviceTensor, r: DeviceFusedBatchNormResult, step: DeviceStep, n: number | null,
    stats: readonly [Float32Array, Float32Array] | null, synced: boolean,
  ): DeviceTensor {
    const all = Object.values(r) as DeviceTensor[];
    const kept = new Set<DeviceTensor>([r.y, r.savedMean, r.savedInvStd]);
    try {
      if (step.training && stats) {
        this.updateRunning(stats[0], stats[1]);
      } else if (step.training) {
        const variance = step.update === 'op' ? r.runningVariance
          : emaStep(this.runVar!.device(), r.batchVarianceBiased, this.constant('zero', 0), step.keep);
        kept.add(r.runningMean).add(variance);
        this.runMean!.setDevice(r.runningMean);
        this.runVar!.setDevice(variance);
        this.steps++;
      }
    } catch (e) {
      for (const t of all) t.dispose();
      throw e;
    }
    for (const t of all) if (!kept.has(t)) t.dispose();
    if (step.training) this.lastCount = n;
    releaseCache(this.cache);
    this.cache = { x, mean: r.savedMean, invStd: r.savedInvStd, training: step.training, synced };
    return r.y;
  }

  private updateRunning(mean: Float32Array, variance: Float32Array): void {
    this.steps++;
    const s = this.spec;
    const rm = this.runMean!.read();
    const rv = this.runVar!.read();
    if (s.zeroDebias) {
      // TF assign_moving_average(zero_debias=True): biased EMA from 0, divided by 1 − m^t.
      const m = s.momentum!;
      const debias = 1 - m ** this.steps;
      for (let c = 0; c < rm.length; c++) {
        this.emaMean![c] = this.emaMean![c] * m + mean[c] * (1 - m);
        this.emaVar![c] = this.emaVar![c] * m + variance[c] * (1 - m);
        rm[c] = this.emaMean![c] / debias;
        rv[c] = this.emaVar![c] / debias;
      }
    } else {
      // decay m keeps m of the old value; factor f takes f of the new one.
      const { keep } = momentumStep(s, this.steps);
      for (let c = 0; c < rm.length; c++) {
        rm[c] = rm[c] * keep + mean[c] * (1 - keep);
        rv[c] = rv[c] * keep + variance[c] * (1 - keep);
      }
    }
    this.runMean!.hostWritten();
    this.runVar!.hostWritten();
  }

  /**
   * Gradient of the last forward: returns dx and adds dgamma/dbeta to gradients().
   * After a training forward the batch statistics depend on x (training-mode gradient);
   * after an inference forward they are constants.
   */
  backward(dy: DeviceTensor): DeviceTensor;
  backward(dy: Tensor): Tensor;
  backward(dy: Tensor | DeviceTensor): Tensor | DeviceTensor {
    const fn = 'BatchNormalization.backward';
    const c = this.cache;
    if (!c) throw new RangeError(`${fn}: no forward pass to differentiate; call forward first`);
    if (c.synced) throw new TypeError(`${fn}: the forward synchronized its statistics (options.sync); use backwardAsync`);
    if (!(dy instanceof DeviceTensor)) dy = checkTensor(fn, 'dy', dy);
    try {
      return this.backwardChecked(fn, c, dy);
    } catch (e) {
      throw prefixed(fn, e);
    }
  }

  private backwardChecked(fn: string, c: Cache, dy: Tensor | DeviceTensor): Tensor | DeviceTensor {
    const saved = { mean: c.mean, invStd: c.invStd };
    if (c.x instanceof DeviceTensor) {
      if (!(dy instanceof DeviceTensor)) throw new TypeError(`${fn}: the forward ran on the device; dy must be a DeviceTensor`);
      const g = batchNormalizationGrad(dy, c.x, this.deviceParam('gamma'), saved as { mean: DeviceTensor; invStd: DeviceTensor },
        { axis: this.axis, isTraining: c.training, epsilon: this.spec.epsilon });
      return this.accumulateDevice(g);
    }
    if (dy instanceof DeviceTensor) throw new TypeError(`${fn}: the forward ran on the host; dy must be a host tensor`);
    const g = batchNormalizationGrad(dy, c.x, this.gamma, saved as { mean: Float32Array; invStd: Float32Array },
      { axis: this.axis, isTraining: c.training });
    this.accumulate(g.dscale.data, g.doffset.data);
    return g.dx;
  }

  /**
   * forward() that may wait: on the device, the fused op runs off the JS thread
   * (fusedBatchNormAsync). With options.sync a training forward normalizes with the
   * statistics of every rank's batch; otherwise the same as forward().
   */
  async forwardAsync(x: DeviceTensor, options?: { training?: boolean }): Promise<DeviceTensor>;
  async forwardAsync(x: Tensor, options?: { training?: boolean }): Promise<Tensor>;
  async forwardAsync(x: Tensor | DeviceTensor, options: { training?: boolean } = {}): Promise<Tensor | DeviceTensor> {
    const fn = 'BatchNormalization.forwardAsync';
    if (x instanceof DeviceTensor || this.onDevice) {
      const { x: xd, training } = this.checkForward(fn, x, options);
      try {
        return await this.forwardDeviceAsync(fn, xd as DeviceTensor, training);
      } catch (e) {
        throw prefixed(fn, e);
      }
    }
    if (!this.sync || !(options && typeof options === 'object' && options.training === true)) return this.forward(x, options);
    const ax = this.channelAxis(fn, x);
    const { result: r, count } = await syncFusedBatchNorm(fn, x, this.gamma, this.beta,
      { axis: ax, epsilon: this.spec.epsilon, isTraining: true, sync: this.sync });
    if (count <= 1) throw new RangeError(`${fn}: training needs more than 1 value per channel over all ranks, got ${count} (as PyTorch)`);
    releaseCache(this.cache);
    this.updateRunning(r.batchMean.data, this.runningSource(r).data);
    this.lastCount = count;
    this.cache = { x, mean: r.savedMean.data, invStd: r.savedInvStd.data, training: true, synced: true };
    return r.y;
  }

  /**
   * The device forward off the JS thread. With options.sync a training step passes the
   * communicator to the op, which decides whether it can exchange device statistics.
   */
  private async forwardDeviceAsync(fn: string, x: DeviceTensor, training: boolean): Promise<DeviceTensor> {
    const ax = this.channelAxis(fn, x);
    const synced = training && this.sync !== null;
    let n: number | null = synced ? 0 : training ? this.trainingCount(fn, x) : 0;
    if (training) {
      releaseCache(this.cache);
      this.cache = null;
    }
    const step = this.deviceStep(ax, training);
    let r: DeviceFusedBatchNormResult;
    if (synced) {
      const out = await syncFusedBatchNorm(fn, x, this.deviceParam('gamma'), this.deviceParam('beta'), { ...step.options, sync: this.sync! });
      r = out.result as DeviceFusedBatchNormResult;
      // Through NCCL the whole batch's count stays on the device (null): the op has the
      // statistics, and the layer records no lastBatchCount for the step.
      n = out.count;
      if (n !== null && n <= 1) {
        for (const t of Object.values(r) as DeviceTensor[]) t.dispose();
        throw new RangeError(`${fn}: training needs more than 1 value per channel over all ranks, got ${n} (as PyTorch)`);
      }
    } else {
      r = await fusedBatchNormAsync(x, this.deviceParam('gamma'), this.deviceParam('beta'), step.options);
    }
    let stats: [Float32Array, Float32Array] | null = null;
    if (training && step.update === 'host') {
      try {
        stats = [await r.batchMean.downloadAsync(), await this.runningSource(r).downloadAsync()];
      } catch (e) {
        for (const t of Object.values(r) as DeviceTensor[]) t.dispose();
        throw e;
      }
    }
    return this.finishDevice(x, r, step, n, stats, synced);
  }

  /**
   * backward() that may wait: on the device, off the JS thread (batchNormalizationGradAsync);
   * after a synchronized forward, dx of the whole batch's statistics.
   */
  async backwardAsync(dy: DeviceTensor): Promise<DeviceTensor>;
  async backwardAsync(dy: Tensor): Promise<Tensor>;
  async backwardAsync(dy: Tensor | DeviceTensor): Promise<Tensor | DeviceTensor> {
    const fn = 'BatchNormalization.backwardAsync';
    const c = this.cache;
    if (c?.x instanceof DeviceTensor) {
      if (!(dy instanceof DeviceTensor)) throw new TypeError(`${fn}: the forward ran on the device; dy must be a DeviceTensor, got ${describe(dy)}`);
      try {
        const g = await batchNormalizationGradAsync(dy, c.x, this.deviceParam('gamma'), { mean: c.mean as DeviceTensor, invStd: c.invStd as DeviceTensor },
          { axis: this.axis, isTraining: c.training, epsilon: this.spec.epsilon, ...(c.synced ? { sync: this.sync! } : {}) });
        return this.accumulateDevice(g);
      } catch (e) {
        throw prefixed(fn, e);
      }
    }
    if (!c?.synced) return this.backward(dy as Tensor);
    const g = await batchNormalizationGradAsync(dy as Tensor, c.x as Tensor, this.gamma, { mean: c.mean as Float32Array, invStd: c.invStd as Float32Array },
      { axis: this.axis, isTraining: true, sync: this.sync! });
    this.accumulate(g.dscale.data, g.doffset.data);
    return g.dx;
  }

  private accumulate(dscale: Float32Array, doffset: Float32Array): void {
    if (this.dGamma) {
      const h = this.dGamma.read();
      for (let i = 0; i < this.C!; i++) h[i] += dscale[i];
    }
    if (this.dBeta) {
      const h = this.dBeta.read();
      for (let i = 0; i < this.C!; i++) h[i] += doffset[i];
    }
  }

  /** A device backward's dscale/doffset join the device gradient sums; returns dx (freed too on failure). */
  private accumulateDevice(g: { dx: DeviceTensor; dscale: DeviceTensor; doffset: DeviceTensor }): DeviceTensor {
    try {
      try {
        if (this.dGamma) this.dGamma.push(g.dscale);
        else g.dscale.dispose();
      } finally {
        if (this.dBeta) this.dBeta.push(g.doffset);
        else g.doffset.dispose();
      }
    } catch (e) {
      g.dx.dispose();
      throw e;
    }
    return g.dx;
  }

  /** The learnable parameters (live arrays: an optimizer may update them in place). */
  parameters(): { gamma: Float32Array | null; beta: Float32Array | null } {
    return { gamma: this.gamma, beta: this.beta };
  }

  /**
   * Accumulated gradients of gamma and beta (live arrays). On the device the backward
   * passes add on the GPU; this call downloads their sum into the arrays, so read it after
   * backward (arrays kept from an earlier call see later passes only after another call).
   */
  gradients(): { gamma: Float32Array | null; beta: Float32Array | null } {
    return { gamma: this.dGamma?.read() ?? null, beta: this.dBeta?.read() ?? null };
  }

  zeroGrad(): void {
    this.dGamma?.zero();
    this.dBeta?.zero();
  }

  /** Running statistics (copies; on the device, downloaded when the device copy is newer). */
  runningStatistics(): { mean: Float32Array | null; variance: Float32Array | null } {
    return { mean: this.runMean?.read().slice() ?? null, variance: this.runVar?.read().slice() ?? null };
  }

  /**
   * The layer's state as plain JSON-able data. Non-finite statistics (a diverged model) are
   * written as the strings 'NaN', 'Infinity' and '-Infinity', which JSON keeps (it would
   * turn the numbers into null); loadState reads them back as the numbers.
   */
  state(): BatchNormalizationState {
    const arr = (a: ArrayLike<number> | null | undefined) => (a ? Array.from(a, encodeNumber) : null);
    return {
      format: 'batchnorm-layer@1', convention: this.convention, spec: { ...this.spec }, axis: this.axis,
      center: this.center, scale: this.scale, channels: this.C,
      gamma: arr(this.gamma), beta: arr(this.beta), runningMean: arr(this.runMean?.read()), runningVariance: arr(this.runVar?.read()),
      steps: this.steps, lastBatchCount: this.lastCount, emaMean: arr(this.emaMean), emaVariance: arr(this.emaVar),
    };
  }

  /** Restores a state() (of this or another process); shapes must match the layer's options. */
  loadState(state: BatchNormalizationState): void {
    const fn = 'BatchNormalization.loadState';
    const st = checkState(fn, state);
    for (const k of Object.keys(this.spec) as (keyof ConventionSpec)[]) {
      if (st.spec[k] !== this.spec[k]) {
        throw new RangeError(`${fn}: state.spec.${k} is ${describe(st.spec[k])} but the layer's is ${describe(this.spec[k])}; convert it with BatchNormalization.convertState`);
      }
    }
    if (st.center !== this.center || st.scale !== this.scale || st.axis !== this.axis) {
      throw new RangeError(`${fn}: state has center/scale/axis ${st.center}/${st.scale}/${st.axis}, the layer ${this.center}/${this.scale}/${this.axis}`);
    }
    if (st.channels === null) {
      this.C = null;
      this.steps = st.steps;
      this.lastCount = st.lastBatchCount;
      return;
    }
    const need = (name: string, a: number[] | null, required: boolean) => {
      if (required && a === null) throw new TypeError(`${fn}: state.${name} is required by this layer`);
      return required ? a : null;
    };
    const gamma = need('gamma', st.gamma, this.scale);
    const beta = need('beta', st.beta, this.center);
    const em = need('emaMean', st.emaMean, this.spec.zeroDebias);
    const ev = need('emaVariance', st.emaVariance, this.spec.zeroDebias);
    this.build(st.channels);
    if (gamma) this.gamma!.set(gamma);
    if (beta) this.beta!.set(beta);
    this.runMean!.host.set(st.runningMean!);
    this.runVar!.host.set(st.runningVariance!);
    if (em) this.emaMean!.set(em);
    if (ev) this.emaVar!.set(ev);
    this.steps = st.steps;
    this.lastCount = st.lastBatchCount;
  }

  /**
   * Converts a state to another convention: the running variance moves between biased
   * and unbiased with n/(n − 1), n = the last training batch's per-channel count, and the
   * spec becomes the target's. Round trips restore the original running variance.
   */
  static convertState(state: BatchNormalizationState, to: Convention): BatchNormalizationState {
    const fn = 'BatchNormalization.convertState';
    checkOneOf(fn, 'to', to, Object.keys(CONVENTIONS) as Convention[]);
    const target = CONVENTIONS[to];
    // Validated and decoded (non-finite statistics as numbers); written back encoded.
    const src = checkState(fn, state);
    const out: BatchNormalizationState = { ...src, spec: { ...src.spec } };
    out.convention = to;
    out.spec = { ...target };
    if (src.runningVariance && src.spec.runningVariance !== target.runningVariance) {
      const n = src.lastBatchCount;
      if (!n || n < 2) throw new RangeError(`${fn}: converting between biased and unbiased running variance needs lastBatchCount >= 2, got ${describe(n)}`);
      const k = target.runningVariance === 'unbiased' ? n / (n - 1) : (n - 1) / n;
      out.runningVariance = src.runningVariance.map((v) => v * k);
    }
    if (target.zeroDebias && !src.spec.zeroDebias) {
      // Seed the EMA accumulators so that the debiased value equals the running value.
      const d = 1 - target.momentum! ** Math.max(out.steps, 1);
      out.steps = Math.max(out.steps, 1);
      out.emaMean = out.runningMean?.map((v) => v * d) ?? null;
      out.emaVariance = out.runningVariance?.map((v) => v * d) ?? null;
    } else if (!target.zeroDebias) {
      out.emaMean = null;
      out.emaVariance = null;
    }
    const enc = (a: number[] | null) => (a ? a.map(encodeNumber) : null);
    return {
      ...out, gamma: enc(out.gamma), beta: enc(out.beta), runningMean: enc(out.runningMean),
      runningVariance: enc(out.runningVariance), emaMean: enc(out.emaMean), emaVariance: enc(out.emaVariance),
    };
  }
}
