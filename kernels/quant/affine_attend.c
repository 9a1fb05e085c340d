/*
** affine_attend.c: attention over an affine-quantized stream, in both
** execution modes (storage-only and compressed; see affine.h).
*/
#include "affine_internal.h"
#include "pack.h"

#include "../simd.h"

#include <immintrin.h>
#include <stdlib.h>
#include <string.h>

static int any_attended(const uint8_t *attend, uint32_t first, uint32_t end)
{
    for (uint32_t t = first; t < end; t++) {
        if (attend[t])
            return 1;
    }
    return 0;
}

__attribute__((target("avx2,fma"))) static void scale_shift_avx2(float *x, float s, float m,
                                                                 uint32_t n)
{
    __m256 vs = _mm256_set1_ps(s), vm = _mm256_set1_ps(m);
    uint32_t i = 0;

    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(x + i, _mm256_fmadd_ps(_mm256_loadu_ps(x + i), vs, vm));
    for (; i < n; i++)
        x[i] = x[i] * s + m;
}

/* x[i] = x[i] * s + m. */
static void scale_shift(float *x, float s, float m, uint32_t n)
{
    if (kvs_simd_avx2()) {
        scale_shift_avx2(x, s, m, n);
        return;
    }
    for (uint32_t i = 0; i < n; i++)
        x[i] = x[i] * s + m;
}

/* Decodes the parameter pairs that apply to position t into a->ps, a->pm:
** n_groups pairs (token axis) or the block's d pairs (channel axis). */
static void load_params(kvs_affine_t *a, uint32_t t)
{
    uint32_t count = a->cfg.axis == KVS_AFFINE_AXIS_TOKEN ? a->n_groups : a->cfg.d;

    kvs_affine_decode_pairs(a, kvs_affine_params_at(a, t), count, a->ps, a->pm);
}

/* Writes the quantized positions and then the window rows, all decoded,
** into a->dense: the storage-only path's dense copy. Returns NULL when out
** of memory. */
static const float *dense_copy(kvs_affine_t *a)
{
    const kvs_affine_cfg_t *c = &a->cfg;
    uint32_t d = c->d, gs = c->group;
    size_t need = (size_t)(a->nq + a->nw) * d;

    if (need > a->dense_cap) {
        float *p = realloc(a->dense, need * sizeof *p);
        if (!p)
            return NULL;
        a->dense = p;
        a->dense_cap = need;
    }
    for (uint32_t t = 0; t < a->nq; t++) {
        float *row = a->dense + (size_t)t * d;
        int block_start = c->axis == KVS_AFFINE_AXIS_CHANNEL && t % gs == 0;
        if (c->axis == KVS_AFFINE_AXIS_TOKEN || block_start)
            load_params(a, t);
        kvs_unpack_row(a->codes + (size_t)t * a->row_bytes, d, c->bits, row);
        if (c->axis == KVS_AFFINE_AXIS_TOKEN) {
            for (uint32_t k = 0; k < a->n_groups; k++)
                scale_shift(row + (size_t)k * gs, a->ps[k], a->pm[k], gs);
        } else {
            for (uint32_t j = 0; j < d; j++)
                row[j] = row[j] * a->ps[j] + a->pm[j];
        }
    }
    memcpy(a->dense + (size_t)a->nq * d, a->win + (size_t)a->w0 * d,
           (size_t)a->nw * d * sizeof *a->dense);
    return a->dense;
}

/* ---- logits ------------------------------------------------------------- */

static void logits_window(kvs_affine_t *a, const float *q, uint32_t group, const uint8_t *attend,
                          uint32_t n, float *out)
{
    for (uint32_t i = 0; i < a->nw; i++) {
        uint32_t t = a->nq + i;
        if (attend[t])
            kvs_simd_dot_rows_f32(q, group, a->win + (size_t)(a->w0 + i) * a->cfg.d, a->cfg.d, out + t,
                             n);
    }
}

