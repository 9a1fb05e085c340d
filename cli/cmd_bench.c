/*
** cmd_bench.c: 'kvsim bench' times kernels' append and attention steps on
** trace data, for one (layer, KV head) stream and for a whole-model decode
** step over every layer and KV head, next to the bytes each step reads.
**
** Everything runs on the calling thread. Contexts longer than the trace
** repeat its positions cyclically (position p uses trace row p mod T), so
** a short trace can still fill a long cache with real activations.
*/
#include "cli.h"

#include "../db/db.h"
#include "../kernels/kernel.h"
#include "../sim/replay.h"
#include "../trace/trace.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_KERNELS 32
#define MAX_CONTEXTS 16
#define APPEND_SAMPLES 256

static void usage(FILE *out)
{
    fprintf(out,
            "usage: kvsim bench --trace FILE --kernel SPEC [--kernel SPEC ...]\n"
            "                   [--context N,N,...] [--repeats N] [--model-repeats N]\n"
            "                   [--layer L] [--kv-head H] [--no-model] [--json] [--db DB]\n"
            "                   [--kernels-file FILE]\n\n"
            "Times each kernel on trace data, on one thread: for one (layer, KV head)\n"
            "stream, the attention step (median of --repeats calls, warm cache) and the\n"
            "append of one position (median and mean of %d appends, so periodic\n"
            "re-quantization shows in the mean); and a whole-model decode step that\n"
            "appends and attends over every layer and KV head (median of\n"
            "--model-repeats), so the cache does not sit in CPU caches. Bytes read per\n"
            "step come from the kernels' own accounting. Contexts longer than the trace\n"
            "reuse its positions cyclically.\n\n"
            "  --trace FILE        .kvt trace from 'kvsim capture'\n"
            "  --kernel SPEC       kernel spec (see 'kvsim kernels'); repeat for several\n"
            "  --context LIST      comma-separated context lengths (default 512,2048,8192)\n"
            "  --repeats N         attention calls per stream measurement (default 21)\n"
            "  --model-repeats N   whole-model decode steps (default 5)\n"
            "  --layer L           layer of the single stream (default 0)\n"
            "  --kv-head H         KV head of the single stream (default 0)\n"
            "  --no-model          skip the whole-model step\n"
            "  --json              print a JSON array, one object per kernel and context\n"
            "  --kernels-file F    kernel specs, one per line; '#' starts a comment\n"
            "  --db DB             also store every timing in the results database DB\n"
            "                      (table timings), where kvsim report plots it\n",
            APPEND_SAMPLES);
}

typedef struct bench_opts {
    const char *trace_path;
    const char *kernels[MAX_KERNELS];
    uint32_t n_kernels;
    uint32_t contexts[MAX_CONTEXTS];
    uint32_t n_contexts;
    uint32_t repeats, model_repeats;
    uint32_t layer, kv_head;
    int model, json;
    const char *db_path;      /* NULL: print only */
    char **file_specs;        /* read from --kernels-file, owned */
    uint32_t n_file_specs;
} bench_opts_t;

typedef struct bench_result {
    double append_median_us, append_mean_us;
    double attend_median_us;
    double model_step_ms, model_attend_ms;   /* < 0 when not measured */
    kvs_kernel_cost_t cost;                  /* one stream */
} bench_result_t;

/* One layer's trace rows: k, k_pre, v (T, n_kv_heads * d) and the last
** position's q (n_heads * d). */
typedef struct layer_rows {
    float *k, *k_pre, *v, *q_last;
} layer_rows_t;

static double now_seconds(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return (x > y) - (x < y);
}

