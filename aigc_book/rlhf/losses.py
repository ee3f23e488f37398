r"""The losses of learning from preferences and rewards: one small function each, formula and paper in its docstring.

Introduced in chapter 5, section "A reward model from preferences" (Bradley–Terry), and used in the
sections that follow (PPO, DPO, GRPO). Every function takes tensors and returns tensors; none
knows about models, so each can be checked alone against a hand computation (``tests/test_rlhf_losses.py``)
and, where the library still has it, against ``trl``.

Conventions: a ``mask`` is ``(B, T)``, True (or 1) on the tokens a loss is taken over (the response
tokens); "masked mean" is the sum over those tokens divided by their number, over the whole batch.
Losses are scalars to *minimise*: PPO's clipped surrogate is an objective to maximise, so
:func:`ppo_policy_loss` returns its negative.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from aigc_book.checks import is_int

__all__ = [
    "masked_mean",
    "whiten",
    "bradley_terry_loss",
    "kl_estimates",
    "gae",
    "ppo_policy_loss",
    "ppo_value_loss",
    "dpo_loss",
    "grpo_advantages",
]


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over the positions where ``mask`` is true (a scalar)."""
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp(min=1)


def whiten(x: torch.Tensor, mask: torch.Tensor, *, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """``(x - mean) / std`` over the masked positions (zero elsewhere): PPO's "advantage normalisation".

    The standard deviation is the unbiased one, as in ``trl``'s ``masked_whiten``; with
    ``shift_mean=False`` the mean is added back (rescaling only).
    """
    m = mask.to(x.dtype)
    mean = masked_mean(x, m)
    n = m.sum()
    var = ((x - mean) ** 2 * m).sum() / (n - 1).clamp(min=1)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * m


def bradley_terry_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> torch.Tensor:
    r"""The reward model's loss on preference pairs (Bradley & Terry 1952; InstructGPT eq. 1, Ouyang et al. 2022).

    The Bradley–Terry model says the chosen response wins with probability
    :math:`\sigma(r_c - r_r)`; the loss is the negative log-likelihood of the observed choices,

    .. math:: \mathcal{L} = -\frac{1}{N}\sum_i \log \sigma\big(r(x_i, y_i^c) - r(x_i, y_i^r)\big).

    ``logsigmoid`` keeps it finite for any difference (``log(sigmoid(d))`` underflows to ``-inf``
    for d below about -100). Only differences matter: adding a constant to every reward changes nothing.
    """
    if chosen_rewards.shape != rejected_rewards.shape:
        raise ValueError(f"chosen and rejected rewards must have one shape, got {tuple(chosen_rewards.shape)} "
                         f"and {tuple(rejected_rewards.shape)}")
    return -F.logsigmoid(chosen_rewards - rejected_rewards).mean()


def kl_estimates(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Per-token estimates of :math:`\mathrm{KL}(\pi \| \pi_\mathrm{ref})` from tokens sampled from :math:`\pi`.

    With :math:`\rho = \pi_\mathrm{ref}(y)/\pi(y)` for a sampled token (Schulman 2020, "Approximating
    KL divergence"):

    * k1 :math:`= -\log \rho = \log\pi - \log\pi_\mathrm{ref}`: unbiased, but often negative;
    * k3 :math:`= (\rho - 1) - \log \rho`: also unbiased (:math:`\mathbb{E}_\pi[\rho] = 1`), and never
      negative (:math:`\log \rho \le \rho - 1`), with lower variance when the two are close.

    Both are summed over a response's tokens for the sequence KL. PPO's reward uses k1 (Ziegler et
    al. 2019; InstructGPT); GRPO's loss uses k3 (Shao et al. 2024).
    """
    log_ratio = ref_logprobs - logprobs  # log rho
    k1 = -log_ratio
    k3 = torch.expm1(log_ratio) - log_ratio
    return k1, k3


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Generalised advantage estimation (Schulman et al. 2016, arXiv:1506.02438).

    With :math:`\delta_t = r_t + \gamma V_{t+1} - V_t`,
    :math:`\hat A_t = \sum_{l \ge 0} (\gamma\lambda)^l \delta_{t+l} = \delta_t + \gamma\lambda \hat A_{t+1}`,
    computed backwards; the return target of the value head is :math:`\hat A_t + V_t`.

    ``rewards``, ``values`` and ``mask`` are ``(B, T)``; ``values[:, t]`` estimates the return from
    position t. The mask marks each row's response (one contiguous run); the value after the last
    masked position is 0 (the episode has ended), and masked-out positions get advantage and return 0.
    ``lam = 1`` gives the Monte-Carlo return minus the value (unbiased, high variance); ``lam = 0``
    gives the one-step :math:`\delta_t` (biased by the value's errors, low variance).
    """
    if not (rewards.shape == values.shape == mask.shape):
        raise ValueError(f"rewards, values and mask must have one (B, T) shape, got {tuple(rewards.shape)}, "
                         f"{tuple(values.shape)} and {tuple(mask.shape)}")
    m = mask.to(values.dtype)
    values = values * m
    advantages = torch.zeros_like(values)
    next_value = torch.zeros_like(values[:, 0])
    next_advantage = torch.zeros_like(values[:, 0])
    for t in range(values.size(1) - 1, -1, -1):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantages[:, t] = (delta + gamma * lam * next_advantage) * m[:, t]
        next_value = values[:, t]  # 0 at a masked-out position: a new episode starts before it
        next_advantage = advantages[:, t]
    returns = (advantages + values) * m
    return advantages, returns


def ppo_policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                    mask: torch.Tensor, clip_eps: float = 0.2) -> torch.Tensor:
    r"""PPO's clipped surrogate, negated to be minimised (Schulman et al. 2017, arXiv:1707.06347, eq. 7).

    With the probability ratio :math:`r_t = \pi_\theta(a_t|s_t) / \pi_{\theta_\mathrm{old}}(a_t|s_t)`,

    .. math::
        L^\mathrm{CLIP} = \mathbb{E}_t\big[\min\big(r_t \hat A_t,\
        \mathrm{clip}(r_t, 1-\epsilon, 1+\epsilon)\,\hat A_t\big)\big],

    an objective to *maximise*; this returns :math:`-L^\mathrm{CLIP}` as a masked mean over tokens.
    The min makes it a pessimistic bound: with :math:`\hat A_t > 0` the gain stops once
    :math:`r_t > 1 + \epsilon`; with :math:`\hat A_t < 0`, once :math:`r_t < 1 - \epsilon`; a move in
    the harmful direction is never clipped.
    """
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * advantages
    return -masked_mean(torch.minimum(unclipped, clipped), mask)


def ppo_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
                   clip_eps: float = 0.2) -> torch.Tensor:
    r"""The value head's clipped loss (as in OpenAI's ``baselines`` PPO2 and ``trl``'s PPO, up to its factor ½).

    .. math::
        \tfrac12\,\mathbb{E}_t\big[\max\big((V_t - R_t)^2,\
        (V^\mathrm{old}_t + \mathrm{clip}(V_t - V^\mathrm{old}_t, -\epsilon, \epsilon) - R_t)^2\big)\big]

    over the masked tokens: the value may not gain by moving more than :math:`\epsilon` from where
    it was when the batch was collected.
    """
    clipped = old_values + torch.clamp(values - old_values, -clip_eps, clip_eps)
    return 0.5 * masked_mean(torch.maximum((values - returns) ** 2, (clipped - returns) ** 2), mask)


def dpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
             reference_chosen_logps: torch.Tensor, reference_rejected_logps: torch.Tensor,
             beta: float = 0.1) -> torch.Tensor:
    r"""Direct preference optimisation (Rafailov et al. 2023, arXiv:2305.18290, eq. 7).

    .. math:: \mathcal{L} = -\mathbb{E}\Big[\log\sigma\Big(\beta \log\frac{\pi_\theta(y_c|x)}{\pi_\mathrm{ref}(y_c|x)}
              - \beta \log\frac{\pi_\theta(y_r|x)}{\pi_\mathrm{ref}(y_r|x)}\Big)\Big]

    The inputs are ``(N,)`` log-probabilities of whole responses: the **sum** over their tokens
    (:func:`~aigc_book.rlhf.rollouts.sequence_logprobs`). It is the Bradley–Terry loss with the
    implicit reward :math:`\beta\log(\pi_\theta/\pi_\mathrm{ref})`, so no separate reward model and
    no sampling are needed.
    """
    chosen = policy_chosen_logps - reference_chosen_logps
    rejected = policy_rejected_logps - reference_rejected_logps
    return bradley_terry_loss(beta * chosen, beta * rejected)


