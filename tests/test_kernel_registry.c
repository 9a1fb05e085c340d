/*
** test_kernel_registry.c: the kernel registry, spec parsing, parameter
** JSON, dense attention against an independent reference and the cost
** figures that the method descriptions publish.
*/
#include "testutil.h"

#include "kernels/kernel.h"
#include "kernels/kernel_impl.h"
#include "kernels/simd.h"

#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* SmolLM2-135M: 30 layers, 9 query heads, 3 KV heads, head_dim 64. */
static const kvs_kernel_dims_t smollm2 = {
    .head_dim = 64, .group_size = 3, .n_layers = 30, .n_kv_heads = 3, .layer = 0, .kv_head = 0,
    .seed = 1,
};

static int names_equal(const char *a, const char *b)
{
    return a && b && !strcmp(a, b);
}

static void check_param_docs(const char *owner, const kvs_param_doc_t *docs)
{
    kvs_params_t p;

    for (const kvs_param_doc_t *d = docs; d && d->name; d++) {
        ck_assert_msg(d->description && d->description[0], "%s.%s has no description", owner,
                      d->name);
        ck_assert_msg(d->default_value, "%s.%s has no default", owner, d->name);
        ck_assert_msg((unsigned)d->type < KVS_PARAM_TYPE_COUNT, "%s.%s has a bad type", owner,
                      d->name);
        if (d->type == KVS_PARAM_ENUM)
            ck_assert_msg(d->choices && d->choices[0], "%s.%s lists no choices", owner, d->name);
        else
            ck_assert_msg(d->min <= d->max, "%s.%s has min > max", owner, d->name);
        for (const kvs_param_doc_t *e = d + 1; e->name; e++)
            ck_assert_msg(strcmp(d->name, e->name) != 0, "%s declares %s twice", owner, d->name);
    }
    ck_assert_msg(kvs_params_parse(owner, docs, NULL, &p) == KVS_OK,
                  "defaults of %s do not parse: %s", owner, kvs_error_message());
}

START_TEST(registry_names_unique)
{
    const char *names[256];
    size_t n = 0;
    const kvs_codec_i *c;
    const kvs_preset_t *p;
    const kvs_policy_i *pol;

    for (size_t i = 0; (c = kvs_codec_at(i)); i++)
        names[n++] = c->name;
    for (size_t i = 0; (p = kvs_preset_at(i)); i++)
        names[n++] = p->name;
    for (size_t i = 0; (pol = kvs_policy_at(i)); i++)
        names[n++] = pol->name;
    ck_assert_uint_ge(n, 5);
    for (size_t i = 0; i < n; i++) {
        ck_assert_ptr_nonnull(names[i]);
        ck_assert_ptr_null(strchr(names[i], '/'));
        ck_assert_ptr_null(strchr(names[i], ':'));
        for (size_t j = i + 1; j < n; j++)
            ck_assert_msg(!names_equal(names[i], names[j]), "name '%s' is registered twice",
                          names[i]);
    }
}
END_TEST

START_TEST(registry_codecs_have_hooks)
{
    const kvs_codec_i *c;

    for (size_t i = 0; (c = kvs_codec_at(i)); i++) {
        ck_assert_msg(c->family && c->family[0], "%s has no family", c->name);
        ck_assert_msg(c->description && c->description[0], "%s has no description", c->name);
        ck_assert_msg(c->roles & (KVS_CODEC_KEY | KVS_CODEC_VALUE), "%s has no role", c->name);
        ck_assert_msg(c->create && c->append && c->stored_bytes && c->cost && c->destroy,
                      "%s lacks a required hook", c->name);
        if (c->roles & KVS_CODEC_KEY)
            ck_assert_msg(c->logits != NULL, "key codec %s has no logits hook", c->name);
        if (c->roles & KVS_CODEC_VALUE)
            ck_assert_msg(c->output != NULL, "value codec %s has no output hook", c->name);
        check_param_docs(c->name, c->params);
        c->destroy(NULL);
    }
}
END_TEST

START_TEST(registry_policies_have_hooks)
{
    const kvs_policy_i *p;

    for (size_t i = 0; (p = kvs_policy_at(i)); i++) {
        ck_assert_msg(p->description && p->description[0], "%s has no description", p->name);
        ck_assert_msg(p->create && p->append && p->stored_bytes && p->cost && p->destroy,
                      "policy %s lacks a required hook", p->name);
        check_param_docs(p->name, p->params);
        p->destroy(NULL);
    }
}
END_TEST

