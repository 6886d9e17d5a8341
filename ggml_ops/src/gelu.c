/* GELU computed by ggml itself (gelu.h). */
#include "gelu.h"

#include "ggml-cpu.h"
#include "ts_error.h"
#include "turbosparse.h"

#include <stdlib.h>
#include <string.h>

#define GELU_CHUNK ((int64_t)1 << 20) /* values per graph: ggml's GELU counts a row's values in an int */

/* y = ggml_gelu(x) for n values of `type` (F32 or F16), at most GELU_CHUNK, in ctx (reset first) */
static int run_gelu(struct ggml_context *ctx, enum ggml_type type, const void *x, void *y, int64_t n) {
    ggml_reset(ctx);
    struct ggml_tensor *in = ggml_new_tensor_1d(ctx, type, n);
    memcpy(in->data, x, ggml_nbytes(in));
    struct ggml_tensor *out = ggml_gelu(ctx, in);
    struct ggml_cgraph *gf = ggml_new_graph(ctx);
    ggml_build_forward_expand(gf, out);
    if (ggml_graph_compute_with_ctx(ctx, gf, 1) != GGML_STATUS_SUCCESS) { /* one row: one thread does it all */
        return -1;
    }
    memcpy(y, out->data, ggml_nbytes(out));
    return 0;
}

static struct ggml_context *gelu_context(void) {
    /* two tensors of a chunk, the graph, and the work buffer ggml_graph_compute_with_ctx places */
    struct ggml_init_params ip = {
        .mem_size = 3 * ggml_tensor_overhead() + ggml_graph_overhead() + 2 * (size_t)GELU_CHUNK * sizeof(float) + 4096,
        .mem_buffer = NULL,
        .no_alloc = false,
    };
    return ggml_init(ip); /* ggml aborts rather than return NULL when out of memory */
}

int32_t ts_gelu(const float *x, float *y, int64_t n, char *err, size_t err_size) {
    if (n < 0) {
        return ts_set_error(err, err_size, "gelu: n = %lld must be >= 0", (long long)n);
    }
    if (n == 0) {
        return 0;
    }
    struct ggml_context *ctx = gelu_context();
    int rc = 0;
    for (int64_t i = 0; rc == 0 && i < n; i += GELU_CHUNK) {
        rc = run_gelu(ctx, GGML_TYPE_F32, x + i, y + i, n - i < GELU_CHUNK ? n - i : GELU_CHUNK);
    }
    ggml_free(ctx);
    return rc == 0 ? 0 : ts_set_error(err, err_size, "gelu: ggml's graph failed");
}

int ts_gelu_table(ggml_fp16_t *table, char *err, size_t err_size) {
    ggml_fp16_t *h = malloc(sizeof(ggml_fp16_t) * TS_GELU_TABLE_SIZE);
    if (h == NULL) {
        return ts_set_error(err, err_size, "out of memory");
    }
    for (uint32_t i = 0; i < TS_GELU_TABLE_SIZE; i++) {
        h[i] = (ggml_fp16_t)i;
    }
    struct ggml_context *ctx = gelu_context();
    const int rc = run_gelu(ctx, GGML_TYPE_F16, h, table, TS_GELU_TABLE_SIZE); /* F16 in: ggml's table itself */
    ggml_free(ctx);
    free(h);
    return rc == 0 ? 0 : ts_set_error(err, err_size, "gelu: ggml's graph failed");
}

int32_t ts_kernel_gelu_lookup(const float *x, float *y, int64_t n, char *err, size_t err_size) {
    ggml_fp16_t *table = malloc(sizeof(ggml_fp16_t) * TS_GELU_TABLE_SIZE);
    if (table == NULL) {
        return ts_set_error(err, err_size, "out of memory");
    }
    const int rc = ts_gelu_table(table, err, err_size);
    for (int64_t i = 0; rc == 0 && i < n; i++) {
        y[i] = ts_gelu_lookup(table, x[i]);
    }
    free(table);
    return rc;
}
