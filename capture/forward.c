/* forward.c: Llama forward pass, batched prefill and single-token decode. */
#include "forward.h"

#include "matvec.h"
#include "pool.h"

#include <cblas.h>
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_CHUNK 512u
/* Rows of a BF16/F16 weight converted to F32 per OpenBLAS call in prefill:
** a 256-row panel of the widest SmolLM2 matrix is 8 MB, and each panel is
** reused by every token of the chunk. */
#define PANEL_ROWS 256u
/* Query rows per block of prefill attention, bounding the score buffer to
** QUERY_BLOCK x max_seq floats. */
#define QUERY_BLOCK 64u

struct kvs_forward {
    const kvs_model_t *m;
    kvs_model_config_t c;
    uint32_t q_dim, kv_dim, group, max_seq, n_pos, chunk;
    float scale;                 /* 1/sqrt(head_dim) */

    float *k_cache, *v_cache;    /* (layer, max_seq, kv_dim), k after RoPE */
    float *rope_cos, *rope_sin;  /* (max_seq, head_dim/2) */
    float *attn_norm, *mlp_norm; /* (layer, hidden), norm weights as F32 */
    float *final_norm;           /* (hidden) */

    /* Scratch for one chunk of tokens. */
    float *x, *xn;               /* (chunk, hidden) residual and its norm */
    float *q, *att;              /* (chunk, q_dim) */
    float *k, *k_pre, *v;        /* (chunk, kv_dim) */
    float *gate, *up;            /* (chunk, intermediate) */
    float *scores;               /* (max(QUERY_BLOCK, threads), max_seq) */
    float *panel;                /* (PANEL_ROWS, widest input) */

    kvs_pool_t *pool;
    kvs_forward_observer_fn observer;
    void *observer_ctx;
};

/* ---- helpers -------------------------------------------------------------- */

static void rmsnorm(float *out, const float *x, const float *w, uint32_t n, double eps)
{
    double ss = 0.0;

    for (uint32_t i = 0; i < n; i++)
        ss += (double)x[i] * x[i];
    float r = (float)(1.0 / sqrt(ss / n + eps));
    for (uint32_t i = 0; i < n; i++)
        out[i] = w[i] * (x[i] * r);
}

/* Rotate-half RoPE on every head of one row at position pos. */
static void rope_row(const kvs_forward_t *f, float *row, uint32_t n_heads, uint32_t pos)
{
    const uint32_t hd = f->c.head_dim, half = hd / 2;
    const float *cs = f->rope_cos + (size_t)pos * half, *sn = f->rope_sin + (size_t)pos * half;

    for (uint32_t h = 0; h < n_heads; h++) {
        float *v = row + (size_t)h * hd;
        for (uint32_t i = 0; i < half; i++) {
            float x1 = v[i], x2 = v[i + half];
            v[i] = x1 * cs[i] - x2 * sn[i];
            v[i + half] = x2 * cs[i] + x1 * sn[i];
        }
    }
}

static float silu(float x)
{
    return x / (1.0f + expf(-x));
}

/* Softmax of s[0..n) in place. */
static void softmax(float *s, uint32_t n)
{
    float maxv = s[0];
    double sum = 0.0;

    for (uint32_t j = 1; j < n; j++)
        if (s[j] > maxv)
            maxv = s[j];
    for (uint32_t j = 0; j < n; j++) {
        s[j] = expf(s[j] - maxv);
        sum += s[j];
    }
    float inv = (float)(1.0 / sum);
    for (uint32_t j = 0; j < n; j++)
        s[j] *= inv;
}

static void weight_to_f32(const kvs_weight_t *w, float *out)
{
    kvs_weight_rows_f32(w, 0, w->rows, out);
}

/* ---- decode: matrix-vector products and attention over the pool ---------- */

/* Rows per work item of a decode product: 64 rows of a SmolLM2-135M matrix
** are 72 KB of BF16, enough to amortize taking the item. */
#define MV_CHUNK_ROWS 64u

