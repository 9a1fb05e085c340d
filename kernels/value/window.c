/*
** window.c: exact attention sinks and recent window, the middle of the
** context in an inner codec (StreamingLLM's sinks and window, with the
** evicted middle kept compressed instead of dropped). Serves keys (exact
** dot products in the window, the inner codec's logits in the middle) and
** values.
**
** Positions [0, sinks) and the last `recent` positions stay F32. A position
** leaving the recent window is appended to the inner codec, so the inner
** codec contains positions [sinks, sinks + n_inner) in order.
*/
#include "value_impl.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define WINDOW_INNER_CHOICES \
    "turboquant-mse|turboquant-prod|qjl|polarquant|lowrank|affine|hqq|dense"

typedef struct window_codec {
    uint32_t d, sinks, recent;
    float *sink_v;            /* (sinks, d) */
    float *ring;              /* (recent, d) */
    uint32_t n, n_ring, ring_oldest, n_inner;
    const kvs_codec_i *inner;
    void *inner_state;
    float *w_mid;             /* (group, cap) */
    uint32_t cap;
} window_codec_t;

static const kvs_param_doc_t window_params[] = {
    {"sinks", KVS_PARAM_INT, "4", 0, 1e6, NULL, "first positions kept exact (attention sinks)"},
    {"recent", KVS_PARAM_INT, "64", 0, 1e6, NULL, "most recent positions kept exact"},
    {"inner", KVS_PARAM_ENUM, "turboquant-mse", 0, 0, WINDOW_INNER_CHOICES,
     "value codec of the middle positions"},
    {"bits", KVS_PARAM_INT, "3", 1, 16, NULL, "bits parameter of the inner codec, if it has one"},
    {"rank", KVS_PARAM_INT, "16", 1, 4096, NULL, "rank parameter of the inner codec, if it has one"},
    {"group", KVS_PARAM_INT, "0", 0, 4096, NULL,
     "group parameter of the inner codec, if it has one; 0 keeps its default"},
    {NULL, 0, NULL, 0, 0, NULL, NULL},
};

/* The inner codec and its parameters: defaults, then bits, rank and group. */
static kvs_status_e inner_params(const kvs_params_t *p, const kvs_codec_i **inner,
                                 kvs_params_t *ip)
{
    uint32_t choice = (uint32_t)kvs_param_number(p, "inner");
    const char *c = WINDOW_INNER_CHOICES;
    char name[64];
    size_t len;

    for (uint32_t i = 0; i < choice && *c; i++)
        c += strcspn(c, "|") + (c[strcspn(c, "|")] == '|');
    len = strcspn(c, "|");
    KVS_RETURN_IF(len == 0 || len >= sizeof name, KVS_ERR_KERNEL_SPEC,
                  "window: inner codec choice %u is invalid; use one of %s", choice,
                  WINDOW_INNER_CHOICES);
    memcpy(name, c, len);
    name[len] = '\0';
    *inner = kvs_codec_find(name);
    KVS_RETURN_IF(!*inner, KVS_ERR_KERNEL_SPEC, "window: inner codec '%s' is not built in", name);
    KVS_FORWARD(kvs_params_parse((*inner)->name, (*inner)->params, NULL, ip));
    kvs_rot_param_set(ip, "bits", kvs_param_number(p, "bits"));
    kvs_rot_param_set(ip, "rank", kvs_param_number(p, "rank"));
    if (kvs_param_number(p, "group") > 0)
        kvs_rot_param_set(ip, "group", kvs_param_number(p, "group"));
    return KVS_OK;
}

