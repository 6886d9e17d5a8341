/*
 * The sparse gate/up node's inner loop for Q4_0 weights: the dot products of one neuron's gate row and up
 * row with the token's Q8_0 activation, both at once, so the activation is read once for the pair.
 *
 * ggml's own vec_dot handles one row and one 32-block at a time; with AVX-512 VNNI this kernel takes two
 * blocks per instruction against an activation prepared once per token. Where the CPU or the types do not
 * fit, the caller uses ggml's vec_dot (ts_gate_up_dot_supported says which).
 */
#ifndef TS_GATE_UP_DOT_H
#define TS_GATE_UP_DOT_H

#include "ggml.h"

#include <stddef.h>
#include <stdint.h>

#define TS_GATE_UP_MAX_EMBD 16384 /* largest row the fused kernel takes */
#define TS_GATE_UP_PAIR_BYTES 192 /* prepared bytes per 64 values */
#define TS_GATE_UP_PREPARED_MAX (TS_GATE_UP_MAX_EMBD / 64 * TS_GATE_UP_PAIR_BYTES)

/* 1 when gate and up of these types over rows of n values run the fused kernel. */
int ts_gate_up_dot_supported(enum ggml_type gate, enum ggml_type up, int64_t n);

/* Prepares a Q8_0 activation row of n values (xq) into `prepared` (n / 64 * TS_GATE_UP_PAIR_BYTES bytes, 64-aligned). */
void ts_gate_up_prepare(const void *xq, int64_t n, void *prepared);

/* *g = gate_row . x and *u = up_row . x for Q4_0 rows of n values against the prepared activation. */
void ts_gate_up_dot(const void *gate_row, const void *up_row, const void *prepared, int64_t n, float *g, float *u);

#endif
