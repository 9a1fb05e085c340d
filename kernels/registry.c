/*
** registry.c: the one list of codecs, selection policies and presets,
** concatenated from the per-family tables, and its text and JSON listings.
*/
#include "kernel_impl.h"

#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const kvs_codec_i *const *const codec_tables[] = {
    kvs_codecs_dense, kvs_codecs_quant, kvs_codecs_rotation, kvs_codecs_value,
};
static const kvs_preset_t *const preset_tables[] = {kvs_presets_quant, kvs_presets_rotation};

const kvs_codec_i *kvs_codec_at(size_t i)
{
    for (size_t t = 0; t < sizeof codec_tables / sizeof codec_tables[0]; t++) {
        for (const kvs_codec_i *const *c = codec_tables[t]; *c; c++) {
            if (i-- == 0)
                return *c;
        }
    }
    return NULL;
}

const kvs_policy_i *kvs_policy_at(size_t i)
{
    for (const kvs_policy_i *const *p = kvs_policies; *p; p++) {
        if (i-- == 0)
            return *p;
    }
    return NULL;
}

const kvs_preset_t *kvs_preset_at(size_t i)
{
    for (size_t t = 0; t < sizeof preset_tables / sizeof preset_tables[0]; t++) {
        for (const kvs_preset_t *p = preset_tables[t]; p->name; p++) {
            if (i-- == 0)
                return p;
        }
    }
    return NULL;
}

const kvs_codec_i *kvs_codec_find(const char *name)
{
    const kvs_codec_i *c;

    for (size_t i = 0; (c = kvs_codec_at(i)); i++) {
        if (!strcmp(c->name, name))
            return c;
    }
    return NULL;
}

const kvs_policy_i *kvs_policy_find(const char *name)
{
    const kvs_policy_i *p;

    for (size_t i = 0; (p = kvs_policy_at(i)); i++) {
        if (!strcmp(p->name, name))
            return p;
    }
    return NULL;
}

const kvs_preset_t *kvs_preset_find(const char *name)
{
    const kvs_preset_t *p;

    for (size_t i = 0; (p = kvs_preset_at(i)); i++) {
        if (!strcmp(p->name, name))
            return p;
    }
    return NULL;
}

/* ---- listings ----------------------------------------------------------- */

static const char *const param_type_names[KVS_PARAM_TYPE_COUNT] = {
    [KVS_PARAM_INT] = "int", [KVS_PARAM_FLOAT] = "float", [KVS_PARAM_ENUM] = "enum",
    [KVS_PARAM_BUDGET] = "budget",
};

/* A growable text buffer; on allocation failure it stops growing and the
** listing returns NULL. */
typedef struct text_buf {
    char *data;
    size_t len, cap;
    int failed;
} text_buf_t;

