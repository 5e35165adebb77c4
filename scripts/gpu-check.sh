#!/usr/bin/env bash
# GPU check: on a machine with an NVIDIA GPU and the built addon (build/Release/batchnorm.node,
# dist/, node_modules/; no npm and no network needed), runs the stages named in
# GPU_CHECK_STAGES (comma-separated; default: all but sweep; run in the order below whatever the
# list's order), each under its own timeout and all within GPU_CHECK_BUDGET seconds (default 470),
# so the default run fits in about 8 minutes; a stage cut by its timeout fails:
#   tests      the whole mocha suite with BATCHNORM_REQUIRE_GPU=1 (unavailable GPU backends fail)
#   bench      `batchnorm bench` on W1-W6 for cuda (with --compare torch: PyTorch's training
#              forward, eval, backward) and for cudnn, merged into bench.json; then the measured
#              dispatch table (native/backend_api/dispatch_table.h) is rewritten from it
#   torch      PyTorch BatchNorm under autograd: forward, backward, step, eval (torch-autograd.json)
#   selftest   the CUDA self-test program (build/Release/batchnorm_cuda_selftest)
#   nccl       scripts/nccl-check.sh: synchronized batch norm over NCCL, one rank per GPU
#              (a single rank on a one-GPU machine), into $BATCHNORM_OUT/nccl
#   cudatests  the suite again with setBackend('cuda') before every test (scripts/force-cuda.js),
#              so host inputs run on our CUDA kernels wherever a test names no backend
#   sanitize   compute-sanitizer memcheck and racecheck over the GPU test files and over the
#              self-test (--quick --no-timing); only the out-of-memory tests' API errors may appear
#   sweep      `batchnorm bench --sweep` on cuda (not in the default list)
# Always: the device (nvidia-smi, `batchnorm info`), cuDNN and NCCL discovery, and at the end
# scripts/gpu-targets.js, which writes bench/results/gpu-<card>-<date>.{md,json} (each target as
# {name, value, target, met}) when bench.json exists, and report.md in $BATCHNORM_OUT.
# Node comes from $NODE (default `node`), Python from $PYTHON (default python3). Per-stage
# timeouts in seconds: GPU_CHECK_TIMEOUT_<STAGE> (e.g. GPU_CHECK_TIMEOUT_BENCH=300).
# Exits non-zero when any stage that ran failed.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
NODE="${NODE:-node}"
PY="${PYTHON:-python3}"
OUT="${BATCHNORM_OUT:-$PWD/gpu-report}"
export BATCHNORM_OUT="$OUT"
mkdir -p "$OUT"
STAGES=",${GPU_CHECK_STAGES:-tests,cudatests,bench,torch,selftest,nccl,sanitize},"
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
status=0
MOCHA=(node_modules/mocha/bin/mocha.js)

START=$(date +%s)
# The whole run's budget in seconds: a stage gets at most what is left of it (less a reserve for
# the report), so the default run ends within about 8 minutes however slow a stage is.
BUDGET="${GPU_CHECK_BUDGET:-470}"
want() { [[ "$STAGES" == *",$1,"* || "$STAGES" == ",all," ]]; }
# Seconds for a stage: GPU_CHECK_TIMEOUT_<STAGE> or the default given, capped by the budget left.
limit() {
  local v="GPU_CHECK_TIMEOUT_${1^^}" left=$(( BUDGET - 15 - ($(date +%s) - START) ))
  local t="${!v:-$2}"
  [ "$left" -lt "$t" ] && t=$left
  [ "$t" -lt 5 ] && t=5
  echo "$t"
}
# Records one line per stage result; a failed one makes the exit status non-zero.
record() {
  local name="$1" rc="$2" what="$3"
  if [ "$rc" -eq 0 ]; then echo "PASS $name: $what" >> "$SUMMARY"; else echo "FAIL $name (exit $rc${4:+, $4}): $what" >> "$SUMMARY"; status=1; fi
}
elapsed() { echo $(( $(date +%s) - $1 ))s; }

