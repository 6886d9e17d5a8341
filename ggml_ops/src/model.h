/* A loaded llama-family model: hyperparameters and ggml tensors over the mapped file. */
#ifndef TS_MODEL_H
#define TS_MODEL_H

#include "ggml-backend.h"
#include "ggml.h"
#include "gguf_file.h"
#include "turbosparse.h"

typedef struct ts_layer {
    struct ggml_tensor *attn_norm; /* [n_embd] */
    struct ggml_tensor *wq;        /* [n_embd, n_head*n_embd_head] */
    struct ggml_tensor *wk;        /* [n_embd, n_head_kv*n_embd_head] */
    struct ggml_tensor *wv;        /* [n_embd, n_head_kv*n_embd_head] */
    struct ggml_tensor *wo;        /* [n_head*n_embd_head, n_embd] */
    struct ggml_tensor *bq, *bk, *bv, *bo; /* optional biases */
    struct ggml_tensor *attn_q_norm, *attn_k_norm; /* [n_embd_head]: each head's queries and keys RMS-normed (qk_norm) */
    struct ggml_tensor *attn_post_norm, *ffn_post_norm; /* [n_embd]: the attention's and FFN's outputs RMS-normed
                                                              before their residual adds (post_norms) */
    int32_t swa;                   /* attends within the last n_swa positions, roped with rope_freq_base_swa */
    struct ggml_tensor *ffn_norm;  /* [n_embd] */
    struct ggml_tensor *ffn_gate;  /* [n_embd, n_ff]: row j = neuron j's gate weights */
    struct ggml_tensor *ffn_up;    /* [n_embd, n_ff] */
    struct ggml_tensor *ffn_down;  /* [n_ff, n_embd] (standard layout, optional when down_t exists) */
    struct ggml_tensor *ffn_down_t;/* [n_embd, n_ff]: row j = neuron j's output vector (optional) */
    struct ggml_tensor *ffn_down_t_scale; /* [n_embd] optional: ffn_down_t's products times it are the FFN's */
    struct ggml_tensor *ffn_gate_b, *ffn_up_b; /* [n_ff] optional biases: for dReLU, per-neuron thresholds */
    struct ggml_tensor *ffn_down_b;            /* [n_embd] optional */
    struct ggml_tensor *pred_fc1;  /* [n_embd, rank] predictor, optional */
    struct ggml_tensor *pred_fc2;  /* [rank, n_ff] */
    /* mixture of experts (n_expert > 0) in place of the FFN matrices above, experts stacked along ne2 */
    struct ggml_tensor *ffn_gate_inp;    /* [n_embd, n_expert] router */
    struct ggml_tensor *ffn_gate_exps;   /* [n_embd, n_ff, n_expert] */
    struct ggml_tensor *ffn_up_exps;     /* [n_embd, n_ff, n_expert] */
    struct ggml_tensor *ffn_down_exps;   /* [n_ff, n_embd, n_expert] (optional when down_t_exps exists) */
    struct ggml_tensor *ffn_down_t_exps; /* [n_embd, n_ff, n_expert]: row j of expert e = its neuron j's output */
    struct ggml_tensor *pred_fc1_exps;   /* [n_embd, rank, n_expert] per-expert predictors, optional */
    struct ggml_tensor *pred_fc2_exps;   /* [rank, n_ff, n_expert] */
    struct ggml_tensor *pred_groups;     /* [rank, n_ff/G]: group heads (grouped route) */
    /* [n_embd, 2 n_ff(, n_expert)]: the memory of the gate and up (or their stacks) where the copy lays their rows side
     * by side, gate_j as row 2j and up_j as row 2j + 1 (model.c: pair_gate_up), so that one prompt node reads both;
     * else NULL */
    struct ggml_tensor *ffn_gate_up;
    /* 1 where the gate's (up's) rows, and so ffn_gate_up's, are held in the split layout (gate_up_dot.h:
     * ts_gate_up_split): only turbosparse's kernels read them then, chosen by these flags */
    int32_t gate_split, up_split;
    int32_t pred_fc1_split, pred_fc2_split; /* the same for the predictor's matrices (model.c: predictor_role) */
} ts_layer;

