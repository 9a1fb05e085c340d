/* costmodel.c: device profiles and roofline projections. */
#include "costmodel.h"

#include "../common/fsutil.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct kvs_costmodel {
    kvs_device_t *devices;
    uint32_t n_devices;
};

/* Keep in step with docs/devices.tsv; test_report compares the two. */
static const char default_profiles[] =
    "# Device profiles for kvsim's roofline estimates (kvsim report, kvsim bench).\n"
    "# Edit this file and pass it with --devices FILE; kvsim has a built-in copy.\n"
    "#\n"
    "# Columns, tab-separated:\n"
    "#   name                 device label used in reports\n"
    "#   mem_bandwidth_gb_s   peak memory bandwidth, GB/s (10^9 bytes per second)\n"
    "#   peak_tflops          peak dense tensor throughput in BF16/FP16, TFLOP/s\n"
    "#                        (without 2:4 sparsity)\n"
    "#   overhead_us          fixed cost per layer per decode step, microseconds:\n"
    "#                        an estimate of one kernel launch, not a datasheet figure\n"
    "#   source               where the bandwidth and throughput come from\n"
    "#\n"
    "# Projected attention-step time = max(bytes / bandwidth, flops / peak)\n"
    "#                                 + overhead x layers.\n"
    "name\tmem_bandwidth_gb_s\tpeak_tflops\toverhead_us\tsource\n"
    "H100 SXM\t3350\t989.4\t3\tNVIDIA H100 SXM5 specifications: HBM3 3.35 TB/s, BF16 tensor 989.4 TFLOPS dense (1978.9 with sparsity); summarized at glennklockwood.com/garden/processors/h100 from NVIDIA's Hopper whitepaper\n"
    "H200 SXM\t4800\t989.4\t3\tNVIDIA H200 SXM: HBM3e 4.8 TB/s; same GH100 compute as H100 SXM (BF16 989.4 TFLOPS dense; the 1,979 TFLOPS figure includes sparsity)\n"
    "A100 SXM 80GB\t2039\t312\t3\tNVIDIA A100 80GB SXM4 datasheet: HBM2e 2,039 GB/s, BF16 tensor 312 TFLOPS dense (624 with sparsity); summarized at glennklockwood.com/garden/processors/A100\n"
    "RTX 4090\t1008\t165.2\t3\tNVIDIA GeForce RTX 4090 (Ada AD102): GDDR6X 384-bit at 21 Gbps = 1,008 GB/s; BF16 tensor 165.2 TFLOPS dense (330.3 with sparsity), per the Ada Lovelace architecture whitepaper figures listed at waredb.com\n"
    "host CPU\t25\t0.5\t0\tplaceholder for a desktop CPU (dual-channel DDR4 about 25 GB/s sustained, 0.5 TFLOP/s FP32 with AVX2); measure your machine and edit this line\n"
;

const char *kvs_costmodel_default_text(void)
{
    return default_profiles;
}

/* Parses one positive finite number of column `column` on line `line`. */
static kvs_status_e parse_positive(const char *text, const char *origin, int line, const char *column, int allow_zero,
                                   double *out)
{
    char *end;
    double v;

    errno = 0;
    v = strtod(text, &end);
    KVS_RETURN_IF(end == text || *end || errno || !isfinite(v) || v < 0 || (!allow_zero && v == 0), KVS_ERR_INVALID,
                  "%s line %d: %s '%s' is not a %s number", origin, line, column, text,
                  allow_zero ? "non-negative" : "positive");
    *out = v;
    return KVS_OK;
}

/* Parses "name, bandwidth, tflops, overhead, source" from one tab-separated
** line, which the caller may modify. */
static kvs_status_e parse_line(char *line, const char *origin, int line_no, kvs_device_t *dev)
{
    char *fields[5];
    int n = 0;
    char *p = line;

    while (n < 5) {
        fields[n++] = p;
        p = strchr(p, '\t');
        if (!p)
            break;
        *p++ = '\0';
    }
    KVS_RETURN_IF(n < 4, KVS_ERR_INVALID,
                  "%s line %d: expected tab-separated name, bandwidth (GB/s), peak (TFLOP/s), overhead (us) "
                  "and source; found %d fields",
                  origin, line_no, n);
    KVS_RETURN_IF(!fields[0][0] || strlen(fields[0]) >= sizeof dev->name, KVS_ERR_INVALID,
                  "%s line %d: device name must have 1 to %zu characters", origin, line_no, sizeof dev->name - 1);
    memset(dev, 0, sizeof *dev);
    snprintf(dev->name, sizeof dev->name, "%s", fields[0]);
    KVS_FORWARD(parse_positive(fields[1], origin, line_no, "mem_bandwidth_gb_s", 0, &dev->mem_bandwidth));
    KVS_FORWARD(parse_positive(fields[2], origin, line_no, "peak_tflops", 0, &dev->peak_flops));
    KVS_FORWARD(parse_positive(fields[3], origin, line_no, "overhead_us", 1, &dev->layer_overhead));
    dev->mem_bandwidth *= 1e9;
    dev->peak_flops *= 1e12;
    dev->layer_overhead *= 1e-6;
    if (n == 5)
        snprintf(dev->source, sizeof dev->source, "%s", fields[4]);
    return KVS_OK;
}

