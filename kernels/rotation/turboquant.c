/*
** turboquant.c: the TurboQuant-MSE, TurboQuant-prod and QJL codecs.
**
** Keys: logits come from the codes. The query is rotated and sketched once
** per step; each token then costs one table look-up per byte of codes and
** two F16 scalars, and no key is reconstructed.
** Values: sum_t w_t v_t is accumulated on the codes, per (coordinate,
** codeword) and per sketch row, with one inverse rotation per step.
**
** With outliers > 0 the channels with the largest mean |x| over the prompt
** get their own instance and bit width (TurboQuant's mixed precision, QJL's
** outlier sketch).
*/
#include "rotation_impl.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef enum tq_variant_e {
    TQ_VARIANT_MSE = 0,
    TQ_VARIANT_PROD = 1,
    TQ_VARIANT_QJL = 2,
    TQ_VARIANT_COUNT
} tq_variant_e;

typedef struct tq_codec {
    tq_variant_e variant;
    uint32_t d;
    kvs_tq_path_e path;
    kvs_rot_split_t *split;
    float *score, *w;  /* (cap) */
    uint32_t cap;
} tq_codec_t;

/* Salts for kvs_rot_stream_seed: the two parts of a split draw independently. */
#define TQ_SEED_MAIN 0x7451u
#define TQ_SEED_OUTLIER 0x7452u

#define TQ_CENTER_PARAM                                                                        \
    {"center", KVS_PARAM_INT, "0", 0, 1, NULL,                                                 \
     "1: code x minus the prompt mean (added back exactly), so only the spread is quantized"}

#define TQ_PATH_PARAM                                                                          \
    {"path", KVS_PARAM_ENUM, "fast", 0, 0, KVS_TQ_PATH_CHOICES,                                \
     "execution path: best available (AVX2 when present), scalar reference, scalar "         \
     "tables, or tables read with AVX2 gathers"}

static const kvs_param_doc_t tq_mse_params[] = {
    {"bits", KVS_PARAM_INT, "3", 1, 4, NULL, "codebook bits per coordinate"},
    {"rotation", KVS_PARAM_ENUM, "hadamard", 0, 0, KVS_ROTATION_CHOICES,
     "random rotation: randomized Hadamard (power-of-two d) or dense orthogonal"},
    {"outliers", KVS_PARAM_FLOAT, "0", 0, 0.5, NULL,
     "fraction of channels (largest mean |x| over the prompt) coded separately, rounded down"},
    {"outlier_bits", KVS_PARAM_INT, "3", 1, 4, NULL, "codebook bits per outlier coordinate"},
    TQ_CENTER_PARAM,
    TQ_PATH_PARAM,
    {NULL, 0, NULL, 0, 0, NULL, NULL},
};

static const kvs_param_doc_t tq_prod_params[] = {
    {"bits", KVS_PARAM_INT, "3", 1, 5, NULL,
     "bits per coordinate: bits-1 codebook bits plus one QJL sign of the residual"},
    {"rotation", KVS_PARAM_ENUM, "hadamard", 0, 0, KVS_ROTATION_CHOICES,
     "random rotation: randomized Hadamard (power-of-two d) or dense orthogonal"},
    {"outliers", KVS_PARAM_FLOAT, "0", 0, 0.5, NULL,
     "fraction of channels (largest mean |x| over the prompt) coded separately, rounded down"},
    {"outlier_bits", KVS_PARAM_INT, "4", 1, 5, NULL, "bits per outlier coordinate"},
    TQ_CENTER_PARAM,
    TQ_PATH_PARAM,
    {NULL, 0, NULL, 0, 0, NULL, NULL},
};

static const kvs_param_doc_t qjl_params[] = {
    {"bits", KVS_PARAM_INT, "2", 1, 16, NULL,
     "sketch sign bits per coordinate: m = bits * d rows"},
    {"outliers", KVS_PARAM_FLOAT, "0", 0, 0.5, NULL,
     "fraction of channels (largest mean |x| over the prompt) with their own sketch and norm"},
    {"outlier_bits", KVS_PARAM_INT, "32", 1, 64, NULL,
     "sketch sign bits per outlier coordinate"},
    TQ_CENTER_PARAM,
    TQ_PATH_PARAM,
    {NULL, 0, NULL, 0, 0, NULL, NULL},
};

