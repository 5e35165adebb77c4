// Synchronized batch norm: worker-thread shards of uneven size (one of them empty) give the
// statistics, outputs and gradients of one process on the whole batch, in both layouts;
// failures and timeouts reject every rank; bad communicators are TypeErrors.
import * as assert from 'node:assert/strict';
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import {
  BackendError, BatchNormalization, CollectiveError, DeviceTensor, abortThreadGroup, batchNormalizationGrad, batchNormalizationGradAsync,
  createThreadGroup, fusedBatchNorm, fusedBatchNormAsync, moments, momentsAsync, threadCommunicator,
  type Communicator, type ThreadGroupHandle,
} from '../lib/index';
import { assertClose, randn, sameBits } from './helpers';

const LIB = path.join(__dirname, '..', 'lib', 'index.js');

type Layout = 'NHWC' | 'NCHW';
const C = 5;
const SPATIAL = [3, 4];
const sampleShape = (layout: Layout) => (layout === 'NHWC' ? [...SPATIAL, C] : [C, ...SPATIAL]);
const PER_SAMPLE = C * SPATIAL[0] * SPATIAL[1];

interface RankResult {
  rank: number;
  mean?: Float32Array; variance?: Float32Array;
  y?: Float32Array; batchMean?: Float32Array; batchVariance?: Float32Array; batchVarianceBiased?: Float32Array;
  runningMean?: Float32Array; runningVariance?: Float32Array; savedMean?: Float32Array; savedInvStd?: Float32Array;
  dx?: Float32Array; dscale?: Float32Array; doffset?: Float32Array;
  error?: { name: string; message: string; code?: string };
}

// Each worker is one rank: moments, the fused training forward and its backward on its shard.
const rankScript = `
const { parentPort, workerData: w } = require('node:worker_threads');
const bn = require(${JSON.stringify(LIB)});
(async () => {
  const comm = bn.threadCommunicator(w.handle, w.rank);
  const shape = [w.batch, ...w.sample];
  const x = { data: w.x, shape };
  const dy = { data: w.dy, shape };
  const axes = w.layout === 'NHWC' ? [0, 1, 2] : [0, 2, 3];
  const out = { rank: w.rank };
  try {
    if (w.failBeforeCollective) await bn.momentsAsync(x, [7], { sync: comm });
    const m = await bn.momentsAsync(x, axes, { sync: comm, correction: 1 });
    out.mean = m.mean.data; out.variance = m.variance.data;
    const opts = { dataFormat: w.layout, epsilon: 1e-3, exponentialAvgFactor: 0.1, mean: w.runMean, variance: w.runVar, sync: comm };
    const r = await bn.fusedBatchNormAsync(x, w.scale, w.offset, opts);
    for (const k of ['y', 'batchMean', 'batchVariance', 'batchVarianceBiased', 'runningMean', 'runningVariance', 'savedMean', 'savedInvStd']) out[k] = r[k].data;
    const g = await bn.fusedBatchNormGradAsync(dy, x, w.scale, { mean: r.savedMean, invStd: r.savedInvStd }, { dataFormat: w.layout, sync: comm });
    out.dx = g.dx.data; out.dscale = g.dscale.data; out.doffset = g.doffset.data;
  } catch (e) {
    out.error = { name: e.name, message: e.message, code: e.code };
  }
  parentPort.postMessage(out);
})();
`;

function runWorker(script: string, workerData: object): Promise<RankResult> {
  return new Promise((resolve, reject) => {
    const w = new Worker(script, { eval: true, workerData });
    w.once('message', resolve);
    w.once('error', reject);
    w.once('exit', (code) => { if (code !== 0) reject(new Error(`worker exited with ${code}`)); });
  });
}

interface Problem {
  layout: Layout;
  batches: number[];
  x: Float32Array;
  dy: Float32Array;
  scale: Float32Array;
  offset: Float32Array;
  runMean: Float32Array;
  runVar: Float32Array;
}