typedef struct mv_batch {
    const kvs_weight_t *w[3];
    const float *x[3];
    float *y[3];
    int n;
    atomic_uint next;   /* next work item, over the chunks of all n products */
} mv_batch_t;

static void mv_worker(void *ctx, uint32_t tid)
{
    mv_batch_t *b = ctx;
    (void)tid;

    for (;;) {
        uint32_t item = atomic_fetch_add_explicit(&b->next, 1, memory_order_relaxed);
        int j = 0;
        for (; j < b->n; j++) {
            uint32_t chunks = (b->w[j]->rows + MV_CHUNK_ROWS - 1) / MV_CHUNK_ROWS;
            if (item < chunks)
                break;
            item -= chunks;
        }
        if (j == b->n)
            return;
        uint32_t r0 = item * MV_CHUNK_ROWS;
        uint32_t r1 = r0 + MV_CHUNK_ROWS < b->w[j]->rows ? r0 + MV_CHUNK_ROWS : b->w[j]->rows;
        kvs_matvec(b->w[j], r0, r1, b->x[j], b->y[j] + r0);
    }
}

/* Weight elements (or cached floats for attention) below which a step runs
** on the calling thread: waking a worker costs microseconds, and far more
** when other processes share the cores, which a small step cannot repay. */
#define PARALLEL_MIN_ELEMS (1u << 19)

static void matvec_parallel(kvs_forward_t *f, mv_batch_t *b)
{
    uint64_t elems = 0;

    for (int j = 0; j < b->n; j++)
        elems += (uint64_t)b->w[j]->rows * b->w[j]->cols;
    atomic_init(&b->next, 0);
    if (elems < PARALLEL_MIN_ELEMS)
        mv_worker(b, 0);
    else
        kvs_pool_run(f->pool, mv_worker, b);
}

typedef struct attn_step {
    kvs_forward_t *f;
    uint32_t layer;
    uint32_t pos;       /* position of the query; keys 0..pos */
    atomic_uint next;   /* next query head to take */
} attn_step_t;

static void attn_worker(void *ctx, uint32_t tid)
{
    attn_step_t *a = ctx;
    kvs_forward_t *f = a->f;
    const uint32_t hd = f->c.head_dim, T = a->pos + 1;
    const float *kc = f->k_cache + (size_t)a->layer * f->max_seq * f->kv_dim;
    const float *vc = f->v_cache + (size_t)a->layer * f->max_seq * f->kv_dim;
    float *s = f->scores + (size_t)tid * f->max_seq;

    for (;;) {
        const uint32_t h = atomic_fetch_add_explicit(&a->next, 1, memory_order_relaxed);
        if (h >= f->c.n_heads)
            return;
        const uint32_t g = h / f->group;
        const float *qh = f->q + (size_t)h * hd;
        float *out = f->att + (size_t)h * hd;

        for (uint32_t j = 0; j < T; j++)
            s[j] = kvs_mv_dot_f32(qh, kc + (size_t)j * f->kv_dim + (size_t)g * hd, hd) * f->scale;
        softmax(s, T);
        memset(out, 0, hd * sizeof *out);
        for (uint32_t j = 0; j < T; j++)
            kvs_mv_axpy_f32(out, s[j], vc + (size_t)j * f->kv_dim + (size_t)g * hd, hd);
    }
}

/* ---- prefill: matrix products through OpenBLAS -------------------------- */

