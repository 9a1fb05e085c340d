/* matvec.c: dtype conversion and matrix-vector products, scalar and AVX2. */
#include "matvec.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#include <immintrin.h>
#define KVS_X86 1
#endif

static float load_elem(const kvs_weight_t *w, size_t i)
{
    switch (w->type) {
    case KVS_WTYPE_BF16: return kvs_bf16_to_f32(((const uint16_t *)w->data)[i]);
    case KVS_WTYPE_F16: return kvs_f16_to_f32(((const uint16_t *)w->data)[i]);
    case KVS_WTYPE_F32:
    case KVS_WTYPE_COUNT: break;
    }
    return ((const float *)w->data)[i];
}

void kvs_weight_rows_f32(const kvs_weight_t *w, uint32_t row0, uint32_t n_rows, float *out)
{
    size_t begin = (size_t)row0 * w->cols, n = (size_t)n_rows * w->cols;

    if (w->type == KVS_WTYPE_F32) {
        memcpy(out, (const float *)w->data + begin, n * sizeof *out);
        return;
    }
    if (w->type == KVS_WTYPE_BF16) {
        const uint16_t *src = (const uint16_t *)w->data + begin;
        for (size_t i = 0; i < n; i++) {
            uint32_t bits = (uint32_t)src[i] << 16;
            memcpy(&out[i], &bits, sizeof bits);
        }
        return;
    }
    for (size_t i = 0; i < n; i++)
        out[i] = load_elem(w, begin + i);
}

void kvs_matvec_ref(const kvs_weight_t *w, uint32_t row0, uint32_t row1, const float *x, float *y)
{
    for (uint32_t r = row0; r < row1; r++) {
        size_t base = (size_t)r * w->cols;
        float sum = 0.0f;
        for (uint32_t c = 0; c < w->cols; c++)
            sum += load_elem(w, base + c) * x[c];
        y[r - row0] = sum;
    }
}

static float dot_ref(const float *a, const float *b, uint32_t n)
{
    float sum = 0.0f;

    for (uint32_t i = 0; i < n; i++)
        sum += a[i] * b[i];
    return sum;
}

static void axpy_ref(float *y, float alpha, const float *x, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++)
        y[i] += alpha * x[i];
}

#ifdef KVS_X86

__attribute__((target("avx2,fma"))) static inline float hsum_avx(__m256 v)
{
    __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
    __m128 s = _mm_add_ps(lo, hi);
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* Eight weights of the given type, widened to F32. */
__attribute__((target("avx2,fma,f16c"))) static inline __m256 load8(kvs_wtype_e type,
                                                                    const void *base, size_t i)
{
    if (type == KVS_WTYPE_BF16) {
        __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)base + i));
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    }
    if (type == KVS_WTYPE_F16)
        return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)base + i)));
    return _mm256_loadu_ps((const float *)base + i);
}

/* Bytes ahead of the current load to prefetch. Rows are contiguous, so the
** matrix is one sequential stream; a measured single-row loop with this
** prefetch read BF16 weights 2-3x faster than one interleaving four rows,
** whose four streams the hardware prefetcher followed poorly. */
#define PREFETCH_AHEAD 4096

/* One row at a time; columns past the last full group of 16 go through
** the scalar tail. */
__attribute__((target("avx2,fma,f16c"))) static void matvec_avx2(const kvs_weight_t *w,
                                                                 uint32_t row0, uint32_t row1,
                                                                 const float *x, float *y)
{
    const uint32_t cols = w->cols, full = cols & ~15u;
    const kvs_wtype_e type = w->type;
    const size_t esize = kvs_wtype_size(type);

    for (uint32_t r = row0; r < row1; r++) {
        size_t b = (size_t)r * cols;
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
        for (uint32_t c = 0; c < full; c += 16) {
            _mm_prefetch((const char *)w->data + (b + c) * esize + PREFETCH_AHEAD, _MM_HINT_T0);
            a0 = _mm256_fmadd_ps(load8(type, w->data, b + c), _mm256_loadu_ps(x + c), a0);
            a1 = _mm256_fmadd_ps(load8(type, w->data, b + c + 8), _mm256_loadu_ps(x + c + 8), a1);
        }
        float s = hsum_avx(_mm256_add_ps(a0, a1));
        for (uint32_t c = full; c < cols; c++)
            s += load_elem(w, b + c) * x[c];
        y[r - row0] = s;
    }
}

/* Columns up to which the BF16 kernel splits x on the stack (64 KB). */
#define BF16_SPLIT_MAX 16384u

