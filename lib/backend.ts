// Backend choice: 'auto' (default) or a named backend, globally or per call.
import type { BackendCode, BackendName, ExplainOp } from '../binding';
import { native } from './binding';
import { checkBoolean, checkEpsilon, checkInteger, checkOneOf, checkOptions, describe, OPTION_KEYS } from './check';
import { prefixed } from './errors';
import { checkShape } from './tensor';

const EXPLAIN_OPS: readonly ExplainOp[] = ['moments', 'batchNormalization', 'fusedBatchNorm', 'batchNormalizationGrad'];

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
  options?: {
    backend?: BackendChoice; onDevice?: boolean; shape?: number[]; axis?: number; dataFormat?: 'NHWC' | 'NCHW'; epsilon?: number;
    /** fusedBatchNorm / batchNormalizationGrad: batch statistics (default) or frozen ones. */
    isTraining?: boolean;
  },
): { backend: BackendName; reason: string } {
  const fn = 'explain';
  checkOneOf(fn, 'op', op, EXPLAIN_OPS);
  const o = checkOptions<NonNullable<typeof options>>(fn, options, OPTION_KEYS.explain);
  // onDevice: the inputs would be DeviceTensors ('auto' runs where the data lives).
  const onDevice = checkBoolean(fn, 'options.onDevice', o.onDevice, false);
  // shape (+ axis or dataFormat, epsilon): a per-channel call, so the cuDNN path is considered.
  let call: { shape: number[]; axis: number; epsilon: number; isTraining: boolean } | undefined;
  if (o.shape !== undefined) {
    const shape = checkShape(fn, 'options.shape', o.shape);
    const rank = shape.length;
    let axis: number;
    if (o.axis !== undefined) {
      axis = checkInteger(fn, 'options.axis', o.axis);
      if (axis < -rank || axis >= rank) throw new RangeError(`${fn}: options.axis = ${axis} is out of range for rank ${rank}`);
    } else {
      axis = checkOneOf(fn, 'options.dataFormat', o.dataFormat, ['NHWC', 'NCHW'] as const, 'NHWC') === 'NHWC' ? rank - 1 : 1;
    }
    const epsilon = checkEpsilon(fn, 'options.epsilon', o.epsilon ?? 1e-3);
    const isTraining = checkBoolean(fn, 'options.isTraining', o.isTraining, true);
    call = { shape, axis: axis < 0 ? axis + rank : axis, epsilon, isTraining };
  } else {
    for (const k of ['axis', 'dataFormat', 'epsilon', 'isTraining'] as const) {
      if (o[k] !== undefined) throw new TypeError(`${fn}: options.${k} describes a call shape; give options.shape with it`);
    }
  }
  const code = backendCode(fn, o.backend);
  try {
    return native.explain(op, code, onDevice, call);
  } catch (e) {
    throw prefixed(fn, e);
  }
}

/** Threads the CPU backend uses per call (default: BATCHNORM_NUM_THREADS or the core count). */
export function setNumThreads(n: number): void {
  native.setNumThreads(checkInteger('setNumThreads', 'n', n, { min: 1, max: 256 }));
}

export function getNumThreads(): number {
  return native.numThreads();
}
