/*
 * One sequence's cached keys and values as bytes (turbosparse.h: ts_context_seq_state_*), as llama.cpp's
 * llama_state_seq_get_data: what a sequence holds, saved and later restored into a sequence of a context with the
 * same cache layout, so that evaluation goes on from there without computing those tokens again.
 *
 * The bytes: a header of int32 values (below), then per layer the used cells of its K cache, of its V cache (cell by
 * cell, or transposed value by value: each value's cells in turn), and for sliding-window layers holding a window's
 * worth, the used cells of their checkpoint's K and V. Used cells: positions 0..n_past - 1 in cells 0..n_past - 1;
 * in window caches positions swa_base..n_past - 1 from cell 0; in a checkpoint ckpt_start..ckpt_pos - 1 (window_cache.h).
 */
#include "context.h"
#include "ts_error.h"

#include <string.h>

#define SEQ_STATE_MAGIC "TSKV"
#define SEQ_STATE_VERSION 1

typedef struct seq_state_header {
    char magic[4];
    int32_t version;
    int32_t n_layer, n_embd_kv, type_k, type_v, flash_attn;
    int32_t rope_factors; /* which of the model's frequency factors roped the keys (rope_kind): phi3's depend on n_ctx */
    int32_t windowed;     /* sliding-window layers cache a window's worth: n_cells_swa and n_cells_ckpt must match */
    int32_t n_cells_swa, n_cells_ckpt;
    int32_t n_past, swa_base, ckpt_pos, ckpt_start;
} seq_state_header;

/* 0: none, 1: rope_freqs, 2: rope_long, 3: rope_short */
static int32_t rope_kind(const ts_context *c) {
    const ts_model *m = c->model;
    return c->rope_factors == NULL ? 0 : c->rope_factors == m->rope_freqs ? 1 : c->rope_factors == m->rope_long ? 2 : 3;
}

static int windowed(const ts_context *c) {
    return c->n_cells_swa < c->n_cells;
}

static seq_state_header header_of(const ts_context *c, int32_t seq) {
    const ts_model_info *in = &c->model->info;
    seq_state_header h = {
        .version = SEQ_STATE_VERSION, .n_layer = in->n_layer, .n_embd_kv = in->n_head_kv * in->n_embd_head,
        .type_k = c->params.type_k, .type_v = c->params.type_v, .flash_attn = c->params.flash_attn,
        .rope_factors = rope_kind(c), .windowed = windowed(c), .n_cells_swa = windowed(c) ? c->n_cells_swa : 0, .n_cells_ckpt = c->n_cells_ckpt,
        .n_past = c->n_past[seq], .swa_base = c->swa_base[seq], .ckpt_pos = c->ckpt_pos[seq],
        .ckpt_start = c->ckpt_start[seq]};
    memcpy(h.magic, SEQ_STATE_MAGIC, 4);
    return h;
}

/* Cells of layer il's cache, and of its checkpoint, that hold h's positions. */
static int64_t used_cells(const ts_context *c, const seq_state_header *h, int il) {
    return c->model->layers[il].swa && h->windowed ? (int64_t)h->n_past - h->swa_base : h->n_past;
}

static int64_t used_checkpoint_cells(const ts_context *c, const seq_state_header *h, int il) {
    const int64_t n = (int64_t)h->ckpt_pos - h->ckpt_start;
    return c->model->layers[il].swa && h->windowed && h->ckpt_pos > 0 && n > 0 ? n : 0;
}

/* Moves n cells from cell0 of cache t to out (save) or from in (load) at byte *at, or neither (counting only), and
 * advances *at past them. A cell is a row, or (transposed) one element of every row. */
static void move_cells(struct ggml_tensor *t, int64_t cell0, int64_t n, int cells_are_rows, uint8_t *out,
                       const uint8_t *in, size_t *at) {
    if (n == 0) {
        return;
    }
    const int64_t n_runs = cells_are_rows ? 1 : t->ne[1];
    const size_t cell_size = cells_are_rows ? t->nb[1] : t->nb[0]; /* transposed caches are never quantized */
    const size_t size = (size_t)n * cell_size;
    for (int64_t r = 0; r < n_runs; r++) {
        const size_t offset = (size_t)r * (cells_are_rows ? 0 : t->nb[1]) + (size_t)cell0 * cell_size;
        if (out != NULL) {
            ggml_backend_tensor_get(t, out + *at, offset, size);
        } else if (in != NULL) {
            ggml_backend_tensor_set(t, in + *at, offset, size);
        }
        *at += size;
    }
}

