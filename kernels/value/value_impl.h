/*
** value_impl.h: value-path approximations, ways of making
** o = sum_t w_t v_t cheaper than reading every value.
**
**   topk       exact sum over the k largest weights (renormalized, or with
**              SparQ's mean-value correction for the remaining mass)
**   threshold  exact sum over the weights at or above tau
**   lowrank    values projected on a rank-r basis fitted on the prompt
**   window     exact sinks and recent window, the middle in another codec
**
** Codebook values with accumulation on codes are the value role of the
** rotation codecs (kernels/rotation/).
*/
#ifndef KVS_VALUE_IMPL_H
#define KVS_VALUE_IMPL_H

#include "../rotation/rotation_impl.h"

extern const kvs_codec_i kvs_codec_topk;
extern const kvs_codec_i kvs_codec_threshold;
extern const kvs_codec_i kvs_codec_lowrank;
extern const kvs_codec_i kvs_codec_window;

/* Eigen-decomposition of a symmetric (n, n) matrix a, row-major, by cyclic
** Jacobi rotations. Writes eigenvalues in descending order and the matching
** unit eigenvectors as the columns of vecs (n, n). a is overwritten. */
kvs_status_e kvs_val_symmetric_eigen(double *a, uint32_t n, double *values, double *vecs);

/* Dense F32 values, appended in order, with their running sum for the
** mean-value correction. */
typedef struct kvs_val_store {
    uint32_t d;
    float *v;       /* (n, d) */
    double *sum;    /* (d) */
    uint32_t n, cap;
} kvs_val_store_t;

kvs_status_e kvs_val_store_init(kvs_val_store_t *s, uint32_t d);
kvs_status_e kvs_val_store_append(kvs_val_store_t *s, const float *x);
void kvs_val_store_free(kvs_val_store_t *s);

#endif
