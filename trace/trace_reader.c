/*
** trace_reader.c: opens, validates, reads and verifies .kvt files.
**
** The file is mapped read-only, so reads share the page cache and need no
** seek state: concurrent kvs_trace_read calls only read the mapping and the
** index, which do not change after open. Each call borrows a scratch slot
** (a zstd context and one decompressed frame) from a small lock-free pool,
** or allocates its own when every slot is busy.
**
** open checks everything that is cheap to check: header, footer, the
** footer checksum over metadata and index, and that the frames tile the
** data area and every (kind, layer) exactly once per block. Frame payloads
** are checked when read (checksum, zstd frame size, finite values), and
** verify reads them all.
*/
#include "trace_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>
#include <zstd.h>

#define SCRATCH_SLOTS 8

typedef struct scratch {
    atomic_flag busy;
    ZSTD_DCtx *dctx;
    uint8_t *frame;     /* one decompressed frame, max_frame_bytes */
} scratch_t;

struct kvs_trace {
    char *path;
    const uint8_t *map;
    size_t size;

    kvs_trace_shape_t shape;
    kvs_dtype_e dtype;
    uint32_t block_tokens;
    uint32_t n_tokens;
    uint32_t n_blocks;          /* frames per (kind, layer) */
    size_t max_frame_bytes;     /* largest raw_bytes in the index */

    kvs_trace_entry_t *entries; /* in index order */
    uint32_t n_entries;
    uint32_t *frame_of;         /* (kind, layer, block) -> entry */

    char *metadata;
    uint64_t compressed_bytes;
    uint64_t raw_bytes;
    uint64_t kind_compressed[KVS_KIND_COUNT];
    char content_hash[33];

    scratch_t pool[SCRATCH_SLOTS];
};

/* ---- open ------------------------------------------------------------- */

/* Records the offset of a failure for verify and returns the status. */
#define FAIL_AT(offset_out, offset, code, ...)                               \
    (*(offset_out) = (offset), kvs_fail((code), __VA_ARGS__))

static kvs_status_e map_file(const char *path, const uint8_t **map, size_t *size)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;

    *map = NULL;
    *size = 0;
    if (fd < 0)
        return kvs_fail(errno == ENOENT ? KVS_ERR_NOT_FOUND : KVS_ERR_IO, "cannot open trace %s: %s",
                        path, strerror(errno));
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return kvs_fail(KVS_ERR_IO, "cannot open trace %s: not a regular file", path);
    }
    *size = (size_t)st.st_size;
    if (*size == 0) {
        close(fd);
        return KVS_OK;
    }

    /* NOTE: a file truncated in place while mapped raises SIGBUS on the next
    ** read of the lost pages. kvsim's own writers replace files by rename,
    ** which leaves an open mapping intact. */
    void *p = mmap(NULL, *size, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd);
    if (p == MAP_FAILED)
        return kvs_fail(KVS_ERR_IO, "cannot map trace %s: %s", path, strerror(e));
    *map = p;
    return KVS_OK;
}

