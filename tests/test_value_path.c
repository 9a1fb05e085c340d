/* test_value_path.c: value-path approximations: top-k, threshold, low-rank
** and window codecs against an exact sum computed here. */
#include "testutil.h"

#include "kernels/value/value_impl.h"
#include "rotation_testutil.h"

#include <math.h>
#include <stdio.h>

/* Softmax weights over n random logits for each of group queries. */
static void random_weights(kvs_rot_rng_t *rng, float *w, uint32_t group, uint32_t n, double temp)
{
    for (uint32_t g = 0; g < group; g++) {
        double sum = 0.0;

        for (uint32_t t = 0; t < n; t++) {
            w[g * n + t] = (float)exp(temp * kvs_rot_rng_normal(rng));
            sum += w[g * n + t];
        }
        for (uint32_t t = 0; t < n; t++)
            w[g * n + t] = (float)(w[g * n + t] / sum);
    }
}

/* out[g] = sum over t with mask[g*n+t] of w v. */
static void masked_sum(const float *v, const float *w, const uint8_t *mask, uint32_t group,
                       uint32_t n, uint32_t d, double *out)
{
    memset(out, 0, (size_t)group * d * sizeof *out);
    for (uint32_t g = 0; g < group; g++)
        for (uint32_t t = 0; t < n; t++)
            if (mask[g * n + t])
                for (uint32_t j = 0; j < d; j++)
                    out[g * d + j] += (double)w[g * n + t] * v[(size_t)t * d + j];
}

static void assert_close(const float *got, const double *want, uint32_t count, double tol,
                         const char *what)
{
    for (uint32_t i = 0; i < count; i++)
        ck_assert_msg(fabs(got[i] - want[i]) <= tol * (1.0 + fabs(want[i])),
                      "%s: [%u] = %.7g, expected %.7g", what, i, got[i], want[i]);
}

START_TEST(topk_all_reproduces_dense)
{
    const uint32_t n = 120, d = 64, group = 3;
    kvs_kernel_dims_t dims = rt_dims(d, group, 1);
    float *v = malloc((size_t)n * d * sizeof *v), w[3 * 120], out[3 * 64];
    uint8_t attend[120], mask[3 * 120];
    double want[3 * 64];
    kvs_rot_rng_t rng;
    const char *variants[] = {"k=120", "k=1000", "k=100%,correction=mean",
                              "k=120,correction=none"};

    kvs_rot_rng_init(&rng, 2);
    rt_random_normal(&rng, v, n * d, 1.0);
    random_weights(&rng, w, group, n, 2.0);
    memset(attend, 1, n);
    memset(mask, 1, sizeof mask);
    masked_sum(v, w, mask, group, n, d, want);
    for (size_t i = 0; i < 4; i++) {
        void *st = rt_stream(&kvs_codec_topk, variants[i], &dims, v, n, 1);

        kvs_codec_topk.output(st, w, group, attend, n, out);
        assert_close(out, want, group * d, 1e-6, variants[i]);
        kvs_codec_topk.destroy(st);
    }
    free(v);
}
END_TEST

/* Reference top-k mask: the k largest attended weights of each query. */
static void topk_mask(const float *w, const uint8_t *attend, uint32_t group, uint32_t n,
                      uint32_t k, uint8_t *mask)
{
    for (uint32_t g = 0; g < group; g++) {
        memset(mask + g * n, 0, n);
        for (uint32_t i = 0; i < k; i++) {
            uint32_t best = n;

            for (uint32_t t = 0; t < n; t++)
                if (attend[t] && !mask[g * n + t] && (best == n || w[g * n + t] > w[g * n + best]))
                    best = t;
            if (best < n)
                mask[g * n + best] = 1;
        }
    }
}

