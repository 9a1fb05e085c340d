/*
** trace_writer.c: streams q/k/k_pre/v rows into a .kvt file.
**
** The writer keeps one block buffer per (kind, layer). A buffer that fills
** is converted to the storage dtype, byte-shuffled, compressed into one
** zstd frame and written at once, so memory stays at one block per
** (kind, layer) whatever the trace length. The index grows by 48 bytes per
** frame and is written at the end with the metadata and the footer.
**
**   create ──> OPEN ──append──> OPEN ──finish──> (file renamed, w freed)
**               │                 │
**               │  I/O failure    └──abort──> (temporary removed, w freed)
**               └────────────> FAILED ──finish or abort──> (temporary removed)
**
** Invariants while OPEN:
**   1. count[s] positions of slot s = (kind, layer) were appended; the last
**      fill[s] of them sit in block[s], the others are in written frames.
**   2. fill[s] < block_tokens: a full block is flushed before append returns.
**   3. Frames are written back to back from byte 64, in flush order, and
**      entries[i] describes the i-th of them.
**   4. Nothing is renamed into place before finish has written the footer,
**      so a reader never sees a file without its index.
*/
#include "trace_internal.h"

#include "../common/fsutil.h"

#include <jansson.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>
#include <zstd.h>

struct kvs_trace_writer {
    kvs_outfile_t *file;
    char *path;
    kvs_trace_shape_t shape;
    kvs_dtype_e dtype;
    uint32_t block_tokens;
    int zstd_level;
    ZSTD_CCtx *cctx;

    /* Per slot = kind * n_layers + layer. */
    float **block;      /* (block_tokens, row_width), allocated on first use */
    uint32_t *fill;
    uint32_t *count;

    uint8_t *shuffled;  /* one block in the storage dtype */
    uint8_t *compressed;
    size_t compressed_cap;

    kvs_trace_entry_t *entries;
    size_t n_entries, entries_cap;

    bool failed;
};

static size_t n_slots(const kvs_trace_writer_t *w)
{
    return (size_t)KVS_KIND_COUNT * w->shape.n_layers;
}

static uint32_t max_row_width(const kvs_trace_shape_t *shape)
{
    uint32_t q = kvs_trace_row_width(shape, KVS_KIND_Q);
    uint32_t kv = kvs_trace_row_width(shape, KVS_KIND_K);
    return q > kv ? q : kv;
}

static void writer_free(kvs_trace_writer_t *w)
{
    if (w->block) {
        for (size_t s = 0; s < n_slots(w); s++)
            free(w->block[s]);
    }
    free(w->block);
    free(w->fill);
    free(w->count);
    free(w->shuffled);
    free(w->compressed);
    free(w->entries);
    ZSTD_freeCCtx(w->cctx);
    free(w->path);
    free(w);
}

static kvs_status_e check_shape(const char *path, const kvs_trace_shape_t *shape, uint32_t block_tokens)
{
    KVS_RETURN_IF(shape->n_layers == 0 || shape->n_layers > KVS_TRACE_MAX_LAYERS, KVS_ERR_INVALID,
                  "%s: n_layers %u is outside 1..%u", path, shape->n_layers, KVS_TRACE_MAX_LAYERS);
    KVS_RETURN_IF(shape->n_heads == 0 || shape->n_heads > KVS_TRACE_MAX_HEADS, KVS_ERR_INVALID,
                  "%s: n_heads %u is outside 1..%u", path, shape->n_heads, KVS_TRACE_MAX_HEADS);
    KVS_RETURN_IF(shape->n_kv_heads == 0 || shape->n_heads % shape->n_kv_heads != 0,
                  KVS_ERR_INVALID,
                  "%s: n_kv_heads %u must be at least 1 and divide n_heads %u (grouped-query attention)",
                  path, shape->n_kv_heads, shape->n_heads);
    KVS_RETURN_IF(shape->head_dim == 0 || shape->head_dim > KVS_TRACE_MAX_HEAD_DIM, KVS_ERR_INVALID,
                  "%s: head_dim %u is outside 1..%u", path, shape->head_dim, KVS_TRACE_MAX_HEAD_DIM);
    KVS_RETURN_IF(block_tokens > KVS_TRACE_MAX_BLOCK, KVS_ERR_INVALID,
                  "%s: block_tokens %u is above the maximum %u", path, block_tokens,
                  KVS_TRACE_MAX_BLOCK);

    uint64_t frame = (uint64_t)max_row_width(shape) * block_tokens * 4;
    KVS_RETURN_IF(frame > KVS_TRACE_MAX_FRAME_BYTES, KVS_ERR_INVALID,
                  "%s: a block of %u tokens of %u floats is %llu bytes, above the %u-byte frame "
                  "limit (use a smaller block_tokens)",
                  path, block_tokens, max_row_width(shape), (unsigned long long)frame,
                  KVS_TRACE_MAX_FRAME_BYTES);
    return KVS_OK;
}

