"""Exceptions raised by turbosparse, and the words their messages share."""


def extra_install(extra: str, holding: str | None = None) -> str:
    """How an extra (`server`, `train`) that a message finds missing is installed (holding: what it brings)."""
    named = f"the `{extra}` extra" + (f" ({holding})" if holding else "")
    return f"{named}, which scripts/setup.sh installs: pip install '.[{extra}]' in the turbosparse checkout"


class TurboSparseError(Exception):
    """Base class of turbosparse's errors."""


class ModelLoadError(TurboSparseError, ValueError):
    """A model file is missing, corrupt, or of a kind turbosparse cannot run; the message names what."""


class ConvertError(TurboSparseError, ValueError):
    """A checkpoint cannot be converted (unknown architecture, missing or misshaped tensor, corrupt file,
    unreadable tokenizer); the message names the file and the tensor or key."""


class TrainingError(TurboSparseError, ValueError):
    """A model or data the trainer cannot use (a SwiGLU model where a dReLU one is needed, too little text, a corrupt
    collection or predictor folder); the message names the file or folder."""


class ContextOverflowError(TurboSparseError, ValueError):
    """More tokens than the context (n_ctx) holds."""


class InvalidArgumentError(TurboSparseError, ValueError):
    """An argument or parameter out of range: a context size, thread count, token id, sequence."""


class SequenceBusyError(InvalidArgumentError):
    """A sequence (a server's slot) that an unfinished generation decodes in, asked to load or drop what it holds."""


class InfillNotSupportedError(InvalidArgumentError):
    """A fill-in-the-middle prompt for a model whose vocabulary has no FIM tokens."""


class GrammarError(InvalidArgumentError):
    """A grammar, JSON schema or response_format that cannot constrain generation: it does not parse, is too deep
    for llama.cpp's grammar engine, or asks for something not supported."""


class ModelClosedError(TurboSparseError, RuntimeError):
    """A Model (or its tokenizer) used after close()."""


class EvalError(TurboSparseError, RuntimeError):
    """The engine failed to evaluate a batch."""


class CalibrationError(TurboSparseError, ValueError):
    """A model cannot be calibrated on the given text (too little text, a file without the FFN calibration needs,
    an impossible sparsity); the message names the file and what is missing."""


class ChatTemplateError(TurboSparseError, ValueError):
    """A chat template does not parse, or refuses the messages it is given (its raise_exception)."""
