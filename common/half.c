/* half.c: F32 <-> F16 and BF16 conversions in portable C. */
#include "half.h"

#include <math.h>
#include <string.h>

static uint32_t f32_bits(float x)
{
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return u;
}

static float bits_f32(uint32_t u)
{
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

uint16_t kvs_f32_to_f16(float x)
{
    uint32_t u = f32_bits(x);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t a = u & 0x7FFFFFFFu;

    if (a > 0x7F800000u)
        return sign | 0x7E00u;
    /* 65520 is halfway between the largest F16 (65504, odd mantissa) and
    ** 65536, so it and everything above round to infinity. */
    if (a >= 0x477FF000u)
        return sign | 0x7C00u;
    if (a < 0x38800000u) {
        /* Below 2^-14 the result is subnormal: a multiple of 2^-24. Scaling
        ** by 2^24 is exact, and lrintf rounds half to even. */
        return sign | (uint16_t)lrintf(bits_f32(a) * 16777216.0f);
    }
    uint32_t h = (((a >> 23) - 127u + 15u) << 10) | ((a & 0x7FFFFFu) >> 13);
    uint32_t rest = a & 0x1FFFu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u)))
        h++;  /* a carry out of the mantissa correctly bumps the exponent */
    return sign | (uint16_t)h;
}

float kvs_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t magnitude = (uint32_t)(h & 0x7fffu) << 13;

    if ((h & 0x7c00u) == 0x7c00u)
        return bits_f32(sign | 0x7f800000u | (magnitude & 0x007fffffu));

    /* Shifted into place, the half's bits read as a float 2^112 too small
    ** (exponent bias 127 against 15). Multiplying by 2^112 is exact and
    ** turns half subnormals, which land in the float subnormal range, into
    ** the right normal floats without a branch. */
    float v = bits_f32(magnitude) * 0x1p112f;
    return bits_f32(f32_bits(v) | sign);
}

uint16_t kvs_f32_to_bf16(float x)
{
    uint32_t u = f32_bits(x);

    if ((u & 0x7FFFFFFFu) > 0x7F800000u)
        return (uint16_t)((u >> 16) | 0x0040u);  /* quiet NaN, sign kept */
    /* Round the low 16 bits to nearest even; a carry into the exponent of
    ** the largest finite values yields the infinity pattern. */
    u += 0x7FFFu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

float kvs_bf16_to_f32(uint16_t h)
{
    return bits_f32((uint32_t)h << 16);
}
