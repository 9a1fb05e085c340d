/* tokenizer_pretok.c: everything between the raw text and the BPE model:
** added-token matching, normalizers and pre-tokenizers (Digits, ByteLevel). */
#include "tokenizer_internal.h"

#include <stdio.h>
#include <string.h>

/* ---- ByteLevel alphabet ------------------------------------------------- */

/* GPT-2's byte-to-character table keeps whitespace and control bytes out
** of BPE tokens. The printable Latin-1 bytes '!'..'~', 0xA1..0xAC and
** 0xAE..0xFF map to themselves, and the other 68 bytes map to U+0100,
** U+0101, ... in byte order. */
static kvs_tok_byte_char_t byte_chars[256];
static int16_t char_bytes[256 + 68];
static int byte_tables_ready;

static void build_byte_tables(void)
{
    int next = 256;

    for (int b = 0; b < 256; b++) {
        int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
        int cp = printable ? b : next++;

        byte_chars[b].len = (uint8_t)kvs_utf8_encode(cp, byte_chars[b].utf8);
        char_bytes[cp] = (int16_t)b;
    }
    byte_tables_ready = 1;
}

const kvs_tok_byte_char_t *kvs_tok_byte_chars(void)
{
    /* Written once with the same values by whichever thread gets here
    ** first; loading calls it before any encode can run. */
    if (!byte_tables_ready)
        build_byte_tables();
    return byte_chars;
}

int kvs_tok_byte_of_char(int32_t cp)
{
    kvs_tok_byte_chars();
    if (cp < 0 || cp >= 256 + 68)
        return -1;
    if (cp < 256) {
        int printable = (cp >= '!' && cp <= '~') || (cp >= 0xA1 && cp <= 0xAC) || cp >= 0xAE;

        return printable ? cp : -1;
    }
    return char_bytes[cp];
}

/* ---- GPT-2 split pattern ------------------------------------------------ */

/* The GPT-2 pattern, 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+|
** ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+, with \s spelled out as the White_Space
** property. That is the set Oniguruma's \s matches in the reference
** library. PCRE2's \s matches only ASCII whitespace without UCP, and also
** U+180E with it. */
#define WS "\\t\\n\\x{0B}\\f\\r \\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}" \
           "\\x{202F}\\x{205F}\\x{3000}"
