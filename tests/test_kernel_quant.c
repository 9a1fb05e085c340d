/*
** test_kernel_quant.c: affine quantization (affine codec, quanto and KIVI
** presets, HQQ): packing, round-trip bounds, window and flush behaviour,
** storage-only against compressed execution, vector against scalar paths.
*/
#include "testutil.h"

#include "kernels/dense/fpformat.h"
#include "kernels/kernel.h"
#include "kernels/kernel_impl.h"
#include "kernels/quant/affine.h"
#include "kernels/quant/pack.h"
#include "kernels/simd.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { D = 64, G = 3 };

static const kvs_kernel_dims_t dims64 = {
    .head_dim = D, .group_size = G, .n_layers = 30, .n_kv_heads = 3, .seed = 7,
};

/* ---- seeded data -------------------------------------------------------- */

static uint64_t rng_state;

static void rng_seed(uint64_t s)
{
    rng_state = s * 0x9E3779B97F4A7C15ull + 1;
}

static double uniform(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (double)(rng_state >> 11) / 9007199254740992.0;
}

static float normal(void)
{
    double u = uniform() + 1e-300, v = uniform();
    return (float)(sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v));
}

/* Key-like rows. A few channels carry large offsets and scales, as real
** keys do, so per-channel and per-token grouping differ, and 1% of values
** are scaled by 8 to give heavy tails. */
static void fill_rows(float *x, uint32_t n, uint32_t d, int heavy)
{
    for (uint32_t t = 0; t < n; t++) {
        for (uint32_t j = 0; j < d; j++) {
            float v = normal();
            if (heavy && j % 16 == 3)
                v = 6.0f + 4.0f * v;
            if (heavy && uniform() < 0.01)
                v *= 8.0f;
            x[(size_t)t * d + j] = v;
        }
    }
}

/* ---- packing ------------------------------------------------------------ */

START_TEST(pack_round_trips_every_width)
{
    static const uint32_t widths[] = {1, 2, 3, 4, 8};
    static const uint32_t dims[] = {64, 128, 24, 7};
    uint8_t codes[128], packed[128];
    float out_ref[128], out[128];

    rng_seed(1);
    for (size_t w = 0; w < 5; w++) {
        for (size_t k = 0; k < 4; k++) {
            uint32_t bits = widths[w], d = dims[k];
            for (uint32_t i = 0; i < d; i++)
                codes[i] = (uint8_t)(uniform() * (1u << bits));
            kvs_pack_row(codes, d, bits, packed);
            ck_assert_uint_eq(kvs_pack_row_bytes(d, bits), (d * bits + 7) / 8);
            kvs_unpack_row_ref(packed, d, bits, out_ref);
            kvs_unpack_row(packed, d, bits, out);
            for (uint32_t i = 0; i < d; i++) {
                ck_assert_float_eq(out_ref[i], (float)codes[i]);
                ck_assert_float_eq(out[i], (float)codes[i]);
            }
        }
    }
}
END_TEST

/* ---- kernels through the public API ------------------------------------- */

typedef struct run {
    float logits[G * 4096], weights[G * 4096], out[G * D];
} run_t;

static kvs_kernel_t *make_kernel(const char *text, kvs_kernel_spec_t **spec)
{
    kvs_kernel_t *k;

    ck_assert_msg(kvs_kernel_spec_parse(text, spec) == KVS_OK, "%s: %s", text,
                  kvs_error_message());
    ck_assert_msg(kvs_kernel_create(*spec, &dims64, &k) == KVS_OK, "%s: %s", text,
                  kvs_error_message());
    return k;
}

/* Feeds n_prompt positions, ends the prefill, then n_decode more. */
static void feed(kvs_kernel_t *k, const float *keys, const float *vals, uint32_t n_prompt,
                 uint32_t n_decode, const float *q)
{
    for (uint32_t t = 0; t < n_prompt + n_decode; t++) {
        if (t == n_prompt)
            ck_assert_int_eq(kvs_kernel_end_prefill(k, q, 1), KVS_OK);
        ck_assert_int_eq(kvs_kernel_append(k, keys + (size_t)t * D, keys + (size_t)t * D,
                                           vals + (size_t)t * D),
                         KVS_OK);
    }
    if (n_decode == 0)
        ck_assert_int_eq(kvs_kernel_end_prefill(k, q, 1), KVS_OK);
}

