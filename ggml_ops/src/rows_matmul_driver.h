/*
 * The driver of the prompt kernels (rows_matmul.h), shared by the instruction sets that have them
 * (gate_up_dot_avx2.c, gate_up_dot_avx512.c). A pass unpacks `rows` rows interleaved (row r in int32 lane r of every
 * vector, so that one instruction multiplies the same 4 values of all of them by a token's 4 values broadcast, and the
 * block scales apply once per block for all the rows); tokens are prepared in chunks that stay in L2, each once; the
 * pass's rows are taken a slice of TS_MM_SLICE_BLOCKS blocks at a time, held in L1 while the chunk's tokens go over
 * it two at a time (each loaded vector serves both), or four where the kernel has a slice for four (Q4_K split on
 * AVX-512: 235 -> 253 GFLOP/s, one thread, Zen 4). Every row's sum runs in one lane in a fixed order: the same result
 * whatever the row's place in a pass, the chunk size or the thread split.
 */
#ifndef TS_ROWS_MATMUL_DRIVER_H
#define TS_ROWS_MATMUL_DRIVER_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define TS_MM_TOKENS_BYTES (256 * 1024) /* a chunk's prepared tokens: about half of a core's L2 */
#define TS_MM_SLICE_BLOCKS 16           /* blocks of a slice: 8 KB of 16 rows (AVX-512), 4-5 KB of 8 (AVX2) */

static inline size_t ts_align64(size_t bytes) {
    return (bytes + 63) & ~(size_t)63;
}

/* matmul_<name>, a ts_rows_matmul_fn over ROWS-row passes:
 *   prepare(xq, n, buf)                          one token in at most n + 8 * n / 32 bytes
 *   unpack(w, row_bytes, R, nb, pass)            R <= ROWS rows into pass (pass_bytes(nb) bytes, 64-aligned)
 *   slice(pass, nb, x, n, b0, b1, sum)           sum[ROWS] += the rows' dot products with token x over blocks b0..b1
 *   slice2(pass, nb, x0, x1, n, b0, b1, s0, s1)  the same for two tokens
 * (b0 is a multiple of TS_MM_SLICE_BLOCKS, b1 that or nb) */
#define TS_DEFINE_MATMUL(name, ROWS, pass_bytes, prepare, unpack, slice, slice2)                                      \
    static void name##_slice4(const uint8_t *pass, int64_t nb, const void *const *x, int64_t n, int64_t b0,        \
                              int64_t b1, float *const *sum) {                                                      \
        slice2(pass, nb, x[0], x[1], n, b0, b1, sum[0], sum[1]);                                                    \
        slice2(pass, nb, x[2], x[3], n, b0, b1, sum[2], sum[3]);                                                    \
    }                                                                                                               \
    TS_DEFINE_MATMUL4(name, ROWS, pass_bytes, prepare, unpack, slice, slice2, name##_slice4)

/* The same with a kernel for four tokens at once:
 *   slice4(pass, nb, x[4], n, b0, b1, sum[4])    the rows' dot products with four tokens */
#define TS_DEFINE_MATMUL4(name, ROWS, pass_bytes, prepare, unpack, slice, slice2, slice4)                             \
    static void matmul_##name(const void *w, size_t row_bytes, int64_t n_rows, const void *xq, size_t xq_stride,   \
                              int64_t n_tokens, int64_t n, float *out, size_t out_stride, void *scratch) {          \
        const int64_t nb = n / 32;                                                                                  \
        uint8_t *pass = (uint8_t *)(((uintptr_t)scratch + 63) & ~(uintptr_t)63);                                    \
        uint8_t *tokens = pass + ts_align64(pass_bytes(nb));                                                        \
        const size_t prepared_bytes = ts_align64((size_t)n + 8 * (size_t)nb), sum_bytes = sizeof(float) * ROWS;    \
        const size_t room = TS_ROWS_MATMUL_SCRATCH - 64 - (size_t)(tokens - (uint8_t *)scratch);                   \
        const size_t chunk_bytes = room < TS_MM_TOKENS_BYTES ? room : TS_MM_TOKENS_BYTES;                           \
        const int64_t fit = (int64_t)(chunk_bytes / (prepared_bytes + sum_bytes)), chunk = fit > 0 ? fit : 1;     \
        float *sums = (float *)(tokens + (size_t)chunk * prepared_bytes);                                           \
        for (int64_t t0 = 0; t0 < n_tokens; t0 += chunk) {                                                          \
            const int64_t t1 = t0 + chunk < n_tokens ? t0 + chunk : n_tokens;                                       \
            for (int64_t t = t0; t < t1; t++) {                                                                     \
                prepare((const uint8_t *)xq + t * xq_stride, n, tokens + (size_t)(t - t0) * prepared_bytes);        \
            }                                                                                                       \
            for (int64_t i = 0; i < n_rows; i += ROWS) {                                                            \
                const int R = n_rows - i < ROWS ? (int)(n_rows - i) : ROWS;                                         \
                unpack((const uint8_t *)w + (size_t)i * row_bytes, row_bytes, R, nb, pass);                         \
                memset(sums, 0, (size_t)(t1 - t0) * sum_bytes);                                                     \
                for (int64_t b0 = 0; b0 < nb; b0 += TS_MM_SLICE_BLOCKS) {                                           \
                    const int64_t b1 = b0 + TS_MM_SLICE_BLOCKS < nb ? b0 + TS_MM_SLICE_BLOCKS : nb;                 \
                    int64_t t = t0;                                                                                 \
                    for (; t + 3 < t1; t += 4) {                                                                    \
                        const void *x[4];                                                                           \
                        float *s[4];                                                                                \
                        for (int k = 0; k < 4; k++) {                                                               \
                            x[k] = tokens + (size_t)(t + k - t0) * prepared_bytes;                                  \
                            s[k] = sums + (t + k - t0) * ROWS;                                                      \
                        }                                                                                           \
                        slice4(pass, nb, x, n, b0, b1, s);                                                          \
                    }                                                                                               \
                    for (; t + 1 < t1; t += 2) {                                                                    \
                        const uint8_t *x0 = tokens + (size_t)(t - t0) * prepared_bytes;                             \
                        slice2(pass, nb, x0, x0 + prepared_bytes, n, b0, b1, sums + (t - t0) * ROWS,                \
                               sums + (t + 1 - t0) * ROWS);                                                         \
                    }                                                                                               \
                    if (t < t1) {                                                                                   \
                        slice(pass, nb, tokens + (size_t)(t - t0) * prepared_bytes, n, b0, b1,                      \
                              sums + (t - t0) * ROWS);                                                              \
                    }                                                                                               \
                }                                                                                                   \
                for (int64_t t = t0; t < t1; t++) {                                                                 \
                    memcpy(out + (size_t)t * out_stride + i, sums + (t - t0) * ROWS, sizeof(float) * (size_t)R);    \
                }                                                                                                   \
            }                                                                                                       \
        }                                                                                                           \
    }

#endif
