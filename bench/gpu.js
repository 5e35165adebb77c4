#!/usr/bin/env node
// GPU benchmark (run by scripts/gpu-check.sh; never part of npm test). Every time is
// device time from CUDA events around one run (native deviceTimeOp), median of >= 20
// runs after warm-up, with the floors measured in the same run: a device-to-device
// cudaMemcpy of the op's bytes (batchNormalization: read x + write y) and a read-only
// kernel over x (moments: read x once). Writes gpu.json into $BATCHNORM_OUT.
'use strict';
const fs = require('node:fs');
const path = require('node:path');
const bn = require('../dist/lib/index.js');

const OUT = process.env.BATCHNORM_OUT || path.join(process.cwd(), 'gpu-report');
const REPS = Number(process.env.BATCHNORM_BENCH_REPS || 30);
const WARMUP = 5;
const WORKLOADS = [
  { name: 'W1', shape: [128, 32, 32, 64], axes: [0, 1, 2], layout: 'NHWC' },
  { name: 'W2', shape: [32, 256, 56, 56], axes: [0, 2, 3], layout: 'NCHW' },
  { name: 'W3', shape: [256, 64, 112, 112], axes: [0, 2, 3], layout: 'NCHW' },
  { name: 'W4', shape: [8192, 4096], axes: [0], layout: 'rows x features' },
];

const median = (a) => { const s = a.slice().sort((p, q) => p - q); return s[s.length >> 1]; };
const gbs = (bytes, ms) => bytes / (ms * 1e-3) / 1e9;

function randomFill(n) {
  // Cheap deterministic data: the kernels' speed does not depend on the values.
  const a = new Float32Array(n);
  let s = 12345;
  for (let i = 0; i < n; i++) { s = (Math.imul(s, 1103515245) + 12345) >>> 0; a[i] = (s >>> 8) / 16777216 - 0.5; }
  return a;
}

// ---- cuDNN rows (issue 5) --------------------------------------------------------------
// deviceTimeOp times our kernels only; cuDNN calls are timed by wall clock around `reps`
// back-to-back calls and one synchronize (launch overhead and cached allocations
// included), and our kernels the same way beside them, so the two rows compare like
// with like. These rows decide BATCHNORM_PREFER_CUDNN's default (README "cuDNN path").
const { native } = require('../dist/lib/binding.js');

function wallMs(fn, reps) {
  for (let i = 0; i < WARMUP; i++) fn();
  native.deviceSynchronize();
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < reps; i++) fn();
  native.deviceSynchronize();
  return Number(process.hrtime.bigint() - t0) / 1e6 / reps;
}

function disposeAll(r) {
  for (const v of Object.values(r)) if (v instanceof bn.DeviceTensor) v.dispose();
}

function cudnnRows(w, x) {
  const cudnn = bn.backends().find((b) => b.name === 'cudnn');
  if (w.shape.length !== 4 && w.shape.length !== 5) return { skipped: 'rank is not 4 or 5' };
  if (!cudnn.available) return { skipped: cudnn.reason };
  const dataFormat = w.layout === 'NHWC' ? 'NHWC' : 'NCHW';
  const axis = dataFormat === 'NCHW' ? 1 : w.shape.length - 1;
  const C = w.shape[axis];
  const paramShape = w.shape.slice(axis).map((d, i) => (i === 0 ? d : 1));
  const vec = (v) => bn.DeviceTensor.upload({ data: new Float32Array(C).fill(v), shape: paramShape });
  const [mean, variance, offset, scale] = [vec(0), vec(1), vec(0), vec(1)];
  const infer = (backend) => wallMs(() => bn.batchNormalization(x, mean, variance, offset, scale, 1e-3, { backend }).dispose(), REPS);
  const opts = { dataFormat, epsilon: 1e-3 };
  const train = (backend) => wallMs(() => disposeAll(bn.fusedBatchNorm(x, scale, offset, { ...opts, backend })), REPS);
  const fwd = bn.fusedBatchNorm(x, scale, offset, { ...opts, backend: 'cudnn' });
  const backward = wallMs(() => disposeAll(bn.batchNormalizationGrad(x, x, scale, { mean: fwd.savedMean, invStd: fwd.savedInvStd },
    { dataFormat, epsilon: 1e-3, backend: 'cudnn' })), REPS);
  const r = {
    method: `wall clock over ${REPS} calls + synchronize`,
    inference: { cudnnMs: infer('cudnn'), cudaMs: infer('cuda') },
    trainingForward: { cudnnMs: train('cudnn'), cudaMs: train('cuda') },
    backward: { cudnnMs: backward },
  };
  disposeAll(fwd);
  [mean, variance, offset, scale].forEach((t) => t.dispose());
  return r;
}