static kvs_status_e window_check(const kvs_params_t *p, const kvs_kernel_dims_t *dims)
{
    const kvs_codec_i *inner;
    kvs_params_t ip;

    KVS_FORWARD(inner_params(p, &inner, &ip));
    KVS_RETURN_IF(!(inner->roles & KVS_CODEC_VALUE), KVS_ERR_KERNEL_SPEC,
                  "window: inner codec '%s' has no value path", inner->name);
    for (uint32_t i = 0; i < ip.n; i++) {
        const kvs_param_doc_t *doc = &ip.docs[i];

        if (doc->type != KVS_PARAM_ENUM)
            KVS_RETURN_IF(ip.number[i] < doc->min || ip.number[i] > doc->max,
                          KVS_ERR_KERNEL_SPEC,
                          "window: %s=%g is outside %g..%g for inner codec '%s'", doc->name,
                          ip.number[i], doc->min, doc->max, inner->name);
    }
    if (inner->check) {
        kvs_status_e rc = inner->check(&ip, dims);

        if (rc != KVS_OK) {
            kvs_error_prefix("window: inner codec '%s' (set bits, rank or group on window)",
                             inner->name);
            return rc;
        }
    }
    return KVS_OK;
}

static void window_destroy(void *state)
{
    window_codec_t *c = state;

    if (!c)
        return;
    if (c->inner)
        c->inner->destroy(c->inner_state);
    free(c->sink_v);
    free(c->ring);
    free(c->w_mid);
    free(c);
}

static kvs_status_e window_create(const kvs_params_t *p, const kvs_kernel_dims_t *dims,
                                  void **state)
{
    window_codec_t *c;
    kvs_params_t ip;
    kvs_status_e rc;

    *state = NULL;
    KVS_FORWARD(window_check(p, dims));
    c = calloc(1, sizeof *c);
    KVS_RETURN_IF(!c, KVS_ERR_NOMEM, "out of memory for a window value codec");
    c->d = dims->head_dim;
    c->sinks = (uint32_t)kvs_param_number(p, "sinks");
    c->recent = (uint32_t)kvs_param_number(p, "recent");
    c->sink_v = malloc(((size_t)c->sinks * c->d + 1) * sizeof *c->sink_v);
    c->ring = malloc(((size_t)c->recent * c->d + 1) * sizeof *c->ring);
    rc = (c->sink_v && c->ring) ? inner_params(p, &c->inner, &ip)
                                : kvs_fail(KVS_ERR_NOMEM, "out of memory for a window codec");
    if (rc == KVS_OK)
        rc = c->inner->create(&ip, dims, &c->inner_state);
    if (rc != KVS_OK) {
        if (!c->inner_state)
            c->inner = NULL;
        window_destroy(c);
        return rc;
    }
    *state = c;
    return KVS_OK;
}

static kvs_status_e window_append(void *state, const float *x, const float *x_pre)
{
    window_codec_t *c = state;
    size_t row = (size_t)c->d * sizeof *x;

    /* Only the key role passes x_pre, so this is where a key window finds
    ** out whether its inner codec can compute logits. */
    KVS_RETURN_IF(x_pre && !c->inner->logits, KVS_ERR_KERNEL_SPEC,
                  "window: inner codec '%s' has no key path; as a key codec use inner="
                  "turboquant-mse, turboquant-prod, qjl, polarquant, affine, hqq or dense",
                  c->inner->name);

    for (uint32_t j = 0; j < c->d; j++)
        KVS_RETURN_IF(!isfinite(x[j]), KVS_ERR_NONFINITE,
                      "window: value %u has a non-finite coordinate %u; check the trace for NaN "
                      "or Inf",
                      c->n, j);
    if (c->n < c->sinks) {
        memcpy(c->sink_v + (size_t)c->n * c->d, x, row);
    } else if (c->recent == 0) {
        KVS_FORWARD(c->inner->append(c->inner_state, x, x_pre));
        c->n_inner++;
    } else if (c->n_ring < c->recent) {
        memcpy(c->ring + (size_t)((c->ring_oldest + c->n_ring) % c->recent) * c->d, x, row);
        c->n_ring++;
    } else {
        /* The oldest recent position moves to the inner codec and its slot
        ** takes the new one. */
        float *slot = c->ring + (size_t)c->ring_oldest * c->d;

        /* NOTE: the inner codec gets the post-RoPE key as its pre-RoPE key
        ** too, because the ring keeps one copy; no inner codec here reads
        ** x_pre. */
        KVS_FORWARD(c->inner->append(c->inner_state, slot, x_pre ? slot : NULL));
        c->n_inner++;
        memcpy(slot, x, row);
        c->ring_oldest = (c->ring_oldest + 1) % c->recent;
    }
    c->n++;
    return KVS_OK;
}

