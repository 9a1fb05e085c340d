/*
** tables.c: the report's tables, rendered both as report.md and as
** index.html. Each table is built once as rows of strings, so the two
** files always show the same figures.
*/
#include "report_internal.h"

#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#define MAX_COLS 16

typedef struct rpt_table {
    const char *title;
    const char *note;
    char *note_text;       /* owned storage when the note is built at run time */
    uint32_t n_cols, n_rows;
    uint32_t n_text_cols;  /* leading left-aligned columns */
    const char *headers[MAX_COLS];
    char **cells;          /* n_rows * n_cols strings */
} rpt_table_t;

void rpt_format_bytes(char *buf, size_t cap, double bytes)
{
    if (bytes >= 1024.0 * 1024.0 * 1024.0)
        snprintf(buf, cap, "%.2f GiB", bytes / (1024.0 * 1024.0 * 1024.0));
    else if (bytes >= 1024.0 * 1024.0)
        snprintf(buf, cap, "%.3f MiB", bytes / (1024.0 * 1024.0));
    else if (bytes >= 1024.0)
        snprintf(buf, cap, "%.2f KiB", bytes / 1024.0);
    else
        snprintf(buf, cap, "%.0f B", bytes);
}

void rpt_format_seconds(char *buf, size_t cap, double seconds)
{
    if (isnan(seconds))
        snprintf(buf, cap, "-");
    else if (seconds >= 1.0)
        snprintf(buf, cap, "%.3f s", seconds);
    else if (seconds >= 1e-3)
        snprintf(buf, cap, "%.3f ms", seconds * 1e3);
    else if (seconds >= 1e-6)
        snprintf(buf, cap, "%.2f us", seconds * 1e6);
    else
        snprintf(buf, cap, "%.0f ns", seconds * 1e9);
}

static void format_number(char *buf, size_t cap, double v, const char *fmt)
{
    if (isnan(v))
        snprintf(buf, cap, "-");
    else
        snprintf(buf, cap, fmt, v);
}

static void table_init(rpt_table_t *tb, const char *title, const char *note, uint32_t n_cols, ...)
{
    va_list ap;

    memset(tb, 0, sizeof *tb);
    tb->title = title;
    tb->note = note;
    tb->n_cols = n_cols;
    tb->n_text_cols = 2;
    va_start(ap, n_cols);
    for (uint32_t c = 0; c < n_cols; c++)
        tb->headers[c] = va_arg(ap, const char *);
    va_end(ap);
}

/* Appends a row of n_cols strings, copied. */
static kvs_status_e table_add(rpt_table_t *tb, const char *const *values)
{
    char **grown = realloc(tb->cells, (size_t)(tb->n_rows + 1) * tb->n_cols * sizeof *grown);

    if (!grown)
        return kvs_fail(KVS_ERR_NOMEM, "out of memory building a table");
    tb->cells = grown;
    for (uint32_t c = 0; c < tb->n_cols; c++) {
        char **cell = &tb->cells[(size_t)tb->n_rows * tb->n_cols + c];
        *cell = strdup(values[c] ? values[c] : "");
        if (!*cell)
            return kvs_fail(KVS_ERR_NOMEM, "out of memory building a table");
    }
    tb->n_rows++;
    return KVS_OK;
}

static void table_free(rpt_table_t *tb)
{
    for (size_t i = 0; i < (size_t)tb->n_rows * tb->n_cols; i++)
        free(tb->cells[i]);
    free(tb->cells);
    free(tb->note_text);
}

/* ---- the tables ------------------------------------------------------- */

