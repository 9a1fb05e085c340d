/*
** schema.c: the results database schema, its migrations and its views.
**
** Every schema version N has one migration that brings a file from N-1 to
** N; opening a file at version V < current runs migrations V+1 .. current
** in one transaction, so a file is either fully migrated or untouched.
** Views hold no data, so they are dropped and recreated for the target
** version after every migration. Published migrations never change: a new
** schema appends a migration and bumps KVS_DB_VERSION. docs/schema.md
** documents the current tables and views.
*/
#include "db_internal.h"

#include <stdio.h>
#include <string.h>

#define KVS_DB_VERSION 3

int kvs_db_schema_version(void)
{
    return KVS_DB_VERSION;
}

const kvs_db_metric_field_t kvs_db_metric_fields[] = {
    {"logit_mae", offsetof(kvs_metrics_t, logit_mae), "logit units"},
    {"logit_rmse", offsetof(kvs_metrics_t, logit_rmse), "logit units"},
    {"logit_max", offsetof(kvs_metrics_t, logit_max), "logit units"},
    {"logit_rel_rmse", offsetof(kvs_metrics_t, logit_rel_rmse), "ratio"},
    {"kl", offsetof(kvs_metrics_t, kl), "nats"},
    {"tv", offsetof(kvs_metrics_t, tv), "probability"},
    {"mass_kept", offsetof(kvs_metrics_t, mass_kept), "probability"},
    {"top1", offsetof(kvs_metrics_t, top1), "fraction"},
    {"top8", offsetof(kvs_metrics_t, top8), "fraction"},
    {"top32", offsetof(kvs_metrics_t, top32), "fraction"},
    {"recall8", offsetof(kvs_metrics_t, recall8), "fraction"},
    {"out_rel_l2", offsetof(kvs_metrics_t, out_rel_l2), "ratio"},
    {"out_cos", offsetof(kvs_metrics_t, out_cos), "cosine"},
    {"out_rel_l2_p50", offsetof(kvs_metrics_t, out_rel_l2_p50), "ratio"},
    {"out_rel_l2_p95", offsetof(kvs_metrics_t, out_rel_l2_p95), "ratio"},
    {"out_rel_l2_max", offsetof(kvs_metrics_t, out_rel_l2_max), "ratio"},
};
const size_t kvs_db_n_metric_fields = sizeof kvs_db_metric_fields / sizeof kvs_db_metric_fields[0];

/* ---- migrations ------------------------------------------------------- */

