/* tokenizer_bpe.c: the BPE model. Vocabulary and merge hash tables, the
** merge loop over one pre-token and the cache of pre-tokens seen before.
**
** The merge loop keeps candidate pairs in a binary heap ordered by merge
** rank, then position, and the symbols in a doubly linked list. A word of
** n characters therefore costs O(n log n), not a rescan after each merge.
** Stale heap entries (a neighbour changed since the push) are detected by
** looking the pair up again, which is the same rule as the reference
** library's Word::merge_all and so gives the same merge order. */
#include "tokenizer_internal.h"

#include <xxhash.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Cache size. A full cache takes no new entries: the pre-tokens seen
** first are mostly the frequent ones, which keep hitting. */
#define CACHE_MAX_ENTRIES 65536
#define CACHE_SLOTS (2 * CACHE_MAX_ENTRIES)

static size_t table_cap_for(size_t expected)
{
    size_t cap = 16;

    while (cap < 2 * expected + 2)
        cap *= 2;
    return cap;
}

/* ---- string map ---------------------------------------------------------- */

kvs_status_e kvs_tok_strmap_init(kvs_tok_strmap_t *m, size_t expected)
{
    m->cap = table_cap_for(expected);
    m->count = 0;
    m->slots = calloc(m->cap, sizeof *m->slots);
    KVS_RETURN_IF(!m->slots, KVS_ERR_NOMEM, "out of memory for a table of %zu tokens", expected);
    return KVS_OK;
}

void kvs_tok_strmap_free(kvs_tok_strmap_t *m)
{
    free(m->slots);
    m->slots = NULL;
    m->cap = m->count = 0;
}

static kvs_status_e strmap_grow(kvs_tok_strmap_t *m)
{
    kvs_tok_strmap_t bigger;

    KVS_FORWARD(kvs_tok_strmap_init(&bigger, m->cap));
    for (size_t i = 0; i < m->cap; i++) {
        kvs_tok_strmap_slot_t *s = &m->slots[i];
        size_t j;

        if (!s->key)
            continue;
        for (j = s->hash & (bigger.cap - 1); bigger.slots[j].key; j = (j + 1) & (bigger.cap - 1))
            ;
        bigger.slots[j] = *s;
        bigger.count++;
    }
    free(m->slots);
    *m = bigger;
    return KVS_OK;
}

kvs_status_e kvs_tok_strmap_put(kvs_tok_strmap_t *m, const char *key, size_t len, int32_t value,
                                int32_t *previous)
{
    uint64_t hash;
    size_t j;

    if (2 * (m->count + 1) > m->cap)
        KVS_FORWARD(strmap_grow(m));
    hash = XXH3_64bits(key, len);
    for (j = hash & (m->cap - 1); m->slots[j].key; j = (j + 1) & (m->cap - 1)) {
        kvs_tok_strmap_slot_t *s = &m->slots[j];

        if (s->hash == hash && s->len == len && !memcmp(s->key, key, len)) {
            if (previous)
                *previous = s->value;
            s->value = value;
            return KVS_OK;
        }
    }
    m->slots[j] = (kvs_tok_strmap_slot_t){hash, key, (uint32_t)len, value};
    m->count++;
    if (previous)
        *previous = -1;
    return KVS_OK;
}

int32_t kvs_tok_strmap_get(const kvs_tok_strmap_t *m, const char *key, size_t len)
{
    uint64_t hash = XXH3_64bits(key, len);

    for (size_t j = hash & (m->cap - 1); m->slots[j].key; j = (j + 1) & (m->cap - 1)) {
        const kvs_tok_strmap_slot_t *s = &m->slots[j];

        if (s->hash == hash && s->len == len && !memcmp(s->key, key, len))
            return s->value;
    }
    return -1;
}

/* ---- merge map ----------------------------------------------------------- */

static uint64_t pair_key(int32_t left, int32_t right)
{
    return ((uint64_t)(uint32_t)left << 32) | (uint32_t)right;
}

