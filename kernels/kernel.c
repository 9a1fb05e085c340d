/*
** kernel.c: kernel specs (parsing, parameters as JSON, costs) and kernel
** instances, which compose a key codec, a value codec and an optional
** selection policy over one (layer, KV head) stream.
**
** Spec resolution:
**   1. split the text at '/' into parts NAME[:PARAMS];
**   2. a preset part expands into its codec parts. The preset's parameters
**      (user values, else the preset's defaults) override the expansion's
**      fixed parameters in every part that declares them;
**   3. a policy part becomes the policy (at most one);
**   4. of the codec parts, the first is the key path and the second the
**      value path; a lone codec with both roles serves both, and a missing
**      role is dense F32.
*/
#include "kernel_impl.h"
#include "simd.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SPEC_MAX_TEXT 4096
#define SPEC_MAX_CODEC_PARTS 4
#define PAIR_MAX 32

typedef struct spec_codec {
    const kvs_codec_i *codec;
    kvs_params_t params;
} spec_codec_t;

struct kvs_kernel_spec {
    char *text;
    char *params_json;
    const kvs_preset_t *preset;  /* first preset named, recorded in the JSON */
    spec_codec_t key, value;
    const kvs_policy_i *policy;  /* NULL: every position stays resident */
    kvs_params_t policy_params;
};

/* ---- NAME=VALUE pair lists used to merge preset parameters ------------- */

typedef struct pair_list {
    uint32_t n;
    char name[PAIR_MAX][48];
    char value[PAIR_MAX][64];
} pair_list_t;

static kvs_status_e pairs_set(pair_list_t *l, const char *name, size_t name_len, const char *value,
                              size_t value_len)
{
    KVS_RETURN_IF(name_len >= sizeof l->name[0] || value_len >= sizeof l->value[0],
                  KVS_ERR_KERNEL_SPEC, "parameter '%.*s' or its value is too long", (int)name_len,
                  name);
    for (uint32_t i = 0; i < l->n; i++) {
        if (strlen(l->name[i]) == name_len && !memcmp(l->name[i], name, name_len)) {
            memcpy(l->value[i], value, value_len);
            l->value[i][value_len] = '\0';
            return KVS_OK;
        }
    }
    KVS_RETURN_IF(l->n >= PAIR_MAX, KVS_ERR_KERNEL_SPEC, "too many parameters in one part");
    memcpy(l->name[l->n], name, name_len);
    l->name[l->n][name_len] = '\0';
    memcpy(l->value[l->n], value, value_len);
    l->value[l->n][value_len] = '\0';
    l->n++;
    return KVS_OK;
}

/* Adds "a=1,b=2" (already validated, or a registry expansion) to l. */
static kvs_status_e pairs_add_text(pair_list_t *l, const char *text, size_t len)
{
    const char *p = text, *end = text + len;

    while (p < end) {
        const char *comma = memchr(p, ',', (size_t)(end - p));
        const char *stop = comma ? comma : end;
        const char *eq = memchr(p, '=', (size_t)(stop - p));
        KVS_RETURN_IF(!eq, KVS_ERR_KERNEL_SPEC, "'%.*s' is not NAME=VALUE", (int)(stop - p), p);
        KVS_FORWARD(pairs_set(l, p, (size_t)(eq - p), eq + 1, (size_t)(stop - eq - 1)));
        p = comma ? comma + 1 : end;
    }
    return KVS_OK;
}

static void pairs_join(const pair_list_t *l, char *buf, size_t cap)
{
    size_t used = 0;

    buf[0] = '\0';
    for (uint32_t i = 0; i < l->n && used < cap; i++)
        used += (size_t)snprintf(buf + used, cap - used, "%s%s=%s", i ? "," : "", l->name[i],
                                 l->value[i]);
}

static int doc_declares(const kvs_param_doc_t *docs, const char *name)
{
    for (const kvs_param_doc_t *d = docs; d && d->name; d++) {
        if (!strcmp(d->name, name))
            return 1;
    }
    return 0;
}

