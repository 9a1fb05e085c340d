/* cli_util.c: error printing and strict number parsing for subcommands. */
#include "cli.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

int kvs_cli_report_error(const char *cmd, kvs_status_e status)
{
    const char *msg = kvs_error_message();

    fprintf(stderr, "kvsim %s: error: %s\n", cmd, msg[0] ? msg : kvs_strerror(status));
    return status == KVS_ERR_USAGE ? KVS_EXIT_USAGE : KVS_EXIT_ERROR;
}

int kvs_cli_usage_error(const char *cmd, const char *fmt, ...)
{
    va_list ap;

    fprintf(stderr, "kvsim %s: error: ", cmd);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, " (see 'kvsim %s --help')\n", cmd);
    return KVS_EXIT_USAGE;
}

kvs_status_e kvs_cli_parse_u64(const char *option, const char *text, uint64_t *out)
{
    char *end;

    errno = 0;
    KVS_RETURN_IF(!text || !*text || *text == '-', KVS_ERR_USAGE,
                  "%s expects a non-negative integer, got '%s'", option, text ? text : "");
    unsigned long long v = strtoull(text, &end, 10);
    KVS_RETURN_IF(errno || *end, KVS_ERR_USAGE, "%s expects a non-negative integer, got '%s'", option,
                  text);
    *out = v;
    return KVS_OK;
}

kvs_status_e kvs_cli_parse_u32(const char *option, const char *text, uint32_t min, uint32_t max,
                               uint32_t *out)
{
    uint64_t v;

    KVS_FORWARD(kvs_cli_parse_u64(option, text, &v));
    KVS_RETURN_IF(v < min || v > max, KVS_ERR_USAGE, "%s must be between %u and %u, got %s", option,
                  min, max, text);
    *out = (uint32_t)v;
    return KVS_OK;
}

kvs_status_e kvs_cli_parse_float(const char *option, const char *text, double min, double max,
                                 double *out)
{
    char *end;

    errno = 0;
    double v = text ? strtod(text, &end) : NAN;
    KVS_RETURN_IF(!text || !*text || errno || *end || !isfinite(v), KVS_ERR_USAGE,
                  "%s expects a number, got '%s'", option, text ? text : "");
    KVS_RETURN_IF(v < min || v > max, KVS_ERR_USAGE, "%s must be between %g and %g, got %s", option,
                  min, max, text);
    *out = v;
    return KVS_OK;
}