/* Version 1: traces, runs, units and their per-head metrics and
** per-position buckets. */
static const char migration_1[] =
    "CREATE TABLE traces ("
    "  id INTEGER PRIMARY KEY,"
    "  content_hash TEXT NOT NULL UNIQUE,"
    "  path TEXT NOT NULL,"
    "  model TEXT NOT NULL,"
    "  n_layers INTEGER NOT NULL,"
    "  n_heads INTEGER NOT NULL,"
    "  n_kv_heads INTEGER NOT NULL,"
    "  head_dim INTEGER NOT NULL,"
    "  n_prompt INTEGER NOT NULL,"
    "  n_generated INTEGER NOT NULL,"
    "  synthetic INTEGER NOT NULL CHECK (synthetic IN (0, 1)),"
    "  file_bytes INTEGER NOT NULL,"
    "  metadata_json TEXT NOT NULL,"
    "  added_at TEXT NOT NULL);"
    "CREATE TABLE runs ("
    "  id INTEGER PRIMARY KEY,"
    "  trace_id INTEGER NOT NULL REFERENCES traces(id),"
    "  kernel_spec TEXT NOT NULL,"
    "  params_json TEXT NOT NULL,"
    "  family TEXT NOT NULL,"
    "  compressed_exec INTEGER NOT NULL CHECK (compressed_exec IN (0, 1)),"
    "  eval_mode TEXT NOT NULL,"
    "  code_version TEXT NOT NULL,"
    "  host TEXT NOT NULL,"
    "  threads INTEGER NOT NULL,"
    "  seed INTEGER NOT NULL,"
    "  started_at TEXT NOT NULL,"
    "  finished_at TEXT,"
    "  status TEXT NOT NULL,"
    "  cost_context INTEGER NOT NULL,"
    "  bytes_per_token REAL NOT NULL,"
    "  stored_bytes INTEGER NOT NULL,"
    "  read_bytes_per_step INTEGER NOT NULL);"
    "CREATE INDEX runs_by_key ON runs(trace_id, kernel_spec, params_json, eval_mode);"
    "CREATE TABLE units ("
    "  run_id INTEGER NOT NULL REFERENCES runs(id),"
    "  layer INTEGER NOT NULL,"
    "  kv_head INTEGER NOT NULL,"
    "  attend_seconds REAL,"
    "  attend_calls INTEGER NOT NULL,"
    "  committed_at TEXT NOT NULL,"
    "  PRIMARY KEY (run_id, layer, kv_head)) WITHOUT ROWID;"
    "CREATE TABLE metrics ("
    "  run_id INTEGER NOT NULL,"
    "  layer INTEGER NOT NULL,"
    "  head INTEGER NOT NULL,"
    "  kv_head INTEGER NOT NULL,"
    "  n_steps INTEGER NOT NULL,"
    "  logit_mae REAL, logit_rmse REAL, logit_max REAL, logit_rel_rmse REAL,"
    "  kl REAL, tv REAL, mass_kept REAL,"
    "  top1 REAL, top8 REAL, top32 REAL, recall8 REAL,"
    "  out_rel_l2 REAL, out_cos REAL,"
    "  out_rel_l2_p50 REAL, out_rel_l2_p95 REAL, out_rel_l2_max REAL,"
    "  PRIMARY KEY (run_id, layer, head),"
    "  FOREIGN KEY (run_id, layer, kv_head) REFERENCES units(run_id, layer, kv_head)"
    ") WITHOUT ROWID;"
    "CREATE TABLE buckets ("
    "  run_id INTEGER NOT NULL,"
    "  layer INTEGER NOT NULL,"
    "  head INTEGER NOT NULL,"
    "  bucket INTEGER NOT NULL,"
    "  pos_start INTEGER NOT NULL,"
    "  pos_end INTEGER NOT NULL,"
    "  n_steps INTEGER NOT NULL,"
    "  out_rel_l2 REAL,"
    "  logit_rmse REAL,"
    "  PRIMARY KEY (run_id, layer, head, bucket),"
    "  FOREIGN KEY (run_id, layer, head) REFERENCES metrics(run_id, layer, head)"
    ") WITHOUT ROWID;";

/* Version 2: kvsim bench timings. */
static const char migration_2[] =
    "CREATE TABLE timings ("
    "  id INTEGER PRIMARY KEY,"
    "  trace_id INTEGER NOT NULL REFERENCES traces(id),"
    "  kernel_spec TEXT NOT NULL,"
    "  scope TEXT NOT NULL CHECK (scope IN ('head', 'model')),"
    "  context INTEGER NOT NULL,"
    "  append_seconds REAL,"
    "  attend_seconds REAL,"
    "  read_bytes INTEGER NOT NULL,"
    "  host TEXT NOT NULL,"
    "  code_version TEXT NOT NULL,"
    "  measured_at TEXT NOT NULL);"
    "CREATE INDEX timings_by_key ON timings(trace_id, kernel_spec, scope, host, context);";

/* Version 3: the bytes per token a unit's kernel instances held during the
** scored steps, measured from their own state (NULL in older units). */
static const char migration_3[] =
    "ALTER TABLE units ADD COLUMN stored_bytes_per_token REAL;";

/* migrations[v - 1] brings a file from version v - 1 to v. */
static const char *const migrations[KVS_DB_VERSION] = {migration_1, migration_2, migration_3};

/* ---- views ------------------------------------------------------------ */

typedef struct view_def {
    const char *name;
    int since;   /* first schema version whose tables the view reads */
    const char *sql;
} view_def_t;

