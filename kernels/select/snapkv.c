/*
** snapkv.c: prompt compression by observation-window attention (SnapKV,
** Li et al., arXiv 2404.14469).
**
** At end_prefill, with a prompt of n positions and budget B (a percentage is
** of the prompt length n):
**
**   1. w = min(window, n_q, n) observation queries, the last w prompt
**      positions, attend causally and exactly over the prompt keys.
**   2. Each prefix position t < n - w scores the sum of the weights the
**      window gives it, averaged over the query heads of the group (GQA), so
**      the kept set is one per KV head.
**   3. Scores are smoothed by 1-D average pooling with `kernel` taps, zero
**      padding of kernel/2 on each side and division by `kernel` (PyTorch
**      avg_pool1d with count_include_pad, as the SnapKV code calls it).
**   4. The top B - w prefix positions by pooled score stay, with the window.
**      When B <= w only the last B positions stay.
**
** Decode positions are never evicted: SnapKV compresses the prompt once.
** A budget of at least the prompt length keeps everything.
*/
#include "select_internal.h"

#include <stdlib.h>
#include <string.h>

typedef struct snapkv_state {
    uint32_t d, group;
    double budget;
    uint32_t window, kernel;
    uint32_t resident;
    int prefill_done;

    float *keys;         /* (n, d) prompt keys until end_prefill; the
                            prefill holds them anyway, so they are not
                            counted as policy state */
    uint32_t key_cap;
} snapkv_state_t;

static const kvs_param_doc_t snapkv_params[] = {
    {"budget", KVS_PARAM_BUDGET, "20%", 1, 1e9, NULL,
     "prompt positions kept, window included: tokens, or percent of the prompt length"},
    {"window", KVS_PARAM_INT, "64", 1, 1e6, NULL,
     "observation window: last prompt queries that score, and positions always kept"},
    {"kernel", KVS_PARAM_INT, "5", 1, 1001, NULL, "average-pooling width over positions (odd)"},
    {NULL, 0, NULL, 0, 0, NULL, NULL},
};

static kvs_status_e snapkv_check(const kvs_params_t *p, const kvs_kernel_dims_t *dims)
{
    double kernel = kvs_param_number(p, "kernel");

    KVS_RETURN_IF((uint32_t)kernel % 2 == 0, KVS_ERR_KERNEL_SPEC,
                  "snapkv kernel=%.0f must be odd so pooling keeps the length; use %.0f",
                  kernel, kernel + 1);
    return KVS_OK;
}

static kvs_status_e snapkv_create(const kvs_params_t *p, const kvs_kernel_dims_t *dims,
                                  void **state)
{
    snapkv_state_t *s = calloc(1, sizeof *s);

    KVS_RETURN_IF(!s, KVS_ERR_NOMEM, "out of memory creating a snapkv policy");
    s->d = dims->head_dim;
    s->group = dims->group_size;
    s->budget = kvs_param_number(p, "budget");
    s->window = (uint32_t)kvs_param_number(p, "window");
    s->kernel = (uint32_t)kvs_param_number(p, "kernel");
    *state = s;
    return KVS_OK;
}

static kvs_status_e snapkv_append(void *state, const float *k, uint8_t *keep, uint32_t n)
{
    snapkv_state_t *s = state;

    s->resident++;
    if (s->prefill_done)
        return KVS_OK;

    KVS_FORWARD(kvs_select_reserve((void **)&s->keys, &s->key_cap, n * s->d, sizeof *s->keys,
                                   "snapkv prompt keys"));
    memcpy(s->keys + (size_t)(n - 1) * s->d, k, s->d * sizeof *k);
    return KVS_OK;
}

typedef struct snapkv_ranked {
    double score;
    uint32_t pos;
} snapkv_ranked_t;

/* Orders prefix positions by pooled score, highest first, oldest on ties. */
static int snapkv_by_score(const void *a, const void *b)
{
    const snapkv_ranked_t *x = a, *y = b;

    if (x->score != y->score)
        return x->score > y->score ? -1 : 1;
    return x->pos < y->pos ? -1 : (x->pos > y->pos);
}

