/*
** matvec.h: weight conversion and the matrix-vector products of decode.
**
** Decode reads every weight once per token, so its speed is the memory
** bandwidth of the weights: the products read weights in their stored dtype
** (BF16, F16 or F32) and convert in registers. An AVX2+FMA(+F16C) path is
** picked at run time when the CPU has it; the scalar _ref path runs
** everywhere and is what the tests compare against.
*/
#ifndef KVS_MATVEC_H
#define KVS_MATVEC_H

#include "model.h"
#include "../common/half.h"

#include <stdint.h>


/* Converts rows [row0, row0+n_rows) of w to F32, (n_rows, w->cols). */
void kvs_weight_rows_f32(const kvs_weight_t *w, uint32_t row0, uint32_t n_rows, float *out);

/* y[r - row0] = dot(w row r, x) for r in [row0, row1); x has w->cols floats. */
void kvs_matvec(const kvs_weight_t *w, uint32_t row0, uint32_t row1, const float *x, float *y);
void kvs_matvec_ref(const kvs_weight_t *w, uint32_t row0, uint32_t row1, const float *x,
                    float *y);

/* Sum of a[i]*b[i] and y += alpha*x, used by decode attention. */
float kvs_mv_dot_f32(const float *a, const float *b, uint32_t n);
void kvs_mv_axpy_f32(float *y, float alpha, const float *x, uint32_t n);

/* 1 when the AVX2 path is in use (CPU support and not disabled by setting
** KVSIM_NO_SIMD=1 in the environment). */
int kvs_matvec_simd(void);
/* Forces the scalar path (1) or restores CPU detection (0); for tests and
** benchmarks, before any other thread calls into this module. */
void kvs_matvec_force_scalar(int on);

#endif
