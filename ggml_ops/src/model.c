/*
 * Model loading: hyperparameters from the standard llama.cpp keys (plus turbosparse.* and
 * PowerInfer's powerinfer.* keys), every expected tensor checked for presence, shape and type,
 * data left in the mapping or handed to ggml's repacking buffer type, as llama.cpp does; the FFN matrices the
 * sparse ops read row by row copied into huge-page memory.
 */
#include "model.h"

#include "axpy_rows.h"

#include "device.h"
#include "gate_up_dot.h"
#include "gelu.h"
#include "ggml-alloc.h"
#include "ggml-cpu.h"
#include "gguf_names.h"
#include "huge_pages.h"
#include "ts_error.h"

#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TS_MAX_LAYERS 1024
#define TS_FORMAT_VERSION 1 /* newest turbosparse.format_version this code reads */
#define TS_MAX_EXPERTS 256

enum tensor_role {
    ROLE_NORM,     /* F32 vector multiplied element-wise */
    ROLE_BIAS,     /* F32 vector added */
    ROLE_EMBD,     /* rows gathered with ggml_get_rows */
    ROLE_MATRIX,   /* dense mul_mat weight, may be repacked */
    ROLE_ROWS,     /* FFN gate/up: read row by row by the sparse FFN ops, repacked only for dense use */
    ROLE_DOWN_T,   /* transposed down: only ever read row by row, never repacked */
    ROLE_ROPE,     /* F32 rope frequency factors */
    ROLE_GATE,     /* FFN gate: ROLE_ROWS in a layer with a predictor (it selects rows), else ROLE_MATRIX */
    ROLE_PREDICTOR /* predictor fc1/fc2: ROLE_ROWS where turbosparse's kernels read it (predictor_role), else MATRIX */
};

typedef struct binding {
    char name[GGML_MAX_NAME];
    int64_t ne[4];
    enum tensor_role role;
    struct ggml_tensor **slot;
    const ts_gguf_tensor *src;
    int repack; /* into ggml's repacked layout */
    int rows;   /* read row by row: copied into huge-page memory (allocate_rows) */
    int split;  /* a transposed down, into the row layout its kernel reads (axpy_rows.h); gate / up rows: split */
    int requant; /* a transposed down held as Q8_0: no fused kernel of this CPU reads its type (axpy_rows.h) */
    struct binding *up_beside; /* a gate copied with its layer's up, row by row side by side (pair_gate_up) */
    int layer;                 /* a gate with up_beside: its layer */
    int beside_gate;           /* an up copied with its layer's gate */
} binding;

typedef struct plan {
    binding *items;
    int n;
    int cap;
} plan;

ts_model_params ts_model_default_params(void) {
    ts_model_params p = {.repack = 1, .sparse_rows = 1};
    return p;
}

/* ---- hyperparameters ----------------------------------------------------------------------- */

/* An architecture the loader runs: llama's graph (graph.c), with what each differs by. Qwen2's biases on the
 * queries, keys and values are optional tensors, as in every architecture. */
typedef struct arch_spec {
    const char *name;    /* general.architecture */
    int32_t rope_type;   /* GGML_ROPE_TYPE_*: NEOX rotates a head's two halves together, NORMAL adjacent pairs */
    int32_t qk_norm;     /* each head's queries and keys RMS-normed before the rope */
    int32_t ffn_act;     /* enum ts_ffn_act, unless turbosparse.ffn_activation (or a PowerInfer file) says */
    int32_t gemma;       /* the Gemma generation (2, 3) of the block (model.h: post_norms, embd_scale, q_scale,
                            sliding-window layers, soft-capping), or 0 */
    int32_t yarn_keys;   /* YaRN's betas and magnitude multiplier, and the queries' temperature, read from the file
                            (mistral3: load_yarn, load_temperature) */
    int32_t phi;         /* Phi-3's block (load_phi3): q, k, v and gate, up stacked; queries scaled after the rope;
                            a partial rope; rope factors for long and short contexts */
    int32_t no_rope_step; /* every no_rope_step-th layer attends unroped (SmolLM3's NoPE layers), or 0 */
    int32_t granite;      /* Granite's scales (load_granite) */
    /* tensors llama.cpp's graph of the architecture never loads (a per-layer name: in any layer), so that it refuses
       a file with one (more tensors than it loads): refused by name (refuse_tensors); NULL-terminated, or NULL */
    const char *const *absent;
} arch_spec;

static const char *const PHI3_ABSENT[] = {TS_TENSOR_OUTPUT_BIAS, TS_TENSOR_ROPE_FREQS, NULL};
/* smollm3 ropes without factors and has no biases */
static const char *const SMOLLM3_ABSENT[] = {TS_TENSOR_ROPE_FREQS, TS_TENSOR_ROPE_FACTORS_LONG,
                                             TS_TENSOR_ROPE_FACTORS_SHORT, TS_TENSOR_OUTPUT_BIAS,
                                             TS_TENSOR_ATTN_OUTPUT_BIAS, TS_TENSOR_FFN_GATE_BIAS, TS_TENSOR_FFN_UP_BIAS,
                                             TS_TENSOR_FFN_DOWN_BIAS, NULL};
/* granite reads rope_freqs but not LongRoPE's factors (a scaling type this loader refuses), and no output bias */
static const char *const GRANITE_ABSENT[] = {TS_TENSOR_ROPE_FACTORS_LONG, TS_TENSOR_ROPE_FACTORS_SHORT,
                                             TS_TENSOR_OUTPUT_BIAS, NULL};

static const arch_spec ARCHITECTURES[] = {
    {.name = TS_ARCH_LLAMA, .rope_type = GGML_ROPE_TYPE_NORMAL, .ffn_act = TS_FFN_SWIGLU},
    {.name = TS_ARCH_BAMBOO, .rope_type = GGML_ROPE_TYPE_NORMAL, .ffn_act = TS_FFN_DRELU},
    /* Ministral 3, Mistral Small 3.x */
    {.name = TS_ARCH_MISTRAL3, .rope_type = GGML_ROPE_TYPE_NORMAL, .ffn_act = TS_FFN_SWIGLU, .yarn_keys = 1},
    /* Phi-3, Phi-3.5, Phi-4 (mini) */
    {.name = TS_ARCH_PHI3, .rope_type = GGML_ROPE_TYPE_NEOX, .ffn_act = TS_FFN_SWIGLU, .phi = 1, .absent = PHI3_ABSENT},
    {.name = TS_ARCH_SMOLLM3, .rope_type = GGML_ROPE_TYPE_NORMAL, .ffn_act = TS_FFN_SWIGLU, .no_rope_step = 4,
     .absent = SMOLLM3_ABSENT},
    /* IBM Granite 3.x */
    {.name = TS_ARCH_GRANITE, .rope_type = GGML_ROPE_TYPE_NORMAL, .ffn_act = TS_FFN_SWIGLU, .granite = 1, .absent = GRANITE_ABSENT},
    {.name = TS_ARCH_QWEN2, .rope_type = GGML_ROPE_TYPE_NEOX, .ffn_act = TS_FFN_SWIGLU},
    {.name = TS_ARCH_QWEN3, .rope_type = GGML_ROPE_TYPE_NEOX, .qk_norm = 1, .ffn_act = TS_FFN_SWIGLU},
    /* Qwen3's attention, Mixtral's experts */
    {.name = TS_ARCH_QWEN3MOE, .rope_type = GGML_ROPE_TYPE_NEOX, .qk_norm = 1, .ffn_act = TS_FFN_SWIGLU},
    {.name = TS_ARCH_GEMMA2, .rope_type = GGML_ROPE_TYPE_NEOX, .ffn_act = TS_FFN_GEGLU, .gemma = 2},
    {.name = TS_ARCH_GEMMA3, .rope_type = GGML_ROPE_TYPE_NEOX, .qk_norm = 1, .ffn_act = TS_FFN_GEGLU, .gemma = 3},
};

static const arch_spec *find_arch(const char *name) {
    for (size_t i = 0; i < sizeof(ARCHITECTURES) / sizeof(ARCHITECTURES[0]); i++) {
        if (strcmp(ARCHITECTURES[i].name, name) == 0) {
            return &ARCHITECTURES[i];
        }
    }
    return NULL;
}

static int arch_key(char *buf, size_t n, const char *arch, const char *suffix) {
    return snprintf(buf, n, "%s.%s", arch, suffix) >= (int)n ? -1 : 0;
}

static int get_arch_i64(const ts_model *m, const char *suffix, int64_t *out, int required, char *err, size_t err_size) {
    char key[160];
    arch_key(key, sizeof(key), m->arch, suffix);
    return ts_gguf_get_i64(m->file, key, out, required, err, err_size);
}

static int get_arch_f32(const ts_model *m, const char *suffix, float *out, int required, char *err, size_t err_size) {
    char key[160];
    arch_key(key, sizeof(key), m->arch, suffix);
    return ts_gguf_get_f32(m->file, key, out, required, err, err_size);
}

/*
 * A size llama.cpp reads per layer (feed_forward_length, head_count, head_count_kv): a number, or an array with one
 * entry per layer, here all equal. 0; 1 when absent and not required; -1 (err set).
 */
static int get_arch_layer_i64(const ts_model *m, const char *suffix, int64_t *out, int required, char *err,
                              size_t err_size) {
    char key[160];
    arch_key(key, sizeof(key), m->arch, suffix);
    const ts_gguf_kv *kv = ts_gguf_find_kv(m->file, key);
    if (kv == NULL || kv->type != TS_GGUF_ARRAY) {
        return ts_gguf_get_i64(m->file, key, out, required, err, err_size);
    }
    int64_t *v = malloc(sizeof(int64_t) * (size_t)m->info.n_layer);
    if (v == NULL) {
        return ts_set_error(err, err_size, "out of memory");
    }
    int rc = ts_gguf_get_arr_i64(m->file, key, v, m->info.n_layer, 1, err, err_size);
    for (int i = 1; rc == 0 && i < m->info.n_layer; i++) {
        if (v[i] != v[0]) {
            rc = ts_set_error(err, err_size, "%s: '%s' differs between layers (%lld vs %lld): not supported",
                              m->file->path, key, (long long)v[0], (long long)v[i]);
        }
    }
    if (rc == 0) {
        *out = v[0];
    }
    free(v);
    return rc < 0 ? -1 : 0;
}

static int check_positive(const ts_model *m, const char *what, int64_t v, int64_t max, char *err, size_t err_size) {
    if (v <= 0 || v > max) {
        return ts_set_error(err, err_size, "%s: %s.%s = %lld is out of range (1..%lld)", m->file->path, m->arch, what,
                            (long long)v, (long long)max);
    }
    return 0;
}

static int load_ffn_activation(ts_model *m, int32_t arch_act, char *err, size_t err_size) {
    char act[32];
    int rc = ts_gguf_get_str(m->file, TS_KEY_FFN_ACTIVATION, act, sizeof(act), 0, err, err_size);
    if (rc < 0) {
        return -1;
    }
    if (rc == 1) { /* no turbosparse key: the architecture's; PowerInfer's llama files are ReLU-Llama (ReGLU) */
        m->info.ffn_act = m->info.is_powerinfer && arch_act == TS_FFN_SWIGLU ? TS_FFN_REGLU : arch_act;
        return 0;
    }
    if (strcmp(act, TS_FFN_ACTIVATION_SWIGLU) == 0) {
        m->info.ffn_act = TS_FFN_SWIGLU;
    } else if (strcmp(act, TS_FFN_ACTIVATION_REGLU) == 0) {
        m->info.ffn_act = TS_FFN_REGLU;
    } else if (strcmp(act, TS_FFN_ACTIVATION_DRELU) == 0) {
        m->info.ffn_act = TS_FFN_DRELU;
    } else if (strcmp(act, TS_FFN_ACTIVATION_GEGLU) == 0) {
        m->info.ffn_act = TS_FFN_GEGLU;
    } else {
        return ts_set_error(err, err_size, "%s: " TS_KEY_FFN_ACTIVATION " '%s' is unknown (expected swiglu, reglu, drelu or "
                            "geglu)", m->file->path, act);
    }
    return 0;
}

static int load_predictor_input(ts_model *m, char *err, size_t err_size) {
    char input[32];
    int rc = ts_gguf_get_str(m->file, TS_KEY_PREDICTOR_INPUT, input, sizeof(input), 0, err, err_size);
    m->info.predictor_input = TS_PRED_INPUT_RESIDUAL;
    if (rc < 0) {
        return -1;
    }
    if (rc == 0 && strcmp(input, TS_PREDICTOR_INPUT_RESIDUAL_RMSNORM) == 0) {
        m->info.predictor_input = TS_PRED_INPUT_RESIDUAL_RMSNORM;
    } else if (rc == 0 && strcmp(input, TS_PREDICTOR_INPUT_RESIDUAL) != 0) {
        return ts_set_error(err, err_size, "%s: " TS_KEY_PREDICTOR_INPUT " '%s' is unknown (expected residual or residual_rmsnorm)",
                            m->file->path, input);
    }
    return 0;
}

