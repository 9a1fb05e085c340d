/* test_report.c: kvs_report_write on the fixture database of db_fixture.h,
** and the device profiles of analysis/costmodel. */
#include "testutil.h"

#include "db_fixture.h"

#include "analysis/costmodel.h"
#include "common/fsutil.h"
#include "reports/report.h"

#include <dirent.h>
#include <math.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char *read_text(const char *dir, const char *name)
{
    char path[4400];
    char *data;
    size_t size;

    snprintf(path, sizeof path, "%s/%s", dir, name);
    ck_assert_msg(kvs_read_file(path, &data, &size) == KVS_OK, "cannot read %s: %s", path, kvs_error_message());
    return data;
}

static size_t file_size(const char *dir, const char *name)
{
    char path[4400];
    struct stat st;

    snprintf(path, sizeof path, "%s/%s", dir, name);
    return stat(path, &st) == 0 ? (size_t)st.st_size : 0;
}

static void assert_png(const char *dir, const char *name)
{
    static const unsigned char magic[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    char path[4400];
    unsigned char head[8] = {0};
    FILE *fp;

    snprintf(path, sizeof path, "%s/%s", dir, name);
    fp = fopen(path, "rb");
    ck_assert_msg(fp != NULL, "missing %s", path);
    ck_assert_uint_eq(fread(head, 1, 8, fp), 8);
    fclose(fp);
    ck_assert_msg(memcmp(head, magic, 8) == 0, "%s does not start with the PNG signature", path);
    ck_assert_uint_gt(file_size(dir, name), 1000);
}

/* Builds the fixture and writes its report; returns the report folder. */
static char *fixture_report(const char *test, const kvs_report_opts_t *opts, char **db_path)
{
    char *dir = kvs_test_tmpdir(test);
    char *db = malloc(4400), *out = malloc(4400);

    snprintf(db, 4400, "%s/r.db", dir);
    snprintf(out, 4400, "%s/report", dir);
    fx_build(db, fx_all, -1, 0);
    ck_assert_msg(kvs_report_write(db, out, opts) == KVS_OK, "report failed: %s", kvs_error_message());
    free(dir);
    if (db_path)
        *db_path = db;
    else
        free(db);
    return out;
}

/* Figures the fixture must produce. Every trace gets the four summary
** figures, and each of its Pareto-front runs a heatmap (4 on the real
** trace, 3 on the synthetic one). Only the real trace has bench timings. */
static const char *const expected_figures[] = {
    "error_bytes_a1b2c3d4", "layer_error_a1b2c3d4", "position_error_a1b2c3d4", "agreement_a1b2c3d4",
    "heatmap_a1b2c3d4_0",   "heatmap_a1b2c3d4_1",   "heatmap_a1b2c3d4_2",      "heatmap_a1b2c3d4_3",
    "timing_a1b2c3d4",      "projected_a1b2c3d4",   "error_bytes_ffee0011",    "layer_error_ffee0011",
    "position_error_ffee0011", "agreement_ffee0011", "heatmap_ffee0011_0",    "heatmap_ffee0011_1",
    "heatmap_ffee0011_2",
};
#define N_EXPECTED (sizeof expected_figures / sizeof expected_figures[0])

START_TEST(report_writes_every_figure)
{
    char *out = fixture_report("report_files", NULL, NULL);
    char *html = read_text(out, "index.html");
    char *md = read_text(out, "report.md");
    char name[256];

    for (size_t i = 0; i < N_EXPECTED; i++) {
        snprintf(name, sizeof name, "%s.png", expected_figures[i]);
        assert_png(out, name);
        snprintf(name, sizeof name, "%s.svg", expected_figures[i]);
        char *svg = read_text(out, name);
        ck_assert_msg(strstr(svg, "<svg") != NULL, "%s is not SVG", name);
        free(svg);
        snprintf(name, sizeof name, "%s.gp", expected_figures[i]);
        ck_assert_uint_gt(file_size(out, name), 100);
        snprintf(name, sizeof name, "src=\"%s.png\"", expected_figures[i]);
        ck_assert_msg(strstr(html, name) != NULL, "index.html does not show %s", expected_figures[i]);
        snprintf(name, sizeof name, "(%s.png)", expected_figures[i]);
        ck_assert_msg(strstr(md, name) != NULL, "report.md does not show %s", expected_figures[i]);
    }

    /* No heatmap beyond the front runs. */
    ck_assert_uint_eq(file_size(out, "heatmap_a1b2c3d4_4.png"), 0);
    ck_assert_uint_eq(file_size(out, "timing_ffee0011.png"), 0);

    /* The summary table names every kernel, marks the front and carries
    ** the fixture's mean error of quanto:bits=2 on the real trace. */
    for (int k = 0; k < FX_N_KERNELS; k++) {
        snprintf(name, sizeof name, "| %s", fx_kernels[k].spec);
        ck_assert_msg(strstr(md, name) != NULL, "report.md lacks a row for %s", fx_kernels[k].spec);
    }
    ck_assert_ptr_nonnull(strstr(md, "| quanto:bits=2 (Pareto) | quantized | storage only | 160.0 |"));
    ck_assert_ptr_nonnull(strstr(md, "| 0.15 |"));
    ck_assert_ptr_nonnull(strstr(md, "| hqq:bits=4 | quantized |"));

    /* The synthetic trace is flagged in both documents and its figures. */
    ck_assert_ptr_nonnull(strstr(md, "synthetic model: random weights, fidelity figures are not those of a trained model"));
    ck_assert_ptr_nonnull(strstr(html, "<p class=\"banner\">synthetic model: random weights"));
    char *gp = read_text(out, "error_bytes_ffee0011.gp");
    ck_assert_ptr_nonnull(strstr(gp, "synthetic model: random weights"));
    free(gp);
    gp = read_text(out, "error_bytes_a1b2c3d4.gp");
    ck_assert_ptr_null(strstr(gp, "synthetic model"));
    ck_assert_ptr_nonnull(strstr(gp, "\"error_bytes_a1b2c3d4.dat\""));
    free(gp);

    /* The staging folder is gone. */
    DIR *dir = opendir(out);
    struct dirent *e;
    while ((e = readdir(dir)))
        ck_assert_msg(strncmp(e->d_name, ".kvsim-report", 13) != 0, "staging folder %s left", e->d_name);
    closedir(dir);
    free(html);
    free(md);
    free(out);
}
END_TEST

START_TEST(writeup_table_from_runs)
{
    char *out = fixture_report("report_writeup", NULL, NULL);
    char *md = read_text(out, "report.md");
    const char *table = strstr(md, "### Cache backends compared as in the write-up");

    ck_assert_ptr_nonnull(table);
    /* Footprint is stored_bytes / 2^20: 288 * 256 B = 0.0703 MiB. The bench
    ** time of quanto:bits=4 at 256 tokens is 2e-6 + 288*3*256 * 1e-10 s. */
    ck_assert_ptr_nonnull(strstr(table, "| quanto:bits=4 | codes stored, whole cache dequantized"));
    ck_assert_ptr_nonnull(strstr(table, "| 24.12 us (bench, 256 tokens) | 0.070 MiB | 256 | 288.0 |"));
    /* Without bench rows the replay time is 1e-5 * (1 + k) per unit times
    ** 4 units: hqq:bits=4 is fixture kernel 4, so 200 us. */
    ck_assert_ptr_nonnull(strstr(table, "| hqq:bits=4 |"));
    ck_assert_ptr_nonnull(strstr(table, "| 200.00 us (replay, CPU emulation) |"));
    /* The bench row and the replay rows share the column, so its header
    ** names both sources. */
    ck_assert_ptr_nonnull(strstr(table, "replay: CPU emulation time, not device time"));
    /* 4-bit quanto on SmolLM2-135M: 180 vectors x 36 B x 2048 tokens =
    ** 12.66 MiB; 0.913 MiB / (180 x 128 B) = 41.55 dense BF16 tokens. */
    ck_assert_ptr_nonnull(strstr(table, "stores 12.7 MiB (36 bytes per 64-value vector)"));
    ck_assert_ptr_nonnull(strstr(table, "about 41.6 dense BF16 tokens"));
    /* kivi is not one of the write-up's backends. */
    const char *next = strstr(table + 10, "### ");
    const char *kivi = strstr(table, "| kivi:bits=2 |");
    ck_assert(kivi == NULL || (next && kivi > next));
    free(md);
    free(out);
}
END_TEST

/* Runs sql on the fixture database at path. */
static void exec_sql(const char *path, const char *sql)
{
    sqlite3 *conn;
    char *message = NULL;

    ck_assert_int_eq(sqlite3_open(path, &conn), SQLITE_OK);
    ck_assert_msg(sqlite3_exec(conn, sql, NULL, NULL, &message) == SQLITE_OK, "%s failed: %s", sql,
                  message ? message : "?");
    sqlite3_close(conn);
}

/* Returns the report.md row of the summary table that starts with prefix. */
static const char *summary_row(const char *md, const char *prefix)
{
    const char *row = strstr(md, prefix);

    ck_assert_msg(row != NULL, "report.md has no row starting '%s'", prefix);
    return row;
}

START_TEST(summary_labels_from_params)
{
    char *dir = kvs_test_tmpdir("report_labels");
    char db[4400], out[4400];

    snprintf(db, sizeof db, "%s/r.db", dir);
    snprintf(out, sizeof out, "%s/report", dir);
    fx_build(db, fx_all, -1, 0);

    /* params_json as replay stores it: a key and a value part, plus a
    ** select part for a selection policy. hqq:bits=4 gets a policy over
    ** dense codecs, whatever its family column says. kivi stores a window:
    ** 256 x 170 B of codes plus 25,600 B, so 270 B per token at 256. */
    exec_sql(db, "UPDATE runs SET params_json = '{\"key\":{\"codec\":\"dense\",\"dtype\":\"f32\"},"
                 "\"value\":{\"codec\":\"dense\",\"dtype\":\"f32\"}}' WHERE kernel_spec = 'dense:dtype=f32';"
                 "UPDATE runs SET params_json = '{\"key\":{\"codec\":\"affine\",\"exec\":\"storage\"},"
                 "\"value\":{\"codec\":\"affine\",\"exec\":\"storage\"}}' WHERE kernel_spec = 'quanto:bits=2';"
                 "UPDATE runs SET params_json = '{\"key\":{\"codec\":\"affine\",\"exec\":\"compressed\"},"
                 "\"value\":{\"codec\":\"affine\",\"exec\":\"compressed\"}}', stored_bytes = 69120 "
                 "WHERE kernel_spec = 'kivi:bits=2';"
                 "UPDATE runs SET params_json = '{\"key\":{\"codec\":\"dense\"},\"value\":{\"codec\":\"dense\"},"
                 "\"select\":{\"policy\":\"h2o\"}}' WHERE kernel_spec = 'hqq:bits=4';"
                 "UPDATE runs SET params_json = '{\"key\":{\"codec\":\"affine\",\"exec\":\"storage\"},"
                 "\"value\":{\"codec\":\"affine\",\"exec\":\"storage\"},\"select\":{\"policy\":\"snapkv\"}}' "
                 "WHERE kernel_spec LIKE 'snapkv:%';");
    ck_assert_msg(kvs_report_write(db, out, NULL) == KVS_OK, "report failed: %s", kvs_error_message());
    char *md = read_text(out, "report.md");

    ck_assert_ptr_nonnull(summary_row(md, "| dense:dtype=f32 (Pareto) | dense | dense | 2048.0 |"));
    ck_assert_ptr_nonnull(summary_row(md, "| quanto:bits=2 (Pareto) | quantized | storage only | 160.0 |"));
    ck_assert_ptr_nonnull(summary_row(md, "| kivi:bits=2 | quantized | compressed execution | 170.0 | 2400.0 |"));
    ck_assert_ptr_nonnull(summary_row(md, "| hqq:bits=4 | quantized | dense + selection |"));
    ck_assert_ptr_nonnull(summary_row(md, "| snapkv:budget=25%/quanto:bits=4 (Pareto) | selection | storage only + selection |"));

    /* The fixture runs without params_json parts keep family labels: a
    ** selection run without a select part still gets "+ selection". */
    ck_assert_ptr_nonnull(summary_row(md, "| dense:dtype=bf16 (Pareto) | dense | dense |"));

    /* quanto:bits=2 errors are 0.15 x (1 + zero-sum deviation), so the means
    ** of mass kept (1 - e/10) and recall@8 (1 - e/3) are 0.985 and 0.950. */
    const char *row = summary_row(md, "| quanto:bits=2 (Pareto) |");
    const char *end = strchr(row, '\n');
    const char *kept = strstr(row, "| 0.985 | 0.950 |");
    ck_assert_msg(kept != NULL && kept < end, "quanto:bits=2 row lacks mass kept 0.985 and recall 0.950");

    ck_assert_ptr_nonnull(strstr(md, "| mass kept | recall@8 |"));
    ck_assert_ptr_nonnull(strstr(md, "Logit RMSE and KL cover attended positions only"));
    ck_assert_ptr_nonnull(strstr(md, "1 - mass kept"));
    free(md);
    free(dir);
}
END_TEST

START_TEST(figure_styles_and_heatmaps)
{
    char *dir = kvs_test_tmpdir("report_styles");
    char db[4000], out[4000];
    const char *kernels[] = {"dense:dtype=f32", "quanto:bits=4", "quanto:bits=2"};
    kvs_report_opts_t opts = {.kernels = kernels, .n_kernels = 3};

    snprintf(db, sizeof db, "%s/r.db", dir);
    snprintf(out, sizeof out, "%s/report", dir);
    fx_build(db, fx_all, -1, 0);

    /* dense f32 exact everywhere, and one zero cell in quanto:bits=2. */
    exec_sql(db, "UPDATE metrics SET out_rel_l2 = 0 WHERE run_id = (SELECT id FROM runs WHERE kernel_spec = "
                 "'dense:dtype=f32');"
                 "UPDATE metrics SET out_rel_l2 = 0 WHERE layer = 0 AND head = 0 AND run_id = (SELECT id FROM runs "
                 "WHERE kernel_spec = 'quanto:bits=2');");
    ck_assert_msg(kvs_report_write(db, out, &opts) == KVS_OK, "report failed: %s", kvs_error_message());

    /* The all-zero kernel gets no heatmap, so the two maps are quanto's. */
    char *map0 = read_text(out, "heatmap_a1b2c3d4_0.dat");
    char *map1 = read_text(out, "heatmap_a1b2c3d4_1.dat");
    ck_assert_msg(strncmp(map0, "# quanto:bits=4\n", 16) == 0, "first heatmap is of %.30s", map0);
    ck_assert_msg(strncmp(map1, "# quanto:bits=2\n", 16) == 0, "second heatmap is of %.30s", map1);
    ck_assert_uint_eq(file_size(out, "heatmap_a1b2c3d4_2.png"), 0);
    free(map0);
    free(map1);

    /* Both maps use a log colour scale with explicit tics, and the one with
    ** a zero cell labels the value that cell is drawn at. */
    char *gp0 = read_text(out, "heatmap_a1b2c3d4_0.gp");
    char *gp1 = read_text(out, "heatmap_a1b2c3d4_1.gp");
    ck_assert_ptr_nonnull(strstr(gp0, "set logscale cb"));
    ck_assert_ptr_nonnull(strstr(gp1, "set logscale cb"));
    ck_assert_ptr_nonnull(strstr(gp0, "set cbtics ("));
    ck_assert_ptr_null(strstr(gp0, "error 0 drawn"));
    ck_assert_ptr_nonnull(strstr(gp1, "cells with error 0 drawn at"));
    free(gp0);
    free(gp1);

    /* Every line series has its own colour. */
    char *lines = read_text(out, "layer_error_a1b2c3d4.gp");
    char seen[16][16];
    int n_seen = 0;
    const char *plot = strstr(lines, "plot \\");
    ck_assert_ptr_nonnull(plot);
    for (const char *p = strstr(plot, "lc rgb \""); p; p = strstr(p + 1, "lc rgb \"")) {
        char color[16] = {0};
        memcpy(color, p + 8, 7);
        for (int i = 0; i < n_seen; i++)
            ck_assert_msg(strcmp(seen[i], color) != 0, "two series share colour %s", color);
        ck_assert_int_lt(n_seen, 16);
        strcpy(seen[n_seen++], color);
    }
    ck_assert_int_eq(n_seen, 3);
    ck_assert_ptr_nonnull(strstr(lines, "set key outside below"));
    free(lines);
    free(dir);
}
END_TEST

/* Compares every file of two folders byte for byte. */
static void assert_same_folders(const char *a, const char *b)
{
    DIR *dir = opendir(a);
    struct dirent *e;
    int n = 0;

    ck_assert_ptr_nonnull(dir);
    while ((e = readdir(dir))) {
        if (e->d_name[0] == '.')
            continue;
        char *x = read_text(a, e->d_name);
        char *y = read_text(b, e->d_name);
        size_t nx = file_size(a, e->d_name), ny = file_size(b, e->d_name);
        ck_assert_msg(nx == ny && memcmp(x, y, nx) == 0, "%s differs between two reports of one database",
                      e->d_name);
        free(x);
        free(y);
        n++;
    }
    closedir(dir);
    ck_assert_int_gt(n, 60);
}

START_TEST(report_is_deterministic)
{
    char *db;
    char *out = fixture_report("report_determinism", NULL, &db);
    char second[4500];

    snprintf(second, sizeof second, "%s.again", out);
    ck_assert_int_eq(kvs_report_write(db, second, NULL), KVS_OK);
    assert_same_folders(out, second);
    assert_same_folders(second, out);
    free(db);
    free(out);
}
END_TEST

START_TEST(filters_select_and_reject)
{
    const char *traces[] = {"ffee"};
    const char *kernels[] = {"quanto:bits=4", "dense:dtype=bf16"};
    kvs_report_opts_t opts = {.traces = traces, .n_traces = 1, .kernels = kernels, .n_kernels = 2};
    char *db;
    char *out = fixture_report("report_filters", &opts, &db);
    char *md = read_text(out, "report.md");

    assert_png(out, "error_bytes_ffee0011.png");
    ck_assert_uint_eq(file_size(out, "error_bytes_a1b2c3d4.png"), 0);
    /* With --kernel, the named kernels get the heatmaps. */
    assert_png(out, "heatmap_ffee0011_1.png");
    ck_assert_uint_eq(file_size(out, "heatmap_ffee0011_2.png"), 0);
    ck_assert_ptr_null(strstr(md, "snapkv"));
    free(md);

    const char *typo[] = {"quanto:bits=3"};
    kvs_report_opts_t bad = {.kernels = typo, .n_kernels = 1};
    ck_assert_int_eq(kvs_report_write(db, out, &bad), KVS_ERR_NOT_FOUND);
    ck_assert_ptr_nonnull(strstr(kvs_error_message(), "quanto:bits=3"));

    const char *no_trace[] = {"0123abc"};
    kvs_report_opts_t bad_trace = {.traces = no_trace, .n_traces = 1};
    ck_assert_int_eq(kvs_report_write(db, out, &bad_trace), KVS_ERR_NOT_FOUND);
    ck_assert_ptr_nonnull(strstr(kvs_error_message(), "0123abc"));
    free(db);
    free(out);
}
END_TEST

START_TEST(missing_gnuplot_fails_cleanly)
{
    char *db;
    char *out = fixture_report("report_no_gnuplot", NULL, &db);
    char *before = read_text(out, "index.html");

    setenv("KVSIM_GNUPLOT", "/nonexistent/bin/gnuplot", 1);
    ck_assert_int_eq(kvs_report_write(db, out, NULL), KVS_ERR_REPORT);
    unsetenv("KVSIM_GNUPLOT");
    ck_assert_ptr_nonnull(strstr(kvs_error_message(), "/nonexistent/bin/gnuplot"));
    ck_assert_ptr_nonnull(strstr(kvs_error_message(), "No such file"));

    /* The earlier report is left as it was. */
    char *after = read_text(out, "index.html");
    ck_assert_str_eq(before, after);
    free(before);
    free(after);
    free(db);
    free(out);
}
END_TEST

START_TEST(gnuplot_error_message_returned)
{
    char *db;
    char *out = fixture_report("report_gnuplot_error", NULL, &db);
    char wrapper[4500];
    FILE *fp;

    /* A wrapper that runs the real gnuplot with a bad command first, so the
    ** message is gnuplot's own. */
    snprintf(wrapper, sizeof wrapper, "%s.gnuplot.sh", out);
    fp = fopen(wrapper, "w");
    ck_assert_ptr_nonnull(fp);
    fprintf(fp, "#!/bin/sh\nexec gnuplot -e 'set terminal no_such_terminal' \"$@\"\n");
    fclose(fp);
    ck_assert_int_eq(chmod(wrapper, 0755), 0);

    setenv("KVSIM_GNUPLOT", wrapper, 1);
    ck_assert_int_eq(kvs_report_write(db, out, NULL), KVS_ERR_REPORT);
    unsetenv("KVSIM_GNUPLOT");
    ck_assert_msg(strstr(kvs_error_message(), "unknown or ambiguous terminal type") != NULL, "message: %s",
                  kvs_error_message());
    ck_assert_ptr_nonnull(strstr(kvs_error_message(), "error_bytes_a1b2c3d4.gp"));
    free(db);
    free(out);
}
END_TEST

START_TEST(devices_file_matches_builtin)
{
    const char *src = getenv("KVS_SOURCE_DIR");
    char path[4200];
    char *text;

    snprintf(path, sizeof path, "%s/docs/devices.tsv", src ? src : ".");
    ck_assert_msg(kvs_read_file(path, &text, NULL) == KVS_OK, "%s", kvs_error_message());
    ck_assert_str_eq(text, kvs_costmodel_default_text());
    free(text);
}
END_TEST

START_TEST(costmodel_roofline_values)
{
    kvs_costmodel_t *model;
    const kvs_device_t *h100;

    ck_assert_int_eq(kvs_costmodel_load(NULL, &model), KVS_OK);
    ck_assert_uint_eq(kvs_costmodel_n_devices(model), 5);
    h100 = kvs_costmodel_find(model, "H100 SXM");
    ck_assert_ptr_nonnull(h100);
    ck_assert_ptr_nonnull(kvs_costmodel_find(model, "host CPU"));
    ck_assert_ptr_null(kvs_costmodel_find(model, "H100"));
    ck_assert_double_eq(h100->mem_bandwidth, 3350e9);

    /* Memory bound: 3.35 GB at 3.35 TB/s is 1 ms, plus 30 layers x 3 us. */
    ck_assert_double_eq_tol(kvs_costmodel_project(h100, 3.35e9, 1e6, 30), 1e-3 + 90e-6, 1e-12);
    /* Compute bound: 989.4 GFLOP at 989.4 TFLOP/s is 1 ms. */
    ck_assert_double_eq_tol(kvs_costmodel_project(h100, 1.0, 989.4e9, 0), 1e-3, 1e-12);
    /* SmolLM2-135M at 2048 tokens: 4 * 30 * 9 * 64 * 2048 flops. */
    ck_assert_double_eq(kvs_costmodel_attention_flops(30, 9, 64, 2048), 4.0 * 30 * 9 * 64 * 2048);
    kvs_costmodel_destroy(model);

    ck_assert_int_eq(kvs_costmodel_parse("name\tmem\tpeak\tover\n# c\nX\t100\t1\t0\tsrc\n", "t", &model), KVS_OK);
    ck_assert_double_eq_tol(kvs_costmodel_project(kvs_costmodel_device(model, 0), 1e9, 0, 4), 0.01, 1e-15);
    kvs_costmodel_destroy(model);

    ck_assert_int_eq(kvs_costmodel_parse("X\tfast\t1\t0\n", "profiles.tsv", &model), KVS_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(kvs_error_message(), "profiles.tsv line 1"));
    ck_assert_ptr_nonnull(strstr(kvs_error_message(), "fast"));
    ck_assert_int_eq(kvs_costmodel_parse("X\t1\t1\t0\nX\t2\t2\t0\n", "p", &model), KVS_ERR_INVALID);
    ck_assert_int_eq(kvs_costmodel_parse("X\t1\t0\t0\n", "p", &model), KVS_ERR_INVALID);
    ck_assert_int_eq(kvs_costmodel_parse("# only comments\n", "p", &model), KVS_ERR_INVALID);
    ck_assert_int_eq(kvs_costmodel_load("/nonexistent/devices.tsv", &model), KVS_ERR_NOT_FOUND);
}
END_TEST

START_TEST(trace_tags_unique_and_safe)
{
    char *dir = kvs_test_tmpdir("report_tags");
    char db_path[4300], out[4300];
    kvs_db_t *db;
    int64_t ids[2];
    static const char *const hashes[2] = {"a1b2c3d4ffffffff", "../../evil/hash"};

    snprintf(db_path, sizeof db_path, "%s/r.db", dir);
    snprintf(out, sizeof out, "%s/report", dir);
    ck_assert_int_eq(kvs_db_open(db_path, &db), KVS_OK);
    for (int t = 0; t < 2; t++) {
        kvs_db_trace_info_t ti = {.path = hashes[t], .content_hash = hashes[t], .model = "m", .n_layers = FX_LAYERS,
                                  .n_heads = FX_KV_HEADS * FX_GROUP, .n_kv_heads = FX_KV_HEADS, .head_dim = 64,
                                  .n_prompt = 100, .n_generated = 156};
        ck_assert_int_eq(kvs_db_put_trace(db, &ti, &ids[t]), KVS_OK);
    }
    /* Fixture kernel 2 (quanto:bits=4) on both traces, trace 0 sharing
    ** the first 8 hash characters with the fixture's real trace. */
    int64_t fixture_ids[2];
    fx_put_traces(db, fixture_ids);
    for (int t = 0; t < 2; t++) {
        int64_t both[2] = {ids[t], ids[t]};
        int64_t run = fx_begin(db, both, 2, 0);
        ck_assert_int_eq(fx_commit(db, run, 2, 0, 0, 0), KVS_OK);
        ck_assert_int_eq(kvs_db_end_run(db, run, "done"), KVS_OK);
    }
    int64_t run = fx_begin(db, fixture_ids, 2, 0);
    ck_assert_int_eq(fx_commit(db, run, 2, 0, 0, 0), KVS_OK);
    ck_assert_int_eq(kvs_db_end_run(db, run, "done"), KVS_OK);
    kvs_db_close(db);

    ck_assert_msg(kvs_report_write(db_path, out, NULL) == KVS_OK, "%s", kvs_error_message());
    /* Trace ids follow insertion: 1 and 2 above, then the fixture's 3. */
    assert_png(out, "error_bytes_a1b2c3d4.png");
    assert_png(out, "error_bytes_a1b2c3d4_3.png");
    assert_png(out, "error_bytes_xxxxxxev.png");
    free(dir);
}
END_TEST

static int have_gnuplot(void)
{
    const char *env = getenv("KVSIM_GNUPLOT");
    char cmd[4200];

    snprintf(cmd, sizeof cmd, "'%s' -e 'exit' >/dev/null 2>&1", env && *env ? env : "gnuplot");
    return system(cmd) == 0;
}

int main(void)
{
    Suite *s = suite_create("report");
    TCase *tc = tcase_create("core");

    if (!have_gnuplot()) {
        fprintf(stderr, "SKIPPED: gnuplot not found; install the Debian package gnuplot-nox to test reports\n");
        return KVS_TEST_SKIP;
    }
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, report_writes_every_figure);
    tcase_add_test(tc, writeup_table_from_runs);
    tcase_add_test(tc, summary_labels_from_params);
    tcase_add_test(tc, figure_styles_and_heatmaps);
    tcase_add_test(tc, report_is_deterministic);
    tcase_add_test(tc, filters_select_and_reject);
    tcase_add_test(tc, missing_gnuplot_fails_cleanly);
    tcase_add_test(tc, gnuplot_error_message_returned);
    tcase_add_test(tc, devices_file_matches_builtin);
    tcase_add_test(tc, costmodel_roofline_values);
    tcase_add_test(tc, trace_tags_unique_and_safe);
    suite_add_tcase(s, tc);
    return kvs_test_run(s);
}