START_TEST(topk_corrections_match_reference)
{
    const uint32_t n = 200, d = 16, group = 2, k = 10;
    kvs_kernel_dims_t dims = rt_dims(d, group, 1);
    float *v = malloc((size_t)n * d * sizeof *v), w[2 * 200], out[2 * 16];
    uint8_t attend[200], mask[2 * 200];
    double want[2 * 16], mean[16];
    kvs_rot_rng_t rng;
    void *st;

    kvs_rot_rng_init(&rng, 3);
    rt_random_normal(&rng, v, n * d, 1.0);
    random_weights(&rng, w, group, n, 1.5);
    for (uint32_t t = 0; t < n; t++)
        attend[t] = (uint8_t)(t % 9 != 4);
    topk_mask(w, attend, group, n, k, mask);
    masked_sum(v, w, mask, group, n, d, want);

    st = rt_stream(&kvs_codec_topk, "k=10,correction=none", &dims, v, n, 1);
    kvs_codec_topk.output(st, w, group, attend, n, out);
    assert_close(out, want, group * d, 1e-6, "none");
    kvs_codec_topk.destroy(st);

    /* renorm: divide by the selected share of the attended mass. */
    st = rt_stream(&kvs_codec_topk, "k=10,correction=renorm", &dims, v, n, 1);
    kvs_codec_topk.output(st, w, group, attend, n, out);
    for (uint32_t g = 0; g < group; g++) {
        double total = 0.0, sel = 0.0;
        double scaled[16];

        for (uint32_t t = 0; t < n; t++) {
            total += attend[t] ? w[g * n + t] : 0.0;
            sel += mask[g * n + t] ? w[g * n + t] : 0.0;
        }
        for (uint32_t j = 0; j < d; j++)
            scaled[j] = want[g * d + j] * total / sel;
        assert_close(out + g * d, scaled, d, 1e-5, "renorm");
    }
    kvs_codec_topk.destroy(st);

    /* mean: add the unselected attended mass times the attended mean. */
    memset(mean, 0, sizeof mean);
    {
        uint32_t n_att = 0;

        for (uint32_t t = 0; t < n; t++) {
            if (!attend[t])
                continue;
            n_att++;
            for (uint32_t j = 0; j < d; j++)
                mean[j] += v[t * d + j];
        }
        for (uint32_t j = 0; j < d; j++)
            mean[j] /= n_att;
    }
    st = rt_stream(&kvs_codec_topk, "k=10,correction=mean", &dims, v, n, 1);
    kvs_codec_topk.output(st, w, group, attend, n, out);
    for (uint32_t g = 0; g < group; g++) {
        double rest = 0.0, corrected[16];

        for (uint32_t t = 0; t < n; t++)
            rest += (attend[t] && !mask[g * n + t]) ? w[g * n + t] : 0.0;
        for (uint32_t j = 0; j < d; j++)
            corrected[j] = want[g * d + j] + rest * mean[j];
        assert_close(out + g * d, corrected, d, 1e-5, "mean");
    }
    kvs_codec_topk.destroy(st);
    free(v);
}
END_TEST

START_TEST(threshold_skips_small_weights)
{
    const uint32_t n = 150, d = 8, group = 2;
    kvs_kernel_dims_t dims = rt_dims(d, group, 1);
    float *v = malloc((size_t)n * d * sizeof *v), w[2 * 150], out[2 * 8];
    uint8_t attend[150], mask[2 * 150];
    double want[2 * 8];
    kvs_rot_rng_t rng;
    void *st;

    kvs_rot_rng_init(&rng, 4);
    rt_random_normal(&rng, v, n * d, 1.0);
    random_weights(&rng, w, group, n, 2.0);
    memset(attend, 1, n);

    /* tau = 0 keeps everything. */
    memset(mask, 1, sizeof mask);
    masked_sum(v, w, mask, group, n, d, want);
    st = rt_stream(&kvs_codec_threshold, "tau=0", &dims, v, n, 1);
    kvs_codec_threshold.output(st, w, group, attend, n, out);
    assert_close(out, want, group * d, 1e-6, "tau=0");
    kvs_codec_threshold.destroy(st);

    /* tau = 0.01 without correction: only weights >= 0.01. */
    for (uint32_t i = 0; i < group * n; i++)
        mask[i] = (uint8_t)(w[i] >= 0.01f);
    masked_sum(v, w, mask, group, n, d, want);
    st = rt_stream(&kvs_codec_threshold, "tau=0.01,correction=none", &dims, v, n, 1);
    kvs_codec_threshold.output(st, w, group, attend, n, out);
    assert_close(out, want, group * d, 1e-6, "tau=0.01");
    kvs_codec_threshold.destroy(st);

    /* tau above every weight keeps the largest one, renormalized to the
    ** whole mass: the output is that position's value. */
    st = rt_stream(&kvs_codec_threshold, "tau=1", &dims, v, n, 1);
    kvs_codec_threshold.output(st, w, group, attend, n, out);
    for (uint32_t g = 0; g < group; g++) {
        uint32_t best = 0;
        double expect[8];

        for (uint32_t t = 1; t < n; t++)
            if (w[g * n + t] > w[g * n + best])
                best = t;
        for (uint32_t j = 0; j < d; j++)
            expect[j] = v[best * d + j];
        assert_close(out + g * d, expect, d, 1e-5, "tau=1");
    }
    kvs_codec_threshold.destroy(st);
    free(v);
}
END_TEST

