"""llama-cli's --prompt-cache FILE: the prompt's keys and values kept in a file between runs (Model.save_sequence,
SequenceState's file), so that a run whose prompt starts with the cached one evaluates only the rest."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from turbosparse.errors import ContextOverflowError, InvalidArgumentError
from turbosparse.gguf_reader import file_magic
from turbosparse.model import Model
from turbosparse.sequences import SequenceState, common_prefix


@dataclass(frozen=True)
class PromptCache:
    path: Path
    everything: bool = False  # --prompt-cache-all: the generated text's tokens too
    read_only: bool = False  # --prompt-cache-ro: used, never written

    def check(self) -> None:
        """A path that holds something other than a prompt cache (a text file, llama-cli's session file) is refused
        before any work, as llama-cli refuses a session file it cannot load, not written over."""
        if not self.path.exists() or (self.path.is_file() and self.path.stat().st_size == 0):
            return  # none yet, or an empty file (`mktemp`'s, which llama-cli takes for a new session too)
        if not self.path.is_file() or file_magic(self.path) != SequenceState.MAGIC:
            raise InvalidArgumentError(
                f"--prompt-cache {self.path}: holds something other than a turbosparse prompt cache (no "
                f"{SequenceState.MAGIC.decode()!r} header); it is neither read nor written over: give another path"
            )

    def restore(self, model: Model, prompt: list[int]) -> int:
        """The file's tokens into the model's sequence, where the file exists and fits this model and context (else
        a warning: the prompt is evaluated whole and the file written anew); returns how many of the prompt's tokens
        it holds."""
        if not self.path.exists() or self.path.stat().st_size == 0:
            _say(f"prompt cache {self.path}: no file yet")
            return 0
        try:
            state = SequenceState.load(self.path)
            model.load_sequence(0, state)
        except (InvalidArgumentError, ContextOverflowError, OSError) as exc:
            _say(f"prompt cache {self.path} not used: {exc}")
            return 0
        held = common_prefix(state.tokens, prompt)
        _say(f"prompt cache {self.path}: {held} of the prompt's {len(prompt)} tokens")
        return held

    def save(self, model: Model) -> None:
        """What the model's sequence holds, into the file (a failure to write is said, and the run goes on)."""
        if self.read_only:
            return
        try:
            model.save_sequence(0).save(self.path)
        except OSError as exc:
            _say(f"prompt cache {self.path} not written: {exc}")


def _say(message: str) -> None:
    print(message, file=sys.stderr)