/* YaRN's magnitude for a scale factor and mscale, as llama.cpp computes it */
static float yarn_mscale(float factor, float mscale) {
    return factor <= 1.0f ? 1.0f : 0.1f * mscale * logf(factor) + 1.0f;
}

/*
 * YaRN rope scaling (llama.cpp's, as the converter writes it for Qwen's and Mistral's long-context configs):
 * frequencies interpolated by rope.scaling.factor below a ramp between beta_fast and beta_slow rotations over the
 * original context, and the attention's magnitude scaled by 1 + 0.1 ln(factor), or, with rope.scaling.
 * yarn_log_multiplier (HF's mscale_all_dim; read for mistral3 only, as llama.cpp), by that over
 * 1 + 0.1 mscale_all_dim ln(factor). ggml's rope multiplies in 1 + 0.1 ln(factor) itself when ext_factor is on, so
 * the attn_factor handed to it cancels that first, in llama.cpp's float order.
 */
static int load_yarn(ts_model *m, int32_t yarn_keys, char *err, size_t err_size) {
    float log_mul = 0.0f; /* read where llama.cpp reads it */
    if (yarn_keys && get_arch_f32(m, TS_ARCH_KEY_ROPE_SCALING_LOG_MUL, &log_mul, 0, err, err_size) < 0) {
        return -1;
    }
    if (!isfinite(log_mul)) {
        return ts_set_error(err, err_size, "%s: %s." TS_ARCH_KEY_ROPE_SCALING_LOG_MUL " must be finite",
                            m->file->path, m->arch);
    }
    const float factor = 1.0f / m->info.rope_freq_scale;
    float attn_factor = yarn_mscale(factor, 1.0f);
    if (log_mul != 0.0f) {
        attn_factor = attn_factor / yarn_mscale(factor, log_mul);
    }
    attn_factor *= 1.0f / (1.0f + 0.1f * logf(factor));
    m->rope_ext_factor = 1.0f;
    m->rope_attn_factor = attn_factor * m->rope_attn_factor;
    return 0;
}

static int load_rope(ts_model *m, int32_t yarn_keys, char *err, size_t err_size) {
    ts_model_info *in = &m->info;
    in->rope_freq_base = 10000.0f;
    if (get_arch_f32(m, TS_ARCH_KEY_ROPE_FREQ_BASE, &in->rope_freq_base, 0, err, err_size) < 0) {
        return -1;
    }
    in->rope_freq_scale = 1.0f;
    char type[32] = "linear"; /* absent: llama.cpp's default, so that a factor alone (older files' scale_linear) scales */
    char key[160];
    arch_key(key, sizeof(key), m->arch, TS_ARCH_KEY_ROPE_SCALING_TYPE);
    if (ts_gguf_get_str(m->file, key, type, sizeof(type), 0, err, err_size) < 0) {
        return -1;
    }
    float factor = 0.0f;
    int rc = get_arch_f32(m, TS_ARCH_KEY_ROPE_SCALING_FACTOR, &factor, 0, err, err_size);
    if (rc < 0) {
        return -1;
    }
    if (rc == 1 && get_arch_f32(m, TS_ARCH_KEY_ROPE_SCALE_LINEAR, &factor, 0, err, err_size) < 0) {
        return -1;
    }
    const int yarn = strcmp(type, "yarn") == 0;
    if (strcmp(type, "none") != 0 && strcmp(type, "linear") != 0 && !yarn) {
        return ts_set_error(err, err_size, "%s: rope scaling type '%s' is not supported (none, linear or yarn)",
                            m->file->path, type);
    }
    if (strcmp(type, "none") != 0 && factor != 0.0f) { /* 0 stands for none, as in llama.cpp; NaN or < 0 fail below */
        in->rope_freq_scale = 1.0f / factor;
    }
    if (!(in->rope_freq_base > 0.0f) || !isfinite(in->rope_freq_base)) {
        return ts_set_error(err, err_size, "%s: %s.rope.freq_base must be positive", m->file->path, m->arch);
    }
    if (!(in->rope_freq_scale > 0.0f) || !isfinite(in->rope_freq_scale)) {
        return ts_set_error(err, err_size, "%s: %s." TS_ARCH_KEY_ROPE_SCALING_FACTOR " must be finite and positive",
                            m->file->path, m->arch);
    }
    m->rope_ext_factor = 0.0f;
    m->rope_beta_fast = 32.0f; /* llama.cpp's defaults; mistral3 reads the file's (load_temperature) */
    m->rope_beta_slow = 1.0f;
    m->rope_attn_factor = 1.0f; /* rope.scaling.attn_factor: llama.cpp scales the magnitude by it whatever the type */
    if (get_arch_f32(m, TS_ARCH_KEY_ROPE_SCALING_ATTN_FACTOR, &m->rope_attn_factor, 0, err, err_size) < 0) {
        return -1;
    }
    if (!(m->rope_attn_factor > 0.0f) || !isfinite(m->rope_attn_factor)) {
        return ts_set_error(err, err_size, "%s: %s." TS_ARCH_KEY_ROPE_SCALING_ATTN_FACTOR " must be finite and positive",
                            m->file->path, m->arch);
    }
    /* the original context, read whatever the scaling (as llama.cpp's hparams: the training context when absent) */
    int64_t orig = in->n_ctx_train;
    if (get_arch_i64(m, TS_ARCH_KEY_ROPE_SCALING_ORIG_CTX, &orig, 0, err, err_size) < 0 ||
        (orig != 0 && check_positive(m, TS_ARCH_KEY_ROPE_SCALING_ORIG_CTX, orig, INT32_MAX, err, err_size))) {
        return -1;
    }
    m->n_ctx_orig_file = (int32_t)orig;
    m->n_ctx_orig = orig != 0 ? (int32_t)orig : in->n_ctx_train; /* YaRN's: 0 stands for the training context */
    return yarn ? load_yarn(m, yarn_keys, err, err_size) : 0;
}

/*
 * mistral3, as llama.cpp reads it: YaRN's ramp between rope.scaling.yarn_beta_fast and _slow rotations (32 and 1 when
 * absent), and Llama 4's temperature tuning where attention.temperature_scale is given (Ministral 3): the queries of
 * the token at position p times 1 + scale ln(floor(p / n) + 1) after the rope, n the original context (YaRN's).
 */
static int load_temperature(ts_model *m, char *err, size_t err_size) {
    if (get_arch_f32(m, TS_ARCH_KEY_ROPE_SCALING_BETA_FAST, &m->rope_beta_fast, 0, err, err_size) < 0 ||
        get_arch_f32(m, TS_ARCH_KEY_ROPE_SCALING_BETA_SLOW, &m->rope_beta_slow, 0, err, err_size) < 0 ||
        get_arch_f32(m, TS_ARCH_KEY_TEMPERATURE_SCALE, &m->attn_temp_scale, 0, err, err_size) < 0) {
        return -1;
    }
    if (!isfinite(m->rope_beta_fast) || !isfinite(m->rope_beta_slow) || !isfinite(m->attn_temp_scale)) {
        return ts_set_error(err, err_size, "%s: %s." TS_ARCH_KEY_ROPE_SCALING_BETA_FAST ", _slow and "
                            TS_ARCH_KEY_TEMPERATURE_SCALE " must be finite", m->file->path, m->arch);
    }
    m->attn_temp_floor = m->n_ctx_orig_file;
    if (m->attn_temp_scale != 0.0f && m->attn_temp_floor == 0) { /* llama.cpp refuses it too */
        return ts_set_error(err, err_size, "%s: %s." TS_ARCH_KEY_TEMPERATURE_SCALE " with a zero "
                            TS_ARCH_KEY_ROPE_SCALING_ORIG_CTX ": no context to count the temperature in",
                            m->file->path, m->arch);
    }
    return 0;
}

static const ts_gguf_tensor *find_layer_tensor(const ts_model *m, const char *fmt, int layer);

/* -1 (err set) where the file has one of the tensors `names` (arch_spec.absent: NULL-terminated, or NULL) */
static int refuse_tensors(const ts_model *m, const char *const *names, char *err, size_t err_size) {
    for (int i = 0; names != NULL && names[i] != NULL; i++) {
        const int per_layer = strstr(names[i], "%d") != NULL;
        for (int il = 0; il < (per_layer ? m->info.n_layer : 1); il++) {
            const ts_gguf_tensor *t = find_layer_tensor(m, names[i], il);
            if (t != NULL) {
                return ts_set_error(err, err_size, "%s: tensor '%s' in a %s file: llama.cpp's %s has none (it refuses "
                                    "the file)", m->file->path, t->name, m->arch, m->arch);
            }
        }
    }
    return 0;
}

/*
 * phi3, as llama.cpp reads it: the queries scaled by 1/sqrt(head size) after the rope and the scores by 1; its
 * attention.sliding_window ignored (llama.cpp turns Phi's window off); rope_factors_long / _short as model tensors
 * (the context picks one: context.c); no experts (llama.cpp's phi3 loads no router).
 */
static int load_phi3(ts_model *m, char *err, size_t err_size) {
    m->q_scale = 1.0f / sqrtf((float)m->info.n_embd_head);
    if (m->info.n_expert > 0) {
        return ts_set_error(err, err_size, "%s: a phi3 file with experts is not supported", m->file->path);
    }
    return 0;
}

/*
 * Tensors stored stacked, as llama.cpp reads them: a layer's attn_qkv (q, k, v rows; every architecture) with its
 * bias, and phi3's ffn_up of 2 n_ff rows (the gate's, then the up's), each split into the tensors the block reads,
 * over the same mapped memory.
 */
static int split_stacked(ts_model *m, int32_t phi, char *err, size_t err_size) {
    const ts_model_info *in = &m->info;
    const int64_t n_q = (int64_t)in->n_head * in->n_embd_head, n_kv = (int64_t)in->n_head_kv * in->n_embd_head;
    const int64_t qkv_sizes[] = {n_q, n_kv, n_kv}, ffn_sizes[] = {in->n_ff, in->n_ff};
    for (int il = 0; il < in->n_layer; il++) {
        char qkv[GGML_MAX_NAME], q[GGML_MAX_NAME], k[GGML_MAX_NAME], v[GGML_MAX_NAME], qkv_b[GGML_MAX_NAME],
            q_b[GGML_MAX_NAME], k_b[GGML_MAX_NAME], v_b[GGML_MAX_NAME], gate[GGML_MAX_NAME], up[GGML_MAX_NAME];
        snprintf(qkv, sizeof(qkv), TS_TENSOR_ATTN_QKV, il);
        snprintf(q, sizeof(q), TS_TENSOR_ATTN_Q, il);
        snprintf(k, sizeof(k), TS_TENSOR_ATTN_K, il);
        snprintf(v, sizeof(v), TS_TENSOR_ATTN_V, il);
        snprintf(qkv_b, sizeof(qkv_b), TS_TENSOR_ATTN_QKV_BIAS, il);
        snprintf(q_b, sizeof(q_b), TS_TENSOR_ATTN_Q_BIAS, il);
        snprintf(k_b, sizeof(k_b), TS_TENSOR_ATTN_K_BIAS, il);
        snprintf(v_b, sizeof(v_b), TS_TENSOR_ATTN_V_BIAS, il);
        snprintf(gate, sizeof(gate), TS_TENSOR_FFN_GATE, il);
        snprintf(up, sizeof(up), TS_TENSOR_FFN_UP, il);
        const char *const qkv_parts[] = {q, k, v}, *const bias_parts[] = {q_b, k_b, v_b}, *const ffn_parts[] = {gate, up};
        if (ts_gguf_split(m->file, qkv, in->n_embd, 3, qkv_parts, qkv_sizes, err, err_size) < 0 ||
            ts_gguf_split(m->file, qkv_b, 0, 3, bias_parts, qkv_sizes, err, err_size) < 0 ||
            (phi && ts_gguf_split(m->file, up, in->n_embd, 2, ffn_parts, ffn_sizes, err, err_size) < 0)) {
            return -1;
        }
    }
    return 0;
}

/*
 * granite (IBM Granite 3.x), as llama.cpp reads it: token embeddings times embedding_scale, attention scores times
 * attention.scale (each 1/sqrt(head size) when absent or 0), the attention's and FFN's outputs times residual_scale
 * before their residual adds (none when absent), logits divided by logit_scale (required); no rope at all where
 * rope.scaling.finetuned is false. Experts (granitemoe's shared ones) are not supported.
 */
