/* cmd_model.c: placeholder until the 'model' subcommand lands. */
#include "cli.h"

#include <stdio.h>

int kvs_cmd_model(int argc, char **argv)
{
    (void)argc;
    fprintf(stderr, "kvsim %s: not built yet\n", argv[0]);
    return KVS_EXIT_ERROR;
}
