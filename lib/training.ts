// Training pieces: mergeable sufficient statistics, the fused training/inference forward
// (TF FusedBatchNormV3 semantics) and its backward pass. Each op is planned once here, for
// host and device data alike, and crosses into native code in one call with one options
// object; the native dispatcher picks the backend, whose code does the bookkeeping.
import type { BackendCode, BatchNormGradCall, F32OrDevice, FusedBatchNormCall } from '../binding';
import { native } from './binding';
import { backendCode, type BackendChoice } from './backend';
import { withCallerStack } from './errors';
import { DeviceTensor } from './device';
import { checkBoolean, checkNumber, checkOptions, OPTION_KEYS } from './check';
import type { Communicator } from './sync/communicator';
import { rejectSync, syncBatchNormGrad, syncFusedBatchNorm, wantsSync } from './sync/ops';
import {
  AsyncOutput, channelView, checkFusedOptions, checkOut, sameMemory, type ChannelView, type DataFormat, checkEpsilon, checkShape, checkTensor,
  describe, fixedInput, fmtShape, newFloat32, newFloat64, normalizeAxes, overlaps, product, type Tensor,
} from './tensor';
// ---- sufficient statistics --------------------------------------------------------

/**
 * Mergeable statistics of a reduction: per output, the count n, the mean and
 * M2 = Σ(x − mean)², in float64. Statistics of shards (worker threads, processes, GPUs)
 * combine exactly with mergeMoments (Chan et al.), the base of synchronized batch norm.
 */
export interface SufficientStatistics {
  count: number;
  mean: Float64Array;
  m2: Float64Array;
  /** Shape of mean/m2 (the moments output shape). */
  shape: number[];
}

export function sufficientStatistics(
  x: Tensor, axes?: number | number[], options?: { keepDims?: boolean; backend?: BackendChoice },
): SufficientStatistics {
  const fn = 'sufficientStatistics';
  const t = checkTensor(fn, 'x', x);
  const o = checkOptions<{ keepDims?: boolean; backend?: BackendChoice }>(fn, options, OPTION_KEYS.sufficientStatistics);
  const ax = normalizeAxes(fn, axes, t.shape.length);
  const red = new Set(ax);
  const keepDims = checkBoolean(fn, 'options.keepDims', o.keepDims, false);
  const shape = keepDims ? t.shape.map((d, i) => (red.has(i) ? 1 : d)) : t.shape.filter((_, i) => !red.has(i));
  const n = product(shape);
  const mean = newFloat64(fn, 'mean', n);
  const m2 = newFloat64(fn, 'm2', n);
  native.moments({
    x: t.data, shape: t.shape, axes: ax, correction: 0, backend: backendCode(fn, o.backend),
    mean: newFloat32(fn, 'mean', n), variance: newFloat32(fn, 'variance', n), mean64: mean, m2,
  });
  return { count: product(t.shape.filter((_, i) => red.has(i))), mean, m2, shape };
}

function checkStats(fn: string, name: string, s: unknown): SufficientStatistics {
  const o = s as SufficientStatistics;
  if (!o || typeof o !== 'object' || !(o.mean instanceof Float64Array) || !(o.m2 instanceof Float64Array) ||
      typeof o.count !== 'number' || !Number.isInteger(o.count) || o.count < 0) {
    throw new TypeError(`${fn}: ${name} must be {count: integer >= 0, mean: Float64Array, m2: Float64Array, shape}, got ${describe(s)}`);
  }
  checkShape(fn, `${name}.shape`, o.shape);
  if (o.mean.length !== o.m2.length || o.mean.length !== product(o.shape)) {
    throw new RangeError(`${fn}: ${name}.mean and ${name}.m2 must have product(${name}.shape) = ${product(o.shape)} elements`);
  }
  return o;
}

