/* cmd_cost.c: placeholder until the 'cost' subcommand lands. */
#include "cli.h"

#include <stdio.h>

int kvs_cmd_cost(int argc, char **argv)
{
    (void)argc;
    fprintf(stderr, "kvsim %s: not built yet\n", argv[0]);
    return KVS_EXIT_ERROR;
}
