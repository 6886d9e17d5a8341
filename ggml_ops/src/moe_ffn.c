#include "moe_ffn.h"

#include "axpy_rows.h"
#include "row_sums_batch.h"
#include "rows_matmul.h"
#include "ts_error.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* element (i1, i2) of a 3-D tensor: the start of that row */
static char *row3(const struct ggml_tensor *t, int64_t i1, int64_t i2) {
    return (char *)t->data + i1 * t->nb[1] + i2 * t->nb[2];
}

/* the expert of slot s of token t: ids [k, T] I32 (rows may be strided) */
static int32_t chosen_expert(const struct ggml_tensor *ids, int64_t s, int64_t t) {
    return *(const int32_t *)((const char *)ids->data + s * ids->nb[0] + t * ids->nb[1]);
}

/* ---- context state ------------------------------------------------------------------------------- */

int ts_moe_init(ts_context *c, char *err, size_t err_size) {
    const ts_model *m = c->model;
    const int32_t n_expert = m->info.n_expert;
    if (n_expert == 0) {
        return 0;
    }
    const size_t n = (size_t)m->info.n_layer * (size_t)n_expert;
    c->expert_sparse = calloc(n, sizeof(*c->expert_sparse));
    c->expert_counts = calloc(n, sizeof(*c->expert_counts));
    if (c->expert_sparse == NULL || c->expert_counts == NULL) {
        return ts_set_error(err, err_size, "out of memory");
    }
    for (int il = 0; il < m->info.n_layer; il++) {
        for (int32_t e = 0; e < n_expert; e++) {
            ts_sparse_layer *s = &c->expert_sparse[(size_t)il * (size_t)n_expert + (size_t)e];
            s->ffn_act = m->info.ffn_act;
            s->gelu_f16 = m->gelu_f16;
            s->select_exact = c->params.sparse_mode != TS_SPARSE_PREDICTOR || m->pred_rank[il] == 0;
            s->gate_split = m->layers[il].gate_split;
            s->up_split = m->layers[il].up_split;
            s->threshold = c->threshold;
            /* no gate / activation thresholds or biases in an expert; recall is not measured
             * (recall mode computes every neuron, which would count experts the token never used) */
        }
    }
    return 0;
}

void ts_moe_free(ts_context *c) {
    free(c->expert_sparse);
    free(c->expert_counts);
}

void ts_moe_reset_stats(ts_context *c) {
    const size_t n = (size_t)c->model->info.n_layer * (size_t)c->model->info.n_expert;
    for (size_t i = 0; c->expert_sparse != NULL && i < n; i++) {
        memset(&c->expert_sparse[i].stats, 0, sizeof(c->expert_sparse[i].stats));
        memset(&c->expert_counts[i], 0, sizeof(c->expert_counts[i]));
    }
}

void ts_moe_set_threshold(ts_context *c, float threshold) {
    const size_t n = (size_t)c->model->info.n_layer * (size_t)c->model->info.n_expert;
    for (size_t i = 0; c->expert_sparse != NULL && i < n; i++) {
        c->expert_sparse[i].threshold = threshold;
    }
}

void ts_context_get_expert_stats(const ts_context *c, ts_expert_stats *stats) {
    const size_t n = (size_t)c->model->info.n_layer * (size_t)c->model->info.n_expert;
    for (size_t i = 0; c->expert_sparse != NULL && i < n; i++) {
        stats[i] = (ts_expert_stats){
            .n_routed = c->expert_counts[i].n_routed,
            .n_decoded = c->expert_counts[i].n_decoded,
            .n_computed = c->expert_sparse[i].stats.n_computed,
            .n_nonzero = c->expert_sparse[i].stats.n_nonzero,
        };
    }
}

/* ---- routing --------------------------------------------------------------------------------------- */

/* src: ids [k, T] I32 (the router's top-k, possibly a strided view). dst: a contiguous copy; thread 0 counts the
 * tokens routed to each expert (userdata: this layer's counters), into n_decoded too in the sparse variant. */
