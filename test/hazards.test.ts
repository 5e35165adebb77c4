// Buffers that change under a call: resizable and growable buffers shrunk or grown while
// an async call runs, buffers transferred mid-call, memory shared through different
// objects (SharedArrayBuffers that came back from a MessageChannel), overlapping outputs
// of every op, the gradient's scratch memory, and the smaller edge cases of argument
// handling. Scenarios that used to crash run in child processes, repeated, so that a
// segfault fails the test instead of killing mocha.
import * as assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { MessageChannel, receiveMessageOnPort } from 'node:worker_threads';
import {
  BatchNormalization, batchNormalization, batchNormalizationAsync, batchNormalizationGrad, batchNormalizationGradAsync,
  cudnnProbe, explain, finalizeMoments, fusedBatchNorm, fusedBatchNormAsync, fusedBatchNormGrad, moments, momentsAsync,
  sufficientStatistics,
} from '../lib/index';
import { native } from '../lib/binding';
import type { BatchNormalizationCall, MomentsCall } from '../binding';
import { randn } from './helpers';

const LIB = path.join(__dirname, '..', 'lib', 'index.js');

/** Runs `body` (async JS with `bn` = the library, `gc` exposed) in a fresh node; returns what happened. */
function child(body: string, timeout = 120000) {
  const script = `const bn = require(${JSON.stringify(LIB)});\n(async () => {\n${body}\n})().then(` +
    `() => process.stdout.write('\\nDONE'), (e) => { process.stdout.write('\\nFAILED ' + (e && e.stack)); process.exitCode = 1; });`;
  const r = spawnSync(process.execPath, ['--expose-gc', '-e', script], { encoding: 'utf8', timeout });
  return { status: r.status, signal: r.signal, stdout: r.stdout ?? '', stderr: r.stderr ?? '' };
}

function expectClean(r: ReturnType<typeof child>): string {
  assert.equal(r.signal, null, `the child died of ${r.signal}\n${r.stdout.slice(-2000)}\n${r.stderr.slice(-2000)}`);
  assert.equal(r.status, 0, `the child failed:\n${r.stdout.slice(-3000)}\n${r.stderr.slice(-2000)}`);
  assert.match(r.stdout, /DONE$/);
  return r.stdout;
}

/** Another SharedArrayBuffer object over the same memory, as a worker or MessageChannel gives back. */
function sameMemoryOtherObject(sab: SharedArrayBuffer): SharedArrayBuffer {
  const { port1, port2 } = new MessageChannel();
  port1.postMessage(sab);
  const back = receiveMessageOnPort(port2)!.message as SharedArrayBuffer;
  port1.close();
  assert.notEqual(back, sab);
  return back;
}

const RUNS = 20;

