/* The prompt node over row-read FFN matrices (rows_matmul.h): the kernel choice and the ggml custom op. */
#include "rows_matmul.h"

#include "axpy_rows.h"
#include "cpu_features.h"
#include "ggml-cpu.h"
#include "sparse_ffn.h"
#include "ts_error.h"

#include <stdlib.h>
#include <string.h>

ts_rows_matmul_fn ts_rows_matmul_kernel_of(enum ts_kernel_isa isa, enum ggml_type type, int64_t n) {
    switch (isa) {
    case TS_ISA_AVX512_VNNI: return ts_rows_matmul_avx512(type, n);
    case TS_ISA_AVX2: return ts_rows_matmul_avx2(type, n);
    default: return NULL;
    }
}

ts_rows_matmul_fn ts_rows_matmul_split_of(enum ts_kernel_isa isa, enum ggml_type type, int64_t n) {
    switch (isa) {
    case TS_ISA_AVX512_VNNI: return ts_rows_matmul_avx512_split(type, n);
    case TS_ISA_AVX2: return ts_rows_matmul_avx2_split(type, n);
    default: return NULL;
    }
}

static int has_matmul_kernel(enum ts_kernel_isa isa, enum ggml_type type, int64_t n) {
    return ts_rows_matmul_kernel_of(isa, type, n) != NULL;
}

static int has_split_matmul_kernel(enum ts_kernel_isa isa, enum ggml_type type, int64_t n) {
    return ts_rows_matmul_split_of(isa, type, n) != NULL;
}

/* The instruction set of the kernel ts_rows_matmul_kernel picks, or -1 (no generic prompt kernel). */
int32_t ts_rows_matmul_isa(enum ggml_type type, int64_t n) {
    const enum ts_kernel_isa isa = ts_isa_best(has_matmul_kernel, type, n);
    return isa == TS_ISA_GENERIC ? -1 : (int32_t)isa;
}

ts_rows_matmul_fn ts_rows_matmul_kernel(enum ggml_type type, int64_t n, int split) {
    const enum ts_kernel_isa isa = ts_isa_best(split ? has_split_matmul_kernel : has_matmul_kernel, type, n);
    return (split ? ts_rows_matmul_split_of : ts_rows_matmul_kernel_of)(isa, type, n); /* GENERIC: none */
}

/* src: xq [row bytes, T] I8, w [n, n_rows], scratch [TS_ROWS_MATMUL_SCRATCH, n_threads] I8; userdata: 1 where w's rows
 * are in the split layout. Threads take whole groups of 16 rows (the AVX-512 kernel's pass, 4 of the AVX2 kernel's) in
 * order. */
static void rows_matmul_op(struct ggml_tensor *dst, int ith, int nth, void *userdata) {
    const struct ggml_tensor *xq = dst->src[0], *w = dst->src[1], *scratch = dst->src[2];
    GGML_ASSERT(ith < scratch->ne[1]); /* the graph runs on the n_threads the scratch was sized for */
    const ts_rows_matmul_fn kernel = ts_rows_matmul_kernel(w->type, w->ne[0], (int)(intptr_t)userdata);
    const int64_t n_groups = (w->ne[1] + 15) / 16;
    const int64_t r0 = n_groups * ith / nth * 16, r1 = n_groups * (ith + 1) / nth * 16;
    const int64_t end = r1 < w->ne[1] ? r1 : w->ne[1];
    if (end > r0) {
        kernel((const char *)w->data + r0 * w->nb[1], w->nb[1], end - r0, xq->data, xq->nb[1], xq->ne[1], w->ne[0],
               (float *)dst->data + r0, dst->nb[1] / sizeof(float), (char *)scratch->data + ith * scratch->nb[1]);
    }
}

struct ggml_tensor *ts_rows_matmul(struct ggml_context *ctx0, struct ggml_tensor *w, struct ggml_tensor *x,
                                   int32_t n_threads, int split) {
    if (ts_rows_matmul_kernel(w->type, w->ne[0], split) == NULL) {
        GGML_ASSERT(!split); /* ggml's mul_mat reads ggml's layout only */
        return NULL;
    }
    struct ggml_tensor *xq = ts_sparse_quantize(ctx0, x, w);
    struct ggml_tensor *scratch = ggml_new_tensor_2d(ctx0, GGML_TYPE_I8, TS_ROWS_MATMUL_SCRATCH, n_threads);
    struct ggml_tensor *args[3] = {xq, w, scratch};
    return ggml_custom_4d(ctx0, GGML_TYPE_F32, w->ne[1], xq->ne[1], 1, 1, args, 3, rows_matmul_op, GGML_N_TASKS_MAX,
                          (void *)(intptr_t)split);
}

/* ---- experts: each chosen expert's rows against the tokens that chose it -------------------------------- */

#define ID_CHUNK 256 /* rows per kernel call: the results of a chunk (ID_CHUNK floats per token) wait in scratch */

static size_t round_up_64(size_t bytes) {
    return (bytes + 63) / 64 * 64;
}

