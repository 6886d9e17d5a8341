/* Context lifetime, KV cache, and evaluation of token batches through the forward graph. */
#include "context.h"
#include "cpu_features.h"
#include "grouped_ffn.h"

#include "ggml-cpu.h"
#include "moe_ffn.h"
#include "sparse_mode.h"
#include "ts_error.h"
#include "window_cache.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define TS_MAX_CTX (1 << 28) /* tokens per sequence: past any memory, far inside int32 */

ts_context_params ts_context_default_params(void) {
    ts_context_params p = {
        .n_ctx = 0, .n_threads = 1, .n_batch = 512, .type_k = GGML_TYPE_F16, .type_v = GGML_TYPE_F16,
        .sparse_mode = TS_SPARSE_OFF, .predictor_threshold = NAN, .n_seq = 1, .swa_full = 0, .flash_attn = 0};
    return p;
}

/* Devices other than the CPU run ggml's own ops only: dense and the grouped route, not the row-sparse custom ops. */
static int check_device_mode(const ts_model *m, const ts_context_params *p, char *err, size_t err_size) {
    if (m->on_cpu || (p->sparse_mode != TS_SPARSE_PREDICTOR && p->sparse_mode != TS_SPARSE_EXACT)) {
        return 0;
    }
    return ts_fail(err, err_size, TS_ERR_ARGUMENT,
                   "%s: %s mode runs CPU-only ops; on device '%s' only dense and the grouped route (groups) run",
                   m->file->path, p->sparse_mode == TS_SPARSE_PREDICTOR ? "predictor" : "exact",
                   ggml_backend_dev_name(m->device));
}

/* The KV cache types llama.cpp's --cache-type-k / -v take */
static int cache_type_known(int32_t type) {
    static const enum ggml_type known[] = {GGML_TYPE_F32,  GGML_TYPE_F16,  GGML_TYPE_BF16, GGML_TYPE_Q8_0, GGML_TYPE_Q4_0,
                                           GGML_TYPE_Q4_1, GGML_TYPE_Q5_0, GGML_TYPE_Q5_1, GGML_TYPE_IQ4_NL};
    for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++) {
        if ((int32_t)known[i] == type) {
            return 1;
        }
    }
    return 0;
}

/* The K or V cache's type (`which`): one of those, in blocks that a head's values fill whole (attention reads each
 * head's rows apart), and a quantized V only with flash attention (V is cached transposed without it). */
static int check_cache_type(const ts_model *m, const ts_context_params *p, const char *which, int32_t type, char *err,
                            size_t err_size) {
    if (!cache_type_known(type)) {
        return ts_set_error(err, err_size, "%s cache type %d is not supported (f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, "
                            "q5_1 or iq4_nl)", which, type);
    }
    const int64_t block = ggml_blck_size((enum ggml_type)type);
    if (m->info.n_embd_head % block != 0) {
        return ts_set_error(err, err_size, "%s: %s cache type %s stores blocks of %lld values, which do not divide the "
                            "heads of %d values", m->file->path, which, ggml_type_name((enum ggml_type)type),
                            (long long)block, m->info.n_embd_head);
    }
    if (which[0] == 'V' && ggml_is_quantized((enum ggml_type)type) && !p->flash_attn) {
        return ts_set_error(err, err_size, "a quantized V cache (%s) needs flash attention (flash_attn), as in llama.cpp",
                            ggml_type_name((enum ggml_type)type));
    }
    return 0;
}

static int check_params(const ts_model *m, const ts_context_params *p, char *err, size_t err_size) {
    const ts_model_info *in = &m->info;
    if (m->metadata_only) {
        return ts_set_error(err, err_size, "%s: the model was loaded with metadata_only = 1 (no weights placed); load it "
                            "again to run it", m->file->path);
    }
    if (check_device_mode(m, p, err, err_size) != 0) {
        return -1;
    }
    if (p->n_ctx < 0) {
        return ts_set_error(err, err_size, "n_ctx must be >= 0 (0 = the model's %d), got %d", in->n_ctx_train, p->n_ctx);
    }
    const int32_t n_ctx = p->n_ctx > 0 ? p->n_ctx : in->n_ctx_train;
    if (n_ctx > TS_MAX_CTX) { /* its KV cells, a multiple of TS_KV_PAD, and positions stay far inside int32 */
        return ts_set_error(err, err_size, "n_ctx = %d%s: at most %d tokens per sequence", n_ctx,
                            p->n_ctx > 0 ? "" : " (the model's context_length)", TS_MAX_CTX);
    }
    if (p->n_seq > TS_MAX_SEQ) {
        return ts_set_error(err, err_size, "n_seq = %d: at most %d sequences per context", p->n_seq, TS_MAX_SEQ);
    }
    if (check_cache_type(m, p, "K", p->type_k, err, err_size) != 0 ||
        check_cache_type(m, p, "V", p->type_v, err, err_size) != 0) {
        return -1;
    }
    if (p->n_threads > GGML_MAX_N_THREADS) {
        return ts_set_error(err, err_size, "n_threads = %d: ggml runs at most %d threads", p->n_threads, GGML_MAX_N_THREADS);
    }
    if (!in->has_down && !ts_ffn_act_relu_gated(in->ffn_act)) {
        return ts_set_error(err, err_size, "%s: a %s FFN needs the standard down matrices (blk.N.ffn_down.weight)",
                            m->file->path, in->ffn_act == TS_FFN_GEGLU ? "GEGLU" : "SwiGLU");
    }
    int32_t mode = TS_SPARSE_OFF;
    return p->sparse_mode == TS_SPARSE_AUTO ? ts_model_sparse_mode(m, TS_SPARSE_AUTO, m->on_cpu, &mode, err, err_size)
                                            : ts_sparse_mode_check(m, p->sparse_mode, err, err_size);
}

