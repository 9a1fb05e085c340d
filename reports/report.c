/*
** report.c: kvs_report_write: selects traces and runs from the database,
** has figures.c and tables.c write into a staging folder, then moves the
** finished files into the output folder.
*/
#include "report_internal.h"

#include "../db/db.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char *dup_column(sqlite3_stmt *st, int col)
{
    const unsigned char *text = sqlite3_column_text(st, col);

    return strdup(text ? (const char *)text : "");
}

static double double_column(sqlite3_stmt *st, int col)
{
    return sqlite3_column_type(st, col) == SQLITE_NULL ? NAN : sqlite3_column_double(st, col);
}

static void free_trace(rpt_trace_t *t)
{
    for (uint32_t i = 0; i < t->n_runs; i++) {
        rpt_run_t *r = &t->runs[i];
        free(r->kernel);
        free(r->label);
        free(r->family);
        free(r->eval_mode);
        free(r->status);
        free(r->code_version);
        free(r->host);
        free(r->started_at);
        free(r->finished_at);
        free(r->execution);
    }
    free(t->runs);
    free(t->hash);
    free(t->path);
    free(t->model);
}

int rpt_kernel_selected(const rpt_ctx_t *ctx, const char *kernel)
{
    if (!ctx->opts || ctx->opts->n_kernels == 0)
        return 1;
    for (uint32_t i = 0; i < ctx->opts->n_kernels; i++) {
        if (!strcmp(ctx->opts->kernels[i], kernel))
            return 1;
    }
    return 0;
}

static int trace_selected(const rpt_ctx_t *ctx, const char *hash, const char *path)
{
    if (!ctx->opts || ctx->opts->n_traces == 0)
        return 1;
    for (uint32_t i = 0; i < ctx->opts->n_traces; i++) {
        const char *want = ctx->opts->traces[i];
        if (!strcmp(want, path) || (*want && !strncmp(want, hash, strlen(want))))
            return 1;
    }
    return 0;
}

/* Marks the runs no other done run of the trace dominates on (bytes per
** token, output error): the same rule as the pareto view. */
static void mark_front(rpt_trace_t *t)
{
    for (uint32_t i = 0; i < t->n_runs; i++) {
        rpt_run_t *a = &t->runs[i];
        a->on_front = a->done;
        for (uint32_t j = 0; j < t->n_runs && a->on_front; j++) {
            const rpt_run_t *b = &t->runs[j];
            if (j == i || !b->done)
                continue;
            if (b->bytes_per_token <= a->bytes_per_token && b->output_rel_error <= a->output_rel_error &&
                (b->bytes_per_token < a->bytes_per_token || b->output_rel_error < a->output_rel_error))
                a->on_front = 0;
        }
    }
}

/* Returns 1 when any cache part (key, value) of params has `field` equal to
** `value`, 2 when every part has it, else 0. */
static int parts_with(const json_t *params, const char *field, const char *value)
{
    static const char *const parts[] = {"key", "value"};
    int n_parts = 0, n_match = 0;

    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) {
        const json_t *part = json_object_get(params, parts[i]);
        if (!json_is_object(part))
            continue;
        n_parts++;
        const char *text = json_string_value(json_object_get(part, field));
        n_match += text && !strcmp(text, value);
    }
    if (n_match == 0)
        return 0;
    return n_match == n_parts ? 2 : 1;
}