/* ---- parsing ------------------------------------------------------------ */

typedef struct codec_part {
    const kvs_codec_i *codec;
    char params[1024];
} codec_part_t;

typedef struct parse_state {
    codec_part_t parts[SPEC_MAX_CODEC_PARTS];
    uint32_t n_parts;
} parse_state_t;

/* "dense, affine, ..." of every registered name of one kind, for errors. */
static void list_registered(char *buf, size_t cap)
{
    size_t used = 0;
    const kvs_codec_i *c;
    const kvs_preset_t *p;
    const kvs_policy_i *pol;

    buf[0] = '\0';
    for (size_t i = 0; (c = kvs_codec_at(i)) && used < cap; i++)
        used += (size_t)snprintf(buf + used, cap - used, "%s%s", used ? ", " : "codecs: ", c->name);
    for (size_t i = 0; (p = kvs_preset_at(i)) && used < cap; i++)
        used += (size_t)snprintf(buf + used, cap - used, "%s%s", i ? ", " : "; presets: ", p->name);
    for (size_t i = 0; (pol = kvs_policy_at(i)) && used < cap; i++)
        used += (size_t)snprintf(buf + used, cap - used, "%s%s", i ? ", " : "; policies: ",
                                 pol->name);
}

static kvs_status_e add_codec_part(parse_state_t *st, const kvs_codec_i *codec, const char *params)
{
    KVS_RETURN_IF(st->n_parts >= SPEC_MAX_CODEC_PARTS, KVS_ERR_KERNEL_SPEC,
                  "too many codec parts; a spec has at most a key codec and a value codec");
    KVS_RETURN_IF(strlen(params) >= sizeof st->parts[0].params, KVS_ERR_KERNEL_SPEC,
                  "parameters of '%s' are too long", codec->name);
    st->parts[st->n_parts].codec = codec;
    snprintf(st->parts[st->n_parts].params, sizeof st->parts[0].params, "%s", params);
    st->n_parts++;
    return KVS_OK;
}

static kvs_status_e expand_preset(parse_state_t *st, const kvs_preset_t *preset,
                                  const char *user_params)
{
    kvs_params_t checked;
    pair_list_t resolved = {0};

    /* Validates names and ranges against what the preset accepts. */
    KVS_FORWARD(kvs_params_parse(preset->name, preset->params, user_params, &checked));
    for (const kvs_param_doc_t *d = preset->params; d && d->name; d++)
        KVS_FORWARD(pairs_set(&resolved, d->name, strlen(d->name), d->default_value,
                              strlen(d->default_value)));
    if (user_params)
        KVS_FORWARD(pairs_add_text(&resolved, user_params, strlen(user_params)));

    const char *p = preset->expansion;
    while (*p) {
        const char *slash = strchr(p, '/');
        size_t len = slash ? (size_t)(slash - p) : strlen(p);
        const char *colon = memchr(p, ':', len);
        size_t name_len = colon ? (size_t)(colon - p) : len;
        char name[64];
        pair_list_t pairs = {0};
        char joined[1024];

        KVS_RETURN_IF(name_len >= sizeof name, KVS_ERR_INTERNAL,
                      "preset '%s' has a malformed expansion", preset->name);
        memcpy(name, p, name_len);
        name[name_len] = '\0';
        const kvs_codec_i *codec = kvs_codec_find(name);
        KVS_RETURN_IF(!codec, KVS_ERR_INTERNAL,
                      "preset '%s' expands to unknown codec '%s' (kvsim bug)", preset->name, name);
        if (colon)
            KVS_FORWARD(pairs_add_text(&pairs, colon + 1, len - name_len - 1));
        for (uint32_t i = 0; i < resolved.n; i++) {
            if (doc_declares(codec->params, resolved.name[i]))
                KVS_FORWARD(pairs_set(&pairs, resolved.name[i], strlen(resolved.name[i]),
                                      resolved.value[i], strlen(resolved.value[i])));
        }
        pairs_join(&pairs, joined, sizeof joined);
        KVS_FORWARD(add_codec_part(st, codec, joined));
        p = slash ? slash + 1 : p + len;
    }
    return KVS_OK;
}

