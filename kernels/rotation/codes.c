/*
** codes.c: packed b-bit codes, scoring them against a query with per-query
** look-up tables, and summing weighted codewords without decoding tokens.
*/
#include "rotation_impl.h"

#include <float.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define KVS_HAVE_X86 1
#endif

const float kvs_rot_sign_codebook[2] = {-1.0f, 1.0f};

void kvs_rot_pack_codes(const uint8_t *codes, uint32_t n, unsigned bits, uint8_t *out)
{
    memset(out, 0, kvs_rot_packed_bytes(n, bits));
    for (uint32_t j = 0; j < n; j++) {
        uint64_t bit = (uint64_t)j * bits;

        for (unsigned b = 0; b < bits; b++, bit++)
            if ((codes[j] >> b) & 1u)
                out[bit >> 3] |= (uint8_t)(1u << (bit & 7));
    }
}

uint32_t kvs_rot_unpack_code(const uint8_t *packed, uint32_t j, unsigned bits)
{
    uint64_t bit = (uint64_t)j * bits;
    uint32_t code = 0;

    for (unsigned b = 0; b < bits; b++, bit++)
        code |= (uint32_t)((packed[bit >> 3] >> (bit & 7)) & 1u) << b;
    return code;
}

uint8_t kvs_rot_nearest_centroid(const float *centroids, uint32_t levels, float x)
{
    /* Boundaries are midpoints between sorted centroids, so the nearest one
    ** is the count of midpoints below x. */
    uint8_t k = 0;

    while (k + 1u < levels && x > 0.5f * (centroids[k] + centroids[k + 1]))
        k++;
    return k;
}

/* ---- look-up tables --------------------------------------------------- */

kvs_status_e kvs_rot_code_lut_init(kvs_rot_code_lut_t *lut, uint32_t n, unsigned bits)
{
    KVS_RETURN_IF(bits == 0 || 8 % bits != 0, KVS_ERR_INTERNAL,
                  "code look-up tables need bits dividing 8, got %u", bits);
    lut->n_bytes = kvs_rot_packed_bytes(n, bits);
    lut->table = malloc((size_t)lut->n_bytes * 256 * sizeof *lut->table);
    KVS_RETURN_IF(!lut->table, KVS_ERR_NOMEM, "out of memory for a %u-byte code table",
                  lut->n_bytes * 256);
    return KVS_OK;
}

void kvs_rot_code_lut_free(kvs_rot_code_lut_t *lut)
{
    free(lut->table);
    lut->table = NULL;
}

void kvs_rot_code_lut_build(kvs_rot_code_lut_t *lut, const float *y, uint32_t n, unsigned bits,
                        const float *codebook)
{
    uint32_t per_byte = 8 / bits;
    uint32_t levels = 1u << bits;
    uint32_t mask = levels - 1;

    for (uint32_t p = 0; p < lut->n_bytes; p++) {
        float a[256], b[256];
        float *cur = a, *next = b;
        uint32_t size = 1;

        /* Built from the highest code of the byte down: the table over codes
        ** i..k-1 is the table over i+1..k-1 plus code i's contribution, so
        ** each byte costs about 2 * 256 adds rather than 256 * per_byte. */
        cur[0] = 0.0f;
        for (int i = (int)per_byte - 1; i >= 0; i--) {
            uint32_t j = p * per_byte + (uint32_t)i;
            float yj = j < n ? y[j] : 0.0f;

            for (uint32_t v = 0; v < size * levels; v++)
                next[v] = yj * codebook[v & mask] + cur[v >> bits];
            size *= levels;
            float *t = cur;
            cur = next;
            next = t;
        }
        memcpy(lut->table + (size_t)p * 256, cur, 256 * sizeof *cur);
    }
}

void kvs_rot_code_dot_ref(const uint8_t *codes, uint32_t stride, uint32_t n_tok, const float *y,
                      uint32_t n, unsigned bits, const float *codebook, float *score)
{
    for (uint32_t t = 0; t < n_tok; t++) {
        const uint8_t *row = codes + (size_t)t * stride;
        float s = 0.0f;

        for (uint32_t j = 0; j < n; j++)
            s += y[j] * codebook[kvs_rot_unpack_code(row, j, bits)];
        score[t] = s;
    }
}

