"""The chat template and the tokenizers that carry it: ordinary ids, then one id per special token.

Introduced in chapter 4, section "Instruction following". A conversation turn is laid out as::

    <|user|>add 7+12<|end|><|assistant|>19<|end|>

where ``<|user|>``, ``<|assistant|>`` and ``<|end|>`` are *special tokens*: one id each, never
produced by encoding typed text (:meth:`SpecialTokens.encode_chat` encodes the prompt and the
response with ``allow_special=False``, so a typed ``<|end|>`` stays ordinary text). ``<|pad|>``
fills batches to a common length. The template lives on the tokenizer, as in nanochat's
``render_conversation``: :class:`SpecialTokens` holds it, and two tokenizers inherit it:

- :class:`ChatTokenizer`: characters (ids ``0..n-1``, as a
  :class:`~aigc_book.text.char_tokenizer.CharTokenizer` gives them) and the special tokens after
  them, so a model pretrained on the characters keeps its ids (chapter 4);
  :class:`BaseChatTokenizer` is the same for a base model whose characters can spell a special token.
- :class:`BPEChatTokenizer`: chapter 3's :class:`~aigc_book.text.bpe.ByteBPE` and the special tokens
  after its ids, the capstone's tokenizer (chapter 8, section "A tokenizer for the corpus"). It is
  trained with :data:`~aigc_book.text.bpe.DIGIT_SPLIT_PATTERN` by default, so numbers are single digits.
"""

from __future__ import annotations

import re
from typing import ClassVar

from aigc_book.text.bpe import DIGIT_SPLIT_PATTERN, ByteBPE
from aigc_book.text.char_tokenizer import CharTokenizer, token_ids
from aigc_book.text.tokenizer import TokenizerFile

__all__ = [
    "USER",
    "ASSISTANT",
    "END",
    "PAD",
    "SPECIALS",
    "format_chat",
    "SpecialTokens",
    "ChatTokenizer",
    "BaseChatTokenizer",
    "BPEChatTokenizer",
]

USER, ASSISTANT, END, PAD = "<|user|>", "<|assistant|>", "<|end|>", "<|pad|>"
SPECIALS: tuple[str, ...] = (USER, ASSISTANT, END, PAD)


def format_chat(prompt: str, response: str | None = None) -> str:
    """The template as text: ``<|user|>{prompt}<|end|><|assistant|>`` then ``{response}<|end|>`` if given."""
    head = f"{USER}{prompt}{END}{ASSISTANT}"
    return head if response is None else f"{head}{response}{END}"


