/*
** tq_core.c: the rotated-codebook plus sign-sketch encoder behind
** TurboQuant-MSE, TurboQuant-prod and QJL (layout in rotation_impl.h).
*/
#include "rotation_impl.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

struct kvs_tq {
    kvs_tq_config_t cfg;
    kvs_rotation_t *rot;
    kvs_rot_sketch_t *sketch;
    float codebook[16];
    float sketch_scale;          /* sqrt(pi/2) / m */

    uint32_t code_bytes, sign_bytes, row_bytes;
    uint32_t norm_offset, gamma_offset;
    kvs_rot_rows_t rows;

    /* Per-step scratch, grown with the token count. */
    float *qrot, *qsk, *unit, *yhat;   /* (n) (m) (n) (n) */
    float *part_a, *part_b, *weights;  /* (cap) each */
    uint32_t scratch_cap;
    float *hist;
    kvs_rot_code_lut_t lut_codes, lut_signs;
    float *coord_table;  /* (n, 2^mse_bits) for widths that cross bytes */
};

uint32_t kvs_tq_row_bytes(const kvs_tq_config_t *cfg)
{
    return kvs_rot_packed_bytes(cfg->n, cfg->mse_bits) + kvs_rot_packed_bytes(cfg->m, 1) + 2 +
           (cfg->store_gamma ? 2 : 0);
}

uint64_t kvs_tq_shared_bytes(const kvs_tq_config_t *cfg)
{
    uint64_t bytes = 0;

    if (cfg->rotation >= 0)
        bytes += kvs_rotation_bytes((kvs_rotation_kind_e)cfg->rotation, cfg->n);
    if (cfg->m)
        bytes += (uint64_t)cfg->m * cfg->n * sizeof(float);
    if (cfg->mse_bits)
        bytes += ((uint64_t)1 << cfg->mse_bits) * sizeof(float);
    return bytes;
}

double kvs_tq_step_flops(const kvs_tq_config_t *cfg, uint64_t n_tok)
{
    double flops = 0.0;

    /* Per query: rotate and sketch once, then per token one add per code
    ** byte and per sign byte plus the norm products. */
    if (cfg->rotation >= 0)
        flops += kvs_rotation_flops((kvs_rotation_kind_e)cfg->rotation, cfg->n);
    flops += 2.0 * cfg->m * cfg->n;
    flops += (double)n_tok *
             (kvs_rot_packed_bytes(cfg->n, cfg->mse_bits) + kvs_rot_packed_bytes(cfg->m, 1) + 3.0);
    return flops;
}

kvs_status_e kvs_tq_check(const kvs_tq_config_t *cfg, const char *codec)
{
    KVS_RETURN_IF(cfg->n == 0, KVS_ERR_KERNEL_SPEC, "%s: no coordinates to encode", codec);
    KVS_RETURN_IF(cfg->mse_bits > 4, KVS_ERR_KERNEL_SPEC,
                  "%s: %u codebook bits per coordinate; the accepted range is 0..4", codec,
                  cfg->mse_bits);
    KVS_RETURN_IF(cfg->mse_bits > 0 && cfg->rotation < 0, KVS_ERR_INTERNAL,
                  "%s: codebook codes need a rotation", codec);
    KVS_RETURN_IF(cfg->mse_bits == 0 && cfg->m == 0, KVS_ERR_KERNEL_SPEC,
                  "%s: neither codebook bits nor sketch rows; set bits >= 1", codec);
    if (cfg->rotation >= 0)
        KVS_FORWARD(kvs_rotation_check((kvs_rotation_kind_e)cfg->rotation, cfg->n, codec));
    return KVS_OK;
}

