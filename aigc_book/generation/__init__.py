"""Decoding: a ``GenerationConfig`` of every option, logits transformations (temperature, top-k, top-p,
min-p, repetition penalty), and one ``generate`` for greedy decoding, sampling and beam search with
Hugging Face's argument names."""

from aigc_book.generation.common import GenerateOutput
from aigc_book.generation.config import GenerationConfig
from aigc_book.generation.logits import (
    apply_repetition_penalty,
    apply_temperature,
    min_p_filter,
    next_token_distribution,
    process_scores,
    top_k_filter,
    top_p_filter,
)
from aigc_book.generation.search import generate
from aigc_book.generation.speculative import speculative_generate as speculative_generate  # chapter 6

__all__ = [
    "GenerateOutput",
    "GenerationConfig",
    "apply_repetition_penalty",
    "apply_temperature",
    "generate",
    "min_p_filter",
    "next_token_distribution",
    "process_scores",
    "top_k_filter",
    "top_p_filter",
]