static kvs_status_e summary_table(const rpt_trace_t *t, rpt_table_t *tb)
{
    table_init(tb, "Kernel summary",
               "Means over every (layer, query head) of the run. Logit RMSE and KL cover attended positions "
               "only: positions a selection policy evicted are left out of them, and the attention mass lost to "
               "eviction is 1 - mass kept. Recall@8: fraction of the exact top-8 positions the kernel attended. "
               "Bytes are whole-model figures, K and V. Bytes/token is the kernel's steady-state rate, with "
               "full-precision windows (such as KIVI's recent tokens or quanto's residual buffer) excluded. "
               "Measured bytes/token is what the kernel's caches held per position while the error was "
               "measured, windows included, averaged over the scored steps; compare kernels on short traces "
               "on it. Attention time is "
               "the replayer's mean per (layer, KV head) unit and call, one thread. Pareto: not beaten on both "
               "bytes per token and output error by another finished run.",
               15, "kernel", "family", "execution", "bytes/token", "measured bytes/token", "read/step",
               "output rel. error", "logit RMSE", "KL (nats)", "mass kept", "recall@8", "top-1", "top-8",
               "attend time/unit", "status");
    tb->n_text_cols = 3;
    for (uint32_t i = 0; i < t->n_runs; i++) {
        const rpt_run_t *r = &t->runs[i];
        char kernel[600], bpt[32], at_context[64], read[32], err[32], rmse[32], kl[32], kept[32], recall[32];
        char top1[32], top8[32], att[32];
        snprintf(kernel, sizeof kernel, "%s%s", r->label, r->on_front ? " (Pareto)" : "");
        snprintf(bpt, sizeof bpt, "%.1f", r->bytes_per_token);
        format_number(at_context, sizeof at_context, r->measured_bytes_per_token, "%.1f");
        rpt_format_bytes(read, sizeof read, (double)r->read_bytes_per_step);
        format_number(err, sizeof err, r->output_rel_error, "%.4g");
        format_number(rmse, sizeof rmse, r->logit_rmse, "%.4g");
        format_number(kl, sizeof kl, r->kl, "%.3g");
        format_number(kept, sizeof kept, r->mass_kept, "%.3f");
        format_number(recall, sizeof recall, r->recall8, "%.3f");
        format_number(top1, sizeof top1, r->top1, "%.3f");
        format_number(top8, sizeof top8, r->top8, "%.3f");
        rpt_format_seconds(att, sizeof att, r->mean_attend_seconds);
        const char *row[] = {kernel, r->family, r->execution, bpt, at_context, read, err, rmse,
                             kl, kept, recall, top1, top8, att, r->status};
        KVS_FORWARD(table_add(tb, row));
    }
    return KVS_OK;
}

/* Measured whole-model step time of kernel on the trace at the context
** nearest `context`, from kvsim bench; NAN when there is none. */
static double bench_step_seconds(rpt_ctx_t *ctx, const rpt_trace_t *t, const char *kernel, int64_t context,
                                 int64_t *at_context)
{
    sqlite3_stmt *st;
    double seconds = NAN;

    if (sqlite3_prepare_v2(ctx->conn,
                           "SELECT attend_seconds, context FROM timing WHERE trace_id = ? AND kernel = ? "
                           "AND scope = 'model' AND attend_seconds IS NOT NULL "
                           "ORDER BY ABS(context - ?), context, host LIMIT 1",
                           -1, &st, NULL) != SQLITE_OK)
        return NAN;
    sqlite3_bind_int64(st, 1, t->id);
    sqlite3_bind_text(st, 2, kernel, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, context);
    if (sqlite3_step(st) == SQLITE_ROW) {
        seconds = sqlite3_column_double(st, 0);
        *at_context = sqlite3_column_int64(st, 1);
    }
    sqlite3_finalize(st);
    return seconds;
}

static int is_writeup_backend(const rpt_run_t *r)
{
    return r->done && (!strncmp(r->kernel, "dense:", 6) || !strcmp(r->kernel, "dense") ||
                       !strncmp(r->kernel, "quanto:", 7) || !strcmp(r->kernel, "quanto") ||
                       !strncmp(r->kernel, "hqq:", 4) || !strcmp(r->kernel, "hqq"));
}

