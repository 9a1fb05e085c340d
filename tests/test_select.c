/*
** test_select.c: token-selection policies (StreamingLLM, H2O, SnapKV, TOVA,
** Quest, key-norm) driven through their vtables by a small exact-attention
** harness, against hand computations and reference simulations written
** here.
*/
#include "testutil.h"

#include "kernels/kernel_impl.h"
#include "kernels/select/select_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- parameters filled by hand ------------------------------------------ */

static const kvs_policy_i *find_policy(const char *name)
{
    for (uint32_t i = 0; kvs_policies[i]; i++) {
        if (strcmp(kvs_policies[i]->name, name) == 0)
            return kvs_policies[i];
    }
    ck_abort_msg("policy %s not in kvs_policies", name);
    return NULL;
}

/* Parses a default the way a user would write it: "25%" is -0.25, an ENUM
** is the index of its choice. */
static double parse_default(const kvs_param_doc_t *doc)
{
    const char *text = doc->default_value;
    size_t len = strlen(text);

    if (doc->type == KVS_PARAM_ENUM) {
        const char *c = doc->choices;
        double index = 0;

        while (c) {
            if (strncmp(c, text, len) == 0 && (c[len] == '|' || c[len] == 0))
                return index;
            c = strchr(c, '|');
            c = c ? c + 1 : NULL;
            index++;
        }
        ck_abort_msg("default %s of %s is not one of %s", text, doc->name, doc->choices);
    }
    if (doc->type == KVS_PARAM_BUDGET && text[len - 1] == '%')
        return -strtod(text, NULL) / 100;
    return strtod(text, NULL);
}

static kvs_params_t default_params(const kvs_policy_i *policy)
{
    kvs_params_t p = {0};

    p.docs = policy->params;
    for (uint32_t i = 0; policy->params[i].name; i++) {
        p.number[i] = parse_default(&policy->params[i]);
        p.n++;
    }
    return p;
}

static void set_param(kvs_params_t *p, const char *name, double value)
{
    for (uint32_t i = 0; i < p->n; i++) {
        if (strcmp(p->docs[i].name, name) == 0) {
            p->number[i] = value;
            return;
        }
    }
    ck_abort_msg("no parameter %s", name);
}

/* ---- data --------------------------------------------------------------- */

static uint64_t rng_state;

static double rng_uniform(void)
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(rng_state >> 11) / 9007199254740992.0;
}

static float rng_gauss(void)
{
    double u = rng_uniform() + 1e-12, v = rng_uniform();

    return (float)(sqrt(-2 * log(u)) * cos(6.283185307179586 * v));
}

/* A trace of one (layer, KV head) stream: keys, values and query groups per
** position. Keys get a per-position scale so some stand out, and queries a
** shared direction so attention concentrates as in real heads. */
typedef struct trace {
    uint32_t n, d, group;
    float *k, *v, *q;   /* (n, d), (n, d), (n, group, d) */
} trace_t;

static trace_t make_trace(uint32_t n, uint32_t d, uint32_t group, uint64_t seed)
{
    trace_t tr = {n, d, group, NULL, NULL, NULL};
    float *dir = malloc(d * sizeof *dir);

    rng_state = seed;
    tr.k = malloc((size_t)n * d * sizeof *tr.k);
    tr.v = malloc((size_t)n * d * sizeof *tr.v);
    tr.q = malloc((size_t)n * group * d * sizeof *tr.q);
    for (uint32_t i = 0; i < d; i++)
        dir[i] = rng_gauss();
    for (uint32_t t = 0; t < n; t++) {
        float scale = 0.5f + 2.0f * (float)rng_uniform();

        for (uint32_t i = 0; i < d; i++) {
            tr.k[(size_t)t * d + i] = scale * (rng_gauss() + 0.7f * dir[i]);
            tr.v[(size_t)t * d + i] = rng_gauss();
        }
        for (uint32_t g = 0; g < group; g++) {
            for (uint32_t i = 0; i < d; i++)
                tr.q[((size_t)t * group + g) * d + i] = 1.5f * (rng_gauss() + dir[i]);
        }
    }
    free(dir);
    return tr;
}

static void free_trace(trace_t *tr)
{
    free(tr->k);
    free(tr->v);
    free(tr->q);
}

/* ---- harness: the attention step of kernel_impl.h with exact F32 -------- */

typedef struct sim {
    const kvs_policy_i *policy;
    void *state;
    const trace_t *tr;
    uint32_t n;
    uint8_t *keep;      /* (tr->n) */
    uint8_t *attend;    /* (tr->n) mask of the last attend step */
    float *w;           /* (group, n) weights of the last attend step */
    float *out;         /* (group, d) */
} sim_t;

static void sim_init(sim_t *s, const char *policy, const kvs_params_t *p, const trace_t *tr,
                     uint32_t layer)
{
    kvs_kernel_dims_t dims = {tr->d, tr->group, 4, 1, layer, 0, 1};

    memset(s, 0, sizeof *s);
    s->policy = find_policy(policy);
    s->tr = tr;
    if (s->policy->check)
        ck_assert_int_eq(s->policy->check(p, &dims), KVS_OK);
    ck_assert_int_eq(s->policy->create(p, &dims, &s->state), KVS_OK);
    s->keep = calloc(tr->n, 1);
    s->attend = calloc(tr->n, 1);
    s->w = calloc((size_t)tr->group * tr->n, sizeof *s->w);
    s->out = calloc((size_t)tr->group * tr->d, sizeof *s->out);
}

static void sim_free(sim_t *s)
{
    s->policy->destroy(s->state);
    free(s->keep);
    free(s->attend);
    free(s->w);
    free(s->out);
}

static void sim_append(sim_t *s)
{
    s->keep[s->n] = 1;
    s->n++;
    ck_assert_int_eq(s->policy->append(s->state, s->tr->k + (size_t)(s->n - 1) * s->tr->d, s->keep,
                                       s->n),
                     KVS_OK);
}

