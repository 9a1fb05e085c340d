/* test_db.c: the results database: schema, writes, views, concurrency,
** migration and merge, on the fixture of db_fixture.h. */
#include "testutil.h"

#include "db_fixture.h"

#include "common/fsutil.h"
#include "db/db.h"

#include <math.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static char *tmp_path(const char *test, const char *name)
{
    char *dir = kvs_test_tmpdir(test);
    char *path = malloc(4200);

    snprintf(path, 4200, "%s/%s", dir, name);
    free(dir);
    return path;
}

/* Opens path with plain SQLite, as a user's sqlite3 shell would. */
static sqlite3 *raw_open(const char *path)
{
    sqlite3 *conn;

    ck_assert_int_eq(sqlite3_open(path, &conn), SQLITE_OK);
    return conn;
}

static int64_t raw_int(sqlite3 *conn, const char *sql)
{
    sqlite3_stmt *st;
    int64_t v = -1;

    ck_assert_msg(sqlite3_prepare_v2(conn, sql, -1, &st, NULL) == SQLITE_OK, "%s: %s", sql, sqlite3_errmsg(conn));
    if (sqlite3_step(st) == SQLITE_ROW)
        v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return v;
}

static void raw_exec(sqlite3 *conn, const char *sql)
{
    ck_assert_msg(sqlite3_exec(conn, sql, NULL, NULL, NULL) == SQLITE_OK, "%s: %s", sql, sqlite3_errmsg(conn));
}

START_TEST(open_sets_version_and_wal)
{
    char *path = tmp_path("db_version", "r.db");
    kvs_db_t *db;
    sqlite3 *conn;
    sqlite3_stmt *st;

    ck_assert_int_eq(kvs_db_open(path, &db), KVS_OK);
    ck_assert_int_eq(kvs_db_file_version(db), kvs_db_schema_version());
    kvs_db_close(db);

    conn = raw_open(path);
    ck_assert_int_eq(raw_int(conn, "PRAGMA user_version"), kvs_db_schema_version());
    ck_assert_int_eq(sqlite3_prepare_v2(conn, "PRAGMA journal_mode", -1, &st, NULL), SQLITE_OK);
    ck_assert_int_eq(sqlite3_step(st), SQLITE_ROW);
    ck_assert_str_eq((const char *)sqlite3_column_text(st, 0), "wal");
    sqlite3_finalize(st);
    sqlite3_close(conn);

    /* A second open of a current file changes nothing. */
    ck_assert_int_eq(kvs_db_open(path, &db), KVS_OK);
    kvs_db_close(db);
    free(path);
}
END_TEST

