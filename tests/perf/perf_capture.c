/*
** perf_capture.c: prefill and decode speed of the forward pass next to the
** memory bandwidth measured in the same run.
**
** Decode reads every weight once per token, so its ceiling is
** (read bandwidth) / (weight bytes per token). The program measures the
** read bandwidth with a streaming AVX2 (or scalar) sum over 512 MiB, 16x
** the 32 MiB L3 of the machine behind docs/benchmarks.md, on 1 thread and
** on the decode thread count. Decode is then reported as a fraction of
** that ceiling.
**
** usage: perf_capture [--model DIR] [--prompt N] [--decode N] [--threads N]
** Without --model it writes a synthetic SmolLM2-135M to
** $TMPDIR/kvsim-perf-smollm2-135m (reused when present).
*/
#include "capture/capture.h"
#include "capture/forward.h"
#include "capture/matvec.h"
#include "capture/model.h"
#include "capture/pool.h"
#include "capture/sample.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#define BW_BYTES ((size_t)1 << 29)

static double now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

#if defined(__x86_64__)
__attribute__((target("avx2"))) static uint64_t read_avx2(const uint8_t *p, size_t n)
{
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;

    /* The same software prefetch distance as the decode kernels, so the
    ** ceiling and the kernels stream memory the same way. */
    for (size_t i = 0; i + 128 <= n; i += 128) {
        _mm_prefetch((const char *)p + i + 4096, _MM_HINT_T0);
        a0 = _mm256_add_epi64(a0, _mm256_load_si256((const __m256i *)(p + i)));
        a1 = _mm256_add_epi64(a1, _mm256_load_si256((const __m256i *)(p + i + 32)));
        a2 = _mm256_add_epi64(a2, _mm256_load_si256((const __m256i *)(p + i + 64)));
        a3 = _mm256_add_epi64(a3, _mm256_load_si256((const __m256i *)(p + i + 96)));
    }
    __m256i s = _mm256_add_epi64(_mm256_add_epi64(a0, a1), _mm256_add_epi64(a2, a3));
    uint64_t out[4];
    _mm256_storeu_si256((__m256i *)out, s);
    return out[0] + out[1] + out[2] + out[3];
}
#endif

static uint64_t read_scalar(const uint8_t *p, size_t n)
{
    const uint64_t *q = (const uint64_t *)p;
    uint64_t s = 0;

    for (size_t i = 0; i < n / 8; i++)
        s += q[i];
    return s;
}

typedef struct bw_arg {
    const uint8_t *p;
    size_t n;
    uint64_t sum;
} bw_arg_t;

static void *bw_thread(void *arg)
{
    bw_arg_t *a = arg;

#if defined(__x86_64__)
    if (__builtin_cpu_supports("avx2")) {
        a->sum = read_avx2(a->p, a->n);
        return NULL;
    }
#endif
    a->sum = read_scalar(a->p, a->n);
    return NULL;
}