/* Ends the prompt with the last n_q prompt queries as the window. */
static void sim_end_prefill(sim_t *s, uint32_t n_q)
{
    const float *q = s->tr->q + (size_t)(s->n - n_q) * s->tr->group * s->tr->d;

    if (s->policy->end_prefill)
        ck_assert_int_eq(s->policy->end_prefill(s->state, q, n_q, s->keep, s->n), KVS_OK);
}

/* Attends with the query of position n-1 over the attended positions. */
static void sim_attend(sim_t *s)
{
    uint32_t n = s->n, d = s->tr->d, group = s->tr->group;
    const float *q = s->tr->q + (size_t)(n - 1) * group * d;

    memcpy(s->attend, s->keep, n);
    if (s->policy->select)
        s->policy->select(s->state, q, group, s->attend, n);

    for (uint32_t g = 0; g < group; g++) {
        float *w = s->w + (size_t)g * n;
        float *o = s->out + (size_t)g * d;
        double max_logit = -INFINITY, sum = 0;

        for (uint32_t t = 0; t < n; t++) {
            double dot = 0;

            if (!s->attend[t])
                continue;
            for (uint32_t i = 0; i < d; i++)
                dot += (double)q[g * d + i] * s->tr->k[(size_t)t * d + i];
            w[t] = (float)(dot / sqrt((double)d));
            if (w[t] > max_logit)
                max_logit = w[t];
        }
        for (uint32_t t = 0; t < n; t++) {
            w[t] = s->attend[t] ? (float)exp(w[t] - max_logit) : 0.0f;
            sum += w[t];
        }
        memset(o, 0, d * sizeof *o);
        for (uint32_t t = 0; t < n; t++) {
            w[t] = (float)(w[t] / sum);
            for (uint32_t i = 0; i < d; i++)
                o[i] += w[t] * s->tr->v[(size_t)t * d + i];
        }
    }

    if (s->policy->observe)
        s->policy->observe(s->state, s->w, group, s->keep, n);
}

static uint32_t count_set(const uint8_t *mask, uint32_t n)
{
    uint32_t c = 0;

    for (uint32_t t = 0; t < n; t++)
        c += mask[t] != 0;
    return c;
}

/* Budget at context n for an integer percentage, or a token count when
** percent is 0; written apart from kvs_select_budget on purpose. */
static uint32_t ref_budget(uint32_t percent, uint32_t tokens, uint32_t n)
{
    uint32_t b = percent ? percent * n / 100 : tokens;

    if (b < 1)
        b = 1;
    return b < n ? b : n;
}

static const char *const all_policies[] = {"streamingllm", "h2o", "snapkv", "tova", "quest",
                                           "keynorm"};
#define N_POLICIES (sizeof all_policies / sizeof all_policies[0])

/* ---- registry and parameters ------------------------------------------ */

START_TEST(table_names_unique_with_hooks)
{
    uint32_t count = 0;

    for (uint32_t i = 0; kvs_policies[i]; i++) {
        const kvs_policy_i *p = kvs_policies[i];
        kvs_params_t params = default_params(p);
        int has_budget = 0;

        count++;
        ck_assert_ptr_nonnull(p->name);
        ck_assert_ptr_nonnull(p->description);
        ck_assert_ptr_nonnull(p->create);
        ck_assert_ptr_nonnull(p->append);
        ck_assert_ptr_nonnull(p->stored_bytes);
        ck_assert_ptr_nonnull(p->cost);
        ck_assert_ptr_nonnull(p->destroy);
        for (uint32_t j = 0; j < i; j++)
            ck_assert_str_ne(kvs_policies[j]->name, p->name);
        for (uint32_t j = 0; p->params[j].name; j++) {
            const kvs_param_doc_t *doc = &p->params[j];

            if (strcmp(doc->name, "budget") == 0 && doc->type == KVS_PARAM_BUDGET)
                has_budget = 1;
            if (doc->type != KVS_PARAM_ENUM && !(doc->type == KVS_PARAM_BUDGET &&
                                                 params.number[j] < 0)) {
                ck_assert_double_ge(params.number[j], doc->min);
                ck_assert_double_le(params.number[j], doc->max);
            }
        }
        ck_assert_msg(has_budget, "%s has no BUDGET parameter named budget", p->name);
    }
    ck_assert_uint_eq(count, N_POLICIES);
}
END_TEST

START_TEST(budget_resolves_tokens_and_percent)
{
    ck_assert_uint_eq(kvs_select_budget(-0.29, 100), 29);
    ck_assert_uint_eq(kvs_select_budget(-0.1, 30), 3);
    ck_assert_uint_eq(kvs_select_budget(-0.25, 10), 2);
    ck_assert_uint_eq(kvs_select_budget(-1.0, 77), 77);
    ck_assert_uint_eq(kvs_select_budget(-0.01, 10), 1);
    ck_assert_uint_eq(kvs_select_budget(5, 3), 3);
    ck_assert_uint_eq(kvs_select_budget(5, 300), 5);
    ck_assert_uint_eq(kvs_select_budget(-0.5, 0), 0);
    for (uint32_t n = 1; n < 2000; n++)
        ck_assert_uint_eq(kvs_select_budget(-0.07, n), ref_budget(7, 0, n));
}
END_TEST

START_TEST(evict_lowest_oldest_on_ties)
{
    const double score[] = {1, 0, 0, 2, 0, -1};
    uint8_t keep[] = {1, 1, 1, 1, 1, 0};
    const uint8_t after_two[] = {1, 0, 0, 1, 1, 0};
    const uint8_t after_all[] = {0, 0, 0, 0, 0, 0};

    /* Position 5 is not resident, so its lower score does not count. */
    ck_assert_uint_eq(kvs_select_lowest(score, keep, 0, 6), 1);
    ck_assert_uint_eq(kvs_select_lowest(score, keep, 3, 6), 4);
    ck_assert_uint_eq(kvs_select_evict_lowest(score, keep, 0, 6, 2), 2);
    ck_assert_mem_eq(keep, after_two, 6);
    ck_assert_uint_eq(kvs_select_evict_lowest(score, keep, 0, 6, 1), 1);
    ck_assert_int_eq(keep[4], 0);
    ck_assert_uint_eq(kvs_select_evict_lowest(score, keep, 0, 6, 10), 2);
    ck_assert_mem_eq(keep, after_all, 6);
    ck_assert_uint_eq(kvs_select_lowest(score, keep, 0, 6), UINT32_MAX);
}
END_TEST