void kvs_rot_code_dot_lut_scalar(const kvs_rot_code_lut_t *lut, const uint8_t *codes, uint32_t stride,
                             uint32_t n_tok, float *score)
{
    for (uint32_t t = 0; t < n_tok; t++) {
        const uint8_t *row = codes + (size_t)t * stride;
        float s = 0.0f;

        for (uint32_t p = 0; p < lut->n_bytes; p++)
            s += lut->table[(size_t)p * 256 + row[p]];
        score[t] = s;
    }
}

void kvs_rot_code_dot_table(const uint8_t *codes, uint32_t stride, uint32_t n_tok,
                            const float *table, uint32_t n, unsigned bits, float *score)
{
    uint32_t mask = (1u << bits) - 1;

    for (uint32_t t = 0; t < n_tok; t++) {
        const uint8_t *row = codes + (size_t)t * stride;
        uint32_t bit = 0;
        float s = 0.0f;

        for (uint32_t j = 0; j < n; j++, bit += bits) {
            uint32_t window = row[bit >> 3] | ((uint32_t)row[(bit >> 3) + 1] << 8);

            s += table[((size_t)j << bits) + ((window >> (bit & 7)) & mask)];
        }
        score[t] = s;
    }
}

#ifdef KVS_HAVE_X86
/* Eight tokens per iteration: gather one code byte of each (as the low byte
** of a 32-bit load, hence the 3 padding bytes after the last row), then
** gather the eight table entries. */
__attribute__((target("avx2,fma"))) static void
code_dot_lut_avx2(const kvs_rot_code_lut_t *lut, const uint8_t *codes, uint32_t stride,
                  uint32_t n_tok, float *score)
{
    const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i low_byte = _mm256_set1_epi32(0xFF);
    const __m256i vstride = _mm256_set1_epi32((int)stride);
    uint32_t t = 0;

    for (; t + 8 <= n_tok; t += 8) {
        __m256i offs = _mm256_mullo_epi32(_mm256_add_epi32(_mm256_set1_epi32((int)t), lanes),
                                          vstride);
        __m256 acc = _mm256_setzero_ps();

        for (uint32_t p = 0; p < lut->n_bytes; p++) {
            __m256i word = _mm256_i32gather_epi32((const int *)(const void *)codes,
                                                  _mm256_add_epi32(offs, _mm256_set1_epi32((int)p)),
                                                  1);
            __m256i idx = _mm256_and_si256(word, low_byte);

            acc = _mm256_add_ps(acc, _mm256_i32gather_ps(lut->table + (size_t)p * 256, idx, 4));
        }
        _mm256_storeu_ps(score + t, acc);
    }
    if (t < n_tok)
        kvs_rot_code_dot_lut_scalar(lut, codes + (size_t)t * stride, stride, n_tok - t, score + t);
}
#endif

int kvs_rot_code_dot_has_avx2(void)
{
#ifdef KVS_HAVE_X86
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    return 0;
#endif
}

void kvs_rot_code_dot_lut(const kvs_rot_code_lut_t *lut, const uint8_t *codes, uint32_t stride,
                      uint32_t n_tok, float *score)
{
#ifdef KVS_HAVE_X86
    /* 32-bit gather offsets limit the AVX2 path to 2 GiB of codes. */
    if (kvs_rot_code_dot_has_avx2() && (uint64_t)n_tok * stride < 0x7FFFFF00u) {
        code_dot_lut_avx2(lut, codes, stride, n_tok, score);
        return;
    }
#endif
    kvs_rot_code_dot_lut_scalar(lut, codes, stride, n_tok, score);
}

/* ---- accumulation on codes -------------------------------------------- */

size_t kvs_rot_code_accumulate_scratch(uint32_t n, unsigned bits)
{
    size_t per_code = (size_t)n << bits;
    size_t per_byte = (size_t)kvs_rot_packed_bytes(n, bits) * 256;

    return per_code + (8 % bits == 0 ? per_byte : 0);
}