function problem(layout: Layout, batches: number[], seed: number): Problem {
  const total = batches.reduce((a, b) => a + b, 0) * PER_SAMPLE;
  return {
    layout, batches,
    // An offset mean (1e3 + N(0, 2)) tells exact merging apart from E[x²] − E[x]².
    x: randn(total, seed, 1e3, 2), dy: randn(total, seed + 1),
    scale: randn(C, seed + 2, 1, 0.2), offset: randn(C, seed + 3),
    runMean: randn(C, seed + 4), runVar: Float32Array.from(randn(C, seed + 5), (v) => 1 + Math.abs(v)),
  };
}

async function runShards(pb: Problem, extra: (rank: number) => object = () => ({})): Promise<RankResult[]> {
  const handle = createThreadGroup(pb.batches.length, { timeoutMs: 30000 });
  let offset = 0;
  return Promise.all(pb.batches.map((batch, rank) => {
    const n = batch * PER_SAMPLE;
    const data = {
      handle, rank, batch, sample: sampleShape(pb.layout), layout: pb.layout,
      x: pb.x.slice(offset, offset + n), dy: pb.dy.slice(offset, offset + n),
      scale: pb.scale, offset: pb.offset, runMean: pb.runMean, runVar: pb.runVar, ...extra(rank),
    };
    offset += n;
    return runWorker(rankScript, data);
  }));
}

const rel = (t: number) => (_i: number, r: number) => t * Math.max(1, Math.abs(r));