static void routed_op(struct ggml_tensor *dst, int ith, int nth, struct ts_expert_counts *counts, int decoded) {
    const struct ggml_tensor *ids = dst->src[0];
    const int64_t k = ids->ne[0], n_tokens = ids->ne[1];
    for (int64_t t = ith; t < n_tokens; t += nth) {
        for (int64_t s = 0; s < k; s++) {
            ((int32_t *)row3(dst, t, 0))[s] = chosen_expert(ids, s, t);
        }
    }
    if (ith != 0) {
        return;
    }
    for (int64_t t = 0; t < n_tokens; t++) {
        for (int64_t s = 0; s < k; s++) {
            struct ts_expert_counts *c = &counts[chosen_expert(ids, s, t)];
            c->n_routed++;
            c->n_decoded += (uint64_t)decoded;
        }
    }
}

static void routed_dense_op(struct ggml_tensor *dst, int ith, int nth, void *userdata) {
    routed_op(dst, ith, nth, userdata, 0);
}

static void routed_sparse_op(struct ggml_tensor *dst, int ith, int nth, void *userdata) {
    routed_op(dst, ith, nth, userdata, 1);
}

/* The router as llama.cpp builds it for Mixtral: ids [k, T] I32 of the top-k experts of softmax(router @ cur), and
 * *weights [k, T], their probabilities renormalised over the k (the sum clamped away from 0). */
static struct ggml_tensor *route(ts_context *ctx, struct ggml_context *ctx0, int il, struct ggml_tensor *cur,
                                 int32_t dense, struct ggml_tensor **weights) {
    const ts_model *m = ctx->model;
    const int64_t n_expert = m->info.n_expert, k = m->info.n_expert_used, n_tokens = cur->ne[1];
    struct ggml_tensor *probs = ggml_soft_max(ctx0, ggml_mul_mat(ctx0, m->layers[il].ffn_gate_inp, cur)); /* [n_expert, T] */
    struct ggml_tensor *top = ggml_argsort_top_k(ctx0, probs, (int)k);                                  /* [k, T] */
    struct ggml_tensor *w = ggml_get_rows(ctx0, ggml_reshape_3d(ctx0, probs, 1, n_expert, n_tokens), top); /* [1, k, T] */
    w = ggml_reshape_2d(ctx0, w, k, n_tokens);
    struct ggml_tensor *sum = ggml_clamp(ctx0, ggml_sum_rows(ctx0, w), 6.103515625e-5f, INFINITY); /* [1, T] */
    *weights = ggml_div(ctx0, w, sum);
    struct ggml_tensor *args[1] = {top};
    return ggml_custom_4d(ctx0, GGML_TYPE_I32, k, n_tokens, 1, 1, args, 1, dense ? routed_dense_op : routed_sparse_op,
                          GGML_N_TASKS_MAX, &ctx->expert_counts[(size_t)il * (size_t)n_expert]);
}

/* ---- dense ----------------------------------------------------------------------------------------- */

/* Down columns a thread owns: whole blocks of the type (float types: 32-column units, where n_embd allows). */
static int64_t column_block(enum ggml_type type, int64_t n_embd) {
    const int64_t blck = ggml_blck_size(type);
    return blck < 32 && n_embd % 32 == 0 ? 32 : blck;
}

/* src: act [n_ff, k, T] F32, down_t [n_embd, n_ff, n_expert], ids [k, T], scratch [bytes, n_workers] I8 (one
 * token's list of neurons, or a batch's: row_sums_batch.h). dst [n_embd, k, T]: for each token and slot, the sum of
 * the chosen expert's down_t rows over the non-zero activations. Threads own disjoint column blocks; a prompt runs
 * each expert's down once for the tokens that chose it (their rows read about once). */
