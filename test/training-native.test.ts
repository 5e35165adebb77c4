// The training ops as native ops: one call into the binding per public call, the CPU
// backend's bookkeeping against values computed independently here from
// sufficientStatistics + batchNormalization, the named-options contract of the binding,
// and the dispatch errors and explain reasons for the GPU backends on this machine.
import * as assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import {
  backends, batchNormalization, batchNormalizationGrad, batchNormalizationGradAsync, BackendError, DeviceTensor, explain,
  fusedBatchNorm, fusedBatchNormAsync, getBackend, setBackend, sufficientStatistics, type Tensor,
} from '../lib/index';
import { native } from '../lib/binding';
import { product, randn, rng, sameBits } from './helpers';

const cuda = backends().find((b) => b.name === 'cuda')!;
const cudnn = backends().find((b) => b.name === 'cudnn')!;

interface Case { shape: number[]; axis: number }
// NHWC, NCHW, channel axis 0 and in the middle, rank 2..5.
const CASES: Case[] = [
  { shape: [7, 5], axis: 1 }, { shape: [6, 4], axis: 0 }, { shape: [3, 4, 5], axis: 1 }, { shape: [4, 3, 2], axis: 0 },
  { shape: [2, 5, 3, 4], axis: 3 }, { shape: [3, 4, 5, 2], axis: 1 }, { shape: [2, 3, 4, 5], axis: 2 },
  { shape: [2, 3, 2, 2, 3], axis: 4 }, { shape: [2, 3, 2, 2, 3], axis: 1 }, { shape: [64, 33], axis: 1 },
  { shape: [5, 70, 9, 3], axis: 1 },
];

function paramShape(c: Case): number[] {
  return c.shape.slice(c.axis).map((d, i) => (i === 0 ? d : 1));
}

/** fusedBatchNorm's results written out from sufficientStatistics and batchNormalization. */
function expectedFused(x: Tensor, c: Case, scale: Float32Array | null, offset: Float32Array | null,
  o: { epsilon: number; exponentialAvgFactor: number; isTraining: boolean; mean: Float32Array; variance: Float32Array }) {
  const C = c.shape[c.axis];
  const ps = paramShape(c);
  const norm = (mean: Float32Array, variance: Float32Array) => batchNormalization(x, { data: mean, shape: ps }, { data: variance, shape: ps },
    offset ? { data: offset, shape: ps } : null, scale ? { data: scale, shape: ps } : null, o.epsilon, { backend: 'cpu' }).data;
  const invStd = (v: Float32Array) => Float32Array.from(v, (e) => 1 / Math.sqrt(e + o.epsilon));
  if (!o.isTraining) {
    return {
      y: norm(o.mean, o.variance), batchMean: o.mean, batchVariance: o.variance, batchVarianceBiased: o.variance,
      runningMean: o.mean, runningVariance: o.variance, savedMean: o.mean, savedInvStd: invStd(o.variance),
    };
  }
  const axes = c.shape.map((_, i) => i).filter((i) => i !== c.axis);
  const s = sufficientStatistics(x, axes, { backend: 'cpu' });
  const n = s.count;
  assert.equal(n, product(c.shape) / C);
  const mean = Float32Array.from(s.mean);
  const biased = Float32Array.from(s.m2, (m) => m / n);
  const unbiased = Float32Array.from(s.m2, (m) => m / Math.max(n - 1, 1));
  const f = o.exponentialAvgFactor;
  const run = (batch: Float32Array, r: Float32Array) => (f === 1 ? batch : Float32Array.from(batch, (b, i) => (1 - f) * r[i] + f * b));
  return {
    y: norm(mean, biased), batchMean: mean, batchVariance: unbiased, batchVarianceBiased: biased,
    runningMean: run(mean, o.mean), runningVariance: run(unbiased, o.variance), savedMean: mean, savedInvStd: invStd(biased),
  };
}

