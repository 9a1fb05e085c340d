/*
** db_fixture.h: a small results database built through the db API with
** hand-chosen metrics, shared by test_db.c and test_report.c.
**
** Two traces: "real" (model smollm2-fixture) and "synth" (synthetic). Each
** kernel run has 2 layers x 2 KV heads x 2 query heads per KV head. A head's
** metrics are the kernel's base error scaled by 1 + dev(layer, head), where
** the eight deviations sum to zero, so every mean over a run's heads equals
** the base value. Evaluation covers positions 100..255, so buckets 1..3 of
** KVS_POS_BUCKET = 64 positions hold steps and bucket 0 holds none.
*/
#ifndef KVS_DB_FIXTURE_H
#define KVS_DB_FIXTURE_H

#include "db/db.h"

#include <check.h>
#include <string.h>

#define FX_LAYERS 2
#define FX_KV_HEADS 2
#define FX_GROUP 2
#define FX_BUCKETS 4

typedef struct fx_kernel {
    int trace;             /* 0 = real, 1 = synthetic */
    const char *spec;
    const char *family;
    int compressed_exec;
    double bytes_per_token;
    double err;            /* base output relative error */
    int on_front;          /* 1 when not dominated within its trace */
} fx_kernel_t;

static const fx_kernel_t fx_kernels[] = {
    {0, "dense:dtype=f32", "dense", 0, 2048, 1e-7, 1},
    {0, "dense:dtype=bf16", "dense", 0, 1024, 1e-3, 1},
    {0, "quanto:bits=4", "quantized", 0, 288, 0.02, 1},
    {0, "quanto:bits=2", "quantized", 0, 160, 0.15, 1},
    {0, "hqq:bits=4", "quantized", 0, 288, 0.03, 0},     /* same bytes as quanto:4, worse */
    {0, "kivi:bits=2", "quantized", 1, 170, 0.2, 0},     /* more bytes and worse than quanto:2 */
    {1, "dense:dtype=bf16", "dense", 0, 1024, 2e-3, 1},
    {1, "quanto:bits=4", "quantized", 0, 288, 0.04, 1},
    {1, "snapkv:budget=25%/quanto:bits=4", "selection", 0, 72, 0.3, 1},
};
#define FX_N_KERNELS ((int)(sizeof fx_kernels / sizeof fx_kernels[0]))

static const char *const fx_trace_hash[2] = {"a1b2c3d4e5f60718293a4b5c6d7e8f90", "ffee0011223344556677889900aabbcc"};

/* Zero-sum deviation of a head's error from its kernel's base value. */
static double fx_dev(uint32_t layer, uint32_t head)
{
    return ((double)(layer * FX_KV_HEADS * FX_GROUP + head) - 3.5) / 35.0;
}

static void fx_metrics(int k, uint32_t layer, uint32_t head, double perturb, kvs_metrics_t *m)
{
    double e = fx_kernels[k].err * (1.0 + fx_dev(layer, head)) + perturb;

    memset(m, 0, sizeof *m);
    m->n_steps = 156;
    m->logit_mae = 10 * e;
    m->logit_rmse = 12 * e;
    m->logit_max = 40 * e;
    m->logit_rel_rmse = 2 * e;
    m->kl = e * e;
    m->tv = e / 2;
    m->mass_kept = 1.0 - e / 10;
    m->top1 = 1.0 - e;
    m->top8 = 1.0 - e / 2;
    m->top32 = 1.0 - e / 4;
    m->recall8 = 1.0 - e / 3;
    m->out_rel_l2 = e;
    m->out_cos = 1.0 - e * e / 2;
    m->out_rel_l2_p50 = 0.9 * e;
    m->out_rel_l2_p95 = 1.8 * e;
    m->out_rel_l2_max = 3 * e;
}

/* Output error of bucket b: rising with position, so the position figure
** shows a slope. */
static double fx_bucket_err(int k, uint32_t layer, uint32_t head, uint32_t b)
{
    return fx_kernels[k].err * (1.0 + fx_dev(layer, head)) * (0.5 + 0.5 * b);
}

static const uint32_t fx_bucket_steps[FX_BUCKETS] = {0, 28, 64, 64};

/* Unit filter: 1 to commit (kernel k, layer, kv_head). */
typedef int (*fx_filter_fn)(int k, uint32_t layer, uint32_t kv_head);

static int fx_all(int k, uint32_t layer, uint32_t kv_head)
{
    (void)k, (void)layer, (void)kv_head;
    return 1;
}

