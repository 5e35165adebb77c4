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
    results.push(r);
    console.log(`${w.name} ${JSON.stringify(w.shape)} axes ${JSON.stringify(w.axes)}: moments ${momentsMs.toFixed(3)} ms ` +
      `(${r.moments.gbs.toFixed(0)} GB/s, ${(100 * r.moments.vsRead).toFixed(0)}% of read), batchNormalization ` +
      `${bnMs.toFixed(3)} ms (${r.batchNormalization.gbs.toFixed(0)} GB/s, ${(100 * r.batchNormalization.vsCopy).toFixed(0)}% of D2D copy)`);
    [x, m.mean, m.variance, y].forEach((t) => t.dispose());
    bn.emptyCache();
  }
  const report = { device: info.cuda, version: info.version, reps: REPS, results };
  fs.writeFileSync(path.join(OUT, 'gpu.json'), JSON.stringify(report, null, 2));
}

main();
