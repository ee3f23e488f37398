"""Scaled dot-product attention, multi-head attention and positional encodings.

Introduced in chapter 2 ("Attention and the Transformer"). Every formula here appears in the chapter, where it is
derived, drawn and checked against a reference.

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

__all__ = [
    "attention_reference",
    "attention_fused",
    "causal_mask",
    "check_attention_mask",
    "combine_masks",
    "MultiHeadAttention",
    "KVCache",
    "sinusoidal_encoding",
    "LearnedPositionalEmbedding",
    "RotaryEmbedding",
    "apply_rope",
    "time_call",
    "attention_timings",
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
        is_causal: hide future keys (bottom-right aligned when ``T_q < T_k``); combined with ``mask``.
        dropout_p: dropout on the attention weights (applied whenever > 0, as in PyTorch's SDPA:
            pass ``0.0`` in evaluation).
        scale: defaults to :math:`1/\sqrt{d_k}` (Vaswani et al. 2017, §3.2.1).
        return_weights: also return the ``(..., T_q, T_k)`` attention weights (after dropout).
    """
    t_q, t_k = q.size(-2), k.size(-2)
    user_mask = mask is not None
    if user_mask:
        check_attention_mask(mask, tuple(q.shape[:-2]), t_q, t_k)
    scale = 1.0 / math.sqrt(q.size(-1)) if scale is None else scale
    scores = (q @ k.transpose(-2, -1)) * scale  # (..., T_q, T_k)
    mask = combine_masks(mask, is_causal, t_q, t_k, q.device)
    if mask is not None and mask.dtype == torch.bool:
        scores = scores.masked_fill(~mask, float("-inf"))
    elif mask is not None:
        scores = scores + mask
    weights = torch.softmax(scores, dim=-1)  # (..., T_q, T_k), each row sums to 1
    if user_mask:  # rows with every key hidden: 0 instead of NaN, as the fused kernel does
        weights = weights.masked_fill(torch.isneginf(scores).all(dim=-1, keepdim=True), 0.0)
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
    t_q, t_k = q.size(-2), k.size(-2)
    if mask is not None:
        check_attention_mask(mask, tuple(q.shape[:-2]), t_q, t_k)
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


