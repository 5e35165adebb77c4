// moments and batchNormalization: validation and normalization of arguments, then one
// call into the native binding.
import type { BatchNormalizationCall } from '../binding';
import { native } from './binding';
import { backendCode, type BackendChoice } from './backend';
import { withCallerStack } from './errors';
import {
  DeviceTensor, deviceBatchNorm, deviceBatchNormAsync, deviceMoments, deviceMomentsAsync, rejectDeviceParams,
  type DeviceMoments,
} from './device';
import { checkMomentsOptions, checkOptions, OPTION_KEYS } from './check';
import {
  AsyncOutput, broadcastShapes, checkEpsilon, paramOperands, checkOut, checkParam, checkTensor, describe, fixedInput, fmtShape, newFloat32, normalizeAxes,
  overlaps, product, sameMemory, type ParamLike, type Tensor,
} from './tensor';
import type { Communicator } from './sync/communicator';
import { rejectSync, syncMoments, wantsSync } from './sync/ops';

export interface MomentsOptions {
  /** Keep reduced axes with extent 1 (default false), as tf.nn.moments' keepdims. */
  keepDims?: boolean;
  /** Variance divisor is n − correction: 0 (default) = population variance as TF, 1 = unbiased. */
  correction?: number;
  /**
   * Accepted for tf.nn.moments compatibility. TF documents it as unused; here too the
   * statistics are computed in a way that needs no shift, so the result does not depend on it.
   */
  shift?: ParamLike | null;
  backend?: BackendChoice;
  /** Write the results into these arrays (length = number of outputs) instead of new ones. */
  out?: { mean: Float32Array; variance: Float32Array };
  /** Moments of the whole batch across the communicator's ranks (momentsAsync only). */
  sync?: Communicator;
}

export interface Moments {
  mean: Tensor;
  variance: Tensor;
}

export interface BatchNormOptions {
  backend?: BackendChoice;
  /** Write y here (length = product of the output shape). May be x.data itself (in place). */
  out?: Float32Array;
}

export interface MomentsPlan {
  x: Float32Array;
  shape: number[];
  axes: number[];
  correction: number;
  /** The caller's options.out, or null for fresh outputs. */
  out: { mean: Float32Array; variance: Float32Array } | null;
  n: number;
  outShape: number[];
  backend: ReturnType<typeof backendCode>;
}

export function planMoments(fn: string, x: unknown, axes: unknown, options: unknown): MomentsPlan {
  const t = checkTensor(fn, 'x', x);
  const o = checkOptions<MomentsOptions>(fn, options, OPTION_KEYS.moments);
  const ax = normalizeAxes(fn, axes, t.shape.length);
  const { keepDims, correction } = checkMomentsOptions(fn, o);
  if (o.shift !== undefined && o.shift !== null) checkParam(fn, 'options.shift', o.shift);
  const reduced = new Set(ax);
  const outShape = keepDims
    ? t.shape.map((d, i) => (reduced.has(i) ? 1 : d))
    : t.shape.filter((_, i) => !reduced.has(i));
  const n = product(outShape);
  let out: MomentsPlan['out'] = null;
  if (o.out !== undefined) {
    if (o.out === null || typeof o.out !== 'object') {
      throw new TypeError(`${fn}: options.out must be {mean, variance}, got ${describe(o.out)}`);
    }
    const mean = checkOut(fn, 'options.out.mean', o.out.mean, n);
    const variance = checkOut(fn, 'options.out.variance', o.out.variance, n);
    if (overlaps(mean, variance)) throw new RangeError(`${fn}: options.out.mean and options.out.variance overlap`);
    if (overlaps(mean, t.data) || overlaps(variance, t.data)) {
      throw new RangeError(`${fn}: options.out must not overlap x.data`);
    }
    out = { mean, variance };
  }
  return { x: t.data, shape: t.shape, axes: ax, correction, out, n, outShape, backend: backendCode(fn, o.backend) };
}

function momentsResult(p: MomentsPlan, mean: Float32Array, variance: Float32Array): Moments {
  return { mean: { data: mean, shape: p.outShape }, variance: { data: variance, shape: p.outShape.slice() } };
}

/**
 * Mean and variance of x over `axes` (all axes when omitted), as tf.nn.moments: population
 * variance unless options.correction says otherwise. Negative axes count from the end.
 */