static kvs_status_e parse_parts(kvs_kernel_spec_t *spec, parse_state_t *st)
{
    const char *p = spec->text;

    while (1) {
        const char *slash = strchr(p, '/');
        size_t len = slash ? (size_t)(slash - p) : strlen(p);
        char part[SPEC_MAX_TEXT];

        KVS_RETURN_IF(len == 0, KVS_ERR_KERNEL_SPEC,
                      "kernel spec '%s' has an empty part; write PART/PART with a name in each",
                      spec->text);
        memcpy(part, p, len);
        part[len] = '\0';
        char *colon = strchr(part, ':');
        const char *params = NULL;
        if (colon) {
            *colon = '\0';
            params = colon + 1;
        }

        const kvs_codec_i *codec = kvs_codec_find(part);
        const kvs_preset_t *preset = codec ? NULL : kvs_preset_find(part);
        const kvs_policy_i *policy = (codec || preset) ? NULL : kvs_policy_find(part);
        if (codec) {
            KVS_FORWARD(add_codec_part(st, codec, params ? params : ""));
        } else if (preset) {
            if (!spec->preset)
                spec->preset = preset;
            KVS_FORWARD(expand_preset(st, preset, params));
        } else if (policy) {
            KVS_RETURN_IF(spec->policy, KVS_ERR_KERNEL_SPEC,
                          "kernel spec '%s' names two selection policies ('%s' and '%s'); at "
                          "most one is allowed",
                          spec->text, spec->policy->name, policy->name);
            spec->policy = policy;
            KVS_FORWARD(kvs_params_parse(policy->name, policy->params, params,
                                         &spec->policy_params));
        } else {
            char known[2048];
            list_registered(known, sizeof known);
            return kvs_fail(KVS_ERR_KERNEL_SPEC, "unknown kernel '%s' in spec '%s'; known %s",
                            part, spec->text, known);
        }

        if (!slash)
            break;
        p = slash + 1;
    }
    return KVS_OK;
}

/* Assigns the key and value paths from the codec parts (step 4 above). */
static kvs_status_e assign_roles(kvs_kernel_spec_t *spec, const parse_state_t *st)
{
    static const char dense_f32[] = "dtype=f32";
    const kvs_codec_i *dense = kvs_codec_find("dense");
    const codec_part_t *key = NULL, *value = NULL;

    KVS_RETURN_IF(!dense, KVS_ERR_INTERNAL, "the dense codec is not registered (kvsim bug)");
    KVS_RETURN_IF(st->n_parts > 2, KVS_ERR_KERNEL_SPEC,
                  "kernel spec '%s' has %u codec parts (a preset counts as its expansion); "
                  "accepted: one codec for both paths, or a key codec then a value codec",
                  spec->text, st->n_parts);
    if (st->n_parts == 2) {
        key = &st->parts[0];
        value = &st->parts[1];
        KVS_RETURN_IF(!(key->codec->roles & KVS_CODEC_KEY), KVS_ERR_KERNEL_SPEC,
                      "kernel spec '%s': '%s' cannot store keys, but the first codec part is the "
                      "key path; put a key codec first",
                      spec->text, key->codec->name);
        KVS_RETURN_IF(!(value->codec->roles & KVS_CODEC_VALUE), KVS_ERR_KERNEL_SPEC,
                      "kernel spec '%s': '%s' cannot store values, but the second codec part is "
                      "the value path; put a value codec second",
                      spec->text, value->codec->name);
    } else if (st->n_parts == 1) {
        if (st->parts[0].codec->roles & KVS_CODEC_KEY)
            key = &st->parts[0];
        if (st->parts[0].codec->roles & KVS_CODEC_VALUE)
            value = &st->parts[0];
    }

    spec->key.codec = key ? key->codec : dense;
    KVS_FORWARD(kvs_params_parse(spec->key.codec->name, spec->key.codec->params,
                                 key ? key->params : dense_f32, &spec->key.params));
    spec->value.codec = value ? value->codec : dense;
    KVS_FORWARD(kvs_params_parse(spec->value.codec->name, spec->value.codec->params,
                                 value ? value->params : dense_f32, &spec->value.params));
    return KVS_OK;
}

