/*
** figures.c: the data files and gnuplot scripts of each trace's figures.
**
** Every figure NAME has NAME.gp reading NAME.dat (and sometimes more data
** files) by relative name, and renders NAME.png and NAME.svg. Errors span
** decades, so error axes are logarithmic. A value of exactly 0 (an exact
** kernel) cannot sit on a log axis, so it is drawn at a floor one decade
** below the smallest positive value, and a label in the figure says so.
*/
#include "report_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define MAX_HEATMAPS 6

typedef struct family_style {
    const char *name;
    int point_type;   /* gnuplot pt: filled circle, square, triangles, ... */
} family_style_t;

static const family_style_t family_styles[] = {
    {"dense", 7}, {"quantized", 5}, {"rotation", 9}, {"sketch", 11}, {"value", 13}, {"selection", 15},
};
#define N_FAMILIES ((int)(sizeof family_styles / sizeof family_styles[0]))

/* Index of a family in family_styles, or N_FAMILIES for any other name. */
static int family_index(const char *family)
{
    for (int i = 0; i < N_FAMILIES; i++) {
        if (!strcmp(family_styles[i].name, family))
            return i;
    }
    return N_FAMILIES;
}

/* Distinct colours for line series: a qualitative palette of 20, so a
** report of every registered kernel gives each line its own colour. */
static const char *const series_colors[] = {
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
    "#7f7f7f", "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39",
    "#7b4173", "#00a087", "#f0027f", "#000000", "#b8860b", "#4dac26",
};
#define N_SERIES_COLORS ((int)(sizeof series_colors / sizeof series_colors[0]))

/* gnuplot point types (filled and open circles, squares, triangles,
** diamonds, pentagons, crosses) and dash types, cycled independently of the
** colours so that series that share a colour still differ. */
static const int series_points[] = {7, 5, 9, 11, 13, 15, 6, 4, 8, 10, 12, 14, 1, 2, 3};
#define N_SERIES_POINTS ((int)(sizeof series_points / sizeof series_points[0]))
#define N_SERIES_DASHES 4

/* Writes the style of line series number i: its own colour, point type
** and dash pattern. */
static void write_series_style(FILE *fp, int i)
{
    fprintf(fp, "lc rgb \"%s\" pt %d dt %d", series_colors[i % N_SERIES_COLORS],
            series_points[i % N_SERIES_POINTS], 1 + i % N_SERIES_DASHES);
}

/* Writes `set title` with the figure's subject, the trace and, for a
** synthetic model, the banner. */
static void write_title(FILE *fp, const rpt_trace_t *t, const char *subject)
{
    char title[1024];

    snprintf(title, sizeof title, "%s\n%s, trace %s%s%s", subject, t->model, t->short_hash,
             t->synthetic ? "\n" : "", t->synthetic ? RPT_SYNTHETIC_BANNER : "");
    fprintf(fp, "    set title ");
    rpt_gp_string(fp, title);
    fprintf(fp, "%s\n", t->synthetic ? " textcolor rgb \"#b00000\"" : "");
}

/* Floor for values <= 0 on a log axis: a decade under the smallest
** positive value. */
static double log_floor(double min_positive)
{
    return isfinite(min_positive) && min_positive > 0 ? min_positive / 10 : 1e-12;
}

static double on_log_axis(double v, double zero_at)
{
    return v > 0 ? v : zero_at;
}

static kvs_status_e finish_figure(rpt_ctx_t *ctx, uint32_t t, const char *name, kvs_outfile_t *gp,
                                  const char *title, const char *caption)
{
    KVS_FORWARD(rpt_close(gp, KVS_OK));
    KVS_FORWARD(rpt_run_gnuplot(ctx, name));
    return rpt_add_figure(ctx, t, name, title, caption);
}

static void write_key_note(FILE *fp, int any_zero, double zero_at)
{
    if (any_zero)
        fprintf(fp, "    set label 1 \"error 0 drawn at %.1e\" at graph 0.01, graph 0.03 font \",8\"\n", zero_at);
    else
        fprintf(fp, "    unset label 1\n");
}

/* ---- output error vs bytes per token, with the Pareto front ---------- */

/* Plot area of the 1100 x 700 figure with the key outside, measured on
** pngcairo renderings: about 840 x 590 pixels. Labels use an 8-point font,
** about 6.4 pixels per character and 11 pixels per line. */
#define AREA_WIDTH_PX 840.0
#define AREA_HEIGHT_PX 590.0
#define LABEL_CHAR_PX 6.4
#define LABEL_LINE_PX 11.0
#define MARKER_PX 8.0

typedef struct label_box {
    double u0, u1, v0, v1;   /* graph coordinates, 0..1 */
} label_box_t;

static int boxes_overlap(const label_box_t *a, const label_box_t *b)
{
    return a->u0 < b->u1 && b->u0 < a->u1 && a->v0 < b->v1 && b->v0 < a->v1;
}

/* Returns 1 when box crosses the Pareto front line, tested at points every
** 1% of the plot along each segment between front runs (runs are in
** decreasing bytes, so consecutive front runs are neighbours on the line). */
static int crosses_front(const label_box_t *box, const rpt_trace_t *t, const double *u, const double *v)
{
    int prev = -1;

    for (uint32_t i = 0; i < t->n_runs; i++) {
        if (!t->runs[i].on_front)
            continue;
        if (prev >= 0) {
            double du = u[i] - u[prev], dv = v[i] - v[prev];
            int steps = 1 + (int)(100 * sqrt(du * du + dv * dv));
            for (int s = 0; s <= steps; s++) {
                double pu = u[prev] + du * s / steps, pv = v[prev] + dv * s / steps;
                if (pu > box->u0 && pu < box->u1 && pv > box->v0 && pv < box->v1)
                    return 1;
            }
        }
        prev = (int)i;
    }
    return 0;
}

