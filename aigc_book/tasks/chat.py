"""Chat template, special tokens and supervised fine-tuning (SFT) batches.

Introduced in chapter 4, section "Instruction following". A conversation turn is laid out as::

    <|user|>add 7+12<|end|><|assistant|>19<|end|>

where ``<|user|>``, ``<|assistant|>`` and ``<|end|>`` are *special tokens*: one id each, never
produced by encoding ordinary text (their ``|`` is not in the character set, so a user cannot type
one). ``<|pad|>`` fills batches to a common length. :class:`ChatTokenizer` is a
:class:`~aigc_book.text.char_tokenizer.CharTokenizer` over :data:`~aigc_book.tasks.instructions.CHARS`
with the special tokens appended after the characters, so the first 29 ids are the bracket
language's and a model pretrained on it keeps them (:func:`grow_vocabulary` adds the new rows).

Supervised fine-tuning trains the next-token loss on the *response* only (as InstructGPT's SFT
stage does for the demonstrations, Ouyang et al. 2022): the prompt is given, not predicted, so its
targets are -100. :func:`sft_batch` with ``train_on_prompt=True`` keeps them, for comparison.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from aigc_book.files import atomic_write
from aigc_book.tasks.instructions import CHARS, Instruction, as_pair, check
from aigc_book.text.char_tokenizer import CharTokenizer, token_ids
from aigc_book.training.objectives import IGNORE

__all__ = [
    "USER",
    "ASSISTANT",
    "END",
    "PAD",
    "SPECIALS",
    "SpecialTokens",
    "ChatTokenizer",
    "format_chat",
    "encode_chat",
    "SFTData",
    "encode_sft",
    "pad_sft",
    "sft_batch",
    "grow_vocabulary",
    "generate_responses",
    "instruction_accuracy",
]

USER, ASSISTANT, END, PAD = "<|user|>", "<|assistant|>", "<|end|>", "<|pad|>"
SPECIALS: tuple[str, ...] = (USER, ASSISTANT, END, PAD)


class SpecialTokens:
    """What every chat tokenizer shares: special tokens with one id each, after the ordinary ids.

    A subclass calls :meth:`_set_specials` with the first special id and implements
    ``_encode_text(text)`` (ordinary text to ids) and ``vocab_size``; ``encode`` and the id
    properties come from here. Used by :class:`ChatTokenizer` (characters) and the capstone's
    byte-level BPE (:class:`aigc_book.capstone.tokenizer.BPEChatTokenizer`).
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


