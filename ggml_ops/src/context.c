/* Context lifetime, KV cache, and evaluation of token batches through the forward graph. */
#include "context.h"

#include "ggml-cpu.h"
#include "ts_error.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>


ts_context_params ts_context_default_params(void) {
    ts_context_params p = {
        .n_ctx = 0, .n_threads = 1, .n_batch = 512, .kv_type = GGML_TYPE_F16, .sparse_mode = TS_SPARSE_OFF, .predictor_threshold = NAN};
    return p;
}

static int check_params(const ts_model *m, const ts_context_params *p, char *err, size_t err_size) {
    const ts_model_info *in = &m->info;
    if (p->n_ctx < 0) {
        return ts_set_error(err, err_size, "n_ctx must be >= 0 (0 = the model's %d), got %d", in->n_ctx_train, p->n_ctx);
    }
    if (p->kv_type != GGML_TYPE_F16 && p->kv_type != GGML_TYPE_F32) {
        return ts_set_error(err, err_size, "KV cache type %d is not supported (F16 or F32)", p->kv_type);
    }
    if (p->n_threads > 0 && in->n_ff < 4 * p->n_threads) {
        return ts_set_error(err, err_size, "%d threads are more than an FFN of %d neurons can use", p->n_threads, in->n_ff);
    }
    const int relu_gated = in->ffn_act != TS_FFN_SWIGLU;
    if (!in->has_down && !relu_gated) {
        return ts_set_error(err, err_size,
                            "%s: a SwiGLU FFN needs the standard down matrices (blk.N.ffn_down.weight)", m->file->path);
    }
    if (p->sparse_mode != TS_SPARSE_OFF && !m->sparse_rows) {
        return ts_set_error(err, err_size, "%s: sparse decoding needs the model loaded with sparse_rows = 1", m->file->path);
    }
    switch (p->sparse_mode) {
    case TS_SPARSE_OFF:
    case TS_SPARSE_EXACT: /* SwiGLU: thresholds on |silu(gate)| (turbosparse calibrate); ReLU-gated: gate > 0 */
        return 0;
    case TS_SPARSE_PREDICTOR:
        if (!relu_gated) {
            return ts_set_error(err, err_size,
                                "%s: predictor mode needs a ReLU-gated FFN (reglu or drelu), this one is SwiGLU "
                                "(exact mode runs SwiGLU files calibrated by turbosparse calibrate)",
                                m->file->path);
        }
        for (int il = 0; il < in->n_layer; il++) {
            if (m->pred_rank[il] > 0) {
                return 0;
            }
        }
        return ts_set_error(err, err_size, "%s: predictor mode needs activation predictors; the file has none", m->file->path);
    default:
        return ts_set_error(err, err_size, "unknown sparse mode %d", p->sparse_mode);
    }
}

static int init_sparse_layers(ts_context *c, char *err, size_t err_size) {
    const ts_model *m = c->model;
    c->sparse = calloc((size_t)m->info.n_layer, sizeof(*c->sparse));
    if (c->sparse == NULL) {
        return ts_set_error(err, err_size, "out of memory");
    }
    for (int il = 0; il < m->info.n_layer; il++) {
        ts_sparse_layer *s = &c->sparse[il];
        s->ffn_act = m->info.ffn_act;
        /* layers without a predictor select exactly (gate > 0) even in predictor mode */
        s->select_exact = c->params.sparse_mode != TS_SPARSE_PREDICTOR || m->pred_rank[il] == 0;
        s->threshold = c->threshold;
        s->gate_threshold = m->gate_threshold[il];
        s->act_threshold = m->act_threshold[il];
        const ts_layer *l = &m->layers[il];
        s->gate_bias = l->ffn_gate_b != NULL ? (const float *)l->ffn_gate_b->data : NULL;
        s->up_bias = l->ffn_up_b != NULL ? (const float *)l->ffn_up_b->data : NULL;
    }
    return 0;
}

