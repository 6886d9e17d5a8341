/*
 * The llama-family forward graph, op for op as llama.cpp builds it for `llama`, `qwen2`, `qwen3`, `qwen3moe` and
 * `gemma2` and `gemma3` (F16 KV cache by default, V stored transposed unless flash attention is on), so dense results
 * match llama.cpp's with the same settings. Qwen3 and Gemma 3 norm each head's queries and keys (qk_norm) before the
 * rope.
 *
 *   x = embd[tokens]
 *   per layer:  h = x + wo @ attn(rope(wq @ norm(x) + bq), rope(wk @ norm(x) + bk), wv @ norm(x) + bv)
 *               x = h + ffn(norm(h))         ffn(z) = down @ act(gate @ z, up @ z)
 *   logits = output @ norm(x) (+ b)
 *
 * Gemma scales the embeddings by sqrt(n_embd), RMS-norms the attention's and the FFN's outputs before their residual
 * adds (post_norms), and its sliding-window layers attend to the last n_swa positions only, roped with their own
 * base; Gemma 2 soft-caps the attention scores (and both soft-cap the logits where the file says).
 */
#include "context.h"
#include "grouped_ffn.h"

#include "moe_ffn.h"
#include "rows_dot.h"
#include "rows_matmul.h"

#include <math.h>

static struct ggml_tensor *rms_norm(struct ggml_context *ctx0, struct ggml_tensor *x, struct ggml_tensor *w, float eps) {
    return ggml_mul(ctx0, ggml_rms_norm(ctx0, x, eps), w);
}

static struct ggml_tensor *add_bias(struct ggml_context *ctx0, struct ggml_tensor *y, struct ggml_tensor *b) {
    return b != NULL ? ggml_add(ctx0, y, b) : y;
}

static struct ggml_tensor *matmul_bias(struct ggml_context *ctx0, struct ggml_tensor *w, struct ggml_tensor *b,
                                       struct ggml_tensor *x) {
    return add_bias(ctx0, ggml_mul_mat(ctx0, w, x), b);
}

static struct ggml_tensor *rope(const ts_context *ctx, int il, struct ggml_context *ctx0, struct ggml_tensor *x,
                                struct ggml_tensor *pos) {
    const ts_model *m = ctx->model;
    const ts_model_info *in = &m->info;
    const int swa = m->layers[il].swa; /* a sliding-window layer: its own rope (model.c: load_gemma) */
    if (m->no_rope_step > 0 && (il + 1) % m->no_rope_step == 0) {
        return x;
    }
    return ggml_rope_ext(ctx0, x, pos, ctx->rope_factors, in->n_rot, m->rope_type, m->n_ctx_orig,
                         swa ? m->rope_freq_base_swa : in->rope_freq_base, swa ? m->rope_freq_scale_swa : in->rope_freq_scale,
                         m->rope_ext_factor, m->rope_attn_factor, m->rope_beta_fast, m->rope_beta_slow);
}

/* c tanh(x / c): Gemma's soft cap of attention scores and logits, in llama.cpp's order of ops */
static struct ggml_tensor *softcap(struct ggml_context *ctx0, struct ggml_tensor *x, float c) {
    return ggml_scale(ctx0, ggml_tanh(ctx0, ggml_scale(ctx0, x, 1.0f / c)), c);
}

/* y times the model's residual_scale (granite), else y */
static struct ggml_tensor *residual_scaled(const ts_model *m, struct ggml_context *ctx0, struct ggml_tensor *y) {
    return m->residual_scale != 0.0f ? ggml_scale(ctx0, y, m->residual_scale) : y;
}

/* RMS-norms y with w where the layer has that norm (post_norms), else y */
static struct ggml_tensor *post_norm(const ts_model *m, struct ggml_context *ctx0, struct ggml_tensor *y,
                                     struct ggml_tensor *w) {
    return w != NULL ? rms_norm(ctx0, y, w, m->info.rms_eps) : y;
}