START_TEST(check_rejects_bad_combinations)
{
    kvs_kernel_dims_t dims = {8, 2, 4, 1, 0, 0, 1};
    kvs_params_t p = default_params(find_policy("snapkv"));

    set_param(&p, "kernel", 4);
    ck_assert_int_eq(find_policy("snapkv")->check(&p, &dims), KVS_ERR_KERNEL_SPEC);
    ck_assert_ptr_nonnull(strstr(kvs_error_message(), "kernel=4"));

    p = default_params(find_policy("streamingllm"));
    set_param(&p, "budget", 3);
    ck_assert_int_eq(find_policy("streamingllm")->check(&p, &dims), KVS_ERR_KERNEL_SPEC);
    ck_assert_ptr_nonnull(strstr(kvs_error_message(), "sinks+1=5"));
    set_param(&p, "budget", 5);
    ck_assert_int_eq(find_policy("streamingllm")->check(&p, &dims), KVS_OK);
}
END_TEST

/* ---- full budget equals dense ------------------------------------------ */

/* Runs a prompt of n_prompt positions then decode steps, attending at every
** decode step and, when eval_prompt, at every prompt step too. With
** expect_dense every decode step must attend every position. */
static void run_trace(sim_t *s, uint32_t n_prompt, uint32_t n_q, int eval_prompt, int expect_dense)
{
    for (uint32_t t = 0; t < n_prompt; t++) {
        sim_append(s);
        if (eval_prompt)
            sim_attend(s);
    }
    sim_end_prefill(s, n_q);
    while (s->n < s->tr->n) {
        sim_append(s);
        sim_attend(s);
        if (expect_dense)
            ck_assert_uint_eq(count_set(s->attend, s->n), s->n);
    }
}

START_TEST(full_budget_equals_dense)
{
    trace_t tr = make_trace(120, 16, 3, 11);
    const double budgets[] = {-1.0, 120, 1e6};

    for (uint32_t i = 0; i < N_POLICIES; i++) {
        for (uint32_t b = 0; b < 3; b++) {
            for (int eval_prompt = 0; eval_prompt < 2; eval_prompt++) {
                kvs_params_t p = default_params(find_policy(all_policies[i]));
                sim_t s;

                set_param(&p, "budget", budgets[b]);
                sim_init(&s, all_policies[i], &p, &tr, 0);
                run_trace(&s, 70, 16, eval_prompt, 1);
                ck_assert_msg(count_set(s.keep, s.n) == s.n, "%s budget %g evicted", all_policies[i],
                              budgets[b]);
                sim_free(&s);
            }
        }
    }
    free_trace(&tr);
}
END_TEST

/* ---- StreamingLLM ---------------------------------------------------- */

START_TEST(streamingllm_keeps_sinks_and_window)
{
    struct { uint32_t percent, tokens, sinks; } cases[] = {
        {0, 10, 4}, {25, 0, 4}, {10, 0, 4}, {0, 3, 2}, {30, 0, 0}, {0, 1, 0}, {5, 0, 4},
    };
    trace_t tr = make_trace(200, 8, 2, 3);

    for (uint32_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        kvs_params_t p = default_params(find_policy("streamingllm"));
        sim_t s;

        set_param(&p, "budget", cases[c].percent ? -(double)cases[c].percent / 100 : cases[c].tokens);
        set_param(&p, "sinks", cases[c].sinks);
        sim_init(&s, "streamingllm", &p, &tr, 0);
        for (uint32_t t = 0; t < tr.n; t++) {
            uint32_t n = t + 1;
            uint32_t b = ref_budget(cases[c].percent, cases[c].tokens, n);
            uint32_t window;

            if (b < cases[c].sinks + 1)
                b = cases[c].sinks + 1;
            window = b - cases[c].sinks;
            sim_append(&s);
            if (t == 60)
                sim_end_prefill(&s, 8);
            for (uint32_t u = 0; u < n; u++) {
                int expected = u < cases[c].sinks || u + window >= n;

                ck_assert_msg(s.keep[u] == expected, "case %u n=%u position %u: keep %d, expected %d",
                              c, n, u, s.keep[u], expected);
            }
        }
        sim_free(&s);
    }
    free_trace(&tr);
}
END_TEST

/* ---- SnapKV, hand-made traces ------------------------------------------ */

/* A trace with head_dim 1 and query 1: the logit of position t is k_t, so
** k_t = ln a_t makes the weights a_t / sum a. */
static trace_t log_trace(const double *a, uint32_t n)
{
    trace_t tr = {n, 1, 1, NULL, NULL, NULL};

    tr.k = malloc(n * sizeof *tr.k);
    tr.v = calloc(n, sizeof *tr.v);
    tr.q = malloc(n * sizeof *tr.q);
    for (uint32_t t = 0; t < n; t++) {
        tr.k[t] = (float)log(a[t]);
        tr.q[t] = 1.0f;
    }
    return tr;
}

static void snapkv_prompt(const trace_t *tr, double budget, double window, double kernel,
                          uint32_t n_q, const uint8_t *expected)
{
    kvs_params_t p = default_params(find_policy("snapkv"));
    sim_t s;

    set_param(&p, "budget", budget);
    set_param(&p, "window", window);
    set_param(&p, "kernel", kernel);
    sim_init(&s, "snapkv", &p, tr, 0);
    for (uint32_t t = 0; t < tr->n; t++)
        sim_append(&s);
    sim_end_prefill(&s, n_q);
    for (uint32_t t = 0; t < tr->n; t++)
        ck_assert_msg(s.keep[t] == expected[t], "budget %g window %g kernel %g: position %u keep %d",
                      budget, window, kernel, t, s.keep[t]);
    sim_free(&s);
}

