/*
** fpformat.h: narrow floating-point storage formats used by the kernels
** (F16, BF16, FP8 E4M3 and E5M2), converted to and from F32.
**
** Every conversion rounds to nearest, ties to even. FP8 follows the OCP
** 8-bit Floating Point Specification (OFP8) revision 1.0 in its saturating
** mode: a finite value beyond the largest normal becomes that normal
** (E4M3 448, E5M2 57344), and so does an infinity. F16 and BF16 keep IEEE
** overflow to infinity. NaN stays NaN in every format.
*/
#ifndef KVS_FPFORMAT_H
#define KVS_FPFORMAT_H

#include "../../common/half.h"

#include <stddef.h>
#include <stdint.h>

typedef enum kvs_fp_e {
    KVS_FP_F32 = 0,
    KVS_FP_F16 = 1,
    KVS_FP_BF16 = 2,
    KVS_FP_E4M3 = 3,
    KVS_FP_E5M2 = 4,
    KVS_FP_COUNT
} kvs_fp_e;

/* Spec names: "f32", "f16", "bf16", "fp8-e4m3", "fp8-e5m2". */
const char *kvs_fp_name(kvs_fp_e fmt);
/* Parses a spec name; returns -1 when unknown. */
int kvs_fp_parse(const char *name);
/* Bytes per stored element: 4, 2, 2, 1, 1. */
size_t kvs_fp_size(kvs_fp_e fmt);

uint8_t kvs_fp_f32_to_e4m3(float x);
float kvs_fp_e4m3_to_f32(uint8_t c);
uint8_t kvs_fp_f32_to_e5m2(float x);
float kvs_fp_e5m2_to_f32(uint8_t c);

/* Encodes n floats into dst (n * kvs_fp_size(fmt) bytes, native byte
** order for the 16- and 32-bit formats) and decodes them back. */
void kvs_fp_encode(kvs_fp_e fmt, const float *src, void *dst, size_t n);
void kvs_fp_decode(kvs_fp_e fmt, const void *src, float *dst, size_t n);

/* x rounded to the nearest value of fmt, as F32. */
float kvs_fp_round(kvs_fp_e fmt, float x);

/* x rounded toward +infinity (dir > 0) or -infinity (dir < 0) to a value
** of fmt, for F32, F16 and BF16. Quantizers store a group's minimum rounded
** down and its step rounded up so the group's range stays covered. */
float kvs_fp_round_dir(kvs_fp_e fmt, float x, int dir);

#endif
