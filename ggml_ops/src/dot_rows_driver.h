/*
 * The pass driver of the gate/up kernels, shared by every instruction set (gate_up_dot_<isa>.c). A kernel's
 * group(rows, R, prepared, n, out, prefetcher) dots R <= TS_DOT_ROWS rows with the prepared activation in one pass
 * and meanwhile asks for the next pass's rows through the prefetcher (row_prefetch.h); group functions are always
 * inlined, so the constant row counts of the tail pass (3, 2, 1) unroll.
 */
#ifndef TS_DOT_ROWS_DRIVER_H
#define TS_DOT_ROWS_DRIVER_H

#include "row_prefetch.h"

#define TS_DOT_ROWS 4 /* rows per pass: 2 neurons' gate and up (8 measured +2-6 %, 2 -10 % on a Zen 3) */

/* dot_rows_<name>: out[i] = rows[i] . x for every i < n_rows, TS_DOT_ROWS rows per call of group. */
#define TS_DEFINE_DOT_ROWS(name, group, block_values, block_bytes)                                                 \
    static void dot_rows_##name(enum ggml_type type, const void *const *rows, int64_t n_rows, const void *prepared, \
                                int64_t n, float *out) {                                                           \
        (void)type;                                                                                                \
        const size_t row_bytes = (size_t)(n / (block_values)) * (block_bytes);                                     \
        ts_prefetch_rows(rows, n_rows < TS_DOT_ROWS ? (int)n_rows : TS_DOT_ROWS, row_bytes);                       \
        int64_t i = 0;                                                                                             \
        for (; i + TS_DOT_ROWS <= n_rows; i += TS_DOT_ROWS) {                                                      \
            const int64_t left = n_rows - i - TS_DOT_ROWS;                                                         \
            ts_row_prefetcher pf = {rows + i + TS_DOT_ROWS, left < TS_DOT_ROWS ? (int)left : TS_DOT_ROWS, 0};      \
            group(rows + i, TS_DOT_ROWS, prepared, n, out + i, &pf);                                               \
        }                                                                                                          \
        ts_row_prefetcher none = {rows, 0, 0};                                                                     \
        switch (n_rows - i) {                                                                                      \
        case 3: group(rows + i, 3, prepared, n, out + i, &none); break;                                            \
        case 2: group(rows + i, 2, prepared, n, out + i, &none); break;                                            \
        case 1: group(rows + i, 1, prepared, n, out + i, &none); break;                                            \
        default: break;                                                                                            \
        }                                                                                                          \
    }

#endif
