/*
** replay_unit.c: the units of one (layer, KV head) stream, one per kernel.
**
** Each kernel receives the stream exactly as a cache would: positions appended
** in order, the end-of-prompt hook after the last prompt position, and an
** attention call for the query group at each evaluated position, after
** that position's own k and v were appended (a decoder attends to itself).
**
** The reference is exact attention in F32, the precision the model ran in,
** computed by the dense F32 kernel on the same stream. Sharing its
** arithmetic makes "dense:dtype=f32" score exactly zero error, which checks
** the replayer's plumbing (heads, positions, query groups); test_replay
** checks the reference itself against a double-precision computation.
*/
#include "replay_unit.h"

#include "../analysis/metrics.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

kvs_kernel_dims_t kvs_replay_dims(const kvs_replay_trace_t *rt, uint64_t seed, uint32_t layer,
                                  uint32_t kv_head)
{
    kvs_kernel_dims_t dims = {
        .head_dim = rt->shape.head_dim, .group_size = rt->shape.n_heads / rt->shape.n_kv_heads,
        .n_layers = rt->shape.n_layers, .n_kv_heads = rt->shape.n_kv_heads,
        .layer = layer, .kv_head = kv_head, .seed = seed,
    };
    return dims;
}

uint32_t kvs_eval_positions(const kvs_eval_plan_t *plan, uint32_t n_tokens, uint32_t n_prompt,
                            uint8_t *eval_mask)
{
    uint32_t count = 0;

    for (uint32_t t = 0; t < n_tokens; t++) {
        int on = 0;
        switch (plan->eval) {
        case KVS_EVAL_DECODE: on = t >= n_prompt; break;
        case KVS_EVAL_ALL: on = 1; break;
        case KVS_EVAL_LAST: on = t + plan->eval_n >= n_tokens; break;
        case KVS_EVAL_STRIDE: on = t % plan->eval_n == 0 || t + 1 == n_tokens; break;
        case KVS_EVAL_COUNT: break;
        }
        eval_mask[t] = (uint8_t)on;
        count += on;
    }

    /* A cap keeps the last max_steps evaluated positions: late positions
    ** have the longest context, where cache schemes differ most. */
    if (plan->max_steps && count > plan->max_steps) {
        uint32_t drop = count - plan->max_steps;
        for (uint32_t t = 0; t < n_tokens && drop; t++) {
            if (eval_mask[t]) {
                eval_mask[t] = 0;
                drop--;
            }
        }
        count = plan->max_steps;
    }
    return count;
}

/* Buffers of one unit, (rows, width) as read from the trace. */
typedef struct unit_data {
    float *q, *k, *k_pre, *v;
    float *qg, *kh, *kph, *vh;     /* this KV head's slices, contiguous */
    float *logits, *weights, *out; /* kernel output, (group, n) and (group, d) */
    float *ex_logits, *ex_weights, *ex_out;  /* reference, same shapes */
} unit_data_t;

static void unit_data_free(unit_data_t *u)
{
    free(u->q); free(u->k); free(u->k_pre); free(u->v);
    free(u->qg); free(u->kh); free(u->kph); free(u->vh);
    free(u->logits); free(u->weights); free(u->out);
    free(u->ex_logits); free(u->ex_weights); free(u->ex_out);
}

