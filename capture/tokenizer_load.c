/* tokenizer_load.c: reads tokenizer.json (and tokenizer_config.json,
** config.json) into a tokenizer handle, validating every field it uses.
**
** Every error names the file, the JSON path of the bad value and the
** problem. A component type kvsim does not implement is an error, never
** skipped, because skipping it would silently give other token ids than
** the model was trained with. */
#include "tokenizer_internal.h"

#include "../common/fsutil.h"

#include <jansson.h>

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* Ids at or above this are rejected: far larger than any released
** vocabulary, and small enough that the id tables stay affordable. */
#define MAX_VOCAB_IDS (1u << 22)

typedef struct load_ctx {
    kvs_tokenizer_t *tok;
    const char *origin;
} load_ctx_t;

static kvs_status_e bad(const load_ctx_t *ctx, kvs_status_e status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static kvs_status_e bad(const load_ctx_t *ctx, kvs_status_e status, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    kvs_failv(status, fmt, ap);
    va_end(ap);
    kvs_error_prefix("%s", ctx->origin);
    return status;
}

static const char *type_name(const json_t *v)
{
    if (!v)
        return "missing";
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return "an object";
    case JSON_ARRAY:
        return "an array";
    case JSON_STRING:
        return "a string";
    case JSON_INTEGER:
        return "an integer";
    case JSON_REAL:
        return "a number";
    case JSON_TRUE:
    case JSON_FALSE:
        return "a boolean";
    default:
        return "null";
    }
}

static char *dup_bytes(const char *s, size_t len)
{
    char *copy = malloc(len + 1);

    if (copy) {
        memcpy(copy, s, len);
        copy[len] = '\0';
    }
    return copy;
}

/* ---- typed field access ------------------------------------------------- */

static kvs_status_e get_bool(const load_ctx_t *ctx, const json_t *obj, const char *path,
                             const char *key, int fallback, int *out)
{
    const json_t *v = json_object_get(obj, key);

    if (!v || json_is_null(v)) {
        *out = fallback;
        return KVS_OK;
    }
    if (!json_is_boolean(v))
        return bad(ctx, KVS_ERR_TOKENIZER, "%s.%s must be true or false, not %s", path, key,
                   type_name(v));
    *out = json_is_true(v);
    return KVS_OK;
}

/* A string field; *out is NULL when the key is absent or null and
** allow_null is set. */
static kvs_status_e get_string(const load_ctx_t *ctx, const json_t *obj, const char *path,
                               const char *key, int allow_null, const char **out, size_t *len)
{
    const json_t *v = json_object_get(obj, key);

    *out = NULL;
    *len = 0;
    if ((!v || json_is_null(v)) && allow_null)
        return KVS_OK;
    if (!v)
        return bad(ctx, KVS_ERR_TOKENIZER, "%s.%s is missing; it must be a string", path, key);
    if (!json_is_string(v))
        return bad(ctx, KVS_ERR_TOKENIZER, "%s.%s must be a string, not %s", path, key,
                   type_name(v));
    *out = json_string_value(v);
    *len = json_string_length(v);
    return KVS_OK;
}

static kvs_status_e get_id(const load_ctx_t *ctx, const json_t *v, const char *path,
                           int32_t *out)
{
    json_int_t id;

    if (!json_is_integer(v))
        return bad(ctx, KVS_ERR_TOKENIZER, "%s must be an integer token id, not %s", path,
                   type_name(v));
    id = json_integer_value(v);
    if (id < 0 || id >= (json_int_t)MAX_VOCAB_IDS)
        return bad(ctx, KVS_ERR_TOKENIZER, "%s is token id %lld, outside 0..%u", path,
                   (long long)id, MAX_VOCAB_IDS - 1);
    *out = (int32_t)id;
    return KVS_OK;
}

/* The "type" of a component object, which must be one of the names that
** kvsim implements (listed in the message otherwise). */
static kvs_status_e get_type(const load_ctx_t *ctx, const json_t *obj, const char *path,
                             const char **type)
{
    size_t len;

    if (!json_is_object(obj))
        return bad(ctx, KVS_ERR_TOKENIZER, "%s must be an object or null, not %s", path,
                   type_name(obj));
    return get_string(ctx, obj, path, "type", 0, type, &len);
}

static kvs_status_e unsupported(const load_ctx_t *ctx, const char *path, const char *type,
                                const char *supported)
{
    return bad(ctx, KVS_ERR_UNSUPPORTED,
               "%s type '%s' is not supported (kvsim implements %s); use a model whose "
               "tokenizer.json uses those components",
               path, type, supported);
}

/* Replace patterns: {"String": "..."} is supported; {"Regex": ...} is not. */
static kvs_status_e get_pattern(const load_ctx_t *ctx, const json_t *obj, const char *path,
                                char **pattern, size_t *pattern_len)
{
    const json_t *p = json_object_get(obj, "pattern");
    const json_t *s;
    char sub[256];

    if (!json_is_object(p))
        return bad(ctx, KVS_ERR_TOKENIZER, "%s.pattern must be an object like {\"String\": \" \"}",
                   path);
    s = json_object_get(p, "String");
    if (!s) {
        if (json_object_get(p, "Regex"))
            return bad(ctx, KVS_ERR_UNSUPPORTED,
                       "%s.pattern is a Regex, which kvsim does not support (only String "
                       "patterns)",
                       path);
        return bad(ctx, KVS_ERR_TOKENIZER, "%s.pattern must have a \"String\" member", path);
    }
    snprintf(sub, sizeof sub, "%s.pattern", path);
    if (!json_is_string(s))
        return bad(ctx, KVS_ERR_TOKENIZER, "%s.String must be a string, not %s", sub,
                   type_name(s));
    if (json_string_length(s) == 0)
        return bad(ctx, KVS_ERR_TOKENIZER, "%s.String is empty; a Replace pattern needs text",
                   sub);
    *pattern_len = json_string_length(s);
    *pattern = dup_bytes(json_string_value(s), *pattern_len);
    KVS_RETURN_IF(!*pattern, KVS_ERR_NOMEM, "out of memory reading %s", sub);
    return KVS_OK;
}

