/*
** test_kernel_accounting.c: a kernel instance's own byte count agrees with
** the analytic cost that kvsim cost, replay and the report quote.
*/
#include "testutil.h"

#include "kernels/kernel.h"

#include <math.h>
#include <stdlib.h>

/* One spec per family and execution mode, with and without windows. */
static const char *const specs[] = {
    "dense:dtype=bf16",
    "dense:dtype=fp8-e4m3",
    "quanto:bits=4",
    "quanto:bits=2,exec=compressed",
    "hqq:bits=4",
    "kivi:bits=2",
    "kivi:bits=4,group=16,residual=64",
    "affine:bits=3,group=32,axis=channel,flush=block,residual=64",
    "turboquant:bits=3",
    "turboquant-prod:bits=3/dense:dtype=bf16",
    "qjl:bits=2/dense:dtype=bf16",
    "polarquant",
    "turboquant-prod:bits=3/window:inner=turboquant-mse,bits=2",
    "turboquant-mse:bits=4/topk:k=32",
    "streamingllm:budget=25%",
    "h2o:budget=25%",
    "tova:budget=64",
    "snapkv:budget=25%/quanto:bits=4",
    "quest:budget=25%",
    "keynorm:budget=10%/kivi:bits=2",
    "h2o:budget=25%/turboquant:bits=3",
};

/* Right after a prefill of n positions, the bytes an instance stores
** equal kvs_kernel_spec_cost's stored_bytes for a context of n: the replay
** subtracts shared_bytes from the instance's count to measure storage, and
** the report compares both figures. */
START_TEST(instance_bytes_match_cost)
{
    const char *text = specs[_i];
    kvs_kernel_dims_t dims = {.head_dim = 64, .group_size = 3, .n_layers = 30, .n_kv_heads = 3,
                              .layer = 4, .kv_head = 1, .seed = 7};
    const uint32_t n = 300, d = 64;
    float *k = malloc((size_t)n * d * sizeof *k), *v = malloc((size_t)n * d * sizeof *v);
    float *q = malloc((size_t)n * 3 * d * sizeof *q);
    kvs_kernel_spec_t *spec;
    kvs_kernel_t *kernel;
    kvs_kernel_cost_t cost;

    /* Keys with a per-channel offset, as real keys have; values smooth. */
    for (uint32_t i = 0; i < n * d; i++) {
        k[i] = sinf(0.37f * (float)i) + 0.1f * (float)(i % 7);
        v[i] = cosf(0.11f * (float)i);
    }
    for (uint32_t i = 0; i < n * 3 * d; i++)
        q[i] = sinf(0.05f * (float)i);

    ck_assert_msg(kvs_kernel_spec_parse(text, &spec) == KVS_OK, "%s: %s", text, kvs_error_message());
    ck_assert_msg(kvs_kernel_spec_cost(spec, &dims, n, &cost) == KVS_OK, "%s: %s", text,
                  kvs_error_message());
    ck_assert_int_eq(kvs_kernel_create(spec, &dims, &kernel), KVS_OK);
    for (uint32_t t = 0; t < n; t++)
        ck_assert_int_eq(kvs_kernel_append(kernel, k + (size_t)t * d, k + (size_t)t * d, v + (size_t)t * d),
                         KVS_OK);
    ck_assert_int_eq(kvs_kernel_end_prefill(kernel, q, n), KVS_OK);

    ck_assert_msg(kvs_kernel_stored_bytes(kernel) == cost.stored_bytes,
                  "%s: instance stores %llu bytes, cost says %llu", text,
                  (unsigned long long)kvs_kernel_stored_bytes(kernel),
                  (unsigned long long)cost.stored_bytes);
    ck_assert_uint_le(cost.shared_bytes, cost.stored_bytes);

    kvs_kernel_destroy(kernel);
    kvs_kernel_spec_free(spec);
    free(k);
    free(v);
    free(q);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("kernel_accounting");
    TCase *tc = tcase_create("core");

    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, instance_bytes_match_cost, 0, (int)(sizeof specs / sizeof specs[0]));
    suite_add_tcase(s, tc);
    return kvs_test_run(s);
}