/* Token axis: logit = sum_k s_k (q_k . u_k) + m_k sum(q_k) over the
** position's groups k. The query is split into per-group copies so that
** each group's dot products run over contiguous rows. */
static int logits_codes_token(kvs_affine_t *a, const float *q, uint32_t group,
                              const uint8_t *attend, uint32_t n, float *out)
{
    uint32_t d = a->cfg.d, gs = a->cfg.group, ng = a->n_groups;
    float *qseg = kvs_affine_scratch(a, (size_t)group * d + (size_t)group * ng * 2);

    if (!qseg)
        return -1;
    float *qsum = qseg + (size_t)group * d;   /* (group, ng) */
    float *dots = qsum + (size_t)group * ng;  /* (group) per group k */
    for (uint32_t k = 0; k < ng; k++) {
        for (uint32_t g = 0; g < group; g++) {
            float *dst = qseg + ((size_t)k * group + g) * gs;
            memcpy(dst, q + (size_t)g * d + (size_t)k * gs, gs * sizeof *dst);
            float s = 0.0f;
            for (uint32_t j = 0; j < gs; j++)
                s += dst[j];
            qsum[(size_t)g * ng + k] = s;
        }
    }

    for (uint32_t t = 0; t < a->nq; t++) {
        if (!attend[t])
            continue;
        kvs_unpack_row(a->codes + (size_t)t * a->row_bytes, d, a->cfg.bits, a->row);
        load_params(a, t);
        for (uint32_t g = 0; g < group; g++)
            out[(size_t)g * n + t] = 0.0f;
        for (uint32_t k = 0; k < ng; k++) {
            kvs_simd_dot_rows_f32(qseg + (size_t)k * group * gs, group, a->row + (size_t)k * gs, gs,
                             dots, 1);
            for (uint32_t g = 0; g < group; g++)
                out[(size_t)g * n + t] += a->ps[k] * dots[g] + a->pm[k] * qsum[(size_t)g * ng + k];
        }
    }
    return 0;
}

/* Channel axis: per block, q'_c = q_c s_c and a constant sum_c q_c m_c, so
** each position's logit is one dot product of q' with its codes. */
static int logits_codes_channel(kvs_affine_t *a, const float *q, uint32_t group,
                                const uint8_t *attend, uint32_t n, float *out)
{
    uint32_t d = a->cfg.d, gs = a->cfg.group;
    float *qs = kvs_affine_scratch(a, (size_t)group * d + group);

    if (!qs)
        return -1;
    float *cst = qs + (size_t)group * d;
    for (uint32_t b0 = 0; b0 < a->nq; b0 += gs) {
        if (!any_attended(attend, b0, b0 + gs))
            continue;
        load_params(a, b0);
        for (uint32_t g = 0; g < group; g++) {
            const float *qg = q + (size_t)g * d;
            float c = 0.0f;
            for (uint32_t j = 0; j < d; j++) {
                qs[(size_t)g * d + j] = qg[j] * a->ps[j];
                c += qg[j] * a->pm[j];
            }
            cst[g] = c;
        }
        if (kvs_affine_fused_channel_ok(a)) {
            for (uint32_t g0 = 0; g0 < group; g0 += 4)
                kvs_affine_fused_block_logits(a, qs + (size_t)g0 * d,
                                              group - g0 < 4 ? group - g0 : 4, cst + g0, attend,
                                              b0, b0 + gs, n, out + (size_t)g0 * n);
            continue;
        }
        for (uint32_t t = b0; t < b0 + gs; t++) {
            if (!attend[t])
                continue;
            kvs_unpack_row(a->codes + (size_t)t * a->row_bytes, d, a->cfg.bits, a->row);
            kvs_simd_dot_rows_f32(qs, group, a->row, d, out + t, n);
            for (uint32_t g = 0; g < group; g++)
                out[(size_t)g * n + t] += cst[g];
        }
    }
    return 0;
}

