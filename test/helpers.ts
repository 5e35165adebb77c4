// Shared test helpers: seeded random data, float64 references, NaN-aware comparisons that
// print the first mismatching indices, and the per-backend parameterization.
import * as assert from 'node:assert/strict';
import { backends, type BackendInfo } from '../lib/index';

/** mulberry32: a small seeded PRNG, so every failure is reproducible. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function randn(n: number, seed: number, mean = 0, std = 1): Float32Array {
  const u = rng(seed);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const r = Math.sqrt(-2 * Math.log(u() + 1e-12));
    out[i] = mean + std * r * Math.cos(2 * Math.PI * u());
  }
  return out;
}

export function product(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

export function randomShape(u: () => number, rank: number, maxDim: number): number[] {
  return Array.from({ length: rank }, () => 1 + Math.floor(u() * maxDim));
}

/** float64 moments over `axes` (normalized, any order): two-pass, exact enough to judge float32. */
export function refMoments(
  x: ArrayLike<number>, shape: readonly number[], axes: readonly number[], correction = 0,
): { mean: Float64Array; variance: Float64Array } {
  const rank = shape.length;
  const red = new Set(axes.map((a) => (a < 0 ? a + rank : a)));
  const keptShape = shape.filter((_, i) => !red.has(i));
  const nOut = product(keptShape);
  const count = product(shape.filter((_, i) => red.has(i)));
  const outIndex = outputIndexer(shape, red);
  const sum = new Float64Array(nOut);
  const total = product(shape);
  for (let i = 0; i < total; i++) sum[outIndex(i)] += x[i];
  const mean = sum.map((s) => s / count);
  const m2 = new Float64Array(nOut);
  for (let i = 0; i < total; i++) {
    const d = x[i] - mean[outIndex(i)];
    m2[outIndex(i)] += d * d;
  }
  const variance = m2.map((v) => (count - correction > 0 ? v / (count - correction) : NaN));
  if (count === 0) mean.fill(NaN);
  return { mean, variance };
}

/** Maps a flat input index to the flat index of its output (kept dims, row-major). */
function outputIndexer(shape: readonly number[], red: Set<number>): (i: number) => number {
  const rank = shape.length;
  const inStride = new Array<number>(rank);
  const outStride = new Array<number>(rank).fill(0);
  let s = 1;
  let o = 1;
  for (let d = rank - 1; d >= 0; d--) {
    inStride[d] = s;
    s *= shape[d];
    if (!red.has(d)) {
      outStride[d] = o;
      o *= shape[d];
    }
  }
  return (i: number) => {
    let out = 0;
    for (let d = 0; d < rank; d++) {
      const idx = Math.floor(i / inStride[d]) % shape[d];
      out += idx * outStride[d];
    }
    return out;
  };
}

/** float64 batchNormalization with numpy broadcasting; operands as {data, shape}. */
export function refBatchNorm(
  x: { data: ArrayLike<number>; shape: readonly number[] },
  mean: { data: ArrayLike<number>; shape: readonly number[] },
  variance: { data: ArrayLike<number>; shape: readonly number[] },
  offset: { data: ArrayLike<number>; shape: readonly number[] } | null,
  scale: { data: ArrayLike<number>; shape: readonly number[] } | null,
  eps: number,
): { data: Float64Array; shape: number[] } {
  const ops = [x, mean, variance, offset, scale].filter((o) => o !== null) as { data: ArrayLike<number>; shape: readonly number[] }[];
  const rank = Math.max(...ops.map((o) => o.shape.length));
  const outShape = new Array<number>(rank).fill(1);
  for (const o of ops) o.shape.forEach((d, i) => { const k = rank - o.shape.length + i; if (d !== 1) outShape[k] = d; });
  const n = product(outShape);
  const at = (o: { data: ArrayLike<number>; shape: readonly number[] }, i: number) => {
    let idx = 0;
    let stride = 1;
    let rem = i;
    const coords = new Array<number>(rank);
    for (let d = rank - 1; d >= 0; d--) { coords[d] = rem % outShape[d]; rem = Math.floor(rem / outShape[d]); }
    for (let k = o.shape.length - 1; k >= 0; k--) {
      const d = rank - o.shape.length + k;
      if (o.shape[k] !== 1) idx += coords[d] * stride;
      stride *= o.shape[k];
    }
    return o.data[idx];
  };
  const y = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    const s = scale ? at(scale, i) : 1;
    const o = offset ? at(offset, i) : 0;
    y[i] = ((at(x, i) - at(mean, i)) * s) / Math.sqrt(at(variance, i) + eps) + o;
  }
  return { data: y, shape: outShape };
}

