// Leaks, concurrency and huge sizes: no load pattern may crash the process, mix up
// outputs, or leak.
import * as assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as os from 'node:os';
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import {
  batchNormalization, batchNormalizationAsync, batchNormalizationGrad, batchNormalizationGradAsync, fusedBatchNorm,
  fusedBatchNormAsync, moments, momentsAsync,
} from '../lib/index';
import { randn, sameBits } from './helpers';

const LIB = path.join(__dirname, '..', 'lib', 'index.js');
const gc = (): void => { (global as { gc?: () => void }).gc?.(); };

function memory() {
  gc();
  gc();
  const m = process.memoryUsage();
  return { rss: m.rss, external: m.external + m.arrayBuffers };
}

describe('reliability', function () {
  this.timeout(240000);

  it('10⁴+ calls of every op (sync, async, error paths) leave RSS and external memory flat', async () => {
    assert.ok((global as { gc?: unknown }).gc, 'run with --expose-gc (.mocharc.json sets it)');
    const x = { data: randn(64 * 32, 1), shape: [64, 32] };
    const dy = { data: randn(64 * 32, 2), shape: [64, 32] };
    const f = fusedBatchNorm(x, 1, 0);
    const saved = { mean: f.savedMean, invStd: f.savedInvStd };
    const round = async (k: number) => {
      moments(x, [0]);
      batchNormalization(x, f.savedMean, f.batchVarianceBiased, 0, 1, 1e-3);
      fusedBatchNorm(x, 1, 0);
      batchNormalizationGrad(dy, x, 1, saved);
      await momentsAsync(x, [0]);
      await batchNormalizationAsync(x, 0, 1, null, null, 0);
      await fusedBatchNormAsync(x, 1, 0);
      await batchNormalizationGradAsync(dy, x, 1, saved);
      // error paths, sync and async
      assert.throws(() => moments(x, [5]), RangeError);
      assert.throws(() => batchNormalization(x, new Float32Array(3), 1, null, null, 1e-3), RangeError);
      await assert.rejects(momentsAsync(x, [9]), RangeError);
      await momentsAsync(x, [0], { backend: k % 2 ? 'cuda' : 'cudnn' }).catch(() => undefined); // unavailable here: BackendError path
    };
    for (let k = 0; k < 300; k++) await round(k); // warm-up: JIT, pools, libuv threads
    const before = memory();
    const N = 1300; // 1300 rounds × 11 calls = 14 300 calls
    for (let k = 0; k < N; k++) await round(k);
    const after = memory();
    const grow = { rss: (after.rss - before.rss) / 2 ** 20, external: (after.external - before.external) / 2 ** 20 };
    // Each round allocates ~100 KiB of outputs; a leak of one output per round would be 60+ MiB.
    assert.ok(grow.rss < 24, `RSS grew by ${grow.rss.toFixed(1)} MiB over ${N * 11} calls`);
    assert.ok(grow.external < 4, `external memory grew by ${grow.external.toFixed(1)} MiB`);
  });

  it('8 worker threads run sync and async ops at once with no cross-talk', async () => {
    const script = `
      const { parentPort, workerData } = require('node:worker_threads');
      const bn = require(${JSON.stringify(LIB)});
      (async () => {
        const n = 256 * 48;
        const data = new Float32Array(n).map((_, i) => Math.sin(i * 0.37 + workerData.k) * (1 + workerData.k));
        const x = { data, shape: [256, 48] };
        const results = [];
        for (let r = 0; r < 40; r++) {
          const m = r % 2 ? bn.moments(x, [0]) : await bn.momentsAsync(x, [0]);
          const y = r % 3 ? bn.batchNormalization(x, m.mean, m.variance, 0, 1, 1e-3) : await bn.batchNormalizationAsync(x, m.mean, m.variance, 0, 1, 1e-3);
          results.push(y.data[7] + m.variance.data[5]);
        }
        parentPort.postMessage({ results, data });
      })();`;
    const runs = await Promise.all(Array.from({ length: 8 }, (_, k) => new Promise<{ results: number[]; data: Float32Array }>((resolve, reject) => {
      const w = new Worker(script, { eval: true, workerData: { k } });
      w.once('message', resolve);
      w.once('error', reject);
    })));
    runs.forEach((r, k) => {
      const m = moments({ data: r.data, shape: [256, 48] }, [0]);
      const y = batchNormalization({ data: r.data, shape: [256, 48] }, m.mean, m.variance, 0, 1, 1e-3);
      const expect = y.data[7] + m.variance.data[5];
      assert.ok(r.results.every((v) => v === expect), `worker ${k}: results differ from the main thread`);
    });
  });

  it('workers terminated in the middle of sync and async work leave the process healthy', async () => {
    for (let round = 0; round < 4; round++) {
      const ws = Array.from({ length: 4 }, () => new Worker(`
        const bn = require(${JSON.stringify(LIB)});
        const x = { data: new Float32Array(1 << 21).fill(2), shape: [1 << 15, 64] };
        for (let i = 0; i < 8; i++) bn.momentsAsync(x, [0]);
        for (;;) bn.batchNormalization(x, 0, 1, null, null, 0);
      `, { eval: true }));
      await new Promise((r) => setTimeout(r, 100 + 50 * round));
      await Promise.all(ws.map((w) => w.terminate()));
    }
    const r = await momentsAsync({ data: new Float32Array([1, 2, 3, 6]), shape: [4] }, [0]);
    assert.equal(r.mean.data[0], 3);
  });

  it('200 concurrent async calls on the main thread: every promise gets its own result', async () => {
    const inputs = Array.from({ length: 200 }, (_, k) => ({ data: randn(512, k, k, 1), shape: [128, 4] }));
    const outs = await Promise.all(inputs.map((x, k) => (k % 2 ? momentsAsync(x, [0]) : fusedBatchNormAsync(x, 1, 0).then((f) => ({ mean: f.batchMean, variance: f.batchVarianceBiased })))));
    outs.forEach((o, k) => {
      const s = moments(inputs[k], [0]);
      sameBits(o.mean.data, s.mean.data, `call ${k} mean`);
    });
  });

  it('process.exit() with async work in flight exits cleanly', () => {
    const r = spawnSync(process.execPath, ['-e', `
      const bn = require(${JSON.stringify(LIB)});
      const x = { data: new Float32Array(1 << 22).fill(1), shape: [1 << 16, 64] };
      for (let i = 0; i < 16; i++) bn.momentsAsync(x, [0]);
      setTimeout(() => process.exit(7), 5);
    `], { encoding: 'utf8', timeout: 60000 });
    assert.equal(r.status, 7, `exit ${r.status} signal ${r.signal}: ${r.stderr}`);
  });

  it('more than 2³¹ elements: 64-bit indexing, no silent wrap (moments on an 8 GiB tensor)', function () {
    if (os.totalmem() < 16 * 2 ** 30) this.skip();
    // A fresh Float32Array is zero pages until written: 8 GiB of address space, almost no RAM.
    const n = 2 ** 31 + 64;
    let data: Float32Array;
    try {
      data = new Float32Array(n);
    } catch {
      this.skip();
      return;
    }
    data[2 ** 31 + 5] = 3; // beyond int32 indexing
    const all = moments({ data, shape: [n] }, [0]);
    assert.ok(Math.abs(all.mean.data[0] - 3 / n) <= 1e-6 * (3 / n), `mean ${all.mean.data[0]}`);
    const cols = moments({ data, shape: [n / 64, 64] }, [0]);
    assert.ok(Math.abs(cols.mean.data[5] - 3 / (n / 64)) <= 1e-6 * (3 / (n / 64)), `column mean ${cols.mean.data[5]}`);
    assert.equal(cols.mean.data[4], 0);
  });

  it('shapes whose element count is not a safe integer are refused before anything is allocated', () => {
    assert.throws(() => moments({ data: new Float32Array(1), shape: [2 ** 30, 2 ** 30, 2 ** 30] }, [0]),
      /moments: x\.shape \[1073741824, 1073741824, 1073741824\] has more elements than Number\.MAX_SAFE_INTEGER/);
  });
});
