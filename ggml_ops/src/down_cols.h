/*
 * The standard down matrix re-laid out by neuron, exactly: for files that store only the standard layout
 * (ggml ne {n_ff, n_embd}: row i = output i, quantized in blocks of 32 along the neurons), a copy in which the
 * columns (neurons) a sparse FFN keeps can be read alone, with the very values ggml dequantizes:
 *
 *   group g = neurons 32g .. 32g + 31:
 *     scale[n_embd]   f16   d of row i's block g
 *     min[n_embd]     f16   m of row i's block g            (types with a min: Q4_1, Q5_1)
 *     codes[32][...]        neuron 32g + k's integer codes over i: 4-bit packed (Q4_0, Q4_1, Q4_K) or int8 (Q5_0, Q5_1,
 *                           Q5_K, Q8_0); 4-bit: 16 bytes per 32 values, low nibbles values 0-15, high nibbles 16-31
 *
 *   W[i][32g + k] = scale[i] * (code[k][i] - offset) + min[i]            (offset 8 for Q4_0, else 0)
 *
 * so that   sum_k a_k W[i][32g + k] = scale[i] * sum_k a_k (code[k][i] - offset) + min[i] * sum_k a_k :
 * a kept neuron costs its codes, a group with any kept neuron its scales (and mins).
 *
 * The activations of a group are quantized as ggml quantizes the dense down projection's input (Q8_0 / Q8_1: one
 * scale S = max |a| / 127 per 32 neurons, a_k ~ S * q_k), so the sums over k are integer sums, and keeping every
 * neuron computes what ggml's dense mul_mat computes, up to float rounding.
 */
#ifndef TS_DOWN_COLS_H
#define TS_DOWN_COLS_H

#include "ggml.h"

#include <stddef.h>
#include <stdint.h>

#define TS_DOWN_COLS_GROUP 32 /* neurons per group: ggml's 32-value blocks */

typedef struct ts_down_cols_format {
    enum ggml_type source; /* the file's type */
    int32_t code_bits;     /* 4 or 8 */
    int32_t has_min;
    int32_t offset;        /* subtracted from every code */
    int64_t n_embd;
    size_t group_bytes;    /* bytes of one group */
} ts_down_cols_format;

/* 1 and *f filled when a down matrix of this type and n_embd rows has the exact layout (n_embd a multiple of 32). */
int ts_down_cols_format_for(enum ggml_type type, int64_t n_embd, ts_down_cols_format *f);

/* Groups per block of the source type: 1, K-quants 8. */
int64_t ts_down_cols_groups_per_block(const ts_down_cols_format *f);

/* Writes the groups of the source's blocks [b0, b1) along n_ff, from down (n_embd rows of n_ff values, the file's
 * bytes). */
void ts_down_cols_fill(const ts_down_cols_format *f, const void *down, int64_t n_ff, int64_t b0, int64_t b1, void *dst);

/*
 * out[c] += sum_i coef[i] * W[c0 + c][idx[i]] for c in [0, n): the kept neurons idx (ascending) of the layout;
 * c0 and n multiples of 32.
 */
void ts_down_cols_add(const ts_down_cols_format *f, const void *cols, const int32_t *idx, const float *coef,
                      int64_t n_idx, int64_t c0, int64_t n, float *out);
/* The same, one value at a time (the path of CPUs without AVX2 or NEON, and the vectorized ones' reference). */
void ts_down_cols_add_reference(const ts_down_cols_format *f, const void *cols, const int32_t *idx, const float *coef,
                                int64_t n_idx, int64_t c0, int64_t n, float *out);

/*
 * Adds one group's kept neurons k[0, n) (their index within the group, ascending) with quantized activations q:
 * out[c] += S * (scale[i] * (sum_r q_r code_r[i] - offset * sum_q) + min[i] * sum_q), i = c0 + c, c in [0, len).
 */
typedef void (*ts_down_cols_group_fn)(const ts_down_cols_format *f, const uint8_t *group, const int32_t *k,
                                      const int8_t *q, int n, float s, int32_t sum_q, int64_t c0, int64_t len, float *out);
/* The AVX2 kernel (down_cols_avx2.c), NULL where not compiled for x86-64; the NEON one (down_cols_neon.c), NULL
 * where not compiled for aarch64. */
ts_down_cols_group_fn ts_down_cols_group_avx2(void);
ts_down_cols_group_fn ts_down_cols_group_neon(void);

#endif
