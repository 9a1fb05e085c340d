/* cmd_demo.c: placeholder until the 'demo' subcommand lands. */
#include "cli.h"

#include <stdio.h>

int kvs_cmd_demo(int argc, char **argv)
{
    (void)argc;
    fprintf(stderr, "kvsim %s: not built yet\n", argv[0]);
    return KVS_EXIT_ERROR;
}
