/* simd.c: runtime-dispatched dot products and row updates. */
#include "simd.h"

#include <cpuid.h>
#include <immintrin.h>
#include <math.h>
#include <string.h>

static int simd_enabled = 1;

int kvs_simd_avx2(void)
{
    static int detected = -1;

    if (detected < 0) {
        __builtin_cpu_init();
        detected = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    }
    return simd_enabled && detected;
}

int kvs_simd_f16c(void)
{
    static int detected = -1;

    if (detected < 0) {
        /* CPUID leaf 1, ECX bit 29; clang's __builtin_cpu_supports does
        ** not accept "f16c". */
        unsigned eax, ebx, ecx, edx;
        detected = __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & (1u << 29)) != 0;
    }
    return detected && kvs_simd_avx2();
}

void kvs_simd_set_enabled(int enabled)
{
    simd_enabled = enabled;
}

float kvs_simd_dot_f32_ref(const float *a, const float *b, uint32_t n)
{
    float s = 0.0f;

    for (uint32_t i = 0; i < n; i++)
        s += a[i] * b[i];
    return s;
}

void kvs_simd_axpy_f32_ref(float *y, float alpha, const float *x, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++)
        y[i] += alpha * x[i];
}

__attribute__((target("avx2,fma"))) static float hsum256(__m256 v)
{
    __m128 lo = _mm256_castps256_ps128(v);
    __m128 hi = _mm256_extractf128_ps(v, 1);
    __m128 s = _mm_add_ps(lo, hi);

    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

__attribute__((target("avx2,fma"))) static float dot_avx2(const float *a, const float *b,
                                                          uint32_t n)
{
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    uint32_t i = 0;

    for (; i + 16 <= n; i += 16) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
    }
    for (; i + 8 <= n; i += 8)
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    float s = hsum256(_mm256_add_ps(s0, s1));
    for (; i < n; i++)
        s += a[i] * b[i];
    return s;
}

__attribute__((target("avx2,fma"))) static void axpy_avx2(float *y, float alpha, const float *x,
                                                          uint32_t n)
{
    __m256 a = _mm256_set1_ps(alpha);
    uint32_t i = 0;

    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(a, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    for (; i < n; i++)
        y[i] += alpha * x[i];
}

float kvs_simd_dot_f32(const float *a, const float *b, uint32_t n)
{
    return kvs_simd_avx2() ? dot_avx2(a, b, n) : kvs_simd_dot_f32_ref(a, b, n);
}

void kvs_simd_axpy_f32(float *y, float alpha, const float *x, uint32_t n)
{
    if (kvs_simd_avx2())
        axpy_avx2(y, alpha, x, n);
    else
        kvs_simd_axpy_f32_ref(y, alpha, x, n);
}

/* Up to four queries share each load of x; n a multiple of 8. */
__attribute__((target("avx2,fma"))) static void dot_rows4_avx2(const float *q, uint32_t g,
                                                               const float *x, uint32_t n,
                                                               float *out, uint32_t stride)
{
    __m256 s[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                   _mm256_setzero_ps()};

    for (uint32_t i = 0; i < n; i += 8) {
        __m256 xv = _mm256_loadu_ps(x + i);
#pragma GCC unroll 4
        for (uint32_t r = 0; r < g; r++)
            s[r] = _mm256_fmadd_ps(_mm256_loadu_ps(q + (size_t)r * n + i), xv, s[r]);
    }
    for (uint32_t r = 0; r < g; r++)
        out[(size_t)r * stride] = hsum256(s[r]);
}

void kvs_simd_dot_rows_f32(const float *q, uint32_t g, const float *x, uint32_t n, float *out,
                      uint32_t out_stride)
{
    if (kvs_simd_avx2() && n % 8 == 0) {
        for (uint32_t r = 0; r < g; r += 4) {
            uint32_t m = g - r < 4 ? g - r : 4;
            dot_rows4_avx2(q + (size_t)r * n, m, x, n, out + (size_t)r * out_stride, out_stride);
        }
        return;
    }
    for (uint32_t r = 0; r < g; r++)
        out[(size_t)r * out_stride] = kvs_simd_dot_f32_ref(q + (size_t)r * n, x, n);
}

__attribute__((target("avx2,fma"))) static void bf16_row_avx2(const uint16_t *src, float *dst,
                                                              uint32_t n)
{
    uint32_t i = 0;

    for (; i + 8 <= n; i += 8) {
        __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(src + i)));
        _mm256_storeu_ps(dst + i, _mm256_castsi256_ps(_mm256_slli_epi32(v, 16)));
    }
    for (; i < n; i++) {
        uint32_t u = (uint32_t)src[i] << 16;
        memcpy(dst + i, &u, 4);
    }
}

