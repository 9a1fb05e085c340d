/*
** affine_store.c: storing positions of an affine-quantized stream: the
** residual window, flushes, re-quantization and byte accounting.
*/
#include "affine_internal.h"
#include "pack.h"

#include "../simd.h"

#include <immintrin.h>

#include <stdlib.h>
#include <string.h>

kvs_status_e kvs_affine_check(const kvs_affine_cfg_t *c)
{
    KVS_RETURN_IF(c->bits != 1 && c->bits != 2 && c->bits != 3 && c->bits != 4 && c->bits != 8,
                  KVS_ERR_KERNEL_SPEC, "bits=%u is not supported; accepted: 1, 2, 3, 4 or 8",
                  c->bits);
    KVS_RETURN_IF(c->group == 0, KVS_ERR_KERNEL_SPEC, "group=0 is not valid; use 1 or more");
    if (c->axis == KVS_AFFINE_AXIS_TOKEN) {
        KVS_RETURN_IF(c->d % c->group != 0, KVS_ERR_KERNEL_SPEC,
                      "group=%u does not divide head_dim %u; with axis=token the group must "
                      "divide head_dim (for example group=%u)",
                      c->group, c->d, c->d);
        return KVS_OK;
    }
    KVS_RETURN_IF(c->flush != KVS_AFFINE_FLUSH_BLOCK, KVS_ERR_KERNEL_SPEC,
                  "axis=channel needs flush=block (positions are quantized in blocks of group "
                  "positions); set flush=block or axis=token");
    KVS_RETURN_IF(c->residual == 0 || c->residual % c->group != 0, KVS_ERR_KERNEL_SPEC,
                  "axis=channel needs residual to be a positive multiple of group; residual=%u "
                  "and group=%u are not (for example residual=%u)",
                  c->residual, c->group, c->group * 4);
    return KVS_OK;
}

kvs_status_e kvs_affine_create(const kvs_affine_cfg_t *cfg, kvs_affine_t **out)
{
    kvs_affine_t *a;

    *out = NULL;
    KVS_FORWARD(kvs_affine_check(cfg));
    a = calloc(1, sizeof *a);
    KVS_RETURN_IF(!a, KVS_ERR_NOMEM, "out of memory creating a quantized cache");
    a->cfg = *cfg;
    a->row_bytes = kvs_pack_row_bytes(cfg->d, cfg->bits);
    a->n_groups = cfg->axis == KVS_AFFINE_AXIS_TOKEN ? cfg->d / cfg->group : cfg->d;
    a->param_size = kvs_fp_size(cfg->param_fmt);
    a->row = malloc(cfg->d * sizeof *a->row);
    a->ps = malloc(cfg->d * sizeof *a->ps);
    a->pm = malloc(cfg->d * sizeof *a->pm);
    if (!a->row || !a->ps || !a->pm) {
        kvs_affine_destroy(a);
        return kvs_fail(KVS_ERR_NOMEM, "out of memory creating a quantized cache");
    }
    *out = a;
    return KVS_OK;
}

void kvs_affine_destroy(kvs_affine_t *a)
{
    if (!a)
        return;
    free(a->codes);
    free(a->params);
    free(a->win);
    free(a->dense);
    free(a->row);
    free(a->ps);
    free(a->pm);
    free(a->qbuf);
    free(a);
}

float *kvs_affine_scratch(kvs_affine_t *a, size_t n)
{
    if (n > a->qbuf_cap) {
        float *p = realloc(a->qbuf, n * sizeof *p);
        if (!p)
            return NULL;
        a->qbuf = p;
        a->qbuf_cap = n;
    }
    return a->qbuf;
}

