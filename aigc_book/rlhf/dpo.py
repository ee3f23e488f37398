r"""Direct preference optimisation: train the policy on preference pairs, with no reward model and no sampling.

Introduced in chapter 5, section "DPO: preferences without a reward model". Rafailov et al. (2023,
arXiv:2305.18290) show that the KL-regularised reward maximisation PPO performs has a closed-form
optimum, :math:`\pi^*(y|x) \propto \pi_\mathrm{ref}(y|x)\, e^{r(x,y)/\beta}`; solving it for
:math:`r` and putting that into the Bradley–Terry loss gives a loss on the policy itself
(:func:`~aigc_book.rlhf.losses.dpo_loss`). :func:`train_dpo` minimises it with the book's
:class:`~aigc_book.training.trainer.Trainer`, configured by a :class:`DPOConfig`.

The log-probabilities are those of whole responses, the **sum** over their tokens. With
``average=True`` they are the per-token *mean* instead, which some from-scratch implementations use:
that is no longer the log-probability the derivation needs, and it divides the effective β of every
pair by its length (chapter 5 measures what that does).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from aigc_book.models.gpt import GPT
from aigc_book.rlhf.common import check_fields
from aigc_book.rlhf.losses import dpo_loss
from aigc_book.rlhf.preferences import PreferencePairs
from aigc_book.rlhf.rollouts import token_logprobs
from aigc_book.training.trainer import TrainConfig, Trainer

__all__ = ["DPOConfig", "train_dpo"]


@dataclass(frozen=True)
class DPOConfig:
    """Hyper-parameters of :func:`train_dpo`.

    Attributes:
        steps: optimizer steps (AdamW, no weight decay, warm-up then cosine decay, gradients clipped
            at norm 1).
        batch_size: preference pairs per step.
        lr: the peak learning rate.
        beta: DPO's β, the strength of the implicit KL leash (larger: stays closer to the reference).
        average: use per-token mean log-probabilities instead of sums (to show what goes wrong).
    """

    steps: int = 150
    batch_size: int = 32
    lr: float = 1e-4
    beta: float = 0.1
    average: bool = False

    def __post_init__(self) -> None:
        check_fields(self, positive_ints=("steps", "batch_size"), positive=("lr", "beta"))


def _logps(model: nn.Module, tokens: torch.Tensor, mask: torch.Tensor, average: bool) -> torch.Tensor:
    total = (token_logprobs(model, tokens) * mask).sum(1)
    return total / mask.sum(1).clamp(min=1) if average else total


def train_dpo(policy: GPT, reference: GPT, pairs: PreferencePairs, config: DPOConfig | None = None, *,
              seed: int = 0, progress: bool = False) -> dict:
    """Fit ``policy`` (in place) to ``pairs`` with the DPO loss against the frozen ``reference``.

    Args:
        policy: the GPT to train, usually a copy of ``reference``.
        reference: the frozen SFT model; its log-probabilities are computed once, up front.
        pairs: labelled comparisons (:class:`~aigc_book.rlhf.preferences.PreferencePairs`).
        config: a :class:`DPOConfig` (steps, batch size, learning rate, β, averaging).
        seed: the seed of the batch draws.
        progress: show a progress bar.

    Returns:
        the trainer's history.
    """
    c = config or DPOConfig()
    if not isinstance(c, DPOConfig):
        raise TypeError(f"config must be a DPOConfig, got {type(c).__name__}")
    if not isinstance(pairs, PreferencePairs) or len(pairs) == 0:
        raise ValueError("pairs must be a non-empty PreferencePairs")
    batch_size, average = c.batch_size, c.average
    device = next(policy.parameters()).device
    policy.requires_grad_(True)
    width = max(pairs.chosen.tokens.size(1), pairs.rejected.tokens.size(1))
    def widen(x: torch.Tensor, fill) -> torch.Tensor:  # the padding value does not matter: it is masked out
        out = x.new_full((x.size(0), width), fill)
        out[:, : x.size(1)] = x
        return out

    tokens = torch.cat([widen(pairs.chosen.tokens, 0), widen(pairs.rejected.tokens, 0)]).to(device)  # (2N, W)
    mask = torch.cat([widen(pairs.chosen.response_mask, False), widen(pairs.rejected.response_mask, False)])
    mask = mask[:, 1:].to(device).float()  # aligned with the targets
    n = len(pairs)
    with torch.no_grad():
        reference.eval()
        ref = torch.cat([_logps(reference, tokens[i: i + 512], mask[i: i + 512], average)
                         for i in range(0, 2 * n, 512)])

    def batch_fn(split: str, generator: torch.Generator) -> dict:
        rows = torch.randint(n, (batch_size,), generator=generator)
        rows = torch.cat([rows, rows + n]).to(device)  # chosen rows, then their rejected partners
        return {"tokens": tokens[rows], "mask": mask[rows], "ref": ref[rows]}

    def loss_fn(model: nn.Module, batch: dict) -> torch.Tensor:
        logps = _logps(model, batch["tokens"], batch["mask"], average)
        B = batch_size
        return dpo_loss(logps[:B], logps[B:], batch["ref"][:B], batch["ref"][B:], c.beta)

    train_config = TrainConfig(steps=c.steps, lr=float(c.lr), warmup_steps=max(1, min(30, c.steps // 10)),
                               weight_decay=0.0, grad_clip=1.0, eval_splits=(), seed=seed, progress=progress)
    history = Trainer(policy, batch_fn, loss_fn, train_config, device=device).train()
    policy.eval()
    return history
