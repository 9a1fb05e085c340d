/*
** quest.c: query-aware page selection (Quest, Tang et al., arXiv
** 2406.10774).
**
** Positions are grouped into pages of P consecutive tokens. Each page keeps
** the element-wise minimum m and maximum M of its keys (after RoPE). For a
** query q the page bound
**
**   U(q) = sum_i max(q_i m_i, q_i M_i)  >=  q.k  for every key k of the page
**
** ranks the pages; a query group ranks by the maximum of its heads' bounds,
** so the bound stays above every head's logits. Each step attends exactly
** to the top K = min(pages, max(min_pages, ceil(B / P))) pages, B being the
** budget at the current context. Nothing is evicted: the whole cache stays
** stored, and the bounds add 2 * d values per page.
**
** Bounds are stored in `dtype`, the key dtype they would share in a real
** cache, rounded outward (minimum down, maximum up) so the bound property
** survives the rounding. The policy interface does not tell a policy the key
** codec's dtype, hence the parameter.
*/
#include "select_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { QUEST_F32 = 0, QUEST_F16 = 1, QUEST_BF16 = 2 };

typedef struct quest_ranked {
    double bound;
    uint32_t page;
} quest_ranked_t;

typedef struct quest_state {
    uint32_t d, group;
    double budget;
    uint32_t page, min_pages;
    int dtype;
    int dense;               /* 1 in layers below dense_layers */
    uint32_t n;

    float *minv, *maxv;      /* (pages, d) outward-rounded bounds */
    quest_ranked_t *ranked;  /* (pages) scratch for select */
    uint8_t *chosen;         /* (pages) scratch for select */
    uint32_t min_cap, max_cap, ranked_cap, chosen_cap;
} quest_state_t;

static const kvs_param_doc_t quest_params[] = {
    {"budget", KVS_PARAM_BUDGET, "20%", 1, 1e9, NULL,
     "positions attended per step, in whole pages: tokens, or percent of the current context"},
    {"page", KVS_PARAM_INT, "16", 1, 65536, NULL, "tokens per page"},
    {"min_pages", KVS_PARAM_INT, "3", 1, 1e6, NULL,
     "fewest pages attended per step (Quest's evaluation code uses 3)"},
    {"dtype", KVS_PARAM_ENUM, "f32", 0, 0, "f32|f16|bf16",
     "storage type of the page minima and maxima (the key dtype)"},
    {"dense_layers", KVS_PARAM_INT, "0", 0, 1e6, NULL,
     "layers below this index attend every position (Quest's evaluation code uses 2)"},
    {NULL, 0, NULL, 0, 0, NULL, NULL},
};

static uint32_t quest_value_bytes(int dtype)
{
    return dtype == QUEST_F32 ? 4 : 2;
}

/* Rounds x to a float with `drop` fewer mantissa bits, toward +infinity when
** up is 1 and toward -infinity otherwise. bf16 drops 16 bits and f16 13.
** NOTE: f16's narrower exponent range is not modelled; values beyond it keep
** more precision than f16 has, which loosens nothing in the bound. */
static float quest_round(float x, uint32_t drop, int up)
{
    uint32_t bits, mask;

    if (drop == 0 || !isfinite(x))
        return x;
    memcpy(&bits, &x, sizeof bits);
    mask = (1u << drop) - 1;
    if ((bits & mask) == 0)
        return x;

    /* Clearing the low bits moves toward zero; adding one unit of the
    ** shortened mantissa moves away from zero, carrying into the exponent
    ** when needed. */
    bits &= ~mask;
    if ((x > 0) == (up != 0))
        bits += mask + 1;
    memcpy(&x, &bits, sizeof x);
    return x;
}

/* Mantissa bits a float loses when stored in dtype. */
static uint32_t quest_drop_bits(int dtype)
{
    if (dtype == QUEST_BF16)
        return 16;
    if (dtype == QUEST_F16)
        return 13;
    return 0;
}

