/* test_common.c: status messages and temporary-then-rename output files. */
#include "testutil.h"

#include "common/fsutil.h"
#include "common/kvs_common.h"

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

START_TEST(fail_stores_message)
{
    kvs_status_e rc = kvs_fail(KVS_ERR_IO, "cannot write %s", "x.db");

    ck_assert_int_eq(rc, KVS_ERR_IO);
    ck_assert_str_eq(kvs_error_message(), "cannot write x.db");
    kvs_error_prefix("while saving");
    ck_assert_str_eq(kvs_error_message(), "while saving: cannot write x.db");
}
END_TEST

START_TEST(strerror_names_every_code)
{
    for (int code = 0; code < KVS_STATUS_COUNT_; code++) {
        const char *name = kvs_strerror((kvs_status_e)code);
        ck_assert_ptr_nonnull(name);
        ck_assert_int_gt((int)strlen(name), 0);
    }
}
END_TEST

START_TEST(outfile_commit_replaces_and_abort_keeps)
{
    char *dir = kvs_test_tmpdir("outfile");
    char path[4200];
    char *data;
    size_t size;
    kvs_outfile_t *f;
    struct stat st;

    snprintf(path, sizeof path, "%s/a.txt", dir);
    ck_assert_int_eq(kvs_write_file(path, "first", 5), KVS_OK);

    /* An aborted write leaves the earlier file as it was. */
    ck_assert_int_eq(kvs_outfile_open(path, &f), KVS_OK);
    ck_assert_int_eq(kvs_outfile_write(f, "second", 6), KVS_OK);
    kvs_outfile_abort(f);
    ck_assert_int_eq(kvs_read_file(path, &data, &size), KVS_OK);
    ck_assert_str_eq(data, "first");
    free(data);

    ck_assert_int_eq(kvs_write_file(path, "second", 6), KVS_OK);
    ck_assert_int_eq(kvs_read_file(path, &data, &size), KVS_OK);
    ck_assert_str_eq(data, "second");
    ck_assert_uint_eq(size, 6);
    free(data);

    snprintf(path, sizeof path, "%s/no/such/folder/a.txt", dir);
    ck_assert_int_eq(kvs_write_file(path, "x", 1), KVS_ERR_IO);
    ck_assert_ptr_nonnull(strstr(kvs_error_message(), "no/such/folder"));
    ck_assert_int_ne(stat(path, &st), 0);
    free(dir);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("common");
    TCase *tc = tcase_create("core");

    tcase_add_test(tc, fail_stores_message);
    tcase_add_test(tc, strerror_names_every_code);
    tcase_add_test(tc, outfile_commit_replaces_and_abort_keeps);
    suite_add_tcase(s, tc);
    return kvs_test_run(s);
}
