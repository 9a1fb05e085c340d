/*
** affine_fused.c: AVX2/FMA compressed-execution kernels for per-position
** groups (axis token), the layout of quanto, HQQ and KIVI values. They
** compute what affine_attend.c's generic path computes. Codes are unpacked
** in registers and the parameters of all positions are decoded in one pass.
** The output is accumulated in registers over all positions, 8 bytes of
** each row at a time, so no decoded row or output row goes through memory
** per position.
**
** Preconditions (kvs_affine_fused_ok): planar codes (1, 2, 4 or 8 bits),
** packed rows a multiple of 8 bytes, and groups a multiple of 8 channels.
*/
#include "affine_internal.h"

#include "../simd.h"

#include <immintrin.h>
#include <string.h>

int kvs_affine_fused_ok(const kvs_affine_t *a)
{
    const kvs_affine_cfg_t *c = &a->cfg;
    int planar = c->bits == 1 || c->bits == 2 || c->bits == 4 || c->bits == 8;

    return kvs_simd_avx2() && planar && c->axis == KVS_AFFINE_AXIS_TOKEN &&
           a->row_bytes % 8 == 0 && c->group % 8 == 0 && (uint64_t)c->d * c->bits % 64 == 0;
}

/* Decodes the steps and offsets of positions [0, nq) into s and m, laid
** out (nq, n_groups). */
void kvs_affine_decode_all_params(const kvs_affine_t *a, float *s, float *m)
{
    size_t count = (size_t)a->nq * a->n_groups;

    if (a->cfg.param_fmt == KVS_FP_BF16) {
        const uint16_t *p = (const uint16_t *)a->params;
        for (size_t i = 0; i < count; i++) {
            uint32_t us = (uint32_t)p[2 * i] << 16, um = (uint32_t)p[2 * i + 1] << 16;
            memcpy(s + i, &us, 4);
            memcpy(m + i, &um, 4);
        }
    } else {
        kvs_affine_decode_pairs(a, a->params, (uint32_t)count, s, m);
        return;
    }
    if (a->cfg.fit != KVS_FIT_MINMAX) {
        /* Zero-point form: the stored pair is (s, z) and x^ = (q - z) s. */
        for (size_t i = 0; i < count; i++)
            m[i] = -m[i] * s[i];
    }
}

/* Eight codes starting at channel j of a planar row with nb bytes. */
__attribute__((target("avx2,fma"))) static inline __m256 codes8(const uint8_t *row, uint32_t nb,
                                                                uint32_t bits, uint32_t j)
{
    __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(row + j % nb)));
    __m256i mask = _mm256_set1_epi32((int)((1u << bits) - 1u));

    v = _mm256_srl_epi32(v, _mm_cvtsi32_si128((int)(bits * (j / nb))));
    return _mm256_cvtepi32_ps(_mm256_and_si256(v, mask));
}

static inline float hsum(__m256 v) __attribute__((target("avx2,fma")));
static inline float hsum(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));

    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* Codes of bit field f from eight zero-extended bytes v. With bits a
** compile-time constant the shift of field 0 and the mask of the top field,
** which are no-ops, disappear. */
__attribute__((target("avx2,fma"), always_inline)) static inline __m256 field_codes(
    __m256i v, uint32_t bits, uint32_t f)
{
    if (f > 0)
        v = _mm256_srl_epi32(v, _mm_cvtsi32_si128((int)(bits * f)));
    if (f + 1 < 8 / bits)
        v = _mm256_and_si256(v, _mm256_set1_epi32((int)((1u << bits) - 1u)));
    return _mm256_cvtepi32_ps(v);
}

/* Logits with one group per position: each 8-byte load of the row gives
** eight codes of every bit field, so the bytes are read once. */
__attribute__((target("avx2,fma"), always_inline)) static inline void logits_one_group_bits(
    const kvs_affine_t *a, const float *q, uint32_t nq4, const float *qsum, const float *s,
    const float *m, const uint8_t *attend, uint32_t t0, uint32_t t1, uint32_t n, float *out,
    const uint32_t bits)
{
    uint32_t d = a->cfg.d, nb = a->row_bytes, fields = 8 / bits;

    for (uint32_t t = t0; t < t1; t++) {
        if (!attend[t])
            continue;
        const uint8_t *row = a->codes + (size_t)t * nb;
        __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                         _mm256_setzero_ps()};
        for (uint32_t jb = 0; jb < nb; jb += 8) {
            __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(row + jb)));
