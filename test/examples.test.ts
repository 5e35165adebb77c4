import * as assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

describe('examples', () => {
  it('examples/tf-moments-ema.js trains the classic layer and shows train vs inference output', () => {
    const file = path.join(__dirname, '..', '..', 'examples', 'tf-moments-ema.js');
    const r = spawnSync(process.execPath, [file], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    const m = /loss (\S+) → (\S+)/.exec(r.stdout);
    assert.ok(m && Number(m[2]) < Number(m[1]) / 10, r.stdout);
    assert.match(r.stdout, /inference-mode y/);
  });

  it('examples/sync-threads.js: 3 thread shards train like one layer on the whole batch', function () {
    this.timeout(60000);
    const file = path.join(__dirname, '..', '..', 'examples', 'sync-threads.js');
    const r = spawnSync(process.execPath, [file], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    const ranks = [...r.stdout.matchAll(/^rank \d: .*loss (\S+) → (\S+), .*running mean (\S+), running variance (\S+), gamma (\S+)$/gm)];
    assert.equal(ranks.length, 3, r.stdout);
    for (const m of ranks) {
      assert.ok(Number(m[2]) < Number(m[1]) / 100, m[0]);
      for (const d of [m[3], m[4], m[5]]) assert.ok(Number(d) <= 1e-5, m[0]);
    }
  });
});

describe("README's example", () => {
  it('runs as written, draws N(0, 1) data, and the layer in training equals moments → batchNormalization', () => {
    const root = path.join(__dirname, '..', '..');
    const readme = fs.readFileSync(path.join(root, 'README.md'), 'utf8');
    const code = /## Example[^\n]*\n+```js\n([\s\S]*?)```/.exec(readme)?.[1];
    assert.ok(code, 'no js block under "## Example"');
    assert.ok(code.split('\n').filter((l) => l.trim()).length <= 10, 'the example is at most 10 lines of code');
    const check = `
      const n = x.data.length, C = 4;
      let s = 0, ss = 0;
      for (const v of x.data) { s += v; ss += v * v; }
      const maxDiff = Math.max(...yTrain.data.map((v, i) => Math.abs(v - y.data[i])));
      const r = bn.runningStatistics();
      console.log(JSON.stringify({ mean: s / n, variance: ss / n - (s / n) ** 2, maxDiff, shape: y.shape,
        run: Array.from(r.mean), batch: Array.from(mean.data), inferShape: yInfer.shape, C }));`;
    const src = code.replace(/require\('batchnorm'\)/, `require(${JSON.stringify(root)})`) + check;
    const r = spawnSync(process.execPath, ['-e', src], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    const o = JSON.parse(r.stdout) as { mean: number; variance: number; maxDiff: number; shape: number[]; run: number[]; batch: number[]; inferShape: number[] };
    // 256 standard normal draws: mean within ±0.4, variance within [0.6, 1.5] (far outside
    // what uniform [0, 1) numbers give: mean 0.5, variance 1/12)
    assert.ok(Math.abs(o.mean) < 0.4 && o.variance > 0.6 && o.variance < 1.5, r.stdout);
    assert.ok(o.maxDiff <= 1e-5, `training output = batchNormalization with the batch statistics (max diff ${o.maxDiff})`);
    assert.deepEqual(o.shape, [64, 4]);
    assert.deepEqual(o.inferShape, [64, 4]);
    o.run.forEach((m, c) => assert.ok(Math.abs(m - 0.1 * o.batch[c]) <= 1e-6 * (1 + Math.abs(o.batch[c])), 'one TF 1.x EMA step from 0'));
  });
});
