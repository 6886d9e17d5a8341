/*
 * turbosparse public C API: the only header Python (cffi) sees.
 *
 * Plain C types only; no ggml structs cross this boundary. Every function that can fail returns
 * a status (enum ts_status: 0 = success) or NULL and writes a one-line message naming the file / tensor / key at
 * fault into the caller's `err` buffer (never a global).
 */
#ifndef TURBOSPARSE_H
#define TURBOSPARSE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* What a failing call returns; the message in `err` says more. */
enum ts_status {
    TS_OK = 0,
    TS_ERR_FAILED = -1,       /* anything not below: a corrupt or unsupported file, ggml failing, out of memory */
    TS_ERR_ARGUMENT = -2,     /* an argument out of range: context parameters, token ids, sequences, layers */
    TS_ERR_CONTEXT_FULL = -3  /* more tokens than a sequence's n_ctx holds */
};

/* The most sequences a context holds (ts_context_params.n_seq). */
enum ts_limits { TS_MAX_SEQ = 256 };

/* FFN activation of the gated FFN: down(act(gate(x), up(x))). */
enum ts_ffn_act {
    TS_FFN_SWIGLU = 0, /* silu(gate) * up          (Llama, Mistral, SmolLM2) */
    TS_FFN_REGLU = 1,  /* relu(gate) * up          (ReLU-Llama, ProSparse) */
    TS_FFN_DRELU = 2,  /* relu(gate) * relu(up)    (TurboSparse "bamboo") */
    TS_FFN_GEGLU = 3   /* gelu(gate) * up          (Gemma; gelu's tanh form, through an F16 table as ggml's) */
};

/* How decoding computes the FFN. */
enum ts_sparse_mode {
    TS_SPARSE_OFF = 0,       /* dense ggml mul_mat */
    TS_SPARSE_PREDICTOR = 1, /* active set = {j : predictor logit_j >= threshold} */
    TS_SPARSE_EXACT = 2,     /* dense gate, active set = {j : act(gate_j) != 0 and |act(gate_j)| >= t_gate[layer]},
                                act = relu (ReLU-gated FFNs) or silu (SwiGLU); see ts_context_set_ffn_thresholds */
    TS_SPARSE_GROUPS = 3,    /* the top-k neuron groups by predicted score, in standard ggml ops (any backend) */
    TS_SPARSE_AUTO = 4       /* what the file allows, decided by ts_model_sparse_mode: predictor where a layer has a
                                predictor, else exact for ReLU-gated or calibrated FFNs, else off */
};

/* What the activation predictor reads: the residual before the FFN norm, as is or RMS-normalized. */
enum ts_predictor_input {
    TS_PRED_INPUT_RESIDUAL = 0,
    TS_PRED_INPUT_RESIDUAL_RMSNORM = 1
};

typedef struct ts_model ts_model;
typedef struct ts_context ts_context;

typedef struct ts_model_params {
    /* Where the weights live and the graph runs: NULL, "" or "cpu" the CPU (the file stays mapped); "gpu" the first
       GPU device; else a ggml device name (ts_device_get). On a GPU the row-sparse modes (predictor, exact) are not
       available: dense and groups run there. */
    const char *device;
    /* 1: weights in the layouts the kernels run fastest: ggml repacks matrices it has faster kernels for (as
       llama.cpp does by default), and the FFN matrices sparse decoding reads row by row (never repacked) are copied
       into huge-page memory where the OS has it (Linux with transparent huge pages) and the copy fits in 90 % of
       the memory available. 0: weights stay in the mapping as stored (a quick load to inspect a file), but for
       transposed downs whose kernel reads its own row layout. */
    int32_t repack;
    /* 1: keep FFN gate/up/down_t in their row layout for sparse decoding. */
    int32_t sparse_rows;
    /* 1: the FFN gate is only ever computed whole (dense, or exact mode, which selects neurons by the gate): placed
       like the other dense matrices, repacked where ggml has faster kernels; predictor mode, which reads gate rows,
       is then unavailable on this model. 0 (default): in layers with a predictor the gate keeps its row layout. */
    int32_t dense_gate;
    /* 1: read the file's hyperparameters and check its tensors, but place no weights (nothing copied or repacked):
       a quick probe for ts_model_get_info, ts_model_sparse_mode and the file's tensors; no context can run on it. */
    int32_t metadata_only;
} ts_model_params;

