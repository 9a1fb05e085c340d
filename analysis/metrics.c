/*
** metrics.c: per-step comparison of approximate with exact attention.
**
** Accumulates in double. Per-step values go into running sums, and the
** output error of every step is kept so that p50 and p95 are exact.
*/
#include "metrics.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define TOP_SMALL 8
#define TOP_LARGE 32

typedef struct bucket {
    uint32_t n_steps;
    double out_rel_l2_sum;
    double logit_rmse_sum;
} bucket_t;

struct kvs_metrics_acc {
    uint32_t n_steps;
    uint32_t n_logit_steps;   /* steps with at least one attended position */
    uint32_t n_rel_steps;     /* steps whose exact logits have a spread */
    double logit_abs_sum;     /* over attended positions of all steps */
    double logit_sq_sum;
    uint64_t logit_count;
    double logit_max;
    double logit_rel_sum;
    double kl_sum, tv_sum, mass_sum;
    double top1_sum, top8_sum, top32_sum, recall8_sum;
    double out_sum, cos_sum;

    double *out_errors;       /* one per step, for percentiles */
    uint32_t out_cap;

    bucket_t *buckets;
    uint32_t n_buckets;

    /* Scratch for top-k index sets, reused across steps. */
    uint32_t idx_exact[TOP_LARGE], idx_approx[TOP_LARGE];
};

kvs_metrics_acc_t *kvs_metrics_acc_create(void)
{
    return calloc(1, sizeof(kvs_metrics_acc_t));
}

void kvs_metrics_acc_destroy(kvs_metrics_acc_t *acc)
{
    if (!acc)
        return;
    free(acc->out_errors);
    free(acc->buckets);
    free(acc);
}

/* Writes the indices of the k largest values of x (k <= n) to idx, largest
** first. Ties go to the lower index so results are deterministic.
** Insertion into a sorted list of k costs O(n k), cheap for k <= 32. */
static uint32_t top_indices(const float *x, uint32_t n, uint32_t k, uint32_t *idx)
{
    uint32_t len = 0;

    if (k > n)
        k = n;
    for (uint32_t t = 0; t < n; t++) {
        float v = x[t];
        if (len == k && !(v > x[idx[len - 1]]))
            continue;
        uint32_t pos = len < k ? len++ : k - 1;
        while (pos > 0 && v > x[idx[pos - 1]]) {
            idx[pos] = idx[pos - 1];
            pos--;
        }
        idx[pos] = t;
    }
    return len;
}

static uint32_t overlap(const uint32_t *a, const uint32_t *b, uint32_t n)
{
    uint32_t common = 0;

    for (uint32_t i = 0; i < n; i++)
        for (uint32_t j = 0; j < n; j++)
            if (a[i] == b[j]) {
                common++;
                break;
            }
    return common;
}

static int grow(kvs_metrics_acc_t *acc, uint32_t pos)
{
    if (acc->n_steps == acc->out_cap) {
        uint32_t cap = acc->out_cap ? acc->out_cap * 2 : 256;
        double *p = realloc(acc->out_errors, cap * sizeof *p);
        if (!p)
            return -1;
        acc->out_errors = p;
        acc->out_cap = cap;
    }
    uint32_t b = pos / KVS_POS_BUCKET;
    if (b >= acc->n_buckets) {
        bucket_t *p = realloc(acc->buckets, (b + 1) * sizeof *p);
        if (!p)
            return -1;
        memset(p + acc->n_buckets, 0, (b + 1 - acc->n_buckets) * sizeof *p);
        acc->buckets = p;
        acc->n_buckets = b + 1;
    }
    return 0;
}

/* Logit error over attended positions; returns this step's RMSE. */
static double add_logit_errors(kvs_metrics_acc_t *acc, uint32_t n, const float *exact,
                               const float *approx)
{
    double abs_sum = 0, sq_sum = 0, mean = 0, var = 0;
    uint32_t count = 0;

    for (uint32_t t = 0; t < n; t++) {
        mean += exact[t];
        if (!isfinite(approx[t]))
            continue;
        double d = (double)approx[t] - exact[t];
        abs_sum += fabs(d);
        sq_sum += d * d;
        if (fabs(d) > acc->logit_max)
            acc->logit_max = fabs(d);
        count++;
    }
    if (count == 0)
        return 0;
    mean /= n;
    for (uint32_t t = 0; t < n; t++)
        var += (exact[t] - mean) * (exact[t] - mean);
    var /= n;

    double rmse = sqrt(sq_sum / count);
    acc->logit_abs_sum += abs_sum;
    acc->logit_sq_sum += sq_sum;
    acc->logit_count += count;
    acc->n_logit_steps++;
    if (var > 0) {
        acc->logit_rel_sum += rmse / sqrt(var);
        acc->n_rel_steps++;
    }
    return rmse;
}