/* Places each run's label beside its marker, to the right or left and up to
** six lines up or down, at the first spot that covers no marker, no
** label placed before and no part of the front line. Writes one `set label`
** per run. */
static void write_point_labels(FILE *fp, const rpt_trace_t *t, const double *u, const double *v)
{
    static const int shifts[] = {0, 1, -1, 2, -2, 3, -3, 4, -4, 5, -5, 6, -6};
    double char_u = LABEL_CHAR_PX / AREA_WIDTH_PX, line_v = LABEL_LINE_PX / AREA_HEIGHT_PX;
    double mark_u = MARKER_PX / AREA_WIDTH_PX, mark_v = MARKER_PX / AREA_HEIGHT_PX;
    label_box_t *placed = calloc(t->n_runs ? t->n_runs : 1, sizeof *placed);
    uint32_t n_placed = 0, tag = 10;

    for (uint32_t i = 0; i < t->n_runs; i++) {
        const rpt_run_t *r = &t->runs[i];
        label_box_t best = {0};
        int best_right = 1, found = 0;
        double width = (double)strlen(r->label) * char_u;

        if (!r->done)
            continue;
        for (int side = 0; side < 2 && !found; side++) {
            for (size_t s = 0; s < sizeof shifts / sizeof shifts[0] && !found; s++) {
                label_box_t box;
                double dv = shifts[s] * line_v;
                box.u0 = side == 0 ? u[i] + 1.5 * mark_u : u[i] - 1.5 * mark_u - width;
                box.u1 = box.u0 + width;
                box.v0 = v[i] + dv - 0.5 * line_v;
                box.v1 = v[i] + dv + 0.5 * line_v;
                if (box.u0 < 0 || box.u1 > 1 || box.v0 < 0 || box.v1 > 1)
                    continue;
                int clear = !crosses_front(&box, t, u, v);
                for (uint32_t j = 0; j < n_placed && clear; j++)
                    clear = !boxes_overlap(&box, &placed[j]);
                for (uint32_t j = 0; j < t->n_runs && clear; j++) {
                    label_box_t mark = {u[j] - mark_u, u[j] + mark_u, v[j] - mark_v, v[j] + mark_v};
                    clear = !t->runs[j].done || !boxes_overlap(&box, &mark);
                }
                if (clear || (side == 0 && s == 0)) {
                    best = box;
                    best_right = side == 0;
                }
                found = clear;
            }
        }
        if (placed)
            placed[n_placed++] = best;
        fprintf(fp, "    set label %u ", tag++);
        rpt_gp_string(fp, r->label);
        fprintf(fp, " at graph %.4f, graph %.4f %s font \",8\" front\n", best_right ? best.u0 : best.u1,
                0.5 * (best.v0 + best.v1), best_right ? "left" : "right");
    }
    free(placed);
}