static int load_granite(ts_model *m, char *err, size_t err_size) {
    int64_t roped = 1;
    if (get_arch_f32(m, TS_ARCH_KEY_EMBEDDING_SCALE, &m->embd_scale, 0, err, err_size) < 0 ||
        get_arch_f32(m, TS_ARCH_KEY_ATTENTION_SCALE, &m->kq_scale, 0, err, err_size) < 0 ||
        get_arch_f32(m, TS_ARCH_KEY_RESIDUAL_SCALE, &m->residual_scale, 0, err, err_size) < 0 ||
        get_arch_f32(m, TS_ARCH_KEY_LOGIT_SCALE, &m->logit_scale, 1, err, err_size) != 0 ||
        get_arch_i64(m, TS_ARCH_KEY_ROPE_SCALING_FINETUNED, &roped, 0, err, err_size) < 0) {
        return -1;
    }
    if (!isfinite(m->embd_scale) || !isfinite(m->kq_scale) || !isfinite(m->residual_scale) ||
        !isfinite(m->logit_scale) || m->logit_scale == 0.0f) {
        return ts_set_error(err, err_size, "%s: %s's embedding_scale, attention.scale and residual_scale must be finite, "
                            "logit_scale finite and not 0", m->file->path, m->arch);
    }
    if (m->info.n_expert > 0) {
        return ts_set_error(err, err_size, "%s: a granite file with experts is not supported", m->file->path);
    }
    m->no_rope_step = roped ? 0 : 1; /* every layer unroped */
    return 0;
}

/* A soft-capping key (absent: `fallback`), finite and >= 0, 0 meaning no cap; or > 0 where `required_cap` (Gemma 2,
 * whose caps llama.cpp divides by whatever they are). */
static int load_softcap(const ts_model *m, const char *suffix, float fallback, int required_cap, float *out, char *err,
                        size_t err_size) {
    *out = fallback;
    if (get_arch_f32(m, suffix, out, 0, err, err_size) < 0) {
        return -1;
    }
    if (!(*out >= 0.0f) || !isfinite(*out) || (required_cap && *out == 0.0f)) {
        return ts_set_error(err, err_size, "%s: %s.%s = %g must be finite and %s", m->file->path, m->arch, suffix,
                            (double)*out, required_cap ? "> 0" : ">= 0");
    }
    return 0;
}

/*
 * Gemma 2 and 3, as llama.cpp reads them: token embeddings times sqrt(n_embd); queries times 1/sqrt(head size) before
 * the attention (the 27B models, which llama.cpp tells by their layer count, 46 and 62: 1/sqrt(n_embd / n_head)).
 * Gemma 2: attention scores and logits soft-capped (attn_logit_softcapping, 50 when absent; final_logit_softcapping,
 * 30); every second layer attends to all positions, the others to the last attention.sliding_window (4096 when
 * absent), roped as the others unless rope.freq_base_swa says. Gemma 3: logits soft-capped where
 * final_logit_softcapping is given; with attention.sliding_window, five of every six layers slide, roped with
 * rope.freq_base_swa (10000 when absent) unscaled. Which layers slide: load_sliding_window.
 */
static int load_gemma(ts_model *m, int32_t generation, char *err, size_t err_size) {
    const ts_model_info *in = &m->info;
    const int gemma2 = generation == 2;
    m->post_norms = 1;
    m->embd_scale = sqrtf((float)in->n_embd);
    m->q_scale = in->n_layer == (gemma2 ? 46 : 62) ? 1.0f / sqrtf((float)(in->n_embd / in->n_head))
                                                   : 1.0f / sqrtf((float)in->n_embd_head);
    if (!isfinite(m->q_scale)) { /* the 27B rule with more heads than embedding dimensions */
        return ts_set_error(err, err_size, "%s: %d heads on an embedding of %d: no query scale", m->file->path,
                            in->n_head, in->n_embd);
    }
    if (load_softcap(m, TS_ARCH_KEY_FINAL_LOGIT_SOFTCAPPING, gemma2 ? 30.0f : 0.0f, gemma2, &m->logit_softcap, err,
                     err_size) != 0 ||
        (gemma2 && load_softcap(m, TS_ARCH_KEY_ATTN_LOGIT_SOFTCAPPING, 50.0f, 1, &m->attn_softcap, err, err_size) != 0)) {
        return -1;
    }
    int64_t n_swa = gemma2 ? 4096 : 0;
    if (get_arch_i64(m, TS_ARCH_KEY_SLIDING_WINDOW, &n_swa, 0, err, err_size) < 0) {
        return -1;
    }
    if (n_swa < 0 || n_swa > INT32_MAX) {
        return ts_set_error(err, err_size, "%s: %s." TS_ARCH_KEY_SLIDING_WINDOW " = %lld is out of range", m->file->path,
                            m->arch, (long long)n_swa);
    }
    m->n_swa = (int32_t)n_swa;
    m->swa_pattern = gemma2 ? 2 : 6;
    m->rope_freq_base_swa = gemma2 ? in->rope_freq_base : 10000.0f;
    m->rope_freq_scale_swa = gemma2 ? in->rope_freq_scale : 1.0f;
    if (get_arch_f32(m, TS_ARCH_KEY_ROPE_FREQ_BASE_SWA, &m->rope_freq_base_swa, 0, err, err_size) < 0) {
        return -1;
    }
    if (!(m->rope_freq_base_swa > 0.0f) || !isfinite(m->rope_freq_base_swa)) {
        return ts_set_error(err, err_size, "%s: %s." TS_ARCH_KEY_ROPE_FREQ_BASE_SWA " must be positive", m->file->path,
                            m->arch);
    }
    return 0;
}

/*
 * Which layers slide (n_swa > 0): attention.sliding_window_pattern, a bool per layer (true: sliding) or a number n
 * (swa_pattern when absent): every n-th layer, il % n == n - 1, attends to all positions, the others slide (n = 0: all
 * slide).
 */
static int load_sliding_window(ts_model *m, char *err, size_t err_size) {
    const int32_t n_layer = m->info.n_layer;
    if (m->n_swa == 0) {
        return 0;
    }
    char key[160];
    arch_key(key, sizeof(key), m->arch, TS_ARCH_KEY_SLIDING_WINDOW_PATTERN);
    const ts_gguf_kv *kv = ts_gguf_find_kv(m->file, key);
    if (kv != NULL && kv->type == TS_GGUF_ARRAY) {
        int64_t *flags = malloc(sizeof(int64_t) * (size_t)n_layer);
        if (flags == NULL) {
            return ts_set_error(err, err_size, "out of memory");
        }
        const int rc = ts_gguf_get_arr_i64(m->file, key, flags, n_layer, 1, err, err_size);
        for (int32_t il = 0; rc == 0 && il < n_layer; il++) {
            m->layers[il].swa = flags[il] != 0;
        }
        free(flags);
        return rc;
    }
    int64_t pattern = m->swa_pattern;
    if (ts_gguf_get_i64(m->file, key, &pattern, 0, err, err_size) < 0) {
        return -1;
    }
    if (pattern < 0 || pattern > TS_MAX_LAYERS) {
        return ts_set_error(err, err_size, "%s: %s = %lld is out of range", m->file->path, key, (long long)pattern);
    }
    for (int32_t il = 0; il < n_layer; il++) {
        m->layers[il].swa = pattern == 0 || il % pattern < pattern - 1;
    }
    return 0;
}

/* Mixture of experts: expert_count and expert_used_count together, 1 <= used <= count (neither: a dense FFN). */
static int load_experts(ts_model *m, char *err, size_t err_size) {
    int64_t n_expert = 0, n_used = 0;
    const int rc_n = get_arch_i64(m, TS_ARCH_KEY_EXPERT_COUNT, &n_expert, 0, err, err_size);
    const int rc_used = rc_n < 0 ? -1 : get_arch_i64(m, TS_ARCH_KEY_EXPERT_USED_COUNT, &n_used, 0, err, err_size);
    if (rc_n < 0 || rc_used < 0) {
        return -1;
    }
    if (rc_n == 1 || n_expert == 0) {
        if (rc_used == 0 && n_used != 0) {
            return ts_set_error(err, err_size, "%s: %s.expert_used_count = %lld but %s.expert_count is missing or 0",
                                m->file->path, m->arch, (long long)n_used, m->arch);
        }
        return 0;
    }
    if (check_positive(m, TS_ARCH_KEY_EXPERT_COUNT, n_expert, TS_MAX_EXPERTS, err, err_size)) {
        return -1;
    }
    if (rc_used == 1) {
        return ts_set_error(err, err_size, "%s: missing key '%s.expert_used_count' (the file has %s.expert_count = %lld)",
                            m->file->path, m->arch, m->arch, (long long)n_expert);
    }
    if (n_used < 1 || n_used > n_expert) {
        return ts_set_error(err, err_size, "%s: %s.expert_used_count = %lld is out of range (1..%s.expert_count = %lld)",
                            m->file->path, m->arch, (long long)n_used, m->arch, (long long)n_expert);
    }
    m->info.n_expert = (int32_t)n_expert;
    m->info.n_expert_used = (int32_t)n_used;
    return 0;
}

