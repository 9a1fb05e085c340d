/* synth.c: SmolLM2-shaped model folders with seeded random BF16 weights. */
#include "synth.h"

#include "../common/fsutil.h"
#include "capture.h"
#include "matvec.h"
#include "sample.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Query/key channel pairs per head that share weights (see structure_qk). */
#define SHARED_PAIRS 4u
#define SHARED_SCALE 2.0f
/* Embedding standard deviation: with the tied output head, a normalized
** hidden state (norm sqrt(hidden)) gives logits of standard deviation
** EMBED_STD * sqrt(hidden), about 2.4 for SmolLM2-135M, so sampling
** neither collapses to argmax nor spreads uniformly. */
#define EMBED_STD 0.1f

typedef struct synth_shape {
    const char *name;
    uint32_t hidden, inter, layers, heads, kv_heads, head_dim;
    double theta;
} synth_shape_t;

/* SmolLM2 configs (HuggingFaceTB/SmolLM2-*, config.json). All three share
** vocab 49152, rms_norm_eps 1e-5, tied embeddings, BOS 1, EOS 2 and 8192
** positions.
** NOTE: only the 135M row was checked against a real config.json; the 360M
** and 1.7B rows (including rope_theta 130000 for 1.7B) are unverified. */
static const synth_shape_t shapes[] = {
    {"smollm2-135m", 576, 1536, 30, 9, 3, 64, 100000.0},
    {"smollm2-360m", 960, 2560, 32, 15, 5, 64, 100000.0},
    {"smollm2-1.7b", 2048, 8192, 24, 32, 32, 64, 130000.0},
};

kvs_status_e kvs_model_synth_shape(const char *shape, kvs_model_config_t *out)
{
    memset(out, 0, sizeof *out);
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        const synth_shape_t *s = &shapes[i];
        if (strcmp(shape, s->name))
            continue;
        out->hidden_size = s->hidden;
        out->intermediate_size = s->inter;
        out->n_layers = s->layers;
        out->n_heads = s->heads;
        out->n_kv_heads = s->kv_heads;
        out->head_dim = s->head_dim;
        out->vocab_size = 49152;
        out->max_position_embeddings = 8192;
        out->rms_norm_eps = 1e-5;
        out->rope_theta = s->theta;
        out->tie_word_embeddings = 1;
        out->bos_id = 1;
        out->eos_ids[0] = 2;
        out->n_eos = 1;
        out->synthetic = 1;
        snprintf(out->torch_dtype, sizeof out->torch_dtype, "bfloat16");
        return KVS_OK;
    }
    return kvs_fail(KVS_ERR_USAGE,
                    "unknown model shape '%s'; use smollm2-135m, smollm2-360m or smollm2-1.7b",
                    shape);
}

/* Approximately standard normal: the sum of four 16-bit uniforms from one
** generator output, centred and scaled to unit variance (Irwin-Hall, bounded
** at +-3.46). A quarter of the cost of Box-Muller, which matters for the
** 1.7B parameters of the largest shape. */
static float fast_normal(kvs_rng_t *rng)
{
    uint64_t r = kvs_rng_next(rng);
    double sum = (double)(r & 0xffff) + (double)((r >> 16) & 0xffff) +
                 (double)((r >> 32) & 0xffff) + (double)(r >> 48);

    return (float)((sum / 65536.0 - 2.0) * 1.7320508075688772);
}

static void fill_random(kvs_rng_t *rng, uint16_t *out, size_t n, float std)
{
    for (size_t i = 0; i < n; i++)
        out[i] = kvs_f32_to_bf16(fast_normal(rng) * std);
}

/* Random q and k projections are independent, so attention would only be
** noise around uniform. Real models attend by content, so for each head the
** lowest-frequency RoPE pairs (which barely rotate across the context) get
** the same weight rows in q_proj and k_proj, scaled by SHARED_SCALE. A query
** then favours keys whose hidden states resemble its own. For an identical
** state the gain is about 2 * SHARED_PAIRS * SHARED_SCALE^2 / sqrt(head_dim)
** logits (4 for head_dim 64). Those k channels are also larger than the
** rest, like the outlier channels of trained models. */
static void structure_qk(const kvs_model_config_t *c, uint16_t *wq, uint16_t *wk)
{
    const uint32_t hd = c->head_dim, half = hd / 2, H = c->hidden_size;
    const uint32_t group = c->n_heads / c->n_kv_heads;
    const uint32_t pairs = half < SHARED_PAIRS ? half : SHARED_PAIRS;

    for (uint32_t g = 0; g < c->n_kv_heads; g++) {
        for (uint32_t p = 0; p < pairs; p++) {
            for (uint32_t side = 0; side < 2; side++) {
                uint32_t ch = half - 1 - p + side * half;
                uint16_t *krow = wk + ((size_t)g * hd + ch) * H;
                for (uint32_t i = 0; i < H; i++)
                    krow[i] = kvs_f32_to_bf16(kvs_bf16_to_f32(krow[i]) * SHARED_SCALE);
                for (uint32_t h = g * group; h < (g + 1) * group; h++)
                    memcpy(wq + ((size_t)h * hd + ch) * H, krow, H * sizeof *krow);
            }
        }
    }
}

