/*
** perf_rotation_quality.c: unit-level quality figures of the rotation and
** sketch codecs on random vectors in d = 64, printed as tables:
**   - TurboQuant-MSE distortion E|x - xhat|^2 of unit vectors per bit width
**     and rotation, next to the bounds 4^-b and (sqrt(3) pi / 2) 4^-b;
**   - bias and variance of inner-product estimates over independent seeds
**     (TurboQuant-MSE, TurboQuant-prod, QJL);
**   - PolarQuant's relative squared error.
**
** usage: perf_rotation_quality [N_VECTORS] [N_SEEDS]
*/
#include "kernels/kernel_impl.h"
#include "kernels/rotation/rotation_impl.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define D 64

static void random_unit(kvs_rot_rng_t *rng, float *x)
{
    double n2 = 0.0;

    for (uint32_t j = 0; j < D; j++) {
        x[j] = (float)kvs_rot_rng_normal(rng);
        n2 += (double)x[j] * x[j];
    }
    for (uint32_t j = 0; j < D; j++)
        x[j] = (float)(x[j] / sqrt(n2));
}

static double mse_distortion(unsigned bits, int rotation, uint32_t n_vec)
{
    kvs_tq_config_t cfg = {D, bits, 0, 0, rotation, 77};
    kvs_tq_t *tq;
    float *x = malloc((size_t)n_vec * D * sizeof *x), xhat[D];
    kvs_rot_rng_t rng;
    double total = 0.0;

    kvs_rot_rng_init(&rng, 1000 + bits);
    if (kvs_tq_create(&cfg, &tq) != KVS_OK)
        return NAN;
    for (uint32_t t = 0; t < n_vec; t++) {
        random_unit(&rng, x + (size_t)t * D);
        kvs_tq_append(tq, x + (size_t)t * D);
    }
    for (uint32_t t = 0; t < n_vec; t++) {
        kvs_tq_decode(tq, t, xhat);
        for (uint32_t j = 0; j < D; j++)
            total += pow(xhat[j] - x[(size_t)t * D + j], 2);
    }
    kvs_tq_destroy(tq);
    free(x);
    return total / n_vec;
}

/* Mean and variance of the error of <q, k> estimates, |q| = |k| = 1, over
** n_seeds codec draws. */
static void estimate(const kvs_codec_i *codec, const char *bits_text, uint32_t n_seeds,
                     double *mean, double *var, double *truth)
{
    float q[D], k[D];
    kvs_rot_rng_t rng;
    double s = 0.0, s2 = 0.0;
    const uint8_t attend = 1;
    kvs_params_t p;

    kvs_rot_rng_init(&rng, 4242);
    random_unit(&rng, k);
    random_unit(&rng, q);
    for (uint32_t j = 0; j < D; j++)
        k[j] = 0.6f * k[j] + 0.8f * q[j]; /* <q, k> near 0.8 */
    *truth = 0.0;
    for (uint32_t j = 0; j < D; j++)
        *truth += (double)q[j] * k[j];
    kvs_params_parse(codec->name, codec->params, bits_text, &p);
    for (uint32_t i = 0; i < n_seeds; i++) {
        kvs_kernel_dims_t dims = {D, 1, 1, 1, 0, 0, 1 + i};
        void *st;
        float logit;
        double e;

        codec->create(&p, &dims, &st);
        codec->append(st, k, k);
        if (codec->end_prefill)
            codec->end_prefill(st);
        codec->logits(st, q, 1, &attend, 1, &logit);
        e = logit - *truth;
        s += e;
        s2 += e * e;
        codec->destroy(st);
    }
    *mean = s / n_seeds;
    *var = s2 / n_seeds - (*mean) * (*mean);
}