typedef struct ts_model_info {
    int32_t n_vocab;
    int32_t n_embd;
    int32_t n_layer;
    int32_t n_head;
    int32_t n_head_kv;
    int32_t n_embd_head;
    int32_t n_ff;
    int32_t n_ctx_train;
    int32_t n_rot;
    float rope_freq_base;
    float rope_freq_scale;
    float rms_eps;
    int32_t ffn_act;          /* enum ts_ffn_act */
    int32_t has_predictors;   /* every layer has fc1/fc2 */
    int32_t has_down_t;       /* transposed down matrices present */
    int32_t has_down;         /* standard down matrices present */
    float predictor_threshold;
    int32_t predictor_input;  /* enum ts_predictor_input */
    int32_t is_powerinfer;    /* file magic was PWRI */
    int32_t ffn_type;         /* ggml type id of the FFN up matrix */
    int32_t file_type;        /* general.file_type, -1 when absent */
    int32_t has_ffn_thresholds; /* turbosparse.gate_thresholds present: a calibrated file (turbosparse calibrate) */
    int32_t group_size;       /* neurons per group of the grouped route (turbosparse.group_size), 0 = no groups */
    uint64_t n_params;        /* weights in the file (elements) */
    uint64_t n_bytes;         /* tensor bytes in the file */
    int32_t n_expert;         /* mixture of experts: experts per layer (0: a dense FFN) */
    int32_t n_expert_used;    /* experts each token is routed to (top-k of the router's softmax) */
} ts_model_info;

/* Per-layer counters of the sparse FFN, accumulated over decoded tokens since the last reset. */
typedef struct ts_layer_stats {
    uint64_t n_tokens;      /* tokens whose FFN ran through the sparse nodes */
    uint64_t n_computed;    /* neurons whose gate/up rows were computed (the selected set), summed over tokens */
    uint64_t n_nonzero;     /* neurons with a non-zero activation: rows of down_t read */
    uint64_t n_true_active; /* recall measurement only: neurons non-zero under full computation */
    uint64_t n_true_found;  /* ... of which the predictor selected */
    uint64_t n_evals;       /* evaluations (batches of tokens) through the sparse nodes */
    uint64_t n_union;       /* neurons computed for at least one token of an evaluation, summed over
                               evaluations: the gate/up rows a batch reads (= n_computed when one token each) */
    uint64_t act_us;        /* node timing only (ts_context_set_node_timing; the row route of non-MoE layers): the
                               gate/up node's wall-clock time, its first thread's start to its last one's end, summed
                               over evaluations */
    uint64_t down_us;       /* ... the sparse down node's (0 where the layer has only the standard down, which ggml's
                               dense matmul computes) */
} ts_layer_stats;

/* One expert's counters in a mixture-of-experts layer, accumulated since the last reset. */
typedef struct ts_expert_stats {
    uint64_t n_routed;   /* tokens the router sent to this expert, every evaluation (prompts and decoding) */
    uint64_t n_decoded;  /* ... of them through the sparse FFN nodes */
    uint64_t n_computed; /* neurons whose gate/up rows were computed there, summed over those tokens */
    uint64_t n_nonzero;  /* neurons with a non-zero activation there: rows of the expert's down_t read */
} ts_expert_stats;

typedef struct ts_context_params {
    int32_t n_ctx;      /* KV cache length of each sequence (tokens); 0 = the model's training context */
    int32_t n_threads;  /* ggml CPU threads; <= 0 = 1 */
    int32_t n_batch;    /* max tokens per graph evaluation (prompts are split); <= 0 = 512 */
    /* ggml type ids of the K and V caches: F16 (default, as llama.cpp), F32, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 or
       IQ4_NL (llama.cpp's --cache-type-k / -v); a quantized one needs heads of a multiple of its block, a quantized
       V flash_attn */
    int32_t type_k;
    int32_t type_v;
    int32_t sparse_mode;       /* enum ts_sparse_mode; AUTO = ts_model_sparse_mode's choice */
    float predictor_threshold; /* NAN = the file's value */
    int32_t n_seq;      /* independent sequences, each with its own KV cache of n_ctx tokens; <= 0 = 1 */
    int32_t swa_full;   /* sliding-window layers (Gemma) cache every position, as the others: any prefix can be kept
                           (ts_context_truncate_seq); 0 = they cache a window's worth, as llama-server by default */
    int32_t flash_attn; /* attention by ggml's flash_attn_ext (V cached untransposed), as llama.cpp's -fa on */
} ts_context_params;

