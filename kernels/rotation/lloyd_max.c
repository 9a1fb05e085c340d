/*
** lloyd_max.c: optimal scalar quantizers for a known density.
**
** TurboQuant (Zandieh et al., arXiv 2504.19874) quantizes each coordinate
** of a randomly rotated unit vector with the Lloyd-Max codebook of the
** coordinate density f(x) ~ (1 - x^2)^((d-3)/2) on [-1, 1], which tends to
** N(0, 1/d). PolarQuant uses the same algorithm on its angle densities.
** The codebooks are computed here by the algorithm, not tabulated.
*/
#include "rotation_impl.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

/* Grid cells for the cumulative tables: the density is taken as constant
** inside a cell, so integrals between arbitrary points are exact for that
** piecewise-constant density and within O(h^2) of the true one. */
#define KVS_LLOYD_CELLS 65536
#define KVS_LLOYD_MAX_ITER 200000

typedef struct cumulative {
    double lo, h;
    const double *f;   /* (cells) density at cell midpoints */
    const double *m0;  /* (cells + 1) integral of f from lo to the node */
    const double *m1;  /* integral of x f */
    const double *m2;  /* integral of x^2 f */
} cumulative_t;

/* Integrals of x^k f from lo to a, k = 0, 1, 2. */
static void moments_at(const cumulative_t *c, double a, double out[3])
{
    double pos = (a - c->lo) / c->h;
    long i = (long)floor(pos);
    double x0, f;

    if (i < 0) {
        out[0] = out[1] = out[2] = 0.0;
        return;
    }
    if (i >= KVS_LLOYD_CELLS) {
        out[0] = c->m0[KVS_LLOYD_CELLS];
        out[1] = c->m1[KVS_LLOYD_CELLS];
        out[2] = c->m2[KVS_LLOYD_CELLS];
        return;
    }
    x0 = c->lo + (double)i * c->h;
    f = c->f[i];
    out[0] = c->m0[i] + f * (a - x0);
    out[1] = c->m1[i] + f * (a * a - x0 * x0) / 2.0;
    out[2] = c->m2[i] + f * (a * a * a - x0 * x0 * x0) / 3.0;
}

/* Smallest a with F(a) >= target, by bisection on the monotone table. */
static double quantile(const cumulative_t *c, double target)
{
    double a = c->lo;
    double b = c->lo + c->h * KVS_LLOYD_CELLS;

    for (int it = 0; it < 100; it++) {
        double mid = 0.5 * (a + b);
        double m[3];

        moments_at(c, mid, m);
        if (m[0] < target)
            a = mid;
        else
            b = mid;
    }
    return 0.5 * (a + b);
}

kvs_status_e kvs_rot_lloyd_max(kvs_density_fn pdf, const void *ctx, double lo, double hi,
                           uint32_t levels, double *centroids, double *mse)
{
    double *f = malloc(KVS_LLOYD_CELLS * sizeof *f);
    double *m0 = malloc((KVS_LLOYD_CELLS + 1) * sizeof *m0);
    double *m1 = malloc((KVS_LLOYD_CELLS + 1) * sizeof *m1);
    double *m2 = malloc((KVS_LLOYD_CELLS + 1) * sizeof *m2);
    double *bounds = malloc((levels + 1) * sizeof *bounds);
    cumulative_t cum;
    double total, err = 0.0;
    kvs_status_e rc = KVS_OK;

    if (!f || !m0 || !m1 || !m2 || !bounds) {
        rc = kvs_fail(KVS_ERR_NOMEM, "out of memory for a %u-level Lloyd-Max codebook", levels);
        goto done;
    }
    if (!(hi > lo) || levels < 1) {
        rc = kvs_fail(KVS_ERR_INTERNAL, "Lloyd-Max: empty interval [%g, %g] or %u levels", lo,
                      hi, levels);
        goto done;
    }

    /* Cumulative moment tables. */
    cum.lo = lo;
    cum.h = (hi - lo) / KVS_LLOYD_CELLS;
    cum.f = f;
    cum.m0 = m0;
    cum.m1 = m1;
    cum.m2 = m2;
    m0[0] = m1[0] = m2[0] = 0.0;
    for (long i = 0; i < KVS_LLOYD_CELLS; i++) {
        double x0 = lo + (double)i * cum.h;
        double x1 = x0 + cum.h;

        f[i] = pdf(0.5 * (x0 + x1), ctx);
        m0[i + 1] = m0[i] + f[i] * cum.h;
        m1[i + 1] = m1[i] + f[i] * (x1 * x1 - x0 * x0) / 2.0;
        m2[i + 1] = m2[i] + f[i] * (x1 * x1 * x1 - x0 * x0 * x0) / 3.0;
    }
    total = m0[KVS_LLOYD_CELLS];
    if (!(total > 0.0) || !isfinite(total)) {
        rc = kvs_fail(KVS_ERR_INTERNAL, "Lloyd-Max: density integrates to %g on [%g, %g]",
                      total, lo, hi);
        goto done;
    }

    /* Start from the quantiles at (k + 1/2) / levels, then alternate the two
    ** optimality conditions until the centroids stop moving. */
    for (uint32_t k = 0; k < levels; k++)
        centroids[k] = quantile(&cum, total * (k + 0.5) / levels);
    bounds[0] = lo;
    bounds[levels] = hi;
    for (int it = 0; it < KVS_LLOYD_MAX_ITER; it++) {
        double moved = 0.0;

        for (uint32_t k = 1; k < levels; k++)
            bounds[k] = 0.5 * (centroids[k - 1] + centroids[k]);
        for (uint32_t k = 0; k < levels; k++) {
            double a[3], b[3], mass, c;

            moments_at(&cum, bounds[k], a);
            moments_at(&cum, bounds[k + 1], b);
            mass = b[0] - a[0];
            if (mass <= 0.0)
                continue; /* a cell without mass keeps its centroid */
            c = (b[1] - a[1]) / mass;
            moved = fmax(moved, fabs(c - centroids[k]));
            centroids[k] = c;
        }
        if (moved < 1e-13 * (hi - lo))
            break;
    }

    for (uint32_t k = 1; k < levels; k++)
        bounds[k] = 0.5 * (centroids[k - 1] + centroids[k]);
    for (uint32_t k = 0; k < levels; k++) {
        double a[3], b[3], c = centroids[k];

        moments_at(&cum, bounds[k], a);
        moments_at(&cum, bounds[k + 1], b);
        err += (b[2] - a[2]) - 2.0 * c * (b[1] - a[1]) + c * c * (b[0] - a[0]);
    }
    if (mse)
        *mse = err / total;

done:
    free(f);
    free(m0);
    free(m1);
    free(m2);
    free(bounds);
    return rc;
}

