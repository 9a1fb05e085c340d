/*
** rotation.c: the random rotations Pi that spread a vector's energy evenly
** over coordinates before scalar quantization.
**
** hadamard: Pi = H D / sqrt(d), D a diagonal of random signs and H the
** Walsh-Hadamard matrix, applied in O(d log d) by the fast transform. One
** H D round, as in the subsampled randomized Hadamard transform; it is
** orthogonal but not Haar-distributed, so coordinate statistics match the
** uniform-rotation analysis only approximately at small d.
**
** dense: Pi = Q from the QR decomposition of an i.i.d. N(0, 1) matrix with
** R's diagonal made positive, which is Haar-distributed (the setup of
** TurboQuant, Zandieh et al., arXiv 2504.19874). O(d^2) per apply; the
** reference that the Hadamard results are compared with.
*/
#include "rotation_impl.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

struct kvs_rotation {
    kvs_rotation_kind_e kind;
    uint32_t d;
    float *signs;   /* hadamard: D, +-1 */
    float *matrix;  /* dense: Pi, (d, d) row-major */
    float scale;    /* hadamard: 1 / sqrt(d) */
};

static int is_power_of_two(uint32_t d)
{
    return d && (d & (d - 1)) == 0;
}

kvs_status_e kvs_rotation_check(kvs_rotation_kind_e kind, uint32_t d, const char *codec)
{
    KVS_RETURN_IF(d == 0, KVS_ERR_KERNEL_SPEC, "%s: head_dim 0 is invalid", codec);
    KVS_RETURN_IF(kind == KVS_ROTATION_HADAMARD && !is_power_of_two(d), KVS_ERR_KERNEL_SPEC,
                  "%s: rotation=hadamard needs a power-of-two dimension, got %u; "
                  "use rotation=dense",
                  codec, d);
    return KVS_OK;
}

void kvs_rot_fwht(float *x, uint32_t d)
{
    for (uint32_t h = 1; h < d; h *= 2) {
        for (uint32_t i = 0; i < d; i += 2 * h) {
            for (uint32_t j = i; j < i + h; j++) {
                float a = x[j];
                float b = x[j + h];

                x[j] = a + b;
                x[j + h] = a - b;
            }
        }
    }
}

/* Modified Gram-Schmidt on the columns of a (d, d) matrix in double, run
** twice because one pass loses orthogonality in proportion to the
** condition number of the Gaussian draw. Columns come out with a positive
** projection on their original direction, i.e. R has a positive diagonal. */
static void orthonormalize_columns(double *a, uint32_t d)
{
    for (int pass = 0; pass < 2; pass++) {
        for (uint32_t j = 0; j < d; j++) {
            double norm = 0.0;

            for (uint32_t k = 0; k < j; k++) {
                double dot = 0.0;

                for (uint32_t i = 0; i < d; i++)
                    dot += a[i * d + k] * a[i * d + j];
                for (uint32_t i = 0; i < d; i++)
                    a[i * d + j] -= dot * a[i * d + k];
            }
            for (uint32_t i = 0; i < d; i++)
                norm += a[i * d + j] * a[i * d + j];
            norm = sqrt(norm);
            for (uint32_t i = 0; i < d; i++)
                a[i * d + j] /= norm;
        }
    }
}

kvs_status_e kvs_rotation_create(kvs_rotation_kind_e kind, uint32_t d, uint64_t seed,
                                 kvs_rotation_t **out)
{
    kvs_rotation_t *rot;
    kvs_rot_rng_t rng;

    *out = NULL;
    KVS_FORWARD(kvs_rotation_check(kind, d, "rotation"));
    rot = calloc(1, sizeof *rot);
    KVS_RETURN_IF(!rot, KVS_ERR_NOMEM, "out of memory for a %u-dimensional rotation", d);
    rot->kind = kind;
    rot->d = d;
    kvs_rot_rng_init(&rng, seed);

    if (kind == KVS_ROTATION_HADAMARD) {
        rot->signs = malloc(d * sizeof *rot->signs);
        if (!rot->signs) {
            kvs_rotation_destroy(rot);
            return kvs_fail(KVS_ERR_NOMEM, "out of memory for a %u-dimensional rotation", d);
        }
        for (uint32_t i = 0; i < d; i++)
            rot->signs[i] = (kvs_rot_rng_next(&rng) >> 63) ? -1.0f : 1.0f;
        rot->scale = 1.0f / sqrtf((float)d);
    } else {
        double *a = malloc((size_t)d * d * sizeof *a);

        rot->matrix = malloc((size_t)d * d * sizeof *rot->matrix);
        if (!a || !rot->matrix) {
            free(a);
            kvs_rotation_destroy(rot);
            return kvs_fail(KVS_ERR_NOMEM, "out of memory for a %u-dimensional rotation", d);
        }
        for (size_t i = 0; i < (size_t)d * d; i++)
            a[i] = kvs_rot_rng_normal(&rng);
        orthonormalize_columns(a, d);
        for (size_t i = 0; i < (size_t)d * d; i++)
            rot->matrix[i] = (float)a[i];
        free(a);
    }
    *out = rot;
    return KVS_OK;
}

