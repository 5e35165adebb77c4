#!/usr/bin/env bash
# Builds the addon with AddressSanitizer + UndefinedBehaviorSanitizer (CPU paths; CUDA off
# to keep it quick) into build-asan/ and runs the whole mocha suite against it, with the
# sanitizer runtimes preloaded into node. Any ASan or UBSan report aborts the run.
set -euo pipefail
cd "$(dirname "$0")/.."
npx cmake-js compile -O build-asan --CDBATCHNORM_SANITIZE=ON --CDBATCHNORM_CUDA=OFF
ASAN_LIB=$(${CXX:-g++} -print-file-name=libasan.so)
UBSAN_LIB=$(${CXX:-g++} -print-file-name=libubsan.so)
# detect_leaks=0: node itself does not free everything at exit (leaks are tested by
# test/reliability.test.ts instead); a small quarantine keeps RSS-based leak checks meaningful.
export LD_PRELOAD="$ASAN_LIB $UBSAN_LIB"
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:quarantine_size_mb=4
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
export BATCHNORM_ADDON_PATH=build-asan/Release/batchnorm.node
exec npx mocha "$@"