static int load_hparams(ts_model *m, char *err, size_t err_size) {
    ts_model_info *in = &m->info;
    int64_t v = 0;
    if (ts_gguf_get_str(m->file, TS_KEY_ARCHITECTURE, m->arch, sizeof(m->arch), 1, err, err_size) != 0) {
        return -1;
    }
    if (ts_gguf_check_unique_strings(m->file, TS_KEY_TOKENS, err, err_size) != 0) {
        return -1;
    }
    char vocab_kind[32] = ""; /* tokenizer.ggml.model; another type or length is llama.cpp's to refuse */
    const int has_kind = ts_gguf_get_str(m->file, TS_KEY_TOKENIZER_MODEL, vocab_kind, sizeof(vocab_kind), 0, err,
                                         err_size) == 0;
    if (has_kind && strcmp(vocab_kind, TS_TOKENIZER_SPM) == 0 &&
        ts_gguf_check_byte_tokens(m->file, TS_KEY_TOKENS, err, err_size) != 0) {
        return -1;
    }
    const int has_version = ts_gguf_get_i64(m->file, TS_KEY_FORMAT_VERSION, &v, 0, err, err_size);
    if (has_version < 0) { /* present but not an integer: the version check must not be skipped */
        return -1;
    }
    if (has_version == 0 && v > TS_FORMAT_VERSION) {
        return ts_set_error(err, err_size, "%s: turbosparse.format_version %lld is newer than this turbosparse reads (%d): upgrade",
                            m->file->path, (long long)v, TS_FORMAT_VERSION);
    }
    const arch_spec *arch = find_arch(m->arch);
    if (arch == NULL) {
        return ts_set_error(err, err_size,
                            "%s: unsupported architecture '%s' (general.architecture): turbosparse runs llama-family "
                            "backbones ('llama', 'mistral3', 'phi3', 'smollm3', 'granite', 'qwen2', 'qwen3', "
                            "'qwen3moe', 'gemma2', 'gemma3', PowerInfer's 'bamboo')",
                            m->file->path, m->arch);
    }
    m->rope_type = arch->rope_type;
    m->no_rope_step = arch->no_rope_step;
    m->qk_norm = arch->qk_norm;
    int64_t causal = 1;
    if (get_arch_i64(m, TS_ARCH_KEY_CAUSAL, &causal, 0, err, err_size) < 0) {
        return -1;
    }
    if (causal == 0) { /* llama.cpp then attends both ways (embedding models): this graph only looks back */
        return ts_set_error(err, err_size, "%s: %s." TS_ARCH_KEY_CAUSAL " is false (attention both ways, an embedding "
                            "model): turbosparse decodes causal language models only", m->file->path, m->arch);
    }
    if (get_arch_i64(m, TS_ARCH_KEY_BLOCK_COUNT, &v, 1, err, err_size) || check_positive(m, TS_ARCH_KEY_BLOCK_COUNT, v, TS_MAX_LAYERS, err, err_size)) {
        return -1;
    }
    in->n_layer = (int32_t)v;
    if (get_arch_i64(m, TS_ARCH_KEY_EMBEDDING_LENGTH, &v, 1, err, err_size) ||
        check_positive(m, TS_ARCH_KEY_EMBEDDING_LENGTH, v, 1 << 20, err, err_size)) {
        return -1;
    }
    in->n_embd = (int32_t)v;
    if (get_arch_layer_i64(m, TS_ARCH_KEY_FEED_FORWARD_LENGTH, &v, 1, err, err_size) ||
        check_positive(m, TS_ARCH_KEY_FEED_FORWARD_LENGTH, v, 1 << 22, err, err_size)) {
        return -1;
    }
    in->n_ff = (int32_t)v;
    if (get_arch_layer_i64(m, TS_ARCH_KEY_HEAD_COUNT, &v, 1, err, err_size) ||
        check_positive(m, TS_ARCH_KEY_HEAD_COUNT, v, 4096, err, err_size)) {
        return -1;
    }
    in->n_head = (int32_t)v;
    int rc = get_arch_layer_i64(m, TS_ARCH_KEY_HEAD_COUNT_KV, &v, 0, err, err_size);
    if (rc < 0) {
        return -1;
    }
    in->n_head_kv = rc == 1 ? in->n_head : (int32_t)v;
    if (check_positive(m, TS_ARCH_KEY_HEAD_COUNT_KV, in->n_head_kv, in->n_head, err, err_size)) {
        return -1;
    }
    if (in->n_head % in->n_head_kv != 0) {
        return ts_set_error(err, err_size, "%s: head_count %d is not a multiple of head_count_kv %d", m->file->path,
                            in->n_head, in->n_head_kv);
    }
    in->n_embd_head = in->n_embd / in->n_head;
    rc = get_arch_i64(m, TS_ARCH_KEY_KEY_LENGTH, &v, 0, err, err_size);
    if (rc < 0) {
        return -1;
    }
    if (rc == 0) {
        if (check_positive(m, TS_ARCH_KEY_KEY_LENGTH, v, 1 << 16, err, err_size)) {
            return -1;
        }
        in->n_embd_head = (int32_t)v;
    }
    rc = get_arch_i64(m, TS_ARCH_KEY_VALUE_LENGTH, &v, 0, err, err_size);
    if (rc < 0 || (rc == 0 && v != in->n_embd_head)) {
        return rc < 0 ? -1 : ts_set_error(err, err_size, "%s: attention key and value head sizes differ: not supported", m->file->path);
    }
    if (in->n_embd_head <= 0 || in->n_embd_head % 2 != 0) {
        return ts_set_error(err, err_size, "%s: attention head size %d must be positive and even", m->file->path,
                            in->n_embd_head);
    }
    in->n_rot = in->n_embd_head;
    rc = get_arch_i64(m, TS_ARCH_KEY_ROPE_DIMENSION_COUNT, &v, 0, err, err_size);
    if (rc < 0) {
        return -1;
    }
    if (rc == 0 && v != in->n_embd_head && !(arch->phi && v > 0 && v < in->n_embd_head && v % 2 == 0)) {
        return ts_set_error(err, err_size, "%s: rope.dimension_count %lld differs from the head size %d: not supported",
                            m->file->path, (long long)v, in->n_embd_head);
    }
    in->n_rot = rc == 0 ? (int32_t)v : in->n_rot; /* phi3: the first n_rot dimensions of each head roped */
    in->n_ctx_train = 4096;
    rc = get_arch_i64(m, TS_ARCH_KEY_CONTEXT_LENGTH, &v, 0, err, err_size);
    if (rc < 0) {
        return -1;
    }
    if (rc == 0) {
        if (check_positive(m, TS_ARCH_KEY_CONTEXT_LENGTH, v, INT32_MAX, err, err_size)) {
            return -1;
        }
        in->n_ctx_train = (int32_t)v;
    }
    in->rms_eps = 1e-5f;
    if (get_arch_f32(m, TS_ARCH_KEY_LAYERNORM_RMS_EPS, &in->rms_eps, 1, err, err_size) != 0) {
        return -1;
    }
    if (!(in->rms_eps >= 0.0f) || !isfinite(in->rms_eps)) { /* ggml's rms_norm asserts eps >= 0 */
        return ts_set_error(err, err_size, "%s: %s.attention.layer_norm_rms_epsilon = %g must be finite and >= 0",
                            m->file->path, m->arch, (double)in->rms_eps);
    }
    if (load_experts(m, err, err_size) != 0) {
        return -1;
    }
    if (in->n_expert > 0) { /* an expert's length where the file says it apart (qwen3moe; Mixtral's is n_ff) */
        const int rc_ff = get_arch_i64(m, TS_ARCH_KEY_EXPERT_FEED_FORWARD_LENGTH, &v, 0, err, err_size);
        if (rc_ff < 0 || (rc_ff == 0 && check_positive(m, TS_ARCH_KEY_EXPERT_FEED_FORWARD_LENGTH, v, 1 << 22, err,
                                                       err_size))) {
            return -1;
        }
        in->n_ff = rc_ff == 0 ? (int32_t)v : in->n_ff;
    }
    in->file_type = -1;
    if (ts_gguf_get_i64(m->file, TS_KEY_FILE_TYPE, &v, 0, err, err_size) == 0) {
        in->file_type = (int32_t)v;
    }
    in->predictor_threshold = 0.0f;
    const char *threshold_key = TS_KEY_PREDICTOR_THRESHOLD;
    rc = ts_gguf_get_f32(m->file, threshold_key, &in->predictor_threshold, 0, err, err_size);
    if (rc == 1) {
        threshold_key = TS_KEY_POWERINFER_THRESHOLD;
        rc = ts_gguf_get_f32(m->file, threshold_key, &in->predictor_threshold, 0, err, err_size);
    }
    if (rc == 0 && isnan(in->predictor_threshold)) { /* the context would take NaN for "the file's" */
        return ts_set_error(err, err_size, "%s: %s is NaN: a predictor threshold must be a number", m->file->path,
                            threshold_key);
    }
    if (rc < 0 || load_ffn_activation(m, arch->ffn_act, err, err_size) != 0 ||
        load_predictor_input(m, err, err_size) != 0 || load_rope(m, arch->yarn_keys, err, err_size) != 0) {
        return -1;
    }
    if (refuse_tensors(m, arch->absent, err, err_size) != 0 ||
        (arch->yarn_keys && load_temperature(m, err, err_size) != 0) || (arch->phi && load_phi3(m, err, err_size) != 0) ||
        (arch->granite && load_granite(m, err, err_size) != 0) || split_stacked(m, arch->phi, err, err_size) != 0) {
        return -1;
    }
    return arch->gemma ? load_gemma(m, arch->gemma, err, err_size) : 0;
}

/* ---- tensor plan: what must exist, with which shape ---------------------------------------- */

/* The dimensions tensor shapes are written in; their values for one layer are in a dims table. */
enum dim {
    DIM_1,        /* 1: past the tensor's last dimension */
    DIM_EMBD,     /* n_embd */
    DIM_VOCAB,    /* n_vocab */
    DIM_ROT_HALF, /* n_rot / 2 */
    DIM_HEAD,     /* n_embd_head */
    DIM_Q,        /* n_head * n_embd_head */
    DIM_KV,       /* n_head_kv * n_embd_head */
    DIM_FF,       /* n_ff */
    DIM_EXPERT,   /* n_expert */
    DIM_RANK,     /* this layer's predictor rank (0: none) */
    DIM_GROUPS,   /* n_ff / group size */
    N_DIMS
};

typedef struct dims {
    int64_t v[N_DIMS];
} dims;

/* One tensor the loader looks for. */
typedef struct tensor_spec {
    const char *name;     /* gguf_names.h; %d = the layer */
    const char *alt_name; /* PowerInfer's name for the same tensor, used when the file lacks `name`; or NULL */
    enum tensor_role role;
    size_t slot;          /* offset of its struct ggml_tensor * in ts_layer (per-layer specs) or ts_model */
    int required;         /* 0: optional, its slot stays NULL when absent */
    enum dim ne[3];       /* ggml shape, ne[3] = 1 */
} tensor_spec;

#define LAYER_SLOT(field) offsetof(ts_layer, field)
#define MODEL_SLOT(field) offsetof(ts_model, field)

static const tensor_spec MODEL_TENSORS[] = {
    {TS_TENSOR_TOKEN_EMBD, NULL, ROLE_EMBD, MODEL_SLOT(tok_embd), 1, {DIM_EMBD, DIM_VOCAB, DIM_1}},
    {TS_TENSOR_OUTPUT_NORM, NULL, ROLE_NORM, MODEL_SLOT(output_norm), 1, {DIM_EMBD, DIM_1, DIM_1}},
    {TS_TENSOR_OUTPUT, NULL, ROLE_MATRIX, MODEL_SLOT(output), 0, {DIM_EMBD, DIM_VOCAB, DIM_1}}, /* absent: tied */
    {TS_TENSOR_ROPE_FREQS, NULL, ROLE_ROPE, MODEL_SLOT(rope_freqs), 0, {DIM_ROT_HALF, DIM_1, DIM_1}},
    {TS_TENSOR_ROPE_FACTORS_LONG, NULL, ROLE_ROPE, MODEL_SLOT(rope_long), 0, {DIM_ROT_HALF, DIM_1, DIM_1}},
    {TS_TENSOR_ROPE_FACTORS_SHORT, NULL, ROLE_ROPE, MODEL_SLOT(rope_short), 0, {DIM_ROT_HALF, DIM_1, DIM_1}},
    {TS_TENSOR_OUTPUT_BIAS, NULL, ROLE_BIAS, MODEL_SLOT(output_b), 0, {DIM_VOCAB, DIM_1, DIM_1}},
};
enum { SPEC_OUTPUT = 2 };

static const tensor_spec ATTENTION_TENSORS[] = {
    {TS_TENSOR_ATTN_NORM, NULL, ROLE_NORM, LAYER_SLOT(attn_norm), 1, {DIM_EMBD, DIM_1, DIM_1}},
    {TS_TENSOR_ATTN_Q, NULL, ROLE_MATRIX, LAYER_SLOT(wq), 1, {DIM_EMBD, DIM_Q, DIM_1}},
    {TS_TENSOR_ATTN_K, NULL, ROLE_MATRIX, LAYER_SLOT(wk), 1, {DIM_EMBD, DIM_KV, DIM_1}},
    {TS_TENSOR_ATTN_V, NULL, ROLE_MATRIX, LAYER_SLOT(wv), 1, {DIM_EMBD, DIM_KV, DIM_1}},
    {TS_TENSOR_ATTN_OUTPUT, NULL, ROLE_MATRIX, LAYER_SLOT(wo), 1, {DIM_Q, DIM_EMBD, DIM_1}},
    {TS_TENSOR_ATTN_Q_BIAS, NULL, ROLE_BIAS, LAYER_SLOT(bq), 0, {DIM_Q, DIM_1, DIM_1}},
    {TS_TENSOR_ATTN_K_BIAS, NULL, ROLE_BIAS, LAYER_SLOT(bk), 0, {DIM_KV, DIM_1, DIM_1}},
    {TS_TENSOR_ATTN_V_BIAS, NULL, ROLE_BIAS, LAYER_SLOT(bv), 0, {DIM_KV, DIM_1, DIM_1}},
    {TS_TENSOR_ATTN_OUTPUT_BIAS, NULL, ROLE_BIAS, LAYER_SLOT(bo), 0, {DIM_EMBD, DIM_1, DIM_1}},
    {TS_TENSOR_FFN_NORM, NULL, ROLE_NORM, LAYER_SLOT(ffn_norm), 1, {DIM_EMBD, DIM_1, DIM_1}},
};

/* the per-head query and key norms of an architecture with qk_norm */
static const tensor_spec QK_NORM_TENSORS[] = {
    {TS_TENSOR_ATTN_Q_NORM, NULL, ROLE_NORM, LAYER_SLOT(attn_q_norm), 1, {DIM_HEAD, DIM_1, DIM_1}},
    {TS_TENSOR_ATTN_K_NORM, NULL, ROLE_NORM, LAYER_SLOT(attn_k_norm), 1, {DIM_HEAD, DIM_1, DIM_1}},
};

/* the attention's and FFN's output norms of an architecture with post_norms */
static const tensor_spec POST_NORM_TENSORS[] = {
    {TS_TENSOR_ATTN_POST_NORM, NULL, ROLE_NORM, LAYER_SLOT(attn_post_norm), 1, {DIM_EMBD, DIM_1, DIM_1}},
    {TS_TENSOR_FFN_POST_NORM, NULL, ROLE_NORM, LAYER_SLOT(ffn_post_norm), 1, {DIM_EMBD, DIM_1, DIM_1}},
};

/* FFN matrices read row by row in sparse decoding stay in the mapping when asked to: up always, gate where a
 * predictor selects rows (ROLE_GATE, unless loaded with dense_gate; exact mode computes the gate densely, with
 * ggml's repacked kernels where the gate is a dense matrix). The down
 * matrix is stored standard, transposed or both (check_down_layout). */
static const tensor_spec FFN_TENSORS[] = {
    {TS_TENSOR_FFN_GATE, NULL, ROLE_GATE, LAYER_SLOT(ffn_gate), 1, {DIM_EMBD, DIM_FF, DIM_1}},
    {TS_TENSOR_FFN_UP, NULL, ROLE_ROWS, LAYER_SLOT(ffn_up), 1, {DIM_EMBD, DIM_FF, DIM_1}},
    {TS_TENSOR_FFN_GATE_BIAS, NULL, ROLE_BIAS, LAYER_SLOT(ffn_gate_b), 0, {DIM_FF, DIM_1, DIM_1}},
    {TS_TENSOR_FFN_UP_BIAS, NULL, ROLE_BIAS, LAYER_SLOT(ffn_up_b), 0, {DIM_FF, DIM_1, DIM_1}},
    {TS_TENSOR_FFN_DOWN_BIAS, NULL, ROLE_BIAS, LAYER_SLOT(ffn_down_b), 0, {DIM_EMBD, DIM_1, DIM_1}},
    {TS_TENSOR_FFN_DOWN_T_SCALE, NULL, ROLE_NORM, LAYER_SLOT(ffn_down_t_scale), 0, {DIM_EMBD, DIM_1, DIM_1}},
    {TS_TENSOR_FFN_DOWN, NULL, ROLE_MATRIX, LAYER_SLOT(ffn_down), 0, {DIM_FF, DIM_EMBD, DIM_1}},
    {TS_TENSOR_FFN_DOWN_T, NULL, ROLE_DOWN_T, LAYER_SLOT(ffn_down_t), 0, {DIM_EMBD, DIM_FF, DIM_1}},
};