static json_t *params_to_json(const kvs_params_t *p, const char *kind_key, const char *kind_name)
{
    json_t *o = json_object();

    json_object_set_new(o, kind_key, json_string(kind_name));
    for (uint32_t i = 0; i < p->n; i++) {
        const kvs_param_doc_t *d = &p->docs[i];
        double v = p->number[i];
        json_t *j;

        if (d->type == KVS_PARAM_ENUM) {
            j = json_string(p->text[i]);
        } else if (d->type == KVS_PARAM_FLOAT) {
            j = json_real(v);
        } else if (d->type == KVS_PARAM_BUDGET && v < 0) {
            char pct[32];
            snprintf(pct, sizeof pct, "%g%%", -v * 100.0);
            j = json_string(pct);
        } else {
            j = json_integer((json_int_t)v);
        }
        json_object_set_new(o, d->name, j);
    }
    return o;
}

static kvs_status_e build_json(kvs_kernel_spec_t *spec)
{
    json_t *root = json_object();

    json_object_set_new(root, "key", params_to_json(&spec->key.params, "codec",
                                                    spec->key.codec->name));
    json_object_set_new(root, "value", params_to_json(&spec->value.params, "codec",
                                                      spec->value.codec->name));
    if (spec->policy)
        json_object_set_new(root, "select", params_to_json(&spec->policy_params, "policy",
                                                           spec->policy->name));
    if (spec->preset)
        json_object_set_new(root, "preset", json_string(spec->preset->name));
    spec->params_json = json_dumps(root, JSON_COMPACT | JSON_SORT_KEYS | JSON_REAL_PRECISION(10));
    json_decref(root);
    KVS_RETURN_IF(!spec->params_json, KVS_ERR_NOMEM, "out of memory writing kernel parameters");
    return KVS_OK;
}

kvs_status_e kvs_kernel_spec_parse(const char *text, kvs_kernel_spec_t **out)
{
    kvs_kernel_spec_t *spec;
    parse_state_t st = {0};
    kvs_status_e rc;

    *out = NULL;
    KVS_RETURN_IF(!text || !*text, KVS_ERR_KERNEL_SPEC,
                  "empty kernel spec; give one such as 'dense:dtype=bf16' (see 'kvsim kernels')");
    KVS_RETURN_IF(strlen(text) >= SPEC_MAX_TEXT, KVS_ERR_KERNEL_SPEC,
                  "kernel spec is longer than %d characters", SPEC_MAX_TEXT - 1);
    for (const char *c = text; *c; c++) {
        KVS_RETURN_IF(*c == ' ' || *c == '\t' || *c == '\n', KVS_ERR_KERNEL_SPEC,
                      "kernel spec '%s' contains white space; write it without spaces", text);
    }
    spec = calloc(1, sizeof *spec);
    KVS_RETURN_IF(!spec, KVS_ERR_NOMEM, "out of memory parsing kernel spec");
    spec->text = strdup(text);
    if (!spec->text) {
        free(spec);
        return kvs_fail(KVS_ERR_NOMEM, "out of memory parsing kernel spec");
    }

    rc = parse_parts(spec, &st);
    if (rc == KVS_OK)
        rc = assign_roles(spec, &st);
    if (rc == KVS_OK)
        rc = build_json(spec);
    if (rc != KVS_OK) {
        kvs_kernel_spec_free(spec);
        return rc;
    }
    *out = spec;
    return KVS_OK;
}

