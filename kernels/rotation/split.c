/*
** split.c: one stream over two encoders, outlier channels and the rest
** (see rotation_impl.h).
*/
#include "rotation_impl.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

struct kvs_rot_split {
    uint32_t d, n_out;
    kvs_tq_config_t cfg[2];   /* [0] regular channels, [1] outliers */
    kvs_tq_t *part[2];
    uint32_t *channels[2];    /* ascending channel indices of each part */
    int decided;

    float *pending;           /* (n_pending, d) prompt vectors, F32 */
    uint32_t n_pending, cap_pending;

    float *sub_x, *sub_acc;   /* (d) gather and scatter buffers */
    int center;               /* subtract the prompt mean before coding */
    float *mu;                /* (d) prompt mean, when center */
    float *centered;          /* (d) scratch */
    float *sub_score;         /* (cap) */
    uint32_t score_cap;
};

static kvs_status_e decide(kvs_rot_split_t *sp);

kvs_status_e kvs_rot_split_create(uint32_t d, uint32_t n_outliers, const kvs_tq_config_t *main_cfg,
                              const kvs_tq_config_t *outlier_cfg, kvs_rot_split_t **out)
{
    kvs_rot_split_t *sp = calloc(1, sizeof *sp);
    kvs_status_e rc = KVS_OK;

    *out = NULL;
    KVS_RETURN_IF(!sp, KVS_ERR_NOMEM, "out of memory for a stream encoder");
    sp->d = d;
    sp->n_out = n_outliers;
    sp->cfg[0] = *main_cfg;
    sp->cfg[0].n = d - n_outliers;
    sp->sub_x = calloc(d, sizeof *sp->sub_x);
    sp->sub_acc = calloc(d, sizeof *sp->sub_acc);
    sp->channels[0] = calloc(d, sizeof *sp->channels[0]);
    sp->channels[1] = calloc(d, sizeof *sp->channels[1]);
    if (!sp->sub_x || !sp->sub_acc || !sp->channels[0] || !sp->channels[1]) {
        kvs_rot_split_destroy(sp);
        return kvs_fail(KVS_ERR_NOMEM, "out of memory for a stream encoder");
    }

    if (n_outliers > 0) {
        KVS_RETURN_IF(n_outliers >= d, KVS_ERR_KERNEL_SPEC,
                      "%u outlier channels leave none of %u for the regular part", n_outliers, d);
        sp->cfg[1] = *outlier_cfg;
        sp->cfg[1].n = n_outliers;
        rc = kvs_tq_check(&sp->cfg[0], "regular channels");
        if (rc == KVS_OK)
            rc = kvs_tq_check(&sp->cfg[1], "outlier channels");
    } else {
        /* Nothing waits for the prompt: create the encoder now. */
        rc = decide(sp);
    }
    if (rc != KVS_OK) {
        kvs_rot_split_destroy(sp);
        return rc;
    }
    *out = sp;
    return KVS_OK;
}

void kvs_rot_split_destroy(kvs_rot_split_t *sp)
{
    if (!sp)
        return;
    kvs_tq_destroy(sp->part[0]);
    kvs_tq_destroy(sp->part[1]);
    free(sp->channels[0]);
    free(sp->channels[1]);
    free(sp->pending);
    free(sp->sub_x);
    free(sp->sub_acc);
    free(sp->sub_score);
    free(sp->mu);
    free(sp->centered);
    free(sp);
}

static kvs_status_e append_parts(kvs_rot_split_t *sp, const float *x)
{
    if (sp->center) {
        for (uint32_t j = 0; j < sp->d; j++)
            sp->centered[j] = x[j] - sp->mu[j];
        x = sp->centered;
    }
    for (int p = 0; p < 2 && sp->part[p]; p++) {
        for (uint32_t j = 0; j < sp->cfg[p].n; j++)
            sp->sub_x[j] = x[sp->channels[p][j]];
        KVS_FORWARD(kvs_tq_append(sp->part[p], sp->sub_x));
    }
    return KVS_OK;
}