class KVCache:
    """Keys and values of every layer for the tokens seen so far (chapter 2, "Generating, and the KV cache").

    Storage is allocated once, ``(n_layer, B, n_head, max_len, head_dim)`` for keys and the same
    for values, so a step writes in place instead of concatenating. Memory:
    ``2 * n_layer * n_head * head_dim * max_len * B * bytes`` (FACTS.md §E).
    """

    def __init__(self, n_layer, batch, n_head, max_len, head_dim, device=None, dtype=torch.float32):
        shape = (n_layer, batch, n_head, max_len, head_dim)
        self.k = torch.empty(shape, device=device, dtype=dtype)
        self.v = torch.empty(shape, device=device, dtype=dtype)
        self.max_len = max_len
        self.length = 0  # tokens already stored (the position of the next token)

    def update(self, layer: int, k_new: torch.Tensor, v_new: torch.Tensor):
        """Store ``(B, n_head, T, head_dim)`` new keys/values of ``layer``; return all keys/values so far."""
        start, end = self.length, self.length + k_new.size(2)
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; cannot store up to {end}")
        self.k[layer, :, :, start:end] = k_new
        self.v[layer, :, :, start:end] = v_new
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def advance(self, n: int) -> None:
        """Mark ``n`` more positions as stored (called once after all layers have run)."""
        self.length += n

    def reset(self) -> None:
        self.length = 0


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
        if n_embd % n_head != 0:
            raise ValueError(
                f"embedding size n_embd={n_embd} is not divisible by the number of heads "
                f"n_head={n_head}; choose n_embd as a multiple of n_head (e.g. {n_head * max(1, n_embd // n_head)})"
            )
        self.n_embd, self.n_head, self.head_dim = n_embd, n_head, n_embd // n_head
        self.dropout, self.causal, self.fused = dropout, causal, fused
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=bias)
        self.c_proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        kv_cache: KVCache | None = None,
        layer_idx: int = 0,
        attn_store: list | None = None,
    ) -> torch.Tensor:
        """Attend over ``x`` of shape ``(B, T, C)``.

        ``attn_mask`` (boolean, True = may attend, or additive float; broadcastable to
        ``(B, n_head, T_q, T_k)``) *replaces* the causal mask when given. ``rope`` is the
        ``(cos, sin)`` pair for these positions. With ``kv_cache`` the new keys and values are
        stored and the queries attend to every cached position. If ``attn_store`` is a list, the
        written-out path runs and the ``(B, n_head, T_q, T_k)`` weights are appended to it.
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
        is_causal = self.causal and attn_mask is None
        dropout_p = self.dropout if self.training else 0.0
        if attn_store is not None:
            y, w = attention_reference(q, k, v, attn_mask, is_causal, dropout_p, return_weights=True)
            attn_store.append(w.detach())
        elif self.fused:
            y = attention_fused(q, k, v, attn_mask, is_causal, dropout_p)
        else:
            y = attention_reference(q, k, v, attn_mask, is_causal, dropout_p)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, C): heads side by side again
        return self.resid_dropout(self.c_proj(y))


# ---------------------------------------------------------------------------------------------
# Positional encodings
# ---------------------------------------------------------------------------------------------


def sinusoidal_encoding(n_pos: int, dim: int, base: float = 10000.0, dtype=torch.float32, device=None) -> torch.Tensor:
    r"""Sinusoidal positional encoding of Vaswani et al. (2017, §3.5), shape ``(n_pos, dim)``.

    :math:`PE_{p,2i} = \sin(p / \text{base}^{2i/d})`, :math:`PE_{p,2i+1} = \cos(p / \text{base}^{2i/d})`.
    The dot product :math:`PE_p \cdot PE_{p+\Delta}` depends only on :math:`\Delta` (chapter 2,
    "Position: what attention does not know").
    """
    if dim % 2 != 0:
        raise ValueError(f"sinusoidal encoding needs an even dimension, got dim={dim}")
    pos = torch.arange(n_pos, dtype=torch.float64, device=device)[:, None]  # (P, 1)
    inv_freq = base ** (-torch.arange(0, dim, 2, dtype=torch.float64, device=device) / dim)  # (d/2,)
    angles = pos * inv_freq  # (P, d/2)
    pe = torch.empty(n_pos, dim, dtype=torch.float64, device=device)
    pe[:, 0::2] = torch.sin(angles)
    pe[:, 1::2] = torch.cos(angles)
    return pe.to(dtype)


class LearnedPositionalEmbedding(nn.Embedding):
    """One trained vector per position (GPT-2's ``wpe``): ``forward(positions) -> (T, C)``."""

    def __init__(self, block_size: int, n_embd: int):
        super().__init__(block_size, n_embd)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    r"""Rotate ``x`` (``(..., T, d)``) by position-dependent angles (RoPE, Su et al. 2021).

    Dimension ``j`` is paired with ``j + d/2`` (the "rotate half" layout of GPT-NeoX and LLaMA;
    the paper pairs neighbours ``2i, 2i+1`` — the same rotation on permuted dimensions). Each
    pair at position ``m`` is rotated by the angle :math:`m\theta_i`, so
    :math:`\langle R_m q, R_n k\rangle = \langle q, R_{n-m} k\rangle` depends only on ``n - m``.
    """
    half = x.size(-1) // 2
    x1, x2 = x[..., :half], x[..., half:]
    rotated = torch.cat((-x2, x1), dim=-1)
    return x * cos + rotated * sin


class RotaryEmbedding(nn.Module):
    r"""Precomputed ``cos``/``sin`` tables for :func:`apply_rope`; :math:`\theta_i = \text{base}^{-2i/d}`.

    ``forward(start, length)`` returns the ``(cos, sin)`` pair for positions
    ``start .. start+length-1``, each ``(length, head_dim)``.
    """

    def __init__(self, head_dim: int, max_seq_len: int, base: float = 10000.0):
        super().__init__()
        if head_dim % 2 != 0:
            raise ValueError(f"rotary embedding needs an even head dimension, got head_dim={head_dim}")
        self.head_dim, self.max_seq_len, self.base = head_dim, max_seq_len, base
        cos, sin = self._table(0, max_seq_len, "cpu")
        # float32 buffers (MPS has no float64); float64 callers get a freshly computed table.
        self.register_buffer("cos", cos.float(), persistent=False)
        self.register_buffer("sin", sin.float(), persistent=False)

    def _table(self, start: int, length: int, device):
        inv_freq = self.base ** (-torch.arange(0, self.head_dim, 2, dtype=torch.float64, device=device) / self.head_dim)
        pos = torch.arange(start, start + length, dtype=torch.float64, device=device)
        angles = pos[:, None] * inv_freq  # (T, d/2)
        angles = torch.cat((angles, angles), dim=-1)  # (T, d): dims j and j + d/2 share an angle
        return angles.cos(), angles.sin()

    def forward(self, start: int, length: int, dtype=None):
        if start + length > self.max_seq_len:
            raise ValueError(
                f"positions up to {start + length - 1} requested, but the rotary table covers "
                f"0..{self.max_seq_len - 1}"
            )
        if dtype == torch.float64:
            return self._table(start, length, self.cos.device)
        cos, sin = self.cos[start:start + length], self.sin[start:start + length]
        if dtype is not None and cos.dtype != dtype:
            cos, sin = cos.to(dtype), sin.to(dtype)
        return cos, sin


# ---------------------------------------------------------------------------------------------
# Measuring the cost (chapter 2, "The cost of attention"; benchmarks/attention.py)
# ---------------------------------------------------------------------------------------------


def time_call(fn, *, repeats: int = 3, min_seconds: float = 0.1, device=None) -> float:
    """Best-of-``repeats`` wall time of ``fn()`` in seconds, after one warm-up call.

    Each repeat runs ``fn`` enough times to last at least ``min_seconds`` and reports the mean;
    the best repeat is returned because other processes only ever make a run slower. On CUDA the
    device is synchronised around each timing.
    """
    import time

    sync = torch.cuda.synchronize if device is not None and torch.device(device).type == "cuda" else (lambda: None)
    fn()
    sync()
    best = float("inf")
    for _ in range(repeats):
        n, start = 0, time.perf_counter()
        while True:
            fn()
            n += 1
            sync()
            elapsed = time.perf_counter() - start
            if elapsed >= min_seconds:
                break
        best = min(best, elapsed / n)
    return best


def attention_timings(seq_len: int, batch: int = 1, n_head: int = 8, head_dim: int = 64,
                      device=None, dtype=torch.float32, backward: bool = False, repeats: int = 3,
                      min_seconds: float = 0.1) -> dict[str, float]:
    """Seconds per causal self-attention call, written-out vs fused, at one sequence length.

    With ``backward=True`` each call is forward plus backward (gradients of q, k, v).
    """
    g = torch.Generator(device="cpu").manual_seed(0)
    shape = (batch, n_head, seq_len, head_dim)
    q, k, v = (torch.randn(shape, generator=g).to(device=device, dtype=dtype).requires_grad_(backward) for _ in range(3))
    out = {}
    for name, attend in (("written-out", attention_reference), ("fused", attention_fused)):
        if backward:
            def fn(attend=attend):
                attend(q, k, v, is_causal=True).sum().backward()
        else:
            def fn(attend=attend):
                with torch.no_grad():
                    attend(q, k, v, is_causal=True)
        out[name] = time_call(fn, repeats=repeats, min_seconds=min_seconds, device=device)
    return out