static const char *writeup_meaning(const rpt_run_t *r)
{
    if (!strcmp(r->family, "dense"))
        return "dense cache: every stored byte is read each step";
    if (r->compressed_exec)
        return "codes stored, attention computed on the codes (execution compression)";
    return "codes stored, whole cache dequantized to a dense copy before each step (storage compression)";
}

/* SmolLM2-135M, the write-up's model: 30 layers, 3 KV heads of dimension
** 64, so one token stores 2 x 30 x 3 = 180 vectors (K and V). */
#define SMOLLM2_VECTORS_PER_TOKEN (2.0 * 30 * 3)
#define SMOLLM2_HEAD_DIM 64.0

/* Writes the note of the write-up table: what the columns are, the
** write-up's figures, and what its 0.913 MiB quanto footprint can be. The
** byte counts are arithmetic on the quanto layout (per-token groups of 64
** values: 4-bit codes plus a BF16 scale and shift per vector). */
static kvs_status_e writeup_note(rpt_table_t *tb, int any_replay_time)
{
    const double mib = 1024.0 * 1024.0, writeup_quanto_mib = 0.913, context = 2048;
    double quanto_vector = SMOLLM2_HEAD_DIM * 4 / 8 + 2 + 2;
    double full_quanto = SMOLLM2_VECTORS_PER_TOKEN * quanto_vector * context;
    double dense_bf16_token = SMOLLM2_VECTORS_PER_TOKEN * SMOLLM2_HEAD_DIM * 2;
    size_t cap = 2048;

    tb->note_text = malloc(cap);
    if (!tb->note_text)
        return kvs_fail(KVS_ERR_NOMEM, "out of memory building a table");
    snprintf(tb->note_text, cap,
             "Recomputes the comparison of the DEV Community write-up \"A Smaller KV Cache Did Not Make "
             "Transformers Faster\" from this trace's runs. Footprint: bytes stored for the whole model after "
             "cost-context tokens. Step time: kvsim bench whole-model median at the nearest context when "
             "measured, else the replayer's per-unit mean times the number of units (one thread).%s For "
             "reference, the write-up reported for SmolLM2-135M at about 2048 tokens, whole generation with "
             "Hugging Face caches: dense 50.911 MiB and 2.250 s, quanto 0.913 MiB and 3.912 s, HQQ 19.133 MiB "
             "and 9.770 s. A full 4-bit quanto cache of SmolLM2-135M at %.0f tokens stores %.1f MiB (%.0f bytes "
             "per 64-value vector), so the write-up's %.3f MiB can only be part of the state; a likely "
             "explanation is that it counts the BF16 residual buffer alone (%.3f MiB is about %.1f dense BF16 "
             "tokens).",
             any_replay_time ? " The replayer emulates every codec on the CPU (FP8 and packed codes are decoded "
                               "in software), so replay times are CPU emulation time, not device time: dense FP8 "
                               "can be slower there than dense F32."
                             : "",
             context, full_quanto / mib, quanto_vector, writeup_quanto_mib, writeup_quanto_mib,
             writeup_quanto_mib * mib / dense_bf16_token);
    tb->note = tb->note_text;
    return KVS_OK;
}