static void attend(kvs_kernel_t *k, const float *q, run_t *r)
{
    kvs_attend_out_t res = {r->logits, r->weights, r->out};

    ck_assert_int_eq(kvs_kernel_attend(k, q, &res), KVS_OK);
}

static double max_abs(const float *x, size_t n)
{
    double m = 0;

    for (size_t i = 0; i < n; i++)
        m = fabs(x[i]) > m ? fabs(x[i]) : m;
    return m;
}

/* Logits and outputs of two runs agree within rel times the largest
** magnitude of each. */
static void assert_runs_close(const run_t *a, const run_t *b, uint32_t n, double rel,
                              const char *what)
{
    double lscale = max_abs(a->logits, (size_t)G * n), oscale = max_abs(a->out, G * D);

    for (size_t i = 0; i < (size_t)G * n; i++)
        ck_assert_msg(fabs(a->logits[i] - b->logits[i]) <= rel * lscale,
                      "%s: logit %zu differs: %g vs %g", what, i, a->logits[i], b->logits[i]);
    for (size_t i = 0; i < G * D; i++)
        ck_assert_msg(fabs(a->out[i] - b->out[i]) <= rel * oscale,
                      "%s: output %zu differs: %g vs %g", what, i, a->out[i], b->out[i]);
}

START_TEST(storage_and_compressed_agree)
{
    static const char *const pairs[][2] = {
        {"quanto:bits=4", "quanto:bits=4,exec=compressed"},
        {"quanto:bits=2", "quanto:bits=2,exec=compressed"},
        {"kivi:bits=2,exec=storage", "kivi:bits=2"},
        {"kivi:bits=4,group=16,residual=32,exec=storage", "kivi:bits=4,group=16,residual=32"},
        {"affine:bits=3,group=16,exec=storage", "affine:bits=3,group=16"},
        {"affine:bits=8,group=32,residual=20,exec=storage", "affine:bits=8,group=32,residual=20"},
        {"hqq:bits=4", "hqq:bits=4,exec=compressed"},
        {"hqq:bits=3,optimize=1,group=32", "hqq:bits=3,optimize=1,group=32,exec=compressed"},
    };
    enum { N = 700, PROMPT = 500 };
    float *keys = malloc(sizeof(float) * N * D), *vals = malloc(sizeof(float) * N * D);
    float q[G * D];
    static run_t a, b;

    rng_seed(2);
    fill_rows(keys, N, D, 1);
    fill_rows(vals, N, D, 0);
    fill_rows(q, G, D, 0);
    for (size_t i = 0; i < sizeof pairs / sizeof pairs[0]; i++) {
        kvs_kernel_spec_t *sa, *sb;
        kvs_kernel_t *ka = make_kernel(pairs[i][0], &sa), *kb = make_kernel(pairs[i][1], &sb);
        ck_assert_int_eq(kvs_kernel_spec_compressed_exec(sa), 0);
        ck_assert_int_eq(kvs_kernel_spec_compressed_exec(sb), 1);
        feed(ka, keys, vals, PROMPT, N - PROMPT, q);
        feed(kb, keys, vals, PROMPT, N - PROMPT, q);
        attend(ka, q, &a);
        attend(kb, q, &b);
        assert_runs_close(&a, &b, N, 1e-5, pairs[i][0]);
        ck_assert_uint_eq(kvs_kernel_stored_bytes(ka), kvs_kernel_stored_bytes(kb));
        kvs_kernel_destroy(ka);
        kvs_kernel_destroy(kb);
        kvs_kernel_spec_free(sa);
        kvs_kernel_spec_free(sb);
    }
    free(keys);
    free(vals);
}
END_TEST

