/*
** report_internal.h: data and helpers shared by the reports/ sources.
**
** A report is built in a staging folder inside the output folder. Data
** files, gnuplot scripts and their renderings are written there, and
** gnuplot runs with the staging folder as its working directory. Only when
** every step succeeded are the files renamed into the output folder, so a
** failed report leaves the previous one untouched.
*/
#ifndef KVS_REPORT_INTERNAL_H
#define KVS_REPORT_INTERNAL_H

#include "report.h"

#include "../analysis/costmodel.h"
#include "../common/fsutil.h"

#include <sqlite3.h>
#include <stdint.h>
#include <stdio.h>

#define RPT_SYNTHETIC_BANNER \
    "synthetic model: random weights, fidelity figures are not those of a trained model"

/* One run of a kernel on a trace, from the kernel_summary view. */
typedef struct rpt_run {
    int64_t run_id;
    char *kernel;           /* spec as stored */
    char *label;            /* kernel, plus the run id when a spec repeats */
    char *family;
    char *eval_mode;
    char *status;
    char *code_version;     /* provenance, from the runs table */
    char *host;
    char *started_at;
    char *finished_at;      /* "" while running */
    char *execution;        /* "dense", "storage only" or "compressed
                               execution", plus " + selection" */
    int64_t threads;
    int compressed_exec;
    int done;               /* status is "done" and metrics exist */
    int on_front;           /* not dominated among the trace's done runs */
    double bytes_per_token;
    int64_t stored_bytes;
    double measured_bytes_per_token;  /* NAN when the units predate it */
    int64_t read_bytes_per_step;
    int64_t cost_context;
    double output_rel_error;   /* NAN when the run has no metrics */
    double logit_rmse;
    double kl;
    double top1;
    double top8;
    double mass_kept;          /* exact attention mass on attended positions */
    double recall8;
    double mean_attend_seconds;
    int64_t n_units;
} rpt_run_t;

typedef struct rpt_trace {
    int64_t id;
    char *hash;
    char short_hash[32];    /* file name tag: the first 8 characters of
                               the hash, letters and digits only, plus the
                               trace id when two traces share them */
    char *path;
    char *model;
    int synthetic;
    int64_t n_layers, n_heads, n_kv_heads, head_dim, n_prompt, n_generated;
    rpt_run_t *runs;
    uint32_t n_runs;
} rpt_trace_t;

/* A rendered figure: NAME.png and NAME.svg from NAME.gp. */
typedef struct rpt_figure {
    char name[96];
    char *title;
    char *caption;
    uint32_t trace;         /* index into rpt_ctx.traces */
} rpt_figure_t;

typedef struct rpt_ctx {
    sqlite3 *conn;
    const char *db_path;
    const char *out_dir;
    char stage[4096];
    const kvs_report_opts_t *opts;
    rpt_trace_t *traces;
    uint32_t n_traces;
    rpt_figure_t *figures;
    uint32_t n_figures, cap_figures;
    kvs_costmodel_t *devices;
} rpt_ctx_t;

/* 1 when kernel passes the --kernel filter (or there is none). */
int rpt_kernel_selected(const rpt_ctx_t *ctx, const char *kernel);

/* ---- files and gnuplot (gnuplot.c) ---- */

/* Opens NAME in the staging folder for writing. */
kvs_status_e rpt_open(rpt_ctx_t *ctx, const char *name, kvs_outfile_t **out);

/* Commits f, or aborts it when rc is an error; returns the first error. */
kvs_status_e rpt_close(kvs_outfile_t *f, kvs_status_e rc);

/* Writes the opening of a gnuplot script that renders NAME.png and
** NAME.svg: the caller writes the plot commands and then rpt_gp_end(). */
void rpt_gp_begin(FILE *fp, const rpt_ctx_t *ctx, const char *name, int width, int height);
void rpt_gp_end(FILE *fp);

/* Sets tics at 1, 2 and 5 times powers of ten on a log axis ("x", "y")
** spanning less than two decades, where gnuplot would label one or none. */
void rpt_gp_log_tics(FILE *fp, const char *axis, double lo, double hi);

/* Writes s as a gnuplot double-quoted string. */
void rpt_gp_string(FILE *fp, const char *s);

/* Writes s as a double-quoted field of a gnuplot data file. */
void rpt_data_string(FILE *fp, const char *s);

/* Runs gnuplot on NAME.gp in the staging folder. KVSIM_GNUPLOT names
** another gnuplot binary. Fails with KVS_ERR_REPORT and gnuplot's stderr. */
kvs_status_e rpt_run_gnuplot(const rpt_ctx_t *ctx, const char *name);

/* Records a figure for index.html and report.md. */
kvs_status_e rpt_add_figure(rpt_ctx_t *ctx, uint32_t trace, const char *name, const char *title,
                            const char *caption);

/* ---- figures (figures.c) ---- */

kvs_status_e rpt_figures_for_trace(rpt_ctx_t *ctx, uint32_t t);

/* ---- index.html and report.md (tables.c) ---- */

kvs_status_e rpt_write_markdown(rpt_ctx_t *ctx);
kvs_status_e rpt_write_html(rpt_ctx_t *ctx);

/* Formats a byte count in binary units ("1.50 MiB"). */
void rpt_format_bytes(char *buf, size_t cap, double bytes);
/* Formats seconds with a unit ("12.3 us", "4.56 ms"). */
void rpt_format_seconds(char *buf, size_t cap, double seconds);

#endif
