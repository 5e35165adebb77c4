// The device layer's logic on the CPU: the momentum → exponentialAvgFactor mapping of every
// convention, the device training step's running update run with host tensors through the
// same ops (the CPU and CUDA backends compute them with the same float64 arithmetic) against
// the host layer, and the bookkeeping of host/device copies with fake devices that count
// every copy.
import * as assert from 'node:assert/strict';
import { BatchNormalization, CONVENTIONS, fusedBatchNorm, type ConventionSpec, type Tensor } from '../lib/index';
import {
  addVectors, DeviceSum, emaStep, MirroredVector, momentumStep, runningUpdate, UploadCache, type VectorIO,
} from '../lib/layer-device';
import { assertClose, product, randn } from './helpers';

/** A fake device: vectors are copies; every upload, download and dispose is counted. */
interface Fake { data: Float32Array; disposed: boolean }
function fakeIO() {
  const io = {
    uploads: 0, downloads: 0, disposes: 0, live: new Set<Fake>(),
    make(data: Float32Array): Fake {
      const f = { data: data.slice(), disposed: false };
      io.live.add(f);
      return f;
    },
    upload(host: Float32Array): Fake {
      io.uploads++;
      return io.make(host);
    },
    download(d: Fake, into: Float32Array): void {
      assert.equal(d.disposed, false, 'download of a disposed vector');
      io.downloads++;
      into.set(d.data);
    },
    dispose(d: Fake): void {
      assert.equal(d.disposed, false, 'a vector disposed twice');
      d.disposed = true;
      io.disposes++;
      io.live.delete(d);
    },
  };
  return io satisfies VectorIO<Fake>;
}

const ULP = 2 ** -23;
const near = (k: number) => (_i: number, r: number) => k * ULP * Math.abs(r) + 1e-30;

const CUSTOM: Record<string, Partial<ConventionSpec>> = {
  'pytorch momentum=None (cumulative average)': { ...CONVENTIONS.pytorch, momentum: null },
  'cumulative average of the biased variance': { ...CONVENTIONS.pytorch, momentum: null, runningVariance: 'biased' },
  'decay with the unbiased variance': { ...CONVENTIONS.keras, runningVariance: 'unbiased' },
  'keras with zeroDebias': { ...CONVENTIONS.keras, zeroDebias: true },
};

function specOf(name: string): ConventionSpec {
  return (CONVENTIONS as Record<string, ConventionSpec>)[name] ?? (CUSTOM[name] as ConventionSpec);
}

