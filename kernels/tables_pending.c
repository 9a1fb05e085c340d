/*
** tables_pending.c: empty registry tables for kernel families that have not
** landed yet. A family's own file replaces its table here when it lands.
*/
#include "kernel_impl.h"

#include <stddef.h>

const kvs_codec_i *const kvs_codecs_rotation[] = {NULL};
const kvs_codec_i *const kvs_codecs_value[] = {NULL};
const kvs_preset_t kvs_presets_rotation[] = {{NULL, NULL, NULL, NULL}};
