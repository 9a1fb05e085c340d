/* trace_common.c: names, record encoding, dtype conversion and byte shuffling. */
#include "trace_internal.h"

#include <math.h>
#include <string.h>

static const char *const kind_names[] = {"q", "k", "k_pre", "v"};
_Static_assert(sizeof kind_names / sizeof kind_names[0] == KVS_KIND_COUNT, "one name per kind");

static const char *const dtype_names[] = {"f32", "f16", "bf16"};
_Static_assert(sizeof dtype_names / sizeof dtype_names[0] == KVS_DTYPE_COUNT, "one name per dtype");

const char *kvs_kind_name(kvs_kind_e kind)
{
    return (unsigned)kind < KVS_KIND_COUNT ? kind_names[kind] : "unknown";
}

const char *kvs_dtype_name(kvs_dtype_e dtype)
{
    return (unsigned)dtype < KVS_DTYPE_COUNT ? dtype_names[dtype] : "unknown";
}

kvs_status_e kvs_dtype_parse(const char *name, kvs_dtype_e *out)
{
    for (int i = 0; i < KVS_DTYPE_COUNT; i++) {
        if (name && !strcmp(name, dtype_names[i])) {
            *out = (kvs_dtype_e)i;
            return KVS_OK;
        }
    }
    return kvs_fail(KVS_ERR_USAGE, "unknown dtype '%s' (use f32, f16 or bf16)", name ? name : "");
}

uint32_t kvs_trace_row_width(const kvs_trace_shape_t *shape, kvs_kind_e kind)
{
    uint32_t heads = kind == KVS_KIND_Q ? shape->n_heads : shape->n_kv_heads;
    return heads * shape->head_dim;
}

size_t kvs_dtype_size(kvs_dtype_e dtype)
{
    return dtype == KVS_DTYPE_F32 ? 4 : 2;
}

/* ---- little-endian fields --------------------------------------------- */

