/*
** jacobi.c: symmetric eigen-decomposition for the low-rank value basis.
**
** Debian 12's libopenblas-dev ships LAPACK inside libopenblas but no
** lapacke.h, and calling the Fortran dsyev_ directly would tie the build to
** one Fortran ABI. The matrices here are d x d covariances with d <= 256,
** where cyclic Jacobi is accurate to machine precision and fast enough.
*/
#include "value_impl.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define JACOBI_MAX_SWEEPS 100

kvs_status_e kvs_val_symmetric_eigen(double *a, uint32_t n, double *values, double *vecs)
{
    uint32_t *order;

    for (uint32_t i = 0; i < n; i++)
        for (uint32_t j = 0; j < n; j++)
            vecs[i * n + j] = i == j ? 1.0 : 0.0;

    for (int sweep = 0; sweep < JACOBI_MAX_SWEEPS; sweep++) {
        double off = 0.0, diag = 0.0;

        for (uint32_t i = 0; i < n; i++) {
            diag += a[i * n + i] * a[i * n + i];
            for (uint32_t j = i + 1; j < n; j++)
                off += a[i * n + j] * a[i * n + j];
        }
        if (off <= 1e-30 * diag || off == 0.0)
            break;

        for (uint32_t p = 0; p < n; p++) {
            for (uint32_t q = p + 1; q < n; q++) {
                double apq = a[p * n + q];
                double theta, t, c, s;

                if (fabs(apq) < 1e-300)
                    continue;
                /* The classical Jacobi rotation that zeroes a[p][q]: t = tan
                ** of the angle is the smaller root of t^2 + 2 theta t - 1 = 0,
                ** which keeps the rotation below 45 degrees and stable. */
                theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
                t = (theta >= 0 ? 1.0 : -1.0) / (fabs(theta) + sqrt(theta * theta + 1.0));
                c = 1.0 / sqrt(t * t + 1.0);
                s = t * c;

                for (uint32_t k = 0; k < n; k++) {
                    double akp = a[k * n + p], akq = a[k * n + q];

                    a[k * n + p] = c * akp - s * akq;
                    a[k * n + q] = s * akp + c * akq;
                }
                for (uint32_t k = 0; k < n; k++) {
                    double apk = a[p * n + k], aqk = a[q * n + k];

                    a[p * n + k] = c * apk - s * aqk;
                    a[q * n + k] = s * apk + c * aqk;
                }
                for (uint32_t k = 0; k < n; k++) {
                    double vkp = vecs[k * n + p], vkq = vecs[k * n + q];

                    vecs[k * n + p] = c * vkp - s * vkq;
                    vecs[k * n + q] = s * vkp + c * vkq;
                }
            }
        }
    }

    /* Sort columns by descending eigenvalue. */
    order = malloc(n * sizeof *order);
    KVS_RETURN_IF(!order, KVS_ERR_NOMEM, "out of memory sorting %u eigenvalues", n);
    for (uint32_t i = 0; i < n; i++)
        order[i] = i;
    for (uint32_t i = 1; i < n; i++) {
        uint32_t key = order[i];
        uint32_t j = i;

        while (j > 0 && a[order[j - 1] * n + order[j - 1]] < a[key * n + key]) {
            order[j] = order[j - 1];
            j--;
        }
        order[j] = key;
    }
    {
        double *sorted = malloc((size_t)n * n * sizeof *sorted);

        if (!sorted) {
            free(order);
            return kvs_fail(KVS_ERR_NOMEM, "out of memory sorting %u eigenvectors", n);
        }
        for (uint32_t c = 0; c < n; c++) {
            values[c] = a[order[c] * n + order[c]];
            for (uint32_t r = 0; r < n; r++)
                sorted[r * n + c] = vecs[r * n + order[c]];
        }
        memcpy(vecs, sorted, (size_t)n * n * sizeof *sorted);
        free(sorted);
    }
    free(order);
    return KVS_OK;
}

/* ---- dense value store ------------------------------------------------ */

kvs_status_e kvs_val_store_init(kvs_val_store_t *s, uint32_t d)
{
    memset(s, 0, sizeof *s);
    s->d = d;
    s->sum = calloc(d, sizeof *s->sum);
    KVS_RETURN_IF(!s->sum, KVS_ERR_NOMEM, "out of memory for a value store");
    return KVS_OK;
}

kvs_status_e kvs_val_store_append(kvs_val_store_t *s, const float *x)
{
    for (uint32_t j = 0; j < s->d; j++)
        KVS_RETURN_IF(!isfinite(x[j]), KVS_ERR_NONFINITE,
                      "value %u has a non-finite coordinate %u; check the trace for NaN or Inf",
                      s->n, j);
    if (s->n == s->cap) {
        uint32_t cap = s->cap ? 2 * s->cap : 64;
        float *grown = realloc(s->v, (size_t)cap * s->d * sizeof *grown);

        KVS_RETURN_IF(!grown, KVS_ERR_NOMEM, "out of memory after %u values", s->n);
        s->v = grown;
        s->cap = cap;
    }
    memcpy(s->v + (size_t)s->n * s->d, x, s->d * sizeof *x);
    for (uint32_t j = 0; j < s->d; j++)
        s->sum[j] += x[j];
    s->n++;
    return KVS_OK;
}

void kvs_val_store_free(kvs_val_store_t *s)
{
    free(s->v);
    free(s->sum);
    s->v = NULL;
    s->sum = NULL;
    s->n = s->cap = 0;
}