/** Chan et al.'s pairwise combination of two sets of statistics of the same outputs. */
export function mergeMoments(a: SufficientStatistics, b: SufficientStatistics): SufficientStatistics {
  const fn = 'mergeMoments';
  checkStats(fn, 'a', a);
  checkStats(fn, 'b', b);
  if (fmtShape(a.shape) !== fmtShape(b.shape)) {
    throw new RangeError(`${fn}: a.shape ${fmtShape(a.shape)} and b.shape ${fmtShape(b.shape)} differ`);
  }
  const n = a.count + b.count;
  const mean = new Float64Array(a.mean.length);
  const m2 = new Float64Array(a.mean.length);
  for (let i = 0; i < mean.length; i++) {
    if (a.count === 0) { mean[i] = b.mean[i]; m2[i] = b.m2[i]; continue; }
    if (b.count === 0) { mean[i] = a.mean[i]; m2[i] = a.m2[i]; continue; }
    const delta = b.mean[i] - a.mean[i];
    mean[i] = a.mean[i] + (delta * b.count) / n;
    m2[i] = a.m2[i] + b.m2[i] + (delta * delta * a.count * b.count) / n;
  }
  return { count: n, mean, m2, shape: a.shape.slice() };
}

/** mean and variance (M2 / (n − correction)) as float32 tensors. */
export function finalizeMoments(s: SufficientStatistics, options?: { correction?: number }): { mean: Tensor; variance: Tensor } {
  const fn = 'finalizeMoments';
  checkStats(fn, 's', s);
  const o = checkOptions<{ correction?: number }>(fn, options, OPTION_KEYS.finalizeMoments);
  const correction = checkNumber(fn, 'options.correction', o.correction, { min: 0 }, 0);
  const d = s.count - correction;
  return {
    mean: { data: Float32Array.from(s.mean, (m) => (s.count > 0 ? m : NaN)), shape: s.shape.slice() },
    variance: { data: Float32Array.from(s.m2, (m) => (d > 0 ? m / d : NaN)), shape: s.shape.slice() },
  };
}

// ---- operands: the one place that tells host data from device data ------------------

export type { DataFormat } from './tensor';

/** A per-channel vector as callers give it. */
export type ChannelVector = DeviceTensor | Float32Array | Tensor | number | null | undefined;

/**
 * Where a call's tensors live, decided by x: host Float32Arrays, or DeviceTensors (then
 * every tensor operand is on the device: host vectors are uploaded as temporaries, which
 * dispose() returns once the call is queued; stream order keeps them for its kernels).
 */
class Operands {
  readonly device: boolean;
  private readonly temps: DeviceTensor[] = [];
  private readonly outs: DeviceTensor[] = [];

  constructor(private readonly fn: string, x: unknown) {
    this.device = x instanceof DeviceTensor;
  }

  /** x or dy: a host tensor or a DeviceTensor as x is. */
  tensor(name: string, t: unknown): Tensor | DeviceTensor {
    if (!this.device) return checkTensor(this.fn, name, t);
    if (!(t instanceof DeviceTensor)) throw new TypeError(`${this.fn}: ${name} must be a DeviceTensor when x is one, got ${describe(t)}`);
    t.handle(this.fn, name);
    return t;
  }

  /** A per-channel vector: C elements, a number (filled), or null/undefined (= absent when dflt allows it). */
  vector(name: string, v: ChannelVector, C: number, required: boolean): Float32Array | DeviceTensor | null {
    if (v instanceof DeviceTensor) {
      if (!this.device) {
        throw new TypeError(`${this.fn}: ${name} is a DeviceTensor but x is host data; download() it or pass x as a DeviceTensor`);
      }
      if (v.length !== C) throw new RangeError(`${this.fn}: ${name} has ${v.length} elements but x has ${C} channels`);
      v.handle(this.fn, name);
      return v;
    }
    const host = hostVector(this.fn, name, v, C, required);
    if (!host || !this.device) return host;
    const t = DeviceTensor.upload({ data: host, shape: [C] });
    this.temps.push(t);
    return t;
  }

  /** A fresh output: host memory, or a DeviceTensor disposed again if the call fails. */
  output(shape: number[]): Float32Array | DeviceTensor {
    if (!this.device) return newFloat32(this.fn, 'the output', product(shape));
    const t = DeviceTensor.empty(shape);
    this.outs.push(t);
    return t;
  }

  /** What the binding takes for an operand. */
  pass(name: string, v: Float32Array | DeviceTensor | Tensor | null): F32OrDevice | null {
    if (v === null) return null;
    if (v instanceof DeviceTensor) return v.handle(this.fn, name);
    return v instanceof Float32Array ? v : v.data;
  }

