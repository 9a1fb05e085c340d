/*
** perf_trace.c: write and read speed of .kvt files, and the compression
** ratio of byte-shuffled zstd against plain zstd at the same level.
**
**   perf_trace [TRACE.kvt] [--level N] [--block B] [--repeats R]
**
** With a trace, its tensors are the input (read once into memory). Without
** one, the input is synthetic: smooth correlated activations with the
** shapes of SmolLM2-135M (30 layers, 9 query heads, 3 KV heads, head_dim
** 64) over 512 positions. The first output line names the input. Speeds
** are MB/s of F32 tensor data (10^6 bytes), best of R runs, one thread.
** Reads come from the page cache because the file was just written.
*/
#include "trace/trace.h"

#include <jansson.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <zstd.h>

typedef struct tensors {
    kvs_trace_shape_t shape;
    uint32_t n_tokens;
    float **data; /* [kind * n_layers + layer], (n_tokens, row_width) */
    char source[4200];
} tensors_t;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void die(const char *step)
{
    fprintf(stderr, "perf_trace: %s failed: %s\n", step, kvs_error_message());
    exit(1);
}

static uint64_t raw_bytes(const tensors_t *x)
{
    uint64_t total = 0;
    for (int k = 0; k < KVS_KIND_COUNT; k++)
        total += (uint64_t)x->n_tokens * x->shape.n_layers *
                 kvs_trace_row_width(&x->shape, (kvs_kind_e)k) * 4;
    return total;
}

static uint64_t rng = 88172645463325252ull;

static float gauss(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    double u = ((rng >> 11) + 0.5) / 9007199254740992.0;
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    double v = (rng >> 11) / 9007199254740992.0;
    return (float)(sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v));
}

/* Each channel is an AR(1) process over positions (coefficient 0.95) with
** its own scale. Every 17th channel is ten times larger, like the outlier
** channels of real keys. */
static void make_synthetic(tensors_t *x)
{
    x->shape = (kvs_trace_shape_t){.n_layers = 30, .n_heads = 9, .n_kv_heads = 3, .head_dim = 64};
    x->n_tokens = 512;
    snprintf(x->source, sizeof x->source,
             "synthetic smooth activations, SmolLM2-135M shapes, 512 positions");
    x->data = calloc((size_t)KVS_KIND_COUNT * x->shape.n_layers, sizeof *x->data);
    for (int k = 0; k < KVS_KIND_COUNT; k++) {
        uint32_t width = kvs_trace_row_width(&x->shape, (kvs_kind_e)k);
        for (uint32_t l = 0; l < x->shape.n_layers; l++) {
            float *p = malloc((size_t)x->n_tokens * width * sizeof *p);
            for (uint32_t c = 0; c < width; c++) {
                float scale = (c % 17 == 0 ? 10.0f : 1.0f) * (0.2f + 0.1f * fabsf(gauss()));
                float state = gauss();
                for (uint32_t t = 0; t < x->n_tokens; t++) {
                    state = 0.95f * state + 0.31f * gauss();
                    p[(size_t)t * width + c] = scale * state;
                }
            }
            x->data[k * x->shape.n_layers + l] = p;
        }
    }
}

static void load_trace(tensors_t *x, const char *path)
{
    kvs_trace_t *t;

    if (kvs_trace_open(path, &t) != KVS_OK)
        die("open");
    x->shape = *kvs_trace_get_shape(t);
    x->n_tokens = kvs_trace_n_tokens(t);
    /* capture records "synthetic": true for models made by 'kvsim model synth'. */
    json_t *metadata = json_loads(kvs_trace_metadata(t), 0, NULL);
    bool synthetic = json_is_true(json_object_get(metadata, "synthetic"));
    json_decref(metadata);
    snprintf(x->source, sizeof x->source, "trace %s (stored as %s), captured from %s", path,
             kvs_dtype_name(kvs_trace_dtype(t)),
             synthetic ? "a SYNTHETIC model with random weights" : "a real model");
    x->data = calloc((size_t)KVS_KIND_COUNT * x->shape.n_layers, sizeof *x->data);
    for (int k = 0; k < KVS_KIND_COUNT; k++) {
        uint32_t width = kvs_trace_row_width(&x->shape, (kvs_kind_e)k);
        for (uint32_t l = 0; l < x->shape.n_layers; l++) {
            float *p = malloc((size_t)x->n_tokens * width * sizeof *p);
            if (!p || kvs_trace_read(t, (kvs_kind_e)k, l, 0, x->n_tokens, p) != KVS_OK)
                die("read");
            x->data[k * x->shape.n_layers + l] = p;
        }
    }
    kvs_trace_close(t);
}

