/*
** test_trace.c: the .kvt trace format: round trips, random access, damage
** detection, writer input checks, byte shuffling and the 'kvsim trace' CLI.
**
** The tests that inspect the file layout decode the footer and the index
** here from docs/trace-format.md, independently of trace_reader.c.
*/
#include "testutil.h"

#include "common/fsutil.h"
#include "trace/trace.h"
#include "trace/trace_internal.h"

#include <dirent.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <xxhash.h>
#include <zstd.h>

/* ---- helpers ---------------------------------------------------------- */

static uint64_t rng_state;

static uint64_t rng_next(void)
{
    /* xorshift64*: a fixed seed makes every run write the same data. */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 2685821657736338717ull;
}

static float rng_uniform(void)
{
    return (float)((rng_next() >> 40) / 16777216.0);
}

static float rng_gauss(void)
{
    float u = rng_uniform() + 1e-7f, v = rng_uniform();
    return sqrtf(-2.0f * logf(u)) * cosf(6.2831853f * v);
}

/* Tensors of one trace held in memory: data[kind][layer] is (n_tokens, width). */
typedef struct trace_data {
    kvs_trace_shape_t shape;
    uint32_t n_tokens;
    float *data[KVS_KIND_COUNT][8];
} trace_data_t;

static void data_free(trace_data_t *d)
{
    for (int k = 0; k < KVS_KIND_COUNT; k++)
        for (uint32_t l = 0; l < d->shape.n_layers; l++)
            free(d->data[k][l]);
}

/* Random values over a wide range of magnitudes, with signed zeros and
** subnormals, so a bit-exact round trip covers every exponent class. */
static void fill_random(trace_data_t *d, kvs_trace_shape_t shape, uint32_t n_tokens, uint64_t seed)
{
    rng_state = seed;
    d->shape = shape;
    d->n_tokens = n_tokens;
    for (int k = 0; k < KVS_KIND_COUNT; k++) {
        for (uint32_t l = 0; l < shape.n_layers; l++) {
            size_t n = (size_t)n_tokens * kvs_trace_row_width(&shape, (kvs_kind_e)k);
            float *p = malloc(n * sizeof *p);
            for (size_t i = 0; i < n; i++) {
                uint64_t r = rng_next();
                switch (r % 16) {
                case 0: p[i] = 0.0f; break;
                case 1: p[i] = -0.0f; break;
                case 2: p[i] = ldexpf(rng_uniform(), -140); break; /* subnormal */
                default: p[i] = ldexpf(rng_gauss(), (int)(r >> 59) - 16); break;
                }
            }
            d->data[k][l] = p;
        }
    }
}

/* Smooth, correlated activations: every channel follows an AR(1) process
** over positions with its own scale, and a few channels carry large
** outliers, as k and v of real models do. */
static void fill_smooth(trace_data_t *d, kvs_trace_shape_t shape, uint32_t n_tokens, uint64_t seed)
{
    rng_state = seed;
    d->shape = shape;
    d->n_tokens = n_tokens;
    for (int k = 0; k < KVS_KIND_COUNT; k++) {
        for (uint32_t l = 0; l < shape.n_layers; l++) {
            uint32_t width = kvs_trace_row_width(&shape, (kvs_kind_e)k);
            float *p = malloc((size_t)n_tokens * width * sizeof *p);
            for (uint32_t c = 0; c < width; c++) {
                float scale = 0.5f + rng_uniform() * (c % 17 == 0 ? 20.0f : 2.0f);
                float x = rng_gauss();
                for (uint32_t t = 0; t < n_tokens; t++) {
                    x = 0.95f * x + 0.3f * rng_gauss();
                    p[(size_t)t * width + c] = scale * x;
                }
            }
            d->data[k][l] = p;
        }
    }
}

/* Writes d, appending kinds and layers in random interleaved chunks as a
** capture would, and returns the writer status. */
static kvs_status_e write_data(const char *path, const trace_data_t *d, kvs_dtype_e dtype,
                               uint32_t block, const char *metadata)
{
    kvs_trace_writer_t *w;
    uint32_t done[KVS_KIND_COUNT][8] = {{0}};
    uint32_t n_slots = KVS_KIND_COUNT * d->shape.n_layers, finished = 0;

    KVS_FORWARD(kvs_trace_writer_create(path, &d->shape, dtype, block, 0, &w));
    rng_state = 12345;
    while (finished < n_slots) {
        uint32_t s = (uint32_t)(rng_next() % n_slots);
        int k = (int)(s / d->shape.n_layers);
        uint32_t l = s % d->shape.n_layers;
        uint32_t left = d->n_tokens - done[k][l];
        if (left == 0)
            continue;
        uint32_t n = 1 + (uint32_t)(rng_next() % 20);
        if (n > left)
            n = left;
        uint32_t width = kvs_trace_row_width(&d->shape, (kvs_kind_e)k);
        kvs_status_e rc = kvs_trace_writer_append(w, (kvs_kind_e)k, l, done[k][l],
                                                  d->data[k][l] + (size_t)done[k][l] * width, n);
        if (rc != KVS_OK) {
            kvs_trace_writer_abort(w);
            return rc;
        }
        done[k][l] += n;
        if (done[k][l] == d->n_tokens)
            finished++;
    }
    return kvs_trace_writer_finish(w, metadata);
}

static const kvs_trace_shape_t small_shape = {.n_layers = 3, .n_heads = 4, .n_kv_heads = 2, .head_dim = 8};

static char *make_path(const char *dir, const char *name)
{
    char *p = malloc(4200);
    snprintf(p, 4200, "%s/%s", dir, name);
    return p;
}

static uint32_t le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t le64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

/* One frame as the index describes it, decoded per docs/trace-format.md. */
typedef struct frame_ref {
    int kind;
    uint32_t layer, first, count;
    uint64_t offset, size;
} frame_ref_t;

static size_t load_frames(const char *path, frame_ref_t *frames, size_t cap)
{
    char *bytes;
    size_t size;

    ck_assert_int_eq(kvs_read_file(path, &bytes, &size), KVS_OK);
    const uint8_t *footer = (const uint8_t *)bytes + size - 64;
    ck_assert_int_eq(memcmp(footer + 56, "KVSTREND", 8), 0);
    uint64_t index_offset = le64(footer + 8), count = le64(footer + 16);
    ck_assert_uint_le(count, cap);
    for (size_t i = 0; i < count; i++) {
        const uint8_t *e = (const uint8_t *)bytes + index_offset + 48 * i;
        frames[i].kind = e[0];
        frames[i].layer = le32(e + 4);
        frames[i].first = le32(e + 8);
        frames[i].count = le32(e + 12);
        frames[i].offset = le64(e + 16);
        frames[i].size = le64(e + 24);
    }
    free(bytes);
    return count;
}

static void write_bytes(const char *path, const char *bytes, size_t size)
{
    FILE *fp = fopen(path, "wb");
    ck_assert_ptr_nonnull(fp);
    ck_assert_uint_eq(fwrite(bytes, 1, size, fp), size);
    fclose(fp);
}

static int count_files(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *ent;
    int n = 0;

    ck_assert_ptr_nonnull(d);
    while ((ent = readdir(d)))
        n += ent->d_name[0] != '.';
    closedir(d);
    return n;
}

static float *read_all(kvs_trace_t *t, kvs_kind_e kind, uint32_t layer)
{
    uint32_t width = kvs_trace_row_width(kvs_trace_get_shape(t), kind);
    float *out = malloc((size_t)kvs_trace_n_tokens(t) * width * sizeof *out);
    ck_assert_int_eq(kvs_trace_read(t, kind, layer, 0, kvs_trace_n_tokens(t), out), KVS_OK);
    return out;
}

