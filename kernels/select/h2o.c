/*
** h2o.c: heavy hitters plus recent tokens (H2O, Zhang et al., arXiv
** 2306.14048).
**
** Each resident position carries the attention it has received, summed
** over observed query steps and averaged over the query heads of the group,
** so one kept set serves the KV head. With budget B at context n (a
** percentage is of the current context), floor(heavy * B) positions are
** heavy hitters and the rest the recent window; the paper's 20% budget is
** 10% heavy plus 10% recent, heavy = 0.5.
**
** The prompt is attended densely. At end_prefill the window queries score
** the prompt (causal exact attention, for query positions no attend step
** observed), and the lowest-scored positions outside the recent window are
** evicted down to B. At each later append the lowest-scored position outside
** the recent window is evicted while more than B are resident. Evicting at
** the next append instead of right after a step's attention is the same
** decision, taken on the same scores, and keeps every attention step within
** B positions.
*/
#include "select_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct h2o_state {
    uint32_t d, group;
    double budget;
    double heavy;        /* fraction of the budget for heavy hitters */
    uint32_t resident;
    int prefill_done;
    uint32_t scored_last_n;  /* n at end_prefill when it scored the last
                                prompt query, whose attend step may follow;
                                0 otherwise */

    double *score;       /* (n) accumulated attention received */
    uint8_t *observed;   /* (n) 1 when that query position's weights were
                            observed before end_prefill */
    float *scratch;      /* (n) logits */
    float *keys;         /* (n, d) prompt keys, freed at end_prefill: the
                            prefill holds them anyway, so they are not
                            counted as policy state */
    uint32_t score_cap, observed_cap, scratch_cap, key_cap;
} h2o_state_t;

static const kvs_param_doc_t h2o_params[] = {
    {"budget", KVS_PARAM_BUDGET, "20%", 1, 1e9, NULL,
     "positions attended per step: tokens, or percent of the current context"},
    {"heavy", KVS_PARAM_FLOAT, "0.5", 0, 1, NULL,
     "fraction of the budget for heavy hitters; the rest is the recent window"},
    {NULL, 0, NULL, 0, 0, NULL, NULL},
};

/* Size of the recent window at context n; at least 1 so the current token
** stays. */
static uint32_t h2o_recent(const h2o_state_t *s, uint32_t n)
{
    uint32_t b = kvs_select_budget(s->budget, n);
    uint32_t heavy = (uint32_t)floor(s->heavy * b + 1e-9);

    return b - heavy > 0 ? b - heavy : 1;
}

/* Evicts the lowest-scored positions outside the recent window until at
** most B(n) are resident. */
static void h2o_evict(h2o_state_t *s, uint8_t *keep, uint32_t n)
{
    uint32_t budget = kvs_select_budget(s->budget, n);
    uint32_t recent = h2o_recent(s, n);

    if (s->resident > budget)
        s->resident -= kvs_select_evict_lowest(s->score, keep, 0, n - recent,
                                               s->resident - budget);
}

static kvs_status_e h2o_create(const kvs_params_t *p, const kvs_kernel_dims_t *dims, void **state)
{
    h2o_state_t *s = calloc(1, sizeof *s);

    KVS_RETURN_IF(!s, KVS_ERR_NOMEM, "out of memory creating an h2o policy");
    s->d = dims->head_dim;
    s->group = dims->group_size;
    s->budget = kvs_param_number(p, "budget");
    s->heavy = kvs_param_number(p, "heavy");
    *state = s;
    return KVS_OK;
}

static kvs_status_e h2o_append(void *state, const float *k, uint8_t *keep, uint32_t n)
{
    h2o_state_t *s = state;

    KVS_FORWARD(kvs_select_reserve((void **)&s->score, &s->score_cap, n, sizeof *s->score,
                                   "h2o scores"));
    KVS_FORWARD(kvs_select_reserve((void **)&s->observed, &s->observed_cap, n, 1,
                                   "h2o observed steps"));
    KVS_FORWARD(kvs_select_reserve((void **)&s->scratch, &s->scratch_cap, n, sizeof *s->scratch,
                                   "h2o logits"));
    s->score[n - 1] = 0;
    s->resident++;

    if (!s->prefill_done) {
        KVS_FORWARD(kvs_select_reserve((void **)&s->keys, &s->key_cap, n * s->d,
                                       sizeof *s->keys, "h2o prompt keys"));
        memcpy(s->keys + (size_t)(n - 1) * s->d, k, s->d * sizeof *k);
        s->observed[n - 1] = 0;
        return KVS_OK;
    }

    h2o_evict(s, keep, n);
    return KVS_OK;
}