__attribute__((target("avx2,f16c"))) static void f16_pairs_f16c(const uint16_t *h, uint32_t count,
                                                                float *s, float *m)
{
    uint32_t i = 0;

    for (; i + 4 <= count; i += 4) {
        /* Four (step, offset) pairs: deinterleave after widening. */
        __m256 v = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + 2 * i)));
        __m256 even = _mm256_permutevar8x32_ps(v, _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7));
        _mm_storeu_ps(s + i, _mm256_castps256_ps128(even));
        _mm_storeu_ps(m + i, _mm256_extractf128_ps(even, 1));
    }
    for (; i < count; i++) {
        s[i] = kvs_f16_to_f32(h[2 * i]);
        m[i] = kvs_f16_to_f32(h[2 * i + 1]);
    }
}

void kvs_affine_decode_pairs(const kvs_affine_t *a, const uint8_t *p, uint32_t count, float *s,
                             float *m)
{
    const uint16_t *h = (const uint16_t *)p;

    switch (a->cfg.param_fmt) {
    case KVS_FP_BF16:
        for (uint32_t i = 0; i < count; i++) {
            s[i] = kvs_bf16_to_f32(h[2 * i]);
            m[i] = kvs_bf16_to_f32(h[2 * i + 1]);
        }
        break;
    case KVS_FP_F16:
        if (kvs_simd_f16c()) {
            f16_pairs_f16c(h, count, s, m);
        } else {
            for (uint32_t i = 0; i < count; i++) {
                s[i] = kvs_f16_to_f32(h[2 * i]);
                m[i] = kvs_f16_to_f32(h[2 * i + 1]);
            }
        }
        break;
    default:
        for (uint32_t i = 0; i < count; i++) {
            float pair[2];
            kvs_fp_decode(a->cfg.param_fmt, p + (size_t)i * 2 * a->param_size, pair, 2);
            s[i] = pair[0];
            m[i] = pair[1];
        }
        break;
    }
    if (a->cfg.fit != KVS_FIT_MINMAX) {
        for (uint32_t i = 0; i < count; i++)
            kvs_fit_decode(a->cfg.fit, s[i], m[i], s + i, m + i);
    }
}

/* ---- window ------------------------------------------------------------- */

static kvs_status_e window_push(kvs_affine_t *a, const float *x)
{
    uint32_t d = a->cfg.d;

    if (a->w0 + a->nw == a->wcap) {
        if (a->w0 > 0) {
            memmove(a->win, a->win + (size_t)a->w0 * d, (size_t)a->nw * d * sizeof *a->win);
            a->w0 = 0;
        } else {
            uint32_t cap = a->wcap ? a->wcap * 2 : (a->cfg.residual > 64 ? 2 * a->cfg.residual : 128);
            float *w = realloc(a->win, (size_t)cap * d * sizeof *w);
            KVS_RETURN_IF(!w, KVS_ERR_NOMEM, "out of memory growing a quantized cache window to %u "
                          "positions", cap);
            a->win = w;
            a->wcap = cap;
        }
    }
    float *row = a->win + (size_t)(a->w0 + a->nw) * d;
    for (uint32_t j = 0; j < d; j++)
        row[j] = kvs_fp_round(a->cfg.window_fmt, x[j]);
    a->nw++;
    return KVS_OK;
}

static void window_pop(kvs_affine_t *a, uint32_t k)
{
    a->w0 += k;
    a->nw -= k;
    if (a->nw == 0)
        a->w0 = 0;
}

/* ---- quantization ------------------------------------------------------- */

static kvs_status_e reserve_quantized(kvs_affine_t *a, uint32_t extra)
{
    uint64_t need = (uint64_t)a->nq + extra;

    KVS_RETURN_IF(need > UINT32_MAX, KVS_ERR_INVALID, "quantized cache exceeds 2^32 positions");
    if (need <= a->qcap)
        return KVS_OK;
    uint64_t cap = a->qcap ? a->qcap : 256;
    while (cap < need)
        cap *= 2;
    size_t pair_bytes = 2 * a->param_size;
    size_t param_rows = a->cfg.axis == KVS_AFFINE_AXIS_TOKEN
                            ? (size_t)cap * a->n_groups
                            : (size_t)(cap / a->cfg.group + 1) * a->cfg.d;
    uint8_t *codes = realloc(a->codes, (size_t)cap * a->row_bytes);
    KVS_RETURN_IF(!codes, KVS_ERR_NOMEM, "out of memory growing a quantized cache");
    a->codes = codes;
    uint8_t *params = realloc(a->params, param_rows * pair_bytes);
    KVS_RETURN_IF(!params, KVS_ERR_NOMEM, "out of memory growing a quantized cache");
    a->params = params;
    a->qcap = (uint32_t)cap;
    return KVS_OK;
}