START_TEST(kernel_summary_equals_hand_means)
{
    char *path = tmp_path("db_summary", "r.db");
    sqlite3 *conn;
    sqlite3_stmt *st;

    fx_build(path, fx_all, -1, 0);
    conn = raw_open(path);
    ck_assert_int_eq(raw_int(conn, "SELECT COUNT(*) FROM kernel_summary"), FX_N_KERNELS);
    ck_assert_int_eq(sqlite3_prepare_v2(conn,
                                        "SELECT output_rel_error, logit_rmse, top1_agreement, top8_agreement, kl, "
                                        "bytes_per_token, family, synthetic, model, read_bytes_per_step, "
                                        "mean_attend_seconds, n_head_rows, n_units "
                                        "FROM kernel_summary WHERE trace_hash = ? AND kernel = ?",
                                        -1, &st, NULL),
                     SQLITE_OK);
    for (int k = 0; k < FX_N_KERNELS; k++) {
        double sum_err = 0, sum_logit = 0, sum_top1 = 0, sum_top8 = 0, sum_kl = 0;
        int n = 0;

        /* Reference means computed here from the per-head values. */
        for (uint32_t layer = 0; layer < FX_LAYERS; layer++) {
            for (uint32_t head = 0; head < FX_KV_HEADS * FX_GROUP; head++) {
                kvs_metrics_t m;
                fx_metrics(k, layer, head, 0, &m);
                sum_err += m.out_rel_l2;
                sum_logit += m.logit_rmse;
                sum_top1 += m.top1;
                sum_top8 += m.top8;
                sum_kl += m.kl;
                n++;
            }
        }
        sqlite3_bind_text(st, 1, fx_trace_hash[fx_kernels[k].trace], -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, fx_kernels[k].spec, -1, SQLITE_STATIC);
        ck_assert_int_eq(sqlite3_step(st), SQLITE_ROW);
        ck_assert_double_eq_tol(sqlite3_column_double(st, 0), sum_err / n, 1e-12);
        ck_assert_double_eq_tol(sqlite3_column_double(st, 0), fx_kernels[k].err, 1e-12);
        ck_assert_double_eq_tol(sqlite3_column_double(st, 1), sum_logit / n, 1e-12);
        ck_assert_double_eq_tol(sqlite3_column_double(st, 2), sum_top1 / n, 1e-12);
        ck_assert_double_eq_tol(sqlite3_column_double(st, 3), sum_top8 / n, 1e-12);
        ck_assert_double_eq_tol(sqlite3_column_double(st, 4), sum_kl / n, 1e-15);
        ck_assert_double_eq(sqlite3_column_double(st, 5), fx_kernels[k].bytes_per_token);
        ck_assert_str_eq((const char *)sqlite3_column_text(st, 6), fx_kernels[k].family);
        ck_assert_int_eq(sqlite3_column_int(st, 7), fx_kernels[k].trace);
        ck_assert_str_eq((const char *)sqlite3_column_text(st, 8),
                         fx_kernels[k].trace ? "synthetic-smollm2" : "smollm2-fixture");
        ck_assert_int_eq(sqlite3_column_int64(st, 9),
                         (int64_t)(fx_kernels[k].bytes_per_token * 256) * (fx_kernels[k].compressed_exec ? 1 : 3));
        /* Every unit measured 1e-5 * (1 + k) seconds over 156 calls. */
        ck_assert_double_eq_tol(sqlite3_column_double(st, 10), 1e-5 * (1 + k), 1e-15);
        ck_assert_int_eq(sqlite3_column_int(st, 11), FX_LAYERS * FX_KV_HEADS * FX_GROUP);
        ck_assert_int_eq(sqlite3_column_int(st, 12), FX_LAYERS * FX_KV_HEADS);
        ck_assert_int_eq(sqlite3_step(st), SQLITE_DONE);
        sqlite3_reset(st);
    }
    sqlite3_finalize(st);
    sqlite3_close(conn);
    free(path);
}
END_TEST

START_TEST(pareto_returns_non_dominated)
{
    char *path = tmp_path("db_pareto", "r.db");
    sqlite3 *conn;
    sqlite3_stmt *st;
    int found[FX_N_KERNELS] = {0};
    int n_rows = 0;

    fx_build(path, fx_all, -1, 0);
    conn = raw_open(path);
    ck_assert_int_eq(sqlite3_prepare_v2(conn, "SELECT trace_hash, kernel FROM pareto", -1, &st, NULL), SQLITE_OK);
    while (sqlite3_step(st) == SQLITE_ROW) {
        const char *hash = (const char *)sqlite3_column_text(st, 0);
        const char *kernel = (const char *)sqlite3_column_text(st, 1);
        int match = -1;
        for (int k = 0; k < FX_N_KERNELS; k++) {
            if (!strcmp(fx_trace_hash[fx_kernels[k].trace], hash) && !strcmp(fx_kernels[k].spec, kernel))
                match = k;
        }
        ck_assert_msg(match >= 0, "pareto row %s %s is not a fixture run", hash, kernel);
        found[match]++;
        n_rows++;
    }
    sqlite3_finalize(st);
    for (int k = 0; k < FX_N_KERNELS; k++)
        ck_assert_msg(found[k] == fx_kernels[k].on_front, "kernel %s on trace %d: in pareto %d times, expected %d",
                      fx_kernels[k].spec, fx_kernels[k].trace, found[k], fx_kernels[k].on_front);
    ck_assert_int_eq(n_rows, 7);
    sqlite3_close(conn);
    free(path);
}
END_TEST