static void put_u32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void put_u64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t get_u32(const uint8_t *p)
{
    uint32_t v = 0;
    for (int i = 3; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static uint64_t get_u64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

void kvs_trace_header_encode(const kvs_trace_header_t *h, uint8_t out[KVS_TRACE_HEADER_BYTES])
{
    memcpy(out, h->magic, 8);
    put_u32(out + 8, h->version);
    put_u32(out + 12, h->header_bytes);
    put_u32(out + 16, h->n_layers);
    put_u32(out + 20, h->n_heads);
    put_u32(out + 24, h->n_kv_heads);
    put_u32(out + 28, h->head_dim);
    put_u32(out + 32, h->dtype);
    put_u32(out + 36, h->block_tokens);
    put_u32(out + 40, h->flags);
    put_u32(out + 44, (uint32_t)h->zstd_level);
    put_u64(out + 48, h->reserved);
    put_u64(out + 56, h->checksum);
}

void kvs_trace_header_decode(const uint8_t in[KVS_TRACE_HEADER_BYTES], kvs_trace_header_t *h)
{
    memcpy(h->magic, in, 8);
    h->version = get_u32(in + 8);
    h->header_bytes = get_u32(in + 12);
    h->n_layers = get_u32(in + 16);
    h->n_heads = get_u32(in + 20);
    h->n_kv_heads = get_u32(in + 24);
    h->head_dim = get_u32(in + 28);
    h->dtype = get_u32(in + 32);
    h->block_tokens = get_u32(in + 36);
    h->flags = get_u32(in + 40);
    h->zstd_level = (int32_t)get_u32(in + 44);
    h->reserved = get_u64(in + 48);
    h->checksum = get_u64(in + 56);
}

void kvs_trace_entry_encode(const kvs_trace_entry_t *e, uint8_t out[KVS_TRACE_ENTRY_BYTES])
{
    out[0] = e->kind;
    memcpy(out + 1, e->reserved, 3);
    put_u32(out + 4, e->layer);
    put_u32(out + 8, e->first_token);
    put_u32(out + 12, e->n_tokens);
    put_u64(out + 16, e->offset);
    put_u64(out + 24, e->compressed_bytes);
    put_u64(out + 32, e->raw_bytes);
    put_u64(out + 40, e->checksum);
}

void kvs_trace_entry_decode(const uint8_t in[KVS_TRACE_ENTRY_BYTES], kvs_trace_entry_t *e)
{
    e->kind = in[0];
    memcpy(e->reserved, in + 1, 3);
    e->layer = get_u32(in + 4);
    e->first_token = get_u32(in + 8);
    e->n_tokens = get_u32(in + 12);
    e->offset = get_u64(in + 16);
    e->compressed_bytes = get_u64(in + 24);
    e->raw_bytes = get_u64(in + 32);
    e->checksum = get_u64(in + 40);
}

void kvs_trace_footer_encode(const kvs_trace_footer_t *f, uint8_t out[KVS_TRACE_FOOTER_BYTES])
{
    memcpy(out, f->magic, 8);
    put_u64(out + 8, f->index_offset);
    put_u64(out + 16, f->index_count);
    put_u64(out + 24, f->metadata_offset);
    put_u64(out + 32, f->metadata_bytes);
    put_u64(out + 40, f->n_tokens);
    put_u64(out + 48, f->checksum);
    memcpy(out + 56, f->end_magic, 8);
}

void kvs_trace_footer_decode(const uint8_t in[KVS_TRACE_FOOTER_BYTES], kvs_trace_footer_t *f)
{
    memcpy(f->magic, in, 8);
    f->index_offset = get_u64(in + 8);
    f->index_count = get_u64(in + 16);
    f->metadata_offset = get_u64(in + 24);
    f->metadata_bytes = get_u64(in + 32);
    f->n_tokens = get_u64(in + 40);
    f->checksum = get_u64(in + 48);
    memcpy(f->end_magic, in + 56, 8);
}

/* ---- dtype conversion ------------------------------------------------- */

static uint32_t f32_bits(float x)
{
    uint32_t u;
    memcpy(&u, &x, 4);
    return u;
}

static float f32_from_bits(uint32_t u)
{
    float x;
    memcpy(&x, &u, 4);
    return x;
}

/* ---- byte shuffling --------------------------------------------------- */

size_t kvs_trace_shuffle_encode(const float *src, size_t n, kvs_dtype_e dtype, uint8_t *dst)
{
    if (dtype == KVS_DTYPE_F32) {
        for (size_t i = 0; i < n; i++) {
            uint32_t u = f32_bits(src[i]);
            dst[i] = (uint8_t)u;
            dst[n + i] = (uint8_t)(u >> 8);
            dst[2 * n + i] = (uint8_t)(u >> 16);
            dst[3 * n + i] = (uint8_t)(u >> 24);
        }
        return n;
    }

    size_t overflow = n;
    for (size_t i = 0; i < n; i++) {
        uint16_t h = dtype == KVS_DTYPE_F16 ? kvs_f32_to_f16(src[i]) : kvs_f32_to_bf16(src[i]);
        uint16_t exponent_mask = dtype == KVS_DTYPE_F16 ? 0x7c00u : 0x7f80u;
        if ((h & exponent_mask) == exponent_mask && overflow == n)
            overflow = i;
        dst[i] = (uint8_t)h;
        dst[n + i] = (uint8_t)(h >> 8);
    }
    return overflow;
}

void kvs_trace_shuffle_decode(const uint8_t *src, size_t n, kvs_dtype_e dtype, size_t first,
                              size_t count, float *dst)
{
    if (dtype == KVS_DTYPE_F32) {
        for (size_t i = 0; i < count; i++) {
            size_t j = first + i;
            uint32_t u = (uint32_t)src[j] | (uint32_t)src[n + j] << 8 |
                         (uint32_t)src[2 * n + j] << 16 | (uint32_t)src[3 * n + j] << 24;
            dst[i] = f32_from_bits(u);
        }
        return;
    }
    for (size_t i = 0; i < count; i++) {
        size_t j = first + i;
        uint16_t h = (uint16_t)(src[j] | src[n + j] << 8);
        dst[i] = dtype == KVS_DTYPE_F16 ? kvs_f16_to_f32(h) : kvs_bf16_to_f32(h);
    }
}
