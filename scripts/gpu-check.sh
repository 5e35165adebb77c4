#!/usr/bin/env bash
# GPU check (DESIGN.md "GPU checks"): on a machine with an NVIDIA GPU and the built addon,
#   1. prints the device (nvidia-smi when present, and `batchnorm info`),
#   2. runs the full mocha suite with BATCHNORM_REQUIRE_GPU=1 (unavailable GPU backends fail),
#   3. runs bench/gpu.js (and bench/torch_compare.py where `import torch` works),
# and writes report.md + gpu.json (+ torch.json) into $BATCHNORM_OUT (default ./gpu-report).
# Needs no network and no npm: Node comes from $NODE (default `node`); the files it needs
# beside it are listed in README.md ("Running the GPU check").
set -uo pipefail
cd "$(dirname "$0")/.."
NODE="${NODE:-node}"
OUT="${BATCHNORM_OUT:-$PWD/gpu-report}"
export BATCHNORM_OUT="$OUT"
mkdir -p "$OUT"
REPORT="$OUT/report.md"
status=0

echo "== device"
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.memory --format=csv | tee "$OUT/nvidia-smi.txt"
else
  echo "nvidia-smi: not found" | tee "$OUT/nvidia-smi.txt"
fi
"$NODE" dist/lib/cli.js info | tee "$OUT/info.txt" || status=1

echo "== tests (BATCHNORM_REQUIRE_GPU=1)"
BATCHNORM_REQUIRE_GPU=1 timeout 900 "$NODE" node_modules/mocha/bin/mocha.js 2>&1 | tee "$OUT/tests.txt"
test_rc=${PIPESTATUS[0]}
[ "$test_rc" -eq 0 ] || status=1

echo "== benchmark (bench/gpu.js)"
timeout 600 "$NODE" bench/gpu.js 2>&1 | tee "$OUT/bench.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

PY="${PYTHON:-python3}"
if command -v "$PY" >/dev/null 2>&1 && "$PY" -c "import torch; assert torch.cuda.is_available()" >/dev/null 2>&1; then
  echo "== PyTorch comparison (bench/torch_compare.py)"
  timeout 600 "$PY" bench/torch_compare.py 2>&1 | tee "$OUT/torch.txt" || status=1
else
  echo "== PyTorch comparison skipped: python3 -c 'import torch' (with CUDA) does not work here" | tee "$OUT/torch.txt"
fi

# The markdown report: summary lines, the benchmark table with ratios and targets.
"$NODE" - "$OUT" "$test_rc" <<'JS' > "$REPORT"
const fs = require('node:fs'); const path = require('node:path');
const [out, testRc] = process.argv.slice(2);
const read = (f) => { try { return fs.readFileSync(path.join(out, f), 'utf8'); } catch { return null; } };
const gpu = JSON.parse(read('gpu.json') || 'null');
const torch = JSON.parse(read('torch.json') || 'null');
const tests = (read('tests.txt') || '').trim().split('\n').pop();
const L = [];
L.push('# batchnorm GPU check', '');
L.push(`- device: ${gpu ? `${gpu.device.name} (cc ${gpu.device.computeCapability}, ${(gpu.device.totalMemory / 2 ** 30).toFixed(1)} GiB, driver ${gpu.device.driverVersion}, runtime ${gpu.device.runtimeVersion})` : 'benchmark did not run'}`);
L.push(`- tests (BATCHNORM_REQUIRE_GPU=1): ${tests} (exit ${testRc})`);
if (gpu) {
  L.push('', '| workload | moments ms | GB/s | % of read | batchNorm ms | GB/s | % of D2D copy | moments+BN ms | torch train ms | ratio | torch var_mean ms | torch eval ms |', '|---|---|---|---|---|---|---|---|---|---|---|---|');
  for (const r of gpu.results) {
    const t = torch ? torch.results.find((q) => q.workload === r.workload) : null;
    const f = (v, d = 3) => (v === undefined || v === null ? '-' : v.toFixed(d));
    L.push(`| ${r.workload} ${JSON.stringify(r.shape)} ax ${JSON.stringify(r.axes)} | ${f(r.moments.ms)} | ${f(r.moments.gbs, 0)} | ${f(100 * r.moments.vsRead, 0)}% | ${f(r.batchNormalization.ms)} | ${f(r.batchNormalization.gbs, 0)} | ${f(100 * r.batchNormalization.vsCopy, 0)}% | ${f(r.training.ms)} | ${t ? f(t.batch_norm_train_ms) : '-'} | ${t ? f(t.batch_norm_train_ms / r.training.ms, 2) : '-'} | ${t ? f(t.var_mean_ms) : '-'} | ${t ? f(t.batch_norm_eval_ms) : '-'} |`);
  }
  L.push('', 'Targets: batchNormalization >= 85% of D2D copy on W2-W4; moments >= 80% of read; moments+BN no slower than torch training-mode batch_norm (ratio >= 1).');
  const miss = [];
  for (const r of gpu.results) {
    if (r.workload !== 'W1' && r.batchNormalization.vsCopy < 0.85) miss.push(`${r.workload} batchNormalization ${(100 * r.batchNormalization.vsCopy).toFixed(0)}% of copy`);
    if (r.moments.vsRead < 0.8) miss.push(`${r.workload} moments ${(100 * r.moments.vsRead).toFixed(0)}% of read`);
    const t = torch ? torch.results.find((q) => q.workload === r.workload) : null;
    if (t && t.batch_norm_train_ms < r.training.ms) miss.push(`${r.workload} slower than torch training batch_norm`);
  }
  L.push('', miss.length ? `Targets missed: ${miss.join('; ')}` : 'All targets met.');
}
if (!torch) L.push('', 'PyTorch comparison: not run (no torch with CUDA).');
console.log(L.join('\n'));
JS
cat "$REPORT"
echo "report: $REPORT"
exit $status
