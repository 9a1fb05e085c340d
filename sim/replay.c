/*
** replay.c: plans units over traces x kernels x layers x KV heads, runs them
** on a thread pool and commits each finished unit to the database.
**
** Invariants:
**  1. Every spec and trace is validated before any unit runs, so a typo
**     fails in seconds, not after an hour of replay.
**  2. A unit's result depends only on (trace, spec, seed, layer, kv_head),
**     never on the thread that ran it or on the order units finish in.
**  3. A unit reaches the database whole, in one transaction, or not at all;
**     --resume skips units already committed.
**  4. Unit indices are assigned in one fixed order (trace, kernel, layer,
**     KV head), so --shard K/N selects the same units on every machine.
*/
#include "replay.h"

#include "../db/db.h"
#include "../kernels/kernel.h"
#include "../trace/trace.h"
#include "replay_unit.h"

#include <jansson.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t stop_requested;

void kvs_replay_request_stop(void)
{
    stop_requested = 1;
}

kvs_status_e kvs_eval_parse(const char *text, kvs_eval_e *eval, uint32_t *n)
{
    char *end;
    unsigned long v;

    *n = 0;
    if (!strcmp(text, "decode")) {
        *eval = KVS_EVAL_DECODE;
        return KVS_OK;
    }
    if (!strcmp(text, "all")) {
        *eval = KVS_EVAL_ALL;
        return KVS_OK;
    }
    if (!strncmp(text, "last:", 5) || !strncmp(text, "stride:", 7)) {
        const char *num = strchr(text, ':') + 1;
        v = strtoul(num, &end, 10);
        KVS_RETURN_IF(*num == '\0' || *num == '-' || *end || v == 0 || v > 1u << 30, KVS_ERR_USAGE,
                      "--eval %s: N must be a positive integer", text);
        *eval = text[0] == 'l' ? KVS_EVAL_LAST : KVS_EVAL_STRIDE;
        *n = (uint32_t)v;
        return KVS_OK;
    }
    return kvs_fail(KVS_ERR_USAGE, "unknown --eval '%s'; use decode, all, last:N or stride:N", text);
}

/* ---- traces -------------------------------------------------------------- */

static uint32_t json_array_len(json_t *meta, const char *key)
{
    json_t *a = json_object_get(meta, key);
    return json_is_array(a) ? (uint32_t)json_array_size(a) : 0;
}

/* Reads the fields the replayer needs from an open trace and its metadata.
** A trace without prompt_ids is treated as all prompt (no decode
** positions). */
static kvs_status_e describe_trace(const char *path, kvs_trace_t *trace, kvs_replay_trace_t *rt)
{
    json_error_t jerr;
    json_t *meta, *v;

    memset(rt, 0, sizeof *rt);
    rt->path = path;
    rt->trace = trace;
    rt->shape = *kvs_trace_get_shape(rt->trace);
    rt->n_tokens = kvs_trace_n_tokens(rt->trace);
    rt->n_prompt = rt->n_tokens;

    KVS_RETURN_IF(rt->shape.n_kv_heads == 0 || rt->shape.n_heads % rt->shape.n_kv_heads != 0,
                  KVS_ERR_TRACE_FORMAT, "%s: %u query heads are not a multiple of %u KV heads", path,
                  rt->shape.n_heads, rt->shape.n_kv_heads);
    KVS_RETURN_IF(rt->n_tokens == 0, KVS_ERR_TRACE_FORMAT, "%s holds no positions", path);

    meta = json_loads(kvs_trace_metadata(rt->trace), 0, &jerr);
    KVS_RETURN_IF(!json_is_object(meta), KVS_ERR_TRACE_FORMAT,
                  "%s: metadata is not a JSON object (%s)", path, jerr.text);
    if (json_object_get(meta, "prompt_ids")) {
        uint32_t n_prompt = json_array_len(meta, "prompt_ids");
        if (n_prompt > 0 && n_prompt <= rt->n_tokens)
            rt->n_prompt = n_prompt;
    }
    rt->synthetic = json_is_true(json_object_get(meta, "synthetic"));
    v = json_object_get(meta, "model");
    if (!json_is_string(v))
        v = json_object_get(meta, "model_name");
    rt->model = strdup(json_is_string(v) ? json_string_value(v) : "unknown");
    json_decref(meta);
    KVS_RETURN_IF(!rt->model, KVS_ERR_NOMEM, "out of memory");
    return KVS_OK;
}