/* Exact mode on a file with only the standard down matrix (SwiGLU): the model's column layout, built once. */
static int init_down_rows(ts_context *c, char *err, size_t err_size) {
    ts_model *m = c->model;
    if (c->params.sparse_mode == TS_SPARSE_EXACT && m->layers[0].ffn_down_t == NULL &&
        ts_model_build_down_rows(m, c->params.n_threads, err, err_size) != 0) {
        return -1;
    }
    for (int il = 0; il < m->info.n_layer; il++) {
        c->sparse[il].down_cols = m->layers[il].ffn_down_cols != NULL ? &m->down_cols : NULL;
    }
    return 0;
}

static int init_kv_cache(ts_context *c, char *err, size_t err_size) {
    const ts_model_info *in = &c->model->info;
    const int64_t n_embd_kv = (int64_t)in->n_head_kv * in->n_embd_head;
    struct ggml_init_params ip = {
        .mem_size = (size_t)(2 * in->n_layer + 1) * ggml_tensor_overhead(), .mem_buffer = NULL, .no_alloc = true};
    c->ctx_kv = ggml_init(ip);
    c->k_cache = calloc((size_t)in->n_layer, sizeof(*c->k_cache));
    c->v_cache = calloc((size_t)in->n_layer, sizeof(*c->v_cache));
    if (c->ctx_kv == NULL || c->k_cache == NULL || c->v_cache == NULL) {
        return ts_set_error(err, err_size, "out of memory creating the KV cache");
    }
    for (int il = 0; il < in->n_layer; il++) {
        c->k_cache[il] = ggml_new_tensor_2d(c->ctx_kv, (enum ggml_type)c->params.kv_type, n_embd_kv, c->n_cells);
        c->v_cache[il] = ggml_new_tensor_2d(c->ctx_kv, (enum ggml_type)c->params.kv_type, c->n_cells, n_embd_kv);
    }
    c->buf_kv = ggml_backend_alloc_ctx_tensors_from_buft(c->ctx_kv, ggml_backend_cpu_buffer_type());
    if (c->buf_kv == NULL) {
        return ts_set_error(err, err_size, "out of memory allocating a KV cache of %d tokens", c->n_cells);
    }
    /* never-written cells are masked out, but 0 * garbage could still be NaN: start from zeros */
    ggml_backend_buffer_clear(c->buf_kv, 0);
    return 0;
}

ts_context *ts_context_new(ts_model *model, const ts_context_params *params, char *err, size_t err_size) {
    ts_context_params defaults = ts_context_default_params();
    if (params == NULL) {
        params = &defaults;
    }
    if (check_params(model, params, err, err_size) != 0) {
        return NULL;
    }
    ts_context *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        ts_set_error(err, err_size, "out of memory");
        return NULL;
    }
    c->model = model;
    c->params = *params;
    c->params.n_threads = params->n_threads > 0 ? params->n_threads : 1;
    c->params.n_batch = params->n_batch > 0 ? params->n_batch : 512;
    c->n_ctx = params->n_ctx > 0 ? params->n_ctx : model->info.n_ctx_train;
    c->n_cells = (int32_t)(((int64_t)c->n_ctx + TS_KV_PAD - 1) / TS_KV_PAD * TS_KV_PAD);
    c->threshold = isnan(params->predictor_threshold) ? model->info.predictor_threshold : params->predictor_threshold;
    c->graph_max_nodes = 64 * model->info.n_layer + 1024;
    c->graph_meta_size = ggml_tensor_overhead() * (size_t)c->graph_max_nodes +
                         ggml_graph_overhead_custom((size_t)c->graph_max_nodes, false);
    c->graph_meta = malloc(c->graph_meta_size);
    c->backend = ggml_backend_cpu_init();
    c->galloc = ggml_gallocr_new(ggml_backend_cpu_buffer_type());
    if (c->graph_meta == NULL || c->backend == NULL || c->galloc == NULL) {
        ts_set_error(err, err_size, "out of memory creating the context");
        ts_context_free(c);
        return NULL;
    }
    ggml_backend_cpu_set_n_threads(c->backend, c->params.n_threads);
    if (init_kv_cache(c, err, err_size) != 0 || init_sparse_layers(c, err, err_size) != 0 ||
        init_down_rows(c, err, err_size) != 0) {
        ts_context_free(c);
        return NULL;
    }
    return c;
}