/* A 64-bit mix (the finalizer of SplitMix64) so consecutive ids spread. */
static uint64_t pair_hash(uint64_t key)
{
    key ^= key >> 30;
    key *= 0xbf58476d1ce4e5b9ULL;
    key ^= key >> 27;
    key *= 0x94d049bb133111ebULL;
    return key ^ (key >> 31);
}

kvs_status_e kvs_tok_mergemap_init(kvs_tok_mergemap_t *m, size_t expected)
{
    m->cap = table_cap_for(expected);
    m->count = 0;
    m->slots = malloc(m->cap * sizeof *m->slots);
    KVS_RETURN_IF(!m->slots, KVS_ERR_NOMEM, "out of memory for a table of %zu merges", expected);
    for (size_t i = 0; i < m->cap; i++)
        m->slots[i].key = UINT64_MAX;
    return KVS_OK;
}

void kvs_tok_mergemap_free(kvs_tok_mergemap_t *m)
{
    free(m->slots);
    m->slots = NULL;
    m->cap = m->count = 0;
}

/* The table is sized for every merge at init, so it never grows. A repeated
** pair keeps the later rank, as a map built from the list in order does. */
void kvs_tok_mergemap_put(kvs_tok_mergemap_t *m, int32_t left, int32_t right, uint32_t rank,
                          int32_t new_id)
{
    uint64_t key = pair_key(left, right);
    size_t j;

    for (j = pair_hash(key) & (m->cap - 1); m->slots[j].key != UINT64_MAX;
         j = (j + 1) & (m->cap - 1)) {
        if (m->slots[j].key == key)
            break;
    }
    if (m->slots[j].key == UINT64_MAX)
        m->count++;
    m->slots[j] = (kvs_tok_merge_slot_t){key, rank, new_id};
}

const kvs_tok_merge_slot_t *kvs_tok_mergemap_get(const kvs_tok_mergemap_t *m, int32_t left,
                                                 int32_t right)
{
    uint64_t key = pair_key(left, right);

    for (size_t j = pair_hash(key) & (m->cap - 1); m->slots[j].key != UINT64_MAX;
         j = (j + 1) & (m->cap - 1)) {
        if (m->slots[j].key == key)
            return &m->slots[j];
    }
    return NULL;
}

/* ---- cache --------------------------------------------------------------- */

kvs_status_e kvs_tok_cache_init(kvs_tok_cache_t *c)
{
    memset(c, 0, sizeof *c);
    c->cap = CACHE_SLOTS;
    c->slots = calloc(c->cap, sizeof *c->slots);
    KVS_RETURN_IF(!c->slots, KVS_ERR_NOMEM, "out of memory for the tokenizer cache");
    return KVS_OK;
}

void kvs_tok_cache_free(kvs_tok_cache_t *c)
{
    free(c->slots);
    free(c->keys.data);
    free(c->ids.data);
    memset(c, 0, sizeof *c);
}

static const kvs_tok_cache_slot_t *cache_find(const kvs_tok_cache_t *c, const char *w, size_t len,
                                              uint64_t hash, size_t *free_slot)
{
    size_t j;

    for (j = hash & (c->cap - 1); c->slots[j].key_len; j = (j + 1) & (c->cap - 1)) {
        const kvs_tok_cache_slot_t *s = &c->slots[j];

        if (s->hash == hash && s->key_len == len && !memcmp(c->keys.data + s->key_off, w, len))
            return s;
    }
    *free_slot = j;
    return NULL;
}

static kvs_status_e cache_store(kvs_tok_cache_t *c, const char *w, size_t len, uint64_t hash,
                                const int32_t *ids, size_t n)
{
    size_t j;

    if (c->count >= CACHE_MAX_ENTRIES)
        return KVS_OK;
    if (cache_find(c, w, len, hash, &j))
        return KVS_OK;
    c->slots[j] = (kvs_tok_cache_slot_t){hash, (uint32_t)c->keys.len, (uint32_t)len,
                                         (uint32_t)c->ids.len, (uint32_t)n};
    KVS_FORWARD(kvs_tok_buf_append(&c->keys, w, len));
    KVS_FORWARD(kvs_tok_ids_append(&c->ids, ids, n));
    c->count++;
    return KVS_OK;
}

