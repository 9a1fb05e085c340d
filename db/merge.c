/*
** merge.c: kvs_db_merge, which combines shard databases into one file.
**
** The output is built under a temporary name: a fresh database gets each
** input ATTACHed in turn and copied in one transaction per input. Traces
** match by content hash, and runs by (trace hash, kernel spec, parameters,
** evaluation mode). A unit already present must have identical metric and
** bucket rows. Its timing may differ, because two machines measure
** different times for the same results, so the first copy's time is kept.
** Only a complete merge is renamed to the output path.
*/
#include "db_internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct merge_state {
    sqlite3 *conn;
    const char *out_path;
    const char *in_path;
    /* Per-unit statements, prepared once per input. */
    sqlite3_stmt *compare[2];   /* metrics, buckets rows of a unit, both sides */
    sqlite3_stmt *count_diff;   /* input rows minus output rows of a unit */
    sqlite3_stmt *copy_unit;
    sqlite3_stmt *copy_metrics;
    sqlite3_stmt *copy_buckets;
} merge_state_t;

static kvs_status_e merge_fail(const merge_state_t *m, const char *what)
{
    return kvs_db_sqlite_fail(m->conn, KVS_ERR_DB, m->in_path, what);
}

static kvs_status_e prepare(const merge_state_t *m, const char *sql, sqlite3_stmt **st)
{
    if (sqlite3_prepare_v2(m->conn, sql, -1, st, NULL) != SQLITE_OK)
        return merge_fail(m, "preparing a merge statement");
    return KVS_OK;
}

/* Binds (src run, out run, layer, kv_head) as ?1..?4 of a cached
** statement, steps it once and resets it. */
static kvs_status_e run_unit_statement(const merge_state_t *m, sqlite3_stmt *st, int64_t src_id, int64_t out_id,
                                       int64_t layer, int64_t kv_head, const char *what)
{
    int rc;

    sqlite3_bind_int64(st, 1, src_id);
    sqlite3_bind_int64(st, 2, out_id);
    sqlite3_bind_int64(st, 3, layer);
    sqlite3_bind_int64(st, 4, kv_head);
    rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc != SQLITE_DONE)
        return merge_fail(m, what);
    return KVS_OK;
}

/* Runs a prepared statement that returns no rows, then finalizes it. */
static kvs_status_e run_once(const merge_state_t *m, sqlite3_stmt *st, const char *what)
{
    int rc = sqlite3_step(st);

    sqlite3_finalize(st);
    if (rc != SQLITE_DONE)
        return merge_fail(m, what);
    return KVS_OK;
}

static kvs_status_e copy_traces_and_timings(const merge_state_t *m)
{
    KVS_FORWARD(kvs_db_exec(m->conn, m->in_path,
                            "INSERT INTO main.traces (content_hash, path, model, n_layers, n_heads, n_kv_heads, "
                            "head_dim, n_prompt, n_generated, synthetic, file_bytes, metadata_json, added_at) "
                            "SELECT content_hash, path, model, n_layers, n_heads, n_kv_heads, head_dim, n_prompt, "
                            "n_generated, synthetic, file_bytes, metadata_json, added_at FROM src.traces "
                            "WHERE content_hash NOT IN (SELECT content_hash FROM main.traces) ORDER BY id"));

    /* A timing row copied from several shards (one measured_at) is kept
    ** once. */
    return kvs_db_exec(m->conn, m->in_path,
                       "INSERT INTO main.timings (trace_id, kernel_spec, scope, context, append_seconds, "
                       "attend_seconds, read_bytes, host, code_version, measured_at) "
                       "SELECT mt.id, s.kernel_spec, s.scope, s.context, s.append_seconds, s.attend_seconds, "
                       "s.read_bytes, s.host, s.code_version, s.measured_at FROM src.timings s "
                       "JOIN src.traces st ON st.id = s.trace_id JOIN main.traces mt ON mt.content_hash = "
                       "st.content_hash WHERE NOT EXISTS (SELECT 1 FROM main.timings x WHERE x.trace_id = mt.id "
                       "AND x.kernel_spec = s.kernel_spec AND x.scope = s.scope AND x.context = s.context "
                       "AND x.host = s.host AND x.measured_at = s.measured_at) ORDER BY s.id");
}

