"""Scaled dot-product attention, masks and multi-head attention.

Introduced in chapter 2, section "Attention as matrices". Every formula here appears in the chapter,
where it is derived, drawn and checked against a reference. Positions live in
:mod:`aigc_book.layers.positions`, the cache in :mod:`aigc_book.layers.kv_cache`.

Conventions used throughout the package:

* Tensors are batch-first: ``q, k, v`` have shape ``(..., T, head_dim)``, usually
  ``(B, n_head, T, head_dim)``; a hidden state has shape ``(B, T, C)``.
* A **boolean mask is True where a query may attend to a key** (the convention of
  :func:`torch.nn.functional.scaled_dot_product_attention`; note that ``nn.MultiheadAttention``
  uses the opposite one). A floating-point mask is *added* to the scores (``-inf`` hides a key).
  A mask must broadcast to ``(..., T_q, T_k)``.
* ``is_causal=True`` hides the future. When ``T_q < T_k`` (new queries after a KV cache) the
  causal mask is aligned to the bottom right: query ``i`` sits at position ``T_k - T_q + i``.
  (PyTorch's own ``is_causal`` aligns to the top left; :func:`attention_fused` builds the right
  mask itself in that case, so the two functions here always agree.)
* A query row whose keys are all masked returns zeros (not NaN), as PyTorch's fused kernel does.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from aigc_book.layers.checks import check_heads
from aigc_book.layers.kv_cache import KVCache
from aigc_book.layers.positions import apply_rope

__all__ = [
    "attend_heads",
    "attention_reference",
    "attention_fused",
    "causal_mask",
    "check_attention_mask",
    "combine_masks",
    "MultiHeadAttention",
]


# ---------------------------------------------------------------------------------------------
# Masks
# ---------------------------------------------------------------------------------------------


def causal_mask(t_q: int, t_k: int | None = None, device: torch.device | str | None = None) -> torch.Tensor:
    """Boolean ``(t_q, t_k)`` mask, True where query ``i`` may see key ``j`` (``j <= i + t_k - t_q``).

    >>> causal_mask(3).int()
    tensor([[1, 0, 0],
            [1, 1, 0],
            [1, 1, 1]], dtype=torch.int32)
    """
    t_k = t_q if t_k is None else t_k
    return torch.ones(t_q, t_k, dtype=torch.bool, device=device).tril(diagonal=t_k - t_q)


def check_attention_mask(mask: torch.Tensor, batch_shape: tuple[int, ...], t_q: int, t_k: int) -> None:
    """Raise a ``ValueError`` naming the expected shape unless ``mask`` broadcasts to ``(*batch_shape, t_q, t_k)``."""
    target = (*batch_shape, t_q, t_k)
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"attention mask must be a torch.Tensor, got {type(mask).__name__}")
    if mask.dtype != torch.bool and not mask.is_floating_point():
        raise TypeError(
            f"attention mask must be boolean (True = may attend) or floating point (added to the "
            f"scores), got dtype {mask.dtype}"
        )
    ok = mask.dim() <= len(target)
    if ok:
        try:
            ok = tuple(torch.broadcast_shapes(mask.shape, target)) == target
        except RuntimeError:
            ok = False
    if not ok:
        raise ValueError(
            f"attention mask of shape {tuple(mask.shape)} does not broadcast to the attention "
            f"scores' shape {target} = (*batch, T_q, T_k); expected e.g. ({t_q}, {t_k}), "
            f"(B, 1, {t_q}, {t_k}) or (B, n_head, {t_q}, {t_k})"
        )


def combine_masks(mask: torch.Tensor | None, is_causal: bool, t_q: int, t_k: int, device) -> torch.Tensor | None:
    """Merge an optional boolean/float mask with the causal mask into a single mask (or None)."""
    if not is_causal:
        return mask
    causal = causal_mask(t_q, t_k, device=device)
    if mask is None:
        return causal
    if mask.dtype == torch.bool:
        return mask & causal
    return mask.masked_fill(~causal, float("-inf"))


# ---------------------------------------------------------------------------------------------
# Scaled dot-product attention, written out and fused
# ---------------------------------------------------------------------------------------------


def _check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> tuple[int, int]:
    """Check ``q, k, v`` (and ``mask``) fit together; return ``(T_q, T_k)``.

    Shared by both attention functions so that they refuse the same input with the same message
    (left alone, the fused kernel would accept keys and values of different lengths).
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"attention {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() < 2:
            raise ValueError(f"attention {name} must have shape (..., T, dim), got {tuple(t.shape)}")
    problem = None
    if q.size(-1) != k.size(-1):
        problem = f"queries and keys differ in their last dimension d_k ({q.size(-1)} != {k.size(-1)})"
    elif k.size(-2) != v.size(-2):
        problem = f"keys and values differ in length T_k ({k.size(-2)} != {v.size(-2)})"
    if problem:
        raise ValueError(
            f"attention expects q (..., T_q, d_k), k (..., T_k, d_k) and v (..., T_k, d_v); got q "
            f"{tuple(q.shape)}, k {tuple(k.shape)} and v {tuple(v.shape)}: {problem}"
        )
    t_q, t_k = q.size(-2), k.size(-2)
    if mask is not None:
        check_attention_mask(mask, tuple(q.shape[:-2]), t_q, t_k)
    return t_q, t_k


def attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    is_causal: bool = False,
    dropout_p: float = 0.0,
    scale: float | None = None,
    return_weights: bool = False,
):
    r"""Attention written out: :math:`\mathrm{softmax}(QK^\top/\sqrt{d_k} + M)\,V`.

    The teaching path (chapter 2, section "Attention as matrices"). It materialises the full
    ``(T_q, T_k)`` score matrix, which is what makes it slow and memory-hungry for long sequences.

    Args:
        q, k, v: ``(..., T_q, d_k)``, ``(..., T_k, d_k)``, ``(..., T_k, d_v)``.
        mask: boolean (True = may attend) or additive float mask broadcastable to ``(..., T_q, T_k)``.
        is_causal: hide future keys (bottom-right aligned when ``T_q != T_k``); combined with ``mask``.
        dropout_p: dropout on the attention weights (applied whenever > 0, as in PyTorch's SDPA:
            pass ``0.0`` in evaluation).
        scale: defaults to :math:`1/\sqrt{d_k}` (Vaswani et al. 2017, §3.2.1).
        return_weights: also return the ``(..., T_q, T_k)`` attention weights (after dropout).
    """
    t_q, t_k = _check_inputs(q, k, v, mask)
    scale = 1.0 / math.sqrt(q.size(-1)) if scale is None else scale
    scores = (q @ k.transpose(-2, -1)) * scale  # (..., T_q, T_k)
    mask = combine_masks(mask, is_causal, t_q, t_k, q.device)
    if mask is not None and mask.dtype == torch.bool:
        scores = scores.masked_fill(~mask, float("-inf"))
    elif mask is not None:
        scores = scores + mask
    hidden = None
    if mask is not None:  # any mask, the causal one too (T_q > T_k), can hide every key of a row
        hidden = torch.isneginf(scores).all(dim=-1, keepdim=True)  # (..., T_q, 1)
        scores = scores.masked_fill(hidden, 0.0)  # softmax of an all -inf row is NaN, and so is its gradient
    weights = torch.softmax(scores, dim=-1)  # (..., T_q, T_k), each row sums to 1
    if hidden is not None:  # rows with every key hidden: 0 instead of NaN, as the fused kernel does
        weights = weights.masked_fill(hidden, 0.0)
    if dropout_p > 0.0:
        weights = F.dropout(weights, p=dropout_p)
    out = weights @ v  # (..., T_q, d_v)
    return (out, weights) if return_weights else out


def attention_fused(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    is_causal: bool = False,
    dropout_p: float = 0.0,
    scale: float | None = None,
) -> torch.Tensor:
    """The same attention through :func:`torch.nn.functional.scaled_dot_product_attention`.

    On a GPU this dispatches to FlashAttention-style kernels (Dao et al. 2022) that never store
    the score matrix; on a CPU to a tiled C++ kernel. Same arguments and mask conventions as
    :func:`attention_reference` (no ``return_weights``: the fused kernel never forms them).
    """
    t_q, t_k = _check_inputs(q, k, v, mask)
    if is_causal and t_q == 1:
        is_causal = False  # a single newest query may see every key
    if is_causal and (mask is not None or t_q != t_k):
        mask, is_causal = combine_masks(mask, True, t_q, t_k, q.device), False
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale
    )


# ---------------------------------------------------------------------------------------------
# KV cache and multi-head attention
# ---------------------------------------------------------------------------------------------