START_TEST(position_and_layer_views)
{
    char *path = tmp_path("db_views", "r.db");
    sqlite3 *conn;
    sqlite3_stmt *st;
    int n = 0;

    fx_build(path, fx_all, -1, 0);
    conn = raw_open(path);

    /* Bucket 0 had no steps and is not stored; buckets 1..3 average the
    ** eight heads, whose deviations cancel. */
    ck_assert_int_eq(sqlite3_prepare_v2(conn,
                                        "SELECT bucket, pos_start, pos_end, n_steps, output_rel_error "
                                        "FROM position_error WHERE kernel = 'quanto:bits=2' ORDER BY bucket",
                                        -1, &st, NULL),
                     SQLITE_OK);
    while (sqlite3_step(st) == SQLITE_ROW) {
        int b = sqlite3_column_int(st, 0);
        ck_assert_int_eq(b, n + 1);
        ck_assert_int_eq(sqlite3_column_int(st, 1), b * KVS_POS_BUCKET);
        ck_assert_int_eq(sqlite3_column_int(st, 2), (b + 1) * KVS_POS_BUCKET);
        ck_assert_int_eq(sqlite3_column_int(st, 3), (int)fx_bucket_steps[b] * FX_LAYERS * FX_KV_HEADS * FX_GROUP);
        ck_assert_double_eq_tol(sqlite3_column_double(st, 4), 0.15 * (0.5 + 0.5 * b), 1e-12);
        n++;
    }
    sqlite3_finalize(st);
    ck_assert_int_eq(n, 3);

    ck_assert_int_eq(raw_int(conn, "SELECT COUNT(*) FROM layer_error WHERE kernel = 'hqq:bits=4'"),
                     FX_LAYERS * FX_KV_HEADS * FX_GROUP);
    ck_assert_int_eq(raw_int(conn, "SELECT kv_head FROM layer_error WHERE kernel = 'hqq:bits=4' AND layer = 1 "
                                   "AND head = 3"),
                     1);
    sqlite3_close(conn);
    free(path);
}
END_TEST

START_TEST(timing_view_keeps_latest)
{
    char *path = tmp_path("db_timing", "r.db");
    kvs_db_t *db;
    sqlite3 *conn;
    sqlite3_stmt *st;

    fx_build(path, fx_all, -1, 0);
    ck_assert_int_eq(kvs_db_open(path, &db), KVS_OK);
    /* Trace 1 is the first trace stored by the fixture. */
    ck_assert_int_eq(kvs_db_put_timing(db, 1, "quanto:bits=4", 512, 2e-6, 5e-3, 123, "model", "fixture-host"),
                     KVS_OK);
    ck_assert_int_eq(kvs_db_put_timing(db, 1, "quanto:bits=4", 512, 2e-6, 1e-3, 1, "layer", NULL),
                     KVS_ERR_INVALID);
    ck_assert_int_eq(kvs_db_put_timing(db, 1, "quanto:bits=4", 512, NAN, 1e-3, 1, "head", NULL), KVS_ERR_INVALID);
    kvs_db_close(db);

    conn = raw_open(path);
    ck_assert_int_eq(raw_int(conn, "SELECT COUNT(*) FROM timing"), 12);
    ck_assert_int_eq(sqlite3_prepare_v2(conn,
                                        "SELECT attend_seconds, read_bytes, family FROM timing "
                                        "WHERE kernel = 'quanto:bits=4' AND context = 512",
                                        -1, &st, NULL),
                     SQLITE_OK);
    ck_assert_int_eq(sqlite3_step(st), SQLITE_ROW);
    ck_assert_double_eq(sqlite3_column_double(st, 0), 5e-3);
    ck_assert_int_eq(sqlite3_column_int(st, 1), 123);
    ck_assert_str_eq((const char *)sqlite3_column_text(st, 2), "quantized");
    ck_assert_int_eq(sqlite3_step(st), SQLITE_DONE);
    sqlite3_finalize(st);
    sqlite3_close(conn);
    free(path);
}
END_TEST

