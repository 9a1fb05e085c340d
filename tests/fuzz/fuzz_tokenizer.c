/* fuzz_tokenizer.c: libFuzzer target for the tokenizer's encode, decode and
** tokenizer.json loading.
**
** The first input byte selects what the rest is:
**
**   0..127    text to encode with every loaded tokenizer, then decode
**   128..191  token ids (little-endian uint16 each) to decode
**   192..255  a tokenizer.json document to load, then use
**
** A small tokenizer built in here is always used. The real SmolLM2 and
** stories260K tokenizers are used too when KVS_SHARED_DIR has them. */
#include "capture/tokenizer.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Byte-level BPE with digits splitting and a SentencePiece-style part, so
** both pre-tokenizer paths and most decoders run without shared data. */
static const char builtin_json[] =
    "{\"version\": \"1.0\", \"truncation\": null, \"padding\": null,"
    " \"added_tokens\": [{\"id\": 9, \"content\": \"<|end|>\", \"single_word\": false,"
    "   \"lstrip\": true, \"rstrip\": true, \"normalized\": false, \"special\": true}],"
    " \"normalizer\": null,"
    " \"pre_tokenizer\": {\"type\": \"Sequence\", \"pretokenizers\": ["
    "   {\"type\": \"Digits\", \"individual_digits\": true},"
    "   {\"type\": \"ByteLevel\", \"add_prefix_space\": false, \"use_regex\": true}]},"
    " \"post_processor\": null,"
    " \"decoder\": {\"type\": \"ByteLevel\"},"
    " \"model\": {\"type\": \"BPE\", \"unk_token\": \"<unk>\", \"fuse_unk\": true,"
    "   \"vocab\": {\"<unk>\": 0, \"a\": 1, \"b\": 2, \"ab\": 3, \"\\u0120\": 4, \"\\u0120ab\": 5,"
    "     \"1\": 6, \"2\": 7, \"\\u010a\": 8},"
    "   \"merges\": [\"a b\", \"\\u0120 ab\"]}}";

#define MAX_TOKENIZERS 3

static kvs_tokenizer_t *tokenizers[MAX_TOKENIZERS];
static size_t n_tokenizers;

static void load_shared(const char *relative)
{
    const char *base = getenv("KVS_SHARED_DIR");
    char dir[4096];
    kvs_tokenizer_t *tok;

    if (!base)
        return;
    snprintf(dir, sizeof dir, "%s/%s", base, relative);
    if (kvs_tokenizer_load(dir, &tok) == KVS_OK)
        tokenizers[n_tokenizers++] = tok;
}

static void init(void)
{
    kvs_tokenizer_t *tok;

    if (kvs_tokenizer_load_json(builtin_json, strlen(builtin_json), NULL, 0, "builtin", &tok) !=
        KVS_OK) {
        fprintf(stderr, "built-in tokenizer failed to load: %s\n", kvs_error_message());
        abort();
    }
    tokenizers[n_tokenizers++] = tok;
    load_shared("tokenizers/smollm2");
    load_shared("models/stories260K");
}

/* Encodes and decodes; valid UTF-8 must encode, and every id produced must
** decode. */
static void exercise_text(kvs_tokenizer_t *tok, const char *text, size_t len)
{
    for (int add_special = 0; add_special < 2; add_special++) {
        int32_t *ids;
        size_t n, out_len;
        char *out;
        kvs_status_e rc = kvs_tokenizer_encode(tok, text, len, add_special, &ids, &n);

        if (rc != KVS_OK) {
            if (rc != KVS_ERR_TOKENIZER)
                abort();
            continue;
        }
        if (kvs_tokenizer_decode(tok, ids, n, add_special, &out, &out_len) != KVS_OK)
            abort();
        if (strlen(out) > out_len)
            abort();
        free(out);
        free(ids);
    }
}

static void exercise_ids(kvs_tokenizer_t *tok, const uint8_t *data, size_t size, int skip_special)
{
    size_t n = size / 2;
    int32_t *ids = malloc((n ? n : 1) * sizeof *ids);
    char *out;
    size_t out_len;
    kvs_status_e rc;

    for (size_t i = 0; i < n; i++)
        ids[i] = (int32_t)(data[2 * i] | (data[2 * i + 1] << 8));
    rc = kvs_tokenizer_decode(tok, ids, n, skip_special, &out, &out_len);
    if (rc == KVS_OK)
        free(out);
    else if (rc != KVS_ERR_TOKEN)
        abort();
    free(ids);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t mode;

    if (!n_tokenizers)
        init();
    if (size == 0)
        return 0;
    mode = data[0];
    data++;
    size--;

    if (mode < 128) {
        for (size_t t = 0; t < n_tokenizers; t++)
            exercise_text(tokenizers[t], (const char *)data, size);
    } else if (mode < 192) {
        for (size_t t = 0; t < n_tokenizers; t++)
            exercise_ids(tokenizers[t], data, size, mode & 1);
    } else {
        kvs_tokenizer_t *tok;

        if (kvs_tokenizer_load_json((const char *)data, size, NULL, 0, "fuzz", &tok) == KVS_OK) {
            exercise_text(tok, "ab 12 <|end|> x\n", 16);
            kvs_tokenizer_free(tok);
        }
    }
    return 0;
}
