// Property-based fuzzing of the public API: random shapes (0-size, rank 0–6), axes
// (negative, duplicated, out of range, non-integers), parameter shapes (broadcastable or
// not), epsilons (negative, NaN, ∞), data kinds (other typed arrays, plain arrays,
// detached and SharedArrayBuffer-backed buffers, views with offsets, views on resizable
// ArrayBuffers (fixed and length-tracking) and growable SharedArrayBuffers, a
// SharedArrayBuffer that came back from a MessageChannel as another object over the same
// memory, `out` aliasing or overlapping an input, also through such another object), and
// async calls whose input shrinks or whose `out` is transferred while they run. Every
// call must return a correct result (checked against the
// float64 reference) or throw TypeError / RangeError / BackendError with a message naming
// the function — never crash, never modify its inputs.
// npm test runs FUZZ_RUNS (default 300) calls per property; `npm run fuzz` runs 10⁵.
import * as assert from 'node:assert/strict';
import fc from 'fast-check';
import {
  BackendError, batchNormalization, batchNormalizationAsync, batchNormalizationGrad, fusedBatchNorm, moments, momentsAsync,
} from '../lib/index';
import { MessageChannel, receiveMessageOnPort } from 'node:worker_threads';
import { assertClose, bnTol, momentsTol, product, refBatchNorm, refMoments } from './helpers';

const RUNS = Number(process.env.FUZZ_RUNS ?? 300);
const SEED = process.env.FUZZ_SEED ? Number(process.env.FUZZ_SEED) : undefined;
let calls = 0;
const outcomes: Record<string, { ok: number; error: number }> = {};
const tally = (fn: string, ok: boolean) => { const t = (outcomes[fn] ??= { ok: 0, error: 0 }); if (ok) t.ok++; else t.error++; };

type Kind = 'f32' | 'f32-sab' | 'f32-sab-peer' | 'f32-view' | 'f32-resizable' | 'f32-tracking' | 'f32-growable' | 'f64' | 'i32' | 'array' | 'detached';

// Resizable ArrayBuffer and growable SharedArrayBuffer constructors (Node 20 has both; the typings lag).
const RAB = ArrayBuffer as unknown as new (n: number, o: { maxByteLength: number }) => ArrayBuffer & { resize(n: number): void; resizable: boolean };
const GSAB = SharedArrayBuffer as unknown as new (n: number, o: { maxByteLength: number }) => SharedArrayBuffer & { grow(n: number): void };

/** Another SharedArrayBuffer object over the same memory, as a worker or MessageChannel gives back. */
function peer(sab: SharedArrayBuffer): SharedArrayBuffer {
  const { port1, port2 } = new MessageChannel();
  port1.postMessage(sab);
  const back = receiveMessageOnPort(port2)!.message as SharedArrayBuffer;
  port1.close();
  return back;
}

function makeData(kind: Kind, n: number, seed: number): unknown {
  const vals = Array.from({ length: n }, (_, i) => Math.sin(seed * 7.3 + i * 1.7) * 3 + (i % 3));
  switch (kind) {
    case 'f32': return Float32Array.from(vals);
    // Shared memory has 4 spare elements at the end, so that an overlapping `out` can have the full length.
    case 'f32-sab': { const a = new Float32Array(new SharedArrayBuffer(4 * (n + 4)), 0, n); a.set(vals); return a; }
    case 'f32-sab-peer': { const s = new SharedArrayBuffer(4 * (n + 4)); new Float32Array(s).set(vals); return new Float32Array(peer(s), 0, n); }
    case 'f32-resizable': { const a = new Float32Array(new RAB(4 * n + 8, { maxByteLength: 4 * n + 64 }), 4, n); a.set(vals); return a; }
    case 'f32-tracking': { const a = new Float32Array(new RAB(4 * n, { maxByteLength: 4 * n + 64 })); a.set(vals); return a; }
    case 'f32-growable': { const a = new Float32Array(new GSAB(4 * n, { maxByteLength: 4 * n + 64 })); a.set(vals); return a; }
    case 'f32-view': { const a = new Float32Array(n + 3); a.set(vals, 2); return a.subarray(2, 2 + n); }
    case 'f64': return Float64Array.from(vals);
    case 'i32': return Int32Array.from(vals);
    case 'array': return vals;
    case 'detached': { const a = Float32Array.from(vals); structuredClone(a.buffer, { transfer: [a.buffer] }); return a; }
  }
}

const usable = (v: unknown): v is Float32Array => v instanceof Float32Array && snapshot(v) !== 'detached';