def attend_heads(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, is_causal: bool,
                 dropout_p: float, *, fused: bool, need_weights: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Attention of every head, ``(B, nh, T, hs)`` queries, with the heads put side by side again.

    Returns ``(y, weights)``: ``y`` is ``(B, T, nh * hs)``, ``weights`` the ``(B, nh, T, S)`` attention
    weights when ``need_weights`` (which takes the written-out path) and None otherwise. The fused
    kernel is used when ``fused`` and the weights are not wanted. Self- and cross-attention share it.
    """
    weights = None
    if need_weights:
        y, weights = attention_reference(q, k, v, mask, is_causal, dropout_p, return_weights=True)
    elif fused:
        y = attention_fused(q, k, v, mask, is_causal, dropout_p)
    else:
        y = attention_reference(q, k, v, mask, is_causal, dropout_p)
    B, nh, T, hs = y.shape
    return y.transpose(1, 2).reshape(B, T, nh * hs), weights  # (B, T, C): heads side by side again


class MultiHeadAttention(nn.Module):
    """Multi-head self-attention with one fused ``q, k, v`` projection (GPT-2 layout).

    Heads are a reshape, not a loop: ``(B, T, C) -> (B, n_head, T, head_dim)``. Parameter names
    (``c_attn``, ``c_proj``) follow GPT-2 so weights convert to Hugging Face directly.

    Args:
        n_embd: model width ``C``; must be divisible by ``n_head``.
        n_head: number of heads.
        dropout: dropout on attention weights and on the output (training only).
        bias: whether the projections have biases.
        causal: hide the future by default (decoder); ``False`` for a bidirectional encoder.
        fused: use :func:`attention_fused` (default) or the written-out :func:`attention_reference`.
    """

    def __init__(self, n_embd: int, n_head: int, dropout: float = 0.0, bias: bool = True,
                 causal: bool = True, fused: bool = True):
        super().__init__()
        check_heads(n_embd, n_head)
        self.n_embd, self.n_head, self.head_dim = n_embd, n_head, n_embd // n_head
        self.dropout, self.causal, self.fused = dropout, causal, fused
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=bias)
        self.c_proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(
        self,
        x: torch.Tensor,
        *,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool | None = None,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        kv_cache: KVCache | None = None,
        layer_idx: int = 0,
        prefix_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
        need_weights: bool = False,
    ):
        """Attend over ``x`` of shape ``(B, T, C)``; returns ``(B, T, C)``, or ``(output, weights)``
        with ``need_weights``.

        * ``attn_mask``: boolean (True = may attend) or additive float, broadcastable to
          ``(B, n_head, T_q, T_k)`` with ``T_k`` the cached plus new positions.
        * ``is_causal``: hide the future as well (bottom-right aligned). Default: the module's
          ``causal`` when no ``attn_mask`` is given, else False (a mask then *replaces* causality).
        * ``rope``: the ``(cos, sin)`` pair for these positions (rotary encoding).
        * ``kv_cache``: store the new keys and values in layer ``layer_idx`` of the cache and attend
          to every cached position.
        * ``prefix_kv``: keys and values ``(B or 1, n_head, P, head_dim)`` put in front of the
          keys and values (prefix tuning); every query sees them, they are not cached or rotated.
        * ``need_weights``: run the written-out attention and also return its
          ``(B, n_head, T_q, T_k)`` weights.
        """
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        if rope is not None:
            cos, sin = rope
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if kv_cache is not None:
            k, v = kv_cache.update(layer_idx, k, v)  # (B, nh, T_past + T, hs)
        if is_causal is None:
            is_causal = self.causal and attn_mask is None
        if prefix_kv is not None:
            pk, pv = prefix_kv
            P = pk.size(2)
            k = torch.cat([pk.expand(B, -1, -1, -1).to(k.dtype), k], dim=2)  # (B, nh, P + T_k, hs)
            v = torch.cat([pv.expand(B, -1, -1, -1).to(v.dtype), v], dim=2)
            if attn_mask is not None:  # the prefix columns are visible to every query
                visible = True if attn_mask.dtype == torch.bool else 0.0
                attn_mask = F.pad(attn_mask, (P, 0), value=visible)
            # a causal mask is aligned bottom-right, so it already shows the P prefix keys to all
        dropout_p = self.dropout if self.training else 0.0
        y, weights = attend_heads(q, k, v, attn_mask, is_causal, dropout_p, fused=self.fused, need_weights=need_weights)
        y = self.resid_dropout(self.c_proj(y))
        return (y, weights) if need_weights else y