/* Reads the layer and gathers this KV head's columns and its query group's
** columns into contiguous (seq, d) and (seq, group, d) arrays. */
static kvs_status_e load_unit(const kvs_replay_trace_t *rt, uint32_t layer, uint32_t kv_head,
                              unit_data_t *u)
{
    const kvs_trace_shape_t *s = &rt->shape;
    uint32_t n = rt->n_tokens, d = s->head_dim, group = s->n_heads / s->n_kv_heads;
    uint32_t kv_w = s->n_kv_heads * d, q_w = s->n_heads * d;
    size_t kv_rows = (size_t)n * kv_w, q_rows = (size_t)n * q_w;

    u->q = malloc(q_rows * sizeof(float));
    u->k = malloc(kv_rows * sizeof(float));
    u->k_pre = malloc(kv_rows * sizeof(float));
    u->v = malloc(kv_rows * sizeof(float));
    u->qg = malloc((size_t)n * group * d * sizeof(float));
    u->kh = malloc((size_t)n * d * sizeof(float));
    u->kph = malloc((size_t)n * d * sizeof(float));
    u->vh = malloc((size_t)n * d * sizeof(float));
    u->logits = malloc((size_t)group * n * sizeof(float));
    u->weights = malloc((size_t)group * n * sizeof(float));
    u->out = malloc((size_t)group * d * sizeof(float));
    u->ex_logits = malloc((size_t)group * n * sizeof(float));
    u->ex_weights = malloc((size_t)group * n * sizeof(float));
    u->ex_out = malloc((size_t)group * d * sizeof(float));
    if (!u->q || !u->k || !u->k_pre || !u->v || !u->qg || !u->kh || !u->kph || !u->vh ||
        !u->logits || !u->weights || !u->out || !u->ex_logits || !u->ex_weights || !u->ex_out)
        return kvs_fail(KVS_ERR_NOMEM, "out of memory replaying layer %u of %s (%u positions)", layer,
                        rt->path, n);

    KVS_FORWARD(kvs_trace_read(rt->trace, KVS_KIND_Q, layer, 0, n, u->q));
    KVS_FORWARD(kvs_trace_read(rt->trace, KVS_KIND_K, layer, 0, n, u->k));
    KVS_FORWARD(kvs_trace_read(rt->trace, KVS_KIND_K_PRE, layer, 0, n, u->k_pre));
    KVS_FORWARD(kvs_trace_read(rt->trace, KVS_KIND_V, layer, 0, n, u->v));

    /* Query head h belongs to KV head h / group, as in HF's repeat_kv. */
    for (uint32_t t = 0; t < n; t++) {
        memcpy(u->kh + (size_t)t * d, u->k + (size_t)t * kv_w + kv_head * d, d * sizeof(float));
        memcpy(u->kph + (size_t)t * d, u->k_pre + (size_t)t * kv_w + kv_head * d, d * sizeof(float));
        memcpy(u->vh + (size_t)t * d, u->v + (size_t)t * kv_w + kv_head * d, d * sizeof(float));
        memcpy(u->qg + (size_t)t * group * d, u->q + (size_t)t * q_w + (size_t)kv_head * group * d,
               (size_t)group * d * sizeof(float));
    }
    return KVS_OK;
}

static kvs_status_e check_output(const float *x, size_t n, const char *what, uint32_t pos)
{
    for (size_t i = 0; i < n; i++)
        KVS_RETURN_IF(isnan(x[i]) || (isinf(x[i]) && x[i] > 0), KVS_ERR_NONFINITE,
                      "returned a non-finite %s at position %u; this is a kernel bug", what, pos);
    return KVS_OK;
}

/* One kernel under test within a stream. */
typedef struct stream_kernel {
    const kvs_kernel_spec_t *spec;
    kvs_kernel_t *kernel;
    uint64_t shared_bytes;    /* rotation and codebook tables in the instance */
    double stored_sum;        /* sum over scored steps of bytes per position */
    kvs_metrics_acc_t *acc[64];
    kvs_unit_result_t *res;
} stream_kernel_t;

/* Attends one kernel at position t and scores it against the reference
** already in u->ex_*. */
static kvs_status_e score_position(stream_kernel_t *sk, unit_data_t *u, uint32_t t, uint32_t group,
                                   uint32_t d)
{
    uint32_t len = t + 1;
    const float *q = u->qg + (size_t)t * group * d;
    kvs_attend_out_t out = {u->logits, u->weights, u->out};

    double start = kvs_now_seconds();
    KVS_FORWARD(kvs_kernel_attend(sk->kernel, q, &out));
    sk->res->attend_seconds += kvs_now_seconds() - start;
    sk->res->attend_calls++;

    /* Bytes stored per position at this step, windows included. */
    uint64_t held = kvs_kernel_stored_bytes(sk->kernel);
    sk->stored_sum += (double)(held > sk->shared_bytes ? held - sk->shared_bytes : 0) / len;
    KVS_FORWARD(check_output(u->weights, (size_t)group * len, "attention weight", t));
    KVS_FORWARD(check_output(u->out, (size_t)group * d, "output", t));

    /* Kernel and reference both write (group, len) rows with stride len. */
    for (uint32_t g = 0; g < group; g++) {
        size_t row = (size_t)g * len;
        kvs_metrics_add_step(sk->acc[g], t, len, u->ex_logits + row, u->ex_weights + row,
                             u->logits + row, u->weights + row, u->ex_out + (size_t)g * d,
                             u->out + (size_t)g * d, d);
    }
    return KVS_OK;
}