/* x rotated by the Walsh-Hadamard matrix rot [n, n] in consecutive blocks of n values (context.h: rot_k, rot_v) */
static struct ggml_tensor *rotated(struct ggml_context *ctx0, struct ggml_tensor *x, struct ggml_tensor *rot) {
    const int64_t n = rot->ne[0];
    struct ggml_tensor *blocks = ggml_is_contiguous(x) ? ggml_reshape_2d(ctx0, x, n, ggml_nelements(x) / n)
                                                       : ggml_cont_2d(ctx0, x, n, ggml_nelements(x) / n);
    struct ggml_tensor *y = ggml_mul_mat(ctx0, rot, blocks);
    ggml_mul_mat_set_hint(y, GGML_HINT_SRC0_IS_HADAMARD); /* ggml's CPU backend then runs a fast transform */
    return ggml_reshape_4d(ctx0, y, x->ne[0], x->ne[1], x->ne[2], x->ne[3]);
}

static struct ggml_tensor *as_f16_if_f32(struct ggml_context *ctx0, struct ggml_tensor *x) {
    return x->type == GGML_TYPE_F32 ? ggml_cast(ctx0, x, GGML_TYPE_F16) : x;
}

/* The n_kv cells from cell0 on of a cache whose rows are cells of n_head_kv heads of hd values: [hd, n_head_kv, n_kv] */
static struct ggml_tensor *cell_rows(struct ggml_context *ctx0, struct ggml_tensor *cache, int64_t hd, int64_t n_head_kv,
                                     int64_t n_kv, size_t cell0) {
    return ggml_view_3d(ctx0, cache, hd, n_head_kv, n_kv, ggml_row_size(cache->type, hd),
                        ggml_row_size(cache->type, hd * n_head_kv), cell0 * ggml_row_size(cache->type, hd * n_head_kv));
}

/*
 * Self-attention of cur [n_embd, T] for the tokens of every group. This batch's keys and values are written
 * into the cache first (rows and cells chosen by the k_rows / v_cells inputs, so the graph does not depend on
 * positions), then each group attends to the cells of its own sequence.
 */