/* ---- round trips ------------------------------------------------------ */

START_TEST(f32_round_trip_bit_exact)
{
    char *dir = kvs_test_tmpdir("trace_f32");
    char *path = make_path(dir, "a.kvt");
    trace_data_t d;
    kvs_trace_t *t;

    /* 45 tokens in blocks of 16: two full blocks and one of 13. */
    fill_random(&d, small_shape, 45, 1);
    ck_assert_int_eq(write_data(path, &d, KVS_DTYPE_F32, 16, "{\"prompt_ids\":[1,2,3]}"), KVS_OK);
    ck_assert_int_eq(kvs_trace_open(path, &t), KVS_OK);

    ck_assert_uint_eq(kvs_trace_n_tokens(t), 45);
    ck_assert_uint_eq(kvs_trace_get_shape(t)->n_layers, 3);
    ck_assert_uint_eq(kvs_trace_get_shape(t)->n_heads, 4);
    ck_assert_uint_eq(kvs_trace_get_shape(t)->n_kv_heads, 2);
    ck_assert_uint_eq(kvs_trace_get_shape(t)->head_dim, 8);
    ck_assert_int_eq(kvs_trace_dtype(t), KVS_DTYPE_F32);
    ck_assert_uint_eq(kvs_trace_block_tokens(t), 16);
    ck_assert_uint_eq(kvs_trace_n_frames(t), 4 * 3 * 3);
    ck_assert_str_eq(kvs_trace_metadata(t), "{\"prompt_ids\":[1,2,3]}");
    /* q rows are 32 floats, the other kinds 16: 45 * 3 * (32 + 3*16) * 4. */
    ck_assert_uint_eq(kvs_trace_raw_bytes(t), 45ull * 3 * (32 + 3 * 16) * 4);
    ck_assert_uint_eq(kvs_trace_kind_raw_bytes(t, KVS_KIND_Q), 45ull * 3 * 32 * 4);

    for (int k = 0; k < KVS_KIND_COUNT; k++) {
        for (uint32_t l = 0; l < 3; l++) {
            float *got = read_all(t, (kvs_kind_e)k, l);
            size_t n = 45 * (size_t)kvs_trace_row_width(&small_shape, (kvs_kind_e)k);
            ck_assert_int_eq(memcmp(got, d.data[k][l], n * sizeof(float)), 0);
            free(got);
        }
    }

    uint64_t bad = 1;
    ck_assert_int_eq(kvs_trace_verify(path, &bad), KVS_OK);
    ck_assert_uint_eq(bad, 0);
    kvs_trace_close(t);
    data_free(&d);
    free(path);
    free(dir);
}
END_TEST

START_TEST(half_conversions_known_values)
{
    /* IEEE 754 binary16 and bfloat16 encodings of exactly known values. */
    ck_assert_uint_eq(kvs_f32_to_f16(1.0f), 0x3c00);
    ck_assert_uint_eq(kvs_f32_to_f16(-2.0f), 0xc000);
    ck_assert_uint_eq(kvs_f32_to_f16(65504.0f), 0x7bff);
    ck_assert_uint_eq(kvs_f32_to_f16(0.1f), 0x2e66);
    ck_assert_uint_eq(kvs_f32_to_f16(ldexpf(1.0f, -24)), 0x0001);
    ck_assert_uint_eq(kvs_f32_to_f16(ldexpf(1.0f, -14)), 0x0400);
    /* Ties go to even: 1 + 2^-11 lies halfway between 1 and 1 + 2^-10. */
    ck_assert_uint_eq(kvs_f32_to_f16(1.0f + ldexpf(1.0f, -11)), 0x3c00);
    ck_assert_uint_eq(kvs_f32_to_f16(1.0f + 3 * ldexpf(1.0f, -11)), 0x3c02);
    ck_assert_uint_eq(kvs_f32_to_f16(ldexpf(1.0f, -25)), 0x0000);
    ck_assert_uint_eq(kvs_f32_to_f16(ldexpf(3.0f, -25)), 0x0002);
    ck_assert_uint_eq(kvs_f32_to_f16(65520.0f), 0x7c00);

    ck_assert_uint_eq(kvs_f32_to_bf16(1.0f), 0x3f80);
    ck_assert_uint_eq(kvs_f32_to_bf16(-2.0f), 0xc000);
    ck_assert_uint_eq(kvs_f32_to_bf16(1.0f + ldexpf(1.0f, -8)), 0x3f80);
    ck_assert_uint_eq(kvs_f32_to_bf16(1.0f + 3 * ldexpf(1.0f, -8)), 0x3f82);

    ck_assert_float_eq(kvs_f16_to_f32(0x3c00), 1.0f);
    ck_assert_float_eq(kvs_f16_to_f32(0x0001), ldexpf(1.0f, -24));
    ck_assert_float_eq(kvs_f16_to_f32(0xfbff), -65504.0f);
    ck_assert_float_eq(kvs_bf16_to_f32(0x3f82), 1.015625f);
}
END_TEST

/* Largest error of rounding to nearest: half a unit in the last place,
** 2^-11 relative for binary16 normals (2^-25 absolute below 2^-14) and
** 2^-8 relative for bfloat16. */
static double rounding_bound(kvs_dtype_e dtype, float x)
{
    if (dtype == KVS_DTYPE_F16)
        return fabsf(x) < ldexpf(1.0f, -14) ? ldexp(1.0, -25) : fabs(x) * ldexp(1.0, -11);
    return fabs(x) * ldexp(1.0, -8);
}

static void check_half_round_trip(kvs_dtype_e dtype)
{
    char *dir = kvs_test_tmpdir(dtype == KVS_DTYPE_F16 ? "trace_f16" : "trace_bf16");
    char *path = make_path(dir, "a.kvt");
    trace_data_t d;
    kvs_trace_t *t;

    /* Scaling by 2^-22..2^6 keeps every value below the binary16 maximum
    ** (65504) and puts some in its subnormal range. */
    fill_smooth(&d, small_shape, 37, 7);
    for (int k = 0; k < KVS_KIND_COUNT; k++)
        for (uint32_t l = 0; l < 3; l++)
            for (size_t i = 0; i < 37 * (size_t)kvs_trace_row_width(&small_shape, (kvs_kind_e)k); i++)
                d.data[k][l][i] = ldexpf(d.data[k][l][i], (int)(i % 29) - 22);

    ck_assert_int_eq(write_data(path, &d, dtype, 8, NULL), KVS_OK);
    ck_assert_int_eq(kvs_trace_open(path, &t), KVS_OK);
    ck_assert_int_eq(kvs_trace_dtype(t), dtype);
    ck_assert_str_eq(kvs_trace_metadata(t), "{}");

    size_t inexact = 0;
    for (int k = 0; k < KVS_KIND_COUNT; k++) {
        for (uint32_t l = 0; l < 3; l++) {
            float *got = read_all(t, (kvs_kind_e)k, l);
            size_t n = 37 * (size_t)kvs_trace_row_width(&small_shape, (kvs_kind_e)k);
            for (size_t i = 0; i < n; i++) {
                float x = d.data[k][l][i];
                ck_assert_msg(fabs((double)got[i] - x) <= rounding_bound(dtype, x),
                              "%s value %g read back as %g", kvs_dtype_name(dtype), (double)x,
                              (double)got[i]);
                inexact += got[i] != x;
            }
            free(got);
        }
    }
    /* The values carry more bits than the dtype, so most must round. */
    ck_assert_uint_gt(inexact, 1000);
    kvs_trace_close(t);
    data_free(&d);
    free(path);
    free(dir);
}

