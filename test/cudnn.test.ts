// The cuDNN backend. On any machine: the loader's failure paths give the right
// reasons (no library, a bad BATCHNORM_CUDNN_PATH, a fake library missing symbols, a fake
// that is too old), nothing crashes, and 'auto' falls back with a reason. With a GPU and
// cuDNN (scripts/gpu-check.sh): cuDNN vs our CUDA kernels vs the CPU on random inputs —
// inference, training forward (y, batch, running and saved statistics) and backward, in
// both layouts.
import * as assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import {
  BackendError, DeviceTensor, backends, batchNormalization, batchNormalizationGrad, cudnnProbe, explain, fusedBatchNorm,
  info, tensor,
} from '../lib/index';
import { assertClose, product, randn } from './helpers';

const cuda = backends().find((b) => b.name === 'cuda')!;
const cudnn = backends().find((b) => b.name === 'cudnn')!;
const compiled = info().cuda.compiled;

/** A C compiler for the fake libraries, or null. */
function findCc(): string | null {
  for (const cc of [process.env.CC, 'cc', 'gcc', 'clang']) {
    if (!cc) continue;
    const r = spawnSync(cc, ['--version'], { stdio: 'ignore' });
    if (r.status === 0) return cc;
  }
  return null;
}

const SYMBOLS = [
  'cudnnGetErrorString', 'cudnnCreate', 'cudnnDestroy', 'cudnnSetStream', 'cudnnCreateTensorDescriptor',
  'cudnnDestroyTensorDescriptor', 'cudnnSetTensorNdDescriptor', 'cudnnDeriveBNTensorDescriptor',
  'cudnnBatchNormalizationForwardInference', 'cudnnBatchNormalizationForwardTraining',
  'cudnnBatchNormalizationBackward',
];

const tempDirs: string[] = [];
after(() => tempDirs.forEach((d) => fs.rmSync(d, { recursive: true, force: true })));

/** Builds a fake libcudnn.so.9 in its own temp directory; returns its path. */
function fakeLibrary(cc: string, version: number, exportAll: boolean): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fake-cudnn-'));
  tempDirs.push(dir);
  const src = path.join(dir, 'fake.c');
  const lines = [`#include <stddef.h>`, `size_t cudnnGetVersion(void) { return ${version}; }`];
  // Stubs that are never called: the loader only resolves them.
  if (exportAll) for (const s of SYMBOLS) lines.push(`int ${s}(void) { return 0; }`);
  fs.writeFileSync(src, lines.join('\n') + '\n');
  const lib = path.join(dir, 'libcudnn.so.9');
  execFileSync(cc, ['-shared', '-fPIC', '-o', lib, src]);
  return lib;
}

