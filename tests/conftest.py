"""Shared fixtures: one tiny GPT, built once per test, small enough for gradcheck and float64."""

from __future__ import annotations

import os

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


@pytest.fixture
def one_cpu_thread():
    """One PyTorch thread while a test runs (``pytestmark = pytest.mark.usefixtures("one_cpu_thread")``):
    tiny models gain nothing from a second one, and when another program holds a core every operation
    waits for the thread that shares it (see aigc_book/cpu_threads.py), which made a 60-step training
    30 times slower on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True, scope="module")
def fixed_cpu_threads():
    """One CPU thread count per test module: many tests compare runs bit for bit (a resumed run with
    a straight one), and a sum split over another number of threads is added in another order. The
    book lets the count follow the machine's load (aigc_book.cpu_threads) unless AIGC_CPU_THREADS
    fixes it; here it is fixed, for this process and the processes the tests start.
    tests/test_cpu_threads.py removes the variable where it tests the following itself."""
    from aigc_book import cpu_threads

    cpu_threads.stop_following_cpu_load()  # back to the count PyTorch started with
    before = os.environ.get(cpu_threads.THREADS_ENV_VAR)
    os.environ[cpu_threads.THREADS_ENV_VAR] = str(torch.get_num_threads())
    yield
    cpu_threads.stop_following_cpu_load()
    if before is None:
        os.environ.pop(cpu_threads.THREADS_ENV_VAR, None)
    else:
        os.environ[cpu_threads.THREADS_ENV_VAR] = before