/* One thread's scratch: the kernel's, a chunk's results, the gathered tokens' quantized rows, their slots and tokens;
 * each part (and so each thread's row) a multiple of 64 bytes, so that every part starts aligned. */
typedef struct {
    float *results;
    char *gathered;
    int32_t *slot, *token;
} id_scratch;

static size_t id_scratch_bytes(size_t xq_row, int64_t n_tokens) {
    return TS_ROWS_MATMUL_SCRATCH + (size_t)n_tokens * ID_CHUNK * sizeof(float) +
           round_up_64((size_t)n_tokens * xq_row) + round_up_64((size_t)n_tokens * 2 * sizeof(int32_t));
}

static id_scratch id_scratch_parts(char *row, size_t xq_row, int64_t n_tokens) {
    id_scratch p;
    p.results = (float *)(row + TS_ROWS_MATMUL_SCRATCH);
    p.gathered = (char *)(p.results + n_tokens * ID_CHUNK);
    p.slot = (int32_t *)(p.gathered + round_up_64((size_t)n_tokens * xq_row));
    p.token = p.slot + n_tokens;
    return p;
}

/* src: xq [bytes, T] (the tokens quantized for w), w [n, n_rows, n_expert], ids [k, T] I32, scratch [bytes, threads].
 * dst [n_rows, k, T]: column (s, t) = expert ids[s, t]'s rows . x_t. For each expert, each thread gathers the tokens
 * that chose it (their quantized rows copied together), runs its rows against them a chunk at a time and copies the
 * results to their slots; threads split the rows as rows_matmul_op does. */
static void rows_matmul_id_op(struct ggml_tensor *dst, int ith, int nth, void *userdata) {
    const struct ggml_tensor *xq = dst->src[0], *w = dst->src[1], *ids = dst->src[2], *scratch = dst->src[3];
    GGML_ASSERT(ith < scratch->ne[1]); /* the graph runs on the n_threads the scratch was sized for */
    const ts_rows_matmul_fn kernel = ts_rows_matmul_kernel(w->type, w->ne[0], (int)(intptr_t)userdata);
    const int64_t n_rows = w->ne[1], n_expert = w->ne[2], k = ids->ne[0], n_tokens = ids->ne[1];
    const int64_t n_groups = (n_rows + 3) / 4;
    const int64_t r0 = n_groups * ith / nth * 4, r1 = n_groups * (ith + 1) / nth * 4;
    const int64_t end = r1 < n_rows ? r1 : n_rows;
    const size_t xq_row = xq->nb[1];
    char *kernel_scratch = (char *)scratch->data + ith * scratch->nb[1];
    const id_scratch part = id_scratch_parts(kernel_scratch, xq_row, n_tokens);
    float *results = part.results;
    char *gathered = part.gathered;
    int32_t *slot = part.slot, *token = part.token;
    for (int64_t e = 0; e < n_expert && end > r0; e++) {
        int64_t m = 0;
        for (int64_t t = 0; t < n_tokens; t++) {
            for (int64_t s = 0; s < k; s++) {
                if (*(const int32_t *)((const char *)ids->data + s * ids->nb[0] + t * ids->nb[1]) == e) {
                    GGML_ASSERT(m < n_tokens); /* a token chooses an expert at most once */
                    memcpy(gathered + (size_t)m * xq_row, (const char *)xq->data + t * xq->nb[1], xq_row);
                    slot[m] = (int32_t)s;
                    token[m++] = (int32_t)t;
                }
            }
        }
        const char *we = (const char *)w->data + e * w->nb[2];
        for (int64_t c0 = r0; c0 < end && m > 0; c0 += ID_CHUNK) {
            const int64_t cn = end - c0 < ID_CHUNK ? end - c0 : ID_CHUNK;
            kernel(we + c0 * w->nb[1], w->nb[1], cn, gathered, xq_row, m, w->ne[0], results, ID_CHUNK, kernel_scratch);
            for (int64_t i = 0; i < m; i++) {
                float *out = (float *)((char *)dst->data + slot[i] * dst->nb[1] + token[i] * dst->nb[2]) + c0;
                memcpy(out, results + i * ID_CHUNK, (size_t)cn * sizeof(float));
            }
        }
    }
}

struct ggml_tensor *ts_rows_matmul_id(struct ggml_context *ctx0, struct ggml_tensor *w, struct ggml_tensor *x,
                                      struct ggml_tensor *ids, int32_t n_threads, int split) {
    if (ts_rows_matmul_kernel(w->type, w->ne[0], split) == NULL) {
        GGML_ASSERT(!split); /* ggml's mul_mat_id reads ggml's layout only */
        return NULL;
    }
    struct ggml_tensor *xq = ts_sparse_quantize(ctx0, x, w);
    const size_t bytes = id_scratch_bytes(ggml_row_size(xq->type, xq->ne[0]), x->ne[1]);
    struct ggml_tensor *scratch = ggml_new_tensor_2d(ctx0, GGML_TYPE_I8, (int64_t)bytes, n_threads);
    struct ggml_tensor *args[4] = {xq, w, ids, scratch};
    return ggml_custom_4d(ctx0, GGML_TYPE_F32, w->ne[1], ids->ne[0], ids->ne[1], 1, args, 4, rows_matmul_id_op,
                          GGML_N_TASKS_MAX, (void *)(intptr_t)split);
}

