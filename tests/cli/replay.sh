#!/usr/bin/env bash
# kvsim replay as users run it at scale, on a real stories260K trace:
# threaded, sharded-and-merged, killed with SIGKILL and resumed, and two
# processes writing one database all give the same metric rows as one
# uninterrupted single-threaded run.
set -euo pipefail
: "${KVSIM:?set KVSIM to the kvsim binary}"
fail() { echo "FAIL: $*" >&2; exit 1; }

model="${KVS_SHARED_DIR:-../shared}/models/stories260K"
if [ ! -f "$model/config.json" ]; then
  echo "SKIPPED: $model not found (set KVS_SHARED_DIR)" >&2
  exit 77
fi
tmp="${KVS_TEST_TMP:-/tmp}/cli_replay.$$"
rm -rf "$tmp"
mkdir -p "$tmp"
trap 'rm -rf "$tmp"' EXIT

"$KVSIM" capture --model "$model" --prompt-ids 1,403,407,261 --max-new-tokens 200 \
  -o "$tmp/t.kvt" >/dev/null

cat >"$tmp/kernels.txt" <<'SPECS'
# kernels for the scale tests; comments and blank lines are skipped
dense:dtype=bf16
quanto:bits=4,group=8     # per-token groups of the whole head

hqq:bits=2,group=8,optimize=1
h2o:budget=25%
SPECS

# Every metric of every (run, layer, head) at full precision, keyed by the
# kernel spec rather than run ids, which differ between databases.
rows() {
  sqlite3 "$1" "SELECT r.kernel_spec, m.layer, m.head, m.kv_head, m.n_steps,
      printf('%!.17g|%!.17g|%!.17g|%!.17g|%!.17g|%!.17g|%!.17g|%!.17g|%!.17g|%!.17g|%!.17g|%!.17g|%!.17g|%!.17g|%!.17g|%!.17g',
        m.logit_mae, m.logit_rmse, m.logit_max, m.logit_rel_rmse, m.kl, m.tv, m.mass_kept,
        m.top1, m.top8, m.top32, m.recall8, m.out_rel_l2, m.out_cos,
        m.out_rel_l2_p50, m.out_rel_l2_p95, m.out_rel_l2_max)
    FROM metrics m JOIN runs r ON r.id = m.run_id ORDER BY 1, 2, 3"
  sqlite3 "$1" "SELECT r.kernel_spec, b.layer, b.head, b.bucket, b.n_steps,
      printf('%!.17g|%!.17g', b.out_rel_l2, b.logit_rmse)
    FROM buckets b JOIN runs r ON r.id = b.run_id ORDER BY 1, 2, 3, 4"
}

common=(--trace "$tmp/t.kvt" --kernels-file "$tmp/kernels.txt" --eval all --quiet)
replay() { "$KVSIM" replay "${common[@]}" "$@"; }

# The reference: one thread, one uninterrupted run.
replay --db "$tmp/one.db" --threads 1 >/dev/null
rows "$tmp/one.db" >"$tmp/one.txt"
n_rows=$(sqlite3 "$tmp/one.db" "SELECT count(*) FROM metrics")
[ "$n_rows" -eq $((4 * 5 * 8)) ] || fail "expected 160 metric rows (4 kernels x 5 layers x 8 heads), got $n_rows"

# Two threads.
replay --db "$tmp/two.db" --threads 2 >/dev/null
rows "$tmp/two.db" >"$tmp/two.txt"
cmp -s "$tmp/one.txt" "$tmp/two.txt" || fail "threaded replay differs: $(diff "$tmp/one.txt" "$tmp/two.txt" | head -5)"

# Shards 1/2 and 2/2 in separate databases, merged.
replay --db "$tmp/s1.db" --shard 1/2 >/dev/null
replay --db "$tmp/s2.db" --shard 2/2 >/dev/null
"$KVSIM" db merge "$tmp/merged.db" "$tmp/s1.db" "$tmp/s2.db" >/dev/null
rows "$tmp/merged.db" >"$tmp/merged.txt"
cmp -s "$tmp/one.txt" "$tmp/merged.txt" || fail "merged shards differ: $(diff "$tmp/one.txt" "$tmp/merged.txt" | head -5)"

# SIGKILL at growing delays, resuming each time until the run completes.
kills=0
for delay in 0.05 0.1 0.2 0.3 0.5 0.8 1.2 2 3 5 8 13; do
  # Started directly, not through the function, so $! is kvsim itself.
  "$KVSIM" replay "${common[@]}" --db "$tmp/killed.db" --resume --threads 2 >/dev/null 2>&1 &
  pid=$!
  sleep "$delay"
  if kill -9 "$pid" 2>/dev/null; then
    kills=$((kills + 1))
    wait "$pid" 2>/dev/null || true
  else
    wait "$pid" || fail "resumed replay failed"
    break
  fi
