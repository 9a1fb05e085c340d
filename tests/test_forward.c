/*
** test_forward.c: the Llama forward pass on stories260K, the matrix-vector
** kernels and token sampling.
**
** The recorded q, k, k_pre and v are compared with a plain double-precision
** forward pass written here from the Hugging Face LlamaForCausalLM
** definition, reading the weights straight from the safetensors file.
*/
#include "testutil.h"

#include "capture/forward.h"
#include "capture/matvec.h"
#include "capture/model.h"
#include "capture/safetensors.h"
#include "capture/sample.h"
#include "common/fsutil.h"
#include "llama_ref.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *model_dir;

static int read_expected_ids(int32_t *ids, int cap)
{
    char path[4096];
    char *text, *p;
    size_t size;
    int n = 0;

    snprintf(path, sizeof path, "%s/expected/greedy200_ids.txt", model_dir);
    ck_assert_int_eq(kvs_read_file(path, &text, &size), KVS_OK);
    p = text;
    while (n < cap) {
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p)
            break;
        ids[n++] = (int32_t)v;
        p = end;
    }
    free(text);
    return n;
}

static void greedy_run(uint32_t threads, int32_t *out, int steps)
{
    kvs_model_t *m;
    kvs_forward_t *f;
    float logits[512];
    int32_t tok = 1;

    ck_assert_int_eq(kvs_model_load(model_dir, &m), KVS_OK);
    ck_assert_uint_eq(kvs_model_get_config(m)->vocab_size, 512);
    ck_assert_int_eq(kvs_forward_create(m, (uint32_t)steps + 1, threads, &f), KVS_OK);
    for (int i = 0; i < steps; i++) {
        ck_assert_int_eq(kvs_forward_run(f, &tok, 1, logits), KVS_OK);
        tok = kvs_argmax(logits, 512);
        out[i] = tok;
    }
    ck_assert_uint_eq(kvs_forward_n_pos(f), (uint32_t)steps);
    kvs_forward_destroy(f);
    kvs_model_destroy(m);
}

/* 200 forward steps from BOS give the 200 ids of the expected file: step i
** feeds the token chosen by step i-1 and its argmax is id i. */
START_TEST(stories_greedy_200_matches_expected)
{
    int32_t expected[256], got[200];
    int n = read_expected_ids(expected, 256);

    ck_assert_int_eq(n, 200);
    greedy_run(2, got, 200);
    for (int i = 0; i < 200; i++)
        ck_assert_msg(got[i] == expected[i], "greedy id %d is %d, expected %d", i, got[i],
                      expected[i]);
}
END_TEST

START_TEST(stories_greedy_scalar_one_thread)
{
    int32_t expected[256], got[200];

    ck_assert_int_eq(read_expected_ids(expected, 256), 200);
    kvs_matvec_force_scalar(1);
    greedy_run(1, got, 200);
    kvs_matvec_force_scalar(0);
    for (int i = 0; i < 200; i++)
        ck_assert_msg(got[i] == expected[i], "scalar greedy id %d is %d, expected %d", i, got[i],
                      expected[i]);
}
END_TEST

typedef struct observed {
    record_t rec[4];
    int calls;
} observed_t;

static kvs_status_e observe(void *ctx, const kvs_forward_rows_t *rows)
{
    observed_t *ob = ctx;
    const float *src[4] = {rows->q, rows->k, rows->k_pre, rows->v};

    ob->calls++;
    for (int kind = 0; kind < 4; kind++) {
        record_t *rec = &ob->rec[kind];
        for (uint32_t i = 0; i < rows->n_rows; i++) {
            double *dst = record_row(rec, (int)rows->layer, (int)(rows->pos + i));
            for (int c = 0; c < rec->width; c++)
                dst[c] = src[kind][(size_t)i * rec->width + c];
        }
    }
    return KVS_OK;
}