START_TEST(jacobi_diagonalizes_symmetric_matrix)
{
    const uint32_t n = 12;
    double a[144], copy[144], values[12], vecs[144];
    kvs_rot_rng_t rng;

    kvs_rot_rng_init(&rng, 5);
    for (uint32_t i = 0; i < n; i++)
        for (uint32_t j = 0; j <= i; j++)
            a[i * n + j] = a[j * n + i] = kvs_rot_rng_normal(&rng);
    memcpy(copy, a, sizeof a);
    ck_assert_int_eq(kvs_val_symmetric_eigen(a, n, values, vecs), KVS_OK);
    for (uint32_t c = 0; c + 1 < n; c++)
        ck_assert_double_ge(values[c], values[c + 1]);
    /* A v_c = lambda_c v_c, and the v_c are orthonormal. */
    for (uint32_t c = 0; c < n; c++) {
        for (uint32_t i = 0; i < n; i++) {
            double av = 0.0;

            for (uint32_t j = 0; j < n; j++)
                av += copy[i * n + j] * vecs[j * n + c];
            ck_assert_double_eq_tol(av, values[c] * vecs[i * n + c], 1e-10);
        }
        for (uint32_t c2 = 0; c2 < n; c2++) {
            double dot = 0.0;

            for (uint32_t i = 0; i < n; i++)
                dot += vecs[i * n + c] * vecs[i * n + c2];
            ck_assert_double_eq_tol(dot, c == c2 ? 1.0 : 0.0, 1e-12);
        }
    }
}
END_TEST

START_TEST(lowrank_full_rank_reproduces_dense)
{
    const uint32_t n = 90, d = 64, group = 3, n_prompt = 70;
    kvs_kernel_dims_t dims = rt_dims(d, group, 1);
    float *v = malloc((size_t)n * d * sizeof *v), w[3 * 90], out[3 * 64];
    uint8_t attend[90], mask[3 * 90];
    double want[3 * 64];
    kvs_rot_rng_t rng;
    void *st;

    kvs_rot_rng_init(&rng, 6);
    rt_random_normal(&rng, v, n * d, 1.0);
    random_weights(&rng, w, group, n, 1.0);
    memset(attend, 1, n);
    memset(mask, 1, sizeof mask);
    masked_sum(v, w, mask, group, n, d, want);
    st = rt_stream(&kvs_codec_lowrank, "rank=64", &dims, v, n_prompt, 1);
    for (uint32_t t = n_prompt; t < n; t++)
        ck_assert_int_eq(kvs_codec_lowrank.append(st, v + (size_t)t * d, NULL), KVS_OK);
    kvs_codec_lowrank.output(st, w, group, attend, n, out);
    assert_close(out, want, group * d, 1e-5, "rank=d");
    ck_assert_uint_eq(kvs_codec_lowrank.stored_bytes(st), (uint64_t)(n * 64 + 64 * 64) * 4);
    kvs_codec_lowrank.destroy(st);
    free(v);
}
END_TEST

