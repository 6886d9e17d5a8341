/*
 * Every GGUF key and tensor name the C library reads, spelled once (docs/gguf-format.md describes them).
 * tests/test_gguf_names.py checks this file against python/turbosparse/constants.py (TS_KEY_X = KEY_X,
 * TS_TENSOR_X = TENSOR_X with %d for {}) and the llama.cpp names against gguf-py. Per-layer tensor names take the
 * block index (%d).
 */
#ifndef TS_GGUF_NAMES_H
#define TS_GGUF_NAMES_H

/* ---- general keys ---------------------------------------------------------------------------------------- */
#define TS_KEY_ARCHITECTURE "general.architecture"
#define TS_KEY_FILE_TYPE "general.file_type"
#define TS_KEY_ALIGNMENT "general.alignment"
#define TS_KEY_TOKENS "tokenizer.ggml.tokens"
#define TS_KEY_TOKENIZER_MODEL "tokenizer.ggml.model"
#define TS_TOKENIZER_SPM "llama" /* tokenizer.ggml.model of SentencePiece vocabularies */
#define TS_KEY_SPLIT_COUNT "split.count" /* llama-gguf-split's: the number of files a model is split into */
#define TS_KEY_SPLIT_NO "split.no"       /* this file's index among them, from 0 */
#define TS_KEY_SPLIT_TENSORS_COUNT "split.tensors.count" /* the tensors of all of them */

/* general.architecture values the loader runs: llama.cpp's llama, mistral3, phi3, smollm3, granite, qwen2, qwen3,
 * qwen3moe, gemma2 and gemma3, PowerInfer's bamboo */
#define TS_ARCH_LLAMA "llama"
#define TS_ARCH_BAMBOO "bamboo"
#define TS_ARCH_MISTRAL3 "mistral3"
#define TS_ARCH_PHI3 "phi3"
#define TS_ARCH_SMOLLM3 "smollm3"
#define TS_ARCH_GRANITE "granite"
#define TS_ARCH_QWEN2 "qwen2"
#define TS_ARCH_QWEN3 "qwen3"
#define TS_ARCH_QWEN3MOE "qwen3moe"
#define TS_ARCH_GEMMA2 "gemma2"
#define TS_ARCH_GEMMA3 "gemma3"

/* ---- llama.cpp's per-architecture keys: "<general.architecture>." + suffix --------------------------------- */
#define TS_ARCH_KEY_BLOCK_COUNT "block_count"
#define TS_ARCH_KEY_CONTEXT_LENGTH "context_length"
#define TS_ARCH_KEY_EMBEDDING_LENGTH "embedding_length"
#define TS_ARCH_KEY_FEED_FORWARD_LENGTH "feed_forward_length"
#define TS_ARCH_KEY_HEAD_COUNT "attention.head_count"
#define TS_ARCH_KEY_HEAD_COUNT_KV "attention.head_count_kv"
#define TS_ARCH_KEY_KEY_LENGTH "attention.key_length"
#define TS_ARCH_KEY_VALUE_LENGTH "attention.value_length"
#define TS_ARCH_KEY_LAYERNORM_RMS_EPS "attention.layer_norm_rms_epsilon"
#define TS_ARCH_KEY_ROPE_DIMENSION_COUNT "rope.dimension_count"
#define TS_ARCH_KEY_ROPE_FREQ_BASE "rope.freq_base"
#define TS_ARCH_KEY_ROPE_SCALING_TYPE "rope.scaling.type"
#define TS_ARCH_KEY_ROPE_SCALING_FACTOR "rope.scaling.factor"
#define TS_ARCH_KEY_ROPE_SCALE_LINEAR "rope.scale_linear"
#define TS_ARCH_KEY_ROPE_SCALING_ORIG_CTX "rope.scaling.original_context_length"
#define TS_ARCH_KEY_ROPE_SCALING_ATTN_FACTOR "rope.scaling.attn_factor"
#define TS_ARCH_KEY_ROPE_SCALING_LOG_MUL "rope.scaling.yarn_log_multiplier"
#define TS_ARCH_KEY_ROPE_SCALING_BETA_FAST "rope.scaling.yarn_beta_fast"
#define TS_ARCH_KEY_ROPE_SCALING_BETA_SLOW "rope.scaling.yarn_beta_slow"
#define TS_ARCH_KEY_TEMPERATURE_SCALE "attention.temperature_scale"
#define TS_ARCH_KEY_ATTENTION_SCALE "attention.scale"
#define TS_ARCH_KEY_EMBEDDING_SCALE "embedding_scale"
#define TS_ARCH_KEY_RESIDUAL_SCALE "residual_scale"
#define TS_ARCH_KEY_LOGIT_SCALE "logit_scale"
#define TS_ARCH_KEY_ROPE_SCALING_FINETUNED "rope.scaling.finetuned"
#define TS_ARCH_KEY_CAUSAL "attention.causal"
#define TS_ARCH_KEY_EXPERT_COUNT "expert_count"
#define TS_ARCH_KEY_EXPERT_USED_COUNT "expert_used_count"
#define TS_ARCH_KEY_EXPERT_FEED_FORWARD_LENGTH "expert_feed_forward_length"
#define TS_ARCH_KEY_SLIDING_WINDOW "attention.sliding_window"
#define TS_ARCH_KEY_SLIDING_WINDOW_PATTERN "attention.sliding_window_pattern"
#define TS_ARCH_KEY_ROPE_FREQ_BASE_SWA "rope.freq_base_swa"
#define TS_ARCH_KEY_FINAL_LOGIT_SOFTCAPPING "final_logit_softcapping"
#define TS_ARCH_KEY_ATTN_LOGIT_SOFTCAPPING "attn_logit_softcapping"