/* Best of 5 passes of n_threads reading disjoint slices, in GB/s. */
static double read_bandwidth(const uint8_t *buf, size_t n, uint32_t n_threads)
{
    pthread_t th[64];
    bw_arg_t args[64];
    double best = 0;
    uint64_t sink = 0;

    for (int rep = 0; rep < 5; rep++) {
        double t0 = now();
        for (uint32_t t = 0; t < n_threads; t++) {
            args[t].p = buf + n / n_threads * t;
            args[t].n = n / n_threads;
            pthread_create(&th[t], NULL, bw_thread, &args[t]);
        }
        for (uint32_t t = 0; t < n_threads; t++) {
            pthread_join(th[t], NULL);
            sink += args[t].sum;
        }
        double gbs = n / (now() - t0) / 1e9;
        if (gbs > best)
            best = gbs;
    }
    if (sink == 42)
        fprintf(stderr, " ");
    return best;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static int die(const char *what)
{
    fprintf(stderr, "perf_capture: %s: %s\n", what, kvs_error_message());
    return 1;
}

int main(int argc, char **argv)
{
    const char *model_dir = NULL;
    uint32_t n_prompt = 512, n_decode = 64, threads = kvs_pool_default_threads();
    char synth_dir[4096];

    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--model"))
            model_dir = argv[i + 1];
        else if (!strcmp(argv[i], "--prompt"))
            n_prompt = (uint32_t)atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--decode"))
            n_decode = (uint32_t)atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--threads"))
            threads = (uint32_t)atoi(argv[i + 1]);
        else {
            fprintf(stderr, "usage: perf_capture [--model DIR] [--prompt N] [--decode N] [--threads N]\n");
            return 2;
        }
    }
    if (n_prompt < 1 || n_decode < 1 || threads < 1 || threads > 64) {
        fprintf(stderr, "perf_capture: --prompt, --decode and --threads (1..64) must be positive\n");
        return 2;
    }
    if (!model_dir) {
        const char *tmp = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
        struct stat st;
        char cfg[4200];
        snprintf(synth_dir, sizeof synth_dir, "%s/kvsim-perf-smollm2-135m", tmp);
        snprintf(cfg, sizeof cfg, "%s/config.json", synth_dir);
        if (stat(cfg, &st) != 0) {
            printf("writing synthetic smollm2-135m to %s\n", synth_dir);
            if (kvs_model_synth("smollm2-135m", synth_dir, 0) != KVS_OK)
                return die("model synth");
        }
        model_dir = synth_dir;
    }

    /* Memory bandwidth, measured before the model is touched. */
    uint8_t *buf = aligned_alloc(64, BW_BYTES);
    if (!buf)
        return die("bandwidth buffer");
    memset(buf, 1, BW_BYTES);
    double bw1 = read_bandwidth(buf, BW_BYTES, 1);
    double bwn = threads > 1 ? read_bandwidth(buf, BW_BYTES, threads) : bw1;
    double t0 = now();
    memcpy(buf, buf + BW_BYTES / 2, BW_BYTES / 2);
    double copy_gbs = 2.0 * (BW_BYTES / 2) / (now() - t0) / 1e9;
    free(buf);

    kvs_model_t *m;
    kvs_forward_t *f;
    if (kvs_model_load(model_dir, &m) != KVS_OK)
        return die("load");
    const kvs_model_config_t *c = kvs_model_get_config(m);
    if (kvs_forward_create(m, n_prompt + n_decode + 1, threads, &f) != KVS_OK)
        return die("forward");
    float *logits = malloc((size_t)c->vocab_size * sizeof *logits);
    int32_t *prompt = malloc(n_prompt * sizeof *prompt);
    double *step = malloc(n_decode * sizeof *step);
    kvs_rng_t rng;
    kvs_rng_seed(&rng, 1);
    for (uint32_t i = 0; i < n_prompt; i++)
        prompt[i] = (int32_t)(kvs_rng_next(&rng) % c->vocab_size);

    /* The output head alone, one thread: the matrix-vector kernel's own
    ** streaming rate, without attention, norms or thread hand-offs. */
    const kvs_weight_t *head = kvs_model_lm_head(m);
    float *x = calloc(head->cols, sizeof *x);
    double head_best = 0;
    for (uint32_t i = 0; i < head->cols; i++)
        x[i] = 1.0f / (1.0f + i);
    for (int rep = 0; rep < 5; rep++) {
        double s0 = now();
        kvs_matvec(head, 0, head->rows, x, logits);
        double gbs = (double)head->rows * head->cols * kvs_wtype_size(head->type) / (now() - s0) / 1e9;
        if (gbs > head_best)
            head_best = gbs;
    }
    free(x);

    t0 = now();
    if (kvs_forward_run(f, prompt, n_prompt, logits) != KVS_OK)
        return die("prefill");
    double prefill_s = now() - t0;

    double decode_total = 0;
    for (uint32_t i = 0; i < n_decode; i++) {
        int32_t tok = kvs_argmax(logits, c->vocab_size);
        double s0 = now();
        if (kvs_forward_run(f, &tok, 1, logits) != KVS_OK)
            return die("decode");
        step[i] = now() - s0;
        decode_total += step[i];
    }
    qsort(step, n_decode, sizeof *step, cmp_double);
    double median = step[n_decode / 2], fastest = step[0];

    /* Bytes a decode step reads: the weights, plus the K and V cache rows
    ** attention reads at the mean context length of the decode phase. */
    double weight_bytes = (double)kvs_model_decode_bytes(m);
    double ctx = n_prompt + n_decode / 2.0;
    double kv_bytes = ctx * c->n_layers * c->n_kv_heads * c->head_dim * 2.0 * 4.0;
    /* The bandwidth is a best of 5, so decode is compared through its
    ** fastest step as well; the median shows the typical rate. */
    double tok_s = 1.0 / median;
    double eff = (weight_bytes + kv_bytes) / fastest / 1e9;

    printf("model:        %s (%s%s), %u layers, hidden %u, weights %s\n", model_dir,
           kvs_model_name(m), c->synthetic ? ", synthetic" : "", c->n_layers, c->hidden_size,
           kvs_wtype_name(kvs_model_weight_type(m)));
    printf("threads:      %u (SIMD %s)\n", threads, kvs_matvec_simd() ? "AVX2+FMA" : "off, scalar");
    printf("bandwidth:    read %.2f GB/s (1 thread), %.2f GB/s (%u threads); memcpy %.2f GB/s\n", bw1,
           bwn, threads, copy_gbs);
    printf("matvec:       output head %ux%u alone, 1 thread: %.2f GB/s\n", head->rows, head->cols,
           head_best);
    printf("prefill:      %u tokens in %.3f s = %.1f tokens/s\n", n_prompt, prefill_s,
           n_prompt / prefill_s);
    printf("decode:       %u tokens, median %.2f ms/token = %.1f tokens/s (mean %.1f, fastest "
           "step %.1f tokens/s)\n",
           n_decode, median * 1e3, tok_s, n_decode / decode_total, 1.0 / fastest);
    printf("bytes/token:  %.1f MB weights + %.1f MB KV cache at context %.0f\n", weight_bytes / 1e6,
           kv_bytes / 1e6, ctx);
    printf("decode reads: %.2f GB/s in the fastest step = %.0f%% of the %u-thread read bandwidth\n",
           eff, 100.0 * eff / bwn, threads);

    free(logits);
    free(prompt);
    free(step);
    kvs_forward_destroy(f);
    kvs_model_destroy(m);
    return 0;
}