START_TEST(snapkv_pooling_hand_trace)
{
    /* a = 6 1 1 1 8 1 | 2 20. The window is positions 6 and 7, whose sums
    ** of a up to themselves are 20 and 40, so position t < 6 scores
    ** a_t/20 + a_t/40 = 3 a_t / 40. Pooling with 3 taps sums neighbours,
    ** zeros past the ends, and divides by 3:
    ** t:      0  1  2  3   4   5
    ** a:      6  1  1  1   8   1
    ** pooled: 7  8  3  10  10  9   (times 3/40/3)
    ** Budget 5 keeps the window and the top 3 pooled: 3, 4, 5. Dividing
    ** the ends by their 2 real taps instead would rank 5 and 0 first.
    ** Without pooling (kernel 1) budget 4 keeps the top 2 of a: 4, 0. */
    const double a[] = {6, 1, 1, 1, 8, 1, 2, 20};
    trace_t tr = log_trace(a, 8);
    const uint8_t pooled5[] = {0, 0, 0, 1, 1, 1, 1, 1};
    const uint8_t plain4[] = {1, 0, 0, 0, 1, 0, 1, 1};
    const uint8_t window_only[] = {0, 0, 0, 0, 0, 0, 1, 1};

    snapkv_prompt(&tr, 5, 2, 3, 2, pooled5);
    snapkv_prompt(&tr, 4, 2, 1, 2, plain4);

    /* The window is clamped to the queries given: 64 with 2 queries is 2. */
    snapkv_prompt(&tr, 5, 64, 3, 2, pooled5);

    /* 62.5% of 8 positions is 5. */
    snapkv_prompt(&tr, -0.625, 2, 3, 2, pooled5);

    /* A budget no larger than the window keeps only the last positions. */
    snapkv_prompt(&tr, 2, 2, 3, 2, window_only);
    free_trace(&tr);
}
END_TEST

START_TEST(snapkv_gqa_hand_trace)
{
    /* head_dim 2, two query heads: key t = (ln a_t, ln b_t) and queries
    ** sqrt(2) (1,0) and sqrt(2) (0,1), so head 1 weighs a_t and head 2 b_t.
    ** a = 1 5 1 4 1 | 12 and b = 5 1 1 4 1 | 12: both sum to 12 up to
    ** position 4 and 24 up to 5, so prefix position t scores a_t/8 (head 1)
    ** and b_t/8 (head 2). Head 1 alone would keep position 1, head 2 alone
    ** position 0; the group mean (3 3 1 4)/8 keeps position 3. */
    const double a[] = {1, 5, 1, 4, 1, 12};
    const double b[] = {5, 1, 1, 4, 1, 12};
    const uint8_t expected[] = {0, 0, 0, 1, 1, 1};
    trace_t tr = {6, 2, 2, NULL, NULL, NULL};
    kvs_params_t p = default_params(find_policy("snapkv"));
    sim_t s;

    tr.k = malloc(12 * sizeof *tr.k);
    tr.v = calloc(12, sizeof *tr.v);
    tr.q = malloc(24 * sizeof *tr.q);
    for (uint32_t t = 0; t < 6; t++) {
        tr.k[2 * t] = (float)log(a[t]);
        tr.k[2 * t + 1] = (float)log(b[t]);
        tr.q[4 * t + 0] = (float)sqrt(2.0);
        tr.q[4 * t + 1] = 0;
        tr.q[4 * t + 2] = 0;
        tr.q[4 * t + 3] = (float)sqrt(2.0);
    }
    set_param(&p, "budget", 3);
    set_param(&p, "window", 2);
    set_param(&p, "kernel", 1);
    sim_init(&s, "snapkv", &p, &tr, 0);
    for (uint32_t t = 0; t < 6; t++)
        sim_append(&s);
    sim_end_prefill(&s, 2);
    for (uint32_t t = 0; t < 6; t++)
        ck_assert_msg(s.keep[t] == expected[t], "position %u keep %d", t, s.keep[t]);
    sim_free(&s);
    free_trace(&tr);
}
END_TEST

START_TEST(snapkv_keeps_decode_positions)
{
    trace_t tr = make_trace(150, 8, 2, 5);
    kvs_params_t p = default_params(find_policy("snapkv"));
    sim_t s;

    set_param(&p, "budget", -0.25);
    set_param(&p, "window", 8);
    sim_init(&s, "snapkv", &p, &tr, 0);
    run_trace(&s, 0, 0, 0, 1);
    sim_free(&s);

    sim_init(&s, "snapkv", &p, &tr, 0);
    for (uint32_t t = 0; t < 100; t++)
        sim_append(&s);
    sim_end_prefill(&s, 16);
    ck_assert_uint_eq(count_set(s.keep, 100), 25);
    for (uint32_t t = 92; t < 100; t++)
        ck_assert(s.keep[t]);
    while (s.n < tr.n) {
        sim_append(&s);
        sim_attend(&s);
    }
    ck_assert_uint_eq(count_set(s.keep, tr.n), 25 + 50);
    for (uint32_t t = 100; t < tr.n; t++)
        ck_assert(s.keep[t]);
    sim_free(&s);
    free_trace(&tr);
}
END_TEST

/* ---- H2O and TOVA against reference simulations ------------------------ */

/* Exact causal weights of the query at position pos over resident
** positions t <= pos, averaged over the group, in double. */
static void ref_weights(const trace_t *tr, const uint8_t *resident, uint32_t pos, double *w)
{
    uint32_t d = tr->d;

    memset(w, 0, (pos + 1) * sizeof *w);
    for (uint32_t g = 0; g < tr->group; g++) {
        const float *q = tr->q + ((size_t)pos * tr->group + g) * d;
        double max_logit = -INFINITY, sum = 0;
        double *logit = malloc((pos + 1) * sizeof *logit);

        for (uint32_t t = 0; t <= pos; t++) {
            double dot = 0;

            for (uint32_t i = 0; i < d; i++)
                dot += (double)q[i] * tr->k[(size_t)t * d + i];
            logit[t] = resident[t] ? dot / sqrt((double)d) : -INFINITY;
            if (logit[t] > max_logit)
                max_logit = logit[t];
        }
        for (uint32_t t = 0; t <= pos; t++)
            sum += resident[t] ? exp(logit[t] - max_logit) : 0;
        for (uint32_t t = 0; t <= pos; t++)
            w[t] += resident[t] ? exp(logit[t] - max_logit) / sum / tr->group : 0;
        free(logit);
    }
}