static uint32_t quest_pages(uint32_t n, uint32_t page)
{
    return (uint32_t)(((uint64_t)n + page - 1) / page);
}

/* Pages attended at context n. */
static uint32_t quest_selected(double budget, uint32_t page, uint32_t min_pages, uint32_t n)
{
    uint32_t pages = quest_pages(n, page);
    uint32_t k = quest_pages(kvs_select_budget(budget, n), page);

    if (k < min_pages)
        k = min_pages;
    return k < pages ? k : pages;
}

static kvs_status_e quest_create(const kvs_params_t *p, const kvs_kernel_dims_t *dims,
                                 void **state)
{
    quest_state_t *s = calloc(1, sizeof *s);

    KVS_RETURN_IF(!s, KVS_ERR_NOMEM, "out of memory creating a quest policy");
    s->d = dims->head_dim;
    s->group = dims->group_size;
    s->budget = kvs_param_number(p, "budget");
    s->page = (uint32_t)kvs_param_number(p, "page");
    s->min_pages = (uint32_t)kvs_param_number(p, "min_pages");
    s->dtype = (int)kvs_param_number(p, "dtype");
    s->dense = dims->layer < (uint32_t)kvs_param_number(p, "dense_layers");
    *state = s;
    return KVS_OK;
}

static kvs_status_e quest_append(void *state, const float *k, uint8_t *keep, uint32_t n)
{
    quest_state_t *s = state;
    uint32_t pages = quest_pages(n, s->page);
    uint32_t page = (n - 1) / s->page;
    uint32_t drop = quest_drop_bits(s->dtype);
    float *minv, *maxv;

    KVS_FORWARD(kvs_select_reserve((void **)&s->minv, &s->min_cap, pages * s->d,
                                   sizeof *s->minv, "quest page minima"));
    KVS_FORWARD(kvs_select_reserve((void **)&s->maxv, &s->max_cap, pages * s->d,
                                   sizeof *s->maxv, "quest page maxima"));
    KVS_FORWARD(kvs_select_reserve((void **)&s->ranked, &s->ranked_cap, pages,
                                   sizeof *s->ranked, "quest page ranking"));
    KVS_FORWARD(kvs_select_reserve((void **)&s->chosen, &s->chosen_cap, pages, 1,
                                   "quest page choice"));
    s->n = n;

    minv = s->minv + (size_t)page * s->d;
    maxv = s->maxv + (size_t)page * s->d;
    for (uint32_t i = 0; i < s->d; i++) {
        float lo = quest_round(k[i], drop, 0);
        float hi = quest_round(k[i], drop, 1);

        if ((n - 1) % s->page == 0 || lo < minv[i])
            minv[i] = lo;
        if ((n - 1) % s->page == 0 || hi > maxv[i])
            maxv[i] = hi;
    }
    return KVS_OK;
}

double kvs_quest_page_bound(const void *state, const float *q, uint32_t page)
{
    const quest_state_t *s = state;
    const float *minv = s->minv + (size_t)page * s->d;
    const float *maxv = s->maxv + (size_t)page * s->d;
    double bound = 0;

    for (uint32_t i = 0; i < s->d; i++) {
        double a = (double)q[i] * minv[i];
        double b = (double)q[i] * maxv[i];

        bound += a > b ? a : b;
    }
    return bound;
}

/* Orders pages by bound, highest first, oldest on ties. */
static int quest_by_bound(const void *a, const void *b)
{
    const quest_ranked_t *x = a, *y = b;

    if (x->bound != y->bound)
        return x->bound > y->bound ? -1 : 1;
    return x->page < y->page ? -1 : (x->page > y->page);
}