echo "== device"
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.memory --format=csv | tee "$OUT/nvidia-smi.txt"
  CARD=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
else
  echo "nvidia-smi: not found" | tee "$OUT/nvidia-smi.txt"
  CARD=""
fi
"$NODE" dist/lib/cli.js info | tee "$OUT/info.txt"
rc=${PIPESTATUS[0]}
record info "$rc" "batchnorm info"

# cuDNN: use BATCHNORM_CUDNN_PATH when set; else, when libcudnn.so.9 is not on the default
# search path, look where pip installs it (the nvidia-cudnn-cu* wheel), then on the disk.
# Without it, the cudnn tests skip (BATCHNORM_REQUIRE_CUDNN=0) and the report says so.
echo "== cuDNN"
if [ -z "${BATCHNORM_CUDNN_PATH:-}" ] && ! ldconfig -p 2>/dev/null | grep -q 'libcudnn\.so\.9 '; then
  d=$("$PY" -c "import nvidia.cudnn, os; print(os.path.join(list(nvidia.cudnn.__path__)[0], 'lib'))" 2>/dev/null || true)
  if [ -n "$d" ] && [ -e "$d/libcudnn.so.9" ]; then
    export BATCHNORM_CUDNN_PATH="$d"
  else
    f=$(find / -xdev -name 'libcudnn.so.9*' -not -path '/proc/*' 2>/dev/null | head -1)
    if [ -n "$f" ]; then BATCHNORM_CUDNN_PATH=$(dirname "$f"); export BATCHNORM_CUDNN_PATH; fi
  fi
fi
"$NODE" -e "const b=require('./dist/lib/index.js'); const c=b.backends().find((x)=>x.name==='cudnn'); console.log('BATCHNORM_CUDNN_PATH=${BATCHNORM_CUDNN_PATH:-}', JSON.stringify(b.cudnnProbe()), 'backend:', JSON.stringify(c))" | tee "$OUT/cudnn.txt"
if ! grep -q '"available":true' "$OUT/cudnn.txt"; then
  echo "cuDNN unavailable: its tests skip (BATCHNORM_REQUIRE_CUDNN=0)" | tee -a "$OUT/cudnn.txt"
  export BATCHNORM_REQUIRE_CUDNN=0
fi

# NCCL the same way (BATCHNORM_NCCL_PATH, the default search path, pip's nvidia-nccl-cu*
# wheel, the disk), so the self-test's one-rank checks, the GPU tests and the nccl stage
# find it. Without it they skip or report why.
echo "== NCCL"
if [ -z "${BATCHNORM_NCCL_PATH:-}" ] && ! ldconfig -p 2>/dev/null | grep -q 'libnccl\.so\.2 '; then
  d=$("$PY" -c "import nvidia.nccl, os; print(os.path.join(list(nvidia.nccl.__path__)[0], 'lib'))" 2>/dev/null || true)
  if [ -n "$d" ] && [ -e "$d/libnccl.so.2" ]; then
    export BATCHNORM_NCCL_PATH="$d"
  else
    f=$(find / -xdev -name 'libnccl.so.2*' -not -path '/proc/*' 2>/dev/null | head -1)
    if [ -n "$f" ]; then BATCHNORM_NCCL_PATH=$(dirname "$f"); export BATCHNORM_NCCL_PATH; fi
  fi
fi
"$NODE" -e "const b=require('./dist/lib/index.js'); console.log('BATCHNORM_NCCL_PATH=${BATCHNORM_NCCL_PATH:-}', JSON.stringify(b.ncclProbe()))" | tee "$OUT/nccl-probe.txt"

# The release test packs with npm; GPU machines may have no npm, and then it is left out.
IGNORE=()
if ! command -v npm >/dev/null 2>&1; then
  IGNORE=(--ignore dist/test/install.test.js)
  echo "npm not found: dist/test/install.test.js is left out of the test stages" | tee "$OUT/tests-ignored.txt"
fi

