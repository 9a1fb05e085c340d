/*
** polarquant.c: PolarQuant (Han, Kacham, Karbasi, Mirrokni, Zandieh, arXiv
** 2502.02617) for keys and values.
**
** After a random rotation, each block of B = 2^levels coordinates goes
** through a recursive polar transform:
**
**   level 1      B/2 angles atan2(y[2i+1], y[2i]) in [0, 2 pi), and radii
**   level l > 1  B/2^l angles atan2(|right|, |left|) in [0, pi/2] over
**                pairs of radii from the level below
**   top          one radius, stored as F16
**
** For Gaussian coordinates the level-l angle has density proportional to
** sin^(2^(l-1) - 1)(2 psi), uniform at level 1, so each level gets its own
** Lloyd-Max codebook computed from that density. Defaults: 4 levels,
** 4 bits at level 1 and 2 bits above: 46 code bits and a 16-bit radius per
** 16 coordinates, 3.875 bits per coordinate.
**
** Keys: the query is rotated once, then a table per level-1 pair gives
** q_2i cos(theta) + q_2i+1 sin(theta) per code, and each level above
** combines two children with the cosine and sine of its angle code, up to
** the radius. No key is reconstructed. Values: the angles do not separate
** per coordinate, so each position is expanded down the tree once per step
** in the rotated basis and added with every query's weight, then one
** inverse rotation per query follows.
*/
#include "rotation_impl.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define POLAR_MAX_LEVELS 6
#define POLAR_MAX_BLOCK (1u << POLAR_MAX_LEVELS)

typedef struct polar_codec {
    uint32_t d, levels, block, n_blocks;
    unsigned bits[POLAR_MAX_LEVELS + 1];   /* per level, 1-based */
    uint32_t n_codes_block;                /* angles per block: block - 1 */
    uint32_t code_bits_block, code_bytes, row_bytes;
    kvs_tq_path_e path;
    kvs_rotation_kind_e rot_kind;
    kvs_rotation_t *rot;

    /* Codebooks per level: angle centroids and their cosines and sines. */
    float cb_cos[POLAR_MAX_LEVELS + 1][256];
    float cb_sin[POLAR_MAX_LEVELS + 1][256];
    float centroid[POLAR_MAX_LEVELS + 1][256];

    kvs_rot_rows_t rows;
    float *y, *x;        /* (d) */
    float *acc;          /* (acc_group, d) rotated-basis output sums */
    uint32_t acc_group;
    float *table;        /* (d/2, 2^bits[1]) level-1 tables of one query */
    float *score;        /* (cap) */
    uint32_t cap;
} polar_codec_t;

static const kvs_param_doc_t polar_params[] = {
    {"levels", KVS_PARAM_INT, "4", 1, POLAR_MAX_LEVELS, NULL,
     "polar transform levels: blocks of 2^levels coordinates, one radius each"},
    {"bits1", KVS_PARAM_INT, "4", 1, 8, NULL, "bits per level-1 angle"},
    {"bits_hi", KVS_PARAM_INT, "2", 1, 8, NULL, "bits per angle at levels 2 and above"},
    {"rotation", KVS_PARAM_ENUM, "hadamard", 0, 0, KVS_ROTATION_CHOICES,
     "random preconditioning: randomized Hadamard (power-of-two d) or dense orthogonal"},
    {"path", KVS_PARAM_ENUM, "fast", 0, 0, "fast|ref",
     "key path: per-query angle tables, or the scalar reference that decodes each block"},
    {NULL, 0, NULL, 0, 0, NULL, NULL},
};

