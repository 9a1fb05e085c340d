/*
** support.c: random numbers, stream seeds, half precision, growable
** per-token storage and parameter overrides for the rotation family.
*/
#include "rotation_impl.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- random numbers --------------------------------------------------- */

void kvs_rot_rng_init(kvs_rot_rng_t *rng, uint64_t seed)
{
    rng->state = seed;
    rng->has_spare = 0;
    rng->spare = 0.0;
}

/* splitmix64 (Steele, Lea and Flood, "Fast splittable pseudorandom number
** generators", OOPSLA 2014): one multiply-xorshift mix per output. */
uint64_t kvs_rot_rng_next(kvs_rot_rng_t *rng)
{
    uint64_t z = (rng->state += 0x9E3779B97F4A7C15ull);

    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

double kvs_rot_rng_uniform(kvs_rot_rng_t *rng)
{
    /* 53 random bits, shifted by half a step so 0 never comes out and log()
    ** in Box-Muller stays finite. */
    return ((double)(kvs_rot_rng_next(rng) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}

double kvs_rot_rng_normal(kvs_rot_rng_t *rng)
{
    double u1, u2, r;

    if (rng->has_spare) {
        rng->has_spare = 0;
        return rng->spare;
    }
    u1 = kvs_rot_rng_uniform(rng);
    u2 = kvs_rot_rng_uniform(rng);
    r = sqrt(-2.0 * log(u1));
    rng->spare = r * sin(2.0 * M_PI * u2);
    rng->has_spare = 1;
    return r * cos(2.0 * M_PI * u2);
}

uint64_t kvs_rot_stream_seed(const kvs_kernel_dims_t *dims, uint64_t salt)
{
    kvs_rot_rng_t rng;
    uint64_t h = dims->seed;

    /* Mix one field at a time so that (layer, head) pairs that sum or xor to
    ** the same value still get unrelated seeds. */
    kvs_rot_rng_init(&rng, h);
    h = kvs_rot_rng_next(&rng) ^ dims->layer;
    kvs_rot_rng_init(&rng, h);
    h = kvs_rot_rng_next(&rng) ^ dims->kv_head;
    kvs_rot_rng_init(&rng, h);
    h = kvs_rot_rng_next(&rng) ^ salt;
    kvs_rot_rng_init(&rng, h);
    return kvs_rot_rng_next(&rng);
}

/* ---- half precision --------------------------------------------------- */

float kvs_rot_f32_from_f16(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1F;
    uint32_t mant = h & 0x3FFu;
    uint32_t u;
    float f;

    if (exp == 0) {
        /* Zero or subnormal: exact in float. */
        f = ldexpf((float)mant, -24);
        return sign ? -f : f;
    }
    if (exp == 31)
        u = sign | 0x7F800000u | (mant << 13);
    else
        u = sign | ((exp - 15 + 127) << 23) | (mant << 13);
    memcpy(&f, &u, sizeof f);
    return f;
}

/* ---- growable per-token storage --------------------------------------- */

#define KVS_ROT_ROWS_PAD 4

void kvs_rot_rows_init(kvs_rot_rows_t *rows, uint32_t row_bytes)
{
    rows->data = NULL;
    rows->row_bytes = row_bytes;
    rows->n = 0;
    rows->cap = 0;
}

uint8_t *kvs_rot_rows_push(kvs_rot_rows_t *rows)
{
    uint8_t *row;

    if (rows->n == rows->cap) {
        uint32_t cap = rows->cap ? rows->cap * 2 : 64;
        uint8_t *grown = realloc(rows->data, (size_t)cap * rows->row_bytes + KVS_ROT_ROWS_PAD);

        if (!grown)
            return NULL;
        rows->data = grown;
        rows->cap = cap;
    }
    row = rows->data + (size_t)rows->n * rows->row_bytes;
    memset(row, 0, rows->row_bytes + KVS_ROT_ROWS_PAD);
    rows->n++;
    return row;
}

void kvs_rot_rows_free(kvs_rot_rows_t *rows)
{
    free(rows->data);
    rows->data = NULL;
    rows->n = rows->cap = 0;
}

/* ---- parameters ------------------------------------------------------- */

int kvs_rot_param_set(kvs_params_t *p, const char *name, double value)
{
    for (uint32_t i = 0; i < p->n && p->docs[i].name; i++) {
        if (strcmp(p->docs[i].name, name) == 0) {
            p->number[i] = value;
            return 1;
        }
    }
    return 0;
}
