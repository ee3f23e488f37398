"""A character bigram language model: counted, smoothed, sampled and scored.

Introduced in chapter 1, section "What is a language model?".

A bigram model predicts each character from the one before it only::

    p(x_1, ..., x_T) ≈ p(x_1) · Π_{t=2..T} p(x_t | x_{t-1})

Its parameters are a table of counts ``C[a, b]`` (how often character ``b`` follows ``a`` in the
training text). With add-k smoothing the conditional probability is::

    p(b | a) = (C[a, b] + k) / (Σ_b' C[a, b'] + k · V)

where ``V`` is the vocabulary size. ``k = 1`` is Laplace smoothing; ``k = 0`` is the maximum
likelihood estimate, which gives probability zero (and infinite cross-entropy) to any pair the
training text never showed.

The model is scored by its cross-entropy on held-out text, the mean negative log-probability of
each character given the previous one, in nats per character (natural log) or bits per character
(log base 2). Perplexity is ``exp`` of the cross-entropy in nats.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from aigc_book.checks import check_number, is_int
from aigc_book.text.char_tokenizer import CharTokenizer

__all__ = ["BigramLM", "count_bigrams"]


def _check_text(text: object, *, name: str = "text", min_len: int = 1) -> str:
    if not isinstance(text, str):
        raise TypeError(f"{name} must be a str, got {type(text).__name__}")
    if len(text) < min_len:
        raise ValueError(
            f"{name} must have at least {min_len} character(s), got {len(text)}"
            + (" (a bigram needs a previous and a next character)" if min_len >= 2 else "")
        )
    return text


def count_bigrams(ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Count table ``C[a, b]`` = number of positions t with ``ids[t-1] == a`` and ``ids[t] == b``.

    Returns an ``int64`` tensor of shape ``(vocab_size, vocab_size)`` whose entries sum to
    ``len(ids) - 1``.
    """
    if not isinstance(ids, torch.Tensor) or ids.dim() != 1 or ids.dtype != torch.int64:
        raise TypeError("ids must be a 1-D int64 tensor (use CharTokenizer.encode_tensor)")
    if not is_int(vocab_size) or vocab_size < 1:
        raise ValueError(f"vocab_size must be a positive int, got {vocab_size!r}")
    if ids.numel() and (ids.min() < 0 or ids.max() >= vocab_size):
        raise ValueError(f"ids must lie in [0, {vocab_size}), got range [{ids.min()}, {ids.max()}]")
    if ids.numel() < 2:
        return torch.zeros(vocab_size, vocab_size, dtype=torch.int64)
    flat = ids[:-1] * vocab_size + ids[1:]  # (T-1,) one index per (prev, next) pair
    return torch.bincount(flat, minlength=vocab_size * vocab_size).view(vocab_size, vocab_size)


@dataclass(frozen=True)
class BigramLM:
    """A character bigram model: a vocabulary, a count table and an add-k smoothing constant.

    Build it with :meth:`from_text`. Probabilities are computed in float64 from the counts.
    A previous character that never occurred in training (a row of zero counts) gets the
    uniform distribution when ``k = 0``; for ``k > 0`` the formula gives uniform by itself.
    """

    vocab: CharTokenizer
    counts: torch.Tensor  # (V, V) int64
    k: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.vocab, CharTokenizer):
            raise TypeError(f"vocab must be a CharTokenizer, got {type(self.vocab).__name__}")
        V = len(self.vocab)
        if not isinstance(self.counts, torch.Tensor) or self.counts.shape != (V, V):
            raise ValueError(f"counts must be a tensor of shape ({V}, {V})")
        if self.counts.dtype.is_floating_point or (self.counts < 0).any():
            raise ValueError("counts must be non-negative integers")
        object.__setattr__(self, "k", check_number("smoothing k", self.k, inclusive=True))

    @classmethod
    def from_text(cls, text: str, k: float = 1.0, vocab: CharTokenizer | None = None) -> BigramLM:
        """Count the bigrams of ``text``.

        ``vocab`` defaults to the characters of ``text``. Pass a larger one (e.g. built from
        training plus held-out text) when you will score text that has characters the training
        text lacks: smoothing then gives those characters a small, non-zero probability.
        """
        _check_text(text, min_len=2)
        k = check_number("smoothing k", k, inclusive=True)
        if vocab is None:
            vocab = CharTokenizer.train(text)
        ids = vocab.encode_tensor(text)
        return cls(vocab=vocab, counts=count_bigrams(ids, len(vocab)), k=k)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def probs(self) -> torch.Tensor:
        """``P[a, b] = p(b | a)``, shape ``(V, V)``, float64; every row sums to 1."""
        V = self.vocab_size
        c = self.counts.to(torch.float64) + self.k  # (V, V)
        row = c.sum(dim=1, keepdim=True)  # (V, 1)
        unseen = row.squeeze(1) == 0  # only possible when k == 0
        p = c / row.clamp_min(1.0)
        p[unseen] = 1.0 / V
        return p

    def log_probs(self) -> torch.Tensor:
        """``log p(b | a)`` in nats, shape ``(V, V)``, float64 (``-inf`` where p is 0)."""
        return self.probs().log()

    def cross_entropy(self, text: str, *, bits: bool = False) -> float:
        """Mean of ``-log p(x_t | x_{t-1})`` over the ``len(text) - 1`` pairs of ``text``.

        In nats per character, or bits per character with ``bits=True``. The first character
        is not scored: it has no previous character.
        """
        _check_text(text, min_len=2)
        ids = self.vocab.encode_tensor(text)
        nll = -self.log_probs()[ids[:-1], ids[1:]].mean().item()
        return nll / math.log(2) if bits else nll

    def perplexity(self, text: str) -> float:
        """``exp(cross-entropy in nats)``: the effective number of equally likely next characters."""
        return math.exp(self.cross_entropy(text))

    def sample(self, n_chars: int, generator: torch.Generator, start: str | None = None) -> str:
        """Draw ``n_chars`` characters, each from ``p(· | previous character)``.

        ``start`` is the first character (it counts towards ``n_chars``); if ``None``, the first
        character is drawn from the training text's character frequencies. The same seeded
        ``generator`` gives the same text.
        """
        if not is_int(n_chars) or n_chars < 0:
            raise ValueError(f"n_chars must be a non-negative int, got {n_chars!r}")
        if not isinstance(generator, torch.Generator):
            raise TypeError(
                f"generator must be a torch.Generator, got {type(generator).__name__} "
                "(make one with torch.Generator().manual_seed(0))"
            )
        if n_chars == 0:
            return ""
        P = self.probs()  # (V, V)
        if start is None:
            freq = self.counts.sum(dim=0).to(torch.float64) + self.k  # (V,) next-char counts
            if freq.sum() == 0:
                freq = torch.ones(self.vocab_size, dtype=torch.float64)
            cur = int(torch.multinomial(freq, 1, generator=generator))
        else:
            if not isinstance(start, str) or len(start) != 1:
                raise ValueError(f"start must be a single character, got {start!r}")
            cur = self.vocab.index(start)
        out = [cur]
        for _ in range(n_chars - 1):
            cur = int(torch.multinomial(P[cur], 1, generator=generator))
            out.append(cur)
        return self.vocab.decode(out)