START_TEST(unit_done_and_resume)
{
    char *path = tmp_path("db_resume", "r.db");
    kvs_db_t *db;
    int64_t traces[2], run, again, fresh;
    int done;

    ck_assert_int_eq(kvs_db_open(path, &db), KVS_OK);
    fx_put_traces(db, traces);

    /* The same content hash finds the stored trace. */
    int64_t traces2[2];
    fx_put_traces(db, traces2);
    ck_assert_int_eq(traces2[0], traces[0]);
    ck_assert_int_eq(traces2[1], traces[1]);

    run = fx_begin(db, traces, 2, 1);
    ck_assert_int_eq(fx_commit(db, run, 2, 1, 0, 0), KVS_OK);
    ck_assert_int_eq(kvs_db_unit_done(db, run, 1, 0, &done), KVS_OK);
    ck_assert_int_eq(done, 1);
    ck_assert_int_eq(kvs_db_unit_done(db, run, 1, 1, &done), KVS_OK);
    ck_assert_int_eq(done, 0);
    ck_assert_int_eq(kvs_db_unit_done(db, run, 0, 0, &done), KVS_OK);
    ck_assert_int_eq(done, 0);

    /* A second commit of the same unit is rejected and changes nothing. */
    ck_assert_int_ne(fx_commit(db, run, 2, 1, 0, 0.5), KVS_OK);
    ck_assert_ptr_nonnull(strstr(kvs_error_message(), "layer 1, kv_head 0"));

    /* Resume finds the run; without resume a new run starts. */
    again = fx_begin(db, traces, 2, 1);
    ck_assert_int_eq(again, run);
    fresh = fx_begin(db, traces, 2, 0);
    ck_assert_int_ne(fresh, run);
    ck_assert_int_eq(kvs_db_unit_done(db, fresh, 1, 0, &done), KVS_OK);
    ck_assert_int_eq(done, 0);

    ck_assert_int_eq(kvs_db_end_run(db, run, "failed: interrupted"), KVS_OK);
    ck_assert_int_eq(kvs_db_end_run(db, 999, "done"), KVS_ERR_NOT_FOUND);

    sqlite3 *conn = raw_open(path);
    ck_assert_int_eq(raw_int(conn, "SELECT COUNT(*) FROM runs WHERE status = 'failed: interrupted' AND "
                                   "finished_at IS NOT NULL"),
                     1);
    ck_assert_int_eq(raw_int(conn, "SELECT COUNT(*) FROM runs WHERE status = 'running'"), 1);
    ck_assert_int_eq(raw_int(conn, "SELECT id FROM runs WHERE status = 'running'"), fresh);

    /* Resume takes the latest matching run. A failed run becomes running
    ** again; a finished run stays done, because a replay with nothing left
    ** to do does not end it again. */
    ck_assert_int_eq(kvs_db_end_run(db, fresh, "failed: disk full"), KVS_OK);
    ck_assert_int_eq(fx_begin(db, traces, 2, 1), fresh);
    ck_assert_int_eq(raw_int(conn, "SELECT COUNT(*) FROM runs WHERE status = 'running' AND finished_at IS NULL"), 1);
    ck_assert_int_eq(kvs_db_end_run(db, fresh, "done"), KVS_OK);
    ck_assert_int_eq(fx_begin(db, traces, 2, 1), fresh);
    ck_assert_int_eq(raw_int(conn, "SELECT COUNT(*) FROM runs WHERE status = 'done' AND finished_at IS NOT NULL"), 1);
    sqlite3_close(conn);
    kvs_db_close(db);
    free(path);
}
END_TEST