/* predictor: logits = fc2 . relu(fc1 . input); the rank is fc1's */
static const tensor_spec PREDICTOR_TENSORS[] = {
    {TS_TENSOR_PRED_FC1, TS_TENSOR_POWERINFER_FC1, ROLE_PREDICTOR, LAYER_SLOT(pred_fc1), 1,
     {DIM_EMBD, DIM_RANK, DIM_1}},
    {TS_TENSOR_PRED_FC2, TS_TENSOR_POWERINFER_FC2, ROLE_PREDICTOR, LAYER_SLOT(pred_fc2), 1,
     {DIM_RANK, DIM_FF, DIM_1}},
};

/* A mixture-of-experts FFN under llama.cpp's names (router ffn_gate_inp, experts stacked along ne2), plus ours:
 * the experts' transposed downs and predictors, stacked the same way. */
static const tensor_spec MOE_TENSORS[] = {
    {TS_TENSOR_FFN_GATE_INP, NULL, ROLE_MATRIX, LAYER_SLOT(ffn_gate_inp), 1, {DIM_EMBD, DIM_EXPERT, DIM_1}},
    {TS_TENSOR_FFN_GATE_EXPS, NULL, ROLE_GATE, LAYER_SLOT(ffn_gate_exps), 1, {DIM_EMBD, DIM_FF, DIM_EXPERT}},
    {TS_TENSOR_FFN_UP_EXPS, NULL, ROLE_ROWS, LAYER_SLOT(ffn_up_exps), 1, {DIM_EMBD, DIM_FF, DIM_EXPERT}},
    {TS_TENSOR_FFN_DOWN_T_SCALE, NULL, ROLE_NORM, LAYER_SLOT(ffn_down_t_scale), 0, {DIM_EMBD, DIM_1, DIM_1}},
    {TS_TENSOR_FFN_DOWN_EXPS, NULL, ROLE_MATRIX, LAYER_SLOT(ffn_down_exps), 0, {DIM_FF, DIM_EMBD, DIM_EXPERT}},
    {TS_TENSOR_FFN_DOWN_T_EXPS, NULL, ROLE_DOWN_T, LAYER_SLOT(ffn_down_t_exps), 0, {DIM_EMBD, DIM_FF, DIM_EXPERT}},
};

static const tensor_spec MOE_PREDICTOR_TENSORS[] = {
    {TS_TENSOR_PRED_FC1_EXPS, NULL, ROLE_MATRIX, LAYER_SLOT(pred_fc1_exps), 1, {DIM_EMBD, DIM_RANK, DIM_EXPERT}},
    {TS_TENSOR_PRED_FC2_EXPS, NULL, ROLE_MATRIX, LAYER_SLOT(pred_fc2_exps), 1, {DIM_RANK, DIM_FF, DIM_EXPERT}},
};

/* the grouped route (grouped_ffn.h): group scores */
static const tensor_spec GROUP_TENSORS[] = {
    {TS_TENSOR_PRED_GROUPS, NULL, ROLE_MATRIX, LAYER_SLOT(pred_groups), 1, {DIM_RANK, DIM_GROUPS, DIM_1}},
};

#define N_SPECS(table) ((int)(sizeof(table) / sizeof((table)[0])))

/* The dimensions of a layer with a predictor of `rank` (0: none) and groups of `group` neurons (0: none). */
static dims layer_dims(const ts_model *m, int64_t rank, int64_t group) {
    const ts_model_info *in = &m->info;
    dims d = {{0}};
    d.v[DIM_1] = 1;
    d.v[DIM_EMBD] = in->n_embd;
    d.v[DIM_VOCAB] = in->n_vocab;
    d.v[DIM_ROT_HALF] = in->n_rot / 2;
    d.v[DIM_HEAD] = in->n_embd_head;
    d.v[DIM_Q] = (int64_t)in->n_head * in->n_embd_head;
    d.v[DIM_KV] = (int64_t)in->n_head_kv * in->n_embd_head;
    d.v[DIM_FF] = in->n_ff;
    d.v[DIM_EXPERT] = in->n_expert;
    d.v[DIM_RANK] = rank;
    d.v[DIM_GROUPS] = group > 0 ? in->n_ff / group : 0;
    return d;
}

static binding *plan_add(plan *p, enum tensor_role role, struct ggml_tensor **slot, const char *fmt, int layer) {
    if (p->n == p->cap) {
        int cap = p->cap ? p->cap * 2 : 64;
        binding *items = realloc(p->items, sizeof(binding) * (size_t)cap);
        if (items == NULL) {
            return NULL;
        }
        p->items = items;
        p->cap = cap;
    }
    binding *b = &p->items[p->n++];
    memset(b, 0, sizeof(*b));
    snprintf(b->name, sizeof(b->name), fmt, layer);
    for (int i = 0; i < 4; i++) {
        b->ne[i] = 1;
    }
    b->role = role;
    b->slot = slot;
    return b;
}

static const char *role_expectation(enum tensor_role role) {
    switch (role) {
    case ROLE_NORM:
    case ROLE_BIAS:
    case ROLE_ROPE:
        return "F32";
    default:
        return "a ggml type with CPU dot products";
    }
}

static int type_ok(enum tensor_role role, enum ggml_type type) {
    if (role == ROLE_NORM || role == ROLE_BIAS || role == ROLE_ROPE) {
        return type == GGML_TYPE_F32;
    }
    if (type == GGML_TYPE_F32) {
        return 1;
    }
    /* quantized and half types need CPU dot products (mul_mat) and a dequantizer (get_rows) */
    const struct ggml_type_traits_cpu *cpu = ggml_get_type_traits_cpu(type);
    const struct ggml_type_traits *base = ggml_get_type_traits(type);
    return cpu != NULL && cpu->vec_dot != NULL && base->to_float != NULL;
}

/* Finds and validates b's file tensor; returns 1 when absent (and not an error), 0 found, -1 error. */
static int resolve(const ts_model *m, binding *b, int required, char *err, size_t err_size) {
    const ts_gguf_tensor *t = ts_gguf_find_tensor(m->file, b->name);
    if (t == NULL) {
        if (required) {
            return ts_set_error(err, err_size, "%s: missing tensor '%s'", m->file->path, b->name);
        }
        return 1;
    }
    for (int i = 0; i < 4; i++) {
        if (t->ne[i] != b->ne[i]) {
            return ts_set_error(err, err_size, "%s: tensor '%s' has shape [%lld, %lld, %lld, %lld], expected [%lld, %lld, %lld, %lld]",
                                m->file->path, b->name, (long long)t->ne[0], (long long)t->ne[1], (long long)t->ne[2],
                                (long long)t->ne[3], (long long)b->ne[0], (long long)b->ne[1], (long long)b->ne[2],
                                (long long)b->ne[3]);
        }
    }
    if (!type_ok(b->role, (enum ggml_type)t->type)) {
        return ts_set_error(err, err_size, "%s: tensor '%s' has type %s, expected %s", m->file->path, b->name,
                            ggml_type_name((enum ggml_type)t->type), role_expectation(b->role));
    }
    b->src = t;
    return 0;
}

/* The file's tensor `fmt` of layer `layer`, or NULL. */
static const ts_gguf_tensor *find_layer_tensor(const ts_model *m, const char *fmt, int layer) {
    char name[GGML_MAX_NAME];
    snprintf(name, sizeof(name), fmt, layer);
    return ts_gguf_find_tensor(m->file, name);
}

/*
 * Adds the tensors of `specs` (of layer `layer`; model-wide names ignore it) to the plan, each checked against the
 * file; their slots are in `base`. Sets bit i of *found (may be NULL) for each spec i the file has. 0, or -1 on a
 * required tensor missing or any tensor of the wrong shape or type.
 */
static int plan_specs(const ts_model *m, plan *p, void *base, const tensor_spec *specs, int n_specs, int layer,
                      const dims *d, uint32_t *found, char *err, size_t err_size) {
    for (int i = 0; i < n_specs; i++) {
        const tensor_spec *s = &specs[i];
        const int gate_rows = d->v[DIM_RANK] > 0 && !m->dense_gate;
        const enum tensor_role role = s->role != ROLE_GATE ? s->role : gate_rows ? ROLE_ROWS : ROLE_MATRIX;
        const char *fmt = s->name;
        if (s->alt_name != NULL && find_layer_tensor(m, s->name, layer) == NULL &&
            (m->info.is_powerinfer || find_layer_tensor(m, s->alt_name, layer) != NULL)) {
            fmt = s->alt_name; /* a missing tensor is named as the file's own kind names it */
        }
        binding *b = plan_add(p, role, (struct ggml_tensor **)((char *)base + s->slot), fmt, layer);
        if (b == NULL) {
            return ts_set_error(err, err_size, "out of memory");
        }
        for (int k = 0; k < 3; k++) {
            b->ne[k] = d->v[s->ne[k]];
        }
        const int rc = resolve(m, b, s->required, err, err_size);
        if (rc != 0) {
            p->n--; /* absent or invalid: not part of the plan */
        }
        if (rc < 0) {
            return -1;
        }
        if (rc == 0 && found != NULL) {
            *found |= 1u << i;
        }
    }
    return 0;
}

/* The down matrix of layer il is stored standard, transposed or both, as in layer 0. */
static int check_down_layout(ts_model *m, int il, int has_down, int has_down_t, const char *down, const char *down_t,
                             char *err, size_t err_size) {
    ts_model_info *in = &m->info;
    if (!has_down && !has_down_t) {
        char name[GGML_MAX_NAME], name_t[GGML_MAX_NAME];
        snprintf(name, sizeof(name), down, il);
        snprintf(name_t, sizeof(name_t), down_t, il);
        return ts_set_error(err, err_size, "%s: missing tensor '%s' (or its transpose '%s')", m->file->path, name, name_t);
    }
    if (il == 0) {
        in->has_down = has_down;
        in->has_down_t = has_down_t;
    } else if (in->has_down != has_down || in->has_down_t != has_down_t) {
        return ts_set_error(err, err_size, "%s: layer %d stores its down matrix differently from layer 0", m->file->path, il);
    }
    return 0;
}

/* Layer il's FFN (dense or experts) and its predictor when the file has one (its rank: fc1's ne[1]). */
static int plan_ffn(ts_model *m, plan *p, int il, char *err, size_t err_size) {
    const int moe = m->info.n_expert > 0;
    const tensor_spec *ffn = moe ? MOE_TENSORS : FFN_TENSORS;
    const tensor_spec *pred = moe ? MOE_PREDICTOR_TENSORS : PREDICTOR_TENSORS;
    const int n_ffn = moe ? N_SPECS(MOE_TENSORS) : N_SPECS(FFN_TENSORS);
    const int down = n_ffn - 2, down_t = n_ffn - 1; /* both tables end with the down matrix and its transpose */
    const ts_gguf_tensor *fc1 = find_layer_tensor(m, pred[0].name, il);
    if (fc1 == NULL && pred[0].alt_name != NULL) {
        fc1 = find_layer_tensor(m, pred[0].alt_name, il);
    }
    m->pred_rank[il] = 0;
    const dims d = layer_dims(m, fc1 != NULL ? fc1->ne[1] : 0, 0);
    ts_layer *l = &m->layers[il];
    uint32_t found = 0;
    if (plan_specs(m, p, l, ffn, n_ffn, il, &d, &found, err, err_size) != 0 ||
        check_down_layout(m, il, (found >> down) & 1, (found >> down_t) & 1, ffn[down].name, ffn[down_t].name, err,
                          err_size) != 0) {
        return -1;
    }
    if (fc1 != NULL) {
        if (plan_specs(m, p, l, pred, 2, il, &d, NULL, err, err_size) != 0) {
            return -1;
        }
        m->pred_rank[il] = (int32_t)d.v[DIM_RANK];
    }
    return 0;
}

static int plan_layer(ts_model *m, plan *p, int il, char *err, size_t err_size) {
    const dims d = layer_dims(m, 0, 0);
    if (plan_specs(m, p, &m->layers[il], ATTENTION_TENSORS, N_SPECS(ATTENTION_TENSORS), il, &d, NULL, err,
                   err_size) != 0 ||
        (m->qk_norm && plan_specs(m, p, &m->layers[il], QK_NORM_TENSORS, N_SPECS(QK_NORM_TENSORS), il, &d, NULL, err,
                                  err_size) != 0) ||
        (m->post_norms && plan_specs(m, p, &m->layers[il], POST_NORM_TENSORS, N_SPECS(POST_NORM_TENSORS), il, &d, NULL,
                                     err, err_size) != 0)) {
        return -1;
    }
    return plan_ffn(m, p, il, err, err_size);
}