/* Code bits of one block and the row size, from the parameters. */
static void polar_layout(const kvs_params_t *p, uint32_t d, uint32_t *code_bytes,
                         uint32_t *row_bytes)
{
    uint32_t levels = (uint32_t)kvs_param_number(p, "levels");
    uint32_t block = 1u << levels;
    uint32_t n_blocks = d / block;
    uint64_t bits = 0;

    for (uint32_t l = 1; l <= levels; l++)
        bits += (uint64_t)(block >> l) *
                (uint32_t)kvs_param_number(p, l == 1 ? "bits1" : "bits_hi");
    *code_bytes = (uint32_t)((bits * n_blocks + 7) / 8);
    *row_bytes = *code_bytes + 2 * n_blocks;
}

static kvs_status_e polar_check(const kvs_params_t *p, const kvs_kernel_dims_t *dims)
{
    uint32_t levels = (uint32_t)kvs_param_number(p, "levels");
    uint32_t block = 1u << levels;
    uint32_t fit = 0;

    while (fit < POLAR_MAX_LEVELS && dims->head_dim % (2u << fit) == 0)
        fit++;
    KVS_RETURN_IF(dims->head_dim == 0 || dims->head_dim % block != 0, KVS_ERR_KERNEL_SPEC,
                  "polarquant: head_dim %u is not a multiple of the block size %u (levels=%u); "
                  "use levels=%u or fewer",
                  dims->head_dim, block, levels, fit);
    KVS_FORWARD(kvs_rotation_check((kvs_rotation_kind_e)kvs_param_number(p, "rotation"),
                                   dims->head_dim, "polarquant"));
    return KVS_OK;
}

typedef struct angle_ctx {
    double power; /* sin(2 psi)^power */
} angle_ctx_t;

static double uniform_pdf(double x, const void *ctx)
{
    return 1.0;
}

static double angle_pdf(double x, const void *ctx)
{
    const angle_ctx_t *a = ctx;
    double s = sin(2.0 * x);

    return s > 0.0 ? pow(s, a->power) : 0.0;
}

kvs_status_e kvs_rot_polar_codebook(uint32_t level, unsigned bits, double *centroids)
{
    angle_ctx_t ctx = {(double)(1u << (level - 1)) - 1.0};

    KVS_RETURN_IF(level < 1 || level > POLAR_MAX_LEVELS || bits < 1 || bits > 8,
                  KVS_ERR_INTERNAL, "polar codebook: level %u or bits %u out of range", level,
                  bits);
    if (level == 1)
        return kvs_rot_lloyd_max(uniform_pdf, NULL, 0.0, 2.0 * M_PI, 1u << bits, centroids, NULL);
    return kvs_rot_lloyd_max(angle_pdf, &ctx, 0.0, M_PI / 2.0, 1u << bits, centroids, NULL);
}

static void polar_destroy(void *state)
{
    polar_codec_t *c = state;

    if (!c)
        return;
    kvs_rotation_destroy(c->rot);
    kvs_rot_rows_free(&c->rows);
    free(c->y);
    free(c->x);
    free(c->table);
    free(c->score);
    free(c->acc);
    free(c);
}