/* Attends, without scoring, the kernels whose policy learns from every
** decode step, at a decode position the evaluation plan skips. */
static kvs_status_e observe_position(const kvs_replay_trace_t *rt, stream_kernel_t *sks,
                                     uint32_t n_kernels, unit_data_t *u, uint32_t t)
{
    uint32_t group = rt->shape.n_heads / rt->shape.n_kv_heads, d = rt->shape.head_dim;
    kvs_attend_out_t out = {u->logits, u->weights, u->out};

    if (t < rt->n_prompt)
        return KVS_OK;
    for (uint32_t i = 0; i < n_kernels; i++) {
        if (!kvs_kernel_spec_observes(sks[i].spec))
            continue;
        kvs_status_e rc = kvs_kernel_attend(sks[i].kernel, u->qg + (size_t)t * group * d, &out);
        if (rc != KVS_OK) {
            kvs_error_prefix("kernel '%s'", kvs_kernel_spec_text(sks[i].spec));
            return rc;
        }
    }
    return KVS_OK;
}

static kvs_status_e run_stream(const kvs_replay_trace_t *rt, stream_kernel_t *sks, uint32_t n_kernels,
                               kvs_kernel_t *reference, const uint8_t *eval_mask, unit_data_t *u)
{
    uint32_t n = rt->n_tokens, d = rt->shape.head_dim;
    uint32_t group = rt->shape.n_heads / rt->shape.n_kv_heads;

    for (uint32_t t = 0; t < n; t++) {
        const float *k = u->kh + (size_t)t * d, *kp = u->kph + (size_t)t * d;
        const float *v = u->vh + (size_t)t * d;

        KVS_FORWARD(kvs_kernel_append(reference, k, kp, v));
        for (uint32_t i = 0; i < n_kernels; i++) {
            kvs_status_e rc = kvs_kernel_append(sks[i].kernel, k, kp, v);
            if (rc == KVS_OK && t + 1 == rt->n_prompt)
                rc = kvs_kernel_end_prefill(sks[i].kernel, u->qg, rt->n_prompt);
            if (rc != KVS_OK) {
                kvs_error_prefix("kernel '%s'", kvs_kernel_spec_text(sks[i].spec));
                return rc;
            }
        }
        if (!eval_mask[t]) {
            KVS_FORWARD(observe_position(rt, sks, n_kernels, u, t));
            continue;
        }

        kvs_attend_out_t exact = {u->ex_logits, u->ex_weights, u->ex_out};
        KVS_FORWARD(kvs_kernel_attend(reference, u->qg + (size_t)t * group * d, &exact));
        for (uint32_t i = 0; i < n_kernels; i++) {
            kvs_status_e rc = score_position(&sks[i], u, t, group, d);
            if (rc != KVS_OK) {
                kvs_error_prefix("kernel '%s'", kvs_kernel_spec_text(sks[i].spec));
                return rc;
            }
        }
    }
    return KVS_OK;
}

static kvs_status_e collect(kvs_metrics_acc_t **acc, uint32_t group, uint32_t first_head,
                            kvs_unit_result_t *res)
{
    uint32_t n_buckets = kvs_metrics_n_buckets(acc[0]);

    res->bucket_steps = calloc((size_t)group * n_buckets + 1, sizeof *res->bucket_steps);
    res->bucket_out = calloc((size_t)group * n_buckets + 1, sizeof *res->bucket_out);
    res->bucket_logit = calloc((size_t)group * n_buckets + 1, sizeof *res->bucket_logit);
    KVS_RETURN_IF(!res->bucket_steps || !res->bucket_out || !res->bucket_logit, KVS_ERR_NOMEM,
                  "out of memory collecting replay results");

    for (uint32_t g = 0; g < group; g++) {
        kvs_db_head_row_t *row = &res->rows[g];
        size_t base = (size_t)g * n_buckets;

        row->head = first_head + g;
        kvs_metrics_finish(acc[g], &row->metrics);
        row->n_buckets = kvs_metrics_n_buckets(acc[g]);
        for (uint32_t b = 0; b < row->n_buckets; b++)
            kvs_metrics_bucket(acc[g], b, &res->bucket_steps[base + b], &res->bucket_out[base + b],
                               &res->bucket_logit[base + b]);
        row->bucket_steps = res->bucket_steps + base;
        row->bucket_out_rel_l2 = res->bucket_out + base;
        row->bucket_logit_rmse = res->bucket_logit + base;
    }
    return KVS_OK;
}

