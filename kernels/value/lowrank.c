/*
** lowrank.c: values stored as rank-r latents z_t = B^T v_t, with B the top
** r right singular vectors of the prompt's value matrix (the eigenvectors
** of V^T V), fitted once at the end of the prompt; Palu caches value
** latents the same way. Prompt and decode values alike are
** projected. A step sums w_t z_t (O(n r)) and maps the sum back with one
** B product, so r = d reproduces the exact output up to rounding.
*/
#include "value_impl.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct lowrank_codec {
    uint32_t d, r;
    int fitted;
    kvs_val_store_t pending;  /* prompt values until the basis is fitted */
    float *basis;             /* (d, r): column c is the c-th basis vector */
    float *latent;            /* (n, r) */
    uint32_t n, cap;
    float *z;                 /* (r) */
} lowrank_codec_t;

static const kvs_param_doc_t lowrank_params[] = {
    {"rank", KVS_PARAM_INT, "16", 1, 4096, NULL, "latent dimension r per value (at most d)"},
    {NULL, 0, NULL, 0, 0, NULL, NULL},
};

static kvs_status_e lowrank_check(const kvs_params_t *p, const kvs_kernel_dims_t *dims)
{
    uint32_t r = (uint32_t)kvs_param_number(p, "rank");

    KVS_RETURN_IF(r > dims->head_dim, KVS_ERR_KERNEL_SPEC,
                  "lowrank: rank=%u exceeds head_dim %u; use rank <= %u", r, dims->head_dim,
                  dims->head_dim);
    return KVS_OK;
}

static void lowrank_destroy(void *state)
{
    lowrank_codec_t *c = state;

    if (!c)
        return;
    kvs_val_store_free(&c->pending);
    free(c->basis);
    free(c->latent);
    free(c->z);
    free(c);
}

static kvs_status_e lowrank_create(const kvs_params_t *p, const kvs_kernel_dims_t *dims,
                                   void **state)
{
    lowrank_codec_t *c;
    kvs_status_e rc;

    *state = NULL;
    KVS_FORWARD(lowrank_check(p, dims));
    c = calloc(1, sizeof *c);
    KVS_RETURN_IF(!c, KVS_ERR_NOMEM, "out of memory for a low-rank value codec");
    c->d = dims->head_dim;
    c->r = (uint32_t)kvs_param_number(p, "rank");
    c->basis = calloc((size_t)c->d * c->r, sizeof *c->basis);
    c->z = calloc(c->r, sizeof *c->z);
    rc = (c->basis && c->z) ? kvs_val_store_init(&c->pending, c->d)
                            : kvs_fail(KVS_ERR_NOMEM, "out of memory for a low-rank value codec");
    if (rc != KVS_OK) {
        lowrank_destroy(c);
        return rc;
    }
    *state = c;
    return KVS_OK;
}

static kvs_status_e push_latent(lowrank_codec_t *c, const float *v)
{
    float *z;

    if (c->n == c->cap) {
        uint32_t cap = c->cap ? 2 * c->cap : 64;
        float *grown = realloc(c->latent, (size_t)cap * c->r * sizeof *grown);

        KVS_RETURN_IF(!grown, KVS_ERR_NOMEM, "out of memory after %u low-rank values", c->n);
        c->latent = grown;
        c->cap = cap;
    }
    z = c->latent + (size_t)c->n * c->r;
    for (uint32_t k = 0; k < c->r; k++) {
        float s = 0.0f;

        for (uint32_t j = 0; j < c->d; j++)
            s += c->basis[(size_t)j * c->r + k] * v[j];
        z[k] = s;
    }
    c->n++;
    return KVS_OK;
}