static const char split_pattern[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^" WS "\\p{L}\\p{N}]+|[" WS "]+(?![^" WS
    "])|[" WS "]+";

kvs_status_e kvs_tok_compile_split(kvs_tokenizer_t *tok)
{
    int err;
    PCRE2_SIZE offset;

    tok->split_re = pcre2_compile((PCRE2_SPTR)split_pattern, PCRE2_ZERO_TERMINATED, PCRE2_UTF,
                                  &err, &offset, NULL);
    if (!tok->split_re) {
        PCRE2_UCHAR msg[256];

        pcre2_get_error_message(err, msg, sizeof msg);
        return kvs_fail(KVS_ERR_INTERNAL, "cannot compile the GPT-2 split pattern at offset %zu: %s",
                        (size_t)offset, (const char *)msg);
    }

    /* JIT is an optimization only: the interpreter gives the same matches. */
    (void)pcre2_jit_compile(tok->split_re, PCRE2_JIT_COMPLETE);
    tok->split_match = pcre2_match_data_create_from_pattern(tok->split_re, NULL);
    KVS_RETURN_IF(!tok->split_match, KVS_ERR_NOMEM, "out of memory for regex match data");
    return KVS_OK;
}

/* ---- added tokens ------------------------------------------------------- */

static int32_t last_char_before(const char *s, size_t pos)
{
    size_t i = pos;

    if (pos == 0)
        return -1;
    do
        i--;
    while (i > 0 && ((unsigned char)s[i] & 0xC0) == 0x80);
    return kvs_utf8_next(s, &i);
}

/* Finds the longest added token of one kind starting at pos, or -1. */
static long match_at(const kvs_tokenizer_t *tok, int kind, const char *s, size_t len, size_t pos)
{
    unsigned char first = (unsigned char)s[pos];
    const uint32_t *items = tok->bucket_items[kind];

    for (uint32_t k = tok->bucket_start[kind][first]; k < tok->bucket_start[kind][first + 1];
         k++) {
        const kvs_tok_added_t *a = &tok->added[items[k]];

        if (a->len <= len - pos && !memcmp(s + pos, a->pattern, a->len))
            return (long)items[k];
    }
    return -1;
}

/* A single_word token counts only with no word character on either side. */
static int is_single_word_ok(const char *s, size_t len, size_t start, size_t stop)
{
    int32_t before = last_char_before(s, start);
    size_t i = stop;

    if (before >= 0 && kvs_tok_is_word_char(before))
        return 0;
    if (stop < len && kvs_tok_is_word_char(kvs_utf8_next(s, &i)))
        return 0;
    return 1;
}

kvs_status_e kvs_tok_split_added(kvs_tokenizer_t *tok, int kind, const char *s, size_t len,
                                 kvs_tok_text_fn on_text, kvs_tok_ids_t *out)
{
    size_t text_start = 0;  /* start of the stretch not yet handed to on_text */
    size_t pos = 0;

    if (tok->bucket_start[kind][256] == 0)
        return on_text(tok, s, len, out);

    while (pos < len) {
        long index = match_at(tok, kind, s, len, pos);
        const kvs_tok_added_t *a;
        size_t start = pos, stop;

        if (index < 0) {
            pos++;
            continue;
        }
        a = &tok->added[index];
        stop = pos + a->len;
        if (a->single_word && !is_single_word_ok(s, len, start, stop)) {
            /* The rejected match still consumes its text, as in the
            ** reference library's non-overlapping match iteration. */
            pos = stop;
            continue;
        }

        /* lstrip and rstrip make the token swallow the whitespace beside
        ** it, but never text that an earlier token already took. */
        if (a->lstrip) {
            while (start > text_start) {
                size_t prev = start;
                int32_t cp = last_char_before(s, start);

                if (!kvs_tok_is_whitespace(cp))
                    break;
                do
                    prev--;
                while (prev > 0 && ((unsigned char)s[prev] & 0xC0) == 0x80);
                start = prev;
            }
        }
        if (a->rstrip) {
            while (stop < len) {
                size_t next = stop;

                if (!kvs_tok_is_whitespace(kvs_utf8_next(s, &next)))
                    break;
                stop = next;
            }
        }

        if (start > text_start)
            KVS_FORWARD(on_text(tok, s + text_start, start - text_start, out));
        KVS_FORWARD(kvs_tok_ids_push(out, a->id));
        text_start = pos = stop;
    }
    if (len > text_start)
        KVS_FORWARD(on_text(tok, s + text_start, len - text_start, out));
    return KVS_OK;
}

/* ---- pre-tokenizers ----------------------------------------------------- */

static kvs_status_e pretok_run(kvs_tokenizer_t *tok, size_t step, const char *s, size_t len,
                               kvs_tok_ids_t *out);

/* Digits: each numeric character alone (individual_digits) or each run of
** them as one piece; the text between is a piece of its own. */
static kvs_status_e split_digits(kvs_tokenizer_t *tok, size_t step, const char *s, size_t len,
                                 kvs_tok_ids_t *out)
{
    int individual = tok->pretoks[step].individual_digits;
    size_t piece = 0, i = 0;
    int piece_numeric = 0;

    while (i < len) {
        size_t start = i;
        int numeric = kvs_tok_is_numeric(kvs_utf8_next(s, &i));

        if (start > piece && (numeric != piece_numeric || (numeric && individual))) {
            KVS_FORWARD(pretok_run(tok, step + 1, s + piece, start - piece, out));
            piece = start;
        }
        piece_numeric = numeric;
    }
    return pretok_run(tok, step + 1, s + piece, len - piece, out);
}

/* Maps one piece to the ByteLevel alphabet and hands it on. */
static kvs_status_e emit_byte_level(kvs_tokenizer_t *tok, size_t step, const char *s, size_t len,
                                    kvs_tok_ids_t *out)
{
    const kvs_tok_byte_char_t *table = kvs_tok_byte_chars();
    kvs_tok_buf_t *buf = &tok->step_buf[step];
    char *o;

    buf->len = 0;
    KVS_FORWARD(kvs_tok_buf_reserve(buf, 2 * len));
    o = buf->data;
    for (size_t i = 0; i < len; i++) {
        const kvs_tok_byte_char_t *c = &table[(unsigned char)s[i]];

        o[0] = c->utf8[0];
        o[1] = c->utf8[1];
        o += c->len;
    }
    buf->len = (size_t)(o - buf->data);
    return pretok_run(tok, step + 1, buf->data, buf->len, out);
}

static kvs_status_e split_byte_level(kvs_tokenizer_t *tok, size_t step, const char *s, size_t len,
                                     kvs_tok_ids_t *out)
{
    const kvs_tok_pretok_t *p = &tok->pretoks[step];
    size_t pos = 0;

    if (p->add_prefix_space && s[0] != ' ') {
        kvs_tok_buf_t *prefixed = &tok->prefix_buf[step];

        prefixed->len = 0;
        KVS_FORWARD(kvs_tok_buf_append(prefixed, " ", 1));
        KVS_FORWARD(kvs_tok_buf_append(prefixed, s, len));
        s = prefixed->data;
        len = prefixed->len;
    }
    if (!p->use_regex)
        return emit_byte_level(tok, step, s, len, out);

    while (pos < len) {
        int rc = pcre2_match(tok->split_re, (PCRE2_SPTR)s, len, pos, PCRE2_NO_UTF_CHECK,
                             tok->split_match, NULL);
        PCRE2_SIZE *ov;
        size_t start, stop;

        if (rc == PCRE2_ERROR_NOMATCH)
            break;
        if (rc < 0) {
            PCRE2_UCHAR msg[256];

            pcre2_get_error_message(rc, msg, sizeof msg);
            return kvs_fail(KVS_ERR_INTERNAL, "GPT-2 split pattern failed at byte %zu: %s", pos,
                            (const char *)msg);
        }
        ov = pcre2_get_ovector_pointer(tok->split_match);
        start = ov[0];
        stop = ov[1];

        /* Text the pattern skipped is a piece too (Isolated splitting). */
        if (start > pos)
            KVS_FORWARD(emit_byte_level(tok, step, s + pos, start - pos, out));
        if (stop == start) {
            /* The pattern cannot match empty text; advance one character
            ** anyway, so a future pattern change cannot loop forever. */
            size_t next = start;

            if (next >= len)
                break;
            kvs_utf8_next(s, &next);
            KVS_FORWARD(emit_byte_level(tok, step, s + start, next - start, out));
            stop = next;
        } else
            KVS_FORWARD(emit_byte_level(tok, step, s + start, stop - start, out));
        pos = stop;
    }
    if (pos < len)
        KVS_FORWARD(emit_byte_level(tok, step, s + pos, len - pos, out));
    return KVS_OK;
}

/* Runs pre-tokenizer `step` on one piece; past the last one, the piece is a
** pre-token for BPE. Empty pieces are dropped, as the reference library
** drops empty splits. */
static kvs_status_e pretok_run(kvs_tokenizer_t *tok, size_t step, const char *s, size_t len,
                               kvs_tok_ids_t *out)
{
    if (len == 0)
        return KVS_OK;
    if (step == tok->n_pretoks)
        return kvs_tok_bpe_word(tok, s, len, out);
    switch (tok->pretoks[step].kind) {
    case KVS_TOK_PRETOK_DIGITS:
        return split_digits(tok, step, s, len, out);
    case KVS_TOK_PRETOK_BYTE_LEVEL:
        return split_byte_level(tok, step, s, len, out);
    default:
        return kvs_fail(KVS_ERR_INTERNAL, "pre-tokenizer kind %d has no implementation",
                        (int)tok->pretoks[step].kind);
    }
}

static kvs_status_e pretok_start(kvs_tokenizer_t *tok, const char *s, size_t len,
                                 kvs_tok_ids_t *out)
{
    return pretok_run(tok, 0, s, len, out);
}

/* ---- normalizers -------------------------------------------------------- */

static kvs_status_e replace_all(kvs_tok_buf_t *dst, const char *s, size_t len, const char *pattern,
                                size_t pattern_len, const char *content, size_t content_len)
{
    size_t i = 0, run = 0;

    while (i + pattern_len <= len) {
        if (!memcmp(s + i, pattern, pattern_len)) {
            KVS_FORWARD(kvs_tok_buf_append(dst, s + run, i - run));
            KVS_FORWARD(kvs_tok_buf_append(dst, content, content_len));
            i += pattern_len;
            run = i;
        } else
            i++;
    }
    return kvs_tok_buf_append(dst, s + run, len - run);
}

kvs_status_e kvs_tok_normalize(kvs_tokenizer_t *tok, const char *s, size_t len, const char **out,
                               size_t *out_len)
{
    int which = 0;

    /* Each normalizer writes the other scratch buffer than it reads. */
    for (size_t k = 0; k < tok->n_normalizers; k++) {
        const kvs_tok_normalizer_t *nm = &tok->normalizers[k];
        kvs_tok_buf_t *dst = &tok->norm_buf[which];

        dst->len = 0;
        if (nm->kind == KVS_TOK_NORM_PREPEND) {
            if (len > 0)
                KVS_FORWARD(kvs_tok_buf_append(dst, nm->content, nm->content_len));
            KVS_FORWARD(kvs_tok_buf_append(dst, s, len));
        } else {
            KVS_FORWARD(replace_all(dst, s, len, nm->pattern, nm->pattern_len, nm->content,
                                    nm->content_len));
        }
        s = dst->data;
        len = dst->len;
        which ^= 1;
    }
    *out = s;
    *out_len = len;
    return KVS_OK;
}

kvs_status_e kvs_tok_encode_piece(kvs_tokenizer_t *tok, const char *s, size_t len,
                                  kvs_tok_ids_t *out)
{
    const char *normalized;
    size_t normalized_len;

    KVS_FORWARD(kvs_tok_normalize(tok, s, len, &normalized, &normalized_len));
    return kvs_tok_split_added(tok, 1, normalized, normalized_len, pretok_start, out);
}
