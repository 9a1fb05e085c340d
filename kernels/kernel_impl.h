/*
** kernel_impl.h: the interface every codec and selection policy implements.
** Only files under kernels/ include it.
**
** A kernel instance composes three parts over one (layer, KV head) stream:
**
**   key codec      stores keys, computes q.k for attended positions
**   value codec    stores values, computes sum_t w_t v_t
**   select policy  decides which positions are resident (eviction) and which
**                  are attended this step (Quest, top-k pages)
**
** One attention step, as kernel.c runs it:
**
**   keep  = resident mask (policy evictions so far)
**   attend = keep, narrowed by policy->select(q)            (optional hook)
**   logits = key->logits(q, attend) / sqrt(d), -inf outside attend
**   weights = softmax(logits) over attend
**   out = value->output(weights, attend)
**   policy->observe(weights)          (H2O scores, TOVA evicts; optional)
**
** Costs: each part reports its stored bytes from its state and its own
** analytic cost at a context length; kernel.c adds them up.
*/
#ifndef KVS_KERNEL_IMPL_H
#define KVS_KERNEL_IMPL_H

#include "kernel.h"

#include <stddef.h>
#include <stdint.h>

/* ---- parameters ------------------------------------------------------- */

typedef enum kvs_param_type_e {
    KVS_PARAM_INT = 0,
    KVS_PARAM_FLOAT = 1,
    KVS_PARAM_ENUM = 2,    /* one of the '|'-separated choices */
    KVS_PARAM_BUDGET = 3,  /* token count, or a percentage of the context
                              written "25%"; stored as a negative fraction
                              (-0.25) when given in percent */
    KVS_PARAM_TYPE_COUNT
} kvs_param_type_e;

typedef struct kvs_param_doc {
    const char *name;
    kvs_param_type_e type;
    const char *default_value;  /* text, parsed like user input */
    double min, max;            /* inclusive bounds for INT, FLOAT, BUDGET */
    const char *choices;        /* ENUM only: "token|channel" */
    const char *description;    /* one line, with the unit */
} kvs_param_doc_t;

#define KVS_MAX_PARAMS 16

/* Values of one part after parsing, defaults filled in, in doc order. */
typedef struct kvs_params {
    uint32_t n;
    const kvs_param_doc_t *docs;  /* NULL-name-terminated array */
    double number[KVS_MAX_PARAMS];      /* INT, FLOAT, BUDGET; ENUM index */
    const char *text[KVS_MAX_PARAMS];   /* ENUM choice, points into docs */
} kvs_params_t;

/* Value of a parameter by name; aborts on a name the doc does not list,
** because that is a bug in the kernel, not user input. */
double kvs_param_number(const kvs_params_t *p, const char *name);
const char *kvs_param_choice(const kvs_params_t *p, const char *name);
/* A BUDGET parameter resolved to tokens at context n (at least 1). */
uint32_t kvs_param_budget(const kvs_params_t *p, const char *name, uint32_t n_context);

/* Parses "a=1,b=token" against docs into out, filling defaults. Unknown
** names, bad numbers and out-of-range values fail with KVS_ERR_KERNEL_SPEC
** naming part and value and listing what is accepted. text may be NULL. */
kvs_status_e kvs_params_parse(const char *part_name, const kvs_param_doc_t *docs, const char *text,
                              kvs_params_t *out);

/* Part-level cost, added up by kernel.c into kvs_kernel_cost_t. */
typedef struct kvs_part_cost {
    double bytes_per_token;
    uint64_t stored_bytes;
    uint64_t shared_bytes;
    uint64_t read_bytes;
    uint64_t written_bytes;
    double flops;
    uint64_t attended;   /* policies only: positions one decode step reads
                            (Quest's selected pages); 0 means every resident
                            position. Codec reads are charged for these. */
} kvs_part_cost_t;

/* ---- codecs ----------------------------------------------------------- */

enum {
    KVS_CODEC_KEY = 1,           /* implements logits */
    KVS_CODEC_VALUE = 2,         /* implements output */
    KVS_CODEC_COMPRESSED_EXEC = 4 /* computes on codes in its current
                                     parameters (see is_compressed) */
};

