/*
** db.c: opening results databases and the writes of replay and bench.
**
** Concurrency: every multi-statement write is one BEGIN IMMEDIATE
** transaction. It takes the write lock up front, so two writers never
** deadlock while upgrading read locks. SQLite's busy handler waits up to
** KVS_DB_BUSY_TIMEOUT_MS for another process, and exec_retry() also retries
** statements that bypass the handler. WAL mode lets readers run beside a
** writer. Within one process a mutex serializes calls on one handle,
** because the prepared statements are shared.
*/
#include "db_internal.h"

#include <errno.h>
#include <libgen.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

kvs_status_e kvs_db_sqlite_fail(sqlite3 *conn, kvs_status_e code, const char *path, const char *what)
{
    const char *msg = conn ? sqlite3_errmsg(conn) : "out of memory";
    int err = conn ? sqlite3_errcode(conn) : SQLITE_NOMEM;

    if (err == SQLITE_NOTADB)
        return kvs_fail(KVS_ERR_DB, "%s is not an SQLite database (%s); give the path of a kvsim results database",
                        path, msg);
    if (err == SQLITE_BUSY)
        return kvs_fail(KVS_ERR_DB, "%s: %s failed: database still locked by another writer after %d s (%s)",
                        path, what, KVS_DB_BUSY_TIMEOUT_MS / 1000, msg);
    if (err == SQLITE_FULL)
        return kvs_fail(KVS_ERR_IO, "%s: %s failed: disk full (%s); free space and rerun with --resume", path,
                        what, msg);
    return kvs_fail(code, "%s: %s failed: %s", path, what, msg);
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Runs sql, retrying while another connection holds a lock that SQLite's
** busy handler does not wait for. */
static int exec_retry(sqlite3 *conn, const char *sql)
{
    int rc;

    for (long waited = 0;; waited += 20) {
        rc = sqlite3_exec(conn, sql, NULL, NULL, NULL);
        if ((rc != SQLITE_BUSY && rc != SQLITE_LOCKED) || waited >= KVS_DB_BUSY_TIMEOUT_MS)
            return rc;
        sleep_ms(20);
    }
}

kvs_status_e kvs_db_exec(sqlite3 *conn, const char *path, const char *sql)
{
    if (exec_retry(conn, sql) != SQLITE_OK) {
        char what[96];
        snprintf(what, sizeof what, "statement '%.60s'", sql);
        return kvs_db_sqlite_fail(conn, KVS_ERR_DB, path, what);
    }
    return KVS_OK;
}

/* Runs a query returning one integer (a PRAGMA, a count). */
static kvs_status_e query_int(sqlite3 *conn, const char *path, const char *sql, int64_t *out)
{
    sqlite3_stmt *st;
    int rc;

    if (sqlite3_prepare_v2(conn, sql, -1, &st, NULL) != SQLITE_OK)
        return kvs_db_sqlite_fail(conn, KVS_ERR_DB, path, "reading the schema");
    rc = sqlite3_step(st);
    *out = rc == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
    sqlite3_finalize(st);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE)
        return kvs_db_sqlite_fail(conn, KVS_ERR_DB, path, "reading the schema");
    return KVS_OK;
}

/* Checks before SQLite touches the file, so a bad path gets a message that
** names the folder instead of SQLite's "unable to open database file". */
static kvs_status_e check_path(const char *path, int readonly)
{
    struct stat st;
    char *copy;
    const char *dir;
    kvs_status_e rc = KVS_OK;

    KVS_RETURN_IF(!path || !*path, KVS_ERR_USAGE, "empty database path; give a file name such as results.db");
    if (stat(path, &st) == 0) {
        KVS_RETURN_IF(S_ISDIR(st.st_mode), KVS_ERR_INVALID,
                      "database path %s is a folder; give a file name inside it, such as %s/results.db", path,
                      path);
        KVS_RETURN_IF(!readonly && access(path, W_OK) != 0, KVS_ERR_IO,
                      "database %s is not writable (%s); fix its permissions or copy it", path, strerror(errno));
        return KVS_OK;
    }
    KVS_RETURN_IF(readonly, KVS_ERR_NOT_FOUND, "database %s not found; check the path or run kvsim replay first",
                  path);

    copy = strdup(path);
    if (!copy)
        return kvs_fail(KVS_ERR_NOMEM, "out of memory opening %s", path);
    dir = dirname(copy);
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode))
        rc = kvs_fail(KVS_ERR_NOT_FOUND, "cannot create database %s: folder %s does not exist; create it first", path,
                      dir);
    else if (access(dir, W_OK | X_OK) != 0)
        rc = kvs_fail(KVS_ERR_IO, "cannot create database %s: folder %s is not writable (%s)", path, dir,
                      strerror(errno));
    free(copy);
    return rc;
}

