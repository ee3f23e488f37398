"""One ``generate`` for greedy decoding, sampling and beam search, with Hugging Face's arguments.

Introduced in chapter 4, section "Decoding". :func:`generate` takes the argument names of
``transformers``' ``GenerationMixin.generate`` and follows its semantics, so that a reader can carry
what they learn here to any Hugging Face model (``tests/test_generation.py`` checks our tokens and
beam scores against Hugging Face's GPT-2 holding the same weights):

* ``do_sample=False, num_beams=1``: greedy decoding, the argmax at every step;
* ``do_sample=True, num_beams=1``: sampling from ``softmax`` of the transformed logits
  (:mod:`aigc_book.generation.logits`);
* ``num_beams > 1``: beam search (:mod:`aigc_book.generation.beam`), or beam sampling with
  ``do_sample=True``.

The model is any :class:`~aigc_book.models.gpt.GPT` (or a module with the same seams: ``forward(idx,
kv_cache=...)`` returning ``.logits``, ``config.block_size`` and ``config.vocab_size``, and
``new_kv_cache(batch)`` when ``use_cache``). With the cache each step feeds only the newest token;
once the context is full, the window slides and the cache is rebuilt from the last ``block_size``
tokens every step, which is exactly what happens without the cache, so both give the same tokens.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch

from aigc_book.generation.beam import beam_search
from aigc_book.generation.common import GenerateOutput, NextLogits
from aigc_book.generation.logits import (
    check_min_p,
    check_repetition_penalty,
    check_temperature,
    check_top_k,
    check_top_p,
    process_scores,
)
from aigc_book.layers.checks import check_token_ids

if TYPE_CHECKING:
    from aigc_book.models.gpt import GPT

__all__ = ["generate"]


def _eos_list(eos_token_id) -> list[int] | None:
    if eos_token_id is None:
        return None
    ids = [eos_token_id] if isinstance(eos_token_id, int) and not isinstance(eos_token_id, bool) else eos_token_id
    if (not isinstance(ids, Sequence) or isinstance(ids, (str, bytes)) or not ids
            or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids)):
        raise TypeError(f"eos_token_id must be an int, a non-empty list of ints, or None, got {eos_token_id!r}")
    return list(ids)


def _check_positive_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def generate(
    model: GPT,
    input_ids: torch.Tensor,
    *,
    max_new_tokens: int,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    repetition_penalty: float | None = None,
    num_beams: int = 1,
    length_penalty: float = 1.0,
    early_stopping: bool | str = False,
    num_return_sequences: int = 1,
    eos_token_id: int | Sequence[int] | None = None,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    on_token: Callable[[torch.Tensor], None] | None = None,
) -> GenerateOutput:
    """Continue each prompt of ``input_ids`` by up to ``max_new_tokens`` tokens.

    Greedy decoding, sampling or beam search, with the names, defaults and semantics of Hugging
    Face's ``generate`` (``transformers`` 5), except that ``top_k`` defaults to None (no limit)
    where Hugging Face's ``GenerationConfig`` uses 50. Runs in eval mode (no dropout) under
    ``torch.inference_mode`` and restores the model's mode afterwards; the returned tensors are
    ordinary tensors (they can be trained on).

    Args:
        model: a :class:`~aigc_book.models.gpt.GPT` (see the module docstring for what else works).
        input_ids: ``(B, T)`` prompt token ids in ``[0, vocab_size)``; a prompt longer than the
            context is read through its last ``block_size`` tokens.
        max_new_tokens: how many tokens to add at most, an int >= 0.
        do_sample: draw tokens at random (True) or take the most probable / the best beams (False).
        temperature, top_k, top_p, min_p: the sampling transformations of
            :mod:`aigc_book.generation.logits`, used only when ``do_sample``.
        repetition_penalty: CTRL's penalty (> 1 discourages tokens already in the row, prompt
            included); used in every mode. None or 1 = none.
        num_beams: 1 for greedy decoding or sampling; more for beam search (each step keeps the
            ``num_beams`` best partial sequences by summed log-probability).
        length_penalty: beam search ranks finished hypotheses by ``sum log p / n ** length_penalty``,
            ``n`` the number of generated tokens (eos included, prompt not). Scores are negative,
            so ``length_penalty > 0`` favours longer hypotheses and ``< 0`` shorter ones.
        early_stopping: beam search only, Hugging Face's meaning: True stops once ``num_beams``
            hypotheses have finished; False (default) stops when the best running beam, scored
            with its current length, cannot beat the worst finished one; ``"never"`` stops only
            when no better hypothesis is possible (with ``length_penalty > 0`` judged at
            ``max_new_tokens``).
        num_return_sequences: rows returned per prompt: the best beams (at most ``num_beams``), or
            independent samples; greedy decoding returns 1.
        eos_token_id: token (or tokens) that end a sequence, or None to always run
            ``max_new_tokens`` steps.
        generator: the random generator for sampling (None: PyTorch's global one, as Hugging Face).
        use_cache: reuse keys and values through the model's KV cache (same tokens, fewer FLOPs).
        on_token: called with each new ``(B * num_return_sequences,)`` column of tokens as soon as it
            is chosen (to stream text); not available for beam search, whose tokens are only known
            at the end.

    Returns:
        a :class:`GenerateOutput`: ``sequences`` and, for beam search, ``sequences_scores``.
    """
    _check_positive_int("max_new_tokens", max_new_tokens, 0)
    _check_positive_int("num_beams", num_beams, 1)
    _check_positive_int("num_return_sequences", num_return_sequences, 1)
    if not isinstance(do_sample, bool):
        raise TypeError(f"do_sample must be True or False, got {do_sample!r}")
    check_temperature(temperature)
    check_top_k(top_k)
    check_top_p(top_p)
    check_min_p(min_p)
    check_repetition_penalty(repetition_penalty)
    if isinstance(length_penalty, bool) or not isinstance(length_penalty, (int, float)) or not math.isfinite(
        length_penalty
    ):
        raise ValueError(f"length_penalty must be a finite number, got {length_penalty!r}")
    if not (isinstance(early_stopping, bool) or early_stopping == "never"):
        raise ValueError(f"early_stopping must be True, False or 'never', got {early_stopping!r}")
    eos = _eos_list(eos_token_id)
    vocab_size = model.config.vocab_size
    check_token_ids(input_ids, vocab_size)
    if eos is not None and not all(0 <= i < vocab_size for i in eos):
        raise ValueError(f"eos_token_id must lie in [0, {vocab_size}) (the vocabulary), got {eos_token_id!r}")
    if num_beams > 1:
        if num_return_sequences > num_beams:
            raise ValueError(f"num_return_sequences={num_return_sequences} must be <= num_beams={num_beams}: "
                             f"beam search returns its best beams")
        if on_token is not None:
            raise ValueError("on_token streams one token per step, but beam search knows its tokens only at the end; "
                             "use num_beams=1 to stream")
    elif num_return_sequences > 1 and not do_sample:
        raise ValueError("greedy decoding gives one sequence per prompt: num_return_sequences must be 1 "
                         "(use do_sample=True or num_beams > 1 for several)")
    settings = dict(do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                    repetition_penalty=repetition_penalty)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():  # a little faster than no_grad for the many small steps
            if num_beams > 1:
                out = beam_search(model, input_ids, max_new_tokens=max_new_tokens, num_beams=num_beams,
                                  length_penalty=float(length_penalty), early_stopping=early_stopping,
                                  num_return_sequences=num_return_sequences, eos=eos, generator=generator,
                                  use_cache=use_cache, **settings)
            else:
                if num_return_sequences > 1:
                    input_ids = input_ids.repeat_interleave(num_return_sequences, dim=0)  # (B * r, T)
                out = GenerateOutput(_sample_or_greedy(model, input_ids, max_new_tokens, settings, eos, generator,
                                                       use_cache, on_token))
    finally:
        model.train(was_training)
    scores = None if out.sequences_scores is None else out.sequences_scores.clone()
    return GenerateOutput(out.sequences.clone(), scores)  # ordinary tensors again, usable in training


def _sample_or_greedy(model, input_ids, max_new_tokens, settings, eos, generator, use_cache, on_token):
    """Greedy decoding or sampling, one token per step (Hugging Face's ``GenerationMixin._sample``)."""
    B, T = input_ids.shape
    out = input_ids.new_empty(B, T + max_new_tokens)
    out[:, :T] = input_ids
    if max_new_tokens == 0:
        return out
    next_logits = NextLogits(model, B, use_cache)
    eos_ids = None if eos is None else torch.tensor(eos, device=out.device)
    unfinished = torch.ones(B, dtype=torch.bool, device=out.device)
    n = T
    for _ in range(max_new_tokens):
        logits = next_logits(out[:, :n])  # (B, V)
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bfloat16 logits are scored in float32
        scores = process_scores(logits, out[:, :n], **settings)
        if settings["do_sample"]:
            probs = torch.softmax(scores, dim=-1)
            token = torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)  # (B,)
        else:
            token = scores.argmax(dim=-1)  # (B,) the first maximum on ties
        if eos_ids is not None:
            token = torch.where(unfinished, token, eos_ids[0])  # a finished row is filled with eos
            unfinished &= ~torch.isin(token, eos_ids)
        out[:, n] = token
        n += 1
        if on_token is not None:
            on_token(token.clone())
        if eos_ids is not None and not bool(unfinished.any()):
            break
    return out[:, :n]