START_TEST(commit_is_atomic)
{
    char *path = tmp_path("db_atomic", "r.db");
    kvs_db_t *db;
    int64_t traces[2], run;
    kvs_db_head_row_t rows[2];
    int done;

    ck_assert_int_eq(kvs_db_open(path, &db), KVS_OK);
    fx_put_traces(db, traces);
    run = fx_begin(db, traces, 0, 0);

    /* The second row repeats head 0, so its insert fails after the unit
    ** row and the first metrics row were written. */
    memset(rows, 0, sizeof rows);
    fx_metrics(0, 0, 0, 0, &rows[0].metrics);
    fx_metrics(0, 0, 1, 0, &rows[1].metrics);
    rows[0].head = 0;
    rows[1].head = 0;
    ck_assert_int_ne(kvs_db_commit_unit(db, run, 0, 0, rows, 2, 1e-5, 10, 64.0), KVS_OK);
    ck_assert_int_eq(kvs_db_unit_done(db, run, 0, 0, &done), KVS_OK);
    ck_assert_int_eq(done, 0);

    /* A row claiming buckets without data is rejected before writing. */
    rows[1].head = 1;
    rows[1].n_buckets = 3;
    ck_assert_int_eq(kvs_db_commit_unit(db, run, 0, 0, rows, 2, 1e-5, 10, 64.0), KVS_ERR_INVALID);
    rows[1].n_buckets = 0;
    ck_assert_int_eq(kvs_db_commit_unit(db, run, 0, 0, rows, 2, 1e-5, 10, 64.0), KVS_OK);

    /* A unit without attention calls has no mean time. */
    ck_assert_int_eq(kvs_db_commit_unit(db, run, 1, 0, rows, 2, 0.0, 0, -1), KVS_OK);
    kvs_db_close(db);

    sqlite3 *conn = raw_open(path);
    ck_assert_int_eq(raw_int(conn, "SELECT COUNT(*) FROM metrics"), 4);
    ck_assert_int_eq(raw_int(conn, "SELECT COUNT(*) FROM units"), 2);
    /* 1e-5 s over 10 calls is stored as the mean, 1e-6 s per call. */
    ck_assert_int_eq(raw_int(conn, "SELECT COUNT(*) FROM units WHERE layer = 0 AND abs(attend_seconds - 1e-6) < 1e-18"),
                     1);
    ck_assert_int_eq(raw_int(conn, "SELECT COUNT(*) FROM units WHERE layer = 1 AND attend_seconds IS NULL"), 1);
    sqlite3_close(conn);
    free(path);
}
END_TEST

/* Child process body: opens path (perhaps creating it) and commits every
** unit of kernel k. Exit status 0 when all succeeded. */
static int concurrent_writer(const char *path, int k)
{
    kvs_db_t *db;
    int64_t traces[2], run;

    if (kvs_db_open(path, &db) != KVS_OK) {
        fprintf(stderr, "writer %d: %s\n", k, kvs_error_message());
        return 1;
    }
    fx_put_traces(db, traces);
    run = fx_begin(db, traces, k, 1);
    for (int rep = 0; rep < 10; rep++) {
        for (uint32_t layer = 0; layer < FX_LAYERS; layer++) {
            for (uint32_t kv = 0; kv < FX_KV_HEADS; kv++) {
                int done;
                if (kvs_db_unit_done(db, run, layer, kv, &done) != KVS_OK)
                    return 2;
                if (done)
                    continue;
                if (fx_commit(db, run, k, layer, kv, 0) != KVS_OK) {
                    fprintf(stderr, "writer %d: %s\n", k, kvs_error_message());
                    return 3;
                }
            }
        }
    }
    if (kvs_db_end_run(db, run, "done") != KVS_OK)
        return 4;
    kvs_db_close(db);
    return 0;
}

START_TEST(two_processes_write_one_file)
{
    char *path = tmp_path("db_concurrent", "r.db");
    pid_t pids[4];
    int n_procs = 4;

    /* Four writers race to create the file and commit their runs. */
    for (int i = 0; i < n_procs; i++) {
        pids[i] = fork();
        ck_assert_int_ge(pids[i], 0);
        if (pids[i] == 0)
            _exit(concurrent_writer(path, i));
    }
    for (int i = 0; i < n_procs; i++) {
        int status;
        ck_assert_int_eq(waitpid(pids[i], &status, 0), pids[i]);
        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "writer %d failed with status %d", i, status);
    }

    sqlite3 *conn = raw_open(path);
    ck_assert_int_eq(raw_int(conn, "SELECT COUNT(*) FROM traces"), 2);
    ck_assert_int_eq(raw_int(conn, "SELECT COUNT(*) FROM runs WHERE status = 'done'"), n_procs);
    ck_assert_int_eq(raw_int(conn, "SELECT COUNT(*) FROM units"), n_procs * FX_LAYERS * FX_KV_HEADS);
    ck_assert_int_eq(raw_int(conn, "SELECT COUNT(*) FROM metrics"), n_procs * FX_LAYERS * FX_KV_HEADS * FX_GROUP);
    sqlite3_close(conn);
    free(path);
}
END_TEST

