// The synchronized paths of the native training ops, called through the raw binding:
// options.wholeBatch equal to the shard's own statistics (or sums) gives the plain op's
// results bit for bit, other whole-batch values are what the op uses, channelGradSums
// gives the sums batchNormalizationGrad reduces, and every malformed wholeBatch / nccl is
// a TypeError or RangeError naming the key, or a BackendError naming why.
import * as assert from 'node:assert/strict';
import type { BatchNormGradCall, FusedBatchNormCall } from '../binding';
import { BackendError, DeviceTensor } from '../lib/index';
import { native } from '../lib/binding';
import { product, randn, sameBits } from './helpers';

const CASES = [
  { name: 'NHWC', shape: [3, 4, 5, 6], axis: 3 },
  { name: 'NCHW', shape: [3, 6, 4, 5], axis: 1 },
  { name: 'rank 2', shape: [40, 7], axis: 1 },
];

const FUSED_OUTS = ['y', 'batchMean', 'batchVariance', 'batchVarianceBiased', 'runningMean', 'runningVariance', 'savedMean', 'savedInvStd'] as const;

function fusedOptions(shape: number[], axis: number, seed: number, f = 0.1): FusedBatchNormCall & Record<typeof FUSED_OUTS[number], Float32Array> {
  const C = shape[axis];
  const n = product(shape);
  return {
    x: randn(n, seed, 50, 3), shape, axis, scale: randn(C, seed + 1, 1, 0.2), offset: randn(C, seed + 2),
    mean: randn(C, seed + 3), variance: Float32Array.from(randn(C, seed + 4), (v) => 1 + Math.abs(v)),
    epsilon: 1e-3, exponentialAvgFactor: f, isTraining: true, backend: 0,
    y: new Float32Array(n), batchMean: new Float32Array(C), batchVariance: new Float32Array(C),
    batchVarianceBiased: new Float32Array(C), runningMean: new Float32Array(C), runningVariance: new Float32Array(C),
    savedMean: new Float32Array(C), savedInvStd: new Float32Array(C),
  };
}

/** Fresh outputs for a second call with the same inputs. */
function again<T extends object>(o: T, keys: readonly (keyof T & string)[]): T {
  const r = { ...o };
  for (const k of keys) (r as Record<string, unknown>)[k] = new Float32Array((o[k] as Float32Array).length);
  return r;
}

/** The shard's own (count, mean, M2) per channel, from the native moments' float64 outputs. */
function shardStats(o: FusedBatchNormCall) {
  const C = o.shape[o.axis];
  const mean = new Float64Array(C);
  const m2 = new Float64Array(C);
  const axes = o.shape.map((_, i) => i).filter((i) => i !== o.axis);
  native.moments({
    x: o.x, shape: o.shape, axes, correction: 0, backend: 0, mean: new Float32Array(C), variance: new Float32Array(C), mean64: mean, m2,
  });
  return { count: product(o.shape) / C, mean, m2 };
}

function gradOptions(f: ReturnType<typeof fusedOptions>, seed: number): BatchNormGradCall & { dx: Float32Array; dscale: Float32Array; doffset: Float32Array } {
  const n = product(f.shape);
  const C = f.shape[f.axis];
  return {
    dy: randn(n, seed), x: f.x, shape: f.shape, axis: f.axis, scale: f.scale, savedMean: f.savedMean, savedInvStd: f.savedInvStd,
    epsilon: f.epsilon, isTraining: true, backend: 0, dx: new Float32Array(n), dscale: new Float32Array(C), doffset: new Float32Array(C),
  };
}

function shardSums(g: BatchNormGradCall) {
  const C = g.shape[g.axis];
  const sumDy = new Float64Array(C);
  const sumDyXmu = new Float64Array(C);
  assert.equal(native.channelGradSums({
    dy: g.dy as Float32Array, x: g.x as Float32Array, shape: g.shape, axis: g.axis, savedMean: g.savedMean as Float32Array,
    backend: -1, sumDy, sumDyXmu,
  }), 'cpu');
  return { sumDy, sumDyXmu };
}