typedef struct src_run {
    int64_t id;
    char *trace_hash;
    char *kernel_spec;
    char *params_json;
    char *eval_mode;
} src_run_t;

static void free_runs(src_run_t *runs, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(runs[i].trace_hash);
        free(runs[i].kernel_spec);
        free(runs[i].params_json);
        free(runs[i].eval_mode);
    }
    free(runs);
}

static kvs_status_e list_src_runs(const merge_state_t *m, src_run_t **out, size_t *n)
{
    sqlite3_stmt *st;
    size_t cap = 0;
    int rc;

    *out = NULL;
    *n = 0;
    KVS_FORWARD(prepare(m,
                        "SELECT r.id, t.content_hash, r.kernel_spec, r.params_json, r.eval_mode FROM src.runs r "
                        "JOIN src.traces t ON t.id = r.trace_id ORDER BY r.id",
                        &st));
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (*n == cap) {
            cap = cap ? cap * 2 : 32;
            src_run_t *grown = realloc(*out, cap * sizeof *grown);
            if (!grown) {
                sqlite3_finalize(st);
                return kvs_fail(KVS_ERR_NOMEM, "out of memory merging %s", m->in_path);
            }
            *out = grown;
        }
        src_run_t *r = &(*out)[(*n)++];
        r->id = sqlite3_column_int64(st, 0);
        r->trace_hash = strdup((const char *)sqlite3_column_text(st, 1));
        r->kernel_spec = strdup((const char *)sqlite3_column_text(st, 2));
        r->params_json = strdup((const char *)sqlite3_column_text(st, 3));
        r->eval_mode = strdup((const char *)sqlite3_column_text(st, 4));
    }
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE)
        return merge_fail(m, "listing runs");
    return KVS_OK;
}

/* Finds the output run matching a source run, or copies the run row. A
** matched run keeps the earliest start and latest finish, and is "done"
** only when every copy was done. */
static kvs_status_e map_run(const merge_state_t *m, const src_run_t *r, int64_t *out_id)
{
    sqlite3_stmt *st;
    int rc;

    *out_id = 0;
    KVS_FORWARD(prepare(m,
                        "SELECT r.id FROM main.runs r JOIN main.traces t ON t.id = r.trace_id "
                        "WHERE t.content_hash = ? AND r.kernel_spec = ? AND r.params_json = ? AND r.eval_mode = ? "
                        "ORDER BY r.id LIMIT 1",
                        &st));
    sqlite3_bind_text(st, 1, r->trace_hash, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, r->kernel_spec, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, r->params_json, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, r->eval_mode, -1, SQLITE_STATIC);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW)
        *out_id = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE)
        return merge_fail(m, "matching runs");

    if (*out_id) {
        KVS_FORWARD(prepare(m,
                            "UPDATE main.runs SET "
                            "status = CASE WHEN status = 'done' THEN (SELECT status FROM src.runs WHERE id = ?1) "
                            "  ELSE status END, "
                            "started_at = MIN(started_at, (SELECT started_at FROM src.runs WHERE id = ?1)), "
                            "finished_at = MAX(finished_at, (SELECT finished_at FROM src.runs WHERE id = ?1)) "
                            "WHERE id = ?2",
                            &st));
        sqlite3_bind_int64(st, 1, r->id);
        sqlite3_bind_int64(st, 2, *out_id);
        return run_once(m, st, "updating a merged run");
    }

    KVS_FORWARD(prepare(m,
                        "INSERT INTO main.runs (trace_id, kernel_spec, params_json, family, compressed_exec, "
                        "eval_mode, code_version, host, threads, seed, started_at, finished_at, status, "
                        "cost_context, bytes_per_token, stored_bytes, read_bytes_per_step) "
                        "SELECT (SELECT id FROM main.traces WHERE content_hash = ?2), kernel_spec, params_json, "
                        "family, compressed_exec, eval_mode, code_version, host, threads, seed, started_at, "
                        "finished_at, status, cost_context, bytes_per_token, stored_bytes, read_bytes_per_step "
                        "FROM src.runs WHERE id = ?1",
                        &st));
    sqlite3_bind_int64(st, 1, r->id);
    sqlite3_bind_text(st, 2, r->trace_hash, -1, SQLITE_STATIC);
    KVS_FORWARD(run_once(m, st, "copying a run"));
    *out_id = sqlite3_last_insert_rowid(m->conn);
    return KVS_OK;
}

