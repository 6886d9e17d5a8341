"""Dense parity with llama.cpp itself on the real SmolLM2-135M-Instruct Q4_1 GGUF."""

from __future__ import annotations

import numpy as np
import pytest

from turbosparse.sampling import SamplingParams

PROMPTS = [
    "The capital of France is",
    "<|im_start|>user\nWrite a haiku about autumn leaves.<|im_end|>\n<|im_start|>assistant\n",
    "def fibonacci(n):\n    ",
    "Once upon a time, in a small village by the sea,",
    "Les trois mousquetaires sont",
]


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64) - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_teacher_forced_logits_match_llama_cpp(smollm2_model, llama_cpp_smollm2, macbeth: str) -> None:
    tokens = smollm2_model.tokenize(macbeth[:3000])[:400]
    assert len(tokens) == 400
    ours = smollm2_model.eval_logits(tokens)
    llama_cpp_smollm2.reset()
    llama_cpp_smollm2.eval(tokens)
    theirs = np.asarray(llama_cpp_smollm2.scores[: len(tokens)], dtype=np.float32)
    agree = (ours.argmax(-1) == theirs.argmax(-1)).mean()
    p, q = log_softmax(theirs), log_softmax(ours)
    kl = (np.exp(p) * (p - q)).sum(-1).mean()
    assert agree >= 0.99, f"argmax agreement {agree:.4f}"
    assert kl <= 0.01, f"mean KL(llama.cpp || ours) {kl:.5f}"


def test_decoded_logits_are_llama_cpps_bit_for_bit(smollm2_model, llama_cpp_smollm2, macbeth: str) -> None:
    """Token by token, dense: the attention spans fewer cells than llama.cpp's 256 (context.c: kv_span_step), which
    must not change a single rounding. Past the step's multiples (a span of 32 on an AVX-512 CPU differed from the
    15th token on)."""
    tokens = smollm2_model.tokenize(macbeth[:3000])[:150]
    llama_cpp_smollm2.reset()
    theirs = []
    for token in tokens:
        llama_cpp_smollm2.eval([token])
        theirs.append(np.asarray(llama_cpp_smollm2.scores[llama_cpp_smollm2.n_tokens - 1], dtype=np.float32))

    class Sequence:  # evaluate's sequences are keyed by a weakly referenced object
        pass

    seq = Sequence()
    ours = [smollm2_model.evaluate(seq, tokens[: i + 1]) for i in range(len(tokens))]
    differing = [i for i in range(len(tokens)) if not np.array_equal(ours[i], theirs[i])]
    assert not differing, f"logits differ from llama.cpp's at positions {differing[:10]} (of {len(differing)})"


@pytest.mark.parametrize(("type_k", "type_v"), [("f16", "f16"), ("f32", "f32"), ("q8_0", "q8_0"), ("q4_0", "q8_0")])
def test_flash_attention_and_quantized_caches_are_llama_cpps_bit_for_bit(
    smollm2_path, macbeth: str, type_k: str, type_v: str
) -> None:
    """-fa on, K and V cached in those types (a quantized cache's keys and queries, values and output rotated by
    Walsh-Hadamard matrices, F32 ones cast to F16, as llama.cpp does): a prompt's logits and tokens decoded one by one
    past 512 cells, where ggml splits an F16 cache's cells between the threads (context.c: kv_span), bit for bit."""
    from llama_cpp import Llama

    from turbosparse import Model
    from turbosparse.binding import CACHE_TYPES

    ours = Model(smollm2_path, n_threads=2, n_ctx=1024, sparse="off", flash_attn=True, type_k=type_k, type_v=type_v)
    theirs = Llama(str(smollm2_path), n_ctx=1024, logits_all=True, n_threads=2, verbose=False, flash_attn=True,
                   type_k=CACHE_TYPES[type_k], type_v=CACHE_TYPES[type_v])  # fmt: skip
    tokens = ours.tokenize(macbeth[:9000])[:560]
    theirs.eval(tokens[:500])
    np.testing.assert_array_equal(ours.eval_logits(tokens[:500]), np.asarray(theirs.scores[:500], dtype=np.float32))

    class Sequence:
        pass

    seq = Sequence()
    ours.evaluate(seq, tokens[:500])
    for i in range(500, len(tokens)):
        theirs.eval([tokens[i]])
        want = np.asarray(theirs.scores[theirs.n_tokens - 1], dtype=np.float32)
        np.testing.assert_array_equal(ours.evaluate(seq, tokens[: i + 1]), want, err_msg=f"position {i}")


@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_generation_is_token_identical(smollm2_model, llama_cpp_smollm2, prompt: str) -> None:
    tokens = smollm2_model.tokenize(prompt, special=True)
    assert tokens == llama_cpp_smollm2.tokenize(prompt.encode(), add_bos=True, special=True)
    ours = list(smollm2_model.generate_tokens(tokens, max_tokens=64, sampling=SamplingParams(temperature=0.0)))
    llama_cpp_smollm2.reset()
    theirs = []
    for token in llama_cpp_smollm2.generate(tokens, temp=0.0, top_k=1, repeat_penalty=1.0):
        if smollm2_model.tokenizer.is_end_of_generation(token) or len(theirs) == 64:
            break
        theirs.append(token)
    assert ours == theirs


def test_tokenization_is_llama_cpp_byte_for_byte(smollm2_model, llama_cpp_smollm2) -> None:
    texts = [
        "",
        " ",
        "Hello world",
        "héllo wörld ✓ 日本語 🎉",
        "<|im_start|>system\nx<|im_end|>",
        "a\n\n\tb   c",
        "12345.678",
    ]
    for text in texts:
        for special in (False, True):
            assert smollm2_model.tokenize(text, special=special) == llama_cpp_smollm2.tokenize(
                text.encode(), add_bos=True, special=special
            )
        ids = smollm2_model.tokenize(text, add_bos=False)
        assert smollm2_model.detokenize(ids) == llama_cpp_smollm2.detokenize(ids).decode("utf-8", errors="replace")
