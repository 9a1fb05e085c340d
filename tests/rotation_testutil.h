/*
** rotation_testutil.h: helpers for the rotation, sketch and value-path
** suites: parsed codec parameters, random vectors, and a codec stream
** driven directly through its vtable.
*/
#ifndef KVS_ROTATION_TESTUTIL_H
#define KVS_ROTATION_TESTUTIL_H

#include "kernels/kernel_impl.h"
#include "kernels/rotation/rotation_impl.h"

#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Parses "name=value,..." against docs into p, defaults filled in; the
** test fails on anything kvs_params_parse rejects. */
static inline void rt_params(const kvs_param_doc_t *docs, const char *text, kvs_params_t *p)
{
    ck_assert_msg(kvs_params_parse("test", docs, text, p) == KVS_OK, "parameters '%s': %s",
                  text ? text : "", kvs_error_message());
}

static inline void rt_random_unit(kvs_rot_rng_t *rng, float *x, uint32_t d)
{
    double n2 = 0.0;

    for (uint32_t j = 0; j < d; j++) {
        x[j] = (float)kvs_rot_rng_normal(rng);
        n2 += (double)x[j] * x[j];
    }
    for (uint32_t j = 0; j < d; j++)
        x[j] = (float)(x[j] / sqrt(n2));
}

static inline void rt_random_normal(kvs_rot_rng_t *rng, float *x, uint32_t n, double scale)
{
    for (uint32_t j = 0; j < n; j++)
        x[j] = (float)(scale * kvs_rot_rng_normal(rng));
}

static inline kvs_kernel_dims_t rt_dims(uint32_t d, uint32_t group, uint64_t seed)
{
    kvs_kernel_dims_t dims = {d, group, 1, 1, 0, 0, seed};

    return dims;
}

static inline double rt_dot(const float *a, const float *b, uint32_t d)
{
    double s = 0.0;

    for (uint32_t j = 0; j < d; j++)
        s += (double)a[j] * b[j];
    return s;
}

/* Creates a codec stream with the given parameters and appends n vectors
** (n, d), then signals the end of the prompt. */
static inline void *rt_stream(const kvs_codec_i *codec, const char *params,
                              const kvs_kernel_dims_t *dims, const float *x, uint32_t n,
                              int end_prefill)
{
    kvs_params_t p;
    void *state = NULL;

    rt_params(codec->params, params, &p);
    if (codec->check)
        ck_assert_int_eq(codec->check(&p, dims), KVS_OK);
    ck_assert_int_eq(codec->create(&p, dims, &state), KVS_OK);
    for (uint32_t t = 0; t < n; t++)
        ck_assert_int_eq(codec->append(state, x + (size_t)t * dims->head_dim, NULL), KVS_OK);
    if (end_prefill && codec->end_prefill)
        ck_assert_int_eq(codec->end_prefill(state), KVS_OK);
    return state;
}

#endif