  /** After the call was queued (or failed): temporaries go; outputs go too on failure. */
  done(failed: boolean): void {
    for (const t of this.temps) t.dispose();
    if (failed) for (const t of this.outs) t.dispose();
  }
}

/** Host copy of a per-channel vector: Float32Array or {data, shape} with C elements, a number, or null. */
function hostVector(fn: string, name: string, v: unknown, C: number, required: boolean): Float32Array | null {
  if (v === null || v === undefined) {
    if (required) throw new TypeError(`${fn}: ${name} is required`);
    return null;
  }
  if (typeof v === 'number') return new Float32Array(C).fill(v);
  const data = v instanceof Float32Array ? v : (v && typeof v === 'object' && !ArrayBuffer.isView(v)) ? checkTensor(fn, name, v).data : null;
  if (!data) throw new TypeError(`${fn}: ${name} must be a Float32Array, a tensor, a number or null, got ${describe(v)}`);
  if (data.length !== C) throw new RangeError(`${fn}: ${name} has ${data.length} elements but x has ${C} channels`);
  return data;
}

function shapeOf(t: Tensor | DeviceTensor): number[] {
  return t.shape.slice();
}

// ---- fused forward ------------------------------------------------------------------

export interface FusedBatchNormOptions {
  /** Running statistics: inputs of the update in training, the statistics used in inference. */
  mean?: Float32Array | Tensor | null;
  variance?: Float32Array | Tensor | null;
  /** Default 1e-3 (TF). */
  epsilon?: number;
  /** TF's exponential_avg_factor: running = (1 − f)·running + f·batch. Default 1 (running = batch). */
  exponentialAvgFactor?: number;
  /** Channel axis: 'NHWC' = last (default), 'NCHW' = 1. `axis` overrides it. */
  dataFormat?: DataFormat;
  axis?: number;
  /** Default true. */
  isTraining?: boolean;
  backend?: BackendChoice;
  /** Write y here instead of a new array (may be x.data: in place). */
  out?: Float32Array;
  /** Statistics of the whole batch across the communicator's ranks (fusedBatchNormAsync only). */
  sync?: Communicator;
}

/** fusedBatchNorm options for a DeviceTensor x: running statistics may be DeviceTensors too; no `out`. */
export interface DeviceFusedBatchNormOptions extends Omit<FusedBatchNormOptions, 'mean' | 'variance' | 'out'> {
  mean?: DeviceTensor | Float32Array | Tensor | null;
  variance?: DeviceTensor | Float32Array | Tensor | null;
}

export interface FusedBatchNormResult {
  y: Tensor;
  /** Batch mean (training) or the given mean (inference). Shape [C]. */
  batchMean: Tensor;
  /** Bessel-corrected batch variance, as TF's batch_variance output (n/(n−1), n−1 ≥ 1). */
  batchVariance: Tensor;
  /** The biased batch variance that normalized y. */
  batchVarianceBiased: Tensor;
  /** Updated running statistics (running variance stores the unbiased variance, as TF/cuDNN). */
  runningMean: Tensor;
  runningVariance: Tensor;
  /** Saved for the backward pass: the mean and 1/sqrt(variance + ε) used for y. */
  savedMean: Tensor;
  savedInvStd: Tensor;
}

export interface DeviceFusedBatchNormResult {
  y: DeviceTensor;
  batchMean: DeviceTensor;
  /** Bessel-corrected batch variance (TF's batch_variance). */
  batchVariance: DeviceTensor;
  batchVarianceBiased: DeviceTensor;
  runningMean: DeviceTensor;
  runningVariance: DeviceTensor;
  savedMean: DeviceTensor;
  savedInvStd: DeviceTensor;
}

export interface DeviceBatchNormGrads {
  dx: DeviceTensor;
  dscale: DeviceTensor;
  doffset: DeviceTensor;
}

/** One plan of fusedBatchNorm, host or device data. */
export interface FusedPlan {
  ops: Operands;
  x: Tensor | DeviceTensor;
  view: ChannelView;
  scale: Float32Array | DeviceTensor | null;
  offset: Float32Array | DeviceTensor | null;
  eps: number;
  f: number;
  training: boolean;
  runMean: Float32Array | DeviceTensor | null;
  runVar: Float32Array | DeviceTensor | null;
  backend: BackendChoice | undefined;
  code: BackendCode;
  out: Float32Array | undefined;
}

