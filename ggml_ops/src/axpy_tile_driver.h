/*
 * The row-group drivers of the sparse down kernels, shared by every instruction set (axpy_rows_avx2.c,
 * axpy_rows_neon.c). A driver walks the kept rows a group at a time; the including file's add_rows_<name> (float
 * types: `group` rows, the last group may be shorter) or add_group_<name> (integer types: always `rows` rows, a
 * short last group padded with coefficient 0) adds one group to the output tile and meanwhile prefetches the next
 * group's row segments through the prefetcher it is given (row_prefetch.h). The first group is prefetched at once.
 */
#ifndef TS_AXPY_TILE_DRIVER_H
#define TS_AXPY_TILE_DRIVER_H

#include "axpy_rows.h"
#include "row_prefetch.h"

#include <stddef.h>
#include <stdint.h>

/* The segments [offset, offset + seg_bytes) of rows idx[0, n), all at once (a first group: nothing to overlap). */
static inline void ts_prefetch_row_segments(const char *w, size_t row_bytes, size_t offset, const int32_t *idx,
                                            int64_t n, size_t seg_bytes) {
    for (int64_t i = 0; i < n; i++) {
        const char *p = w + (size_t)idx[i] * row_bytes + offset;
        for (size_t b = 0; b < seg_bytes; b += 64) {
            ts_prefetch_line(p + b);
        }
    }
}

/* A prefetcher for the segments of rows idx[0, n) at `offset`, their pointers kept in `rows`. */
static inline ts_row_prefetcher ts_next_rows(const char *w, size_t row_bytes, size_t offset, const int32_t *idx,
                                             int64_t n, const void **rows) {
    for (int64_t k = 0; k < n; k++) {
        rows[k] = w + (size_t)idx[k] * row_bytes + offset;
    }
    return (ts_row_prefetcher){rows, (int)n, 0};
}

/* Group i's `rows` rows (at `offset`) and coefficients: the n kept ones, then row idx[i] again with coefficient 0
 * (integer kernels always take whole groups). */
static inline void ts_padded_group(const char *w, size_t row_bytes, size_t offset, const int32_t *idx,
                                   const float *coef, int64_t i, int n, int rows, const uint8_t **r, float *a) {
    for (int k = 0; k < rows; k++) {
        r[k] = (const uint8_t *)w + (size_t)idx[i + (k < n ? k : 0)] * row_bytes + offset;
        a[k] = k < n ? coef[i + k] : 0.0f;
    }
}

#define TS_DEFINE_FLOAT_TILE(name, unit_bytes, group)                                                               \
    static void axpy_tile_##name(const char *w, size_t row_bytes, size_t offset, const int32_t *idx,              \
                                 const float *coef, int64_t n_idx, int64_t n_units, float *o) {                     \
        const size_t seg_bytes = (size_t)(n_units * (unit_bytes));                                                   \
        ts_prefetch_row_segments(w, row_bytes, offset, idx, n_idx < (group) ? n_idx : (group), seg_bytes);           \
        for (int64_t i = 0; i < n_idx; i += (group)) {                                                               \
            const int n = n_idx - i < (group) ? (int)(n_idx - i) : (group);                                          \
            const int64_t next = i + n, ahead = n_idx - next < (group) ? n_idx - next : (group);                     \
            const uint8_t *r[group];                                                                                 \
            const void *r_next[group];                                                                               \
            for (int k = 0; k < n; k++) {                                                                            \
                r[k] = (const uint8_t *)w + (size_t)idx[i + k] * row_bytes + offset;                                 \
            }                                                                                                        \
            ts_row_prefetcher pf = ts_next_rows(w, row_bytes, offset, idx + next, ahead, r_next);                    \
            if (n == (group)) {                                                                                      \
                add_rows_##name(r, coef + i, (group), n_units, o, &pf); /* a constant count the compiler unrolls */  \
            } else {                                                                                                 \
                add_rows_##name(r, coef + i, n, n_units, o, &pf);                                                    \
            }                                                                                                        \
            ts_prefetch_upto(&pf, seg_bytes + 64);                                                                   \
        }                                                                                                            \
    }