/* Names how a run executes attention, from its params_json: "dense" when
** every cache part uses the dense codec, "storage only" when a part has
** exec=storage (codes dequantized to a dense copy before each step), else
** "compressed execution". A selection policy (a "select" object, or the
** selection family) appends " + selection", because eviction is neither.
** Runs whose params_json lacks the parts fall back to family and
** compressed_exec. */
static kvs_status_e label_execution(rpt_run_t *r, const char *params_json)
{
    json_t *params = params_json ? json_loads(params_json, 0, NULL) : NULL;
    const char *base;
    int selection = !strcmp(r->family, "selection");

    if (json_is_object(params) && (json_object_get(params, "key") || json_object_get(params, "value"))) {
        selection |= json_is_object(json_object_get(params, "select"));
        if (parts_with(params, "codec", "dense") == 2)
            base = "dense";
        else if (parts_with(params, "exec", "storage"))
            base = "storage only";
        else if (parts_with(params, "exec", "compressed"))
            base = "compressed execution";
        else
            base = r->compressed_exec ? "compressed execution" : "storage only";
    } else if (!strcmp(r->family, "dense")) {
        base = "dense";
    } else {
        base = r->compressed_exec ? "compressed execution" : "storage only";
    }
    json_decref(params);

    size_t cap = strlen(base) + sizeof " + selection";
    r->execution = malloc(cap);
    if (!r->execution)
        return kvs_fail(KVS_ERR_NOMEM, "out of memory labelling runs");
    snprintf(r->execution, cap, "%s%s", base, selection ? " + selection" : "");
    return KVS_OK;
}

/* A spec run twice on one trace (another evaluation mode, a rerun without
** --resume) gets its run id in its label so legends stay unambiguous. */
static kvs_status_e label_runs(rpt_trace_t *t)
{
    for (uint32_t i = 0; i < t->n_runs; i++) {
        rpt_run_t *r = &t->runs[i];
        int repeated = 0;
        for (uint32_t j = 0; j < t->n_runs; j++)
            repeated |= j != i && !strcmp(t->runs[j].kernel, r->kernel);
        size_t cap = strlen(r->kernel) + 64;
        r->label = malloc(cap);
        if (!r->label)
            return kvs_fail(KVS_ERR_NOMEM, "out of memory labelling runs");
        if (repeated)
            snprintf(r->label, cap, "%s (run %lld, %s)", r->kernel, (long long)r->run_id, r->eval_mode);
        else
            snprintf(r->label, cap, "%s", r->kernel);
    }
    return KVS_OK;
}

static kvs_status_e load_runs(rpt_ctx_t *ctx, rpt_trace_t *t)
{
    sqlite3_stmt *st;
    int rc;

    if (sqlite3_prepare_v2(ctx->conn,
                           "SELECT k.run_id, k.kernel, k.family, k.eval_mode, k.status, k.compressed_exec, "
                           "k.bytes_per_token, k.stored_bytes, k.read_bytes_per_step, k.cost_context, "
                           "k.output_rel_error, k.logit_rmse, k.kl, k.top1_agreement, k.top8_agreement, "
                           "k.mean_attend_seconds, k.n_units, r.code_version, r.host, r.started_at, r.finished_at, "
                           "r.threads, k.mass_kept, k.recall8, r.params_json, ms.measured_bytes_per_token "
                           "FROM kernel_summary k JOIN runs r ON r.id = k.run_id "
                           "LEFT JOIN measured_storage ms ON ms.run_id = k.run_id WHERE k.trace_id = ? "
                           "ORDER BY k.bytes_per_token DESC, k.kernel, k.run_id",
                           -1, &st, NULL) != SQLITE_OK)
        return kvs_fail(KVS_ERR_DB, "%s: reading kernel_summary failed: %s", ctx->db_path,
                        sqlite3_errmsg(ctx->conn));
    sqlite3_bind_int64(st, 1, t->id);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *kernel = (const char *)sqlite3_column_text(st, 1);
        if (!rpt_kernel_selected(ctx, kernel))
            continue;
        rpt_run_t *grown = realloc(t->runs, (t->n_runs + 1) * sizeof *grown);
        if (!grown) {
            sqlite3_finalize(st);
            return kvs_fail(KVS_ERR_NOMEM, "out of memory reading runs");
        }
        t->runs = grown;
        rpt_run_t *r = &t->runs[t->n_runs++];
        memset(r, 0, sizeof *r);
        r->run_id = sqlite3_column_int64(st, 0);
        r->kernel = dup_column(st, 1);
        r->family = dup_column(st, 2);
        r->eval_mode = dup_column(st, 3);
        r->status = dup_column(st, 4);
        r->compressed_exec = sqlite3_column_int(st, 5);
        r->bytes_per_token = sqlite3_column_double(st, 6);
        r->stored_bytes = sqlite3_column_int64(st, 7);
        r->read_bytes_per_step = sqlite3_column_int64(st, 8);
        r->cost_context = sqlite3_column_int64(st, 9);
        r->measured_bytes_per_token = double_column(st, 25);
        r->output_rel_error = double_column(st, 10);
        r->logit_rmse = double_column(st, 11);
        r->kl = double_column(st, 12);
        r->top1 = double_column(st, 13);
        r->top8 = double_column(st, 14);
        r->mean_attend_seconds = double_column(st, 15);
        r->n_units = sqlite3_column_int64(st, 16);
        r->code_version = dup_column(st, 17);
        r->host = dup_column(st, 18);
        r->started_at = dup_column(st, 19);
        r->finished_at = dup_column(st, 20);
        r->threads = sqlite3_column_int64(st, 21);
        r->mass_kept = double_column(st, 22);
        r->recall8 = double_column(st, 23);
        if (!r->kernel || !r->family || !r->eval_mode || !r->status || !r->code_version || !r->host ||
            !r->started_at || !r->finished_at) {
            sqlite3_finalize(st);
            return kvs_fail(KVS_ERR_NOMEM, "out of memory reading runs");
        }
        if (label_execution(r, (const char *)sqlite3_column_text(st, 24)) != KVS_OK) {
            sqlite3_finalize(st);
            return KVS_ERR_NOMEM;
        }
        r->done = !strcmp(r->status, "done") && !isnan(r->output_rel_error);
    }
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE)
        return kvs_fail(KVS_ERR_DB, "%s: reading kernel_summary failed: %s", ctx->db_path,
                        sqlite3_errmsg(ctx->conn));
    mark_front(t);
    return label_runs(t);
}