static void fx_put_traces(kvs_db_t *db, int64_t trace_ids[2])
{
    for (int t = 0; t < 2; t++) {
        kvs_db_trace_info_t ti = {
            .path = t ? "/data/synth.kvt" : "/data/real.kvt",
            .content_hash = fx_trace_hash[t],
            .model = t ? "synthetic-smollm2" : "smollm2-fixture",
            .metadata_json = "{\"fixture\":true}",
            .n_layers = FX_LAYERS, .n_heads = FX_KV_HEADS * FX_GROUP, .n_kv_heads = FX_KV_HEADS,
            .head_dim = 64, .n_prompt = 100, .n_generated = 156, .synthetic = t, .file_bytes = 123456,
        };
        ck_assert_int_eq(kvs_db_put_trace(db, &ti, &trace_ids[t]), KVS_OK);
    }
}

static int64_t fx_begin(kvs_db_t *db, const int64_t trace_ids[2], int k, int resume)
{
    kvs_db_run_info_t ri = {
        .trace_id = trace_ids[fx_kernels[k].trace],
        .kernel_spec = fx_kernels[k].spec,
        .params_json = "{}",
        .family = fx_kernels[k].family,
        .compressed_exec = fx_kernels[k].compressed_exec,
        .eval_mode = "decode",
        .threads = 1,
        .seed = 7,
        .cost_context = 256,
        .bytes_per_token = fx_kernels[k].bytes_per_token,
        .stored_bytes = (uint64_t)(fx_kernels[k].bytes_per_token * 256),
        .read_bytes_per_step = (uint64_t)(fx_kernels[k].bytes_per_token * 256) * (fx_kernels[k].compressed_exec ? 1 : 3),
    };
    int64_t run_id;

    ck_assert_int_eq(kvs_db_begin_run(db, &ri, resume, &run_id), KVS_OK);
    return run_id;
}

static kvs_status_e fx_commit(kvs_db_t *db, int64_t run_id, int k, uint32_t layer, uint32_t kv_head, double perturb)
{
    kvs_db_head_row_t rows[FX_GROUP];
    double out_err[FX_GROUP][FX_BUCKETS], logit_err[FX_GROUP][FX_BUCKETS];

    for (uint32_t g = 0; g < FX_GROUP; g++) {
        uint32_t head = kv_head * FX_GROUP + g;
        rows[g].head = head;
        fx_metrics(k, layer, head, perturb, &rows[g].metrics);
        for (uint32_t b = 0; b < FX_BUCKETS; b++) {
            out_err[g][b] = fx_bucket_err(k, layer, head, b);
            logit_err[g][b] = 12 * out_err[g][b];
        }
        rows[g].n_buckets = FX_BUCKETS;
        rows[g].bucket_steps = fx_bucket_steps;
        rows[g].bucket_out_rel_l2 = out_err[g];
        rows[g].bucket_logit_rmse = logit_err[g];
    }
    /* 156 calls of 1e-5 * (1 + k) seconds each. The instances stored
    ** 100 * (1 + k) bytes per position, and measured storage is that times
    ** 4 streams. */
    return kvs_db_commit_unit(db, run_id, layer, kv_head, rows, FX_GROUP, 156 * 1e-5 * (1 + k), 156,
                              100.0 * (1 + k));
}

/* Builds the fixture at path with the units filter accepts; perturb is
** added to every metric of kernel perturb_k (or none when -1). */
static void fx_build(const char *path, fx_filter_fn filter, int perturb_k, double perturb)
{
    kvs_db_t *db;
    int64_t trace_ids[2];

    ck_assert_int_eq(kvs_db_open(path, &db), KVS_OK);
    fx_put_traces(db, trace_ids);
    for (int k = 0; k < FX_N_KERNELS; k++) {
        int64_t run_id = fx_begin(db, trace_ids, k, 1);
        for (uint32_t layer = 0; layer < FX_LAYERS; layer++) {
            for (uint32_t kv = 0; kv < FX_KV_HEADS; kv++) {
                if (filter(k, layer, kv))
                    ck_assert_int_eq(fx_commit(db, run_id, k, layer, kv, k == perturb_k ? perturb : 0.0), KVS_OK);
            }
        }
        ck_assert_int_eq(kvs_db_end_run(db, run_id, "done"), KVS_OK);
    }

    /* Bench timings for the real trace: attention time proportional to the
    ** bytes read plus a fixed cost, at four context lengths. */
    static const char *const timed[] = {"dense:dtype=bf16", "quanto:bits=4", "kivi:bits=2"};
    static const double timed_bpt[] = {1024, 288 * 3, 170};
    for (int i = 0; i < 3; i++) {
        for (uint64_t ctx = 256; ctx <= 2048; ctx *= 2) {
            uint64_t bytes = (uint64_t)(timed_bpt[i] * (double)ctx);
            ck_assert_int_eq(kvs_db_put_timing(db, trace_ids[0], timed[i], ctx, 1e-6, 2e-6 + bytes * 1e-10, bytes,
                                               "model", "fixture-host"),
                             KVS_OK);
        }
    }
    kvs_db_close(db);
}

#endif
