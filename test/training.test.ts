import * as assert from 'node:assert/strict';
import {
  BatchNormalization, CONVENTIONS, batchNormalizationGrad, batchNormalizationGradAsync, finalizeMoments,
  fusedBatchNorm, fusedBatchNormAsync, mergeMoments, moments, sufficientStatistics, type Convention, type Tensor,
} from '../lib/index';
import { assertClose, product, randn, refMoments, sameBits } from './helpers';

// ---- float64 reference of per-channel batch norm (channel axis `ax`) -------------------
function channelIndex(shape: number[], ax: number): (i: number) => number {
  const B = product(shape.slice(ax + 1));
  const C = shape[ax];
  return (i) => Math.floor(i / B) % C;
}

function refForward(x: ArrayLike<number>, shape: number[], ax: number, scale: ArrayLike<number>, offset: ArrayLike<number>,
  eps: number, frozen?: { mean: ArrayLike<number>; variance: ArrayLike<number> }): Float64Array {
  const ch = channelIndex(shape, ax);
  let mean: ArrayLike<number>;
  let variance: ArrayLike<number>;
  if (frozen) ({ mean, variance } = frozen);
  else ({ mean, variance } = refMoments(x, shape, shape.map((_, i) => i).filter((i) => i !== ax)));
  const y = new Float64Array(x.length);
  for (let i = 0; i < x.length; i++) {
    const c = ch(i);
    y[i] = ((x[i] - mean[c]) / Math.sqrt(variance[c] + eps)) * scale[c] + offset[c];
  }
  return y;
}

const dot = (a: ArrayLike<number>, b: ArrayLike<number>) => { let s = 0; for (let i = 0; i < a.length; i++) s += a[i] * b[i]; return s; };
const maxAbs = (a: ArrayLike<number>) => { let m = 0; for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i])); return m; };