static kvs_status_e open_trace(const char *path, kvs_replay_trace_t *rt)
{
    kvs_trace_t *trace;
    kvs_status_e rc;

    memset(rt, 0, sizeof *rt);
    KVS_FORWARD(kvs_trace_open(path, &trace));
    rc = describe_trace(path, trace, rt);
    rt->trace = trace;
    return rc;
}

static void close_trace(kvs_replay_trace_t *rt)
{
    kvs_trace_close(rt->trace);
    free(rt->model);
    rt->trace = NULL;
    rt->model = NULL;
}

static kvs_status_e register_trace(kvs_db_t *db, kvs_replay_trace_t *rt)
{
    kvs_db_trace_info_t info = {
        .path = rt->path,
        .content_hash = kvs_trace_content_hash(rt->trace),
        .model = rt->model,
        .metadata_json = kvs_trace_metadata(rt->trace),
        .n_layers = rt->shape.n_layers,
        .n_heads = rt->shape.n_heads,
        .n_kv_heads = rt->shape.n_kv_heads,
        .head_dim = rt->shape.head_dim,
        .n_prompt = rt->n_prompt,
        .n_generated = rt->n_tokens - rt->n_prompt,
        .synthetic = rt->synthetic,
        .file_bytes = kvs_trace_file_bytes(rt->trace),
    };
    return kvs_db_put_trace(db, &info, &rt->trace_id);
}

kvs_status_e kvs_replay_put_trace(kvs_db_t *db, const char *path, kvs_trace_t *trace,
                                  int64_t *trace_id)
{
    kvs_replay_trace_t rt;
    kvs_status_e rc = describe_trace(path, trace, &rt);

    if (rc == KVS_OK)
        rc = register_trace(db, &rt);
    *trace_id = rt.trace_id;
    free(rt.model);
    return rc;
}

/* ---- the plan ------------------------------------------------------------ */

typedef struct run_slot {
    uint32_t trace, kernel;
    int64_t run_id;
    uint32_t units_left;      /* units of this run still to finish here */
    int failed;
} run_slot_t;

typedef struct unit {
    uint32_t run;             /* index into runs */
    uint32_t layer, kv_head;
} unit_t;

/* The pending units of one (trace, layer, KV head) stream, which a worker
** runs in one pass; unit indices are in kernel order. */
typedef struct stream_work {
    uint32_t trace, layer, kv_head;
    uint32_t first, count;    /* slice of replay_t.stream_units */
} stream_work_t;

typedef struct replay {
    const kvs_replay_opts_t *opts;
    kvs_db_t *db;
    kvs_replay_trace_t *traces;
    kvs_kernel_spec_t **specs;
    run_slot_t *runs;
    uint32_t n_runs;
    unit_t *units;
    uint32_t n_units;
    stream_work_t *streams;
    uint32_t n_streams;
    uint32_t *stream_units;   /* unit indices grouped by stream */
    uint8_t **eval_masks;     /* one per trace, read-only once planned */

    uint32_t n_threads;       /* resolved from opts (0 = all cores) */

    pthread_mutex_t lock;     /* guards everything below and db writes */
    uint32_t next_stream;
    uint32_t done_units;
    kvs_status_e first_error;
    char first_message[1024];
    double started, last_progress;
} replay_t;

