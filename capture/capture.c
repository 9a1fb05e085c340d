/*
** capture.c: run a model over a prompt and stream q, k, k_pre and v into a
** trace.
**
** Positions: the trace contains n_prompt + n_generated positions. Every
** generated token, the last one included, is fed back through the model,
** so each generated token has its own q/k/v rows; the logits of the last
** one are not computed because nothing is sampled from them.
**
** Metadata keys (JSON object): format "kvsim-trace", engine_version,
** capture_time (UTC ISO 8601), model (kvs_model_name), model_path, synthetic,
** weight_dtype, model_config (the config.json fields the forward pass
** uses), dtype (trace storage), tokenizer (when tokenizer.json exists),
** prompt_ids, generated_ids, generated_text (when tokenizer.json loads),
** n_prompt, n_generated, n_positions,
** prompt_text / rendered_prompt / chat_template (when given), sampling
** {greedy, temperature, top_p, seed, prng}, eos_id, eos_ids, stop_at_eos,
** stopped_at_eos, threads, prefill_seconds, decode_seconds.
*/
#include "capture.h"

#include "forward.h"
#include "model.h"
#include "pool.h"
#include "sample.h"
#include "tokenizer.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

typedef struct recorder {
    kvs_trace_writer_t *writer;
    uint32_t q_width, kv_width;
} recorder_t;

/* The writer rejects NaN and Inf too, but checking here first lets the
** message blame the model's computation rather than the trace file. */
static kvs_status_e check_finite(const float *rows, uint32_t n_rows, uint32_t width,
                                 kvs_kind_e kind, const kvs_forward_rows_t *r)
{
    for (uint32_t i = 0; i < n_rows; i++) {
        for (uint32_t c = 0; c < width; c++) {
            float v = rows[(size_t)i * width + c];
            KVS_RETURN_IF(!isfinite(v), KVS_ERR_NONFINITE,
                          "the model computed %g in %s of layer %u at position %u, column %u "
                          "(check the weights for NaN/Inf or overflow)",
                          v, kvs_kind_name(kind), r->layer, r->pos + i, c);
        }
    }
    return KVS_OK;
}

static kvs_status_e record_rows(void *ctx, const kvs_forward_rows_t *r)
{
    recorder_t *rec = ctx;
    const float *rows[KVS_KIND_COUNT] = {r->q, r->k, r->k_pre, r->v};

    for (int kind = 0; kind < KVS_KIND_COUNT; kind++) {
        uint32_t width = kind == KVS_KIND_Q ? rec->q_width : rec->kv_width;
        KVS_FORWARD(check_finite(rows[kind], r->n_rows, width, (kvs_kind_e)kind, r));
        KVS_FORWARD(kvs_trace_writer_append(rec->writer, (kvs_kind_e)kind, r->layer, r->pos,
                                            rows[kind], r->n_rows));
    }
    return KVS_OK;
}

static json_t *ids_json(const int32_t *ids, uint32_t n)
{
    json_t *a = json_array();

    for (uint32_t i = 0; i < n; i++)
        json_array_append_new(a, json_integer(ids[i]));
    return a;
}

static json_t *config_json(const kvs_model_config_t *c)
{
    json_t *eos = json_array();

    for (uint32_t i = 0; i < c->n_eos; i++)
        json_array_append_new(eos, json_integer(c->eos_ids[i]));
    return json_pack("{s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:f,s:f,s:b,s:o,s:o}", "hidden_size",
                     (json_int_t)c->hidden_size, "intermediate_size",
                     (json_int_t)c->intermediate_size, "num_hidden_layers", (json_int_t)c->n_layers,
                     "num_attention_heads", (json_int_t)c->n_heads, "num_key_value_heads",
                     (json_int_t)c->n_kv_heads, "head_dim", (json_int_t)c->head_dim, "vocab_size",
                     (json_int_t)c->vocab_size, "max_position_embeddings",
                     (json_int_t)c->max_position_embeddings, "rms_norm_eps", c->rms_norm_eps,
                     "rope_theta", c->rope_theta, "tie_word_embeddings", c->tie_word_embeddings,
                     "bos_token_id", c->bos_id >= 0 ? json_integer(c->bos_id) : json_null(),
                     "eos_token_id", eos);
}