void kvs_rotation_destroy(kvs_rotation_t *rot)
{
    if (!rot)
        return;
    free(rot->signs);
    free(rot->matrix);
    free(rot);
}

void kvs_rotation_apply(const kvs_rotation_t *rot, const float *x, float *y)
{
    uint32_t d = rot->d;

    if (rot->kind == KVS_ROTATION_HADAMARD) {
        for (uint32_t i = 0; i < d; i++)
            y[i] = x[i] * rot->signs[i];
        kvs_rot_fwht(y, d);
        for (uint32_t i = 0; i < d; i++)
            y[i] *= rot->scale;
        return;
    }
    for (uint32_t i = 0; i < d; i++) {
        const float *row = rot->matrix + (size_t)i * d;
        float s = 0.0f;

        for (uint32_t j = 0; j < d; j++)
            s += row[j] * x[j];
        y[i] = s;
    }
}

void kvs_rotation_apply_t(const kvs_rotation_t *rot, const float *y, float *x)
{
    uint32_t d = rot->d;

    if (rot->kind == KVS_ROTATION_HADAMARD) {
        /* H is symmetric, so Pi^T = D H / sqrt(d). */
        memcpy(x, y, d * sizeof *x);
        kvs_rot_fwht(x, d);
        for (uint32_t i = 0; i < d; i++)
            x[i] *= rot->scale * rot->signs[i];
        return;
    }
    memset(x, 0, d * sizeof *x);
    for (uint32_t i = 0; i < d; i++) {
        const float *row = rot->matrix + (size_t)i * d;

        for (uint32_t j = 0; j < d; j++)
            x[j] += row[j] * y[i];
    }
}

uint64_t kvs_rotation_bytes(kvs_rotation_kind_e kind, uint32_t d)
{
    if (kind == KVS_ROTATION_HADAMARD)
        return kvs_rot_packed_bytes(d, 1);
    return (uint64_t)d * d * sizeof(float);
}

double kvs_rotation_flops(kvs_rotation_kind_e kind, uint32_t d)
{
    if (kind == KVS_ROTATION_HADAMARD) {
        double log2d = 0.0;

        for (uint32_t h = 1; h < d; h *= 2)
            log2d += 1.0;
        return (double)d * log2d + 2.0 * d;
    }
    return 2.0 * (double)d * d;
}

/* ---- Gaussian sketch -------------------------------------------------- */

kvs_status_e kvs_rot_sketch_create(uint32_t m, uint32_t d, uint64_t seed, kvs_rot_sketch_t **out)
{
    kvs_rot_sketch_t *sk = calloc(1, sizeof *sk);
    kvs_rot_rng_t rng;

    *out = NULL;
    KVS_RETURN_IF(!sk, KVS_ERR_NOMEM, "out of memory for a %ux%u sketch", m, d);
    sk->m = m;
    sk->d = d;
    sk->s = malloc((size_t)m * d * sizeof *sk->s);
    if (!sk->s) {
        free(sk);
        return kvs_fail(KVS_ERR_NOMEM, "out of memory for a %ux%u sketch", m, d);
    }
    kvs_rot_rng_init(&rng, seed);
    for (size_t i = 0; i < (size_t)m * d; i++)
        sk->s[i] = (float)kvs_rot_rng_normal(&rng);
    *out = sk;
    return KVS_OK;
}

void kvs_rot_sketch_destroy(kvs_rot_sketch_t *sk)
{
    if (!sk)
        return;
    free(sk->s);
    free(sk);
}

void kvs_rot_sketch_apply(const kvs_rot_sketch_t *sk, const float *x, float *y)
{
    for (uint32_t i = 0; i < sk->m; i++) {
        const float *row = sk->s + (size_t)i * sk->d;
        float s = 0.0f;

        for (uint32_t j = 0; j < sk->d; j++)
            s += row[j] * x[j];
        y[i] = s;
    }
}

void kvs_rot_sketch_apply_t_add(const kvs_rot_sketch_t *sk, const float *y, float scale, float *x)
{
    for (uint32_t i = 0; i < sk->m; i++) {
        const float *row = sk->s + (size_t)i * sk->d;
        float c = scale * y[i];

        for (uint32_t j = 0; j < sk->d; j++)
            x[j] += c * row[j];
    }
}
