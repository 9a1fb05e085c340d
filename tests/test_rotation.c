/* test_rotation.c: random rotations, Lloyd-Max codebooks, packed codes and
** their look-up-table and accumulation paths, half precision. */
#include "testutil.h"

#include "rotation_testutil.h"

#include <math.h>
#include <stdio.h>

/* Pi as a matrix, column j = Pi e_j. */
static void rotation_matrix(const kvs_rotation_t *rot, uint32_t d, double *m)
{
    float *e = calloc(d, sizeof *e);
    float *y = calloc(d, sizeof *y);

    for (uint32_t j = 0; j < d; j++) {
        memset(e, 0, d * sizeof *e);
        e[j] = 1.0f;
        kvs_rotation_apply(rot, e, y);
        for (uint32_t i = 0; i < d; i++)
            m[i * d + j] = y[i];
    }
    free(e);
    free(y);
}

static void check_orthogonal(kvs_rotation_kind_e kind, uint32_t d)
{
    kvs_rotation_t *rot;
    double *m = malloc((size_t)d * d * sizeof *m);
    float *x = malloc(d * sizeof *x), *y = malloc(d * sizeof *y), *z = malloc(d * sizeof *z);
    kvs_rot_rng_t rng;

    ck_assert_int_eq(kvs_rotation_create(kind, d, 1234, &rot), KVS_OK);
    rotation_matrix(rot, d, m);
    for (uint32_t i = 0; i < d; i++) {
        for (uint32_t j = 0; j < d; j++) {
            double dot = 0.0;

            for (uint32_t k = 0; k < d; k++)
                dot += m[k * d + i] * m[k * d + j];
            ck_assert_double_eq_tol(dot, i == j ? 1.0 : 0.0, 1e-6);
        }
    }

    /* Pi^T undoes Pi on random vectors. */
    kvs_rot_rng_init(&rng, 99);
    for (int rep = 0; rep < 20; rep++) {
        rt_random_normal(&rng, x, d, 1.0);
        kvs_rotation_apply(rot, x, y);
        kvs_rotation_apply_t(rot, y, z);
        for (uint32_t j = 0; j < d; j++)
            ck_assert_float_eq_tol(z[j], x[j], 1e-5f);
    }
    kvs_rotation_destroy(rot);
    free(m);
    free(x);
    free(y);
    free(z);
}

START_TEST(hadamard_is_orthogonal)
{
    check_orthogonal(KVS_ROTATION_HADAMARD, 8);
    check_orthogonal(KVS_ROTATION_HADAMARD, 64);
    check_orthogonal(KVS_ROTATION_HADAMARD, 128);
}
END_TEST

START_TEST(dense_rotation_is_orthogonal)
{
    check_orthogonal(KVS_ROTATION_DENSE, 8);
    check_orthogonal(KVS_ROTATION_DENSE, 64);
    check_orthogonal(KVS_ROTATION_DENSE, 48);
}
END_TEST

START_TEST(fwht_matches_sylvester_matrix)
{
    /* H[i][j] = (-1)^popcount(i & j) for the Sylvester construction. */
    uint32_t d = 16;
    float x[16], y[16];
    kvs_rot_rng_t rng;

    kvs_rot_rng_init(&rng, 5);
    rt_random_normal(&rng, x, d, 1.0);
    memcpy(y, x, sizeof x);
    kvs_rot_fwht(y, d);
    for (uint32_t i = 0; i < d; i++) {
        double s = 0.0;

        for (uint32_t j = 0; j < d; j++)
            s += (__builtin_popcount(i & j) & 1 ? -1.0 : 1.0) * x[j];
        ck_assert_double_eq_tol(y[i], s, 1e-5);
    }
}
END_TEST

START_TEST(hadamard_rejects_non_power_of_two)
{
    kvs_rotation_t *rot = (kvs_rotation_t *)1;

    ck_assert_int_eq(kvs_rotation_create(KVS_ROTATION_HADAMARD, 48, 1, &rot),
                     KVS_ERR_KERNEL_SPEC);
    ck_assert_ptr_null(rot);
    ck_assert_ptr_nonnull(strstr(kvs_error_message(), "48"));
    ck_assert_ptr_nonnull(strstr(kvs_error_message(), "rotation=dense"));
}
END_TEST

