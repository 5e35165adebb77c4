// The NCCL communicator without a GPU: the loader's failure reasons (no library, a bad
// BATCHNORM_NCCL_PATH, a fake library missing a symbol, a fake that is too old or whose
// ncclGetVersion fails), the CUDA precondition, and argument errors — never a crash,
// never a hang. The collectives themselves need GPUs (scripts/nccl-check.sh).
import * as assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { native } from '../lib/binding';
import { BackendError, NcclCommunicator, backends, info, ncclProbe } from '../lib/index';

const cuda = backends().find((b) => b.name === 'cuda')!;
const compiled = info().cuda.compiled;

function findCc(): string | null {
  for (const cc of [process.env.CC, 'cc', 'gcc', 'clang']) {
    if (!cc) continue;
    if (spawnSync(cc, ['--version'], { stdio: 'ignore' }).status === 0) return cc;
  }
  return null;
}

const SYMBOLS = ['ncclGetErrorString', 'ncclGetUniqueId', 'ncclCommInitRank', 'ncclCommDestroy', 'ncclCommAbort',
  'ncclCommGetAsyncError', 'ncclAllReduce', 'ncclAllGather'];

const tempDirs: string[] = [];
after(() => tempDirs.forEach((d) => fs.rmSync(d, { recursive: true, force: true })));

/** A fake libnccl.so.2 whose ncclGetVersion reports `version` (and returns `result`). */
function fakeLibrary(cc: string, version: number, exportAll: boolean, result = 0): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fake-nccl-'));
  tempDirs.push(dir);
  const src = path.join(dir, 'fake.c');
  const lines = [`int ncclGetVersion(int* v) { *v = ${version}; return ${result}; }`];
  // Stubs that are never called here: the loader only resolves them.
  if (exportAll) for (const s of SYMBOLS) lines.push(`int ${s}(void) { return 0; }`);
  fs.writeFileSync(src, lines.join('\n') + '\n');
  const lib = path.join(dir, 'libnccl.so.2');
  execFileSync(cc, ['-shared', '-fPIC', '-o', lib, src]);
  return lib;
}

function withCc(ctx: Mocha.Context): string {
  const cc = findCc();
  if (!cc) { ctx.test!.title += ' — skipped: no C compiler (cc/gcc/clang) to build the fake library'; ctx.skip(); }
  return cc!;
}

describe('NCCL loader (any machine, no GPU needed)', function () {
  before(function () {
    if (!compiled) this.skip();  // the loader is compiled with the CUDA backend
  });

  it('a missing library is a reason, not a crash', function () {
    if (process.env.BATCHNORM_NCCL_PATH) this.skip();
    const r = ncclProbe();
    if (r.loaded) this.skip();  // this machine has NCCL on the default path
    assert.equal(r.loaded, false);
    assert.match(r.reason!, /^libnccl\.so\.2 not found \(tried libnccl\.so\.2 on the default library search path: .*\); install NCCL .*BATCHNORM_NCCL_PATH/);
  });

  it('a bad path, or a directory without the library, is named in the reason as the path it came from', () => {
    const r = ncclProbe('/nonexistent');
    assert.deepEqual([r.loaded, r.path], [false, '/nonexistent']);
    assert.match(r.reason!, /^libnccl\.so\.2 not found \(tried path \/nonexistent: /);
    assert.doesNotMatch(r.reason!, /BATCHNORM_NCCL_PATH/);
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'empty-nccl-'));
    tempDirs.push(dir);
    const d = ncclProbe(dir);
    assert.equal(d.path, path.join(dir, 'libnccl.so.2'));
    assert.match(d.reason!, /not found \(tried path /);
  });

  it('a FIFO is refused without opening it (no hang), and NUL bytes are a TypeError', function () {
    assert.throws(() => ncclProbe('\0x'), { name: 'TypeError', message: /ncclProbe: path must not contain NUL/ });
    if (/built without CUDA/.test(ncclProbe('/nonexistent').reason ?? '')) this.skip();
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fifo-nccl-'));
    tempDirs.push(dir);
    const fifo = path.join(dir, 'libnccl.so.2');
    if (spawnSync('mkfifo', [fifo]).status !== 0) this.skip();
    // In a child with a timeout: a probe that blocked on the FIFO would hang mocha.
    for (const arg of [fifo, dir]) {
      const res = spawnSync(process.execPath, ['-e', `process.stdout.write(JSON.stringify(require(${JSON.stringify(path.resolve(__dirname, '../lib/index.js'))}).ncclProbe(${JSON.stringify(arg)})))`],
        { encoding: 'utf8', timeout: 15000 });
      assert.equal(res.status, 0, `child failed or hung: ${res.signal ?? ''} ${res.stderr}`);
      const p = JSON.parse(res.stdout);
      assert.equal(p.loaded, false);
      assert.match(p.reason, /tried path .*not a regular file or a directory/);
    }
  });

  it('a library missing a symbol says which (fake libnccl.so.2 built here)', function () {
    const lib = fakeLibrary(withCc(this), 22703, false);
    const r = ncclProbe(lib);
    assert.deepEqual({ loaded: r.loaded, version: r.version, reason: r.reason },
      { loaded: false, version: 22703, reason: `symbol ncclGetErrorString missing from ${lib}` });
    assert.equal(ncclProbe(path.dirname(lib)).reason, `symbol ncclGetErrorString missing from ${lib}`);
  });

  it('every symbol present and version 2.27.3 loads (fake)', function () {
    const r = ncclProbe(fakeLibrary(withCc(this), 22703, true));
    assert.deepEqual({ loaded: r.loaded, version: r.version, reason: r.reason }, { loaded: true, version: 22703, reason: null });
  });

  it('NCCL 2.3 is too old (fake exporting everything, old version scheme 2300)', function () {
    const lib = fakeLibrary(withCc(this), 2300, true);
    const r = ncclProbe(lib);
    assert.equal(r.loaded, false);
    assert.equal(r.reason, `NCCL 2.3.0 is too old (ncclGetVersion() = 2300 from ${lib}); the NCCL communicator needs NCCL 2.4 or newer`);
  });

  it('a failing ncclGetVersion is a reason', function () {
    const lib = fakeLibrary(withCc(this), 0, true, 3);
    assert.equal(ncclProbe(lib).reason, `ncclGetVersion() failed with code 3 in ${lib}`);
  });

  it('a loadable NCCL without CUDA: info().nccl says so and every entry point is a BackendError (child process)', function () {
    if (cuda.available) this.skip();  // the precondition holds on a GPU machine
    this.timeout(20000);
    const lib = fakeLibrary(withCc(this), 22703, true);
    const script = `
      const b = require(${JSON.stringify(path.join(__dirname, '..', 'lib', 'index.js'))});
      const out = { nccl: b.info().nccl, probe: b.ncclProbe() };
      try { b.NcclCommunicator.uniqueId(); } catch (e) { out.id = { name: e.name, code: e.code, message: e.message }; }
      b.NcclCommunicator.create(new Uint8Array(128), 2, 1).then(() => { out.create = 'resolved'; },
        (e) => { out.create = { name: e.name, code: e.code, message: e.message }; })
        .then(() => process.stdout.write(JSON.stringify(out)));`;
    const out = JSON.parse(execFileSync(process.execPath, ['-e', script], {
      env: { ...process.env, BATCHNORM_NCCL_PATH: lib }, encoding: 'utf8',
    }));
    assert.deepEqual(out.probe, { loaded: true, version: 22703, path: lib, reason: null });
    assert.deepEqual(out.nccl, { available: false, version: 22703, reason: `needs the CUDA backend: ${cuda.reason}` });
    assert.deepEqual(out.id, { name: 'BackendError', code: 'ERR_BACKEND_UNAVAILABLE', message: `ncclGetUniqueId: NCCL needs the CUDA backend: ${cuda.reason}` });
    assert.deepEqual(out.create, { name: 'BackendError', code: 'ERR_BACKEND_UNAVAILABLE', message: `ncclCommInitRank: NCCL needs the CUDA backend: ${cuda.reason}` });
  });
});

