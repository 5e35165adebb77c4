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

# cuDNN (issue 5): use BATCHNORM_CUDNN_PATH when set; else, when libcudnn.so.9 is not on
# the default search path, look where pip installs it (PyTorch's nvidia-cudnn-cu* wheel),
# then anywhere on the disk. Without it, the cudnn tests skip (BATCHNORM_REQUIRE_CUDNN=0)
# and the report says so.
PY="${PYTHON:-python3}"
echo "== cuDNN"
if [ -z "${BATCHNORM_CUDNN_PATH:-}" ] && ! ldconfig -p 2>/dev/null | grep -q 'libcudnn\.so\.9 '; then
  d=$("$PY" -c "import nvidia.cudnn, os; print(os.path.join(list(nvidia.cudnn.__path__)[0], 'lib'))" 2>/dev/null || true)
  if [ -n "$d" ] && [ -e "$d/libcudnn.so.9" ]; then
    export BATCHNORM_CUDNN_PATH="$d"
  else
    f=$(find / -xdev -name 'libcudnn.so.9*' -not -path '/proc/*' 2>/dev/null | head -1)
    [ -n "$f" ] && export BATCHNORM_CUDNN_PATH="$(dirname "$f")"
  fi
fi
"$NODE" -e "const b=require('./dist/lib/index.js'); const c=b.backends().find((x)=>x.name==='cudnn'); console.log('BATCHNORM_CUDNN_PATH=${BATCHNORM_CUDNN_PATH:-}', JSON.stringify(b.cudnnProbe()), 'backend:', JSON.stringify(c))" | tee "$OUT/cudnn.txt"
if ! grep -q '"available":true' "$OUT/cudnn.txt"; then
  echo "cuDNN unavailable: its tests skip (BATCHNORM_REQUIRE_CUDNN=0)" | tee -a "$OUT/cudnn.txt"
  export BATCHNORM_REQUIRE_CUDNN=0
fi

echo "== tests (BATCHNORM_REQUIRE_GPU=1)"
BATCHNORM_REQUIRE_GPU=1 timeout 900 "$NODE" node_modules/mocha/bin/mocha.js 2>&1 | tee "$OUT/tests.txt"
test_rc=${PIPESTATUS[0]}
[ "$test_rc" -eq 0 ] || status=1

echo "== benchmark (bench/gpu.js)"
timeout 600 "$NODE" bench/gpu.js 2>&1 | tee "$OUT/bench.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

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
// cuDNN rows (issue 5): they decide BATCHNORM_PREFER_CUDNN's default for inference.
L.push('', `cuDNN: ${(read('cudnn.txt') || 'not checked').trim().split('\n').join(' / ')}`);
if (gpu) {
  L.push('', '| workload | cudnn inference ms | cuda inference ms | cudnn train fwd ms | cuda train fwd ms | cudnn backward ms | torch train ms | torch eval ms |', '|---|---|---|---|---|---|---|---|');
  for (const r of gpu.results) {
    const c = r.cudnn || {};
    const t = torch ? torch.results.find((q) => q.workload === r.workload) : null;
    const f = (v) => (typeof v === 'number' ? v.toFixed(3) : '-');
    if (!c.inference) { L.push(`| ${r.workload} | ${c.skipped || c.error || '-'} | | | | | ${t ? f(t.batch_norm_train_ms) : '-'} | ${t ? f(t.batch_norm_eval_ms) : '-'} |`); continue; }
    L.push(`| ${r.workload} | ${f(c.inference.cudnnMs)} | ${f(c.inference.cudaMs)} | ${f(c.trainingForward.cudnnMs)} | ${f(c.trainingForward.cudaMs)} | ${f(c.backward.cudnnMs)} | ${t ? f(t.batch_norm_train_ms) : '-'} | ${t ? f(t.batch_norm_eval_ms) : '-'} |`);
  }
  L.push('', 'cudnn/cuda rows: wall clock over back-to-back calls + one synchronize (not CUDA events). If cudnn inference beats cuda on W1-W3, make BATCHNORM_PREFER_CUDNN=1 the default (native/backend.cc prefer_cudnn).');
}
console.log(L.join('\n'));
JS
cat "$REPORT"
echo "report: $REPORT"
exit $status