static int check_predictor_ranks(ts_model *m, char *err, size_t err_size) {
    int n_with = 0;
    for (int il = 0; il < m->info.n_layer; il++) {
        n_with += m->pred_rank[il] > 0;
    }
    m->info.has_predictors = n_with == m->info.n_layer;
    int64_t *declared = malloc(sizeof(int64_t) * (size_t)m->info.n_layer);
    if (declared == NULL) {
        return ts_set_error(err, err_size, "out of memory");
    }
    int rc = ts_gguf_get_arr_i64(m->file, TS_KEY_PREDICTOR_RANKS, declared, m->info.n_layer, 0, err, err_size);
    for (int il = 0; rc == 0 && il < m->info.n_layer; il++) {
        if (declared[il] > 0 && m->pred_rank[il] == 0) { /* the rank is fc1's: without it, name the tensor */
            char name[GGML_MAX_NAME];
            snprintf(name, sizeof(name), m->info.n_expert > 0 ? TS_TENSOR_PRED_FC1_EXPS : TS_TENSOR_PRED_FC1, il);
            rc = ts_set_error(err, err_size, "%s: missing tensor '%s' (%s[%d] = %lld)", m->file->path, name,
                              TS_KEY_PREDICTOR_RANKS, il, (long long)declared[il]);
        } else if (declared[il] != m->pred_rank[il]) {
            rc = ts_set_error(err, err_size, "%s: %s[%d] = %lld but layer %d's predictor has rank %d", m->file->path,
                              TS_KEY_PREDICTOR_RANKS, il, (long long)declared[il], il, m->pred_rank[il]);
        }
    }
    free(declared);
    return rc < 0 ? -1 : 0;
}

/*
 * The grouped route (grouped_ffn.h), when turbosparse.group_size is present: per layer the group scores
 * blk.N.ffn_pred_groups.weight [rank, n_ff/G], and turbosparse.group_top_k[n_layer] in 1..n_ff/G. Needs a predictor
 * in every layer and the standard down matrices. (Files of before 2026-12-04 also hold per-group down slices,
 * blk.N.ffn_down_groups.weight: no longer read; those that hold only the transposed down load without their groups.)
 */
static int plan_groups(ts_model *m, plan *p, char *err, size_t err_size) {
    ts_model_info *in = &m->info;
    int64_t g = 0;
    int rc = ts_gguf_get_i64(m->file, TS_KEY_GROUP_SIZE, &g, 0, err, err_size);
    if (rc != 0) {
        return rc < 0 ? -1 : 0;
    }
    if (g <= 0 || in->n_ff % g != 0) {
        return ts_set_error(err, err_size, "%s: %s = %lld must divide feed_forward_length %d", m->file->path,
                            TS_KEY_GROUP_SIZE, (long long)g, in->n_ff);
    }
    if (!in->has_predictors) {
        return ts_set_error(err, err_size, "%s: %s is set but not every layer has a predictor", m->file->path,
                            TS_KEY_GROUP_SIZE);
    }
    int64_t scaled = 0;
    if (ts_gguf_get_i64(m->file, TS_KEY_DOWN_COLUMNS_SCALED, &scaled, 0, err, err_size) < 0) {
        return -1;
    }
    m->down_columns_scaled = scaled != 0;
    if (!in->has_down) {
        m->stale_groups = 1; /* the other modes still run; ts_sparse_mode_check says why groups do not */
        return 0;
    }
    const int64_t n_groups = in->n_ff / g;
    int64_t *top_k = malloc(sizeof(int64_t) * (size_t)in->n_layer);
    if (top_k == NULL) {
        return ts_set_error(err, err_size, "out of memory");
    }
    rc = ts_gguf_get_arr_i64(m->file, TS_KEY_GROUP_TOP_K, top_k, in->n_layer, 1, err, err_size);
    for (int il = 0; rc == 0 && il < in->n_layer; il++) {
        if (top_k[il] < 1 || top_k[il] > n_groups) {
            rc = ts_set_error(err, err_size, "%s: %s[%d] = %lld is out of range (1..%lld groups)", m->file->path,
                              TS_KEY_GROUP_TOP_K, il, (long long)top_k[il], (long long)n_groups);
        }
        m->group_top_k[il] = (int32_t)top_k[il];
    }
    free(top_k);
    for (int il = 0; rc == 0 && il < in->n_layer; il++) {
        const dims d = layer_dims(m, m->pred_rank[il], g);
        rc = plan_specs(m, p, &m->layers[il], GROUP_TENSORS, N_SPECS(GROUP_TENSORS), il, &d, NULL, err, err_size);
    }
    in->group_size = rc == 0 ? (int32_t)g : 0;
    return rc == 0 ? 0 : -1;
}

/* Optional per-layer thresholds of a calibrated file (turbosparse calibrate): non-negative, one per layer. */
static int load_threshold_array(ts_model *m, const char *key, float *out, char *err, size_t err_size) {
    const int rc = ts_gguf_get_arr_f32(m->file, key, out, m->info.n_layer, 0, err, err_size);
    if (rc < 0) {
        return -1;
    }
    for (int il = 0; il < m->info.n_layer; il++) {
        if (rc == 1) {
            out[il] = 0.0f;
        } else if (out[il] < 0.0f) {
            return ts_set_error(err, err_size, "%s: %s[%d] = %g is negative", m->file->path, key, il, (double)out[il]);
        }
    }
    return rc;
}

/* Optional per-neuron scales of the threshold scores (turbosparse calibrate): n_layer * n_ff values >= 0, layer-major;
 * *out stays NULL when the key is absent. */
static int load_scale_array(ts_model *m, const char *key, float **out, char *err, size_t err_size) {
    if (ts_gguf_find_kv(m->file, key) == NULL) {
        return 0;
    }
    const int64_t n = (int64_t)m->info.n_layer * m->info.n_ff;
    *out = malloc(sizeof(float) * (size_t)n);
    if (*out == NULL) {
        return ts_set_error(err, err_size, "out of memory");
    }
    if (ts_gguf_get_arr_f32(m->file, key, *out, n, 1, err, err_size) != 0) {
        return -1;
    }
    for (int64_t i = 0; i < n; i++) {
        if ((*out)[i] < 0.0f) {
            return ts_set_error(err, err_size, "%s: %s[%lld] (layer %lld, neuron %lld) = %g is negative", m->file->path,
                                key, (long long)i, (long long)(i / m->info.n_ff), (long long)(i % m->info.n_ff),
                                (double)(*out)[i]);
        }
    }
    return 0;
}

static int load_ffn_thresholds(ts_model *m, char *err, size_t err_size) {
    const int gate = load_threshold_array(m, TS_KEY_GATE_THRESHOLDS, m->gate_threshold, err, err_size);
    const int act = gate < 0 ? -1 : load_threshold_array(m, TS_KEY_ACT_THRESHOLDS, m->act_threshold, err, err_size);
    if (gate < 0 || act < 0 || load_scale_array(m, TS_KEY_FFN_GATE_SCALES, &m->gate_scale, err, err_size) != 0 ||
        load_scale_array(m, TS_KEY_FFN_ACT_SCALES, &m->act_scale, err, err_size) != 0) {
        return -1;
    }
    m->info.has_ffn_thresholds = gate == 0;
    return 0;
}

static int build_plan(ts_model *m, plan *p, char *err, size_t err_size) {
    ts_model_info *in = &m->info;
    /* the vocabulary size is the embedding's row count */
    const ts_gguf_tensor *embd = ts_gguf_find_tensor(m->file, TS_TENSOR_TOKEN_EMBD);
    if (embd == NULL) {
        return ts_set_error(err, err_size, "%s: missing tensor '%s'", m->file->path, TS_TENSOR_TOKEN_EMBD);
    }
    if (embd->ne[1] > INT32_MAX) {
        return ts_set_error(err, err_size, "%s: %s has %lld rows: more tokens than turbosparse reads", m->file->path,
                            TS_TENSOR_TOKEN_EMBD, (long long)embd->ne[1]);
    }
    in->n_vocab = (int32_t)embd->ne[1];
    const dims d = layer_dims(m, 0, 0);
    uint32_t found = 0;
    if (plan_specs(m, p, m, MODEL_TENSORS, N_SPECS(MODEL_TENSORS), 0, &d, &found, err, err_size) != 0) {
        return -1;
    }
    if (!((found >> SPEC_OUTPUT) & 1)) {
        /* tied embeddings: a second binding of the same data that may be repacked for mul_mat */
        binding *b = plan_add(p, ROLE_MATRIX, &m->output, TS_TENSOR_OUTPUT, 0);
        if (b == NULL) {
            return ts_set_error(err, err_size, "out of memory");
        }
        b->ne[0] = in->n_embd;
        b->ne[1] = in->n_vocab;
        b->src = embd;
    }
    for (int il = 0; il < in->n_layer; il++) {
        if (plan_layer(m, p, il, err, err_size) != 0) {
            return -1;
        }
    }
    if (check_predictor_ranks(m, err, err_size) != 0) {
        return -1;
    }
    return plan_groups(m, p, err, err_size);
}

/* ---- placement and allocation ---------------------------------------------------------------- */

/* ggml's extra CPU buffer type (repacking) that runs mul_mat with this weight (mul_mat_id for n_expert stacked
 * matrices, ne2 > 1), or NULL. */
static ggml_backend_buffer_type_t repack_buft_for(enum ggml_type type, int64_t ne0, int64_t ne1, int64_t ne2) {
    ggml_backend_dev_t dev = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU);
    if (dev == NULL) {
        return NULL;
    }
    ggml_backend_reg_t reg = ggml_backend_dev_backend_reg(dev);
    ggml_backend_dev_get_extra_bufts_t get_extra =
        (ggml_backend_dev_get_extra_bufts_t)ggml_backend_reg_get_proc_address(reg, "ggml_backend_dev_get_extra_bufts");
    if (get_extra == NULL) {
        return NULL;
    }
    ggml_backend_buffer_type_t found = NULL;
    for (ggml_backend_buffer_type_t *buft = get_extra(dev); buft != NULL && *buft != NULL && found == NULL; buft++) {
        /* ggml's AMX buffer type: Q8_0 / Q4_0 weights placed there died with SIGILL in our graph on this VM (an
         * AMX-capable Xeon; cause not pinned down: tile permission or per-thread tile setup); the portable repack
         * buffer is used instead */
        if (strcmp(ggml_backend_buft_name(*buft), "AMX") == 0) {
            continue;
        }
        /* a fresh context per candidate: each probe creates three tensors */
        struct ggml_init_params ip = {.mem_size = 5 * ggml_tensor_overhead(), .mem_buffer = NULL, .no_alloc = true};
        struct ggml_context *ctx = ggml_init(ip);
        if (ctx == NULL) {
            return NULL;
        }
        ggml_backend_buffer_t dummy = ggml_backend_buft_alloc_buffer(*buft, 0);
        if (dummy == NULL) {
            ggml_free(ctx);
            continue;
        }
        struct ggml_tensor *w = ggml_new_tensor_3d(ctx, type, ne0, ne1, ne2);
        w->buffer = dummy;
        struct ggml_tensor *op = ne2 > 1 ? ggml_mul_mat_id(ctx, w, ggml_new_tensor_3d(ctx, GGML_TYPE_F32, ne0, 1, 1),
                                                           ggml_new_tensor_2d(ctx, GGML_TYPE_I32, 1, 1))
                                         : ggml_mul_mat(ctx, w, ggml_new_tensor_2d(ctx, GGML_TYPE_F32, ne0, 1));
        if (ggml_backend_dev_supports_op(dev, op)) {
            found = *buft;
        }
        ggml_backend_buffer_free(dummy);
        ggml_free(ctx);
    }
    return found;
}

static struct ggml_context *new_meta_context(int n_tensors) {
    struct ggml_init_params ip = {
        .mem_size = (size_t)(n_tensors + 1) * ggml_tensor_overhead(), .mem_buffer = NULL, .no_alloc = true};
    return ggml_init(ip);
}

/* the transposed down matrices: only the CPU's row-sparse ops read them */
static int is_down_t(const binding *b) {
    return strstr(b->name, ".ffn_down_t.") != NULL || strstr(b->name, ".ffn_down_t_exps.") != NULL;
}

/* Matrices whose rows are gathered a few at a time, scattered over the whole matrix: gate/up left unrepacked for the
 * sparse ops, and the transposed downs. */
static int is_row_read(const binding *b, const ts_model_params *params) {
    return b->role == ROLE_DOWN_T || (b->role == ROLE_ROWS && params->sparse_rows);
}

