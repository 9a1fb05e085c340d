/*
** sample.h: the seeded PRNG and next-token selection.
**
** The generator is xoshiro256** (Blackman and Vigna, "Scrambled linear
** pseudorandom number generators", 2021), its 256-bit state filled from the
** 64-bit seed by splitmix64, so a recorded seed reproduces a capture.
*/
#ifndef KVS_SAMPLE_H
#define KVS_SAMPLE_H

#include "../common/kvs_common.h"

#include <stdint.h>

typedef struct kvs_rng {
    uint64_t s[4];
} kvs_rng_t;

void kvs_rng_seed(kvs_rng_t *rng, uint64_t seed);
uint64_t kvs_rng_next(kvs_rng_t *rng);
/* Uniform in [0, 1) with 53 random bits. */
double kvs_rng_uniform(kvs_rng_t *rng);
/* Standard normal (Box-Muller). */
double kvs_rng_normal(kvs_rng_t *rng);

/* Index of the largest logit; the lowest index wins a tie. */
int32_t kvs_argmax(const float *logits, uint32_t n);

typedef struct kvs_sampler kvs_sampler_t;

/* temperature 0 means greedy (argmax); otherwise softmax(logits /
** temperature) restricted to the smallest set of most likely tokens whose
** mass reaches top_p (nucleus sampling, Holtzman et al. 2020). */
kvs_status_e kvs_sampler_create(uint32_t vocab, float temperature, float top_p, uint64_t seed,
                                kvs_sampler_t **out);
void kvs_sampler_destroy(kvs_sampler_t *s);

/* Picks the next token. Fails with KVS_ERR_NONFINITE on a NaN or Inf logit. */
kvs_status_e kvs_sampler_next(kvs_sampler_t *s, const float *logits, int32_t *token);

#endif
