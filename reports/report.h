/*
** report.h: turns a results database into a report folder: gnuplot scripts
** and the data files they read, PNG and SVG figures, index.html and
** report.md. The output is deterministic for a given database.
*/
#ifndef KVS_REPORT_H
#define KVS_REPORT_H

#include "../common/kvs_common.h"

typedef struct kvs_report_opts {
    const char *const *traces;   /* content-hash prefixes or paths; NULL = all */
    uint32_t n_traces;
    const char *const *kernels;  /* kernel specs; NULL = all */
    uint32_t n_kernels;
    const char *devices_path;    /* device profiles for roofline estimates
                                    (format of docs/devices.tsv); NULL =
                                    the built-in profiles */
} kvs_report_opts_t;

/* Writes the report for db_path into out_dir (created when missing). A
** gnuplot failure returns KVS_ERR_REPORT with gnuplot's message. */
kvs_status_e kvs_report_write(const char *db_path, const char *out_dir, const kvs_report_opts_t *opts);

#endif
