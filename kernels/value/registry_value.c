/*
** registry_value.c: the value-path approximations.
*/
#include "../kernel_impl.h"

#include <stddef.h>

const kvs_codec_i *const kvs_codecs_value[] = {
    NULL,
};
