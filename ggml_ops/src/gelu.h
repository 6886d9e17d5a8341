/* GELU as ggml computes it (the tanh form of the input rounded to F16, looked up in an F16 table, 0 from -10 down, the
 * input from 10 up), for what turbosparse computes outside ggml's graphs: the values asked of ggml itself, whose table
 * is filled with float operations that round as ggml's build does. */
#ifndef TS_GELU_H
#define TS_GELU_H

#include "ggml.h"

#include <stddef.h>

#define TS_GELU_TABLE_SIZE 65536 /* one entry per F16 bit pattern */

/* ggml's table: table[h] = gelu(h) for every F16 value h, copied from ggml's F16 GELU. 0, or -1 (err filled). */
int ts_gelu_table(ggml_fp16_t *table, char *err, size_t err_size);

/* gelu(x) through the table, as ggml's F32 GELU and its geglu compute it */
static inline float ts_gelu_lookup(const ggml_fp16_t *table, float x) {
    if (x <= -10.0f) {
        return 0.0f;
    }
    return x >= 10.0f ? x : ggml_fp16_to_fp32(table[ggml_fp32_to_fp16(x)]);
}

#endif