// This suite runs on 'cpu'; test/training-gpu.test.ts compares the GPU backends with it.
for (const backend of ['cpu'] as const) describe(`training ops [${backend}]`, () => {
  describe('batchNormalizationGrad against central finite differences of a float64 reference', () => {
    const cases: [number[], number, boolean][] = [
      [[6, 3], 1, true], [[5, 4], 1, false], [[2, 3, 4], 1, true], [[3, 4, 5], 2, true], [[2, 3, 2, 3], 1, true],
      [[2, 2, 3, 4], 3, false], [[2, 3, 2, 2, 2], 1, true], [[2, 2, 2, 2, 3], 4, false], [[4, 3, 3, 2], 3, true],
    ];
    cases.forEach(([shape, ax, training], k) => {
      const layout = ax === shape.length - 1 ? 'channels-last' : 'channels-first';
      it(`[${shape}] axis ${ax} (${layout}), ${training ? 'training' : 'frozen statistics'}`, () => {
        const C = shape[ax];
        const x = randn(product(shape), 10 + k, 1, 2);
        const w = randn(x.length, 20 + k);
        const scale = randn(C, 30 + k, 1, 0.5);
        const offset = randn(C, 40 + k);
        const eps = 1e-3;
        const frozen = training ? undefined : { mean: randn(C, 50 + k), variance: randn(C, 60 + k).map((v) => v * v + 0.5) };
        const f = fusedBatchNorm({ data: x, shape }, scale, offset, {
          axis: ax, epsilon: eps, isTraining: training, mean: frozen?.mean, variance: frozen?.variance, backend,
        });
        const g = batchNormalizationGrad({ data: w, shape }, { data: x, shape }, scale,
          { mean: f.savedMean, invStd: f.savedInvStd }, { axis: ax, isTraining: training, backend });
        const L = (xx: ArrayLike<number>, s: ArrayLike<number>, o: ArrayLike<number>) => dot(w, refForward(xx, shape, ax, s, o, eps, frozen));
        const h = 1e-4;
        const x64 = Float64Array.from(x);
        const s64 = Float64Array.from(scale);
        const o64 = Float64Array.from(offset);
        const num = (v: Float64Array, i: number, f2: (v: Float64Array) => number) => {
          const keep = v[i];
          v[i] = keep + h; const up = f2(v);
          v[i] = keep - h; const dn = f2(v);
          v[i] = keep;
          return (up - dn) / (2 * h);
        };
        const dx = Float64Array.from(x64, (_, i) => num(x64, i, (v) => L(v, s64, o64)));
        const ds = Float64Array.from(s64, (_, i) => num(s64, i, (v) => L(x64, v, o64)));
        const db = Float64Array.from(o64, (_, i) => num(o64, i, (v) => L(x64, s64, v)));
        const tol = (m: number) => () => 2e-4 * m + 1e-5;
        assertClose(g.dx.data, dx, tol(maxAbs(dx)), 'dx');
        assertClose(g.dscale.data, ds, tol(maxAbs(ds)), 'dscale');
        assertClose(g.doffset.data, db, tol(maxAbs(db)), 'doffset');
        assert.deepEqual(g.dx.shape, shape);
      });
    });
  });

  it('batchNormalizationGrad on large inputs against the analytic float64 formula (NHWC and NCHW)', () => {
    for (const [shape, ax] of [[[32, 16, 16, 48], 3], [[16, 48, 20, 20], 1]] as [number[], number][]) {
      const C = shape[ax];
      const x = randn(product(shape), 1, 3, 2);
      const dy = randn(x.length, 2);
      const scale = randn(C, 3, 1, 0.3);
      const f = fusedBatchNorm({ data: x, shape }, scale, null, { axis: ax, backend });
      const g = batchNormalizationGrad({ data: dy, shape }, { data: x, shape }, scale,
        { mean: f.savedMean, invStd: f.savedInvStd }, { axis: ax, backend });
      // analytic: dx = scale·inv/N·(N·dy − Σdy − x̂·Σdy·x̂), with the same float32 saved stats
      const ch = channelIndex(shape, ax);
      const N = x.length / C;
      const s1 = new Float64Array(C);
      const s2 = new Float64Array(C);
      const mu = f.savedMean.data;
      const inv = f.savedInvStd.data;
      for (let i = 0; i < x.length; i++) { const c = ch(i); s1[c] += dy[i]; s2[c] += dy[i] * (x[i] - mu[c]) * inv[c]; }
      const ref = Float64Array.from(x, (v, i) => { const c = ch(i); return (scale[c] * inv[c] / N) * (N * dy[i] - s1[c] - (v - mu[c]) * inv[c] * s2[c]); });
      const scaleOfDx = maxAbs(ref);
      assertClose(g.dx.data, ref, (_i, r) => 1e-5 * Math.abs(r) + 1e-6 * scaleOfDx, `dx [${shape}]`);
      assertClose(g.dscale.data, s2, (_i, r) => 1e-6 * Math.abs(r) + 1e-4, 'dscale');
      assertClose(g.doffset.data, s1, (_i, r) => 1e-6 * Math.abs(r) + 1e-4, 'doffset');
    }
  });

  it('async grads and forward give the bits of the sync calls', async () => {
    const shape = [8, 6, 5, 7];
    const x = { data: randn(product(shape), 5), shape };
    const dy = { data: randn(product(shape), 6), shape };
    const a = fusedBatchNorm(x, 2, 1, { dataFormat: 'NCHW', backend });
    const b = await fusedBatchNormAsync(x, 2, 1, { dataFormat: 'NCHW', backend });
    sameBits(a.y.data, b.y.data, 'y');
    const ga = batchNormalizationGrad(dy, x, 2, { mean: a.savedMean, invStd: a.savedInvStd }, { dataFormat: 'NCHW', backend });
    const gb = await batchNormalizationGradAsync(dy, x, 2, { mean: a.savedMean, invStd: a.savedInvStd }, { dataFormat: 'NCHW', backend });
    sameBits(ga.dx.data, gb.dx.data, 'dx');
  });

  describe('fusedBatchNorm (TF FusedBatchNormV3 semantics)', () => {
    const shape = [4, 5, 6, 3];
    const x = { data: randn(product(shape), 9, 2, 3), shape };
    it('training: batch statistics, Bessel-corrected batchVariance, saved mean / inverse std', () => {
      const r = fusedBatchNorm(x, null, null, { epsilon: 1e-3, backend });
      const ref = refMoments(x.data, shape, [0, 1, 2]);
      const n = 4 * 5 * 6;
      assertClose(r.batchMean.data, ref.mean, (_i, v) => 1e-6 * (Math.abs(v) + 3), 'batchMean');
      assertClose(r.batchVarianceBiased.data, ref.variance, (_i, v) => 1e-6 * v, 'biased');
      assertClose(r.batchVariance.data, ref.variance.map((v) => (v * n) / (n - 1)), (_i, v) => 1e-6 * v, 'unbiased');
      assertClose(r.savedInvStd.data, ref.variance.map((v) => 1 / Math.sqrt(v + 1e-3)), (_i, v) => 1e-6 * v, 'invStd');
      assertClose(r.y.data, refForward(x.data, shape, 3, [1, 1, 1], [0, 0, 0], 1e-3), (_i, v) => 4 * 2 ** -23 * Math.abs(v) + 1e-6, 'y');
      // exponentialAvgFactor 1 (TF default): running = batch
      assert.deepEqual(r.runningMean.data, r.batchMean.data);
      assert.deepEqual(r.runningVariance.data, r.batchVariance.data);
    });
    it('training with exponentialAvgFactor f: running = (1 − f)·running + f·batch (unbiased variance)', () => {
      const mean = new Float32Array([1, 2, 3]);
      const variance = new Float32Array([4, 5, 6]);
      const r = fusedBatchNorm(x, null, null, { mean, variance, exponentialAvgFactor: 0.1, backend });
      for (let c = 0; c < 3; c++) {
        assert.ok(Math.abs(r.runningMean.data[c] - (0.9 * mean[c] + 0.1 * r.batchMean.data[c])) < 1e-6);
        assert.ok(Math.abs(r.runningVariance.data[c] - (0.9 * variance[c] + 0.1 * r.batchVariance.data[c])) < 1e-5);
      }
    });
    it('inference: normalizes with the given statistics and returns them', () => {
      const mean = new Float32Array([1, 2, 3]);
      const variance = new Float32Array([4, 5, 6]);
      const r = fusedBatchNorm(x, new Float32Array([1, 2, 3]), 0.5, { mean, variance, isTraining: false, epsilon: 0.01, backend });
      assertClose(r.y.data, refForward(x.data, shape, 3, [1, 2, 3], [0.5, 0.5, 0.5], 0.01, { mean, variance }), (_i, v) => 4 * 2 ** -23 * Math.abs(v) + 1e-6, 'y');
      assert.deepEqual(r.batchMean.data, mean);
      assert.deepEqual(r.runningVariance.data, variance);
    });
    it('NHWC and NCHW layouts agree; rank 2 and 5 work', () => {
      const [N, H, W, C] = [3, 4, 5, 6];
      const nhwc = randn(N * H * W * C, 3, 1, 2);
      const nchw = new Float32Array(nhwc.length);
      for (let n = 0; n < N; n++) for (let h = 0; h < H; h++) for (let w = 0; w < W; w++) for (let c = 0; c < C; c++) {
        nchw[((n * C + c) * H + h) * W + w] = nhwc[((n * H + h) * W + w) * C + c];
      }
      const a = fusedBatchNorm({ data: nhwc, shape: [N, H, W, C] }, null, null, { dataFormat: 'NHWC', backend });
      const b = fusedBatchNorm({ data: nchw, shape: [N, C, H, W] }, null, null, { dataFormat: 'NCHW', backend });
      assertClose(a.batchMean.data, b.batchMean.data, (_i, v) => 1e-6 * (Math.abs(v) + 2), 'mean');
      assertClose(a.batchVariance.data, b.batchVariance.data, (_i, v) => 1e-6 * v, 'variance');
      const r2 = fusedBatchNorm({ data: randn(40, 1), shape: [10, 4] }, null, null, { backend });
      assert.deepEqual(r2.y.shape, [10, 4]);
      const r5 = fusedBatchNorm({ data: randn(2 * 3 * 2 * 2 * 2, 1), shape: [2, 3, 2, 2, 2] }, null, null, { dataFormat: 'NCHW', backend });
      assert.equal(r5.batchMean.data.length, 3);
    });
    it('argument errors name the parameter', () => {
      assert.throws(() => fusedBatchNorm(x, null, null, { isTraining: false }), /fusedBatchNorm: options\.mean is required/);
      assert.throws(() => fusedBatchNorm(x, new Float32Array(2), null), /fusedBatchNorm: scale has 2 elements but x has 3 channels/);
      assert.throws(() => fusedBatchNorm(x, null, null, { dataFormat: 'NWHC' as never }), TypeError);
      assert.throws(() => fusedBatchNorm(x, null, null, { exponentialAvgFactor: 2 }), RangeError);
      assert.throws(() => fusedBatchNorm({ data: new Float32Array(3), shape: [3] }, null, null), /rank >= 2/);
      assert.throws(() => batchNormalizationGrad({ data: new Float32Array(4), shape: [2, 2] }, x, null, { mean: new Float32Array(3), invStd: new Float32Array(3) }),
        /batchNormalizationGrad: dy has shape \[2, 2\] but x has \[4, 5, 6, 3\]/);
    });
  });

  describe('sufficient statistics and mergeMoments', () => {
    it('statistics of shards merge to the statistics of the whole (exactly enough)', () => {
      const shape = [1000, 8];
      const x = randn(product(shape), 4, 1e4, 1);
      const whole = sufficientStatistics({ data: x, shape }, [0], { backend });
      let acc = sufficientStatistics({ data: x.subarray(0, 8 * 100), shape: [100, 8] }, [0], { backend });
      for (const [lo, hi] of [[100, 350], [350, 351], [351, 1000]]) {
        acc = mergeMoments(acc, sufficientStatistics({ data: x.subarray(8 * lo, 8 * hi), shape: [hi - lo, 8] }, [0], { backend }));
      }
      assert.equal(acc.count, 1000);
      assertClose(acc.mean, whole.mean, (_i, v) => 1e-10 * Math.abs(v), 'mean');
      assertClose(acc.m2, whole.m2, (_i, v) => 1e-7 * Math.abs(v), 'm2'); // each shard's M2 is within ~6e-7 (float32 fast path)
      const fin = finalizeMoments(acc, { correction: 1 });
      const ref = moments({ data: x, shape }, [0], { correction: 1 });
      assertClose(fin.variance.data, ref.variance.data, (_i, v) => 1e-6 * v, 'variance');
    });
    it('merging with an empty shard is the identity', () => {
      const a = sufficientStatistics({ data: randn(20, 1), shape: [5, 4] }, [0], { backend });
      const e = sufficientStatistics({ data: new Float32Array(0), shape: [0, 4] }, [0], { backend });
      const m = mergeMoments(a, e);
      assert.deepEqual(m.mean, a.mean);
      assert.deepEqual(mergeMoments(e, a).m2, a.m2);
    });
    it('rejects mismatched shapes', () => {
      const a = sufficientStatistics({ data: randn(20, 1), shape: [5, 4] }, [0], { backend });
      const b = sufficientStatistics({ data: randn(15, 1), shape: [5, 3] }, [0], { backend });
      assert.throws(() => mergeMoments(a, b), /mergeMoments: a\.shape \[4\] and b\.shape \[3\] differ/);
    });
  });
});

