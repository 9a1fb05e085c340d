/* fit.c: min-max and HQQ group fits for affine quantization. */
#include "fit.h"

#include <math.h>
#include <stdlib.h>

static void group_range(const float *x, uint32_t len, float *mn, float *mx)
{
    float lo = x[0], hi = x[0];

    for (uint32_t i = 1; i < len; i++) {
        lo = x[i] < lo ? x[i] : lo;
        hi = x[i] > hi ? x[i] : hi;
    }
    *mn = lo;
    *mx = hi;
}

static uint8_t clamp_code(float v, float qmax)
{
    v = rintf(v);  /* half to even, as torch.round */
    if (!(v > 0.0f))
        return 0;
    return (uint8_t)(v > qmax ? qmax : v);
}

static void fit_minmax(uint32_t bits, kvs_fp_e fmt, const float *x, uint32_t len, uint8_t *codes,
                       float *pa, float *pb)
{
    float qmax = (float)((1u << bits) - 1u);
    float mn, mx;

    group_range(x, len, &mn, &mx);
    float m = kvs_fp_round_dir(fmt, mn, -1);
    float s = kvs_fp_round_dir(fmt, (mx - m) / qmax, +1);
    for (uint32_t i = 0; i < len; i++)
        codes[i] = s > 0.0f ? clamp_code((x[i] - m) / s, qmax) : 0;
    *pa = s;
    *pb = m;
}

/* HQQ's shrinkage operator for the lp norm:
** sign(x) * max(|x| - |x|^(p-1) / beta, 0). */
static float shrink_lp(float x, float beta, float p)
{
    float a = fabsf(x);

    if (a == 0.0f)
        return 0.0f;
    float r = a - powf(a, p - 1.0f) / beta;
    return r > 0.0f ? copysignf(r, x) : 0.0f;
}

/* The proximal loop over all groups of one call; scale_inv and zero are
** per group and zero is updated in place. Follows
** optimize_weights_proximal_legacy, including its early stop, which keeps
** the zero point from the first iteration whose error did not improve. */
static void hqq_prox(const kvs_hqq_opts_t *o, float qmax, const float *x, uint32_t n_groups,
                     uint32_t len, const float *scale_inv, float *zero)
{
    double best = 1e4;
    float beta = (float)o->beta;

    for (uint32_t it = 0; it < o->iters; it++) {
        double err_sum = 0.0;
        for (uint32_t g = 0; g < n_groups; g++) {
            const float *xg = x + (size_t)g * len;
            float si = scale_inv[g], z = zero[g];
            double zsum = 0.0;
            for (uint32_t i = 0; i < len; i++) {
                float wq = (float)clamp_code(xg[i] * si + z, qmax);
                float wr = (wq - z) / si;
                float we = shrink_lp(xg[i] - wr, beta, (float)o->lp);
                zsum += wq - (xg[i] - we) * si;
                err_sum += fabsf(xg[i] - wr);
            }
            zero[g] = (float)(zsum / len);
        }
        beta *= (float)o->kappa;
        double err = err_sum / ((double)n_groups * len);
        if (err < best)
            best = err;
        else
            break;
    }
}

int kvs_fit_groups(kvs_fit_e fit, const kvs_hqq_opts_t *hqq, uint32_t bits, kvs_fp_e fmt,
                   const float *x, uint32_t n_groups, uint32_t len, uint8_t *codes, float *pa,
                   float *pb)
{
    float qmax = (float)((1u << bits) - 1u);

    if (fit == KVS_FIT_MINMAX) {
        for (uint32_t g = 0; g < n_groups; g++)
            fit_minmax(bits, fmt, x + (size_t)g * len, len, codes + (size_t)g * len, pa + g,
                       pb + g);
        return 0;
    }

    /* HQQ: scale_inv and zero in pa and pb first, in F32. */
    for (uint32_t g = 0; g < n_groups; g++) {
        float mn, mx;
        group_range(x + (size_t)g * len, len, &mn, &mx);
        float si = qmax / (mx - mn);  /* +inf when max == min, then clamped */
        pa[g] = si > 2e4f ? 2e4f : si;
        pb[g] = -mn * pa[g];
    }
    if (fit == KVS_FIT_HQQ_PROX && hqq && hqq->iters > 0) {
        float *si = malloc((size_t)n_groups * sizeof *si);
        if (!si)
            return -1;
        for (uint32_t g = 0; g < n_groups; g++)
            si[g] = pa[g];
        hqq_prox(hqq, qmax, x, n_groups, len, si, pb);
        free(si);
    }
    for (uint32_t g = 0; g < n_groups; g++) {
        const float *xg = x + (size_t)g * len;
        for (uint32_t i = 0; i < len; i++)
            codes[(size_t)g * len + i] = clamp_code(xg[i] * pa[g] + pb[g], qmax);
        pa[g] = kvs_fp_round(fmt, 1.0f / pa[g]);
        pb[g] = kvs_fp_round(fmt, pb[g]);
    }
    return 0;
}