START_TEST(lowrank_recovers_subspace_values)
{
    /* Values in a 5-dimensional subspace: rank 5 is exact, for decode
    ** values in the same subspace too; rank 4 is not. */
    const uint32_t n = 100, d = 32, group = 1, r = 5, n_prompt = 60;
    kvs_kernel_dims_t dims = rt_dims(d, group, 1);
    float *v = malloc((size_t)n * d * sizeof *v), basis[5 * 32], w[100], out[32];
    uint8_t attend[100], mask[100];
    double want[32], err4 = 0.0;
    kvs_rot_rng_t rng;
    void *st;

    kvs_rot_rng_init(&rng, 7);
    rt_random_normal(&rng, basis, r * d, 1.0);
    for (uint32_t t = 0; t < n; t++) {
        for (uint32_t j = 0; j < d; j++) {
            double s = 0.0;

            for (uint32_t k = 0; k < r; k++)
                s += basis[k * d + j] * (double)((int)((t * 7 + k * 3 + t * k) % 11) - 5);
            v[t * d + j] = (float)s;
        }
    }
    random_weights(&rng, w, group, n, 1.0);
    memset(attend, 1, n);
    memset(mask, 1, sizeof mask);
    masked_sum(v, w, mask, group, n, d, want);

    st = rt_stream(&kvs_codec_lowrank, "rank=5", &dims, v, n_prompt, 1);
    for (uint32_t t = n_prompt; t < n; t++)
        ck_assert_int_eq(kvs_codec_lowrank.append(st, v + (size_t)t * d, NULL), KVS_OK);
    kvs_codec_lowrank.output(st, w, group, attend, n, out);
    assert_close(out, want, d, 1e-4, "rank=5");
    kvs_codec_lowrank.destroy(st);

    st = rt_stream(&kvs_codec_lowrank, "rank=4", &dims, v, n_prompt, 1);
    for (uint32_t t = n_prompt; t < n; t++)
        ck_assert_int_eq(kvs_codec_lowrank.append(st, v + (size_t)t * d, NULL), KVS_OK);
    kvs_codec_lowrank.output(st, w, group, attend, n, out);
    for (uint32_t j = 0; j < d; j++)
        err4 += pow(out[j] - want[j], 2);
    ck_assert_double_gt(err4, 1e-3);
    kvs_codec_lowrank.destroy(st);
    free(v);
}
END_TEST

START_TEST(lowrank_rejects_rank_above_d)
{
    kvs_kernel_dims_t dims = rt_dims(8, 1, 1);
    kvs_params_t p;

    rt_params(kvs_codec_lowrank.params, "rank=16", &p);
    ck_assert_int_eq(kvs_codec_lowrank.check(&p, &dims), KVS_ERR_KERNEL_SPEC);
    ck_assert_ptr_nonnull(strstr(kvs_error_message(), "rank <= 8"));
}
END_TEST

START_TEST(window_exact_parts_and_inner_middle)
{
    const uint32_t n = 300, d = 64, group = 2, sinks = 4, recent = 32;
    const uint32_t n_mid = n - sinks - recent;
    kvs_kernel_dims_t dims = rt_dims(d, group, 21);
    float *v = malloc((size_t)n * d * sizeof *v), w[2 * 300], out[2 * 64];
    float w_mid[2 * 264], mid_out[2 * 64];
    uint8_t attend[300], mask[2 * 300];
    double want[2 * 64];
    kvs_rot_rng_t rng;
    void *st, *inner;

    kvs_rot_rng_init(&rng, 8);
    rt_random_normal(&rng, v, n * d, 1.0);
    random_weights(&rng, w, group, n, 1.0);
    for (uint32_t t = 0; t < n; t++)
        attend[t] = (uint8_t)(t % 13 != 5);

    /* Exact part of the reference: sinks and the recent window. */
    for (uint32_t g = 0; g < group; g++)
        for (uint32_t t = 0; t < n; t++)
            mask[g * n + t] = (uint8_t)(attend[t] && (t < sinks || t >= n - recent));
    masked_sum(v, w, mask, group, n, d, want);

    /* Middle part of the reference: the same inner codec over the middle. */
    inner = rt_stream(&kvs_codec_turboquant_mse, "bits=2", &dims, v + (size_t)sinks * d, n_mid,
                      0);
    for (uint32_t g = 0; g < group; g++)
        memcpy(w_mid + g * n_mid, w + g * n + sinks, n_mid * sizeof *w);
    kvs_codec_turboquant_mse.output(inner, w_mid, group, attend + sinks, n_mid, mid_out);
    for (uint32_t i = 0; i < group * d; i++)
        want[i] += mid_out[i];

    st = rt_stream(&kvs_codec_window, "sinks=4,recent=32,inner=turboquant-mse,bits=2", &dims, v,
                   n, 1);
    kvs_codec_window.output(st, w, group, attend, n, out);
    assert_close(out, want, group * d, 1e-5, "window");
    ck_assert_uint_eq(kvs_codec_window.stored_bytes(st),
                      (uint64_t)(sinks + recent) * d * 4 +
                          kvs_codec_turboquant_mse.stored_bytes(inner));
    kvs_codec_window.destroy(st);
    kvs_codec_turboquant_mse.destroy(inner);
    free(v);
}
END_TEST