export function planFused(fn: string, x: unknown, scale: unknown, offset: unknown, options: unknown): FusedPlan {
  const ops = new Operands(fn, x);
  const xt = ops.tensor('x', x);
  const o = checkOptions<FusedBatchNormOptions | DeviceFusedBatchNormOptions>(fn, options, OPTION_KEYS.fusedBatchNorm);
  const { view, eps, f, training } = checkFusedOptions(fn, xt.shape, o);
  const code = backendCode(fn, o.backend);
  const out = (o as FusedBatchNormOptions).out;
  if (ops.device && out !== undefined) throw new TypeError(`${fn}: options.out is not supported with DeviceTensor inputs`);
  const needRunning = !training || f !== 1;
  const C = view.C;
  try {
    const runMean = ops.vector('options.mean', o.mean, C, needRunning);
    const runVar = ops.vector('options.variance', o.variance, C, needRunning);
    const sc = ops.vector('scale', scale as ChannelVector, C, false);
    const off = ops.vector('offset', offset as ChannelVector, C, false);
    if (out !== undefined) {
      // Checked here, against the caller's arrays, before any work (the async path writes a copy).
      const xd = (xt as Tensor).data;
      const oa = checkOut(fn, 'options.out', out, xd.length);
      if (overlaps(oa, xd) && !sameMemory(oa, xd)) {
        throw new RangeError(`${fn}: options.out overlaps x.data; only exact in-place use (out = x.data) is supported`);
      }
      for (const [name, a] of [['scale', sc], ['offset', off], ['options.mean', runMean], ['options.variance', runVar]] as const) {
        if (a instanceof Float32Array && overlaps(oa, a)) throw new RangeError(`${fn}: options.out must not overlap ${name}`);
      }
    }
    return { ops, x: xt, view, scale: sc, offset: off, eps, f, training, runMean, runVar, backend: o.backend, code, out };
  } catch (e) {
    ops.done(true);
    throw e;
  }
}

type Outputs<T> = { y: T; batchMean: T; batchVariance: T; batchVarianceBiased: T; runningMean: T; runningVariance: T; savedMean: T; savedInvStd: T };
const STAT_KEYS = ['batchMean', 'batchVariance', 'batchVarianceBiased', 'runningMean', 'runningVariance', 'savedMean', 'savedInvStd'] as const;

/** The one native call of fusedBatchNorm: y and the seven statistics written by the chosen backend. */
function fusedCall(p: FusedPlan, y: Float32Array | DeviceTensor, stats: Outputs<Float32Array | DeviceTensor>): Parameters<typeof native.fusedBatchNorm>[0] {
  const { ops } = p;
  const pass = (name: string, v: Float32Array | DeviceTensor | Tensor | null) => ops.pass(name, v);
  return {
    x: pass('x', p.x)!, shape: p.view.shape, axis: p.view.axis,
    scale: pass('scale', p.scale), offset: pass('offset', p.offset),
    mean: pass('options.mean', p.runMean), variance: pass('options.variance', p.runVar),
    epsilon: p.eps, exponentialAvgFactor: p.f, isTraining: p.training, backend: p.code,
    y: pass('y', y)!,
    batchMean: pass('batchMean', stats.batchMean)!, batchVariance: pass('batchVariance', stats.batchVariance)!,
    batchVarianceBiased: pass('batchVarianceBiased', stats.batchVarianceBiased)!,
    runningMean: pass('runningMean', stats.runningMean)!, runningVariance: pass('runningVariance', stats.runningVariance)!,
    savedMean: pass('savedMean', stats.savedMean)!, savedInvStd: pass('savedInvStd', stats.savedInvStd)!,
  };
}

function fusedOutputs(p: FusedPlan, y: Float32Array | DeviceTensor): Outputs<Float32Array | DeviceTensor> {
  const r = { y } as Outputs<Float32Array | DeviceTensor>;
  for (const k of STAT_KEYS) r[k] = p.ops.output([p.view.C]);
  return r;
}