START_TEST(registry_presets_expand)
{
    const kvs_preset_t *p;

    for (size_t i = 0; (p = kvs_preset_at(i)); i++) {
        kvs_kernel_spec_t *spec;

        check_param_docs(p->name, p->params);
        ck_assert_msg(kvs_kernel_spec_parse(p->name, &spec) == KVS_OK, "preset %s: %s", p->name,
                      kvs_error_message());
        ck_assert_int_eq(kvs_kernel_spec_check(spec, &smollm2), KVS_OK);
        /* Every preset parameter reaches at least one expanded part. */
        json_t *root = json_loads(kvs_kernel_spec_params_json(spec), 0, NULL);
        ck_assert_ptr_nonnull(root);
        for (const kvs_param_doc_t *d = p->params; d->name; d++) {
            int found = json_object_get(json_object_get(root, "key"), d->name) ||
                        json_object_get(json_object_get(root, "value"), d->name);
            ck_assert_msg(found, "preset %s parameter %s reaches no part", p->name, d->name);
        }
        json_decref(root);
        kvs_kernel_spec_free(spec);
    }
}
END_TEST

START_TEST(list_json_names_everything)
{
    char *text = kvs_kernel_list_json();
    json_t *arr = json_loads(text, 0, NULL);
    size_t n_expected = 0;

    while (kvs_codec_at(n_expected))
        n_expected++;
    for (size_t i = 0; kvs_preset_at(i); i++)
        n_expected++;
    for (size_t i = 0; kvs_policy_at(i); i++)
        n_expected++;
    ck_assert_ptr_nonnull(arr);
    ck_assert_uint_eq(json_array_size(arr), n_expected);
    for (size_t i = 0; i < json_array_size(arr); i++) {
        json_t *o = json_array_get(arr, i);
        ck_assert(json_is_string(json_object_get(o, "name")));
        ck_assert(json_is_string(json_object_get(o, "role")));
        ck_assert(json_is_string(json_object_get(o, "description")));
        ck_assert(json_is_array(json_object_get(o, "params")));
    }
    json_decref(arr);
    free(text);

    text = kvs_kernel_list_text();
    ck_assert_ptr_nonnull(strstr(text, "quanto"));
    ck_assert_ptr_nonnull(strstr(text, "fp8-e4m3"));
    free(text);
}
END_TEST

/* ---- spec parsing ------------------------------------------------------- */

static json_t *parse_json(const char *text, kvs_kernel_spec_t **spec)
{
    ck_assert_msg(kvs_kernel_spec_parse(text, spec) == KVS_OK, "%s: %s", text,
                  kvs_error_message());
    json_t *root = json_loads(kvs_kernel_spec_params_json(*spec), 0, NULL);
    ck_assert_ptr_nonnull(root);
    return root;
}

static const char *jstr(json_t *root, const char *part, const char *name)
{
    return json_string_value(json_object_get(json_object_get(root, part), name));
}

static long long jint(json_t *root, const char *part, const char *name)
{
    return json_integer_value(json_object_get(json_object_get(root, part), name));
}

START_TEST(spec_key_then_value)
{
    kvs_kernel_spec_t *spec;
    json_t *root = parse_json("affine:bits=3/affine:bits=2", &spec);

    ck_assert_str_eq(kvs_kernel_spec_text(spec), "affine:bits=3/affine:bits=2");
    ck_assert_str_eq(jstr(root, "key", "codec"), "affine");
    ck_assert_int_eq(jint(root, "key", "bits"), 3);
    ck_assert_int_eq(jint(root, "value", "bits"), 2);
    ck_assert_int_eq(jint(root, "key", "group"), 64);  /* default filled in */
    ck_assert_str_eq(jstr(root, "key", "axis"), "token");
    ck_assert_ptr_null(json_object_get(root, "select"));
    ck_assert_str_eq(kvs_kernel_spec_family(spec), "quantized");
    ck_assert_int_eq(kvs_kernel_spec_compressed_exec(spec), 1);
    json_decref(root);
    kvs_kernel_spec_free(spec);
}
END_TEST

