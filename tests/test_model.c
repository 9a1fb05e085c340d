/*
** test_model.c: config.json parsing, safetensors validation and model
** folder loading, including sharded folders and broken files.
*/
#include "testutil.h"

#include "capture/forward.h"
#include "capture/matvec.h"
#include "capture/model.h"
#include "capture/safetensors.h"
#include "capture/sample.h"
#include "common/fsutil.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *stories_dir;

/* ---- config.json ------------------------------------------------------------ */

static const char *base_config =
    "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\","
    " \"hidden_size\": 64, \"intermediate_size\": 172, \"num_hidden_layers\": 5,"
    " \"num_attention_heads\": 8, \"num_key_value_heads\": 4, \"vocab_size\": 512,"
    " \"rms_norm_eps\": 1e-05, \"rope_theta\": 10000.0, \"rope_scaling\": null,"
    " \"tie_word_embeddings\": true, \"bos_token_id\": 1, \"eos_token_id\": 2}";

/* base_config with one key replaced (value NULL removes it). */
static kvs_status_e parse_with(const char *key, json_t *value, kvs_model_config_t *cfg)
{
    json_t *root = json_loads(base_config, 0, NULL);
    char *text;

    ck_assert_ptr_nonnull(root);
    if (value)
        json_object_set_new(root, key, value);
    else
        json_object_del(root, key);
    text = json_dumps(root, 0);
    kvs_status_e rc = kvs_model_config_parse(text, strlen(text), "cfg/config.json", cfg);
    free(text);
    json_decref(root);
    return rc;
}

START_TEST(config_parses_fields_and_defaults)
{
    kvs_model_config_t c;

    ck_assert_int_eq(parse_with("head_dim", NULL, &c), KVS_OK);
    ck_assert_uint_eq(c.hidden_size, 64);
    ck_assert_uint_eq(c.head_dim, 8); /* hidden_size / heads when head_dim is absent */
    ck_assert_uint_eq(c.n_kv_heads, 4);
    ck_assert(c.rms_norm_eps == 1e-5);
    ck_assert_int_eq(c.tie_word_embeddings, 1);
    ck_assert_int_eq(c.bos_id, 1);
    ck_assert_uint_eq(c.n_eos, 1);
    ck_assert_int_eq(c.eos_ids[0], 2);
    ck_assert_int_eq(c.synthetic, 0);

    ck_assert_int_eq(parse_with("eos_token_id", json_pack("[i,i]", 2, 7), &c), KVS_OK);
    ck_assert_uint_eq(c.n_eos, 2);
    ck_assert_int_eq(c.eos_ids[1], 7);

    ck_assert_int_eq(parse_with("num_key_value_heads", NULL, &c), KVS_OK);
    ck_assert_uint_eq(c.n_kv_heads, 8); /* defaults to the query head count */
    ck_assert_int_eq(parse_with("rms_norm_eps", NULL, &c), KVS_OK);
    ck_assert(c.rms_norm_eps == 1e-6);
    ck_assert_int_eq(parse_with("head_dim", json_integer(16), &c), KVS_OK);
    ck_assert_uint_eq(c.head_dim, 16);
    ck_assert_int_eq(parse_with("architectures", NULL, &c), KVS_OK); /* model_type suffices */
}
END_TEST

START_TEST(config_missing_key_named)
{
    kvs_model_config_t c;

    ck_assert_int_eq(parse_with("hidden_size", NULL, &c), KVS_ERR_CONFIG);
    ck_assert_ptr_nonnull(strstr(kvs_error_message(), "hidden_size"));
    ck_assert_ptr_nonnull(strstr(kvs_error_message(), "cfg/config.json"));
    ck_assert_int_eq(parse_with("vocab_size", NULL, &c), KVS_ERR_CONFIG);
    ck_assert_ptr_nonnull(strstr(kvs_error_message(), "vocab_size"));
}
END_TEST

START_TEST(config_wrong_type_named)
{
    kvs_model_config_t c;

    ck_assert_int_eq(parse_with("num_hidden_layers", json_string("5"), &c), KVS_ERR_CONFIG);
    ck_assert_ptr_nonnull(strstr(kvs_error_message(), "num_hidden_layers"));
    ck_assert_int_eq(parse_with("rope_theta", json_string("1e4"), &c), KVS_ERR_CONFIG);
    ck_assert_ptr_nonnull(strstr(kvs_error_message(), "rope_theta"));
    ck_assert_int_eq(parse_with("tie_word_embeddings", json_integer(1), &c), KVS_ERR_CONFIG);
    ck_assert_int_eq(parse_with("eos_token_id", json_string("2"), &c), KVS_ERR_CONFIG);
    ck_assert_ptr_nonnull(strstr(kvs_error_message(), "eos_token_id"));
    ck_assert_int_eq(parse_with("hidden_size", json_integer(0), &c), KVS_ERR_CONFIG);
    ck_assert_int_eq(parse_with("rms_norm_eps", json_real(-1.0), &c), KVS_ERR_CONFIG);
    ck_assert_int_eq(parse_with("num_key_value_heads", json_integer(3), &c), KVS_ERR_CONFIG);
    ck_assert_ptr_nonnull(strstr(kvs_error_message(), "num_key_value_heads"));
    ck_assert_int_eq(parse_with("head_dim", json_integer(7), &c), KVS_ERR_CONFIG);
    ck_assert_int_eq(parse_with("bos_token_id", json_integer(512), &c), KVS_ERR_CONFIG);
}
END_TEST

