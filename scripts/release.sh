#!/usr/bin/env bash
# The release path in one command: build the prebuilt binary (prebuildify; CUDA kernels
# for sm_75..sm_90 + PTX when nvcc is on PATH), check that it loads, and npm pack. A
# tarball without a prebuild makes every install compile from source, so packing without
# one is refused unless --allow-no-prebuild says so.
#
#   npm run release -- [--allow-no-prebuild] [--no-build] [--pack-destination DIR]
#
#   --no-build            pack the prebuilds/ that are there (do not run prebuildify)
#   --allow-no-prebuild   pack even when there is no prebuild (installs then compile)
#   --pack-destination    where the .tgz goes (default: the current directory)
set -euo pipefail
allow=0
build=1
dest=$PWD
while [ $# -gt 0 ]; do
  case "$1" in
    --allow-no-prebuild) allow=1 ;;
    --no-build) build=0 ;;
    --pack-destination) dest=${2:?--pack-destination needs a directory}; shift ;;
    -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "release: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
dest=$(cd "$dest" && pwd)
cd "$(dirname "$0")/.."

platform=$(node -p 'process.platform + "-" + process.arch')
if [ "$build" = 1 ]; then
  echo "== prebuildify ($platform)"
  rm -rf prebuilds
  log=$(mktemp)
  if ! npm run prebuildify --silent >"$log" 2>&1; then
    tail -n 30 "$log"; rm -f "$log"
    echo "release: prebuildify failed (above)" >&2
    exit 1
  fi
  rm -f "$log"
fi

prebuild=$(ls prebuilds/"$platform"/*.node 2>/dev/null | head -n 1 || true)
if [ -z "$prebuild" ]; then
  if [ "$allow" = 1 ]; then
    echo "release: WARNING: no prebuilt binary in prebuilds/$platform/; installs from this tarball compile from source" >&2
  else
    echo "release: no prebuilt binary in prebuilds/$platform/: refusing to pack (installs would need a compiler)." >&2
    echo "release: run without --no-build to build one, or pass --allow-no-prebuild to pack anyway." >&2
    exit 1
  fi
else
  # The prebuild itself (not build/Release, which node-gyp-build would prefer) must load and run.
  node -e "
    const b = require(require('node:path').resolve(process.argv[1]));
    if (!b.backends().some((x) => x.name === 'cpu' && x.available)) throw new Error('CPU backend unavailable');
  " "$prebuild"
  echo "prebuild: $prebuild ($(du -k "$prebuild" | cut -f1) KiB), loads and runs"
fi

echo "== npm pack"
tarball=$(npm pack --silent --pack-destination "$dest" | tail -n 1)
echo "tarball: $dest/$tarball"
