/* test_tokenizer.c: tokenizer.json loading, encoding and decoding. Ids are
** checked against the Hugging Face tokenizers library's output and a plain
** BPE written here, text against round trips. Malformed files and invalid
** text must fail with a message naming the problem. */
#include "testutil.h"

#include "capture/tokenizer.h"
#include "common/fsutil.h"

#include <jansson.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static kvs_tokenizer_t *smollm2;
static kvs_tokenizer_t *stories;

static kvs_tokenizer_t *load_dir(const char *relative)
{
    kvs_tokenizer_t *tok = NULL;
    const char *dir = kvs_test_shared(relative);

    ck_assert_ptr_nonnull(dir);
    ck_assert_msg(kvs_tokenizer_load(dir, &tok) == KVS_OK, "loading %s: %s", relative,
                  kvs_error_message());
    return tok;
}

static void setup(void)
{
    smollm2 = load_dir("tokenizers/smollm2");
    stories = load_dir("models/stories260K");
}

static void teardown(void)
{
    kvs_tokenizer_free(smollm2);
    kvs_tokenizer_free(stories);
}

/* Parses whitespace-separated ids. */
static size_t parse_ids(const char *text, int32_t *ids, size_t cap)
{
    size_t n = 0;
    char *end;

    for (;;) {
        long v = strtol(text, &end, 10);

        if (end == text)
            break;
        ck_assert_uint_lt(n, cap);
        ids[n++] = (int32_t)v;
        text = end;
    }
    return n;
}

static void encode(kvs_tokenizer_t *tok, const char *text, size_t len, int add_special,
                   int32_t **ids, size_t *n)
{
    kvs_status_e rc = kvs_tokenizer_encode(tok, text, len, add_special, ids, n);

    ck_assert_msg(rc == KVS_OK, "encode failed: %s", kvs_error_message());
}

static void assert_ids(const int32_t *got, size_t n_got, const int32_t *want, size_t n_want,
                       const char *what)
{
    ck_assert_msg(n_got == n_want, "%s: %zu ids, expected %zu", what, n_got, n_want);
    for (size_t i = 0; i < n_want; i++)
        ck_assert_msg(got[i] == want[i], "%s: id %zu is %d, expected %d", what, i, got[i],
                      want[i]);
}

/* ---- reference vectors -------------------------------------------------- */

