/*
** fuzz_trace.c: libFuzzer target for the .kvt reader.
**
** Each input is written to a file and opened, every (kind, layer) is read
** whole and in pieces, and the file is verified. Random bytes rarely match
** the header, index and footer checksums, so the target also runs a second
** copy with every checksum recomputed as docs/trace-format.md defines them.
** That copy reaches the index, zstd and unshuffle code with crafted values.
**
** Besides the sanitizers, the target aborts when the reader contradicts
** itself: a piece that differs from the whole read, or verify disagreeing
** with the reads.
*/
#include "trace/trace.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <xxhash.h>

/* Larger traces are opened and verified but not read in full, so one
** input cannot stall the run. */
#define MAX_READ_FLOATS (1u << 20)

static uint64_t get_u64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static void put_u64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

/* Rewrites the frame, header and footer checksums of buf in place, where
** the offsets they cover lie inside the buffer. Frames first, because the
** footer checksum covers the index. */
static void fix_checksums(uint8_t *buf, size_t size)
{
    if (size < 128)
        return;
    put_u64(buf + 56, XXH3_64bits(buf, 56));

    const uint8_t *footer = buf + size - 64;
    uint64_t index_offset = get_u64(footer + 8), count = get_u64(footer + 16);
    uint64_t meta_offset = get_u64(footer + 24);
    if (index_offset > size - 64 || count > (size - 64 - index_offset) / 48)
        return;
    for (uint64_t i = 0; i < count; i++) {
        uint8_t *e = buf + index_offset + 48 * i;
        uint64_t offset = get_u64(e + 16), csize = get_u64(e + 24);
        if (offset <= size && csize <= size - offset)
            put_u64(e + 40, XXH3_64bits(buf + offset, (size_t)csize));
    }
    if (meta_offset <= size - 16)
        put_u64(buf + size - 16, XXH3_64bits(buf + meta_offset, (size_t)(size - 16 - meta_offset)));
}

static void check_file(const char *path)
{
    kvs_trace_t *t;
    uint64_t bad = 0;
    int read_failed = 0;

    if (kvs_trace_open(path, &t) != KVS_OK) {
        if (kvs_trace_verify(path, &bad) == KVS_OK)
            abort(); /* verify accepted a file that open rejected */
        return;
    }

    const kvs_trace_shape_t *shape = kvs_trace_get_shape(t);
    uint32_t n = kvs_trace_n_tokens(t);
    uint32_t widest = kvs_trace_row_width(shape, KVS_KIND_Q);
    if (kvs_trace_row_width(shape, KVS_KIND_K) > widest)
        widest = kvs_trace_row_width(shape, KVS_KIND_K);

    if ((uint64_t)n * widest <= MAX_READ_FLOATS) {
        float *full = malloc((size_t)n * widest * sizeof *full + 1);
        float *part = malloc((size_t)n * widest * sizeof *part + 1);
        for (int k = 0; k < KVS_KIND_COUNT && full && part; k++) {
            for (uint32_t l = 0; l < shape->n_layers; l++) {
                uint32_t width = kvs_trace_row_width(shape, (kvs_kind_e)k);
                if (kvs_trace_read(t, (kvs_kind_e)k, l, 0, n, full) != KVS_OK) {
                    read_failed = 1;
                    continue;
                }

                /* The second half, and a range around the middle. */
                uint32_t first = n / 2, count = n - n / 2;
                if (kvs_trace_read(t, (kvs_kind_e)k, l, first, count, part) != KVS_OK ||
                    memcmp(part, full + (size_t)first * width, (size_t)count * width * 4) != 0)
                    abort();
                first = n / 3;
                count = n / 3 + 1 <= n - first ? n / 3 + 1 : n - first;
                if (kvs_trace_read(t, (kvs_kind_e)k, l, first, count, part) != KVS_OK ||
                    memcmp(part, full + (size_t)first * width, (size_t)count * width * 4) != 0)
                    abort();
            }
        }
        free(full);
        free(part);

        /* verify reads the same frames; it must agree with the reads. */
        kvs_status_e rc = kvs_trace_verify(path, &bad);
        if ((rc == KVS_OK) == read_failed)
            abort();
    } else {
        kvs_trace_verify(path, &bad);
    }

    /* Accessors must work on any handle that opened. */
    if (strlen(kvs_trace_content_hash(t)) != 32 || !kvs_trace_metadata(t))
        abort();
    kvs_trace_close(t);
}

static void write_file(const char *path, const uint8_t *data, size_t size)
{
    FILE *fp = fopen(path, "wb");
    if (!fp)
        abort();
    if (size && fwrite(data, 1, size, fp) != size)
        abort();
    fclose(fp);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static char path[4096];

    if (!path[0]) {
        const char *dir = getenv("TMPDIR");
        snprintf(path, sizeof path, "%s/fuzz_trace.%ld.kvt", dir ? dir : "/tmp", (long)getpid());
    }

    write_file(path, data, size);
    check_file(path);

    uint8_t *fixed = malloc(size + 1);
    if (!fixed)
        abort();
    memcpy(fixed, data, size);
    fix_checksums(fixed, size);
    if (size && memcmp(fixed, data, size) != 0) {
        write_file(path, fixed, size);
        check_file(path);
    }
    free(fixed);
    unlink(path);
    return 0;
}