START_TEST(spec_lone_codec_serves_both)
{
    kvs_kernel_spec_t *spec;
    json_t *root = parse_json("dense:dtype=bf16", &spec);

    ck_assert_str_eq(jstr(root, "key", "dtype"), "bf16");
    ck_assert_str_eq(jstr(root, "value", "dtype"), "bf16");
    ck_assert_str_eq(kvs_kernel_spec_family(spec), "dense");
    ck_assert_int_eq(kvs_kernel_spec_compressed_exec(spec), 0);
    json_decref(root);
    kvs_kernel_spec_free(spec);
}
END_TEST

START_TEST(spec_presets_expand_with_parameters)
{
    kvs_kernel_spec_t *spec;
    json_t *root = parse_json("quanto:bits=2", &spec);

    ck_assert_str_eq(json_string_value(json_object_get(root, "preset")), "quanto");
    ck_assert_int_eq(jint(root, "key", "bits"), 2);
    ck_assert_int_eq(jint(root, "value", "bits"), 2);
    ck_assert_str_eq(jstr(root, "key", "flush"), "requant");
    ck_assert_int_eq(jint(root, "key", "residual"), 128);
    ck_assert_str_eq(jstr(root, "value", "exec"), "storage");
    ck_assert_int_eq(kvs_kernel_spec_compressed_exec(spec), 0);
    json_decref(root);
    kvs_kernel_spec_free(spec);

    root = parse_json("kivi:bits=4,residual=64", &spec);
    ck_assert_str_eq(jstr(root, "key", "axis"), "channel");
    ck_assert_str_eq(jstr(root, "value", "axis"), "token");
    ck_assert_int_eq(jint(root, "key", "group"), 32);
    ck_assert_int_eq(jint(root, "value", "residual"), 64);
    ck_assert_int_eq(jint(root, "value", "bits"), 4);
    ck_assert_str_eq(jstr(root, "value", "scale_dtype"), "f16");
    json_decref(root);
    kvs_kernel_spec_free(spec);
}
END_TEST

START_TEST(spec_missing_parts_are_dense_f32)
{
    kvs_kernel_spec_t *spec;
    json_t *root = parse_json("quanto:exec=compressed", &spec);

    ck_assert_int_eq(kvs_kernel_spec_compressed_exec(spec), 1);
    json_decref(root);
    kvs_kernel_spec_free(spec);

    root = parse_json("affine:bits=8/dense", &spec);
    ck_assert_str_eq(jstr(root, "value", "codec"), "dense");
    ck_assert_str_eq(jstr(root, "value", "dtype"), "f32");
    json_decref(root);
    kvs_kernel_spec_free(spec);
}
END_TEST

/* Each bad spec fails with KVS_ERR_KERNEL_SPEC and a message that contains
** the given fragment (the value at fault or what is accepted). */
START_TEST(spec_errors_name_the_fix)
{
    static const struct {
        const char *spec, *fragment;
    } cases[] = {
        {"densee", "unknown kernel 'densee'"},
        {"densee", "dense"},
        {"dense:dtype=f64", "f32|f16|bf16|fp8-e4m3|fp8-e5m2"},
        {"dense:dtyp=f16", "accepted: dtype"},
        {"affine:bits=9", "out of range"},
        {"affine:bits=2.5", "not valid"},
        {"affine:bits=", "not valid"},
        {"affine:bits=4,bits=2", "given twice"},
        {"affine:bits", "not NAME=VALUE"},
        {"affine//dense", "empty part"},
        {"affine/dense/dense", "3 codec parts"},
        {"quanto:bits=3", "2|4"},
        {"quanto:flush=block", "unknown parameter 'flush'"},
        {"kivi/dense", "3 codec parts"},
        {"dense: dtype=f16", "white space"},
        {"", "empty kernel spec"},
    };

    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        kvs_kernel_spec_t *spec = (kvs_kernel_spec_t *)1;
        kvs_status_e rc = kvs_kernel_spec_parse(cases[i].spec, &spec);
        ck_assert_msg(rc == KVS_ERR_KERNEL_SPEC, "'%s' gave status %d", cases[i].spec, rc);
        ck_assert_ptr_null(spec);
        ck_assert_msg(strstr(kvs_error_message(), cases[i].fragment) != NULL,
                      "'%s': message '%s' lacks '%s'", cases[i].spec, kvs_error_message(),
                      cases[i].fragment);
    }
}
END_TEST