/* Means over metrics rows weight every (layer, query head) equally. */
static const view_def_t views[] = {
    {"kernel_summary", 1,
     "CREATE VIEW kernel_summary AS "
     "SELECT r.id AS run_id, t.id AS trace_id, t.content_hash AS trace_hash, t.path AS trace_path,"
     "  t.model AS model, t.synthetic AS synthetic,"
     "  r.kernel_spec AS kernel, r.family AS family, r.compressed_exec AS compressed_exec,"
     "  r.eval_mode AS eval_mode, r.status AS status,"
     "  r.bytes_per_token AS bytes_per_token, r.stored_bytes AS stored_bytes,"
     "  r.read_bytes_per_step AS read_bytes_per_step, r.cost_context AS cost_context,"
     "  m.n_head_rows AS n_head_rows, m.n_steps AS n_steps,"
     "  m.logit_mae AS logit_mae, m.logit_rmse AS logit_rmse, m.logit_rel_rmse AS logit_rel_rmse,"
     "  m.kl AS kl, m.tv AS tv, m.mass_kept AS mass_kept,"
     "  m.top1 AS top1_agreement, m.top8 AS top8_agreement, m.top32 AS top32_agreement,"
     "  m.recall8 AS recall8, m.output_rel_error AS output_rel_error, m.output_cos AS output_cos,"
     "  m.output_rel_error_p95 AS output_rel_error_p95, m.output_rel_error_max AS output_rel_error_max,"
     "  u.n_units AS n_units, u.mean_attend_seconds AS mean_attend_seconds "
     "FROM runs r JOIN traces t ON t.id = r.trace_id "
     "LEFT JOIN (SELECT run_id, COUNT(*) AS n_head_rows, SUM(n_steps) AS n_steps,"
     "    AVG(logit_mae) AS logit_mae, AVG(logit_rmse) AS logit_rmse,"
     "    AVG(logit_rel_rmse) AS logit_rel_rmse, AVG(kl) AS kl, AVG(tv) AS tv,"
     "    AVG(mass_kept) AS mass_kept, AVG(top1) AS top1, AVG(top8) AS top8, AVG(top32) AS top32,"
     "    AVG(recall8) AS recall8, AVG(out_rel_l2) AS output_rel_error, AVG(out_cos) AS output_cos,"
     "    AVG(out_rel_l2_p95) AS output_rel_error_p95, MAX(out_rel_l2_max) AS output_rel_error_max"
     "  FROM metrics GROUP BY run_id) m ON m.run_id = r.id "
     "LEFT JOIN (SELECT run_id, COUNT(*) AS n_units,"
     "    SUM(attend_seconds * attend_calls) / NULLIF(SUM(attend_calls), 0) AS mean_attend_seconds"
     "  FROM units GROUP BY run_id) u ON u.run_id = r.id"},

    /* Measured storage of each run: the mean over its units of the bytes per
    ** token its instances held during the scored steps, scaled to every
    ** layer and KV head of the trace. Unlike runs.bytes_per_token it counts
    ** full-precision windows as they were when the error was measured. */
    {"measured_storage", 3,
     "CREATE VIEW measured_storage AS "
     "SELECT r.id AS run_id, r.trace_id AS trace_id, r.kernel_spec AS kernel,"
     "  r.bytes_per_token AS bytes_per_token,"
     "  AVG(u.stored_bytes_per_token) * t.n_layers * t.n_kv_heads AS measured_bytes_per_token,"
     "  COUNT(u.stored_bytes_per_token) AS n_units "
     "FROM runs r JOIN traces t ON t.id = r.trace_id JOIN units u ON u.run_id = r.id "
     "GROUP BY r.id"},

    /* A run is on the front of its trace when no other finished run of that
    ** trace is at least as good on both axes and better on one. */
    {"pareto", 1,
     "CREATE VIEW pareto AS "
     "WITH k AS MATERIALIZED (SELECT * FROM kernel_summary"
     "  WHERE status = 'done' AND output_rel_error IS NOT NULL) "
     "SELECT a.* FROM k a WHERE NOT EXISTS (SELECT 1 FROM k b"
     "  WHERE b.trace_id = a.trace_id AND b.bytes_per_token <= a.bytes_per_token"
     "    AND b.output_rel_error <= a.output_rel_error"
     "    AND (b.bytes_per_token < a.bytes_per_token OR b.output_rel_error < a.output_rel_error))"},

    {"layer_error", 1,
     "CREATE VIEW layer_error AS "
     "SELECT m.run_id AS run_id, r.trace_id AS trace_id, t.content_hash AS trace_hash,"
     "  r.kernel_spec AS kernel, r.family AS family, m.layer AS layer, m.head AS head,"
     "  m.kv_head AS kv_head, m.n_steps AS n_steps, m.out_rel_l2 AS output_rel_error,"
     "  m.out_rel_l2_p95 AS output_rel_error_p95, m.logit_rmse AS logit_rmse, m.kl AS kl,"
     "  m.top1 AS top1_agreement, m.top8 AS top8_agreement "
     "FROM metrics m JOIN runs r ON r.id = m.run_id JOIN traces t ON t.id = r.trace_id"},

    /* Buckets of all heads of a run, weighted by their evaluation steps. */
    {"position_error", 1,
     "CREATE VIEW position_error AS "
     "SELECT b.run_id AS run_id, r.trace_id AS trace_id, t.content_hash AS trace_hash,"
     "  r.kernel_spec AS kernel, r.family AS family, b.bucket AS bucket,"
     "  MIN(b.pos_start) AS pos_start, MAX(b.pos_end) AS pos_end, SUM(b.n_steps) AS n_steps,"
     "  SUM(b.out_rel_l2 * b.n_steps) / SUM(b.n_steps) AS output_rel_error,"
     "  SUM(b.logit_rmse * b.n_steps) / SUM(b.n_steps) AS logit_rmse "
     "FROM buckets b JOIN runs r ON r.id = b.run_id JOIN traces t ON t.id = r.trace_id "
     "WHERE b.n_steps > 0 GROUP BY b.run_id, b.bucket"},

    /* The latest measurement per (trace, kernel, scope, host, context). */
    {"timing", 2,
     "CREATE VIEW timing AS "
     "SELECT tm.trace_id AS trace_id, t.content_hash AS trace_hash, t.model AS model,"
     "  t.synthetic AS synthetic, tm.kernel_spec AS kernel,"
     "  (SELECT family FROM runs r WHERE r.kernel_spec = tm.kernel_spec LIMIT 1) AS family,"
     "  (SELECT compressed_exec FROM runs r WHERE r.kernel_spec = tm.kernel_spec LIMIT 1)"
     "    AS compressed_exec,"
     "  tm.scope AS scope, tm.host AS host, tm.context AS context,"
     "  tm.append_seconds AS append_seconds, tm.attend_seconds AS attend_seconds,"
     "  tm.read_bytes AS read_bytes, tm.read_bytes / NULLIF(tm.attend_seconds, 0) AS read_bytes_per_second,"
     "  tm.code_version AS code_version, tm.measured_at AS measured_at "
     "FROM timings tm JOIN traces t ON t.id = tm.trace_id "
     "WHERE tm.id = (SELECT MAX(x.id) FROM timings x WHERE x.trace_id = tm.trace_id"
     "  AND x.kernel_spec = tm.kernel_spec AND x.scope = tm.scope AND x.host = tm.host"
     "  AND x.context = tm.context)"},
};