static kvs_status_e h2o_end_prefill(void *state, const float *q_window, uint32_t n_q,
                                    uint8_t *keep, uint32_t n)
{
    h2o_state_t *s = state;
    double *w = NULL;

    KVS_RETURN_IF(s->prefill_done, KVS_ERR_INTERNAL, "h2o end_prefill called twice");
    KVS_RETURN_IF(n_q > n, KVS_ERR_INVALID,
                  "h2o got %u window queries for a prompt of %u positions; pass at most %u", n_q,
                  n, n);
    if (n > 0) {
        w = malloc((size_t)n * sizeof *w);
        KVS_RETURN_IF(!w, KVS_ERR_NOMEM, "out of memory scoring a prompt of %u positions", n);
    }

    for (uint32_t j = 0; j < n_q; j++) {
        uint32_t pos = n - n_q + j;

        if (s->observed[pos])
            continue;
        kvs_select_causal_weights(s->keys, s->d, q_window + (size_t)j * s->group * s->d, s->group,
                                  pos + 1, s->scratch, w);
        for (uint32_t t = 0; t <= pos; t++)
            s->score[t] += w[t];
    }
    free(w);
    free(s->keys);
    s->keys = NULL;
    s->key_cap = 0;
    s->prefill_done = 1;
    if (n_q > 0 && !s->observed[n - 1])
        s->scored_last_n = n;

    h2o_evict(s, keep, n);
    return KVS_OK;
}

static void h2o_observe(void *state, const float *w, uint32_t group, uint8_t *keep, uint32_t n)
{
    h2o_state_t *s = state;

    /* A replay may evaluate the last prompt position after end_prefill;
    ** that query was already counted there. */
    if (s->scored_last_n && n == s->scored_last_n) {
        s->scored_last_n = 0;
        return;
    }

    for (uint32_t g = 0; g < group; g++) {
        const float *wg = w + (size_t)g * n;

        for (uint32_t t = 0; t < n; t++)
            s->score[t] += (double)wg[t] / group;
    }
    if (!s->prefill_done && n > 0)
        s->observed[n - 1] = 1;
}

double kvs_h2o_score(const void *state, uint32_t pos)
{
    const h2o_state_t *s = state;

    return s->score[pos];
}

static uint64_t h2o_stored_bytes(const void *state)
{
    const h2o_state_t *s = state;

    /* One float score per resident position, as a real cache keeps it. */
    return (uint64_t)s->resident * sizeof(float);
}

static void h2o_cost(const kvs_params_t *p, const kvs_kernel_dims_t *dims, uint64_t n_context,
                     kvs_part_cost_t *out, uint64_t *resident)
{
    uint32_t n = n_context > UINT32_MAX ? UINT32_MAX : (uint32_t)n_context;
    uint64_t kept = kvs_select_budget(kvs_param_number(p, "budget"), n);

    /* A step reads and rewrites every resident score and adds the group's
    ** weights to it. */
    *out = (kvs_part_cost_t){0};
    out->bytes_per_token = kvs_select_resident_slope(kvs_param_number(p, "budget"), n) *
                           sizeof(float);
    out->stored_bytes = kept * sizeof(float);
    out->read_bytes = kept * sizeof(float);
    out->written_bytes = kept * sizeof(float);
    out->flops = (double)kept * dims->group_size;
    *resident = kept;
}

static void h2o_destroy(void *state)
{
    h2o_state_t *s = state;

    if (!s)
        return;
    free(s->score);
    free(s->keys);
    free(s->observed);
    free(s->scratch);
    free(s);
}

const kvs_policy_i kvs_policy_h2o = {
    .name = "h2o",
    .description = "heavy hitters by accumulated attention plus recent tokens (H2O)",
    .params = h2o_params,
    .create = h2o_create,
    .append = h2o_append,
    .end_prefill = h2o_end_prefill,
    .observe = h2o_observe,
    .stored_bytes = h2o_stored_bytes,
    .cost = h2o_cost,
    .destroy = h2o_destroy,
};
