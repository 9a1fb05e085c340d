/* test_metrics.c: fidelity metrics against hand-computed values. */
#include "testutil.h"

#include "analysis/attention.h"
#include "analysis/metrics.h"

#include <math.h>
#include <stdlib.h>

/* A step where the kernel returns exactly the exact attention gives zero
** error, full mass and full agreement. */
START_TEST(identical_step_has_zero_error)
{
    float q[4] = {0.5f, -1.0f, 0.25f, 2.0f};
    float kv[6 * 4];
    float logits[6], weights[6], out[4];
    kvs_metrics_acc_t *acc = kvs_metrics_acc_create();
    kvs_metrics_t m;

    for (int i = 0; i < 24; i++)
        kv[i] = (float)sin(i * 0.7);
    kvs_exact_attention(q, kv, kv, 6, 4, 4, logits, weights, out);
    kvs_metrics_add_step(acc, 10, 6, logits, weights, logits, weights, out, out, 4);
    kvs_metrics_finish(acc, &m);

    ck_assert_uint_eq(m.n_steps, 1);
    ck_assert_double_eq(m.logit_rmse, 0);
    ck_assert_double_eq(m.logit_max, 0);
    ck_assert_double_eq(m.kl, 0);
    ck_assert_double_eq(m.out_rel_l2, 0);
    ck_assert_double_eq_tol(m.out_cos, 1, 1e-12);
    ck_assert_double_eq_tol(m.mass_kept, 1, 1e-6);
    ck_assert_double_eq(m.top1, 1);
    ck_assert_double_eq(m.top8, 1);
    ck_assert_double_eq(m.recall8, 1);
    kvs_metrics_acc_destroy(acc);
}
END_TEST

/* Exact attention on a two-token case computed by hand. */
START_TEST(exact_attention_two_tokens)
{
    float q[2] = {1, 0};
    float keys[4] = {2, 0, 0, 2};   /* logits 2/sqrt2 and 0 */
    float values[4] = {1, 0, 0, 1};
    float logits[2], weights[2], out[2];
    double l0 = 2 / sqrt(2.0);
    double w0 = exp(l0) / (exp(l0) + 1);

    kvs_exact_attention(q, keys, values, 2, 2, 2, logits, weights, out);
    ck_assert_double_eq_tol(logits[0], l0, 1e-6);
    ck_assert_double_eq_tol(logits[1], 0, 1e-7);
    ck_assert_double_eq_tol(weights[0], w0, 1e-6);
    ck_assert_double_eq_tol(out[0], w0, 1e-6);
    ck_assert_double_eq_tol(out[1], 1 - w0, 1e-6);
}
END_TEST

/* An evicted position is left out of the logit error and KL and shows up
** as lost mass; hand computation on three positions. */
START_TEST(evicted_position_counts_as_mass_lost)
{
    float exact_logits[3] = {1.0f, 0.0f, -1.0f};
    float exact_w[3], approx_w[3];
    float approx_logits[3] = {1.5f, 0.0f, -INFINITY};
    float out[2] = {1, 1}, approx_out[2] = {1, 2};
    double z = exp(1.0) + 1 + exp(-1.0);
    double za = exp(1.5) + 1;
    kvs_metrics_acc_t *acc = kvs_metrics_acc_create();
    kvs_metrics_t m;

    for (int t = 0; t < 3; t++)
        exact_w[t] = (float)(exp(exact_logits[t]) / z);
    approx_w[0] = (float)(exp(1.5) / za);
    approx_w[1] = (float)(1 / za);
    approx_w[2] = 0;
    kvs_metrics_add_step(acc, 0, 3, exact_logits, exact_w, approx_logits, approx_w, out, approx_out, 2);
    kvs_metrics_finish(acc, &m);

    double mass = (exp(1.0) + 1) / z;
    double p0 = exp(1.0) / z / mass, p1 = 1 / z / mass;
    double kl = p0 * log(p0 / (exp(1.5) / za)) + p1 * log(p1 / (1 / za));
    ck_assert_double_eq_tol(m.mass_kept, mass, 1e-6);
    ck_assert_double_eq_tol(m.kl, kl, 1e-6);
    ck_assert_double_eq_tol(m.logit_mae, 0.25, 1e-7);        /* (0.5 + 0) / 2 */
    ck_assert_double_eq_tol(m.logit_rmse, sqrt(0.125), 1e-7);
    ck_assert_double_eq_tol(m.logit_max, 0.5, 1e-7);
    ck_assert_double_eq_tol(m.recall8, 2.0 / 3.0, 1e-12);     /* 2 of 3 positions attended */
    ck_assert_double_eq_tol(m.out_rel_l2, 1 / sqrt(2.0), 1e-7);
    ck_assert_double_eq_tol(m.out_cos, 3 / (sqrt(2.0) * sqrt(5.0)), 1e-7);
    ck_assert_double_eq(m.top1, 1);
    kvs_metrics_acc_destroy(acc);
}
END_TEST

/* Percentiles and per-position buckets over many steps. */
START_TEST(percentiles_and_buckets)
{
    kvs_metrics_acc_t *acc = kvs_metrics_acc_create();
    float l[1] = {0}, w[1] = {1};
    float o[1] = {1};
    kvs_metrics_t m;

    /* Step s has output error s/100 (s = 1..100), at position 2*s. */
    for (int s = 1; s <= 100; s++) {
        float oh[1] = {1.0f + s / 100.0f};
        kvs_metrics_add_step(acc, 2 * s, 1, l, w, l, w, o, oh, 1);
    }
    kvs_metrics_finish(acc, &m);
    ck_assert_uint_eq(m.n_steps, 100);
    ck_assert_double_eq_tol(m.out_rel_l2_p50, 0.50, 1e-6);
    ck_assert_double_eq_tol(m.out_rel_l2_p95, 0.95, 1e-6);
    ck_assert_double_eq_tol(m.out_rel_l2_max, 1.00, 1e-6);
    ck_assert_double_eq_tol(m.out_rel_l2, 0.505, 1e-6);

    /* Positions 2..200 fall in buckets 0..3 of 64 positions. */
    ck_assert_uint_eq(kvs_metrics_n_buckets(acc), 4);
    uint32_t steps;
    double err, rmse;
    kvs_metrics_bucket(acc, 0, &steps, &err, &rmse);
    ck_assert_uint_eq(steps, 31);   /* positions 2, 4, ..., 62 */
    ck_assert_double_eq_tol(err, 0.16, 1e-6);   /* mean of s = 1..31 over 100 */
    kvs_metrics_acc_destroy(acc);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("metrics");
    TCase *tc = tcase_create("core");

    tcase_add_test(tc, identical_step_has_zero_error);
    tcase_add_test(tc, exact_attention_two_tokens);
    tcase_add_test(tc, evicted_position_counts_as_mass_lost);
    tcase_add_test(tc, percentiles_and_buckets);
    suite_add_tcase(s, tc);
    return kvs_test_run(s);
}
