/*
** cli.h: subcommand entry points and helpers shared by the cli/ files.
**
** Exit statuses: 0 success, 1 error, 2 usage error (unknown option, bad
** argument). Errors print one line: "kvsim CMD: error: MESSAGE".
*/
#ifndef KVS_CLI_H
#define KVS_CLI_H

#include "../common/kvs_common.h"

#include <stdint.h>

enum { KVS_EXIT_OK = 0, KVS_EXIT_ERROR = 1, KVS_EXIT_USAGE = 2 };

/* Each subcommand gets argv with argv[0] = its own name. */
int kvs_cmd_demo(int argc, char **argv);
int kvs_cmd_capture(int argc, char **argv);
int kvs_cmd_model(int argc, char **argv);
int kvs_cmd_trace(int argc, char **argv);
int kvs_cmd_tokenize(int argc, char **argv);
int kvs_cmd_kernels(int argc, char **argv);
int kvs_cmd_cost(int argc, char **argv);
int kvs_cmd_bench(int argc, char **argv);
int kvs_cmd_replay(int argc, char **argv);
int kvs_cmd_report(int argc, char **argv);
int kvs_cmd_db(int argc, char **argv);

/* Prints the current error message for command cmd and returns the exit
** status for status (2 for KVS_ERR_USAGE, else 1). */
int kvs_cli_report_error(const char *cmd, kvs_status_e status);

/* Prints "kvsim CMD: error: ..." plus a hint to run --help; returns 2. */
int kvs_cli_usage_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Strict number parsing: the whole string, in range, or KVS_ERR_USAGE
** naming the option and the value. */
kvs_status_e kvs_cli_parse_u32(const char *option, const char *text, uint32_t min, uint32_t max,
                               uint32_t *out);
kvs_status_e kvs_cli_parse_u64(const char *option, const char *text, uint64_t *out);
kvs_status_e kvs_cli_parse_float(const char *option, const char *text, double min, double max,
                                 double *out);

/* Reads kernel specs from a file, one per line, skipping blank lines and
** '#' comments, and parses each so that an error names the file and line.
** Appends malloc'd copies to *specs (grown with realloc) and counts them in
** *n; free each string and the array. Fails with KVS_ERR_USAGE when the
** file lists no spec. */
kvs_status_e kvs_cli_read_kernels_file(const char *path, char ***specs, uint32_t *n);

#endif
