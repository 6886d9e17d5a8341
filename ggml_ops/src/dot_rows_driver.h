/*
 * The pass driver of the gate/up kernels, shared by every instruction set (gate_up_dot_<isa>.c). A kernel's
 * group(rows, R, prepared, n, out, prefetcher) dots R rows (R at most its file's pass size) with the prepared
 * activation in one pass and meanwhile asks for a later pass's rows through the prefetcher (row_prefetch.h); group
 * functions are always inlined, so the constant row counts of the tail passes (4, 3, 2, 1) unroll.
 */
#ifndef TS_DOT_ROWS_DRIVER_H
#define TS_DOT_ROWS_DRIVER_H

#include "row_prefetch.h"

/* Rows per pass: 2 neurons' gate and up (8 measured +2-6 %, 2 -10 % on a Zen 3); AVX-512 takes 8
 * (gate_up_dot_avx512.c). A kernel's group takes up to its file's pass size. */
#define TS_DOT_ROWS 4
#define TS_DOT_ROWS_MAX 8

/* How many passes ahead a pass prefetches: enough that ~8 KiB of rows are asked for ahead of the reads, which the
 * prefetches need when they carry the load: Q4_0 rows of 1024 values (576 bytes: a Mistral-7B predictor's fc2 of rank
 * 1024) read from DRAM at 17 / 24 GB/s with one pass ahead, 24 / 29 with 4 / 2 (AVX2 / AVX-512 kernels, one thread,
 * AMD EPYC Zen 4); rows of 4096 values read fastest one pass ahead (9 / 18 KiB). Rows under 256 bytes (a rank-256 fc2)
 * lie so close that the hardware prefetcher follows them: more lead there lost 2-5 %. */
static inline int ts_dot_lead_passes(size_t row_bytes, int pass) {
    const size_t lead_bytes = 8192, pass_bytes = row_bytes * (size_t)pass;
    return row_bytes < 256 || pass_bytes >= lead_bytes ? 1 : (int)((lead_bytes + pass_bytes - 1) / pass_bytes);
}

/* dot_rows_<name>: out[i] = rows[i] . x for every i < n_rows, `pass` (4 or 8) rows per call of group. */
#define TS_DEFINE_DOT_ROWS(name, group, block_values, block_bytes, pass)                                           \
    _Static_assert((pass) == 4 || (pass) == TS_DOT_ROWS_MAX, "the tail below takes passes of 4 or 8 rows");        \
    static void dot_rows_##name(enum ggml_type type, const void *const *rows, int64_t n_rows, const void *prepared, \
                                int64_t n, float *out) {                                                           \
        (void)type;                                                                                                \
        const size_t row_bytes = (size_t)(n / (block_values)) * (block_bytes);                                     \
        const int64_t lead = (int64_t)ts_dot_lead_passes(row_bytes, (pass)) * (pass); /* rows ahead */            \
        ts_prefetch_rows(rows, n_rows < lead ? (int)n_rows : (int)lead, row_bytes);                                \
        int64_t i = 0;                                                                                             \
        if (lead == (pass)) { /* a loop of its own (constant offsets): AVX2 Q4_0 gate/up 0.388 against 0.402 ms */\
            for (; i + (pass) <= n_rows; i += (pass)) {                                                            \
                const int64_t left = n_rows - i - (pass);                                                          \
                ts_row_prefetcher pf = {rows + i + (pass), left < (pass) ? (int)left : (pass), 0};                 \
                group(rows + i, (pass), prepared, n, out + i, &pf);                                                \
            }                                                                                                      \
        }                                                                                                          \
        for (; i + (pass) <= n_rows; i += (pass)) {                                                                \
            const int64_t left = n_rows - i - lead; /* rows from the one `lead` ahead */                          \
            ts_row_prefetcher pf = {rows + i + lead, left <= 0 ? 0 : left < (pass) ? (int)left : (pass), 0};       \
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