kvs_status_e kvs_trace_writer_create(const char *path, const kvs_trace_shape_t *shape,
                                     kvs_dtype_e dtype, uint32_t block_tokens, int zstd_level,
                                     kvs_trace_writer_t **out)
{
    kvs_trace_writer_t *w;
    kvs_status_e rc;

    *out = NULL;
    if (block_tokens == 0)
        block_tokens = KVS_TRACE_DEFAULT_BLOCK;
    if (zstd_level == 0)
        zstd_level = KVS_TRACE_DEFAULT_LEVEL;
    KVS_FORWARD(check_shape(path, shape, block_tokens));
    KVS_RETURN_IF((unsigned)dtype >= KVS_DTYPE_COUNT, KVS_ERR_INVALID,
                  "%s: unknown dtype %d (use f32, f16 or bf16)", path, (int)dtype);
    KVS_RETURN_IF(zstd_level < ZSTD_minCLevel() || zstd_level > ZSTD_maxCLevel(), KVS_ERR_INVALID,
                  "%s: zstd level %d is outside %d..%d", path, zstd_level, ZSTD_minCLevel(),
                  ZSTD_maxCLevel());

    w = calloc(1, sizeof *w);
    if (!w)
        return kvs_fail(KVS_ERR_NOMEM, "out of memory creating trace writer for %s", path);
    w->shape = *shape;
    w->dtype = dtype;
    w->block_tokens = block_tokens;
    w->zstd_level = zstd_level;
    w->path = strdup(path);
    w->block = calloc(n_slots(w), sizeof *w->block);
    w->fill = calloc(n_slots(w), sizeof *w->fill);
    w->count = calloc(n_slots(w), sizeof *w->count);

    size_t raw_cap = (size_t)block_tokens * max_row_width(shape) * kvs_dtype_size(dtype);
    w->shuffled = malloc(raw_cap);
    w->compressed_cap = ZSTD_compressBound(raw_cap);
    w->compressed = malloc(w->compressed_cap);
    w->cctx = ZSTD_createCCtx();
    if (!w->path || !w->block || !w->fill || !w->count || !w->shuffled || !w->compressed ||
        !w->cctx) {
        writer_free(w);
        return kvs_fail(KVS_ERR_NOMEM, "out of memory creating trace writer for %s", path);
    }

    rc = kvs_outfile_open(path, &w->file);
    if (rc != KVS_OK) {
        writer_free(w);
        return rc;
    }

    /* Everything in the header is known now, so it is written first and
    ** the frames follow it directly. */
    kvs_trace_header_t h = {
        .version = KVS_TRACE_VERSION,
        .header_bytes = KVS_TRACE_HEADER_BYTES,
        .n_layers = shape->n_layers,
        .n_heads = shape->n_heads,
        .n_kv_heads = shape->n_kv_heads,
        .head_dim = shape->head_dim,
        .dtype = (uint32_t)dtype,
        .block_tokens = block_tokens,
        .flags = KVS_TRACE_FLAG_SHUFFLE,
        .zstd_level = zstd_level,
    };
    uint8_t bytes[KVS_TRACE_HEADER_BYTES];

    memcpy(h.magic, KVS_TRACE_MAGIC, 8);
    kvs_trace_header_encode(&h, bytes);
    h.checksum = XXH3_64bits(bytes, KVS_TRACE_HEADER_BYTES - 8);
    kvs_trace_header_encode(&h, bytes);
    rc = kvs_outfile_write(w->file, bytes, sizeof bytes);
    if (rc != KVS_OK) {
        kvs_trace_writer_abort(w);
        return rc;
    }
    *out = w;
    return KVS_OK;
}

