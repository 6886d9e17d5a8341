/*
 * The driver of the AVX2 prompt kernels (rows_matmul.h, gate_up_dot_avx2.c; the AVX-512 one takes 16 rows interleaved,
 * gate_up_dot_avx512.c, and shares its chunk size and alignment). Tokens are prepared in chunks that stay in L2, each once; a pass
 * unpacks TS_MM_ROWS rows once into scratch (the including file's unpack: its nibbles as bytes in the order its
 * token function reads them, each block's scale and min as floats) and runs them against every token of the chunk
 * (its token function: out[k] = row k . x for the pass's R rows; always inlined, so the tail's R unrolls).
 */
#ifndef TS_ROWS_MATMUL_DRIVER_H
#define TS_ROWS_MATMUL_DRIVER_H

#include <stddef.h>
#include <stdint.h>

#define TS_MM_ROWS 4
#define TS_MM_TOKENS_BYTES (256 * 1024) /* a chunk's prepared tokens: about half of a core's L2 */

typedef struct {
    uint8_t *nib; /* n bytes: the row's nibbles as bytes, 64-aligned */
    float *d, *m; /* n / 32 each: block scales and (types with a min) mins */
} ts_mm_row;

static inline size_t ts_align64(size_t bytes) {
    return (bytes + 63) & ~(size_t)63;
}

/* matmul_<name>, a ts_rows_matmul_fn: prepare(xq, n, buf) lays out one token in at most n + 8 * n / 32 bytes,
 * unpack(row, n / 32, ts_mm_row) unpacks one row, token(rows, R, prepared, n, out) dots R unpacked rows with it. */
#define TS_DEFINE_MATMUL(name, prepare, unpack, token)                                                              \
    static void matmul_##name(const void *w, size_t row_bytes, int64_t n_rows, const void *xq, size_t xq_stride,   \
                              int64_t n_tokens, int64_t n, float *out, size_t out_stride, void *scratch) {          \
        const int64_t nb = n / 32;                                                                                  \
        const size_t scales = ts_align64(sizeof(float) * (size_t)nb), row_part = ts_align64((size_t)n) + 2 * scales; \
        const size_t prepared_bytes = ts_align64((size_t)n + 8 * (size_t)nb);                                       \
        uint8_t *base = (uint8_t *)(((uintptr_t)scratch + 63) & ~(uintptr_t)63);                                    \
        ts_mm_row rows[TS_MM_ROWS];                                                                                 \
        for (int k = 0; k < TS_MM_ROWS; k++) {                                                                      \
            uint8_t *r = base + (size_t)k * row_part;                                                               \
            rows[k] = (ts_mm_row){r, (float *)(r + ts_align64((size_t)n)),                                          \
                                  (float *)(r + ts_align64((size_t)n) + scales)};                                   \
        }                                                                                                           \
        uint8_t *tokens = base + TS_MM_ROWS * row_part;                                                             \
        const int64_t fit = TS_MM_TOKENS_BYTES / (int64_t)prepared_bytes, chunk = fit > 0 ? fit : 1;                \
        for (int64_t t0 = 0; t0 < n_tokens; t0 += chunk) {                                                          \
            const int64_t t1 = t0 + chunk < n_tokens ? t0 + chunk : n_tokens;                                       \
            for (int64_t t = t0; t < t1; t++) {                                                                     \
                prepare((const uint8_t *)xq + t * xq_stride, n, tokens + (size_t)(t - t0) * prepared_bytes);        \
            }                                                                                                       \
            for (int64_t i = 0; i < n_rows; i += TS_MM_ROWS) {                                                      \
                const int R = n_rows - i < TS_MM_ROWS ? (int)(n_rows - i) : TS_MM_ROWS;                             \
                for (int k = 0; k < R; k++) {                                                                       \
                    unpack((const uint8_t *)w + (size_t)(i + k) * row_bytes, nb, rows[k]);                          \
                }                                                                                                   \
                for (int64_t t = t0; t < t1; t++) {                                                                 \
                    const void *x = tokens + (size_t)(t - t0) * prepared_bytes;                                     \
                    float *o = out + (size_t)t * out_stride + i;                                                    \
                    switch (R) {                                                                                    \
                    case 4: token(rows, 4, x, n, o); break;                                                         \
                    case 3: token(rows, 3, x, n, o); break;                                                         \
                    case 2: token(rows, 2, x, n, o); break;                                                         \
                    default: token(rows, 1, x, n, o); break;                                                        \
                    }                                                                                               \
                }                                                                                                   \
            }                                                                                                       \
        }                                                                                                           \
    }

#endif