void kvs_simd_bf16_row_to_f32(const uint16_t *src, float *dst, uint32_t n)
{
    if (kvs_simd_avx2()) {
        bf16_row_avx2(src, dst, n);
        return;
    }
    for (uint32_t i = 0; i < n; i++) {
        uint32_t u = (uint32_t)src[i] << 16;
        memcpy(dst + i, &u, 4);
    }
}

double kvs_simd_exp_sum_ref(const float *x, float max, float *out, uint32_t n)
{
    double sum = 0.0;

    for (uint32_t i = 0; i < n; i++) {
        out[i] = expf(x[i] - max);
        sum += out[i];
    }
    return sum;
}

/* exp(x) = 2^k e^r with k = round(x / ln2) and r = x - k ln2, ln2 split in
** two parts (Cody and Waite) so r is exact enough; e^r by Taylor to r^7. */
__attribute__((target("avx2,fma"))) static double exp_sum_avx2(const float *x, float max,
                                                               float *out, uint32_t n)
{
    const __m256 vmax = _mm256_set1_ps(max), lo_limit = _mm256_set1_ps(-87.0f);
    const __m256 log2e = _mm256_set1_ps(1.44269504f);
    const __m256 ln2_hi = _mm256_set1_ps(0.693359375f), ln2_lo = _mm256_set1_ps(-2.12194440e-4f);
    const __m256 c7 = _mm256_set1_ps(1.0f / 5040), c6 = _mm256_set1_ps(1.0f / 720),
                 c5 = _mm256_set1_ps(1.0f / 120), c4 = _mm256_set1_ps(1.0f / 24),
                 c3 = _mm256_set1_ps(1.0f / 6), c2 = _mm256_set1_ps(0.5f), one = _mm256_set1_ps(1.0f);
    __m256 acc = _mm256_setzero_ps();
    double sum = 0.0;
    uint32_t i = 0;

    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_sub_ps(_mm256_loadu_ps(x + i), vmax);
        __m256 keep = _mm256_cmp_ps(v, lo_limit, _CMP_GE_OQ);
        v = _mm256_max_ps(v, lo_limit);
        __m256 k = _mm256_round_ps(_mm256_mul_ps(v, log2e), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        __m256 r = _mm256_fnmadd_ps(k, ln2_hi, v);
        r = _mm256_fnmadd_ps(k, ln2_lo, r);
        __m256 p = _mm256_fmadd_ps(c7, r, c6);
        p = _mm256_fmadd_ps(p, r, c5);
        p = _mm256_fmadd_ps(p, r, c4);
        p = _mm256_fmadd_ps(p, r, c3);
        p = _mm256_fmadd_ps(p, r, c2);
        p = _mm256_fmadd_ps(p, r, one);
        p = _mm256_fmadd_ps(p, r, one);
        __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23);
        __m256 y = _mm256_and_ps(_mm256_mul_ps(p, _mm256_castsi256_ps(e)), keep);
        _mm256_storeu_ps(out + i, y);
        acc = _mm256_add_ps(acc, y);
        if ((i & 1023) == 1016) {
            sum += hsum256(acc);
            acc = _mm256_setzero_ps();
        }
    }
    sum += hsum256(acc);
    for (; i < n; i++) {
        out[i] = expf(x[i] - max);
        sum += out[i];
    }
    return sum;
}

double kvs_simd_exp_sum(const float *x, float max, float *out, uint32_t n)
{
    return kvs_simd_avx2() ? exp_sum_avx2(x, max, out, n) : kvs_simd_exp_sum_ref(x, max, out, n);
}

/* ---- whole-cache dense attention ---------------------------------------- */

/* Eight elements at index i of rows stored as F32 (bf16 = 0) or BF16. */
__attribute__((target("avx2,fma"), always_inline)) static inline __m256 load8(const void *rows,
                                                                             size_t i,
                                                                             const int bf16)
{
    if (!bf16)
        return _mm256_loadu_ps((const float *)rows + i);
    __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)((const uint16_t *)rows + i)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
}

