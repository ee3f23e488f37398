"""The simplest tokenizer: one token per Unicode character.

Introduced in chapter 3, section "Tokenization compared". The vocabulary is the sorted set of
characters seen when fitting; a character outside it is an error (not silently dropped), because a
model cannot predict a symbol it has no output for.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch


class CharTokenizer:
    """Characters <-> ids, with save/load to a small JSON file.

    >>> tok = CharTokenizer.fit("hello")
    >>> tok.decode(tok.encode("hole"))
    'hole'
    """

    def __init__(self, chars) -> None:
        chars = list(chars)
        if not chars:
            raise ValueError("a CharTokenizer needs at least one character")
        if len(set(chars)) != len(chars) or any(len(c) != 1 for c in chars):
            raise ValueError("chars must be distinct single characters")
        self.itos: list[str] = chars
        self.stoi = {c: i for i, c in enumerate(chars)}

    @classmethod
    def fit(cls, text: str) -> "CharTokenizer":
        if not text:
            raise ValueError("cannot fit a tokenizer on empty text")
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[c] for c in text]
        except KeyError as err:
            raise ValueError(f"character {err.args[0]!r} is not in the tokenizer's vocabulary") from None

    def encode_tensor(self, text: str) -> torch.Tensor:
        return torch.tensor(self.encode(text), dtype=torch.long)

    def decode(self, ids) -> str:
        return "".join(self.itos[int(i)] for i in ids)

    def save(self, path) -> None:
        Path(path).write_text(json.dumps({"type": "char", "chars": self.itos}, ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, path) -> "CharTokenizer":
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("type") != "char":
                raise ValueError(f"type is {data.get('type')!r}, expected 'char'")
            return cls(data["chars"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise ValueError(f"{path}: not a valid character-tokenizer file ({err})") from err