static uint32_t n_outliers(const kvs_params_t *p, uint32_t d)
{
    return (uint32_t)floor(kvs_param_number(p, "outliers") * d + 1e-9);
}

/* Encoder configurations of the regular and the outlier part. */
static void make_configs(tq_variant_e variant, const kvs_params_t *p,
                         const kvs_kernel_dims_t *dims, kvs_tq_config_t cfg[2], uint32_t *n_out)
{
    unsigned bits = (unsigned)kvs_param_number(p, "bits");
    unsigned out_bits = (unsigned)kvs_param_number(p, "outlier_bits");
    int rotation = variant == TQ_VARIANT_QJL ? -1 : (int)kvs_param_number(p, "rotation");

    *n_out = n_outliers(p, dims->head_dim);
    memset(cfg, 0, 2 * sizeof *cfg);
    cfg[0].n = dims->head_dim - *n_out;
    cfg[1].n = *n_out;
    for (int k = 0; k < 2; k++) {
        unsigned b = k == 0 ? bits : out_bits;

        cfg[k].rotation = rotation;
        cfg[k].seed = kvs_rot_stream_seed(dims, k == 0 ? TQ_SEED_MAIN : TQ_SEED_OUTLIER);
        switch (variant) {
        case TQ_VARIANT_MSE:
            cfg[k].mse_bits = b;
            break;
        case TQ_VARIANT_PROD:
            cfg[k].mse_bits = b - 1;
            cfg[k].m = cfg[k].n;
            cfg[k].store_gamma = 1;
            break;
        default:
            cfg[k].m = b * cfg[k].n;
            break;
        }
    }
}

static kvs_status_e tq_check_variant(tq_variant_e variant, const char *name,
                                     const kvs_params_t *p, const kvs_kernel_dims_t *dims)
{
    kvs_tq_config_t cfg[2];
    uint32_t n_out;

    KVS_RETURN_IF(dims->head_dim == 0, KVS_ERR_KERNEL_SPEC, "%s: head_dim 0 is invalid", name);
    make_configs(variant, p, dims, cfg, &n_out);
    if (n_out && variant != TQ_VARIANT_QJL && cfg[0].rotation == KVS_ROTATION_HADAMARD)
        KVS_RETURN_IF((n_out & (n_out - 1)) || (cfg[0].n & (cfg[0].n - 1)), KVS_ERR_KERNEL_SPEC,
                      "%s: outliers=%g splits head_dim %u into %u and %u channels, but "
                      "rotation=hadamard needs powers of two; use outliers=0.5 or "
                      "rotation=dense",
                      name, kvs_param_number(p, "outliers"), dims->head_dim, n_out, cfg[0].n);
    KVS_FORWARD(kvs_tq_check(&cfg[0], name));
    if (n_out)
        KVS_FORWARD(kvs_tq_check(&cfg[1], name));
    return KVS_OK;
}

static kvs_status_e tq_create_variant(tq_variant_e variant, const kvs_params_t *p,
                                      const kvs_kernel_dims_t *dims, void **state)
{
    tq_codec_t *c;
    kvs_tq_config_t cfg[2];
    uint32_t n_out;
    kvs_status_e rc;

    *state = NULL;
    c = calloc(1, sizeof *c);
    KVS_RETURN_IF(!c, KVS_ERR_NOMEM, "out of memory for a TurboQuant codec");
    c->variant = variant;
    c->d = dims->head_dim;
    c->path = (kvs_tq_path_e)kvs_param_number(p, "path");
    make_configs(variant, p, dims, cfg, &n_out);
    rc = kvs_rot_split_create(dims->head_dim, n_out, &cfg[0], &cfg[1], &c->split);
    if (rc == KVS_OK && kvs_param_number(p, "center") != 0.0)
        rc = kvs_rot_split_set_center(c->split);
    if (rc != KVS_OK) {
        kvs_rot_split_destroy(c->split);
        free(c);
        return rc;
    }
    *state = c;
    return KVS_OK;
}

