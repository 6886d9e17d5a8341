/*
 * The sparse down projection's inner loop: add scaled, dequantized matrix rows into a float vector.
 *
 *   out[c] += sum_i coef[i] * W[idx[i]][col0 + c]     for c in [0, n)
 *
 * W holds rows of row_bytes bytes of ggml type `type`; col0 and n are multiples of the type's block size,
 * so a caller can split the columns between threads on block boundaries (no two threads write the
 * same output element).
 */
#ifndef TS_AXPY_ROWS_H
#define TS_AXPY_ROWS_H

#include "ggml.h"

#include <stddef.h>
#include <stdint.h>

/* 1 when ts_axpy_rows handles `type` (every type ggml can dequantize). */
int ts_axpy_rows_supported(enum ggml_type type);

void ts_axpy_rows(enum ggml_type type, const void *w, size_t row_bytes, const int32_t *idx, const float *coef,
                  int64_t n_idx, int64_t col0, int64_t n, float *out);

#endif
