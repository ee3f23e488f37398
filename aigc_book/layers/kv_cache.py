"""The key/value cache that makes generation one token at a time cheap.

Introduced in chapter 2, section "Generating, and the KV cache". Beam search and batched rollouts
(chapters 4 and 5) reorder and copy it: :meth:`KVCache.reorder`, :meth:`KVCache.copy` and
:meth:`KVCache.crop` do that without touching the model.
"""

from __future__ import annotations

import torch

__all__ = ["KVCache"]


class KVCache:
    """Keys and values of every layer for the tokens seen so far.

    Storage is allocated once, ``(n_layer, B, n_head, max_len, head_dim)`` for keys and the same
    for values, so a step writes in place instead of concatenating. Memory:
    ``2 * n_layer * n_head * head_dim * max_len * B * bytes``.
    """

    def __init__(self, n_layer: int, batch: int, n_head: int, max_len: int, head_dim: int, device=None,
                 dtype=torch.float32):
        shape = (n_layer, batch, n_head, max_len, head_dim)
        self.k = torch.empty(shape, device=device, dtype=dtype)
        self.v = torch.empty(shape, device=device, dtype=dtype)
        self.max_len = max_len
        self.length = 0  # tokens already stored (the position of the next token)

    @property
    def batch_size(self) -> int:
        return self.k.size(1)

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

    def crop(self, length: int) -> None:
        """Forget every position from ``length`` on (e.g. draft tokens a verifier rejected)."""
        if not 0 <= length <= self.length:
            raise ValueError(f"can crop a cache of {self.length} positions to 0..{self.length}, not {length}")
        self.length = length

    def reorder(self, index: torch.Tensor) -> None:
        """Keep batch rows ``index`` (a ``(B_new,)`` long tensor), in that order: beam search's
        "which hypothesis did each beam come from", or duplicating one prompt for many rollouts."""
        index = index.to(self.k.device)
        self.k = self.k.index_select(1, index)
        self.v = self.v.index_select(1, index)

    def copy(self) -> KVCache:
        """An independent cache with the same contents (so one prefix can be continued two ways)."""
        other = KVCache.__new__(KVCache)
        other.k, other.v = self.k.clone(), self.v.clone()
        other.max_len, other.length = self.max_len, self.length
        return other
