/*
** synth.h: synthetic model folders with seeded random BF16 weights.
**
** kvs_model_synth (capture.h) writes one of the SmolLM2 shapes; the
** function here writes any Llama config, so tests can make tiny models.
*/
#ifndef KVS_SYNTH_H
#define KVS_SYNTH_H

#include "model.h"

/* Writes config.json (with "kvsim_synthetic": true) and model.safetensors
** for cfg into out_dir, creating the folder. Both files go through
** temporary names. The same cfg and seed give byte-identical weights. */
kvs_status_e kvs_model_synth_config(const kvs_model_config_t *cfg, const char *out_dir,
                                    uint64_t seed);

/* The config of a named SmolLM2 shape, or KVS_ERR_USAGE listing the names. */
kvs_status_e kvs_model_synth_shape(const char *shape, kvs_model_config_t *out);

#endif
