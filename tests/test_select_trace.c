/*
** test_select_trace.c: selection policies through the kernel framework on
** real attention from the stories260K model.
**
** The model runs a 64-token prompt and decodes the rest of its stored
** greedy continuation, recording q, k and v of every layer and position.
** Every (layer, KV head) stream is then replayed through kvs_kernel_* with
** each policy spec; each decode step is compared with exact attention
** computed here. The suite prints attention mass kept and top-8 recall per
** policy and budget to stderr.
*/
#include "testutil.h"

#include "capture/forward.h"
#include "capture/model.h"
#include "kernels/kernel.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PROMPT 64
#define WINDOW 64
#define MAX_POS 256

/* ---- the recorded trace ------------------------------------------------ */

typedef struct real_trace {
    uint32_t n, n_layers, n_heads, n_kv_heads, head_dim;
    float *q, *k, *v;   /* (layer, pos, heads * head_dim) */
} real_trace_t;

static real_trace_t trace;

static float *row(float *base, uint32_t layer, uint32_t pos, uint32_t width)
{
    return base + ((size_t)layer * MAX_POS + pos) * width;
}

static kvs_status_e record_rows(void *ctx, const kvs_forward_rows_t *rows)
{
    uint32_t qw = trace.n_heads * trace.head_dim, kw = trace.n_kv_heads * trace.head_dim;

    for (uint32_t r = 0; r < rows->n_rows; r++) {
        uint32_t pos = rows->pos + r;

        memcpy(row(trace.q, rows->layer, pos, qw), rows->q + (size_t)r * qw, qw * sizeof(float));
        memcpy(row(trace.k, rows->layer, pos, kw), rows->k + (size_t)r * kw, kw * sizeof(float));
        memcpy(row(trace.v, rows->layer, pos, kw), rows->v + (size_t)r * kw, kw * sizeof(float));
    }
    return KVS_OK;
}

/* Reads the stored greedy ids and runs BOS plus them through the model:
** the prompt in one batch, then one token at a time as decoding does. */
static void record_trace(const char *model_dir, const char *ids_path)
{
    int32_t ids[MAX_POS];
    uint32_t n = 0;
    FILE *f = fopen(ids_path, "r");
    kvs_model_t *m;
    kvs_forward_t *fw;
    const kvs_model_config_t *cfg;

    if (!f) {
        fprintf(stderr, "cannot open %s\n", ids_path);
        exit(1);
    }
    ids[n++] = 1;
    while (n < MAX_POS && fscanf(f, "%d", &ids[n]) == 1)
        n++;
    fclose(f);

    if (kvs_model_load(model_dir, &m) != KVS_OK) {
        fprintf(stderr, "loading %s failed: %s\n", model_dir, kvs_error_message());
        exit(1);
    }
    cfg = kvs_model_get_config(m);
    trace.n = n;
    trace.n_layers = cfg->n_layers;
    trace.n_heads = cfg->n_heads;
    trace.n_kv_heads = cfg->n_kv_heads;
    trace.head_dim = cfg->head_dim;
    trace.q = calloc((size_t)trace.n_layers * MAX_POS * trace.n_heads * trace.head_dim, sizeof(float));
    trace.k = calloc((size_t)trace.n_layers * MAX_POS * trace.n_kv_heads * trace.head_dim,
                     sizeof(float));
    trace.v = calloc((size_t)trace.n_layers * MAX_POS * trace.n_kv_heads * trace.head_dim,
                     sizeof(float));

    if (kvs_forward_create(m, MAX_POS, 1, &fw) != KVS_OK) {
        fprintf(stderr, "forward state failed: %s\n", kvs_error_message());
        exit(1);
    }
    kvs_forward_set_observer(fw, record_rows, NULL);
    if (kvs_forward_run(fw, ids, PROMPT, NULL) != KVS_OK) {
        fprintf(stderr, "prefill failed: %s\n", kvs_error_message());
        exit(1);
    }
    for (uint32_t t = PROMPT; t < n; t++) {
        if (kvs_forward_run(fw, ids + t, 1, NULL) != KVS_OK) {
            fprintf(stderr, "decode failed: %s\n", kvs_error_message());
            exit(1);
        }
    }
    kvs_forward_destroy(fw);
    kvs_model_destroy(m);
}

