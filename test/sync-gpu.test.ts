// Synchronized batch norm on DeviceTensors over NCCL: a single-rank NcclCommunicator's
// forward and backward (one native op each, the exchange on the device) against the
// local ops on the same device data and the CPU on host data, NHWC and NCHW, bit-identical
// reruns, and the backend choice. Skipped without a GPU or without NCCL; one rank is all
// one GPU allows (scripts/nccl-check.sh runs several ranks on a multi-GPU machine).
import * as assert from 'node:assert/strict';
import {
  BackendError, backends, batchNormalizationGrad, batchNormalizationGradAsync, DeviceTensor, fusedBatchNorm, fusedBatchNormAsync,
  info, NcclCommunicator, type Tensor,
} from '../lib/index';
import { assertClose, product, randn, sameBits } from './helpers';

const cuda = backends().find((b) => b.name === 'cuda')!;
const nccl = info().nccl;
const why = !cuda.available ? cuda.reason : !nccl.available ? nccl.reason : null;

const rel = (r: number) => (_i: number, v: number) => r * (1 + Math.abs(v));
const FUSED = ['y', 'batchMean', 'batchVariance', 'batchVarianceBiased', 'runningMean', 'runningVariance', 'savedMean', 'savedInvStd'] as const;
const GRADS = ['dx', 'dscale', 'doffset'] as const;

function download<K extends string>(r: Record<K, DeviceTensor>, keys: readonly K[]): Record<K, Float32Array> {
  const out = {} as Record<K, Float32Array>;
  for (const k of keys) out[k] = r[k].download();
  return out;
}

function dispose(r: Record<string, DeviceTensor>): void {
  for (const t of Object.values(r)) t.dispose();
}

describe(`synchronized batch norm over NCCL on DeviceTensors${why ? ` — skipped: ${why}` : ''}`, function () {
  this.timeout(120000);
  let comm: NcclCommunicator | null = null;
  before(async function () {
    if (why) {
      // A GPU run that must not skip still may lack NCCL, an optional library.
      if (!cuda.available && process.env.BATCHNORM_REQUIRE_GPU === '1') assert.fail(`cuda unavailable: ${cuda.reason}`);
      this.skip();
    }
    comm = await NcclCommunicator.create(NcclCommunicator.uniqueId(), 1, 0, { timeoutMs: 60000 });
  });
  after(async () => {
    await comm?.destroy();
  });

  for (const [layout, shape, axis] of [['NHWC', [16, 9, 9, 24], 3], ['NCHW', [16, 24, 9, 9], 1]] as const) {
    it(`${layout}: one rank's synchronized forward and backward equal the local op's, rerun bit for bit`, async () => {
      const n = product(shape);
      const C = shape[axis];
      const x: Tensor = { data: randn(n, 81, 20, 3), shape: [...shape] };
      const dy: Tensor = { data: randn(n, 82), shape: [...shape] };
      const scale = randn(C, 83, 1, 0.2);
      const offset = randn(C, 84);
      const o = { axis, epsilon: 1e-3, exponentialAvgFactor: 0.1, mean: randn(C, 85), variance: Float32Array.from(randn(C, 86), (v) => 1 + v * v) };
      const cpu = fusedBatchNorm(x, scale, offset, { ...o, backend: 'cpu' });
      const cpuGrad = batchNormalizationGrad(dy, x, scale, { mean: cpu.savedMean, invStd: cpu.savedInvStd }, { axis, backend: 'cpu' });

      const xd = DeviceTensor.upload(x);
      const dyd = DeviceTensor.upload(dy);
      const local = fusedBatchNorm(xd, scale, offset, { ...o, backend: 'cuda' });
      const localGrad = batchNormalizationGrad(dyd, xd, scale, { mean: local.savedMean, invStd: local.savedInvStd }, { axis, backend: 'cuda' });
      const runs = [];
      for (let k = 0; k < 2; k++) {
        const r = await fusedBatchNormAsync(xd, scale, offset, { ...o, sync: comm! });
        assert.ok(r.y instanceof DeviceTensor, 'DeviceTensor results');
        const g = await batchNormalizationGradAsync(dyd, xd, scale, { mean: r.savedMean, invStd: r.savedInvStd }, { axis, sync: comm! });
        runs.push({ f: download(r, FUSED), g: download(g, GRADS) });
        dispose(r as unknown as Record<string, DeviceTensor>);
        dispose(g as unknown as Record<string, DeviceTensor>);
      }
      const lf = download(local, FUSED);
      const lg = download(localGrad, GRADS);
      for (const k of FUSED) {
        sameBits(runs[1].f[k], runs[0].f[k], `${k}, second run`);
        assertClose(runs[0].f[k], lf[k], rel(1e-6), `${k} vs the local cuda op`);
        assertClose(runs[0].f[k], cpu[k].data, rel(1e-5), `${k} vs the cpu op`);
      }
      for (const k of GRADS) {
        sameBits(runs[1].g[k], runs[0].g[k], `${k}, second run`);
        assertClose(runs[0].g[k], lg[k], rel(1e-5), `${k} vs the local cuda op`);
        assertClose(runs[0].g[k], cpuGrad[k].data, rel(1e-4), `${k} vs the cpu op`);
      }
      dispose(local as unknown as Record<string, DeviceTensor>);
      dispose(localGrad as unknown as Record<string, DeviceTensor>);
      xd.dispose();
      dyd.dispose();
    });
  }

  it("backend 'cudnn' cannot run the synchronized ops; 'cpu' cannot read DeviceTensors", async () => {
    const x = DeviceTensor.upload({ data: randn(4 * 8 * 8 * 16, 91), shape: [4, 8, 8, 16] });
    try {
      await assert.rejects(fusedBatchNormAsync(x, null, null, { backend: 'cudnn', sync: comm! }), (e: unknown) =>
        e instanceof BackendError && e.code === 'ERR_UNSUPPORTED' && /backend 'cudnn' cannot run this call: cuDNN computes the shard's own statistics/.test(e.message));
    } finally {
      x.dispose();
    }
    // The failed call aborted the group (so no other rank waits); the communicator is spent.
    await assert.rejects(comm!.allReduce(new Float64Array(1), 'sum'), /aborted/);
    await comm!.destroy();
    comm = await NcclCommunicator.create(NcclCommunicator.uniqueId(), 1, 0, { timeoutMs: 60000 });
    const y = DeviceTensor.upload({ data: randn(4 * 16, 92), shape: [4, 16] });
    try {
      await assert.rejects(fusedBatchNormAsync(y, null, null, { backend: 'cpu', sync: comm }), (e: unknown) =>
        e instanceof BackendError && e.code === 'ERR_UNSUPPORTED' && /backend 'cpu' cannot read DeviceTensor inputs/.test(e.message));
    } finally {
      y.dispose();
    }
  });
});
