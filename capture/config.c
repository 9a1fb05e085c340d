/* config.c: config.json of a Llama model, parsed strictly with jansson. */
#include "model.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Bounds that keep every size product in 64 bits and reject garbage early;
** the largest public Llama models are well inside them. */
#define MAX_DIM (1u << 20)
#define MAX_LAYERS 1024u
#define MAX_VOCAB (1u << 24)

static kvs_status_e get_u32(json_t *root, const char *path, const char *key, int required,
                            uint32_t def, uint32_t max, uint32_t *out)
{
    json_t *v = json_object_get(root, key);

    if (!v || json_is_null(v)) {
        KVS_RETURN_IF(required, KVS_ERR_CONFIG, "%s: missing required key \"%s\"", path, key);
        *out = def;
        return KVS_OK;
    }
    KVS_RETURN_IF(!json_is_integer(v), KVS_ERR_CONFIG, "%s: \"%s\" must be an integer", path, key);
    json_int_t x = json_integer_value(v);
    KVS_RETURN_IF(x < 1 || (uint64_t)x > max, KVS_ERR_CONFIG,
                  "%s: \"%s\" is %lld, expected 1..%u", path, key, (long long)x, max);
    *out = (uint32_t)x;
    return KVS_OK;
}

static kvs_status_e get_positive(json_t *root, const char *path, const char *key, double def,
                                 double *out)
{
    json_t *v = json_object_get(root, key);

    if (!v || json_is_null(v)) {
        *out = def;
        return KVS_OK;
    }
    KVS_RETURN_IF(!json_is_number(v), KVS_ERR_CONFIG, "%s: \"%s\" must be a number", path, key);
    double x = json_number_value(v);
    KVS_RETURN_IF(!isfinite(x) || x <= 0, KVS_ERR_CONFIG, "%s: \"%s\" is %g, expected > 0", path,
                  key, x);
    *out = x;
    return KVS_OK;
}

static kvs_status_e get_bool(json_t *root, const char *path, const char *key, int def, int *out)
{
    json_t *v = json_object_get(root, key);

    if (!v || json_is_null(v)) {
        *out = def;
        return KVS_OK;
    }
    KVS_RETURN_IF(!json_is_boolean(v), KVS_ERR_CONFIG, "%s: \"%s\" must be true or false", path,
                  key);
    *out = json_is_true(v);
    return KVS_OK;
}

static kvs_status_e check_architecture(json_t *root, const char *path)
{
    json_t *arch = json_object_get(root, "architectures");
    json_t *type = json_object_get(root, "model_type");
    int llama = 0;

    KVS_RETURN_IF(arch && !json_is_null(arch) && !json_is_array(arch), KVS_ERR_CONFIG,
                  "%s: \"architectures\" must be an array of strings", path);
    KVS_RETURN_IF(type && !json_is_null(type) && !json_is_string(type), KVS_ERR_CONFIG,
                  "%s: \"model_type\" must be a string", path);
    /* Both keys must agree when present: a config naming another
    ** architecture in either one describes a model the Llama pass would
    ** compute wrongly without any error. */
    int type_ok = !json_is_string(type) || !strcmp(json_string_value(type), "llama");
    int arch_ok = !json_is_array(arch) || json_array_size(arch) == 0;
    for (size_t i = 0; json_is_array(arch) && i < json_array_size(arch); i++) {
        json_t *a = json_array_get(arch, i);
        if (json_is_string(a) && !strcmp(json_string_value(a), "LlamaForCausalLM"))
            arch_ok = 1;
    }
    llama = type_ok && arch_ok && (json_is_string(type) || json_array_size(arch) > 0);
    if (!llama) {
        const char *name = "(neither architectures nor model_type given)";
        if (!arch_ok && json_is_string(json_array_get(arch, 0)))
            name = json_string_value(json_array_get(arch, 0));
        else if (!type_ok)
            name = json_string_value(type);
        return kvs_fail(KVS_ERR_UNSUPPORTED,
                        "%s: architecture %.80s is not supported; kvsim runs LlamaForCausalLM "
                        "(model_type \"llama\") only",
                        path, name);
    }
    return KVS_OK;
}

