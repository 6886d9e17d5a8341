#include "row_sums_batch.h"

#include "axpy_rows.h"
#include "ggml-cpu.h"
#include "ts_error.h"

#include <stdlib.h>
#include <string.h>

/* Measured on the 7B twin's Q4_0 down (Intel Xeon, AVX-512, 2 threads, 16- and 32-token prompts; the down's samples
 * against the gate/up prompt kernel's, 0.97-1.12 one token at a time): tiles of 1024 columns (a Q4_0 row's 576-byte
 * segment) and blocks whose segments fill 512 KiB (a Zen 3 core's L2) 0.64-0.69; 512 or 2048 columns 0.77-0.86,
 * 256 KiB or 1 MiB blocks 0.72-0.73. */
#define TILE_COLS 1024
#define WORKING_SET ((size_t)512 << 10)
#define SCRATCH_ENTRIES ((int64_t)1 << 18) /* list entries of all tokens together: 2 MiB of scratch per thread */

/* Rows per block: a block's row segments of one column tile fill WORKING_SET bytes. */
static int64_t block_rows(enum ggml_type type, int64_t n_rows, int64_t n_tokens) {
    const size_t seg = (size_t)(TILE_COLS / ggml_blck_size(type)) * ggml_type_size(type);
    int64_t rb = (int64_t)(WORKING_SET / seg);
    if (rb > SCRATCH_ENTRIES / n_tokens) {
        rb = SCRATCH_ENTRIES / n_tokens;
    }
    if (rb < 64) {
        rb = 64;
    }
    return rb < n_rows ? rb : n_rows;
}

/* A token's entries of one block: at most the block's rows and a cut's rounding. */
static int64_t list_capacity(int64_t rb) {
    return rb + TS_ROW_SUMS_CUT - 1;
}

size_t ts_row_sums_batch_scratch(enum ggml_type type, int64_t n_rows, int64_t max_tokens) {
    const int64_t cap = list_capacity(block_rows(type, n_rows, max_tokens));
    const size_t per_token = 2 * sizeof(void *) + 2 * sizeof(int64_t) + (size_t)cap * (sizeof(int32_t) + sizeof(float));
    return (size_t)max_tokens * per_token;
}

ts_row_sums_tokens ts_row_sums_batch_tokens(void *scratch, int64_t max_tokens) {
    const float **act = scratch;
    return (ts_row_sums_tokens){act, (float **)(act + max_tokens)};
}

uint64_t ts_row_sums_batch(enum ggml_type type, const void *w, size_t row_bytes, int64_t n_rows, int64_t n_tokens,
                           int64_t max_tokens, int64_t col0, int64_t n, void *scratch) {
    /* the scratch's layout is that of max_tokens tokens; the blocks' size too (the results do not depend on it) */
    const int64_t rb = block_rows(type, n_rows, max_tokens), cap = list_capacity(rb);
    const ts_row_sums_tokens tokens = ts_row_sums_batch_tokens(scratch, max_tokens);
    int64_t *next = (int64_t *)(tokens.out + max_tokens), *len = next + max_tokens;
    int32_t *idx = (int32_t *)(len + max_tokens);
    float *coef = (float *)(idx + max_tokens * cap);
    const int64_t blck = ggml_blck_size(type);
    const int64_t tile = TILE_COLS > blck ? TILE_COLS / blck * blck : blck;
    uint64_t nonzero = 0;
    for (int64_t t = 0; t < n_tokens; t++) {
        next[t] = 0;
        memset(tokens.out[t], 0, (size_t)n * sizeof(float));
    }
    for (int64_t r1 = rb;; r1 += rb) {
        /* each token's non-zero neurons from where its last list ended, up to this block's end, the list then
         * extended to a whole number of cuts */
        for (int64_t t = 0; t < n_tokens; t++) {
            const float *a = tokens.act[t];
            int32_t *ti = idx + t * cap;
            float *tc = coef + t * cap;
            int64_t j = next[t], m = 0;
            for (; j < n_rows && (j < r1 || m % TS_ROW_SUMS_CUT != 0); j++) {
                if (a[j] != 0.0f) {
                    ti[m] = (int32_t)j;
                    tc[m++] = a[j];
                }
            }
            next[t] = j;
            len[t] = m;
            nonzero += (uint64_t)m;
        }
        for (int64_t x0 = 0; x0 < n; x0 += tile) {
            const int64_t width = n - x0 < tile ? n - x0 : tile;
            for (int64_t t = 0; t < n_tokens; t++) {
                if (len[t] > 0) {
                    ts_axpy_rows(type, w, row_bytes, idx + t * cap, coef + t * cap, len[t], col0 + x0, width,
                                 tokens.out[t] + x0);
                }
            }
        }
        if (r1 >= n_rows) {
            break;
        }
    }
    return nonzero;
}

int32_t ts_kernel_row_sums_batch(int32_t type, const void *w, int64_t n_rows, int64_t n_cols, const float *act,
                                 int64_t n_tokens, int64_t col0, int64_t n, float *out, char *err, size_t err_size) {
    if (type < 0 || type >= GGML_TYPE_COUNT || ggml_blck_size((enum ggml_type)type) == 0 ||
        !ts_axpy_rows_supported((enum ggml_type)type)) {
        return ts_set_error(err, err_size, "row_sums_batch: unsupported ggml type id %d", type);
    }
    const enum ggml_type t = (enum ggml_type)type;
    const int64_t blck = ggml_blck_size(t);
    if (n_rows <= 0 || n_tokens <= 0 || n_cols <= 0 || n_cols % blck || col0 < 0 || n <= 0 || col0 % blck ||
        n % blck || col0 + n > n_cols) {
        return ts_set_error(err, err_size, "row_sums_batch: %lld rows, %lld tokens, columns [%lld, %lld) of %lld (whole "
                            "%lld-blocks expected)", (long long)n_rows, (long long)n_tokens, (long long)col0,
                            (long long)(col0 + n), (long long)n_cols, (long long)blck);
    }
    ggml_cpu_init(); /* F16 tables used by some dequantizers */
    const size_t row_bytes = ggml_row_size(t, n_cols);
    void *rows = (void *)w; /* w is in ggml's layout: a kernel reading another gets a converted copy */
    void *scratch = malloc(ts_row_sums_batch_scratch(t, n_rows, n_tokens));
    if (ts_axpy_rows_layout(t) != TS_ROWS_GGML) {
        rows = malloc(row_bytes * (size_t)n_rows);
        if (rows != NULL) {
            ts_rows_to_layout(ts_axpy_rows_layout(t), t, w, rows, n_rows, row_bytes);
        }
    }
    if (rows == NULL || scratch == NULL) {
        if (rows != w) {
            free(rows);
        }
        free(scratch);
        return ts_set_error(err, err_size, "row_sums_batch: out of memory");
    }
    const ts_row_sums_tokens tokens = ts_row_sums_batch_tokens(scratch, n_tokens);
    for (int64_t i = 0; i < n_tokens; i++) {
        tokens.act[i] = act + i * n_rows;
        tokens.out[i] = out + i * n;
    }
    ts_row_sums_batch(t, rows, row_bytes, n_rows, n_tokens, n_tokens, col0, n, scratch);
    if (rows != w) {
        free(rows);
    }
    free(scratch);
    return 0;
}
