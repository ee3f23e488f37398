"""``python -m aigc_book rlhf``: chapter 5's whole pipeline, then one preference-tuning method.

Introduced in chapter 5, section "All the methods on one chart". Usage::

    python -m aigc_book rlhf --method ppo|dpo|grpo|best-of-n --out DIR [--steps 150 --seed 0 --device D
                             --no-progress --overwrite]

It runs :func:`aigc_book.rlhf.pipeline.run_rlhf` — the SFT model, simulated labelers' preferences, a
reward model, then the method — with progress on stderr, and prints one JSON object last: ``method``,
``gold_reward_before``, ``gold_reward_after``, ``proxy_reward_after`` (the reward model's score, where
one is used), ``kl`` (nats per response, to the SFT model), ``wall_s`` and more. ``--steps`` is PPO's
or GRPO's iterations, DPO's optimizer steps, or n for best-of-n. The tuned chat model is written to
``--out`` at the end, atomically (an interrupted run leaves ``--out`` as it was; run the command again:
the same seed gives the same run). The seed is 0, as in the chapter.
"""

from __future__ import annotations

import argparse

from aigc_book.commands.finetune import save_model_out
from aigc_book.commands.options import check_out, check_seed, device_of, say
from aigc_book.errors import RunError, UsageError
from aigc_book.runtime import seed_everything

__all__ = ["SHARED", "SEED", "add_arguments", "interrupted", "run"]

SHARED = ("device", "seed", "progress", "overwrite")
SEED = 0  # the chapter's
MAX_BEST_OF_N = 1024


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", required=True, choices=("ppo", "dpo", "grpo", "best-of-n"))
    p.add_argument("--steps", type=int, default=150,
                   help="PPO/GRPO iterations, DPO optimizer steps, or n for best-of-n (default 150)")
    p.add_argument("--out", required=True, help="directory for the tuned chat model (written when the run ends)")


def check_args(args) -> None:
    """Every flag of ``rlhf`` that can be checked before any training."""
    if args.steps < 1:
        raise UsageError(f"--steps must be >= 1, got {args.steps}")
    if args.method == "best-of-n" and args.steps > MAX_BEST_OF_N:
        raise UsageError(f"--steps is n for best-of-n: at most {MAX_BEST_OF_N} samples per prompt, got {args.steps}")
    check_seed(args.seed)


def run(args) -> dict:
    """SFT -> preferences -> reward model -> one method (:func:`aigc_book.rlhf.pipeline.run_rlhf`)."""
    from aigc_book.rlhf.pipeline import run_rlhf
    from aigc_book.training.trainer import NonFiniteLossError

    check_args(args)
    device = device_of(args)
    out = check_out(args.out, overwrite=args.overwrite)
    seed_everything(args.seed)
    log = (lambda message: say(f"[rlhf] {message}")) if args.progress else (lambda message: None)
    try:
        summary, policy, tok = run_rlhf(args.method, steps=args.steps, seed=args.seed, device=device,
                                        progress=args.progress, log=log)
    except (NonFiniteLossError, FloatingPointError) as err:
        raise RunError(f"{err}; nothing was saved") from None
    summary["device"], summary["out"] = str(device), str(out)
    save_model_out(policy, tok, out, overwrite=args.overwrite, log={"result": summary})
    return summary


def interrupted(args) -> str:
    return ("aigc-book: interrupted; rlhf writes --out only once training has finished, so it holds what it "
            "held before: run the command again")