static kvs_status_e push_entry(kvs_trace_writer_t *w, const kvs_trace_entry_t *e)
{
    if (w->n_entries == w->entries_cap) {
        size_t cap = w->entries_cap ? w->entries_cap * 2 : 256;
        kvs_trace_entry_t *grown = realloc(w->entries, cap * sizeof *grown);
        if (!grown)
            return kvs_fail(KVS_ERR_NOMEM, "out of memory growing the index of %s", w->path);
        w->entries = grown;
        w->entries_cap = cap;
    }
    w->entries[w->n_entries++] = *e;
    return KVS_OK;
}

/* Compresses and writes the buffered rows of one slot as one frame. */
static kvs_status_e flush_block(kvs_trace_writer_t *w, kvs_kind_e kind, uint32_t layer)
{
    size_t s = (size_t)kind * w->shape.n_layers + layer;
    uint32_t rows = w->fill[s];
    size_t n = (size_t)rows * kvs_trace_row_width(&w->shape, kind);
    size_t raw = n * kvs_dtype_size(w->dtype);

    /* append() already rejected values that overflow the dtype. */
    kvs_trace_shuffle_encode(w->block[s], n, w->dtype, w->shuffled);

    size_t csize = ZSTD_compressCCtx(w->cctx, w->compressed, w->compressed_cap, w->shuffled, raw,
                                     w->zstd_level);
    if (ZSTD_isError(csize))
        return kvs_fail(KVS_ERR_INTERNAL, "zstd failed compressing %s layer %u of %s: %s",
                        kvs_kind_name(kind), layer, w->path, ZSTD_getErrorName(csize));

    kvs_trace_entry_t e = {
        .kind = (uint8_t)kind,
        .layer = layer,
        .first_token = w->count[s] - rows,
        .n_tokens = rows,
        .offset = kvs_outfile_offset(w->file),
        .compressed_bytes = csize,
        .raw_bytes = raw,
        .checksum = XXH3_64bits(w->compressed, csize),
    };
    KVS_FORWARD(kvs_outfile_write(w->file, w->compressed, csize));
    KVS_FORWARD(push_entry(w, &e));
    w->fill[s] = 0;
    return KVS_OK;
}

/* Rejects NaN, Inf and values the storage dtype cannot hold, before any
** row is buffered, so a rejected append leaves the writer unchanged. */
static kvs_status_e check_rows(const kvs_trace_writer_t *w, kvs_kind_e kind, uint32_t layer,
                               uint32_t pos, const float *rows, uint32_t n_rows, uint32_t width)
{
    for (uint32_t r = 0; r < n_rows; r++) {
        const float *row = rows + (size_t)r * width;
        for (uint32_t c = 0; c < width; c++) {
            float x = row[c];
            if (!isfinite(x))
                return kvs_fail(KVS_ERR_NONFINITE,
                                "%s in %s layer %u position %u column %u of %s (traces store finite "
                                "values only; check the model weights and the forward pass)",
                                isnan(x) ? "NaN" : "Inf", kvs_kind_name(kind), layer, pos + r, c,
                                w->path);
            if (w->dtype == KVS_DTYPE_F32)
                continue;

            /* Values that round to infinity in the storage dtype. */
            uint16_t h = w->dtype == KVS_DTYPE_F16 ? kvs_f32_to_f16(x) : kvs_f32_to_bf16(x);
            uint16_t exponent_mask = w->dtype == KVS_DTYPE_F16 ? 0x7c00u : 0x7f80u;
            if ((h & exponent_mask) == exponent_mask)
                return kvs_fail(KVS_ERR_INVALID,
                                "value %g in %s layer %u position %u column %u does not fit %s "
                                "(write %s with dtype f32 or bf16)",
                                (double)x, kvs_kind_name(kind), layer, pos + r, c,
                                kvs_dtype_name(w->dtype), w->path);
        }
    }
    return KVS_OK;
}

