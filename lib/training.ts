// Training pieces: mergeable sufficient statistics, the fused training/inference forward
// (TF FusedBatchNormV3 semantics) and its backward pass.
import { native } from './binding';
import { backendCode, type BackendChoice } from './backend';
import { withCallerStack } from './errors';
import { batchNormalizationAs, batchNormalizationAsyncAs } from './ops';
import {
  deviceBatchNormGrad, deviceBatchNormGradAsync, deviceFusedBatchNorm, deviceFusedBatchNormAsync,
  type DeviceBatchNormGrads, type DeviceFusedBatchNormResult,
} from './cudnn';
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
  native.moments(t.data, t.shape, ax, 0, newFloat32(fn, 'mean', n), newFloat32(fn, 'variance', n), backendCode(fn, o.backend), mean, m2);
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

// ---- channel layout ---------------------------------------------------------------

export type { DataFormat } from './tensor';

/** A per-channel vector: Float32Array or {data, shape} with C elements, a number, or null (= dflt). */
function channelVector(fn: string, name: string, v: unknown, C: number, dflt: number | null): Float32Array | null {
  if (v === null || v === undefined) {
    if (dflt === null) throw new TypeError(`${fn}: ${name} is required`);
    return null;
  }
  if (typeof v === 'number') return new Float32Array(C).fill(v);
  const data = v instanceof Float32Array ? v : (v && typeof v === 'object' && !ArrayBuffer.isView(v)) ? checkTensor(fn, name, v).data : null;
  if (!data) throw new TypeError(`${fn}: ${name} must be a Float32Array, a tensor, a number or null, got ${describe(v)}`);
  if (data.length !== C) throw new RangeError(`${fn}: ${name} has ${data.length} elements but x has ${C} channels`);
  return data;
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

export interface FusedPlan {
  x: { data: Float32Array; shape: number[] };
  view: ChannelView;
  scale: Float32Array | null;
  offset: Float32Array | null;
  eps: number;
  f: number;
  training: boolean;
  runMean: Float32Array | null;
  runVar: Float32Array | null;
  backend: BackendChoice | undefined;
  out: Float32Array | undefined;
}

export function planFused(fn: string, x: unknown, scale: unknown, offset: unknown, options: unknown): FusedPlan {
  const t = checkTensor(fn, 'x', x);
  const o = checkOptions<FusedBatchNormOptions>(fn, options, OPTION_KEYS.fusedBatchNorm);
  const { view, eps, f, training } = checkFusedOptions(fn, t.shape, o);
  const needRunning = !training || f !== 1;
  const runMean = channelVector(fn, 'options.mean', o.mean, view.C, needRunning ? null : 0);
  const runVar = channelVector(fn, 'options.variance', o.variance, view.C, needRunning ? null : 0);
  const sc = channelVector(fn, 'scale', scale, view.C, 1);
  const off = channelVector(fn, 'offset', offset, view.C, 0);
  if (o.out !== undefined) {
    // Checked here, against the caller's arrays, before any work (the async path writes a copy).
    const out = checkOut(fn, 'options.out', o.out, t.data.length);
    if (overlaps(out, t.data) && !sameMemory(out, t.data)) {
      throw new RangeError(`${fn}: options.out overlaps x.data; only exact in-place use (out = x.data) is supported`);
    }
    for (const [name, a] of [['scale', sc], ['offset', off], ['options.mean', runMean], ['options.variance', runVar]] as const) {
      if (a && overlaps(out, a)) throw new RangeError(`${fn}: options.out must not overlap ${name}`);
    }
  }
  return { x: t, view, scale: sc, offset: off, eps, f, training, runMean, runVar, backend: o.backend, out: o.out };
}

interface Stats {
  mean: Float32Array;
  varBiased: Float32Array;
  varUnbiased: Float32Array;
  count: number;
}

export function statsFrom(p: FusedPlan, mean64: Float64Array, m2: Float64Array, n = p.view.n): Stats {
  const bessel = Math.max(n - 1, 1);
  return {
    mean: Float32Array.from(mean64),
    varBiased: Float32Array.from(m2, (v) => v / n),
    varUnbiased: Float32Array.from(m2, (v) => v / bessel),
    count: n,
  };
}

export function finishFused(p: FusedPlan, y: Tensor, s: Stats | null): FusedBatchNormResult {
  const C = p.view.C;
  const vec = (data: Float32Array): Tensor => ({ data, shape: [C] });
  if (!s) {
    const mean = p.runMean!;
    const variance = p.runVar!;
    return {
      y, batchMean: vec(mean.slice()), batchVariance: vec(variance.slice()), batchVarianceBiased: vec(variance.slice()),
      runningMean: vec(mean.slice()), runningVariance: vec(variance.slice()),
      savedMean: vec(mean.slice()), savedInvStd: vec(Float32Array.from(variance, (v) => 1 / Math.sqrt(v + p.eps))),
    };
  }
  const f = p.f;
  const runningMean = Float32Array.from(s.mean, (m, c) => (f === 1 ? m : (1 - f) * p.runMean![c] + f * m));
  const runningVariance = Float32Array.from(s.varUnbiased, (v, c) => (f === 1 ? v : (1 - f) * p.runVar![c] + f * v));
  return {
    y, batchMean: vec(s.mean), batchVariance: vec(s.varUnbiased), batchVarianceBiased: vec(s.varBiased),
    runningMean: vec(runningMean), runningVariance: vec(runningVariance),
    savedMean: vec(s.mean.slice()), savedInvStd: vec(Float32Array.from(s.varBiased, (v) => 1 / Math.sqrt(v + p.eps))),
  };
}

export function paramTensor(p: FusedPlan, data: Float32Array | null): Tensor | null {
  return data ? { data, shape: p.view.paramShape } : null;
}

/**
 * Fused batch normalization with TF FusedBatchNormV3 semantics, any rank >= 2, channel axis
 * from dataFormat or axis. Training: normalizes with the batch statistics (biased
 * variance), returns them, the updated running statistics and what backward needs.
 * Inference: normalizes with options.mean / options.variance.
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
  rejectSync('fusedBatchNorm', options);
  // DeviceTensor x: cuDNN's fused training forward where it applies, else our CUDA kernels (lib/cudnn.ts).
  if (x instanceof DeviceTensor) return deviceFusedBatchNorm('fusedBatchNorm', x, scale, offset, options);
  const p = planFused('fusedBatchNorm', x, scale, offset, options);
  const ps = p.view.paramShape;
  if (!p.training) {
    const y = batchNormalizationAs('fusedBatchNorm', p.x, { data: p.runMean!, shape: ps }, { data: p.runVar!, shape: ps },
      paramTensor(p, p.offset), paramTensor(p, p.scale), p.eps, { backend: p.backend, out: p.out });
    return finishFused(p, y, null);
  }
  const C = p.view.C;
  const mean64 = new Float64Array(C);
  const m2 = new Float64Array(C);
  native.moments(p.x.data, p.x.shape, p.view.reduceAxes, 0, new Float32Array(C), new Float32Array(C),
    backendCode('fusedBatchNorm', p.backend), mean64, m2);
  const s = statsFrom(p, mean64, m2);
  const y = batchNormalizationAs('fusedBatchNorm', p.x, { data: s.mean, shape: ps }, { data: s.varBiased, shape: ps },
    paramTensor(p, p.offset), paramTensor(p, p.scale), p.eps, { backend: p.backend, out: p.out });
  return finishFused(p, y, s);
}

/** fusedBatchNorm computed off the JS thread. */
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
  if (x instanceof DeviceTensor) return deviceFusedBatchNormAsync('fusedBatchNormAsync', x, scale, offset, options);
  const fn = 'fusedBatchNormAsync';
  const site = new Error();
  const p = planFused(fn, x, scale, offset, options);
  const ps = p.view.paramShape;
  // Both stages read one fixed x and write library memory; the caller's out gets y at the end.
  const out = p.out === undefined ? null : AsyncOutput.into(fn, 'options.out', p.out);
  const xs = { data: fixedInput(p.x.data), shape: p.x.shape };
  const opts = { backend: p.backend, out: out?.target };
  const finish = async (y: Tensor, s: Stats | null) => finishFused(p, out ? { data: await out.deliver(), shape: y.shape } : y, s);
  try {
    if (!p.training) {
      const y = await batchNormalizationAsyncAs(fn, xs, { data: p.runMean!, shape: ps }, { data: p.runVar!, shape: ps },
        paramTensor(p, p.offset), paramTensor(p, p.scale), p.eps, opts, out?.target);
      return await finish(y, null);
    }
    const C = p.view.C;
    const mean64 = new Float64Array(C);
    const m2 = new Float64Array(C);
    await native.momentsAsync(xs.data, p.x.shape, p.view.reduceAxes, 0, new Float32Array(C), new Float32Array(C),
      backendCode(fn, p.backend), mean64, m2);
    const s = statsFrom(p, mean64, m2);
    const y = await batchNormalizationAsyncAs(fn, xs, { data: s.mean, shape: ps }, { data: s.varBiased, shape: ps },
      paramTensor(p, p.offset), paramTensor(p, p.scale), p.eps, opts, out?.target);
    return await finish(y, s);
  } catch (e) {
    throw withCallerStack(e, site);
  }
}