kvs_status_e kvs_tq_create(const kvs_tq_config_t *cfg, kvs_tq_t **out)
{
    kvs_tq_t *tq;
    kvs_rot_rng_t rng;
    kvs_status_e rc;

    *out = NULL;
    KVS_FORWARD(kvs_tq_check(cfg, "turboquant"));
    tq = calloc(1, sizeof *tq);
    KVS_RETURN_IF(!tq, KVS_ERR_NOMEM, "out of memory for a TurboQuant stream");
    tq->cfg = *cfg;
    kvs_rot_rng_init(&rng, cfg->seed);

    tq->code_bytes = kvs_rot_packed_bytes(cfg->n, cfg->mse_bits);
    tq->sign_bytes = kvs_rot_packed_bytes(cfg->m, 1);
    tq->norm_offset = tq->code_bytes + tq->sign_bytes;
    tq->gamma_offset = tq->norm_offset + 2;
    tq->row_bytes = kvs_tq_row_bytes(cfg);
    kvs_rot_rows_init(&tq->rows, tq->row_bytes);
    tq->sketch_scale = cfg->m ? (float)(sqrt(M_PI / 2.0) / cfg->m) : 0.0f;

    /* The rotation and the sketch get unrelated seeds from one draw each. */
    if (cfg->rotation >= 0) {
        rc = kvs_rotation_create((kvs_rotation_kind_e)cfg->rotation, cfg->n, kvs_rot_rng_next(&rng),
                                 &tq->rot);
        if (rc != KVS_OK)
            goto fail;
    } else {
        (void)kvs_rot_rng_next(&rng);
    }
    if (cfg->m) {
        rc = kvs_rot_sketch_create(cfg->m, cfg->n, kvs_rot_rng_next(&rng), &tq->sketch);
        if (rc != KVS_OK)
            goto fail;
    }
    if (cfg->mse_bits) {
        double c[16];

        /* The sphere density is exact for a Haar rotation; below 3
        ** coordinates it is unbounded, so the Gaussian limit stands in. */
        rc = kvs_rot_coord_codebook(cfg->n >= 3 ? KVS_DENSITY_SPHERE : KVS_DENSITY_GAUSS, cfg->n,
                                cfg->mse_bits, c, NULL);
        if (rc != KVS_OK)
            goto fail;
        for (uint32_t k = 0; k < (1u << cfg->mse_bits); k++)
            tq->codebook[k] = (float)c[k];
    }

    tq->qrot = calloc(cfg->n, sizeof *tq->qrot);
    tq->unit = calloc(cfg->n, sizeof *tq->unit);
    tq->yhat = calloc(cfg->n, sizeof *tq->yhat);
    tq->qsk = calloc(cfg->m ? cfg->m : 1, sizeof *tq->qsk);
    {
        size_t codes = cfg->mse_bits ? kvs_rot_code_accumulate_scratch(cfg->n, cfg->mse_bits) : 0;
        size_t signs = cfg->m ? kvs_rot_code_accumulate_scratch(cfg->m, 1) : 0;

        tq->hist = malloc((codes > signs ? codes : signs) * sizeof *tq->hist + 1);
    }
    if (!tq->qrot || !tq->unit || !tq->yhat || !tq->qsk || !tq->hist) {
        rc = kvs_fail(KVS_ERR_NOMEM, "out of memory for a TurboQuant stream");
        goto fail;
    }
    if (cfg->mse_bits && 8 % cfg->mse_bits == 0) {
        rc = kvs_rot_code_lut_init(&tq->lut_codes, cfg->n, cfg->mse_bits);
        if (rc != KVS_OK)
            goto fail;
    }
    if (cfg->mse_bits && 8 % cfg->mse_bits != 0) {
        tq->coord_table = malloc(((size_t)cfg->n << cfg->mse_bits) * sizeof *tq->coord_table);
        if (!tq->coord_table) {
            rc = kvs_fail(KVS_ERR_NOMEM, "out of memory for a TurboQuant stream");
            goto fail;
        }
    }
    if (cfg->m) {
        rc = kvs_rot_code_lut_init(&tq->lut_signs, cfg->m, 1);
        if (rc != KVS_OK)
            goto fail;
    }
    *out = tq;
    return KVS_OK;

fail:
    kvs_tq_destroy(tq);
    return rc;
}

void kvs_tq_destroy(kvs_tq_t *tq)
{
    if (!tq)
        return;
    kvs_rotation_destroy(tq->rot);
    kvs_rot_sketch_destroy(tq->sketch);
    kvs_rot_rows_free(&tq->rows);
    free(tq->qrot);
    free(tq->qsk);
    free(tq->unit);
    free(tq->yhat);
    free(tq->part_a);
    free(tq->part_b);
    free(tq->weights);
    free(tq->hist);
    kvs_rot_code_lut_free(&tq->lut_codes);
    kvs_rot_code_lut_free(&tq->lut_signs);
    free(tq->coord_table);
    free(tq);
}

