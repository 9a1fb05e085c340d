/*
** pool.h: a fixed set of worker threads that run one function together.
**
** Decode issues a few hundred short parallel steps per token, so a step
** must start and finish in microseconds: workers spin briefly on a
** generation counter before sleeping on a condition variable.
*/
#ifndef KVS_POOL_H
#define KVS_POOL_H

#include "../common/kvs_common.h"

#include <stdint.h>

typedef struct kvs_pool kvs_pool_t;

/* fn runs once per thread with tid in [0, n_threads). */
typedef void (*kvs_pool_fn)(void *ctx, uint32_t tid, uint32_t n_threads);

/* n_threads counts the calling thread, so 1 starts no worker. */
kvs_status_e kvs_pool_create(uint32_t n_threads, kvs_pool_t **out);
void kvs_pool_destroy(kvs_pool_t *p);
uint32_t kvs_pool_threads(const kvs_pool_t *p);

/* Runs fn on every thread (the caller is tid 0) and returns when all
** have finished. */
void kvs_pool_run(kvs_pool_t *p, kvs_pool_fn fn, void *ctx);

/* Threads to use by default: KVSIM_THREADS when set to 1..256, else the
** online CPU count capped at 8. */
uint32_t kvs_pool_default_threads(void);

#endif
