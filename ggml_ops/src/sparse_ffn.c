#include "sparse_ffn.h"

#include "axpy_rows.h"
#include "gate_up_dot.h"
#include "gelu.h"
#include "neuron_list.h"
#include "row_sums_batch.h"
#include "ggml-cpu.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

static char *row_ptr(const struct ggml_tensor *t, int64_t row) {
    return (char *)t->data + row * t->nb[1];
}

/* ---- quantize: the activation once per token, in the type the weight's dot product wants --------- */

/* userdata carries the target type (the custom op's own op_params hold ggml's call data) */
static void quantize_op(struct ggml_tensor *dst, int ith, int nth, void *userdata) {
    const struct ggml_tensor *x = dst->src[0];
    const enum ggml_type vdt = (enum ggml_type)(intptr_t)userdata;
    const ggml_from_float_t from_float = ggml_get_type_traits_cpu(vdt)->from_float;
    for (int64_t t = ith; t < x->ne[1]; t += nth) {
        const float *src = (const float *)row_ptr(x, t);
        if (vdt == GGML_TYPE_F32) {
            memcpy(row_ptr(dst, t), src, (size_t)x->ne[0] * sizeof(float));
        } else {
            from_float(src, row_ptr(dst, t), x->ne[0]);
        }
    }
}

struct ggml_tensor *ts_sparse_quantize(struct ggml_context *ctx0, struct ggml_tensor *x, const struct ggml_tensor *weight) {
    const enum ggml_type vdt = ggml_get_type_traits_cpu(weight->type)->vec_dot_type;
    struct ggml_tensor *args[1] = {x};
    return ggml_custom_4d(ctx0, GGML_TYPE_I8, (int64_t)ggml_row_size(vdt, x->ne[0]), x->ne[1], 1, 1, args, 1,
                          quantize_op, GGML_N_TASKS_MAX, (void *)(intptr_t)vdt);
}

struct ggml_tensor *ts_sparse_quantize_gate_up(struct ggml_context *ctx0, struct ggml_tensor *x,
                                               const struct ggml_tensor *gate, const struct ggml_tensor *up,
                                               struct ggml_tensor **xq_gate) {
    struct ggml_tensor *xq_up = ts_sparse_quantize(ctx0, x, up);
    *xq_gate = NULL;
    if (gate != NULL) {
        const int same = ggml_get_type_traits_cpu(gate->type)->vec_dot_type ==
                         ggml_get_type_traits_cpu(up->type)->vec_dot_type;
        *xq_gate = same ? xq_up : ts_sparse_quantize(ctx0, x, gate);
    }
    return xq_up;
}

/* ---- act: gate and up rows of the selected neurons only ----------------------------------------- */

/* The gate's activation: silu for SwiGLU, gelu for GEGLU, relu for the ReLU-gated FFNs. */
static float gate_act(const ts_sparse_layer *layer, float g) {
    switch (layer->ffn_act) {
    case TS_FFN_SWIGLU:
        return g / (1.0f + expf(-g));
    case TS_FFN_GEGLU:
        return ts_gelu_lookup(layer->gelu_f16, g);
    default:
        return g > 0.0f ? g : 0.0f;
    }
}

/* The neuron's activation from its gate's activation ag and its up value u. */
static float combine(int32_t act, float ag, float u) {
    if (act == TS_FFN_DRELU) {
        return u > 0.0f ? ag * u : 0.0f;
    }
    return ag * u; /* SwiGLU, GEGLU, ReGLU */
}

/* |v|, times neuron j's scale when the layer has scales (calibrated files: the neuron's weight in the output). */
static float scaled(const float *scale, int64_t j, float v) {
    return scale != NULL ? fabsf(v) * scale[j] : fabsf(v);
}

/* Whether neuron j is computed: exact mode (s = the gate value), g(gate) != 0 and |g(gate)| (scaled) >=
 * gate_threshold (for a ReLU-gated FFN at threshold 0: gate > 0); predictor mode (s = the logit), logit >= threshold. */
static int selected(const ts_sparse_layer *layer, int64_t j, float s) {
    if (!layer->select_exact) {
        return s >= layer->threshold;
    }
    const float ag = gate_act(layer, s);
    return ag != 0.0f && scaled(layer->gate_scale, j, ag) >= layer->gate_threshold;
}

/* Whether the layer's selection is one comparison of each neuron's select value (predictor mode: logit >= threshold;
 * exact mode with a ReLU gate and no gate scales: gate > 0, or gate >= a positive gate threshold), and which; the
 * selection of SwiGLU's silu gate or of scaled gates is left to `selected`. */