/* ---- replay of one stream through a kernel ----------------------------- */

/* Per-stream totals over decode steps; per query head for the fidelity. */
typedef struct replay_stats {
    double mass_kept, recall8, attended_fraction;
    uint32_t n_head_steps;
    uint64_t stored_bytes;   /* instance bytes after the last step */
    uint64_t stored_after_prefill;
    uint32_t weight_outside_attended;   /* nonzero weights with logit -inf */
} replay_stats_t;

/* Exact weights of query head qh at position pos over [0, pos]. */
static void exact_weights(uint32_t layer, uint32_t qh, uint32_t pos, double *p)
{
    uint32_t d = trace.head_dim, kv = qh / (trace.n_heads / trace.n_kv_heads);
    const float *q = row(trace.q, layer, pos, trace.n_heads * d) + (size_t)qh * d;
    double max_logit = -INFINITY, sum = 0;

    for (uint32_t t = 0; t <= pos; t++) {
        const float *k = row(trace.k, layer, t, trace.n_kv_heads * d) + (size_t)kv * d;
        double dot = 0;

        for (uint32_t i = 0; i < d; i++)
            dot += (double)q[i] * k[i];
        p[t] = dot / sqrt((double)d);
        if (p[t] > max_logit)
            max_logit = p[t];
    }
    for (uint32_t t = 0; t <= pos; t++) {
        p[t] = exp(p[t] - max_logit);
        sum += p[t];
    }
    for (uint32_t t = 0; t <= pos; t++)
        p[t] /= sum;
}

/* Fraction of the exact top-8 positions attended (finite logit). */
static double recall_top8(const double *p, const float *logits, uint32_t n)
{
    uint8_t taken[MAX_POS] = {0};
    uint32_t k = n < 8 ? n : 8, hit = 0;

    for (uint32_t r = 0; r < k; r++) {
        int64_t best = -1;

        for (uint32_t t = 0; t < n; t++) {
            if (!taken[t] && (best < 0 || p[t] > p[best]))
                best = t;
        }
        taken[best] = 1;
        hit += isfinite(logits[best]) != 0;
    }
    return (double)hit / k;
}

