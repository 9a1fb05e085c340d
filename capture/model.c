/* model.c: loading a model folder: config, safetensors shards, tensor checks. */
#include "model.h"

#include "../common/fsutil.h"
#include "safetensors.h"

#include <dirent.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define MAX_SHARDS 1024

struct kvs_model {
    char *dir;
    char *name;
    kvs_model_config_t cfg;
    kvs_st_file_t **files;
    uint32_t n_files;
    json_t *weight_map;          /* tensor name -> shard file name; NULL when unsharded */
    kvs_layer_weights_t *layers;
    kvs_weight_t embedding;
    kvs_weight_t final_norm;
    kvs_weight_t lm_head;
    void **copies;               /* aligned copies of misaligned tensors */
    uint32_t n_copies;
};

static int file_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

static kvs_status_e open_shard(kvs_model_t *m, const char *file_name)
{
    char path[4096];

    for (uint32_t i = 0; i < m->n_files; i++) {
        const char *p = kvs_st_path(m->files[i]);
        const char *base = strrchr(p, '/');
        if (!strcmp(base ? base + 1 : p, file_name))
            return KVS_OK;
    }
    KVS_RETURN_IF(m->n_files >= MAX_SHARDS, KVS_ERR_SAFETENSORS,
                  "%s: weight_map names more than %d shard files", m->dir, MAX_SHARDS);
    KVS_FORWARD(kvs_path_join(path, sizeof path, m->dir, file_name));
    KVS_FORWARD(kvs_st_open(path, &m->files[m->n_files]));
    m->n_files++;
    return KVS_OK;
}

/* Reads model.safetensors.index.json and opens every shard it names. Shard
** names must be plain file names in the folder, so a crafted index cannot
** point outside it. */
static kvs_status_e open_sharded(kvs_model_t *m, const char *index_path)
{
    json_error_t jerr;
    json_t *root = json_load_file(index_path, JSON_REJECT_DUPLICATES, &jerr);
    const char *key;
    json_t *value;

    KVS_RETURN_IF(!root, KVS_ERR_SAFETENSORS, "%s: invalid JSON at line %d: %s", index_path,
                  jerr.line, jerr.text);
    json_t *map = json_object_get(root, "weight_map");
    if (!json_is_object(map)) {
        json_decref(root);
        return kvs_fail(KVS_ERR_SAFETENSORS, "%s: missing \"weight_map\" object", index_path);
    }
    m->weight_map = json_incref(map);
    json_decref(root);

    json_object_foreach(m->weight_map, key, value) {
        const char *file = json_string_value(value);
        KVS_RETURN_IF(!file, KVS_ERR_SAFETENSORS, "%s: weight_map entry '%s' is not a file name",
                      index_path, key);
        KVS_RETURN_IF(!*file || strchr(file, '/') || !strcmp(file, "..") || !strcmp(file, "."),
                      KVS_ERR_SAFETENSORS,
                      "%s: weight_map entry '%s' names '%.200s', which is not a file in the folder",
                      index_path, key, file);
        KVS_FORWARD(open_shard(m, file));
    }
    return KVS_OK;
}

static kvs_status_e find_tensor(kvs_model_t *m, const char *name, const kvs_st_file_t **file,
                                const kvs_st_tensor_t **tensor)
{
    *file = NULL;
    *tensor = NULL;
    if (m->weight_map) {
        const char *shard = json_string_value(json_object_get(m->weight_map, name));
        KVS_RETURN_IF(!shard, KVS_ERR_TENSOR,
                      "%s: tensor '%s' is missing from model.safetensors.index.json", m->dir, name);
        for (uint32_t i = 0; i < m->n_files && !*file; i++) {
            const char *p = kvs_st_path(m->files[i]);
            const char *base = strrchr(p, '/');
            if (!strcmp(base ? base + 1 : p, shard))
                *file = m->files[i];
        }
        KVS_RETURN_IF(!*file, KVS_ERR_INTERNAL, "%s: shard %s of tensor '%s' was not opened",
                      m->dir, shard, name);
        *tensor = kvs_st_find(*file, name);
        KVS_RETURN_IF(!*tensor, KVS_ERR_TENSOR,
                      "%s: tensor '%s' is missing, though the index places it in this file",
                      kvs_st_path(*file), name);
        return KVS_OK;
    }
    *file = m->files[0];
    *tensor = kvs_st_find(*file, name);
    KVS_RETURN_IF(!*tensor, KVS_ERR_TENSOR, "%s: tensor '%s' is missing", kvs_st_path(*file),
                  name);
    return KVS_OK;
}

