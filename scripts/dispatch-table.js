#!/usr/bin/env node
// Writes the measured dispatch table (native/backend_api/dispatch_table.h) from a
// `batchnorm bench --backend all --json` file: for each workload where both our kernels
// ('cuda') and cuDNN ('cudnn') timed fusedBatchNorm or fusedBatchNormGrad, one entry naming
// the faster one, so that 'auto' on device data picks it for that exact shape.
// Usage: node scripts/dispatch-table.js bench.json [native/backend_api/dispatch_table.h]
'use strict';
const fs = require('node:fs');
const path = require('node:path');

const [jsonPath, headerArg] = process.argv.slice(2);
if (!jsonPath) {
  console.error('usage: node scripts/dispatch-table.js bench.json [dispatch_table.h]');
  process.exit(2);
}
const header = headerArg || path.join(__dirname, '..', 'native', 'backend_api', 'dispatch_table.h');
const bench = JSON.parse(fs.readFileSync(jsonPath, 'utf8'));
const card = (bench.machine && bench.machine.gpu) || 'unknown GPU';
const OPS = { fusedBatchNorm: 'fusedBatchNorm', fusedBatchNormGrad: 'batchNormalizationGrad' };

const byKey = new Map();
for (const r of bench.results || []) {
  if (!OPS[r.op] || (r.backend !== 'cuda' && r.backend !== 'cudnn')) continue;
  const axes = new Set(r.axes);
  const kept = r.shape.map((_, i) => i).filter((i) => !axes.has(i));
  if (kept.length !== 1) continue;  // per-channel calls only
  const key = `${r.op} ${r.shape.join(',')} ${kept[0]}`;
  const e = byKey.get(key) || { op: OPS[r.op], shape: r.shape, axis: kept[0] };
  e[r.backend] = r.ms;
  byKey.set(key, e);
}

const esc = (s) => String(s).replace(/["\\]/g, '');
const lines = [];
for (const e of byKey.values()) {
  if (typeof e.cuda !== 'number' || typeof e.cudnn !== 'number') continue;
  if (e.shape.length > 8) continue;
  const backend = e.cudnn < e.cuda ? 'cudnn' : 'cuda';
  lines.push(`    {"${e.op}", ${e.shape.length}, {${e.shape.join(', ')}}, ${e.axis}, "${backend}", ${e.cuda}, ${e.cudnn}, "${esc(card)}"},`);
}

const text = fs.readFileSync(header, 'utf8');
const begin = '    // BEGIN MEASURED ENTRIES\n';
const end = '    // END MEASURED ENTRIES\n';
const i = text.indexOf(begin);
const j = text.indexOf(end);
if (i < 0 || j < i) {
  console.error(`${header}: the BEGIN/END MEASURED ENTRIES markers are missing`);
  process.exit(1);
}
const body = lines.length ? `${lines.join('\n')}\n` : '';
fs.writeFileSync(header, text.slice(0, i + begin.length) + body + text.slice(j));
console.log(`${header}: ${lines.length} measured entries (${card})`);
