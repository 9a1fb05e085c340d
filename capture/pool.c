/* pool.c: spin-then-sleep worker threads for short parallel steps. */
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

/* Spin iterations before a worker sleeps: long enough to cover the gap
** between two steps of one decode token, short enough not to burn a core
** between tokens when sampling or trace writing runs. */
#define SPIN_LIMIT 20000

struct kvs_pool {
    uint32_t n_threads;
    pthread_t *threads;
    pthread_mutex_t lock;
    pthread_cond_t wake;
    atomic_uint generation;
    atomic_uint pending;
    atomic_int sleepers;
    int stop;
    kvs_pool_fn fn;
    void *ctx;
    uint32_t started;
};

typedef struct worker_arg {
    kvs_pool_t *pool;
    uint32_t tid;
} worker_arg_t;

static void *worker_main(void *arg)
{
    worker_arg_t *wa = arg;
    kvs_pool_t *p = wa->pool;
    uint32_t tid = wa->tid;
    unsigned seen = 0;

    free(wa);
    for (;;) {
        unsigned gen;
        int spins = 0;

        while ((gen = atomic_load_explicit(&p->generation, memory_order_acquire)) == seen &&
               spins < SPIN_LIMIT) {
            cpu_relax();
            spins++;
        }
        if (gen == seen) {
            pthread_mutex_lock(&p->lock);
            atomic_fetch_add(&p->sleepers, 1);
            while ((gen = atomic_load(&p->generation)) == seen && !p->stop)
                pthread_cond_wait(&p->wake, &p->lock);
            atomic_fetch_sub(&p->sleepers, 1);
            pthread_mutex_unlock(&p->lock);
        }
        if (p->stop && gen == seen)
            return NULL;
        seen = gen;
        p->fn(p->ctx, tid, p->n_threads);
        atomic_fetch_sub_explicit(&p->pending, 1, memory_order_release);
    }
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
    p->stop = 1;
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
        fn(ctx, 0, 1);
        return;
    }
    p->fn = fn;
    p->ctx = ctx;
    atomic_store(&p->pending, p->n_threads - 1);

    /* The mutex orders the generation bump against a worker that is about
    ** to sleep, so no wake-up is lost; it is taken only when one sleeps. */
    if (atomic_load(&p->sleepers) > 0) {
        pthread_mutex_lock(&p->lock);
        atomic_fetch_add_explicit(&p->generation, 1, memory_order_release);
        pthread_cond_broadcast(&p->wake);
        pthread_mutex_unlock(&p->lock);
    } else {
        atomic_fetch_add_explicit(&p->generation, 1, memory_order_release);
        if (atomic_load(&p->sleepers) > 0) {
            pthread_mutex_lock(&p->lock);
            pthread_cond_broadcast(&p->wake);
            pthread_mutex_unlock(&p->lock);
        }
    }

    fn(ctx, 0, p->n_threads);
    /* A worker that lost its core finishes only when rescheduled; yielding
    ** after a short spin hands the core over instead of burning it. */
    for (int spins = 0; atomic_load_explicit(&p->pending, memory_order_acquire) != 0; spins++) {
        if (spins < 2000)
            cpu_relax();
        else
            sched_yield();
    }
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
