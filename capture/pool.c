/*
** pool.c: workers that join a step while it is open.
**
** One 64-bit word carries the step: generation (high 32 bits), an open
** flag (bit 31) and the number of workers that joined (low 31 bits).
**
**   caller: publish {gen+1, open, 0} -> run fn -> close (clear open,
**           read joined) -> wait until finished == joined
**   worker: wait for a new gen -> CAS joined+1 while open and same gen ->
**           run fn -> finished += 1
**
** Invariants: (1) a worker reads fn and ctx only after joining, and the
** caller changes them only after every joined worker has finished, so ctx
** on the caller's stack stays valid; (2) a worker that finds the step
** closed skips it without touching ctx.
*/
#include "pool.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define cpu_relax() _mm_pause()
#else
#define cpu_relax() ((void)0)
#endif

#define OPEN_BIT (1ull << 31)
#define JOINED_MASK (OPEN_BIT - 1)

/* Spin iterations before a worker sleeps: long enough to cover the gap
** between two steps of one decode token, short enough not to burn a core
** between tokens when sampling or trace writing runs. */
#define SPIN_LIMIT 20000

struct kvs_pool {
    uint32_t n_threads;
    pthread_t *threads;
    uint32_t started;
    pthread_mutex_t lock;
    pthread_cond_t wake;
    _Atomic uint64_t state;
    atomic_uint finished;
    atomic_int sleepers;
    atomic_int stop;
    kvs_pool_fn fn;
    void *ctx;
};

typedef struct worker_arg {
    kvs_pool_t *pool;
    uint32_t tid;
} worker_arg_t;

static uint32_t state_gen(uint64_t s)
{
    return (uint32_t)(s >> 32);
}

/* Waits for a generation other than seen; returns 0 when stopping. */
static int wait_new_step(kvs_pool_t *p, uint32_t seen)
{
    for (int spins = 0; spins < SPIN_LIMIT; spins++) {
        if (state_gen(atomic_load_explicit(&p->state, memory_order_acquire)) != seen)
            return 1;
        if (atomic_load_explicit(&p->stop, memory_order_relaxed))
            return 0;
        cpu_relax();
    }
    pthread_mutex_lock(&p->lock);
    atomic_fetch_add(&p->sleepers, 1);
    while (state_gen(atomic_load(&p->state)) == seen && !atomic_load(&p->stop))
        pthread_cond_wait(&p->wake, &p->lock);
    atomic_fetch_sub(&p->sleepers, 1);
    pthread_mutex_unlock(&p->lock);
    return !atomic_load(&p->stop);
}

static void *worker_main(void *arg)
{
    worker_arg_t *wa = arg;
    kvs_pool_t *p = wa->pool;
    uint32_t tid = wa->tid, seen = 0;

    free(wa);
    while (wait_new_step(p, seen)) {
        uint64_t s = atomic_load(&p->state);
        seen = state_gen(s);

        int joined = 0;
        while ((s & OPEN_BIT) && state_gen(s) == seen) {
            if (atomic_compare_exchange_weak(&p->state, &s, s + 1)) {
                joined = 1;
                break;
            }
        }
        if (!joined)
            continue;
        p->fn(p->ctx, tid);
        atomic_fetch_add_explicit(&p->finished, 1, memory_order_release);
    }
    return NULL;
}

kvs_status_e kvs_pool_create(uint32_t n_threads, kvs_pool_t **out)
{
    kvs_pool_t *p = calloc(1, sizeof *p);

    *out = NULL;
    KVS_RETURN_IF(!p, KVS_ERR_NOMEM, "out of memory creating a thread pool");
    p->n_threads = n_threads ? n_threads : 1;
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->wake, NULL);
    p->threads = calloc(p->n_threads, sizeof *p->threads);
    if (!p->threads) {
        kvs_pool_destroy(p);
        return kvs_fail(KVS_ERR_NOMEM, "out of memory creating a thread pool");
    }
    for (uint32_t t = 1; t < p->n_threads; t++) {
        worker_arg_t *wa = malloc(sizeof *wa);
        if (wa) {
            wa->pool = p;
            wa->tid = t;
        }
        if (!wa || pthread_create(&p->threads[t], NULL, worker_main, wa) != 0) {
            free(wa);
            kvs_pool_destroy(p);
            return kvs_fail(KVS_ERR_INTERNAL, "cannot start worker thread %u of %u", t,
                            n_threads);
        }
        p->started = t;
    }
    *out = p;
    return KVS_OK;
}

void kvs_pool_destroy(kvs_pool_t *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&p->lock);
    atomic_store(&p->stop, 1);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->lock);
    for (uint32_t t = 1; t <= p->started; t++)
        pthread_join(p->threads[t], NULL);
    pthread_mutex_destroy(&p->lock);
    pthread_cond_destroy(&p->wake);
    free(p->threads);
    free(p);
}

uint32_t kvs_pool_threads(const kvs_pool_t *p)
{
    return p->n_threads;
}

void kvs_pool_run(kvs_pool_t *p, kvs_pool_fn fn, void *ctx)
{
    if (p->n_threads == 1) {
        fn(ctx, 0);
        return;
    }
    p->fn = fn;
    p->ctx = ctx;
    atomic_store_explicit(&p->finished, 0, memory_order_relaxed);
    uint64_t gen = state_gen(atomic_load(&p->state)) + 1u;
    atomic_store(&p->state, (gen << 32) | OPEN_BIT);

    /* Taking the mutex orders the publication against a worker about to
    ** sleep, so no wake-up is lost; it is taken only when one sleeps. */
    if (atomic_load(&p->sleepers) > 0) {
        pthread_mutex_lock(&p->lock);
        pthread_cond_broadcast(&p->wake);
        pthread_mutex_unlock(&p->lock);
    }

    fn(ctx, 0);

    uint64_t s = atomic_load(&p->state);
    while (!atomic_compare_exchange_weak(&p->state, &s, s & ~OPEN_BIT))
        ;
    uint32_t joined = (uint32_t)(s & JOINED_MASK);

    /* A joined worker that lost its core finishes only when rescheduled;
    ** yielding after a short spin hands the core over instead of burning it. */
    for (int spins = 0; atomic_load_explicit(&p->finished, memory_order_acquire) != joined; spins++) {
        if (spins < 2000)
            cpu_relax();
        else
            sched_yield();
    }
}

kvs_status_e kvs_pool_check_env(void)
{
    const char *env = getenv("KVSIM_THREADS");
    char *end;

    if (!env || !*env)
        return KVS_OK;
    long n = strtol(env, &end, 10);
    KVS_RETURN_IF(*end || n < 1 || n > 256, KVS_ERR_USAGE,
                  "KVSIM_THREADS=%s is not a thread count; set it to 1..256 or unset it", env);
    return KVS_OK;
}

uint32_t kvs_pool_default_threads(void)
{
    const char *env = getenv("KVSIM_THREADS");
    long n;

    if (env && *env) {
        char *end;
        n = strtol(env, &end, 10);
        if (!*end && n >= 1 && n <= 256)
            return (uint32_t)n;
    }
    n = sysconf(_SC_NPROCESSORS_ONLN);
    if (n < 1)
        n = 1;
    return n > 8 ? 8 : (uint32_t)n;
}