START_TEST(config_bad_json_and_unsupported)
{
    kvs_model_config_t c;

    ck_assert_int_eq(kvs_model_config_parse("{\"hidden_size\": 64,", 18, "x/config.json", &c),
                     KVS_ERR_CONFIG);
    ck_assert_ptr_nonnull(strstr(kvs_error_message(), "x/config.json"));
    ck_assert_int_eq(kvs_model_config_parse("[1, 2]", 6, "x/config.json", &c), KVS_ERR_CONFIG);

    ck_assert_int_eq(parse_with("rope_scaling", json_pack("{s:s,s:f}", "rope_type", "llama3",
                                                           "factor", 8.0),
                                &c),
                     KVS_ERR_UNSUPPORTED);
    ck_assert_ptr_nonnull(strstr(kvs_error_message(), "rope_scaling"));
    ck_assert_int_eq(parse_with("attention_bias", json_true(), &c), KVS_ERR_UNSUPPORTED);
    ck_assert_ptr_nonnull(strstr(kvs_error_message(), "attention_bias"));
    ck_assert_int_eq(parse_with("mlp_bias", json_true(), &c), KVS_ERR_UNSUPPORTED);
    ck_assert_int_eq(parse_with("hidden_act", json_string("gelu"), &c), KVS_ERR_UNSUPPORTED);

    json_t *root = json_loads(base_config, 0, NULL);
    json_object_set_new(root, "architectures", json_pack("[s]", "MistralForCausalLM"));
    json_object_set_new(root, "model_type", json_string("mistral"));
    char *text = json_dumps(root, 0);
    ck_assert_int_eq(kvs_model_config_parse(text, strlen(text), "m/config.json", &c),
                     KVS_ERR_UNSUPPORTED);
    ck_assert_ptr_nonnull(strstr(kvs_error_message(), "MistralForCausalLM"));
    free(text);
    json_decref(root);

    /* One key naming another architecture is enough to reject the config,
    ** whatever the other key says. */
    ck_assert_int_eq(parse_with("model_type", json_string("gpt2"), &c), KVS_ERR_UNSUPPORTED);
    ck_assert_ptr_nonnull(strstr(kvs_error_message(), "gpt2"));
    ck_assert_int_eq(parse_with("architectures", json_pack("[s]", "MistralForCausalLM"), &c),
                     KVS_ERR_UNSUPPORTED);
    ck_assert_ptr_nonnull(strstr(kvs_error_message(), "MistralForCausalLM"));
}
END_TEST

START_TEST(config_dump_round_trips)
{
    kvs_model_config_t a, b;
    char *text;

    ck_assert_int_eq(parse_with("eos_token_id", json_pack("[i,i]", 2, 5), &a), KVS_OK);
    ck_assert_int_eq(kvs_model_config_dump(&a, 1, &text), KVS_OK);
    ck_assert_int_eq(kvs_model_config_parse(text, strlen(text), "dump", &b), KVS_OK);
    ck_assert_int_eq(b.synthetic, 1);
    b.synthetic = 0;
    ck_assert_int_eq(memcmp(&a, &b, sizeof a), 0);
    free(text);
}
END_TEST

/* ---- safetensors headers ------------------------------------------------------ */

/* Builds a file: 8-byte length, header text, then data_size zero bytes. */
static uint8_t *make_st(const char *header, uint64_t declared_len, size_t data_size, size_t *size)
{
    size_t hl = strlen(header);
    uint8_t *buf = calloc(1, 8 + hl + data_size);

    for (int i = 0; i < 8; i++)
        buf[i] = (uint8_t)(declared_len >> (8 * i));
    memcpy(buf + 8, header, hl);
    *size = 8 + hl + data_size;
    return buf;
}

