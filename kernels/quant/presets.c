/*
** presets.c: quanto and KIVI as named shorthands over the affine codec.
**
** quanto follows Hugging Face's QuantoQuantizedLayer (transformers
** cache_utils.py, about v4.56, with optimum-quanto's MaxOptimizer): axis=0,
** which with q_group_size = head_dim = 64 makes one group per position and
** head for keys and values; the prompt is quantized at prefill; up to
** residual_length - 1 positions wait in BF16; then the whole cache is
** dequantized and quantized again.
**
** KIVI follows jy-yuan/KIVI (arXiv 2402.02750). Keys are quantized per
** channel in blocks of `residual` positions with groups of `group`
** positions. Values are quantized per position in groups of `group`
** channels, with a sliding full-precision window of `residual` positions.
** Steps, offsets and windows are F16.
*/
#include "../kernel_impl.h"

#include <stddef.h>

static const kvs_param_doc_t quanto_params[] = {
    {"bits", KVS_PARAM_ENUM, "4", 0, 0, "2|4", "code width in bits (quanto qint2 or qint4)"},
    {"group", KVS_PARAM_INT, "64", 1, 4096, NULL, "channels per group (HF q_group_size)"},
    {"residual", KVS_PARAM_INT, "128", 1, 1048576, NULL,
     "HF residual_length: re-quantize everything when this many positions wait"},
    {"scale_dtype", KVS_PARAM_ENUM, "bf16", 0, 0, "bf16|f16|f32",
     "format of steps and offsets (quanto uses the model dtype)"},
    {"exec", KVS_PARAM_ENUM, "storage", 0, 0, "storage|compressed",
     "dense copy dequantized every step (as HF), or attention on the codes"},
    {NULL, 0, NULL, 0, 0, NULL, NULL},
};

static const kvs_param_doc_t kivi_params[] = {
    {"bits", KVS_PARAM_ENUM, "2", 0, 0, "2|4", "code width in bits for keys and values"},
    {"group", KVS_PARAM_INT, "32", 1, 4096, NULL,
     "G: positions per key group, channels per value group"},
    {"residual", KVS_PARAM_INT, "128", 1, 1048576, NULL,
     "R: key block and value window length in positions, a multiple of G"},
    {"exec", KVS_PARAM_ENUM, "compressed", 0, 0, "compressed|storage",
     "attention on the codes (as KIVI's kernels), or on a dense copy"},
    {NULL, 0, NULL, 0, 0, NULL, NULL},
};

const kvs_preset_t kvs_presets_quant[] = {
    {"quanto", "affine:axis=token,flush=requant,window_dtype=bf16",
     "Hugging Face quanto cache: per-position groups, whole cache re-quantized", quanto_params},
    {"kivi",
     "affine:axis=channel,flush=block,scale_dtype=f16,window_dtype=f16"
     "/affine:axis=token,flush=sliding,scale_dtype=f16,window_dtype=f16",
     "KIVI: keys per channel in blocks, values per position with a sliding window", kivi_params},
    {NULL, NULL, NULL, NULL},
};
