// A communicator for worker_threads of one process, on SharedArrayBuffer + Atomics.
//
// The main thread calls createThreadGroup(size) and posts the returned handle (plain data
// and SharedArrayBuffers, so it survives postMessage) to each worker; a worker calls
// threadCommunicator(handle, rank). Waiting uses Atomics.waitAsync, so no event loop blocks.
//
// Protocol. Every rank performs the same sequence of collectives; collective number g
// (its generation) uses the buffers of parity p = g & 1:
//   1. the rank writes its input into data slot (p, rank) and its meta (op, length, g);
//   2. it increments ARRIVED[p]; the rank that brings it to `size` resets ARRIVED[p] to 0,
//      stores GEN = g + 1 and bumps SIGNAL (waking everyone);
//   3. every rank waits until GEN > g (or ABORT), reads all `size` slots of parity p in rank
//      order and builds the result: a concatenation (allGather) or a sum taken in rank order
//      (allReduce), so every rank gets bit-identical results, run after run.
// Why two parities suffice: a rank writes parity p again only at generation g + 2, which it
// reaches after g + 1 completed, i.e. after every rank arrived at g + 1 — and each rank
// arrives there only after it finished reading generation g (a communicator runs its
// collectives one at a time). The reset of ARRIVED[p] happens before GEN = g + 1 for the
// same reason.
// SIGNAL is an event count: a waiter reads it, checks its condition, and sleeps only while
// SIGNAL still has the value it read, so no wake-up is lost. Abort: the first rank to fail
// moves ABORT 0 → 1 (writing), stores its rank and reason, then ABORT = 2 and bumps SIGNAL;
// every pending and later collective of every rank then rejects with that reason. A rank
// that waits longer than timeoutMs aborts the group itself, so a rank that never arrives
// (crashed, stuck, threw before calling) cannot hang the others.
import { describe } from '../tensor';
import { CollectiveError, DEFAULT_TIMEOUT_MS, type Communicator, type ReduceOp } from './communicator';

const SIGNAL = 0;
const GEN = 1;
const ABORT = 2;
const ABORT_RANK = 3;
const ABORT_LEN = 4;
const ARRIVED = 5; // + parity
const META = 8; // + ((parity · size + rank) · 3): op, length, generation
const OP_GATHER = 1;
const OP_REDUCE = 2;
const REASON_BYTES = 1024;
const MAIN_THREAD = -1;

// Atomics.waitAsync (ES2024; in Node since 16) is not in the ES2022 library types.
const waitAsync = (Atomics as unknown as {
  waitAsync(a: Int32Array, index: number, value: number, timeout: number):
    { async: false; value: 'not-equal' | 'timed-out' } | { async: true; value: Promise<'ok' | 'timed-out'> };
}).waitAsync;

/** What createThreadGroup returns: post it to every worker of the group. */
export interface ThreadGroupHandle {
  readonly kind: 'batchnorm-thread-group';
  readonly size: number;
  /** Largest array (float64 elements) a rank may pass to one collective. */
  readonly maxElements: number;
  readonly timeoutMs: number;
  readonly control: SharedArrayBuffer;
  readonly data: SharedArrayBuffer;
  readonly reason: SharedArrayBuffer;
}

export interface ThreadGroupOptions {
  /** Largest array one collective takes, in float64 elements (default 65536: 2·C + 1 for C ≤ 32767). */
  maxElements?: number;
  /** How long a rank waits for the others in one collective (default 300000 ms). */
  timeoutMs?: number;
}

function controlWords(size: number): number {
  return META + 2 * size * 3 + size; // + one claim word per rank
}

/** Creates the shared state of a group of `size` thread ranks (main thread). */
export function createThreadGroup(size: number, options: ThreadGroupOptions = {}): ThreadGroupHandle {
  const fn = 'createThreadGroup';
  if (typeof size !== 'number' || !Number.isInteger(size) || size < 1 || size > 4096) {
    throw new RangeError(`${fn}: size must be an integer in [1, 4096], got ${describe(size)}`);
  }
  if (options === null || typeof options !== 'object') throw new TypeError(`${fn}: options must be an object, got ${describe(options)}`);
  const maxElements = options.maxElements ?? 65536;
  if (typeof maxElements !== 'number' || !Number.isInteger(maxElements) || maxElements < 1 || 2 * size * maxElements * 8 > 2 ** 31) {
    throw new RangeError(`${fn}: options.maxElements must be an integer >= 1 with 2·size·maxElements·8 <= 2 GiB, got ${describe(maxElements)}`);
  }
  const timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  if (typeof timeoutMs !== 'number' || !(timeoutMs > 0) || timeoutMs > 2 ** 31 - 1) {
    throw new RangeError(`${fn}: options.timeoutMs must be a number in (0, 2^31), got ${describe(timeoutMs)}`);
  }
  return {
    kind: 'batchnorm-thread-group', size, maxElements, timeoutMs,
    control: new SharedArrayBuffer(controlWords(size) * 4),
    data: new SharedArrayBuffer(2 * size * maxElements * 8),
    reason: new SharedArrayBuffer(REASON_BYTES),
  };
}