/* A ggml device a model can live on: the CPU, or a GPU of a ggml built with Metal, CUDA or Vulkan. */
typedef struct ts_device_info {
    char name[64];          /* ggml's device name: "CPU", "Metal", "CUDA0", "Vulkan0", ... */
    char description[128];  /* the hardware, as ggml describes it */
    int32_t is_cpu;
    uint64_t memory_total;  /* bytes, as the device reports them */
} ts_device_info;

/* ---- versions ---------------------------------------------------------------------------- */
const char *ts_ggml_version(void);       /* the ggml this process runs */
const char *ts_build_ggml_version(void); /* the ggml headers the library was compiled against */

/* ---- devices ------------------------------------------------------------------------------- */
int32_t ts_device_count(void); /* devices a model can live on, in ggml's order */
/* TS_OK with info filled, or TS_ERR_ARGUMENT when index is not in [0, ts_device_count()). */
int32_t ts_device_get(int32_t index, ts_device_info *info);
/* The device a name means, as ts_model_params.device reads it: TS_OK with info filled, or TS_ERR_ARGUMENT with err
   listing the devices there are. */
int32_t ts_device_lookup(const char *name, ts_device_info *info, char *err, size_t err_size);

/* ---- model ------------------------------------------------------------------------------- */
ts_model_params ts_model_default_params(void);
ts_model *ts_model_load(const char *path, const ts_model_params *params, char *err, size_t err_size);
void ts_model_free(ts_model *model);
void ts_model_get_info(const ts_model *model, ts_model_info *info);
/* The device the model's weights live on (ts_model_params.device). */
void ts_model_get_device(const ts_model *model, ts_device_info *info);
/* Per-layer predictor rank (0 = none); `ranks` has n_layer entries. */
void ts_model_get_predictor_ranks(const ts_model *model, int32_t *ranks);
/* Per layer, the positions its attention sees: the sliding window (attention.sliding_window) of a layer that slides,
   0 for one that sees every position; `windows` has n_layer entries. */
void ts_model_get_sliding_windows(const ts_model *model, int32_t *windows);
/*
 * A tensor of the file as stored (mapped, read-only, valid while the model lives): its ggml type, ggml shape ne[4]
 * and bytes. Returns 0, or -1 (err filled) when the file has no tensor of that name.
 */
int32_t ts_model_get_tensor(const ts_model *model, const char *name, int32_t *type, int64_t *ne, const void **data,
                            uint64_t *nbytes, char *err, size_t err_size);
/* The file's per-layer FFN thresholds (turbosparse.gate_thresholds / act_thresholds; 0 where absent), n_layer each. */
void ts_model_get_ffn_thresholds(const ts_model *model, float *gate, float *act);
/* The file's per-neuron scales of the threshold scores (turbosparse.ffn_gate_scales / ffn_act_scales, n_layer * n_ff
   each, layer-major), each NULL when absent; valid while the model lives. */
void ts_model_get_ffn_scales(const ts_model *model, const float **gate, const float **act);

/* The file's groups read per token, per layer (turbosparse.group_top_k); `top_k` has n_layer entries, zeros when
   the file has no groups. */
void ts_model_get_group_top_k(const ts_model *model, int32_t *top_k);

/* Layers whose gate and up rows this model's placement laid side by side in memory (a predictor layer's copy in huge
   pages: one stream per neuron for the sparse gate/up node); the file is unchanged. */
int32_t ts_model_n_gate_up_side_by_side(const ts_model *model);

/* Layers whose gate and up rows this model holds in the split layout (per 8 blocks their scales, then their quants:
   the decoding and prompt kernels of AVX-512 VNNI and AVX2 CPUs read Q4_0 rows of a multiple of 64 values and Q4_K
   rows faster so). */
int32_t ts_model_n_gate_up_split(const ts_model *model);

/* Layers whose predictor matrices (fc1 and fc2) this model holds in the split layout: a model placed for predictor
   mode reads them with those kernels too (a decoded token's through the gate/up kernels), not with ggml's mul_mat. */
int32_t ts_model_n_predictor_split(const ts_model *model);