static kvs_status_e parse_header_text(const char *header, size_t data_size)
{
    size_t size;
    uint8_t *buf = make_st(header, strlen(header), data_size, &size);
    kvs_st_file_t *f = NULL;
    kvs_status_e rc = kvs_st_parse(buf, size, "t.safetensors", &f);

    kvs_st_close(f);
    free(buf);
    return rc;
}

START_TEST(st_valid_header_parses)
{
    const char *h = "{\"__metadata__\": {\"format\": \"pt\"},"
                    " \"b\": {\"dtype\": \"BF16\", \"shape\": [2, 3], \"data_offsets\": [16, 28]},"
                    " \"a\": {\"dtype\": \"F32\", \"shape\": [4], \"data_offsets\": [0, 16]}}";
    size_t size;
    uint8_t *buf = make_st(h, strlen(h), 28, &size);
    kvs_st_file_t *f;

    ck_assert_int_eq(kvs_st_parse(buf, size, "ok.safetensors", &f), KVS_OK);
    ck_assert_uint_eq(kvs_st_count(f), 2);
    const kvs_st_tensor_t *t = kvs_st_find(f, "b");
    ck_assert_ptr_nonnull(t);
    ck_assert_int_eq(t->type, KVS_WTYPE_BF16);
    ck_assert_uint_eq(t->n_dims, 2);
    ck_assert_uint_eq(t->shape[1], 3);
    ck_assert_uint_eq(t->offset, 8 + strlen(h) + 16);
    ck_assert_uint_eq(t->nbytes, 12);
    ck_assert_ptr_null(kvs_st_find(f, "__metadata__"));
    kvs_st_close(f);
    free(buf);
}
END_TEST

START_TEST(st_header_length_too_large)
{
    const char *h = "{}";
    size_t size;
    kvs_st_file_t *f;
    uint8_t *buf = make_st(h, (uint64_t)200 * 1000 * 1000, 0, &size);

    ck_assert_int_eq(kvs_st_parse(buf, size, "big.safetensors", &f), KVS_ERR_SAFETENSORS);
    ck_assert_ptr_nonnull(strstr(kvs_error_message(), "big.safetensors"));
    ck_assert_ptr_nonnull(strstr(kvs_error_message(), "limit"));
    free(buf);

    /* Below the limit but past the end of the file. */
    buf = make_st(h, 1000, 0, &size);
    ck_assert_int_eq(kvs_st_parse(buf, size, "short.safetensors", &f), KVS_ERR_SAFETENSORS);
    ck_assert_ptr_nonnull(strstr(kvs_error_message(), "past the end"));
    free(buf);

    ck_assert_int_eq(kvs_st_parse("\x02\0\0", 3, "tiny.safetensors", &f), KVS_ERR_SAFETENSORS);
}
END_TEST

START_TEST(st_bad_json_rejected)
{
    ck_assert_int_eq(parse_header_text("{\"a\": {\"dtype\": ", 0), KVS_ERR_SAFETENSORS);
    ck_assert_ptr_nonnull(strstr(kvs_error_message(), "not valid JSON"));
    ck_assert_int_eq(parse_header_text("[1, 2, 3]", 0), KVS_ERR_SAFETENSORS);
    ck_assert_int_eq(parse_header_text("{\"a\": 5}", 0), KVS_ERR_SAFETENSORS);
    ck_assert_int_eq(parse_header_text("{\"__metadata__\": {\"k\": 1}}", 0), KVS_ERR_SAFETENSORS);
    ck_assert_int_eq(
        parse_header_text(
            "{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4], \"x\": 1}}", 4),
        KVS_ERR_SAFETENSORS);
    ck_assert_ptr_nonnull(strstr(kvs_error_message(), "unknown key"));
}
END_TEST

START_TEST(st_offsets_outside_file)
{
    ck_assert_int_eq(
        parse_header_text("{\"w\": {\"dtype\": \"F32\", \"shape\": [4], \"data_offsets\": [0, 16]}}", 8),
        KVS_ERR_SAFETENSORS);
    ck_assert_ptr_nonnull(strstr(kvs_error_message(), "'w'"));
    ck_assert_ptr_nonnull(strstr(kvs_error_message(), "outside"));
    ck_assert_int_eq(
        parse_header_text("{\"w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [8, 4]}}", 8),
        KVS_ERR_SAFETENSORS);
    ck_assert_int_eq(
        parse_header_text("{\"w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [-4, 0]}}", 8),
        KVS_ERR_SAFETENSORS);
}
END_TEST