function checkHandle(fn: string, h: unknown): ThreadGroupHandle {
  const o = h as ThreadGroupHandle;
  if (!o || typeof o !== 'object' || o.kind !== 'batchnorm-thread-group' || !(o.control instanceof SharedArrayBuffer) ||
      !(o.data instanceof SharedArrayBuffer) || !(o.reason instanceof SharedArrayBuffer) || !Number.isInteger(o.size) ||
      o.control.byteLength !== controlWords(o.size) * 4 || o.data.byteLength !== 2 * o.size * o.maxElements * 8) {
    throw new TypeError(`${fn}: handle must be what createThreadGroup returned, got ${describe(h)}`);
  }
  return o;
}

function errorText(reason: unknown): string {
  if (reason instanceof Error) return `${reason.name}: ${reason.message}`;
  return String(reason);
}

/** Marks the group failed (first caller wins); every pending and later collective rejects. */
function abortShared(h: ThreadGroupHandle, rank: number, reason: unknown): void {
  const ctl = new Int32Array(h.control);
  if (Atomics.compareExchange(ctl, ABORT, 0, 1) !== 0) return;
  const bytes = new TextEncoder().encode(errorText(reason)).subarray(0, REASON_BYTES);
  new Uint8Array(h.reason).set(bytes);
  Atomics.store(ctl, ABORT_RANK, rank);
  Atomics.store(ctl, ABORT_LEN, bytes.length);
  Atomics.store(ctl, ABORT, 2);
  Atomics.add(ctl, SIGNAL, 1);
  Atomics.notify(ctl, SIGNAL);
}

/** Aborts a group from outside (e.g. the main thread on a worker's 'error' event). */
export function abortThreadGroup(handle: ThreadGroupHandle, reason: unknown): void {
  abortShared(checkHandle('abortThreadGroup', handle), MAIN_THREAD, reason);
}

function abortError(h: ThreadGroupHandle, self: number): CollectiveError {
  const ctl = new Int32Array(h.control);
  const who = Atomics.load(ctl, ABORT_RANK);
  const reason = new TextDecoder().decode(new Uint8Array(h.reason).slice(0, Atomics.load(ctl, ABORT_LEN)));
  const by = who === MAIN_THREAD ? 'the main thread' : who === self ? 'this rank' : `rank ${who}`;
  return new CollectiveError(`thread group aborted by ${by}: ${reason}`, 'ERR_COLLECTIVE_ABORTED');
}

class ThreadCommunicator implements Communicator {
  readonly rank: number;
  readonly size: number;
  readonly timeoutMs: number;
  private readonly h: ThreadGroupHandle;
  private readonly ctl: Int32Array;
  private readonly data: Float64Array;
  private gen = 0;
  private tail: Promise<unknown> = Promise.resolve();

  constructor(h: ThreadGroupHandle, rank: number) {
    this.h = h;
    this.rank = rank;
    this.size = h.size;
    this.timeoutMs = h.timeoutMs;
    this.ctl = new Int32Array(h.control);
    this.data = new Float64Array(h.data);
  }

  allGather(data: Float64Array): Promise<Float64Array> {
    return this.enqueue('allGather', OP_GATHER, data);
  }

  allReduce(data: Float64Array, op: ReduceOp): Promise<Float64Array> {
    if (op !== 'sum') return Promise.reject(new TypeError(`allReduce: op must be 'sum', got ${describe(op)}`));
    return this.enqueue('allReduce', OP_REDUCE, data);
  }

  abort(reason: unknown): void {
    abortShared(this.h, this.rank, reason);
  }

  // One collective at a time per rank: the parity argument above relies on it.
  private enqueue(name: string, op: number, data: Float64Array): Promise<Float64Array> {
    if (!(data instanceof Float64Array)) return Promise.reject(new TypeError(`${name}: data must be a Float64Array, got ${describe(data)}`));
    if (data.length > this.h.maxElements) {
      return Promise.reject(new RangeError(
        `${name}: ${data.length} elements exceed the group's maxElements ${this.h.maxElements} (createThreadGroup option)`));
    }
    const input = data.slice();  // the caller may reuse its array once the call returns
    const run = this.tail.then(() => this.run(name, op, input));
    this.tail = run.catch(() => undefined);
    return run;
  }

