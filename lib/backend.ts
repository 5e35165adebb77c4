// Backend choice: 'auto' (default) or a named backend, globally or per call.
import type { BackendCode, BackendName, ExplainOp } from '../binding';
import { native } from './binding';
import { describe } from './tensor';

export type BackendChoice = 'auto' | BackendName;

const CODES: Record<BackendChoice, BackendCode> = { auto: -1, cpu: 0, cuda: 1, cudnn: 2 };

let current: BackendChoice = 'auto';

export function backendCode(fn: string, choice: unknown): BackendCode {
  const c = choice === undefined ? current : choice;
  if (typeof c !== 'string' || !(c in CODES)) {
    throw new TypeError(`${fn}: backend must be one of 'auto', 'cpu', 'cuda', 'cudnn', got ${describe(c)}`);
  }
  return CODES[c as BackendChoice];
}

export interface BackendInfo {
  name: BackendName;
  available: boolean;
  /** Why it is unavailable ("no NVIDIA driver", "built without CUDA", ...); null when available. */
  reason: string | null;
}

/** Every backend with its availability and, when unavailable, the reason. */
export function backends(): BackendInfo[] {
  return native.backends();
}

/** Sets the default backend of every later call without an explicit `backend` option. */
export function setBackend(choice: BackendChoice): void {
  backendCode('setBackend', choice);
  current = choice;
}

export function getBackend(): BackendChoice {
  return current;
}

/**
 * Which backend a call would run on and why (for host inputs, or DeviceTensor inputs
 * with `onDevice: true`), e.g.
 * `{backend: 'cpu', reason: "auto: 'cpu' (no GPU backend available; cudnn: ...)"}`.
 * Throws BackendError (ERR_BACKEND_UNAVAILABLE) for an unavailable named backend.
 */
export function explain(
  op: ExplainOp,
  options: { backend?: BackendChoice; onDevice?: boolean; shape?: number[]; axis?: number; dataFormat?: 'NHWC' | 'NCHW'; epsilon?: number } = {},
): { backend: BackendName; reason: string } {
  // onDevice: the inputs would be DeviceTensors ('auto' runs where the data lives).
  // shape (+ axis or dataFormat, epsilon): a per-channel call, so the cuDNN path is considered.
  let call: { shape: number[]; axis: number; epsilon: number } | undefined;
  if (options.shape !== undefined) {
    if (!Array.isArray(options.shape) || !options.shape.every((d) => Number.isInteger(d) && d >= 0)) {
      throw new TypeError(`explain: options.shape must be an array of non-negative integers, got ${describe(options.shape)}`);
    }
    const rank = options.shape.length;
    const axis = options.axis ?? ((options.dataFormat ?? 'NHWC') === 'NHWC' ? rank - 1 : 1);
    if (!Number.isInteger(axis) || axis < -rank || axis >= rank) throw new RangeError(`explain: options.axis = ${axis} is out of range for rank ${rank}`);
    const epsilon = options.epsilon ?? 1e-3;
    if (typeof epsilon !== 'number' || !(epsilon >= 0)) throw new RangeError(`explain: options.epsilon must be a number >= 0, got ${describe(epsilon)}`);
    call = { shape: options.shape.slice(), axis: axis < 0 ? axis + rank : axis, epsilon };
  }
  return native.explain(op, backendCode('explain', options.backend), options.onDevice === true, call);
}

/** Threads the CPU backend uses per call (default: BATCHNORM_NUM_THREADS or the core count). */
export function setNumThreads(n: number): void {
  if (typeof n !== 'number' || !Number.isInteger(n) || n < 1 || n > 256) {
    throw new RangeError(`setNumThreads: n must be an integer in [1, 256], got ${describe(n)}`);
  }
  native.setNumThreads(n);
}

export function getNumThreads(): number {
  return native.numThreads();
}
