/* cmd_db.c: placeholder until the 'db' subcommand lands. */
#include "cli.h"

#include <stdio.h>

int kvs_cmd_db(int argc, char **argv)
{
    (void)argc;
    fprintf(stderr, "kvsim %s: not built yet\n", argv[0]);
    return KVS_EXIT_ERROR;
}