void ts_context_free(ts_context *c) {
    if (c == NULL) {
        return;
    }
    if (c->galloc != NULL) {
        ggml_gallocr_free(c->galloc);
    }
    if (c->buf_kv != NULL) {
        ggml_backend_buffer_free(c->buf_kv);
    }
    if (c->ctx_kv != NULL) {
        ggml_free(c->ctx_kv);
    }
    if (c->backend != NULL) {
        ggml_backend_free(c->backend);
    }
    free(c->sparse);
    free(c->k_cache);
    free(c->v_cache);
    free(c->graph_meta);
    free(c);
}

int32_t ts_context_n_past(const ts_context *c) {
    return c->n_past;
}

int32_t ts_context_n_ctx(const ts_context *c) {
    return c->n_ctx;
}

int32_t ts_context_truncate(ts_context *c, int32_t n_keep, char *err, size_t err_size) {
    if (n_keep < 0 || n_keep > c->n_past) {
        return ts_set_error(err, err_size, "cannot keep %d tokens: the context holds %d", n_keep, c->n_past);
    }
    c->n_past = n_keep;
    return 0;
}

void ts_context_set_threshold(ts_context *c, float threshold) {
    c->threshold = threshold;
    for (int il = 0; il < c->model->info.n_layer; il++) {
        c->sparse[il].threshold = threshold;
    }
}

float ts_context_threshold(const ts_context *c) {
    return c->threshold;
}

void ts_context_set_ffn_thresholds(ts_context *c, const float *gate, const float *act) {
    for (int il = 0; il < c->model->info.n_layer; il++) {
        if (gate != NULL) {
            c->sparse[il].gate_threshold = gate[il];
        }
        if (act != NULL) {
            c->sparse[il].act_threshold = act[il];
        }
    }
}

void ts_context_get_ffn_thresholds(const ts_context *c, float *gate, float *act) {
    for (int il = 0; il < c->model->info.n_layer; il++) {
        gate[il] = c->sparse[il].gate_threshold;
        act[il] = c->sparse[il].act_threshold;
    }
}

void ts_context_set_measure_recall(ts_context *c, int32_t on) {
    for (int il = 0; il < c->model->info.n_layer; il++) {
        c->sparse[il].measure_recall = on != 0;
    }
}

void ts_context_get_stats(const ts_context *c, ts_layer_stats *stats) {
    for (int il = 0; il < c->model->info.n_layer; il++) {
        stats[il] = c->sparse[il].stats;
    }
}

void ts_context_reset_stats(ts_context *c) {
    for (int il = 0; il < c->model->info.n_layer; il++) {
        memset(&c->sparse[il].stats, 0, sizeof(c->sparse[il].stats));
    }
}

static void fill_inputs(const ts_context *c, const ts_graph *g, const int32_t *tokens, int32_t n_tokens,
                        int32_t n_outputs) {
    memcpy(g->tokens->data, tokens, sizeof(int32_t) * (size_t)n_tokens);
    int32_t *pos = g->pos->data;
    for (int32_t i = 0; i < n_tokens; i++) {
        pos[i] = c->n_past + i;
    }
    /* causal mask: token i sees cells 0..n_past+i */
    float *mask = g->kq_mask->data;
    for (int32_t i = 0; i < n_tokens; i++) {
        for (int32_t j = 0; j < g->n_kv; j++) {
            mask[(size_t)i * g->n_kv + j] = j <= c->n_past + i ? 0.0f : -INFINITY;
        }
    }
    if (g->out_ids != NULL) {
        int32_t *ids = g->out_ids->data;
        for (int32_t i = 0; i < n_outputs; i++) {
            ids[i] = n_tokens - n_outputs + i;
        }
    }
}

