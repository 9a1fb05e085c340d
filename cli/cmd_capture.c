/* cmd_capture.c: placeholder until the 'capture' subcommand lands. */
#include "cli.h"

#include <stdio.h>

int kvs_cmd_capture(int argc, char **argv)
{
    (void)argc;
    fprintf(stderr, "kvsim %s: not built yet\n", argv[0]);
    return KVS_EXIT_ERROR;
}