function fusedResult(p: FusedPlan, r: Outputs<Float32Array | DeviceTensor>, y?: Float32Array): FusedBatchNormResult | DeviceFusedBatchNormResult {
  if (p.ops.device) return r as DeviceFusedBatchNormResult;
  const out = {} as Outputs<Tensor>;
  out.y = { data: y ?? (r.y as Float32Array), shape: shapeOf(p.x) };
  for (const k of STAT_KEYS) out[k] = { data: r[k] as Float32Array, shape: [p.view.C] };
  return out;
}

/**
 * Fused batch normalization with TF FusedBatchNormV3 semantics, any rank >= 2, channel axis
 * from dataFormat or axis. Training: normalizes with the batch statistics (biased
 * variance), returns them, the updated running statistics and what backward needs.
 * Inference: normalizes with options.mean / options.variance. DeviceTensor x: every
 * result is a DeviceTensor, computed on the GPU.
 */
export function fusedBatchNorm(
  x: DeviceTensor, scale: DeviceTensor | Float32Array | Tensor | number | null,
  offset: DeviceTensor | Float32Array | Tensor | number | null, options?: DeviceFusedBatchNormOptions,
): DeviceFusedBatchNormResult;
export function fusedBatchNorm(
  x: Tensor, scale: Float32Array | Tensor | number | null, offset: Float32Array | Tensor | number | null,
  options?: FusedBatchNormOptions,
): FusedBatchNormResult;
export function fusedBatchNorm(
  x: Tensor | DeviceTensor, scale: DeviceTensor | Float32Array | Tensor | number | null,
  offset: DeviceTensor | Float32Array | Tensor | number | null, options?: FusedBatchNormOptions | DeviceFusedBatchNormOptions,
): FusedBatchNormResult | DeviceFusedBatchNormResult {
  const fn = 'fusedBatchNorm';
  rejectSync(fn, options);
  const p = planFused(fn, x, scale, offset, options);
  let failed = true;
  try {
    const r = fusedOutputs(p, p.out ?? p.ops.output(p.view.shape));
    native.fusedBatchNorm(fusedCall(p, r.y, r));
    failed = false;
    return fusedResult(p, r);
  } finally {
    p.ops.done(failed);
  }
}

/** fusedBatchNorm computed off the JS thread (DeviceTensor x: queued on the GPU, resolved before it finishes). */
export async function fusedBatchNormAsync(
  x: DeviceTensor, scale: DeviceTensor | Float32Array | Tensor | number | null,
  offset: DeviceTensor | Float32Array | Tensor | number | null, options?: DeviceFusedBatchNormOptions,
): Promise<DeviceFusedBatchNormResult>;
export async function fusedBatchNormAsync(
  x: Tensor, scale: Float32Array | Tensor | number | null, offset: Float32Array | Tensor | number | null,
  options?: FusedBatchNormOptions,
): Promise<FusedBatchNormResult>;
export async function fusedBatchNormAsync(
  x: Tensor | DeviceTensor, scale: DeviceTensor | Float32Array | Tensor | number | null,
  offset: DeviceTensor | Float32Array | Tensor | number | null, options?: FusedBatchNormOptions | DeviceFusedBatchNormOptions,
): Promise<FusedBatchNormResult | DeviceFusedBatchNormResult> {
  if (wantsSync(options)) return (await syncFusedBatchNorm('fusedBatchNormAsync', x, scale, offset, options)).result;
  const fn = 'fusedBatchNormAsync';
  const site = new Error();
  try {
    return await runFusedAsync(fn, planFused(fn, x, scale, offset, options));
  } catch (e) {
    throw withCallerStack(e, site);
  }
}

/**
 * Host data of an async call: the worker reads fixed copies of resizable inputs (taken
 * once, so that calls made one after another on the same plan read the same values).
 */
export function fixFusedInputs(p: FusedPlan): void {
  if (p.ops.device) return;
  const xt = p.x as Tensor;
  p.x = { data: fixedInput(xt.data), shape: xt.shape };
  for (const k of ['scale', 'offset', 'runMean', 'runVar'] as const) {
    const v = p[k];
    if (v instanceof Float32Array) p[k] = fixedInput(v);
  }
}