/* BF16 rows without a widening shuffle. A 256-bit load holds 16 BF16
** values, two per 32-bit lane; shifting a lane left by 16 gives the even
** element as an F32 and masking off the low half gives the odd one. x is
** split once into its even and odd elements to match, so each 16 columns
** cost one load, a shift, an AND and two FMAs. */
__attribute__((target("avx2,fma"))) static void matvec_bf16_avx2(const kvs_weight_t *w,
                                                                 uint32_t row0, uint32_t row1,
                                                                 const float *x, float *y)
{
    const uint32_t cols = w->cols, full = cols & ~31u;
    const uint16_t *base = w->data;
    float xe[BF16_SPLIT_MAX / 2], xo[BF16_SPLIT_MAX / 2];
    const __m256i hi_mask = _mm256_set1_epi32((int)0xffff0000u);

    for (uint32_t c = 0; c < full; c += 2) {
        xe[c / 2] = x[c];
        xo[c / 2] = x[c + 1];
    }
    for (uint32_t r = row0; r < row1; r++) {
        const uint16_t *p = base + (size_t)r * cols;
        __m256 e0 = _mm256_setzero_ps(), o0 = e0, e1 = e0, o1 = e0;
        for (uint32_t c = 0; c < full; c += 32) {
            _mm_prefetch((const char *)(p + c) + PREFETCH_AHEAD, _MM_HINT_T0);
            __m256i a = _mm256_loadu_si256((const __m256i *)(p + c));
            __m256i b = _mm256_loadu_si256((const __m256i *)(p + c + 16));
            e0 = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_slli_epi32(a, 16)),
                                 _mm256_loadu_ps(xe + c / 2), e0);
            o0 = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_and_si256(a, hi_mask)),
                                 _mm256_loadu_ps(xo + c / 2), o0);
            e1 = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_slli_epi32(b, 16)),
                                 _mm256_loadu_ps(xe + c / 2 + 8), e1);
            o1 = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_and_si256(b, hi_mask)),
                                 _mm256_loadu_ps(xo + c / 2 + 8), o1);
        }
        float sum = hsum_avx(_mm256_add_ps(_mm256_add_ps(e0, o0), _mm256_add_ps(e1, o1)));
        for (uint32_t c = full; c < cols; c++)
            sum += kvs_bf16_to_f32(p[c]) * x[c];
        y[r - row0] = sum;
    }
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
    float s = hsum_avx(_mm256_add_ps(s0, s1));
    for (; i < n; i++)
        s += a[i] * b[i];
    return s;
}

__attribute__((target("avx2,fma"))) static void axpy_avx2(float *y, float alpha, const float *x,
                                                          uint32_t n)
{
    __m256 av = _mm256_set1_ps(alpha);
    uint32_t i = 0;

    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(av, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    for (; i < n; i++)
        y[i] += alpha * x[i];
}

#endif

static int simd_cached = -1;

void kvs_matvec_force_scalar(int on)
{
    simd_cached = on ? 0 : -1;
}

int kvs_matvec_simd(void)
{
    int cached = simd_cached;

    if (cached < 0) {
        int on = 0;
#ifdef KVS_X86
        const char *off = getenv("KVSIM_NO_SIMD");
        __builtin_cpu_init();
        /* clang 14 rejects "f16c" in __builtin_cpu_supports, so F16C is read
        ** from CPUID leaf 1 (ECX bit 29) directly. */
        unsigned eax, ebx, ecx = 0, edx;
        int f16c = __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & (1u << 29));
        on = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c &&
             !(off && *off && strcmp(off, "0"));
#endif
        cached = simd_cached = on;
    }
    return cached;
}

void kvs_matvec(const kvs_weight_t *w, uint32_t row0, uint32_t row1, const float *x, float *y)
{
#ifdef KVS_X86
    if (kvs_matvec_simd()) {
        if (w->type == KVS_WTYPE_BF16 && w->cols <= BF16_SPLIT_MAX)
            matvec_bf16_avx2(w, row0, row1, x, y);
        else
            matvec_avx2(w, row0, row1, x, y);
        return;
    }
#endif
    kvs_matvec_ref(w, row0, row1, x, y);
}

float kvs_mv_dot_f32(const float *a, const float *b, uint32_t n)
{
#ifdef KVS_X86
    if (kvs_matvec_simd())
        return dot_avx2(a, b, n);
#endif
    return dot_ref(a, b, n);
}

void kvs_mv_axpy_f32(float *y, float alpha, const float *x, uint32_t n)
{
#ifdef KVS_X86
    if (kvs_matvec_simd()) {
        axpy_avx2(y, alpha, x, n);
        return;
    }
#endif
    axpy_ref(y, alpha, x, n);
}