static kvs_status_e polar_create(const kvs_params_t *p, const kvs_kernel_dims_t *dims,
                                 void **state)
{
    polar_codec_t *c;
    kvs_status_e rc;

    *state = NULL;
    KVS_FORWARD(polar_check(p, dims));
    c = calloc(1, sizeof *c);
    KVS_RETURN_IF(!c, KVS_ERR_NOMEM, "out of memory for a PolarQuant codec");
    c->d = dims->head_dim;
    c->levels = (uint32_t)kvs_param_number(p, "levels");
    c->block = 1u << c->levels;
    c->n_blocks = c->d / c->block;
    c->n_codes_block = c->block - 1;
    c->path = (kvs_tq_path_e)kvs_param_number(p, "path");
    c->code_bits_block = 0;
    for (uint32_t l = 1; l <= c->levels; l++) {
        c->bits[l] = (unsigned)kvs_param_number(p, l == 1 ? "bits1" : "bits_hi");
        c->code_bits_block += (c->block >> l) * c->bits[l];
    }
    polar_layout(p, c->d, &c->code_bytes, &c->row_bytes);
    kvs_rot_rows_init(&c->rows, c->row_bytes);

    c->rot_kind = (kvs_rotation_kind_e)kvs_param_number(p, "rotation");
    rc = kvs_rotation_create(c->rot_kind, c->d, kvs_rot_stream_seed(dims, 0x504Fu), &c->rot);
    for (uint32_t l = 1; l <= c->levels && rc == KVS_OK; l++) {
        uint32_t n_levels = 1u << c->bits[l];
        double centroids[256];

        rc = kvs_rot_polar_codebook(l, c->bits[l], centroids);
        for (uint32_t k = 0; k < n_levels && rc == KVS_OK; k++) {
            c->centroid[l][k] = (float)centroids[k];
            c->cb_cos[l][k] = (float)cos(centroids[k]);
            c->cb_sin[l][k] = (float)sin(centroids[k]);
        }
    }
    if (rc == KVS_OK) {
        c->y = calloc(c->d, sizeof *c->y);
        c->x = calloc(c->d, sizeof *c->x);
        c->table = calloc((size_t)(c->d / 2) << c->bits[1], sizeof *c->table);
        if (!c->y || !c->x || !c->table)
            rc = kvs_fail(KVS_ERR_NOMEM, "out of memory for a PolarQuant codec");
    }
    if (rc != KVS_OK) {
        polar_destroy(c);
        return rc;
    }
    *state = c;
    return KVS_OK;
}

/* Appends `bits` bits of value at *pos, LSB-first. */
static void put_bits(uint8_t *row, uint32_t *pos, uint32_t value, unsigned bits)
{
    for (unsigned b = 0; b < bits; b++, (*pos)++)
        if ((value >> b) & 1u)
            row[*pos >> 3] |= (uint8_t)(1u << (*pos & 7));
}

/* Reads `bits` bits at *pos with one 16-bit window: a shift of at most 7
** plus at most 8 bits fits. The second byte may lie past the codes, in the
** radii or the row padding. */
static uint32_t get_bits(const uint8_t *row, uint32_t *pos, unsigned bits)
{
    uint32_t window = row[*pos >> 3] | ((uint32_t)row[(*pos >> 3) + 1] << 8);
    uint32_t value = (window >> (*pos & 7)) & ((1u << bits) - 1);

    *pos += bits;
    return value;
}

/* Nearest centroid of an angle; level-1 angles wrap around 2 pi. */
static uint32_t quantize_angle(const polar_codec_t *c, uint32_t level, float angle)
{
    uint32_t n_levels = 1u << c->bits[level];
    uint32_t k = kvs_rot_nearest_centroid(c->centroid[level], n_levels, angle);

    if (level == 1) {
        float wrap_low = angle + 2.0f * (float)M_PI - c->centroid[1][n_levels - 1];
        float wrap_high = c->centroid[1][0] + 2.0f * (float)M_PI - angle;

        if (fabsf(angle - c->centroid[1][k]) > fminf(wrap_low, wrap_high))
            k = wrap_low < wrap_high ? n_levels - 1 : 0;
    }
    return k;
}

