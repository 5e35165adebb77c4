// BatchNormalization layer on the GPU (toDevice): DeviceTensors in and out, host-side
// parameters and running statistics. Runs where CUDA is available (scripts/gpu-check.sh);
// here only the unavailable path is checked.
import * as assert from 'node:assert/strict';
import { BackendError, BatchNormalization, DeviceTensor, backends } from '../lib/index';
import { assertClose, product, randn } from './helpers';

const cuda = backends().find((b) => b.name === 'cuda')!;
const cudnn = backends().find((b) => b.name === 'cudnn')!;

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

  describe(`device vs host over 3 training steps${cuda.available ? '' : ` — skipped: ${cuda.reason}`}`, () => {
    before(function () { if (!cuda.available) this.skip(); });
    for (const conv of ['pytorch', 'keras', 'tf-moments-ema'] as const) {
      it(`'${conv}': same outputs, running statistics and gradients (within tolerance)`, () => {
        const shape = [8, 6, 5, 5];
        const host = new BatchNormalization({ convention: conv, axis: 1 });
        const dev = new BatchNormalization({ convention: conv, axis: 1 }).toDevice();
        for (let step = 0; step < 3; step++) {
          const x = { data: randn(product(shape), step, 1, 2), shape };
          const dy = { data: randn(product(shape), 10 + step), shape };
          const yh = host.forward(x, { training: true });
          const xd = DeviceTensor.upload(x);
          const yd = dev.forward(xd, { training: true });
          assertClose(yd.download(), yh.data, (_i, r) => 1e-5 * (Math.abs(r) + 1), `step ${step} y`);
          if (cudnn.available) {
            const dyd = DeviceTensor.upload(dy);
            const dxd = dev.backward(dyd);
            const dxh = host.backward(dy);
            assertClose(dxd.download(), dxh.data, (_i, r) => 1e-4 * (Math.abs(r) + 1e-2), `step ${step} dx`);
            [dyd, dxd].forEach((t) => t.dispose());
          }
          [xd, yd].forEach((t) => t.dispose());
        }
        const h = host.runningStatistics();
        const d = dev.runningStatistics();
        assertClose(d.mean!, h.mean!, (_i, r) => 1e-5 * (Math.abs(r) + 1), 'running mean');
        assertClose(d.variance!, h.variance!, (_i, r) => 1e-5 * (Math.abs(r) + 1), 'running variance');
        if (cudnn.available) assertClose(dev.gradients().gamma!, host.gradients().gamma!, (_i, r) => 1e-4 * (Math.abs(r) + 1), 'dgamma');
      });
    }
  });
});
