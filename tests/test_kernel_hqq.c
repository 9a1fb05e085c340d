/*
** test_kernel_hqq.c: HQQ's half-quadratic zero-point optimiser against
** plain min-max on real keys and values: those of the stories260K model
** over its 200-token greedy continuation, computed with capture's forward
** pass.
*/
#include "testutil.h"

#include "capture/forward.h"
#include "capture/model.h"
#include "kernels/quant/fit.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { MAX_POS = 256 };

typedef struct capture {
    uint32_t n_layers, n_kv_heads, head_dim, n_pos;
    float *k, *v;  /* (layer, pos, n_kv_heads * head_dim) */
} capture_t;

static capture_t cap;

static kvs_status_e record_rows(void *ctx, const kvs_forward_rows_t *rows)
{
    capture_t *c = ctx;
    size_t width = (size_t)c->n_kv_heads * c->head_dim;

    for (uint32_t r = 0; r < rows->n_rows; r++) {
        size_t at = ((size_t)rows->layer * MAX_POS + rows->pos + r) * width;
        memcpy(c->k + at, rows->k + r * width, width * sizeof(float));
        memcpy(c->v + at, rows->v + r * width, width * sizeof(float));
    }
    return KVS_OK;
}

/* Runs stories260K over its expected greedy token ids. */
static void capture_stories(void)
{
    const char *dir = kvs_test_shared("models/stories260K");
    char path[4096];
    int32_t ids[MAX_POS];
    uint32_t n = 0;
    kvs_model_t *m;
    kvs_forward_t *f;

    snprintf(path, sizeof path, "%s/expected/greedy200_ids.txt", dir);
    FILE *fp = fopen(path, "r");
    ck_assert_ptr_nonnull(fp);
    while (n < MAX_POS && fscanf(fp, "%d", &ids[n]) == 1)
        n++;
    fclose(fp);
    ck_assert_uint_ge(n, 100);

    ck_assert_msg(kvs_model_load(dir, &m) == KVS_OK, "%s", kvs_error_message());
    const kvs_model_config_t *mc = kvs_model_get_config(m);
    cap.n_layers = mc->n_layers;
    cap.n_kv_heads = mc->n_kv_heads;
    cap.head_dim = mc->head_dim;
    cap.n_pos = n;
    size_t total = (size_t)cap.n_layers * MAX_POS * cap.n_kv_heads * cap.head_dim;
    cap.k = calloc(total, sizeof(float));
    cap.v = calloc(total, sizeof(float));
    ck_assert_int_eq(kvs_forward_create(m, MAX_POS, 1, &f), KVS_OK);
    kvs_forward_set_observer(f, record_rows, &cap);
    ck_assert_msg(kvs_forward_run(f, ids, n, NULL) == KVS_OK, "%s", kvs_error_message());
    kvs_forward_destroy(f);
    kvs_model_destroy(m);
}

/* Copies one (layer, KV head) stream of kind k or v into x (n_pos, d). */
static void stream_rows(const float *src, uint32_t layer, uint32_t head, float *x)
{
    size_t width = (size_t)cap.n_kv_heads * cap.head_dim;

    for (uint32_t t = 0; t < cap.n_pos; t++)
        memcpy(x + (size_t)t * cap.head_dim,
               src + ((size_t)layer * MAX_POS + t) * width + (size_t)head * cap.head_dim,
               cap.head_dim * sizeof(float));
}

/* Sum of |x - x^|^p of n values fitted in groups of len contiguous values,
** the grouping of Hugging Face's HQQ cache with axis=1: a stream of (n_pos,
** head_dim) rows reshaped to (-1, len). */
static double lp_error(const float *x, size_t n, uint32_t len, kvs_fit_e fit, uint32_t bits,
                       kvs_fp_e fmt, double p)
{
    uint32_t n_groups = (uint32_t)(n / len);
    uint8_t *codes = malloc(n);
    float *pa = malloc(n_groups * sizeof *pa), *pb = malloc(n_groups * sizeof *pb);
    kvs_hqq_opts_t opts = {.lp = 0.7, .beta = 10.0, .kappa = 1.01, .iters = 20};
    double e = 0;

    ck_assert_int_eq(kvs_fit_groups(fit, &opts, bits, fmt, x, n_groups, len, codes, pa, pb), 0);
    for (uint32_t g = 0; g < n_groups; g++) {
        float s, m;
        kvs_fit_decode(fit, pa[g], pb[g], &s, &m);
        for (uint32_t i = 0; i < len; i++) {
            size_t at = (size_t)g * len + i;
            e += pow(fabs(codes[at] * s + m - x[at]), p);
        }
    }
    free(codes);
    free(pa);
    free(pb);
    return e;
}

/* Totals over every (layer, KV head) stream of keys and values. */
static void compare_fits(uint32_t len, uint32_t bits, kvs_fp_e fmt, double *plain,
                         double *optimized, uint32_t *improved, uint32_t *streams)
{
    uint32_t usable = cap.n_pos / (len / cap.head_dim) * (len / cap.head_dim);
    float *x = malloc(sizeof(float) * MAX_POS * cap.head_dim);

    *plain = *optimized = 0;
    *improved = *streams = 0;
    for (int kind = 0; kind < 2; kind++) {
        for (uint32_t l = 0; l < cap.n_layers; l++) {
            for (uint32_t h = 0; h < cap.n_kv_heads; h++) {
                stream_rows(kind ? cap.v : cap.k, l, h, x);
                size_t n = (size_t)usable * cap.head_dim;
                double e0 = lp_error(x, n, len, KVS_FIT_HQQ, bits, fmt, 0.7);
                double e1 = lp_error(x, n, len, KVS_FIT_HQQ_PROX, bits, fmt, 0.7);
                *plain += e0;
                *optimized += e1;
                *improved += e1 < e0;
                (*streams)++;
            }
        }
    }
    free(x);
    fprintf(stderr, "hqq %u bits, groups of %u, %s parameters: l0.7 error min-max %.5g, "
                    "optimised %.5g; %u of %u streams improved\n",
            bits, len, kvs_fp_name(fmt), *plain, *optimized, *improved, *streams);
}

START_TEST(hqq_lowers_lp_error)
{
    static const kvs_fp_e fmts[] = {KVS_FP_F32, KVS_FP_BF16};
    double plain, optimized;
    uint32_t improved, streams;

    capture_stories();
    ck_assert_uint_eq(64 % cap.head_dim, 0);
    /* HF's default q_group_size of 64 spans 64 / head_dim positions here. */
    for (uint32_t bits = 2; bits <= 4; bits++) {
        for (size_t f = 0; f < 2; f++) {
            compare_fits(64, bits, fmts[f], &plain, &optimized, &improved, &streams);
            ck_assert_double_lt(optimized, plain);
            ck_assert_uint_gt(improved, streams / 2);
        }
    }

    /* NOTE: with one group per position (8 values, stories260K's head_dim)
    ** the optimiser raises the lp error instead; printed, not asserted. */
    for (uint32_t bits = 2; bits <= 4; bits++)
        compare_fits(cap.head_dim, bits, KVS_FP_F32, &plain, &optimized, &improved, &streams);
    free(cap.k);
    free(cap.v);
}
END_TEST

int main(void)
{
    kvs_test_require_shared("models/stories260K/model.safetensors");

    Suite *s = suite_create("kernel_hqq");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, hqq_lowers_lp_error);
    suite_add_tcase(s, tc);
    return kvs_test_run(s);
}