START_TEST(smollm2_vectors_match_reference)
{
    char *data, *line, *save = NULL;
    size_t size, rows = 0;

    ck_assert_int_eq(kvs_read_file(kvs_test_shared("tokenizers/smollm2/vectors.tsv"), &data,
                                   &size),
                     KVS_OK);
    for (line = strtok_r(data, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        char *tab = strchr(line, '\t');
        json_error_t err;
        json_t *text;
        int32_t want[512], *got;
        size_t n_want, n_got;

        if (line[0] == '#' || !tab)
            continue;
        *tab = '\0';
        text = json_loads(line, JSON_DECODE_ANY | JSON_ALLOW_NUL, &err);
        ck_assert_msg(text && json_is_string(text), "bad vector text %s", line);
        n_want = parse_ids(tab + 1, want, 512);
        encode(smollm2, json_string_value(text), json_string_length(text), 0, &got, &n_got);
        assert_ids(got, n_got, want, n_want, line);
        free(got);
        json_decref(text);
        rows++;
    }
    ck_assert_uint_ge(rows, 18);
    free(data);
}
END_TEST

START_TEST(stories_greedy_ids_decode_exactly)
{
    char *ids_text, *want;
    size_t ids_size, want_size, n, len;
    int32_t ids[400];
    char *text;

    ck_assert_int_eq(kvs_read_file(kvs_test_shared("models/stories260K/expected/greedy200_ids.txt"),
                                   &ids_text, &ids_size),
                     KVS_OK);
    ck_assert_int_eq(kvs_read_file(kvs_test_shared("models/stories260K/expected/greedy200.txt"),
                                   &want, &want_size),
                     KVS_OK);
    n = parse_ids(ids_text, ids, 400);
    ck_assert_uint_eq(n, 200);
    ck_assert_int_eq(kvs_tokenizer_decode(stories, ids, n, 0, &text, &len), KVS_OK);
    ck_assert_uint_eq(len, want_size);
    ck_assert_int_eq(memcmp(text, want, len), 0);
    free(text);
    free(ids_text);
    free(want);
}
END_TEST

START_TEST(stories_prompt_gives_greedy_prefix)
{
    static const char prompt[] = "Once upon a time, there was a little girl named Lily.";
    char *ids_text;
    size_t size, n;
    int32_t want[400], *got;

    ck_assert_int_eq(kvs_read_file(kvs_test_shared("models/stories260K/expected/greedy200_ids.txt"),
                                   &ids_text, &size),
                     KVS_OK);
    parse_ids(ids_text, want, 400);
    free(ids_text);

    encode(stories, prompt, strlen(prompt), 0, &got, &n);
    assert_ids(got, n, want, 15, "without special tokens");
    free(got);

    encode(stories, prompt, strlen(prompt), 1, &got, &n);
    ck_assert_uint_eq(n, 16);
    ck_assert_int_eq(got[0], 1);
    assert_ids(got + 1, n - 1, want, 15, "after BOS");
    free(got);
}
END_TEST

START_TEST(special_ids_from_config)
{
    ck_assert_int_eq(kvs_tokenizer_bos_id(smollm2), 1);
    ck_assert_int_eq(kvs_tokenizer_eos_id(smollm2), 2);
    ck_assert_int_eq(kvs_tokenizer_bos_id(stories), 1);
    ck_assert_int_eq(kvs_tokenizer_eos_id(stories), 2);
    ck_assert_uint_eq(kvs_tokenizer_vocab_size(smollm2), 49152);
    ck_assert_uint_eq(kvs_tokenizer_vocab_size(stories), 512);
    ck_assert_int_eq(kvs_tokenizer_family(smollm2), KVS_TOKENIZER_BYTE_LEVEL);
    ck_assert_int_eq(kvs_tokenizer_family(stories), KVS_TOKENIZER_SENTENCEPIECE);
    ck_assert_str_eq(kvs_tokenizer_id_to_token(smollm2, 2), "<|im_end|>");
    ck_assert_int_eq(kvs_tokenizer_token_to_id(stories, "<0x0A>"), 13);
    ck_assert_ptr_null(kvs_tokenizer_id_to_token(stories, 512));
}
END_TEST

/* ---- chat --------------------------------------------------------------- */

START_TEST(chat_renders_smollm2_chatml)
{
    static const char want[] =
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
        "Face<|im_end|>\n<|im_start|>user\nhello world<|im_end|>\n<|im_start|>assistant\n";
    /* Ids of the same conversation from the reference library. */
    static const int32_t want_ids[] = {1,     9690,  198,  2683, 359,  253,  5356, 5646,
                                       11173, 3365,  3511, 308,  34519, 28,  7018, 411,
                                       407,   19712, 8182, 2,    198,  1,    4093, 198,
                                       28120, 905,   2,    198,  1,    520,  9531, 198};
    kvs_chat_message_t user = {"user", "hello world"};
    kvs_chat_message_t with_system[2] = {{"system", "Be brief."}, {"user", "hi"}};
    const char *name;
    char *text;
    int32_t *ids;
    size_t n;

    ck_assert_int_eq(kvs_tokenizer_render_chat(smollm2, &user, 1, 1, &text, &name), KVS_OK);
    ck_assert_str_eq(text, want);
    ck_assert_str_eq(name, KVS_CHAT_TEMPLATE_CHATML);
    encode(smollm2, text, strlen(text), 0, &ids, &n);
    assert_ids(ids, n, want_ids, sizeof want_ids / sizeof want_ids[0], "chat ids");
    free(ids);
    free(text);

    ck_assert_int_eq(kvs_tokenizer_render_chat(smollm2, with_system, 2, 0, &text, &name), KVS_OK);
    ck_assert_str_eq(text, "<|im_start|>system\nBe brief.<|im_end|>\n"
                           "<|im_start|>user\nhi<|im_end|>\n");
    free(text);
}
END_TEST

START_TEST(chat_rejects_non_chatml_model)
{
    kvs_chat_message_t user = {"user", "hi"};
    kvs_chat_message_t bad_role = {"robot", "hi"};
    const char *name;
    char *text;

    ck_assert_int_eq(kvs_tokenizer_render_chat(stories, &user, 1, 1, &text, &name),
                     KVS_ERR_UNSUPPORTED);
    ck_assert_ptr_nonnull(strstr(kvs_error_message(), "<|im_start|>"));
    ck_assert_int_eq(kvs_tokenizer_render_chat(smollm2, &bad_role, 1, 1, &text, &name),
                     KVS_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(kvs_error_message(), "robot"));
}
END_TEST

/* ---- plain BPE reference ------------------------------------------------ */

/* The textbook algorithm: merge the adjacent pair of lowest rank, leftmost
** first, and start over, until no pair has a rank. */
typedef struct ref_bpe {
    char **merges;   /* "a b", sorted for bsearch */
    uint32_t *ranks;
    size_t n;
    json_t *vocab;
    json_t *doc;
} ref_bpe_t;

static int cmp_merge(const void *a, const void *b, void *arg)
{
    char **merges = arg;

    return strcmp(merges[*(const uint32_t *)a], merges[*(const uint32_t *)b]);
}

static uint32_t *ref_order;

static void ref_load(ref_bpe_t *r, const char *path)
{
    json_error_t err;
    json_t *merges;

    r->doc = json_load_file(path, 0, &err);
    ck_assert_ptr_nonnull(r->doc);
    r->vocab = json_object_get(json_object_get(r->doc, "model"), "vocab");
    merges = json_object_get(json_object_get(r->doc, "model"), "merges");
    r->n = json_array_size(merges);
    r->merges = malloc(r->n * sizeof *r->merges);
    ref_order = malloc(r->n * sizeof *ref_order);
    for (size_t i = 0; i < r->n; i++) {
        r->merges[i] = strdup(json_string_value(json_array_get(merges, i)));
        ref_order[i] = (uint32_t)i;
    }
    qsort_r(ref_order, r->n, sizeof *ref_order, cmp_merge, r->merges);
}

static long ref_rank(const ref_bpe_t *r, const char *a, const char *b)
{
    char key[512];
    size_t lo = 0, hi = r->n;

    snprintf(key, sizeof key, "%s %s", a, b);
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        int c = strcmp(r->merges[ref_order[mid]], key);

        if (c == 0)
            return ref_order[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return -1;
}

/* word is a sequence of single-character symbols given as strings. */
static size_t ref_encode(const ref_bpe_t *r, char **symbols, size_t n, int32_t *ids)
{
    for (;;) {
        long best = -1;
        size_t at = 0;

        for (size_t i = 0; i + 1 < n; i++) {
            long rank = ref_rank(r, symbols[i], symbols[i + 1]);

            if (rank >= 0 && (best < 0 || rank < best)) {
                best = rank;
                at = i;
            }
        }
        if (best < 0)
            break;
        symbols[at] = realloc(symbols[at], strlen(symbols[at]) + strlen(symbols[at + 1]) + 1);
        strcat(symbols[at], symbols[at + 1]);
        free(symbols[at + 1]);
        memmove(symbols + at + 1, symbols + at + 2, (n - at - 2) * sizeof *symbols);
        n--;
    }
    for (size_t i = 0; i < n; i++) {
        ids[i] = (int32_t)json_integer_value(json_object_get(r->vocab, symbols[i]));
        free(symbols[i]);
    }
    return n;
}

static void ref_free(ref_bpe_t *r)
{
    for (size_t i = 0; i < r->n; i++)
        free(r->merges[i]);
    free(r->merges);
    free(ref_order);
    json_decref(r->doc);
}

START_TEST(bpe_matches_plain_reference)
{
    ref_bpe_t ref;
    uint64_t state = 12345;
    static const char letters[] = "etaoinshrdlucmfwypvbgkqjxz";

    ref_load(&ref, kvs_test_shared("tokenizers/smollm2/tokenizer.json"));
    for (int trial = 0; trial < 300; trial++) {
        /* One pre-token: a space and lowercase letters, so the ByteLevel
        ** alphabet is "Ġ" followed by the letters themselves. */
        size_t len = trial < 299 ? 1 + (size_t)(trial % 24) : 600;
        char text[700];
        char **symbols = malloc((len + 1) * sizeof *symbols);
        int32_t want[700], *got;
        size_t n_want, n_got;

        text[0] = ' ';
        symbols[0] = strdup("\xC4\xA0");
        for (size_t i = 0; i < len; i++) {
            state = state * 6364136223846793005ULL + 1442695040888963407ULL;
            /* Skewed towards frequent letters so that long merges happen. */
            text[i + 1] = letters[(state >> 33) % ((state >> 60) < 12 ? 8 : 26)];
            symbols[i + 1] = strndup(&text[i + 1], 1);
        }
        n_want = ref_encode(&ref, symbols, len + 1, want);
        free(symbols);
        encode(smollm2, text, len + 1, 0, &got, &n_got);
        assert_ids(got, n_got, want, n_want, "random word");
        free(got);
    }
    ref_free(&ref);
}
END_TEST

/* ---- round trips -------------------------------------------------------- */

static const char *const corpus[] = {
    "",
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "na\xC3\xAFve caf\xC3\xA9 r\xC3\xA9sum\xC3\xA9",
    "\xCE\x9A\xCE\xB1\xCE\xBB\xCE\xB7\xCE\xBC\xCE\xAD\xCF\x81\xCE\xB1 \xCE\xBA\xCF\x8C\xCF\x83\xCE\xBC\xCE\xB5",
    "\xD0\x9F\xD1\x80\xD0\xB8\xD0\xB2\xD0\xB5\xD1\x82, \xD0\xBC\xD0\xB8\xD1\x80",
    "\xD9\x85\xD8\xB1\xD8\xAD\xD8\xA8\xD8\xA7 \xD8\xA8\xD8\xA7\xD9\x84\xD8\xB9\xD8\xA7\xD9\x84\xD9\x85",
    "\xD7\xA9\xD7\x9C\xD7\x95\xD7\x9D",
    "\xE0\xA4\xA8\xE0\xA4\xAE\xE0\xA4\xB8\xE0\xA5\x8D\xE0\xA4\xA4\xE0\xA5\x87",
    "\xE0\xB8\xAA\xE0\xB8\xA7\xE0\xB8\xB1\xE0\xB8\xAA\xE0\xB8\x94\xE0\xB8\xB5",
    "\xE6\x9D\xB1\xE4\xBA\xAC\xE3\x81\xAF\xE6\x99\xB4\xE3\x82\x8C",
    "\xEC\x95\x88\xEB\x85\x95\xED\x95\x98\xEC\x84\xB8\xEC\x9A\x94",
    "\xF0\x9F\x99\x82\xF0\x9F\x91\xA9\xE2\x80\x8D\xF0\x9F\x92\xBB\xF0\x9F\x87\xAB\xF0\x9F\x87\xB7",
    "e\xCC\x81 a\xCC\x8A combining marks",
    "0123456789 3.14159 1,000,000 2026-12-04",
    "\xD9\xA3\xD9\xA4\xD9\xA5 \xEF\xBC\x91\xEF\xBC\x92 \xC2\xBD \xE2\x85\xAB \xE2\x91\xA0",
    "   leading and trailing   ",
    "tabs\tand\t\ttabs\nnew\n\n\nlines\r\nCRLF",
    "no\xC2\xA0" "break\xE3\x80\x80ideographic\xE2\x80\xA8line separator",
    "ctrl \x01\x07\x1b\x7f end",
    "x\n \n  \n   y",
    "int main(void) { return 0; }  // comment\n\tif (a != b) x += 2;",
    "I'm here, they're not, we'll see, it's 'quoted'",
};

static void assert_round_trip(kvs_tokenizer_t *tok, const char *s, size_t len, const char *which)
{
    int32_t *ids;
    size_t n, out_len;
    char *out;

    encode(tok, s, len, 0, &ids, &n);
    ck_assert_int_eq(kvs_tokenizer_decode(tok, ids, n, 0, &out, &out_len), KVS_OK);
    ck_assert_msg(out_len == len && memcmp(out, s, len) == 0, "%s round trip of \"%.*s\" gave \"%s\"",
                  which, (int)len, s, out);
    free(out);
    free(ids);
}

/* Random text from a mix of scripts, digits, whitespace and controls. */
static size_t random_text(uint64_t *state, char *out, int sentencepiece)
{
    static const int32_t ranges[][2] = {
        {'a', 'z'},       {'A', 'Z'},       {'0', '9'},       {' ', ' '},
        {' ', '/'},       {0x00, 0x03},     {0x09, 0x0D},     {0xA0, 0xFF},
        {0x391, 0x3C9},   {0x410, 0x44F},   {0x600, 0x6FF},   {0x900, 0x97F},
        {0x2000, 0x206F}, {0x3000, 0x303F}, {0x4E00, 0x4FFF}, {0xAC00, 0xAD00},
        {0x1F300, 0x1F64F}, {0x10000, 0x100FF}, {0xFF10, 0xFF19}, {0x2150, 0x218F},
    };
    size_t len = 0, n_chars;

    *state = *state * 6364136223846793005ULL + 1442695040888963407ULL;
    n_chars = (*state >> 33) % 40;
    for (size_t i = 0; i < n_chars; i++) {
        const int32_t *r;
        int32_t cp;

        *state = *state * 6364136223846793005ULL + 1442695040888963407ULL;
        r = ranges[(*state >> 33) % (sizeof ranges / sizeof ranges[0])];
        cp = r[0] + (int32_t)((*state >> 13) % (uint64_t)(r[1] - r[0] + 1));
        if (sentencepiece && cp == 0x2581)
            continue;
        if (cp < 0x80)
            out[len++] = (char)cp;
        else if (cp < 0x800) {
            out[len++] = (char)(0xC0 | (cp >> 6));
            out[len++] = (char)(0x80 | (cp & 0x3F));
        } else if (cp < 0x10000) {
            out[len++] = (char)(0xE0 | (cp >> 12));
            out[len++] = (char)(0x80 | ((cp >> 6) & 0x3F));
            out[len++] = (char)(0x80 | (cp & 0x3F));
        } else {
            out[len++] = (char)(0xF0 | (cp >> 18));
            out[len++] = (char)(0x80 | ((cp >> 12) & 0x3F));
            out[len++] = (char)(0x80 | ((cp >> 6) & 0x3F));
            out[len++] = (char)(0x80 | (cp & 0x3F));
        }
    }
    return len;
}

START_TEST(round_trip_both_families)
{
    uint64_t state = 99;
    char text[256];

    for (size_t i = 0; i < sizeof corpus / sizeof corpus[0]; i++) {
        assert_round_trip(smollm2, corpus[i], strlen(corpus[i]), "smollm2");
        assert_round_trip(stories, corpus[i], strlen(corpus[i]), "stories260K");
    }
    /* NUL bytes are text like any other. */
    assert_round_trip(smollm2, "a\0b", 3, "smollm2");
    assert_round_trip(stories, "a\0b", 3, "stories260K");

    for (int i = 0; i < 400; i++) {
        size_t len = random_text(&state, text, 0);

        assert_round_trip(smollm2, text, len, "smollm2");
        len = random_text(&state, text, 1);
        assert_round_trip(stories, text, len, "stories260K");
    }
}
END_TEST

START_TEST(missing_bytes_are_dropped)
{
    /* SmolLM2's vocabulary has no token for byte 0x04, and BPE without
    ** byte fallback or unk_token drops what it cannot express. */
    int32_t *ids;
    size_t n;
    static const int32_t want[] = {81, 82, 190, 83};

    encode(smollm2, "a\x04" "b\0c", 5, 0, &ids, &n);
    assert_ids(ids, n, want, 4, "a\\x04b\\0c");
    free(ids);
}
END_TEST

START_TEST(digits_split_every_numeric_char)
{
    /* individual_digits splits each character of category Nd, Nl or No,
    ** so a run encodes as its characters one by one. */
    static const char *const runs[] = {
        "\xD9\xA3\xD9\xA4\xD9\xA5",       /* Arabic-Indic 3 4 5 (Nd) */
        "\xE2\x85\xAB\xE2\x85\xAB",       /* Roman numeral twelve twice (Nl) */
        "\xC2\xBD\xC2\xBD\xC2\xB2",       /* one half, one half, superscript two (No) */
        "\xEF\xBC\x91\xEF\xBC\x92\xEF\xBC\x93", /* fullwidth 1 2 3 (Nd) */
    };

    for (size_t r = 0; r < sizeof runs / sizeof runs[0]; r++) {
        const char *s = runs[r];
        size_t len = strlen(s), i = 0;
        int32_t *whole, *part, joined[64];
        size_t n_whole, n_part, n_joined = 0;

        while (i < len) {
            size_t char_len = ((unsigned char)s[i] >= 0xE0) ? 3 : 2;

            encode(smollm2, s + i, char_len, 0, &part, &n_part);
            for (size_t k = 0; k < n_part; k++)
                joined[n_joined++] = part[k];
            free(part);
            i += char_len;
        }
        encode(smollm2, s, len, 0, &whole, &n_whole);
        assert_ids(whole, n_whole, joined, n_joined, s);
        free(whole);
    }
}
END_TEST

/* ---- decoding edge cases ------------------------------------------------ */

START_TEST(decode_replaces_invalid_utf8)
{
    int32_t lone_lead[1];
    int32_t partial[2] = {229, 133};  /* stories260K <0xE2> <0x82> */
    int32_t bad_id = 49152;
    char *text;
    size_t len;

    /* "ð" is the ByteLevel character of byte 0xF0, the lead of an emoji. */
    lone_lead[0] = kvs_tokenizer_token_to_id(smollm2, "\xC3\xB0");
    ck_assert_int_ge(lone_lead[0], 0);
    ck_assert_int_eq(kvs_tokenizer_decode(smollm2, lone_lead, 1, 0, &text, &len), KVS_OK);
    ck_assert_str_eq(text, "\xEF\xBF\xBD");
    free(text);

    /* ByteFallback turns each byte of an invalid run into its own U+FFFD. */
    ck_assert_int_eq(kvs_tokenizer_decode(stories, partial, 2, 0, &text, &len), KVS_OK);
    ck_assert_str_eq(text, "\xEF\xBF\xBD\xEF\xBF\xBD");
    free(text);

    ck_assert_int_eq(kvs_tokenizer_decode(smollm2, &bad_id, 1, 0, &text, &len), KVS_ERR_TOKEN);
    ck_assert_ptr_nonnull(strstr(kvs_error_message(), "49152"));
}
END_TEST

START_TEST(decode_skips_special_on_request)
{
    static const int32_t ids[] = {1, 4093, 198, 26843, 2};
    char *text;
    size_t len;

    ck_assert_int_eq(kvs_tokenizer_decode(smollm2, ids, 5, 0, &text, &len), KVS_OK);
    ck_assert_str_eq(text, "<|im_start|>user\nHi<|im_end|>");
    free(text);
    ck_assert_int_eq(kvs_tokenizer_decode(smollm2, ids, 5, 1, &text, &len), KVS_OK);
    ck_assert_str_eq(text, "user\nHi");
    free(text);
}
END_TEST

START_TEST(invalid_utf8_is_rejected)
{
    static const char *const bad[] = {
        "\x80",             /* lone continuation byte */
        "ok \xC0\x80",      /* overlong NUL */
        "\xE2\x82",         /* truncated three-byte sequence */
        "\xED\xA0\x80",     /* UTF-16 surrogate */
        "\xF4\x90\x80\x80", /* above U+10FFFF */
        "\xF5\x80\x80\x80",
        "abc\xFF",
    };

    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int32_t *ids = (int32_t *)1;
        size_t n = 1;

        ck_assert_int_eq(kvs_tokenizer_encode(smollm2, bad[i], strlen(bad[i]), 0, &ids, &n),
                         KVS_ERR_TOKENIZER);
        ck_assert_ptr_null(ids);
        ck_assert_uint_eq(n, 0);
        ck_assert_ptr_nonnull(strstr(kvs_error_message(), "UTF-8"));
        ck_assert_int_eq(kvs_tokenizer_encode(stories, bad[i], strlen(bad[i]), 0, &ids, &n),
                         KVS_ERR_TOKENIZER);
    }
    kvs_tokenizer_encode(smollm2, "abc\xFF", 4, 0, &(int32_t *){NULL}, &(size_t){0});
    ck_assert_ptr_nonnull(strstr(kvs_error_message(), "offset 3"));
}
END_TEST

/* ---- small tokenizers written here -------------------------------------- */

/* A minimal BPE with no pre-tokenizer, so every stretch between added
** tokens is one word: "ab" and "abc" come from merges, "<m>" is added. */
static const char tiny_json[] =
    "{\"version\": \"1.0\", \"truncation\": null, \"padding\": null,"
    " \"added_tokens\": [{\"id\": 6, \"content\": \"<m>\", \"single_word\": false,"
    "   \"lstrip\": false, \"rstrip\": false, \"normalized\": false, \"special\": true}],"
    " \"normalizer\": null, \"pre_tokenizer\": null, \"post_processor\": null,"
    " \"decoder\": null,"
    " \"model\": {\"type\": \"BPE\", \"dropout\": null, \"unk_token\": null,"
    "   \"fuse_unk\": false, \"byte_fallback\": false, \"ignore_merges\": false,"
    "   \"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2, \" \": 3, \"c\": 4, \"abc\": 5,"
    "     \"<unk>\": 7, \"<0x78>\": 8},"
    "   \"merges\": [\"a b\", \"ab c\"]}}";

/* Returns a malloc'd copy of base with the first `from` replaced by `to`. */
static char *with(const char *base, const char *from, const char *to)
{
    const char *at = strstr(base, from);
    size_t head, size;
    char *out;

    ck_assert_msg(at != NULL, "test JSON has no '%s'", from);
    head = (size_t)(at - base);
    size = strlen(base) - strlen(from) + strlen(to) + 1;
    out = malloc(size);
    memcpy(out, base, head);
    strcpy(out + head, to);
    strcat(out, at + strlen(from));
    return out;
}

static kvs_tokenizer_t *load_text(const char *json)
{
    kvs_tokenizer_t *tok = NULL;
    kvs_status_e rc = kvs_tokenizer_load_json(json, strlen(json), NULL, 0, "tiny.json", &tok);

    ck_assert_msg(rc == KVS_OK, "tiny tokenizer: %s", kvs_error_message());
    return tok;
}

static void assert_encodes(kvs_tokenizer_t *tok, const char *text, const int32_t *want,
                           size_t n_want)
{
    int32_t *ids;
    size_t n;

    encode(tok, text, strlen(text), 0, &ids, &n);
    assert_ids(ids, n, want, n_want, text);
    free(ids);
}

START_TEST(added_token_strip_flags)
{
    kvs_tokenizer_t *tok = load_text(tiny_json);
    char *json;

    assert_encodes(tok, "ab c", (int32_t[]){2, 3, 4}, 3);
    assert_encodes(tok, "abc<m> abc", (int32_t[]){5, 6, 3, 5}, 4);
    kvs_tokenizer_free(tok);

    /* lstrip takes the spaces before the token into it. */
    json = with(tiny_json, "\"lstrip\": false", "\"lstrip\": true");
    tok = load_text(json);
    assert_encodes(tok, "ab  <m> c", (int32_t[]){2, 6, 3, 4}, 4);
    kvs_tokenizer_free(tok);
    free(json);

    json = with(tiny_json, "\"rstrip\": false", "\"rstrip\": true");
    tok = load_text(json);
    assert_encodes(tok, "ab <m>  c", (int32_t[]){2, 3, 6, 4}, 4);
    kvs_tokenizer_free(tok);
    free(json);

    /* single_word: no match inside a word, so "<", "m", ">" are dropped
    ** as characters the vocabulary lacks. */
    json = with(tiny_json, "\"single_word\": false", "\"single_word\": true");
    tok = load_text(json);
    assert_encodes(tok, "a<m>", (int32_t[]){0}, 1);
    assert_encodes(tok, "a <m> b", (int32_t[]){0, 3, 6, 3, 1}, 5);
    kvs_tokenizer_free(tok);
    free(json);
}
END_TEST

START_TEST(added_token_sharing_model_id)
{
    /* The added token's string wins for decoding, while BPE still reaches
    ** the model token "abc" through its merges. */
    char *json = with(tiny_json, "\"id\": 6, \"content\": \"<m>\"", "\"id\": 5, \"content\": \"<m>\"");
    kvs_tokenizer_t *tok = load_text(json);
    int32_t id = 5;
    char *text;
    size_t len;

    assert_encodes(tok, "abc", (int32_t[]){5}, 1);
    assert_encodes(tok, "a<m>", (int32_t[]){0, 5}, 2);
    ck_assert_int_eq(kvs_tokenizer_decode(tok, &id, 1, 0, &text, &len), KVS_OK);
    ck_assert_str_eq(text, "<m>");
    free(text);
    kvs_tokenizer_free(tok);
    free(json);
}
END_TEST

START_TEST(unknown_and_byte_fallback)
{
    char *json = with(tiny_json, "\"unk_token\": null", "\"unk_token\": \"<unk>\"");
    char *fused = with(json, "\"fuse_unk\": false", "\"fuse_unk\": true");
    char *bytes = with(json, "\"byte_fallback\": false", "\"byte_fallback\": true");
    kvs_tokenizer_t *tok;

    tok = load_text(json);
    assert_encodes(tok, "a%%b", (int32_t[]){0, 7, 7, 1}, 4);
    kvs_tokenizer_free(tok);

    tok = load_text(fused);
    assert_encodes(tok, "a%%b", (int32_t[]){0, 7, 1}, 3);
    kvs_tokenizer_free(tok);

    /* 'x' has the byte piece <0x78>; '%' has none and falls to unk. */
    tok = load_text(bytes);
    assert_encodes(tok, "axb%", (int32_t[]){0, 8, 1, 7}, 4);
    kvs_tokenizer_free(tok);

    free(json);
    free(fused);
    free(bytes);
}
END_TEST

START_TEST(merges_as_pairs_load)
{
    char *json = with(tiny_json, "[\"a b\", \"ab c\"]", "[[\"a\", \"b\"], [\"ab\", \"c\"]]");
    kvs_tokenizer_t *tok = load_text(json);

    assert_encodes(tok, "abc", (int32_t[]){5}, 1);
    kvs_tokenizer_free(tok);
    free(json);
}
END_TEST

START_TEST(ignore_merges_takes_whole_word)
{
    /* With "b c" ranked first, merging turns "abc" into [a, bc], which no
    ** merge joins; ignore_merges looks the whole word up first. */
    char *ranked = with(tiny_json, "[\"a b\", \"ab c\"]", "[\"b c\", \"a b\", \"ab c\"]");
    char *vocab = with(ranked, "\"abc\": 5,", "\"abc\": 5, \"bc\": 9,");
    char *ignoring = with(vocab, "\"ignore_merges\": false", "\"ignore_merges\": true");
    kvs_tokenizer_t *tok;

    tok = load_text(vocab);
    assert_encodes(tok, "abc", (int32_t[]){0, 9}, 2);
    kvs_tokenizer_free(tok);
    tok = load_text(ignoring);
    assert_encodes(tok, "abc", (int32_t[]){5}, 1);
    kvs_tokenizer_free(tok);
    free(ranked);
    free(vocab);
    free(ignoring);
}
END_TEST

START_TEST(vocab_key_with_nul_rejected)
{
    /* jansson cannot hold "\u0000" in an object key, so such a file fails
    ** with a message rather than loading with a truncated token. */
    char *json = with(tiny_json, "\"abc\": 5,", "\"abc\": 5, \"x\\u0000y\": 10,");
    kvs_tokenizer_t *tok;

    ck_assert_int_eq(kvs_tokenizer_load_json(json, strlen(json), NULL, 0, "tiny.json", &tok),
                     KVS_ERR_TOKENIZER);
    ck_assert_ptr_nonnull(strstr(kvs_error_message(), "NUL"));
    free(json);
}
END_TEST

typedef struct bad_case {
    const char *from;
    const char *to;
    kvs_status_e status;
    const char *message;  /* a substring the error must contain */
} bad_case_t;

START_TEST(malformed_files_name_problem)
{
    static const bad_case_t cases[] = {
        {"\"vocab\": {", "\"vocab\": [], \"x\": {", KVS_ERR_TOKENIZER, "model.vocab must be an object"},
        {"\"a\": 0,", "\"a\": \"0\",", KVS_ERR_TOKENIZER, "must be an integer"},
        {"\"a\": 0,", "\"a\": -4,", KVS_ERR_TOKENIZER, "outside"},
        {"\"b\": 1,", "\"b\": 0,", KVS_ERR_TOKENIZER, "both"},
        {"\"ab c\"]", "\"ab q\"]", KVS_ERR_TOKENIZER, "merges[1] names token \"q\""},
        {"\"ab c\"]", "\"b c\"]", KVS_ERR_TOKENIZER, "produces \"bc\""},
        {"\"ab c\"]", "\"ab  c\"]", KVS_ERR_TOKENIZER, "one space"},
        {"\"ab c\"]", "7]", KVS_ERR_TOKENIZER, "merges[1] must be"},
        {"\"unk_token\": null", "\"unk_token\": \"<nope>\"", KVS_ERR_TOKENIZER, "<nope>"},
        {"\"type\": \"BPE\"", "\"type\": \"WordPiece\"", KVS_ERR_UNSUPPORTED, "WordPiece"},
        {"\"pre_tokenizer\": null", "\"pre_tokenizer\": {\"type\": \"Whitespace\"}",
         KVS_ERR_UNSUPPORTED, "pre_tokenizer type 'Whitespace'"},
        {"\"pre_tokenizer\": null",
         "\"pre_tokenizer\": {\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": \"Digits\"},"
         " {\"type\": \"Punctuation\"}]}",
         KVS_ERR_UNSUPPORTED, "pre_tokenizer.pretokenizers[1] type 'Punctuation'"},
        {"\"normalizer\": null", "\"normalizer\": {\"type\": \"NFKC\"}", KVS_ERR_UNSUPPORTED,
         "NFKC"},
        {"\"normalizer\": null",
         "\"normalizer\": {\"type\": \"Replace\", \"pattern\": {\"Regex\": \" +\"}, \"content\": \" \"}",
         KVS_ERR_UNSUPPORTED, "Regex"},
        {"\"decoder\": null", "\"decoder\": {\"type\": \"Metaspace\"}", KVS_ERR_UNSUPPORTED,
         "Metaspace"},
        {"\"post_processor\": null", "\"post_processor\": {\"type\": \"RobertaProcessing\"}",
         KVS_ERR_UNSUPPORTED, "RobertaProcessing"},
        {"\"post_processor\": null", "\"post_processor\": {\"type\": 3}", KVS_ERR_TOKENIZER,
         "post_processor.type must be a string"},
        {"\"content\": \"<m>\"", "\"content\": 5", KVS_ERR_TOKENIZER,
         "added_tokens[0].content must be a string"},
        {"\"special\": true", "\"special\": \"yes\"", KVS_ERR_TOKENIZER, "true or false"},
        {"\"dropout\": null", "\"dropout\": 0.1", KVS_ERR_UNSUPPORTED, "dropout"},
        {"\"truncation\": null", "\"truncation\": {\"max_length\": 8}", KVS_ERR_UNSUPPORTED,
         "truncation"},
        {"\"model\": {", "\"model\": 7, \"x\": {", KVS_ERR_TOKENIZER, "model must be an object"},
    };

    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *json = with(tiny_json, cases[i].from, cases[i].to);
        kvs_tokenizer_t *tok = (kvs_tokenizer_t *)1;
        kvs_status_e rc = kvs_tokenizer_load_json(json, strlen(json), NULL, 0, "tiny.json", &tok);

        ck_assert_msg(rc == cases[i].status, "case %zu (%s): status %d, expected %d: %s", i,
                      cases[i].to, rc, cases[i].status, kvs_error_message());
        ck_assert_ptr_null(tok);
        ck_assert_msg(strstr(kvs_error_message(), cases[i].message) != NULL,
                      "case %zu: message \"%s\" lacks \"%s\"", i, kvs_error_message(),
                      cases[i].message);
        ck_assert_ptr_nonnull(strstr(kvs_error_message(), "tiny.json"));
        free(json);
    }
}
END_TEST

