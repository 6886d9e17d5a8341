/*
 * Prompts through the FFN matrices that sparse decoding reads row by row. Sparse modes keep gate/up in ggml's plain
 * layout (the sparse kernels gather single rows; ggml's repacked 8-row layouts would make them read eight), so
 * ggml's fast prompt kernels, which need the repacked layout, do not apply to them and its plain path re-unpacks
 * every weight block for every token. This node takes a matrix's rows against all the prompt's tokens instead:
 *
 *   out[t][i] = w[i] . x_t        [n_rows, T] F32, x_t quantized as ggml quantizes it for w (its vec_dot type)
 *
 * A kernel unpacks a few rows at a time once and runs them against a chunk of tokens prepared once (the chunk sized
 * to stay in L2). Threads split the rows: each output element is one thread's, summed in one order whatever the
 * thread count. Types and CPUs without such a kernel keep ggml's mul_mat.
 */
#ifndef TS_ROWS_MATMUL_H
#define TS_ROWS_MATMUL_H

#include "ggml.h"
#include "turbosparse.h"

#include <stddef.h>
#include <stdint.h>

#define TS_ROWS_MATMUL_SCRATCH (512 * 1024) /* bytes of scratch per thread (kernels check their n) */

/* out[t * out_stride + i] = row i . x_t for i < n_rows, t < n_tokens: rows of n values row_bytes apart from w, x_t
 * the token's activation in ggml's vec_dot layout (xq_stride apart); scratch: TS_ROWS_MATMUL_SCRATCH bytes. */
typedef void (*ts_rows_matmul_fn)(const void *w, size_t row_bytes, int64_t n_rows, const void *xq, size_t xq_stride,
                                  int64_t n_tokens, int64_t n, float *out, size_t out_stride, void *scratch);

/* The kernel for rows of n values of `type` on this CPU (the most specialised set's), or NULL; split: for rows in the
 * split layout (gate_up_dot.h: ts_gate_up_split). */
ts_rows_matmul_fn ts_rows_matmul_kernel(enum ggml_type type, int64_t n, int split);

/* The kernel of one instruction set for these rows, or NULL (where it has none). Does not ask the CPU. */
ts_rows_matmul_fn ts_rows_matmul_kernel_of(enum ts_kernel_isa isa, enum ggml_type type, int64_t n);
/* The same for rows in the split layout. */
ts_rows_matmul_fn ts_rows_matmul_split_of(enum ts_kernel_isa isa, enum ggml_type type, int64_t n);

/* The instruction set of ts_rows_matmul_kernel's choice, or -1 (none). */
int32_t ts_rows_matmul_isa(enum ggml_type type, int64_t n);

/* Each instruction set's (NULL where it has none for these rows, or is not compiled for this architecture). */
ts_rows_matmul_fn ts_rows_matmul_avx2(enum ggml_type type, int64_t n);
ts_rows_matmul_fn ts_rows_matmul_avx512(enum ggml_type type, int64_t n);
ts_rows_matmul_fn ts_rows_matmul_avx512_split(enum ggml_type type, int64_t n); /* rows in the split layout */
ts_rows_matmul_fn ts_rows_matmul_avx2_split(enum ggml_type type, int64_t n);   /* rows in the split layout */

/* w . x over the prompt's tokens x [n, T] F32: [w->ne[1], T] F32, or NULL where no kernel takes w's rows (the caller
 * multiplies with ggml_mul_mat). w in ggml's plain layout, or split where `split` (a kernel then always takes it);
 * n_threads: the threads the graph runs on. */
struct ggml_tensor *ts_rows_matmul(struct ggml_context *ctx0, struct ggml_tensor *w, struct ggml_tensor *x,
                                   int32_t n_threads, int split);

/* The experts' version for mixture-of-experts prompts: w [n, n_rows, n_expert] (its layout as for ts_rows_matmul),
 * x [n, T] F32, ids [k, T] I32 (the chosen experts) -> [n_rows, k, T] F32, slot (s, t) = expert ids[s, t]'s rows . x_t
 * (what ggml_mul_mat_id computes); NULL where no kernel takes w's rows; split as for ts_rows_matmul. */
struct ggml_tensor *ts_rows_matmul_id(struct ggml_context *ctx0, struct ggml_tensor *w, struct ggml_tensor *x,
                                      struct ggml_tensor *ids, int32_t n_threads, int split);

/* A layer whose gate and up rows lie side by side (model.h: ffn_gate_up [n, 2 n_ff(, n_expert)]) is multiplied in one
 * pass over their memory, as one matrix (two passes with a stride of two rows would each drag the other's rows in);
 * y = that product [2 n_ff, T] or [2 n_ff, k, T], its entries in pairs (gate_j, up_j). *gate and *up: its even and
 * odd entries, [n_ff, T] or [n_ff, k, T], contiguous. */
void ts_unpair_gate_up(struct ggml_context *ctx0, struct ggml_tensor *y, struct ggml_tensor **gate,
                       struct ggml_tensor **up);

#endif