/**
 * Asserts |got − ref| <= tol(i) elementwise, NaN matching NaN and ±Inf matching itself;
 * the message lists the first mismatches.
 */
export function assertClose(
  got: ArrayLike<number>, ref: ArrayLike<number>, tol: (i: number, ref: number) => number, what: string,
): void {
  assert.equal(got.length, ref.length, `${what}: length ${got.length} vs reference ${ref.length}`);
  const bad: string[] = [];
  let count = 0;
  for (let i = 0; i < ref.length; i++) {
    const g = got[i];
    const r = ref[i];
    const ok = Number.isNaN(r) ? Number.isNaN(g)
      : !Number.isFinite(r) ? g === r
      : Math.abs(g - r) <= tol(i, r);
    if (!ok) {
      count++;
      if (bad.length < 5) bad.push(`[${i}] got ${g} want ${r} (|diff| ${Math.abs(g - r).toExponential(2)}, tol ${Number.isFinite(r) ? tol(i, r).toExponential(2) : '-'})`);
    }
  }
  if (count) assert.fail(`${what}: ${count} of ${ref.length} elements differ; first: ${bad.join('; ')}`);
}

/** Moments tolerance: relative 1e-6 of the value's natural scale (docs/numerics.md). */
export function momentsTol(refMean: Float64Array, refVar: Float64Array) {
  return {
    mean: (i: number, r: number) => 1e-6 * (Math.abs(r) + (Number.isFinite(refVar[i]) ? Math.sqrt(Math.max(refVar[i], 0)) : 0)) + 1e-30,
    variance: (_i: number, r: number) => 1e-6 * Math.abs(r) + 1e-30,
  };
}

/** batchNormalization tolerance: 4 float32 ulp of |y| plus 1e-6. */
export const bnTol = (_i: number, r: number) => 4 * 2 ** -23 * Math.abs(r) + 1e-6;

export function sameBits(a: Float32Array, b: Float32Array, what: string): void {
  const ua = new Uint32Array(a.buffer, a.byteOffset, a.length);
  const ub = new Uint32Array(b.buffer, b.byteOffset, b.length);
  assert.equal(a.length, b.length, `${what}: lengths differ`);
  for (let i = 0; i < ua.length; i++) {
    if (ua[i] !== ub[i]) assert.fail(`${what}: bits differ at [${i}]: ${a[i]} vs ${b[i]}`);
  }
}

/** A backend the build does not ship (its reason says "not part of" the package): skipped even under BATCHNORM_REQUIRE_GPU. */
export function notInThisVersion(reason: string | null): boolean {
  return /not part of this version/.test(reason ?? '');
}

/**
 * Runs `body` once per backend inside a describe block. Unavailable backends are
 * skipped with their reason in the title — unless BATCHNORM_REQUIRE_GPU=1 (the GPU check
 * script), where an unavailable GPU backend fails instead.
 */
export function forEachBackend(title: string, body: (backend: BackendInfo['name']) => void): void {
  for (const b of backends()) {
    // cudnn runs only per-channel rank-4/5 batch norm (no moments, no broadcasting): the
    // generic suites skip it; test/cudnn.test.ts checks it against cuda and cpu, and
    // fails there under BATCHNORM_REQUIRE_GPU=1 when it is unavailable.
    if (b.name === 'cudnn') {
      const why = b.available ? 'covers per-channel rank-4/5 batch norm only; see test/cudnn.test.ts' : b.reason;
      describe(`${title} [${b.name}] — skipped: ${why}`, function () {
        before(function () { this.skip(); });
        it('(backend not covered by this suite)', () => undefined);
      });
      continue;
    }
    if (b.available) {
      describe(`${title} [${b.name}]`, () => body(b.name));
    } else if (process.env.BATCHNORM_REQUIRE_GPU === '1' && !notInThisVersion(b.reason)) {
      describe(`${title} [${b.name}]`, () => {
        it('backend is available', () => assert.fail(`${b.name} unavailable: ${b.reason}`));
      });
    } else {
      describe(`${title} [${b.name}] — skipped: ${b.reason}`, function () {
        before(function () { this.skip(); });
        it('(backend unavailable)', () => undefined);
      });
    }
  }
}