START_TEST(vector_matches_scalar_paths)
{
    static const char *const specs[] = {
        "quanto:bits=4", "quanto:bits=2,exec=compressed", "kivi:bits=2", "kivi:bits=4,exec=storage",
        "affine:bits=8", "affine:bits=1,exec=compressed", "dense:dtype=bf16", "dense:dtype=f16",
        "dense", "affine:bits=4,group=32", "affine:bits=2,group=16,scale_dtype=f16",
        "hqq:bits=4,exec=compressed", "kivi:bits=2,exec=storage",
    };
    enum { N = 300 };
    float *keys = malloc(sizeof(float) * N * D), *vals = malloc(sizeof(float) * N * D);
    float q[G * D];
    static run_t a, b;

    rng_seed(3);
    fill_rows(keys, N, D, 1);
    fill_rows(vals, N, D, 0);
    fill_rows(q, G, D, 0);
    for (size_t i = 0; i < sizeof specs / sizeof specs[0]; i++) {
        kvs_kernel_spec_t *spec;
        kvs_kernel_t *k = make_kernel(specs[i], &spec);
        feed(k, keys, vals, 200, N - 200, q);
        kvs_simd_set_enabled(1);
        attend(k, q, &a);
        kvs_simd_set_enabled(0);
        attend(k, q, &b);
        kvs_simd_set_enabled(1);
        assert_runs_close(&b, &a, N, 1e-5, specs[i]);
        kvs_kernel_destroy(k);
        kvs_kernel_spec_free(spec);
    }
    free(keys);
    free(vals);
}
END_TEST


static kvs_affine_cfg_t quanto_cfg(uint32_t bits)
{
    kvs_affine_cfg_t c = {
        .d = D, .bits = bits, .group = 64, .axis = KVS_AFFINE_AXIS_TOKEN,
        .flush = KVS_AFFINE_FLUSH_REQUANT, .fit = KVS_FIT_MINMAX, .param_fmt = KVS_FP_BF16,
        .window_fmt = KVS_FP_BF16, .residual = 128, .compressed = 0,
    };
    return c;
}

/* ---- float formats ------------------------------------------------------ */

START_TEST(fp8_follows_ocp_spec)
{
    /* E4M3: bias 7, max 448 = S.1111.110, min subnormal 2^-9, no infinity. */
    ck_assert_uint_eq(kvs_fp_f32_to_e4m3(1.0f), 0x38);
    ck_assert_uint_eq(kvs_fp_f32_to_e4m3(-2.0f), 0xC0);
    ck_assert_uint_eq(kvs_fp_f32_to_e4m3(448.0f), 0x7E);
    ck_assert_uint_eq(kvs_fp_f32_to_e4m3(1e6f), 0x7E);         /* saturates */
    ck_assert_uint_eq(kvs_fp_f32_to_e4m3(-INFINITY), 0xFE);
    ck_assert_uint_eq(kvs_fp_f32_to_e4m3(0x1p-9f), 0x01);
    ck_assert_uint_eq(kvs_fp_f32_to_e4m3(0x1p-11f), 0x00);     /* tie to even 0 */
    ck_assert_uint_eq(kvs_fp_f32_to_e4m3(1.0625f), 0x38);      /* tie to even */
    ck_assert_uint_eq(kvs_fp_f32_to_e4m3(1.1875f), 0x3A);      /* tie to even */
    ck_assert_float_eq(kvs_fp_e4m3_to_f32(0x7E), 448.0f);
    ck_assert(isnan(kvs_fp_e4m3_to_f32(0x7F)));
    /* E5M2: bias 15, max 57344 = S.11110.11, infinities at S.11111.00. */
    ck_assert_uint_eq(kvs_fp_f32_to_e5m2(1.0f), 0x3C);
    ck_assert_uint_eq(kvs_fp_f32_to_e5m2(57344.0f), 0x7B);
    ck_assert_uint_eq(kvs_fp_f32_to_e5m2(1e9f), 0x7B);
    ck_assert_uint_eq(kvs_fp_f32_to_e5m2(0x1p-16f), 0x01);
    ck_assert(isinf(kvs_fp_e5m2_to_f32(0x7C)));
    ck_assert_float_eq(kvs_fp_e5m2_to_f32(0x3D), 1.25f);
}
END_TEST

