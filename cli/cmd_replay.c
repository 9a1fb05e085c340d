/* cmd_replay.c: kvsim replay. */
#include "cli.h"

#include "common/fsutil.h"
#include "kernels/kernel.h"
#include "sim/replay.h"

#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char usage[] =
    "usage: kvsim replay --db DB --trace FILE [--trace FILE ...]\n"
    "                    --kernel SPEC [--kernel SPEC ...] | --kernels-file FILE\n"
    "                    [--eval decode|all|last:N|stride:N] [--max-steps N]\n"
    "                    [--threads N] [--resume] [--shard K/N] [--seed S] [--quiet]\n"
    "\n"
    "Replays each kernel over every (layer, KV head) of each trace and stores\n"
    "fidelity against exact attention in the SQLite database DB.\n"
    "\n"
    "  --db DB            results database, created when missing\n"
    "  --trace FILE       a .kvt trace from 'kvsim capture'; repeatable\n"
    "  --kernel SPEC      a kernel spec (see 'kvsim kernels'); repeatable\n"
    "  --kernels-file F   one spec per line; '#' starts a comment\n"
    "  --eval MODE        evaluated positions: decode (generated positions,\n"
    "                     default), all, last:N, or stride:N\n"
    "  --max-steps N      evaluate at most the last N selected positions per unit\n"
    "  --threads N        worker threads (default: all cores)\n"
    "  --resume           skip units already committed by an earlier run\n"
    "  --shard K/N        run only the K-th of N deterministic slices of the units\n"
    "  --seed S           seed for random rotations and sketches (default 0)\n"
    "  --quiet            no progress on stderr\n";

typedef struct string_list {
    char **items;
    uint32_t n, cap;
} string_list_t;

static int list_push(string_list_t *l, const char *s)
{
    if (l->n == l->cap) {
        uint32_t cap = l->cap ? l->cap * 2 : 8;
        char **p = realloc(l->items, cap * sizeof *p);
        if (!p)
            return -1;
        l->items = p;
        l->cap = cap;
    }
    l->items[l->n] = strdup(s);
    return l->items[l->n++] ? 0 : -1;
}

static void list_free(string_list_t *l)
{
    for (uint32_t i = 0; i < l->n; i++)
        free(l->items[i]);
    free(l->items);
}

/* Appends the specs of a --kernels-file to the list. */
static kvs_status_e read_kernels_file(const char *path, string_list_t *out)
{
    char **specs = NULL;
    uint32_t n = 0;
    kvs_status_e rc = kvs_cli_read_kernels_file(path, &specs, &n);

    for (uint32_t i = 0; i < n; i++) {
        if (rc == KVS_OK && list_push(out, specs[i]) != 0)
            rc = kvs_fail(KVS_ERR_NOMEM, "out of memory");
        free(specs[i]);
    }
    free(specs);
    return rc;
}

static kvs_status_e parse_shard(const char *text, uint32_t *k, uint32_t *n)
{
    char *end;
    unsigned long a = strtoul(text, &end, 10);

    KVS_RETURN_IF(end == text || *end != '/', KVS_ERR_USAGE, "--shard expects K/N, got '%s'", text);
    const char *rest = end + 1;
    unsigned long b = strtoul(rest, &end, 10);
    KVS_RETURN_IF(end == rest || *end || b == 0 || a < 1 || a > b || b > 1u << 20, KVS_ERR_USAGE,
                  "--shard expects K/N with 1 <= K <= N, got '%s'", text);
    *k = (uint32_t)a;
    *n = (uint32_t)b;
    return KVS_OK;
}

static void on_stop_signal(int sig)
{
    (void)sig;
    kvs_replay_request_stop();
}

int kvs_cmd_replay(int argc, char **argv)
{
    static const struct option long_options[] = {
        {"db", required_argument, NULL, 'd'},      {"trace", required_argument, NULL, 't'},
        {"kernel", required_argument, NULL, 'k'},  {"kernels-file", required_argument, NULL, 'f'},
        {"eval", required_argument, NULL, 'e'},    {"max-steps", required_argument, NULL, 'm'},
        {"threads", required_argument, NULL, 'j'}, {"resume", no_argument, NULL, 'r'},
        {"shard", required_argument, NULL, 's'},   {"seed", required_argument, NULL, 'S'},
        {"quiet", no_argument, NULL, 'q'},         {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    kvs_replay_opts_t opts = {0};
    string_list_t traces = {0}, kernels = {0};
    kvs_status_e rc = KVS_OK;
    int c, exit_code = KVS_EXIT_OK;

    optind = 1;
    opterr = 0;
    while (rc == KVS_OK && (c = getopt_long(argc, argv, "h", long_options, NULL)) != -1) {
        switch (c) {
        case 'd': opts.db_path = optarg; break;
        case 't': rc = list_push(&traces, optarg) ? kvs_fail(KVS_ERR_NOMEM, "out of memory") : KVS_OK; break;
        case 'k': rc = list_push(&kernels, optarg) ? kvs_fail(KVS_ERR_NOMEM, "out of memory") : KVS_OK; break;
        case 'f': rc = read_kernels_file(optarg, &kernels); break;
        case 'e': rc = kvs_eval_parse(optarg, &opts.eval, &opts.eval_n); break;
        case 'm': rc = kvs_cli_parse_u32("--max-steps", optarg, 1, UINT32_MAX, &opts.max_steps); break;
        case 'j': rc = kvs_cli_parse_u32("--threads", optarg, 1, 1024, &opts.threads); break;
        case 'r': opts.resume = 1; break;
        case 's': rc = parse_shard(optarg, &opts.shard_k, &opts.shard_n); break;
        case 'S': rc = kvs_cli_parse_u64("--seed", optarg, &opts.seed); break;
        case 'q': opts.quiet = 1; break;
        case 'h':
            fputs(usage, stdout);
            goto done;
        default:
            exit_code = kvs_cli_usage_error(argv[0], "unknown or incomplete option '%s'", argv[optind - 1]);
            goto done;
        }
    }
    if (rc != KVS_OK) {
        exit_code = kvs_cli_report_error(argv[0], rc);
        goto done;
    }
    if (optind < argc) {
        exit_code = kvs_cli_usage_error(argv[0], "unexpected argument '%s'", argv[optind]);
        goto done;
    }
    if (!opts.db_path) {
        exit_code = kvs_cli_usage_error(argv[0], "missing --db DB");
        goto done;
    }

    opts.traces = (const char *const *)traces.items;
    opts.n_traces = traces.n;
    opts.kernels = (const char *const *)kernels.items;
    opts.n_kernels = kernels.n;
    /* Ctrl-C and SIGTERM (a scheduler's time limit) finish the units in
    ** progress and mark the rest for --resume; SIGKILL cannot be caught,
    ** and --resume completes such runs as well. */
    struct sigaction sa = {0};
    sa.sa_handler = on_stop_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    rc = kvs_replay_run(&opts);
    if (rc != KVS_OK)
        exit_code = kvs_cli_report_error(argv[0], rc);
    else if (!opts.quiet)
        printf("replayed %u kernel(s) over %u trace(s) into %s\n", kernels.n, traces.n, opts.db_path);
done:
    list_free(&traces);
    list_free(&kernels);
    return exit_code;
}
