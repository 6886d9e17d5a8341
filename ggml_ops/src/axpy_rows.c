#include "axpy_rows.h"

#include "ggml-cpu.h"
#include "ts_error.h"
#include "turbosparse.h"

#define TILE 1024 /* columns dequantized at a time: a multiple of every block size (<= 256) */

int ts_axpy_rows_supported(enum ggml_type type) {
    return type == GGML_TYPE_F32 || ggml_get_type_traits(type)->to_float != NULL;
}

/* Reference path for every type: dequantize a tile of each row with ggml's to_float, then add. */
static void axpy_rows_generic(enum ggml_type type, const void *w, size_t row_bytes, const int32_t *idx,
                              const float *coef, int64_t n_idx, int64_t col0, int64_t n, float *out) {
    const ggml_to_float_t to_float = ggml_get_type_traits(type)->to_float;
    const int64_t blck = ggml_blck_size(type);
    const size_t bsize = ggml_type_size(type);
    float tmp[TILE];
    for (int64_t t0 = 0; t0 < n; t0 += TILE) {
        const int64_t len = n - t0 < TILE ? n - t0 : TILE;
        const size_t offset = (size_t)((col0 + t0) / blck) * bsize;
        float *o = out + t0;
        for (int64_t i = 0; i < n_idx; i++) {
            const char *row = (const char *)w + (size_t)idx[i] * row_bytes + offset;
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
}

void ts_axpy_rows(enum ggml_type type, const void *w, size_t row_bytes, const int32_t *idx, const float *coef,
                  int64_t n_idx, int64_t col0, int64_t n, float *out) {
    axpy_rows_generic(type, w, row_bytes, idx, coef, n_idx, col0, n, out);
}

int32_t ts_kernel_axpy_rows(int32_t type, const void *w, int64_t n_rows, int64_t n_cols, const int32_t *idx,
                            const float *coef, int64_t n_idx, int64_t col0, int64_t n, float *out, char *err,
                            size_t err_size) {
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
    ggml_cpu_init(); /* F16 tables used by some dequantizers */
    ts_axpy_rows((enum ggml_type)type, w, ggml_row_size((enum ggml_type)type, n_cols), idx, coef, n_idx, col0, n, out);
    return 0;
}