START_TEST(st_overlapping_tensors)
{
    ck_assert_int_eq(parse_header_text("{\"a\": {\"dtype\": \"F32\", \"shape\": [4], \"data_offsets\": [0, 16]},"
                                       " \"b\": {\"dtype\": \"F32\", \"shape\": [4], \"data_offsets\": [8, 24]}}",
                                       24),
                     KVS_ERR_SAFETENSORS);
    ck_assert_ptr_nonnull(strstr(kvs_error_message(), "overlap"));
    ck_assert_ptr_nonnull(strstr(kvs_error_message(), "'a'"));
    ck_assert_ptr_nonnull(strstr(kvs_error_message(), "'b'"));
}
END_TEST

START_TEST(st_wrong_dtype_and_size)
{
    ck_assert_int_eq(
        parse_header_text("{\"w\": {\"dtype\": \"F64\", \"shape\": [2], \"data_offsets\": [0, 16]}}", 16),
        KVS_ERR_SAFETENSORS);
    ck_assert_ptr_nonnull(strstr(kvs_error_message(), "F64"));
    ck_assert_ptr_nonnull(strstr(kvs_error_message(), "'w'"));
    ck_assert_int_eq(
        parse_header_text("{\"w\": {\"dtype\": \"Q4\", \"shape\": [2], \"data_offsets\": [0, 16]}}", 16),
        KVS_ERR_SAFETENSORS);
    ck_assert_int_eq(
        parse_header_text("{\"w\": {\"dtype\": \"BF16\", \"shape\": [3, 3], \"data_offsets\": [0, 16]}}", 16),
        KVS_ERR_SAFETENSORS);
    ck_assert_ptr_nonnull(strstr(kvs_error_message(), "need 18"));
    /* A shape whose element count overflows 64 bits. */
    ck_assert_int_eq(parse_header_text("{\"w\": {\"dtype\": \"F32\", \"shape\": [4294967296, 4294967296],"
                                       " \"data_offsets\": [0, 0]}}",
                                       0),
                     KVS_ERR_SAFETENSORS);
}
END_TEST

/* ---- model folders ----------------------------------------------------------------- */

typedef struct st_entry {
    char name[96];
    const char *dtype;
    json_t *shape;
    const uint8_t *data;
    size_t nbytes;
} st_entry_t;

/* Writes a safetensors file from entries, laid out back to back. */
static void write_st(const char *path, st_entry_t *e, int n)
{
    json_t *root = json_object();
    uint64_t off = 0;

    for (int i = 0; i < n; i++) {
        json_object_set_new(root, e[i].name,
                            json_pack("{s:s,s:O,s:[I,I]}", "dtype", e[i].dtype, "shape", e[i].shape,
                                      "data_offsets", (json_int_t)off, (json_int_t)(off + e[i].nbytes)));
        off += e[i].nbytes;
    }
    char *header = json_dumps(root, JSON_COMPACT);
    size_t hl = strlen(header), padded = (hl + 7) & ~(size_t)7;
    FILE *fp = fopen(path, "wb");
    uint8_t len[8];

    ck_assert_ptr_nonnull(fp);
    for (int i = 0; i < 8; i++)
        len[i] = (uint8_t)((uint64_t)padded >> (8 * i));
    fwrite(len, 1, 8, fp);
    fwrite(header, 1, hl, fp);
    for (size_t i = hl; i < padded; i++)
        fputc(' ', fp);
    for (int i = 0; i < n; i++)
        fwrite(e[i].data, 1, e[i].nbytes, fp);
    fclose(fp);
    free(header);
    json_decref(root);
}

/* Entries of the stories260K file, in file order. */
static int stories_entries(kvs_st_file_t *st, st_entry_t *e)
{
    uint32_t n = kvs_st_count(st);

    for (uint32_t i = 0; i < n; i++) {
        const kvs_st_tensor_t *t = kvs_st_tensor(st, i);
        snprintf(e[i].name, sizeof e[i].name, "%s", t->name);
        e[i].dtype = kvs_wtype_name(t->type);
        e[i].shape = json_array();
        for (uint32_t d = 0; d < t->n_dims; d++)
            json_array_append_new(e[i].shape, json_integer((json_int_t)t->shape[d]));
        e[i].data = kvs_st_base(st) + t->offset;
        e[i].nbytes = t->nbytes;
    }
    return (int)n;
}

static void free_entries(st_entry_t *e, int n)
{
    for (int i = 0; i < n; i++)
        json_decref(e[i].shape);
}

static char *copy_config(const char *name)
{
    char *dir = kvs_test_tmpdir(name);
    char src[4096], dst[4200];
    char *text;
    size_t size;

    snprintf(src, sizeof src, "%s/config.json", stories_dir);
    snprintf(dst, sizeof dst, "%s/config.json", dir);
    ck_assert_int_eq(kvs_read_file(src, &text, &size), KVS_OK);
    ck_assert_int_eq(kvs_write_file(dst, text, size), KVS_OK);
    free(text);
    return dir;
}