static void moe_down_t_op(struct ggml_tensor *dst, int ith, int nth, void *userdata) {
    (void)userdata;
    const struct ggml_tensor *act = dst->src[0], *down = dst->src[1], *ids = dst->src[2], *scratch = dst->src[3];
    const int64_t n_embd = dst->ne[0], k = dst->ne[1], n_tokens = dst->ne[2], n_ff = act->ne[0];
    const int64_t n_expert = down->ne[2];
    const int64_t blck = column_block(down->type, n_embd), n_blocks = n_embd / blck;
    const int n_workers = nth < scratch->ne[1] ? nth : (int)scratch->ne[1];
    if (ith >= n_workers) {
        return;
    }
    const int64_t c0 = n_blocks * ith / n_workers * blck, c1 = n_blocks * (ith + 1) / n_workers * blck;
    void *own = (char *)scratch->data + ith * scratch->nb[1];
    if (n_tokens > 1) {
        const ts_row_sums_tokens tokens = ts_row_sums_batch_tokens(own, n_tokens);
        for (int64_t e = 0; e < n_expert; e++) {
            int64_t m = 0;
            for (int64_t t = 0; t < n_tokens; t++) {
                for (int64_t s = 0; s < k; s++) {
                    if (chosen_expert(ids, s, t) == e) {
                        GGML_ASSERT(m < n_tokens); /* a token chooses an expert at most once */
                        tokens.act[m] = (const float *)row3(act, s, t);
                        tokens.out[m++] = (float *)row3(dst, s, t) + c0;
                    }
                }
            }
            if (m > 0) {
                ts_row_sums_batch(down->type, (const char *)down->data + e * down->nb[2], down->nb[1], n_ff, m,
                                  n_tokens, c0, c1 - c0, own);
            }
        }
        return;
    }
    int32_t *idx = own;
    float *coef = (float *)(idx + n_ff);
    for (int64_t s = 0; s < k; s++) {
        const float *a = (const float *)row3(act, s, 0);
        int64_t n = 0;
        for (int64_t j = 0; j < n_ff; j++) {
            if (a[j] != 0.0f) {
                idx[n] = (int32_t)j;
                coef[n++] = a[j];
            }
        }
        float *out = (float *)row3(dst, s, 0) + c0;
        memset(out, 0, (size_t)(c1 - c0) * sizeof(float));
        if (c1 > c0) {
            const char *w = (const char *)down->data + chosen_expert(ids, s, 0) * down->nb[2];
            ts_axpy_rows(down->type, w, down->nb[1], idx, coef, n, c0, c1 - c0, out);
        }
    }
}

static struct ggml_tensor *moe_down_t(struct ggml_context *ctx0, struct ggml_tensor *act, struct ggml_tensor *down_t,
                                      struct ggml_tensor *ids, int32_t n_threads) {
    const int64_t n_ff = act->ne[0], n_tokens = act->ne[2];
    const size_t one = (size_t)n_ff * (sizeof(int32_t) + sizeof(float));
    const size_t batch = n_tokens > 1 ? ts_row_sums_batch_scratch(down_t->type, n_ff, n_tokens) : 0;
    struct ggml_tensor *scratch = ggml_new_tensor_2d(ctx0, GGML_TYPE_I8, (int64_t)(batch > one ? batch : one), n_threads);
    struct ggml_tensor *args[4] = {act, down_t, ids, scratch};
    return ggml_custom_4d(ctx0, GGML_TYPE_F32, down_t->ne[0], act->ne[1], act->ne[2], 1, args, 4, moe_down_t_op,
                          GGML_N_TASKS_MAX, NULL);
}

/* The chosen experts' w . cur [n_ff, k, T]: in the sparse modes the row-read experts (not repacked; split: in the split
 * layout, model.h) go through the prompt kernels of rows_matmul.h, which beat ggml's plain mul_mat_id; otherwise (and
 * types without a kernel) ggml's. */
static struct ggml_tensor *experts_matmul(const ts_context *ctx, struct ggml_context *ctx0, struct ggml_tensor *w,
                                          struct ggml_tensor *cur, struct ggml_tensor *ids, int split) {
    const ts_model *m = ctx->model;
    struct ggml_tensor *out = split || (m->sparse_rows && m->on_cpu && w->buffer != m->buf_repacked)
                                  ? ts_rows_matmul_id(ctx0, w, cur, ids, ctx->params.n_threads, split)
                                  : NULL;
    return out != NULL ? out : ggml_mul_mat_id(ctx0, w, ggml_reshape_3d(ctx0, cur, cur->ne[0], 1, cur->ne[1]), ids);
}

/* The chosen experts through ggml_mul_mat_id (or experts_matmul's prompt kernel; gate and up in one pass where they
 * lie side by side), weighted and summed in slot order as llama.cpp does. */