/* A 41-token prompt prefilled in chunks of 16, 16 and 9 tokens (so chunk
** boundaries and a partial last chunk are covered), then 23 greedy decode
** steps. Every recorded row must match the double reference within 1e-5
** relative to the largest magnitude of its (kind, layer). */
START_TEST(stories_records_match_double_reference)
{
    static const char *const kinds[4] = {"q", "k", "k_pre", "v"};
    const int n_prompt = 41, n_decode = 23, n_total = n_prompt + n_decode;
    int32_t tokens[64], expected[256];
    char path[4096];
    kvs_st_file_t *st;
    ref_model_t ref;
    record_t want[4];
    observed_t got = {0};
    kvs_model_t *m;
    kvs_forward_t *f;
    float logits[512];

    ck_assert_int_eq(read_expected_ids(expected, 256), 200);
    tokens[0] = 1;
    memcpy(tokens + 1, expected, (n_prompt - 1) * sizeof *tokens);

    snprintf(path, sizeof path, "%s/model.safetensors", model_dir);
    ck_assert_int_eq(kvs_st_open(path, &st), KVS_OK);
    ref_load(&ref, st);
    int widths[4] = {64, 32, 32, 32};
    for (int kind = 0; kind < 4; kind++) {
        record_init(&want[kind], 5, n_total, widths[kind]);
        record_init(&got.rec[kind], 5, n_total, widths[kind]);
    }

    ck_assert_int_eq(kvs_model_load(model_dir, &m), KVS_OK);
    ck_assert_int_eq(kvs_forward_create(m, (uint32_t)n_total, 2, &f), KVS_OK);
    ck_assert_int_eq(kvs_forward_set_chunk(f, 16), KVS_OK);
    kvs_forward_set_observer(f, observe, &got);
    ck_assert_int_eq(kvs_forward_run(f, tokens, (uint32_t)n_prompt, logits), KVS_OK);
    for (int t = n_prompt; t < n_total; t++) {
        tokens[t] = kvs_argmax(logits, 512);
        ck_assert_int_eq(tokens[t], expected[t - 1]);
        ck_assert_int_eq(kvs_forward_run(f, &tokens[t], 1, logits), KVS_OK);
    }
    /* 3 prefill chunks (16 + 16 + 9) and 23 decode steps, each once per layer. */
    ck_assert_int_eq(got.calls, 5 * (3 + n_decode));

    ref_forward(&ref, tokens, n_total, want);
    for (int kind = 0; kind < 4; kind++) {
        for (int l = 0; l < 5; l++) {
            double max_ref = 0, max_err = 0;
            for (int t = 0; t < n_total; t++) {
                const double *a = record_row(&got.rec[kind], l, t);
                const double *b = record_row(&want[kind], l, t);
                for (int c = 0; c < widths[kind]; c++) {
                    max_ref = fmax(max_ref, fabs(b[c]));
                    max_err = fmax(max_err, fabs(a[c] - b[c]));
                }
            }
            ck_assert_msg(max_ref > 0.1, "%s layer %d reference is all near zero", kinds[kind], l);
            ck_assert_msg(max_err / max_ref < 1e-5, "%s layer %d relative error %.3g", kinds[kind],
                          l, max_err / max_ref);
        }
    }

    kvs_forward_destroy(f);
    kvs_model_destroy(m);
    for (int kind = 0; kind < 4; kind++) {
        free(want[kind].data);
        free(got.rec[kind].data);
    }
    ref_free(&ref);
    kvs_st_close(st);
}
END_TEST

START_TEST(forward_rejects_token_outside_vocab)
{
    kvs_model_t *m;
    kvs_forward_t *f;
    int32_t toks[2] = {1, 512};

    ck_assert_int_eq(kvs_model_load(model_dir, &m), KVS_OK);
    ck_assert_int_eq(kvs_forward_create(m, 4, 1, &f), KVS_OK);
    ck_assert_int_eq(kvs_forward_run(f, toks, 2, NULL), KVS_ERR_TOKEN);
    ck_assert_ptr_nonnull(strstr(kvs_error_message(), "512"));
    toks[1] = 3;
    ck_assert_int_eq(kvs_forward_run(f, toks, 2, NULL), KVS_OK);
    ck_assert_int_eq(kvs_forward_run(f, toks, 2, NULL), KVS_OK);
    ck_assert_int_eq(kvs_forward_run(f, toks, 1, NULL), KVS_ERR_INVALID);
    kvs_forward_destroy(f);
    kvs_model_destroy(m);
}
END_TEST