static kvs_status_e check_header(kvs_trace_t *t, uint64_t *bad)
{
    kvs_trace_header_t h;
    const char *p = t->path;

    kvs_trace_header_decode(t->map, &h);
    if (memcmp(h.magic, KVS_TRACE_MAGIC, 8) != 0)
        return FAIL_AT(bad, 0, KVS_ERR_TRACE_FORMAT,
                       "%s is not a kvsim trace: magic \"KVSTRACE\" missing at byte offset 0", p);
    if (XXH3_64bits(t->map, KVS_TRACE_HEADER_BYTES - 8) != h.checksum)
        return FAIL_AT(bad, 0, KVS_ERR_TRACE_CORRUPT,
                       "%s: header checksum mismatch at byte offset 0 (the file is damaged)", p);
    if (h.version != KVS_TRACE_VERSION)
        return FAIL_AT(bad, 8, KVS_ERR_TRACE_FORMAT,
                       "%s: trace format version %u at byte offset 8, this kvsim reads version %u "
                       "(use a matching kvsim or capture again)",
                       p, h.version, KVS_TRACE_VERSION);
    if (h.header_bytes != KVS_TRACE_HEADER_BYTES || h.reserved != 0)
        return FAIL_AT(bad, 12, KVS_ERR_TRACE_FORMAT,
                       "%s: header size %u at byte offset 12, expected %u", p, h.header_bytes,
                       KVS_TRACE_HEADER_BYTES);
    if (h.n_layers == 0 || h.n_layers > KVS_TRACE_MAX_LAYERS || h.n_heads == 0 ||
        h.n_heads > KVS_TRACE_MAX_HEADS || h.n_kv_heads == 0 || h.n_heads % h.n_kv_heads != 0 ||
        h.head_dim == 0 || h.head_dim > KVS_TRACE_MAX_HEAD_DIM)
        return FAIL_AT(bad, 16, KVS_ERR_TRACE_FORMAT,
                       "%s: invalid shape at byte offset 16: n_layers %u, n_heads %u, n_kv_heads "
                       "%u, head_dim %u",
                       p, h.n_layers, h.n_heads, h.n_kv_heads, h.head_dim);
    if (h.dtype >= KVS_DTYPE_COUNT)
        return FAIL_AT(bad, 32, KVS_ERR_TRACE_FORMAT, "%s: unknown dtype %u at byte offset 32", p,
                       h.dtype);
    if (h.block_tokens == 0 || h.block_tokens > KVS_TRACE_MAX_BLOCK)
        return FAIL_AT(bad, 36, KVS_ERR_TRACE_FORMAT,
                       "%s: block_tokens %u at byte offset 36 is outside 1..%u", p, h.block_tokens,
                       KVS_TRACE_MAX_BLOCK);
    if (h.flags != KVS_TRACE_KNOWN_FLAGS)
        return FAIL_AT(bad, 40, KVS_ERR_TRACE_FORMAT,
                       "%s: unknown flags 0x%x at byte offset 40 (written by a newer kvsim?)", p,
                       h.flags);

    t->shape = (kvs_trace_shape_t){h.n_layers, h.n_heads, h.n_kv_heads, h.head_dim};
    t->dtype = (kvs_dtype_e)h.dtype;
    t->block_tokens = h.block_tokens;

    uint32_t width = kvs_trace_row_width(&t->shape, KVS_KIND_Q);
    uint32_t kv_width = kvs_trace_row_width(&t->shape, KVS_KIND_K);
    if (kv_width > width)
        width = kv_width;
    uint64_t frame = (uint64_t)width * h.block_tokens * kvs_dtype_size(t->dtype);
    if (frame > KVS_TRACE_MAX_FRAME_BYTES)
        return FAIL_AT(bad, 36, KVS_ERR_TRACE_FORMAT,
                       "%s: frames of %u tokens would hold %llu bytes, above the %u-byte limit", p,
                       h.block_tokens, (unsigned long long)frame, KVS_TRACE_MAX_FRAME_BYTES);
    return KVS_OK;
}

