/* test_qjl.c: the QJL sign-sketch codec: unbiased estimates, variance
** against sketch size, bytes, outlier sketch, fast and reference paths. */
#include "testutil.h"

#include "rotation_testutil.h"

#include <math.h>
#include <stdio.h>

#define D 64

static void qjl_error(const char *params, uint32_t n_seeds, double *mean, double *var,
                      double *truth_out)
{
    float q[D], k[D];
    kvs_rot_rng_t rng;
    double s = 0.0, s2 = 0.0, truth;
    const uint8_t attend = 1;

    kvs_rot_rng_init(&rng, 777);
    rt_random_normal(&rng, k, D, 0.5);
    rt_random_normal(&rng, q, D, 1.0);
    truth = rt_dot(q, k, D);
    for (uint32_t i = 0; i < n_seeds; i++) {
        kvs_kernel_dims_t dims = rt_dims(D, 1, 100 + i);
        void *st = rt_stream(&kvs_codec_qjl, params, &dims, k, 1, 1);
        float logit;
        double e;

        kvs_codec_qjl.logits(st, q, 1, &attend, 1, &logit);
        e = logit - truth;
        s += e;
        s2 += e * e;
        kvs_codec_qjl.destroy(st);
    }
    *mean = s / n_seeds;
    *var = s2 / n_seeds - (*mean) * (*mean);
    *truth_out = truth;
}

START_TEST(estimates_are_unbiased_and_shrink_with_m)
{
    /* Var of sqrt(pi/2)/m * |k| * <Sq, sign(Sk)> is
    ** (pi/2 |q|^2 |k|^2 - <q,k>^2) / m for i.i.d. Gaussian rows. */
    const uint32_t n_seeds = 2000;
    unsigned bits[] = {1, 2, 4, 8};
    double mean, var, truth;

    for (size_t i = 0; i < sizeof bits / sizeof bits[0]; i++) {
        char params[32];
        float q[D], k[D];
        kvs_rot_rng_t rng;
        double m = bits[i] * D, predicted;

        snprintf(params, sizeof params, "bits=%u", bits[i]);
        qjl_error(params, n_seeds, &mean, &var, &truth);
        kvs_rot_rng_init(&rng, 777);
        rt_random_normal(&rng, k, D, 0.5);
        rt_random_normal(&rng, q, D, 1.0);
        predicted = (M_PI / 2.0 * rt_dot(q, q, D) * rt_dot(k, k, D) - truth * truth) / m;
        ck_assert_msg(fabs(mean) < 3.0 * sqrt(var / n_seeds), "bits=%u: mean %.5f, se %.5f",
                      bits[i], mean, sqrt(var / n_seeds));
        /* 2000 samples estimate a variance to about +-6% (one sigma). */
        ck_assert_msg(fabs(var / predicted - 1.0) < 0.2, "bits=%u: variance %.5g, predicted %.5g",
                      bits[i], var, predicted);
    }
}
END_TEST

START_TEST(fast_path_matches_reference)
{
    const uint32_t n = 333, group = 3;
    kvs_kernel_dims_t dims = rt_dims(D, group, 3);
    float *k = malloc((size_t)n * D * sizeof *k), q[3 * D];
    float *fast = malloc((size_t)group * n * sizeof *fast);
    float *ref = malloc((size_t)group * n * sizeof *ref);
    float w[3 * 333], out_fast[3 * D], out_ref[3 * D];
    uint8_t attend[333];
    kvs_rot_rng_t rng;
    const char *variants[][2] = {{"bits=1", "bits=1,path=ref"},
                                 {"bits=3", "bits=3,path=ref"},
                                 {"bits=2,outliers=0.125,outlier_bits=16",
                                  "bits=2,outliers=0.125,outlier_bits=16,path=ref"},
                                 {"bits=3,path=gather", "bits=3,path=ref"},
                                 {"bits=3,path=table", "bits=3,path=ref"}};

    kvs_rot_rng_init(&rng, 8);
    rt_random_normal(&rng, k, n * D, 1.0);
    rt_random_normal(&rng, q, group * D, 1.0);
    memset(attend, 1, sizeof attend);
    for (uint32_t i = 0; i < group * n; i++)
        w[i] = (float)kvs_rot_rng_uniform(&rng) / n;
    for (size_t v = 0; v < 5; v++) {
        void *a, *b;

        a = rt_stream(&kvs_codec_qjl, variants[v][0], &dims, k, n, 1);
        b = rt_stream(&kvs_codec_qjl, variants[v][1], &dims, k, n, 1);
        kvs_codec_qjl.logits(a, q, group, attend, n, fast);
        kvs_codec_qjl.logits(b, q, group, attend, n, ref);
        for (uint32_t i = 0; i < group * n; i++)
            ck_assert_float_eq_tol(fast[i], ref[i], 1e-4f * (1.0f + fabsf(ref[i])));
        kvs_codec_qjl.output(a, w, group, attend, n, out_fast);
        kvs_codec_qjl.output(b, w, group, attend, n, out_ref);
        for (uint32_t i = 0; i < group * D; i++)
            ck_assert_float_eq_tol(out_fast[i], out_ref[i], 1e-5f * (1.0f + fabsf(out_ref[i])));
        kvs_codec_qjl.destroy(a);
        kvs_codec_qjl.destroy(b);
    }
    free(k);
    free(fast);
    free(ref);
}
END_TEST

