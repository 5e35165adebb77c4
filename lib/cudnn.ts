// The GPU paths of the training ops (issue 5): fusedBatchNorm and batchNormalizationGrad
// with DeviceTensor inputs. 'auto' asks the native selection (explain) which backend runs
// the call: cuDNN (one cudnnBatchNormalizationForwardTraining / Backward call) where it
// applies, else, for the forward, our CUDA kernels (moments, then batchNormalization).
// Results stay on the GPU as DeviceTensors. lib/training.ts dispatches here.
import type { BackendCode, BackendName } from '../binding';
import { native } from './binding';
import { backendCode, type BackendChoice } from './backend';
import { BackendError, withCallerStack } from './errors';
import { DeviceTensor } from './device';
import { checkBoolean, checkOptions, OPTION_KEYS } from './check';
import { channelView, checkFusedOptions, type ChannelView, checkEpsilon, checkTensor, describe, product, type Tensor } from './tensor';

/** Outcome of the cuDNN loader run afresh: diagnostics only (needs no GPU). */
export interface CudnnProbe {
  loaded: boolean;
  /** cudnnGetVersion(), e.g. 90100 for 9.1.0; 0 when not reached. */
  version: number;
  /** What was opened: a path or a soname. */
  path: string;
  /** Why cuDNN cannot be used; null when it loaded. */
  reason: string | null;
}

/**
 * Runs the cuDNN loader (dlopen, dlsym of every symbol, version check) on `path` — a
 * library file or a directory — or, without one, on BATCHNORM_CUDNN_PATH / the default
 * sonames. Does not change which cuDNN the process uses (backends() reports that one).
 */
