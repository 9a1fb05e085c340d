/*
** safetensors.h: strict reader of the safetensors format.
**
** A file is an 8-byte little-endian header length N, N bytes of JSON, then
** the data area. The JSON maps tensor names to {"dtype", "shape",
** "data_offsets": [begin, end]} with offsets relative to the data area; an
** optional "__metadata__" entry maps strings to strings.
**
** The parser rejects everything else. That covers a header longer than
** KVS_ST_MAX_HEADER or than the file, invalid JSON and unknown keys. It also
** covers a dtype other than BF16, F16 or F32 (named in the message), an
** offset outside the data area, a byte size other than product(shape) times
** the element size, and overlapping tensors.
*/
#ifndef KVS_SAFETENSORS_H
#define KVS_SAFETENSORS_H

#include "model.h"

#include <stddef.h>
#include <stdint.h>

/* Upper bound on the JSON header (100 MB): real headers are a few hundred
** KB, and the bound stops a corrupted length from driving a huge parse. */
#define KVS_ST_MAX_HEADER (100u * 1000u * 1000u)
#define KVS_ST_MAX_DIMS 8

typedef struct kvs_st_tensor {
    const char *name;
    kvs_wtype_e type;
    uint32_t n_dims;
    uint64_t shape[KVS_ST_MAX_DIMS];
    uint64_t offset;   /* from the start of the file */
    uint64_t nbytes;
} kvs_st_tensor_t;

typedef struct kvs_st_file kvs_st_file_t;

/* Memory-maps path and validates its header. */
kvs_status_e kvs_st_open(const char *path, kvs_st_file_t **out);

/* Validates size bytes already in memory; name labels messages. data must
** stay valid while the handle lives. Used by tests and the fuzzer. */
kvs_status_e kvs_st_parse(const void *data, size_t size, const char *name, kvs_st_file_t **out);

void kvs_st_close(kvs_st_file_t *f);

/* The tensor called name, or NULL. */
const kvs_st_tensor_t *kvs_st_find(const kvs_st_file_t *f, const char *name);
uint32_t kvs_st_count(const kvs_st_file_t *f);
const kvs_st_tensor_t *kvs_st_tensor(const kvs_st_file_t *f, uint32_t i);
/* Start of the file bytes (tensor data is at base + offset). */
const uint8_t *kvs_st_base(const kvs_st_file_t *f);
const char *kvs_st_path(const kvs_st_file_t *f);

#endif