static void tq_destroy(void *state)
{
    tq_codec_t *c = state;

    if (!c)
        return;
    kvs_rot_split_destroy(c->split);
    free(c->score);
    free(c->w);
    free(c);
}

static kvs_status_e tq_append(void *state, const float *x, const float *x_pre)
{
    tq_codec_t *c = state;

    return kvs_rot_split_append(c->split, x);
}

static kvs_status_e tq_end_prefill(void *state)
{
    tq_codec_t *c = state;

    return kvs_rot_split_end_prefill(c->split);
}

static int reserve(tq_codec_t *c, uint32_t n)
{
    float *s, *w;

    if (n <= c->cap)
        return 1;
    s = realloc(c->score, n * sizeof *s);
    if (s)
        c->score = s;
    w = realloc(c->w, n * sizeof *w);
    if (w)
        c->w = w;
    if (!s || !w)
        return 0;
    c->cap = n;
    return 1;
}

static void tq_logits(void *state, const float *q, uint32_t group, const uint8_t *attend,
                      uint32_t n, float *out)
{
    tq_codec_t *c = state;

    for (uint32_t g = 0; g < group; g++) {
        float *row = out + (size_t)g * n;

        if (!reserve(c, n)) {
            for (uint32_t t = 0; t < n; t++)
                if (attend[t])
                    row[t] = NAN; /* NOTE: out of memory in a void hook shows up as NaN */
            continue;
        }
        kvs_rot_split_scores(c->split, q + (size_t)g * c->d, n, c->score, c->path);
        for (uint32_t t = 0; t < n; t++)
            if (attend[t])
                row[t] = c->score[t];
    }
}

static void tq_output(void *state, const float *w, uint32_t group, const uint8_t *attend,
                      uint32_t n, float *out)
{
    tq_codec_t *c = state;

    for (uint32_t g = 0; g < group; g++) {
        float *o = out + (size_t)g * c->d;

        if (!reserve(c, n)) {
            for (uint32_t j = 0; j < c->d; j++)
                o[j] = NAN; /* NOTE: out of memory in a void hook shows up as NaN */
            continue;
        }
        for (uint32_t t = 0; t < n; t++)
            c->w[t] = attend[t] ? w[(size_t)g * n + t] : 0.0f;
        kvs_rot_split_accumulate(c->split, c->w, n, o, c->path);
    }
}

static uint64_t tq_stored_bytes(const void *state)
{
    const tq_codec_t *c = state;

    return kvs_rot_split_stored_bytes(c->split);
}

static void tq_cost_variant(tq_variant_e variant, const kvs_params_t *p,
                            const kvs_kernel_dims_t *dims, unsigned role, uint64_t n_context,
                            kvs_part_cost_t *out)
{
    kvs_tq_config_t cfg[2];
    uint32_t n_out;
    double row = 0.0, flops = 0.0;
    uint64_t shared = 0;

    make_configs(variant, p, dims, cfg, &n_out);
    for (int k = 0; k < (n_out ? 2 : 1); k++) {
        row += kvs_tq_row_bytes(&cfg[k]);
        shared += kvs_tq_shared_bytes(&cfg[k]);
        flops += kvs_tq_step_flops(&cfg[k], n_context);
    }
    if (n_out)
        shared += (uint64_t)n_out * (dims->head_dim <= 256 ? 1 : 2);

    memset(out, 0, sizeof *out);
    out->bytes_per_token = row;
    out->shared_bytes = shared;
    out->stored_bytes = (uint64_t)(row * (double)n_context) + shared;
    /* The prompt mean is per stream, so it is stored but not shared. */
    if (kvs_param_number(p, "center") != 0.0)
        out->stored_bytes += (uint64_t)dims->head_dim * sizeof(float);
    /* A step reads every row once for the whole query group and the shared
    ** tables once; per-query work is the table build and the look-ups. */
    out->read_bytes = out->stored_bytes;
    out->written_bytes = 0;
    out->flops = flops * (dims->group_size ? dims->group_size : 1);
}

