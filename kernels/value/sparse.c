/*
** sparse.c: top-k and threshold value sums over dense F32 values.
**
** Both keep every value and read only the selected ones at a step, as
** Quest, Loki and SparQ do. The mass of the unselected weights is handled
** by `correction`:
**   renorm  scale the selected sum by total mass / selected mass, i.e.
**           softmax over the selected positions only (top-k attention)
**   mean    add the unselected mass times the mean attended value (SparQ,
**           Ribar et al., arXiv 2312.04985, "mean value reallocation")
**   none    drop it
** When every attended position is selected the sum is the exact one.
*/
#include "value_impl.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef enum sparse_mode_e {
    SPARSE_TOPK = 0,
    SPARSE_THRESHOLD = 1,
    SPARSE_MODE_COUNT
} sparse_mode_e;

typedef enum sparse_correction_e {
    CORRECTION_RENORM = 0,
    CORRECTION_MEAN = 1,
    CORRECTION_NONE = 2,
    CORRECTION_COUNT
} sparse_correction_e;

#define CORRECTION_CHOICES "renorm|mean|none"

typedef struct sparse_codec {
    sparse_mode_e mode;
    kvs_params_t params;
    sparse_correction_e correction;
    float tau;
    kvs_val_store_t store;
    float *scratch;     /* (cap) weights for the selection */
    uint8_t *selected;  /* (cap) */
    double *mean;       /* (d) */
    uint32_t cap;
} sparse_codec_t;

static const kvs_param_doc_t topk_params[] = {
    {"k", KVS_PARAM_BUDGET, "32", 1, 1e9, NULL,
     "positions with the largest weights summed exactly, as a count or a percentage"},
    {"correction", KVS_PARAM_ENUM, "renorm", 0, 0, CORRECTION_CHOICES,
     "mass of the other positions: renormalize, mean value (SparQ) or drop"},
    {NULL, 0, NULL, 0, 0, NULL, NULL},
};

static const kvs_param_doc_t threshold_params[] = {
    {"tau", KVS_PARAM_FLOAT, "0.001", 0, 1, NULL,
     "attention weight below which a position is skipped"},
    {"correction", KVS_PARAM_ENUM, "renorm", 0, 0, CORRECTION_CHOICES,
     "mass of the skipped positions: renormalize, mean value (SparQ) or drop"},
    {NULL, 0, NULL, 0, 0, NULL, NULL},
};

static kvs_status_e sparse_create(sparse_mode_e mode, const kvs_params_t *p,
                                  const kvs_kernel_dims_t *dims, void **state)
{
    sparse_codec_t *c = calloc(1, sizeof *c);
    kvs_status_e rc;

    *state = NULL;
    KVS_RETURN_IF(!c, KVS_ERR_NOMEM, "out of memory for a sparse value codec");
    c->mode = mode;
    c->params = *p;
    c->correction = (sparse_correction_e)kvs_param_number(p, "correction");
    c->tau = mode == SPARSE_THRESHOLD ? (float)kvs_param_number(p, "tau") : 0.0f;
    c->mean = calloc(dims->head_dim, sizeof *c->mean);
    rc = c->mean ? kvs_val_store_init(&c->store, dims->head_dim)
                 : kvs_fail(KVS_ERR_NOMEM, "out of memory for a sparse value codec");
    if (rc != KVS_OK) {
        free(c->mean);
        free(c);
        return rc;
    }
    *state = c;
    return KVS_OK;
}

static kvs_status_e topk_create(const kvs_params_t *p, const kvs_kernel_dims_t *dims,
                                void **state)
{
    return sparse_create(SPARSE_TOPK, p, dims, state);
}

static kvs_status_e threshold_create(const kvs_params_t *p, const kvs_kernel_dims_t *dims,
                                     void **state)
{
    return sparse_create(SPARSE_THRESHOLD, p, dims, state);
}

static void sparse_destroy(void *state)
{
    sparse_codec_t *c = state;

    if (!c)
        return;
    kvs_val_store_free(&c->store);
    free(c->scratch);
    free(c->selected);
    free(c->mean);
    free(c);
}

static kvs_status_e sparse_append(void *state, const float *x, const float *x_pre)
{
    sparse_codec_t *c = state;

    return kvs_val_store_append(&c->store, x);
}

