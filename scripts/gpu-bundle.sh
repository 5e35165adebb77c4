#!/usr/bin/env bash
# Packs everything the GPU check needs for a machine with a GPU but no Node.js, npm or network,
# into .gpu-bundle/ (ignored by git):
#   node.xz        this machine's node binary, stripped and xz-compressed
#   run.tgz        the tracked files, build/Release/{batchnorm.node,batchnorm_cuda_selftest}
#                  (built for sm_90 in build-sm90/), dist/ and node_modules/ without the
#                  compiler and type packages
#   run-on-gpu.sh  unpacks both into a temporary directory, puts node on PATH and runs
#                  scripts/gpu-check.sh; results (and bench/results/, dispatch_table.h) go to $OUT
# Run here, on the build machine: bash scripts/gpu-bundle.sh [--no-build]
# On the GPU machine, from the repository root: GPU_CHECK_STAGES=... bash .gpu-bundle/run-on-gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.." || exit 2
ROOT=$PWD
B="$ROOT/.gpu-bundle"
build=1
[ "${1:-}" = "--no-build" ] && build=0

if [ "$build" -eq 1 ]; then
  # -D options take effect only when CMake configures: hence a directory of its own.
  npx cmake-js compile -O build-sm90 --CDCMAKE_CUDA_ARCHITECTURES=90
  npx cmake-js compile -O build-sm90 --CDCMAKE_CUDA_ARCHITECTURES=90 -T batchnorm_cuda_selftest
  npm run build
fi
for f in build-sm90/Release/batchnorm.node build-sm90/Release/batchnorm_cuda_selftest dist/lib/cli.js; do
  [ -e "$f" ] || { echo "gpu-bundle: $f is missing (run without --no-build)" >&2; exit 1; }
done

rm -rf "$B"
mkdir -p "$B"
STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT
T="$STAGE/run"
mkdir -p "$T/build/Release"
# The tracked files as they are in the work tree (the tests read .mocharc.json, binding.d.ts,
# README.md, examples/, scripts/, native/backend_api/dispatch_table.h), then the build output.
git ls-files -z | tar --null -T - -cf - | tar -C "$T" -xf -
# Where node-gyp-build looks: build/Release/.
cp build-sm90/Release/batchnorm.node build-sm90/Release/batchnorm_cuda_selftest "$T/build/Release/"
cp -a dist "$T/"
# node_modules without what only building needs: the TypeScript compilers and type packages,
# prebuildify. mocha, fast-check, tfjs (the oracle tests), vega (charts), node-gyp-build and
# cmake-js (tests read its package) stay.
tar -C "$ROOT" -cf - \
  --exclude='node_modules/typescript' --exclude='node_modules/@typescript' --exclude='node_modules/@types' \
  --exclude='node_modules/prebuildify' --exclude='node_modules/.cache' \
  --exclude='*.map' --exclude='node_modules/@tensorflow/*/dist/*.min.js' \
  --exclude='node_modules/@tensorflow/*/dist/*.es2017.js' --exclude='node_modules/@tensorflow/*/dist/*.fesm.js' \
  --exclude='node_modules/@tensorflow/*/dist/*.esm.js' \
  node_modules | tar -C "$T" -xf -
tar -C "$STAGE" -czf "$B/run.tgz" run

cp "$(command -v node)" "$STAGE/node"
strip "$STAGE/node" 2>/dev/null || echo "gpu-bundle: strip failed; packing node unstripped" >&2
xz -T2 -6 -c "$STAGE/node" > "$B/node.xz"

cat > "$B/run-on-gpu.sh" <<'RUN'
#!/usr/bin/env bash
# Unpacks node.xz and run.tgz (beside this script) into a temporary directory, runs
# scripts/gpu-check.sh there with the stages in GPU_CHECK_STAGES (default: the script's), and
# copies the results into $OUT (default ./gpu-out): the check's output, bench/results/ and the
# measured native/backend_api/dispatch_table.h, ready to commit.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
DEST="${OUT:-$PWD/gpu-out}"
mkdir -p "$DEST"
W=$(mktemp -d)
mkdir -p "$W/bin"
# Python's lzma and tarfile stand in where xz or tar is missing.
if command -v xz >/dev/null 2>&1; then
  xz -dc "$HERE/node.xz" > "$W/bin/node"
else
  python3 -c "import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], 'wb'))" "$HERE/node.xz" "$W/bin/node"
fi
chmod +x "$W/bin/node"
tar -C "$W" -xzf "$HERE/run.tgz" 2>/dev/null ||
  python3 -c "import tarfile, sys; tarfile.open(sys.argv[1]).extractall(sys.argv[2])" "$HERE/run.tgz" "$W"
export PATH="$W/bin:$PATH"
echo "node $(node --version) in $W"
cd "$W/run" || exit 2
BATCHNORM_OUT="$DEST/check" NODE="$W/bin/node" bash scripts/gpu-check.sh
rc=$?
mkdir -p "$DEST/bench" "$DEST/native/backend_api"
cp -a bench/results "$DEST/bench/" 2>/dev/null
cp native/backend_api/dispatch_table.h "$DEST/native/backend_api/" 2>/dev/null
echo "gpu-check exit $rc; results in $DEST"
[ -n "${KEEP_GPU_CHECK_DIR:-}" ] || rm -rf "$W"
exit $rc
RUN
chmod +x "$B/run-on-gpu.sh"

echo "gpu-bundle: $B"
du -h "$B"/* | sed 's/^/  /'
du -sh "$B" | sed 's/^/  total /'
