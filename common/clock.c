/* clock.c: the monotonic wall clock that stage and step timings use. */
#include "kvs_common.h"

#include <time.h>

double kvs_now_seconds(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}