/* The comparison of the DEV Community write-up "A Smaller KV Cache Did Not
** Make Transformers Faster" (dense, quanto and HQQ caches on SmolLM2-135M),
** recomputed from this database's runs. */
static kvs_status_e writeup_table(rpt_ctx_t *ctx, const rpt_trace_t *t, rpt_table_t *tb)
{
    int any_bench = 0, any_replay = 0;

    table_init(tb, "Cache backends compared as in the write-up", "", 7, "backend", "what it represents",
               "step time", "cache footprint", "context (tokens)", "bytes/token", "bytes read/step");
    for (uint32_t i = 0; i < t->n_runs; i++) {
        const rpt_run_t *r = &t->runs[i];
        if (!is_writeup_backend(r))
            continue;
        char step[96], foot[32], ctxt[32], bpt[32], read[32], secs[32];
        int64_t at = 0;
        double bench = bench_step_seconds(ctx, t, r->kernel, r->cost_context, &at);
        if (!isnan(bench)) {
            rpt_format_seconds(secs, sizeof secs, bench);
            snprintf(step, sizeof step, "%s (bench, %lld tokens)", secs, (long long)at);
            any_bench = 1;
        } else if (!isnan(r->mean_attend_seconds)) {
            rpt_format_seconds(secs, sizeof secs, r->mean_attend_seconds * (double)r->n_units);
            snprintf(step, sizeof step, "%s (replay, CPU emulation)", secs);
            any_replay = 1;
        } else {
            snprintf(step, sizeof step, "-");
        }
        snprintf(foot, sizeof foot, "%.3f MiB", (double)r->stored_bytes / (1024.0 * 1024.0));
        snprintf(ctxt, sizeof ctxt, "%lld", (long long)r->cost_context);
        snprintf(bpt, sizeof bpt, "%.1f", r->bytes_per_token);
        rpt_format_bytes(read, sizeof read, (double)r->read_bytes_per_step);
        const char *row[] = {r->label, writeup_meaning(r), step, foot, ctxt, bpt, read};
        KVS_FORWARD(table_add(tb, row));
    }
    if (any_replay)
        tb->headers[2] = any_bench ? "step time (bench: kvsim bench on this host; replay: CPU emulation time, not device time)"
                                   : "step time (CPU emulation time, not device time)";
    return writeup_note(tb, any_replay);
}

static kvs_status_e roofline_table(rpt_ctx_t *ctx, const rpt_trace_t *t, rpt_table_t *tb)
{
    uint32_t n_dev = kvs_costmodel_n_devices(ctx->devices);

    if (n_dev > MAX_COLS - 2)
        n_dev = MAX_COLS - 2;
    memset(tb, 0, sizeof *tb);
    tb->title = "Projected attention step time (roofline estimates)";
    tb->note = "Estimates, not measurements: max(bytes read / bandwidth, attention flops / peak) + overhead x "
               "layers, for one whole-model decode step at each run's cost context, on the device profiles in "
               "devices.tsv.";
    tb->n_cols = 2 + n_dev;
    tb->n_text_cols = 1;
    tb->headers[0] = "kernel";
    tb->headers[1] = "bytes read/step";
    for (uint32_t d = 0; d < n_dev; d++)
        tb->headers[2 + d] = kvs_costmodel_device(ctx->devices, d)->name;

    for (uint32_t i = 0; i < t->n_runs; i++) {
        const rpt_run_t *r = &t->runs[i];
        char cells[MAX_COLS][64];
        const char *row[MAX_COLS];
        double flops = kvs_costmodel_attention_flops((uint32_t)t->n_layers, (uint32_t)t->n_heads,
                                                     (uint32_t)t->head_dim, (uint64_t)r->cost_context);
        rpt_format_bytes(cells[1], sizeof cells[1], (double)r->read_bytes_per_step);
        row[0] = r->label;
        row[1] = cells[1];
        for (uint32_t d = 0; d < n_dev; d++) {
            rpt_format_seconds(cells[2 + d], sizeof cells[2 + d],
                               kvs_costmodel_project(kvs_costmodel_device(ctx->devices, d),
                                                     (double)r->read_bytes_per_step, flops, (uint32_t)t->n_layers));
            row[2 + d] = cells[2 + d];
        }
        KVS_FORWARD(table_add(tb, row));
    }
    return KVS_OK;
}

