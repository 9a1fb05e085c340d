/*
** model.h: a Hugging Face Llama model folder, loaded read-only.
**
** kvs_model_load reads config.json, memory-maps model.safetensors (or the
** shards listed in model.safetensors.index.json) and checks that every tensor
** LlamaForCausalLM needs is present with the right shape and a supported
** dtype. Weights stay in the mapped files in their stored dtype; the forward
** pass converts them as it reads. Linear weights are (out_features,
** in_features), row-major.
*/
#ifndef KVS_MODEL_H
#define KVS_MODEL_H

#include "../common/kvs_common.h"

#include <stddef.h>
#include <stdint.h>

/* Element types of stored weights. Values are stable. */
typedef enum kvs_wtype_e {
    KVS_WTYPE_F32 = 0,
    KVS_WTYPE_F16 = 1,
    KVS_WTYPE_BF16 = 2,
    KVS_WTYPE_COUNT
} kvs_wtype_e;

/* "F32", "F16", "BF16" as safetensors spells them. */
const char *kvs_wtype_name(kvs_wtype_e type);
size_t kvs_wtype_size(kvs_wtype_e type);

#define KVS_MODEL_MAX_EOS 16

/* The config.json fields the forward pass uses. Optional keys take the
** Hugging Face LlamaConfig defaults (transformers 4.42): num_key_value_heads
** = num_attention_heads, head_dim = hidden_size / num_attention_heads,
** rms_norm_eps 1e-6, rope_theta 10000, tie_word_embeddings false. */
typedef struct kvs_model_config {
    uint32_t hidden_size;
    uint32_t intermediate_size;
    uint32_t n_layers;
    uint32_t n_heads;
    uint32_t n_kv_heads;
    uint32_t head_dim;
    uint32_t vocab_size;
    uint32_t max_position_embeddings; /* 0 when absent */
    double rms_norm_eps;
    double rope_theta;
    int tie_word_embeddings;
    int32_t bos_id;                   /* -1 when absent */
    int32_t eos_ids[KVS_MODEL_MAX_EOS];
    uint32_t n_eos;
    int synthetic;                    /* "kvsim_synthetic": true */
    char torch_dtype[16];             /* "" when absent */
} kvs_model_config_t;

/* Parses config.json text. path only names the file in messages. Fails
** with KVS_ERR_CONFIG naming the key for a missing key, a wrong type or an
** inconsistent value, and KVS_ERR_UNSUPPORTED for a model that is not a
** plain Llama (other architecture, rope_scaling, attention or MLP bias). */
kvs_status_e kvs_model_config_parse(const char *text, size_t size, const char *path,
                                    kvs_model_config_t *out);

/* Writes cfg as config.json text (malloc'd, NUL-terminated), with the keys
** Hugging Face uses. */
kvs_status_e kvs_model_config_dump(const kvs_model_config_t *cfg, int synthetic, char **out);

/* A weight matrix or vector as stored: rows x cols elements of type. A
** vector has rows = 1. data is aligned to the element size. */
typedef struct kvs_weight {
    kvs_wtype_e type;
    uint32_t rows;
    uint32_t cols;
    const void *data;
} kvs_weight_t;

typedef struct kvs_layer_weights {
    kvs_weight_t attn_norm;   /* input_layernorm, (hidden) */
    kvs_weight_t wq;          /* (n_heads*head_dim, hidden) */
    kvs_weight_t wk;          /* (n_kv_heads*head_dim, hidden) */
    kvs_weight_t wv;          /* (n_kv_heads*head_dim, hidden) */
    kvs_weight_t wo;          /* (hidden, n_heads*head_dim) */
    kvs_weight_t mlp_norm;    /* post_attention_layernorm, (hidden) */
    kvs_weight_t w_gate;      /* (intermediate, hidden) */
    kvs_weight_t w_up;        /* (intermediate, hidden) */
    kvs_weight_t w_down;      /* (hidden, intermediate) */
} kvs_layer_weights_t;

typedef struct kvs_model kvs_model_t;

/* Resolves where a model lives into out (cap bytes). name is a folder, or
** a Hugging Face repository id such as "HuggingFaceTB/SmolLM2-135M" looked
** up in the hub cache ($HF_HUB_CACHE, else $HF_HOME/hub, else
** ~/.cache/huggingface/hub) as models--OWNER--NAME/snapshots/REV, with REV
** from refs/main when present. NULL or "" reads $KVSIM_MODEL. Fails with
** KVS_ERR_NOT_FOUND naming the places searched. */
kvs_status_e kvs_model_resolve(const char *name, char *out, size_t cap);

/* Loads the model folder dir. Errors name the folder or file and, for
** tensor problems, the tensor: KVS_ERR_NOT_FOUND (no config.json or no
** safetensors), KVS_ERR_CONFIG, KVS_ERR_UNSUPPORTED, KVS_ERR_SAFETENSORS
** (malformed file), KVS_ERR_TENSOR (missing tensor, wrong shape or dtype). */
kvs_status_e kvs_model_load(const char *dir, kvs_model_t **out);
void kvs_model_destroy(kvs_model_t *m);

const kvs_model_config_t *kvs_model_get_config(const kvs_model_t *m);
const kvs_layer_weights_t *kvs_model_layer(const kvs_model_t *m, uint32_t layer);
const kvs_weight_t *kvs_model_embedding(const kvs_model_t *m);  /* (vocab, hidden) */
const kvs_weight_t *kvs_model_final_norm(const kvs_model_t *m);  /* (hidden) */
const kvs_weight_t *kvs_model_lm_head(const kvs_model_t *m);     /* (vocab, hidden); the embedding when tied */
/* The dtype of the linear weights ("BF16", ...); mixed files report the
** q_proj dtype of layer 0. */
kvs_wtype_e kvs_model_weight_type(const kvs_model_t *m);
/* Bytes of weights one decode step reads: every linear weight, the norms
** and the output head (the embedding row lookup is not counted). */
uint64_t kvs_model_decode_bytes(const kvs_model_t *m);
/* The folder name (last path component), or OWNER/NAME for a hub cache
** snapshot folder, whose own name is a commit hash; for metadata. */
const char *kvs_model_name(const kvs_model_t *m);
const char *kvs_model_dir(const kvs_model_t *m);

#endif