/* ---- normalizer --------------------------------------------------------- */

static kvs_status_e load_normalizer(const load_ctx_t *ctx, const json_t *obj, const char *path)
{
    static const char supported[] = "Prepend, Replace and Sequence";
    kvs_tokenizer_t *tok = ctx->tok;
    kvs_tok_normalizer_t *nm;
    const char *type, *text;
    size_t len;

    if (!obj || json_is_null(obj))
        return KVS_OK;
    KVS_FORWARD(get_type(ctx, obj, path, &type));

    if (!strcmp(type, "Sequence")) {
        const json_t *list = json_object_get(obj, "normalizers");
        size_t i;
        json_t *item;

        if (!json_is_array(list))
            return bad(ctx, KVS_ERR_TOKENIZER, "%s.normalizers must be an array", path);
        json_array_foreach(list, i, item) {
            char sub[256];

            snprintf(sub, sizeof sub, "%s.normalizers[%zu]", path, i);
            KVS_FORWARD(load_normalizer(ctx, item, sub));
        }
        return KVS_OK;
    }
    if (strcmp(type, "Prepend") && strcmp(type, "Replace"))
        return unsupported(ctx, path, type, supported);
    if (tok->n_normalizers == KVS_TOK_MAX_NORM)
        return bad(ctx, KVS_ERR_UNSUPPORTED, "%s: more than %d normalizers", path,
                   KVS_TOK_MAX_NORM);

    nm = &tok->normalizers[tok->n_normalizers++];
    if (!strcmp(type, "Prepend")) {
        nm->kind = KVS_TOK_NORM_PREPEND;
        KVS_FORWARD(get_string(ctx, obj, path, "prepend", 0, &text, &len));
    } else {
        nm->kind = KVS_TOK_NORM_REPLACE;
        KVS_FORWARD(get_pattern(ctx, obj, path, &nm->pattern, &nm->pattern_len));
        KVS_FORWARD(get_string(ctx, obj, path, "content", 0, &text, &len));
    }
    nm->content = dup_bytes(text, len);
    nm->content_len = len;
    KVS_RETURN_IF(!nm->content, KVS_ERR_NOMEM, "out of memory reading %s", path);
    return KVS_OK;
}

/* ---- pre-tokenizer ------------------------------------------------------ */

static kvs_status_e load_pretok(const load_ctx_t *ctx, const json_t *obj, const char *path)
{
    static const char supported[] = "ByteLevel, Digits and Sequence";
    kvs_tokenizer_t *tok = ctx->tok;
    kvs_tok_pretok_t *p;
    const char *type;

    if (!obj || json_is_null(obj))
        return KVS_OK;
    KVS_FORWARD(get_type(ctx, obj, path, &type));

    if (!strcmp(type, "Sequence")) {
        const json_t *list = json_object_get(obj, "pretokenizers");
        size_t i;
        json_t *item;

        if (!json_is_array(list))
            return bad(ctx, KVS_ERR_TOKENIZER, "%s.pretokenizers must be an array", path);
        json_array_foreach(list, i, item) {
            char sub[256];

            snprintf(sub, sizeof sub, "%s.pretokenizers[%zu]", path, i);
            KVS_FORWARD(load_pretok(ctx, item, sub));
        }
        return KVS_OK;
    }
    if (strcmp(type, "ByteLevel") && strcmp(type, "Digits"))
        return unsupported(ctx, path, type, supported);
    if (tok->n_pretoks == KVS_TOK_MAX_PRETOK)
        return bad(ctx, KVS_ERR_UNSUPPORTED, "%s: more than %d pre-tokenizers", path,
                   KVS_TOK_MAX_PRETOK);

    p = &tok->pretoks[tok->n_pretoks++];
    if (!strcmp(type, "Digits")) {
        p->kind = KVS_TOK_PRETOK_DIGITS;
        return get_bool(ctx, obj, path, "individual_digits", 0, &p->individual_digits);
    }
    p->kind = KVS_TOK_PRETOK_BYTE_LEVEL;
    KVS_FORWARD(get_bool(ctx, obj, path, "add_prefix_space", 1, &p->add_prefix_space));
    KVS_FORWARD(get_bool(ctx, obj, path, "use_regex", 1, &p->use_regex));
    if (!tok->split_re)
        KVS_FORWARD(kvs_tok_compile_split(tok));
    return KVS_OK;
}

/* ---- decoder ------------------------------------------------------------ */