static kvs_status_e provenance_table(const rpt_trace_t *t, rpt_table_t *tb)
{
    table_init(tb, "Run details",
               "Provenance of each run as stored in the database. Units: committed (layer, KV head) units of "
               "the trace's layers x KV heads.",
               9, "kernel", "run id", "evaluation", "units", "threads", "kvsim version", "host", "started",
               "finished");
    tb->n_text_cols = 1;
    for (uint32_t i = 0; i < t->n_runs; i++) {
        const rpt_run_t *r = &t->runs[i];
        char id[32], units[64], threads[32];
        snprintf(id, sizeof id, "%lld", (long long)r->run_id);
        snprintf(units, sizeof units, "%lld of %lld", (long long)r->n_units, (long long)(t->n_layers * t->n_kv_heads));
        snprintf(threads, sizeof threads, "%lld", (long long)r->threads);
        const char *row[] = {r->label, id, r->eval_mode, units, threads, r->code_version, r->host, r->started_at,
                             r->finished_at[0] ? r->finished_at : "-"};
        KVS_FORWARD(table_add(tb, row));
    }
    return KVS_OK;
}

#define N_TABLES 4

static kvs_status_e build_tables(rpt_ctx_t *ctx, const rpt_trace_t *t, rpt_table_t tables[N_TABLES])
{
    kvs_status_e rc;

    memset(tables, 0, N_TABLES * sizeof *tables);
    rc = summary_table(t, &tables[0]);
    if (rc == KVS_OK)
        rc = writeup_table(ctx, t, &tables[1]);
    if (rc == KVS_OK)
        rc = roofline_table(ctx, t, &tables[2]);
    if (rc == KVS_OK)
        rc = provenance_table(t, &tables[3]);
    return rc;
}

/* ---- Markdown ------------------------------------------------------------ */

/* Writes s with the characters that break a Markdown table cell escaped. */
static void md_text(FILE *fp, const char *s)
{
    for (; *s; s++) {
        if (*s == '|' || *s == '*' || *s == '_' || *s == '\\' || *s == '`' || *s == '<')
            fputc('\\', fp);
        fputc(*s == '\n' ? ' ' : *s, fp);
    }
}

static void md_table(FILE *fp, const rpt_table_t *tb)
{
    if (tb->n_rows == 0)
        return;
    fprintf(fp, "### %s\n\n", tb->title);
    fprintf(fp, "|");
    for (uint32_t c = 0; c < tb->n_cols; c++) {
        fputc(' ', fp);
        md_text(fp, tb->headers[c]);
        fprintf(fp, " |");
    }
    fprintf(fp, "\n|");
    for (uint32_t c = 0; c < tb->n_cols; c++)
        fprintf(fp, "%s|", c < tb->n_text_cols ? "---" : "---:");
    fprintf(fp, "\n");
    for (uint32_t r = 0; r < tb->n_rows; r++) {
        fprintf(fp, "|");
        for (uint32_t c = 0; c < tb->n_cols; c++) {
            fputc(' ', fp);
            md_text(fp, tb->cells[(size_t)r * tb->n_cols + c]);
            fprintf(fp, " |");
        }
        fprintf(fp, "\n");
    }
    fprintf(fp, "\n%s\n\n", tb->note);
}

static int any_synthetic(const rpt_ctx_t *ctx)
{
    for (uint32_t t = 0; t < ctx->n_traces; t++) {
        if (ctx->traces[t].synthetic && ctx->traces[t].n_runs)
            return 1;
    }
    return 0;
}

static const char *base_name(const char *path)
{
    const char *slash = strrchr(path, '/');
    return slash ? slash + 1 : path;
}