// ---- backward -----------------------------------------------------------------------

export interface BatchNormGradOptions {
  /** true (default): the statistics were computed from x (training); false: frozen statistics. */
  isTraining?: boolean;
  dataFormat?: DataFormat;
  axis?: number;
  backend?: BackendChoice;
  /** Write dx here instead of a new array. */
  out?: Float32Array;
  /** The forward's ε: passed to cuDNN with DeviceTensor inputs (it asks for the same value); default 1e-3. */
  epsilon?: number;
  /** dx of the whole batch across the communicator's ranks (the Async variant only). */
  sync?: Communicator;
}

export interface BatchNormGrads {
  dx: Tensor;
  dscale: Tensor;
  doffset: Tensor;
}

export interface GradPlan {
  args: [Float32Array, Float32Array, number, number, number, Float64Array];
  view: ChannelView;
  scale: Float32Array | null;
  invStd: Float32Array;
  training: boolean;
  /** The caller's options.out, or null for a fresh dx. */
  out: Float32Array | null;
  backend: ReturnType<typeof backendCode>;
}

export function planGrad(fn: string, dy: unknown, x: unknown, scale: unknown, saved: unknown, options: unknown): GradPlan {
  const xt = checkTensor(fn, 'x', x);
  const dyt = checkTensor(fn, 'dy', dy);
  if (fmtShape(dyt.shape) !== fmtShape(xt.shape)) {
    throw new RangeError(`${fn}: dy has shape ${fmtShape(dyt.shape)} but x has ${fmtShape(xt.shape)}`);
  }
  const o = checkOptions<BatchNormGradOptions>(fn, options, OPTION_KEYS.batchNormalizationGrad);
  const view = channelView(fn, xt.shape, o.dataFormat, o.axis);
  if (!saved || typeof saved !== 'object') {
    throw new TypeError(`${fn}: saved must be {mean, invStd} (fusedBatchNorm's savedMean / savedInvStd), got ${describe(saved)}`);
  }
  const sv = saved as { mean?: unknown; invStd?: unknown };
  const mean = channelVector(fn, 'saved.mean', sv.mean, view.C, null)!;
  const invStd = channelVector(fn, 'saved.invStd', sv.invStd, view.C, null)!;
  const training = checkBoolean(fn, 'options.isTraining', o.isTraining, true);
  const n = xt.data.length;
  const sc = channelVector(fn, 'scale', scale, view.C, 1);
  let out: Float32Array | null = null;
  if (o.out !== undefined) {
    if (!(o.out instanceof Float32Array)) throw new TypeError(`${fn}: options.out must be a Float32Array, got ${describe(o.out)}`);
    if (o.out.length !== n) throw new RangeError(`${fn}: options.out has ${o.out.length} elements but dx has ${n}`);
    out = o.out;
    // dx is written while dy and x are read (and the coefficients come from the rest).
    const inputs: [string, Float32Array | null][] = [['x', xt.data], ['dy', dyt.data], ['scale', sc], ['saved.mean', mean], ['saved.invStd', invStd]];
    for (const [name, a] of inputs) {
      if (a && overlaps(out, a)) throw new RangeError(`${fn}: options.out must not overlap ${name}`);
    }
  }
  return {
    args: [dyt.data, xt.data, view.A, view.C, view.B, Float64Array.from(mean)],
    view, scale: sc, invStd, training, out, backend: backendCode(fn, o.backend),
  };
}