describe('buffers that change while an async call runs (child processes)', function () {
  this.timeout(300000);

  it(`a resizable ArrayBuffer shrunk during momentsAsync: x's statistics, no crash (${RUNS} runs, length-tracking and fixed views)`, () => {
    expectClean(child(`
      for (let r = 0; r < ${RUNS}; r++) {
        const n = 1 << 22;
        const buf = new ArrayBuffer(4 * n, { maxByteLength: 4 * n });
        const x = r % 2 ? new Float32Array(buf) : new Float32Array(buf, 0, n);  // length-tracking / fixed
        x.fill(1);
        const p = bn.momentsAsync({ data: x, shape: [n] }, [0]);
        buf.resize(r % 4 < 2 ? 2 * n : 0);
        const m = await p;
        if (m.mean.data[0] !== 1 || m.variance.data[0] !== 0) throw new Error('run ' + r + ': mean ' + m.mean.data[0]);
      }`));
  });

  it(`every async entry point reads its own copy of inputs on a resizable ArrayBuffer (${RUNS} runs each)`, () => {
    expectClean(child(`
      const C = 8, A = 1 << 17, n = A * C;
      const ref = new Float32Array(n).map((_, i) => (i % 13) - 6);
      const expected = {
        bn: bn.batchNormalization({ data: ref, shape: [A, C] }, 1, 2, 0.5, 3, 1e-3).data,
        fused: bn.fusedBatchNorm({ data: ref, shape: [A, C] }, 2, 1).y.data,
        grad: bn.batchNormalizationGrad({ data: ref, shape: [A, C] }, { data: ref, shape: [A, C] }, 2,
          { mean: new Float32Array(C).fill(0.5), invStd: new Float32Array(C).fill(0.25) }).dx.data,
      };
      const same = (a, b) => a.length === b.length && a.every((v, i) => Object.is(v, b[i]));
      for (let r = 0; r < ${RUNS}; r++) {
        for (const op of ['bn', 'fused', 'grad']) {
          const buf = new ArrayBuffer(4 * n, { maxByteLength: 4 * n });
          const x = new Float32Array(buf);
          x.set(ref);
          const t = { data: x, shape: [A, C] };
          const p = op === 'bn' ? bn.batchNormalizationAsync(t, 1, 2, 0.5, 3, 1e-3).then((y) => y.data)
            : op === 'fused' ? bn.fusedBatchNormAsync(t, 2, 1).then((f) => f.y.data)
            : bn.batchNormalizationGradAsync(t, t, 2, { mean: new Float32Array(C).fill(0.5), invStd: new Float32Array(C).fill(0.25) }).then((g) => g.dx.data);
          buf.resize(r % 2 ? 4 : 0);
          const y = await p;
          if (!same(y, expected[op])) throw new Error(op + ' run ' + r + ': result differs');
        }
      }`));
  });

  it(`an out on a resizable ArrayBuffer shrunk mid-call: a TypeError naming it, no crash (${RUNS} runs, batchNormalizationAsync, momentsAsync, gradient)`, () => {
    const out = expectClean(child(`
      const n = 1 << 22;
      const x = { data: new Float32Array(n).fill(2), shape: [n / 4, 4] };
      let rejected = 0;
      for (let r = 0; r < ${RUNS}; r++) {
        for (const op of ['bn', 'moments', 'grad']) {
          const buf = new ArrayBuffer(4 * n, { maxByteLength: 4 * n });
          const o = r % 2 ? new Float32Array(buf) : new Float32Array(buf, 0, n);
          const p = op === 'bn' ? bn.batchNormalizationAsync(x, 0, 1, null, null, 0, { out: o })
            : op === 'moments' ? bn.momentsAsync({ data: x.data, shape: [1, n] }, [0], { out: { mean: o, variance: new Float32Array(n) } })
            : bn.batchNormalizationGradAsync(x, x, 1, { mean: new Float32Array(4), invStd: new Float32Array(4).fill(1) }, { out: o });
          buf.resize(r % 4 < 2 ? 2 * n : 0);
          try {
            await p;
            throw new Error(op + ' run ' + r + ': resolved although out shrank');
          } catch (e) {
            if (!(e instanceof TypeError) || !/(options\\.out|options\\.out\\.mean) was detached, transferred or resized/.test(e.message)) throw e;
            rejected++;
          }
        }
      }
      process.stdout.write('rejected ' + rejected);`));
    assert.match(out, new RegExp(`rejected ${RUNS * 3}`));
  });

  it(`growable SharedArrayBuffers grown mid-call (x and out): correct results (${RUNS} runs)`, () => {
    expectClean(child(`
      const n = 1 << 20;
      for (let r = 0; r < ${RUNS}; r++) {
        const xb = new SharedArrayBuffer(4 * n, { maxByteLength: 8 * n });
        const ob = new SharedArrayBuffer(4 * n, { maxByteLength: 8 * n });
        const x = new Float32Array(xb).fill(3);             // length-tracking
        const out = r % 2 ? new Float32Array(ob, 0, n) : new Float32Array(ob);  // fixed / length-tracking
        const p = bn.batchNormalizationAsync({ data: x, shape: [n] }, 1, 4, null, null, 0, { out });
        xb.grow(8 * n);
        ob.grow(8 * n);
        const y = await p;
        if (y.data !== out || out[0] !== 1 || out[n - 1] !== 1 || (r % 2 === 0 && out[n] !== 0)) throw new Error('run ' + r + ': ' + out[0]);
      }`));
  });

  it(`an out transferred during an async call, then collected: a TypeError, no write to freed memory (${RUNS} runs per op)`, () => {
    const out = expectClean(child(`
      const n = 1 << 22;
      const x = { data: new Float32Array(n).fill(2), shape: [n / 4, 4] };
      let rejected = 0;
      for (let r = 0; r < ${RUNS}; r++) {
        for (const op of ['bn', 'moments', 'grad', 'fused']) {
          const o = new Float32Array(n);
          const mean = new Float32Array(n / 4);
          const p = op === 'bn' ? bn.batchNormalizationAsync(x, 0, 1, null, null, 0, { out: o })
            : op === 'moments' ? bn.momentsAsync({ data: x.data, shape: [4, n / 4] }, [0], { out: { mean, variance: new Float32Array(n / 4) } })
            : op === 'grad' ? bn.batchNormalizationGradAsync(x, x, 1, { mean: new Float32Array(4), invStd: new Float32Array(4).fill(1) }, { out: o })
            : bn.fusedBatchNormAsync(x, 1, 0, { out: o });
          // The transferred copy is dropped at once and collected: its memory is freed.
          if (op === 'moments') structuredClone(mean.buffer, { transfer: [mean.buffer] });
          else structuredClone(o.buffer, { transfer: [o.buffer] });
          gc();
          try {
            await p;
            throw new Error(op + ' run ' + r + ': resolved although out was transferred');
          } catch (e) {
            if (!(e instanceof TypeError) || !/was detached, transferred or resized/.test(e.message)) throw e;
            rejected++;
          }
          gc();
        }
      }
      process.stdout.write('rejected ' + rejected);`));
    assert.match(out, new RegExp(`rejected ${RUNS * 4}`));
  });

  it('an out that stays intact gets the result (async, caller-provided out of every op)', async () => {
    const x = { data: randn(64 * 8, 3), shape: [64, 8] };
    const saved = { mean: new Float32Array(8).fill(0.1), invStd: new Float32Array(8).fill(2) };
    const out = new Float32Array(64 * 8);
    const y = await batchNormalizationAsync(x, 0.5, 2, 1, 3, 1e-3, { out });
    assert.equal(y.data, out);
    assert.deepEqual(out, batchNormalization(x, 0.5, 2, 1, 3, 1e-3).data);
    const g = await batchNormalizationGradAsync(x, x, 2, saved, { out });
    assert.equal(g.dx.data, out);
    assert.deepEqual(out, batchNormalizationGrad(x, x, 2, saved).dx.data);
    const m = { mean: new Float32Array(8), variance: new Float32Array(8) };
    const r = await momentsAsync(x, [0], { out: m });
    assert.equal(r.mean.data, m.mean);
    assert.deepEqual(m.variance, moments(x, [0]).variance.data);
    // in place, async
    const xi = { data: x.data.slice(), shape: x.shape };
    await batchNormalizationAsync(xi, 0.5, 2, 1, 3, 1e-3, { out: xi.data });
    assert.deepEqual(xi.data, batchNormalization(x, 0.5, 2, 1, 3, 1e-3).data);
  });

  it('sync calls accept views on resizable and growable buffers (no JavaScript runs during them)', () => {
    const buf = new (ArrayBuffer as unknown as new (n: number, o: object) => ArrayBuffer)(4 * 16, { maxByteLength: 4 * 64 });
    const x = new Float32Array(buf);
    x.set(randn(16, 4));
    const fixed = x.slice();
    assert.deepEqual(moments({ data: x, shape: [4, 4] }, [0]).mean.data, moments({ data: fixed, shape: [4, 4] }, [0]).mean.data);
    const ob = new (SharedArrayBuffer as unknown as new (n: number, o: object) => SharedArrayBuffer)(4 * 16, { maxByteLength: 4 * 64 });
    const out = new Float32Array(ob);
    batchNormalization({ data: x, shape: [16] }, 0, 1, null, null, 0, { out });
    assert.deepEqual(out, fixed);
  });
});