/* The k-th largest of a[0..n), 1 <= k <= n, by quickselect with a Lomuto
** partition; reorders a. */
static float kth_largest(float *a, uint32_t n, uint32_t k)
{
    uint32_t lo = 0, hi = n, target = k - 1;

    while (hi - lo > 1) {
        uint32_t mid = lo + (hi - lo) / 2, store = lo;
        float pivot, t;

        t = a[mid];
        a[mid] = a[hi - 1];
        a[hi - 1] = t;
        pivot = a[hi - 1];

        /* Afterwards a[lo..store) > pivot and a[store + 1..hi) <= pivot. */
        for (uint32_t i = lo; i + 1 < hi; i++) {
            if (a[i] > pivot) {
                t = a[i];
                a[i] = a[store];
                a[store++] = t;
            }
        }
        a[hi - 1] = a[store];
        a[store] = pivot;

        if (target == store)
            return pivot;
        if (target < store)
            hi = store;
        else
            lo = store + 1;
    }
    return a[lo];
}

/* Marks the selected positions for one query; returns how many. */
static uint32_t select_positions(sparse_codec_t *c, const float *w, const uint8_t *attend,
                                 uint32_t n, uint32_t n_attended)
{
    uint32_t count = 0;

    if (c->mode == SPARSE_TOPK) {
        uint32_t k = kvs_param_budget(&c->params, "k", n);
        float kth;
        uint32_t m = 0, ties;

        if (k >= n_attended) {
            memcpy(c->selected, attend, n);
            return n_attended;
        }
        for (uint32_t t = 0; t < n; t++)
            if (attend[t])
                c->scratch[m++] = w[t];
        kth = kth_largest(c->scratch, m, k);

        /* Everything above the k-th weight, then ties in position order. */
        ties = k;
        for (uint32_t t = 0; t < n; t++) {
            c->selected[t] = (uint8_t)(attend[t] && w[t] > kth);
            ties -= c->selected[t];
        }
        count = k - ties;
        for (uint32_t t = 0; t < n && ties; t++) {
            if (attend[t] && w[t] == kth) {
                c->selected[t] = 1;
                ties--;
                count++;
            }
        }
        return count;
    }

    {
        uint32_t best = n;

        for (uint32_t t = 0; t < n; t++) {
            c->selected[t] = (uint8_t)(attend[t] && w[t] >= c->tau);
            count += c->selected[t];
            if (attend[t] && (best == n || w[t] > w[best]))
                best = t;
        }
        /* A threshold above every weight would leave nothing to sum, so the
        ** largest weight is kept. */
        if (count == 0 && best < n) {
            c->selected[best] = 1;
            count = 1;
        }
    }
    return count;
}

static void sparse_output(void *state, const float *w, uint32_t group, const uint8_t *attend,
                          uint32_t n, float *out)
{
    sparse_codec_t *c = state;
    uint32_t d = c->store.d;

    if (n > c->store.n)
        n = c->store.n;
    if (n > c->cap) {
        float *s = realloc(c->scratch, n * sizeof *s);
        uint8_t *sel;

        if (s)
            c->scratch = s;
        sel = realloc(c->selected, n);
        if (sel)
            c->selected = sel;
        if (!s || !sel) {
            for (uint32_t i = 0; i < group * d; i++)
                out[i] = NAN; /* NOTE: out of memory in a void hook shows up as NaN */
            return;
        }
        c->cap = n;
    }

    for (uint32_t g = 0; g < group; g++) {
        const float *wg = w + (size_t)g * n;
        float *o = out + (size_t)g * d;
        uint32_t n_attended = 0, n_selected;
        double mass_total = 0.0, mass_selected = 0.0;

        for (uint32_t t = 0; t < n; t++) {
            if (attend[t]) {
                n_attended++;
                mass_total += wg[t];
            }
        }
        memset(o, 0, d * sizeof *o);
        if (n_attended == 0)
            continue;
        n_selected = select_positions(c, wg, attend, n, n_attended);

        for (uint32_t t = 0; t < n; t++) {
            const float *v = c->store.v + (size_t)t * d;

            if (!c->selected[t])
                continue;
            mass_selected += wg[t];
            for (uint32_t j = 0; j < d; j++)
                o[j] += wg[t] * v[j];
        }
        if (n_selected == n_attended)
            continue;

        if (c->correction == CORRECTION_RENORM && mass_selected > 0.0) {
            float scale = (float)(mass_total / mass_selected);

            for (uint32_t j = 0; j < d; j++)
                o[j] *= scale;
        } else if (c->correction == CORRECTION_MEAN) {
            /* The running sum is the attended sum unless positions were
            ** evicted; then the mean is taken over the attended ones. */
            if (n_attended == c->store.n) {
                for (uint32_t j = 0; j < d; j++)
                    c->mean[j] = c->store.sum[j] / n_attended;
            } else {
                memset(c->mean, 0, d * sizeof *c->mean);
                for (uint32_t t = 0; t < n; t++)
                    if (attend[t])
                        for (uint32_t j = 0; j < d; j++)
                            c->mean[j] += c->store.v[(size_t)t * d + j];
                for (uint32_t j = 0; j < d; j++)
                    c->mean[j] /= n_attended;
            }
            for (uint32_t j = 0; j < d; j++)
                o[j] += (float)((mass_total - mass_selected) * c->mean[j]);
        }
    }
}