/* Features that change the arithmetic of the forward pass; running the
** plain Llama pass over such a model would give silently wrong tensors. */
static kvs_status_e check_unsupported(json_t *root, const char *path)
{
    json_t *v = json_object_get(root, "rope_scaling");
    int flag;

    KVS_RETURN_IF(v && !json_is_null(v), KVS_ERR_UNSUPPORTED,
                  "%s: \"rope_scaling\" is set; kvsim implements only unscaled RoPE "
                  "(rope_scaling null), so this model would be computed wrongly",
                  path);
    KVS_FORWARD(get_bool(root, path, "attention_bias", 0, &flag));
    KVS_RETURN_IF(flag, KVS_ERR_UNSUPPORTED,
                  "%s: \"attention_bias\" is true; kvsim supports Llama without projection biases",
                  path);
    KVS_FORWARD(get_bool(root, path, "mlp_bias", 0, &flag));
    KVS_RETURN_IF(flag, KVS_ERR_UNSUPPORTED,
                  "%s: \"mlp_bias\" is true; kvsim supports Llama without MLP biases", path);
    v = json_object_get(root, "hidden_act");
    KVS_RETURN_IF(v && !json_is_null(v) && !json_is_string(v), KVS_ERR_CONFIG,
                  "%s: \"hidden_act\" must be a string", path);
    KVS_RETURN_IF(json_is_string(v) && strcmp(json_string_value(v), "silu"), KVS_ERR_UNSUPPORTED,
                  "%s: \"hidden_act\" is \"%.40s\"; kvsim supports \"silu\" only", path,
                  json_string_value(v));
    return KVS_OK;
}

static kvs_status_e get_token_ids(json_t *root, const char *path, kvs_model_config_t *cfg)
{
    json_t *bos = json_object_get(root, "bos_token_id");
    json_t *eos = json_object_get(root, "eos_token_id");

    cfg->bos_id = -1;
    if (bos && !json_is_null(bos)) {
        KVS_RETURN_IF(!json_is_integer(bos) || json_integer_value(bos) < 0 ||
                          json_integer_value(bos) >= cfg->vocab_size,
                      KVS_ERR_CONFIG, "%s: \"bos_token_id\" must be an integer below vocab_size %u",
                      path, cfg->vocab_size);
        cfg->bos_id = (int32_t)json_integer_value(bos);
    }

    /* eos_token_id is an integer or, in newer configs, a list of them. */
    cfg->n_eos = 0;
    if (!eos || json_is_null(eos))
        return KVS_OK;
    size_t n = json_is_array(eos) ? json_array_size(eos) : 1;
    KVS_RETURN_IF(n > KVS_MODEL_MAX_EOS, KVS_ERR_CONFIG,
                  "%s: \"eos_token_id\" lists %zu ids, more than %d", path, n, KVS_MODEL_MAX_EOS);
    for (size_t i = 0; i < n; i++) {
        json_t *id = json_is_array(eos) ? json_array_get(eos, i) : eos;
        KVS_RETURN_IF(!json_is_integer(id) || json_integer_value(id) < 0 ||
                          json_integer_value(id) >= cfg->vocab_size,
                      KVS_ERR_CONFIG,
                      "%s: \"eos_token_id\" must be an integer or a list of integers below "
                      "vocab_size %u",
                      path, cfg->vocab_size);
        cfg->eos_ids[cfg->n_eos++] = (int32_t)json_integer_value(id);
    }
    return KVS_OK;
}

static kvs_status_e parse_root(json_t *root, const char *path, kvs_model_config_t *cfg)
{
    KVS_RETURN_IF(!json_is_object(root), KVS_ERR_CONFIG, "%s: top level must be a JSON object",
                  path);
    KVS_FORWARD(check_architecture(root, path));
    KVS_FORWARD(check_unsupported(root, path));

    KVS_FORWARD(get_u32(root, path, "hidden_size", 1, 0, MAX_DIM, &cfg->hidden_size));
    KVS_FORWARD(get_u32(root, path, "intermediate_size", 1, 0, MAX_DIM, &cfg->intermediate_size));
    KVS_FORWARD(get_u32(root, path, "num_hidden_layers", 1, 0, MAX_LAYERS, &cfg->n_layers));
    KVS_FORWARD(get_u32(root, path, "num_attention_heads", 1, 0, MAX_DIM, &cfg->n_heads));
    KVS_FORWARD(get_u32(root, path, "num_key_value_heads", 0, cfg->n_heads, MAX_DIM,
                        &cfg->n_kv_heads));
    KVS_FORWARD(get_u32(root, path, "vocab_size", 1, 0, MAX_VOCAB, &cfg->vocab_size));

    json_t *hd = json_object_get(root, "head_dim");
    if (hd && !json_is_null(hd)) {
        KVS_FORWARD(get_u32(root, path, "head_dim", 1, 0, MAX_DIM, &cfg->head_dim));
    } else {
        KVS_RETURN_IF(cfg->hidden_size % cfg->n_heads, KVS_ERR_CONFIG,
                      "%s: hidden_size %u is not a multiple of num_attention_heads %u and "
                      "\"head_dim\" is absent",
                      path, cfg->hidden_size, cfg->n_heads);
        cfg->head_dim = cfg->hidden_size / cfg->n_heads;
    }
    KVS_RETURN_IF(cfg->head_dim % 2, KVS_ERR_CONFIG,
                  "%s: head_dim %u is odd; RoPE rotates pairs of channels, so it must be even",
                  path, cfg->head_dim);
    KVS_RETURN_IF(cfg->n_heads % cfg->n_kv_heads, KVS_ERR_CONFIG,
                  "%s: num_attention_heads %u is not a multiple of num_key_value_heads %u", path,
                  cfg->n_heads, cfg->n_kv_heads);
    KVS_RETURN_IF((uint64_t)cfg->n_heads * cfg->head_dim > MAX_DIM, KVS_ERR_CONFIG,
                  "%s: num_attention_heads * head_dim = %llu is too large", path,
                  (unsigned long long)cfg->n_heads * cfg->head_dim);

    json_t *mpe = json_object_get(root, "max_position_embeddings");
    cfg->max_position_embeddings = 0;
    if (mpe && !json_is_null(mpe))
        KVS_FORWARD(get_u32(root, path, "max_position_embeddings", 1, 0, UINT32_MAX,
                            &cfg->max_position_embeddings));
    KVS_FORWARD(get_positive(root, path, "rms_norm_eps", 1e-6, &cfg->rms_norm_eps));
    KVS_FORWARD(get_positive(root, path, "rope_theta", 10000.0, &cfg->rope_theta));
    KVS_FORWARD(get_bool(root, path, "tie_word_embeddings", 0, &cfg->tie_word_embeddings));
    KVS_FORWARD(get_bool(root, path, "kvsim_synthetic", 0, &cfg->synthetic));
    KVS_FORWARD(get_token_ids(root, path, cfg));

    json_t *td = json_object_get(root, "torch_dtype");
    KVS_RETURN_IF(td && !json_is_null(td) && !json_is_string(td), KVS_ERR_CONFIG,
                  "%s: \"torch_dtype\" must be a string", path);
    if (json_is_string(td))
        snprintf(cfg->torch_dtype, sizeof cfg->torch_dtype, "%s", json_string_value(td));
    return KVS_OK;
}