class ChatTokenizer(SpecialTokens):
    """Characters and special tokens <-> ids: ``chars`` get ids ``0..n-1``, ``specials`` ``n..n+k-1``.

    >>> tok = ChatTokenizer()
    >>> tok.decode(tok.encode("<|user|>add 1+2<|end|>"))
    '<|user|>add 1+2<|end|>'
    >>> len(tok.encode("<|user|>")), tok.user_id == tok.encode("<|user|>")[0]
    (1, True)
    """

    def __init__(self, chars=CHARS, specials=SPECIALS) -> None:
        self.chars = CharTokenizer(chars)
        specials = self._check_specials(specials)
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

    def save(self, path) -> None:
        """Write characters and specials as JSON (atomically)."""
        data = json.dumps({"type": "chat", "chars": self.chars.itos, "specials": list(self.specials)},
                          ensure_ascii=False).encode("utf-8")
        atomic_write(Path(path), lambda tmp: Path(tmp).write_bytes(data))

    @classmethod
    def load(cls, path) -> ChatTokenizer:
        """Read a file written by :meth:`save`; a ValueError names a file that is not one."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("type") != "chat":
                raise ValueError(f"type is {data.get('type')!r}, expected 'chat'")
            return cls(data["chars"], data["specials"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise ValueError(f"{path}: not a valid chat-tokenizer file ({err})") from err


def format_chat(prompt: str, response: str | None = None) -> str:
    """The template as text: ``<|user|>{prompt}<|end|><|assistant|>`` then ``{response}<|end|>`` if given."""
    head = f"{USER}{prompt}{END}{ASSISTANT}"
    return head if response is None else f"{head}{response}{END}"


def encode_chat(tokenizer: ChatTokenizer, prompt: str, response: str | None = None) -> tuple[list[int], int]:
    """``(ids, n_prompt)``: the template's ids and how many of them are the prompt part (up to and
    including ``<|assistant|>``). Prompt and response are encoded without special tokens, so text
    can never smuggle in a ``<|end|>``."""
    t = tokenizer
    ids = [t.user_id, *t.encode(prompt, allow_special=False), t.end_id, t.assistant_id]
    n_prompt = len(ids)
    if response is not None:
        ids += [*t.encode(response, allow_special=False), t.end_id]
    return ids, n_prompt


@dataclass
class SFTData:
    """Conversations padded to a common length.

    Attributes:
        tokens: ``(N, L)`` ids, right-padded with ``<|pad|>``.
        prompt_mask: ``(N, L)`` True on the prompt part of each row.
        real_mask: ``(N, L)`` True on real tokens (False on padding).
        pad_id: the padding id.
    """

    tokens: torch.Tensor
    prompt_mask: torch.Tensor
    real_mask: torch.Tensor
    pad_id: int

    def __len__(self) -> int:
        return self.tokens.size(0)


def encode_sft(tokenizer: ChatTokenizer, pairs, *, max_length: int | None = None) -> SFTData:
    """Encode prompt/response pairs (:class:`Instruction` objects, ``(prompt, response)`` tuples or
    dicts as from :func:`~aigc_book.tasks.instructions.read_jsonl`) with the chat template.

    ``max_length``: refuse a conversation longer than this many tokens (e.g. the model's
    ``block_size + 1``, since inputs are one token shorter than the conversation).
    """
    rows, n_prompts = [], []
    for i, pair in enumerate(pairs):
        prompt, response = as_pair(pair, i)
        try:
            ids, n_prompt = encode_chat(tokenizer, prompt, response)
        except ValueError as err:
            raise ValueError(f"pair {i}: {err}") from None
        if max_length is not None and len(ids) > max_length:
            raise ValueError(f"pair {i} is {len(ids)} tokens long, more than max_length={max_length}; "
                             "shorten it or use a model with a longer context")
        rows.append(ids)
        n_prompts.append(n_prompt)
    if not rows:
        raise ValueError("no pairs to encode")
    return pad_sft([(r, [i < n for i in range(len(r))]) for r, n in zip(rows, n_prompts)], tokenizer.pad_id)


def pad_sft(rows, pad_id: int) -> SFTData:
    """:class:`SFTData` from ``(ids, is_prompt)`` rows (two lists of one length each), right-padded with
    ``pad_id``: ``is_prompt`` marks the tokens that carry no loss."""
    L = max(len(ids) for ids, _ in rows)
    tokens = torch.full((len(rows), L), pad_id, dtype=torch.long)
    prompt_mask = torch.zeros(len(rows), L, dtype=torch.bool)
    real_mask = torch.zeros(len(rows), L, dtype=torch.bool)
    for i, (ids, is_prompt) in enumerate(rows):
        tokens[i, : len(ids)] = torch.tensor(ids)
        prompt_mask[i, : len(ids)] = torch.tensor(is_prompt, dtype=torch.bool)
        real_mask[i, : len(ids)] = True
    return SFTData(tokens, prompt_mask, real_mask, pad_id)


def sft_batch(data: SFTData, batch_size: int, generator: torch.Generator, *, train_on_prompt: bool = False) -> dict:
    """A causal-LM batch of random rows: ``idx = x[:, :-1]``, ``targets = x[:, 1:]``.

    A target is -100 (no loss) on padding, and on the prompt unless ``train_on_prompt``: the
    first predicted response token is the one after ``<|assistant|>``, the last is the closing
    ``<|end|>`` (so the model learns to stop). Columns that are padding in every row are cut off.
    Also returns ``prompt_mask`` and ``padding_mask`` aligned with ``idx``.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if generator is None:
        raise ValueError("pass a torch.Generator: batches never draw from the global RNG")
    rows = torch.randint(len(data), (batch_size,), generator=generator)
    real = data.real_mask[rows]
    L = int(real.sum(1).max())
    x, prompt, real = data.tokens[rows, :L], data.prompt_mask[rows, :L], real[:, :L]
    targets = x[:, 1:].clone()  # (B, L-1)
    keep = real[:, 1:] if train_on_prompt else real[:, 1:] & ~prompt[:, 1:]
    targets[~keep] = IGNORE
    return {"idx": x[:, :-1], "targets": targets, "prompt_mask": prompt[:, :-1], "padding_mask": real[:, :-1]}