START_TEST(rotation_depends_on_seed_only)
{
    kvs_rotation_t *a, *b, *c;
    double ma[64], mb[64], mc[64];
    int same_ab = 1, same_ac = 1;

    ck_assert_int_eq(kvs_rotation_create(KVS_ROTATION_DENSE, 8, 7, &a), KVS_OK);
    ck_assert_int_eq(kvs_rotation_create(KVS_ROTATION_DENSE, 8, 7, &b), KVS_OK);
    ck_assert_int_eq(kvs_rotation_create(KVS_ROTATION_DENSE, 8, 8, &c), KVS_OK);
    rotation_matrix(a, 8, ma);
    rotation_matrix(b, 8, mb);
    rotation_matrix(c, 8, mc);
    for (int i = 0; i < 64; i++) {
        same_ab &= ma[i] == mb[i];
        same_ac &= ma[i] == mc[i];
    }
    ck_assert(same_ab);
    ck_assert(!same_ac);
    kvs_rotation_destroy(a);
    kvs_rotation_destroy(b);
    kvs_rotation_destroy(c);
}
END_TEST

START_TEST(stream_seed_separates_streams)
{
    kvs_kernel_dims_t a = rt_dims(64, 3, 42), b = a, c = a;

    b.layer = 1;
    c.kv_head = 1;
    ck_assert_uint_eq(kvs_rot_stream_seed(&a, 1), kvs_rot_stream_seed(&a, 1));
    ck_assert_uint_ne(kvs_rot_stream_seed(&a, 1), kvs_rot_stream_seed(&b, 1));
    ck_assert_uint_ne(kvs_rot_stream_seed(&a, 1), kvs_rot_stream_seed(&c, 1));
    ck_assert_uint_ne(kvs_rot_stream_seed(&b, 1), kvs_rot_stream_seed(&c, 1));
    ck_assert_uint_ne(kvs_rot_stream_seed(&a, 1), kvs_rot_stream_seed(&a, 2));
}
END_TEST

START_TEST(one_bit_codebook_closed_forms)
{
    /* Gaussian N(0, 1/d): centroids +-E|x| = +-sqrt(2 / (pi d)). Sphere:
    ** E|x_1| = Gamma(d/2) / (sqrt(pi) Gamma((d+1)/2)). */
    uint32_t dims[] = {8, 64, 128};

    for (size_t i = 0; i < sizeof dims / sizeof dims[0]; i++) {
        uint32_t d = dims[i];
        double c[2], mse;
        double gauss = sqrt(2.0 / (M_PI * d));
        double sphere = exp(lgamma(d / 2.0) - lgamma((d + 1) / 2.0)) / sqrt(M_PI);

        ck_assert_int_eq(kvs_rot_coord_codebook(KVS_DENSITY_GAUSS, d, 1, c, &mse), KVS_OK);
        ck_assert_double_eq_tol(c[1], gauss, 1e-6 * gauss);
        ck_assert_double_eq_tol(c[0], -gauss, 1e-6 * gauss);
        /* Per-coordinate error 1/d - E|x|^2, so d * mse = 1 - 2/pi. */
        ck_assert_double_eq_tol(mse * d, 1.0 - 2.0 / M_PI, 1e-5);

        ck_assert_int_eq(kvs_rot_coord_codebook(KVS_DENSITY_SPHERE, d, 1, c, &mse), KVS_OK);
        ck_assert_double_eq_tol(c[1], sphere, 1e-5 * sphere);
    }
}
END_TEST

START_TEST(gaussian_codebooks_match_max_1960)
{
    /* Lloyd-Max quantizers of N(0, 1) (J. Max, IRE Trans. Inf. Theory,
    ** 1960): mean squared error and the 2-bit centroids. */
    const double mse_ref[] = {0.3634, 0.1175, 0.03454, 0.009497};
    double c[16], mse;

    for (unsigned b = 1; b <= 4; b++) {
        ck_assert_int_eq(kvs_rot_coord_codebook(KVS_DENSITY_GAUSS, 1, b, c, &mse), KVS_OK);
        ck_assert_double_eq_tol(mse, mse_ref[b - 1], 2e-3 * mse_ref[b - 1] + 2e-5);
        for (unsigned k = 0; k + 1 < (1u << b); k++)
            ck_assert_double_lt(c[k], c[k + 1]);
    }
    ck_assert_int_eq(kvs_rot_coord_codebook(KVS_DENSITY_GAUSS, 1, 2, c, NULL), KVS_OK);
    ck_assert_double_eq_tol(c[2], 0.4528, 2e-4);
    ck_assert_double_eq_tol(c[3], 1.5104, 2e-4);
    ck_assert_double_eq_tol(c[0], -1.5104, 2e-4);
}
END_TEST