void kvs_metrics_add_step(kvs_metrics_acc_t *acc, uint32_t pos, uint32_t n, const float *exact_logits,
                          const float *exact_weights, const float *approx_logits,
                          const float *approx_weights, const float *exact_out,
                          const float *approx_out, uint32_t head_dim)
{
    if (n == 0 || grow(acc, pos) != 0)
        return;

    double logit_rmse = add_logit_errors(acc, n, exact_logits, approx_logits);

    /* Attention distribution. KL compares p and p^ both renormalised to
    ** the attended set, so a policy that evicts tokens is charged in
    ** mass_kept, not with an infinite divergence, and a kernel that returns
    ** the exact weights scores exactly zero. */
    double mass = 0, approx_mass = 0, tv = 0;
    for (uint32_t t = 0; t < n; t++) {
        if (isfinite(approx_logits[t])) {
            mass += exact_weights[t];
            approx_mass += approx_weights[t];
        }
        tv += fabs((double)exact_weights[t] - approx_weights[t]);
    }
    double kl = 0;
    if (mass > 0 && approx_mass > 0) {
        for (uint32_t t = 0; t < n; t++) {
            if (!isfinite(approx_logits[t]) || exact_weights[t] <= 0)
                continue;
            double p = exact_weights[t] / mass;
            double q = approx_weights[t] / approx_mass;
            kl += p * log(p / (q > 1e-30 ? q : 1e-30));
        }
    }
    acc->kl_sum += kl > 0 ? kl : 0;
    acc->tv_sum += 0.5 * tv;
    acc->mass_sum += mass;

    /* Top-k agreement on weights; recall counts exact top-8 positions that
    ** the kernel attended at all. */
    uint32_t k8 = top_indices(exact_weights, n, TOP_SMALL, acc->idx_exact);
    top_indices(approx_weights, n, TOP_SMALL, acc->idx_approx);
    acc->top1_sum += acc->idx_exact[0] == acc->idx_approx[0] ||
                     exact_weights[acc->idx_approx[0]] == exact_weights[acc->idx_exact[0]];
    acc->top8_sum += (double)overlap(acc->idx_exact, acc->idx_approx, k8) / k8;
    uint32_t recalled = 0;
    for (uint32_t i = 0; i < k8; i++)
        recalled += isfinite(approx_logits[acc->idx_exact[i]]) != 0;
    acc->recall8_sum += (double)recalled / k8;
    uint32_t k32 = top_indices(exact_weights, n, TOP_LARGE, acc->idx_exact);
    top_indices(approx_weights, n, TOP_LARGE, acc->idx_approx);
    acc->top32_sum += (double)overlap(acc->idx_exact, acc->idx_approx, k32) / k32;

    /* Output vector. */
    double diff = 0, norm = 0, norm_hat = 0, dot = 0;
    for (uint32_t j = 0; j < head_dim; j++) {
        double o = exact_out[j], oh = approx_out[j];
        diff += (oh - o) * (oh - o);
        norm += o * o;
        norm_hat += oh * oh;
        dot += o * oh;
    }
    double rel = norm > 0 ? sqrt(diff / norm) : sqrt(diff);
    double cosine = norm > 0 && norm_hat > 0 ? dot / sqrt(norm * norm_hat) : (diff == 0 ? 1.0 : 0.0);
    acc->out_sum += rel;
    acc->cos_sum += cosine;
    acc->out_errors[acc->n_steps] = rel;
    acc->n_steps++;

    bucket_t *b = &acc->buckets[pos / KVS_POS_BUCKET];
    b->n_steps++;
    b->out_rel_l2_sum += rel;
    b->logit_rmse_sum += logit_rmse;
}

static int compare_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Percentile by the nearest-rank method on sorted values. */
static double percentile(const double *sorted, uint32_t n, double pct)
{
    uint32_t rank = (uint32_t)ceil(pct / 100.0 * n);
    return sorted[rank > 0 ? rank - 1 : 0];
}

void kvs_metrics_finish(const kvs_metrics_acc_t *acc, kvs_metrics_t *out)
{
    uint32_t n = acc->n_steps;

    memset(out, 0, sizeof *out);
    out->n_steps = n;
    if (n == 0)
        return;
    if (acc->logit_count) {
        out->logit_mae = acc->logit_abs_sum / acc->logit_count;
        out->logit_rmse = sqrt(acc->logit_sq_sum / acc->logit_count);
    }
    out->logit_max = acc->logit_max;
    out->logit_rel_rmse = acc->n_rel_steps ? acc->logit_rel_sum / acc->n_rel_steps : 0;
    out->kl = acc->kl_sum / n;
    out->tv = acc->tv_sum / n;
    out->mass_kept = acc->mass_sum / n;
    out->top1 = acc->top1_sum / n;
    out->top8 = acc->top8_sum / n;
    out->top32 = acc->top32_sum / n;
    out->recall8 = acc->recall8_sum / n;
    out->out_rel_l2 = acc->out_sum / n;
    out->out_cos = acc->cos_sum / n;

    double *sorted = malloc(n * sizeof *sorted);
    if (sorted) {
        memcpy(sorted, acc->out_errors, n * sizeof *sorted);
        qsort(sorted, n, sizeof *sorted, compare_double);
        out->out_rel_l2_p50 = percentile(sorted, n, 50);
        out->out_rel_l2_p95 = percentile(sorted, n, 95);
        out->out_rel_l2_max = sorted[n - 1];
        free(sorted);
    }
}

uint32_t kvs_metrics_n_buckets(const kvs_metrics_acc_t *acc)
{
    return acc->n_buckets;
}

void kvs_metrics_bucket(const kvs_metrics_acc_t *acc, uint32_t b, uint32_t *n_steps,
                        double *out_rel_l2, double *logit_rmse)
{
    const bucket_t *bk = &acc->buckets[b];

    *n_steps = bk->n_steps;
    *out_rel_l2 = bk->n_steps ? bk->out_rel_l2_sum / bk->n_steps : 0;
    *logit_rmse = bk->n_steps ? bk->logit_rmse_sum / bk->n_steps : 0;
}
