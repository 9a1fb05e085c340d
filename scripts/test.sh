#!/usr/bin/env bash
# Build and run every test: the Check suites and CLI scripts in the release
# build, the same suites under AddressSanitizer and UndefinedBehaviorSanitizer,
# then each libFuzzer target for KVS_FUZZ_SECONDS (default 20) seconds.
# Suites that need ../shared and cannot find it are reported as skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=$(nproc)
scripts/install-deps.sh
fuzz_seconds=${KVS_FUZZ_SECONDS:-20}

echo "== release build =="
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$jobs"

echo "== sanitizer build (ASan + UBSan) =="
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKVS_SANITIZE=ON >/dev/null
cmake --build build-asan -j"$jobs"

echo "== fuzz build (clang, libFuzzer) =="
CC=clang cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKVS_FUZZ=ON \
  -DKVS_FUZZ_SECONDS="$fuzz_seconds" >/dev/null
cmake --build build-fuzz -j"$jobs"

status=0
echo "== fuzz targets, ${fuzz_seconds}s each =="
ctest --test-dir build-fuzz --output-on-failure || status=1
echo "== tests under ASan + UBSan =="
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
  ctest --test-dir build-asan --output-on-failure -j"$jobs" || status=1
echo "== tests, release build =="
ctest --test-dir build --output-on-failure -j"$jobs" || status=1
exit $status