static kvs_status_e load_decoder(const load_ctx_t *ctx, const json_t *obj, const char *path)
{
    static const char supported[] = "ByteLevel, Replace, ByteFallback, Fuse, Strip and Sequence";
    kvs_tokenizer_t *tok = ctx->tok;
    kvs_tok_decoder_t *d;
    const char *type;

    if (!obj || json_is_null(obj))
        return KVS_OK;
    KVS_FORWARD(get_type(ctx, obj, path, &type));
    tok->has_decoder = 1;

    if (!strcmp(type, "Sequence")) {
        const json_t *list = json_object_get(obj, "decoders");
        size_t i;
        json_t *item;

        if (!json_is_array(list))
            return bad(ctx, KVS_ERR_TOKENIZER, "%s.decoders must be an array", path);
        json_array_foreach(list, i, item) {
            char sub[256];

            snprintf(sub, sizeof sub, "%s.decoders[%zu]", path, i);
            KVS_FORWARD(load_decoder(ctx, item, sub));
        }
        return KVS_OK;
    }
    if (strcmp(type, "ByteLevel") && strcmp(type, "Replace") && strcmp(type, "ByteFallback") &&
        strcmp(type, "Fuse") && strcmp(type, "Strip"))
        return unsupported(ctx, path, type, supported);
    if (tok->n_decoders == KVS_TOK_MAX_DECODERS)
        return bad(ctx, KVS_ERR_UNSUPPORTED, "%s: more than %d decoders", path,
                   KVS_TOK_MAX_DECODERS);

    d = &tok->decoders[tok->n_decoders++];
    if (!strcmp(type, "ByteLevel"))
        d->kind = KVS_TOK_DEC_BYTE_LEVEL;
    else if (!strcmp(type, "ByteFallback"))
        d->kind = KVS_TOK_DEC_BYTE_FALLBACK;
    else if (!strcmp(type, "Fuse"))
        d->kind = KVS_TOK_DEC_FUSE;
    else if (!strcmp(type, "Replace")) {
        const char *text;
        size_t len;

        d->kind = KVS_TOK_DEC_REPLACE;
        KVS_FORWARD(get_pattern(ctx, obj, path, &d->pattern, &d->pattern_len));
        KVS_FORWARD(get_string(ctx, obj, path, "content", 0, &text, &len));
        d->content = dup_bytes(text, len);
        d->content_len = len;
        KVS_RETURN_IF(!d->content, KVS_ERR_NOMEM, "out of memory reading %s", path);
    } else {
        const char *text;
        size_t len, i = 0;
        const json_t *start = json_object_get(obj, "start");
        const json_t *stop = json_object_get(obj, "stop");

        d->kind = KVS_TOK_DEC_STRIP;
        KVS_FORWARD(get_string(ctx, obj, path, "content", 0, &text, &len));
        if (len > 0)
            kvs_utf8_next(text, &i);
        if (len == 0 || i != len)
            return bad(ctx, KVS_ERR_TOKENIZER, "%s.content must be exactly one character", path);
        if (!json_is_integer(start) || json_integer_value(start) < 0 ||
            json_integer_value(start) > UINT32_MAX || !json_is_integer(stop) ||
            json_integer_value(stop) < 0 || json_integer_value(stop) > UINT32_MAX)
            return bad(ctx, KVS_ERR_TOKENIZER,
                       "%s.start and %s.stop must be non-negative integers", path, path);
        d->start = (uint32_t)json_integer_value(start);
        d->stop = (uint32_t)json_integer_value(stop);
        d->content = dup_bytes(text, len);
        d->content_len = len;
        KVS_RETURN_IF(!d->content, KVS_ERR_NOMEM, "out of memory reading %s", path);
    }
    return KVS_OK;
}

/* ---- model -------------------------------------------------------------- */

static kvs_status_e check_unused_option(const load_ctx_t *ctx, const json_t *model,
                                        const char *key)
{
    const json_t *v = json_object_get(model, key);

    if (!v || json_is_null(v) || (json_is_string(v) && json_string_length(v) == 0))
        return KVS_OK;
    return bad(ctx, KVS_ERR_UNSUPPORTED,
               "model.%s is set, which kvsim does not support; only BPE models without it load",
               key);
}

static kvs_status_e load_vocab(const load_ctx_t *ctx, const json_t *vocab, uint32_t *max_id)
{
    kvs_tokenizer_t *tok = ctx->tok;
    const char *key;
    size_t key_len;
    json_t *value;

    if (!json_is_object(vocab))
        return bad(ctx, KVS_ERR_TOKENIZER, "model.vocab must be an object of token: id, not %s",
                   type_name(vocab));
    KVS_FORWARD(kvs_tok_strmap_init(&tok->model_vocab, json_object_size(vocab)));
    *max_id = 0;
    /* NOTE: jansson rejects "\u0000" in object keys while parsing, so a
    ** vocabulary token containing NUL cannot load; the lengths are exact
    ** for every other key. */
    json_object_keylen_foreach((json_t *)vocab, key, key_len, value) {
        char path[128];
        int32_t id, previous;

        snprintf(path, sizeof path, "model.vocab[\"%.60s\"]", key);
        KVS_FORWARD(get_id(ctx, value, path, &id));
        if ((uint32_t)id > *max_id)
            *max_id = (uint32_t)id;
        /* Keys point into the JSON document until the id table owns
        ** copies; see take_vocab_keys. */
        KVS_FORWARD(kvs_tok_strmap_put(&tok->model_vocab, key, key_len, id, &previous));
    }
    return KVS_OK;
}

/* Moves the vocabulary keys from the JSON document into the id table, so
** the map stays valid after the document is freed. Also rejects two tokens
** with one id, which would make decoding ambiguous. */
static kvs_status_e take_vocab_keys(const load_ctx_t *ctx)
{
    kvs_tokenizer_t *tok = ctx->tok;

    for (size_t j = 0; j < tok->model_vocab.cap; j++) {
        kvs_tok_strmap_slot_t *s = &tok->model_vocab.slots[j];
        int32_t id = s->value;

        if (!s->key)
            continue;
        if (tok->model_token[id])
            return bad(ctx, KVS_ERR_TOKENIZER,
                       "model.vocab gives id %d to both \"%.60s\" and \"%.60s\"; every token "
                       "needs its own id",
                       id, tok->model_token[id], s->key);
        tok->model_token[id] = dup_bytes(s->key, s->len);
        KVS_RETURN_IF(!tok->model_token[id], KVS_ERR_NOMEM,
                      "out of memory copying the vocabulary");
        tok->id_token[id] = tok->model_token[id];
        tok->id_token_len[id] = s->len;
        s->key = tok->model_token[id];
    }
    return KVS_OK;
}