kvs_status_e kvs_rot_split_set_center(kvs_rot_split_t *sp)
{
    KVS_RETURN_IF(sp->n_pending > 0 || (sp->part[0] && kvs_tq_count(sp->part[0]) > 0),
                  KVS_ERR_INTERNAL, "centering must be set before the first vector");
    sp->mu = calloc(sp->d, sizeof *sp->mu);
    sp->centered = calloc(sp->d, sizeof *sp->centered);
    KVS_RETURN_IF(!sp->mu || !sp->centered, KVS_ERR_NOMEM, "out of memory for a key mean");
    sp->center = 1;

    /* The mean comes from the prompt, so encoding waits for its end. */
    kvs_tq_destroy(sp->part[0]);
    sp->part[0] = NULL;
    sp->decided = 0;
    return KVS_OK;
}

/* Computes the prompt mean (when centering), picks the outlier channels,
** creates the parts and encodes the prompt. */
static kvs_status_e decide(kvs_rot_split_t *sp)
{
    double *mag;
    uint8_t *is_out;
    uint32_t n0 = 0, n1 = 0;

    if (sp->decided)
        return KVS_OK;
    mag = calloc(sp->d, sizeof *mag);
    is_out = calloc(sp->d, 1);
    if (!mag || !is_out) {
        free(mag);
        free(is_out);
        return kvs_fail(KVS_ERR_NOMEM, "out of memory choosing outlier channels");
    }
    if (sp->center) {
        for (uint32_t t = 0; t < sp->n_pending; t++)
            for (uint32_t j = 0; j < sp->d; j++)
                mag[j] += sp->pending[(size_t)t * sp->d + j];
        for (uint32_t j = 0; j < sp->d; j++) {
            sp->mu[j] = sp->n_pending ? (float)(mag[j] / sp->n_pending) : 0.0f;
            mag[j] = 0.0;
        }
    }
    for (uint32_t t = 0; t < sp->n_pending; t++)
        for (uint32_t j = 0; j < sp->d; j++)
            mag[j] += fabs(sp->pending[(size_t)t * sp->d + j] - (sp->center ? sp->mu[j] : 0.0f));

    /* n_out passes of argmax: d is at most a few hundred. Ties go to the
    ** lower channel, so an empty prompt picks the first channels. */
    for (uint32_t k = 0; k < sp->n_out; k++) {
        uint32_t best = sp->d;

        for (uint32_t j = 0; j < sp->d; j++)
            if (!is_out[j] && (best == sp->d || mag[j] > mag[best]))
                best = j;
        is_out[best] = 1;
    }
    for (uint32_t j = 0; j < sp->d; j++) {
        if (is_out[j])
            sp->channels[1][n1++] = j;
        else
            sp->channels[0][n0++] = j;
    }
    free(mag);
    free(is_out);

    KVS_FORWARD(kvs_tq_create(&sp->cfg[0], &sp->part[0]));
    if (sp->n_out)
        KVS_FORWARD(kvs_tq_create(&sp->cfg[1], &sp->part[1]));
    sp->decided = 1;
    for (uint32_t t = 0; t < sp->n_pending; t++)
        KVS_FORWARD(append_parts(sp, sp->pending + (size_t)t * sp->d));
    free(sp->pending);
    sp->pending = NULL;
    sp->n_pending = sp->cap_pending = 0;
    return KVS_OK;
}

kvs_status_e kvs_rot_split_append(kvs_rot_split_t *sp, const float *x)
{
    if (sp->decided)
        return append_parts(sp, x);

    for (uint32_t j = 0; j < sp->d; j++)
        KVS_RETURN_IF(!isfinite(x[j]), KVS_ERR_NONFINITE,
                      "vector %u has a non-finite value at coordinate %u; check the trace "
                      "for NaN or Inf",
                      sp->n_pending, j);
    if (sp->n_pending == sp->cap_pending) {
        uint32_t cap = sp->cap_pending ? 2 * sp->cap_pending : 64;
        float *grown = realloc(sp->pending, (size_t)cap * sp->d * sizeof *grown);

        KVS_RETURN_IF(!grown, KVS_ERR_NOMEM, "out of memory after %u prompt vectors",
                      sp->n_pending);
        sp->pending = grown;
        sp->cap_pending = cap;
    }
    memcpy(sp->pending + (size_t)sp->n_pending * sp->d, x, sp->d * sizeof *x);
    sp->n_pending++;
    return KVS_OK;
}