/* Removes from `resident` the position in [0, hi) with the lowest score,
** the oldest on ties. */
static void ref_evict_lowest(uint8_t *resident, const double *score, uint32_t hi)
{
    int64_t victim = -1;

    for (uint32_t t = 0; t < hi; t++) {
        if (resident[t] && (victim < 0 || score[t] < score[victim]))
            victim = t;
    }
    ck_assert_int_ge(victim, 0);
    resident[victim] = 0;
}

START_TEST(h2o_matches_reference)
{
    const uint32_t n_prompt = 80, n_q = 16;
    const uint32_t percents[] = {10, 25, 50, 0};
    trace_t tr = make_trace(160, 16, 3, 21);

    for (uint32_t c = 0; c < 4; c++) {
        uint32_t percent = percents[c], tokens = 12;
        kvs_params_t p = default_params(find_policy("h2o"));
        uint8_t *resident = calloc(tr.n, 1);
        double *score = calloc(tr.n, sizeof *score);
        double *w = calloc(tr.n, sizeof *w);
        sim_t s;

        set_param(&p, "budget", percent ? -(double)percent / 100 : tokens);
        sim_init(&s, "h2o", &p, &tr, 0);
        for (uint32_t t = 0; t < n_prompt; t++) {
            sim_append(&s);
            resident[t] = 1;
        }
        sim_end_prefill(&s, n_q);

        /* The reference: window queries score the dense prompt, then the
        ** lowest-scored positions older than the recent window go. */
        for (uint32_t pos = n_prompt - n_q; pos < n_prompt; pos++) {
            ref_weights(&tr, resident, pos, w);
            for (uint32_t t = 0; t <= pos; t++)
                score[t] += w[t];
        }
        for (uint32_t n = n_prompt; n <= tr.n; n++) {
            uint32_t b = ref_budget(percent, tokens, n);
            uint32_t recent = b - b / 2;

            if (n > n_prompt) {
                ck_assert_int_eq(s.n, n - 1);
                sim_append(&s);
                resident[n - 1] = 1;
            }
            while (count_set(resident, n) > b)
                ref_evict_lowest(resident, score, n - recent);
            for (uint32_t t = 0; t < n; t++)
                ck_assert_msg(s.keep[t] == resident[t], "budget %u%% n=%u position %u: %d vs %d",
                              percent, n, t, s.keep[t], resident[t]);
            for (uint32_t t = n - recent; t < n; t++)
                ck_assert(s.keep[t]);

            if (n > n_prompt) {
                sim_attend(&s);
                for (uint32_t g = 0; g < tr.group; g++) {
                    for (uint32_t t = 0; t < n; t++)
                        score[t] += (double)s.w[(size_t)g * n + t] / tr.group;
                }
            }
        }
        free(resident);
        free(score);
        free(w);
        sim_free(&s);
    }
    free_trace(&tr);
}
END_TEST

/* Evaluating the prompt steps counts each prompt query once, whether the
** last prompt step is attended before end_prefill or after it, as a replay
** does: the accumulated scores agree. */
START_TEST(h2o_counts_prompt_queries_once)
{
    const uint32_t n_prompt = 40;
    trace_t tr = make_trace(n_prompt, 8, 2, 23);
    kvs_params_t p = default_params(find_policy("h2o"));
    sim_t before, after;

    set_param(&p, "budget", -1.0);
    sim_init(&before, "h2o", &p, &tr, 0);
    sim_init(&after, "h2o", &p, &tr, 0);
    for (uint32_t t = 0; t < n_prompt; t++) {
        sim_append(&before);
        sim_attend(&before);
        sim_append(&after);
        if (t + 1 < n_prompt)
            sim_attend(&after);
    }
    sim_end_prefill(&before, n_prompt);
    sim_end_prefill(&after, n_prompt);
    sim_attend(&after);
    for (uint32_t t = 0; t < n_prompt; t++)
        ck_assert_double_eq_tol(kvs_h2o_score(before.state, t), kvs_h2o_score(after.state, t),
                                1e-6);
    sim_free(&before);
    sim_free(&after);
    free_trace(&tr);
}
END_TEST

START_TEST(h2o_heavy_zero_is_sliding_window)
{
    trace_t tr = make_trace(120, 8, 2, 8);
    kvs_params_t p = default_params(find_policy("h2o"));
    sim_t s;

    set_param(&p, "budget", 10);
    set_param(&p, "heavy", 0);
    sim_init(&s, "h2o", &p, &tr, 0);
    run_trace(&s, 40, 8, 0, 0);
    for (uint32_t t = 0; t < tr.n; t++)
        ck_assert_int_eq(s.keep[t], t >= tr.n - 10);
    sim_free(&s);
    free_trace(&tr);
}
END_TEST

START_TEST(tova_matches_reference)
{
    const uint32_t n_prompt = 60;
    const uint32_t percents[] = {10, 25, 50, 0};
    trace_t tr = make_trace(150, 16, 3, 31);

    for (uint32_t c = 0; c < 4; c++) {
        uint32_t percent = percents[c], tokens = 9;
        kvs_params_t p = default_params(find_policy("tova"));
        uint8_t *resident = calloc(tr.n, 1);
        double *w = calloc(tr.n, sizeof *w);
        sim_t s;

        set_param(&p, "budget", percent ? -(double)percent / 100 : tokens);
        sim_init(&s, "tova", &p, &tr, 0);
        for (uint32_t t = 0; t < n_prompt; t++) {
            sim_append(&s);
            resident[t] = 1;
        }
        sim_end_prefill(&s, 4);
        ref_weights(&tr, resident, n_prompt - 1, w);

        for (uint32_t n = n_prompt; n <= tr.n; n++) {
            uint32_t b = ref_budget(percent, tokens, n);

            if (n > n_prompt) {
                sim_append(&s);
                resident[n - 1] = 1;
                w[n - 1] = 0;
            }
            while (count_set(resident, n) > b)
                ref_evict_lowest(resident, w, n - 1);
            for (uint32_t t = 0; t < n; t++)
                ck_assert_msg(s.keep[t] == resident[t], "budget %u%% n=%u position %u: %d vs %d",
                              percent, n, t, s.keep[t], resident[t]);

            if (n > n_prompt) {
                sim_attend(&s);
                for (uint32_t t = 0; t < n; t++) {
                    w[t] = 0;
                    for (uint32_t g = 0; g < tr.group; g++)
                        w[t] += (double)s.w[(size_t)g * n + t] / tr.group;
                }
            }
        }
        free(resident);
        free(w);
        sim_free(&s);
    }
    free_trace(&tr);
}
END_TEST