/* Binds a weight of shape (rows, cols), or (rows) when cols is 0. */
static kvs_status_e bind(kvs_model_t *m, const char *name, uint32_t rows, uint32_t cols,
                         kvs_weight_t *w)
{
    const kvs_st_file_t *file;
    const kvs_st_tensor_t *t;

    KVS_FORWARD(find_tensor(m, name, &file, &t));
    uint32_t want_dims = cols ? 2 : 1;
    int ok = t->n_dims == want_dims && t->shape[0] == rows && (!cols || t->shape[1] == cols);
    if (!ok) {
        char got[160] = "[";
        for (uint32_t i = 0; i < t->n_dims; i++) {
            size_t len = strlen(got);
            snprintf(got + len, sizeof got - len, "%s%llu", i ? ", " : "",
                     (unsigned long long)t->shape[i]);
        }
        strncat(got, "]", sizeof got - strlen(got) - 1);
        if (cols)
            return kvs_fail(KVS_ERR_TENSOR,
                            "%s: tensor '%s' has shape %s, expected [%u, %u] from config.json",
                            kvs_st_path(file), name, got, rows, cols);
        return kvs_fail(KVS_ERR_TENSOR, "%s: tensor '%s' has shape %s, expected [%u] from config.json",
                        kvs_st_path(file), name, got, rows);
    }

    w->type = t->type;
    w->rows = cols ? rows : 1;
    w->cols = cols ? cols : rows;
    w->data = kvs_st_base(file) + t->offset;

    /* Headers need not pad the data area, so a tensor can start at any byte.
    ** The kernels read whole elements, so such a tensor gets an aligned copy. */
    size_t esize = kvs_wtype_size(t->type);
    if ((uintptr_t)w->data % esize) {
        void **grown = realloc(m->copies, (m->n_copies + 1) * sizeof *grown);
        KVS_RETURN_IF(!grown, KVS_ERR_NOMEM, "out of memory loading %s", name);
        m->copies = grown;
        void *copy = malloc(t->nbytes ? t->nbytes : 1);
        KVS_RETURN_IF(!copy, KVS_ERR_NOMEM, "out of memory copying tensor %s", name);
        memcpy(copy, w->data, t->nbytes);
        m->copies[m->n_copies++] = copy;
        w->data = copy;
    }
    return KVS_OK;
}

static kvs_status_e bind_all(kvs_model_t *m)
{
    const kvs_model_config_t *c = &m->cfg;
    uint32_t q_dim = c->n_heads * c->head_dim, kv_dim = c->n_kv_heads * c->head_dim;
    char name[128];

    m->layers = calloc(c->n_layers, sizeof *m->layers);
    KVS_RETURN_IF(!m->layers, KVS_ERR_NOMEM, "out of memory for %u layers", c->n_layers);
    KVS_FORWARD(bind(m, "model.embed_tokens.weight", c->vocab_size, c->hidden_size, &m->embedding));
    KVS_FORWARD(bind(m, "model.norm.weight", c->hidden_size, 0, &m->final_norm));
    if (c->tie_word_embeddings)
        m->lm_head = m->embedding;
    else
        KVS_FORWARD(bind(m, "lm_head.weight", c->vocab_size, c->hidden_size, &m->lm_head));

    for (uint32_t l = 0; l < c->n_layers; l++) {
        kvs_layer_weights_t *L = &m->layers[l];
        struct {
            const char *suffix;
            uint32_t rows, cols;
            kvs_weight_t *w;
        } specs[] = {
            {"input_layernorm.weight", c->hidden_size, 0, &L->attn_norm},
            {"self_attn.q_proj.weight", q_dim, c->hidden_size, &L->wq},
            {"self_attn.k_proj.weight", kv_dim, c->hidden_size, &L->wk},
            {"self_attn.v_proj.weight", kv_dim, c->hidden_size, &L->wv},
            {"self_attn.o_proj.weight", c->hidden_size, q_dim, &L->wo},
            {"post_attention_layernorm.weight", c->hidden_size, 0, &L->mlp_norm},
            {"mlp.gate_proj.weight", c->intermediate_size, c->hidden_size, &L->w_gate},
            {"mlp.up_proj.weight", c->intermediate_size, c->hidden_size, &L->w_up},
            {"mlp.down_proj.weight", c->hidden_size, c->intermediate_size, &L->w_down},
        };
        for (size_t i = 0; i < sizeof specs / sizeof specs[0]; i++) {
            snprintf(name, sizeof name, "model.layers.%u.%s", l, specs[i].suffix);
            KVS_FORWARD(bind(m, name, specs[i].rows, specs[i].cols, specs[i].w));
        }
    }
    return KVS_OK;
}

