/* tokenizer.c: the encode entry point, accessors and freeing. Loading is in
** tokenizer_load.c, the stages in tokenizer_pretok.c and tokenizer_bpe.c. */
#include "tokenizer_internal.h"

#include <stdlib.h>
#include <string.h>

static kvs_status_e check_utf8(const char *text, size_t len)
{
    const unsigned char *s = (const unsigned char *)text;
    size_t i = 0;

    while (i < len) {
        size_t n;

        if (s[i] < 0x80) {
            i++;
            continue;
        }
        n = kvs_utf8_valid_len(s + i, len - i);
        KVS_RETURN_IF(n == 0, KVS_ERR_TOKENIZER,
                      "text is not valid UTF-8: byte 0x%02X at offset %zu does not start a "
                      "well-formed character; convert the text to UTF-8",
                      s[i], i);
        i += n;
    }
    return KVS_OK;
}

kvs_status_e kvs_tokenizer_encode(kvs_tokenizer_t *tok, const char *text, size_t len,
                                  int add_special, int32_t **ids, size_t *n)
{
    kvs_tok_ids_t body = {0}, result = {0};
    kvs_status_e rc;

    *ids = NULL;
    *n = 0;
    KVS_RETURN_IF(!text && len, KVS_ERR_INVALID, "text is NULL but its length is %zu", len);
    KVS_RETURN_IF(len > INT32_MAX, KVS_ERR_INVALID,
                  "text of %zu bytes is too long to encode at once; the limit is %d bytes, so "
                  "split it",
                  len, INT32_MAX);
    KVS_FORWARD(check_utf8(text, len));

    rc = kvs_tok_split_added(tok, 0, text ? text : "", len, kvs_tok_encode_piece, &body);
    if (rc != KVS_OK)
        goto fail;

    if (!add_special || tok->n_template == 0) {
        *ids = body.data;
        *n = body.len;
        return KVS_OK;
    }

    for (size_t k = 0; k < tok->n_template; k++) {
        if (tok->template_ids[k] == KVS_TOK_TEMPLATE_SEQUENCE)
            rc = kvs_tok_ids_append(&result, body.data, body.len);
        else
            rc = kvs_tok_ids_push(&result, tok->template_ids[k]);
        if (rc != KVS_OK)
            goto fail;
    }
    free(body.data);
    *ids = result.data;
    *n = result.len;
    return KVS_OK;

fail:
    free(body.data);
    free(result.data);
    return rc;
}

uint32_t kvs_tokenizer_vocab_size(const kvs_tokenizer_t *tok)
{
    return tok->vocab_size;
}

int32_t kvs_tokenizer_bos_id(const kvs_tokenizer_t *tok)
{
    return tok->bos_id;
}

int32_t kvs_tokenizer_eos_id(const kvs_tokenizer_t *tok)
{
    return tok->eos_id;
}

kvs_tokenizer_family_e kvs_tokenizer_family(const kvs_tokenizer_t *tok)
{
    return tok->family;
}

const char *kvs_tokenizer_name(const kvs_tokenizer_t *tok)
{
    return tok->name;
}

const char *kvs_tokenizer_id_to_token(const kvs_tokenizer_t *tok, int32_t id)
{
    if (id < 0 || (uint32_t)id >= tok->vocab_size)
        return NULL;
    return tok->id_token[id];
}

int32_t kvs_tokenizer_token_to_id(const kvs_tokenizer_t *tok, const char *token)
{
    size_t len = strlen(token);
    int32_t id = kvs_tok_strmap_get(&tok->added_vocab, token, len);

    return id >= 0 ? id : kvs_tok_strmap_get(&tok->model_vocab, token, len);
}

void kvs_tokenizer_free(kvs_tokenizer_t *tok)
{
    if (!tok)
        return;
    if (tok->model_token) {
        for (uint32_t i = 0; i < tok->vocab_size; i++)
            free(tok->model_token[i]);
    }
    free(tok->model_token);
    free(tok->id_token);
    free(tok->id_token_len);
    free(tok->id_special);
    kvs_tok_strmap_free(&tok->model_vocab);
    kvs_tok_strmap_free(&tok->added_vocab);
    kvs_tok_mergemap_free(&tok->merges);
    for (size_t i = 0; i < tok->n_added; i++) {
        if (tok->added[i].pattern != tok->added[i].content)
            free(tok->added[i].pattern);
        free(tok->added[i].content);
    }
    free(tok->added);
    free(tok->bucket_items[0]);
    free(tok->bucket_items[1]);
    for (size_t i = 0; i < tok->n_normalizers; i++) {
        free(tok->normalizers[i].pattern);
        free(tok->normalizers[i].content);
    }
    for (size_t i = 0; i < tok->n_decoders; i++) {
        free(tok->decoders[i].pattern);
        free(tok->decoders[i].content);
    }
    free(tok->template_ids);
    pcre2_match_data_free(tok->split_match);
    pcre2_code_free(tok->split_re);
    free(tok->chat_template);
    for (int i = 0; i < 2; i++)
        free(tok->norm_buf[i].data);
    for (int i = 0; i < KVS_TOK_MAX_PRETOK; i++) {
        free(tok->step_buf[i].data);
        free(tok->prefix_buf[i].data);
    }
    free(tok->symbols);
    free(tok->heap);
    free(tok->word_ids.data);
    kvs_tok_cache_free(&tok->cache);
    free(tok);
}
