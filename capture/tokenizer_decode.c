/* tokenizer_decode.c: ids back to text through the decoder chain.
**
** Decoders work on a list of token strings, each turning one list into the
** next, and the result is their concatenation: the model of the reference
** library's Decoder::decode_chain. */
#include "tokenizer_internal.h"

#include <stdlib.h>
#include <string.h>

typedef struct strlist {
    kvs_tok_buf_t bytes;
    size_t *start;
    size_t *len;
    size_t n;
    size_t cap;
} strlist_t;

static void strlist_free(strlist_t *l)
{
    free(l->bytes.data);
    free(l->start);
    free(l->len);
    memset(l, 0, sizeof *l);
}

static void strlist_reset(strlist_t *l)
{
    l->bytes.len = 0;
    l->n = 0;
}

/* Starts a new empty item; append its bytes with strlist_extend. */
static kvs_status_e strlist_open(strlist_t *l)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 64;
        size_t *start = realloc(l->start, cap * sizeof *start);
        size_t *len;

        KVS_RETURN_IF(!start, KVS_ERR_NOMEM, "out of memory decoding %zu tokens", cap);
        l->start = start;
        len = realloc(l->len, cap * sizeof *len);
        KVS_RETURN_IF(!len, KVS_ERR_NOMEM, "out of memory decoding %zu tokens", cap);
        l->len = len;
        l->cap = cap;
    }
    /* Reserving also allocates, so item() never offsets a NULL pointer. */
    KVS_FORWARD(kvs_tok_buf_reserve(&l->bytes, 0));
    l->start[l->n] = l->bytes.len;
    l->len[l->n] = 0;
    l->n++;
    return KVS_OK;
}

static kvs_status_e strlist_extend(strlist_t *l, const char *s, size_t len)
{
    KVS_FORWARD(kvs_tok_buf_append(&l->bytes, s, len));
    l->len[l->n - 1] += len;
    return KVS_OK;
}

static kvs_status_e strlist_push(strlist_t *l, const char *s, size_t len)
{
    KVS_FORWARD(strlist_open(l));
    return strlist_extend(l, s, len);
}

static const char *item(const strlist_t *l, size_t i)
{
    return l->bytes.data + l->start[i];
}

/* ---- decoders ----------------------------------------------------------- */

/* Maps each token's characters back to bytes; a token with a character
** outside the ByteLevel alphabet keeps its own UTF-8 bytes. The joined
** bytes become one string with invalid sequences replaced by U+FFFD. */
static kvs_status_e decode_byte_level(const strlist_t *in, strlist_t *out)
{
    kvs_tok_buf_t raw = {0};
    kvs_status_e rc = KVS_OK;

    for (size_t t = 0; t < in->n && rc == KVS_OK; t++) {
        const char *s = item(in, t);
        size_t len = in->len[t], i = 0, mark = raw.len;

        while (i < len) {
            int byte = kvs_tok_byte_of_char(kvs_utf8_next(s, &i));
            unsigned char b = (unsigned char)byte;

            if (byte < 0) {
                raw.len = mark;
                rc = kvs_tok_buf_append(&raw, s, len);
                break;
            }
            rc = kvs_tok_buf_append(&raw, &b, 1);
            if (rc != KVS_OK)
                break;
        }
    }
    if (rc == KVS_OK)
        rc = strlist_open(out);
    if (rc == KVS_OK) {
        size_t before = out->bytes.len;

        rc = kvs_utf8_append_lossy(&out->bytes, raw.data ? raw.data : "", raw.len);
        out->len[out->n - 1] = out->bytes.len - before;
    }
    free(raw.data);
    return rc;
}

static kvs_status_e decode_replace(const kvs_tok_decoder_t *d, const strlist_t *in, strlist_t *out)
{
    for (size_t t = 0; t < in->n; t++) {
        const char *s = item(in, t);
        size_t len = in->len[t], i = 0, run = 0;

        KVS_FORWARD(strlist_open(out));
        while (i + d->pattern_len <= len) {
            if (!memcmp(s + i, d->pattern, d->pattern_len)) {
                KVS_FORWARD(strlist_extend(out, s + run, i - run));
                KVS_FORWARD(strlist_extend(out, d->content, d->content_len));
                i += d->pattern_len;
                run = i;
            } else
                i++;
        }
        KVS_FORWARD(strlist_extend(out, s + run, len - run));
    }
    return KVS_OK;
}

