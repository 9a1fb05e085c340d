/* status.c: kvs_strerror, the thread-local error message and logging. */
#include "kvs_common.h"

#include <stdio.h>
#include <string.h>

#ifndef KVS_GIT_VERSION
#define KVS_GIT_VERSION "unknown"
#endif

int kvs_log_level = KVS_LOG_INFO;

static _Thread_local char error_message[1024];

const char *kvs_strerror(kvs_status_e status)
{
    switch (status) {
    case KVS_OK: return "success";
    case KVS_ERR_USAGE: return "usage error";
    case KVS_ERR_NOMEM: return "out of memory";
    case KVS_ERR_IO: return "I/O error";
    case KVS_ERR_NOT_FOUND: return "not found";
    case KVS_ERR_INVALID: return "invalid value";
    case KVS_ERR_UNSUPPORTED: return "unsupported";
    case KVS_ERR_INTERNAL: return "internal error";
    case KVS_ERR_CONFIG: return "invalid model config";
    case KVS_ERR_SAFETENSORS: return "invalid safetensors file";
    case KVS_ERR_TENSOR: return "missing or mismatched tensor";
    case KVS_ERR_TOKEN: return "token id out of vocabulary";
    case KVS_ERR_NONFINITE: return "non-finite value";
    case KVS_ERR_TOKENIZER: return "tokenizer error";
    case KVS_ERR_TRACE_FORMAT: return "not a kvsim trace";
    case KVS_ERR_TRACE_CORRUPT: return "corrupted trace";
    case KVS_ERR_TRACE_TRUNCATED: return "truncated trace";
    case KVS_ERR_KERNEL_SPEC: return "invalid kernel spec";
    case KVS_ERR_DB: return "database error";
    case KVS_ERR_DB_SCHEMA: return "database schema mismatch";
    case KVS_ERR_REPORT: return "report generation failed";
    case KVS_STATUS_COUNT_: break;
    }
    return "unknown status";
}

kvs_status_e kvs_failv(kvs_status_e status, const char *fmt, va_list ap)
{
    vsnprintf(error_message, sizeof error_message, fmt, ap);
    return status;
}

kvs_status_e kvs_fail(kvs_status_e status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    kvs_failv(status, fmt, ap);
    va_end(ap);
    return status;
}

const char *kvs_error_message(void)
{
    return error_message;
}

void kvs_error_prefix(const char *fmt, ...)
{
    char prefix[512];
    char old[sizeof error_message];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, error_message, sizeof old);
    snprintf(error_message, sizeof error_message, "%.500s: %.500s", prefix, old);
}

void kvs_error_clear(void)
{
    error_message[0] = '\0';
}

void kvs_log_write(int level, const char *fmt, ...)
{
    static const char *const names[] = {"error", "info", "debug", "layer", "token"};
    _Static_assert(sizeof names / sizeof names[0] == KVS_LOG_LEVEL_COUNT,
                   "one name per log level");
    va_list ap;

    fprintf(stderr, "kvsim[%s]: ", names[level]);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

const char *kvs_version(void)
{
    return "0.1.0+" KVS_GIT_VERSION;
}
