/*
** rotation_impl.h: building blocks shared by the rotation and sketch codecs
** (kernels/rotation/) and the value-path codecs (kernels/value/).
**
** Seeds: every random object of a stream (rotation, sketch) is drawn from
** kvs_rot_stream_seed(dims, salt), a hash of (run seed, layer, KV head, salt),
** so a stream's codes do not depend on which thread replays it.
**
** Shared storage: a real system holds one rotation and one sketch per layer.
** The codecs count them in shared_bytes as the materialized matrices a
** decode step reads (F32 entries, Hadamard signs as bits), not as the 8-byte
** seed they are generated from. Each simulated stream draws its own
** matrices, which has the same distribution as one shared draw.
*/
#ifndef KVS_ROTATION_IMPL_H
#define KVS_ROTATION_IMPL_H

#include "../kernel_impl.h"
#include "../../common/half.h"

#include <stddef.h>
#include <stdint.h>

/* ---- random numbers --------------------------------------------------- */

/* splitmix64 state; one Gaussian is cached by the Box-Muller pair. */
typedef struct kvs_rot_rng {
    uint64_t state;
    int has_spare;
    double spare;
} kvs_rot_rng_t;

void kvs_rot_rng_init(kvs_rot_rng_t *rng, uint64_t seed);
uint64_t kvs_rot_rng_next(kvs_rot_rng_t *rng);
double kvs_rot_rng_uniform(kvs_rot_rng_t *rng); /* in (0, 1) */
double kvs_rot_rng_normal(kvs_rot_rng_t *rng);  /* N(0, 1) */

/* Seed of one random object of a stream; salt tells the objects apart. */
uint64_t kvs_rot_stream_seed(const kvs_kernel_dims_t *dims, uint64_t salt);

/* ---- rotations -------------------------------------------------------- */

typedef enum kvs_rotation_kind_e {
    KVS_ROTATION_HADAMARD = 0, /* H D / sqrt(d): random signs, then FWHT */
    KVS_ROTATION_DENSE = 1,    /* Q of the QR of an i.i.d. N(0,1) matrix */
    KVS_ROTATION_KIND_COUNT
} kvs_rotation_kind_e;

/* Choices string for a "rotation" ENUM parameter, in enum order. */
#define KVS_ROTATION_CHOICES "hadamard|dense"

typedef struct kvs_rotation kvs_rotation_t;

/* Fails with KVS_ERR_KERNEL_SPEC when kind is hadamard and d is not a power
** of two: kvsim does not pad, because padding would store codes for
** coordinates that do not exist. */
kvs_status_e kvs_rotation_check(kvs_rotation_kind_e kind, uint32_t d, const char *codec);
kvs_status_e kvs_rotation_create(kvs_rotation_kind_e kind, uint32_t d, uint64_t seed,
                                 kvs_rotation_t **out);
void kvs_rotation_destroy(kvs_rotation_t *rot);

/* y = Pi x and x = Pi^T y; x and y may not alias. */
void kvs_rotation_apply(const kvs_rotation_t *rot, const float *x, float *y);
void kvs_rotation_apply_t(const kvs_rotation_t *rot, const float *y, float *x);

/* Bytes a decode step holds for the rotation: d*d F32 entries for dense,
** d sign bits for Hadamard. */
uint64_t kvs_rotation_bytes(kvs_rotation_kind_e kind, uint32_t d);
/* Floating-point operations of one apply. */
double kvs_rotation_flops(kvs_rotation_kind_e kind, uint32_t d);

/* In-place unnormalized fast Walsh-Hadamard transform; d a power of two. */
void kvs_rot_fwht(float *x, uint32_t d);

/* ---- Gaussian sketch (QJL) -------------------------------------------- */

/* S, (m, d), i.i.d. N(0, 1) entries, row-major. */
typedef struct kvs_rot_sketch {
    uint32_t m, d;
    float *s;
} kvs_rot_sketch_t;

kvs_status_e kvs_rot_sketch_create(uint32_t m, uint32_t d, uint64_t seed, kvs_rot_sketch_t **out);
void kvs_rot_sketch_destroy(kvs_rot_sketch_t *sk);
/* y = S x, (m). */
void kvs_rot_sketch_apply(const kvs_rot_sketch_t *sk, const float *x, float *y);
/* x += scale * S^T y, (d). */
void kvs_rot_sketch_apply_t_add(const kvs_rot_sketch_t *sk, const float *y, float scale, float *x);

/* ---- Lloyd-Max scalar codebooks --------------------------------------- */

/* A density on [lo, hi], up to a constant factor. */
typedef double (*kvs_density_fn)(double x, const void *ctx);