/* Writes the evaluation mode as the user would type it, plus the cap. */
static const char *eval_text(const kvs_replay_opts_t *o, char *buf, size_t cap)
{
    int n = 0;

    switch (o->eval) {
    case KVS_EVAL_DECODE: n = snprintf(buf, cap, "decode"); break;
    case KVS_EVAL_ALL: n = snprintf(buf, cap, "all"); break;
    case KVS_EVAL_LAST: n = snprintf(buf, cap, "last:%u", o->eval_n); break;
    case KVS_EVAL_STRIDE: n = snprintf(buf, cap, "stride:%u", o->eval_n); break;
    case KVS_EVAL_COUNT: break;
    }
    if (o->max_steps && n > 0 && (size_t)n < cap)
        snprintf(buf + n, cap - n, ",max:%u", o->max_steps);
    return buf;
}

static kvs_status_e begin_run(replay_t *r, run_slot_t *run)
{
    const kvs_replay_opts_t *o = r->opts;
    kvs_replay_trace_t *rt = &r->traces[run->trace];
    const kvs_kernel_spec_t *spec = r->specs[run->kernel];
    kvs_kernel_dims_t dims = kvs_replay_dims(rt, o->seed, 0, 0);
    kvs_kernel_cost_t cost;
    uint64_t streams = (uint64_t)rt->shape.n_layers * rt->shape.n_kv_heads;
    char eval[64];

    KVS_FORWARD(kvs_kernel_spec_cost(spec, &dims, rt->n_tokens, &cost));
    eval_text(o, eval, sizeof eval);

    kvs_db_run_info_t info = {
        .trace_id = rt->trace_id,
        .kernel_spec = kvs_kernel_spec_text(spec),
        .params_json = kvs_kernel_spec_params_json(spec),
        .family = kvs_kernel_spec_family(spec),
        .compressed_exec = kvs_kernel_spec_compressed_exec(spec),
        .eval_mode = eval,
        .threads = r->n_threads,
        .seed = o->seed,
        .cost_context = rt->n_tokens,
        .bytes_per_token = cost.bytes_per_token * streams,
        .stored_bytes = (cost.stored_bytes - cost.shared_bytes) * streams +
                        cost.shared_bytes * rt->shape.n_layers,
        .read_bytes_per_step = cost.read_bytes * streams,
    };
    return kvs_db_begin_run(r->db, &info, o->resume, &run->run_id);
}

/* Groups the planned units by (trace, layer, KV head) stream. Kernel order
** is kept inside a stream and (trace, layer, KV head) order between streams.
** A worker then decodes a stream's trace data and computes its reference
** attention once for all of its kernels. */
static kvs_status_e group_streams(replay_t *r)
{
    uint32_t cap = 0;

    r->stream_units = malloc((r->n_units ? r->n_units : 1) * sizeof *r->stream_units);
    KVS_RETURN_IF(!r->stream_units, KVS_ERR_NOMEM, "out of memory planning the replay");
    for (uint32_t ti = 0; ti < r->opts->n_traces; ti++) {
        const kvs_trace_shape_t *s = &r->traces[ti].shape;
        for (uint32_t layer = 0; layer < s->n_layers; layer++) {
            for (uint32_t h = 0; h < s->n_kv_heads; h++) {
                uint32_t first = 0, count = 0;

                /* Units are few enough (kernels x layers x heads) that a
                ** scan per stream costs nothing next to the replay. */
                for (uint32_t u = 0; u < r->n_units; u++) {
                    const unit_t *unit = &r->units[u];
                    if (r->runs[unit->run].trace != ti || unit->layer != layer || unit->kv_head != h)
                        continue;
                    if (count == 0)
                        first = cap;
                    r->stream_units[cap++] = u;
                    count++;
                }
                if (count == 0)
                    continue;
                stream_work_t *p = realloc(r->streams, (r->n_streams + 1) * sizeof *p);
                KVS_RETURN_IF(!p, KVS_ERR_NOMEM, "out of memory planning the replay");
                r->streams = p;
                r->streams[r->n_streams++] = (stream_work_t){ti, layer, h, first, count};
            }
        }
    }
    return KVS_OK;
}