/* ---- a gate and an up side by side: one pass over both, then their products sorted apart ------------------ */

/* src: y [2 n, rest] (pairs: the products of rows 2j and 2j + 1 of a side-by-side matrix). dst [n, rest, 2]: plane 0
 * the even entries, plane 1 the odd; threads take whole rows (ne[1]) of y. */
static void unpair_op(struct ggml_tensor *dst, int ith, int nth, void *userdata) {
    (void)userdata;
    const struct ggml_tensor *y = dst->src[0];
    const int64_t n = dst->ne[0], rest = dst->ne[1];
    for (int64_t r = rest * ith / nth; r < rest * (ith + 1) / nth; r++) {
        const float *pairs = (const float *)((const char *)y->data + r * y->nb[1]);
        float *even = (float *)((char *)dst->data + r * dst->nb[1]);
        float *odd = (float *)((char *)dst->data + r * dst->nb[1] + dst->nb[2]);
        for (int64_t j = 0; j < n; j++) {
            even[j] = pairs[2 * j];
            odd[j] = pairs[2 * j + 1];
        }
    }
}

void ts_unpair_gate_up(struct ggml_context *ctx0, struct ggml_tensor *y, struct ggml_tensor **gate,
                       struct ggml_tensor **up) {
    const int64_t n = y->ne[0] / 2, rest = ggml_nelements(y) / y->ne[0];
    struct ggml_tensor *args[1] = {ggml_reshape_2d(ctx0, y, y->ne[0], rest)};
    struct ggml_tensor *planes = ggml_custom_4d(ctx0, GGML_TYPE_F32, n, rest, 2, 1, args, 1, unpair_op,
                                                GGML_N_TASKS_MAX, NULL);
    struct ggml_tensor **out[2] = {gate, up};
    for (int k = 0; k < 2; k++) {
        *out[k] = ggml_view_3d(ctx0, planes, n, y->ne[1], y->ne[2], n * sizeof(float),
                               (size_t)(n * y->ne[1]) * sizeof(float), (size_t)k * planes->nb[2]);
    }
}

/* ---- test entry ----------------------------------------------------------------------------------- */

int32_t ts_kernel_rows_matmul(int32_t isa, int32_t type, const void *w, int64_t n_rows, int64_t n_cols,
                              const float *x, int64_t n_tokens, int32_t split, float *out, char *err, size_t err_size) {
    if (type < 0 || type >= GGML_TYPE_COUNT || ggml_blck_size((enum ggml_type)type) == 0) {
        return ts_set_error(err, err_size, "rows_matmul: unknown ggml type id %d", type);
    }
    ts_rows_matmul_fn (*const kernel_of)(enum ts_kernel_isa, enum ggml_type, int64_t) =
        split ? ts_rows_matmul_split_of : ts_rows_matmul_kernel_of;
    const ts_rows_matmul_fn kernel =
        ts_kernel_isa_supported(isa) ? kernel_of((enum ts_kernel_isa)isa, (enum ggml_type)type, n_cols) : NULL;
    if (kernel == NULL || n_rows < 0 || n_tokens < 0) {
        return ts_set_error(err, err_size, "rows_matmul: no %s kernel for %s rows of %lld%s on this CPU",
                            ts_kernel_isa_name(isa), ggml_type_name((enum ggml_type)type), (long long)n_cols,
                            split ? " in the split layout" : "");
    }
    ggml_cpu_init();
    const enum ggml_type vdt = ggml_get_type_traits_cpu((enum ggml_type)type)->vec_dot_type;
    const size_t xq_row = ggml_row_size(vdt, n_cols), row_bytes = ggml_row_size((enum ggml_type)type, n_cols);
    void *xq = malloc(xq_row * (size_t)(n_tokens > 0 ? n_tokens : 1));
    void *scratch = malloc(TS_ROWS_MATMUL_SCRATCH);
    void *held = split ? malloc(row_bytes * (size_t)(n_rows > 0 ? n_rows : 1)) : NULL; /* w in the split layout */
    if (xq == NULL || scratch == NULL || (split && held == NULL)) {
        free(xq), free(scratch), free(held);
        return ts_set_error(err, err_size, "rows_matmul: out of memory");
    }
    if (split) {
        ts_rows_split((enum ggml_type)type, w, held, n_rows, row_bytes);
        w = held;
    }
    for (int64_t t = 0; t < n_tokens; t++) {
        ggml_get_type_traits_cpu(vdt)->from_float(x + t * n_cols, (char *)xq + t * xq_row, n_cols);
    }
    kernel(w, row_bytes, n_rows, xq, xq_row, n_tokens, n_cols, out, (size_t)n_rows, scratch);
    free(xq), free(scratch), free(held);
    return 0;
}
