/* cmd_db.c: kvsim db: merge shard databases, migrate and inspect files. */
#include "cli.h"

#include "../db/db.h"

#include <sqlite3.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

/* Usage of each subcommand, without the "usage: " prefix. */
static const char help_merge[] =
    "kvsim db merge OUT IN...   combine shard databases (kvsim replay --shard K/N) into\n"
    "                                  the new file OUT; every input must have this kvsim's\n"
    "                                  schema version, and a unit present in several inputs\n"
    "                                  must have identical results\n";
static const char help_init[] =
    "kvsim db init DB           create an empty results database (replay also creates one)\n";
static const char help_migrate[] =
    "kvsim db migrate DB        upgrade DB to this kvsim's schema version in place\n";
static const char help_info[] =
    "kvsim db info DB           print the schema version and row counts\n";

static const char help_options[] =
    "\nOptions of every subcommand: -h, --help prints its usage; '--' ends the options, so a\n"
    "following path may start with '-'.\n\n"
    "The schema, every column and example queries: docs/schema.md.\n";

static void print_help(FILE *out)
{
    fprintf(out, "usage: %s       %s       %s       %s%s", help_merge, help_init, help_migrate, help_info,
            help_options);
}

/* Handles the options of subcommand argv[0], which takes only paths:
** prints help for -h or --help, rejects any other argument that starts with
** '-', and drops a '--' separator. Returns -1 when the caller should go on
** with the remaining paths in argv[1..*argc-1], else the exit status. */
static int parse_paths(int *argc, char **argv, const char *help)
{
    int n = 1, options_done = 0;

    for (int i = 1; i < *argc; i++) {
        const char *arg = argv[i];
        if (!options_done && (!strcmp(arg, "-h") || !strcmp(arg, "--help"))) {
            printf("usage: %s%s", help, help_options);
            return KVS_EXIT_OK;
        }
        if (!options_done && !strcmp(arg, "--")) {
            options_done = 1;
            continue;
        }
        if (!options_done && arg[0] == '-' && arg[1] != '\0')
            return kvs_cli_usage_error("db", "unknown option '%s' for db %s; db %s takes only paths (use '--' "
                                       "before a path that starts with '-')",
                                       arg, argv[0], argv[0]);
        argv[n++] = argv[i];
    }
    *argc = n;
    return -1;
}

static int cmd_merge(int argc, char **argv)
{
    kvs_status_e rc;
    int parsed = parse_paths(&argc, argv, help_merge);

    if (parsed >= 0)
        return parsed;

    if (argc < 3)
        return kvs_cli_usage_error("db", "merge expects OUT and at least one IN database");
    rc = kvs_db_merge(argv[1], (const char *const *)argv + 2, (uint32_t)(argc - 2));
    if (rc != KVS_OK)
        return kvs_cli_report_error("db merge", rc);
    fprintf(stderr, "kvsim db merge: wrote %s from %d input%s\n", argv[1], argc - 2, argc == 3 ? "" : "s");
    return KVS_EXIT_OK;
}

static int cmd_migrate(int argc, char **argv)
{
    struct stat st;
    kvs_db_t *db;
    kvs_status_e rc;
    int parsed = parse_paths(&argc, argv, help_migrate);

    if (parsed >= 0)
        return parsed;

    if (argc != 2)
        return kvs_cli_usage_error("db", "migrate expects one database path");

    /* A read-only open succeeds only on a current file. */
    rc = kvs_db_open_readonly(argv[1], &db);
    if (rc == KVS_OK) {
        printf("%s: schema version %d, already current\n", argv[1], kvs_db_file_version(db));
        kvs_db_close(db);
        return KVS_EXIT_OK;
    }
    if (rc != KVS_ERR_DB_SCHEMA)
        return kvs_cli_report_error("db migrate", rc);

    /* An empty file gets a fresh schema, as db init would create. */
    int was_empty = stat(argv[1], &st) == 0 && st.st_size == 0;
    rc = kvs_db_open(argv[1], &db);
    if (rc != KVS_OK)
        return kvs_cli_report_error("db migrate", rc);
    printf("%s: %s schema version %d\n", argv[1], was_empty ? "was empty; created" : "migrated to",
           kvs_db_file_version(db));
    kvs_db_close(db);
    return KVS_EXIT_OK;
}