/* The query count NQ is a compile-time constant in each instance so that
** the accumulators stay in registers. */
__attribute__((target("avx2,fma"), always_inline)) static inline void logits_rows_avx2(
    const float *q, const void *rows, uint32_t n, uint32_t d, const uint8_t *attend, float *out,
    uint32_t stride, const uint32_t nq, const int bf16)
{
    for (uint32_t t = 0; t < n; t++) {
        if (!attend[t])
            continue;
        size_t x = (size_t)t * d;
        __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                         _mm256_setzero_ps()};
        for (uint32_t i = 0; i < d; i += 8) {
            __m256 xv = load8(rows, x + i, bf16);
#pragma GCC unroll 4
            for (uint32_t r = 0; r < nq; r++)
                acc[r] = _mm256_fmadd_ps(_mm256_loadu_ps(q + (size_t)r * d + i), xv, acc[r]);
        }
        __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(acc[0], acc[1]), _mm256_hadd_ps(acc[2], acc[3]));
        __m128 dots = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
        float dot[4];
        _mm_storeu_ps(dot, dots);
#pragma GCC unroll 4
        for (uint32_t r = 0; r < nq; r++)
            out[(size_t)r * stride + t] = dot[r];
    }
}

/* Accumulates 16 channels of every query in registers over all positions,
** one channel block at a time. */
__attribute__((target("avx2,fma"), always_inline)) static inline void wsum_rows_avx2(
    const float *w, uint32_t w_stride, const void *rows, uint32_t n, uint32_t d,
    const uint8_t *attend, float *out, const uint32_t nq, const int bf16)
{
    for (uint32_t j = 0; j < d; j += 16) {
        __m256 lo[4], hi[4];
#pragma GCC unroll 4
        for (uint32_t r = 0; r < 4; r++)
            lo[r] = hi[r] = _mm256_setzero_ps();
        for (uint32_t t = 0; t < n; t++) {
            if (!attend[t])
                continue;
            size_t x = (size_t)t * d + j;
            __m256 x0 = load8(rows, x, bf16), x1 = load8(rows, x + 8, bf16);
#pragma GCC unroll 4
            for (uint32_t r = 0; r < nq; r++) {
                __m256 wr = _mm256_broadcast_ss(w + (size_t)r * w_stride + t);
                lo[r] = _mm256_fmadd_ps(wr, x0, lo[r]);
                hi[r] = _mm256_fmadd_ps(wr, x1, hi[r]);
            }
        }
#pragma GCC unroll 4
        for (uint32_t r = 0; r < nq; r++) {
            float *o = out + (size_t)r * d + j;
            _mm256_storeu_ps(o, _mm256_add_ps(_mm256_loadu_ps(o), lo[r]));
            _mm256_storeu_ps(o + 8, _mm256_add_ps(_mm256_loadu_ps(o + 8), hi[r]));
        }
    }
}

#define DENSE_FOR_QUERIES(NQ, BF16, NAME)                                                       \
    __attribute__((target("avx2,fma"))) static void logits_rows_##NAME##NQ(                     \
        const float *q, const void *rows, uint32_t n, uint32_t d, const uint8_t *attend,        \
        float *out, uint32_t stride)                                                            \
    {                                                                                           \
        logits_rows_avx2(q, rows, n, d, attend, out, stride, NQ, BF16);                         \
    }                                                                                           \
    __attribute__((target("avx2,fma"))) static void wsum_rows_##NAME##NQ(                       \
        const float *w, uint32_t w_stride, const void *rows, uint32_t n, uint32_t d,            \
        const uint8_t *attend, float *out)                                                      \
    {                                                                                           \
        wsum_rows_avx2(w, w_stride, rows, n, d, attend, out, NQ, BF16);                         \
    }
DENSE_FOR_QUERIES(1, 0, f32_)
DENSE_FOR_QUERIES(2, 0, f32_)
DENSE_FOR_QUERIES(3, 0, f32_)
DENSE_FOR_QUERIES(4, 0, f32_)
DENSE_FOR_QUERIES(1, 1, bf16_)
DENSE_FOR_QUERIES(2, 1, bf16_)
DENSE_FOR_QUERIES(3, 1, bf16_)
DENSE_FOR_QUERIES(4, 1, bf16_)

