#!/usr/bin/env bash
# kvsim cost: whole-model figures on SmolLM2-135M's shapes match the
# published arithmetic, and bad input fails with the right status.
set -euo pipefail
: "${KVSIM:?set KVSIM to the kvsim binary}"
tmp="${KVS_TEST_TMP:-/tmp}/cost.$$"
mkdir -p "$tmp"
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

# SmolLM2-135M's config.json fields that fix the cache shape.
cat >"$tmp/config.json" <<'JSON'
{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 576,
 "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
 "num_key_value_heads": 3, "vocab_size": 49152, "max_position_embeddings": 8192,
 "rms_norm_eps": 1e-05, "rope_theta": 100000, "tie_word_embeddings": true,
 "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "bfloat16"}
JSON

# Dense BF16: 2 x 30 layers x 3 heads x 64 x 2 bytes = 23040 B per token,
# 45.0 MiB at 2048 tokens.
out=$("$KVSIM" cost --config "$tmp/config.json" --kernel dense:dtype=bf16 --context 2048)
line=$(grep '^dense:dtype=bf16 ' <<<"$out") || fail "no dense row in: $out"
read -r _ bpt mib read _ <<<"$line"
[ "$bpt" = "23040.0" ] || fail "dense bf16 bytes/token $bpt, expected 23040.0"
[ "$mib" = "45.000" ] || fail "dense bf16 cache $mib MiB, expected 45.000"
[ "$read" = "45.000" ] || fail "dense bf16 read $read MiB/step, expected 45.000"

# quanto 4-bit: 36 B per 64-value vector, 180 vectors per token.
out=$("$KVSIM" cost --model "$tmp" --kernel quanto:bits=4 --kernel quanto:bits=2)
grep -q '^quanto:bits=4 *6480.0 ' <<<"$out" || fail "quanto 4-bit row: $out"
grep -q '^quanto:bits=2 *3600.0 ' <<<"$out" || fail "quanto 2-bit row: $out"
grep -q 'storage-only' <<<"$out" || fail "quanto should be storage-only: $out"

# Eviction over dense storage executes densely; StreamingLLM at 10% keeps
# a tenth of the context, so a tenth of dense BF16's bytes per token.
out=$("$KVSIM" cost --model "$tmp" --kernel "streamingllm:budget=10%/dense:dtype=bf16" --context 2000)
grep -q '2304.0 .*dense + selection$' <<<"$out" || fail "streamingllm row: $out"

json=$("$KVSIM" cost --model "$tmp" --kernel kivi:bits=2 --json)
grep -q '"bytes_per_token": 4320' <<<"$json" || fail "kivi 2-bit is 3 bits per element: $json"

expect_status() {
  local want=$1; shift
  set +e
  "$@" >/dev/null 2>"$tmp/err"; local rc=$?
  set -e
  [ "$rc" -eq "$want" ] || fail "'$*' exited $rc, expected $want: $(cat "$tmp/err")"
}
expect_status 1 "$KVSIM" cost --model "$tmp/missing" --kernel dense
grep -q "missing" "$tmp/err" || fail "missing folder not named: $(cat "$tmp/err")"
expect_status 1 "$KVSIM" cost --model "$tmp" --kernel bogus
grep -q "unknown kernel 'bogus'" "$tmp/err" || fail "bad kernel message: $(cat "$tmp/err")"
expect_status 2 "$KVSIM" cost --model "$tmp" --config "$tmp/config.json" --kernel dense
expect_status 2 "$KVSIM" cost --model "$tmp"
expect_status 2 "$KVSIM" cost --model "$tmp" --kernel dense --context 0
echo '{"hidden_size": 576' >"$tmp/bad.json"
expect_status 1 "$KVSIM" cost --config "$tmp/bad.json" --kernel dense
echo "cost.sh: ok"