void kvs_rot_code_accumulate(const uint8_t *codes, uint32_t stride, uint32_t n_tok, const float *wt,
                         uint32_t n, unsigned bits, const float *codebook, float *hist,
                         float *acc)
{
    uint32_t levels = 1u << bits;
    uint32_t mask = levels - 1;

    memset(hist, 0, ((size_t)n << bits) * sizeof *hist);

    if (8 % bits == 0) {
        /* Histogram of weights per (byte position, byte value), then each
        ** byte value's weight goes to the codewords it holds. */
        uint32_t n_bytes = kvs_rot_packed_bytes(n, bits);
        uint32_t per_byte = 8 / bits;
        float *byte_hist = hist + ((size_t)n << bits);

        memset(byte_hist, 0, (size_t)n_bytes * 256 * sizeof *byte_hist);
        for (uint32_t t = 0; t < n_tok; t++) {
            const uint8_t *row = codes + (size_t)t * stride;
            float w = wt[t];

            if (w == 0.0f)
                continue;
            for (uint32_t p = 0; p < n_bytes; p++)
                byte_hist[(size_t)p * 256 + row[p]] += w;
        }
        for (uint32_t p = 0; p < n_bytes; p++) {
            const float *bh = byte_hist + (size_t)p * 256;

            for (uint32_t v = 0; v < 256; v++) {
                if (bh[v] == 0.0f)
                    continue;
                for (uint32_t i = 0; i < per_byte; i++) {
                    uint32_t j = p * per_byte + i;

                    if (j < n)
                        hist[((size_t)j << bits) + ((v >> (i * bits)) & mask)] += bh[v];
                }
            }
        }
    } else {
        for (uint32_t t = 0; t < n_tok; t++) {
            const uint8_t *row = codes + (size_t)t * stride;
            float w = wt[t];

            if (w == 0.0f)
                continue;
            /* 16-bit window reads, as in kvs_rot_code_dot_table. */
            for (uint32_t j = 0, bit = 0; j < n; j++, bit += bits) {
                uint32_t window = row[bit >> 3] | ((uint32_t)row[(bit >> 3) + 1] << 8);

                hist[((size_t)j << bits) + ((window >> (bit & 7)) & mask)] += w;
            }
        }
    }

    /* One multiply per (coordinate, codeword). */
    for (uint32_t j = 0; j < n; j++) {
        const float *h = hist + ((size_t)j << bits);
        float s = 0.0f;

        for (uint32_t c = 0; c < levels; c++)
            s += h[c] * codebook[c];
        acc[j] += s;
    }
}

#ifdef KVS_HAVE_X86
__attribute__((target("avx2,fma"))) static void
code_accumulate_avx2(const uint8_t *codes, uint32_t stride, uint32_t n_tok, const float *wt,
                     uint32_t n, unsigned bits, const float *codebook, float *acc)
{
    const __m256i shifts = _mm256_setr_epi32(0, (int)bits, 2 * (int)bits, 3 * (int)bits,
                                             4 * (int)bits, 5 * (int)bits, 6 * (int)bits,
                                             7 * (int)bits);
    const __m256i mask = _mm256_set1_epi32((1 << bits) - 1);
    float lo_cb[8] = {0}, hi_cb[8] = {0};
    __m256 lo, hi, sum[32];
    uint32_t n_blocks = n / 8;

    for (uint32_t c = 0; c < (1u << bits); c++) {
        if (c < 8)
            lo_cb[c] = codebook[c];
        else
            hi_cb[c - 8] = codebook[c];
    }
    lo = _mm256_loadu_ps(lo_cb);
    hi = _mm256_loadu_ps(hi_cb);

    /* Blocks of up to 32 x 8 coordinates stay in registers across tokens. */
    for (uint32_t b0 = 0; b0 < n_blocks; b0 += 32) {
        uint32_t nb = n_blocks - b0 < 32 ? n_blocks - b0 : 32;

        for (uint32_t b = 0; b < nb; b++)
            sum[b] = _mm256_setzero_ps();
        for (uint32_t t = 0; t < n_tok; t++) {
            const uint8_t *row = codes + (size_t)t * stride;
            __m256 w;

            if (wt[t] == 0.0f)
                continue;
            w = _mm256_set1_ps(wt[t]);
            for (uint32_t b = 0; b < nb; b++) {
                uint32_t word;
                __m256i idx;
                __m256 v;

                /* Eight codes of a block start on a byte: block * bits bytes. */
                memcpy(&word, row + (size_t)(b0 + b) * bits, sizeof word);
                idx = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32((int)word), shifts),
                                       mask);
                v = _mm256_permutevar8x32_ps(lo, idx);
                if (bits == 4)
                    v = _mm256_blendv_ps(v, _mm256_permutevar8x32_ps(hi, idx),
                                         _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
                sum[b] = _mm256_fmadd_ps(v, w, sum[b]);
            }
        }
        for (uint32_t b = 0; b < nb; b++) {
            float *a = acc + (size_t)(b0 + b) * 8;

            _mm256_storeu_ps(a, _mm256_add_ps(_mm256_loadu_ps(a), sum[b]));
        }
    }
}
#endif