/* Appends the way capture does: all kinds and layers for a chunk of
** positions, then the next chunk. */
static double write_once(const tensors_t *x, const char *path, kvs_dtype_e dtype, uint32_t block,
                         int level)
{
    const uint32_t chunk = 16;
    kvs_trace_writer_t *w;
    double start = now();

    if (kvs_trace_writer_create(path, &x->shape, dtype, block, level, &w) != KVS_OK)
        die("create");
    for (uint32_t pos = 0; pos < x->n_tokens; pos += chunk) {
        uint32_t n = x->n_tokens - pos < chunk ? x->n_tokens - pos : chunk;
        for (uint32_t l = 0; l < x->shape.n_layers; l++) {
            for (int k = 0; k < KVS_KIND_COUNT; k++) {
                uint32_t width = kvs_trace_row_width(&x->shape, (kvs_kind_e)k);
                const float *rows = x->data[k * x->shape.n_layers + l] + (size_t)pos * width;
                if (kvs_trace_writer_append(w, (kvs_kind_e)k, l, pos, rows, n) != KVS_OK)
                    die("append");
            }
        }
    }
    if (kvs_trace_writer_finish(w, "{\"source\":\"perf_trace\"}") != KVS_OK)
        die("finish");
    return now() - start;
}

/* Opens the trace and reads every tensor whole; returns seconds. */
static double read_once(const tensors_t *x, const char *path, float *buf, double *open_seconds,
                        uint64_t *compressed)
{
    kvs_trace_t *t;
    double start = now();

    if (kvs_trace_open(path, &t) != KVS_OK)
        die("open");
    *open_seconds = now() - start;
    *compressed = kvs_trace_compressed_bytes(t);
    for (int k = 0; k < KVS_KIND_COUNT; k++)
        for (uint32_t l = 0; l < x->shape.n_layers; l++)
            if (kvs_trace_read(t, (kvs_kind_e)k, l, 0, x->n_tokens, buf) != KVS_OK)
                die("read");
    kvs_trace_close(t);
    return now() - start;
}

/* Plain zstd on the same F32 blocks at the same level, no shuffle. */
static uint64_t plain_zstd(const tensors_t *x, uint32_t block, int level, double *seconds)
{
    size_t cap = ZSTD_compressBound((size_t)block * kvs_trace_row_width(&x->shape, KVS_KIND_Q) * 4);
    void *dst = malloc(cap);
    ZSTD_CCtx *cctx = ZSTD_createCCtx();
    uint64_t total = 0;
    double start = now();

    for (int k = 0; k < KVS_KIND_COUNT; k++) {
        uint32_t width = kvs_trace_row_width(&x->shape, (kvs_kind_e)k);
        for (uint32_t l = 0; l < x->shape.n_layers; l++) {
            for (uint32_t pos = 0; pos < x->n_tokens; pos += block) {
                uint32_t n = x->n_tokens - pos < block ? x->n_tokens - pos : block;
                size_t c = ZSTD_compressCCtx(cctx, dst, cap,
                                             x->data[k * x->shape.n_layers + l] + (size_t)pos * width,
                                             (size_t)n * width * 4, level);
                if (ZSTD_isError(c)) {
                    fprintf(stderr, "perf_trace: zstd: %s\n", ZSTD_getErrorName(c));
                    exit(1);
                }
                total += c;
            }
        }
    }
    *seconds = now() - start;
    ZSTD_freeCCtx(cctx);
    free(dst);
    return total;
}