static struct ggml_tensor *attention(const ts_context *ctx, struct ggml_context *ctx0, struct ggml_cgraph *gf, int il,
                                     struct ggml_tensor *cur, const ts_graph *g) {
    const ts_model *m = ctx->model;
    const ts_model_info *in = &m->info;
    const ts_layer *l = &m->layers[il];
    const int32_t n_tokens = g->n_tokens;
    const int64_t hd = in->n_embd_head, n_embd_kv = (int64_t)in->n_head_kv * hd;
    const int64_t n_cells = ts_layer_cells(ctx, il), n_cells_all = (int64_t)ctx->n_seq * n_cells;

    struct ggml_tensor *q = matmul_bias(ctx0, l->wq, l->bq, cur);
    struct ggml_tensor *k = matmul_bias(ctx0, l->wk, l->bk, cur);
    struct ggml_tensor *v = matmul_bias(ctx0, l->wv, l->bv, cur);
    q = ggml_reshape_3d(ctx0, q, hd, in->n_head, n_tokens);    /* [hd, n_head, T] */
    k = ggml_reshape_3d(ctx0, k, hd, in->n_head_kv, n_tokens); /* [hd, n_head_kv, T] */
    if (m->qk_norm) { /* each head's queries and keys normed on their own */
        q = rms_norm(ctx0, q, l->attn_q_norm, in->rms_eps);
        k = rms_norm(ctx0, k, l->attn_k_norm, in->rms_eps);
    }
    q = rope(ctx, il, ctx0, q, g->pos);
    k = rope(ctx, il, ctx0, k, g->pos);
    /* Gemma and Phi-3 scale their queries after the rope and the softmax by 1 (llama.cpp's float order) */
    const float kq_scale = m->q_scale > 0.0f ? 1.0f : m->kq_scale != 0.0f ? m->kq_scale : 1.0f / sqrtf((float)hd);
    if (m->q_scale > 0.0f) {
        q = ggml_scale(ctx0, q, m->q_scale);
    }
    if (g->attn_temp != NULL) {
        q = ggml_mul(ctx0, q, g->attn_temp);
    }
    if (ctx->rot_k != NULL) { /* a rotation of both leaves q . k as it is */
        q = rotated(ctx0, q, ctx->rot_k);
        k = rotated(ctx0, k, ctx->rot_k);
    }
    if (ctx->rot_v != NULL) { /* undone on the attention's output */
        v = rotated(ctx0, v, ctx->rot_v);
    }

    struct ggml_tensor *kc = ctx->k_cache[il], *vc = ctx->v_cache[il];
    const int flash = ctx->params.flash_attn;
    /* K cache row k_rows[t] = token t's keys; with flash attention V's row k_rows[t] its values, else V^T cache
       element v_cells[t * n_embd_kv + e] = its value e */
    struct ggml_tensor *k_rows = l->swa ? g->k_rows_swa : g->k_rows, *v_cells = l->swa ? g->v_cells_swa : g->v_cells;
    ggml_build_forward_expand(gf, ggml_set_rows(ctx0, kc, ggml_reshape_2d(ctx0, k, n_embd_kv, n_tokens), k_rows));
    if (flash) {
        ggml_build_forward_expand(gf, ggml_set_rows(ctx0, vc, ggml_reshape_2d(ctx0, v, n_embd_kv, n_tokens), k_rows));
    } else {
        ggml_build_forward_expand(gf, ggml_set_rows(ctx0, ggml_reshape_2d(ctx0, vc, 1, ggml_nelements(vc)),
                                                    ggml_reshape_2d(ctx0, v, 1, n_embd_kv * n_tokens), v_cells));
    }

    struct ggml_tensor *out = NULL; /* [hd * n_head, T] */
    for (int32_t i = 0; i < g->n_groups; i++) {
        const ts_group *gr = &g->groups[i];
        /* this group's queries [hd, n_head, n_g] */
        struct ggml_tensor *qg = gr->n_tokens == n_tokens
                                     ? q
                                     : ggml_view_3d(ctx0, q, hd, in->n_head, gr->n_tokens, q->nb[1], q->nb[2],
                                                    (size_t)gr->first * q->nb[2]);
        /* the n_kv cells its sequence's tokens see from cell0 on: K (and with flash attention V) [hd, n_head_kv, n_kv],
           else V^T [n_kv, n_head_kv, hd] */
        const size_t cell0 = (size_t)gr->seq * (size_t)n_cells + (size_t)(l->swa ? gr->swa_first : 0);
        const int64_t n_kv = l->swa ? gr->n_kv_swa : gr->n_kv;
        struct ggml_tensor *mask = l->swa ? gr->kq_mask_swa : gr->kq_mask;
        struct ggml_tensor *keys = cell_rows(ctx0, kc, hd, in->n_head_kv, n_kv, cell0);
        qg = ggml_permute(ctx0, qg, 0, 2, 1, 3);     /* [hd, n_g, n_head] */
        keys = ggml_permute(ctx0, keys, 0, 2, 1, 3); /* [hd, n_kv, n_head_kv] */
        struct ggml_tensor *o = NULL;                /* [hd * n_head, n_g] */
        if (flash) {
            struct ggml_tensor *vals = ggml_permute(ctx0, cell_rows(ctx0, vc, hd, in->n_head_kv, n_kv, cell0), 0, 2, 1, 3);
            keys = as_f16_if_f32(ctx0, keys); /* as llama.cpp passes F32 caches */
            vals = as_f16_if_f32(ctx0, vals);
            struct ggml_tensor *kqv = ggml_flash_attn_ext(ctx0, qg, keys, vals, mask, kq_scale, 0.0f,
                                                          m->attn_softcap > 0.0f ? m->attn_softcap : 0.0f);
            ggml_prec_set_acc(kqv, GGML_PREC_F32);
            o = ggml_reshape_2d(ctx0, kqv, hd * in->n_head, gr->n_tokens); /* it is [hd, n_head, n_g] */
        } else {
            const size_t ev = ggml_type_size(vc->type); /* bytes per V element */
            struct ggml_tensor *vals = ggml_view_3d(ctx0, vc, n_kv, in->n_head_kv, hd, (size_t)n_cells_all * hd * ev,
                                                    (size_t)n_cells_all * ev, cell0 * ev);
            vals = ggml_permute(ctx0, vals, 0, 2, 1, 3); /* [n_kv, hd, n_head_kv] */
            struct ggml_tensor *kq = ggml_mul_mat(ctx0, keys, qg); /* [n_kv, n_g, n_head] */
            ggml_prec_set_acc(kq, GGML_PREC_F32);
            if (m->attn_softcap > 0.0f) { /* Gemma 2 */
                kq = softcap(ctx0, kq, m->attn_softcap);
            }
            kq = ggml_soft_max_ext(ctx0, kq, mask, kq_scale, 0.0f);
            struct ggml_tensor *kqv = ggml_mul_mat(ctx0, vals, kq); /* [hd, n_g, n_head] */
            o = ggml_cont_2d(ctx0, ggml_permute(ctx0, kqv, 0, 2, 1, 3), hd * in->n_head, gr->n_tokens);
        }
        out = out == NULL ? o : ggml_concat(ctx0, out, o, 1);
    }
    if (ctx->rot_v != NULL) {
        out = rotated(ctx0, out, ctx->rot_v);
    }
    return matmul_bias(ctx0, l->wo, l->bo, out);
}