/*
 * Without flash attention (with it: kv_span), attention spans whole multiples of this many cells, not of 256 as in
 * llama.cpp (where one graph serves 256 tokens): every cell past a sequence's end is masked work (spanning 256 cells
 * cost the 7B twin's predictor decoding 5-12 % of a token with 16-112 tokens of context on a Zen 3). The step is that of ggml's F16 dot product, which attention's V
 * sums go through: it adds whole steps of values in vector lanes and a shorter tail apart, so a span that is no
 * multiple of the step rounds otherwise than llama.cpp's 256 (a span of 32 gave other logits than llama.cpp's from
 * the 15th token on an AVX-512 Zen 4), while masked cells add exact zeros to the lanes, so any multiple gives its sums
 * bit for bit. The step depends on what ggml was compiled for: 64 values with AVX-512 (128 with AVX512-FP16, which
 * -march=native gives it where the CPU has it), 32 with AVX, SSE3 or NEON; elsewhere llama.cpp's own 256.
 */
static int32_t kv_span_step(void) {
    if (ggml_cpu_has_avx512()) {
        return ts_cpu_has_avx512_fp16() ? 128 : 64;
    }
    return ggml_cpu_has_avx() || ggml_cpu_has_sse3() || ggml_cpu_has_neon() ? 32 : 256;
}

static int init_sparse_layers(ts_context *c, char *err, size_t err_size) {
    const ts_model *m = c->model;
    c->sparse = calloc((size_t)m->info.n_layer, sizeof(*c->sparse));
    c->group_top_k = malloc(sizeof(int32_t) * (size_t)m->info.n_layer);
    c->group_ids = calloc((size_t)m->info.n_layer, sizeof(*c->group_ids));
    if (c->sparse == NULL || c->group_top_k == NULL || c->group_ids == NULL) {
        return ts_set_error(err, err_size, "out of memory");
    }
    ts_model_get_group_top_k(m, c->group_top_k);
    for (int il = 0; il < m->info.n_layer; il++) {
        ts_sparse_layer *s = &c->sparse[il];
        s->ffn_act = m->info.ffn_act;
        s->gelu_f16 = m->gelu_f16;
        /* layers without a predictor select exactly (gate > 0) even in predictor mode */
        s->select_exact = c->params.sparse_mode != TS_SPARSE_PREDICTOR || m->pred_rank[il] == 0;
        s->gate_split = m->layers[il].gate_split;
        s->up_split = m->layers[il].up_split;
        s->threshold = c->threshold;
        s->gate_threshold = m->gate_threshold[il];
        s->act_threshold = m->act_threshold[il];
        s->gate_scale = m->gate_scale != NULL ? m->gate_scale + (size_t)il * (size_t)m->info.n_ff : NULL;
        s->act_scale = m->act_scale != NULL ? m->act_scale + (size_t)il * (size_t)m->info.n_ff : NULL;
        const ts_layer *l = &m->layers[il];
        s->gate_bias = l->ffn_gate_b != NULL ? (const float *)l->ffn_gate_b->data : NULL;
        s->up_bias = l->ffn_up_b != NULL ? (const float *)l->ffn_up_b->data : NULL;
    }
    return 0;
}

/* A cache tensor of n_cells cells of n_embd_kv values: a row per cell, or (transposed) a row per value */
static struct ggml_tensor *new_cache(ts_context *c, int32_t type, int64_t n_embd_kv, int64_t n_cells, int cells_are_rows) {
    return cells_are_rows ? ggml_new_tensor_2d(c->ctx_kv, (enum ggml_type)type, n_embd_kv, n_cells)
                          : ggml_new_tensor_2d(c->ctx_kv, (enum ggml_type)type, n_cells, n_embd_kv);
}

/* The [n, n] rotation of a quantized cache of this type whose heads are whole multiples of 64 values, else NULL */
static struct ggml_tensor *new_rotation(ts_context *c, int32_t type, int64_t n) {
    const int rotated = ggml_is_quantized((enum ggml_type)type) && c->model->info.n_embd_head % 64 == 0;
    return rotated ? ggml_new_tensor_2d(c->ctx_kv, GGML_TYPE_F32, n, n) : NULL;
}

/* Fills rot (if not NULL) with Sylvester's Walsh-Hadamard matrix over sqrt(n): (-1)^popcount(i & j) / sqrt(n), its
 * own inverse. (ggml's CPU backend computes the product as a fast transform; other backends multiply by it.) */
static int set_hadamard(struct ggml_tensor *rot) {
    if (rot == NULL) {
        return 0;
    }
    const int64_t n = rot->ne[0];
    float *h = malloc(sizeof(float) * (size_t)(n * n));
    if (h == NULL) {
        return -1;
    }
    const float value = 1.0f / sqrtf((float)n);
    for (int64_t i = 0; i < n; i++) {
        for (int64_t j = 0; j < n; j++) {
            h[i * n + j] = __builtin_parityll((unsigned long long)(i & j)) ? -value : value;
        }
    }
    ggml_backend_tensor_set(rot, h, 0, ggml_nbytes(rot));
    free(h);
    return 0;
}

/* The bytes the KV cache's tensors take in buft. */
static size_t kv_cache_bytes(struct ggml_context *ctx_kv, ggml_backend_buffer_type_t buft) {
    size_t total = 0;
    for (struct ggml_tensor *t = ggml_get_first_tensor(ctx_kv); t != NULL; t = ggml_get_next_tensor(ctx_kv, t)) {
        total += ggml_backend_buft_get_alloc_size(buft, t);
    }
    return total;
}

