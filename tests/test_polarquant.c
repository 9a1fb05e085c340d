/* test_polarquant.c: PolarQuant codec: bytes, angle codebooks, table path
** against the reference, distortion and the value path. */
#include "testutil.h"

#include "rotation_testutil.h"

#include <math.h>
#include <stdio.h>

#define D 64

static const kvs_codec_i *polar = &kvs_codec_polarquant;

START_TEST(bytes_are_3875_bits_plus_radius)
{
    /* Per 16 coordinates: 8 * 4 + 4 * 2 + 2 * 2 + 1 * 2 = 46 code bits and
    ** one F16 radius, 62 bits = 3.875 bits per coordinate; d = 64 gives
    ** 23 code bytes and 4 radii, 31 bytes. */
    kvs_kernel_dims_t dims = rt_dims(D, 1, 1);
    kvs_params_t p;
    kvs_part_cost_t cost;
    float *x = malloc((size_t)10 * D * sizeof *x);
    kvs_rot_rng_t rng;
    void *st;

    rt_params(polar->params, NULL, &p);
    polar->cost(&p, &dims, KVS_CODEC_KEY, 1000, &cost);
    ck_assert_double_eq(cost.bytes_per_token, 31.0);
    ck_assert_double_eq(cost.bytes_per_token * 8.0 / D, 3.875);
    /* Shared: Hadamard signs 8 B, codebooks 16 + 4 + 4 + 4 F32 angles. */
    ck_assert_uint_eq(cost.shared_bytes, 8 + 28 * 4);

    kvs_rot_rng_init(&rng, 1);
    rt_random_normal(&rng, x, 10 * D, 1.0);
    st = rt_stream(polar, NULL, &dims, x, 10, 1);
    ck_assert_uint_eq(polar->stored_bytes(st), 10 * 31 + cost.shared_bytes);
    polar->destroy(st);
    free(x);
}
END_TEST

START_TEST(check_rejects_block_larger_than_d)
{
    kvs_kernel_dims_t dims = rt_dims(8, 1, 1);
    kvs_params_t p;

    rt_params(polar->params, "levels=4", &p);
    ck_assert_int_eq(polar->check(&p, &dims), KVS_ERR_KERNEL_SPEC);
    ck_assert_ptr_nonnull(strstr(kvs_error_message(), "levels=3"));
    rt_params(polar->params, "levels=3", &p);
    ck_assert_int_eq(polar->check(&p, &dims), KVS_OK);
}
END_TEST

START_TEST(angle_codebooks_follow_level_densities)
{
    /* Level 1 is uniform on [0, 2 pi): centroids (k + 1/2) 2 pi / 16. The
    ** level-l density sin^(2^(l-1) - 1)(2 psi) is symmetric about pi/4, so
    ** centroids pair up to pi/2 and tighten around pi/4 as l grows. */
    double c[16], spread_prev = INFINITY;

    ck_assert_int_eq(kvs_rot_polar_codebook(1, 4, c), KVS_OK);
    for (int k = 0; k < 16; k++)
        ck_assert_double_eq_tol(c[k], (k + 0.5) * 2.0 * M_PI / 16.0, 1e-6);

    for (uint32_t level = 2; level <= 6; level++) {
        ck_assert_int_eq(kvs_rot_polar_codebook(level, 2, c), KVS_OK);
        for (int k = 0; k < 4; k++)
            ck_assert_double_eq_tol(c[k] + c[3 - k], M_PI / 2.0, 1e-6);
        ck_assert_double_lt(c[3] - c[0], spread_prev);
        spread_prev = c[3] - c[0];
    }

    /* Level 2 with one bit: the centroid of sin(2 psi) on [0, pi/4] is
    ** (1/4) / (1/2) = 0.5. */
    ck_assert_int_eq(kvs_rot_polar_codebook(2, 1, c), KVS_OK);
    ck_assert_double_eq_tol(c[0], 0.5, 1e-6);
    ck_assert_double_eq_tol(c[1], M_PI / 2.0 - 0.5, 1e-6);
}
END_TEST

/* Relative squared error of decoded vectors, read back through the logits
** hook with unit queries. */
static double relative_mse(const char *params, uint32_t n)
{
    kvs_kernel_dims_t dims = rt_dims(D, 1, 2);
    float *x = malloc((size_t)n * D * sizeof *x), *dots = malloc(n * sizeof *dots);
    uint8_t *attend = malloc(n);
    kvs_rot_rng_t rng;
    double err = 0.0, ref = 0.0;
    void *st;

    kvs_rot_rng_init(&rng, 3);
    rt_random_normal(&rng, x, n * D, 1.0);
    memset(attend, 1, n);
    st = rt_stream(polar, params, &dims, x, n, 1);
    for (uint32_t j = 0; j < D; j++) {
        float e[D] = {0};

        e[j] = 1.0f;
        polar->logits(st, e, 1, attend, n, dots);
        for (uint32_t t = 0; t < n; t++) {
            err += pow(dots[t] - x[t * D + j], 2);
            ref += pow(x[t * D + j], 2);
        }
    }
    polar->destroy(st);
    free(x);
    free(dots);
    free(attend);
    return err / ref;
}

