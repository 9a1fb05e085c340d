#!/usr/bin/env bash
# 'kvsim trace info|verify|export' on the committed seed trace
# tests/fuzz/corpus/fuzz_trace/seed_f32.kvt: 2 layers, 2 query heads,
# 1 KV head, head_dim 4, 10 tokens in blocks of 4 (24 frames), F32, with
# prompt_ids [1,2,3,4], generated_ids [5..10] and generated_text "hello seed".
# test_trace checks the seed's tensor values; this script checks the command.
set -uo pipefail

: "${KVSIM:?set KVSIM to the kvsim binary}"
: "${KVS_SOURCE_DIR:?set KVS_SOURCE_DIR to the source tree}"
seed="$KVS_SOURCE_DIR/tests/fuzz/corpus/fuzz_trace/seed_f32.kvt"
tmp="${KVS_TEST_TMP:-/tmp/kvsim-tests}/trace_cli.$$"
rm -rf "$tmp" && mkdir -p "$tmp" || exit 1
failures=0

fail() {
    echo "FAIL: $*" >&2
    failures=$((failures + 1))
}

# expect_status STATUS COMMAND...: runs the command, keeping its output in
# $tmp/out and $tmp/err, and checks its exit status.
expect_status() {
    local expected=$1
    shift
    "$@" >"$tmp/out" 2>"$tmp/err"
    local status=$?
    if [ "$status" -ne "$expected" ]; then
        fail "'$*' exited $status, expected $expected; stderr: $(cat "$tmp/err")"
    fi
}

expect_in() {
    local file=$1 text=$2
    grep -qF -- "$text" "$file" || fail "'$text' not in $(basename "$file"): $(head -c 400 "$file")"
}

[ -f "$seed" ] || { echo "FAIL: missing $seed" >&2; exit 1; }

# info --json: one field per line in JSON_INDENT(2) form.
expect_status 0 "$KVSIM" trace info "$seed" --json
for field in '"n_layers": 2' '"n_heads": 2' '"n_kv_heads": 1' '"head_dim": 4' \
             '"n_tokens": 10' '"n_prompt": 4' '"n_generated": 6' '"dtype": "f32"' \
             '"block_tokens": 4' '"n_frames": 24' '"raw_bytes": 1600' \
             '"generated_text": "hello seed"' '"content_hash": "' '"compressed_bytes": ' \
             '"prompt_ids": [' '"generated_ids": [' '"metadata": {' '"model": "seed"'; do
    expect_in "$tmp/out" "$field"
done

# info in text form names the same facts.
expect_status 0 "$KVSIM" trace info "$seed"
expect_in "$tmp/out" "2 layers, 2 query heads, 1 KV heads, head_dim 4"
expect_in "$tmp/out" "10 positions, prompt 4, generated 6"
expect_in "$tmp/out" "generated:    hello seed"

expect_status 0 "$KVSIM" trace verify "$seed"
expect_in "$tmp/out" "ok: 24 frames, 10 tokens"

# A flipped byte inside the first frame (which starts at byte 64).
cp "$seed" "$tmp/flipped.kvt"
printf '\xff' | dd of="$tmp/flipped.kvt" bs=1 seek=70 conv=notrunc status=none
expect_status 1 "$KVSIM" trace verify "$tmp/flipped.kvt"
expect_in "$tmp/err" "checksum mismatch"
expect_in "$tmp/err" "at byte offset 64"

# A flipped byte in the last frame (just before the metadata, whose offset
# the footer stores at byte 24): export writes no file at all.
cp "$seed" "$tmp/late.kvt"
size=$(stat -c %s "$tmp/late.kvt")
meta=$(od -An -t u8 -j $((size - 64 + 24)) -N 8 "$tmp/late.kvt" | tr -d ' ')
printf '\xff' | dd of="$tmp/late.kvt" bs=1 seek=$((meta - 3)) conv=notrunc status=none
expect_status 1 "$KVSIM" trace export "$tmp/late.kvt" -o "$tmp/late-npy"
expect_in "$tmp/err" "checksum mismatch"
[ -z "$(ls -A "$tmp/late-npy" 2>/dev/null)" ] || fail "export of a damaged trace left files: $(ls "$tmp/late-npy")"