uint32_t kvs_tq_count(const kvs_tq_t *tq)
{
    return tq->rows.n;
}

const float *kvs_tq_codebook(const kvs_tq_t *tq)
{
    return tq->codebook;
}

uint64_t kvs_tq_stored_bytes(const kvs_tq_t *tq)
{
    return (uint64_t)tq->rows.n * tq->row_bytes + kvs_tq_shared_bytes(&tq->cfg);
}

static void store_f16(uint8_t *dst, float x)
{
    uint16_t h = kvs_f32_to_f16(x);

    memcpy(dst, &h, sizeof h);
}

static float load_f16(const uint8_t *src)
{
    uint16_t h;

    memcpy(&h, src, sizeof h);
    return kvs_rot_f32_from_f16(h);
}

kvs_status_e kvs_tq_append(kvs_tq_t *tq, const float *x)
{
    const kvs_tq_config_t *cfg = &tq->cfg;
    uint32_t n = cfg->n;
    uint32_t levels = 1u << cfg->mse_bits;
    uint8_t codes[4096];
    uint8_t *row;
    double norm2 = 0.0;
    float norm, inv, gamma = 1.0f;

    for (uint32_t j = 0; j < n; j++)
        norm2 += (double)x[j] * x[j];
    norm = (float)sqrt(norm2);
    KVS_RETURN_IF(!isfinite(norm), KVS_ERR_NONFINITE,
                  "turboquant: vector %u has a non-finite norm; check the trace for NaN or Inf",
                  tq->rows.n);
    KVS_RETURN_IF(n > sizeof codes, KVS_ERR_UNSUPPORTED,
                  "turboquant: %u coordinates per vector; at most %zu are supported", n,
                  sizeof codes);
    row = kvs_rot_rows_push(&tq->rows);
    KVS_RETURN_IF(!row, KVS_ERR_NOMEM, "out of memory after %u TurboQuant vectors", tq->rows.n);

    /* Unit vector in the rotated basis; a zero vector stays zero and its
    ** stored norm 0 cancels whatever codes it gets. */
    inv = norm > 0.0f ? 1.0f / norm : 0.0f;
    for (uint32_t j = 0; j < n; j++)
        tq->unit[j] = x[j] * inv;
    if (tq->rot)
        kvs_rotation_apply(tq->rot, tq->unit, tq->qrot);
    else
        memcpy(tq->qrot, tq->unit, n * sizeof *tq->qrot);

    /* Codebook indices, and the residual left for the sketch. */
    if (cfg->mse_bits) {
        for (uint32_t j = 0; j < n; j++) {
            codes[j] = kvs_rot_nearest_centroid(tq->codebook, levels, tq->qrot[j]);
            tq->qrot[j] -= tq->codebook[codes[j]];
        }
        kvs_rot_pack_codes(codes, n, cfg->mse_bits, row);
    }
    if (cfg->m) {
        double r2 = 0.0;

        for (uint32_t j = 0; j < n; j++)
            r2 += (double)tq->qrot[j] * tq->qrot[j];
        gamma = (float)sqrt(r2);
        kvs_rot_sketch_apply(tq->sketch, tq->qrot, tq->qsk);
        for (uint32_t i = 0; i < cfg->m; i++)
            if (tq->qsk[i] >= 0.0f)
                row[tq->code_bytes + (i >> 3)] |= (uint8_t)(1u << (i & 7));
    }
    store_f16(row + tq->norm_offset, norm);
    if (cfg->store_gamma)
        store_f16(row + tq->gamma_offset, gamma);
    return KVS_OK;
}

/* Grows the per-token scratch; returns 0 when out of memory. */
static int reserve_scratch(kvs_tq_t *tq, uint32_t n_tok)
{
    float *a, *b, *w;

    if (n_tok <= tq->scratch_cap)
        return 1;
    a = realloc(tq->part_a, n_tok * sizeof *a);
    if (a)
        tq->part_a = a;
    b = realloc(tq->part_b, n_tok * sizeof *b);
    if (b)
        tq->part_b = b;
    w = realloc(tq->weights, n_tok * sizeof *w);
    if (w)
        tq->weights = w;
    if (!a || !b || !w)
        return 0;
    tq->scratch_cap = n_tok;
    return 1;
}

