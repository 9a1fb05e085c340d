#!/usr/bin/env bash
# kvsim report and kvsim db as users run them. A database made with
# 'kvsim db init' and filled with the sqlite3 shell is queried, reported and
# merged, and the usage and failure exits are checked.
set -u

fail() { echo "FAIL: $*" >&2; exit 1; }

: "${KVSIM:?KVSIM must name the kvsim binary}"
if ! command -v gnuplot >/dev/null || ! command -v sqlite3 >/dev/null; then
  echo "SKIPPED: gnuplot and the sqlite3 shell are needed (Debian packages gnuplot-nox, sqlite3)" >&2
  exit 77
fi
tmp="${KVS_TEST_TMP:-/tmp}/cli_report.$$"
rm -rf "$tmp" && mkdir -p "$tmp" || fail "cannot create $tmp"
db="$tmp/results.db"

"$KVSIM" db init "$db" >/dev/null || fail "db init failed"

# One real trace, two finished runs with one unit of two heads each, and
# one run still going, so the summary shows its status.
sqlite3 "$db" <<'SQL' || fail "filling the database failed"
INSERT INTO traces (id, content_hash, path, model, n_layers, n_heads, n_kv_heads, head_dim, n_prompt,
  n_generated, synthetic, file_bytes, metadata_json, added_at)
  VALUES (1, 'c0ffee0000000000', 'cli.kvt', 'cli-model', 1, 2, 1, 64, 10, 70, 0, 1000, '{}', '2026-01-01');
INSERT INTO runs (id, trace_id, kernel_spec, params_json, family, compressed_exec, eval_mode, code_version,
  host, threads, seed, started_at, finished_at, status, cost_context, bytes_per_token, stored_bytes,
  read_bytes_per_step)
  VALUES (1, 1, 'dense:dtype=bf16', '{}', 'dense', 0, 'decode', 't', 'h', 1, 0, 'a', 'b', 'done', 80, 256, 20480, 20480),
         (2, 1, 'quanto:bits=4', '{}', 'quantized', 0, 'decode', 't', 'h', 1, 0, 'a', 'b', 'done', 80, 72, 5760, 26240),
         (3, 1, 'kivi:bits=2', '{}', 'quantized', 1, 'decode', 't', 'h', 1, 0, 'a', NULL, 'running', 80, 40, 3200, 3200);
INSERT INTO units VALUES (1, 0, 0, 1e-5, 70, 'c', 640.0), (2, 0, 0, 2e-5, 70, 'c', 330.0);
INSERT INTO metrics (run_id, layer, head, kv_head, n_steps, logit_rmse, kl, top1, top8, out_rel_l2)
  VALUES (1, 0, 0, 0, 70, 0.01, 1e-6, 1.0, 1.0, 0.002), (1, 0, 1, 0, 70, 0.01, 1e-6, 1.0, 1.0, 0.004),
         (2, 0, 0, 0, 70, 0.2, 1e-3, 0.9, 0.95, 0.03), (2, 0, 1, 0, 70, 0.2, 1e-3, 0.9, 0.95, 0.05);
INSERT INTO buckets VALUES (1, 0, 0, 0, 0, 64, 54, 0.002, 0.01), (1, 0, 0, 1, 64, 128, 16, 0.003, 0.01),
  (2, 0, 0, 0, 0, 64, 54, 0.02, 0.2), (2, 0, 0, 1, 64, 128, 16, 0.04, 0.2);
SQL

# The views answer questions from the shell alone.
err=$(sqlite3 "$db" "SELECT output_rel_error FROM kernel_summary WHERE kernel = 'quanto:bits=4'")
[ "$err" = "0.04" ] || fail "kernel_summary output_rel_error of quanto:bits=4 is '$err', expected 0.04"
front=$(sqlite3 "$db" "SELECT group_concat(kernel, ',') FROM (SELECT kernel FROM pareto ORDER BY kernel)")
[ "$front" = "dense:dtype=bf16,quanto:bits=4" ] || fail "pareto is '$front'"