START_TEST(bytes_are_signs_plus_f16_norm)
{
    kvs_kernel_dims_t dims = rt_dims(D, 1, 3);
    kvs_params_t p;
    kvs_part_cost_t cost;

    /* m = 3 * 64 sign bits = 24 B, plus the F16 norm. */
    rt_params(kvs_codec_qjl.params, "bits=3", &p);
    kvs_codec_qjl.cost(&p, &dims, KVS_CODEC_KEY, 100, &cost);
    ck_assert_double_eq(cost.bytes_per_token, 26.0);
    ck_assert_uint_eq(cost.shared_bytes, 192 * 64 * 4);
    /* Outliers: 4 channels with 32 bits each (16 B + F16 norm) and 60
    ** channels with 2 bits each (15 B + F16 norm). */
    rt_params(kvs_codec_qjl.params, "bits=2,outliers=0.0625", &p);
    kvs_codec_qjl.cost(&p, &dims, KVS_CODEC_KEY, 100, &cost);
    ck_assert_double_eq(cost.bytes_per_token, 16 + 2 + 15 + 2);
}
END_TEST

START_TEST(outlier_sketch_beats_plain_on_outlier_keys)
{
    const uint32_t n = 200;
    kvs_kernel_dims_t dims = rt_dims(D, 1, 12);
    float *k = malloc((size_t)n * D * sizeof *k), q[D], a[200], b[200];
    uint8_t attend[200];
    kvs_rot_rng_t rng;
    void *plain, *split;
    double err_plain = 0.0, err_split = 0.0;

    kvs_rot_rng_init(&rng, 13);
    rt_random_normal(&rng, k, n * D, 1.0);
    for (uint32_t t = 0; t < n; t++)
        for (uint32_t j = 0; j < 4; j++)
            k[t * D + 5 + 11 * j] *= 20.0f;
    rt_random_normal(&rng, q, D, 1.0);
    memset(attend, 1, sizeof attend);
    /* Same total sign bits: 3 * 64 = 192 vs 60 * 2 + 4 * 18 = 192. */
    plain = rt_stream(&kvs_codec_qjl, "bits=3", &dims, k, n, 1);
    split = rt_stream(&kvs_codec_qjl, "bits=2,outliers=0.0625,outlier_bits=18", &dims, k, n, 1);
    kvs_codec_qjl.logits(plain, q, 1, attend, n, a);
    kvs_codec_qjl.logits(split, q, 1, attend, n, b);
    for (uint32_t t = 0; t < n; t++) {
        double truth = rt_dot(q, k + (size_t)t * D, D);

        err_plain += pow(a[t] - truth, 2);
        err_split += pow(b[t] - truth, 2);
    }
    ck_assert_msg(err_split < 0.5 * err_plain, "split %.4g, plain %.4g", err_split, err_plain);
    kvs_codec_qjl.destroy(plain);
    kvs_codec_qjl.destroy(split);
    free(k);
}
END_TEST

static Suite *qjl_suite(void)
{
    Suite *s = suite_create("qjl");
    TCase *tc = tcase_create("core");

    tcase_add_test(tc, estimates_are_unbiased_and_shrink_with_m);
    tcase_add_test(tc, fast_path_matches_reference);
    tcase_add_test(tc, bytes_are_signs_plus_f16_norm);
    tcase_add_test(tc, outlier_sketch_beats_plain_on_outlier_keys);
    tcase_set_timeout(tc, 120);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return kvs_test_run(qjl_suite());
}