if want tests; then
  echo "== tests (BATCHNORM_REQUIRE_GPU=1)"
  t0=$(date +%s)
  BATCHNORM_REQUIRE_GPU=1 timeout "$(limit tests 100)" "$NODE" "${MOCHA[@]}" "${IGNORE[@]}" 2>&1 | tee "$OUT/tests.txt"
  rc=${PIPESTATUS[0]}
  record tests "$rc" "$(tail -1 "$OUT/tests.txt") in $(elapsed "$t0")"
fi

have_torch=0
if command -v "$PY" >/dev/null 2>&1 && "$PY" -c "import torch; assert torch.cuda.is_available()" >/dev/null 2>&1; then
  have_torch=1
else
  echo "PyTorch with CUDA not importable by $PY: PyTorch timings skipped" | tee "$OUT/torch.txt"
fi

if want bench; then
  # cuda and cudnn separately (the cpu backend would spend minutes on W3), merged into one
  # report for the dispatch table and the targets; torch runs with the cuda bench.
  echo "== benchmark (batchnorm bench --backend cuda, with --compare torch when PyTorch works; --backend cudnn)"
  t0=$(date +%s)
  compare=()
  [ "$have_torch" -eq 1 ] && compare=(--compare torch)
  # GPU_CHECK_BENCH_ARGS adds bench flags to both runs (e.g. "--reps 10" when time is short).
  read -r -a extra <<< "${GPU_CHECK_BENCH_ARGS:-}"
  PYTHON="$PY" timeout "$(limit bench 150)" "$NODE" dist/lib/cli.js bench --backend cuda "${compare[@]}" "${extra[@]}" \
    --json "$OUT/bench-cuda.json" 2>&1 | tee "$OUT/bench-cuda.txt"
  rc=${PIPESTATUS[0]}
  record bench-cuda "$rc" "W1-W6 on cuda${compare[*]:+ with torch} in $(elapsed "$t0")"
  if grep -q '"available":true' "$OUT/cudnn.txt"; then
    t0=$(date +%s)
    timeout "$(limit benchcudnn 60)" "$NODE" dist/lib/cli.js bench --backend cudnn "${extra[@]}" \
      --json "$OUT/bench-cudnn.json" 2>&1 | tee "$OUT/bench-cudnn.txt"
    rc=${PIPESTATUS[0]}
    record bench-cudnn "$rc" "W1-W6 on cudnn in $(elapsed "$t0")"
  fi
  if [ -s "$OUT/bench-cuda.json" ]; then
    "$NODE" -e '
      const fs = require("node:fs"); const [a, b, out] = process.argv.slice(1);
      const r = JSON.parse(fs.readFileSync(a, "utf8"));
      if (fs.existsSync(b)) { const c = JSON.parse(fs.readFileSync(b, "utf8")); r.results.push(...c.results); r.skipped.push(...c.skipped); r.command += " + " + c.command; }
      fs.writeFileSync(out, JSON.stringify(r, null, 1));' "$OUT/bench-cuda.json" "$OUT/bench-cudnn.json" "$OUT/bench.json"
    # 'auto' on device data picks between our kernels and cuDNN per shape from this run's
    # timings: the table is rewritten in the tree, to be committed with the report.
    echo "== dispatch table (native/backend_api/dispatch_table.h)"
    "$NODE" scripts/dispatch-table.js "$OUT/bench.json" native/backend_api/dispatch_table.h 2>&1 | tee "$OUT/dispatch-table.txt"
    rc=${PIPESTATUS[0]}
    record dispatch-table "$rc" "$(tail -1 "$OUT/dispatch-table.txt")"
    [ -f native/backend_api/dispatch_table.h ] && cp native/backend_api/dispatch_table.h "$OUT/"
  fi
fi