static kvs_status_e window_end_prefill(void *state)
{
    window_codec_t *c = state;

    /* NOTE: a prompt no longer than sinks + recent gives the inner codec no
    ** prompt positions; a prompt-fitted inner codec (lowrank) then fits on
    ** the positions it has at its first step. */
    if (c->inner->end_prefill && c->n_inner > 0)
        return c->inner->end_prefill(c->inner_state);
    return KVS_OK;
}

static const float *exact_value(const window_codec_t *c, uint32_t t)
{
    uint32_t first_recent = c->sinks + c->n_inner;

    if (t < c->sinks)
        return c->sink_v + (size_t)t * c->d;
    return c->ring + (size_t)((c->ring_oldest + (t - first_recent)) % c->recent) * c->d;
}

static void window_output(void *state, const float *w, uint32_t group, const uint8_t *attend,
                          uint32_t n, float *out)
{
    window_codec_t *c = state;
    uint32_t d = c->d, first = c->sinks < n ? c->sinks : n;
    uint32_t n_mid = c->n_inner;

    if (n > c->n)
        n = c->n;
    if (c->sinks + n_mid > n)
        n_mid = n > c->sinks ? n - c->sinks : 0;

    /* Inner part first, because it overwrites its output. */
    if (n_mid > 0) {
        if ((size_t)group * n_mid > c->cap) {
            float *grown = realloc(c->w_mid, (size_t)group * n_mid * sizeof *grown);

            if (!grown) {
                for (uint32_t i = 0; i < group * d; i++)
                    out[i] = NAN; /* NOTE: out of memory in a void hook shows up as NaN */
                return;
            }
            c->w_mid = grown;
            c->cap = group * n_mid;
        }
        for (uint32_t g = 0; g < group; g++)
            memcpy(c->w_mid + (size_t)g * n_mid, w + (size_t)g * n + c->sinks,
                   n_mid * sizeof *w);
        c->inner->output(c->inner_state, c->w_mid, group, attend + c->sinks, n_mid, out);
    } else {
        memset(out, 0, (size_t)group * d * sizeof *out);
    }

    for (uint32_t g = 0; g < group; g++) {
        const float *wg = w + (size_t)g * n;
        float *o = out + (size_t)g * d;

        for (uint32_t t = 0; t < n; t++) {
            const float *v;

            if (t == first)
                t = c->sinks + n_mid; /* skip the middle */
            if (t >= n)
                break;
            if (!attend[t] || wg[t] == 0.0f)
                continue;
            v = exact_value(c, t);
            for (uint32_t j = 0; j < d; j++)
                o[j] += wg[t] * v[j];
        }
    }
}

