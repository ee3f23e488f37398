"""Cross-attention (queries from one sequence, keys and values from another) and the decoder layer built on it.

Introduced in chapter 7, section "Cross-attention"; checked against PyTorch's own layers in
chapter 7, section "The encoder–decoder, checked against PyTorch".

Self-attention lets a sequence look at itself. **Cross-attention** lets the decoder's states ``x``
``(B, T, C)`` look at a second sequence, the encoder's output (its *memory*, ``(B, S, C)``):

.. math:: \\mathrm{CrossAttn}(x, m) = \\mathrm{softmax}\\big((xW_Q)(mW_K)^\\top/\\sqrt{d_k}\\big)\\,(mW_V)\\,W_O

per head, as in "Attention Is All You Need" (Vaswani et al. 2017, arXiv:1706.03762, §3.2.3,
"encoder-decoder attention"). The formula is the one of :mod:`aigc_book.layers.attention`; only the
inputs of the projections change, so :class:`CrossAttention` calls :func:`attention_fused` (or the
written-out :func:`attention_reference` when the weights are asked for) rather than repeating it.
No causal mask: every decoder position may see every memory position. A memory padding mask
``(B, S)``, **True for real positions**, hides padded ones (``nn.MultiheadAttention``'s
``key_padding_mask`` is the opposite: True = ignore).

:class:`DecoderBlock` is the 2017 decoder layer: causal self-attention, cross-attention, feed-forward,
each in a residual connection with a LayerNorm, in the pre-LN order of GPT-2 (``norm_first=True``) or
the post-LN order of the original paper (``norm_first=False``); with the same weights it equals
``nn.TransformerDecoderLayer`` (tested). Parameter names follow Hugging Face GPT-2's cross-attention
(``q_attn`` for queries, ``c_attn`` for the fused keys and values, ``c_proj`` for the output).
"""

from __future__ import annotations

import torch
from torch import nn

from aigc_book.layers.attention import MultiHeadAttention, attend_heads
from aigc_book.layers.block import FeedForward, LayerNorm
from aigc_book.layers.checks import check_heads

__all__ = ["CrossAttention", "DecoderBlock", "memory_key_mask"]


def memory_key_mask(memory_mask: torch.Tensor | None, batch: int, length: int) -> torch.Tensor | None:
    """A ``(B, S)`` memory padding mask (True/1 = real) as a ``(B, 1, 1, S)`` boolean attention mask.

    Raises ``ValueError`` (wrong shape) or ``TypeError`` (floating point: an additive mask is not a
    padding mask) with the expected form in the message.
    """
    if memory_mask is None:
        return None
    if not isinstance(memory_mask, torch.Tensor):
        raise TypeError(f"memory_mask must be a torch.Tensor of shape (B, S), got {type(memory_mask).__name__}")
    if memory_mask.is_floating_point() or memory_mask.is_complex():
        raise TypeError(f"memory_mask must be boolean or 0/1 integers (True = real position), got {memory_mask.dtype}")
    if tuple(memory_mask.shape) != (batch, length):
        raise ValueError(
            f"memory_mask must have shape (B, S) = {(batch, length)} (True for real memory positions), "
            f"got {tuple(memory_mask.shape)}"
        )
    return memory_mask.bool()[:, None, None, :]  # (B, 1, 1, S): broadcast over heads and queries