describe('sync batch norm: worker-thread shards vs one process on the whole batch', () => {
  const cases: number[][] = [[3, 6], [4, 0, 7], [1, 5, 0, 3]];
  for (const layout of ['NHWC', 'NCHW'] as const) {
    for (const batches of cases) {
      it(`${batches.length} ranks, batches ${JSON.stringify(batches)}, ${layout}`, async function () {
        this.timeout(60000);
        const pb = problem(layout, batches, 7 * batches.length + (layout === 'NHWC' ? 0 : 1));
        const shape = [batches.reduce((a, b) => a + b, 0), ...sampleShape(layout)];
        const x = { data: pb.x, shape };
        const axes = layout === 'NHWC' ? [0, 1, 2] : [0, 2, 3];
        const m = moments(x, axes, { correction: 1 });
        const f = fusedBatchNorm(x, pb.scale, pb.offset, { dataFormat: layout, epsilon: 1e-3, exponentialAvgFactor: 0.1, mean: pb.runMean, variance: pb.runVar });
        const g = batchNormalizationGrad({ data: pb.dy, shape }, x, pb.scale, { mean: f.savedMean, invStd: f.savedInvStd }, { dataFormat: layout });

        const first = await runShards(pb);
        const again = await runShards(pb);
        for (const r of first) assert.equal(r.error, undefined, `rank ${r.rank}: ${r.error?.message}`);
        const stats = ['mean', 'variance', 'batchMean', 'batchVariance', 'batchVarianceBiased', 'runningMean', 'runningVariance', 'savedMean', 'savedInvStd'] as const;
        for (const r of first) {
          // Every rank holds the same statistics, bit for bit, run after run.
          for (const k of stats) {
            sameBits(r[k]!, first[0][k]!, `rank ${r.rank} ${k} vs rank 0`);
            sameBits(r[k]!, again[r.rank][k]!, `rank ${r.rank} ${k}, second run`);
          }
          sameBits(r.y!, again[r.rank].y!, `rank ${r.rank} y, second run`);
          sameBits(r.dx!, again[r.rank].dx!, `rank ${r.rank} dx, second run`);
        }
        const s = first[0];
        assertClose(s.mean!, m.mean.data, rel(1e-6), 'moments mean');
        assertClose(s.variance!, m.variance.data, rel(1e-6), 'moments variance (correction 1)');
        for (const k of ['batchMean', 'batchVariance', 'batchVarianceBiased', 'runningMean', 'runningVariance', 'savedMean', 'savedInvStd'] as const) {
          assertClose(s[k]!, f[k].data, rel(1e-6), k);
        }
        // y and dx: each shard's part of the whole batch's.
        let off = 0;
        const dscale = new Float64Array(C);
        const doffset = new Float64Array(C);
        for (const r of first) {
          const n = batches[r.rank] * PER_SAMPLE;
          assert.equal(r.y!.length, n);
          assertClose(r.y!, f.y.data.subarray(off, off + n), rel(1e-6), `rank ${r.rank} y`);
          assertClose(r.dx!, g.dx.data.subarray(off, off + n), rel(1e-6), `rank ${r.rank} dx`);
          for (let c = 0; c < C; c++) { dscale[c] += r.dscale![c]; doffset[c] += r.doffset![c]; }
          off += n;
        }
        // The shards' parameter gradients sum to the whole batch's.
        assertClose(dscale, g.dscale.data, rel(1e-5), 'Σ ranks dscale');
        assertClose(doffset, g.doffset.data, rel(1e-5), 'Σ ranks doffset');
      });
    }
  }

  it('a rank that throws before the collective rejects every rank, without waiting for the timeout', async function () {
    this.timeout(60000);
    const pb = problem('NHWC', [2, 3, 4], 99);
    const rs = await runShards(pb, (rank) => ({ failBeforeCollective: rank === 1 }));
    assert.equal(rs[1].error?.name, 'RangeError');
    assert.match(rs[1].error!.message, /^momentsAsync: axes\[0\] = 7 is out of range for a tensor of rank 4/);
    for (const r of [rs[0], rs[2]]) {
      assert.equal(r.error?.name, 'CollectiveError', `rank ${r.rank}`);
      assert.equal(r.error?.code, 'ERR_COLLECTIVE_ABORTED');
      assert.match(r.error!.message, /thread group aborted by rank 1: Error: momentsAsync failed on rank 1: momentsAsync: axes\[0\] = 7 is out of range/);
    }
  });

  it('a rank with the wrong channel count makes every rank fail (mismatch or abort), none hangs', async function () {
    this.timeout(60000);
    const handle = createThreadGroup(2, { timeoutMs: 30000 });
    const c0 = threadCommunicator(handle, 0);
    const c1 = threadCommunicator(handle, 1);
    const a = momentsAsync({ data: randn(12, 1), shape: [4, 3] }, [0], { sync: c0 });
    const b = momentsAsync({ data: randn(8, 2), shape: [4, 2] }, [0], { sync: c1 });
    const [ra, rb] = await Promise.allSettled([a, b]);
    for (const r of [ra, rb]) {
      assert.equal(r.status, 'rejected');
      assert.ok((r as PromiseRejectedResult).reason instanceof CollectiveError);
    }
    assert.match(String((ra as PromiseRejectedResult).reason.message), /mismatch|aborted/);
  });
});

