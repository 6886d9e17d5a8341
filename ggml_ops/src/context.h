/* A decoding context: KV caches of n_seq sequences, compute graph allocator and the model's device backend. */
#ifndef TS_CONTEXT_H
#define TS_CONTEXT_H

#include "ggml-alloc.h"
#include "ggml-backend.h"
#include "model.h"
#include "sparse_ffn.h"

#define TS_KV_PAD 256 /* the KV cache holds whole multiples of 256 cells per sequence, as llama.cpp allocates */

/* The tokens of one sequence inside a graph: batch rows first .. first + n_tokens - 1, in order. */
typedef struct ts_group {
    int32_t seq;
    int32_t first;
    int32_t n_tokens;
    int32_t n_kv;                /* cache cells its attention spans: a multiple of ts_context.kv_span_step (with flash
                                    attention of TS_KV_PAD), or all (context.c: kv_span) */
    /* the sliding-window layers' span: cells swa_first .. swa_first + n_kv_swa - 1 of the sequence's in their cache
       (from the step-aligned cell before the first token's window: window_cache.h, ts_window_start) */
    int32_t swa_first;
    int32_t n_kv_swa;
    struct ggml_tensor *kq_mask;     /* F32 (F16 with flash attention) [n_kv, n_tokens], or NULL where every layer slides */
    struct ggml_tensor *kq_mask_swa; /* the same [n_kv_swa, n_tokens] within the window, or NULL where no layer slides */
} ts_group;

/* One layer's dense FFN values kept for ts_context_eval_trace: gate and up before the activation, [n_ff, T]. */
typedef struct ts_ffn_trace {
    struct ggml_tensor *gate;
    struct ggml_tensor *up;
} ts_ffn_trace;

/* The inputs and outputs of one forward graph, and the layout it was built for. */
typedef struct ts_graph {
    struct ggml_cgraph *gf;
    struct ggml_tensor *tokens;  /* I32 [n_tokens] */
    struct ggml_tensor *pos;     /* I32 [n_tokens], or NULL where no layer ropes */
    struct ggml_tensor *attn_temp; /* F32 [1, 1, n_tokens]: each token's query temperature (model.h: attn_temp_scale),
                                      or NULL */
    struct ggml_tensor *k_rows;  /* I64 [n_tokens]: the K cache row each token's keys go to (and its values, with flash
                                    attention) */
    struct ggml_tensor *v_cells; /* I64 [n_embd_kv * n_tokens]: the V cache element of each value (V is transposed), or
                                    NULL with flash attention */
    struct ggml_tensor *k_rows_swa;  /* the same in the sliding-window layers' caches: k_rows and v_cells themselves */
    struct ggml_tensor *v_cells_swa; /* where those layers hold as many cells as the others */
    struct ggml_tensor *out_ids; /* I32 [n_outputs], NULL when every row is an output */
    struct ggml_tensor *out;     /* F32 [n_vocab, n_outputs] logits, or with embeddings [n_embd, n_outputs] */
    int32_t n_tokens;
    int32_t n_outputs;
    int32_t dense_ffn;
    int32_t n_groups;
    ts_group *groups; /* n_seq entries, n_groups used */
    ts_ffn_trace *trace; /* per layer, filled by the build when not NULL (every FFN then runs dense); set only while
                            ts_context_eval_trace runs, which drops the graph after */
    int32_t embeddings;  /* the output is the final norm's (llama.cpp's embeddings), not logits; set only while
                            ts_context_embed_seq runs, which drops the graph after */
} ts_graph;

struct ts_context {
    ts_model *model;
    ts_context_params params;
    int32_t n_ctx;   /* tokens each sequence accepts */
    int32_t n_cells; /* KV cache cells per sequence: n_ctx rounded up to TS_KV_PAD, as llama.cpp allocates */
    /* KV cache cells per sequence of the sliding-window layers: a window's worth (window_cache.h), or n_cells where
       they keep every position (swa_full, no layer slides, or a window as long as the context) */
    int32_t n_cells_swa;
    int32_t n_cells_ckpt; /* ... of their checkpoints (0 with n_cells_swa == n_cells) */
    int32_t *swa_base;    /* per sequence: the position the sliding-window layers' cell 0 holds (0 with n_cells) */
    int32_t *ckpt_pos;    /* per sequence: where its checkpoint was saved (tokens then held), 0 for none */
    int32_t *ckpt_start;  /* ... and the position its cell 0 holds */
    int32_t kv_span_step; /* attention spans whole multiples of this many cells (context.c: kv_span_step) */
    struct ggml_tensor *rope_factors; /* the rope's frequency factors: the model's rope_freqs, rope_long or
                                         rope_short, or NULL */
    int32_t n_seq;
    int32_t *n_past; /* per sequence: tokens cached */
    float threshold; /* predictor threshold in use */

