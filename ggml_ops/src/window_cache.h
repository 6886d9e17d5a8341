/*
 * The KV caches of sliding-window layers (Gemma 2 and 3) holding a window's worth of positions, as llama.cpp's SWA
 * cache: per sequence, cells for the window of a batch's first token and the batch, holding consecutive positions from
 * the sequence's swa_base on, moved to the front when a batch would pass the last cell; and one checkpoint of the
 * window as it stood at the last whole n_batch block of a prompt, so that the next prompt can keep that prefix
 * (a chat's next turn, whatever was decoded after it). Where the window would take as many cells as the context,
 * swa_full is set, or the model is on another device than the CPU, those layers cache every position as the others
 * (c->n_cells_swa == c->n_cells).
 */
#ifndef TS_WINDOW_CACHE_H
#define TS_WINDOW_CACHE_H

#include "context.h"

/* Cells per sequence of the sliding-window layers' caches and of their checkpoints (c->n_cells_swa, c->n_cells_ckpt)
 * for the context's parameters; c->kv_span_step and c->n_cells set. */
void ts_window_size(ts_context *c);

/* The first position the sliding-window layers' attention spans for a token at position p of sequence seq. */
int32_t ts_window_start(const ts_context *c, int32_t seq, int32_t p);

/* Room for n more tokens of sequence seq in its window cells (moving the window to the front where needed). */
void ts_window_make_room(ts_context *c, int32_t seq, int32_t n);

/* Whether sequence seq can keep its first n tokens: the window of position n is cached, or its checkpoint holds it. */
int ts_window_keeps(const ts_context *c, int32_t seq, int32_t n);

/* Makes the window cells hold what keeping the first n_keep tokens needs (ts_window_keeps checked), from the
 * checkpoint where the window moved past it; the checkpoint keeps only positions before n_keep. */
void ts_window_keep(ts_context *c, int32_t seq, int32_t n_keep);

/* Saves sequence seq's window as it stands now, at n_past (a prompt's last whole block). */
void ts_window_checkpoint(ts_context *c, int32_t seq);

#endif