function snapshot(v: unknown): unknown {
  if (ArrayBuffer.isView(v)) {
    try {
      return Buffer.from(new Uint8Array(v.buffer, v.byteOffset, v.byteLength)).toString('base64');
    } catch {
      return 'detached';
    }
  }
  if (Array.isArray(v)) return JSON.stringify(v);
  return v;
}

const kindArb = fc.constantFrom<Kind>('f32', 'f32', 'f32', 'f32', 'f32', 'f32', 'f32-sab', 'f32-sab-peer', 'f32-view', 'f32-resizable',
  'f32-tracking', 'f32-growable', 'f64', 'i32', 'array', 'detached');

/** The view's memory through a different SharedArrayBuffer object, `shift` elements on (null when not shared). */
function peerView(v: unknown, shift: number, n: number): Float32Array | null {
  if (!(v instanceof Float32Array) || !(v.buffer instanceof SharedArrayBuffer)) return null;
  if (v.byteOffset + 4 * (shift + n) > v.buffer.byteLength) return null;
  return new Float32Array(peer(v.buffer), v.byteOffset + 4 * shift, n);
}

/** While an async call runs: shrink a resizable input to nothing; true when it did. */
function shrink(v: unknown): boolean {
  const b = v instanceof Float32Array ? (v.buffer as { resizable?: boolean; resize?: (n: number) => void }) : null;
  if (!b?.resizable) return false;
  b.resize!(0);
  return true;
}
const shapeArb = fc.array(fc.oneof(fc.integer({ min: 1, max: 5 }), fc.constant(0), fc.integer({ min: 1, max: 12 })), { minLength: 0, maxLength: 6 })
  .filter((s) => product(s) <= 4096);
const axisArb = fc.oneof(fc.integer({ min: -7, max: 7 }), fc.constant(0.5), fc.constant(NaN));
const axesArb = fc.oneof(fc.array(axisArb, { maxLength: 4 }), fc.constant(undefined), axisArb, fc.constant('0'));
const epsArb = fc.constantFrom(1e-3, 1e-3, 0, 1e-5, 0.5, 1e-3, -1, NaN, Infinity);

/** Expect either success (then check) or a well-formed argument/backend error. */
function expectOutcome(fn: string, run: () => unknown, check: (r: unknown) => void): void {
  calls++;
  let result: unknown;
  try {
    result = run();
  } catch (e) {
    assert.ok(e instanceof TypeError || e instanceof RangeError || e instanceof BackendError,
      `${fn}: unexpected ${(e as Error)?.constructor?.name}: ${(e as Error)?.message}`);
    assert.ok((e as Error).message.length > 10, `${fn}: empty message`);
    tally(fn, false);
    return;
  }
  tally(fn, true);
  check(result);
}

async function expectOutcomeAsync(fn: string, run: () => Promise<unknown>, check: (r: unknown) => void): Promise<void> {
  calls++;
  let result: unknown;
  try {
    result = await run();
  } catch (e) {
    assert.ok(e instanceof TypeError || e instanceof RangeError || e instanceof BackendError,
      `${fn}: unexpected ${(e as Error)?.constructor?.name}: ${(e as Error)?.message}`);
    tally(fn, false);
    return;
  }
  tally(fn, true);
  check(result);
}

function normAxes(axes: unknown, rank: number): number[] {
  if (axes === undefined) return Array.from({ length: rank }, (_, i) => i);
  const list = typeof axes === 'number' ? [axes] : (axes as number[]);
  return list.map((a) => (a < 0 ? a + rank : a));
}