static kvs_st_file_t *open_stories(void)
{
    char path[4096];
    kvs_st_file_t *st;

    snprintf(path, sizeof path, "%s/model.safetensors", stories_dir);
    ck_assert_int_eq(kvs_st_open(path, &st), KVS_OK);
    return st;
}

START_TEST(model_missing_tensor_named)
{
    kvs_st_file_t *st = open_stories();
    st_entry_t e[64];
    int n = stories_entries(st, e);
    char *dir = copy_config("missing_tensor");
    char path[4200];
    kvs_model_t *m;

    /* Drop layer 3's v_proj. */
    int kept = 0;
    for (int i = 0; i < n; i++) {
        if (strcmp(e[i].name, "model.layers.3.self_attn.v_proj.weight"))
            e[kept++] = e[i];
        else
            json_decref(e[i].shape);
    }
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    write_st(path, e, kept);
    ck_assert_int_eq(kvs_model_load(dir, &m), KVS_ERR_TENSOR);
    ck_assert_ptr_nonnull(strstr(kvs_error_message(), "model.layers.3.self_attn.v_proj.weight"));
    ck_assert_ptr_nonnull(strstr(kvs_error_message(), "model.safetensors"));
    free_entries(e, kept);
    kvs_st_close(st);
    free(dir);
}
END_TEST

START_TEST(model_wrong_shape_named)
{
    kvs_st_file_t *st = open_stories();
    st_entry_t e[64];
    int n = stories_entries(st, e);
    char *dir = copy_config("wrong_shape");
    char path[4200];
    kvs_model_t *m;

    /* Same bytes, transposed shape: [64, 172] declared as [172, 64]. */
    for (int i = 0; i < n; i++) {
        if (!strcmp(e[i].name, "model.layers.1.mlp.down_proj.weight")) {
            json_decref(e[i].shape);
            e[i].shape = json_pack("[i,i]", 172, 64);
        }
    }
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    write_st(path, e, n);
    ck_assert_int_eq(kvs_model_load(dir, &m), KVS_ERR_TENSOR);
    ck_assert_ptr_nonnull(strstr(kvs_error_message(), "model.layers.1.mlp.down_proj.weight"));
    ck_assert_ptr_nonnull(strstr(kvs_error_message(), "[172, 64]"));
    ck_assert_ptr_nonnull(strstr(kvs_error_message(), "expected [64, 172]"));
    free_entries(e, n);
    kvs_st_close(st);
    free(dir);
}
END_TEST

START_TEST(model_corrupt_file_and_missing_folder)
{
    char *dir = copy_config("corrupt");
    char path[4200];
    kvs_model_t *m;
    uint8_t junk[64] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f};

    ck_assert_int_eq(kvs_model_load(dir, &m), KVS_ERR_NOT_FOUND);
    ck_assert_ptr_nonnull(strstr(kvs_error_message(), "model.safetensors"));
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    ck_assert_int_eq(kvs_write_file(path, junk, sizeof junk), KVS_OK);
    ck_assert_int_eq(kvs_model_load(dir, &m), KVS_ERR_SAFETENSORS);
    ck_assert_ptr_nonnull(strstr(kvs_error_message(), path));

    ck_assert_int_eq(kvs_model_load("/nonexistent/kvsim-model", &m), KVS_ERR_NOT_FOUND);
    ck_assert_ptr_nonnull(strstr(kvs_error_message(), "/nonexistent/kvsim-model"));
    snprintf(path, sizeof path, "%s/config.json", dir);
    ck_assert_int_eq(kvs_write_file(path, "{\"hidden_size\": ", 16), KVS_OK);
    ck_assert_int_eq(kvs_model_load(dir, &m), KVS_ERR_CONFIG);
    ck_assert_ptr_nonnull(strstr(kvs_error_message(), "config.json"));
    free(dir);
}
END_TEST

