/*
** trace_internal.h: on-disk records of the .kvt format and the helpers that
** the writer and the reader share. Not part of the public interface.
**
** Every record is encoded field by field in little-endian order, so the
** structs below document the layout and fix its size but are never copied
** to or from disk with memcpy. docs/trace-format.md is the byte-exact
** description.
*/
#ifndef KVS_TRACE_INTERNAL_H
#define KVS_TRACE_INTERNAL_H

#include "trace.h"
#include "../common/half.h"

#include <stddef.h>
#include <stdint.h>

#define KVS_TRACE_MAGIC "KVSTRACE"
#define KVS_TRACE_FOOTER_MAGIC "KVSTRIDX"
#define KVS_TRACE_END_MAGIC "KVSTREND"
#define KVS_TRACE_VERSION KVS_TRACE_FORMAT_VERSION

#define KVS_TRACE_HEADER_BYTES 64u
#define KVS_TRACE_ENTRY_BYTES 48u
#define KVS_TRACE_FOOTER_BYTES 64u

/* Header flag bit 0: frames hold byte-shuffled values. Version 1 files must
** set exactly this flag; other bits are reserved for later versions. */
#define KVS_TRACE_FLAG_SHUFFLE 1u
#define KVS_TRACE_KNOWN_FLAGS KVS_TRACE_FLAG_SHUFFLE

#define KVS_TRACE_DEFAULT_BLOCK 64u
#define KVS_TRACE_DEFAULT_LEVEL 3

/* Limits that keep every size computation inside 64 bits and every frame
** buffer allocatable. A frame of block_tokens rows decompresses to at most
** KVS_TRACE_MAX_FRAME_BYTES. */
#define KVS_TRACE_MAX_LAYERS 4096u
#define KVS_TRACE_MAX_HEADS 4096u
#define KVS_TRACE_MAX_HEAD_DIM 65536u
#define KVS_TRACE_MAX_BLOCK 65536u
#define KVS_TRACE_MAX_FRAME_BYTES (256u << 20)

/* Bytes 0..63 of the file. checksum is XXH3-64 of bytes 0..55. */
typedef struct kvs_trace_header {
    char magic[8];          /* "KVSTRACE" */
    uint32_t version;       /* KVS_TRACE_VERSION */
    uint32_t header_bytes;  /* 64 */
    uint32_t n_layers;
    uint32_t n_heads;
    uint32_t n_kv_heads;
    uint32_t head_dim;
    uint32_t dtype;         /* kvs_dtype_e */
    uint32_t block_tokens;  /* positions per frame (the last block may hold fewer) */
    uint32_t flags;         /* KVS_TRACE_FLAG_* */
    int32_t zstd_level;     /* informational: the level the writer used */
    uint64_t reserved;      /* zero */
    uint64_t checksum;
} kvs_trace_header_t;
_Static_assert(sizeof(kvs_trace_header_t) == KVS_TRACE_HEADER_BYTES, "trace header is 64 bytes");

/* One index entry per frame. checksum is XXH3-64 of the compressed bytes,
** so a damaged frame is found before zstd parses it. */
typedef struct kvs_trace_entry {
    uint8_t kind;           /* kvs_kind_e */
    uint8_t reserved[3];    /* zero */
    uint32_t layer;
    uint32_t first_token;   /* a multiple of block_tokens */
    uint32_t n_tokens;      /* min(block_tokens, total - first_token) */
    uint64_t offset;        /* file offset of the zstd frame */
    uint64_t compressed_bytes;
    uint64_t raw_bytes;     /* n_tokens * row_width * dtype size */
    uint64_t checksum;
} kvs_trace_entry_t;
_Static_assert(sizeof(kvs_trace_entry_t) == KVS_TRACE_ENTRY_BYTES, "trace index entry is 48 bytes");

/* The last 64 bytes of the file. checksum is XXH3-64 of every byte from
** metadata_offset up to the checksum field, which covers the metadata, the
** index and footer bytes 0..47. */
typedef struct kvs_trace_footer {
    char magic[8];          /* "KVSTRIDX" */
    uint64_t index_offset;
    uint64_t index_count;
    uint64_t metadata_offset;
    uint64_t metadata_bytes;
    uint64_t n_tokens;      /* positions of every (kind, layer) */
    uint64_t checksum;
    char end_magic[8];      /* "KVSTREND": absent when the file is cut short */
} kvs_trace_footer_t;
_Static_assert(sizeof(kvs_trace_footer_t) == KVS_TRACE_FOOTER_BYTES, "trace footer is 64 bytes");

void kvs_trace_header_encode(const kvs_trace_header_t *h, uint8_t out[KVS_TRACE_HEADER_BYTES]);
void kvs_trace_header_decode(const uint8_t in[KVS_TRACE_HEADER_BYTES], kvs_trace_header_t *h);
void kvs_trace_entry_encode(const kvs_trace_entry_t *e, uint8_t out[KVS_TRACE_ENTRY_BYTES]);
void kvs_trace_entry_decode(const uint8_t in[KVS_TRACE_ENTRY_BYTES], kvs_trace_entry_t *e);
void kvs_trace_footer_encode(const kvs_trace_footer_t *f, uint8_t out[KVS_TRACE_FOOTER_BYTES]);
void kvs_trace_footer_decode(const uint8_t in[KVS_TRACE_FOOTER_BYTES], kvs_trace_footer_t *f);

/* Bytes per stored value: 4 for F32, 2 for F16 and BF16. */
size_t kvs_dtype_size(kvs_dtype_e dtype);


/* Converts n finite floats to dtype and byte-shuffles them into dst, which
** holds n * kvs_dtype_size(dtype) bytes: byte 0 of every value, then byte 1
** of every value, and so on. Returns the index of the first value that
** overflows the dtype, or n when all fit. */
size_t kvs_trace_shuffle_encode(const float *src, size_t n, kvs_dtype_e dtype, uint8_t *dst);

/* Reverses kvs_trace_shuffle_encode for the values [first, first+count) of
** a block of n values, converting to F32. */
void kvs_trace_shuffle_decode(const uint8_t *src, size_t n, kvs_dtype_e dtype, size_t first,
                              size_t count, float *dst);

#endif
