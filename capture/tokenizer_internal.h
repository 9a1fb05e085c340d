/*
** tokenizer_internal.h: the tokenizer handle and the helpers that its
** files share (loading, pre-tokenization, BPE, decoding, chat). Not part of
** the public interface.
*/
#ifndef KVS_TOKENIZER_INTERNAL_H
#define KVS_TOKENIZER_INTERNAL_H

#include "tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <stddef.h>
#include <stdint.h>

/* ---- growable arrays ---------------------------------------------------- */

typedef struct kvs_tok_buf {
    char *data;
    size_t len;
    size_t cap;
} kvs_tok_buf_t;

typedef struct kvs_tok_ids {
    int32_t *data;
    size_t len;
    size_t cap;
} kvs_tok_ids_t;

kvs_status_e kvs_tok_buf_reserve(kvs_tok_buf_t *b, size_t extra);
kvs_status_e kvs_tok_buf_append(kvs_tok_buf_t *b, const void *data, size_t n);
kvs_status_e kvs_tok_ids_push(kvs_tok_ids_t *v, int32_t id);
kvs_status_e kvs_tok_ids_append(kvs_tok_ids_t *v, const int32_t *ids, size_t n);

/* ---- UTF-8 and Unicode classes ------------------------------------------ */

/* Length of the well-formed UTF-8 sequence at s (Unicode Table 3-7), or 0
** when the bytes at s do not start one. */
size_t kvs_utf8_valid_len(const unsigned char *s, size_t avail);

/* Decodes the character at s[*i] of already validated UTF-8 and advances *i. */
int32_t kvs_utf8_next(const char *s, size_t *i);

/* Writes the UTF-8 form of cp into out (4 bytes max); returns its length. */
size_t kvs_utf8_encode(int32_t cp, char *out);

/* Appends src to dst, replacing each maximal ill-formed subsequence by
** U+FFFD (the policy of Rust's String::from_utf8_lossy). */
kvs_status_e kvs_utf8_append_lossy(kvs_tok_buf_t *dst, const char *src, size_t len);

/* White_Space property, which is what Rust's char::is_whitespace and the
** Oniguruma \s class that the reference library uses both test. */
int kvs_tok_is_whitespace(int32_t cp);

/* General categories Nd, Nl and No: Rust's char::is_numeric. */
int kvs_tok_is_numeric(int32_t cp);

/* Letters and numbers plus '_' (word characters for single_word tokens). */
int kvs_tok_is_word_char(int32_t cp);

/* ---- hash maps ---------------------------------------------------------- */

/* String to id map with keys owned by the caller. */
typedef struct kvs_tok_strmap_slot {
    uint64_t hash;
    const char *key;   /* NULL when the slot is empty */
    uint32_t len;
    int32_t value;
} kvs_tok_strmap_slot_t;

typedef struct kvs_tok_strmap {
    kvs_tok_strmap_slot_t *slots;
    size_t cap;        /* power of two, at least twice count */
    size_t count;
} kvs_tok_strmap_t;

kvs_status_e kvs_tok_strmap_init(kvs_tok_strmap_t *m, size_t expected);
void kvs_tok_strmap_free(kvs_tok_strmap_t *m);
/* Inserts or overwrites; *previous gets the old value or -1. */
kvs_status_e kvs_tok_strmap_put(kvs_tok_strmap_t *m, const char *key, size_t len, int32_t value,
                                int32_t *previous);
int32_t kvs_tok_strmap_get(const kvs_tok_strmap_t *m, const char *key, size_t len);

/* Merge table: (left id, right id) to (rank, merged id). */
typedef struct kvs_tok_merge_slot {
    uint64_t key;      /* UINT64_MAX when empty */
    uint32_t rank;
    int32_t new_id;
} kvs_tok_merge_slot_t;

typedef struct kvs_tok_mergemap {
    kvs_tok_merge_slot_t *slots;
    size_t cap;
    size_t count;
} kvs_tok_mergemap_t;

kvs_status_e kvs_tok_mergemap_init(kvs_tok_mergemap_t *m, size_t expected);
void kvs_tok_mergemap_free(kvs_tok_mergemap_t *m);
void kvs_tok_mergemap_put(kvs_tok_mergemap_t *m, int32_t left, int32_t right, uint32_t rank,
                          int32_t new_id);
const kvs_tok_merge_slot_t *kvs_tok_mergemap_get(const kvs_tok_mergemap_t *m, int32_t left,
                                                 int32_t right);