START_TEST(codebook_rejects_tiny_dimension)
{
    double c[2];

    ck_assert_int_eq(kvs_rot_coord_codebook(KVS_DENSITY_SPHERE, 2, 1, c, NULL), KVS_ERR_KERNEL_SPEC);
}
END_TEST

START_TEST(pack_unpack_round_trip)
{
    uint8_t codes[67], packed[64];
    kvs_rot_rng_t rng;

    kvs_rot_rng_init(&rng, 3);
    for (unsigned bits = 1; bits <= 5; bits++) {
        for (uint32_t j = 0; j < 67; j++)
            codes[j] = (uint8_t)(kvs_rot_rng_next(&rng) & ((1u << bits) - 1));
        kvs_rot_pack_codes(codes, 67, bits, packed);
        ck_assert_uint_eq(kvs_rot_packed_bytes(67, bits), (67 * bits + 7) / 8);
        for (uint32_t j = 0; j < 67; j++)
            ck_assert_uint_eq(kvs_rot_unpack_code(packed, j, bits), codes[j]);
    }
}
END_TEST

/* Random packed rows for n codes of `bits` bits, with the 3 spare bytes. */
static uint8_t *random_rows(kvs_rot_rng_t *rng, uint32_t n_tok, uint32_t stride)
{
    uint8_t *rows = calloc((size_t)n_tok * stride + 4, 1);

    for (size_t i = 0; i < (size_t)n_tok * stride; i++)
        rows[i] = (uint8_t)kvs_rot_rng_next(rng);
    return rows;
}

START_TEST(lut_scores_match_reference)
{
    const uint32_t n = 60, n_tok = 203;
    float y[64], codebook[16], ref[203], scalar[203], fast[203];
    kvs_rot_rng_t rng;

    kvs_rot_rng_init(&rng, 11);
    for (unsigned bits = 1; bits <= 4; bits *= 2) {
        uint32_t stride = kvs_rot_packed_bytes(n, bits) + 3; /* rows wider than the codes */
        uint8_t *rows = random_rows(&rng, n_tok, stride);
        kvs_rot_code_lut_t lut;

        rt_random_normal(&rng, y, n, 1.0);
        rt_random_normal(&rng, codebook, 1u << bits, 1.0);
        /* Bits past n in the last code byte must not count. */
        for (uint32_t t = 0; t < n_tok; t++)
            for (uint32_t j = n; j < kvs_rot_packed_bytes(n, bits) * 8 / bits; j++)
                rows[(size_t)t * stride + j * bits / 8] &= (uint8_t) ~(((1u << bits) - 1)
                                                                       << (j * bits % 8));
        kvs_rot_code_dot_ref(rows, stride, n_tok, y, n, bits, codebook, ref);
        ck_assert_int_eq(kvs_rot_code_lut_init(&lut, n, bits), KVS_OK);
        kvs_rot_code_lut_build(&lut, y, n, bits, codebook);
        kvs_rot_code_dot_lut_scalar(&lut, rows, stride, n_tok, scalar);
        kvs_rot_code_dot_lut(&lut, rows, stride, n_tok, fast);
        for (uint32_t t = 0; t < n_tok; t++) {
            ck_assert_float_eq_tol(scalar[t], ref[t], 1e-4f);
            ck_assert_float_eq_tol(fast[t], ref[t], 1e-4f);
        }
        kvs_rot_code_lut_free(&lut);
        free(rows);
    }
    if (!kvs_rot_code_dot_has_avx2())
        fprintf(stderr, "note: no AVX2 on this CPU; the fast path ran its scalar fallback\n");
}
END_TEST

