"""Multi-turn conversations for supervised fine-tuning: several instructions in one chat.

Introduced in chapter 8, section "Supervised fine-tuning in conversations". Chapter 4 fine-tuned on
one exchange per example; a chat model also has to answer the *latest* message of a longer
conversation, so here an example holds one to ``max_turns`` exchanges in the chat template::

    <|user|>sort dbca<|end|><|assistant|>abcd<|end|><|user|>add 7+5<|end|><|assistant|>12<|end|>

and the loss falls on every assistant response (and its closing ``<|end|>``), never on the user's
turns — the masking InstructGPT's supervised stage and chat fine-tuning use (Ouyang et al. 2022,
arXiv:2203.02155). The result is chapter 4's :class:`~aigc_book.tasks.sft.SFTData`, so
:func:`~aigc_book.tasks.sft.sft_batch` draws batches from it unchanged: its ``prompt_mask`` is True
on every token that is not part of a response.
"""

from __future__ import annotations

import numpy as np

from aigc_book.checks import is_int
from aigc_book.tasks import instructions
from aigc_book.tasks.sft import SFTData, pad_sft

__all__ = ["sample_conversations", "encode_conversations"]


def sample_conversations(n: int, *, seed: int, max_turns: int = 3, exclude=(),
                         config: instructions.InstructionConfig | None = None) -> list[list[instructions.Instruction]]:
    """``n`` conversations of 1..``max_turns`` instructions each (uniform), the same for the same seed.

    ``exclude``: prompts never to use (the held-out ones), so the test set stays unseen where the
    family has enough prompts.
    """
    if not is_int(n) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if not is_int(max_turns) or max_turns < 1:
        raise ValueError(f"max_turns must be a positive int, got {max_turns!r}")
    rng = np.random.default_rng(seed)
    banned = set(p.prompt if isinstance(p, instructions.Instruction) else p for p in exclude)
    conversations = []
    while len(conversations) < n:
        turns = []
        for _ in range(int(rng.integers(1, max_turns + 1))):
            inst = instructions.sample_instruction(rng, config)
            if inst.prompt not in banned:
                turns.append(inst)
        if turns:
            conversations.append(turns)
    return conversations


def encode_conversations(tokenizer, conversations, *, max_length: int | None = None,
                         truncate: bool = False) -> SFTData:
    """Encode conversations (lists of :class:`~aigc_book.tasks.instructions.Instruction` or
    ``(prompt, response)`` pairs) in the chat template, right-padded; ``prompt_mask`` is True on the
    users' turns, so only responses are trained on. A conversation longer than ``max_length``
    tokens is an error naming it, or with ``truncate`` keeps its first turns that fit (a first
    turn that does not fit is still an error)."""
    rows = []
    for i, turns in enumerate(conversations):
        ids: list[int] = []
        is_prompt: list[bool] = []
        for j, turn in enumerate(turns):
            prompt, response = instructions.as_pair(turn, i)
            turn_ids, n_prompt = tokenizer.encode_chat(prompt, response)
            if truncate and j > 0 and max_length is not None and len(ids) + len(turn_ids) > max_length:
                break  # whole turns only: a conversation cut inside a turn would teach a broken template
            ids += turn_ids
            is_prompt += [True] * n_prompt + [False] * (len(turn_ids) - n_prompt)
        if not ids:
            raise ValueError(f"conversation {i} has no turns")
        if max_length is not None and len(ids) > max_length:
            raise ValueError(f"conversation {i} is {len(ids)} tokens long, more than max_length={max_length}")
        rows.append((ids, is_prompt))
    if not rows:
        raise ValueError("no conversations to encode")
    return pad_sft(rows, tokenizer.pad_id)
