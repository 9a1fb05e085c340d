/*
** dense.c: the dense codec, keys or values stored uncompressed in one
** floating-point format (F32, F16, BF16, FP8 E4M3 or E5M2), attention run on
** the decoded rows. Every other kernel is compared with dense F32.
*/
#include "../kernel_impl.h"
#include "../simd.h"
#include "fpformat.h"

#include <stdlib.h>
#include <string.h>

static const kvs_param_doc_t dense_params[] = {
    {"dtype", KVS_PARAM_ENUM, "f32", 0, 0, "f32|f16|bf16|fp8-e4m3|fp8-e5m2",
     "storage format; rounding to nearest even, FP8 saturating (OCP OFP8 1.0)"},
    {NULL, 0, NULL, 0, 0, NULL, NULL},
};

typedef struct dense_state {
    kvs_fp_e fmt;
    uint32_t d;
    size_t row_bytes;
    uint32_t n, cap;
    uint8_t *rows;   /* (cap, d) elements of fmt */
    float *tmp;      /* (d): one decoded row */
} dense_state_t;

static kvs_fp_e dense_format(const kvs_params_t *p)
{
    return (kvs_fp_e)kvs_fp_parse(kvs_param_choice(p, "dtype"));
}

static kvs_status_e dense_create(const kvs_params_t *p, const kvs_kernel_dims_t *dims,
                                 void **state)
{
    dense_state_t *s = calloc(1, sizeof *s);

    KVS_RETURN_IF(!s, KVS_ERR_NOMEM, "out of memory creating a dense codec");
    s->fmt = dense_format(p);
    s->d = dims->head_dim;
    s->row_bytes = kvs_fp_size(s->fmt) * s->d;
    s->tmp = malloc(s->d * sizeof *s->tmp);
    if (!s->tmp) {
        free(s);
        return kvs_fail(KVS_ERR_NOMEM, "out of memory creating a dense codec");
    }
    *state = s;
    return KVS_OK;
}

static void dense_destroy(void *state)
{
    dense_state_t *s = state;

    if (!s)
        return;
    free(s->rows);
    free(s->tmp);
    free(s);
}

static kvs_status_e dense_append(void *state, const float *x, const float *x_pre)
{
    dense_state_t *s = state;

    if (s->n == s->cap) {
        uint32_t cap = s->cap ? s->cap * 2 : 256;
        uint8_t *rows = realloc(s->rows, (size_t)cap * s->row_bytes);
        KVS_RETURN_IF(!rows, KVS_ERR_NOMEM, "out of memory growing a dense cache to %u positions",
                      cap);
        s->rows = rows;
        s->cap = cap;
    }
    kvs_fp_encode(s->fmt, x, s->rows + (size_t)s->n * s->row_bytes, s->d);
    s->n++;
    return KVS_OK;
}

/* Row t as F32: the stored row itself for F32, else decoded into tmp. */
static const float *dense_row(dense_state_t *s, uint32_t t)
{
    const uint8_t *src = s->rows + (size_t)t * s->row_bytes;

    if (s->fmt == KVS_FP_F32)
        return (const float *)src;
    if (s->fmt == KVS_FP_BF16)
        kvs_simd_bf16_row_to_f32((const uint16_t *)src, s->tmp, s->d);
    else
        kvs_fp_decode(s->fmt, src, s->tmp, s->d);
    return s->tmp;
}

static void dense_logits(void *state, const float *q, uint32_t group, const uint8_t *attend,
                         uint32_t n, float *out)
{
    dense_state_t *s = state;

    if (s->fmt == KVS_FP_F32) {
        kvs_simd_logits_f32(q, group, (const float *)s->rows, n, s->d, attend, out, n);
        return;
    }
    if (s->fmt == KVS_FP_BF16) {
        kvs_simd_logits_bf16(q, group, (const uint16_t *)s->rows, n, s->d, attend, out, n);
        return;
    }
    for (uint32_t t = 0; t < n; t++) {
        if (attend[t])
            kvs_simd_dot_rows_f32(q, group, dense_row(s, t), s->d, out + t, n);
    }
}

static void dense_output(void *state, const float *w, uint32_t group, const uint8_t *attend,
                         uint32_t n, float *out)
{
    dense_state_t *s = state;

    if (s->fmt == KVS_FP_F32) {
        kvs_simd_wsum_f32(w, group, n, (const float *)s->rows, n, s->d, attend, out);
        return;
    }
    if (s->fmt == KVS_FP_BF16) {
        kvs_simd_wsum_bf16(w, group, n, (const uint16_t *)s->rows, n, s->d, attend, out);
        return;
    }
    for (uint32_t t = 0; t < n; t++) {
        if (!attend[t])
            continue;
        const float *row = dense_row(s, t);
        for (uint32_t g = 0; g < group; g++)
            kvs_simd_axpy_f32(out + (size_t)g * s->d, w[(size_t)g * n + t], row, s->d);
    }
}

static uint64_t dense_stored_bytes(const void *state)
{
    const dense_state_t *s = state;

    return (uint64_t)s->n * s->row_bytes;
}

static void dense_cost(const kvs_params_t *p, const kvs_kernel_dims_t *dims, unsigned role,
                       uint64_t n_context, kvs_part_cost_t *out)
{
    uint64_t row = kvs_fp_size(dense_format(p)) * dims->head_dim;

    out->bytes_per_token = (double)row;
    out->stored_bytes = n_context * row;
    out->read_bytes = n_context * row;
    out->written_bytes = row;  /* the appended position */
    out->flops = 2.0 * (double)n_context * dims->head_dim * dims->group_size;
}

static const kvs_codec_i dense_codec = {
    .name = "dense",
    .family = "dense",
    .description = "uncompressed keys or values in one floating-point format",
    .params = dense_params,
    .roles = KVS_CODEC_KEY | KVS_CODEC_VALUE,
    .create = dense_create,
    .append = dense_append,
    .logits = dense_logits,
    .output = dense_output,
    .stored_bytes = dense_stored_bytes,
    .cost = dense_cost,
    .destroy = dense_destroy,
};

const kvs_codec_i *const kvs_codecs_dense[] = {&dense_codec, NULL};
