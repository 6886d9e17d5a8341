/* The sliding-window layers' KV caches of a window's worth of positions (window_cache.h). */
#include "window_cache.h"

#include <stdlib.h>
#include <string.h>

static int32_t align_up(int64_t n, int32_t step) {
    return (int32_t)((n + step - 1) / step * step);
}

/*
 * The window's cells: the window of a batch's first token from the step-aligned cell before it (ts_window_start: at
 * most n_swa + step - 1 positions), and a batch of n_batch tokens after it. The checkpoint's: that window alone. Only
 * where both together are fewer cells than the context's, and on the CPU: on ggml-vulkan (lavapipe) contexts with
 * window caches corrupted the process's heap now and then (1 run in 5-6 of a tiny Gemma 3, a crash inside lavapipe's
 * threads; unexplained, the same graphs over caches of every position ran clean), so a model on another device caches
 * every position; its attention still spans the window's cells only.
 */
void ts_window_size(ts_context *c) {
    const ts_model *m = c->model;
    int any_swa = 0;
    for (int il = 0; il < m->info.n_layer; il++) {
        any_swa |= m->layers[il].swa;
    }
    const int32_t step = c->kv_span_step;
    const int32_t cells = align_up((int64_t)m->n_swa + c->params.n_batch + step, step);
    const int32_t ckpt = align_up((int64_t)m->n_swa + step, step);
    const int windowed = any_swa && !c->params.swa_full && m->on_cpu && (int64_t)cells + ckpt < c->n_cells;
    c->n_cells_swa = windowed ? cells : c->n_cells;
    c->n_cells_ckpt = windowed ? ckpt : 0;
}

/* A kv_span_step-aligned position at or before the window's first, p - n_swa + 1 (0 where no layer slides), and not
 * before the first cached one (a sequence cut back to where its window starts there). The cells before it are masked
 * for every token from p on, and whole steps of masked cells add exact zeros to the lanes of ggml's dot products
 * (context.c: kv_span_step), so the results are those of spanning from position 0. Aligned from p - n_swa, it moves
 * on with the full layers' span when n_swa is a multiple of the step (as Gemma's are): a decoding step rebuilds the
 * graph once for both. */
int32_t ts_window_start(const ts_context *c, int32_t seq, int32_t p) {
    const int32_t before = p - c->model->n_swa;
    const int32_t start = c->model->n_swa > 0 && before > 0 ? before / c->kv_span_step * c->kv_span_step : 0;
    return start > c->swa_base[seq] ? start : c->swa_base[seq];
}

/* Copies n cells from cell src0 of cache tensor src to cell dst0 of dst (the same tensor, or one of the same cell
 * size), both in CPU memory: K's cells are its rows, and V's with flash attention, else (V stored transposed) one
 * element of each row. */
static void copy_cells(struct ggml_tensor *dst, int64_t dst0, const struct ggml_tensor *src, int64_t src0, int64_t n,
                       int cells_are_rows) {
    uint8_t *d = dst->data;
    const uint8_t *s = src->data;
    if (cells_are_rows) {
        memmove(d + (size_t)dst0 * dst->nb[1], s + (size_t)src0 * src->nb[1], (size_t)n * dst->nb[1]);
        return;
    }
    for (int64_t r = 0; r < dst->ne[1]; r++) {
        memmove(d + (size_t)r * dst->nb[1] + (size_t)dst0 * dst->nb[0],
                s + (size_t)r * src->nb[1] + (size_t)src0 * src->nb[0], (size_t)n * dst->nb[0]);
    }
}

/* Copies n cells of every sliding-window layer's K and V between two caches of per-sequence cell counts. */
static void copy_layers(ts_context *c, struct ggml_tensor **dst_k, struct ggml_tensor **dst_v, int64_t dst0,
                        struct ggml_tensor **src_k, struct ggml_tensor **src_v, int64_t src0, int64_t n) {
    for (int il = 0; il < c->model->info.n_layer; il++) {
        if (c->model->layers[il].swa) {
            copy_cells(dst_k[il], dst0, src_k[il], src0, n, 1);
            copy_cells(dst_v[il], dst0, src_v[il], src0, n, c->params.flash_attn);
        }
    }
}

void ts_window_make_room(ts_context *c, int32_t seq, int32_t n) {
    const int32_t base = c->swa_base[seq], p0 = c->n_past[seq];
    if (c->n_cells_swa == c->n_cells || (int64_t)p0 + n - base <= c->n_cells_swa) {
        return;
    }
    const int32_t new_base = ts_window_start(c, seq, p0); /* p0 + n - new_base <= n_swa + step - 1 + n_batch */
    const int64_t cell0 = (int64_t)seq * c->n_cells_swa;
    copy_layers(c, c->k_cache, c->v_cache, cell0, c->k_cache, c->v_cache, cell0 + new_base - base, p0 - new_base);
    c->swa_base[seq] = new_base;
}

/* Whether cells holding positions from `first` on hold every position the token at position n sees. */
static int holds_window_of(const ts_context *c, int32_t first, int32_t n) {
    return first == 0 || (int64_t)n - c->model->n_swa + 1 >= first;
}

/* ... the window cells of sequence seq do. */
static int window_holds(const ts_context *c, int32_t seq, int32_t n) {
    return holds_window_of(c, c->swa_base[seq], n);
}

/* ... its checkpoint does. */
static int checkpoint_holds(const ts_context *c, int32_t seq, int32_t n) {
    return c->ckpt_pos[seq] > 0 && n <= c->ckpt_pos[seq] && holds_window_of(c, c->ckpt_start[seq], n);
}

int ts_window_keeps(const ts_context *c, int32_t seq, int32_t n) {
    return n == 0 || window_holds(c, seq, n) || checkpoint_holds(c, seq, n);
}

void ts_window_keep(ts_context *c, int32_t seq, int32_t n_keep) {
    if (n_keep == 0) {
        c->swa_base[seq] = 0;
    } else if (!window_holds(c, seq, n_keep)) { /* the checkpoint's cells back to the front */
        copy_layers(c, c->k_cache, c->v_cache, (int64_t)seq * c->n_cells_swa, c->ckpt_k, c->ckpt_v,
                    (int64_t)seq * c->n_cells_ckpt, c->ckpt_pos[seq] - c->ckpt_start[seq]);
        c->swa_base[seq] = c->ckpt_start[seq];
    }
    if (c->ckpt_pos[seq] > n_keep) { /* positions from n_keep on are for other tokens now */
        c->ckpt_pos[seq] = n_keep;
    }
}

void ts_window_checkpoint(ts_context *c, int32_t seq) {
    if (c->n_cells_ckpt == 0) {
        return;
    }
    const int32_t pos = c->n_past[seq], start = ts_window_start(c, seq, pos);
    copy_layers(c, c->ckpt_k, c->ckpt_v, (int64_t)seq * c->n_cells_ckpt, c->k_cache, c->v_cache,
                (int64_t)seq * c->n_cells_swa + start - c->swa_base[seq], pos - start);
    c->ckpt_pos[seq] = pos;
    c->ckpt_start[seq] = start;
}
