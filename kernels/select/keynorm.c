/*
** keynorm.c: keeps the keys with the lowest L2 norm (Devoto et al., "A
** Simple and Effective L2 Norm-Based Strategy for KV Cache Compression",
** arXiv 2406.11430; kvpress KnormPress).
**
** Low-norm keys tend to receive high attention, so the norm ranks positions
** without any query. With budget B at context n (a percentage is of the
** current context), each append evicts the highest-norm resident position
** other than the new one while more than B are resident. By induction the
** resident set after n appends is the new position plus the B - 1 lowest-norm
** earlier ones. The norm is taken after RoPE, which is a rotation and leaves
** it unchanged. Needing no query, the policy evicts during the prompt too.
*/
#include "select_internal.h"

#include <math.h>
#include <stdlib.h>

typedef struct keynorm_state {
    uint32_t d;
    double budget;
    uint32_t resident;
    double *neg_norm;     /* (n) minus the key norm, so the lowest ranks first */
    uint32_t norm_cap;
} keynorm_state_t;

static const kvs_param_doc_t keynorm_params[] = {
    {"budget", KVS_PARAM_BUDGET, "20%", 1, 1e9, NULL,
     "positions attended per step: tokens, or percent of the current context"},
    {NULL, 0, NULL, 0, 0, NULL, NULL},
};

static kvs_status_e keynorm_create(const kvs_params_t *p, const kvs_kernel_dims_t *dims,
                                   void **state)
{
    keynorm_state_t *s = calloc(1, sizeof *s);

    KVS_RETURN_IF(!s, KVS_ERR_NOMEM, "out of memory creating a keynorm policy");
    s->d = dims->head_dim;
    s->budget = kvs_param_number(p, "budget");
    *state = s;
    return KVS_OK;
}

static kvs_status_e keynorm_append(void *state, const float *k, uint8_t *keep, uint32_t n)
{
    keynorm_state_t *s = state;
    uint32_t budget = kvs_select_budget(s->budget, n);
    double sum = 0;

    KVS_FORWARD(kvs_select_reserve((void **)&s->neg_norm, &s->norm_cap, n, sizeof *s->neg_norm,
                                   "keynorm norms"));
    for (uint32_t i = 0; i < s->d; i++)
        sum += (double)k[i] * k[i];
    s->neg_norm[n - 1] = -sqrt(sum);
    s->resident++;

    if (s->resident > budget)
        s->resident -= kvs_select_evict_lowest(s->neg_norm, keep, 0, n - 1,
                                               s->resident - budget);
    return KVS_OK;
}

static uint64_t keynorm_stored_bytes(const void *state)
{
    const keynorm_state_t *s = state;

    /* One float norm per resident position, computed once on insertion. */
    return (uint64_t)s->resident * sizeof(float);
}

static void keynorm_cost(const kvs_params_t *p, const kvs_kernel_dims_t *dims, uint64_t n_context,
                         kvs_part_cost_t *out, uint64_t *resident)
{
    uint32_t n = n_context > UINT32_MAX ? UINT32_MAX : (uint32_t)n_context;
    double budget = kvs_param_number(p, "budget");
    uint64_t kept = kvs_select_budget(budget, n);

    /* A step computes the new key's norm and scans the resident norms for
    ** the largest. */
    *out = (kvs_part_cost_t){0};
    out->bytes_per_token = kvs_select_resident_slope(budget, n) * sizeof(float);
    out->stored_bytes = kept * sizeof(float);
    out->read_bytes = kept * sizeof(float);
    out->written_bytes = sizeof(float);
    out->flops = 2.0 * dims->head_dim + (double)kept;
    *resident = kept;
}

static void keynorm_destroy(void *state)
{
    keynorm_state_t *s = state;

    if (!s)
        return;
    free(s->neg_norm);
    free(s);
}

const kvs_policy_i kvs_policy_keynorm = {
    .name = "keynorm",
    .description = "keeps the lowest-norm keys (L2-norm key selection, kvpress KnormPress)",
    .params = keynorm_params,
    .create = keynorm_create,
    .append = keynorm_append,
    .stored_bytes = keynorm_stored_bytes,
    .cost = keynorm_cost,
    .destroy = keynorm_destroy,
};