/** Per-channel coefficients of dx = g·(dy − a − (x − μ)·b), and dscale/doffset. */
export function gradCoefficients(p: GradPlan, s1: Float64Array, s2: Float64Array, N = p.view.n) {
  const C = p.view.C;
  const g = new Float64Array(C);
  const a = new Float64Array(C);
  const b = new Float64Array(C);
  const dscale = new Float32Array(C);
  const doffset = new Float32Array(C);
  for (let c = 0; c < C; c++) {
    const inv = p.invStd[c];
    g[c] = (p.scale ? p.scale[c] : 1) * inv;
    if (p.training && N > 0) {
      a[c] = s1[c] / N;
      b[c] = (inv * inv * s2[c]) / N;
    }
    dscale[c] = inv * s2[c]; // Σ dy·x̂
    doffset[c] = s1[c];
  }
  return { g, a, b, dscale, doffset };
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
  rejectSync('batchNormalizationGrad', options);
  // DeviceTensor inputs: cuDNN's backward (the only GPU backward pass in this version).
  if (x instanceof DeviceTensor) return deviceBatchNormGrad('batchNormalizationGrad', dy, x, scale, saved, options);
  const fn = 'batchNormalizationGrad';
  const p = planGrad(fn, dy, x, scale, saved, options);
  const dx = p.out ?? newFloat32(fn, 'dx', p.view.A * p.view.C * p.view.B);
  const s1 = new Float64Array(p.view.C);
  const s2 = new Float64Array(p.view.C);
  native.channelGradSums(...p.args, s1, s2, p.backend);
  const k = gradCoefficients(p, s1, s2);
  native.channelGradApply(...p.args, k.g, k.a, k.b, dx, p.backend);
  return { dx: { data: dx, shape: p.view.shape }, dscale: { data: k.dscale, shape: [p.view.C] }, doffset: { data: k.doffset, shape: [p.view.C] } };
}

