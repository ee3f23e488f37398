"""Shared fixtures: one tiny GPT, built once per test, small enough for gradcheck and float64."""

from __future__ import annotations

import pytest
import torch

from aigc_book.models.gpt import GPT
from aigc_book.models.transformer import TransformerConfig

TINY = dict(vocab_size=50, block_size=16, n_layer=2, n_head=4, n_embd=32)


@pytest.fixture
def tiny_config() -> TransformerConfig:
    """2 layers, 4 heads of 8 dimensions, 32-wide, 50 tokens, context 16 (GPT-2 shaped)."""
    return TransformerConfig(**TINY)


@pytest.fixture
def make_tiny_gpt():
    """Factory: ``make_tiny_gpt(**overrides)`` -> a seeded float64 GPT in eval mode."""

    def make(seed: int = 0, dtype=torch.float64, **overrides) -> GPT:
        torch.manual_seed(seed)
        return GPT(TransformerConfig(**{**TINY, **overrides})).to(dtype).eval()

    return make


@pytest.fixture
def tiny_gpt(make_tiny_gpt) -> GPT:
    """The default tiny GPT: float64, eval mode, seed 0."""
    return make_tiny_gpt()


@pytest.fixture
def tiny_ids() -> torch.Tensor:
    """A (2, 7) batch of token ids for the tiny vocabulary."""
    return torch.randint(0, TINY["vocab_size"], (2, 7), generator=torch.Generator().manual_seed(1))
