/*
** costmodel.h: roofline estimates of an attention decode step on named
** devices.
**
** A device profile gives peak memory bandwidth, peak dense tensor
** throughput and a fixed per-layer overhead. The projected time of a step
** that reads `bytes` and performs `flops` over n_layers layers is
**
**     max(bytes / bandwidth, flops / peak) + overhead * n_layers
**
** an estimate that assumes the step runs at the device's peak: real kernels
** reach less. Profiles come from a tab-separated text file (docs/devices.tsv
** documents the columns and cites the datasheets) or from the built-in copy
** of that file.
*/
#ifndef KVS_COSTMODEL_H
#define KVS_COSTMODEL_H

#include "../common/kvs_common.h"

#include <stdint.h>

typedef struct kvs_device {
    char name[64];
    double mem_bandwidth;     /* bytes per second */
    double peak_flops;        /* floating-point operations per second */
    double layer_overhead;    /* seconds per layer per step */
    char source[512];
} kvs_device_t;

typedef struct kvs_costmodel kvs_costmodel_t;

/* Loads profiles from path, or the built-in profiles when path is NULL.
** A malformed line fails with KVS_ERR_INVALID naming the file and line. */
kvs_status_e kvs_costmodel_load(const char *path, kvs_costmodel_t **out);

/* Parses profiles from text; origin names the text in error messages. */
kvs_status_e kvs_costmodel_parse(const char *text, const char *origin, kvs_costmodel_t **out);

void kvs_costmodel_destroy(kvs_costmodel_t *model);

/* The built-in profile file, the same text as docs/devices.tsv. */
const char *kvs_costmodel_default_text(void);

uint32_t kvs_costmodel_n_devices(const kvs_costmodel_t *model);
const kvs_device_t *kvs_costmodel_device(const kvs_costmodel_t *model, uint32_t i);

/* Returns the device named name, or NULL. */
const kvs_device_t *kvs_costmodel_find(const kvs_costmodel_t *model, const char *name);

/* Projected seconds of one step on dev (formula above). */
double kvs_costmodel_project(const kvs_device_t *dev, double bytes, double flops, uint32_t n_layers);

/* Floating-point operations of exact attention for one decode step:
** q.k and a.v over `context` positions for every query head, 2 operations
** per multiply-add, so 4 * n_layers * n_heads * head_dim * context. */
double kvs_costmodel_attention_flops(uint32_t n_layers, uint32_t n_heads, uint32_t head_dim, uint64_t context);

#endif