kvs_status_e rpt_write_markdown(rpt_ctx_t *ctx)
{
    kvs_outfile_t *f;
    kvs_status_e rc = KVS_OK;
    FILE *fp;

    KVS_FORWARD(rpt_open(ctx, "report.md", &f));
    fp = kvs_outfile_stream(f);
    fprintf(fp, "# kvsim report: %s\n\n", base_name(ctx->db_path));
    if (any_synthetic(ctx))
        fprintf(fp, "> **Warning: %s.** Traces marked synthetic below come from a model with seeded random "
                    "weights.\n\n",
                RPT_SYNTHETIC_BANNER);
    fprintf(fp, "Written by kvsim %s from the results database %s. Figures are in PNG and SVG beside this file; "
                "each NAME.gp script redraws NAME.png and NAME.svg from its data files (run `gnuplot NAME.gp` in "
                "this folder).\n\n",
            kvs_version(), base_name(ctx->db_path));

    for (uint32_t ti = 0; ti < ctx->n_traces && rc == KVS_OK; ti++) {
        const rpt_trace_t *t = &ctx->traces[ti];
        rpt_table_t tables[N_TABLES];
        if (!t->n_runs)
            continue;
        fprintf(fp, "## Trace %s: ", t->short_hash);
        md_text(fp, t->model);
        fprintf(fp, "\n\n");
        if (t->synthetic)
            fprintf(fp, "> **%s**\n\n", RPT_SYNTHETIC_BANNER);
        fprintf(fp, "Path `%s`, content hash `%s`; %lld layers, %lld query heads, %lld KV heads, head dimension "
                    "%lld; %lld prompt and %lld generated tokens.\n\n",
                t->path, t->hash, (long long)t->n_layers, (long long)t->n_heads, (long long)t->n_kv_heads,
                (long long)t->head_dim, (long long)t->n_prompt, (long long)t->n_generated);
        rc = build_tables(ctx, t, tables);
        for (int i = 0; i < N_TABLES; i++) {
            if (rc == KVS_OK)
                md_table(fp, &tables[i]);
            table_free(&tables[i]);
        }
        for (uint32_t i = 0; i < ctx->n_figures; i++) {
            const rpt_figure_t *fig = &ctx->figures[i];
            if (fig->trace != ti)
                continue;
            fprintf(fp, "### %s\n\n![%s](%s.png)\n\n%s [SVG](%s.svg), script `%s.gp`.\n\n", fig->title, fig->title,
                    fig->name, fig->caption, fig->name, fig->name);
        }
    }
    return rpt_close(f, rc);
}

/* ---- HTML ------------------------------------------------------------------ */

static void html_text(FILE *fp, const char *s)
{
    for (; *s; s++) {
        switch (*s) {
        case '&': fputs("&amp;", fp); break;
        case '<': fputs("&lt;", fp); break;
        case '>': fputs("&gt;", fp); break;
        case '"': fputs("&quot;", fp); break;
        default: fputc(*s, fp);
        }
    }
}

static void html_table(FILE *fp, const rpt_table_t *tb)
{
    if (tb->n_rows == 0)
        return;
    fprintf(fp, "<h3>");
    html_text(fp, tb->title);
    fprintf(fp, "</h3>\n<table>\n<tr>");
    for (uint32_t c = 0; c < tb->n_cols; c++) {
        fprintf(fp, "<th>");
        html_text(fp, tb->headers[c]);
        fprintf(fp, "</th>");
    }
    fprintf(fp, "</tr>\n");
    for (uint32_t r = 0; r < tb->n_rows; r++) {
        fprintf(fp, "<tr>");
        for (uint32_t c = 0; c < tb->n_cols; c++) {
            fprintf(fp, c < tb->n_text_cols ? "<td class=\"text\">" : "<td>");
            html_text(fp, tb->cells[(size_t)r * tb->n_cols + c]);
            fprintf(fp, "</td>");
        }
        fprintf(fp, "</tr>\n");
    }
    fprintf(fp, "</table>\n<p class=\"note\">");
    html_text(fp, tb->note);
    fprintf(fp, "</p>\n");
}

static const char html_style[] =
    "body{font-family:sans-serif;max-width:1300px;margin:2em auto;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;margin:0.5em 0;font-size:90%}"
    "th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}"
    "td.text{text-align:left}th{background:#f0f0f0}"
    ".banner{background:#fde8e8;border:2px solid #b00000;color:#800000;padding:0.6em 1em;font-weight:bold}"
    ".note{color:#555;font-size:90%}figure{margin:1.5em 0}img{max-width:100%;border:1px solid #ddd}"
    "figcaption{color:#444;font-size:90%}code{background:#f4f4f4;padding:0 3px}";