static kvs_status_e load_merges(const load_ctx_t *ctx, const json_t *merges)
{
    kvs_tokenizer_t *tok = ctx->tok;
    kvs_tok_buf_t joined = {0};
    kvs_status_e rc = KVS_OK;
    size_t rank;
    json_t *item;

    if (!json_is_array(merges))
        return bad(ctx, KVS_ERR_TOKENIZER, "model.merges must be an array, not %s",
                   type_name(merges));
    if (json_array_size(merges) > UINT32_MAX)
        return bad(ctx, KVS_ERR_TOKENIZER, "model.merges has too many entries");
    KVS_FORWARD(kvs_tok_mergemap_init(&tok->merges, json_array_size(merges)));

    json_array_foreach(merges, rank, item) {
        const char *left, *right;
        size_t left_len, right_len;
        int32_t left_id, right_id, new_id;

        /* "a b" with exactly one space, or ["a", "b"]. */
        if (json_is_string(item)) {
            const char *s = json_string_value(item);
            const char *space = memchr(s, ' ', json_string_length(item));

            if (!space || memchr(space + 1, ' ', json_string_length(item) - (size_t)(space - s) - 1)) {
                rc = bad(ctx, KVS_ERR_TOKENIZER,
                         "model.merges[%zu] \"%.60s\" must be two tokens separated by one space",
                         rank, s);
                break;
            }
            left = s;
            left_len = (size_t)(space - s);
            right = space + 1;
            right_len = json_string_length(item) - left_len - 1;
        } else if (json_is_array(item) && json_array_size(item) == 2 &&
                   json_is_string(json_array_get(item, 0)) &&
                   json_is_string(json_array_get(item, 1))) {
            left = json_string_value(json_array_get(item, 0));
            left_len = json_string_length(json_array_get(item, 0));
            right = json_string_value(json_array_get(item, 1));
            right_len = json_string_length(json_array_get(item, 1));
        } else {
            rc = bad(ctx, KVS_ERR_TOKENIZER,
                     "model.merges[%zu] must be a string \"a b\" or a pair [\"a\", \"b\"], not %s",
                     rank, type_name(item));
            break;
        }

        left_id = kvs_tok_strmap_get(&tok->model_vocab, left, left_len);
        right_id = kvs_tok_strmap_get(&tok->model_vocab, right, right_len);
        if (left_id < 0 || right_id < 0) {
            rc = bad(ctx, KVS_ERR_TOKENIZER,
                     "model.merges[%zu] names token \"%.*s\", which is not in model.vocab", rank,
                     (int)(left_id < 0 ? left_len : right_len), left_id < 0 ? left : right);
            break;
        }
        joined.len = 0;
        if ((rc = kvs_tok_buf_append(&joined, left, left_len)) != KVS_OK ||
            (rc = kvs_tok_buf_append(&joined, right, right_len)) != KVS_OK)
            break;
        new_id = kvs_tok_strmap_get(&tok->model_vocab, joined.data, joined.len);
        if (new_id < 0) {
            rc = bad(ctx, KVS_ERR_TOKENIZER,
                     "model.merges[%zu] produces \"%.*s\", which is not in model.vocab", rank,
                     (int)joined.len, joined.data);
            break;
        }
        kvs_tok_mergemap_put(&tok->merges, left_id, right_id, (uint32_t)rank, new_id);
    }
    free(joined.data);
    return rc;
}

static kvs_status_e load_model(const load_ctx_t *ctx, const json_t *root, uint32_t *max_id)
{
    kvs_tokenizer_t *tok = ctx->tok;
    const json_t *model = json_object_get(root, "model");
    const json_t *type = json_object_get(model, "type");
    const json_t *dropout = json_object_get(model, "dropout");

    if (!json_is_object(model))
        return bad(ctx, KVS_ERR_TOKENIZER, "model must be an object, not %s",
                   type_name(model));
    if (type && !json_is_string(type))
        return bad(ctx, KVS_ERR_TOKENIZER, "model.type must be a string, not %s", type_name(type));
    if (type && strcmp(json_string_value(type), "BPE"))
        return unsupported(ctx, "model", json_string_value(type), "BPE");
    if (!type && !json_object_get(model, "merges"))
        return bad(ctx, KVS_ERR_TOKENIZER, "model has no \"type\" and no merges; kvsim loads "
                                           "only BPE models");
    if (dropout && !json_is_null(dropout) &&
        !(json_is_number(dropout) && json_number_value(dropout) == 0.0))
        return bad(ctx, KVS_ERR_UNSUPPORTED,
                   "model.dropout is set, which makes encoding random; set it to null");
    KVS_FORWARD(check_unused_option(ctx, model, "continuing_subword_prefix"));
    KVS_FORWARD(check_unused_option(ctx, model, "end_of_word_suffix"));
    KVS_FORWARD(get_bool(ctx, model, "model", "byte_fallback", 0, &tok->byte_fallback));
    KVS_FORWARD(get_bool(ctx, model, "model", "fuse_unk", 0, &tok->fuse_unk));
    KVS_FORWARD(get_bool(ctx, model, "model", "ignore_merges", 0, &tok->ignore_merges));
    return load_vocab(ctx, json_object_get(model, "vocab"), max_id);
}

