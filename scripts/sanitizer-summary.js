#!/usr/bin/env node
// Reads compute-sanitizer output (memcheck or racecheck) and decides whether it is clean.
// The only reports allowed are the CUDA API errors of the deliberate out-of-memory tests
// ("Program hit cudaErrorMemoryAllocation ..."); any other report, a summary count larger
// than the allowed reports, a racecheck hazard, or no summary at all (the run died or timed
// out) fails. Prints one line and exits 0 (clean) or 1.
//   node scripts/sanitizer-summary.js memcheck-tests.txt
//   node scripts/sanitizer-summary.js --self-test
'use strict';
const fs = require('node:fs');

const EXPECTED = /^Program hit cudaErrorMemoryAllocation\b/;
// Sanitizer lines that are not reports.
const NOT_A_REPORT = /^(COMPUTE-SANITIZER|ERROR SUMMARY|RACECHECK SUMMARY|LEAK SUMMARY|Target application returned|This may be caused|Note:|No CUDA|Saved host backtrace|Host Frame|Device Frame|at |in |by thread|Address |Thread )/;

function summarize(text) {
  const lines = text.split(/\r?\n/);
  const reports = [];
  let errorSummary = null;
  let race = null;
  for (const line of lines) {
    const m = /^========= (\S.*)$/.exec(line);  // headers are not indented
    if (!m) continue;
    const body = m[1].trim();
    const s = /^ERROR SUMMARY: (\d+) errors?/.exec(body);
    if (s) { errorSummary = Number(s[1]); continue; }
    const r = /^RACECHECK SUMMARY: (\d+) hazards? displayed \((\d+) errors?, (\d+) warnings?\)/.exec(body);
    if (r) { race = { hazards: Number(r[1]), errors: Number(r[2]), warnings: Number(r[3]) }; continue; }
    if (NOT_A_REPORT.test(body)) continue;
    reports.push(body);
  }
  const expected = reports.filter((b) => EXPECTED.test(b));
  const unexpected = reports.filter((b) => !EXPECTED.test(b) && /^(Program hit|Invalid|Error|Race|Leaked|Malloc|Out-of-range|Barrier|Misaligned|Uninitialized|Warning|Cuda|CUDA|Unspecified|Hardware|Illegal)/.test(b));
  const problems = [];
  if (errorSummary === null && race === null) problems.push('no sanitizer summary (the run died or timed out)');
  if (errorSummary !== null && errorSummary > expected.length) problems.push(`${errorSummary} errors, ${expected.length} of them the expected out-of-memory API errors`);
  if (race && race.hazards > 0) problems.push(`${race.hazards} race hazards (${race.errors} errors, ${race.warnings} warnings)`);
  if (unexpected.length) problems.push(`unexpected: ${[...new Set(unexpected)].slice(0, 5).join(' | ')}`);
  return { clean: problems.length === 0, errorSummary, race, expected: expected.length, unexpected: unexpected.length, problems };
}

function selfTest() {
  const assert = require('node:assert/strict');
  const oom = [
    '========= COMPUTE-SANITIZER',
    '========= Program hit cudaErrorMemoryAllocation (error 2) due to "out of memory" on CUDA API call to cudaMalloc.',
    '=========     Saved host backtrace up to driver entry point at error',
    '=========         Host Frame: [0x2d3c1] in libcudart.so',
    '  12 passing',
  ];
  assert.equal(summarize([...oom, '========= ERROR SUMMARY: 1 error'].join('\n')).clean, true);
  const bad = summarize([...oom,
    '========= Invalid __global__ read of size 4 bytes',
    '=========     at moments_kernel+0x1b0 in moments.cu:88',
    '=========     by thread (3,0,0) in block (0,0,0)',
    '========= ERROR SUMMARY: 2 errors'].join('\n'));
  assert.equal(bad.clean, false);
  assert.equal(bad.unexpected, 1);
  assert.equal(bad.expected, 1);
  // A count beyond the listed reports (reports cut by --print-limit) still fails.
  assert.equal(summarize([...oom, '========= ERROR SUMMARY: 3 errors'].join('\n')).clean, false);
  // Another API error is not expected.
  assert.equal(summarize(['========= Program hit cudaErrorInvalidValue (error 1) due to "invalid argument" on CUDA API call to cudaMemcpy.',
    '========= ERROR SUMMARY: 1 error'].join('\n')).clean, false);
  assert.equal(summarize('========= RACECHECK SUMMARY: 0 hazards displayed (0 errors, 0 warnings)').clean, true);
  assert.equal(summarize('========= RACECHECK SUMMARY: 2 hazards displayed (1 error, 1 warning)').clean, false);
  assert.equal(summarize(['========= Error: Race reported between Write access at k+0x10 in a.cu:3',
    '========= RACECHECK SUMMARY: 1 hazard displayed (1 error, 0 warnings)'].join('\n')).clean, false);
  assert.equal(summarize('Killed\n').clean, false);  // no summary
  assert.equal(summarize('========= ERROR SUMMARY: 0 errors').clean, true);
  console.log('sanitizer-summary self-test: ok');
}

if (require.main === module) {
  const arg = process.argv[2];
  if (arg === '--self-test') { selfTest(); process.exit(0); }
  if (!arg) { console.error('usage: node scripts/sanitizer-summary.js FILE | --self-test'); process.exit(2); }
  const s = summarize(fs.readFileSync(arg, 'utf8'));
  const what = s.race ? `racecheck ${s.race.hazards} hazards` : `memcheck ${s.errorSummary ?? '?'} errors`;
  console.log(`${arg}: ${s.clean ? 'clean' : 'NOT CLEAN'} (${what}; ${s.expected} expected out-of-memory API errors)${s.problems.length ? `: ${s.problems.join('; ')}` : ''}`);
  process.exit(s.clean ? 0 : 1);
}

module.exports = { summarize };