describe(`fuzzing the public API (${RUNS} runs per property)`, function () {
  this.timeout(0);
  after(() => {
    const per = Object.entries(outcomes).map(([fn, t]) => `${fn} ${t.ok} ok / ${t.error} errors`).join(', ');
    console.log(`      fuzz calls: ${calls} (${per})`);
  });

  it('moments / momentsAsync', async () => {
    await fc.assert(fc.asyncProperty(shapeArb, kindArb, axesArb, fc.boolean(), fc.boolean(), fc.integer(),
      fc.constantFrom('none', 'ok', 'short', 'alias-x', 'alias-x-peer', 'transfer'), fc.boolean(),
      async (shape, kind, axes, keepDims, async_, seed, outKind, mutate) => {
        const data = makeData(kind, product(shape), seed);
        const before = snapshot(data);
        const xCopy = usable(data) ? data.slice() : data;
        const x = { data, shape } as never;
        let out: { mean: Float32Array; variance: Float32Array } | undefined;
        const validAxes = Array.isArray(axes) || typeof axes === 'number' || axes === undefined;
        const nOut = validAxes ? (() => {
          try { const r = new Set(normAxes(axes, shape.length)); return product(shape.filter((_, i) => !r.has(i))); } catch { return 1; }
        })() : 1;
        if (outKind === 'ok') out = { mean: new Float32Array(nOut), variance: new Float32Array(nOut) };
        if (outKind === 'short') out = { mean: new Float32Array(Math.max(0, nOut - 1)), variance: new Float32Array(nOut) };
        if (outKind === 'alias-x' && usable(data)) out = { mean: data.subarray(0, nOut), variance: new Float32Array(nOut) };
        const pv = outKind === 'alias-x-peer' ? peerView(data, 0, nOut) : null;
        if (pv) out = { mean: pv, variance: new Float32Array(nOut) };
        if (outKind === 'transfer') out = { mean: new Float32Array(nOut), variance: new Float32Array(nOut) };
        const opts = { keepDims, out };
        const check = (r: unknown) => {
          const { mean, variance } = r as { mean: { data: Float32Array; shape: number[] }; variance: { data: Float32Array } };
          const ax = normAxes(axes, shape.length);
          const ref = refMoments(xCopy as Float32Array, shape, ax);
          const tol = momentsTol(ref.mean, ref.variance);
          assertClose(mean.data, ref.mean, tol.mean, `moments mean [${shape}] axes ${JSON.stringify(axes)}`);
          assertClose(variance.data, ref.variance, tol.variance, 'moments variance');
          assert.equal(product(mean.shape), ref.mean.length);
        };
        let shrunk = false;
        if (async_) {
          await expectOutcomeAsync('momentsAsync', () => {
            const p = momentsAsync(x, axes as never, opts);
            if (mutate) shrunk = shrink(data);
            if (outKind === 'transfer' && out) structuredClone(out.variance.buffer, { transfer: [out.variance.buffer] });
            return p;
          }, check);
        } else expectOutcome('moments', () => moments(x, axes as never, opts), check);
        if (!shrunk) assert.equal(snapshot(data), before, 'input modified');
      }), { numRuns: RUNS, seed: SEED });
  });

  it('batchNormalization / batchNormalizationAsync', async () => {
    // Parameters are generated as descriptions and built inside the property, so that
    // fast-check never has to print a detached array.
    type P = { t: 'null' } | { t: 'num'; v: number } | { t: 'tensor'; shape: number[] } | { t: 'raw'; kind: Kind };
    const paramArb = (shape: number[]) => fc.oneof(
      { arbitrary: fc.constant<P>({ t: 'null' }), weight: 1 },
      { arbitrary: fc.double({ min: -3, max: 3, noNaN: true }).map((v): P => ({ t: 'num', v })), weight: 2 },
      {
        arbitrary: fc.array(fc.boolean(), { minLength: shape.length, maxLength: shape.length })
          .map((keep): P => ({ t: 'tensor', shape: shape.map((d, i) => (keep[i] ? d : 1)) })),
        weight: 8,
      },
      { arbitrary: fc.array(fc.integer({ min: 1, max: 4 }), { maxLength: 3 }).map((ps): P => ({ t: 'tensor', shape: ps })), weight: 1 },
      { arbitrary: kindArb.map((kind): P => ({ t: 'raw', kind })), weight: 1 },
    );
    const build = (p: P, shape: number[], seed: number): unknown => {
      switch (p.t) {
        case 'null': return null;
        case 'num': return p.v;
        case 'tensor': return { data: makeData('f32', product(p.shape), seed), shape: p.shape };
        case 'raw': return makeData(p.kind, shape.length ? shape[shape.length - 1] : 1, seed);
      }
    };
    await fc.assert(fc.asyncProperty(
      shapeArb.chain((shape) => fc.tuple(fc.constant(shape), paramArb(shape), paramArb(shape), paramArb(shape), paramArb(shape))),
      kindArb, epsArb, fc.boolean(), fc.constantFrom('none', 'ok', 'in-place', 'overlap', 'overlap-peer', 'in-place-peer', 'param', 'short', 'transfer'),
      fc.boolean(),
      async ([shape, pm, pv, po, ps], kind, eps, async_, outKind, mutate) => {
        const data = makeData(kind, product(shape), 1);
        const [mean, variance, offset, scale] = [pm, pv, po, ps].map((p, i) => build(p, shape, 10 + i));
        // variance must be >= 0 for a finite reference; square it when it is ours
        const sq = (p: unknown) => (p && typeof p === 'object' && 'data' in (p as object) && (p as { data: unknown }).data instanceof Float32Array
          ? { ...(p as object), data: ((p as { data: Float32Array }).data).map((v) => v * v) } : typeof p === 'number' ? p * p : p);
        const v = sq(variance);
        const inputs = [data, mean, v, offset, scale];
        const before = inputs.map((p) => snapshot(p && typeof p === 'object' && 'data' in (p as object) ? (p as { data: unknown }).data : p));
        const xCopy = usable(data) ? data.slice() : data;
        const n = product(shape);
        let out: Float32Array | undefined;
        if (outKind === 'ok') out = new Float32Array(n);
        if (outKind === 'short') out = new Float32Array(n + 1);
        if (outKind === 'in-place' && usable(data)) out = data;
        if (outKind === 'overlap' && usable(data) && n > 1) out = new Float32Array(data.buffer, data.byteOffset + 4, n - 1);
        if (outKind === 'param' && mean && typeof mean === 'object' && usable((mean as { data: unknown }).data)) out = (mean as { data: Float32Array }).data;
        if (outKind === 'overlap-peer' && n > 0) out = peerView(data, 1, n) ?? undefined;
        if (outKind === 'in-place-peer') out = peerView(data, 0, n) ?? undefined;
        if (outKind === 'transfer') out = new Float32Array(n);
        const asT = (p: unknown) => (p === null || p === undefined ? null : typeof p === 'number' ? { data: [Math.fround(p)], shape: [] }
          : p instanceof Float32Array ? { data: p, shape: [p.length] } : (p as { data: ArrayLike<number>; shape: number[] }));
        const check = (r: unknown) => {
          const y = r as { data: Float32Array; shape: number[] };
          const xs = { data: xCopy as Float32Array, shape };
          const ref = refBatchNorm(xs, asT(mean)!, asT(v)!, asT(offset), asT(scale), eps as number);
          assert.deepEqual(y.shape, ref.shape);
          // float32 results: a reference beyond float32's range is ±Infinity
          assertClose(y.data, ref.data.map(Math.fround), bnTol, `batchNormalization [${shape}]`);
        };
        const call = () => [{ data, shape }, mean, v, offset, scale, eps, { out }] as const;
        let shrunk = false;
        if (async_) {
          await expectOutcomeAsync('batchNormalizationAsync', () => {
            const p = batchNormalizationAsync(...(call() as unknown as Parameters<typeof batchNormalizationAsync>));
            if (mutate) shrunk = shrink(data);
            if (outKind === 'transfer' && out) structuredClone(out.buffer, { transfer: [out.buffer] });
            return p;
          }, check);
        } else expectOutcome('batchNormalization', () => batchNormalization(...(call() as unknown as Parameters<typeof batchNormalization>)), check);
        // inputs unchanged (x itself may be overwritten only when it was the requested out)
        inputs.forEach((p, i) => {
          if (i === 0 && (outKind === 'in-place' || outKind === 'in-place-peer' || shrunk)) return;
          assert.equal(snapshot(p && typeof p === 'object' && 'data' in (p as object) ? (p as { data: unknown }).data : p), before[i], `input ${i} modified`);
        });
      }), { numRuns: RUNS, seed: SEED });
  });

  it('fusedBatchNorm and batchNormalizationGrad', () => {
    fc.assert(fc.property(shapeArb, kindArb, fc.option(fc.integer({ min: -6, max: 6 })), fc.boolean(), epsArb,
      (shape, kind, axis, training, eps) => {
        const data = makeData(kind, product(shape), 2);
        const before = snapshot(data);
        const opts = { axis: axis ?? undefined, isTraining: training, epsilon: eps as number, mean: training ? undefined : 0, variance: training ? undefined : 1 };
        let saved: { mean: Float32Array; invStd: Float32Array } | null = null;
        expectOutcome('fusedBatchNorm', () => fusedBatchNorm({ data, shape } as never, 1, 0, opts as never), (r) => {
          const f = r as { y: { shape: number[] }; savedMean: { data: Float32Array }; savedInvStd: { data: Float32Array } };
          assert.deepEqual(f.y.shape, shape);
          saved = { mean: f.savedMean.data, invStd: f.savedInvStd.data };
        });
        if (saved) {
          // dx into x's own memory, shifted, through another SharedArrayBuffer object (when x is shared): refused
          const out = peerView(data, 1, product(shape)) ?? undefined;
          expectOutcome('batchNormalizationGrad', () => batchNormalizationGrad({ data, shape } as never, { data, shape } as never, 1, saved!, { axis: axis ?? undefined, isTraining: training, out }),
            (r) => {
              assert.equal(out === undefined || product(shape) === 0, true, 'an overlapping out was accepted');
              assert.equal((r as { dx: { data: Float32Array } }).dx.data.length, product(shape));
            });
        }
        assert.equal(snapshot(data), before, 'input modified');
      }), { numRuns: RUNS, seed: SEED });
  });
});