START_TEST(half_formats_round_to_even)
{
    ck_assert_uint_eq(kvs_f32_to_bf16(1.0f + 0x1p-8f), 0x3F80);            /* tie, even */
    ck_assert_uint_eq(kvs_f32_to_bf16(1.0f + 3 * 0x1p-8f), 0x3F82);        /* tie, even */
    ck_assert_uint_eq(kvs_f32_to_f16(65504.0f), 0x7BFF);
    ck_assert_uint_eq(kvs_f32_to_f16(65520.0f), 0x7C00);
    ck_assert_uint_eq(kvs_f32_to_f16(0x1p-24f), 0x0001);
    ck_assert_uint_eq(kvs_f32_to_f16(1.0f / 3.0f), 0x3555);
    ck_assert_uint_eq(kvs_f32_to_f16(-0x1p-14f), 0x8400);
    ck_assert_float_eq(kvs_f16_to_f32(0x3555), 0.333251953125f);
    ck_assert_float_eq(kvs_fp_round_dir(KVS_FP_BF16, 1.001f, +1), 1.0078125f);
    ck_assert_float_eq(kvs_fp_round_dir(KVS_FP_BF16, 1.001f, -1), 1.0f);
    ck_assert_float_eq(kvs_fp_round_dir(KVS_FP_BF16, -1.001f, -1), -1.0078125f);
    ck_assert_float_eq(kvs_fp_round_dir(KVS_FP_F16, 1.0f, +1), 1.0f);

    /* Every F16 value survives a round trip through F32. */
    for (uint32_t h = 0; h < 0x7C00; h++)
        ck_assert_uint_eq(kvs_f32_to_f16(kvs_f16_to_f32((uint16_t)h)), h);
}
END_TEST

START_TEST(dense_formats_within_half_ulp)
{
    static const struct {
        const char *spec;
        double rel;  /* half an ulp relative to the value */
    } cases[] = {
        {"dense:dtype=f16", 0x1p-11}, {"dense:dtype=bf16", 0x1p-8},
        {"dense:dtype=fp8-e4m3", 0x1p-4}, {"dense:dtype=fp8-e5m2", 0x1p-3},
    };
    enum { N = 40 };
    float keys[N * D], vals[N * D], q[G * D];
    static run_t r;

    rng_seed(11);
    fill_rows(keys, N, D, 0);
    fill_rows(vals, N, D, 0);
    memset(q, 0, sizeof q);
    for (size_t i = 0; i < 4; i++) {
        kvs_kernel_spec_t *spec;
        kvs_kernel_t *k = make_kernel(cases[i].spec, &spec);
        feed(k, keys, vals, N, 0, q);
        /* A query that is one-hot on channel j makes logit t equal k_t[j]/8. */
        for (uint32_t j = 0; j < D; j += 7) {
            q[j] = 8.0f;
            attend(k, q, &r);
            q[j] = 0.0f;
            for (uint32_t t = 0; t < N; t++) {
                double x = keys[t * D + j], err = fabs(r.logits[t] - x);
                /* Subnormal FP8 values have an absolute half-ulp floor. */
                ck_assert_msg(err <= cases[i].rel * fabs(x) + 0x1p-10, "%s: %g stored as %g",
                              cases[i].spec, x, r.logits[t]);
            }
        }
        kvs_kernel_destroy(k);
        kvs_kernel_spec_free(spec);
    }
}
END_TEST

/* ---- round-trip bounds -------------------------------------------------- */

