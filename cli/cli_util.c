/* cli_util.c: error printing and strict number parsing for subcommands. */
#include "cli.h"

#include "common/fsutil.h"
#include "kernels/kernel.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

kvs_status_e kvs_cli_read_kernels_file(const char *path, char ***specs, uint32_t *n)
{
    char *data, *line, *next;
    uint32_t line_no = 0, found = 0;
    kvs_status_e rc = KVS_OK;

    KVS_FORWARD(kvs_read_file(path, &data, NULL));
    for (line = data; line && rc == KVS_OK; line = next) {
        next = strchr(line, '\n');
        if (next)
            *next++ = '\0';
        line_no++;

        char *hash = strchr(line, '#');
        if (hash)
            *hash = '\0';
        while (*line == ' ' || *line == '\t' || *line == '\r')
            line++;
        size_t len = strlen(line);
        while (len && (line[len - 1] == ' ' || line[len - 1] == '\t' || line[len - 1] == '\r'))
            line[--len] = '\0';
        if (len == 0)
            continue;

        kvs_kernel_spec_t *spec;
        rc = kvs_kernel_spec_parse(line, &spec);
        if (rc != KVS_OK) {
            kvs_error_prefix("%s:%u: '%s'", path, line_no, line);
            break;
        }
        kvs_kernel_spec_free(spec);

        char **grown = realloc(*specs, (*n + 1) * sizeof *grown);
        char *copy = strdup(line);
        if (!grown || !copy) {
            free(copy);
            if (grown)
                *specs = grown;
            rc = kvs_fail(KVS_ERR_NOMEM, "out of memory reading %s", path);
            break;
        }
        *specs = grown;
        (*specs)[(*n)++] = copy;
        found++;
    }
    free(data);
    if (rc == KVS_OK && found == 0)
        rc = kvs_fail(KVS_ERR_USAGE, "--kernels-file %s lists no kernel spec", path);
    return rc;
}