/* Sets the tag that names a trace's files. The hash comes from the file,
** so anything but letters and digits is replaced: a tag never leaves the
** report folder. */
static void make_tag(const rpt_ctx_t *ctx, rpt_trace_t *t)
{
    size_t n = 0;

    for (const char *p = t->hash; *p && n < 8; p++, n++)
        t->short_hash[n] = isalnum((unsigned char)*p) ? *p : 'x';
    t->short_hash[n] = '\0';
    for (uint32_t i = 0; i + 1 < ctx->n_traces; i++) {
        if (!strcmp(ctx->traces[i].short_hash, t->short_hash)) {
            snprintf(t->short_hash + n, sizeof t->short_hash - n, "_%lld", (long long)t->id);
            break;
        }
    }
}

static kvs_status_e load_traces(rpt_ctx_t *ctx)
{
    sqlite3_stmt *st;
    int rc;
    kvs_status_e status = KVS_OK;

    if (sqlite3_prepare_v2(ctx->conn,
                           "SELECT id, content_hash, path, model, synthetic, n_layers, n_heads, n_kv_heads, "
                           "head_dim, n_prompt, n_generated FROM traces ORDER BY id",
                           -1, &st, NULL) != SQLITE_OK)
        return kvs_fail(KVS_ERR_DB, "%s: reading traces failed: %s", ctx->db_path, sqlite3_errmsg(ctx->conn));
    while (status == KVS_OK && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *hash = (const char *)sqlite3_column_text(st, 1);
        const char *path = (const char *)sqlite3_column_text(st, 2);
        if (!trace_selected(ctx, hash, path))
            continue;
        rpt_trace_t *grown = realloc(ctx->traces, (ctx->n_traces + 1) * sizeof *grown);
        if (!grown) {
            status = kvs_fail(KVS_ERR_NOMEM, "out of memory reading traces");
            break;
        }
        ctx->traces = grown;
        rpt_trace_t *t = &ctx->traces[ctx->n_traces++];
        memset(t, 0, sizeof *t);
        t->id = sqlite3_column_int64(st, 0);
        t->hash = dup_column(st, 1);
        t->path = dup_column(st, 2);
        t->model = dup_column(st, 3);
        t->synthetic = sqlite3_column_int(st, 4);
        t->n_layers = sqlite3_column_int64(st, 5);
        t->n_heads = sqlite3_column_int64(st, 6);
        t->n_kv_heads = sqlite3_column_int64(st, 7);
        t->head_dim = sqlite3_column_int64(st, 8);
        t->n_prompt = sqlite3_column_int64(st, 9);
        t->n_generated = sqlite3_column_int64(st, 10);
        if (!t->hash || !t->path || !t->model) {
            status = kvs_fail(KVS_ERR_NOMEM, "out of memory reading traces");
            break;
        }
        make_tag(ctx, t);
        status = load_runs(ctx, t);
    }
    sqlite3_finalize(st);
    return status;
}