void kvs_kernel_spec_free(kvs_kernel_spec_t *spec)
{
    if (!spec)
        return;
    free(spec->text);
    free(spec->params_json);
    free(spec);
}

const char *kvs_kernel_spec_text(const kvs_kernel_spec_t *spec)
{
    return spec->text;
}

const char *kvs_kernel_spec_params_json(const kvs_kernel_spec_t *spec)
{
    return spec->params_json;
}

/* Specificity of a family: a kernel is labelled by its most specific part. */
static int family_rank(const char *family)
{
    static const char *const order[] = {"dense", "quantized", "rotation", "sketch", "value",
                                        "selection"};
    static const int rank[] = {0, 1, 2, 2, 3, 4};

    for (size_t i = 0; i < sizeof order / sizeof order[0]; i++) {
        if (!strcmp(family, order[i]))
            return rank[i];
    }
    return 2;
}

const char *kvs_kernel_spec_family(const kvs_kernel_spec_t *spec)
{
    const char *best = spec->key.codec->family;

    if (family_rank(spec->value.codec->family) > family_rank(best))
        best = spec->value.codec->family;
    if (spec->policy)
        best = "selection";
    return best;
}

static int codec_is_compressed(const spec_codec_t *c)
{
    if (c->codec->is_compressed)
        return c->codec->is_compressed(&c->params) != 0;
    return (c->codec->roles & KVS_CODEC_COMPRESSED_EXEC) != 0;
}

int kvs_kernel_spec_compressed_exec(const kvs_kernel_spec_t *spec)
{
    return codec_is_compressed(&spec->key) || codec_is_compressed(&spec->value);
}

static kvs_status_e check_dims(const kvs_kernel_dims_t *dims)
{
    KVS_RETURN_IF(!dims || dims->head_dim == 0 || dims->head_dim > 4096, KVS_ERR_INVALID,
                  "head_dim %u is not supported; expected 1 to 4096", dims ? dims->head_dim : 0);
    KVS_RETURN_IF(dims->group_size == 0 || dims->group_size > 256, KVS_ERR_INVALID,
                  "query group size %u is not supported; expected 1 to 256", dims->group_size);
    return KVS_OK;
}

kvs_status_e kvs_kernel_spec_check(const kvs_kernel_spec_t *spec, const kvs_kernel_dims_t *dims)
{
    KVS_FORWARD(check_dims(dims));
    if (spec->key.codec->check)
        KVS_FORWARD(spec->key.codec->check(&spec->key.params, dims));
    if (spec->value.codec->check)
        KVS_FORWARD(spec->value.codec->check(&spec->value.params, dims));
    if (spec->policy && spec->policy->check)
        KVS_FORWARD(spec->policy->check(&spec->policy_params, dims));
    return KVS_OK;
}

static void cost_add(kvs_kernel_cost_t *out, const kvs_part_cost_t *c)
{
    out->bytes_per_token += c->bytes_per_token;
    out->stored_bytes += c->stored_bytes;
    out->shared_bytes += c->shared_bytes;
    out->read_bytes += c->read_bytes;
    out->written_bytes += c->written_bytes;
    out->flops += c->flops;
}

const char *kvs_kernel_spec_execution(const kvs_kernel_spec_t *spec)
{
    int dense = !strcmp(spec->key.codec->family, "dense") && !strcmp(spec->value.codec->family, "dense");
    int compressed = kvs_kernel_spec_compressed_exec(spec);

    if (dense)
        return spec->policy ? "dense + selection" : "dense";
    if (compressed)
        return spec->policy ? "compressed + selection" : "compressed";
    return spec->policy ? "storage-only + selection" : "storage-only";
}

int kvs_kernel_spec_observes(const kvs_kernel_spec_t *spec)
{
    return spec->policy && spec->policy->observe;
}

