/*
** testutil.h: helpers shared by the Check suites.
*/
#ifndef KVS_TESTUTIL_H
#define KVS_TESTUTIL_H

#include <check.h>
#include <stddef.h>

/* Exit status that CTest reports as "skipped". */
#define KVS_TEST_SKIP 77

/* Path of a file or folder under the shared data folder (KVS_SHARED_DIR,
** set by CTest to ../shared beside the source tree), or NULL when it does
** not exist. The returned string is static until the next call. */
const char *kvs_test_shared(const char *relative);

/* Like kvs_test_shared, but when the path is missing prints why on stderr
** and exits with KVS_TEST_SKIP, so a suite that needs the real model is
** reported as skipped, never as passed. Call it from main(), before
** srunner_run_all. */
const char *kvs_test_require_shared(const char *relative);

/* A fresh empty folder for this test's files, under KVS_TEST_TMP (or
** /tmp). The returned string is malloc'd. */
char *kvs_test_tmpdir(const char *name);

/* Runs a suite with CK_NORMAL output and returns the process exit status. */
int kvs_test_run(Suite *suite);

#endif
