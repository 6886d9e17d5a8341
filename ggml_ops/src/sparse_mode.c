/* Which sparse modes a model allows, and what `auto` means for it. */
#include "sparse_mode.h"

#include "gguf_names.h"
#include "sparse_ffn.h"

#include "ts_error.h"

static int relu_gated(const ts_model *m) {
    return ts_ffn_act_relu_gated(m->info.ffn_act);
}

/* The FFN's activation as files (turbosparse.ffn_activation) and messages name it. */
static const char *act_name(const ts_model *m) {
    switch (m->info.ffn_act) {
    case TS_FFN_REGLU:
        return TS_FFN_ACTIVATION_REGLU;
    case TS_FFN_DRELU:
        return TS_FFN_ACTIVATION_DRELU;
    case TS_FFN_GEGLU:
        return TS_FFN_ACTIVATION_GEGLU;
    default:
        return TS_FFN_ACTIVATION_SWIGLU;
    }
}

/* Layers with a predictor (predictor_ranks[l] > 0). */
static int n_predicted_layers(const ts_model *m) {
    int n = 0;
    for (int il = 0; il < m->info.n_layer; il++) {
        n += m->pred_rank[il] > 0;
    }
    return n;
}

static int check_predictor(const ts_model *m, char *err, size_t err_size) {
    const char *path = m->file->path;
    if (!relu_gated(m)) {
        return ts_fail(err, err_size, TS_ERR_ARGUMENT,
                       "%s: predictor mode needs a ReLU-gated FFN (reglu or drelu), this one is %s "
                       "(exact mode runs SwiGLU and GEGLU files calibrated by turbosparse calibrate)",
                       path, act_name(m));
    }
    if (n_predicted_layers(m) == 0) {
        return ts_fail(err, err_size, TS_ERR_ARGUMENT,
                       "%s: predictor mode needs activation predictors (blk.N.%s.weight); none of the file's %d "
                       "layers has one",
                       path, m->info.n_expert > 0 ? "ffn_pred_fc1_exps" : "ffn_pred_fc1", m->info.n_layer);
    }
    return 0;
}

int ts_sparse_mode_check(const ts_model *m, int32_t mode, char *err, size_t err_size) {
    const ts_model_info *in = &m->info;
    const char *path = m->file->path;
    if (mode == TS_SPARSE_OFF) {
        return 0;
    }
    if (mode != TS_SPARSE_PREDICTOR && mode != TS_SPARSE_EXACT && mode != TS_SPARSE_GROUPS) {
        return ts_fail(err, err_size, TS_ERR_ARGUMENT, "unknown sparse mode %d", mode);
    }
    if (!m->sparse_rows) {
        return ts_fail(err, err_size, TS_ERR_ARGUMENT, "%s: sparse decoding needs the model loaded with sparse_rows = 1",
                       path);
    }
    if (in->n_expert > 0 && !relu_gated(m)) {
        return ts_fail(err, err_size, TS_ERR_ARGUMENT,
                       "%s: sparse decoding of a %s mixture-of-experts model is not supported (sparse = off runs it "
                       "densely)",
                       path, act_name(m));
    }
    if (in->n_expert > 0 && !in->has_down_t) {
        return ts_fail(err, err_size, TS_ERR_ARGUMENT,
                       "%s: sparse decoding of a mixture-of-experts model needs the experts' transposed down matrices "
                       "(blk.N.ffn_down_t_exps.weight)",
                       path);
    }
    if (mode == TS_SPARSE_PREDICTOR && m->dense_gate) {
        return ts_fail(err, err_size, TS_ERR_ARGUMENT,
                       "%s: predictor mode reads rows of the gate, which this model placed as a dense matrix (loaded "
                       "with dense_gate = 1, for exact mode)",
                       path);
    }
    if (mode == TS_SPARSE_PREDICTOR) {
        return check_predictor(m, err, err_size);
    }
    if (mode == TS_SPARSE_GROUPS && m->stale_groups) {
        return ts_fail(err, err_size, TS_ERR_ARGUMENT,
                       "%s: the grouped route reads the standard down matrices (blk.N.ffn_down.weight); this file "
                       "(converted with --groups before 2026-12-04) stores only their transpose: convert it again with "
                       "--groups",
                       path);
    }
    if (mode == TS_SPARSE_GROUPS && in->group_size == 0) {
        return ts_fail(err, err_size, TS_ERR_ARGUMENT,
                       "%s: the grouped route needs neuron groups (turbosparse.group_size): convert with --groups", path);
    }
    return 0; /* exact: ReLU-gated FFNs select gate > 0, SwiGLU / GEGLU ones |act(gate)| >= the context's thresholds */
}