START_TEST(f16_round_trip_within_bound)
{
    check_half_round_trip(KVS_DTYPE_F16);
}
END_TEST

START_TEST(bf16_round_trip_within_bound)
{
    check_half_round_trip(KVS_DTYPE_BF16);
}
END_TEST

START_TEST(random_access_equals_slice)
{
    char *dir = kvs_test_tmpdir("trace_ranges");
    char *path = make_path(dir, "a.kvt");
    trace_data_t d;
    kvs_trace_t *t;

    fill_random(&d, small_shape, 100, 3);
    ck_assert_int_eq(write_data(path, &d, KVS_DTYPE_F32, 16, NULL), KVS_OK);
    ck_assert_int_eq(kvs_trace_open(path, &t), KVS_OK);

    static const uint32_t ranges[][2] = {
        {0, 1}, {15, 2}, {16, 16}, {17, 50}, {99, 1}, {31, 69}, {0, 100}, {40, 0}, {100, 0},
    };
    for (int k = 0; k < KVS_KIND_COUNT; k++) {
        for (uint32_t l = 0; l < 3; l++) {
            uint32_t width = kvs_trace_row_width(&small_shape, (kvs_kind_e)k);
            float *full = read_all(t, (kvs_kind_e)k, l);
            float *part = malloc(100 * (size_t)width * sizeof *part);
            for (size_t r = 0; r < sizeof ranges / sizeof ranges[0]; r++) {
                uint32_t first = ranges[r][0], n = ranges[r][1];
                ck_assert_int_eq(kvs_trace_read(t, (kvs_kind_e)k, l, first, n, part), KVS_OK);
                ck_assert_int_eq(memcmp(part, full + (size_t)first * width,
                                        (size_t)n * width * sizeof(float)), 0);
            }
            free(part);
            free(full);
        }
    }

    /* Ranges past the end and unknown kinds or layers are rejected. */
    float one[32];
    ck_assert_int_eq(kvs_trace_read(t, KVS_KIND_Q, 0, 99, 2, one), KVS_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(kvs_error_message(), "out of range"));
    ck_assert_int_eq(kvs_trace_read(t, KVS_KIND_Q, 0, 101, 0, one), KVS_ERR_INVALID);
    ck_assert_int_eq(kvs_trace_read(t, KVS_KIND_Q, 3, 0, 1, one), KVS_ERR_INVALID);
    ck_assert_int_eq(kvs_trace_read(t, KVS_KIND_COUNT, 0, 0, 1, one), KVS_ERR_INVALID);
    kvs_trace_close(t);
    data_free(&d);
    free(path);
    free(dir);
}
END_TEST

typedef struct reader_job {
    kvs_trace_t *trace;
    const trace_data_t *data;
    int seed;
    int mismatches;
} reader_job_t;

static void *reader_thread(void *arg)
{
    reader_job_t *job = arg;
    uint64_t state = (uint64_t)job->seed * 7919 + 1;
    float *buf = malloc(100 * 32 * sizeof *buf);

    for (int i = 0; i < 400; i++) {
        state = state * 6364136223846793005ull + 1442695040888963407ull;
        int k = (int)((state >> 33) % KVS_KIND_COUNT);
        uint32_t l = (uint32_t)((state >> 40) % 3);
        uint32_t first = (uint32_t)((state >> 20) % 100);
        uint32_t n = 1 + (uint32_t)((state >> 50) % (100 - first));
        uint32_t width = kvs_trace_row_width(&job->data->shape, (kvs_kind_e)k);
        if (kvs_trace_read(job->trace, (kvs_kind_e)k, l, first, n, buf) != KVS_OK ||
            memcmp(buf, job->data->data[k][l] + (size_t)first * width, (size_t)n * width * 4))
            job->mismatches++;
    }
    free(buf);
    return NULL;
}

START_TEST(concurrent_reads_match_data)
{
    char *dir = kvs_test_tmpdir("trace_threads");
    char *path = make_path(dir, "a.kvt");
    trace_data_t d;
    kvs_trace_t *t;
    pthread_t threads[12];
    reader_job_t jobs[12];

    /* More threads than scratch slots, so some reads use their own. */
    fill_random(&d, small_shape, 100, 5);
    ck_assert_int_eq(write_data(path, &d, KVS_DTYPE_F32, 8, NULL), KVS_OK);
    ck_assert_int_eq(kvs_trace_open(path, &t), KVS_OK);
    for (int i = 0; i < 12; i++) {
        jobs[i] = (reader_job_t){.trace = t, .data = &d, .seed = i};
        ck_assert_int_eq(pthread_create(&threads[i], NULL, reader_thread, &jobs[i]), 0);
    }
    for (int i = 0; i < 12; i++) {
        pthread_join(threads[i], NULL);
        ck_assert_int_eq(jobs[i].mismatches, 0);
    }
    kvs_trace_close(t);
    data_free(&d);
    free(path);
    free(dir);
}
END_TEST

START_TEST(content_hash_is_xxh3_128_of_file)
{
    char *dir = kvs_test_tmpdir("trace_hash");
    char *a = make_path(dir, "a.kvt"), *b = make_path(dir, "b.kvt");
    trace_data_t d;
    kvs_trace_t *ta, *tb;
    char *bytes;
    size_t size;
    char expected[33];

    fill_random(&d, small_shape, 20, 9);
    ck_assert_int_eq(write_data(a, &d, KVS_DTYPE_F32, 0, "{\"n\":1}"), KVS_OK);
    ck_assert_int_eq(write_data(b, &d, KVS_DTYPE_F32, 0, "{\"n\":2}"), KVS_OK);
    ck_assert_int_eq(kvs_trace_open(a, &ta), KVS_OK);
    ck_assert_int_eq(kvs_trace_open(b, &tb), KVS_OK);

    /* The canonical form of XXH3-128 is the high 64 bits, then the low,
    ** each big-endian. */
    ck_assert_int_eq(kvs_read_file(a, &bytes, &size), KVS_OK);
    XXH128_hash_t h = XXH3_128bits(bytes, size);
    snprintf(expected, sizeof expected, "%016llx%016llx", (unsigned long long)h.high64,
             (unsigned long long)h.low64);
    ck_assert_str_eq(kvs_trace_content_hash(ta), expected);
    ck_assert_uint_eq(kvs_trace_file_bytes(ta), size);
    ck_assert_str_ne(kvs_trace_content_hash(ta), kvs_trace_content_hash(tb));
    free(bytes);
    kvs_trace_close(ta);
    kvs_trace_close(tb);
    data_free(&d);
    free(a);
    free(b);
    free(dir);
}
END_TEST

/* ---- damage detection ------------------------------------------------- */

