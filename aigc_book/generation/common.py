"""What every decoding loop shares: the next-token logits of growing sequences, and the output.

Introduced in chapter 4, section "Decoding". :class:`NextLogits` feeds a model the tokens so far
(through its KV cache when asked, sliding the window past ``block_size``) and returns the next-token
logits; :class:`GenerateOutput` is what :func:`~aigc_book.generation.search.generate` and
:func:`~aigc_book.generation.beam.beam_search` return. Both loops import them from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from aigc_book.cpu_threads import check_cpu_load

if TYPE_CHECKING:
    from aigc_book.models.gpt import GPT

__all__ = ["GenerateOutput", "NextLogits"]


@dataclass
class GenerateOutput:
    """What :func:`~aigc_book.generation.search.generate` returns.

    Attributes:
        sequences: ``(B * num_return_sequences, T + n)`` the prompt followed by the new tokens; rows
            of one prompt are adjacent, best first for beam search. ``n <= max_new_tokens``: decoding
            stops early once every row has produced ``eos_token_id``; a row that ended before the
            others is filled with the (first) ``eos_token_id``, as Hugging Face fills it with its pad
            token when none is set.
        sequences_scores: beam search only, ``(B * num_return_sequences,)``: each hypothesis's
            ``sum log p / n_gen ** length_penalty`` (Hugging Face's ``sequences_scores``); None otherwise.
    """

    sequences: torch.Tensor
    sequences_scores: torch.Tensor | None = None


class NextLogits:
    """The ``(N, V)`` next-token logits of ``N`` growing sequences, with or without a KV cache.

    Call it with all the tokens so far, ``(N, n)``. With the cache it feeds only the tokens the cache
    has not seen; past ``block_size`` tokens it rebuilds the cache from the last ``block_size`` every
    step (the sliding window). :meth:`reorder` keeps the cache in step when rows are reordered
    (beam search) or duplicated.
    """

    def __init__(self, model: GPT, batch_size: int, use_cache: bool):
        self.model = model
        self.block_size = model.config.block_size
        self.cache = model.new_kv_cache(batch_size) if use_cache else None

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        check_cpu_load()  # generation has no optimiser step: follow the machine's load from here
        n = tokens.size(1)
        cache = self.cache
        if cache is None:
            return self.model(tokens[:, -self.block_size:]).logits[:, -1]  # (N, V)
        if cache.length == n - 1 and cache.length < self.block_size:
            return self.model(tokens[:, -1:], kv_cache=cache).logits[:, -1]  # only the newest token
        cache.reset()  # first call, or the window slides
        return self.model(tokens[:, -self.block_size:], kv_cache=cache).logits[:, -1]

    def reorder(self, index: torch.Tensor) -> None:
        if self.cache is not None:
            self.cache.reorder(index)