/* Exact mode is worth running: a ReLU-gated FFN, or SwiGLU / GEGLU with calibrated thresholds. */
static int check_exact_useful(const ts_model *m, char *err, size_t err_size) {
    if (relu_gated(m) || m->info.has_ffn_thresholds) {
        return 0;
    }
    return ts_fail(err, err_size, TS_ERR_ARGUMENT,
                   "%s: exact mode needs a ReLU-gated FFN (reglu or drelu) or FFN thresholds "
                   "(turbosparse.gate_thresholds); this file's FFN is %s without thresholds: run `turbosparse "
                   "calibrate` on it first",
                   m->file->path, act_name(m));
}

/* A GPU device runs ggml's own ops only: dense, and the grouped route (which predictor means there). */
static int32_t sparse_mode_off_cpu(const ts_model *m, int32_t requested, int32_t *mode, char *err, size_t err_size) {
    const char *path = m->file->path;
    if (requested == TS_SPARSE_EXACT) {
        return ts_fail(err, err_size, TS_ERR_ARGUMENT,
                       "%s: sparse='exact' runs on the CPU only; on a GPU device use 'groups' (a file converted with "
                       "--groups) or 'off'",
                       path);
    }
    *mode = TS_SPARSE_OFF;
    if (requested == TS_SPARSE_OFF) {
        return TS_OK;
    }
    if (ts_sparse_mode_check(m, TS_SPARSE_GROUPS, NULL, 0) == 0) {
        *mode = TS_SPARSE_GROUPS;
        return TS_OK;
    }
    if (requested == TS_SPARSE_AUTO) {
        return TS_OK;
    }
    if (requested == TS_SPARSE_PREDICTOR) {
        return ts_fail(err, err_size, TS_ERR_ARGUMENT,
                       "%s: sparse='predictor' on a GPU device means the grouped route, which needs neuron groups "
                       "(turbosparse.group_size): convert the model with --groups",
                       path);
    }
    return ts_sparse_mode_check(m, requested, err, err_size);
}

int32_t ts_model_sparse_mode(const ts_model *m, int32_t requested, int32_t on_cpu, int32_t *mode, char *err,
                             size_t err_size) {
    if (!on_cpu) {
        return sparse_mode_off_cpu(m, requested, mode, err, err_size);
    }
    if (requested == TS_SPARSE_AUTO) {
        /* the first of predictor, exact, off the file allows */
        *mode = TS_SPARSE_OFF;
        if (ts_sparse_mode_check(m, TS_SPARSE_PREDICTOR, NULL, 0) == 0) {
            *mode = TS_SPARSE_PREDICTOR;
        } else if (ts_sparse_mode_check(m, TS_SPARSE_EXACT, NULL, 0) == 0 && check_exact_useful(m, NULL, 0) == 0) {
            *mode = TS_SPARSE_EXACT;
        }
        return TS_OK;
    }
    int rc = ts_sparse_mode_check(m, requested, err, err_size);
    if (rc == 0 && requested == TS_SPARSE_EXACT) {
        rc = check_exact_useful(m, err, err_size);
    }
    if (rc != 0) {
        return rc;
    }
    *mode = requested;
    return TS_OK;
}