static kvs_status_e check_footer(kvs_trace_t *t, kvs_trace_footer_t *f, uint64_t *bad)
{
    const char *p = t->path;
    uint64_t footer_at = t->size - KVS_TRACE_FOOTER_BYTES;

    kvs_trace_footer_decode(t->map + footer_at, f);

    /* The end magic is the last thing written, so its absence most likely
    ** means the copy or the capture stopped early. */
    if (memcmp(f->end_magic, KVS_TRACE_END_MAGIC, 8) != 0)
        return FAIL_AT(bad, t->size, KVS_ERR_TRACE_TRUNCATED,
                       "%s is truncated or damaged: the file ends at byte offset %llu without the "
                       "end magic \"KVSTREND\" (copy the file again or capture again)",
                       p, (unsigned long long)t->size);
    if (memcmp(f->magic, KVS_TRACE_FOOTER_MAGIC, 8) != 0)
        return FAIL_AT(bad, footer_at, KVS_ERR_TRACE_CORRUPT,
                       "%s: footer magic \"KVSTRIDX\" missing at byte offset %llu", p,
                       (unsigned long long)footer_at);

    /* Metadata, index and footer must sit back to back at the end. */
    bool layout_ok = f->index_count <= footer_at / KVS_TRACE_ENTRY_BYTES &&
                     f->index_offset == footer_at - f->index_count * KVS_TRACE_ENTRY_BYTES &&
                     f->metadata_offset >= KVS_TRACE_HEADER_BYTES &&
                     f->metadata_bytes <= f->index_offset &&
                     f->metadata_offset == f->index_offset - f->metadata_bytes;
    if (!layout_ok)
        return FAIL_AT(bad, footer_at, KVS_ERR_TRACE_CORRUPT,
                       "%s: footer at byte offset %llu points outside the file (index at %llu, "
                       "%llu entries, metadata at %llu, %llu bytes)",
                       p, (unsigned long long)footer_at, (unsigned long long)f->index_offset,
                       (unsigned long long)f->index_count, (unsigned long long)f->metadata_offset,
                       (unsigned long long)f->metadata_bytes);

    uint64_t sum = XXH3_64bits(t->map + f->metadata_offset,
                               (size_t)(t->size - 16 - f->metadata_offset));
    if (sum != f->checksum)
        return FAIL_AT(bad, f->metadata_offset, KVS_ERR_TRACE_CORRUPT,
                       "%s: checksum mismatch in metadata, index or footer (bytes %llu..%llu) at "
                       "byte offset %llu",
                       p, (unsigned long long)f->metadata_offset,
                       (unsigned long long)(t->size - 1), (unsigned long long)f->metadata_offset);
    if (f->n_tokens == 0 || f->n_tokens > UINT32_MAX)
        return FAIL_AT(bad, footer_at + 40, KVS_ERR_TRACE_CORRUPT,
                       "%s: token count %llu at byte offset %llu is outside 1..%u", p,
                       (unsigned long long)f->n_tokens, (unsigned long long)(footer_at + 40),
                       UINT32_MAX);
    t->n_tokens = (uint32_t)f->n_tokens;
    t->n_blocks = (uint32_t)((f->n_tokens + t->block_tokens - 1) / t->block_tokens);
    return KVS_OK;
}

static int compare_offsets(const void *a, const void *b, void *entries)
{
    const kvs_trace_entry_t *e = entries;
    uint64_t x = e[*(const uint32_t *)a].offset, y = e[*(const uint32_t *)b].offset;
    return x < y ? -1 : x > y;
}

/* Validates one entry on its own: kind, layer, block position, sizes. */
static kvs_status_e check_entry(kvs_trace_t *t, const kvs_trace_entry_t *e, uint64_t at, uint64_t *bad)
{
    const char *p = t->path;

    if (e->kind >= KVS_KIND_COUNT || e->layer >= t->shape.n_layers || e->reserved[0] ||
        e->reserved[1] || e->reserved[2])
        return FAIL_AT(bad, at, KVS_ERR_TRACE_CORRUPT,
                       "%s: index entry at byte offset %llu has kind %u layer %u (the trace has "
                       "%d kinds and %u layers)",
                       p, (unsigned long long)at, e->kind, e->layer, KVS_KIND_COUNT,
                       t->shape.n_layers);

    uint32_t expected_n = 0;
    if (e->first_token < t->n_tokens && e->first_token % t->block_tokens == 0) {
        expected_n = t->n_tokens - e->first_token;
        if (expected_n > t->block_tokens)
            expected_n = t->block_tokens;
    }
    if (expected_n == 0 || e->n_tokens != expected_n)
        return FAIL_AT(bad, at, KVS_ERR_TRACE_CORRUPT,
                       "%s: index entry at byte offset %llu covers tokens %u..+%u, which is not a "
                       "block of %u tokens within %u",
                       p, (unsigned long long)at, e->first_token, e->n_tokens, t->block_tokens,
                       t->n_tokens);

    uint64_t raw = (uint64_t)e->n_tokens * kvs_trace_row_width(&t->shape, (kvs_kind_e)e->kind) *
                   kvs_dtype_size(t->dtype);
    if (e->raw_bytes != raw || e->compressed_bytes == 0 ||
        e->compressed_bytes > ZSTD_compressBound((size_t)raw))
        return FAIL_AT(bad, at, KVS_ERR_TRACE_CORRUPT,
                       "%s: index entry at byte offset %llu has sizes %llu compressed, %llu raw; "
                       "expected %llu raw",
                       p, (unsigned long long)at, (unsigned long long)e->compressed_bytes,
                       (unsigned long long)e->raw_bytes, (unsigned long long)raw);
    return KVS_OK;
}