done
replay --db "$tmp/killed.db" --resume >/dev/null
rows "$tmp/killed.db" >"$tmp/killed.txt"
cmp -s "$tmp/one.txt" "$tmp/killed.txt" || fail "killed and resumed replay differs after $kills kills: $(diff "$tmp/one.txt" "$tmp/killed.txt" | head -5)"
units=$(sqlite3 "$tmp/killed.db" "SELECT count(*) FROM units")
[ "$units" -eq $((4 * 5 * 4)) ] || fail "expected 80 units after resume, got $units"
echo "kill-and-resume: $kills SIGKILLs, rows identical"

# SIGTERM (Ctrl-C and scheduler time limits) stops after the units in
# progress and marks unfinished runs for --resume.
"$KVSIM" replay "${common[@]}" --db "$tmp/term.db" --threads 1 >/dev/null 2>"$tmp/term.err" &
pid=$!
sleep 0.3
kill -TERM "$pid" 2>/dev/null || true
set +e
wait "$pid"
rc=$?
set -e
if [ "$rc" -eq 1 ]; then
  grep -q -- "--resume" "$tmp/term.err" || fail "interrupted replay does not point to --resume: $(cat "$tmp/term.err")"
  n=$(sqlite3 "$tmp/term.db" "SELECT count(*) FROM runs WHERE status LIKE 'interrupted%'")
  [ "$n" -ge 1 ] || fail "no run marked interrupted after SIGTERM"
  replay --db "$tmp/term.db" --resume >/dev/null
  rows "$tmp/term.db" >"$tmp/term.txt"
  cmp -s "$tmp/one.txt" "$tmp/term.txt" || fail "SIGTERM and resume differ"
  echo "SIGTERM: $n runs marked interrupted, resume matches"
else
  [ "$rc" -eq 0 ] || fail "replay exited $rc after SIGTERM"
  echo "SIGTERM arrived after the replay finished; interruption not exercised"
fi

# Two processes writing one database at once both succeed.
"$KVSIM" replay "${common[@]}" --db "$tmp/shared.db" --threads 1 --shard 1/2 >/dev/null &
p1=$!
"$KVSIM" replay "${common[@]}" --db "$tmp/shared.db" --threads 1 --shard 2/2 >/dev/null &
p2=$!
wait "$p1" || fail "first concurrent writer failed"
wait "$p2" || fail "second concurrent writer failed"
rows "$tmp/shared.db" >"$tmp/shared.txt"
cmp -s "$tmp/one.txt" "$tmp/shared.txt" || fail "concurrent writers differ: $(diff "$tmp/one.txt" "$tmp/shared.txt" | head -5)"

# Bad input: exit 2 for usage, 1 for errors, with the value named.
expect() {
  local want=$1 pattern=$2 rc
  shift 2
  set +e
  "$KVSIM" replay "$@" >"$tmp/out" 2>"$tmp/err"
  rc=$?
  set -e
  [ "$rc" -eq "$want" ] || fail "kvsim replay $* exited $rc, expected $want: $(cat "$tmp/err")"
  grep -q -- "$pattern" "$tmp/err" || fail "kvsim replay $* stderr lacks '$pattern': $(cat "$tmp/err")"
}
expect 2 "missing --db" --trace "$tmp/t.kvt" --kernel dense
expect 2 "unknown or incomplete option '--frobnicate'" --db "$tmp/x.db" --frobnicate
expect 2 "shard" --db "$tmp/x.db" --trace "$tmp/t.kvt" --kernel dense --shard 3/2
expect 2 "last:0" --db "$tmp/x.db" --trace "$tmp/t.kvt" --kernel dense --eval last:0
expect 1 "no-such-codec" --db "$tmp/x.db" --trace "$tmp/t.kvt" --kernel no-such-codec
expect 1 "nothing.kvt" --db "$tmp/x.db" --trace "$tmp/nothing.kvt" --kernel dense
: >"$tmp/empty.txt"
expect 2 "lists no kernel spec" --db "$tmp/x.db" --trace "$tmp/t.kvt" --kernels-file "$tmp/empty.txt"
[ ! -e "$tmp/x.db" ] || fail "a rejected replay created $tmp/x.db"
echo "replay CLI: all checks passed"
