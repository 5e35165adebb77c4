import * as assert from 'node:assert/strict';
import { batchNormalization, batchNormalizationAsync, moments, momentsAsync } from '../lib/index';
import { forEachBackend, product, randn, sameBits } from './helpers';

forEachBackend('async API', (backend) => {
  const opts = { backend };
  const shape = [32, 16, 16, 24];
  const x = { data: randn(product(shape), 4, 1, 2), shape };

  it('momentsAsync and batchNormalizationAsync give the bits of the sync calls', async () => {
    const s = moments(x, [0, 1, 2], opts);
    const a = await momentsAsync(x, [0, 1, 2], opts);
    sameBits(a.mean.data, s.mean.data, 'mean');
    sameBits(a.variance.data, s.variance.data, 'variance');
    const ys = batchNormalization(x, s.mean, s.variance, 0.5, 2, 1e-3, opts);
    const ya = await batchNormalizationAsync(x, s.mean, s.variance, 0.5, 2, 1e-3, opts);
    sameBits(ya.data, ys.data, 'y');
    assert.deepEqual(ya.shape, ys.shape);
  });

  it('many concurrent calls keep their outputs apart', async () => {
    const inputs = Array.from({ length: 24 }, (_, k) => ({ data: randn(4096, 100 + k, k, 1 + k), shape: [64, 64] }));
    const results = await Promise.all(inputs.map((t) => momentsAsync(t, [0], opts)));
    results.forEach((r, k) => {
      const s = moments(inputs[k], [0], opts);
      sameBits(r.mean.data, s.mean.data, `call ${k} mean`);
      sameBits(r.variance.data, s.variance.data, `call ${k} variance`);
    });
  });

  it('inputs stay alive while the work runs, even when the caller drops them', async () => {
    const p: Promise<unknown>[] = [];
    for (let k = 0; k < 8; k++) {
      p.push(batchNormalizationAsync({ data: randn(1 << 18, k), shape: [1 << 10, 256] }, new Float32Array(256), 1, null, null, 0, opts));
    }
    if (global.gc) global.gc();
    const ys = (await Promise.all(p)) as { data: Float32Array }[];
    ys.forEach((y, k) => sameBits(y.data, randn(1 << 18, k), `call ${k}`)); // mean 0, var 1, ε 0: y = x
  });

  it('the event loop keeps running while a large call computes', async () => {
    const big = { data: randn(1 << 23, 9), shape: [1 << 17, 64] };
    let ticks = 0;
    const timer = setInterval(() => { ticks++; }, 0);
    const t0 = Date.now();
    for (let k = 0; k < 10; k++) await momentsAsync(big, [0], opts);
    clearInterval(timer);
    if (Date.now() - t0 > 20) assert.ok(ticks > 0, 'no timer callback ran during async work');
  });
});