/* Fused AVX2 path of logits_codes_token (affine_fused.c). */
static int logits_fused(kvs_affine_t *a, const float *q, uint32_t group, const uint8_t *attend,
                        uint32_t n, float *out)
{
    uint32_t d = a->cfg.d, gs = a->cfg.group, ng = a->n_groups;
    size_t per = (size_t)a->nq * ng;
    float *s = kvs_affine_scratch(a, 2 * per + (size_t)group * ng);

    if (!s)
        return -1;
    float *m = s + per, *qsum = m + per;
    kvs_affine_decode_all_params(a, s, m);
    for (uint32_t g = 0; g < group; g++) {
        for (uint32_t k = 0; k < ng; k++) {
            float sum = 0.0f;
            for (uint32_t j = k * gs; j < (k + 1) * gs; j++)
                sum += q[(size_t)g * d + j];
            qsum[(size_t)g * ng + k] = sum;
        }
    }
    for (uint32_t g0 = 0; g0 < group; g0 += 4) {
        uint32_t chunk = group - g0 < 4 ? group - g0 : 4;
        kvs_affine_fused_logits(a, q + (size_t)g0 * d, chunk, qsum + (size_t)g0 * ng, s, m, attend,
                                n, out + (size_t)g0 * n);
    }
    return 0;
}

void kvs_affine_logits(kvs_affine_t *a, const float *q, uint32_t group, const uint8_t *attend,
                       uint32_t n, float *out)
{
    int failed = 0;

    if (a->cfg.compressed && kvs_affine_fused_ok(a)) {
        failed = logits_fused(a, q, group, attend, n, out);
        logits_window(a, q, group, attend, n, out);
    } else if (a->cfg.compressed) {
        failed = a->cfg.axis == KVS_AFFINE_AXIS_TOKEN
                     ? logits_codes_token(a, q, group, attend, n, out)
                     : logits_codes_channel(a, q, group, attend, n, out);
        logits_window(a, q, group, attend, n, out);
    } else {
        const float *dense = dense_copy(a);
        failed = !dense;
        if (dense)
            kvs_simd_logits_f32(q, group, dense, a->nq + a->nw, a->cfg.d, attend, out, n);
    }
    /* NOTE: the hook cannot return a status, so running out of memory for
    ** scratch leaves NaN logits, which cannot pass for a result. */
    if (failed) {
        for (size_t i = 0; i < (size_t)group * n; i++)
            out[i] = __builtin_nanf("");
    }
}

/* ---- output ------------------------------------------------------------- */

static void output_window(kvs_affine_t *a, const float *w, uint32_t group, const uint8_t *attend,
                          uint32_t n, float *out)
{
    uint32_t d = a->cfg.d;

    for (uint32_t i = 0; i < a->nw; i++) {
        uint32_t t = a->nq + i;
        if (!attend[t])
            continue;
        const float *row = a->win + (size_t)(a->w0 + i) * d;
        for (uint32_t g = 0; g < group; g++)
            kvs_simd_axpy_f32(out + (size_t)g * d, w[(size_t)g * n + t], row, d);
    }
}

/* Token axis: out_k += sum_t (w_t s_tk) u_tk, and the offsets sum_t w_t m_tk
** are added once per group at the end. */
static int output_codes_token(kvs_affine_t *a, const float *w, uint32_t group,
                              const uint8_t *attend, uint32_t n, float *out)
{
    uint32_t d = a->cfg.d, gs = a->cfg.group, ng = a->n_groups;
    float *msum = kvs_affine_scratch(a, (size_t)group * ng);

    if (!msum)
        return -1;
    memset(msum, 0, (size_t)group * ng * sizeof *msum);
    for (uint32_t t = 0; t < a->nq; t++) {
        if (!attend[t])
            continue;
        kvs_unpack_row(a->codes + (size_t)t * a->row_bytes, d, a->cfg.bits, a->row);
        load_params(a, t);
        for (uint32_t g = 0; g < group; g++) {
            float wt = w[(size_t)g * n + t];
            for (uint32_t k = 0; k < ng; k++) {
                kvs_simd_axpy_f32(out + (size_t)g * d + (size_t)k * gs, wt * a->ps[k],
                             a->row + (size_t)k * gs, gs);
                msum[(size_t)g * ng + k] += wt * a->pm[k];
            }
        }
    }
    for (uint32_t g = 0; g < group; g++) {
        for (uint32_t j = 0; j < d; j++)
            out[(size_t)g * d + j] += msum[(size_t)g * ng + j / gs];
    }
    return 0;
}