/* Two shards plus an index load to the same model: the first greedy ids
** match the expected output. */
START_TEST(model_sharded_loads)
{
    kvs_st_file_t *st = open_stories();
    st_entry_t e[64];
    int n = stories_entries(st, e);
    char *dir = copy_config("sharded");
    char path[4200];
    json_t *map = json_object();
    kvs_model_t *m;
    kvs_forward_t *f;
    float logits[512];
    int32_t tok = 1;
    /* First ids of the expected greedy output of stories260K. */
    const int32_t expected[5] = {403, 407, 261, 378, 432};

    int half = n / 2;
    snprintf(path, sizeof path, "%s/model-00001-of-00002.safetensors", dir);
    write_st(path, e, half);
    snprintf(path, sizeof path, "%s/model-00002-of-00002.safetensors", dir);
    write_st(path, e + half, n - half);
    for (int i = 0; i < n; i++)
        json_object_set_new(map, e[i].name,
                            json_string(i < half ? "model-00001-of-00002.safetensors"
                                                 : "model-00002-of-00002.safetensors"));
    json_t *index = json_pack("{s:{s:i},s:o}", "metadata", "total_size", 1044480, "weight_map", map);
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    ck_assert_int_eq(json_dump_file(index, path, 0), 0);

    ck_assert_int_eq(kvs_model_load(dir, &m), KVS_OK);
    ck_assert_int_eq(kvs_forward_create(m, 8, 1, &f), KVS_OK);
    for (int i = 0; i < 5; i++) {
        ck_assert_int_eq(kvs_forward_run(f, &tok, 1, logits), KVS_OK);
        tok = kvs_argmax(logits, 512);
        ck_assert_int_eq(tok, expected[i]);
    }
    kvs_forward_destroy(f);
    kvs_model_destroy(m);

    /* An index entry pointing outside the folder is rejected. */
    json_object_set_new(map, "model.norm.weight", json_string("../model.safetensors"));
    ck_assert_int_eq(json_dump_file(index, path, 0), 0);
    ck_assert_int_eq(kvs_model_load(dir, &m), KVS_ERR_SAFETENSORS);
    ck_assert_ptr_nonnull(strstr(kvs_error_message(), "model.norm.weight"));

    /* A tensor absent from the index is named. */
    json_object_del(map, "model.norm.weight");
    ck_assert_int_eq(json_dump_file(index, path, 0), 0);
    ck_assert_int_eq(kvs_model_load(dir, &m), KVS_ERR_TENSOR);
    ck_assert_ptr_nonnull(strstr(kvs_error_message(), "model.norm.weight"));

    json_decref(index);
    free_entries(e, n);
    kvs_st_close(st);
    free(dir);
}
END_TEST

/* Runs 10 prompt tokens and 3 decode steps and returns the final logits. */
static void run_logits(const char *dir, float *logits)
{
    kvs_model_t *m;
    kvs_forward_t *f;
    const int32_t prompt[10] = {1, 403, 407, 261, 378, 432, 383, 286, 261, 376};

    ck_assert_int_eq(kvs_model_load(dir, &m), KVS_OK);
    ck_assert_int_eq(kvs_forward_create(m, 16, 1, &f), KVS_OK);
    ck_assert_int_eq(kvs_forward_run(f, prompt, 10, logits), KVS_OK);
    for (int i = 0; i < 3; i++) {
        int32_t tok = kvs_argmax(logits, 512);
        ck_assert_int_eq(kvs_forward_run(f, &tok, 1, logits), KVS_OK);
    }
    kvs_forward_destroy(f);
    kvs_model_destroy(m);
}

static uint16_t float_to_f16(float v)
{
    /* Round to nearest F16 through the exact search of the few candidates
    ** around v; stories260K weights are far inside the normal F16 range. */
    uint16_t best = 0;
    float best_err = INFINITY;
    for (int e = 1; e < 31; e++) {
        float scale = ldexpf(1.0f, e - 25);
        long mant = lroundf(fabsf(v) / scale) - 1024;
        for (long m = mant - 1; m <= mant + 1; m++) {
            if (m < 0 || m > 1023)
                continue;
            uint16_t h = (uint16_t)((v < 0 ? 0x8000 : 0) | (e << 10) | m);
            float err = fabsf(kvs_f16_to_f32(h) - v);
            if (err < best_err)
                best_err = err, best = h;
        }
    }
    return best;
}

