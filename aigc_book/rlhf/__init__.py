"""Learning from feedback (chapter 5): reward models, PPO, best-of-n, DPO and GRPO.

The losses are importable from here, one small function each (:mod:`aigc_book.rlhf.losses`); the
trainers and the pipeline live in their own modules.
"""

from aigc_book.rlhf.best_of_n import best_of_n, best_of_n_kl
from aigc_book.rlhf.losses import (
    bradley_terry_loss,
    dpo_loss,
    gae,
    grpo_advantages,
    kl_estimates,
    masked_mean,
    ppo_policy_loss,
    ppo_value_loss,
    whiten,
)

__all__ = [
    "bradley_terry_loss",
    "dpo_loss",
    "gae",
    "grpo_advantages",
    "kl_estimates",
    "masked_mean",
    "ppo_policy_loss",
    "ppo_value_loss",
    "whiten",
    "best_of_n",
    "best_of_n_kl",
]