if want torch; then
  if [ "$have_torch" -eq 1 ]; then
    echo "== PyTorch autograd (scripts/bench_torch_autograd.py)"
    t0=$(date +%s)
    timeout "$(limit torch 60)" "$PY" scripts/bench_torch_autograd.py > "$OUT/torch-autograd.json" 2> "$OUT/torch-autograd.err"
    rc=$?
    cat "$OUT/torch-autograd.err"
    record torch "$rc" "nn.BatchNorm forward/backward/eval W1-W6 in $(elapsed "$t0")"
  else
    record torch 1 "PyTorch with CUDA not importable"
  fi
fi

SELFTEST="${BATCHNORM_SELFTEST:-build/Release/batchnorm_cuda_selftest}"
if want selftest; then
  if [ -x "$SELFTEST" ]; then
    echo "== CUDA self-test ($SELFTEST)"
    t0=$(date +%s)
    timeout "$(limit selftest 60)" "$SELFTEST" 2>&1 | tee "$OUT/selftest.txt"
    rc=${PIPESTATUS[0]}
    record selftest "$rc" "$(tail -1 "$OUT/selftest.txt") in $(elapsed "$t0")"
  else
    record selftest 1 "$SELFTEST not built"
  fi
fi

if want nccl; then
  if grep -q '"loaded":true' "$OUT/nccl-probe.txt"; then
    echo "== NCCL (scripts/nccl-check.sh)"
    t0=$(date +%s)
    lim=$(limit nccl 90)
    # Each rank's own timeout ends inside the stage's, so no rank outlives the stage.
    NCCL_CHECK_RANK_TIMEOUT=$(( lim > 20 ? lim - 10 : lim )) BATCHNORM_OUT="$OUT/nccl" timeout "$lim" \
      bash scripts/nccl-check.sh 2>&1 | tee "$OUT/nccl.txt"
    rc=${PIPESTATUS[0]}
    record nccl "$rc" "$(tail -1 "$OUT/nccl.txt") in $(elapsed "$t0")"
  else
    # An optional library, as cuDNN: the report says it did not run, and why.
    echo "SKIP nccl: NCCL not loadable here (see nccl-probe.txt); the synchronized device path did not run" >> "$SUMMARY"
  fi
fi

if want cudatests; then
  echo "== tests with setBackend('cuda') for host inputs (scripts/force-cuda.js)"
  t0=$(date +%s)
  BATCHNORM_REQUIRE_GPU=1 timeout "$(limit cudatests 80)" "$NODE" "${MOCHA[@]}" "${IGNORE[@]}" --require scripts/force-cuda.js 2>&1 | tee "$OUT/tests-cuda.txt"
  rc=${PIPESTATUS[0]}
  record cudatests "$rc" "$(tail -1 "$OUT/tests-cuda.txt") in $(elapsed "$t0")" "tests that assert the default backend fail under the forced backend: read tests-cuda.txt"
fi