/* Runs after the vocabulary is in place: merges and the unknown token. */
static kvs_status_e finish_model(const load_ctx_t *ctx, const json_t *root)
{
    kvs_tokenizer_t *tok = ctx->tok;
    const json_t *model = json_object_get(root, "model");
    const char *unk;
    size_t unk_len;

    KVS_FORWARD(load_merges(ctx, json_object_get(model, "merges")));
    KVS_FORWARD(get_string(ctx, model, "model", "unk_token", 1, &unk, &unk_len));
    tok->unk_id = -1;
    if (unk) {
        tok->unk_id = kvs_tok_strmap_get(&tok->model_vocab, unk, unk_len);
        if (tok->unk_id < 0)
            return bad(ctx, KVS_ERR_TOKENIZER, "model.unk_token \"%.60s\" is not in model.vocab",
                       unk);
    }
    for (int32_t cp = 0; cp < KVS_TOK_CHAR_TABLE; cp++) {
        char utf8[4];
        size_t len = kvs_utf8_encode(cp, utf8);

        tok->char_ids[cp] = kvs_tok_strmap_get(&tok->model_vocab, utf8, len);
    }
    for (int b = 0; b < 256; b++) {
        char piece[8];

        snprintf(piece, sizeof piece, "<0x%02X>", b);
        tok->byte_ids[b] = kvs_tok_strmap_get(&tok->model_vocab, piece, 6);
    }
    return KVS_OK;
}

/* ---- added tokens ------------------------------------------------------- */

static kvs_status_e scan_added_ids(const load_ctx_t *ctx, const json_t *list, uint32_t *max_id)
{
    size_t i;
    json_t *item;

    if (!list || json_is_null(list))
        return KVS_OK;
    if (!json_is_array(list))
        return bad(ctx, KVS_ERR_TOKENIZER, "added_tokens must be an array, not %s",
                   type_name(list));
    json_array_foreach(list, i, item) {
        char path[64];
        int32_t id;

        snprintf(path, sizeof path, "added_tokens[%zu]", i);
        if (!json_is_object(item))
            return bad(ctx, KVS_ERR_TOKENIZER, "%s must be an object, not %s", path,
                       type_name(item));
        snprintf(path, sizeof path, "added_tokens[%zu].id", i);
        KVS_FORWARD(get_id(ctx, json_object_get(item, "id"), path, &id));
        if ((uint32_t)id > *max_id)
            *max_id = (uint32_t)id;
    }
    return KVS_OK;
}

static kvs_status_e load_added(const load_ctx_t *ctx, const json_t *list)
{
    kvs_tokenizer_t *tok = ctx->tok;
    size_t i;
    json_t *item;

    KVS_FORWARD(kvs_tok_strmap_init(&tok->added_vocab, list ? json_array_size(list) : 0));
    if (!list || json_is_null(list))
        return KVS_OK;
    tok->added = calloc(json_array_size(list) + 1, sizeof *tok->added);
    KVS_RETURN_IF(!tok->added, KVS_ERR_NOMEM, "out of memory for added tokens");

    json_array_foreach(list, i, item) {
        kvs_tok_added_t *a = &tok->added[tok->n_added];
        char path[64];
        const char *content;
        size_t len;
        int special, lstrip, rstrip, single_word, normalized;

        snprintf(path, sizeof path, "added_tokens[%zu]", i);
        KVS_FORWARD(get_id(ctx, json_object_get(item, "id"), path, &a->id));
        KVS_FORWARD(get_string(ctx, item, path, "content", 0, &content, &len));
        if (len == 0)
            return bad(ctx, KVS_ERR_TOKENIZER, "%s.content is empty", path);
        KVS_FORWARD(get_bool(ctx, item, path, "special", 0, &special));
        KVS_FORWARD(get_bool(ctx, item, path, "lstrip", 0, &lstrip));
        KVS_FORWARD(get_bool(ctx, item, path, "rstrip", 0, &rstrip));
        KVS_FORWARD(get_bool(ctx, item, path, "single_word", 0, &single_word));
        KVS_FORWARD(get_bool(ctx, item, path, "normalized", !special, &normalized));
        a->content = dup_bytes(content, len);
        KVS_RETURN_IF(!a->content, KVS_ERR_NOMEM, "out of memory for added tokens");
        a->content_len = len;
        a->pattern = a->content;
        a->len = len;
        a->special = (uint8_t)special;
        a->lstrip = (uint8_t)lstrip;
        a->rstrip = (uint8_t)rstrip;
        a->single_word = (uint8_t)single_word;
        a->normalized = (uint8_t)normalized;
        tok->n_added++;

        /* An added token's string wins over a model token with its id. */
        tok->id_token[a->id] = a->content;
        tok->id_token_len[a->id] = (uint32_t)len;
        tok->id_special[a->id] = (uint8_t)special;
        KVS_FORWARD(kvs_tok_strmap_put(&tok->added_vocab, a->content, len, a->id, NULL));
    }
    return KVS_OK;
}

/* Normalized added tokens are matched against normalized text, so their
** patterns go through the normalizers too. */
static kvs_status_e normalize_added_patterns(const load_ctx_t *ctx)
{
    kvs_tokenizer_t *tok = ctx->tok;

    for (size_t i = 0; i < tok->n_added; i++) {
        kvs_tok_added_t *a = &tok->added[i];
        const char *s;
        size_t len;

        if (!a->normalized || tok->n_normalizers == 0)
            continue;
        KVS_FORWARD(kvs_tok_normalize(tok, a->content, a->content_len, &s, &len));
        if (len == 0)
            return bad(ctx, KVS_ERR_TOKENIZER, "added token \"%.60s\" is empty once normalized",
                       a->content);
        a->pattern = dup_bytes(s, len);
        KVS_RETURN_IF(!a->pattern, KVS_ERR_NOMEM, "out of memory for added tokens");
        a->len = len;
    }
    return KVS_OK;
}

