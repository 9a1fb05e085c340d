/* safetensors.c: header validation and memory mapping of .safetensors files. */
#include "safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

struct kvs_st_file {
    char *path;
    const uint8_t *base;
    size_t size;
    int mapped;               /* base came from mmap and is unmapped at close */
    kvs_st_tensor_t *tensors; /* sorted by offset */
    uint32_t n_tensors;
    char *names;              /* all tensor names, NUL-separated */
};

static const char *const wtype_names[] = {"F32", "F16", "BF16"};
_Static_assert(sizeof wtype_names / sizeof wtype_names[0] == KVS_WTYPE_COUNT,
               "one name per weight type");

const char *kvs_wtype_name(kvs_wtype_e type)
{
    return (unsigned)type < KVS_WTYPE_COUNT ? wtype_names[type] : "unknown";
}

size_t kvs_wtype_size(kvs_wtype_e type)
{
    return type == KVS_WTYPE_F32 ? 4 : 2;
}

/* Safetensors dtypes kvsim does not compute with, listed so that the
** message names them as unsupported rather than unknown. */
static int is_known_other_dtype(const char *s)
{
    static const char *const others[] = {"F64", "I64", "I32", "I16", "I8", "U64", "U32",
                                         "U16", "U8", "BOOL", "F8_E4M3", "F8_E5M2",
                                         "F8_E8M0", "F6_E2M3", "F6_E3M2", "F4", "C64"};
    for (size_t i = 0; i < sizeof others / sizeof others[0]; i++)
        if (!strcmp(s, others[i]))
            return 1;
    return 0;
}

static int compare_offset(const void *a, const void *b)
{
    const kvs_st_tensor_t *x = a, *y = b;

    if (x->offset != y->offset)
        return x->offset < y->offset ? -1 : 1;
    return x->nbytes < y->nbytes ? -1 : x->nbytes > y->nbytes;
}

static kvs_status_e parse_tensor(const char *file, const char *name, json_t *entry,
                                 uint64_t data_start, uint64_t data_size, kvs_st_tensor_t *t)
{
    const char *key;
    json_t *value;
    json_t *dtype = NULL, *shape = NULL, *offsets = NULL;

    KVS_RETURN_IF(!json_is_object(entry), KVS_ERR_SAFETENSORS,
                  "%s: tensor '%s' is not a JSON object in the header", file, name);
    json_object_foreach(entry, key, value) {
        if (!strcmp(key, "dtype"))
            dtype = value;
        else if (!strcmp(key, "shape"))
            shape = value;
        else if (!strcmp(key, "data_offsets"))
            offsets = value;
        else
            return kvs_fail(KVS_ERR_SAFETENSORS, "%s: tensor '%s' has unknown key '%s' in the header",
                            file, name, key);
    }

    KVS_RETURN_IF(!json_is_string(dtype), KVS_ERR_SAFETENSORS,
                  "%s: tensor '%s' has no \"dtype\" string", file, name);
    const char *d = json_string_value(dtype);
    if (!strcmp(d, "F32"))
        t->type = KVS_WTYPE_F32;
    else if (!strcmp(d, "F16"))
        t->type = KVS_WTYPE_F16;
    else if (!strcmp(d, "BF16"))
        t->type = KVS_WTYPE_BF16;
    else if (is_known_other_dtype(d))
        return kvs_fail(KVS_ERR_SAFETENSORS,
                        "%s: tensor '%s' has dtype %s; kvsim reads only BF16, F16 and F32 "
                        "(convert the checkpoint)", file, name, d);
    else
        return kvs_fail(KVS_ERR_SAFETENSORS, "%s: tensor '%s' has unknown dtype '%.40s'", file,
                        name, d);

    KVS_RETURN_IF(!json_is_array(shape), KVS_ERR_SAFETENSORS,
                  "%s: tensor '%s' has no \"shape\" array", file, name);
    KVS_RETURN_IF(json_array_size(shape) > KVS_ST_MAX_DIMS, KVS_ERR_SAFETENSORS,
                  "%s: tensor '%s' has %zu dimensions, more than %d", file, name,
                  json_array_size(shape), KVS_ST_MAX_DIMS);
    t->n_dims = (uint32_t)json_array_size(shape);

    /* The element count is checked for overflow as it is built, because a
    ** crafted shape could otherwise wrap to match a small byte range. */
    uint64_t count = 1;
    for (uint32_t i = 0; i < t->n_dims; i++) {
        json_t *dim = json_array_get(shape, i);
        KVS_RETURN_IF(!json_is_integer(dim) || json_integer_value(dim) < 0, KVS_ERR_SAFETENSORS,
                      "%s: tensor '%s' shape[%u] is not a non-negative integer", file, name, i);
        t->shape[i] = (uint64_t)json_integer_value(dim);
        KVS_RETURN_IF(t->shape[i] && count > UINT64_MAX / 8 / t->shape[i], KVS_ERR_SAFETENSORS,
                      "%s: tensor '%s' shape is too large", file, name);
        count *= t->shape[i];
    }

    KVS_RETURN_IF(!json_is_array(offsets) || json_array_size(offsets) != 2, KVS_ERR_SAFETENSORS,
                  "%s: tensor '%s' has no \"data_offsets\" [begin, end] array", file, name);
    json_t *jb = json_array_get(offsets, 0), *je = json_array_get(offsets, 1);
    KVS_RETURN_IF(!json_is_integer(jb) || !json_is_integer(je) || json_integer_value(jb) < 0 ||
                      json_integer_value(je) < json_integer_value(jb),
                  KVS_ERR_SAFETENSORS,
                  "%s: tensor '%s' data_offsets must be integers with 0 <= begin <= end", file,
                  name);
    uint64_t begin = (uint64_t)json_integer_value(jb), end = (uint64_t)json_integer_value(je);
    KVS_RETURN_IF(end > data_size, KVS_ERR_SAFETENSORS,
                  "%s: tensor '%s' data_offsets [%llu, %llu] end outside the data area of %llu "
                  "bytes (file truncated or header corrupted)",
                  file, name, (unsigned long long)begin, (unsigned long long)end,
                  (unsigned long long)data_size);
    KVS_RETURN_IF(end - begin != count * kvs_wtype_size(t->type), KVS_ERR_SAFETENSORS,
                  "%s: tensor '%s' holds %llu bytes but its shape and dtype %s need %llu", file,
                  name, (unsigned long long)(end - begin), d,
                  (unsigned long long)(count * kvs_wtype_size(t->type)));
    t->offset = data_start + begin;
    t->nbytes = end - begin;
    return KVS_OK;
}

