// The training ops on the GPU backends against the CPU backend: every op on 'cuda' for
// host Float32Arrays and DeviceTensors (NHWC, NCHW, channel axis 0 and in the middle,
// rank 2..5), training and frozen backward, bit-identical reruns, Async variants that
// return DeviceTensors, and the 'auto' choice with its reason. Skipped without a GPU;
// scripts/gpu-check.sh runs it with BATCHNORM_REQUIRE_GPU=1, where skipping fails.
import * as assert from 'node:assert/strict';
import {
  backends, batchNormalizationGrad, batchNormalizationGradAsync, DeviceTensor, explain, fusedBatchNorm, fusedBatchNormAsync,
  sufficientStatistics, type Tensor,
} from '../lib/index';
import { assertClose, product, randn, rng, sameBits } from './helpers';

const cuda = backends().find((b) => b.name === 'cuda')!;

interface Case { shape: number[]; axis: number }
const CASES: Case[] = [
  { shape: [64, 33], axis: 1 }, { shape: [33, 64], axis: 0 }, { shape: [8, 17, 30], axis: 1 },
  { shape: [16, 9, 9, 24], axis: 3 }, { shape: [16, 24, 9, 9], axis: 1 }, { shape: [4, 6, 24, 10], axis: 2 },
  { shape: [4, 3, 5, 6, 12], axis: 4 }, { shape: [4, 12, 3, 5, 6], axis: 1 }, { shape: [128, 32, 32, 16], axis: 3 },
];

const rel = (r: number) => (_i: number, v: number) => r * (1 + Math.abs(v));
const KEYS = ['y', 'batchMean', 'batchVariance', 'batchVarianceBiased', 'runningMean', 'runningVariance', 'savedMean', 'savedInvStd'] as const;

function host<T extends Record<string, DeviceTensor>>(r: T): Record<keyof T, Float32Array> {
  const out = {} as Record<keyof T, Float32Array>;
  for (const k of Object.keys(r) as (keyof T)[]) out[k] = r[k].download();
  return out;
}

function dispose(r: Record<string, DeviceTensor>): void {
  for (const t of Object.values(r)) t.dispose();
}

describe(`training ops on the GPU${cuda.available ? '' : ` — skipped: ${cuda.reason}`}`, function () {
  this.timeout(120000);
  before(function () {
    if (!cuda.available && process.env.BATCHNORM_REQUIRE_GPU !== '1') this.skip();
    if (!cuda.available) assert.fail(`cuda unavailable: ${cuda.reason}`);
  });

  for (const c of CASES) {
    describe(`${JSON.stringify(c.shape)} axis ${c.axis}`, () => {
      const n = product(c.shape);
      const C = c.shape[c.axis];
      const u = rng(n + c.axis);
      const x: Tensor = { data: randn(n, n + 1, 3, 2), shape: c.shape };
      const dy: Tensor = { data: randn(n, n + 2), shape: c.shape };
      const vec = (b: number) => Float32Array.from({ length: C }, () => b + u());
      const scale = vec(0.5);
      const offset = vec(-0.5);
      const run = { mean: vec(3), variance: vec(4) };

      for (const mode of [{ isTraining: true, exponentialAvgFactor: 1 }, { isTraining: true, exponentialAvgFactor: 0.1 }, { isTraining: false, exponentialAvgFactor: 1 }]) {
        const o = { axis: c.axis, ...run, ...mode };
        it(`fusedBatchNorm ${JSON.stringify(mode)}: cuda on host and device data vs cpu; reruns bit-identical`, async () => {
          const cpu = fusedBatchNorm(x, scale, offset, { ...o, backend: 'cpu' });
          const h = fusedBatchNorm(x, scale, offset, { ...o, backend: 'cuda' });
          const xd = DeviceTensor.upload(x);
          const sd = DeviceTensor.upload(scale);
          const d1 = fusedBatchNorm(xd, sd, offset, { ...o, backend: 'cuda' });
          const d2 = await fusedBatchNormAsync(xd, sd, offset, { ...o, backend: 'cuda' });
          assert.ok(d2.y instanceof DeviceTensor);
          const a = host(d1 as unknown as Record<string, DeviceTensor>);
          const b = host(d2 as unknown as Record<string, DeviceTensor>);
          for (const k of KEYS) {
            const tol = k === 'y' ? rel(2e-5) : rel(2e-6);
            assertClose(h[k].data, cpu[k].data, tol, `${k} host cuda vs cpu`);
            assertClose(a[k], cpu[k].data, tol, `${k} device cuda vs cpu`);
            sameBits(a[k], h[k].data, `${k} device vs host cuda`);
            sameBits(b[k], a[k], `${k} async rerun`);
          }
          dispose(d1 as unknown as Record<string, DeviceTensor>);
          dispose(d2 as unknown as Record<string, DeviceTensor>);
          xd.dispose();
          sd.dispose();
        });
      }

      for (const isTraining of [true, false]) {
        it(`batchNormalizationGrad isTraining ${isTraining}: cuda on host and device data vs cpu; reruns bit-identical`, async () => {
          const f = fusedBatchNorm(x, scale, offset, { axis: c.axis, backend: 'cpu' });
          const saved = { mean: f.savedMean.data, invStd: f.savedInvStd.data };
          const o = { axis: c.axis, isTraining };
          const cpu = batchNormalizationGrad(dy, x, scale, saved, { ...o, backend: 'cpu' });
          const h = batchNormalizationGrad(dy, x, scale, saved, { ...o, backend: 'cuda' });
          const [xd, dyd] = [DeviceTensor.upload(x), DeviceTensor.upload(dy)];
          const d1 = batchNormalizationGrad(dyd, xd, scale, saved, { ...o, backend: 'cuda' });
          const d2 = await batchNormalizationGradAsync(dyd, xd, scale, saved, o);
          for (const k of ['dx', 'dscale', 'doffset'] as const) {
            assertClose(h[k].data, cpu[k].data, rel(2e-5), `${k} host cuda vs cpu`);
            sameBits(d1[k].download(), h[k].data, `${k} device vs host cuda`);
            sameBits(d2[k].download(), h[k].data, `${k} async (auto) rerun`);
            d1[k].dispose();
            d2[k].dispose();
          }
          xd.dispose();
          dyd.dispose();
        });
      }

      it('sufficientStatistics on cuda: float64 statistics as the cpu', () => {
        const axes = c.shape.map((_, i) => i).filter((i) => i !== c.axis);
        const a = sufficientStatistics(x, axes, { backend: 'cpu' });
        const b = sufficientStatistics(x, axes, { backend: 'cuda' });
        assert.equal(b.count, a.count);
        assertClose(b.mean, a.mean, rel(1e-12), 'mean');
        assertClose(b.m2, a.m2, rel(1e-9), 'm2');
      });
    });
  }

  it("'auto' on DeviceTensors: our kernels unless the measured table names cuDNN, with the reason", () => {
    for (const op of ['fusedBatchNorm', 'batchNormalizationGrad'] as const) {
      const r = explain(op, { onDevice: true, shape: [3, 5, 7, 11], dataFormat: 'NCHW' });
      assert.equal(r.backend, 'cuda');
      assert.match(r.reason, /^auto: 'cuda' \(no measured table entry for this shape; our kernels by default/);
      assert.equal(explain(op, { shape: [3, 5, 7, 11] }).backend, 'cpu');
    }
  });
});