static void window_logits(void *state, const float *q, uint32_t group, const uint8_t *attend,
                          uint32_t n, float *out)
{
    window_codec_t *c = state;
    uint32_t d = c->d, first = c->sinks < n ? c->sinks : n;
    uint32_t n_mid = c->n_inner;

    if (n > c->n)
        n = c->n;
    if (c->sinks + n_mid > n)
        n_mid = n > c->sinks ? n - c->sinks : 0;

    /* Middle positions from the inner codec, written through a scratch
    ** row per query because the inner codec expects a stride of n_mid. */
    if (n_mid > 0) {
        if ((size_t)group * n_mid > c->cap) {
            float *grown = realloc(c->w_mid, (size_t)group * n_mid * sizeof *grown);

            if (!grown) {
                for (uint32_t i = 0; i < group * n; i++)
                    out[i] = NAN; /* NOTE: out of memory in a void hook shows up as NaN */
                return;
            }
            c->w_mid = grown;
            c->cap = group * n_mid;
        }
        c->inner->logits(c->inner_state, q, group, attend + c->sinks, n_mid, c->w_mid);
        for (uint32_t g = 0; g < group; g++)
            for (uint32_t t = 0; t < n_mid; t++)
                if (attend[c->sinks + t])
                    out[(size_t)g * n + c->sinks + t] = c->w_mid[(size_t)g * n_mid + t];
    }

    for (uint32_t g = 0; g < group; g++) {
        const float *qg = q + (size_t)g * d;

        for (uint32_t t = 0; t < n; t++) {
            const float *k;
            float s = 0.0f;

            if (t == first)
                t = c->sinks + n_mid; /* skip the middle */
            if (t >= n)
                break;
            if (!attend[t])
                continue;
            k = exact_value(c, t);
            for (uint32_t j = 0; j < d; j++)
                s += qg[j] * k[j];
            out[(size_t)g * n + t] = s;
        }
    }
}

static uint64_t window_stored_bytes(const void *state)
{
    const window_codec_t *c = state;
    uint32_t exact = (c->n < c->sinks ? c->n : c->sinks) + c->n_ring;

    return (uint64_t)exact * c->d * sizeof(float) + c->inner->stored_bytes(c->inner_state);
}

static void window_cost(const kvs_params_t *p, const kvs_kernel_dims_t *dims, unsigned role,
                        uint64_t n_context, kvs_part_cost_t *out)
{
    const kvs_codec_i *inner;
    kvs_params_t ip;
    uint64_t window = (uint64_t)kvs_param_number(p, "sinks") + (uint64_t)kvs_param_number(p, "recent");
    uint64_t exact = n_context < window ? n_context : window;
    uint64_t row = (uint64_t)dims->head_dim * sizeof(float);
    kvs_part_cost_t in;

    memset(out, 0, sizeof *out);
    if (inner_params(p, &inner, &ip) != KVS_OK)
        return;
    inner->cost(&ip, dims, role, n_context - exact, &in);
    /* New positions push the oldest recent one into the inner codec, so
    ** steady-state growth is the inner codec's. */
    out->bytes_per_token = in.bytes_per_token;
    out->shared_bytes = in.shared_bytes;
    out->stored_bytes = exact * row + in.stored_bytes;
    out->read_bytes = exact * row + in.read_bytes;
    out->written_bytes = in.written_bytes;
    out->flops = in.flops +
                 2.0 * (double)exact * dims->head_dim * (dims->group_size ? dims->group_size : 1);
}

/* The window runs on codes exactly when its inner codec does. */
static int window_is_compressed(const kvs_params_t *p)
{
    const kvs_codec_i *inner;
    kvs_params_t ip;

    if (inner_params(p, &inner, &ip) != KVS_OK)
        return 0;
    if (inner->is_compressed)
        return inner->is_compressed(&ip);
    return (inner->roles & KVS_CODEC_COMPRESSED_EXEC) != 0;
}

const kvs_codec_i kvs_codec_window = {
    .name = "window",
    .family = "value",
    .description = "exact sinks and recent window, the middle positions in an inner codec "
                   "(keys or values)",
    .params = window_params,
    .roles = KVS_CODEC_KEY | KVS_CODEC_VALUE | KVS_CODEC_COMPRESSED_EXEC,
    .check = window_check,
    .create = window_create,
    .append = window_append,
    .end_prefill = window_end_prefill,
    .logits = window_logits,
    .output = window_output,
    .stored_bytes = window_stored_bytes,
    .cost = window_cost,
    .is_compressed = window_is_compressed,
    .destroy = window_destroy,
};