static void store_pairs(kvs_affine_t *a, uint8_t *dst, const float *pa, const float *pb,
                        uint32_t count)
{
    for (uint32_t i = 0; i < count; i++) {
        float pair[2] = {pa[i], pb[i]};
        kvs_fp_encode(a->cfg.param_fmt, pair, dst + (size_t)i * 2 * a->param_size, 2);
    }
}

/* Appends m positions x (m, d) to the quantized store as one fit call (the
** HQQ solver's early stop looks at all of them together). For the channel
** axis m is a multiple of group and nq is block aligned. */
static kvs_status_e quantize_rows(kvs_affine_t *a, const float *x, uint32_t m)
{
    const kvs_affine_cfg_t *c = &a->cfg;
    uint32_t d = c->d;
    size_t n = (size_t)m * d;
    size_t n_pairs = c->axis == KVS_AFFINE_AXIS_TOKEN ? n / c->group : (size_t)(m / c->group) * d;

    if (m == 0)
        return KVS_OK;
    KVS_FORWARD(reserve_quantized(a, m));
    uint8_t *codes = malloc(n);
    float *pa = malloc(n_pairs * sizeof *pa), *pb = malloc(n_pairs * sizeof *pb);
    float *tx = c->axis == KVS_AFFINE_AXIS_CHANNEL ? malloc(n * sizeof *tx) : NULL;
    uint8_t *tcodes = c->axis == KVS_AFFINE_AXIS_CHANNEL ? malloc(n) : NULL;
    int ok = codes && pa && pb && (c->axis == KVS_AFFINE_AXIS_TOKEN || (tx && tcodes));

    if (ok && c->axis == KVS_AFFINE_AXIS_TOKEN) {
        ok = kvs_fit_groups(c->fit, &c->hqq, c->bits, c->param_fmt, x, (uint32_t)n_pairs,
                            c->group, codes, pa, pb) == 0;
    } else if (ok) {
        /* Each block (group positions, d channels) is transposed so that a
        ** channel's positions are contiguous, fitted, and transposed back. */
        uint32_t g = c->group;
        for (uint32_t b = 0; b < m / g; b++) {
            for (uint32_t t = 0; t < g; t++)
                for (uint32_t j = 0; j < d; j++)
                    tx[(size_t)b * g * d + (size_t)j * g + t] = x[((size_t)b * g + t) * d + j];
        }
        ok = kvs_fit_groups(c->fit, &c->hqq, c->bits, c->param_fmt, tx, (uint32_t)n_pairs, g,
                            tcodes, pa, pb) == 0;
        for (uint32_t b = 0; ok && b < m / g; b++) {
            for (uint32_t t = 0; t < g; t++)
                for (uint32_t j = 0; j < d; j++)
                    codes[((size_t)b * g + t) * d + j] = tcodes[(size_t)b * g * d + (size_t)j * g + t];
        }
    }
    if (ok) {
        for (uint32_t t = 0; t < m; t++)
            kvs_pack_row(codes + (size_t)t * d, d, c->bits,
                         a->codes + (size_t)(a->nq + t) * a->row_bytes);
        size_t first_pair = c->axis == KVS_AFFINE_AXIS_TOKEN ? (size_t)a->nq * a->n_groups
                                                             : (size_t)(a->nq / c->group) * d;
        store_pairs(a, a->params + first_pair * 2 * a->param_size, pa, pb, (uint32_t)n_pairs);
        a->nq += m;
    }
    free(codes);
    free(pa);
    free(pb);
    free(tx);
    free(tcodes);
    KVS_RETURN_IF(!ok, KVS_ERR_NOMEM, "out of memory quantizing %u positions", m);
    return KVS_OK;
}