static kvs_status_e figure_error_bytes(rpt_ctx_t *ctx, uint32_t ti)
{
    const rpt_trace_t *t = &ctx->traces[ti];
    char name[64], file[96];
    kvs_outfile_t *dat, *front, *gp;
    double min_pos = INFINITY, max_err = 0, min_bytes = INFINITY, max_bytes = 0;
    int any_zero = 0, used[N_FAMILIES + 1] = {0}, n_front = 0;
    FILE *fp;

    snprintf(name, sizeof name, "error_bytes_%s", t->short_hash);
    for (uint32_t i = 0; i < t->n_runs; i++) {
        const rpt_run_t *r = &t->runs[i];
        if (!r->done)
            continue;
        if (r->output_rel_error > 0)
            min_pos = fmin(min_pos, r->output_rel_error);
        else
            any_zero = 1;
        max_err = fmax(max_err, r->output_rel_error);
        min_bytes = fmin(min_bytes, r->bytes_per_token);
        max_bytes = fmax(max_bytes, r->bytes_per_token);
        used[family_index(r->family)] = 1;
        n_front += r->on_front;
    }
    if (max_bytes <= 0)
        return KVS_OK;
    double zero_at = log_floor(min_pos);

    /* Explicit ranges, so label positions can be computed here: whole
    ** decades on y, and room for labels on both sides on x. */
    double x_lo = (min_bytes > 0 ? min_bytes : 1) / 2.0, x_hi = max_bytes * 2.0;
    double y_lo = pow(10, floor(log10(on_log_axis(fmin(min_pos, any_zero ? zero_at : min_pos), zero_at))));
    double y_hi = pow(10, ceil(log10(max_err > 0 ? max_err : zero_at * 10)));
    if (y_hi <= y_lo)
        y_hi = y_lo * 10;
    double *u = calloc(t->n_runs ? t->n_runs : 1, sizeof *u), *v = calloc(t->n_runs ? t->n_runs : 1, sizeof *v);
    if (!u || !v) {
        free(u);
        free(v);
        return kvs_fail(KVS_ERR_NOMEM, "out of memory");
    }
    for (uint32_t i = 0; i < t->n_runs; i++) {
        const rpt_run_t *r = &t->runs[i];
        if (!r->done)
            continue;
        u[i] = (log10(fmax(r->bytes_per_token, x_lo)) - log10(x_lo)) / (log10(x_hi) - log10(x_lo));
        v[i] = (log10(on_log_axis(r->output_rel_error, zero_at)) - log10(y_lo)) / (log10(y_hi) - log10(y_lo));
    }

    /* One data block per family (gnuplot "index"), in family_styles order. */
    snprintf(file, sizeof file, "%s.dat", name);
    kvs_status_e rc = rpt_open(ctx, file, &dat);
    if (rc != KVS_OK) {
        free(u);
        free(v);
        return rc;
    }
    fp = kvs_outfile_stream(dat);
    fprintf(fp, "# bytes_per_token\toutput_rel_error\tplotted_error\tkernel\ton_pareto_front\n");
    int block = 0;
    int block_of[N_FAMILIES + 1];
    for (int f = 0; f <= N_FAMILIES; f++) {
        block_of[f] = -1;
        if (!used[f])
            continue;
        block_of[f] = block++;
        fprintf(fp, "# family %s\n", f < N_FAMILIES ? family_styles[f].name : "other");
        for (uint32_t i = 0; i < t->n_runs; i++) {
            const rpt_run_t *r = &t->runs[i];
            if (!r->done || family_index(r->family) != f)
                continue;
            fprintf(fp, "%.9g\t%.9g\t%.9g\t", r->bytes_per_token, r->output_rel_error,
                    on_log_axis(r->output_rel_error, zero_at));
            rpt_data_string(fp, r->label);
            fprintf(fp, "\t%d\n", r->on_front);
        }
        fprintf(fp, "\n\n");
    }
    rc = rpt_close(dat, KVS_OK);

    /* The front, by increasing bytes per token; runs are sorted by
    ** decreasing bytes, so walk them backwards. */
    if (rc == KVS_OK) {
        snprintf(file, sizeof file, "pareto_%s.dat", t->short_hash);
        rc = rpt_open(ctx, file, &front);
    }
    if (rc == KVS_OK) {
        fp = kvs_outfile_stream(front);
        fprintf(fp, "# bytes_per_token\tplotted_error\tkernel (Pareto front, increasing bytes)\n");
        for (uint32_t i = t->n_runs; i-- > 0;) {
            const rpt_run_t *r = &t->runs[i];
            if (!r->on_front)
                continue;
            fprintf(fp, "%.9g\t%.9g\t", r->bytes_per_token, on_log_axis(r->output_rel_error, zero_at));
            rpt_data_string(fp, r->label);
            fputc('\n', fp);
        }
        rc = rpt_close(front, KVS_OK);
    }
    if (rc == KVS_OK) {
        snprintf(file, sizeof file, "%s.gp", name);
        rc = rpt_open(ctx, file, &gp);
    }
    if (rc != KVS_OK) {
        free(u);
        free(v);
        return rc;
    }

    fp = kvs_outfile_stream(gp);
    rpt_gp_begin(fp, ctx, name, 1100, 700);
    write_title(fp, t, "Output error vs stored bytes per token");
    fprintf(fp, "    set xlabel \"stored bytes per token, whole model, K and V, steady state without "
                "full-precision windows (log scale)\"\n");
    fprintf(fp, "    set ylabel \"output relative error ||o^ - o|| / ||o||, mean over heads (log scale)\"\n");
    fprintf(fp, "    set logscale xy\n    set grid xtics ytics mxtics mytics lc rgb \"#dddddd\"\n");
    fprintf(fp, "    set xrange [%.6g:%.6g]\n    set yrange [%.6g:%.6g]\n", x_lo, x_hi, y_lo, y_hi);
    rpt_gp_log_tics(fp, "x", x_lo, x_hi);
    fprintf(fp, "    set key outside right top box\n");
    write_key_note(fp, any_zero, zero_at);
    write_point_labels(fp, t, u, v);
    free(u);
    free(v);
    fprintf(fp, "    plot \\\n");
    int n_blocks = block;
    block = 0;
    for (int f = 0; f <= N_FAMILIES; f++) {
        if (block_of[f] < 0)
            continue;
        block++;
        fprintf(fp, "        \"%s.dat\" index %d using 1:3 with points pt %d ps 1.8 lc %d title \"%s\"%s\n", name,
                block_of[f], f < N_FAMILIES ? family_styles[f].point_type : 3, f + 1,
                f < N_FAMILIES ? family_styles[f].name : "other family",
                block < n_blocks || n_front > 1 ? ", \\" : "");
    }
    if (n_front > 1)
        fprintf(fp, "        \"pareto_%s.dat\" using 1:2 with lines dt 2 lw 2 lc rgb \"#555555\" "
                    "title \"Pareto front\"\n",
                t->short_hash);
    rpt_gp_end(fp);
    return finish_figure(ctx, ti, name, gp, "Output error vs stored bytes per token",
                         "Mean output relative error over all (layer, head) rows against the stored bytes per "
                         "token of the whole model. The x axis is each kernel's steady-state bytes per token "
                         "(the bytes/token column), which excludes full-precision windows such as quanto's "
                         "128-position residual and KIVI's recent tokens; at short contexts those windows make "
                         "the real footprint larger, as the column stored bytes/token at context shows. Marker "
                         "shape shows the kernel family; the dashed line joins the runs no other run beats on "
                         "both axes (Pareto front).");
}

/* ---- error per layer ------------------------------------------------- */

typedef struct series_point {
    double x, y;
} series_point_t;

/* Runs a query with one integer parameter (the run id) returning (x, y)
** rows. */
static kvs_status_e query_series(rpt_ctx_t *ctx, const char *sql, int64_t run_id, series_point_t **out, size_t *n)
{
    sqlite3_stmt *st;
    size_t cap = 0;
    int rc;

    *out = NULL;
    *n = 0;
    if (sqlite3_prepare_v2(ctx->conn, sql, -1, &st, NULL) != SQLITE_OK)
        return kvs_fail(KVS_ERR_DB, "%s: query failed: %s", ctx->db_path, sqlite3_errmsg(ctx->conn));
    sqlite3_bind_int64(st, 1, run_id);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (sqlite3_column_type(st, 1) == SQLITE_NULL)
            continue;
        if (*n == cap) {
            cap = cap ? cap * 2 : 64;
            series_point_t *grown = realloc(*out, cap * sizeof *grown);
            if (!grown) {
                sqlite3_finalize(st);
                return kvs_fail(KVS_ERR_NOMEM, "out of memory reading %s", ctx->db_path);
            }
            *out = grown;
        }
        (*out)[*n].x = sqlite3_column_double(st, 0);
        (*out)[*n].y = sqlite3_column_double(st, 1);
        (*n)++;
    }
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE)
        return kvs_fail(KVS_ERR_DB, "%s: query failed: %s", ctx->db_path, sqlite3_errmsg(ctx->conn));
    return KVS_OK;
}

/* Height of a line figure: a 560-pixel plot plus the legend below it, two
** entries per row of about 17 pixels at a 9-point font, and the x label. */
static int line_figure_height(int n_series)
{
    return 560 + 17 * ((n_series + 1) / 2) + 90;
}