/* A position every query attends strongly survives any budget in H2O and
** TOVA, while StreamingLLM without sinks loses it once it leaves the window. */
START_TEST(heavy_position_survives)
{
    trace_t tr = make_trace(200, 8, 2, 41);
    const char *names[] = {"h2o", "tova", "streamingllm"};

    /* Position 5's key is the shared query direction, scaled up. */
    for (uint32_t i = 0; i < tr.d; i++) {
        double sum = 0;

        for (uint32_t t = 0; t < tr.n; t++)
            sum += tr.q[(size_t)t * tr.group * tr.d + i];
        tr.k[5 * tr.d + i] = (float)(3.0 * sum / tr.n);
    }
    for (uint32_t i = 0; i < 3; i++) {
        kvs_params_t p = default_params(find_policy(names[i]));
        sim_t s;

        set_param(&p, "budget", 8);
        if (i == 2)
            set_param(&p, "sinks", 0);
        sim_init(&s, names[i], &p, &tr, 0);
        run_trace(&s, 50, 16, 0, 0);
        ck_assert_uint_eq(count_set(s.keep, tr.n), 8);
        ck_assert_int_eq(s.keep[5], i < 2);
        sim_free(&s);
    }
    free_trace(&tr);
}
END_TEST

/* ---- key-norm ------------------------------------------------------------ */

static double key_norm(const trace_t *tr, uint32_t t)
{
    double sum = 0;

    for (uint32_t i = 0; i < tr->d; i++)
        sum += (double)tr->k[(size_t)t * tr->d + i] * tr->k[(size_t)t * tr->d + i];
    return sqrt(sum);
}

START_TEST(keynorm_keeps_lowest_norms)
{
    const uint32_t budget = 12;
    trace_t tr = make_trace(140, 8, 2, 51);
    kvs_params_t p = default_params(find_policy("keynorm"));
    sim_t s;

    set_param(&p, "budget", budget);
    sim_init(&s, "keynorm", &p, &tr, 0);
    for (uint32_t n = 1; n <= tr.n; n++) {
        sim_append(&s);
        if (n == 50)
            sim_end_prefill(&s, 4);
        if (n > 50)
            sim_attend(&s);

        /* Kept: position n-1 and the budget-1 lowest norms before it, i.e.
        ** every earlier position with fewer than budget-1 lower norms. */
        ck_assert(s.keep[n - 1]);
        for (uint32_t t = 0; t + 1 < n; t++) {
            uint32_t lower = 0;

            for (uint32_t u = 0; u + 1 < n; u++)
                lower += key_norm(&tr, u) < key_norm(&tr, t) ||
                         (key_norm(&tr, u) == key_norm(&tr, t) && u > t);
            ck_assert_msg(s.keep[t] == (lower < budget - 1), "n=%u position %u: keep %d, %u lower",
                          n, t, s.keep[t], lower);
        }
    }
    sim_free(&s);
    free_trace(&tr);
}
END_TEST

/* ---- Quest ------------------------------------------------------------- */

START_TEST(quest_bound_not_below_max_logit)
{
    const char *dtypes[] = {"f32", "f16", "bf16"};
    const uint32_t pages[] = {1, 4, 16};
    trace_t tr = make_trace(130, 32, 2, 61);

    for (uint32_t dt = 0; dt < 3; dt++) {
        for (uint32_t pg = 0; pg < 3; pg++) {
            kvs_params_t p = default_params(find_policy("quest"));
            sim_t s;

            set_param(&p, "dtype", dt);
            set_param(&p, "page", pages[pg]);
            sim_init(&s, "quest", &p, &tr, 0);
            for (uint32_t t = 0; t < tr.n; t++)
                sim_append(&s);

            for (uint32_t qi = 0; qi < 40; qi++) {
                const float *q = tr.q + (size_t)qi * tr.group * tr.d;

                for (uint32_t t = 0; t < tr.n; t++) {
                    double dot = 0;
                    double bound = kvs_quest_page_bound(s.state, q, t / pages[pg]);

                    for (uint32_t i = 0; i < tr.d; i++)
                        dot += (double)q[i] * tr.k[(size_t)t * tr.d + i];
                    ck_assert_msg(bound >= dot, "%s page %u position %u: bound %.9g < logit %.9g",
                                  dtypes[dt], pages[pg], t, bound, dot);

                    /* A page of one key in f32 bounds it exactly. */
                    if (pages[pg] == 1 && dt == 0)
                        ck_assert_double_eq_tol(bound, dot, 1e-9 * (1 + fabs(dot)));
                }
            }
            ck_assert_uint_eq(s.policy->stored_bytes(s.state),
                              (tr.n + pages[pg] - 1) / pages[pg] * 2 * tr.d * (dt ? 2 : 4));
            sim_free(&s);
        }
    }
    free_trace(&tr);
}
END_TEST