START_TEST(flipped_byte_fails_inside_frame)
{
    char *dir = kvs_test_tmpdir("trace_flip");
    char *path = make_path(dir, "a.kvt");
    trace_data_t d;
    frame_ref_t frames[64];
    char *bytes;
    size_t size;

    fill_random(&d, small_shape, 40, 11);
    ck_assert_int_eq(write_data(path, &d, KVS_DTYPE_F32, 16, NULL), KVS_OK);
    size_t n_frames = load_frames(path, frames, 64);
    ck_assert_uint_eq(n_frames, 36);
    ck_assert_int_eq(kvs_read_file(path, &bytes, &size), KVS_OK);

    for (size_t pick = 0; pick < n_frames; pick += 7) {
        const frame_ref_t *f = &frames[pick];
        uint64_t at = f->offset + f->size / 2, bad = 0;
        char expected[64];
        kvs_trace_t *t;

        bytes[at] ^= 0x10;
        write_bytes(path, bytes, size);
        bytes[at] ^= 0x10;

        ck_assert_int_eq(kvs_trace_verify(path, &bad), KVS_ERR_TRACE_CORRUPT);
        ck_assert_uint_ge(bad, f->offset);
        ck_assert_uint_lt(bad, f->offset + f->size);
        snprintf(expected, sizeof expected, "at byte offset %llu", (unsigned long long)bad);
        ck_assert_ptr_nonnull(strstr(kvs_error_message(), expected));

        /* Open checks only the index; the damaged frame fails when read,
        ** and the other layers of the same kind still read. */
        ck_assert_int_eq(kvs_trace_open(path, &t), KVS_OK);
        float *out = malloc(40 * 32 * sizeof *out);
        ck_assert_int_eq(kvs_trace_read(t, (kvs_kind_e)f->kind, f->layer, f->first, 1, out),
                         KVS_ERR_TRACE_CORRUPT);
        ck_assert_int_eq(kvs_trace_read(t, (kvs_kind_e)f->kind, (f->layer + 1) % 3, 0, 40, out),
                         KVS_OK);
        free(out);
        kvs_trace_close(t);
    }
    free(bytes);
    data_free(&d);
    free(path);
    free(dir);
}
END_TEST

START_TEST(flipped_byte_in_index_fails_open)
{
    char *dir = kvs_test_tmpdir("trace_flip_index");
    char *path = make_path(dir, "a.kvt");
    trace_data_t d;
    char *bytes;
    size_t size;
    kvs_trace_t *t;
    uint64_t bad = 0;

    fill_random(&d, small_shape, 10, 12);
    ck_assert_int_eq(write_data(path, &d, KVS_DTYPE_F32, 16, "{\"a\":1}"), KVS_OK);
    ck_assert_int_eq(kvs_read_file(path, &bytes, &size), KVS_OK);

    /* A byte of the last index entry, and one of the header. */
    bytes[size - 64 - 20] ^= 1;
    write_bytes(path, bytes, size);
    ck_assert_int_eq(kvs_trace_open(path, &t), KVS_ERR_TRACE_CORRUPT);
    ck_assert_ptr_nonnull(strstr(kvs_error_message(), "checksum mismatch"));
    ck_assert_int_eq(kvs_trace_verify(path, &bad), KVS_ERR_TRACE_CORRUPT);
    ck_assert_uint_gt(bad, 64);
    bytes[size - 64 - 20] ^= 1;

    bytes[20] ^= 1;
    write_bytes(path, bytes, size);
    ck_assert_int_eq(kvs_trace_verify(path, &bad), KVS_ERR_TRACE_CORRUPT);
    ck_assert_uint_eq(bad, 0);
    ck_assert_ptr_nonnull(strstr(kvs_error_message(), "header checksum"));
    bytes[20] ^= 1;

    /* Not a trace at all. */
    memcpy(bytes, "NOTATRACE", 8);
    write_bytes(path, bytes, size);
    ck_assert_int_eq(kvs_trace_open(path, &t), KVS_ERR_TRACE_FORMAT);
    ck_assert_ptr_nonnull(strstr(kvs_error_message(), "not a kvsim trace"));
    free(bytes);
    data_free(&d);
    free(path);
    free(dir);
}
END_TEST

static void put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void put64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

/* Recomputes the header, frame and footer checksums as docs/trace-format.md
** defines them, so a crafted field reaches the structural checks. */
static void reseal(uint8_t *b, size_t size)
{
    uint64_t index_offset = le64(b + size - 56), count = le64(b + size - 48);
    uint64_t meta_offset = le64(b + size - 40);

    put64(b + 56, XXH3_64bits(b, 56));
    for (uint64_t i = 0; i < count; i++) {
        uint8_t *e = b + index_offset + 48 * i;
        uint64_t offset = le64(e + 16), csize = le64(e + 24);
        if (offset + csize <= size)
            put64(e + 40, XXH3_64bits(b + offset, csize));
    }
    put64(b + size - 16, XXH3_64bits(b + meta_offset, size - 16 - meta_offset));
}

START_TEST(crafted_fields_rejected)
{
    char *dir = kvs_test_tmpdir("trace_crafted");
    char *path = make_path(dir, "a.kvt");
    char *crafted = make_path(dir, "crafted.kvt");
    trace_data_t d;
    char *orig;
    size_t size;

    fill_random(&d, small_shape, 40, 17);
    ck_assert_int_eq(write_data(path, &d, KVS_DTYPE_F32, 16, "{\"a\":[1]}"), KVS_OK);
    ck_assert_int_eq(kvs_read_file(path, &orig, &size), KVS_OK);
    uint64_t index_offset = le64((uint8_t *)orig + size - 56);
    uint64_t meta_offset = le64((uint8_t *)orig + size - 40);

    /* Each case: where to write, what, the status and a word of the message. */
    struct {
        uint64_t at;
        int width; /* 1, 4 or 8 bytes */
        uint64_t value;
        kvs_status_e status;
        const char *expected;
    } cases[] = {
        {8, 4, 2, KVS_ERR_TRACE_FORMAT, "version 2"},
        {40, 4, 3, KVS_ERR_TRACE_FORMAT, "unknown flags"},
        {32, 4, 9, KVS_ERR_TRACE_FORMAT, "unknown dtype"},
        {24, 4, 3, KVS_ERR_TRACE_FORMAT, "invalid shape"},
        {36, 4, 0, KVS_ERR_TRACE_FORMAT, "block_tokens 0"},
        {index_offset + 0, 1, 7, KVS_ERR_TRACE_CORRUPT, "kind 7"},
        {index_offset + 4, 4, 3, KVS_ERR_TRACE_CORRUPT, "layer 3"},
        {index_offset + 8, 4, 5, KVS_ERR_TRACE_CORRUPT, "not a block"},
        {index_offset + 12, 4, 15, KVS_ERR_TRACE_CORRUPT, "not a block"},
        {index_offset + 32, 8, 12, KVS_ERR_TRACE_CORRUPT, "expected"},
        /* Frame 0 pointed at frame 1's bytes overlaps it and leaves a gap. */
        {index_offset + 16, 8, le64((uint8_t *)orig + index_offset + 48 + 16), KVS_ERR_TRACE_CORRUPT,
         "does not follow"},
        {index_offset + 24, 8, 1, KVS_ERR_TRACE_CORRUPT, "does not follow"},
        {size - 24, 8, 41, KVS_ERR_TRACE_CORRUPT, "not a block"},
        {size - 24, 8, 49, KVS_ERR_TRACE_CORRUPT, "entries, expected"},
        {size - 24, 8, 0, KVS_ERR_TRACE_CORRUPT, "token count 0"},
        {meta_offset, 1, '[', KVS_ERR_TRACE_CORRUPT, "not a JSON object"},
    };

    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        uint8_t *b = malloc(size);
        kvs_trace_t *t = NULL;
        uint64_t bad = 0;

        memcpy(b, orig, size);
        if (cases[i].width == 1)
            b[cases[i].at] = (uint8_t)cases[i].value;
        else if (cases[i].width == 4)
            put32(b + cases[i].at, (uint32_t)cases[i].value);
        else
            put64(b + cases[i].at, cases[i].value);
        reseal(b, size);
        write_bytes(crafted, (char *)b, size);

        ck_assert_int_eq(kvs_trace_open(crafted, &t), cases[i].status);
        ck_assert_ptr_null(t);
        ck_assert_msg(strstr(kvs_error_message(), cases[i].expected), "case %zu: %s", i,
                      kvs_error_message());
        ck_assert_msg(strstr(kvs_error_message(), "byte offset"), "case %zu: %s", i,
                      kvs_error_message());
        ck_assert_int_eq(kvs_trace_verify(crafted, &bad), cases[i].status);
        ck_assert_uint_lt(bad, size);
        free(b);
    }

    /* Two entries naming the same (kind, layer, block). */
    uint8_t *b = malloc(size);
    kvs_trace_t *t = NULL;
    memcpy(b, orig, size);
    memcpy(b + index_offset + 48, b + index_offset, 48);
    reseal(b, size);
    write_bytes(crafted, (char *)b, size);
    ck_assert_int_eq(kvs_trace_open(crafted, &t), KVS_ERR_TRACE_CORRUPT);
    ck_assert_msg(strstr(kvs_error_message(), "repeats"), "%s", kvs_error_message());
    free(b);

    free(orig);
    data_free(&d);
    free(crafted);
    free(path);
    free(dir);
}
END_TEST

