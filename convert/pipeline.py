"""`convert()`: an HF checkpoint directory (or an existing turbosparse GGUF) -> a turbosparse GGUF file."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import gguf

from turbosparse.constants import (
    ARCHITECTURE,
    KEY_DOWN_COLUMNS_SCALED,
    KEY_DOWN_LAYOUT,
    KEY_FFN_ACTIVATION,
    KEY_PREDICTED_RATES,
    KEY_SOURCE,
)
from turbosparse.convert.arch import ConvertOptions, find_architecture
from turbosparse.convert.arch.base import ROLE_PREDICTOR
from turbosparse.convert.down_scales import equalise_down_columns, scale_down_t_outputs
from turbosparse.convert.groups import add_groups, budget_groups, load_plan
from turbosparse.convert.hparams import HParams, read_config
from turbosparse.convert.imatrix import quantize_keys, read_imatrix, with_importance
from turbosparse.convert.neuron_order import permute_neurons, quantization_order, stores_quantization_order
from turbosparse.convert.quant_policy import QuantPolicy, file_type
from turbosparse.convert.requantize import requantize
from turbosparse.convert.source import checkpoint_files, open_checkpoint
from turbosparse.convert.vocab import Vocab, load_vocab
from turbosparse.convert.writer import add_llama_hparams, add_turbosparse_keys, check_output_path, write_gguf
from turbosparse.errors import ConvertError, ModelLoadError
from turbosparse.gguf_reader import file_magic
from turbosparse.powerinfer import GGUF_MAGIC
from turbosparse.tokenizer import Tokenizer

logger = logging.getLogger(__name__)


def convert(
    model_dir: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    outtype: str = "q8_0",
    predictors: str | os.PathLike[str] | None = None,
    *,
    pred_type: str | None = None,
    down_layout: str | None = None,
    threshold: float | None = None,
    vocab_pre: str | None = None,
    name: str | None = None,
    groups: int | None = None,
    group_plan: str | os.PathLike[str] | None = None,
    keep_neuron_order: bool = False,
    imatrix: str | os.PathLike[str] | None = None,
    progress: bool = False,
) -> Path:
    """Converts model_dir (an HF checkpoint directory, or a .gguf file to re-quantize) to out_path.

    outtype: f32 f16 bf16 q8_0 q4_0 q4_1 q5_0 q5_1 q2_k q3_k q4_k q5_k q6_k (quant_policy.py says which tensor gets
    which type); predictors: a PowerInfer predictor directory (relu-llama checkpoints); pred_type: the predictors'
    type; down_layout: transposed | standard | both (default: transposed for ReLU-family models, else standard);
    threshold: the predictor threshold to store (default: the checkpoint's, else 0.0); vocab_pre: llama.cpp's
    pre-tokenizer name for a BPE vocabulary whose tokenizer.json structure is not recognised; groups: G, adds the
    grouped route's tensors (convert/groups.py), neurons ordered and top-k set by group_plan when given, the down
    layout both unless given (the route reads the standard down);
    keep_neuron_order: the checkpoint's neuron order and weights, where a ReLU-family FFN with a standard down otherwise
    gets the order that down quantizes well in (convert/neuron_order.py) and like-scaled down columns, and a
    transposed down its output dimensions like-scaled (convert/down_scales.py; the function is unchanged either way);
    imatrix: a llama.cpp
    importance matrix file (convert/imatrix.py) whose entries weigh the quantizers' rounding errors.
    Raises turbosparse.errors.ConvertError naming the file and tensor or key; leaves no partial output behind."""
    src, out = Path(model_dir), Path(out_path)
    side_inputs = [Path(f) for f in (imatrix, group_plan, predictors) if f is not None]
    check_output_path(out, inputs=[*checkpoint_files(src), *side_inputs])
    if not src.is_dir() and file_magic(src) != GGUF_MAGIC:
        what = "is neither a GGUF file nor a checkpoint folder" if src.exists() else "no such file or folder"
        raise ConvertError(f"{src}: {what} (convert takes a Hugging Face checkpoint folder or a GGUF file)")
    if group_plan is not None and groups is None:
        raise ConvertError(f"{group_plan}: a group plan (--group-plan) needs the group size it was made for (--groups)")
    importance = read_imatrix(imatrix) if imatrix is not None else None
    if src.is_file():
        options = (predictors, down_layout, threshold, groups, group_plan, vocab_pre, name)
        if any(o is not None for o in options) or keep_neuron_order:
            raise ConvertError(
                f"{src}: re-quantizing a GGUF file takes only --outtype, --pred-type and --imatrix (its tensors' "
                "order, its name and its vocabulary stay as they are)"
            )
        return requantize(src, out, outtype, pred_type=pred_type, imatrix=importance, progress=progress)
    if groups is not None and down_layout is None:
        down_layout = "both"  # the grouped route reads the standard down, the CPU's row route the transposed one
    if groups is not None and down_layout == "transposed":
        raise ConvertError(
            "--groups: the grouped route reads the standard down matrix; use --down-layout both or standard"
        )
    config = read_config(src)
    cls = find_architecture(config, src / "config.json")
    options = ConvertOptions(
        predictors=Path(predictors) if predictors is not None else None, down_layout=down_layout, threshold=threshold
    )
    arch = cls(src, config, open_checkpoint(src), options)
    hp = arch.hparams()
    if groups is not None and hp.n_expert:
        raise ConvertError(
            f"{src}: --groups: neuron groups are for a dense FFN; a mixture of experts ({cls.name}) decodes its chosen "
            "experts sparsely through the row kernels, without groups"
        )
    if arch.ffn_activation == "swiglu" and arch.down_layout() == "transposed":
        raise ConvertError(
            f"{src}: --down-layout transposed: a SwiGLU FFN ({cls.name}) is read through its standard down matrix, "
            "by llama.cpp and turbosparse alike; use standard (the default) or both"
        )
    vocab = load_vocab(src, hp.vocab_size, vocab_pre)
    check_vocabulary_loads(hp, vocab, src, vocab_pre)  # before any tensor is read
    specs = arch.tensors()
    sparse_keys = arch.metadata()
    has_predictors = any(s.role == ROLE_PREDICTOR for s in specs)
    if hp.n_expert and has_predictors and arch.down_layout() == "standard":
        raise ConvertError(
            f"{src}: --down-layout standard: the sparse decoding of a mixture of experts reads the experts' "
            "transposed down matrices, without which the predictors would never run; use transposed (the default) "
            "or both"
        )
    if not has_predictors:
        for flag, value in (("--threshold", threshold), ("--pred-type", pred_type)):
            if value is not None:
                raise ConvertError(f"{src}: {flag} given but the checkpoint has no predictors")
    if importance is not None:  # before any reordering, which moves the down's importance with its columns
        specs = with_importance(specs, importance)
    reorders = stores_quantization_order(arch.ffn_activation, hp.n_expert, arch.down_layout())
    reordered = False  # neurons in the quantization order or a group plan's: the down's columns then like-scaled
    if group_plan is None and not keep_neuron_order and reorders:
        orders = quantization_order(specs, hp.n_layer)
        if orders is None:
            logger.info("%s: the FFN's tensors are stored bytes: the checkpoint's neuron order stays", src)
        else:
            specs = permute_neurons(specs, orders)
            reordered = True
    if groups is not None:
        grouping = (
            load_plan(Path(group_plan), groups, hp.n_layer, hp.n_ff)
            if group_plan is not None
            else budget_groups(groups, hp.n_ff, sparse_keys.get(KEY_PREDICTED_RATES), str(src))
        )
        specs = add_groups(specs, grouping, hp.n_layer, hp.n_ff)
        sparse_keys |= grouping.metadata()
        reordered = reordered or grouping.order is not None
    if reordered:
        specs = equalise_down_columns(specs, hp.n_layer)
        sparse_keys[KEY_DOWN_COLUMNS_SCALED] = 1
    if not keep_neuron_order:  # the transposed down's blocks, along the output dimensions (down_scales.py)
        specs = scale_down_t_outputs(specs, hp.n_layer)
    policy = QuantPolicy.from_names(outtype, pred_type, tied=hp.tied_embeddings)
    types = [policy.type_for(s.role, s.shape) for s in specs]
    logger.info("%s: %s checkpoint, %d tensors -> %s (%s)", src, cls.name, len(specs), out, outtype)

    def add_metadata(writer: gguf.GGUFWriter) -> None:
        writer.add_name(name or src.resolve().name)
        writer.add_file_type(file_type(policy.outtype))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        add_llama_hparams(writer, hp)
        add_turbosparse_keys(
            writer,
            {
                KEY_SOURCE: cls.name,
                KEY_FFN_ACTIVATION: arch.ffn_activation,
                KEY_DOWN_LAYOUT: arch.down_layout(),
                **sparse_keys,
            },
        )
        vocab.add_to(writer)
        if importance is not None:
            for key, (value, vtype) in quantize_keys(importance).items():
                writer.add_key_value(key, value, vtype)

    return write_gguf(out, specs, types, add_metadata, progress=progress)


def check_vocabulary_loads(hp: HParams, vocab: Vocab, src: Path, vocab_pre: str | None) -> None:
    """ConvertError unless llama.cpp reads the vocabulary as the file will hold it (an unknown --vocab-pre, say):
    checked on a file of the hyperparameters and vocabulary alone, before any tensor is read."""
    with tempfile.TemporaryDirectory(prefix="turbosparse-vocab-") as folder:
        probe = Path(folder) / "vocabulary.gguf"
        writer = gguf.GGUFWriter(str(probe), ARCHITECTURE)
        try:
            add_llama_hparams(writer, hp)
            vocab.add_to(writer)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
        finally:
            writer.close()
        try:
            Tokenizer(str(probe)).close()
        except ModelLoadError as exc:
            named = f" (--vocab-pre {vocab_pre!r}: is it one of llama.cpp's pre-tokenizer names?)" if vocab_pre else ""
            reason = str(exc).replace(f"{probe}: llama.cpp could not load the vocabulary: ", "")
            raise ConvertError(
                f"{src}: llama.cpp cannot read the vocabulary this conversion writes{named}: {reason}"
            ) from None