/* Writes a line figure with one series per done run of trace ti: sql
** returns (x, y) for a run id. */
static kvs_status_e figure_lines(rpt_ctx_t *ctx, uint32_t ti, const char *prefix, const char *sql,
                                 const char *subject, const char *xlabel, const char *ylabel, const char *caption)
{
    const rpt_trace_t *t = &ctx->traces[ti];
    char name[64], file[96];
    kvs_outfile_t *dat, *gp;
    series_point_t **series = calloc(t->n_runs ? t->n_runs : 1, sizeof *series);
    size_t *lengths = calloc(t->n_runs ? t->n_runs : 1, sizeof *lengths);
    double min_pos = INFINITY;
    int any_zero = 0, n_series = 0;
    kvs_status_e rc = KVS_OK;
    FILE *fp;

    if (!series || !lengths) {
        free(series);
        free(lengths);
        return kvs_fail(KVS_ERR_NOMEM, "out of memory");
    }
    for (uint32_t i = 0; i < t->n_runs && rc == KVS_OK; i++) {
        if (!t->runs[i].done)
            continue;
        rc = query_series(ctx, sql, t->runs[i].run_id, &series[i], &lengths[i]);
        for (size_t p = 0; rc == KVS_OK && p < lengths[i]; p++) {
            if (series[i][p].y > 0)
                min_pos = fmin(min_pos, series[i][p].y);
            else
                any_zero = 1;
        }
        n_series += lengths[i] > 0;
    }
    if (rc != KVS_OK || n_series == 0)
        goto done;
    double zero_at = log_floor(min_pos);

    snprintf(name, sizeof name, "%s_%s", prefix, t->short_hash);
    snprintf(file, sizeof file, "%s.dat", name);
    rc = rpt_open(ctx, file, &dat);
    if (rc != KVS_OK)
        goto done;
    fp = kvs_outfile_stream(dat);
    fprintf(fp, "# x\ty\tplotted_y; one block per kernel run, in the plot's order\n");
    for (uint32_t i = 0; i < t->n_runs; i++) {
        if (!lengths[i])
            continue;
        fprintf(fp, "# %s\n", t->runs[i].label);
        for (size_t p = 0; p < lengths[i]; p++)
            fprintf(fp, "%.9g\t%.9g\t%.9g\n", series[i][p].x, series[i][p].y, on_log_axis(series[i][p].y, zero_at));
        fprintf(fp, "\n\n");
    }
    rc = rpt_close(dat, KVS_OK);
    if (rc != KVS_OK)
        goto done;

    snprintf(file, sizeof file, "%s.gp", name);
    rc = rpt_open(ctx, file, &gp);
    if (rc != KVS_OK)
        goto done;
    fp = kvs_outfile_stream(gp);
    rpt_gp_begin(fp, ctx, name, 1100, line_figure_height(n_series));
    write_title(fp, t, subject);
    fprintf(fp, "    set xlabel ");
    rpt_gp_string(fp, xlabel);
    fprintf(fp, "\n    set ylabel ");
    rpt_gp_string(fp, ylabel);
    fprintf(fp, "\n    set logscale y\n    set grid xtics ytics mytics lc rgb \"#dddddd\"\n");
    if (!strcmp(prefix, "layer_error")) {
        int step = 1;
        if (t->n_layers > 32)
            step = 4;
        else if (t->n_layers > 16)
            step = 2;
        fprintf(fp, "    set xtics %d\n    set xrange [-0.5:%lld.5]\n", step, (long long)t->n_layers - 1);
    }
    /* The legend sits below the plot in two columns, where the longest
    ** kernel spec has the full figure width (see line_figure_height). */
    fprintf(fp, "    set key outside below center horizontal Left reverse maxcols 2 box font \",9\" "
                "samplen 4 spacing 1.1\n");
    fprintf(fp, "    set bmargin %d\n", 5 + (int)ceil(1.1 * ((n_series + 1) / 2)));
    write_key_note(fp, any_zero, zero_at);
    fprintf(fp, "    plot \\\n");
    int block = 0;
    for (uint32_t i = 0; i < t->n_runs; i++) {
        if (!lengths[i])
            continue;
        fprintf(fp, "        \"%s.dat\" index %d using 1:3 with linespoints ps 1.0 lw 1.5 ", name, block);
        write_series_style(fp, block);
        fprintf(fp, " title ");
        rpt_gp_string(fp, t->runs[i].label);
        fprintf(fp, "%s\n", ++block < n_series ? ", \\" : "");
    }
    rpt_gp_end(fp);
    rc = finish_figure(ctx, ti, name, gp, subject, caption);
done:
    for (uint32_t i = 0; i < t->n_runs; i++)
        free(series[i]);
    free(series);
    free(lengths);
    return rc;
}

/* ---- layer x head heatmaps -------------------------------------------- */

/* Rounds v > 0 down (up when up is 1) to a 1, 2 or 5 times a power of
** ten, so a short log colour range still has labelled tics at its ends. */
static double round_125(double v, int up)
{
    static const double steps[] = {1, 2, 5, 10};
    double decade = pow(10, floor(log10(v)));

    if (up) {
        for (int i = 0; i < 4; i++) {
            if (steps[i] * decade >= v * (1 - 1e-9))
                return steps[i] * decade;
        }
        return 10 * decade;
    }
    for (int i = 3; i >= 0; i--) {
        if (steps[i] * decade <= v * (1 + 1e-9))
            return steps[i] * decade;
    }
    return decade;
}