kvs_status_e kvs_rot_split_end_prefill(kvs_rot_split_t *sp)
{
    return decide(sp);
}

/* Centered codes score <q, x - mu>; <q, mu> is the same for every position
** and is added back so logits stay comparable with exact ones. */
static void add_mean_score(const kvs_rot_split_t *sp, const float *q, uint32_t n_tok,
                           float *score)
{
    float base = 0.0f;

    if (!sp->center)
        return;
    for (uint32_t j = 0; j < sp->d; j++)
        base += q[j] * sp->mu[j];
    for (uint32_t t = 0; t < n_tok; t++)
        score[t] += base;
}

void kvs_rot_split_scores(kvs_rot_split_t *sp, const float *q, uint32_t n_tok, float *score,
                      kvs_tq_path_e path)
{
    if (decide(sp) != KVS_OK)
        goto fail;
    if (!sp->part[1]) {
        kvs_tq_scores(sp->part[0], q, n_tok, score, path);
        add_mean_score(sp, q, n_tok, score);
        return;
    }
    if (sp->score_cap < n_tok) {
        float *grown = realloc(sp->sub_score, n_tok * sizeof *grown);

        if (!grown)
            goto fail;
        sp->sub_score = grown;
        sp->score_cap = n_tok;
    }
    for (int p = 0; p < 2; p++) {
        for (uint32_t j = 0; j < sp->cfg[p].n; j++)
            sp->sub_x[j] = q[sp->channels[p][j]];
        kvs_tq_scores(sp->part[p], sp->sub_x, n_tok, p == 0 ? score : sp->sub_score, path);
    }
    for (uint32_t t = 0; t < n_tok; t++)
        score[t] += sp->sub_score[t];
    add_mean_score(sp, q, n_tok, score);
    return;

fail:
    for (uint32_t t = 0; t < n_tok; t++)
        score[t] = NAN; /* NOTE: a failure inside a void hook shows up as NaN logits */
}

void kvs_rot_split_accumulate(kvs_rot_split_t *sp, const float *w, uint32_t n_tok, float *out,
                          kvs_tq_path_e path)
{
    if (decide(sp) != KVS_OK) {
        for (uint32_t j = 0; j < sp->d; j++)
            out[j] = NAN; /* NOTE: a failure inside a void hook shows up as NaN outputs */
        return;
    }
    memset(out, 0, sp->d * sizeof *out);
    for (int p = 0; p < 2 && sp->part[p]; p++) {
        memset(sp->sub_acc, 0, sp->cfg[p].n * sizeof *sp->sub_acc);
        kvs_tq_accumulate(sp->part[p], w, n_tok, sp->sub_acc, path);
        for (uint32_t j = 0; j < sp->cfg[p].n; j++)
            out[sp->channels[p][j]] = sp->sub_acc[j];
    }
    if (sp->center) {
        double mass = 0.0;

        for (uint32_t t = 0; t < n_tok; t++)
            mass += w[t];
        for (uint32_t j = 0; j < sp->d; j++)
            out[j] += (float)mass * sp->mu[j];
    }
}

uint64_t kvs_rot_split_stored_bytes(const kvs_rot_split_t *sp)
{
    uint64_t bytes = (uint64_t)sp->n_pending * sp->d * sizeof(float);

    for (int p = 0; p < 2; p++)
        if (sp->part[p])
            bytes += kvs_tq_stored_bytes(sp->part[p]);
    if (sp->center)
        bytes += (uint64_t)sp->d * sizeof(float);
    /* The outlier channel list: one byte per index up to 256 channels. */
    if (sp->n_out)
        bytes += (uint64_t)sp->n_out * (sp->d <= 256 ? 1 : 2);
    return bytes;
}

const uint32_t *kvs_rot_split_outliers(const kvs_rot_split_t *sp)
{
    return sp->n_out && sp->decided ? sp->channels[1] : NULL;
}

kvs_tq_t *kvs_rot_split_part(kvs_rot_split_t *sp, int outlier)
{
    return sp->part[outlier ? 1 : 0];
}