#pragma GCC unroll 8
            for (uint32_t f = 0; f < fields; f++) {
                __m256 u = field_codes(v, bits, f);
                const float *qj = q + (size_t)f * nb + jb;
#pragma GCC unroll 4
                for (uint32_t g = 0; g < nq4; g++)
                    acc[g] = _mm256_fmadd_ps(_mm256_loadu_ps(qj + (size_t)g * d), u, acc[g]);
            }
        }
        /* One horizontal reduction for all four accumulators. */
        __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(acc[0], acc[1]), _mm256_hadd_ps(acc[2], acc[3]));
        __m128 dots = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
        float dot[4];
        _mm_storeu_ps(dot, dots);
        /* Without steps (per-channel blocks, query pre-scaled) qsum holds
        ** the block's constant term. */
        for (uint32_t g = 0; g < nq4; g++)
            out[(size_t)g * n + t] = s ? s[t] * dot[g] + m[t] * qsum[g] : dot[g] + qsum[g];
    }
}

/* Instantiates the kernel for each code width with the query count fixed,
** so that the accumulators stay in registers and the loops unroll. */
#define LOGITS_FOR_QUERIES(NQ)                                                                  \
    __attribute__((target("avx2,fma"))) static void logits_one_group_##NQ(                      \
        const kvs_affine_t *a, const float *q, const float *qsum, const float *s, const float *m, \
        const uint8_t *attend, uint32_t t0, uint32_t t1, uint32_t n, float *out)                \
    {                                                                                           \
        switch (a->cfg.bits) {                                                                  \
        case 4: logits_one_group_bits(a, q, NQ, qsum, s, m, attend, t0, t1, n, out, 4); break;  \
        case 2: logits_one_group_bits(a, q, NQ, qsum, s, m, attend, t0, t1, n, out, 2); break;  \
        case 8: logits_one_group_bits(a, q, NQ, qsum, s, m, attend, t0, t1, n, out, 8); break;  \
        default: logits_one_group_bits(a, q, NQ, qsum, s, m, attend, t0, t1, n, out, 1); break; \
        }                                                                                       \
    }
LOGITS_FOR_QUERIES(1)
LOGITS_FOR_QUERIES(2)
LOGITS_FOR_QUERIES(3)
LOGITS_FOR_QUERIES(4)

static void logits_one_group(const kvs_affine_t *a, const float *q, uint32_t nq4,
                             const float *qsum, const float *s, const float *m,
                             const uint8_t *attend, uint32_t t0, uint32_t t1, uint32_t n,
                             float *out)
{
    switch (nq4) {
    case 1: logits_one_group_1(a, q, qsum, s, m, attend, t0, t1, n, out); break;
    case 2: logits_one_group_2(a, q, qsum, s, m, attend, t0, t1, n, out); break;
    case 3: logits_one_group_3(a, q, qsum, s, m, attend, t0, t1, n, out); break;
    default: logits_one_group_4(a, q, qsum, s, m, attend, t0, t1, n, out); break;
    }
}

int kvs_affine_fused_channel_ok(const kvs_affine_t *a)
{
    const kvs_affine_cfg_t *c = &a->cfg;
    int planar = c->bits == 1 || c->bits == 2 || c->bits == 4 || c->bits == 8;

    return kvs_simd_avx2() && planar && a->row_bytes % 8 == 0 &&
           (uint64_t)c->d * c->bits % 64 == 0;
}

void kvs_affine_fused_block_logits(const kvs_affine_t *a, const float *q_scaled, uint32_t nq4,
                                   const float *constant, const uint8_t *attend, uint32_t t0,
                                   uint32_t t1, uint32_t n, float *out)
{
    logits_one_group(a, q_scaled, nq4, constant, NULL, NULL, attend, t0, t1, n, out);
}

/* Logits of up to four queries q (rows of d) with sums qsum (nq4, ng). */
__attribute__((target("avx2,fma"))) void kvs_affine_fused_logits(
    const kvs_affine_t *a, const float *q, uint32_t nq4, const float *qsum, const float *s,
    const float *m, const uint8_t *attend, uint32_t n, float *out)
{
    const kvs_affine_cfg_t *c = &a->cfg;
    uint32_t d = c->d, gs = c->group, ng = a->n_groups, nb = a->row_bytes, bits = c->bits;

    if (ng == 1) {
        logits_one_group(a, q, nq4, qsum, s, m, attend, 0, a->nq, n, out);
        return;
    }
    for (uint32_t t = 0; t < a->nq; t++) {
        if (!attend[t])
            continue;
        const uint8_t *row = a->codes + (size_t)t * nb;
        const float *st = s + (size_t)t * ng, *mt = m + (size_t)t * ng;
        float logit[4] = {0, 0, 0, 0};
        for (uint32_t k = 0; k < ng; k++) {
            __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                             _mm256_setzero_ps()};
            for (uint32_t j = k * gs; j < (k + 1) * gs; j += 8) {
                __m256 u = codes8(row, nb, bits, j);
#pragma GCC unroll 4
                for (uint32_t g = 0; g < nq4; g++)
                    acc[g] = _mm256_fmadd_ps(_mm256_loadu_ps(q + (size_t)g * d + j), u, acc[g]);
            }
            for (uint32_t g = 0; g < nq4; g++)
                logit[g] += st[k] * hsum(acc[g]) + mt[k] * qsum[(size_t)g * ng + k];
        }
        for (uint32_t g = 0; g < nq4; g++)
            out[(size_t)g * n + t] = logit[g];
    }
}

