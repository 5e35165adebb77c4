// The addon is context-aware: it loads and runs in several worker_threads at once.
import * as assert from 'node:assert/strict';
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import { moments } from '../lib/index';
import { randn, sameBits } from './helpers';

const LIB = path.join(__dirname, '..', 'lib', 'index.js');
const HELPERS = path.join(__dirname, 'helpers.js');

const script = `
const { parentPort, workerData } = require('node:worker_threads');
const bn = require(${JSON.stringify(LIB)});
const { randn } = require(${JSON.stringify(HELPERS)});
(async () => {
  const x = { data: randn(64 * 1000, workerData.seed, 1, 3), shape: [1000, 64] };
  let r;
  for (let k = 0; k < 20; k++) r = k % 2 ? bn.moments(x, [0]) : await bn.momentsAsync(x, [0]);
  const y = bn.batchNormalization(x, r.mean, r.variance, null, null, 1e-3);
  parentPort.postMessage({ mean: r.mean.data, variance: r.variance.data, y0: y.data[0], backends: bn.backends().length });
})().catch((e) => { throw e; });
`;

function runWorker(seed: number): Promise<{ mean: Float32Array; variance: Float32Array; y0: number; backends: number }> {
  return new Promise((resolve, reject) => {
    const w = new Worker(script, { eval: true, workerData: { seed } });
    w.once('message', resolve);
    w.once('error', reject);
    w.once('exit', (code) => { if (code !== 0) reject(new Error(`worker exited with ${code}`)); });
  });
}

describe('worker_threads', () => {
  it('4 workers load the addon and compute at once, matching the main thread bit for bit', async () => {
    const seeds = [1, 2, 3, 4];
    const results = await Promise.all(seeds.map(runWorker));
    results.forEach((r, k) => {
      const s = moments({ data: randn(64 * 1000, seeds[k], 1, 3), shape: [1000, 64] }, [0]);
      sameBits(r.mean, s.mean.data, `worker ${k} mean`);
      sameBits(r.variance, s.variance.data, `worker ${k} variance`);
      assert.equal(r.backends, 3);
    });
  });

  it('a worker terminated mid-work does not disturb the process', async () => {
    const w = new Worker(`
      const bn = require(${JSON.stringify(LIB)});
      const x = { data: new Float32Array(1 << 22).fill(1), shape: [1 << 16, 64] };
      for (;;) { bn.moments(x, [0]); bn.momentsAsync(x, [0]); }
    `, { eval: true });
    await new Promise((r) => setTimeout(r, 200));
    await w.terminate();
    const r = moments({ data: new Float32Array([1, 2, 3]), shape: [3] }, [0]);
    assert.equal(r.mean.data[0], 2);
  });
});
