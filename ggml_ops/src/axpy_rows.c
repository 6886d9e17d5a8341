/* The sparse down projection: tiles, the generic reference, the choice of kernel and its test entry. */
#include "axpy_rows.h"

#include "cpu_features.h"
#include "ggml-cpu.h"
#include "q4_k_split.h"
#include "ts_error.h"

#include <stdlib.h>
#include <string.h>

/* Columns per pass over the rows, a multiple of every block size: a 7B row (or a thread's share) in one pass, its
 * output tile (16 KiB) in L1. Long row segments read DRAM faster than 1024-column ones did. */
#define TILE 4096

int ts_axpy_rows_supported(enum ggml_type type) {
    return type == GGML_TYPE_F32 || ggml_get_type_traits(type)->to_float != NULL;
}

/* Reference path for every type: dequantize a tile of each row with ggml's to_float, then add. */
static void axpy_tile_generic(enum ggml_type type, const char *w, size_t row_bytes, size_t offset, const int32_t *idx,
                              const float *coef, int64_t n_idx, int64_t len, float *o) {
    const ggml_to_float_t to_float = ggml_get_type_traits(type)->to_float;
    float tmp[TILE];
    for (int64_t i = 0; i < n_idx; i++) {
        const char *row = w + (size_t)idx[i] * row_bytes + offset;
        const float a = coef[i];
        if (type == GGML_TYPE_F32) {
            const float *x = (const float *)row;
            for (int64_t c = 0; c < len; c++) {
                o[c] += a * x[c];
            }
        } else {
            to_float(row, tmp, len);
            for (int64_t c = 0; c < len; c++) {
                o[c] += a * tmp[c];
            }
        }
    }
}

/* The fused tile kernel of `isa` for `type` and the layout it reads (tile NULL: generic, or none for that type). */
static ts_axpy_kernel tile_kernel(enum ts_kernel_isa isa, enum ggml_type type) {
    switch (isa) {
    case TS_ISA_AVX512_VNNI: return ts_axpy_kernel_avx512(type); /* Q4_0, Q8_0, Q4_K */
    case TS_ISA_AVX2: return ts_axpy_kernel_avx2(type); /* AVX-512 CPUs run these for the other types */
    case TS_ISA_NEON: return ts_axpy_kernel_neon(type);  /* CPUs with the dot product extension too */
    default: return (ts_axpy_kernel){NULL, TS_ROWS_GGML};
    }
}

static int has_tile_kernel(enum ts_kernel_isa isa, enum ggml_type type, int64_t n) {
    (void)n; /* the down kernels take any whole blocks of columns */
    return tile_kernel(isa, type).tile != NULL;
}

enum ts_kernel_isa ts_axpy_rows_isa(enum ggml_type type) {
    return ts_isa_best(has_tile_kernel, type, 0);
}

enum ggml_type ts_axpy_rows_held_type(enum ggml_type type) {
    const int is_float = type == GGML_TYPE_F32 || type == GGML_TYPE_F16 || type == GGML_TYPE_BF16;
    const int keep = is_float || ts_axpy_rows_isa(type) != TS_ISA_GENERIC || ts_axpy_rows_isa(GGML_TYPE_Q8_0) == TS_ISA_GENERIC;
    return keep ? type : GGML_TYPE_Q8_0;
}

enum ts_rows_layout ts_axpy_rows_layout(enum ggml_type type) {
    return tile_kernel(ts_axpy_rows_isa(type), type).layout;
}

/* ---- the split layout (axpy_rows.h) ------------------------------------------------------------- */

/* bytes of a block's fp16 header (d, or d and m): the block types the split layout is defined for */
static size_t split_head_bytes(enum ggml_type type) {
    return type == GGML_TYPE_Q4_1 ? 4 : 2; /* Q4_0, Q8_0 */
}

void ts_rows_split(enum ggml_type type, const void *src, void *dst, int64_t n_rows, size_t row_bytes) {
    if (type == GGML_TYPE_Q4_K) { /* gate and up rows only: its own split layout */
        ts_q4_k_rows_split(src, dst, n_rows, row_bytes);
        return;
    }
    const size_t head = split_head_bytes(type), block = ggml_type_size(type), quants = block - head;
    const size_t n_blocks = row_bytes / block;
    for (int64_t i = 0; i < n_rows; i++) {
        unsigned char *out = (unsigned char *)dst + (size_t)i * row_bytes;
        const unsigned char *row = (const unsigned char *)src + (size_t)i * row_bytes;
        for (size_t b = 0; b < n_blocks; b++) {
            const unsigned char *blk = row + b * block;
            const ts_split_group g = ts_split_group_at((int64_t)b, (int64_t)b + 1, (int64_t)n_blocks);
            unsigned char *group = out + (size_t)g.first * block;
            for (size_t h = 0; h < head; h += 2) { /* d, then m: each an array of the group's c blocks */
                memcpy(group + h * (size_t)g.c + 2 * (size_t)g.j0, blk + h, 2);
            }
            memcpy(group + head * (size_t)g.c + quants * (size_t)g.j0, blk + head, quants);
        }
    }
}

