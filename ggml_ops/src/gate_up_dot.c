/* The generic gate/up kernel (ggml's vec_dot: every type), the choice of kernel, and the kernel's test entry. */
#include "gate_up_dot.h"

#include "axpy_rows.h"
#include "cpu_features.h"
#include "row_prefetch.h"
#include "ggml-cpu.h"
#include "rows_matmul.h"
#include "ts_error.h"

#include <stdlib.h>
#include <string.h>

/* ---- generic: ggml's own dot product, one row at a time, against ggml's activation layout ------------- */

static const void *prepare_generic(const void *xq, int64_t n, void *buf) {
    (void)n, (void)buf;
    return xq;
}

/* Asks for a whole row ahead of its use. */
static void prefetch_row(const char *row, size_t row_bytes) {
    for (size_t b = 0; b < row_bytes; b += 64) {
        ts_prefetch_line(row + b);
    }
}

static void dot_rows_generic(enum ggml_type type, const void *const *rows, int64_t n_rows, const void *prepared,
                             int64_t n, float *out) {
    const ggml_vec_dot_t vec_dot = ggml_get_type_traits_cpu(type)->vec_dot;
    const size_t row_bytes = ggml_row_size(type, n);
    for (int64_t i = 0; i < n_rows; i++) {
        if (i + 1 < n_rows) {
            prefetch_row(rows[i + 1], row_bytes);
        }
        vec_dot((int)n, &out[i], 0, rows[i], 0, prepared, 0, 1);
    }
}

/* ---- choice --------------------------------------------------------------------------------------- */

int ts_dot_kernel_of(enum ts_kernel_isa isa, enum ggml_type type, int64_t n, ts_dot_kernel *k) {
    switch (isa) {
    case TS_ISA_GENERIC:
        *k = (ts_dot_kernel){TS_ISA_GENERIC, prepare_generic, dot_rows_generic};
        return ggml_get_type_traits_cpu(type)->vec_dot != NULL;
    case TS_ISA_AVX2: return ts_dot_kernel_avx2(type, n, k);
    case TS_ISA_AVX512_VNNI: return ts_dot_kernel_avx512(type, n, k);
    case TS_ISA_NEON: return ts_dot_kernel_neon(type, n, k);
    case TS_ISA_NEON_DOTPROD: return ts_dot_kernel_neon_dotprod(type, n, k);
    default: return 0;
    }
}

static int has_dot_kernel(enum ts_kernel_isa isa, enum ggml_type type, int64_t n) {
    ts_dot_kernel k;
    return ts_dot_kernel_of(isa, type, n, &k);
}

ts_dot_kernel ts_dot_kernel_best(enum ggml_type type, int64_t n) {
    ts_dot_kernel k;
    ts_dot_kernel_of(ts_isa_best(has_dot_kernel, type, n), type, n, &k);
    return k;
}

int ts_dot_kernel_split_of(enum ts_kernel_isa isa, enum ggml_type type, int64_t n, ts_dot_kernel *k) {
    switch (isa) {
    case TS_ISA_AVX2: return ts_dot_kernel_avx2_split(type, n, k);
    case TS_ISA_AVX512_VNNI: return ts_dot_kernel_avx512_split(type, n, k);
    default: return 0;
    }
}

static int has_split_dot_kernel(enum ts_kernel_isa isa, enum ggml_type type, int64_t n) {
    ts_dot_kernel k;
    return ts_dot_kernel_split_of(isa, type, n, &k);
}

int ts_gate_up_split(enum ggml_type type, int64_t n) {
    return ts_isa_best(has_split_dot_kernel, type, n) != TS_ISA_GENERIC && ts_rows_matmul_kernel(type, n, 1) != NULL;
}

ts_dot_kernel ts_dot_kernel_for(enum ggml_type type, int64_t n, int split) {
    if (!split) {
        return ts_dot_kernel_best(type, n);
    }
    GGML_ASSERT(ts_gate_up_split(type, n));
    ts_dot_kernel k;
    ts_dot_kernel_split_of(ts_isa_best(has_split_dot_kernel, type, n), type, n, &k);
    return k;
}

/* ---- test entry ----------------------------------------------------------------------------------- */

static int check_matrix(const char *what, int32_t type, int64_t n_rows, int64_t n_cols, const int32_t *idx,
                        int64_t n_idx, char *err, size_t err_size) {
    if (type < 0 || type >= GGML_TYPE_COUNT || ggml_blck_size((enum ggml_type)type) == 0) {
        return ts_set_error(err, err_size, "%s: unknown ggml type id %d", what, type);
    }
    const int64_t blck = ggml_blck_size((enum ggml_type)type);
    if (n_cols <= 0 || n_cols % blck) {
        return ts_set_error(err, err_size, "%s: %lld columns are not whole %lld-blocks", what, (long long)n_cols,
                            (long long)blck);
    }
    for (int64_t i = 0; i < n_idx; i++) {
        if (idx[i] < 0 || idx[i] >= n_rows) {
            return ts_set_error(err, err_size, "%s: row index %d out of [0, %lld)", what, idx[i], (long long)n_rows);
        }
    }
    return 0;
}

int32_t ts_kernel_dot_rows(int32_t isa, int32_t type, const void *w, int64_t n_rows, int64_t n_cols,
                           const int32_t *idx, int64_t n_idx, const float *x, int32_t split, float *out, char *err,
                           size_t err_size) {
    if (check_matrix("dot_rows", type, n_rows, n_cols, idx, n_idx, err, err_size) != 0) {
        return -1;
    }
    ggml_cpu_init();
    ts_dot_kernel k;
    const int found = (split ? ts_dot_kernel_split_of : ts_dot_kernel_of)((enum ts_kernel_isa)isa, (enum ggml_type)type,
                                                                          n_cols, &k);
    if (!ts_kernel_isa_supported(isa) || !found) {
        return ts_set_error(err, err_size, "dot_rows: no %s kernel for %s rows of %lld%s on this CPU",
                            ts_kernel_isa_name(isa), ggml_type_name((enum ggml_type)type), (long long)n_cols,
                            split ? " in the split layout" : "");
    }
    const enum ggml_type vdt = ggml_get_type_traits_cpu((enum ggml_type)type)->vec_dot_type;
    const size_t row_bytes = ggml_row_size((enum ggml_type)type, n_cols);
    void *xq = malloc(ggml_row_size(vdt, n_cols));
    void *buf = aligned_alloc(64, TS_DOT_PREPARED_MAX);
    const void **rows = malloc(sizeof(void *) * (size_t)(n_idx > 0 ? n_idx : 1));
    void *held = split ? malloc(row_bytes * (size_t)n_rows) : NULL; /* w in the split layout */
    if (xq == NULL || buf == NULL || rows == NULL || (split && held == NULL)) {
        free(xq), free(buf), free(rows), free(held);
        return ts_set_error(err, err_size, "dot_rows: out of memory");
    }
    if (split) {
        ts_rows_split((enum ggml_type)type, w, held, n_rows, row_bytes);
        w = held;
    }
    if (vdt == GGML_TYPE_F32) {
        memcpy(xq, x, (size_t)n_cols * sizeof(float));
    } else {
        ggml_get_type_traits_cpu(vdt)->from_float(x, xq, n_cols);
    }
    for (int64_t i = 0; i < n_idx; i++) {
        rows[i] = (const char *)w + (size_t)idx[i] * row_bytes;
    }
    k.dot_rows((enum ggml_type)type, rows, n_idx, k.prepare(xq, n_cols, buf), n_cols, out);
    free(xq), free(buf), free(rows), free(held);
    return 0;
}