static void quest_select(void *state, const float *q, uint32_t group, uint8_t *attend, uint32_t n)
{
    quest_state_t *s = state;
    uint32_t pages = quest_pages(n, s->page);
    uint32_t k = quest_selected(s->budget, s->page, s->min_pages, n);

    if (s->dense || k >= pages)
        return;

    for (uint32_t p = 0; p < pages; p++) {
        double best = -INFINITY;

        for (uint32_t g = 0; g < group; g++) {
            double b = kvs_quest_page_bound(s, q + (size_t)g * s->d, p);

            if (b > best)
                best = b;
        }
        s->ranked[p] = (quest_ranked_t){best, p};
        s->chosen[p] = 0;
    }
    qsort(s->ranked, pages, sizeof *s->ranked, quest_by_bound);
    for (uint32_t r = 0; r < k; r++)
        s->chosen[s->ranked[r].page] = 1;

    for (uint32_t t = 0; t < n; t++) {
        if (!s->chosen[t / s->page])
            attend[t] = 0;
    }
}

static uint64_t quest_stored_bytes(const void *state)
{
    const quest_state_t *s = state;

    return (uint64_t)quest_pages(s->n, s->page) * 2 * s->d * quest_value_bytes(s->dtype);
}

/* Costs are the mean over the model's layers, because whole-model figures
** multiply one stream's cost by layers x KV heads: layers below
** dense_layers read every position, the others the selected pages. */
static void quest_cost(const kvs_params_t *p, const kvs_kernel_dims_t *dims, uint64_t n_context,
                       kvs_part_cost_t *out, uint64_t *resident)
{
    uint32_t n = n_context > UINT32_MAX ? UINT32_MAX : (uint32_t)n_context;
    uint32_t page = (uint32_t)kvs_param_number(p, "page");
    uint64_t page_bytes = 2ull * dims->head_dim * quest_value_bytes((int)kvs_param_number(p, "dtype"));
    uint64_t pages = quest_pages(n, page);
    uint32_t n_layers = dims->n_layers ? dims->n_layers : 1;
    uint32_t dense_layers = (uint32_t)kvs_param_number(p, "dense_layers");
    double sparse = dense_layers >= n_layers ? 0.0 : (double)(n_layers - dense_layers) / n_layers;

    /* A step reads every page's bounds and, per query head and dimension,
    ** takes two products, a maximum and a sum. */
    *out = (kvs_part_cost_t){0};
    out->bytes_per_token = (double)page_bytes / page;
    out->stored_bytes = pages * page_bytes;
    out->read_bytes = (uint64_t)(sparse * (double)(pages * page_bytes) + 0.5);
    out->flops = sparse * 4.0 * (double)pages * dims->head_dim * dims->group_size;

    /* The whole cache stays resident, but a step reads only the selected
    ** pages' keys and values. */
    uint64_t selected = (uint64_t)quest_selected(kvs_param_number(p, "budget"), page,
                                                 (uint32_t)kvs_param_number(p, "min_pages"), n) * page;
    if (selected > n_context)
        selected = n_context;
    out->attended = (uint64_t)(sparse * (double)selected + (1.0 - sparse) * (double)n_context + 0.5);
    *resident = n_context;
}

static kvs_status_e quest_check(const kvs_params_t *p, const kvs_kernel_dims_t *dims)
{
    uint32_t dense_layers = (uint32_t)kvs_param_number(p, "dense_layers");

    KVS_RETURN_IF(dims->n_layers && dense_layers > dims->n_layers, KVS_ERR_KERNEL_SPEC,
                  "quest: dense_layers=%u exceeds the model's %u layers; use 0..%u", dense_layers,
                  dims->n_layers, dims->n_layers);
    return KVS_OK;
}

static void quest_destroy(void *state)
{
    quest_state_t *s = state;

    if (!s)
        return;
    free(s->minv);
    free(s->maxv);
    free(s->ranked);
    free(s->chosen);
    free(s);
}

const kvs_policy_i kvs_policy_quest = {
    .name = "quest",
    .description = "attends the top pages by a min/max key bound; keeps the whole cache (Quest)",
    .params = quest_params,
    .check = quest_check,
    .create = quest_create,
    .append = quest_append,
    .select = quest_select,
    .stored_bytes = quest_stored_bytes,
    .cost = quest_cost,
    .destroy = quest_destroy,
};
