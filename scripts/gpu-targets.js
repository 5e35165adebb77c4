#!/usr/bin/env node
// The GPU targets, computed from one `batchnorm bench --backend all --compare torch --json`
// file (and, when present, scripts/bench_torch_autograd.py's output of the same run), written as
// <out-dir>/gpu-<card>-<date>.json (each target {name, value, target, met}) and .md.
//
//   moments             >= 85% of the read-kernel bandwidth on W2-W5 (W1, W6: >= 60%)
//   batchNormalization  >= 90% of the device-to-device copy on W2-W5 (W1, W6: >= 70%)
//   fusedBatchNorm      <= 0.8x PyTorch's training forward, every workload
//   fusedBatchNormGrad  <= 0.9x PyTorch's backward, every workload
//   inference           <= 1.0x PyTorch eval (batchNormalization against F.batch_norm(training=False))
//
// Our numbers are backend 'cuda' rows; PyTorch's come from the bench's torch peer (the same
// shapes and layouts), falling back to the autograd timings. A target with no measurement is
// listed with value null and met false: a missing number never counts as met.
//
// Usage: node scripts/gpu-targets.js --bench bench.json [--autograd torch-autograd.json]
//          [--out-dir bench/results] [--card slug] [--date YYYY-MM-DD] [--note text]...
//        node scripts/gpu-targets.js --self-test
'use strict';
const fs = require('node:fs');
const path = require('node:path');
const os = require('node:os');

const ALL = ['W1', 'W2', 'W3', 'W4', 'W5', 'W6'];
const BANDWIDTH_EDGE = new Set(['W1', 'W6']);  // W1 is L2-resident, W6 launch-bound

/** Lower-case slug of a card name: "NVIDIA H100 80GB HBM3" -> "nvidia-h100-80gb-hbm3". */
function slug(name) {
  return String(name || 'unknown').toLowerCase().replace(/[^a-z0-9]+/g, '-').replace(/^-+|-+$/g, '') || 'unknown';
}

/** The targets from a bench report and optional autograd timings; pure, so it can be checked. */
function computeTargets(bench, autograd) {
  const ours = (op, w) => (bench.results || []).find((r) => r.backend === 'cuda' && r.op === op && r.workload === w && !r.sweep);
  const torch = (bench.peers || []).find((p) => p.peer === 'torch' && p.status === 'ok');
  const peerMs = (op, w) => {
    const t = torch && torch.results.find((q) => q.op === op && q.workload === w && q.device === 'cuda');
    return t ? t.ms : undefined;
  };
  const ag = (w, field) => {
    const t = autograd && (autograd.results || []).find((q) => q.workload === w);
    return t && typeof t[field] === 'number' ? t[field] : undefined;
  };
  const targets = [];
  const add = (name, value, target, cmp, detail) => {
    const v = typeof value === 'number' && Number.isFinite(value) ? value : null;
    targets.push({ name, value: v === null ? null : Number(v.toFixed(4)), target, met: v !== null && (cmp === '>=' ? v >= target : v <= target), detail });
  };
  for (const w of ALL) {
    const edge = BANDWIDTH_EDGE.has(w);
    const m = ours('moments', w);
    add(`${w} moments fraction of read-kernel bandwidth`, m ? 1 / m.floorRatio : null, edge ? 0.6 : 0.85, '>=',
      m ? `${m.ms.toFixed(4)} ms, floor ${m.floorMs.toFixed(4)} ms` : 'not measured');
    const n = ours('batchNormalization', w);
    add(`${w} batchNormalization fraction of D2D copy bandwidth`, n ? 1 / n.floorRatio : null, edge ? 0.7 : 0.9, '>=',
      n ? `${n.ms.toFixed(4)} ms, floor ${n.floorMs.toFixed(4)} ms` : 'not measured');
    const ratio = (op, tOp, agField, target, label) => {
      const r = ours(op, w);
      const t = peerMs(tOp, w) ?? ag(w, agField);
      add(`${w} ${label}`, r && t ? r.ms / t : null, target, '<=',
        r && t ? `ours ${r.ms.toFixed(4)} ms, PyTorch ${t.toFixed(4)} ms` : `ours ${r ? r.ms.toFixed(4) : '-'} ms, PyTorch ${t ? t.toFixed(4) : '-'} ms`);
    };
    ratio('fusedBatchNorm', 'fusedBatchNorm', 'forwardMs', 0.8, 'fused training forward / PyTorch training forward');
    ratio('fusedBatchNormGrad', 'fusedBatchNormGrad', 'backwardMs', 0.9, 'backward / PyTorch backward');
    ratio('batchNormalization', 'batchNormalization', 'evalMs', 1.0, 'inference / PyTorch eval');
  }
  return { torch: torch ? `${torch.version} on ${torch.deviceName}` : null, targets };
}

