"""Read any saved tokenizer: the file's ``"type"`` says which class reads it.

Introduced in chapter 3, section "Your own text": a model directory holds ``tokenizer.json`` beside
the weights, and whoever loads the model (``sample``, ``finetune``, ``chat``) reads it with
:func:`load_tokenizer`, whatever tokenizer made it (:mod:`aigc_book.text.tokenizer` lists the four).
"""

from __future__ import annotations

from pathlib import Path

from aigc_book.text.bpe import ByteBPE
from aigc_book.text.char_tokenizer import CharTokenizer
from aigc_book.text.chat_tokenizer import BaseChatTokenizer, BPEChatTokenizer
from aigc_book.text.tokenizer import Tokenizer, read_tokenizer_file

__all__ = ["TOKENIZER_TYPES", "load_tokenizer"]

# A "chat" file is read as BaseChatTokenizer: finetune saves the characters of any base, which may spell a special.
TOKENIZER_TYPES: dict[str, type] = {cls.type: cls for cls in (CharTokenizer, ByteBPE, BaseChatTokenizer,
                                                              BPEChatTokenizer)}


def load_tokenizer(path, *, types=None) -> Tokenizer:
    """The tokenizer saved in ``path``, of the class its ``"type"`` names (:data:`TOKENIZER_TYPES`).

    ``types``: the types the caller can use (default: all); a file of another type, a missing file
    or one that is not a tokenizer raises a one-line ValueError naming the file.
    """
    path = Path(path)
    allowed = tuple(TOKENIZER_TYPES) if types is None else tuple(types)
    try:
        kind = read_tokenizer_file(path)["type"]
    except (OSError, ValueError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else err
        raise ValueError(f"{path}: not a valid tokenizer file ({reason})") from err
    if kind not in allowed:
        raise ValueError(f"{path}: a tokenizer of type {kind!r}, expected one of {', '.join(map(repr, allowed))}")
    return TOKENIZER_TYPES[kind].load(path)