START_TEST(newer_version_rejected)
{
    char *path = tmp_path("db_newer", "r.db");
    kvs_db_t *db;
    char sql[64];

    ck_assert_int_eq(kvs_db_open(path, &db), KVS_OK);
    kvs_db_close(db);
    sqlite3 *conn = raw_open(path);
    snprintf(sql, sizeof sql, "PRAGMA user_version = %d", kvs_db_schema_version() + 1);
    raw_exec(conn, sql);
    sqlite3_close(conn);

    ck_assert_int_eq(kvs_db_open(path, &db), KVS_ERR_DB_SCHEMA);
    ck_assert_ptr_null(db);
    ck_assert_ptr_nonnull(strstr(kvs_error_message(), "newer"));
    ck_assert_int_eq(kvs_db_open_readonly(path, &db), KVS_ERR_DB_SCHEMA);
    free(path);
}
END_TEST

START_TEST(version_1_file_migrates)
{
    char *path = tmp_path("db_migrate", "r.db");
    kvs_db_t *db;
    int64_t traces[2], run;

    ck_assert_int_eq(kvs_db_open_at_version(path, 1, &db), KVS_OK);
    ck_assert_int_eq(kvs_db_file_version(db), 1);
    fx_put_traces(db, traces);
    run = fx_begin(db, traces, 3, 0);
    ck_assert_int_eq(fx_commit(db, run, 3, 0, 1, 0), KVS_OK);
    ck_assert_int_eq(kvs_db_end_run(db, run, "done"), KVS_OK);
    kvs_db_close(db);

    sqlite3 *conn = raw_open(path);
    ck_assert_int_eq(raw_int(conn, "PRAGMA user_version"), 1);
    ck_assert_int_eq(raw_int(conn, "SELECT COUNT(*) FROM sqlite_master WHERE name IN ('timings', 'timing')"), 0);
    sqlite3_close(conn);

    /* Read-only opens need the current version, and the message names the upgrade command. */
    ck_assert_int_eq(kvs_db_open_readonly(path, &db), KVS_ERR_DB_SCHEMA);
    ck_assert_ptr_nonnull(strstr(kvs_error_message(), "kvsim db migrate"));

    ck_assert_int_eq(kvs_db_open(path, &db), KVS_OK);
    ck_assert_int_eq(kvs_db_file_version(db), kvs_db_schema_version());
    ck_assert_int_eq(kvs_db_put_timing(db, traces[0], "quanto:bits=2", 256, 1e-6, 1e-4, 4096, "head", NULL), KVS_OK);
    kvs_db_close(db);

    conn = raw_open(path);
    ck_assert_int_eq(raw_int(conn, "PRAGMA user_version"), kvs_db_schema_version());
    ck_assert_int_eq(raw_int(conn, "SELECT COUNT(*) FROM timing"), 1);
    ck_assert_int_eq(raw_int(conn, "SELECT n_units FROM kernel_summary"), 1);
    ck_assert_int_eq(raw_int(conn, "SELECT COUNT(*) FROM metrics"), FX_GROUP);
    sqlite3_close(conn);
    free(path);
}
END_TEST

