/* attention.c: exact attention in double precision. */
#include "attention.h"

#include <math.h>

void kvs_exact_attention(const float *q, const float *keys, const float *values, uint32_t n,
                         uint32_t d, uint32_t stride, float *logits, float *weights, float *out)
{
    double scale = 1.0 / sqrt((double)d);
    float max = -INFINITY;
    double sum = 0;

    for (uint32_t t = 0; t < n; t++) {
        const float *k = keys + (uint64_t)t * stride;
        double dot = 0;
        for (uint32_t j = 0; j < d; j++)
            dot += (double)q[j] * k[j];
        logits[t] = (float)(dot * scale);
        if (logits[t] > max)
            max = logits[t];
    }

    /* Weights from the float logits, so that a kernel that reproduces the
    ** logits exactly also reproduces the weights. */
    for (uint32_t t = 0; t < n; t++)
        sum += exp((double)logits[t] - max);
    for (uint32_t t = 0; t < n; t++)
        weights[t] = (float)(exp((double)logits[t] - max) / sum);

    for (uint32_t j = 0; j < d; j++) {
        double o = 0;
        for (uint32_t t = 0; t < n; t++)
            o += (double)weights[t] * values[(uint64_t)t * stride + j];
        out[j] = (float)o;
    }
}