kvs_status_e kvs_costmodel_parse(const char *text, const char *origin, kvs_costmodel_t **out)
{
    kvs_costmodel_t *model;
    char *copy, *line, *next;
    int line_no = 0;
    kvs_status_e rc = KVS_OK;

    *out = NULL;
    model = calloc(1, sizeof *model);
    copy = strdup(text);
    if (!model || !copy) {
        free(model);
        free(copy);
        return kvs_fail(KVS_ERR_NOMEM, "out of memory reading %s", origin);
    }
    for (line = copy; line && rc == KVS_OK; line = next) {
        next = strchr(line, '\n');
        if (next)
            *next++ = '\0';
        line_no++;
        size_t len = strlen(line);
        if (len && line[len - 1] == '\r')
            line[len - 1] = '\0';

        /* Comments, blank lines and the header row carry no profile. */
        if (!line[0] || line[0] == '#' || !strncmp(line, "name\t", 5))
            continue;
        kvs_device_t *grown = realloc(model->devices, (model->n_devices + 1) * sizeof *grown);
        if (!grown) {
            rc = kvs_fail(KVS_ERR_NOMEM, "out of memory reading %s", origin);
            break;
        }
        model->devices = grown;
        rc = parse_line(line, origin, line_no, &model->devices[model->n_devices]);
        if (rc == KVS_OK && kvs_costmodel_find(model, model->devices[model->n_devices].name))
            rc = kvs_fail(KVS_ERR_INVALID, "%s line %d: device '%s' is listed twice", origin, line_no,
                          model->devices[model->n_devices].name);
        if (rc == KVS_OK)
            model->n_devices++;
    }
    free(copy);
    if (rc == KVS_OK && model->n_devices == 0)
        rc = kvs_fail(KVS_ERR_INVALID, "%s lists no device profiles", origin);
    if (rc != KVS_OK) {
        kvs_costmodel_destroy(model);
        return rc;
    }
    *out = model;
    return KVS_OK;
}

kvs_status_e kvs_costmodel_load(const char *path, kvs_costmodel_t **out)
{
    char *text;
    kvs_status_e rc;

    if (!path)
        return kvs_costmodel_parse(default_profiles, "built-in device profiles", out);
    *out = NULL;
    KVS_FORWARD(kvs_read_file(path, &text, NULL));
    rc = kvs_costmodel_parse(text, path, out);
    free(text);
    return rc;
}

void kvs_costmodel_destroy(kvs_costmodel_t *model)
{
    if (!model)
        return;
    free(model->devices);
    free(model);
}

uint32_t kvs_costmodel_n_devices(const kvs_costmodel_t *model)
{
    return model->n_devices;
}

const kvs_device_t *kvs_costmodel_device(const kvs_costmodel_t *model, uint32_t i)
{
    return i < model->n_devices ? &model->devices[i] : NULL;
}

const kvs_device_t *kvs_costmodel_find(const kvs_costmodel_t *model, const char *name)
{
    for (uint32_t i = 0; i < model->n_devices; i++) {
        if (!strcmp(model->devices[i].name, name))
            return &model->devices[i];
    }
    return NULL;
}

double kvs_costmodel_project(const kvs_device_t *dev, double bytes, double flops, uint32_t n_layers)
{
    double memory_time = bytes / dev->mem_bandwidth;
    double compute_time = flops / dev->peak_flops;

    return fmax(memory_time, compute_time) + dev->layer_overhead * n_layers;
}

double kvs_costmodel_attention_flops(uint32_t n_layers, uint32_t n_heads, uint32_t head_dim, uint64_t context)
{
    return 4.0 * n_layers * n_heads * head_dim * (double)context;
}