START_TEST(affine_round_trip_half_step)
{
    static const struct {
        uint32_t bits, group;
        kvs_affine_axis_e axis;
        kvs_fit_e fit;
        kvs_fp_e fmt;
    } cases[] = {
        {4, 64, KVS_AFFINE_AXIS_TOKEN, KVS_FIT_MINMAX, KVS_FP_BF16},
        {2, 64, KVS_AFFINE_AXIS_TOKEN, KVS_FIT_MINMAX, KVS_FP_BF16},
        {3, 16, KVS_AFFINE_AXIS_TOKEN, KVS_FIT_MINMAX, KVS_FP_F16},
        {8, 32, KVS_AFFINE_AXIS_TOKEN, KVS_FIT_MINMAX, KVS_FP_BF16},
        {1, 8, KVS_AFFINE_AXIS_TOKEN, KVS_FIT_MINMAX, KVS_FP_F32},
        {2, 32, KVS_AFFINE_AXIS_CHANNEL, KVS_FIT_MINMAX, KVS_FP_F16},
        {4, 32, KVS_AFFINE_AXIS_CHANNEL, KVS_FIT_MINMAX, KVS_FP_BF16},
        {4, 64, KVS_AFFINE_AXIS_TOKEN, KVS_FIT_HQQ, KVS_FP_F32},
        {2, 16, KVS_AFFINE_AXIS_TOKEN, KVS_FIT_HQQ, KVS_FP_F32},
    };
    enum { N = 256 };
    float *x = malloc(sizeof(float) * N * D), out[D];

    rng_seed(5);
    fill_rows(x, N, D, 1);
    /* Offsets far from zero stress the storage rounding of the minimum. */
    for (uint32_t j = 0; j < D; j++)
        x[7 * D + j] = 300.0f + 0.01f * (float)j;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        kvs_affine_cfg_t c = {
            .d = D, .bits = cases[i].bits, .group = cases[i].group, .axis = cases[i].axis,
            .flush = cases[i].axis == KVS_AFFINE_AXIS_CHANNEL ? KVS_AFFINE_FLUSH_BLOCK
                                                               : KVS_AFFINE_FLUSH_SLIDING,
            .fit = cases[i].fit, .param_fmt = cases[i].fmt, .window_fmt = KVS_FP_F32,
            .residual = cases[i].axis == KVS_AFFINE_AXIS_CHANNEL ? 128 : 0, .compressed = 1,
        };
        kvs_affine_t *a;
        double worst = 0;
        ck_assert_int_eq(kvs_affine_create(&c, &a), KVS_OK);
        for (uint32_t t = 0; t < N; t++)
            ck_assert_int_eq(kvs_affine_append(a, x + (size_t)t * D), KVS_OK);
        ck_assert_int_eq(kvs_affine_end_prefill(a), KVS_OK);
        ck_assert_uint_eq(kvs_affine_n_quantized(a), N);
        for (uint32_t t = 0; t < N; t++) {
            kvs_affine_decode_token(a, t, out);
            for (uint32_t j = 0; j < D; j++) {
                double s = kvs_affine_step(a, t, j), err = fabs(out[j] - x[(size_t)t * D + j]);
                double bound = 0.5 * s * (1 + 1e-5) + 1e-6 * fabs(x[(size_t)t * D + j]);
                ck_assert_msg(s > 0 || err <= 1e-6 * fabs(x[(size_t)t * D + j]),
                              "case %zu: zero step with error %g", i, err);
                ck_assert_msg(err <= bound, "case %zu: position %u channel %u error %g > %g", i,
                              t, j, err, bound);
                worst = err / s > worst ? err / s : worst;
            }
        }
        /* The bound is reached, so the test can fail. */
        ck_assert_double_gt(worst, 0.4);
        kvs_affine_destroy(a);
    }
    free(x);
}
END_TEST

/* Squared reconstruction error of positions [0, n) of a stream. */
static double stream_sq_error(const kvs_affine_t *a, const float *x, uint32_t n)
{
    float out[D];
    double e = 0;

    for (uint32_t t = 0; t < n; t++) {
        kvs_affine_decode_token(a, t, out);
        for (uint32_t j = 0; j < D; j++) {
            double diff = out[j] - x[(size_t)t * D + j];
            e += diff * diff;
        }
    }
    return e;
}