static kvs_status_e polar_append(void *state, const float *x, const float *x_pre)
{
    polar_codec_t *c = state;
    uint8_t *row;
    uint32_t pos = 0;
    float radius[POLAR_MAX_BLOCK];

    for (uint32_t j = 0; j < c->d; j++)
        KVS_RETURN_IF(!isfinite(x[j]), KVS_ERR_NONFINITE,
                      "polarquant: vector %u has a non-finite coordinate %u; check the trace for "
                      "NaN or Inf",
                      c->rows.n, j);
    row = kvs_rot_rows_push(&c->rows);
    KVS_RETURN_IF(!row, KVS_ERR_NOMEM, "out of memory after %u PolarQuant vectors", c->rows.n);
    kvs_rotation_apply(c->rot, x, c->y);

    for (uint32_t b = 0; b < c->n_blocks; b++) {
        const float *y = c->y + (size_t)b * c->block;
        uint32_t width = c->block / 2;
        uint16_t h;

        /* Level 1: angles of coordinate pairs. */
        for (uint32_t i = 0; i < width; i++) {
            float angle = atan2f(y[2 * i + 1], y[2 * i]);

            if (angle < 0.0f)
                angle += 2.0f * (float)M_PI;
            radius[i] = hypotf(y[2 * i], y[2 * i + 1]);
            put_bits(row, &pos, quantize_angle(c, 1, angle), c->bits[1]);
        }
        /* Levels above: angles between the norms of sibling halves. */
        for (uint32_t l = 2; l <= c->levels; l++) {
            width /= 2;
            for (uint32_t i = 0; i < width; i++) {
                float angle = atan2f(radius[2 * i + 1], radius[2 * i]);

                radius[i] = hypotf(radius[2 * i], radius[2 * i + 1]);
                put_bits(row, &pos, quantize_angle(c, l, angle), c->bits[l]);
            }
        }
        h = kvs_f32_to_f16(radius[0]);
        memcpy(row + c->code_bytes + 2 * b, &h, sizeof h);
    }
    return KVS_OK;
}

/* Reads one block's codes starting at *pos: level by level as written. */
static void read_block_codes(const polar_codec_t *c, const uint8_t *row, uint32_t *pos,
                             uint32_t *codes)
{
    uint32_t k = 0, width = c->block / 2;

    for (uint32_t l = 1; l <= c->levels; l++, width /= 2)
        for (uint32_t i = 0; i < width; i++)
            codes[k++] = get_bits(row, pos, c->bits[l]);
}

static float block_radius(const polar_codec_t *c, const uint8_t *row, uint32_t b)
{
    uint16_t h;

    memcpy(&h, row + c->code_bytes + 2 * b, sizeof h);
    return kvs_rot_f32_from_f16(h);
}

/* Expands one block down the tree: out[0..block) = scale * decoded block
** in the rotated basis, added to out. */
static void expand_block(const polar_codec_t *c, const uint32_t *codes, float scale, float *out)
{
    float node[POLAR_MAX_BLOCK], next[POLAR_MAX_BLOCK];
    uint32_t width = 1, offset = c->n_codes_block;

    node[0] = scale;
    for (uint32_t l = c->levels; l >= 1; l--) {
        offset -= width;
        for (uint32_t i = 0; i < width; i++) {
            uint32_t code = codes[offset + i];

            next[2 * i] = node[i] * c->cb_cos[l][code];
            next[2 * i + 1] = node[i] * c->cb_sin[l][code];
        }
        width *= 2;
        memcpy(node, next, width * sizeof *node);
    }
    for (uint32_t j = 0; j < c->block; j++)
        out[j] += node[j];
}

static int reserve(polar_codec_t *c, uint32_t n)
{
    float *s;

    if (n <= c->cap)
        return 1;
    s = realloc(c->score, n * sizeof *s);
    if (!s)
        return 0;
    c->score = s;
    c->cap = n;
    return 1;
}

/* Scores of every stored vector against one query, reference path: decode
** each block into the rotated basis and take the dot product. */
static void scores_ref(polar_codec_t *c, const float *qrot, uint32_t n, float *score)
{
    uint32_t codes[POLAR_MAX_BLOCK];
    float block[POLAR_MAX_BLOCK];

    for (uint32_t t = 0; t < n; t++) {
        const uint8_t *row = c->rows.data + (size_t)t * c->row_bytes;
        uint32_t pos = 0;
        float s = 0.0f;

        for (uint32_t b = 0; b < c->n_blocks; b++) {
            read_block_codes(c, row, &pos, codes);
            memset(block, 0, c->block * sizeof *block);
            expand_block(c, codes, block_radius(c, row, b), block);
            for (uint32_t j = 0; j < c->block; j++)
                s += qrot[b * c->block + j] * block[j];
        }
        score[t] = s;
    }
}

