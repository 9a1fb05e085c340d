/* cmd_trace.c: 'kvsim trace info|verify|export', inspecting .kvt trace files. */
#include "cli.h"

#include "../common/fsutil.h"
#include "../trace/trace.h"

#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* .npy files declare '<f4', and rows are written from memory as they are. */
_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "npy export assumes a little-endian host");

static const char usage_text[] =
    "usage: kvsim trace info FILE [--json]\n"
    "       kvsim trace verify FILE\n"
    "       kvsim trace export FILE -o DIR [--kind q|k|k_pre|v] [--layer L]\n"
    "\n"
    "  info     print shapes, dtype, token counts, sizes and metadata of a trace;\n"
    "           --json prints one JSON object instead\n"
    "  verify   read and check every frame; exits 1 naming the first bad byte offset\n"
    "  export   write one NumPy .npy file per (kind, layer), DIR/KIND_layerLL.npy,\n"
    "           float32 of shape (n_tokens, row width); --kind and --layer select one\n"
    "\n"
    "Traces are written by 'kvsim capture'. Format: docs/trace-format.md.\n";

static double ratio(uint64_t raw, uint64_t compressed)
{
    return compressed ? (double)raw / (double)compressed : 0.0;
}

/* ---- info ------------------------------------------------------------- */

/* Length of an integer array in the metadata, or -1 when the key is absent
** or not an array. */
static long array_length(json_t *metadata, const char *key)
{
    json_t *value = json_object_get(metadata, key);
    return json_is_array(value) ? (long)json_array_size(value) : -1;
}

static json_t *info_json(const char *path, kvs_trace_t *t, json_t *metadata)
{
    const kvs_trace_shape_t *shape = kvs_trace_get_shape(t);
    json_t *root = json_object();
    json_t *kinds = json_object();
    json_t *value;

    json_object_set_new(root, "path", json_string(path));
    json_object_set_new(root, "format_version", json_integer(KVS_TRACE_FORMAT_VERSION));
    json_object_set_new(root, "content_hash", json_string(kvs_trace_content_hash(t)));
    json_object_set_new(root, "n_layers", json_integer(shape->n_layers));
    json_object_set_new(root, "n_heads", json_integer(shape->n_heads));
    json_object_set_new(root, "n_kv_heads", json_integer(shape->n_kv_heads));
    json_object_set_new(root, "head_dim", json_integer(shape->head_dim));
    json_object_set_new(root, "dtype", json_string(kvs_dtype_name(kvs_trace_dtype(t))));
    json_object_set_new(root, "block_tokens", json_integer(kvs_trace_block_tokens(t)));
    json_object_set_new(root, "n_frames", json_integer(kvs_trace_n_frames(t)));
    json_object_set_new(root, "n_tokens", json_integer(kvs_trace_n_tokens(t)));

    long n_prompt = array_length(metadata, "prompt_ids");
    long n_generated = array_length(metadata, "generated_ids");
    json_object_set_new(root, "n_prompt", n_prompt < 0 ? json_null() : json_integer(n_prompt));
    json_object_set_new(root, "n_generated",
                        n_generated < 0 ? json_null() : json_integer(n_generated));
    value = json_object_get(metadata, "prompt_ids");
    json_object_set(root, "prompt_ids", value ? value : json_null());
    value = json_object_get(metadata, "generated_ids");
    json_object_set(root, "generated_ids", value ? value : json_null());
    value = json_object_get(metadata, "generated_text");
    if (json_is_string(value))
        json_object_set(root, "generated_text", value);

    json_object_set_new(root, "file_bytes", json_integer((json_int_t)kvs_trace_file_bytes(t)));
    json_object_set_new(root, "compressed_bytes",
                        json_integer((json_int_t)kvs_trace_compressed_bytes(t)));
    json_object_set_new(root, "raw_bytes", json_integer((json_int_t)kvs_trace_raw_bytes(t)));
    json_object_set_new(root, "ratio",
                        json_real(ratio(kvs_trace_raw_bytes(t), kvs_trace_compressed_bytes(t))));
    for (int k = 0; k < KVS_KIND_COUNT; k++) {
        uint64_t c = kvs_trace_kind_compressed_bytes(t, (kvs_kind_e)k);
        uint64_t r = kvs_trace_kind_raw_bytes(t, (kvs_kind_e)k);
        json_object_set_new(kinds, kvs_kind_name((kvs_kind_e)k),
                            json_pack("{s:I, s:I, s:f}", "compressed_bytes", (json_int_t)c,
                                      "raw_bytes", (json_int_t)r, "ratio", ratio(r, c)));
    }
    json_object_set_new(root, "kinds", kinds);
    json_object_set(root, "metadata", metadata);
    return root;
}