/* Adds a codec's cost under a selection policy. The codec is priced at the
** full context because its instance stores every position. Its storage is
** then scaled by the share of positions kept, and its reads and operations
** by the share attended, as kvs_kernel_stored_bytes scales the instance's
** own count. */
static void codec_cost(const kvs_codec_i *codec, const kvs_params_t *params,
                       const kvs_kernel_dims_t *dims, unsigned role, uint64_t n_context,
                       double kept_share, double attended_share, kvs_kernel_cost_t *out)
{
    kvs_part_cost_t c;

    memset(&c, 0, sizeof c);
    codec->cost(params, dims, role, n_context, &c);
    if (kept_share < 1.0) {
        uint64_t shared = c.shared_bytes;
        c.bytes_per_token *= kept_share;
        c.stored_bytes = shared + (uint64_t)((double)(c.stored_bytes - shared) * kept_share + 0.5);
        /* NOTE: this also scales the write of the new position, which a
        ** real cache makes in full; it is one position's bytes. */
        c.written_bytes = (uint64_t)((double)c.written_bytes * kept_share + 0.5);
    }
    if (attended_share < 1.0) {
        c.read_bytes = (uint64_t)((double)c.read_bytes * attended_share + 0.5);
        c.flops *= attended_share;
    }
    cost_add(out, &c);
}

kvs_status_e kvs_kernel_spec_cost(const kvs_kernel_spec_t *spec, const kvs_kernel_dims_t *dims,
                                  uint64_t n_context, kvs_kernel_cost_t *out)
{
    kvs_part_cost_t c;
    uint64_t resident = n_context, attended;

    memset(out, 0, sizeof *out);
    memset(&c, 0, sizeof c);
    KVS_FORWARD(kvs_kernel_spec_check(spec, dims));
    if (spec->policy) {
        spec->policy->cost(&spec->policy_params, dims, n_context, &c, &resident);
        if (resident > n_context)
            resident = n_context;
        cost_add(out, &c);
    }
    attended = c.attended && c.attended < resident ? c.attended : resident;

    /* A policy that keeps a share of the context stores that share of the
    ** codec's bytes for each token of context, so bytes per token compare
    ** with compression kernels at the same context length. */
    double kept = n_context ? (double)resident / (double)n_context : 1.0;
    double read = n_context ? (double)attended / (double)n_context : 1.0;
    codec_cost(spec->key.codec, &spec->key.params, dims, KVS_CODEC_KEY, n_context, kept, read, out);
    codec_cost(spec->value.codec, &spec->value.params, dims, KVS_CODEC_VALUE, n_context, kept, read,
               out);

    /* Scaling by 1/sqrt(d) and the softmax: about five operations per
    ** logit. */
    out->flops += 5.0 * (double)dims->group_size * (double)attended;
    return KVS_OK;
}

/* ---- instances ---------------------------------------------------------- */

struct kvs_kernel {
    const kvs_kernel_spec_t *spec;
    kvs_kernel_dims_t dims;
    void *key_state, *value_state, *policy_state;
    uint32_t n, cap;
    uint8_t *keep;     /* (cap): 1 while a position is resident */
    uint8_t *attend;   /* (cap): this step's attended positions */
    float scale;       /* 1/sqrt(d) */
    uint64_t codec_shared;  /* rotation and codebook tables in the codecs */
};