static struct ggml_tensor *moe_dense(ts_context *ctx, struct ggml_context *ctx0, int il, struct ggml_tensor *cur,
                                     struct ggml_tensor *ids, struct ggml_tensor *weights) {
    const ts_model *m = ctx->model;
    const ts_layer *l = &m->layers[il];
    const int64_t n_embd = m->info.n_embd, k = m->info.n_expert_used, n_tokens = cur->ne[1];
    struct ggml_tensor *up, *gate; /* [n_ff, k, T] */
    if (l->ffn_gate_up != NULL) { /* side by side (model.c: pair_gate_up): one pass over both */
        ts_unpair_gate_up(ctx0, experts_matmul(ctx, ctx0, l->ffn_gate_up, cur, ids, l->gate_split), &gate, &up);
    } else {
        up = experts_matmul(ctx, ctx0, l->ffn_up_exps, cur, ids, l->up_split);
        gate = experts_matmul(ctx, ctx0, l->ffn_gate_exps, cur, ids, l->gate_split);
    }
    struct ggml_tensor *act = ts_gated_activation(ctx0, m->info.ffn_act, gate, up);
    struct ggml_tensor *experts = l->ffn_down_exps != NULL
                                      ? ggml_mul_mat_id(ctx0, l->ffn_down_exps, act, ids)
                                      : ts_down_t_scaled(ctx0, l, moe_down_t(ctx0, act, l->ffn_down_t_exps, ids,
                                                                             ctx->params.n_threads));
    experts = ggml_mul(ctx0, experts, ggml_reshape_3d(ctx0, weights, 1, k, n_tokens)); /* [n_embd, k, T] */
    struct ggml_tensor *out = NULL;
    for (int64_t s = 0; s < k; s++) {
        struct ggml_tensor *y = ggml_view_2d(ctx0, experts, n_embd, n_tokens, experts->nb[2], (size_t)s * experts->nb[1]);
        out = out == NULL ? y : ggml_add(ctx0, out, y);
    }
    return k == 1 ? ggml_cont(ctx0, out) : out;
}

/* ---- sparse decoding ---------------------------------------------------------------------------- */

/* Whether any token chose expert e: ids [k, T]. */
static int chosen_by_any(const struct ggml_tensor *ids, int64_t e) {
    for (int64_t t = 0; t < ids->ne[1]; t++) {
        for (int64_t s = 0; s < ids->ne[0]; s++) {
            if (chosen_expert(ids, s, t) == e) {
                return 1;
            }
        }
    }
    return 0;
}

/* src: sel [n_ff, k, T] F32 (the chosen experts' selection values), ids [k, T]. dst [n_ff, T, n_expert]: plane e,
 * row t = sel of the slot where token t chose expert e, else -inf (selects nothing). The plane of an expert no
 * token chose is left unwritten: thread 0 marks that expert idle in the layer's sparse states (userdata), whose
 * nodes then skip it. Threads split the rows. */
static void expert_planes_op(struct ggml_tensor *dst, int ith, int nth, void *userdata) {
    ts_sparse_layer *experts = userdata;
    const struct ggml_tensor *sel = dst->src[0], *ids = dst->src[1];
    const int64_t n_ff = dst->ne[0], n_tokens = dst->ne[1], n_expert = dst->ne[2], k = ids->ne[0];
    for (int64_t e = 0; e < n_expert && ith == 0; e++) {
        experts[e].idle = !chosen_by_any(ids, e);
    }
    for (int64_t r = ith; r < n_tokens * n_expert; r += nth) {
        const int64_t t = r % n_tokens, e = r / n_tokens;
        float *out = (float *)row3(dst, t, e);
        int64_t slot = -1;
        for (int64_t s = 0; s < k; s++) {
            slot = chosen_expert(ids, s, t) == e ? s : slot;
        }
        if (slot >= 0) {
            memcpy(out, row3(sel, slot, t), (size_t)n_ff * sizeof(float));
        } else if (chosen_by_any(ids, e)) {
            for (int64_t j = 0; j < n_ff; j++) {
                out[j] = -INFINITY;
            }
        }
    }
}

