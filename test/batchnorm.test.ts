import * as assert from 'node:assert/strict';
import { batchNormalization, moments, tensor, type Tensor } from '../lib/index';
import { assertClose, bnTol, forEachBackend, product, randn, randomShape, refBatchNorm, rng } from './helpers';

forEachBackend('batchNormalization', (backend) => {
  const opts = { backend };

  describe('golden cases (hand-checked against tf.nn.batch_normalization)', () => {
    it('x = [1,2,3,4], mean 2.5, variance 1.25, no offset/scale, ε = 0', () => {
      const y = batchNormalization(tensor([1, 2, 3, 4]), 2.5, 1.25, null, null, 0, opts);
      assertClose(y.data, [-1.3416407865, -0.4472135955, 0.4472135955, 1.3416407865], bnTol, 'y');
      assert.deepEqual(y.shape, [4]);
    });
    it('per-channel parameters on [2, 2], scale 2, offset 1, ε = 0.001', () => {
      const x = tensor([1, 2, 3, 4], [2, 2]);
      const y = batchNormalization(x, new Float32Array([2, 3]), new Float32Array([1, 1]),
        new Float32Array([1, 1]), new Float32Array([2, 2]), 0.001, opts);
      const k = 2 / Math.sqrt(1.001);
      assertClose(y.data, [1 - k, 1 - k, 1 + k, 1 + k], bnTol, 'y');
    });
    it('the classic example: moments over [0,1,2] then normalize gives per-channel mean 0, std ≈ 1', () => {
      const shape = [16, 8, 8, 32];
      const x = { data: randn(product(shape), 1), shape };
      const { mean, variance } = moments(x, [0, 1, 2], opts);
      const y = batchNormalization(x, mean, variance, 0, 1, 0.001, opts);
      const again = moments(y, [0, 1, 2], opts);
      for (let c = 0; c < 32; c++) {
        assert.ok(Math.abs(again.mean.data[c]) < 1e-6, `mean[${c}] = ${again.mean.data[c]}`);
        const expect = variance.data[c] / (variance.data[c] + 0.001);
        assert.ok(Math.abs(again.variance.data[c] - expect) < 1e-5, `variance[${c}] = ${again.variance.data[c]}`);
      }
    });
  });

  describe('against a float64 reference with broadcasting', () => {
    function check(x: Tensor, m: Tensor, v: Tensor, o: Tensor | null, s: Tensor | null, eps: number, what: string) {
      const y = batchNormalization(x, m, v, o, s, eps, opts);
      const ref = refBatchNorm(x, m, v, o, s, eps);
      assert.deepEqual(y.shape, ref.shape, `${what}: shape`);
      assertClose(y.data, ref.data, bnTol, what);
    }
    const t = (shape: number[], seed: number, mean = 0, std = 1): Tensor => ({ data: randn(product(shape), seed, mean, std), shape });
    const pos = (shape: number[], seed: number): Tensor => ({ data: randn(product(shape), seed).map((a) => a * a + 0.1), shape });

    it('NHWC and NCHW per-channel parameters', () => {
      check(t([4, 5, 6, 16], 1), t([16], 2), pos([16], 3), t([16], 4), t([16], 5), 1e-3, 'NHWC');
      check(t([4, 16, 5, 6], 1), t([1, 16, 1, 1], 2), pos([16, 1, 1], 3), t([16, 1, 1], 4), t([1, 16, 1, 1], 5), 1e-5, 'NCHW');
    });
    it('parameters of different shapes and numbers mixed', () => {
      check(t([3, 4, 5], 1), t([4, 1], 2), pos([5], 3), null, t([3, 1, 1], 5), 1e-3, 'mixed');
      check(t([3, 4, 5], 1), tensor([0.5], []), pos([1], 3), t([5], 4), null, 0.01, 'scalars');
      check(t([6, 7], 1), t([6, 7], 2), pos([6, 7], 3), t([6, 7], 4), t([6, 7], 5), 1e-3, 'full-size parameters');
    });
    it('parameters that broadcast x to a larger output', () => {
      check(t([5], 1), t([3, 1], 2), pos([3, 5], 3), null, null, 1e-3, 'x broadcast');
    });
    it('random shapes and broadcast patterns', () => {
      const u = rng(3);
      for (let k = 0; k < 60; k++) {
        const rank = 1 + Math.floor(u() * 5);
        const shape = randomShape(u, rank, rank > 3 ? 7 : 30);
        const sub = (seed: number): number[] => {
          const r = Math.floor(u() * (rank + 1));
          return shape.slice(rank - r).map((d) => (u() < 0.5 ? 1 : d));
        };
        check(t(shape, k, u() * 4, 2), t(sub(0), k + 1), pos(sub(0), k + 2),
          u() < 0.3 ? null : t(sub(0), k + 3), u() < 0.3 ? null : t(sub(0), k + 4), u() * 0.01, `case ${k} [${shape}]`);
      }
    });
    it('large per-channel inputs (parallel chunks, vector paths)', () => {
      check(t([64, 33, 17, 31], 7), t([31], 8), pos([31], 9), t([31], 10), t([31], 11), 1e-3, 'NHWC large');
      check(t([8, 31, 67, 33], 7), t([31, 1, 1], 8), pos([31, 1, 1], 9), null, t([31, 1, 1], 11), 1e-3, 'NCHW large');
    });
    it('(x − mean) is formed first: no cancellation when |mean| ≫ σ', () => {
      const x = t([1000, 4], 3, 1e4, 1);
      const m = moments(x, [0], opts);
      check(x, m.mean, m.variance, t([4], 1), t([4], 2), 1e-5, 'mean 1e4, σ 1');
    });
  });

  describe('edge cases', () => {
    it('in place: options.out = x.data', () => {
      const x = { data: randn(600, 2), shape: [100, 6] };
      const ref = refBatchNorm(x, { data: [1], shape: [] }, { data: [2], shape: [] }, null, null, 0.1);
      const y = batchNormalization(x, 1, 2, null, null, 0.1, { ...opts, out: x.data });
      assert.equal(y.data, x.data);
      assertClose(x.data, ref.data, bnTol, 'in place');
    });
    it('in place on a tensor large enough for its pages to be faulted in ahead (16 MiB): x is read intact', () => {
      // Outputs of 8 MiB and more are faulted in by the pool before the kernel runs; in
      // place, that memory is x itself, whose values must survive the preparation.
      const n = 1 << 22;
      const x = { data: randn(n, 21), shape: [n / 64, 64] };
      const want = batchNormalization(x, 0.5, 2, 0.25, 3, 1e-3, opts).data;
      const y = batchNormalization(x, 0.5, 2, 0.25, 3, 1e-3, { ...opts, out: x.data });
      assert.equal(y.data, x.data);
      assert.deepEqual(y.data, want);
    });
    it('NaN and Inf propagate elementwise, nothing else is affected', () => {
      const x = tensor([1, NaN, Infinity, -Infinity, 2], [5]);
      const y = batchNormalization(x, 0, 1, null, null, 0, opts);
      assert.equal(y.data[0], 1);
      assert.ok(Number.isNaN(y.data[1]));
      assert.equal(y.data[2], Infinity);
      assert.equal(y.data[3], -Infinity);
      assert.equal(y.data[4], 2);
      const z = batchNormalization(tensor([1, 2, 3, 4], [2, 2]), new Float32Array([0, NaN]), 1, null, null, 0, opts);
      assert.deepEqual(Array.from(z.data).map(Number.isNaN), [false, true, false, true]);
    });
    it('zero-size dimensions give empty outputs', () => {
      const y = batchNormalization({ data: new Float32Array(0), shape: [0, 3] }, new Float32Array(3), new Float32Array(3), null, null, 1e-3, opts);
      assert.deepEqual(y.shape, [0, 3]);
      assert.equal(y.data.length, 0);
    });
    it('does not modify its inputs', () => {
      const x = randn(100, 1);
      const m = randn(10, 2);
      const copies = [x.slice(), m.slice()];
      batchNormalization({ data: x, shape: [10, 10] }, m, 1, m, m, 1e-3, opts);
      assert.deepEqual([x, m], copies);
    });
  });
});