export function cudnnProbe(path?: string): CudnnProbe {
  if (path !== undefined && typeof path !== 'string') throw new TypeError(`cudnnProbe: path must be a string, got ${describe(path)}`);
  return native.cudnnProbe(path);
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

type Vec = DeviceTensor | Float32Array | Tensor | number | null | undefined;

/** Host copy of a per-channel vector (downloads a DeviceTensor: C floats). */
function hostVector(fn: string, name: string, v: Vec, C: number, dflt: number | null): Float32Array | null {
  if (v === null || v === undefined) {
    if (dflt === null) throw new TypeError(`${fn}: ${name} is required`);
    return new Float32Array(C).fill(dflt);
  }
  if (typeof v === 'number') return new Float32Array(C).fill(v);
  const data = v instanceof DeviceTensor ? v.download() : v instanceof Float32Array ? v : checkTensor(fn, name, v).data;
  if (data.length !== C) throw new RangeError(`${fn}: ${name} has ${data.length} elements but x has ${C} channels`);
  return data;
}

/** Per-channel vectors as DeviceTensors; uploads are tracked for disposal after the call. */
class Vectors {
  readonly temps: DeviceTensor[] = [];
  constructor(private readonly fn: string, private readonly C: number) {}

  get(name: string, v: Vec, dflt: number | null): DeviceTensor | null {
    if (v instanceof DeviceTensor) {
      if (v.length !== this.C) throw new RangeError(`${this.fn}: ${name} has ${v.length} elements but x has ${this.C} channels`);
      return v;
    }
    if ((v === null || v === undefined) && dflt === null) return null;
    return this.upload(hostVector(this.fn, name, v, this.C, dflt)!);
  }

  upload(data: Float32Array): DeviceTensor {
    const t = DeviceTensor.upload({ data, shape: [this.C] });
    this.temps.push(t);
    return t;
  }

  dispose(): void {
    // In-flight GPU work keeps its blocks (stream order + the caching allocator).
    for (const t of this.temps) t.dispose();
  }
}

function emptyVectors(C: number, k: number): DeviceTensor[] {
  const out: DeviceTensor[] = [];
  try {
    for (let i = 0; i < k; i++) out.push(DeviceTensor.empty([C]));
  } catch (e) {
    out.forEach((t) => t.dispose());
    throw e;
  }
  return out;
}

interface FusedOptions {
  mean?: Vec;
  variance?: Vec;
  epsilon?: number;
  exponentialAvgFactor?: number;
  dataFormat?: string;
  axis?: number;
  isTraining?: boolean;
  backend?: BackendChoice;
  out?: unknown;
}

interface FusedDevicePlan {
  x: DeviceTensor;
  l: ChannelView;
  eps: number;
  f: number;
  training: boolean;
  code: BackendCode;
  chosen: BackendName;
  o: FusedOptions;
}

function planFusedDevice(fn: string, x: DeviceTensor, options: unknown): FusedDevicePlan {
  x.handle(fn, 'x');
  const o = checkOptions<FusedOptions>(fn, options, OPTION_KEYS.fusedBatchNorm);
  if (o.out !== undefined) throw new TypeError(`${fn}: options.out is not supported with DeviceTensor inputs`);
  const { view: l, eps, f, training } = checkFusedOptions(fn, x.shape, o);
  const code = backendCode(fn, o.backend);
  const chosen = training
    ? native.explain('fusedBatchNorm', code, true, { shape: l.shape, axis: l.axis, epsilon: eps }).backend
    : 'cuda';
  return { x, l, eps, f, training, code, chosen, o };
}

function runFusedDevice(fn: string, p: FusedDevicePlan, scale: Vec, offset: Vec, async: true): Promise<DeviceFusedBatchNormResult>;
function runFusedDevice(fn: string, p: FusedDevicePlan, scale: Vec, offset: Vec, async: false): DeviceFusedBatchNormResult;
function runFusedDevice(
  fn: string, p: FusedDevicePlan, scale: Vec, offset: Vec, async: boolean,
): DeviceFusedBatchNormResult | Promise<DeviceFusedBatchNormResult> {
  const { l, eps, f } = p;
  const C = l.C;
  const v = new Vectors(fn, C);
  const h = (t: DeviceTensor) => t.handle(fn);
  let owned: DeviceTensor[] = [];
  try {
    const sc = v.get('scale', scale, 1)!;
    const off = v.get('offset', offset, 0)!;
    const needRunning = !p.training || f !== 1;
    const rm = v.get('options.mean', p.o.mean, needRunning ? null : 0);
    const rv = v.get('options.variance', p.o.variance, needRunning ? null : 0);
    if (needRunning && (!rm || !rv)) throw new TypeError(`${fn}: options.mean and options.variance are required`);
    const y = DeviceTensor.empty(l.shape);
    owned = [y];
    if (p.chosen === 'cudnn') {
      const outs = emptyVectors(C, 7);
      owned.push(...outs);
      const [bm, bv, bvb, rmo, rvo, sm, sis] = outs;
      const args = [
        p.x.handle(fn, 'x'), l.shape, l.axis, h(sc), h(off), rm ? h(rm) : null, rv ? h(rv) : null, eps, f,
        h(y), h(bm), h(bv), h(bvb), h(rmo), h(rvo), h(sm), h(sis), p.code,
      ] as const;
      const result: DeviceFusedBatchNormResult = {
        y, batchMean: bm, batchVariance: bv, batchVarianceBiased: bvb, runningMean: rmo, runningVariance: rvo,
        savedMean: sm, savedInvStd: sis,
      };
      if (async) {
        return native.fusedBatchNormDeviceAsync(...args).then(() => result, (e: unknown) => {
          owned.forEach((t) => t.dispose());
          throw e;
        }).finally(() => v.dispose());
      }
      native.fusedBatchNormDevice(...args);
      v.dispose();
      return result;
    }
    // Our CUDA kernels: statistics (moments), then the C-element bookkeeping on the host
    // exactly as the CPU path does it, then normalization on the GPU.
    let mean: Float32Array;
    let varBiased: Float32Array;
    if (p.training) {
      const [m, va] = emptyVectors(C, 2);
      v.temps.push(m, va);
      native.moments(p.x.handle(fn, 'x'), l.shape, l.reduceAxes, 0, h(m), h(va), p.code);
      mean = m.download();
      varBiased = va.download();
    } else {
      mean = hostVector(fn, 'options.mean', rm, C, null)!;
      varBiased = hostVector(fn, 'options.variance', rv, C, null)!;
    }
    const n = l.n;
    const varUnbiased = p.training ? Float32Array.from(varBiased, (x) => (x * n) / Math.max(n - 1, 1)) : varBiased.slice();
    const runMean = needRunning && p.training ? hostVector(fn, 'options.mean', rm, C, null)! : null;
    const runVar = needRunning && p.training ? hostVector(fn, 'options.variance', rv, C, null)! : null;
    const running = (batch: Float32Array, run: Float32Array | null) =>
      !p.training || f === 1 ? batch.slice() : Float32Array.from(batch, (b, c) => (1 - f) * run![c] + f * b);
    const up = (data: Float32Array) => DeviceTensor.upload({ data, shape: [C] });
    const meanT = up(mean);
    owned.push(meanT);
    const varBT = up(varBiased);
    owned.push(varBT);
    native.batchNormalization(p.x.handle(fn, 'x'), l.shape, h(meanT), l.paramShape, h(varBT), l.paramShape,
      h(off), l.paramShape, h(sc), l.paramShape, eps, h(y), l.shape, p.code);
    const result: DeviceFusedBatchNormResult = {
      y, batchMean: meanT, batchVariance: up(varUnbiased), batchVarianceBiased: varBT,
      runningMean: up(running(mean, runMean)), runningVariance: up(running(varUnbiased, runVar)),
      savedMean: up(mean), savedInvStd: up(Float32Array.from(varBiased, (x) => 1 / Math.sqrt(x + eps))),
    };
    v.dispose();
    return async ? Promise.resolve(result) : result;
  } catch (e) {
    owned.forEach((t) => t.dispose());
    v.dispose();
    throw e;
  }
}

/** @internal fusedBatchNorm with a DeviceTensor x (lib/training.ts dispatches here). */
export function deviceFusedBatchNorm(fn: string, x: DeviceTensor, scale: Vec, offset: Vec, options: unknown): DeviceFusedBatchNormResult {
  return runFusedDevice(fn, planFusedDevice(fn, x, options), scale, offset, false);
}

/** @internal */
export async function deviceFusedBatchNormAsync(
  fn: string, x: DeviceTensor, scale: Vec, offset: Vec, options: unknown,
): Promise<DeviceFusedBatchNormResult> {
  const site = new Error();
  try {
    return await runFusedDevice(fn, planFusedDevice(fn, x, options), scale, offset, true);
  } catch (e) {
    throw withCallerStack(e, site);
  }
}

interface GradOptions {
  isTraining?: boolean;
  dataFormat?: string;
  axis?: number;
  backend?: BackendChoice;
  out?: unknown;
  epsilon?: number;
}

function runGradDevice(
  fn: string, dy: unknown, x: DeviceTensor, scale: Vec, saved: unknown, options: unknown, async: boolean,
): DeviceBatchNormGrads | Promise<DeviceBatchNormGrads> {
  if (!(dy instanceof DeviceTensor)) throw new TypeError(`${fn}: dy must be a DeviceTensor when x is one, got ${describe(dy)}`);
  if (dy.shape.join(',') !== x.shape.join(',')) {
    throw new RangeError(`${fn}: dy has shape [${dy.shape.join(', ')}] but x has [${x.shape.join(', ')}]`);
  }
  const o = checkOptions<GradOptions>(fn, options, OPTION_KEYS.batchNormalizationGrad);
  if (o.out !== undefined) throw new TypeError(`${fn}: options.out is not supported with DeviceTensor inputs`);
  const l = channelView(fn, x.shape, o.dataFormat, o.axis);
  const training = checkBoolean(fn, 'options.isTraining', o.isTraining, true);
  if (!training) {
    throw new BackendError(`${fn}: isTraining false is not supported for DeviceTensor inputs in this version; download() them`, 'ERR_UNSUPPORTED');
  }
  const eps = checkEpsilon(fn, 'options.epsilon', o.epsilon ?? 1e-3);
  if (!saved || typeof saved !== 'object') {
    throw new TypeError(`${fn}: saved must be {mean, invStd} (fusedBatchNorm's savedMean / savedInvStd), got ${describe(saved)}`);
  }
  const sv = saved as { mean?: Vec; invStd?: Vec };
  const code = backendCode(fn, o.backend);
  // Throws ERR_UNSUPPORTED with the reason when cuDNN cannot run it (no other GPU backward).
  native.explain('batchNormalizationGrad', code, true, { shape: l.shape, axis: l.axis, epsilon: eps });
  const v = new Vectors(fn, l.C);
  const owned: DeviceTensor[] = [];
  try {
    const h = (t: DeviceTensor) => t.handle(fn);
    const sc = v.get('scale', scale, 1)!;
    const sm = v.get('saved.mean', sv.mean, null);
    const si = v.get('saved.invStd', sv.invStd, null);
    if (!sm || !si) throw new TypeError(`${fn}: saved.mean and saved.invStd are required`);
    const dx = DeviceTensor.empty(l.shape);
    owned.push(dx);
    const [dscale, doffset] = emptyVectors(l.C, 2);
    owned.push(dscale, doffset);
    const args = [dy.handle(fn, 'dy'), x.handle(fn, 'x'), l.shape, l.axis, h(sc), h(sm), h(si), eps, h(dx), h(dscale), h(doffset), code] as const;
    const result = { dx, dscale, doffset };
    if (async) {
      return native.batchNormGradDeviceAsync(...args).then(() => result, (e: unknown) => {
        owned.forEach((t) => t.dispose());
        throw e;
      }).finally(() => v.dispose());
    }
    native.batchNormGradDevice(...args);
    v.dispose();
    return result;
  } catch (e) {
    owned.forEach((t) => t.dispose());
    v.dispose();
    throw e;
  }
}

/** @internal batchNormalizationGrad with DeviceTensor inputs (cuDNN only in this version). */
export function deviceBatchNormGrad(fn: string, dy: unknown, x: DeviceTensor, scale: Vec, saved: unknown, options: unknown): DeviceBatchNormGrads {
  return runGradDevice(fn, dy, x, scale, saved, options, false) as DeviceBatchNormGrads;
}

/** @internal */
export async function deviceBatchNormGradAsync(
  fn: string, dy: unknown, x: DeviceTensor, scale: Vec, saved: unknown, options: unknown,
): Promise<DeviceBatchNormGrads> {
  const site = new Error();
  try {
    return await runGradDevice(fn, dy, x, scale, saved, options, true);
  } catch (e) {
    throw withCallerStack(e, site);
  }
}