typedef struct tensor_spec {
    char name[96];
    uint32_t rows, cols; /* cols 0 for a vector */
} tensor_spec_t;

static uint64_t spec_count(const tensor_spec_t *t)
{
    return (uint64_t)t->rows * (t->cols ? t->cols : 1);
}

static tensor_spec_t *list_tensors(const kvs_model_config_t *c, uint32_t *n_out)
{
    const uint32_t per_layer = 9, n = 2 + per_layer * c->n_layers;
    const uint32_t H = c->hidden_size, inter = c->intermediate_size;
    const uint32_t qd = c->n_heads * c->head_dim, kvd = c->n_kv_heads * c->head_dim;
    tensor_spec_t *t = calloc(n, sizeof *t);
    uint32_t k = 0;

    if (!t)
        return NULL;
    snprintf(t[k].name, sizeof t[k].name, "model.embed_tokens.weight");
    t[k].rows = c->vocab_size, t[k++].cols = H;
    for (uint32_t l = 0; l < c->n_layers; l++) {
        const struct {
            const char *suffix;
            uint32_t rows, cols;
        } layer[] = {
            {"input_layernorm.weight", H, 0},       {"self_attn.q_proj.weight", qd, H},
            {"self_attn.k_proj.weight", kvd, H},    {"self_attn.v_proj.weight", kvd, H},
            {"self_attn.o_proj.weight", H, qd},     {"post_attention_layernorm.weight", H, 0},
            {"mlp.gate_proj.weight", inter, H},     {"mlp.up_proj.weight", inter, H},
            {"mlp.down_proj.weight", H, inter},
        };
        for (uint32_t j = 0; j < per_layer; j++) {
            snprintf(t[k].name, sizeof t[k].name, "model.layers.%u.%s", l, layer[j].suffix);
            t[k].rows = layer[j].rows, t[k++].cols = layer[j].cols;
        }
    }
    snprintf(t[k].name, sizeof t[k].name, "model.norm.weight");
    t[k].rows = H, t[k++].cols = 0;
    *n_out = k;
    return t;
}

/* The safetensors header, padded with spaces to a multiple of 8 bytes so
** every BF16 tensor starts aligned. */
static char *build_header(const tensor_spec_t *t, uint32_t n, size_t *len)
{
    json_t *root = json_object();
    uint64_t off = 0;

    json_object_set_new(root, "__metadata__",
                        json_pack("{s:s,s:s}", "format", "pt", "kvsim_synthetic", "true"));
    for (uint32_t i = 0; i < n; i++) {
        uint64_t bytes = spec_count(&t[i]) * 2;
        json_t *shape = t[i].cols ? json_pack("[I,I]", (json_int_t)t[i].rows, (json_int_t)t[i].cols)
                                  : json_pack("[I]", (json_int_t)t[i].rows);
        json_object_set_new(root, t[i].name,
                            json_pack("{s:s,s:o,s:[I,I]}", "dtype", "BF16", "shape", shape,
                                      "data_offsets", (json_int_t)off, (json_int_t)(off + bytes)));
        off += bytes;
    }
    char *text = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(root);
    if (!text)
        return NULL;
    size_t hl = strlen(text), padded = (hl + 7) & ~(size_t)7;
    char *out = realloc(text, padded + 1);
    if (!out) {
        free(text);
        return NULL;
    }
    memset(out + hl, ' ', padded - hl);
    out[padded] = '\0';
    *len = padded;
    return out;
}