/* Solves the continuous 1-D k-means problem for `levels` centroids by Lloyd
** iterations (boundaries at midpoints, centroids at conditional means) on
** a tabulated cumulative distribution. Writes the sorted centroids and, when
** mse is not NULL, the expected squared error of the quantizer. */
kvs_status_e kvs_rot_lloyd_max(kvs_density_fn pdf, const void *ctx, double lo, double hi,
                           uint32_t levels, double *centroids, double *mse);

typedef enum kvs_coord_density_e {
    KVS_DENSITY_SPHERE = 0, /* coordinate of a uniform point on S^{d-1}:
                               f(x) ~ (1 - x^2)^((d-3)/2) on [-1, 1] */
    KVS_DENSITY_GAUSS = 1,  /* its large-d limit N(0, 1/d) */
    KVS_DENSITY_COUNT
} kvs_coord_density_e;

/* The 2^bits-level codebook for one coordinate of a rotated unit vector
** in dimension d (d >= 3 for the sphere density), bits 1..8. */
kvs_status_e kvs_rot_coord_codebook(kvs_coord_density_e density, uint32_t d, unsigned bits,
                                double *centroids, double *mse);

/* Lloyd-Max codebook of PolarQuant's level-`level` angle for Gaussian
** coordinates: uniform on [0, 2 pi) at level 1, density proportional to
** sin^(2^(level-1) - 1)(2 psi) on [0, pi/2] above. */
kvs_status_e kvs_rot_polar_codebook(uint32_t level, unsigned bits, double *centroids);

/* ---- packed codes ----------------------------------------------------- */

/* Bytes of n codes of `bits` bits packed LSB-first: ceil(n * bits / 8). */
static inline uint32_t kvs_rot_packed_bytes(uint32_t n, unsigned bits)
{
    return (uint32_t)(((uint64_t)n * bits + 7) / 8);
}

/* Writes codes[0..n) into out (zeroed first), LSB-first. */
void kvs_rot_pack_codes(const uint8_t *codes, uint32_t n, unsigned bits, uint8_t *out);
uint32_t kvs_rot_unpack_code(const uint8_t *packed, uint32_t j, unsigned bits);

/* Index of the nearest centroid in a sorted codebook. */
uint8_t kvs_rot_nearest_centroid(const float *centroids, uint32_t levels, float x);

/* ---- scoring codes with per-query tables ------------------------------ */

/* A table over one packed vector of codes: for every byte position p of the
** packed codes and every byte value v, the sum over the codes stored in v of
** y_j * codebook[code_j]. Only for bits dividing 8, so that no code crosses
** a byte. Built once per query; scoring a token is then one look-up per
** byte of codes. */
typedef struct kvs_rot_code_lut {
    uint32_t n_bytes;   /* packed bytes per vector */
    float *table;       /* (n_bytes, 256) */
} kvs_rot_code_lut_t;

kvs_status_e kvs_rot_code_lut_init(kvs_rot_code_lut_t *lut, uint32_t n, unsigned bits);
void kvs_rot_code_lut_free(kvs_rot_code_lut_t *lut);
/* Fills the table for values y (n) and a codebook of 2^bits entries. */
void kvs_rot_code_lut_build(kvs_rot_code_lut_t *lut, const float *y, uint32_t n, unsigned bits,
                        const float *codebook);

/* score[t] = sum_j y_j codebook[code_tj] for n_tok vectors stored every
** stride bytes, reference path: one unpack and one look-up per code. */
void kvs_rot_code_dot_ref(const uint8_t *codes, uint32_t stride, uint32_t n_tok, const float *y,
                      uint32_t n, unsigned bits, const float *codebook, float *score);
/* The same from a built table: scalar, and AVX2 when the CPU has it. The
** code buffer must have 3 readable bytes after the last vector (the AVX2
** path gathers 32-bit words). */
void kvs_rot_code_dot_lut(const kvs_rot_code_lut_t *lut, const uint8_t *codes, uint32_t stride,
                      uint32_t n_tok, float *score);
void kvs_rot_code_dot_lut_scalar(const kvs_rot_code_lut_t *lut, const uint8_t *codes, uint32_t stride,
                             uint32_t n_tok, float *score);
/* The same for any width up to 8 bits from a per-coordinate table,
** table[(j << bits) + c] = y_j * codebook[c]: one 16-bit window read and
** one look-up per code, for widths whose codes cross bytes (3 bits). Reads
** one byte past a row's last code, which the row padding covers. */
void kvs_rot_code_dot_table(const uint8_t *codes, uint32_t stride, uint32_t n_tok,
                            const float *table, uint32_t n, unsigned bits, float *score);

/* 1 when kvs_rot_code_dot_lut uses AVX2 on this CPU. */
int kvs_rot_code_dot_has_avx2(void);

/* Codebook {-1, +1} for sign bits: bit 1 means +1. */
extern const float kvs_rot_sign_codebook[2];

/* ---- accumulation on codes -------------------------------------------- */