kvs_status_e kvs_kernel_create(const kvs_kernel_spec_t *spec, const kvs_kernel_dims_t *dims,
                               kvs_kernel_t **out)
{
    kvs_kernel_t *k;
    kvs_status_e rc;

    *out = NULL;
    KVS_FORWARD(kvs_kernel_spec_check(spec, dims));
    k = calloc(1, sizeof *k);
    KVS_RETURN_IF(!k, KVS_ERR_NOMEM, "out of memory creating kernel '%s'", spec->text);
    k->spec = spec;
    k->dims = *dims;
    k->scale = 1.0f / sqrtf((float)dims->head_dim);

    /* Shared tables do not depend on the context, so a one-position cost
    ** gives them. */
    kvs_part_cost_t part;
    memset(&part, 0, sizeof part);
    spec->key.codec->cost(&spec->key.params, dims, KVS_CODEC_KEY, 1, &part);
    k->codec_shared = part.shared_bytes;
    memset(&part, 0, sizeof part);
    spec->value.codec->cost(&spec->value.params, dims, KVS_CODEC_VALUE, 1, &part);
    k->codec_shared += part.shared_bytes;

    rc = spec->key.codec->create(&spec->key.params, dims, &k->key_state);
    if (rc == KVS_OK)
        rc = spec->value.codec->create(&spec->value.params, dims, &k->value_state);
    if (rc == KVS_OK && spec->policy)
        rc = spec->policy->create(&spec->policy_params, dims, &k->policy_state);
    if (rc != KVS_OK) {
        kvs_error_prefix("kernel '%s'", spec->text);
        kvs_kernel_destroy(k);
        return rc;
    }
    *out = k;
    return KVS_OK;
}

void kvs_kernel_destroy(kvs_kernel_t *k)
{
    if (!k)
        return;
    if (k->key_state)
        k->spec->key.codec->destroy(k->key_state);
    if (k->value_state)
        k->spec->value.codec->destroy(k->value_state);
    if (k->policy_state)
        k->spec->policy->destroy(k->policy_state);
    free(k->keep);
    free(k->attend);
    free(k);
}

static kvs_status_e grow_masks(kvs_kernel_t *k)
{
    uint32_t cap = k->cap ? k->cap * 2 : 1024;
    uint8_t *keep = realloc(k->keep, cap);

    KVS_RETURN_IF(!keep, KVS_ERR_NOMEM, "out of memory growing kernel masks to %u positions", cap);
    k->keep = keep;
    uint8_t *attend = realloc(k->attend, cap);
    KVS_RETURN_IF(!attend, KVS_ERR_NOMEM, "out of memory growing kernel masks to %u positions",
                  cap);
    k->attend = attend;
    k->cap = cap;
    return KVS_OK;
}

static kvs_status_e check_finite(const kvs_kernel_t *k, const float *x, const char *what)
{
    for (uint32_t i = 0; i < k->dims.head_dim; i++) {
        KVS_RETURN_IF(!isfinite(x[i]), KVS_ERR_NONFINITE,
                      "%s of layer %u, KV head %u, position %u has a non-finite value at "
                      "column %u; recapture the trace",
                      what, k->dims.layer, k->dims.kv_head, k->n, i);
    }
    return KVS_OK;
}

kvs_status_e kvs_kernel_append(kvs_kernel_t *k, const float *key, const float *key_pre,
                               const float *value)
{
    KVS_RETURN_IF(k->n == UINT32_MAX, KVS_ERR_INVALID, "kernel stream is full");
    KVS_FORWARD(check_finite(k, key, "key"));
    KVS_FORWARD(check_finite(k, value, "value"));
    if (key_pre)
        KVS_FORWARD(check_finite(k, key_pre, "pre-RoPE key"));
    if (k->n == k->cap)
        KVS_FORWARD(grow_masks(k));

    KVS_FORWARD(k->spec->key.codec->append(k->key_state, key, key_pre));
    KVS_FORWARD(k->spec->value.codec->append(k->value_state, value, NULL));
    k->keep[k->n] = 1;
    k->n++;
    if (k->spec->policy)
        KVS_FORWARD(k->spec->policy->append(k->policy_state, key, k->keep, k->n));
    return KVS_OK;
}