static kvs_status_e prepare(kvs_db_t *db, const char *sql, sqlite3_stmt **st)
{
    if (sqlite3_prepare_v3(db->conn, sql, -1, SQLITE_PREPARE_PERSISTENT, st, NULL) != SQLITE_OK)
        return kvs_db_sqlite_fail(db->conn, KVS_ERR_DB, db->path, "preparing a statement");
    return KVS_OK;
}

static kvs_status_e prepare_writes(kvs_db_t *db)
{
    char sql[1024];
    size_t n;

    KVS_FORWARD(prepare(db, "SELECT 1 FROM units WHERE run_id = ? AND layer = ? AND kv_head = ?", &db->unit_done));
    /* A file kept at an earlier version (tests build them) has no
    ** stored_bytes_per_token column; the sixth parameter is then unused. */
    KVS_FORWARD(prepare(db,
                        db->version >= 3
                            ? "INSERT INTO units (run_id, layer, kv_head, attend_seconds, attend_calls, "
                              "stored_bytes_per_token, committed_at) "
                              "VALUES (?, ?, ?, ?, ?, ?, " KVS_DB_NOW ")"
                            : "INSERT INTO units (run_id, layer, kv_head, attend_seconds, attend_calls, "
                              "committed_at) VALUES (?, ?, ?, ?, ?, " KVS_DB_NOW ")",
                        &db->insert_unit));

    n = (size_t)snprintf(sql, sizeof sql, "INSERT INTO metrics (run_id, layer, head, kv_head, n_steps");
    for (size_t i = 0; i < kvs_db_n_metric_fields; i++)
        n += (size_t)snprintf(sql + n, sizeof sql - n, ", %s", kvs_db_metric_fields[i].column);
    n += (size_t)snprintf(sql + n, sizeof sql - n, ") VALUES (?, ?, ?, ?, ?");
    for (size_t i = 0; i < kvs_db_n_metric_fields; i++)
        n += (size_t)snprintf(sql + n, sizeof sql - n, ", ?");
    snprintf(sql + n, sizeof sql - n, ")");
    KVS_FORWARD(prepare(db, sql, &db->insert_metrics));

    return prepare(db,
                   "INSERT INTO buckets (run_id, layer, head, bucket, pos_start, pos_end, n_steps, out_rel_l2, "
                   "logit_rmse) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   &db->insert_bucket);
}

/* Identifies the file and brings its schema to `target` (read-write) or
** checks that it is exactly the current version (read-only). */
/* Reads the schema version, application id and number of schema objects in
** one read transaction. Another process may be migrating the file, and
** separate reads could see the version from before its commit and the
** tables from after it. */
static kvs_status_e read_identity(kvs_db_t *db, int64_t *version, int64_t *app_id, int64_t *n_objects)
{
    kvs_status_e rc;

    KVS_FORWARD(kvs_db_exec(db->conn, db->path, "BEGIN"));
    rc = query_int(db->conn, db->path, "PRAGMA user_version", version);
    if (rc == KVS_OK)
        rc = query_int(db->conn, db->path, "PRAGMA application_id", app_id);
    if (rc == KVS_OK)
        rc = query_int(db->conn, db->path, "SELECT COUNT(*) FROM sqlite_master", n_objects);
    if (rc == KVS_OK)
        return kvs_db_exec(db->conn, db->path, "COMMIT");
    sqlite3_exec(db->conn, "ROLLBACK", NULL, NULL, NULL);
    return rc;
}

static kvs_status_e open_schema(kvs_db_t *db, int target)
{
    int64_t version, app_id, n_objects;

    KVS_FORWARD(read_identity(db, &version, &app_id, &n_objects));
    KVS_RETURN_IF(version > kvs_db_schema_version(), KVS_ERR_DB_SCHEMA,
                  "database %s has schema version %lld, newer than the version %d this kvsim reads; "
                  "use a newer kvsim or another file",
                  db->path, (long long)version, kvs_db_schema_version());
    if (version > 0) {
        KVS_RETURN_IF(app_id != KVS_DB_APPLICATION_ID, KVS_ERR_DB_SCHEMA,
                      "%s is an SQLite database but not a kvsim results database (application_id %lld); "
                      "give another file",
                      db->path, (long long)app_id);
    } else {
        KVS_RETURN_IF(n_objects > 0 || app_id != 0, KVS_ERR_DB_SCHEMA,
                      "%s is an SQLite database but not a kvsim results database (it has %lld schema objects "
                      "and no kvsim schema version); give another file",
                      db->path, (long long)n_objects);
    }

    if (db->readonly) {
        /* A 0-byte file (from touch or an interrupted copy) reads as version
        ** 0 with no tables, and migrating it would not give it results. */
        KVS_RETURN_IF(version == 0 && n_objects == 0, KVS_ERR_DB_SCHEMA,
                      "%s is empty (no tables), not a kvsim results database; give the database written by "
                      "kvsim replay, or create one with 'kvsim db init %s'",
                      db->path, db->path);
        KVS_RETURN_IF(version != kvs_db_schema_version(), KVS_ERR_DB_SCHEMA,
                      "database %s has schema version %lld but this kvsim reads version %d; upgrade it "
                      "first with 'kvsim db migrate %s'",
                      db->path, (long long)version, kvs_db_schema_version(), db->path);
        db->version = (int)version;
        return KVS_OK;
    }

    /* WAL lets readers (reports, resume checks) run beside a writer. */
    KVS_FORWARD(kvs_db_exec(db->conn, db->path, "PRAGMA journal_mode = WAL"));
    KVS_FORWARD(kvs_db_exec(db->conn, db->path, "PRAGMA synchronous = NORMAL"));

    if (version < target) {
        kvs_status_e rc;

        /* Another process may have migrated the file since the check
        ** above, so read the version again under the write lock. */
        KVS_FORWARD(kvs_db_exec(db->conn, db->path, "BEGIN IMMEDIATE"));
        rc = query_int(db->conn, db->path, "PRAGMA user_version", &version);
        if (rc == KVS_OK && version < target) {
            rc = kvs_db_migrate(db->conn, db->path, (int)version, target);
            if (rc == KVS_OK)
                KVS_LOG(KVS_LOG_DEBUG, "migrated %s from schema version %lld to %d", db->path, (long long)version,
                        target);
            version = target;
        }
        if (rc == KVS_OK)
            rc = kvs_db_exec(db->conn, db->path, "COMMIT");
        if (rc != KVS_OK) {
            sqlite3_exec(db->conn, "ROLLBACK", NULL, NULL, NULL);
            return rc;
        }
    }
    db->version = (int)version;
    return prepare_writes(db);
}

static kvs_status_e open_db(const char *path, int readonly, int target, kvs_db_t **out)
{
    kvs_db_t *db;
    kvs_status_e rc;
    int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE;

    *out = NULL;
    KVS_FORWARD(check_path(path, readonly));

    /* A read-only SQLite connection cannot remove the -wal and -shm files
    ** it creates, so a writable file is opened read-write and locked to
    ** queries with PRAGMA query_only instead. */
    if (readonly)
        flags = access(path, W_OK) == 0 ? SQLITE_OPEN_READWRITE : SQLITE_OPEN_READONLY;
    db = calloc(1, sizeof *db);
    if (!db || !(db->path = strdup(path))) {
        free(db);
        return kvs_fail(KVS_ERR_NOMEM, "out of memory opening %s", path);
    }
    db->readonly = readonly;
    pthread_mutex_init(&db->lock, NULL);

    if (sqlite3_open_v2(path, &db->conn, flags, NULL) != SQLITE_OK) {
        rc = kvs_db_sqlite_fail(db->conn, KVS_ERR_DB, path, "opening the database");
        kvs_db_close(db);
        return rc;
    }
    sqlite3_busy_timeout(db->conn, KVS_DB_BUSY_TIMEOUT_MS);
    sqlite3_extended_result_codes(db->conn, 0);
    rc = kvs_db_exec(db->conn, path, readonly ? "PRAGMA query_only = ON" : "PRAGMA foreign_keys = ON");
    if (rc == KVS_OK)
        rc = open_schema(db, target);
    if (rc != KVS_OK) {
        kvs_db_close(db);
        return rc;
    }
    *out = db;
    return KVS_OK;
}

kvs_status_e kvs_db_open(const char *path, kvs_db_t **out)
{
    return open_db(path, 0, kvs_db_schema_version(), out);
}

kvs_status_e kvs_db_open_readonly(const char *path, kvs_db_t **out)
{
    return open_db(path, 1, kvs_db_schema_version(), out);
}

kvs_status_e kvs_db_open_at_version(const char *path, int version, kvs_db_t **out)
{
    *out = NULL;
    KVS_RETURN_IF(version < 1 || version > kvs_db_schema_version(), KVS_ERR_INVALID,
                  "schema version %d out of range; this kvsim writes versions 1 to %d", version,
                  kvs_db_schema_version());
    return open_db(path, 0, version, out);
}

void kvs_db_close(kvs_db_t *db)
{
    if (!db)
        return;
    sqlite3_finalize(db->unit_done);
    sqlite3_finalize(db->insert_unit);
    sqlite3_finalize(db->insert_metrics);
    sqlite3_finalize(db->insert_bucket);
    sqlite3_close(db->conn);
    pthread_mutex_destroy(&db->lock);
    free(db->path);
    free(db);
}

int kvs_db_file_version(kvs_db_t *db)
{
    return db->version;
}

struct sqlite3 *kvs_db_sqlite(kvs_db_t *db)
{
    return db->conn;
}

/* ---- writes ----------------------------------------------------------- */

static const char *host_name(void)
{
    static _Thread_local char name[256];

    if (gethostname(name, sizeof name - 1) != 0 || !name[0])
        snprintf(name, sizeof name, "unknown");
    name[sizeof name - 1] = '\0';
    return name;
}

static kvs_status_e check_writable(const kvs_db_t *db, const char *what)
{
    KVS_RETURN_IF(db->readonly, KVS_ERR_INTERNAL, "%s: %s on a database opened read-only", db->path, what);
    return KVS_OK;
}

/* Steps a statement that returns no rows and resets it. The caller holds
** db->lock. */
static kvs_status_e step_done(kvs_db_t *db, sqlite3_stmt *st, const char *what)
{
    int rc = sqlite3_step(st);

    if (rc != SQLITE_DONE && rc != SQLITE_ROW) {
        kvs_status_e code = rc == SQLITE_CONSTRAINT ? KVS_ERR_INVALID : KVS_ERR_DB;
        sqlite3_reset(st);
        return kvs_db_sqlite_fail(db->conn, code, db->path, what);
    }
    sqlite3_reset(st);
    return KVS_OK;
}

kvs_status_e kvs_db_put_trace(kvs_db_t *db, const kvs_db_trace_info_t *info, int64_t *trace_id)
{
    sqlite3_stmt *st = NULL;
    kvs_status_e rc;
    int step;

    *trace_id = 0;
    KVS_FORWARD(check_writable(db, "adding a trace"));
    KVS_RETURN_IF(!info->content_hash || !*info->content_hash || !info->path, KVS_ERR_INVALID,
                  "trace without a content hash or path cannot be stored in %s", db->path);

    pthread_mutex_lock(&db->lock);
    if (sqlite3_prepare_v2(db->conn,
                           "INSERT INTO traces (content_hash, path, model, n_layers, n_heads, n_kv_heads, head_dim, "
                           "n_prompt, n_generated, synthetic, file_bytes, metadata_json, added_at) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, " KVS_DB_NOW ") "
                           "ON CONFLICT (content_hash) DO NOTHING",
                           -1, &st, NULL) != SQLITE_OK) {
        rc = kvs_db_sqlite_fail(db->conn, KVS_ERR_DB, db->path, "adding a trace");
        goto done;
    }
    sqlite3_bind_text(st, 1, info->content_hash, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, info->path, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, info->model ? info->model : "", -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 4, info->n_layers);
    sqlite3_bind_int64(st, 5, info->n_heads);
    sqlite3_bind_int64(st, 6, info->n_kv_heads);
    sqlite3_bind_int64(st, 7, info->head_dim);
    sqlite3_bind_int64(st, 8, info->n_prompt);
    sqlite3_bind_int64(st, 9, info->n_generated);
    sqlite3_bind_int(st, 10, info->synthetic ? 1 : 0);
    sqlite3_bind_int64(st, 11, (sqlite3_int64)info->file_bytes);
    sqlite3_bind_text(st, 12, info->metadata_json ? info->metadata_json : "{}", -1, SQLITE_STATIC);
    rc = step_done(db, st, "adding a trace");
    sqlite3_finalize(st);
    st = NULL;
    if (rc != KVS_OK)
        goto done;

    /* The content hash identifies the trace; a copy at another path keeps
    ** the first path stored. */
    if (sqlite3_prepare_v2(db->conn, "SELECT id FROM traces WHERE content_hash = ?", -1, &st, NULL) != SQLITE_OK) {
        rc = kvs_db_sqlite_fail(db->conn, KVS_ERR_DB, db->path, "finding a trace");
        goto done;
    }
    sqlite3_bind_text(st, 1, info->content_hash, -1, SQLITE_STATIC);
    step = sqlite3_step(st);
    if (step == SQLITE_ROW)
        *trace_id = sqlite3_column_int64(st, 0);
    else
        rc = kvs_db_sqlite_fail(db->conn, KVS_ERR_DB, db->path, "finding a trace");
done:
    sqlite3_finalize(st);
    pthread_mutex_unlock(&db->lock);
    return rc;
}

static kvs_status_e find_run(kvs_db_t *db, const kvs_db_run_info_t *info, int64_t *run_id)
{
    sqlite3_stmt *st;
    int step;

    *run_id = 0;
    if (sqlite3_prepare_v2(db->conn,
                           "SELECT id FROM runs WHERE trace_id = ? AND kernel_spec = ? AND params_json = ? "
                           "AND eval_mode = ? ORDER BY id DESC LIMIT 1",
                           -1, &st, NULL) != SQLITE_OK)
        return kvs_db_sqlite_fail(db->conn, KVS_ERR_DB, db->path, "finding a run to resume");
    sqlite3_bind_int64(st, 1, info->trace_id);
    sqlite3_bind_text(st, 2, info->kernel_spec, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, info->params_json, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, info->eval_mode, -1, SQLITE_STATIC);
    step = sqlite3_step(st);
    if (step == SQLITE_ROW)
        *run_id = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    if (step != SQLITE_ROW && step != SQLITE_DONE)
        return kvs_db_sqlite_fail(db->conn, KVS_ERR_DB, db->path, "finding a run to resume");
    return KVS_OK;
}

static kvs_status_e insert_run(kvs_db_t *db, const kvs_db_run_info_t *info, int64_t *run_id)
{
    sqlite3_stmt *st;
    kvs_status_e rc;

    if (sqlite3_prepare_v2(db->conn,
                           "INSERT INTO runs (trace_id, kernel_spec, params_json, family, compressed_exec, "
                           "eval_mode, code_version, host, threads, seed, started_at, status, cost_context, "
                           "bytes_per_token, stored_bytes, read_bytes_per_step) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, " KVS_DB_NOW ", 'running', ?, ?, ?, ?)",
                           -1, &st, NULL) != SQLITE_OK)
        return kvs_db_sqlite_fail(db->conn, KVS_ERR_DB, db->path, "adding a run");
    sqlite3_bind_int64(st, 1, info->trace_id);
    sqlite3_bind_text(st, 2, info->kernel_spec, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, info->params_json, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, info->family, -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 5, info->compressed_exec ? 1 : 0);
    sqlite3_bind_text(st, 6, info->eval_mode, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 7, kvs_version(), -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 8, host_name(), -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 9, info->threads);
    /* SQLite integers are signed: seeds above 2^63 - 1 read back negative
    ** (the same 64 bits). */
    sqlite3_bind_int64(st, 10, (sqlite3_int64)info->seed);
    sqlite3_bind_int64(st, 11, (sqlite3_int64)info->cost_context);
    sqlite3_bind_double(st, 12, info->bytes_per_token);
    sqlite3_bind_int64(st, 13, (sqlite3_int64)info->stored_bytes);
    sqlite3_bind_int64(st, 14, (sqlite3_int64)info->read_bytes_per_step);
    rc = step_done(db, st, "adding a run");
    sqlite3_finalize(st);
    if (rc != KVS_OK) {
        kvs_error_prefix("run of '%s' on trace id %lld", info->kernel_spec, (long long)info->trace_id);
        return rc;
    }
    *run_id = sqlite3_last_insert_rowid(db->conn);
    return KVS_OK;
}

kvs_status_e kvs_db_begin_run(kvs_db_t *db, const kvs_db_run_info_t *info, int resume, int64_t *run_id)
{
    kvs_status_e rc;

    *run_id = 0;
    KVS_FORWARD(check_writable(db, "starting a run"));
    KVS_RETURN_IF(!info->kernel_spec || !*info->kernel_spec || !info->params_json || !info->family ||
                      !info->eval_mode,
                  KVS_ERR_INVALID, "run without a kernel spec, parameters, family or evaluation mode cannot be "
                                   "stored in %s",
                  db->path);
    KVS_RETURN_IF(!isfinite(info->bytes_per_token) || info->bytes_per_token < 0, KVS_ERR_INVALID,
                  "run of '%s': bytes per token %g is not a finite non-negative number", info->kernel_spec,
                  info->bytes_per_token);

    pthread_mutex_lock(&db->lock);
    rc = kvs_db_exec(db->conn, db->path, "BEGIN IMMEDIATE");
    if (rc == KVS_OK && resume)
        rc = find_run(db, info, run_id);
    if (rc == KVS_OK && *run_id) {
        /* A finished run stays "done": a resume with no units left never
        ** ends the run again. Any other status returns to "running".
        ** NOTE: a resumed run keeps the code version, host and threads of
        ** the process that started it. */
        char sql[200];
        snprintf(sql, sizeof sql,
                 "UPDATE runs SET status = 'running', finished_at = NULL WHERE id = %lld AND status != 'done'",
                 (long long)*run_id);
        rc = kvs_db_exec(db->conn, db->path, sql);
    } else if (rc == KVS_OK) {
        rc = insert_run(db, info, run_id);
    }
    if (rc == KVS_OK)
        rc = kvs_db_exec(db->conn, db->path, "COMMIT");
    if (rc != KVS_OK) {
        sqlite3_exec(db->conn, "ROLLBACK", NULL, NULL, NULL);
        *run_id = 0;
    }
    pthread_mutex_unlock(&db->lock);
    return rc;
}

kvs_status_e kvs_db_unit_done(kvs_db_t *db, int64_t run_id, uint32_t layer, uint32_t kv_head, int *done)
{
    int step;

    *done = 0;
    pthread_mutex_lock(&db->lock);
    sqlite3_bind_int64(db->unit_done, 1, run_id);
    sqlite3_bind_int64(db->unit_done, 2, layer);
    sqlite3_bind_int64(db->unit_done, 3, kv_head);
    step = sqlite3_step(db->unit_done);
    *done = step == SQLITE_ROW;
    sqlite3_reset(db->unit_done);
    pthread_mutex_unlock(&db->lock);
    if (step != SQLITE_ROW && step != SQLITE_DONE)
        return kvs_db_sqlite_fail(db->conn, KVS_ERR_DB, db->path, "checking a finished unit");
    return KVS_OK;
}

static kvs_status_e check_rows(const kvs_db_t *db, int64_t run_id, uint32_t layer, uint32_t kv_head,
                               const kvs_db_head_row_t *rows, uint32_t n_rows)
{
    KVS_RETURN_IF(n_rows > 0 && !rows, KVS_ERR_INVALID, "%s: unit (run %lld, layer %u, kv_head %u) without rows",
                  db->path, (long long)run_id, layer, kv_head);
    for (uint32_t i = 0; i < n_rows; i++) {
        KVS_RETURN_IF(rows[i].n_buckets > 0 &&
                          (!rows[i].bucket_steps || !rows[i].bucket_out_rel_l2 || !rows[i].bucket_logit_rmse),
                      KVS_ERR_INVALID, "%s: unit (run %lld, layer %u, kv_head %u) head %u has %u buckets but no data",
                      db->path, (long long)run_id, layer, kv_head, rows[i].head, rows[i].n_buckets);
    }
    return KVS_OK;
}

/* Inserts one head's metrics row and its non-empty buckets. The caller
** holds db->lock and an open transaction. */
static kvs_status_e insert_head(kvs_db_t *db, int64_t run_id, uint32_t layer, uint32_t kv_head,
                                const kvs_db_head_row_t *row)
{
    sqlite3_stmt *st = db->insert_metrics;
    const kvs_metrics_t *m = &row->metrics;

    sqlite3_bind_int64(st, 1, run_id);
    sqlite3_bind_int64(st, 2, layer);
    sqlite3_bind_int64(st, 3, row->head);
    sqlite3_bind_int64(st, 4, kv_head);
    sqlite3_bind_int64(st, 5, m->n_steps);
    /* SQLite stores NaN as NULL, which reads as "undefined" (for example
    ** a relative logit error where the exact logits are constant). */
    for (size_t i = 0; i < kvs_db_n_metric_fields; i++)
        sqlite3_bind_double(st, 6 + (int)i, *(const double *)((const char *)m + kvs_db_metric_fields[i].offset));
    KVS_FORWARD(step_done(db, st, "storing a metrics row"));

    st = db->insert_bucket;
    for (uint32_t b = 0; b < row->n_buckets; b++) {
        if (row->bucket_steps[b] == 0)
            continue;
        sqlite3_bind_int64(st, 1, run_id);
        sqlite3_bind_int64(st, 2, layer);
        sqlite3_bind_int64(st, 3, row->head);
        sqlite3_bind_int64(st, 4, b);
        sqlite3_bind_int64(st, 5, (sqlite3_int64)b * KVS_POS_BUCKET);
        sqlite3_bind_int64(st, 6, ((sqlite3_int64)b + 1) * KVS_POS_BUCKET);
        sqlite3_bind_int64(st, 7, row->bucket_steps[b]);
        sqlite3_bind_double(st, 8, row->bucket_out_rel_l2[b]);
        sqlite3_bind_double(st, 9, row->bucket_logit_rmse[b]);
        KVS_FORWARD(step_done(db, st, "storing a position bucket"));
    }
    return KVS_OK;
}

kvs_status_e kvs_db_commit_unit(kvs_db_t *db, int64_t run_id, uint32_t layer, uint32_t kv_head,
                                const kvs_db_head_row_t *rows, uint32_t n_rows, double total_attend_seconds,
                                uint32_t attend_calls, double stored_bytes_per_token)
{
    kvs_status_e rc;

    KVS_FORWARD(check_writable(db, "committing a unit"));
    KVS_FORWARD(check_rows(db, run_id, layer, kv_head, rows, n_rows));

    pthread_mutex_lock(&db->lock);
    rc = kvs_db_exec(db->conn, db->path, "BEGIN IMMEDIATE");
    if (rc == KVS_OK) {
        sqlite3_stmt *st = db->insert_unit;
        sqlite3_bind_int64(st, 1, run_id);
        sqlite3_bind_int64(st, 2, layer);
        sqlite3_bind_int64(st, 3, kv_head);
        /* No calls leave the mean undefined: NULL. */
        if (attend_calls > 0)
            sqlite3_bind_double(st, 4, total_attend_seconds / attend_calls);
        else
            sqlite3_bind_null(st, 4);
        sqlite3_bind_int64(st, 5, attend_calls);
        if (db->version >= 3 && stored_bytes_per_token >= 0)
            sqlite3_bind_double(st, 6, stored_bytes_per_token);
        else if (db->version >= 3)
            sqlite3_bind_null(st, 6);
        rc = step_done(db, st, "storing a unit");
    }
    for (uint32_t i = 0; rc == KVS_OK && i < n_rows; i++)
        rc = insert_head(db, run_id, layer, kv_head, &rows[i]);
    if (rc == KVS_OK)
        rc = kvs_db_exec(db->conn, db->path, "COMMIT");
    if (rc != KVS_OK) {
        sqlite3_exec(db->conn, "ROLLBACK", NULL, NULL, NULL);
        kvs_error_prefix("unit (run %lld, layer %u, kv_head %u)", (long long)run_id, layer, kv_head);
    }
    pthread_mutex_unlock(&db->lock);
    return rc;
}

kvs_status_e kvs_db_end_run(kvs_db_t *db, int64_t run_id, const char *status)
{
    sqlite3_stmt *st;
    kvs_status_e rc;
    int changed;

    KVS_FORWARD(check_writable(db, "ending a run"));
    KVS_RETURN_IF(!status || !*status, KVS_ERR_INVALID, "empty status for run %lld", (long long)run_id);

    pthread_mutex_lock(&db->lock);
    if (sqlite3_prepare_v2(db->conn, "UPDATE runs SET status = ?, finished_at = " KVS_DB_NOW " WHERE id = ?", -1,
                           &st, NULL) != SQLITE_OK) {
        rc = kvs_db_sqlite_fail(db->conn, KVS_ERR_DB, db->path, "ending a run");
        pthread_mutex_unlock(&db->lock);
        return rc;
    }
    sqlite3_bind_text(st, 1, status, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, run_id);
    rc = step_done(db, st, "ending a run");
    changed = sqlite3_changes(db->conn);
    sqlite3_finalize(st);
    pthread_mutex_unlock(&db->lock);
    KVS_FORWARD(rc);
    KVS_RETURN_IF(changed == 0, KVS_ERR_NOT_FOUND, "%s: no run with id %lld to end", db->path, (long long)run_id);
    return KVS_OK;
}

kvs_status_e kvs_db_put_timing(kvs_db_t *db, int64_t trace_id, const char *kernel_spec, uint64_t context,
                               double append_seconds, double attend_seconds, uint64_t read_bytes,
                               const char *scope, const char *host)
{
    sqlite3_stmt *st;
    kvs_status_e rc;

    KVS_FORWARD(check_writable(db, "storing a timing"));
    KVS_RETURN_IF(!kernel_spec || !*kernel_spec, KVS_ERR_INVALID, "timing without a kernel spec");
    KVS_RETURN_IF(!scope || (strcmp(scope, "head") && strcmp(scope, "model")), KVS_ERR_INVALID,
                  "timing scope '%s' is invalid; use \"head\" or \"model\"", scope ? scope : "(null)");
    KVS_RETURN_IF(!isfinite(attend_seconds) || attend_seconds < 0 || !isfinite(append_seconds) ||
                      append_seconds < 0,
                  KVS_ERR_INVALID, "timing of '%s' at context %llu: seconds %g / %g are not finite and >= 0",
                  kernel_spec, (unsigned long long)context, append_seconds, attend_seconds);

    pthread_mutex_lock(&db->lock);
    if (sqlite3_prepare_v2(db->conn,
                           "INSERT INTO timings (trace_id, kernel_spec, scope, context, append_seconds, "
                           "attend_seconds, read_bytes, host, code_version, measured_at) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, " KVS_DB_NOW ")",
                           -1, &st, NULL) != SQLITE_OK) {
        rc = kvs_db_sqlite_fail(db->conn, KVS_ERR_DB, db->path, "storing a timing");
        pthread_mutex_unlock(&db->lock);
        return rc;
    }
    sqlite3_bind_int64(st, 1, trace_id);
    sqlite3_bind_text(st, 2, kernel_spec, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, scope, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 4, (sqlite3_int64)context);
    sqlite3_bind_double(st, 5, append_seconds);
    sqlite3_bind_double(st, 6, attend_seconds);
    sqlite3_bind_int64(st, 7, (sqlite3_int64)read_bytes);
    sqlite3_bind_text(st, 8, host ? host : host_name(), -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 9, kvs_version(), -1, SQLITE_STATIC);
    rc = step_done(db, st, "storing a timing");
    sqlite3_finalize(st);
    pthread_mutex_unlock(&db->lock);
    return rc;
}