/* Compares the rows of one unit in the output and the input, column by
** column. On a difference, fails naming the run, the unit, the head and the
** column. */
static kvs_status_e compare_unit(const merge_state_t *m, const src_run_t *r, int64_t src_id, int64_t out_id,
                                 int64_t layer, int64_t kv_head)
{
    static const char *const tables[2] = {"metrics", "buckets"};

    for (int t = 0; t < 2; t++) {
        sqlite3_stmt *st = m->compare[t];
        int rc;

        sqlite3_bind_int64(st, 1, src_id);
        sqlite3_bind_int64(st, 2, out_id);
        sqlite3_bind_int64(st, 3, layer);
        sqlite3_bind_int64(st, 4, kv_head);
        while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
            int n_cols = (sqlite3_column_count(st) - 2) / 2;
            const char *problem = NULL;
            int bad_col = -1;

            if (sqlite3_column_type(st, 0) == SQLITE_NULL || sqlite3_column_type(st, 1) == SQLITE_NULL)
                problem = "a row present on one side only";
            for (int c = 0; !problem && c < n_cols; c++) {
                sqlite3_value *a = sqlite3_column_value(st, 2 + c);
                sqlite3_value *b = sqlite3_column_value(st, 2 + n_cols + c);
                const char *name = sqlite3_column_name(st, 2 + c);
                if (!strcmp(name, "run_id"))
                    continue;
                int ta = sqlite3_value_type(a), tb = sqlite3_value_type(b);
                if (ta != tb || (ta != SQLITE_NULL && sqlite3_value_double(a) != sqlite3_value_double(b))) {
                    problem = "different values";
                    bad_col = c;
                }
            }
            if (problem) {
                long long head = sqlite3_column_int64(st, sqlite3_column_type(st, 0) == SQLITE_NULL ? 1 : 0);
                char detail[256] = "";
                if (bad_col >= 0)
                    snprintf(detail, sizeof detail, ": column %s.%s is %.17g in %s and %.17g in an earlier input",
                             tables[t], sqlite3_column_name(st, 2 + bad_col), sqlite3_column_double(st, 2 + bad_col),
                             m->in_path, sqlite3_column_double(st, 2 + n_cols + bad_col));
                sqlite3_reset(st);
                return kvs_fail(KVS_ERR_DB_SCHEMA,
                                "conflicting results for run '%s' (eval %s) on trace %s, unit layer %lld kv_head "
                                "%lld, query head %lld: %s in %s%s; inputs that repeat a unit must hold the same "
                                "results",
                                r->kernel_spec, r->eval_mode, r->trace_hash, (long long)layer, (long long)kv_head,
                                head, problem, tables[t], detail);
            }
        }
        sqlite3_reset(st);
        if (rc != SQLITE_DONE)
            return merge_fail(m, "comparing units");
    }

    /* Rows the output has and the input lacks. */
    sqlite3_stmt *st = m->count_diff;
    sqlite3_bind_int64(st, 1, src_id);
    sqlite3_bind_int64(st, 2, out_id);
    sqlite3_bind_int64(st, 3, layer);
    sqlite3_bind_int64(st, 4, kv_head);
    if (sqlite3_step(st) != SQLITE_ROW) {
        sqlite3_reset(st);
        return merge_fail(m, "comparing units");
    }
    int64_t extra_metrics = sqlite3_column_int64(st, 0), extra_buckets = sqlite3_column_int64(st, 1);
    sqlite3_reset(st);
    if (extra_metrics != 0 || extra_buckets != 0)
        return kvs_fail(KVS_ERR_DB_SCHEMA,
                        "conflicting results for run '%s' (eval %s) on trace %s, unit layer %lld kv_head %lld: "
                        "%s has %lld fewer metrics rows and %lld fewer bucket rows than an earlier input; inputs "
                        "that repeat a unit must hold the same results",
                        r->kernel_spec, r->eval_mode, r->trace_hash, (long long)layer, (long long)kv_head,
                        m->in_path, (long long)-extra_metrics, (long long)-extra_buckets);
    return KVS_OK;
}

