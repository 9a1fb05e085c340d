/* perf_tokenizer.c: encode and decode throughput of a tokenizer on real
** text, single thread.
**
** usage: perf_tokenizer [--model DIR] [--max-mb N] [LABEL=PATH ...]
**
** Each PATH is a file or a folder read recursively (regular files only, in
** name order, until N MB per label, default 4). Files that are not valid
** UTF-8 are skipped and counted. Every file is encoded as one document
** with a freshly loaded tokenizer, so the BPE cache starts empty; the
** figure includes the cache filling. Without LABEL=PATH arguments, English
** prose is the GPL texts and Vim's manual, and source code is the C
** headers under /usr/include. */
#include "capture/tokenizer.h"
#include "common/fsutil.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

typedef struct corpus {
    char **texts;
    size_t *lens;
    size_t n;
    size_t cap;
    size_t bytes;
    size_t max_bytes;
    size_t skipped;
} corpus_t;

/* CPU time of this thread: on a shared machine, wall time also counts the
** time other processes held the core. Both are printed. */
static double cpu_seconds(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double wall_seconds(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int is_utf8(kvs_tokenizer_t *tok, const char *text, size_t len)
{
    int32_t *ids;
    size_t n;

    /* The encoder's own UTF-8 check decides which files take part. */
    if (kvs_tokenizer_encode(tok, text, len, 0, &ids, &n) != KVS_OK)
        return 0;
    free(ids);
    return 1;
}

static int compare_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void add_path(corpus_t *c, kvs_tokenizer_t *tok, const char *path)
{
    struct stat st;
    char *data;
    size_t size;

    if (c->bytes >= c->max_bytes || stat(path, &st) != 0)
        return;
    if (S_ISDIR(st.st_mode)) {
        DIR *dir = opendir(path);
        struct dirent *e;
        char **names = NULL;
        size_t n = 0, cap = 0;

        if (!dir)
            return;
        while ((e = readdir(dir)) != NULL) {
            if (e->d_name[0] == '.')
                continue;
            if (n == cap) {
                cap = cap ? 2 * cap : 64;
                names = realloc(names, cap * sizeof *names);
            }
            names[n] = malloc(strlen(path) + strlen(e->d_name) + 2);
            sprintf(names[n++], "%s/%s", path, e->d_name);
        }
        closedir(dir);
        qsort(names, n, sizeof *names, compare_names);
        for (size_t i = 0; i < n; i++) {
            add_path(c, tok, names[i]);
            free(names[i]);
        }
        free(names);
        return;
    }
    if (!S_ISREG(st.st_mode) || st.st_size == 0 || kvs_read_file(path, &data, &size) != KVS_OK)
        return;
    if (!is_utf8(tok, data, size)) {
        c->skipped++;
        free(data);
        return;
    }
    if (c->n == c->cap) {
        c->cap = c->cap ? 2 * c->cap : 64;
        c->texts = realloc(c->texts, c->cap * sizeof *c->texts);
        c->lens = realloc(c->lens, c->cap * sizeof *c->lens);
    }
    c->texts[c->n] = data;
    c->lens[c->n++] = size;
    c->bytes += size;
}

static void run(const char *label, const char *model_dir, corpus_t *c)
{
    kvs_tokenizer_t *tok;
    double t0, w0, encode_s, encode_wall, decode_s = 0, decode_wall = 0;
    size_t n_ids = 0;

    if (c->n == 0) {
        printf("%-6s no readable UTF-8 files\n", label);
        return;
    }
    if (kvs_tokenizer_load(model_dir, &tok) != KVS_OK) {
        fprintf(stderr, "perf_tokenizer: %s\n", kvs_error_message());
        exit(1);
    }

    t0 = cpu_seconds();
    w0 = wall_seconds();
    for (size_t i = 0; i < c->n; i++) {
        int32_t *ids;
        size_t n;

        if (kvs_tokenizer_encode(tok, c->texts[i], c->lens[i], 0, &ids, &n) != KVS_OK) {
            fprintf(stderr, "perf_tokenizer: %s\n", kvs_error_message());
            exit(1);
        }
        n_ids += n;

        /* Decode time is summed separately from encode time. */
        {
            double d0 = cpu_seconds(), dw0 = wall_seconds();
            char *text;
            size_t len;

            if (kvs_tokenizer_decode(tok, ids, n, 0, &text, &len) != KVS_OK) {
                fprintf(stderr, "perf_tokenizer: %s\n", kvs_error_message());
                exit(1);
            }
            decode_s += cpu_seconds() - d0;
            decode_wall += wall_seconds() - dw0;
            free(text);
        }
        free(ids);
    }
    encode_s = cpu_seconds() - t0 - decode_s;
    encode_wall = wall_seconds() - w0 - decode_wall;

    printf("%-6s %3zu files %6.2f MB %8zu ids %4.2f bytes/id | encode %6.1f MB/s cpu %6.1f MB/s "
           "wall | decode %6.1f MB/s cpu %6.1f MB/s wall | %zu non-UTF-8 files skipped\n",
           label, c->n, (double)c->bytes / 1e6, n_ids, (double)c->bytes / (double)n_ids,
           (double)c->bytes / 1e6 / encode_s, (double)c->bytes / 1e6 / encode_wall,
           (double)c->bytes / 1e6 / decode_s, (double)c->bytes / 1e6 / decode_wall, c->skipped);
    kvs_tokenizer_free(tok);
}

int main(int argc, char **argv)
{
    static const char *const defaults[] = {
        "prose=/usr/share/common-licenses",
        "prose=/usr/share/vim/vim90/doc",
        "code=/usr/include",
    };
    const char *model_dir = NULL;
    const char **specs = NULL;
    size_t n_specs = 0;
    double max_mb = 4;
    char shared_model[4096];
    kvs_tokenizer_t *probe;

    specs = malloc((size_t)(argc + 3) * sizeof *specs);
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--model") && i + 1 < argc)
            model_dir = argv[++i];
        else if (!strcmp(argv[i], "--max-mb") && i + 1 < argc)
            max_mb = atof(argv[++i]);
        else if (strchr(argv[i], '='))
            specs[n_specs++] = argv[i];
        else {
            fprintf(stderr, "usage: perf_tokenizer [--model DIR] [--max-mb N] [LABEL=PATH ...]\n");
            return 2;
        }
    }
    if (!model_dir) {
        const char *shared = getenv("KVS_SHARED_DIR");

        snprintf(shared_model, sizeof shared_model, "%s/tokenizers/smollm2",
                 shared ? shared : "../shared");
        model_dir = shared_model;
    }
    if (n_specs == 0) {
        for (size_t i = 0; i < 3; i++)
            specs[n_specs++] = defaults[i];
    }
    if (kvs_tokenizer_load(model_dir, &probe) != KVS_OK) {
        fprintf(stderr, "perf_tokenizer: %s\n", kvs_error_message());
        return 1;
    }
    printf("tokenizer %s: %s, one thread\n", model_dir, kvs_tokenizer_name(probe));

    /* Specs with the same label form one corpus, in the order given. */
    for (size_t i = 0; i < n_specs; i++) {
        corpus_t c = {0};
        size_t label_len = (size_t)(strchr(specs[i], '=') - specs[i]);
        char label[64];
        int seen = 0;

        for (size_t j = 0; j < i; j++)
            seen |= !strncmp(specs[j], specs[i], label_len + 1);
        if (seen)
            continue;
        snprintf(label, sizeof label, "%.*s", (int)label_len, specs[i]);
        c.max_bytes = (size_t)(max_mb * 1e6);
        for (size_t j = i; j < n_specs; j++) {
            if (!strncmp(specs[j], specs[i], label_len + 1))
                add_path(&c, probe, specs[j] + label_len + 1);
        }
        run(label, model_dir, &c);
        for (size_t j = 0; j < c.n; j++)
            free(c.texts[j]);
        free(c.texts);
        free(c.lens);
    }
    kvs_tokenizer_free(probe);
    free(specs);
    return 0;
}