@torch.no_grad()
def grow_vocabulary(model: nn.Module, vocab_size: int) -> nn.Module:
    """Give a GPT (or a bare Transformer) ``vocab_size`` token ids, keeping the old rows; in place.

    New rows of the embedding (and of an untied output matrix) start at the *mean* of the old rows,
    a choice that keeps the model's first predictions close to the pretrained ones (Hewitt 2021,
    "Initializing new word embeddings for pretrained language models"). A tied output head stays
    tied. ``model.config`` is replaced by a copy with the new ``vocab_size`` (configs are frozen).
    """
    body = model.transformer if hasattr(model, "transformer") else model
    old = body.wte.weight
    V, C = old.shape
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < V:
        raise ValueError(f"vocab_size must be an int >= the current {V} (rows are only added), got {vocab_size!r}")
    if vocab_size == V:
        return model
    new = nn.Embedding(vocab_size, C, device=old.device, dtype=old.dtype)
    new.weight[:V] = old
    new.weight[V:] = old.mean(0)
    head = getattr(model, "lm_head", None)
    tied = head is not None and head.weight is old
    body.wte = new
    if head is not None:
        if tied:
            head.weight = new.weight
        else:
            grown = nn.Linear(C, vocab_size, bias=head.bias is not None, device=old.device, dtype=old.dtype)
            grown.weight[:V] = head.weight
            grown.weight[V:] = head.weight.mean(0)
            if head.bias is not None:
                grown.bias[:V] = head.bias
                grown.bias[V:] = head.bias.mean()
            model.lm_head = grown
    # The configs are frozen: the grown model gets new ones (shared if model and body shared one).
    old_config = body.config
    body.config = dataclasses.replace(old_config, vocab_size=vocab_size)
    if hasattr(model, "config") and model is not body:
        same = model.config is old_config
        model.config = body.config if same else dataclasses.replace(model.config, vocab_size=vocab_size)
    return model


@torch.no_grad()
def generate_responses(model: nn.Module, tokenizer: ChatTokenizer, prompts, *, max_new_tokens: int = 12,
                       temperature: float = 0.0, generator: torch.Generator | None = None) -> list[str]:
    """The model's response to each prompt, read up to its first ``<|end|>`` (greedy by default).

    Prompts of the same token length are generated as one batch (no padding needed); each response
    is cut at ``<|end|>`` and decoded without special tokens.
    """
    prompts = [p.prompt if isinstance(p, Instruction) else p for p in prompts]
    device = next(model.parameters()).device
    by_length: dict[int, list[int]] = {}
    encoded = [encode_chat(tokenizer, p)[0] for p in prompts]
    for i, ids in enumerate(encoded):
        by_length.setdefault(len(ids), []).append(i)
    out: list[str] = [""] * len(prompts)
    for n, members in by_length.items():
        idx = torch.tensor([encoded[i] for i in members], device=device)
        new = model.generate(idx, max_new_tokens, temperature=temperature, generator=generator)[:, n:].tolist()
        for i, ids in zip(members, new):
            ids = ids[: ids.index(tokenizer.end_id)] if tokenizer.end_id in ids else ids
            out[i] = tokenizer.decode(ids, skip_special=True)
    return out


def instruction_accuracy(model: nn.Module, tokenizer: ChatTokenizer, instructions, *,
                         max_new_tokens: int = 12) -> dict[str, float]:
    """Fraction of greedy responses that :func:`~aigc_book.tasks.instructions.check` accepts:
    ``{"all": ..., kind: ...}`` for every kind present."""
    instructions = list(instructions)
    if not instructions or not all(isinstance(i, Instruction) for i in instructions):
        raise ValueError("pass a non-empty list of Instruction objects (from sample_instructions)")
    responses = generate_responses(model, tokenizer, instructions, max_new_tokens=max_new_tokens)
    correct: dict[str, list[bool]] = {}
    for inst, resp in zip(instructions, responses):
        correct.setdefault(inst.kind, []).append(check(inst, resp))
    every = [c for cs in correct.values() for c in cs]
    return {"all": sum(every) / len(every), **{k: sum(v) / len(v) for k, v in correct.items()}}