/* Writes the heatmap of run r as heatmap_TAG_INDEX and sets *written to 1.
** When the error is zero everywhere, it writes nothing and sets *written to
** 0, because an all-zero map shows nothing the summary table lacks. */
static kvs_status_e figure_heatmap(rpt_ctx_t *ctx, uint32_t ti, const rpt_run_t *r, int index, int *written)
{
    const rpt_trace_t *t = &ctx->traces[ti];
    char name[64], file[96], subject[512];
    kvs_outfile_t *dat, *gp;
    sqlite3_stmt *st;
    double min_pos = INFINITY, max_value = 0;
    int any_zero = 0, rc;
    FILE *fp;

    snprintf(name, sizeof name, "heatmap_%s_%d", t->short_hash, index);
    if (sqlite3_prepare_v2(ctx->conn,
                           "SELECT layer, head, output_rel_error FROM layer_error WHERE run_id = ? "
                           "AND output_rel_error IS NOT NULL ORDER BY layer, head",
                           -1, &st, NULL) != SQLITE_OK)
        return kvs_fail(KVS_ERR_DB, "%s: query failed: %s", ctx->db_path, sqlite3_errmsg(ctx->conn));
    sqlite3_bind_int64(st, 1, r->run_id);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        double v = sqlite3_column_double(st, 2);
        max_value = fmax(max_value, v);
        if (v > 0)
            min_pos = fmin(min_pos, v);
        else
            any_zero = 1;
    }
    *written = 0;
    if (!(max_value > 0)) {
        sqlite3_finalize(st);
        return KVS_OK;
    }
    double zero_at = log_floor(min_pos);
    double cb_lo = round_125(any_zero ? zero_at : min_pos, 0), cb_hi = round_125(max_value, 1);
    if (cb_hi <= cb_lo)
        cb_hi = round_125(cb_lo * 1.5, 1);
    sqlite3_reset(st);

    snprintf(file, sizeof file, "%s.dat", name);
    kvs_status_e status = rpt_open(ctx, file, &dat);
    if (status != KVS_OK) {
        sqlite3_finalize(st);
        return status;
    }
    fp = kvs_outfile_stream(dat);
    fprintf(fp, "# %s\n# layer\tquery_head\toutput_rel_error\tplotted_error (NaN: not replayed)\n",
            r->label);

    /* The image plot needs the full layer x head grid: a database holding
    ** only some units (one shard) gets NaN cells, which gnuplot leaves blank,
    ** instead of stretched neighbours. */
    size_t n_cells = (size_t)t->n_layers * t->n_heads;
    double *grid = malloc((n_cells ? n_cells : 1) * sizeof *grid);
    if (!grid) {
        sqlite3_finalize(st);
        return rpt_close(dat, kvs_fail(KVS_ERR_NOMEM, "out of memory drawing %s", name));
    }
    for (size_t i = 0; i < n_cells; i++)
        grid[i] = NAN;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        int64_t layer = sqlite3_column_int64(st, 0), head = sqlite3_column_int64(st, 1);
        if (layer >= 0 && layer < t->n_layers && head >= 0 && head < t->n_heads)
            grid[(size_t)layer * t->n_heads + (size_t)head] = sqlite3_column_double(st, 2);
    }
    sqlite3_finalize(st);
    for (int64_t layer = 0; layer < t->n_layers; layer++) {
        if (layer > 0)
            fputc('\n', fp);
        for (int64_t head = 0; head < t->n_heads; head++) {
            double v = grid[(size_t)layer * t->n_heads + (size_t)head];
            fprintf(fp, "%lld\t%lld\t%.9g\t%.9g\n", (long long)layer, (long long)head, v,
                    isnan(v) ? v : on_log_axis(v, zero_at));
        }
    }
    free(grid);
    KVS_FORWARD(rpt_close(dat, rc == SQLITE_DONE ? KVS_OK
                                                  : kvs_fail(KVS_ERR_DB, "%s: query failed", ctx->db_path)));

    snprintf(subject, sizeof subject, "Output error per layer and query head: %s", r->label);
    snprintf(file, sizeof file, "%s.gp", name);
    KVS_FORWARD(rpt_open(ctx, file, &gp));
    fp = kvs_outfile_stream(gp);
    rpt_gp_begin(fp, ctx, name, 900, 760);
    write_title(fp, t, subject);
    fprintf(fp, "    set xlabel \"query head\"\n    set ylabel \"layer\"\n");
    /* Every heatmap uses a log colour scale, so maps of different kernels
    ** read the same way. */
    fprintf(fp, "    set cblabel \"output relative error (log scale)\"\n    set logscale cb\n");
    fprintf(fp, "    set cbrange [%.6g:%.6g]\n", cb_lo, cb_hi);
    rpt_gp_log_tics(fp, "cb", cb_lo, cb_hi);
    fprintf(fp, "    set palette defined (0 \"#ffffcc\", 1 \"#fd8d3c\", 2 \"#bd0026\")\n");
    fprintf(fp, "    set xrange [-0.5:%lld.5]\n    set yrange [-0.5:%lld.5]\n", (long long)t->n_heads - 1,
            (long long)t->n_layers - 1);
    fprintf(fp, "    set xtics 1\n    set ytics %d\n    set tics out\n", t->n_layers > 16 ? 2 : 1);
    if (any_zero)
        fprintf(fp, "    set label 1 \"cells with error 0 drawn at %.1e\" at screen 0.01, screen 0.02 "
                    "font \",8\"\n",
                zero_at);
    else
        fprintf(fp, "    unset label 1\n");
    fprintf(fp, "    plot \"%s.dat\" using 2:1:4 with image notitle\n", name);
    rpt_gp_end(fp);
    *written = 1;
    return finish_figure(ctx, ti, name, gp, subject,
                         "Output relative error of every (layer, query head), mean over evaluation steps.");
}

/* Heatmaps for the kernels named with --kernel, else for the Pareto front
** runs, at most MAX_HEATMAPS per trace. Kernels with zero error everywhere
** get none. */
static kvs_status_e figure_heatmaps(rpt_ctx_t *ctx, uint32_t ti)
{
    const rpt_trace_t *t = &ctx->traces[ti];
    int filtered = ctx->opts && ctx->opts->n_kernels > 0;
    int n = 0;

    for (uint32_t i = 0; i < t->n_runs && n < MAX_HEATMAPS; i++) {
        const rpt_run_t *r = &t->runs[i];
        int written = 0;
        if (r->done && (filtered || r->on_front))
            KVS_FORWARD(figure_heatmap(ctx, ti, r, n, &written));
        n += written;
    }
    return KVS_OK;
}