/* Walks the used cells of sequence seq's layers in the bytes' order (to out, from in, or neither); returns the bytes
 * walked. */
static size_t walk_cells(ts_context *c, int32_t seq, const seq_state_header *h, uint8_t *out, const uint8_t *in) {
    size_t at = 0;
    for (int il = 0; il < c->model->info.n_layer; il++) {
        const int64_t cell0 = (int64_t)seq * ts_layer_cells(c, il), n = used_cells(c, h, il);
        move_cells(c->k_cache[il], cell0, n, 1, out, in, &at);
        move_cells(c->v_cache[il], cell0, n, c->params.flash_attn, out, in, &at);
        const int64_t n_ckpt = used_checkpoint_cells(c, h, il);
        if (n_ckpt > 0) {
            const int64_t ckpt0 = (int64_t)seq * c->n_cells_ckpt;
            move_cells(c->ckpt_k[il], ckpt0, n_ckpt, 1, out, in, &at);
            move_cells(c->ckpt_v[il], ckpt0, n_ckpt, c->params.flash_attn, out, in, &at);
        }
    }
    return at;
}

uint64_t ts_context_seq_state_size(ts_context *c, int32_t seq) {
    if (seq < 0 || seq >= c->n_seq) {
        return 0;
    }
    const seq_state_header h = header_of(c, seq);
    return sizeof(h) + walk_cells(c, seq, &h, NULL, NULL);
}

int32_t ts_context_seq_state_get(ts_context *c, int32_t seq, void *dst, uint64_t size, char *err, size_t err_size) {
    const int bad_seq = ts_context_check_seq(c, seq, err, err_size);
    if (bad_seq != 0) {
        return bad_seq;
    }
    const seq_state_header h = header_of(c, seq);
    const uint64_t need = sizeof(h) + walk_cells(c, seq, &h, NULL, NULL);
    if (dst == NULL || size != need) {
        return ts_fail(err, err_size, TS_ERR_ARGUMENT, "the state of sequence %d takes %llu bytes, not %llu", seq,
                       (unsigned long long)need, (unsigned long long)size);
    }
    memcpy(dst, &h, sizeof(h));
    walk_cells(c, seq, &h, (uint8_t *)dst + sizeof(h), NULL);
    return 0;
}

/* A ggml type's name, for a number read from the bytes too ("?" for none) */
static const char *type_label(int32_t type) {
    return type >= 0 && type < GGML_TYPE_COUNT ? ggml_type_name((enum ggml_type)type) : "?";
}