static int plain_pick(const ts_sparse_layer *layer, ts_pick *pick) {
    if (!layer->select_exact) {
        *pick = (ts_pick){TS_PICK_AT_LEAST, layer->threshold};
        return 1;
    }
    if (!ts_ffn_act_relu_gated(layer->ffn_act) || layer->gate_scale != NULL) {
        return 0;
    }
    /* relu(s) != 0 and relu(s) >= gate_threshold */
    *pick = layer->gate_threshold <= 0.0f ? (ts_pick){TS_PICK_ABOVE, 0.0f}
                                          : (ts_pick){TS_PICK_AT_LEAST, layer->gate_threshold};
    return 1;
}

/* What reaches down from neuron j: a, or 0 where |a| (scaled) is under the activation threshold. */
static float kept_activation(const ts_sparse_layer *layer, int64_t j, float a) {
    return scaled(layer->act_scale, j, a) >= layer->act_threshold ? a : 0.0f;
}

#define ACT_LIST 256 /* neurons gathered per pass */

/* The gate/up kernels of one token: gate and up rows go through one call where one kernel and one prepared
 * activation serve both (rows interleaved gate, up, gate, up, ...). */
typedef struct {
    const struct ggml_tensor *gate, *up; /* gate NULL in exact mode */
    ts_dot_kernel kg, ku;
    const void *pg, *pu; /* prepared activations */
    int paired;
} act_dots;

/* The kernels for gate (NULL in exact mode) and up rows (held as the layer says) dotted with xq_gate and xq_up. */
static act_dots make_dots(const ts_sparse_layer *layer, const struct ggml_tensor *gate, const struct ggml_tensor *up,
                          const struct ggml_tensor *xq_gate, const struct ggml_tensor *xq_up) {
    act_dots d = {.gate = gate, .up = up, .ku = ts_dot_kernel_for(up->type, up->ne[0], layer->up_split)};
    d.kg = gate == NULL ? d.ku : ts_dot_kernel_for(gate->type, gate->ne[0], layer->gate_split);
    d.paired = gate != NULL && gate->type == up->type && xq_gate == xq_up && layer->gate_split == layer->up_split;
    return d;
}

/* g[k] (predictor mode) and u[k] for the neurons list[0, n), n >= 1 */
static void dot_list(const act_dots *d, const int32_t *list, int n, float *g, float *u) {
    GGML_ASSERT(n >= 1 && n <= ACT_LIST);
    const void *rows[2 * ACT_LIST];
    float dots[2 * ACT_LIST];
    if (d->paired) {
        for (int k = 0; k < n; k++) {
            rows[2 * k] = row_ptr(d->gate, list[k]);
            rows[2 * k + 1] = row_ptr(d->up, list[k]);
        }
        d->ku.dot_rows(d->up->type, rows, 2 * n, d->pu, d->up->ne[0], dots);
        for (int k = 0; k < n; k++) {
            g[k] = dots[2 * k];
            u[k] = dots[2 * k + 1];
        }
        return;
    }
    if (d->gate != NULL) {
        for (int k = 0; k < n; k++) {
            rows[k] = row_ptr(d->gate, list[k]);
        }
        d->kg.dot_rows(d->gate->type, rows, n, d->pg, d->gate->ne[0], g);
    }
    for (int k = 0; k < n; k++) {
        rows[k] = row_ptr(d->up, list[k]);
    }
    d->ku.dot_rows(d->up->type, rows, n, d->pu, d->up->ne[0], u);
}

/* The prepared activations of token t for the gate and up kernels (one serves both where they are paired). */
static void prepare_token(act_dots *d, const struct ggml_tensor *xq_gate, const struct ggml_tensor *xq_up, int64_t t,
                          unsigned char *prepared_gate, unsigned char *prepared_up) {
    d->pu = d->ku.prepare(row_ptr(xq_up, t), d->up->ne[0], prepared_up);
    d->pg = d->gate == NULL || d->paired ? d->pu : d->kg.prepare(row_ptr(xq_gate, t), d->gate->ne[0], prepared_gate);
}

/* Neuron jj's activation from its gate and up dots (g, u; sel_j its select value) into a, and its counts. */
static void finish_neuron(const ts_sparse_layer *layer, int64_t jj, int chosen, float sel_j, float g, float u, float *a,
                          int recall, int32_t *count) {
    /* exact mode: select is the dense gate with its bias */
    const float gk = layer->select_exact ? sel_j : layer->gate_bias != NULL ? g + layer->gate_bias[jj] : g;
    const float ag = gate_act(layer, gk);
    const float uk = layer->up_bias != NULL ? u + layer->up_bias[jj] : u;
    const float v = combine(layer->ffn_act, ag, uk);
    a[jj] = chosen ? kept_activation(layer, jj, v) : 0.0f;
    count[TS_COUNT_COMPUTED] += chosen;
    count[TS_COUNT_NONZERO] += a[jj] != 0.0f;
    count[TS_COUNT_TRUE_ACTIVE] += recall && v != 0.0f;
    count[TS_COUNT_TRUE_FOUND] += recall && v != 0.0f && chosen;
}

