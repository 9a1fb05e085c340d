/*
** kernel.h: cache kernels as the replayer and the cost commands see them.
**
** A kernel is one configuration of a KV-cache scheme, written as a spec
** string (grammar in docs/kernels.md):
**
**   SPEC := PART { '/' PART }            at most one key codec, one value
**   PART := NAME [ ':' PARAM { ',' PARAM } ]   codec and one selection policy
**   PARAM := NAME '=' VALUE
**
**   quanto:bits=4              a preset: key and value path together
**   dense:dtype=bf16           one codec used for keys and values
**   affine:bits=3/affine:bits=2        key codec, then value codec
**   snapkv:budget=25%/quanto:bits=4    selection policy with a codec
**
** A part naming a selection policy is the policy wherever it appears; of
** codec parts, the first is the key path and the second the value path, and
** a lone codec serves both. Missing parts default to dense F32 and no
** eviction.
**
** One kernel instance (kvs_kernel_t) serves one (layer, KV head) stream: it
** appends each position's k and v in order, and at evaluation steps answers
** the query group (the query heads sharing the KV head) with logits, weights
** over all past positions and the output vector.
*/
#ifndef KVS_KERNEL_H
#define KVS_KERNEL_H

#include "../common/kvs_common.h"

#include <stdint.h>

typedef struct kvs_kernel_spec kvs_kernel_spec_t;
typedef struct kvs_kernel kvs_kernel_t;

/* Shapes and identity of the stream a kernel instance serves. */
typedef struct kvs_kernel_dims {
    uint32_t head_dim;     /* d */
    uint32_t group_size;   /* query heads per KV head */
    uint32_t n_layers;     /* whole-model counts, for cost scaling */
    uint32_t n_kv_heads;
    uint32_t layer;        /* this stream */
    uint32_t kv_head;
    uint64_t seed;         /* run seed; random codecs derive theirs from
                              (seed, layer, kv_head) so results do not
                              depend on thread scheduling */
} kvs_kernel_dims_t;

/* Execution-path costs of one (layer, KV head) stream at a context length.
** Whole-model figures multiply by n_layers * n_kv_heads. */
typedef struct kvs_kernel_cost {
    double bytes_per_token;   /* stored bytes per additional token, K and V,
                                 in steady state (codes, scales, norms...);
                                 with a selection policy, the codec's bytes
                                 times the share of the n_context positions
                                 it keeps resident, plus the policy's own */
    uint64_t stored_bytes;    /* everything stored right after a prefill of
                                 n_context tokens: per-token data, windows,
                                 policy state; shared tables counted once */
    uint64_t shared_bytes;    /* part of stored_bytes shared by all streams
                                 of a layer (codebooks, rotations) */
    uint64_t read_bytes;      /* bytes read by one decode step at n_context */
    uint64_t written_bytes;   /* bytes written by that step (for example a
                                 storage-only kernel's dense copy) */
    double flops;             /* floating-point operations of that step */
} kvs_kernel_cost_t;

/* ---- specs ------------------------------------------------------------ */

/* Parses and validates a spec. Unknown names or parameters, values out of
** range and incompatible parts fail with KVS_ERR_KERNEL_SPEC and a message
** listing what is accepted. */
kvs_status_e kvs_kernel_spec_parse(const char *text, kvs_kernel_spec_t **out);
void kvs_kernel_spec_free(kvs_kernel_spec_t *spec);

/* The text as given by the user. */
const char *kvs_kernel_spec_text(const kvs_kernel_spec_t *spec);
/* Every part with every parameter, defaults filled in, as a JSON object
** with sorted keys: {"key":{"codec":"affine","bits":3,...},"value":...,
** "select":...}. Owned by spec. */
const char *kvs_kernel_spec_params_json(const kvs_kernel_spec_t *spec);
/* Family label for reports ("dense", "quantized", "rotation", "sketch",
** "value", "selection"): the most specific family among the parts. */
const char *kvs_kernel_spec_family(const kvs_kernel_spec_t *spec);
/* 1 when attention runs on the compressed form, 0 when the kernel
** dequantizes everything first (storage-only) or is dense. */
int kvs_kernel_spec_compressed_exec(const kvs_kernel_spec_t *spec);

/* How attention executes, for tables: "dense" (both codecs dense),
** "compressed" (a codec computes on its codes) or "storage-only" (codes
** stored, dequantized to a dense copy before each step), followed by
** " + selection" when a selection policy is part of the spec. The string
** is static. */
const char *kvs_kernel_spec_execution(const kvs_kernel_spec_t *spec);

/* 1 when the kernel's selection policy learns from each step's attention
** weights (H2O's scores, TOVA's evictions), so that a faithful replay must
** attend at every decode position, evaluated or not. */
int kvs_kernel_spec_observes(const kvs_kernel_spec_t *spec);

/* Checks the spec against stream shapes: codec and policy constraints that
** depend on them (a group size must divide head_dim, ...). create and cost
** run the same check; the replayer can call it up front for every trace. */
kvs_status_e kvs_kernel_spec_check(const kvs_kernel_spec_t *spec, const kvs_kernel_dims_t *dims);

/* Costs from the kernels' own accounting for a context of n_context tokens. */
kvs_status_e kvs_kernel_spec_cost(const kvs_kernel_spec_t *spec, const kvs_kernel_dims_t *dims,
                                  uint64_t n_context, kvs_kernel_cost_t *out);

/* ---- instances -------------------------------------------------------- */

/* Creates an instance for one stream. spec must outlive the instance. */
kvs_status_e kvs_kernel_create(const kvs_kernel_spec_t *spec, const kvs_kernel_dims_t *dims,
                               kvs_kernel_t **out);
void kvs_kernel_destroy(kvs_kernel_t *kernel);

/* Appends the next position: k after RoPE, k before RoPE and v, d floats
** each. */
kvs_status_e kvs_kernel_append(kvs_kernel_t *kernel, const float *k, const float *k_pre,
                               const float *v);

/* Marks the end of the prompt after its positions were appended. q_window
** contains the last n_q prompt queries of this group, (n_q, group_size,
** head_dim); prefill-time policies score with it. */
kvs_status_e kvs_kernel_end_prefill(kvs_kernel_t *kernel, const float *q_window, uint32_t n_q);

/* Output buffers of one attention step over n = kvs_kernel_n_tokens()
** positions. */
typedef struct kvs_attend_out {
    float *logits;   /* (group_size, n): q.k/sqrt(d) as the kernel computes
                        it; -INFINITY where a position is not attended */
    float *weights;  /* (group_size, n): softmax over attended positions,
                        0 elsewhere */
    float *out;      /* (group_size, head_dim): the kernel's sum of a_t v_t */
} kvs_attend_out_t;

/* Attends the query group q, (group_size, head_dim), over every position
** appended so far. */
kvs_status_e kvs_kernel_attend(kvs_kernel_t *kernel, const float *q, kvs_attend_out_t *res);

uint32_t kvs_kernel_n_tokens(const kvs_kernel_t *kernel);
/* Bytes this instance stores now, from its own data structures. */
uint64_t kvs_kernel_stored_bytes(const kvs_kernel_t *kernel);

/* ---- registry --------------------------------------------------------- */

/* Writes the list of codecs, policies and presets with their parameters,
** defaults and one-line descriptions, as text or as a JSON array of objects
** with at least "name", "role", "description" and "params". The returned
** string is malloc'd. */
char *kvs_kernel_list_text(void);
char *kvs_kernel_list_json(void);

#endif