START_TEST(bad_paths_explained)
{
    char *dir = kvs_test_tmpdir("db_paths");
    char path[4300];
    kvs_db_t *db;

    snprintf(path, sizeof path, "%s/missing/r.db", dir);
    ck_assert_int_eq(kvs_db_open(path, &db), KVS_ERR_NOT_FOUND);
    ck_assert_ptr_nonnull(strstr(kvs_error_message(), "does not exist"));
    ck_assert_ptr_nonnull(strstr(kvs_error_message(), "missing"));

    ck_assert_int_eq(kvs_db_open(dir, &db), KVS_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(kvs_error_message(), "is a folder"));

    snprintf(path, sizeof path, "%s/none.db", dir);
    ck_assert_int_eq(kvs_db_open_readonly(path, &db), KVS_ERR_NOT_FOUND);

    /* A text file is not an SQLite database. */
    snprintf(path, sizeof path, "%s/text.db", dir);
    ck_assert_int_eq(kvs_write_file(path, "this is not a database, just some text padding it out to a page\n", 65),
                     KVS_OK);
    ck_assert_int_eq(kvs_db_open(path, &db), KVS_ERR_DB);
    ck_assert_ptr_nonnull(strstr(kvs_error_message(), "not an SQLite database"));

    /* Another program's SQLite file is left alone. */
    snprintf(path, sizeof path, "%s/other.db", dir);
    sqlite3 *conn = raw_open(path);
    raw_exec(conn, "CREATE TABLE notes (x TEXT)");
    sqlite3_close(conn);
    ck_assert_int_eq(kvs_db_open(path, &db), KVS_ERR_DB_SCHEMA);
    ck_assert_ptr_nonnull(strstr(kvs_error_message(), "not a kvsim results database"));

    if (geteuid() != 0) {
        snprintf(path, sizeof path, "%s/ro", dir);
        ck_assert_int_eq(mkdir(path, 0555), 0);
        snprintf(path, sizeof path, "%s/ro/r.db", dir);
        ck_assert_int_eq(kvs_db_open(path, &db), KVS_ERR_IO);
        ck_assert_ptr_nonnull(strstr(kvs_error_message(), "not writable"));
    }
    free(dir);
}
END_TEST

/* Shards split the units by parity and both hold unit (kernel 3, layer 0,
** KV head 1), as two machines resuming the same work might. */
static int shard_even(int k, uint32_t layer, uint32_t kv_head)
{
    return (k + layer + kv_head) % 2 == 0 || (k == 3 && layer == 0 && kv_head == 1);
}

static int shard_odd(int k, uint32_t layer, uint32_t kv_head)
{
    return (k + layer + kv_head) % 2 == 1 || (k == 3 && layer == 0 && kv_head == 1);
}

/* Runs sql on both files and checks the result rows are equal, in order. */
static void assert_same_rows(const char *a_path, const char *b_path, const char *sql)
{
    sqlite3 *a = raw_open(a_path), *b = raw_open(b_path);
    sqlite3_stmt *sa, *sb;
    int n = 0;

    ck_assert_int_eq(sqlite3_prepare_v2(a, sql, -1, &sa, NULL), SQLITE_OK);
    ck_assert_int_eq(sqlite3_prepare_v2(b, sql, -1, &sb, NULL), SQLITE_OK);
    for (;;) {
        int ra = sqlite3_step(sa), rb = sqlite3_step(sb);
        ck_assert_msg(ra == rb, "%s: row %d present in one file only", sql, n);
        if (ra != SQLITE_ROW)
            break;
        for (int c = 0; c < sqlite3_column_count(sa); c++) {
            const char *x = (const char *)sqlite3_column_text(sa, c);
            const char *y = (const char *)sqlite3_column_text(sb, c);
            ck_assert_msg((!x && !y) || (x && y && !strcmp(x, y)), "%s: row %d column %d: %s vs %s", sql, n, c,
                          x ? x : "NULL", y ? y : "NULL");
        }
        n++;
    }
    ck_assert_int_gt(n, 0);
    sqlite3_finalize(sa);
    sqlite3_finalize(sb);
    sqlite3_close(a);
    sqlite3_close(b);
}