START_TEST(truncated_and_non_object_files)
{
    kvs_tokenizer_t *tok;
    size_t len = strlen(tiny_json);

    for (size_t cut = 0; cut < len; cut += 37) {
        tok = (kvs_tokenizer_t *)1;
        ck_assert_int_eq(kvs_tokenizer_load_json(tiny_json, cut, NULL, 0, "tiny.json", &tok),
                         KVS_ERR_TOKENIZER);
        ck_assert_ptr_null(tok);
        ck_assert_ptr_nonnull(strstr(kvs_error_message(), "invalid JSON"));
    }
    ck_assert_int_eq(kvs_tokenizer_load_json("[1, 2]", 6, NULL, 0, "tiny.json", &tok),
                     KVS_ERR_TOKENIZER);
    ck_assert_ptr_nonnull(strstr(kvs_error_message(), "top level"));
}
END_TEST

START_TEST(config_names_special_tokens)
{
    static const char config[] = "{\"bos_token\": \"a\", \"eos_token\": {\"content\": \"<m>\"},"
                                 " \"chat_template\": \"{% for m in messages %}{{ m }}{% endfor %}\"}";
    static const char bad_config[] = "{\"eos_token\": \"<none>\"}";
    kvs_tokenizer_t *tok;

    ck_assert_int_eq(kvs_tokenizer_load_json(tiny_json, strlen(tiny_json), config,
                                             strlen(config), "tiny.json", &tok),
                     KVS_OK);
    ck_assert_int_eq(kvs_tokenizer_bos_id(tok), 0);
    ck_assert_int_eq(kvs_tokenizer_eos_id(tok), 6);
    kvs_tokenizer_free(tok);

    ck_assert_int_eq(kvs_tokenizer_load_json(tiny_json, strlen(tiny_json), bad_config,
                                             strlen(bad_config), "tiny.json", &tok),
                     KVS_ERR_TOKENIZER);
    ck_assert_ptr_nonnull(strstr(kvs_error_message(), "<none>"));
}
END_TEST

