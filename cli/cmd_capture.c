/* cmd_capture.c: 'kvsim capture', run a model and record q/k/v into a trace. */
#include "cli.h"

#include "../capture/capture.h"
#include "../capture/model.h"
#include "../capture/tokenizer.h"
#include "../common/fsutil.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char usage_text[] =
    "usage: kvsim capture --model DIR --prompt-ids ID,ID,... --max-new-tokens N -o FILE.kvt\n"
    "       kvsim capture --model DIR (--prompt TEXT | --prompt-file FILE) [--chat [--system TEXT]]\n"
    "                     --max-new-tokens N -o FILE.kvt\n"
    "                     [--temperature T] [--top-p P] [--seed S] [--dtype f32|f16|bf16]\n"
    "                     [--no-stop-at-eos]\n"
    "\n"
    "Runs a Llama-architecture Hugging Face model folder (config.json and\n"
    "*.safetensors) over the prompt, generates up to N tokens and writes q after\n"
    "RoPE, k after RoPE, k before RoPE and v of every layer and position to a\n"
    "trace. The trace holds the prompt and every generated token, the last one\n"
    "included (n_prompt + n_generated positions).\n"
    "\n"
    "  --model DIR|ID       model folder ('kvsim model synth' makes a synthetic one), or a\n"
    "                       Hugging Face id (OWNER/NAME) found in the hub cache\n"
    "                       (~/.cache/huggingface/hub, or $HF_HUB_CACHE / $HF_HOME/hub);\n"
    "                       default $KVSIM_MODEL\n"
    "  --prompt-ids LIST    comma-separated token ids, each below the vocabulary size\n"
    "  --prompt TEXT        prompt text, encoded with DIR/tokenizer.json; the\n"
    "                       post-processor runs, so Llama 2 models get BOS\n"
    "  --prompt-file FILE   read the prompt text from FILE (UTF-8)\n"
    "  --chat               send the prompt as a user turn in SmolLM2-Instruct's\n"
    "                       ChatML format, ending with the assistant prompt\n"
    "  --system TEXT        system message for --chat (default: SmolLM2's own)\n"
    "  --max-new-tokens N   tokens to generate after the prompt (0 records the prompt only)\n"
    "  -o, --out FILE       trace file to write (written under a temporary name first)\n"
    "  --temperature T      sampling temperature, 0 (default) picks the most likely token\n"
    "  --top-p P            nucleus sampling mass in (0, 1], default 1 (no cut)\n"
    "  --seed S             seed of the sampling generator, default 0\n"
    "  --dtype D            trace storage dtype: f32 (default, lossless), f16 or bf16\n"
    "  --no-stop-at-eos     keep generating after the model's EOS token\n"
    "\n"
    "Threads: KVSIM_THREADS (default: online CPUs, at most 8).\n";

/* Text prompt options, resolved to token ids by prompt_from_text. */
typedef struct text_prompt {
    const char *prompt;
    const char *prompt_file;
    int chat;
    const char *system;
    char *file_text;   /* owned: contents of prompt_file */
    char *rendered;    /* owned: the chat conversation as text */
} text_prompt_t;

static kvs_status_e read_prompt_file(text_prompt_t *text)
{
    size_t len;
    const char *nul;

    KVS_FORWARD(kvs_read_file(text->prompt_file, &text->file_text, &len));
    nul = memchr(text->file_text, '\0', len);
    KVS_RETURN_IF(nul, KVS_ERR_INVALID,
                  "prompt file %s has a NUL byte at offset %zu; a prompt must be text",
                  text->prompt_file, (size_t)(nul - text->file_text));
    text->prompt = text->file_text;
    return KVS_OK;
}

