/*
** half.h: conversions between F32 and the 16-bit float formats, IEEE 754
** binary16 (F16) and bfloat16 (BF16).
**
** F32 to 16 bits rounds to nearest, ties to even (IEEE 754
** roundTiesToEven). Values beyond a format's range become infinity, NaN
** stays a quiet NaN with its sign, and F16 keeps subnormals. The other
** direction is exact.
*/
#ifndef KVS_HALF_H
#define KVS_HALF_H

#include <stdint.h>

uint16_t kvs_f32_to_f16(float x);
float kvs_f16_to_f32(uint16_t h);
uint16_t kvs_f32_to_bf16(float x);
float kvs_bf16_to_f32(uint16_t h);

#endif
