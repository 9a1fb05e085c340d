/*
** db_internal.h: definitions shared by the db/ sources (schema, writes,
** merge). Not part of the public interface.
*/
#ifndef KVS_DB_INTERNAL_H
#define KVS_DB_INTERNAL_H

#include "db.h"

#include <pthread.h>
#include <sqlite3.h>
#include <stddef.h>

/* PRAGMA application_id of kvsim results databases ("KVSD"), so that an
** unrelated SQLite file is recognized before anything is written to it. */
#define KVS_DB_APPLICATION_ID 0x4B565344

/* Seconds a writer waits for another process's transaction to finish. */
#define KVS_DB_BUSY_TIMEOUT_MS 60000

struct kvs_db {
    sqlite3 *conn;
    char *path;
    int readonly;
    int version;              /* user_version after open */
    pthread_mutex_t lock;     /* one call at a time: statements are shared */
    sqlite3_stmt *unit_done;
    sqlite3_stmt *insert_unit;
    sqlite3_stmt *insert_metrics;
    sqlite3_stmt *insert_bucket;
};

/* One column of the metrics table and where it sits in kvs_metrics_t.
** n_steps is the only integer field and is handled separately. */
typedef struct kvs_db_metric_field {
    const char *column;
    size_t offset;
    const char *unit;
} kvs_db_metric_field_t;

extern const kvs_db_metric_field_t kvs_db_metric_fields[];
extern const size_t kvs_db_n_metric_fields;

/* Fails with code and a message naming path, what was being done and
** SQLite's own message for conn. */
kvs_status_e kvs_db_sqlite_fail(sqlite3 *conn, kvs_status_e code, const char *path, const char *what);

/* Runs SQL text with no result rows. */
kvs_status_e kvs_db_exec(sqlite3 *conn, const char *path, const char *sql);

/* Brings conn (inside an open write transaction) from version `from` to
** version `to`, and recreates the views that exist at `to`. */
kvs_status_e kvs_db_migrate(sqlite3 *conn, const char *path, int from, int to);

/* Returns the current UTC time as "YYYY-MM-DDTHH:MM:SS.mmmZ" via SQLite. */
#define KVS_DB_NOW "strftime('%Y-%m-%dT%H:%M:%fZ','now')"

#endif