static int cmd_init(int argc, char **argv)
{
    kvs_db_t *db;
    kvs_status_e rc;
    int parsed = parse_paths(&argc, argv, help_init);

    if (parsed >= 0)
        return parsed;

    if (argc != 2)
        return kvs_cli_usage_error("db", "init expects one database path");
    rc = kvs_db_open(argv[1], &db);
    if (rc != KVS_OK)
        return kvs_cli_report_error("db init", rc);
    printf("%s: schema version %d\n", argv[1], kvs_db_file_version(db));
    kvs_db_close(db);
    return KVS_EXIT_OK;
}

static int print_count(sqlite3 *conn, const char *label, const char *sql)
{
    sqlite3_stmt *st;
    int rc;

    if (sqlite3_prepare_v2(conn, sql, -1, &st, NULL) != SQLITE_OK) {
        fprintf(stderr, "kvsim db info: error: query failed: %s\n", sqlite3_errmsg(conn));
        return KVS_EXIT_ERROR;
    }
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *key = sqlite3_column_count(st) > 1 ? (const char *)sqlite3_column_text(st, 1) : NULL;
        printf("%-10s %lld%s%s%s\n", label, (long long)sqlite3_column_int64(st, 0), key ? " (" : "", key ? key : "",
               key ? ")" : "");
    }
    sqlite3_finalize(st);
    return rc == SQLITE_DONE ? KVS_EXIT_OK : KVS_EXIT_ERROR;
}

static int cmd_info(int argc, char **argv)
{
    kvs_db_t *db;
    kvs_status_e rc;
    int status = KVS_EXIT_OK;
    int parsed = parse_paths(&argc, argv, help_info);

    if (parsed >= 0)
        return parsed;

    if (argc != 2)
        return kvs_cli_usage_error("db", "info expects one database path");
    rc = kvs_db_open_readonly(argv[1], &db);
    if (rc != KVS_OK)
        return kvs_cli_report_error("db info", rc);
    sqlite3 *conn = kvs_db_sqlite(db);
    printf("%-10s %d\n", "schema", kvs_db_file_version(db));
    status |= print_count(conn, "traces", "SELECT COUNT(*) FROM traces");
    status |= print_count(conn, "runs", "SELECT COUNT(*), status FROM runs GROUP BY status ORDER BY status");
    status |= print_count(conn, "units", "SELECT COUNT(*) FROM units");
    status |= print_count(conn, "metrics", "SELECT COUNT(*) FROM metrics");
    status |= print_count(conn, "timings", "SELECT COUNT(*) FROM timings");
    kvs_db_close(db);
    return status ? KVS_EXIT_ERROR : KVS_EXIT_OK;
}

int kvs_cmd_db(int argc, char **argv)
{
    if (argc < 2) {
        print_help(stderr);
        return KVS_EXIT_USAGE;
    }
    if (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
        print_help(stdout);
        return KVS_EXIT_OK;
    }
    if (!strcmp(argv[1], "merge"))
        return cmd_merge(argc - 1, argv + 1);
    if (!strcmp(argv[1], "init"))
        return cmd_init(argc - 1, argv + 1);
    if (!strcmp(argv[1], "migrate"))
        return cmd_migrate(argc - 1, argv + 1);
    if (!strcmp(argv[1], "info"))
        return cmd_info(argc - 1, argv + 1);
    return kvs_cli_usage_error("db", "unknown subcommand '%s'; use merge, init, migrate or info", argv[1]);
}