/* Channel axis: per block, acc_c = sum_t w_t u_tc and W = sum_t w_t, then
** out_c += s_c acc_c + m_c W. */
static int output_codes_channel(kvs_affine_t *a, const float *w, uint32_t group,
                                const uint8_t *attend, uint32_t n, float *out)
{
    uint32_t d = a->cfg.d, gs = a->cfg.group;
    float *acc = kvs_affine_scratch(a, (size_t)group * d + group);

    if (!acc)
        return -1;
    float *wsum = acc + (size_t)group * d;
    for (uint32_t b0 = 0; b0 < a->nq; b0 += gs) {
        if (!any_attended(attend, b0, b0 + gs))
            continue;
        memset(acc, 0, ((size_t)group * d + group) * sizeof *acc);
        for (uint32_t t = b0; t < b0 + gs; t++) {
            if (!attend[t])
                continue;
            kvs_unpack_row(a->codes + (size_t)t * a->row_bytes, d, a->cfg.bits, a->row);
            for (uint32_t g = 0; g < group; g++) {
                float wt = w[(size_t)g * n + t];
                kvs_simd_axpy_f32(acc + (size_t)g * d, wt, a->row, d);
                wsum[g] += wt;
            }
        }
        load_params(a, b0);
        for (uint32_t g = 0; g < group; g++) {
            for (uint32_t j = 0; j < d; j++)
                out[(size_t)g * d + j] += a->ps[j] * acc[(size_t)g * d + j] + a->pm[j] * wsum[g];
        }
    }
    return 0;
}

/* Fused AVX2 path of output_codes_token (affine_fused.c). */
static int output_fused(kvs_affine_t *a, const float *w, uint32_t group, const uint8_t *attend,
                        uint32_t n, float *out)
{
    uint32_t d = a->cfg.d, gs = a->cfg.group, ng = a->n_groups;
    size_t per = (size_t)a->nq * ng;
    float *s = kvs_affine_scratch(a, (2 + (size_t)group) * per + (size_t)group * ng);

    if (!s)
        return -1;
    float *m = s + per, *coef = m + per, *msum = coef + (size_t)group * per;
    kvs_affine_decode_all_params(a, s, m);
    for (uint32_t g = 0; g < group; g++) {
        float *cg = coef + (size_t)g * per;
        const float *wg = w + (size_t)g * n;
        for (uint32_t k = 0; k < ng; k++) {
            /* Four partial sums break the dependency chain of one sum. */
            float part[4] = {0, 0, 0, 0};
            for (uint32_t t = 0; t < a->nq; t++) {
                float wt = attend[t] ? wg[t] : 0.0f;
                cg[(size_t)t * ng + k] = wt * s[(size_t)t * ng + k];
                part[t & 3] += wt * m[(size_t)t * ng + k];
            }
            msum[(size_t)g * ng + k] = (part[0] + part[1]) + (part[2] + part[3]);
        }
    }
    for (uint32_t g0 = 0; g0 < group; g0 += 4) {
        uint32_t chunk = group - g0 < 4 ? group - g0 : 4;
        kvs_affine_fused_output(a, coef + (size_t)g0 * per, chunk, attend, out + (size_t)g0 * d);
    }
    for (uint32_t g = 0; g < group; g++) {
        for (uint32_t j = 0; j < d; j++)
            out[(size_t)g * d + j] += msum[(size_t)g * ng + j / gs];
    }
    return 0;
}

void kvs_affine_output(kvs_affine_t *a, const float *w, uint32_t group, const uint8_t *attend,
                       uint32_t n, float *out)
{
    uint32_t d = a->cfg.d;
    int failed = 0;

    if (a->cfg.compressed && kvs_affine_fused_ok(a)) {
        failed = output_fused(a, w, group, attend, n, out);
        output_window(a, w, group, attend, n, out);
    } else if (a->cfg.compressed) {
        failed = a->cfg.axis == KVS_AFFINE_AXIS_TOKEN
                     ? output_codes_token(a, w, group, attend, n, out)
                     : output_codes_channel(a, w, group, attend, n, out);
        output_window(a, w, group, attend, n, out);
    } else {
        const float *dense = dense_copy(a);
        failed = !dense;
        if (dense)
            kvs_simd_wsum_f32(w, group, n, dense, a->nq + a->nw, d, attend, out);
    }
    if (failed) {
        for (size_t i = 0; i < (size_t)group * d; i++)
            out[i] = __builtin_nanf("");
    }
}