START_TEST(distortion_falls_with_bits)
{
    double low = relative_mse("bits1=3,bits_hi=1", 300);
    double mid = relative_mse(NULL, 300);
    double high = relative_mse("bits1=6,bits_hi=4", 300);

    ck_assert_msg(mid < low && high < mid, "relative MSE %.4f, %.4f, %.4f", low, mid, high);
    /* At 3.875 bits the error is of the order of 4-bit scalar codes
    ** (0.0095 for Lloyd-Max on a Gaussian), well below 3-bit ones. */
    ck_assert_msg(mid < 0.035, "relative MSE %.4f at the default bits", mid);
}
END_TEST

START_TEST(table_path_matches_reference)
{
    const uint32_t n = 180, group = 3;
    const char *variants[][2] = {{"levels=4", "levels=4,path=ref"},
                                 {"levels=2,rotation=dense", "levels=2,rotation=dense,path=ref"},
                                 {"levels=6,bits1=5,bits_hi=3", "levels=6,bits1=5,bits_hi=3,path=ref"}};
    kvs_kernel_dims_t dims = rt_dims(D, group, 4);
    float *k = malloc((size_t)n * D * sizeof *k), q[3 * D], a[3 * 180], b[3 * 180];
    uint8_t attend[180];
    kvs_rot_rng_t rng;

    kvs_rot_rng_init(&rng, 5);
    rt_random_normal(&rng, k, n * D, 1.0);
    rt_random_normal(&rng, q, group * D, 1.0);
    for (uint32_t t = 0; t < n; t++)
        attend[t] = (uint8_t)(t % 4 != 1);
    for (size_t v = 0; v < 3; v++) {
        void *fast = rt_stream(polar, variants[v][0], &dims, k, n, 1);
        void *ref = rt_stream(polar, variants[v][1], &dims, k, n, 1);

        for (uint32_t i = 0; i < group * n; i++)
            a[i] = b[i] = -7.0f;
        polar->logits(fast, q, group, attend, n, a);
        polar->logits(ref, q, group, attend, n, b);
        for (uint32_t i = 0; i < group * n; i++) {
            ck_assert_float_eq_tol(a[i], b[i], 1e-4f * (1.0f + fabsf(b[i])));
            if (!attend[i % n])
                ck_assert_float_eq(a[i], -7.0f);
        }
        polar->destroy(fast);
        polar->destroy(ref);
    }
    free(k);
}
END_TEST

START_TEST(output_equals_dequantized_sum)
{
    const uint32_t n = 120, group = 2;
    kvs_kernel_dims_t dims = rt_dims(D, group, 6);
    float *v = malloc((size_t)n * D * sizeof *v), w[2 * 120], out[2 * D], dots[120];
    uint8_t attend[120];
    kvs_rot_rng_t rng;
    void *st;

    kvs_rot_rng_init(&rng, 7);
    rt_random_normal(&rng, v, n * D, 1.0);
    for (uint32_t i = 0; i < group * n; i++)
        w[i] = (float)kvs_rot_rng_uniform(&rng) / n;
    for (uint32_t t = 0; t < n; t++)
        attend[t] = (uint8_t)(t % 6 != 0);
    st = rt_stream(polar, "path=ref", &dims, v, n, 1);
    polar->output(st, w, group, attend, n, out);
    for (uint32_t j = 0; j < D; j++) {
        float e[D] = {0};

        e[j] = 1.0f;
        polar->logits(st, e, 1, attend, n, dots);
        for (uint32_t g = 0; g < group; g++) {
            double sum = 0.0;

            for (uint32_t t = 0; t < n; t++)
                if (attend[t])
                    sum += (double)w[g * n + t] * dots[t];
            ck_assert_msg(fabs(out[g * D + j] - sum) < 1e-5 * (1.0 + fabs(sum)),
                          "out[%u][%u] = %.7f, dequantize-then-sum %.7f", g, j, out[g * D + j],
                          sum);
        }
    }
    polar->destroy(st);
    free(v);
}
END_TEST

static Suite *polarquant_suite(void)
{
    Suite *s = suite_create("polarquant");
    TCase *tc = tcase_create("core");

    tcase_add_test(tc, bytes_are_3875_bits_plus_radius);
    tcase_add_test(tc, check_rejects_block_larger_than_d);
    tcase_add_test(tc, angle_codebooks_follow_level_densities);
    tcase_add_test(tc, distortion_falls_with_bits);
    tcase_add_test(tc, table_path_matches_reference);
    tcase_add_test(tc, output_equals_dequantized_sum);
    tcase_set_timeout(tc, 60);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return kvs_test_run(polarquant_suite());
}
