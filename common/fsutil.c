/* fsutil.c: temporary-then-rename output files and whole-file reads. */
#define _POSIX_C_SOURCE 200809L
#include "fsutil.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct kvs_outfile {
    FILE *stream;
    char *path;
    char *tmp_path;
    uint64_t offset;
    int failed_errno;
};

kvs_status_e kvs_outfile_open(const char *path, kvs_outfile_t **out)
{
    kvs_outfile_t *f = calloc(1, sizeof *f);
    size_t n = strlen(path) + 32;

    *out = NULL;
    if (!f)
        return kvs_fail(KVS_ERR_NOMEM, "out of memory opening %s", path);
    f->path = strdup(path);
    f->tmp_path = malloc(n);
    if (!f->path || !f->tmp_path) {
        kvs_outfile_abort(f);
        return kvs_fail(KVS_ERR_NOMEM, "out of memory opening %s", path);
    }
    snprintf(f->tmp_path, n, "%s.tmp.%ld", path, (long)getpid());
    f->stream = fopen(f->tmp_path, "wb");
    if (!f->stream) {
        int e = errno;
        free(f->tmp_path);
        f->tmp_path = NULL;
        kvs_outfile_abort(f);
        return kvs_fail(KVS_ERR_IO, "cannot create %s: %s (check that the folder exists and is writable)",
                        path, strerror(e));
    }
    *out = f;
    return KVS_OK;
}

FILE *kvs_outfile_stream(kvs_outfile_t *f)
{
    return f->stream;
}

kvs_status_e kvs_outfile_write(kvs_outfile_t *f, const void *data, size_t n)
{
    if (n && fwrite(data, 1, n, f->stream) != n) {
        f->failed_errno = errno ? errno : EIO;
        return kvs_fail(KVS_ERR_IO, "cannot write %s: %s", f->path, strerror(f->failed_errno));
    }
    f->offset += n;
    return KVS_OK;
}

uint64_t kvs_outfile_offset(const kvs_outfile_t *f)
{
    return f->offset;
}

kvs_status_e kvs_outfile_commit(kvs_outfile_t *f)
{
    int e = 0;

    /* fflush reports a full disk that buffered fwrite calls did not. */
    if (fflush(f->stream) != 0 || ferror(f->stream))
        e = errno ? errno : EIO;
    else if (fsync(fileno(f->stream)) != 0)
        e = errno;
    if (fclose(f->stream) != 0 && !e)
        e = errno ? errno : EIO;
    f->stream = NULL;
    if (!e && rename(f->tmp_path, f->path) != 0)
        e = errno;
    if (e) {
        kvs_status_e rc = kvs_fail(KVS_ERR_IO, "cannot write %s: %s (the previous file, if any, is unchanged)",
                                   f->path, strerror(e));
        kvs_outfile_abort(f);
        return rc;
    }
    free(f->tmp_path);
    free(f->path);
    free(f);
    return KVS_OK;
}

void kvs_outfile_abort(kvs_outfile_t *f)
{
    if (!f)
        return;
    if (f->stream)
        fclose(f->stream);
    if (f->tmp_path)
        unlink(f->tmp_path);
    free(f->tmp_path);
    free(f->path);
    free(f);
}

kvs_status_e kvs_read_file(const char *path, char **data, size_t *size)
{
    FILE *fp = fopen(path, "rb");
    char *buf = NULL;
    size_t cap = 0, len = 0;

    *data = NULL;
    if (size)
        *size = 0;
    if (!fp)
        return kvs_fail(errno == ENOENT ? KVS_ERR_NOT_FOUND : KVS_ERR_IO, "cannot open %s: %s", path,
                        strerror(errno));
    for (;;) {
        if (cap - len < 65536) {
            size_t ncap = cap ? cap * 2 : 65536;
            char *nbuf = realloc(buf, ncap + 1);
            if (!nbuf) {
                free(buf);
                fclose(fp);
                return kvs_fail(KVS_ERR_NOMEM, "out of memory reading %s", path);
            }
            buf = nbuf;
            cap = ncap;
        }
        size_t got = fread(buf + len, 1, cap - len, fp);
        len += got;
        if (got == 0)
            break;
    }
    if (ferror(fp)) {
        free(buf);
        fclose(fp);
        return kvs_fail(KVS_ERR_IO, "cannot read %s", path);
    }
    fclose(fp);
    buf[len] = '\0';
    *data = buf;
    if (size)
        *size = len;
    return KVS_OK;
}

kvs_status_e kvs_write_file(const char *path, const void *data, size_t size)
{
    kvs_outfile_t *f;
    kvs_status_e rc;

    KVS_FORWARD(kvs_outfile_open(path, &f));
    rc = kvs_outfile_write(f, data, size);
    if (rc != KVS_OK) {
        kvs_outfile_abort(f);
        return rc;
    }
    return kvs_outfile_commit(f);
}

kvs_status_e kvs_mkdir_p(const char *path)
{
    char buf[4096];
    size_t n = strlen(path);

    KVS_RETURN_IF(n == 0 || n >= sizeof buf, KVS_ERR_INVALID, "invalid folder path '%s'", path);
    memcpy(buf, path, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (buf[i] != '/' && buf[i] != '\0')
            continue;
        char saved = buf[i];
        buf[i] = '\0';
        if (mkdir(buf, 0777) != 0 && errno != EEXIST)
            return kvs_fail(KVS_ERR_IO, "cannot create folder %s: %s", buf, strerror(errno));
        buf[i] = saved;
    }
    struct stat st;
    KVS_RETURN_IF(stat(path, &st) != 0 || !S_ISDIR(st.st_mode), KVS_ERR_IO,
                  "%s exists and is not a folder", path);
    return KVS_OK;
}

kvs_status_e kvs_path_join(char *buf, size_t cap, const char *dir, const char *name)
{
    int n = snprintf(buf, cap, "%s/%s", dir, name);
    KVS_RETURN_IF(n < 0 || (size_t)n >= cap, KVS_ERR_INVALID, "path too long: %s/%s", dir, name);
    return KVS_OK;
}