/* The BF16 and F16 paths (prefill panels and decode kernels) on weights
** rounded to each type must give the logits of the F32 path on the same
** rounded values, because the conversions are exact. */
START_TEST(model_half_dtypes_match_f32)
{
    kvs_st_file_t *st = open_stories();
    st_entry_t e[64];
    int n = stories_entries(st, e);
    float *want = malloc(512 * sizeof *want), *got = malloc(512 * sizeof *got);

    for (int type = KVS_WTYPE_F16; type <= KVS_WTYPE_BF16; type++) {
        char *dir_half = copy_config(type == KVS_WTYPE_F16 ? "f16" : "bf16");
        char *dir_f32 = copy_config(type == KVS_WTYPE_F16 ? "f16_as_f32" : "bf16_as_f32");
        uint8_t *half[64], *wide[64];
        st_entry_t eh[64], ew[64];
        char path[4200];

        for (int i = 0; i < n; i++) {
            size_t count = e[i].nbytes / 4;
            half[i] = malloc(count * 2);
            wide[i] = malloc(count * 4);
            for (size_t j = 0; j < count; j++) {
                float v, r;
                memcpy(&v, e[i].data + 4 * j, 4);
                uint16_t h = type == KVS_WTYPE_F16 ? float_to_f16(v) : kvs_f32_to_bf16(v);
                r = type == KVS_WTYPE_F16 ? kvs_f16_to_f32(h) : kvs_bf16_to_f32(h);
                memcpy(half[i] + 2 * j, &h, 2);
                memcpy(wide[i] + 4 * j, &r, 4);
            }
            eh[i] = e[i], ew[i] = e[i];
            eh[i].dtype = type == KVS_WTYPE_F16 ? "F16" : "BF16";
            eh[i].data = half[i], eh[i].nbytes = count * 2;
            ew[i].data = wide[i];
        }
        snprintf(path, sizeof path, "%s/model.safetensors", dir_half);
        write_st(path, eh, n);
        snprintf(path, sizeof path, "%s/model.safetensors", dir_f32);
        write_st(path, ew, n);

        run_logits(dir_f32, want);
        run_logits(dir_half, got);
        double max_ref = 0, max_err = 0;
        for (int i = 0; i < 512; i++) {
            max_ref = fmax(max_ref, fabs(want[i]));
            max_err = fmax(max_err, fabs(got[i] - want[i]));
        }
        ck_assert_msg(max_err / max_ref < 1e-5, "%s logits differ from F32 by %.3g relative",
                      type == KVS_WTYPE_F16 ? "F16" : "BF16", max_err / max_ref);
        for (int i = 0; i < n; i++)
            free(half[i]), free(wide[i]);
        free(dir_half), free(dir_f32);
    }
    free(want), free(got);
    free_entries(e, n);
    kvs_st_close(st);
}
END_TEST

/* An untied copy of stories260K (lm_head.weight = the embedding) gives the
** same logits; without lm_head.weight it is rejected by name. */
START_TEST(model_untied_head)
{
    kvs_st_file_t *st = open_stories();
    st_entry_t e[65];
    int n = stories_entries(st, e);
    char *dir = kvs_test_tmpdir("untied");
    char path[4200], src[4096];
    char *text;
    size_t size;
    float *want = malloc(512 * sizeof *want), *got = malloc(512 * sizeof *got);
    kvs_model_t *m;

    snprintf(src, sizeof src, "%s/config.json", stories_dir);
    ck_assert_int_eq(kvs_read_file(src, &text, &size), KVS_OK);
    json_t *root = json_loads(text, 0, NULL);
    free(text);
    json_object_set_new(root, "tie_word_embeddings", json_false());
    snprintf(path, sizeof path, "%s/config.json", dir);
    ck_assert_int_eq(json_dump_file(root, path, 0), 0);
    json_decref(root);

    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    write_st(path, e, n);
    ck_assert_int_eq(kvs_model_load(dir, &m), KVS_ERR_TENSOR);
    ck_assert_ptr_nonnull(strstr(kvs_error_message(), "lm_head.weight"));

    for (int i = 0; i < n; i++) {
        if (!strcmp(e[i].name, "model.embed_tokens.weight")) {
            e[n] = e[i];
            snprintf(e[n].name, sizeof e[n].name, "lm_head.weight");
            e[n].shape = json_incref(e[i].shape);
        }
    }
    write_st(path, e, n + 1);
    ck_assert_int_eq(kvs_model_load(dir, &m), KVS_OK);
    ck_assert_ptr_ne(kvs_model_lm_head(m)->data, kvs_model_embedding(m)->data);
    kvs_model_destroy(m);
    run_logits(stories_dir, want);
    run_logits(dir, got);
    for (int i = 0; i < 512; i++)
        ck_assert(got[i] == want[i]);
    free(want), free(got);
    free_entries(e, n + 1);
    kvs_st_close(st);
    free(dir);
}
END_TEST