/* Every --trace and --kernel filter must select something, so a typo is an
** error instead of a silently smaller report. */
static kvs_status_e check_filters(const rpt_ctx_t *ctx)
{
    const kvs_report_opts_t *o = ctx->opts;
    uint32_t n_runs = 0;

    for (uint32_t i = 0; o && i < o->n_traces; i++) {
        int found = 0;
        for (uint32_t t = 0; t < ctx->n_traces; t++)
            found |= !strcmp(o->traces[i], ctx->traces[t].path) ||
                     (*o->traces[i] && !strncmp(o->traces[i], ctx->traces[t].hash, strlen(o->traces[i])));
        KVS_RETURN_IF(!found, KVS_ERR_NOT_FOUND,
                      "no trace in %s matches '%s'; give a content-hash prefix or a path as listed by "
                      "sqlite3 %s 'SELECT content_hash, path FROM traces'",
                      ctx->db_path, o->traces[i], ctx->db_path);
    }
    for (uint32_t i = 0; o && i < o->n_kernels; i++) {
        int found = 0;
        for (uint32_t t = 0; t < ctx->n_traces; t++) {
            for (uint32_t r = 0; r < ctx->traces[t].n_runs; r++)
                found |= !strcmp(o->kernels[i], ctx->traces[t].runs[r].kernel);
        }
        KVS_RETURN_IF(!found, KVS_ERR_NOT_FOUND,
                      "no run of kernel '%s' in %s for the selected traces; give the spec exactly as stored "
                      "(sqlite3 %s 'SELECT DISTINCT kernel_spec FROM runs')",
                      o->kernels[i], ctx->db_path, ctx->db_path);
    }
    for (uint32_t t = 0; t < ctx->n_traces; t++)
        n_runs += ctx->traces[t].n_runs;
    KVS_RETURN_IF(n_runs == 0, KVS_ERR_NOT_FOUND, "%s has no runs to report; run kvsim replay first",
                  ctx->db_path);
    return KVS_OK;
}

static int compare_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Lists the regular files of the staging folder, sorted. */
static kvs_status_e list_stage(const rpt_ctx_t *ctx, char ***names, size_t *n)
{
    DIR *dir = opendir(ctx->stage);
    struct dirent *e;
    size_t cap = 0;

    *names = NULL;
    *n = 0;
    if (!dir)
        return kvs_fail(KVS_ERR_IO, "cannot read %s: %s", ctx->stage, strerror(errno));
    while ((e = readdir(dir))) {
        if (e->d_name[0] == '.')
            continue;
        if (*n == cap) {
            cap = cap ? cap * 2 : 64;
            char **grown = realloc(*names, cap * sizeof *grown);
            if (!grown) {
                closedir(dir);
                return kvs_fail(KVS_ERR_NOMEM, "out of memory listing %s", ctx->stage);
            }
            *names = grown;
        }
        (*names)[(*n)++] = strdup(e->d_name);
    }
    closedir(dir);
    qsort(*names, *n, sizeof **names, compare_names);
    return KVS_OK;
}

/* Removes the staging folder and whatever is left in it. Runs after
** failures too, so it leaves the pending error message alone. */
static void remove_stage(const rpt_ctx_t *ctx)
{
    DIR *dir = opendir(ctx->stage);
    struct dirent *e;

    if (!dir)
        return;
    while ((e = readdir(dir))) {
        char path[4352];
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..") &&
            snprintf(path, sizeof path, "%s/%s", ctx->stage, e->d_name) < (int)sizeof path)
            unlink(path);
    }
    closedir(dir);
    rmdir(ctx->stage);
}