/* Builds runs and units in the fixed order of invariant 4, keeping this
** shard's units that are not yet committed. */
static kvs_status_e plan(replay_t *r)
{
    const kvs_replay_opts_t *o = r->opts;
    uint64_t index = 0;
    uint32_t cap = 0;

    r->n_runs = o->n_traces * o->n_kernels;
    r->runs = calloc(r->n_runs, sizeof *r->runs);
    r->eval_masks = calloc(o->n_traces, sizeof *r->eval_masks);
    KVS_RETURN_IF(!r->runs || !r->eval_masks, KVS_ERR_NOMEM, "out of memory planning the replay");

    for (uint32_t ti = 0; ti < o->n_traces; ti++) {
        kvs_replay_trace_t *rt = &r->traces[ti];
        kvs_eval_plan_t ep = {o->eval, o->eval_n, o->max_steps};
        char eval[64];

        r->eval_masks[ti] = malloc(rt->n_tokens);
        KVS_RETURN_IF(!r->eval_masks[ti], KVS_ERR_NOMEM, "out of memory planning the replay");
        uint32_t steps = kvs_eval_positions(&ep, rt->n_tokens, rt->n_prompt, r->eval_masks[ti]);
        KVS_RETURN_IF(steps == 0, KVS_ERR_USAGE,
                      "%s has no positions to evaluate with --eval %s (%u prompt and %u generated "
                      "positions); use --eval all or last:N",
                      rt->path, eval_text(o, eval, sizeof eval), rt->n_prompt,
                      rt->n_tokens - rt->n_prompt);

        for (uint32_t ki = 0; ki < o->n_kernels; ki++) {
            uint32_t ri = ti * o->n_kernels + ki;
            run_slot_t *run = &r->runs[ri];

            run->trace = ti;
            run->kernel = ki;
            KVS_FORWARD(begin_run(r, run));

            for (uint32_t layer = 0; layer < rt->shape.n_layers; layer++) {
                for (uint32_t h = 0; h < rt->shape.n_kv_heads; h++, index++) {
                    int done = 0;
                    if (o->shard_n && index % o->shard_n != o->shard_k - 1)
                        continue;
                    if (o->resume)
                        KVS_FORWARD(kvs_db_unit_done(r->db, run->run_id, layer, h, &done));
                    if (done)
                        continue;
                    if (r->n_units == cap) {
                        cap = cap ? cap * 2 : 256;
                        unit_t *p = realloc(r->units, cap * sizeof *p);
                        KVS_RETURN_IF(!p, KVS_ERR_NOMEM, "out of memory planning the replay");
                        r->units = p;
                    }
                    r->units[r->n_units++] = (unit_t){ri, layer, h};
                    run->units_left++;
                }
            }
        }
    }
    return group_streams(r);
}

/* ---- workers ------------------------------------------------------------- */

static void report_progress(replay_t *r, int final)
{
    double now = kvs_now_seconds();

    if (r->opts->quiet || (!final && now - r->last_progress < 2.0))
        return;
    r->last_progress = now;
    double elapsed = now - r->started;
    double rate = elapsed > 0 ? r->done_units / elapsed : 0;
    double left = rate > 0 ? (r->n_units - r->done_units) / rate : 0;
    fprintf(stderr, "replay: %u/%u units, %.1f units/s, %s %.0fs\n", r->done_units, r->n_units, rate,
            final ? "elapsed" : "about", final ? elapsed : left);
}

static void record_failure(replay_t *r, kvs_status_e rc)
{
    if (r->first_error == KVS_OK) {
        r->first_error = rc;
        snprintf(r->first_message, sizeof r->first_message, "%s", kvs_error_message());
    }
}

/* Commits one finished unit and closes its run when it was the last. */
static void commit_unit(replay_t *r, const unit_t *u, const kvs_unit_result_t *res)
{
    run_slot_t *run = &r->runs[u->run];
    kvs_status_e rc = kvs_db_commit_unit(r->db, run->run_id, u->layer, u->kv_head, res->rows,
                                         res->group, res->attend_seconds, res->attend_calls,
                                         res->stored_bytes_per_token);

    if (rc != KVS_OK) {
        record_failure(r, rc);
        run->failed = 1;
        return;
    }
    r->done_units++;
    if (--run->units_left == 0 && !run->failed) {
        rc = kvs_db_end_run(r->db, run->run_id, "done");
        if (rc != KVS_OK)
            record_failure(r, rc);
    }
}

