// GPU-resident tensors. A DeviceTensor keeps float32 data in GPU memory between calls:
// ops given DeviceTensors return DeviceTensors and never copy through the host. Memory
// comes from a caching allocator (freed blocks are reused by size class), goes back to
// it on dispose(), and — as a safety net only — when a forgotten tensor is collected.
import type { BackendCode, BatchNormalizationCall, DeviceHandle, F32OrDevice, MomentsCall } from '../binding';
import { native } from './binding';
import { backendCode, type BackendChoice } from './backend';
import { withCallerStack } from './errors';
import { checkMomentsOptions, checkOptions, OPTION_KEYS } from './check';
import {
  AsyncOutput, broadcastShapes, checkEpsilon, paramOperands, checkParam, checkShape, checkTensor, describe, fixedInput, newFloat32, normalizeAxes, product,
  type Tensor,
} from './tensor';

// Only this module constructs DeviceTensors: a handle must come from the native allocator.
const INTERNAL = Symbol('DeviceTensor');

export class DeviceTensor {
  readonly shape: readonly number[];
  readonly length: number;
  #handle: DeviceHandle | null;

  private constructor(token: symbol, handle: DeviceHandle, shape: number[]) {
    if (token !== INTERNAL) {
      throw new TypeError('new DeviceTensor: DeviceTensors are made by DeviceTensor.upload(tensor) or DeviceTensor.empty(shape), not by the constructor');
    }
    this.#handle = handle;
    this.shape = Object.freeze(shape);
    this.length = product(shape);
  }

  /** Copies a host tensor (or a Float32Array, shape [length]) into GPU memory. */
  static upload(t: Tensor | Float32Array): DeviceTensor {
    const { data, shape } = t instanceof Float32Array ? { data: t, shape: [t.length] } : checkTensor('DeviceTensor.upload', 't', t);
    return new DeviceTensor(INTERNAL, native.deviceUpload(data), shape);
  }

  /** A tensor of the given shape with uninitialized contents. */
  static empty(shape: readonly number[]): DeviceTensor {
    const s = checkShape('DeviceTensor.empty', 'shape', shape);
    return new DeviceTensor(INTERNAL, native.deviceAlloc(product(s)), s);
  }

  get disposed(): boolean {
    return this.#handle === null;
  }

  /** Waits for the GPU work that produces this tensor, then copies it to the host. */
  download(out?: Float32Array): Float32Array {
    const h = this.handle('DeviceTensor.download');
    const dst = this.checkOut('DeviceTensor.download', out);
    native.deviceDownload(h, dst);
    return dst;
  }

  /** download() with the wait and the copy off the JS thread. */
  async downloadAsync(out?: Float32Array): Promise<Float32Array> {
    const site = new Error();
    const h = this.handle('DeviceTensor.downloadAsync');
    const fn = 'DeviceTensor.downloadAsync';
    // The copy runs on a worker thread: a caller's `out` gets the data on the JS thread afterwards.
    const dst = out === undefined ? AsyncOutput.fresh(fn, 'the result', this.length)
      : AsyncOutput.into(fn, 'out', this.checkOut(fn, out));
    try {
      await native.deviceDownloadAsync(h, dst.target);
      return await dst.deliver();
    } catch (e) {
      throw withCallerStack(e, site);
    }
  }

  /** download() as a host tensor {data, shape}. */
  toTensor(): Tensor {
    return { data: this.download(), shape: this.shape.slice() };
  }

