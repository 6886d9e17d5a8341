/*
 * The mixture-of-experts FFN (Mixtral) as ggml graph nodes:
 *
 *   p   = softmax(router @ z)                    [n_expert, T], z = norm(ffn_inp)
 *   ids = top-k(p), w = p[ids] / sum(p[ids])     [k, T]: the chosen experts and their renormalised weights
 *   out = sum_s w[s] * ffn_{ids[s]}(z)           ffn_e(z) = down_e @ act(gate_e @ z, up_e @ z)
 *
 * Dense (prefills, sparse = off): ggml_mul_mat_id over the stacked experts, node for node as llama.cpp builds it
 * (so dense logits match llama.cpp's); a file with only transposed downs adds the chosen experts' down rows of the
 * non-zero activations instead (moe_down_t).
 *
 * Sparse decoding uses the dense FFN's sparse kernels (sparse_ffn.h), so every quant type of the dense FFN serves the
 * experts too. Which experts a token uses is known only at run time, while the graph is built once; the selection
 * values (predictor logits, or the gate in exact mode) are computed for the chosen experts only (ggml_mul_mat_id).
 * One token (decoding): one act node and one down node run the k chosen experts, reading the expert of each slot
 * from ids at run time, and one node adds their outputs, weighted (ts_sparse_act_experts, ts_sparse_down_experts).
 * A batch: the sparse nodes run once per expert on 2-D views of the stacked matrices, the selection values scattered
 * into one plane per expert [n_ff, T], filled with -inf where the expert was not chosen - a value that selects no
 * neuron; an expert no token chose reads no weight row: the planes node marks it idle, and its act node returns at
 * once, its down node only writes zeros. Every node splits its work by ith/nth with no two threads writing one
 * element (the sparse nodes' contract), so results are deterministic for a thread count. Expert outputs are weighted
 * and added in expert order.
 */
#ifndef TS_MOE_FFN_H
#define TS_MOE_FFN_H

#include "context.h"

/* Counted by the routing nodes (thread 0), per layer and expert. */
struct ts_expert_counts {
    uint64_t n_routed;  /* tokens routed to the expert, every evaluation */
    uint64_t n_decoded; /* ... through the sparse nodes */
};

/* Per-expert sparse state of a mixture-of-experts model's context (nothing for a dense FFN). */
int ts_moe_init(ts_context *c, char *err, size_t err_size);
void ts_moe_free(ts_context *c);
void ts_moe_reset_stats(ts_context *c);
void ts_moe_set_threshold(ts_context *c, float threshold);

/* out [n_embd, T] = the MoE FFN of layer il on cur = norm(ffn_inp) [n_embd, T], dense or sparse. */
struct ggml_tensor *ts_moe_ffn(ts_context *ctx, struct ggml_context *ctx0, int il, struct ggml_tensor *ffn_inp,
                               struct ggml_tensor *cur, int32_t dense);

#endif
