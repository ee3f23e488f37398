"""Responses as token tensors: sample them (with the KV cache), pack them, and score their tokens.

Introduced in chapter 5, section "The setting: a policy, a gold reward and labelers". Every method
of the chapter handles a batch of conversations in one layout, :class:`Responses`: each row is the
chat template's prompt ``<|user|>{prompt}<|end|><|assistant|>`` followed by the response's token ids
(ending with ``<|end|>`` when the model closed it) and right-padded with ``<|pad|>``. Right padding
needs no attention mask in a causal model: a padded position comes after every real one, so no real
token attends to it.

Token log-probabilities are aligned with the *targets*: ``token_logprobs(model, tokens)[:, t]`` is
``log p(tokens[:, t + 1] | tokens[:, :t + 1])``, and :attr:`Responses.action_mask` (``response_mask[:, 1:]``)
marks the positions whose target is a response token: the "actions" of reinforcement learning.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from aigc_book.checks import is_int
from aigc_book.generation.config import GenerationConfig
from aigc_book.generation.search import generate
from aigc_book.tasks.instructions import Instruction
from aigc_book.text.chat_tokenizer import ChatTokenizer

__all__ = ["Responses", "pack", "sample_responses", "token_logprobs", "sequence_logprobs"]


@dataclass
class Responses:
    """A batch of prompt + response rows.

    Attributes:
        prompts: the prompt texts, one per row.
        response_ids: each row's response token ids (``<|end|>`` last when the response was closed).
        tokens: ``(B, L)`` long, prompt ids then response ids, right-padded with ``<|pad|>``.
        response_mask: ``(B, L)`` bool, True on the response tokens.
        texts: the responses as text (special tokens left out).
    """

    prompts: list[str]
    response_ids: list[list[int]]
    tokens: torch.Tensor
    response_mask: torch.Tensor
    texts: list[str]

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def action_mask(self) -> torch.Tensor:
        """``(B, L - 1)`` bool: True where the *target* token is a response token (aligned with
        :func:`token_logprobs`)."""
        return self.response_mask[:, 1:]

    def response_lengths(self) -> torch.Tensor:
        """``(B,)`` response tokens per row (``<|end|>`` included)."""
        return self.response_mask.sum(1)

    def last_index(self) -> torch.Tensor:
        """``(B,)`` position of each row's last real token (where a reward model reads its score)."""
        L = self.response_mask.size(1)
        pos = torch.arange(L, device=self.response_mask.device).expand_as(self.response_mask)
        return torch.where(self.response_mask, pos, -1).amax(1)

    def finished(self, end_id: int) -> list[bool]:
        """Whether each response was closed with ``<|end|>``."""
        return [bool(ids) and ids[-1] == end_id for ids in self.response_ids]

    def select(self, rows) -> Responses:
        """The rows ``rows`` (a list or a 1-D tensor of indices), in that order."""
        rows = torch.as_tensor(rows, dtype=torch.long)
        keep = rows.tolist()
        return Responses([self.prompts[i] for i in keep], [self.response_ids[i] for i in keep],
                         self.tokens[rows.to(self.tokens.device)], self.response_mask[rows.to(self.tokens.device)],
                         [self.texts[i] for i in keep])


def _prompt_text(p) -> str:
    return p.prompt if isinstance(p, Instruction) else p