/* NUL would make the metadata unreadable for JSON parsers that reject
** \u0000, such as jansson by default, so it becomes U+FFFD. */
static json_t *json_string_without_nul(const char *text, size_t len)
{
    size_t n_nul = 0, o = 0;
    char *clean;
    json_t *value;

    for (size_t i = 0; i < len; i++)
        n_nul += text[i] == '\0';
    clean = malloc(len + 2 * n_nul + 1);
    if (!clean)
        return NULL;
    for (size_t i = 0; i < len; i++) {
        if (text[i] == '\0') {
            memcpy(clean + o, "\xEF\xBF\xBD", 3);
            o += 3;
        } else
            clean[o++] = text[i];
    }
    value = json_stringn(clean, o);
    free(clean);
    return value;
}

/* Decodes the generated ids with the folder's tokenizer, or returns NULL
** (after logging why) when it does not load: the ids stay in the trace, so
** a tokenizer kvsim cannot read must not fail the capture. */
static json_t *generated_text_json(const char *model_dir, const int32_t *ids, uint32_t n)
{
    kvs_tokenizer_t *tok;
    char *text;
    size_t len;
    json_t *value;

    if (kvs_tokenizer_load(model_dir, &tok) != KVS_OK) {
        KVS_LOG(KVS_LOG_INFO, "the trace gets no generated_text: %s", kvs_error_message());
        return NULL;
    }
    if (kvs_tokenizer_decode(tok, ids, n, 0, &text, &len) != KVS_OK) {
        KVS_LOG(KVS_LOG_INFO, "the trace gets no generated_text: %s", kvs_error_message());
        kvs_tokenizer_free(tok);
        return NULL;
    }
    kvs_tokenizer_free(tok);
    value = json_string_without_nul(text, len);
    free(text);
    return value;
}

typedef struct run_info {
    const kvs_capture_opts_t *opts;
    const kvs_model_t *model;
    const int32_t *generated;
    uint32_t n_generated;
    int stopped_at_eos;
    uint32_t threads;
    double prefill_seconds, decode_seconds;
} run_info_t;

static char *metadata_text(const run_info_t *info)
{
    const kvs_capture_opts_t *o = info->opts;
    const kvs_model_config_t *c = kvs_model_get_config(info->model);
    json_t *root = json_object();
    char when[32], tok_path[4200];
    time_t now = time(NULL);
    struct tm tm;
    struct stat st;

    gmtime_r(&now, &tm);
    strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
    json_object_set_new(root, "format", json_string("kvsim-trace"));
    json_object_set_new(root, "engine_version", json_string(kvs_version()));
    json_object_set_new(root, "capture_time", json_string(when));
    json_object_set_new(root, "model", json_string(kvs_model_name(info->model)));
    json_object_set_new(root, "model_path", json_string(kvs_model_dir(info->model)));
    json_object_set_new(root, "synthetic", json_boolean(c->synthetic));
    json_object_set_new(root, "weight_dtype",
                        json_string(kvs_wtype_name(kvs_model_weight_type(info->model))));
    json_object_set_new(root, "model_config", config_json(c));
    json_object_set_new(root, "dtype", json_string(kvs_dtype_name(o->dtype)));
    snprintf(tok_path, sizeof tok_path, "%s/tokenizer.json", kvs_model_dir(info->model));
    if (stat(tok_path, &st) == 0)
        json_object_set_new(root, "tokenizer",
                            json_sprintf("%s/tokenizer.json", kvs_model_name(info->model)));
    json_object_set_new(root, "prompt_ids", ids_json(o->prompt_ids, o->n_prompt));
    json_object_set_new(root, "generated_ids", ids_json(info->generated, info->n_generated));
    if (stat(tok_path, &st) == 0) {
        json_t *generated_text = generated_text_json(kvs_model_dir(info->model), info->generated,
                                                     info->n_generated);

        if (generated_text)
            json_object_set_new(root, "generated_text", generated_text);
    }
    json_object_set_new(root, "n_prompt", json_integer(o->n_prompt));
    json_object_set_new(root, "n_generated", json_integer(info->n_generated));
    json_object_set_new(root, "n_positions", json_integer(o->n_prompt + info->n_generated));
    if (o->prompt_text)
        json_object_set_new(root, "prompt_text", json_string(o->prompt_text));
    if (o->rendered_prompt)
        json_object_set_new(root, "rendered_prompt", json_string(o->rendered_prompt));
    if (o->chat_template)
        json_object_set_new(root, "chat_template", json_string(o->chat_template));
    json_object_set_new(root, "sampling",
                        json_pack("{s:b,s:f,s:f,s:I,s:s}", "greedy", o->temperature == 0.0f,
                                  "temperature", (double)o->temperature, "top_p", (double)o->top_p,
                                  "seed", (json_int_t)o->seed, "prng",
                                  "xoshiro256** seeded by splitmix64"));
    json_object_set_new(root, "eos_id", c->n_eos ? json_integer(c->eos_ids[0]) : json_null());
    json_object_set_new(root, "eos_ids", ids_json(c->eos_ids, c->n_eos));
    json_object_set_new(root, "stop_at_eos", json_boolean(o->stop_at_eos));
    json_object_set_new(root, "stopped_at_eos", json_boolean(info->stopped_at_eos));
    json_object_set_new(root, "threads", json_integer(info->threads));
    json_object_set_new(root, "prefill_seconds", json_real(info->prefill_seconds));
    json_object_set_new(root, "decode_seconds", json_real(info->decode_seconds));

    char *text = json_dumps(root, JSON_INDENT(1) | JSON_PRESERVE_ORDER);
    json_decref(root);
    return text;
}

