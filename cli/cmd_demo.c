/*
** cmd_demo.c: kvsim demo, the whole pipeline in one command: find a model,
** capture a trace, replay the built-in kernel list, write the report.
*/
#include "cli.h"

#include "capture/capture.h"
#include "capture/tokenizer.h"
#include "common/fsutil.h"
#include "reports/report.h"
#include "sim/replay.h"

#include <getopt.h>
#include <glob.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static const char usage[] =
    "usage: kvsim demo [--model DIR] [-o DIR] [--prompt TEXT | --prompt-len N]\n"
    "                  [--new-tokens N] [--threads N] [--quiet]\n"
    "\n"
    "Captures a trace, replays every built-in kernel over it and writes a report:\n"
    "DIR/trace.kvt, DIR/results.db and DIR/report/index.html (DIR defaults to\n"
    "demo-out). An earlier results.db in DIR is replaced.\n"
    "\n"
    "The model is --model DIR, else $KVSIM_MODEL, else SmolLM2-135M-Instruct in\n"
    "the Hugging Face hub cache ($HF_HUB_CACHE, $HF_HOME/hub or\n"
    "~/.cache/huggingface/hub), else a synthetic SmolLM2-135M with random\n"
    "weights, generated into DIR and labelled synthetic everywhere.\n"
    "\n"
    "The prompt is --prompt TEXT, tokenized with the folder's tokenizer.json;\n"
    "else, for models smaller than SmolLM2 with a tokenizer, the opening line of\n"
    "a children's story; else --prompt-len token ids from a fixed-seed generator.\n"
    "\n"
    "  --prompt TEXT    prompt text (needs tokenizer.json in the model folder)\n"
    "  --prompt-len N   length of the generated-id prompt (default: 2048 for\n"
    "                   SmolLM2-sized models, else a quarter of the context)\n"
    "  --new-tokens N   generated positions (default: 128 for SmolLM2-sized\n"
    "                   models, else 256)\n"
    "  -o, --output DIR output folder (default demo-out)\n"
    "  --threads N      replay threads (default: all cores)\n"
    "  --quiet          no progress messages on stderr\n";

/* Kernels the demo replays: the reference and dense formats, the quantized
** caches users compare against Hugging Face's (storage-only, as HF runs
** them, and on codes), compressed-key codecs, a value-path approximation and
** eviction policies. group_channels is the channel group size a spec
** assumes; on models with a smaller head_dim the demo sets group=head_dim,
** since a group cannot span more channels than a head has. */
typedef struct demo_kernel {
    const char *spec;
    uint32_t group_channels;  /* 0: no channel group */
} demo_kernel_t;

static const demo_kernel_t demo_kernels[] = {
    {"dense:dtype=f32", 0},
    {"dense:dtype=bf16", 0},
    {"dense:dtype=fp8-e4m3", 0},
    {"quanto:bits=4", 64},
    {"quanto:bits=2", 64},
    {"quanto:bits=4,exec=compressed", 64},
    {"hqq:bits=4", 64},
    {"hqq:bits=4,optimize=1", 64},
    {"kivi:bits=2", 32},
    {"kivi:bits=4", 32},
    {"turboquant:bits=3", 0},
    {"turboquant-prod:bits=3/dense:dtype=bf16", 0},
    {"qjl:bits=2/dense:dtype=bf16", 0},
    {"turboquant-prod:bits=3/window:inner=turboquant-mse,bits=2", 0},
    {"streamingllm:budget=25%", 0},
    {"h2o:budget=25%", 0},
    {"snapkv:budget=25%/quanto:bits=4", 64},
    {"quest:budget=25%", 0},
};
#define N_DEMO_KERNELS (sizeof demo_kernels / sizeof demo_kernels[0])

/* Kernels the demo times with kvsim bench: the backends of the write-up's
** comparison (dense, quanto 4 and 2 bits, HQQ, all storage-only as Hugging
** Face runs them) and quanto 4-bit executed on its codes. Indices into
** demo_kernels. */
static const uint32_t demo_bench_kernels[] = {1, 3, 4, 6, 5};
#define N_DEMO_BENCH (sizeof demo_bench_kernels / sizeof demo_bench_kernels[0])