/* Renames every staged file into the output folder. Each rename replaces
** one file atomically; index.html is moved last so it never links figures
** that are not there yet. */
static kvs_status_e publish(const rpt_ctx_t *ctx)
{
    char **names;
    size_t n;
    kvs_status_e rc = KVS_OK;

    KVS_FORWARD(list_stage(ctx, &names, &n));
    for (int pass = 0; pass < 2; pass++) {
        for (size_t i = 0; i < n && rc == KVS_OK; i++) {
            char from[4352], to[4352];
            if (!names[i] || (strcmp(names[i], "index.html") == 0) != (pass == 1))
                continue;
            rc = kvs_path_join(from, sizeof from, ctx->stage, names[i]);
            if (rc == KVS_OK)
                rc = kvs_path_join(to, sizeof to, ctx->out_dir, names[i]);
            if (rc == KVS_OK && rename(from, to) != 0)
                rc = kvs_fail(KVS_ERR_IO, "cannot move %s to %s: %s", from, to, strerror(errno));
        }
    }
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
    return rc;
}

/* Copies the device profiles used for the roofline estimates beside the
** report, so the figures can be traced back and the file edited. */
static kvs_status_e write_devices(rpt_ctx_t *ctx, const char *devices_path)
{
    kvs_outfile_t *f;
    char *text = NULL;
    const char *content = kvs_costmodel_default_text();
    kvs_status_e rc;

    if (devices_path) {
        KVS_FORWARD(kvs_read_file(devices_path, &text, NULL));
        content = text;
    }
    rc = rpt_open(ctx, "devices.tsv", &f);
    if (rc == KVS_OK)
        rc = rpt_close(f, kvs_outfile_write(f, content, strlen(content)));
    free(text);
    return rc;
}

static kvs_status_e build(rpt_ctx_t *ctx, const char *devices_path)
{
    KVS_FORWARD(load_traces(ctx));
    KVS_FORWARD(check_filters(ctx));
    KVS_FORWARD(kvs_costmodel_load(devices_path, &ctx->devices));
    KVS_FORWARD(kvs_mkdir_p(ctx->out_dir));
    KVS_RETURN_IF(mkdir(ctx->stage, 0777) != 0, KVS_ERR_IO, "cannot create staging folder %s: %s", ctx->stage,
                  strerror(errno));
    for (uint32_t t = 0; t < ctx->n_traces; t++) {
        if (ctx->traces[t].n_runs)
            KVS_FORWARD(rpt_figures_for_trace(ctx, t));
    }
    KVS_FORWARD(write_devices(ctx, devices_path));
    KVS_FORWARD(rpt_write_markdown(ctx));
    KVS_FORWARD(rpt_write_html(ctx));
    return publish(ctx);
}

kvs_status_e kvs_report_write(const char *db_path, const char *out_dir, const kvs_report_opts_t *opts)
{
    rpt_ctx_t ctx;
    kvs_db_t *db;
    kvs_status_e rc;
    const char *devices_path = opts ? opts->devices_path : NULL;

    KVS_RETURN_IF(!out_dir || !*out_dir, KVS_ERR_USAGE, "no output folder given for the report");
    KVS_RETURN_IF(strlen(out_dir) > 3900, KVS_ERR_INVALID, "output folder path too long (%zu characters): %.60s...",
                  strlen(out_dir), out_dir);
    KVS_FORWARD(kvs_db_open_readonly(db_path, &db));

    memset(&ctx, 0, sizeof ctx);
    ctx.conn = kvs_db_sqlite(db);
    ctx.db_path = db_path;
    ctx.out_dir = out_dir;
    ctx.opts = opts;
    snprintf(ctx.stage, sizeof ctx.stage, "%s/.kvsim-report.%ld", out_dir, (long)getpid());

    rc = build(&ctx, devices_path);
    remove_stage(&ctx);

    for (uint32_t t = 0; t < ctx.n_traces; t++)
        free_trace(&ctx.traces[t]);
    free(ctx.traces);
    for (uint32_t i = 0; i < ctx.n_figures; i++) {
        free(ctx.figures[i].title);
        free(ctx.figures[i].caption);
    }
    free(ctx.figures);
    kvs_costmodel_destroy(ctx.devices);
    kvs_db_close(db);
    return rc;
}
