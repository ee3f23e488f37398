"""Where each token is: learned, sinusoidal and rotary position encodings, behind one interface.

Introduced in chapter 2, section "Position: what attention does not know". Attention alone is
blind to order; every model in the book gets positions from one of the three modules here, built
by :func:`make_positions`:

==============================  ==================================================================
``"learned"`` (GPT-2, BERT)     one trained vector per position, added to the token embedding
``"sinusoidal"`` (Vaswani+17)   fixed sines and cosines, added to the token embedding
``"rope"`` (Su et al. 2021)     nothing added; queries and keys are rotated inside attention
==============================  ==================================================================

Each takes explicit ``position_ids`` — ``(T,)`` shared by the batch, or ``(B, T)`` per row — so
a permutation LM can give two streams the same positions and a left-padded batch can start each
row at position 0. :meth:`Positions.add` puts positions into the embeddings; :meth:`Positions.rotary`
returns the ``(cos, sin)`` pair that attention applies (``None`` unless rotary).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = [
    "POS_ENCODINGS",
    "sinusoidal_encoding",
    "apply_rope",
    "RotaryEmbedding",
    "Positions",
    "LearnedPositions",
    "SinusoidalPositions",
    "RotaryPositions",
    "make_positions",
]

POS_ENCODINGS = ("learned", "sinusoidal", "rope")


def sinusoidal_encoding(n_pos: int, dim: int, base: float = 10000.0, dtype=torch.float32, device=None) -> torch.Tensor:
    r"""Sinusoidal positional encoding of Vaswani et al. (2017, §3.5), shape ``(n_pos, dim)``.

    :math:`PE_{p,2i} = \sin(p / \text{base}^{2i/d})`, :math:`PE_{p,2i+1} = \cos(p / \text{base}^{2i/d})`.
    The dot product :math:`PE_p \cdot PE_{p+\Delta}` depends only on :math:`\Delta`.
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
    ``start .. start+length-1``, each ``(length, head_dim)``; :meth:`at` takes any position ids.
    """

    def __init__(self, head_dim: int, max_seq_len: int, base: float = 10000.0):
        super().__init__()
        if head_dim % 2 != 0:
            raise ValueError(f"rotary embedding needs an even head dimension, got head_dim={head_dim}")
        self.head_dim, self.max_seq_len, self.base = head_dim, max_seq_len, base
        cos, sin = self._table(torch.arange(max_seq_len))
        # float32 buffers (MPS has no float64); float64 callers get a freshly computed table.
        self.register_buffer("cos", cos.float(), persistent=False)
        self.register_buffer("sin", sin.float(), persistent=False)

    def _table(self, positions: torch.Tensor):
        inv_freq = self.base ** (
            -torch.arange(0, self.head_dim, 2, dtype=torch.float64, device=positions.device) / self.head_dim
        )
        angles = positions.to(torch.float64)[..., None] * inv_freq  # (..., d/2)
        angles = torch.cat((angles, angles), dim=-1)  # (..., d): dims j and j + d/2 share an angle
        return angles.cos(), angles.sin()

    def at(self, position_ids: torch.Tensor, dtype=None):
        """``(cos, sin)`` for any integer ``position_ids``, each of shape ``position_ids.shape + (head_dim,)``."""
        if dtype == torch.float64:
            return self._table(position_ids.to(self.cos.device))
        cos, sin = self.cos[position_ids], self.sin[position_ids]
        if dtype is not None and cos.dtype != dtype:
            cos, sin = cos.to(dtype), sin.to(dtype)
        return cos, sin

    def forward(self, start: int, length: int, dtype=None):
        if start + length > self.max_seq_len:
            raise ValueError(
                f"positions up to {start + length - 1} requested, but the rotary table covers "
                f"0..{self.max_seq_len - 1}"
            )
        return self.at(torch.arange(start, start + length, device=self.cos.device), dtype)


class Positions(nn.Module):
    """The interface every position encoding implements (identity by default)."""

    def add(self, x: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """Embeddings ``(B, T, C)`` with position information added (``position_ids``: ``(T,)`` or ``(B, T)``)."""
        return x

    def rotary(self, position_ids: torch.Tensor, dtype=None) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The ``(cos, sin)`` pair attention rotates queries and keys by, or ``None``."""
        return None


class LearnedPositions(nn.Embedding, Positions):
    """One trained vector per position (GPT-2's ``wpe``), added to the token embedding."""

    def __init__(self, block_size: int, n_embd: int):
        nn.Embedding.__init__(self, block_size, n_embd)

    def add(self, x, position_ids):
        return x + self(position_ids)  # (T, C) or (B, T, C), broadcast over the batch


class SinusoidalPositions(Positions):
    """Fixed sinusoids (:func:`sinusoidal_encoding`), added to the token embedding; no parameters."""

    def __init__(self, block_size: int, n_embd: int):
        super().__init__()
        self.register_buffer("pe", sinusoidal_encoding(block_size, n_embd), persistent=False)

    def add(self, x, position_ids):
        return x + self.pe[position_ids].to(x.dtype)


class RotaryPositions(Positions):
    """Rotary positions: the embeddings are left alone and attention rotates queries and keys."""

    def __init__(self, block_size: int, head_dim: int):
        super().__init__()
        self.rope = RotaryEmbedding(head_dim, block_size)

    def rotary(self, position_ids, dtype=None):
        cos, sin = self.rope.at(position_ids, dtype)  # (T, hs) or (B, T, hs)
        if position_ids.dim() == 2:  # per-row positions: broadcast over the heads of (B, nh, T, hs)
            cos, sin = cos[:, None], sin[:, None]
        return cos, sin


def make_positions(kind: str, block_size: int, n_embd: int, n_head: int) -> Positions:
    """The position module named ``kind`` (one of :data:`POS_ENCODINGS`) for a model of this shape."""
    if kind == "learned":
        return LearnedPositions(block_size, n_embd)
    if kind == "sinusoidal":
        return SinusoidalPositions(block_size, n_embd)
    if kind == "rope":
        return RotaryPositions(block_size, n_embd // n_head)
    raise ValueError(f"pos_encoding must be one of {POS_ENCODINGS}, got {kind!r}")