/* ---- turbosparse keys -------------------------------------------------------------------------------------- */
#define TS_KEY_FORMAT_VERSION "turbosparse.format_version"
#define TS_KEY_FFN_ACTIVATION "turbosparse.ffn_activation"
#define TS_KEY_PREDICTOR_THRESHOLD "turbosparse.predictor_threshold"
#define TS_KEY_PREDICTOR_RANKS "turbosparse.predictor_ranks"
#define TS_KEY_PREDICTOR_INPUT "turbosparse.predictor_input"
#define TS_KEY_GATE_THRESHOLDS "turbosparse.gate_thresholds"
#define TS_KEY_ACT_THRESHOLDS "turbosparse.act_thresholds"
#define TS_KEY_FFN_GATE_SCALES "turbosparse.ffn_gate_scales"
#define TS_KEY_FFN_ACT_SCALES "turbosparse.ffn_act_scales"
#define TS_KEY_DOWN_COLUMNS_SCALED "turbosparse.down_columns_scaled"
#define TS_KEY_GROUP_SIZE "turbosparse.group_size"
#define TS_KEY_GROUP_TOP_K "turbosparse.group_top_k"
#define TS_KEY_POWERINFER_THRESHOLD "powerinfer.sparse_threshold"

/* values of turbosparse.ffn_activation (constants.FFN_ACTIVATIONS) and turbosparse.predictor_input
   (constants.PREDICTOR_INPUTS), in those tuples' order */
#define TS_FFN_ACTIVATION_SWIGLU "swiglu"
#define TS_FFN_ACTIVATION_REGLU "reglu"
#define TS_FFN_ACTIVATION_DRELU "drelu"
#define TS_FFN_ACTIVATION_GEGLU "geglu"
#define TS_PREDICTOR_INPUT_RESIDUAL "residual"
#define TS_PREDICTOR_INPUT_RESIDUAL_RMSNORM "residual_rmsnorm"

/* ---- tensors: llama.cpp's ------------------------------------------------------------------------------------ */
#define TS_TENSOR_TOKEN_EMBD "token_embd.weight"
#define TS_TENSOR_OUTPUT_NORM "output_norm.weight"
#define TS_TENSOR_OUTPUT "output.weight"
#define TS_TENSOR_OUTPUT_BIAS "output.bias"
#define TS_TENSOR_ROPE_FREQS "rope_freqs.weight"
#define TS_TENSOR_ROPE_FACTORS_LONG "rope_factors_long.weight"   /* phi3: the rope factors of contexts past the
                                                                    original one */