/* ---- top-1 / top-8 agreement ------------------------------------------ */

static kvs_status_e figure_agreement(rpt_ctx_t *ctx, uint32_t ti)
{
    const rpt_trace_t *t = &ctx->traces[ti];
    char name[64], file[96];
    kvs_outfile_t *dat, *gp;
    int n_done = 0;
    FILE *fp;

    size_t longest = 0;

    for (uint32_t i = 0; i < t->n_runs; i++) {
        n_done += t->runs[i].done;
        if (t->runs[i].done && strlen(t->runs[i].label) > longest)
            longest = strlen(t->runs[i].label);
    }
    if (!n_done)
        return KVS_OK;

    /* Labels stand vertically under their bars, so the bottom margin
    ** takes the longest one. Measured on pngcairo renderings, a 9-point
    ** spec takes about 6.8 pixels per character and a margin line 15.5. */
    int bottom_lines = 2 + (int)ceil((7.0 * (double)longest + 30) / 15.5);

    snprintf(name, sizeof name, "agreement_%s", t->short_hash);
    snprintf(file, sizeof file, "%s.dat", name);
    KVS_FORWARD(rpt_open(ctx, file, &dat));
    fp = kvs_outfile_stream(dat);
    fprintf(fp, "# kernel\ttop1_agreement\ttop8_agreement\n");
    for (uint32_t i = 0; i < t->n_runs; i++) {
        const rpt_run_t *r = &t->runs[i];
        if (!r->done)
            continue;
        rpt_data_string(fp, r->label);
        fprintf(fp, "\t%.9g\t%.9g\n", isnan(r->top1) ? 0.0 : r->top1, isnan(r->top8) ? 0.0 : r->top8);
    }
    KVS_FORWARD(rpt_close(dat, KVS_OK));

    snprintf(file, sizeof file, "%s.gp", name);
    KVS_FORWARD(rpt_open(ctx, file, &gp));
    fp = kvs_outfile_stream(gp);
    rpt_gp_begin(fp, ctx, name, n_done > 12 ? 300 + 70 * n_done : 1100, 520 + 16 * bottom_lines);
    write_title(fp, t, "Top-1 and top-8 attention agreement with exact attention");
    fprintf(fp, "    set ylabel \"agreement (fraction of evaluation steps / of top-8 positions)\"\n");
    fprintf(fp, "    set yrange [0:1.05]\n    set grid ytics lc rgb \"#dddddd\"\n");
    fprintf(fp, "    set style data histograms\n    set style histogram clustered gap 1\n");
    fprintf(fp, "    set style fill solid 0.85 border -1\n    set boxwidth 0.9\n");
    fprintf(fp, "    set xtics rotate by 90 right font \",9\"\n    set bmargin %d\n", bottom_lines);
    fprintf(fp, "    set key outside right top box\n");
    fprintf(fp, "    plot \"%s.dat\" using 2:xtic(1) title \"top-1 match rate\" lc rgb \"#3b75af\", \\\n", name);
    fprintf(fp, "         \"\" using 3 title \"top-8 overlap\" lc rgb \"#ef8636\"\n");
    rpt_gp_end(fp);
    return finish_figure(ctx, ti, name, gp, "Top-1 and top-8 agreement",
                         "Fraction of evaluation steps whose most-attended position matches exact attention "
                         "(top-1), and mean overlap of the 8 most-attended positions (top-8), over all heads.");
}

/* ---- attention step time vs context ----------------------------------- */

typedef struct timing_row {
    char *kernel;
    char *family;             /* NULL when no run of the kernel exists */
    int compressed_exec;
    const char *execution;    /* label of a run of the kernel on the trace
                                 (owned by the run), or NULL */
    char *scope;
    char *host;
    int64_t context;
    double attend_seconds;
    int64_t read_bytes;
} timing_row_t;

static void free_timings(timing_row_t *rows, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(rows[i].kernel);
        free(rows[i].family);
        free(rows[i].scope);
        free(rows[i].host);
    }
    free(rows);
}

/* Reads the timing view for trace ti: whole-model rows when a kernel has
** them, else its one-head rows. */
static kvs_status_e load_timings(rpt_ctx_t *ctx, uint32_t ti, timing_row_t **out, size_t *n)
{
    const rpt_trace_t *t = &ctx->traces[ti];
    sqlite3_stmt *st;
    size_t cap = 0;
    int rc;

    *out = NULL;
    *n = 0;
    if (sqlite3_prepare_v2(ctx->conn,
                           "SELECT kernel, scope, host, context, attend_seconds, read_bytes, family, compressed_exec "
                           "FROM timing t "
                           "WHERE trace_id = ?1 AND attend_seconds IS NOT NULL AND (scope = 'model' OR NOT EXISTS "
                           "(SELECT 1 FROM timing m WHERE m.trace_id = ?1 AND m.kernel = t.kernel "
                           "AND m.scope = 'model')) ORDER BY kernel, host, scope, context",
                           -1, &st, NULL) != SQLITE_OK)
        return kvs_fail(KVS_ERR_DB, "%s: reading timings failed: %s", ctx->db_path, sqlite3_errmsg(ctx->conn));
    sqlite3_bind_int64(st, 1, t->id);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *kernel = (const char *)sqlite3_column_text(st, 0);
        if (!rpt_kernel_selected(ctx, kernel))
            continue;
        if (*n == cap) {
            cap = cap ? cap * 2 : 32;
            timing_row_t *grown = realloc(*out, cap * sizeof *grown);
            if (!grown) {
                sqlite3_finalize(st);
                return kvs_fail(KVS_ERR_NOMEM, "out of memory reading timings");
            }
            *out = grown;
        }
        timing_row_t *row = &(*out)[(*n)++];
        row->kernel = strdup(kernel);
        row->scope = strdup((const char *)sqlite3_column_text(st, 1));
        row->host = strdup((const char *)sqlite3_column_text(st, 2));
        row->context = sqlite3_column_int64(st, 3);
        row->attend_seconds = sqlite3_column_double(st, 4);
        row->read_bytes = sqlite3_column_int64(st, 5);
        row->family = sqlite3_column_type(st, 6) == SQLITE_NULL ? NULL : strdup((const char *)sqlite3_column_text(st, 6));
        row->compressed_exec = sqlite3_column_int(st, 7);
        row->execution = NULL;
        for (uint32_t r = 0; r < t->n_runs && !row->execution; r++) {
            if (!strcmp(t->runs[r].kernel, kernel))
                row->execution = t->runs[r].execution;
        }
    }
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE)
        return kvs_fail(KVS_ERR_DB, "%s: reading timings failed: %s", ctx->db_path, sqlite3_errmsg(ctx->conn));
    return KVS_OK;
}