/* sum_j y_j codebook[code_tj] for every stored vector, by the path's
** method (see kvs_tq_path_e). lut is built here when the path uses it. */
static void code_scores(kvs_tq_t *tq, const uint8_t *codes, uint32_t n_tok, const float *y,
                        uint32_t n, unsigned bits, const float *codebook, kvs_rot_code_lut_t *lut,
                        float *score, kvs_tq_path_e path)
{
    uint32_t stride = tq->row_bytes;
    uint32_t levels = 1u << bits;

    if (path == KVS_TQ_PATH_REF) {
        kvs_rot_code_dot_ref(codes, stride, n_tok, y, n, bits, codebook, score);
        return;
    }
    if (path == KVS_TQ_PATH_FAST &&
        kvs_rot_code_dot_avx2(codes, stride, n_tok, y, n, bits, codebook, score))
        return;
    if (lut->table) {
        kvs_rot_code_lut_build(lut, y, n, bits, codebook);
        if (path == KVS_TQ_PATH_GATHER)
            kvs_rot_code_dot_lut(lut, codes, stride, n_tok, score);
        else
            kvs_rot_code_dot_lut_scalar(lut, codes, stride, n_tok, score);
        return;
    }
    /* Widths whose codes cross bytes: per-coordinate table. */
    for (uint32_t j = 0; j < n; j++)
        for (uint32_t c = 0; c < levels; c++)
            tq->coord_table[(size_t)j * levels + c] = y[j] * codebook[c];
    kvs_rot_code_dot_table(codes, stride, n_tok, tq->coord_table, n, bits, score);
}

void kvs_tq_scores(kvs_tq_t *tq, const float *q, uint32_t n_tok, float *score,
                   kvs_tq_path_e path)
{
    const kvs_tq_config_t *cfg = &tq->cfg;
    const uint8_t *base = tq->rows.data;
    uint32_t stride = tq->row_bytes;

    if (n_tok > tq->rows.n)
        n_tok = tq->rows.n;
    if (!reserve_scratch(tq, n_tok)) {
        for (uint32_t t = 0; t < n_tok; t++)
            score[t] = NAN; /* NOTE: out of memory in a void hook shows up as NaN logits */
        return;
    }

    /* The query is rotated and sketched once per step. */
    if (tq->rot)
        kvs_rotation_apply(tq->rot, q, tq->qrot);
    else
        memcpy(tq->qrot, q, cfg->n * sizeof *tq->qrot);
    if (cfg->m)
        kvs_rot_sketch_apply(tq->sketch, tq->qrot, tq->qsk);

    if (cfg->mse_bits)
        code_scores(tq, base, n_tok, tq->qrot, cfg->n, cfg->mse_bits, tq->codebook,
                    &tq->lut_codes, tq->part_a, path);
    if (cfg->m)
        code_scores(tq, base + tq->code_bytes, n_tok, tq->qsk, cfg->m, 1, kvs_rot_sign_codebook,
                    &tq->lut_signs, tq->part_b, path);

    for (uint32_t t = 0; t < n_tok; t++) {
        const uint8_t *row = base + (size_t)t * stride;
        float s = cfg->mse_bits ? tq->part_a[t] : 0.0f;

        if (cfg->m) {
            float gamma = cfg->store_gamma ? load_f16(row + tq->gamma_offset) : 1.0f;

            s += tq->sketch_scale * gamma * tq->part_b[t];
        }
        score[t] = load_f16(row + tq->norm_offset) * s;
    }
}

/* Weighted codeword sums by the path's method: AVX2 with the codebook in
** registers (fast, when possible), per-codeword weight histograms (table,
** gather, and fast otherwise), or the scalar reference. */
static void accumulate_codes(const uint8_t *codes, uint32_t stride, uint32_t n_tok,
                             const float *wt, uint32_t n, unsigned bits, const float *codebook,
                             float *hist, float *acc, kvs_tq_path_e path)
{
    if (path == KVS_TQ_PATH_REF) {
        kvs_rot_code_accumulate_ref(codes, stride, n_tok, wt, n, bits, codebook, acc);
        return;
    }
    if (path == KVS_TQ_PATH_FAST &&
        kvs_rot_code_accumulate_avx2(codes, stride, n_tok, wt, n, bits, codebook, acc))
        return;
    kvs_rot_code_accumulate(codes, stride, n_tok, wt, n, bits, codebook, hist, acc);
}