  private slot(parity: number, rank: number): number {
    return (parity * this.size + rank) * this.h.maxElements;
  }

  private meta(parity: number, rank: number): number {
    return META + (parity * this.size + rank) * 3;
  }

  private async run(name: string, op: number, input: Float64Array): Promise<Float64Array> {
    const { ctl, size } = this;
    const g = this.gen;
    const p = g & 1;
    if (Atomics.load(ctl, ABORT) === 2) throw abortError(this.h, this.rank);
    this.data.set(input, this.slot(p, this.rank));
    const m = this.meta(p, this.rank);
    Atomics.store(ctl, m, op);
    Atomics.store(ctl, m + 1, input.length);
    Atomics.store(ctl, m + 2, g);
    if (Atomics.add(ctl, ARRIVED + p, 1) + 1 === size) {
      Atomics.store(ctl, ARRIVED + p, 0);
      Atomics.store(ctl, GEN, g + 1);
      Atomics.add(ctl, SIGNAL, 1);
      Atomics.notify(ctl, SIGNAL);
    }
    await this.waitForGeneration(name, g);
    this.gen = g + 1;
    // Every rank checks every meta: all of them see the same values and fail alike.
    for (let r = 0; r < size; r++) {
      const mr = this.meta(p, r);
      const [rop, len, rg] = [Atomics.load(ctl, mr), Atomics.load(ctl, mr + 1), Atomics.load(ctl, mr + 2)];
      if (rop !== op || len !== input.length || rg !== g) {
        const what = (o: number) => (o === OP_GATHER ? 'allGather' : 'allReduce');
        const e = new CollectiveError(`${name}: collective #${g} mismatch: rank ${this.rank} called ${what(op)} of ${input.length} ` +
          `elements, rank ${r} ${what(rop)} of ${len}; every rank must call the same collectives in the same order`, 'ERR_COLLECTIVE');
        this.abort(e);
        throw e;
      }
    }
    const n = input.length;
    if (op === OP_GATHER) {
      const out = new Float64Array(n * size);
      for (let r = 0; r < size; r++) out.set(this.data.subarray(this.slot(p, r), this.slot(p, r) + n), r * n);
      return out;
    }
    const out = new Float64Array(n);
    for (let r = 0; r < size; r++) {
      const base = this.slot(p, r);
      for (let i = 0; i < n; i++) out[i] += this.data[base + i];
    }
    return out;
  }

  private async waitForGeneration(name: string, g: number): Promise<void> {
    const { ctl } = this;
    const deadline = Date.now() + this.timeoutMs;
    for (;;) {
      const seq = Atomics.load(ctl, SIGNAL);
      if (Atomics.load(ctl, ABORT) === 2) throw abortError(this.h, this.rank);
      if (Atomics.load(ctl, GEN) > g) return;
      const left = deadline - Date.now();
      if (left <= 0) {
        const e = new CollectiveError(`${name}: rank ${this.rank} of ${this.size} timed out after ${this.timeoutMs} ms ` +
          `waiting for the other ranks (collective #${g}); a rank failed or never called it`, 'ERR_COLLECTIVE_TIMEOUT');
        this.abort(e);
        throw e;
      }
      const w = waitAsync(ctl, SIGNAL, seq, left);
      if (w.async) {
        // A pending waitAsync does not keep Node's event loop alive; this timer does.
        const keepAlive = setTimeout(() => undefined, left + 10);
        try {
          await w.value;
        } finally {
          clearTimeout(keepAlive);
        }
      }
    }
  }
}

/**
 * The communicator of rank `rank` in a thread group (call it in the worker that is that
 * rank; each rank may be claimed once per group). Collectives resolve when every rank
 * called them; see the protocol at the top of this file.
 */
export function threadCommunicator(handle: ThreadGroupHandle, rank: number): Communicator {
  const fn = 'threadCommunicator';
  const h = checkHandle(fn, handle);
  if (typeof rank !== 'number' || !Number.isInteger(rank) || rank < 0 || rank >= h.size) {
    throw new RangeError(`${fn}: rank must be an integer in [0, ${h.size}), got ${describe(rank)}`);
  }
  const ctl = new Int32Array(h.control);
  if (Atomics.compareExchange(ctl, META + 2 * h.size * 3 + rank, 0, 1) !== 0) {
    throw new RangeError(`${fn}: rank ${rank} of this group was already claimed`);
  }
  return new ThreadCommunicator(h, rank);
}
