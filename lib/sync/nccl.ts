// The NCCL communicator: one process per GPU, ranks joined by a unique id that rank 0
// creates and the job sends to the others by whatever it already uses (environment,
// file, RPC). NCCL is loaded at first use (BATCHNORM_NCCL_PATH, else libnccl.so.2).
//
// Needs a GPU to run: CI checks its loader and error paths only; scripts/nccl-check.sh
// runs it on GPU machines.
import type { NcclCommHandle } from '../../binding';
import { native } from '../binding';
import { DeviceTensor } from '../device';
import { withCallerStack } from '../errors';
import { describe } from '../tensor';
import { CollectiveError, DEFAULT_TIMEOUT_MS, type Communicator, type ReduceOp } from './communicator';

export interface NcclProbe {
  /** The library was found, has every symbol and is new enough. */
  loaded: boolean;
  /** ncclGetVersion(), e.g. 22703 for 2.27.3; 0 when not called. */
  version: number;
  path: string;
  reason: string | null;
}

/**
 * The NCCL loader's verdict on `path` (a file or a directory), or on the process's
 * library (BATCHNORM_NCCL_PATH, else libnccl.so.2) when omitted. Needs no GPU.
 */
export function ncclProbe(path?: string): NcclProbe {
  if (path !== undefined && typeof path !== 'string') throw new TypeError(`ncclProbe: path must be a string, got ${describe(path)}`);
  return native.ncclProbe(path);
}

/** Whether the NCCL communicator can run in this process, and why not (info().nccl). */
export function ncclStatus(): { available: boolean; version: number; reason: string | null } {
  const p = native.ncclProbe();
  const cuda = native.cudaInfo();
  if (!cuda.available) return { available: false, version: p.version, reason: `needs the CUDA backend: ${cuda.reason}` };
  return { available: p.loaded, version: p.version, reason: p.reason };
}

export interface NcclCommunicatorOptions {
  /**
   * Milliseconds a collective may take before the sync ops give up and abort (default
   * 300000). It also bounds the collectives that synchronized DeviceTensor ops queue on
   * the GPU: one still unfinished this long after it was queued makes a native watchdog
   * abort the communicator, so a dead peer cannot hold the stream (and every later
   * download) forever. Infinity: no limit.
   */
  timeoutMs?: number;
}

/**
 * A Communicator over NCCL. Rank 0 calls NcclCommunicator.uniqueId() and sends the 128
 * bytes to every rank; every rank (rank 0 too) then awaits NcclCommunicator.create(id,
 * size, rank). Host collectives stage Float64Arrays through device memory; the device
 * variants take float32 DeviceTensors and stay on the GPU. Call destroy() when done.
 */
export class NcclCommunicator implements Communicator {
  readonly rank: number;
  readonly size: number;
  readonly timeoutMs: number;
  #handle: NcclCommHandle | null;
  #failure: Error | null = null;
  #tail: Promise<unknown> = Promise.resolve();

  private constructor(handle: NcclCommHandle, size: number, rank: number, timeoutMs: number) {
    this.#handle = handle;
    this.size = size;
    this.rank = rank;
    this.timeoutMs = timeoutMs;
  }

  /** ncclGetUniqueId (rank 0): the bytes every rank passes to create(). */
  static uniqueId(): Uint8Array {
    return native.ncclGetUniqueId();
  }

