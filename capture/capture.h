/*
** capture.h: run a model over a prompt and record q, k (before and after
** RoPE) and v of every layer and position into a trace file.
*/
#ifndef KVS_CAPTURE_H
#define KVS_CAPTURE_H

#include "../common/kvs_common.h"
#include "../trace/trace.h"

#include <stdint.h>

typedef struct kvs_capture_opts {
    const char *model_dir;
    const int32_t *prompt_ids;
    uint32_t n_prompt;
    uint32_t max_new_tokens;
    float temperature;        /* 0 = greedy */
    float top_p;              /* 1 = no nucleus cut */
    uint64_t seed;
    kvs_dtype_e dtype;        /* trace storage dtype */
    int stop_at_eos;          /* stop when the model's EOS id is generated */
    const char *out_path;     /* .kvt file */

    /* Recorded in the metadata when set (text prompts). */
    const char *prompt_text;
    const char *rendered_prompt;
    const char *chat_template;
} kvs_capture_opts_t;

typedef struct kvs_capture_result {
    uint32_t n_generated;
    int synthetic;            /* the model folder was made by model synth */
    double prefill_seconds;
    double decode_seconds;
} kvs_capture_result_t;

/* Loads the model, runs prefill and decode, and writes the trace. Nothing
** is left at out_path on failure. */
kvs_status_e kvs_capture_run(const kvs_capture_opts_t *opts, kvs_capture_result_t *result);

/* Writes a model folder with the exact config of a SmolLM2 size
** ("smollm2-135m", "smollm2-360m", "smollm2-1.7b") and seeded random BF16
** weights; its config.json carries "kvsim_synthetic": true. */
kvs_status_e kvs_model_synth(const char *shape, const char *out_dir, uint64_t seed);

#endif
