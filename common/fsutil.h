/*
** fsutil.h: files written whole or not at all, and whole-file reads.
**
** kvs_outfile writes to "PATH.tmp.PID", and kvs_outfile_commit() flushes,
** fsyncs and renames it over PATH, so a reader never sees a file that looks
** complete but is not. A failed or abandoned outfile removes its temporary.
*/
#ifndef KVS_FSUTIL_H
#define KVS_FSUTIL_H

#include "kvs_common.h"

#include <stdio.h>

typedef struct kvs_outfile kvs_outfile_t;

/* Opens a temporary file beside path. Fails with KVS_ERR_IO naming the
** folder when it cannot be created. */
kvs_status_e kvs_outfile_open(const char *path, kvs_outfile_t **out);

/* The stdio stream to write to; its errors are checked at commit. */
FILE *kvs_outfile_stream(kvs_outfile_t *f);

/* Writes n bytes, failing with KVS_ERR_IO (for example on a full disk). */
kvs_status_e kvs_outfile_write(kvs_outfile_t *f, const void *data, size_t n);

/* Bytes written so far. */
uint64_t kvs_outfile_offset(const kvs_outfile_t *f);

/* Flushes, fsyncs and renames over the final path, then frees f. On error
** the temporary is removed and the final path is left untouched. */
kvs_status_e kvs_outfile_commit(kvs_outfile_t *f);

/* Removes the temporary and frees f; accepts NULL. */
void kvs_outfile_abort(kvs_outfile_t *f);

/* Reads a whole file into a NUL-terminated malloc'd buffer. */
kvs_status_e kvs_read_file(const char *path, char **data, size_t *size);

/* Writes a whole file through an outfile. */
kvs_status_e kvs_write_file(const char *path, const void *data, size_t size);

/* Creates a folder and its parents (like mkdir -p). */
kvs_status_e kvs_mkdir_p(const char *path);

/* Joins a folder and a file name into buf; fails when it does not fit. */
kvs_status_e kvs_path_join(char *buf, size_t cap, const char *dir, const char *name);

#endif