/* Y (n, w->rows, leading dimension ldy) = X (n, w->cols) * W^T + beta * Y. */
static void linear_gemm(kvs_forward_t *f, const kvs_weight_t *w, const float *X, uint32_t n,
                        float *Y, uint32_t ldy, float beta)
{
    if (w->type == KVS_WTYPE_F32) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, (int)w->rows, (int)w->cols,
                    1.0f, X, (int)w->cols, w->data, (int)w->cols, beta, Y, (int)ldy);
        return;
    }
    for (uint32_t r0 = 0; r0 < w->rows; r0 += PANEL_ROWS) {
        uint32_t nr = w->rows - r0 < PANEL_ROWS ? w->rows - r0 : PANEL_ROWS;
        kvs_weight_rows_f32(w, r0, nr, f->panel);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, (int)nr, (int)w->cols, 1.0f,
                    X, (int)w->cols, f->panel, (int)w->cols, beta, Y + r0, (int)ldy);
    }
}

/* Causal attention of rows at positions [p0, p0+n) over keys [0, p0+n). */
static void attention_gemm(kvs_forward_t *f, uint32_t layer, uint32_t p0, uint32_t n)
{
    const uint32_t hd = f->c.head_dim;
    const float *kc = f->k_cache + (size_t)layer * f->max_seq * f->kv_dim;
    const float *vc = f->v_cache + (size_t)layer * f->max_seq * f->kv_dim;

    for (uint32_t h = 0; h < f->c.n_heads; h++) {
        const uint32_t g = h / f->group;
        for (uint32_t i0 = 0; i0 < n; i0 += QUERY_BLOCK) {
            uint32_t nb = n - i0 < QUERY_BLOCK ? n - i0 : QUERY_BLOCK;
            uint32_t T = p0 + i0 + nb;
            float *S = f->scores;

            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)nb, (int)T, (int)hd, f->scale,
                        f->q + (size_t)i0 * f->q_dim + (size_t)h * hd, (int)f->q_dim,
                        kc + (size_t)g * hd, (int)f->kv_dim, 0.0f, S, (int)T);
            for (uint32_t i = 0; i < nb; i++) {
                uint32_t visible = p0 + i0 + i + 1;
                float *row = S + (size_t)i * T;
                softmax(row, visible);
                memset(row + visible, 0, (T - visible) * sizeof *row);
            }
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)nb, (int)hd, (int)T, 1.0f,
                        S, (int)T, vc + (size_t)g * hd, (int)f->kv_dim, 0.0f,
                        f->att + (size_t)i0 * f->q_dim + (size_t)h * hd, (int)f->q_dim);
        }
    }
}

/* ---- one block of tokens ------------------------------------------------- */