static int same_series(const timing_row_t *a, const timing_row_t *b)
{
    return !strcmp(a->kernel, b->kernel) && !strcmp(a->scope, b->scope) && !strcmp(a->host, b->host);
}

/* Execution class of a timed kernel: the distinction the timing figures
** are about. A run of the kernel on the trace gives the full label. */
static const char *timing_class(const timing_row_t *row)
{
    if (row->execution)
        return row->execution;
    if (!row->family)
        return "unknown execution";
    if (!strcmp(row->family, "dense"))
        return "dense";
    return row->compressed_exec ? "compressed execution" : "storage only";
}

/* Dash pattern per execution class: solid dense, dashed storage-only,
** dotted compressed execution. */
static int timing_dash(const timing_row_t *row)
{
    const char *execution = timing_class(row);

    if (!strncmp(execution, "compressed", 10))
        return 3;
    return !strncmp(execution, "storage", 7) ? 2 : 1;
}

static void series_label(char *buf, size_t cap, const timing_row_t *row)
{
    snprintf(buf, cap, "%s, %s%s [%s]", row->kernel, timing_class(row),
             strcmp(row->scope, "model") ? ", one head" : "", row->host);
}

/* Projected seconds of one timing row on dev: whole-model rows count every
** layer's overhead and every query head's flops; one-head rows one. */
static double project_row(const rpt_trace_t *t, const kvs_device_t *dev, const timing_row_t *row)
{
    int model = !strcmp(row->scope, "model");
    uint32_t layers = model ? (uint32_t)t->n_layers : 1;
    uint32_t heads = model ? (uint32_t)t->n_heads : (uint32_t)(t->n_heads / (t->n_kv_heads ? t->n_kv_heads : 1));
    double flops = kvs_costmodel_attention_flops(layers, heads, (uint32_t)t->head_dim, (uint64_t)row->context);

    return kvs_costmodel_project(dev, (double)row->read_bytes, flops, layers);
}