static int is_eos(const kvs_model_config_t *c, int32_t token)
{
    for (uint32_t i = 0; i < c->n_eos; i++)
        if (c->eos_ids[i] == token)
            return 1;
    return 0;
}

static kvs_status_e check_opts(const kvs_capture_opts_t *o)
{
    KVS_RETURN_IF(!o->out_path || !*o->out_path, KVS_ERR_USAGE, "no output trace path given");
    KVS_RETURN_IF(!o->prompt_ids || o->n_prompt == 0, KVS_ERR_USAGE,
                  "the prompt is empty; give at least one token id");
    KVS_RETURN_IF((unsigned)o->dtype >= KVS_DTYPE_COUNT, KVS_ERR_USAGE,
                  "trace dtype %d is invalid; use f32, f16 or bf16", (int)o->dtype);
    KVS_RETURN_IF(!isfinite(o->temperature) || o->temperature < 0.0f, KVS_ERR_USAGE,
                  "temperature %g is invalid; use 0 (greedy) or a positive number",
                  (double)o->temperature);
    KVS_RETURN_IF(!(o->top_p > 0.0f && o->top_p <= 1.0f), KVS_ERR_USAGE,
                  "top_p %g is invalid; use a value in (0, 1]", (double)o->top_p);
    KVS_RETURN_IF((uint64_t)o->n_prompt + o->max_new_tokens > (1u << 24), KVS_ERR_USAGE,
                  "%u prompt tokens plus %u new tokens exceed the %u-position limit", o->n_prompt,
                  o->max_new_tokens, 1u << 24);
    return KVS_OK;
}

typedef struct capture_state {
    kvs_model_t *model;
    kvs_forward_t *fwd;
    kvs_sampler_t *sampler;
    kvs_trace_writer_t *writer;
    float *logits;
    int32_t *generated;
} capture_state_t;

static void state_free(capture_state_t *s)
{
    kvs_trace_writer_abort(s->writer);
    kvs_sampler_destroy(s->sampler);
    kvs_forward_destroy(s->fwd);
    kvs_model_destroy(s->model);
    free(s->logits);
    free(s->generated);
}

