/*
** fuzz_safetensors.c: libFuzzer target for the safetensors header validator.
**
** Every input is parsed as a whole safetensors file from memory. When the
** parser accepts it, the first and last byte of every tensor are read, so
** ASan reports any accepted offset that points outside the input.
*/
#include "capture/safetensors.h"

#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    kvs_st_file_t *f;
    volatile uint8_t sink = 0;

    if (kvs_st_parse(data, size, "fuzz.safetensors", &f) != KVS_OK)
        return 0;
    for (uint32_t i = 0; i < kvs_st_count(f); i++) {
        const kvs_st_tensor_t *t = kvs_st_tensor(f, i);
        if (t->nbytes) {
            sink ^= kvs_st_base(f)[t->offset];
            sink ^= kvs_st_base(f)[t->offset + t->nbytes - 1];
        }
        if (kvs_st_find(f, t->name) == NULL)
            __builtin_trap();
    }
    (void)sink;
    kvs_st_close(f);
    return 0;
}