describe('training ops as native ops', () => {
  describe('CPU bookkeeping equals sufficientStatistics + batchNormalization, bit for bit', () => {
    let seed = 100;
    for (const c of CASES) {
      for (const mode of ['training f=1', 'training f=0.1', 'inference'] as const) {
        it(`${JSON.stringify(c.shape)} axis ${c.axis}, ${mode}, sync and async`, async () => {
          const u = rng(seed++);
          const C = c.shape[c.axis];
          const x = { data: randn(product(c.shape), seed++, 1e3, 3), shape: c.shape };
          const vec = (base: number) => Float32Array.from({ length: C }, () => base + u());
          const scale = u() < 0.8 ? vec(0.5) : null;
          const offset = u() < 0.8 ? vec(-0.5) : null;
          const o = {
            axis: c.axis, epsilon: 1e-3 + u() * 1e-3, exponentialAvgFactor: mode === 'training f=0.1' ? 0.1 : 1,
            isTraining: mode !== 'inference', mean: vec(1e3), variance: vec(5), backend: 'cpu' as const,
          };
          const want = expectedFused(x, c, scale, offset, o);
          const got = fusedBatchNorm(x, scale, offset, o);
          const gotAsync = await fusedBatchNormAsync(x, scale, offset, o);
          for (const k of Object.keys(want) as (keyof typeof want)[]) {
            sameBits(got[k].data, want[k], `${k} (sync)`);
            sameBits(gotAsync[k].data, want[k], `${k} (async)`);
          }
          assert.deepEqual(got.y.shape, c.shape);
          assert.deepEqual(got.savedInvStd.shape, [C]);
        });
      }
    }
  });

  it('in place (out = x.data) gives the bits of a fresh output', () => {
    const shape = [6, 5, 4];
    const x = randn(product(shape), 9, 2, 3);
    const fresh = fusedBatchNorm({ data: x, shape }, null, null, { dataFormat: 'NCHW' });
    const copy = x.slice();
    const inPlace = fusedBatchNorm({ data: copy, shape }, null, null, { dataFormat: 'NCHW', out: copy });
    assert.equal(inPlace.y.data, copy);
    sameBits(copy, fresh.y.data, 'y');
    sameBits(inPlace.savedInvStd.data, fresh.savedInvStd.data, 'savedInvStd');
  });

  it('backward on the CPU: dscale = Σdy·x̂, doffset = Σdy, dx from the float64 formula (training and frozen)', async () => {
    for (const c of CASES) {
      const n = product(c.shape);
      const C = c.shape[c.axis];
      const x = { data: randn(n, 3, 1, 2), shape: c.shape };
      const dy = { data: randn(n, 4), shape: c.shape };
      const f = fusedBatchNorm(x, null, null, { axis: c.axis });
      const scale = Float32Array.from({ length: C }, (_, i) => 0.5 + i / C);
      const saved = { mean: f.savedMean.data, invStd: f.savedInvStd.data };
      for (const isTraining of [true, false]) {
        const g = batchNormalizationGrad(dy, x, scale, saved, { axis: c.axis, isTraining });
        const ga = await batchNormalizationGradAsync(dy, x, scale, saved, { axis: c.axis, isTraining });
        for (const k of ['dx', 'dscale', 'doffset'] as const) sameBits(ga[k].data, g[k].data, `${k} async vs sync`);
        // float64 reference over the [A, C, B] view
        const B = product(c.shape.slice(c.axis + 1));
        const chan = (i: number) => Math.floor(i / B) % C;
        const s1 = new Float64Array(C), s2 = new Float64Array(C), cnt = new Float64Array(C);
        for (let i = 0; i < n; i++) {
          const k = chan(i);
          s1[k] += dy.data[i];
          s2[k] += dy.data[i] * (x.data[i] - saved.mean[k]);
          cnt[k]++;
        }
        for (let k = 0; k < C; k++) {
          const inv = saved.invStd[k];
          assert.ok(Math.abs(g.doffset.data[k] - s1[k]) <= 1e-5 * (1 + Math.abs(s1[k])), `doffset[${k}]`);
          assert.ok(Math.abs(g.dscale.data[k] - inv * s2[k]) <= 1e-5 * (1 + Math.abs(inv * s2[k])), `dscale[${k}]`);
        }
        for (let i = 0; i < n; i++) {
          const k = chan(i);
          const inv = saved.invStd[k];
          const want = isTraining
            ? scale[k] * inv * (dy.data[i] - s1[k] / cnt[k] - (x.data[i] - saved.mean[k]) * inv * inv * s2[k] / cnt[k])
            : scale[k] * inv * dy.data[i];
          assert.ok(Math.abs(g.dx.data[i] - want) <= 1e-5 * (1 + Math.abs(want)), `dx[${i}] = ${g.dx.data[i]}, want ${want}`);
        }
      }
    }
  });

  describe('one crossing of the JS/native boundary per call', () => {
    // In a child process: nothing else there calls into the addon while a call is counted.
    const count = (calls: string): number[] => {
      const dist = JSON.stringify(path.join(__dirname, '..', 'lib'));
      const code = `
        const b = require(${dist} + '/index.js');
        const { native } = require(${dist} + '/binding.js');
        const shape = [4, 3, 5];
        const x = { data: Float32Array.from({ length: 60 }, (_, i) => Math.sin(i)), shape };
        const dy = { data: Float32Array.from({ length: 60 }, (_, i) => Math.cos(i)), shape };
        const saved = { mean: new Float32Array(5), invStd: new Float32Array(5).fill(1) };
        const run = { mean: new Float32Array(5), variance: new Float32Array(5).fill(1) };
        const calls = [${calls}];
        (async () => {
          const out = [];
          for (const f of calls) { const before = native.opCalls(); await f(); out.push(native.opCalls() - before); }
          process.stdout.write(JSON.stringify(out));
        })();`;
      const r = spawnSync(process.execPath, ['-e', code], { encoding: 'utf8' });
      assert.equal(r.status, 0, r.stderr);
      return JSON.parse(r.stdout) as number[];
    };
    it('fusedBatchNorm (training and inference), sync and async', () => {
      assert.deepEqual(count(`
        () => b.fusedBatchNorm(x, null, null),
        () => b.fusedBatchNorm(x, 2, 1, { ...run, exponentialAvgFactor: 0.3 }),
        () => b.fusedBatchNorm(x, null, null, { ...run, isTraining: false }),
        () => b.fusedBatchNormAsync(x, null, null),
        () => b.fusedBatchNormAsync(x, null, null, { ...run, isTraining: false, out: new Float32Array(60) })`), [1, 1, 1, 1, 1]);
    });
    it('batchNormalizationGrad (training and frozen), sync and async', () => {
      assert.deepEqual(count(`
        () => b.batchNormalizationGrad(dy, x, null, saved),
        () => b.batchNormalizationGrad(dy, x, 3, saved, { isTraining: false }),
        () => b.batchNormalizationGradAsync(dy, x, null, saved),
        () => b.batchNormalizationGradAsync(dy, x, null, saved, { out: new Float32Array(60) })`), [1, 1, 1, 1]);
    });
    it('the counter counts every op call (moments too), so it can fail', () => {
      assert.deepEqual(count(`() => { b.sufficientStatistics(x, [0, 1]); b.sufficientStatistics(x, [0]); }, () => b.moments(x, [0])`), [2, 1]);
    });
  });

  describe('the binding takes one named options object', () => {
    const shape = [2, 3];
    const base = () => ({
      x: new Float32Array(6), shape, axis: 1, scale: null, offset: null, mean: null, variance: null,
      epsilon: 1e-3, exponentialAvgFactor: 1, isTraining: true, backend: 0 as const,
      y: new Float32Array(6), batchMean: new Float32Array(3), batchVariance: new Float32Array(3),
      batchVarianceBiased: new Float32Array(3), runningMean: new Float32Array(3), runningVariance: new Float32Array(3),
      savedMean: new Float32Array(3), savedInvStd: new Float32Array(3),
    });
    it('runs with every key given and reports the backend', () => {
      const o = base();
      o.x.set([1, 2, 3, 4, 5, 6]);
      assert.equal(native.fusedBatchNorm(o), 'cpu');
      assert.deepEqual(Array.from(o.batchMean), [2.5, 3.5, 4.5]);
    });
    it('names the key that is missing, of the wrong kind or length, or overlapping', () => {
      const cases: [string, (o: Record<string, unknown>) => void, RegExp][] = [
        ['positional call', () => undefined, /fusedBatchNorm: expected one options object/],
        ['missing epsilon', (o) => { delete o.epsilon; }, /fusedBatchNorm: options\.epsilon must be a number/],
        ['isTraining not boolean', (o) => { o.isTraining = 1; }, /options\.isTraining must be a boolean/],
        ['x not Float32Array', (o) => { o.x = new Float64Array(6); }, /fusedBatchNorm: options\.x must be a Float32Array/],
        ['short scale', (o) => { o.scale = new Float32Array(2); }, /options\.scale has 2 elements but needs 3/],
        ['axis out of range', (o) => { o.axis = 2; }, /options\.axis must be an integer in \[0, 2\)/],
        ['running stats required', (o) => { o.exponentialAvgFactor = 0.5; }, /options\.mean must be a Float32Array/],
        ['output overlaps input', (o) => { o.batchMean = (o.x as Float32Array).subarray(0, 3); }, /options\.batchMean overlaps options\.x/],
        ['outputs overlap', (o) => { o.savedMean = o.batchMean; }, /options\.batchMean overlaps options\.savedMean/],
        ['y overlaps x partly', (o) => { const b = new Float32Array(7); o.x = b.subarray(0, 6); o.y = b.subarray(1, 7); }, /options\.y overlaps options\.x/],
        ['bad backend', (o) => { o.backend = 9; }, /backend must be -1/],
      ];
      for (const [what, edit, re] of cases) {
        const o = base() as unknown as Record<string, unknown>;
        edit(o);
        const call = what === 'positional call'
          ? () => (native.fusedBatchNorm as unknown as (...a: unknown[]) => unknown)(o.x, shape, 1)
          : () => native.fusedBatchNorm(o as never);
        assert.throws(call, re, what);
      }
    });
    it('batchNormalizationGrad: missing and overlapping keys', () => {
      const g = () => ({
        dy: new Float32Array(6), x: new Float32Array(6), shape, axis: 1, scale: null, savedMean: new Float32Array(3),
        savedInvStd: new Float32Array(3), epsilon: 1e-3, isTraining: true, backend: 0 as const,
        dx: new Float32Array(6), dscale: new Float32Array(3), doffset: new Float32Array(3),
      });
      const o = g() as unknown as Record<string, unknown>;
      delete o.savedInvStd;
      assert.throws(() => native.batchNormalizationGrad(o as never), /batchNormalizationGrad: options\.savedInvStd must be a Float32Array/);
      const p = g();
      assert.throws(() => native.batchNormalizationGrad({ ...p, dx: p.dy }), /options\.dx overlaps options\.dy/);
      assert.equal(native.batchNormalizationGrad(g()), 'cpu');
    });
    it('every tensor lives where x does (a DeviceTensor x with host vectors is refused)', function () {
      // A DeviceTensor of 0 elements exists without a GPU; with it x's memory is the device.
      const empty = DeviceTensor.upload({ data: new Float32Array(0), shape: [0, 3] });
      const o = { ...base(), x: empty.handle('test'), shape: [0, 3], y: empty.handle('test') };
      assert.throws(() => native.fusedBatchNorm(o), { name: 'TypeError', message: /options\.scale|options\.batchMean/ });
      empty.dispose();
    });
  });

  describe(`dispatch of the GPU backends on this machine${cuda.available ? ' (skipped: a GPU is present)' : ''}`, function () {
    before(function () { if (cuda.available) this.skip(); });
    const shape = [2, 3, 4, 4];
    const x = { data: randn(product(shape), 5), shape };
    const saved = { mean: new Float32Array(4), invStd: new Float32Array(4).fill(1) };
    const unavailable = (fn: string, b: 'cuda' | 'cudnn') => (e: unknown) => {
      assert.ok(e instanceof BackendError, String(e));
      assert.equal(e.code, 'ERR_BACKEND_UNAVAILABLE');
      const reason = (b === 'cuda' ? cuda : cudnn).reason!;
      assert.ok(e.message.startsWith(`${fn}: backend '${b}' is unavailable: `), e.message);
      assert.ok(e.message.includes(reason), `${e.message} names the reason ${reason}`);
      assert.doesNotMatch(e.message, /cpu' backend only|no backward kernels/);
      return true;
    };
    for (const b of ['cuda', 'cudnn'] as const) {
      it(`backend '${b}' on Float32Arrays: every op is dispatched and reports why it cannot run`, async () => {
        assert.throws(() => fusedBatchNorm(x, null, null, { backend: b }), unavailable('fusedBatchNorm', b));
        assert.throws(() => fusedBatchNorm(x, null, null, { backend: b, isTraining: false, mean: saved.mean, variance: saved.invStd }),
          unavailable('fusedBatchNorm', b));
        await assert.rejects(fusedBatchNormAsync(x, null, null, { backend: b }), unavailable('fusedBatchNorm', b));
        assert.throws(() => batchNormalizationGrad(x, x, null, saved, { backend: b }), unavailable('batchNormalizationGrad', b));
        assert.throws(() => batchNormalizationGrad(x, x, null, saved, { backend: b, isTraining: false }), unavailable('batchNormalizationGrad', b));
        await assert.rejects(batchNormalizationGradAsync(x, x, null, saved, { backend: b }), unavailable('batchNormalizationGrad', b));
        if (b === 'cuda') assert.throws(() => sufficientStatistics(x, [0, 1, 2], { backend: b }), unavailable('moments', b));
      });
    }
    it("setBackend('cuda') reaches the cuda backend for host inputs", () => {
      const prev = getBackend();
      setBackend('cuda');
      try {
        assert.throws(() => fusedBatchNorm(x, null, null), unavailable('fusedBatchNorm', 'cuda'));
        assert.throws(() => batchNormalizationGrad(x, x, null, saved), unavailable('batchNormalizationGrad', 'cuda'));
        assert.throws(() => sufficientStatistics(x, [0]), unavailable('moments', 'cuda'));
      } finally {
        setBackend(prev);
      }
    });
    it('explain: host data runs on the cpu; DeviceTensors need cuda, and say why not', () => {
      for (const op of ['fusedBatchNorm', 'batchNormalizationGrad'] as const) {
        const r = explain(op, { shape, dataFormat: 'NCHW' });
        assert.equal(r.backend, 'cpu');
        assert.match(r.reason, /^auto: 'cpu' \(inputs are host Float32Arrays/);
        assert.throws(() => explain(op, { onDevice: true, shape, dataFormat: 'NCHW' }), (e: unknown) =>
          e instanceof BackendError && e.code === 'ERR_BACKEND_UNAVAILABLE' && e.message.includes(`inputs are DeviceTensors but backend 'cuda' is unavailable: ${cuda.reason}`));
        assert.throws(() => explain(op, { backend: 'cudnn', shape }), (e: unknown) => e instanceof BackendError && e.message.includes(cudnn.reason!));
        assert.equal(explain(op, { backend: 'cpu', shape, isTraining: false }).reason, "requested 'cpu'");
      }
    });
  });
});

describe('the measured dispatch table', () => {
  it('scripts/dispatch-table.js writes one entry per shape timed on both backends, naming the faster', () => {
    const fs = require('node:fs') as typeof import('node:fs');
    const os = require('node:os') as typeof import('node:os');
    const path = require('node:path') as typeof import('node:path');
    const { execFileSync } = require('node:child_process') as typeof import('node:child_process');
    const root = path.join(__dirname, '..', '..');
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bn-table-'));
    const header = path.join(dir, 'dispatch_table.h');
    const committed = fs.readFileSync(path.join(root, 'native', 'backend_api', 'dispatch_table.h'), 'utf8');
    // No measurements committed yet: 'auto' has nothing to follow and runs our kernels.
    assert.match(committed, /BEGIN MEASURED ENTRIES\n {4}\/\/ END MEASURED ENTRIES/);
    fs.writeFileSync(header, committed);
    const bench = {
      machine: { gpu: 'Test GPU' },
      results: [
        { op: 'fusedBatchNorm', shape: [128, 32, 32, 64], axes: [0, 1, 2], backend: 'cuda', ms: 0.3 },
        { op: 'fusedBatchNorm', shape: [128, 32, 32, 64], axes: [0, 1, 2], backend: 'cudnn', ms: 0.2 },
        { op: 'fusedBatchNormGrad', shape: [8192, 4096], axes: [0], backend: 'cuda', ms: 0.2 },
        { op: 'fusedBatchNormGrad', shape: [8192, 4096], axes: [0], backend: 'cudnn', ms: 0.5 },
        { op: 'fusedBatchNorm', shape: [64, 1024], axes: [0], backend: 'cuda', ms: 0.01 },
        { op: 'moments', shape: [8192, 4096], axes: [0], backend: 'cuda', ms: 0.5 },
      ],
    };
    fs.writeFileSync(path.join(dir, 'bench.json'), JSON.stringify(bench));
    execFileSync(process.execPath, [path.join(root, 'scripts', 'dispatch-table.js'), path.join(dir, 'bench.json'), header]);
    const entries = fs.readFileSync(header, 'utf8').split('\n').filter((l) => l.startsWith('    {"'));
    assert.deepEqual(entries, [
      '    {"fusedBatchNorm", 4, {128, 32, 32, 64}, 3, "cudnn", 0.3, 0.2, "Test GPU"},',
      '    {"batchNormalizationGrad", 2, {8192, 4096}, 1, "cuda", 0.2, 0.5, "Test GPU"},',
    ]);
    fs.rmSync(dir, { recursive: true });
  });
});