/* Table path: level-1 pair tables per query, then the tree combined
** upwards with the cosine and sine of each angle code. */
static void scores_table(polar_codec_t *c, const float *qrot, uint32_t n, float *score)
{
    uint32_t n1 = 1u << c->bits[1];
    uint32_t codes[POLAR_MAX_BLOCK];

    for (uint32_t i = 0; i < c->d / 2; i++)
        for (uint32_t k = 0; k < n1; k++)
            c->table[(size_t)i * n1 + k] =
                qrot[2 * i] * c->cb_cos[1][k] + qrot[2 * i + 1] * c->cb_sin[1][k];

    for (uint32_t t = 0; t < n; t++) {
        const uint8_t *row = c->rows.data + (size_t)t * c->row_bytes;
        uint32_t pos = 0;
        float s = 0.0f;

        for (uint32_t b = 0; b < c->n_blocks; b++) {
            float node[POLAR_MAX_BLOCK / 2];
            uint32_t width = c->block / 2, k;
            const float *tb = c->table + (size_t)b * (c->block / 2) * n1;

            read_block_codes(c, row, &pos, codes);
            for (uint32_t i = 0; i < width; i++)
                node[i] = tb[(size_t)i * n1 + codes[i]];
            k = width;
            for (uint32_t l = 2; l <= c->levels; l++) {
                width /= 2;
                for (uint32_t i = 0; i < width; i++, k++)
                    node[i] = c->cb_cos[l][codes[k]] * node[2 * i] +
                              c->cb_sin[l][codes[k]] * node[2 * i + 1];
            }
            s += block_radius(c, row, b) * node[0];
        }
        score[t] = s;
    }
}

static void polar_logits(void *state, const float *q, uint32_t group, const uint8_t *attend,
                         uint32_t n, float *out)
{
    polar_codec_t *c = state;

    if (n > c->rows.n)
        n = c->rows.n;
    for (uint32_t g = 0; g < group; g++) {
        float *o = out + (size_t)g * n;

        if (!reserve(c, n)) {
            for (uint32_t t = 0; t < n; t++)
                if (attend[t])
                    o[t] = NAN; /* NOTE: out of memory in a void hook shows up as NaN */
            continue;
        }
        kvs_rotation_apply(c->rot, q + (size_t)g * c->d, c->y);
        if (c->path == KVS_TQ_PATH_FAST)
            scores_table(c, c->y, n, c->score);
        else
            scores_ref(c, c->y, n, c->score);
        for (uint32_t t = 0; t < n; t++)
            if (attend[t])
                o[t] = c->score[t];
    }
}

static void polar_output(void *state, const float *w, uint32_t group, const uint8_t *attend,
                         uint32_t n, float *out)
{
    polar_codec_t *c = state;
    uint32_t codes[POLAR_MAX_BLOCK];
    uint32_t d = c->d;

    if (n > c->rows.n)
        n = c->rows.n;
    if (group > c->acc_group) {
        float *grown = realloc(c->acc, (size_t)group * d * sizeof *grown);

        if (!grown) {
            for (uint32_t i = 0; i < group * d; i++)
                out[i] = NAN; /* NOTE: out of memory in a void hook shows up as NaN */
            return;
        }
        c->acc = grown;
        c->acc_group = group;
    }
    memset(c->acc, 0, (size_t)group * d * sizeof *c->acc);

    /* Each position is expanded once in the rotated basis, then added with
    ** every query's weight. */
    for (uint32_t t = 0; t < n; t++) {
        const uint8_t *row = c->rows.data + (size_t)t * c->row_bytes;
        uint32_t pos = 0, any = 0;

        if (!attend[t])
            continue;
        for (uint32_t g = 0; g < group; g++)
            any |= w[(size_t)g * n + t] != 0.0f;
        if (!any)
            continue;
        memset(c->x, 0, d * sizeof *c->x);
        for (uint32_t b = 0; b < c->n_blocks; b++) {
            read_block_codes(c, row, &pos, codes);
            expand_block(c, codes, block_radius(c, row, b), c->x + b * c->block);
        }
        for (uint32_t g = 0; g < group; g++) {
            float wt = w[(size_t)g * n + t];
            float *a = c->acc + (size_t)g * d;

            if (wt == 0.0f)
                continue;
            for (uint32_t j = 0; j < d; j++)
                a[j] += wt * c->x[j];
        }
    }

    /* One inverse rotation per query and step. */
    for (uint32_t g = 0; g < group; g++)
        kvs_rotation_apply_t(c->rot, c->acc + (size_t)g * d, out + (size_t)g * d);
}

