/* fpformat.c: F16, BF16 and OCP FP8 conversions with round-to-nearest-even. */
#include "fpformat.h"

#include <math.h>
#include <string.h>

static const char *const fp_names[KVS_FP_COUNT] = {
    [KVS_FP_F32] = "f32", [KVS_FP_F16] = "f16", [KVS_FP_BF16] = "bf16",
    [KVS_FP_E4M3] = "fp8-e4m3", [KVS_FP_E5M2] = "fp8-e5m2",
};
_Static_assert(KVS_FP_COUNT == 5, "fp_names covers every format");

const char *kvs_fp_name(kvs_fp_e fmt)
{
    return (unsigned)fmt < KVS_FP_COUNT ? fp_names[fmt] : "?";
}

int kvs_fp_parse(const char *name)
{
    for (int i = 0; i < KVS_FP_COUNT; i++) {
        if (!strcmp(name, fp_names[i]))
            return i;
    }
    return -1;
}

size_t kvs_fp_size(kvs_fp_e fmt)
{
    switch (fmt) {
    case KVS_FP_F32: return 4;
    case KVS_FP_F16:
    case KVS_FP_BF16: return 2;
    default: return 1;
    }
}

/* ---- FP8 -------------------------------------------------------------- */

/* Decodes a sign-magnitude minifloat with ebits exponent bits, mbits
** mantissa bits and the given bias (no special values handled here). */
static double minifloat_value(unsigned mag, int ebits, int mbits, int bias)
{
    unsigned e = mag >> mbits;
    unsigned m = mag & ((1u << mbits) - 1u);

    if (e == 0)
        return ldexp((double)m, 1 - bias - mbits);
    return ldexp((double)((1u << mbits) | m), (int)e - bias - mbits);
}

/* Rounds |x| to the nearest of the magnitudes 0..max_mag (ascending),
** ties to the even code, saturating at max_mag. */
static unsigned minifloat_encode_mag(double a, unsigned max_mag, int ebits, int mbits, int bias)
{
    unsigned lo = 0, hi = max_mag;

    if (a >= minifloat_value(max_mag, ebits, mbits, bias))
        return max_mag;
    /* Largest code whose value is <= a. */
    while (lo < hi) {
        unsigned mid = (lo + hi + 1) / 2;
        if (minifloat_value(mid, ebits, mbits, bias) <= a)
            lo = mid;
        else
            hi = mid - 1;
    }
    double below = minifloat_value(lo, ebits, mbits, bias);
    double above = minifloat_value(lo + 1, ebits, mbits, bias);
    double mid = 0.5 * (below + above);
    if (a > mid || (a == mid && (lo & 1u)))
        return lo + 1;
    return lo;
}

/* OFP8 E4M3: bias 7, no infinities, S.1111.111 is NaN, max normal 448
** (S.1111.110). */
uint8_t kvs_fp_f32_to_e4m3(float x)
{
    uint8_t sign = signbit(x) ? 0x80 : 0x00;

    if (isnan(x))
        return 0x7F;
    return sign | (uint8_t)minifloat_encode_mag(fabs((double)x), 0x7E, 4, 3, 7);
}

float kvs_fp_e4m3_to_f32(uint8_t c)
{
    unsigned mag = c & 0x7Fu;

    if (mag == 0x7F)
        return NAN;
    float v = (float)minifloat_value(mag, 4, 3, 7);
    return (c & 0x80) ? -v : v;
}

/* OFP8 E5M2: bias 15, IEEE-like infinities (S.11111.00) and NaNs, max
** normal 57344 (S.11110.11). Saturating mode maps infinities to max. */
uint8_t kvs_fp_f32_to_e5m2(float x)
{
    uint8_t sign = signbit(x) ? 0x80 : 0x00;

    if (isnan(x))
        return 0x7F;
    return sign | (uint8_t)minifloat_encode_mag(fabs((double)x), 0x7B, 5, 2, 15);
}

float kvs_fp_e5m2_to_f32(uint8_t c)
{
    unsigned mag = c & 0x7Fu;

    if (mag > 0x7C)
        return NAN;
    float v = mag == 0x7C ? INFINITY : (float)minifloat_value(mag, 5, 2, 15);
    return (c & 0x80) ? -v : v;
}

/* ---- rows --------------------------------------------------------------- */

void kvs_fp_encode(kvs_fp_e fmt, const float *src, void *dst, size_t n)
{
    uint16_t *h = dst;
    uint8_t *b = dst;

    switch (fmt) {
    case KVS_FP_F32: memcpy(dst, src, n * 4); break;
    case KVS_FP_F16: for (size_t i = 0; i < n; i++) h[i] = kvs_f32_to_f16(src[i]); break;
    case KVS_FP_BF16: for (size_t i = 0; i < n; i++) h[i] = kvs_f32_to_bf16(src[i]); break;
    case KVS_FP_E4M3: for (size_t i = 0; i < n; i++) b[i] = kvs_fp_f32_to_e4m3(src[i]); break;
    case KVS_FP_E5M2: for (size_t i = 0; i < n; i++) b[i] = kvs_fp_f32_to_e5m2(src[i]); break;
    default: break;
    }
}

void kvs_fp_decode(kvs_fp_e fmt, const void *src, float *dst, size_t n)
{
    const uint16_t *h = src;
    const uint8_t *b = src;

    switch (fmt) {
    case KVS_FP_F32: memcpy(dst, src, n * 4); break;
    case KVS_FP_F16: for (size_t i = 0; i < n; i++) dst[i] = kvs_f16_to_f32(h[i]); break;
    case KVS_FP_BF16: for (size_t i = 0; i < n; i++) dst[i] = kvs_bf16_to_f32(h[i]); break;
    case KVS_FP_E4M3: for (size_t i = 0; i < n; i++) dst[i] = kvs_fp_e4m3_to_f32(b[i]); break;
    case KVS_FP_E5M2: for (size_t i = 0; i < n; i++) dst[i] = kvs_fp_e5m2_to_f32(b[i]); break;
    default: break;
    }
}

float kvs_fp_round(kvs_fp_e fmt, float x)
{
    uint8_t buf[4];

    kvs_fp_encode(fmt, &x, buf, 1);
    kvs_fp_decode(fmt, buf, &x, 1);
    return x;
}

/* Next 16-bit sign-magnitude code toward +inf (up) or -inf. */
static uint16_t step16(uint16_t h, int up)
{
    int negative = (h & 0x8000u) != 0;

    if ((h & 0x7FFFu) == 0)
        return up ? 0x0001u : 0x8001u;
    return (uint16_t)((up != negative) ? h + 1 : h - 1);
}

float kvs_fp_round_dir(kvs_fp_e fmt, float x, int dir)
{
    if (fmt == KVS_FP_F32 || !isfinite(x))
        return x;

    uint16_t h = fmt == KVS_FP_F16 ? kvs_f32_to_f16(x) : kvs_f32_to_bf16(x);
    float y = fmt == KVS_FP_F16 ? kvs_f16_to_f32(h) : kvs_bf16_to_f32(h);

    if ((dir > 0 && y < x) || (dir < 0 && y > x)) {
        h = step16(h, dir > 0);
        y = fmt == KVS_FP_F16 ? kvs_f16_to_f32(h) : kvs_bf16_to_f32(h);
    }
    return y;
}