function main() {
  fs.mkdirSync(OUT, { recursive: true });
  const info = bn.info();
  const results = [];
  for (const w of WORKLOADS) {
    const n = w.shape.reduce((a, b) => a * b, 1);
    const bytes = n * 4;
    const x = bn.DeviceTensor.upload({ data: randomFill(n), shape: w.shape });
    const kept = w.shape.map((d, i) => (w.axes.includes(i) ? 1 : d));
    const m = bn.moments(x, w.axes, { keepDims: true });
    const y = bn.DeviceTensor.empty(w.shape);
    const momentsMs = median(bn.deviceTimeOp('moments', { x, shape: w.shape, axes: w.axes, mean: m.mean, variance: m.variance }, WARMUP, REPS));
    const bnSpec = {
      x, xShape: w.shape, mean: m.mean, meanShape: kept, variance: m.variance, varianceShape: kept,
      offset: null, offsetShape: [], scale: null, scaleShape: [], epsilon: 1e-3, out: y, outShape: w.shape,
    };
    const bnMs = median(bn.deviceTimeOp('batchNormalization', bnSpec, WARMUP, REPS));
    const copyMs = median(bn.deviceTimeOp('copy', { bytes }, WARMUP, REPS));
    const readMs = median(bn.deviceTimeOp('read', { bytes }, WARMUP, REPS));
    const r = {
      workload: w.name, shape: w.shape, axes: w.axes, layout: w.layout, bytes,
      moments: { ms: momentsMs, gbs: gbs(bytes, momentsMs), vsRead: readMs / momentsMs },
      batchNormalization: { ms: bnMs, gbs: gbs(2 * bytes, bnMs), vsCopy: copyMs / bnMs },
      training: { ms: momentsMs + bnMs },
      floors: { copyMs, copyGbs: gbs(2 * bytes, copyMs), readMs, readGbs: gbs(bytes, readMs) },
    };
    try {
      r.cudnn = cudnnRows(w, x);
    } catch (e) {
      r.cudnn = { error: String(e && e.message) };
    }
    results.push(r);
    console.log(`${w.name} ${JSON.stringify(w.shape)} axes ${JSON.stringify(w.axes)}: moments ${momentsMs.toFixed(3)} ms ` +
      `(${r.moments.gbs.toFixed(0)} GB/s, ${(100 * r.moments.vsRead).toFixed(0)}% of read), batchNormalization ` +
      `${bnMs.toFixed(3)} ms (${r.batchNormalization.gbs.toFixed(0)} GB/s, ${(100 * r.batchNormalization.vsCopy).toFixed(0)}% of D2D copy)`);
    if (r.cudnn.inference) {
      const c = r.cudnn;
      console.log(`${w.name} cudnn vs cuda (${c.method}): inference ${c.inference.cudnnMs.toFixed(3)} vs ${c.inference.cudaMs.toFixed(3)} ms, ` +
        `training forward ${c.trainingForward.cudnnMs.toFixed(3)} vs ${c.trainingForward.cudaMs.toFixed(3)} ms, backward (cudnn) ${c.backward.cudnnMs.toFixed(3)} ms`);
    } else {
      console.log(`${w.name} cudnn: ${r.cudnn.skipped || r.cudnn.error}`);
    }
    [x, m.mean, m.variance, y].forEach((t) => t.dispose());
    bn.emptyCache();
  }
  const report = { device: info.cuda, version: info.version, reps: REPS, results };
  fs.writeFileSync(path.join(OUT, 'gpu.json'), JSON.stringify(report, null, 2));
}

main();
