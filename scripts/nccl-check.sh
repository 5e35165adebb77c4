#!/usr/bin/env bash
# NCCL check for GPU machines: one process per visible GPU (CUDA_VISIBLE_DEVICES=i, so each
# rank uses its device 0), each running scripts/nccl-rank.js: synchronized batch norm
# forward + backward on uneven shards (host tensors, and DeviceTensors whose ops run the
# NCCL collectives between their kernels; NHWC and NCHW) against the whole batch computed
# without a communicator, the device collectives, and the exchange time for the channel
# counts of W1–W6 (host collectives, and a device training step with and without sync). On a one-GPU machine it runs a single rank (NCCL does not allow two ranks on one
# GPU) and says that multi-GPU is untested. Writes $BATCHNORM_OUT (default ./nccl-report).
# Needs the built addon (npx cmake-js compile && npm run build) and libnccl.so.2:
# BATCHNORM_NCCL_PATH, else the default search path, else the pip package nvidia-nccl-cu*.
# NCCL_CHECK_RANK_TIMEOUT: seconds each rank may run (default 300).
set -uo pipefail
cd "$(dirname "$0")/.."
NODE="${NODE:-node}"
PY="${PYTHON:-python3}"
OUT="${BATCHNORM_OUT:-$PWD/nccl-report}"
mkdir -p "$OUT"

if [ -z "${BATCHNORM_NCCL_PATH:-}" ] && ! ldconfig -p 2>/dev/null | grep -q 'libnccl\.so\.2 '; then
  d=$("$PY" -c "import nvidia.nccl, os; print(os.path.join(list(nvidia.nccl.__path__)[0], 'lib'))" 2>/dev/null || true)
  if [ -n "$d" ] && [ -e "$d/libnccl.so.2" ]; then
    export BATCHNORM_NCCL_PATH="$d"
  else
    f=$(find / -xdev -name 'libnccl.so.2*' -not -path '/proc/*' 2>/dev/null | head -1)
    [ -n "$f" ] && export BATCHNORM_NCCL_PATH="$(dirname "$f")"
  fi
fi
echo "BATCHNORM_NCCL_PATH=${BATCHNORM_NCCL_PATH:-}" | tee "$OUT/nccl.txt"
"$NODE" -e "const b=require('./dist/lib/index.js'); console.log(JSON.stringify({probe: b.ncclProbe(), nccl: b.info().nccl}))" | tee -a "$OUT/nccl.txt"
if ! grep -q '"available":true' "$OUT/nccl.txt"; then
  echo "NCCL unavailable here: nothing to run (see the reason above)" | tee -a "$OUT/nccl.txt"
  exit 1
fi

N=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)
if [ "${N:-0}" -lt 1 ]; then echo "no GPU visible (nvidia-smi -L)"; exit 1; fi
if [ "$N" -eq 1 ]; then
  echo "one GPU: running a single-rank communicator; multi-GPU is untested on this machine" | tee -a "$OUT/nccl.txt"
fi
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
pids=()
for ((i = 0; i < N; i++)); do
  CUDA_VISIBLE_DEVICES=$i timeout "${NCCL_CHECK_RANK_TIMEOUT:-300}" "$NODE" scripts/nccl-rank.js "$i" "$N" "$TMP" > "$OUT/rank$i.json" 2> "$OUT/rank$i.err" &
  pids+=($!)
done
status=0
for ((i = 0; i < N; i++)); do
  wait "${pids[$i]}" || status=1
  echo "rank $i: $(cat "$OUT/rank$i.json")"
  [ -s "$OUT/rank$i.err" ] && sed 's/^/  stderr: /' "$OUT/rank$i.err"
done
echo "ranks: $N; status: $([ $status -eq 0 ] && echo ok || echo FAILED)" | tee -a "$OUT/nccl.txt"
exit $status