/* A fake hub cache: models--Org--Tiny/snapshots/REV holding stories260K. */
START_TEST(model_resolve_hub_cache)
{
    char *hub = kvs_test_tmpdir("hub");
    char snap[4200], path[4400], src[4096], out[4096];
    kvs_model_t *m;

    snprintf(snap, sizeof snap, "%s/models--Org--Tiny/snapshots/abc123", hub);
    ck_assert_int_eq(kvs_mkdir_p(snap), KVS_OK);
    for (int i = 0; i < 2; i++) {
        const char *file = i ? "model.safetensors" : "config.json";
        snprintf(src, sizeof src, "%s/%s", stories_dir, file);
        snprintf(path, sizeof path, "%s/%s", snap, file);
        ck_assert_int_eq(symlink(src, path), 0);
    }
    setenv("HF_HUB_CACHE", hub, 1);

    /* Without refs/main the one snapshot with a config.json is taken. */
    ck_assert_int_eq(kvs_model_resolve("Org/Tiny", out, sizeof out), KVS_OK);
    ck_assert_str_eq(out, snap);
    snprintf(path, sizeof path, "%s/models--Org--Tiny/refs", hub);
    ck_assert_int_eq(kvs_mkdir_p(path), KVS_OK);
    snprintf(path, sizeof path, "%s/models--Org--Tiny/refs/main", hub);
    ck_assert_int_eq(kvs_write_file(path, "abc123\n", 7), KVS_OK);
    ck_assert_int_eq(kvs_model_resolve("Org/Tiny", out, sizeof out), KVS_OK);
    ck_assert_str_eq(out, snap);

    ck_assert_int_eq(kvs_model_load(out, &m), KVS_OK);
    ck_assert_str_eq(kvs_model_name(m), "Org/Tiny");
    kvs_model_destroy(m);

    ck_assert_int_eq(kvs_model_resolve("Org/Missing", out, sizeof out), KVS_ERR_NOT_FOUND);
    ck_assert_ptr_nonnull(strstr(kvs_error_message(), "models--Org--Missing"));
    ck_assert_int_eq(kvs_model_resolve("no-such-folder", out, sizeof out), KVS_ERR_NOT_FOUND);
    ck_assert_int_eq(kvs_model_resolve("Org/../x", out, sizeof out), KVS_ERR_NOT_FOUND);

    /* A folder is taken as it is; no name falls back to KVSIM_MODEL. */
    ck_assert_int_eq(kvs_model_resolve(stories_dir, out, sizeof out), KVS_OK);
    ck_assert_str_eq(out, stories_dir);
    unsetenv("KVSIM_MODEL");
    ck_assert_int_eq(kvs_model_resolve(NULL, out, sizeof out), KVS_ERR_NOT_FOUND);
    ck_assert_ptr_nonnull(strstr(kvs_error_message(), "KVSIM_MODEL"));
    setenv("KVSIM_MODEL", "Org/Tiny", 1);
    ck_assert_int_eq(kvs_model_resolve("", out, sizeof out), KVS_OK);
    ck_assert_str_eq(out, snap);
    unsetenv("KVSIM_MODEL");
    unsetenv("HF_HUB_CACHE");
    free(hub);
}
END_TEST

START_TEST(model_stories_properties)
{
    kvs_model_t *m;

    ck_assert_int_eq(kvs_model_load(stories_dir, &m), KVS_OK);
    const kvs_model_config_t *c = kvs_model_get_config(m);
    ck_assert_uint_eq(c->n_layers, 5);
    ck_assert_uint_eq(c->head_dim, 8);
    ck_assert_int_eq(kvs_model_weight_type(m), KVS_WTYPE_F32);
    ck_assert_str_eq(kvs_model_name(m), "stories260K");
    /* Per layer 2*64 norm + (64+32+32+64)*64 attention + 3*172*64 MLP
    ** floats, plus the final norm and the tied 512x64 head. */
    uint64_t per_layer = 2 * 64 + (64 + 32 + 32 + 64) * 64 + 3 * 172 * 64;
    ck_assert_uint_eq(kvs_model_decode_bytes(m), 4 * (5 * per_layer + 64 + 512 * 64));
    ck_assert_ptr_eq(kvs_model_lm_head(m)->data, kvs_model_embedding(m)->data);
    kvs_model_destroy(m);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("model");
    TCase *tc = tcase_create("core");

    stories_dir = strdup(kvs_test_require_shared("models/stories260K"));
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, config_parses_fields_and_defaults);
    tcase_add_test(tc, config_missing_key_named);
    tcase_add_test(tc, config_wrong_type_named);
    tcase_add_test(tc, config_bad_json_and_unsupported);
    tcase_add_test(tc, config_dump_round_trips);
    tcase_add_test(tc, st_valid_header_parses);
    tcase_add_test(tc, st_header_length_too_large);
    tcase_add_test(tc, st_bad_json_rejected);
    tcase_add_test(tc, st_offsets_outside_file);
    tcase_add_test(tc, st_overlapping_tensors);
    tcase_add_test(tc, st_wrong_dtype_and_size);
    tcase_add_test(tc, model_missing_tensor_named);
    tcase_add_test(tc, model_wrong_shape_named);
    tcase_add_test(tc, model_corrupt_file_and_missing_folder);
    tcase_add_test(tc, model_sharded_loads);
    tcase_add_test(tc, model_stories_properties);
    tcase_add_test(tc, model_resolve_hub_cache);
    tcase_add_test(tc, model_half_dtypes_match_f32);
    tcase_add_test(tc, model_untied_head);
    suite_add_tcase(s, tc);
    return kvs_test_run(s);
}
