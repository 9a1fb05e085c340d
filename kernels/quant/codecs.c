/*
** codecs.c: the affine and hqq codecs, thin parameter layers over the
** affine stream of affine.h, and the quantized family's registry table.
*/
#include "affine.h"

#include <stdlib.h>
#include <string.h>

/* ---- shared glue -------------------------------------------------------- */

static kvs_status_e quant_create(const kvs_affine_cfg_t *cfg, void **state)
{
    kvs_affine_t *a;

    KVS_FORWARD(kvs_affine_create(cfg, &a));
    *state = a;
    return KVS_OK;
}

static kvs_status_e quant_append(void *state, const float *x, const float *x_pre)
{
    return kvs_affine_append(state, x);
}

static kvs_status_e quant_end_prefill(void *state)
{
    return kvs_affine_end_prefill(state);
}

static void quant_logits(void *state, const float *q, uint32_t group, const uint8_t *attend,
                         uint32_t n, float *out)
{
    kvs_affine_logits(state, q, group, attend, n, out);
}

static void quant_output(void *state, const float *w, uint32_t group, const uint8_t *attend,
                         uint32_t n, float *out)
{
    kvs_affine_output(state, w, group, attend, n, out);
}

static uint64_t quant_stored_bytes(const void *state)
{
    return kvs_affine_stored_bytes(state);
}

static void quant_destroy(void *state)
{
    kvs_affine_destroy(state);
}

static int quant_is_compressed(const kvs_params_t *p)
{
    return !strcmp(kvs_param_choice(p, "exec"), "compressed");
}

static kvs_fp_e param_format(const kvs_params_t *p, const char *name)
{
    return (kvs_fp_e)kvs_fp_parse(kvs_param_choice(p, name));
}

/* ---- affine ------------------------------------------------------------- */

static const kvs_param_doc_t affine_params[] = {
    {"bits", KVS_PARAM_INT, "4", 1, 8, NULL, "code width in bits: 1, 2, 3, 4 or 8"},
    {"group", KVS_PARAM_INT, "64", 1, 4096, NULL,
     "group size: channels per group (axis=token) or positions per block (axis=channel)"},
    {"axis", KVS_PARAM_ENUM, "token", 0, 0, "token|channel",
     "grouping: along a position's channels, or along a channel's positions"},
    {"flush", KVS_PARAM_ENUM, "sliding", 0, 0, "sliding|block|requant",
     "how positions leave the full-precision window (see docs/kernels.md)"},
    {"residual", KVS_PARAM_INT, "0", 0, 1048576, NULL,
     "full-precision window length in positions"},
    {"scale_dtype", KVS_PARAM_ENUM, "bf16", 0, 0, "bf16|f16|f32",
     "storage format of each group's step and offset"},
    {"window_dtype", KVS_PARAM_ENUM, "bf16", 0, 0, "bf16|f16|f32",
     "format of the window and of the storage-only dense copy"},
    {"exec", KVS_PARAM_ENUM, "compressed", 0, 0, "compressed|storage",
     "attention on the codes, or on a dense copy dequantized every step"},
    {NULL, 0, NULL, 0, 0, NULL, NULL},
};

static void affine_cfg(const kvs_params_t *p, const kvs_kernel_dims_t *dims, kvs_affine_cfg_t *c)
{
    memset(c, 0, sizeof *c);
    c->d = dims ? dims->head_dim : 0;
    c->bits = (uint32_t)kvs_param_number(p, "bits");
    c->group = (uint32_t)kvs_param_number(p, "group");
    c->axis = (kvs_affine_axis_e)kvs_param_number(p, "axis");
    c->flush = (kvs_affine_flush_e)kvs_param_number(p, "flush");
    c->fit = KVS_FIT_MINMAX;
    c->param_fmt = param_format(p, "scale_dtype");
    c->window_fmt = param_format(p, "window_dtype");
    c->residual = (uint32_t)kvs_param_number(p, "residual");
    c->compressed = quant_is_compressed(p);
}

static kvs_status_e affine_check(const kvs_params_t *p, const kvs_kernel_dims_t *dims)
{
    kvs_affine_cfg_t c;

    affine_cfg(p, dims, &c);
    kvs_status_e rc = kvs_affine_check(&c);
    if (rc != KVS_OK)
        kvs_error_prefix("kernel part 'affine'");
    return rc;
}

static kvs_status_e affine_create(const kvs_params_t *p, const kvs_kernel_dims_t *dims,
                                  void **state)
{
    kvs_affine_cfg_t c;

    affine_cfg(p, dims, &c);
    return quant_create(&c, state);
}

static void affine_cost(const kvs_params_t *p, const kvs_kernel_dims_t *dims, unsigned role,
                        uint64_t n_context, kvs_part_cost_t *out)
{
    kvs_affine_cfg_t c;

    affine_cfg(p, dims, &c);
    kvs_affine_cost(&c, dims->group_size, n_context, out);
}