struct ggml_tensor *ts_gated_activation(struct ggml_context *ctx0, int32_t act, struct ggml_tensor *gate,
                                        struct ggml_tensor *up) {
    switch (act) {
    case TS_FFN_REGLU:
        return ggml_reglu_split(ctx0, gate, up);
    case TS_FFN_DRELU:
        return ggml_reglu_split(ctx0, gate, ggml_relu(ctx0, up));
    case TS_FFN_GEGLU:
        return ggml_geglu_split(ctx0, gate, up);
    default:
        return ggml_swiglu_split(ctx0, gate, up);
    }
}

/* Whether turbosparse's kernels read w rather than ggml's mul_mat: held split (only they read that layout), or, in a
 * model placed for the sparse modes on the CPU, held as rows (not repacked for ggml). */
static int read_as_rows(const ts_model *m, const struct ggml_tensor *w, int split) {
    return split || (m->sparse_rows && m->on_cpu && w->buffer != m->buf_repacked);
}

/* w . cur (+ b) for the dense FFN: in the sparse modes the row-read matrices (not repacked; split: in the split layout,
 * model.h) go through the prompt kernels of rows_matmul.h, which beat ggml's plain mul_mat; everything else (and
 * types without a kernel) by ggml. */
static struct ggml_tensor *ffn_matmul(const ts_context *ctx, struct ggml_context *ctx0, struct ggml_tensor *w,
                                      struct ggml_tensor *b, struct ggml_tensor *cur, int split) {
    struct ggml_tensor *out =
        read_as_rows(ctx->model, w, split) ? ts_rows_matmul(ctx0, w, cur, ctx->params.n_threads, split) : NULL;
    return out != NULL ? add_bias(ctx0, out, b) : matmul_bias(ctx0, w, b, cur);
}

/* A predictor's matrix w . x: through the decoding kernels (rows_dot.h) where the model holds it as rows (model.c:
 * predictor_role) and a kernel takes them, else ggml's mul_mat. */
static struct ggml_tensor *predictor_matmul(const ts_context *ctx, struct ggml_context *ctx0, struct ggml_tensor *w,
                                            struct ggml_tensor *x, int split) {
    struct ggml_tensor *out =
        read_as_rows(ctx->model, w, split) ? ts_rows_dot(ctx0, w, x, ctx->params.n_threads, split) : NULL;
    return out != NULL ? out : ggml_mul_mat(ctx0, w, x);
}

struct ggml_tensor *ts_down_t_scaled(struct ggml_context *ctx0, const ts_layer *l, struct ggml_tensor *y) {
    return l->ffn_down_t_scale != NULL ? ggml_mul(ctx0, y, l->ffn_down_t_scale) : y;
}

/* Whether layer il computes its FFN densely: prefill, dense mode, or a SwiGLU / GEGLU layer whose thresholds keep
 * every neuron (nothing to skip: ggml's dense kernels, and the dense result exactly). */
