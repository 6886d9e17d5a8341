/*
 * The sparse gate/up node's inner loop: dot products of gathered weight rows with one token's activation.
 *
 *   out[i] = rows[i] . x        for i in [0, n_rows), rows of n values of one ggml type
 *
 * x arrives quantized as ggml's dot products want it (the type's vec_dot_type: Q8_0 for Q4_0 and Q8_0, Q8_1
 * for Q4_1, Q8_K for the K-quants), once per token. A kernel first prepares it into its own layout, then takes
 * the rows several at a time, so that each activation block is loaded once for all of them, and prefetches the
 * rows that follow (the rows of active neurons are scattered: the hardware prefetcher cannot guess them).
 *
 * Every type has the generic kernel (ggml's vec_dot, row by row, the reference); ts_dot_kernel_best picks the
 * fastest kernel this CPU runs. Kernels for an instruction set live in gate_up_dot_<isa>.c.
 */
#ifndef TS_GATE_UP_DOT_H
#define TS_GATE_UP_DOT_H

#include "ggml.h"
#include "turbosparse.h"

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define TS_DOT_MAX_N 16384                 /* longest row a fast kernel takes (longer: the generic kernel) */
#define TS_DOT_PREPARED_MAX (24 * 1024 + 64) /* bytes of a prepared activation, at most (kernels check their n) */

/* prepare: the activation xq (n values in the vec_dot type) in the kernel's layout; returns buf (at least
 *          TS_DOT_PREPARED_MAX bytes, 64-aligned) or xq itself when the kernel reads ggml's layout.
 * dot_rows: out[i] = rows[i] . x for every i < n_rows. */
typedef const void *(*ts_dot_prepare_fn)(const void *xq, int64_t n, void *buf);
typedef void (*ts_dot_rows_fn)(enum ggml_type type, const void *const *rows, int64_t n_rows, const void *prepared,
                               int64_t n, float *out);

typedef struct ts_dot_kernel {
    enum ts_kernel_isa isa;
    ts_dot_prepare_fn prepare;
    ts_dot_rows_fn dot_rows;
} ts_dot_kernel;

/* A Q8_0 activation as the x86 kernels prepare it: x int8[n] | d float[n / 32] (block scales) | corr int32[n / 32]
 * (-8 * the block's sum of x, for Q4_0's offset); how x is ordered within a block or pair of blocks is the kernel's. */
typedef struct {
    const int8_t *x;
    const float *d;
    const int32_t *corr;
} ts_q8_0_view;

static inline ts_q8_0_view ts_view_q8_0(const void *prepared, int64_t n) {
    const int8_t *x = prepared;
    const float *d = (const float *)(x + n);
    return (ts_q8_0_view){x, d, (const int32_t *)(d + n / 32)};
}

/* A Q8_K activation as the Q4_K kernels prepare it: x int8[n] (each super-block's 8 sub-blocks of 32 in the kernel's
 * order) | d float[n / 256] | xsum int16[n / 32] (each sub-block's sum, in sub-block order, for Q4_K's mins). */
typedef struct {
    const int8_t *x;
    const float *d;
    const int16_t *xsum;
} ts_q8_k_view;

static inline ts_q8_k_view ts_view_q8_k(const void *prepared, int64_t n) {
    const int8_t *x = prepared;
    const float *d = (const float *)(x + n);
    return (ts_q8_k_view){x, d, (const int16_t *)(d + n / 256)};
}

enum { TS_Q8_K_BYTES = 292 }; /* ggml's Q8_K block: float d, int8 qs[256], int16 bsums[16] */

/* ggml's Q8_K activation xq (per 256 values: float d, 256 int8, int16 sums of 16 values) in that layout, position j
 * of each super-block holding its sub-block order[j] (order NULL: sub-blocks in order) */
static inline const void *ts_prepare_q8_k(const void *xq, int64_t n, void *buf, const int order[8]) {
    const uint8_t *src = xq;
    int8_t *x = buf;
    float *d = (float *)(x + n);
    int16_t *xsum = (int16_t *)(d + n / 256);
    for (int64_t i = 0; i < n / 256; i++) {
        const uint8_t *blk = src + i * TS_Q8_K_BYTES;
        int16_t bsums[16];
        memcpy(&d[i], blk, sizeof(float));
        memcpy(bsums, blk + 260, sizeof(bsums));
        for (int j = 0; j < 8; j++) {
            memcpy(x + 256 * i + 32 * j, blk + 4 + 32 * (order != NULL ? order[j] : j), 32);
            xsum[8 * i + j] = (int16_t)(bsums[2 * j] + bsums[2 * j + 1]);
        }
    }
    return buf;
}

/* The fastest kernel this CPU runs for rows of n values of `type` (the generic one at least). */
ts_dot_kernel ts_dot_kernel_best(enum ggml_type type, int64_t n);

/*
 * Whether a model holds gate and up rows of n values of `type` in the split layout (axpy_rows.h: TS_ROWS_SPLIT, made
 * by ts_rows_split) on this CPU, where it copies them into huge-page memory anyway (model.c: allocate_rows; a model
 * too large for that keeps them in the mapping as the file has them): where the CPU has a gate/up kernel and a prompt
 * kernel for such rows (AVX-512 VNNI or AVX2: Q4_0, n a multiple of 64, which read a group's 8 scales at once and
 * two or four blocks' quants per load; Q4_K, whose layout is its own, q4_k_split.h), gate_up_dot_avx512.c and
 * gate_up_dot_avx2.c.
 */
int ts_gate_up_split(enum ggml_type type, int64_t n);

/* The kernel for rows of n values of `type` held in the split layout where `split` (ts_gate_up_split must hold), else
 * ts_dot_kernel_best's. */
ts_dot_kernel ts_dot_kernel_for(enum ggml_type type, int64_t n, int split);

/* The kernel of one instruction set, if it has one for these rows: 1 and *k filled, else 0. Does not ask the CPU. */
int ts_dot_kernel_of(enum ts_kernel_isa isa, enum ggml_type type, int64_t n, ts_dot_kernel *k);
/* The same for rows in the split layout (ts_gate_up_split). */
int ts_dot_kernel_split_of(enum ts_kernel_isa isa, enum ggml_type type, int64_t n, ts_dot_kernel *k);

/* Each instruction set's table (0 where it has no kernel for these rows, or is not compiled for this architecture). */
int ts_dot_kernel_avx2(enum ggml_type type, int64_t n, ts_dot_kernel *k);
int ts_dot_kernel_avx512(enum ggml_type type, int64_t n, ts_dot_kernel *k);
int ts_dot_kernel_avx512_split(enum ggml_type type, int64_t n, ts_dot_kernel *k); /* rows in the split layout */
int ts_dot_kernel_avx2_split(enum ggml_type type, int64_t n, ts_dot_kernel *k);   /* rows in the split layout */
int ts_dot_kernel_neon(enum ggml_type type, int64_t n, ts_dot_kernel *k);
int ts_dot_kernel_neon_dotprod(enum ggml_type type, int64_t n, ts_dot_kernel *k);

#endif
