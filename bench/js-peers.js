#!/usr/bin/env node
// The peers `batchnorm bench` does not run: TensorFlow.js (wasm backend) and a plain JS
// loop, on the same presets and against the same floors (bandwidth measured in this run
// with the addon's loops). `npm run bench:peers` installs them into bench/ first.
// Usage: node bench/js-peers.js [--quick] [--only W1,W2] [--json file]
// batchnorm's own rows, onnxruntime-node and PyTorch: `npx batchnorm bench --compare ...`.
'use strict';
const fs = require('node:fs');
const { PRESETS } = require('../dist/lib/bench/options.js');
const { cpuFloor, fillData, opCost, timeSync } = require('../dist/lib/bench/measure.js');
const bn = require('../dist/lib/index.js');

const args = process.argv.slice(2);
const quick = args.includes('--quick');
const jsonPath = args.includes('--json') ? args[args.indexOf('--json') + 1] : null;
// W3 (822 MB) does not fit TensorFlow.js wasm's memory with its intermediates.
const only = args.includes('--only') ? args[args.indexOf('--only') + 1].split(',') : ['W1', 'W2', 'W4', 'W5', 'W6'];
const REPS = quick ? 5 : 11;

// ---- plain JS loop: the straightforward two-pass float64 implementation, (A, C, B) view ----
function jsPlan(shape, axes) {
  const kept = shape.map((_, i) => i).filter((i) => !axes.includes(i));
  const lo = kept[0];
  const hi = kept[kept.length - 1];
  const prod = (a) => a.reduce((p, q) => p * q, 1);
  return { A: prod(shape.slice(0, lo)), C: prod(shape.slice(lo, hi + 1)), B: prod(shape.slice(hi + 1)) };
}
function jsMoments(x, { A, C, B }) {
  const sum = new Float64Array(C);
  const m2 = new Float64Array(C);
  for (let a = 0, i = 0; a < A; a++) for (let c = 0; c < C; c++) {
    let s = 0;
    for (let b = 0; b < B; b++, i++) s += x[i];
    sum[c] += s;
  }
  const n = A * B;
  for (let a = 0, i = 0; a < A; a++) for (let c = 0; c < C; c++) {
    const mc = sum[c] / n;
    let s = 0;
    for (let b = 0; b < B; b++, i++) { const d = x[i] - mc; s += d * d; }
    m2[c] += s;
  }
  return { mean: Float32Array.from(sum, (v) => v / n), variance: Float32Array.from(m2, (v) => v / n) };
}
function jsNormalize(x, mean, variance, eps, { A, C, B }, y) {
  for (let a = 0, i = 0; a < A; a++) for (let c = 0; c < C; c++) {
    const m = mean[c];
    const k = 1 / Math.sqrt(variance[c] + eps);
    for (let b = 0; b < B; b++, i++) y[i] = (x[i] - m) * k;
  }
  return y;
}

async function loadTf() {
  try {
    const tf = require('@tensorflow/tfjs');
    require('@tensorflow/tfjs-backend-wasm');
    const warn = console.warn;
    console.warn = () => {};
    await tf.setBackend('wasm');
    await tf.ready();
    console.warn = warn;
    return tf;
  } catch (e) {
    return { error: `TensorFlow.js wasm unavailable (${e.message.split('\n')[0]}); run npm run bench:peers` };
  }
}

async function main() {
  const tf = await loadTf();
  if (tf.error) console.log(tf.error);
  const rows = [];
  console.log(`| workload | implementation | op | ms | GB/s | × floor |\n|---|---|---|---:|---:|---:|`);
  for (const w of PRESETS.filter((p) => only.includes(p.id))) {
    const n = w.shape.reduce((a, b) => a * b, 1);
    const bytes = 4 * n;
    const f = cpuFloor(bytes, quick ? 3 : 7);
    const readMs = bytes / (f.readGbs * 1e6);
    const copyMs = (2 * bytes) / (f.copyGbs * 1e6);
    const x = fillData(n, 7);
    const { mean, variance } = bn.moments({ data: x, shape: w.shape }, w.axes, { keepDims: true });
    const cases = [];
    const owned = [];
    const plan = jsPlan(w.shape, w.axes);
    const y = new Float32Array(n);
    cases.push(['plain JS loop', 'moments', () => jsMoments(x, plan)]);
    cases.push(['plain JS loop', 'batchNormalization', () => jsNormalize(x, mean.data, variance.data, 1e-3, plan, y)]);
    cases.push(['plain JS loop', 'fusedBatchNorm', () => { const m = jsMoments(x, plan); jsNormalize(x, m.mean, m.variance, 1e-3, plan, y); }]);
    if (!tf.error) {
      const tx = tf.tensor(x, w.shape);
      const tm = tf.tensor(mean.data, mean.shape);
      const tv = tf.tensor(variance.data, variance.shape);
      owned.push(tx, tm, tv);
      // tf.batchNorm only broadcasts along the last axis: its formula as broadcast ops instead.
      const norm = (m, v) => tf.mul(tf.sub(tx, m), tf.rsqrt(tf.add(v, 1e-3)));
      cases.push(['TensorFlow.js wasm', 'moments', () => tf.tidy(() => { tf.moments(tx, w.axes, true).variance.dataSync(); })]);
      cases.push(['TensorFlow.js wasm', 'batchNormalization', () => tf.tidy(() => { norm(tm, tv).dataSync(); })]);
      cases.push(['TensorFlow.js wasm', 'fusedBatchNorm', () => tf.tidy(() => { const r = tf.moments(tx, w.axes, true); norm(r.mean, r.variance).dataSync(); })]);
      const grads = tf.grads((xx) => { const r = tf.moments(xx, w.axes, true); return tf.mul(tf.sub(xx, r.mean), tf.rsqrt(tf.add(r.variance, 1e-3))); });
      const tdy = tf.tensor(fillData(n, 11), w.shape);
      owned.push(tdy);
      cases.push(['TensorFlow.js wasm', 'fusedBatchNormGrad', () => tf.tidy(() => { grads([tx], tdy)[0].dataSync(); })]);
    }
    for (const [impl, op, fn] of cases) {
      const t = timeSync(fn, 1, REPS, 5000);
      const cost = opCost(op, bytes);
      const floorMs = cost.floorMs(readMs, copyMs);
      const r = { workload: w.id, impl, op, ...t, gbs: cost.moved / (t.ms * 1e6), floorRatio: t.ms / floorMs };
      rows.push(r);
      console.log(`| ${w.id} | ${impl} | ${op} | ${t.ms.toFixed(2)} | ${r.gbs.toFixed(1)} | ${r.floorRatio.toFixed(2)} |`);
    }
    if (!tf.error) tf.dispose(owned);
  }
  if (jsonPath) fs.writeFileSync(jsonPath, JSON.stringify({ rows }, null, 2));
}

main().catch((e) => { console.error(e); process.exit(1); });
