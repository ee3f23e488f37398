"""How good is a language model on held-out text: mean negative log-likelihood in nats per token.

Introduced in chapter 2, section "What do the heads of a trained model look at?". One function for the whole book:
the command line, the trainer, the chapters and the benchmarks all report this number.

A 1-D token stream is cut into consecutive windows of ``block_size`` inputs, ``ids[s : s + T + 1]``
for ``s = 0, T, 2T, ...``, so that every token but the first is predicted exactly once, from the
earlier tokens of its window. (A sliding window with stride 1 would give each token the full
context, at ``T`` times the cost.) A 2-D tensor is read as independent sequences, one per row,
each predicted from its own start.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from aigc_book.cpu_threads import check_cpu_load

__all__ = ["lm_loss"]


@torch.no_grad()
def lm_loss(model: nn.Module, tokens: torch.Tensor, block_size: int | None = None, *, batch_size: int = 64,
            max_tokens: int | None = None) -> float:
    """Mean cross-entropy (nats per predicted token) of ``model(idx) -> (logits, ...)`` on ``tokens``.

    Args:
        tokens: a 1-D stream (cut into windows of ``block_size``), or ``(N, L)`` whole sequences.
        block_size: the window length for a stream (default: ``model.config.block_size``).
        batch_size: windows or rows per forward pass.
        max_tokens: evaluate only the first ``max_tokens`` tokens of a stream (a quick estimate).

    The model runs in eval mode (no dropout) on its own device; its mode is restored afterwards.
    """
    device = next(model.parameters()).device
    if tokens.dim() == 1:
        block = block_size or model.config.block_size
        stream = tokens if max_tokens is None else tokens[:max_tokens]
        if len(stream) < 2:
            raise ValueError(f"need at least 2 tokens to predict one, got {len(stream)}")
        starts = range(0, len(stream) - 1, block)
        full = [s for s in starts if s + block + 1 <= len(stream)]
        groups = [torch.stack([stream[s:s + block + 1] for s in full[i:i + batch_size]])
                  for i in range(0, len(full), batch_size)]
        if len(full) < len(starts):  # the shorter last window
            groups.append(stream[starts[-1]:][None])
    elif tokens.dim() == 2:
        if tokens.size(1) < 2:
            raise ValueError(f"sequences need at least 2 tokens, got shape {tuple(tokens.shape)}")
        groups = list(tokens.split(batch_size))
    else:
        raise ValueError(f"tokens must be a 1-D stream or (N, L) sequences, got shape {tuple(tokens.shape)}")
    was_training = model.training
    model.eval()
    total, count = torch.zeros((), dtype=torch.float64, device=device), 0
    try:
        for w in groups:
            check_cpu_load()  # no optimiser step here: follow the machine's load from the loop
            w = w.to(device)
            logits, _ = model(w[:, :-1])
            logits = logits if logits.dtype == torch.float64 else logits.float()  # bf16 logits: sum in fp32
            total += F.cross_entropy(logits.flatten(0, 1), w[:, 1:].flatten(), reduction="sum").double()
            count += w[:, 1:].numel()
    finally:
        model.train(was_training)
    return total.item() / count
