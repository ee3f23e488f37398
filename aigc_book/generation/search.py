"""One ``generate`` for greedy decoding, sampling and beam search, with Hugging Face's arguments.

Introduced in chapter 4, section "Decoding". :func:`generate` takes a
:class:`~aigc_book.generation.config.GenerationConfig` (or its fields as keyword arguments), named
as ``transformers``' ``GenerationMixin.generate`` takes them, and follows its semantics, so that a
reader can carry what they learn here to any Hugging Face model (``tests/test_generation.py``
checks our tokens and beam scores against Hugging Face's GPT-2 holding the same weights):

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

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from aigc_book.generation.beam import beam_search
from aigc_book.generation.common import GenerateOutput, NextLogits
from aigc_book.generation.config import GenerationConfig, resolve_generation_config
from aigc_book.generation.logits import process_scores
from aigc_book.layers.checks import check_token_ids

if TYPE_CHECKING:
    from aigc_book.models.gpt import GPT

__all__ = ["generate"]


def generate(
    model: GPT,
    input_ids: torch.Tensor,
    generation_config: GenerationConfig | None = None,
    *,
    generator: torch.Generator | None = None,
    on_token: Callable[[torch.Tensor], None] | None = None,
    **kwargs,
) -> GenerateOutput:
    """Continue each prompt of ``input_ids`` by up to ``max_new_tokens`` tokens.

    Greedy decoding, sampling or beam search, as ``generation_config`` says, with the names,
    defaults and semantics of Hugging Face's ``generate`` (``transformers`` 5; only ``top_k``
    defaults to no limit where Hugging Face uses 50): keyword arguments
    that name :class:`~aigc_book.generation.config.GenerationConfig` fields override the config
    (``generate(model, ids, max_new_tokens=20, do_sample=True)`` needs no config at all); any other
    keyword is a ``TypeError``. Runs in eval mode (no dropout) under ``torch.inference_mode`` and
    restores the model's mode afterwards; the returned tensors are ordinary tensors (they can be
    trained on).

    Args:
        model: a :class:`~aigc_book.models.gpt.GPT` (see the module docstring for what else works).
        input_ids: ``(B, T)`` prompt token ids in ``[0, vocab_size)``; a prompt longer than the
            context is read through its last ``block_size`` tokens.
        generation_config: the decoding options (None: ``GenerationConfig()``, greedy decoding);
            ``max_new_tokens`` must be set, here or in ``kwargs``.
        generator: the random generator for sampling (None: PyTorch's global one, as Hugging Face).
        on_token: called with each new ``(B * num_return_sequences,)`` column of tokens as soon as it
            is chosen (to stream text); not available for beam search, whose tokens are only known
            at the end.
        **kwargs: ``GenerationConfig`` fields that override ``generation_config``.

    Returns:
        a :class:`GenerateOutput`: ``sequences`` and, for beam search, ``sequences_scores``.
    """
    config = resolve_generation_config(generation_config, **kwargs)
    config.required_max_new_tokens()
    vocab_size = model.config.vocab_size
    check_token_ids(input_ids, vocab_size)
    if not all(0 <= i < vocab_size for i in config.eos_token_ids):
        raise ValueError(f"eos_token_id must lie in [0, {vocab_size}) (the vocabulary), got {config.eos_token_id!r}")
    if config.num_beams > 1 and on_token is not None:
        raise ValueError("on_token streams one token per step, but beam search knows its tokens only at the end; "
                         "use num_beams=1 to stream")
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():  # a little faster than no_grad for the many small steps
            if config.num_beams > 1:
                out = beam_search(model, input_ids, config, generator=generator)
            else:
                if config.num_return_sequences > 1:
                    input_ids = input_ids.repeat_interleave(config.num_return_sequences, dim=0)  # (B * r, T)
                out = GenerateOutput(_sample_or_greedy(model, input_ids, config, generator, on_token))
    finally:
        model.train(was_training)
    scores = None if out.sequences_scores is None else out.sequences_scores.clone()
    return GenerateOutput(out.sequences.clone(), scores)  # ordinary tensors again, usable in training


def _sample_or_greedy(model, input_ids, config: GenerationConfig, generator, on_token):
    """Greedy decoding or sampling, one token per step (Hugging Face's ``GenerationMixin._sample``)."""
    B, T = input_ids.shape
    max_new_tokens, eos = config.max_new_tokens, config.eos_token_ids
    out = input_ids.new_empty(B, T + max_new_tokens)
    out[:, :T] = input_ids
    if max_new_tokens == 0:
        return out
    next_logits = NextLogits(model, B, config.use_cache)
    eos_ids = torch.tensor(eos, device=out.device) if eos else None
    unfinished = torch.ones(B, dtype=torch.bool, device=out.device)
    n = T
    for _ in range(max_new_tokens):
        logits = next_logits(out[:, :n])  # (B, V)
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bfloat16 logits are scored in float32
        scores = process_scores(logits, config, out[:, :n])
        if config.do_sample:
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