/* One token (decoding): each neuron's selection evaluated once, the list gathered by comparison masks where the
 * selection is one comparison (neuron_list.h), else without branches (a branch per neuron on a random 10 %
 * mispredicts often; this loop runs over every neuron of the layer). */
static void act_one_token(const ts_sparse_layer *layer, const act_dots *d, const float *sel, float *a, int64_t j0,
                          int64_t j1, int recall, int32_t *count) {
    memset(a + j0, 0, (size_t)(j1 - j0) * sizeof(float));
    ts_pick pick;
    if (!recall && plain_pick(layer, &pick)) {
        for (int64_t j = j0; j < j1;) {
            int32_t list[ACT_LIST];
            const int n = ts_pick_next(sel, &j, j1, pick, list, ACT_LIST);
            count[TS_COUNT_UNION] += n;
            if (n == 0) {
                continue;
            }
            float g[ACT_LIST], u[ACT_LIST];
            dot_list(d, list, n, g, u);
            for (int k = 0; k < n; k++) {
                finish_neuron(layer, list[k], 1, sel[list[k]], g[k], u[k], a, 0, count);
            }
        }
        return;
    }
    for (int64_t j = j0; j < j1;) {
        int32_t list[ACT_LIST];
        unsigned char chosen[ACT_LIST];
        int n = 0;
        for (; j < j1 && n < ACT_LIST; j++) {
            const int c = selected(layer, j, sel[j]);
            list[n] = (int32_t)j;
            chosen[n] = (unsigned char)c;
            count[TS_COUNT_UNION] += c;
            n += c | recall;
        }
        if (n == 0) {
            continue;
        }
        float g[ACT_LIST], u[ACT_LIST];
        dot_list(d, list, n, g, u);
        for (int k = 0; k < n; k++) {
            finish_neuron(layer, list[k], chosen[k], sel[list[k]], g[k], u[k], a, recall, count);
        }
    }
}

/*
 * src: select [n_ff, T] F32, xq_up, up, counters, then (predictor mode) xq_gate, gate.
 * Neuron-major: the rows of a neuron that any token of the batch selects are read once, then dotted with
 * each token that selected it (a batch reads the union of its tokens' rows).
 */
static void sparse_act(struct ggml_tensor *dst, int ith, int nth, const ts_sparse_layer *layer) {
    if (layer->idle) {
        return;
    }
    const struct ggml_tensor *select = dst->src[0], *xq_up = dst->src[1], *up = dst->src[2], *counters = dst->src[3];
    const struct ggml_tensor *xq_gate = dst->src[4], *gate = dst->src[5];
    const int exact = layer->select_exact;
    const int recall = layer->measure_recall && !exact;
    const int64_t n_ff = up->ne[1], n_tokens = dst->ne[1];
    GGML_ASSERT(ith < counters->ne[1]); /* the graph runs on the n_threads the counters were sized for */
    const int64_t j0 = n_ff * ith / nth, j1 = n_ff * (ith + 1) / nth;
    act_dots d = make_dots(layer, exact ? NULL : gate, up, xq_gate, xq_up);
    _Alignas(64) unsigned char prepared_up[TS_DOT_PREPARED_MAX], prepared_gate[TS_DOT_PREPARED_MAX];
    int32_t count[TS_N_ACT_COUNTERS] = {0};
    if (n_tokens == 1) {
        prepare_token(&d, xq_gate, xq_up, 0, prepared_gate, prepared_up);
        act_one_token(layer, &d, (const float *)select->data, (float *)dst->data, j0, j1, recall, count);
        memcpy(row_ptr(counters, ith), count, sizeof(count));
        return;
    }
    for (int64_t j = j0; j < j1;) {
        /* gather the next neurons that any token selects (all of them when measuring recall) */
        int32_t list[ACT_LIST];
        int n = 0;
        for (; j < j1 && n < ACT_LIST; j++) {
            int any = 0;
            for (int64_t t = 0; t < n_tokens; t++) {
                ((float *)row_ptr(dst, t))[j] = 0.0f;
                any |= selected(layer, j, ((const float *)row_ptr(select, t))[j]);
            }
            count[TS_COUNT_UNION] += any;
            if (any || recall) {
                list[n++] = (int32_t)j;
            }
        }
        /* each token dots the rows it selects; after the first, a batch finds this group's rows in cache */
        for (int64_t t = 0; t < n_tokens; t++) {
            const float *sel = (const float *)row_ptr(select, t);
            float *a = (float *)row_ptr(dst, t);
            int32_t mine[ACT_LIST];
            unsigned char chosen[ACT_LIST];
            int m = 0;
            for (int k = 0; k < n; k++) {
                const int c = selected(layer, list[k], sel[list[k]]);
                mine[m] = list[k];
                chosen[m] = (unsigned char)c;
                m += c | recall;
            }
            if (m == 0) {
                continue;
            }
            prepare_token(&d, xq_gate, xq_up, t, prepared_gate, prepared_up);
            float g[ACT_LIST], u[ACT_LIST];
            dot_list(&d, mine, m, g, u);
            for (int k = 0; k < m; k++) {
                finish_neuron(layer, mine[k], chosen[k], sel[mine[k]], g[k], u[k], a, recall, count);
            }
        }
    }
    memcpy(row_ptr(counters, ith), count, sizeof(count));
}

