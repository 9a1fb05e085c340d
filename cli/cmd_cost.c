/*
** cmd_cost.c: 'kvsim cost' prints, for whole models, the bytes a kernel
** stores per token and in total at a context length, and the bytes one
** decode step reads and writes, all from the kernels' own accounting.
*/
#include "cli.h"

#include "../capture/model.h"
#include "../common/fsutil.h"
#include "../kernels/kernel.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_KERNELS 64

static void usage(FILE *out)
{
    fprintf(out,
            "usage: kvsim cost (--model DIR | --config FILE) --kernel SPEC [--kernel SPEC ...]\n"
            "                  [--context N] [--json]\n\n"
            "Prints, for the whole model (every layer and KV head), the bytes each kernel\n"
            "stores per token, the cache size right after a prefill of N tokens, and the\n"
            "bytes one decode step reads and writes at N, from the kernels' own accounting.\n\n"
            "  --model DIR     model folder; its config.json gives the shapes\n"
            "  --config FILE   a config.json file instead of a folder\n"
            "  --kernel SPEC   kernel spec (see 'kvsim kernels'); repeat for several\n"
            "  --context N     context length in tokens (default 2048)\n"
            "  --json          print a JSON array, one object per kernel\n");
}

/* Whole-model figures of one kernel. */
typedef struct model_cost {
    double bytes_per_token;
    double stored_bytes;
    double read_bytes;
    double written_bytes;
    double flops;
} model_cost_t;

static kvs_status_e load_config(const char *model_dir, const char *config_path,
                                kvs_model_config_t *cfg, char *path, size_t path_cap)
{
    char *text;
    size_t size;

    if (model_dir)
        KVS_FORWARD(kvs_path_join(path, path_cap, model_dir, "config.json"));
    else
        snprintf(path, path_cap, "%s", config_path);
    kvs_status_e rc = kvs_read_file(path, &text, &size);
    if (rc != KVS_OK)
        return rc;
    rc = kvs_model_config_parse(text, size, path, cfg);
    free(text);
    return rc;
}

static kvs_status_e cost_one(const char *text, const kvs_kernel_dims_t *dims, uint64_t n,
                             kvs_kernel_spec_t **spec, model_cost_t *out)
{
    kvs_kernel_cost_t c;
    double streams = (double)dims->n_layers * dims->n_kv_heads;

    KVS_FORWARD(kvs_kernel_spec_parse(text, spec));
    KVS_FORWARD(kvs_kernel_spec_cost(*spec, dims, n, &c));
    out->bytes_per_token = c.bytes_per_token * streams;
    /* Shared tables (codebooks, rotations) are stored once per layer. */
    out->stored_bytes = (double)(c.stored_bytes - c.shared_bytes) * streams +
                        (double)c.shared_bytes * dims->n_layers;
    out->read_bytes = (double)c.read_bytes * streams;
    out->written_bytes = (double)c.written_bytes * streams;
    out->flops = c.flops * streams;
    return KVS_OK;
}