static void print_info_text(const char *path, kvs_trace_t *t, json_t *metadata)
{
    const kvs_trace_shape_t *shape = kvs_trace_get_shape(t);
    uint64_t compressed = kvs_trace_compressed_bytes(t), raw = kvs_trace_raw_bytes(t);
    long n_prompt = array_length(metadata, "prompt_ids");
    long n_generated = array_length(metadata, "generated_ids");

    printf("file:         %s (%llu bytes)\n", path, (unsigned long long)kvs_trace_file_bytes(t));
    printf("content hash: %s\n", kvs_trace_content_hash(t));
    printf("format:       version %u, dtype %s, %u frames of up to %u tokens\n",
           KVS_TRACE_FORMAT_VERSION, kvs_dtype_name(kvs_trace_dtype(t)), kvs_trace_n_frames(t),
           kvs_trace_block_tokens(t));
    printf("shape:        %u layers, %u query heads, %u KV heads, head_dim %u "
           "(q rows %u floats, k/k_pre/v rows %u)\n",
           shape->n_layers, shape->n_heads, shape->n_kv_heads, shape->head_dim,
           kvs_trace_row_width(shape, KVS_KIND_Q), kvs_trace_row_width(shape, KVS_KIND_K));
    printf("tokens:       %u positions", kvs_trace_n_tokens(t));
    if (n_prompt >= 0)
        printf(", prompt %ld", n_prompt);
    if (n_generated >= 0)
        printf(", generated %ld", n_generated);
    printf("\n");
    printf("size:         %llu compressed bytes, %llu raw F32 bytes, ratio %.2f\n",
           (unsigned long long)compressed, (unsigned long long)raw, ratio(raw, compressed));
    for (int k = 0; k < KVS_KIND_COUNT; k++) {
        uint64_t c = kvs_trace_kind_compressed_bytes(t, (kvs_kind_e)k);
        uint64_t r = kvs_trace_kind_raw_bytes(t, (kvs_kind_e)k);
        printf("  %-6s      %llu compressed bytes, %llu raw, ratio %.2f\n",
               kvs_kind_name((kvs_kind_e)k), (unsigned long long)c, (unsigned long long)r,
               ratio(r, c));
    }

    json_t *text = json_object_get(metadata, "generated_text");
    if (json_is_string(text))
        printf("generated:    %s\n", json_string_value(text));

    char *dumped = json_dumps(metadata, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    printf("metadata:     %s\n", dumped ? dumped : "{}");
    free(dumped);
}

static int run_info(const char *path, bool as_json)
{
    kvs_trace_t *t;
    kvs_status_e rc = kvs_trace_open(path, &t);
    json_error_t err;

    if (rc != KVS_OK)
        return kvs_cli_report_error("trace info", rc);

    /* open already checked that the metadata is a JSON object. */
    json_t *metadata = json_loads(kvs_trace_metadata(t), 0, &err);
    if (!metadata) {
        kvs_trace_close(t);
        return kvs_cli_report_error("trace info",
                                    kvs_fail(KVS_ERR_INTERNAL, "%s: metadata does not parse: %s",
                                             path, err.text));
    }

    if (as_json) {
        json_t *root = info_json(path, t, metadata);
        char *dumped = json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
        printf("%s\n", dumped);
        free(dumped);
        json_decref(root);
    } else {
        print_info_text(path, t, metadata);
    }
    json_decref(metadata);
    kvs_trace_close(t);
    return KVS_EXIT_OK;
}

/* ---- verify ----------------------------------------------------------- */

static int run_verify(const char *path)
{
    uint64_t bad_offset = 0;
    kvs_status_e rc = kvs_trace_verify(path, &bad_offset);
    kvs_trace_t *t;

    if (rc != KVS_OK)
        return kvs_cli_report_error("trace verify", rc);

    /* verify closed its handle; open again for the figures to print. */
    rc = kvs_trace_open(path, &t);
    if (rc != KVS_OK)
        return kvs_cli_report_error("trace verify", rc);
    printf("ok: %u frames, %u tokens, %u layers, %llu compressed bytes, content hash %s\n",
           kvs_trace_n_frames(t), kvs_trace_n_tokens(t), kvs_trace_get_shape(t)->n_layers,
           (unsigned long long)kvs_trace_compressed_bytes(t), kvs_trace_content_hash(t));
    kvs_trace_close(t);
    return KVS_EXIT_OK;
}

/* ---- export ----------------------------------------------------------- */

/* Writes the NumPy format 1.0 preamble: magic, version, header length and
** a Python dict literal padded with spaces to a multiple of 64 bytes. */
static kvs_status_e write_npy_header(kvs_outfile_t *f, uint32_t rows, uint32_t cols)
{
    char header[256];
    int n = snprintf(header, sizeof header,
                     "{'descr': '<f4', 'fortran_order': False, 'shape': (%u, %u), }", rows, cols);
    size_t total = 10 + (size_t)n + 1;
    size_t padded = (total + 63) / 64 * 64;
    size_t header_len = padded - 10;

    memset(header + n, ' ', header_len - (size_t)n - 1);
    header[header_len - 1] = '\n';

    uint8_t preamble[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, (uint8_t)header_len,
                            (uint8_t)(header_len >> 8)};
    KVS_FORWARD(kvs_outfile_write(f, preamble, sizeof preamble));
    return kvs_outfile_write(f, header, header_len);
}

static kvs_status_e export_one(kvs_trace_t *t, const char *dir, kvs_kind_e kind, uint32_t layer,
                               float *buf, uint32_t chunk, char *written, size_t written_cap)
{
    uint32_t width = kvs_trace_row_width(kvs_trace_get_shape(t), kind);
    uint32_t n_tokens = kvs_trace_n_tokens(t);
    char name[64];
    kvs_outfile_t *f;
    kvs_status_e rc;

    snprintf(name, sizeof name, "%s_layer%02u.npy", kvs_kind_name(kind), layer);
    KVS_FORWARD(kvs_path_join(written, written_cap, dir, name));
    KVS_FORWARD(kvs_outfile_open(written, &f));

    rc = write_npy_header(f, n_tokens, width);
    for (uint32_t pos = 0; rc == KVS_OK && pos < n_tokens; pos += chunk) {
        uint32_t n = n_tokens - pos < chunk ? n_tokens - pos : chunk;
        rc = kvs_trace_read(t, kind, layer, pos, n, buf);
        if (rc == KVS_OK)
            rc = kvs_outfile_write(f, buf, (size_t)n * width * sizeof(float));
    }
    if (rc != KVS_OK) {
        kvs_outfile_abort(f);
        return rc;
    }
    return kvs_outfile_commit(f);
}

static int run_export(const char *path, const char *out_dir, int kind_filter, bool has_layer,
                      uint32_t layer_filter)
{
    kvs_trace_t *t;
    kvs_status_e rc = kvs_trace_open(path, &t);

    if (rc != KVS_OK)
        return kvs_cli_report_error("trace export", rc);

    const kvs_trace_shape_t *shape = kvs_trace_get_shape(t);
    if (has_layer && layer_filter >= shape->n_layers) {
        uint32_t n_layers = shape->n_layers;
        kvs_trace_close(t);
        return kvs_cli_usage_error("trace export", "--layer %u is out of range: %s has layers 0..%u",
                                   layer_filter, path, n_layers - 1);
    }

    /* Read in whole blocks, so no frame is decompressed twice. */
    uint32_t chunk = kvs_trace_block_tokens(t) * (1024 / kvs_trace_block_tokens(t) + 1);
    uint32_t widest = kvs_trace_row_width(shape, KVS_KIND_Q);
    if (kvs_trace_row_width(shape, KVS_KIND_K) > widest)
        widest = kvs_trace_row_width(shape, KVS_KIND_K);
    float *buf = malloc((size_t)chunk * widest * sizeof *buf);
    char written[4096];
    int n_files = 0;

    /* Verify every frame first, so a damaged trace leaves no partial set of
    ** files behind. */
    uint64_t bad_offset = 0;
    rc = buf ? kvs_trace_verify(path, &bad_offset)
             : kvs_fail(KVS_ERR_NOMEM, "out of memory exporting %s", path);
    if (rc == KVS_OK)
        rc = kvs_mkdir_p(out_dir);
    for (int k = 0; rc == KVS_OK && k < KVS_KIND_COUNT; k++) {
        if (kind_filter >= 0 && k != kind_filter)
            continue;
        for (uint32_t l = 0; rc == KVS_OK && l < shape->n_layers; l++) {
            if (has_layer && l != layer_filter)
                continue;
            rc = export_one(t, out_dir, (kvs_kind_e)k, l, buf, chunk, written, sizeof written);
            if (rc == KVS_OK) {
                printf("%s\n", written);
                n_files++;
            }
        }
    }
    free(buf);
    kvs_trace_close(t);
    if (rc != KVS_OK)
        return kvs_cli_report_error("trace export", rc);
    fprintf(stderr, "kvsim trace export: wrote %d .npy files to %s\n", n_files, out_dir);
    return KVS_EXIT_OK;
}

/* ---- argument parsing ------------------------------------------------- */

static int parse_kind(const char *text, int *out)
{
    for (int k = 0; k < KVS_KIND_COUNT; k++) {
        if (!strcmp(text, kvs_kind_name((kvs_kind_e)k))) {
            *out = k;
            return KVS_EXIT_OK;
        }
    }
    return kvs_cli_usage_error("trace export", "unknown --kind '%s' (use q, k, k_pre or v)", text);
}

int kvs_cmd_trace(int argc, char **argv)
{
    if (argc < 2) {
        fputs(usage_text, stderr);
        return KVS_EXIT_USAGE;
    }
    const char *sub = argv[1];
    if (!strcmp(sub, "--help") || !strcmp(sub, "-h") || !strcmp(sub, "help")) {
        fputs(usage_text, stdout);
        return KVS_EXIT_OK;
    }
    if (strcmp(sub, "info") && strcmp(sub, "verify") && strcmp(sub, "export"))
        return kvs_cli_usage_error("trace", "unknown subcommand '%s' (use info, verify or export)",
                                   sub);

    char cmd[32];
    const char *file = NULL, *out_dir = NULL;
    bool as_json = false, has_layer = false;
    int kind_filter = -1;
    uint32_t layer_filter = 0;

    snprintf(cmd, sizeof cmd, "trace %s", sub);
    for (int i = 2; i < argc; i++) {
        const char *arg = argv[i];
        bool is_export = !strcmp(sub, "export");
        bool takes_value = is_export && (!strcmp(arg, "-o") || !strcmp(arg, "--out") ||
                                         !strcmp(arg, "--kind") || !strcmp(arg, "--layer"));

        if (!strcmp(arg, "--help") || !strcmp(arg, "-h")) {
            fputs(usage_text, stdout);
            return KVS_EXIT_OK;
        }
        if (takes_value && i + 1 >= argc)
            return kvs_cli_usage_error(cmd, "%s needs a value", arg);
        if (!strcmp(sub, "info") && !strcmp(arg, "--json")) {
            as_json = true;
        } else if (takes_value && (!strcmp(arg, "-o") || !strcmp(arg, "--out"))) {
            out_dir = argv[++i];
        } else if (takes_value && !strcmp(arg, "--kind")) {
            int status = parse_kind(argv[++i], &kind_filter);
            if (status != KVS_EXIT_OK)
                return status;
        } else if (takes_value && !strcmp(arg, "--layer")) {
            kvs_status_e rc = kvs_cli_parse_u32("--layer", argv[++i], 0, UINT32_MAX, &layer_filter);
            if (rc != KVS_OK)
                return kvs_cli_report_error(cmd, rc);
            has_layer = true;
        } else if (arg[0] == '-' && arg[1] != '\0') {
            return kvs_cli_usage_error(cmd, "unknown option '%s'", arg);
        } else if (!file) {
            file = arg;
        } else {
            return kvs_cli_usage_error(cmd, "unexpected argument '%s' (one trace file at a time)",
                                       arg);
        }
    }

    if (!file)
        return kvs_cli_usage_error(cmd, "missing trace FILE");
    if (!strcmp(sub, "info"))
        return run_info(file, as_json);
    if (!strcmp(sub, "verify"))
        return run_verify(file);
    if (!out_dir)
        return kvs_cli_usage_error(cmd, "missing -o DIR (the folder for the .npy files)");
    return run_export(file, out_dir, kind_filter, has_layer, layer_filter);
}