START_TEST(missing_folder_is_not_found)
{
    kvs_tokenizer_t *tok;

    ck_assert_int_eq(kvs_tokenizer_load("/nonexistent/kvsim-model", &tok), KVS_ERR_NOT_FOUND);
    ck_assert_ptr_nonnull(strstr(kvs_error_message(), "/nonexistent/kvsim-model/tokenizer.json"));
}
END_TEST

START_TEST(long_word_and_cache_agree)
{
    /* A 300 KB word is one pre-token, too long to cache: it must merge in
    ** reasonable time, decode back to itself and encode the same twice. */
    size_t len = 300000, out_len;
    char *text = malloc(len), *out;
    int32_t *first, *second;
    size_t n_first, n_second;

    for (size_t i = 0; i < len; i++)
        text[i] = "abcdefgh"[(i * 7 + i / 3) % 8];
    encode(smollm2, text, len, 0, &first, &n_first);
    encode(smollm2, text, len, 0, &second, &n_second);
    assert_ids(second, n_second, first, n_first, "second encode");
    ck_assert_uint_lt(n_first, len / 2);
    ck_assert_int_eq(kvs_tokenizer_decode(smollm2, first, n_first, 0, &out, &out_len), KVS_OK);
    ck_assert_uint_eq(out_len, len);
    ck_assert_int_eq(memcmp(out, text, len), 0);
    free(out);
    free(first);
    free(second);

    /* Repeated words come from the cache after the first one. */
    encode(smollm2, "hello hello hello", 17, 0, &first, &n_first);
    assert_ids(first, n_first, (int32_t[]){28120, 33662, 33662}, 3, "cached words");
    free(first);
    free(text);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("tokenizer");
    TCase *real = tcase_create("real");
    TCase *tiny = tcase_create("tiny");

    kvs_test_require_shared("tokenizers/smollm2/tokenizer.json");
    kvs_test_require_shared("models/stories260K/tokenizer.json");

    tcase_add_checked_fixture(real, setup, teardown);
    tcase_set_timeout(real, 120);
    tcase_add_test(real, smollm2_vectors_match_reference);
    tcase_add_test(real, stories_greedy_ids_decode_exactly);
    tcase_add_test(real, stories_prompt_gives_greedy_prefix);
    tcase_add_test(real, special_ids_from_config);
    tcase_add_test(real, chat_renders_smollm2_chatml);
    tcase_add_test(real, chat_rejects_non_chatml_model);
    tcase_add_test(real, bpe_matches_plain_reference);
    tcase_add_test(real, round_trip_both_families);
    tcase_add_test(real, missing_bytes_are_dropped);
    tcase_add_test(real, digits_split_every_numeric_char);
    tcase_add_test(real, decode_replaces_invalid_utf8);
    tcase_add_test(real, decode_skips_special_on_request);
    tcase_add_test(real, invalid_utf8_is_rejected);
    tcase_add_test(real, long_word_and_cache_agree);
    suite_add_tcase(s, real);

    tcase_add_test(tiny, added_token_strip_flags);
    tcase_add_test(tiny, added_token_sharing_model_id);
    tcase_add_test(tiny, unknown_and_byte_fallback);
    tcase_add_test(tiny, merges_as_pairs_load);
    tcase_add_test(tiny, ignore_merges_takes_whole_word);
    tcase_add_test(tiny, vocab_key_with_nul_rejected);
    tcase_add_test(tiny, malformed_files_name_problem);
    tcase_add_test(tiny, truncated_and_non_object_files);
    tcase_add_test(tiny, config_names_special_tokens);
    tcase_add_test(tiny, missing_folder_is_not_found);
    suite_add_tcase(s, tiny);
    return kvs_test_run(s);
}