export function moments(x: DeviceTensor, axes?: number | number[], options?: MomentsOptions): DeviceMoments;
export function moments(x: Tensor, axes?: number | number[], options?: MomentsOptions): Moments;
export function moments(x: Tensor | DeviceTensor, axes?: number | number[], options?: MomentsOptions): Moments | DeviceMoments {
  rejectSync('moments', options);
  if (x instanceof DeviceTensor) return deviceMoments('moments', x, axes, options);  // stays on the GPU
  const fn = 'moments';
  const p = planMoments(fn, x, axes, options);
  const mean = p.out?.mean ?? newFloat32(fn, 'the mean', p.n);
  const variance = p.out?.variance ?? newFloat32(fn, 'the variance', p.n);
  native.moments({ x: p.x, shape: p.shape, axes: p.axes, correction: p.correction, backend: p.backend, mean, variance });
  return momentsResult(p, mean, variance);
}

/** moments computed off the JS thread. x must not be modified until the promise settles. */
export async function momentsAsync(x: DeviceTensor, axes?: number | number[], options?: MomentsOptions): Promise<DeviceMoments>;
export async function momentsAsync(x: Tensor, axes?: number | number[], options?: MomentsOptions): Promise<Moments>;
export async function momentsAsync(
  x: Tensor | DeviceTensor, axes?: number | number[], options?: MomentsOptions,
): Promise<Moments | DeviceMoments> {
  if (wantsSync(options)) return syncMoments('momentsAsync', x, axes, options);
  if (x instanceof DeviceTensor) return deviceMomentsAsync('momentsAsync', x, axes, options);
  const fn = 'momentsAsync';
  const site = new Error();
  const p = planMoments(fn, x, axes, options);
  const mean = p.out ? AsyncOutput.into(fn, 'options.out.mean', p.out.mean) : AsyncOutput.fresh(fn, 'the mean', p.n);
  const variance = p.out ? AsyncOutput.into(fn, 'options.out.variance', p.out.variance) : AsyncOutput.fresh(fn, 'the variance', p.n);
  try {
    await native.momentsAsync({
      x: fixedInput(p.x), shape: p.shape, axes: p.axes, correction: p.correction, backend: p.backend,
      mean: mean.target, variance: variance.target,
    });
    return momentsResult(p, await mean.deliver(), await variance.deliver());
  } catch (e) {
    throw withCallerStack(e, site);
  }
}

interface BatchNormPlan {
  /** The binding's options with y.data left empty for the caller to fill in. */
  call: BatchNormalizationCall;
  /** The caller's options.out, or null for a fresh output. */
  out: Float32Array | null;
  n: number;
  outShape: number[];
}

function planBatchNorm(
  fn: string, x: unknown, mean: unknown, variance: unknown, offset: unknown, scale: unknown,
  varianceEpsilon: unknown, options: unknown,
): BatchNormPlan {
  const xt = checkTensor(fn, 'x', x);
  const m = checkParam(fn, 'mean', mean);
  const v = checkParam(fn, 'variance', variance);
  const off = offset === null || offset === undefined ? null : checkParam(fn, 'offset', offset);
  const sc = scale === null || scale === undefined ? null : checkParam(fn, 'scale', scale);
  const eps = checkEpsilon(fn, 'varianceEpsilon', varianceEpsilon);
  const o = checkOptions<BatchNormOptions>(fn, options, OPTION_KEYS.batchNormalization);
  const outShape = broadcastShapes(fn, paramOperands(xt.shape, m.shape, v.shape, off?.shape, sc?.shape));
  const n = product(outShape);
  let out: Float32Array | null = null;
  if (o.out !== undefined) {
    out = checkOut(fn, 'options.out', o.out, n);
    if (overlaps(out, xt.data) && !(sameMemory(out, xt.data) && xt.data.length === n)) {
      throw new RangeError(
        `${fn}: options.out overlaps x.data; only exact in-place use (out = x.data with x of the output shape ${fmtShape(outShape)}) is supported`,
      );
    }
    for (const [name, p] of [['mean', m], ['variance', v], ['offset', off], ['scale', sc]] as const) {
      if (p && overlaps(out, p.data)) throw new RangeError(`${fn}: options.out must not overlap ${name}`);
    }
  }
  return {
    call: {
      x: xt, mean: m, variance: v, offset: off, scale: sc,
      epsilon: eps, backend: backendCode(fn, o.backend), y: { data: new Float32Array(0), shape: outShape },
    },
    out,
    n,
    outShape,
  };
}

/** batchNormalization on host tensors, errors naming `fn` (fusedBatchNorm's paths share it). */
export function batchNormalizationAs(
  fn: string, x: unknown, mean: unknown, variance: unknown, offset: unknown, scale: unknown, varianceEpsilon: unknown,
  options: unknown,
): Tensor {
  const p = planBatchNorm(fn, x, mean, variance, offset, scale, varianceEpsilon, options);
  const out = p.out ?? newFloat32(fn, 'the output', p.n);
  p.call.y.data = out;
  native.batchNormalization(p.call);
  return { data: out, shape: p.outShape };
}