typedef struct coord_ctx {
    double exponent; /* sphere: (d - 3) / 2 */
    double inv_var;  /* gauss: d */
} coord_ctx_t;

static double sphere_pdf(double x, const void *ctx)
{
    const coord_ctx_t *c = ctx;
    double t = 1.0 - x * x;

    return t > 0.0 ? pow(t, c->exponent) : 0.0;
}

static double gauss_pdf(double x, const void *ctx)
{
    const coord_ctx_t *c = ctx;

    return exp(-0.5 * x * x * c->inv_var);
}

static kvs_status_e compute_coord_codebook(kvs_coord_density_e density, uint32_t d,
                                           unsigned bits, double *centroids, double *mse)
{
    coord_ctx_t ctx;

    if (density == KVS_DENSITY_SPHERE) {
        KVS_RETURN_IF(d < 3, KVS_ERR_KERNEL_SPEC,
                      "coordinate codebook: head_dim %u is below 3, where the coordinate "
                      "density of a rotated unit vector is not bounded",
                      d);
        ctx.exponent = 0.5 * ((double)d - 3.0);
        return kvs_rot_lloyd_max(sphere_pdf, &ctx, -1.0, 1.0, 1u << bits, centroids, mse);
    }
    KVS_RETURN_IF(d < 1, KVS_ERR_KERNEL_SPEC, "coordinate codebook: head_dim 0 is invalid");
    ctx.inv_var = (double)d;
    {
        double span = 12.0 / sqrt((double)d);

        return kvs_rot_lloyd_max(gauss_pdf, &ctx, -span, span, 1u << bits, centroids, mse);
    }
}

/* Every stream of a run requests the same few (density, d, bits) codebooks,
** and one costs a few milliseconds, so results are kept for the process. */
#define CODEBOOK_CACHE_SIZE 64

typedef struct codebook_entry {
    kvs_coord_density_e density;
    uint32_t d;
    unsigned bits;
    double centroids[16];
    double mse;
} codebook_entry_t;

static codebook_entry_t codebook_cache[CODEBOOK_CACHE_SIZE];
static int codebook_cache_n;
static pthread_mutex_t codebook_cache_lock = PTHREAD_MUTEX_INITIALIZER;

kvs_status_e kvs_rot_coord_codebook(kvs_coord_density_e density, uint32_t d, unsigned bits,
                                double *centroids, double *mse)
{
    double c[256], err;
    kvs_status_e rc;

    KVS_RETURN_IF(bits < 1 || bits > 8, KVS_ERR_INTERNAL, "codebook bits %u outside 1..8",
                  bits);
    pthread_mutex_lock(&codebook_cache_lock);
    for (int i = 0; i < codebook_cache_n; i++) {
        codebook_entry_t *e = &codebook_cache[i];

        if (e->density == density && e->d == d && e->bits == bits) {
            memcpy(centroids, e->centroids, ((size_t)1 << bits) * sizeof *centroids);
            if (mse)
                *mse = e->mse;
            pthread_mutex_unlock(&codebook_cache_lock);
            return KVS_OK;
        }
    }
    pthread_mutex_unlock(&codebook_cache_lock);

    rc = compute_coord_codebook(density, d, bits, c, &err);
    if (rc != KVS_OK)
        return rc;
    memcpy(centroids, c, ((size_t)1 << bits) * sizeof *centroids);
    if (mse)
        *mse = err;

    pthread_mutex_lock(&codebook_cache_lock);
    if (bits <= 4 && codebook_cache_n < CODEBOOK_CACHE_SIZE) {
        codebook_entry_t *e = &codebook_cache[codebook_cache_n++];

        e->density = density;
        e->d = d;
        e->bits = bits;
        memcpy(e->centroids, c, ((size_t)1 << bits) * sizeof *c);
        e->mse = err;
    }
    pthread_mutex_unlock(&codebook_cache_lock);
    return KVS_OK;
}