void kvs_tq_accumulate(kvs_tq_t *tq, const float *w, uint32_t n_tok, float *out,
                       kvs_tq_path_e path)
{
    const kvs_tq_config_t *cfg = &tq->cfg;
    const uint8_t *base = tq->rows.data;
    uint32_t stride = tq->row_bytes;
    uint32_t n = cfg->n;

    if (n_tok > tq->rows.n)
        n_tok = tq->rows.n;
    if (!reserve_scratch(tq, n_tok)) {
        for (uint32_t j = 0; j < n; j++)
            out[j] = NAN; /* NOTE: out of memory in a void hook shows up as NaN outputs */
        return;
    }
    memset(tq->yhat, 0, n * sizeof *tq->yhat);

    /* Codebook part: weights times norms, summed per (coordinate, codeword)
    ** in the rotated basis. */
    if (cfg->mse_bits) {
        for (uint32_t t = 0; t < n_tok; t++)
            tq->weights[t] = w[t] == 0.0f ? 0.0f : w[t] * load_f16(base + (size_t)t * stride +
                                                                   tq->norm_offset);
        accumulate_codes(base, stride, n_tok, tq->weights, n, cfg->mse_bits, tq->codebook,
                         tq->hist, tq->yhat, path);
    }

    /* Sketch part: signed sums of weight * norm * |r| per sketch row, then
    ** one S^T product for the whole step. */
    if (cfg->m) {
        memset(tq->qsk, 0, cfg->m * sizeof *tq->qsk);
        for (uint32_t t = 0; t < n_tok; t++) {
            const uint8_t *row = base + (size_t)t * stride;
            float gamma = cfg->store_gamma ? load_f16(row + tq->gamma_offset) : 1.0f;

            tq->weights[t] = w[t] == 0.0f ? 0.0f : w[t] * load_f16(row + tq->norm_offset) * gamma;
        }
        accumulate_codes(base + tq->code_bytes, stride, n_tok, tq->weights, cfg->m, 1,
                         kvs_rot_sign_codebook, tq->hist, tq->qsk, path);
        kvs_rot_sketch_apply_t_add(tq->sketch, tq->qsk, tq->sketch_scale, tq->yhat);
    }

    /* One inverse rotation per step. */
    if (tq->rot)
        kvs_rotation_apply_t(tq->rot, tq->yhat, tq->unit);
    else
        memcpy(tq->unit, tq->yhat, n * sizeof *tq->unit);
    for (uint32_t j = 0; j < n; j++)
        out[j] += tq->unit[j];
}

void kvs_tq_decode(const kvs_tq_t *tq, uint32_t t, float *x)
{
    const kvs_tq_config_t *cfg = &tq->cfg;
    const uint8_t *row = tq->rows.data + (size_t)t * tq->row_bytes;
    uint32_t n = cfg->n;
    float *y = calloc(n, sizeof *y);
    float *sk = calloc(cfg->m ? cfg->m : 1, sizeof *sk);
    float norm = load_f16(row + tq->norm_offset);

    if (!y || !sk) {
        for (uint32_t j = 0; j < n; j++)
            x[j] = NAN;
        free(y);
        free(sk);
        return;
    }
    for (uint32_t j = 0; j < n && cfg->mse_bits; j++)
        y[j] = tq->codebook[kvs_rot_unpack_code(row, j, cfg->mse_bits)];
    if (cfg->m) {
        float gamma = cfg->store_gamma ? load_f16(row + tq->gamma_offset) : 1.0f;

        for (uint32_t i = 0; i < cfg->m; i++)
            sk[i] = kvs_rot_sign_codebook[kvs_rot_unpack_code(row + tq->code_bytes, i, 1)];
        kvs_rot_sketch_apply_t_add(tq->sketch, sk, tq->sketch_scale * gamma, y);
    }
    if (tq->rot)
        kvs_rotation_apply_t(tq->rot, y, x);
    else
        memcpy(x, y, n * sizeof *x);
    for (uint32_t j = 0; j < n; j++)
        x[j] *= norm;
    free(y);
    free(sk);
}
