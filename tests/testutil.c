/* testutil.c: shared-data lookup, temporary folders and the suite runner. */
#include "testutil.h"

#include "common/fsutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

const char *kvs_test_shared(const char *relative)
{
    static char path[4096];
    const char *dir = getenv("KVS_SHARED_DIR");
    struct stat st;

    if (!dir)
        dir = "../shared";
    snprintf(path, sizeof path, "%s/%s", dir, relative);
    return stat(path, &st) == 0 ? path : NULL;
}

const char *kvs_test_require_shared(const char *relative)
{
    const char *path = kvs_test_shared(relative);

    if (!path) {
        fprintf(stderr, "SKIPPED: shared data '%s' not found under KVS_SHARED_DIR=%s; "
                        "put the shared folder beside the source tree to run this suite\n",
                relative, getenv("KVS_SHARED_DIR") ? getenv("KVS_SHARED_DIR") : "(unset)");
        exit(KVS_TEST_SKIP);
    }
    return path;
}

char *kvs_test_tmpdir(const char *name)
{
    const char *base = getenv("KVS_TEST_TMP");
    char *path = malloc(4096);
    char cmd[4200];

    if (!base)
        base = "/tmp/kvsim-tests";
    snprintf(path, 4096, "%s/%s.%ld", base, name, (long)getpid());
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", path);
    if (system(cmd) != 0)
        fprintf(stderr, "warning: could not clear %s\n", path);
    if (kvs_mkdir_p(path) != KVS_OK) {
        fprintf(stderr, "cannot create test folder %s: %s\n", path, kvs_error_message());
        exit(1);
    }
    return path;
}

int kvs_test_run(Suite *suite)
{
    SRunner *runner = srunner_create(suite);
    int failed;

    srunner_run_all(runner, CK_NORMAL);
    failed = srunner_ntests_failed(runner);
    srunner_free(runner);
    return failed == 0 ? 0 : 1;
}