/* Whether h describes positions this context's sequences can hold in its cache layout (err filled if not). */
static int check_header(const ts_context *c, const seq_state_header *h, uint64_t size, char *err, size_t err_size) {
    const seq_state_header own = header_of(c, 0);
    if (size < sizeof(*h) || memcmp(h->magic, SEQ_STATE_MAGIC, 4) != 0) {
        return ts_fail(err, err_size, TS_ERR_ARGUMENT, "not a sequence state (%llu bytes without the '%s' header)",
                       (unsigned long long)size, SEQ_STATE_MAGIC);
    }
    if (h->version != SEQ_STATE_VERSION) {
        return ts_fail(err, err_size, TS_ERR_ARGUMENT, "sequence state version %d, this library reads %d", h->version,
                       SEQ_STATE_VERSION);
    }
    if (h->n_layer != own.n_layer || h->n_embd_kv != own.n_embd_kv) {
        return ts_fail(err, err_size, TS_ERR_ARGUMENT,
                       "the sequence state is of a model of %d layers x %d cached values, this one has %d x %d",
                       h->n_layer, h->n_embd_kv, own.n_layer, own.n_embd_kv);
    }
    if (h->type_k != own.type_k || h->type_v != own.type_v || h->flash_attn != own.flash_attn) {
        return ts_fail(err, err_size, TS_ERR_ARGUMENT,
                       "the sequence state's cache is K %s / V %s, flash attention %s; this context's K %s / V %s, %s",
                       type_label(h->type_k), type_label(h->type_v), h->flash_attn ? "on" : "off",
                       type_label(own.type_k), type_label(own.type_v), own.flash_attn ? "on" : "off");
    }
    if (h->rope_factors != own.rope_factors) {
        static const char *const names[] = {"none", "rope_freqs", "rope_long", "rope_short"};
        const int k = h->rope_factors >= 0 && h->rope_factors < 4 ? h->rope_factors : 0;
        return ts_fail(err, err_size, TS_ERR_ARGUMENT,
                       "the sequence state's keys were roped with the model's %s factors, this context ropes with %s "
                       "(a context of another size: phi3's factors depend on n_ctx)",
                       names[k], names[own.rope_factors]);
    }
    if (h->windowed != own.windowed || h->n_cells_swa != own.n_cells_swa || h->n_cells_ckpt != own.n_cells_ckpt) {
        return ts_fail(err, err_size, TS_ERR_ARGUMENT,
                       "the sequence state's sliding-window caches hold %d cells (checkpoint %d), this context's %d "
                       "(%d); 0: every position, as with swa_full",
                       h->n_cells_swa, h->n_cells_ckpt, own.n_cells_swa, own.n_cells_ckpt);
    }
    if (h->n_past < 0 || h->n_past > c->n_ctx) {
        return ts_fail(err, err_size, TS_ERR_CONTEXT_FULL, "the sequence state holds %d tokens, n_ctx is %d",
                       h->n_past, c->n_ctx);
    }
    /* a window's cells hold what the next position sees (window_cache.c: the window only moves past what it needs) */
    const int holds_next = h->swa_base == 0 || (int64_t)h->n_past - c->model->n_swa + 1 >= h->swa_base;
    const int window_ok = h->windowed ? h->swa_base >= 0 && h->swa_base <= h->n_past && holds_next &&
                                            h->n_past - h->swa_base <= h->n_cells_swa && h->ckpt_start >= 0 &&
                                            h->ckpt_pos >= 0 && h->ckpt_pos <= h->n_past &&
                                            h->ckpt_pos - h->ckpt_start <= h->n_cells_ckpt
                                      : h->swa_base == 0 && h->ckpt_pos == 0 && h->ckpt_start == 0;
    if (!window_ok) {
        return ts_fail(err, err_size, TS_ERR_ARGUMENT,
                       "corrupt sequence state: window from position %d, checkpoint %d..%d, of %d tokens",
                       h->swa_base, h->ckpt_start, h->ckpt_pos, h->n_past);
    }
    return 0;
}

int32_t ts_context_seq_state_set(ts_context *c, int32_t seq, const void *src, uint64_t size, int32_t n_tokens,
                                 char *err, size_t err_size) {
    const int bad_seq = ts_context_check_seq(c, seq, err, err_size);
    if (bad_seq != 0) {
        return bad_seq;
    }
    seq_state_header h;
    if (src == NULL || size < sizeof(h)) {
        return ts_fail(err, err_size, TS_ERR_ARGUMENT, "not a sequence state (%llu bytes, the header alone takes %zu)",
                       (unsigned long long)size, sizeof(h));
    }
    memcpy(&h, src, sizeof(h));
    const int bad_header = check_header(c, &h, size, err, err_size);
    if (bad_header != 0) {
        return bad_header;
    }
    if (n_tokens >= 0 && h.n_past != n_tokens) {
        return ts_fail(err, err_size, TS_ERR_ARGUMENT, "corrupt sequence state: %d tokens expected, keys and values of %d",
                       n_tokens, h.n_past);
    }
    const uint64_t need = sizeof(h) + walk_cells(c, seq, &h, NULL, NULL);
    if (size != need) {
        return ts_fail(err, err_size, TS_ERR_ARGUMENT, "corrupt sequence state: %llu bytes where its header says %llu",
                       (unsigned long long)size, (unsigned long long)need);
    }
    walk_cells(c, seq, &h, NULL, (const uint8_t *)src + sizeof(h));
    c->n_past[seq] = h.n_past;
    c->swa_base[seq] = h.swa_base;
    c->ckpt_pos[seq] = h.ckpt_pos;
    c->ckpt_start[seq] = h.ckpt_start;
    return 0;
}
