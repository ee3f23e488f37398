"""Supervised fine-tuning (SFT) batches of instructions in the chat template, and the accuracy of the answers.

Introduced in chapter 4, section "Instruction following". A conversation turn is laid out in the
template of :mod:`aigc_book.text.chat_tokenizer`::

    <|user|>add 7+12<|end|><|assistant|>19<|end|>

The instructions' tokenizer is ``ChatTokenizer(CHARS)``: the characters of
:data:`~aigc_book.tasks.instructions.CHARS` with the special tokens after them, so the first 29 ids
are the bracket language's and a model pretrained on it keeps them
(:func:`~aigc_book.models.surgery.grow_vocabulary` adds the new rows).

Supervised fine-tuning trains the next-token loss on the *response* only (as InstructGPT's SFT
stage does for the demonstrations, Ouyang et al. 2022): the prompt is given, not predicted, so its
targets are -100. :func:`sft_batch` with ``train_on_prompt=True`` keeps them, for comparison.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from aigc_book.checks import is_int
from aigc_book.tasks.instructions import Instruction, as_pair, check
from aigc_book.text.chat_tokenizer import SpecialTokens
from aigc_book.training.objectives import IGNORE

__all__ = [
    "SFTData",
    "encode_sft",
    "pad_sft",
    "sft_batch",
    "generate_responses",
    "instruction_accuracy",
]

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


def encode_sft(tokenizer: SpecialTokens, pairs, *, max_length: int | None = None) -> SFTData:
    """Encode prompt/response pairs (:class:`Instruction` objects, ``(prompt, response)`` tuples or
    dicts as from :func:`~aigc_book.tasks.instructions.read_jsonl`) with the chat template.

    ``max_length``: refuse a conversation longer than this many tokens (e.g. the model's
    ``block_size + 1``, since inputs are one token shorter than the conversation).
    """
    rows, n_prompts = [], []
    for i, pair in enumerate(pairs):
        prompt, response = as_pair(pair, i)
        try:
            ids, n_prompt = tokenizer.encode_chat(prompt, response)
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
    if not is_int(batch_size) or batch_size < 1:
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
def generate_responses(model: nn.Module, tokenizer: SpecialTokens, prompts, *, max_new_tokens: int = 12,
                       temperature: float = 0.0, generator: torch.Generator | None = None) -> list[str]:
    """The model's response to each prompt, read up to its first ``<|end|>`` (greedy by default).

    Prompts of the same token length are generated as one batch (no padding needed); each response
    is cut at ``<|end|>`` and decoded without special tokens.
    """
    prompts = [p.prompt if isinstance(p, Instruction) else p for p in prompts]
    device = next(model.parameters()).device
    by_length: dict[int, list[int]] = {}
    encoded = [tokenizer.encode_chat(p)[0] for p in prompts]
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


def instruction_accuracy(model: nn.Module, tokenizer: SpecialTokens, instructions, *,
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
