/* The grouped sparse FFN in standard ggml ops (grouped_ffn.h). */
#include "grouped_ffn.h"

#include "ggml-backend.h"

#include <stdlib.h>
#include <string.h>

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

static struct ggml_tensor *activation(struct ggml_context *ctx0, int32_t act, struct ggml_tensor *gate,
                                      struct ggml_tensor *up) {
    switch (act) {
    case TS_FFN_REGLU:
        return ggml_mul(ctx0, ggml_relu(ctx0, gate), up);
    case TS_FFN_DRELU:
        return ggml_mul(ctx0, ggml_relu(ctx0, gate), ggml_relu(ctx0, up));
    default:
        return ggml_mul(ctx0, ggml_silu(ctx0, gate), up);
    }
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
    struct ggml_tensor *a = activation(ctx0, m->info.ffn_act, gate, up); /* [G, k, T] */
    struct ggml_tensor *y = ggml_mul_mat_id(ctx0, l->ffn_down_groups, a, *ids); /* [n_embd, k, T] */
    /* sum over the k groups: put k first, then sum rows */
    y = ggml_sum_rows(ctx0, ggml_cont(ctx0, ggml_permute(ctx0, y, 1, 0, 2, 3))); /* [1, n_embd, T] */
    y = ggml_reshape_2d(ctx0, y, n_embd, n_tokens);
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
