#!/usr/bin/env node
// npm run bench: batchnorm's CPU backend against its floor (bytes that must move over
// this machine's bandwidth, measured in the same run) and against peers measured side by
// side: onnxruntime-node, TensorFlow.js (wasm backend) and a plain JS loop.
// Usage: node bench/run.js [--quick] [--json file] [--only W1,W2]
'use strict';
const os = require('node:os');
const fs = require('node:fs');
const path = require('node:path');

const bn = require('../dist/lib/index.js');
const { native } = require('../dist/lib/binding.js');

const args = process.argv.slice(2);
const quick = args.includes('--quick');
const jsonPath = args.includes('--json') ? args[args.indexOf('--json') + 1] : null;
const only = args.includes('--only') ? args[args.indexOf('--only') + 1].split(',') : null;

const WORKLOADS = [
  { id: 'W1', shape: [128, 32, 32, 64], axes: [0, 1, 2], note: 'NHWC per-channel' },
  { id: 'W2', shape: [32, 64, 56, 56], axes: [0, 2, 3], note: 'NCHW per-channel' },
  { id: 'W3', shape: [4096, 1024], axes: [0], note: 'columns' },
].filter((w) => !only || only.includes(w.id));

const REPS = quick ? 7 : 41;

function median(a) {
  const s = a.slice().sort((p, q) => p - q);
  return s[s.length >> 1];
}

/** Median wall time (ms) of fn over reps runs after warm-up runs. */
async function time(fn, reps = REPS, warm = 5) {
  for (let i = 0; i < warm; i++) await fn();
  const t = [];
  for (let i = 0; i < reps; i++) {
    const t0 = process.hrtime.bigint();
    await fn();
    t.push(Number(process.hrtime.bigint() - t0) / 1e6);
  }
  return median(t);
}

function randn(n, seed) {
  let s = seed >>> 0 || 1;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    s ^= s << 13; s >>>= 0; s ^= s >>> 17; s ^= s << 5; s >>>= 0;
    out[i] = (s / 4294967296 - 0.5) * 3.4;
  }
  return out;
}

// ---- plain JS loop: the straightforward two-pass float64 implementation -------------
// (A, C, B) view: reduce A and B, keep C (covers all three workloads).
function jsPlan(shape, axes) {
  const kept = shape.map((_, i) => i).filter((i) => !axes.includes(i));
  const lo = kept[0];
  const hi = kept[kept.length - 1];
  const A = shape.slice(0, lo).reduce((a, b) => a * b, 1);
  const C = shape.slice(lo, hi + 1).reduce((a, b) => a * b, 1);
  const B = shape.slice(hi + 1).reduce((a, b) => a * b, 1);
  return { A, C, B };
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
  const mean = new Float32Array(C);
  for (let c = 0; c < C; c++) mean[c] = sum[c] / n;
  for (let a = 0, i = 0; a < A; a++) for (let c = 0; c < C; c++) {
    const mc = sum[c] / n;
    let s = 0;
    for (let b = 0; b < B; b++, i++) { const d = x[i] - mc; s += d * d; }
    m2[c] += s;
  }
  const variance = new Float32Array(C);
  for (let c = 0; c < C; c++) variance[c] = m2[c] / n;
  return { mean, variance };
}
function jsNormalize(x, mean, variance, eps, { A, C, B }, y) {
  const inv = new Float64Array(C);
  for (let c = 0; c < C; c++) inv[c] = 1 / Math.sqrt(variance[c] + eps);
  for (let a = 0, i = 0; a < A; a++) for (let c = 0; c < C; c++) {
    const m = mean[c];
    const k = inv[c];
    for (let b = 0; b < B; b++, i++) y[i] = (x[i] - m) * k;
  }
  return y;
}

// ---- peers ----------------------------------------------------------------------------
async function loadOrt() {
  try {
    return require('onnxruntime-node');
  } catch (e) {
    return { error: `onnxruntime-node not installed (${e.message.split('\n')[0]})` };
  }
}
async function loadTf() {
  try {
    // the union package registers every op's gradient (tf.grads for the training rows)
    const tf = require('@tensorflow/tfjs');
    require('@tensorflow/tfjs-backend-wasm');
    const warn = console.warn;
    console.warn = () => {};
    await tf.setBackend('wasm');
    await tf.ready();
    console.warn = warn;
    return tf;
  } catch (e) {
    return { error: `TensorFlow.js wasm unavailable (${e.message.split('\n')[0]})` };
  }
}