/* Pre-token to ids cache. Offsets, not pointers, so the pools may grow. */
typedef struct kvs_tok_cache_slot {
    uint64_t hash;
    uint32_t key_off;
    uint32_t key_len;  /* 0 when the slot is empty: pre-tokens are never empty */
    uint32_t ids_off;
    uint32_t n_ids;
} kvs_tok_cache_slot_t;

typedef struct kvs_tok_cache {
    kvs_tok_cache_slot_t *slots;
    size_t cap;
    size_t count;
    kvs_tok_buf_t keys;
    kvs_tok_ids_t ids;
} kvs_tok_cache_t;

/* ---- components --------------------------------------------------------- */

typedef enum kvs_tok_norm_kind_e {
    KVS_TOK_NORM_PREPEND = 0,
    KVS_TOK_NORM_REPLACE = 1,
    KVS_TOK_NORM_KIND_COUNT
} kvs_tok_norm_kind_e;

typedef struct kvs_tok_normalizer {
    kvs_tok_norm_kind_e kind;
    char *pattern;     /* Replace: the string replaced */
    size_t pattern_len;
    char *content;     /* Prepend: the prefix; Replace: the replacement */
    size_t content_len;
} kvs_tok_normalizer_t;

typedef enum kvs_tok_pretok_kind_e {
    KVS_TOK_PRETOK_BYTE_LEVEL = 0,
    KVS_TOK_PRETOK_DIGITS = 1,
    KVS_TOK_PRETOK_KIND_COUNT
} kvs_tok_pretok_kind_e;

typedef struct kvs_tok_pretok {
    kvs_tok_pretok_kind_e kind;
    int individual_digits;   /* Digits */
    int add_prefix_space;    /* ByteLevel */
    int use_regex;           /* ByteLevel */
} kvs_tok_pretok_t;

typedef enum kvs_tok_decoder_kind_e {
    KVS_TOK_DEC_BYTE_LEVEL = 0,
    KVS_TOK_DEC_REPLACE = 1,
    KVS_TOK_DEC_BYTE_FALLBACK = 2,
    KVS_TOK_DEC_FUSE = 3,
    KVS_TOK_DEC_STRIP = 4,
    KVS_TOK_DEC_KIND_COUNT
} kvs_tok_decoder_kind_e;

typedef struct kvs_tok_decoder {
    kvs_tok_decoder_kind_e kind;
    char *pattern;           /* Replace */
    size_t pattern_len;
    char *content;           /* Replace: replacement; Strip: the character */
    size_t content_len;
    uint32_t start;          /* Strip: max characters removed at the start */
    uint32_t stop;           /* Strip: max characters removed at the end */
} kvs_tok_decoder_t;

typedef struct kvs_tok_added {
    char *content;           /* the token as decoded */
    size_t content_len;
    char *pattern;           /* the text matched: content, normalized when normalized is set */
    size_t len;
    int32_t id;
    uint8_t special;
    uint8_t lstrip;
    uint8_t rstrip;
    uint8_t single_word;
    uint8_t normalized;      /* matched after the normalizer, not on raw text */
} kvs_tok_added_t;

/* Marks the input sequence inside the post-processor template. */
#define KVS_TOK_TEMPLATE_SEQUENCE INT32_MIN

/* Maximum number of chained pre-tokenizers (after flattening Sequence). */
#define KVS_TOK_MAX_PRETOK 8
#define KVS_TOK_MAX_NORM 16
#define KVS_TOK_MAX_DECODERS 16

/* Code points below this have their one-character token id in a table. */
#define KVS_TOK_CHAR_TABLE 0x800

/* Pre-tokens of this many bytes or more are not cached. */
#define KVS_TOK_CACHE_MAX_WORD 256

/* A BPE merge candidate: lower rank first, then leftmost position. */
typedef struct kvs_tok_heap_item {
    uint32_t rank;
    uint32_t pos;
    int32_t new_id;
} kvs_tok_heap_item_t;

typedef struct kvs_tok_symbol {
    int32_t id;
    int32_t prev;
    int32_t next;
    uint32_t len;            /* bytes covered; 0 once merged into its left neighbour */
} kvs_tok_symbol_t;

struct kvs_tokenizer {
    char origin[512];
    char name[96];
    kvs_tokenizer_family_e family;

    /* Vocabulary: id -> token (model and added), token -> id (model only). */
    uint32_t vocab_size;
    char **id_token;         /* borrowed from model_token or added; NULL for unused ids */
    char **model_token;      /* owned model vocabulary strings, keys of model_vocab */
    uint32_t *id_token_len;
    uint8_t *id_special;
    kvs_tok_strmap_t model_vocab;
    kvs_tok_mergemap_t merges;