static kvs_status_e load_index(kvs_trace_t *t, const kvs_trace_footer_t *f, uint64_t *bad)
{
    const char *p = t->path;
    uint64_t expected = (uint64_t)KVS_KIND_COUNT * t->shape.n_layers * t->n_blocks;

    if (f->index_count != expected || expected > UINT32_MAX)
        return FAIL_AT(bad, f->index_offset, KVS_ERR_TRACE_CORRUPT,
                       "%s: index at byte offset %llu has %llu entries, expected %llu for %u "
                       "tokens in blocks of %u",
                       p, (unsigned long long)f->index_offset, (unsigned long long)f->index_count,
                       (unsigned long long)expected, t->n_tokens, t->block_tokens);

    t->n_entries = (uint32_t)expected;
    t->entries = malloc(expected * sizeof *t->entries);
    t->frame_of = malloc(expected * sizeof *t->frame_of);
    uint32_t *order = malloc(expected * sizeof *order);
    if (!t->entries || !t->frame_of || !order) {
        free(order);
        return kvs_fail(KVS_ERR_NOMEM, "out of memory reading the index of %s", p);
    }
    for (uint32_t i = 0; i < t->n_entries; i++)
        t->frame_of[i] = UINT32_MAX;

    kvs_status_e rc = KVS_OK;
    for (uint32_t i = 0; rc == KVS_OK && i < t->n_entries; i++) {
        kvs_trace_entry_t *e = &t->entries[i];
        uint64_t at = f->index_offset + (uint64_t)i * KVS_TRACE_ENTRY_BYTES;

        kvs_trace_entry_decode(t->map + at, e);
        rc = check_entry(t, e, at, bad);
        if (rc != KVS_OK)
            break;

        size_t slot = ((size_t)e->kind * t->shape.n_layers + e->layer) * t->n_blocks +
                      e->first_token / t->block_tokens;
        if (t->frame_of[slot] != UINT32_MAX) {
            rc = FAIL_AT(bad, at, KVS_ERR_TRACE_CORRUPT,
                         "%s: index entry at byte offset %llu repeats %s layer %u tokens %u..%u",
                         p, (unsigned long long)at, kvs_kind_name((kvs_kind_e)e->kind), e->layer,
                         e->first_token, e->first_token + e->n_tokens - 1);
            break;
        }
        t->frame_of[slot] = i;
        if (e->raw_bytes > t->max_frame_bytes)
            t->max_frame_bytes = (size_t)e->raw_bytes;
        t->compressed_bytes += e->compressed_bytes;
        t->kind_compressed[e->kind] += e->compressed_bytes;
        t->raw_bytes += (uint64_t)e->n_tokens *
                        kvs_trace_row_width(&t->shape, (kvs_kind_e)e->kind) * sizeof(float);
        order[i] = i;
    }

    /* As many entries as slots and no slot twice means every slot is
    ** covered. The frames, sorted by offset, must then tile the data area
    ** from the header to the metadata with no gap and no overlap. */
    if (rc == KVS_OK) {
        qsort_r(order, t->n_entries, sizeof *order, compare_offsets, t->entries);
        uint64_t next = KVS_TRACE_HEADER_BYTES;
        for (uint32_t i = 0; i < t->n_entries; i++) {
            const kvs_trace_entry_t *e = &t->entries[order[i]];
            if (e->offset != next || e->compressed_bytes > f->metadata_offset - next) {
                rc = FAIL_AT(bad, e->offset < next ? e->offset : next, KVS_ERR_TRACE_CORRUPT,
                             "%s: frame of %s layer %u tokens %u..%u at byte offset %llu (%llu "
                             "bytes) does not follow the previous frame, which ends at %llu, "
                             "inside the data area ending at %llu",
                             p, kvs_kind_name((kvs_kind_e)e->kind), e->layer, e->first_token,
                             e->first_token + e->n_tokens - 1, (unsigned long long)e->offset,
                             (unsigned long long)e->compressed_bytes, (unsigned long long)next,
                             (unsigned long long)f->metadata_offset);
                break;
            }
            next += e->compressed_bytes;
        }
        if (rc == KVS_OK && next != f->metadata_offset)
            rc = FAIL_AT(bad, next, KVS_ERR_TRACE_CORRUPT,
                         "%s: %llu unindexed bytes at byte offset %llu before the metadata", p,
                         (unsigned long long)(f->metadata_offset - next), (unsigned long long)next);
    }
    free(order);
    return rc;
}

