#!/usr/bin/env bash
# kvsim capture and kvsim model synth as users run them: a stories260K
# capture succeeds and prints its summary, and every kind of bad input
# exits 2 (usage) or 1 (error) with a message naming the value.
set -euo pipefail
: "${KVSIM:?set KVSIM to the kvsim binary}"
fail() { echo "FAIL: $*" >&2; exit 1; }

model="${KVS_SHARED_DIR:-../shared}/models/stories260K"
if [ ! -f "$model/config.json" ]; then
  echo "SKIPPED: $model not found (set KVS_SHARED_DIR)" >&2
  exit 77
fi
tmp="${KVS_TEST_TMP:-/tmp}/cli_capture.$$"
rm -rf "$tmp"
mkdir -p "$tmp"
trap 'rm -rf "$tmp"' EXIT

# expect STATUS PATTERN ARGS...: runs kvsim, checks the exit status and
# that stderr contains PATTERN.
expect() {
  local want=$1 pattern=$2 rc
  shift 2
  set +e
  "$KVSIM" "$@" >"$tmp/out" 2>"$tmp/err"
  rc=$?
  set -e
  [ "$rc" -eq "$want" ] || fail "kvsim $* exited $rc, expected $want: $(cat "$tmp/err")"
  grep -q -- "$pattern" "$tmp/err" || fail "kvsim $* stderr lacks '$pattern': $(cat "$tmp/err")"
}

out="$tmp/s.kvt"
"$KVSIM" capture --model "$model" --prompt-ids 1 --max-new-tokens 20 -o "$out" >"$tmp/summary"
grep -q "captured 21 positions (1 prompt + 20 generated)" "$tmp/summary" || fail "summary: $(cat "$tmp/summary")"
grep -q "tokens/s" "$tmp/summary" || fail "summary lacks tokens/s"
grep -q "trace:   $out" "$tmp/summary" || fail "summary lacks the output path"
"$KVSIM" trace info "$out" | grep -q "21 positions, prompt 1, generated 20" || fail "trace info disagrees on positions"
"$KVSIM" capture --help | grep -q "usage: kvsim capture" || fail "--help"

# Sampling options and a BF16 trace; the same seed gives the same ids.
for run in 1 2; do
  "$KVSIM" capture --model "$model" --prompt-ids 1,403 --max-new-tokens 12 --temperature 0.8 \
    --top-p 0.9 --seed 3 --dtype bf16 --no-stop-at-eos -o "$tmp/sampled$run.kvt" >/dev/null
done
"$KVSIM" trace info "$tmp/sampled1.kvt" | grep -q "dtype bf16" || fail "sampled trace is not bf16"
ids1=$("$KVSIM" trace info "$tmp/sampled1.kvt" --json | grep -A14 '"generated_ids"' | tr -d ' \n')
ids2=$("$KVSIM" trace info "$tmp/sampled2.kvt" --json | grep -A14 '"generated_ids"' | tr -d ' \n')
[ "$ids1" = "$ids2" ] || fail "seed 3 gave different ids: $ids1 vs $ids2"

# A Hugging Face id found in a hub cache laid out under HF_HUB_CACHE.
snap="$tmp/hub/models--Org--Tiny/snapshots/abc123"
mkdir -p "$snap"
ln -s "$(cd "$model" && pwd)/config.json" "$snap/config.json"
ln -s "$(cd "$model" && pwd)/model.safetensors" "$snap/model.safetensors"
HF_HUB_CACHE="$tmp/hub" "$KVSIM" capture --model Org/Tiny --prompt-ids 1 --max-new-tokens 2 \
  -o "$tmp/hub.kvt" >/dev/null || fail "capture from a hub id failed"
"$KVSIM" trace info "$tmp/hub.kvt" | grep -q '"model": "Org/Tiny"' || fail "hub trace does not name Org/Tiny"

bad="$tmp/bad.kvt"
expect 2 "unknown option '--bogus'" capture --model "$model" --prompt-ids 1 --max-new-tokens 2 -o "$bad" --bogus
expect 2 "--model" capture --prompt-ids 1 --max-new-tokens 2 -o "$bad"
expect 2 "--max-new-tokens" capture --model "$model" --prompt-ids 1 -o "$bad"
expect 2 "-o FILE" capture --model "$model" --prompt-ids 1 --max-new-tokens 2
expect 2 "needs a value" capture --model "$model" --prompt-ids
expect 2 "1,x" capture --model "$model" --prompt-ids 1,x --max-new-tokens 2 -o "$bad"
expect 2 "f64" capture --model "$model" --prompt-ids 1 --max-new-tokens 2 --dtype f64 -o "$bad"
expect 2 "--temperature" capture --model "$model" --prompt-ids 1 --max-new-tokens 2 --temperature -1 -o "$bad"
expect 2 "--top-p" capture --model "$model" --prompt-ids 1 --max-new-tokens 2 --top-p 0 -o "$bad"
expect 2 "--seed" capture --model "$model" --prompt-ids 1 --max-new-tokens 2 --seed x -o "$bad"
expect 2 "--max-new-tokens" capture --model "$model" --prompt-ids 1 --max-new-tokens -3 -o "$bad"
expect 2 "combined with a text prompt" capture --model "$model" --prompt "Once" --prompt-ids 1 --max-new-tokens 2 -o "$bad"
expect 1 "token id 512" capture --model "$model" --prompt-ids 1,512 --max-new-tokens 2 -o "$bad"
expect 1 "not found" capture --model "$tmp/no-such-model" --prompt-ids 1 --max-new-tokens 2 -o "$bad"

# A malformed config.json and a truncated safetensors file.
mkdir -p "$tmp/broken"
printf '{"hidden_size": 64,' >"$tmp/broken/config.json"
expect 1 "config.json" capture --model "$tmp/broken" --prompt-ids 1 --max-new-tokens 2 -o "$bad"
cp "$model/config.json" "$tmp/broken/config.json"
head -c 4096 "$model/model.safetensors" >"$tmp/broken/model.safetensors"
expect 1 "model.safetensors" capture --model "$tmp/broken" --prompt-ids 1 --max-new-tokens 2 -o "$bad"
[ ! -e "$bad" ] || fail "a failed capture left $bad"
ls "$tmp" | grep -q "bad.kvt.tmp" && fail "a failed capture left a temporary file"

expect 2 "unknown model shape" model synth --shape smollm2-7b -o "$tmp/syn"
expect 2 "unknown option" model synth --shape smollm2-135m -o "$tmp/syn" --bogus
expect 2 "--shape" model synth -o "$tmp/syn"
expect 2 "unknown subcommand" model frobnicate
"$KVSIM" model synth --help | grep -q "usage: kvsim model synth" || fail "model synth --help"
KVSIM_THREADS=abc expect 2 "KVSIM_THREADS=abc" capture --model "$model" --prompt-ids 1 --max-new-tokens 2 -o "$bad"
KVSIM_THREADS=0 expect 2 "KVSIM_THREADS=0" capture --model "$model" --prompt-ids 1 --max-new-tokens 2 -o "$bad"
echo "capture.sh: ok"