static int hex_digit(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Parses "<0xNN>" into its byte value, or returns -1. A '+' first digit is
** accepted because Rust's u8::from_str_radix, which the reference library
** uses here, accepts a leading plus sign. */
static int byte_piece(const char *s, size_t len)
{
    int hi, lo;

    if (len != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>')
        return -1;
    lo = hex_digit(s[4]);
    if (s[3] == '+')
        return lo;
    hi = hex_digit(s[3]);
    if (hi < 0 || lo < 0)
        return -1;
    return hi * 16 + lo;
}

/* A run of byte pieces becomes their UTF-8 text when the bytes are valid
** UTF-8, else one U+FFFD per byte. */
static kvs_status_e flush_bytes(kvs_tok_buf_t *pending, strlist_t *out)
{
    static const char replacement[3] = {(char)0xEF, (char)0xBF, (char)0xBD};
    const unsigned char *s = (const unsigned char *)pending->data;
    size_t i = 0, n;

    if (pending->len == 0)
        return KVS_OK;
    while (i < pending->len && (n = kvs_utf8_valid_len(s + i, pending->len - i)) != 0)
        i += n;
    if (i == pending->len)
        KVS_FORWARD(strlist_push(out, pending->data, pending->len));
    else {
        for (size_t k = 0; k < pending->len; k++)
            KVS_FORWARD(strlist_push(out, replacement, sizeof replacement));
    }
    pending->len = 0;
    return KVS_OK;
}

static kvs_status_e decode_byte_fallback(const strlist_t *in, strlist_t *out)
{
    kvs_tok_buf_t pending = {0};
    kvs_status_e rc = KVS_OK;

    for (size_t t = 0; t < in->n && rc == KVS_OK; t++) {
        int byte = byte_piece(item(in, t), in->len[t]);

        if (byte >= 0) {
            unsigned char b = (unsigned char)byte;

            rc = kvs_tok_buf_append(&pending, &b, 1);
            continue;
        }
        rc = flush_bytes(&pending, out);
        if (rc == KVS_OK)
            rc = strlist_push(out, item(in, t), in->len[t]);
    }
    if (rc == KVS_OK)
        rc = flush_bytes(&pending, out);
    free(pending.data);
    return rc;
}

static kvs_status_e decode_fuse(const strlist_t *in, strlist_t *out)
{
    KVS_FORWARD(strlist_open(out));
    for (size_t t = 0; t < in->n; t++)
        KVS_FORWARD(strlist_extend(out, item(in, t), in->len[t]));
    return KVS_OK;
}

/* Removes up to d->start copies of the strip character from the start of
** each token and up to d->stop from its end. */
static kvs_status_e decode_strip(const kvs_tok_decoder_t *d, const strlist_t *in, strlist_t *out)
{
    for (size_t t = 0; t < in->n; t++) {
        const char *s = item(in, t);
        size_t begin = 0, end = in->len[t], c = d->content_len;

        for (uint32_t k = 0; k < d->start; k++) {
            if (end - begin < c || memcmp(s + begin, d->content, c) != 0)
                break;
            begin += c;
        }
        for (uint32_t k = 0; k < d->stop; k++) {
            if (end - begin < c || memcmp(s + end - c, d->content, c) != 0)
                break;
            end -= c;
        }
        KVS_FORWARD(strlist_push(out, s + begin, end - begin));
    }
    return KVS_OK;
}

static kvs_status_e run_decoder(const kvs_tok_decoder_t *d, const strlist_t *in, strlist_t *out)
{
    switch (d->kind) {
    case KVS_TOK_DEC_BYTE_LEVEL:
        return decode_byte_level(in, out);
    case KVS_TOK_DEC_REPLACE:
        return decode_replace(d, in, out);
    case KVS_TOK_DEC_BYTE_FALLBACK:
        return decode_byte_fallback(in, out);
    case KVS_TOK_DEC_FUSE:
        return decode_fuse(in, out);
    case KVS_TOK_DEC_STRIP:
        return decode_strip(d, in, out);
    default:
        return kvs_fail(KVS_ERR_INTERNAL, "decoder kind %d has no implementation", (int)d->kind);
    }
}

/* ---- entry point -------------------------------------------------------- */

static kvs_status_e collect_tokens(const kvs_tokenizer_t *tok, const int32_t *ids, size_t n,
                                   int skip_special, strlist_t *list)
{
    for (size_t i = 0; i < n; i++) {
        int32_t id = ids[i];

        KVS_RETURN_IF(id < 0 || (uint32_t)id >= tok->vocab_size || !tok->id_token[id],
                      KVS_ERR_TOKEN,
                      "token id %d at position %zu is not in the vocabulary of %s (ids 0..%u); "
                      "pass ids that this tokenizer produced",
                      id, i, tok->origin, tok->vocab_size - 1);
        if (skip_special && tok->id_special[id])
            continue;
        KVS_FORWARD(strlist_push(list, tok->id_token[id], tok->id_token_len[id]));
    }
    return KVS_OK;
}

static kvs_status_e decode_list(const kvs_tokenizer_t *tok, strlist_t *a, strlist_t *b,
                                kvs_tok_buf_t *text)
{
    if (!tok->has_decoder) {
        /* Without a decoder the reference library joins tokens with spaces. */
        for (size_t t = 0; t < a->n; t++) {
            if (t)
                KVS_FORWARD(kvs_tok_buf_append(text, " ", 1));
            KVS_FORWARD(kvs_tok_buf_append(text, item(a, t), a->len[t]));
        }
        return kvs_tok_buf_append(text, "", 0);
    }

    for (size_t k = 0; k < tok->n_decoders; k++) {
        strlist_t swap;

        strlist_reset(b);
        KVS_FORWARD(run_decoder(&tok->decoders[k], a, b));
        swap = *a;
        *a = *b;
        *b = swap;
    }
    for (size_t t = 0; t < a->n; t++)
        KVS_FORWARD(kvs_tok_buf_append(text, item(a, t), a->len[t]));
    return kvs_tok_buf_append(text, "", 0);
}

kvs_status_e kvs_tokenizer_decode(const kvs_tokenizer_t *tok, const int32_t *ids, size_t n,
                                  int skip_special, char **text, size_t *len)
{
    strlist_t a = {0}, b = {0};
    kvs_tok_buf_t out = {0};
    kvs_status_e rc;

    *text = NULL;
    *len = 0;
    rc = collect_tokens(tok, ids, n, skip_special, &a);
    if (rc == KVS_OK)
        rc = decode_list(tok, &a, &b, &out);
    strlist_free(&a);
    strlist_free(&b);
    if (rc != KVS_OK) {
        free(out.data);
        return rc;
    }
    *text = out.data;
    *len = out.len;
    return KVS_OK;
}
