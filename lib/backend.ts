// Backend choice: 'auto' (default) or a named backend, globally or per call.
import type { BackendCode, BackendName } from '../binding';
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
  op: 'moments' | 'batchNormalization',
  options: { backend?: BackendChoice; onDevice?: boolean } = {},
): { backend: BackendName; reason: string } {
  // onDevice: the inputs would be DeviceTensors ('auto' runs where the data lives).
  return native.explain(op, backendCode('explain', options.backend), options.onDevice === true);
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