/* A row-read matrix's bytes in the copy: each starts 64-byte aligned. */
static size_t rows_bytes(const binding *b) {
    const size_t bytes = b->requant ? ggml_row_size(GGML_TYPE_Q8_0, b->ne[0]) * (size_t)(b->ne[1] * b->ne[2] * b->ne[3])
                                    : b->src->nbytes;
    return (bytes + 63) / 64 * 64;
}

/* rows of src_type -> Q8_0 rows (through float, a chunk of rows at a time) */
static int requantize_rows(enum ggml_type src_type, const void *src, void *dst, int64_t n_rows, int64_t n_per_row) {
    enum { CHUNK = 64 };
    float *buf = malloc((size_t)CHUNK * (size_t)n_per_row * sizeof(float));
    if (buf == NULL) {
        return -1;
    }
    const ggml_to_float_t to_float = ggml_get_type_traits(src_type)->to_float;
    const ggml_from_float_t to_q8_0 = ggml_get_type_traits_cpu(GGML_TYPE_Q8_0)->from_float; /* vectorized */
    const size_t src_row = ggml_row_size(src_type, n_per_row), dst_row = ggml_row_size(GGML_TYPE_Q8_0, n_per_row);
    for (int64_t r = 0; r < n_rows; r += CHUNK) {
        const int64_t n = n_rows - r < CHUNK ? n_rows - r : CHUNK;
        to_float((const char *)src + (size_t)r * src_row, buf, n * n_per_row);
        to_q8_0(buf, (char *)dst + (size_t)r * dst_row, n * n_per_row);
    }
    free(buf);
    return 0;
}

static binding *find_binding(plan *p, struct ggml_tensor **slot) {
    for (int i = 0; i < p->n; i++) {
        if (p->items[i].slot == slot) {
            return &p->items[i];
        }
    }
    return NULL;
}

/* Where a layer's gate and up are both copied row by row (the predictor's layers), the copy lays gate row j and up row
 * j side by side (gate_0, up_0, gate_1, up_1, ...) and each tensor sees its rows two row sizes apart (nb[1]): the act
 * node reads a neuron's two rows together, which are then one stream of memory instead of two far apart. The
 * gate/up kernel read 10-15 % of a Mistral-7B layer's neurons from DRAM 1.02-1.17x faster so (2 threads, AMD EPYC
 * Zen 3). A prompt reads both through the layer's ffn_gate_up in one pass (rows_matmul.h), as two strided passes
 * would each also drag the other's rows in. Not for a file with neuron groups: the grouped route views gate and up
 * as contiguous [n_embd, G, n_ff / G] stacks. */
static void pair_gate_up(ts_model *m, plan *p) {
    if (m->info.group_size > 0) {
        return;
    }
    for (int il = 0; il < m->info.n_layer; il++) {
        ts_layer *l = &m->layers[il];
        binding *g = find_binding(p, m->info.n_expert > 0 ? &l->ffn_gate_exps : &l->ffn_gate);
        binding *u = find_binding(p, m->info.n_expert > 0 ? &l->ffn_up_exps : &l->ffn_up);
        if (g != NULL && u != NULL && g->rows && u->rows && g->role == ROLE_ROWS && u->role == ROLE_ROWS &&
            g->split == u->split && !g->requant && !u->requant && g->src->type == u->src->type &&
            memcmp(g->ne, u->ne, sizeof(g->ne)) == 0) {
            g->up_beside = u;
            g->layer = il;
            u->beside_gate = 1;
        }
    }
}

/* A gate and its layer's up (pair_gate_up) placed at `at` and copied there row by row, side by side; the layer's
 * ffn_gate_up spans both. */
static int place_side_by_side(ts_model *m, const binding *g, char *at, char *err, size_t err_size) {
    const int il = g->layer;
    struct ggml_tensor *t[2] = {*g->slot, *g->up_beside->slot};
    const ts_gguf_tensor *src[2] = {g->src, g->up_beside->src};
    const size_t row = t[0]->nb[1];
    struct ggml_tensor *both = ggml_new_tensor_3d(m->ctx_mapped, t[0]->type, t[0]->ne[0], 2 * t[0]->ne[1], t[0]->ne[2]);
    ggml_format_name(both, "blk.%d.ffn_gate_up", il);
    if (ggml_backend_tensor_alloc(m->buf_rows, both, at) != GGML_STATUS_SUCCESS) {
        return ts_set_error(err, err_size, "%s: cannot place the gate and up of layer %d", m->file->path, il);
    }
    m->layers[il].ffn_gate_up = both;
    for (int k = 0; k < 2; k++) {
        t[k]->nb[1] = 2 * row;
        t[k]->nb[2] = t[k]->nb[1] * (size_t)t[k]->ne[1];
        t[k]->nb[3] = t[k]->nb[2] * (size_t)t[k]->ne[2];
        if (ggml_backend_tensor_alloc(m->buf_rows, t[k], at + k * row) != GGML_STATUS_SUCCESS) {
            return ts_set_error(err, err_size, "%s: cannot place tensor '%s'", m->file->path, t[k]->name);
        }
    }
    const int64_t n_rows = ggml_nrows(t[0]);
    for (int64_t r = 0; r < n_rows; r++) {
        for (int k = 0; k < 2; k++) {
            const char *from = (const char *)src[k]->data + (size_t)r * row;
            char *to = at + (size_t)(2 * r + k) * row;
            if (g->split) { /* both are (pair_gate_up) */
                ts_rows_split(t[k]->type, from, to, 1, row);
            } else {
                memcpy(to, from, row);
            }
        }
    }
    for (int k = 0; k < 2; k++) {
        ts_gguf_release(m->file, src[k]->data, src[k]->nbytes);
    }
    return 0;
}

/* With repack, where the OS has huge pages and the memory to hold them, the row-read matrices get a copy in
 * huge-page memory (huge_pages.h); a transposed down whose kernel reads the split row layout (axpy_rows.h) or that is
 * held in another type (requant) always does, re-laid out or requantized on the way. The bytes of the mapping they were copied from are then released from memory (the
 * file keeps them). A model larger than the memory available keeps its rows in the mapping, where the OS pages in
 * the rows tokens read and can evict the rest. */
static int allocate_rows(ts_model *m, plan *p, const ts_model_params *params, char *err, size_t err_size) {
    size_t size_huge = 0;
    for (int i = 0; i < p->n; i++) {
        const binding *b = &p->items[i];
        size_huge += is_row_read(b, params) ? rows_bytes(b) : 0; /* transposed downs (split, requant) included */
    }
    const int huge = params->repack && ts_huge_pages_available() && size_huge <= ts_memory_available() / 10 * 9;
    size_t size = 0;
    for (int i = 0; i < p->n; i++) {
        binding *b = &p->items[i];
        /* gate / up rows copied anyway whose type and length split-layout kernels take are held so (gate_up_dot.h);
         * not for the grouped route, which reads them through ggml */
        b->split = b->split || (huge && b->role == ROLE_ROWS && is_row_read(b, params) && m->info.group_size == 0 &&
                                ts_gate_up_split((enum ggml_type)b->src->type, b->ne[0]));
        b->rows = b->split || b->requant || (huge && is_row_read(b, params));
        size += b->rows ? rows_bytes(b) : 0;
    }
    if (size == 0) {
        return 0;
    }
    m->rows_memory = ts_huge_alloc(size);
    if (m->rows_memory == NULL) {
        return ts_set_error(err, err_size, "%s: out of memory for the FFN matrices (%.1f MiB)", m->file->path,
                            (double)size / (1 << 20));
    }
    m->rows_memory_size = size;
    m->buf_rows = ggml_backend_cpu_buffer_from_ptr(m->rows_memory, size);
    if (m->buf_rows == NULL) {
        return ts_set_error(err, err_size, "%s: cannot wrap the FFN matrices' memory in a ggml buffer", m->file->path);
    }
    ggml_backend_buffer_set_usage(m->buf_rows, GGML_BACKEND_BUFFER_USAGE_WEIGHTS);
    pair_gate_up(m, p);
    size_t offset = 0;
    for (int i = 0; i < p->n; i++) {
        const binding *b = &p->items[i];
        if (!b->rows || b->beside_gate) {
            continue;
        }
        if (b->up_beside != NULL) {
            if (place_side_by_side(m, b, (char *)m->rows_memory + offset, err, err_size) != 0) {
                return -1;
            }
            offset += rows_bytes(b) + rows_bytes(b->up_beside);
            continue;
        }
        struct ggml_tensor *t = *b->slot;
        if (ggml_backend_tensor_alloc(m->buf_rows, t, (char *)m->rows_memory + offset) != GGML_STATUS_SUCCESS) {
            return ts_set_error(err, err_size, "%s: cannot place tensor '%s'", m->file->path, b->name);
        }
        if (b->split) { /* a transposed down as its kernel reads it, gate or up rows in the split layout */
            const enum ts_rows_layout layout = is_down_t(b) ? ts_axpy_rows_layout(t->type) : TS_ROWS_SPLIT;
            ts_rows_to_layout(layout, t->type, b->src->data, t->data, ggml_nrows(t), t->nb[1]);
        } else if (b->requant) {
            if (requantize_rows((enum ggml_type)b->src->type, b->src->data, t->data, ggml_nrows(t), t->ne[0]) != 0) {
                return ts_set_error(err, err_size, "%s: out of memory requantizing '%s'", m->file->path, b->name);
            }
        } else {
            memcpy(t->data, b->src->data, b->src->nbytes);
        }
        ts_gguf_release(m->file, b->src->data, b->src->nbytes);
        offset += rows_bytes(b);
    }
    return 0;
}

/*
 * A predictor's matrices in a model placed for predictor mode are read like the gate/up rows (ROLE_ROWS: copied, in the
 * split layout where its kernels take it) where this CPU has decoding kernels for them (rows_dot.h), not repacked for
 * ggml's mul_mat, if their rows are long enough: ggml's repacked GEMV, which sums 8 rows without a horizontal sum per
 * row, read a rank-256 fc2 (rows of 256 values) in 0.149 against 0.157-0.164 ms, and the default model (fc1 rows of
 * 576, fc2 of 128) decoded 3 % faster so; rows of 1024 (a rank-1024 fc2) and 4096 (fc1) read 1.3x faster through the
 * decoding kernels (Q4_0, one thread, AMD EPYC Zen 4). Not for the grouped route, which reads fc1 through ggml.
 */
static enum tensor_role predictor_role(const ts_model *m, const binding *b, const ts_model_params *params) {
    enum { MIN_ROW = 1024 };
    const int kernel =
        b->ne[0] >= MIN_ROW && ts_dot_kernel_best((enum ggml_type)b->src->type, b->ne[0]).isa != TS_ISA_GENERIC;
    return params->sparse_rows && !m->dense_gate && m->on_cpu && m->info.group_size == 0 && kernel ? ROLE_ROWS
                                                                                                : ROLE_MATRIX;
}

