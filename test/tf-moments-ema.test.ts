// The 'tf-moments-ema' preset against TensorFlow 1.x's classic layer, written out by hand:
//
//   batch_mean, batch_var = tf.nn.moments(x, [0])
//   ema = tf.train.ExponentialMovingAverage(decay=0.9)        # zero_debias=False
//   ema_apply_op = ema.apply([batch_mean, batch_var])
//   training:  tf.nn.batch_normalization(x, batch_mean, batch_var, beta, gamma, 1e-3)
//   inference: tf.nn.batch_normalization(x, ema.average(batch_mean), ema.average(batch_var), ...)
//
// apply() creates the shadow of a tensor with create_zeros_slot (zeros, for the mean and
// the variance alike) and updates it with assign_moving_average(shadow, value, decay,
// zero_debias=False): shadow -= (shadow - value) * (1 - decay). With zero_debias=True it
// keeps a biased shadow and a step count instead and assigns biased / (1 - decay^step).
import * as assert from 'node:assert/strict';
import { BatchNormalization, CONVENTIONS } from '../lib/index';
import { randn } from './helpers';

const N = 16;
const C = 3;
const DECAY = 0.9;
const EPS = 1e-3;
// Channel means far from 0, so that the start value and any debiasing show.
const batches = [0, 1, 2, 3, 4].map((k) => {
  const data = randn(N * C, 500 + k);
  for (let i = 0; i < data.length; i++) data[i] = [10, 2, -3][i % C] + [1, 0.5, 2][i % C] * data[i];
  return { data, shape: [N, C] };
});

/** tf.nn.moments(x, [0]) in float64: the mean and the biased (population) variance. */
function tfMoments(x: Float32Array): { mean: number[]; variance: number[] } {
  const mean = new Array<number>(C).fill(0);
  const variance = new Array<number>(C).fill(0);
  for (let i = 0; i < x.length; i++) mean[i % C] += x[i] / N;
  for (let i = 0; i < x.length; i++) variance[i % C] += (x[i] - mean[i % C]) ** 2 / N;
  return { mean, variance };
}

/** tf.nn.batch_normalization with offset 0 and scale 1 (the layer's initial beta/gamma). */
function tfNormalize(x: Float32Array, mean: number[], variance: number[]): number[] {
  return Array.from(x, (v, i) => (v - mean[i % C]) / Math.sqrt(variance[i % C] + EPS));
}

function close(actual: ArrayLike<number>, expected: number[], what: string, rel = 1e-6, abs = 1e-6): void {
  assert.equal(actual.length, expected.length, what);
  for (let i = 0; i < expected.length; i++) {
    const tol = rel * Math.abs(expected[i]) + abs;
    assert.ok(Math.abs(actual[i] - expected[i]) <= tol, `${what}[${i}]: got ${actual[i]}, TF 1.x gives ${expected[i]}`);
  }
}

describe("'tf-moments-ema' is TF 1.x's tf.nn.moments + ExponentialMovingAverage(0.9) layer", () => {
  it('states its conventions: decay 0.9, biased variance, ε 1e-3, no debiasing, shadows start at 0', () => {
    assert.deepEqual({ ...CONVENTIONS['tf-moments-ema'] }, {
      momentumKind: 'decay', momentum: 0.9, runningVariance: 'biased', epsilon: 1e-3, zeroDebias: false,
      initialMean: 0, initialVariance: 0,
    });
    const r = new BatchNormalization({ convention: 'tf-moments-ema', channels: C }).runningStatistics();
    assert.deepEqual(Array.from(r.mean!), [0, 0, 0]);
    assert.deepEqual(Array.from(r.variance!), [0, 0, 0]);
  });

  it('each preset starts its running values as its framework does (Keras, PyTorch: variance 1)', () => {
    for (const conv of ['keras', 'tf-fused', 'pytorch'] as const) {
      const r = new BatchNormalization({ convention: conv, channels: 2 }).runningStatistics();
      assert.deepEqual([Array.from(r.mean!), Array.from(r.variance!)], [[0, 0], [1, 1]], conv);
    }
  });

  it('matches the hand-written TF 1.x update and outputs step by step over 5 steps', () => {
    const layer = new BatchNormalization({ convention: 'tf-moments-ema' });
    assert.equal(layer.convention, 'tf-moments-ema');
    let shadowMean = [0, 0, 0];
    let shadowVar = [0, 0, 0];
    batches.forEach((b, step) => {
      const { mean, variance } = tfMoments(b.data);
      const yTrain = layer.forward(b, { training: true });
      close(yTrain.data, tfNormalize(b.data, mean, variance), `step ${step + 1} training output`, 1e-5, 1e-5);
      shadowMean = shadowMean.map((s, c) => s - (s - mean[c]) * (1 - DECAY));
      shadowVar = shadowVar.map((s, c) => s - (s - variance[c]) * (1 - DECAY));
      const r = layer.runningStatistics();
      close(r.mean!, shadowMean, `step ${step + 1} ema.average(batch_mean)`);
      close(r.variance!, shadowVar, `step ${step + 1} ema.average(batch_var)`);
      const yInfer = layer.forward(b, { training: false });
      close(yInfer.data, tfNormalize(b.data, shadowMean, shadowVar), `step ${step + 1} inference output`, 1e-5, 1e-5);
    });
    // After one step TF's averages are a tenth of the batch statistics, not the statistics.
    const first = tfMoments(batches[0].data);
    const one = new BatchNormalization({ convention: 'tf-moments-ema' });
    one.forward(batches[0], { training: true });
    close(one.runningStatistics().mean!, first.mean.map((m) => m * 0.1), 'one step: 0.1 · batch_mean');
    close(one.runningStatistics().variance!, first.variance.map((v) => v * 0.1), 'one step: 0.1 · batch_var');
  });

  it('zeroDebias: true is ExponentialMovingAverage(decay=0.9, zero_debias=True)', () => {
    const layer = new BatchNormalization({ convention: 'tf-moments-ema', zeroDebias: true });
    assert.equal(layer.convention, 'custom');
    let biasedMean = [0, 0, 0];
    let biasedVar = [0, 0, 0];
    batches.forEach((b, i) => {
      const { mean, variance } = tfMoments(b.data);
      layer.forward(b, { training: true });
      const step = i + 1;
      biasedMean = biasedMean.map((s, c) => s - (s - mean[c]) * (1 - DECAY));
      biasedVar = biasedVar.map((s, c) => s - (s - variance[c]) * (1 - DECAY));
      const r = layer.runningStatistics();
      close(r.mean!, biasedMean.map((v) => v / (1 - DECAY ** step)), `step ${step} debiased mean`);
      close(r.variance!, biasedVar.map((v) => v / (1 - DECAY ** step)), `step ${step} debiased variance`);
      if (step === 1) close(r.mean!, mean, 'after one step the debiased average is the batch mean');
    });
  });
});