/* src: weights [k, T], ids [k, T]. dst [T, n_expert]: row e = each token's weight of expert e (0 if not chosen).
 * Thread 0 writes it all (k * T values). */
static void expert_weights_op(struct ggml_tensor *dst, int ith, int nth, void *userdata) {
    (void)nth;
    (void)userdata;
    if (ith != 0) {
        return;
    }
    const struct ggml_tensor *w = dst->src[0], *ids = dst->src[1];
    const int64_t n_tokens = dst->ne[0], n_expert = dst->ne[1], k = ids->ne[0];
    for (int64_t e = 0; e < n_expert; e++) {
        memset(row3(dst, e, 0), 0, (size_t)n_tokens * sizeof(float));
    }
    for (int64_t t = 0; t < n_tokens; t++) {
        for (int64_t s = 0; s < k; s++) {
            ((float *)row3(dst, chosen_expert(ids, s, t), 0))[t] = *(const float *)((const char *)w->data + s * w->nb[0] + t * w->nb[1]);
        }
    }
}

/* expert e's matrix of a stack [ne0, ne1, n_expert] */
static struct ggml_tensor *expert_view(struct ggml_context *ctx0, struct ggml_tensor *stack, int64_t e) {
    return ggml_view_2d(ctx0, stack, stack->ne[0], stack->ne[1], stack->nb[1], (size_t)e * stack->nb[2]);
}

/* The selection values of the chosen experts [n_ff, k, T]: predictor logits fc2 . relu(fc1 . h), h the residual
 * before the FFN norm, or (exact mode) the gate. */
static struct ggml_tensor *selection(ts_context *ctx, struct ggml_context *ctx0, int il, struct ggml_tensor *ffn_inp,
                                     struct ggml_tensor *cur, struct ggml_tensor *ids, int exact) {
    const ts_model *m = ctx->model;
    const ts_layer *l = &m->layers[il];
    const int64_t n_embd = m->info.n_embd, n_tokens = cur->ne[1];
    if (exact) { /* split rows: through the prompt kernel (ggml reads them not) */
        return l->gate_split ? experts_matmul(ctx, ctx0, l->ffn_gate_exps, cur, ids, 1)
                             : ggml_mul_mat_id(ctx0, l->ffn_gate_exps, ggml_reshape_3d(ctx0, cur, n_embd, 1, n_tokens), ids);
    }
    struct ggml_tensor *h = m->info.predictor_input == TS_PRED_INPUT_RESIDUAL_RMSNORM
                                ? ggml_rms_norm(ctx0, ffn_inp, m->info.rms_eps)
                                : ffn_inp;
    h = ggml_reshape_3d(ctx0, h, n_embd, 1, n_tokens);
    struct ggml_tensor *r = ggml_relu(ctx0, ggml_mul_mat_id(ctx0, l->pred_fc1_exps, h, ids)); /* [rank, k, T] */
    return ggml_mul_mat_id(ctx0, l->pred_fc2_exps, r, ids);
}

/* One token: the chosen experts only, one node per phase (ts_sparse_act_experts). */
static struct ggml_tensor *moe_sparse_token(ts_context *ctx, struct ggml_context *ctx0, int il,
                                            struct ggml_tensor *ffn_inp, struct ggml_tensor *cur,
                                            struct ggml_tensor *ids, struct ggml_tensor *weights) {
    const ts_model *m = ctx->model;
    const ts_layer *l = &m->layers[il];
    ts_sparse_layer *experts = &ctx->expert_sparse[(size_t)il * (size_t)m->info.n_expert];
    const int exact = experts[0].select_exact;
    struct ggml_tensor *sel = selection(ctx, ctx0, il, ffn_inp, cur, ids, exact); /* [n_ff, k, 1] */
    struct ggml_tensor *xq_gate;
    struct ggml_tensor *xq_up = ts_sparse_quantize_gate_up(ctx0, cur, exact ? NULL : l->ffn_gate_exps, l->ffn_up_exps,
                                                           &xq_gate);
    struct ggml_tensor *slots = ggml_reshape_2d(ctx0, sel, m->info.n_ff, sel->ne[1]); /* [n_ff, k] */
    const ts_sparse_activation a = ts_sparse_act_experts(ctx0, experts, slots, ids, xq_gate, xq_up,
                                                         exact ? NULL : l->ffn_gate_exps, l->ffn_up_exps,
                                                         ctx->params.n_threads);
    return ts_sparse_down_experts(ctx0, experts, a, ids, weights, l->ffn_down_t_exps, m->info.n_embd,
                                  ctx->params.n_threads);
}

