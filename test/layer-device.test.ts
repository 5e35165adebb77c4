// BatchNormalization layer on the GPU (toDevice): DeviceTensors in and out, running
// statistics and gradient sums kept on the device, host copies downloaded when read.
// Device and host layers train on the same data and must agree. Skipped without a GPU;
// scripts/gpu-check.sh runs it with BATCHNORM_REQUIRE_GPU=1, where skipping fails. Here
// only the unavailable path is checked.
import * as assert from 'node:assert/strict';
import {
  BackendError, BatchNormalization, CONVENTIONS, DeviceTensor, backends, memoryInfo, type BatchNormalizationOptions,
  type Communicator, type Tensor,
} from '../lib/index';
import { runningUpdate } from '../lib/layer-device';
import { assertClose, product, randn, sameBits } from './helpers';

const cuda = backends().find((b) => b.name === 'cuda')!;

const rel = (r: number) => (_i: number, v: number) => r * (Math.abs(v) + 1);

const CASES: Record<string, BatchNormalizationOptions> = {
  pytorch: { convention: 'pytorch' },
  'tf-fused': { convention: 'tf-fused' },
  keras: { convention: 'keras' },
  'tf-moments-ema': { convention: 'tf-moments-ema' },
  'pytorch, momentum null': { convention: 'pytorch', momentum: null },
  'keras, zeroDebias (host update)': { convention: 'keras', zeroDebias: true },
};

/** Counts DeviceTensor downloads (sync and async) while `body` runs. */
async function downloadsDuring(body: () => unknown): Promise<number> {
  const proto = DeviceTensor.prototype;
  const { download, downloadAsync } = proto;
  let n = 0;
  proto.download = function (this: DeviceTensor, ...a: Parameters<typeof download>) { n++; return download.apply(this, a); };
  proto.downloadAsync = function (this: DeviceTensor, ...a: Parameters<typeof downloadAsync>) { n++; return downloadAsync.apply(this, a); };
  try {
    await body();
  } finally {
    proto.download = download;
    proto.downloadAsync = downloadAsync;
  }
  return n;
}

function data(shape: number[], step: number): { x: Tensor; dy: Tensor } {
  return { x: { data: randn(product(shape), 100 + step, 1 + step, 2), shape }, dy: { data: randn(product(shape), 200 + step), shape } };
}