/*
 * The sparse mode a user's request means for this model (the one place that decides it): `requested` is an enum
 * ts_sparse_mode, TS_SPARSE_AUTO included. TS_OK with *mode set to the mode to run (never AUTO), or TS_ERR_ARGUMENT
 * with err naming the file and the tensor, key or layer the requested mode needs. Predictor mode runs the layers
 * that have a predictor through it and selects exactly (gate > 0) in the others; exact mode on a SwiGLU FFN needs
 * the file's thresholds (turbosparse calibrate). on_cpu 0 asks for a model that will run on another device (a GPU),
 * where only ggml's own ops run: predictor means the grouped route there, auto is groups where the file has them
 * (else off), exact is refused.
 */
int32_t ts_model_sparse_mode(const ts_model *model, int32_t requested, int32_t on_cpu, int32_t *mode, char *err,
                             size_t err_size);

/* ---- context: KV caches + graph evaluation ------------------------------------------------
 * A context holds n_seq sequences (0..n_seq-1), each with its own KV cache; the functions without a
 * `seq` argument act on sequence 0. A context is not thread-safe: one evaluation at a time. */
ts_context_params ts_context_default_params(void);
/*
 * Sparse modes need a model loaded with sparse_rows = 1. A context runs exact mode on an uncalibrated SwiGLU file too
 * (its thresholds then come from ts_context_set_ffn_thresholds, as calibration sets them). The first exact-mode context of a SwiGLU model whose file
 * stores only the standard down matrix builds the transposed down rows sparse decoding reads (once per model, shared
 * by later contexts; create contexts from one thread).
 */
ts_context *ts_context_new(ts_model *model, const ts_context_params *params, char *err, size_t err_size);
/* TS_OK, or TS_ERR_ARGUMENT (err filled) for parameters ts_context_new refuses for this model. */
int32_t ts_context_check_params(const ts_model *model, const ts_context_params *params, char *err, size_t err_size);
void ts_context_free(ts_context *ctx);

/*
 * Evaluate n_tokens tokens appended after the ones already in the KV cache.
 * dense_ffn = 1 computes the FFN densely (prefill); 0 uses the context's sparse mode.
 * logits: NULL, or [n_tokens][n_vocab] when logits_all, else [n_vocab] for the last token.
 */
int32_t ts_context_eval(ts_context *ctx, const int32_t *tokens, int32_t n_tokens, int32_t dense_ffn,
                        float *logits, int32_t logits_all, char *err, size_t err_size);
/* ts_context_eval on sequence seq. */
int32_t ts_context_eval_seq(ts_context *ctx, int32_t seq, const int32_t *tokens, int32_t n_tokens, int32_t dense_ffn,
                            float *logits, int32_t logits_all, char *err, size_t err_size);
/*
 * Embeddings, as llama.cpp's: the final norm's output (the hidden state the logits are computed from) of n_tokens
 * tokens appended to sequence seq, evaluated as a prompt (dense FFN). out: [n_tokens][n_embd] when all, else [n_embd]
 * for the last token.
 */
int32_t ts_context_embed_seq(ts_context *ctx, int32_t seq, const int32_t *tokens, int32_t n_tokens, float *out,
                             int32_t all, char *err, size_t err_size);
/*
 * One token for each of n distinct sequences seqs[0..n-1], appended after their cached tokens and evaluated
 * in one forward pass (the weights are read once for the batch; each token attends to its own sequence
 * only; the FFN runs under the context's sparse mode). logits: NULL or [n][n_vocab]. n <= n_batch.
 */
int32_t ts_context_decode_batch(ts_context *ctx, const int32_t *seqs, const int32_t *tokens, int32_t n,
                                float *logits, char *err, size_t err_size);
/*
 * One layer's FFN block alone, for tests and the kernel benchmark: out = ffn(rms_norm(h)) for h the residual
 * before the FFN norm (F32 [n_tokens, n_embd] rows), dense or under the context's sparse mode. The KV cache
 * is untouched; the sparse nodes count into the layer's stats as decoding does. compute_us (NULL or one value)
 * receives the microseconds the graph's computation took, without building and allocating it.
 */
int32_t ts_context_eval_ffn(ts_context *ctx, int32_t layer, const float *h, int32_t n_tokens, int32_t dense_ffn,
                            float *out, int64_t *compute_us, char *err, size_t err_size);
/*
 * Dense evaluation of n_tokens tokens appended after the cached ones (as ts_context_eval with dense_ffn = 1, no
 * logits) that also copies every layer's FFN gate and up values, before the activation: gate and up are
 * [n_layer][n_tokens][n_ff] F32 (either may be NULL). The calibration's view of the FFN.
 */
