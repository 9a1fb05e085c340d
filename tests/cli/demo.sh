#!/usr/bin/env bash
# kvsim demo end to end on the real stories260K model. The three output
# files exist, the report references its figures and the database holds
# every demo kernel. The model is found through --model, KVSIM_MODEL and the
# Hugging Face hub cache layout.
set -euo pipefail
: "${KVSIM:?set KVSIM to the kvsim binary}"
fail() { echo "FAIL: $*" >&2; exit 1; }

model="${KVS_SHARED_DIR:-../shared}/models/stories260K"
if [ ! -f "$model/config.json" ]; then
  echo "SKIPPED: $model not found (set KVS_SHARED_DIR)" >&2
  exit 77
fi
model=$(cd "$model" && pwd)
tmp="${KVS_TEST_TMP:-/tmp}/cli_demo.$$"
rm -rf "$tmp"
mkdir -p "$tmp"
trap 'rm -rf "$tmp"' EXIT

"$KVSIM" demo --model "$model" -o "$tmp/a" --prompt-len 64 --new-tokens 64 --quiet >"$tmp/a.out"
for f in trace.kvt results.db report/index.html report/report.md; do
  [ -s "$tmp/a/$f" ] || fail "demo did not write $f"
done
"$KVSIM" trace verify "$tmp/a/trace.kvt" >/dev/null || fail "demo trace does not verify"
grep -q "stories260K" "$tmp/a.out" || fail "demo output does not name the model: $(cat "$tmp/a.out")"
if grep -q SYNTHETIC "$tmp/a.out"; then fail "a real model was labelled synthetic"; fi

# Every image index.html references exists, in PNG and SVG.
refs=$(grep -o 'src="[^"]*\.\(png\|svg\)"' "$tmp/a/report/index.html" | sed 's/src="//; s/"$//' | sort -u)
[ -n "$refs" ] || fail "index.html references no figure"
for r in $refs; do
  [ -s "$tmp/a/report/$r" ] || fail "index.html references missing $r"
done
n_png=$(ls "$tmp/a/report"/*.png | wc -l)
n_svg=$(ls "$tmp/a/report"/*.svg | wc -l)
[ "$n_png" -ge 2 ] && [ "$n_png" -eq "$n_svg" ] || fail "expected matching PNG and SVG figures, got $n_png and $n_svg"

# One finished run per demo kernel, and dense F32 exact.
runs=$(sqlite3 "$tmp/a/results.db" "SELECT count(*) FROM kernel_summary WHERE status = 'done'")
[ "$runs" -ge 12 ] || fail "expected at least 12 finished demo runs, got $runs"
exact=$(sqlite3 "$tmp/a/results.db" "SELECT output_rel_error FROM kernel_summary WHERE kernel = 'dense:dtype=f32'")
[ "$exact" = "0.0" ] || fail "dense F32 output error is $exact, expected 0.0"

# Model discovery: KVSIM_MODEL, then the hub cache layout.
KVSIM_MODEL="$model" "$KVSIM" demo -o "$tmp/b" --prompt-len 16 --new-tokens 8 --quiet >"$tmp/b.out"
grep -q "$model" "$tmp/b.out" || fail "KVSIM_MODEL was not used: $(cat "$tmp/b.out")"
snap="$tmp/hub/models--HuggingFaceTB--SmolLM2-135M-Instruct/snapshots/0123abcd"
mkdir -p "$snap"
for f in config.json model.safetensors tokenizer.json; do ln -s "$model/$f" "$snap/$f"; done
env -u KVSIM_MODEL HF_HUB_CACHE="$tmp/hub" "$KVSIM" demo -o "$tmp/c" --prompt-len 16 \
  --new-tokens 8 --quiet >"$tmp/c.out"
grep -q "$snap" "$tmp/c.out" || fail "the hub cache snapshot was not used: $(cat "$tmp/c.out")"

# Bad input.
set +e
"$KVSIM" demo --model "$tmp/nowhere" -o "$tmp/d" 2>"$tmp/err"
rc=$?
set -e
[ "$rc" -eq 1 ] || fail "demo with a missing model exited $rc, expected 1"
grep -q "nowhere" "$tmp/err" || fail "error does not name the folder: $(cat "$tmp/err")"
set +e
"$KVSIM" demo --model "$model" --prompt-len 500 --new-tokens 100 -o "$tmp/e" 2>"$tmp/err"
rc=$?
set -e
[ "$rc" -eq 2 ] || fail "demo beyond the model's context exited $rc, expected 2"
grep -q "512" "$tmp/err" || fail "error does not give the context length: $(cat "$tmp/err")"
echo "demo CLI: all checks passed"
