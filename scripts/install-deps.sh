#!/usr/bin/env bash
# Install the Debian 12 packages that kvsim's build, tests and reports need.
# Installs only what is missing, so a second run is quick and offline.
set -euo pipefail

packages=(
  build-essential cmake pkg-config
  libzstd-dev zstd            # trace frames
  libxxhash-dev               # frame and index checksums
  libsqlite3-dev sqlite3      # results database and the sqlite3 shell
  libjansson-dev              # config.json, tokenizer.json, trace metadata
  libopenblas-dev             # prefill matrix products
  libpcre2-dev                # GPT-2 pre-tokenizer pattern with Unicode classes
  libutf8proc-dev             # Unicode numeric class for the Digits pre-tokenizer
  check                       # unit test framework
  gnuplot-nox                 # report figures (PNG through the cairo terminal)
  clang libclang-rt-14-dev    # libFuzzer targets and sanitizer builds
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#packages[@]} packages already installed"
  exit 0
fi

echo "install-deps: installing ${missing[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update -q
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
