/*
** streamingllm.c: attention sinks plus a recent window (StreamingLLM, Xiao
** et al., arXiv 2309.17453).
**
** With budget B at context n (a percentage is of the current context), the
** resident set is the first `sinks` positions and the last B - sinks. The
** budget is raised to sinks + 1 when lower, so the sinks are never evicted
** and the current token is always attended. B grows by at most one token
** per appended position, so an evicted position never comes back into the
** window and the set stays exactly sinks plus window.
**
** StreamingLLM also re-assigns positions inside the cache (keys stored
** before RoPE and rotated by their cache slot). Keys here keep their
** original RoPE positions, as kvpress's StreamingLLMPress does without its
** key-rerotation wrapper.
*/
#include "select_internal.h"

#include <stdlib.h>

typedef struct streamingllm_state {
    double budget;          /* BUDGET value as parsed */
    uint32_t sinks;
    uint32_t window_start;  /* oldest non-sink position not yet evicted */
} streamingllm_state_t;

static const kvs_param_doc_t streamingllm_params[] = {
    {"budget", KVS_PARAM_BUDGET, "20%", 1, 1e9, NULL,
     "positions attended per step, sinks included: tokens, or percent of the current context"},
    {"sinks", KVS_PARAM_INT, "4", 0, 1e6, NULL, "first positions always kept (attention sinks)"},
    {NULL, 0, NULL, 0, 0, NULL, NULL},
};

/* Positions in the recent window at context n, the current one included. */
static uint32_t streamingllm_window(double budget, uint32_t sinks, uint32_t n)
{
    uint32_t b = kvs_select_budget(budget, n);

    if (b < sinks + 1)
        b = sinks + 1;
    return b - sinks;
}

static kvs_status_e streamingllm_check(const kvs_params_t *p, const kvs_kernel_dims_t *dims)
{
    double budget = kvs_param_number(p, "budget");
    double sinks = kvs_param_number(p, "sinks");

    KVS_RETURN_IF(budget > 0 && budget < sinks + 1, KVS_ERR_KERNEL_SPEC,
                  "streamingllm budget=%.0f is below sinks+1=%.0f; raise budget or lower sinks",
                  budget, sinks + 1);
    return KVS_OK;
}

static kvs_status_e streamingllm_create(const kvs_params_t *p, const kvs_kernel_dims_t *dims,
                                        void **state)
{
    streamingllm_state_t *s = calloc(1, sizeof *s);

    KVS_RETURN_IF(!s, KVS_ERR_NOMEM, "out of memory creating a streamingllm policy");
    s->budget = kvs_param_number(p, "budget");
    s->sinks = (uint32_t)kvs_param_number(p, "sinks");
    s->window_start = s->sinks;
    *state = s;
    return KVS_OK;
}

static kvs_status_e streamingllm_append(void *state, const float *k, uint8_t *keep, uint32_t n)
{
    streamingllm_state_t *s = state;
    uint32_t window = streamingllm_window(s->budget, s->sinks, n);

    while (s->window_start + window < n) {
        keep[s->window_start] = 0;
        s->window_start++;
    }
    return KVS_OK;
}

static uint64_t streamingllm_stored_bytes(const void *state)
{
    return 0;
}

static void streamingllm_cost(const kvs_params_t *p, const kvs_kernel_dims_t *dims,
                              uint64_t n_context, kvs_part_cost_t *out, uint64_t *resident)
{
    uint32_t n = n_context > UINT32_MAX ? UINT32_MAX : (uint32_t)n_context;
    uint32_t sinks = (uint32_t)kvs_param_number(p, "sinks");
    uint64_t kept = (uint64_t)(sinks < n ? sinks : n) +
                    streamingllm_window(kvs_param_number(p, "budget"), sinks, n);

    *out = (kvs_part_cost_t){0};
    *resident = kept < n_context ? kept : n_context;
}

static void streamingllm_destroy(void *state)
{
    free(state);
}

const kvs_policy_i kvs_policy_streamingllm = {
    .name = "streamingllm",
    .description = "attention sinks plus a recent window (StreamingLLM)",
    .params = streamingllm_params,
    .check = streamingllm_check,
    .create = streamingllm_create,
    .append = streamingllm_append,
    .stored_bytes = streamingllm_stored_bytes,
    .cost = streamingllm_cost,
    .destroy = streamingllm_destroy,
};
