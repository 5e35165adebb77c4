#!/usr/bin/env bash
# GPU check: on a machine with an NVIDIA GPU and the built addon,
#   1. prints the device (nvidia-smi when present, and `batchnorm info`),
#   2. runs the full mocha suite with BATCHNORM_REQUIRE_GPU=1 (unavailable GPU backends fail),
#   3. runs `batchnorm bench --backend all` (with --compare torch where `import torch` works
#      with CUDA) and a --sweep on cuda,
#   4. runs the CUDA self-test program when it was built (build/Release/batchnorm_cuda_selftest),
# and writes report.md, bench.json/.svg and sweep.json/.svg into $BATCHNORM_OUT (default ./gpu-report).
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

# cuDNN: use BATCHNORM_CUDNN_PATH when set; else, when libcudnn.so.9 is not on
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

compare=""
if command -v "$PY" >/dev/null 2>&1 && "$PY" -c "import torch; assert torch.cuda.is_available()" >/dev/null 2>&1; then
  compare="--compare torch"
else
  echo "PyTorch comparison skipped: $PY -c 'import torch' (with CUDA) does not work here" | tee "$OUT/torch.txt"
fi
echo "== benchmark (batchnorm bench --backend all $compare)"
PYTHON="$PY" timeout 1200 "$NODE" dist/lib/cli.js bench --backend all $compare \
  --json "$OUT/bench.json" --svg "$OUT/bench.svg" 2>&1 | tee "$OUT/bench.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
# 'auto' on device data picks between our kernels and cuDNN per shape from this run's
# timings: the table is rewritten in the source tree, to be committed with the report
# (it takes effect with the next build).
echo "== dispatch table (native/backend_api/dispatch_table.h)"
"$NODE" scripts/dispatch-table.js "$OUT/bench.json" native/backend_api/dispatch_table.h 2>&1 | tee "$OUT/dispatch-table.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
echo "== sweep (batchnorm bench --sweep --backend cuda)"
timeout 900 "$NODE" dist/lib/cli.js bench --sweep --backend cuda --ops moments,batchNormalization \
  --json "$OUT/sweep.json" --svg "$OUT/sweep.svg" 2>&1 | tee "$OUT/sweep.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

# The CUDA kernels' own check (training forward/backward against a float64 host reference,
# CUDA-event timings): a separate program, built on request with
# `npx cmake-js compile -T batchnorm_cuda_selftest` and copied beside the addon.
SELFTEST="${BATCHNORM_SELFTEST:-build/Release/batchnorm_cuda_selftest}"
if [ -x "$SELFTEST" ]; then
  echo "== CUDA self-test ($SELFTEST)"
  timeout 900 "$SELFTEST" 2>&1 | tee "$OUT/selftest.txt"
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
else
  echo "== CUDA self-test skipped: $SELFTEST not built" | tee "$OUT/selftest.txt"
fi

# The markdown report: summary lines, the benchmark rows with ratios and targets.
"$NODE" - "$OUT" "$test_rc" <<'JS' > "$REPORT"
const fs = require('node:fs'); const path = require('node:path');
const [out, testRc] = process.argv.slice(2);
const read = (f) => { try { return fs.readFileSync(path.join(out, f), 'utf8'); } catch { return null; } };
const b = JSON.parse(read('bench.json') || 'null');
const tests = (read('tests.txt') || '').trim().split('\n').pop();
const L = [];
L.push('# batchnorm GPU check', '');
const m = b && b.machine;
L.push(`- device: ${m && m.gpu ? `${m.gpu} (cc ${m.computeCapability}, ${m.gpuMemoryGiB} GiB, driver ${m.driver}, runtime ${m.cudaRuntime})` : 'benchmark did not run on a GPU'}`);
L.push(`- tests (BATCHNORM_REQUIRE_GPU=1): ${tests} (exit ${testRc})`);
L.push(`- CUDA self-test: ${(read('selftest.txt') || 'not run').trim().split('\n').pop()}`);
if (b) {
  const f = (v, d = 3) => (typeof v === 'number' ? v.toFixed(d) : '-');
  const torch = b.peers.find((p) => p.peer === 'torch');
  const peerMs = (r) => { const t = torch && torch.results.find((q) => q.workload === r.workload && q.op === r.op); return t ? t.ms : undefined; };
  L.push('', '| workload | op | backend | ms | GB/s | % of floor | torch ms | torch / ours |', '|---|---|---|---|---|---|---|---|');
  for (const r of b.results.filter((x) => x.backend !== 'cpu')) {
    const t = peerMs(r);
    L.push(`| ${r.workload} ${JSON.stringify(r.shape)} ${r.layout} | ${r.op} | ${r.backend} | ${f(r.ms)} | ${f(r.gbs, 0)} | ${f(100 / r.floorRatio, 0)}% | ${f(t)} | ${t ? f(t / r.ms, 2) : '-'} |`);
  }
  L.push('', `torch: ${torch ? (torch.status === 'ok' ? `${torch.version} on ${torch.deviceName}` : `${torch.status}: ${torch.reason}`) : 'not run'}`);
  for (const s of b.skipped) L.push(`- ${s.workload} ${s.op} ${s.backend}: ${s.failed ? 'FAILED' : 'skipped'}: ${s.reason}`);
  L.push('', 'Targets: cuda batchNormalization >= 85% of D2D copy on W2-W4; cuda moments >= 80% of read; cuda fusedBatchNorm no slower than torch training-mode batch_norm.');
  const miss = [];
  for (const r of b.results.filter((x) => x.backend === 'cuda')) {
    if (r.op === 'batchNormalization' && ['W2', 'W3', 'W4'].includes(r.workload) && 1 / r.floorRatio < 0.85) miss.push(`${r.workload} batchNormalization ${f(100 / r.floorRatio, 0)}% of copy`);
    if (r.op === 'moments' && 1 / r.floorRatio < 0.8) miss.push(`${r.workload} moments ${f(100 / r.floorRatio, 0)}% of read`);
    const t = r.op === 'fusedBatchNorm' ? peerMs(r) : undefined;
    if (t !== undefined && t < r.ms) miss.push(`${r.workload} fusedBatchNorm slower than torch training batch_norm`);
  }
  const gpuRows = b.results.filter((x) => x.backend === 'cuda').length;
  L.push('', !gpuRows ? 'No cuda results: targets not checked.' : miss.length ? `Targets missed: ${miss.join('; ')}` : 'All targets met.');
  L.push('', 'cuda moments/batchNormalization: CUDA events (deviceTimeOp); other GPU rows: wall clock over back-to-back calls + synchronize. Charts: bench.svg, sweep.svg.');
}
L.push('', `cuDNN: ${(read('cudnn.txt') || 'not checked').trim().split('\n').join(' / ')}`);
console.log(L.join('\n'));
JS
cat "$REPORT"
echo "report: $REPORT"
exit $status