static kvs_status_e load_metadata(kvs_trace_t *t, const kvs_trace_footer_t *f, uint64_t *bad)
{
    json_error_t err;
    json_t *root = json_loadb((const char *)t->map + f->metadata_offset, (size_t)f->metadata_bytes,
                              0, &err);
    bool is_object = root && json_is_object(root);

    json_decref(root);
    if (!is_object)
        return FAIL_AT(bad, f->metadata_offset + (root ? 0 : (uint64_t)err.position),
                       KVS_ERR_TRACE_CORRUPT,
                       "%s: metadata at byte offset %llu is not a JSON object%s%s", t->path,
                       (unsigned long long)f->metadata_offset, root ? "" : ": ",
                       root ? "" : err.text);

    t->metadata = malloc((size_t)f->metadata_bytes + 1);
    if (!t->metadata)
        return kvs_fail(KVS_ERR_NOMEM, "out of memory reading the metadata of %s", t->path);
    memcpy(t->metadata, t->map + f->metadata_offset, (size_t)f->metadata_bytes);
    t->metadata[f->metadata_bytes] = '\0';
    return KVS_OK;
}

static void format_content_hash(kvs_trace_t *t)
{
    XXH128_canonical_t canon;
    XXH128_hash_t h = XXH3_128bits(t->map, t->size);

    XXH128_canonicalFromHash(&canon, h);
    for (int i = 0; i < 16; i++)
        snprintf(t->content_hash + 2 * i, 3, "%02x", canon.digest[i]);
}

static kvs_status_e trace_open(const char *path, kvs_trace_t **out, uint64_t *bad)
{
    kvs_trace_t *t = calloc(1, sizeof *t);
    kvs_trace_footer_t f;
    kvs_status_e rc;

    *out = NULL;
    *bad = 0;
    if (!t || !(t->path = strdup(path))) {
        free(t);
        return kvs_fail(KVS_ERR_NOMEM, "out of memory opening %s", path);
    }
    for (int i = 0; i < SCRATCH_SLOTS; i++)
        atomic_flag_clear(&t->pool[i].busy);

    rc = map_file(path, &t->map, &t->size);
    if (rc == KVS_OK && t->size < KVS_TRACE_HEADER_BYTES + KVS_TRACE_FOOTER_BYTES)
        rc = FAIL_AT(bad, t->size, t->size >= 8 && !memcmp(t->map, KVS_TRACE_MAGIC, 8)
                                       ? KVS_ERR_TRACE_TRUNCATED
                                       : KVS_ERR_TRACE_FORMAT,
                     "%s is truncated or not a kvsim trace: %zu bytes, fewer than the %u of a "
                     "header and footer (data ends at byte offset %zu)",
                     path, t->size, KVS_TRACE_HEADER_BYTES + KVS_TRACE_FOOTER_BYTES, t->size);
    if (rc == KVS_OK)
        rc = check_header(t, bad);
    if (rc == KVS_OK)
        rc = check_footer(t, &f, bad);
    if (rc == KVS_OK)
        rc = load_index(t, &f, bad);
    if (rc == KVS_OK)
        rc = load_metadata(t, &f, bad);
    if (rc != KVS_OK) {
        kvs_trace_close(t);
        return rc;
    }
    format_content_hash(t);
    *out = t;
    return KVS_OK;
}