/**
 * Sends a planned op's one native call: `issue` when given (the synchronized ops add their
 * fields, or queue it on a communicator), else `send`. The plan's temporaries go once the
 * default call is queued (stream order keeps them), or once a custom issue settles (it may
 * start the call later); a failure releases them as failed.
 */
async function sendCall<O>(
  ops: Operands, o: O, issue: ((o: O) => Promise<unknown>) | undefined, send: (o: O) => Promise<unknown>,
): Promise<void> {
  try {
    const call = issue ? issue(o) : send(o);
    if (!issue) ops.done(false);
    await call;
  } catch (e) {
    ops.done(true);
    throw e;
  }
  ops.done(false);
}

/**
 * Issues a planned fusedBatchNorm's one native call. `issue` sends the options object
 * (the synchronized ops add their fields, or queue it on a communicator); by default
 * native.fusedBatchNormAsync. Temporaries go once the call is queued.
 */
export async function runFusedAsync(
  fn: string, p: FusedPlan, issue?: (o: FusedBatchNormCall) => Promise<unknown>,
): Promise<FusedBatchNormResult | DeviceFusedBatchNormResult> {
  let failed = true;
  try {
    fixFusedInputs(p);
    // Host data: the worker writes library memory; the caller's out gets y on the JS thread at the end.
    const y = p.ops.device ? null : p.out !== undefined ? AsyncOutput.into(fn, 'options.out', p.out) : AsyncOutput.fresh(fn, 'y', product(p.view.shape));
    const r = fusedOutputs(p, y ? y.target : p.ops.output(p.view.shape));
    const o = fusedCall(p, r.y, r);
    failed = false;
    await sendCall(p.ops, o, issue, (c) => native.fusedBatchNormAsync(c));
    return fusedResult(p, r, y ? await y.deliver() : undefined);
  } catch (e) {
    if (failed) p.ops.done(true);
    throw e;
  }
}

// ---- backward -----------------------------------------------------------------------

export interface BatchNormGradOptions {
  /** true (default): the statistics were computed from x (training); false: frozen statistics. */
  isTraining?: boolean;
  dataFormat?: DataFormat;
  axis?: number;
  backend?: BackendChoice;
  /** Write dx here instead of a new array (host data). */
  out?: Float32Array;
  /** The forward's ε: passed to cuDNN (it asks for the same value); default 1e-3. */
  epsilon?: number;
  /** dx of the whole batch across the communicator's ranks (the Async variant only). */
  sync?: Communicator;
}

export interface BatchNormGrads {
  dx: Tensor;
  dscale: Tensor;
  doffset: Tensor;
}

/** One plan of batchNormalizationGrad, host or device data. */
export interface GradPlan {
  ops: Operands;
  dy: Tensor | DeviceTensor;
  x: Tensor | DeviceTensor;
  view: ChannelView;
  scale: Float32Array | DeviceTensor | null;
  mean: Float32Array | DeviceTensor;
  invStd: Float32Array | DeviceTensor;
  eps: number;
  training: boolean;
  /** The caller's options.out, or null for a fresh dx. */
  out: Float32Array | null;
  code: BackendCode;
}

