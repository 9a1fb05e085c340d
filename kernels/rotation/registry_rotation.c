/*
** registry_rotation.c: the rotation and sketch codecs and their presets.
*/
#include "rotation_impl.h"

#include <stddef.h>

const kvs_codec_i *const kvs_codecs_rotation[] = {
    &kvs_codec_turboquant_mse,
    &kvs_codec_turboquant_prod,
    &kvs_codec_qjl,
    &kvs_codec_polarquant,
    NULL,
};

static const kvs_param_doc_t preset_bits_params[] = {
    {"bits", KVS_PARAM_INT, "3", 2, 4, NULL, "bits per coordinate of keys and values"},
    {"rotation", KVS_PARAM_ENUM, "hadamard", 0, 0, KVS_ROTATION_CHOICES,
     "random rotation: randomized Hadamard (power-of-two d) or dense orthogonal"},
    {NULL, 0, NULL, 0, 0, NULL, NULL},
};

static const kvs_param_doc_t preset_rotation_params[] = {
    {"rotation", KVS_PARAM_ENUM, "hadamard", 0, 0, KVS_ROTATION_CHOICES,
     "random rotation: randomized Hadamard (power-of-two d) or dense orthogonal"},
    {NULL, 0, NULL, 0, 0, NULL, NULL},
};

/* Mixed precision after TurboQuant's "2.5 bits" and "3.5 bits": half of the
** channels, those with the largest mean |x| over the prompt, one bit wider
** than the rest. The paper's 2.5-bit split (32 of 128 channels at 3 bits,
** 96 at 2) is 2.25 bits by the same count; a half split keeps both parts a
** power of two for the Hadamard rotation and gives 2.5 and 3.5 exactly. */
const kvs_preset_t kvs_presets_rotation[] = {
    {"turboquant", "turboquant-prod/turboquant-mse",
     "TurboQuant-prod keys and TurboQuant-MSE values, both computed on codes",
     preset_bits_params},
    {"turboquant-2.5",
     "turboquant-prod:bits=2,outliers=0.5,outlier_bits=3/"
     "turboquant-mse:bits=2,outliers=0.5,outlier_bits=3",
     "TurboQuant mixed precision, 2.5 bits per coordinate: outlier half at 3 bits",
     preset_rotation_params},
    {"turboquant-3.5",
     "turboquant-prod:bits=3,outliers=0.5,outlier_bits=4/"
     "turboquant-mse:bits=3,outliers=0.5,outlier_bits=4",
     "TurboQuant mixed precision, 3.5 bits per coordinate: outlier half at 4 bits",
     preset_rotation_params},
    {NULL, NULL, NULL, NULL},
};
