"""turbosparse's GGUF keys and tensor names: the single source of truth on the Python side.

The C engine (ggml_ops/src/model.c) reads the same names; docs/gguf-format.md describes them.
"""

from __future__ import annotations

from typing import Final

ARCHITECTURE: Final = "llama"  # general.architecture of every backbone we write (Llama, Mistral, bamboo)
# the dense families the engine runs (and calibrate makes sparse) that the Llama-only training code does not take
OTHER_DENSE_FAMILIES: Final = "Mistral 3, Phi-3 and 4, SmolLM3, Granite, Qwen2, Qwen3, Gemma 2 and 3"
# what a SwiGLU mixture of experts can do here, said where a command that does not take experts is asked
SWIGLU_EXPERTS_DENSE_ONLY: Final = (
    "a mixture of SwiGLU experts (Mixtral, Qwen3-MoE) decodes densely only: neither relufy nor calibrate takes "
    "experts (a TurboSparse-Mixtral checkpoint's dReLU experts take train-predictors)"
)
FORMAT_VERSION: Final = 1

# ---- metadata keys ---------------------------------------------------------------------------------
KEY_FORMAT_VERSION: Final = "turbosparse.format_version"  # u32
KEY_FFN_ACTIVATION: Final = "turbosparse.ffn_activation"  # str: FFN_ACTIVATIONS
KEY_PREDICTOR_THRESHOLD: Final = "turbosparse.predictor_threshold"  # f32, logit threshold (0.0 = sigmoid 0.5)
KEY_PREDICTOR_RANKS: Final = "turbosparse.predictor_ranks"  # u32[n_layer], 0 = no predictor in that layer
KEY_PREDICTOR_INPUT: Final = "turbosparse.predictor_input"  # str: PREDICTOR_INPUTS
KEY_ACTIVATION_RATES: Final = "turbosparse.activation_rates"  # f32[n_layer], measured true active fraction
KEY_PREDICTED_RATES: Final = "turbosparse.predicted_rates"  # f32[n_layer], measured predicted active fraction
KEY_DOWN_LAYOUT: Final = "turbosparse.down_layout"  # str: DOWN_LAYOUTS
KEY_SOURCE: Final = "turbosparse.source"  # str, the converter class that wrote the file
KEY_DOWN_COLUMNS_SCALED: Final = "turbosparse.down_columns_scaled"  # u32 1: like-scaled down columns (down_scales.py)
# calibrated files (turbosparse calibrate): exact mode computes up row j when |act(gate_j)| >= gate threshold and reads
# down row j when |a_j| >= act threshold (act = silu for SwiGLU, gelu for GEGLU; a_j = the neuron's activation)
KEY_GATE_THRESHOLDS: Final = "turbosparse.gate_thresholds"  # f32[n_layer]
KEY_ACT_THRESHOLDS: Final = "turbosparse.act_thresholds"  # f32[n_layer]
KEY_CALIBRATED_SPARSITY: Final = "turbosparse.calibrated_sparsity"  # f32, target share of up + down rows skipped
KEY_CALIBRATED_UP_RATES: Final = "turbosparse.calibrated_up_rates"  # f32[n_layer], up rows computed, calibration text
KEY_CALIBRATED_DOWN_RATES: Final = "turbosparse.calibrated_down_rates"  # f32[n_layer], down rows read, same text
# optional per-neuron scales of those scores (calibrate/scores.py): |act(gate_j)| s_j and |a_j| r_j are compared
KEY_FFN_GATE_SCALES: Final = "turbosparse.ffn_gate_scales"  # f32[n_layer * n_ff], layer-major: s
KEY_FFN_ACT_SCALES: Final = "turbosparse.ffn_act_scales"  # f32[n_layer * n_ff], layer-major: r
# the grouped route (ggml_ops/src/grouped_ffn.h): neurons in groups of G consecutive ones, the top-k groups read
KEY_GROUP_SIZE: Final = "turbosparse.group_size"  # u32 G, a multiple of 32
KEY_GROUP_TOP_K: Final = "turbosparse.group_top_k"  # u32[n_layer], groups read per token
KEY_GROUP_RECALL: Final = "turbosparse.group_recall"  # f32[n_layer], measured share of active neurons in the top k