static uint64_t sparse_stored_bytes(const void *state)
{
    const sparse_codec_t *c = state;
    uint64_t bytes = (uint64_t)c->store.n * c->store.d * sizeof(float);

    if (c->correction == CORRECTION_MEAN)
        bytes += (uint64_t)c->store.d * sizeof(double);
    return bytes;
}

static void sparse_cost(sparse_mode_e mode, const kvs_params_t *p, const kvs_kernel_dims_t *dims,
                        uint64_t n_context, kvs_part_cost_t *out)
{
    uint32_t d = dims->head_dim;
    uint64_t row = (uint64_t)d * sizeof(float);
    uint64_t n_read = n_context;
    int mean = (int)kvs_param_number(p, "correction") == CORRECTION_MEAN;

    /* NOTE: the threshold mode's read count depends on the weights; the
    ** analytic cost assumes every position passes, an upper bound. */
    if (mode == SPARSE_TOPK) {
        uint32_t k = kvs_param_budget(p, "k", (uint32_t)(n_context > UINT32_MAX ? UINT32_MAX
                                                                                    : n_context));
        if (k < n_read)
            n_read = k;
    }
    memset(out, 0, sizeof *out);
    out->bytes_per_token = (double)row;
    out->stored_bytes = n_context * row + (mean ? (uint64_t)d * sizeof(double) : 0);
    out->read_bytes = n_read * row + (mean ? (uint64_t)d * sizeof(double) : 0);
    /* Per query: one pass over the weights to select, 2 d flops per read
    ** value. */
    out->flops = (double)(dims->group_size ? dims->group_size : 1) *
                 ((double)n_context + 2.0 * (double)n_read * d);
}

static void topk_cost(const kvs_params_t *p, const kvs_kernel_dims_t *dims, unsigned role,
                      uint64_t n_context, kvs_part_cost_t *out)
{
    sparse_cost(SPARSE_TOPK, p, dims, n_context, out);
}

static void threshold_cost(const kvs_params_t *p, const kvs_kernel_dims_t *dims, unsigned role,
                           uint64_t n_context, kvs_part_cost_t *out)
{
    sparse_cost(SPARSE_THRESHOLD, p, dims, n_context, out);
}

const kvs_codec_i kvs_codec_topk = {
    .name = "topk",
    .family = "value",
    .description = "top-k values: exact sum over the k largest attention weights, renormalized "
                   "or with the SparQ mean-value correction",
    .params = topk_params,
    .roles = KVS_CODEC_VALUE | KVS_CODEC_COMPRESSED_EXEC,
    .check = NULL,
    .create = topk_create,
    .append = sparse_append,
    .end_prefill = NULL,
    .logits = NULL,
    .output = sparse_output,
    .stored_bytes = sparse_stored_bytes,
    .cost = topk_cost,
    .is_compressed = NULL,
    .destroy = sparse_destroy,
};

const kvs_codec_i kvs_codec_threshold = {
    .name = "threshold",
    .family = "value",
    .description = "attention-threshold values: skip positions whose weight is below tau",
    .params = threshold_params,
    .roles = KVS_CODEC_VALUE | KVS_CODEC_COMPRESSED_EXEC,
    .check = NULL,
    .create = threshold_create,
    .append = sparse_append,
    .end_prefill = NULL,
    .logits = NULL,
    .output = sparse_output,
    .stored_bytes = sparse_stored_bytes,
    .cost = threshold_cost,
    .is_compressed = NULL,
    .destroy = sparse_destroy,
};
