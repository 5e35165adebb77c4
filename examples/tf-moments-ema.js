#!/usr/bin/env node
// The classic hand-written TensorFlow 1.x batch-norm layer,
//
//   batch_mean, batch_var = tf.nn.moments(x, [0])
//   ema = tf.train.ExponentialMovingAverage(decay=0.9)
//   ema_apply_op = ema.apply([batch_mean, batch_var])
//   y = tf.nn.batch_normalization(x, mean, var, beta, gamma, 1e-3)
//       # training: the batch statistics; inference: ema.average(batch_mean / batch_var)
//
// as the 'tf-moments-ema' convention of batchnorm's BatchNormalization layer, trained
// with plain SGD on gamma/beta so that BN(x) fits 2·x̂ + 1 on random normal data. As in
// TF 1.x, the moving averages start at 0 (mean and variance) and are not debiased, so
// they need a few dozen steps (0.9^50 ≈ 0.5%) before inference output is meaningful.
//
// Run: node examples/tf-moments-ema.js   (after npm install)
'use strict';
const { BatchNormalization } = require('..');

const C = 4;                      // channels
const BATCH = 64;                 // rows per batch
const MU = [3, -1, 10, 0.5];      // true per-channel means
const SIGMA = [2, 0.5, 4, 1];     // true per-channel standard deviations

let seed = 12345;
function uniform() { seed = (seed * 1664525 + 1013904223) >>> 0; return (seed + 0.5) / 4294967296; }
function gauss() { return Math.sqrt(-2 * Math.log(uniform())) * Math.cos(2 * Math.PI * uniform()); }
function batch() {
  const data = new Float32Array(BATCH * C);
  for (let i = 0; i < data.length; i++) data[i] = MU[i % C] + SIGMA[i % C] * gauss();
  return { data, shape: [BATCH, C] };
}
// target: 2·(x − μ)/σ + 1 with the true population statistics
const target = (x) => x.data.map((v, i) => (2 * (v - MU[i % C])) / SIGMA[i % C] + 1);

const layer = new BatchNormalization({ convention: 'tf-moments-ema' });
const lr = 0.1;
let first;
let last;
for (let step = 1; step <= 300; step++) {
  const x = batch();
  const y = layer.forward(x, { training: true });
  const t = target(x);
  let loss = 0;
  const dy = new Float32Array(y.data.length);
  for (let i = 0; i < dy.length; i++) {
    const d = y.data[i] - t[i];
    loss += (d * d) / dy.length;
    dy[i] = (2 * d) / dy.length;
  }
  layer.zeroGrad();
  layer.backward({ data: dy, shape: x.shape });
  const p = layer.parameters();
  const g = layer.gradients();
  for (let c = 0; c < C; c++) {
    p.gamma[c] -= lr * g.gamma[c];
    p.beta[c] -= lr * g.beta[c];
  }
  if (step === 1) {
    first = loss;
    const r1 = layer.runningStatistics();
    console.log(`after step 1: running mean ${Array.from(r1.mean, (v) => v.toFixed(3)).join(' ')} ` +
      '(0.1 · the batch mean: the averages start at 0, as in TF 1.x)');
  }
  last = loss;
  if (step === 1 || step % 50 === 0) console.log(`step ${String(step).padStart(3)}  loss ${loss.toFixed(5)}`);
}

const fmt = (a) => Array.from(a, (v) => v.toFixed(3).padStart(7)).join(' ');
const r = layer.runningStatistics();
console.log(`\ngamma            ${fmt(layer.parameters().gamma)}   (→ 2)`);
console.log(`beta             ${fmt(layer.parameters().beta)}   (→ 1)`);
console.log(`running mean     ${fmt(r.mean)}   true ${fmt(MU)}`);
console.log(`running variance ${fmt(r.variance)}   true ${fmt(SIGMA.map((s) => s * s))}`);

// Train vs inference on the same batch: batch statistics vs the moving averages.
const x = batch();
const yTrain = layer.forward(x, { training: true }).data;
const yInfer = layer.forward(x, { training: false }).data;
let maxDiff = 0;
for (let i = 0; i < yTrain.length; i++) maxDiff = Math.max(maxDiff, Math.abs(yTrain[i] - yInfer[i]));
console.log(`\ntrain-mode y[0..3]     ${fmt(yTrain.subarray(0, 4))}`);
console.log(`inference-mode y[0..3] ${fmt(yInfer.subarray(0, 4))}`);
console.log(`max |train − inference| = ${maxDiff.toFixed(4)} (batch statistics vs the moving averages: batch-to-batch noise)`);
console.log(`loss ${first.toFixed(4)} → ${last.toFixed(4)}`);
if (!(last < first / 10)) { console.error('training did not converge'); process.exit(1); }
