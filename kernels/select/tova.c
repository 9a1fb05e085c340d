/*
** tova.c: token omission via attention (TOVA, Oren et al., arXiv
** 2401.06104).
**
** When the cache is over budget, the position with the lowest attention
** weight from the most recent query, averaged over the query heads of the
** group, is dropped. With budget B at context n (a percentage is of the
** current context), at most B positions are attended at each step.
**
** The prompt is attended densely. At end_prefill the last prompt query
** scores the prompt (exact causal attention, as kvpress's TOVAPress does)
** and the cache is cut to B. Later, each observed step stores its weights
** and the next append evicts by them: the same choice as dropping right
** after the step, and every attention step stays within B positions.
** Positions appended since the last observed step have no weight and rank
** as 0, oldest first, so a replay that skips steps still keeps the budget.
*/
#include "select_internal.h"

#include <stdlib.h>
#include <string.h>

typedef struct tova_state {
    uint32_t d, group;
    double budget;
    uint32_t resident;
    int prefill_done;

    double *weight;      /* (n) weights of the last observed query */
    float *scratch;      /* (n) logits */
    float *keys;         /* (n, d) prompt keys until end_prefill; the
                            prefill holds them anyway, so they are not
                            counted as policy state */
    uint32_t weight_cap, scratch_cap, key_cap;
} tova_state_t;

static const kvs_param_doc_t tova_params[] = {
    {"budget", KVS_PARAM_BUDGET, "20%", 1, 1e9, NULL,
     "positions attended per step: tokens, or percent of the current context"},
    {NULL, 0, NULL, 0, 0, NULL, NULL},
};

/* Evicts the lowest-weighted positions except the newest until at most
** B(n) are resident. */
static void tova_evict(tova_state_t *s, uint8_t *keep, uint32_t n)
{
    uint32_t budget = kvs_select_budget(s->budget, n);

    if (s->resident > budget)
        s->resident -= kvs_select_evict_lowest(s->weight, keep, 0, n - 1, s->resident - budget);
}

static kvs_status_e tova_create(const kvs_params_t *p, const kvs_kernel_dims_t *dims, void **state)
{
    tova_state_t *s = calloc(1, sizeof *s);

    KVS_RETURN_IF(!s, KVS_ERR_NOMEM, "out of memory creating a tova policy");
    s->d = dims->head_dim;
    s->group = dims->group_size;
    s->budget = kvs_param_number(p, "budget");
    *state = s;
    return KVS_OK;
}

static kvs_status_e tova_append(void *state, const float *k, uint8_t *keep, uint32_t n)
{
    tova_state_t *s = state;

    KVS_FORWARD(kvs_select_reserve((void **)&s->weight, &s->weight_cap, n, sizeof *s->weight,
                                   "tova weights"));
    KVS_FORWARD(kvs_select_reserve((void **)&s->scratch, &s->scratch_cap, n, sizeof *s->scratch,
                                   "tova logits"));
    s->weight[n - 1] = 0;
    s->resident++;

    if (!s->prefill_done) {
        KVS_FORWARD(kvs_select_reserve((void **)&s->keys, &s->key_cap, n * s->d,
                                       sizeof *s->keys, "tova prompt keys"));
        memcpy(s->keys + (size_t)(n - 1) * s->d, k, s->d * sizeof *k);
        return KVS_OK;
    }

    tova_evict(s, keep, n);
    return KVS_OK;
}

static kvs_status_e tova_end_prefill(void *state, const float *q_window, uint32_t n_q,
                                     uint8_t *keep, uint32_t n)
{
    tova_state_t *s = state;

    KVS_RETURN_IF(s->prefill_done, KVS_ERR_INTERNAL, "tova end_prefill called twice");
    KVS_RETURN_IF(n_q > n, KVS_ERR_INVALID,
                  "tova got %u window queries for a prompt of %u positions; pass at most %u", n_q,
                  n, n);
    KVS_RETURN_IF(n > 0 && n_q == 0, KVS_ERR_INVALID,
                  "tova needs the last prompt query at end of prefill, got 0 window queries");

    if (n > 0) {
        const float *q_last = q_window + (size_t)(n_q - 1) * s->group * s->d;

        kvs_select_causal_weights(s->keys, s->d, q_last, s->group, n, s->scratch, s->weight);
    }
    free(s->keys);
    s->keys = NULL;
    s->key_cap = 0;
    s->prefill_done = 1;

    tova_evict(s, keep, n);
    return KVS_OK;
}

static void tova_observe(void *state, const float *w, uint32_t group, uint8_t *keep, uint32_t n)
{
    tova_state_t *s = state;

    memset(s->weight, 0, (size_t)n * sizeof *s->weight);
    for (uint32_t g = 0; g < group; g++) {
        const float *wg = w + (size_t)g * n;

        for (uint32_t t = 0; t < n; t++)
            s->weight[t] += (double)wg[t] / group;
    }
}

static uint64_t tova_stored_bytes(const void *state)
{
    /* The weights come from the step's own attention; nothing persists. */
    return 0;
}

static void tova_cost(const kvs_params_t *p, const kvs_kernel_dims_t *dims, uint64_t n_context,
                      kvs_part_cost_t *out, uint64_t *resident)
{
    uint32_t n = n_context > UINT32_MAX ? UINT32_MAX : (uint32_t)n_context;

    *out = (kvs_part_cost_t){0};
    *resident = kvs_select_budget(kvs_param_number(p, "budget"), n);
}

static void tova_destroy(void *state)
{
    tova_state_t *s = state;

    if (!s)
        return;
    free(s->weight);
    free(s->scratch);
    free(s->keys);
    free(s);
}

const kvs_policy_i kvs_policy_tova = {
    .name = "tova",
    .description = "drops the position the current query attends least (TOVA)",
    .params = tova_params,
    .create = tova_create,
    .append = tova_append,
    .end_prefill = tova_end_prefill,
    .observe = tova_observe,
    .stored_bytes = tova_stored_bytes,
    .cost = tova_cost,
    .destroy = tova_destroy,
};
