/*
** select_internal.h: helpers shared by the token-selection policies
** (StreamingLLM, H2O, SnapKV, TOVA, Quest, key-norm).
**
** Conventions every policy in this folder follows:
**
**   1. A budget is the number of positions attention reads at one step,
**      the current token included. A percentage resolves against a context
**      length that each policy documents (the current context for most,
**      the prompt length for SnapKV), by kvs_select_budget().
**   2. The position just appended is never evicted by its own append: in
**      every real implementation the current token's key and value take part
**      in its own attention step, and eviction happens afterwards.
**   3. Ties in a score are broken toward the oldest position, so results do
**      not depend on sort stability.
**   4. Policies that rank with queries (H2O, SnapKV, TOVA) do not evict
**      before end_prefill: prefill attention is dense in their reference
**      implementations, and the cache is compressed once the prompt is in.
*/
#ifndef KVS_SELECT_INTERNAL_H
#define KVS_SELECT_INTERNAL_H

#include "../kernel_impl.h"

#include <stddef.h>
#include <stdint.h>

/* Resolves a BUDGET value at context n: a positive value is a token count,
** a negative one the fraction -value of n rounded down. The result is at
** least 1 and at most n (0 when n is 0). */
uint32_t kvs_select_budget(double value, uint32_t n);

/* Resident positions added per additional token at context n, for
** bytes_per_token: the fraction for a percentage; for a token count, 1
** while the context is below it and 0 after. */
double kvs_select_resident_slope(double value, uint32_t n);

/* Grows *buf to hold at least `need` elements of `elem` bytes, doubling;
** new elements are zeroed. Fails with KVS_ERR_NOMEM naming `what`. */
kvs_status_e kvs_select_reserve(void **buf, uint32_t *cap, uint32_t need, size_t elem,
                                const char *what);

/* Attention weights of one query group at position n_visible - 1 over keys
** [0, n_visible), exactly and causally: softmax_t(q_g.k_t / sqrt(d)) per
** query head g, averaged over the group, written to w[0..n_visible).
** keys is (n, d) row-major; scratch holds n_visible floats. */
void kvs_select_causal_weights(const float *keys, uint32_t d, const float *q, uint32_t group,
                               uint32_t n_visible, float *scratch, double *w);

/* Position with the lowest score among resident positions in [lo, hi),
** the oldest on ties; UINT32_MAX when none is resident. */
uint32_t kvs_select_lowest(const double *score, const uint8_t *keep, uint32_t lo, uint32_t hi);

/* Clears keep for the `count` lowest-scored resident positions in [lo, hi),
** the oldest first on ties, and returns how many it cleared (fewer when
** fewer are resident there). The same choice as `count` calls of
** kvs_select_lowest, in O(n log n) instead of O(count * n). */
uint32_t kvs_select_evict_lowest(const double *score, uint8_t *keep, uint32_t lo, uint32_t hi,
                                 uint32_t count);

/* Quest's bound sum_i max(q_i m_i, q_i M_i) for one query head q (d
** floats) over page `page` of a quest policy state, unscaled by sqrt(d). */
double kvs_quest_page_bound(const void *state, const float *q, uint32_t page);

/* Attention accumulated by position pos of an h2o policy state. */
double kvs_h2o_score(const void *state, uint32_t pos);

/* Registry entries, one per policy file. */
extern const kvs_policy_i kvs_policy_streamingllm;
extern const kvs_policy_i kvs_policy_h2o;
extern const kvs_policy_i kvs_policy_snapkv;
extern const kvs_policy_i kvs_policy_tova;
extern const kvs_policy_i kvs_policy_quest;
extern const kvs_policy_i kvs_policy_keynorm;

#endif