int32_t ts_context_eval_trace(ts_context *ctx, const int32_t *tokens, int32_t n_tokens, float *gate, float *up,
                              char *err, size_t err_size);
int32_t ts_context_n_past(const ts_context *ctx);
int32_t ts_context_n_past_seq(const ts_context *ctx, int32_t seq); /* -1 when seq is out of range */
int32_t ts_context_n_ctx(const ts_context *ctx);                    /* per sequence */
int32_t ts_context_n_seq(const ts_context *ctx);
int32_t ts_context_sparse_mode(const ts_context *ctx);              /* the mode it runs (AUTO resolved) */
/* Forget every cached token at position >= n_keep. A sequence whose sliding-window layers cache a window's worth
 * of positions (swa_full = 0) keeps 0 tokens, or n_keep where the window of the token at n_keep is still cached or in
 * the checkpoint of a prompt's last whole n_batch block: ts_context_n_keepable_seq says which; another n_keep is an
 * argument error. */
int32_t ts_context_truncate(ts_context *ctx, int32_t n_keep, char *err, size_t err_size);
int32_t ts_context_truncate_seq(ts_context *ctx, int32_t seq, int32_t n_keep, char *err, size_t err_size);
/* The most tokens up to n_keep (and the n_past it holds) sequence seq can keep: that many, or 0; -1 when seq is out
 * of range. */
int32_t ts_context_n_keepable_seq(const ts_context *ctx, int32_t seq, int32_t n_keep);
/*
 * Sequence seq's cached tokens as bytes (llama.cpp's llama_state_seq_get_data): their keys and values and the positions
 * they take, to be restored later into a sequence of a context with the same cache layout (model, K / V types, flash
 * attention, sliding-window cells, the rope's factors), which then goes on from there without evaluating them again.
 * _size: the bytes _get writes now (0 for a sequence out of range); _get: exactly that many into dst; _set: replaces
 * what sequence seq holds, after checking every byte count and field, and that it holds n_tokens tokens (-1: any)
 * (TS_ERR_ARGUMENT, or TS_ERR_CONTEXT_FULL for more tokens than its n_ctx; nothing changed then).
 */
uint64_t ts_context_seq_state_size(ts_context *ctx, int32_t seq);
int32_t ts_context_seq_state_get(ts_context *ctx, int32_t seq, void *dst, uint64_t size, char *err, size_t err_size);
int32_t ts_context_seq_state_set(ts_context *ctx, int32_t seq, const void *src, uint64_t size, int32_t n_tokens,
                                 char *err, size_t err_size);
/* Bytes of the context's KV caches (every layer and sequence). */
uint64_t ts_context_kv_size(const ts_context *ctx);
/* Predictor threshold used from the next evaluation on. */
void ts_context_set_threshold(ts_context *ctx, float threshold);
float ts_context_threshold(const ts_context *ctx);
/*
 * Per-layer FFN thresholds (n_layer each; NULL leaves that set unchanged), used from the next evaluation on.
 * Exact mode computes up row j when act(gate_j) != 0 and |act(gate_j)| >= gate[l]; every sparse mode reads down row j
 * when a_j != 0 and |a_j| >= act[l] (a_j = the neuron's activation, e.g. silu(gate_j) * up_j). All zeros: the
 * dense FFN's result. A context starts with the file's thresholds.
 */
void ts_context_set_ffn_thresholds(ts_context *ctx, const float *gate, const float *act);
void ts_context_get_ffn_thresholds(const ts_context *ctx, float *gate, float *act);
/*
 * Per-neuron scales of the threshold scores (n_layer * n_ff each, layer-major, values >= 0; copied), used from the next
 * evaluation on: with them exact mode computes up row j of layer l when act(gate_j) != 0 and
 * |act(gate_j)| * gate[l * n_ff + j] >= the gate threshold, and down row j is read when a_j != 0 and
 * |a_j| * act[l * n_ff + j] >= the act threshold. NULL: that score unscaled. A context starts with the file's scales.
 * Returns 0, or -1 (err filled) when out of memory.
 */
int32_t ts_context_set_ffn_scales(ts_context *ctx, const float *gate, const float *act, char *err, size_t err_size);
/* Groups read per token in each layer (n_layer entries, each in 1..n_ff / group_size), used from the next evaluation
   on by the grouped route; a context starts with the file's. Returns 0, or -1 (err filled) on a value out of range. */