START_TEST(spec_check_uses_dims)
{
    kvs_kernel_spec_t *spec;
    kvs_kernel_dims_t dims = smollm2;

    ck_assert_int_eq(kvs_kernel_spec_parse("affine:group=48", &spec), KVS_OK);
    ck_assert_int_eq(kvs_kernel_spec_check(spec, &dims), KVS_ERR_KERNEL_SPEC);
    ck_assert_ptr_nonnull(strstr(kvs_error_message(), "does not divide head_dim 64"));
    kvs_kernel_spec_free(spec);

    ck_assert_int_eq(kvs_kernel_spec_parse("kivi:group=32,residual=48", &spec), KVS_OK);
    ck_assert_int_eq(kvs_kernel_spec_check(spec, &dims), KVS_ERR_KERNEL_SPEC);
    ck_assert_ptr_nonnull(strstr(kvs_error_message(), "multiple of group"));
    kvs_kernel_spec_free(spec);

    ck_assert_int_eq(kvs_kernel_spec_parse("affine:axis=channel,flush=sliding", &spec), KVS_OK);
    ck_assert_int_eq(kvs_kernel_spec_check(spec, &dims), KVS_ERR_KERNEL_SPEC);
    ck_assert_ptr_nonnull(strstr(kvs_error_message(), "flush=block"));
    kvs_kernel_spec_free(spec);

    ck_assert_int_eq(kvs_kernel_spec_parse("affine:bits=5", &spec), KVS_OK);
    ck_assert_int_eq(kvs_kernel_spec_check(spec, &dims), KVS_ERR_KERNEL_SPEC);
    ck_assert_ptr_nonnull(strstr(kvs_error_message(), "1, 2, 3, 4 or 8"));
    kvs_kernel_spec_free(spec);
}
END_TEST

START_TEST(params_budget_and_float)
{
    static const kvs_param_doc_t docs[] = {
        {"budget", KVS_PARAM_BUDGET, "64", 1, 1e6, NULL, "tokens kept"},
        {"alpha", KVS_PARAM_FLOAT, "0.5", 0, 1, NULL, "a fraction"},
        {NULL, 0, NULL, 0, 0, NULL, NULL},
    };
    kvs_params_t p;

    ck_assert_int_eq(kvs_params_parse("t", docs, "budget=25%", &p), KVS_OK);
    ck_assert_double_eq_tol(kvs_param_number(&p, "budget"), -0.25, 1e-12);
    ck_assert_uint_eq(kvs_param_budget(&p, "budget", 1000), 250);
    ck_assert_uint_eq(kvs_param_budget(&p, "budget", 2), 1);
    ck_assert_double_eq_tol(kvs_param_number(&p, "alpha"), 0.5, 1e-12);
    ck_assert_int_eq(kvs_params_parse("t", docs, "budget=100", &p), KVS_OK);
    ck_assert_uint_eq(kvs_param_budget(&p, "budget", 1000), 100);
    ck_assert_int_eq(kvs_params_parse("t", docs, "budget=0%", &p), KVS_ERR_KERNEL_SPEC);
    ck_assert_int_eq(kvs_params_parse("t", docs, "budget=150%", &p), KVS_ERR_KERNEL_SPEC);
    ck_assert_int_eq(kvs_params_parse("t", docs, "alpha=nan", &p), KVS_ERR_KERNEL_SPEC);
    ck_assert_int_eq(kvs_params_parse("t", docs, "alpha=1.5", &p), KVS_ERR_KERNEL_SPEC);
}
END_TEST

/* ---- attention ---------------------------------------------------------- */

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

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

