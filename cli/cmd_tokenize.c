/* cmd_tokenize.c: 'kvsim tokenize', which prints the ids a model gets for
** a text, or the text that a list of ids decodes to. */
#include "cli.h"

#include "../capture/tokenizer.h"
#include "../common/fsutil.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char usage_text[] =
    "usage: kvsim tokenize --model DIR [--add-special] [--chat [--system TEXT]] TEXT\n"
    "       kvsim tokenize --model DIR [--add-special] [--chat [--system TEXT]] --file FILE\n"
    "       kvsim tokenize --model DIR --decode \"ID ID ...\" [--skip-special]\n"
    "\n"
    "Encodes TEXT with DIR/tokenizer.json and prints the ids on one line,\n"
    "separated by spaces. Special tokens written in the text (such as\n"
    "<|im_start|>) are parsed; nothing is added unless --add-special is given.\n"
    "With --decode, prints the text of the ids exactly, with no newline added.\n"
    "A folder with only tokenizer.json (and tokenizer_config.json) is enough.\n"
    "\n"
    "  --model DIR       model or tokenizer folder\n"
    "  --file FILE       encode the contents of FILE instead of TEXT\n"
    "  --add-special     run the post-processor (for example add BOS for Llama 2)\n"
    "  --chat            wrap the text as a user turn in the ChatML format of\n"
    "                    SmolLM2-Instruct, ending with the assistant prompt\n"
    "  --system TEXT     system message for --chat (default: SmolLM2's own)\n"
    "  --decode IDS      decode ids separated by spaces, tabs or newlines\n"
    "  --skip-special    leave special tokens out of the decoded text\n";

typedef struct tokenize_args {
    const char *model_dir;
    const char *file;
    const char *decode;
    const char *system;
    const char *text;
    int add_special;
    int skip_special;
    int chat;
} tokenize_args_t;