FFN_ACTIVATIONS: Final = ("swiglu", "reglu", "drelu", "geglu")  # silu(g)*u, relu(g)*u, relu(g)*relu(u), gelu(g)*u
PREDICTOR_INPUTS: Final = ("residual", "residual_rmsnorm")  # h as is, or h / rms(h) (no weight)
DOWN_LAYOUTS: Final = ("standard", "transposed", "both")

# PowerInfer's keys, read (never written)
KEY_POWERINFER_THRESHOLD: Final = "powerinfer.sparse_threshold"

# ---- tensor names (per layer: format with the block index) ---------------------------------------------
TENSOR_FFN_DOWN: Final = "blk.{}.ffn_down.weight"  # ggml ne {n_ff, n_embd}: the standard layout
TENSOR_FFN_DOWN_T: Final = "blk.{}.ffn_down_t.weight"  # ne {n_embd, n_ff}: row j = neuron j's output vector
TENSOR_FFN_DOWN_T_SCALE: Final = "blk.{}.ffn_down_t_scale.weight"  # ne {n_embd}: ffn_down_t's products times it
TENSOR_PRED_FC1: Final = "blk.{}.ffn_pred_fc1.weight"  # ne {n_embd, rank}
TENSOR_PRED_FC2: Final = "blk.{}.ffn_pred_fc2.weight"  # ne {rank, n_ff}
TENSOR_PRED_GROUPS: Final = "blk.{}.ffn_pred_groups.weight"  # ne {rank, n_ff/G}: the group heads

# mixture of experts (llama.cpp's names; ggml ne, experts along ne2)
TENSOR_FFN_GATE_INP: Final = "blk.{}.ffn_gate_inp.weight"  # ne {n_embd, n_expert}: the router
TENSOR_FFN_GATE_EXPS: Final = "blk.{}.ffn_gate_exps.weight"  # ne {n_embd, n_ff, n_expert}
TENSOR_FFN_UP_EXPS: Final = "blk.{}.ffn_up_exps.weight"  # ne {n_embd, n_ff, n_expert}
TENSOR_FFN_DOWN_EXPS: Final = "blk.{}.ffn_down_exps.weight"  # ne {n_ff, n_embd, n_expert}
# ... and ours, stacked the same way
TENSOR_FFN_DOWN_T_EXPS: Final = "blk.{}.ffn_down_t_exps.weight"  # ne {n_embd, n_ff, n_expert}
TENSOR_PRED_FC1_EXPS: Final = "blk.{}.ffn_pred_fc1_exps.weight"  # ne {n_embd, rank, n_expert}
TENSOR_PRED_FC2_EXPS: Final = "blk.{}.ffn_pred_fc2_exps.weight"  # ne {rank, n_ff, n_expert}

# PowerInfer's names for the same tensors
TENSOR_POWERINFER_FC1: Final = "blk.{}.fc1.weight"
TENSOR_POWERINFER_FC2: Final = "blk.{}.fc2.weight"

# ---- Hugging Face side: TurboSparse-Mistral ("bamboo") checkpoints ----------------------------------------
HF_BAMBOO_MODEL_TYPE: Final = "bamboo"  # config.json model_type
HF_BAMBOO_ARCHITECTURE: Final = "BambooForCausalLM"  # config.json architectures
# ---- Hugging Face side: Mixtral and TurboSparse-Mixtral -------------------------------------------------------
HF_MIXTRAL_MODEL_TYPE: Final = "mixtral"
HF_MIXTRAL_ARCHITECTURE: Final = "MixtralForCausalLM"
HF_TURBOSPARSE_MIXTRAL_MODEL_TYPE: Final = "turbosparsemixtral"
HF_TURBOSPARSE_MIXTRAL_ARCHITECTURE: Final = "TurboSparseMixtralForCausalLM"