describe('synchronized training ops through the raw binding (CPU)', () => {
  for (const c of CASES) {
    describe(`${c.name} ${JSON.stringify(c.shape)} axis ${c.axis}`, () => {
      it('fusedBatchNorm: wholeBatch = the shard\'s own statistics gives the plain op bit for bit (sync and async)', async () => {
        for (const f of [1, 0.1]) {
          const plain = fusedOptions(c.shape, c.axis, 11, f);
          native.fusedBatchNorm(plain);
          const wholeBatch = shardStats(plain);
          const synced = again(plain, FUSED_OUTS);
          native.fusedBatchNorm({ ...synced, wholeBatch });
          const viaAsync = again(plain, FUSED_OUTS);
          assert.equal(await native.fusedBatchNormAsync({ ...viaAsync, wholeBatch }), 'cpu');
          for (const k of FUSED_OUTS) {
            sameBits(synced[k], plain[k], `factor ${f} ${k}`);
            sameBits(viaAsync[k], plain[k], `factor ${f} ${k} (async)`);
          }
        }
      });

      it('fusedBatchNorm: the whole batch\'s statistics are what normalizes y and updates the running statistics', () => {
        const o = fusedOptions(c.shape, c.axis, 21);
        const C = c.shape[c.axis];
        const count = 1000;
        const wholeBatch = { count, mean: Float64Array.from({ length: C }, (_, i) => 49 + i / 7), m2: Float64Array.from({ length: C }, (_, i) => count * (2 + i)) };
        native.fusedBatchNorm({ ...o, wholeBatch });
        // The same float32 statistics through the inference path normalize identically.
        const inf = again(fusedOptions(c.shape, c.axis, 21), FUSED_OUTS);
        inf.isTraining = false;
        inf.mean = Float32Array.from(wholeBatch.mean);
        inf.variance = Float32Array.from(wholeBatch.m2, (v) => v / count);
        native.fusedBatchNorm(inf);
        sameBits(o.y, inf.y, 'y');
        sameBits(o.batchMean, Float32Array.from(wholeBatch.mean), 'batchMean');
        sameBits(o.batchVarianceBiased, Float32Array.from(wholeBatch.m2, (v) => v / count), 'batchVarianceBiased');
        sameBits(o.batchVariance, Float32Array.from(wholeBatch.m2, (v) => v / (count - 1)), 'batchVariance (Bessel over the whole batch)');
        const run = o.mean as Float32Array;
        sameBits(o.runningMean, Float32Array.from(o.batchMean, (m, i) => (1 - 0.1) * run[i] + 0.1 * m), 'runningMean');
      });

      it('batchNormalizationGrad: wholeBatch = the shard\'s own sums gives the plain op bit for bit (sync and async)', async () => {
        const f = fusedOptions(c.shape, c.axis, 31);
        native.fusedBatchNorm(f);
        const plain = gradOptions(f, 32);
        native.batchNormalizationGrad(plain);
        const s = shardSums(plain);
        const wholeBatch = { count: product(c.shape) / c.shape[c.axis], sumDy: s.sumDy, sumDyXmu: s.sumDyXmu, shardSumDy: s.sumDy, shardSumDyXmu: s.sumDyXmu };
        const keys = ['dx', 'dscale', 'doffset'] as const;
        const synced = again(plain, keys);
        native.batchNormalizationGrad({ ...synced, wholeBatch });
        const viaAsync = again(plain, keys);
        await native.batchNormalizationGradAsync({ ...viaAsync, wholeBatch });
        for (const k of keys) {
          sameBits(synced[k], plain[k], k);
          sameBits(viaAsync[k], plain[k], `${k} (async)`);
        }
        // channelGradSums are the sums the plain op reduced: doffset = Σdy, dscale = invStd·Σdy(x − μ).
        sameBits(plain.doffset, Float32Array.from(s.sumDy), 'doffset = float32(sumDy)');
        const inv = plain.savedInvStd as Float32Array;
        sameBits(plain.dscale, Float32Array.from(s.sumDyXmu, (v, i) => inv[i] * v), 'dscale = float32(invStd·sumDyXmu)');
      });

      it('batchNormalizationGrad: dx comes from the whole batch\'s sums, dscale/doffset from the shard\'s', () => {
        const f = fusedOptions(c.shape, c.axis, 41);
        native.fusedBatchNorm(f);
        const plain = gradOptions(f, 42);
        native.batchNormalizationGrad(plain);
        const s = shardSums(plain);
        const C = c.shape[c.axis];
        const n = product(c.shape) / C;
        // Twice the sums over twice the count: the same per-element terms (exact in binary).
        const twice = (a: Float64Array) => a.map((v) => 2 * v);
        const o = again(plain, ['dx', 'dscale', 'doffset']);
        native.batchNormalizationGrad({ ...o, wholeBatch: { count: 2 * n, sumDy: twice(s.sumDy), sumDyXmu: twice(s.sumDyXmu), shardSumDy: new Float64Array(C).fill(3), shardSumDyXmu: new Float64Array(C).fill(-2) } });
        sameBits(o.dx, plain.dx, 'dx');
        assert.deepEqual(Array.from(o.doffset), new Array(C).fill(3));
        const inv = plain.savedInvStd as Float32Array;
        sameBits(o.dscale, Float32Array.from(inv, (v) => -2 * v), 'dscale = invStd·shardSumDyXmu');
        // A different whole batch changes dx.
        const other = again(plain, ['dx', 'dscale', 'doffset']);
        native.batchNormalizationGrad({ ...other, wholeBatch: { count: n, sumDy: twice(s.sumDy), sumDyXmu: s.sumDyXmu, shardSumDy: s.sumDy, shardSumDyXmu: s.sumDyXmu } });
        assert.ok(other.dx.some((v, i) => v !== plain.dx[i]), 'dx depends on wholeBatch.sumDy');
      });
    });
  }

  it('an empty shard: the whole batch\'s statistics still fill every per-channel output', () => {
    const o = fusedOptions([0, 3], 1, 51, 1);
    native.fusedBatchNorm({ ...o, wholeBatch: { count: 4, mean: Float64Array.of(1, 2, 3), m2: Float64Array.of(4, 8, 12) } });
    assert.deepEqual(Array.from(o.batchMean), [1, 2, 3]);
    assert.deepEqual(Array.from(o.batchVarianceBiased), [1, 2, 3]);
    const g = gradOptions(o, 52);
    native.batchNormalizationGrad({ ...g, wholeBatch: { count: 4, sumDy: Float64Array.of(1, 1, 1), sumDyXmu: Float64Array.of(1, 1, 1), shardSumDy: new Float64Array(3), shardSumDyXmu: new Float64Array(3) } });
    assert.deepEqual(Array.from(g.doffset), [0, 0, 0]);
  });

  describe('malformed wholeBatch / nccl: errors naming the key', () => {
    const shape = [4, 3];
    const fused = () => fusedOptions(shape, 1, 61, 1);
    const stats = () => ({ count: 8, mean: new Float64Array(3), m2: new Float64Array(3).fill(1) });
    const grad = () => gradOptions(fused(), 62);
    const sums = () => ({ count: 8, sumDy: new Float64Array(3), sumDyXmu: new Float64Array(3), shardSumDy: new Float64Array(3), shardSumDyXmu: new Float64Array(3) });

    it('fusedBatchNorm', () => {
      const cases: [string, unknown, RegExp, ErrorConstructor, Partial<FusedBatchNormCall>?][] = [
        ['not an object', 5, /^fusedBatchNorm: options\.wholeBatch must be an object of float64 per-channel sums or null$/, TypeError],
        ['an array', [1, 2], /options\.wholeBatch must be an object/, TypeError],
        ['count missing', { ...stats(), count: undefined }, /^fusedBatchNorm: options\.wholeBatch\.count must be a number$/, TypeError],
        ['count negative', { ...stats(), count: -1 }, /^fusedBatchNorm: options\.wholeBatch\.count must be an integer >= 0$/, RangeError],
        ['count fractional', { ...stats(), count: 2.5 }, /options\.wholeBatch\.count must be an integer >= 0/, RangeError],
        ['mean a Float32Array', { ...stats(), mean: new Float32Array(3) }, /^fusedBatchNorm: options\.wholeBatch\.mean must be a Float64Array$/, TypeError],
        ['m2 missing', { ...stats(), m2: undefined }, /^fusedBatchNorm: options\.wholeBatch\.m2 must be a Float64Array$/, TypeError],
        ['mean too short', { ...stats(), mean: new Float64Array(2) }, /^fusedBatchNorm: options\.wholeBatch\.mean must have 3 elements$/, RangeError],
        ['m2 too long', { ...stats(), m2: new Float64Array(4) }, /^fusedBatchNorm: options\.wholeBatch\.m2 must have 3 elements$/, RangeError],
        ['inference', stats(), /^fusedBatchNorm: options\.wholeBatch is for training only \(options\.isTraining is false\)$/, RangeError, { isTraining: false }],
      ];
      for (const [what, wholeBatch, re, cls, extra] of cases) {
        const o = { ...fused(), ...extra, wholeBatch } as FusedBatchNormCall;
        assert.throws(() => native.fusedBatchNorm(o), (e: Error) => e instanceof cls && re.test(e.message), what);
      }
      // null and undefined are "absent".
      for (const wholeBatch of [null, undefined]) assert.equal(native.fusedBatchNorm({ ...fused(), wholeBatch }), 'cpu');
    });

    it('batchNormalizationGrad', () => {
      const cases: [string, unknown, RegExp, ErrorConstructor, Partial<BatchNormGradCall>?][] = [
        ['count a string', { ...sums(), count: '8' }, /^batchNormalizationGrad: options\.wholeBatch\.count must be a number$/, TypeError],
        ['sumDy plain array', { ...sums(), sumDy: [0, 0, 0] }, /^batchNormalizationGrad: options\.wholeBatch\.sumDy must be a Float64Array$/, TypeError],
        ['sumDyXmu short', { ...sums(), sumDyXmu: new Float64Array(1) }, /options\.wholeBatch\.sumDyXmu must have 3 elements/, RangeError],
        ['shardSumDy missing', { ...sums(), shardSumDy: null }, /options\.wholeBatch\.shardSumDy must be a Float64Array/, TypeError],
        ['shardSumDyXmu long', { ...sums(), shardSumDyXmu: new Float64Array(6) }, /options\.wholeBatch\.shardSumDyXmu must have 3 elements/, RangeError],
        ['frozen statistics', sums(), /^batchNormalizationGrad: options\.wholeBatch is for training only/, RangeError, { isTraining: false }],
      ];
      for (const [what, wholeBatch, re, cls, extra] of cases) {
        const o = { ...grad(), ...extra, wholeBatch } as BatchNormGradCall;
        assert.throws(() => native.batchNormalizationGrad(o), (e: Error) => e instanceof cls && re.test(e.message), what);
      }
    });

    it('nccl: not a communicator handle (a DeviceTensor handle, an object), or given with wholeBatch', () => {
      const dev = DeviceTensor.upload({ data: new Float32Array(0), shape: [0] });
      try {
        for (const nccl of [dev.handle('test'), {}, 1]) {
          assert.throws(() => native.fusedBatchNorm({ ...fused(), nccl: nccl as never }),
            { name: 'TypeError', message: 'fusedBatchNorm: options.nccl must be a communicator handle' });
          assert.throws(() => native.batchNormalizationGrad({ ...grad(), nccl: nccl as never }),
            { name: 'TypeError', message: 'batchNormalizationGrad: options.nccl must be a communicator handle' });
        }
        assert.throws(() => native.fusedBatchNorm({ ...fused(), wholeBatch: stats(), nccl: dev.handle('test') as never }),
          { name: 'TypeError', message: /^fusedBatchNorm: options\.wholeBatch and options\.nccl exclude each other/ });
      } finally {
        dev.dispose();
      }
    });

    it('wholeBatch with DeviceTensor data is a TypeError (device data exchanges through nccl)', () => {
      // DeviceTensors of 0 elements exist without a GPU: x of shape [0, 0] has 0 channels.
      const e = DeviceTensor.upload({ data: new Float32Array(0), shape: [0] });
      try {
        const h = e.handle('test');
        const o = {
          x: h, shape: [0, 0], axis: 1, scale: null, offset: null, mean: null, variance: null, epsilon: 1e-3, exponentialAvgFactor: 1,
          isTraining: true, backend: -1 as const, y: h, batchMean: h, batchVariance: h, batchVarianceBiased: h,
          runningMean: h, runningVariance: h, savedMean: h, savedInvStd: h,
        };
        assert.throws(() => native.fusedBatchNorm({ ...o, wholeBatch: { count: 0, mean: new Float64Array(0), m2: new Float64Array(0) } }),
          { name: 'TypeError', message: /^fusedBatchNorm: options\.wholeBatch takes host data; with DeviceTensor inputs the ranks exchange the statistics through options\.nccl$/ });
      } finally {
        e.dispose();
      }
    });

    it('backend \'cudnn\' cannot run a synchronized call: ERR_UNSUPPORTED naming why, GPU or not', () => {
      const check = (e: unknown) => e instanceof BackendError && e.code === 'ERR_UNSUPPORTED' &&
        /backend 'cudnn' cannot run this call: cuDNN computes the shard's own statistics; synchronized batch norm/.test(e.message);
      assert.throws(() => native.fusedBatchNorm({ ...fused(), backend: 2, wholeBatch: stats() }), check);
      assert.throws(() => native.batchNormalizationGrad({ ...grad(), backend: 2, wholeBatch: sums() }), check);
    });

    it('channelGradSums: named options, host data only, CPU only', () => {
      const g = grad();
      const base = { dy: g.dy as Float32Array, x: g.x as Float32Array, shape, axis: 1, savedMean: g.savedMean as Float32Array, backend: 0 as const, sumDy: new Float64Array(3), sumDyXmu: new Float64Array(3) };
      assert.throws(() => (native.channelGradSums as unknown as (...a: unknown[]) => unknown)(base.dy, base.x, 4, 3, 1), /channelGradSums: expected one options object/);
      assert.throws(() => native.channelGradSums({ ...base, sumDy: new Float64Array(2) }), { name: 'RangeError', message: 'channelGradSums: options.sumDy must have 3 elements' });
      assert.throws(() => native.channelGradSums({ ...base, sumDyXmu: new Float32Array(3) as never }), { name: 'TypeError', message: 'channelGradSums: options.sumDyXmu must be a Float64Array' });
      assert.throws(() => native.channelGradSums({ ...base, savedMean: new Float32Array(2) }), { name: 'RangeError', message: /options\.savedMean has 2 elements but needs 3/ });
      assert.throws(() => native.channelGradSums({ ...base, backend: 1 }), (e: unknown) => e instanceof BackendError && /^channelGradSums: backend 'cuda'/.test(e.message));
      assert.equal(native.channelGradSums(base), 'cpu');
    });
  });
});