/* Replays stream (layer, kv) through spec. When weights_log is given, the
** weights of every decode step go there as (step, group, MAX_POS) and the
** outputs to out_log as (step, group, d). */
static void replay_stream(const kvs_kernel_spec_t *spec, uint32_t layer, uint32_t kv,
                          replay_stats_t *st, float *weights_log, float *out_log)
{
    uint32_t d = trace.head_dim, group = trace.n_heads / trace.n_kv_heads;
    uint32_t kw = trace.n_kv_heads * d, qw = trace.n_heads * d;
    kvs_kernel_dims_t dims = {d, group, trace.n_layers, trace.n_kv_heads, layer, kv, 7};
    float *q_window = malloc((size_t)WINDOW * group * d * sizeof(float));
    float *logits = malloc((size_t)group * MAX_POS * sizeof(float));
    float *w = malloc((size_t)group * MAX_POS * sizeof(float));
    float *out = malloc((size_t)group * d * sizeof(float));
    double p[MAX_POS];
    kvs_kernel_t *kernel;
    uint32_t n_q = PROMPT < WINDOW ? PROMPT : WINDOW;

    memset(st, 0, sizeof *st);
    ck_assert_int_eq(kvs_kernel_create(spec, &dims, &kernel), KVS_OK);
    for (uint32_t t = 0; t < PROMPT; t++) {
        const float *k = row(trace.k, layer, t, kw) + (size_t)kv * d;

        if (kvs_kernel_append(kernel, k, k, row(trace.v, layer, t, kw) + (size_t)kv * d) != KVS_OK)
            ck_abort_msg("position %u: %s", t, kvs_error_message());
    }
    for (uint32_t j = 0; j < n_q; j++)
        memcpy(q_window + (size_t)j * group * d,
               row(trace.q, layer, PROMPT - n_q + j, qw) + (size_t)kv * group * d,
               (size_t)group * d * sizeof(float));
    ck_assert_int_eq(kvs_kernel_end_prefill(kernel, q_window, n_q), KVS_OK);
    st->stored_after_prefill = kvs_kernel_stored_bytes(kernel);

    for (uint32_t pos = PROMPT; pos < trace.n; pos++) {
        const float *k = row(trace.k, layer, pos, kw) + (size_t)kv * d;
        const float *q = row(trace.q, layer, pos, qw) + (size_t)kv * group * d;
        kvs_attend_out_t res = {logits, w, out};
        uint32_t n = pos + 1;

        if (kvs_kernel_append(kernel, k, k, row(trace.v, layer, pos, kw) + (size_t)kv * d) != KVS_OK ||
            kvs_kernel_attend(kernel, q, &res) != KVS_OK)
            ck_abort_msg("position %u: %s", pos, kvs_error_message());

        for (uint32_t g = 0; g < group; g++) {
            const float *wg = w + (size_t)g * n;
            double kept = 0;
            uint32_t attended = 0;

            exact_weights(layer, kv * group + g, pos, p);
            for (uint32_t t = 0; t < n; t++) {
                int on = isfinite(logits[(size_t)g * n + t]);

                /* Counted, not asserted here: Check reports every passing
                ** assertion to its parent process, which costs a write. */
                st->weight_outside_attended += !on && wg[t] != 0;
                kept += on ? p[t] : 0;
                attended += on;
            }
            st->mass_kept += kept;
            st->recall8 += recall_top8(p, logits + (size_t)g * n, n);
            st->attended_fraction += (double)attended / n;
            st->n_head_steps++;
        }
        if (weights_log) {
            memcpy(weights_log + (size_t)(pos - PROMPT) * group * MAX_POS, w,
                   (size_t)group * n * sizeof(float));
            memcpy(out_log + (size_t)(pos - PROMPT) * group * d, out, (size_t)group * d * sizeof(float));
        }
    }
    st->stored_bytes = kvs_kernel_stored_bytes(kernel);
    ck_assert_uint_eq(kvs_kernel_n_tokens(kernel), trace.n);
    ck_assert_uint_eq(st->weight_outside_attended, 0);
    kvs_kernel_destroy(kernel);
    free(q_window);
    free(logits);
    free(w);
    free(out);
}

static kvs_kernel_spec_t *parse(const char *text)
{
    kvs_kernel_spec_t *spec = NULL;

    ck_assert_msg(kvs_kernel_spec_parse(text, &spec) == KVS_OK, "%s: %s", text,
                  kvs_error_message());
    return spec;
}

static const char *const policies[] = {"streamingllm", "h2o", "snapkv", "tova", "quest",
                                       "keynorm"};
#define N_POLICIES (sizeof policies / sizeof policies[0])

/* ---- tests ----------------------------------------------------------------- */