kvs_status_e kvs_trace_writer_append(kvs_trace_writer_t *w, kvs_kind_e kind, uint32_t layer,
                                     uint32_t pos, const float *rows, uint32_t n_rows)
{
    KVS_RETURN_IF(w->failed, KVS_ERR_INVALID,
                  "%s: an earlier write failed; abort this trace and capture again", w->path);
    KVS_RETURN_IF((unsigned)kind >= KVS_KIND_COUNT, KVS_ERR_INVALID,
                  "%s: unknown tensor kind %d (use q, k, k_pre or v)", w->path, (int)kind);
    KVS_RETURN_IF(layer >= w->shape.n_layers, KVS_ERR_INVALID,
                  "%s: layer %u is out of range (the trace has %u layers)", w->path, layer,
                  w->shape.n_layers);

    size_t s = (size_t)kind * w->shape.n_layers + layer;
    uint32_t width = kvs_trace_row_width(&w->shape, kind);

    KVS_RETURN_IF(pos != w->count[s], KVS_ERR_INVALID,
                  "%s: %s layer %u got position %u but expected %u (append positions in order "
                  "without gaps)",
                  w->path, kvs_kind_name(kind), layer, pos, w->count[s]);
    KVS_RETURN_IF(n_rows > UINT32_MAX - pos, KVS_ERR_INVALID,
                  "%s: %u rows at position %u exceed the 2^32 position limit", w->path, n_rows, pos);
    if (n_rows == 0)
        return KVS_OK;
    KVS_RETURN_IF(!rows, KVS_ERR_INVALID, "%s: rows is NULL", w->path);
    KVS_FORWARD(check_rows(w, kind, layer, pos, rows, n_rows, width));

    if (!w->block[s]) {
        w->block[s] = malloc((size_t)w->block_tokens * width * sizeof(float));
        if (!w->block[s])
            return kvs_fail(KVS_ERR_NOMEM, "out of memory buffering %s layer %u of %s",
                            kvs_kind_name(kind), layer, w->path);
    }

    uint32_t done = 0;
    while (done < n_rows) {
        uint32_t take = w->block_tokens - w->fill[s];
        if (take > n_rows - done)
            take = n_rows - done;
        memcpy(w->block[s] + (size_t)w->fill[s] * width, rows + (size_t)done * width,
               (size_t)take * width * sizeof(float));
        w->fill[s] += take;
        w->count[s] += take;
        done += take;
        if (w->fill[s] == w->block_tokens) {
            kvs_status_e rc = flush_block(w, kind, layer);
            if (rc != KVS_OK) {
                w->failed = true;
                return rc;
            }
        }
    }
    return KVS_OK;
}

/* Checks that every (kind, layer) has the same positive count. */
static kvs_status_e check_counts(const kvs_trace_writer_t *w)
{
    uint32_t expected = w->count[0];

    KVS_RETURN_IF(expected == 0, KVS_ERR_INVALID,
                  "%s: q layer 0 has no positions (append at least one position before finish)",
                  w->path);
    for (size_t s = 1; s < n_slots(w); s++) {
        if (w->count[s] == expected)
            continue;
        return kvs_fail(KVS_ERR_INVALID,
                        "%s: unequal position counts: q layer 0 has %u, %s layer %u has %u "
                        "(append every kind of every layer for each position)",
                        w->path, expected, kvs_kind_name((kvs_kind_e)(s / w->shape.n_layers)),
                        (unsigned)(s % w->shape.n_layers), w->count[s]);
    }
    return KVS_OK;
}

