/*
** fit.h: choosing the step and offset of affine quantization groups.
**
** A group of values x is stored as integer codes q in [0, 2^bits - 1] and
** two parameters in a storage format (BF16, F16 or F32); it decodes to
** x^ = q * s + m. Three fits:
**
**   minmax    the group's minimum rounded down to the storage format is m,
**             and (max - m) / (2^bits - 1) rounded up is s, so the whole
**             range stays covered and every element is within s/2 of its
**             decoded value. Stores (s, m). This is quanto's MaxOptimizer
**             (scale = (max - min)/(2^b - 1), shift = -min) with outward
**             instead of nearest rounding of the stored parameters.
**   hqq       HQQ's min-max quantizer (mobiusml/hqq, Quantizer.quantize):
**             scale_inv = min((2^b - 1) / (max - min), 2e4),
**             zero = -min * scale_inv, q = round(x * scale_inv + zero),
**             computed in F32; stores s = 1/scale_inv and zero, both
**             rounded to nearest, and decodes x^ = (q - zero) * s.
**   hqq-prox  as hqq, then the zero point optimised by HQQ's half-quadratic
**             proximal solver (optimize_weights_proximal_legacy) for the
**             lp norm of the error, p < 1; see kvs_hqq_opts_t.
*/
#ifndef KVS_QUANT_FIT_H
#define KVS_QUANT_FIT_H

#include "../dense/fpformat.h"

#include <stdint.h>

typedef enum kvs_fit_e {
    KVS_FIT_MINMAX = 0,
    KVS_FIT_HQQ = 1,
    KVS_FIT_HQQ_PROX = 2,
    KVS_FIT_COUNT
} kvs_fit_e;

/* HQQ solver settings; HQQ's defaults are lp 0.7, beta 10, kappa 1.01 and
** 20 iterations. The loop stops early when the mean absolute error over all
** groups of the call stops decreasing, as HQQ does over one tensor. */
typedef struct kvs_hqq_opts {
    double lp;
    double beta;
    double kappa;
    uint32_t iters;
} kvs_hqq_opts_t;

/* Fits n_groups groups of len contiguous values of x. Writes the codes
** (n_groups * len, same order as x) and each group's stored pair: pa[i]
** is the step s, pb[i] the minimum m (minmax) or the zero point (hqq),
** both exactly representable in fmt. Returns 0, or -1 when out of memory
** (hqq-prox needs scratch space). */
int kvs_fit_groups(kvs_fit_e fit, const kvs_hqq_opts_t *hqq, uint32_t bits, kvs_fp_e fmt,
                   const float *x, uint32_t n_groups, uint32_t len, uint8_t *codes, float *pa,
                   float *pb);

/* Decoding form of a stored pair: x^ = q * (*s) + (*m). */
static inline void kvs_fit_decode(kvs_fit_e fit, float pa, float pb, float *s, float *m)
{
    *s = pa;
    *m = fit == KVS_FIT_MINMAX ? pb : -pb * pa;
}

#endif
