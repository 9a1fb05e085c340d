/* test_common.c: status messages and temporary-then-rename output files. */
#include "testutil.h"

#include "common/fsutil.h"
#include "common/half.h"
#include "common/kvs_common.h"

#include <math.h>
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

/* Every finite and infinite F16 and BF16 pattern survives a round trip
** through F32, and NaN stays NaN. */
START_TEST(half_round_trips_every_pattern)
{
    for (uint32_t h = 0; h < 65536; h++) {
        float f = kvs_f16_to_f32((uint16_t)h);
        float b = kvs_bf16_to_f32((uint16_t)h);
        if (isnan(f))
            ck_assert(isnan(kvs_f16_to_f32(kvs_f32_to_f16(f))));
        else
            ck_assert_uint_eq(kvs_f32_to_f16(f), h);
        if (isnan(b))
            ck_assert(isnan(kvs_bf16_to_f32(kvs_f32_to_bf16(b))));
        else
            ck_assert_uint_eq(kvs_f32_to_bf16(b), h);
    }
}
END_TEST

/* Rounding to nearest, ties to even, at hand-picked boundaries. */
START_TEST(half_rounds_to_nearest_even)
{
    ck_assert_float_eq(kvs_f16_to_f32(kvs_f32_to_f16(1.0f + 0x1p-11f)), 1.0f);             /* tie, even down */
    ck_assert_float_eq(kvs_f16_to_f32(kvs_f32_to_f16(1.0f + 3 * 0x1p-11f)), 1.0f + 0x1p-9f); /* tie, even up */
    ck_assert_float_eq(kvs_f16_to_f32(kvs_f32_to_f16(65519.0f)), 65504.0f);
    ck_assert(isinf(kvs_f16_to_f32(kvs_f32_to_f16(65520.0f))));
    ck_assert_float_eq(kvs_f16_to_f32(kvs_f32_to_f16(0x1p-25f)), 0.0f);                     /* tie to 0 */
    ck_assert_float_eq(kvs_f16_to_f32(kvs_f32_to_f16(0x1.8p-24f)), 0x1p-23f);               /* tie, even up */
    ck_assert_float_eq(kvs_bf16_to_f32(kvs_f32_to_bf16(1.0f + 0x1p-8f)), 1.0f);             /* tie, even down */
    ck_assert_float_eq(kvs_bf16_to_f32(kvs_f32_to_bf16(1.0f + 3 * 0x1p-8f)), 1.0f + 0x1p-6f);
    ck_assert_uint_eq(kvs_f32_to_f16(-0.0f), 0x8000u);
    ck_assert_uint_eq(kvs_f32_to_bf16(-0.0f), 0x8000u);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("common");
    TCase *tc = tcase_create("core");

    tcase_add_test(tc, fail_stores_message);
    tcase_add_test(tc, strerror_names_every_code);
    tcase_add_test(tc, outfile_commit_replaces_and_abort_keeps);
    tcase_add_test(tc, half_round_trips_every_pattern);
    tcase_add_test(tc, half_rounds_to_nearest_even);
    suite_add_tcase(s, tc);
    return kvs_test_run(s);
}