typedef struct kvs_codec_i {
    const char *name;          /* spec name, lower case with '-' */
    const char *family;        /* "dense", "quantized", "rotation", ... */
    const char *description;   /* one line */
    const kvs_param_doc_t *params;  /* NULL-name-terminated */
    unsigned roles;            /* KVS_CODEC_KEY | KVS_CODEC_VALUE */

    /* Validates combinations the per-parameter bounds cannot express
    ** (group must divide d, ...). Optional: NULL accepts everything. */
    kvs_status_e (*check)(const kvs_params_t *p, const kvs_kernel_dims_t *dims);

    /* Required. Allocates the state for one stream. */
    kvs_status_e (*create)(const kvs_params_t *p, const kvs_kernel_dims_t *dims, void **state);

    /* Required. Appends one position: x is k after RoPE (key role) or v
    ** (value role); x_pre is k before RoPE, NULL in the value role. */
    kvs_status_e (*append)(void *state, const float *x, const float *x_pre);

    /* Optional: called once after the prompt. quanto quantizes here. */
    kvs_status_e (*end_prefill)(void *state);

    /* Key role: writes q_g.k_t, unscaled, to out[g*n + t] for every query
    ** g < group and position t < n with attend[t] != 0; other entries are
    ** left alone. q is (group, d). */
    void (*logits)(void *state, const float *q, uint32_t group, const uint8_t *attend, uint32_t n,
                   float *out);

    /* Value role: out[g*d + j] = sum over attended t of w[g*n + t] v_t[j].
    ** kernel.c zeroes out before the call, so a codec may accumulate. */
    void (*output)(void *state, const float *w, uint32_t group, const uint8_t *attend, uint32_t n,
                   float *out);

    /* Required. Bytes held now, from the state. */
    uint64_t (*stored_bytes)(const void *state);

    /* Required. Analytic cost for one stream right after a prefill of
    ** n_context tokens, in this role (KVS_CODEC_KEY or KVS_CODEC_VALUE). */
    void (*cost)(const kvs_params_t *p, const kvs_kernel_dims_t *dims, unsigned role,
                 uint64_t n_context, kvs_part_cost_t *out);

    /* Optional: 1 when these parameters execute on codes. NULL means the
    ** KVS_CODEC_COMPRESSED_EXEC bit of roles decides. */
    int (*is_compressed)(const kvs_params_t *p);

    void (*destroy)(void *state);  /* required; accepts NULL */
} kvs_codec_i;

/* ---- selection policies ----------------------------------------------- */

typedef struct kvs_policy_i {
    const char *name;
    const char *description;
    const kvs_param_doc_t *params;

    kvs_status_e (*check)(const kvs_params_t *p, const kvs_kernel_dims_t *dims);  /* optional */
    kvs_status_e (*create)(const kvs_params_t *p, const kvs_kernel_dims_t *dims, void **state);

    /* Required. Position n-1 was just appended with key k (after RoPE).
    ** keep has n entries; the policy may clear entries to evict. */
    kvs_status_e (*append)(void *state, const float *k, uint8_t *keep, uint32_t n);

    /* Optional: end of prompt; q_window is (n_q, group, d). */
    kvs_status_e (*end_prefill)(void *state, const float *q_window, uint32_t n_q, uint8_t *keep,
                                uint32_t n);

    /* Optional: narrows attend (a copy of keep) for this query. */
    void (*select)(void *state, const float *q, uint32_t group, uint8_t *attend, uint32_t n);

    /* Optional: sees this step's weights (group, n); may clear keep. */
    void (*observe)(void *state, const float *w, uint32_t group, uint8_t *keep, uint32_t n);

    uint64_t (*stored_bytes)(const void *state);  /* policy state only */
    /* Cost of the policy state, and the number of resident positions at
    ** n_context (codec bytes are scaled to it by kernel.c). */
    void (*cost)(const kvs_params_t *p, const kvs_kernel_dims_t *dims, uint64_t n_context,
                 kvs_part_cost_t *out, uint64_t *resident);
    void (*destroy)(void *state);
} kvs_policy_i;

/* ---- presets ---------------------------------------------------------- */

/* A named shorthand that expands to a full spec; user parameters are
** passed to every part that declares them. */
typedef struct kvs_preset {
    const char *name;
    const char *expansion;     /* for example "quanto-key/quanto-value" */
    const char *description;
    const kvs_param_doc_t *params;  /* what the user may set */
} kvs_preset_t;

/* ---- registry tables, one per family file ---------------------------- */

/* Registry look-ups by spec name; NULL when unknown. A codec that wraps
** another (a window around an inner value codec) finds it here. */
const kvs_codec_i *kvs_codec_find(const char *name);
const kvs_policy_i *kvs_policy_find(const char *name);
const kvs_preset_t *kvs_preset_find(const char *name);

/* Registered entries in listing order, NULL past the end. */
const kvs_codec_i *kvs_codec_at(size_t i);
const kvs_policy_i *kvs_policy_at(size_t i);
const kvs_preset_t *kvs_preset_at(size_t i);

/* NULL-terminated tables; kernels/registry.c concatenates them. */
extern const kvs_codec_i *const kvs_codecs_dense[];
extern const kvs_codec_i *const kvs_codecs_quant[];
extern const kvs_codec_i *const kvs_codecs_rotation[];
extern const kvs_codec_i *const kvs_codecs_value[];
extern const kvs_policy_i *const kvs_policies[];
extern const kvs_preset_t kvs_presets_quant[];     /* name == NULL ends */
extern const kvs_preset_t kvs_presets_rotation[];

#endif