/* ---- kernels and sampling -------------------------------------------------- */

static double naive_row(const kvs_weight_t *w, uint32_t r, const float *x)
{
    double s = 0;

    for (uint32_t c = 0; c < w->cols; c++) {
        size_t i = (size_t)r * w->cols + c;
        double e;
        if (w->type == KVS_WTYPE_F32)
            e = ((const float *)w->data)[i];
        else if (w->type == KVS_WTYPE_BF16)
            e = kvs_bf16_to_f32(((const uint16_t *)w->data)[i]);
        else
            e = kvs_f16_to_f32(((const uint16_t *)w->data)[i]);
        s += e * x[c];
    }
    return s;
}

START_TEST(matvec_matches_naive_for_each_dtype)
{
    kvs_rng_t rng;
    const uint32_t rows = 37, cols = 203;
    float *x = malloc(cols * sizeof *x), *y = malloc(rows * sizeof *y), *yr = malloc(rows * sizeof *yr);
    float *wf = malloc((size_t)rows * cols * sizeof *wf);
    uint16_t *wh = malloc((size_t)rows * cols * sizeof *wh);

    kvs_rng_seed(&rng, 7);
    for (uint32_t c = 0; c < cols; c++)
        x[c] = (float)kvs_rng_normal(&rng);
    for (int type = 0; type < KVS_WTYPE_COUNT; type++) {
        kvs_weight_t w = {(kvs_wtype_e)type, rows, cols, type == KVS_WTYPE_F32 ? (void *)wf : (void *)wh};
        for (size_t i = 0; i < (size_t)rows * cols; i++) {
            float v = (float)kvs_rng_normal(&rng);
            wf[i] = v;
            /* F16 bits built from a BF16-exact value scaled into F16 range. */
            wh[i] = type == KVS_WTYPE_BF16 ? kvs_f32_to_bf16(v) : (uint16_t)(0x3c00 ^ (kvs_rng_next(&rng) & 0x83ff));
        }
        kvs_matvec(&w, 3, rows, x, y);
        kvs_matvec_ref(&w, 3, rows, x, yr);
        for (uint32_t r = 3; r < rows; r++) {
            double want = naive_row(&w, r, x);
            ck_assert_msg(fabs(y[r - 3] - want) < 1e-4 * (1 + fabs(want)), "type %d row %u: %g vs %g",
                          type, r, y[r - 3], want);
            ck_assert_msg(fabs(yr[r - 3] - want) < 1e-4 * (1 + fabs(want)), "ref type %d row %u", type, r);
        }
    }
    free(x), free(y), free(yr), free(wf), free(wh);
}
END_TEST

START_TEST(half_conversions_known_values)
{
    ck_assert(kvs_f16_to_f32(0x3c00) == 1.0f);
    ck_assert(kvs_f16_to_f32(0xc000) == -2.0f);
    ck_assert(kvs_f16_to_f32(0x0001) == ldexpf(1.0f, -24));
    ck_assert(kvs_f16_to_f32(0x7bff) == 65504.0f);
    ck_assert(isinf(kvs_f16_to_f32(0x7c00)));
    ck_assert(kvs_bf16_to_f32(0x3f80) == 1.0f);
    ck_assert_uint_eq(kvs_f32_to_bf16(1.0f), 0x3f80);
    /* 1 + 2^-8 is halfway between two BF16 values; ties go to even. */
    ck_assert_uint_eq(kvs_f32_to_bf16(1.0f + ldexpf(1.0f, -8)), 0x3f80);
    ck_assert_uint_eq(kvs_f32_to_bf16(1.0f + 3 * ldexpf(1.0f, -8)), 0x3f82);
}
END_TEST