static int compare_added(const void *pa, const void *pb, void *arg)
{
    const kvs_tokenizer_t *tok = arg;
    const kvs_tok_added_t *a = &tok->added[*(const uint32_t *)pa];
    const kvs_tok_added_t *b = &tok->added[*(const uint32_t *)pb];
    unsigned char fa = (unsigned char)a->pattern[0], fb = (unsigned char)b->pattern[0];

    if (fa != fb)
        return fa < fb ? -1 : 1;
    if (a->len != b->len)
        return a->len > b->len ? -1 : 1;
    return *(const uint32_t *)pa < *(const uint32_t *)pb ? -1 : 1;
}

/* Groups the added tokens of each kind by first byte, longest first, so
** matching tries only the tokens that can start at a given byte. */
static kvs_status_e build_buckets(kvs_tokenizer_t *tok)
{
    for (int kind = 0; kind < 2; kind++) {
        uint32_t *items = malloc((tok->n_added + 1) * sizeof *items);
        uint32_t n = 0;

        KVS_RETURN_IF(!items, KVS_ERR_NOMEM, "out of memory for added tokens");
        tok->bucket_items[kind] = items;
        for (uint32_t i = 0; i < tok->n_added; i++) {
            if (tok->added[i].normalized == kind)
                items[n++] = i;
        }
        qsort_r(items, n, sizeof *items, compare_added, tok);

        memset(tok->bucket_start[kind], 0, sizeof tok->bucket_start[kind]);
        for (uint32_t k = 0; k < n; k++)
            tok->bucket_start[kind][(unsigned char)tok->added[items[k]].pattern[0] + 1]++;
        for (int b = 0; b < 256; b++)
            tok->bucket_start[kind][b + 1] += tok->bucket_start[kind][b];
    }
    return KVS_OK;
}

/* ---- post-processor ----------------------------------------------------- */

static kvs_status_e load_template(const load_ctx_t *ctx, const json_t *pp)
{
    kvs_tokenizer_t *tok = ctx->tok;
    const json_t *single = json_object_get(pp, "single");
    const json_t *specials = json_object_get(pp, "special_tokens");
    kvs_tok_ids_t ids = {0};
    kvs_status_e rc = KVS_OK;
    size_t i;
    json_t *item;

    if (!json_is_array(single))
        return bad(ctx, KVS_ERR_TOKENIZER, "post_processor.single must be an array");
    json_array_foreach(single, i, item) {
        const json_t *special = json_object_get(item, "SpecialToken");
        const json_t *seq = json_object_get(item, "Sequence");
        const json_t *name, *entry, *entry_ids;
        size_t k;
        json_t *v;

        if (seq) {
            name = json_object_get(seq, "id");
            if (!json_is_string(name) || strcmp(json_string_value(name), "A")) {
                rc = bad(ctx, KVS_ERR_TOKENIZER,
                         "post_processor.single[%zu].Sequence.id must be \"A\"", i);
                break;
            }
            rc = kvs_tok_ids_push(&ids, KVS_TOK_TEMPLATE_SEQUENCE);
            if (rc != KVS_OK)
                break;
            continue;
        }
        name = json_object_get(special, "id");
        if (!json_is_string(name)) {
            rc = bad(ctx, KVS_ERR_TOKENIZER,
                     "post_processor.single[%zu] must be {\"SpecialToken\": {\"id\": ...}} or "
                     "{\"Sequence\": {\"id\": \"A\"}}",
                     i);
            break;
        }
        entry = json_object_get(specials, json_string_value(name));
        entry_ids = json_object_get(entry, "ids");
        if (!json_is_array(entry_ids)) {
            rc = bad(ctx, KVS_ERR_TOKENIZER,
                     "post_processor.special_tokens has no ids for \"%.60s\", which "
                     "post_processor.single[%zu] uses",
                     json_string_value(name), i);
            break;
        }
        json_array_foreach(entry_ids, k, v) {
            char path[128];
            int32_t id;

            snprintf(path, sizeof path, "post_processor.special_tokens[\"%.40s\"].ids[%zu]",
                     json_string_value(name), k);
            rc = get_id(ctx, v, path, &id);
            if (rc == KVS_OK && ((uint32_t)id >= tok->vocab_size || !tok->id_token[id]))
                rc = bad(ctx, KVS_ERR_TOKENIZER, "%s is id %d, which no token has", path, id);
            if (rc == KVS_OK)
                rc = kvs_tok_ids_push(&ids, id);
            if (rc != KVS_OK)
                break;
        }
        if (rc != KVS_OK)
            break;
    }
    if (rc != KVS_OK) {
        free(ids.data);
        return rc;
    }
    tok->template_ids = ids.data;
    tok->n_template = ids.len;
    return KVS_OK;
}

static kvs_status_e load_post_processor(const load_ctx_t *ctx, const json_t *pp)
{
    static const char supported[] = "TemplateProcessing and ByteLevel";
    const char *type;

    if (!pp || json_is_null(pp))
        return KVS_OK;
    KVS_FORWARD(get_type(ctx, pp, "post_processor", &type));
    if (!strcmp(type, "TemplateProcessing"))
        return load_template(ctx, pp);
    /* ByteLevel post-processing only adjusts offsets, never ids. */
    if (!strcmp(type, "ByteLevel"))
        return KVS_OK;
    return unsupported(ctx, "post_processor", type, supported);
}

/* ---- BOS, EOS and chat template ----------------------------------------- */