int main(int argc, char **argv)
{
    const char *input = NULL;
    int level = 3, repeats = 3;
    uint32_t block = 64;
    tensors_t x = {0};

    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--level") && i + 1 < argc)
            level = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--block") && i + 1 < argc)
            block = (uint32_t)atoi(argv[++i]);
        else if (!strcmp(argv[i], "--repeats") && i + 1 < argc)
            repeats = atoi(argv[++i]);
        else if (argv[i][0] != '-' && !input)
            input = argv[i];
        else {
            fprintf(stderr, "usage: perf_trace [TRACE.kvt] [--level N] [--block B] [--repeats R]\n");
            return 2;
        }
    }
    if (repeats < 1 || block < 1) {
        fprintf(stderr, "perf_trace: --repeats and --block must be at least 1\n");
        return 2;
    }

    if (input)
        load_trace(&x, input);
    else
        make_synthetic(&x);

    uint64_t raw = raw_bytes(&x);
    char path[4096];
    const char *tmp = getenv("TMPDIR");
    snprintf(path, sizeof path, "%s/perf_trace.%ld.kvt", tmp ? tmp : "/tmp", (long)getpid());
    float *buf = malloc((size_t)x.n_tokens * kvs_trace_row_width(&x.shape, KVS_KIND_Q) * 4 +
                        (size_t)x.n_tokens * kvs_trace_row_width(&x.shape, KVS_KIND_K) * 4);

    printf("input: %s\n", x.source);
    printf("shape: %u layers, %u heads, %u KV heads, head_dim %u, %u tokens; %.1f MB F32\n",
           x.shape.n_layers, x.shape.n_heads, x.shape.n_kv_heads, x.shape.head_dim, x.n_tokens,
           raw / 1e6);
    printf("zstd level %d, blocks of %u tokens, best of %d runs, one thread\n\n", level, block,
           repeats);

    double plain_seconds = 1e30, s;
    uint64_t plain = 0;
    for (int r = 0; r < repeats; r++) {
        plain = plain_zstd(&x, block, level, &s);
        if (s < plain_seconds)
            plain_seconds = s;
    }
    printf("%-26s %10s %8s %12s %12s %10s\n", "format", "bytes", "ratio", "write MB/s", "read MB/s",
           "open ms");
    printf("%-26s %10llu %8.3f %12.0f %12s %10s\n", "plain zstd f32 (no shuffle)",
           (unsigned long long)plain, (double)raw / plain, raw / 1e6 / plain_seconds, "-", "-");

    static const kvs_dtype_e dtypes[] = {KVS_DTYPE_F32, KVS_DTYPE_F16, KVS_DTYPE_BF16};
    for (size_t d = 0; d < 3; d++) {
        double best_write = 1e30, best_read = 1e30, best_open = 1e30, open_seconds;
        uint64_t compressed = 0;
        for (int r = 0; r < repeats; r++) {
            s = write_once(&x, path, dtypes[d], block, level);
            if (s < best_write)
                best_write = s;
            s = read_once(&x, path, buf, &open_seconds, &compressed);
            if (s < best_read)
                best_read = s;
            if (open_seconds < best_open)
                best_open = open_seconds;
        }
        char label[64];
        snprintf(label, sizeof label, ".kvt %s shuffled", kvs_dtype_name(dtypes[d]));
        printf("%-26s %10llu %8.3f %12.0f %12.0f %10.2f\n", label, (unsigned long long)compressed,
               (double)raw / compressed, raw / 1e6 / best_write, raw / 1e6 / best_read,
               best_open * 1e3);
        if (dtypes[d] == KVS_DTYPE_F32)
            printf("  shuffled f32 is %.1f%% smaller than plain zstd\n",
                   100.0 * (1.0 - (double)compressed / plain));
    }
    printf("\nratio = raw F32 bytes / compressed frame bytes; read includes open, which hashes "
           "the whole file (XXH3-128)\n");

    unlink(path);
    free(buf);
    for (size_t i = 0; i < (size_t)KVS_KIND_COUNT * x.shape.n_layers; i++)
        free(x.data[i]);
    free(x.data);
    return 0;
}