START_TEST(truncated_file_fails)
{
    char *dir = kvs_test_tmpdir("trace_truncate");
    char *path = make_path(dir, "a.kvt");
    char *cut = make_path(dir, "cut.kvt");
    trace_data_t d;
    char *bytes;
    size_t size;

    fill_random(&d, small_shape, 40, 13);
    ck_assert_int_eq(write_data(path, &d, KVS_DTYPE_F32, 16, NULL), KVS_OK);
    ck_assert_int_eq(kvs_read_file(path, &bytes, &size), KVS_OK);

    size_t points[] = {0, 1, 8, 63, 64, 65, 127, 200, size / 2, size - 65, size - 64, size - 8,
                       size - 1};
    for (size_t i = 0; i < sizeof points / sizeof points[0]; i++) {
        kvs_trace_t *t = NULL;
        uint64_t bad = 0;
        char expected[64];

        write_bytes(cut, bytes, points[i]);
        ck_assert_int_ne(kvs_trace_open(cut, &t), KVS_OK);
        ck_assert_ptr_null(t);
        ck_assert_msg(strstr(kvs_error_message(), "truncated"), "cut at %zu: %s", points[i],
                      kvs_error_message());
        ck_assert_int_ne(kvs_trace_verify(cut, &bad), KVS_OK);
        ck_assert_uint_eq(bad, points[i]);
        snprintf(expected, sizeof expected, "byte offset %zu", points[i]);
        ck_assert_msg(strstr(kvs_error_message(), expected), "cut at %zu: %s", points[i],
                      kvs_error_message());
    }
    free(bytes);
    data_free(&d);
    free(cut);
    free(path);
    free(dir);
}
END_TEST

/* ---- writer input checks ---------------------------------------------- */

START_TEST(nan_rejected_with_position)
{
    char *dir = kvs_test_tmpdir("trace_nan");
    char *path = make_path(dir, "a.kvt");
    kvs_trace_writer_t *w;
    float rows[8 * 32];
    kvs_trace_t *t;

    /* Room for 8 rows of q (32 floats); k_pre rows are 16 floats. */
    for (int i = 0; i < 8 * 32; i++)
        rows[i] = (float)i;
    ck_assert_int_eq(kvs_trace_writer_create(path, &small_shape, KVS_DTYPE_F32, 4, 0, &w), KVS_OK);
    ck_assert_int_eq(kvs_trace_writer_append(w, KVS_KIND_K_PRE, 1, 0, rows, 5), KVS_OK);

    /* Row 2 of this append is position 7; column 3. */
    rows[2 * 16 + 3] = NAN;
    ck_assert_int_eq(kvs_trace_writer_append(w, KVS_KIND_K_PRE, 1, 5, rows, 8), KVS_ERR_NONFINITE);
    const char *msg = kvs_error_message();
    ck_assert_ptr_nonnull(strstr(msg, "NaN in k_pre layer 1 position 7 column 3"));
    rows[2 * 16 + 3] = -INFINITY;
    ck_assert_int_eq(kvs_trace_writer_append(w, KVS_KIND_K_PRE, 1, 5, rows, 8), KVS_ERR_NONFINITE);
    ck_assert_ptr_nonnull(strstr(kvs_error_message(), "Inf in k_pre layer 1 position 7 column 3"));

    /* A rejected append changes nothing: position 5 is still next. */
    rows[2 * 16 + 3] = 1.0f;
    ck_assert_int_eq(kvs_trace_writer_append(w, KVS_KIND_K_PRE, 1, 6, rows, 1), KVS_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(kvs_error_message(), "expected 5"));
    ck_assert_int_eq(kvs_trace_writer_append(w, KVS_KIND_K_PRE, 1, 5, rows, 1), KVS_OK);
    for (int k = 0; k < KVS_KIND_COUNT; k++) {
        for (uint32_t l = 0; l < 3; l++) {
            if (k == KVS_KIND_K_PRE && l == 1)
                continue;
            ck_assert_int_eq(kvs_trace_writer_append(w, (kvs_kind_e)k, l, 0, rows, 6), KVS_OK);
        }
    }
    ck_assert_int_eq(kvs_trace_writer_finish(w, NULL), KVS_OK);
    ck_assert_int_eq(kvs_trace_open(path, &t), KVS_OK);
    ck_assert_uint_eq(kvs_trace_n_tokens(t), 6);
    kvs_trace_close(t);
    free(path);
    free(dir);
}
END_TEST

START_TEST(f16_overflow_rejected)
{
    char *dir = kvs_test_tmpdir("trace_f16_overflow");
    char *path = make_path(dir, "a.kvt");
    kvs_trace_writer_t *w;
    float row[16] = {0};

    row[9] = 70000.0f;
    ck_assert_int_eq(kvs_trace_writer_create(path, &small_shape, KVS_DTYPE_F16, 0, 0, &w), KVS_OK);
    ck_assert_int_eq(kvs_trace_writer_append(w, KVS_KIND_V, 2, 0, row, 1), KVS_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(kvs_error_message(), "v layer 2 position 0 column 9"));
    ck_assert_ptr_nonnull(strstr(kvs_error_message(), "f16"));
    kvs_trace_writer_abort(w);
    ck_assert_int_eq(count_files(dir), 0);
    free(path);
    free(dir);
}
END_TEST

START_TEST(unequal_counts_rejected)
{
    char *dir = kvs_test_tmpdir("trace_unequal");
    char *path = make_path(dir, "a.kvt");
    kvs_trace_writer_t *w;
    float rows[32 * 10] = {0};
    struct stat st;

    ck_assert_int_eq(kvs_trace_writer_create(path, &small_shape, KVS_DTYPE_F32, 4, 0, &w), KVS_OK);
    for (int k = 0; k < KVS_KIND_COUNT; k++)
        for (uint32_t l = 0; l < 3; l++)
            ck_assert_int_eq(kvs_trace_writer_append(w, (kvs_kind_e)k, l, 0, rows,
                                                     k == KVS_KIND_V && l == 2 ? 9 : 10), KVS_OK);
    ck_assert_int_eq(kvs_trace_writer_finish(w, NULL), KVS_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(kvs_error_message(), "v layer 2 has 9"));
    ck_assert_int_ne(stat(path, &st), 0);
    ck_assert_int_eq(count_files(dir), 0);

    /* A writer with no positions at all is rejected the same way. */
    ck_assert_int_eq(kvs_trace_writer_create(path, &small_shape, KVS_DTYPE_F32, 4, 0, &w), KVS_OK);
    ck_assert_int_eq(kvs_trace_writer_finish(w, NULL), KVS_ERR_INVALID);
    ck_assert_int_eq(count_files(dir), 0);
    free(path);
    free(dir);
}
END_TEST