static kvs_status_e run_layer(kvs_forward_t *f, uint32_t l, uint32_t n)
{
    const kvs_model_config_t *c = &f->c;
    const kvs_layer_weights_t *L = kvs_model_layer(f->m, l);
    const uint32_t H = c->hidden_size, inter = c->intermediate_size, p0 = f->n_pos;

    for (uint32_t i = 0; i < n; i++)
        rmsnorm(f->xn + (size_t)i * H, f->x + (size_t)i * H, f->attn_norm + (size_t)l * H, H,
                c->rms_norm_eps);

    if (n == 1) {
        mv_batch_t b = {{&L->wq, &L->wk, &L->wv}, {f->xn, f->xn, f->xn}, {f->q, f->k, f->v}, 3, 0};
        matvec_parallel(f, &b);
    } else {
        linear_gemm(f, &L->wq, f->xn, n, f->q, f->q_dim, 0.0f);
        linear_gemm(f, &L->wk, f->xn, n, f->k, f->kv_dim, 0.0f);
        linear_gemm(f, &L->wv, f->xn, n, f->v, f->kv_dim, 0.0f);
    }

    memcpy(f->k_pre, f->k, (size_t)n * f->kv_dim * sizeof *f->k);
    for (uint32_t i = 0; i < n; i++) {
        rope_row(f, f->q + (size_t)i * f->q_dim, c->n_heads, p0 + i);
        rope_row(f, f->k + (size_t)i * f->kv_dim, c->n_kv_heads, p0 + i);
    }
    size_t cache_at = ((size_t)l * f->max_seq + p0) * f->kv_dim;
    memcpy(f->k_cache + cache_at, f->k, (size_t)n * f->kv_dim * sizeof *f->k);
    memcpy(f->v_cache + cache_at, f->v, (size_t)n * f->kv_dim * sizeof *f->v);

    if (f->observer) {
        kvs_forward_rows_t rows = {l, p0, n, f->q, f->k, f->k_pre, f->v};
        KVS_FORWARD(f->observer(f->observer_ctx, &rows));
    }

    if (n == 1) {
        attn_step_t a = {f, l, p0, 0};
        if ((uint64_t)(p0 + 1) * f->kv_dim * 2 < PARALLEL_MIN_ELEMS)
            attn_worker(&a, 0);
        else
            kvs_pool_run(f->pool, attn_worker, &a);
        /* The residual add is done after the product so x is read once. */
        mv_batch_t b = {{&L->wo}, {f->att}, {f->xn}, 1, 0};
        matvec_parallel(f, &b);
        for (uint32_t i = 0; i < H; i++)
            f->x[i] += f->xn[i];
    } else {
        attention_gemm(f, l, p0, n);
        linear_gemm(f, &L->wo, f->att, n, f->x, H, 1.0f);
    }

    for (uint32_t i = 0; i < n; i++)
        rmsnorm(f->xn + (size_t)i * H, f->x + (size_t)i * H, f->mlp_norm + (size_t)l * H, H,
                c->rms_norm_eps);
    if (n == 1) {
        mv_batch_t b = {{&L->w_gate, &L->w_up}, {f->xn, f->xn}, {f->gate, f->up}, 2, 0};
        matvec_parallel(f, &b);
    } else {
        linear_gemm(f, &L->w_gate, f->xn, n, f->gate, inter, 0.0f);
        linear_gemm(f, &L->w_up, f->xn, n, f->up, inter, 0.0f);
    }
    for (size_t i = 0; i < (size_t)n * inter; i++)
        f->gate[i] = silu(f->gate[i]) * f->up[i];
    if (n == 1) {
        mv_batch_t b = {{&L->w_down}, {f->gate}, {f->xn}, 1, 0};
        matvec_parallel(f, &b);
        for (uint32_t i = 0; i < H; i++)
            f->x[i] += f->xn[i];
    } else {
        linear_gemm(f, &L->w_down, f->gate, n, f->x, H, 1.0f);
    }
    return KVS_OK;
}

static kvs_status_e run_block(kvs_forward_t *f, const int32_t *tokens, uint32_t n, float *logits)
{
    const uint32_t H = f->c.hidden_size;
    const kvs_weight_t *emb = kvs_model_embedding(f->m);

    for (uint32_t i = 0; i < n; i++)
        kvs_weight_rows_f32(emb, (uint32_t)tokens[i], 1, f->x + (size_t)i * H);
    for (uint32_t l = 0; l < f->c.n_layers; l++)
        KVS_FORWARD(run_layer(f, l, n));
    f->n_pos += n;

    if (logits) {
        rmsnorm(f->xn, f->x + (size_t)(n - 1) * H, f->final_norm, H, f->c.rms_norm_eps);
        mv_batch_t b = {{kvs_model_lm_head(f->m)}, {f->xn}, {logits}, 1, 0};
        matvec_parallel(f, &b);
    }
    return KVS_OK;
}