/* ---- the three codecs ------------------------------------------------- */

#define TQ_VARIANT_FUNCS(prefix, variant, name)                                                \
    static kvs_status_e prefix##_check(const kvs_params_t *p, const kvs_kernel_dims_t *dims)  \
    {                                                                                          \
        return tq_check_variant(variant, name, p, dims);                                       \
    }                                                                                          \
    static kvs_status_e prefix##_create(const kvs_params_t *p, const kvs_kernel_dims_t *dims, \
                                        void **state)                                          \
    {                                                                                          \
        return tq_create_variant(variant, p, dims, state);                                     \
    }                                                                                          \
    static void prefix##_cost(const kvs_params_t *p, const kvs_kernel_dims_t *dims,            \
                              unsigned role, uint64_t n_context, kvs_part_cost_t *out)         \
    {                                                                                          \
        tq_cost_variant(variant, p, dims, role, n_context, out);                               \
    }

TQ_VARIANT_FUNCS(tq_mse, TQ_VARIANT_MSE, "turboquant-mse")
TQ_VARIANT_FUNCS(tq_prod, TQ_VARIANT_PROD, "turboquant-prod")
TQ_VARIANT_FUNCS(qjl, TQ_VARIANT_QJL, "qjl")

const kvs_codec_i kvs_codec_turboquant_mse = {
    .name = "turboquant-mse",
    .family = "rotation",
    .description = "TurboQuant-MSE: random rotation, Lloyd-Max codebook index per coordinate, "
                   "F16 norm; logits and sums on codes",
    .params = tq_mse_params,
    .roles = KVS_CODEC_KEY | KVS_CODEC_VALUE | KVS_CODEC_COMPRESSED_EXEC,
    .check = tq_mse_check,
    .create = tq_mse_create,
    .append = tq_append,
    .end_prefill = tq_end_prefill,
    .logits = tq_logits,
    .output = tq_output,
    .stored_bytes = tq_stored_bytes,
    .cost = tq_mse_cost,
    .is_compressed = NULL,
    .destroy = tq_destroy,
};

const kvs_codec_i kvs_codec_turboquant_prod = {
    .name = "turboquant-prod",
    .family = "rotation",
    .description = "TurboQuant-prod: (bits-1)-bit TurboQuant-MSE plus 1-bit QJL signs of the "
                   "residual and its F16 norm; unbiased inner products",
    .params = tq_prod_params,
    .roles = KVS_CODEC_KEY | KVS_CODEC_VALUE | KVS_CODEC_COMPRESSED_EXEC,
    .check = tq_prod_check,
    .create = tq_prod_create,
    .append = tq_append,
    .end_prefill = tq_end_prefill,
    .logits = tq_logits,
    .output = tq_output,
    .stored_bytes = tq_stored_bytes,
    .cost = tq_prod_cost,
    .is_compressed = NULL,
    .destroy = tq_destroy,
};

const kvs_codec_i kvs_codec_qjl = {
    .name = "qjl",
    .family = "sketch",
    .description = "QJL: signs of a Gaussian sketch (m = bits*d) and the F16 norm; unbiased "
                   "sqrt(pi/2)/m estimator",
    .params = qjl_params,
    .roles = KVS_CODEC_KEY | KVS_CODEC_VALUE | KVS_CODEC_COMPRESSED_EXEC,
    .check = qjl_check,
    .create = qjl_create,
    .append = tq_append,
    .end_prefill = tq_end_prefill,
    .logits = tq_logits,
    .output = tq_output,
    .stored_bytes = tq_stored_bytes,
    .cost = qjl_cost,
    .is_compressed = NULL,
    .destroy = tq_destroy,
};