describe('thread communicator', () => {
  it('allGather concatenates in rank order and allReduce sums, for ranks in one thread too', async () => {
    const h = createThreadGroup(3);
    const comms = [0, 1, 2].map((r) => threadCommunicator(h, r));
    for (let round = 0; round < 5; round++) {
      const gathered = await Promise.all(comms.map((c) => c.allGather(Float64Array.of(c.rank, round))));
      for (const g of gathered) assert.deepEqual(Array.from(g), [0, round, 1, round, 2, round]);
      const reduced = await Promise.all(comms.map((c) => c.allReduce(Float64Array.of(c.rank + 1, 0.1 * round), 'sum')));
      for (const r of reduced) assert.deepEqual(Array.from(r), [6, 0.1 * round + 0.1 * round + 0.1 * round]);
    }
  });

  it('a rank that never arrives: the waiting rank times out, and the group stays aborted', async () => {
    const h = createThreadGroup(2, { timeoutMs: 50 });
    const c0 = threadCommunicator(h, 0);
    await assert.rejects(c0.allGather(Float64Array.of(1)), (e: CollectiveError) =>
      e instanceof CollectiveError && e.code === 'ERR_COLLECTIVE_TIMEOUT' && /rank 0 of 2 timed out after 50 ms/.test(e.message));
    const c1 = threadCommunicator(h, 1);
    await assert.rejects(c1.allReduce(Float64Array.of(1), 'sum'), (e: CollectiveError) =>
      e.code === 'ERR_COLLECTIVE_ABORTED' && /aborted by rank 0: CollectiveError: allGather: rank 0 of 2 timed out/.test(e.message));
  });

  it('abortThreadGroup from the main thread rejects a pending collective', async () => {
    const h = createThreadGroup(2);
    const p = threadCommunicator(h, 0).allGather(Float64Array.of(1));
    abortThreadGroup(h, new Error('worker 1 crashed'));
    await assert.rejects(p, /thread group aborted by the main thread: Error: worker 1 crashed/);
  });

  it('bad handles, ranks, sizes and arrays are clear errors', async () => {
    assert.throws(() => createThreadGroup(0), /createThreadGroup: size must be an integer in \[1, 4096\], got 0/);
    assert.throws(() => createThreadGroup(2, { timeoutMs: -1 }), RangeError);
    assert.throws(() => threadCommunicator({} as ThreadGroupHandle, 0), /threadCommunicator: handle must be what createThreadGroup returned/);
    const h = createThreadGroup(2, { maxElements: 4 });
    assert.throws(() => threadCommunicator(h, 2), /rank must be an integer in \[0, 2\), got 2/);
    const c = threadCommunicator(h, 0);
    assert.throws(() => threadCommunicator(h, 0), /rank 0 of this group was already claimed/);
    await assert.rejects(c.allGather(new Float64Array(5)), /5 elements exceed the group's maxElements 4/);
    await assert.rejects(c.allGather([1] as unknown as Float64Array), TypeError);
    await assert.rejects(c.allReduce(new Float64Array(1), 'max' as 'sum'), /op must be 'sum'/);
  });
});

describe('sync ops: communicator checks', () => {
  const x = { data: randn(24, 3), shape: [4, 6] };
  const one = (over: Partial<Communicator> = {}): Communicator => ({
    rank: 0, size: 1, allGather: async (d) => d.slice(), allReduce: async (d) => d.slice(), ...over,
  });

  it('bad communicators are TypeErrors naming what is wrong', async () => {
    const bad: [unknown, RegExp][] = [
      [42, /options\.sync must be a communicator \{rank, size, allGather, allReduce\}, got 42/],
      [{ ...one(), size: 0 }, /options\.sync\.size must be an integer >= 1, got 0/],
      [{ ...one(), rank: 1 }, /options\.sync\.rank must be an integer in \[0, 1\), got 1/],
      [{ ...one(), allReduce: undefined }, /options\.sync\.allReduce must be a function, got undefined/],
      [{ ...one(), abort: 1 }, /options\.sync\.abort must be a function when present/],
      [{ ...one(), timeoutMs: 0 }, /options\.sync\.timeoutMs must be a number > 0/],
    ];
    for (const [sync, re] of bad) {
      await assert.rejects(momentsAsync(x, [0], { sync: sync as Communicator }), (e: Error) => e instanceof TypeError && re.test(e.message));
      await assert.rejects(fusedBatchNormAsync(x, null, null, { sync: sync as Communicator }), TypeError);
    }
    assert.throws(() => new BatchNormalization({ sync: { rank: 0 } as Communicator }), /BatchNormalization: options\.sync\.size/);
  });

  it('the synchronous variants reject a communicator', () => {
    assert.throws(() => moments(x, [0], { sync: one() }), /^TypeError: moments: options\.sync needs the Promise-returning variant \(momentsAsync\)/);
    assert.throws(() => fusedBatchNorm(x, null, null, { sync: one() }), /fusedBatchNorm: options\.sync needs .*fusedBatchNormAsync/);
    assert.throws(() => batchNormalizationGrad(x, x, null, { mean: new Float32Array(6), invStd: new Float32Array(6) }, { sync: one() }),
      /batchNormalizationGrad: options\.sync needs/);
    const layer = new BatchNormalization({ sync: one() });
    assert.throws(() => layer.forward(x, { training: true }), /BatchNormalization\.forward: .*use forwardAsync|train with forwardAsync/);
  });

  it('a communicator that returns the wrong thing or fails: clear errors, and the group is aborted', async () => {
    let aborted: unknown = null;
    const short = one({ allGather: async () => new Float64Array(2), abort: (r) => { aborted = r; } });
    await assert.rejects(momentsAsync(x, [0], { sync: short }), /allGather of 13 float64 on rank 0 of 1: the communicator returned a Float64Array; expected a Float64Array of 13 elements/);
    assert.ok(aborted);
    const failing = one({ allReduce: async () => { throw new Error('link down'); } });
    const f = fusedBatchNorm(x, null, null);
    await assert.rejects(batchNormalizationGradAsync(x, x, null, { mean: f.savedMean, invStd: f.savedInvStd }, { sync: failing }),
      (e: CollectiveError) => e.code === 'ERR_COLLECTIVE' && /allReduce of 13 float64 on rank 0 of 1 failed: link down/.test(e.message));
    const stuck = one({ allGather: () => new Promise(() => undefined), timeoutMs: 30 });
    await assert.rejects(momentsAsync(x, [0], { sync: stuck }), (e: CollectiveError) => e.code === 'ERR_COLLECTIVE_TIMEOUT' && /timed out after 30 ms/.test(e.message));
  });

  it('the batch axis (0) must be reduced, and cannot be the channel axis', async () => {
    await assert.rejects(momentsAsync(x, [1], { sync: one() }), /momentsAsync: with options\.sync the ranks hold shards of the batch \(axis 0\), so axes must include 0, got \[1\]/);
    await assert.rejects(fusedBatchNormAsync(x, null, null, { axis: 0, sync: one() }), /fusedBatchNormAsync: .*cannot be the channel axis/);
    const f = fusedBatchNorm(x, null, null, { axis: 0 });
    await assert.rejects(batchNormalizationGradAsync(x, x, null, { mean: f.savedMean, invStd: f.savedInvStd }, { axis: 0, sync: one() }), RangeError);
  });

  it('a single-rank user communicator gives the unsynchronized results exactly', async () => {
    const m = await momentsAsync(x, [0], { sync: one() });
    const ref = moments(x, [0]);
    assertClose(m.mean.data, ref.mean.data, rel(1e-7), 'mean');
    assertClose(m.variance.data, ref.variance.data, rel(1e-7), 'variance');
    const r = await fusedBatchNormAsync(x, null, null, { sync: one() });
    sameBits(r.y.data, fusedBatchNorm(x, null, null).y.data, 'y');
  });

  for (const dataFormat of ['NHWC', 'NCHW'] as const) {
    it(`${dataFormat}: one rank gives the local ops' every output bit for bit (the same native bookkeeping)`, async () => {
      const shape = dataFormat === 'NHWC' ? [3, 4, 5, 6] : [3, 6, 4, 5];
      const n = shape.reduce((a, b) => a * b, 1);
      const xt = { data: randn(n, 71, 100, 5), shape };
      const dy = { data: randn(n, 72), shape };
      const scale = randn(6, 73, 1, 0.3);
      const offset = randn(6, 74);
      const o = { dataFormat, epsilon: 1e-3, exponentialAvgFactor: 0.1, mean: randn(6, 75), variance: Float32Array.from(randn(6, 76), (v) => 1 + v * v) };
      const local = fusedBatchNorm(xt, scale, offset, o);
      const synced = await fusedBatchNormAsync(xt, scale, offset, { ...o, sync: one() });
      for (const k of ['y', 'batchMean', 'batchVariance', 'batchVarianceBiased', 'runningMean', 'runningVariance', 'savedMean', 'savedInvStd'] as const) {
        sameBits(synced[k].data, local[k].data, k);
      }
      const saved = { mean: local.savedMean, invStd: local.savedInvStd };
      const gl = batchNormalizationGrad(dy, xt, scale, saved, { dataFormat });
      const gs = await batchNormalizationGradAsync(dy, xt, scale, saved, { dataFormat, sync: one() });
      for (const k of ['dx', 'dscale', 'doffset'] as const) sameBits(gs[k].data, gl[k].data, k);
      // options.out receives the synchronized results too.
      const out = new Float32Array(n);
      const gOut = await batchNormalizationGradAsync(dy, xt, scale, saved, { dataFormat, sync: one(), out });
      assert.equal(gOut.dx.data, out);
      sameBits(out, gl.dx.data, 'dx into options.out');
    });
  }

  it("backend 'cudnn' is refused before any exchange, with the reason, and aborts the group", async () => {
    const x = { data: Float32Array.from({ length: 24 }, (_, i) => Math.sin(i)), shape: [4, 6] };
    const refused = (fn: string) => (e: unknown) => e instanceof BackendError && e.code === 'ERR_UNSUPPORTED' &&
      e.message === `${fn}: backend 'cudnn' cannot run this call: cuDNN computes the shard's own statistics; ` +
        "synchronized batch norm runs on 'cpu' (host data) or 'cuda'";
    let gathered = 0;
    let aborted: unknown = null;
    const comm = one({ allGather: async (d) => { gathered++; return d; }, abort: (r) => { aborted = r; } });
    await assert.rejects(fusedBatchNormAsync(x, null, null, { backend: 'cudnn', sync: comm }), refused('fusedBatchNormAsync'));
    assert.equal(gathered, 0, 'nothing was exchanged');
    assert.ok(aborted, 'the group is aborted, so no other rank waits');
    const saved = { mean: new Float32Array(6), invStd: new Float32Array(6).fill(1) };
    await assert.rejects(batchNormalizationGradAsync(x, x, null, saved, { backend: 'cudnn', sync: one() }),
      refused('batchNormalizationGradAsync'));
  });

  it('DeviceTensor inputs need a device communicator (NcclCommunicator): BackendError ERR_UNSUPPORTED naming why', async () => {
    // A DeviceTensor of 0 elements exists without a GPU.
    const xd = DeviceTensor.upload({ data: new Float32Array(0), shape: [0, 3] });
    try {
      const unsupported = (fn: string) => (e: unknown) => e instanceof BackendError && e.code === 'ERR_UNSUPPORTED' &&
        e.message.startsWith(`${fn}: DeviceTensor inputs with options.sync need a device communicator (NcclCommunicator)`);
      let aborted: unknown = null;
      await assert.rejects(fusedBatchNormAsync(xd, null, null, { sync: one({ abort: (r) => { aborted = r; } }) }), unsupported('fusedBatchNormAsync'));
      assert.ok(aborted, 'the group is aborted, so no other rank waits');
      // x of shape [0, 0]: no channels, so no vector needs uploading before the check.
      const x0 = DeviceTensor.upload({ data: new Float32Array(0), shape: [0, 0] });
      await assert.rejects(batchNormalizationGradAsync(x0, x0, null, { mean: new Float32Array(0), invStd: new Float32Array(0) }, { sync: one() }),
        unsupported('batchNormalizationGradAsync'));
      x0.dispose();
      // An object that only looks like an NCCL communicator is not one.
      const lookalike = one({ allGatherDevice: async (d) => d, allReduceDevice: async (d) => d });
      await assert.rejects(fusedBatchNormAsync(xd, null, null, { sync: lookalike }), unsupported('fusedBatchNormAsync'));
      await assert.rejects(momentsAsync(xd, [0], { sync: one() }), (e: unknown) => e instanceof BackendError && e.code === 'ERR_UNSUPPORTED' &&
        /^momentsAsync: options\.sync takes host tensors here/.test(e.message));
    } finally {
      xd.dispose();
    }
  });
});

describe('BatchNormalization with options.sync', () => {
  const layerScript = `
const { parentPort, workerData: w } = require('node:worker_threads');
const bn = require(${JSON.stringify(LIB)});
(async () => {
  const layer = new bn.BatchNormalization({ convention: 'pytorch', sync: bn.threadCommunicator(w.handle, w.rank) });
  let y, dx;
  for (let step = 0; step < 3; step++) {
    y = await layer.forwardAsync({ data: w.x, shape: w.shape }, { training: true });
    dx = await layer.backwardAsync({ data: w.dy, shape: w.shape });
  }
  const inf = await layer.forwardAsync({ data: w.x, shape: w.shape });
  parentPort.postMessage({ rank: w.rank, y: y.data, dx: dx.data, inf: inf.data, run: layer.runningStatistics(), grads: layer.gradients(), state: layer.state() });
})().catch((e) => parentPort.postMessage({ error: e.message }));
`;

  it('2 ranks train like one layer on the whole batch (running statistics, y, dx, gradients summed)', async function () {
    this.timeout(60000);
    const per = 4 * 3 * 2 * 2;
    const xs = [randn(2 * per / 4, 5, 2, 3), randn(6 * per / 4, 6, 2, 3)];
    const dys = [randn(xs[0].length, 7), randn(xs[1].length, 8)];
    const handle = createThreadGroup(2);
    const rs = await Promise.all([0, 1].map((rank) => runWorker(layerScript, {
      handle, rank, x: xs[rank], dy: dys[rank], shape: [xs[rank].length / 12, 3, 2, 2],
    }))) as unknown as { error?: string; y: Float32Array; dx: Float32Array; inf: Float32Array; run: { mean: Float32Array; variance: Float32Array }; grads: { gamma: Float32Array; beta: Float32Array }; state: { lastBatchCount: number } }[];
    for (const r of rs) assert.equal(r.error, undefined, r.error);
    const whole = new BatchNormalization({ convention: 'pytorch' });
    const x = { data: Float32Array.of(...xs[0], ...xs[1]), shape: [8, 3, 2, 2] };
    const dy = { data: Float32Array.of(...dys[0], ...dys[1]), shape: [8, 3, 2, 2] };
    let y = whole.forward(x, { training: true });
    let dx = whole.backward(dy);
    for (let step = 1; step < 3; step++) { y = whole.forward(x, { training: true }); dx = whole.backward(dy); }
    const run = whole.runningStatistics();
    for (const r of rs) {
      sameBits(r.run.mean, rs[0].run.mean, 'running mean equal on every rank');
      assertClose(r.run.mean, run.mean!, rel(1e-6), 'running mean');
      assertClose(r.run.variance, run.variance!, rel(1e-6), 'running variance (global unbiased)');
      assert.equal(r.state.lastBatchCount, 32);
    }
    const cat = (a: Float32Array, b: Float32Array) => Float32Array.of(...a, ...b);
    assertClose(cat(rs[0].y, rs[1].y), y.data, rel(1e-6), 'y');
    assertClose(cat(rs[0].dx, rs[1].dx), dx.data, rel(1e-6), 'dx');
    assertClose(cat(rs[0].inf, rs[1].inf), whole.forward(x).data, rel(1e-6), 'inference y');
    const g = whole.gradients();
    assertClose(rs[0].grads.gamma.map((v, i) => v + rs[1].grads.gamma[i]), g.gamma!, rel(1e-5), 'Σ ranks dgamma');
    assertClose(rs[0].grads.beta.map((v, i) => v + rs[1].grads.beta[i]), g.beta!, rel(1e-5), 'Σ ranks dbeta');
  });
});
