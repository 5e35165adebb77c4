#!/usr/bin/env bash
# Distribution check, run by CI on every run:
#  1. npm run release: prebuildify (CUDA for sm_75..90 + PTX), load check, npm pack;
#  2. in an empty folder, with cmake, compilers and nvcc off PATH: npm install <tarball>
#     must succeed without compiling, `npx batchnorm demo` must run, and backends() must
#     report CUDA compiled in (unavailable here: no driver);
#  3. the reverse: a tarball without the prebuild installs by compiling from source.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "== the release command: prebuildify, check, npm pack"
npm run release --silent -- --pack-destination "$work" > "$work/release.log" 2>&1 || { cat "$work/release.log"; exit 1; }
grep -E '^(prebuild|tarball):' "$work/release.log"
tgz=$(sed -n 's/^tarball: //p' "$work/release.log")
tarball=$(basename "$tgz")
tar tzf "$tgz" | grep -E '^package/prebuilds/linux-x64/[^/]+\.node$' >/dev/null || { echo "no prebuild in the tarball"; exit 1; }
echo "tarball: $tarball, $(du -k "$tgz" | cut -f1) KiB packed, $(tar tzf "$tgz" | wc -l) files"
if tar tzf "$tgz" | grep -E '^package/(test|dist/test|bench|build)/' ; then echo "test/bench/build files in the tarball"; exit 1; fi
tar tzf "$tgz" | grep -x 'package/scripts/bench_torch.py' > /dev/null || { echo "the torch peer script of batchnorm bench is not in the tarball"; exit 1; }

# A PATH with node and the basic tools npm's scripts use, but no cmake, c++, gcc or nvcc.
bin="$work/bin"
mkdir -p "$bin"
for t in node sh bash env dirname basename uname cat rm mkdir ls cp mv chmod ln sed grep tar gzip mktemp; do
  p=$(command -v "$t") && ln -s "$p" "$bin/$t"
done
nodedir=$(dirname "$(command -v node)")
# npm/npx as shipped with node, called through node itself
printf '#!/bin/sh\nexec node "%s" "$@"\n' "$(readlink -f "$nodedir/npm")" > "$bin/npm"
printf '#!/bin/sh\nexec node "%s" "$@"\n' "$(readlink -f "$nodedir/npx")" > "$bin/npx"
chmod +x "$bin/npm" "$bin/npx"
for t in cmake c++ g++ gcc cc nvcc make ninja; do
  if PATH="$bin" command -v "$t" >/dev/null 2>&1; then echo "stripped PATH still has $t"; exit 1; fi
done

echo "== install the tarball with no compiler on PATH"
app="$work/app"
mkdir -p "$app"
(cd "$app" && PATH="$bin" npm init -y >/dev/null)
start=$(date +%s.%N)
# --allow-scripts: let batchnorm's install script run (npm 11 asks for approval), so the
# check proves that the script finds the prebuild and does not compile.
(cd "$app" && PATH="$bin" npm install --no-audit --no-fund --foreground-scripts "$tgz" 2>&1 | tail -n 5)
end=$(date +%s.%N)
echo "install time: $(echo "$end - $start" | bc) s"
test ! -e "$app/node_modules/batchnorm/build" || { echo "the install compiled (build/ exists)"; exit 1; }
(cd "$app" && PATH="$bin" npx --no-install batchnorm demo --shape 32,8,8,16)
# The benchmark from the tarball: a quick run with JSON; --svg without the optional chart
# packages is a clear error (exit 2), not a crash.
(cd "$app" && PATH="$bin" npx --no-install batchnorm bench --quick --backend cpu --json bench.json > bench.txt)
(cd "$app" && PATH="$bin" node -e "
  const r = require('./bench.json');
  if (!(r.results.length > 0 && r.results.every((x) => x.ms > 0 && x.floorRatio > 0))) process.exit(1);
  console.log('bench --quick from the tarball:', r.results.length, 'results');
")
set +e
(cd "$app" && PATH="$bin" npx --no-install batchnorm bench --quick --svg chart.svg 2> svg.err)
rc=$?
set -e
if [ "$rc" -ne 2 ] || ! grep -q 'npm install vega vega-lite' "$app/svg.err"; then
  echo "bench --svg without vega: exit $rc"; cat "$app/svg.err"; exit 1
fi
(cd "$app" && PATH="$bin" node -e "
  const bn = require('batchnorm');
  const cuda = bn.info().cuda;
  console.log('backends:', JSON.stringify(bn.backends()));
  if (!cuda.compiled) { console.error('CUDA is not compiled into the prebuilt binary'); process.exit(1); }
  const r = bn.moments({ data: new Float32Array([1, 2, 3, 4]), shape: [4] }, [0]);
  if (r.mean.data[0] !== 2.5) process.exit(1);
")

echo "== the reverse: no prebuild in the tarball -> compiles from source"
src="$work/src"
mkdir -p "$src"
tar xzf "$tgz" -C "$src"
rm -rf "$src/package/prebuilds"
tgz2=$(cd "$src/package" && npm pack --silent --pack-destination "$work" --ignore-scripts | tail -n 1)
app2="$work/app2"
mkdir -p "$app2"
(cd "$app2" && npm init -y >/dev/null)
(cd "$app2" && npm install --no-audit --no-fund --foreground-scripts "$work/$tgz2" > "$work/install2.log" 2>&1) || { tail -n 30 "$work/install2.log"; exit 1; }
tail -n 3 "$work/install2.log"
# The fallback is announced in one plain line, not a stack trace.
grep -q '^batchnorm: no prebuilt binary for linux-x64 (Node v[0-9.]*); building from source with cmake-js$' "$work/install2.log" \
  || { echo "the source-build fallback did not say its one line"; head -n 20 "$work/install2.log"; exit 1; }
if grep -q 'No native build was found' "$work/install2.log"; then echo "the install printed node-gyp-build's error"; exit 1; fi
test -e "$app2/node_modules/batchnorm/build/Release/batchnorm.node" || { echo "no source build happened"; exit 1; }
(cd "$app2" && node -e "const bn = require('batchnorm'); console.log('source build loads:', bn.info().cpuFeatures)")
echo "pack test: ok"