/* ---- node timing ----------------------------------------------------------------------------------- */

/* Thread ith's start (t0) and end (now) of a node into span. */
static void span_note(ts_node_span *span, int ith, int nth, int64_t t0) {
    if (ith < TS_TIMED_THREADS) {
        span->start_us[ith] = t0;
        span->end_us[ith] = ggml_time_us();
    }
    if (ith == 0) {
        span->n_threads = nth < TS_TIMED_THREADS ? nth : TS_TIMED_THREADS;
    }
}

uint64_t ts_node_span_take(ts_node_span *span) {
    if (span->n_threads == 0) {
        return 0;
    }
    int64_t first = span->start_us[0], last = span->end_us[0];
    for (int k = 1; k < span->n_threads; k++) {
        first = span->start_us[k] < first ? span->start_us[k] : first;
        last = span->end_us[k] > last ? span->end_us[k] : last;
    }
    span->n_threads = 0;
    return last > first ? (uint64_t)(last - first) : 0;
}

static void sparse_act_op(struct ggml_tensor *dst, int ith, int nth, void *userdata) {
    ts_sparse_layer *layer = userdata;
    const int64_t t0 = layer->time_nodes ? ggml_time_us() : 0;
    sparse_act(dst, ith, nth, layer);
    if (layer->time_nodes) {
        span_note(&layer->act_span, ith, nth, t0);
    }
}

ts_sparse_activation ts_sparse_act(struct ggml_context *ctx0, ts_sparse_layer *layer, struct ggml_tensor *select,
                                   struct ggml_tensor *xq_gate, struct ggml_tensor *xq_up, struct ggml_tensor *gate,
                                   struct ggml_tensor *up, int32_t n_threads) {
    struct ggml_tensor *counters = ggml_new_tensor_2d(ctx0, GGML_TYPE_I32, TS_N_ACT_COUNTERS, n_threads);
    struct ggml_tensor *args[6] = {select, xq_up, up, counters, xq_gate, gate};
    const int n_args = gate != NULL ? 6 : 4;
    struct ggml_tensor *act = ggml_custom_4d(ctx0, GGML_TYPE_F32, up->ne[1], select->ne[1], 1, 1, args, n_args,
                                             sparse_act_op, GGML_N_TASKS_MAX, layer);
    return (ts_sparse_activation){.act = act, .counters = counters};
}

/* ---- down: sum of the non-zero neurons' rows of the transposed down matrix ---------------------- */

/* Adds the act node's per-thread counters (rows row0 .. row0 + n_rows - 1; counters NULL: a dense activation, every
 * neuron computed) and this node's non-zero count to the layer's stats, for an evaluation of n_tokens tokens. */
static void record_stats(ts_sparse_layer *layer, int64_t n_tokens, int64_t n_ff, const struct ggml_tensor *counters,
                         int64_t row0, int n_rows, uint64_t nonzero) {
    ts_layer_stats *s = &layer->stats;
    s->n_tokens += (uint64_t)n_tokens;
    s->n_nonzero += nonzero;
    s->n_evals += 1;
    if (counters == NULL) {
        s->n_computed += (uint64_t)(n_tokens * n_ff);
        s->n_union += (uint64_t)n_ff;
        return;
    }
    for (int k = 0; k < n_rows; k++) {
        int32_t count[TS_N_ACT_COUNTERS];
        memcpy(count, row_ptr(counters, row0 + k), sizeof(count));
        s->n_computed += (uint64_t)count[TS_COUNT_COMPUTED];
        s->n_true_active += (uint64_t)count[TS_COUNT_TRUE_ACTIVE];
        s->n_true_found += (uint64_t)count[TS_COUNT_TRUE_FOUND];
        s->n_union += (uint64_t)count[TS_COUNT_UNION];
    }
}

