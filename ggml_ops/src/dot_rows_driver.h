/*
 * The pass driver of the gate/up kernels, shared by every instruction set (gate_up_dot_<isa>.c). A kernel's
 * group(rows, R, prepared, n, out, prefetcher) dots R rows (R at most its file's pass size) with the prepared
 * activation in one pass and meanwhile asks for the next pass's rows through the prefetcher (row_prefetch.h); group
 * functions are always inlined, so the constant row counts of the tail passes (4, 3, 2, 1) unroll.
 */
#ifndef TS_DOT_ROWS_DRIVER_H
#define TS_DOT_ROWS_DRIVER_H

#include "row_prefetch.h"

/* Rows per pass: 2 neurons' gate and up (8 measured +2-6 %, 2 -10 % on a Zen 3); AVX-512 takes 8
 * (gate_up_dot_avx512.c). A kernel's group takes up to its file's pass size. */
#define TS_DOT_ROWS 4
#define TS_DOT_ROWS_MAX 8

/* dot_rows_<name>: out[i] = rows[i] . x for every i < n_rows, `pass` (4 or 8) rows per call of group. */
#define TS_DEFINE_DOT_ROWS(name, group, block_values, block_bytes, pass)                                           \
    _Static_assert((pass) == 4 || (pass) == TS_DOT_ROWS_MAX, "the tail below takes passes of 4 or 8 rows");        \
    static void dot_rows_##name(enum ggml_type type, const void *const *rows, int64_t n_rows, const void *prepared, \
                                int64_t n, float *out) {                                                           \
        (void)type;                                                                                                \
        const size_t row_bytes = (size_t)(n / (block_values)) * (block_bytes);                                     \
        ts_prefetch_rows(rows, n_rows < (pass) ? (int)n_rows : (pass), row_bytes);                                 \
        int64_t i = 0;                                                                                             \
        for (; i + (pass) <= n_rows; i += (pass)) {                                                                \
            const int64_t left = n_rows - i - (pass);                                                              \
            ts_row_prefetcher pf = {rows + i + (pass), left < (pass) ? (int)left : (pass), 0};                     \
            group(rows + i, (pass), prepared, n, out + i, &pf);                                                    \
        }                                                                                                          \
        ts_row_prefetcher none = {rows, 0, 0};                                                                     \
        if ((pass) > 4 && n_rows - i >= 4) { /* a tail of 4-7 rows of a pass of 8: 4, then the rest */             \
            group(rows + i, 4, prepared, n, out + i, &none);                                                       \
            i += 4;                                                                                                \
        }                                                                                                          \
        switch (n_rows - i) {                                                                                      \
        case 3: group(rows + i, 3, prepared, n, out + i, &none); break;                                            \
        case 2: group(rows + i, 2, prepared, n, out + i, &none); break;                                            \
        case 1: group(rows + i, 1, prepared, n, out + i, &none); break;                                            \
        default: break;                                                                                            \
        }                                                                                                          \
    }

#endif