function markdown(bench, autograd, result, card, date, notes) {
  const m = bench.machine || {};
  const L = [`# batchnorm GPU check: ${m.gpu || card}, ${date}`, ''];
  L.push(`- device: ${m.gpu ? `${m.gpu} (cc ${m.computeCapability}, ${m.gpuMemoryGiB} GiB, driver ${m.driver}, runtime ${m.cudaRuntime})` : 'no GPU in the bench report'}`);
  L.push(`- command: \`${bench.command || '?'}\` (${bench.date || '?'})`);
  L.push(`- PyTorch: ${result.torch || 'not measured'}`);
  for (const n of notes) L.push(`- ${n}`);
  const met = result.targets.filter((t) => t.met).length;
  L.push('', `## Targets: ${met} of ${result.targets.length} met`, '', '| target | value | goal | met | detail |', '|---|---|---|---|---|');
  for (const t of result.targets) {
    const cmp = t.name.includes('fraction') ? '>=' : '<=';
    L.push(`| ${t.name} | ${t.value === null ? '-' : t.value.toFixed(3)} | ${cmp} ${t.target} | ${t.met ? 'yes' : 'NO'} | ${t.detail} |`);
  }
  if (autograd && autograd.results) {
    L.push('', `## PyTorch autograd (${autograd.torch || '?'}, ${autograd.method || ''})`, '',
      '| workload | module | forward ms | backward ms | forward+backward ms | eval ms |', '|---|---|---|---|---|---|');
    const f = (v) => (typeof v === 'number' ? v.toFixed(4) : '-');
    for (const r of autograd.results) L.push(`| ${r.workload} ${JSON.stringify(r.shape)} | ${r.module} | ${f(r.forwardMs)} | ${f(r.backwardMs)} | ${f(r.stepMs)} | ${f(r.evalMs)} |`);
    for (const s of autograd.skipped || []) L.push(`- ${s.workload}: skipped: ${s.reason}`);
  }
  L.push('', '## Rows (backend cuda and cudnn)', '', '| workload | op | backend | ms | % of floor |', '|---|---|---|---|---|');
  for (const r of (bench.results || []).filter((x) => x.backend !== 'cpu' && !x.sweep)) {
    L.push(`| ${r.workload} ${JSON.stringify(r.shape)} ${r.layout} | ${r.op} | ${r.backend} | ${r.ms.toFixed(4)} | ${(100 / r.floorRatio).toFixed(0)}% |`);
  }
  return `${L.join('\n')}\n`;
}

function parseArgs(argv) {
  const a = { notes: [] };
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i];
    const v = () => { if (i + 1 >= argv.length) throw new Error(`${k} needs a value`); return argv[++i]; };
    if (k === '--bench') a.bench = v();
    else if (k === '--autograd') a.autograd = v();
    else if (k === '--out-dir') a.outDir = v();
    else if (k === '--card') a.card = v();
    else if (k === '--date') a.date = v();
    else if (k === '--note') a.notes.push(v());
    else if (k === '--self-test') a.selfTest = true;
    else throw new Error(`unknown argument ${k}`);
  }
  return a;
}

function run(a) {
  const bench = JSON.parse(fs.readFileSync(a.bench, 'utf8'));
  let autograd = null;
  if (a.autograd && fs.existsSync(a.autograd)) {
    try { autograd = JSON.parse(fs.readFileSync(a.autograd, 'utf8')); } catch (e) { a.notes.push(`autograd timings unreadable: ${e.message}`); }
  }
  const card = slug(a.card || (bench.machine && bench.machine.gpu));
  const date = a.date || new Date().toISOString().slice(0, 10);
  const result = computeTargets(bench, autograd);
  const outDir = a.outDir || path.join(__dirname, '..', 'bench', 'results');
  fs.mkdirSync(outDir, { recursive: true });
  const base = path.join(outDir, `gpu-${card}-${date}`);
  const json = { card: (bench.machine && bench.machine.gpu) || card, date, benchDate: bench.date || null, torch: result.torch, notes: a.notes, targets: result.targets };
  fs.writeFileSync(`${base}.json`, `${JSON.stringify(json, null, 2)}\n`);
  fs.writeFileSync(`${base}.md`, markdown(bench, autograd, result, card, date, a.notes));
  const met = result.targets.filter((t) => t.met).length;
  console.log(`${base}.{md,json}: ${met} of ${result.targets.length} targets met`);
  return { base, result };
}

// ---- self-test: a hand-written bench report whose answers are known --------------------

