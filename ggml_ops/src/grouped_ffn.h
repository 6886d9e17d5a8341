/*
 * The grouped sparse FFN: neuron-group sparsity in standard ggml ops only, so every ggml backend runs it (CPU,
 * Metal, CUDA, Vulkan), as llama.cpp runs MoE experts. The FFN's n_ff neurons form n_ff / G groups of G
 * consecutive neurons (the converter orders neurons so that co-activated ones share a group); per token
 *
 *   score = pred_groups . relu(fc1 . h)            [n_groups, T]  group heads (fitted, or fc2 rows summed)
 *   ids   = top_k(score, k)                         [k, T]         k per layer, from the file
 *   a_g   = act(gate_g . x, up_g . x)               [G, k, T]      mul_mat_id over gate/up viewed [n_embd, G, n_groups]
 *   out   = down . scatter(a)                       [n_embd, T]    a_g set in group g's place among zeros (set_rows),
 *                                                                   then ggml's dense down
 *
 * The down reads every column: a chosen group's slice of down is a dot product of G = one quant block per output
 * row, which GPU kernels run far below bandwidth (NVIDIA H200, Mistral-7B shape, 10 % of groups: mul_mat_id over
 * per-group slices cost 4-5x the whole dense down; at 30 % decoding ran at half the speed).
 * h is the residual before the FFN norm, x = norm(h). The chosen groups' ids stay readable after the computation
 * (ts_grouped_count) so the context counts the rows read.
 */
#ifndef TS_GROUPED_FFN_H
#define TS_GROUPED_FFN_H

#include "model.h"

/* The grouped FFN of layer il reading top_k groups; *ids receives the chosen groups' I32 [top_k, T] tensor. */
struct ggml_tensor *ts_grouped_ffn(struct ggml_context *ctx0, const ts_model *m, int il, struct ggml_tensor *h,
                                   struct ggml_tensor *x, int32_t top_k, struct ggml_tensor **ids);

/* Adds what one evaluation read to stats: per token top_k groups of G rows; n_union the groups any token chose. */
void ts_grouped_count(const struct ggml_tensor *ids, int32_t group_size, int32_t n_groups, ts_layer_stats *stats);

#endif