kvs_status_e rpt_write_html(rpt_ctx_t *ctx)
{
    kvs_outfile_t *f;
    kvs_status_e rc = KVS_OK;
    FILE *fp;

    KVS_FORWARD(rpt_open(ctx, "index.html", &f));
    fp = kvs_outfile_stream(f);
    fprintf(fp, "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>kvsim report: ");
    html_text(fp, base_name(ctx->db_path));
    fprintf(fp, "</title>\n<style>%s</style>\n</head>\n<body>\n<h1>kvsim report: ", html_style);
    html_text(fp, base_name(ctx->db_path));
    fprintf(fp, "</h1>\n");
    if (any_synthetic(ctx))
        fprintf(fp, "<p class=\"banner\">%s. Traces marked synthetic below come from a model with seeded random "
                    "weights.</p>\n",
                RPT_SYNTHETIC_BANNER);
    fprintf(fp, "<p>Written by kvsim ");
    html_text(fp, kvs_version());
    fprintf(fp, ". Click a figure for its SVG; each <code>NAME.gp</code> script beside this file redraws it "
                "(<code>gnuplot NAME.gp</code> in this folder). Device profiles: <a href=\"devices.tsv\">"
                "devices.tsv</a>. Summary tables also in <a href=\"report.md\">report.md</a>.</p>\n");
    fprintf(fp, "<ul>\n");
    for (uint32_t ti = 0; ti < ctx->n_traces; ti++) {
        const rpt_trace_t *t = &ctx->traces[ti];
        if (!t->n_runs)
            continue;
        fprintf(fp, "<li><a href=\"#trace-%s\">Trace %s: ", t->short_hash, t->short_hash);
        html_text(fp, t->model);
        fprintf(fp, "</a> (%u runs%s)</li>\n", t->n_runs, t->synthetic ? ", synthetic model" : "");
    }
    fprintf(fp, "</ul>\n");

    for (uint32_t ti = 0; ti < ctx->n_traces && rc == KVS_OK; ti++) {
        const rpt_trace_t *t = &ctx->traces[ti];
        rpt_table_t tables[N_TABLES];
        if (!t->n_runs)
            continue;
        fprintf(fp, "<h2 id=\"trace-%s\">Trace %s: ", t->short_hash, t->short_hash);
        html_text(fp, t->model);
        fprintf(fp, "</h2>\n");
        if (t->synthetic)
            fprintf(fp, "<p class=\"banner\">%s</p>\n", RPT_SYNTHETIC_BANNER);
        fprintf(fp, "<p>Path <code>");
        html_text(fp, t->path);
        fprintf(fp, "</code>, content hash <code>");
        html_text(fp, t->hash);
        fprintf(fp, "</code>; %lld layers, %lld query heads, %lld KV heads, head dimension %lld; %lld prompt and "
                    "%lld generated tokens.</p>\n",
                (long long)t->n_layers, (long long)t->n_heads, (long long)t->n_kv_heads, (long long)t->head_dim,
                (long long)t->n_prompt, (long long)t->n_generated);
        rc = build_tables(ctx, t, tables);
        for (int i = 0; i < N_TABLES; i++) {
            if (rc == KVS_OK)
                html_table(fp, &tables[i]);
            table_free(&tables[i]);
        }
        for (uint32_t i = 0; i < ctx->n_figures; i++) {
            const rpt_figure_t *fig = &ctx->figures[i];
            if (fig->trace != ti)
                continue;
            fprintf(fp, "<figure><a href=\"%s.svg\"><img src=\"%s.png\" alt=\"", fig->name, fig->name);
            html_text(fp, fig->title);
            fprintf(fp, "\"></a><figcaption><b>");
            html_text(fp, fig->title);
            fprintf(fp, ".</b> ");
            html_text(fp, fig->caption);
            fprintf(fp, " Script <code>%s.gp</code>.</figcaption></figure>\n", fig->name);
        }
    }
    fprintf(fp, "</body>\n</html>\n");
    return rpt_close(f, rc);
}