/* "OWNER/NAME" for a hub cache snapshot .../models--OWNER--NAME/snapshots/REV
** (the first len bytes of dir), whose own folder name is only a commit
** hash; NULL for any other path. */
static char *hub_repo_name(const char *dir, size_t len)
{
    char *copy = strndup(dir, len), *out = NULL;

    if (!copy)
        return NULL;
    char *rev = strrchr(copy, '/');
    if (rev && rev > copy) {
        *rev = '\0';
        char *snap = strrchr(copy, '/');
        if (snap && !strcmp(snap + 1, "snapshots")) {
            *snap = '\0';
            char *repo = strrchr(copy, '/');
            repo = repo ? repo + 1 : copy;
            char *sep;
            if (!strncmp(repo, "models--", 8) && (sep = strstr(repo + 8, "--"))) {
                size_t owner = (size_t)(sep - (repo + 8));
                if (asprintf(&out, "%.*s/%s", (int)owner, repo + 8, sep + 2) < 0)
                    out = NULL;
            }
        }
    }
    free(copy);
    return out;
}

static kvs_status_e load(kvs_model_t *m, const char *dir)
{
    char path[4096];
    char *text;
    size_t size;
    struct stat st;

    KVS_RETURN_IF(stat(dir, &st) != 0 || !S_ISDIR(st.st_mode), KVS_ERR_NOT_FOUND,
                  "model folder %s not found (pass the folder holding config.json and "
                  "*.safetensors)",
                  dir);
    m->dir = strdup(dir);
    KVS_RETURN_IF(!m->dir, KVS_ERR_NOMEM, "out of memory");
    size_t len = strlen(dir);
    while (len > 1 && dir[len - 1] == '/')
        len--;
    size_t start = len;
    while (start > 0 && dir[start - 1] != '/')
        start--;
    m->name = hub_repo_name(dir, len);
    if (!m->name)
        m->name = strndup(dir + start, len - start);
    KVS_RETURN_IF(!m->name, KVS_ERR_NOMEM, "out of memory");

    KVS_FORWARD(kvs_path_join(path, sizeof path, dir, "config.json"));
    KVS_RETURN_IF(!file_exists(path), KVS_ERR_NOT_FOUND,
                  "%s has no config.json (not a Hugging Face model folder)", dir);
    KVS_FORWARD(kvs_read_file(path, &text, &size));
    kvs_status_e rc = kvs_model_config_parse(text, size, path, &m->cfg);
    free(text);
    KVS_FORWARD(rc);

    m->files = calloc(MAX_SHARDS, sizeof *m->files);
    KVS_RETURN_IF(!m->files, KVS_ERR_NOMEM, "out of memory");
    KVS_FORWARD(kvs_path_join(path, sizeof path, dir, "model.safetensors.index.json"));
    if (file_exists(path)) {
        KVS_FORWARD(open_sharded(m, path));
        KVS_RETURN_IF(!m->n_files, KVS_ERR_SAFETENSORS, "%s: weight_map is empty", path);
    } else {
        KVS_FORWARD(kvs_path_join(path, sizeof path, dir, "model.safetensors"));
        KVS_RETURN_IF(!file_exists(path), KVS_ERR_NOT_FOUND,
                      "%s has neither model.safetensors nor model.safetensors.index.json", dir);
        KVS_FORWARD(kvs_st_open(path, &m->files[0]));
        m->n_files = 1;
    }
    return bind_all(m);
}

kvs_status_e kvs_model_load(const char *dir, kvs_model_t **out)
{
    kvs_model_t *m = calloc(1, sizeof *m);

    *out = NULL;
    KVS_RETURN_IF(!m, KVS_ERR_NOMEM, "out of memory loading %s", dir);
    kvs_status_e rc = load(m, dir);
    if (rc != KVS_OK) {
        kvs_model_destroy(m);
        return rc;
    }
    *out = m;
    return KVS_OK;
}

void kvs_model_destroy(kvs_model_t *m)
{
    if (!m)
        return;
    for (uint32_t i = 0; i < m->n_files; i++)
        kvs_st_close(m->files[i]);
    for (uint32_t i = 0; i < m->n_copies; i++)
        free(m->copies[i]);
    free(m->copies);
    free(m->files);
    json_decref(m->weight_map);
    free(m->layers);
    free(m->dir);
    free(m->name);
    free(m);
}

const kvs_model_config_t *kvs_model_get_config(const kvs_model_t *m)
{
    return &m->cfg;
}

const kvs_layer_weights_t *kvs_model_layer(const kvs_model_t *m, uint32_t layer)
{
    return &m->layers[layer];
}

const kvs_weight_t *kvs_model_embedding(const kvs_model_t *m)
{
    return &m->embedding;
}