if want sanitize; then
  SAN="${COMPUTE_SANITIZER:-}"
  if [ -z "$SAN" ]; then
    SAN=$(command -v compute-sanitizer 2>/dev/null || true)
    for c in /usr/local/cuda/bin/compute-sanitizer /usr/local/cuda/compute-sanitizer/compute-sanitizer; do
      [ -z "$SAN" ] && [ -x "$c" ] && SAN="$c"
    done
    # pip's nvidia-cuda-sanitizer wheel, then anywhere on the disk.
    if [ -z "$SAN" ]; then
      for d in $("$PY" -c "import site; print(' '.join(site.getsitepackages()))" 2>/dev/null); do
        [ -z "$SAN" ] && SAN=$(find "$d" -type f -name compute-sanitizer -perm -u+x 2>/dev/null | head -1)
      done
    fi
    [ -z "$SAN" ] && SAN=$(find / -xdev -type f -name compute-sanitizer -perm -u+x -not -path '/proc/*' 2>/dev/null | head -1)
  fi
  if [ -z "$SAN" ]; then
    record sanitize 1 "compute-sanitizer not found (set COMPUTE_SANITIZER)"
  else
    echo "== compute-sanitizer ($SAN)"
    files=()
    for f in ${GPU_CHECK_SANITIZE_FILES:-device cudnn layer-device training-gpu training-native hazards}; do
      [ -f "dist/test/$f.test.js" ] && files+=("dist/test/$f.test.js")
    done
    for tool in memcheck racecheck; do
      t0=$(date +%s)
      # The sanitizer's own exit code is the application's; the verdict is the summary's.
      # node gets --expose-gc itself, so mocha runs the tests in this process, not a child.
      BATCHNORM_REQUIRE_GPU=1 timeout "$(limit "sanitize_$tool" 90)" "$SAN" --tool "$tool" --print-limit 200 --target-processes all \
        "$NODE" --expose-gc "${MOCHA[@]}" --no-config --timeout 300000 --reporter dot "${files[@]}" > "$OUT/$tool-tests.txt" 2>&1
      rc=$?
      tail -5 "$OUT/$tool-tests.txt"
      v=$("$NODE" scripts/sanitizer-summary.js "$OUT/$tool-tests.txt"); vr=$?
      echo "$v"
      [ "$rc" -ne 0 ] && [ "$vr" -eq 0 ] && vr=$rc
      record "$tool-tests" "$vr" "$v (mocha exit $rc) in $(elapsed "$t0")"
      if [ -x "$SELFTEST" ]; then
        t0=$(date +%s)
        timeout "$(limit "sanitize_${tool}_selftest" 45)" "$SAN" --tool "$tool" --print-limit 200 \
          "$SELFTEST" --quick --no-timing > "$OUT/$tool-selftest.txt" 2>&1
        rc=$?
        tail -3 "$OUT/$tool-selftest.txt"
        v=$("$NODE" scripts/sanitizer-summary.js "$OUT/$tool-selftest.txt"); vr=$?
        echo "$v"
        [ "$rc" -ne 0 ] && [ "$vr" -eq 0 ] && vr=$rc
        record "$tool-selftest" "$vr" "$v (exit $rc) in $(elapsed "$t0")"
      fi
    done
  fi
fi

if want sweep; then
  echo "== sweep (batchnorm bench --sweep --backend cuda)"
  t0=$(date +%s)
  timeout "$(limit sweep 300)" "$NODE" dist/lib/cli.js bench --sweep --backend cuda --ops moments,batchNormalization \
    --json "$OUT/sweep.json" --svg "$OUT/sweep.svg" 2>&1 | tee "$OUT/sweep.txt"
  rc=${PIPESTATUS[0]}
  record sweep "$rc" "in $(elapsed "$t0")"
fi

# The targets, into the tree (bench/results/, to be committed) and beside the other output.
if [ -s "$OUT/bench.json" ]; then
  echo "== targets (scripts/gpu-targets.js)"
  notes=(--note "stages: ${STAGES:1:-1}")
  while IFS= read -r l; do notes+=(--note "$l"); done < "$SUMMARY"
  "$NODE" scripts/gpu-targets.js --bench "$OUT/bench.json" --autograd "$OUT/torch-autograd.json" \
    ${CARD:+--card "$CARD"} --date "$(date -u +%F)" --out-dir bench/results "${notes[@]}" 2>&1 | tee "$OUT/targets.txt"
  rc=${PIPESTATUS[0]}
  record targets "$rc" "$(tail -1 "$OUT/targets.txt")"
  cp bench/results/gpu-*-"$(date -u +%F)".* "$OUT/" 2>/dev/null
fi

{
  echo "# batchnorm GPU check"
  echo
  echo "- device: ${CARD:-unknown}; stages: ${STAGES:1:-1}; $(date -u +%FT%TZ)"
  echo
  sed 's/^/- /' "$SUMMARY"
  echo
  echo "cuDNN: $(tr '\n' ' ' < "$OUT/cudnn.txt")"
  echo
  echo "NCCL: $(tr '\n' ' ' < "$OUT/nccl-probe.txt")"
} > "$OUT/report.md"
cat "$OUT/report.md"
echo "report: $OUT/report.md"
exit $status