/**
 * batchNormalizationAsync on host tensors, errors naming `fn`. `own`: library memory that
 * options.out names and the caller (fusedBatchNormAsync) delivers itself.
 */
export async function batchNormalizationAsyncAs(
  fn: string, x: unknown, mean: unknown, variance: unknown, offset: unknown, scale: unknown, varianceEpsilon: unknown,
  options: unknown, own?: Float32Array,
): Promise<Tensor> {
  const site = new Error();
  const p = planBatchNorm(fn, x, mean, variance, offset, scale, varianceEpsilon, options);
  const out = own ? null : p.out ? AsyncOutput.into(fn, 'options.out', p.out) : AsyncOutput.fresh(fn, 'the output', p.n);
  const c = p.call;
  for (const t of [c.x, c.mean, c.variance, c.offset, c.scale]) if (t && t.data instanceof Float32Array) t.data = fixedInput(t.data);
  c.y.data = own ?? out!.target;
  try {
    await native.batchNormalizationAsync(c);
    return { data: own ?? await out!.deliver(), shape: p.outShape };
  } catch (e) {
    throw withCallerStack(e, site);
  }
}

/**
 * y = (x − mean) · scale / sqrt(variance + varianceEpsilon) + offset, as
 * tf.nn.batch_normalization, with numpy broadcasting of mean, variance, offset and scale
 * (tensors of any broadcastable shape, Float32Arrays = shape [length], or numbers;
 * offset/scale null = 0 / 1). The output shape is the broadcast of all five shapes.
 */
export function batchNormalization(
  x: DeviceTensor, mean: ParamLike | DeviceTensor, variance: ParamLike | DeviceTensor,
  offset: ParamLike | DeviceTensor | null | undefined, scale: ParamLike | DeviceTensor | null | undefined,
  varianceEpsilon: number, options?: BatchNormOptions,
): DeviceTensor;
export function batchNormalization(
  x: Tensor, mean: ParamLike, variance: ParamLike, offset: ParamLike | null | undefined,
  scale: ParamLike | null | undefined, varianceEpsilon: number, options?: BatchNormOptions,
): Tensor;
export function batchNormalization(
  x: Tensor | DeviceTensor, mean: ParamLike | DeviceTensor, variance: ParamLike | DeviceTensor,
  offset: ParamLike | DeviceTensor | null | undefined, scale: ParamLike | DeviceTensor | null | undefined,
  varianceEpsilon: number, options?: BatchNormOptions,
): Tensor | DeviceTensor {
  if (x instanceof DeviceTensor) {
    return deviceBatchNorm('batchNormalization', x, mean, variance, offset, scale, varianceEpsilon, options);
  }
  rejectDeviceParams('batchNormalization', { mean, variance, offset, scale });
  return batchNormalizationAs('batchNormalization', x, mean, variance, offset, scale, varianceEpsilon, options);
}

/** batchNormalization computed off the JS thread. Inputs must not be modified until it settles. */
export async function batchNormalizationAsync(
  x: DeviceTensor, mean: ParamLike | DeviceTensor, variance: ParamLike | DeviceTensor,
  offset: ParamLike | DeviceTensor | null | undefined, scale: ParamLike | DeviceTensor | null | undefined,
  varianceEpsilon: number, options?: BatchNormOptions,
): Promise<DeviceTensor>;
export async function batchNormalizationAsync(
  x: Tensor, mean: ParamLike, variance: ParamLike, offset: ParamLike | null | undefined,
  scale: ParamLike | null | undefined, varianceEpsilon: number, options?: BatchNormOptions,
): Promise<Tensor>;
export async function batchNormalizationAsync(
  x: Tensor | DeviceTensor, mean: ParamLike | DeviceTensor, variance: ParamLike | DeviceTensor,
  offset: ParamLike | DeviceTensor | null | undefined, scale: ParamLike | DeviceTensor | null | undefined,
  varianceEpsilon: number, options?: BatchNormOptions,
): Promise<Tensor | DeviceTensor> {
  if (x instanceof DeviceTensor) {
    return deviceBatchNormAsync('batchNormalizationAsync', x, mean, variance, offset, scale, varianceEpsilon, options);
  }
  rejectDeviceParams('batchNormalizationAsync', { mean, variance, offset, scale });
  return batchNormalizationAsyncAs('batchNormalizationAsync', x, mean, variance, offset, scale, varianceEpsilon, options);
}