export function planGrad(fn: string, dy: unknown, x: unknown, scale: unknown, saved: unknown, options: unknown): GradPlan {
  const ops = new Operands(fn, x);
  const xt = ops.tensor('x', x);
  const dyt = ops.tensor('dy', dy);
  if (fmtShape(dyt.shape) !== fmtShape(xt.shape)) {
    throw new RangeError(`${fn}: dy has shape ${fmtShape(dyt.shape)} but x has ${fmtShape(xt.shape)}`);
  }
  const o = checkOptions<BatchNormGradOptions>(fn, options, OPTION_KEYS.batchNormalizationGrad);
  const view = channelView(fn, xt.shape, o.dataFormat, o.axis);
  if (!saved || typeof saved !== 'object') {
    throw new TypeError(`${fn}: saved must be {mean, invStd} (fusedBatchNorm's savedMean / savedInvStd), got ${describe(saved)}`);
  }
  const training = checkBoolean(fn, 'options.isTraining', o.isTraining, true);
  const eps = checkEpsilon(fn, 'options.epsilon', o.epsilon ?? 1e-3);
  const code = backendCode(fn, o.backend);
  if (ops.device && o.out !== undefined) throw new TypeError(`${fn}: options.out is not supported with DeviceTensor inputs`);
  const sv = saved as { mean?: ChannelVector; invStd?: ChannelVector };
  try {
    const mean = ops.vector('saved.mean', sv.mean, view.C, true)!;
    const invStd = ops.vector('saved.invStd', sv.invStd, view.C, true)!;
    const sc = ops.vector('scale', scale as ChannelVector, view.C, false);
    let out: Float32Array | null = null;
    if (o.out !== undefined) {
      const n = view.A * view.C * view.B;
      if (!(o.out instanceof Float32Array)) throw new TypeError(`${fn}: options.out must be a Float32Array, got ${describe(o.out)}`);
      if (o.out.length !== n) throw new RangeError(`${fn}: options.out has ${o.out.length} elements but dx has ${n}`);
      out = o.out;
      // dx is written while dy and x are read (and the coefficients come from the rest).
      const inputs: [string, unknown][] = [['x', (xt as Tensor).data], ['dy', (dyt as Tensor).data], ['scale', sc], ['saved.mean', mean], ['saved.invStd', invStd]];
      for (const [name, a] of inputs) {
        if (a instanceof Float32Array && overlaps(out, a)) throw new RangeError(`${fn}: options.out must not overlap ${name}`);
      }
    }
    return { ops, dy: dyt, x: xt, view, scale: sc, mean, invStd, eps, training, out, code };
  } catch (e) {
    ops.done(true);
    throw e;
  }
}

function gradCall(p: GradPlan, dx: Float32Array | DeviceTensor, dscale: Float32Array | DeviceTensor, doffset: Float32Array | DeviceTensor): Parameters<typeof native.batchNormalizationGrad>[0] {
  const { ops } = p;
  return {
    dy: ops.pass('dy', p.dy)!, x: ops.pass('x', p.x)!, shape: p.view.shape, axis: p.view.axis,
    scale: ops.pass('scale', p.scale), savedMean: ops.pass('saved.mean', p.mean)!, savedInvStd: ops.pass('saved.invStd', p.invStd)!,
    epsilon: p.eps, isTraining: p.training, backend: p.code,
    dx: ops.pass('dx', dx)!, dscale: ops.pass('dscale', dscale)!, doffset: ops.pass('doffset', doffset)!,
  };
}

function gradResult(p: GradPlan, dx: Float32Array | DeviceTensor, dscale: Float32Array | DeviceTensor, doffset: Float32Array | DeviceTensor): BatchNormGrads | DeviceBatchNormGrads {
  if (p.ops.device) return { dx, dscale, doffset } as DeviceBatchNormGrads;
  return {
    dx: { data: dx as Float32Array, shape: p.view.shape }, dscale: { data: dscale as Float32Array, shape: [p.view.C] },
    doffset: { data: doffset as Float32Array, shape: [p.view.C] },
  };
}

/**
 * Gradients of y = (x − μ)·invStd·scale + offset for per-channel batch normalization.
 * Training mode (μ, invStd from x's own batch): dx = scale·invStd/N·(N·dy − Σdy − x̂·Σdy·x̂).
 * Frozen statistics (isTraining false): dx = scale·invStd·dy. dscale = Σdy·x̂, doffset = Σdy.
 * `saved` is {mean, invStd} as fusedBatchNorm returns (savedMean, savedInvStd).
 */
export function batchNormalizationGrad(
  dy: DeviceTensor, x: DeviceTensor, scale: DeviceTensor | Float32Array | Tensor | number | null,
  saved: { mean: DeviceTensor | Float32Array | Tensor; invStd: DeviceTensor | Float32Array | Tensor }, options?: BatchNormGradOptions,
): DeviceBatchNormGrads;
export function batchNormalizationGrad(
  dy: Tensor, x: Tensor, scale: Float32Array | Tensor | number | null,
  saved: { mean: Float32Array | Tensor; invStd: Float32Array | Tensor }, options?: BatchNormGradOptions,
): BatchNormGrads;
export function batchNormalizationGrad(
  dy: Tensor | DeviceTensor, x: Tensor | DeviceTensor, scale: DeviceTensor | Float32Array | Tensor | number | null,
  saved: { mean: DeviceTensor | Float32Array | Tensor; invStd: DeviceTensor | Float32Array | Tensor }, options?: BatchNormGradOptions,
): BatchNormGrads | DeviceBatchNormGrads {
  const fn = 'batchNormalizationGrad';
  rejectSync(fn, options);
  const p = planGrad(fn, dy, x, scale, saved, options);
  let failed = true;
  try {
    const dx = p.out ?? p.ops.output(p.view.shape);
    const dscale = p.ops.output([p.view.C]);
    const doffset = p.ops.output([p.view.C]);
    native.batchNormalizationGrad(gradCall(p, dx, dscale, doffset));
    failed = false;
    return gradResult(p, dx, dscale, doffset);
  } finally {
    p.ops.done(failed);
  }
}