/* Turns a text prompt into token ids with the model's tokenizer.json and
** fills the prompt_text, rendered_prompt and chat_template fields of opts.
** Plain text goes through the post-processor, as Hugging Face tokenizers
** encode by default. A chat conversation does not, because the template
** text already contains every special token. */
static kvs_status_e prompt_from_text(text_prompt_t *text, kvs_capture_opts_t *opts,
                                     int32_t **ids, uint32_t *n_ids)
{
    kvs_tokenizer_t *tok;
    const char *encoded;
    int32_t *out = NULL;
    size_t n = 0;
    kvs_status_e rc = KVS_OK;

    *ids = NULL;
    *n_ids = 0;
    if (text->prompt_file)
        KVS_FORWARD(read_prompt_file(text));
    KVS_FORWARD(kvs_tokenizer_load(opts->model_dir, &tok));

    encoded = text->prompt;
    if (text->chat) {
        kvs_chat_message_t messages[2];
        size_t n_messages = 0;

        if (text->system)
            messages[n_messages++] = (kvs_chat_message_t){"system", text->system};
        messages[n_messages++] = (kvs_chat_message_t){"user", text->prompt};
        rc = kvs_tokenizer_render_chat(tok, messages, n_messages, 1, &text->rendered,
                                       &opts->chat_template);
        encoded = text->rendered;
    }
    if (rc == KVS_OK)
        rc = kvs_tokenizer_encode(tok, encoded, strlen(encoded), !text->chat, &out, &n);
    kvs_tokenizer_free(tok);
    KVS_FORWARD(rc);
    if (n == 0 || n > UINT32_MAX) {
        free(out);
        return kvs_fail(KVS_ERR_USAGE, "the prompt text encodes to %zu tokens; give a prompt "
                                       "of at least one token",
                        n);
    }

    opts->prompt_text = text->prompt;
    opts->rendered_prompt = text->rendered;
    *ids = out;
    *n_ids = (uint32_t)n;
    return KVS_OK;
}

static kvs_status_e parse_ids(const char *text, int32_t **out, uint32_t *n_out)
{
    size_t cap = 1;
    uint32_t n = 0;

    for (const char *p = text; *p; p++)
        cap += *p == ',';
    int32_t *ids = malloc(cap * sizeof *ids);
    KVS_RETURN_IF(!ids, KVS_ERR_NOMEM, "out of memory for %zu token ids", cap);

    const char *p = text;
    for (;;) {
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (end == p || errno || v < 0 || v > INT32_MAX || (*end && *end != ',')) {
            free(ids);
            return kvs_fail(KVS_ERR_USAGE,
                            "--prompt-ids expects comma-separated non-negative integers, got '%s'",
                            text);
        }
        ids[n++] = (int32_t)v;
        if (!*end)
            break;
        p = end + 1;
    }
    *out = ids;
    *n_out = n;
    return KVS_OK;
}

static int finish(const char *cmd, kvs_status_e rc, int32_t *ids, text_prompt_t *text)
{
    free(ids);
    free(text->file_text);
    free(text->rendered);
    return kvs_cli_report_error(cmd, rc);
}

