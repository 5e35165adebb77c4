// `batchnorm bench` through the CLI in child processes, on the CPU backend: the JSON
// report's schema, the chart's structure (one mark per result), bad flags, and that the
// core require never loads the benchmark or its chart packages. No assertion on speed.
import * as assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { DOMParser, type Element } from '@xmldom/xmldom';
import { backends } from '../lib/index';
import { scaleWorkload } from '../lib/bench/index';
import { PRESETS } from '../lib/bench/options';
import { TORCH_SCRIPT } from '../lib/bench/peers';

const CLI = path.join(__dirname, '..', 'lib', 'cli.js');
const INDEX = path.join(__dirname, '..', 'lib', 'index.js');
const run = (...args: string[]) => spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', env: { ...process.env, CI: '1' } });

const OPS = ['moments', 'batchNormalization', 'fusedBatchNorm', 'fusedBatchNormGrad'];
const isNum = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v);
const isInts = (v: unknown): boolean => Array.isArray(v) && v.every((d) => Number.isInteger(d));

/** The documented schema of --json (docs/bench.md), field by field. */
function checkReport(r: Record<string, any>): void {
  assert.equal(typeof r.version, 'string');
  assert.equal(typeof r.command, 'string');
  assert.ok(!Number.isNaN(Date.parse(r.date)), 'date');
  const m = r.machine;
  for (const k of ['cpu', 'cpuFeatures', 'node', 'platform']) assert.equal(typeof m[k], 'string', `machine.${k}`);
  for (const k of ['cores', 'memoryGiB', 'threads']) assert.ok(isNum(m[k]) && m[k] > 0, `machine.${k}`);
  if ('gpu' in m) assert.equal(typeof m.gpu, 'string');
  const s = r.settings;
  assert.ok(Array.isArray(s.ops) && s.ops.every((o: string) => OPS.includes(o)));
  assert.ok(Array.isArray(s.backends) && s.backends.length > 0);
  for (const w of s.workloads) assert.ok(typeof w.id === 'string' && isInts(w.shape) && isInts(w.axes) && typeof w.layout === 'string');
  for (const k of ['reps', 'warmup', 'budgetMsPerCase']) assert.ok(isNum(s[k]), `settings.${k}`);
  for (const k of ['quick', 'sweep', 'fresh']) assert.equal(typeof s[k], 'boolean', `settings.${k}`);
  for (const k of ['cpu', 'cuda', 'floors', 'gbs', 'floorRatio', 'peers']) assert.equal(typeof r.method[k], 'string', `method.${k}`);
  assert.ok(Array.isArray(r.floors.cpu) && Array.isArray(r.floors.gpu) && Array.isArray(r.floors.sweepReference));
  for (const f of r.floors.cpu) {
    assert.ok(isNum(f.bytes) && isNum(f.measuredBytes) && f.measuredBytes >= f.bytes && f.copyGbs > 0 && f.readGbs > 0 && f.threads >= 1);
  }
  if (r.floors.pageFault !== null) {
    const p = r.floors.pageFault;
    assert.ok(p.bytes > 0 && p.freshMs > 0 && p.touchedMs >= 0 && p.msPerGiB >= 0 && typeof p.method === 'string');
  }
  assert.ok(Array.isArray(r.results) && r.results.length > 0, 'results');
  for (const x of r.results) {
    assert.ok(OPS.includes(x.op), x.op);
    assert.equal(typeof x.workload, 'string');
    assert.ok(isInts(x.shape) && isInts(x.axes));
    assert.ok(['NHWC', 'NCHW', 'NC', 'other'].includes(x.layout));
    assert.ok(['cpu', 'cuda', 'cudnn'].includes(x.backend));
    assert.equal(typeof x.device, 'string');
    assert.ok(x.threads === null || (Number.isInteger(x.threads) && x.threads >= 1));
    assert.equal(x.bytes, 4 * x.shape.reduce((a: number, b: number) => a * b, 1));
    assert.ok(isNum(x.ms) && x.ms > 0, `ms ${x.ms}`);
    assert.ok(x.minMs > 0 && x.minMs <= x.ms && x.ms <= x.maxMs, `min ${x.minMs} <= median ${x.ms} <= max ${x.maxMs}`);
    assert.ok(Number.isInteger(x.reps) && x.reps >= 1);
    assert.ok(isNum(x.gbs) && Math.abs(x.gbs - x.movedBytes / (x.ms * 1e6)) <= 1e-9 * x.gbs);
    assert.ok(isNum(x.floorMs) && x.floorMs > 0);
    assert.ok(isNum(x.floorRatio) && x.floorRatio > 0 && Math.abs(x.floorRatio - x.ms / x.floorMs) <= 1e-9 * x.floorRatio);
    for (const k of ['floor', 'method', 'outputs']) assert.equal(typeof x[k], 'string', k);
    assert.equal(typeof x.sweep, 'boolean');
  }
  assert.ok(Array.isArray(r.staging) && Array.isArray(r.skipped) && Array.isArray(r.peers));
  for (const sk of r.skipped) assert.ok(typeof sk.reason === 'string' && typeof sk.failed === 'boolean');
  for (const p of r.peers) {
    assert.ok(['torch', 'onnxruntime'].includes(p.peer) && ['ok', 'skipped', 'failed'].includes(p.status));
    if (p.status !== 'ok') assert.equal(typeof p.reason, 'string');
    for (const x of p.results) assert.ok(x.ms > 0 && x.floorRatio > 0 && typeof x.what === 'string');
  }
}