/* Steps 1-2 and 3: pooled[t] for prefix positions t < prefix. */
static kvs_status_e snapkv_score(const snapkv_state_t *s, const float *q_window, uint32_t n_q,
                                 uint32_t n, uint32_t w, double *pooled)
{
    uint32_t prefix = n - w;
    uint32_t half = s->kernel / 2;
    double *score = calloc(prefix, sizeof *score);
    double *weights = malloc((size_t)n * sizeof *weights);
    float *scratch = malloc((size_t)n * sizeof *scratch);

    if (!score || !weights || !scratch) {
        free(score);
        free(weights);
        free(scratch);
        return kvs_fail(KVS_ERR_NOMEM, "out of memory scoring a prompt of %u positions", n);
    }

    for (uint32_t j = 0; j < w; j++) {
        const float *q = q_window + (size_t)(n_q - w + j) * s->group * s->d;

        kvs_select_causal_weights(s->keys, s->d, q, s->group, prefix + j + 1, scratch, weights);
        for (uint32_t t = 0; t < prefix; t++)
            score[t] += weights[t];
    }

    for (uint32_t t = 0; t < prefix; t++) {
        uint32_t lo = t >= half ? t - half : 0;
        uint32_t hi = t + half < prefix ? t + half : prefix - 1;
        double sum = 0;

        for (uint32_t u = lo; u <= hi; u++)
            sum += score[u];
        pooled[t] = sum / s->kernel;
    }

    free(score);
    free(weights);
    free(scratch);
    return KVS_OK;
}

static kvs_status_e snapkv_end_prefill(void *state, const float *q_window, uint32_t n_q,
                                       uint8_t *keep, uint32_t n)
{
    snapkv_state_t *s = state;
    uint32_t budget = kvs_select_budget(s->budget, n);
    uint32_t w = s->window;
    uint32_t prefix;
    double *pooled;
    snapkv_ranked_t *order;
    kvs_status_e rc;

    KVS_RETURN_IF(s->prefill_done, KVS_ERR_INTERNAL, "snapkv end_prefill called twice");
    KVS_RETURN_IF(n_q > n, KVS_ERR_INVALID,
                  "snapkv got %u window queries for a prompt of %u positions; pass at most %u",
                  n_q, n, n);
    KVS_RETURN_IF(n > budget && n_q == 0, KVS_ERR_INVALID,
                  "snapkv needs observation queries at end of prefill, got 0");
    s->prefill_done = 1;

    if (budget >= n) {
        free(s->keys);
        s->keys = NULL;
        return KVS_OK;
    }

    if (w > n_q)
        w = n_q;
    if (budget <= w) {
        for (uint32_t t = 0; t < n - budget; t++)
            keep[t] = 0;
        s->resident -= n - budget;
        free(s->keys);
        s->keys = NULL;
        return KVS_OK;
    }

    prefix = n - w;
    pooled = malloc((size_t)prefix * sizeof *pooled);
    order = malloc((size_t)prefix * sizeof *order);
    if (!pooled || !order) {
        free(pooled);
        free(order);
        return kvs_fail(KVS_ERR_NOMEM, "out of memory scoring a prompt of %u positions", n);
    }
    rc = snapkv_score(s, q_window, n_q, n, w, pooled);
    if (rc == KVS_OK) {
        for (uint32_t t = 0; t < prefix; t++)
            order[t] = (snapkv_ranked_t){pooled[t], t};
        qsort(order, prefix, sizeof *order, snapkv_by_score);
        for (uint32_t r = budget - w; r < prefix; r++)
            keep[order[r].pos] = 0;
        s->resident -= prefix - (budget - w);
    }

    free(pooled);
    free(order);
    free(s->keys);
    s->keys = NULL;
    return rc;
}

static uint64_t snapkv_stored_bytes(const void *state)
{
    /* The kept set is fixed after prefill and stored as the cache itself. */
    return 0;
}

static void snapkv_cost(const kvs_params_t *p, const kvs_kernel_dims_t *dims, uint64_t n_context,
                        kvs_part_cost_t *out, uint64_t *resident)
{
    uint32_t n = n_context > UINT32_MAX ? UINT32_MAX : (uint32_t)n_context;

    *out = (kvs_part_cost_t){0};
    *resident = kvs_select_budget(kvs_param_number(p, "budget"), n);
}

static void snapkv_destroy(void *state)
{
    snapkv_state_t *s = state;

    if (!s)
        return;
    free(s->keys);
    free(s);
}

const kvs_policy_i kvs_policy_snapkv = {
    .name = "snapkv",
    .description = "keeps the prompt positions an observation window attends most (SnapKV)",
    .params = snapkv_params,
    .check = snapkv_check,
    .create = snapkv_create,
    .append = snapkv_append,
    .end_prefill = snapkv_end_prefill,
    .stored_bytes = snapkv_stored_bytes,
    .cost = snapkv_cost,
    .destroy = snapkv_destroy,
};
