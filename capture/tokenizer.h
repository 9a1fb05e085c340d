/*
** tokenizer.h: text to token ids and back, from a model folder's
** tokenizer.json, with the same results as the Hugging Face `tokenizers`
** library (the "reference library" in these files) for the BPE tokenizers
** that Llama-architecture checkpoints ship.
** The tests compare against ids that library produced.
**
** Supported components; any other type is rejected at load time with a
** message that names it:
**   normalizer      Prepend, Replace (string pattern), Sequence
**   pre_tokenizer   ByteLevel (GPT-2 split pattern), Digits, Sequence
**   model           BPE (vocab, merges as "a b" or ["a", "b"], unk_token,
**                   fuse_unk, byte_fallback, ignore_merges)
**   post_processor  TemplateProcessing (single sequence), ByteLevel
**   decoder         ByteLevel, Replace, ByteFallback, Fuse, Strip, Sequence
** Added tokens (special or not) are matched in the text before anything
** else, longest first, honouring lstrip, rstrip, single_word and normalized.
**
** Encoding flow for one text:
**
**   UTF-8 check -> added tokens split -> normalizer (per piece) ->
**   normalized added tokens split -> pre-tokenizers -> BPE per pre-token
**   (cached) -> post-processor (only with add_special)
**
** Encoding writes the handle's BPE cache and scratch buffers. One handle
** must therefore not encode from two threads at once: load one per thread.
*/
#ifndef KVS_TOKENIZER_H
#define KVS_TOKENIZER_H

#include "../common/kvs_common.h"

#include <stddef.h>
#include <stdint.h>

typedef struct kvs_tokenizer kvs_tokenizer_t;

/* Tokenizer families, recognized by their components. */
typedef enum kvs_tokenizer_family_e {
    KVS_TOKENIZER_BYTE_LEVEL = 0,     /* ByteLevel pre-tokenizer (SmolLM2, GPT-2) */
    KVS_TOKENIZER_SENTENCEPIECE = 1,  /* byte-fallback BPE on "▁" text (Llama 2) */
    KVS_TOKENIZER_OTHER = 2,          /* any other supported combination */
    KVS_TOKENIZER_FAMILY_COUNT
} kvs_tokenizer_family_e;

/* One chat turn. role is "system", "user" or "assistant". */
typedef struct kvs_chat_message {
    const char *role;
    const char *content;
} kvs_chat_message_t;

/* Name recorded for the ChatML template of SmolLM2-Instruct. */
#define KVS_CHAT_TEMPLATE_CHATML "chatml-smollm2"

/* System message that SmolLM2-Instruct's template inserts when the
** conversation does not start with one. */
#define KVS_CHAT_DEFAULT_SYSTEM \
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

/* ---- loading ------------------------------------------------------------ */

/* Loads model_dir/tokenizer.json, plus model_dir/tokenizer_config.json and
** model_dir/config.json when present (for the BOS and EOS ids and the chat
** template). The folder needs no weights.
** Returns KVS_OK, KVS_ERR_NOT_FOUND (no tokenizer.json), KVS_ERR_IO,
** KVS_ERR_TOKENIZER (malformed file: the message names the JSON path and
** the problem), KVS_ERR_UNSUPPORTED (a component type kvsim does not
** implement, named in the message) or KVS_ERR_NOMEM. */
kvs_status_e kvs_tokenizer_load(const char *model_dir, kvs_tokenizer_t **out);

/* Loads from tokenizer.json text held in memory; config_json is the text of
** tokenizer_config.json or NULL. origin names the source in messages.
** Same return codes as kvs_tokenizer_load. */
kvs_status_e kvs_tokenizer_load_json(const char *json, size_t json_len, const char *config_json,
                                     size_t config_len, const char *origin,
                                     kvs_tokenizer_t **out);

/* Frees the handle; accepts NULL. */
void kvs_tokenizer_free(kvs_tokenizer_t *tok);

/* ---- encoding and decoding ---------------------------------------------- */

/* Encodes len bytes of UTF-8 text (NUL bytes allowed) into *ids, a malloc'd
** array of *n ids that the caller frees (NULL when *n is 0). Special tokens
** written in the text are always parsed; add_special runs the
** post-processor (for example it adds BOS for Llama 2). Returns KVS_OK,
** KVS_ERR_TOKENIZER when the text is not valid UTF-8 (the message gives the
** byte offset), KVS_ERR_INVALID for NULL text with a length or more than
** INT32_MAX bytes, or KVS_ERR_NOMEM.
** Characters that the vocabulary cannot express and that have neither byte
** fallback nor an unknown token are dropped, as the reference library does. */
kvs_status_e kvs_tokenizer_encode(kvs_tokenizer_t *tok, const char *text, size_t len,
                                  int add_special, int32_t **ids, size_t *n);

/* Decodes n ids into *text, a malloc'd NUL-terminated string of *len bytes
** that the caller frees. With skip_special, special added tokens are left
** out. Byte sequences that do not form valid UTF-8 become U+FFFD, as in the
** reference library. Returns KVS_OK, KVS_ERR_TOKEN for an id outside the
** vocabulary (named in the message) or KVS_ERR_NOMEM. */
kvs_status_e kvs_tokenizer_decode(const kvs_tokenizer_t *tok, const int32_t *ids, size_t n,
                                  int skip_special, char **text, size_t *len);

/* ---- chat --------------------------------------------------------------- */

/* Renders a conversation with SmolLM2-Instruct's ChatML template: the
** default system message first when messages[0] is not a system message,
** then "<|im_start|>ROLE\nCONTENT<|im_end|>\n" per message, then
** "<|im_start|>assistant\n" when add_generation_prompt is set. *text is
** malloc'd; *template_name is static (KVS_CHAT_TEMPLATE_CHATML).
** Returns KVS_ERR_UNSUPPORTED when the tokenizer has no <|im_start|> and
** <|im_end|> tokens or its tokenizer_config.json template is not ChatML,
** KVS_ERR_INVALID for an unknown role or NULL content. */
kvs_status_e kvs_tokenizer_render_chat(const kvs_tokenizer_t *tok,
                                       const kvs_chat_message_t *messages, size_t n_messages,
                                       int add_generation_prompt, char **text,
                                       const char **template_name);

/* ---- accessors ---------------------------------------------------------- */

/* Number of ids: one more than the largest id of the model vocabulary and
** the added tokens. */
uint32_t kvs_tokenizer_vocab_size(const kvs_tokenizer_t *tok);

/* BOS and EOS ids, from tokenizer_config.json (bos_token, eos_token), else
** config.json (bos_token_id, eos_token_id), else the added tokens "<s>",
** "</s>" or "<|endoftext|>"; -1 when none of these names one. */
int32_t kvs_tokenizer_bos_id(const kvs_tokenizer_t *tok);
int32_t kvs_tokenizer_eos_id(const kvs_tokenizer_t *tok);

kvs_tokenizer_family_e kvs_tokenizer_family(const kvs_tokenizer_t *tok);

/* Short name for trace metadata, for example "byte-level BPE (49152 ids)". */
const char *kvs_tokenizer_name(const kvs_tokenizer_t *tok);

/* The token string of id (in the vocabulary's own alphabet, for example
** "Ġthe"), or NULL when id is outside the vocabulary. */
const char *kvs_tokenizer_id_to_token(const kvs_tokenizer_t *tok, int32_t id);

/* The id of a token string (added tokens first, then the model vocabulary),
** or -1. */
int32_t kvs_tokenizer_token_to_id(const kvs_tokenizer_t *tok, const char *token);

#endif