static kvs_status_e check_metadata(const kvs_trace_writer_t *w, const char *metadata_json)
{
    json_error_t err;
    json_t *root = json_loads(metadata_json, JSON_REJECT_DUPLICATES, &err);

    KVS_RETURN_IF(!root, KVS_ERR_INVALID, "%s: metadata is not valid JSON: %s at line %d column %d",
                  w->path, err.text, err.line, err.column);
    bool is_object = json_is_object(root);
    json_decref(root);
    KVS_RETURN_IF(!is_object, KVS_ERR_INVALID, "%s: metadata must be a JSON object", w->path);
    return KVS_OK;
}

/* Writes metadata, index and footer as one buffer, so the footer checksum
** is computed over exactly the bytes written. */
static kvs_status_e write_tail(kvs_trace_writer_t *w, const char *metadata_json)
{
    size_t meta_bytes = strlen(metadata_json);
    size_t index_bytes = w->n_entries * KVS_TRACE_ENTRY_BYTES;
    size_t tail_bytes = meta_bytes + index_bytes + KVS_TRACE_FOOTER_BYTES;
    uint8_t *tail = malloc(tail_bytes);
    uint64_t meta_offset = kvs_outfile_offset(w->file);

    if (!tail)
        return kvs_fail(KVS_ERR_NOMEM, "out of memory writing the index of %s", w->path);
    memcpy(tail, metadata_json, meta_bytes);
    for (size_t i = 0; i < w->n_entries; i++)
        kvs_trace_entry_encode(&w->entries[i], tail + meta_bytes + i * KVS_TRACE_ENTRY_BYTES);

    kvs_trace_footer_t f = {
        .index_offset = meta_offset + meta_bytes,
        .index_count = w->n_entries,
        .metadata_offset = meta_offset,
        .metadata_bytes = meta_bytes,
        .n_tokens = w->count[0],
    };
    uint8_t *footer = tail + meta_bytes + index_bytes;

    memcpy(f.magic, KVS_TRACE_FOOTER_MAGIC, 8);
    memcpy(f.end_magic, KVS_TRACE_END_MAGIC, 8);
    kvs_trace_footer_encode(&f, footer);
    f.checksum = XXH3_64bits(tail, tail_bytes - 16);
    kvs_trace_footer_encode(&f, footer);

    kvs_status_e rc = kvs_outfile_write(w->file, tail, tail_bytes);
    free(tail);
    return rc;
}

kvs_status_e kvs_trace_writer_finish(kvs_trace_writer_t *w, const char *metadata_json)
{
    kvs_status_e rc;

    KVS_RETURN_IF(!w, KVS_ERR_INVALID, "no trace writer to finish (create failed earlier?)");
    if (!metadata_json)
        metadata_json = "{}";
    if (w->failed) {
        rc = kvs_fail(KVS_ERR_IO, "%s: an earlier write failed; the trace was not written",
                      w->path);
        kvs_trace_writer_abort(w);
        return rc;
    }

    rc = check_counts(w);
    if (rc == KVS_OK)
        rc = check_metadata(w, metadata_json);

    /* Partial blocks in (kind, layer) order; their first_token values
    ** already place them at the end of each slot. */
    for (size_t s = 0; rc == KVS_OK && s < n_slots(w); s++) {
        if (w->fill[s] > 0)
            rc = flush_block(w, (kvs_kind_e)(s / w->shape.n_layers),
                             (uint32_t)(s % w->shape.n_layers));
    }
    if (rc == KVS_OK)
        rc = write_tail(w, metadata_json);
    if (rc != KVS_OK) {
        kvs_trace_writer_abort(w);
        return rc;
    }

    rc = kvs_outfile_commit(w->file);
    w->file = NULL;
    writer_free(w);
    return rc;
}

void kvs_trace_writer_abort(kvs_trace_writer_t *w)
{
    if (!w)
        return;
    kvs_outfile_abort(w->file);
    writer_free(w);
}