class SpecialTokens(TokenizerFile):
    """What every chat tokenizer shares: special tokens with one id each, after the ordinary ids, and
    the chat template (:meth:`encode_chat`).

    A subclass calls :meth:`_set_specials` with the first special id and implements
    ``_encode_text(text)`` (ordinary text to ids), ``vocab_size`` and ``decode``; ``encode``, the
    template and the id properties come from here.
    """

    @staticmethod
    def _check_specials(specials) -> tuple[str, ...]:
        specials = tuple(specials)
        if len(set(specials)) != len(specials) or any(not isinstance(s, str) or len(s) < 2 for s in specials):
            raise ValueError(f"specials must be distinct strings of 2 or more characters, got {specials}")
        for s in SPECIALS:
            if s not in specials:
                raise ValueError(f"specials must include the chat template's {SPECIALS}; {s!r} is missing")
        return specials

    def _set_specials(self, specials: tuple[str, ...], first_id: int) -> None:
        self.specials = specials
        self.special_ids = {s: first_id + i for i, s in enumerate(specials)}
        # Longest first, so that one special that starts another is not matched too early.
        self._split = re.compile("(" + "|".join(re.escape(s) for s in sorted(specials, key=len, reverse=True)) + ")")

    def __len__(self) -> int:
        return self.vocab_size

    @property
    def user_id(self) -> int:
        return self.special_ids[USER]

    @property
    def assistant_id(self) -> int:
        return self.special_ids[ASSISTANT]

    @property
    def end_id(self) -> int:
        return self.special_ids[END]

    @property
    def pad_id(self) -> int:
        return self.special_ids[PAD]

    def encode(self, text: str, *, allow_special: bool = True) -> list[int]:
        """Ids of ``text``; a special-token string becomes its one id unless ``allow_special`` is False
        (then it is ordinary text, encoded as the tokenizer encodes any text)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        if not allow_special:
            return self._encode_text(text)
        out: list[int] = []
        for piece in self._split.split(text):
            out += [self.special_ids[piece]] if piece in self.special_ids else self._encode_text(piece)
        return out

    def encode_chat(self, prompt: str, response: str | None = None) -> tuple[list[int], int]:
        """``(ids, n_prompt)``: the ids of :func:`format_chat` ``(prompt, response)`` and how many of them
        are the prompt part (up to and including ``<|assistant|>``). Prompt and response are encoded
        without special tokens, so text can never smuggle in a ``<|end|>``."""
        ids = [self.user_id, *self.encode(prompt, allow_special=False), self.end_id, self.assistant_id]
        n_prompt = len(ids)
        if response is not None:
            ids += [*self.encode(response, allow_special=False), self.end_id]
        return ids, n_prompt


class ChatTokenizer(SpecialTokens):
    """Characters and special tokens <-> ids: ``chars`` get ids ``0..n-1``, ``specials`` ``n..n+k-1``.

    A character vocabulary that could spell a special token (one with ``<``, ``|`` and ``>``) is
    refused, so that ``encode(text)`` is never ambiguous; :class:`BaseChatTokenizer` accepts one.
    Saved as ``{"type": "chat", "chars": [...], "specials": [...]}``.

    >>> tok = ChatTokenizer("abcdefghijklmnopqrstuvwxyz0123456789+ ")
    >>> tok.decode(tok.encode("<|user|>add 1+2<|end|>"))
    '<|user|>add 1+2<|end|>'
    >>> len(tok.encode("<|user|>")), tok.user_id == tok.encode("<|user|>")[0]
    (1, True)
    """

    type = "chat"
    description = "chat-tokenizer"
    allows_typed_specials: ClassVar[bool] = False  # may the characters spell a special token?

    def __init__(self, chars, specials=SPECIALS) -> None:
        self.chars = CharTokenizer(chars)
        specials = self._check_specials(specials)
        if not self.allows_typed_specials:
            clash = [s for s in specials if all(c in self.chars for c in s)]
            if clash:
                raise ValueError(f"special token {clash[0]!r} could also be typed as ordinary characters; "
                                 "give it a character outside chars (e.g. '|')")
        self._set_specials(specials, self.chars.vocab_size)
        self.itos = list(self.chars.itos) + list(specials)

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def _encode_text(self, text: str) -> list[int]:
        return self.chars.encode(text)  # a character outside the vocabulary: a ValueError naming it

    def decode(self, ids, *, skip_special: bool = False) -> str:
        """Text of ``ids``; with ``skip_special`` the special tokens are left out."""
        n = self.chars.vocab_size
        return "".join(self.itos[i] for i in token_ids(ids, self.vocab_size) if not (skip_special and i >= n))

    def to_dict(self) -> dict:
        return {"chars": self.chars.to_dict()["chars"], "specials": list(self.specials)}

    @classmethod
    def from_dict(cls, data: dict) -> ChatTokenizer:
        return cls(data["chars"], data["specials"])


class BaseChatTokenizer(ChatTokenizer):
    """The chat tokenizer of a fine-tuned base model: the base's characters keep their ids, the
    special tokens follow, and the characters may spell a special token.

    Any text with ``<``, ``|`` and ``>`` (Python's documentation, say) gives such a vocabulary. That
    is safe because prompts and responses are encoded with :meth:`~SpecialTokens.encode_chat`, which
    never turns typed text into a special id: a typed ``<|end|>`` stays seven characters. A file of
    type ``"chat"`` is read back as this class by :func:`~aigc_book.text.load.load_tokenizer`.

    Args:
        chars: the base model's characters, in id order.
        specials: the special tokens (must include the template's).
    """

    allows_typed_specials = True


class BPEChatTokenizer(SpecialTokens):
    """A trained :class:`~aigc_book.text.bpe.ByteBPE` (ids ``0..bpe.vocab_size-1``) plus special tokens.

    A byte-level BPE has no unknown character to refuse, and a typed ``<|end|>`` encoded with
    ``allow_special=False`` is ordinary bytes. Saved as ``{"type": "bpe_chat", "pattern": ...,
    "merges": [...], "specials": [...]}``.

    >>> tok = BPEChatTokenizer.train("add 7+12 and 3+4 " * 20, vocab_size=270)
    >>> tok.decode(tok.encode("<|user|>add 1+2<|end|>"))
    '<|user|>add 1+2<|end|>'
    >>> tok.encode("<|end|>") == [tok.end_id], len(tok.encode("<|end|>", allow_special=False)) > 1
    (True, True)
    """

    type = "bpe_chat"
    description = "BPE chat-tokenizer"

    def __init__(self, bpe: ByteBPE, specials=SPECIALS) -> None:
        if not isinstance(bpe, ByteBPE):
            raise TypeError(f"bpe must be a trained ByteBPE, got {type(bpe).__name__}")
        self.bpe = bpe
        self._set_specials(self._check_specials(specials), bpe.vocab_size)

    @classmethod
    def train(cls, text: str, vocab_size: int, *, pattern: str = DIGIT_SPLIT_PATTERN,
              specials=SPECIALS) -> BPEChatTokenizer:
        """Train a byte-level BPE on ``text`` and add the chat template's special tokens.

        ``vocab_size`` counts the BPE part only (256 bytes plus the merges, so >= 256); the tokenizer has
        ``vocab_size + 4`` ids with the specials (fewer merges if ``text`` runs out of repeated pairs).
        """
        return cls(ByteBPE.train(text, vocab_size, pattern=pattern), specials)

    @property
    def vocab_size(self) -> int:
        return self.bpe.vocab_size + len(self.specials)

    def _encode_text(self, text: str) -> list[int]:
        return self.bpe.encode(text)  # bytes: any text, never an error

    def decode(self, ids, *, skip_special: bool = False) -> str:
        """Text of ``ids``: the bytes of each run of BPE ids are joined, then decoded as UTF-8 (an
        incomplete character becomes U+FFFD); with ``skip_special`` the special tokens are left out."""
        n, pieces, run = self.bpe.vocab_size, [], []
        for i in token_ids(ids, self.vocab_size):
            if i < n:
                run.append(self.bpe.vocab[i])
                continue
            pieces.append(b"".join(run).decode("utf-8", errors="replace"))
            run = []
            if not skip_special:
                pieces.append(self.specials[i - n])
        pieces.append(b"".join(run).decode("utf-8", errors="replace"))
        return "".join(pieces)

    def token_strings(self, ids) -> list[str]:
        """Each token shown as text: a BPE token's bytes (U+FFFD where they split a character) or a special."""
        n = self.bpe.vocab_size
        return [self.bpe.vocab[i].decode("utf-8", errors="replace") if i < n else self.specials[i - n]
                for i in token_ids(ids, self.vocab_size)]

    def to_dict(self) -> dict:
        return {**self.bpe.to_dict(), "specials": list(self.specials)}

    @classmethod
    def from_dict(cls, data: dict) -> BPEChatTokenizer:
        return cls(ByteBPE.from_dict(data), data["specials"])