static const kvs_codec_i affine_codec = {
    .name = "affine",
    .family = "quantized",
    .description = "affine integer quantization with min-max groups and a full-precision window",
    .params = affine_params,
    .roles = KVS_CODEC_KEY | KVS_CODEC_VALUE | KVS_CODEC_COMPRESSED_EXEC,
    .check = affine_check,
    .create = affine_create,
    .append = quant_append,
    .end_prefill = quant_end_prefill,
    .logits = quant_logits,
    .output = quant_output,
    .stored_bytes = quant_stored_bytes,
    .cost = affine_cost,
    .is_compressed = quant_is_compressed,
    .destroy = quant_destroy,
};

/* ---- hqq ---------------------------------------------------------------- */

static const kvs_param_doc_t hqq_params[] = {
    {"bits", KVS_PARAM_INT, "4", 1, 8, NULL, "code width in bits: 1, 2, 3, 4 or 8"},
    {"group", KVS_PARAM_INT, "64", 1, 4096, NULL, "channels per group of one position"},
    {"optimize", KVS_PARAM_INT, "0", 0, 1, NULL,
     "1: optimise zero points (half-quadratic, lp norm); 0: plain min-max as the HF cache runs"},
    {"residual", KVS_PARAM_INT, "128", 0, 1048576, NULL,
     "re-quantize everything when this many positions wait (HF residual_length)"},
    {"scale_dtype", KVS_PARAM_ENUM, "bf16", 0, 0, "bf16|f16|f32",
     "storage format of each group's step and zero point"},
    {"window_dtype", KVS_PARAM_ENUM, "bf16", 0, 0, "bf16|f16|f32",
     "format of the window and of the storage-only dense copy"},
    {"exec", KVS_PARAM_ENUM, "storage", 0, 0, "storage|compressed",
     "dense copy dequantized every step (as HF), or attention on the codes"},
    {"lp", KVS_PARAM_FLOAT, "0.7", 0.05, 2.0, NULL, "p of the lp norm the optimiser minimises"},
    {"beta", KVS_PARAM_FLOAT, "10", 1e-3, 1e6, NULL, "initial half-quadratic penalty beta"},
    {"kappa", KVS_PARAM_FLOAT, "1.01", 1.0, 10.0, NULL, "factor applied to beta every iteration"},
    {"iters", KVS_PARAM_INT, "20", 1, 1000, NULL,
     "maximum optimiser iterations (stops early when the mean error rises)"},
    {NULL, 0, NULL, 0, 0, NULL, NULL},
};

static void hqq_cfg(const kvs_params_t *p, const kvs_kernel_dims_t *dims, kvs_affine_cfg_t *c)
{
    memset(c, 0, sizeof *c);
    c->d = dims ? dims->head_dim : 0;
    c->bits = (uint32_t)kvs_param_number(p, "bits");
    c->group = (uint32_t)kvs_param_number(p, "group");
    c->axis = KVS_AFFINE_AXIS_TOKEN;
    c->flush = KVS_AFFINE_FLUSH_REQUANT;
    c->fit = kvs_param_number(p, "optimize") != 0 ? KVS_FIT_HQQ_PROX : KVS_FIT_HQQ;
    c->hqq.lp = kvs_param_number(p, "lp");
    c->hqq.beta = kvs_param_number(p, "beta");
    c->hqq.kappa = kvs_param_number(p, "kappa");
    c->hqq.iters = (uint32_t)kvs_param_number(p, "iters");
    c->param_fmt = param_format(p, "scale_dtype");
    c->window_fmt = param_format(p, "window_dtype");
    c->residual = (uint32_t)kvs_param_number(p, "residual");
    c->compressed = quant_is_compressed(p);
}

static kvs_status_e hqq_check(const kvs_params_t *p, const kvs_kernel_dims_t *dims)
{
    kvs_affine_cfg_t c;

    hqq_cfg(p, dims, &c);
    kvs_status_e rc = kvs_affine_check(&c);
    if (rc != KVS_OK)
        kvs_error_prefix("kernel part 'hqq'");
    return rc;
}

static kvs_status_e hqq_create(const kvs_params_t *p, const kvs_kernel_dims_t *dims, void **state)
{
    kvs_affine_cfg_t c;

    hqq_cfg(p, dims, &c);
    return quant_create(&c, state);
}

static void hqq_cost(const kvs_params_t *p, const kvs_kernel_dims_t *dims, unsigned role,
                     uint64_t n_context, kvs_part_cost_t *out)
{
    kvs_affine_cfg_t c;

    hqq_cfg(p, dims, &c);
    kvs_affine_cost(&c, dims->group_size, n_context, out);
}

static const kvs_codec_i hqq_codec = {
    .name = "hqq",
    .family = "quantized",
    .description = "HQQ per-position groups, min-max or half-quadratic zero points, HF residual",
    .params = hqq_params,
    .roles = KVS_CODEC_KEY | KVS_CODEC_VALUE | KVS_CODEC_COMPRESSED_EXEC,
    .check = hqq_check,
    .create = hqq_create,
    .append = quant_append,
    .end_prefill = quant_end_prefill,
    .logits = quant_logits,
    .output = quant_output,
    .stored_bytes = quant_stored_bytes,
    .cost = hqq_cost,
    .is_compressed = quant_is_compressed,
    .destroy = quant_destroy,
};

const kvs_codec_i *const kvs_codecs_quant[] = {&affine_codec, &hqq_codec, NULL};