static int parse_args(int argc, char **argv, tokenize_args_t *a)
{
    enum { OPT_MODEL = 256, OPT_FILE, OPT_DECODE, OPT_SYSTEM, OPT_ADD, OPT_SKIP, OPT_CHAT };
    static const struct option options[] = {
        {"model", required_argument, NULL, OPT_MODEL},
        {"file", required_argument, NULL, OPT_FILE},
        {"decode", required_argument, NULL, OPT_DECODE},
        {"system", required_argument, NULL, OPT_SYSTEM},
        {"add-special", no_argument, NULL, OPT_ADD},
        {"skip-special", no_argument, NULL, OPT_SKIP},
        {"chat", no_argument, NULL, OPT_CHAT},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int c;

    memset(a, 0, sizeof *a);
    opterr = 0;
    optind = 1;
    while ((c = getopt_long(argc, argv, "+h", options, NULL)) != -1) {
        switch (c) {
        case OPT_MODEL: a->model_dir = optarg; break;
        case OPT_FILE: a->file = optarg; break;
        case OPT_DECODE: a->decode = optarg; break;
        case OPT_SYSTEM: a->system = optarg; break;
        case OPT_ADD: a->add_special = 1; break;
        case OPT_SKIP: a->skip_special = 1; break;
        case OPT_CHAT: a->chat = 1; break;
        case 'h':
            fputs(usage_text, stdout);
            return -1;
        default:
            return kvs_cli_usage_error(argv[0], "unknown option or missing value in '%s'",
                                       argv[optind - 1]);
        }
    }

    if (!a->model_dir)
        return kvs_cli_usage_error(argv[0], "--model DIR is required");
    if (optind < argc)
        a->text = argv[optind++];
    if (optind < argc)
        return kvs_cli_usage_error(argv[0], "unexpected argument '%s'; quote TEXT as one argument",
                                   argv[optind]);
    if (a->decode) {
        if (a->text || a->file || a->chat || a->system || a->add_special)
            return kvs_cli_usage_error(argv[0], "--decode takes no TEXT, --file, --chat, "
                                                "--system or --add-special");
        return 0;
    }
    if (!!a->text + !!a->file != 1)
        return kvs_cli_usage_error(argv[0], "give exactly one of TEXT, --file FILE or --decode");
    if (a->system && !a->chat)
        return kvs_cli_usage_error(argv[0], "--system needs --chat");
    if (a->skip_special)
        return kvs_cli_usage_error(argv[0], "--skip-special applies only with --decode");
    return 0;
}

/* Parses whitespace-separated decimal ids into a malloc'd array. */
static kvs_status_e parse_ids(const char *text, int32_t **ids, size_t *n)
{
    size_t cap = 64, count = 0;
    int32_t *out = malloc(cap * sizeof *out);
    const char *p = text;

    KVS_RETURN_IF(!out, KVS_ERR_NOMEM, "out of memory reading ids");
    for (;;) {
        char *end;
        long v;

        while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')
            p++;
        if (!*p)
            break;
        errno = 0;
        v = strtol(p, &end, 10);
        if (end == p || errno || v < 0 || v > INT32_MAX ||
            (*end && *end != ' ' && *end != '\t' && *end != '\n' && *end != '\r')) {
            size_t len = strcspn(p, " \t\r\n");

            free(out);
            return kvs_fail(KVS_ERR_USAGE,
                            "--decode expects non-negative integer ids separated by spaces, "
                            "got '%.*s'",
                            (int)(len > 40 ? 40 : len), p);
        }
        if (count == cap) {
            int32_t *bigger = realloc(out, 2 * cap * sizeof *out);

            if (!bigger) {
                free(out);
                return kvs_fail(KVS_ERR_NOMEM, "out of memory reading ids");
            }
            out = bigger;
            cap *= 2;
        }
        out[count++] = (int32_t)v;
        p = end;
    }
    *ids = out;
    *n = count;
    return KVS_OK;
}

static int run_decode(const char *cmd, kvs_tokenizer_t *tok, const tokenize_args_t *a)
{
    int32_t *ids = NULL;
    size_t n = 0, len;
    char *text;
    kvs_status_e rc = parse_ids(a->decode, &ids, &n);

    if (rc != KVS_OK)
        return kvs_cli_report_error(cmd, rc);
    rc = kvs_tokenizer_decode(tok, ids, n, a->skip_special, &text, &len);
    free(ids);
    if (rc != KVS_OK)
        return kvs_cli_report_error(cmd, rc);
    if (fwrite(text, 1, len, stdout) != len || fflush(stdout) != 0) {
        free(text);
        fprintf(stderr, "kvsim %s: error: cannot write to standard output\n", cmd);
        return KVS_EXIT_ERROR;
    }
    free(text);
    return KVS_EXIT_OK;
}

static int run_encode(const char *cmd, kvs_tokenizer_t *tok, const tokenize_args_t *a)
{
    char *file_text = NULL, *rendered = NULL;
    const char *text = a->text;
    size_t len = text ? strlen(text) : 0;
    int32_t *ids = NULL;
    size_t n = 0;
    kvs_status_e rc = KVS_OK;

    if (a->file) {
        rc = kvs_read_file(a->file, &file_text, &len);
        text = file_text;
    }
    if (rc == KVS_OK && a->chat) {
        kvs_chat_message_t messages[2];
        size_t n_messages = 0;
        const char *template_name;

        if (a->system)
            messages[n_messages++] = (kvs_chat_message_t){"system", a->system};
        if (memchr(text, '\0', len))
            rc = kvs_fail(KVS_ERR_INVALID, "the text contains a NUL byte, which --chat cannot "
                                           "place in a message; remove it");
        messages[n_messages++] = (kvs_chat_message_t){"user", text};
        if (rc == KVS_OK)
            rc = kvs_tokenizer_render_chat(tok, messages, n_messages, 1, &rendered,
                                           &template_name);
        text = rendered;
        len = rendered ? strlen(rendered) : 0;
    }
    if (rc == KVS_OK)
        rc = kvs_tokenizer_encode(tok, text, len, a->add_special, &ids, &n);
    free(file_text);
    free(rendered);
    if (rc != KVS_OK)
        return kvs_cli_report_error(cmd, rc);

    for (size_t i = 0; i < n; i++)
        printf(i ? " %d" : "%d", ids[i]);
    printf("\n");
    free(ids);
    if (fflush(stdout) != 0) {
        fprintf(stderr, "kvsim %s: error: cannot write to standard output\n", cmd);
        return KVS_EXIT_ERROR;
    }
    return KVS_EXIT_OK;
}

int kvs_cmd_tokenize(int argc, char **argv)
{
    tokenize_args_t a;
    kvs_tokenizer_t *tok;
    kvs_status_e rc;
    int status = parse_args(argc, argv, &a);

    if (status < 0)
        return KVS_EXIT_OK;
    if (status > 0)
        return status;

    rc = kvs_tokenizer_load(a.model_dir, &tok);
    if (rc != KVS_OK)
        return kvs_cli_report_error(argv[0], rc);
    status = a.decode ? run_decode(argv[0], tok, &a) : run_encode(argv[0], tok, &a);
    kvs_tokenizer_free(tok);
    return status;
}