/* Quantizes the k oldest window positions and drops them from the window. */
static kvs_status_e flush_oldest(kvs_affine_t *a, uint32_t k)
{
    KVS_FORWARD(quantize_rows(a, a->win + (size_t)a->w0 * a->cfg.d, k));
    window_pop(a, k);
    return KVS_OK;
}

/* Dequantizes everything, joins the window and quantizes all of it again.
** Hugging Face dequantizes into the model dtype before re-quantizing, so
** the decoded values are rounded to the window format first. With F32
** decoding, per-position groups would reproduce the same codes exactly. */
static kvs_status_e requantize_all(kvs_affine_t *a)
{
    uint32_t d = a->cfg.d, n = a->nq + a->nw;
    float *all = malloc((size_t)n * d * sizeof *all);

    KVS_RETURN_IF(!all, KVS_ERR_NOMEM, "out of memory re-quantizing %u positions", n);
    for (uint32_t t = 0; t < a->nq; t++) {
        float *row = all + (size_t)t * d;
        kvs_affine_decode_token(a, t, row);
        for (uint32_t j = 0; j < d; j++)
            row[j] = kvs_fp_round(a->cfg.window_fmt, row[j]);
    }
    memcpy(all + (size_t)a->nq * d, a->win + (size_t)a->w0 * d, (size_t)a->nw * d * sizeof *all);
    a->nq = 0;
    window_pop(a, a->nw);
    kvs_status_e rc = quantize_rows(a, all, n);
    free(all);
    a->n_requant++;
    return rc;
}

/* Applies the flush mode after an append (decode) or at end of prefill. */
static kvs_status_e flush(kvs_affine_t *a, int at_prefill)
{
    uint32_t r = a->cfg.residual;

    switch (a->cfg.flush) {
    case KVS_AFFINE_FLUSH_SLIDING:
        if (a->nw > r)
            KVS_FORWARD(flush_oldest(a, a->nw - r));
        break;
    case KVS_AFFINE_FLUSH_BLOCK:
        if (r == 0)
            KVS_FORWARD(flush_oldest(a, a->nw));
        else if (a->nw >= r)
            KVS_FORWARD(flush_oldest(a, a->nw / r * r));
        break;
    case KVS_AFFINE_FLUSH_REQUANT:
        if (at_prefill)
            KVS_FORWARD(flush_oldest(a, a->nw));
        else if (a->nw >= r && a->nw > 0)
            KVS_FORWARD(requantize_all(a));
        break;
    default:
        return kvs_fail(KVS_ERR_INTERNAL, "unknown flush mode %d", (int)a->cfg.flush);
    }
    return KVS_OK;
}

kvs_status_e kvs_affine_append(kvs_affine_t *a, const float *x)
{
    KVS_FORWARD(window_push(a, x));
    if (a->prefill_done)
        KVS_FORWARD(flush(a, 0));
    return KVS_OK;
}

kvs_status_e kvs_affine_end_prefill(kvs_affine_t *a)
{
    a->prefill_done = 1;
    return flush(a, 1);
}

/* ---- inspection and accounting ----------------------------------------- */

uint32_t kvs_affine_n_tokens(const kvs_affine_t *a)
{
    return a->nq + a->nw;
}

uint32_t kvs_affine_n_quantized(const kvs_affine_t *a)
{
    return a->nq;
}

uint32_t kvs_affine_window_len(const kvs_affine_t *a)
{
    return a->nw;
}

uint64_t kvs_affine_n_requant(const kvs_affine_t *a)
{
    return a->n_requant;
}