START_TEST(accumulate_matches_reference)
{
    const uint32_t n = 64, n_tok = 157;
    float codebook[16], wt[157], acc[64], ref[64];
    kvs_rot_rng_t rng;

    kvs_rot_rng_init(&rng, 12);
    for (unsigned bits = 1; bits <= 4; bits++) {
        uint32_t stride = kvs_rot_packed_bytes(n, bits);
        uint8_t *rows = random_rows(&rng, n_tok, stride);
        float *hist = malloc(kvs_rot_code_accumulate_scratch(n, bits) * sizeof *hist);

        rt_random_normal(&rng, codebook, 1u << bits, 1.0);
        for (uint32_t t = 0; t < n_tok; t++)
            wt[t] = (t % 5 == 0) ? 0.0f : (float)kvs_rot_rng_uniform(&rng);
        memset(acc, 0, sizeof acc);
        memset(ref, 0, sizeof ref);
        kvs_rot_code_accumulate(rows, stride, n_tok, wt, n, bits, codebook, hist, acc);
        kvs_rot_code_accumulate_ref(rows, stride, n_tok, wt, n, bits, codebook, ref);
        for (uint32_t j = 0; j < n; j++)
            ck_assert_float_eq_tol(acc[j], ref[j], 1e-5f * (1.0f + fabsf(ref[j])));

        /* The AVX2 path adds to acc as well; without AVX2 it declines. */
        memset(acc, 0, sizeof acc);
        if (kvs_rot_code_accumulate_avx2(rows, stride, n_tok, wt, n, bits, codebook, acc)) {
            for (uint32_t j = 0; j < n; j++)
                ck_assert_float_eq_tol(acc[j], ref[j], 1e-5f * (1.0f + fabsf(ref[j])));
        } else {
            ck_assert_int_eq(kvs_rot_code_dot_has_avx2(), 0);
        }

        /* AVX2 scores with the codebook in registers, against the
        ** reference; wt stands in for the query. */
        {
            float got[157], want[157];

            kvs_rot_code_dot_ref(rows, stride, n_tok, wt, n, bits, codebook, want);
            if (kvs_rot_code_dot_avx2(rows, stride, n_tok, wt, n, bits, codebook, got))
                for (uint32_t t = 0; t < n_tok; t++)
                    ck_assert_float_eq_tol(got[t], want[t], 1e-5f * (1.0f + fabsf(want[t])));
        }
        free(hist);
        free(rows);
    }
}
END_TEST

START_TEST(f16_known_values)
{
    ck_assert_uint_eq(kvs_f32_to_f16(1.0f), 0x3C00);
    ck_assert_uint_eq(kvs_f32_to_f16(-2.0f), 0xC000);
    ck_assert_uint_eq(kvs_f32_to_f16(65504.0f), 0x7BFF);
    ck_assert_uint_eq(kvs_f32_to_f16(70000.0f), 0x7C00);
    ck_assert_uint_eq(kvs_f32_to_f16(0.1f), 0x2E66);
    ck_assert_uint_eq(kvs_f32_to_f16(5.9604645e-8f), 0x0001); /* smallest subnormal */
    ck_assert_uint_eq(kvs_f32_to_f16(1.0f + 1.0f / 2048.0f), 0x3C00); /* tie to even */
    ck_assert_uint_eq(kvs_f32_to_f16(1.0f + 3.0f / 2048.0f), 0x3C02);
    ck_assert_float_eq(kvs_rot_f32_from_f16(0x3555), 0.333251953125f);
    ck_assert_float_eq(kvs_rot_f32_from_f16(0x0001), 5.9604645e-8f);
    for (int i = 0; i < 0x7C00; i++)
        ck_assert_uint_eq(kvs_f32_to_f16(kvs_rot_f32_from_f16((uint16_t)i)), (unsigned)i);
}
END_TEST

static Suite *rotation_suite(void)
{
    Suite *s = suite_create("rotation");
    TCase *tc = tcase_create("core");

    tcase_add_test(tc, hadamard_is_orthogonal);
    tcase_add_test(tc, dense_rotation_is_orthogonal);
    tcase_add_test(tc, fwht_matches_sylvester_matrix);
    tcase_add_test(tc, hadamard_rejects_non_power_of_two);
    tcase_add_test(tc, rotation_depends_on_seed_only);
    tcase_add_test(tc, stream_seed_separates_streams);
    tcase_add_test(tc, one_bit_codebook_closed_forms);
    tcase_add_test(tc, gaussian_codebooks_match_max_1960);
    tcase_add_test(tc, codebook_rejects_tiny_dimension);
    tcase_add_test(tc, pack_unpack_round_trip);
    tcase_add_test(tc, lut_scores_match_reference);
    tcase_add_test(tc, accumulate_matches_reference);
    tcase_add_test(tc, f16_known_values);
    tcase_set_timeout(tc, 60);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return kvs_test_run(rotation_suite());
}