/* Writes the demo's specs for a model with the given head_dim into specs,
** which then contains N_DEMO_KERNELS malloc'd strings. */
static kvs_status_e demo_specs(uint32_t head_dim, char **specs)
{
    for (size_t i = 0; i < N_DEMO_KERNELS; i++) {
        const demo_kernel_t *k = &demo_kernels[i];
        size_t n = strlen(k->spec) + 32;

        specs[i] = malloc(n);
        KVS_RETURN_IF(!specs[i], KVS_ERR_NOMEM, "out of memory");
        if (k->group_channels && head_dim < k->group_channels)
            snprintf(specs[i], n, "%s,group=%u", k->spec, head_dim);
        else
            snprintf(specs[i], n, "%s", k->spec);
    }
    return KVS_OK;
}

/* Prompt of small real models: generation from it runs long enough for the
** quanto residual (127 positions) to fill and be re-quantized. */
static const char story_prompt[] = "Once upon a time, there was a little girl named Lily.";

typedef struct demo_opts {
    const char *model;
    const char *out_dir;
    const char *prompt;
    uint32_t prompt_len, new_tokens, threads;
    int quiet;
} demo_opts_t;

static int is_model_dir(const char *dir)
{
    char path[4200];
    struct stat st;

    snprintf(path, sizeof path, "%s/config.json", dir);
    return stat(path, &st) == 0;
}

/* Looks for SmolLM2-135M-Instruct in the Hugging Face hub cache layout:
** CACHE/models--HuggingFaceTB--SmolLM2-135M-Instruct/snapshots/REV/. */
static char *find_hub_model(void)
{
    char cache[4096], pattern[4200];
    const char *hub = getenv("HF_HUB_CACHE"), *home = getenv("HF_HOME");
    glob_t g;
    char *found = NULL;

    if (hub)
        snprintf(cache, sizeof cache, "%s", hub);
    else if (home)
        snprintf(cache, sizeof cache, "%s/hub", home);
    else if (getenv("HOME"))
        snprintf(cache, sizeof cache, "%s/.cache/huggingface/hub", getenv("HOME"));
    else
        return NULL;
    snprintf(pattern, sizeof pattern,
             "%s/models--HuggingFaceTB--SmolLM2-135M-Instruct/snapshots/*/config.json", cache);
    if (glob(pattern, 0, NULL, &g) == 0 && g.gl_pathc > 0) {
        found = strdup(g.gl_pathv[g.gl_pathc - 1]);
        if (found)
            *strrchr(found, '/') = '\0';
    }
    globfree(&g);
    return found;
}

/* Resolves the model folder; makes the synthetic model when none is found.
** *synthetic is set when the demo made the model itself. */
static kvs_status_e resolve_model(const demo_opts_t *o, char **model_dir, int *synthetic)
{
    const char *env = getenv("KVSIM_MODEL");
    char path[4096];

    *synthetic = 0;
    if (o->model) {
        KVS_RETURN_IF(!is_model_dir(o->model), KVS_ERR_NOT_FOUND,
                      "--model %s: no config.json there; pass a Hugging Face model folder", o->model);
        *model_dir = strdup(o->model);
        return KVS_OK;
    }
    if (env && *env) {
        KVS_RETURN_IF(!is_model_dir(env), KVS_ERR_NOT_FOUND,
                      "KVSIM_MODEL=%s: no config.json there; point it at a Hugging Face model folder",
                      env);
        *model_dir = strdup(env);
        return KVS_OK;
    }
    *model_dir = find_hub_model();
    if (*model_dir)
        return KVS_OK;

    KVS_FORWARD(kvs_path_join(path, sizeof path, o->out_dir, "synthetic-smollm2-135m"));
    if (!o->quiet)
        fprintf(stderr, "demo: no SmolLM2 found (--model, KVSIM_MODEL, Hugging Face cache); "
                        "using a SYNTHETIC SmolLM2-135M with random weights in %s\n", path);
    if (!is_model_dir(path))
        KVS_FORWARD(kvs_model_synth("smollm2-135m", path, 1));
    *model_dir = strdup(path);
    *synthetic = 1;
    return KVS_OK;
}

