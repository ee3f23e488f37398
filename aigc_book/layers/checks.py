"""Argument checks shared by the layers and models: clear messages, no hidden cost.

Introduced in chapter 2, section "The block and the whole GPT". A value check on a tensor
(``int(ids.max())``) forces a CUDA host synchronisation and breaks a ``torch.compile`` graph; the
helpers here check values on the CPU only, assert asynchronously on an accelerator, and skip the
value check while a graph is being compiled (shapes and dtypes are always checked).
"""

from __future__ import annotations

import torch

from aigc_book.checks import is_int

__all__ = ["check_heads", "check_index_range", "check_token_ids"]


def check_index_range(ids: torch.Tensor, high: int, what: str) -> None:
    """Raise ``ValueError`` unless every value of the integer tensor ``ids`` lies in ``[0, high)``.

    On the CPU the check is exact and immediate. On CUDA it is a device-side assertion that costs no
    synchronisation (a bad id stops the next synchronising call with the message). Under
    ``torch.compile`` it is skipped: the compiled kernels bound-check indices themselves.
    """
    if torch.compiler.is_compiling() or ids.numel() == 0:
        return
    if ids.device.type == "cpu":
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= high:
            raise ValueError(f"{what} must lie in [0, {high}), got values in [{lo}, {hi}]")
    elif ids.device.type == "cuda":
        torch._assert_async((ids.min() >= 0) & (ids.max() < high), f"{what} must lie in [0, {high})")


def check_token_ids(idx: torch.Tensor, vocab_size: int) -> None:
    """Raise a clear error unless ``idx`` is a non-empty ``(B, T)`` integer tensor with values in
    ``[0, vocab_size)`` (the value check costs no host synchronisation, see :func:`check_index_range`)."""
    if not isinstance(idx, torch.Tensor) or idx.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        got = idx.dtype if isinstance(idx, torch.Tensor) else type(idx).__name__
        raise TypeError(f"token ids must be an integer tensor of shape (B, T), got {got}")
    if idx.dim() != 2:
        raise ValueError(f"token ids must have shape (B, T), got shape {tuple(idx.shape)}")
    if idx.size(1) == 0:
        raise ValueError("token ids are empty: expected at least one token per sequence")
    if idx.size(0) == 0:
        raise ValueError("the batch is empty: expected at least one sequence")
    check_index_range(idx, vocab_size, f"token ids (vocab_size={vocab_size})")


def check_heads(n_embd: int, n_head: int) -> None:
    """Raise ``ValueError`` unless ``n_embd`` splits into ``n_head`` equal heads."""
    if not is_int(n_head) or n_head < 1:
        raise ValueError(f"the number of heads n_head must be a positive int, got {n_head!r}")
    if n_embd % n_head != 0:
        raise ValueError(
            f"embedding size n_embd={n_embd} is not divisible by the number of heads n_head={n_head}; "
            f"each head gets n_embd / n_head dimensions (e.g. n_embd={n_head * max(1, round(n_embd / n_head))})"
        )