typedef void (*logits_rows_fn)(const float *, const void *, uint32_t, uint32_t, const uint8_t *,
                               float *, uint32_t);
typedef void (*wsum_rows_fn)(const float *, uint32_t, const void *, uint32_t, uint32_t,
                             const uint8_t *, float *);
static const logits_rows_fn logits_rows[2][4] = {
    {logits_rows_f32_1, logits_rows_f32_2, logits_rows_f32_3, logits_rows_f32_4},
    {logits_rows_bf16_1, logits_rows_bf16_2, logits_rows_bf16_3, logits_rows_bf16_4},
};
static const wsum_rows_fn wsum_rows[2][4] = {
    {wsum_rows_f32_1, wsum_rows_f32_2, wsum_rows_f32_3, wsum_rows_f32_4},
    {wsum_rows_bf16_1, wsum_rows_bf16_2, wsum_rows_bf16_3, wsum_rows_bf16_4},
};

static float row_element(const void *rows, size_t i, int bf16)
{
    if (!bf16)
        return ((const float *)rows)[i];
    uint32_t u = (uint32_t)((const uint16_t *)rows)[i] << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static void logits_rows_any(const float *q, uint32_t g, const void *rows, uint32_t n, uint32_t d,
                            const uint8_t *attend, float *out, uint32_t out_stride, int bf16)
{
    if (!kvs_simd_avx2() || d % 8 != 0) {
        for (uint32_t t = 0; t < n; t++) {
            if (!attend[t])
                continue;
            for (uint32_t r = 0; r < g; r++) {
                float sum = 0.0f;
                for (uint32_t j = 0; j < d; j++)
                    sum += q[(size_t)r * d + j] * row_element(rows, (size_t)t * d + j, bf16);
                out[(size_t)r * out_stride + t] = sum;
            }
        }
        return;
    }
    for (uint32_t r0 = 0; r0 < g; r0 += 4) {
        uint32_t chunk = g - r0 < 4 ? g - r0 : 4;
        logits_rows[bf16][chunk - 1](q + (size_t)r0 * d, rows, n, d, attend,
                                     out + (size_t)r0 * out_stride, out_stride);
    }
}

static void wsum_rows_any(const float *w, uint32_t g, uint32_t w_stride, const void *rows,
                          uint32_t n, uint32_t d, const uint8_t *attend, float *out, int bf16)
{
    if (!kvs_simd_avx2() || d % 16 != 0) {
        for (uint32_t t = 0; t < n; t++) {
            if (!attend[t])
                continue;
            for (uint32_t r = 0; r < g; r++) {
                float wt = w[(size_t)r * w_stride + t];
                for (uint32_t j = 0; j < d; j++)
                    out[(size_t)r * d + j] += wt * row_element(rows, (size_t)t * d + j, bf16);
            }
        }
        return;
    }
    for (uint32_t r0 = 0; r0 < g; r0 += 4) {
        uint32_t chunk = g - r0 < 4 ? g - r0 : 4;
        wsum_rows[bf16][chunk - 1](w + (size_t)r0 * w_stride, w_stride, rows, n, d, attend,
                                   out + (size_t)r0 * d);
    }
}

void kvs_simd_logits_f32(const float *q, uint32_t g, const float *rows, uint32_t n, uint32_t d,
                         const uint8_t *attend, float *out, uint32_t out_stride)
{
    logits_rows_any(q, g, rows, n, d, attend, out, out_stride, 0);
}

void kvs_simd_logits_bf16(const float *q, uint32_t g, const uint16_t *rows, uint32_t n,
                          uint32_t d, const uint8_t *attend, float *out, uint32_t out_stride)
{
    logits_rows_any(q, g, rows, n, d, attend, out, out_stride, 1);
}

void kvs_simd_wsum_f32(const float *w, uint32_t g, uint32_t w_stride, const float *rows,
                       uint32_t n, uint32_t d, const uint8_t *attend, float *out)
{
    wsum_rows_any(w, g, w_stride, rows, n, d, attend, out, 0);
}

void kvs_simd_wsum_bf16(const float *w, uint32_t g, uint32_t w_stride, const uint16_t *rows,
                        uint32_t n, uint32_t d, const uint8_t *attend, float *out)
{
    wsum_rows_any(w, g, w_stride, rows, n, d, attend, out, 1);
}
