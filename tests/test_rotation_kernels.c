/* test_rotation_kernels.c: the rotation, sketch and value codecs through
** kernel specs and instances, as the replayer drives them. */
#include "testutil.h"

#include "kernels/kernel.h"
#include "kernels/rotation/rotation_impl.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define D 64
#define GROUP 3
#define N_PROMPT 150
#define N_DECODE 20

typedef struct run_result {
    float logits[GROUP * (N_PROMPT + N_DECODE)];
    float weights[GROUP * (N_PROMPT + N_DECODE)];
    float out[GROUP * D];
    uint64_t stored;
} run_result_t;

/* Runs a spec over one seeded stream: a prompt, then decode positions, then
** one attention step. */
static void run_spec(const char *text, run_result_t *r)
{
    const uint32_t n = N_PROMPT + N_DECODE;
    kvs_kernel_dims_t dims = {D, GROUP, 2, 2, 1, 0, 99};
    kvs_kernel_spec_t *spec;
    kvs_kernel_t *kernel;
    kvs_rot_rng_t rng;
    float k[D], v[D], q[GROUP * D];
    kvs_attend_out_t res = {r->logits, r->weights, r->out};

    ck_assert_msg(kvs_kernel_spec_parse(text, &spec) == KVS_OK, "%s: %s", text,
                  kvs_error_message());
    ck_assert_msg(kvs_kernel_create(spec, &dims, &kernel) == KVS_OK, "%s: %s", text,
                  kvs_error_message());
    kvs_rot_rng_init(&rng, 5);
    for (uint32_t t = 0; t < n; t++) {
        for (uint32_t j = 0; j < D; j++) {
            k[j] = (float)(kvs_rot_rng_normal(&rng) * (j % 16 == 3 ? 4.0 : 1.0));
            v[j] = (float)kvs_rot_rng_normal(&rng);
        }
        ck_assert_int_eq(kvs_kernel_append(kernel, k, k, v), KVS_OK);
        if (t + 1 == N_PROMPT) {
            for (uint32_t i = 0; i < GROUP * D; i++)
                q[i] = (float)kvs_rot_rng_normal(&rng);
            ck_assert_int_eq(kvs_kernel_end_prefill(kernel, q, 1), KVS_OK);
        }
    }
    for (uint32_t i = 0; i < GROUP * D; i++)
        q[i] = (float)(2.0 * kvs_rot_rng_normal(&rng));
    ck_assert_msg(kvs_kernel_attend(kernel, q, &res) == KVS_OK, "%s: %s", text,
                  kvs_error_message());
    r->stored = kvs_kernel_stored_bytes(kernel);
    kvs_kernel_destroy(kernel);
    kvs_kernel_spec_free(spec);
}

START_TEST(every_key_and_value_pair_runs)
{
    const char *keys[] = {"turboquant-mse:bits=3", "turboquant-prod:bits=3", "qjl:bits=3",
                          "polarquant", "turboquant-prod:bits=2,outliers=0.5,outlier_bits=3"};
    const char *values[] = {"dense",         "topk:k=16",         "topk:k=10%,correction=mean",
                            "threshold",     "lowrank:rank=8",    "window:sinks=4,recent=16",
                            "turboquant-mse", "turboquant-prod",   "qjl",
                            "polarquant"};
    static run_result_t r;

    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        for (size_t j = 0; j < sizeof values / sizeof values[0]; j++) {
            char text[256];

            snprintf(text, sizeof text, "%s/%s", keys[i], values[j]);
            run_spec(text, &r);
            for (uint32_t g = 0; g < GROUP; g++) {
                double sum = 0.0;

                for (uint32_t t = 0; t < N_PROMPT + N_DECODE; t++)
                    sum += r.weights[g * (N_PROMPT + N_DECODE) + t];
                ck_assert_msg(fabs(sum - 1.0) < 1e-5, "%s: weights sum to %.7f", text, sum);
            }
            for (uint32_t x = 0; x < GROUP * D; x++)
                ck_assert_msg(isfinite(r.out[x]), "%s: output %u not finite", text, x);
            ck_assert_uint_gt(r.stored, 0);
        }
    }
}
END_TEST