/* Reads the few config fields the demo needs to size the prompt. */
static kvs_status_e read_config(const char *model_dir, uint32_t *vocab, uint32_t *context,
                                int32_t *bos, uint32_t *hidden, uint32_t *head_dim)
{
    char path[4096];
    json_error_t jerr;
    json_t *cfg;

    KVS_FORWARD(kvs_path_join(path, sizeof path, model_dir, "config.json"));
    cfg = json_load_file(path, 0, &jerr);
    KVS_RETURN_IF(!json_is_object(cfg), KVS_ERR_CONFIG, "%s: %s (line %d)", path, jerr.text, jerr.line);
    json_t *v = json_object_get(cfg, "vocab_size");
    json_t *c = json_object_get(cfg, "max_position_embeddings");
    json_t *b = json_object_get(cfg, "bos_token_id");
    json_t *h = json_object_get(cfg, "hidden_size");
    json_t *hd = json_object_get(cfg, "head_dim");
    json_t *nh = json_object_get(cfg, "num_attention_heads");
    *vocab = json_is_integer(v) ? (uint32_t)json_integer_value(v) : 0;
    *context = json_is_integer(c) ? (uint32_t)json_integer_value(c) : 2048;
    *bos = json_is_integer(b) ? (int32_t)json_integer_value(b) : -1;
    *hidden = json_is_integer(h) ? (uint32_t)json_integer_value(h) : 0;
    *head_dim = json_is_integer(hd) ? (uint32_t)json_integer_value(hd) : 0;
    if (*head_dim == 0 && json_is_integer(nh) && json_integer_value(nh) > 0)
        *head_dim = *hidden / (uint32_t)json_integer_value(nh);
    json_decref(cfg);
    KVS_RETURN_IF(*vocab == 0, KVS_ERR_CONFIG, "%s: missing vocab_size", path);
    return KVS_OK;
}

/* The prompt: BOS, then token ids from a fixed-seed generator, so the demo
** is the same on every machine. Ids skip the first 3 (special tokens). */
static kvs_status_e make_prompt(uint32_t n, uint32_t vocab, int32_t bos, int32_t **ids)
{
    uint64_t state = 0x9E3779B97F4A7C15ull;

    *ids = malloc(n * sizeof **ids);
    KVS_RETURN_IF(!*ids, KVS_ERR_NOMEM, "out of memory");
    for (uint32_t i = 0; i < n; i++) {
        state = state * 6364136223846793005ull + 1442695040888963407ull;
        uint32_t span = vocab > 3 ? vocab - 3 : vocab;
        (*ids)[i] = (int32_t)(3 + (state >> 33) % span);
    }
    if (bos >= 0 && (uint32_t)bos < vocab)
        (*ids)[0] = bos;
    return KVS_OK;
}

/* Tokenizes text with the model folder's tokenizer, BOS added as the
** tokenizer's post-processor does. */
static kvs_status_e tokenize_prompt(const char *model_dir, const char *text, int32_t **ids,
                                    uint32_t *n)
{
    kvs_tokenizer_t *tok;
    size_t count = 0;
    kvs_status_e rc;

    KVS_FORWARD(kvs_tokenizer_load(model_dir, &tok));
    rc = kvs_tokenizer_encode(tok, text, strlen(text), 1, ids, &count);
    kvs_tokenizer_free(tok);
    KVS_FORWARD(rc);
    KVS_RETURN_IF(count == 0, KVS_ERR_USAGE, "--prompt '%s' encodes to no tokens", text);
    *n = (uint32_t)count;
    return KVS_OK;
}

static int has_tokenizer(const char *dir)
{
    char path[4200];
    struct stat st;

    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    return stat(path, &st) == 0;
}

static void remove_db(const char *db_path)
{
    char path[4200];

    unlink(db_path);
    snprintf(path, sizeof path, "%s-wal", db_path);
    unlink(path);
    snprintf(path, sizeof path, "%s-shm", db_path);
    unlink(path);
}

