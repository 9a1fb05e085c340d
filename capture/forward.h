/*
** forward.h: the Llama forward pass of Hugging Face LlamaForCausalLM
** (transformers 4.42), computed in F32.
**
** Per layer: h = x + o_proj(attn(rope(q_proj(n1)), rope(k_proj(n1)),
** v_proj(n1))) with n1 = rmsnorm(x), then x' = h + down(silu(gate(n2)) *
** up(n2)) with n2 = rmsnorm(h). RMSNorm is x * rsqrt(mean(x^2) + eps) * w.
** RoPE rotates channel pairs (i, i + head_dim/2) by pos * theta^(-2i/head_dim);
** like Hugging Face, the inverse frequencies and angles are rounded to F32
** before cos/sin. Attention is causal, grouped-query (query head h reads KV
** head h / (n_heads / n_kv_heads)) and scaled by 1/sqrt(head_dim).
**
** The state keeps the KV cache of the tokens run so far. Several tokens at
** once (prefill) go through OpenBLAS matrix products; one token (decode)
** goes through the bandwidth-bound matrix-vector kernels of matvec.h, split
** over a thread pool.
*/
#ifndef KVS_FORWARD_H
#define KVS_FORWARD_H

#include "model.h"

#include <stdint.h>

/* Rows of one layer for positions [pos, pos + n_rows), F32, row-major. The
** pointers are valid only during the observer call. */
typedef struct kvs_forward_rows {
    uint32_t layer;
    uint32_t pos;
    uint32_t n_rows;
    const float *q;      /* (n_rows, n_heads*head_dim), after RoPE */
    const float *k;      /* (n_rows, n_kv_heads*head_dim), after RoPE */
    const float *k_pre;  /* (n_rows, n_kv_heads*head_dim), before RoPE */
    const float *v;      /* (n_rows, n_kv_heads*head_dim) */
} kvs_forward_rows_t;

/* Called once per layer and forward call, in layer order; a non-OK status
** stops the forward call and is returned from it. */
typedef kvs_status_e (*kvs_forward_observer_fn)(void *ctx, const kvs_forward_rows_t *rows);

typedef struct kvs_forward kvs_forward_t;

/* Creates the state for up to max_seq positions. n_threads 0 picks
** kvs_pool_default_threads(). m must outlive the state. */
kvs_status_e kvs_forward_create(const kvs_model_t *m, uint32_t max_seq, uint32_t n_threads,
                                kvs_forward_t **out);
void kvs_forward_destroy(kvs_forward_t *f);

void kvs_forward_set_observer(kvs_forward_t *f, kvs_forward_observer_fn fn, void *ctx);

/* Runs n tokens at the next n positions and writes the next-token logits
** of the last one into logits (vocab floats; may be NULL to skip the
** output head). Fails with KVS_ERR_TOKEN for an id outside the vocabulary
** and KVS_ERR_INVALID past max_seq. */
kvs_status_e kvs_forward_run(kvs_forward_t *f, const int32_t *tokens, uint32_t n, float *logits);

/* Positions run so far. */
uint32_t kvs_forward_n_pos(const kvs_forward_t *f);

/* Prefill splits prompts into chunks of this many tokens so scratch memory
** stays bounded; set before the first run (tests use it to cover chunk
** boundaries). */
kvs_status_e kvs_forward_set_chunk(kvs_forward_t *f, uint32_t chunk);

#endif