START_TEST(window_covering_context_is_exact)
{
    const uint32_t n = 50, d = 8, group = 1;
    kvs_kernel_dims_t dims = rt_dims(d, group, 1);
    float v[50 * 8], w[50], out[8];
    uint8_t attend[50], mask[50];
    double want[8];
    kvs_rot_rng_t rng;
    void *st;

    kvs_rot_rng_init(&rng, 9);
    rt_random_normal(&rng, v, n * d, 1.0);
    random_weights(&rng, w, group, n, 1.0);
    memset(attend, 1, n);
    memset(mask, 1, n);
    masked_sum(v, w, mask, group, n, d, want);
    st = rt_stream(&kvs_codec_window, "sinks=10,recent=40,inner=qjl", &dims, v, n, 1);
    kvs_codec_window.output(st, w, group, attend, n, out);
    assert_close(out, want, d, 1e-6, "window covers all");
    kvs_codec_window.destroy(st);
}
END_TEST

START_TEST(value_costs_count_bytes)
{
    kvs_kernel_dims_t dims = rt_dims(64, 3, 1);
    kvs_params_t p;
    kvs_part_cost_t cost;

    rt_params(kvs_codec_topk.params, "k=32", &p);
    kvs_codec_topk.cost(&p, &dims, KVS_CODEC_VALUE, 1000, &cost);
    ck_assert_double_eq(cost.bytes_per_token, 256.0);
    ck_assert_uint_eq(cost.stored_bytes, 1000 * 256);
    ck_assert_uint_eq(cost.read_bytes, 32 * 256);

    rt_params(kvs_codec_lowrank.params, "rank=16", &p);
    kvs_codec_lowrank.cost(&p, &dims, KVS_CODEC_VALUE, 1000, &cost);
    ck_assert_double_eq(cost.bytes_per_token, 64.0);
    ck_assert_uint_eq(cost.stored_bytes, 1000 * 64 + 64 * 16 * 4);

    /* 36 exact positions of 256 B, then 964 TurboQuant-MSE 3-bit rows of
    ** 26 B plus the Hadamard signs and the codebook. */
    rt_params(kvs_codec_window.params, "sinks=4,recent=32,inner=turboquant-mse,bits=3", &p);
    kvs_codec_window.cost(&p, &dims, KVS_CODEC_VALUE, 1000, &cost);
    ck_assert_double_eq(cost.bytes_per_token, 26.0);
    ck_assert_uint_eq(cost.stored_bytes, 36 * 256 + 964 * 26 + 8 + 32);
}
END_TEST

static Suite *value_path_suite(void)
{
    Suite *s = suite_create("value_path");
    TCase *tc = tcase_create("core");

    tcase_add_test(tc, topk_all_reproduces_dense);
    tcase_add_test(tc, topk_corrections_match_reference);
    tcase_add_test(tc, threshold_skips_small_weights);
    tcase_add_test(tc, jacobi_diagonalizes_symmetric_matrix);
    tcase_add_test(tc, lowrank_full_rank_reproduces_dense);
    tcase_add_test(tc, lowrank_recovers_subspace_values);
    tcase_add_test(tc, lowrank_rejects_rank_above_d);
    tcase_add_test(tc, window_exact_parts_and_inner_middle);
    tcase_add_test(tc, window_covering_context_is_exact);
    tcase_add_test(tc, value_costs_count_bytes);
    tcase_set_timeout(tc, 60);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return kvs_test_run(value_path_suite());
}
