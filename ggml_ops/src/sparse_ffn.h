/*
 * The sparse FFN as ggml graph nodes (custom ops on ggml's CPU threads):
 *
 *   xq   = quantize(x)                         activation in the gate/up vec_dot type, once per token
 *   act  = sparse_act(select, xq, gate, up)    a_j = act(gate_j . x, up_j . x) for selected neurons j, else 0
 *            select = predictor logits (logit_j >= threshold)  or  dense gate values (exact mode:
 *            g(gate_j) != 0 and |g(gate_j)| s_j >= gate_threshold, g = relu or silu as the FFN's activation,
 *            s_j an optional per-neuron scale); a_j is zeroed too where |a_j| r_j < act_threshold (r_j likewise)
 *   out  = sparse_down(act, down_t)            sum over non-zero a_j of a_j * down_t[j, :]
 *          or down . count(act)                files with only the standard down matrix (SwiGLU): ggml's dense
 *                                              down over the sparse activation, count recording the stats
 *
 * There is no barrier inside a custom op, so each phase is its own node. Threads split neurons (act), the non-zero
 * rows (down of one token: a partial sum per thread, added up in order by one more node) or hidden-dimension blocks
 * (down of a batch): no two threads ever write the same output element, and the results are the same for a thread
 * count, and differ between thread counts only in float summation order.
 */
#ifndef TS_SPARSE_FFN_H
#define TS_SPARSE_FFN_H

#include "ggml.h"
#include "turbosparse.h"

#include <stdint.h>

/* ReGLU and dReLU gate with relu: a neuron whose gate is not positive is exactly 0. SwiGLU's silu and GEGLU's gelu
 * are small but not 0 there (exact mode skips them only under calibrated thresholds). */
static inline int ts_ffn_act_relu_gated(int32_t act) {
    return act == TS_FFN_REGLU || act == TS_FFN_DRELU;
}

/* A node's wall-clock span while node timing is on: thread ith writes only its own slots, thread 0 also the count;
 * the context adds the span to the layer's stats once the graph has run (ts_node_span_take). Threads past
 * TS_TIMED_THREADS are not timed. */
#define TS_TIMED_THREADS 64
typedef struct ts_node_span {
    int64_t start_us[TS_TIMED_THREADS], end_us[TS_TIMED_THREADS];
    int32_t n_threads; /* slots written since the last take (0: the node has not run) */
} ts_node_span;

/* The span's first start to last end in microseconds (0 where the node has not run), and the span cleared. */
uint64_t ts_node_span_take(ts_node_span *span);

/* What one layer's sparse FFN nodes need at compute time (lives in the context, one per layer). */
typedef struct ts_sparse_layer {
    int32_t ffn_act;        /* enum ts_ffn_act */
    const ggml_fp16_t *gelu_f16; /* GEGLU: the model's GELU of every F16 value (model.h) */
    int32_t select_exact;   /* 1: select by the dense gate; 0: by predictor logit >= threshold */
    int32_t gate_split, up_split; /* the gate's (up's) rows in the split layout (model.h), which picks their kernel */
    float threshold;        /* predictor logit threshold */
    float gate_threshold;   /* exact selection: |g(gate_j)| gate_scale[j] >= gate_threshold (and g(gate_j) != 0) */
    float act_threshold;    /* a_j kept (its down row read) when |a_j| * act_scale[j] >= act_threshold */
    const float *gate_scale; /* [n_ff] per-neuron scale of |g(gate_j)| in exact selection, or NULL (1) */
    const float *act_scale;  /* [n_ff] per-neuron scale of |a_j|, or NULL (1) */
    int32_t measure_recall; /* predictor mode: also compute every neuron to count what it missed */
    const float *gate_bias; /* [n_ff] added to gate_j . x (predictor mode; exact mode's select has it), or NULL */
    const float *up_bias;   /* [n_ff] added to up_j . x, or NULL */
    int32_t idle;           /* an expert no token of this batch chose (set by moe_ffn.c's planes node for the batch's
                             * per-expert nodes): the act node does nothing and the down node writes zeros */
    int32_t time_nodes;     /* node timing (ts_context_set_node_timing): the act and counted down nodes fill */
    ts_node_span act_span, down_span; /* ... act_span and down_span */
    ts_layer_stats stats;   /* counters accumulated by thread 0 of the down (or count) node; act_us and down_us
                             * added by the context from the spans after the graph has run */
} ts_sparse_layer;

/* x [n_embd, T] F32 -> [row_bytes(vec_dot_type of `weight`), T] I8 rows of quantized activations */
struct ggml_tensor *ts_sparse_quantize(struct ggml_context *ctx0, struct ggml_tensor *x, const struct ggml_tensor *weight);

/* x quantized for the up rows (returned) and for the gate rows (*xq_gate: the same tensor where both types dot with
 * the same quantization; NULL where gate is NULL, exact mode, whose gate is the select) - ts_sparse_act's inputs. */
struct ggml_tensor *ts_sparse_quantize_gate_up(struct ggml_context *ctx0, struct ggml_tensor *x,
                                               const struct ggml_tensor *gate, const struct ggml_tensor *up,
                                               struct ggml_tensor **xq_gate);

