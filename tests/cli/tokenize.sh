#!/usr/bin/env bash
# kvsim tokenize: encode and decode as users run it, against ids from the
# Hugging Face tokenizers library and stories260K's expected greedy text.
set -uo pipefail

: "${KVSIM:?KVSIM must name the kvsim binary}"
shared=${KVS_SHARED_DIR:-../shared}
smollm2=$shared/tokenizers/smollm2
stories=$shared/models/stories260K
if [[ ! -f $smollm2/tokenizer.json || ! -f $stories/tokenizer.json ]]; then
    echo "SKIPPED: tokenizers not found under KVS_SHARED_DIR=$shared"
    exit 77
fi
tmp=${KVS_TEST_TMP:-/tmp}/cli_tokenize.$$
rm -rf "$tmp" && mkdir -p "$tmp"
trap 'rm -rf "$tmp"' EXIT
failures=0

fail() {
    echo "FAIL: $*"
    failures=$((failures + 1))
}

# expect_output NAME EXPECTED ARGS...: stdout must equal EXPECTED, exit 0.
expect_output() {
    local name=$1 want=$2 got
    shift 2
    got=$("$KVSIM" tokenize "$@" 2>"$tmp/err")
    local status=$?
    [[ $status -eq 0 ]] || fail "$name: exit $status: $(cat "$tmp/err")"
    [[ $got == "$want" ]] || fail "$name: got '$got', expected '$want'"
}

# expect_error NAME STATUS PATTERN ARGS...: exit STATUS, one stderr line
# matching PATTERN, nothing on stdout.
expect_error() {
    local name=$1 want_status=$2 pattern=$3
    shift 3
    "$KVSIM" tokenize "$@" >"$tmp/out" 2>"$tmp/err"
    local status=$?
    [[ $status -eq $want_status ]] || fail "$name: exit $status, expected $want_status"
    grep -q -- "$pattern" "$tmp/err" || fail "$name: stderr lacks '$pattern': $(cat "$tmp/err")"
    [[ ! -s $tmp/out ]] || fail "$name: wrote to stdout: $(cat "$tmp/out")"
}

expect_output "plain text" "19556 28 905 17" --model "$smollm2" "Hello, world!"
expect_output "special tokens parsed" "1 4093 198 26843 2" \
    --model "$smollm2" $'<|im_start|>user\nHi<|im_end|>'
expect_output "chat template" \
    "1 9690 198 2683 359 253 5356 5646 11173 3365 3511 308 34519 28 7018 411 407 19712 8182 2 198 1 4093 198 28120 905 2 198 1 520 9531 198" \
    --model "$smollm2" --chat "hello world"
expect_output "no BOS by default" "403 407 261 378" --model "$stories" "Once upon a time"
expect_output "BOS with --add-special" "1 403 407 261 378" --model "$stories" --add-special "Once upon a time"

printf 'The year 2026 had 365 days.' >"$tmp/prompt.txt"
expect_output "text from a file" "504 713 216 34 32 34 38 761 216 35 38 37 2009 30" \
    --model "$smollm2" --file "$tmp/prompt.txt"

# Decoding prints the exact text with no newline added.
"$KVSIM" tokenize --model "$stories" --decode "$(cat "$stories/expected/greedy200_ids.txt")" \
    >"$tmp/greedy.txt" || fail "decode greedy ids: exit $?"
cmp -s "$tmp/greedy.txt" "$stories/expected/greedy200.txt" ||
    fail "decoded greedy ids differ from expected/greedy200.txt"
"$KVSIM" tokenize --model "$smollm2" --decode "1 4093 198 26843 2" --skip-special >"$tmp/skip.txt"
[[ $(od -An -c "$tmp/skip.txt" | tr -s ' ') == " u s e r \n H i" ]] ||
    fail "--skip-special decode: $(od -An -c "$tmp/skip.txt")"

# A folder with nothing but tokenizer.json is enough.
mkdir -p "$tmp/only-tokenizer"
cp "$stories/tokenizer.json" "$tmp/only-tokenizer/"
expect_output "tokenizer-only folder" "403 407 261 378" --model "$tmp/only-tokenizer" "Once upon a time"

expect_error "no --model" 2 "--model DIR is required" "text"
expect_error "unknown option" 2 "unknown option" --model "$smollm2" --frobnicate "x"
expect_error "two texts" 2 "unexpected argument" --model "$smollm2" "a" "b"
expect_error "bad id" 2 "got 'x7'" --model "$smollm2" --decode "1 x7"
expect_error "id outside vocabulary" 1 "token id 600 at position 1" --model "$stories" --decode "5 600"
expect_error "missing folder" 1 "tokenizer.json not found" --model "$tmp/nowhere" "x"
expect_error "chat without ChatML" 1 "<|im_start|>" --model "$stories" --chat "hi"
printf 'caf\xe9' >"$tmp/latin1.txt"
expect_error "invalid UTF-8" 1 "not valid UTF-8: byte 0xE9 at offset 3" \
    --model "$smollm2" --file "$tmp/latin1.txt"
printf '{"model": {"type": "Unigram"}}' >"$tmp/only-tokenizer/tokenizer.json"
expect_error "unknown model type" 1 "model type 'Unigram' is not supported" \
    --model "$tmp/only-tokenizer" "x"

if [[ $failures -ne 0 ]]; then
    echo "$failures tokenize check(s) failed"
    exit 1
fi
echo "tokenize: all checks passed"
