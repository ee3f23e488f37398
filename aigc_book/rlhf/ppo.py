r"""PPO for a language model, from scratch: rollouts, a KL-penalised reward, GAE, and clipped updates.

Introduced in chapter 5, section "PPO from scratch". One :meth:`PPOTrainer.step` is one iteration of
the recipe of Ziegler et al. 2019 ("Fine-Tuning Language Models from Human Preferences",
arXiv:1909.08593) and InstructGPT (Ouyang et al. 2022), in the form ``trl``'s PPO used until it was
removed (Huang et al. 2024, "The N+ Implementation Details of RLHF with PPO", arXiv:2403.17031):

1. **Rollouts.** Sample one response per prompt from the policy at temperature 1 (with the KV
   cache), and keep the log-probabilities of its tokens (``old_logprobs``), the value head's values,
   and the frozen reference model's log-probabilities.
2. **Reward.** The reward model scores each whole response; the score is given at its last token.
   Every response token also pays the KL penalty :math:`-\beta\,(\log\pi(y_t) - \log\pi_\mathrm{ref}(y_t))`
   (the k1 estimator, :func:`~aigc_book.rlhf.losses.kl_estimates`), so the return of a response is
   :math:`r(x, y) - \beta\,\widehat{\mathrm{KL}}`: InstructGPT's objective.
3. **Advantages.** GAE (:func:`~aigc_book.rlhf.losses.gae`) over the response tokens, then whitened
   over the batch.
4. **Updates.** ``ppo_epochs`` passes over the batch in shuffled minibatches, each an AdamW step on
   the clipped surrogate (:func:`~aigc_book.rlhf.losses.ppo_policy_loss`) plus ``vf_coef`` times the
   clipped value loss (:func:`~aigc_book.rlhf.losses.ppo_value_loss`), plus, for **PPO-ptx**,
   ``ptx_coef`` times the next-token loss on pretraining text (InstructGPT eq. 2).
5. **KL coefficient.** Fixed, or adapted towards ``target_kl`` by the proportional controller of
   Ziegler et al. (2019, §2.2): :class:`AdaptiveKLController`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from aigc_book.models.gpt import GPT
from aigc_book.rlhf.common import check_fields, optimizer_step, trainer_generators
from aigc_book.rlhf.heads import PolicyWithValue
from aigc_book.rlhf.losses import gae, kl_estimates, masked_mean, ppo_policy_loss, ppo_value_loss, whiten
from aigc_book.rlhf.rollouts import Responses, sample_responses, token_logprobs
from aigc_book.text.chat_tokenizer import ChatTokenizer
from aigc_book.training.objectives import causal_lm_loss

__all__ = ["PPOConfig", "FixedKLController", "AdaptiveKLController", "PPOTrainer"]


@dataclass(frozen=True)
class PPOConfig:
    """Hyper-parameters of :class:`PPOTrainer`.

    Attributes:
        batch_size: prompts (so rollouts) per iteration.
        minibatch_size: rollouts per gradient step; ``batch_size`` must be a multiple of it.
        ppo_epochs: passes over each batch of rollouts.
        lr: AdamW's learning rate (constant).
        clip_eps: the ratio clip of the policy loss, ε (0.2 in the PPO paper).
        value_clip: the clip of the value loss.
        vf_coef: weight of the value loss (the value head shares the policy's trunk).
        kl_coef: β, the KL penalty's coefficient per token (the initial one with ``target_kl``).
        target_kl: None for a fixed β; else the sequence KL (nats) the adaptive controller steers to.
        horizon: the controller's horizon, in rollouts (Ziegler et al.: 10,000).
        gamma, lam: GAE's discount and λ (1 and 0.95, as in ``trl``).
        max_new_tokens: longest response.
        ptx_coef: γ of PPO-ptx, the weight of the pretraining loss (0: plain PPO).
        grad_clip: global gradient-norm clip.
    """

    batch_size: int = 64
    minibatch_size: int = 16
    ppo_epochs: int = 4
    lr: float = 3e-5
    clip_eps: float = 0.2
    value_clip: float = 0.2
    vf_coef: float = 0.1
    kl_coef: float = 0.05
    target_kl: float | None = None
    horizon: int = 10_000
    gamma: float = 1.0
    lam: float = 0.95
    max_new_tokens: int = 10
    ptx_coef: float = 0.0
    grad_clip: float = 1.0

    def __post_init__(self) -> None:
        check_fields(self, positive_ints=("batch_size", "minibatch_size", "ppo_epochs", "max_new_tokens", "horizon"),
                     positive=("lr", "clip_eps", "value_clip"),
                     nonnegative=("vf_coef", "kl_coef", "ptx_coef", "grad_clip"))
        if self.batch_size % self.minibatch_size:
            raise ValueError(f"batch_size ({self.batch_size}) must be a multiple of minibatch_size "
                             f"({self.minibatch_size})")
        if self.target_kl is not None and not (math.isfinite(self.target_kl) and self.target_kl > 0):
            raise ValueError(f"target_kl must be None or a finite number > 0, got {self.target_kl!r}")
        if not (0 <= self.gamma <= 1 and 0 <= self.lam <= 1):
            raise ValueError(f"gamma and lam must lie in [0, 1], got {self.gamma} and {self.lam}")


class FixedKLController:
    """β stays where it started."""

    def __init__(self, kl_coef: float):
        self.value = float(kl_coef)

    def update(self, kl: float, n_rollouts: int) -> None:
        pass


class AdaptiveKLController:
    r"""Ziegler et al. (2019, §2.2): with
    :math:`e = \mathrm{clip}((\mathrm{KL} - \mathrm{KL}_\mathrm{target}) / \mathrm{KL}_\mathrm{target}, -0.2, 0.2)`,
    :math:`\beta \leftarrow \beta\,(1 + K_\beta\, e)` and :math:`K_\beta = n / \mathrm{horizon}`,
    ``n`` the rollouts since the last update (as their code, openai/lm-human-preferences, and ``trl``
    compute it): β grows while the policy spends more KL than the target and shrinks while it spends less."""

    def __init__(self, kl_coef: float, target: float, horizon: int):
        self.value, self.target, self.horizon = float(kl_coef), float(target), int(horizon)

    def update(self, kl: float, n_rollouts: int) -> None:
        error = min(max((kl - self.target) / self.target, -0.2), 0.2)
        self.value *= 1 + error * n_rollouts / self.horizon


class PPOTrainer:
    """PPO against ``reward_fn`` with a KL penalty to a frozen reference.

    Args:
        policy: the GPT to train (in place); a zero-started value head is added on its trunk.
        reference: the frozen reference policy (usually a copy of the SFT model).
        tokenizer: the chat tokenizer.
        reward_fn: ``reward_fn(responses: Responses) -> (B,)`` tensor: the reward model's scores
            (or any reward). Called without gradients.
        prompt_fn: ``prompt_fn(batch_size, generator) -> list of prompts`` for each iteration.
        config: :class:`PPOConfig`.
        ptx_batch_fn: for PPO-ptx, ``ptx_batch_fn(generator) -> {"idx", "targets"}`` pretraining batches.
        seed: seeds the trainer's generator (prompts, sampling, minibatch order).
        callback: ``callback(step, responses, stats)`` after each iteration's rollouts (e.g. to
            score them with a reward the trainer does not see).
    """

    def __init__(self, policy: GPT, reference: GPT, tokenizer: ChatTokenizer, reward_fn: Callable,
                 prompt_fn: Callable, config: PPOConfig | None = None, *, ptx_batch_fn: Callable | None = None,
                 seed: int = 0, callback: Callable | None = None):
        self.config = c = config or PPOConfig()
        if c.ptx_coef > 0 and ptx_batch_fn is None:
            raise ValueError("ptx_coef > 0 (PPO-ptx) needs ptx_batch_fn, a source of pretraining batches")
        policy.requires_grad_(True)
        self.model = PolicyWithValue(policy)
        self.model.value_head.to(next(policy.parameters()).device)
        self.reference = reference.eval().requires_grad_(False)
        self.tokenizer, self.reward_fn, self.prompt_fn = tokenizer, reward_fn, prompt_fn
        self.ptx_batch_fn, self.callback = ptx_batch_fn, callback
        self.kl_ctl = (FixedKLController(c.kl_coef) if c.target_kl is None
                       else AdaptiveKLController(c.kl_coef, c.target_kl, c.horizon))
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=c.lr, weight_decay=0.0, eps=1e-5)
        self.generator, self.sample_generator = trainer_generators(policy, seed)
        self.n_steps = 0
        self.history: list[dict] = []

    @property
    def policy(self) -> GPT:
        return self.model.policy

    @torch.no_grad()
    def rollout(self, prompts) -> tuple[Responses, dict]:
        """Sample responses and everything the update needs (all detached)."""
        c = self.config
        responses = sample_responses(self.policy, self.tokenizer, prompts, max_new_tokens=c.max_new_tokens,
                                     generator=self.sample_generator)
        self.model.eval()
        logprobs, values = self.model(responses.tokens)
        ref_logprobs = token_logprobs(self.reference, responses.tokens)
        scores = self.reward_fn(responses).float().to(logprobs.device)
        mask = responses.action_mask
        k1, k3 = kl_estimates(logprobs, ref_logprobs)
        rewards = -self.kl_ctl.value * k1 * mask
        last = responses.last_index() - 1  # the action that produced the last real token
        rewards[torch.arange(len(responses)), last] += scores
        advantages, returns = gae(rewards, values, mask, c.gamma, c.lam)
        data = {"logprobs": logprobs, "values": values, "advantages": whiten(advantages, mask), "returns": returns,
                "mask": mask, "scores": scores, "kl": (k1 * mask).sum(1), "kl_k3": (k3 * mask).sum(1)}
        return responses, data

    def step(self) -> dict:
        """One PPO iteration: rollouts, then ``ppo_epochs`` passes of minibatch updates. Returns its stats."""
        c = self.config
        t0 = time.perf_counter()
        prompts = self.prompt_fn(c.batch_size, self.generator)
        responses, data = self.rollout(prompts)
        self.model.train()
        stats: dict[str, list[float]] = {"policy_loss": [], "value_loss": [], "clip_frac": [], "approx_kl": [],
                                         "ptx_loss": []}
        for _ in range(c.ppo_epochs):
            order = torch.randperm(len(responses), generator=self.generator)
            for start in range(0, len(responses), c.minibatch_size):
                rows = order[start: start + c.minibatch_size].to(responses.tokens.device)
                tokens, mask = responses.tokens[rows], data["mask"][rows]
                logprobs, values = self.model(tokens)
                pg = ppo_policy_loss(logprobs, data["logprobs"][rows], data["advantages"][rows], mask, c.clip_eps)
                vf = ppo_value_loss(values, data["values"][rows], data["returns"][rows], mask, c.value_clip)
                loss = pg + c.vf_coef * vf
                if c.ptx_coef > 0:
                    batch = {k: v.to(tokens.device) for k, v in self.ptx_batch_fn(self.generator).items()}
                    ptx = causal_lm_loss(self.policy, batch)
                    loss = loss + c.ptx_coef * ptx
                    stats["ptx_loss"].append(ptx.item())
                optimizer_step(loss, self.model, self.optimizer, c.grad_clip, f"PPO iteration {self.n_steps}")
                with torch.no_grad():
                    log_ratio = logprobs - data["logprobs"][rows]
                    stats["policy_loss"].append(pg.item())
                    stats["value_loss"].append(vf.item())
                    stats["clip_frac"].append(masked_mean(((log_ratio.exp() - 1).abs() > c.clip_eps).float(),
                                                          mask).item())
                    stats["approx_kl"].append(masked_mean(torch.expm1(-log_ratio) + log_ratio, mask).item())
        kl = data["kl"].mean().item()
        out = {"step": self.n_steps, "score": data["scores"].mean().item(), "kl": kl,
               "kl_k3": data["kl_k3"].mean().item(), "kl_coef": self.kl_ctl.value,
               "response_length": responses.response_lengths().float().mean().item(),
               **{k: sum(v) / len(v) for k, v in stats.items() if v}, "seconds": time.perf_counter() - t0}
        self.kl_ctl.update(kl, len(responses))
        if self.callback is not None:
            self.callback(self.n_steps, responses, out)
        self.n_steps += 1
        self.history.append(out)
        return out

    def config_dict(self) -> dict:
        return asdict(self.config)