/* Times the bench kernels at two context lengths, the trace's length and a
** quarter of it, and stores the timings in the database. */
static kvs_status_e run_bench(const demo_opts_t *o, char **specs, const char *trace_path,
                              const char *db_path, uint32_t n_positions)
{
    char contexts[64];
    char *argv[8 + 2 * N_DEMO_BENCH];
    int argc = 0;

    snprintf(contexts, sizeof contexts, "%u,%u", n_positions / 4 ? n_positions / 4 : 1, n_positions);
    argv[argc++] = "bench";
    argv[argc++] = "--trace";
    argv[argc++] = (char *)trace_path;
    argv[argc++] = "--db";
    argv[argc++] = (char *)db_path;
    argv[argc++] = "--context";
    argv[argc++] = contexts;
    for (size_t i = 0; i < N_DEMO_BENCH; i++) {
        argv[argc++] = "--kernel";
        argv[argc++] = specs[demo_bench_kernels[i]];
    }
    argv[argc] = NULL;
    if (!o->quiet)
        fprintf(stderr, "demo: timing %zu kernels at contexts %s with kvsim bench\n", N_DEMO_BENCH,
                contexts);

    /* kvs_cmd_bench prints its table and its own error message. */
    fflush(stdout);
    int status = kvs_cmd_bench(argc, argv);
    return status == KVS_EXIT_OK ? KVS_OK : kvs_fail(KVS_ERR_INTERNAL, "kvsim bench failed (see above)");
}

static kvs_status_e run_demo(const demo_opts_t *o)
{
    char *model_dir = NULL;
    int synthetic = 0;
    int32_t *ids = NULL;
    char trace_path[4096], db_path[4096], report_dir[4096];
    uint32_t vocab = 0, context = 0, hidden = 0, head_dim = 0;
    char *specs[N_DEMO_KERNELS] = {0};
    int32_t bos = -1;
    kvs_status_e rc;
    double t0, t1, t2, t3;

    KVS_FORWARD(kvs_mkdir_p(o->out_dir));
    KVS_FORWARD(kvs_path_join(trace_path, sizeof trace_path, o->out_dir, "trace.kvt"));
    KVS_FORWARD(kvs_path_join(db_path, sizeof db_path, o->out_dir, "results.db"));
    KVS_FORWARD(kvs_path_join(report_dir, sizeof report_dir, o->out_dir, "report"));
    KVS_FORWARD(resolve_model(o, &model_dir, &synthetic));
    KVS_RETURN_IF(!model_dir, KVS_ERR_NOMEM, "out of memory");

    rc = read_config(model_dir, &vocab, &context, &bos, &hidden, &head_dim);
    if (rc == KVS_OK)
        rc = demo_specs(head_dim, specs);

    /* The prompt: given text, a story line for small real models, or ids. */
    int smollm2_sized = hidden >= 512;
    const char *prompt_text = o->prompt;
    if (!prompt_text && !o->prompt_len && !smollm2_sized && !synthetic && has_tokenizer(model_dir))
        prompt_text = story_prompt;
    uint32_t n_prompt = 0, new_tokens = o->new_tokens;
    if (new_tokens == 0)
        new_tokens = smollm2_sized ? 128 : 256;
    if (rc == KVS_OK && prompt_text) {
        rc = tokenize_prompt(model_dir, prompt_text, &ids, &n_prompt);
    } else if (rc == KVS_OK) {
        n_prompt = o->prompt_len ? o->prompt_len : (smollm2_sized ? 2048 : context / 4);
        rc = make_prompt(n_prompt, vocab, bos, &ids);
    }
    if (rc == KVS_OK && n_prompt + new_tokens > context)
        rc = kvs_fail(KVS_ERR_USAGE, "a prompt of %u positions plus --new-tokens %u exceeds the model's "
                                     "context of %u positions", n_prompt, new_tokens, context);

    /* Stage 1: capture. */
    t0 = kvs_now_seconds();
    if (rc == KVS_OK) {
        kvs_capture_opts_t copts = {
            .model_dir = model_dir, .prompt_ids = ids, .n_prompt = n_prompt,
            .max_new_tokens = new_tokens, .temperature = 0, .top_p = 1, .seed = 1,
            .dtype = KVS_DTYPE_F32, .stop_at_eos = 0, .out_path = trace_path,
            .prompt_text = prompt_text,
        };
        kvs_capture_result_t cres;
        if (!o->quiet)
            fprintf(stderr, "demo: capturing %u prompt + %u generated positions from %s\n",
                    copts.n_prompt, new_tokens, model_dir);
        rc = kvs_capture_run(&copts, &cres);
    }

    /* Stage 2: replay into a fresh database. */
    t1 = kvs_now_seconds();
    if (rc == KVS_OK) {
        const char *traces[1] = {trace_path};
        kvs_replay_opts_t ropts = {
            .db_path = db_path, .traces = traces, .n_traces = 1, .kernels = (const char *const *)specs,
            .n_kernels = N_DEMO_KERNELS, .eval = KVS_EVAL_DECODE,
            .threads = o->threads, .quiet = o->quiet,
        };
        remove_db(db_path);
        rc = kvs_replay_run(&ropts);
    }

    /* Stage 3: time the write-up's backends. */
    t2 = kvs_now_seconds();
    if (rc == KVS_OK)
        rc = run_bench(o, specs, trace_path, db_path, n_prompt + new_tokens);

    /* Stage 4: report. */
    double t_report = kvs_now_seconds();
    if (rc == KVS_OK) {
        kvs_report_opts_t rep = {0};
        rc = kvs_report_write(db_path, report_dir, &rep);
    }
    t3 = kvs_now_seconds();

    if (rc == KVS_OK) {
        printf("model:   %s%s\n", model_dir, synthetic ? " (SYNTHETIC: random weights)" : "");
        printf("trace:   %s (capture %.1f s)\n", trace_path, t1 - t0);
        printf("results: %s (replay of %zu kernels %.1f s, bench %.1f s)\n", db_path, N_DEMO_KERNELS,
               t2 - t1, t_report - t2);
        printf("report:  %s/index.html (%.1f s)\n", report_dir, t3 - t_report);
    }
    for (size_t i = 0; i < N_DEMO_KERNELS; i++)
        free(specs[i]);
    free(ids);
    free(model_dir);
    return rc;
}

