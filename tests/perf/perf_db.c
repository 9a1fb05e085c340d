/*
** perf_db.c: write speed of the results database and the time kvsim report
** takes on a database of SmolLM2-135M's size.
**
**   perf_db [--kernels N] [--dir DIR] [--no-report]
**
** Builds DIR/perf.db (default DIR: /tmp/kvsim-perf-db) through the db API.
** It holds one trace with SmolLM2-135M's shapes (30 layers, 3 KV heads, 3
** query heads each) and N kernel runs (default 14). Every unit is committed
** with 3 head rows and 32 position buckets (2048 evaluated positions), and
** bench timings cover 6 context lengths for 5 kernels. Metric values are
** synthetic.
** It prints units committed per second, first by one process and then by
** two processes writing one file at once, and the wall time of
** kvs_report_write on the result (gnuplot included).
*/
#include "db/db.h"
#include "reports/report.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define LAYERS 30
#define KV_HEADS 3
#define GROUP 3
#define BUCKETS 32

static const char *const specs[] = {
    "dense:dtype=f32", "dense:dtype=bf16", "dense:dtype=fp8_e4m3", "quanto:bits=4", "quanto:bits=2",
    "hqq:bits=4", "kivi:bits=4", "kivi:bits=2", "turboquant:bits=3", "qjl:bits=1", "topk:k=64",
    "snapkv:budget=25%/quanto:bits=4", "streamingllm:sinks=4,window=256", "h2o:budget=20%",
};
static const char *const families[] = {
    "dense", "dense", "dense", "quantized", "quantized", "quantized", "quantized", "quantized", "rotation",
    "sketch", "value", "selection", "selection", "selection",
};
#define N_SPECS ((int)(sizeof specs / sizeof specs[0]))

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void die(const char *step)
{
    fprintf(stderr, "perf_db: %s failed: %s\n", step, kvs_error_message());
    exit(1);
}

/* Commits every unit of kernels first .. first + n - 1. Past the end of
** the spec list, names repeat with a "#k" suffix. Returns the number of
** units. */
static int write_runs(const char *path, int first, int n)
{
    kvs_db_t *db;
    int64_t trace_id;
    int units = 0;
    kvs_db_trace_info_t ti = {
        .path = "perf.kvt", .content_hash = "perf0000000000000000000000000000", .model = "SmolLM2-135M shapes",
        .metadata_json = "{}", .n_layers = LAYERS, .n_heads = KV_HEADS * GROUP, .n_kv_heads = KV_HEADS,
        .head_dim = 64, .n_prompt = 1800, .n_generated = 248, .synthetic = 1, .file_bytes = 1,
    };

    if (kvs_db_open(path, &db) != KVS_OK)
        die("kvs_db_open");
    if (kvs_db_put_trace(db, &ti, &trace_id) != KVS_OK)
        die("kvs_db_put_trace");
    for (int k = first; k < first + n; k++) {
        char spec[96];
        double err = 1e-3 * pow(1.6, k % 16);
        if (k < N_SPECS)
            snprintf(spec, sizeof spec, "%s", specs[k]);
        else
            snprintf(spec, sizeof spec, "%s#%d", specs[k % N_SPECS], k);
        kvs_db_run_info_t ri = {
            .trace_id = trace_id, .kernel_spec = spec, .params_json = "{}", .family = families[k % N_SPECS],
            .eval_mode = "all", .threads = 1, .cost_context = 2048, .bytes_per_token = 23040.0 / (1 + k % 8),
            .stored_bytes = 2048u * 23040u / (1u + (uint32_t)k % 8u), .read_bytes_per_step = 2048u * 23040u,
        };
        int64_t run;
        if (kvs_db_begin_run(db, &ri, 1, &run) != KVS_OK)
            die("kvs_db_begin_run");
        for (uint32_t layer = 0; layer < LAYERS; layer++) {
            for (uint32_t kv = 0; kv < KV_HEADS; kv++) {
                kvs_db_head_row_t rows[GROUP];
                uint32_t steps[BUCKETS];
                double out_err[GROUP][BUCKETS], logit_err[GROUP][BUCKETS];
                for (uint32_t g = 0; g < GROUP; g++) {
                    double e = err * (1 + 0.1 * g + 0.01 * layer);
                    memset(&rows[g], 0, sizeof rows[g]);
                    rows[g].head = kv * GROUP + g;
                    rows[g].metrics = (kvs_metrics_t){.n_steps = 2048, .logit_rmse = 10 * e, .kl = e * e,
                                                      .top1 = 1 - e, .top8 = 1 - e / 2, .out_rel_l2 = e,
                                                      .out_cos = 1 - e * e / 2};
                    for (int b = 0; b < BUCKETS; b++) {
                        steps[b] = 64;
                        out_err[g][b] = e * (0.5 + b / 64.0);
                        logit_err[g][b] = 10 * out_err[g][b];
                    }
                    rows[g].n_buckets = BUCKETS;
                    rows[g].bucket_steps = steps;
                    rows[g].bucket_out_rel_l2 = out_err[g];
                    rows[g].bucket_logit_rmse = logit_err[g];
                }
                if (kvs_db_commit_unit(db, run, layer, kv, rows, GROUP, 2048 * 1e-5, 2048, 64.0) != KVS_OK)
                    die("kvs_db_commit_unit");
                units++;
            }
        }
        if (kvs_db_end_run(db, run, "done") != KVS_OK)
            die("kvs_db_end_run");
    }
    for (int i = 0; i < 5 && first == 0; i++) {
        for (uint64_t ctx = 256; ctx <= 8192; ctx *= 2) {
            uint64_t bytes = ctx * 23040u / (1u + (uint64_t)i);
            if (kvs_db_put_timing(db, trace_id, specs[i], ctx, 1e-6, 2e-5 + (double)bytes / 8e9, bytes, "model",
                                  "perf-host") != KVS_OK)
                die("kvs_db_put_timing");
        }
    }
    kvs_db_close(db);
    return units;
}