  /** Returns the memory to the cache now. Calling it again is fine; any other use afterwards throws. */
  dispose(): void {
    if (this.#handle === null) return;
    native.deviceDispose(this.#handle);
    this.#handle = null;
  }

  /** @internal The native handle; TypeError once disposed. */
  handle(fn: string, name = 'this tensor'): DeviceHandle {
    if (this.#handle === null) throw new TypeError(`${fn}: ${name} is a disposed DeviceTensor`);
    return this.#handle;
  }

  private checkOut(fn: string, out: Float32Array | undefined): Float32Array {
    if (out === undefined) return newFloat32(fn, 'the result', this.length);
    if (!(out instanceof Float32Array)) throw new TypeError(`${fn}: out must be a Float32Array, got ${describe(out)}`);
    if (out.length !== this.length) throw new RangeError(`${fn}: out has ${out.length} elements but the tensor has ${this.length}`);
    return out;
  }
}

export function isDeviceTensor(v: unknown): v is DeviceTensor {
  return v instanceof DeviceTensor;
}

export interface DeviceMemoryInfo {
  /** Bytes in live blocks (DeviceTensors and in-flight scratch), rounded to size classes. */
  allocatedBytes: number;
  /** Bytes in freed blocks kept for reuse (emptyCache() releases them). */
  cachedBytes: number;
  /** allocatedBytes + cachedBytes: what this process holds from cudaMalloc. */
  reservedBytes: number;
  peakAllocatedBytes: number;
  cudaMallocCalls: number;
  cacheHits: number;
}

/** The caching allocator's accounting (all zeros when CUDA was never used). */
export function memoryInfo(): DeviceMemoryInfo {
  return native.deviceMemoryInfo();
}

/** Releases every cached (freed) block back to the driver. Live DeviceTensors are untouched. */
export function emptyCache(): void {
  native.deviceEmptyCache();
}

export interface DeviceMoments {
  mean: DeviceTensor;
  variance: DeviceTensor;
}

interface DeviceMomentsOptions {
  keepDims?: boolean;
  correction?: number;
  shift?: unknown;
  backend?: BackendChoice;
  out?: unknown;
}

function planDeviceMoments(fn: string, x: DeviceTensor, axes: unknown, options: unknown) {
  const xh = x.handle(fn, 'x');
  const o = checkOptions<DeviceMomentsOptions>(fn, options, OPTION_KEYS.moments);
  if (o.out !== undefined) throw new TypeError(`${fn}: options.out is not supported with DeviceTensor inputs`);
  const shape = x.shape.slice();
  const ax = normalizeAxes(fn, axes, shape.length);
  const { keepDims, correction } = checkMomentsOptions(fn, o);
  if (o.shift !== undefined && o.shift !== null && !(o.shift instanceof DeviceTensor)) checkParam(fn, 'options.shift', o.shift);
  const reduced = new Set(ax);
  const outShape = keepDims ? shape.map((d, i) => (reduced.has(i) ? 1 : d)) : shape.filter((_, i) => !reduced.has(i));
  const backend: BackendCode = backendCode(fn, o.backend);
  const mean = DeviceTensor.empty(outShape);
  let variance: DeviceTensor;
  try {
    variance = DeviceTensor.empty(outShape);
  } catch (e) {
    mean.dispose();
    throw e;
  }
  return { xh, shape, ax, correction, mean, variance, backend };
}

function momentsCall(fn: string, p: ReturnType<typeof planDeviceMoments>): MomentsCall {
  return {
    x: p.xh, shape: p.shape, axes: p.ax, correction: p.correction, backend: p.backend,
    mean: p.mean.handle(fn), variance: p.variance.handle(fn),
  };
}

/** @internal moments on a DeviceTensor (lib/ops.ts dispatches here). */
export function deviceMoments(fn: string, x: DeviceTensor, axes: unknown, options: unknown): DeviceMoments {
  const p = planDeviceMoments(fn, x, axes, options);
  try {
    native.moments(momentsCall(fn, p));
  } catch (e) {
    p.mean.dispose();
    p.variance.dispose();
    throw e;
  }
  return { mean: p.mean, variance: p.variance };
}

/** @internal */
export async function deviceMomentsAsync(fn: string, x: DeviceTensor, axes: unknown, options: unknown): Promise<DeviceMoments> {
  const site = new Error();
  const p = planDeviceMoments(fn, x, axes, options);
  try {
    await native.momentsAsync(momentsCall(fn, p));
  } catch (e) {
    p.mean.dispose();
    p.variance.dispose();
    throw withCallerStack(e, site);
  }
  return { mean: p.mean, variance: p.variance };
}

function param(fn: string, name: string, p: unknown): { data: F32OrDevice; shape: number[] } {
  if (p instanceof DeviceTensor) return { data: p.handle(fn, name), shape: p.shape.slice() };
  return checkParam(fn, name, p);
}

function planDeviceBatchNorm(
  fn: string, x: DeviceTensor, mean: unknown, variance: unknown, offset: unknown, scale: unknown,
  varianceEpsilon: unknown, options: unknown,
) {
  const xh = x.handle(fn, 'x');
  const m = param(fn, 'mean', mean);
  const v = param(fn, 'variance', variance);
  const off = offset === null || offset === undefined ? null : param(fn, 'offset', offset);
  const sc = scale === null || scale === undefined ? null : param(fn, 'scale', scale);
  const eps = checkEpsilon(fn, 'varianceEpsilon', varianceEpsilon);
  const o = checkOptions<{ backend?: BackendChoice; out?: unknown }>(fn, options, OPTION_KEYS.batchNormalization);
  if (o.out !== undefined) throw new TypeError(`${fn}: options.out is not supported with DeviceTensor inputs`);
  const outShape = broadcastShapes(fn, paramOperands(x.shape, m.shape, v.shape, off?.shape, sc?.shape));
  const backend = backendCode(fn, o.backend);
  const y = DeviceTensor.empty(outShape);
  const call: BatchNormalizationCall = {
    x: { data: xh, shape: x.shape.slice() }, mean: m, variance: v, offset: off, scale: sc,
    epsilon: eps, backend, y: { data: y.handle(fn), shape: outShape },
  };
  return { call, y };
}

/** @internal batchNormalization with a DeviceTensor x (parameters: DeviceTensors, host tensors or numbers). */
export function deviceBatchNorm(
  fn: string, x: DeviceTensor, mean: unknown, variance: unknown, offset: unknown, scale: unknown,
  varianceEpsilon: unknown, options: unknown,
): DeviceTensor {
  const p = planDeviceBatchNorm(fn, x, mean, variance, offset, scale, varianceEpsilon, options);
  try {
    native.batchNormalization(p.call);
  } catch (e) {
    p.y.dispose();
    throw e;
  }
  return p.y;
}

/** @internal */
export async function deviceBatchNormAsync(
  fn: string, x: DeviceTensor, mean: unknown, variance: unknown, offset: unknown, scale: unknown,
  varianceEpsilon: unknown, options: unknown,
): Promise<DeviceTensor> {
  const site = new Error();
  const p = planDeviceBatchNorm(fn, x, mean, variance, offset, scale, varianceEpsilon, options);
  // Host parameters are read by the worker thread.
  const c = p.call;
  for (const t of [c.mean, c.variance, c.offset, c.scale]) if (t && t.data instanceof Float32Array) t.data = fixedInput(t.data);
  try {
    await native.batchNormalizationAsync(c);
  } catch (e) {
    p.y.dispose();
    throw withCallerStack(e, site);
  }
  return p.y;
}

/** @internal TypeError when a DeviceTensor parameter is passed with a host x. */
export function rejectDeviceParams(fn: string, params: Record<string, unknown>): void {
  for (const [name, p] of Object.entries(params)) {
    if (p instanceof DeviceTensor) {
      throw new TypeError(`${fn}: ${name} is a DeviceTensor but x is not; upload x too (DeviceTensor.upload) or download ${name}`);
    }
  }
}

/**
 * Benchmark helper: runs the op `reps` times after `warmup` untimed runs and returns the
 * device time of each run in milliseconds (CUDA events). op 'copy' / 'read' time a
 * device-to-device cudaMemcpy / a read-only kernel over spec.bytes: the bandwidth floors.
 */
export function deviceTimeOp(
  op: 'moments' | 'batchNormalization' | 'copy' | 'read', spec: Record<string, unknown>, warmup = 5, reps = 20,
): number[] {
  if (spec === null || typeof spec !== 'object') throw new TypeError(`deviceTimeOp: spec must be an object, got ${describe(spec)}`);
  const s: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(spec)) s[k] = v instanceof DeviceTensor ? v.handle('deviceTimeOp', `spec.${k}`) : v;
  return native.deviceTimeOp(op, s, warmup, reps);
}