static kvs_status_e recreate_views(sqlite3 *conn, const char *path, int version)
{
    char sql[128];

    /* Views may read each other, so drop all before creating any. */
    for (size_t i = sizeof views / sizeof views[0]; i-- > 0;) {
        snprintf(sql, sizeof sql, "DROP VIEW IF EXISTS %s", views[i].name);
        KVS_FORWARD(kvs_db_exec(conn, path, sql));
    }
    for (size_t i = 0; i < sizeof views / sizeof views[0]; i++) {
        if (views[i].since <= version)
            KVS_FORWARD(kvs_db_exec(conn, path, views[i].sql));
    }
    return KVS_OK;
}

kvs_status_e kvs_db_migrate(sqlite3 *conn, const char *path, int from, int to)
{
    char sql[96];

    KVS_RETURN_IF(from < 0 || to > KVS_DB_VERSION || from > to, KVS_ERR_INTERNAL,
                  "invalid schema migration of %s from version %d to %d", path, from, to);
    for (int v = from + 1; v <= to; v++) {
        kvs_status_e rc = kvs_db_exec(conn, path, migrations[v - 1]);
        if (rc != KVS_OK) {
            kvs_error_prefix("migrating %s to schema version %d", path, v);
            return rc;
        }
    }
    KVS_FORWARD(recreate_views(conn, path, to));
    snprintf(sql, sizeof sql, "PRAGMA application_id = %d; PRAGMA user_version = %d",
             KVS_DB_APPLICATION_ID, to);
    return kvs_db_exec(conn, path, sql);
}