describe('overlap is judged by memory, for every op and output', () => {
  const C = 4;
  const mk = () => ({ data: randn(16 * C, 5), shape: [16, C] });
  const saved = () => ({ mean: new Float32Array(C).fill(0.2), invStd: new Float32Array(C).fill(1.5) });

  it('gradient: options.out overlapping x, dy, scale or the saved statistics is a RangeError; nothing is written', async () => {
    for (const grad of [batchNormalizationGrad, fusedBatchNormGrad]) {
      const x = mk();
      const dy = mk();
      const before = x.data.slice();
      const big = new Float32Array(16 * C + 8);
      big.set(x.data, 4);
      const xs = { data: big.subarray(4, 4 + 16 * C), shape: x.shape };
      // out 4 elements into x
      const out = big.subarray(8, 8 + 16 * C);
      assert.throws(() => grad(dy, xs, 1, saved(), { out }), { name: 'RangeError', message: /batchNormalizationGrad: options\.out must not overlap x/ });
      assert.deepEqual(xs.data, before);
      assert.throws(() => grad(dy, x, 1, saved(), { out: dy.data }), { name: 'RangeError', message: /must not overlap dy/ });
      const scaleArr = new Float32Array(16 * C);
      assert.throws(() => grad(dy, x, scaleArr.subarray(0, C), saved(), { out: scaleArr }), { name: 'RangeError', message: /must not overlap scale/ });
      const s = saved();
      const host = new Float32Array(16 * C);
      host.set(s.mean);
      assert.throws(() => grad(dy, x, 1, { mean: host.subarray(0, C), invStd: s.invStd }, { out: host }), { name: 'RangeError', message: /must not overlap saved\.mean/ });
      assert.throws(() => grad(dy, x, 1, { mean: s.mean, invStd: host.subarray(0, C) }, { out: host }), { name: 'RangeError', message: /must not overlap saved\.invStd/ });
    }
    const x = mk();
    const before = x.data.slice();
    const big = new Float32Array(16 * C + 4);
    big.set(x.data);
    await assert.rejects(batchNormalizationGradAsync(mk(), { data: big.subarray(0, 16 * C), shape: x.shape }, 1, saved(), { out: big.subarray(4) }),
      { name: 'RangeError', message: /batchNormalizationGradAsync: options\.out must not overlap x/ });
    assert.deepEqual(big.subarray(0, 16 * C), before);
  });

  it('a SharedArrayBuffer back from a MessageChannel is the same memory: batchNormalization out shifted into x is refused', async () => {
    const n = 65536;
    const sab = new SharedArrayBuffer(4 * (n + 1024));
    const x = new Float32Array(sab, 0, n);
    x.set(randn(n, 6));
    const before = x.slice();
    const out = new Float32Array(sameMemoryOtherObject(sab), 4 * 1024, n);
    assert.throws(() => batchNormalization({ data: x, shape: [n] }, 0, 1, null, null, 1e-3, { out }), { name: 'RangeError', message: /options\.out overlaps x\.data/ });
    await assert.rejects(batchNormalizationAsync({ data: x, shape: [n] }, 0, 1, null, null, 1e-3, { out }), { name: 'RangeError', message: /options\.out overlaps x\.data/ });
    assert.deepEqual(x, before);
    // exact in place through the other object is in-place use, and allowed
    const same = new Float32Array(sameMemoryOtherObject(sab), 0, n);
    batchNormalization({ data: x, shape: [n] }, 0, 1, null, null, 0, { out: same });
    assert.deepEqual(x, before);
    // a parameter through another object
    const mean = new Float32Array(sameMemoryOtherObject(sab), 0, n);
    assert.throws(() => batchNormalization({ data: new Float32Array(n), shape: [n] }, { data: mean, shape: [n] }, 1, null, null, 0, { out: new Float32Array(sab, 4, n) }),
      { name: 'RangeError', message: /must not overlap mean/ });
  });

  it('moments: out.mean inside x through another SharedArrayBuffer object is refused and x is untouched', async () => {
    const sab = new SharedArrayBuffer(4 * 64);
    const x = new Float32Array(sab);
    x.set(randn(64, 7));
    const before = x.slice();
    const mean = new Float32Array(sameMemoryOtherObject(sab), 0, 8);
    const out = { mean, variance: new Float32Array(8) };
    assert.throws(() => moments({ data: x, shape: [8, 8] }, [0], { out }), { name: 'RangeError', message: /options\.out must not overlap x\.data/ });
    await assert.rejects(momentsAsync({ data: x, shape: [8, 8] }, [0], { out }), { name: 'RangeError', message: /must not overlap x\.data/ });
    const both = new SharedArrayBuffer(4 * 8);
    assert.throws(() => moments({ data: randn(64, 1), shape: [8, 8] }, [0], {
      out: { mean: new Float32Array(both), variance: new Float32Array(sameMemoryOtherObject(both)) },
    }), { name: 'RangeError', message: /out\.mean and options\.out\.variance overlap/ });
    assert.deepEqual(x, before);
  });

  it('fusedBatchNorm names itself in its overlap errors', async () => {
    const x = mk();
    const scale = new Float32Array(C + 4);
    assert.throws(() => fusedBatchNorm(x, scale.subarray(0, C), 0, { out: scale.subarray(0, 16 * C - 60) as never }), RangeError);
    const big = new Float32Array(16 * C + 4);
    big.set(x.data);
    const xs = { data: big.subarray(0, 16 * C), shape: x.shape };
    assert.throws(() => fusedBatchNorm(xs, 1, 0, { out: big.subarray(4) }), { name: 'RangeError', message: /^fusedBatchNorm: options\.out overlaps x\.data/ });
    await assert.rejects(fusedBatchNormAsync(xs, 1, 0, { out: big.subarray(4) }), { name: 'RangeError', message: /^fusedBatchNormAsync: options\.out overlaps x\.data/ });
  });

  it('the native checks refuse overlapping outputs of every op by address, bypassing lib/', () => {
    const sab = new SharedArrayBuffer(4 * 96);
    const x = new Float32Array(sab, 0, 64);
    const alias = (off: number, n: number) => new Float32Array(sameMemoryOtherObject(sab), 4 * off, n);
    const mc = (o: Partial<MomentsCall>): MomentsCall => ({
      x, shape: [8, 8], axes: [0], correction: 0, backend: 0, mean: new Float32Array(8), variance: new Float32Array(8), ...o,
    });
    assert.throws(() => native.moments(mc({ mean: alias(4, 8) })), { name: 'RangeError', message: /moments: options\.mean overlaps options\.x/ });
    assert.throws(() => native.moments(mc({ x: new Float32Array(64), mean: alias(0, 8), variance: alias(4, 8) })),
      { name: 'RangeError', message: /options\.mean overlaps options\.variance/ });
    assert.throws(() => native.moments(mc({ mean64: new Float64Array(sameMemoryOtherObject(sab), 4 * 60, 8), m2: new Float64Array(8) })),
      { name: 'RangeError', message: /options\.mean64 overlaps options\.x/ });
    const m2 = new Float64Array(8);
    assert.throws(() => native.moments(mc({ mean64: m2, m2 })), { name: 'RangeError', message: /options\.mean64 overlaps options\.m2/ });
    const bn = (y: Float32Array, mean: Float32Array): BatchNormalizationCall => ({
      x: { data: x, shape: [64] }, mean: { data: mean, shape: [mean.length] }, variance: { data: new Float32Array([1]), shape: [1] },
      offset: null, scale: null, epsilon: 0, backend: 0, y: { data: y, shape: [64] },
    });
    assert.throws(() => native.batchNormalization(bn(alias(1, 64), new Float32Array([0]))), { name: 'RangeError', message: /options\.y overlaps options\.x/ });
    assert.throws(() => native.batchNormalization(bn(new Float32Array(sab, 4 * 64, 32), new Float32Array([0]))), RangeError); // length mismatch
    // y disjoint from x but over a parameter: x is 32 elements here, y the next 64.
    const y = new Float32Array(sab, 4 * 32, 64);
    assert.throws(() => native.batchNormalization({ ...bn(y, alias(70, 1)), x: { data: x.subarray(0, 32), shape: [32] }, y: { data: y, shape: [2, 32] } }),
      { name: 'RangeError', message: /options\.y overlaps options\.mean/ });
    const sums = (sumDy: Float64Array, sumDyXmu: Float64Array, savedMean: Float32Array<ArrayBufferLike> = new Float32Array(8)) => ({
      dy: x, x: new Float32Array(64), shape: [8, 8], axis: 1, savedMean, backend: 0 as const, sumDy, sumDyXmu,
    });
    const f64 = (off: number) => new Float64Array(sameMemoryOtherObject(sab), 8 * off, 8);
    assert.throws(() => native.channelGradSums(sums(f64(2), new Float64Array(8))), { name: 'RangeError', message: /channelGradSums: options\.sumDy overlaps options\.dy in memory/ });
    assert.throws(() => native.channelGradSums(sums(new Float64Array(8), f64(40), alias(80, 8))),
      { name: 'RangeError', message: /channelGradSums: options\.sumDyXmu overlaps options\.savedMean in memory/ });
    assert.throws(() => native.channelGradSums(sums(f64(36), f64(38))), { name: 'RangeError', message: /options\.sumDy overlaps options\.sumDyXmu/ });
  });

  it('memoryRelation compares addresses', () => {
    const sab = new SharedArrayBuffer(64);
    const a = new Float32Array(sab, 0, 4);
    const other = sameMemoryOtherObject(sab);
    assert.equal(native.memoryRelation(a, new Float32Array(other, 0, 4)), 'same');
    assert.equal(native.memoryRelation(a, new Uint8Array(other, 15, 1)), 'overlap');
    assert.equal(native.memoryRelation(a, new Float32Array(other, 16, 4)), 'disjoint');
    assert.equal(native.memoryRelation(a, new Float32Array(4)), 'disjoint');
  });
});