async function main() {
  const threads = bn.getNumThreads();
  const cpu = os.cpus()[0]?.model ?? 'unknown CPU';
  const bw = native.memoryBandwidth(256 * 2 ** 20, quick ? 3 : 7);
  const machine = `${cpu}, ${os.cpus().length} cores, ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB, Node ${process.version}, batchnorm ${bn.version} (${threads} threads, ${bn.info().cpuFeatures})`;
  console.log(`# batchnorm benchmark\n\n${machine}`);
  console.log(`Measured bandwidth (256 MiB, ${threads} threads): copy ${bw.copy.toFixed(1)} GB/s (read+write), read ${bw.read.toFixed(1)} GB/s\n`);
  const ort = await loadOrt();
  const tf = await loadTf();
  if (ort.error) console.log(`- ${ort.error}`);
  if (tf.error) console.log(`- ${tf.error}`);

  const rows = [];
  for (const w of WORKLOADS) {
    const n = w.shape.reduce((a, b) => a * b, 1);
    const bytes = 4 * n;
    const floors = { moments: bytes / (bw.read * 1e6), bn: (2 * bytes) / (bw.copy * 1e6) };
    floors.both = floors.moments + floors.bn;
    const moved = { moments: bytes, bn: 2 * bytes, both: 3 * bytes };
    const x = { data: randn(n, 7), shape: w.shape };
    const eps = 0.001;
    const { mean, variance } = bn.moments(x, w.axes, { keepDims: true });
    const out = new Float32Array(n);
    const mOut = { mean: new Float32Array(mean.data.length), variance: new Float32Array(mean.data.length) };
    const res = {};
    const add = (impl, op, ms) => { if (ms !== undefined) res[`${impl}|${op}`] = ms; };

    // ours
    add('batchnorm (out)', 'moments', await time(() => bn.moments(x, w.axes, { keepDims: true, out: mOut })));
    add('batchnorm (out)', 'bn', await time(() => bn.batchNormalization(x, mean, variance, null, null, eps, { out })));
    add('batchnorm (out)', 'both', await time(() => {
      const m = bn.moments(x, w.axes, { keepDims: true, out: mOut });
      bn.batchNormalization(x, m.mean, m.variance, null, null, eps, { out });
    }));
    add('batchnorm (fresh)', 'moments', await time(() => bn.moments(x, w.axes, { keepDims: true })));
    add('batchnorm (fresh)', 'bn', await time(() => bn.batchNormalization(x, mean, variance, null, null, eps)));
    add('batchnorm (fresh)', 'both', await time(() => {
      const m = bn.moments(x, w.axes, { keepDims: true });
      bn.batchNormalization(x, m.mean, m.variance, null, null, eps);
    }));

    // onnxruntime-node
    if (!ort.error) {
      const onnx = require('./onnx.js');
      const mk = (bytesModel) => ort.InferenceSession.create(bytesModel, { graphOptimizationLevel: 'all' });
      const sM = await mk(onnx.momentsModel(w.shape, w.axes));
      const sB = await mk(onnx.batchNormModel(w.shape, w.axes));
      const sBoth = await mk(onnx.bothModel(w.shape, w.axes));
      const ps = mean.shape;
      const tx = new ort.Tensor('float32', x.data, w.shape);
      const teps = new ort.Tensor('float32', Float32Array.of(eps), [1]);
      const tm = new ort.Tensor('float32', mean.data, ps);
      const tv = new ort.Tensor('float32', variance.data, ps);
      // correctness guard: ORT's y must match ours
      const yo = (await sB.run({ x: tx, mean: tm, variance: tv, eps: teps })).y.data;
      const yb = bn.batchNormalization(x, mean, variance, null, null, eps).data;
      let maxd = 0;
      for (let i = 0; i < n; i += 997) maxd = Math.max(maxd, Math.abs(yo[i] - yb[i]));
      if (maxd > 1e-4) throw new Error(`onnxruntime result differs from ours by ${maxd} on ${w.id}`);
      add('onnxruntime-node', 'moments', await time(() => sM.run({ x: tx }), quick ? 5 : 11));
      add('onnxruntime-node', 'bn', await time(() => sB.run({ x: tx, mean: tm, variance: tv, eps: teps }), quick ? 5 : 11));
      // both ops: one graph, or the two graphs chained as a user would; the faster counts
      const oneGraph = await time(() => sBoth.run({ x: tx, eps: teps }), quick ? 5 : 11);
      const chained = await time(async () => {
        const m = await sM.run({ x: tx });
        await sB.run({ x: tx, mean: m.mean, variance: m.variance, eps: teps });
      }, quick ? 5 : 11);
      add('onnxruntime-node', 'both', Math.min(oneGraph, chained));
      await Promise.all([sM.release(), sB.release(), sBoth.release()]);
    }

    // TensorFlow.js wasm: tf.moments, and tf.batchNorm's formula as broadcast elementwise ops
    // (tf.batchNorm itself only broadcasts along the last axis, wrong for NCHW).
    if (!tf.error) {
      const tx = tf.tensor(x.data, w.shape);
      const tm = tf.tensor(mean.data, mean.shape);
      const tv = tf.tensor(variance.data, variance.shape);
      const norm = (m, v) => tf.mul(tf.sub(tx, m), tf.rsqrt(tf.add(v, eps)));
      add('TensorFlow.js wasm', 'moments', await time(() => tf.tidy(() => { const r = tf.moments(tx, w.axes, true); r.variance.dataSync(); }), quick ? 3 : 7));
      add('TensorFlow.js wasm', 'bn', await time(() => tf.tidy(() => { norm(tm, tv).dataSync(); }), quick ? 3 : 7));
      add('TensorFlow.js wasm', 'both', await time(() => tf.tidy(() => { const r = tf.moments(tx, w.axes, true); norm(r.mean, r.variance).dataSync(); }), quick ? 3 : 7));
      tf.dispose([tx, tm, tv]);
    }

    // plain JS loop (two-pass float64, single thread)
    const plan = jsPlan(w.shape, w.axes);
    const yjs = new Float32Array(n);
    add('plain JS loop', 'moments', await time(() => jsMoments(x.data, plan), quick ? 3 : 5, 1));
    add('plain JS loop', 'bn', await time(() => jsNormalize(x.data, mean.data, variance.data, eps, plan, yjs), quick ? 3 : 5, 1));
    add('plain JS loop', 'both', await time(() => { const m = jsMoments(x.data, plan); jsNormalize(x.data, m.mean, m.variance, eps, plan, yjs); }, quick ? 3 : 5, 1));

    console.log(`\n## ${w.id} = [${w.shape.join(', ')}] axes [${w.axes.join(', ')}] (${w.note}, ${(bytes / 2 ** 20).toFixed(0)} MiB)\n`);
    console.log(`floor: moments ${floors.moments.toFixed(2)} ms, batchNormalization ${floors.bn.toFixed(2)} ms, both ${floors.both.toFixed(2)} ms\n`);
    console.log('| implementation | op | ms | GB/s | × floor | × batchnorm (out) |');
    console.log('|---|---|---:|---:|---:|---:|');
    for (const op of ['moments', 'bn', 'both']) {
      const ours = res[`batchnorm (out)|${op}`];
      for (const impl of ['batchnorm (out)', 'batchnorm (fresh)', 'onnxruntime-node', 'TensorFlow.js wasm', 'plain JS loop']) {
        const ms = res[`${impl}|${op}`];
        if (ms === undefined) continue;
        const opName = op === 'bn' ? 'batchNormalization' : op === 'both' ? 'moments + batchNormalization' : 'moments';
        console.log(`| ${impl} | ${opName} | ${ms.toFixed(2)} | ${(moved[op] / ms / 1e6).toFixed(1)} | ${(ms / floors[op]).toFixed(2)} | ${(ms / ours).toFixed(2)} |`);
        rows.push({ workload: w.id, shape: w.shape, axes: w.axes, impl, op, ms, gbps: moved[op] / ms / 1e6, floorRatio: ms / floors[op], vsOurs: ms / ours });
      }
    }
  }
  // ---- training: fused forward (statistics + normalize) and backward ----------------
  const trainRows = [];
  for (const w of WORKLOADS) {
    const n = w.shape.reduce((a, b) => a * b, 1);
    const bytes = 4 * n;
    const floors = {
      forward: bytes / (bw.read * 1e6) + (2 * bytes) / (bw.copy * 1e6), // read x twice, write y
      backward: bytes / (bw.read * 1e6) + (2 * bytes) / (bw.copy * 1e6), // read x and dy, write dx
    };
    const axis = w.axes.length === w.shape.length - 1 && !w.axes.includes(w.shape.length - 1) ? w.shape.length - 1
      : w.shape.map((_, i) => i).find((i) => !w.axes.includes(i));
    const x = { data: randn(n, 3), shape: w.shape };
    const dy = { data: randn(n, 4), shape: w.shape };
    const C = w.shape[axis];
    const scale = new Float32Array(C).fill(1.5);
    const offset = new Float32Array(C).fill(0.5);
    const y = new Float32Array(n);
    const dx = new Float32Array(n);
    const f = bn.fusedBatchNorm(x, scale, offset, { axis });
    const saved = { mean: f.savedMean, invStd: f.savedInvStd };
    const res = {};
    res['batchnorm (out)|forward'] = await time(() => bn.fusedBatchNorm(x, scale, offset, { axis, out: y }));
    res['batchnorm (out)|backward'] = await time(() => bn.batchNormalizationGrad(dy, x, scale, saved, { axis, out: dx }));
    res['batchnorm (fresh)|forward'] = await time(() => bn.fusedBatchNorm(x, scale, offset, { axis }));
    res['batchnorm (fresh)|backward'] = await time(() => bn.batchNormalizationGrad(dy, x, scale, saved, { axis }));
    if (!tf.error) {
      const tx = tf.tensor(x.data, w.shape);
      const tdy = tf.tensor(dy.data, w.shape);
      const ps = w.shape.map((d, i) => (i === axis ? d : 1));
      const ts = tf.tensor(scale, ps);
      const to = tf.tensor(offset, ps);
      const fwd = (xx, s, o) => {
        const m = tf.moments(xx, w.axes, true);
        return tf.add(tf.mul(tf.mul(tf.sub(xx, m.mean), tf.rsqrt(tf.add(m.variance, 1e-3))), s), o);
      };
      const grads = tf.grads((xx, s, o) => fwd(xx, s, o));
      res['TensorFlow.js wasm|forward'] = await time(() => tf.tidy(() => { fwd(tx, ts, to).dataSync(); }), quick ? 3 : 5);
      res['TensorFlow.js wasm|backward'] = await time(() => tf.tidy(() => { grads([tx, ts, to], tdy)[0].dataSync(); }), quick ? 3 : 5);
      tf.dispose([tx, tdy, ts, to]);
    }
    for (const op of ['forward', 'backward']) {
      for (const impl of ['batchnorm (out)', 'batchnorm (fresh)', 'TensorFlow.js wasm']) {
        const ms = res[`${impl}|${op}`];
        if (ms === undefined) continue;
        trainRows.push({ workload: w.id, impl, op, ms, floorRatio: ms / floors[op], vsOurs: ms / res[`batchnorm (out)|${op}`] });
      }
    }
  }
  console.log('\n## Training: fusedBatchNorm (training forward) and batchNormalizationGrad\n');
  console.log('floor: forward = read x twice + write y; backward = read x and dy + write dx (onnxruntime-node has no training mode).\n');
  console.log('| workload | implementation | forward ms (× floor) | backward ms (× floor) |');
  console.log('|---|---|---:|---:|');
  for (const w of WORKLOADS) {
    for (const impl of ['batchnorm (out)', 'batchnorm (fresh)', 'TensorFlow.js wasm']) {
      const cell = (op) => {
        const r = trainRows.find((q) => q.workload === w.id && q.impl === impl && q.op === op);
        return r ? `${r.ms.toFixed(2)} (${r.floorRatio.toFixed(2)}×)` : '–';
      };
      console.log(`| ${w.id} | ${impl} | ${cell('forward')} | ${cell('backward')} |`);
    }
  }

  // Summary: ms and × floor per implementation and op, one row per workload.
  console.log('\n## Summary (median ms, × floor in parentheses; lower is better)\n');
  console.log('| workload | implementation | moments | batchNormalization | both |');
  console.log('|---|---|---:|---:|---:|');
  for (const w of WORKLOADS) {
    for (const impl of ['batchnorm (out)', 'batchnorm (fresh)', 'onnxruntime-node', 'TensorFlow.js wasm', 'plain JS loop']) {
      const cell = (op) => {
        const r = rows.find((q) => q.workload === w.id && q.impl === impl && q.op === op);
        return r ? `${r.ms.toFixed(2)} (${r.floorRatio.toFixed(2)}×)` : '–';
      };
      console.log(`| ${w.id} | ${impl} | ${cell('moments')} | ${cell('bn')} | ${cell('both')} |`);
    }
  }
  if (jsonPath) {
    fs.writeFileSync(jsonPath, JSON.stringify({ machine, bandwidth: bw, rows, training: trainRows }, null, 2));
    console.log(`\nwrote ${path.resolve(jsonPath)}`);
  }
}

main().catch((e) => { console.error(e); process.exit(1); });
