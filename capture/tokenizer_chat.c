/* tokenizer_chat.c: the ChatML conversation format of SmolLM2-Instruct.
**
** kvsim does not evaluate Jinja chat templates. It renders the one format
** that SmolLM2-Instruct's template produces, and refuses models whose
** template is visibly something else, rather than feed them a prompt in
** the wrong format. */
#include "tokenizer_internal.h"

#include <stdlib.h>
#include <string.h>

static kvs_status_e append_str(kvs_tok_buf_t *b, const char *s)
{
    return kvs_tok_buf_append(b, s, strlen(s));
}

static kvs_status_e append_turn(kvs_tok_buf_t *b, const char *role, const char *content)
{
    KVS_FORWARD(append_str(b, "<|im_start|>"));
    KVS_FORWARD(append_str(b, role));
    KVS_FORWARD(append_str(b, "\n"));
    KVS_FORWARD(append_str(b, content));
    return append_str(b, "<|im_end|>\n");
}

static kvs_status_e check_chatml(const kvs_tokenizer_t *tok)
{
    KVS_RETURN_IF(kvs_tok_strmap_get(&tok->added_vocab, "<|im_start|>", 12) < 0 ||
                      kvs_tok_strmap_get(&tok->added_vocab, "<|im_end|>", 10) < 0,
                  KVS_ERR_UNSUPPORTED,
                  "%s has no <|im_start|> and <|im_end|> tokens, so the ChatML chat format does "
                  "not apply to this model; pass the prompt without --chat",
                  tok->origin);
    KVS_RETURN_IF(tok->chat_template && !strstr(tok->chat_template, "<|im_start|>"),
                  KVS_ERR_UNSUPPORTED,
                  "the chat_template in tokenizer_config.json beside %s is not ChatML, which is "
                  "the only chat format kvsim renders; pass the prompt without --chat",
                  tok->origin);
    return KVS_OK;
}

static int known_role(const char *role)
{
    return !strcmp(role, "system") || !strcmp(role, "user") || !strcmp(role, "assistant");
}

kvs_status_e kvs_tokenizer_render_chat(const kvs_tokenizer_t *tok,
                                       const kvs_chat_message_t *messages, size_t n_messages,
                                       int add_generation_prompt, char **text,
                                       const char **template_name)
{
    kvs_tok_buf_t out = {0};
    kvs_status_e rc = KVS_OK;

    *text = NULL;
    *template_name = KVS_CHAT_TEMPLATE_CHATML;
    KVS_FORWARD(check_chatml(tok));
    for (size_t i = 0; i < n_messages; i++) {
        KVS_RETURN_IF(!messages[i].role || !known_role(messages[i].role), KVS_ERR_INVALID,
                      "chat message %zu has role '%s'; use system, user or assistant", i,
                      messages[i].role ? messages[i].role : "(null)");
        KVS_RETURN_IF(!messages[i].content, KVS_ERR_INVALID, "chat message %zu has no content",
                      i);
    }

    if (n_messages == 0 || strcmp(messages[0].role, "system") != 0)
        rc = append_turn(&out, "system", KVS_CHAT_DEFAULT_SYSTEM);
    for (size_t i = 0; i < n_messages && rc == KVS_OK; i++)
        rc = append_turn(&out, messages[i].role, messages[i].content);
    if (rc == KVS_OK && add_generation_prompt)
        rc = append_str(&out, "<|im_start|>assistant\n");
    if (rc == KVS_OK)
        rc = kvs_tok_buf_append(&out, "", 0);
    if (rc != KVS_OK) {
        free(out.data);
        return rc;
    }
    *text = out.data;
    return KVS_OK;
}
