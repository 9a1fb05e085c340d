/*
** pool.h: worker threads that help the calling thread with one step.
**
** Decode issues a few hundred short parallel steps per token, on machines
** where other processes may hold the cores. A step therefore never waits
** for a worker to wake up: the caller starts on the work at once, workers
** join while the step is still open, and the caller waits only for the
** workers that joined. Work must be handed out through a shared atomic
** counter in ctx (each thread takes items until none are left), so that
** whichever threads run fn complete all of it.
*/
#ifndef KVS_POOL_H
#define KVS_POOL_H

#include "../common/kvs_common.h"

#include <stdint.h>

typedef struct kvs_pool kvs_pool_t;

/* fn runs on the caller (tid 0) and on each worker that joins (tids 1..);
** tid indexes per-thread scratch. */
typedef void (*kvs_pool_fn)(void *ctx, uint32_t tid);

/* n_threads counts the calling thread, so 1 starts no worker. */
kvs_status_e kvs_pool_create(uint32_t n_threads, kvs_pool_t **out);
void kvs_pool_destroy(kvs_pool_t *p);
uint32_t kvs_pool_threads(const kvs_pool_t *p);

/* Runs fn as described above and returns when every thread that ran it has
** returned. */
void kvs_pool_run(kvs_pool_t *p, kvs_pool_fn fn, void *ctx);

/* Threads to use by default: KVSIM_THREADS when set to 1..256, else the
** online CPU count capped at 8. */
uint32_t kvs_pool_default_threads(void);

/* Fails with KVS_ERR_USAGE when KVSIM_THREADS is set but is not a count
** from 1 to 256, which kvs_pool_default_threads would otherwise ignore. */
kvs_status_e kvs_pool_check_env(void);

#endif