static int runs_dense(const ts_context *ctx, int il, int32_t dense_ffn) {
    const ts_sparse_layer *sl = &ctx->sparse[il];
    if (dense_ffn || ctx->params.sparse_mode == TS_SPARSE_OFF) {
        return 1;
    }
    return !ts_ffn_act_relu_gated(sl->ffn_act) && sl->select_exact && sl->gate_threshold <= 0.0f &&
           sl->act_threshold <= 0.0f;
}

/* The FFN of layer il on cur = norm(ffn_inp) [n_embd, T], dense or sparse as the context says; trace (or NULL)
 * receives the dense gate and up values. */
static struct ggml_tensor *ffn(ts_context *ctx, struct ggml_context *ctx0, int il, struct ggml_tensor *ffn_inp,
                               struct ggml_tensor *cur, int32_t dense_ffn, ts_ffn_trace *trace) {
    const ts_model *m = ctx->model;
    const ts_layer *l = &m->layers[il];
    ts_sparse_layer *sl = &ctx->sparse[il];
    const int32_t n_threads = ctx->params.n_threads;
    if (m->info.n_expert > 0) {
        return ts_moe_ffn(ctx, ctx0, il, ffn_inp, cur, dense_ffn || ctx->params.sparse_mode == TS_SPARSE_OFF);
    }
    if (!dense_ffn && ctx->params.sparse_mode == TS_SPARSE_GROUPS) {
        return ts_grouped_ffn(ctx0, m, il, ffn_inp, cur, ctx->group_top_k[il], &ctx->group_ids[il]);
    }
    if (runs_dense(ctx, il, dense_ffn)) {
        struct ggml_tensor *up, *gate;
        if (l->ffn_gate_up != NULL) { /* side by side (model.c: pair_gate_up): one pass over both */
            ts_unpair_gate_up(ctx0, ffn_matmul(ctx, ctx0, l->ffn_gate_up, NULL, cur, l->gate_split), &gate, &up);
            up = add_bias(ctx0, up, l->ffn_up_b);
            gate = add_bias(ctx0, gate, l->ffn_gate_b);
        } else {
            up = ffn_matmul(ctx, ctx0, l->ffn_up, l->ffn_up_b, cur, l->up_split);
            gate = ffn_matmul(ctx, ctx0, l->ffn_gate, l->ffn_gate_b, cur, l->gate_split);
        }
        if (trace != NULL) { /* with the gate and up side by side: views of one node, kept by ggml_set_output */
            trace->gate = gate;
            trace->up = up;
            ggml_set_output(gate);
            ggml_set_output(up);
        }
        struct ggml_tensor *act = ts_gated_activation(ctx0, m->info.ffn_act, gate, up);
        /* A grouped file keeps its neurons in a group plan's order, co-activated ones side by side; unless the
         * converter made the down's columns like-scaled (files since 2026-12-04), each quant block along the standard
         * down's rows mixes columns of unrelated scale (the default model's plan file: dense perplexity 432 on
         * Macbeth through it, 261 through the transposed down): where the transposed down is there too, the CPU
         * reads that one. */
        const int spoilt = m->info.group_size > 0 && !m->down_columns_scaled && l->ffn_down_t != NULL;
        if (l->ffn_down != NULL && !spoilt) {
            return matmul_bias(ctx0, l->ffn_down, l->ffn_down_b, act);
        }
        /* only the transposed down: a ReLU-gated activation is mostly zeros, so add the non-zero rows */
        const enum ts_down_stats stats = dense_ffn ? TS_DOWN_UNCOUNTED : TS_DOWN_COUNTED;
        return add_bias(ctx0,
                        ts_down_t_scaled(ctx0, l, ts_sparse_down(ctx0, sl, act, NULL, l->ffn_down_t, m->info.n_embd,
                                                                 stats, n_threads)),
                        l->ffn_down_b);
    }
    struct ggml_tensor *select, *xq_gate;
    struct ggml_tensor *xq_up =
        ts_sparse_quantize_gate_up(ctx0, cur, sl->select_exact ? NULL : l->ffn_gate, l->ffn_up, &xq_gate);
    if (sl->select_exact) {
        /* the dense gate decides which up rows run (split rows: through the prompt kernel, ggml reads them not) */
        select = l->gate_split ? ffn_matmul(ctx, ctx0, l->ffn_gate, l->ffn_gate_b, cur, 1)
                               : matmul_bias(ctx0, l->ffn_gate, l->ffn_gate_b, cur);
    } else {
        /* predictor logits = fc2 . relu(fc1 . h), h the residual before the FFN norm */
        struct ggml_tensor *h = m->info.predictor_input == TS_PRED_INPUT_RESIDUAL_RMSNORM
                                    ? ggml_rms_norm(ctx0, ffn_inp, m->info.rms_eps)
                                    : ffn_inp;
        struct ggml_tensor *hidden = ggml_relu(ctx0, predictor_matmul(ctx, ctx0, l->pred_fc1, h, l->pred_fc1_split));
        select = predictor_matmul(ctx, ctx0, l->pred_fc2, hidden, l->pred_fc2_split);
    }
    const ts_sparse_activation a =
        ts_sparse_act(ctx0, sl, select, xq_gate, xq_up, sl->select_exact ? NULL : l->ffn_gate, l->ffn_up, n_threads);
    if (l->ffn_down_t != NULL) {
        return add_bias(ctx0,
                        ts_down_t_scaled(ctx0, l, ts_sparse_down(ctx0, sl, a.act, a.counters, l->ffn_down_t,
                                                                 m->info.n_embd, TS_DOWN_COUNTED, n_threads)),
                        l->ffn_down_b);
    }
    /* only the standard down: ggml's dense down over the sparse activation */
    return matmul_bias(ctx0, l->ffn_down, l->ffn_down_b, ts_sparse_count(ctx0, sl, a));
}