static uint64_t polar_shared_bytes(const kvs_params_t *p, uint32_t d)
{
    uint64_t bytes = kvs_rotation_bytes((kvs_rotation_kind_e)kvs_param_number(p, "rotation"), d);
    uint32_t levels = (uint32_t)kvs_param_number(p, "levels");

    /* Codebooks: one F32 angle per code and level. */
    for (uint32_t l = 1; l <= levels; l++)
        bytes += ((uint64_t)1 << (uint32_t)kvs_param_number(p, l == 1 ? "bits1" : "bits_hi")) *
                 sizeof(float);
    return bytes;
}

static uint64_t polar_stored_bytes(const void *state)
{
    const polar_codec_t *c = state;
    uint64_t codebooks = 0;

    for (uint32_t l = 1; l <= c->levels; l++)
        codebooks += ((uint64_t)1 << c->bits[l]) * sizeof(float);
    return (uint64_t)c->rows.n * c->row_bytes + kvs_rotation_bytes(c->rot_kind, c->d) + codebooks;
}

static void polar_cost(const kvs_params_t *p, const kvs_kernel_dims_t *dims, unsigned role,
                       uint64_t n_context, kvs_part_cost_t *out)
{
    uint32_t code_bytes, row_bytes;
    uint32_t d = dims->head_dim;
    uint32_t levels = (uint32_t)kvs_param_number(p, "levels");
    double per_token;

    polar_layout(p, d, &code_bytes, &row_bytes);
    memset(out, 0, sizeof *out);
    out->bytes_per_token = row_bytes;
    out->shared_bytes = polar_shared_bytes(p, d);
    out->stored_bytes = n_context * row_bytes + out->shared_bytes;
    out->read_bytes = out->stored_bytes;
    /* Per token and block: one table look-up per level-1 pair, 3 flops per
    ** node above and the radius product (keys); a tree expansion of about
    ** 2 flops per node and the block accumulation (values). */
    per_token = (double)(d / (1u << levels)) * (3.0 * ((1u << levels) / 2) + 2.0);
    out->flops = (double)(dims->group_size ? dims->group_size : 1) *
                 (kvs_rotation_flops((kvs_rotation_kind_e)kvs_param_number(p, "rotation"), d) +
                  (double)n_context * per_token);
}

const kvs_codec_i kvs_codec_polarquant = {
    .name = "polarquant",
    .family = "rotation",
    .description = "PolarQuant: rotation, recursive polar transform over blocks of 2^levels, "
                   "per-level angle codebooks, one F16 radius per block",
    .params = polar_params,
    .roles = KVS_CODEC_KEY | KVS_CODEC_VALUE | KVS_CODEC_COMPRESSED_EXEC,
    .check = polar_check,
    .create = polar_create,
    .append = polar_append,
    .end_prefill = NULL,
    .logits = polar_logits,
    .output = polar_output,
    .stored_bytes = polar_stored_bytes,
    .cost = polar_cost,
    .is_compressed = NULL,
    .destroy = polar_destroy,
};