describe('cuDNN loader (any machine, no GPU needed)', function () {
  before(function () {
    if (!compiled) this.skip();  // the loader is compiled with the CUDA backend
  });

  it('a missing library is a reason, not a crash', function () {
    if (process.env.BATCHNORM_CUDNN_PATH) this.skip();
    const r = cudnnProbe();
    if (r.loaded) this.skip();  // this machine has cuDNN on the default path
    assert.equal(r.loaded, false);
    assert.match(r.reason!, /^libcudnn\.so\.9 not found \(tried libcudnn\.so\.9 on the default library search path: .*\); set BATCHNORM_CUDNN_PATH/);
  });

  it('a bad path is named in the reason (as an argument, not as BATCHNORM_CUDNN_PATH)', () => {
    const r = cudnnProbe('/nonexistent');
    assert.equal(r.loaded, false);
    assert.equal(r.path, '/nonexistent');
    assert.match(r.reason!, /^libcudnn\.so\.9 not found \(tried path \/nonexistent: /);
    const d = cudnnProbe('/nonexistent-dir/');
    assert.match(d.reason!, /not found/);
  });

  it('a directory given as the path is searched for libcudnn.so.9', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'empty-cudnn-'));
    tempDirs.push(dir);
    const r = cudnnProbe(dir);
    assert.equal(r.loaded, false);
    assert.equal(r.path, path.join(dir, 'libcudnn.so.9'));
    assert.match(r.reason!, /not found \(tried path /);
  });

  it('a library missing a symbol says which (fake libcudnn.so.9 built here)', function () {
    const cc = findCc();
    if (!cc) { this.test!.title += ' — skipped: no C compiler (cc/gcc/clang) to build the fake library'; this.skip(); }
    const lib = fakeLibrary(cc!, 90100, false);
    const r = cudnnProbe(lib);
    assert.equal(r.loaded, false);
    assert.equal(r.version, 90100);
    assert.equal(r.reason, `symbol cudnnGetErrorString missing from ${lib}`);
    // Through its directory, too.
    assert.equal(cudnnProbe(path.dirname(lib)).reason, `symbol cudnnGetErrorString missing from ${lib}`);
  });

  it('every symbol present and version 9.1 loads (fake)', function () {
    const cc = findCc();
    if (!cc) { this.test!.title += ' — skipped: no C compiler'; this.skip(); }
    const r = cudnnProbe(fakeLibrary(cc!, 90100, true));
    assert.deepEqual({ loaded: r.loaded, version: r.version, reason: r.reason }, { loaded: true, version: 90100, reason: null });
  });

  it('cuDNN 8 is too old (fake exporting everything, cudnnGetVersion() = 8000)', function () {
    const cc = findCc();
    if (!cc) { this.test!.title += ' — skipped: no C compiler'; this.skip(); }
    const lib = fakeLibrary(cc!, 8000, true);
    const r = cudnnProbe(lib);
    assert.equal(r.loaded, false);
    assert.equal(r.version, 8000);
    assert.equal(r.reason, `cuDNN 8.0.0 is too old (cudnnGetVersion() = 8000 from ${lib}); the cuDNN path needs cuDNN 9`);
  });

  it('backends() reports BATCHNORM_CUDNN_PATH failures (child process), the CUDA reason first', function () {
    this.timeout(20000);
    const script = `const b = require(${JSON.stringify(path.join(__dirname, '..', 'lib', 'index.js'))});` +
      `process.stdout.write(JSON.stringify(b.backends().find((x) => x.name === 'cudnn')))`;
    const out = execFileSync(process.execPath, ['-e', script], {
      env: { ...process.env, BATCHNORM_CUDNN_PATH: '/nonexistent' }, encoding: 'utf8',
    });
    const c = JSON.parse(out) as { available: boolean; reason: string };
    assert.equal(c.available, false);
    if (!cuda.available) assert.equal(c.reason, `needs the CUDA backend: ${cuda.reason}`);
    else assert.match(c.reason, /^libcudnn\.so\.9 not found \(tried BATCHNORM_CUDNN_PATH=\/nonexistent: /);
  });
});