kvs_status_e kvs_trace_open(const char *path, kvs_trace_t **out)
{
    uint64_t bad;
    return trace_open(path, out, &bad);
}

void kvs_trace_close(kvs_trace_t *t)
{
    if (!t)
        return;
    for (int i = 0; i < SCRATCH_SLOTS; i++) {
        ZSTD_freeDCtx(t->pool[i].dctx);
        free(t->pool[i].frame);
    }
    if (t->map)
        munmap((void *)t->map, t->size);
    free(t->entries);
    free(t->frame_of);
    free(t->metadata);
    free(t->path);
    free(t);
}

/* ---- accessors -------------------------------------------------------- */

const kvs_trace_shape_t *kvs_trace_get_shape(const kvs_trace_t *t) { return &t->shape; }
uint32_t kvs_trace_n_tokens(const kvs_trace_t *t) { return t->n_tokens; }
kvs_dtype_e kvs_trace_dtype(const kvs_trace_t *t) { return t->dtype; }
const char *kvs_trace_metadata(const kvs_trace_t *t) { return t->metadata; }
uint64_t kvs_trace_compressed_bytes(const kvs_trace_t *t) { return t->compressed_bytes; }
uint64_t kvs_trace_raw_bytes(const kvs_trace_t *t) { return t->raw_bytes; }
uint64_t kvs_trace_file_bytes(const kvs_trace_t *t) { return t->size; }
const char *kvs_trace_content_hash(const kvs_trace_t *t) { return t->content_hash; }
uint32_t kvs_trace_block_tokens(const kvs_trace_t *t) { return t->block_tokens; }
uint32_t kvs_trace_n_frames(const kvs_trace_t *t) { return t->n_entries; }

uint64_t kvs_trace_kind_compressed_bytes(const kvs_trace_t *t, kvs_kind_e kind)
{
    return (unsigned)kind < KVS_KIND_COUNT ? t->kind_compressed[kind] : 0;
}

uint64_t kvs_trace_kind_raw_bytes(const kvs_trace_t *t, kvs_kind_e kind)
{
    if ((unsigned)kind >= KVS_KIND_COUNT)
        return 0;
    return (uint64_t)t->n_tokens * t->shape.n_layers * kvs_trace_row_width(&t->shape, kind) *
           sizeof(float);
}

/* ---- frame decoding --------------------------------------------------- */

static scratch_t *scratch_acquire(kvs_trace_t *t, scratch_t *own)
{
    for (int i = 0; i < SCRATCH_SLOTS; i++) {
        scratch_t *s = &t->pool[i];
        if (atomic_flag_test_and_set_explicit(&s->busy, memory_order_acquire))
            continue;
        if (!s->dctx)
            s->dctx = ZSTD_createDCtx();
        if (!s->frame)
            s->frame = malloc(t->max_frame_bytes ? t->max_frame_bytes : 1);
        if (s->dctx && s->frame)
            return s;
        atomic_flag_clear_explicit(&s->busy, memory_order_release);
        return NULL;
    }

    /* Every slot is taken: this call gets buffers of its own. */
    own->dctx = ZSTD_createDCtx();
    own->frame = malloc(t->max_frame_bytes ? t->max_frame_bytes : 1);
    if (own->dctx && own->frame)
        return own;
    ZSTD_freeDCtx(own->dctx);
    free(own->frame);
    return NULL;
}