describe('BatchNormalization layer on the device', () => {
  it('toDevice() names the reason when CUDA is unavailable, and the layer keeps working on the host', function () {
    if (cuda.available) this.skip();
    const layer = new BatchNormalization({ convention: 'pytorch' });
    assert.throws(() => layer.toDevice(), (e: unknown) =>
      e instanceof BackendError && e.code === 'ERR_BACKEND_UNAVAILABLE' && e.message.includes(cuda.reason!));
    assert.equal(layer.isOnDevice, false);
    const y = layer.forward({ data: randn(2 * 3 * 4, 1), shape: [2, 3, 4] }, { training: true });
    assert.deepEqual(y.shape, [2, 3, 4]);
  });

  describe(`device vs host${cuda.available ? '' : ` — skipped: ${cuda.reason}`}`, function () {
    this.timeout(120000);
    before(function () {
      if (!cuda.available && process.env.BATCHNORM_REQUIRE_GPU !== '1') this.skip();
      if (!cuda.available) assert.fail(`cuda unavailable: ${cuda.reason}`);
    });

    for (const [name, options] of Object.entries(CASES)) {
      it(`'${name}': 3 training steps, then inference: same outputs, running statistics, gradients and state`, async () => {
        const shape = [8, 6, 5, 5];
        const host = new BatchNormalization({ ...options, axis: 1, channels: 6 });
        const dev = new BatchNormalization({ ...options, axis: 1, channels: 6 }).toDevice();
        const onDevice = runningUpdate({ ...CONVENTIONS[options.convention!], ...options } as never) !== 'host';
        for (let step = 0; step < 3; step++) {
          const { x, dy } = data(shape, step);
          // An optimizer's in-place update of gamma and beta reaches the next device step.
          for (const l of [host, dev]) l.parameters().gamma!.fill(1 + step / 4);
          for (const l of [host, dev]) l.parameters().beta!.fill(step / 8);
          const yh = host.forward(x, { training: true });
          const dxh = host.backward(dy);
          const xd = DeviceTensor.upload(x);
          const dyd = DeviceTensor.upload(dy);
          let yd!: DeviceTensor;
          let dxd!: DeviceTensor;
          const downloads = await downloadsDuring(() => {
            yd = dev.forward(xd, { training: true });
            dxd = dev.backward(dyd);
          });
          // zeroDebias downloads the 2·C batch statistics; every other convention nothing.
          assert.equal(downloads, onDevice ? 0 : 2, `step ${step}: downloads inside forward/backward`);
          assertClose(yd.download(), yh.data, rel(1e-5), `step ${step} y`);
          assertClose(dxd.download(), dxh.data, rel(1e-4), `step ${step} dx`);
          [xd, dyd, yd, dxd].forEach((t) => t.dispose());
        }
        const h = host.runningStatistics();
        let d!: ReturnType<BatchNormalization['runningStatistics']>;
        assert.equal(await downloadsDuring(() => { d = dev.runningStatistics(); }), onDevice ? 2 : 0, 'runningStatistics() downloads mean and variance once');
        assert.equal(await downloadsDuring(() => dev.runningStatistics()), 0, 'and not again');
        assertClose(d.mean!, h.mean!, rel(1e-5), 'running mean');
        assertClose(d.variance!, h.variance!, rel(1e-5), 'running variance');
        let g!: ReturnType<BatchNormalization['gradients']>;
        assert.equal(await downloadsDuring(() => { g = dev.gradients(); }), 2, 'gradients() downloads the device sums of dgamma and dbeta');
        assertClose(g.gamma!, host.gradients().gamma!, rel(1e-4), 'dgamma');
        assertClose(g.beta!, host.gradients().beta!, rel(1e-4), 'dbeta');
        const sh = host.state();
        const sd = dev.state();
        assert.equal(sd.steps, sh.steps);
        assert.equal(sd.lastBatchCount, sh.lastBatchCount);

        // Inference with the device's running statistics, and the frozen-statistics backward.
        const { x, dy } = data(shape, 9);
        const xd = DeviceTensor.upload(x);
        const dyd = DeviceTensor.upload(dy);
        const yd = dev.forward(xd);
        const dxd = dev.backward(dyd);
        assertClose(yd.download(), host.forward(x).data, rel(1e-5), 'inference y');
        assertClose(dxd.download(), host.backward(dy).data, rel(1e-4), 'frozen-statistics dx');
        [xd, dyd, yd, dxd].forEach((t) => t.dispose());
      });
    }

    it('forwardAsync / backwardAsync on the device equal forward / backward bit for bit', async () => {
      const shape = [16, 9, 9, 24];
      const a = new BatchNormalization({ convention: 'keras' }).toDevice();
      const b = new BatchNormalization({ convention: 'keras' }).toDevice();
      for (let step = 0; step < 3; step++) {
        const { x, dy } = data(shape, step);
        const xd = DeviceTensor.upload(x);
        const dyd = DeviceTensor.upload(dy);
        const ya = a.forward(xd, { training: true });
        const dxa = a.backward(dyd);
        let yb!: DeviceTensor;
        let dxb!: DeviceTensor;
        assert.equal(await downloadsDuring(async () => {
          yb = await b.forwardAsync(xd, { training: true });
          dxb = await b.backwardAsync(dyd);
        }), 0, 'no downloads in forwardAsync/backwardAsync');
        sameBits(yb.download(), ya.download(), `step ${step} y`);
        sameBits(dxb.download(), dxa.download(), `step ${step} dx`);
        [xd, dyd, ya, dxa, yb, dxb].forEach((t) => t.dispose());
      }
      sameBits(b.runningStatistics().variance!, a.runningStatistics().variance!, 'running variance');
      sameBits(b.gradients().gamma!, a.gradients().gamma!, 'dgamma');
    });

    it('toHost() downloads the state and frees the layer\'s device memory; loadState reaches the device', () => {
      const shape = [8, 6, 5, 5];
      const base = memoryInfo().allocatedBytes;
      const dev = new BatchNormalization({ convention: 'pytorch' }).toDevice();
      const host = new BatchNormalization({ convention: 'pytorch' });
      for (let step = 0; step < 2; step++) {
        const { x, dy } = data(shape, step);
        const xd = DeviceTensor.upload(x);
        const dyd = DeviceTensor.upload(dy);
        [dev.forward(xd, { training: true }), dev.backward(dyd), xd, dyd].forEach((t) => t.dispose());
        host.forward(x, { training: true });
        host.backward(dy);
      }
      dev.toHost();
      const { x, dy } = data(shape, 5);
      dev.forward(x, { training: true }); // a host forward: the device cache goes too
      host.forward(x, { training: true });
      assert.equal(memoryInfo().allocatedBytes, base, 'the layer holds no device memory after toHost()');
      assertClose(dev.runningStatistics().variance!, host.runningStatistics().variance!, rel(1e-5), 'running variance after toHost');
      assertClose(dev.backward(dy).data, host.backward(dy).data, rel(1e-4), 'host backward after toHost');

      const loaded = new BatchNormalization({ convention: 'pytorch' }).toDevice();
      loaded.loadState(host.state());
      const xd = DeviceTensor.upload(x);
      const yd = loaded.forward(xd);
      assertClose(yd.download(), host.forward(x).data, rel(1e-5), 'inference after loadState on the device');
      [xd, yd].forEach((t) => t.dispose());
      loaded.toHost();
    });

    it('options.sync on a device layer goes to the op: the result of one rank, or the op\'s ERR_UNSUPPORTED', async () => {
      const one: Communicator = { rank: 0, size: 1, allGather: async (d) => d.slice(), allReduce: async (d) => d.slice() };
      const shape = [8, 6, 5, 5];
      const { x } = data(shape, 0);
      const xd = DeviceTensor.upload(x);
      const plain = new BatchNormalization({ convention: 'pytorch' }).toDevice();
      const synced = new BatchNormalization({ convention: 'pytorch', sync: one }).toDevice();
      const want = plain.forward(xd, { training: true });
      try {
        const y = await synced.forwardAsync(xd, { training: true });
        assertClose(y.download(), want.download(), rel(1e-5), 'synchronized y of one rank');
        assertClose(synced.runningStatistics().mean!, plain.runningStatistics().mean!, rel(1e-5), 'running mean');
        y.dispose();
      } catch (e) {
        assert.ok(e instanceof BackendError && e.code === 'ERR_UNSUPPORTED', `unexpected ${String(e)}`);
        assert.doesNotMatch(e.message, /the layer or x is on the device/);
      } finally {
        [xd, want].forEach((t) => t.dispose());
      }
    });
  });
});