static int allocate(ts_model *m, plan *p, const ts_model_params *params, char *err, size_t err_size) {
    ggml_backend_buffer_type_t repack_buft = NULL;
    int n_repack = 0;
    for (int i = 0; i < p->n; i++) {
        binding *b = &p->items[i];
        b->role = b->role == ROLE_PREDICTOR ? predictor_role(m, b, params) : b->role;
        const int eligible = b->role == ROLE_MATRIX || (b->role == ROLE_ROWS && !params->sparse_rows);
        if (params->repack && eligible) {
            ggml_backend_buffer_type_t buft = repack_buft_for((enum ggml_type)b->src->type, b->ne[0], b->ne[1], b->ne[2]);
            if (buft != NULL && (repack_buft == NULL || buft == repack_buft)) {
                repack_buft = buft;
                b->repack = 1;
                n_repack++;
            }
        }
    }
    m->ctx_mapped = new_meta_context(p->n + m->info.n_layer); /* + each layer's ffn_gate_up */
    m->ctx_repacked = new_meta_context(n_repack);
    if (m->ctx_mapped == NULL || m->ctx_repacked == NULL) {
        return ts_set_error(err, err_size, "out of memory creating tensor contexts");
    }
    for (int i = 0; i < p->n; i++) {
        binding *b = &p->items[i];
        struct ggml_context *ctx = b->repack ? m->ctx_repacked : m->ctx_mapped;
        /* a transposed down is held as its kernel reads it: re-laid out (split) or requantized (requant) */
        const enum ggml_type type = (enum ggml_type)b->src->type;
        b->split = is_down_t(b) && ts_axpy_rows_layout(type) != TS_ROWS_GGML;
        b->requant = is_down_t(b) && ts_axpy_rows_held_type(type) != type;
        struct ggml_tensor *t = ggml_new_tensor(ctx, b->requant ? GGML_TYPE_Q8_0 : type, 4, b->ne);
        ggml_set_name(t, b->name);
        *b->slot = t;
    }
    if (allocate_rows(m, p, params, err, err_size) != 0) {
        return -1;
    }
    for (int il = 0; il < m->info.n_layer; il++) {
        ts_layer *l = &m->layers[il];
        const binding *g = find_binding(p, m->info.n_expert > 0 ? &l->ffn_gate_exps : &l->ffn_gate);
        const binding *u = find_binding(p, m->info.n_expert > 0 ? &l->ffn_up_exps : &l->ffn_up);
        l->gate_split = g != NULL && g->role == ROLE_ROWS && g->split;
        l->up_split = u != NULL && u->role == ROLE_ROWS && u->split;
        const binding *fc1 = find_binding(p, &l->pred_fc1), *fc2 = find_binding(p, &l->pred_fc2);
        l->pred_fc1_split = fc1 != NULL && fc1->split;
        l->pred_fc2_split = fc2 != NULL && fc2->split;
    }
    /* one buffer over each file's mapping: the file's, then a split model's other files' */
    m->bufs_mapped = calloc((size_t)(1 + m->file->n_shards), sizeof(*m->bufs_mapped));
    if (m->bufs_mapped == NULL) {
        return ts_set_error(err, err_size, "out of memory");
    }
    m->n_bufs_mapped = 1 + m->file->n_shards;
    for (int k = 0; k < m->n_bufs_mapped; k++) {
        const ts_gguf_file *f = k == 0 ? m->file : m->file->shards[k - 1];
        m->bufs_mapped[k] = ggml_backend_cpu_buffer_from_ptr(f->map, f->size);
        if (m->bufs_mapped[k] == NULL) {
            return ts_set_error(err, err_size, "%s: cannot wrap the mapping in a ggml buffer", f->path);
        }
        ggml_backend_buffer_set_usage(m->bufs_mapped[k], GGML_BACKEND_BUFFER_USAGE_WEIGHTS);
    }
    if (n_repack > 0) {
        m->buf_repacked = ggml_backend_alloc_ctx_tensors_from_buft(m->ctx_repacked, repack_buft);
        if (m->buf_repacked == NULL) {
            return ts_set_error(err, err_size, "%s: out of memory allocating repacked weights", m->file->path);
        }
        ggml_backend_buffer_set_usage(m->buf_repacked, GGML_BACKEND_BUFFER_USAGE_WEIGHTS);
        ts_huge_advise(ggml_backend_buffer_get_base(m->buf_repacked), ggml_backend_buffer_get_size(m->buf_repacked));
    }
    for (int i = 0; i < p->n; i++) {
        binding *b = &p->items[i];
        struct ggml_tensor *t = *b->slot;
        if (b->rows) {
            continue;
        } else if (b->repack) {
            ggml_backend_tensor_set(t, b->src->data, 0, b->src->nbytes);
            continue;
        }
        const int k = ts_gguf_mapping_of(m->file, b->src->data); /* the file (of a split model) that holds it */
        if (k < 0 || ggml_backend_tensor_alloc(m->bufs_mapped[k], t, b->src->data) != GGML_STATUS_SUCCESS) {
            return ts_set_error(err, err_size, "%s: cannot place tensor '%s'", m->file->path, b->name);
        }
    }
    return 0;
}

/* What a model needs on a device other than the CPU, where the FFN runs as ggml's own matrix products. */
static int check_device_model(const ts_model *m, char *err, size_t err_size) {
    const char *dev = ggml_backend_dev_name(m->device);
    if (m->info.n_expert > 0) {
        return ts_fail(err, err_size, TS_ERR_ARGUMENT,
                       "%s: mixture-of-experts models run on the CPU only (device '%s' asked for)", m->file->path, dev);
    }
    if (!m->info.has_down) {
        return ts_fail(err, err_size, TS_ERR_ARGUMENT,
                       "%s: on device '%s' the FFN needs the standard down matrices (blk.N.ffn_down.weight); this file "
                       "stores only their transpose (convert with --down-layout both)",
                       m->file->path, dev);
    }
    return 0;
}

/* A device other than the CPU: every tensor a graph there reads, in the device's own buffers, copied from the
 * mapping. */
static int allocate_on_device(ts_model *m, plan *p, char *err, size_t err_size) {
    m->ctx_mapped = new_meta_context(p->n);
    if (m->ctx_mapped == NULL) {
        return ts_set_error(err, err_size, "out of memory creating tensor contexts");
    }
    uint64_t n_bytes = 0;
    for (int i = 0; i < p->n; i++) {
        binding *b = &p->items[i];
        if (is_down_t(b)) {
            *b->slot = NULL;
            continue;
        }
        struct ggml_tensor *t = ggml_new_tensor(m->ctx_mapped, (enum ggml_type)b->src->type, 4, b->ne);
        ggml_set_name(t, b->name);
        *b->slot = t;
        n_bytes += b->src->nbytes;
    }
    m->buf_device = ggml_backend_alloc_ctx_tensors_from_buft(m->ctx_mapped, ggml_backend_dev_buffer_type(m->device));
    if (m->buf_device == NULL) {
        return ts_set_error(err, err_size, "%s: cannot allocate %.1f MiB of weights on device '%s'", m->file->path,
                            (double)n_bytes / (1 << 20), ggml_backend_dev_name(m->device));
    }
    ggml_backend_buffer_set_usage(m->buf_device, GGML_BACKEND_BUFFER_USAGE_WEIGHTS);
    for (int i = 0; i < p->n; i++) {
        const binding *b = &p->items[i];
        if (*b->slot != NULL) {
            ggml_backend_tensor_set(*b->slot, b->src->data, 0, b->src->nbytes);
        }
    }
    return 0;
}

/* The type of layer 0's up matrix (the FFN's type), from the plan: the tensors are not placed yet. */
static int32_t ffn_type(const ts_model *m, const plan *p) {
    struct ggml_tensor **up = m->info.n_expert > 0 ? &m->layers[0].ffn_up_exps : &m->layers[0].ffn_up;
    for (int i = 0; i < p->n; i++) {
        if (p->items[i].slot == up) {
            return (int32_t)p->items[i].src->type;
        }
    }
    return -1;
}

static void count_file_tensors(ts_model *m) {
    m->info.n_params = 0;
    m->info.n_bytes = 0;
    for (int64_t i = 0; i < m->file->n_tensors; i++) {
        const ts_gguf_tensor *t = &m->file->tensors[i];
        m->info.n_params += (uint64_t)(t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3]);
        m->info.n_bytes += t->nbytes;
    }
}

ts_model *ts_model_load(const char *path, const ts_model_params *params, char *err, size_t err_size) {
    ts_model_params defaults = ts_model_default_params();
    if (params == NULL) {
        params = &defaults;
    }
    ggml_cpu_init();
    ggml_backend_dev_t device = ts_device_find(params->device, err, err_size);
    if (device == NULL) {
        return NULL;
    }
    ts_model *m = calloc(1, sizeof(*m));
    if (m == NULL) {
        ts_set_error(err, err_size, "out of memory");
        return NULL;
    }
    m->device = device;
    m->on_cpu = ts_device_is_cpu(device);
    m->sparse_rows = params->sparse_rows != 0;
    m->dense_gate = params->dense_gate != 0;
    m->metadata_only = params->metadata_only != 0;
    plan p = {0};
    int rc = -1;
    m->file = ts_gguf_open(path, err, err_size);
    if (m->file != NULL) {
        m->info.is_powerinfer = m->file->is_powerinfer;
        rc = load_hparams(m, err, err_size);
    }
    if (rc == 0) {
        const size_t n = (size_t)m->info.n_layer;
        m->layers = calloc(n, sizeof(ts_layer));
        m->pred_rank = calloc(n, sizeof(int32_t));
        m->gate_threshold = calloc(n, sizeof(float));
        m->act_threshold = calloc(n, sizeof(float));
        m->group_top_k = calloc(n, sizeof(int32_t));
        rc = (m->layers && m->pred_rank && m->gate_threshold && m->act_threshold && m->group_top_k)
                 ? build_plan(m, &p, err, err_size)
                 : ts_set_error(err, err_size, "out of memory");
    }
    if (rc == 0) {
        rc = load_sliding_window(m, err, err_size);
    }
    if (rc == 0 && m->info.ffn_act == TS_FFN_GEGLU) { /* the sparse kernels look GELU up in it, as ggml does */
        m->gelu_f16 = malloc(sizeof(ggml_fp16_t) * TS_GELU_TABLE_SIZE);
        rc = m->gelu_f16 != NULL ? ts_gelu_table(m->gelu_f16, err, err_size) : ts_set_error(err, err_size, "out of memory");
    }
    if (rc == 0) {
        rc = load_ffn_thresholds(m, err, err_size);
    }
    if (rc == 0) {
        count_file_tensors(m);
        m->info.ffn_type = ffn_type(m, &p);
        if (m->on_cpu && !m->metadata_only) {
            rc = allocate(m, &p, params, err, err_size);
        } else if (!m->metadata_only) {
            rc = check_device_model(m, err, err_size) == 0 ? allocate_on_device(m, &p, err, err_size) : -1;
        } /* metadata_only: no weights placed, the layers' tensor slots stay NULL */
    }
    free(p.items);
    if (rc != 0) {
        ts_model_free(m);
        return NULL;
    }
    return m;
}

void ts_model_free(ts_model *m) {
    if (m == NULL) {
        return;
    }
    if (m->buf_repacked != NULL) {
        ggml_backend_buffer_free(m->buf_repacked);
    }
    for (int k = 0; k < m->n_bufs_mapped; k++) {
        if (m->bufs_mapped[k] != NULL) {
            ggml_backend_buffer_free(m->bufs_mapped[k]);
        }
    }
    free(m->bufs_mapped);
    if (m->buf_device != NULL) {
        ggml_backend_buffer_free(m->buf_device);
    }
    if (m->ctx_repacked != NULL) {
        ggml_free(m->ctx_repacked);
    }
    if (m->buf_rows != NULL) {
        ggml_backend_buffer_free(m->buf_rows);
    }
    ts_huge_free(m->rows_memory, m->rows_memory_size);
    if (m->ctx_mapped != NULL) {
        ggml_free(m->ctx_mapped);
    }
    ts_gguf_close(m->file);
    free(m->layers);
    free(m->gelu_f16);
    free(m->pred_rank);
    free(m->gate_threshold);
    free(m->act_threshold);
    free(m->gate_scale);
    free(m->act_scale);
    free(m->group_top_k);
    free(m);
}

void ts_model_get_info(const ts_model *m, ts_model_info *info) {
    *info = m->info;
}

void ts_model_get_device(const ts_model *m, ts_device_info *info) {
    ts_device_describe(m->device, info);
}

void ts_model_get_predictor_ranks(const ts_model *m, int32_t *ranks) {
    memcpy(ranks, m->pred_rank, sizeof(int32_t) * (size_t)m->info.n_layer);
}

void ts_model_get_sliding_windows(const ts_model *m, int32_t *windows) {
    for (int il = 0; il < m->info.n_layer; il++) {
        windows[il] = m->layers[il].swa ? m->n_swa : 0;
    }
}

void ts_model_get_group_top_k(const ts_model *m, int32_t *top_k) {
    memcpy(top_k, m->group_top_k, sizeof(int32_t) * (size_t)m->info.n_layer);
}

int32_t ts_model_n_gate_up_side_by_side(const ts_model *m) {
    int32_t n = 0;
    for (int il = 0; il < m->info.n_layer; il++) {
        n += m->layers[il].ffn_gate_up != NULL;
    }
    return n;
}

int32_t ts_model_n_gate_up_split(const ts_model *m) {
    int32_t n = 0;
    for (int il = 0; il < m->info.n_layer; il++) {
        n += m->layers[il].gate_split && m->layers[il].up_split;
    }
    return n;
}

int32_t ts_model_n_predictor_split(const ts_model *m) {
    int32_t n = 0;
    for (int il = 0; il < m->info.n_layer; il++) {
        n += m->layers[il].pred_fc1_split && m->layers[il].pred_fc2_split;
    }
    return n;
}

void ts_model_get_ffn_thresholds(const ts_model *m, float *gate, float *act) {
    memcpy(gate, m->gate_threshold, sizeof(float) * (size_t)m->info.n_layer);
    memcpy(act, m->act_threshold, sizeof(float) * (size_t)m->info.n_layer);
}

void ts_model_get_ffn_scales(const ts_model *m, const float **gate, const float **act) {
    *gate = m->gate_scale;
    *act = m->act_scale;
}

int32_t ts_model_get_tensor(const ts_model *m, const char *name, int32_t *type, int64_t *ne, const void **data,
                            uint64_t *nbytes, char *err, size_t err_size) {
    const ts_gguf_tensor *t = ts_gguf_find_tensor(m->file, name);
    if (t == NULL) {
        return ts_set_error(err, err_size, "%s: missing tensor '%s'", m->file->path, name);
    }
    *type = t->type;
    memcpy(ne, t->ne, sizeof(t->ne));
    *data = t->data;
    *nbytes = (uint64_t)t->nbytes;
    return 0;
}
