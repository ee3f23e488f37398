"""Byte-level byte-pair encoding (BPE), written from scratch.

Introduced in chapter 3, section "Tokenization compared". The algorithm of Sennrich et al. (2016),
on bytes as in GPT-2 (Radford et al. 2019):

1. Split text into *pre-tokens* with a regular expression (words with their leading space,
   numbers, punctuation runs, whitespace), so merges never cross a word boundary.
2. Start from the 256 byte values: every UTF-8 string is representable, there is no unknown token.
3. Repeat: count adjacent id pairs over all pre-tokens (weighted by frequency), merge the most
   frequent pair into a new id. Ties are broken by the smaller pair, so training is deterministic.

Encoding replays the merges in the order they were learned (lowest rank first) inside each
pre-token. :func:`train_hf_bpe` trains Hugging Face ``tokenizers``' BPE on the same text with the
same pre-tokenization, for comparison.
"""

from __future__ import annotations

import heapq
import re
from collections import Counter, defaultdict

from aigc_book.text.char_tokenizer import token_ids
from aigc_book.text.tokenizer import TokenizerFile

# GPT-2's pattern, with \p{L} -> [^\W\d_] and \p{N} -> \d because Python's `re` lacks \p{..}.
GPT2_SPLIT_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?[^\W\d_]+| ?\d+| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+"""
# GPT-2's pre-tokenization with " ?\d+" (a run of digits) replaced by " ?\d" (one digit): numbers are split
# into single digits before BPE, as LLaMA does (Touvron et al. 2023, arXiv:2302.13971, section 2.1), so
# ``12345`` is five tokens whatever the training text and a number's digits line up with their place values.
# The capstone's tokenizer uses it (chapter 8, section "A tokenizer for the corpus").
DIGIT_SPLIT_PATTERN = GPT2_SPLIT_PATTERN.replace(r" ?\d+", r" ?\d")


class ByteBPE(TokenizerFile):
    """A trained byte-level BPE: ``merges[i] = (a, b)`` creates token id ``256 + i``; saved as
    ``{"type": "byte_bpe", "pattern": ..., "merges": [[a, b], ...]}``.

    >>> bpe = ByteBPE.train("low lower lowest " * 20, vocab_size=260)
    >>> bpe.decode(bpe.encode("lowest lower"))
    'lowest lower'
    """

    type = "byte_bpe"
    description = "byte-BPE"

    def __init__(self, merges, pattern: str = GPT2_SPLIT_PATTERN) -> None:
        self.merges: list[tuple[int, int]] = []
        self.vocab: list[bytes] = [bytes([i]) for i in range(256)]
        for i, (a, b) in enumerate(merges):
            try:  # merge i may only join bytes and earlier merges; a negative id would wrap around
                a, b = token_ids((a, b), 256 + i)
            except ValueError as err:
                raise ValueError(f"merge {i} ({a}, {b}) refers to a token that does not exist yet: {err}") from None
            self.merges.append((a, b))
            self.vocab.append(self.vocab[a] + self.vocab[b])
        self.pattern = pattern
        self._regex = re.compile(pattern)
        self.ranks = {pair: i for i, pair in enumerate(self.merges)}
        self._cache: dict[str, list[int]] = {}

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    # ---- training -----------------------------------------------------------------------------
    @classmethod
    def train(cls, text: str, vocab_size: int, pattern: str = GPT2_SPLIT_PATTERN, min_frequency: int = 2) -> ByteBPE:
        """Learn ``vocab_size - 256`` merges from ``text`` (fewer if no pair occurs ``min_frequency`` times)."""
        if vocab_size < 256:
            raise ValueError(f"vocab_size must be >= 256 (the byte alphabet), got {vocab_size}")
        if not text:
            raise ValueError("cannot train BPE on empty text")
        counts = Counter(re.findall(pattern, text))
        words = [list(w.encode("utf-8")) for w in counts]
        freqs = list(counts.values())
        pair_counts: dict[tuple[int, int], int] = defaultdict(int)
        where: dict[tuple[int, int], set[int]] = defaultdict(set)
        for wi, (w, f) in enumerate(zip(words, freqs)):
            for pair in zip(w, w[1:]):
                pair_counts[pair] += f
                where[pair].add(wi)
        heap = [(-c, pair) for pair, c in pair_counts.items()]
        heapq.heapify(heap)
        merges: list[tuple[int, int]] = []
        while len(merges) < vocab_size - 256 and heap:
            neg, pair = heapq.heappop(heap)
            if pair_counts.get(pair, 0) != -neg:  # stale heap entry
                continue
            if -neg < min_frequency:
                break
            new_id = 256 + len(merges)
            merges.append(pair)
            changed: set[tuple[int, int]] = set()
            for wi in where.pop(pair, ()):
                w, f = words[wi], freqs[wi]
                if len(w) < 2:
                    continue
                for p in zip(w, w[1:]):
                    pair_counts[p] -= f
                    changed.add(p)
                merged = _merge(w, pair, new_id)
                words[wi] = merged
                for p in zip(merged, merged[1:]):
                    pair_counts[p] += f
                    where[p].add(wi)
                    changed.add(p)
            pair_counts.pop(pair, None)
            for p in changed:
                c = pair_counts.get(p, 0)
                if c > 0 and p != pair:
                    heapq.heappush(heap, (-c, p))
                elif c <= 0:
                    pair_counts.pop(p, None)
        return cls(merges, pattern)

    # ---- encode / decode ----------------------------------------------------------------------
    def _encode_chunk(self, chunk: str) -> list[int]:
        cached = self._cache.get(chunk)
        if cached is not None:
            return cached
        ids = list(chunk.encode("utf-8"))
        while len(ids) >= 2:
            pair = min(zip(ids, ids[1:]), key=lambda p: self.ranks.get(p, 1 << 62))
            rank = self.ranks.get(pair)
            if rank is None:
                break
            ids = _merge(ids, pair, 256 + rank)
        if len(self._cache) < 200_000:
            self._cache[chunk] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        out: list[int] = []
        for chunk in self._regex.findall(text):
            out.extend(self._encode_chunk(chunk))
        return out

    def decode(self, ids) -> str:
        data = b"".join(self.vocab[i] for i in token_ids(ids, self.vocab_size))
        return data.decode("utf-8", errors="replace")

    def token_strings(self, ids) -> list[str]:
        """Each token's bytes shown as text (for looking at a tokenization)."""
        return [self.vocab[i].decode("utf-8", errors="replace") for i in token_ids(ids, self.vocab_size)]

    # ---- persistence --------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"pattern": self.pattern, "merges": [list(m) for m in self.merges]}

    @classmethod
    def from_dict(cls, data: dict) -> ByteBPE:
        return cls(data["merges"], data["pattern"])


def _merge(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace every non-overlapping occurrence of ``pair`` in ``ids`` (left to right) by ``new_id``."""
    out: list[int] = []
    i, n = 0, len(ids)
    a, b = pair
    while i < n:
        if i < n - 1 and ids[i] == a and ids[i + 1] == b:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def train_hf_bpe(text: str, vocab_size: int, min_frequency: int = 2):
    """Hugging Face ``tokenizers``' byte-level BPE trained on ``text`` (GPT-2 pre-tokenization).

    Returns a ``tokenizers.Tokenizer``; ``encode(s).ids`` and ``decode(ids)`` round-trip.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
    )
    tok.train_from_iterator([text], trainer=trainer)
    return tok