static void *worker(void *arg)
{
    replay_t *r = arg;
    uint32_t max_kernels = r->opts->n_kernels;
    kvs_unit_result_t *results = calloc(max_kernels, sizeof *results);
    const kvs_kernel_spec_t **specs = calloc(max_kernels, sizeof *specs);

    if (!results || !specs) {
        pthread_mutex_lock(&r->lock);
        record_failure(r, kvs_fail(KVS_ERR_NOMEM, "out of memory starting a replay worker"));
        pthread_mutex_unlock(&r->lock);
        free(results);
        free(specs);
        return NULL;
    }
    for (;;) {
        pthread_mutex_lock(&r->lock);
        if (r->next_stream >= r->n_streams || r->first_error != KVS_OK || stop_requested) {
            pthread_mutex_unlock(&r->lock);
            break;
        }
        const stream_work_t *w = &r->streams[r->next_stream++];
        pthread_mutex_unlock(&r->lock);

        const uint32_t *unit_ids = r->stream_units + w->first;
        for (uint32_t i = 0; i < w->count; i++)
            specs[i] = r->specs[r->runs[r->units[unit_ids[i]].run].kernel];
        kvs_status_e rc = kvs_replay_stream(&r->traces[w->trace], specs, w->count, r->opts->seed,
                                            w->layer, w->kv_head, r->eval_masks[w->trace], results);

        pthread_mutex_lock(&r->lock);
        if (rc != KVS_OK) {
            record_failure(r, rc);
            for (uint32_t i = 0; i < w->count; i++)
                r->runs[r->units[unit_ids[i]].run].failed = 1;
        } else {
            for (uint32_t i = 0; i < w->count; i++)
                commit_unit(r, &r->units[unit_ids[i]], &results[i]);
        }
        report_progress(r, 0);
        pthread_mutex_unlock(&r->lock);
        for (uint32_t i = 0; i < w->count; i++)
            kvs_unit_result_free(&results[i]);
    }
    free(results);
    free(specs);
    return NULL;
}

static uint32_t default_threads(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (uint32_t)n : 1;
}

static kvs_status_e execute(replay_t *r)
{
    uint32_t n_threads = r->n_threads;
    pthread_t *threads;

    if (n_threads > r->n_streams)
        n_threads = r->n_streams ? r->n_streams : 1;
    threads = calloc(n_threads, sizeof *threads);
    KVS_RETURN_IF(!threads, KVS_ERR_NOMEM, "out of memory starting threads");
    r->started = r->last_progress = kvs_now_seconds();
    if (!r->opts->quiet)
        fprintf(stderr, "replay: %u units (%u runs) on %u threads\n", r->n_units, r->n_runs,
                n_threads);

    uint32_t started = 0;
    for (; started < n_threads; started++)
        if (pthread_create(&threads[started], NULL, worker, r) != 0)
            break;
    if (started == 0)
        worker(r);
    for (uint32_t i = 0; i < started; i++)
        pthread_join(threads[i], NULL);
    free(threads);
    report_progress(r, 1);

    /* Runs with a failed unit are marked so; their committed units stay and
    ** --resume completes them. */
    char status[1100];
    snprintf(status, sizeof status, "failed: %s", r->first_message);
    for (uint32_t i = 0; i < r->n_runs; i++) {
        if (r->runs[i].failed)
            kvs_db_end_run(r->db, r->runs[i].run_id, status);
        else if (stop_requested && r->runs[i].units_left > 0)
            kvs_db_end_run(r->db, r->runs[i].run_id, "interrupted: rerun with --resume");
    }
    if (r->first_error != KVS_OK)
        return kvs_fail(r->first_error, "%s", r->first_message);
    KVS_RETURN_IF(stop_requested && r->done_units < r->n_units, KVS_ERR_IO,
                  "interrupted after %u of %u units; the finished units are committed, and the "
                  "same command with --resume completes the rest", r->done_units, r->n_units);
    return KVS_OK;
}

