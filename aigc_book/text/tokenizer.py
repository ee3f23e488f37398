"""What every tokenizer of the book is, and the one file format they all save to.

Introduced in chapter 3, section "Tokenization compared". A tokenizer turns text into ids and back
(:class:`Tokenizer`). The book has four, each a :class:`TokenizerFile`:

==============  ==========================================================  ========================
``"type"``      class                                                       trained by
==============  ==========================================================  ========================
``"char"``      :class:`~aigc_book.text.char_tokenizer.CharTokenizer`       ``CharTokenizer.train``
``"byte_bpe"``  :class:`~aigc_book.text.bpe.ByteBPE`                        ``ByteBPE.train``
``"chat"``      :class:`~aigc_book.text.chat_tokenizer.ChatTokenizer`       (characters + specials)
``"bpe_chat"``  :class:`~aigc_book.text.chat_tokenizer.BPEChatTokenizer`    ``BPEChatTokenizer.train``
==============  ==========================================================  ========================

A saved tokenizer is one JSON object: ``{"type": ..., <the fields of to_dict()>}``, written
atomically (:func:`~aigc_book.files.atomic_write`). :func:`aigc_book.text.load.load_tokenizer` reads
any of them by its ``"type"``; ``SomeTokenizer.load(path)`` reads one kind and refuses the others.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

from aigc_book.files import atomic_write

__all__ = ["TOKENIZER_FILE", "Tokenizer", "TokenizerFile", "read_tokenizer_file"]

TOKENIZER_FILE = "tokenizer.json"  # its name in a model directory (train-gpt, finetune, rlhf, tiny-chatgpt)


@runtime_checkable
class Tokenizer(Protocol):
    """Text <-> ids, saved as one JSON file: the interface every tokenizer of the book has."""

    type: ClassVar[str]

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids) -> str: ...

    def to_dict(self) -> dict[str, Any]: ...

    def save(self, path) -> None: ...


class TokenizerFile:
    """Save and load for a tokenizer class that defines ``type``, ``to_dict()`` and ``from_dict(data)``.

    ``save`` writes ``{"type": cls.type, **to_dict()}`` atomically; ``load`` reads it back and refuses a
    file of another type, or one ``from_dict`` cannot read, with a one-line ValueError naming the file
    (``"PATH: not a valid <description> file (why)"``).
    """

    type: ClassVar[str]
    description: ClassVar[str]  # how an error names the kind of file: "character-tokenizer", ...

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        raise NotImplementedError

    def save(self, path) -> None:
        """Write the tokenizer as JSON; atomically, so a failure never leaves an empty or partial file."""
        data = json.dumps({"type": self.type, **self.to_dict()}, ensure_ascii=False).encode("utf-8")
        atomic_write(Path(path), lambda tmp: Path(tmp).write_bytes(data))

    @classmethod
    def load(cls, path):
        """Read a file :meth:`save` wrote; a ValueError names a file that is not one."""
        path = Path(path)
        try:
            data = read_tokenizer_file(path)
            if data["type"] != cls.type:
                raise ValueError(f"type is {data['type']!r}, expected {cls.type!r}")
            return cls.from_dict(data)
        except (OSError, ValueError, KeyError, TypeError, AttributeError, re.error) as err:
            raise ValueError(f"{path}: not a valid {cls.description} file ({err})") from err


def read_tokenizer_file(path) -> dict[str, Any]:
    """The JSON object of a tokenizer file, which must have a string ``"type"``; OSError or ValueError otherwise."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        raise ValueError("expected a JSON object with a 'type'")
    return data
