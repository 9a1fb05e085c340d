/*
** fuzz_kernel_spec.c: libFuzzer target for kernel spec parsing.
**
** Every input is a spec string. When it parses, the stored text must equal
** the input and the parameter JSON must be valid. When it also passes the
** shape check for SmolLM2's stream shape, its cost is computed and a kernel
** runs a short stream: 40 appends, the end of prefill, 8 more appends and
** an attention step. The weights must sum to 1 or be all zero.
*/
#include "kernels/kernel.h"

#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

enum { D = 64, G = 3, N = 48, PROMPT = 40 };

static void run_stream(const kvs_kernel_spec_t *spec, const kvs_kernel_dims_t *dims)
{
    static float rows[N][D], q[G * D], logits[G * N], weights[G * N], out[G * D];
    kvs_kernel_t *k;

    for (int t = 0; t < N; t++)
        for (int j = 0; j < D; j++)
            rows[t][j] = sinf(0.37f * (float)(t * D + j)) * (1.0f + (float)(j % 7));
    for (int i = 0; i < G * D; i++)
        q[i] = cosf(0.11f * (float)i);
    if (kvs_kernel_create(spec, dims, &k) != KVS_OK)
        return;
    for (int t = 0; t < N; t++) {
        if (t == PROMPT && kvs_kernel_end_prefill(k, q, 1) != KVS_OK)
            break;
        if (kvs_kernel_append(k, rows[t], rows[t], rows[t]) != KVS_OK)
            break;
    }
    kvs_attend_out_t res = {logits, weights, out};
    if (kvs_kernel_n_tokens(k) == N && kvs_kernel_attend(k, q, &res) == KVS_OK) {
        for (int g = 0; g < G; g++) {
            double sum = 0;
            for (int t = 0; t < N; t++)
                sum += weights[g * N + t];
            if (sum != 0 && fabs(sum - 1.0) > 1e-3)
                __builtin_trap();
        }
    }
    (void)kvs_kernel_stored_bytes(k);
    kvs_kernel_destroy(k);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char text[512];
    kvs_kernel_spec_t *spec;
    kvs_kernel_cost_t cost;
    const kvs_kernel_dims_t dims = {
        .head_dim = D, .group_size = G, .n_layers = 30, .n_kv_heads = 3, .seed = 1,
    };

    if (size >= sizeof text)
        return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    if (kvs_kernel_spec_parse(text, &spec) != KVS_OK)
        return 0;
    if (strcmp(kvs_kernel_spec_text(spec), text) != 0)
        __builtin_trap();
    json_t *root = json_loads(kvs_kernel_spec_params_json(spec), 0, NULL);
    if (!root || !json_is_object(json_object_get(root, "key")))
        __builtin_trap();
    json_decref(root);
    if (kvs_kernel_spec_check(spec, &dims) == KVS_OK &&
        kvs_kernel_spec_cost(spec, &dims, 2048, &cost) == KVS_OK)
        run_stream(spec, &dims);
    kvs_kernel_spec_free(spec);
    return 0;
}