START_TEST(invalid_metadata_rejected)
{
    char *dir = kvs_test_tmpdir("trace_metadata");
    char *path = make_path(dir, "a.kvt");
    trace_data_t d;

    fill_random(&d, small_shape, 3, 14);
    ck_assert_int_eq(write_data(path, &d, KVS_DTYPE_F32, 0, "{\"a\": 1"), KVS_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(kvs_error_message(), "not valid JSON"));
    ck_assert_int_eq(write_data(path, &d, KVS_DTYPE_F32, 0, "[1, 2]"), KVS_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(kvs_error_message(), "JSON object"));
    ck_assert_int_eq(count_files(dir), 0);
    data_free(&d);
    free(path);
    free(dir);
}
END_TEST

START_TEST(missing_folder_leaves_no_file)
{
    char *dir = kvs_test_tmpdir("trace_missing");
    char *path = make_path(dir, "no/such/folder/a.kvt");
    kvs_trace_writer_t *w = NULL;

    ck_assert_int_eq(kvs_trace_writer_create(path, &small_shape, KVS_DTYPE_F32, 0, 0, &w),
                     KVS_ERR_IO);
    ck_assert_ptr_null(w);
    ck_assert_ptr_nonnull(strstr(kvs_error_message(), "no/such/folder/a.kvt"));
    ck_assert_int_eq(count_files(dir), 0);
    free(path);
    free(dir);
}
END_TEST

START_TEST(bad_shape_rejected)
{
    kvs_trace_writer_t *w = NULL;
    kvs_trace_shape_t shape = small_shape;

    shape.n_kv_heads = 3;
    ck_assert_int_eq(kvs_trace_writer_create("/tmp/unused.kvt", &shape, KVS_DTYPE_F32, 0, 0, &w),
                     KVS_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(kvs_error_message(), "n_kv_heads 3"));
    shape = small_shape;
    shape.n_layers = 0;
    ck_assert_int_eq(kvs_trace_writer_create("/tmp/unused.kvt", &shape, KVS_DTYPE_F32, 0, 0, &w),
                     KVS_ERR_INVALID);
    ck_assert_int_eq(kvs_trace_writer_create("/tmp/unused.kvt", &small_shape, KVS_DTYPE_F32, 0,
                                             99, &w), KVS_ERR_INVALID);
    ck_assert_ptr_null(w);
}
END_TEST

START_TEST(full_disk_reports_io_error)
{
    char *dir = kvs_test_tmpdir("trace_full");
    char *path = make_path(dir, "a.kvt");
    kvs_trace_shape_t shape = {.n_layers = 1, .n_heads = 1, .n_kv_heads = 1, .head_dim = 256};
    struct rlimit limit = {.rlim_cur = 16384, .rlim_max = RLIM_INFINITY};
    kvs_trace_writer_t *w;
    kvs_status_e rc = KVS_OK;
    static float rows[256 * 64];

    /* A file size limit makes writes past 16 KiB fail with EFBIG, as a
    ** full disk fails them with ENOSPC. Check runs each test in a child
    ** process, so the limit ends with this test. */
    signal(SIGXFSZ, SIG_IGN);
    ck_assert_int_eq(setrlimit(RLIMIT_FSIZE, &limit), 0);

    /* Random floats barely compress, so 16 blocks of 64 KiB overflow it. */
    rng_state = 99;
    ck_assert_int_eq(kvs_trace_writer_create(path, &shape, KVS_DTYPE_F32, 64, 0, &w), KVS_OK);
    for (uint32_t b = 0; b < 16 && rc == KVS_OK; b++) {
        for (int i = 0; i < 256 * 64; i++)
            rows[i] = rng_gauss();
        for (int k = 0; k < KVS_KIND_COUNT && rc == KVS_OK; k++)
            rc = kvs_trace_writer_append(w, (kvs_kind_e)k, 0, b * 64, rows, 64);
    }
    if (rc == KVS_OK)
        rc = kvs_trace_writer_finish(w, NULL);
    else
        kvs_trace_writer_abort(w);
    ck_assert_int_eq(rc, KVS_ERR_IO);
    ck_assert_ptr_nonnull(strstr(kvs_error_message(), path));
    ck_assert_int_eq(count_files(dir), 0);
    free(path);
    free(dir);
}
END_TEST

/* ---- byte shuffling --------------------------------------------------- */

/* Plain zstd at the same level over the same blocks, without shuffling. */
static uint64_t plain_zstd_bytes(const trace_data_t *d, uint32_t block)
{
    uint64_t total = 0;
    size_t cap = ZSTD_compressBound((size_t)block * 64 * 4);
    void *dst = malloc(cap);

    for (int k = 0; k < KVS_KIND_COUNT; k++) {
        uint32_t width = kvs_trace_row_width(&d->shape, (kvs_kind_e)k);
        for (uint32_t l = 0; l < d->shape.n_layers; l++) {
            for (uint32_t t = 0; t < d->n_tokens; t += block) {
                uint32_t n = d->n_tokens - t < block ? d->n_tokens - t : block;
                size_t c = ZSTD_compress(dst, cap, d->data[k][l] + (size_t)t * width,
                                         (size_t)n * width * 4, 3);
                ck_assert(!ZSTD_isError(c));
                total += c;
            }
        }
    }
    free(dst);
    return total;
}

START_TEST(shuffle_beats_plain_zstd_synthetic)
{
    char *dir = kvs_test_tmpdir("trace_shuffle");
    char *path = make_path(dir, "a.kvt");
    kvs_trace_shape_t shape = {.n_layers = 2, .n_heads = 8, .n_kv_heads = 4, .head_dim = 8};
    trace_data_t d;
    kvs_trace_t *t;

    /* Correlated synthetic activations (fill_smooth), not real model data. */
    fill_smooth(&d, shape, 256, 21);
    ck_assert_int_eq(write_data(path, &d, KVS_DTYPE_F32, 64, NULL), KVS_OK);
    ck_assert_int_eq(kvs_trace_open(path, &t), KVS_OK);
    uint64_t shuffled = kvs_trace_compressed_bytes(t), plain = plain_zstd_bytes(&d, 64);
    ck_assert_msg(shuffled < plain, "shuffled %llu bytes, plain zstd %llu",
                  (unsigned long long)shuffled, (unsigned long long)plain);
    kvs_trace_close(t);
    data_free(&d);
    free(path);
    free(dir);
}
END_TEST