static kvs_status_e copy_unit(const merge_state_t *m, int64_t src_id, int64_t out_id, int64_t layer, int64_t kv_head)
{
    KVS_FORWARD(run_unit_statement(m, m->copy_unit, src_id, out_id, layer, kv_head, "copying a unit"));
    KVS_FORWARD(run_unit_statement(m, m->copy_metrics, src_id, out_id, layer, kv_head, "copying metrics"));
    return run_unit_statement(m, m->copy_buckets, src_id, out_id, layer, kv_head, "copying buckets");
}

/* Prepares the per-unit statements for the attached input. The input's
** rows of a unit are matched to the output's by primary key, so a row
** missing from the output has NULL there; count_diff catches rows only the
** output has. */
static kvs_status_e prepare_unit_statements(merge_state_t *m)
{
    char sql[1024];
    size_t n;

    KVS_FORWARD(prepare(m,
                        "SELECT a.head, b.head, a.*, b.* FROM src.metrics a LEFT JOIN main.metrics b "
                        "ON b.run_id = ?2 AND b.layer = a.layer AND b.head = a.head "
                        "WHERE a.run_id = ?1 AND a.layer = ?3 AND a.kv_head = ?4 ORDER BY a.head",
                        &m->compare[0]));
    KVS_FORWARD(prepare(m,
                        "SELECT a.head, b.head, a.*, b.* FROM src.buckets a JOIN src.metrics y "
                        "ON y.run_id = a.run_id AND y.layer = a.layer AND y.head = a.head "
                        "LEFT JOIN main.buckets b ON b.run_id = ?2 AND b.layer = a.layer AND b.head = a.head "
                        "AND b.bucket = a.bucket WHERE a.run_id = ?1 AND a.layer = ?3 AND y.kv_head = ?4 "
                        "ORDER BY a.head, a.bucket",
                        &m->compare[1]));
    KVS_FORWARD(prepare(m,
                        "SELECT (SELECT COUNT(*) FROM src.metrics WHERE run_id = ?1 AND layer = ?3 AND kv_head = ?4)"
                        " - (SELECT COUNT(*) FROM main.metrics WHERE run_id = ?2 AND layer = ?3 AND kv_head = ?4),"
                        " (SELECT COUNT(*) FROM src.buckets x JOIN src.metrics y ON y.run_id = x.run_id "
                        "AND y.layer = x.layer AND y.head = x.head WHERE x.run_id = ?1 AND x.layer = ?3 "
                        "AND y.kv_head = ?4)"
                        " - (SELECT COUNT(*) FROM main.buckets x JOIN main.metrics y ON y.run_id = x.run_id "
                        "AND y.layer = x.layer AND y.head = x.head WHERE x.run_id = ?2 AND x.layer = ?3 "
                        "AND y.kv_head = ?4)",
                        &m->count_diff));
    KVS_FORWARD(prepare(m,
                        "INSERT INTO main.units (run_id, layer, kv_head, attend_seconds, attend_calls, "
                        "stored_bytes_per_token, committed_at) "
                        "SELECT ?2, layer, kv_head, attend_seconds, attend_calls, stored_bytes_per_token, "
                        "committed_at FROM src.units "
                        "WHERE run_id = ?1 AND layer = ?3 AND kv_head = ?4",
                        &m->copy_unit));

    n = (size_t)snprintf(sql, sizeof sql, "INSERT INTO main.metrics SELECT ?2, layer, head, kv_head, n_steps");
    for (size_t i = 0; i < kvs_db_n_metric_fields; i++)
        n += (size_t)snprintf(sql + n, sizeof sql - n, ", %s", kvs_db_metric_fields[i].column);
    snprintf(sql + n, sizeof sql - n, " FROM src.metrics WHERE run_id = ?1 AND layer = ?3 AND kv_head = ?4");
    KVS_FORWARD(prepare(m, sql, &m->copy_metrics));

    return prepare(m,
                   "INSERT INTO main.buckets SELECT ?2, b.layer, b.head, b.bucket, b.pos_start, b.pos_end, "
                   "b.n_steps, b.out_rel_l2, b.logit_rmse FROM src.buckets b JOIN src.metrics x "
                   "ON x.run_id = b.run_id AND x.layer = b.layer AND x.head = b.head "
                   "WHERE b.run_id = ?1 AND b.layer = ?3 AND x.kv_head = ?4",
                   &m->copy_buckets);
}