/* acc[j] += sum over tokens t with a nonzero weight of
** wt[t] * codebook[code_tj], computed as one histogram of weights per
** (coordinate, codeword) and then 2^bits multiply-adds per coordinate. When
** bits divides 8 the histogram is taken per packed byte value (one add per
** byte of codes and token) and split into codewords once per call. hist is
** scratch of kvs_rot_code_accumulate_scratch(n, bits) floats. */
size_t kvs_rot_code_accumulate_scratch(uint32_t n, unsigned bits);
void kvs_rot_code_accumulate(const uint8_t *codes, uint32_t stride, uint32_t n_tok, const float *wt,
                         uint32_t n, unsigned bits, const float *codebook, float *hist,
                         float *acc);
/* score[t] = sum_j y_j codebook[code_tj] with AVX2: eight codes at a time
** are looked up in the codebook held in registers and multiplied with y,
** one horizontal sum per position. Same shape rules and return value as
** kvs_rot_code_accumulate_avx2. */
int kvs_rot_code_dot_avx2(const uint8_t *codes, uint32_t stride, uint32_t n_tok, const float *y,
                          uint32_t n, unsigned bits, const float *codebook, float *score);
/* The same sum with AVX2: each position's codes are expanded eight at a
** time against the codebook held in registers and added with one FMA per
** eight coordinates, so no dense vector is stored. Needs n % 8 == 0, bits
** 1..4 and 3 readable bytes after each row's codes; returns 0 without
** touching acc when those or the CPU's AVX2 are missing. */
int kvs_rot_code_accumulate_avx2(const uint8_t *codes, uint32_t stride, uint32_t n_tok,
                                 const float *wt, uint32_t n, unsigned bits,
                                 const float *codebook, float *acc);
/* Reference: decodes each token and adds wt[t] * codebook[code] directly. */
void kvs_rot_code_accumulate_ref(const uint8_t *codes, uint32_t stride, uint32_t n_tok,
                             const float *wt, uint32_t n, unsigned bits, const float *codebook,
                             float *acc);

/* ---- half precision --------------------------------------------------- */

float kvs_rot_f32_from_f16(uint16_t h);

/* ---- growable per-token storage --------------------------------------- */

/* Fixed-size records appended in order; keeps 3 spare zero bytes after the
** last record for the AVX2 gathers. */
typedef struct kvs_rot_rows {
    uint8_t *data;
    uint32_t row_bytes;
    uint32_t n, cap;
} kvs_rot_rows_t;

void kvs_rot_rows_init(kvs_rot_rows_t *rows, uint32_t row_bytes);
/* Returns a zeroed new record, or NULL when out of memory. */
uint8_t *kvs_rot_rows_push(kvs_rot_rows_t *rows);
void kvs_rot_rows_free(kvs_rot_rows_t *rows);

/* ---- rotated scalar codes with an optional sign sketch ---------------- */

/* One encoder over vectors of n coordinates, the engine of TurboQuant-MSE,
** TurboQuant-prod and QJL. Per vector it stores, in this order in one row:
**
**   mse_bits * n bits   codebook indices of Pi x / |x|           (if > 0)
**   m bits              signs of S r, r the residual of the unit
**                       vector after the codes, in the rotated basis
**   F16 |x|
**   F16 |r|             only when store_gamma
**
** Rows are padded to whole bytes per part. The sketch acts on the rotated
** residual: S Pi^T has the same i.i.d. Gaussian law as S, so this is the
** estimator of TurboQuant-prod (Zandieh et al., arXiv 2504.19874, Alg. 2)
** with one rotation fewer per step. With mse_bits = 0 and no rotation it is
** QJL (Zandieh et al., arXiv 2406.03482): r is the unit vector, |r| = 1. */
typedef struct kvs_tq_config {
    uint32_t n;          /* coordinates per vector */
    unsigned mse_bits;   /* 0..4 */
    uint32_t m;          /* sketch rows; 0 for none */
    int store_gamma;     /* store |r| (TurboQuant-prod) or take it as 1 */
    int rotation;        /* kvs_rotation_kind_e, or -1 for none */
    uint64_t seed;
} kvs_tq_config_t;

typedef struct kvs_tq kvs_tq_t;

/* Execution path of scoring and accumulation, in the order of the "path"
** parameter's choices. fast: AVX2 with the codebook in registers when the
** CPU has AVX2 and the shape allows it (n % 8 == 0, bits 1..4), else table.
** ref: the scalar reference that unpacks every code. table: per-query byte
** tables and per-codeword weight histograms, scalar. gather: the byte
** tables read with AVX2 gathers. All compute the same sums in a different
** order. */
typedef enum kvs_tq_path_e {
    KVS_TQ_PATH_FAST = 0,
    KVS_TQ_PATH_REF = 1,
    KVS_TQ_PATH_TABLE = 2,
    KVS_TQ_PATH_GATHER = 3,
    KVS_TQ_PATH_COUNT
} kvs_tq_path_e;

