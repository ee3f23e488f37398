"""A generated language whose answers we know: typed brackets with agreeing words.

Introduced in chapter 3, section "A language with a known floor". Reused by the fine-tuning and RLHF
chapters, where :meth:`BracketLanguage.is_well_formed` gives a reward that needs no human.

The process, token by token (the state is the stack of open bracket types, at most ``max_depth``):

* at depth 0: open a bracket with probability ``p_open_top``, otherwise emit a *top-level word*;
* at depth ``1 <= d < max_depth``: open (``p_open``), close (``p_close``) or emit a word;
* at depth ``max_depth``: close (``p_close_full``) or emit a word.

An opened bracket has one of ``n_types`` types, uniformly. A closing bracket must match the type on
top of the stack (so it is *deterministic* given the past). A word inside a bracket of type ``k`` is
drawn from type ``k``'s own words with weights ``word_weights`` (agreement: ``(`` takes ``a b c d``,
``[`` takes ``e f g h`` ...). After a nested group closes, the right closer and the right words
depend on a bracket opened arbitrarily far back: an n-gram model cannot know it, a Transformer that
attends to the matching opener can.

Because the stack is a function of the tokens seen, every conditional ``p(x_t | x_<t)`` is explicit,
and its entropy depends only on the depth. The exact per-token entropy of a length-``T`` sequence,
``(1/T) sum_t E[H(x_t | x_<t)]``, follows from propagating the depth distribution — the floor no
model can beat (:meth:`BracketLanguage.entropy_floor`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

OPENERS = "([{<"
CLOSERS = ")]}>"
TYPE_WORDS = ("abcd", "efgh", "ijkl", "mnop")  # words that agree with ( [ { < respectively
TOP_WORDS = "wxyz"  # words outside any bracket
BOS = "^"


@dataclass(frozen=True)
class LanguageConfig:
    """Parameters of :class:`BracketLanguage` (defaults give 29 symbols and about 1.91 nats/token)."""

    n_types: int = 4
    max_depth: int = 4
    p_open_top: float = 0.4
    p_open: float = 0.25
    p_close: float = 0.35
    p_close_full: float = 0.6
    word_weights: tuple[float, ...] = (4.0, 3.0, 2.0, 1.0)

    def __post_init__(self) -> None:
        if not 1 <= self.n_types <= len(OPENERS):
            raise ValueError(f"n_types must be in 1..{len(OPENERS)}, got {self.n_types}")
        if self.max_depth < 1:
            raise ValueError(f"max_depth must be >= 1, got {self.max_depth}")
        if not 1 <= len(self.word_weights) <= len(TOP_WORDS) or min(self.word_weights) <= 0:
            raise ValueError(f"word_weights must be 1..{len(TOP_WORDS)} positive numbers, got {self.word_weights}")
        for name in ("p_open_top", "p_open", "p_close", "p_close_full"):
            value = getattr(self, name)
            if not 0.0 < value < 1.0:
                raise ValueError(f"{name} must be in (0, 1), got {value}")
        if self.p_open + self.p_close >= 1.0:
            raise ValueError(f"p_open + p_close must be < 1 (words need probability), got {self.p_open + self.p_close}")


class BracketLanguage:
    """Sampler, exact probabilities and exact entropy of the typed-bracket language.

    >>> lang = BracketLanguage()
    >>> lang.decode(lang.sample(1, 12, seed=0)[0])[:1]
    '^'
    """

    def __init__(self, config: LanguageConfig | None = None) -> None:
        self.config = config or LanguageConfig()
        c = self.config
        k, m = c.n_types, len(c.word_weights)
        self.itos: list[str] = (
            [BOS] + list(OPENERS[:k]) + list(CLOSERS[:k]) + [w[i] for w in TYPE_WORDS[:k] for i in range(m)]
            + list(TOP_WORDS[:m])
        )
        self.stoi = {s: i for i, s in enumerate(self.itos)}
        self.bos_id = 0
        self.open_ids = np.arange(1, 1 + k)
        self.close_ids = np.arange(1 + k, 1 + 2 * k)
        # word_ids[g, j]: word j of group g; groups 0..k-1 agree with bracket types, group k is top level.
        self.word_ids = np.concatenate(
            [
                np.arange(1 + 2 * k, 1 + 2 * k + k * m).reshape(k, m),
                np.arange(1 + 2 * k + k * m, 1 + 2 * k + (k + 1) * m)[None],
            ]
        )
        self.word_probs = np.asarray(c.word_weights, dtype=np.float64) / sum(c.word_weights)
        # event_probs[d] = P(open), P(close), P(word) at depth d.
        ev = np.zeros((c.max_depth + 1, 3))
        ev[0] = (c.p_open_top, 0.0, 1.0 - c.p_open_top)
        ev[1 : c.max_depth] = (c.p_open, c.p_close, 1.0 - c.p_open - c.p_close)
        ev[c.max_depth] = (0.0, c.p_close_full, 1.0 - c.p_close_full)
        self.event_probs = ev
        self._open_set = set(self.open_ids.tolist())
        self._close_set = set(self.close_ids.tolist())

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    # ---- text <-> ids -------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[ch] for ch in text]
        except KeyError as err:
            raise ValueError(
                f"symbol {err.args[0]!r} is not in the language's vocabulary {''.join(self.itos)!r}"
            ) from None

    def decode(self, ids) -> str:
        return "".join(self.itos[int(i)] for i in ids)

    # ---- sampling -----------------------------------------------------------------------------
    def sample(
        self, n: int, length: int, seed: int | None = None, rng: np.random.Generator | None = None
    ) -> torch.Tensor:
        """``n`` independent sequences: BOS followed by ``length`` tokens, as a ``(n, length + 1)`` LongTensor.

        Deterministic for a given ``seed`` (or ``rng``); vectorised over the ``n`` sequences.
        """
        if n < 1 or length < 1:
            raise ValueError(f"n and length must be >= 1, got n={n}, length={length}")
        if (seed is None) == (rng is None):
            raise ValueError("give exactly one of seed= or rng=")
        rng = rng if rng is not None else np.random.default_rng(seed)
        c = self.config
        out = np.empty((n, length + 1), dtype=np.int64)
        out[:, 0] = self.bos_id
        depth = np.zeros(n, dtype=np.int64)
        stack = np.zeros((n, c.max_depth), dtype=np.int64)
        rows = np.arange(n)
        cum_ev = np.cumsum(self.event_probs, axis=1)
        cum_w = np.cumsum(self.word_probs)
        for t in range(1, length + 1):
            u = rng.random(n)
            event = (u[:, None] >= cum_ev[depth][:, :2]).sum(1)  # 0 open, 1 close, 2 word
            new_type = rng.integers(0, c.n_types, size=n)
            word = np.minimum((rng.random(n)[:, None] >= cum_w[None, :-1]).sum(1), len(cum_w) - 1)
            top = np.where(depth > 0, stack[rows, np.maximum(depth - 1, 0)], c.n_types)
            tok = np.where(
                event == 0,
                self.open_ids[new_type],
                np.where(event == 1, self.close_ids[top % c.n_types], self.word_ids[top, word]),
            )
            is_open = event == 0
            stack[rows[is_open], depth[is_open]] = new_type[is_open]
            depth = depth + is_open - (event == 1)
            out[:, t] = tok
        return torch.from_numpy(out)

    # ---- exact probabilities ------------------------------------------------------------------
    def _step(self, stack: list[int], tok: int) -> float:
        """Log-probability of ``tok`` given the stack (updated in place); -inf if impossible."""
        c = self.config
        d = len(stack)
        p_open, p_close, p_word = self.event_probs[d]
        if tok in self._open_set:
            if p_open == 0.0:
                return -math.inf
            stack.append(tok - 1)
            return math.log(p_open / c.n_types)
        if tok in self._close_set:
            if p_close == 0.0 or tok - 1 - c.n_types != stack[-1]:
                return -math.inf
            stack.pop()
            return math.log(p_close)
        group = stack[-1] if d > 0 else c.n_types
        where = np.nonzero(self.word_ids[group] == tok)[0]
        if len(where) == 0:
            return -math.inf
        return math.log(p_word * self.word_probs[where[0]])

    def token_log_probs(self, ids) -> np.ndarray:
        """Exact ``log p(x_t | x_<t)`` for every token after the leading BOS (``-inf`` where impossible)."""
        ids = [int(i) for i in ids]
        if not ids or ids[0] != self.bos_id:
            raise ValueError("a sequence must start with the BOS token (id 0, '^')")
        stack: list[int] = []
        out = np.full(len(ids) - 1, -math.inf)
        for t, tok in enumerate(ids[1:]):
            if tok == self.bos_id or not 0 <= tok < self.vocab_size:
                break
            out[t] = self._step(stack, tok)
            if out[t] == -math.inf:
                break
        return out

    def log_prob(self, ids) -> float:
        """Exact log-probability (nats) of a sequence under the true process."""
        return float(self.token_log_probs(ids).sum())

    def next_token_probs(self, ids) -> np.ndarray:
        """The true distribution of the next token after the prefix ``ids`` (which starts with BOS)."""
        ids = [int(i) for i in ids]
        if not ids or ids[0] != self.bos_id:
            raise ValueError("a prefix must start with the BOS token (id 0, '^')")
        stack: list[int] = []
        for tok in ids[1:]:
            if self._step(stack, tok) == -math.inf:
                raise ValueError(f"prefix {self.decode(ids)!r} is impossible in this language")
        return self._probs_given_stack(stack)

    def next_token_table(self, ids) -> np.ndarray:
        """Every next-token distribution along ``ids`` in one pass: ``(len(ids), vocab_size)``.

        Row ``t`` is :meth:`next_token_probs` of ``ids[: t + 1]``, the true ``p(x_{t+1} | x_{<=t})``:
        the distribution a language model's output at position ``t`` should match. Used to compute
        a model's exact KL divergence from the truth on held-out text.
        """
        ids = [int(i) for i in ids]
        if not ids or ids[0] != self.bos_id:
            raise ValueError("a prefix must start with the BOS token (id 0, '^')")
        stack: list[int] = []
        out = np.empty((len(ids), self.vocab_size))
        out[0] = self._probs_given_stack(stack)
        for t, tok in enumerate(ids[1:], start=1):
            if self._step(stack, tok) == -math.inf:
                raise ValueError(f"prefix {self.decode(ids[: t + 1])!r} is impossible in this language")
            out[t] = self._probs_given_stack(stack)
        return out

    def _probs_given_stack(self, stack: list[int]) -> np.ndarray:
        c = self.config
        d = len(stack)
        p = np.zeros(self.vocab_size)
        p_open, p_close, p_word = self.event_probs[d]
        p[self.open_ids] += p_open / c.n_types
        if d > 0:
            p[self.close_ids[stack[-1]]] += p_close
        p[self.word_ids[stack[-1] if d > 0 else c.n_types]] += p_word * self.word_probs
        return p

    def is_well_formed(self, ids) -> bool:
        """True when every token is possible: closers match, words agree, depth stays in bounds.

        A sequence may end with brackets still open (sequences are cut at a fixed length).
        """
        return bool(np.isfinite(self.token_log_probs(ids)).all())

    # ---- exact entropy ------------------------------------------------------------------------
    def depth_entropies(self) -> np.ndarray:
        """``H(x_t | x_<t)`` in nats when the stack has depth ``d``, for d = 0..max_depth."""
        c = self.config
        h_words = -(self.word_probs * np.log(self.word_probs)).sum()
        ev = self.event_probs
        with np.errstate(divide="ignore", invalid="ignore"):
            h_event = -np.where(ev > 0, ev * np.log(ev), 0.0).sum(1)
        return h_event + ev[:, 0] * math.log(c.n_types) + ev[:, 2] * h_words

    def depth_transition(self) -> np.ndarray:
        """Markov matrix of the depth: ``P[d, d']``."""
        d_max = self.config.max_depth
        P = np.zeros((d_max + 1, d_max + 1))
        for d in range(d_max + 1):
            p_open, p_close, p_word = self.event_probs[d]
            P[d, d] += p_word
            if p_open:
                P[d, d + 1] += p_open
            if p_close:
                P[d, d - 1] += p_close
        return P

    def entropy_floor(self, length: int) -> float:
        """Exact mean of ``H(x_t | x_<t)`` over the ``length`` tokens after BOS (nats/token).

        This is the lowest cross-entropy any model can reach on sequences from :meth:`sample`.
        """
        if length < 1:
            raise ValueError(f"length must be >= 1, got {length}")
        P, h = self.depth_transition(), self.depth_entropies()
        dist = np.zeros(len(h))
        dist[0] = 1.0
        total = 0.0
        for _ in range(length):
            total += dist @ h
            dist = dist @ P
        return float(total / length)

    def entropy_rate(self) -> float:
        """Entropy per token of the stationary process (the limit of :meth:`entropy_floor`)."""
        P, h = self.depth_transition(), self.depth_entropies()
        w, v = np.linalg.eig(P.T)
        pi = np.real(v[:, np.argmin(np.abs(w - 1.0))])
        pi = pi / pi.sum()
        return float(pi @ h)