#define TS_TENSOR_ROPE_FACTORS_SHORT "rope_factors_short.weight" /* and of the others */
#define TS_TENSOR_ATTN_NORM "blk.%d.attn_norm.weight"
#define TS_TENSOR_ATTN_Q "blk.%d.attn_q.weight"
#define TS_TENSOR_ATTN_K "blk.%d.attn_k.weight"
#define TS_TENSOR_ATTN_V "blk.%d.attn_v.weight"
#define TS_TENSOR_ATTN_QKV "blk.%d.attn_qkv.weight" /* q, k and v stacked (phi3): split at load (model.c) */
#define TS_TENSOR_ATTN_QKV_BIAS "blk.%d.attn_qkv.bias"
#define TS_TENSOR_ATTN_OUTPUT "blk.%d.attn_output.weight"
#define TS_TENSOR_ATTN_Q_BIAS "blk.%d.attn_q.bias"
#define TS_TENSOR_ATTN_K_BIAS "blk.%d.attn_k.bias"
#define TS_TENSOR_ATTN_V_BIAS "blk.%d.attn_v.bias"
#define TS_TENSOR_ATTN_OUTPUT_BIAS "blk.%d.attn_output.bias"
#define TS_TENSOR_ATTN_Q_NORM "blk.%d.attn_q_norm.weight"
#define TS_TENSOR_ATTN_K_NORM "blk.%d.attn_k_norm.weight"
#define TS_TENSOR_ATTN_POST_NORM "blk.%d.post_attention_norm.weight"
#define TS_TENSOR_FFN_NORM "blk.%d.ffn_norm.weight"
#define TS_TENSOR_FFN_POST_NORM "blk.%d.post_ffw_norm.weight"
#define TS_TENSOR_FFN_GATE "blk.%d.ffn_gate.weight"
#define TS_TENSOR_FFN_UP "blk.%d.ffn_up.weight"
#define TS_TENSOR_FFN_DOWN "blk.%d.ffn_down.weight"
#define TS_TENSOR_FFN_GATE_BIAS "blk.%d.ffn_gate.bias"
#define TS_TENSOR_FFN_UP_BIAS "blk.%d.ffn_up.bias"
#define TS_TENSOR_FFN_DOWN_BIAS "blk.%d.ffn_down.bias"
#define TS_TENSOR_FFN_GATE_INP "blk.%d.ffn_gate_inp.weight"
#define TS_TENSOR_FFN_GATE_EXPS "blk.%d.ffn_gate_exps.weight"
#define TS_TENSOR_FFN_UP_EXPS "blk.%d.ffn_up_exps.weight"
#define TS_TENSOR_FFN_DOWN_EXPS "blk.%d.ffn_down_exps.weight"

/* ---- tensors: ours ---------------------------------------------------------------------------------------------- */
#define TS_TENSOR_FFN_DOWN_T "blk.%d.ffn_down_t.weight"
#define TS_TENSOR_FFN_DOWN_T_SCALE "blk.%d.ffn_down_t_scale.weight"
#define TS_TENSOR_PRED_FC1 "blk.%d.ffn_pred_fc1.weight"
#define TS_TENSOR_PRED_FC2 "blk.%d.ffn_pred_fc2.weight"
#define TS_TENSOR_PRED_GROUPS "blk.%d.ffn_pred_groups.weight"
#define TS_TENSOR_FFN_DOWN_T_EXPS "blk.%d.ffn_down_t_exps.weight"
#define TS_TENSOR_PRED_FC1_EXPS "blk.%d.ffn_pred_fc1_exps.weight"
#define TS_TENSOR_PRED_FC2_EXPS "blk.%d.ffn_pred_fc2_exps.weight"

/* ---- tensors: PowerInfer's names for the predictor ----------------------------------------------------------- */
#define TS_TENSOR_POWERINFER_FC1 "blk.%d.fc1.weight"
#define TS_TENSOR_POWERINFER_FC2 "blk.%d.fc2.weight"

#endif
