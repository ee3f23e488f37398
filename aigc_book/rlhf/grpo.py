r"""GRPO: group-relative policy optimisation with a verifiable reward, no value head and no reward model.

Introduced in chapter 5, section "GRPO: a verifiable reward and no value head". Shao et al. 2024
("DeepSeekMath", arXiv:2402.03300, §4.1) replace PPO's value head with a baseline that needs no
training: sample a *group* of G responses to each prompt, and measure each response against the
others (:func:`~aigc_book.rlhf.losses.grpo_advantages`). The reward here is *verifiable*: a program
checks the answer (:func:`aigc_book.tasks.instructions.check`), so no reward model is learned and
none can be gamed. One :meth:`GRPOTrainer.step`:

1. sample ``group_size`` responses to each of ``prompts_per_step`` prompts (temperature 1);
2. reward each, standardise within its group, and give that advantage to every token of the response;
3. ``epochs`` passes of minibatch updates on PPO's clipped surrogate
   (:func:`~aigc_book.rlhf.losses.ppo_policy_loss`) plus :math:`\beta` times the k3 estimate of
   :math:`\mathrm{KL}(\pi_\theta\|\pi_\mathrm{ref})` per token, as a loss term rather than inside the
   reward (DeepSeekMath eq. 3–4). The surrogate is averaged over all tokens of the minibatch, not
   per response and then over responses as in the paper: the per-response average gives a short
   response's tokens more weight (Yu et al. 2025, "DAPO", arXiv:2503.14476, §3.3; ``trl``'s default).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from aigc_book.checks import is_int
from aigc_book.models.gpt import GPT
from aigc_book.rlhf.common import check_fields, optimizer_step, trainer_generators
from aigc_book.rlhf.losses import grpo_advantages, kl_estimates, masked_mean, ppo_policy_loss
from aigc_book.rlhf.rollouts import sample_responses, token_logprobs
from aigc_book.text.chat_tokenizer import ChatTokenizer

__all__ = ["GRPOConfig", "GRPOTrainer"]


@dataclass(frozen=True)
class GRPOConfig:
    """Hyper-parameters of :class:`GRPOTrainer` (``prompts_per_step * group_size`` rollouts per step)."""

    prompts_per_step: int = 8
    group_size: int = 8
    minibatch_size: int = 16
    epochs: int = 2
    lr: float = 3e-5
    clip_eps: float = 0.2
    kl_coef: float = 0.04  # β; DeepSeekMath used 0.04
    max_new_tokens: int = 10
    grad_clip: float = 1.0

    def __post_init__(self) -> None:
        check_fields(self, positive_ints=("prompts_per_step", "minibatch_size", "epochs", "max_new_tokens"),
                     positive=("lr", "clip_eps"), nonnegative=("kl_coef", "grad_clip"))
        if not is_int(self.group_size) or self.group_size < 2:
            raise ValueError(f"group_size must be an int >= 2 (a baseline needs two samples), got {self.group_size!r}")
        if (self.prompts_per_step * self.group_size) % self.minibatch_size:
            raise ValueError(f"prompts_per_step * group_size ({self.prompts_per_step * self.group_size}) must be a "
                             f"multiple of minibatch_size ({self.minibatch_size})")


class GRPOTrainer:
    """GRPO on ``reward_fn`` with a k3 KL term to a frozen reference.

    Args:
        policy: the GPT to train, in place.
        reference: the frozen reference policy.
        tokenizer: the chat tokenizer.
        reward_fn: ``reward_fn(responses) -> (B,)`` tensor, e.g. 1 for an answer the checker accepts.
        prompt_fn: ``prompt_fn(n, generator) -> list of n prompts``.
        config: :class:`GRPOConfig`.
        seed: seeds the trainer's generator.
        callback: ``callback(step, responses, stats)`` after each step's rollouts.
    """

    def __init__(self, policy: GPT, reference: GPT, tokenizer: ChatTokenizer, reward_fn: Callable,
                 prompt_fn: Callable, config: GRPOConfig | None = None, *, seed: int = 0,
                 callback: Callable | None = None):
        self.config = c = config or GRPOConfig()
        self.policy, self.reference = policy.requires_grad_(True), reference.eval().requires_grad_(False)
        self.tokenizer, self.reward_fn, self.prompt_fn, self.callback = tokenizer, reward_fn, prompt_fn, callback
        self.optimizer = torch.optim.AdamW(policy.parameters(), lr=c.lr, weight_decay=0.0, eps=1e-5)
        self.generator, self.sample_generator = trainer_generators(policy, seed)
        self.n_steps = 0
        self.history: list[dict] = []

    def step(self) -> dict:
        """One GRPO step; returns its stats (mean reward, KL to the reference, ...)."""
        c = self.config
        t0 = time.perf_counter()
        prompts = self.prompt_fn(c.prompts_per_step, self.generator)
        responses = sample_responses(self.policy, self.tokenizer, prompts, max_new_tokens=c.max_new_tokens,
                                     generator=self.sample_generator, num_return_sequences=c.group_size)
        with torch.no_grad():
            old_logprobs = token_logprobs(self.policy, responses.tokens)
            ref_logprobs = token_logprobs(self.reference, responses.tokens)
            rewards = self.reward_fn(responses).float().to(old_logprobs.device)
            advantages = grpo_advantages(rewards, c.group_size)[:, None].expand_as(old_logprobs)
        mask = responses.action_mask
        k1_old = (kl_estimates(old_logprobs, ref_logprobs)[0] * mask).sum(1)
        self.policy.train()
        losses, kls = [], []
        for _ in range(c.epochs):
            order = torch.randperm(len(responses), generator=self.generator).to(mask.device)
            for start in range(0, len(responses), c.minibatch_size):
                rows = order[start: start + c.minibatch_size]
                logprobs = token_logprobs(self.policy, responses.tokens[rows])
                k3 = kl_estimates(logprobs, ref_logprobs[rows])[1]
                kl_term = masked_mean(k3, mask[rows])
                loss = ppo_policy_loss(logprobs, old_logprobs[rows], advantages[rows], mask[rows], c.clip_eps)
                loss = loss + c.kl_coef * kl_term
                optimizer_step(loss, self.policy, self.optimizer, c.grad_clip, f"GRPO step {self.n_steps}")
                losses.append(loss.item())
                kls.append(kl_term.item())
        self.policy.eval()
        groups = rewards.view(-1, c.group_size)
        out = {"step": self.n_steps, "score": rewards.mean().item(), "kl": k1_old.mean().item(),
               "loss": sum(losses) / len(losses), "kl_term": sum(kls) / len(kls),
               "groups_without_signal": (groups.std(1) == 0).float().mean().item(),
               "response_length": responses.response_lengths().float().mean().item(),
               "seconds": time.perf_counter() - t0}
        if self.callback is not None:
            self.callback(self.n_steps, responses, out)
        self.n_steps += 1
        self.history.append(out)
        return out