def pack(tokenizer: ChatTokenizer, prompts, response_ids, *, device=None) -> Responses:
    """Lay out ``prompts`` (texts or :class:`Instruction`) and their ``response_ids`` in the chat
    template, right-padded into one :class:`Responses`."""
    prompts = [_prompt_text(p) for p in prompts]
    response_ids = [list(map(int, r)) for r in response_ids]
    if len(prompts) != len(response_ids) or not prompts:
        raise ValueError(f"need one response per prompt (and at least one), got {len(prompts)} prompts "
                         f"and {len(response_ids)} responses")
    rows = [tokenizer.encode_chat(p)[0] for p in prompts]
    L = max(len(r) + len(ids) for r, ids in zip(rows, response_ids))
    tokens = torch.full((len(rows), L), tokenizer.pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), L, dtype=torch.bool)
    for i, (r, ids) in enumerate(zip(rows, response_ids)):
        tokens[i, : len(r) + len(ids)] = torch.tensor(r + ids, dtype=torch.long)
        mask[i, len(r): len(r) + len(ids)] = True
    if any(not ids for ids in response_ids):
        raise ValueError("every response needs at least one token (a reward model reads its last one)")
    texts = [tokenizer.decode([t for t in ids if t != tokenizer.end_id], skip_special=True) for ids in response_ids]
    return Responses(prompts, response_ids, tokens.to(device), mask.to(device), texts)


def sample_responses(model: nn.Module, tokenizer: ChatTokenizer, prompts, *, max_new_tokens: int,
                     generator: torch.Generator | None = None, temperature: float = 1.0,
                     num_return_sequences: int = 1) -> Responses:
    """Sample a response to each prompt from ``model`` (a GPT), stopping at ``<|end|>``.

    Prompts of one token length are generated together, with the KV cache (chapter 2); each
    response keeps its tokens up to and including its first ``<|end|>``. With
    ``num_return_sequences = n`` each prompt gets n independent responses, in adjacent rows.
    ``temperature=1`` samples the model's own distribution, which is what policy-gradient methods
    need; ``0`` is greedy. ``generator`` must live on the model's device (a CUDA generator for a
    model on the GPU).
    """
    prompts = [_prompt_text(p) for p in prompts]
    if not is_int(max_new_tokens) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    device = next(model.parameters()).device
    encoded = [tokenizer.encode_chat(p)[0] for p in prompts]
    longest = max(map(len, encoded), default=0) + max_new_tokens
    if longest > model.config.block_size + 1:
        raise ValueError(f"a prompt plus max_new_tokens={max_new_tokens} is {longest} tokens, more than the model's "
                         f"context ({model.config.block_size}) allows to score; shorten the prompt or the response")
    groups: dict[int, list[int]] = {}
    for i, ids in enumerate(encoded):
        groups.setdefault(len(ids), []).append(i)
    n = num_return_sequences
    responses: list[list[int]] = [[] for _ in range(len(prompts) * n)]
    sample = temperature > 0
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=sample, num_return_sequences=n,
                              temperature=float(temperature) if sample else 1.0, eos_token_id=tokenizer.end_id)
    for length, members in sorted(groups.items()):
        idx = torch.tensor([encoded[i] for i in members], device=device)
        out = generate(model, idx, config, generator=generator).sequences[:, length:].tolist()
        for j, new in enumerate(out):
            cut = new.index(tokenizer.end_id) + 1 if tokenizer.end_id in new else len(new)
            responses[members[j // n] * n + j % n] = new[:cut]
    return pack(tokenizer, [p for p in prompts for _ in range(n)], responses, device=device)


def token_logprobs(model: nn.Module, tokens: torch.Tensor, *, return_hidden: bool = False):
    """``(B, L - 1)`` log-probabilities of each next token: ``[:, t] = log p(tokens[:, t+1] | tokens[:, :t+1])``.

    With ``return_hidden`` also the ``(B, L - 1, C)`` final hidden states (what a value head reads).
    """
    out = model(tokens[:, :-1])
    logp = F.log_softmax(out.logits.float(), dim=-1).gather(-1, tokens[:, 1:, None]).squeeze(-1)
    return (logp, out.last_hidden_state) if return_hidden else logp


def sequence_logprobs(model: nn.Module, responses: Responses, *, average: bool = False) -> torch.Tensor:
    """``(B,)`` log-probability of each response given its prompt: the *sum* over response tokens
    (``average=True``: the mean, which is not a log-probability; chapter 5 shows what it does to DPO)."""
    mask = responses.action_mask.float()
    total = (token_logprobs(model, responses.tokens) * mask).sum(1)
    return total / mask.sum(1).clamp(min=1) if average else total