/* Fits the basis on the pending prompt values and projects them. */
static kvs_status_e fit(lowrank_codec_t *c)
{
    uint32_t d = c->d;
    double *cov, *values, *vecs;
    kvs_status_e rc;

    if (c->fitted)
        return KVS_OK;
    cov = calloc((size_t)d * d, sizeof *cov);
    values = calloc(d, sizeof *values);
    vecs = calloc((size_t)d * d, sizeof *vecs);
    if (!cov || !values || !vecs) {
        free(cov);
        free(values);
        free(vecs);
        return kvs_fail(KVS_ERR_NOMEM, "out of memory fitting a %ux%u value basis", d, d);
    }
    for (uint32_t t = 0; t < c->pending.n; t++) {
        const float *v = c->pending.v + (size_t)t * d;

        for (uint32_t i = 0; i < d; i++)
            for (uint32_t j = i; j < d; j++)
                cov[i * d + j] += (double)v[i] * v[j];
    }
    for (uint32_t i = 0; i < d; i++)
        for (uint32_t j = 0; j < i; j++)
            cov[i * d + j] = cov[j * d + i];

    rc = kvs_val_symmetric_eigen(cov, d, values, vecs);
    if (rc == KVS_OK) {
        for (uint32_t j = 0; j < d; j++)
            for (uint32_t k = 0; k < c->r; k++)
                c->basis[(size_t)j * c->r + k] = (float)vecs[j * d + k];
        c->fitted = 1;
        for (uint32_t t = 0; t < c->pending.n && rc == KVS_OK; t++)
            rc = push_latent(c, c->pending.v + (size_t)t * d);
        kvs_val_store_free(&c->pending);
    }
    free(cov);
    free(values);
    free(vecs);
    return rc;
}

static kvs_status_e lowrank_append(void *state, const float *x, const float *x_pre)
{
    lowrank_codec_t *c = state;

    if (!c->fitted)
        return kvs_val_store_append(&c->pending, x);
    for (uint32_t j = 0; j < c->d; j++)
        KVS_RETURN_IF(!isfinite(x[j]), KVS_ERR_NONFINITE,
                      "lowrank: value %u has a non-finite coordinate %u; check the trace for NaN "
                      "or Inf",
                      c->n, j);
    return push_latent(c, x);
}

static kvs_status_e lowrank_end_prefill(void *state)
{
    return fit(state);
}

static void lowrank_output(void *state, const float *w, uint32_t group, const uint8_t *attend,
                           uint32_t n, float *out)
{
    lowrank_codec_t *c = state;

    if (fit(c) != KVS_OK) {
        for (uint32_t i = 0; i < group * c->d; i++)
            out[i] = NAN; /* NOTE: a failure inside a void hook shows up as NaN */
        return;
    }
    if (n > c->n)
        n = c->n;
    for (uint32_t g = 0; g < group; g++) {
        const float *wg = w + (size_t)g * n;
        float *o = out + (size_t)g * c->d;

        memset(c->z, 0, c->r * sizeof *c->z);
        for (uint32_t t = 0; t < n; t++) {
            const float *zt = c->latent + (size_t)t * c->r;

            if (!attend[t] || wg[t] == 0.0f)
                continue;
            for (uint32_t k = 0; k < c->r; k++)
                c->z[k] += wg[t] * zt[k];
        }
        for (uint32_t j = 0; j < c->d; j++) {
            const float *b = c->basis + (size_t)j * c->r;
            float s = 0.0f;

            for (uint32_t k = 0; k < c->r; k++)
                s += b[k] * c->z[k];
            o[j] = s;
        }
    }
}

static uint64_t lowrank_stored_bytes(const void *state)
{
    const lowrank_codec_t *c = state;

    return ((uint64_t)c->pending.n * c->d + (uint64_t)c->n * c->r + (uint64_t)c->d * c->r) *
           sizeof(float);
}

static void lowrank_cost(const kvs_params_t *p, const kvs_kernel_dims_t *dims, unsigned role,
                         uint64_t n_context, kvs_part_cost_t *out)
{
    uint64_t r = (uint64_t)kvs_param_number(p, "rank");
    uint64_t d = dims->head_dim;

    memset(out, 0, sizeof *out);
    out->bytes_per_token = (double)(r * sizeof(float));
    /* The basis is fitted per stream, so it is not shared. */
    out->stored_bytes = (n_context * r + d * r) * sizeof(float);
    out->read_bytes = out->stored_bytes;
    out->flops = (double)(dims->group_size ? dims->group_size : 1) *
                 (2.0 * (double)n_context * r + 2.0 * (double)r * d);
}

const kvs_codec_i kvs_codec_lowrank = {
    .name = "lowrank",
    .family = "value",
    .description = "low-rank values: rank-r latents on a basis fitted to the prompt's values by "
                   "SVD",
    .params = lowrank_params,
    .roles = KVS_CODEC_VALUE | KVS_CODEC_COMPRESSED_EXEC,
    .check = lowrank_check,
    .create = lowrank_create,
    .append = lowrank_append,
    .end_prefill = lowrank_end_prefill,
    .logits = NULL,
    .output = lowrank_output,
    .stored_bytes = lowrank_stored_bytes,
    .cost = lowrank_cost,
    .is_compressed = NULL,
    .destroy = lowrank_destroy,
};