describe('cuDNN selection (any machine)', () => {
  it('backends() lists cudnn with a reason when unavailable, not "not part of this version"', () => {
    if (!cudnn.available) {
      assert.ok(cudnn.reason && cudnn.reason.length > 10);
      assert.doesNotMatch(cudnn.reason!, /not part of this version/);
      if (!cuda.available) assert.equal(cudnn.reason, `needs the CUDA backend: ${cuda.reason}`);
    }
  });

  it("'auto' with host data never picks cudnn, and says why", () => {
    const e = explain('batchNormalization', { shape: [2, 3, 4, 4], dataFormat: 'NCHW' });
    assert.equal(e.backend, 'cpu');
    assert.match(e.reason, /cudnn: /);
  });

  it('an unavailable cudnn requested explicitly fails with ERR_BACKEND_UNAVAILABLE and the reason', function () {
    if (cudnn.available) this.skip();
    assert.throws(() => explain('batchNormalization', { backend: 'cudnn' }), (e: unknown) =>
      e instanceof BackendError && e.code === 'ERR_BACKEND_UNAVAILABLE' && e.message.includes(cudnn.reason!));
    assert.throws(() => batchNormalization(tensor([1, 2, 3, 4], [1, 1, 2, 2]), 0, 1, null, null, 1e-3, { backend: 'cudnn' }),
      (e: unknown) => e instanceof BackendError && e.code === 'ERR_BACKEND_UNAVAILABLE' && e.message.includes(cudnn.reason!));
  });

  it('training ops on DeviceTensors: without CUDA, a BackendError with the CUDA reason', function () {
    if (cuda.available) this.skip();
    for (const op of ['fusedBatchNorm', 'batchNormalizationGrad'] as const) {
      assert.throws(() => explain(op, { onDevice: true, shape: [2, 3, 4, 4], dataFormat: 'NCHW' }), (e: unknown) =>
        e instanceof BackendError && e.code === 'ERR_BACKEND_UNAVAILABLE' && e.message.includes(cuda.reason!));
    }
  });

  it('with CUDA: auto follows the measured table (empty: our kernels) and says why cudnn is not used', function () {
    if (!cuda.available) this.skip();
    for (const op of ['fusedBatchNorm', 'batchNormalizationGrad'] as const) {
      const r = explain(op, { onDevice: true, shape: [8, 16, 4, 4], dataFormat: 'NCHW' });
      assert.equal(r.backend, 'cuda');
      assert.match(r.reason, /no measured table entry for this shape; our kernels by default/);
      if (!cudnn.available) assert.ok(r.reason.includes(cudnn.reason!), r.reason);
    }
    if (cudnn.available) {
      const r3 = explain('fusedBatchNorm', { onDevice: true, shape: [8, 16, 4], dataFormat: 'NCHW' });
      assert.equal(r3.backend, 'cuda');
      assert.match(r3.reason, /x has rank 3; cuDNN batch norm takes rank 4 or 5/);
      const one = explain('fusedBatchNorm', { onDevice: true, shape: [1, 16, 1, 1], dataFormat: 'NCHW' });
      assert.match(one.reason, /fewer than 2 values per channel/);
      const frozen = explain('batchNormalizationGrad', { onDevice: true, shape: [8, 16, 4, 4], dataFormat: 'NCHW', isTraining: false });
      assert.match(frozen.reason, /cuDNN's backward assumes batch statistics/);
      const mid = explain('batchNormalization', { onDevice: true, shape: [8, 16, 4, 4], axis: 2 });
      assert.equal(mid.backend, 'cuda');
      assert.match(mid.reason, /not per-channel vectors of axis 1 \(NCHW\) or the last axis/);
    }
  });
});

// ---- GPU agreement (scripts/gpu-check.sh) ---------------------------------------------

const CASES: { shape: number[]; dataFormat: 'NCHW' | 'NHWC' }[] = [
  { shape: [4, 8, 5, 6], dataFormat: 'NCHW' },
  { shape: [4, 5, 6, 8], dataFormat: 'NHWC' },
  { shape: [2, 4, 3, 5, 6], dataFormat: 'NCHW' },
  { shape: [2, 3, 5, 6, 4], dataFormat: 'NHWC' },
];

/** Tolerance for cuDNN vs CPU: different reduction orders, float32 throughout. */
const tol = (scaleOf: number) => (_i: number, r: number) => 2e-5 * Math.abs(r) + 2e-5 * scaleOf;

const gpuTitle = cudnn.available
  ? 'cuDNN vs CUDA vs CPU agreement (GPU)'
  : `cuDNN vs CUDA vs CPU agreement (GPU) — skipped: ${cudnn.reason}`;

describe(gpuTitle, function () {
  before(function () {
    if (!cudnn.available) {
      if (process.env.BATCHNORM_REQUIRE_GPU === '1' && process.env.BATCHNORM_REQUIRE_CUDNN !== '0') {
        throw new Error(`cudnn unavailable under BATCHNORM_REQUIRE_GPU=1: ${cudnn.reason}`);
      }
      this.skip();
    }
  });

  for (const [k, c] of CASES.entries()) {
    const label = `${c.dataFormat} ${JSON.stringify(c.shape)}`;
    const axis = c.dataFormat === 'NCHW' ? 1 : c.shape.length - 1;
    const C = c.shape[axis];
    const paramShape = c.shape.slice(axis).map((d, i) => (i === 0 ? d : 1));
    const x = randn(product(c.shape), 100 + k, 3, 2);
    const scale = randn(C, 200 + k, 1, 0.5);
    const offset = randn(C, 300 + k);
    const runMean = randn(C, 400 + k);
    const runVar = Float32Array.from(randn(C, 500 + k), (v) => 1 + Math.abs(v));

    it(`inference ${label}: cudnn = cuda = cpu`, () => {
      const p = (d: Float32Array) => ({ data: d, shape: paramShape });
      const cpu = batchNormalization({ data: x, shape: c.shape }, p(runMean), p(runVar), p(offset), p(scale), 1e-3, { backend: 'cpu' });
      for (const b of ['cuda', 'cudnn'] as const) {
        const got = batchNormalization({ data: x, shape: c.shape }, p(runMean), p(runVar), p(offset), p(scale), 1e-3, { backend: b });
        assertClose(got.data, cpu.data, tol(1), `${b} host`);
      }
      const xd = DeviceTensor.upload({ data: x, shape: c.shape });
      const yd = batchNormalization(xd, p(runMean), p(runVar), p(offset), p(scale), 1e-3, { backend: 'cudnn' });
      assertClose(yd.download(), cpu.data, tol(1), 'cudnn device');
      xd.dispose();
      yd.dispose();
    });

    it(`training forward and backward ${label}: cudnn = cuda = cpu`, () => {
      const opts = { mean: runMean, variance: runVar, exponentialAvgFactor: 0.1, dataFormat: c.dataFormat, epsilon: 1e-3 };
      const cpu = fusedBatchNorm({ data: x, shape: c.shape }, scale, offset, { ...opts, backend: 'cpu' });
      const xd = DeviceTensor.upload({ data: x, shape: c.shape });
      for (const b of ['cuda', 'cudnn'] as const) {
        const r = fusedBatchNorm(xd, scale, offset, { ...opts, backend: b });
        const keys = ['y', 'batchMean', 'batchVariance', 'batchVarianceBiased', 'runningMean', 'runningVariance', 'savedMean', 'savedInvStd'] as const;
        for (const key of keys) assertClose(r[key].download(), cpu[key].data, tol(key === 'y' ? 1 : 3), `${b} ${key}`);
        for (const key of keys) r[key].dispose();
      }
      const dy = randn(product(c.shape), 600 + k);
      const gcpu = batchNormalizationGrad({ data: dy, shape: c.shape }, { data: x, shape: c.shape }, scale,
        { mean: cpu.savedMean, invStd: cpu.savedInvStd }, { dataFormat: c.dataFormat, backend: 'cpu' });
      const dyd = DeviceTensor.upload({ data: dy, shape: c.shape });
      const g = batchNormalizationGrad(dyd, xd, scale, { mean: cpu.savedMean.data, invStd: cpu.savedInvStd.data },
        { dataFormat: c.dataFormat, epsilon: 1e-3, backend: 'cudnn' });
      const n = product(c.shape) / C;
      assertClose(g.dx.download(), gcpu.dx.data, tol(1), 'cudnn dx');
      assertClose(g.dscale.download(), gcpu.dscale.data, tol(Math.sqrt(n)), 'cudnn dscale');
      assertClose(g.doffset.download(), gcpu.doffset.data, tol(Math.sqrt(n)), 'cudnn doffset');
      [xd, dyd, g.dx, g.dscale, g.doffset].forEach((t) => t.dispose());
    });
  }
});