int kvs_cmd_demo(int argc, char **argv)
{
    static const struct option long_options[] = {
        {"model", required_argument, NULL, 'm'},      {"output", required_argument, NULL, 'o'},
        {"prompt", required_argument, NULL, 'P'},
        {"prompt-len", required_argument, NULL, 'p'}, {"new-tokens", required_argument, NULL, 'n'},
        {"threads", required_argument, NULL, 'j'},    {"quiet", no_argument, NULL, 'q'},
        {"help", no_argument, NULL, 'h'},             {NULL, 0, NULL, 0},
    };
    demo_opts_t o = {.out_dir = "demo-out"};
    kvs_status_e rc = KVS_OK;
    int c;

    optind = 1;
    opterr = 0;
    while (rc == KVS_OK && (c = getopt_long(argc, argv, "o:h", long_options, NULL)) != -1) {
        switch (c) {
        case 'm': o.model = optarg; break;
        case 'o': o.out_dir = optarg; break;
        case 'P': o.prompt = optarg; break;
        case 'p': rc = kvs_cli_parse_u32("--prompt-len", optarg, 1, 1u << 20, &o.prompt_len); break;
        case 'n': rc = kvs_cli_parse_u32("--new-tokens", optarg, 1, 1u << 20, &o.new_tokens); break;
        case 'j': rc = kvs_cli_parse_u32("--threads", optarg, 1, 1024, &o.threads); break;
        case 'q': o.quiet = 1; break;
        case 'h': fputs(usage, stdout); return KVS_EXIT_OK;
        default: return kvs_cli_usage_error(argv[0], "unknown or incomplete option '%s'", argv[optind - 1]);
        }
    }
    if (rc != KVS_OK)
        return kvs_cli_report_error(argv[0], rc);
    if (optind < argc)
        return kvs_cli_usage_error(argv[0], "unexpected argument '%s'", argv[optind]);
    if (o.prompt && o.prompt_len)
        return kvs_cli_usage_error(argv[0], "--prompt and --prompt-len exclude each other");

    rc = run_demo(&o);
    return rc == KVS_OK ? KVS_EXIT_OK : kvs_cli_report_error(argv[0], rc);
}