static int init_kv_cache(ts_context *c, char *err, size_t err_size) {
    const ts_model_info *in = &c->model->info;
    const int64_t n_embd_kv = (int64_t)in->n_head_kv * in->n_embd_head;
    struct ggml_init_params ip = {
        .mem_size = (size_t)(4 * in->n_layer + 3) * ggml_tensor_overhead(), .mem_buffer = NULL, .no_alloc = true};
    c->ctx_kv = ggml_init(ip);
    c->k_cache = calloc((size_t)in->n_layer, sizeof(*c->k_cache));
    c->v_cache = calloc((size_t)in->n_layer, sizeof(*c->v_cache));
    c->ckpt_k = calloc((size_t)in->n_layer, sizeof(*c->ckpt_k));
    c->ckpt_v = calloc((size_t)in->n_layer, sizeof(*c->ckpt_v));
    if (c->ctx_kv == NULL || c->k_cache == NULL || c->v_cache == NULL || c->ckpt_k == NULL || c->ckpt_v == NULL) {
        return ts_set_error(err, err_size, "out of memory creating the KV cache");
    }
    for (int il = 0; il < in->n_layer; il++) {
        const int64_t n_cells_all = (int64_t)c->n_seq * ts_layer_cells(c, il);
        c->k_cache[il] = new_cache(c, c->params.type_k, n_embd_kv, n_cells_all, 1);
        c->v_cache[il] = new_cache(c, c->params.type_v, n_embd_kv, n_cells_all, c->params.flash_attn);
        if (c->n_cells_ckpt > 0 && c->model->layers[il].swa) {
            const int64_t n_ckpt_all = (int64_t)c->n_seq * c->n_cells_ckpt;
            c->ckpt_k[il] = new_cache(c, c->params.type_k, n_embd_kv, n_ckpt_all, 1);
            c->ckpt_v[il] = new_cache(c, c->params.type_v, n_embd_kv, n_ckpt_all, c->params.flash_attn);
        }
    }
    /* llama.cpp's sizes: for K the largest power of two dividing a head, for V 64 */
    const int64_t hd = in->n_embd_head;
    int64_t n_rot_k = 64;
    while (hd % (2 * n_rot_k) == 0) {
        n_rot_k *= 2;
    }
    c->rot_k = new_rotation(c, c->params.type_k, n_rot_k);
    c->rot_v = new_rotation(c, c->params.type_v, 64);
    ggml_backend_buffer_type_t buft = c->model->on_cpu ? ggml_backend_cpu_buffer_type()
                                                       : ggml_backend_dev_buffer_type(c->model->device);
    c->buf_kv = ggml_backend_alloc_ctx_tensors_from_buft(c->ctx_kv, buft);
    if (c->buf_kv == NULL) {
        const enum ggml_type tk = (enum ggml_type)c->params.type_k, tv = (enum ggml_type)c->params.type_v;
        const int quantized = ggml_is_quantized(tk) && ggml_is_quantized(tv);
        return ts_set_error(err, err_size,
                            "out of memory allocating a KV cache of %d sequence(s) x %d tokens (%.2f GiB, %s keys and "
                            "%s values): a smaller context%s",
                            c->n_seq, c->n_cells, (double)kv_cache_bytes(c->ctx_kv, buft) / (1 << 30),
                            ggml_type_name(tk), ggml_type_name(tv),
                            quantized ? "" : ", or a quantized cache (q8_0 takes about half of f16)");
    }
    /* never-written cells are masked out, but 0 * garbage could still be NaN: start from zeros */
    ggml_backend_buffer_clear(c->buf_kv, 0);
    if (set_hadamard(c->rot_k) != 0 || set_hadamard(c->rot_v) != 0) {
        return ts_set_error(err, err_size, "out of memory creating the KV cache");
    }
    return 0;
}

/* The CPU backend and its graph allocator; or for a model on another device, that device's backend, the CPU's
 * as fallback, and the scheduler over both. */
static int init_backends(ts_context *c, char *err, size_t err_size) {
    const ts_model *m = c->model;
    if (m->on_cpu) {
        c->backend = ggml_backend_cpu_init();
        c->galloc = ggml_gallocr_new(ggml_backend_cpu_buffer_type());
        if (c->backend == NULL || c->galloc == NULL) {
            return ts_set_error(err, err_size, "out of memory creating the CPU backend");
        }
        ggml_backend_cpu_set_n_threads(c->backend, c->params.n_threads);
        return 0;
    }
    c->backend = ggml_backend_dev_init(m->device, NULL);
    c->backend_cpu = ggml_backend_cpu_init();
    if (c->backend == NULL || c->backend_cpu == NULL) {
        return ts_set_error(err, err_size, "cannot start device '%s'", ggml_backend_dev_name(m->device));
    }
    ggml_backend_cpu_set_n_threads(c->backend_cpu, c->params.n_threads);
    ggml_backend_t backends[2] = {c->backend, c->backend_cpu}; /* the first that runs an op gets it */
    /* its hash set holds a graph's nodes and leafs (the weights) together */
    c->sched = ggml_backend_sched_new(backends, NULL, 2, 2 * (size_t)c->graph_max_nodes, false, false);
    if (c->sched == NULL) {
        return ts_set_error(err, err_size, "cannot create a backend scheduler for device '%s'",
                            ggml_backend_dev_name(m->device));
    }
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
    c->params.n_seq = params->n_seq > 0 ? params->n_seq : 1;
    if (params->sparse_mode == TS_SPARSE_AUTO) {
        ts_model_sparse_mode(model, TS_SPARSE_AUTO, model->on_cpu, &c->params.sparse_mode, NULL, 0);
    }
    c->n_seq = c->params.n_seq;
    c->n_ctx = params->n_ctx > 0 ? params->n_ctx : model->info.n_ctx_train;
    c->n_cells = (int32_t)(((int64_t)c->n_ctx + TS_KV_PAD - 1) / TS_KV_PAD * TS_KV_PAD);
    c->kv_span_step = kv_span_step();
    ts_window_size(c);
    /* phi3's factors for contexts past the original one (llama.cpp counts a sequence's cells, as allocated) */
    c->rope_factors = model->rope_freqs != NULL           ? model->rope_freqs
                      : c->n_cells > model->n_ctx_orig_file ? model->rope_long
                                                        : model->rope_short;
    c->threshold = isnan(params->predictor_threshold) ? model->info.predictor_threshold : params->predictor_threshold;
    /* each group of a batch adds its own attention nodes */
    c->graph_max_nodes = (64 + 16 * c->n_seq) * model->info.n_layer + 1024;
    c->graph_meta_size = ggml_tensor_overhead() * (size_t)c->graph_max_nodes +
                         ggml_graph_overhead_custom((size_t)c->graph_max_nodes, false);
    c->graph_meta = malloc(c->graph_meta_size);
    c->n_past = calloc((size_t)c->n_seq, sizeof(*c->n_past));
    c->swa_base = calloc((size_t)c->n_seq, sizeof(*c->swa_base));
    c->ckpt_pos = calloc((size_t)c->n_seq, sizeof(*c->ckpt_pos));
    c->ckpt_start = calloc((size_t)c->n_seq, sizeof(*c->ckpt_start));
    c->graph.groups = calloc((size_t)c->n_seq, sizeof(*c->graph.groups));
    if (c->graph_meta == NULL || c->n_past == NULL || c->swa_base == NULL || c->ckpt_pos == NULL ||
        c->ckpt_start == NULL || c->graph.groups == NULL) {
        ts_set_error(err, err_size, "out of memory creating the context");
        ts_context_free(c);
        return NULL;
    }
    if (init_backends(c, err, err_size) != 0 || init_kv_cache(c, err, err_size) != 0 ||
        init_sparse_layers(c, err, err_size) != 0 || ts_moe_init(c, err, err_size) != 0) {
        ts_context_free(c);
        return NULL;
    }
    return c;
}