#define KVS_TQ_PATH_CHOICES "fast|ref|table|gather"

kvs_status_e kvs_tq_check(const kvs_tq_config_t *cfg, const char *codec);
kvs_status_e kvs_tq_create(const kvs_tq_config_t *cfg, kvs_tq_t **out);
void kvs_tq_destroy(kvs_tq_t *tq);
kvs_status_e kvs_tq_append(kvs_tq_t *tq, const float *x);
uint32_t kvs_tq_count(const kvs_tq_t *tq);

/* score[t] = estimate of <q, x_t> for every stored t < n_tok. The query is
** rotated and sketched once; each token then costs table look-ups. */
void kvs_tq_scores(kvs_tq_t *tq, const float *q, uint32_t n_tok, float *score,
                   kvs_tq_path_e path);
/* out[0..n) += sum_t w[t] * xhat_t over t < n_tok with w[t] != 0, from
** per-coordinate weight histograms and one inverse rotation. */
void kvs_tq_accumulate(kvs_tq_t *tq, const float *w, uint32_t n_tok, float *out,
                       kvs_tq_path_e path);
/* The estimate xhat_t the scores and sums stand for (tests, references). */
void kvs_tq_decode(const kvs_tq_t *tq, uint32_t t, float *x);

uint32_t kvs_tq_row_bytes(const kvs_tq_config_t *cfg);
/* Rotation, sketch and codebook as a decode step holds them. */
uint64_t kvs_tq_shared_bytes(const kvs_tq_config_t *cfg);
/* Bytes held now: rows plus the shared tables. */
uint64_t kvs_tq_stored_bytes(const kvs_tq_t *tq);
/* Flops of scoring or accumulating n_tok tokens, per query. */
double kvs_tq_step_flops(const kvs_tq_config_t *cfg, uint64_t n_tok);
/* The codebook in use (2^mse_bits entries). */
const float *kvs_tq_codebook(const kvs_tq_t *tq);

/* ---- outlier channel split -------------------------------------------- */

/* A stream encoded by one kvs_tq instance, or by two over disjoint channel
** sets: the outlier channels (largest mean |x| over the prompt) and the
** rest, each with its own rotation, norm and bit width. This is the mixed
** precision of TurboQuant ("2.5 bits": outliers at 3 bits, the rest at 2)
** and the outlier sketch of QJL. Until the prompt ends the split is not
** known, so prompt vectors wait in F32 and are encoded at end_prefill (or
** at the first attention step, when no end of prompt was signalled). */
typedef struct kvs_rot_split kvs_rot_split_t;

kvs_status_e kvs_rot_split_create(uint32_t d, uint32_t n_outliers, const kvs_tq_config_t *main_cfg,
                              const kvs_tq_config_t *outlier_cfg, kvs_rot_split_t **out);
void kvs_rot_split_destroy(kvs_rot_split_t *sp);
/* Codes x - mu instead of x, mu the mean of the prompt vectors. Scores add
** <q, mu> back and sums add (sum of weights) mu, so only the spread around
** the mean is quantized. Call before the first vector. */
kvs_status_e kvs_rot_split_set_center(kvs_rot_split_t *sp);
kvs_status_e kvs_rot_split_append(kvs_rot_split_t *sp, const float *x);
kvs_status_e kvs_rot_split_end_prefill(kvs_rot_split_t *sp);
/* As kvs_tq_scores / kvs_tq_accumulate over all d channels; out is (d) and
** is overwritten. */
void kvs_rot_split_scores(kvs_rot_split_t *sp, const float *q, uint32_t n_tok, float *score,
                      kvs_tq_path_e path);
void kvs_rot_split_accumulate(kvs_rot_split_t *sp, const float *w, uint32_t n_tok, float *out,
                          kvs_tq_path_e path);
uint64_t kvs_rot_split_stored_bytes(const kvs_rot_split_t *sp);
/* The outlier channels in ascending order (n_outliers of them), NULL before
** they are chosen. */
const uint32_t *kvs_rot_split_outliers(const kvs_rot_split_t *sp);
kvs_tq_t *kvs_rot_split_part(kvs_rot_split_t *sp, int outlier);

/* ---- codecs of this family -------------------------------------------- */

extern const kvs_codec_i kvs_codec_turboquant_mse;
extern const kvs_codec_i kvs_codec_turboquant_prod;
extern const kvs_codec_i kvs_codec_qjl;
extern const kvs_codec_i kvs_codec_polarquant;

/* ---- parameters ------------------------------------------------------- */

/* Sets a declared parameter; returns 0 when docs do not declare it. */
int kvs_rot_param_set(kvs_params_t *p, const char *name, double value);

#endif