int32_t ts_context_set_group_top_k(ts_context *ctx, const int32_t *top_k, char *err, size_t err_size);
void ts_context_get_group_top_k(const ts_context *ctx, int32_t *top_k);
/* 1: predictor mode also computes every neuron, to count how many active ones the predictor missed. */
void ts_context_set_measure_recall(ts_context *ctx, int32_t on);
/* Times the sparse FFN's gate/up and down nodes of non-MoE layers on the row route (predictor and exact modes) into
   their stats (act_us, down_us): where a decoded token's time goes (`bench --ffn-layer`). Not timed: MoE layers, the
   neuron-group route (TS_SPARSE_GROUPS), threads past the 64th. Off by default: two clock reads per thread and node. */
void ts_context_set_node_timing(ts_context *ctx, int32_t on);
/* Copies the per-layer counters into stats[n_layer]. */
void ts_context_get_stats(const ts_context *ctx, ts_layer_stats *stats);
void ts_context_reset_stats(ts_context *ctx);
/* Mixture-of-experts models: copies every expert's counters into stats[n_layer * n_expert] (layer-major). */
void ts_context_get_expert_stats(const ts_context *ctx, ts_expert_stats *stats);

/* Bytes of memory the OS can hand out now (Linux: MemAvailable, reclaimable page cache included; elsewhere the free
   physical pages), 0 when unknown. A load copies sparse rows into huge pages only where they fit in 90 % of it;
   bench checks its engines' weights against it. */
uint64_t ts_memory_available(void);

/* ---- kernels, exposed for tests and benchmarks ------------------------------------------------ */
/* Instruction sets the sparse FFN kernels are written for. One build carries those of its architecture; at run
   time each kernel is taken from the best set this CPU runs (ts_kernel_isa_used says which). */
enum ts_kernel_isa {
    TS_ISA_GENERIC = 0,      /* ggml's own per-row dot products and dequantizers: every type, every CPU */
    TS_ISA_AVX2 = 1,         /* x86-64 with AVX2, FMA and F16C */
    TS_ISA_AVX512_VNNI = 2,  /* x86-64 with AVX-512 F/BW/VNNI */
    TS_ISA_NEON = 3,         /* aarch64 Advanced SIMD (every aarch64 CPU) */
    TS_ISA_NEON_DOTPROD = 4, /* aarch64 with the dot product extension (SDOT; Armv8.2+, Apple M1+) */
    TS_ISA_COUNT
};
/* Which kernel: the gate/up row dot products, the down projection's sum of rows, or the prompt kernel of the
   matrices sparse decoding reads by row (every row against many tokens). */
enum ts_kernel_kind { TS_KERNEL_DOT_ROWS = 0, TS_KERNEL_AXPY_ROWS = 1, TS_KERNEL_ROWS_MATMUL = 2 };

const char *ts_kernel_isa_name(int32_t isa);
/* 1 when this CPU runs that instruction set's kernels. */
int32_t ts_kernel_isa_supported(int32_t isa);
/* The instruction set of the kernel sparse decoding runs for rows of n values of ggml type `type`; -1 where it has
   none (the prompt kernel: ggml's mul_mat runs instead). */
int32_t ts_kernel_isa_used(int32_t kind, int32_t type, int64_t n);
/* The ggml type a loaded model holds a transposed down matrix of type `type` in on this CPU: `type`, or Q8_0 where no
   fused down kernel of this CPU reads `type` but one reads Q8_0 (requantized at load); -1 for an unknown type. */
int32_t ts_down_rows_type(int32_t type);

/*
 * out[i] = W[idx[i]] . x for i in [0, n_idx): the sparse gate/up node's inner loop, x quantized as that node
 * quantizes it (to the type's ggml vec_dot type), with the kernel of instruction set `isa` (TS_ISA_GENERIC:
 * ggml's vec_dot row by row; an error when the CPU lacks the set or the set has no kernel for the type).
 * W: n_rows rows of n_cols values of ggml type `type` in ggml's layout; split: the kernel for rows a model holds in
 * the split layout (ts_gate_up_split), run on a copy of W in that layout.
 */
int32_t ts_kernel_dot_rows(int32_t isa, int32_t type, const void *w, int64_t n_rows, int64_t n_cols,
                           const int32_t *idx, int64_t n_idx, const float *x, int32_t split, float *out, char *err,
                           size_t err_size);
