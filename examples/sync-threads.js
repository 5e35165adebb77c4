#!/usr/bin/env node
// Synchronized batch norm on worker threads: one batch split into 3 uneven shards (one
// thread each), a BatchNormalization layer per thread with options.sync, and data-parallel
// SGD on gamma/beta (each step sums the shards' parameter gradients with the same
// communicator). The running statistics and gamma/beta end up identical on every rank
// and equal to one layer trained on the whole batch in the main thread.
//
// Run: node examples/sync-threads.js   (after npm install)
'use strict';
const { Worker, isMainThread, parentPort, workerData } = require('node:worker_threads');
const bn = require('..');

const C = 8;
const SHARDS = [5, 11, 16];       // samples per rank (uneven on purpose)
const STEPS = 20;
const LR = 0.1;

// The whole batch, identical everywhere: x = 3 + 2·N(0, 1)-ish, target 2·x̂ + 1.
function batch() {
  let s = 12345;
  const u = () => ((s = (s * 1103515245 + 12345) >>> 0) / 2 ** 32);
  const n = SHARDS.reduce((a, b) => a + b, 0) * C;
  return Float32Array.from({ length: n }, () => 3 + 2 * (u() + u() + u() - 1.5));
}

/**
 * One SGD step of the mean squared error against 2·x̂ + 1 (x̂ from the whole batch's
 * statistics): forward, dy, backward, update. `total` is the whole batch's sample count.
 */
async function step(layer, x, shape, sync, total) {
  const y = await layer.forwardAsync({ data: x, shape }, { training: true });
  const m = await bn.momentsAsync({ data: x, shape }, [0], sync ? { sync } : {});
  let loss = 0;
  const dy = y.data.map((v, i) => {
    const c = i % C;
    const d = v - (2 * (x[i] - m.mean.data[c]) / Math.sqrt(m.variance.data[c] + 1e-5) + 1);
    loss += (d * d) / total;
    return (2 * d) / total;
  });
  layer.zeroGrad();
  await layer.backwardAsync({ data: dy, shape });
  const { gamma, beta } = layer.gradients();
  // Data parallel: the whole batch's parameter gradient is the sum of the shards'.
  const local = Float64Array.of(...gamma, ...beta, loss);
  const g = sync ? await sync.allReduce(local, 'sum') : local;
  const p = layer.parameters();
  for (let c = 0; c < C; c++) { p.gamma[c] -= LR * g[c]; p.beta[c] -= LR * g[C + c]; }
  return g[2 * C];
}

if (isMainThread) {
  (async () => {
    const x = batch();
    const group = bn.createThreadGroup(SHARDS.length, { timeoutMs: 30000 });
    let offset = 0;
    const ranks = SHARDS.map((n, rank) => {
      const shard = x.slice(offset * C, (offset + n) * C);
      offset += n;
      return new Promise((resolve, reject) => {
        const w = new Worker(__filename, { workerData: { group, rank, shard, total: x.length / C } });
        w.once('message', resolve);
        w.once('error', (e) => { bn.abortThreadGroup(group, e); reject(e); });
      });
    });
    const results = await Promise.all(ranks);
    // The same training on the whole batch, in one layer.
    const whole = new bn.BatchNormalization({ convention: 'pytorch', axis: -1 });
    let loss0 = 0;
    let loss = 0;
    for (let s = 0; s < STEPS; s++) {
      loss = await step(whole, x, [x.length / C, C], null, x.length / C);
      if (s === 0) loss0 = loss;
    }
    console.log(`one layer, whole batch: loss ${loss0.toExponential(3)} → ${loss.toExponential(3)}`);
    const ref = { run: whole.runningStatistics(), params: whole.parameters() };
    const diff = (a, b) => Math.max(...Array.from(a, (v, i) => Math.abs(v - b[i])));
    for (const r of results) {
      console.log(`rank ${r.rank}: ${SHARDS[r.rank]} samples, loss ${r.loss0.toExponential(3)} → ${r.loss.toExponential(3)}, ` +
        `max |Δ| vs one layer on the whole batch: running mean ${diff(r.runMean, ref.run.mean).toExponential(1)}, ` +
        `running variance ${diff(r.runVar, ref.run.variance).toExponential(1)}, gamma ${diff(r.gamma, ref.params.gamma).toExponential(1)}`);
    }
  })().catch((e) => { console.error(e); process.exitCode = 1; });
} else {
  (async () => {
    const { group, rank, shard } = workerData;
    const sync = bn.threadCommunicator(group, rank);
    const layer = new bn.BatchNormalization({ convention: 'pytorch', axis: -1, sync });
    const shape = [shard.length / C, C];
    let loss0 = 0;
    let loss = 0;
    for (let s = 0; s < STEPS; s++) {
      loss = await step(layer, shard, shape, sync, workerData.total);
      if (s === 0) loss0 = loss;
    }
    const run = layer.runningStatistics();
    parentPort.postMessage({ rank, loss0, loss, runMean: run.mean, runVar: run.variance, gamma: layer.parameters().gamma });
  })();
}
