/*
** test_replay.c: the replayer on a real stories260K trace: dense F32 gives
** zero error, quanto 4-bit lies strictly between F32 and quanto 2-bit,
** threaded equals single-threaded, shards add up, resume adds nothing.
*/
#include "testutil.h"

#include "analysis/attention.h"
#include "capture/capture.h"
#include "kernels/kernel.h"
#include "sim/replay.h"
#include "sim/replay_unit.h"
#include "trace/trace.h"

#include <math.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *model_dir;
static char *tmp;
static char trace_path[4200];

/* Captures 64 prompt + 96 generated positions once for the whole suite:
** enough decode steps for the quanto residual (127 tokens) to fill. */
static void make_trace(void)
{
    int32_t prompt[64];
    kvs_capture_opts_t o = {0};
    kvs_capture_result_t res;

    for (int i = 0; i < 64; i++)
        prompt[i] = i == 0 ? 1 : 3 + (i * 37) % 500;
    tmp = kvs_test_tmpdir("replay");
    snprintf(trace_path, sizeof trace_path, "%s/stories.kvt", tmp);
    o.model_dir = model_dir;
    o.prompt_ids = prompt;
    o.n_prompt = 64;
    o.max_new_tokens = 96;
    o.top_p = 1;
    o.dtype = KVS_DTYPE_F32;
    o.out_path = trace_path;
    if (kvs_capture_run(&o, &res) != KVS_OK) {
        fprintf(stderr, "capture failed: %s\n", kvs_error_message());
        exit(1);
    }
}

static kvs_status_e replay(const char *db, const char *const *kernels, uint32_t n_kernels,
                           uint32_t threads, uint32_t shard_k, uint32_t shard_n, int resume)
{
    const char *traces[1] = {trace_path};
    kvs_replay_opts_t o = {
        .db_path = db, .traces = traces, .n_traces = 1, .kernels = kernels, .n_kernels = n_kernels,
        .eval = KVS_EVAL_DECODE, .threads = threads, .resume = resume, .shard_k = shard_k,
        .shard_n = shard_n, .quiet = 1,
    };
    return kvs_replay_run(&o);
}

