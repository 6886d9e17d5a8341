/* A decoding context: KV cache, compute graph allocator and CPU backend for one sequence. */
#ifndef TS_CONTEXT_H
#define TS_CONTEXT_H

#include "ggml-alloc.h"
#include "ggml-backend.h"
#include "model.h"
#include "sparse_ffn.h"

#define TS_KV_PAD 256 /* attention spans whole multiples of 256 cells, as in llama.cpp (same float sums) */

struct ts_context {
    ts_model *model;
    ts_context_params params;
    int32_t n_ctx;   /* tokens the context accepts */
    int32_t n_cells; /* KV cache cells: n_ctx rounded up to TS_KV_PAD, as llama.cpp allocates */
    int32_t n_past;
    float threshold; /* predictor threshold in use */

    ggml_backend_t backend;
    struct ggml_context *ctx_kv;
    ggml_backend_buffer_t buf_kv;
    struct ggml_tensor **k_cache; /* per layer [n_embd_kv, n_ctx] (F16 or F32) */
    struct ggml_tensor **v_cache; /* per layer [n_ctx, n_embd_kv], stored transposed */

    ts_sparse_layer *sparse; /* per layer: what the sparse FFN nodes read and count */

    ggml_gallocr_t galloc;
    void *graph_meta; /* memory for graph/tensor metadata (no data) */
    size_t graph_meta_size;
    int32_t graph_max_nodes;
};

/* One layer's dense FFN values kept for ts_context_eval_trace: gate and up before the activation, [n_ff, T]. */
typedef struct ts_ffn_trace {
    struct ggml_tensor *gate;
    struct ggml_tensor *up;
} ts_ffn_trace;

/* The inputs and outputs of one forward graph. */
typedef struct ts_graph {
    struct ggml_cgraph *gf;
    struct ggml_tensor *tokens;  /* I32 [n_tokens] */
    struct ggml_tensor *pos;     /* I32 [n_tokens] */
    struct ggml_tensor *kq_mask; /* F32 [n_kv, n_tokens] */
    struct ggml_tensor *out_ids; /* I32 [n_outputs], NULL when every row is an output */
    struct ggml_tensor *logits;  /* F32 [n_vocab, n_outputs] */
    ts_ffn_trace *trace;         /* per layer, filled by the build when not NULL (every FFN then runs dense) */
    int32_t n_kv;
} ts_graph;

/* Builds the forward graph of n_tokens tokens at positions n_past.. into ctx0 (no_alloc). */
int ts_graph_build(ts_context *ctx, struct ggml_context *ctx0, int32_t n_tokens, int32_t n_outputs,
                   int32_t dense_ffn, ts_graph *g);

/* The graph of layer il's FFN block alone: *out = ffn(rms_norm(*h)), *h an input [n_embd, n_tokens]. */
struct ggml_cgraph *ts_graph_build_ffn(ts_context *ctx, struct ggml_context *ctx0, int il, int32_t n_tokens,
                                       int32_t dense_ffn, struct ggml_tensor **h, struct ggml_tensor **out);

#endif
