// DeviceTensor and the CUDA dispatch. Without a GPU: the errors, the lifecycle of
// zero-element tensors (which own no device memory), memoryInfo/emptyCache and the
// 'auto' reasons. With one (scripts/gpu-check.sh): upload -> op -> download against the
// CPU backend and the float64 reference, the 1e4 + N(0,1) case, bit-identical repeats,
// the caching allocator, async variants.
import * as assert from 'node:assert/strict';
import {
  BackendError, DeviceTensor, backends, batchNormalization, batchNormalizationAsync, deviceTimeOp, emptyCache, explain,
  memoryInfo, moments, momentsAsync, tensor,
} from '../lib/index';
import {
  assertClose, bnTol, momentsTol, product, randn, refBatchNorm, refMoments, sameBits,
} from './helpers';

const cuda = backends().find((b) => b.name === 'cuda')!;

describe('DeviceTensor and CUDA dispatch (any machine)', () => {
  it("'auto' with Float32Array inputs runs on the CPU and says why", () => {
    const e = explain('moments');
    assert.equal(e.backend, 'cpu');
    assert.match(e.reason, /^auto: 'cpu' \(inputs are host Float32Arrays: memory-bound ops gain nothing from a PCIe round trip; cuda: /);
    assert.match(e.reason, /cudnn: /);
  });

  it("'auto' with DeviceTensor inputs picks cuda, or says why it cannot", () => {
    if (cuda.available) {
      const e = explain('batchNormalization', { onDevice: true });
      assert.equal(e.backend, 'cuda');
      assert.match(e.reason, /^auto: 'cuda' \(inputs are DeviceTensors/);
    } else {
      assert.throws(() => explain('moments', { onDevice: true }), (e: unknown) =>
        e instanceof BackendError && e.code === 'ERR_BACKEND_UNAVAILABLE' && e.message.includes(cuda.reason!));
    }
  });

  it("explicit backend 'cpu' refuses DeviceTensor inputs", function () {
    if (!cuda.available) this.skip();
    assert.throws(() => explain('moments', { backend: 'cpu', onDevice: true }), (e: unknown) =>
      e instanceof BackendError && e.code === 'ERR_UNSUPPORTED' && /cannot read DeviceTensor/.test(e.message));
  });

  it('cudnn is available or says why (the loader\'s reason; test/cudnn.test.ts has the rest)', function () {
    if (!cuda.available) this.skip();
    const c = backends().find((b) => b.name === 'cudnn')!;
    if (!c.available) assert.match(c.reason!, /libcudnn|symbol|too old/);
  });

  it('without CUDA: upload and backend cuda fail with ERR_BACKEND_UNAVAILABLE and the reason', function () {
    if (cuda.available) this.skip();
    assert.throws(() => DeviceTensor.upload(tensor([1, 2, 3])), (e: unknown) =>
      e instanceof BackendError && e.code === 'ERR_BACKEND_UNAVAILABLE' &&
      e.message.startsWith('DeviceTensor.upload:') && e.message.includes(cuda.reason!));
    assert.throws(() => DeviceTensor.empty([4]), (e: unknown) =>
      e instanceof BackendError && e.code === 'ERR_BACKEND_UNAVAILABLE');
    assert.throws(() => moments(tensor([1, 2, 3]), [0], { backend: 'cuda' }), (e: unknown) =>
      e instanceof BackendError && e.code === 'ERR_BACKEND_UNAVAILABLE' && e.message.includes(cuda.reason!));
    assert.throws(() => batchNormalization(tensor([1, 2]), 0, 1, null, null, 1e-3, { backend: 'cuda' }), (e: unknown) =>
      e instanceof BackendError && e.code === 'ERR_BACKEND_UNAVAILABLE' && e.message.includes(cuda.reason!));
  });

  it('without CUDA: the async variants reject with the same BackendError', async function () {
    if (cuda.available) this.skip();
    await assert.rejects(momentsAsync(tensor([1, 2, 3]), [0], { backend: 'cuda' }), (e: unknown) =>
      e instanceof BackendError && e.code === 'ERR_BACKEND_UNAVAILABLE');
  });

  it('a zero-element DeviceTensor owns no device memory and works on any machine', () => {
    const d = DeviceTensor.upload(tensor([], [0, 3]));
    assert.deepEqual(d.shape, [0, 3]);
    assert.equal(d.length, 0);
    assert.equal(d.disposed, false);
    assert.deepEqual(d.download(), new Float32Array(0));
    assert.deepEqual(d.toTensor(), { data: new Float32Array(0), shape: [0, 3] });
  });

  it('dispose twice is fine; any use after dispose is a TypeError that says so', async () => {
    const d = DeviceTensor.upload(new Float32Array(0));
    d.dispose();
    d.dispose();
    assert.equal(d.disposed, true);
    assert.throws(() => d.download(), { name: 'TypeError', message: 'DeviceTensor.download: this tensor is a disposed DeviceTensor' });
    await assert.rejects(d.downloadAsync(), { name: 'TypeError', message: /downloadAsync: this tensor is a disposed DeviceTensor/ });
    assert.throws(() => moments(d, [0]), { name: 'TypeError', message: 'moments: x is a disposed DeviceTensor' });
    assert.throws(() => batchNormalization(d, 0, 1, null, null, 1e-3), { name: 'TypeError', message: /x is a disposed DeviceTensor/ });
  });

  it('a DeviceTensor parameter with a host x is a TypeError', () => {
    const d = DeviceTensor.upload(new Float32Array(0));
    assert.throws(() => batchNormalization(tensor([1, 2]), d as never, 1, null, null, 1e-3), {
      name: 'TypeError', message: /mean is a DeviceTensor but x is not/,
    });
  });

  it('download checks its out argument', () => {
    const d = DeviceTensor.upload(new Float32Array(0));
    assert.throws(() => d.download(new Float32Array(2)), RangeError);
    assert.throws(() => d.download([] as never), TypeError);
  });

  it('memoryInfo returns numbers (zeros before any device allocation) and emptyCache is safe', () => {
    const m = memoryInfo();
    for (const k of ['allocatedBytes', 'cachedBytes', 'reservedBytes', 'peakAllocatedBytes', 'cudaMallocCalls', 'cacheHits'] as const) {
      assert.equal(typeof m[k], 'number', k);
      assert.ok(m[k] >= 0, k);
    }
    if (!cuda.available) assert.equal(m.reservedBytes, 0);
    emptyCache();
  });

  it('deviceTimeOp names the bad key of its spec before touching the GPU', () => {
    const cases: [Parameters<typeof deviceTimeOp>, RegExp][] = [
      [['moments', { shape: [2, 'a'], axes: [0] }], /^deviceTimeOp: spec\.shape\[1\] must be a non-negative integer/],
      [['moments', { shape: [2, 2], axes: [0, 0] }], /^deviceTimeOp: spec\.axes\[1\] must be a distinct axis in \[0, 2\)/],
      [['batchNormalization', { outShape: [4], xShape: [3] }], /^deviceTimeOp: spec\.xShape does not broadcast to the output shape/],
      [['moments', { shape: [2, 2], axes: [0], x: new Float32Array(4) }], /^deviceTimeOp: spec\.x must be a live DeviceTensor handle/],
    ];
    for (const [args, re] of cases) assert.throws(() => deviceTimeOp(...args), { message: re });
  });

  it('info reports the device or the reason', () => {
    // backends() carries the reason; the CUDA details are in info().cuda (see backends.test).
    if (!cuda.available) assert.ok(cuda.reason && cuda.reason.length > 10);
  });
});

describe(cuda.available ? 'DeviceTensor on the GPU' : `DeviceTensor on the GPU — skipped: ${cuda.reason}`, function () {
  before(function () {
    if (!cuda.available) {
      if (process.env.BATCHNORM_REQUIRE_GPU === '1') throw new Error(`cuda unavailable: ${cuda.reason}`);
      this.skip();
    }
  });

  const cases: [number[], number[]][] = [
    [[8, 6, 5, 16], [0, 1, 2]], // NHWC, columns (float4)
    [[4, 7, 9, 3], [0, 1, 2]], // columns, scalar loads
    [[6, 16, 7, 5], [0, 2, 3]], // NCHW segment
    [[3, 10, 64], [0, 2]], // NCHW segment, float4
    [[2000, 12], [1]], // short rows (warp per row), scalar
    [[1500, 64], [1]], // short rows, float4
    [[3, 50000], [1]], // long rows, split
    [[300001], [0]], // everything, two-stage
    [[5, 4, 3, 6, 2], [0, 2, 4]], // general fallback
    [[4, 1, 3], [1]], // reduced extent 1
    [[3, 0, 2], [1]], // empty reduction: NaN
    [[70, 3, 40], [0]], // [R C] after collapse
    [[6, 300, 20], [1]], // [K0 R C] columns
  ];

  it('moments: upload -> op -> download matches the float64 reference and the CPU backend', () => {
    cases.forEach(([shape, axes], k) => {
      const x = randn(product(shape), 500 + k, 3, 2);
      const d = DeviceTensor.upload(tensor(x, shape));
      const g = moments(d, axes);
      const ref = refMoments(x, shape, axes);
      const tol = momentsTol(ref.mean, ref.variance);
      const gm = g.mean.download();
      const gv = g.variance.download();
      assertClose(gm, ref.mean, tol.mean, `mean ${JSON.stringify(shape)} axes ${axes}`);
      assertClose(gv, ref.variance, tol.variance, `variance ${JSON.stringify(shape)} axes ${axes}`);
      const c = moments(tensor(x, shape), axes, { backend: 'cpu' });
      assert.deepEqual(g.mean.shape, c.mean.shape);
      assertClose(gm, c.mean.data, tol.mean, 'mean vs cpu');
      d.dispose();
      g.mean.dispose();
      g.variance.dispose();
    });
  });

  it('moments: 1e4 + N(0,1) over 8M elements keeps relative error <= 1e-6', () => {
    const shape = [1 << 23];
    const x = randn(shape[0], 77, 1e4, 1);
    const d = DeviceTensor.upload(tensor(x, shape));
    const g = moments(d, [0]);
    const ref = refMoments(x, shape, [0]);
    const tol = momentsTol(ref.mean, ref.variance);
    assertClose(g.mean.download(), ref.mean, tol.mean, 'mean');
    assertClose(g.variance.download(), ref.variance, tol.variance, 'variance');
    const shape2 = [64, 8, 128, 128];
    const x2 = randn(product(shape2), 78, 1e4, 1);
    const d2 = DeviceTensor.upload(tensor(x2, shape2));
    const g2 = moments(d2, [0, 2, 3]);
    const r2 = refMoments(x2, shape2, [0, 2, 3]);
    const t2 = momentsTol(r2.mean, r2.variance);
    assertClose(g2.variance.download(), r2.variance, t2.variance, 'NCHW variance');
    [d, d2, g.mean, g.variance, g2.mean, g2.variance].forEach((t) => t.dispose());
  });

  it('moments: correction, keepDims, NaN/Inf', () => {
    const x = new Float32Array([1, 2, 3, 4, NaN, 6, Infinity, 8, 9, 10, 11, 12]);
    const d = DeviceTensor.upload(tensor(x, [3, 4]));
    const g = moments(d, [1], { keepDims: true, correction: 1 });
    assert.deepEqual(g.mean.shape, [3, 1]);
    const c = moments(tensor(x, [3, 4]), [1], { keepDims: true, correction: 1, backend: 'cpu' });
    assertClose(g.mean.download(), c.mean.data, () => 1e-6, 'mean');
    assertClose(g.variance.download(), c.variance.data, () => 1e-5, 'variance');
  });

  it('batchNormalization: DeviceTensor in, DeviceTensor out, bit-identical to the CPU backend', () => {
    const shapes: [number[], number[]][] = [
      [[8, 6, 5, 16], [16]], // NHWC per-channel
      [[4, 16, 7, 5], [1, 16, 1, 1]], // NCHW per-channel
      [[3, 5, 7], []], // per-tensor
      [[3, 5, 7], [3, 5, 7]], // elementwise parameters
      [[6, 4, 5], [6, 1, 5]], // two varying dims: general table path
      [[1001], [1001]], // tail
    ];
    shapes.forEach(([xs, ps], k) => {
      const x = randn(product(xs), 900 + k, 2, 3);
      const mean = tensor(randn(product(ps), 1, 2, 1), ps);
      const variance = tensor(randn(product(ps), 2, 0, 1).map((v) => v * v + 0.5), ps);
      const offset = tensor(randn(product(ps), 3), ps);
      const scale = tensor(randn(product(ps), 4), ps);
      const dx = DeviceTensor.upload(tensor(x, xs));
      const dm = DeviceTensor.upload(mean);
      const y = batchNormalization(dx, dm, variance, offset, scale, 1e-3);
      assert.ok(y instanceof DeviceTensor);
      const got = y.download();
      const cpu = batchNormalization(tensor(x, xs), mean, variance, offset, scale, 1e-3, { backend: 'cpu' });
      sameBits(got, cpu.data, `${JSON.stringify(xs)} / ${JSON.stringify(ps)}`);
      const ref = refBatchNorm(tensor(x, xs), mean, variance, offset, scale, 1e-3);
      assertClose(got, ref.data, bnTol, 'vs float64');
      [dx, dm, y].forEach((t) => t.dispose());
    });
  });

  it('training step on the GPU: moments -> batchNormalization, repeat runs bit-identical', () => {
    const shape = [16, 32, 24, 24];
    const x = DeviceTensor.upload(tensor(randn(product(shape), 5, 1e4, 1), shape));
    const run = () => {
      const m = moments(x, [0, 2, 3], { keepDims: true });
      const y = batchNormalization(x, m.mean, m.variance, 0, 1, 1e-5);
      const out = [m.mean.download(), m.variance.download(), y.download()];
      [m.mean, m.variance, y].forEach((t) => t.dispose());
      return out;
    };
    const a = run();
    const b = run();
    a.forEach((v, i) => sameBits(v, b[i], `output ${i}`));
    x.dispose();
  });

  it('Float32Array inputs with backend cuda copy in and out (and in place)', () => {
    const shape = [64, 100];
    const x = randn(product(shape), 9);
    const g = moments(tensor(x, shape), [0], { backend: 'cuda' });
    const c = moments(tensor(x, shape), [0], { backend: 'cpu' });
    const ref = refMoments(x, shape, [0]);
    const tol = momentsTol(ref.mean, ref.variance);
    assertClose(g.variance.data, c.variance.data, tol.variance, 'variance');
    const big = randn(3 << 20, 10); // > one 4 MiB staging chunk
    const y = batchNormalization(tensor(big), 0.5, 2, 1, 3, 1e-3, { backend: 'cuda' });
    sameBits(y.data, batchNormalization(tensor(big), 0.5, 2, 1, 3, 1e-3, { backend: 'cpu' }).data, 'copy path');
    const inPlace = big.slice();
    batchNormalization(tensor(inPlace), 0.5, 2, 1, 3, 1e-3, { backend: 'cuda', out: inPlace });
    sameBits(inPlace, y.data, 'in place');
  });

  it('async variants resolve after the GPU has finished', async () => {
    const shape = [32, 8, 16, 16];
    const x = randn(product(shape), 12);
    const d = DeviceTensor.upload(tensor(x, shape));
    const m = await momentsAsync(d, [0, 2, 3], { keepDims: true });
    const y = await batchNormalizationAsync(d, m.mean, m.variance, null, null, 1e-3);
    const host = await y.downloadAsync();
    const c = batchNormalization(tensor(x, shape), m.mean.toTensor(), m.variance.toTensor(), null, null, 1e-3, { backend: 'cpu' });
    sameBits(host, c.data, 'async');
    [d, m.mean, m.variance, y].forEach((t) => t.dispose());
  });

  it('memoryInfo returns to its starting value after dispose() and after finalizers run', async () => {
    const gc = (global as { gc?: () => void }).gc;
    const start = memoryInfo().allocatedBytes;
    const a = DeviceTensor.upload(tensor(randn(1 << 16, 1), [1 << 16]));
    const m = moments(a, [0]);
    assert.ok(memoryInfo().allocatedBytes > start);
    [a, m.mean, m.variance].forEach((t) => t.dispose());
    assert.equal(memoryInfo().allocatedBytes, start, 'after dispose');
    if (gc) {
      (() => { for (let i = 0; i < 8; i++) DeviceTensor.upload(tensor(randn(1 << 14, i), [1 << 14])); })(); // never disposed
      for (let k = 0; k < 20 && memoryInfo().allocatedBytes !== start; k++) {
        gc();
        await new Promise((r) => setTimeout(r, 10)); // finalizers run after GC, on the event loop
      }
      assert.equal(memoryInfo().allocatedBytes, start, 'after the finalizers of forgotten tensors');
    }
  });

  it('out of memory is ERR_CUDA_OUT_OF_MEMORY, leaves nothing allocated, and the next call works', () => {
    const start = memoryInfo().allocatedBytes;
    assert.throws(() => DeviceTensor.empty([2 ** 40]), (e: unknown) => e instanceof BackendError && e.code === 'ERR_CUDA_OUT_OF_MEMORY');
    assert.equal(memoryInfo().allocatedBytes, start);
    const x = DeviceTensor.upload(tensor([1, 2, 3, 4], [4]));
    const m = moments(x, [0]);
    assert.equal(m.mean.download()[0], 2.5);
    [x, m.mean, m.variance].forEach((t) => t.dispose());
  });

  it('the caching allocator reuses freed blocks: no cudaMalloc in a steady loop', () => {
    const shape = [64, 1000];
    const x = DeviceTensor.upload(tensor(randn(product(shape), 13), shape));
    const step = () => {
      const m = moments(x, [0]);
      const y = batchNormalization(x, m.mean, m.variance, null, null, 1e-3);
      [m.mean, m.variance, y].forEach((t) => t.dispose());
    };
    step();
    const before = memoryInfo().cudaMallocCalls;
    for (let i = 0; i < 20; i++) step();
    assert.equal(memoryInfo().cudaMallocCalls, before);
    x.dispose();
    const m = memoryInfo();
    assert.ok(m.cachedBytes > 0);
    emptyCache();
    assert.equal(memoryInfo().cachedBytes, 0);
  });
});
