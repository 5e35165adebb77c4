// The communicator: how shards of one batch (threads, processes, GPUs) exchange the few
// per-channel numbers that synchronized batch normalization needs. The interface is small
// on purpose, so that any transport (worker_threads, NCCL, MPI, a cluster's RPC) fits it.
import type { DeviceTensor } from '../device';
import { describe } from '../tensor';

export type ReduceOp = 'sum';

/**
 * A group of `size` ranks; this object is rank `rank`. Every rank calls the same
 * collectives in the same order with arrays of the same length.
 */
export interface Communicator {
  readonly rank: number;
  readonly size: number;
  /** Rank-ordered concatenation of every rank's `data` (length size · data.length). */
  allGather(data: Float64Array): Promise<Float64Array>;
  /** Element-wise sum over the ranks; every rank receives the same array. */
  allReduce(data: Float64Array, op: ReduceOp): Promise<Float64Array>;
  /**
   * Optional: makes every rank's pending and later collectives reject with `reason`.
   * The sync ops call it when their own rank fails, so the other ranks stop waiting.
   */
  abort?(reason: unknown): void;
  /**
   * Optional: milliseconds a collective may take before the sync ops give up on it
   * (and abort the group). Default 300000.
   */
  readonly timeoutMs?: number;
  /** Optional device-buffer variants that never stage through the host (NCCL). */
  allGatherDevice?(data: DeviceTensor): Promise<DeviceTensor>;
  allReduceDevice?(data: DeviceTensor, op: ReduceOp): Promise<DeviceTensor>;
}

export const DEFAULT_TIMEOUT_MS = 300_000;

/**
 * Checks that `c` is a usable communicator; returns it. TypeError naming the first
 * thing that is wrong (missing method, rank out of range, ...).
 */
export function checkCommunicator(fn: string, name: string, c: unknown): Communicator {
  if (c === null || typeof c !== 'object') {
    throw new TypeError(`${fn}: ${name} must be a communicator {rank, size, allGather, allReduce}, got ${describe(c)}`);
  }
  const o = c as Record<string, unknown>;
  if (typeof o.size !== 'number' || !Number.isInteger(o.size) || o.size < 1) {
    throw new TypeError(`${fn}: ${name}.size must be an integer >= 1, got ${describe(o.size)}`);
  }
  if (typeof o.rank !== 'number' || !Number.isInteger(o.rank) || o.rank < 0 || o.rank >= o.size) {
    throw new TypeError(`${fn}: ${name}.rank must be an integer in [0, ${o.size}), got ${describe(o.rank)}`);
  }
  for (const m of ['allGather', 'allReduce'] as const) {
    if (typeof o[m] !== 'function') throw new TypeError(`${fn}: ${name}.${m} must be a function, got ${describe(o[m])}`);
  }
  for (const m of ['abort', 'allGatherDevice', 'allReduceDevice'] as const) {
    if (o[m] !== undefined && typeof o[m] !== 'function') {
      throw new TypeError(`${fn}: ${name}.${m} must be a function when present, got ${describe(o[m])}`);
    }
  }
  if (o.timeoutMs !== undefined && !(typeof o.timeoutMs === 'number' && o.timeoutMs > 0)) {
    throw new TypeError(`${fn}: ${name}.timeoutMs must be a number > 0 when present, got ${describe(o.timeoutMs)}`);
  }
  return c as Communicator;
}

/** Thrown (on every rank) when a collective fails, times out or the group was aborted. */
export class CollectiveError extends Error {
  readonly code: string;

  constructor(message: string, code: 'ERR_COLLECTIVE_TIMEOUT' | 'ERR_COLLECTIVE_ABORTED' | 'ERR_COLLECTIVE') {
    super(message);
    this.name = 'CollectiveError';
    this.code = code;
  }
}

/** Tells the group that this rank failed; never throws (the caller is already failing). */
export function abortGroup(comm: Communicator, reason: unknown): void {
  try {
    comm.abort?.(reason);
  } catch {
    // The original error is what the caller reports.
  }
}

/**
 * Runs one collective of a user or shipped communicator with a deadline, and checks
 * what it returns: a timeout or a failure aborts the group (when it can be) and rejects
 * with a CollectiveError naming the function, the collective and the rank.
 */
export async function collective(
  fn: string, comm: Communicator, kind: 'allGather' | 'allReduce', data: Float64Array,
): Promise<Float64Array> {
  const ms = comm.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const where = `${fn}: ${kind} of ${data.length} float64 on rank ${comm.rank} of ${comm.size}`;
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new CollectiveError(`${where} timed out after ${ms} ms (a rank failed or never called it)`,
      'ERR_COLLECTIVE_TIMEOUT')), ms);
  });
  let out: unknown;
  try {
    const call = kind === 'allGather' ? comm.allGather(data) : comm.allReduce(data, 'sum');
    out = await Promise.race([Promise.resolve(call), deadline]);
  } catch (e) {
    abortGroup(comm, e);
    if (e instanceof CollectiveError) throw e;
    throw new CollectiveError(`${where} failed: ${e instanceof Error ? e.message : String(e)}`, 'ERR_COLLECTIVE');
  } finally {
    clearTimeout(timer);
  }
  const want = kind === 'allGather' ? data.length * comm.size : data.length;
  if (!(out instanceof Float64Array) || out.length !== want) {
    const e = new TypeError(`${where}: the communicator returned ${describe(out)}; expected a Float64Array of ${want} elements`);
    abortGroup(comm, e);
    throw e;
  }
  return out;
}