static kvs_status_e write_weights(const kvs_model_config_t *c, const char *path, uint64_t seed)
{
    uint32_t n;
    tensor_spec_t *t = list_tensors(c, &n);
    size_t header_len = 0;
    char *header = t ? build_header(t, n, &header_len) : NULL;
    const size_t qd = (size_t)c->n_heads * c->head_dim, kvd = (size_t)c->n_kv_heads * c->head_dim;
    uint16_t *buf = NULL, *wq = NULL, *wk = NULL;
    kvs_outfile_t *out = NULL;
    kvs_rng_t rng;
    kvs_status_e rc = KVS_OK;

    /* One row block of up to 1 Mi values bounds memory for any shape. */
    const size_t block = 1u << 20;
    buf = malloc(block * sizeof *buf);
    wq = malloc(qd * c->hidden_size * sizeof *wq);
    wk = malloc(kvd * c->hidden_size * sizeof *wk);
    if (!t || !header || !buf || !wq || !wk) {
        rc = kvs_fail(KVS_ERR_NOMEM, "out of memory writing %s", path);
        goto done;
    }

    rc = kvs_outfile_open(path, &out);
    if (rc != KVS_OK)
        goto done;
    uint8_t len[8];
    for (int i = 0; i < 8; i++)
        len[i] = (uint8_t)((uint64_t)header_len >> (8 * i));
    if ((rc = kvs_outfile_write(out, len, 8)) != KVS_OK ||
        (rc = kvs_outfile_write(out, header, header_len)) != KVS_OK)
        goto done;

    kvs_rng_seed(&rng, seed);
    for (uint32_t i = 0; i < n && rc == KVS_OK; i++) {
        const tensor_spec_t *s = &t[i];
        const uint64_t count = spec_count(s);

        if (!s->cols) {
            /* Norm weights are 1, as Hugging Face initializes them. */
            for (uint32_t j = 0; j < s->rows; j++)
                buf[j] = 0x3f80;
            rc = kvs_outfile_write(out, buf, (size_t)s->rows * 2);
        } else if (strstr(s->name, "q_proj")) {
            /* q and k are drawn together so they can share rows; k is
            ** written from wk by the next tensor. */
            fill_random(&rng, wq, qd * c->hidden_size, 1.0f / sqrtf((float)s->cols));
            fill_random(&rng, wk, kvd * c->hidden_size, 1.0f / sqrtf((float)s->cols));
            structure_qk(c, wq, wk);
            rc = kvs_outfile_write(out, wq, (size_t)count * 2);
        } else if (strstr(s->name, "k_proj")) {
            rc = kvs_outfile_write(out, wk, (size_t)count * 2);
        } else {
            float std = strstr(s->name, "embed_tokens") ? EMBED_STD : 1.0f / sqrtf((float)s->cols);
            for (uint64_t done_n = 0; done_n < count && rc == KVS_OK; done_n += block) {
                size_t m = count - done_n < block ? (size_t)(count - done_n) : block;
                fill_random(&rng, buf, m, std);
                rc = kvs_outfile_write(out, buf, m * 2);
            }
        }
    }
    if (rc == KVS_OK) {
        rc = kvs_outfile_commit(out);
        out = NULL;
    }

done:
    kvs_outfile_abort(out);
    free(t);
    free(header);
    free(buf);
    free(wq);
    free(wk);
    return rc;
}

kvs_status_e kvs_model_synth_config(const kvs_model_config_t *cfg, const char *out_dir,
                                    uint64_t seed)
{
    char path[4096];
    char *config_text;

    KVS_RETURN_IF(cfg->head_dim % 2 || cfg->n_kv_heads == 0 || cfg->n_heads % cfg->n_kv_heads,
                  KVS_ERR_INVALID, "invalid synthetic model shape (heads %u, KV heads %u, head_dim %u)",
                  cfg->n_heads, cfg->n_kv_heads, cfg->head_dim);
    KVS_FORWARD(kvs_mkdir_p(out_dir));
    KVS_FORWARD(kvs_path_join(path, sizeof path, out_dir, "model.safetensors"));
    KVS_FORWARD(write_weights(cfg, path, seed));
    KVS_FORWARD(kvs_model_config_dump(cfg, 1, &config_text));
    KVS_FORWARD(kvs_path_join(path, sizeof path, out_dir, "config.json"));
    size_t len = strlen(config_text);
    config_text[len] = '\n';
    kvs_status_e rc = kvs_write_file(path, config_text, len + 1);
    free(config_text);
    return rc;
}

kvs_status_e kvs_model_synth(const char *shape, const char *out_dir, uint64_t seed)
{
    kvs_model_config_t cfg;

    KVS_RETURN_IF(!shape || !out_dir, KVS_ERR_USAGE, "model synth needs a shape and an output folder");
    KVS_FORWARD(kvs_model_synth_shape(shape, &cfg));
    return kvs_model_synth_config(&cfg, out_dir, seed);
}
