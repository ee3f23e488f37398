"""The simplest tokenizer: one token per Unicode character.

Introduced in chapter 1, section "Counting, and a picture of the counts" (the bigram model), and
compared with BPE in chapter 3, section "Tokenization compared". The vocabulary is the sorted set of
characters seen when fitting; a character outside it is an error (not silently dropped), because a
model cannot predict a symbol it has no output for.
"""

from __future__ import annotations

import operator
from typing import NoReturn

import torch

from aigc_book.text.tokenizer import TokenizerFile


def token_ids(ids, vocab_size: int) -> list[int]:
    """``ids`` (a sequence or a tensor) as a list of ints, each checked to lie in ``[0, vocab_size)``.

    A float or a bool is refused rather than truncated, and a negative id rather than wrapped around
    to the end of the vocabulary (both would decode silently to some other token).
    """
    out = []
    for i in ids.tolist() if isinstance(ids, torch.Tensor) else ids:
        try:
            if isinstance(i, bool):
                raise TypeError
            j = operator.index(i)  # ints, numpy ints and integer 0-d tensors; not floats
        except TypeError:
            raise TypeError(f"token ids must be integers, got {i!r} ({type(i).__name__})") from None
        if not 0 <= j < vocab_size:
            raise ValueError(f"token id {j} is out of range for a vocabulary of {vocab_size} (ids 0..{vocab_size - 1})")
        out.append(j)
    return out


class CharTokenizer(TokenizerFile):
    """Characters <-> ids, saved as ``{"type": "char", "chars": [...]}``.

    The one character vocabulary of the book: chapter 1's bigram model counts with it, chapters 2
    and 3 train GPTs with it. Ids follow sorted character order, so the same text always gives the
    same ids.

    >>> tok = CharTokenizer.train("hello")
    >>> tok.decode(tok.encode("hole"))
    'hole'
    """

    type = "char"
    description = "character-tokenizer"

    def __init__(self, chars) -> None:
        chars = list(chars)
        if not chars:
            raise ValueError("a CharTokenizer needs at least one character")
        if len(set(chars)) != len(chars) or any(not isinstance(c, str) or len(c) != 1 for c in chars):
            raise ValueError("chars must be distinct single characters")
        _check_encodable(chars)
        self.itos: list[str] = chars
        self.stoi = {c: i for i, c in enumerate(chars)}

    @classmethod
    def train(cls, text: str) -> CharTokenizer:
        """The sorted set of distinct characters in ``text``."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        if not text:
            raise ValueError("cannot fit a tokenizer on empty text")
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, char: object) -> bool:
        return char in self.stoi

    def index(self, char: str) -> int:
        """The id of one character."""
        if char not in self.stoi:
            self._unknown([char])
        return self.stoi[char]

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[c] for c in text]
        except KeyError:
            self._unknown(sorted(set(text) - self.stoi.keys()))

    def encode_tensor(self, text: str) -> torch.Tensor:
        return torch.tensor(self.encode(text), dtype=torch.long)

    def decode(self, ids) -> str:
        return "".join(self.itos[i] for i in token_ids(ids, len(self.itos)))

    def _unknown(self, chars: list[str]) -> NoReturn:
        others = ", ".join(repr(c) for c in chars[1:10]) + (f" and {len(chars) - 10} more" if len(chars) > 10 else "")
        raise ValueError(
            f"character {chars[0]!r} is not in the tokenizer's vocabulary" + (f" (nor are {others})" if others else "")
            + "; train it on all the text you will encode (e.g. CharTokenizer.train(train + held_out))"
        )

    def to_dict(self) -> dict:
        _check_encodable(self.itos)  # itos may have been edited since __init__
        return {"chars": self.itos}

    @classmethod
    def from_dict(cls, data: dict) -> CharTokenizer:
        return cls(data["chars"])


def _check_encodable(chars: list[str]) -> None:
    """Refuse lone surrogates (U+D800..U+DFFF): UTF-8 cannot encode them, so the vocabulary could not be saved."""
    bad = [c for c in chars if "\ud800" <= c <= "\udfff"]
    if bad:
        raise ValueError(
            f"character U+{ord(bad[0]):04X} is a lone surrogate, which is not valid text (UTF-8 cannot encode it); "
            "it usually comes from reading bytes with errors='surrogateescape': clean the text first, "
            "e.g. text.encode('utf-8', 'replace').decode('utf-8')"
        )