/* Forgets the cached graph (its tensors live in the allocator's buffer, which the next allocation may move). */
static void drop_graph(ts_context *c) {
    if (c->graph_ctx != NULL) {
        ggml_free(c->graph_ctx);
        c->graph_ctx = NULL;
    }
}

/* Forgets the chosen-group tensors of the last graph: the next graph build sets those it has. */
static void clear_group_ids(ts_context *c) {
    memset(c->group_ids, 0, sizeof(*c->group_ids) * (size_t)c->model->info.n_layer);
}

void ts_context_free(ts_context *c) {
    if (c == NULL) {
        return;
    }
    drop_graph(c);
    if (c->galloc != NULL) {
        ggml_gallocr_free(c->galloc);
    }
    if (c->sched != NULL) {
        ggml_backend_sched_free(c->sched);
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
    if (c->backend_cpu != NULL) {
        ggml_backend_free(c->backend_cpu);
    }
    free(c->sparse);
    free(c->gate_scale);
    free(c->act_scale);
    ts_moe_free(c);
    free(c->group_top_k);
    free(c->group_ids);
    free(c->k_cache);
    free(c->v_cache);
    free(c->graph_meta);
    free(c->n_past);
    free(c->swa_base);
    free(c->ckpt_pos);
    free(c->ckpt_start);
    free(c->ckpt_k);
    free(c->ckpt_v);
    free(c->graph.groups);
    free(c);
}

int32_t ts_context_n_past(const ts_context *c) {
    return c->n_past[0];
}

int32_t ts_context_n_past_seq(const ts_context *c, int32_t seq) {
    return seq >= 0 && seq < c->n_seq ? c->n_past[seq] : -1;
}

int32_t ts_context_n_ctx(const ts_context *c) {
    return c->n_ctx;
}

int32_t ts_context_n_seq(const ts_context *c) {
    return c->n_seq;
}

int32_t ts_context_sparse_mode(const ts_context *c) {
    return c->params.sparse_mode;
}

int ts_context_check_seq(const ts_context *c, int32_t seq, char *err, size_t err_size) {
    if (seq < 0 || seq >= c->n_seq) {
        return ts_fail(err, err_size, TS_ERR_ARGUMENT, "sequence %d out of [0, %d)", seq, c->n_seq);
    }
    return 0;
}

int32_t ts_context_truncate_seq(ts_context *c, int32_t seq, int32_t n_keep, char *err, size_t err_size) {
    const int bad_seq = ts_context_check_seq(c, seq, err, err_size);
    if (bad_seq != 0) {
        return bad_seq;
    }
    if (n_keep < 0 || n_keep > c->n_past[seq]) {
        return ts_fail(err, err_size, TS_ERR_ARGUMENT, "cannot keep %d tokens: the context holds %d", n_keep, c->n_past[seq]);
    }
    if (!ts_window_keeps(c, seq, n_keep)) {
        return ts_fail(err, err_size, TS_ERR_ARGUMENT,
                       "cannot keep %d tokens of sequence %d: its sliding-window layers cache positions from %d on, "
                       "not the window of position %d (swa_full caches every position)",
                       n_keep, seq, c->swa_base[seq], n_keep);
    }
    ts_window_keep(c, seq, n_keep);
    c->n_past[seq] = n_keep;
    return 0;
}

int32_t ts_context_n_keepable_seq(const ts_context *c, int32_t seq, int32_t n_keep) {
    if (seq < 0 || seq >= c->n_seq) {
        return -1;
    }
    const int32_t n = n_keep < c->n_past[seq] ? n_keep : c->n_past[seq];
    return n > 0 && ts_window_keeps(c, seq, n) ? n : 0;
}

uint64_t ts_context_kv_size(const ts_context *c) {
    return (uint64_t)ggml_backend_buffer_get_size(c->buf_kv);
}

int32_t ts_context_truncate(ts_context *c, int32_t n_keep, char *err, size_t err_size) {
    return ts_context_truncate_seq(c, 0, n_keep, err, err_size);
}

void ts_context_set_threshold(ts_context *c, float threshold) {
    c->threshold = threshold;
    for (int il = 0; il < c->model->info.n_layer; il++) {
        c->sparse[il].threshold = threshold;
    }
    ts_moe_set_threshold(c, threshold);
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
    drop_graph(c); /* whether a layer runs dense was decided when the graph was built */
}

/* A context-owned copy of n values (NULL for none) in place of *own; 0, or -1 when out of memory. */
static int replace_copy(float **own, const float *values, size_t n) {
    float *copy = NULL;
    if (values != NULL) {
        copy = malloc(sizeof(float) * n);
        if (copy == NULL) {
            return -1;
        }
        memcpy(copy, values, sizeof(float) * n);
    }
    free(*own);
    *own = copy;
    return 0;
}

int32_t ts_context_set_ffn_scales(ts_context *c, const float *gate, const float *act, char *err, size_t err_size) {
    const size_t n_ff = (size_t)c->model->info.n_ff, n = (size_t)c->model->info.n_layer * n_ff;
    if (replace_copy(&c->gate_scale, gate, n) != 0 || replace_copy(&c->act_scale, act, n) != 0) {
        return ts_set_error(err, err_size, "out of memory");
    }
    for (int il = 0; il < c->model->info.n_layer; il++) {
        c->sparse[il].gate_scale = c->gate_scale != NULL ? c->gate_scale + (size_t)il * n_ff : NULL;
        c->sparse[il].act_scale = c->act_scale != NULL ? c->act_scale + (size_t)il * n_ff : NULL;
    }
    return 0;
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

void ts_context_set_node_timing(ts_context *c, int32_t on) {
    for (int il = 0; il < c->model->info.n_layer; il++) {
        c->sparse[il].time_nodes = on != 0;
    }
}

void ts_context_get_stats(const ts_context *c, ts_layer_stats *stats) {
    for (int il = 0; il < c->model->info.n_layer; il++) {
        stats[il] = c->sparse[il].stats;
    }
}

int32_t ts_context_set_group_top_k(ts_context *c, const int32_t *top_k, char *err, size_t err_size) {
    const ts_model_info *in = &c->model->info;
    const int32_t n_groups = in->group_size > 0 ? in->n_ff / in->group_size : 0;
    for (int il = 0; il < in->n_layer; il++) {
        if (top_k[il] < 1 || top_k[il] > n_groups) {
            return ts_set_error(err, err_size, "group top-k of layer %d = %d is out of range (1..%d groups)", il,
                                top_k[il], n_groups);
        }
    }
    memcpy(c->group_top_k, top_k, sizeof(int32_t) * (size_t)in->n_layer);
    drop_graph(c); /* k is part of the graph */
    return 0;
}

void ts_context_get_group_top_k(const ts_context *c, int32_t *top_k) {
    memcpy(top_k, c->group_top_k, sizeof(int32_t) * (size_t)c->model->info.n_layer);
}

/* The grouped route's rows read by the evaluation just computed, into the layers' counters. */
static void count_groups(ts_context *c) {
    const ts_model_info *in = &c->model->info;
    for (int il = 0; il < in->n_layer; il++) {
        if (c->group_ids[il] != NULL) {
            ts_grouped_count(c->group_ids[il], in->group_size, in->n_ff / in->group_size, &c->sparse[il].stats);
        }
    }
}

void ts_context_reset_stats(ts_context *c) {
    for (int il = 0; il < c->model->info.n_layer; il++) {
        memset(&c->sparse[il].stats, 0, sizeof(c->sparse[il].stats));
    }
    ts_moe_reset_stats(c);
}

/* Token t's K (and V) cache row, and where V is cached transposed (v_cells not NULL) its V cache elements, in a
 * cache of n_cells_all cells, it going to cell `cell`. */
static void fill_cache_slots(int32_t t, int64_t cell, int64_t n_embd_kv, int64_t n_cells_all,
                             struct ggml_tensor *k_rows, struct ggml_tensor *v_cells) {
    ((int64_t *)k_rows->data)[t] = cell;
    if (v_cells == NULL) {
        return;
    }
    int64_t *v = (int64_t *)v_cells->data + (int64_t)t * n_embd_kv;
    for (int64_t e = 0; e < n_embd_kv; e++) {
        v[e] = e * n_cells_all + cell;
    }
}

/* Row i of an attention mask [n_kv, n_tokens], F32 or (flash attention) F16: 0 where cell j is seen, else -inf. */
static void set_mask_entry(struct ggml_tensor *mask, int32_t i, int32_t j, int seen) {
    const float value = seen ? 0.0f : -INFINITY;
    if (mask->type == GGML_TYPE_F16) {
        ((ggml_fp16_t *)mask->data)[(size_t)i * (size_t)mask->ne[0] + (size_t)j] = ggml_fp32_to_fp16(value);
    } else {
        ((float *)mask->data)[(size_t)i * (size_t)mask->ne[0] + (size_t)j] = value;
    }
}

/* Positions, cache rows and cells, attention masks and output rows of the groups' tokens. */
static void fill_inputs(const ts_context *c, const ts_graph *g, const int32_t *tokens) {
    const ts_model_info *in = &c->model->info;
    const int64_t n_embd_kv = (int64_t)in->n_head_kv * in->n_embd_head;
    const int32_t n_swa = c->model->n_swa;
    memcpy(g->tokens->data, tokens, sizeof(int32_t) * (size_t)g->n_tokens);
    int32_t *pos = g->pos != NULL ? g->pos->data : NULL;
    for (int32_t k = 0; k < g->n_groups; k++) {
        const ts_group *gr = &g->groups[k];
        const int32_t swa_pos0 = c->swa_base[gr->seq] + gr->swa_first; /* the position of the window span's cell 0 */
        for (int32_t i = 0; i < gr->n_tokens; i++) {
            const int32_t t = gr->first + i, p = c->n_past[gr->seq] + i;
            if (pos != NULL) {
                pos[t] = p;
            }
            if (g->attn_temp != NULL) { /* in llama.cpp's float and double steps */
                const double steps = floorf((float)p / (float)c->model->attn_temp_floor);
                ((float *)g->attn_temp->data)[t] = (float)(log(steps + 1.0) * c->model->attn_temp_scale + 1.0);
            }
            fill_cache_slots(t, (int64_t)gr->seq * c->n_cells + p, n_embd_kv, (int64_t)c->n_seq * c->n_cells,
                             g->k_rows, g->v_cells);
            if (g->k_rows_swa != g->k_rows) {
                fill_cache_slots(t, (int64_t)gr->seq * c->n_cells_swa + p - c->swa_base[gr->seq], n_embd_kv,
                                 (int64_t)c->n_seq * c->n_cells_swa, g->k_rows_swa, g->v_cells_swa);
            }
            /* causal mask: the token sees its sequence's positions 0..p; in a sliding window, those of p - j < n_swa */
            if (gr->kq_mask != NULL) {
                for (int32_t j = 0; j < gr->n_kv; j++) {
                    set_mask_entry(gr->kq_mask, i, j, j <= p);
                }
            }
            if (gr->kq_mask_swa != NULL) {
                for (int32_t j = 0; j < gr->n_kv_swa; j++) {
                    const int32_t q = swa_pos0 + j;
                    set_mask_entry(gr->kq_mask_swa, i, j, q <= p && p - q < n_swa);
                }
            }
        }
    }
    if (g->out_ids != NULL) {
        int32_t *ids = g->out_ids->data;
        for (int32_t i = 0; i < g->n_outputs; i++) {
            ids[i] = g->n_tokens - g->n_outputs + i;
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
    if (c->sched != NULL) {
        ggml_backend_sched_reset(c->sched); /* forget the previous graph's split and allocation */
    }
    if (c->sched != NULL ? !ggml_backend_sched_alloc_graph(c->sched, gf) : !ggml_gallocr_alloc_graph(c->galloc, gf)) {
        return ts_set_error(err, err_size, "out of memory allocating the compute graph for %d tokens", n_tokens);
    }
    return 0;
}

/* Runs an allocated graph; with the scheduler, as often as wanted until the next alloc_graph. The timed sparse nodes'
 * spans (node timing) are then added to their layers' stats. */
static int compute_graph(ts_context *c, struct ggml_cgraph *gf, char *err, size_t err_size) {
    const enum ggml_status status =
        c->sched != NULL ? ggml_backend_sched_graph_compute(c->sched, gf) : ggml_backend_graph_compute(c->backend, gf);
    for (int il = 0; il < c->model->info.n_layer; il++) {
        /* taken either way: a failed graph's spans must not be added to the next one's */
        ts_sparse_layer *sl = &c->sparse[il];
        const uint64_t act_us = ts_node_span_take(&sl->act_span), down_us = ts_node_span_take(&sl->down_span);
        if (status == GGML_STATUS_SUCCESS) {
            sl->stats.act_us += act_us;
            sl->stats.down_us += down_us;
        }
    }
    if (status != GGML_STATUS_SUCCESS) {
        return ts_set_error(err, err_size, "ggml graph computation failed on device '%s'",
                            ggml_backend_dev_name(c->model->device));
    }
    return 0;
}

/*
 * The end of the cells the attention spans in a cache of n_cells cells per sequence whose first n_used cells are
 * used: whole multiples of c->kv_span_step, or with flash attention of TS_KV_PAD, as llama.cpp's: ggml's CPU
 * flash attention of one token over 512 cells or more (F16 or F32 caches, 2 threads or more) splits the cells into one
 * chunk per thread and merges the chunks' sums, so its rounding depends on the span (masked cells it skips: the wider
 * span costs little).
 */
static int32_t kv_span(const ts_context *c, int32_t n_used, int32_t n_cells) {
    const int32_t step = c->params.flash_attn ? TS_KV_PAD : c->kv_span_step;
    const int32_t n_kv = (n_used + step - 1) / step * step;
    return n_kv < n_cells ? n_kv : n_cells;
}

/* The group of sequence seq's next n tokens, at batch rows first..first + n - 1, and the cells its attention spans;
 * sliding-window layers holding a window's worth of cells first make room for the n tokens (window_cache.h). With
 * flash attention, sliding layers that cache every position span their cells from 0, as llama.cpp's (the chunks
 * above); a window's worth of cells cannot be split as llama.cpp splits every position's. */
static ts_group next_group(ts_context *c, int32_t seq, int32_t first, int32_t n) {
    ts_window_make_room(c, seq, n);
    const int32_t p0 = c->n_past[seq], base = c->swa_base[seq];
    const int from_zero = c->params.flash_attn && c->n_cells_swa == c->n_cells;
    const int32_t swa_first = from_zero ? 0 : ts_window_start(c, seq, p0) - base;
    return (ts_group){.seq = seq, .first = first, .n_tokens = n, .n_kv = kv_span(c, p0 + n, c->n_cells),
                      .swa_first = swa_first, .n_kv_swa = kv_span(c, p0 + n - base, c->n_cells_swa) - swa_first};
}

static int same_layout(const ts_graph *g, const ts_group *groups, int32_t n_groups, int32_t n_tokens,
                       int32_t n_outputs, int32_t dense_ffn) {
    if (g->n_tokens != n_tokens || g->n_outputs != n_outputs || g->dense_ffn != dense_ffn || g->n_groups != n_groups) {
        return 0;
    }
    for (int32_t i = 0; i < n_groups; i++) {
        const ts_group *a = &g->groups[i], *b = &groups[i];
        if (a->seq != b->seq || a->first != b->first || a->n_tokens != b->n_tokens || a->n_kv != b->n_kv ||
            a->swa_first != b->swa_first || a->n_kv_swa != b->n_kv_swa) {
            return 0;
        }
    }
    return 1;
}

/* Makes c->graph the allocated graph of this layout: the cached one when it matches, else a new one. */
static int prepare_graph(ts_context *c, const ts_group *groups, int32_t n_groups, int32_t n_tokens, int32_t n_outputs,
                         int32_t dense_ffn, char *err, size_t err_size) {
    ts_graph *g = &c->graph;
    if (c->graph_ctx != NULL && same_layout(g, groups, n_groups, n_tokens, n_outputs, dense_ffn)) {
        return 0;
    }
    drop_graph(c);
    struct ggml_context *ctx0 = graph_context(c, err, err_size);
    if (ctx0 == NULL) {
        return -1;
    }
    g->n_tokens = n_tokens;
    g->n_outputs = n_outputs;
    g->dense_ffn = dense_ffn;
    g->n_groups = n_groups;
    memcpy(g->groups, groups, sizeof(*groups) * (size_t)n_groups);
    clear_group_ids(c);
    ts_graph_build(c, ctx0, g);
    int rc = alloc_graph(c, g->gf, n_tokens, err, err_size);
    if (rc == 0 && !ggml_backend_buffer_is_host(g->tokens->buffer)) { /* fill_inputs writes in place */
        rc = ts_set_error(err, err_size, "graph inputs were placed outside CPU memory on device '%s'",
                          ggml_backend_dev_name(c->model->device));
    }
    if (rc != 0) {
        ggml_free(ctx0);
        return -1;
    }
    c->graph_ctx = ctx0;
    return 0;
}

/* Where ts_context_eval_trace copies the FFN values: [n_layer][n_total][n_ff] arrays, this chunk from row `first`. */
typedef struct trace_dest {
    float *gate;
    float *up;
    int64_t n_total;
    int64_t first;
} trace_dest;

/* t's rows [ne0, T] into dst's [n_layer][n_total][ne0] block at (layer, first) */
static void copy_rows(const struct ggml_tensor *t, float *dst, int64_t layer, const trace_dest *d) {
    if (dst == NULL) {
        return;
    }
    const int64_t n = t->ne[0];
    float *base = dst + ((size_t)layer * (size_t)d->n_total + (size_t)d->first) * (size_t)n;
    for (int64_t r = 0; r < t->ne[1]; r++) {
        ggml_backend_tensor_get(t, base + r * n, (size_t)r * t->nb[1], (size_t)n * sizeof(float));
    }
}

static void copy_trace(const ts_context *c, const trace_dest *d) {
    for (int il = 0; il < c->model->info.n_layer; il++) {
        copy_rows(c->graph.trace[il].gate, d->gate, il, d);
        copy_rows(c->graph.trace[il].up, d->up, il, d);
    }
}

/* One forward pass over the groups' tokens (at most n_batch); out (or NULL) receives the last n_outputs rows'
 * logits (with c->graph.embeddings: embeddings); trace (or NULL) receives every layer's dense FFN values (the graph
 * was built with c->graph.trace). */
static int eval_groups(ts_context *c, const ts_group *groups, int32_t n_groups, const int32_t *tokens,
                       int32_t n_tokens, int32_t n_outputs, int32_t dense_ffn, float *out, const trace_dest *trace,
                       char *err, size_t err_size) {
    if (prepare_graph(c, groups, n_groups, n_tokens, n_outputs, dense_ffn, err, err_size) != 0) {
        return -1;
    }
    fill_inputs(c, &c->graph, tokens);
    if (compute_graph(c, c->graph.gf, err, err_size) != 0) {
        drop_graph(c);
        return -1;
    }
    count_groups(c);
    for (int32_t i = 0; i < n_groups; i++) {
        c->n_past[groups[i].seq] += groups[i].n_tokens;
    }
    if (out != NULL) {
        ggml_backend_tensor_get(c->graph.out, out, 0, ggml_nbytes(c->graph.out));
    }
    if (trace != NULL) {
        copy_trace(c, trace);
    }
    return 0;
}

static int check_tokens(const ts_context *c, const int32_t *tokens, int32_t n_tokens, char *err, size_t err_size) {
    const int32_t n_vocab = c->model->info.n_vocab;
    for (int32_t i = 0; i < n_tokens; i++) {
        if (tokens[i] < 0 || tokens[i] >= n_vocab) {
            return ts_fail(err, err_size, TS_ERR_ARGUMENT, "token %d at index %d is out of the vocabulary (0..%d)", tokens[i], i,
                                n_vocab - 1);
        }
    }
    return 0;
}

/* What evaluating n_tokens more tokens of sequence seq needs: a sequence, room, known tokens. */
static int check_eval(const ts_context *c, int32_t seq, const int32_t *tokens, int32_t n_tokens, char *err,
                      size_t err_size) {
    const int rc = ts_context_check_seq(c, seq, err, err_size);
    if (rc != 0) {
        return rc;
    }
    if (n_tokens <= 0) {
        return ts_fail(err, err_size, TS_ERR_ARGUMENT, "nothing to evaluate: n_tokens = %d", n_tokens);
    }
    if ((int64_t)c->n_past[seq] + n_tokens > c->n_ctx) {
        return ts_fail(err, err_size, TS_ERR_CONTEXT_FULL, "context overflow: %d cached + %d new tokens exceed n_ctx = %d",
                            c->n_past[seq], n_tokens, c->n_ctx);
    }
    return check_tokens(c, tokens, n_tokens, err, err_size);
}

/* Sequence seq's n_tokens new tokens in n_batch blocks (checked by check_eval); out (or NULL) receives every row's
 * output of row_width floats (all) or the last token's. */
static int eval_blocks(ts_context *c, int32_t seq, const int32_t *tokens, int32_t n_tokens, int32_t dense_ffn,
                       float *out, size_t row_width, int32_t all, char *err, size_t err_size) {
    /* a prompt's last whole n_batch block, which the next prompt may keep: the sliding-window layers' checkpoint */
    const int32_t checkpoint_at = n_tokens > 1 ? (c->n_past[seq] + n_tokens) / c->params.n_batch * c->params.n_batch : -1;
    for (int32_t start = 0; start < n_tokens; start += c->params.n_batch) {
        const int32_t n = n_tokens - start < c->params.n_batch ? n_tokens - start : c->params.n_batch;
        const int is_last = start + n == n_tokens;
        float *dst = NULL;
        if (out != NULL && all) {
            dst = out + (size_t)start * row_width;
        } else if (out != NULL && is_last) {
            dst = out;
        }
        const ts_group group = next_group(c, seq, 0, n);
        if (eval_groups(c, &group, 1, tokens + start, n, all ? n : 1, dense_ffn, dst, NULL, err, err_size) != 0) {
            return -1;
        }
        if (c->n_past[seq] == checkpoint_at) {
            ts_window_checkpoint(c, seq);
        }
    }
    return 0;
}

int32_t ts_context_eval_seq(ts_context *c, int32_t seq, const int32_t *tokens, int32_t n_tokens, int32_t dense_ffn,
                            float *logits, int32_t logits_all, char *err, size_t err_size) {
    const int rc = check_eval(c, seq, tokens, n_tokens, err, err_size);
    if (rc != 0) {
        return rc;
    }
    return eval_blocks(c, seq, tokens, n_tokens, dense_ffn, logits, (size_t)c->model->info.n_vocab, logits_all, err,
                       err_size);
}

int32_t ts_context_eval(ts_context *c, const int32_t *tokens, int32_t n_tokens, int32_t dense_ffn, float *logits,
                        int32_t logits_all, char *err, size_t err_size) {
    return ts_context_eval_seq(c, 0, tokens, n_tokens, dense_ffn, logits, logits_all, err, err_size);
}

int32_t ts_context_decode_batch(ts_context *c, const int32_t *seqs, const int32_t *tokens, int32_t n, float *logits,
                                char *err, size_t err_size) {
    if (n <= 0 || n > c->n_seq || n > c->params.n_batch) {
        return ts_fail(err, err_size, TS_ERR_ARGUMENT, "a batch holds 1 to %d tokens (one per sequence), got %d",
                            c->n_seq < c->params.n_batch ? c->n_seq : c->params.n_batch, n);
    }
    int rc = check_tokens(c, tokens, n, err, err_size);
    if (rc != 0) {
        return rc;
    }
    ts_group *groups = malloc(sizeof(*groups) * (size_t)n);
    if (groups == NULL) {
        return ts_set_error(err, err_size, "out of memory");
    }
    for (int32_t i = 0; i < n && rc == 0; i++) {
        const int32_t seq = seqs[i];
        rc = ts_context_check_seq(c, seq, err, err_size);
        for (int32_t k = 0; k < i && rc == 0; k++) {
            if (seqs[k] == seq) {
                rc = ts_fail(err, err_size, TS_ERR_ARGUMENT, "sequence %d appears twice in one batch", seq);
            }
        }
        if (rc == 0 && c->n_past[seq] + 1 > c->n_ctx) {
            rc = ts_fail(err, err_size, TS_ERR_CONTEXT_FULL, "context overflow: sequence %d holds %d tokens, n_ctx = %d", seq,
                              c->n_past[seq], c->n_ctx);
        }
        if (rc == 0) {
            groups[i] = next_group(c, seq, i, 1);
        }
    }
    if (rc == 0) {
        rc = eval_groups(c, groups, n, tokens, n, n, 0, logits, NULL, err, err_size);
    }
    free(groups);
    return rc;
}

int32_t ts_context_eval_trace(ts_context *c, const int32_t *tokens, int32_t n_tokens, float *gate, float *up, char *err,
                              size_t err_size) {
    int rc = check_eval(c, 0, tokens, n_tokens, err, err_size);
    if (rc != 0) {
        return rc;
    }
    if (c->model->info.n_expert > 0) {
        return ts_set_error(err, err_size, "%s: FFN traces (calibration) of mixture-of-experts models are not supported",
                            c->model->file->path);
    }
    trace_dest d = {.gate = gate, .up = up, .n_total = n_tokens};
    ts_ffn_trace *layers = calloc((size_t)c->model->info.n_layer, sizeof(*layers));
    if (layers == NULL) {
        return ts_set_error(err, err_size, "out of memory");
    }
    drop_graph(c); /* a traced graph is built for this call only */
    c->graph.trace = layers;
    for (int32_t start = 0; rc == 0 && start < n_tokens; start += c->params.n_batch) {
        const int32_t n = n_tokens - start < c->params.n_batch ? n_tokens - start : c->params.n_batch;
        const ts_group group = next_group(c, 0, 0, n);
        d.first = start;
        /* every row is an output: the last layer's FFN runs for every token */
        rc = eval_groups(c, &group, 1, tokens + start, n, n, 1, NULL, &d, err, err_size);
    }
    drop_graph(c);
    c->graph.trace = NULL;
    free(layers);
    return rc;
}

int32_t ts_context_embed_seq(ts_context *c, int32_t seq, const int32_t *tokens, int32_t n_tokens, float *out,
                             int32_t all, char *err, size_t err_size) {
    if (out == NULL) {
        return ts_fail(err, err_size, TS_ERR_ARGUMENT, "no output buffer for the embeddings");
    }
    int rc = check_eval(c, seq, tokens, n_tokens, err, err_size);
    if (rc != 0) {
        return rc;
    }
    drop_graph(c); /* an embeddings graph is built for this call only */
    c->graph.embeddings = 1;
    rc = eval_blocks(c, seq, tokens, n_tokens, 1, out, (size_t)c->model->info.n_embd, all, err, err_size);
    drop_graph(c);
    c->graph.embeddings = 0;
    return rc;
}

int32_t ts_context_eval_ffn(ts_context *c, int32_t layer, const float *h, int32_t n_tokens, int32_t dense_ffn,
                            float *out, int64_t *compute_us, char *err, size_t err_size) {
    if (layer < 0 || layer >= c->model->info.n_layer) {
        return ts_fail(err, err_size, TS_ERR_ARGUMENT, "layer %d out of [0, %d)", layer, c->model->info.n_layer);
    }
    if (n_tokens <= 0 || n_tokens > c->params.n_batch) {
        return ts_fail(err, err_size, TS_ERR_ARGUMENT, "n_tokens = %d is not in [1, n_batch = %d]", n_tokens, c->params.n_batch);
    }
    drop_graph(c); /* this graph takes the metadata memory and the allocator */
    struct ggml_context *ctx0 = graph_context(c, err, err_size);
    if (ctx0 == NULL) {
        return -1;
    }
    struct ggml_tensor *in = NULL, *res = NULL;
    clear_group_ids(c);
    struct ggml_cgraph *gf = ts_graph_build_ffn(c, ctx0, layer, n_tokens, dense_ffn, &in, &res);
    int rc = alloc_graph(c, gf, n_tokens, err, err_size);
    if (rc == 0) {
        ggml_backend_tensor_set(in, h, 0, ggml_nbytes(in));
        const int64_t t0 = ggml_time_us();
        rc = compute_graph(c, gf, err, err_size);
        if (compute_us != NULL) {
            *compute_us = ggml_time_us() - t0;
        }
    }
    if (rc == 0) {
        count_groups(c);
        ggml_backend_tensor_get(res, out, 0, ggml_nbytes(res));
    }
    ggml_free(ctx0);
    clear_group_ids(c);
    return rc;
}

int32_t ts_context_check_params(const ts_model *model, const ts_context_params *params, char *err, size_t err_size) {
    return check_params(model, params, err, err_size) == 0 ? TS_OK : TS_ERR_ARGUMENT;
}
