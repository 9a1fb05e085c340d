/*
** params.c: parsing "name=value,..." parameter lists of kernel spec parts
** against their documentation tables.
*/
#include "kernel_impl.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ENUM choices are stored as NUL-terminated copies that live for the whole
** process, because a choices string "token|channel" cannot be pointed into.
** The set is bounded by the choices the registered kernels declare. */
static pthread_mutex_t intern_lock = PTHREAD_MUTEX_INITIALIZER;
static char *interned[512];
static size_t n_interned;

static const char *intern_choice(const char *s, size_t len)
{
    const char *found = NULL;

    pthread_mutex_lock(&intern_lock);
    for (size_t i = 0; i < n_interned && !found; i++) {
        if (strlen(interned[i]) == len && !memcmp(interned[i], s, len))
            found = interned[i];
    }
    if (!found && n_interned < sizeof interned / sizeof interned[0]) {
        char *copy = malloc(len + 1);
        if (copy) {
            memcpy(copy, s, len);
            copy[len] = '\0';
            interned[n_interned++] = copy;
            found = copy;
        }
    }
    pthread_mutex_unlock(&intern_lock);
    return found;
}

static int doc_index(const kvs_params_t *p, const char *name)
{
    for (uint32_t i = 0; i < p->n; i++) {
        if (!strcmp(p->docs[i].name, name))
            return (int)i;
    }
    fprintf(stderr, "kvsim: internal error: kernel reads undeclared parameter '%s'\n", name);
    abort();
}

double kvs_param_number(const kvs_params_t *p, const char *name)
{
    return p->number[doc_index(p, name)];
}

const char *kvs_param_choice(const kvs_params_t *p, const char *name)
{
    int i = doc_index(p, name);

    if (p->docs[i].type != KVS_PARAM_ENUM) {
        fprintf(stderr, "kvsim: internal error: parameter '%s' is not a choice\n", name);
        abort();
    }
    return p->text[i];
}

uint32_t kvs_param_budget(const kvs_params_t *p, const char *name, uint32_t n_context)
{
    double v = kvs_param_number(p, name);
    double tokens = v < 0 ? ceil(-v * (double)n_context) : v;

    if (tokens < 1)
        tokens = 1;
    return tokens > 4294967295.0 ? UINT32_MAX : (uint32_t)tokens;
}

/* "bits, group, axis" for error messages. */
static void list_names(const kvs_param_doc_t *docs, char *buf, size_t cap)
{
    size_t used = 0;

    buf[0] = '\0';
    for (const kvs_param_doc_t *d = docs; d && d->name; d++) {
        int w = snprintf(buf + used, cap - used, "%s%s", used ? ", " : "", d->name);
        if (w < 0 || (size_t)w >= cap - used)
            break;
        used += (size_t)w;
    }
    if (!used)
        snprintf(buf, cap, "none");
}

/* Writes the values a parameter accepts, for error messages ("an integer
** from 1 to 8"). */
static void describe_accepted(const kvs_param_doc_t *d, char *buf, size_t cap)
{
    switch (d->type) {
    case KVS_PARAM_INT: snprintf(buf, cap, "an integer from %.0f to %.0f", d->min, d->max); break;
    case KVS_PARAM_FLOAT: snprintf(buf, cap, "a number from %g to %g", d->min, d->max); break;
    case KVS_PARAM_ENUM: snprintf(buf, cap, "one of %s", d->choices); break;
    case KVS_PARAM_BUDGET:
        snprintf(buf, cap, "a token count from %.0f to %.0f, or a percentage such as 25%%", d->min,
                 d->max);
        break;
    default: snprintf(buf, cap, "nothing (unknown parameter type)"); break;
    }
}

