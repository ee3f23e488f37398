"""A GPT trunk with a scalar head: the reward model, and the policy's value head.

Introduced in chapter 5, section "A reward model from preferences". Both read the final hidden
states of the Transformer (:attr:`~aigc_book.models.gpt.CausalLMOutput.last_hidden_state`) through
one ``Linear(n_embd, 1)``:

* :class:`RewardModel` reads the hidden state of the **last real token** of each row: one number
  per (prompt, response). As in InstructGPT (Ouyang et al. 2022, §3.5), it starts from the
  supervised model with the output (unembedding) layer replaced by the scalar head.
* :class:`PolicyWithValue` reads **every position**: ``values[:, t]`` estimates the return from
  position t, what PPO's advantages are measured against. It shares the policy's trunk, as
  ``trl``'s ``AutoModelForCausalLMWithValueHead`` did.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from aigc_book.models.gpt import GPT
from aigc_book.rlhf.rollouts import Responses, token_logprobs

__all__ = ["RewardModel", "PolicyWithValue"]


class RewardModel(nn.Module):
    """``r(x, y)``: a copy of ``gpt``'s Transformer trunk plus a scalar head on the last real token.

    ``forward(tokens, last_index) -> (B,)``: ``tokens`` ``(B, L)`` right-padded rows, ``last_index``
    ``(B,)`` the position of each row's last real token. :meth:`score` takes a :class:`Responses`.
    The head starts at zero, so every reward starts at 0 and training sets the scale.
    """

    def __init__(self, gpt: GPT):
        super().__init__()
        self.transformer = copy.deepcopy(gpt.transformer).requires_grad_(True)  # even if gpt is frozen
        self.config = copy.deepcopy(gpt.config)  # its own: growing the policy's vocabulary later leaves it alone
        self.head = nn.Linear(gpt.config.n_embd, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, tokens: torch.Tensor, last_index: torch.Tensor) -> torch.Tensor:
        hidden = self.transformer(tokens).last_hidden_state  # (B, L, C)
        last = hidden[torch.arange(tokens.size(0), device=tokens.device), last_index]  # (B, C)
        return self.head(last).squeeze(-1)

    def score(self, responses: Responses) -> torch.Tensor:
        """``(B,)`` rewards of a batch of responses."""
        return self(responses.tokens, responses.last_index())


class PolicyWithValue(nn.Module):
    """The policy (a GPT, trained in place) and a value head on its final hidden states.

    ``forward(tokens) -> (logprobs, values)``, both ``(B, L - 1)`` and aligned with the targets
    ``tokens[:, 1:]`` (:func:`~aigc_book.rlhf.rollouts.token_logprobs`): ``values[:, t]`` is read at the
    state that chooses ``tokens[:, t + 1]``. The value head starts at zero.
    """

    def __init__(self, policy: GPT):
        super().__init__()
        self.policy = policy
        self.value_head = nn.Linear(policy.config.n_embd, 1)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logprobs, hidden = token_logprobs(self.policy, tokens, return_hidden=True)
        return logprobs, self.value_head(hidden).squeeze(-1)