START_TEST(dense_f32_matches_reference)
{
    enum { D = 64, G = 3, N = 37 };
    kvs_kernel_spec_t *spec;
    kvs_kernel_t *k;
    static float keys[N][D], vals[N][D], q[G][D];
    static float logits[G * N], weights[G * N], out[G * D];
    kvs_attend_out_t res = {logits, weights, out};

    for (int t = 0; t < N; t++)
        for (int j = 0; j < D; j++) {
            keys[t][j] = normal();
            vals[t][j] = normal();
        }
    for (int g = 0; g < G; g++)
        for (int j = 0; j < D; j++)
            q[g][j] = normal();

    ck_assert_int_eq(kvs_kernel_spec_parse("dense", &spec), KVS_OK);
    ck_assert_int_eq(kvs_kernel_create(spec, &smollm2, &k), KVS_OK);
    for (int t = 0; t < N; t++)
        ck_assert_int_eq(kvs_kernel_append(k, keys[t], keys[t], vals[t]), KVS_OK);
    ck_assert_int_eq(kvs_kernel_end_prefill(k, &q[0][0], 1), KVS_OK);
    ck_assert_uint_eq(kvs_kernel_n_tokens(k), N);
    ck_assert_uint_eq(kvs_kernel_stored_bytes(k), 2ull * N * D * 4);
    ck_assert_int_eq(kvs_kernel_attend(k, &q[0][0], &res), KVS_OK);

    /* Reference: softmax(q.k / 8) in double, then the weighted sum. */
    for (int g = 0; g < G; g++) {
        double l[N], max = -1e300, sum = 0;
        for (int t = 0; t < N; t++) {
            double s = 0;
            for (int j = 0; j < D; j++)
                s += (double)q[g][j] * keys[t][j];
            l[t] = s / 8.0;
            max = l[t] > max ? l[t] : max;
        }
        for (int t = 0; t < N; t++)
            sum += exp(l[t] - max);
        for (int t = 0; t < N; t++) {
            ck_assert_double_eq_tol(logits[g * N + t], l[t], 1e-4);
            ck_assert_double_eq_tol(weights[g * N + t], exp(l[t] - max) / sum, 1e-6);
        }
        for (int j = 0; j < D; j++) {
            double o = 0;
            for (int t = 0; t < N; t++)
                o += exp(l[t] - max) / sum * vals[t][j];
            ck_assert_double_eq_tol(out[g * D + j], o, 1e-5);
        }
    }
    kvs_kernel_destroy(k);
    kvs_kernel_spec_free(spec);
}
END_TEST

START_TEST(append_rejects_nan)
{
    kvs_kernel_spec_t *spec;
    kvs_kernel_t *k;
    float x[64] = {0};

    ck_assert_int_eq(kvs_kernel_spec_parse("quanto", &spec), KVS_OK);
    ck_assert_int_eq(kvs_kernel_create(spec, &smollm2, &k), KVS_OK);
    x[5] = NAN;
    ck_assert_int_eq(kvs_kernel_append(k, x, x, x), KVS_ERR_NONFINITE);
    ck_assert_ptr_nonnull(strstr(kvs_error_message(), "column 5"));
    ck_assert_uint_eq(kvs_kernel_n_tokens(k), 0);
    kvs_kernel_destroy(k);
    kvs_kernel_spec_free(spec);
}
END_TEST

START_TEST(softmax_exp_matches_expf)
{
    enum { N = 1003 };
    static float x[N], fast[N], ref[N];

    for (int i = 0; i < N; i++)
        x[i] = (float)(-90.0 * uniform());
    x[5] = -INFINITY;
    x[17] = 0.0f;
    double s_fast = kvs_simd_exp_sum(x, 0.0f, fast, N);
    double s_ref = kvs_simd_exp_sum_ref(x, 0.0f, ref, N);

    ck_assert_float_eq(fast[5], 0.0f);
    ck_assert_float_eq(fast[17], 1.0f);
    for (int i = 0; i < N; i++) {
        /* Within 4 ulp, or flushed below exp(-87). */
        if (x[i] >= -87.0f)
            ck_assert_msg(fabsf(fast[i] - ref[i]) <= 5e-7f * ref[i], "exp(%g): %g vs %g", x[i],
                          fast[i], ref[i]);
        else
            ck_assert_float_le(fast[i], 1.7e-38f);
    }
    ck_assert_double_eq_tol(s_fast, s_ref, 1e-6 * s_ref);
}
END_TEST

/* ---- costs -------------------------------------------------------------- */

static kvs_kernel_cost_t cost_of(const char *text, uint64_t n)
{
    kvs_kernel_spec_t *spec;
    kvs_kernel_cost_t c;

    ck_assert_msg(kvs_kernel_spec_parse(text, &spec) == KVS_OK, "%s", kvs_error_message());
    ck_assert_msg(kvs_kernel_spec_cost(spec, &smollm2, n, &c) == KVS_OK, "%s",
                  kvs_error_message());
    kvs_kernel_spec_free(spec);
    return c;
}

