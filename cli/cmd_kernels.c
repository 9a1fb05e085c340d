/* cmd_kernels.c: 'kvsim kernels' lists codecs, presets and policies. */
#include "cli.h"

#include "../kernels/kernel.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *out)
{
    fprintf(out,
            "usage: kvsim kernels [--json]\n\n"
            "Lists every cache kernel: codecs (key and value paths), presets and selection\n"
            "policies, with each parameter's default, accepted values and meaning.\n\n"
            "  --json   print a JSON array of objects with name, role, description, params\n");
}

int kvs_cmd_kernels(int argc, char **argv)
{
    int json = 0;

    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--json")) {
            json = 1;
        } else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage(stdout);
            return KVS_EXIT_OK;
        } else {
            return kvs_cli_usage_error(argv[0], "unknown argument '%s'", argv[i]);
        }
    }

    char *text = json ? kvs_kernel_list_json() : kvs_kernel_list_text();
    if (!text) {
        fprintf(stderr, "kvsim %s: error: out of memory writing the kernel list\n", argv[0]);
        return KVS_EXIT_ERROR;
    }
    fputs(text, stdout);
    if (json)
        fputc('\n', stdout);
    free(text);
    return fflush(stdout) == 0 ? KVS_EXIT_OK : KVS_EXIT_ERROR;
}
