/* affine_internal.h: the stream state shared by affine_store.c and
** affine_attend.c. */
#ifndef KVS_QUANT_AFFINE_INTERNAL_H
#define KVS_QUANT_AFFINE_INTERNAL_H

#include "affine.h"

#include <stddef.h>

struct kvs_affine {
    kvs_affine_cfg_t cfg;
    uint32_t row_bytes;    /* packed codes of one position */
    uint32_t n_groups;     /* parameter pairs per position (token axis) or
                              per block (channel axis, = d) */
    size_t param_size;     /* bytes of one stored parameter */

    /* Quantized positions [0, nq). */
    uint32_t nq, qcap;
    uint8_t *codes;        /* (qcap, row_bytes) */
    uint8_t *params;       /* token axis (qcap, n_groups, 2); channel axis
                              (qcap / group, d, 2); pairs (step, offset) */

    /* Window positions [nq, nq + nw), rows w0 .. w0 + nw of win. */
    float *win;            /* (wcap, d), values rounded to window_fmt */
    uint32_t w0, nw, wcap;

    int prefill_done;
    uint64_t n_requant;

    /* Scratch. */
    float *dense;          /* storage-only copy, (dense_cap / d, d) */
    size_t dense_cap;
    float *row;            /* (d) */
    float *ps, *pm;        /* (d): decoded steps and offsets */
    float *qbuf;           /* (max(group_size, 1) * d * 2 + ...) per call */
    size_t qbuf_cap;
};

/* Address of the parameter pairs of position t (token axis) or of the
** block holding position t (channel axis). */
static inline const uint8_t *kvs_affine_params_at(const kvs_affine_t *a, uint32_t t)
{
    size_t pairs = a->cfg.axis == KVS_AFFINE_AXIS_TOKEN ? (size_t)t * a->n_groups
                                                        : (size_t)(t / a->cfg.group) * a->cfg.d;
    return a->params + pairs * 2 * a->param_size;
}

/* Decodes count stored pairs into steps s and offsets m. */
void kvs_affine_decode_pairs(const kvs_affine_t *a, const uint8_t *p, uint32_t count, float *s,
                             float *m);

/* Scratch of at least n floats in a->qbuf; NULL when out of memory. */
float *kvs_affine_scratch(kvs_affine_t *a, size_t n);

/* AVX2 kernels of affine_fused.c for per-position groups. */
int kvs_affine_fused_ok(const kvs_affine_t *a);
void kvs_affine_decode_all_params(const kvs_affine_t *a, float *s, float *m);
void kvs_affine_fused_logits(const kvs_affine_t *a, const float *q, uint32_t nq4,
                             const float *qsum, const float *s, const float *m,
                             const uint8_t *attend, uint32_t n, float *out);
/* Per-channel blocks: logits of positions [t0, t1) of one block for up to
** four queries already scaled by the block's steps, plus constant[g]. */
int kvs_affine_fused_channel_ok(const kvs_affine_t *a);
void kvs_affine_fused_block_logits(const kvs_affine_t *a, const float *q_scaled, uint32_t nq4,
                                   const float *constant, const uint8_t *attend, uint32_t t0,
                                   uint32_t t1, uint32_t n, float *out);
void kvs_affine_fused_output(const kvs_affine_t *a, const float *coef, uint32_t nq4,
                             const uint8_t *attend, float *out);

#endif