int kvs_cmd_capture(int argc, char **argv)
{
    const char *cmd = argv[0];
    kvs_capture_opts_t opts = {0};
    text_prompt_t text = {0};
    const char *ids_text = NULL, *max_new = NULL;
    int32_t *ids = NULL;
    uint32_t n_ids = 0;
    kvs_status_e rc;

    opts.top_p = 1.0f;
    opts.stop_at_eos = 1;
    opts.dtype = KVS_DTYPE_F32;

    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        const char **value = NULL;
        const char *temperature = NULL, *top_p = NULL, *seed = NULL, *dtype = NULL;

        if (!strcmp(arg, "--help") || !strcmp(arg, "-h")) {
            fputs(usage_text, stdout);
            return KVS_EXIT_OK;
        }
        if (!strcmp(arg, "--no-stop-at-eos")) {
            opts.stop_at_eos = 0;
            continue;
        }
        if (!strcmp(arg, "--chat")) {
            text.chat = 1;
            continue;
        }
        if (!strcmp(arg, "--model"))
            value = &opts.model_dir;
        else if (!strcmp(arg, "--prompt-ids"))
            value = &ids_text;
        else if (!strcmp(arg, "--max-new-tokens"))
            value = &max_new;
        else if (!strcmp(arg, "-o") || !strcmp(arg, "--out"))
            value = &opts.out_path;
        else if (!strcmp(arg, "--temperature"))
            value = &temperature;
        else if (!strcmp(arg, "--top-p"))
            value = &top_p;
        else if (!strcmp(arg, "--seed"))
            value = &seed;
        else if (!strcmp(arg, "--dtype"))
            value = &dtype;
        else if (!strcmp(arg, "--prompt"))
            value = &text.prompt;
        else if (!strcmp(arg, "--prompt-file"))
            value = &text.prompt_file;
        else if (!strcmp(arg, "--system"))
            value = &text.system;
        else
            return kvs_cli_usage_error(cmd, "unknown option '%s'", arg);
        if (i + 1 >= argc)
            return kvs_cli_usage_error(cmd, "%s needs a value", arg);
        *value = argv[++i];

        /* Numbers are parsed as they come, so the message names the option. */
        double d;
        uint64_t u;
        if (temperature) {
            if ((rc = kvs_cli_parse_float("--temperature", temperature, 0.0, 1e6, &d)) != KVS_OK)
                return kvs_cli_report_error(cmd, rc);
            opts.temperature = (float)d;
        } else if (top_p) {
            if ((rc = kvs_cli_parse_float("--top-p", top_p, 0.0, 1.0, &d)) != KVS_OK)
                return kvs_cli_report_error(cmd, rc);
            if (d <= 0.0)
                return kvs_cli_usage_error(cmd, "--top-p must be above 0, got %s", top_p);
            opts.top_p = (float)d;
        } else if (seed) {
            if ((rc = kvs_cli_parse_u64("--seed", seed, &u)) != KVS_OK)
                return kvs_cli_report_error(cmd, rc);
            opts.seed = u;
        } else if (dtype) {
            if ((rc = kvs_dtype_parse(dtype, &opts.dtype)) != KVS_OK)
                return kvs_cli_report_error(cmd, rc);
        }
    }

    if (!opts.model_dir && !getenv("KVSIM_MODEL"))
        return kvs_cli_usage_error(cmd, "--model DIR is required (or set KVSIM_MODEL)");
    if (!opts.out_path)
        return kvs_cli_usage_error(cmd, "-o FILE is required");
    if (!max_new)
        return kvs_cli_usage_error(cmd, "--max-new-tokens N is required");
    if ((rc = kvs_cli_parse_u32("--max-new-tokens", max_new, 0, 1u << 20, &opts.max_new_tokens)) !=
        KVS_OK)
        return kvs_cli_report_error(cmd, rc);
    int has_text = text.prompt || text.prompt_file;
    if (!ids_text && !has_text)
        return kvs_cli_usage_error(cmd, "give the prompt with --prompt, --prompt-file or "
                                        "--prompt-ids");
    if (ids_text && (has_text || text.chat))
        return kvs_cli_usage_error(cmd, "--prompt-ids cannot be combined with a text prompt");
    if (text.prompt && text.prompt_file)
        return kvs_cli_usage_error(cmd, "give either --prompt or --prompt-file, not both");
    if (text.system && !text.chat)
        return kvs_cli_usage_error(cmd, "--system needs --chat");

    /* Resolved once here, so the tokenizer and the capture read one folder. */
    char model_dir[4096];
    if ((rc = kvs_model_resolve(opts.model_dir, model_dir, sizeof model_dir)) != KVS_OK)
        return kvs_cli_report_error(cmd, rc);
    opts.model_dir = model_dir;

    rc = ids_text ? parse_ids(ids_text, &ids, &n_ids) : prompt_from_text(&text, &opts, &ids, &n_ids);
    if (rc != KVS_OK)
        return finish(cmd, rc, ids, &text);
    opts.prompt_ids = ids;
    opts.n_prompt = n_ids;

    kvs_capture_result_t result;
    rc = kvs_capture_run(&opts, &result);
    if (rc != KVS_OK)
        return finish(cmd, rc, ids, &text);

    uint32_t n_pos = n_ids + result.n_generated;
    printf("captured %u positions (%u prompt + %u generated)%s\n", n_pos, n_ids,
           result.n_generated, result.synthetic ? " from a SYNTHETIC model (random weights)" : "");
    printf("prefill: %u tokens in %.3f s (%.1f tokens/s)\n", n_ids, result.prefill_seconds,
           result.prefill_seconds > 0 ? n_ids / result.prefill_seconds : 0.0);
    printf("decode:  %u tokens in %.3f s (%.1f tokens/s)\n", result.n_generated,
           result.decode_seconds,
           result.decode_seconds > 0 ? result.n_generated / result.decode_seconds : 0.0);
    printf("trace:   %s\n", opts.out_path);
    free(ids);
    free(text.file_text);
    free(text.rendered);
    return KVS_EXIT_OK;
}
