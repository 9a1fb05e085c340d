/*
** simd.h: vector helpers shared by the kernels, each with a portable
** scalar _ref version that is also the reference the tests compare with.
**
** The AVX2/FMA versions are chosen at run time from the CPU; the binary
** itself targets baseline x86-64.
*/
#ifndef KVS_SIMD_H
#define KVS_SIMD_H

#include <stdint.h>

/* 1 when the CPU has AVX2 and FMA and vector paths are enabled. */
int kvs_simd_avx2(void);
/* 1 when kvs_simd_avx2() holds and the CPU also has F16C (F16 widening). */
int kvs_simd_f16c(void);
/* Turns the vector paths off (0) or back on (1) for every kernel, so tests
** and benchmarks can run the scalar reference paths through the same API. */
void kvs_simd_set_enabled(int enabled);

/* sum_i a[i] * b[i]. */
float kvs_simd_dot_f32(const float *a, const float *b, uint32_t n);
float kvs_simd_dot_f32_ref(const float *a, const float *b, uint32_t n);

/* y[i] += alpha * x[i]. */
void kvs_simd_axpy_f32(float *y, float alpha, const float *x, uint32_t n);
void kvs_simd_axpy_f32_ref(float *y, float alpha, const float *x, uint32_t n);

/* Dot products of one row x (n floats) with g query rows q (g, n), written
** to out[i * out_stride] for i < g. Loads x once for all queries. */
void kvs_simd_dot_rows_f32(const float *q, uint32_t g, const float *x, uint32_t n, float *out,
                      uint32_t out_stride);

/* Logits of g queries q (g, d) against rows (n, d) of F32, for positions
** with attend[t] != 0: out[r * out_stride + t] = q_r . row_t. Other entries
** are left alone. */
void kvs_simd_logits_f32(const float *q, uint32_t g, const float *rows, uint32_t n, uint32_t d,
                         const uint8_t *attend, float *out, uint32_t out_stride);

/* Weighted sums of rows (n, d) of F32 for g queries: out[r * d + j] +=
** sum over attended t of w[r * w_stride + t] * row_t[j]. */
void kvs_simd_wsum_f32(const float *w, uint32_t g, uint32_t w_stride, const float *rows,
                       uint32_t n, uint32_t d, const uint8_t *attend, float *out);

/* The same for rows stored as BF16. */
void kvs_simd_logits_bf16(const float *q, uint32_t g, const uint16_t *rows, uint32_t n,
                          uint32_t d, const uint8_t *attend, float *out, uint32_t out_stride);
void kvs_simd_wsum_bf16(const float *w, uint32_t g, uint32_t w_stride, const uint16_t *rows,
                        uint32_t n, uint32_t d, const uint8_t *attend, float *out);

/* out[i] = exp(x[i] - max) for x[i] <= max, 0 for x[i] = -infinity, and
** returns the sum of out. The vector path evaluates exp by range reduction
** to [-ln2/2, ln2/2] and a degree-7 Taylor polynomial, within about 2 ulp
** of expf. It flushes results below exp(-87) to 0. */
double kvs_simd_exp_sum(const float *x, float max, float *out, uint32_t n);
double kvs_simd_exp_sum_ref(const float *x, float max, float *out, uint32_t n);

/* Widens n BF16 values to F32. */
void kvs_simd_bf16_row_to_f32(const uint16_t *src, float *dst, uint32_t n);

#endif
