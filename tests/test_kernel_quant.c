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

/* Key-like rows: a few channels carry large offsets and scales, as real
** keys do, so per-channel and per-token grouping differ; plus Student-t
** like heavy tails from a ratio of normals. */
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

/* ---- quanto residual ---------------------------------------------------- */

static kvs_affine_cfg_t quanto_cfg(uint32_t bits)
{
    kvs_affine_cfg_t c = {
        .d = D, .bits = bits, .group = 64, .axis = KVS_AFFINE_AXIS_TOKEN,
        .flush = KVS_AFFINE_FLUSH_REQUANT, .fit = KVS_FIT_MINMAX, .param_fmt = KVS_FP_BF16,
        .window_fmt = KVS_FP_BF16, .residual = 128, .compressed = 0,
    };
    return c;
}

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
    suite_add_tcase(s, tc);
    return kvs_test_run(s);
}