kvs_status_e kvs_forward_run(kvs_forward_t *f, const int32_t *tokens, uint32_t n, float *logits)
{
    KVS_RETURN_IF(n == 0, KVS_ERR_INVALID, "forward pass called with no tokens");
    KVS_RETURN_IF((uint64_t)f->n_pos + n > f->max_seq, KVS_ERR_INVALID,
                  "%u positions run plus %u new exceed the %u reserved for this capture",
                  f->n_pos, n, f->max_seq);
    for (uint32_t i = 0; i < n; i++)
        KVS_RETURN_IF(tokens[i] < 0 || (uint32_t)tokens[i] >= f->c.vocab_size, KVS_ERR_TOKEN,
                      "token id %d at position %u is outside the vocabulary of %u tokens "
                      "(valid ids are 0..%u)",
                      tokens[i], f->n_pos + i, f->c.vocab_size, f->c.vocab_size - 1);

    for (uint32_t i0 = 0; i0 < n; i0 += f->chunk) {
        uint32_t nb = n - i0 < f->chunk ? n - i0 : f->chunk;
        KVS_FORWARD(run_block(f, tokens + i0, nb, i0 + nb == n ? logits : NULL));
    }
    return KVS_OK;
}

/* ---- setup --------------------------------------------------------------- */

static void free_scratch(kvs_forward_t *f)
{
    float **bufs[] = {&f->x, &f->xn, &f->q, &f->att, &f->k, &f->k_pre, &f->v, &f->gate, &f->up};

    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) {
        free(*bufs[i]);
        *bufs[i] = NULL;
    }
}

static kvs_status_e alloc_scratch(kvs_forward_t *f, uint32_t chunk)
{
    const size_t n = chunk;

    free_scratch(f);
    f->chunk = chunk;
    f->x = malloc(n * f->c.hidden_size * sizeof(float));
    f->xn = malloc(n * f->c.hidden_size * sizeof(float));
    f->q = malloc(n * f->q_dim * sizeof(float));
    f->att = malloc(n * f->q_dim * sizeof(float));
    f->k = malloc(n * f->kv_dim * sizeof(float));
    f->k_pre = malloc(n * f->kv_dim * sizeof(float));
    f->v = malloc(n * f->kv_dim * sizeof(float));
    f->gate = malloc(n * f->c.intermediate_size * sizeof(float));
    f->up = malloc(n * f->c.intermediate_size * sizeof(float));
    KVS_RETURN_IF(!f->x || !f->xn || !f->q || !f->att || !f->k || !f->k_pre || !f->v || !f->gate ||
                      !f->up,
                  KVS_ERR_NOMEM, "out of memory for prefill scratch of %u tokens", chunk);
    return KVS_OK;
}

/* RoPE tables rounded as Hugging Face rounds them: inv_freq = 1 /
** theta^(2i/d) in F32, angle = F32(pos * inv_freq), then cos and sin. */
static void fill_rope(kvs_forward_t *f)
{
    const uint32_t hd = f->c.head_dim, half = hd / 2;

    for (uint32_t i = 0; i < half; i++) {
        float expo = (float)(2 * i) / (float)hd;
        float inv = 1.0f / (float)pow(f->c.rope_theta, (double)expo);
        for (uint32_t p = 0; p < f->max_seq; p++) {
            float angle = inv * (float)p;
            f->rope_cos[(size_t)p * half + i] = (float)cos((double)angle);
            f->rope_sin[(size_t)p * half + i] = (float)sin((double)angle);
        }
    }
}