describe('NCCL communicator (any machine)', () => {
  it('info() has an nccl entry with a reason when unavailable', () => {
    const n = info().nccl;
    assert.equal(typeof n.available, 'boolean');
    if (!n.available) assert.ok(n.reason && n.reason.length > 10);
    if (!cuda.available) assert.equal(n.reason, `needs the CUDA backend: ${cuda.reason}`);
  });

  it('without a usable NCCL, uniqueId and create are BackendErrors with the reason', async function () {
    if (info().nccl.available) this.skip();
    assert.throws(() => NcclCommunicator.uniqueId(), (e: unknown) => e instanceof BackendError && e.code === 'ERR_BACKEND_UNAVAILABLE' &&
      /^ncclGetUniqueId: NCCL (needs the CUDA backend|is unavailable): /.test(e.message));
    await assert.rejects(NcclCommunicator.create(new Uint8Array(128), 1, 0), (e: unknown) => e instanceof BackendError &&
      /^ncclCommInitRank: NCCL (needs the CUDA backend|is unavailable): /.test(e.message) && /nccl\.test/.test(e.stack!));
  });

  it('bad arguments are TypeErrors / RangeErrors', async () => {
    await assert.rejects(NcclCommunicator.create(new Uint8Array(4), 2, 0), /NcclCommunicator\.create: id must be the 128-byte Uint8Array/);
    await assert.rejects(NcclCommunicator.create(new Uint8Array(128), 2, 2), /rank must be an integer in \[0, 2\), got 2/);
    await assert.rejects(NcclCommunicator.create(new Uint8Array(128), 0, 0), RangeError);
    assert.throws(() => ncclProbe(3 as unknown as string), /ncclProbe: path must be a string, got 3/);
    await assert.rejects(NcclCommunicator.create(new Uint8Array(128), 1, 0, { timeoutMs: 0 }), /options\.timeoutMs must be a number > 0, got 0/);
  });

  it('the raw binding checks the watchdog timeout before anything starts', () => {
    const id = new Uint8Array(128);
    for (const t of [0, -1, NaN, undefined, '5']) {
      assert.throws(() => native.ncclCommInitRankAsync(id, 1, 0, t as unknown as number),
        (e: unknown) => e instanceof RangeError && /^ncclCommInitRank: timeoutMs must be a number > 0 \(Infinity: no watchdog\)$/.test(e.message));
    }
  });
});
