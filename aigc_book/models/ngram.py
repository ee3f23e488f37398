"""An n-gram language model: the baseline that counts instead of learning.

Introduced in chapter 3, section "A baseline that counts". An order-n model predicts ``x_t`` from
the previous ``n - 1`` tokens only, with interpolated Witten–Bell smoothing (Witten & Bell 1991;
Chen & Goodman 1999, §2.5):

.. math::

    P_k(w \\mid h) = \\frac{c(h, w) + N_{1+}(h\\,\\bullet)\\, P_{k-1}(w \\mid h')}{c(h) + N_{1+}(h\\,\\bullet)}

where ``h'`` drops the oldest token of ``h``, ``N_{1+}(h •)`` is the number of distinct tokens seen
after ``h``, and ``P_0`` is uniform. Contexts never cross from one sequence into the next; the
positions before the start are a padding symbol. Counting is vectorised with NumPy (contexts are
encoded as integers), so millions of tokens take a second.
"""

from __future__ import annotations

import numpy as np
import torch


class NGramLM:
    """Order-``n`` Witten–Bell n-gram model over ids ``0..vocab_size-1``.

    >>> lm = NGramLM(2, vocab_size=3).fit([[0, 1, 2, 1, 2]])
    >>> # p(2 | 1) = (2 + 1 * P_1(2)) / (2 + 1), P_1(2) = (2 + 2/3) / 6
    >>> round(float(np.exp(lm.log_probs([[0, 1, 2]])[0, 1])), 3)
    0.815
    """

    def __init__(self, order: int, vocab_size: int) -> None:
        if order < 1:
            raise ValueError(f"order must be >= 1, got {order}")
        if vocab_size < 1:
            raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
        if (vocab_size + 1) ** (order - 1) * vocab_size >= 2**62:
            raise ValueError(f"order {order} is too large for vocabulary {vocab_size} (integer codes overflow)")
        self.order, self.vocab_size = order, vocab_size
        self.tables: list[dict[str, np.ndarray]] | None = None

    def _codes(self, seqs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Context codes (k previous tokens, padded) and target tokens for every position t >= 1."""
        N, L = seqs.shape
        pad = self.vocab_size
        padded = np.concatenate([np.full((N, k), pad, dtype=np.int64), seqs], axis=1)  # (N, k + L)
        ctx = np.zeros((N, L - 1), dtype=np.int64)
        for i in range(1, k + 1):  # token i steps back has weight (V+1)^(i-1)
            ctx += padded[:, k + 1 - i : k + L - i] * (pad + 1) ** (i - 1)
        return ctx, seqs[:, 1:]

    @staticmethod
    def _as_array(seqs) -> np.ndarray:
        if isinstance(seqs, torch.Tensor):
            seqs = seqs.cpu().numpy()
        arr = np.asarray(seqs, dtype=np.int64)
        if arr.ndim != 2 or arr.shape[1] < 2:
            raise ValueError(f"expected a 2-D array of sequences of length >= 2, got shape {arr.shape}")
        return arr

    def fit(self, seqs) -> NGramLM:
        """Count every order 1..n on ``seqs`` (``(N, L)``; the first token of a row is context only)."""
        arr = self._as_array(seqs)
        if arr.min() < 0 or arr.max() >= self.vocab_size:
            raise ValueError(f"token ids must be in [0, {self.vocab_size})")
        V = self.vocab_size
        self.tables = []
        for k in range(self.order):
            ctx, tgt = self._codes(arr, k)
            joint_keys, joint_counts = np.unique(ctx * V + tgt, return_counts=True)
            ctx_keys, ctx_counts = np.unique(ctx, return_counts=True)
            types_keys, types = np.unique(joint_keys // V, return_counts=True)  # N1+(h .)
            assert np.array_equal(types_keys, ctx_keys)
            self.tables.append(
                {
                    "joint_keys": joint_keys,
                    "joint_counts": joint_counts,
                    "ctx_keys": ctx_keys,
                    "ctx_counts": ctx_counts,
                    "types": types,
                }
            )
        return self

    @staticmethod
    def _lookup(keys: np.ndarray, values: np.ndarray, query: np.ndarray) -> np.ndarray:
        i = np.searchsorted(keys, query).clip(max=len(keys) - 1)
        return np.where(keys[i] == query, values[i], 0)

    def log_probs(self, seqs) -> np.ndarray:
        """``log P(x_t | previous n-1 tokens)`` for t >= 1, shape ``(N, L - 1)``, in nats."""
        if self.tables is None:
            raise RuntimeError("call fit() before log_probs()")
        arr = self._as_array(seqs)
        V = self.vocab_size
        p = np.full(arr[:, 1:].shape, 1.0 / V)
        for k, tab in enumerate(self.tables):
            ctx, tgt = self._codes(arr, k)
            c_hw = self._lookup(tab["joint_keys"], tab["joint_counts"], ctx * V + tgt)
            c_h = self._lookup(tab["ctx_keys"], tab["ctx_counts"], ctx)
            n1 = self._lookup(tab["ctx_keys"], tab["types"], ctx)
            seen = c_h > 0
            p = np.where(seen, (c_hw + n1 * p) / np.maximum(c_h + n1, 1), p)
        return np.log(p)

    def cross_entropy(self, seqs) -> float:
        """Mean negative log-likelihood, nats per predicted token."""
        return float(-self.log_probs(seqs).mean())