static kvs_status_e run(const kvs_capture_opts_t *o, capture_state_t *s, kvs_capture_result_t *result)
{
    recorder_t rec;
    run_info_t info = {o, NULL, NULL, 0, 0, 0, 0.0, 0.0};

    char model_dir[4096];
    KVS_FORWARD(kvs_model_resolve(o->model_dir, model_dir, sizeof model_dir));
    KVS_FORWARD(kvs_model_load(model_dir, &s->model));
    const kvs_model_config_t *c = kvs_model_get_config(s->model);
    info.model = s->model;

    for (uint32_t i = 0; i < o->n_prompt; i++)
        KVS_RETURN_IF(o->prompt_ids[i] < 0 || (uint32_t)o->prompt_ids[i] >= c->vocab_size,
                      KVS_ERR_TOKEN,
                      "prompt token id %d (position %u) is outside the vocabulary of %s "
                      "(valid ids are 0..%u)",
                      o->prompt_ids[i], i, kvs_model_name(s->model), c->vocab_size - 1);
    if (c->max_position_embeddings && o->n_prompt + o->max_new_tokens > c->max_position_embeddings)
        KVS_LOG(KVS_LOG_INFO, "%u positions exceed max_position_embeddings %u of %s; RoPE "
                "extrapolates past it", o->n_prompt + o->max_new_tokens,
                c->max_position_embeddings, kvs_model_name(s->model));

    s->logits = malloc((size_t)c->vocab_size * sizeof *s->logits);
    s->generated = malloc(((size_t)o->max_new_tokens + 1) * sizeof *s->generated);
    KVS_RETURN_IF(!s->logits || !s->generated, KVS_ERR_NOMEM, "out of memory for %u tokens",
                  o->max_new_tokens);
    KVS_FORWARD(kvs_sampler_create(c->vocab_size, o->temperature, o->top_p, o->seed, &s->sampler));
    KVS_FORWARD(kvs_forward_create(s->model, o->n_prompt + o->max_new_tokens, 0, &s->fwd));
    info.threads = kvs_pool_default_threads();

    kvs_trace_shape_t shape = {c->n_layers, c->n_heads, c->n_kv_heads, c->head_dim};
    KVS_FORWARD(kvs_trace_writer_create(o->out_path, &shape, o->dtype, 0, 0, &s->writer));
    rec.writer = s->writer;
    rec.q_width = c->n_heads * c->head_dim;
    rec.kv_width = c->n_kv_heads * c->head_dim;
    kvs_forward_set_observer(s->fwd, record_rows, &rec);

    double t0 = kvs_now_seconds();
    KVS_FORWARD(kvs_forward_run(s->fwd, o->prompt_ids, o->n_prompt,
                                o->max_new_tokens ? s->logits : NULL));
    double t1 = kvs_now_seconds();

    /* Each sampled token is fed back, so its own q/k/v are recorded. The
    ** output head is skipped after the last token because nothing is
    ** sampled from it. */
    uint32_t n_gen = 0;
    int stopped = 0;
    while (n_gen < o->max_new_tokens && !stopped) {
        int32_t tok;
        KVS_FORWARD(kvs_sampler_next(s->sampler, s->logits, &tok));
        s->generated[n_gen++] = tok;
        stopped = o->stop_at_eos && is_eos(c, tok);
        int more = n_gen < o->max_new_tokens && !stopped;
        KVS_FORWARD(kvs_forward_run(s->fwd, &tok, 1, more ? s->logits : NULL));
    }
    double t2 = kvs_now_seconds();

    info.generated = s->generated;
    info.n_generated = n_gen;
    info.stopped_at_eos = stopped;
    info.prefill_seconds = t1 - t0;
    info.decode_seconds = t2 - t1;
    char *meta = metadata_text(&info);
    KVS_RETURN_IF(!meta, KVS_ERR_NOMEM, "out of memory writing trace metadata");
    kvs_trace_writer_t *w = s->writer;
    s->writer = NULL;
    kvs_status_e rc = kvs_trace_writer_finish(w, meta);
    free(meta);
    KVS_FORWARD(rc);

    if (result) {
        result->n_generated = n_gen;
        result->synthetic = c->synthetic;
        result->prefill_seconds = info.prefill_seconds;
        result->decode_seconds = info.decode_seconds;
    }
    return KVS_OK;
}

kvs_status_e kvs_capture_run(const kvs_capture_opts_t *opts, kvs_capture_result_t *result)
{
    capture_state_t s = {0};

    if (result)
        memset(result, 0, sizeof *result);
    KVS_FORWARD(check_opts(opts));
    KVS_FORWARD(kvs_pool_check_env());
    kvs_status_e rc = run(opts, &s, result);
    state_free(&s);
    return rc;
}