/* A graph-building context over the context's reusable metadata memory (tensors get no data: gallocr places them). */
static struct ggml_context *graph_context(ts_context *c, char *err, size_t err_size) {
    struct ggml_init_params ip = {.mem_size = c->graph_meta_size, .mem_buffer = c->graph_meta, .no_alloc = true};
    struct ggml_context *ctx0 = ggml_init(ip);
    if (ctx0 == NULL) {
        ts_set_error(err, err_size, "cannot create the graph context");
    }
    return ctx0;
}

static int alloc_graph(ts_context *c, struct ggml_cgraph *gf, int32_t n_tokens, char *err, size_t err_size) {
    if (!ggml_gallocr_alloc_graph(c->galloc, gf)) {
        return ts_set_error(err, err_size, "out of memory allocating the compute graph for %d tokens", n_tokens);
    }
    return 0;
}

static int compute_graph(ts_context *c, struct ggml_cgraph *gf, char *err, size_t err_size) {
    if (ggml_backend_graph_compute(c->backend, gf) != GGML_STATUS_SUCCESS) {
        return ts_set_error(err, err_size, "ggml graph computation failed");
    }
    return 0;
}

/* Where ts_context_eval_trace copies the FFN values: [n_layer][n_total][n_ff] arrays, this chunk from row `first`. */
typedef struct trace_dest {
    float *gate;
    float *up;
    int64_t n_total;
    int64_t first;
    ts_ffn_trace *layers; /* per layer: the graph's tensors */
} trace_dest;

/* t's rows [ne0, T] into dst's [n_layer][n_total][ne0] block at (layer, first) */
static void copy_rows(const struct ggml_tensor *t, float *dst, int64_t layer, const trace_dest *d) {
    if (dst == NULL) {
        return;
    }
    const int64_t n = t->ne[0];
    float *base = dst + ((size_t)layer * (size_t)d->n_total + (size_t)d->first) * (size_t)n;
    for (int64_t r = 0; r < t->ne[1]; r++) {
        memcpy(base + r * n, (const char *)t->data + r * t->nb[1], (size_t)n * sizeof(float));
    }
}

static void copy_trace(const ts_context *c, const trace_dest *d) {
    for (int il = 0; il < c->model->info.n_layer; il++) {
        copy_rows(d->layers[il].gate, d->gate, il, d);
        copy_rows(d->layers[il].up, d->up, il, d);
    }
}

/* One graph evaluation of at most n_batch tokens; trace (or NULL) receives every layer's dense FFN values. */
static int eval_chunk(ts_context *c, const int32_t *tokens, int32_t n_tokens, int32_t n_outputs, int32_t dense_ffn,
                      float *logits, const trace_dest *trace, char *err, size_t err_size) {
    struct ggml_context *ctx0 = graph_context(c, err, err_size);
    if (ctx0 == NULL) {
        return -1;
    }
    ts_graph g = {0};
    g.trace = trace != NULL ? trace->layers : NULL;
    const int32_t n_used = c->n_past + n_tokens;
    g.n_kv = (n_used + TS_KV_PAD - 1) / TS_KV_PAD * TS_KV_PAD;
    if (g.n_kv > c->n_cells) {
        g.n_kv = c->n_cells;
    }
    int rc = ts_graph_build(c, ctx0, n_tokens, n_outputs, dense_ffn, &g);
    if (rc == 0) {
        rc = alloc_graph(c, g.gf, n_tokens, err, err_size);
    }
    if (rc == 0) {
        fill_inputs(c, &g, tokens, n_tokens, n_outputs);
        rc = compute_graph(c, g.gf, err, err_size);
    }
    if (rc == 0) {
        c->n_past += n_tokens;
        if (logits != NULL) {
            memcpy(logits, g.logits->data, ggml_nbytes(g.logits));
        }
        if (trace != NULL) {
            copy_trace(c, trace);
        }
    }
    ggml_free(ctx0);
    return rc;
}