# A file cut short.
head -c 1000 "$seed" >"$tmp/cut.kvt"
expect_status 1 "$KVSIM" trace verify "$tmp/cut.kvt"
expect_in "$tmp/err" "truncated"
expect_in "$tmp/err" "byte offset 1000"
expect_status 1 "$KVSIM" trace info "$tmp/cut.kvt"

# export writes 4 kinds x 2 layers. Each file is a 128-byte header (10 bytes
# of preamble plus the dict padded to 64) followed by 10 rows of float32.
expect_status 0 "$KVSIM" trace export "$seed" -o "$tmp/npy"
[ "$(find "$tmp/npy" -name '*.npy' | wc -l)" -eq 8 ] || fail "export wrote $(ls "$tmp/npy")"
[ "$(stat -c %s "$tmp/npy/q_layer01.npy")" -eq $((128 + 10 * 8 * 4)) ] ||
    fail "q_layer01.npy has $(stat -c %s "$tmp/npy/q_layer01.npy") bytes"
[ "$(stat -c %s "$tmp/npy/k_pre_layer00.npy")" -eq $((128 + 10 * 4 * 4)) ] ||
    fail "k_pre_layer00.npy has $(stat -c %s "$tmp/npy/k_pre_layer00.npy") bytes"
head -c 120 "$tmp/npy/v_layer00.npy" >"$tmp/header"
expect_in "$tmp/header" "{'descr': '<f4', 'fortran_order': False, 'shape': (10, 4), }"
find "$tmp/npy" -name '*.tmp.*' | grep -q . && fail "export left temporary files"

expect_status 0 "$KVSIM" trace export "$seed" -o "$tmp/one" --kind v --layer 1
[ "$(ls "$tmp/one")" = "v_layer01.npy" ] || fail "--kind v --layer 1 wrote $(ls "$tmp/one")"

# Usage errors exit 2, other errors 1.
expect_status 2 "$KVSIM" trace
expect_status 2 "$KVSIM" trace frobnicate "$seed"
expect_status 2 "$KVSIM" trace info "$seed" --bogus
expect_in "$tmp/err" "unknown option '--bogus'"
expect_status 2 "$KVSIM" trace info
expect_status 2 "$KVSIM" trace export "$seed"
expect_status 2 "$KVSIM" trace export "$seed" -o "$tmp/x" --kind w
expect_in "$tmp/err" "use q, k, k_pre or v"
expect_status 2 "$KVSIM" trace export "$seed" -o "$tmp/x" --layer 2
expect_status 2 "$KVSIM" trace export "$seed" -o "$tmp/x" --layer -1
expect_status 1 "$KVSIM" trace info "$tmp/does-not-exist.kvt"
expect_in "$tmp/err" "does-not-exist.kvt"
echo "not a trace" >"$tmp/text.kvt"
expect_status 1 "$KVSIM" trace verify "$tmp/text.kvt"
expect_status 0 "$KVSIM" trace --help
expect_in "$tmp/out" "kvsim trace export FILE -o DIR"

# A trace from 'kvsim capture' on the real stories260K model, when the
# shared data is present: info must report the counts capture was given.
model="${KVS_SHARED_DIR:-}/models/stories260K"
if [ -f "$model/config.json" ]; then
    expect_status 0 "$KVSIM" capture --model "$model" --prompt-ids 1,403,407 \
        --max-new-tokens 20 --no-stop-at-eos --dtype bf16 -o "$tmp/captured.kvt"
    expect_status 0 "$KVSIM" trace info "$tmp/captured.kvt" --json
    for field in '"n_layers": 5' '"n_heads": 8' '"n_kv_heads": 4' '"head_dim": 8' \
                 '"n_tokens": 23' '"n_prompt": 3' '"n_generated": 20' '"dtype": "bf16"'; do
        expect_in "$tmp/out" "$field"
    done
    expect_status 0 "$KVSIM" trace verify "$tmp/captured.kvt"
    expect_in "$tmp/out" "ok: 20 frames, 23 tokens"
else
    echo "note: $model not found; the captured-trace checks are skipped" >&2
fi

rm -rf "$tmp"
if [ "$failures" -ne 0 ]; then
    echo "$failures check(s) failed" >&2
    exit 1
fi
echo "trace CLI: all checks passed"