#define TS_DEFINE_INT_TILE(name, unit_bytes, rows)                                                                  \
    static void axpy_tile_##name(const char *w, size_t row_bytes, size_t offset, const int32_t *idx,               \
                                 const float *coef, int64_t n_idx, int64_t n_units, float *o) {                      \
        const size_t seg_bytes = (size_t)n_units * (unit_bytes);                                                    \
        ts_prefetch_row_segments(w, row_bytes, offset, idx, n_idx < (rows) ? n_idx : (rows), seg_bytes);            \
        for (int64_t i = 0; i < n_idx; i += (rows)) {                                                                \
            const int n = n_idx - i < (rows) ? (int)(n_idx - i) : (rows);                                            \
            const int64_t next = i + n, ahead = n_idx - next < (rows) ? n_idx - next : (rows);                       \
            const uint8_t *r[rows];                                                                                  \
            const void *r_next[rows];                                                                                \
            float a[rows];                                                                                           \
            ts_padded_group(w, row_bytes, offset, idx, coef, i, n, (rows), r, a);                                    \
            ts_row_prefetcher pf = ts_next_rows(w, row_bytes, offset, idx + next, ahead, r_next);                    \
            add_group_##name(r, a, n_units, o, &pf);                                                                 \
            ts_prefetch_upto(&pf, seg_bytes + 64);                                                                   \
        }                                                                                                            \
    }

/*
 * The split layouts' driver (axpy_rows.h, TS_ROWS_SPLIT and TS_ROWS_Q4_K_DOWN: per group of 8 blocks their headers,
 * then their quants): rows taken `rows` at a time as in the integer driver, add_split_<name>(r, a, u0, n_units, row_units,
 * o, pf) given the rows' starts and the tile's first unit; while it works it prefetches, through pf, the next rows'
 * segment from the start of the tile's first group of 8 blocks to the end of its last (one stream per row).
 * block_units: the 32-column units of a block (1; Q4_K: 8), n_units and u0 given to add_split_<name> in blocks.
 */
#define TS_DEFINE_SPLIT_TILE(name, block_bytes, block_units, rows)                                                  \
    static void axpy_tile_##name(const char *w, size_t row_bytes, size_t offset, const int32_t *idx,               \
                                 const float *coef, int64_t n_idx, int64_t units, float *o) {                        \
        const int64_t row_units = (int64_t)(row_bytes / (block_bytes)), u0 = (int64_t)(offset / (block_bytes));      \
        const int64_t n_units = units / (block_units);                                                               \
        const int64_t first_unit = u0 / TS_SPLIT_GROUP * TS_SPLIT_GROUP;                                             \
        const int64_t last = (u0 + n_units + TS_SPLIT_GROUP - 1) / TS_SPLIT_GROUP * TS_SPLIT_GROUP;                  \
        const size_t start = (size_t)first_unit * (block_bytes);                                                     \
        const size_t seg_bytes = (size_t)((last < row_units ? last : row_units) - first_unit) * (block_bytes);       \
        ts_prefetch_row_segments(w, row_bytes, start, idx, n_idx < (rows) ? n_idx : (rows), seg_bytes);             \
        for (int64_t i = 0; i < n_idx; i += (rows)) {                                                                \
            const int n = n_idx - i < (rows) ? (int)(n_idx - i) : (rows);                                            \
            const int64_t next = i + n, ahead = n_idx - next < (rows) ? n_idx - next : (rows);                       \
            const uint8_t *r[rows];                                                                                  \
            const void *r_next[rows];                                                                                \
            float a[rows];                                                                                           \
            ts_padded_group(w, row_bytes, 0, idx, coef, i, n, (rows), r, a); /* the rows' starts */                  \
            ts_row_prefetcher pf = ts_next_rows(w, row_bytes, start, idx + next, ahead, r_next);                     \
            add_split_##name(r, a, u0, n_units, row_units, o, &pf);                                                  \
            ts_prefetch_upto(&pf, seg_bytes + 64);                                                                   \
        }                                                                                                            \
    }

#endif
