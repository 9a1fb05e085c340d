/* pack.c: planar and bit-stream code packing, scalar and AVX2 unpacking. */
#include "pack.h"

#include "../simd.h"

#include <immintrin.h>
#include <string.h>

static int planar(uint32_t bits)
{
    return bits == 1 || bits == 2 || bits == 4 || bits == 8;
}

uint32_t kvs_pack_row_bytes(uint32_t d, uint32_t bits)
{
    return (uint32_t)(((uint64_t)d * bits + 7) / 8);
}

void kvs_pack_row(const uint8_t *codes, uint32_t d, uint32_t bits, uint8_t *dst)
{
    uint32_t nb = kvs_pack_row_bytes(d, bits);

    memset(dst, 0, nb);
    if (planar(bits)) {
        for (uint32_t i = 0; i < d; i++)
            dst[i % nb] |= (uint8_t)(codes[i] << (bits * (i / nb)));
        return;
    }
    for (uint32_t i = 0; i < d; i++) {
        uint32_t bit = bits * i;
        uint32_t v = (uint32_t)codes[i] << (bit % 8);
        dst[bit / 8] |= (uint8_t)v;
        if (bit % 8 + bits > 8)
            dst[bit / 8 + 1] |= (uint8_t)(v >> 8);
    }
}

void kvs_unpack_row_ref(const uint8_t *src, uint32_t d, uint32_t bits, float *out)
{
    uint32_t nb = kvs_pack_row_bytes(d, bits);
    uint32_t mask = (1u << bits) - 1u;

    if (planar(bits)) {
        for (uint32_t i = 0; i < d; i++)
            out[i] = (float)((src[i % nb] >> (bits * (i / nb))) & mask);
        return;
    }
    for (uint32_t i = 0; i < d; i++) {
        uint32_t bit = bits * i;
        uint32_t v = src[bit / 8];
        if (bit % 8 + bits > 8)
            v |= (uint32_t)src[bit / 8 + 1] << 8;
        out[i] = (float)((v >> (bit % 8)) & mask);
    }
}

/* Planar rows with nb a multiple of 8: each 8-byte load widens to eight
** 32-bit lanes, and each bit field of those bytes gives eight codes that
** are nb apart in the row. */
__attribute__((target("avx2,fma"))) static void unpack_planar_avx2(const uint8_t *src, uint32_t d,
                                                                   uint32_t bits, float *out)
{
    uint32_t nb = kvs_pack_row_bytes(d, bits);
    uint32_t fields = 8 / bits;
    __m256i mask = _mm256_set1_epi32((int)((1u << bits) - 1u));

    for (uint32_t j = 0; j < nb; j += 8) {
        __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(src + j)));
        for (uint32_t f = 0; f < fields; f++) {
            __m256i c = _mm256_and_si256(_mm256_srl_epi32(v, _mm_cvtsi32_si128((int)(bits * f))), mask);
            _mm256_storeu_ps(out + (size_t)f * nb + j, _mm256_cvtepi32_ps(c));
        }
    }
}

void kvs_unpack_row(const uint8_t *src, uint32_t d, uint32_t bits, float *out)
{
    if (planar(bits) && kvs_simd_avx2() && (uint64_t)d * bits % 64 == 0) {
        unpack_planar_avx2(src, d, bits, out);
        return;
    }
    kvs_unpack_row_ref(src, d, bits, out);
}
