import * as assert from 'node:assert/strict';
import { moments, tensor } from '../lib/index';
import {
  assertClose, forEachBackend, momentsTol, product, randn, randomShape, refMoments, rng,
} from './helpers';

function check(x: Float32Array, shape: number[], axes: number[], backend: string, correction = 0, what = '') {
  const got = moments({ data: x, shape }, axes, { backend: backend as 'cpu', correction });
  const ref = refMoments(x, shape, axes, correction);
  const tol = momentsTol(ref.mean, ref.variance);
  const label = `${what} shape [${shape}] axes [${axes}]`;
  assertClose(got.mean.data, ref.mean, tol.mean, `mean of ${label}`);
  assertClose(got.variance.data, ref.variance, tol.variance, `variance of ${label}`);
  return got;
}

forEachBackend('moments', (backend) => {
  const opts = { backend };

  describe('golden cases (hand-checked against tf.nn.moments)', () => {
    const x = tensor([1, 2, 3, 4], [2, 2]);
    it('axes [0] of [[1,2],[3,4]]', () => {
      const { mean, variance } = moments(x, [0], opts);
      assert.deepEqual(Array.from(mean.data), [2, 3]);
      assert.deepEqual(Array.from(variance.data), [1, 1]);
      assert.deepEqual(mean.shape, [2]);
    });
    it('axes [1] and axes [-1] of [[1,2],[3,4]]', () => {
      for (const axes of [[1], [-1]]) {
        const { mean, variance } = moments(x, axes, opts);
        assert.deepEqual(Array.from(mean.data), [1.5, 3.5]);
        assert.deepEqual(Array.from(variance.data), [0.25, 0.25]);
      }
    });
    it('all axes (omitted) gives a scalar', () => {
      const { mean, variance } = moments(x, undefined, opts);
      assert.deepEqual(mean.shape, []);
      assert.deepEqual(Array.from(mean.data), [2.5]);
      assert.deepEqual(Array.from(variance.data), [1.25]);
    });
    it('per-channel of a [2,2,2] tensor, keepDims', () => {
      const t = tensor([1, 2, 3, 4, 5, 6, 7, 8], [2, 2, 2]);
      const { mean, variance } = moments(t, [0, 1], { ...opts, keepDims: true });
      assert.deepEqual(mean.shape, [1, 1, 2]);
      assert.deepEqual(variance.shape, [1, 1, 2]);
      assert.deepEqual(Array.from(mean.data), [4, 5]);
      assert.deepEqual(Array.from(variance.data), [5, 5]);
    });
    it('correction: 1 gives the unbiased variance', () => {
      const { variance } = moments(tensor([1, 2, 3, 4]), [0], { ...opts, correction: 1 });
      assert.ok(Math.abs(variance.data[0] - 5 / 3) < 1e-7);
    });
    it('axes [] keeps everything: mean = x, variance = 0', () => {
      const { mean, variance } = moments(x, [], opts);
      assert.deepEqual(Array.from(mean.data), [1, 2, 3, 4]);
      assert.deepEqual(Array.from(variance.data), [0, 0, 0, 0]);
      assert.deepEqual(mean.shape, [2, 2]);
    });
    it('a single number is an axis', () => {
      const { mean } = moments(x, 0, opts);
      assert.deepEqual(Array.from(mean.data), [2, 3]);
    });
  });

  describe('against a float64 reference', () => {
    it('the hot layouts: NHWC per-channel, NCHW per-channel, rows, columns', () => {
      const cases: [number[], number[]][] = [
        [[8, 9, 7, 64], [0, 1, 2]], [[4, 16, 13, 11], [0, 2, 3]], [[37, 1000], [1]], [[1000, 37], [0]],
        [[3, 4096], [1]], [[5000, 3], [0]], [[2, 5, 100, 100], [0, 2, 3]], [[16, 700], [0]], [[9, 1030], [0]],
      ];
      cases.forEach(([shape, axes], k) => check(randn(product(shape), 100 + k, 3, 2), shape, axes, backend));
    });
    it('random shapes of rank 1 to 6 with random axis sets', () => {
      const u = rng(7);
      for (let k = 0; k < 60; k++) {
        const rank = 1 + Math.floor(u() * 6);
        const shape = randomShape(u, rank, rank > 3 ? 6 : 40);
        const axes = shape.map((_, i) => i).filter(() => u() < 0.5);
        check(randn(product(shape), k, u() * 10 - 5, 0.1 + u() * 3), shape, axes, backend, k % 3 === 0 ? 1 : 0, `case ${k}`);
      }
    });
    it('reductions long enough to be split into many pieces (parallel merge paths)', () => {
      check(randn(1 << 20, 11, -2, 5), [1 << 20], [0], backend);
      check(randn(3 * 200000, 12), [3, 200000], [1], backend);
      check(randn(200000 * 3, 13), [200000, 3], [0], backend);
      check(randn(2 * 70000 * 2, 14), [2, 70000, 2], [1], backend);
      check(randn(4 * 3 * 30000, 15), [4, 3, 30000], [0, 2], backend);
    });
    it('1e4 + N(0,1) with 8M elements: relative error <= 1e-6 (E[x²]−E[x]² would fail)', function () {
      this.timeout(120000);
      const n = 8 * 1024 * 1024;
      const x = randn(n, 99, 1e4, 1);
      check(x, [n / 64, 64], [0], backend, 0, '1e4+N(0,1) NHWC');
      check(x, [32, 64, n / 2048], [0, 2], backend, 0, '1e4+N(0,1) NCHW');
      const all = moments({ data: x, shape: [n] }, [0], { backend });
      const ref = refMoments(x, [n], [0]);
      assert.ok(Math.abs(all.variance.data[0] - ref.variance[0]) / ref.variance[0] <= 1e-6,
        `all-axes variance ${all.variance.data[0]} vs ${ref.variance[0]}`);
    });
  });

  describe('properties', () => {
    const shape = [6, 5, 4, 33];
    const x = randn(product(shape), 5, 1, 2);
    it('shift invariance: variance(x + c) = variance(x), mean(x + c) = mean(x) + c', () => {
      const base = moments({ data: x, shape }, [0, 1, 2], opts);
      const shifted = moments({ data: x.map((v) => v + 1000), shape }, [0, 1, 2], opts);
      for (let c = 0; c < 33; c++) {
        assert.ok(Math.abs(shifted.variance.data[c] - base.variance.data[c]) <= 2e-4 * base.variance.data[c],
          `channel ${c}: ${shifted.variance.data[c]} vs ${base.variance.data[c]}`);
        assert.ok(Math.abs(shifted.mean.data[c] - 1000 - base.mean.data[c]) <= 1e-3);
      }
    });
    it('scaling: variance(a·x) = a²·variance(x)', () => {
      const base = moments({ data: x, shape }, [0, 1, 2], opts);
      const scaled = moments({ data: x.map((v) => v * 4), shape }, [0, 1, 2], opts);
      for (let c = 0; c < 33; c++) {
        assert.ok(Math.abs(scaled.variance.data[c] - 16 * base.variance.data[c]) <= 1e-6 * 16 * base.variance.data[c]);
      }
    });
    it('NHWC and NCHW layouts of the same data give the same per-channel statistics', () => {
      const [N, H, W, C] = [3, 7, 5, 12];
      const nhwc = randn(N * H * W * C, 21, 2, 3);
      const nchw = new Float32Array(nhwc.length);
      for (let n = 0; n < N; n++) for (let h = 0; h < H; h++) for (let w = 0; w < W; w++) for (let c = 0; c < C; c++) {
        nchw[((n * C + c) * H + h) * W + w] = nhwc[((n * H + h) * W + w) * C + c];
      }
      const a = moments({ data: nhwc, shape: [N, H, W, C] }, [0, 1, 2], opts);
      const b = moments({ data: nchw, shape: [N, C, H, W] }, [0, 2, 3], opts);
      assertClose(a.mean.data, b.mean.data, (_i, r) => 1e-6 * (Math.abs(r) + 3), 'mean NHWC vs NCHW');
      assertClose(a.variance.data, b.variance.data, (_i, r) => 1e-6 * Math.abs(r), 'variance NHWC vs NCHW');
    });
    it('the order of axes does not matter', () => {
      const a = moments({ data: x, shape }, [0, 2, 1], opts);
      const b = moments({ data: x, shape }, [2, -4, 1], opts);
      assert.deepEqual(a.mean.data, b.mean.data);
      assert.deepEqual(a.variance.data, b.variance.data);
    });
    it('shift option does not change the result', () => {
      const a = moments({ data: x, shape }, [0, 1, 2], opts);
      const b = moments({ data: x, shape }, [0, 1, 2], { ...opts, shift: 123 });
      assert.deepEqual(a.mean.data, b.mean.data);
      assert.deepEqual(a.variance.data, b.variance.data);
    });
  });

  describe('edge cases', () => {
    it('a reduced extent of 0 gives NaN statistics', () => {
      const { mean, variance } = moments({ data: new Float32Array(0), shape: [0, 3] }, [0], opts);
      assert.deepEqual(mean.shape, [3]);
      assert.ok(Array.from(mean.data).every(Number.isNaN));
      assert.ok(Array.from(variance.data).every(Number.isNaN));
    });
    it('a kept extent of 0 gives empty outputs', () => {
      const { mean, variance } = moments({ data: new Float32Array(0), shape: [4, 0] }, [0], opts);
      assert.deepEqual(mean.shape, [0]);
      assert.equal(mean.data.length, 0);
      assert.equal(variance.data.length, 0);
    });
    it('rank-0 input', () => {
      const { mean, variance } = moments({ data: new Float32Array([7]), shape: [] }, [], opts);
      assert.deepEqual(Array.from(mean.data), [7]);
      assert.deepEqual(Array.from(variance.data), [0]);
    });
    it('NaN and Inf propagate to the affected outputs only', () => {
      const x = randn(4 * 100, 3);
      x[5 * 4 + 1] = NaN;
      x[7 * 4 + 2] = Infinity;
      const { mean, variance } = moments({ data: x, shape: [100, 4] }, [0], opts);
      assert.ok(Number.isNaN(mean.data[1]) && Number.isNaN(variance.data[1]));
      assert.equal(mean.data[2], Infinity);
      assert.ok(Number.isNaN(variance.data[2]));
      assert.ok(Number.isFinite(mean.data[0]) && Number.isFinite(variance.data[3]));
    });
    it('values near FLT_MAX do not overflow the variance to Infinity when it is representable', () => {
      const x = new Float32Array(1000).fill(0);
      x[10] = 3e19; // d² overflows float32 (9e38), the variance (9e35) does not
      const { variance } = moments({ data: x, shape: [1000] }, [0], opts);
      const ref = refMoments(x, [1000], [0]).variance[0];
      assert.ok(Math.abs(variance.data[0] - ref) <= 1e-6 * ref, `${variance.data[0]} vs ${ref}`);
    });
    it('writes into options.out and returns those arrays', () => {
      const out = { mean: new Float32Array(2), variance: new Float32Array(2) };
      const r = moments(tensor([1, 2, 3, 4], [2, 2]), [0], { ...opts, out });
      assert.equal(r.mean.data, out.mean);
      assert.equal(r.variance.data, out.variance);
      assert.deepEqual(Array.from(out.mean), [2, 3]);
    });
    it('does not modify its input', () => {
      const x = randn(1000, 8);
      const copy = x.slice();
      moments({ data: x, shape: [10, 100] }, [1], opts);
      assert.deepEqual(x, copy);
    });
  });
});