START_TEST(sampler_greedy_and_seeded)
{
    float logits[6] = {0.1f, 2.0f, 1.9f, -1.0f, 2.0f, 0.0f};
    kvs_sampler_t *a, *b;
    int32_t ta, tb;
    int counts[6] = {0};

    ck_assert_int_eq(kvs_argmax(logits, 6), 1);
    ck_assert_int_eq(kvs_sampler_create(6, 0.0f, 1.0f, 1, &a), KVS_OK);
    ck_assert_int_eq(kvs_sampler_next(a, logits, &ta), KVS_OK);
    ck_assert_int_eq(ta, 1);
    kvs_sampler_destroy(a);

    ck_assert_int_eq(kvs_sampler_create(6, 1.0f, 1.0f, 42, &a), KVS_OK);
    ck_assert_int_eq(kvs_sampler_create(6, 1.0f, 1.0f, 42, &b), KVS_OK);
    for (int i = 0; i < 20000; i++) {
        ck_assert_int_eq(kvs_sampler_next(a, logits, &ta), KVS_OK);
        ck_assert_int_eq(kvs_sampler_next(b, logits, &tb), KVS_OK);
        ck_assert_int_eq(ta, tb);
        counts[ta]++;
    }
    /* Frequencies follow softmax(logits): token 3 has p = e^-1 / Z. */
    double z = 0;
    for (int i = 0; i < 6; i++)
        z += exp(logits[i]);
    for (int i = 0; i < 6; i++) {
        double p = exp(logits[i]) / z;
        ck_assert_msg(fabs(counts[i] / 20000.0 - p) < 0.015, "token %d freq %g vs p %g", i,
                      counts[i] / 20000.0, p);
    }
    kvs_sampler_destroy(a);
    kvs_sampler_destroy(b);

    /* top_p 0.5 keeps tokens 1 and 4 (p ~0.29 each); token 2 is next. */
    ck_assert_int_eq(kvs_sampler_create(6, 1.0f, 0.5f, 9, &a), KVS_OK);
    for (int i = 0; i < 2000; i++) {
        ck_assert_int_eq(kvs_sampler_next(a, logits, &ta), KVS_OK);
        ck_assert(ta == 1 || ta == 4);
    }
    logits[2] = NAN;
    ck_assert_int_eq(kvs_sampler_next(a, logits, &ta), KVS_ERR_NONFINITE);
    kvs_sampler_destroy(a);
    ck_assert_int_eq(kvs_sampler_create(6, -1.0f, 1.0f, 9, &a), KVS_ERR_INVALID);
    ck_assert_int_eq(kvs_sampler_create(6, 1.0f, 0.0f, 9, &a), KVS_ERR_INVALID);
}
END_TEST

START_TEST(rng_splitmix_xoshiro_known_start)
{
    kvs_rng_t a, b;

    kvs_rng_seed(&a, 0);
    /* splitmix64 from state 0 gives 0xe220a8397b1dcdaf as its first output. */
    ck_assert_uint_eq(a.s[0], 0xe220a8397b1dcdafull);
    kvs_rng_seed(&b, 0);
    for (int i = 0; i < 100; i++)
        ck_assert_uint_eq(kvs_rng_next(&a), kvs_rng_next(&b));
    kvs_rng_seed(&b, 1);
    ck_assert_uint_ne(kvs_rng_next(&a), kvs_rng_next(&b));
}
END_TEST

int main(void)
{
    Suite *s = suite_create("forward");
    TCase *tc = tcase_create("core");

    model_dir = strdup(kvs_test_require_shared("models/stories260K"));
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, stories_greedy_200_matches_expected);
    tcase_add_test(tc, stories_greedy_scalar_one_thread);
    tcase_add_test(tc, stories_records_match_double_reference);
    tcase_add_test(tc, forward_rejects_token_outside_vocab);
    tcase_add_test(tc, matvec_matches_naive_for_each_dtype);
    tcase_add_test(tc, half_conversions_known_values);
    tcase_add_test(tc, sampler_greedy_and_seeded);
    tcase_add_test(tc, rng_splitmix_xoshiro_known_start);
    suite_add_tcase(s, tc);
    return kvs_test_run(s);
}