const kvs_weight_t *kvs_model_final_norm(const kvs_model_t *m)
{
    return &m->final_norm;
}

const kvs_weight_t *kvs_model_lm_head(const kvs_model_t *m)
{
    return &m->lm_head;
}

kvs_wtype_e kvs_model_weight_type(const kvs_model_t *m)
{
    return m->layers[0].wq.type;
}

static uint64_t weight_bytes(const kvs_weight_t *w)
{
    return (uint64_t)w->rows * w->cols * kvs_wtype_size(w->type);
}

uint64_t kvs_model_decode_bytes(const kvs_model_t *m)
{
    uint64_t total = weight_bytes(&m->final_norm) + weight_bytes(&m->lm_head);

    for (uint32_t l = 0; l < m->cfg.n_layers; l++) {
        const kvs_layer_weights_t *L = &m->layers[l];
        total += weight_bytes(&L->attn_norm) + weight_bytes(&L->wq) + weight_bytes(&L->wk) +
                 weight_bytes(&L->wv) + weight_bytes(&L->wo) + weight_bytes(&L->mlp_norm) +
                 weight_bytes(&L->w_gate) + weight_bytes(&L->w_up) + weight_bytes(&L->w_down);
    }
    return total;
}

const char *kvs_model_name(const kvs_model_t *m)
{
    return m->name;
}

const char *kvs_model_dir(const kvs_model_t *m)
{
    return m->dir;
}

static int dir_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

/* The hub cache folder, following huggingface_hub's environment variables. */
static void hub_cache_dir(char *out, size_t cap)
{
    const char *cache = getenv("HF_HUB_CACHE"), *home = getenv("HF_HOME");

    if (cache && *cache)
        snprintf(out, cap, "%s", cache);
    else if (home && *home)
        snprintf(out, cap, "%s/hub", home);
    else
        snprintf(out, cap, "%s/.cache/huggingface/hub", getenv("HOME") ? getenv("HOME") : "");
}

/* Picks the snapshot of repo folder base: the one refs/main names, else
** the first snapshot (in name order) that contains a config.json. */
static int pick_snapshot(const char *base, char *out, size_t cap)
{
    char path[4608], rev[128] = "";
    FILE *fp;

    snprintf(path, sizeof path, "%s/refs/main", base);
    if ((fp = fopen(path, "r"))) {
        if (fgets(rev, sizeof rev, fp))
            rev[strcspn(rev, "\r\n")] = '\0';
        fclose(fp);
        if (rev[0] && !strchr(rev, '/')) {
            snprintf(out, cap, "%s/snapshots/%s", base, rev);
            if (dir_exists(out))
                return 1;
        }
    }

    struct dirent **names;
    snprintf(path, sizeof path, "%s/snapshots", base);
    int n = scandir(path, &names, NULL, alphasort), found = 0;
    for (int i = 0; i < n; i++) {
        char cfg[4992];
        if (!found && names[i]->d_name[0] != '.') {
            snprintf(cfg, sizeof cfg, "%s/%s/config.json", path, names[i]->d_name);
            if (file_exists(cfg)) {
                snprintf(out, cap, "%s/%s", path, names[i]->d_name);
                found = 1;
            }
        }
        free(names[i]);
    }
    if (n >= 0)
        free(names);
    return found;
}

kvs_status_e kvs_model_resolve(const char *name, char *out, size_t cap)
{
    char cache[4096], base[4400];

    if (!name || !*name)
        name = getenv("KVSIM_MODEL");
    KVS_RETURN_IF(!name || !*name, KVS_ERR_NOT_FOUND,
                  "no model given; pass --model DIR or a Hugging Face id, or set KVSIM_MODEL");
    if (dir_exists(name)) {
        KVS_RETURN_IF(strlen(name) >= cap, KVS_ERR_INVALID, "model path %s is too long", name);
        snprintf(out, cap, "%s", name);
        return KVS_OK;
    }

    /* A repository id is OWNER/NAME with no other slash. */
    const char *slash = strchr(name, '/');
    KVS_RETURN_IF(!slash || slash == name || !slash[1] || strchr(slash + 1, '/') ||
                      strstr(name, ".."),
                  KVS_ERR_NOT_FOUND, "model folder %s not found", name);
    hub_cache_dir(cache, sizeof cache);
    snprintf(base, sizeof base, "%s/models--%.*s--%s", cache, (int)(slash - name), name, slash + 1);
    KVS_RETURN_IF(!pick_snapshot(base, out, cap), KVS_ERR_NOT_FOUND,
                  "model %s not found: no folder of that name and no snapshot with config.json "
                  "under %s/snapshots (download it with huggingface-cli, or pass its folder)",
                  name, base);
    return KVS_OK;
}
