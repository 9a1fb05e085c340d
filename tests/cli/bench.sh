#!/usr/bin/env bash
# kvsim bench on a short trace of the real stories260K model: the table has
# one row per kernel and context, the JSON parses, bad input is rejected.
set -euo pipefail
: "${KVSIM:?set KVSIM to the kvsim binary}"
model="${KVS_SHARED_DIR:-../shared}/models/stories260K"
if [ ! -f "$model/model.safetensors" ]; then
  echo "SKIPPED: $model not found; set KVS_SHARED_DIR to the shared data folder" >&2
  exit 77
fi
tmp="${KVS_TEST_TMP:-/tmp}/bench.$$"
mkdir -p "$tmp"
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

"$KVSIM" capture --model "$model" --prompt-ids 1,403,407,261,378,432 --max-new-tokens 40 \
  --no-stop-at-eos -o "$tmp/s.kvt" >/dev/null 2>&1 || fail "capture failed"

out=$("$KVSIM" bench --trace "$tmp/s.kvt" --kernel dense --kernel quanto:bits=4,group=8 \
  --kernel kivi:bits=2,group=8,residual=16 --context 32,100 --repeats 3 --model-repeats 2)
for spec in dense quanto:bits=4,group=8 kivi:bits=2,group=8,residual=16; do
  for n in 32 100; do
    grep -Eq "^$spec +$n " <<<"$out" || fail "no row for $spec at $n: $out"
  done
done
grep -q "storage-only" <<<"$out" || fail "quanto row not marked storage-only"

json=$("$KVSIM" bench --trace "$tmp/s.kvt" --kernel dense --context 50 --repeats 2 --no-model --json)
grep -q '"attend_median_us"' <<<"$json" || fail "JSON lacks attend_median_us: $json"
grep -q '"model_step_ms": null' <<<"$json" || fail "--no-model should leave model_step_ms null"

expect_status() {
  local want=$1; shift
  set +e
  "$@" >/dev/null 2>"$tmp/err"; local rc=$?
  set -e
  [ "$rc" -eq "$want" ] || fail "'$*' exited $rc, expected $want: $(cat "$tmp/err")"
}
expect_status 2 "$KVSIM" bench --kernel dense
expect_status 2 "$KVSIM" bench --trace "$tmp/s.kvt"
expect_status 2 "$KVSIM" bench --trace "$tmp/s.kvt" --kernel dense --context 0
expect_status 1 "$KVSIM" bench --trace "$tmp/missing.kvt" --kernel dense
expect_status 1 "$KVSIM" bench --trace "$tmp/s.kvt" --kernel quanto:group=48
expect_status 2 "$KVSIM" bench --trace "$tmp/s.kvt" --kernel dense --layer 99
# --kernels-file: comments skipped, each spec timed, a bad line named with
# its file and line number; --db stores the timings.
printf '# two kernels\ndense:dtype=bf16\n\nquanto:bits=4,group=8  # storage-only\n' >"$tmp/k.txt"
out=$("$KVSIM" bench --trace "$tmp/s.kvt" --kernels-file "$tmp/k.txt" --context 40 --repeats 2 \
  --model-repeats 1 --db "$tmp/b.db")
grep -q '^dense:dtype=bf16 ' <<<"$out" || fail "kernels-file: dense row missing: $out"
grep -q '^quanto:bits=4,group=8 ' <<<"$out" || fail "kernels-file: quanto row missing: $out"
n=$(sqlite3 "$tmp/b.db" "SELECT count(*) FROM timings WHERE context = 40")
[ "$n" -eq 4 ] || fail "expected 4 timing rows (2 kernels x head and model), got $n"
printf 'dense\nquanto:bits=5\n' >"$tmp/bad.txt"
set +e
"$KVSIM" bench --trace "$tmp/s.kvt" --kernels-file "$tmp/bad.txt" 2>"$tmp/err"
rc=$?
set -e
[ "$rc" -eq 1 ] || fail "bad kernels-file line exited $rc, expected 1"
grep -q "bad.txt:2" "$tmp/err" || fail "error does not name bad.txt:2: $(cat "$tmp/err")"
echo "bench.sh: ok"
