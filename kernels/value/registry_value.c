/*
** registry_value.c: the value-path approximations.
*/
#include "value_impl.h"

#include <stddef.h>

const kvs_codec_i *const kvs_codecs_value[] = {
    &kvs_codec_topk,
    &kvs_codec_threshold,
    &kvs_codec_lowrank,
    &kvs_codec_window,
    NULL,
};
