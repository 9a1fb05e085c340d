/*
** attention.h: exact single-query attention, the reference every kernel is
** measured against.
*/
#ifndef KVS_ATTENTION_H
#define KVS_ATTENTION_H

#include <stdint.h>

/* Attends one query q (d floats) over n keys and values stored as rows with
** the given stride in floats (so a head's slice of a (seq, kv_dim) tensor
** can be passed directly). Computes in double and writes logits q.k/sqrt(d),
** softmax weights and the output sum_t w_t v_t (d floats). */
void kvs_exact_attention(const float *q, const float *keys, const float *values, uint32_t n,
                         uint32_t d, uint32_t stride, float *logits, float *weights, float *out);

#endif