/* Relative squared error sum |x - xhat|^2 / sum |x|^2 of PolarQuant on
** Gaussian vectors, decoded through the logits hook with unit queries. */
static double polar_error(const char *params, uint32_t n_vec)
{
    const kvs_codec_i *codec = &kvs_codec_polarquant;
    kvs_kernel_dims_t dims = {D, 1, 1, 1, 0, 0, 2};
    float *x = malloc((size_t)n_vec * D * sizeof *x), *dots = malloc(n_vec * sizeof *dots);
    uint8_t *attend = malloc(n_vec);
    kvs_rot_rng_t rng;
    kvs_params_t p;
    double err = 0.0, ref = 0.0;
    void *st;

    kvs_rot_rng_init(&rng, 3);
    for (size_t i = 0; i < (size_t)n_vec * D; i++)
        x[i] = (float)kvs_rot_rng_normal(&rng);
    memset(attend, 1, n_vec);
    kvs_params_parse(codec->name, codec->params, params, &p);
    codec->create(&p, &dims, &st);
    for (uint32_t t = 0; t < n_vec; t++)
        codec->append(st, x + (size_t)t * D, x + (size_t)t * D);
    for (uint32_t j = 0; j < D; j++) {
        float e[D] = {0};

        e[j] = 1.0f;
        codec->logits(st, e, 1, attend, n_vec, dots);
        for (uint32_t t = 0; t < n_vec; t++) {
            err += pow(dots[t] - x[(size_t)t * D + j], 2);
            ref += pow(x[(size_t)t * D + j], 2);
        }
    }
    codec->destroy(st);
    free(x);
    free(dots);
    free(attend);
    return err / ref;
}

/* Stored bits per coordinate, radii included, from the cost hook. */
static double polar_bits(const char *params)
{
    kvs_kernel_dims_t dims = {D, 1, 1, 1, 0, 0, 2};
    kvs_part_cost_t cost;
    kvs_params_t p;

    kvs_params_parse("polarquant", kvs_codec_polarquant.params, params, &p);
    kvs_codec_polarquant.cost(&p, &dims, KVS_CODEC_KEY, 1, &cost);
    return cost.bytes_per_token * 8.0 / D;
}

int main(int argc, char **argv)
{
    uint32_t n_vec = argc > 1 ? (uint32_t)atoi(argv[1]) : 4000;
    uint32_t n_seeds = argc > 2 ? (uint32_t)atoi(argv[2]) : 2000;
    const kvs_codec_i *codecs[] = {&kvs_codec_turboquant_mse, &kvs_codec_turboquant_prod,
                                   &kvs_codec_qjl};

    if (n_vec < 1 || n_seeds < 2) {
        fprintf(stderr, "usage: perf_rotation_quality [N_VECTORS >= 1] [N_SEEDS >= 2]\n");
        return 2;
    }
    printf("TurboQuant-MSE distortion, %u random unit vectors, d = %d\n", n_vec, D);
    printf("%4s %10s %10s %10s %10s\n", "bits", "hadamard", "dense", "4^-b", "upper");
    for (unsigned b = 1; b <= 4; b++)
        printf("%4u %10.5f %10.5f %10.5f %10.5f\n", b,
               mse_distortion(b, KVS_ROTATION_HADAMARD, n_vec),
               mse_distortion(b, KVS_ROTATION_DENSE, n_vec), pow(4.0, -(double)b),
               sqrt(3.0) * M_PI / 2.0 * pow(4.0, -(double)b));

    printf("\ninner-product estimates <q, k>, |q| = 1, |k| about 1, %u seeds (bias in standard errors)\n",
           n_seeds);
    printf("%-16s %4s %10s %10s %8s %10s\n", "codec", "bits", "truth", "bias", "bias/se",
           "variance");
    for (size_t c = 0; c < 3; c++) {
        for (unsigned b = 1; b <= 4; b++) {
            char text[32];
            double mean, var, truth;

            snprintf(text, sizeof text, "bits=%u", b);
            estimate(codecs[c], text, n_seeds, &mean, &var, &truth);
            printf("%-16s %4u %10.5f %10.5f %8.2f %10.6f\n", codecs[c]->name, b, truth, mean,
                   mean / sqrt(var / n_seeds), var);
        }
    }

    printf("\nPolarQuant relative squared error, %u Gaussian vectors, d = %d\n", n_vec, D);
    printf("%-28s %10s %10s\n", "parameters", "bits/coord", "rel. error");
    printf("%-28s %10.3f %10.5f\n", "defaults (4 levels, 4/2 bits)", polar_bits(NULL),
           polar_error(NULL, n_vec));
    printf("%-28s %10.3f %10.5f\n", "bits1=3,bits_hi=1", polar_bits("bits1=3,bits_hi=1"),
           polar_error("bits1=3,bits_hi=1", n_vec));
    printf("%-28s %10.3f %10.5f\n", "bits1=6,bits_hi=4", polar_bits("bits1=6,bits_hi=4"),
           polar_error("bits1=6,bits_hi=4", n_vec));
    return 0;
}