static void finalize_unit_statements(merge_state_t *m)
{
    sqlite3_finalize(m->compare[0]);
    sqlite3_finalize(m->compare[1]);
    sqlite3_finalize(m->count_diff);
    sqlite3_finalize(m->copy_unit);
    sqlite3_finalize(m->copy_metrics);
    sqlite3_finalize(m->copy_buckets);
    m->compare[0] = m->compare[1] = m->count_diff = NULL;
    m->copy_unit = m->copy_metrics = m->copy_buckets = NULL;
}

static kvs_status_e merge_units(const merge_state_t *m, const src_run_t *r, int64_t out_id)
{
    sqlite3_stmt *units, *exists;
    kvs_status_e rc = KVS_OK;
    int step;

    KVS_FORWARD(prepare(m, "SELECT layer, kv_head FROM src.units WHERE run_id = ? ORDER BY layer, kv_head", &units));
    if (prepare(m, "SELECT 1 FROM main.units WHERE run_id = ? AND layer = ? AND kv_head = ?", &exists) != KVS_OK) {
        sqlite3_finalize(units);
        return merge_fail(m, "preparing a merge statement");
    }
    sqlite3_bind_int64(units, 1, r->id);
    while (rc == KVS_OK && (step = sqlite3_step(units)) == SQLITE_ROW) {
        int64_t layer = sqlite3_column_int64(units, 0), kv_head = sqlite3_column_int64(units, 1);
        sqlite3_bind_int64(exists, 1, out_id);
        sqlite3_bind_int64(exists, 2, layer);
        sqlite3_bind_int64(exists, 3, kv_head);
        int present = sqlite3_step(exists) == SQLITE_ROW;
        sqlite3_reset(exists);
        if (present)
            rc = compare_unit(m, r, r->id, out_id, layer, kv_head);
        else
            rc = copy_unit(m, r->id, out_id, layer, kv_head);
    }
    if (rc == KVS_OK && step != SQLITE_DONE)
        rc = merge_fail(m, "listing units");
    sqlite3_finalize(units);
    sqlite3_finalize(exists);
    return rc;
}

