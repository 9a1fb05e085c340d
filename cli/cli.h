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

#endif