static kvs_status_e parse_metadata(const char *file, json_t *meta)
{
    const char *key;
    json_t *value;

    KVS_RETURN_IF(!json_is_object(meta), KVS_ERR_SAFETENSORS,
                  "%s: \"__metadata__\" must be an object of strings", file);
    json_object_foreach(meta, key, value) {
        KVS_RETURN_IF(!json_is_string(value), KVS_ERR_SAFETENSORS,
                      "%s: \"__metadata__\" key '%s' is not a string", file, key);
    }
    return KVS_OK;
}

static kvs_status_e parse_header(kvs_st_file_t *f)
{
    const char *file = f->path;

    KVS_RETURN_IF(f->size < 8, KVS_ERR_SAFETENSORS,
                  "%s: %zu bytes is too short for a safetensors file (8-byte header length missing)",
                  file, f->size);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--)
        n = (n << 8) | f->base[i];
    KVS_RETURN_IF(n > KVS_ST_MAX_HEADER, KVS_ERR_SAFETENSORS,
                  "%s: header length %llu exceeds the %u-byte limit (not a safetensors file?)",
                  file, (unsigned long long)n, KVS_ST_MAX_HEADER);
    KVS_RETURN_IF(n > f->size - 8, KVS_ERR_SAFETENSORS,
                  "%s: header length %llu runs past the end of the %zu-byte file (truncated?)",
                  file, (unsigned long long)n, f->size);
    KVS_RETURN_IF(n < 2, KVS_ERR_SAFETENSORS, "%s: header of %llu bytes cannot be a JSON object",
                  file, (unsigned long long)n);

    json_error_t jerr;
    json_t *root = json_loadb((const char *)f->base + 8, (size_t)n, JSON_REJECT_DUPLICATES, &jerr);
    KVS_RETURN_IF(!root, KVS_ERR_SAFETENSORS, "%s: header is not valid JSON: %s (line %d)", file,
                  jerr.text, jerr.line);

    kvs_status_e rc = KVS_OK;
    if (!json_is_object(root)) {
        rc = kvs_fail(KVS_ERR_SAFETENSORS, "%s: header is not a JSON object", file);
        goto done;
    }

    size_t n_entries = json_object_size(root);
    size_t names_len = 0;
    const char *key;
    json_t *value;
    json_object_foreach(root, key, value)
        names_len += strlen(key) + 1;
    f->tensors = calloc(n_entries ? n_entries : 1, sizeof *f->tensors);
    f->names = malloc(names_len ? names_len : 1);
    if (!f->tensors || !f->names) {
        rc = kvs_fail(KVS_ERR_NOMEM, "%s: out of memory reading %zu header entries", file,
                      n_entries);
        goto done;
    }

    uint64_t data_start = 8 + n, data_size = f->size - 8 - n;
    char *name_at = f->names;
    json_object_foreach(root, key, value) {
        if (!strcmp(key, "__metadata__")) {
            rc = parse_metadata(file, value);
        } else {
            kvs_st_tensor_t *t = &f->tensors[f->n_tensors];
            rc = parse_tensor(file, key, value, data_start, data_size, t);
            size_t len = strlen(key) + 1;
            memcpy(name_at, key, len);
            t->name = name_at;
            name_at += len;
            f->n_tensors++;
        }
        if (rc != KVS_OK)
            goto done;
    }

    /* Overlapping tensors would alias each other's weights; sorting by
    ** offset makes the check one pass over neighbours. Empty tensors take
    ** no bytes and cannot overlap. */
    qsort(f->tensors, f->n_tensors, sizeof *f->tensors, compare_offset);
    uint64_t prev_end = data_start;
    const char *prev_name = NULL;
    for (uint32_t i = 0; i < f->n_tensors; i++) {
        const kvs_st_tensor_t *t = &f->tensors[i];
        if (!t->nbytes)
            continue;
        if (prev_name && t->offset < prev_end) {
            rc = kvs_fail(KVS_ERR_SAFETENSORS,
                          "%s: tensors '%s' and '%s' overlap in the data area (header corrupted)",
                          file, prev_name, t->name);
            goto done;
        }
        prev_end = t->offset + t->nbytes;
        prev_name = t->name;
    }

