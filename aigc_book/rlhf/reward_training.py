r"""Train a reward model on preference pairs, and measure how often it agrees with them.

Introduced in chapter 5, section "A reward model from preferences". The reward model
(:class:`~aigc_book.rlhf.heads.RewardModel`) is fitted by maximum likelihood under the
Bradley–Terry model, :func:`~aigc_book.rlhf.losses.bradley_terry_loss` (InstructGPT eq. 1, Ouyang
et al. 2022), with the book's :class:`~aigc_book.training.trainer.Trainer` configured by a
:class:`RewardConfig`: each step draws a minibatch of pairs and scores the chosen and the rejected
responses in one forward pass.

Two ways to grade it, both on pairs it did not train on:

* :func:`preference_accuracy`: how often it ranks the labelled winner first. The labels are noisy,
  so even the gold reward cannot reach 100%; the ceiling is
  :func:`~aigc_book.rlhf.preferences.bayes_accuracy` of the pairs' probabilities.
* :func:`true_preference_accuracy`: how often it ranks first the response the labelers prefer *on
  average* (probability above ½): the direction of the truth, free of label noise. With a length
  bias, that truth includes the bias: the reward model is meant to learn what the labelers do.

A tie (equal rewards) counts as half right in both, so a reward model that has learnt nothing, such
as a fresh one whose zero head gives every response 0, scores ½: chance level.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from aigc_book.checks import is_int, is_number
from aigc_book.rlhf.losses import bradley_terry_loss
from aigc_book.rlhf.preferences import PreferencePairs
from aigc_book.rlhf.rollouts import Responses
from aigc_book.training.trainer import TrainConfig, Trainer

__all__ = [
    "RewardConfig",
    "reward_scores",
    "pair_rewards",
    "train_reward_model",
    "preference_accuracy",
    "true_preference_accuracy",
]



@dataclass(frozen=True)
class RewardConfig:
    """Hyper-parameters of :func:`train_reward_model`.

    Attributes:
        steps: optimizer steps.
        batch_size: preference pairs per step.
        lr: the peak learning rate.
        eval_interval: with held-out pairs, evaluate every this many steps (0: at the end only).
    """

    steps: int = 600
    batch_size: int = 64
    lr: float = 3e-4
    eval_interval: int = 0

    def __post_init__(self) -> None:
        for name, low in (("steps", 1), ("batch_size", 1), ("eval_interval", 0)):
            value = getattr(self, name)
            if not is_int(value) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        lr = self.lr
        if not is_number(lr) or not math.isfinite(lr) or lr <= 0:
            raise ValueError(f"lr must be a finite number > 0, got {lr!r}")


# A RewardModel (anything with ``score(responses)``) or a function of a batch, e.g. gold_rewards.
Reward = nn.Module | Callable[[Responses], torch.Tensor]


def _device_of(model: object) -> torch.device | None:
    if isinstance(model, nn.Module):
        p = next(model.parameters(), None)
        return None if p is None else p.device
    return None


@torch.no_grad()
def reward_scores(reward: Reward, responses: Responses, *, batch_size: int = 256) -> torch.Tensor:
    """``(B,)`` rewards of ``responses``, on the CPU, computed without gradients.

    ``reward`` is a :class:`~aigc_book.rlhf.heads.RewardModel` (anything with a ``score(responses)``
    method; scored in eval mode, in minibatches of ``batch_size`` rows, on the model's device) or
    any function ``responses -> (B,)`` tensor, such as
    :func:`~aigc_book.rlhf.preferences.gold_rewards`.
    """
    if not isinstance(responses, Responses):
        raise TypeError(f"expected a Responses batch, got {type(responses).__name__}")
    if not is_int(batch_size) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if hasattr(reward, "score"):
        score = reward.score
    elif callable(reward):
        score = reward
    else:
        raise TypeError(f"reward must be a RewardModel or a function of Responses, got {type(reward).__name__}")
    was_training = reward.training if isinstance(reward, nn.Module) else None
    if isinstance(reward, nn.Module):
        reward.eval()  # no dropout: a score is a function of the response
    device = _device_of(reward)
    try:
        out = []
        for start in range(0, len(responses), batch_size):
            part = responses.select(list(range(start, min(start + batch_size, len(responses)))))
            if device is not None and part.tokens.device != device:
                part = Responses(part.prompts, part.response_ids, part.tokens.to(device),
                                 part.response_mask.to(device), part.texts)
            r = torch.as_tensor(score(part))
            if tuple(r.shape) != (len(part),):
                raise ValueError(f"the reward gave shape {tuple(r.shape)} for {len(part)} responses; expected "
                                 f"({len(part)},)")
            out.append(r.detach().float().cpu())
    finally:
        if was_training is not None:
            reward.train(was_training)
    return torch.cat(out)


def pair_rewards(reward: Reward, pairs: PreferencePairs) -> tuple[torch.Tensor, torch.Tensor]:
    """``(r_chosen, r_rejected)``, each ``(N,)``: :func:`reward_scores` of both sides of every pair."""
    if not isinstance(pairs, PreferencePairs):
        raise TypeError(f"expected PreferencePairs, got {type(pairs).__name__}")
    if len(pairs) == 0:
        raise ValueError("no pairs to score")
    return reward_scores(reward, pairs.chosen), reward_scores(reward, pairs.rejected)


def _win(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """1 where the chosen response scores higher, ½ on a tie, 0 where it scores lower."""
    return (torch.sign(r_chosen - r_rejected) + 1) / 2


def preference_accuracy(reward: Reward, pairs: PreferencePairs) -> float:
    r"""Agreement with the labels: the fraction of pairs with :math:`r(x, y_c) > r(x, y_r)` (ties count ½).

    The validation accuracy that reward-model papers report (Stiennon et al. 2020; Ouyang et al.
    2022), to be read against how often the labelers agree with one another. Bounded above, in
    expectation, by :func:`~aigc_book.rlhf.preferences.bayes_accuracy` of ``pairs.p_chosen``.
    ``reward`` is as in :func:`reward_scores`.
    """
    r_c, r_r = pair_rewards(reward, pairs)
    return float(_win(r_c, r_r).double().mean())


def true_preference_accuracy(reward: Reward, pairs: PreferencePairs) -> float:
    r"""Agreement with the labelers' *average* preference: the fraction of pairs where the reward
    model ranks first the response preferred with probability above ½ (ties, and pairs at exactly
    ½, count ½).

    With :math:`w_i = \mathbb{1}[r_c > r_r]` (½ on a tie) and :math:`p_i` = ``p_chosen``,
    :math:`\mathrm{acc} = \frac1N\sum_i \big(w_i\,\mathbb{1}[p_i > ½] + (1 - w_i)\,\mathbb{1}[p_i < ½]
    + ½\,\mathbb{1}[p_i = ½]\big)`. Unlike :func:`preference_accuracy` it can reach 1.
    """
    r_c, r_r = pair_rewards(reward, pairs)
    w = _win(r_c, r_r).double()
    p = pairs.p_chosen.detach().double().cpu()
    return float(torch.where(p > 0.5, w, torch.where(p < 0.5, 1 - w, torch.full_like(w, 0.5))).mean())


def _pad_to(x: torch.Tensor, length: int) -> torch.Tensor:
    # What follows a row's last real token is never read (a causal model's earlier positions do not
    # attend to it, and the reward is read at the last real token), so the filler id is arbitrary.
    return torch.nn.functional.pad(x, (0, length - x.size(1)), value=0)


def train_reward_model(reward_model: nn.Module, pairs: PreferencePairs, config: RewardConfig | None = None, *,
                       seed: int = 0, device: torch.device | str | None = None, progress: bool = False,
                       eval_pairs: PreferencePairs | None = None) -> dict:
    r"""Fit ``reward_model`` to ``pairs`` with the Bradley–Terry loss; returns the trainer's history.

    .. math:: \mathcal{L} = -\frac1B \sum_i \log \sigma\big(r(x_i, y_i^c) - r(x_i, y_i^r)\big)

    (Bradley & Terry 1952; InstructGPT eq. 1, Ouyang et al. 2022). Each step draws ``batch_size``
    pairs with replacement from the trainer's seeded generator, lays chosen and rejected rows into
    one ``(2B, L)`` batch and scores them in one forward pass. AdamW with no weight decay (the loss
    sees only differences of rewards, and decay would only shrink their scale), a linear warm-up
    over the first 10% of the steps (at most 50), then cosine decay to ``lr / 10``; gradients
    clipped at norm 1. A reward model overfits its comparisons quickly (InstructGPT trained for a
    single epoch; Ouyang et al. 2022, §3.5 and Appendix C.2): watch the held-out numbers.

    Args:
        reward_model: a :class:`~aigc_book.rlhf.heads.RewardModel` (``forward(tokens, last_index) -> (B,)``),
            trained in place and left in eval mode.
        pairs: the training comparisons.
        config: a :class:`RewardConfig` (steps, pairs per step, peak learning rate, evaluation interval).
        seed: the seed of the batch draws.
        device: where to train (default: the model's device).
        progress: show a progress bar.
        eval_pairs: held-out pairs; with them, ``history["evals"]`` records ``val_loss`` (the
            Bradley–Terry loss) and ``val_accuracy`` (:func:`preference_accuracy`) every
            ``config.eval_interval`` steps (0: at the end only).

    Returns:
        the :class:`~aigc_book.training.trainer.Trainer`'s ``history``: ``step``, ``train_loss``,
        ``lr``, ``ms`` per step and ``evals``.
    """
    if not isinstance(reward_model, nn.Module):
        raise TypeError(f"reward_model must be an nn.Module (a RewardModel), got {type(reward_model).__name__}")
    if not isinstance(pairs, PreferencePairs):
        raise TypeError(f"pairs must be PreferencePairs, got {type(pairs).__name__}")
    if len(pairs) == 0:
        raise ValueError("no pairs to train on")
    if eval_pairs is not None and not isinstance(eval_pairs, PreferencePairs):
        raise TypeError(f"eval_pairs must be PreferencePairs or None, got {type(eval_pairs).__name__}")
    c = config or RewardConfig()
    if not isinstance(c, RewardConfig):
        raise TypeError(f"config must be a RewardConfig, got {type(c).__name__}")
    if not is_int(seed):
        raise ValueError(f"seed must be an int, got {seed!r}")
    batch_size = c.batch_size

    # Chosen rows then rejected rows, padded to one width; a batch is cut to its longest row.
    width = max(pairs.chosen.tokens.size(1), pairs.rejected.tokens.size(1))
    tokens = torch.cat([_pad_to(pairs.chosen.tokens.cpu(), width), _pad_to(pairs.rejected.tokens.cpu(), width)])
    last = torch.cat([pairs.chosen.last_index().cpu(), pairs.rejected.last_index().cpu()])
    n = len(pairs)

    def batch_fn(split: str, generator: torch.Generator) -> dict:
        rows = torch.randint(n, (batch_size,), generator=generator)
        rows = torch.cat([rows, rows + n])  # (2B,): the chosen responses, then their rejected partners
        idx = last[rows]
        return {"tokens": tokens[rows, : int(idx.max()) + 1], "last_index": idx}

    def loss_fn(model: nn.Module, batch: dict) -> torch.Tensor:
        r = model(batch["tokens"], batch["last_index"]).float()  # (2B,)
        return bradley_terry_loss(r[:batch_size], r[batch_size:])

    eval_fn: Callable | None = None
    if eval_pairs is not None:
        def eval_fn(model: nn.Module) -> dict[str, float]:
            r_c, r_r = pair_rewards(model, eval_pairs)
            return {"val_loss": float(bradley_terry_loss(r_c, r_r)), "val_accuracy": float(_win(r_c, r_r).mean())}

    train_config = TrainConfig(steps=c.steps, lr=float(c.lr), warmup_steps=max(1, min(50, c.steps // 10)),
                               weight_decay=0.0, grad_clip=1.0, eval_interval=c.eval_interval, eval_splits=(),
                               seed=seed, progress=progress)
    trainer = Trainer(reward_model, batch_fn, loss_fn, train_config, device=device, eval_fn=eval_fn)
    history = trainer.train()
    reward_model.eval()
    return history
