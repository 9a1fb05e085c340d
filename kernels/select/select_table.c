/*
** select_table.c: the registry table of token-selection policies.
*/
#include "select_internal.h"

#include <stddef.h>

const kvs_policy_i *const kvs_policies[] = {
    &kvs_policy_streamingllm,
    &kvs_policy_h2o,
    &kvs_policy_snapkv,
    &kvs_policy_tova,
    &kvs_policy_quest,
    &kvs_policy_keynorm,
    NULL,
};