describe('the gradient\'s scratch memory does not grow with the batch', function () {
  this.timeout(120000);

  it('channels-last [1024, 16384] (64 MiB): peak RSS grows by less than 48 MiB over the inputs (child process)', () => {
    const out = expectClean(child(`
      const A = 1024, C = 16384, n = A * C;
      const x = { data: new Float32Array(n).fill(1), shape: [A, C] };
      const dy = { data: new Float32Array(n).fill(0.5), shape: [A, C] };
      const dx = new Float32Array(n).fill(0);
      const saved = { mean: new Float32Array(C).fill(0.5), invStd: new Float32Array(C).fill(2) };
      bn.batchNormalizationGrad({ data: dy.data.subarray(0, 4 * C), shape: [4, C] }, { data: x.data.subarray(0, 4 * C), shape: [4, C] }, 1, saved);
      gc();
      const before = process.resourceUsage().maxRSS;
      const g = bn.batchNormalizationGrad(dy, x, 1, saved, { out: dx });
      const grew = (process.resourceUsage().maxRSS - before) / 1024;
      if (!(g.dx.data[0] === -1 && g.dx.data[n - 1] === -1 && g.doffset.data[0] === 512)) throw new Error('wrong gradient ' + g.dx.data[0] + ' ' + g.doffset.data[0]);
      process.stdout.write('grew ' + grew.toFixed(1) + ' MiB');
      if (grew >= 48) throw new Error('peak RSS grew by ' + grew.toFixed(1) + ' MiB');`));
    assert.match(out, /grew \d/);
  });
});