function selfTest() {
  const assert = require('node:assert/strict');
  const row = (workload, op, ms, floorMs) => ({ workload, op, backend: 'cuda', ms, floorMs, floorRatio: ms / floorMs, shape: [1], layout: 'NC', sweep: false });
  const bench = {
    command: 'batchnorm bench --backend all --compare torch', date: '2026-01-01T00:00:00Z',
    machine: { gpu: 'NVIDIA H100 80GB HBM3', computeCapability: '9.0', gpuMemoryGiB: 79.1, driver: '580', cudaRuntime: '13.0' },
    results: [
      row('W2', 'moments', 1.0, 0.9),            // 90% of read: meets 85%
      row('W3', 'moments', 1.0, 0.8),            // 80%: misses 85%
      row('W1', 'moments', 1.0, 0.61),           // 61%: meets W1's 60%
      row('W2', 'batchNormalization', 1.0, 0.95),
      row('W6', 'batchNormalization', 1.0, 0.5), // 50%: misses W6's 70%
      row('W2', 'fusedBatchNorm', 0.8, 1.5),
      row('W2', 'fusedBatchNormGrad', 1.0, 1.5),
      { ...row('W2', 'moments', 5.0, 0.1), backend: 'cudnn' },  // another backend: ignored
      { ...row('W4', 'moments', 0.1, 0.1), sweep: true },       // a sweep row: ignored
    ],
    peers: [{ peer: 'torch', status: 'ok', version: '2.11', deviceName: 'H100', results: [
      { op: 'fusedBatchNorm', workload: 'W2', device: 'cuda', ms: 1.0 },      // 0.8x: meets 0.8
      { op: 'fusedBatchNormGrad', workload: 'W2', device: 'cuda', ms: 1.0 },  // 1.0x: misses 0.9
      { op: 'batchNormalization', workload: 'W2', device: 'cuda', ms: 1.0 },  // 1.0x: meets 1.0
    ], skipped: [] }],
  };
  const autograd = { torch: '2.11', results: [{ workload: 'W3', forwardMs: 1, backwardMs: 2, evalMs: 1 }] };
  bench.results.push(row('W3', 'fusedBatchNormGrad', 1.7, 2));  // 0.85x autograd backward: meets
  const { targets } = computeTargets(bench, autograd);
  const get = (name) => { const t = targets.find((x) => x.name === name); assert.ok(t, name); return t; };
  assert.equal(targets.length, 6 * 5);
  for (const t of targets) assert.deepEqual(Object.keys(t).slice(0, 4), ['name', 'value', 'target', 'met']);
  assert.equal(get('W2 moments fraction of read-kernel bandwidth').met, true);
  assert.equal(get('W2 moments fraction of read-kernel bandwidth').value, 0.9);
  assert.equal(get('W3 moments fraction of read-kernel bandwidth').met, false);
  assert.equal(get('W1 moments fraction of read-kernel bandwidth').target, 0.6);
  assert.equal(get('W1 moments fraction of read-kernel bandwidth').met, true);
  assert.equal(get('W4 moments fraction of read-kernel bandwidth').value, null);  // sweep row ignored
  assert.equal(get('W4 moments fraction of read-kernel bandwidth').met, false);
  assert.equal(get('W2 batchNormalization fraction of D2D copy bandwidth').target, 0.9);
  assert.equal(get('W2 batchNormalization fraction of D2D copy bandwidth').met, true);
  assert.equal(get('W6 batchNormalization fraction of D2D copy bandwidth').target, 0.7);
  assert.equal(get('W6 batchNormalization fraction of D2D copy bandwidth').met, false);
  assert.equal(get('W2 fused training forward / PyTorch training forward').value, 0.8);
  assert.equal(get('W2 fused training forward / PyTorch training forward').met, true);
  assert.equal(get('W2 backward / PyTorch backward').met, false);
  assert.equal(get('W3 backward / PyTorch backward').value, 0.85);
  assert.equal(get('W3 backward / PyTorch backward').met, true);
  assert.equal(get('W2 inference / PyTorch eval').met, true);
  assert.equal(get('W5 inference / PyTorch eval').value, null);
  assert.equal(slug('NVIDIA H100 80GB HBM3'), 'nvidia-h100-80gb-hbm3');
  // End to end through the files, in a temporary directory.
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'gpu-targets-'));
  try {
    fs.writeFileSync(path.join(dir, 'bench.json'), JSON.stringify(bench));
    fs.writeFileSync(path.join(dir, 'ag.json'), JSON.stringify(autograd));
    const { base } = run({ bench: path.join(dir, 'bench.json'), autograd: path.join(dir, 'ag.json'), outDir: dir, date: '2026-01-01', notes: ['self-test'] });
    assert.equal(path.basename(base), 'gpu-nvidia-h100-80gb-hbm3-2026-01-01');
    const j = JSON.parse(fs.readFileSync(`${base}.json`, 'utf8'));
    assert.equal(j.targets.length, 30);
    assert.match(fs.readFileSync(`${base}.md`, 'utf8'), /\| W3 moments fraction of read-kernel bandwidth \| 0\.800 \| >= 0\.85 \| NO \|/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
  console.log('gpu-targets self-test: ok');
}

if (require.main === module) {
  try {
    const a = parseArgs(process.argv.slice(2));
    if (a.selfTest) selfTest();
    else if (!a.bench) { console.error('usage: node scripts/gpu-targets.js --bench bench.json [--autograd f.json] [--out-dir d] [--card s] [--date d] [--note t]... | --self-test'); process.exit(2); }
    else run(a);
  } catch (e) {
    console.error(`gpu-targets: ${e && e.stack ? e.stack : e}`);
    process.exit(1);
  }
}

module.exports = { computeTargets, slug };
