"""What the RLHF trainers share: checking a config's fields, and one guarded optimiser step.

Introduced in chapter 5, section "PPO from scratch" (and used by GRPO and the SFT recipe).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from aigc_book.checks import is_int

__all__ = ["check_fields", "optimizer_step", "trainer_generators"]


def check_fields(config, *, positive_ints=(), positive=(), nonnegative=()) -> None:
    """Raise a ValueError naming the first field of ``config`` that is not a positive int
    (``positive_ints``), a finite number > 0 (``positive``) or a finite number >= 0 (``nonnegative``)."""
    for name in positive_ints:
        value = getattr(config, name)
        if not is_int(value) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    for names, low, what in ((positive, 0, "> 0"), (nonnegative, None, ">= 0")):
        for name in names:
            value = getattr(config, name)
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if not ok or (value <= 0 if low == 0 else value < 0):
                raise ValueError(f"{name} must be a finite number {what}, got {value!r}")


def optimizer_step(loss: torch.Tensor, model: nn.Module, optimizer: torch.optim.Optimizer, grad_clip: float,
                   where: str) -> None:
    """Backpropagate ``loss``, clip the gradient norm at ``grad_clip`` (0: no clipping) and step; a
    non-finite loss raises FloatingPointError naming ``where`` before anything changes."""
    if not torch.isfinite(loss):
        raise FloatingPointError(f"{where}: the loss is {loss.item()}; lower the learning rate")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()


def trainer_generators(policy: nn.Module, seed: int) -> tuple[torch.Generator, torch.Generator]:
    """``(generator, sample_generator)`` of a trainer: a CPU generator for prompts and minibatch order,
    and one on the policy's device for sampling (the same one on a CPU, so a CPU run draws one stream)."""
    generator = torch.Generator().manual_seed(seed)
    device = next(policy.parameters()).device
    return generator, generator if device.type == "cpu" else torch.Generator(device=device).manual_seed(seed)