describe('argument edge cases', () => {
  it('null options are TypeErrors naming the function (sufficientStatistics, finalizeMoments, forward, explain)', () => {
    const x = { data: randn(16, 1), shape: [4, 4] };
    assert.throws(() => sufficientStatistics(x, [0], null as never), { name: 'TypeError', message: /^sufficientStatistics: options must be an object.*got null/ });
    const s = sufficientStatistics(x, [0]);
    assert.throws(() => finalizeMoments(s, null as never), { name: 'TypeError', message: /^finalizeMoments: options must be an object/ });
    assert.throws(() => new BatchNormalization().forward(x, null as never), { name: 'TypeError', message: /^BatchNormalization\.forward: options must be an object/ });
    assert.throws(() => explain('moments', null as never), { name: 'TypeError', message: /^explain: options must be an object/ });
  });

  it('a shape entry beyond Number.MAX_SAFE_INTEGER is a RangeError that says so', () => {
    assert.throws(() => moments({ data: new Float32Array(0), shape: [0, 2 ** 53] }, [0]), {
      name: 'RangeError', message: /moments: x\.shape\[1\] = 9007199254740992 is larger than Number\.MAX_SAFE_INTEGER/,
    });
  });

  it('a huge output from an empty input is a RangeError naming the function, not V8\'s raw message', async () => {
    const x = { data: new Float32Array(0), shape: [0, 2 ** 45] };
    assert.throws(() => moments(x, [0]), { name: 'RangeError', message: /^moments: the mean would have 35184372088832 elements/ });
    await assert.rejects(momentsAsync(x, [0]), { name: 'RangeError', message: /^momentsAsync: the mean would have/ });
    assert.throws(() => sufficientStatistics(x, [0]), { name: 'RangeError', message: /^sufficientStatistics: mean would have/ });
  });

  it('training on x [4, 0] is a RangeError, and lastBatchCount stays a number', () => {
    const layer = new BatchNormalization();
    assert.throws(() => layer.forward({ data: new Float32Array(0), shape: [4, 0] }, { training: true }), { name: 'RangeError', message: /0 channels/ });
    assert.equal(layer.state().lastBatchCount, null);
  });

  it('cudnnProbe: a FIFO is refused without opening it, NUL bytes are a TypeError, the argument is named as a path', function () {
    this.timeout(30000);
    assert.throws(() => cudnnProbe('\0x'), { name: 'TypeError', message: /cudnnProbe: path must not contain NUL/ });
    // A build without CUDA (the sanitizer build) has no loader to probe.
    if (/built without CUDA/.test(cudnnProbe('/nonexistent').reason ?? '')) { this.test!.title += ' — FIFO part skipped: built without CUDA'; return; }
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bn-fifo-'));
    try {
      const fifo = path.join(dir, 'libcudnn.so.9');
      const mk = spawnSync('mkfifo', [fifo]);
      if (mk.status !== 0) { this.skip(); }
      // In a child: a probe that blocks on the FIFO must fail by timeout, not hang mocha.
      for (const arg of [fifo, dir]) {
        const out = expectClean(child(`process.stdout.write(JSON.stringify(bn.cudnnProbe(${JSON.stringify(arg)})));`, 15000));
        const r = JSON.parse(out.replace(/\nDONE$/, ''));
        assert.equal(r.loaded, false);
        assert.match(r.reason, /tried path .*not a regular file or a directory/);
        assert.doesNotMatch(r.reason, /BATCHNORM_CUDNN_PATH/);
      }
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('layer state integrity', () => {
  const trained = () => {
    const layer = new BatchNormalization({ convention: 'pytorch', axis: -1 });
    layer.forward({ data: randn(32 * 3, 8), shape: [32, 3] }, { training: true });
    return layer;
  };

  it('loadState validates every field and names it', () => {
    const good = trained().state();
    const bad: [string, (s: Record<string, unknown>) => void, RegExp][] = [
      ['string element', (s) => { (s.runningMean as unknown[])[1] = 'abc'; }, /state\.runningMean\[1\] must be a number, got the string "abc"/],
      ['object element', (s) => { (s.gamma as unknown[])[0] = {}; }, /state\.gamma\[0\] must be a number/],
      ['[5] for 5', (s) => { (s.beta as unknown[])[2] = [5]; }, /state\.beta\[2\] must be a number, got an Array/],
      ['negative variance', (s) => { (s.runningVariance as number[])[0] = -1; }, /state\.runningVariance\[0\] = -1 is negative/],
      ['steps a string', (s) => { s.steps = '3'; }, /state\.steps must be a non-negative integer/],
      ['steps fractional', (s) => { s.steps = 1.5; }, /state\.steps must be a non-negative integer/],
      ['lastBatchCount a string', (s) => { s.lastBatchCount = '32'; }, /state\.lastBatchCount must be an integer >= 2 or null/],
      ['channels 0', (s) => { s.channels = 0; }, /state\.channels must be a positive integer or null/],
      ['short vector', (s) => { s.runningMean = [0]; }, /state\.runningMean has 1 elements but state\.channels is 3/],
      ['missing running mean', (s) => { s.runningMean = null; }, /state\.runningMean and state\.runningVariance are required/],
      ['spec missing', (s) => { s.spec = null; }, /state\.spec must be an object/],
      ['unknown convention', (s) => { s.convention = '__proto__'; }, /state\.convention must be one of/],
    ];
    for (const [what, mutate, message] of bad) {
      const s = JSON.parse(JSON.stringify(good));
      mutate(s);
      const layer = new BatchNormalization({ convention: 'pytorch', axis: -1 });
      assert.throws(() => layer.loadState(s), (e: Error) => (e instanceof TypeError || e instanceof RangeError) &&
        /^BatchNormalization\.loadState: /.test(e.message) && message.test(e.message), what);
      assert.equal(layer.state().channels, null, `${what}: a rejected state changed the layer`);
    }
    assert.throws(() => new BatchNormalization().loadState(null as never), { name: 'TypeError', message: /state must be a batchnorm layer state object, got null/ });
  });

  it('NaN and ±Infinity running statistics survive a JSON round trip', () => {
    const layer = trained();
    const s = layer.state();
    s.runningMean![0] = NaN;
    s.runningMean![1] = Infinity;
    s.runningVariance![2] = Infinity;
    layer.loadState(s);
    const json = JSON.parse(JSON.stringify(layer.state()));
    const again = new BatchNormalization({ convention: 'pytorch', axis: -1 });
    again.loadState(json);
    const r = again.runningStatistics();
    assert.ok(Number.isNaN(r.mean![0]));
    assert.equal(r.mean![1], Infinity);
    assert.equal(r.variance![2], Infinity);
    assert.deepEqual(Array.from(r.mean!.subarray(2)), Array.from(layer.runningStatistics().mean!.subarray(2)));
    // training on Infinity diverges; the divergence is still visible after save/load
    const d = new BatchNormalization({ axis: -1 });
    const x = randn(16 * 2, 9);
    x[0] = Infinity;
    d.forward({ data: x, shape: [16, 2] }, { training: true });
    const back = new BatchNormalization({ axis: -1 });
    back.loadState(JSON.parse(JSON.stringify(d.state())));
    assert.ok(!Number.isFinite(back.runningStatistics().mean![0]));
  });

  it('convertState rejects malformed states and unknown conventions with the library\'s errors', () => {
    const s = trained().state();
    for (const to of ['__proto__', 'toString', 'constructor', 42]) {
      assert.throws(() => BatchNormalization.convertState(s, to as never), { name: 'TypeError', message: /^BatchNormalization\.convertState: to must be one of/ });
    }
    assert.throws(() => BatchNormalization.convertState(null as never, 'keras'), { name: 'TypeError', message: /^BatchNormalization\.convertState: state must be/ });
    const broken = JSON.parse(JSON.stringify(s));
    broken.runningVariance[0] = 'x';
    assert.throws(() => BatchNormalization.convertState(broken, 'keras'), { name: 'TypeError', message: /^BatchNormalization\.convertState: state\.runningVariance\[0\]/ });
    // non-finite statistics convert and stay non-finite
    const nf = JSON.parse(JSON.stringify(s));
    nf.runningVariance[0] = 'NaN';
    const k = BatchNormalization.convertState(nf, 'keras');
    assert.equal(k.runningVariance![0], 'NaN' as never);
  });
});