START_TEST(quanto_error_at_least_once)
{
    enum { PROMPT = 300, N = 1100 };
    float *x = malloc(sizeof(float) * N * D);

    rng_seed(6);
    fill_rows(x, N, D, 1);
    for (uint32_t bits = 2; bits <= 4; bits += 2) {
        kvs_affine_cfg_t requant = quanto_cfg(bits), once = quanto_cfg(bits);
        kvs_affine_t *a, *b;
        once.flush = KVS_AFFINE_FLUSH_SLIDING;
        once.residual = 0;
        ck_assert_int_eq(kvs_affine_create(&requant, &a), KVS_OK);
        ck_assert_int_eq(kvs_affine_create(&once, &b), KVS_OK);
        for (uint32_t t = 0; t < N; t++) {
            if (t == PROMPT) {
                ck_assert_int_eq(kvs_affine_end_prefill(a), KVS_OK);
                ck_assert_int_eq(kvs_affine_end_prefill(b), KVS_OK);
            }
            ck_assert_int_eq(kvs_affine_append(a, x + (size_t)t * D), KVS_OK);
            ck_assert_int_eq(kvs_affine_append(b, x + (size_t)t * D), KVS_OK);
        }
        uint32_t nq = kvs_affine_n_quantized(a);
        ck_assert_uint_eq(kvs_affine_n_requant(a), (N - PROMPT) / 128);
        ck_assert_uint_eq(nq, PROMPT + (N - PROMPT) / 128 * 128);
        /* Over the positions both have quantized, quantizing the already
        ** dequantized cache again cannot beat quantizing each once. */
        double e_requant = stream_sq_error(a, x, nq), e_once = stream_sq_error(b, x, nq);
        ck_assert_msg(e_requant >= e_once, "%u bits: requant %g < once %g", bits, e_requant,
                      e_once);
        /* Rounding the dequantized cache to BF16 moves some group ranges,
        ** which is where the extra error comes from. */
        ck_assert_double_gt(e_requant, e_once);
        kvs_affine_destroy(a);
        kvs_affine_destroy(b);
    }
    free(x);
}
END_TEST

START_TEST(kivi_channel_beats_token_keys)
{
    /* Keys with outlier channels: KIVI quantizes them per channel because
    ** per-token groups spend their range on the outliers. */
    enum { N = 512 };
    float *x = malloc(sizeof(float) * N * D);
    kvs_affine_cfg_t chan = {
        .d = D, .bits = 2, .group = 32, .axis = KVS_AFFINE_AXIS_CHANNEL,
        .flush = KVS_AFFINE_FLUSH_BLOCK, .fit = KVS_FIT_MINMAX, .param_fmt = KVS_FP_F16,
        .window_fmt = KVS_FP_F16, .residual = 128, .compressed = 1,
    };
    kvs_affine_cfg_t tok = chan;
    kvs_affine_t *a, *b;

    tok.axis = KVS_AFFINE_AXIS_TOKEN;
    rng_seed(8);
    for (uint32_t t = 0; t < N; t++)
        for (uint32_t j = 0; j < D; j++)
            x[(size_t)t * D + j] = (j % 8 == 0 ? 20.0f : 0.0f) + normal();
    ck_assert_int_eq(kvs_affine_create(&chan, &a), KVS_OK);
    ck_assert_int_eq(kvs_affine_create(&tok, &b), KVS_OK);
    for (uint32_t t = 0; t < N; t++) {
        ck_assert_int_eq(kvs_affine_append(a, x + (size_t)t * D), KVS_OK);
        ck_assert_int_eq(kvs_affine_append(b, x + (size_t)t * D), KVS_OK);
    }
    ck_assert_int_eq(kvs_affine_end_prefill(a), KVS_OK);
    ck_assert_int_eq(kvs_affine_end_prefill(b), KVS_OK);
    ck_assert_uint_eq(kvs_affine_n_quantized(a), N);
    ck_assert_double_lt(stream_sq_error(a, x, N), 0.5 * stream_sq_error(b, x, N));
    kvs_affine_destroy(a);
    kvs_affine_destroy(b);
    free(x);
}
END_TEST