class CrossAttention(nn.Module):
    """Multi-head attention whose queries come from ``x`` and whose keys and values come from ``memory``.

    Args:
        n_embd: width ``C`` of both the decoder states and the memory; divisible by ``n_head``.
        n_head: number of heads.
        dropout: on the attention weights and the output (training only).
        bias: whether the projections have biases.
        fused: use :func:`attention_fused` (default) or the written-out :func:`attention_reference`.
    """

    def __init__(self, n_embd: int, n_head: int, dropout: float = 0.0, bias: bool = True, fused: bool = True):
        super().__init__()
        check_heads(n_embd, n_head)
        self.n_embd, self.n_head, self.head_dim = n_embd, n_head, n_embd // n_head
        self.dropout, self.fused = dropout, fused
        self.q_attn = nn.Linear(n_embd, n_embd, bias=bias)  # queries, from the decoder
        self.c_attn = nn.Linear(n_embd, 2 * n_embd, bias=bias)  # keys and values, from the memory
        self.c_proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.resid_dropout = nn.Dropout(dropout)

    def _check(self, x: torch.Tensor, memory: torch.Tensor) -> None:
        for name, t, what in (("x", x, "T"), ("memory", memory, "S")):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"cross-attention {name} must be a torch.Tensor, got {type(t).__name__}")
            if t.dim() != 3 or t.size(-1) != self.n_embd:
                raise ValueError(
                    f"cross-attention {name} must have shape (B, {what}, n_embd={self.n_embd}), got {tuple(t.shape)}"
                )
        if x.size(0) != memory.size(0):
            raise ValueError(f"x and memory differ in batch size ({x.size(0)} != {memory.size(0)})")
        if memory.size(1) == 0:
            raise ValueError("memory is empty: expected at least one position to attend to")

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        B, L, _ = t.shape
        return t.view(B, L, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, L, hs)

    def forward(
        self,
        x: torch.Tensor,
        memory: torch.Tensor,
        memory_mask: torch.Tensor | None = None,
        *,
        need_weights: bool = False,
    ):
        """``x`` ``(B, T, C)`` attends over ``memory`` ``(B, S, C)``; returns ``(B, T, C)``, or
        ``(output, weights)`` with ``need_weights`` (weights ``(B, n_head, T, S)``, written-out path).

        ``memory_mask``: ``(B, S)``, True (or 1) for real memory positions, False for padding.
        """
        self._check(x, memory)
        B, T, C = x.shape
        q = self._heads(self.q_attn(x))  # (B, nh, T, hs)
        k, v = self.c_attn(memory).split(self.n_embd, dim=2)
        k, v = self._heads(k), self._heads(v)  # (B, nh, S, hs) each
        mask = memory_key_mask(memory_mask, B, memory.size(1))
        dropout_p = self.dropout if self.training else 0.0
        y, weights = attend_heads(q, k, v, mask, False, dropout_p, fused=self.fused, need_weights=need_weights)
        y = self.resid_dropout(self.c_proj(y))
        return (y, weights) if need_weights else y


class DecoderBlock(nn.Module):
    """The 2017 Transformer decoder layer: causal self-attention, cross-attention, feed-forward.

    * pre-LN (``norm_first=True``, GPT-2 style)::

        x = x + self_attn(ln_1(x)); x = x + cross_attn(ln_2(x), memory); x = x + mlp(ln_3(x))

    * post-LN (``norm_first=False``, Vaswani et al. 2017, arXiv:1706.03762, §3.1)::

        x = ln_1(x + self_attn(x)); x = ln_2(x + cross_attn(x, memory)); x = ln_3(x + mlp(x))

    The memory is not normalised here (an encoder ends in its own LayerNorm), as in
    ``nn.TransformerDecoderLayer``. The feed-forward is :class:`~aigc_book.layers.block.FeedForward`
    (4C hidden units, tanh-approximated GELU).
    """

    def __init__(self, n_embd: int, n_head: int, dropout: float = 0.0, bias: bool = True,
                 norm_first: bool = True, fused: bool = True):
        super().__init__()
        self.norm_first = norm_first
        self.ln_1 = LayerNorm(n_embd, bias=bias)
        self.attn = MultiHeadAttention(n_embd, n_head, dropout=dropout, bias=bias, causal=True, fused=fused)
        self.ln_2 = LayerNorm(n_embd, bias=bias)
        self.cross_attn = CrossAttention(n_embd, n_head, dropout=dropout, bias=bias, fused=fused)
        self.ln_3 = LayerNorm(n_embd, bias=bias)
        self.mlp = FeedForward(n_embd, dropout=dropout, bias=bias)

    def forward(
        self,
        x: torch.Tensor,
        memory: torch.Tensor,
        memory_mask: torch.Tensor | None = None,
        *,
        need_weights: bool = False,
        **attn_kwargs,
    ):
        """``x`` ``(B, T, C)`` and ``memory`` ``(B, S, C)`` -> ``(B, T, C)``; with ``need_weights`` also
        the cross-attention weights ``(B, n_head, T, S)``.

        ``memory_mask``: ``(B, S)``, True for real memory positions. Other keyword arguments go to the
        self-attention (:meth:`MultiHeadAttention.forward`: ``attn_mask``, ``kv_cache``, ...).
        """
        if self.norm_first:
            x = x + self.attn(self.ln_1(x), **attn_kwargs)
            a = self.cross_attn(self.ln_2(x), memory, memory_mask, need_weights=need_weights)
            a, weights = a if need_weights else (a, None)
            x = x + a
            x = x + self.mlp(self.ln_3(x))
        else:
            x = self.ln_1(x + self.attn(x, **attn_kwargs))
            a = self.cross_attn(x, memory, memory_mask, need_weights=need_weights)
            a, weights = a if need_weights else (a, None)
            x = self.ln_2(x + a)
            x = self.ln_3(x + self.mlp(x))
        return (x, weights) if need_weights else x