static void assert_same_output(const char *a, const char *b, double tol)
{
    static run_result_t ra, rb;

    run_spec(a, &ra);
    run_spec(b, &rb);
    for (uint32_t i = 0; i < GROUP * (N_PROMPT + N_DECODE); i++)
        ck_assert_msg(ra.logits[i] == rb.logits[i], "%s vs %s: logit %u differs", a, b, i);
    for (uint32_t i = 0; i < GROUP * D; i++)
        ck_assert_msg(fabs(ra.out[i] - rb.out[i]) <= tol * (1.0 + fabs(rb.out[i])),
                      "%s vs %s: out[%u] %.7f vs %.7f", a, b, i, ra.out[i], rb.out[i]);
}

START_TEST(exact_limits_match_dense_values)
{
    /* Top-k with k = all, threshold 0, low rank with r = d and a window
    ** covering the context reproduce the compressed-key baseline with
    ** exact values. */
    assert_same_output("turboquant-prod:bits=3/topk:k=100%", "turboquant-prod:bits=3/dense", 1e-6);
    assert_same_output("turboquant-prod:bits=3/topk:k=170,correction=mean",
                       "turboquant-prod:bits=3/dense", 1e-6);
    assert_same_output("qjl/threshold:tau=0", "qjl/dense", 1e-6);
    assert_same_output("turboquant-mse/lowrank:rank=64", "turboquant-mse/dense", 1e-5);
    assert_same_output("polarquant/window:sinks=100,recent=100", "polarquant/dense", 1e-6);
}
END_TEST

START_TEST(presets_expand_with_mixed_bytes)
{
    kvs_kernel_dims_t dims = {D, GROUP, 1, 1, 0, 0, 1};
    kvs_kernel_spec_t *spec;
    kvs_kernel_cost_t cost;

    /* Keys, turboquant-prod: 32 channels at 2 bits (4 + 4 + 2 + 2 B) and 32
    ** at 3 bits (8 + 4 + 2 + 2 B); values, turboquant-mse: 32 at 2 bits
    ** (8 + 2 B) and 32 at 3 bits (12 + 2 B). */
    ck_assert_int_eq(kvs_kernel_spec_parse("turboquant-2.5", &spec), KVS_OK);
    ck_assert_int_eq(kvs_kernel_spec_cost(spec, &dims, 100, &cost), KVS_OK);
    ck_assert_double_eq(cost.bytes_per_token, 12 + 16 + 10 + 14);
    ck_assert_int_eq(kvs_kernel_spec_compressed_exec(spec), 1);
    kvs_kernel_spec_free(spec);

    /* d = 64, b = 3: prod keys 28 B and MSE values 26 B. */
    ck_assert_int_eq(kvs_kernel_spec_parse("turboquant:bits=3", &spec), KVS_OK);
    ck_assert_int_eq(kvs_kernel_spec_cost(spec, &dims, 100, &cost), KVS_OK);
    ck_assert_double_eq(cost.bytes_per_token, 28 + 26);
    kvs_kernel_spec_free(spec);
}
END_TEST

START_TEST(bad_specs_fail_with_message)
{
    kvs_kernel_spec_t *spec = NULL;
    kvs_kernel_t *kernel = NULL;
    kvs_kernel_dims_t dims8 = {8, 2, 1, 1, 0, 0, 1};

    ck_assert_int_eq(kvs_kernel_spec_parse("turboquant-mse:bits=7", &spec), KVS_ERR_KERNEL_SPEC);
    ck_assert_ptr_nonnull(strstr(kvs_error_message(), "bits"));
    ck_assert_int_eq(kvs_kernel_spec_parse("qjl:rotation=dense", &spec), KVS_ERR_KERNEL_SPEC);

    ck_assert_int_eq(kvs_kernel_spec_parse("polarquant", &spec), KVS_OK);
    ck_assert_int_eq(kvs_kernel_create(spec, &dims8, &kernel), KVS_ERR_KERNEL_SPEC);
    ck_assert_ptr_nonnull(strstr(kvs_error_message(), "levels=3"));
    kvs_kernel_spec_free(spec);

    ck_assert_int_eq(kvs_kernel_spec_parse("turboquant-prod/lowrank", &spec), KVS_OK);
    ck_assert_int_eq(kvs_kernel_create(spec, &dims8, &kernel), KVS_ERR_KERNEL_SPEC);
    ck_assert_ptr_nonnull(strstr(kvs_error_message(), "rank <= 8"));
    kvs_kernel_spec_free(spec);
}
END_TEST