/** batchNormalizationGrad computed off the JS thread. */
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
  if (x instanceof DeviceTensor) return deviceBatchNormGradAsync('batchNormalizationGradAsync', dy, x, scale, saved, options);
  const fn = 'batchNormalizationGradAsync';
  const site = new Error();
  const p = planGrad(fn, dy, x, scale, saved, options);
  try {
    const n = p.view.A * p.view.C * p.view.B;
    const dx = p.out ? AsyncOutput.into(fn, 'options.out', p.out) : AsyncOutput.fresh(fn, 'dx', n);
    p.args[0] = fixedInput(p.args[0]);
    p.args[1] = fixedInput(p.args[1]);
    const s1 = new Float64Array(p.view.C);
    const s2 = new Float64Array(p.view.C);
    await native.channelGradSumsAsync(...p.args, s1, s2, p.backend);
    const k = gradCoefficients(p, s1, s2);
    await native.channelGradApplyAsync(...p.args, k.g, k.a, k.b, dx.target, p.backend);
    return { dx: { data: await dx.deliver(), shape: p.view.shape }, dscale: { data: k.dscale, shape: [p.view.C] }, doffset: { data: k.doffset, shape: [p.view.C] } };
  } catch (e) {
    throw withCallerStack(e, site);
  }
}

/** TF's name for the same backward pass. */
export const fusedBatchNormGrad = batchNormalizationGrad;
export const fusedBatchNormGradAsync = batchNormalizationGradAsync;
