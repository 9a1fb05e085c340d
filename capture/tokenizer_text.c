/* tokenizer_text.c: growable buffers, UTF-8 handling and the Unicode
** classes that the pre-tokenizers and added-token matching test. */
#include "tokenizer_internal.h"

#include <utf8proc.h>

#include <stdlib.h>
#include <string.h>

kvs_status_e kvs_tok_buf_reserve(kvs_tok_buf_t *b, size_t extra)
{
    size_t need = b->len + extra + 1;
    size_t cap = b->cap ? b->cap : 64;
    char *data;

    if (need <= b->cap)
        return KVS_OK;
    while (cap < need)
        cap *= 2;
    data = realloc(b->data, cap);
    KVS_RETURN_IF(!data, KVS_ERR_NOMEM, "out of memory growing a tokenizer buffer to %zu bytes",
                  cap);
    b->data = data;
    b->cap = cap;
    return KVS_OK;
}

/* Keeps the buffer NUL-terminated, so callers may hand it out as a string. */
kvs_status_e kvs_tok_buf_append(kvs_tok_buf_t *b, const void *data, size_t n)
{
    KVS_FORWARD(kvs_tok_buf_reserve(b, n));
    if (n)
        memcpy(b->data + b->len, data, n);
    b->len += n;
    b->data[b->len] = '\0';
    return KVS_OK;
}

kvs_status_e kvs_tok_ids_append(kvs_tok_ids_t *v, const int32_t *ids, size_t n)
{
    if (v->len + n > v->cap) {
        size_t cap = v->cap ? v->cap : 64;
        int32_t *data;

        while (cap < v->len + n)
            cap *= 2;
        data = realloc(v->data, cap * sizeof *data);
        KVS_RETURN_IF(!data, KVS_ERR_NOMEM, "out of memory growing a token id list to %zu ids",
                      cap);
        v->data = data;
        v->cap = cap;
    }
    if (n)
        memcpy(v->data + v->len, ids, n * sizeof *ids);
    v->len += n;
    return KVS_OK;
}

kvs_status_e kvs_tok_ids_push(kvs_tok_ids_t *v, int32_t id)
{
    if (v->len < v->cap) {
        v->data[v->len++] = id;
        return KVS_OK;
    }
    return kvs_tok_ids_append(v, &id, 1);
}

/* Well-formed sequences per Unicode Table 3-7: the second byte's range
** depends on the first byte, which excludes overlong forms, surrogates and
** code points above U+10FFFF. */
size_t kvs_utf8_valid_len(const unsigned char *s, size_t avail)
{
    unsigned char c = s[0];
    unsigned char lo = 0x80, hi = 0xBF;
    size_t n;

    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF)
        n = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        n = 3;
        if (c == 0xE0)
            lo = 0xA0;
        else if (c == 0xED)
            hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4;
        if (c == 0xF0)
            lo = 0x90;
        else if (c == 0xF4)
            hi = 0x8F;
    } else
        return 0;

    if (avail < 2 || s[1] < lo || s[1] > hi)
        return 0;
    for (size_t k = 2; k < n; k++) {
        if (k >= avail || s[k] < 0x80 || s[k] > 0xBF)
            return 0;
    }
    return n;
}

int32_t kvs_utf8_next(const char *s, size_t *i)
{
    const unsigned char *p = (const unsigned char *)s + *i;
    int32_t cp;

    if (p[0] < 0x80) {
        *i += 1;
        return p[0];
    }
    if (p[0] < 0xE0) {
        *i += 2;
        return ((p[0] & 0x1F) << 6) | (p[1] & 0x3F);
    }
    if (p[0] < 0xF0) {
        *i += 3;
        return ((p[0] & 0x0F) << 12) | ((p[1] & 0x3F) << 6) | (p[2] & 0x3F);
    }
    cp = ((p[0] & 0x07) << 18) | ((p[1] & 0x3F) << 12) | ((p[2] & 0x3F) << 6) | (p[3] & 0x3F);
    *i += 4;
    return cp;
}

size_t kvs_utf8_encode(int32_t cp, char *out)
{
    unsigned char *o = (unsigned char *)out;

    if (cp < 0x80) {
        o[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (unsigned char)(0xC0 | (cp >> 6));
        o[1] = (unsigned char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (unsigned char)(0xE0 | (cp >> 12));
        o[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (unsigned char)(0xF0 | (cp >> 18));
    o[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Returns the length of the maximal subpart at s: the longest prefix that
** could still start a well-formed sequence, and at least one byte. */
static size_t maximal_subpart(const unsigned char *s, size_t avail)
{
    unsigned char c = s[0];
    unsigned char lo = 0x80, hi = 0xBF;
    size_t n, k;

    if (c >= 0xC2 && c <= 0xDF)
        n = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        n = 3;
        lo = c == 0xE0 ? 0xA0 : 0x80;
        hi = c == 0xED ? 0x9F : 0xBF;
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4;
        lo = c == 0xF0 ? 0x90 : 0x80;
        hi = c == 0xF4 ? 0x8F : 0xBF;
    } else
        return 1;

    if (avail < 2 || s[1] < lo || s[1] > hi)
        return 1;
    for (k = 2; k < n && k < avail; k++) {
        if (s[k] < 0x80 || s[k] > 0xBF)
            break;
    }
    return k;
}

kvs_status_e kvs_utf8_append_lossy(kvs_tok_buf_t *dst, const char *src, size_t len)
{
    static const char replacement[3] = {(char)0xEF, (char)0xBF, (char)0xBD};
    const unsigned char *s = (const unsigned char *)src;
    size_t i = 0, run = 0;

    KVS_FORWARD(kvs_tok_buf_reserve(dst, len));
    while (i < len) {
        size_t n = kvs_utf8_valid_len(s + i, len - i);

        if (n) {
            i += n;
            continue;
        }
        KVS_FORWARD(kvs_tok_buf_append(dst, src + run, i - run));
        KVS_FORWARD(kvs_tok_buf_append(dst, replacement, sizeof replacement));
        i += maximal_subpart(s + i, len - i);
        run = i;
    }
    return kvs_tok_buf_append(dst, src + run, len - run);
}

int kvs_tok_is_whitespace(int32_t cp)
{
    if (cp <= 0x20)
        return cp == 0x20 || (cp >= 0x09 && cp <= 0x0D);
    if (cp < 0x85)
        return 0;
    return cp == 0x85 || cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) ||
           cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

int kvs_tok_is_numeric(int32_t cp)
{
    utf8proc_category_t cat;

    if (cp < 0x80)
        return cp >= '0' && cp <= '9';
    cat = utf8proc_category(cp);
    return cat == UTF8PROC_CATEGORY_ND || cat == UTF8PROC_CATEGORY_NL ||
           cat == UTF8PROC_CATEGORY_NO;
}

/* NOTE: Rust's is_alphanumeric uses the Alphabetic property, which also
** covers some combining marks (Other_Alphabetic). The letter categories
** used here differ from it on those marks. */
int kvs_tok_is_word_char(int32_t cp)
{
    utf8proc_category_t cat;

    if (cp < 0x80)
        return (cp >= '0' && cp <= '9') || (cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z') ||
               cp == '_';
    cat = utf8proc_category(cp);
    return (cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_LO) ||
           cat == UTF8PROC_CATEGORY_ND || cat == UTF8PROC_CATEGORY_NL ||
           cat == UTF8PROC_CATEGORY_NO;
}
