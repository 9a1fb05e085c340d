#!/usr/bin/env bash
# Fresh-machine entry point: install missing Debian packages, build, and run
# `kvsim demo` end to end. Arguments go to `kvsim demo` (for example
# --model ../shared/models/stories260K -o demo-out).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh
exec build/kvsim demo "$@"