static kvs_status_e merge_one(merge_state_t *m)
{
    src_run_t *runs;
    size_t n_runs;
    kvs_status_e rc;

    KVS_FORWARD(copy_traces_and_timings(m));
    KVS_FORWARD(list_src_runs(m, &runs, &n_runs));
    rc = prepare_unit_statements(m);
    for (size_t i = 0; i < n_runs && rc == KVS_OK; i++) {
        int64_t out_id;
        if (!runs[i].trace_hash || !runs[i].kernel_spec || !runs[i].params_json || !runs[i].eval_mode)
            rc = kvs_fail(KVS_ERR_NOMEM, "out of memory merging %s", m->in_path);
        if (rc == KVS_OK)
            rc = map_run(m, &runs[i], &out_id);
        if (rc == KVS_OK)
            rc = merge_units(m, &runs[i], out_id);
    }
    finalize_unit_statements(m);
    free_runs(runs, n_runs);
    return rc;
}

/* Attaches in_path as "src", merges it in one transaction, detaches. */
static kvs_status_e merge_input(merge_state_t *m)
{
    sqlite3_stmt *st;
    kvs_status_e rc;

    KVS_FORWARD(prepare(m, "ATTACH DATABASE ? AS src", &st));
    sqlite3_bind_text(st, 1, m->in_path, -1, SQLITE_STATIC);
    KVS_FORWARD(run_once(m, st, "attaching the input"));

    rc = kvs_db_exec(m->conn, m->out_path, "BEGIN IMMEDIATE");
    if (rc == KVS_OK)
        rc = merge_one(m);
    if (rc == KVS_OK)
        rc = kvs_db_exec(m->conn, m->out_path, "COMMIT");
    else
        sqlite3_exec(m->conn, "ROLLBACK", NULL, NULL, NULL);
    sqlite3_exec(m->conn, "DETACH DATABASE src", NULL, NULL, NULL);
    return rc;
}

static void remove_db_files(const char *path)
{
    char side[4300];

    unlink(path);
    snprintf(side, sizeof side, "%s-wal", path);
    unlink(side);
    snprintf(side, sizeof side, "%s-shm", path);
    unlink(side);
}

kvs_status_e kvs_db_merge(const char *out_path, const char *const *in_paths, uint32_t n_in)
{
    char tmp[4200];
    struct stat st;
    kvs_db_t *db;
    kvs_status_e rc = KVS_OK;

    KVS_RETURN_IF(n_in == 0, KVS_ERR_USAGE, "no input databases to merge into %s", out_path);
    KVS_RETURN_IF(stat(out_path, &st) == 0, KVS_ERR_INVALID,
                  "merge output %s already exists; give a new file name (list %s as an input to include it)",
                  out_path, out_path);

    /* Check every input before writing anything: each must be a kvsim
    ** database of the current schema version. */
    for (uint32_t i = 0; i < n_in; i++) {
        kvs_db_t *in;
        rc = kvs_db_open_readonly(in_paths[i], &in);
        if (rc != KVS_OK) {
            kvs_error_prefix("merge input %u", i + 1);
            return rc;
        }
        kvs_db_close(in);
    }

    KVS_RETURN_IF((size_t)snprintf(tmp, sizeof tmp, "%s.tmp.%ld", out_path, (long)getpid()) >= sizeof tmp,
                  KVS_ERR_INVALID, "output path too long: %s", out_path);
    remove_db_files(tmp);
    KVS_FORWARD(kvs_db_open(tmp, &db));

    merge_state_t m = {.conn = kvs_db_sqlite(db), .out_path = tmp};
    for (uint32_t i = 0; i < n_in && rc == KVS_OK; i++) {
        m.in_path = in_paths[i];
        rc = merge_input(&m);
    }

    /* A rollback-journal file is one self-contained file to rename; the
    ** next read-write open switches it back to WAL. */
    if (rc == KVS_OK)
        rc = kvs_db_exec(m.conn, tmp, "PRAGMA journal_mode = DELETE");
    kvs_db_close(db);
    if (rc == KVS_OK && rename(tmp, out_path) != 0)
        rc = kvs_fail(KVS_ERR_IO, "cannot rename %s to %s: %s", tmp, out_path, strerror(errno));
    if (rc != KVS_OK)
        remove_db_files(tmp);
    return rc;
}