/* Checks a spec against a trace's shapes, so that a combination that cannot
** run (a group larger than head_dim, ...) fails before any run row exists. */
static kvs_status_e check_spec(const kvs_replay_trace_t *rt, const kvs_kernel_spec_t *spec)
{
    kvs_kernel_dims_t dims = kvs_replay_dims(rt, 0, 0, 0);
    kvs_status_e rc = kvs_kernel_spec_check(spec, &dims);

    if (rc != KVS_OK)
        kvs_error_prefix("--kernel '%s' on %s (head_dim %u)", kvs_kernel_spec_text(spec), rt->path,
                         rt->shape.head_dim);
    return rc;
}

/* ---- entry --------------------------------------------------------------- */

static void replay_free(replay_t *r)
{
    for (uint32_t i = 0; r->traces && i < r->opts->n_traces; i++)
        close_trace(&r->traces[i]);
    for (uint32_t i = 0; r->specs && i < r->opts->n_kernels; i++)
        kvs_kernel_spec_free(r->specs[i]);
    for (uint32_t i = 0; r->eval_masks && i < r->opts->n_traces; i++)
        free(r->eval_masks[i]);
    free(r->eval_masks);
    free(r->streams);
    free(r->stream_units);
    free(r->traces);
    free(r->specs);
    free(r->runs);
    free(r->units);
    kvs_db_close(r->db);
    pthread_mutex_destroy(&r->lock);
}

kvs_status_e kvs_replay_run(const kvs_replay_opts_t *opts)
{
    replay_t r = {.opts = opts};
    kvs_status_e rc = KVS_OK;

    pthread_mutex_init(&r.lock, NULL);
    KVS_RETURN_IF(opts->n_traces == 0, KVS_ERR_USAGE, "no trace given; pass --trace FILE");
    KVS_RETURN_IF(opts->n_kernels == 0, KVS_ERR_USAGE,
                  "no kernel given; pass --kernel SPEC (see 'kvsim kernels')");
    KVS_RETURN_IF(opts->shard_n && (opts->shard_k < 1 || opts->shard_k > opts->shard_n),
                  KVS_ERR_USAGE, "--shard %u/%u: K must be between 1 and N", opts->shard_k,
                  opts->shard_n);

    r.specs = calloc(opts->n_kernels, sizeof *r.specs);
    r.traces = calloc(opts->n_traces, sizeof *r.traces);
    if (!r.specs || !r.traces)
        rc = kvs_fail(KVS_ERR_NOMEM, "out of memory");

    /* Invariant 1: validate every input before opening the database. */
    for (uint32_t i = 0; rc == KVS_OK && i < opts->n_kernels; i++) {
        rc = kvs_kernel_spec_parse(opts->kernels[i], &r.specs[i]);
        if (rc != KVS_OK)
            kvs_error_prefix("--kernel '%s'", opts->kernels[i]);
    }
    for (uint32_t i = 0; rc == KVS_OK && i < opts->n_traces; i++)
        rc = open_trace(opts->traces[i], &r.traces[i]);

    for (uint32_t ti = 0; rc == KVS_OK && ti < opts->n_traces; ti++)
        for (uint32_t ki = 0; rc == KVS_OK && ki < opts->n_kernels; ki++)
            rc = check_spec(&r.traces[ti], r.specs[ki]);
    r.n_threads = opts->threads ? opts->threads : default_threads();

    if (rc == KVS_OK)
        rc = kvs_db_open(opts->db_path, &r.db);
    for (uint32_t i = 0; rc == KVS_OK && i < opts->n_traces; i++)
        rc = register_trace(r.db, &r.traces[i]);
    if (rc == KVS_OK)
        rc = plan(&r);
    if (rc == KVS_OK)
        rc = execute(&r);
    replay_free(&r);
    return rc;
}