/* A page of two keys where one is the larger in every coordinate the query
** weighs positively: the bound is that key's logit, so storing the bounds
** rounded to nearest in f16 or bf16 would fall below it. */
START_TEST(quest_bound_tight_for_extreme_key)
{
    trace_t tr = make_trace(2, 32, 1, 65);

    for (uint32_t dt = 0; dt < 3; dt++) {
        kvs_params_t p = default_params(find_policy("quest"));
        double dot = 0;
        sim_t s;

        for (uint32_t i = 0; i < tr.d; i++) {
            tr.k[i] = 0.1f + (float)rng_uniform();
            tr.k[tr.d + i] = tr.k[i] - (tr.q[i] > 0 ? 0.75f : -0.75f);
            dot += (double)tr.q[i] * tr.k[i];
        }
        set_param(&p, "dtype", dt);
        set_param(&p, "page", 2);
        sim_init(&s, "quest", &p, &tr, 0);
        sim_append(&s);
        sim_append(&s);
        ck_assert_double_ge(kvs_quest_page_bound(s.state, tr.q, 0), dot);
        if (dt == 0)
            ck_assert_double_eq(kvs_quest_page_bound(s.state, tr.q, 0), dot);
        sim_free(&s);
    }
    free_trace(&tr);
}
END_TEST

START_TEST(quest_attends_top_pages)
{
    const uint32_t page = 8, percent = 25, min_pages = 3;
    trace_t tr = make_trace(200, 16, 2, 71);
    kvs_params_t p = default_params(find_policy("quest"));
    sim_t s;

    set_param(&p, "budget", -(double)percent / 100);
    set_param(&p, "page", page);
    sim_init(&s, "quest", &p, &tr, 0);
    for (uint32_t t = 0; t < 40; t++)
        sim_append(&s);
    sim_end_prefill(&s, 8);

    while (s.n < tr.n) {
        uint32_t n = s.n + 1, n_pages = (n + page - 1) / page;
        uint32_t k = (ref_budget(percent, 0, n) + page - 1) / page;
        double bound[64];
        uint8_t chosen[64] = {0};

        sim_append(&s);
        sim_attend(&s);
        ck_assert_uint_eq(count_set(s.keep, n), n);

        /* Independent ranking: page bounds from the keys, maximum over the
        ** group, top k pages. */
        for (uint32_t pg = 0; pg < n_pages; pg++) {
            bound[pg] = -INFINITY;
            for (uint32_t g = 0; g < tr.group; g++) {
                const float *q = tr.q + ((size_t)(n - 1) * tr.group + g) * tr.d;
                double b = 0;

                for (uint32_t i = 0; i < tr.d; i++) {
                    float lo = INFINITY, hi = -INFINITY;

                    for (uint32_t t = pg * page; t < n && t < (pg + 1) * page; t++) {
                        lo = fminf(lo, tr.k[(size_t)t * tr.d + i]);
                        hi = fmaxf(hi, tr.k[(size_t)t * tr.d + i]);
                    }
                    b += fmax((double)q[i] * lo, (double)q[i] * hi);
                }
                bound[pg] = fmax(bound[pg], b);
            }
        }
        if (k < min_pages)
            k = min_pages;
        if (k > n_pages)
            k = n_pages;
        for (uint32_t r = 0; r < k; r++) {
            int64_t best = -1;

            for (uint32_t pg = 0; pg < n_pages; pg++) {
                if (!chosen[pg] && (best < 0 || bound[pg] > bound[best]))
                    best = pg;
            }
            chosen[best] = 1;
        }
        for (uint32_t t = 0; t < n; t++)
            ck_assert_msg(s.attend[t] == chosen[t / page], "n=%u position %u: attend %d", n, t,
                          s.attend[t]);
    }
    sim_free(&s);
    free_trace(&tr);
}
END_TEST

START_TEST(quest_dense_layers_attend_all)
{
    trace_t tr = make_trace(100, 8, 2, 81);
    kvs_params_t p = default_params(find_policy("quest"));
    sim_t s;

    set_param(&p, "budget", 4);
    set_param(&p, "dense_layers", 2);
    sim_init(&s, "quest", &p, &tr, 1);
    run_trace(&s, 30, 4, 0, 1);
    sim_free(&s);

    free_trace(&tr);

    /* Layer 2 pages: 96 positions are 6 full pages, of which 3 are the
    ** fewest attended. */
    tr = make_trace(96, 8, 2, 82);
    sim_init(&s, "quest", &p, &tr, 2);
    for (uint32_t t = 0; t < tr.n; t++)
        sim_append(&s);
    sim_attend(&s);
    ck_assert_uint_eq(count_set(s.attend, tr.n), 3 * 16);
    sim_free(&s);
    free_trace(&tr);
}
END_TEST

/* ---- costs follow state -------------------------------------------------- */

START_TEST(costs_follow_state)
{
    const double budgets[] = {-0.1, -0.25, -0.5, 20, 1000};
    const uint32_t contexts[] = {64, 200};
    kvs_kernel_dims_t dims = {16, 3, 4, 1, 0, 0, 1};

    for (uint32_t i = 0; i < N_POLICIES; i++) {
        for (uint32_t b = 0; b < 5; b++) {
            for (uint32_t c = 0; c < 2; c++) {
                trace_t tr = make_trace(contexts[c], 16, 3, 91 + c);
                kvs_params_t p = default_params(find_policy(all_policies[i]));
                kvs_part_cost_t cost;
                uint64_t resident;
                sim_t s;

                set_param(&p, "budget", budgets[b]);
                sim_init(&s, all_policies[i], &p, &tr, 0);
                for (uint32_t t = 0; t < tr.n; t++)
                    sim_append(&s);
                sim_end_prefill(&s, 16);
                s.policy->cost(&p, &dims, tr.n, &cost, &resident);

                /* Quest keeps everything; the others keep what they report. */
                ck_assert_msg(count_set(s.keep, tr.n) == resident, "%s budget %g n=%u: %u kept, cost says %lu",
                              all_policies[i], budgets[b], tr.n, count_set(s.keep, tr.n),
                              (unsigned long)resident);
                ck_assert_uint_eq(s.policy->stored_bytes(s.state), cost.stored_bytes);
                sim_free(&s);
                free_trace(&tr);
            }
        }
    }
}
END_TEST