describe('BatchNormalization layer', () => {
  const batches = [0, 1, 2, 3].map((k) => ({ data: randn(8 * 3, 70 + k, k, 1 + k), shape: [8, 3] } as Tensor));

  // Expected running statistics by each framework's documented formula, in float64.
  function expected(conv: Convention): { mean: number[]; variance: number[] } {
    const s = CONVENTIONS[conv];
    // Keras and PyTorch initialise moving_variance / running_var to ones; TF 1.x's
    // ExponentialMovingAverage creates the shadow of a tensor as zeros.
    let mean = [0, 0, 0];
    let variance = conv === 'tf-moments-ema' ? [0, 0, 0] : [1, 1, 1];
    batches.forEach((b) => {
      const r = refMoments(b.data, [8, 3], [0]);
      const bv = Array.from(r.variance, (v) => (s.runningVariance === 'unbiased' ? (v * 8) / 7 : v));
      const bm = Array.from(r.mean);
      if (conv === 'tf-moments-ema') {
        // ExponentialMovingAverage(0.9).apply([batch_mean, batch_var]), zero_debias=False
        mean = mean.map((m, c) => m - (m - bm[c]) * (1 - 0.9));
        variance = variance.map((m, c) => m - (m - bv[c]) * (1 - 0.9));
      } else if (conv === 'keras') { // moving = moving·0.99 + batch·0.01
        mean = mean.map((m, c) => m * 0.99 + bm[c] * 0.01);
        variance = variance.map((m, c) => m * 0.99 + bv[c] * 0.01);
      } else { // PyTorch: running = (1 − f)·running + f·batch; TF fused: exponential_avg_factor f
        const f = s.momentum!;
        mean = mean.map((m, c) => (1 - f) * m + f * bm[c]);
        variance = variance.map((m, c) => (1 - f) * m + f * bv[c]);
      }
    });
    return { mean, variance };
  }

  for (const conv of Object.keys(CONVENTIONS) as Convention[]) {
    it(`'${conv}' reproduces its framework's running statistics over 4 steps`, () => {
      const layer = new BatchNormalization({ convention: conv, axis: -1 });
      for (const b of batches) layer.forward(b, { training: true });
      const e = expected(conv);
      const r = layer.runningStatistics();
      assertClose(r.mean!, e.mean, (_i, v) => 1e-6 * (Math.abs(v) + 1), `${conv} running mean`);
      assertClose(r.variance!, e.variance, (_i, v) => 1e-6 * Math.abs(v), `${conv} running variance`);
    });
  }

  it("'pytorch' with momentum null keeps a cumulative average", () => {
    const layer = new BatchNormalization({ convention: 'pytorch', axis: -1, momentum: null });
    for (const b of batches) layer.forward(b, { training: true });
    const means = batches.map((b) => refMoments(b.data, [8, 3], [0]).mean);
    const avg = [0, 1, 2].map((c) => means.reduce((s, m) => s + m[c], 0) / 4);
    assertClose(layer.runningStatistics().mean!, avg, () => 1e-6, 'cumulative mean');
  });

  it('inference uses running statistics; training uses the batch (explicit, not implicit)', () => {
    const layer = new BatchNormalization({ convention: 'keras' });
    const x = batches[0];
    const yTrain = layer.forward(x, { training: true });
    const yInfer = layer.forward(x); // default: inference
    const ref = refForward(x.data, [8, 3], 1, [1, 1, 1], [0, 0, 0], 1e-3, {
      mean: layer.runningStatistics().mean!, variance: layer.runningStatistics().variance!,
    });
    assertClose(yInfer.data, ref, (_i, v) => 4 * 2 ** -23 * Math.abs(v) + 1e-6, 'inference');
    assert.notDeepEqual(Array.from(yTrain.data), Array.from(yInfer.data));
  });

  it('backward returns dx and accumulates gradients until zeroGrad', () => {
    const layer = new BatchNormalization({ convention: 'pytorch', axis: 1 });
    const x = { data: randn(4 * 3 * 5, 3), shape: [4, 3, 5] };
    const dy = { data: randn(60, 4), shape: [4, 3, 5] };
    layer.forward(x, { training: true });
    const dx = layer.backward(dy);
    const f = fusedBatchNorm(x, 1, 0, { axis: 1, epsilon: 1e-5 });
    const g = batchNormalizationGrad(dy, x, 1, { mean: f.savedMean, invStd: f.savedInvStd }, { axis: 1 });
    sameBits(dx.data, g.dx.data, 'dx');
    layer.backward(dy);
    assertClose(layer.gradients().gamma!, Array.from(g.dscale.data, (v) => 2 * v), (_i, v) => 1e-6 * Math.abs(v) + 1e-6, 'dgamma x2');
    layer.zeroGrad();
    assert.deepEqual(Array.from(layer.gradients().beta!), [0, 0, 0]);
  });

  it('a training batch with one value per channel is an error, not NaN statistics', () => {
    const layer = new BatchNormalization({ convention: 'pytorch', axis: 1 });
    assert.throws(() => layer.forward({ data: new Float32Array(3), shape: [1, 3] }, { training: true }),
      /BatchNormalization\.forward: training needs more than 1 value per channel/);
    assert.equal(layer.runningStatistics().mean![0], 0);
  });

  it('a state without spec.initialMean/initialVariance (the older format) loads with mean 0, variance 1', () => {
    const layer = new BatchNormalization({ convention: 'keras' });
    layer.forward(batches[0], { training: true });
    const state = JSON.parse(JSON.stringify(layer.state()));
    delete state.spec.initialMean;
    delete state.spec.initialVariance;
    const other = new BatchNormalization({ convention: 'keras' });
    other.loadState(state);
    sameBits(other.forward(batches[1]).data, layer.forward(batches[1]).data, 'inference output');
    assert.equal(other.state().spec.initialMean, 0);
    assert.equal(other.state().spec.initialVariance, 1);
  });

  it('state() is JSON-able and loadState round-trips exactly', () => {
    const layer = new BatchNormalization({ convention: 'tf-moments-ema' });
    for (const b of batches.slice(0, 2)) layer.forward(b, { training: true });
    layer.parameters().gamma!.set([1.5, 0.5, 2]);
    const json = JSON.stringify(layer.state());
    const other = new BatchNormalization({ convention: 'tf-moments-ema' });
    other.loadState(JSON.parse(json));
    sameBits(other.forward(batches[3]).data, layer.forward(batches[3]).data, 'inference output');
    other.forward(batches[2], { training: true });
    layer.forward(batches[2], { training: true });
    sameBits(Float32Array.from(other.state().runningMean!), Float32Array.from(layer.state().runningMean!), 'after another step');
  });

  it('convertState moves between biased and unbiased running variance and round-trips', () => {
    const layer = new BatchNormalization({ convention: 'keras' });
    for (const b of batches) layer.forward(b, { training: true });
    const s = layer.state();
    const pt = BatchNormalization.convertState(s, 'pytorch');
    assertClose(pt.runningVariance!, s.runningVariance!.map((v) => (v * 8) / 7), (_i, v) => 1e-12 * v, 'to unbiased');
    const back = BatchNormalization.convertState(pt, 'keras');
    assertClose(back.runningVariance!, s.runningVariance!, (_i, v) => 1e-12 * v, 'round trip');
    const p = new BatchNormalization({ convention: 'pytorch', axis: -1 });
    p.loadState(pt);
    assert.throws(() => new BatchNormalization({ convention: 'pytorch', axis: -1 }).loadState(s), /convertState/);
  });

  it('rejects bad options', () => {
    assert.throws(() => new BatchNormalization({ convention: 'caffe' as never }), TypeError);
    assert.throws(() => new BatchNormalization({ momentum: 2 }), RangeError);
    assert.throws(() => new BatchNormalization({ momentum: null }), /options\.momentum null \(a cumulative average\) needs momentumKind 'factor'/);
    const l = new BatchNormalization({ channels: 3 });
    assert.throws(() => l.forward({ data: new Float32Array(8), shape: [2, 4] }, { training: true }), /x has 4 channels on axis -1; the layer has 3/);
    assert.throws(() => new BatchNormalization().backward({ data: new Float32Array(1), shape: [1, 1] }), /no forward pass/);
  });

});