/*
 * out[c] += sum_i coef[i] * W[idx[i]][col0 + c] for c in [0, n): the sparse down projection's inner loop, with
 * the kernel of instruction set `isa` (TS_ISA_GENERIC: ggml's dequantizer, then a plain loop).
 * W: n_rows rows of n_cols values of ggml type `type`; col0 and n multiples of the type's block size.
 */
int32_t ts_kernel_axpy_rows(int32_t isa, int32_t type, const void *w, int64_t n_rows, int64_t n_cols,
                            const int32_t *idx, const float *coef, int64_t n_idx, int64_t col0, int64_t n, float *out,
                            char *err, size_t err_size);

/*
 * out[t * n + c] = sum_j act[t * n_rows + j] * W[j][col0 + c] over the non-zero activations, c in [0, n), for each
 * token t < n_tokens: the sparse down node of a batch (a prompt, several sequences), its rows walked in blocks that
 * stay in cache while every token adds them, with the kernels sparse decoding runs on this CPU; bit for bit
 * ts_kernel_axpy_rows over each token's non-zero activations. W as for ts_kernel_axpy_rows.
 */
int32_t ts_kernel_row_sums_batch(int32_t type, const void *w, int64_t n_rows, int64_t n_cols, const float *act,
                                 int64_t n_tokens, int64_t col0, int64_t n, float *out, char *err, size_t err_size);

/*
 * out[t * n_rows + i] = W[i] . x_t for every row i and token t < n_tokens (x: n_tokens rows of n_cols floats, each
 * quantized to the type's ggml vec_dot type as the node quantizes it): the prompt kernel for matrices sparse
 * decoding reads by row, that of instruction set `isa`; an error where the CPU lacks the set or the set has no
 * kernel for these rows (the engine uses ggml's mul_mat where no set has one). W: n_rows rows of n_cols values of
 * ggml type `type` in ggml's layout; split as for ts_kernel_dot_rows.
 */
int32_t ts_kernel_rows_matmul(int32_t isa, int32_t type, const void *w, int64_t n_rows, int64_t n_cols, const float *x,
                              int64_t n_tokens, int32_t split, float *out, char *err, size_t err_size);

/*
 * The lists of neurons a decoded token's selection builds (neuron_list.h), for tests. ts_kernel_pick_list: the j in
 * [*j, j1) with x[j] >= t (kind 0) or x[j] > t (kind 1), in order, at most cap of them, into list; *j moves to where
 * the next call starts. Returns how many, or -1 for another kind or a cap below 1 (a call could not move on).
 * ts_kernel_nonzero_list: the j < n with a[j] != 0 into idx and their a[j] into val, in order; returns how many.
 */
int32_t ts_kernel_pick_list(int32_t kind, float t, const float *x, int64_t *j, int64_t j1, int32_t *list,
                            int32_t cap);
int64_t ts_kernel_nonzero_list(const float *a, int64_t n, int32_t *idx, float *val);

/* ---- ggml's GELU (the tanh form of the input rounded to F16, looked up in an F16 table; 0 from -10 down, the input
 * from 10 up): y[i] = gelu(x[i]) for n values; 0, or -1 (err filled). The sparse kernels' GELU is this one. */
int32_t ts_gelu(const float *x, float *y, int64_t n, char *err, size_t err_size);
/* The same values through the sparse kernels' lookup (gelu.h), for tests. */
int32_t ts_kernel_gelu_lookup(const float *x, float *y, int64_t n, char *err, size_t err_size);

/* ---- quantization: ggml's own quantizers and dequantizers ---------------------------------- */
/* Fills name/blck_size/type_size of a ggml type; returns 0 when the type id is known. */
int32_t ts_type_info(int32_t type, const char **name, int64_t *blck_size, int64_t *type_size);
/* Quantize nrows rows of n_per_row floats; returns bytes written or -1 (err filled). */
int64_t ts_quantize(int32_t type, const float *src, void *dst, int64_t nrows, int64_t n_per_row,
                    const float *imatrix, char *err, size_t err_size);
/* Dequantize n values (n a multiple of the block size). */
int32_t ts_dequantize(int32_t type, const void *src, float *dst, int64_t n, char *err, size_t err_size);

#ifdef __cplusplus
}
#endif

#endif /* TURBOSPARSE_H */
