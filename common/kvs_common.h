/*
** kvs_common.h: status codes, error messages and logging shared by every
** kvsim module.
**
** Error convention: a library function returns a kvs_status_e and, on
** failure, leaves a one-line human message in a thread-local buffer that
** kvs_error_message() returns. The message names the value that failed and
** what to do about it; main() prints it and picks the exit status. Library
** code never calls exit() and never writes to stdout.
*/
#ifndef KVS_COMMON_H
#define KVS_COMMON_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

/* Status codes, grouped by tens per subsystem. Values are stable: new codes
** are appended inside their block, and removed codes stay reserved. */
typedef enum kvs_status_e {
    KVS_OK = 0,

    /* 10..19 generic */
    KVS_ERR_USAGE = 10,        /* bad command-line option or argument */
    KVS_ERR_NOMEM = 11,
    KVS_ERR_IO = 12,           /* read, write, rename, fsync or disk full */
    KVS_ERR_NOT_FOUND = 13,    /* missing file or folder */
    KVS_ERR_INVALID = 14,      /* invalid value (NaN, out of range, ...) */
    KVS_ERR_UNSUPPORTED = 15,  /* valid input that kvsim does not handle */
    KVS_ERR_INTERNAL = 16,     /* a broken invariant: a kvsim bug */

    /* 20..29 model loading and capture */
    KVS_ERR_CONFIG = 20,       /* malformed or inconsistent config.json */
    KVS_ERR_SAFETENSORS = 21,  /* malformed safetensors header or data */
    KVS_ERR_TENSOR = 22,       /* missing tensor or wrong shape or dtype */
    KVS_ERR_TOKEN = 23,        /* token id outside the vocabulary */
    KVS_ERR_NONFINITE = 24,    /* NaN or Inf in a computed tensor */
    KVS_ERR_TOKENIZER = 25,    /* malformed tokenizer.json or text */

    /* 30..39 trace files */
    KVS_ERR_TRACE_FORMAT = 30, /* not a kvsim trace, or wrong version */
    KVS_ERR_TRACE_CORRUPT = 31,/* checksum mismatch or bad frame */
    KVS_ERR_TRACE_TRUNCATED = 32,

    /* 40..49 kernels */
    KVS_ERR_KERNEL_SPEC = 40,  /* unknown kernel or parameter, bad value */

    /* 50..59 database and reports */
    KVS_ERR_DB = 50,
    KVS_ERR_DB_SCHEMA = 51,    /* schema version mismatch or conflict */
    KVS_ERR_REPORT = 52,       /* gnuplot failed */

    KVS_STATUS_COUNT_ = 60
} kvs_status_e;

/* Short fixed name of a status code, for example "I/O error". */
const char *kvs_strerror(kvs_status_e status);

/* Stores a formatted message for the current thread and returns status, so
** that a failing path can be written `return kvs_fail(KVS_ERR_IO, ...)`. */
kvs_status_e kvs_fail(kvs_status_e status, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
kvs_status_e kvs_failv(kvs_status_e status, const char *fmt, va_list ap);

/* The message of the last kvs_fail() on this thread ("" when none). */
const char *kvs_error_message(void);

/* Prepends "context: " to the current message, for callers that add where
** the failure happened (a file name, a tensor name). */
void kvs_error_prefix(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

void kvs_error_clear(void);

/* Returns from the current function with `code` and a message when cond
** holds. Debug builds also log file:line and the failed expression. */
#define KVS_RETURN_IF(cond, code, ...)                                       \
    do {                                                                     \
        if (cond) {                                                          \
            KVS_LOG(KVS_LOG_DEBUG, "%s:%d: failed check: %s", __FILE__,      \
                    __LINE__, #cond);                                        \
            return kvs_fail((code), __VA_ARGS__);                            \
        }                                                                    \
    } while (0)

/* Evaluates a call returning kvs_status_e and returns its status on error. */
#define KVS_FORWARD(expr)                                                    \
    do {                                                                     \
        kvs_status_e kvs_forward_rc_ = (expr);                               \
        if (kvs_forward_rc_ != KVS_OK) {                                     \
            KVS_LOG(KVS_LOG_DEBUG, "%s:%d: %s failed", __FILE__, __LINE__,   \
                    #expr);                                                  \
            return kvs_forward_rc_;                                          \
        }                                                                    \
    } while (0)

/* Log levels by frequency: run, trace, layer, token. Messages go to stderr.
** Levels above KVS_LOG_COMPILED_MAX are compiled out. */
typedef enum kvs_log_level_e {
    KVS_LOG_ERROR = 0,
    KVS_LOG_INFO = 1,   /* once per run */
    KVS_LOG_DEBUG = 2,  /* once per trace or failed check */
    KVS_LOG_LAYER = 3,  /* once per layer */
    KVS_LOG_TOKEN = 4,  /* once per token */
    KVS_LOG_LEVEL_COUNT
} kvs_log_level_e;

#ifndef KVS_LOG_COMPILED_MAX
#define KVS_LOG_COMPILED_MAX KVS_LOG_LAYER
#endif

/* Runtime level; KVS_LOG_INFO unless set from KVSIM_LOG or --quiet. */
extern int kvs_log_level;
void kvs_log_write(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define KVS_LOG(level, ...)                                                  \
    do {                                                                     \
        if ((level) <= KVS_LOG_COMPILED_MAX && (level) <= kvs_log_level)     \
            kvs_log_write((level), __VA_ARGS__);                             \
    } while (0)

/* Seconds on the monotonic clock, for measuring elapsed wall time. */
double kvs_now_seconds(void);

/* Version string of this build ("0.1.0" plus the git commit when known). */
const char *kvs_version(void);

#endif
