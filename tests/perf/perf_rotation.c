/*
** perf_rotation.c: attention-step and append times of compressed-key and
** value-path kernels next to dense and quanto, on one SmolLM2-shaped stream
** (head_dim 64, 3 query heads per KV head) filled with seeded Gaussian
** data. Prints one line per (kernel, context): median seconds per step over
** repeats, microseconds per appended token, and bytes read per step from the
** kernel's own accounting.
**
** usage: perf_rotation [REPEATS] [SPEC ...]
*/
#include "kernels/kernel.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char *default_specs[] = {
    "dense",
    "dense:dtype=bf16",
    "quanto:bits=4",
    "quanto:bits=4,exec=compressed",
    "quanto:bits=2",
    "turboquant-mse:bits=2/dense",
    "turboquant-mse:bits=3/dense",
    "turboquant-mse:bits=4/dense",
    "turboquant-mse:bits=4,path=ref/dense",
    "turboquant-prod:bits=3/dense",
    "qjl:bits=3/dense",
    "polarquant/dense",
    "turboquant:bits=3",
    "turboquant:bits=4",
    "turboquant-prod:bits=3/topk:k=10%",
    "turboquant-prod:bits=3/threshold:tau=0.01",
    "turboquant-prod:bits=3/lowrank:rank=32",
    "turboquant-prod:bits=3/window:sinks=4,recent=64,inner=turboquant-mse,bits=3",
    "polarquant",
    NULL,
};

static double now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return (x > y) - (x < y);
}

/* xorshift-based uniform pair to a Gaussian, enough for timing data. */
static float gauss(uint64_t *s)
{
    double u1, u2;

    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    u1 = ((double)(*s >> 11) + 0.5) / 9007199254740992.0;
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    u2 = ((double)(*s >> 11) + 0.5) / 9007199254740992.0;
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

static int bench(const char *text, uint32_t n_context, int repeats)
{
    const uint32_t d = 64, group = 3;
    kvs_kernel_dims_t dims = {d, group, 30, 3, 0, 0, 1};
    kvs_kernel_spec_t *spec;
    kvs_kernel_t *kernel;
    kvs_kernel_cost_t cost;
    float k[64], v[64], q[3 * 64];
    float *logits = malloc((size_t)group * n_context * sizeof *logits);
    float *weights = malloc((size_t)group * n_context * sizeof *weights);
    float out[3 * 64];
    double *times = malloc((size_t)repeats * sizeof *times);
    kvs_attend_out_t res = {logits, weights, out};
    uint64_t s = 88172645463325252ull;
    double t0, append_us;

    if (kvs_kernel_spec_parse(text, &spec) != KVS_OK ||
        kvs_kernel_create(spec, &dims, &kernel) != KVS_OK) {
        fprintf(stderr, "perf_rotation: %s: %s\n", text, kvs_error_message());
        return 1;
    }

    /* Prompt: all but the last 16 positions, then decode appends. */
    t0 = now();
    for (uint32_t t = 0; t < n_context; t++) {
        for (uint32_t j = 0; j < d; j++) {
            k[j] = gauss(&s);
            v[j] = gauss(&s);
        }
        kvs_kernel_append(kernel, k, k, v);
        if (t + 17 == n_context) {
            for (uint32_t i = 0; i < group * d; i++)
                q[i] = gauss(&s);
            kvs_kernel_end_prefill(kernel, q, 1);
        }
    }
    append_us = (now() - t0) / n_context * 1e6;

    for (uint32_t i = 0; i < group * d; i++)
        q[i] = gauss(&s);
    kvs_kernel_attend(kernel, q, &res); /* warm-up */
    for (int r = 0; r < repeats; r++) {
        t0 = now();
        kvs_kernel_attend(kernel, q, &res);
        times[r] = now() - t0;
    }
    qsort(times, (size_t)repeats, sizeof *times, cmp_double);
    kvs_kernel_spec_cost(spec, &dims, n_context, &cost);
    printf("%-76s %6u %10.1f %8.3f %10.0f %9.1f\n", text, n_context, times[repeats / 2] * 1e6,
           append_us, (double)cost.read_bytes, cost.bytes_per_token);

    kvs_kernel_destroy(kernel);
    kvs_kernel_spec_free(spec);
    free(logits);
    free(weights);
    free(times);
    return 0;
}

int main(int argc, char **argv)
{
    const uint32_t contexts[] = {512, 2048, 8192};
    int repeats = argc > 1 ? atoi(argv[1]) : 21;
    const char **specs = argc > 2 ? (const char **)(argv + 2) : default_specs;
    int failed = 0;

    if (repeats < 1) {
        fprintf(stderr, "usage: perf_rotation [REPEATS] [SPEC ...]\n");
        return 2;
    }
    printf("# one stream, head_dim 64, 3 query heads; median of %d steps; read bytes and\n"
           "# bytes/token are for this stream, K and V\n",
           repeats);
    printf("%-76s %6s %10s %8s %10s %9s\n", "kernel", "ctx", "step_us", "app_us", "read_B",
           "B/token");
    for (int i = 0; specs[i]; i++)
        for (size_t c = 0; c < sizeof contexts / sizeof contexts[0]; c++)
            failed |= bench(specs[i], contexts[c], repeats);
    return failed;
}