/* An input of n_per_token cache slots per token (I64), or NULL for none */
static struct ggml_tensor *cache_slots(struct ggml_context *ctx0, int32_t n_tokens, int64_t n_per_token) {
    if (n_per_token == 0) {
        return NULL;
    }
    struct ggml_tensor *t = ggml_new_tensor_1d(ctx0, GGML_TYPE_I64, n_per_token * n_tokens);
    ggml_set_input(t);
    return t;
}

void ts_graph_build(ts_context *ctx, struct ggml_context *ctx0, ts_graph *g) {
    const ts_model *m = ctx->model;
    const ts_model_info *in = &m->info;
    const int32_t n_tokens = g->n_tokens;
    const int64_t n_embd_kv = (int64_t)in->n_head_kv * in->n_embd_head;
    struct ggml_cgraph *gf = ggml_new_graph_custom(ctx0, ctx->graph_max_nodes, false);
    g->gf = gf;

    g->tokens = ggml_new_tensor_1d(ctx0, GGML_TYPE_I32, n_tokens);
    g->pos = NULL; /* only where some layer ropes (an input nobody reads gets no memory) */
    if (m->no_rope_step != 1) {
        g->pos = ggml_new_tensor_1d(ctx0, GGML_TYPE_I32, n_tokens);
        ggml_set_input(g->pos);
    }
    ggml_set_input(g->tokens);
    g->k_rows = cache_slots(ctx0, n_tokens, 1);
    g->v_cells = cache_slots(ctx0, n_tokens, ctx->params.flash_attn ? 0 : n_embd_kv);
    g->k_rows_swa = g->k_rows;
    g->v_cells_swa = g->v_cells;
    if (ctx->n_cells_swa < ctx->n_cells) { /* the sliding-window layers hold caches of their own */
        g->k_rows_swa = cache_slots(ctx0, n_tokens, 1);
        g->v_cells_swa = cache_slots(ctx0, n_tokens, ctx->params.flash_attn ? 0 : n_embd_kv);
    }
    g->attn_temp = NULL;
    if (m->attn_temp_scale != 0.0f) {
        g->attn_temp = ggml_new_tensor_3d(ctx0, GGML_TYPE_F32, 1, 1, n_tokens);
        ggml_set_input(g->attn_temp);
    }
    /* the masks some layer reads (one nobody reads gets no memory) */
    int n_swa_layers = 0;
    for (int il = 0; il < in->n_layer; il++) {
        n_swa_layers += m->layers[il].swa;
    }
    const enum ggml_type mask_type = ctx->params.flash_attn ? GGML_TYPE_F16 : GGML_TYPE_F32; /* as flash_attn_ext reads */
    for (int32_t i = 0; i < g->n_groups; i++) {
        ts_group *gr = &g->groups[i];
        gr->kq_mask = gr->kq_mask_swa = NULL;
        if (n_swa_layers < in->n_layer) {
            gr->kq_mask = ggml_new_tensor_2d(ctx0, mask_type, gr->n_kv, gr->n_tokens);
            ggml_set_input(gr->kq_mask);
        }
        if (n_swa_layers > 0) {
            gr->kq_mask_swa = ggml_new_tensor_2d(ctx0, mask_type, gr->n_kv_swa, gr->n_tokens);
            ggml_set_input(gr->kq_mask_swa);
        }
    }
    g->out_ids = NULL;
    if (g->n_outputs < n_tokens) {
        g->out_ids = ggml_new_tensor_1d(ctx0, GGML_TYPE_I32, g->n_outputs);
        ggml_set_input(g->out_ids);
    }

    struct ggml_tensor *x = ggml_get_rows(ctx0, m->tok_embd, g->tokens); /* [n_embd, T] */
    if (m->embd_scale != 0.0f) {
        x = ggml_scale(ctx0, x, m->embd_scale);
    }
    for (int il = 0; il < in->n_layer; il++) {
        const ts_layer *l = &m->layers[il];
        struct ggml_tensor *cur = rms_norm(ctx0, x, l->attn_norm, in->rms_eps);
        cur = attention(ctx, ctx0, gf, il, cur, g);
        if (il == in->n_layer - 1 && g->out_ids != NULL) {
            /* rows nobody reads skip the last FFN */
            cur = ggml_get_rows(ctx0, cur, g->out_ids);
            x = ggml_get_rows(ctx0, x, g->out_ids);
        }
        cur = residual_scaled(m, ctx0, post_norm(m, ctx0, cur, l->attn_post_norm));
        struct ggml_tensor *ffn_inp = ggml_add(ctx0, cur, x); /* residual before the FFN norm */
        cur = rms_norm(ctx0, ffn_inp, l->ffn_norm, in->rms_eps);
        cur = ffn(ctx, ctx0, il, ffn_inp, cur, g->dense_ffn || g->trace != NULL, g->trace != NULL ? &g->trace[il] : NULL);
        cur = residual_scaled(m, ctx0, post_norm(m, ctx0, cur, l->ffn_post_norm));
        x = ggml_add(ctx0, cur, ffn_inp);
    }
    x = rms_norm(ctx0, x, m->output_norm, in->rms_eps);
    if (g->embeddings) {
        g->out = x;
    } else {
        g->out = matmul_bias(ctx0, m->output, m->output_b, x);
        if (m->logit_softcap > 0.0f) {
            g->out = softcap(ctx0, g->out, m->logit_softcap);
        }
        if (m->logit_scale != 0.0f) { /* granite */
            g->out = ggml_scale(ctx0, g->out, 1.0f / m->logit_scale);
        }
    }
    ggml_set_output(g->out);
    ggml_build_forward_expand(gf, g->out);
}

struct ggml_cgraph *ts_graph_build_ffn(ts_context *ctx, struct ggml_context *ctx0, int il, int32_t n_tokens,
                                       int32_t dense_ffn, struct ggml_tensor **h, struct ggml_tensor **out) {
    const ts_model *m = ctx->model;
    struct ggml_cgraph *gf = ggml_new_graph_custom(ctx0, ctx->graph_max_nodes, false);
    *h = ggml_new_tensor_2d(ctx0, GGML_TYPE_F32, m->info.n_embd, n_tokens);
    ggml_set_input(*h);
    struct ggml_tensor *cur = rms_norm(ctx0, *h, m->layers[il].ffn_norm, m->info.rms_eps);
    *out = ffn(ctx, ctx0, il, *h, cur, dense_ffn, NULL);
    ggml_set_output(*out);
    ggml_build_forward_expand(gf, *out);
    return gf;
}