/* tokenizer_config.json names special tokens as "<s>" or as an AddedToken
** object {"content": "<s>", ...}. */
static kvs_status_e config_token(const load_ctx_t *ctx, const json_t *config, const char *key,
                                 int32_t *id)
{
    const json_t *v = json_object_get(config, key);

    if (json_is_object(v))
        v = json_object_get(v, "content");
    if (!v || json_is_null(v))
        return KVS_OK;
    if (!json_is_string(v))
        return bad(ctx, KVS_ERR_TOKENIZER, "tokenizer_config.json %s must be a token string",
                   key);
    *id = kvs_tokenizer_token_to_id(ctx->tok, json_string_value(v));
    if (*id < 0)
        return bad(ctx, KVS_ERR_TOKENIZER,
                   "tokenizer_config.json %s \"%.60s\" is not a token of tokenizer.json", key,
                   json_string_value(v));
    return KVS_OK;
}

static void config_id(const kvs_tokenizer_t *tok, const json_t *config, const char *key,
                      int32_t *id)
{
    const json_t *v = json_object_get(config, key);

    if (json_is_array(v))
        v = json_array_get(v, 0);
    if (*id < 0 && json_is_integer(v) && json_integer_value(v) >= 0 &&
        json_integer_value(v) < (json_int_t)tok->vocab_size)
        *id = (int32_t)json_integer_value(v);
}

static json_t *parse_optional(const load_ctx_t *ctx, const char *text, size_t len,
                              const char *name, kvs_status_e *rc)
{
    json_error_t err;
    json_t *doc;

    *rc = KVS_OK;
    if (!text)
        return NULL;
    doc = json_loadb(text, len, 0, &err);
    if (!doc || !json_is_object(doc)) {
        *rc = bad(ctx, KVS_ERR_TOKENIZER, "%s is not a JSON object (line %d, column %d: %s)",
                  name, err.line, err.column, doc ? "not an object" : err.text);
        json_decref(doc);
        return NULL;
    }
    return doc;
}

static kvs_status_e load_special_ids(const load_ctx_t *ctx, const char *tok_config,
                                     size_t tok_config_len, const char *model_config,
                                     size_t model_config_len)
{
    kvs_tokenizer_t *tok = ctx->tok;
    kvs_status_e rc;
    json_t *config;
    const json_t *tmpl;

    tok->bos_id = tok->eos_id = -1;
    config = parse_optional(ctx, tok_config, tok_config_len, "tokenizer_config.json", &rc);
    KVS_FORWARD(rc);
    if (config) {
        rc = config_token(ctx, config, "bos_token", &tok->bos_id);
        if (rc == KVS_OK)
            rc = config_token(ctx, config, "eos_token", &tok->eos_id);
        tmpl = json_object_get(config, "chat_template");
        if (rc == KVS_OK && json_is_string(tmpl)) {
            tok->chat_template = dup_bytes(json_string_value(tmpl), json_string_length(tmpl));
            if (!tok->chat_template)
                rc = kvs_fail(KVS_ERR_NOMEM, "out of memory for the chat template");
        }
        json_decref(config);
        KVS_FORWARD(rc);
    }

    config = parse_optional(ctx, model_config, model_config_len, "config.json", &rc);
    KVS_FORWARD(rc);
    if (config) {
        config_id(tok, config, "bos_token_id", &tok->bos_id);
        config_id(tok, config, "eos_token_id", &tok->eos_id);
        json_decref(config);
    }

    if (tok->bos_id < 0)
        tok->bos_id = kvs_tok_strmap_get(&tok->added_vocab, "<s>", 3);
    if (tok->eos_id < 0)
        tok->eos_id = kvs_tok_strmap_get(&tok->added_vocab, "</s>", 4);
    if (tok->eos_id < 0)
        tok->eos_id = kvs_tok_strmap_get(&tok->added_vocab, "<|endoftext|>", 13);
    return KVS_OK;
}

/* ---- whole file --------------------------------------------------------- */

static void describe(kvs_tokenizer_t *tok)
{
    int sentencepiece = 0;
    const char *family_name;

    for (size_t i = 0; i < tok->n_normalizers; i++) {
        const kvs_tok_normalizer_t *nm = &tok->normalizers[i];

        if (nm->content_len == 3 && !memcmp(nm->content, "\xE2\x96\x81", 3))
            sentencepiece = 1;
    }
    tok->family = KVS_TOKENIZER_OTHER;
    for (size_t i = 0; i < tok->n_pretoks; i++) {
        if (tok->pretoks[i].kind == KVS_TOK_PRETOK_BYTE_LEVEL)
            tok->family = KVS_TOKENIZER_BYTE_LEVEL;
    }
    if (tok->family == KVS_TOKENIZER_OTHER && sentencepiece && tok->byte_fallback)
        tok->family = KVS_TOKENIZER_SENTENCEPIECE;

    family_name = tok->family == KVS_TOKENIZER_BYTE_LEVEL      ? "byte-level BPE"
                  : tok->family == KVS_TOKENIZER_SENTENCEPIECE ? "SentencePiece BPE"
                                                               : "BPE";
    snprintf(tok->name, sizeof tok->name, "%s (%u ids)", family_name, tok->vocab_size);
}

static kvs_status_e check_top_level(const load_ctx_t *ctx, const json_t *root)
{
    static const char *const off[] = {"truncation", "padding"};

    if (!json_is_object(root))
        return bad(ctx, KVS_ERR_TOKENIZER, "the top level must be a JSON object, not %s",
                   type_name(root));
    for (size_t i = 0; i < 2; i++) {
        const json_t *v = json_object_get(root, off[i]);

        if (v && !json_is_null(v))
            return bad(ctx, KVS_ERR_UNSUPPORTED,
                       "%s is set, which kvsim does not apply; set it to null", off[i]);
    }
    return KVS_OK;
}