int main(int argc, char **argv)
{
    const char *dir = "/tmp/kvsim-perf-db";
    int n_kernels = N_SPECS, report = 1;
    char path[4200], out[4200], cmd[4400];

    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--kernels") && i + 1 < argc)
            n_kernels = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--dir") && i + 1 < argc)
            dir = argv[++i];
        else if (!strcmp(argv[i], "--no-report"))
            report = 0;
        else {
            fprintf(stderr, "usage: perf_db [--kernels N] [--dir DIR] [--no-report]\n");
            return 2;
        }
    }
    if (n_kernels < 2) {
        fprintf(stderr, "perf_db: --kernels must be at least 2\n");
        return 2;
    }
    snprintf(cmd, sizeof cmd, "rm -rf '%s' && mkdir -p '%s'", dir, dir);
    if (system(cmd) != 0) {
        fprintf(stderr, "perf_db: cannot prepare %s\n", dir);
        return 1;
    }
    snprintf(path, sizeof path, "%s/perf.db", dir);

    double t0 = now();
    int units = write_runs(path, 0, n_kernels);
    double t1 = now();
    printf("one writer:  %d units (%d head rows, %d buckets each) in %.3f s: %.0f units/s\n", units, GROUP,
           BUCKETS, t1 - t0, units / (t1 - t0));

    /* Two processes append more runs to the same file at once. */
    pid_t pids[2];
    t0 = now();
    for (int p = 0; p < 2; p++) {
        pids[p] = fork();
        if (pids[p] == 0)
            _exit(write_runs(path, n_kernels + p * n_kernels, n_kernels) > 0 ? 0 : 1);
    }
    for (int p = 0; p < 2; p++) {
        int status;
        if (waitpid(pids[p], &status, 0) != pids[p] || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            fprintf(stderr, "perf_db: concurrent writer %d failed\n", p);
            return 1;
        }
    }
    t1 = now();
    printf("two writers: %d units in %.3f s: %.0f units/s together\n", 2 * units, t1 - t0, 2 * units / (t1 - t0));

    if (report) {
        snprintf(out, sizeof out, "%s/report", dir);
        t0 = now();
        if (kvs_report_write(path, out, NULL) != KVS_OK)
            die("kvs_report_write");
        t1 = now();
        printf("report:      %d runs on one trace in %.3f s (wall, gnuplot included)\n", 3 * n_kernels, t1 - t0);
    }
    return 0;
}