START_TEST(cost_dense_bf16_smollm2)
{
    kvs_kernel_cost_t c = cost_of("dense:dtype=bf16", 2048);
    double streams = 30.0 * 3.0;

    /* 2 (K, V) x 30 layers x 3 heads x 64 values x 2 bytes. */
    ck_assert_double_eq_tol(c.bytes_per_token * streams, 23040.0, 1e-9);
    ck_assert_double_eq_tol((double)c.stored_bytes * streams / 1048576.0, 45.0, 1e-9);
    ck_assert_uint_eq(c.read_bytes, c.stored_bytes);
    ck_assert_double_eq_tol(cost_of("dense:dtype=fp8-e5m2", 16).bytes_per_token, 128.0, 1e-9);
}
END_TEST

START_TEST(cost_quanto_per_vector)
{
    /* quanto 4-bit: 32 B of codes + BF16 scale and shift = 36 B per
    ** 64-value vector; 2-bit: 16 + 4 = 20 B. Two vectors (K, V) per token. */
    ck_assert_double_eq_tol(cost_of("quanto:bits=4", 2048).bytes_per_token, 72.0, 1e-9);
    ck_assert_double_eq_tol(cost_of("quanto:bits=2", 2048).bytes_per_token, 40.0, 1e-9);
    ck_assert_double_eq_tol(cost_of("quanto:bits=4", 2048).bytes_per_token * 90, 6480.0, 1e-9);

    /* Right after the prefill the whole prompt is quantized. */
    kvs_kernel_cost_t c = cost_of("quanto:bits=4", 2048);
    ck_assert_uint_eq(c.stored_bytes, 2048ull * 72);
    /* Storage-only: codes and parameters, then the BF16 dense copy of all
    ** positions is written and read again. */
    ck_assert_uint_eq(c.read_bytes, 2048ull * 72 + 2 * 2048ull * 128);
    ck_assert_uint_ge(c.written_bytes, 2 * 2048ull * 128);
    kvs_kernel_cost_t ce = cost_of("quanto:bits=4,exec=compressed", 2048);
    ck_assert_uint_eq(ce.read_bytes, 2048ull * 72);
    ck_assert_uint_lt(ce.written_bytes, 1024);
}
END_TEST

START_TEST(cost_kivi_three_bits)
{
    /* KIVI 2-bit, G = 32: keys 64 x (2 + 32/32) bits, values 16 B + 2 groups
    ** x 4 B: 24 B each, 3 bits per element. 4-bit: 5 bits per element. */
    kvs_kernel_cost_t c = cost_of("kivi:bits=2,group=32", 4096);
    ck_assert_double_eq_tol(c.bytes_per_token * 8 / 128.0, 3.0, 1e-9);
    c = cost_of("kivi:bits=4,group=32", 4096);
    ck_assert_double_eq_tol(c.bytes_per_token * 8 / 128.0, 5.0, 1e-9);

    /* Windows after a prefill of 1000 with R = 128: keys keep 1000 mod 128
    ** = 104 positions in F16, values the last 128. */
    c = cost_of("kivi:bits=2,group=32,residual=128", 1000);
    uint64_t keys = 896ull * 24 + 104ull * 128, values = 872ull * 24 + 128ull * 128;
    ck_assert_uint_eq(c.stored_bytes, keys + values);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("kernel_registry");
    TCase *tc = tcase_create("core");

    tcase_add_test(tc, registry_names_unique);
    tcase_add_test(tc, registry_codecs_have_hooks);
    tcase_add_test(tc, registry_policies_have_hooks);
    tcase_add_test(tc, registry_presets_expand);
    tcase_add_test(tc, list_json_names_everything);
    tcase_add_test(tc, spec_key_then_value);
    tcase_add_test(tc, spec_lone_codec_serves_both);
    tcase_add_test(tc, spec_presets_expand_with_parameters);
    tcase_add_test(tc, spec_missing_parts_are_dense_f32);
    tcase_add_test(tc, spec_errors_name_the_fix);
    tcase_add_test(tc, spec_check_uses_dims);
    tcase_add_test(tc, params_budget_and_float);
    tcase_add_test(tc, dense_f32_matches_reference);
    tcase_add_test(tc, append_rejects_nan);
    tcase_add_test(tc, softmax_exp_matches_expf);
    tcase_add_test(tc, cost_dense_bf16_smollm2);
    tcase_add_test(tc, cost_quanto_per_vector);
    tcase_add_test(tc, cost_kivi_three_bits);
    suite_add_tcase(s, tc);
    return kvs_test_run(s);
}