/* src: act [n_ff, T], counters (the act node's, written on as many threads as this node runs on) */
static void count_op(struct ggml_tensor *dst, int ith, int nth, void *userdata) {
    ts_sparse_layer *layer = userdata;
    const struct ggml_tensor *counters = dst->src[1];
    if (ith != 0 || layer->idle) {
        return;
    }
    uint64_t nonzero = 0;
    for (int k = 0; k < nth; k++) {
        int32_t count[TS_N_ACT_COUNTERS];
        memcpy(count, row_ptr(counters, k), sizeof(count));
        nonzero += (uint64_t)count[TS_COUNT_NONZERO];
    }
    record_stats(layer, dst->src[0]->ne[1], dst->src[0]->ne[0], counters, 0, nth, nonzero);
}

struct ggml_tensor *ts_sparse_count(struct ggml_context *ctx0, ts_sparse_layer *layer, ts_sparse_activation a) {
    struct ggml_tensor *args[1] = {a.counters};
    return ggml_custom_inplace(ctx0, a.act, args, 1, count_op, GGML_N_TASKS_MAX, layer);
}

/* Columns the down node splits on: whole blocks of down_t's type (float types: 32-column units, the fused kernels'
 * step). */
static int64_t down_split(const struct ggml_tensor *down, int64_t n_embd) {
    const int64_t type_blck = ggml_blck_size(down->type);
    return type_blck < 32 && n_embd % 32 == 0 ? 32 : type_blck;
}

/* Scratch bytes of one token's list of non-zero neurons (ts_nonzero_list's idx and coef) */
static int64_t one_token_scratch(int64_t n_ff) {
    return n_ff * (int64_t)(sizeof(int32_t) + sizeof(float));
}

/*
 * One token, rows split: thread ith of nth adds its share of the non-zero rows of act over every column into out, its
 * own partial sum (the sum nodes add them up); returns the number of non-zero rows. Shares start at multiples of
 * TS_AXPY_ROWS_ALIGN, so every row is rounded as in the whole list (as a batch computes the token). Each thread reads
 * whole rows, where a column split reads half rows: scattered reads of half the length ran the down kernels 5-12 %
 * slower on a Zen 3 (plain memory reads of scattered 1152- against 2304-byte pieces: 17 against 20 GB/s on 2 threads).
 */
static uint64_t down_rows_share(const float *act, int64_t n_ff, const struct ggml_tensor *down, void *scratch, int ith,
                                int nth, int64_t n_embd, float *out) {
    memset(out, 0, (size_t)n_embd * sizeof(float));
    int32_t *idx = scratch;
    float *coef = (float *)(idx + n_ff);
    const int64_t n = ts_nonzero_list(act, n_ff, idx, coef);
    const int64_t share = (n + nth - 1) / nth;
    const int64_t step = (share + TS_AXPY_ROWS_ALIGN - 1) / TS_AXPY_ROWS_ALIGN * TS_AXPY_ROWS_ALIGN;
    const int64_t i0 = step * ith < n ? step * ith : n, i1 = step * (ith + 1) < n ? step * (ith + 1) : n;
    if (i1 > i0) {
        ts_axpy_rows(down->type, down->data, down->nb[1], idx + i0, coef + i0, i1 - i0, 0, n_embd, out);
    }
    return (uint64_t)n;
}

/* src: act [n_ff, T] F32, down_t [n_embd, n_ff], scratch [bytes, n_workers] I8 (one token's list of neurons, or a
 * batch's: row_sums_batch.h), then the act node's counters (absent for a dense activation). dst [n_embd, T], or the
 * partial sums of down_rows_share. */