START_TEST(key_window_is_exact_inside)
{
    static run_result_t win, full;
    const uint32_t n = N_PROMPT + N_DECODE;
    kvs_kernel_spec_t *spec;
    kvs_kernel_t *kernel;
    kvs_kernel_dims_t dims = {D, GROUP, 2, 2, 1, 0, 99};
    float x[D] = {1.0f};

    /* Sinks and the recent window match the exact keys; the middle
    ** differs, because it is coded at 2 bits. */
    run_spec("window:sinks=4,recent=16,inner=turboquant-mse,bits=2/dense", &win);
    run_spec("dense/dense", &full);
    for (uint32_t g = 0; g < GROUP; g++) {
        double mid_err = 0.0;

        for (uint32_t t = 0; t < n; t++) {
            float a = win.logits[g * n + t], b = full.logits[g * n + t];

            if (t < 4 || t >= n - 16)
                ck_assert_float_eq_tol(a, b, 1e-4f * (1.0f + fabsf(b)));
            else
                mid_err += fabs(a - b);
        }
        ck_assert_double_gt(mid_err, 1.0);
    }

    /* lowrank has no key path, which the first key append reports. */
    ck_assert_int_eq(kvs_kernel_spec_parse("window:inner=lowrank,rank=8/dense", &spec), KVS_OK);
    ck_assert_int_eq(kvs_kernel_create(spec, &dims, &kernel), KVS_OK);
    ck_assert_int_eq(kvs_kernel_append(kernel, x, x, x), KVS_ERR_KERNEL_SPEC);
    ck_assert_ptr_nonnull(strstr(kvs_error_message(), "no key path"));
    kvs_kernel_destroy(kernel);
    kvs_kernel_spec_free(spec);
}
END_TEST

START_TEST(centering_reduces_logit_error)
{
    /* Centering moves the coded vectors, so 4-bit logits get closer to the
    ** exact ones on keys with a large shared mean (channel 3 of each 16). */
    static run_result_t plain, centered, full;
    const uint32_t n = N_PROMPT + N_DECODE;
    double err_plain = 0.0, err_centered = 0.0;

    run_spec("turboquant-mse:bits=4/dense", &plain);
    run_spec("turboquant-mse:bits=4,center=1/dense", &centered);
    run_spec("dense/dense", &full);
    for (uint32_t i = 0; i < GROUP * n; i++) {
        err_plain += pow(plain.logits[i] - full.logits[i], 2);
        err_centered += pow(centered.logits[i] - full.logits[i], 2);
    }
    ck_assert_msg(err_centered < err_plain, "centered %.4g, plain %.4g", err_centered, err_plain);
    ck_assert_uint_eq(centered.stored, plain.stored + D * 4); /* the key mean, F32 */
}
END_TEST

static Suite *rotation_kernels_suite(void)
{
    Suite *s = suite_create("rotation_kernels");
    TCase *tc = tcase_create("core");

    tcase_add_test(tc, every_key_and_value_pair_runs);
    tcase_add_test(tc, exact_limits_match_dense_values);
    tcase_add_test(tc, presets_expand_with_mixed_bytes);
    tcase_add_test(tc, bad_specs_fail_with_message);
    tcase_add_test(tc, key_window_is_exact_inside);
    tcase_add_test(tc, centering_reduces_logit_error);
    tcase_set_timeout(tc, 60);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return kvs_test_run(rotation_kernels_suite());
}