/* A full budget reproduces the codecs alone bit for bit: the same weights
** and outputs at every decode step of every stream. */
static void check_full_budget(const char *codec)
{
    uint32_t group = trace.n_heads / trace.n_kv_heads, steps = trace.n - PROMPT;
    size_t wsize = (size_t)steps * group * MAX_POS, osize = (size_t)steps * group * trace.head_dim;
    float *w_ref = calloc(wsize, sizeof(float)), *o_ref = calloc(osize, sizeof(float));
    float *w_pol = calloc(wsize, sizeof(float)), *o_pol = calloc(osize, sizeof(float));
    kvs_kernel_spec_t *ref = parse(codec);
    replay_stats_t st;

    for (uint32_t layer = 0; layer < trace.n_layers; layer += 2) {
        for (uint32_t kv = 0; kv < trace.n_kv_heads; kv += 3) {
            replay_stream(ref, layer, kv, &st, w_ref, o_ref);
            for (uint32_t i = 0; i < N_POLICIES; i++) {
                char text[128];
                kvs_kernel_spec_t *spec;

                snprintf(text, sizeof text, "%s:budget=100%%/%s", policies[i], codec);
                spec = parse(text);
                memset(w_pol, 0, wsize * sizeof(float));
                replay_stream(spec, layer, kv, &st, w_pol, o_pol);
                ck_assert_msg(memcmp(w_ref, w_pol, wsize * sizeof(float)) == 0,
                              "%s layer %u head %u: weights differ from %s", text, layer, kv, codec);
                ck_assert_msg(memcmp(o_ref, o_pol, osize * sizeof(float)) == 0,
                              "%s layer %u head %u: outputs differ from %s", text, layer, kv, codec);
                ck_assert_double_eq(st.mass_kept / st.n_head_steps, 1.0);
                kvs_kernel_spec_free(spec);
            }
        }
    }
    kvs_kernel_spec_free(ref);
    free(w_ref);
    free(o_ref);
    free(w_pol);
    free(o_pol);
}

START_TEST(full_budget_equals_dense_codec)
{
    check_full_budget("dense");
}
END_TEST

START_TEST(full_budget_equals_quanto_codec)
{
    check_full_budget("quanto:bits=4,group=8");
}
END_TEST

/* StreamingLLM's kept mass is exactly the exact weight on the sinks and
** the window, computed here from the positions alone. */
START_TEST(streamingllm_mass_is_sinks_and_window)
{
    kvs_kernel_spec_t *spec = parse("streamingllm:budget=20,sinks=4");
    uint32_t group = trace.n_heads / trace.n_kv_heads;
    double p[MAX_POS];

    for (uint32_t layer = 0; layer < trace.n_layers; layer++) {
        for (uint32_t kv = 0; kv < trace.n_kv_heads; kv++) {
            replay_stats_t st;
            double expected = 0;

            replay_stream(spec, layer, kv, &st, NULL, NULL);
            for (uint32_t pos = PROMPT; pos < trace.n; pos++) {
                for (uint32_t g = 0; g < group; g++) {
                    exact_weights(layer, kv * group + g, pos, p);
                    for (uint32_t t = 0; t <= pos; t++)
                        expected += (t < 4 || t + 16 > pos) ? p[t] : 0;
                }
            }
            ck_assert_double_eq_tol(st.mass_kept, expected, 1e-6 * st.n_head_steps);
            ck_assert_double_lt(st.mass_kept / st.n_head_steps, 1.0);
        }
    }
    kvs_kernel_spec_free(spec);
}
END_TEST

/* Stored bytes of an instance follow the policy: resident positions of a
** dense F32 cache plus the policy's own state, and the analytic cost after
** the prefill agrees with the instance. */
START_TEST(stored_bytes_follow_policy_state)
{
    const char *specs[] = {"h2o:budget=25%/dense", "keynorm:budget=25%/dense",
                           "snapkv:budget=25%,window=16/dense", "tova:budget=25%/dense",
                           "streamingllm:budget=25%/dense", "quest:budget=25%/dense",
                           "quest:budget=25%,dtype=bf16/dense"};
    const uint64_t per_token = 2 * 8 * 4;   /* K and V, d = 8, F32 */
    const uint64_t resident = PROMPT / 4;
    const uint64_t expected[] = {
        resident * (per_token + 4),   /* h2o: one float score per position */
        resident * (per_token + 4),   /* keynorm: one float norm */
        resident * per_token,         /* snapkv: the kept set */
        resident * per_token,         /* tova */
        resident * per_token,         /* streamingllm */
        PROMPT * per_token + (PROMPT / 16) * 2 * 8 * 4,   /* quest f32 bounds */
        PROMPT * per_token + (PROMPT / 16) * 2 * 8 * 2,   /* quest bf16 bounds */
    };
    kvs_kernel_dims_t dims = {trace.head_dim, trace.n_heads / trace.n_kv_heads, trace.n_layers,
                              trace.n_kv_heads, 1, 1, 7};

    ck_assert_uint_eq(trace.head_dim, 8);
    for (uint32_t i = 0; i < sizeof specs / sizeof specs[0]; i++) {
        kvs_kernel_spec_t *spec = parse(specs[i]);
        kvs_kernel_cost_t cost;
        replay_stats_t st;

        replay_stream(spec, 1, 1, &st, NULL, NULL);
        ck_assert_msg(st.stored_after_prefill == expected[i], "%s: %lu bytes after prefill, expected %lu",
                      specs[i], (unsigned long)st.stored_after_prefill, (unsigned long)expected[i]);
        ck_assert_int_eq(kvs_kernel_spec_cost(spec, &dims, PROMPT, &cost), KVS_OK);
        ck_assert_msg(cost.stored_bytes == expected[i], "%s: cost says %lu bytes, expected %lu",
                      specs[i], (unsigned long)cost.stored_bytes, (unsigned long)expected[i]);
        kvs_kernel_spec_free(spec);
    }
}
END_TEST