describe('BatchNormalization on the device: the logic, on the CPU', () => {
  describe('momentum → the fused op\'s exponentialAvgFactor', () => {
    it('maps every preset: decay m → f = 1 − m, factor f → f, momentum null → 1/step', () => {
      assert.deepEqual(momentumStep(CONVENTIONS.keras, 1), { keep: 0.99, factor: 1 - 0.99 });
      assert.deepEqual(momentumStep(CONVENTIONS['tf-moments-ema'], 7), { keep: 0.9, factor: 1 - 0.9 });
      assert.deepEqual(momentumStep(CONVENTIONS.pytorch, 3), { keep: 1 - 0.1, factor: 0.1 });
      assert.deepEqual(momentumStep(CONVENTIONS['tf-fused'], 3), { keep: 1 - 0.01, factor: 0.01 });
      const cumulative = { ...CONVENTIONS.pytorch, momentum: null };
      assert.deepEqual([1, 2, 4].map((t) => momentumStep(cumulative, t).factor), [1, 0.5, 0.25]);
      assert.equal(momentumStep(cumulative, 1).keep, 0);
    });

    it('keeps the op for what it writes, an EMA on the device for a biased running variance, the host for zero debias', () => {
      assert.equal(runningUpdate(CONVENTIONS.pytorch), 'op');
      assert.equal(runningUpdate(CONVENTIONS['tf-fused']), 'op');
      assert.equal(runningUpdate(CONVENTIONS.keras), 'op-ema');
      assert.equal(runningUpdate(CONVENTIONS['tf-moments-ema']), 'op-ema');
      assert.equal(runningUpdate(specOf('decay with the unbiased variance')), 'op');
      assert.equal(runningUpdate(specOf('keras with zeroDebias')), 'host');
    });
  });

  describe('the device step\'s running update, run with host tensors, against the host layer', () => {
    // What the device layer queues each step: fusedBatchNorm with the running statistics
    // and the step's factor; for a biased running variance, emaStep on the op's biased
    // batch variance.
    function deviceStyle(spec: ConventionSpec, xs: Tensor[], axis: number) {
      const C = xs[0].shape[axis];
      let mean: Tensor = { data: new Float32Array(C).fill(spec.initialMean), shape: [C] };
      let variance: Tensor = { data: new Float32Array(C).fill(spec.initialVariance), shape: [C] };
      const zero = { data: Float32Array.of(0), shape: [1] };
      xs.forEach((x, i) => {
        const { keep, factor } = momentumStep(spec, i + 1);
        const r = fusedBatchNorm(x, null, null, { axis, epsilon: spec.epsilon, mean: mean.data, variance: variance.data, exponentialAvgFactor: factor });
        variance = runningUpdate(spec) === 'op' ? r.runningVariance
          : emaStep(variance, r.batchVarianceBiased, zero, keep);
        mean = r.runningMean;
      });
      return { mean: mean.data, variance: variance.data };
    }

    const names = ['pytorch', 'tf-fused', 'keras', 'tf-moments-ema', 'pytorch momentum=None (cumulative average)',
      'cumulative average of the biased variance', 'decay with the unbiased variance'];
    for (const name of names) {
      it(`${name}: running statistics within a few float32 ulp after 6 steps`, () => {
        const spec = specOf(name);
        assert.notEqual(runningUpdate(spec), 'host');
        const shape = [6, 5, 4, 3];
        const xs = Array.from({ length: 6 }, (_, i) => ({ data: randn(product(shape), 40 + i, 2 + i, 1 + i / 2), shape }));
        const host = new BatchNormalization({ ...spec, axis: 1 });
        for (const x of xs) host.forward(x, { training: true });
        const want = host.runningStatistics();
        const got = deviceStyle(spec, xs, 1);
        // (1 − f)·run + f·batch and run·keep + batch·(1 − keep) round differently: within an ulp or two.
        assertClose(got.mean, want.mean!, near(2), `${name} running mean`);
        assertClose(got.variance, want.variance!, near(2), `${name} running variance`);
      });
    }

    it('emaStep: keep 1 keeps the running values, keep 0 (or one whose square underflows) is the batch itself', () => {
      const zero = { data: Float32Array.of(0), shape: [1] };
      const run = { data: Float32Array.of(1.5, -2, 3e30), shape: [3] };
      const batch = { data: Float32Array.of(7, 8, -9), shape: [3] };
      assert.deepEqual(Array.from(emaStep(run, batch, zero, 1).data), Array.from(run.data));
      assert.equal(emaStep(run, batch, zero, 0), batch);
      assert.equal(emaStep(run, batch, zero, 1e-170), batch);
      const half = emaStep(run, batch, zero, 0.5).data;
      assert.deepEqual(Array.from(half), Array.from(run.data, (r, i) => Math.fround(0.5 * r + 0.5 * batch.data[i])));
    });

    it('emaStep propagates NaN from the batch, as the host update', () => {
      const run = { data: Float32Array.of(1, 2, 3), shape: [3] };
      const batch = { data: Float32Array.of(NaN, 4, 5), shape: [3] };
      const y = emaStep(run, batch, { data: Float32Array.of(0), shape: [1] }, 0.9);
      assert.ok(Number.isNaN(y.data[0]));
      assertClose(y.data.subarray(1), Float32Array.of(2 * 0.9 + 4 * 0.1, 3 * 0.9 + 5 * 0.1), near(2), 'ema');
    });

    it('addVectors is the float32 sum, bit for bit', () => {
      const a = randn(257, 1, 0, 100);
      const b = randn(257, 2, 0, 1e-3);
      const zero = { data: Float32Array.of(0), shape: [1] };
      const one = { data: Float32Array.of(1), shape: [1] };
      const s = addVectors({ data: a, shape: [257] }, { data: b, shape: [257] }, zero, one);
      assert.deepEqual(Array.from(s.data), Array.from(a, (v, i) => Math.fround(v + b[i])));
    });
  });

  describe('MirroredVector: one copy per side change, only when read', () => {
    it('uploads once, downloads once after a device update, and frees what it replaces', () => {
      const io = fakeIO();
      const v = new MirroredVector(Float32Array.of(0, 1), io);
      assert.equal(v.current, 'host');
      assert.equal(v.read(), v.host);
      assert.equal(io.uploads + io.downloads, 0, 'a host vector is never copied');
      const d = v.device();
      assert.equal(v.device(), d);
      assert.equal(io.uploads, 1);
      assert.equal(v.current, 'both');
      for (let step = 1; step <= 3; step++) v.setDevice(io.make(Float32Array.of(step, -step)));
      assert.equal(v.current, 'device');
      assert.equal(io.downloads, 0, 'device updates download nothing');
      assert.equal(io.disposes, 3, 'each replaced device copy is freed');
      assert.deepEqual(Array.from(v.read()), [3, -3]);
      assert.deepEqual(Array.from(v.read()), [3, -3]);
      assert.equal(io.downloads, 1, 'read twice, downloaded once');
      assert.equal(v.current, 'both');
      v.release();
      assert.equal(io.downloads, 1);
      assert.equal(v.current, 'host');
      assert.equal(io.live.size, 0);
    });

    it('a host write drops the device copy; writing a stale host copy is refused', () => {
      const io = fakeIO();
      const v = new MirroredVector(new Float32Array(2), io);
      v.device();
      v.host[0] = 5;
      v.hostWritten();
      assert.equal(v.current, 'host');
      assert.deepEqual(Array.from((v.device() as Fake).data), [5, 0], 'the next device use uploads the new values');
      v.setDevice(io.make(Float32Array.of(7, 7)));
      assert.throws(() => v.hostWritten(), /stale/);
      v.discard();
      assert.equal(io.downloads, 0, 'discard reads nothing');
      assert.equal(io.live.size, 0);
    });
  });

  describe('UploadCache: gamma and beta uploaded only when they changed', () => {
    it('reuses the copy for equal bits, uploads again after an in-place change', () => {
      const io = fakeIO();
      const c = new UploadCache(io);
      const g = Float32Array.of(1, 2, NaN);
      const d = c.get(g);
      assert.equal(c.get(g), d);
      assert.equal(c.get(Float32Array.of(1, 2, NaN)), d, 'equal values (NaN included) in another array');
      g[1] = 2.5;
      const d2 = c.get(g);
      assert.notEqual(d2, d);
      assert.deepEqual(Array.from((d2 as Fake).data.subarray(0, 2)), [1, 2.5]);
      assert.notEqual(c.get(Float32Array.of(1, 2.5, NaN, 0)), d2, 'another length');
      const z = c.get(Float32Array.of(0, 0, 0));
      assert.notEqual(c.get(Float32Array.of(-0, 0, 0)), z, 'compared bit for bit: -0 is not 0');
      assert.equal(io.uploads, 5);
      c.release();
      assert.equal(io.live.size, 0);
    });
  });

  describe('DeviceSum: dgamma/dbeta summed on the device, downloaded when read', () => {
    it('adds passes on the device with one vector of memory and downloads the sum once', () => {
      const io = fakeIO();
      let adds = 0;
      const s = new DeviceSum(new Float32Array(2), io, (a, b) => {
        adds++;
        return io.make(Float32Array.from(a.data, (v, i) => v + b.data[i]));
      });
      s.push(io.make(Float32Array.of(1, 2)));
      assert.equal(adds, 0, 'the first pass is taken as it is');
      for (let k = 0; k < 4; k++) s.push(io.make(Float32Array.of(10, 20)));
      assert.equal(adds, 4);
      assert.equal(io.live.size, 1, 'one pending vector, however many passes');
      assert.equal(io.downloads, 0);
      assert.deepEqual(Array.from(s.read()), [41, 82]);
      assert.deepEqual(Array.from(s.read()), [41, 82]);
      assert.equal(io.downloads, 1);
      s.host[0] = 0.5; // a caller may scale or clip the live array; later passes add to it
      s.push(io.make(Float32Array.of(1, 1)));
      assert.deepEqual(Array.from(s.read()), [1.5, 83]);
      s.push(io.make(Float32Array.of(1, 1)));
      s.zero();
      assert.deepEqual(Array.from(s.read()), [0, 0]);
      assert.equal(io.live.size, 0);
      s.host[1] = 4;
      s.push(io.make(Float32Array.of(1, 1)));
      s.discard();
      assert.equal(io.downloads, 2);
      assert.deepEqual(Array.from(s.read()), [0, 4], 'discard leaves the host array as it is');
      assert.equal(io.live.size, 0);
    });

    it('a failed add frees the pass and keeps the pending sum', () => {
      const io = fakeIO();
      const s = new DeviceSum(new Float32Array(1), io, () => { throw new Error('out of memory'); });
      s.push(io.make(Float32Array.of(3)));
      assert.throws(() => s.push(io.make(Float32Array.of(4))), /out of memory/);
      assert.equal(io.live.size, 1);
      assert.deepEqual(Array.from(s.read()), [3]);
      assert.equal(io.live.size, 0);
    });
  });

  it('a host layer never touches the device: toHost() after training keeps its state as it was', () => {
    const layer = new BatchNormalization({ convention: 'keras' });
    const x = { data: randn(4 * 3 * 5, 9, 1, 2), shape: [4, 3, 5] };
    layer.forward(x, { training: true });
    layer.backward({ data: randn(60, 10), shape: [4, 3, 5] });
    const before = JSON.stringify(layer.state());
    const grads = Array.from(layer.gradients().gamma!);
    assert.equal(layer.toHost(), layer);
    assert.equal(JSON.stringify(layer.state()), before);
    assert.deepEqual(Array.from(layer.gradients().gamma!), grads);
    assert.equal(layer.isOnDevice, false);
  });
});
