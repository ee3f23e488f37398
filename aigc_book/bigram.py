"""A character bigram language model: counted, smoothed, sampled and scored.

Introduced in chapter 1, section "A first language model".

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
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

__all__ = ["CharVocab", "BigramLM", "count_bigrams"]


def _check_text(text: object, *, name: str = "text", min_len: int = 1) -> str:
    if not isinstance(text, str):
        raise TypeError(f"{name} must be a str, got {type(text).__name__}")
    if len(text) < min_len:
        raise ValueError(
            f"{name} must have at least {min_len} character(s), got {len(text)}"
            + (" (a bigram needs a previous and a next character)" if min_len >= 2 else "")
        )
    return text


@dataclass(frozen=True)
class CharVocab:
    """A fixed, ordered set of characters with encode/decode between text and integer ids.

    Build it with :meth:`from_text`. Ids follow sorted character order, so the same set of
    characters always gives the same ids.
    """

    chars: tuple[str, ...]
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.chars, tuple):
            raise TypeError(f"chars must be a tuple of str, got {type(self.chars).__name__}")
        if len(self.chars) == 0:
            raise ValueError("a vocabulary needs at least one character")
        for c in self.chars:
            if not isinstance(c, str) or len(c) != 1:
                raise ValueError(f"every vocabulary entry must be a single character, got {c!r}")
        if len(set(self.chars)) != len(self.chars):
            raise ValueError("vocabulary characters must be unique")
        object.__setattr__(self, "_index", {c: i for i, c in enumerate(self.chars)})

    @classmethod
    def from_text(cls, text: str) -> CharVocab:
        """The sorted set of distinct characters in ``text``."""
        _check_text(text)
        return cls(tuple(sorted(set(text))))

    def __len__(self) -> int:
        return len(self.chars)

    def __contains__(self, char: object) -> bool:
        return char in self._index

    def index(self, char: str) -> int:
        """The id of one character; ``ValueError`` if it is not in the vocabulary."""
        try:
            return self._index[char]
        except KeyError:
            raise ValueError(f"character {char!r} is not in the vocabulary") from None

    def encode(self, text: str) -> torch.Tensor:
        """Text → 1-D ``int64`` tensor of ids. Unknown characters raise ``ValueError``."""
        _check_text(text, min_len=0)
        unknown = sorted(set(text) - self._index.keys())
        if unknown:
            shown = ", ".join(repr(c) for c in unknown[:10])
            more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
            raise ValueError(
                f"{len(unknown)} character(s) are not in the vocabulary: {shown}{more}. "
                "Build the vocabulary from all the text you will score "
                "(CharVocab.from_text(train + held_out)) and pass it to BigramLM.from_text."
            )
        return torch.tensor([self._index[c] for c in text], dtype=torch.int64)

    def decode(self, ids: Iterable[int] | torch.Tensor) -> str:
        """Ids → text."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        out = []
        for i in ids:
            if not 0 <= int(i) < len(self.chars):
                raise ValueError(f"id {i} is out of range for a vocabulary of {len(self.chars)}")
            out.append(self.chars[int(i)])
        return "".join(out)


def count_bigrams(ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Count table ``C[a, b]`` = number of positions t with ``ids[t-1] == a`` and ``ids[t] == b``.

    Returns an ``int64`` tensor of shape ``(vocab_size, vocab_size)`` whose entries sum to
    ``len(ids) - 1``.
    """
    if not isinstance(ids, torch.Tensor) or ids.dim() != 1 or ids.dtype != torch.int64:
        raise TypeError("ids must be a 1-D int64 tensor (use CharVocab.encode)")
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 1:
        raise ValueError(f"vocab_size must be a positive int, got {vocab_size!r}")
    if ids.numel() and (ids.min() < 0 or ids.max() >= vocab_size):
        raise ValueError(f"ids must lie in [0, {vocab_size}), got range [{ids.min()}, {ids.max()}]")
    if ids.numel() < 2:
        return torch.zeros(vocab_size, vocab_size, dtype=torch.int64)
    flat = ids[:-1] * vocab_size + ids[1:]  # (T-1,) one index per (prev, next) pair
    return torch.bincount(flat, minlength=vocab_size * vocab_size).view(vocab_size, vocab_size)


def _check_k(k: object) -> float:
    if isinstance(k, bool) or not isinstance(k, (int, float)):
        raise TypeError(f"smoothing k must be a number, got {type(k).__name__}")
    if not math.isfinite(k) or k < 0:
        raise ValueError(f"smoothing k must be finite and >= 0, got {k}")
    return float(k)


@dataclass(frozen=True)
class BigramLM:
    """A character bigram model: a vocabulary, a count table and an add-k smoothing constant.

    Build it with :meth:`from_text`. Probabilities are computed in float64 from the counts.
    A previous character that never occurred in training (a row of zero counts) gets the
    uniform distribution when ``k = 0``; for ``k > 0`` the formula gives uniform by itself.
    """

    vocab: CharVocab
    counts: torch.Tensor  # (V, V) int64
    k: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.vocab, CharVocab):
            raise TypeError(f"vocab must be a CharVocab, got {type(self.vocab).__name__}")
        V = len(self.vocab)
        if not isinstance(self.counts, torch.Tensor) or self.counts.shape != (V, V):
            raise ValueError(f"counts must be a tensor of shape ({V}, {V})")
        if self.counts.dtype.is_floating_point or (self.counts < 0).any():
            raise ValueError("counts must be non-negative integers")
        object.__setattr__(self, "k", _check_k(self.k))

    @classmethod
    def from_text(cls, text: str, k: float = 1.0, vocab: CharVocab | None = None) -> BigramLM:
        """Count the bigrams of ``text``.

        ``vocab`` defaults to the characters of ``text``. Pass a larger one (e.g. built from
        training plus held-out text) when you will score text that has characters the training
        text lacks: smoothing then gives those characters a small, non-zero probability.
        """
        _check_text(text, min_len=2)
        k = _check_k(k)
        if vocab is None:
            vocab = CharVocab.from_text(text)
        ids = vocab.encode(text)
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
        ids = self.vocab.encode(text)
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
        if isinstance(n_chars, bool) or not isinstance(n_chars, int) or n_chars < 0:
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
