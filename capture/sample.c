/* sample.c: xoshiro256**, greedy and temperature / top-p token selection. */
#include "sample.h"

#include <math.h>
#include <stdlib.h>

struct kvs_sampler {
    uint32_t vocab;
    float temperature;
    float top_p;
    kvs_rng_t rng;
    float *probs;
    uint32_t *order;
};

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);

    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void kvs_rng_seed(kvs_rng_t *rng, uint64_t seed)
{
    uint64_t x = seed;

    for (int i = 0; i < 4; i++)
        rng->s[i] = splitmix64(&x);
}

static uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

uint64_t kvs_rng_next(kvs_rng_t *rng)
{
    uint64_t *s = rng->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;

    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

double kvs_rng_uniform(kvs_rng_t *rng)
{
    return (double)(kvs_rng_next(rng) >> 11) * 0x1.0p-53;
}

double kvs_rng_normal(kvs_rng_t *rng)
{
    double u1 = 1.0 - kvs_rng_uniform(rng); /* (0, 1], so log() is finite */
    double u2 = kvs_rng_uniform(rng);

    return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
}

int32_t kvs_argmax(const float *logits, uint32_t n)
{
    uint32_t best = 0;

    for (uint32_t i = 1; i < n; i++)
        if (logits[i] > logits[best])
            best = i;
    return (int32_t)best;
}

kvs_status_e kvs_sampler_create(uint32_t vocab, float temperature, float top_p, uint64_t seed,
                                kvs_sampler_t **out)
{
    kvs_sampler_t *s;

    *out = NULL;
    KVS_RETURN_IF(!(temperature >= 0.0f) || !isfinite(temperature), KVS_ERR_INVALID,
                  "temperature %g must be a finite number >= 0", temperature);
    KVS_RETURN_IF(!(top_p > 0.0f && top_p <= 1.0f), KVS_ERR_INVALID,
                  "top_p %g must be in (0, 1]", top_p);
    s = calloc(1, sizeof *s);
    KVS_RETURN_IF(!s, KVS_ERR_NOMEM, "out of memory creating a sampler");
    s->vocab = vocab;
    s->temperature = temperature;
    s->top_p = top_p;
    kvs_rng_seed(&s->rng, seed);
    s->probs = malloc((size_t)vocab * sizeof *s->probs);
    s->order = malloc((size_t)vocab * sizeof *s->order);
    if (!s->probs || !s->order) {
        kvs_sampler_destroy(s);
        return kvs_fail(KVS_ERR_NOMEM, "out of memory for a sampler over %u tokens", vocab);
    }
    *out = s;
    return KVS_OK;
}

void kvs_sampler_destroy(kvs_sampler_t *s)
{
    if (!s)
        return;
    free(s->probs);
    free(s->order);
    free(s);
}

static int by_prob_desc(const void *a, const void *b, void *probs_arg)
{
    const float *probs = probs_arg;
    float x = probs[*(const uint32_t *)a], y = probs[*(const uint32_t *)b];

    if (x != y)
        return x > y ? -1 : 1;
    return *(const uint32_t *)a < *(const uint32_t *)b ? -1 : 1;
}

kvs_status_e kvs_sampler_next(kvs_sampler_t *s, const float *logits, int32_t *token)
{
    for (uint32_t i = 0; i < s->vocab; i++)
        KVS_RETURN_IF(!isfinite(logits[i]), KVS_ERR_NONFINITE,
                      "logit of token %u is %g; the model produced a non-finite value", i,
                      logits[i]);
    if (s->temperature == 0.0f) {
        *token = kvs_argmax(logits, s->vocab);
        return KVS_OK;
    }

    /* Softmax in double, so a vocabulary of 10^5 tokens sums without
    ** visible rounding. */
    double maxv = logits[kvs_argmax(logits, s->vocab)], total = 0.0;
    for (uint32_t i = 0; i < s->vocab; i++) {
        double p = exp(((double)logits[i] - maxv) / s->temperature);
        s->probs[i] = (float)p;
        total += p;
    }
    for (uint32_t i = 0; i < s->vocab; i++)
        s->probs[i] = (float)(s->probs[i] / total);

    /* Tokens with p < (1 - top_p) / (vocab - 1) together hold less than
    ** 1 - top_p, so the nucleus lies inside the rest; sorting only those
    ** keeps top-p sampling cheap on a large vocabulary. */
    uint32_t n = 0;
    double cutoff = s->vocab > 1 ? (1.0 - s->top_p) / (s->vocab - 1) : 0.0;
    for (uint32_t i = 0; i < s->vocab; i++)
        if (s->top_p >= 1.0f || s->probs[i] >= cutoff)
            s->order[n++] = i;
    if (s->top_p < 1.0f) {
        qsort_r(s->order, n, sizeof *s->order, by_prob_desc, s->probs);
    }

    double mass = 0.0;
    uint32_t kept = n;
    for (uint32_t i = 0; i < n; i++) {
        mass += s->probs[s->order[i]];
        if (s->top_p < 1.0f && mass >= s->top_p) {
            kept = i + 1;
            break;
        }
    }

    double u = kvs_rng_uniform(&s->rng) * mass, acc = 0.0;
    for (uint32_t i = 0; i < kept; i++) {
        acc += s->probs[s->order[i]];
        if (u < acc) {
            *token = (int32_t)s->order[i];
            return KVS_OK;
        }
    }
    *token = (int32_t)s->order[kept - 1];
    return KVS_OK;
}