START_TEST(cost_state_bytes_by_policy)
{
    kvs_kernel_dims_t dims = {64, 3, 30, 3, 5, 0, 1};
    kvs_part_cost_t cost;
    uint64_t resident;
    kvs_params_t p;

    /* H2O: one float score per resident position, 25% of 2048 = 512. */
    p = default_params(find_policy("h2o"));
    set_param(&p, "budget", -0.25);
    find_policy("h2o")->cost(&p, &dims, 2048, &cost, &resident);
    ck_assert_uint_eq(resident, 512);
    ck_assert_uint_eq(cost.stored_bytes, 512 * 4);
    ck_assert_double_eq_tol(cost.bytes_per_token, 1.0, 1e-12);

    /* Quest: 2 * 64 bf16 values per page of 16, whole cache resident. */
    p = default_params(find_policy("quest"));
    set_param(&p, "dtype", 2);
    find_policy("quest")->cost(&p, &dims, 2048, &cost, &resident);
    ck_assert_uint_eq(resident, 2048);
    ck_assert_uint_eq(cost.stored_bytes, 128 * 256);
    ck_assert_uint_eq(cost.read_bytes, 128 * 256);
    ck_assert_double_eq_tol(cost.bytes_per_token, 16.0, 1e-12);
    ck_assert_uint_eq(cost.attended, (2048 / 5 + 15) / 16 * 16);   /* 409 positions, rounded up to pages */

    /* StreamingLLM: 10 tokens of budget are 4 sinks and a window of 6. */
    p = default_params(find_policy("streamingllm"));
    set_param(&p, "budget", 10);
    find_policy("streamingllm")->cost(&p, &dims, 2048, &cost, &resident);
    ck_assert_uint_eq(resident, 10);
    ck_assert_uint_eq(cost.stored_bytes, 0);

    /* SnapKV: the budget of the prompt, no policy state. */
    p = default_params(find_policy("snapkv"));
    set_param(&p, "budget", -0.1);
    find_policy("snapkv")->cost(&p, &dims, 2048, &cost, &resident);
    ck_assert_uint_eq(resident, 204);
    ck_assert_uint_eq(cost.stored_bytes, 0);
}
END_TEST

/* Quest keeps the whole cache but a step reads only the selected pages:
** through the framework, bytes read are the page bounds plus the selected
** positions' dense keys and values, far below a dense step. */
START_TEST(quest_reads_selected_pages_only)
{
    kvs_kernel_dims_t dims = {64, 3, 30, 3, 5, 0, 1};
    kvs_kernel_spec_t *quest, *dense;
    kvs_kernel_cost_t q, d;

    ck_assert_int_eq(kvs_kernel_spec_parse("quest:budget=64,dtype=bf16/dense:dtype=bf16", &quest),
                     KVS_OK);
    ck_assert_int_eq(kvs_kernel_spec_parse("dense:dtype=bf16", &dense), KVS_OK);
    ck_assert_int_eq(kvs_kernel_spec_cost(quest, &dims, 8192, &q), KVS_OK);
    ck_assert_int_eq(kvs_kernel_spec_cost(dense, &dims, 8192, &d), KVS_OK);

    /* 8192 / 16 pages of 2 * 64 bf16 bounds, then 4 pages of 16 positions
    ** with 64 bf16 values of K and of V. */
    ck_assert_uint_eq(q.read_bytes, 512 * 256 + 64 * 2 * 128);
    ck_assert_uint_eq(d.read_bytes, 8192 * 2 * 128);
    ck_assert_uint_eq(q.stored_bytes, d.stored_bytes + 512 * 256);

    /* With the first 2 of 30 layers dense, the per-stream cost is the mean
    ** over layers: 28/30 of the sparse step and 2/30 of a dense one. */
    kvs_kernel_spec_t *mixed;
    kvs_kernel_cost_t m;
    ck_assert_int_eq(kvs_kernel_spec_parse("quest:budget=64,dtype=bf16,dense_layers=2/dense:dtype=bf16",
                                           &mixed), KVS_OK);
    ck_assert_int_eq(kvs_kernel_spec_cost(mixed, &dims, 8192, &m), KVS_OK);
    double want = 28.0 / 30 * (512 * 256 + 64 * 2 * 128) + 2.0 / 30 * (8192 * 2 * 128);
    ck_assert_double_eq_tol((double)m.read_bytes, want, want * 1e-3);
    kvs_kernel_spec_free(mixed);

    /* More dense layers than the model has is an error, not a silent full
    ** read. */
    ck_assert_int_eq(kvs_kernel_spec_parse("quest:dense_layers=31", &mixed), KVS_OK);
    ck_assert_int_eq(kvs_kernel_spec_cost(mixed, &dims, 8192, &m), KVS_ERR_KERNEL_SPEC);
    kvs_kernel_spec_free(mixed);
    kvs_kernel_spec_free(quest);
    kvs_kernel_spec_free(dense);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("select");
    TCase *tc = tcase_create("core");

    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, table_names_unique_with_hooks);
    tcase_add_test(tc, budget_resolves_tokens_and_percent);
    tcase_add_test(tc, evict_lowest_oldest_on_ties);
    tcase_add_test(tc, check_rejects_bad_combinations);
    tcase_add_test(tc, full_budget_equals_dense);
    tcase_add_test(tc, streamingllm_keeps_sinks_and_window);
    tcase_add_test(tc, snapkv_pooling_hand_trace);
    tcase_add_test(tc, snapkv_gqa_hand_trace);
    tcase_add_test(tc, snapkv_keeps_decode_positions);
    tcase_add_test(tc, h2o_matches_reference);
    tcase_add_test(tc, h2o_counts_prompt_queries_once);
    tcase_add_test(tc, h2o_heavy_zero_is_sliding_window);
    tcase_add_test(tc, tova_matches_reference);
    tcase_add_test(tc, heavy_position_survives);
    tcase_add_test(tc, keynorm_keeps_lowest_norms);
    tcase_add_test(tc, quest_bound_not_below_max_logit);
    tcase_add_test(tc, quest_bound_tight_for_extreme_key);
    tcase_add_test(tc, quest_reads_selected_pages_only);
    tcase_add_test(tc, quest_attends_top_pages);
    tcase_add_test(tc, quest_dense_layers_attend_all);
    tcase_add_test(tc, costs_follow_state);
    tcase_add_test(tc, cost_state_bytes_by_policy);
    suite_add_tcase(s, tc);
    return kvs_test_run(s);
}
