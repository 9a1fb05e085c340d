#!/usr/bin/env bash
# Configure and build the release binary into build/ (build/kvsim).
set -euo pipefail
cd "$(dirname "$0")/.."
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)"