int kvs_cmd_cost(int argc, char **argv)
{
    const char *cmd = argv[0], *model_dir = NULL, *config_path = NULL;
    const char *kernels[MAX_KERNELS];
    uint32_t n_kernels = 0;
    uint64_t n_context = 2048;
    int json = 0;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return KVS_EXIT_OK;
        } else if (!strcmp(a, "--json")) {
            json = 1;
        } else if (i + 1 >= argc &&
                   (!strcmp(a, "--model") || !strcmp(a, "--config") || !strcmp(a, "--kernel") ||
                    !strcmp(a, "--context"))) {
            return kvs_cli_usage_error(cmd, "%s needs a value", a);
        } else if (!strcmp(a, "--model")) {
            model_dir = argv[++i];
        } else if (!strcmp(a, "--config")) {
            config_path = argv[++i];
        } else if (!strcmp(a, "--kernel")) {
            if (n_kernels == MAX_KERNELS)
                return kvs_cli_usage_error(cmd, "at most %d --kernel options", MAX_KERNELS);
            kernels[n_kernels++] = argv[++i];
        } else if (!strcmp(a, "--context")) {
            uint32_t v;
            kvs_status_e rc = kvs_cli_parse_u32("--context", argv[++i], 1, 1u << 30, &v);
            if (rc != KVS_OK)
                return kvs_cli_report_error(cmd, rc);
            n_context = v;
        } else {
            return kvs_cli_usage_error(cmd, "unknown argument '%s'", a);
        }
    }
    if (!model_dir == !config_path)
        return kvs_cli_usage_error(cmd, "give exactly one of --model DIR and --config FILE");
    if (n_kernels == 0)
        return kvs_cli_usage_error(cmd, "give at least one --kernel SPEC");

    kvs_model_config_t cfg;
    char path[4096];
    kvs_status_e rc = load_config(model_dir, config_path, &cfg, path, sizeof path);
    if (rc != KVS_OK)
        return kvs_cli_report_error(cmd, rc);
    kvs_kernel_dims_t dims = {
        .head_dim = cfg.head_dim, .group_size = cfg.n_heads / cfg.n_kv_heads,
        .n_layers = cfg.n_layers, .n_kv_heads = cfg.n_kv_heads, .seed = 0,
    };

    /* Every spec is parsed and costed before anything is printed, so a bad
    ** spec leaves no partial table. */
    kvs_kernel_spec_t *specs[MAX_KERNELS] = {0};
    model_cost_t costs[MAX_KERNELS];
    for (uint32_t k = 0; k < n_kernels; k++) {
        rc = cost_one(kernels[k], &dims, n_context, &specs[k], &costs[k]);
        if (rc != KVS_OK) {
            for (uint32_t j = 0; j <= k; j++)
                kvs_kernel_spec_free(specs[j]);
            return kvs_cli_report_error(cmd, rc);
        }
    }

    json_t *arr = json ? json_array() : NULL;
    if (!json) {
        printf("model: %s: %u layers, %u query heads, %u KV heads, head_dim %u\n", path,
               cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim);
        printf("context: %llu tokens; figures cover every layer and KV head, K and V\n\n",
               (unsigned long long)n_context);
        printf("%-40s %12s %14s %14s %14s  %s\n", "kernel", "bytes/token", "cache MiB",
               "read MiB/step", "write MiB/step", "execution");
    }
    for (uint32_t k = 0; k < n_kernels; k++) {
        const kvs_kernel_spec_t *spec = specs[k];
        const model_cost_t *c = &costs[k];
        const char *exec = kvs_kernel_spec_execution(spec);
        if (json) {
            json_t *o = json_object();
            json_object_set_new(o, "kernel", json_string(kvs_kernel_spec_text(spec)));
            json_object_set_new(o, "params", json_loads(kvs_kernel_spec_params_json(spec), 0, NULL));
            json_object_set_new(o, "execution", json_string(exec));
            json_object_set_new(o, "context", json_integer((json_int_t)n_context));
            json_object_set_new(o, "bytes_per_token", json_real(c->bytes_per_token));
            json_object_set_new(o, "stored_bytes", json_real(c->stored_bytes));
            json_object_set_new(o, "stored_mib", json_real(c->stored_bytes / 1048576.0));
            json_object_set_new(o, "read_bytes_per_step", json_real(c->read_bytes));
            json_object_set_new(o, "written_bytes_per_step", json_real(c->written_bytes));
            json_object_set_new(o, "flops_per_step", json_real(c->flops));
            json_array_append_new(arr, o);
        } else {
            printf("%-40s %12.1f %14.3f %14.3f %14.3f  %s\n", kvs_kernel_spec_text(spec),
                   c->bytes_per_token, c->stored_bytes / 1048576.0, c->read_bytes / 1048576.0,
                   c->written_bytes / 1048576.0, exec);
        }
        kvs_kernel_spec_free(specs[k]);
    }
    if (json) {
        json_t *root = json_object();
        json_object_set_new(root, "config", json_string(path));
        json_object_set_new(root, "n_layers", json_integer(cfg.n_layers));
        json_object_set_new(root, "n_kv_heads", json_integer(cfg.n_kv_heads));
        json_object_set_new(root, "head_dim", json_integer(cfg.head_dim));
        json_object_set_new(root, "kernels", arr);
        char *text = json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(12));
        json_decref(root);
        if (!text) {
            fprintf(stderr, "kvsim %s: error: out of memory writing JSON\n", cmd);
            return KVS_EXIT_ERROR;
        }
        printf("%s\n", text);
        free(text);
    }
    return fflush(stdout) == 0 ? KVS_EXIT_OK : KVS_EXIT_ERROR;
}