struct ts_model {
    ts_gguf_file *file;
    ts_model_info info;
    char arch[64];
    int32_t rope_type;       /* GGML_ROPE_TYPE_* */
    int32_t qk_norm;         /* queries and keys RMS-normed per head before the rope (qwen3) */
    int32_t no_rope_step;    /* layers il with (il + 1) % no_rope_step == 0 attend unroped (smollm3's 4); 0: none */
    int32_t n_ctx_orig;      /* YaRN's original context (the training context where the file says 0) */
    int32_t n_ctx_orig_file; /* rope.scaling.original_context_length as written (the training context when absent):
                                phi3's rope factors and mistral3's temperature count in it, as llama.cpp */
    float rope_ext_factor;   /* YaRN: 1, else 0 */
    float rope_attn_factor;
    float rope_beta_fast, rope_beta_slow; /* YaRN's ramp: 32 and 1 rotations, or the file's (mistral3) */
    /* mistral3 (Llama 4's temperature tuning): queries times 1 + attn_temp_scale ln(floor(pos / attn_temp_floor) + 1)
       after the rope; 0: none */
    float attn_temp_scale;
    int32_t attn_temp_floor;
    /* Gemma 2 and 3 (all 0 elsewhere) */
    int32_t post_norms;      /* attention and FFN outputs RMS-normed before their residual adds */
    float embd_scale;        /* token embeddings times this (sqrt(n_embd); granite's embedding_scale); 0: as stored */
    float q_scale;           /* queries times this before attention, which then scales by 1; 0: 1/sqrt(head size)
                                (also phi3's) */
    int32_t n_swa;           /* sliding window of the layers with swa set; 0: every layer attends to all */
    int32_t swa_pattern;     /* without attention.sliding_window_pattern: every swa_pattern-th layer attends to all */
    float rope_freq_base_swa, rope_freq_scale_swa; /* the rope of the layers with swa set */
    float attn_softcap;      /* attention scores = c tanh(scores / c) before the softmax; 0: none */
    float logit_softcap;     /* logits = c tanh(logits / c); 0: none */
    /* granite (all 0 elsewhere; embd_scale above is its embedding_scale too) */
    float kq_scale;          /* attention scores times this; 0: 1/sqrt(head size) (or 1 with q_scale) */
    float residual_scale;    /* the attention's and FFN's outputs times this before their residual adds; 0: none */
    float logit_scale;       /* logits divided by this; 0: none */
    ggml_fp16_t *gelu_f16;   /* [65536] GELU of every F16 value (TS_FFN_GEGLU), or NULL */

    ggml_backend_dev_t device;         /* where the weights live (device.h) */
    int32_t on_cpu;                    /* device is the CPU: weights mapped or repacked, graphs on the CPU backend */
    int32_t stale_groups; /* neuron groups written for per-group down slices, without the standard down: unusable */
    int32_t down_columns_scaled; /* turbosparse.down_columns_scaled: the standard down's quant blocks hold like-scaled
                                    columns whatever the neuron order (files converted since 2026-12-04) */
    struct ggml_context *ctx_mapped;   /* tensors not repacked (CPU: in the mapping or buf_rows), or every tensor
                                          (other device) */
    struct ggml_context *ctx_repacked; /* tensors copied into ggml's repacked layout */
    ggml_backend_buffer_t *bufs_mapped; /* over each file's mapping (a split model's files: gguf_file.h) */
    int32_t n_bufs_mapped;
    ggml_backend_buffer_t buf_repacked;
    ggml_backend_buffer_t buf_rows;    /* the FFN matrices read row by row (CPU): a copy in huge-page memory */
    void *rows_memory;                 /* buf_rows's memory (huge_pages.h) */
    size_t rows_memory_size;
    ggml_backend_buffer_t buf_device;  /* a non-CPU device: every tensor, copied from the mapping */

    struct ggml_tensor *tok_embd;    /* [n_embd, n_vocab] */
    struct ggml_tensor *output_norm; /* [n_embd] */
    struct ggml_tensor *output;      /* [n_embd, n_vocab] (may be a repacked copy of tok_embd) */
    struct ggml_tensor *output_b;    /* [n_vocab], optional (a Qwen2 checkpoint's lm_head bias) */
    struct ggml_tensor *rope_freqs;  /* [n_rot/2], optional (Llama 3) */
    struct ggml_tensor *rope_long, *rope_short; /* [n_rot/2], optional (phi3): the context picks one (context.c) */
    ts_layer *layers;
    int32_t *pred_rank;              /* per layer, 0 = no predictor */
    float *gate_threshold;           /* per layer, turbosparse.gate_thresholds (0 when absent) */
    float *act_threshold;            /* per layer, turbosparse.act_thresholds (0 when absent) */
    float *gate_scale;               /* [n_layer * n_ff], turbosparse.ffn_gate_scales, or NULL when absent */
    float *act_scale;                /* [n_layer * n_ff], turbosparse.ffn_act_scales, or NULL when absent */
    int32_t *group_top_k;            /* per layer, turbosparse.group_top_k: groups read per token (grouped route) */
    int32_t sparse_rows;             /* loaded with ts_model_params.sparse_rows: FFN row matrices not repacked */
    int32_t dense_gate;              /* loaded with ts_model_params.dense_gate: the gate placed as a dense matrix */
    int32_t metadata_only;           /* loaded with ts_model_params.metadata_only: no weights placed */
};

#endif
