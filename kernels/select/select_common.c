/*
** select_common.c: budget resolution, buffers, eviction by score and the
** exact causal attention that prefill-time policies score with.
*/
#include "select_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

uint32_t kvs_select_budget(double value, uint32_t n)
{
    double tokens;

    if (n == 0)
        return 0;

    /* The small offset keeps products such as 0.29 * 100 = 28.999999999999996
    ** from rounding down a whole token. */
    tokens = value < 0 ? floor(-value * (double)n + 1e-6) : floor(value);
    if (tokens < 1)
        return 1;
    if (tokens >= (double)n)
        return n;
    return (uint32_t)tokens;
}

double kvs_select_resident_slope(double value, uint32_t n)
{
    if (value < 0)
        return -value;
    return (double)n < value ? 1.0 : 0.0;
}

kvs_status_e kvs_select_reserve(void **buf, uint32_t *cap, uint32_t need, size_t elem,
                                const char *what)
{
    uint32_t new_cap;
    void *grown;

    if (need <= *cap)
        return KVS_OK;

    new_cap = *cap ? *cap : 64;
    while (new_cap < need)
        new_cap = new_cap > UINT32_MAX / 2 ? need : new_cap * 2;
    grown = realloc(*buf, (size_t)new_cap * elem);
    KVS_RETURN_IF(!grown, KVS_ERR_NOMEM, "out of memory growing %s to %u positions", what,
                  new_cap);

    memset((char *)grown + (size_t)*cap * elem, 0, (size_t)(new_cap - *cap) * elem);
    *buf = grown;
    *cap = new_cap;
    return KVS_OK;
}

void kvs_select_causal_weights(const float *keys, uint32_t d, const float *q, uint32_t group,
                               uint32_t n_visible, float *scratch, double *w)
{
    const double scale = 1.0 / sqrt((double)d);

    memset(w, 0, (size_t)n_visible * sizeof *w);
    for (uint32_t g = 0; g < group; g++) {
        const float *qg = q + (size_t)g * d;
        float max_logit = -INFINITY;
        double sum = 0;

        for (uint32_t t = 0; t < n_visible; t++) {
            const float *k = keys + (size_t)t * d;
            double dot = 0;

            for (uint32_t i = 0; i < d; i++)
                dot += (double)qg[i] * k[i];
            scratch[t] = (float)(dot * scale);
            if (scratch[t] > max_logit)
                max_logit = scratch[t];
        }
        for (uint32_t t = 0; t < n_visible; t++)
            sum += exp((double)scratch[t] - max_logit);
        for (uint32_t t = 0; t < n_visible; t++)
            w[t] += exp((double)scratch[t] - max_logit) / sum / group;
    }
}

uint32_t kvs_select_lowest(const double *score, const uint8_t *keep, uint32_t lo, uint32_t hi)
{
    uint32_t best = UINT32_MAX;

    for (uint32_t t = lo; t < hi; t++) {
        if (keep[t] && (best == UINT32_MAX || score[t] < score[best]))
            best = t;
    }
    return best;
}

typedef struct select_ranked {
    double score;
    uint32_t pos;
} select_ranked_t;

/* Orders by score, lowest first, oldest on ties. */
static int select_by_score(const void *a, const void *b)
{
    const select_ranked_t *x = a, *y = b;

    if (x->score != y->score)
        return x->score < y->score ? -1 : 1;
    return x->pos < y->pos ? -1 : (x->pos > y->pos);
}

uint32_t kvs_select_evict_lowest(const double *score, uint8_t *keep, uint32_t lo, uint32_t hi,
                                 uint32_t count)
{
    select_ranked_t *ranked = NULL;
    uint32_t n_ranked = 0, evicted = 0;

    if (count > 1 && hi > lo)
        ranked = malloc((size_t)(hi - lo) * sizeof *ranked);

    /* One eviction, or no memory to sort: repeated scans choose the same. */
    if (!ranked) {
        while (evicted < count) {
            uint32_t victim = kvs_select_lowest(score, keep, lo, hi);

            if (victim == UINT32_MAX)
                break;
            keep[victim] = 0;
            evicted++;
        }
        return evicted;
    }

    for (uint32_t t = lo; t < hi; t++) {
        if (keep[t])
            ranked[n_ranked++] = (select_ranked_t){score[t], t};
    }
    qsort(ranked, n_ranked, sizeof *ranked, select_by_score);
    for (; evicted < count && evicted < n_ranked; evicted++)
        keep[ranked[evicted].pos] = 0;
    free(ranked);
    return evicted;
}
