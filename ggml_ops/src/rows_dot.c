/* A whole matrix against a few tokens through the decoding kernels (rows_dot.h): the ggml custom op. */
#include "rows_dot.h"

#include "gate_up_dot.h"
#include "sparse_ffn.h"

enum {
    ROWS_CHUNK = 256,  /* rows per kernel call: a chunk (147 KiB of a rank-1024 Q4_0 fc2) stays in L2 for every token */
    TOKEN_BLOCK = 16,  /* tokens prepared at once: a batch of more reads the matrix once per block */
    PREPARED_BYTES = (TS_DOT_PREPARED_MAX + 63) / 64 * 64,
};

/* src: xq [row bytes, T] I8, w [n, n_rows], scratch [TOKEN_BLOCK prepared activations + 64, n_threads] I8; userdata:
 * 1 where w's rows are in the split layout. Threads take whole groups of 16 rows in order. */
static void rows_dot_op(struct ggml_tensor *dst, int ith, int nth, void *userdata) {
    const struct ggml_tensor *xq = dst->src[0], *w = dst->src[1], *scratch = dst->src[2];
    GGML_ASSERT(ith < scratch->ne[1]); /* the graph runs on the n_threads the scratch was sized for */
    const ts_dot_kernel k = ts_dot_kernel_for(w->type, w->ne[0], (int)(intptr_t)userdata);
    const int64_t n = w->ne[0], n_rows = w->ne[1], n_tokens = xq->ne[1], n_groups = (n_rows + 15) / 16;
    const int64_t r0 = n_groups * ith / nth * 16, r1 = n_groups * (ith + 1) / nth * 16;
    const int64_t end = r1 < n_rows ? r1 : n_rows;
    const uintptr_t base = (uintptr_t)((const char *)scratch->data + ith * scratch->nb[1]);
    unsigned char *buf = (unsigned char *)((base + 63) / 64 * 64);
    const void *prepared[TOKEN_BLOCK];
    const void *rows[ROWS_CHUNK];
    for (int64_t t0 = 0; t0 < n_tokens && end > r0; t0 += TOKEN_BLOCK) {
        const int64_t m = n_tokens - t0 < TOKEN_BLOCK ? n_tokens - t0 : TOKEN_BLOCK;
        for (int64_t t = 0; t < m; t++) {
            prepared[t] = k.prepare((const char *)xq->data + (t0 + t) * xq->nb[1], n, buf + t * PREPARED_BYTES);
        }
        for (int64_t r = r0; r < end; r += ROWS_CHUNK) {
            const int64_t cn = end - r < ROWS_CHUNK ? end - r : ROWS_CHUNK;
            for (int64_t i = 0; i < cn; i++) {
                rows[i] = (const char *)w->data + (r + i) * w->nb[1];
            }
            for (int64_t t = 0; t < m; t++) {
                k.dot_rows(w->type, rows, cn, prepared[t], n, (float *)((char *)dst->data + (t0 + t) * dst->nb[1]) + r);
            }
        }
    }
}

struct ggml_tensor *ts_rows_dot(struct ggml_context *ctx0, struct ggml_tensor *w, struct ggml_tensor *x,
                                int32_t n_threads, int split) {
    if (ts_dot_kernel_for(w->type, w->ne[0], split).isa == TS_ISA_GENERIC) {
        GGML_ASSERT(!split); /* ggml's mul_mat reads ggml's layout only */
        return NULL;
    }
    struct ggml_tensor *xq = ts_sparse_quantize(ctx0, x, w);
    struct ggml_tensor *scratch = ggml_new_tensor_2d(ctx0, GGML_TYPE_I8, TOKEN_BLOCK * PREPARED_BYTES + 64, n_threads);
    struct ggml_tensor *args[3] = {xq, w, scratch};
    return ggml_custom_4d(ctx0, GGML_TYPE_F32, w->ne[1], xq->ne[1], 1, 1, args, 3, rows_dot_op, GGML_N_TASKS_MAX,
                          (void *)(intptr_t)split);
}
