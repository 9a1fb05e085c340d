/*
** pack.h: bit packing of integer codes, one row (one token's head_dim codes)
** at a time.
**
** Widths that divide 8 (1, 2, 4, 8 bits) use a planar layout so that SIMD
** code unpacks whole registers without shuffles: a row of d codes takes
** nb = ceil(d * bits / 8) bytes, and code i sits in byte i % nb at bit
** offset bits * (i / nb). At 4 bits and d = 64, byte j contains codes j
** (low nibble) and j + 32 (high nibble). Other widths (3 bits) are a plain
** little-endian bit stream: code i occupies bits [bits*i, bits*(i+1)).
** Either way a row takes exactly ceil(d * bits / 8) bytes.
*/
#ifndef KVS_QUANT_PACK_H
#define KVS_QUANT_PACK_H

#include <stdint.h>

/* Bytes of one packed row. */
uint32_t kvs_pack_row_bytes(uint32_t d, uint32_t bits);

/* Packs d codes (each < 2^bits) into dst (kvs_pack_row_bytes bytes). */
void kvs_pack_row(const uint8_t *codes, uint32_t d, uint32_t bits, uint8_t *dst);

/* Unpacks a row into d floats holding the integer codes. */
void kvs_unpack_row(const uint8_t *src, uint32_t d, uint32_t bits, float *out);
void kvs_unpack_row_ref(const uint8_t *src, uint32_t d, uint32_t bits, float *out);

#endif