static void scratch_release(kvs_trace_t *t, scratch_t *s, scratch_t *own)
{
    if (s == own) {
        ZSTD_freeDCtx(own->dctx);
        free(own->frame);
        return;
    }
    atomic_flag_clear_explicit(&s->busy, memory_order_release);
}

/* Checks and decompresses one frame into s->frame. */
static kvs_status_e decode_frame(const kvs_trace_t *t, const kvs_trace_entry_t *e, scratch_t *s,
                                 uint64_t *bad)
{
    const uint8_t *src = t->map + e->offset;
    size_t csize = (size_t)e->compressed_bytes;
    const char *kind = kvs_kind_name((kvs_kind_e)e->kind);
    unsigned last = e->first_token + e->n_tokens - 1;

    if (XXH3_64bits(src, csize) != e->checksum)
        return FAIL_AT(bad, e->offset, KVS_ERR_TRACE_CORRUPT,
                       "%s: checksum mismatch in frame %s layer %u tokens %u..%u (%zu bytes) at "
                       "byte offset %llu (the file is damaged; copy or capture it again)",
                       t->path, kind, e->layer, e->first_token, last, csize,
                       (unsigned long long)e->offset);

    /* A valid checksum over crafted bytes must still be one zstd frame of
    ** exactly the indexed size, never two concatenated frames. */
    size_t frame_size = ZSTD_findFrameCompressedSize(src, csize);
    unsigned long long content = ZSTD_getFrameContentSize(src, csize);
    if (ZSTD_isError(frame_size) || frame_size != csize || content != e->raw_bytes)
        return FAIL_AT(bad, e->offset, KVS_ERR_TRACE_CORRUPT,
                       "%s: frame %s layer %u tokens %u..%u at byte offset %llu is not one zstd "
                       "frame of %llu bytes",
                       t->path, kind, e->layer, e->first_token, last,
                       (unsigned long long)e->offset, (unsigned long long)e->raw_bytes);

    size_t got = ZSTD_decompressDCtx(s->dctx, s->frame, t->max_frame_bytes, src, csize);
    if (ZSTD_isError(got) || got != e->raw_bytes)
        return FAIL_AT(bad, e->offset, KVS_ERR_TRACE_CORRUPT,
                       "%s: frame %s layer %u tokens %u..%u at byte offset %llu does not "
                       "decompress: %s",
                       t->path, kind, e->layer, e->first_token, last,
                       (unsigned long long)e->offset,
                       ZSTD_isError(got) ? ZSTD_getErrorName(got) : "wrong size");
    return KVS_OK;
}

/* Converts rows [row0, row0+n_rows) of a decoded frame into out and checks
** that they are finite: the writer stores finite values only. */
static kvs_status_e unpack_rows(const kvs_trace_t *t, const kvs_trace_entry_t *e,
                                const scratch_t *s, uint32_t row0, uint32_t n_rows, float *out,
                                uint64_t *bad)
{
    uint32_t width = kvs_trace_row_width(&t->shape, (kvs_kind_e)e->kind);
    size_t n_values = (size_t)e->n_tokens * width;
    size_t count = (size_t)n_rows * width;

    kvs_trace_shuffle_decode(s->frame, n_values, t->dtype, (size_t)row0 * width, count, out);
    for (size_t i = 0; i < count; i++) {
        if (isfinite(out[i]))
            continue;
        return FAIL_AT(bad, e->offset, KVS_ERR_TRACE_CORRUPT,
                       "%s: non-finite value in frame %s layer %u position %zu column %zu at byte "
                       "offset %llu",
                       t->path, kvs_kind_name((kvs_kind_e)e->kind), e->layer,
                       (size_t)e->first_token + row0 + i / width, i % width,
                       (unsigned long long)e->offset);
    }
    return KVS_OK;
}