/** batchNormalizationGrad computed off the JS thread (DeviceTensors: queued on the GPU). */
export async function batchNormalizationGradAsync(
  dy: DeviceTensor, x: DeviceTensor, scale: DeviceTensor | Float32Array | Tensor | number | null,
  saved: { mean: DeviceTensor | Float32Array | Tensor; invStd: DeviceTensor | Float32Array | Tensor }, options?: BatchNormGradOptions,
): Promise<DeviceBatchNormGrads>;
export async function batchNormalizationGradAsync(
  dy: Tensor, x: Tensor, scale: Float32Array | Tensor | number | null,
  saved: { mean: Float32Array | Tensor; invStd: Float32Array | Tensor }, options?: BatchNormGradOptions,
): Promise<BatchNormGrads>;
export async function batchNormalizationGradAsync(
  dy: Tensor | DeviceTensor, x: Tensor | DeviceTensor, scale: DeviceTensor | Float32Array | Tensor | number | null,
  saved: { mean: DeviceTensor | Float32Array | Tensor; invStd: DeviceTensor | Float32Array | Tensor }, options?: BatchNormGradOptions,
): Promise<BatchNormGrads | DeviceBatchNormGrads> {
  if (wantsSync(options)) return syncBatchNormGrad('batchNormalizationGradAsync', dy, x, scale, saved, options);
  const fn = 'batchNormalizationGradAsync';
  const site = new Error();
  try {
    return await runGradAsync(fn, planGrad(fn, dy, x, scale, saved, options));
  } catch (e) {
    throw withCallerStack(e, site);
  }
}

/** Host data of an async call: fixed copies of resizable inputs, taken once (as fixFusedInputs). */
export function fixGradInputs(p: GradPlan): void {
  if (p.ops.device) return;
  for (const k of ['dy', 'x'] as const) {
    const t = p[k] as Tensor;
    p[k] = { data: fixedInput(t.data), shape: t.shape };
  }
  for (const k of ['scale', 'mean', 'invStd'] as const) {
    const v = p[k];
    if (v instanceof Float32Array) (p as unknown as Record<string, unknown>)[k] = fixedInput(v);
  }
}

/** Issues a planned batchNormalizationGrad's one native call (`issue` as in runFusedAsync). */
export async function runGradAsync(
  fn: string, p: GradPlan, issue?: (o: BatchNormGradCall) => Promise<unknown>,
): Promise<BatchNormGrads | DeviceBatchNormGrads> {
  let failed = true;
  try {
    fixGradInputs(p);
    const n = p.view.A * p.view.C * p.view.B;
    const dxo = p.ops.device ? null : p.out ? AsyncOutput.into(fn, 'options.out', p.out) : AsyncOutput.fresh(fn, 'dx', n);
    const dx = dxo ? dxo.target : p.ops.output(p.view.shape);
    const dscale = p.ops.output([p.view.C]);
    const doffset = p.ops.output([p.view.C]);
    const o = gradCall(p, dx, dscale, doffset);
    failed = false;
    await sendCall(p.ops, o, issue, (c) => native.batchNormalizationGradAsync(c));
    return gradResult(p, dxo ? await dxo.deliver() : dx, dscale, doffset);
  } catch (e) {
    if (failed) p.ops.done(true);
    throw e;
  }
}

/** TF's name for the same backward pass. */
export const fusedBatchNormGrad = batchNormalizationGrad;
export const fusedBatchNormGradAsync = batchNormalizationGradAsync;