static kvs_status_e setup(kvs_forward_t *f, uint32_t n_threads)
{
    const kvs_model_config_t *c = &f->c;
    const size_t H = c->hidden_size, L = c->n_layers;
    const size_t cache = L * f->max_seq * f->kv_dim;
    uint32_t widest = c->hidden_size;

    if (c->intermediate_size > widest)
        widest = c->intermediate_size;
    if (f->q_dim > widest)
        widest = f->q_dim;

    /* Settle the CPU check before workers start, so they only read it. */
    (void)kvs_matvec_simd();
    KVS_FORWARD(kvs_pool_create(n_threads ? n_threads : kvs_pool_default_threads(), &f->pool));
    uint32_t score_rows = kvs_pool_threads(f->pool);
    if (score_rows < QUERY_BLOCK)
        score_rows = QUERY_BLOCK;

    f->k_cache = malloc(cache * sizeof(float));
    f->v_cache = malloc(cache * sizeof(float));
    f->rope_cos = malloc((size_t)f->max_seq * (c->head_dim / 2) * sizeof(float));
    f->rope_sin = malloc((size_t)f->max_seq * (c->head_dim / 2) * sizeof(float));
    f->attn_norm = malloc(L * H * sizeof(float));
    f->mlp_norm = malloc(L * H * sizeof(float));
    f->final_norm = malloc(H * sizeof(float));
    f->scores = malloc((size_t)score_rows * f->max_seq * sizeof(float));
    f->panel = malloc((size_t)PANEL_ROWS * widest * sizeof(float));
    KVS_RETURN_IF(!f->k_cache || !f->v_cache || !f->rope_cos || !f->rope_sin || !f->attn_norm ||
                      !f->mlp_norm || !f->final_norm || !f->scores || !f->panel,
                  KVS_ERR_NOMEM,
                  "out of memory for a KV cache of %u positions (%.1f MB); use fewer tokens",
                  f->max_seq, 2.0 * cache * sizeof(float) / 1e6);
    KVS_FORWARD(alloc_scratch(f, f->max_seq < DEFAULT_CHUNK ? f->max_seq : DEFAULT_CHUNK));

    fill_rope(f);
    for (uint32_t l = 0; l < c->n_layers; l++) {
        const kvs_layer_weights_t *lw = kvs_model_layer(f->m, l);
        weight_to_f32(&lw->attn_norm, f->attn_norm + l * H);
        weight_to_f32(&lw->mlp_norm, f->mlp_norm + l * H);
    }
    weight_to_f32(kvs_model_final_norm(f->m), f->final_norm);
    return KVS_OK;
}

kvs_status_e kvs_forward_create(const kvs_model_t *m, uint32_t max_seq, uint32_t n_threads,
                                kvs_forward_t **out)
{
    kvs_forward_t *f;

    *out = NULL;
    KVS_RETURN_IF(max_seq == 0, KVS_ERR_INVALID, "a forward pass needs room for at least 1 position");
    f = calloc(1, sizeof *f);
    KVS_RETURN_IF(!f, KVS_ERR_NOMEM, "out of memory creating a forward pass");
    f->m = m;
    f->c = *kvs_model_get_config(m);
    f->q_dim = f->c.n_heads * f->c.head_dim;
    f->kv_dim = f->c.n_kv_heads * f->c.head_dim;
    f->group = f->c.n_heads / f->c.n_kv_heads;
    f->max_seq = max_seq;
    f->scale = (float)(1.0 / sqrt((double)f->c.head_dim));

    kvs_status_e rc = setup(f, n_threads);
    if (rc != KVS_OK) {
        kvs_forward_destroy(f);
        return rc;
    }
    *out = f;
    return KVS_OK;
}

void kvs_forward_destroy(kvs_forward_t *f)
{
    if (!f)
        return;
    kvs_pool_destroy(f->pool);
    free_scratch(f);
    free(f->k_cache);
    free(f->v_cache);
    free(f->rope_cos);
    free(f->rope_sin);
    free(f->attn_norm);
    free(f->mlp_norm);
    free(f->final_norm);
    free(f->scores);
    free(f->panel);
    free(f);
}

void kvs_forward_set_observer(kvs_forward_t *f, kvs_forward_observer_fn fn, void *ctx)
{
    f->observer = fn;
    f->observer_ctx = ctx;
}

uint32_t kvs_forward_n_pos(const kvs_forward_t *f)
{
    return f->n_pos;
}

kvs_status_e kvs_forward_set_chunk(kvs_forward_t *f, uint32_t chunk)
{
    KVS_RETURN_IF(chunk == 0, KVS_ERR_INVALID, "prefill chunk must be at least 1 token");
    if (chunk == f->chunk)
        return KVS_OK;
    return alloc_scratch(f, chunk);
}