static void sparse_down(struct ggml_tensor *dst, int ith, int nth, ts_sparse_layer *layer, enum ts_down_stats stats) {
    const struct ggml_tensor *act = dst->src[0], *down = dst->src[1], *scratch = dst->src[2], *counters = dst->src[3];
    const int64_t n_embd = dst->ne[0], n_tokens = act->ne[1], n_ff = act->ne[0];
    const int64_t blck = down_split(down, n_embd), n_blocks = n_embd / blck;
    const int n_workers = nth < scratch->ne[1] ? nth : (int)scratch->ne[1];
    uint64_t nonzero = 0;
    if (dst->ne[1] != n_tokens) {
        GGML_ASSERT(nth == dst->ne[1]); /* the graph runs on the n_threads the partial sums were sized for */
        const float *a = (const float *)act->data;
        nonzero = down_rows_share(a, n_ff, down, row_ptr(scratch, ith), ith, nth, n_embd, (float *)row_ptr(dst, ith));
    } else if (ith < n_workers) {
        /* this thread's columns: whole quantization blocks, disjoint from every other thread's */
        const int64_t c0 = n_blocks * ith / n_workers * blck, c1 = n_blocks * (ith + 1) / n_workers * blck;
        if (layer->idle) {
            for (int64_t t = 0; t < n_tokens; t++) {
                memset((float *)row_ptr(dst, t) + c0, 0, (size_t)(c1 - c0) * sizeof(float));
            }
        } else if (n_tokens > 1) {
            void *batch = row_ptr(scratch, ith);
            const ts_row_sums_tokens tokens = ts_row_sums_batch_tokens(batch, n_tokens);
            for (int64_t t = 0; t < n_tokens; t++) {
                tokens.act[t] = (const float *)row_ptr(act, t);
                tokens.out[t] = (float *)row_ptr(dst, t) + c0;
            }
            nonzero = ts_row_sums_batch(down->type, down->data, down->nb[1], n_ff, n_tokens, n_tokens, c0, c1 - c0,
                                        batch);
        } else {
            int32_t *idx = (int32_t *)row_ptr(scratch, ith);
            float *coef = (float *)(idx + n_ff);
            const int64_t n = ts_nonzero_list((const float *)act->data, n_ff, idx, coef);
            float *out = (float *)dst->data + c0;
            memset(out, 0, (size_t)(c1 - c0) * sizeof(float));
            if (c1 > c0) {
                ts_axpy_rows(down->type, down->data, down->nb[1], idx, coef, n, c0, c1 - c0, out);
            }
            nonzero = (uint64_t)n;
        }
    }
    if (ith == 0 && stats == TS_DOWN_COUNTED && !layer->idle) {
        /* the act node ran on the same nth threads: rows 0..nth-1 hold this evaluation's counts */
        record_stats(layer, n_tokens, n_ff, counters, 0, nth, nonzero);
    }
}

static void sparse_down_uncounted(struct ggml_tensor *dst, int ith, int nth, void *userdata) {
    sparse_down(dst, ith, nth, userdata, TS_DOWN_UNCOUNTED);
}

static void sparse_down_counted(struct ggml_tensor *dst, int ith, int nth, void *userdata) {
    ts_sparse_layer *layer = userdata;
    const int64_t t0 = layer->time_nodes ? ggml_time_us() : 0;
    sparse_down(dst, ith, nth, layer, TS_DOWN_COUNTED);
    if (layer->time_nodes) {
        span_note(&layer->down_span, ith, nth, t0);
    }
}

/* Column c of n_parts partial sums whose rows start at `parts`, nb1 bytes apart, added in order. */
static float sum_of_parts(const char *parts, size_t nb1, int64_t n_parts, int64_t c) {
    float y = ((const float *)parts)[c];
    for (int64_t p = 1; p < n_parts; p++) {
        y += ((const float *)(parts + p * nb1))[c];
    }
    return y;
}

/* dst [n, 1] = the sum of the rows of src [n, P] in order (the same sum whatever splits the columns) */
static void sum_partials_op(struct ggml_tensor *dst, int ith, int nth, void *userdata) {
    (void)userdata;
    const struct ggml_tensor *parts = dst->src[0];
    const int64_t n = dst->ne[0], c0 = n * ith / nth, c1 = n * (ith + 1) / nth;
    float *out = (float *)dst->data;
    for (int64_t c = c0; c < c1; c++) {
        out[c] = sum_of_parts(parts->data, parts->nb[1], parts->ne[1], c);
    }
}

static struct ggml_tensor *sum_partials(struct ggml_context *ctx0, struct ggml_tensor *parts) {
    struct ggml_tensor *args[1] = {parts};
    return ggml_custom_4d(ctx0, GGML_TYPE_F32, parts->ne[0], 1, 1, 1, args, 1, sum_partials_op, GGML_N_TASKS_MAX,
                          NULL);
}

struct ggml_tensor *ts_sparse_down(struct ggml_context *ctx0, ts_sparse_layer *layer, struct ggml_tensor *act,
                                   struct ggml_tensor *counters, struct ggml_tensor *down, int64_t n_embd,
                                   enum ts_down_stats stats, int32_t n_threads) {
    const int64_t n_ff = act->ne[0], n_tokens = act->ne[1];
    const size_t one = (size_t)one_token_scratch(n_ff);
    const size_t batch = n_tokens > 1 ? ts_row_sums_batch_scratch(down->type, n_ff, n_tokens) : 0;
    struct ggml_tensor *scratch = ggml_new_tensor_2d(ctx0, GGML_TYPE_I8, (int64_t)(batch > one ? batch : one), n_threads);
    struct ggml_tensor *args[4] = {act, down, scratch, counters};
    const int n_args = counters != NULL ? 4 : 3;
    ggml_custom_op_t fun = stats == TS_DOWN_COUNTED ? sparse_down_counted : sparse_down_uncounted;
    if (n_tokens == 1 && n_threads > 1) { /* rows split: one partial sum per thread, then their sum */
        struct ggml_tensor *parts =
            ggml_custom_4d(ctx0, GGML_TYPE_F32, n_embd, n_threads, 1, 1, args, n_args, fun, GGML_N_TASKS_MAX, layer);
        return sum_partials(ctx0, parts);
    }
    return ggml_custom_4d(ctx0, GGML_TYPE_F32, n_embd, n_tokens, 1, 1, args, n_args, fun, GGML_N_TASKS_MAX, layer);
}