static kvs_status_e load_all(const load_ctx_t *ctx, const json_t *root, const char *tok_config,
                             size_t tok_config_len, const char *model_config,
                             size_t model_config_len)
{
    kvs_tokenizer_t *tok = ctx->tok;
    uint32_t max_id = 0;

    KVS_FORWARD(check_top_level(ctx, root));
    KVS_FORWARD(load_model(ctx, root, &max_id));
    KVS_FORWARD(scan_added_ids(ctx, json_object_get(root, "added_tokens"), &max_id));

    tok->vocab_size = max_id + 1;
    tok->id_token = calloc(tok->vocab_size, sizeof *tok->id_token);
    tok->model_token = calloc(tok->vocab_size, sizeof *tok->model_token);
    tok->id_token_len = calloc(tok->vocab_size, sizeof *tok->id_token_len);
    tok->id_special = calloc(tok->vocab_size, 1);
    KVS_RETURN_IF(!tok->id_token || !tok->model_token || !tok->id_token_len || !tok->id_special,
                  KVS_ERR_NOMEM,
                  "out of memory for a vocabulary of %u ids", tok->vocab_size);
    KVS_FORWARD(take_vocab_keys(ctx));
    KVS_FORWARD(finish_model(ctx, root));
    KVS_FORWARD(load_added(ctx, json_object_get(root, "added_tokens")));

    KVS_FORWARD(load_normalizer(ctx, json_object_get(root, "normalizer"), "normalizer"));
    KVS_FORWARD(load_pretok(ctx, json_object_get(root, "pre_tokenizer"), "pre_tokenizer"));
    KVS_FORWARD(load_post_processor(ctx, json_object_get(root, "post_processor")));
    KVS_FORWARD(load_decoder(ctx, json_object_get(root, "decoder"), "decoder"));

    KVS_FORWARD(normalize_added_patterns(ctx));
    KVS_FORWARD(build_buckets(tok));
    KVS_FORWARD(load_special_ids(ctx, tok_config, tok_config_len, model_config, model_config_len));
    KVS_FORWARD(kvs_tok_cache_init(&tok->cache));
    describe(tok);
    return KVS_OK;
}

static kvs_status_e load_impl(const char *json, size_t json_len, const char *tok_config,
                              size_t tok_config_len, const char *model_config,
                              size_t model_config_len, const char *origin, kvs_tokenizer_t **out)
{
    kvs_tokenizer_t *tok = calloc(1, sizeof *tok);
    load_ctx_t ctx = {tok, origin};
    json_error_t err;
    json_t *root;
    kvs_status_e rc;

    *out = NULL;
    KVS_RETURN_IF(!tok, KVS_ERR_NOMEM, "out of memory for a tokenizer");
    snprintf(tok->origin, sizeof tok->origin, "%s", origin);
    kvs_tok_byte_chars();

    root = json_loadb(json, json_len, JSON_ALLOW_NUL, &err);
    if (!root) {
        kvs_tokenizer_free(tok);
        return bad(&ctx, KVS_ERR_TOKENIZER,
                   "invalid JSON at line %d, column %d: %s; get an intact copy of the file",
                   err.line, err.column, err.text);
    }
    rc = load_all(&ctx, root, tok_config, tok_config_len, model_config, model_config_len);

    /* Vocabulary keys still point into the document if loading stopped
    ** before take_vocab_keys. That is harmless: a failed load only frees
    ** the map and never reads it. */
    json_decref(root);
    if (rc != KVS_OK) {
        kvs_tokenizer_free(tok);
        return rc;
    }
    *out = tok;
    return KVS_OK;
}

kvs_status_e kvs_tokenizer_load_json(const char *json, size_t json_len, const char *config_json,
                                     size_t config_len, const char *origin, kvs_tokenizer_t **out)
{
    return load_impl(json, json_len, config_json, config_len, NULL, 0,
                     origin ? origin : "tokenizer.json", out);
}

static kvs_status_e read_optional(const char *dir, const char *name, char **data, size_t *size)
{
    char path[4096];
    struct stat st;

    *data = NULL;
    *size = 0;
    KVS_FORWARD(kvs_path_join(path, sizeof path, dir, name));
    if (stat(path, &st) != 0)
        return KVS_OK;
    return kvs_read_file(path, data, size);
}

kvs_status_e kvs_tokenizer_load(const char *model_dir, kvs_tokenizer_t **out)
{
    char path[4096];
    char *json = NULL, *tok_config = NULL, *model_config = NULL;
    size_t json_len, tok_config_len, model_config_len;
    struct stat st;
    kvs_status_e rc;

    *out = NULL;
    KVS_FORWARD(kvs_path_join(path, sizeof path, model_dir, "tokenizer.json"));
    KVS_RETURN_IF(stat(path, &st) != 0, KVS_ERR_NOT_FOUND,
                  "%s not found; a model folder needs the tokenizer.json of its Hugging Face "
                  "repository",
                  path);
    KVS_FORWARD(kvs_read_file(path, &json, &json_len));
    rc = read_optional(model_dir, "tokenizer_config.json", &tok_config, &tok_config_len);
    if (rc == KVS_OK)
        rc = read_optional(model_dir, "config.json", &model_config, &model_config_len);
    if (rc == KVS_OK)
        rc = load_impl(json, json_len, tok_config, tok_config_len, model_config, model_config_len,
                       path, out);
    free(json);
    free(tok_config);
    free(model_config);
    return rc;
}