/** Parses strictly (any XML error throws) and returns the document. */
function parseSvg(text: string) {
  const doc = new DOMParser({ onError: (level, msg) => { if (level !== 'warning') throw new Error(`SVG ${level}: ${msg}`); } })
    .parseFromString(text, 'image/svg+xml');
  assert.equal(doc.documentElement?.nodeName, 'svg');
  return doc;
}

/** Data marks (role="graphics-symbol") inside the groups of the named Vega-Lite layer. */
function countMarks(doc: ReturnType<typeof parseSvg>, name: string): number {
  let n = 0;
  const groups = Array.from(doc.getElementsByTagName('g') as unknown as Element[])
    .filter((g) => (g.getAttribute('class') ?? '').split(' ').includes(`${name}_marks`));
  assert.ok(groups.length > 0, `no ${name} layer in the SVG`);
  for (const g of groups) {
    for (const c of Array.from(g.childNodes as unknown as Element[])) if (c.nodeType === 1 && c.getAttribute('role') === 'graphics-symbol') n++;
  }
  return n;
}

describe('batchnorm bench (CLI)', function () {
  this.timeout(120e3);
  let dir: string;
  before(() => { dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bn-bench-')); });
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('--quick --json --svg: a report that matches its schema and a chart with one mark per result', () => {
    const json = path.join(dir, 'f.json');
    const svg = path.join(dir, 'f.svg');
    const r = run('bench', '--quick', '--backend', 'cpu', '--json', json, '--svg', svg);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stderr, '', 'no progress output when stderr is not a terminal');
    const rep = JSON.parse(fs.readFileSync(json, 'utf8'));
    checkReport(rep);
    assert.deepEqual(rep.settings.workloads.map((w: { id: string }) => w.id), ['W1', 'W6']);
    // Every op on every workload has a number or a stated reason.
    for (const w of ['W1', 'W6']) {
      for (const op of OPS) {
        const has = rep.results.some((x: any) => x.workload === w && x.op === op) || rep.skipped.some((x: any) => x.workload === w && x.op === op);
        assert.ok(has, `${w} ${op}`);
      }
    }
    assert.equal(rep.results.length, 8);
    assert.deepEqual(rep.floors.cpu.map((f: { bytes: number }) => f.bytes).sort((a: number, b: number) => a - b), [64 * 1024 * 4, 128 * 32 * 32 * 64 * 4]);
    // The table lists each result.
    for (const x of rep.results) assert.match(r.stdout, new RegExp(`${x.workload} .* ${x.op} +cpu `));
    const doc = parseSvg(fs.readFileSync(svg, 'utf8'));
    assert.equal(countMarks(doc, 'results'), rep.results.length);
    assert.equal(countMarks(doc, 'floors'), rep.results.length);
  });

  it('--json - writes only JSON to stdout and nothing to stderr', () => {
    const r = run('bench', '--quick', '--workloads', 'W6', '--ops', 'moments,batchNormalization', '--backend', 'cpu', '--json', '-');
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stderr, '');
    const rep = JSON.parse(r.stdout);
    checkReport(rep);
    assert.deepEqual(rep.results.map((x: { op: string }) => x.op), ['moments', 'batchNormalization']);
  });

  it('--shape/--data-format NCHW, --threads 1 and --fresh are honoured', () => {
    const r = run('bench', '--quick', '--shape', '4,8,16,16', '--data-format', 'NCHW', '--threads', '1', '--fresh', '--backend', 'cpu', '--json', '-');
    assert.equal(r.status, 0, r.stderr);
    const rep = JSON.parse(r.stdout);
    checkReport(rep);
    assert.equal(rep.results.length, 4);
    for (const x of rep.results) {
      assert.deepEqual([x.workload, x.shape, x.axes, x.layout, x.threads, x.outputs], ['custom', [4, 8, 16, 16], [0, 2, 3], 'NCHW', 1, 'fresh']);
    }
  });

  it('axes that keep two dimensions: the training ops are skipped with the reason', () => {
    const r = run('bench', '--quick', '--shape', '8,4,6', '--axes', '0', '--backend', 'cpu', '--json', '-');
    assert.equal(r.status, 0, r.stderr);
    const rep = JSON.parse(r.stdout);
    assert.deepEqual(rep.results.map((x: { op: string }) => x.op), ['moments', 'batchNormalization']);
    assert.equal(rep.skipped.length, 2);
    for (const s of rep.skipped) assert.match(s.reason, /keep more than one axis/);
  });

  it('--sweep: one point per result, floors as reference lines', () => {
    const json = path.join(dir, 's.json');
    const svg = path.join(dir, 's.svg');
    const r = run('bench', '--quick', '--sweep', '--max-size', '1MiB', '--ops', 'moments,batchNormalization', '--backend', 'cpu', '--json', json, '--svg', svg);
    assert.equal(r.status, 0, r.stderr);
    const rep = JSON.parse(fs.readFileSync(json, 'utf8'));
    checkReport(rep);
    assert.deepEqual([...new Set(rep.results.map((x: { bytes: number }) => x.bytes))], [65536, 131072, 262144, 524288, 1048576]);
    assert.equal(rep.results.length, 10);
    assert.ok(rep.results.every((x: { sweep: boolean }) => x.sweep));
    assert.equal(rep.floors.sweepReference.length, 2);
    const doc = parseSvg(fs.readFileSync(svg, 'utf8'));
    assert.equal(countMarks(doc, 'sweep'), rep.results.length);
  });

  it('bad flags exit 2 with a clear message', () => {
    const cases: [string[], RegExp][] = [
      [['--ops', 'moments,frobnicate'], /--ops: unknown op "frobnicate"/],
      [['--shape', '32,x,4'], /--shape must be a comma-separated list of integers >= 1, got "32,x,4"/],
      [['--shape', '4,0,4'], /--shape must be a comma-separated list of integers >= 1/],
      [['--shape', '4,4', '--axes', '2'], /--axes: 2 is out of range for a shape of rank 2/],
      [['--workloads', 'W9'], /--workloads: unknown workload "W9"/],
      [['--backend', 'tpu'], /--backend must be cpu, cuda, cudnn or all, got "tpu"/],
      [['--threads', '0'], /--threads must be an integer in \[1, 1024\]/],
      [['--reps', 'many'], /--reps must be an integer/],
      [['--data-format', 'NCHW'], /--axes and --data-format describe a --shape/],
      [['--frobnicate'], /Unknown option '--frobnicate'/],
      [['--json'], /--json.*argument missing/],
      [['--compare', 'tensorflow'], /--compare: unknown peer "tensorflow"/],
      [['--sweep', '--max-size', '1KiB'], /--max-size must be a size from 64KiB/],
    ];
    for (const [args, re] of cases) {
      const r = run('bench', ...args);
      assert.equal(r.status, 2, `${args.join(' ')}: ${r.stderr}`);
      assert.match(r.stderr, re, args.join(' '));
      assert.equal(r.stdout, '');
    }
  });

  it('an unavailable backend exits 2 with its reason', function () {
    const missing = backends().find((b) => !b.available);
    if (!missing) this.skip();
    const r = run('bench', '--quick', '--backend', missing!.name);
    assert.equal(r.status, 2);
    assert.ok(r.stderr.includes(`--backend ${missing!.name} is unavailable here: ${missing!.reason}`), r.stderr);
  });

  it('help bench documents the options; --help too', () => {
    for (const args of [['help', 'bench'], ['bench', '--help']]) {
      const r = run(...args);
      assert.equal(r.status, 0, r.stderr);
      for (const flag of ['--ops', '--backend', '--workloads', '--shape', '--axes', '--data-format', '--threads', '--reps', '--quick', '--sweep', '--compare', '--json', '--svg', '--html']) {
        assert.ok(r.stdout.includes(flag), `${args.join(' ')} documents ${flag}`);
      }
      for (const w of PRESETS) assert.ok(r.stdout.includes(`${w.id} [${w.shape.join(',')}]`), w.id);
    }
  });

  it('missing peers are reported as skipped with the reason', () => {
    const r = run('bench', '--quick', '--workloads', 'W6', '--ops', 'moments', '--backend', 'cpu', '--compare', 'torch,onnxruntime', '--json', '-');
    assert.ok(r.status === 0 || r.status === 1, r.stderr);
    const rep = JSON.parse(r.stdout);
    assert.deepEqual(rep.peers.map((p: { peer: string }) => p.peer), ['torch', 'onnxruntime']);
    for (const p of rep.peers) {
      if (p.status === 'ok') assert.ok(p.results.length + p.skipped.length > 0);
      else assert.ok(p.reason.length > 0);
    }
  });

  it('the torch peer script is where the command looks for it (shipped in the package)', () => {
    assert.ok(fs.existsSync(TORCH_SCRIPT), TORCH_SCRIPT);
    assert.match(fs.readFileSync(TORCH_SCRIPT, 'utf8'), /json\.load\(sys\.stdin\)/);
  });

  it('the core require loads neither the benchmark nor the chart packages', () => {
    const code = `require(${JSON.stringify(INDEX)});
      console.log(JSON.stringify(Object.keys(require.cache)));`;
    const r = spawnSync(process.execPath, ['-e', code], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    const loaded: string[] = JSON.parse(r.stdout);
    assert.ok(loaded.some((f) => f.endsWith(path.join('lib', 'index.js'))));
    // vega and vega-lite are ES modules imported only by lib/bench/chart.js, and the
    // progress line lives in lib/bench/progress.js: none of lib/bench may be loaded.
    const bad = loaded.filter((f) => /[\\/]lib[\\/]bench[\\/]|[\\/]node_modules[\\/](vega|vega-lite|d3-[^\\/]+)[\\/]/.test(f));
    assert.deepEqual(bad, []);
  });

  it('sweep shapes keep the layout and scale the reduced axes', () => {
    const w1 = PRESETS[0];
    assert.deepEqual(scaleWorkload(w1, 65536)!.shape, [8, 1, 32, 64]);
    assert.deepEqual(scaleWorkload(w1, 2 ** 30)!.shape, [4096, 32, 32, 64]);
    const w2 = scaleWorkload(PRESETS[1], 2 ** 20)!;
    assert.equal(w2.layout, 'NCHW');
    assert.equal(w2.shape[1], 256);
    assert.equal(scaleWorkload(PRESETS[3], 1024), null, 'smaller than one row of W4');
  });
});
