/*
 * The sparse down projection of a batch of tokens (a prompt, several sequences decoded together): for every token t,
 *
 *   out_t[c] = sum_j act_t[j] * W[j][col0 + c]     over the non-zero act_t[j], c in [0, n)
 *
 * W is a transposed down matrix (one row per neuron) in ts_axpy_rows_layout(type). One token at a time, each token
 * would read its own rows from memory; with a batch most rows are some token's, so the rows are walked in blocks
 * and the columns in tiles small enough that a block's row segments stay in cache while every token of the batch
 * adds its rows there: the batch reads each row segment from memory about once.
 *
 * The results are bit for bit those of ts_axpy_rows over each token's whole list of non-zero neurons: a token's list
 * is cut between blocks only at multiples of TS_ROW_SUMS_CUT entries, which every kernel's row group divides.
 */
#ifndef TS_ROW_SUMS_BATCH_H
#define TS_ROW_SUMS_BATCH_H

#include "ggml.h"

#include <stddef.h>
#include <stdint.h>

#define TS_ROW_SUMS_CUT 16 /* the largest row group of the down kernels (axpy_rows_*.c: 4, 8 or 16 rows) */

/* Bytes of scratch for batches of up to max_tokens tokens over n_rows rows of `type`. */
size_t ts_row_sums_batch_scratch(enum ggml_type type, int64_t n_rows, int64_t max_tokens);

/* The batch's tokens, in the scratch: the caller points act[t] at token t's n_rows activations and out[t] at its n
 * output floats (the columns [col0, col0 + n)). */
typedef struct {
    const float **act;
    float **out;
} ts_row_sums_tokens;

ts_row_sums_tokens ts_row_sums_batch_tokens(void *scratch, int64_t max_tokens);

/* Overwrites the outputs of tokens [0, n_tokens), n_tokens <= max_tokens (columns [col0, col0 + n): whole blocks of
 * `type`); returns the number of non-zero activations (summed over tokens). */
uint64_t ts_row_sums_batch(enum ggml_type type, const void *w, size_t row_bytes, int64_t n_rows, int64_t n_tokens,
                           int64_t max_tokens, int64_t col0, int64_t n, void *scratch);

#endif
