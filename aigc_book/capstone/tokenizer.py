"""A byte-level BPE with the chat template's special tokens: the capstone's tokenizer.

Introduced in chapter 8, section "A tokenizer for the corpus". Chapter 3's :class:`~aigc_book.text.bpe.ByteBPE`
gives ids ``0..V-1`` (V = 256 bytes + the learned merges); the special tokens of
:mod:`aigc_book.tasks.chat` (``<|user|>``, ``<|assistant|>``, ``<|end|>``, ``<|pad|>``) follow as
``V..V+3``. :class:`BPEChatTokenizer` has the interface of :class:`~aigc_book.tasks.chat.ChatTokenizer`,
so :func:`~aigc_book.tasks.chat.encode_chat`, :func:`~aigc_book.tasks.chat.encode_sft`,
:func:`~aigc_book.tasks.chat.generate_responses` and the RLHF rollouts use it unchanged. Typed text
never becomes a special id when encoded with ``allow_special=False`` (as ``encode_chat`` does): a
typed ``<|end|>`` is ordinary bytes, and a byte-level BPE has no unknown character to refuse.

Numbers are split into single digits before BPE (:data:`DIGIT_SPLIT_PATTERN`), as LLaMA does
(Touvron et al. 2023, arXiv:2302.13971, section 2.1): ``12345`` is five tokens whatever the training
text, so a number's digits line up with their place values instead of with the merges that happened
to be frequent.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from aigc_book.files import atomic_write
from aigc_book.tasks.chat import SPECIALS, SpecialTokens
from aigc_book.text.bpe import GPT2_SPLIT_PATTERN, ByteBPE
from aigc_book.text.char_tokenizer import token_ids
from aigc_book.training.finetune import load_tokenizer

__all__ = ["DIGIT_SPLIT_PATTERN", "BPEChatTokenizer", "train_chat_tokenizer", "load_chat_tokenizer"]

# GPT-2's pre-tokenization with " ?\d+" (a run of digits) replaced by " ?\d" (one digit).
DIGIT_SPLIT_PATTERN = GPT2_SPLIT_PATTERN.replace(r" ?\d+", r" ?\d")
if DIGIT_SPLIT_PATTERN == GPT2_SPLIT_PATTERN:  # the GPT-2 pattern changed under us
    raise ImportError("aigc_book.text.bpe.GPT2_SPLIT_PATTERN no longer contains ' ?\\d+'; update DIGIT_SPLIT_PATTERN")


class BPEChatTokenizer(SpecialTokens):
    """A trained :class:`~aigc_book.text.bpe.ByteBPE` (ids ``0..bpe.vocab_size-1``) plus special tokens.

    >>> tok = train_chat_tokenizer("add 7+12 and 3+4 " * 20, vocab_size=270)
    >>> tok.decode(tok.encode("<|user|>add 1+2<|end|>"))
    '<|user|>add 1+2<|end|>'
    >>> tok.encode("<|end|>") == [tok.end_id], len(tok.encode("<|end|>", allow_special=False)) > 1
    (True, True)
    """

    def __init__(self, bpe: ByteBPE, specials=SPECIALS) -> None:
        if not isinstance(bpe, ByteBPE):
            raise TypeError(f"bpe must be a trained ByteBPE, got {type(bpe).__name__}")
        self.bpe = bpe
        self._set_specials(self._check_specials(specials), bpe.vocab_size)

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

    def save(self, path) -> None:
        """Write the merges, the pre-tokenization pattern and the specials as JSON (atomically)."""
        data = {"type": "bpe_chat", "pattern": self.bpe.pattern, "merges": [list(m) for m in self.bpe.merges],
                "specials": list(self.specials)}
        encoded = json.dumps(data, ensure_ascii=False).encode("utf-8")
        atomic_write(Path(path), lambda tmp: Path(tmp).write_bytes(encoded))

    @classmethod
    def load(cls, path) -> BPEChatTokenizer:
        """Read a file written by :meth:`save`; a ValueError names a file that is not one."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("type") != "bpe_chat":
                raise ValueError(f"type is {data.get('type')!r}, expected 'bpe_chat'")
            return cls(ByteBPE(data["merges"], data["pattern"]), data["specials"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError, re.error) as err:
            raise ValueError(f"{path}: not a valid BPE chat-tokenizer file ({err})") from err


def train_chat_tokenizer(text: str, vocab_size: int, *, pattern: str = DIGIT_SPLIT_PATTERN) -> BPEChatTokenizer:
    """Train a byte-level BPE on ``text`` and add the chat template's special tokens.

    ``vocab_size`` counts the BPE part only (256 bytes plus the merges, so >= 256); the tokenizer has
    ``vocab_size + 4`` ids with the specials (fewer merges if ``text`` runs out of repeated pairs).
    """
    return BPEChatTokenizer(ByteBPE.train(text, vocab_size, pattern=pattern))


def load_chat_tokenizer(path):
    """The tokenizer file ``path``: a :class:`BPEChatTokenizer` for type ``"bpe_chat"``, otherwise
    whatever :func:`~aigc_book.training.finetune.load_tokenizer` reads (a ``finetune`` chat tokenizer
    or a ``train-gpt`` character one; the caller decides whether a non-chat tokenizer will do)."""
    path = Path(path)
    try:
        kind = json.loads(path.read_text(encoding="utf-8")).get("type")
    except (OSError, ValueError, AttributeError):
        kind = None  # load_tokenizer says what is wrong with the file
    return BPEChatTokenizer.load(path) if kind == "bpe_chat" else load_tokenizer(path)