kvs_status_e kvs_model_config_parse(const char *text, size_t size, const char *path,
                                    kvs_model_config_t *out)
{
    json_error_t jerr;
    json_t *root = json_loadb(text, size, JSON_REJECT_DUPLICATES, &jerr);

    memset(out, 0, sizeof *out);
    KVS_RETURN_IF(!root, KVS_ERR_CONFIG, "%s: invalid JSON at line %d: %s", path, jerr.line,
                  jerr.text);
    kvs_status_e rc = parse_root(root, path, out);
    json_decref(root);
    return rc;
}

kvs_status_e kvs_model_config_dump(const kvs_model_config_t *cfg, int synthetic, char **out)
{
    json_t *root = json_object();
    json_t *eos;

    *out = NULL;
    if (cfg->n_eos == 1) {
        eos = json_integer(cfg->eos_ids[0]);
    } else {
        eos = json_array();
        for (uint32_t i = 0; i < cfg->n_eos; i++)
            json_array_append_new(eos, json_integer(cfg->eos_ids[i]));
    }
    json_object_set_new(root, "architectures", json_pack("[s]", "LlamaForCausalLM"));
    json_object_set_new(root, "model_type", json_string("llama"));
    json_object_set_new(root, "hidden_size", json_integer(cfg->hidden_size));
    json_object_set_new(root, "intermediate_size", json_integer(cfg->intermediate_size));
    json_object_set_new(root, "num_hidden_layers", json_integer(cfg->n_layers));
    json_object_set_new(root, "num_attention_heads", json_integer(cfg->n_heads));
    json_object_set_new(root, "num_key_value_heads", json_integer(cfg->n_kv_heads));
    json_object_set_new(root, "head_dim", json_integer(cfg->head_dim));
    json_object_set_new(root, "vocab_size", json_integer(cfg->vocab_size));
    if (cfg->max_position_embeddings)
        json_object_set_new(root, "max_position_embeddings",
                            json_integer(cfg->max_position_embeddings));
    json_object_set_new(root, "rms_norm_eps", json_real(cfg->rms_norm_eps));
    json_object_set_new(root, "rope_theta", json_real(cfg->rope_theta));
    json_object_set_new(root, "rope_scaling", json_null());
    json_object_set_new(root, "hidden_act", json_string("silu"));
    json_object_set_new(root, "attention_bias", json_false());
    json_object_set_new(root, "mlp_bias", json_false());
    json_object_set_new(root, "tie_word_embeddings", json_boolean(cfg->tie_word_embeddings));
    if (cfg->bos_id >= 0)
        json_object_set_new(root, "bos_token_id", json_integer(cfg->bos_id));
    if (cfg->n_eos)
        json_object_set_new(root, "eos_token_id", eos);
    else
        json_decref(eos);
    if (cfg->torch_dtype[0])
        json_object_set_new(root, "torch_dtype", json_string(cfg->torch_dtype));
    if (synthetic)
        json_object_set_new(root, "kvsim_synthetic", json_true());

    *out = json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(15));
    json_decref(root);
    KVS_RETURN_IF(!*out, KVS_ERR_NOMEM, "out of memory writing config.json");
    return KVS_OK;
}
