/*
 * The sparse down projection's inner loop: add scaled, dequantized matrix rows into a float vector.
 *
 *   out[c] += sum_i coef[i] * W[idx[i]][col0 + c]     for c in [0, n)
 *
 * W holds rows of row_bytes bytes of ggml type `type`; col0 and n are multiples of the type's block size,
 * so a caller can split the columns between threads on block boundaries (no two threads write the
 * same output element).
 *
 * The columns are walked in tiles that stay in L1. A tile is computed by a fused dequantize-and-add kernel of the
 * best instruction set this CPU runs (axpy_rows_<isa>.c), else by the generic reference: ggml's dequantizer,
 * then a plain loop (every type ggml can dequantize).
 */
#ifndef TS_AXPY_ROWS_H
#define TS_AXPY_ROWS_H

#include "ggml.h"
#include "turbosparse.h"

#include <stddef.h>
#include <stdint.h>

/* 1 when ts_axpy_rows handles `type` (every type ggml can dequantize). */
int ts_axpy_rows_supported(enum ggml_type type);

/*
 * How W's rows are laid out. TS_ROWS_GGML: ggml's blocks. TS_ROWS_SPLIT, for the 32-value block types whose block is
 * an fp16 scale d (Q4_0, Q8_0; Q4_1 also an fp16 min m) and then the quants: the same bytes of a row reordered in
 * groups of 8 consecutive blocks (the last group of a row may hold fewer), each group holding its blocks' d, then their
 * m, then their quants, in block order (row size unchanged). A kernel then loads the scales of a group as one vector
 * instead of gathering them one block at a time, and still reads each row front to back as one stream (the AVX2
 * Q4_0 and Q4_1 kernels, the AVX-512 Q4_0 kernel). W is in the layout the kernel ts_axpy_rows runs for `type` on this
 * CPU reads (ts_axpy_rows_layout), converted once at model load (ts_rows_to_layout). TS_ROWS_Q4_K_DOWN: Q4_K rows
 * grouped so too, in a layout of the x86 down kernels' own (q4_k_split.h).
 */
enum ts_rows_layout { TS_ROWS_GGML, TS_ROWS_SPLIT, TS_ROWS_Q4_K_DOWN };

/* Blocks per group of the split layout: at most 8, the lanes in which the kernels quantize a group's units at once. */
#define TS_SPLIT_GROUP 8
_Static_assert(TS_SPLIT_GROUP >= 1 && TS_SPLIT_GROUP <= 8, "the kernels quantize a group in 8 lanes");

/* Where units (blocks) [u, end) of a split row of row_units blocks start: their group's first block, the group's size
 * c (a row's last group may hold fewer), u's place j0 in it and the n of those units the group holds. */
typedef struct ts_split_group {
    int64_t first;
    int c, j0, n;
} ts_split_group;

static inline ts_split_group ts_split_group_at(int64_t u, int64_t end, int64_t row_units) {
    ts_split_group g;
    g.first = u / TS_SPLIT_GROUP * TS_SPLIT_GROUP;
    g.c = row_units - g.first < TS_SPLIT_GROUP ? (int)(row_units - g.first) : TS_SPLIT_GROUP;
    g.j0 = (int)(u - g.first);
    g.n = g.c - g.j0 < end - u ? g.c - g.j0 : (int)(end - u);
    return g;
}

enum ts_rows_layout ts_axpy_rows_layout(enum ggml_type type);

/* ggml's rows -> TS_ROWS_SPLIT rows (an exact reordering into other memory); Q4_K rows (gate and up only) into
 * their own split layout (q4_k_split.h). */
void ts_rows_split(enum ggml_type type, const void *src, void *dst, int64_t n_rows, size_t row_bytes);

/* ggml's rows -> rows in `layout` (not TS_ROWS_GGML), the layout a transposed down is held in */
void ts_rows_to_layout(enum ts_rows_layout layout, enum ggml_type type, const void *src, void *dst, int64_t n_rows,
                       size_t row_bytes);

/* The kernels take rows in groups of a size that divides this (the integer kernels quantize a group's coefficients
 * together): a list split at multiples of it gives every row the same group, and the same rounding, as the whole. */
#define TS_AXPY_ROWS_ALIGN 16

/* W in ts_axpy_rows_layout(type) */
void ts_axpy_rows(enum ggml_type type, const void *w, size_t row_bytes, const int32_t *idx, const float *coef,
                  int64_t n_idx, int64_t col0, int64_t n, float *out);

/* The instruction set whose kernel ts_axpy_rows runs for `type` on this CPU. */
enum ts_kernel_isa ts_axpy_rows_isa(enum ggml_type type);

/*
 * The type sparse decoding holds a transposed down of `type` in: `type` itself, or Q8_0 for quantized types no fused
 * kernel of this CPU reads (on CPUs with a fused Q8_0 kernel). The generic kernel dequantizes each row with ggml's scalar dequantizer: Q5_0 and Q6_K
 * rows ran 0.3 GB/s there, Q8_0 rows 7 GB/s in the fused kernel (one thread, 10 % of 14336 rows of 4096, Zen 3), and
 * a sparse FFN of those types was no faster than the dense one. So such a matrix is requantized to Q8_0 at load:
 * 8.5 bits per value, more than any of those types has, and at most 1/254 of a 32-value block's largest value added
 * to each value's rounding.
 */
enum ggml_type ts_axpy_rows_held_type(enum ggml_type type);

/*
 * A fused tile kernel: o[0, 32 * n_units) += sum_i coef[i] * (32 * n_units values of row idx[i] from the block at
 * byte `offset` of a ggml row), the tile starting on a block boundary; rows in the kernel's layout. Each instruction
 * set's table returns a NULL tile for the types it lacks (and everywhere when not compiled for this architecture).
 */
typedef void (*ts_axpy_tile_fn)(const char *w, size_t row_bytes, size_t offset, const int32_t *idx, const float *coef,
                                int64_t n_idx, int64_t n_units, float *o);
typedef struct {
    ts_axpy_tile_fn tile;
    enum ts_rows_layout layout;
} ts_axpy_kernel;
ts_axpy_kernel ts_axpy_kernel_avx2(enum ggml_type type);
ts_axpy_kernel ts_axpy_kernel_avx512(enum ggml_type type);
ts_axpy_kernel ts_axpy_kernel_neon(enum ggml_type type);

#endif
