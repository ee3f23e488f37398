"""Activation checkpointing: each Transformer block recomputes its activations in the backward pass.

Introduced in chapter 6, section "Trading time for memory". A block normally keeps about
``16 h + 4 + a`` numbers per token for its backward pass (:func:`aigc_book.efficiency.memory.activation_terms`).
Checkpointed, it keeps only its input (``h`` per token) and runs its forward pass a second time
during the backward pass to get the rest back: activations fall by about ``16 + (4 + a)/h`` times in
the blocks, and a training step costs about one more forward pass, a third more time if the
backward costs twice the forward (Chen et al. 2016, "Training Deep Nets with Sublinear Memory
Cost", arXiv:1604.06174; they checkpoint every ``sqrt(n)`` layers of an ``n``-layer network to store
``O(sqrt(n))`` instead of ``O(n)``; one checkpoint per block, as here, is the common choice for
Transformers, whose blocks are large).

:func:`checkpointed_blocks` uses ``torch.utils.checkpoint.checkpoint(..., use_reentrant=False)``.
That version saves a block's tensor inputs through autograd's ordinary saved-tensor mechanism,
outside its own hooks, so :func:`~aigc_book.efficiency.memory.training_memory` sees exactly the
block inputs plus what the layers outside the blocks save, and
``activation_bytes(..., checkpointed=True)`` predicts it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from aigc_book.checks import is_int
from aigc_book.efficiency.memory import activation_bytes, lm_training_setup, training_memory
from aigc_book.efficiency.timing import time_call
from aigc_book.layers.block import TransformerBlock
from aigc_book.models.transformer import TransformerConfig
from aigc_book.training.objectives import causal_lm_loss

__all__ = ["checkpointed_blocks", "checkpointing_tradeoff"]


def _checkpointing_forward(block: TransformerBlock):
    """A replacement for ``block.forward`` that checkpoints it whenever a backward pass may follow."""
    plain = block.forward

    def forward(x: torch.Tensor, **kwargs):
        # A KV cache is written during the forward pass; a recomputation would write it again.
        if not torch.is_grad_enabled() or kwargs.get("kv_cache") is not None:
            return plain(x, **kwargs)
        return checkpoint(plain, x, use_reentrant=False, **kwargs)

    forward.checkpointed = True  # marks the wrapper, so nesting is refused
    return forward


@contextlib.contextmanager
def checkpointed_blocks(model: nn.Module) -> Iterator[nn.Module]:
    """Inside the ``with``, every :class:`TransformerBlock` of ``model`` is checkpointed.

    The blocks' ``forward`` is replaced on the instances only (no new module, so ``state_dict``
    keys do not change) and restored on exit. Gradients are the same as without checkpointing;
    dropout gives the same masks in the recomputation (the random state is saved and replayed).
    Under ``torch.no_grad`` or with a KV cache the blocks run as usual.

    >>> with checkpointed_blocks(model):          # doctest: +SKIP
    ...     model(idx, targets).loss.backward()
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    blocks = [m for m in model.modules() if isinstance(m, TransformerBlock)]
    if not blocks:
        raise ValueError(f"{type(model).__name__} has no TransformerBlock to checkpoint")
    if any(getattr(b.forward, "checkpointed", False) for b in blocks):
        raise ValueError("the blocks are already checkpointed (nested checkpointed_blocks)")
    before = [vars(b).get("forward") for b in blocks]  # an instance-level forward someone set, or None
    for b in blocks:
        b.forward = _checkpointing_forward(b)
    try:
        yield model
    finally:
        for b, old in zip(blocks, before):
            if old is None:
                del b.forward
            else:
                b.forward = old


def _step_times(model: nn.Module, data: dict, device: torch.device, repeats: int, min_seconds: float
                ) -> tuple[float, float]:
    """Best seconds per AdamW training step (forward, backward, update), plain and checkpointed.

    The two are timed in turns, ``repeats`` times each, so that a burst of load from another
    program on a shared machine slows both rather than one.
    """
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        optimizer.zero_grad(set_to_none=True)
        causal_lm_loss(model, data).backward()
        optimizer.step()

    best = {False: float("inf"), True: float("inf")}
    for _ in range(repeats):
        for checkpointed in (False, True):
            with checkpointed_blocks(model) if checkpointed else contextlib.nullcontext():
                seconds = time_call(step, repeats=1, min_seconds=min_seconds, device=device)
            best[checkpointed] = min(best[checkpointed], seconds)
    return best[False], best[True]


def checkpointing_tradeoff(config: TransformerConfig, batch: int, seq_len: int, device=None, *,
                           repeats: int = 5, min_seconds: float = 0.05, seed: int = 0) -> dict[str, float]:
    """Memory saved and time spent by checkpointing every block of a GPT of ``config``.

    One causal-LM training step on a random batch ``(batch, seq_len)``, with and without
    :func:`checkpointed_blocks`. Returns, in bytes, ``activations`` and ``activations checkpointed``
    (measured by :func:`~aigc_book.efficiency.memory.training_memory`) with the ``... formula``
    predictions beside them (None when ``dropout > 0``); ``ms per step`` and ``ms per step
    checkpointed`` (best of ``repeats`` timings of AdamW steps, taken in turns, with
    :func:`~aigc_book.efficiency.timing.time_call`); ``memory saved`` (the fraction of the
    activations) and ``extra time`` (the fraction of the step). On CUDA also ``peak`` and ``peak
    checkpointed``: the allocator's peak over a step, where the recomputed block's activations show.
    """
    if not is_int(repeats) or repeats < 1:
        raise ValueError(f"repeats must be a positive int, got {repeats!r}")
    model, data = lm_training_setup(config, batch, seq_len, device, seed=seed)
    device = next(model.parameters()).device

    def adamw(params):
        return torch.optim.AdamW(params, lr=1e-4)

    plain = training_memory(model, adamw, data, causal_lm_loss)
    with checkpointed_blocks(model):
        ckpt = training_memory(model, adamw, data, causal_lm_loss)
    ms, ms_ckpt = (1e3 * t for t in _step_times(model, data, device, repeats, min_seconds))
    out = {
        "activations": plain.activations,
        "activations formula": activation_bytes(config, batch, seq_len) if config.dropout == 0 else None,
        "activations checkpointed": ckpt.activations,
        "activations checkpointed formula": (
            activation_bytes(config, batch, seq_len, checkpointed=True) if config.dropout == 0 else None
        ),
        "ms per step": ms,
        "ms per step checkpointed": ms_ckpt,
        "memory saved": 1 - ckpt.activations / plain.activations,
        "extra time": ms_ckpt / ms - 1,
    }
    if device.type == "cuda":
        out["peak"], out["peak checkpointed"] = plain.peak_cuda, ckpt.peak_cuda
    return out
