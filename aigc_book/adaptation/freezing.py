"""Which parameters train: freeze everything but some, train only the last layers, count what trains.

Introduced in chapter 4, section "Fine-tuning the whole model". Every adaptation method of the
chapter is, from the optimiser's side, a choice of which tensors have ``requires_grad=True``:
all of them (full fine-tuning), the last ``k`` blocks, or small new modules beside a frozen model
(LoRA, adapters, prompts). :func:`count_trainable` is the number the chapter's comparison table
reports; like ``peft``'s ``get_nb_trainable_parameters``, it counts a shared (tied) tensor once.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable
from typing import NamedTuple

from torch import nn

from aigc_book.checks import is_int

__all__ = ["ParameterCount", "count_trainable", "freeze_all_but", "name_patterns", "train_last_layers",
           "unique_named_parameters"]


class ParameterCount(NamedTuple):
    """``(trainable, total, percent)``: trainable and total parameter counts, ``100 * trainable / total``."""

    trainable: int
    total: int
    percent: float


def unique_named_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """``(name, parameter)`` pairs with each tensor once (a tied matrix under its first name)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected an nn.Module, got {type(model).__name__}")
    return list(model.named_parameters())  # named_parameters already drops repeated tensors


def count_trainable(model: nn.Module) -> ParameterCount:
    """Trainable and total parameters of ``model``, each tensor counted once.

    >>> count_trainable(nn.Linear(3, 2))
    ParameterCount(trainable=8, total=8, percent=100.0)
    """
    params = [p for _, p in unique_named_parameters(model)]
    total = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    return ParameterCount(trainable, total, 100.0 * trainable / total if total else 0.0)


def name_patterns(patterns, argument: str) -> list[str]:
    """``patterns`` (one string or several) as a list of non-empty strings, or a ``ValueError`` naming ``argument``."""
    out = [patterns] if isinstance(patterns, str) else list(patterns) if isinstance(patterns, Iterable) else None
    if out is None or not all(isinstance(p, str) and p for p in out):
        raise ValueError(f"{argument} must be parameter-name patterns such as ['head.*'], got {patterns!r}")
    return out


def _as_predicate(trainable) -> Callable[[str, nn.Parameter], bool]:
    if callable(trainable):
        return trainable
    if isinstance(trainable, str):
        trainable = [trainable]
    if not isinstance(trainable, Iterable):
        raise TypeError(
            "trainable must be a pattern, a list of patterns (e.g. ['transformer.h.1.*']) or a "
            f"predicate(name, parameter) -> bool, got {type(trainable).__name__}"
        )
    patterns = list(trainable)
    if not all(isinstance(p, str) for p in patterns):
        raise TypeError(f"trainable patterns must be strings, got {patterns!r}")
    return lambda name, _p: any(fnmatch.fnmatchcase(name, pat) for pat in patterns)


def freeze_all_but(model: nn.Module, trainable) -> list[str]:
    """Set ``requires_grad`` to True for the chosen parameters and False for all others.

    Args:
        model: any module.
        trainable: shell-style patterns on parameter names (``"transformer.h.1.*"``, ``"*.lora_*"``),
            or a predicate ``(name, parameter) -> bool``.

    Returns the names of the trainable parameters. Raises ``ValueError`` when nothing is chosen (a
    typo in a pattern would otherwise freeze the whole model and train nothing).
    """
    keep = _as_predicate(trainable)
    named = unique_named_parameters(model)
    chosen = []
    for name, p in named:
        train = bool(keep(name, p))
        p.requires_grad_(train)
        if train:
            chosen.append(name)
    if not chosen:
        raise ValueError(
            f"no parameter was chosen to train by {trainable!r}; parameter names look like "
            f"{[n for n, _ in named[:4]]}"
        )
    return chosen


def train_last_layers(model: nn.Module, k: int, *, final_norm: bool = True, head: bool = False) -> list[str]:
    """Train only the last ``k`` Transformer blocks of a GPT (and its final LayerNorm); freeze the rest.

    The classic cheap baseline (e.g. Howard & Ruder 2018, "Universal Language Model Fine-tuning for
    Text Classification", unfreeze from the top).

    Args:
        model: a :class:`~aigc_book.models.gpt.GPT` (anything with ``transformer.h``, a list of blocks).
        k: how many blocks, counted from the top, ``1 <= k <= n_layer``.
        final_norm: also train ``transformer.ln_f``.
        head: also train ``lm_head``. With tied weights (GPT-2) the head *is* the token embedding,
            so this trains the input embedding as well.

    Returns the names of the trainable parameters.
    """
    blocks = getattr(getattr(model, "transformer", None), "h", None)
    if not isinstance(blocks, nn.ModuleList):
        raise TypeError(f"train_last_layers expects a GPT (with transformer.h), got {type(model).__name__}")
    n = len(blocks)
    if not is_int(k) or not 1 <= k <= n:
        raise ValueError(f"k must be an int in 1..{n} (the model has {n} blocks), got {k!r}")
    patterns = [f"transformer.h.{i}.*" for i in range(n - k, n)]
    if final_norm:
        patterns.append("transformer.ln_f.*")
    if head:
        patterns.append("lm_head.*")
    keep = _as_predicate(patterns)
    head_weight = model.lm_head.weight if head and hasattr(model, "lm_head") else None
    return freeze_all_but(model, lambda name, p: keep(name, p) or p is head_weight)