static void tb_printf(text_buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void tb_printf(text_buf_t *b, const char *fmt, ...)
{
    va_list ap;

    if (b->failed)
        return;
    while (1) {
        va_start(ap, fmt);
        int w = vsnprintf(b->data ? b->data + b->len : NULL, b->data ? b->cap - b->len : 0, fmt, ap);
        va_end(ap);
        if (w < 0) {
            b->failed = 1;
            return;
        }
        if (b->data && b->len + (size_t)w < b->cap) {
            b->len += (size_t)w;
            return;
        }
        size_t cap = (b->cap ? b->cap * 2 : 4096) + (size_t)w;
        char *grown = realloc(b->data, cap);
        if (!grown) {
            b->failed = 1;
            return;
        }
        b->data = grown;
        b->cap = cap;
    }
}

static void text_params(text_buf_t *b, const kvs_param_doc_t *docs)
{
    for (const kvs_param_doc_t *d = docs; d && d->name; d++) {
        char range[96];

        if (d->type == KVS_PARAM_ENUM)
            snprintf(range, sizeof range, "%s", d->choices);
        else if (d->type == KVS_PARAM_BUDGET)
            snprintf(range, sizeof range, "%.0f..%.0f tokens or N%%", d->min, d->max);
        else if (d->type == KVS_PARAM_INT)
            snprintf(range, sizeof range, "%.0f..%.0f", d->min, d->max);
        else
            snprintf(range, sizeof range, "%g..%g", d->min, d->max);
        tb_printf(b, "      %-14s default %-11s %-30s %s\n", d->name, d->default_value, range,
                  d->description);
    }
}

static const char *codec_roles_text(unsigned roles)
{
    if ((roles & KVS_CODEC_KEY) && (roles & KVS_CODEC_VALUE))
        return "key, value";
    return (roles & KVS_CODEC_KEY) ? "key" : "value";
}

char *kvs_kernel_list_text(void)
{
    text_buf_t b = {0};
    const kvs_codec_i *c;
    const kvs_preset_t *p;
    const kvs_policy_i *pol;

    tb_printf(&b, "Codecs (key and value paths):\n");
    for (size_t i = 0; (c = kvs_codec_at(i)); i++) {
        tb_printf(&b, "  %-18s %s [%s; %s]\n", c->name, c->description, c->family,
                  codec_roles_text(c->roles));
        text_params(&b, c->params);
    }
    tb_printf(&b, "\nPresets (shorthands for a key and a value path):\n");
    for (size_t i = 0; (p = kvs_preset_at(i)); i++) {
        tb_printf(&b, "  %-18s %s\n      = %s\n", p->name, p->description, p->expansion);
        text_params(&b, p->params);
    }
    tb_printf(&b, "\nSelection policies:\n");
    for (size_t i = 0; (pol = kvs_policy_at(i)); i++) {
        tb_printf(&b, "  %-18s %s\n", pol->name, pol->description);
        text_params(&b, pol->params);
    }
    if (!kvs_policy_at(0))
        tb_printf(&b, "  (none registered yet)\n");
    tb_printf(&b, "\nSpec grammar: PART{/PART}, PART = NAME[:NAME=VALUE{,NAME=VALUE}]. The first "
                  "codec is the key path,\nthe second the value path; a lone codec serves both. "
                  "See docs/kernels.md.\n");
    if (b.failed) {
        free(b.data);
        return NULL;
    }
    return b.data;
}

static json_t *json_params(const kvs_param_doc_t *docs)
{
    json_t *arr = json_array();

    for (const kvs_param_doc_t *d = docs; arr && d && d->name; d++) {
        json_t *o = json_object();
        json_object_set_new(o, "name", json_string(d->name));
        json_object_set_new(o, "type", json_string(param_type_names[d->type]));
        json_object_set_new(o, "default", json_string(d->default_value));
        json_object_set_new(o, "description", json_string(d->description));
        if (d->type == KVS_PARAM_ENUM) {
            json_object_set_new(o, "choices", json_string(d->choices));
        } else {
            json_object_set_new(o, "min", json_real(d->min));
            json_object_set_new(o, "max", json_real(d->max));
        }
        json_array_append_new(arr, o);
    }
    return arr;
}

char *kvs_kernel_list_json(void)
{
    json_t *arr = json_array();
    const kvs_codec_i *c;
    const kvs_preset_t *p;
    const kvs_policy_i *pol;

    if (!arr)
        return NULL;
    for (size_t i = 0; (c = kvs_codec_at(i)); i++) {
        json_t *o = json_object(), *roles = json_array();
        if (c->roles & KVS_CODEC_KEY)
            json_array_append_new(roles, json_string("key"));
        if (c->roles & KVS_CODEC_VALUE)
            json_array_append_new(roles, json_string("value"));
        json_object_set_new(o, "name", json_string(c->name));
        json_object_set_new(o, "role", json_string("codec"));
        json_object_set_new(o, "roles", roles);
        json_object_set_new(o, "family", json_string(c->family));
        json_object_set_new(o, "description", json_string(c->description));
        json_object_set_new(o, "params", json_params(c->params));
        json_array_append_new(arr, o);
    }
    for (size_t i = 0; (p = kvs_preset_at(i)); i++) {
        json_t *o = json_object();
        json_object_set_new(o, "name", json_string(p->name));
        json_object_set_new(o, "role", json_string("preset"));
        json_object_set_new(o, "expansion", json_string(p->expansion));
        json_object_set_new(o, "description", json_string(p->description));
        json_object_set_new(o, "params", json_params(p->params));
        json_array_append_new(arr, o);
    }
    for (size_t i = 0; (pol = kvs_policy_at(i)); i++) {
        json_t *o = json_object();
        json_object_set_new(o, "name", json_string(pol->name));
        json_object_set_new(o, "role", json_string("policy"));
        json_object_set_new(o, "family", json_string("selection"));
        json_object_set_new(o, "description", json_string(pol->description));
        json_object_set_new(o, "params", json_params(pol->params));
        json_array_append_new(arr, o);
    }
    char *text = json_dumps(arr, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(10));
    json_decref(arr);
    return text;
}