/* Counters the act node keeps per thread (one row of ts_sparse_activation.counters each), summed into the layer's
 * stats by the down (or count) node. */
enum ts_act_counter {
    TS_COUNT_COMPUTED,    /* neurons selected and computed (ts_layer_stats.n_computed) */
    TS_COUNT_TRUE_ACTIVE, /* recall measurement: neurons non-zero under full computation */
    TS_COUNT_TRUE_FOUND,  /* ... of which the selection kept */
    TS_COUNT_UNION,       /* neurons selected by at least one token of the batch */
    TS_COUNT_NONZERO,     /* neurons with a non-zero activation (ts_layer_stats.n_nonzero, for the count node) */
    TS_N_ACT_COUNTERS
};

/* The act node's results: the activations, and its per-thread counters in a tensor of their own. */
typedef struct ts_sparse_activation {
    struct ggml_tensor *act;      /* [n_ff, T] F32 (the expert nodes: [n_ff, k], one row per chosen expert) */
    struct ggml_tensor *counters; /* I32 [TS_N_ACT_COUNTERS, n_threads]: row i written by thread i of the act node
                                   * (the expert nodes: n_threads * k rows, row s * n_threads + i) */
} ts_sparse_activation;

/*
 * The selected neurons' activations. gate is NULL in exact mode (select holds the dense gate values then).
 * n_threads: the threads the graph runs on (sizes the counters).
 */
ts_sparse_activation ts_sparse_act(struct ggml_context *ctx0, ts_sparse_layer *layer, struct ggml_tensor *select,
                                   struct ggml_tensor *xq_gate, struct ggml_tensor *xq_up, struct ggml_tensor *gate,
                                   struct ggml_tensor *up, int32_t n_threads);

/* Whether the down node adds its work to the layer's stats. */
enum ts_down_stats {
    TS_DOWN_UNCOUNTED, /* not at all (prefill) */
    TS_DOWN_COUNTED    /* tokens, rows read, and the act node's counters (a dense activation: every neuron computed) */
};

/*
 * sum_j act[j, t] * down_t[j, :] over the non-zero act[j, t]: [n_embd, T] F32. down is down_t [n_embd, n_ff].
 * act [n_ff, T] is ts_sparse_act's output with its counters, or any dense activation (counters NULL). n_threads
 * sizes the per-thread scratch. A batch splits the columns between the threads; one token on several threads splits
 * the rows, each thread summing its share into a partial sum, and the result is their sum: the same for a thread
 * count, within rounding of another's.
 */
struct ggml_tensor *ts_sparse_down(struct ggml_context *ctx0, ts_sparse_layer *layer, struct ggml_tensor *act,
                                   struct ggml_tensor *counters, struct ggml_tensor *down, int64_t n_embd,
                                   enum ts_down_stats stats, int32_t n_threads);

/*
 * One token through the k experts it chose (mixture-of-experts decoding): one act node and one down node for all k,
 * then one weighted sum. (A batch runs ts_sparse_act and ts_sparse_down once per expert, chosen or not; for one token
 * the idle experts' nodes - memsets, sums of zeros, barrier waits - cost 2-6 % of a Mixtral token.) experts: the
 * layer's per-expert states, indexed by expert; ids [k, 1] I32 the chosen experts, weights [k, 1] F32 their router
 * weights; select [n_ff, k] their selection values (slot order); gate (NULL in exact mode), up and down (transposed)
 * the stacked matrices [ne0, ne1, n_expert]; n_threads: the threads the graph runs on (sizes counters and partial
 * sums). The act is [n_ff, k]; the output [n_embd, 1] is sum_s weights[s] * down_{ids[s]}(act[:, s]), added in
 * expert order: bit for bit what ts_sparse_act and ts_sparse_down once per expert give, weighted (ggml_mul) and added
 * (ggml_add) in that order (sparse_ffn.c is compiled without FMA contraction for that).
 */
ts_sparse_activation ts_sparse_act_experts(struct ggml_context *ctx0, ts_sparse_layer *experts,
                                           struct ggml_tensor *select, struct ggml_tensor *ids,
                                           struct ggml_tensor *xq_gate, struct ggml_tensor *xq_up,
                                           struct ggml_tensor *gate, struct ggml_tensor *up, int32_t n_threads);
struct ggml_tensor *ts_sparse_down_experts(struct ggml_context *ctx0, ts_sparse_layer *experts,
                                           ts_sparse_activation a, struct ggml_tensor *ids,
                                           struct ggml_tensor *weights, struct ggml_tensor *down, int64_t n_embd,
                                           int32_t n_threads);

/*
 * a.act itself (in place), once the layer's stats have recorded a's counters: the input of a dense down matrix,
 * which reads every row whatever the activation (files without a transposed down; the column layouts that would
 * let it skip rows were no faster than ggml's dense kernel, see the README).
 */
struct ggml_tensor *ts_sparse_count(struct ggml_context *ctx0, ts_sparse_layer *layer, ts_sparse_activation a);

#endif
