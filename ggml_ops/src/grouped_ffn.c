/* The grouped sparse FFN in standard ggml ops (grouped_ffn.h). */
#include "grouped_ffn.h"

#include "context.h"

#include "ggml-backend.h"

#include <stdlib.h>

/* bias [n_ff] of the chosen groups: [G, k, T] */
static struct ggml_tensor *group_bias(struct ggml_context *ctx0, struct ggml_tensor *bias, struct ggml_tensor *ids,
                                      int64_t group_size) {
    const int64_t n_groups = bias->ne[0] / group_size, k = ids->ne[0], n_tokens = ids->ne[1];
    struct ggml_tensor *rows = ggml_get_rows(ctx0, ggml_reshape_2d(ctx0, bias, group_size, n_groups),
                                             ggml_reshape_1d(ctx0, ids, k * n_tokens)); /* [G, k * T] */
    return ggml_reshape_3d(ctx0, rows, group_size, k, n_tokens);
}

/* w [n_embd, n_ff] . x for the chosen groups only: [G, k, T] (+ bias) */
static struct ggml_tensor *group_rows(struct ggml_context *ctx0, struct ggml_tensor *w, struct ggml_tensor *bias,
                                      struct ggml_tensor *x, struct ggml_tensor *ids, int64_t group_size) {
    struct ggml_tensor *experts = ggml_reshape_3d(ctx0, w, w->ne[0], group_size, w->ne[1] / group_size);
    struct ggml_tensor *y = ggml_mul_mat_id(ctx0, experts, x, ids);
    return bias != NULL ? ggml_add(ctx0, y, group_bias(ctx0, bias, ids, group_size)) : y;
}

/* the chosen groups' activations [G, k, T] in their places among zeros: [n_ff, T], for the whole standard down. The
 * zeros are a node (one zero repeated), not a new tensor of that size: ggml allocates a graph's leaves for the whole
 * computation, which would hold every layer's [n_ff, T] at once (0.9 GB for a 512-token batch at 7B). */
static struct ggml_tensor *scatter_groups(struct ggml_context *ctx0, struct ggml_tensor *a, struct ggml_tensor *ids,
                                          int64_t n_ff) {
    const int64_t g = a->ne[0], n_tokens = a->ne[2];
    struct ggml_tensor *zero = ggml_fill_inplace(ctx0, ggml_new_tensor_1d(ctx0, GGML_TYPE_F32, 1), 0.0f);
    struct ggml_tensor *zeros = ggml_repeat_4d(ctx0, zero, g, n_ff / g, n_tokens, 1);
    return ggml_reshape_2d(ctx0, ggml_set_rows(ctx0, zeros, a, ids), n_ff, n_tokens);
}

struct ggml_tensor *ts_grouped_ffn(struct ggml_context *ctx0, const ts_model *m, int il, struct ggml_tensor *h,
                                   struct ggml_tensor *x, int32_t top_k, struct ggml_tensor **ids) {
    const ts_layer *l = &m->layers[il];
    const int64_t g = m->info.group_size, n_embd = m->info.n_embd, n_tokens = x->ne[1];
    /* group scores [n_groups, T] from the predictor's hidden layer */
    struct ggml_tensor *hin = m->info.predictor_input == TS_PRED_INPUT_RESIDUAL_RMSNORM
                                  ? ggml_rms_norm(ctx0, h, m->info.rms_eps)
                                  : h;
    struct ggml_tensor *score = ggml_mul_mat(ctx0, l->pred_groups, ggml_relu(ctx0, ggml_mul_mat(ctx0, l->pred_fc1, hin)));
    *ids = ggml_top_k(ctx0, score, top_k); /* I32 [k, T] */
    ggml_set_output(*ids);

    struct ggml_tensor *x3 = ggml_reshape_3d(ctx0, x, n_embd, 1, n_tokens); /* every chosen group reads x */
    struct ggml_tensor *gate = group_rows(ctx0, l->ffn_gate, l->ffn_gate_b, x3, *ids, g);
    struct ggml_tensor *up = group_rows(ctx0, l->ffn_up, l->ffn_up_b, x3, *ids, g);
    struct ggml_tensor *a = ts_gated_activation(ctx0, m->info.ffn_act, gate, up); /* [G, k, T] */
    struct ggml_tensor *y = ggml_mul_mat(ctx0, l->ffn_down, scatter_groups(ctx0, a, *ids, m->info.n_ff)); /* [n_embd, T] */
    return l->ffn_down_b != NULL ? ggml_add(ctx0, y, l->ffn_down_b) : y;
}

void ts_grouped_count(const struct ggml_tensor *ids, int32_t group_size, int32_t n_groups, ts_layer_stats *stats) {
    const int64_t k = ids->ne[0], n_tokens = ids->ne[1];
    int32_t *chosen = malloc(ggml_nbytes(ids));
    unsigned char *seen = calloc((size_t)n_groups, 1);
    if (chosen == NULL || seen == NULL) {
        free(chosen);
        free(seen);
        return; /* counters only: an allocation failure leaves them unchanged */
    }
    ggml_backend_tensor_get(ids, chosen, 0, ggml_nbytes(ids));
    uint64_t n_union = 0;
    for (int64_t i = 0; i < k * n_tokens; i++) {
        const int32_t grp = chosen[i];
        if (grp >= 0 && grp < n_groups && !seen[grp]) {
            seen[grp] = 1;
            n_union++;
        }
    }
    const uint64_t rows = (uint64_t)(k * n_tokens) * (uint64_t)group_size;
    stats->n_tokens += (uint64_t)n_tokens;
    stats->n_computed += rows;
    stats->n_nonzero += rows;
    stats->n_evals += 1;
    stats->n_union += n_union * (uint64_t)group_size;
    free(chosen);
    free(seen);
}