kvs_status_e kvs_trace_read(kvs_trace_t *t, kvs_kind_e kind, uint32_t layer, uint32_t first,
                            uint32_t n, float *out)
{
    KVS_RETURN_IF((unsigned)kind >= KVS_KIND_COUNT, KVS_ERR_INVALID,
                  "%s: unknown tensor kind %d (use q, k, k_pre or v)", t->path, (int)kind);
    KVS_RETURN_IF(layer >= t->shape.n_layers, KVS_ERR_INVALID,
                  "%s: layer %u is out of range (the trace has %u layers)", t->path, layer,
                  t->shape.n_layers);
    KVS_RETURN_IF(first > t->n_tokens || n > t->n_tokens - first, KVS_ERR_INVALID,
                  "%s: tokens %u..+%u are out of range (the trace has %u tokens)", t->path, first,
                  n, t->n_tokens);
    if (n == 0)
        return KVS_OK;

    scratch_t own = {0};
    scratch_t *s = scratch_acquire(t, &own);
    if (!s)
        return kvs_fail(KVS_ERR_NOMEM, "out of memory reading %s", t->path);

    uint32_t width = kvs_trace_row_width(&t->shape, kind);
    size_t slot0 = ((size_t)kind * t->shape.n_layers + layer) * t->n_blocks;
    uint32_t pos = first, end = first + n;
    kvs_status_e rc = KVS_OK;
    uint64_t bad;

    while (rc == KVS_OK && pos < end) {
        const kvs_trace_entry_t *e = &t->entries[t->frame_of[slot0 + pos / t->block_tokens]];
        uint32_t row0 = pos - e->first_token;
        uint32_t rows = e->n_tokens - row0;
        if (rows > end - pos)
            rows = end - pos;

        rc = decode_frame(t, e, s, &bad);
        if (rc == KVS_OK)
            rc = unpack_rows(t, e, s, row0, rows, out + (size_t)(pos - first) * width, &bad);
        pos += rows;
    }
    scratch_release(t, s, &own);
    return rc;
}

/* ---- verify ----------------------------------------------------------- */

static int compare_entry_offsets(const void *a, const void *b)
{
    uint64_t x = ((const kvs_trace_entry_t *)a)->offset, y = ((const kvs_trace_entry_t *)b)->offset;
    return x < y ? -1 : x > y;
}

kvs_status_e kvs_trace_verify(const char *path, uint64_t *bad_offset)
{
    uint64_t bad = 0;
    kvs_trace_t *t;
    kvs_status_e rc = trace_open(path, &t, &bad);

    if (rc != KVS_OK) {
        if (bad_offset)
            *bad_offset = bad;
        return rc;
    }

    /* Frames in file order, so the first failure is the lowest offset. */
    kvs_trace_entry_t *sorted = malloc((size_t)t->n_entries * sizeof *sorted);
    scratch_t own = {0};
    scratch_t *s = scratch_acquire(t, &own);
    float *values = malloc(t->max_frame_bytes / kvs_dtype_size(t->dtype) * sizeof(float));

    if (!sorted || !s || !values)
        rc = kvs_fail(KVS_ERR_NOMEM, "out of memory verifying %s", path);
    if (rc == KVS_OK) {
        memcpy(sorted, t->entries, (size_t)t->n_entries * sizeof *sorted);
        qsort(sorted, t->n_entries, sizeof *sorted, compare_entry_offsets);
    }
    for (uint32_t i = 0; rc == KVS_OK && i < t->n_entries; i++) {
        rc = decode_frame(t, &sorted[i], s, &bad);
        if (rc == KVS_OK)
            rc = unpack_rows(t, &sorted[i], s, 0, sorted[i].n_tokens, values, &bad);
    }

    free(values);
    if (s)
        scratch_release(t, s, &own);
    free(sorted);
    kvs_trace_close(t);
    if (bad_offset)
        *bad_offset = rc == KVS_OK ? 0 : bad;
    return rc;
}