START_TEST(kivi_windows_follow_residual)
{
    kvs_affine_cfg_t keys = {
        .d = D, .bits = 2, .group = 32, .axis = KVS_AFFINE_AXIS_CHANNEL,
        .flush = KVS_AFFINE_FLUSH_BLOCK, .fit = KVS_FIT_MINMAX, .param_fmt = KVS_FP_F16,
        .window_fmt = KVS_FP_F16, .residual = 128, .compressed = 1,
    };
    kvs_affine_cfg_t vals = keys;
    kvs_affine_t *k, *v;
    float x[D];

    vals.axis = KVS_AFFINE_AXIS_TOKEN;
    vals.flush = KVS_AFFINE_FLUSH_SLIDING;
    rng_seed(9);
    ck_assert_int_eq(kvs_affine_create(&keys, &k), KVS_OK);
    ck_assert_int_eq(kvs_affine_create(&vals, &v), KVS_OK);
    for (uint32_t t = 0; t < 300; t++) {
        fill_rows(x, 1, D, 0);
        ck_assert_int_eq(kvs_affine_append(k, x), KVS_OK);
        ck_assert_int_eq(kvs_affine_append(v, x), KVS_OK);
    }
    ck_assert_int_eq(kvs_affine_end_prefill(k), KVS_OK);
    ck_assert_int_eq(kvs_affine_end_prefill(v), KVS_OK);
    /* Prefill: keys keep T mod R = 44 in the window, values the last R. */
    ck_assert_uint_eq(kvs_affine_window_len(k), 44);
    ck_assert_uint_eq(kvs_affine_window_len(v), 128);
    for (uint32_t step = 1; step <= 300; step++) {
        fill_rows(x, 1, D, 0);
        ck_assert_int_eq(kvs_affine_append(k, x), KVS_OK);
        ck_assert_int_eq(kvs_affine_append(v, x), KVS_OK);
        ck_assert_uint_eq(kvs_affine_window_len(k), (44 + step) % 128);
        ck_assert_uint_eq(kvs_affine_window_len(v), 128);
    }
    kvs_affine_destroy(k);
    kvs_affine_destroy(v);
}
END_TEST

/* ---- quanto residual ---------------------------------------------------- */

START_TEST(quanto_residual_fills_then_requantizes)
{
    kvs_affine_cfg_t c = quanto_cfg(4);
    kvs_affine_t *a;
    float x[D];

    rng_seed(4);
    ck_assert_int_eq(kvs_affine_create(&c, &a), KVS_OK);
    for (int t = 0; t < 300; t++) {
        fill_rows(x, 1, D, 0);
        ck_assert_int_eq(kvs_affine_append(a, x), KVS_OK);
    }
    /* The whole prompt waits until the prefill ends, then is quantized. */
    ck_assert_uint_eq(kvs_affine_window_len(a), 300);
    ck_assert_int_eq(kvs_affine_end_prefill(a), KVS_OK);
    ck_assert_uint_eq(kvs_affine_window_len(a), 0);
    ck_assert_uint_eq(kvs_affine_n_quantized(a), 300);
    ck_assert_uint_eq(kvs_affine_n_requant(a), 0);

    for (int step = 1; step <= 400; step++) {
        fill_rows(x, 1, D, 0);
        ck_assert_int_eq(kvs_affine_append(a, x), KVS_OK);
        /* Hugging Face: re-quantize when residual + 1 >= residual_length. */
        ck_assert_uint_le(kvs_affine_window_len(a), 127);
        ck_assert_uint_eq(kvs_affine_n_requant(a), (uint64_t)(step / 128));
        ck_assert_uint_eq(kvs_affine_window_len(a), (uint32_t)(step % 128));
        ck_assert_uint_eq(kvs_affine_n_tokens(a), 300u + (uint32_t)step);
        ck_assert_uint_eq(kvs_affine_stored_bytes(a),
                          (uint64_t)kvs_affine_n_quantized(a) * 36 + (step % 128) * 128ull);
    }
    kvs_affine_destroy(a);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("kernel_quant");
    TCase *tc = tcase_create("core");

    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, pack_round_trips_every_width);
    tcase_add_test(tc, storage_and_compressed_agree);
    tcase_add_test(tc, vector_matches_scalar_paths);
    tcase_add_test(tc, quanto_residual_fills_then_requantizes);
    tcase_add_test(tc, fp8_follows_ocp_spec);
    tcase_add_test(tc, half_formats_round_to_even);
    tcase_add_test(tc, dense_formats_within_half_ulp);
    tcase_add_test(tc, affine_round_trip_half_step);
    tcase_add_test(tc, quanto_error_at_least_once);
    tcase_add_test(tc, kivi_channel_beats_token_keys);
    tcase_add_test(tc, kivi_windows_follow_residual);
    suite_add_tcase(s, tc);
    return kvs_test_run(s);
}