void kvs_affine_decode_token(const kvs_affine_t *a, uint32_t t, float *out)
{
    const kvs_affine_cfg_t *c = &a->cfg;

    if (t >= a->nq) {
        memcpy(out, a->win + (size_t)(a->w0 + t - a->nq) * c->d, c->d * sizeof *out);
        return;
    }
    kvs_unpack_row_ref(a->codes + (size_t)t * a->row_bytes, c->d, c->bits, out);
    const uint8_t *p = kvs_affine_params_at(a, t);
    for (uint32_t j = 0; j < c->d; j++) {
        uint32_t pair = c->axis == KVS_AFFINE_AXIS_TOKEN ? j / c->group : j;
        float s, m;
        kvs_affine_decode_pairs(a, p + (size_t)pair * 2 * a->param_size, 1, &s, &m);
        out[j] = out[j] * s + m;
    }
}

float kvs_affine_step(const kvs_affine_t *a, uint32_t t, uint32_t j)
{
    const kvs_affine_cfg_t *c = &a->cfg;
    float s, m;

    if (t >= a->nq)
        return 0.0f;
    uint32_t pair = c->axis == KVS_AFFINE_AXIS_TOKEN ? j / c->group : j;
    kvs_affine_decode_pairs(a, kvs_affine_params_at(a, t) + (size_t)pair * 2 * a->param_size, 1,
                            &s, &m);
    return s;
}

static uint64_t param_bytes(const kvs_affine_cfg_t *c, uint64_t nq)
{
    uint64_t pairs = c->axis == KVS_AFFINE_AXIS_TOKEN ? nq * (c->d / c->group)
                                                      : (nq / c->group) * c->d;
    return pairs * 2 * kvs_fp_size(c->param_fmt);
}

uint64_t kvs_affine_stored_bytes(const kvs_affine_t *a)
{
    const kvs_affine_cfg_t *c = &a->cfg;

    return (uint64_t)a->nq * a->row_bytes + param_bytes(c, a->nq) +
           (uint64_t)a->nw * c->d * kvs_fp_size(c->window_fmt);
}

void kvs_affine_cost(const kvs_affine_cfg_t *c, uint32_t query_group, uint64_t n,
                     kvs_part_cost_t *out)
{
    uint64_t r = c->residual, nw;
    uint64_t row = kvs_pack_row_bytes(c->d, c->bits);
    uint64_t win_row = (uint64_t)c->d * kvs_fp_size(c->window_fmt);

    /* Window length right after a prefill of n positions (see flush()). */
    if (c->flush == KVS_AFFINE_FLUSH_SLIDING)
        nw = n < r ? n : r;
    else if (c->flush == KVS_AFFINE_FLUSH_BLOCK)
        nw = r ? n % r : 0;
    else
        nw = 0;
    uint64_t nq = n - nw;

    uint64_t codes = nq * row, params = param_bytes(c, nq), window = nw * win_row;
    out->bytes_per_token = (double)row + (double)param_bytes(c, c->axis == KVS_AFFINE_AXIS_TOKEN
                                                                    ? 1
                                                                    : c->group) /
                                             (c->axis == KVS_AFFINE_AXIS_TOKEN ? 1.0 : c->group);
    out->stored_bytes = codes + params + window;
    out->read_bytes = codes + params + window;
    out->written_bytes = win_row;  /* the appended position enters the window */
    out->flops = 2.0 * (double)n * c->d * query_group + 2.0 * (double)nq * c->d;
    /* NOTE: with flush=requant, every `residual` steps one step also
    ** dequantizes and re-quantizes the whole cache; that traffic is not in
    ** these per-step figures (kvsim bench shows it in the mean append). */
    if (!c->compressed) {
        /* Storage-only: the dense copy of all n positions (in the window
        ** format, the compute dtype of a Hugging Face model in BF16) is
        ** written, then read again by dense attention. */
        out->written_bytes += n * win_row;
        out->read_bytes += n * win_row;
    }
}