#ifdef KVS_HAVE_X86
__attribute__((target("avx2,fma"))) static void
code_dot_avx2(const uint8_t *codes, uint32_t stride, uint32_t n_tok, const float *y, uint32_t n,
              unsigned bits, const float *codebook, float *score)
{
    const __m256i shifts = _mm256_setr_epi32(0, (int)bits, 2 * (int)bits, 3 * (int)bits,
                                             4 * (int)bits, 5 * (int)bits, 6 * (int)bits,
                                             7 * (int)bits);
    const __m256i mask = _mm256_set1_epi32((1 << bits) - 1);
    float lo_cb[8] = {0}, hi_cb[8] = {0};
    __m256 lo, hi;
    uint32_t n_blocks = n / 8;

    for (uint32_t c = 0; c < (1u << bits); c++) {
        if (c < 8)
            lo_cb[c] = codebook[c];
        else
            hi_cb[c - 8] = codebook[c];
    }
    lo = _mm256_loadu_ps(lo_cb);
    hi = _mm256_loadu_ps(hi_cb);

    for (uint32_t t = 0; t < n_tok; t++) {
        const uint8_t *row = codes + (size_t)t * stride;
        __m256 acc = _mm256_setzero_ps();
        __m128 half;

        for (uint32_t b = 0; b < n_blocks; b++) {
            uint32_t word;
            __m256i idx;
            __m256 v;

            memcpy(&word, row + (size_t)b * bits, sizeof word);
            idx = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32((int)word), shifts), mask);
            v = _mm256_permutevar8x32_ps(lo, idx);
            if (bits == 4)
                v = _mm256_blendv_ps(v, _mm256_permutevar8x32_ps(hi, idx),
                                     _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
            acc = _mm256_fmadd_ps(v, _mm256_loadu_ps(y + (size_t)b * 8), acc);
        }
        half = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
        half = _mm_add_ps(half, _mm_movehl_ps(half, half));
        half = _mm_add_ss(half, _mm_movehdup_ps(half));
        score[t] = _mm_cvtss_f32(half);
    }
}
#endif

int kvs_rot_code_dot_avx2(const uint8_t *codes, uint32_t stride, uint32_t n_tok, const float *y,
                          uint32_t n, unsigned bits, const float *codebook, float *score)
{
#ifdef KVS_HAVE_X86
    if (n % 8 != 0 || bits < 1 || bits > 4 || !kvs_rot_code_dot_has_avx2())
        return 0;
    code_dot_avx2(codes, stride, n_tok, y, n, bits, codebook, score);
    return 1;
#else
    return 0;
#endif
}

int kvs_rot_code_accumulate_avx2(const uint8_t *codes, uint32_t stride, uint32_t n_tok,
                                 const float *wt, uint32_t n, unsigned bits,
                                 const float *codebook, float *acc)
{
#ifdef KVS_HAVE_X86
    if (n % 8 != 0 || bits < 1 || bits > 4 || !kvs_rot_code_dot_has_avx2())
        return 0;
    code_accumulate_avx2(codes, stride, n_tok, wt, n, bits, codebook, acc);
    return 1;
#else
    return 0;
#endif
}

void kvs_rot_code_accumulate_ref(const uint8_t *codes, uint32_t stride, uint32_t n_tok,
                             const float *wt, uint32_t n, unsigned bits, const float *codebook,
                             float *acc)
{
    for (uint32_t t = 0; t < n_tok; t++) {
        const uint8_t *row = codes + (size_t)t * stride;

        for (uint32_t j = 0; j < n; j++)
            acc[j] += wt[t] * codebook[kvs_rot_unpack_code(row, j, bits)];
    }
}
