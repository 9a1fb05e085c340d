/*
** replay.h: runs kernels over traces and records fidelity in the database.
**
** Work is split into units of (trace, kernel, layer, KV head). Each unit
** streams the trace's k, k_pre and v into a fresh kernel instance in
** position order and, at evaluation positions, compares the kernel's
** attention for the query group with exact attention from the trace.
*/
#ifndef KVS_REPLAY_H
#define KVS_REPLAY_H

#include "../common/kvs_common.h"

#include <stdint.h>

typedef enum kvs_eval_e {
    KVS_EVAL_DECODE = 0,   /* generated positions only */
    KVS_EVAL_ALL = 1,
    KVS_EVAL_LAST = 2,     /* last N positions */
    KVS_EVAL_STRIDE = 3,   /* every N-th position, and the last */
    KVS_EVAL_COUNT
} kvs_eval_e;

typedef struct kvs_replay_opts {
    const char *db_path;
    const char *const *traces;
    uint32_t n_traces;
    const char *const *kernels;   /* spec strings */
    uint32_t n_kernels;
    kvs_eval_e eval;
    uint32_t eval_n;              /* N of last:N and stride:N */
    uint32_t max_steps;           /* cap of evaluation steps per unit, 0 = none */
    uint32_t threads;             /* 0 = all cores */
    int resume;
    uint32_t shard_k, shard_n;    /* run units with index % n == k-1; n = 0: all */
    uint64_t seed;
    int quiet;                    /* no progress on stderr */
} kvs_replay_opts_t;

/* Parses "decode", "all", "last:N" or "stride:N". */
kvs_status_e kvs_eval_parse(const char *text, kvs_eval_e *eval, uint32_t *n);

struct kvs_db;
struct kvs_trace;

/* Records an open trace in the database (or finds it by content hash),
** with the model, prompt length and synthetic flag from its metadata, as
** replay does. kvsim bench uses it to attach timings to the trace. */
kvs_status_e kvs_replay_put_trace(struct kvs_db *db, const char *path, struct kvs_trace *trace,
                                  int64_t *trace_id);

/* Asks running replays to stop after the streams in progress. Safe to call
** from a signal handler. */
void kvs_replay_request_stop(void);

/* Validates every kernel spec and trace before doing any work. After a
** stop request it commits the streams in progress, marks unfinished runs
** "interrupted: rerun with --resume" and fails with KVS_ERR_IO and a message
** giving the number of units done. */
kvs_status_e kvs_replay_run(const kvs_replay_opts_t *opts);

#endif
