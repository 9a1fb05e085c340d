/*
** llama_ref.h: a plain double-precision Llama forward pass for tests,
** written from the Hugging Face LlamaForCausalLM definition and reading
** stories260K's F32 weights straight from its safetensors file. It runs one
** position at a time with no batching, threads or SIMD, so it shares no
** code path with capture/forward.c.
*/
#ifndef KVS_TEST_LLAMA_REF_H
#define KVS_TEST_LLAMA_REF_H

#include "testutil.h"

#include "capture/safetensors.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct ref_layer {
    double *attn_norm, *wq, *wk, *wv, *wo, *mlp_norm, *wg, *wu, *wd;
} ref_layer_t;

typedef struct ref_model {
    int dim, inter, n_layers, n_heads, n_kv, hd, vocab;
    double eps, theta;
    double *emb, *final_norm;
    ref_layer_t layers[8];
} ref_model_t;

static inline double *ref_tensor(kvs_st_file_t *st, const char *name, size_t count)
{
    const kvs_st_tensor_t *t = kvs_st_find(st, name);
    double *out = malloc(count * sizeof *out);

    ck_assert_msg(t != NULL, "tensor %s missing", name);
    ck_assert_int_eq(t->type, KVS_WTYPE_F32);
    ck_assert_uint_eq(t->nbytes, count * 4);
    for (size_t i = 0; i < count; i++) {
        float v;
        memcpy(&v, kvs_st_base(st) + t->offset + 4 * i, 4);
        out[i] = v;
    }
    return out;
}

static inline void ref_load(ref_model_t *r, kvs_st_file_t *st)
{
    char name[128];

    /* stories260K dimensions, from its config.json. */
    r->dim = 64, r->inter = 172, r->n_layers = 5, r->n_heads = 8, r->n_kv = 4, r->hd = 8;
    r->vocab = 512, r->eps = 1e-5, r->theta = 10000.0;
    r->emb = ref_tensor(st, "model.embed_tokens.weight", (size_t)r->vocab * r->dim);
    r->final_norm = ref_tensor(st, "model.norm.weight", r->dim);
    for (int l = 0; l < r->n_layers; l++) {
        ref_layer_t *L = &r->layers[l];
        size_t qd = (size_t)r->n_heads * r->hd, kvd = (size_t)r->n_kv * r->hd;
#define REF_T(field, suffix, count)                                            \
        snprintf(name, sizeof name, "model.layers.%d.%s", l, suffix);      \
        L->field = ref_tensor(st, name, count)
        REF_T(attn_norm, "input_layernorm.weight", r->dim);
        REF_T(mlp_norm, "post_attention_layernorm.weight", r->dim);
        REF_T(wq, "self_attn.q_proj.weight", qd * r->dim);
        REF_T(wk, "self_attn.k_proj.weight", kvd * r->dim);
        REF_T(wv, "self_attn.v_proj.weight", kvd * r->dim);
        REF_T(wo, "self_attn.o_proj.weight", r->dim * qd);
        REF_T(wg, "mlp.gate_proj.weight", (size_t)r->inter * r->dim);
        REF_T(wu, "mlp.up_proj.weight", (size_t)r->inter * r->dim);
        REF_T(wd, "mlp.down_proj.weight", (size_t)r->dim * r->inter);
#undef REF_T
    }
}

static inline void ref_free(ref_model_t *r)
{
    free(r->emb);
    free(r->final_norm);
    for (int l = 0; l < r->n_layers; l++) {
        ref_layer_t *L = &r->layers[l];
        double *all[] = {L->attn_norm, L->wq, L->wk, L->wv, L->wo, L->mlp_norm, L->wg, L->wu, L->wd};
        for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
            free(all[i]);
    }
}

static inline void ref_linear(const double *w, const double *x, double *y, int rows, int cols)
{
    for (int r = 0; r < rows; r++) {
        double s = 0;
        for (int c = 0; c < cols; c++)
            s += w[(size_t)r * cols + c] * x[c];
        y[r] = s;
    }
}

static inline void ref_rmsnorm(const double *x, const double *w, double *y, int n, double eps)
{
    double ss = 0;

    for (int i = 0; i < n; i++)
        ss += x[i] * x[i];
    double r = 1.0 / sqrt(ss / n + eps);
    for (int i = 0; i < n; i++)
        y[i] = x[i] * r * w[i];
}