static int check_tokens(const ts_context *c, const int32_t *tokens, int32_t n_tokens, char *err, size_t err_size) {
    const ts_model_info *in = &c->model->info;
    if (n_tokens <= 0) {
        return ts_set_error(err, err_size, "nothing to evaluate: n_tokens = %d", n_tokens);
    }
    if ((int64_t)c->n_past + n_tokens > c->n_ctx) {
        return ts_set_error(err, err_size, "context overflow: %d cached + %d new tokens exceed n_ctx = %d", c->n_past,
                            n_tokens, c->n_ctx);
    }
    for (int32_t i = 0; i < n_tokens; i++) {
        if (tokens[i] < 0 || tokens[i] >= in->n_vocab) {
            return ts_set_error(err, err_size, "token %d at index %d is out of the vocabulary (0..%d)", tokens[i], i,
                                in->n_vocab - 1);
        }
    }
    return 0;
}

int32_t ts_context_eval(ts_context *c, const int32_t *tokens, int32_t n_tokens, int32_t dense_ffn, float *logits,
                        int32_t logits_all, char *err, size_t err_size) {
    const ts_model_info *in = &c->model->info;
    if (check_tokens(c, tokens, n_tokens, err, err_size) != 0) {
        return -1;
    }
    for (int32_t start = 0; start < n_tokens; start += c->params.n_batch) {
        const int32_t n = n_tokens - start < c->params.n_batch ? n_tokens - start : c->params.n_batch;
        const int is_last = start + n == n_tokens;
        float *out = NULL;
        if (logits != NULL && logits_all) {
            out = logits + (size_t)start * in->n_vocab;
        } else if (logits != NULL && is_last) {
            out = logits;
        }
        if (eval_chunk(c, tokens + start, n, logits_all ? n : 1, dense_ffn, out, NULL, err, err_size) != 0) {
            return -1;
        }
    }
    return 0;
}

int32_t ts_context_eval_trace(ts_context *c, const int32_t *tokens, int32_t n_tokens, float *gate, float *up, char *err,
                              size_t err_size) {
    if (check_tokens(c, tokens, n_tokens, err, err_size) != 0) {
        return -1;
    }
    trace_dest d = {.gate = gate, .up = up, .n_total = n_tokens};
    d.layers = calloc((size_t)c->model->info.n_layer, sizeof(*d.layers));
    if (d.layers == NULL) {
        return ts_set_error(err, err_size, "out of memory");
    }
    int rc = 0;
    for (int32_t start = 0; rc == 0 && start < n_tokens; start += c->params.n_batch) {
        const int32_t n = n_tokens - start < c->params.n_batch ? n_tokens - start : c->params.n_batch;
        d.first = start;
        /* every row is an output: the last layer's FFN runs for every token */
        rc = eval_chunk(c, tokens + start, n, n, 1, NULL, &d, err, err_size);
    }
    free(d.layers);
    return rc;
}

int32_t ts_context_eval_ffn(ts_context *c, int32_t layer, const float *h, int32_t n_tokens, int32_t dense_ffn,
                            float *out, char *err, size_t err_size) {
    if (layer < 0 || layer >= c->model->info.n_layer) {
        return ts_set_error(err, err_size, "layer %d out of [0, %d)", layer, c->model->info.n_layer);
    }
    if (n_tokens <= 0 || n_tokens > c->params.n_batch) {
        return ts_set_error(err, err_size, "n_tokens = %d is not in [1, n_batch = %d]", n_tokens, c->params.n_batch);
    }
    struct ggml_context *ctx0 = graph_context(c, err, err_size);
    if (ctx0 == NULL) {
        return -1;
    }
    struct ggml_tensor *in = NULL, *res = NULL;
    struct ggml_cgraph *gf = ts_graph_build_ffn(c, ctx0, layer, n_tokens, dense_ffn, &in, &res);
    int rc = alloc_graph(c, gf, n_tokens, err, err_size);
    if (rc == 0) {
        memcpy(in->data, h, ggml_nbytes(in));
        rc = compute_graph(c, gf, err, err_size);
    }
    if (rc == 0) {
        memcpy(out, res->data, ggml_nbytes(res));
    }
    ggml_free(ctx0);
    return rc;
}