  /** ncclCommInitRank: resolves when all `size` ranks have joined. */
  static async create(id: Uint8Array, size: number, rank: number, options: NcclCommunicatorOptions = {}): Promise<NcclCommunicator> {
    const fn = 'NcclCommunicator.create';
    if (!(id instanceof Uint8Array) || id.length !== 128) throw new TypeError(`${fn}: id must be the 128-byte Uint8Array of NcclCommunicator.uniqueId(), got ${describe(id)}`);
    if (typeof size !== 'number' || !Number.isInteger(size) || size < 1) throw new RangeError(`${fn}: size must be an integer >= 1, got ${describe(size)}`);
    if (typeof rank !== 'number' || !Number.isInteger(rank) || rank < 0 || rank >= size) {
      throw new RangeError(`${fn}: rank must be an integer in [0, ${size}), got ${describe(rank)}`);
    }
    if (options === null || typeof options !== 'object') throw new TypeError(`${fn}: options must be an object, got ${describe(options)}`);
    const timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    if (typeof timeoutMs !== 'number' || !(timeoutMs > 0)) throw new RangeError(`${fn}: options.timeoutMs must be a number > 0, got ${describe(timeoutMs)}`);
    const site = new Error();
    // A rank that never joins would leave the promise pending forever: reject after
    // timeoutMs (the blocked init ends, and its communicator is destroyed, if the rank
    // joins later).
    let timer: NodeJS.Timeout | undefined;
    let timedOut = false;
    const init = native.ncclCommInitRankAsync(id, size, rank, timeoutMs);
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        timedOut = true;
        init.then((h) => native.ncclCommDestroy(h, true), () => undefined);
        reject(new CollectiveError(`${fn}: ncclCommInitRank (rank ${rank} of ${size}) did not complete within ${timeoutMs} ms; ` +
          'a rank never joined or the id differs', 'ERR_COLLECTIVE_TIMEOUT'));
      }, timeoutMs);
    });
    try {
      const h = await Promise.race([init, deadline]);
      if (timedOut) throw new CollectiveError(`${fn}: timed out`, 'ERR_COLLECTIVE_TIMEOUT');
      return new NcclCommunicator(h, size, rank, timeoutMs);
    } catch (e) {
      throw withCallerStack(e, site);
    } finally {
      clearTimeout(timer);
    }
  }

  allGather(data: Float64Array): Promise<Float64Array> {
    if (!(data instanceof Float64Array)) return Promise.reject(new TypeError(`allGather: data must be a Float64Array, got ${describe(data)}`));
    const out = new Float64Array(data.length * this.size);
    return this.#run('allGather', (h) => native.ncclAllGatherAsync(h, data.slice(), out, this.size)).then(() => out);
  }

  allReduce(data: Float64Array, op: ReduceOp): Promise<Float64Array> {
    if (op !== 'sum') return Promise.reject(new TypeError(`allReduce: op must be 'sum', got ${describe(op)}`));
    if (!(data instanceof Float64Array)) return Promise.reject(new TypeError(`allReduce: data must be a Float64Array, got ${describe(data)}`));
    const out = new Float64Array(data.length);
    return this.#run('allReduce', (h) => native.ncclAllReduceAsync(h, data.slice(), out, this.size)).then(() => out);
  }

  /** Rank-ordered concatenation of float32 device buffers: a new DeviceTensor of shape [size · length]. */
  allGatherDevice(data: DeviceTensor): Promise<DeviceTensor> {
    if (!(data instanceof DeviceTensor)) return Promise.reject(new TypeError(`allGatherDevice: data must be a DeviceTensor, got ${describe(data)}`));
    return this.#device('allGatherDevice', data, [this.size * data.length], native.ncclAllGatherAsync);
  }

  /** Element-wise float32 sum of device buffers: a new DeviceTensor of data's shape. */
  allReduceDevice(data: DeviceTensor, op: ReduceOp): Promise<DeviceTensor> {
    if (op !== 'sum') return Promise.reject(new TypeError(`allReduceDevice: op must be 'sum', got ${describe(op)}`));
    if (!(data instanceof DeviceTensor)) return Promise.reject(new TypeError(`allReduceDevice: data must be a DeviceTensor, got ${describe(data)}`));
    return this.#device('allReduceDevice', data, data.shape.slice(), native.ncclAllReduceAsync);
  }

  /**
   * @internal Runs `start` with the communicator's handle in this rank's collective order:
   * the synchronized training ops on DeviceTensors pass it to the native op, whose
   * collectives must be issued in the same order on every rank as this object's own.
   */
  withHandle<T>(fn: string, start: (h: NcclCommHandle) => Promise<T>): Promise<T> {
    return this.#run(fn, start);
  }

  /** ncclCommAbort: in-flight and later collectives reject with `reason`. */
  abort(reason: unknown): void {
    this.#failure ??= new CollectiveError(`NCCL communicator aborted on rank ${this.rank}: ${reason instanceof Error ? reason.message : String(reason)}`,
      'ERR_COLLECTIVE_ABORTED');
    if (this.#handle) native.ncclCommDestroy(this.#handle, true);
    this.#handle = null;
  }

  /** ncclCommDestroy once the queued collectives have finished. Idempotent. */
  destroy(): Promise<void> {
    this.#failure ??= new CollectiveError('NCCL communicator destroyed', 'ERR_COLLECTIVE_ABORTED');
    return this.#tail.then(() => {
      if (this.#handle) native.ncclCommDestroy(this.#handle, false);
      this.#handle = null;
    });
  }

  #device(
    fn: string, data: DeviceTensor, shape: number[],
    call: (h: NcclCommHandle, s: ReturnType<DeviceTensor['handle']>, r: ReturnType<DeviceTensor['handle']>, size: number) => Promise<void>,
  ): Promise<DeviceTensor> {
    const out = DeviceTensor.empty(shape);
    return this.#run(fn, (h) => call(h, data.handle(fn, 'data'), out.handle(fn), this.size)).then(() => out, (e) => {
      out.dispose();
      throw e;
    });
  }

  // NCCL needs every rank to issue collectives in the same order: one at a time, in call order.
  #run<T>(fn: string, start: (h: NcclCommHandle) => Promise<T>): Promise<T> {
    const site = new Error();
    const run = this.#tail.then(async () => {
      if (this.#failure || !this.#handle) throw this.#failure ?? new CollectiveError(`${fn}: the communicator was destroyed`, 'ERR_COLLECTIVE_ABORTED');
      try {
        return await start(this.#handle);
      } catch (e) {
        throw withCallerStack(this.#failure ?? e, site);
      }
    });
    this.#tail = run.catch(() => undefined);
    return run;
  }
}