kvs_status_e kvs_kernel_end_prefill(kvs_kernel_t *k, const float *q_window, uint32_t n_q)
{
    if (k->spec->key.codec->end_prefill)
        KVS_FORWARD(k->spec->key.codec->end_prefill(k->key_state));
    if (k->spec->value.codec->end_prefill)
        KVS_FORWARD(k->spec->value.codec->end_prefill(k->value_state));
    if (k->spec->policy && k->spec->policy->end_prefill)
        KVS_FORWARD(k->spec->policy->end_prefill(k->policy_state, q_window, n_q, k->keep, k->n));
    return KVS_OK;
}

/* Softmax of one query's logits over the attended positions, with the
** maximum subtracted first and the sum in double. Positions outside attend
** hold -infinity, whose exponential is 0. Rows with no attended position
** get all-zero weights. */
static void softmax_row(const float *logits, const uint8_t *attend, uint32_t n, float *w)
{
    float max = -INFINITY;

    for (uint32_t t = 0; t < n; t++) {
        if (attend[t] && logits[t] > max)
            max = logits[t];
    }
    if (max == -INFINITY) {
        memset(w, 0, (size_t)n * sizeof *w);
        return;
    }
    double sum = kvs_simd_exp_sum(logits, max, w, n);
    if (!(sum > 0.0)) {
        memset(w, 0, (size_t)n * sizeof *w);
        return;
    }
    float inv = (float)(1.0 / sum);
    for (uint32_t t = 0; t < n; t++)
        w[t] *= inv;
}

kvs_status_e kvs_kernel_attend(kvs_kernel_t *k, const float *q, kvs_attend_out_t *res)
{
    const kvs_kernel_spec_t *spec = k->spec;
    uint32_t n = k->n, group = k->dims.group_size, d = k->dims.head_dim;

    KVS_RETURN_IF(n == 0, KVS_ERR_INVALID,
                  "attention on an empty cache (layer %u, KV head %u); append positions first",
                  k->dims.layer, k->dims.kv_head);
    memcpy(k->attend, k->keep, n);
    if (spec->policy && spec->policy->select)
        spec->policy->select(k->policy_state, q, group, k->attend, n);

    for (size_t i = 0; i < (size_t)group * n; i++)
        res->logits[i] = -INFINITY;
    spec->key.codec->logits(k->key_state, q, group, k->attend, n, res->logits);
    for (uint32_t g = 0; g < group; g++) {
        float *row = res->logits + (size_t)g * n;
        for (uint32_t t = 0; t < n; t++) {
            if (k->attend[t])
                row[t] *= k->scale;
        }
        softmax_row(row, k->attend, n, res->weights + (size_t)g * n);
    }

    memset(res->out, 0, (size_t)group * d * sizeof *res->out);
    spec->value.codec->output(k->value_state, res->weights, group, k->attend, n, res->out);
    if (spec->policy && spec->policy->observe)
        spec->policy->observe(k->policy_state, res->weights, group, k->keep, n);
    return KVS_OK;
}

uint32_t kvs_kernel_n_tokens(const kvs_kernel_t *k)
{
    return k->n;
}

uint64_t kvs_kernel_stored_bytes(const kvs_kernel_t *k)
{
    uint64_t codec = k->spec->key.codec->stored_bytes(k->key_state) +
                     k->spec->value.codec->stored_bytes(k->value_state);
    uint64_t policy = 0;

    if (k->spec->policy) {
        uint64_t resident = 0;
        for (uint32_t t = 0; t < k->n; t++)
            resident += k->keep[t];
        /* NOTE: codecs keep evicted positions in memory because the
        ** simulator never frees codec rows. A real cache frees them, so the
        ** resident share of the per-position bytes is reported, with shared
        ** tables counted whole. */
        uint64_t shared = codec < k->codec_shared ? codec : k->codec_shared;
        if (k->n)
            codec = shared + (uint64_t)((double)(codec - shared) * (double)resident / (double)k->n + 0.5);
        policy = k->spec->policy->stored_bytes(k->policy_state);
    }
    return codec + policy;
}
