/*
** replay_unit.h: one replay unit, (trace, kernel, layer, KV head), run
** against exact attention. Internal to sim/.
*/
#ifndef KVS_REPLAY_UNIT_H
#define KVS_REPLAY_UNIT_H

#include "../db/db.h"
#include "../kernels/kernel.h"
#include "../trace/trace.h"
#include "replay.h"

#include <stdint.h>

/* The kernel whose attention is the reference: exact F32 attention. */
#define KVS_REFERENCE_SPEC "dense:dtype=f32"

/* The replayer's description of one trace. */
typedef struct kvs_replay_trace {
    const char *path;
    kvs_trace_t *trace;
    kvs_trace_shape_t shape;
    uint32_t n_tokens;
    uint32_t n_prompt;        /* positions before the first generated one */
    int synthetic;
    char *model;              /* from the metadata, malloc'd */
    int64_t trace_id;
} kvs_replay_trace_t;

/* Which positions are evaluated. */
typedef struct kvs_eval_plan {
    kvs_eval_e eval;
    uint32_t eval_n;
    uint32_t max_steps;
} kvs_eval_plan_t;

/* Results of one unit, ready for kvs_db_commit_unit. */
typedef struct kvs_unit_result {
    uint32_t group;                 /* query heads in the unit */
    kvs_db_head_row_t rows[64];
    double attend_seconds;
    uint32_t attend_calls;
    double stored_bytes_per_token;  /* mean over scored steps of the bytes
                                       the instance held per position,
                                       shared tables excluded */
    /* Storage behind rows[].bucket_* */
    uint32_t *bucket_steps;
    double *bucket_out;
    double *bucket_logit;
} kvs_unit_result_t;

/* Kernel dims of the (layer, KV head) stream of a trace. */
kvs_kernel_dims_t kvs_replay_dims(const kvs_replay_trace_t *rt, uint64_t seed, uint32_t layer,
                                  uint32_t kv_head);

/* Marks the evaluated positions of a trace in eval_mask (n_tokens entries)
** and returns how many there are. */
uint32_t kvs_eval_positions(const kvs_eval_plan_t *plan, uint32_t n_tokens, uint32_t n_prompt,
                            uint8_t *eval_mask);

/* Runs the units of one (layer, KV head) stream, one per kernel, in a
** single pass. The layer's k, k_pre and v for kv_head go into a fresh
** instance of every kernel. At evaluated positions each is compared with
** the reference, which is computed once per position. results has
** n_kernels entries, filled in the order of specs. */
kvs_status_e kvs_replay_stream(const kvs_replay_trace_t *rt, const kvs_kernel_spec_t *const *specs,
                               uint32_t n_kernels, uint64_t seed, uint32_t layer, uint32_t kv_head,
                               const uint8_t *eval_mask, kvs_unit_result_t *results);

void kvs_unit_result_free(kvs_unit_result_t *res);

#endif