/* ---- merging ------------------------------------------------------------- */

static int heap_less(const kvs_tok_heap_item_t *a, const kvs_tok_heap_item_t *b)
{
    return a->rank != b->rank ? a->rank < b->rank : a->pos < b->pos;
}

static void heap_push(kvs_tok_heap_item_t *heap, size_t *n, kvs_tok_heap_item_t item)
{
    size_t i = (*n)++;

    while (i > 0) {
        size_t parent = (i - 1) / 2;

        if (!heap_less(&item, &heap[parent]))
            break;
        heap[i] = heap[parent];
        i = parent;
    }
    heap[i] = item;
}

static kvs_tok_heap_item_t heap_pop(kvs_tok_heap_item_t *heap, size_t *n)
{
    kvs_tok_heap_item_t top = heap[0];
    kvs_tok_heap_item_t last = heap[--*n];
    size_t i = 0;

    for (;;) {
        size_t child = 2 * i + 1;

        if (child >= *n)
            break;
        if (child + 1 < *n && heap_less(&heap[child + 1], &heap[child]))
            child++;
        if (!heap_less(&heap[child], &last))
            break;
        heap[i] = heap[child];
        i = child;
    }
    if (*n)
        heap[i] = last;
    return top;
}

static kvs_status_e reserve_scratch(kvs_tokenizer_t *tok, size_t n_symbols)
{
    /* Each merge pushes at most two pairs on top of the n - 1 initial ones. */
    size_t heap_need = 3 * n_symbols + 1;

    if (n_symbols > tok->symbols_cap) {
        kvs_tok_symbol_t *s = realloc(tok->symbols, n_symbols * sizeof *s);

        KVS_RETURN_IF(!s, KVS_ERR_NOMEM, "out of memory for a pre-token of %zu characters",
                      n_symbols);
        tok->symbols = s;
        tok->symbols_cap = n_symbols;
    }
    if (heap_need > tok->heap_cap) {
        kvs_tok_heap_item_t *h = realloc(tok->heap, heap_need * sizeof *h);

        KVS_RETURN_IF(!h, KVS_ERR_NOMEM, "out of memory for a pre-token of %zu characters",
                      n_symbols);
        tok->heap = h;
        tok->heap_cap = heap_need;
    }
    return KVS_OK;
}

static void add_symbol(kvs_tokenizer_t *tok, size_t *n, int32_t id, uint32_t len)
{
    kvs_tok_symbol_t *s = &tok->symbols[*n];

    s->id = id;
    s->len = len;
    s->prev = (int32_t)*n - 1;
    s->next = (int32_t)*n + 1;
    (*n)++;
}

/* Splits the word into characters and looks each up. Unknown characters
** become byte-fallback pieces or the unknown token, in the order and with
** the fusing rule of the reference library's BPE::merge_word. */
static kvs_status_e initial_symbols(kvs_tokenizer_t *tok, const char *w, size_t len,
                                    size_t *n_out)
{
    size_t n = 0, i = 0;
    int32_t unk_pending = -1;
    uint32_t unk_len = 0;

    KVS_FORWARD(reserve_scratch(tok, len));
    while (i < len) {
        size_t start = i;
        uint32_t char_len;
        int32_t id;

        kvs_utf8_next(w, &i);
        char_len = (uint32_t)(i - start);
        if (char_len <= 2) {
            size_t at = start;
            int32_t cp = kvs_utf8_next(w, &at);

            id = tok->char_ids[cp];
        } else
            id = kvs_tok_strmap_get(&tok->model_vocab, w + start, char_len);
        if (id >= 0) {
            if (unk_pending >= 0) {
                add_symbol(tok, &n, unk_pending, unk_len);
                unk_pending = -1;
            }
            add_symbol(tok, &n, id, char_len);
            continue;
        }

        if (tok->byte_fallback) {
            int all_bytes = 1;

            for (size_t k = start; k < i; k++)
                all_bytes &= tok->byte_ids[(unsigned char)w[k]] >= 0;
            if (all_bytes) {
                for (size_t k = start; k < i; k++)
                    add_symbol(tok, &n, tok->byte_ids[(unsigned char)w[k]], 1);
                continue;
            }
        }

        if (tok->unk_id >= 0) {
            if (unk_pending >= 0 && tok->fuse_unk) {
                unk_len += char_len;
            } else {
                if (unk_pending >= 0)
                    add_symbol(tok, &n, unk_pending, unk_len);
                unk_pending = tok->unk_id;
                unk_len = char_len;
            }
        }
    }
    if (unk_pending >= 0)
        add_symbol(tok, &n, unk_pending, unk_len);
    if (n)
        tok->symbols[n - 1].next = -1;
    *n_out = n;
    return KVS_OK;
}