done:
    json_decref(root);
    return rc;
}

static kvs_status_e st_new(const char *name, kvs_st_file_t **out)
{
    kvs_st_file_t *f = calloc(1, sizeof *f);

    *out = NULL;
    if (!f || !(f->path = strdup(name))) {
        free(f);
        return kvs_fail(KVS_ERR_NOMEM, "out of memory opening %s", name);
    }
    *out = f;
    return KVS_OK;
}

kvs_status_e kvs_st_parse(const void *data, size_t size, const char *name, kvs_st_file_t **out)
{
    kvs_st_file_t *f;

    KVS_FORWARD(st_new(name, &f));
    f->base = data;
    f->size = size;
    kvs_status_e rc = parse_header(f);
    if (rc != KVS_OK) {
        kvs_st_close(f);
        return rc;
    }
    *out = f;
    return KVS_OK;
}

kvs_status_e kvs_st_open(const char *path, kvs_st_file_t **out)
{
    kvs_st_file_t *f;
    struct stat st;

    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        return kvs_fail(e == ENOENT ? KVS_ERR_NOT_FOUND : KVS_ERR_IO, "cannot open %s: %s", path,
                        strerror(e));
    }
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return kvs_fail(KVS_ERR_IO, "%s is not a readable regular file", path);
    }
    kvs_status_e rc = st_new(path, &f);
    if (rc != KVS_OK) {
        close(fd);
        return rc;
    }
    f->size = (size_t)st.st_size;
    if (f->size > 0) {
        void *p = mmap(NULL, f->size, PROT_READ, MAP_PRIVATE | MAP_POPULATE, fd, 0);
        if (p == MAP_FAILED) {
            int e = errno;
            close(fd);
            kvs_st_close(f);
            return kvs_fail(KVS_ERR_IO, "cannot memory-map %s: %s", path, strerror(e));
        }
        f->base = p;
        f->mapped = 1;
    }
    close(fd);

    rc = parse_header(f);
    if (rc != KVS_OK) {
        kvs_st_close(f);
        return rc;
    }
    *out = f;
    return KVS_OK;
}

void kvs_st_close(kvs_st_file_t *f)
{
    if (!f)
        return;
    if (f->mapped)
        munmap((void *)f->base, f->size);
    free(f->tensors);
    free(f->names);
    free(f->path);
    free(f);
}

const kvs_st_tensor_t *kvs_st_find(const kvs_st_file_t *f, const char *name)
{
    for (uint32_t i = 0; i < f->n_tensors; i++)
        if (!strcmp(f->tensors[i].name, name))
            return &f->tensors[i];
    return NULL;
}

uint32_t kvs_st_count(const kvs_st_file_t *f)
{
    return f->n_tensors;
}

const kvs_st_tensor_t *kvs_st_tensor(const kvs_st_file_t *f, uint32_t i)
{
    return i < f->n_tensors ? &f->tensors[i] : NULL;
}

const uint8_t *kvs_st_base(const kvs_st_file_t *f)
{
    return f->base;
}

const char *kvs_st_path(const kvs_st_file_t *f)
{
    return f->path;
}
