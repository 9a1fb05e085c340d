/* cmd_report.c: kvsim report: a results database to figures and tables. */
#include "cli.h"

#include "../reports/report.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void print_help(FILE *out)
{
    fprintf(out,
            "usage: kvsim report --db DB -o DIR [--trace HASH_OR_PATH ...] [--kernel SPEC ...]\n"
            "                    [--devices FILE]\n\n"
            "Writes into DIR: gnuplot scripts (NAME.gp) and the data files they read, their PNG and SVG\n"
            "renderings, index.html (open it from disk) and report.md. Rerun a script with\n"
            "'gnuplot NAME.gp' inside DIR after editing it.\n\n"
            "  --db DB            results database written by kvsim replay and kvsim bench\n"
            "  -o, --output DIR   output folder, created when missing\n"
            "  --trace T          only traces whose content hash starts with T or whose path is T\n"
            "                     (repeatable)\n"
            "  --kernel SPEC      only runs of this kernel spec, exactly as stored (repeatable); also\n"
            "                     selects the kernels that get a layer x head heatmap\n"
            "  --devices FILE     device profiles for the roofline estimates (format of\n"
            "                     docs/devices.tsv); default: the built-in profiles\n"
            "  -h, --help         this help\n\n"
            "Environment: KVSIM_GNUPLOT names the gnuplot binary (default: gnuplot on PATH).\n"
            "Traces from a synthetic model are flagged in every figure title and document.\n");
}

int kvs_cmd_report(int argc, char **argv)
{
    const char *db = NULL, *out = NULL;
    const char **traces = calloc((size_t)argc, sizeof *traces);
    const char **kernels = calloc((size_t)argc, sizeof *kernels);
    kvs_report_opts_t opts = {0};
    kvs_status_e rc;
    int status;

    if (!traces || !kernels) {
        free(traces);
        free(kernels);
        fprintf(stderr, "kvsim report: error: out of memory\n");
        return KVS_EXIT_ERROR;
    }
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        int has_value = i + 1 < argc;
        if (!strcmp(arg, "-h") || !strcmp(arg, "--help")) {
            print_help(stdout);
            free(traces);
            free(kernels);
            return KVS_EXIT_OK;
        }
        if (!strcmp(arg, "--db") || !strcmp(arg, "-o") || !strcmp(arg, "--output") || !strcmp(arg, "--trace") ||
            !strcmp(arg, "--kernel") || !strcmp(arg, "--devices")) {
            if (!has_value) {
                free(traces);
                free(kernels);
                return kvs_cli_usage_error("report", "%s needs a value", arg);
            }
            const char *value = argv[++i];
            if (!strcmp(arg, "--db"))
                db = value;
            else if (!strcmp(arg, "-o") || !strcmp(arg, "--output"))
                out = value;
            else if (!strcmp(arg, "--trace"))
                traces[opts.n_traces++] = value;
            else if (!strcmp(arg, "--kernel"))
                kernels[opts.n_kernels++] = value;
            else
                opts.devices_path = value;
            continue;
        }
        free(traces);
        free(kernels);
        return kvs_cli_usage_error("report", "unknown option '%s'", arg);
    }
    if (!db || !out) {
        free(traces);
        free(kernels);
        return kvs_cli_usage_error("report", "%s is required", !db ? "--db DB" : "-o DIR");
    }

    opts.traces = opts.n_traces ? traces : NULL;
    opts.kernels = opts.n_kernels ? kernels : NULL;
    rc = kvs_report_write(db, out, &opts);
    status = rc == KVS_OK ? KVS_EXIT_OK : kvs_cli_report_error("report", rc);
    if (rc == KVS_OK)
        fprintf(stderr, "kvsim report: wrote %s/index.html and %s/report.md\n", out, out);
    free(traces);
    free(kernels);
    return status;
}
