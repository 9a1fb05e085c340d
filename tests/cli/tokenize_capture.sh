#!/usr/bin/env bash
# kvsim capture with text prompts: --prompt, --prompt-file, --chat and
# --system go through the model folder's tokenizer.json, and the trace
# metadata records the prompt text, the rendered chat and the decoded
# generated text.
set -uo pipefail

: "${KVSIM:?KVSIM must name the kvsim binary}"
shared=${KVS_SHARED_DIR:-../shared}
stories=$shared/models/stories260K
if [[ ! -f $stories/model.safetensors ]]; then
    echo "SKIPPED: stories260K not found under KVS_SHARED_DIR=$shared"
    exit 77
fi
tmp=${KVS_TEST_TMP:-/tmp}/cli_tokenize_capture.$$
rm -rf "$tmp" && mkdir -p "$tmp"
trap 'rm -rf "$tmp"' EXIT
failures=0

fail() {
    echo "FAIL: $*"
    failures=$((failures + 1))
}

# json_ids FILE KEY: the integers of the first array KEY in `trace info --json`
# output (the top-level copy, before the metadata), space-separated.
json_ids() {
    awk -v key="\"$2\": [" '
        index($0, key) { inside = 1; next }
        inside && /\]/ { exit }
        inside { gsub(/[ ,]/, ""); printf "%s%s", sep, $0; sep = " " }
    ' "$1"
}

# Greedy decoding from BOS gives expected/greedy200_ids.txt, whose first four
# ids are "Once upon a time"; the same prompt must continue with ids 5 to 16.
read -r -a greedy <"$stories/expected/greedy200_ids.txt"
"$KVSIM" capture --model "$stories" --prompt "Once upon a time" --max-new-tokens 12 \
    -o "$tmp/plain.kvt" >/dev/null 2>"$tmp/err" || fail "capture --prompt: $(cat "$tmp/err")"
"$KVSIM" trace info --json "$tmp/plain.kvt" >"$tmp/plain.json" || fail "trace info --json"
[[ $(json_ids "$tmp/plain.json" prompt_ids) == "1 ${greedy[*]:0:4}" ]] ||
    fail "prompt ids: $(json_ids "$tmp/plain.json" prompt_ids)"
[[ $(json_ids "$tmp/plain.json" generated_ids) == "${greedy[*]:4:12}" ]] ||
    fail "generated ids: $(json_ids "$tmp/plain.json" generated_ids)"
want_text=$("$KVSIM" tokenize --model "$stories" --decode "${greedy[*]:4:12}")
"$KVSIM" trace info "$tmp/plain.kvt" >"$tmp/plain.txt"
grep -qxF "generated:    $want_text" "$tmp/plain.txt" ||
    fail "trace info lacks 'generated:    $want_text'"
grep -qF '"prompt_text": "Once upon a time"' "$tmp/plain.txt" || fail "metadata lacks prompt_text"

# --prompt-file gives the same prompt ids as --prompt.
printf 'Once upon a time' >"$tmp/prompt.txt"
"$KVSIM" capture --model "$stories" --prompt-file "$tmp/prompt.txt" --max-new-tokens 1 \
    -o "$tmp/file.kvt" >/dev/null 2>"$tmp/err" || fail "capture --prompt-file: $(cat "$tmp/err")"
"$KVSIM" trace info --json "$tmp/file.kvt" >"$tmp/file.json"
[[ $(json_ids "$tmp/file.json" prompt_ids) == "1 ${greedy[*]:0:4}" ]] ||
    fail "--prompt-file ids: $(json_ids "$tmp/file.json" prompt_ids)"

# A copy of stories260K whose tokenizer also has the ChatML tokens (taking
# ids 510 and 511 over) runs the --chat path end to end.
mkdir -p "$tmp/chatml"
cp "$stories/config.json" "$stories/model.safetensors" "$tmp/chatml/"
sed 's/^ "added_tokens": \[$/ "added_tokens": [{"id": 510, "content": "<|im_start|>", "special": true, "normalized": false}, {"id": 511, "content": "<|im_end|>", "special": true, "normalized": false},/' \
    "$stories/tokenizer.json" >"$tmp/chatml/tokenizer.json"
"$KVSIM" capture --model "$tmp/chatml" --prompt "Tell a story" --chat --system "Be kind." \
    --max-new-tokens 3 -o "$tmp/chat.kvt" >/dev/null 2>"$tmp/err" ||
    fail "capture --chat: $(cat "$tmp/err")"
"$KVSIM" trace info --json "$tmp/chat.kvt" >"$tmp/chat.json"
want_ids=$("$KVSIM" tokenize --model "$tmp/chatml" --chat --system "Be kind." "Tell a story")
[[ $(json_ids "$tmp/chat.json" prompt_ids) == "$want_ids" ]] ||
    fail "chat prompt ids $(json_ids "$tmp/chat.json" prompt_ids), tokenize gives $want_ids"
[[ $want_ids == "510 "*" 511 "*" 510 "* ]] || fail "chat ids lack the ChatML tokens: $want_ids"
grep -qF '"rendered_prompt": "<|im_start|>system\nBe kind.<|im_end|>\n<|im_start|>user\nTell a story<|im_end|>\n<|im_start|>assistant\n"' \
    "$tmp/chat.json" || fail "metadata lacks the rendered ChatML prompt"
grep -qF '"chat_template": "chatml-smollm2"' "$tmp/chat.json" || fail "metadata lacks chat_template"
grep -qF '"prompt_text": "Tell a story"' "$tmp/chat.json" || fail "chat metadata lacks prompt_text"

# expect_error NAME STATUS PATTERN ARGS...
expect_error() {
    local name=$1 want_status=$2 pattern=$3
    shift 3
    "$KVSIM" capture "$@" >"$tmp/out" 2>"$tmp/err"
    local status=$?
    [[ $status -eq $want_status ]] || fail "$name: exit $status, expected $want_status"
    grep -qF -- "$pattern" "$tmp/err" || fail "$name: stderr lacks '$pattern': $(cat "$tmp/err")"
}

expect_error "chat on a model without ChatML" 1 "<|im_start|>" \
    --model "$stories" --prompt "hi" --chat --max-new-tokens 1 -o "$tmp/x.kvt"
expect_error "prompt and prompt ids" 2 "cannot be combined" \
    --model "$stories" --prompt "hi" --prompt-ids 1,2 --max-new-tokens 1 -o "$tmp/x.kvt"
expect_error "system without chat" 2 "--system needs --chat" \
    --model "$stories" --prompt "hi" --system "x" --max-new-tokens 1 -o "$tmp/x.kvt"
expect_error "prompt and prompt file" 2 "not both" \
    --model "$stories" --prompt "hi" --prompt-file "$tmp/prompt.txt" --max-new-tokens 1 -o "$tmp/x.kvt"
printf 'a\0b' >"$tmp/nul.txt"
expect_error "NUL in prompt file" 1 "NUL byte at offset 1" \
    --model "$stories" --prompt-file "$tmp/nul.txt" --max-new-tokens 1 -o "$tmp/x.kvt"
printf 'caf\xe9' >"$tmp/latin1.txt"
expect_error "prompt file not UTF-8" 1 "not valid UTF-8" \
    --model "$stories" --prompt-file "$tmp/latin1.txt" --max-new-tokens 1 -o "$tmp/x.kvt"
[[ ! -e $tmp/x.kvt ]] || fail "a failed capture left $tmp/x.kvt behind"

if [[ $failures -ne 0 ]]; then
    echo "$failures capture prompt check(s) failed"
    exit 1
fi
echo "tokenize_capture: all checks passed"