    ggml_backend_t backend;     /* the model's device */
    ggml_backend_t backend_cpu; /* a model on another device: the CPU backend, for ops that device lacks */
    /* a model on another device: splits graphs between backend and backend_cpu and allocates them; it keeps graph
       inputs in CPU memory, so they are written in place on every device. NULL on the CPU (galloc allocates). */
    ggml_backend_sched_t sched;
    struct ggml_context *ctx_kv;
    ggml_backend_buffer_t buf_kv;
    /* per layer, of L = ts_layer_cells cells per sequence; sequence s owns cells [s * L, (s + 1) * L) */
    struct ggml_tensor **k_cache; /* [n_embd_kv, n_seq * L] of params.type_k */
    struct ggml_tensor **v_cache; /* of params.type_v: [n_seq * L, n_embd_kv], stored transposed; with flash attention
                                     [n_embd_kv, n_seq * L] */
    struct ggml_tensor **ckpt_k, **ckpt_v; /* the same of n_cells_ckpt cells for sliding-window layers, else NULL */
    /* quantized caches, as llama.cpp's: the orthonormal Walsh-Hadamard matrices (F32 [n, n]) that queries and keys
       (rot_k), and values and the attention's output (rot_v), are rotated by in blocks of n, spreading outliers
       over the quantized blocks; NULL where the cache is not quantized or heads are no multiple of 64 */
    struct ggml_tensor *rot_k, *rot_v;

    ts_sparse_layer *sparse; /* per layer: what the sparse FFN nodes read and count */
    float *gate_scale, *act_scale; /* [n_layer * n_ff] set by ts_context_set_ffn_scales, else NULL (the layers then
                                      read the model's) */
    ts_sparse_layer *expert_sparse;         /* mixture of experts: the same per layer and expert (layer-major), or NULL */
    struct ts_expert_counts *expert_counts; /* mixture of experts: tokens routed per layer and expert (moe_ffn.h) */
    int32_t *group_top_k;    /* per layer: groups the grouped route reads per token */
    struct ggml_tensor **group_ids; /* per layer: the cached graph's chosen groups (grouped route), else NULL */

    ggml_gallocr_t galloc; /* the CPU's graph allocator (NULL with sched) */
    void *graph_meta; /* memory for graph/tensor metadata (no data) */
    size_t graph_meta_size;
    int32_t graph_max_nodes;
    /* The last forward graph, allocated and ready: a next evaluation of the same layout (decoding one token
       per step, mostly) only refills its inputs. Inputs carry every position, so the graph is position-free. */
    struct ggml_context *graph_ctx; /* NULL when there is none */
    ts_graph graph;
};

/* KV cache cells per sequence of layer il */
static inline int32_t ts_layer_cells(const ts_context *ctx, int il) {
    return ctx->model->layers[il].swa ? ctx->n_cells_swa : ctx->n_cells;
}

/* 0 where seq is one of the context's sequences, else TS_ERR_ARGUMENT with err filled */
int ts_context_check_seq(const ts_context *ctx, int32_t seq, char *err, size_t err_size);

/* Builds the forward graph of g->n_tokens tokens laid out in g->groups into ctx0 (no_alloc). */
void ts_graph_build(ts_context *ctx, struct ggml_context *ctx0, ts_graph *g);

/* act(gate, up) as the FFN activation `act` (enum ts_ffn_act) says, element-wise on any shape. */
struct ggml_tensor *ts_gated_activation(struct ggml_context *ctx0, int32_t act, struct ggml_tensor *gate,
                                        struct ggml_tensor *up);

/* y, the products of layer l's transposed down (or of its experts' ones, summed or not: one scale serves every
 * expert), times its per-output scale where the file has one (ffn_down_t_scale); else y itself. */
struct ggml_tensor *ts_down_t_scaled(struct ggml_context *ctx0, const ts_layer *l, struct ggml_tensor *y);

/* The graph of layer il's FFN block alone: *out = ffn(rms_norm(*h)), *h an input [n_embd, n_tokens]. */
struct ggml_cgraph *ts_graph_build_ffn(ts_context *ctx, struct ggml_context *ctx0, int il, int32_t n_tokens,
                                       int32_t dense_ffn, struct ggml_tensor **h, struct ggml_tensor **out);

#endif