/* A batch: every expert's sparse nodes over the tokens that chose it (an expert no token chose is idle). */
static struct ggml_tensor *moe_sparse_batch(ts_context *ctx, struct ggml_context *ctx0, int il,
                                            struct ggml_tensor *ffn_inp, struct ggml_tensor *cur,
                                            struct ggml_tensor *ids, struct ggml_tensor *weights) {
    const ts_model *m = ctx->model;
    const ts_layer *l = &m->layers[il];
    const int64_t n_embd = m->info.n_embd, n_ff = m->info.n_ff, n_expert = m->info.n_expert, n_tokens = cur->ne[1];
    ts_sparse_layer *experts = &ctx->expert_sparse[(size_t)il * (size_t)n_expert];
    const int exact = experts[0].select_exact;
    struct ggml_tensor *args[2] = {selection(ctx, ctx0, il, ffn_inp, cur, ids, exact), ids};
    struct ggml_tensor *planes = ggml_custom_4d(ctx0, GGML_TYPE_F32, n_ff, n_tokens, n_expert, 1, args, 2,
                                                expert_planes_op, GGML_N_TASKS_MAX, experts);
    args[0] = weights;
    struct ggml_tensor *w = ggml_custom_4d(ctx0, GGML_TYPE_F32, n_tokens, n_expert, 1, 1, args, 2, expert_weights_op,
                                           GGML_N_TASKS_MAX, NULL);
    struct ggml_tensor *xq_gate;
    struct ggml_tensor *xq_up = ts_sparse_quantize_gate_up(ctx0, cur, exact ? NULL : l->ffn_gate_exps, l->ffn_up_exps,
                                                           &xq_gate);
    struct ggml_tensor *out = NULL;
    for (int64_t e = 0; e < n_expert; e++) {
        struct ggml_tensor *plane =
            ggml_view_2d(ctx0, planes, n_ff, n_tokens, planes->nb[1], (size_t)e * planes->nb[2]);
        const ts_sparse_activation a = ts_sparse_act(ctx0, &experts[e], plane, xq_gate, xq_up,
                                                     exact ? NULL : expert_view(ctx0, l->ffn_gate_exps, e),
                                                     expert_view(ctx0, l->ffn_up_exps, e), ctx->params.n_threads);
        struct ggml_tensor *y = ts_sparse_down(ctx0, &experts[e], a.act, a.counters,
                                               expert_view(ctx0, l->ffn_down_t_exps, e), n_embd, TS_DOWN_COUNTED,
                                               ctx->params.n_threads);
        struct ggml_tensor *w_e = ggml_reshape_2d(ctx0, ggml_view_1d(ctx0, w, n_tokens, (size_t)e * w->nb[1]), 1, n_tokens);
        y = ggml_mul(ctx0, y, w_e);
        out = out == NULL ? y : ggml_add(ctx0, out, y);
    }
    return out;
}

struct ggml_tensor *ts_moe_ffn(ts_context *ctx, struct ggml_context *ctx0, int il, struct ggml_tensor *ffn_inp,
                               struct ggml_tensor *cur, int32_t dense) {
    struct ggml_tensor *weights = NULL;
    struct ggml_tensor *ids = route(ctx, ctx0, il, cur, dense, &weights);
    if (dense) {
        return moe_dense(ctx, ctx0, il, cur, ids, weights);
    }
    return ts_down_t_scaled(ctx0, &ctx->model->layers[il],
                            cur->ne[1] == 1 ? moe_sparse_token(ctx, ctx0, il, ffn_inp, cur, ids, weights)
                                            : moe_sparse_batch(ctx, ctx0, il, ffn_inp, cur, ids, weights));
}
