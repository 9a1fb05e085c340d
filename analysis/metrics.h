/*
** metrics.h: fidelity of approximate attention against exact attention.
**
** One kvs_metrics_acc accumulates the evaluation steps of one (layer, query
** head). Each step compares the exact logits, weights and output computed
** from the trace with what a kernel returned. Positions a kernel did not
** attend (logit -INFINITY) are left out of the logit and KL figures and
** counted in mass_lost instead, so eviction does not turn KL infinite.
*/
#ifndef KVS_METRICS_H
#define KVS_METRICS_H

#include <stdint.h>

/* Summary of one (layer, query head) over its evaluation steps. Means are
** over steps unless noted. */
typedef struct kvs_metrics {
    uint32_t n_steps;
    double logit_mae;        /* mean |l^ - l| over attended positions */
    double logit_rmse;       /* sqrt(mean (l^ - l)^2) over attended positions */
    double logit_max;        /* max |l^ - l| over all steps */
    double logit_rel_rmse;   /* per-step RMSE / std of exact logits, mean */
    double kl;               /* KL(p || p^) over attended positions, nats,
                                both renormalised to those positions */
    double tv;               /* total variation 0.5 * sum |p - p^| */
    double mass_kept;        /* exact attention mass on attended positions */
    double top1;             /* fraction of steps whose argmax agrees */
    double top8;             /* |top8(p) & top8(p^)| / 8, mean */
    double top32;
    double recall8;          /* fraction of exact top-8 positions attended */
    double out_rel_l2;       /* ||o^ - o|| / ||o|| */
    double out_cos;          /* cosine(o^, o) */
    double out_rel_l2_p50;   /* distribution over steps */
    double out_rel_l2_p95;
    double out_rel_l2_max;
} kvs_metrics_t;

/* Error by context position, in buckets of KVS_POS_BUCKET positions. */
#define KVS_POS_BUCKET 64

typedef struct kvs_metrics_acc kvs_metrics_acc_t;

kvs_metrics_acc_t *kvs_metrics_acc_create(void);
void kvs_metrics_acc_destroy(kvs_metrics_acc_t *acc);

/* Adds one step over n positions. exact_* from the trace, approx_* from
** the kernel (logits -INFINITY where not attended). pos is the query's
** position, used for the per-position buckets. */
void kvs_metrics_add_step(kvs_metrics_acc_t *acc, uint32_t pos, uint32_t n, const float *exact_logits,
                          const float *exact_weights, const float *approx_logits,
                          const float *approx_weights, const float *exact_out,
                          const float *approx_out, uint32_t head_dim);

void kvs_metrics_finish(const kvs_metrics_acc_t *acc, kvs_metrics_t *out);

/* Per-position buckets: number of buckets used, and the mean output
** relative error and logit RMSE and step count of bucket b. */
uint32_t kvs_metrics_n_buckets(const kvs_metrics_acc_t *acc);
void kvs_metrics_bucket(const kvs_metrics_acc_t *acc, uint32_t b, uint32_t *n_steps,
                        double *out_rel_l2, double *logit_rmse);

#endif
