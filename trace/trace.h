/*
** trace.h: the .kvt trace file, written by capture and read by replay.
**
** A trace holds, for every layer and every position, four tensor kinds:
** q after RoPE (all query heads), k after RoPE, k before RoPE and v (all KV
** heads). Rows are positions; a q row is n_heads*head_dim floats, the other
** kinds are n_kv_heads*head_dim floats, head-major (head h occupies
** [h*head_dim, (h+1)*head_dim)).
**
** File layout (all integers little-endian; see docs/trace-format.md):
**
**   header   64 bytes: magic "KVSTRACE", version, dims, dtype, block size
**   frames   one zstd frame per (kind, layer, token block), floats
**            byte-shuffled before compression
**   metadata JSON text (model config, prompt and generated ids, sampling...)
**   index    one 48-byte entry per frame
**   footer   64 bytes: offsets and sizes of metadata and index, checksums
**
** The metadata sits after the frames because generated ids are known only
** when capture ends; the writer streams frames with bounded memory and
** writes the file under a temporary name, renamed when complete.
*/
#ifndef KVS_TRACE_H
#define KVS_TRACE_H

#include "../common/kvs_common.h"

#include <stdint.h>

/* The format version this build writes and reads (header offset 8). */
#define KVS_TRACE_FORMAT_VERSION 1u

typedef enum kvs_kind_e {
    KVS_KIND_Q = 0,     /* query after RoPE, (seq, n_heads*head_dim) */
    KVS_KIND_K = 1,     /* key after RoPE, (seq, n_kv_heads*head_dim) */
    KVS_KIND_K_PRE = 2, /* key before RoPE, (seq, n_kv_heads*head_dim) */
    KVS_KIND_V = 3,     /* value, (seq, n_kv_heads*head_dim) */
    KVS_KIND_COUNT
} kvs_kind_e;

/* Storage dtype of the frames; reads always return F32. */
typedef enum kvs_dtype_e {
    KVS_DTYPE_F32 = 0,
    KVS_DTYPE_F16 = 1,
    KVS_DTYPE_BF16 = 2,
    KVS_DTYPE_COUNT
} kvs_dtype_e;

typedef struct kvs_trace_shape {
    uint32_t n_layers;
    uint32_t n_heads;     /* query heads */
    uint32_t n_kv_heads;
    uint32_t head_dim;
} kvs_trace_shape_t;

const char *kvs_kind_name(kvs_kind_e kind);     /* "q", "k", "k_pre", "v" */
const char *kvs_dtype_name(kvs_dtype_e dtype);  /* "f32", "f16", "bf16" */
/* Parses "f32", "f16" or "bf16"; KVS_ERR_USAGE listing them otherwise. */
kvs_status_e kvs_dtype_parse(const char *name, kvs_dtype_e *out);

/* Floats in one row of a kind: n_heads*head_dim for q, else n_kv_heads*head_dim. */
uint32_t kvs_trace_row_width(const kvs_trace_shape_t *shape, kvs_kind_e kind);

/* ---- writing ---------------------------------------------------------- */

typedef struct kvs_trace_writer kvs_trace_writer_t;

/* Opens path for writing (through a temporary name). block_tokens is the
** number of positions per frame (0 picks the default, 64); zstd_level 0
** picks the default (3). */
kvs_status_e kvs_trace_writer_create(const char *path, const kvs_trace_shape_t *shape,
                                     kvs_dtype_e dtype, uint32_t block_tokens, int zstd_level,
                                     kvs_trace_writer_t **out);

/* Appends rows for positions [pos, pos+n_rows) of one kind and layer.
** rows is (n_rows, row_width) F32. Positions of each (kind, layer) must be
** appended in order without gaps; kinds and layers may interleave freely.
** Fails with KVS_ERR_NONFINITE naming kind, layer, position and column when
** a value is NaN or Inf. */
kvs_status_e kvs_trace_writer_append(kvs_trace_writer_t *w, kvs_kind_e kind, uint32_t layer,
                                     uint32_t pos, const float *rows, uint32_t n_rows);

/* Flushes partial blocks, writes metadata_json, the index and the footer,
** and renames the file into place. Every (kind, layer) must hold the same
** number of positions. Frees w whatever the outcome. */
kvs_status_e kvs_trace_writer_finish(kvs_trace_writer_t *w, const char *metadata_json);

/* Discards the temporary file and frees w; accepts NULL. */
void kvs_trace_writer_abort(kvs_trace_writer_t *w);

/* ---- reading ---------------------------------------------------------- */

typedef struct kvs_trace kvs_trace_t;

/* Opens and validates header, footer and index (offsets inside the file,
** frames not overlapping, counts consistent). Frame payloads are checked
** when read. Errors name the file and the offending offset. */
kvs_status_e kvs_trace_open(const char *path, kvs_trace_t **out);
void kvs_trace_close(kvs_trace_t *t);

const kvs_trace_shape_t *kvs_trace_get_shape(const kvs_trace_t *t);
uint32_t kvs_trace_n_tokens(const kvs_trace_t *t);
kvs_dtype_e kvs_trace_dtype(const kvs_trace_t *t);
/* Metadata JSON text as written; owned by t. */
const char *kvs_trace_metadata(const kvs_trace_t *t);
/* Compressed bytes of all frames and the raw F32-equivalent size stored. */
uint64_t kvs_trace_compressed_bytes(const kvs_trace_t *t);
uint64_t kvs_trace_raw_bytes(const kvs_trace_t *t);
/* Total file size and content hash (XXH3-128 of the whole file as hex,
** 32 characters plus NUL) that identifies the trace in the database. */
uint64_t kvs_trace_file_bytes(const kvs_trace_t *t);
const char *kvs_trace_content_hash(const kvs_trace_t *t);
/* Positions per frame, and the number of frames in the file. */
uint32_t kvs_trace_block_tokens(const kvs_trace_t *t);
uint32_t kvs_trace_n_frames(const kvs_trace_t *t);
/* Compressed bytes of one kind's frames over all layers, and the raw F32
** size of that kind (n_tokens * n_layers * row_width * 4). */
uint64_t kvs_trace_kind_compressed_bytes(const kvs_trace_t *t, kvs_kind_e kind);
uint64_t kvs_trace_kind_raw_bytes(const kvs_trace_t *t, kvs_kind_e kind);

/* Reads rows [first, first+n) of one kind and layer into out, which holds
** (n, row_width) F32. Decompresses only the frames that overlap the range
** and checks their checksums. Safe to call from several threads on one
** kvs_trace_t. Each call decompresses every frame it touches, so reading
** ranges aligned to kvs_trace_block_tokens() decodes each frame once.
** Fails with KVS_ERR_INVALID for a range past n_tokens and with
** KVS_ERR_TRACE_CORRUPT for a damaged frame; out is then partly written. */
kvs_status_e kvs_trace_read(kvs_trace_t *t, kvs_kind_e kind, uint32_t layer, uint32_t first,
                            uint32_t n, float *out);

/* Reads every frame and checks checksums, sizes and index consistency. On
** failure *bad_offset is the file offset of the first bad byte range (the
** file size for a truncated file), and the message names it. On success it
** is 0. bad_offset may be NULL. */
kvs_status_e kvs_trace_verify(const char *path, uint64_t *bad_offset);

#endif