static kvs_status_e parse_value(const char *part, const kvs_param_doc_t *d, const char *value,
                                double *number, const char **text)
{
    char accepted[160];
    char *end;

    describe_accepted(d, accepted, sizeof accepted);
    *text = NULL;
    if (d->type == KVS_PARAM_ENUM) {
        size_t len = strlen(value);
        const char *c = d->choices;
        for (int idx = 0; c && *c; idx++) {
            const char *bar = strchr(c, '|');
            size_t clen = bar ? (size_t)(bar - c) : strlen(c);
            if (clen == len && !memcmp(c, value, len)) {
                *number = idx;
                *text = intern_choice(c, clen);
                KVS_RETURN_IF(!*text, KVS_ERR_NOMEM, "out of memory storing choice '%s'", value);
                return KVS_OK;
            }
            c = bar ? bar + 1 : c + clen;
        }
        return kvs_fail(KVS_ERR_KERNEL_SPEC, "kernel part '%s': %s=%s is not valid; accepted: %s",
                        part, d->name, value, accepted);
    }

    errno = 0;
    if (d->type == KVS_PARAM_BUDGET && value[0] && value[strlen(value) - 1] == '%') {
        double pct = strtod(value, &end);
        KVS_RETURN_IF(errno || end == value || *end != '%' || end[1] || !isfinite(pct) ||
                          pct <= 0 || pct > 100,
                      KVS_ERR_KERNEL_SPEC,
                      "kernel part '%s': %s=%s is not a valid percentage; accepted: %s "
                      "(percentages above 0 and at most 100)",
                      part, d->name, value, accepted);
        *number = -pct / 100.0;
        return KVS_OK;
    }

    double v = strtod(value, &end);
    int bad = errno || end == value || *end || !isfinite(v);
    if (!bad && (d->type == KVS_PARAM_INT || d->type == KVS_PARAM_BUDGET) && v != floor(v))
        bad = 1;
    KVS_RETURN_IF(bad, KVS_ERR_KERNEL_SPEC, "kernel part '%s': %s=%s is not valid; accepted: %s",
                  part, d->name, value, accepted);
    KVS_RETURN_IF(v < d->min || v > d->max, KVS_ERR_KERNEL_SPEC,
                  "kernel part '%s': %s=%s is out of range; accepted: %s", part, d->name, value,
                  accepted);
    *number = v;
    return KVS_OK;
}

kvs_status_e kvs_params_parse(const char *part_name, const kvs_param_doc_t *docs, const char *text,
                              kvs_params_t *out)
{
    char names[512];
    uint8_t given[KVS_MAX_PARAMS] = {0};
    uint32_t n = 0;

    memset(out, 0, sizeof *out);
    while (docs && docs[n].name)
        n++;
    KVS_RETURN_IF(n > KVS_MAX_PARAMS, KVS_ERR_INTERNAL,
                  "kernel part '%s' declares %u parameters; at most %d are supported", part_name, n,
                  KVS_MAX_PARAMS);
    out->n = n;
    out->docs = docs;

    for (uint32_t i = 0; i < n; i++) {
        kvs_status_e rc = parse_value(part_name, &docs[i], docs[i].default_value, &out->number[i],
                                      &out->text[i]);
        if (rc != KVS_OK) {
            kvs_error_prefix("default value of a registered kernel is invalid (kvsim bug)");
            return KVS_ERR_INTERNAL;
        }
    }
    if (!text || !*text)
        return KVS_OK;

    list_names(docs, names, sizeof names);
    const char *item = text;
    while (1) {
        const char *comma = strchr(item, ',');
        size_t len = comma ? (size_t)(comma - item) : strlen(item);
        char buf[256];

        KVS_RETURN_IF(len == 0, KVS_ERR_KERNEL_SPEC,
                      "kernel part '%s': empty parameter in '%s'; write NAME=VALUE pairs separated "
                      "by commas",
                      part_name, text);
        KVS_RETURN_IF(len >= sizeof buf, KVS_ERR_KERNEL_SPEC,
                      "kernel part '%s': parameter '%.40s...' is too long", part_name, item);
        memcpy(buf, item, len);
        buf[len] = '\0';

        char *eq = strchr(buf, '=');
        KVS_RETURN_IF(!eq || eq == buf, KVS_ERR_KERNEL_SPEC,
                      "kernel part '%s': '%s' is not NAME=VALUE; accepted names: %s", part_name,
                      buf, names);
        *eq = '\0';
        int idx = -1;
        for (uint32_t i = 0; i < n; i++) {
            if (!strcmp(docs[i].name, buf))
                idx = (int)i;
        }
        KVS_RETURN_IF(idx < 0, KVS_ERR_KERNEL_SPEC,
                      "kernel part '%s': unknown parameter '%s'; accepted: %s", part_name, buf,
                      names);
        KVS_RETURN_IF(given[idx], KVS_ERR_KERNEL_SPEC,
                      "kernel part '%s': parameter '%s' is given twice", part_name, buf);
        given[idx] = 1;
        KVS_FORWARD(parse_value(part_name, &docs[idx], eq + 1, &out->number[idx], &out->text[idx]));

        if (!comma)
            break;
        item = comma + 1;
    }
    return KVS_OK;
}