/* Writes the output of up to four queries, sum_t coef * u_t, over the rows
** of out. coef (nq4, nq_tokens * ng) contains w_gt s_tk, zero where t is
** not attended. Each pass takes 8 bytes of every row, which contain 8
** channels of each bit field, and accumulates two fields in registers. */
__attribute__((target("avx2,fma"), always_inline)) static inline void fused_output_bits(
    const kvs_affine_t *a, const float *coef, uint32_t nq4, const uint8_t *attend, float *out,
    const uint32_t bits)
{
    const kvs_affine_cfg_t *c = &a->cfg;
    uint32_t d = c->d, gs = c->group, ng = a->n_groups, nb = a->row_bytes;
    uint32_t fields = 8 / bits;
    size_t stride = (size_t)a->nq * ng;

    for (uint32_t jb = 0; jb < nb; jb += 8) {
#pragma GCC unroll 4
        for (uint32_t f0 = 0; f0 < fields; f0 += 2) {
            int two = f0 + 1 < fields;
            uint32_t k0 = (f0 * nb + jb) / gs, k1 = two ? ((f0 + 1) * nb + jb) / gs : k0;
            __m256 acc0[4], acc1[4];
#pragma GCC unroll 4
            for (uint32_t g = 0; g < 4; g++)
                acc0[g] = acc1[g] = _mm256_setzero_ps();
            for (uint32_t t = 0; t < a->nq; t++) {
                if (!attend[t])
                    continue;
                __m256i v = _mm256_cvtepu8_epi32(
                    _mm_loadl_epi64((const __m128i *)(a->codes + (size_t)t * nb + jb)));
                __m256 u0 = field_codes(v, bits, f0);
                __m256 u1 = two ? field_codes(v, bits, f0 + 1) : u0;
                const float *ct = coef + (size_t)t * ng;
#pragma GCC unroll 4
                for (uint32_t g = 0; g < nq4; g++) {
                    acc0[g] = _mm256_fmadd_ps(_mm256_broadcast_ss(ct + g * stride + k0), u0,
                                              acc0[g]);
                    if (two)
                        acc1[g] = _mm256_fmadd_ps(_mm256_broadcast_ss(ct + g * stride + k1), u1,
                                                  acc1[g]);
                }
            }
#pragma GCC unroll 4
            for (uint32_t g = 0; g < nq4; g++) {
                _mm256_storeu_ps(out + (size_t)g * d + f0 * nb + jb, acc0[g]);
                if (two)
                    _mm256_storeu_ps(out + (size_t)g * d + (f0 + 1) * nb + jb, acc1[g]);
            }
        }
    }
}

#define OUTPUT_FOR_QUERIES(NQ)                                                                  \
    __attribute__((target("avx2,fma"))) static void fused_output_##NQ(                          \
        const kvs_affine_t *a, const float *coef, const uint8_t *attend, float *out)           \
    {                                                                                           \
        switch (a->cfg.bits) {                                                                  \
        case 4: fused_output_bits(a, coef, NQ, attend, out, 4); break;                          \
        case 2: fused_output_bits(a, coef, NQ, attend, out, 2); break;                          \
        case 8: fused_output_bits(a, coef, NQ, attend, out, 8); break;                          \
        default: fused_output_bits(a, coef, NQ, attend, out, 1); break;                         \
        }                                                                                       \
    }
OUTPUT_FOR_QUERIES(1)
OUTPUT_FOR_QUERIES(2)
OUTPUT_FOR_QUERIES(3)
OUTPUT_FOR_QUERIES(4)

void kvs_affine_fused_output(const kvs_affine_t *a, const float *coef, uint32_t nq4,
                             const uint8_t *attend, float *out)
{
    switch (nq4) {
    case 1: fused_output_1(a, coef, attend, out); break;
    case 2: fused_output_2(a, coef, attend, out); break;
    case 3: fused_output_3(a, coef, attend, out); break;
    default: fused_output_4(a, coef, attend, out); break;
    }
}