/* Reads one F32 tensor of a safetensors file: an 8-byte header length, a
** JSON header mapping names to dtype, shape and data offsets, then data. */
static float *read_safetensor(const char *file, const char *name, size_t *count)
{
    char *bytes;
    size_t size;
    json_error_t err;

    ck_assert_int_eq(kvs_read_file(file, &bytes, &size), KVS_OK);
    uint64_t header = le64((const uint8_t *)bytes);
    json_t *root = json_loadb(bytes + 8, header, 0, &err);
    ck_assert_ptr_nonnull(root);
    json_t *tensor = json_object_get(root, name);
    ck_assert_ptr_nonnull(tensor);
    ck_assert_str_eq(json_string_value(json_object_get(tensor, "dtype")), "F32");
    json_t *offsets = json_object_get(tensor, "data_offsets");
    size_t begin = (size_t)json_integer_value(json_array_get(offsets, 0));
    size_t end = (size_t)json_integer_value(json_array_get(offsets, 1));
    ck_assert_uint_le(8 + header + end, size);
    float *out = malloc(end - begin);
    memcpy(out, bytes + 8 + header + begin, end - begin);
    *count = (end - begin) / 4;
    json_decref(root);
    free(bytes);
    return out;
}

START_TEST(shuffle_beats_plain_zstd_stories260k)
{
    const char *model = kvs_test_shared("models/stories260K/model.safetensors");
    char file[4200];
    char *dir = kvs_test_tmpdir("trace_shuffle_real");
    char *path = make_path(dir, "a.kvt");
    /* Real stories260K weights stand in for activations: the first 32
    ** rows of 64 floats of each layer's q_proj, k_proj, o_proj and v_proj
    ** become 32 positions of the q, k, k_pre and v kinds. */
    kvs_trace_shape_t shape = {.n_layers = 5, .n_heads = 8, .n_kv_heads = 8, .head_dim = 8};
    static const char *const names[] = {"q_proj", "k_proj", "o_proj", "v_proj"};
    trace_data_t d = {.shape = shape, .n_tokens = 32};
    kvs_trace_t *t;

    ck_assert_ptr_nonnull(model);
    snprintf(file, sizeof file, "%s", model);
    for (int k = 0; k < KVS_KIND_COUNT; k++) {
        for (uint32_t l = 0; l < 5; l++) {
            char name[128];
            size_t count;
            snprintf(name, sizeof name, "model.layers.%u.self_attn.%s.weight", l, names[k]);
            float *w = read_safetensor(file, name, &count);
            ck_assert_uint_ge(count, 32 * 64);
            d.data[k][l] = w;
        }
    }
    ck_assert_int_eq(write_data(path, &d, KVS_DTYPE_F32, 16, NULL), KVS_OK);
    ck_assert_int_eq(kvs_trace_open(path, &t), KVS_OK);
    uint64_t shuffled = kvs_trace_compressed_bytes(t), plain = plain_zstd_bytes(&d, 16);
    ck_assert_msg(shuffled < plain, "shuffled %llu bytes, plain zstd %llu",
                  (unsigned long long)shuffled, (unsigned long long)plain);
    kvs_trace_close(t);
    data_free(&d);
    free(path);
    free(dir);
}
END_TEST

/* ---- seed traces and the CLI ----------------------------------------- */

/* The small traces committed as fuzz seeds and used by tests/cli/trace_cli.sh:
** values follow seed_value(), so a reader of any zstd version can check
** them. */
typedef struct seed_spec {
    const char *name;
    kvs_dtype_e dtype;
    uint32_t block;
} seed_spec_t;

static const seed_spec_t seeds[] = {
    {"seed_f32.kvt", KVS_DTYPE_F32, 4},
    {"seed_f16.kvt", KVS_DTYPE_F16, 3},
    {"seed_bf16.kvt", KVS_DTYPE_BF16, 16},
};
static const kvs_trace_shape_t seed_shape = {.n_layers = 2, .n_heads = 2, .n_kv_heads = 1, .head_dim = 4};
#define SEED_TOKENS 10
static const char seed_metadata[] =
    "{\"model\":\"seed\",\"prompt_ids\":[1,2,3,4],\"generated_ids\":[5,6,7,8,9,10],"
    "\"generated_text\":\"hello seed\"}";

/* Every value is a multiple of 1/16 below 8 in magnitude, exact in all
** three dtypes. */
static float seed_value(int kind, uint32_t layer, uint32_t pos, uint32_t col)
{
    return (float)((int)((kind * 7 + layer * 5 + pos * 3 + col) % 41) - 20) / 16.0f;
}

static void write_seed(const char *path, const seed_spec_t *spec)
{
    kvs_trace_writer_t *w;
    float row[8];

    ck_assert_int_eq(kvs_trace_writer_create(path, &seed_shape, spec->dtype, spec->block, 19, &w),
                     KVS_OK);
    for (uint32_t pos = 0; pos < SEED_TOKENS; pos++) {
        for (int k = 0; k < KVS_KIND_COUNT; k++) {
            for (uint32_t l = 0; l < seed_shape.n_layers; l++) {
                uint32_t width = kvs_trace_row_width(&seed_shape, (kvs_kind_e)k);
                for (uint32_t c = 0; c < width; c++)
                    row[c] = seed_value(k, l, pos, c);
                ck_assert_int_eq(kvs_trace_writer_append(w, (kvs_kind_e)k, l, pos, row, 1), KVS_OK);
            }
        }
    }
    ck_assert_int_eq(kvs_trace_writer_finish(w, seed_metadata), KVS_OK);
}

static void check_seed(const char *path, const seed_spec_t *spec)
{
    kvs_trace_t *t;
    uint64_t bad;

    ck_assert_msg(kvs_trace_open(path, &t) == KVS_OK, "%s: %s", path, kvs_error_message());
    ck_assert_int_eq(kvs_trace_dtype(t), spec->dtype);
    ck_assert_uint_eq(kvs_trace_n_tokens(t), SEED_TOKENS);
    ck_assert_uint_eq(kvs_trace_block_tokens(t), spec->block);
    ck_assert_str_eq(kvs_trace_metadata(t), seed_metadata);
    for (int k = 0; k < KVS_KIND_COUNT; k++) {
        for (uint32_t l = 0; l < seed_shape.n_layers; l++) {
            float *got = read_all(t, (kvs_kind_e)k, l);
            uint32_t width = kvs_trace_row_width(&seed_shape, (kvs_kind_e)k);
            for (uint32_t pos = 0; pos < SEED_TOKENS; pos++)
                for (uint32_t c = 0; c < width; c++)
                    ck_assert_float_eq(got[pos * width + c], seed_value(k, l, pos, c));
            free(got);
        }
    }
    kvs_trace_close(t);
    ck_assert_int_eq(kvs_trace_verify(path, &bad), KVS_OK);
}

/* Writes the seeds and checks them, and checks the committed copies when
** the source tree is known. KVS_TRACE_SEED_DIR=DIR also writes them to DIR,
** which is how tests/fuzz/corpus/fuzz_trace/ was made. */
START_TEST(seed_traces_read_back)
{
    char *dir = kvs_test_tmpdir("trace_seeds");
    const char *seed_dir = getenv("KVS_TRACE_SEED_DIR");
    const char *source = getenv("KVS_SOURCE_DIR");

    for (size_t i = 0; i < sizeof seeds / sizeof seeds[0]; i++) {
        char *path = make_path(dir, seeds[i].name);
        char committed[4200];
        struct stat st;

        write_seed(path, &seeds[i]);
        check_seed(path, &seeds[i]);
        if (seed_dir) {
            snprintf(committed, sizeof committed, "%s/%s", seed_dir, seeds[i].name);
            write_seed(committed, &seeds[i]);
        }
        if (source) {
            snprintf(committed, sizeof committed, "%s/tests/fuzz/corpus/fuzz_trace/%s", source,
                     seeds[i].name);
            ck_assert_msg(stat(committed, &st) == 0, "missing committed seed %s", committed);
            check_seed(committed, &seeds[i]);
        }
        free(path);
    }
    free(dir);
}
END_TEST