static double median(double *v, uint32_t n)
{
    qsort(v, n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static void free_layer(layer_rows_t *r)
{
    free(r->k);
    free(r->k_pre);
    free(r->v);
    free(r->q_last);
    memset(r, 0, sizeof *r);
}

static kvs_status_e read_layer(kvs_trace_t *t, uint32_t layer, layer_rows_t *r)
{
    const kvs_trace_shape_t *sh = kvs_trace_get_shape(t);
    uint32_t n = kvs_trace_n_tokens(t);
    size_t kv = (size_t)n * sh->n_kv_heads * sh->head_dim;

    memset(r, 0, sizeof *r);
    r->k = malloc(kv * sizeof(float));
    r->k_pre = malloc(kv * sizeof(float));
    r->v = malloc(kv * sizeof(float));
    r->q_last = malloc((size_t)sh->n_heads * sh->head_dim * sizeof(float));
    if (!r->k || !r->k_pre || !r->v || !r->q_last) {
        free_layer(r);
        return kvs_fail(KVS_ERR_NOMEM, "out of memory reading layer %u of the trace", layer);
    }
    kvs_status_e rc = kvs_trace_read(t, KVS_KIND_K, layer, 0, n, r->k);
    if (rc == KVS_OK)
        rc = kvs_trace_read(t, KVS_KIND_K_PRE, layer, 0, n, r->k_pre);
    if (rc == KVS_OK)
        rc = kvs_trace_read(t, KVS_KIND_V, layer, 0, n, r->v);
    if (rc == KVS_OK)
        rc = kvs_trace_read(t, KVS_KIND_Q, layer, n - 1, 1, r->q_last);
    if (rc != KVS_OK)
        free_layer(r);
    return rc;
}

/* Appends position pos of stream (layer rows r, KV head h): trace row
** pos mod n_trace. */
static kvs_status_e append_position(kvs_kernel_t *k, const layer_rows_t *r, uint32_t h,
                                    uint32_t n_kv, uint32_t d, uint32_t n_trace, uint64_t pos)
{
    size_t at = ((size_t)(pos % n_trace) * n_kv + h) * d;

    return kvs_kernel_append(k, r->k + at, r->k_pre + at, r->v + at);
}

/* Creates a kernel for (layer, h) and fills it with n_context positions,
** ending the prefill there. */
static kvs_status_e fill_kernel(const kvs_kernel_spec_t *spec, const kvs_kernel_dims_t *dims,
                                const layer_rows_t *r, uint32_t n_trace, uint32_t n_context,
                                kvs_kernel_t **out)
{
    kvs_kernel_t *k;
    const float *q = r->q_last + (size_t)dims->kv_head * dims->group_size * dims->head_dim;

    KVS_FORWARD(kvs_kernel_create(spec, dims, &k));
    for (uint32_t p = 0; p < n_context; p++) {
        kvs_status_e rc = append_position(k, r, dims->kv_head, dims->n_kv_heads, dims->head_dim,
                                          n_trace, p);
        if (rc != KVS_OK) {
            kvs_kernel_destroy(k);
            return rc;
        }
    }
    kvs_status_e rc = kvs_kernel_end_prefill(k, q, 1);
    if (rc != KVS_OK) {
        kvs_kernel_destroy(k);
        return rc;
    }
    *out = k;
    return KVS_OK;
}

typedef struct attend_bufs {
    float *logits, *weights, *out;
    size_t cap;  /* positions */
} attend_bufs_t;

static kvs_status_e ensure_bufs(attend_bufs_t *b, uint32_t group, uint32_t d, size_t n)
{
    if (n <= b->cap)
        return KVS_OK;
    size_t cap = n + n / 4 + 64;
    float *l = realloc(b->logits, cap * group * sizeof(float));
    if (l)
        b->logits = l;
    float *w = realloc(b->weights, cap * group * sizeof(float));
    if (w)
        b->weights = w;
    if (!b->out)
        b->out = malloc((size_t)group * d * sizeof(float));
    KVS_RETURN_IF(!l || !w || !b->out, KVS_ERR_NOMEM, "out of memory for attention buffers");
    b->cap = cap;
    return KVS_OK;
}

static kvs_status_e attend_once(kvs_kernel_t *k, const float *q, attend_bufs_t *b,
                                const kvs_kernel_dims_t *dims)
{
    KVS_FORWARD(ensure_bufs(b, dims->group_size, dims->head_dim, kvs_kernel_n_tokens(k)));
    kvs_attend_out_t res = {b->logits, b->weights, b->out};
    return kvs_kernel_attend(k, q, &res);
}

static kvs_status_e bench_stream(const bench_opts_t *o, const kvs_kernel_spec_t *spec,
                                 kvs_kernel_dims_t dims, const layer_rows_t *r, uint32_t n_trace,
                                 uint32_t n_context, attend_bufs_t *bufs, bench_result_t *res)
{
    kvs_kernel_t *k;
    double *samples = malloc(sizeof(double) * (o->repeats > APPEND_SAMPLES ? o->repeats
                                                                            : APPEND_SAMPLES));
    const float *q = r->q_last + (size_t)dims.kv_head * dims.group_size * dims.head_dim;
    kvs_status_e rc;

    KVS_RETURN_IF(!samples, KVS_ERR_NOMEM, "out of memory for timings");
    rc = fill_kernel(spec, &dims, r, n_trace, n_context, &k);
    if (rc != KVS_OK) {
        free(samples);
        return rc;
    }

    /* One untimed call warms caches and the kernel's scratch buffers. */
    rc = attend_once(k, q, bufs, &dims);
    for (uint32_t i = 0; rc == KVS_OK && i < o->repeats; i++) {
        double t0 = now_seconds();
        rc = attend_once(k, q, bufs, &dims);
        samples[i] = now_seconds() - t0;
    }
    if (rc == KVS_OK)
        res->attend_median_us = 1e6 * median(samples, o->repeats);

    double total = 0;
    for (uint32_t i = 0; rc == KVS_OK && i < APPEND_SAMPLES; i++) {
        double t0 = now_seconds();
        rc = append_position(k, r, dims.kv_head, dims.n_kv_heads, dims.head_dim, n_trace,
                             (uint64_t)n_context + i);
        samples[i] = now_seconds() - t0;
        total += samples[i];
    }
    if (rc == KVS_OK) {
        res->append_mean_us = 1e6 * total / APPEND_SAMPLES;
        res->append_median_us = 1e6 * median(samples, APPEND_SAMPLES);
    }
    kvs_kernel_destroy(k);
    free(samples);
    return rc;
}

/* Whole model: every (layer, KV head) filled to n_context, then decode
** steps that append one position and attend in every stream. */
static kvs_status_e bench_model(const bench_opts_t *o, const kvs_kernel_spec_t *spec,
                                kvs_trace_t *t, uint32_t n_context, attend_bufs_t *bufs,
                                bench_result_t *res)
{
    const kvs_trace_shape_t *sh = kvs_trace_get_shape(t);
    uint32_t n_trace = kvs_trace_n_tokens(t), n_streams = sh->n_layers * sh->n_kv_heads;
    kvs_kernel_t **kernels = calloc(n_streams, sizeof *kernels);
    layer_rows_t *rows = calloc(sh->n_layers, sizeof *rows);
    double *step = malloc(o->model_repeats * sizeof *step);
    double *attend = malloc(o->model_repeats * sizeof *attend);
    kvs_status_e rc = KVS_OK;

    if (!kernels || !rows || !step || !attend)
        rc = kvs_fail(KVS_ERR_NOMEM, "out of memory for the whole-model benchmark");
    for (uint32_t l = 0; rc == KVS_OK && l < sh->n_layers; l++) {
        rc = read_layer(t, l, &rows[l]);
        for (uint32_t h = 0; rc == KVS_OK && h < sh->n_kv_heads; h++) {
            kvs_kernel_dims_t dims = {
                .head_dim = sh->head_dim, .group_size = sh->n_heads / sh->n_kv_heads,
                .n_layers = sh->n_layers, .n_kv_heads = sh->n_kv_heads, .layer = l,
                .kv_head = h, .seed = 0,
            };
            rc = fill_kernel(spec, &dims, &rows[l], n_trace, n_context,
                             &kernels[l * sh->n_kv_heads + h]);
        }
    }

    for (uint32_t i = 0; rc == KVS_OK && i < o->model_repeats; i++) {
        double attend_sum = 0, t0 = now_seconds();
        for (uint32_t l = 0; rc == KVS_OK && l < sh->n_layers; l++) {
            for (uint32_t h = 0; rc == KVS_OK && h < sh->n_kv_heads; h++) {
                kvs_kernel_t *k = kernels[l * sh->n_kv_heads + h];
                kvs_kernel_dims_t dims = {.head_dim = sh->head_dim,
                                          .group_size = sh->n_heads / sh->n_kv_heads};
                const float *q = rows[l].q_last + (size_t)h * dims.group_size * sh->head_dim;
                rc = append_position(k, &rows[l], h, sh->n_kv_heads, sh->head_dim, n_trace,
                                     (uint64_t)n_context + i);
                double a0 = now_seconds();
                if (rc == KVS_OK)
                    rc = attend_once(k, q, bufs, &dims);
                attend_sum += now_seconds() - a0;
            }
        }
        step[i] = now_seconds() - t0;
        attend[i] = attend_sum;
    }
    if (rc == KVS_OK) {
        res->model_step_ms = 1e3 * median(step, o->model_repeats);
        res->model_attend_ms = 1e3 * median(attend, o->model_repeats);
    }

    for (uint32_t s = 0; kernels && s < n_streams; s++)
        kvs_kernel_destroy(kernels[s]);
    for (uint32_t l = 0; rows && l < sh->n_layers; l++)
        free_layer(&rows[l]);
    free(kernels);
    free(rows);
    free(step);
    free(attend);
    return rc;
}

static kvs_status_e parse_contexts(const char *text, bench_opts_t *o)
{
    char buf[256];
    char *save = NULL;

    KVS_RETURN_IF(strlen(text) >= sizeof buf, KVS_ERR_USAGE, "--context list is too long");
    snprintf(buf, sizeof buf, "%s", text);
    o->n_contexts = 0;
    for (char *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        KVS_RETURN_IF(o->n_contexts == MAX_CONTEXTS, KVS_ERR_USAGE,
                      "--context lists more than %d lengths", MAX_CONTEXTS);
        KVS_FORWARD(kvs_cli_parse_u32("--context", tok, 1, 1u << 24,
                                      &o->contexts[o->n_contexts++]));
    }
    KVS_RETURN_IF(o->n_contexts == 0, KVS_ERR_USAGE, "--context needs at least one length");
    return KVS_OK;
}

static int parse_args(int argc, char **argv, bench_opts_t *o, int *done)
{
    const char *cmd = argv[0];
    kvs_status_e rc = KVS_OK;

    memset(o, 0, sizeof *o);
    o->repeats = 21;
    o->model_repeats = 5;
    o->model = 1;
    o->contexts[0] = 512;
    o->contexts[1] = 2048;
    o->contexts[2] = 8192;
    o->n_contexts = 3;
    *done = 0;
    for (int i = 1; i < argc && rc == KVS_OK; i++) {
        const char *a = argv[i];
        int takes_value = !strcmp(a, "--trace") || !strcmp(a, "--kernel") ||
                          !strcmp(a, "--context") || !strcmp(a, "--repeats") ||
                          !strcmp(a, "--model-repeats") || !strcmp(a, "--layer") ||
                          !strcmp(a, "--kv-head") || !strcmp(a, "--db") ||
                          !strcmp(a, "--kernels-file");
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            *done = 1;
            return KVS_EXIT_OK;
        } else if (!strcmp(a, "--json")) {
            o->json = 1;
        } else if (!strcmp(a, "--no-model")) {
            o->model = 0;
        } else if (takes_value && i + 1 >= argc) {
            return kvs_cli_usage_error(cmd, "%s needs a value", a);
        } else if (!strcmp(a, "--trace")) {
            o->trace_path = argv[++i];
        } else if (!strcmp(a, "--db")) {
            o->db_path = argv[++i];
        } else if (!strcmp(a, "--kernels-file")) {
            uint32_t before = o->n_file_specs;
            rc = kvs_cli_read_kernels_file(argv[++i], &o->file_specs, &o->n_file_specs);
            for (uint32_t f = before; rc == KVS_OK && f < o->n_file_specs; f++) {
                if (o->n_kernels == MAX_KERNELS)
                    return kvs_cli_usage_error(cmd, "at most %d kernels", MAX_KERNELS);
                o->kernels[o->n_kernels++] = o->file_specs[f];
            }
        } else if (!strcmp(a, "--kernel")) {
            if (o->n_kernels == MAX_KERNELS)
                return kvs_cli_usage_error(cmd, "at most %d --kernel options", MAX_KERNELS);
            o->kernels[o->n_kernels++] = argv[++i];
        } else if (!strcmp(a, "--context")) {
            rc = parse_contexts(argv[++i], o);
        } else if (!strcmp(a, "--repeats")) {
            rc = kvs_cli_parse_u32(a, argv[++i], 1, 100000, &o->repeats);
        } else if (!strcmp(a, "--model-repeats")) {
            rc = kvs_cli_parse_u32(a, argv[++i], 1, 10000, &o->model_repeats);
        } else if (!strcmp(a, "--layer")) {
            rc = kvs_cli_parse_u32(a, argv[++i], 0, 1u << 20, &o->layer);
        } else if (!strcmp(a, "--kv-head")) {
            rc = kvs_cli_parse_u32(a, argv[++i], 0, 1u << 20, &o->kv_head);
        } else {
            return kvs_cli_usage_error(cmd, "unknown argument '%s'", a);
        }
    }
    if (rc != KVS_OK)
        return kvs_cli_report_error(cmd, rc);
    if (!o->trace_path)
        return kvs_cli_usage_error(cmd, "--trace FILE is required");
    if (o->n_kernels == 0)
        return kvs_cli_usage_error(cmd, "give at least one --kernel SPEC or --kernels-file FILE");
    return KVS_EXIT_OK;
}

/* Stores one kernel's timings at one context: the single stream ("head")
** and, when measured, the whole-model step ("model"). */
static kvs_status_e store_timing(kvs_db_t *db, int64_t trace_id, const kvs_kernel_spec_t *spec,
                                 uint32_t context, const bench_result_t *res, double streams)
{
    const char *text = kvs_kernel_spec_text(spec);

    KVS_FORWARD(kvs_db_put_timing(db, trace_id, text, context, res->append_median_us * 1e-6,
                                  res->attend_median_us * 1e-6, res->cost.read_bytes, "head", NULL));
    if (res->model_attend_ms < 0)
        return KVS_OK;
    double append_ms = res->model_step_ms - res->model_attend_ms;
    return kvs_db_put_timing(db, trace_id, text, context, (append_ms > 0 ? append_ms : 0) * 1e-3,
                             res->model_attend_ms * 1e-3,
                             (uint64_t)((double)res->cost.read_bytes * streams), "model", NULL);
}


int kvs_cmd_bench(int argc, char **argv)
{
    const char *cmd = argv[0];
    bench_opts_t o;
    int done;
    int status = parse_args(argc, argv, &o, &done);
    kvs_kernel_spec_t *specs[MAX_KERNELS] = {0};
    kvs_trace_t *t = NULL;
    layer_rows_t rows = {0};
    attend_bufs_t bufs = {0};
    json_t *arr = NULL;
    kvs_db_t *db = NULL;
    int64_t trace_id = 0;
    kvs_status_e rc = KVS_OK;

    if (status != KVS_EXIT_OK || done) {
        for (uint32_t f = 0; f < o.n_file_specs; f++)
            free(o.file_specs[f]);
        free(o.file_specs);
        return status;
    }
    for (uint32_t k = 0; k < o.n_kernels && rc == KVS_OK; k++)
        rc = kvs_kernel_spec_parse(o.kernels[k], &specs[k]);
    if (rc == KVS_OK)
        rc = kvs_trace_open(o.trace_path, &t);
    const kvs_trace_shape_t *sh = t ? kvs_trace_get_shape(t) : NULL;
    if (rc == KVS_OK && (o.layer >= sh->n_layers || o.kv_head >= sh->n_kv_heads))
        rc = kvs_fail(KVS_ERR_USAGE, "--layer %u --kv-head %u is outside the trace (%u layers, "
                      "%u KV heads)", o.layer, o.kv_head, sh->n_layers, sh->n_kv_heads);
    if (rc == KVS_OK && kvs_trace_n_tokens(t) == 0)
        rc = kvs_fail(KVS_ERR_INVALID, "trace %s holds no positions", o.trace_path);
    if (rc == KVS_OK)
        rc = read_layer(t, o.layer, &rows);

    kvs_kernel_dims_t dims = {0};
    if (rc == KVS_OK) {
        dims.head_dim = sh->head_dim;
        dims.group_size = sh->n_heads / sh->n_kv_heads;
        dims.n_layers = sh->n_layers;
        dims.n_kv_heads = sh->n_kv_heads;
        dims.layer = o.layer;
        dims.kv_head = o.kv_head;
        for (uint32_t k = 0; k < o.n_kernels && rc == KVS_OK; k++)
            rc = kvs_kernel_spec_check(specs[k], &dims);
    }

    if (rc == KVS_OK && o.db_path) {
        rc = kvs_db_open(o.db_path, &db);
        if (rc == KVS_OK)
            rc = kvs_replay_put_trace(db, o.trace_path, t, &trace_id);
    }

    if (rc == KVS_OK && o.json) {
        arr = json_array();
    } else if (rc == KVS_OK) {
        printf("trace: %s: %u layers, %u query heads, %u KV heads, head_dim %u, %u positions\n",
               o.trace_path, sh->n_layers, sh->n_heads, sh->n_kv_heads, sh->head_dim,
               kvs_trace_n_tokens(t));
        printf("one thread; stream = layer %u, KV head %u (median of %u attention calls, %d "
               "appends);\nmodel = append + attend over all %u streams (median of %u steps)\n\n",
               o.layer, o.kv_head, o.repeats, APPEND_SAMPLES, sh->n_layers * sh->n_kv_heads,
               o.model_repeats);
        printf("%-36s %7s %10s %10s %10s %11s %11s %11s %8s  %s\n", "kernel", "context",
               "append us", "(mean)", "attend us", "model ms", "attend ms", "read MiB", "GB/s",
               "execution");
    }
    double streams = sh ? (double)sh->n_layers * sh->n_kv_heads : 0;
    for (uint32_t c = 0; c < o.n_contexts && rc == KVS_OK; c++) {
        for (uint32_t k = 0; k < o.n_kernels && rc == KVS_OK; k++) {
            bench_result_t res = {.model_step_ms = -1, .model_attend_ms = -1};
            uint32_t n = o.contexts[c];
            rc = kvs_kernel_spec_cost(specs[k], &dims, n, &res.cost);
            if (rc == KVS_OK)
                rc = bench_stream(&o, specs[k], dims, &rows, kvs_trace_n_tokens(t), n, &bufs,
                                  &res);
            if (rc == KVS_OK && o.model)
                rc = bench_model(&o, specs[k], t, n, &bufs, &res);
            if (rc == KVS_OK && db)
                rc = store_timing(db, trace_id, specs[k], n, &res, streams);
            if (rc != KVS_OK)
                break;
            double read = (double)res.cost.read_bytes * streams;
            double gbps = res.model_attend_ms > 0 ? read / (res.model_attend_ms * 1e6) : 0;
            if (arr) {
                json_t *j = json_object();
                json_object_set_new(j, "kernel", json_string(kvs_kernel_spec_text(specs[k])));
                json_object_set_new(j, "execution", json_string(kvs_kernel_spec_execution(specs[k])));
                json_object_set_new(j, "context", json_integer(n));
                json_object_set_new(j, "append_median_us", json_real(res.append_median_us));
                json_object_set_new(j, "append_mean_us", json_real(res.append_mean_us));
                json_object_set_new(j, "attend_median_us", json_real(res.attend_median_us));
                json_object_set_new(j, "model_step_ms", o.model ? json_real(res.model_step_ms)
                                                                : json_null());
                json_object_set_new(j, "model_attend_ms",
                                    o.model ? json_real(res.model_attend_ms) : json_null());
                json_object_set_new(j, "model_read_bytes_per_step", json_real(read));
                json_object_set_new(j, "model_written_bytes_per_step",
                                    json_real((double)res.cost.written_bytes * streams));
                json_object_set_new(j, "bytes_per_token",
                                    json_real(res.cost.bytes_per_token * streams));
                json_array_append_new(arr, j);
            } else {
                char step[32] = "-", attend[32] = "-", rate[32] = "-";
                if (o.model) {
                    snprintf(step, sizeof step, "%.2f", res.model_step_ms);
                    snprintf(attend, sizeof attend, "%.2f", res.model_attend_ms);
                    snprintf(rate, sizeof rate, "%.2f", gbps);
                }
                printf("%-36s %7u %10.2f %10.2f %10.1f %11s %11s %11.2f %8s  %s\n",
                       kvs_kernel_spec_text(specs[k]), n, res.append_median_us,
                       res.append_mean_us, res.attend_median_us, step, attend, read / 1048576.0,
                       rate, kvs_kernel_spec_execution(specs[k]));
                fflush(stdout);
            }
        }
    }
    if (rc == KVS_OK && arr) {
        char *text = json_dumps(arr, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(8));
        if (text)
            printf("%s\n", text);
        else
            rc = kvs_fail(KVS_ERR_NOMEM, "out of memory writing JSON");
        free(text);
    }

    json_decref(arr);
    kvs_db_close(db);
    free_layer(&rows);
    free(bufs.logits);
    free(bufs.weights);
    free(bufs.out);
    kvs_trace_close(t);
    for (uint32_t k = 0; k < o.n_kernels; k++)
        kvs_kernel_spec_free(specs[k]);
    for (uint32_t f = 0; f < o.n_file_specs; f++)
        free(o.file_specs[f]);
    free(o.file_specs);
    if (rc != KVS_OK)
        return kvs_cli_report_error(cmd, rc);
    return fflush(stdout) == 0 ? KVS_EXIT_OK : KVS_EXIT_ERROR;
}