    /* BPE options. */
    int32_t unk_id;          /* -1 without unk_token */
    int fuse_unk;
    int byte_fallback;
    int ignore_merges;
    int32_t byte_ids[256];   /* ids of "<0xNN>", -1 when absent */

    /* Ids of the one-character tokens below U+0800 (-1 when absent), which
    ** covers every ByteLevel character and spares BPE a hash lookup per
    ** character of a new pre-token. */
    int32_t char_ids[KVS_TOK_CHAR_TABLE];

    /* Added tokens and, per first byte, their indices longest first:
    ** [0] for raw-text tokens, [1] for normalized ones. */
    kvs_tok_added_t *added;
    size_t n_added;
    kvs_tok_strmap_t added_vocab;
    uint32_t *bucket_items[2];
    uint32_t bucket_start[2][257];

    kvs_tok_normalizer_t normalizers[KVS_TOK_MAX_NORM];
    size_t n_normalizers;
    kvs_tok_pretok_t pretoks[KVS_TOK_MAX_PRETOK];
    size_t n_pretoks;
    kvs_tok_decoder_t decoders[KVS_TOK_MAX_DECODERS];
    size_t n_decoders;
    int has_decoder;

    /* Post-processor single template: ids, with KVS_TOK_TEMPLATE_SEQUENCE
    ** where the encoded text goes. Empty when there is no post-processor. */
    int32_t *template_ids;
    size_t n_template;

    pcre2_code *split_re;
    pcre2_match_data *split_match;

    int32_t bos_id;
    int32_t eos_id;
    char *chat_template;     /* from tokenizer_config.json, or NULL */

    /* Scratch space reused by every encode call. */
    kvs_tok_buf_t norm_buf[2];
    kvs_tok_buf_t step_buf[KVS_TOK_MAX_PRETOK];
    kvs_tok_buf_t prefix_buf[KVS_TOK_MAX_PRETOK];
    kvs_tok_symbol_t *symbols;
    size_t symbols_cap;
    kvs_tok_heap_item_t *heap;
    size_t heap_cap;
    kvs_tok_ids_t word_ids;
    kvs_tok_cache_t cache;
};

/* ---- stages (tokenizer_pretok.c, tokenizer_bpe.c) ----------------------- */

/* GPT-2 byte-to-character table: the UTF-8 form of byte b's character. */
typedef struct kvs_tok_byte_char {
    char utf8[2];
    uint8_t len;
} kvs_tok_byte_char_t;

extern const kvs_tok_byte_char_t *kvs_tok_byte_chars(void);

/* Byte for a ByteLevel character, or -1 when cp is not one. */
int kvs_tok_byte_of_char(int32_t cp);

/* Compiles the GPT-2 split pattern into tok->split_re. */
kvs_status_e kvs_tok_compile_split(kvs_tokenizer_t *tok);

/* Encodes one piece of text that contains no raw-text added token: normalizer,
** normalized added tokens, pre-tokenizers and BPE, appending to out. */
kvs_status_e kvs_tok_encode_piece(kvs_tokenizer_t *tok, const char *s, size_t len,
                                  kvs_tok_ids_t *out);

/* Runs the normalizers on s. *out points into scratch space that the
** next call reuses, or at s itself when there are no normalizers. */
kvs_status_e kvs_tok_normalize(kvs_tokenizer_t *tok, const char *s, size_t len, const char **out,
                               size_t *out_len);

/* Splits s on the added tokens of one kind (0 raw, 1 normalized): calls
** on_text for each stretch without tokens and appends the tokens' ids. */
typedef kvs_status_e (*kvs_tok_text_fn)(kvs_tokenizer_t *tok, const char *s, size_t len,
                                        kvs_tok_ids_t *out);
kvs_status_e kvs_tok_split_added(kvs_tokenizer_t *tok, int kind, const char *s, size_t len,
                                 kvs_tok_text_fn on_text, kvs_tok_ids_t *out);

/* Runs BPE on one pre-token, appending its ids to out. */
kvs_status_e kvs_tok_bpe_word(kvs_tokenizer_t *tok, const char *w, size_t len, kvs_tok_ids_t *out);

kvs_status_e kvs_tok_cache_init(kvs_tok_cache_t *c);
void kvs_tok_cache_free(kvs_tok_cache_t *c);

#endif
