"""The simplest tokenizer: one token per Unicode character.

Introduced in chapter 1, section "Counting, and a picture of the counts" (the bigram model), and
compared with BPE in chapter 3, section "Tokenization compared". The vocabulary is the sorted set of
characters seen when fitting; a character outside it is an error (not silently dropped), because a
model cannot predict a symbol it has no output for.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NoReturn

import torch


class CharTokenizer:
    """Characters <-> ids, with save/load to a small JSON file.

    The one character vocabulary of the book: chapter 1's bigram model counts with it, chapters 2
    and 3 train GPTs with it. Ids follow sorted character order, so the same text always gives the
    same ids.

    >>> tok = CharTokenizer.fit("hello")
    >>> tok.decode(tok.encode("hole"))
    'hole'
    """

    def __init__(self, chars) -> None:
        chars = list(chars)
        if not chars:
            raise ValueError("a CharTokenizer needs at least one character")
        if len(set(chars)) != len(chars) or any(not isinstance(c, str) or len(c) != 1 for c in chars):
            raise ValueError("chars must be distinct single characters")
        self.itos: list[str] = chars
        self.stoi = {c: i for i, c in enumerate(chars)}

    @classmethod
    def fit(cls, text: str) -> CharTokenizer:
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
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else ids
        out = []
        for i in ids:
            if not 0 <= int(i) < len(self.itos):  # a negative id would silently wrap around
                raise ValueError(f"id {i} is out of range for a vocabulary of {len(self.itos)}")
            out.append(self.itos[int(i)])
        return "".join(out)

    def _unknown(self, chars: list[str]) -> NoReturn:
        others = ", ".join(repr(c) for c in chars[1:10]) + (f" and {len(chars) - 10} more" if len(chars) > 10 else "")
        raise ValueError(
            f"character {chars[0]!r} is not in the tokenizer's vocabulary" + (f" (nor are {others})" if others else "")
            + "; fit it on all the text you will encode (e.g. CharTokenizer.fit(train + held_out))"
        )

    def save(self, path) -> None:
        Path(path).write_text(json.dumps({"type": "char", "chars": self.itos}, ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, path) -> CharTokenizer:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("type") != "char":
                raise ValueError(f"type is {data.get('type')!r}, expected 'char'")
            return cls(data["chars"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise ValueError(f"{path}: not a valid character-tokenizer file ({err})") from err
