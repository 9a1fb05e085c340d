/*
** affine.h: one stream of affine-quantized keys or values with a
** full-precision residual window, shared by the affine and hqq codecs and
** the quanto and kivi presets.
**
** Positions [0, n_quantized) are codes plus group parameters; positions
** [n_quantized, n) are the window, rounded to window_fmt. Until
** end_prefill every appended position waits in the window; afterwards the
** flush mode moves positions out of it:
**
**   sliding  the window keeps the last `residual` positions; each append
**            quantizes the oldest one once it has more (KIVI values);
**            end_prefill quantizes all but the last `residual`.
**   block    when the window reaches `residual` positions they are
**            quantized together (KIVI keys, per-channel blocks);
**            end_prefill quantizes the largest multiple of `residual`.
**   requant  when the window reaches `residual` positions the whole cache
**            is dequantized, joined with the window and quantized again
**            (Hugging Face QuantizedLayer: at most residual - 1 positions
**            wait, the already quantized ones are quantized a second time);
**            end_prefill quantizes the whole prompt.
**
** Groups run along a token's channels (axis token: `group` channels per
** group) or along a channel's positions (axis channel: blocks of `group`
** positions, one step and offset per channel and block; block flush only).
**
** Attention runs in one of two modes. Storage-only dequantizes every
** stored position into a dense F32 buffer and then runs dense attention on
** it, as the Hugging Face quantized caches do. Compressed execution
** computes from the codes: logits as sum over groups of s * (q . u) plus
** m * sum(q) (per-channel: the query pre-scaled by each block's steps), and
** the output as sum over positions of (w * s) * u plus the weighted offsets,
** with no dense keys or values.
*/
#ifndef KVS_QUANT_AFFINE_H
#define KVS_QUANT_AFFINE_H

#include "../kernel_impl.h"
#include "fit.h"

typedef enum kvs_affine_axis_e {
    KVS_AFFINE_AXIS_TOKEN = 0,
    KVS_AFFINE_AXIS_CHANNEL = 1,
    KVS_AFFINE_AXIS_COUNT
} kvs_affine_axis_e;

typedef enum kvs_affine_flush_e {
    KVS_AFFINE_FLUSH_SLIDING = 0,
    KVS_AFFINE_FLUSH_BLOCK = 1,
    KVS_AFFINE_FLUSH_REQUANT = 2,
    KVS_AFFINE_FLUSH_COUNT
} kvs_affine_flush_e;

typedef struct kvs_affine_cfg {
    uint32_t d;
    uint32_t bits;            /* 1, 2, 3, 4 or 8 */
    uint32_t group;           /* channels (axis token) or positions (axis channel) */
    kvs_affine_axis_e axis;
    kvs_affine_flush_e flush;
    kvs_fit_e fit;
    kvs_hqq_opts_t hqq;       /* KVS_FIT_HQQ_PROX only */
    kvs_fp_e param_fmt;       /* step and offset storage */
    kvs_fp_e window_fmt;      /* window and storage-only dense copy */
    uint32_t residual;
    int compressed;           /* 1: compressed execution, 0: storage-only */
} kvs_affine_cfg_t;

typedef struct kvs_affine kvs_affine_t;

/* Validates a configuration against head_dim (cfg->d). */
kvs_status_e kvs_affine_check(const kvs_affine_cfg_t *cfg);

kvs_status_e kvs_affine_create(const kvs_affine_cfg_t *cfg, kvs_affine_t **out);
void kvs_affine_destroy(kvs_affine_t *a);

kvs_status_e kvs_affine_append(kvs_affine_t *a, const float *x);
kvs_status_e kvs_affine_end_prefill(kvs_affine_t *a);

/* The codec hooks of kernel_impl.h. */
void kvs_affine_logits(kvs_affine_t *a, const float *q, uint32_t group, const uint8_t *attend,
                       uint32_t n, float *out);
void kvs_affine_output(kvs_affine_t *a, const float *w, uint32_t group, const uint8_t *attend,
                       uint32_t n, float *out);
uint64_t kvs_affine_stored_bytes(const kvs_affine_t *a);

/* Analytic cost of one stream right after a prefill of n_context
** positions. */
void kvs_affine_cost(const kvs_affine_cfg_t *cfg, uint32_t query_group, uint64_t n_context,
                     kvs_part_cost_t *out);

/* ---- inspection, for tests and benchmarks ------------------------------ */

uint32_t kvs_affine_n_tokens(const kvs_affine_t *a);
uint32_t kvs_affine_n_quantized(const kvs_affine_t *a);
uint32_t kvs_affine_window_len(const kvs_affine_t *a);
/* Number of whole-cache re-quantizations so far (requant flush). */
uint64_t kvs_affine_n_requant(const kvs_affine_t *a);
/* Writes position t as attention uses it (decoded codes, or the window
** row). */
void kvs_affine_decode_token(const kvs_affine_t *a, uint32_t t, float *out);
/* Step s of the group that contains element j of position t (0 for a
** window position). */
float kvs_affine_step(const kvs_affine_t *a, uint32_t t, uint32_t j);

#endif