/* ---- one token through the experts it chose (mixture-of-experts decoding) ----------------------------------- */

/* Expert e's matrix of a stack [ne0, ne1, n_expert], as a 2-D tensor of its own (the kernels read only type, ne and
 * nb of the first two dimensions, and data). */
static struct ggml_tensor expert_matrix(const struct ggml_tensor *stack, int32_t e) {
    struct ggml_tensor m = *stack;
    m.data = (char *)stack->data + (size_t)e * stack->nb[2];
    m.ne[2] = 1;
    return m;
}

/* the expert of slot s: ids [k, 1] I32, each in [0, n_expert) */
static int32_t slot_expert(const struct ggml_tensor *ids, int64_t s, int64_t n_expert) {
    const int32_t e = *(const int32_t *)((const char *)ids->data + s * ids->nb[0]);
    GGML_ASSERT(e >= 0 && e < n_expert);
    return e;
}

/* The slot of the smallest expert above `last` (-1: the smallest of all); the k experts are distinct. */
static int64_t next_slot(const struct ggml_tensor *ids, int32_t last, int64_t n_expert) {
    int64_t next = -1;
    for (int64_t s = 0; s < ids->ne[0]; s++) {
        const int32_t e = slot_expert(ids, s, n_expert);
        if (e > last && (next < 0 || e < slot_expert(ids, next, n_expert))) {
            next = s;
        }
    }
    GGML_ASSERT(next >= 0);
    return next;
}

/* src: select [n_ff, k] F32 (row s: the selection values of the token's expert in slot s), ids [k, 1], xq_up, up
 * stack [n_embd, n_ff, n_expert], counters [TS_N_ACT_COUNTERS, nth * k] (row s * nth + ith: thread ith on slot s),
 * then (predictor mode) xq_gate, gate stack. dst [n_ff, k]: row s = the activations of slot s's expert. */
static void sparse_act_experts_op(struct ggml_tensor *dst, int ith, int nth, void *userdata) {
    const ts_sparse_layer *experts = userdata;
    const struct ggml_tensor *select = dst->src[0], *ids = dst->src[1], *xq_up = dst->src[2], *up = dst->src[3];
    const struct ggml_tensor *counters = dst->src[4], *xq_gate = dst->src[5], *gate = dst->src[6];
    const int64_t n_ff = up->ne[1], k = ids->ne[0];
    GGML_ASSERT(counters->ne[1] == nth * k); /* the graph runs on the n_threads the counters were sized for */
    const int64_t j0 = n_ff * ith / nth, j1 = n_ff * (ith + 1) / nth;
    /* the experts of a stack share their types: one kernel choice and one prepared token serve every slot */
    _Alignas(64) unsigned char prepared_up[TS_DOT_PREPARED_MAX], prepared_gate[TS_DOT_PREPARED_MAX];
    act_dots d = make_dots(&experts[0], gate, up, xq_gate, xq_up); /* one layer's experts: one layout */
    prepare_token(&d, xq_gate, xq_up, 0, prepared_gate, prepared_up);
    for (int64_t s = 0; s < k; s++) {
        const int32_t e = slot_expert(ids, s, up->ne[2]);
        const ts_sparse_layer *layer = &experts[e];
        GGML_ASSERT((gate == NULL) == (layer->select_exact != 0)); /* exact mode: the select values are the gate */
        const struct ggml_tensor up_e = expert_matrix(up, e);
        const struct ggml_tensor gate_e = gate != NULL ? expert_matrix(gate, e) : up_e;
        d.up = &up_e;
        d.gate = gate != NULL ? &gate_e : NULL;
        int32_t count[TS_N_ACT_COUNTERS] = {0};
        act_one_token(layer, &d, (const float *)row_ptr(select, s), (float *)row_ptr(dst, s), j0, j1,
                      layer->measure_recall && !layer->select_exact, count);
        memcpy(row_ptr(counters, s * nth + ith), count, sizeof(count));
    }
}