kvs_status_e kvs_replay_stream(const kvs_replay_trace_t *rt, const kvs_kernel_spec_t *const *specs,
                               uint32_t n_kernels, uint64_t seed, uint32_t layer, uint32_t kv_head,
                               const uint8_t *eval_mask, kvs_unit_result_t *results)
{
    const kvs_trace_shape_t *s = &rt->shape;
    uint32_t group = s->n_heads / s->n_kv_heads;
    kvs_kernel_dims_t dims = kvs_replay_dims(rt, seed, layer, kv_head);
    unit_data_t u = {0};
    stream_kernel_t *sks = calloc(n_kernels ? n_kernels : 1, sizeof *sks);
    kvs_kernel_spec_t *reference_spec = NULL;
    kvs_kernel_t *reference = NULL;
    kvs_status_e rc = KVS_OK;

    KVS_RETURN_IF(!sks, KVS_ERR_NOMEM, "out of memory");
    KVS_RETURN_IF(group == 0 || group > 64, KVS_ERR_UNSUPPORTED,
                  "%u query heads per KV head in %s; kvsim supports 1 to 64", group, rt->path);
    for (uint32_t i = 0; i < n_kernels; i++) {
        memset(&results[i], 0, sizeof results[i]);
        results[i].group = group;
        sks[i].spec = specs[i];
        sks[i].res = &results[i];
    }

    rc = load_unit(rt, layer, kv_head, &u);
    for (uint32_t i = 0; rc == KVS_OK && i < n_kernels; i++) {
        for (uint32_t g = 0; rc == KVS_OK && g < group; g++) {
            sks[i].acc[g] = kvs_metrics_acc_create();
            if (!sks[i].acc[g])
                rc = kvs_fail(KVS_ERR_NOMEM, "out of memory for metrics");
        }
        kvs_kernel_cost_t cost;
        if (rc == KVS_OK)
            rc = kvs_kernel_spec_cost(specs[i], &dims, rt->n_tokens, &cost);
        sks[i].shared_bytes = rc == KVS_OK ? cost.shared_bytes : 0;
        if (rc == KVS_OK)
            rc = kvs_kernel_create(specs[i], &dims, &sks[i].kernel);
    }
    if (rc == KVS_OK)
        rc = kvs_kernel_spec_parse(KVS_REFERENCE_SPEC, &reference_spec);
    if (rc == KVS_OK)
        rc = kvs_kernel_create(reference_spec, &dims, &reference);
    if (rc == KVS_OK)
        rc = run_stream(rt, sks, n_kernels, reference, eval_mask, &u);
    for (uint32_t i = 0; rc == KVS_OK && i < n_kernels; i++) {
        rc = collect(sks[i].acc, group, kv_head * group, &results[i]);
        results[i].stored_bytes_per_token =
            results[i].attend_calls ? sks[i].stored_sum / results[i].attend_calls : -1;
    }
    if (rc != KVS_OK)
        kvs_error_prefix("%s, layer %u, KV head %u", rt->path, layer, kv_head);

    for (uint32_t i = 0; i < n_kernels; i++) {
        kvs_kernel_destroy(sks[i].kernel);
        for (uint32_t g = 0; g < group; g++)
            kvs_metrics_acc_destroy(sks[i].acc[g]);
    }
    kvs_kernel_destroy(reference);
    kvs_kernel_spec_free(reference_spec);
    unit_data_free(&u);
    free(sks);
    return rc;
}

void kvs_unit_result_free(kvs_unit_result_t *res)
{
    free(res->bucket_steps);
    free(res->bucket_out);
    free(res->bucket_logit);
    res->bucket_steps = NULL;
    res->bucket_out = NULL;
    res->bucket_logit = NULL;
}