/* Hugging Face computes inv_freq and the angle pos * inv_freq in F32 before
** taking cos and sin, so the reference rounds the angle the same way. */
static inline void ref_rope(double *v, int n_heads, int hd, int pos, double theta)
{
    int half = hd / 2;

    for (int i = 0; i < half; i++) {
        float inv = 1.0f / (float)pow(theta, (double)((float)(2 * i) / (float)hd));
        double a = (double)(inv * (float)pos);
        double c = cos(a), s = sin(a);
        for (int h = 0; h < n_heads; h++) {
            double *x = v + (size_t)h * hd;
            double x1 = x[i], x2 = x[i + half];
            x[i] = x1 * c - x2 * s;
            x[i + half] = x2 * c + x1 * s;
        }
    }
}

/* Records of one tensor kind: (layer, pos, width). */
typedef struct record {
    int n_layers, n_pos, width;
    double *data;
} record_t;

static inline void record_init(record_t *rec, int n_layers, int n_pos, int width)
{
    rec->n_layers = n_layers, rec->n_pos = n_pos, rec->width = width;
    rec->data = calloc((size_t)n_layers * n_pos * width, sizeof *rec->data);
}

static inline double *record_row(record_t *rec, int layer, int pos)
{
    return rec->data + ((size_t)layer * rec->n_pos + pos) * rec->width;
}

/* Runs tokens[0..n) one position at a time and records q, k, k_pre, v. */
static inline void ref_forward(const ref_model_t *r, const int32_t *tokens, int n, record_t rec[4])
{
    const int D = r->dim, qd = r->n_heads * r->hd, kvd = r->n_kv * r->hd, group = r->n_heads / r->n_kv;
    double *kc = calloc((size_t)r->n_layers * n * kvd, sizeof(double));
    double *vc = calloc((size_t)r->n_layers * n * kvd, sizeof(double));
    double x[64], xn[64], q[64], k[32], v[32], att[64], o[64], g[172], u[172], s[512];

    ck_assert_int_le(n, 512);
    for (int t = 0; t < n; t++) {
        for (int i = 0; i < D; i++)
            x[i] = r->emb[(size_t)tokens[t] * D + i];
        for (int l = 0; l < r->n_layers; l++) {
            const ref_layer_t *L = &r->layers[l];
            ref_rmsnorm(x, L->attn_norm, xn, D, r->eps);
            ref_linear(L->wq, xn, q, qd, D);
            ref_linear(L->wk, xn, k, kvd, D);
            ref_linear(L->wv, xn, v, kvd, D);
            memcpy(record_row(&rec[2], l, t), k, kvd * sizeof(double));
            ref_rope(q, r->n_heads, r->hd, t, r->theta);
            ref_rope(k, r->n_kv, r->hd, t, r->theta);
            memcpy(record_row(&rec[0], l, t), q, qd * sizeof(double));
            memcpy(record_row(&rec[1], l, t), k, kvd * sizeof(double));
            memcpy(record_row(&rec[3], l, t), v, kvd * sizeof(double));
            memcpy(kc + ((size_t)l * n + t) * kvd, k, kvd * sizeof(double));
            memcpy(vc + ((size_t)l * n + t) * kvd, v, kvd * sizeof(double));

            for (int h = 0; h < r->n_heads; h++) {
                int kvh = h / group;
                double maxs = -INFINITY, sum = 0;
                for (int j = 0; j <= t; j++) {
                    const double *kj = kc + ((size_t)l * n + j) * kvd + kvh * r->hd;
                    double dot = 0;
                    for (int i = 0; i < r->hd; i++)
                        dot += q[h * r->hd + i] * kj[i];
                    s[j] = dot / sqrt((double)r->hd);
                    if (s[j] > maxs)
                        maxs = s[j];
                }
                for (int j = 0; j <= t; j++)
                    sum += (s[j] = exp(s[j] - maxs));
                for (int i = 0; i < r->hd; i++) {
                    double acc = 0;
                    for (int j = 0; j <= t; j++)
                        acc += s[j] / sum * vc[((size_t)l * n + j) * kvd + kvh * r->hd + i];
                    att[h * r->hd + i] = acc;
                }
            }
            ref_linear(L->wo, att, o, D, qd);
            for (int i = 0; i < D; i++)
                x[i] += o[i];

            ref_rmsnorm(x, L->mlp_norm, xn, D, r->eps);
            ref_linear(L->wg, xn, g, r->inter, D);
            ref_linear(L->wu, xn, u, r->inter, D);
            for (int i = 0; i < r->inter; i++)
                g[i] = g[i] / (1.0 + exp(-g[i])) * u[i];
            ref_linear(L->wd, g, o, D, r->inter);
            for (int i = 0; i < D; i++)
                x[i] += o[i];
        }
    }
    free(kc);
    free(vc);
}

#endif