void ts_rows_to_layout(enum ts_rows_layout layout, enum ggml_type type, const void *src, void *dst, int64_t n_rows,
                       size_t row_bytes) {
    GGML_ASSERT(layout == TS_ROWS_SPLIT || (layout == TS_ROWS_Q4_K_DOWN && type == GGML_TYPE_Q4_K));
    if (layout == TS_ROWS_Q4_K_DOWN) {
        ts_q4_k_rows_down(src, dst, n_rows, row_bytes);
    } else {
        ts_rows_split(type, src, dst, n_rows, row_bytes);
    }
}

static void axpy_rows_with(ts_axpy_tile_fn fused, enum ggml_type type, const void *w, size_t row_bytes,
                           const int32_t *idx, const float *coef, int64_t n_idx, int64_t col0, int64_t n, float *out) {
    const int64_t blck = ggml_blck_size(type);
    const size_t bsize = ggml_type_size(type);
    for (int64_t t0 = 0; t0 < n; t0 += TILE) {
        const int64_t len = n - t0 < TILE ? n - t0 : TILE;
        /* the fused kernel takes whole 32-column units; a float row's last columns go through the generic loop */
        const int64_t fused_len = fused != NULL ? len / 32 * 32 : 0;
        if (fused_len > 0) {
            const size_t offset = (size_t)((col0 + t0) / blck) * bsize;
            fused((const char *)w, row_bytes, offset, idx, coef, n_idx, fused_len / 32, out + t0);
        }
        if (len > fused_len) {
            const size_t offset = (size_t)((col0 + t0 + fused_len) / blck) * bsize;
            axpy_tile_generic(type, (const char *)w, row_bytes, offset, idx, coef, n_idx, len - fused_len,
                              out + t0 + fused_len);
        }
    }
}

void ts_axpy_rows(enum ggml_type type, const void *w, size_t row_bytes, const int32_t *idx, const float *coef,
                  int64_t n_idx, int64_t col0, int64_t n, float *out) {
    axpy_rows_with(tile_kernel(ts_axpy_rows_isa(type), type).tile, type, w, row_bytes, idx, coef, n_idx, col0, n, out);
}

int32_t ts_kernel_axpy_rows(int32_t isa, int32_t type, const void *w, int64_t n_rows, int64_t n_cols,
                            const int32_t *idx, const float *coef, int64_t n_idx, int64_t col0, int64_t n, float *out,
                            char *err, size_t err_size) {
    if (type < 0 || type >= GGML_TYPE_COUNT || ggml_blck_size((enum ggml_type)type) == 0 ||
        !ts_axpy_rows_supported((enum ggml_type)type)) {
        return ts_set_error(err, err_size, "axpy_rows: unsupported ggml type id %d", type);
    }
    const int64_t blck = ggml_blck_size((enum ggml_type)type);
    if (n_cols <= 0 || n_cols % blck || col0 < 0 || n < 0 || col0 % blck || n % blck || col0 + n > n_cols) {
        return ts_set_error(err, err_size, "axpy_rows: columns [%lld, %lld) of %lld are not whole %lld-blocks",
                            (long long)col0, (long long)(col0 + n), (long long)n_cols, (long long)blck);
    }
    for (int64_t i = 0; i < n_idx; i++) {
        if (idx[i] < 0 || idx[i] >= n_rows) {
            return ts_set_error(err, err_size, "axpy_rows: row index %d out of [0, %lld)", idx[i], (long long)n_rows);
        }
    }
    /* the CPU is asked first: a kernel table of an instruction set may itself use that set */
    const ts_axpy_kernel fused = ts_kernel_isa_supported(isa)
                                     ? tile_kernel((enum ts_kernel_isa)isa, (enum ggml_type)type)
                                     : (ts_axpy_kernel){NULL, TS_ROWS_GGML};
    if (!ts_kernel_isa_supported(isa) || (isa != TS_ISA_GENERIC && fused.tile == NULL)) {
        return ts_set_error(err, err_size, "axpy_rows: no %s kernel for %s on this CPU", ts_kernel_isa_name(isa),
                            ggml_type_name((enum ggml_type)type));
    }
    ggml_cpu_init(); /* F16 tables used by some dequantizers */
    const size_t row_bytes = ggml_row_size((enum ggml_type)type, n_cols);
    void *rows = (void *)w; /* w is in ggml's layout: a kernel reading another gets a converted copy */
    if (fused.layout != TS_ROWS_GGML) {
        rows = malloc(row_bytes * (size_t)n_rows);
        if (rows == NULL) {
            return ts_set_error(err, err_size, "axpy_rows: out of memory");
        }
        ts_rows_to_layout(fused.layout, (enum ggml_type)type, w, rows, n_rows, row_bytes);
    }
    axpy_rows_with(fused.tile, (enum ggml_type)type, rows, row_bytes, idx, coef, n_idx, col0, n, out);
    if (rows != w) {
        free(rows);
    }
    return 0;
}
