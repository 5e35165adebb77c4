// Tensors are plain {data, shape} records: a Float32Array in row-major (C) order and its
// dimensions. Anything with those two fields works — tfjs' dataSync() output with
// tensor.shape, an ndarray with default strides, or our own results.
import { native } from './binding';

import { checkBoolean, checkEpsilon, checkInteger, checkNumber, checkOneOf, describe } from './check';

export interface Tensor {
  readonly data: Float32Array;
  readonly shape: readonly number[];
}

/** A parameter of batchNormalization: a tensor, a Float32Array (shape [length]) or a number. */
export type ParamLike = Tensor | Float32Array | number;

export const MAX_RANK = 64;

export { describe, checkEpsilon, checkOptions } from './check';

export function fmtShape(shape: readonly number[]): string {
  return `[${shape.join(', ')}]`;
}

export function product(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

/** Validates a shape: array of non-negative safe integers, rank <= MAX_RANK. */
export function checkShape(fn: string, name: string, shape: unknown): number[] {
  if (!Array.isArray(shape)) {
    throw new TypeError(`${fn}: ${name} must be an array of non-negative integers, got ${describe(shape)}`);
  }
  if (shape.length > MAX_RANK) {
    throw new RangeError(`${fn}: ${name} has rank ${shape.length}; at most ${MAX_RANK} dimensions are supported`);
  }
  for (let i = 0; i < shape.length; i++) {
    const d = shape[i];
    if (typeof d === 'number' && Number.isInteger(d) && d > Number.MAX_SAFE_INTEGER) {
      throw new RangeError(`${fn}: ${name}[${i}] = ${d} is larger than Number.MAX_SAFE_INTEGER`);
    }
    if (typeof d !== 'number' || !Number.isSafeInteger(d) || d < 0) {
      throw new TypeError(`${fn}: ${name}[${i}] must be a non-negative integer, got ${describe(d)}`);
    }
  }
  const n = product(shape);
  if (!Number.isSafeInteger(n)) {
    throw new RangeError(`${fn}: ${name} ${fmtShape(shape)} has more elements than Number.MAX_SAFE_INTEGER`);
  }
  return shape.slice();
}

/** What converts a near-miss (an Array, another typed array) into what the API takes. */
function conversionHint(v: unknown): string {
  if (Array.isArray(v) || (ArrayBuffer.isView(v) && !(v instanceof DataView))) {
    return v instanceof Float32Array ? '; tensor(data, shape) wraps it' : '; tensor(data, shape) converts it to float32';
  }
  return '';
}

function checkData(fn: string, name: string, data: unknown): Float32Array {
  if (!(data instanceof Float32Array)) {
    throw new TypeError(`${fn}: ${name} must be a Float32Array, got ${describe(data)}${conversionHint(data)}`);
  }
  return data;
}

/** A TensorFlow.js tensor, or anything shaped like one: dataSync(), shape and dtype. */
function isTfjsTensor(t: object): t is { dataSync(): unknown; shape: unknown; dtype: string; isDisposed?: boolean } {
  const o = t as { dataSync?: unknown; shape?: unknown; dtype?: unknown };
  return typeof o.dataSync === 'function' && Array.isArray(o.shape) && typeof o.dtype === 'string';
}

/**
 * A float32 TensorFlow.js tensor is read once with dataSync() and used as it is (no copy
 * for float32); other dtypes must be cast first, which only the caller can do.
 */
function fromTfjs(fn: string, name: string, t: { dataSync(): unknown; shape: unknown; dtype: string; isDisposed?: boolean }): { data: Float32Array; shape: number[] } {
  if (t.isDisposed === true) throw new TypeError(`${fn}: ${name} is a disposed TensorFlow.js tensor`);
  if (t.dtype !== 'float32') {
    throw new TypeError(`${fn}: ${name} is a TensorFlow.js tensor of dtype '${t.dtype}'; only float32 is accepted: pass tf.cast(${name}, 'float32')`);
  }
  const shape = checkShape(fn, `${name}.shape`, t.shape);
  const data = checkData(fn, `${name}.dataSync()`, t.dataSync());
  if (data.length !== product(shape)) {
    throw new RangeError(`${fn}: ${name}.dataSync() has ${data.length} elements but ${name}.shape ${fmtShape(shape)} needs ${product(shape)}`);
  }
  return { data, shape };
}

/**
 * Validates a tensor argument and returns a normalized copy of its shape. ndarray-style
 * objects (with `stride`/`offset`) are accepted only when they are plain row-major views;
 * float32 TensorFlow.js tensors are read with dataSync().
 */
export function checkTensor(fn: string, name: string, t: unknown): { data: Float32Array; shape: number[] } {
  if (t === null || typeof t !== 'object' || ArrayBuffer.isView(t) || Array.isArray(t)) {
    throw new TypeError(`${fn}: ${name} must be a tensor {data: Float32Array, shape: number[]}, got ${describe(t)}${conversionHint(t)}`);
  }
  if (!((t as { data?: unknown }).data instanceof Float32Array) && isTfjsTensor(t)) return fromTfjs(fn, name, t);
  const obj = t as { data?: unknown; shape?: unknown; stride?: unknown; offset?: unknown };
  const data = checkData(fn, `${name}.data`, obj.data);
  const shape = checkShape(fn, `${name}.shape`, obj.shape);
  const n = product(shape);
  if (data.length !== n) {
    throw new RangeError(
      `${fn}: ${name}.data has ${data.length} elements but ${name}.shape ${fmtShape(shape)} needs ${n}`,
    );
  }
  if (obj.offset !== undefined && obj.offset !== 0) {
    throw new RangeError(`${fn}: ${name} is a view with offset ${describe(obj.offset)}; pass a contiguous tensor`);
  }
  if (Array.isArray(obj.stride)) {
    let expect = 1;
    for (let i = shape.length - 1; i >= 0; i--) {
      if (shape[i] > 1 && obj.stride[i] !== expect) {
        throw new RangeError(`${fn}: ${name} has strides ${fmtShape(obj.stride)}, not row-major; pass a contiguous tensor`);
      }
      expect *= shape[i];
    }
  }
  return { data, shape };
}

/** A batchNormalization parameter as a tensor: numbers become shape [], arrays shape [n]. */
export function checkParam(fn: string, name: string, p: unknown): { data: Float32Array; shape: number[] } {
  if (typeof p === 'number') return { data: new Float32Array([p]), shape: [] };
  if (p instanceof Float32Array) return { data: p, shape: [p.length] };
  if (p !== null && typeof p === 'object' && !ArrayBuffer.isView(p) && !Array.isArray(p)) {
    return checkTensor(fn, name, p);
  }
  throw new TypeError(`${fn}: ${name} must be a tensor, a Float32Array or a number, got ${describe(p)}${conversionHint(p)}`);
}

/** numpy broadcasting of shapes (aligned right); RangeError naming the operand that fails. */
export function broadcastShapes(fn: string, operands: { name: string; shape: readonly number[]; hint?: string }[]): number[] {
  const rank = Math.max(0, ...operands.map((o) => o.shape.length));
  const out = new Array<number>(rank).fill(1);
  for (const { shape } of operands) {
    for (let i = 0; i < shape.length; i++) {
      const d = rank - shape.length + i;
      if (shape[i] !== 1) out[d] = out[d] === 1 ? shape[i] : out[d];
    }
  }
  for (const { name, shape, hint } of operands) {
    for (let i = 0; i < shape.length; i++) {
      const d = rank - shape.length + i;
      if (shape[i] !== 1 && shape[i] !== out[d]) {
        const others = operands.map((o) => `${o.name} ${fmtShape(o.shape)}`).join(', ');
        throw new RangeError(`${fn}: shapes do not broadcast: ${name} has ${shape[i]} where another operand has ${out[d]} (${others})${hint ?? ''}`);
      }
    }
  }
  return out;
}

/**
 * The operands of batchNormalization for broadcastShapes. A parameter of lower rank than x
 * that fails to broadcast is most often moments' output without keepDims: say so.
 */
export function paramOperands(
  x: readonly number[], mean: readonly number[], variance: readonly number[],
  offset: readonly number[] | undefined, scale: readonly number[] | undefined,
): { name: string; shape: readonly number[]; hint?: string }[] {
  // x's shape with some axes dropped: what moments(x, axes) returns without keepDims.
  const reduced = (shape: readonly number[]) => {
    let j = 0;
    for (let i = 0; i < x.length && j < shape.length; i++) if (x[i] === shape[j]) j++;
    return shape.length > 0 && shape.length < x.length && j === shape.length;
  };
  const op = (name: string, shape: readonly number[]) => ({
    name, shape,
    hint: reduced(shape)
      ? `; if ${name} comes from moments(x, axes), pass {keepDims: true} so that it keeps the reduced axes and broadcasts against x`
      : undefined,
  });
  const out = [{ name: 'x', shape: x }, op('mean', mean), op('variance', variance)];
  if (offset) out.push(op('offset', offset));
  if (scale) out.push(op('scale', scale));
  return out;
}

/** Normalizes axes: integers in [-rank, rank), distinct; returns them sorted ascending. */
export function normalizeAxes(fn: string, axes: unknown, rank: number): number[] {
  if (axes === undefined || axes === null) return Array.from({ length: rank }, (_, i) => i);
  const list = typeof axes === 'number' ? [axes] : axes;
  if (!Array.isArray(list)) {
    throw new TypeError(`${fn}: axes must be an integer or an array of integers, got ${describe(axes)}`);
  }
  const seen = new Set<number>();
  const out: number[] = [];
  for (let i = 0; i < list.length; i++) {
    const a = list[i];
    const label = typeof axes === 'number' ? 'axes' : `axes[${i}]`;
    if (typeof a !== 'number' || !Number.isInteger(a)) {
      throw new TypeError(`${fn}: ${label} must be an integer, got ${describe(a)}`);
    }
    if (a < -rank || a >= rank) {
      throw new RangeError(`${fn}: ${label} = ${a} is out of range for a tensor of rank ${rank}`);
    }
    const n = a < 0 ? a + rank : a;
    if (seen.has(n)) {
      throw new RangeError(`${fn}: ${label} = ${a} repeats axis ${n}`);
    }
    seen.add(n);
    out.push(n);
  }
  return out.sort((p, q) => p - q);
}

/** Creates a tensor, copying `data` when it is a plain array. Default shape: [length]. */
export function tensor(data: Float32Array | ArrayLike<number>, shape?: readonly number[]): Tensor {
  if (!(Array.isArray(data) || (ArrayBuffer.isView(data) && !(data instanceof DataView)))) {
    throw new TypeError(`tensor: data must be a Float32Array, another typed array or an Array of numbers, got ${describe(data)}`);
  }
  const arr = data instanceof Float32Array ? data : Float32Array.from(data as ArrayLike<number>);
  const s = shape === undefined ? [arr.length] : checkShape('tensor', 'shape', shape);
  if (product(s) !== arr.length) {
    throw new RangeError(`tensor: data has ${arr.length} elements but shape ${fmtShape(s)} needs ${product(s)}`);
  }
  return { data: arr, shape: s };
}

/**
 * How two views' memory relates, judged by address: distinct SharedArrayBuffer objects
 * (one that came back from a worker or a MessageChannel) can share memory, so comparing
 * buffer objects is not enough. The native side checks the same for every op.
 */
function memoryRelation(a: ArrayBufferView, b: ArrayBufferView): 'disjoint' | 'same' | 'overlap' {
  if (a.byteLength === 0 || b.byteLength === 0) return 'disjoint';
  return native.memoryRelation(a, b);
}

/** True when two views share at least one byte of memory. */
export function overlaps(a: ArrayBufferView, b: ArrayBufferView): boolean {
  return memoryRelation(a, b) !== 'disjoint';
}

/** True when two views are exactly the same memory. */
export function sameMemory(a: ArrayBufferView, b: ArrayBufferView): boolean {
  if (a.byteLength === 0 && b.byteLength === 0) return a.buffer === b.buffer && a.byteOffset === b.byteOffset;
  return memoryRelation(a, b) === 'same';
}

/**
 * True when a view's memory can shrink while a call runs: a view (fixed or length-tracking)
 * on a resizable ArrayBuffer. Growable SharedArrayBuffers only grow, in place, so views on
 * them stay valid.
 */
export function isResizable(a: ArrayBufferView): boolean {
  return (a.buffer as { resizable?: unknown }).resizable === true;
}

/**
 * An input of an async call as the worker thread may read it: a copy in fixed memory when
 * the caller's view is on a resizable ArrayBuffer (a shrink while the call runs cannot
 * reach the copy), else the view itself.
 */
export function fixedInput(a: Float32Array): Float32Array {
  return isResizable(a) ? new Float32Array(a) : a;
}

/** Elements moved per event-loop turn when an async result is copied into the caller's `out` (4 MiB). */
const DELIVER_CHUNK = 1 << 20;

/**
 * An output of an async call. The worker thread writes `target`: the caller's `out` is
 * never handed to it, because JavaScript runs while the work does and could transfer,
 * detach or shrink that buffer under the writing thread. For a caller's `out`, target is
 * library-owned memory the caller cannot reach, and deliver() copies it into `out` on the
 * JS thread — chunk by chunk, checking before each chunk that `out` still holds the result.
 */
export class AsyncOutput {
  readonly target: Float32Array;

  private constructor(readonly result: Float32Array, private readonly fn: string, private readonly name: string, own: boolean) {
    this.target = own ? result : takeScratch(fn, name, result.length);
  }

  /** A fresh output of n elements: nobody else can reach it until the call settles. */
  static fresh(fn: string, name: string, n: number): AsyncOutput {
    return new AsyncOutput(newFloat32(fn, name, n), fn, name, true);
  }

  /** The caller's `out`. */
  static into(fn: string, name: string, out: Float32Array): AsyncOutput {
    return new AsyncOutput(out, fn, name, false);
  }

  /**
   * Moves the result into the caller's array (nothing to do for a fresh one). Call it only
   * once the work has finished: the library memory is reused afterwards.
   */
  async deliver(): Promise<Float32Array> {
    const from = this.target;
    const to = this.result;
    if (from === to) return to;
    const n = from.length;
    try {
      for (let i = 0; ; i += DELIVER_CHUNK) {
        // A shrunk view (detached, transferred, resized) cannot take the result; one that grew still can.
        if (to.length < n) {
          throw new TypeError(`${this.fn}: ${this.name} was detached, transferred or resized while the call ran ` +
            `(it has ${to.length} elements, the result ${n}); its contents are unspecified`);
        }
        if (i >= n) return to;
        to.set(from.subarray(i, Math.min(n, i + DELIVER_CHUNK)), i);
        if (i + DELIVER_CHUNK < n) await new Promise((resolve) => setImmediate(resolve));
      }
    } finally {
      returnScratch(from);
    }
  }
}

// Library memory that async calls write instead of a caller's `out`, kept for the next
// call of the same size: a training loop then neither maps nor faults in fresh pages each
// step. At most SPARE_MAX arrays are kept, and all are dropped after a second unused.
const SPARE_MAX = 2;
const spare: Float32Array[] = [];
let spareTimer: NodeJS.Timeout | null = null;

function takeScratch(fn: string, name: string, n: number): Float32Array {
  const i = spare.findIndex((a) => a.length === n);
  return i >= 0 ? spare.splice(i, 1)[0] : newFloat32(fn, name, n);
}

function returnScratch(a: Float32Array): void {
  if (a.length === 0) return;
  spare.push(a);
  if (spare.length > SPARE_MAX) spare.shift();
  spareTimer?.refresh();
  spareTimer ??= setTimeout(() => { spare.length = 0; spareTimer = null; }, 1000).unref();
}

/**
 * Outputs from this many elements (8 MiB) up come from the addon: their memory is unmapped
 * off the JS thread when collected, where freeing a V8-allocated one of hundreds of MB
 * stalls the event loop inside a garbage collection.
 */
const NATIVE_ALLOC_MIN = 1 << 21;

/** A new Float32Array of n elements; a RangeError naming fn and the output when it cannot be allocated. */
export function newFloat32(fn: string, name: string, n: number): Float32Array {
  try {
    return n >= NATIVE_ALLOC_MIN && n < 2 ** 32 ? native.allocFloat32(n) : new Float32Array(n);
  } catch (e) {
    throw new RangeError(`${fn}: ${name} would have ${n} elements, more than can be allocated (${(e as Error).message})`);
  }
}

/** A new Float64Array of n elements; a RangeError naming fn and the output when it cannot be allocated. */
export function newFloat64(fn: string, name: string, n: number): Float64Array {
  try {
    return new Float64Array(n);
  } catch (e) {
    throw new RangeError(`${fn}: ${name} would have ${n} elements, more than can be allocated (${(e as Error).message})`);
  }
}

/** Validates an `out` Float32Array of a given length. */
export function checkOut(fn: string, name: string, out: unknown, length: number): Float32Array {
  if (!(out instanceof Float32Array)) {
    throw new TypeError(`${fn}: ${name} must be a Float32Array, got ${describe(out)}`);
  }
  if (out.length !== length) {
    throw new RangeError(`${fn}: ${name} has ${out.length} elements but the result has ${length}`);
  }
  return out;
}

export type DataFormat = 'NHWC' | 'NCHW';

/** x viewed as [A, C, B] around its channel axis, for the per-channel (training) ops. */
export interface ChannelView {
  shape: number[];
  axis: number;
  A: number;
  C: number;
  B: number;
  /** Elements per channel (A·B). */
  n: number;
  /** Per-channel parameter shape that broadcasts against x (C at `axis`, 1 elsewhere, trailing). */
  paramShape: number[];
  reduceAxes: number[];
}

/**
 * The channel axis of a rank >= 2 x: options.axis (negative from the end) when given,
 * else options.dataFormat ('NHWC' = last axis, the default; 'NCHW' = axis 1).
 */
export function channelView(fn: string, shape: readonly number[], dataFormat: unknown, axis: unknown): ChannelView {
  const rank = shape.length;
  if (rank < 2) throw new RangeError(`${fn}: x must have rank >= 2 (batch and channel axes), got rank ${rank}`);
  let ax: number;
  if (axis !== undefined) {
    ax = checkInteger(fn, 'options.axis', axis);
    if (ax < -rank || ax >= rank) throw new RangeError(`${fn}: options.axis = ${ax} is out of range for a tensor of rank ${rank}`);
    if (ax < 0) ax += rank;
  } else {
    ax = checkOneOf(fn, 'options.dataFormat', dataFormat, ['NHWC', 'NCHW'] as const, 'NHWC') === 'NHWC' ? rank - 1 : 1;
  }
  const s = shape.slice();
  const A = product(s.slice(0, ax));
  const B = product(s.slice(ax + 1));
  return {
    shape: s, axis: ax, A, C: s[ax], B, n: A * B,
    paramShape: s.slice(ax).map((d, i) => (i === 0 ? d : 1)),
    reduceAxes: s.map((_, i) => i).filter((i) => i !== ax),
  };
}

/** The options fusedBatchNorm shares between its host and device paths. */
export function checkFusedOptions(
  fn: string, shape: readonly number[],
  o: { dataFormat?: unknown; axis?: unknown; epsilon?: unknown; exponentialAvgFactor?: unknown; isTraining?: unknown },
): { view: ChannelView; eps: number; f: number; training: boolean } {
  const view = channelView(fn, shape, o.dataFormat, o.axis);
  const eps = checkEpsilon(fn, 'options.epsilon', o.epsilon ?? 1e-3);
  const f = checkNumber(fn, 'options.exponentialAvgFactor', o.exponentialAvgFactor, { min: 0, max: 1 }, 1);
  const training = checkBoolean(fn, 'options.isTraining', o.isTraining, true);
  return { view, eps, f, training };
}
