/*
 * A whole matrix against a few tokens through the decoding kernels (gate_up_dot.h): the predictor's matrices, in a
 * model placed for predictor mode (model.c: predictor_role).
 *
 *   out[t][i] = w[i] . x_t        [n_rows, T] F32, x_t quantized as ggml quantizes it for w (its vec_dot type)
 *
 * A predictor's logits meet a threshold, where a rounding difference flips a neuron and moves the output by its whole
 * activation; so every token's logits come out of the same kernel whatever the number of tokens (a token decoded
 * alone and in a batch of sequences select the same neurons, tests/test_batch_decode.py), unlike the prompt kernels
 * (rows_matmul.h), which sum in another order. Threads split the rows; a chunk of rows is run against each of a block
 * of tokens while it lies in the cache, so a batch reads the matrix once per block of tokens.
 *
 * For one token these kernels read the predictor faster than ggml's repacked GEMV: a Mistral-7B layer's (rank 1024,
 * Q4_0) at 25 against 19 GB/s, one thread, AMD EPYC Zen 4.
 */
#ifndef TS_ROWS_DOT_H
#define TS_ROWS_DOT_H

#include "ggml.h"

#include <stdint.h>

/* w . x for the tokens x [n, T] F32: [w->ne[1], T] F32, or NULL where no decoding kernel of this CPU (other than
 * the generic one) takes w's rows (the caller multiplies with ggml_mul_mat). w in ggml's plain layout, or the split
 * one where `split`; n_threads: the threads the graph runs on. */
struct ggml_tensor *ts_rows_dot(struct ggml_context *ctx0, struct ggml_tensor *w, struct ggml_tensor *x,
                                int32_t n_threads, int split);

#endif
