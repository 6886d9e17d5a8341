/* GELU computed by ggml itself, so that what turbosparse computes outside ggml's graphs is ggml's value. */
#include "ggml-cpu.h"
#include "ggml.h"
#include "ts_error.h"
#include "turbosparse.h"

#include <string.h>

int32_t ts_gelu(const float *x, float *y, int64_t n, char *err, size_t err_size) {
    if (n < 0) {
        return ts_set_error(err, err_size, "gelu: n = %lld must be >= 0", (long long)n);
    }
    if (n == 0) {
        return 0;
    }
    struct ggml_init_params ip = {
        .mem_size = 2 * ggml_tensor_overhead() + ggml_graph_overhead() + 2 * (size_t)n * sizeof(float) + 1024,
        .mem_buffer = NULL,
        .no_alloc = false,
    };
    struct ggml_context *ctx = ggml_init(ip);
    if (ctx == NULL) {
        return ts_set_error(err, err_size, "gelu: out of memory for %lld values", (long long)n);
    }
    struct ggml_tensor *in = ggml_new_tensor_1d(ctx, GGML_TYPE_F32, n);
    memcpy(in->data, x, (size_t)n * sizeof(float));
    struct ggml_tensor *out = ggml_gelu(ctx, in);
    struct ggml_cgraph *gf = ggml_new_graph(ctx);
    ggml_build_forward_expand(gf, out);
    const enum ggml_status status = ggml_graph_compute_with_ctx(ctx, gf, 1);
    if (status == GGML_STATUS_SUCCESS) {
        memcpy(y, out->data, (size_t)n * sizeof(float));
    }
    ggml_free(ctx);
    return status == GGML_STATUS_SUCCESS ? 0 : ts_set_error(err, err_size, "gelu: ggml failed (status %d)", status);
}