ts_sparse_activation ts_sparse_act_experts(struct ggml_context *ctx0, ts_sparse_layer *experts,
                                           struct ggml_tensor *select, struct ggml_tensor *ids,
                                           struct ggml_tensor *xq_gate, struct ggml_tensor *xq_up,
                                           struct ggml_tensor *gate, struct ggml_tensor *up, int32_t n_threads) {
    const int64_t k = ids->ne[0];
    GGML_ASSERT(ids->ne[1] == 1 && select->ne[1] == k);
    struct ggml_tensor *counters = ggml_new_tensor_2d(ctx0, GGML_TYPE_I32, TS_N_ACT_COUNTERS, n_threads * k);
    struct ggml_tensor *args[7] = {select, ids, xq_up, up, counters, xq_gate, gate};
    const int n_args = gate != NULL ? 7 : 5;
    struct ggml_tensor *act = ggml_custom_4d(ctx0, GGML_TYPE_F32, up->ne[1], k, 1, 1, args, n_args,
                                             sparse_act_experts_op, GGML_N_TASKS_MAX, experts);
    return (ts_sparse_activation){.act = act, .counters = counters};
}

/* src: act [n_ff, k], ids [k, 1], down_t stack [n_embd, n_ff, n_expert], scratch [bytes, nth], counters. dst
 * [n_embd, nth, k]: row (ith, s) = thread ith's partial sum of slot s's expert. Thread 0 adds each expert's
 * evaluation to its stats. */
static void sparse_down_experts_op(struct ggml_tensor *dst, int ith, int nth, void *userdata) {
    ts_sparse_layer *experts = userdata;
    const struct ggml_tensor *act = dst->src[0], *ids = dst->src[1], *down = dst->src[2], *scratch = dst->src[3];
    const struct ggml_tensor *counters = dst->src[4];
    const int64_t n_embd = dst->ne[0], n_ff = act->ne[0], k = ids->ne[0];
    GGML_ASSERT(nth == dst->ne[1]); /* the graph runs on the n_threads the partial sums were sized for */
    for (int64_t s = 0; s < k; s++) {
        const int32_t e = slot_expert(ids, s, down->ne[2]);
        const struct ggml_tensor down_e = expert_matrix(down, e);
        float *out = (float *)((char *)dst->data + ith * dst->nb[1] + s * dst->nb[2]);
        const uint64_t n = down_rows_share((const float *)row_ptr(act, s), n_ff, &down_e, row_ptr(scratch, ith), ith,
                                           nth, n_embd, out);
        if (ith == 0) {
            record_stats(&experts[e], 1, n_ff, counters, s * nth, nth, n);
        }
    }
}

/* src: parts [n, P, k], ids [k, 1], weights [k, 1] F32. dst [n, 1] = the sum over the slots, in ascending expert
 * order, of weights[s] * (the sum of parts[:, :, s] in order): the sums of a node per expert, weighted and added.
 * userdata: n_expert, as an integer. */
static void weighted_sum_op(struct ggml_tensor *dst, int ith, int nth, void *userdata) {
    const int64_t n_expert = (int64_t)(intptr_t)userdata;
    const struct ggml_tensor *parts = dst->src[0], *ids = dst->src[1], *weights = dst->src[2];
    const int64_t n = dst->ne[0], n_parts = parts->ne[1], k = ids->ne[0];
    const int64_t c0 = n * ith / nth, c1 = n * (ith + 1) / nth;
    float *out = (float *)dst->data;
    int32_t last = -1;
    for (int64_t done = 0; done < k; done++) {
        const int64_t s = next_slot(ids, last, n_expert);
        last = slot_expert(ids, s, n_expert);
        const float w = *(const float *)((const char *)weights->data + s * weights->nb[0]);
        const char *slot = (const char *)parts->data + s * parts->nb[2];
        for (int64_t c = c0; c < c1; c++) {
            const float y = sum_of_parts(slot, parts->nb[1], n_parts, c);
            out[c] = done == 0 ? y * w : out[c] + y * w;
        }
    }
}

struct ggml_tensor *ts_sparse_down_experts(struct ggml_context *ctx0, ts_sparse_layer *experts,
                                           ts_sparse_activation a, struct ggml_tensor *ids,
                                           struct ggml_tensor *weights, struct ggml_tensor *down, int64_t n_embd,
                                           int32_t n_threads) {
    const int64_t n_ff = a.act->ne[0], k = ids->ne[0];
    GGML_ASSERT(weights->ne[0] == k && weights->ne[1] == 1);
    struct ggml_tensor *scratch = ggml_new_tensor_2d(ctx0, GGML_TYPE_I8, one_token_scratch(n_ff), n_threads);
    struct ggml_tensor *args[5] = {a.act, ids, down, scratch, a.counters};
    struct ggml_tensor *parts = ggml_custom_4d(ctx0, GGML_TYPE_F32, n_embd, n_threads, k, 1, args, 5,
                                               sparse_down_experts_op, GGML_N_TASKS_MAX, experts);
    struct ggml_tensor *sum_args[3] = {parts, ids, weights};
    return ggml_custom_4d(ctx0, GGML_TYPE_F32, n_embd, 1, 1, 1, sum_args, 3, weighted_sum_op, GGML_N_TASKS_MAX,
                          (void *)(intptr_t)down->ne[2]);
}
