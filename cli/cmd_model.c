/* cmd_model.c: 'kvsim model synth', synthetic SmolLM2-shaped model folders. */
#include "cli.h"

#include "../capture/capture.h"

#include <stdio.h>
#include <string.h>

static const char usage_text[] =
    "usage: kvsim model synth --shape smollm2-135m|smollm2-360m|smollm2-1.7b -o DIR [--seed S]\n"
    "\n"
    "Writes a model folder with the exact config.json of the SmolLM2 size and\n"
    "seeded random BF16 weights (model.safetensors), so capture and its\n"
    "benchmarks run without a real checkpoint. config.json carries\n"
    "\"kvsim_synthetic\": true and every trace made from it says so.\n"
    "\n"
    "  --shape NAME   smollm2-135m (270 MB), smollm2-360m (720 MB) or smollm2-1.7b (3.4 GB)\n"
    "  -o, --out DIR  folder to write (created if missing)\n"
    "  --seed S       weight seed, default 0; the same seed gives identical weights\n";

static int cmd_synth(const char *cmd, int argc, char **argv)
{
    const char *shape = NULL, *out = NULL, *seed_text = NULL;
    uint64_t seed = 0;
    kvs_status_e rc;

    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        const char **value;

        if (!strcmp(arg, "--help") || !strcmp(arg, "-h")) {
            fputs(usage_text, stdout);
            return KVS_EXIT_OK;
        }
        if (!strcmp(arg, "--shape"))
            value = &shape;
        else if (!strcmp(arg, "-o") || !strcmp(arg, "--out"))
            value = &out;
        else if (!strcmp(arg, "--seed"))
            value = &seed_text;
        else
            return kvs_cli_usage_error(cmd, "unknown option '%s'", arg);
        if (i + 1 >= argc)
            return kvs_cli_usage_error(cmd, "%s needs a value", arg);
        *value = argv[++i];
    }
    if (!shape)
        return kvs_cli_usage_error(cmd, "--shape is required");
    if (!out)
        return kvs_cli_usage_error(cmd, "-o DIR is required");
    if (seed_text && (rc = kvs_cli_parse_u64("--seed", seed_text, &seed)) != KVS_OK)
        return kvs_cli_report_error(cmd, rc);

    rc = kvs_model_synth(shape, out, seed);
    if (rc != KVS_OK)
        return kvs_cli_report_error(cmd, rc);
    printf("wrote synthetic %s (seed %llu) to %s\n", shape, (unsigned long long)seed, out);
    return KVS_EXIT_OK;
}

int kvs_cmd_model(int argc, char **argv)
{
    if (argc < 2) {
        fputs(usage_text, stderr);
        return KVS_EXIT_USAGE;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        fputs(usage_text, stdout);
        return KVS_EXIT_OK;
    }
    if (!strcmp(argv[1], "synth"))
        return cmd_synth("model synth", argc - 1, argv + 1);
    return kvs_cli_usage_error("model", "unknown subcommand '%s'; use 'synth'", argv[1]);
}