def grpo_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-4) -> torch.Tensor:
    r"""Group-relative advantages (GRPO; Shao et al. 2024, "DeepSeekMath", arXiv:2402.03300, §4.1.2).

    ``rewards`` is ``(N,)`` with ``N = prompts × group_size``, the responses to one prompt in
    adjacent rows. Each response's advantage is its reward standardised within its group,

    .. math:: \hat A_i = \frac{r_i - \mathrm{mean}(r_\mathrm{group})}{\mathrm{std}(r_\mathrm{group}) + \epsilon},

    given to every token of the response (outcome supervision). No value head: the group's mean is
    the baseline. A group whose responses all earn the same reward gets advantage 0 everywhere: it
    teaches nothing. The standard deviation is the unbiased one (``torch.std``, as ``trl``'s GRPO).
    """
    if not is_int(group_size) or group_size < 2:
        raise ValueError(f"group_size must be an int >= 2 (a baseline needs two samples), got {group_size!r}")
    if rewards.dim() != 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards must be (prompts * group_size,) = a multiple of {group_size}, "
                         f"got shape {tuple(rewards.shape)}")
    g = rewards.view(-1, group_size)
    return ((g - g.mean(1, keepdim=True)) / (g.std(1, keepdim=True) + eps)).view(-1)