/* Mass kept and recall per policy, budget and codec over every stream; the
** table goes to stderr. Every figure is a fraction, and a larger budget of
** the same policy never attends fewer positions. */
START_TEST(mass_kept_and_recall_table)
{
    const char *budgets[] = {"10%", "25%", "50%"};
    const char *codecs[] = {"dense", "quanto:bits=4,group=8"};

    fprintf(stderr, "\nstories260K, prompt %u, %u decode steps, %u layers x %u KV heads\n", PROMPT,
            trace.n - PROMPT, trace.n_layers, trace.n_kv_heads);
    fprintf(stderr, "%-36s %10s %10s %10s\n", "spec", "mass_kept", "recall8", "attended");
    for (uint32_t c = 0; c < 2; c++) {
        for (uint32_t i = 0; i < N_POLICIES; i++) {
            double last_attended = 0;

            for (uint32_t b = 0; b < 3; b++) {
                char text[128];
                kvs_kernel_spec_t *spec;
                double mass = 0, recall = 0, attended = 0;
                uint32_t steps = 0;

                snprintf(text, sizeof text, "%s:budget=%s/%s", policies[i], budgets[b], codecs[c]);
                spec = parse(text);
                for (uint32_t layer = 0; layer < trace.n_layers; layer++) {
                    for (uint32_t kv = 0; kv < trace.n_kv_heads; kv++) {
                        replay_stats_t st;

                        replay_stream(spec, layer, kv, &st, NULL, NULL);
                        mass += st.mass_kept;
                        recall += st.recall8;
                        attended += st.attended_fraction;
                        steps += st.n_head_steps;
                    }
                }
                mass /= steps;
                recall /= steps;
                attended /= steps;
                fprintf(stderr, "%-36s %10.4f %10.4f %10.4f\n", text, mass, recall, attended);
                ck_assert_double_ge(mass, 0);
                ck_assert_double_le(mass, 1 + 1e-9);
                ck_assert_double_ge(recall, 0);
                ck_assert_double_le(recall, 1);
                ck_assert_double_ge(attended, last_attended);
                last_attended = attended;
                kvs_kernel_spec_free(spec);
            }
        }
    }
}
END_TEST

int main(void)
{
    const char *model = kvs_test_require_shared("models/stories260K");
    char model_dir[4096];
    Suite *s = suite_create("select_trace");
    TCase *tc = tcase_create("core");

    snprintf(model_dir, sizeof model_dir, "%s", model);
    record_trace(model_dir, kvs_test_require_shared("models/stories260K/expected/greedy200_ids.txt"));

    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, full_budget_equals_dense_codec);
    tcase_add_test(tc, full_budget_equals_quanto_codec);
    tcase_add_test(tc, streamingllm_mass_is_sinks_and_window);
    tcase_add_test(tc, stored_bytes_follow_policy_state);
    tcase_add_test(tc, mass_kept_and_recall_table);
    suite_add_tcase(s, tc);
    return kvs_test_run(s);
}