START_TEST(merge_equals_single_database)
{
    char *dir = kvs_test_tmpdir("db_merge");
    char all[4300], even[4300], odd[4300], merged[4300];
    const char *inputs[2] = {even, odd};

    snprintf(all, sizeof all, "%s/all.db", dir);
    snprintf(even, sizeof even, "%s/even.db", dir);
    snprintf(odd, sizeof odd, "%s/odd.db", dir);
    snprintf(merged, sizeof merged, "%s/merged.db", dir);
    fx_build(all, fx_all, -1, 0);
    fx_build(even, shard_even, -1, 0);
    fx_build(odd, shard_odd, -1, 0);

    ck_assert_int_eq(kvs_db_merge(merged, inputs, 2), KVS_OK);
    assert_same_rows(all, merged,
                     "SELECT t.content_hash, r.kernel_spec, m.* FROM metrics m JOIN runs r ON r.id = m.run_id "
                     "JOIN traces t ON t.id = r.trace_id ORDER BY t.content_hash, r.kernel_spec, m.layer, m.head");
    assert_same_rows(all, merged,
                     "SELECT t.content_hash, r.kernel_spec, b.layer, b.head, b.bucket, b.pos_start, b.pos_end, "
                     "b.n_steps, b.out_rel_l2, b.logit_rmse FROM buckets b JOIN runs r ON r.id = b.run_id "
                     "JOIN traces t ON t.id = r.trace_id ORDER BY 1, 2, 3, 4, 5");
    assert_same_rows(all, merged,
                     "SELECT trace_hash, kernel, family, bytes_per_token, output_rel_error, top1_agreement, "
                     "n_head_rows, n_units, status FROM kernel_summary ORDER BY trace_hash, kernel");
    assert_same_rows(all, merged, "SELECT trace_hash, kernel FROM pareto ORDER BY trace_hash, kernel");
    assert_same_rows(all, merged, "SELECT COUNT(*) FROM traces");
    assert_same_rows(all, merged, "SELECT kernel, context, read_bytes FROM timing ORDER BY kernel, context");

    /* The output is a current-version kvsim database and the inputs
    ** remain; a second merge onto an existing file is rejected. */
    kvs_db_t *db;
    ck_assert_int_eq(kvs_db_open_readonly(merged, &db), KVS_OK);
    kvs_db_close(db);
    ck_assert_int_eq(kvs_db_merge(merged, inputs, 2), KVS_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(kvs_error_message(), "already exists"));
    free(dir);
}
END_TEST

START_TEST(merge_rejects_conflicting_unit)
{
    char *dir = kvs_test_tmpdir("db_merge_conflict");
    char even[4300], odd[4300], merged[4300], old[4300];
    const char *inputs[2] = {even, odd};
    struct stat st;

    snprintf(even, sizeof even, "%s/even.db", dir);
    snprintf(odd, sizeof odd, "%s/odd.db", dir);
    snprintf(merged, sizeof merged, "%s/merged.db", dir);
    fx_build(even, shard_even, -1, 0);
    /* Kernel 3 (quanto:bits=2) differs in the odd shard, including the
    ** unit both shards hold. */
    fx_build(odd, shard_odd, 3, 0.01);

    ck_assert_int_eq(kvs_db_merge(merged, inputs, 2), KVS_ERR_DB_SCHEMA);
    ck_assert_msg(strstr(kvs_error_message(), "'quanto:bits=2'") != NULL, "%s", kvs_error_message());
    ck_assert_ptr_nonnull(strstr(kvs_error_message(), "layer 0 kv_head 1"));
    ck_assert_ptr_nonnull(strstr(kvs_error_message(), fx_trace_hash[0]));
    ck_assert_int_ne(stat(merged, &st), 0);

    /* An input of an older schema version is rejected before any write. */
    snprintf(old, sizeof old, "%s/old.db", dir);
    kvs_db_t *db;
    ck_assert_int_eq(kvs_db_open_at_version(old, 1, &db), KVS_OK);
    kvs_db_close(db);
    inputs[1] = old;
    ck_assert_int_eq(kvs_db_merge(merged, inputs, 2), KVS_ERR_DB_SCHEMA);
    ck_assert_ptr_nonnull(strstr(kvs_error_message(), "merge input 2"));
    ck_assert_int_ne(stat(merged, &st), 0);
    free(dir);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("db");
    TCase *tc = tcase_create("core");

    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, open_sets_version_and_wal);
    tcase_add_test(tc, kernel_summary_equals_hand_means);
    tcase_add_test(tc, pareto_returns_non_dominated);
    tcase_add_test(tc, position_and_layer_views);
    tcase_add_test(tc, timing_view_keeps_latest);
    tcase_add_test(tc, unit_done_and_resume);
    tcase_add_test(tc, commit_is_atomic);
    tcase_add_test(tc, two_processes_write_one_file);
    tcase_add_test(tc, newer_version_rejected);
    tcase_add_test(tc, version_1_file_migrates);
    tcase_add_test(tc, bad_paths_explained);
    tcase_add_test(tc, merge_equals_single_database);
    tcase_add_test(tc, merge_rejects_conflicting_unit);
    suite_add_tcase(s, tc);
    return kvs_test_run(s);
}
