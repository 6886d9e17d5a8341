"""The engines a benchmark compares, behind one small interface: prefill a prompt, then decode greedily."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from turbosparse.binding import (
    CACHE_TYPES,
    ExpertStats,
    LayerStats,
    NativeContext,
    NativeModel,
    SparseMode,
    sparse_mode_named,
)


class Engine(Protocol):
    name: str  # "llama.cpp" | "turbosparse"
    mode: str  # "dense" | "predictor" | "exact" | "groups"

    def prefill(self, tokens: list[int]) -> np.ndarray:
        """Logits of the last prompt token, from an empty context."""
        ...

    def decode(self, logits: np.ndarray, n: int) -> np.ndarray:
        """n greedy tokens after logits (no end-of-text stop); returns the logits after the last one."""
        ...


@dataclass(frozen=True)
class Attention:
    """How every engine of a benchmark attends: flash attention and the KV cache's types (llama.cpp's -fa, -ctk,
    -ctv; CACHE_TYPES' names)."""

    flash_attn: bool = False
    type_k: str = "f16"
    type_v: str = "f16"


def bench_mode(name: str) -> SparseMode:
    """The mode of a benchmark's mode name: "dense" is its name for off, the others are SPARSE_MODES'."""
    return SparseMode.OFF if name == "dense" else sparse_mode_named(name)


def bench_model(path: Path, mode: str, device: str = "cpu") -> NativeModel:
    """A model loaded as turbosparse.Model loads it for `mode`, its weights on `device` (a ggml device name)."""
    return NativeModel.for_mode(str(path), bench_mode(mode), device=device)


@dataclass
class TurbosparseEngine:
    model: NativeModel
    mode: str
    n_threads: int
    n_ctx: int
    attention: Attention = Attention()
    name: str = "turbosparse"

    def __post_init__(self) -> None:
        a = self.attention
        self.ctx = NativeContext(self.model, n_ctx=self.n_ctx, n_threads=self.n_threads, n_batch=512,
                                 sparse_mode=bench_mode(self.mode), threshold=None, flash_attn=a.flash_attn,
                                 type_k=a.type_k, type_v=a.type_v)  # fmt: skip

    def prefill(self, tokens: list[int]) -> np.ndarray:
        self.ctx.truncate(0)
        return self.ctx.eval(tokens, dense_ffn=True, logits_all=False)

    def decode(self, logits: np.ndarray, n: int) -> np.ndarray:
        for _ in range(n):
            logits = self.ctx.eval([int(np.argmax(logits))], dense_ffn=False, logits_all=False)
        return logits

    def layer_stats(self) -> list[LayerStats]:
        return self.ctx.layer_stats()

    def expert_stats(self) -> list[list[ExpertStats]]:
        return self.ctx.expert_stats()

    def reset_stats(self) -> None:
        self.ctx.reset_stats()


@dataclass
class LlamaCppEngine:
    """llama.cpp itself through llama-cpp-python, attending as `attention` says (llama_cpp.Llama's default: no flash
    attention, F16 KV cache), with sliding-window layers (Gemma) that cache a window's worth of positions as
    llama-server's and llama-cli's do (the faster way; llama_cpp.Llama's default caches every position, and so spans
    every cell). gpu: the index
    of the GPU (among ggml's GPU devices) that holds every layer, as turbosparse places a whole model on one device;
    None: the CPU only (no large batch offloaded to a GPU either, which a GPU build of ggml otherwise does)."""

    path: Path
    n_threads: int
    n_ctx: int
    gpu: int | None = None
    attention: Attention = Attention()
    name: str = "llama.cpp"
    mode: str = "dense"

    def __post_init__(self) -> None:
        from llama_cpp import LLAMA_SPLIT_MODE_NONE, Llama

        self.llm = Llama(
            str(self.path),
            n_ctx=self.n_ctx,
            n_batch=512,
            n_threads=self.n_threads,
            n_threads_batch=self.n_threads,
            n_gpu_layers=0 if self.gpu is None else -1,
            split_mode=LLAMA_SPLIT_MODE_NONE,
            main_gpu=self.gpu or 0,
            op_offload=self.gpu is not None,
            logits_all=False,
            swa_full=False,
            flash_attn=self.attention.flash_attn,
            type_k=CACHE_TYPES[self.attention.type_k],
            type_v=CACHE_TYPES[self.attention.type_v],
            verbose=False,
        )
        self.n_vocab = self.llm.n_vocab()

    def _logits(self) -> np.ndarray:
        return np.ctypeslib.as_array(self.llm._ctx.get_logits(), shape=(self.n_vocab,))

    def prefill(self, tokens: list[int]) -> np.ndarray:
        self.llm.reset()
        self.llm.eval(tokens)
        return self._logits().copy()

    def decode(self, logits: np.ndarray, n: int) -> np.ndarray:
        for _ in range(n):
            self.llm.eval([int(np.argmax(logits))])
            logits = self._logits()
        return logits.copy()