static kvs_status_e figure_timing(rpt_ctx_t *ctx, uint32_t ti)
{
    const rpt_trace_t *t = &ctx->traces[ti];
    timing_row_t *rows;
    size_t n;
    char name[64], file[96], label[512];
    kvs_outfile_t *dat, *gp;
    kvs_status_e rc;
    uint32_t n_dev = kvs_costmodel_n_devices(ctx->devices);
    FILE *fp;

    KVS_FORWARD(load_timings(ctx, ti, &rows, &n));
    if (n == 0) {
        free(rows);
        return KVS_OK;
    }

    /* Columns: context, measured seconds, bytes read, then the projection
    ** on each device; one block per (kernel, scope, host). */
    snprintf(name, sizeof name, "timing_%s", t->short_hash);
    snprintf(file, sizeof file, "%s.dat", name);
    rc = rpt_open(ctx, file, &dat);
    if (rc != KVS_OK) {
        free_timings(rows, n);
        return rc;
    }
    fp = kvs_outfile_stream(dat);
    fprintf(fp, "# context_tokens\tmeasured_seconds\tread_bytes");
    for (uint32_t d = 0; d < n_dev; d++)
        fprintf(fp, "\tprojected_seconds[%s]", kvs_costmodel_device(ctx->devices, d)->name);
    fprintf(fp, "\n");
    int n_series = 0;
    double min_context = INFINITY, max_context = 0;
    for (size_t i = 0; i < n; i++) {
        min_context = fmin(min_context, (double)rows[i].context);
        max_context = fmax(max_context, (double)rows[i].context);
        if (i == 0 || !same_series(&rows[i], &rows[i - 1])) {
            if (i)
                fprintf(fp, "\n\n");
            series_label(label, sizeof label, &rows[i]);
            fprintf(fp, "# %s\n", label);
            n_series++;
        }
        fprintf(fp, "%lld\t%.9g\t%lld", (long long)rows[i].context, rows[i].attend_seconds,
                (long long)rows[i].read_bytes);
        for (uint32_t d = 0; d < n_dev; d++)
            fprintf(fp, "\t%.9g", project_row(t, kvs_costmodel_device(ctx->devices, d), &rows[i]));
        fprintf(fp, "\n");
    }
    rc = rpt_close(dat, KVS_OK);

    /* Measured on this host. */
    if (rc == KVS_OK) {
        snprintf(file, sizeof file, "%s.gp", name);
        rc = rpt_open(ctx, file, &gp);
    }
    if (rc == KVS_OK) {
        fp = kvs_outfile_stream(gp);
        rpt_gp_begin(fp, ctx, name, 1100, 700);
        write_title(fp, t, "Measured attention step time vs context length (kvsim bench)");
        fprintf(fp, "    set xlabel \"context length (tokens, log scale)\"\n");
        fprintf(fp, "    set ylabel \"attention step time (seconds, median, log scale)\"\n");
        fprintf(fp, "    set logscale xy\n    set grid xtics ytics mytics lc rgb \"#dddddd\"\n");
        fprintf(fp, "    set xrange [%.6g:%.6g]\n", min_context / 1.3, max_context * 1.3);
        rpt_gp_log_tics(fp, "x", min_context / 1.3, max_context * 1.3);
        fprintf(fp, "    set key outside right top box\n    plot \\\n");
        int block = 0;
        for (size_t i = 0; i < n; i++) {
            if (i && same_series(&rows[i], &rows[i - 1]))
                continue;
            series_label(label, sizeof label, &rows[i]);
            fprintf(fp, "        \"%s.dat\" index %d using 1:2 with linespoints pt 7 lw 2 lc rgb \"%s\" dt %d title ",
                    name, block, series_colors[block % N_SERIES_COLORS], timing_dash(&rows[i]));
            rpt_gp_string(fp, label);
            fprintf(fp, "%s\n", ++block < n_series ? ", \\" : "");
        }
        rpt_gp_end(fp);
        rc = finish_figure(ctx, ti, name, gp, "Measured attention step time vs context length",
                           "Median time of one attention decode step measured by kvsim bench on the host in "
                           "brackets, whole model unless marked one head. Solid lines: dense; dashed: storage only "
                           "(dequantize, then dense attention); dotted: compressed execution.");
    }

    /* Roofline estimates: one panel per device, reading the same file. */
    char proj[64];
    snprintf(proj, sizeof proj, "projected_%s", t->short_hash);
    if (rc == KVS_OK) {
        snprintf(file, sizeof file, "%s.gp", proj);
        rc = rpt_open(ctx, file, &gp);
    }
    if (rc == KVS_OK) {
        int cols = n_dev > 4 ? 3 : 2;
        /* One panel per device plus one for the shared legend, which would
        ** cover the data inside a panel of a third of the width. */
        int rows_n = (int)((n_dev + 1 + (uint32_t)cols - 1) / (uint32_t)cols);
        fp = kvs_outfile_stream(gp);
        rpt_gp_begin(fp, ctx, proj, 1300, 420 * rows_n + 120);
        char title[1024];
        snprintf(title, sizeof title,
                 "Projected attention step time (roofline estimate: max(bytes/bandwidth, flops/peak) + "
                 "overhead x layers)\n%s, trace %s%s%s",
                 t->model, t->short_hash, t->synthetic ? "\n" : "", t->synthetic ? RPT_SYNTHETIC_BANNER : "");
        fprintf(fp, "    set multiplot layout %d,%d title ", rows_n, cols);
        rpt_gp_string(fp, title);
        fprintf(fp, "\n    set logscale xy\n    set grid xtics ytics lc rgb \"#dddddd\"\n");
        fprintf(fp, "    set xrange [%.6g:%.6g]\n", min_context / 1.3, max_context * 1.3);
        rpt_gp_log_tics(fp, "x", min_context / 1.3, max_context * 1.3);
        fprintf(fp, "    set xlabel \"context length (tokens)\"\n    set ylabel \"seconds per step (estimate)\"\n");
        fprintf(fp, "    unset key\n");
        for (uint32_t d = 0; d < n_dev; d++) {
            fprintf(fp, "    set title ");
            rpt_gp_string(fp, kvs_costmodel_device(ctx->devices, d)->name);
            fprintf(fp, "\n    plot \\\n");
            int block = 0;
            for (size_t i = 0; i < n; i++) {
                if (i && same_series(&rows[i], &rows[i - 1]))
                    continue;
                series_label(label, sizeof label, &rows[i]);
                fprintf(fp, "        \"%s.dat\" index %d using 1:%u with linespoints pt 7 ps 0.6 lc rgb \"%s\" dt %d "
                            "title ",
                        name, block, 4 + d, series_colors[block % N_SERIES_COLORS], timing_dash(&rows[i]));
                rpt_gp_string(fp, label);
                fprintf(fp, "%s\n", ++block < n_series ? ", \\" : "");
            }
        }

        /* The legend panel plots a constant above its y range, so only the
        ** key is drawn. */
        fprintf(fp, "    unset title\n    unset xlabel\n    unset ylabel\n    unset border\n    unset tics\n"
                    "    unset grid\n    unset logscale\n    set xrange [0:1]\n    set yrange [0:1]\n"
                    "    set key center center Left reverse font \",8\"\n    plot \\\n");
        int block = 0;
        for (size_t i = 0; i < n; i++) {
            if (i && same_series(&rows[i], &rows[i - 1]))
                continue;
            series_label(label, sizeof label, &rows[i]);
            fprintf(fp, "        2 with linespoints pt 7 ps 0.6 lc rgb \"%s\" dt %d title ",
                    series_colors[block % N_SERIES_COLORS], timing_dash(&rows[i]));
            rpt_gp_string(fp, label);
            fprintf(fp, "%s\n", ++block < n_series ? ", \\" : "");
        }
        fprintf(fp, "    unset multiplot\n");
        rpt_gp_end(fp);
        rc = finish_figure(ctx, ti, proj, gp, "Projected attention step time on named devices (roofline estimates)",
                           "Roofline estimates from the bytes each step reads (as measured rows record them) and "
                           "the flops of exact attention, on the device profiles in devices.tsv. These are "
                           "estimates at peak bandwidth and throughput, not measurements.");
    }
    free_timings(rows, n);
    return rc;
}

kvs_status_e rpt_figures_for_trace(rpt_ctx_t *ctx, uint32_t t)
{
    KVS_FORWARD(figure_error_bytes(ctx, t));
    KVS_FORWARD(figure_lines(ctx, t, "layer_error",
                             "SELECT layer, AVG(output_rel_error) FROM layer_error WHERE run_id = ? "
                             "GROUP BY layer ORDER BY layer",
                             "Output error per layer", "layer", "output relative error, mean over heads (log scale)",
                             "Mean output relative error over the query heads of each layer, one line per kernel."));
    KVS_FORWARD(figure_heatmaps(ctx, t));
    KVS_FORWARD(figure_lines(ctx, t, "position_error",
                             "SELECT (pos_start + pos_end) / 2.0, output_rel_error FROM position_error "
                             "WHERE run_id = ? ORDER BY bucket",
                             "Output error vs context position", "query position (tokens; buckets of 64, centre)",
                             "output relative error, step-weighted mean (log scale)",
                             "Output relative error by the query's position in the context, averaged over all "
                             "heads in buckets of 64 positions."));
    KVS_FORWARD(figure_agreement(ctx, t));
    return figure_timing(ctx, t);
}
