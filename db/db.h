/*
** db.h: the results database (SQLite, WAL mode, one file).
**
** Schema in docs/schema.md, versioned with PRAGMA user_version and migrated
** forward on open. Writers commit one transaction per finished unit (one
** run, layer and KV head), so a run stopped at any point leaves only whole
** units, and --resume skips the units already present. Several processes
** may write one database at once: opens set a busy timeout and retry.
*/
#ifndef KVS_DB_H
#define KVS_DB_H

#include "../analysis/metrics.h"
#include "../common/kvs_common.h"

#include <stdint.h>

typedef struct kvs_db kvs_db_t;

/* Opens or creates path and migrates its schema to the current version.
** Fails with KVS_ERR_DB_SCHEMA when the file is from a newer kvsim. */
kvs_status_e kvs_db_open(const char *path, kvs_db_t **out);
void kvs_db_close(kvs_db_t *db);

/* Current schema version written to PRAGMA user_version. */
int kvs_db_schema_version(void);

typedef struct kvs_db_trace_info {
    const char *path;
    const char *content_hash;   /* identifies the trace */
    const char *model;          /* model name or folder */
    const char *metadata_json;  /* the trace's metadata as written */
    uint32_t n_layers, n_heads, n_kv_heads, head_dim;
    uint32_t n_prompt, n_generated;
    int synthetic;              /* 1 when made from a synthetic model */
    uint64_t file_bytes;
} kvs_db_trace_info_t;

/* Inserts the trace, or finds it by content hash. */
kvs_status_e kvs_db_put_trace(kvs_db_t *db, const kvs_db_trace_info_t *info, int64_t *trace_id);

typedef struct kvs_db_run_info {
    int64_t trace_id;
    const char *kernel_spec;    /* verbatim */
    const char *params_json;    /* kvs_kernel_spec_params_json() */
    const char *family;
    int compressed_exec;
    const char *eval_mode;      /* "decode", "all", "last:N", ... */
    uint32_t threads;
    uint64_t seed;
    /* Whole-model costs from the kernel's accounting at the trace's full
    ** context length (cost_context tokens). */
    uint64_t cost_context;
    double bytes_per_token;
    uint64_t stored_bytes;
    uint64_t read_bytes_per_step;
} kvs_db_run_info_t;

/* Starts a run. With resume set, the latest run of the same trace, spec,
** parameters and evaluation mode is reused and *run_id points at it. A
** "done" run keeps its status, and any other becomes "running". Without
** resume, or when there is no such run, a new run row is inserted. */
kvs_status_e kvs_db_begin_run(kvs_db_t *db, const kvs_db_run_info_t *info, int resume, int64_t *run_id);

/* Sets *done to 1 when the unit (run, layer, kv_head) is already committed. */
kvs_status_e kvs_db_unit_done(kvs_db_t *db, int64_t run_id, uint32_t layer, uint32_t kv_head, int *done);

/* One query head's results within a unit. */
typedef struct kvs_db_head_row {
    uint32_t head;               /* query head index in the layer */
    kvs_metrics_t metrics;
    uint32_t n_buckets;          /* per-position buckets, KVS_POS_BUCKET wide */
    const uint32_t *bucket_steps;
    const double *bucket_out_rel_l2;
    const double *bucket_logit_rmse;
} kvs_db_head_row_t;

/* Commits a unit's head rows and its measured attention time in one
** transaction, retrying while another writer holds the lock.
** total_attend_seconds is the sum over the unit's attend_calls attention
** calls; the units table stores the mean per call. stored_bytes_per_token
** is the mean bytes per token the unit's instance held during its scored
** steps, shared tables excluded; a negative value stores NULL. */
kvs_status_e kvs_db_commit_unit(kvs_db_t *db, int64_t run_id, uint32_t layer, uint32_t kv_head,
                                const kvs_db_head_row_t *rows, uint32_t n_rows, double total_attend_seconds,
                                uint32_t attend_calls, double stored_bytes_per_token);

/* Marks the run finished ("done") or failed ("failed: message"). */
kvs_status_e kvs_db_end_run(kvs_db_t *db, int64_t run_id, const char *status);

/* ---- additions for bench, merge, reports and tests -------------------- */

/* Opens path read-only for queries (reports, merge inputs). Fails with
** KVS_ERR_DB_SCHEMA when the file's schema version is not the current one;
** an older file is migrated by any read-write open (kvsim db migrate). */
kvs_status_e kvs_db_open_readonly(const char *path, kvs_db_t **out);

/* Opens or creates path and migrates it only up to version, which must be
** between 1 and kvs_db_schema_version(). Tests use it to build files of an
** earlier version; a file already newer than version is left as it is. */
kvs_status_e kvs_db_open_at_version(const char *path, int version, kvs_db_t **out);

/* The schema version of the open file (PRAGMA user_version). */
int kvs_db_file_version(kvs_db_t *db);

/* The underlying SQLite connection, for read queries by reports. */
struct sqlite3 *kvs_db_sqlite(kvs_db_t *db);

/* Records one timing measurement of kvsim bench: the median seconds of one
** append and one attention step at a context of `context` tokens, and the
** bytes that step reads. scope is "head" (one layer and KV head) or "model"
** (scaled to every layer and KV head); host NULL means this machine. */
kvs_status_e kvs_db_put_timing(kvs_db_t *db, int64_t trace_id, const char *kernel_spec, uint64_t context,
                               double append_seconds, double attend_seconds, uint64_t read_bytes,
                               const char *scope, const char *host);

/* Combines shard databases into a new file out_path, written under a
** temporary name and renamed at the end. Every input must have the current
** schema version. Traces match by content hash; runs by trace, kernel spec,
** parameters and evaluation mode. A unit present in several inputs must have
** identical metric rows, else KVS_ERR_DB_SCHEMA names the run and the unit.
** Fails without writing when out_path already exists. */
kvs_status_e kvs_db_merge(const char *out_path, const char *const *in_paths, uint32_t n_in);

#endif