/* Runs a shell command and returns its exit status and stdout. */
static int run_command(const char *command, char **output)
{
    FILE *p = popen(command, "r");
    size_t cap = 1 << 16, len = 0, got;
    char *buf = malloc(cap);

    ck_assert_ptr_nonnull(p);
    while ((got = fread(buf + len, 1, cap - 1 - len, p)) > 0) {
        len += got;
        if (len + 1 == cap)
            buf = realloc(buf, cap *= 2);
    }
    buf[len] = '\0';
    int status = pclose(p);
    *output = buf;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

START_TEST(cli_info_json_fields)
{
    const char *kvsim = getenv("KVSIM");
    char *dir = kvs_test_tmpdir("trace_cli_info");
    char *path = make_path(dir, "a.kvt");
    char command[8600];
    char *out;
    json_error_t err;
    kvs_trace_t *t;

    write_seed(path, &seeds[1]);
    ck_assert_int_eq(kvs_trace_open(path, &t), KVS_OK);
    snprintf(command, sizeof command, "'%s' trace info '%s' --json", kvsim, path);
    ck_assert_int_eq(run_command(command, &out), 0);

    json_t *root = json_loads(out, 0, &err);
    ck_assert_msg(root != NULL, "not JSON: %s", out);
    ck_assert_int_eq(json_integer_value(json_object_get(root, "n_layers")), 2);
    ck_assert_int_eq(json_integer_value(json_object_get(root, "n_heads")), 2);
    ck_assert_int_eq(json_integer_value(json_object_get(root, "n_kv_heads")), 1);
    ck_assert_int_eq(json_integer_value(json_object_get(root, "head_dim")), 4);
    ck_assert_int_eq(json_integer_value(json_object_get(root, "n_tokens")), SEED_TOKENS);
    ck_assert_int_eq(json_integer_value(json_object_get(root, "n_prompt")), 4);
    ck_assert_int_eq(json_integer_value(json_object_get(root, "n_generated")), 6);
    ck_assert_int_eq(json_integer_value(json_array_get(json_object_get(root, "generated_ids"), 5)), 10);
    ck_assert_str_eq(json_string_value(json_object_get(root, "dtype")), "f16");
    ck_assert_str_eq(json_string_value(json_object_get(root, "generated_text")), "hello seed");
    ck_assert_str_eq(json_string_value(json_object_get(root, "content_hash")),
                     kvs_trace_content_hash(t));
    ck_assert_int_eq(json_integer_value(json_object_get(root, "compressed_bytes")),
                     (json_int_t)kvs_trace_compressed_bytes(t));
    /* Raw F32 size: 10 tokens * 2 layers * (8 + 3*4 floats) * 4 bytes. */
    ck_assert_int_eq(json_integer_value(json_object_get(root, "raw_bytes")), 10 * 2 * 20 * 4);
    ck_assert_str_eq(json_string_value(json_object_get(json_object_get(root, "metadata"), "model")),
                     "seed");
    json_decref(root);
    free(out);
    kvs_trace_close(t);
    free(path);
    free(dir);
}
END_TEST

START_TEST(cli_export_matches_read)
{
    const char *kvsim = getenv("KVSIM");
    char *dir = kvs_test_tmpdir("trace_cli_export");
    char *path = make_path(dir, "a.kvt");
    char command[8600], npy[4300];
    char *out, *bytes;
    size_t size;
    trace_data_t d;
    kvs_trace_t *t;

    fill_random(&d, small_shape, 45, 31);
    ck_assert_int_eq(write_data(path, &d, KVS_DTYPE_F32, 16, NULL), KVS_OK);
    ck_assert_int_eq(kvs_trace_open(path, &t), KVS_OK);
    snprintf(command, sizeof command, "'%s' trace export '%s' -o '%s/npy' 2>/dev/null", kvsim,
             path, dir);
    ck_assert_int_eq(run_command(command, &out), 0);
    free(out);

    for (int k = 0; k < KVS_KIND_COUNT; k++) {
        for (uint32_t l = 0; l < 3; l++) {
            uint32_t width = kvs_trace_row_width(&small_shape, (kvs_kind_e)k);
            char header[128];

            snprintf(npy, sizeof npy, "%s/npy/%s_layer%02u.npy", dir, kvs_kind_name((kvs_kind_e)k), l);
            ck_assert_int_eq(kvs_read_file(npy, &bytes, &size), KVS_OK);

            /* NumPy format 1.0: magic, version 1.0, a 2-byte header length,
            ** and the header padded so the data starts on a 64-byte boundary. */
            ck_assert_int_eq(memcmp(bytes, "\x93NUMPY\x01\x00", 8), 0);
            size_t header_len = (uint8_t)bytes[8] | (size_t)(uint8_t)bytes[9] << 8;
            ck_assert_uint_eq((10 + header_len) % 64, 0);
            ck_assert_int_eq(bytes[10 + header_len - 1], '\n');
            snprintf(header, sizeof header,
                     "{'descr': '<f4', 'fortran_order': False, 'shape': (45, %u), }", width);
            ck_assert_int_eq(memcmp(bytes + 10, header, strlen(header)), 0);
            ck_assert_uint_eq(size, 10 + header_len + 45 * (size_t)width * 4);
            ck_assert_int_eq(memcmp(bytes + 10 + header_len, d.data[k][l], 45 * (size_t)width * 4), 0);
            free(bytes);
        }
    }
    kvs_trace_close(t);
    data_free(&d);
    free(path);
    free(dir);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("trace");
    TCase *tc = tcase_create("core");

    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, f32_round_trip_bit_exact);
    tcase_add_test(tc, half_conversions_known_values);
    tcase_add_test(tc, f16_round_trip_within_bound);
    tcase_add_test(tc, bf16_round_trip_within_bound);
    tcase_add_test(tc, random_access_equals_slice);
    tcase_add_test(tc, concurrent_reads_match_data);
    tcase_add_test(tc, content_hash_is_xxh3_128_of_file);
    tcase_add_test(tc, flipped_byte_fails_inside_frame);
    tcase_add_test(tc, flipped_byte_in_index_fails_open);
    tcase_add_test(tc, crafted_fields_rejected);
    tcase_add_test(tc, truncated_file_fails);
    tcase_add_test(tc, nan_rejected_with_position);
    tcase_add_test(tc, f16_overflow_rejected);
    tcase_add_test(tc, unequal_counts_rejected);
    tcase_add_test(tc, invalid_metadata_rejected);
    tcase_add_test(tc, missing_folder_leaves_no_file);
    tcase_add_test(tc, bad_shape_rejected);
    tcase_add_test(tc, full_disk_reports_io_error);
    tcase_add_test(tc, shuffle_beats_plain_zstd_synthetic);
    tcase_add_test(tc, seed_traces_read_back);
    if (getenv("KVSIM")) {
        tcase_add_test(tc, cli_info_json_fields);
        tcase_add_test(tc, cli_export_matches_read);
    } else {
        fprintf(stderr, "note: KVSIM is not set; the CLI tests are skipped\n");
    }
    if (kvs_test_shared("models/stories260K/model.safetensors"))
        tcase_add_test(tc, shuffle_beats_plain_zstd_stories260k);
    else
        fprintf(stderr, "note: stories260K not found under KVS_SHARED_DIR; the real-weights "
                        "shuffle test is skipped\n");
    suite_add_tcase(s, tc);
    return kvs_test_run(s);
}