/* Runs a query returning one number. */
static double query_number(const char *db_path, const char *sql)
{
    sqlite3 *db;
    sqlite3_stmt *st;
    double v = NAN;

    ck_assert_int_eq(sqlite3_open_v2(db_path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    ck_assert_msg(sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK, "%s: %s", sql,
                  sqlite3_errmsg(db));
    if (sqlite3_step(st) == SQLITE_ROW)
        v = sqlite3_column_double(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}

/* Concatenates every row of a query into one string, for equality checks. */
static char *query_text(const char *db_path, const char *sql)
{
    sqlite3 *db;
    sqlite3_stmt *st;
    size_t cap = 1 << 16, len = 0;
    char *out = calloc(cap, 1);

    ck_assert_int_eq(sqlite3_open_v2(db_path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    ck_assert_msg(sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK, "%s: %s", sql,
                  sqlite3_errmsg(db));
    while (sqlite3_step(st) == SQLITE_ROW) {
        for (int c = 0; c < sqlite3_column_count(st); c++) {
            const char *t = (const char *)sqlite3_column_text(st, c);
            size_t n = strlen(t ? t : "") + 2;
            if (len + n >= cap) {
                cap = 2 * (len + n);
                out = realloc(out, cap);
            }
            len += (size_t)sprintf(out + len, "%s|", t ? t : "");
        }
        out[len++] = '\n';
        out[len] = '\0';
    }
    sqlite3_finalize(st);
    sqlite3_close(db);
    return out;
}

static double summary(const char *db, const char *kernel, const char *column)
{
    char sql[512];
    snprintf(sql, sizeof sql, "SELECT %s FROM kernel_summary WHERE kernel = '%s'", column, kernel);
    return query_number(db, sql);
}

START_TEST(dense_f32_is_exact_and_quanto_orders)
{
    const char *kernels[] = {"dense:dtype=f32", "quanto:bits=4,group=8", "quanto:bits=2,group=8"};
    char db[4300];

    snprintf(db, sizeof db, "%s/order.db", tmp);
    ck_assert_msg(replay(db, kernels, 3, 2, 0, 0, 0) == KVS_OK, "%s", kvs_error_message());

    ck_assert_double_eq(summary(db, "dense:dtype=f32", "logit_rmse"), 0);
    ck_assert_double_eq(summary(db, "dense:dtype=f32", "output_rel_error"), 0);
    ck_assert_double_eq(summary(db, "dense:dtype=f32", "top1_agreement"), 1);
    ck_assert_double_eq(summary(db, "dense:dtype=f32", "kl"), 0);

    double q4 = summary(db, "quanto:bits=4,group=8", "output_rel_error");
    double q2 = summary(db, "quanto:bits=2,group=8", "output_rel_error");
    ck_assert_double_gt(q4, 0);
    ck_assert_double_lt(q4, q2);
    ck_assert_double_gt(summary(db, "quanto:bits=4,group=8", "logit_rmse"), 0);
    ck_assert_double_lt(summary(db, "quanto:bits=4,group=8", "logit_rmse"),
                        summary(db, "quanto:bits=2,group=8", "logit_rmse"));

    /* stories260K: 5 layers x 4 KV heads x 4 bytes x 8 dims x K and V. */
    ck_assert_double_eq(summary(db, "dense:dtype=f32", "bytes_per_token"), 5 * 4 * 2 * 8 * 4);

    /* Measured storage: dense stores exactly its bytes per token. quanto's
    ** BF16 residual contains decode positions that the steady-state figure
    ** leaves out, so it measures more (up to 95 of 160 positions). */
    char sql[256];
    snprintf(sql, sizeof sql, "SELECT measured_bytes_per_token FROM measured_storage WHERE kernel = '%s'",
             "dense:dtype=f32");
    ck_assert_double_eq_tol(query_number(db, sql), 1280.0, 1e-9);
    snprintf(sql, sizeof sql, "SELECT measured_bytes_per_token FROM measured_storage WHERE kernel = '%s'",
             "quanto:bits=4,group=8");
    double measured = query_number(db, sql);
    ck_assert_double_gt(measured, summary(db, "quanto:bits=4,group=8", "bytes_per_token") * 1.2);
    ck_assert_double_lt(measured, 1280.0);
}
END_TEST

START_TEST(threads_shards_and_resume_agree)
{
    const char *kernels[] = {"quanto:bits=4,group=8", "dense:dtype=bf16"};
    const char *sql = "SELECT kernel, logit_rmse, output_rel_error, top1_agreement "
                      "FROM kernel_summary ORDER BY kernel";
    char one[4300], two[4300], shards[4300];

    snprintf(one, sizeof one, "%s/one.db", tmp);
    snprintf(two, sizeof two, "%s/two.db", tmp);
    snprintf(shards, sizeof shards, "%s/shards.db", tmp);
    ck_assert_int_eq(replay(one, kernels, 2, 1, 0, 0, 0), KVS_OK);
    ck_assert_int_eq(replay(two, kernels, 2, 2, 0, 0, 0), KVS_OK);

    /* Two shards written into one database with --resume cover every
    ** unit once; a third resumed run adds nothing. */
    ck_assert_int_eq(replay(shards, kernels, 2, 2, 1, 2, 1), KVS_OK);
    ck_assert_int_eq(replay(shards, kernels, 2, 2, 2, 2, 1), KVS_OK);
    ck_assert_int_eq(replay(shards, kernels, 2, 2, 0, 0, 1), KVS_OK);

    char *a = query_text(one, sql), *b = query_text(two, sql), *c = query_text(shards, sql);
    ck_assert_int_gt((int)strlen(a), 10);
    ck_assert_str_eq(a, b);
    ck_assert_str_eq(a, c);
    free(a);
    free(b);
    free(c);
}
END_TEST

/* The replayer's reference (the dense F32 kernel) agrees with attention
** computed independently in double precision on the real trace, for every
** layer, KV head and query head at the last position. */
START_TEST(reference_matches_double_precision)
{
    kvs_trace_t *t;
    kvs_kernel_spec_t *spec;

    ck_assert_int_eq(kvs_trace_open(trace_path, &t), KVS_OK);
    ck_assert_int_eq(kvs_kernel_spec_parse(KVS_REFERENCE_SPEC, &spec), KVS_OK);
    const kvs_trace_shape_t *s = kvs_trace_get_shape(t);
    uint32_t n = kvs_trace_n_tokens(t), d = s->head_dim, group = s->n_heads / s->n_kv_heads;
    uint32_t kv_w = s->n_kv_heads * d, q_w = s->n_heads * d;
    float *q = malloc((size_t)n * q_w * 4), *k = malloc((size_t)n * kv_w * 4);
    float *kp = malloc((size_t)n * kv_w * 4), *v = malloc((size_t)n * kv_w * 4);
    float *kh = malloc((size_t)n * d * 4), *vh = malloc((size_t)n * d * 4);
    float *logits = malloc((size_t)group * n * 4), *weights = malloc((size_t)group * n * 4);
    float *out = malloc((size_t)group * d * 4);
    float *ex_l = malloc((size_t)n * 4), *ex_w = malloc((size_t)n * 4), ex_o[64];
    double worst = 0;

    for (uint32_t layer = 0; layer < s->n_layers; layer++) {
        ck_assert_int_eq(kvs_trace_read(t, KVS_KIND_Q, layer, 0, n, q), KVS_OK);
        ck_assert_int_eq(kvs_trace_read(t, KVS_KIND_K, layer, 0, n, k), KVS_OK);
        ck_assert_int_eq(kvs_trace_read(t, KVS_KIND_K_PRE, layer, 0, n, kp), KVS_OK);
        ck_assert_int_eq(kvs_trace_read(t, KVS_KIND_V, layer, 0, n, v), KVS_OK);
        for (uint32_t h = 0; h < s->n_kv_heads; h++) {
            kvs_kernel_dims_t dims = {.head_dim = d, .group_size = group, .n_layers = s->n_layers,
                                      .n_kv_heads = s->n_kv_heads, .layer = layer, .kv_head = h};
            kvs_kernel_t *kern;
            ck_assert_int_eq(kvs_kernel_create(spec, &dims, &kern), KVS_OK);
            for (uint32_t p = 0; p < n; p++) {
                const float *kr = k + (size_t)p * kv_w + h * d, *vr = v + (size_t)p * kv_w + h * d;
                ck_assert_int_eq(kvs_kernel_append(kern, kr, kp + (size_t)p * kv_w + h * d, vr), KVS_OK);
                memcpy(kh + (size_t)p * d, kr, d * 4);
                memcpy(vh + (size_t)p * d, vr, d * 4);
            }
            kvs_attend_out_t res = {logits, weights, out};
            const float *qg = q + (size_t)(n - 1) * q_w + (size_t)h * group * d;
            ck_assert_int_eq(kvs_kernel_attend(kern, qg, &res), KVS_OK);
            for (uint32_t g = 0; g < group; g++) {
                double diff = 0, norm = 0;
                kvs_exact_attention(qg + (size_t)g * d, kh, vh, n, d, d, ex_l, ex_w, ex_o);
                for (uint32_t j = 0; j < d; j++) {
                    diff += pow(out[(size_t)g * d + j] - ex_o[j], 2);
                    norm += pow(ex_o[j], 2);
                }
                for (uint32_t p = 0; p < n; p++)
                    ck_assert_double_eq_tol(logits[(size_t)g * n + p], ex_l[p], 1e-5 * (1 + fabs(ex_l[p])));
                if (sqrt(diff / norm) > worst)
                    worst = sqrt(diff / norm);
            }
            kvs_kernel_destroy(kern);
        }
    }
    ck_assert_double_lt(worst, 1e-5);
    free(q); free(k); free(kp); free(v); free(kh); free(vh);
    free(logits); free(weights); free(out); free(ex_l); free(ex_w);
    kvs_kernel_spec_free(spec);
    kvs_trace_close(t);
}
END_TEST

/* H2O and TOVA learn from every decode step's weights. Evaluating only the
** last bucket of positions must leave their state, and so that bucket's
** figures, exactly as evaluating every decode position does. */
START_TEST(observing_policies_see_every_step)
{
    const char *texts[] = {"h2o:budget=25%", "tova:budget=25%"};
    kvs_replay_trace_t rt = {.path = trace_path};
    kvs_kernel_spec_t *specs[2];
    kvs_unit_result_t all[2], last[2];

    ck_assert_int_eq(kvs_trace_open(trace_path, &rt.trace), KVS_OK);
    rt.shape = *kvs_trace_get_shape(rt.trace);
    rt.n_tokens = kvs_trace_n_tokens(rt.trace);
    rt.n_prompt = 64;
    for (int i = 0; i < 2; i++) {
        ck_assert_int_eq(kvs_kernel_spec_parse(texts[i], &specs[i]), KVS_OK);
        ck_assert(kvs_kernel_spec_observes(specs[i]));
    }

    uint8_t *every = calloc(rt.n_tokens, 1), *tail = calloc(rt.n_tokens, 1);
    uint32_t last_bucket = (rt.n_tokens - 1) / KVS_POS_BUCKET;
    for (uint32_t t = rt.n_prompt; t < rt.n_tokens; t++) {
        every[t] = 1;
        tail[t] = t / KVS_POS_BUCKET == last_bucket;
    }
    ck_assert_int_eq(kvs_replay_stream(&rt, (const kvs_kernel_spec_t *const *)specs, 2, 0, 3, 1, every,
                                       all), KVS_OK);
    ck_assert_int_eq(kvs_replay_stream(&rt, (const kvs_kernel_spec_t *const *)specs, 2, 0, 3, 1, tail,
                                       last), KVS_OK);
    for (int i = 0; i < 2; i++) {
        for (uint32_t g = 0; g < all[i].group; g++) {
            const kvs_db_head_row_t *a = &all[i].rows[g], *b = &last[i].rows[g];
            ck_assert_uint_eq(a->n_buckets, last_bucket + 1);
            ck_assert_uint_eq(a->bucket_steps[last_bucket], b->bucket_steps[last_bucket]);
            ck_assert_double_eq(a->bucket_out_rel_l2[last_bucket], b->bucket_out_rel_l2[last_bucket]);
            ck_assert_double_gt(a->bucket_out_rel_l2[last_bucket], 0);
        }
        kvs_unit_result_free(&all[i]);
        kvs_unit_result_free(&last[i]);
        kvs_kernel_spec_free(specs[i]);
    }
    free(every);
    free(tail);
    kvs_trace_close(rt.trace);
}
END_TEST

/* Evaluation plans select the positions their names describe. */
START_TEST(eval_positions_follow_mode)
{
    uint8_t mask[10];
    kvs_eval_plan_t decode = {KVS_EVAL_DECODE, 0, 0}, last = {KVS_EVAL_LAST, 3, 0};
    kvs_eval_plan_t stride = {KVS_EVAL_STRIDE, 4, 0}, capped = {KVS_EVAL_ALL, 0, 2};

    ck_assert_uint_eq(kvs_eval_positions(&decode, 10, 6, mask), 4);
    ck_assert(!mask[5] && mask[6] && mask[9]);
    ck_assert_uint_eq(kvs_eval_positions(&last, 10, 6, mask), 3);
    ck_assert(!mask[6] && mask[7] && mask[9]);
    ck_assert_uint_eq(kvs_eval_positions(&stride, 10, 6, mask), 4);   /* 0, 4, 8 and the last, 9 */
    ck_assert(mask[0] && mask[4] && mask[8] && mask[9] && !mask[1]);
    ck_assert_uint_eq(kvs_eval_positions(&capped, 10, 6, mask), 2);   /* the last two */
    ck_assert(mask[8] && mask[9] && !mask[7]);
}
END_TEST

START_TEST(bad_inputs_are_rejected_before_work)
{
    const char *unknown[] = {"no-such-kernel"};
    const char *good[] = {"dense:dtype=f32"};
    const char *traces[1] = {"/nonexistent/trace.kvt"};
    char db[4300];

    snprintf(db, sizeof db, "%s/bad.db", tmp);
    ck_assert_int_eq(replay(db, unknown, 1, 1, 0, 0, 0), KVS_ERR_KERNEL_SPEC);
    ck_assert_ptr_nonnull(strstr(kvs_error_message(), "no-such-kernel"));

    kvs_replay_opts_t o = {.db_path = db, .traces = traces, .n_traces = 1, .kernels = good,
                           .n_kernels = 1, .quiet = 1};
    ck_assert_int_ne(kvs_replay_run(&o), KVS_OK);
    ck_assert_ptr_nonnull(strstr(kvs_error_message(), "/nonexistent/trace.kvt"));

    /* Evaluation modes are parsed strictly: N must be positive and the
    ** mode name known. */
    kvs_eval_e e;
    uint32_t n;
    ck_assert_int_eq(kvs_eval_parse("last:0", &e, &n), KVS_ERR_USAGE);
    ck_assert_int_eq(kvs_eval_parse("stride:7", &e, &n), KVS_OK);
    ck_assert_int_eq(e, KVS_EVAL_STRIDE);
    ck_assert_uint_eq(n, 7);
    ck_assert_int_eq(kvs_eval_parse("first:3", &e, &n), KVS_ERR_USAGE);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("replay");
    TCase *tc = tcase_create("stories260K");

    model_dir = strdup(kvs_test_require_shared("models/stories260K"));
    make_trace();
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, dense_f32_is_exact_and_quanto_orders);
    tcase_add_test(tc, threads_shards_and_resume_agree);
    tcase_add_test(tc, reference_matches_double_precision);
    tcase_add_test(tc, eval_positions_follow_mode);
    tcase_add_test(tc, observing_policies_see_every_step);
    tcase_add_test(tc, bad_inputs_are_rejected_before_work);
    suite_add_tcase(s, tc);
    return kvs_test_run(s);
}