static void push_pair(kvs_tokenizer_t *tok, size_t *heap_n, int32_t pos)
{
    const kvs_tok_symbol_t *s = &tok->symbols[pos];
    const kvs_tok_merge_slot_t *m;

    if (s->next < 0)
        return;
    m = kvs_tok_mergemap_get(&tok->merges, s->id, tok->symbols[s->next].id);
    if (m)
        heap_push(tok->heap, heap_n, (kvs_tok_heap_item_t){m->rank, (uint32_t)pos, m->new_id});
}

static void merge_all(kvs_tokenizer_t *tok, size_t n)
{
    kvs_tok_symbol_t *sym = tok->symbols;
    size_t heap_n = 0;

    for (size_t i = 0; i + 1 < n; i++)
        push_pair(tok, &heap_n, (int32_t)i);

    while (heap_n) {
        kvs_tok_heap_item_t top = heap_pop(tok->heap, &heap_n);
        kvs_tok_symbol_t *left = &sym[top.pos];
        const kvs_tok_merge_slot_t *m;
        int32_t right_pos;

        if (left->len == 0 || left->next < 0)
            continue;
        right_pos = left->next;
        m = kvs_tok_mergemap_get(&tok->merges, left->id, sym[right_pos].id);
        if (!m || m->new_id != top.new_id)
            continue;

        left->id = top.new_id;
        left->len += sym[right_pos].len;
        left->next = sym[right_pos].next;
        sym[right_pos].len = 0;
        if (left->next >= 0)
            sym[left->next].prev = (int32_t)top.pos;

        if (left->prev >= 0)
            push_pair(tok, &heap_n, left->prev);
        push_pair(tok, &heap_n, (int32_t)top.pos);
    }
}

kvs_status_e kvs_tok_bpe_word(kvs_tokenizer_t *tok, const char *w, size_t len, kvs_tok_ids_t *out)
{
    uint64_t hash = 0;
    size_t n, free_slot;
    kvs_tok_ids_t *word = &tok->word_ids;

    if (len == 0)
        return KVS_OK;
    if (tok->ignore_merges) {
        int32_t id = kvs_tok_strmap_get(&tok->model_vocab, w, len);

        if (id >= 0)
            return kvs_tok_ids_push(out, id);
    }
    if (len < KVS_TOK_CACHE_MAX_WORD) {
        const kvs_tok_cache_slot_t *hit;

        hash = XXH3_64bits(w, len);
        hit = cache_find(&tok->cache, w, len, hash, &free_slot);
        if (hit && hit->n_ids == 0)
            return KVS_OK;
        if (hit)
            return kvs_tok_ids_append(out, tok->cache.ids.data + hit->ids_off, hit->n_ids);
    }

    KVS_FORWARD(initial_symbols(tok, w, len, &n));
    merge_all(tok, n);
    word->len = 0;
    for (size_t i = 0; i < n; i++) {
        if (tok->symbols[i].len)
            KVS_FORWARD(kvs_tok_ids_push(word, tok->symbols[i].id));
    }
    if (len < KVS_TOK_CACHE_MAX_WORD)
        KVS_FORWARD(cache_store(&tok->cache, w, len, hash, word->data, word->len));
    return kvs_tok_ids_append(out, word->data, word->len);
}
