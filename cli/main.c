/* main.c: the kvsim command, which dispatches to one subcommand. */
#include "cli.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct command {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
} command_t;

static const command_t commands[] = {
    {"demo", kvs_cmd_demo, "capture, replay every kernel and write a report, end to end"},
    {"capture", kvs_cmd_capture, "run a model over a prompt and record q/k/v into a trace"},
    {"model", kvs_cmd_model, "model folders: 'model synth' writes a synthetic SmolLM2"},
    {"trace", kvs_cmd_trace, "trace files: info, verify, export"},
    {"tokenize", kvs_cmd_tokenize, "encode text to token ids or decode ids to text"},
    {"kernels", kvs_cmd_kernels, "list cache kernels, their parameters and defaults"},
    {"cost", kvs_cmd_cost, "bytes stored and read per decode step for a kernel on a model"},
    {"bench", kvs_cmd_bench, "time kernels' append and attention steps on trace data"},
    {"replay", kvs_cmd_replay, "replay kernels over traces and store fidelity in SQLite"},
    {"report", kvs_cmd_report, "turn a results database into gnuplot figures and HTML"},
    {"db", kvs_cmd_db, "results databases: init, migrate, info, merge shards"},
};

static void print_usage(FILE *out)
{
    fprintf(out, "usage: kvsim COMMAND [OPTIONS]   (kvsim COMMAND --help for details)\n\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(out, "  %-9s %s\n", commands[i].name, commands[i].summary);
    fprintf(out, "\nkvsim %s: KV-cache compression simulator. See README.md.\n", kvs_version());
}

int main(int argc, char **argv)
{
    const char *level = getenv("KVSIM_LOG");

    if (level)
        kvs_log_level = atoi(level);
    if (argc < 2) {
        print_usage(stderr);
        return KVS_EXIT_USAGE;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        print_usage(stdout);
        return KVS_EXIT_OK;
    }
    if (!strcmp(argv[1], "--version")) {
        printf("kvsim %s\n", kvs_version());
        return KVS_EXIT_OK;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++) {
        if (!strcmp(argv[1], commands[i].name))
            return commands[i].run(argc - 1, argv + 1);
    }
    fprintf(stderr, "kvsim: error: unknown command '%s'\n\n", argv[1]);
    print_usage(stderr);
    return KVS_EXIT_USAGE;
}