out="$tmp/report"
"$KVSIM" report --db "$db" -o "$out" 2>"$tmp/stderr" || fail "report failed: $(cat "$tmp/stderr")"
for f in error_bytes_c0ffee00 layer_error_c0ffee00 position_error_c0ffee00 agreement_c0ffee00; do
  [ -s "$out/$f.png" ] || fail "$f.png missing"
  [ -s "$out/$f.svg" ] || fail "$f.svg missing"
  grep -q "src=\"$f.png\"" "$out/index.html" || fail "index.html does not show $f.png"
done
grep -q '| kivi:bits=2 |' "$out/report.md" || fail "report.md lacks the running kivi run"
grep -q '| running |' "$out/report.md" || fail "report.md does not show the running status"
grep -q 'synthetic model' "$out/report.md" && fail "report.md warns about a synthetic model that is not there"

# Scripts rerun from the report folder with relative data file names.
(cd "$out" && rm -f error_bytes_c0ffee00.png && gnuplot error_bytes_c0ffee00.gp) || fail "rerunning a script failed"
[ -s "$out/error_bytes_c0ffee00.png" ] || fail "rerunning the script wrote no PNG"

# Usage errors exit 2, other errors 1 with a message naming the problem.
"$KVSIM" report --db "$db" 2>/dev/null; [ $? -eq 2 ] || fail "missing -o did not exit 2"
"$KVSIM" report --db "$db" -o "$out" --bogus 2>/dev/null; [ $? -eq 2 ] || fail "unknown option did not exit 2"
"$KVSIM" report --db "$tmp/none.db" -o "$out" 2>"$tmp/stderr"; [ $? -eq 1 ] || fail "missing db did not exit 1"
grep -q "none.db not found" "$tmp/stderr" || fail "missing db message: $(cat "$tmp/stderr")"
KVSIM_GNUPLOT=/nonexistent/gnuplot "$KVSIM" report --db "$db" -o "$out" 2>"$tmp/stderr"
[ $? -eq 1 ] || fail "absent gnuplot did not exit 1"
grep -q "/nonexistent/gnuplot" "$tmp/stderr" || fail "absent gnuplot message: $(cat "$tmp/stderr")"

# Merge a database with itself: every unit repeats identically.
"$KVSIM" db merge "$tmp/merged.db" "$db" "$db" 2>/dev/null || fail "merge failed"
units=$(sqlite3 "$tmp/merged.db" "SELECT COUNT(*) FROM units")
[ "$units" = "2" ] || fail "merged database has $units units, expected 2"
"$KVSIM" db merge "$tmp/merged.db" "$db" 2>/dev/null; [ $? -eq 1 ] || fail "merge over an existing file did not fail"

# Every db subcommand prints its own usage for -h and --help, creates no
# file named after the option, and rejects other options with exit 2.
for sub in init migrate info merge; do
  for opt in -h --help; do
    (cd "$tmp" && "$KVSIM" db "$sub" "$opt" >"$tmp/stdout" 2>"$tmp/stderr")
    [ $? -eq 0 ] || fail "db $sub $opt exited non-zero: $(cat "$tmp/stderr")"
    grep -q "usage: kvsim db $sub" "$tmp/stdout" || fail "db $sub $opt printed no usage: $(cat "$tmp/stdout")"
    [ -e "$tmp/$opt" ] && fail "db $sub $opt created a file named $opt"
  done
  (cd "$tmp" && "$KVSIM" db "$sub" --bogus "$db" 2>"$tmp/stderr"); [ $? -eq 2 ] || fail "db $sub --bogus did not exit 2"
  grep -q "unknown option '--bogus'" "$tmp/stderr" || fail "db $sub --bogus message: $(cat "$tmp/stderr")"
done

# A 0-byte file is named as empty, not as an old schema to migrate.
: >"$tmp/empty.db"
"$KVSIM" report --db "$tmp/empty.db" -o "$out" 2>"$tmp/stderr"; [ $? -eq 1 ] || fail "empty db did not exit 1"
grep -q "empty.db is empty" "$tmp/stderr" || fail "empty db message: $(cat "$tmp/stderr")"
grep -q "migrate" "$tmp/stderr" && fail "empty db message suggests a migration: $(cat "$tmp/stderr")"

rm -rf "$tmp"
echo "cli report: ok"
