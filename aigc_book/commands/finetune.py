"""``python -m aigc_book finetune``: fine-tune a ``train-gpt`` model on prompt/response pairs.

Introduced in chapter 4, section "Instruction following". Usage::

    python -m aigc_book finetune --model DIR --data PAIRS.jsonl --method full|lora --out DIR
                                 [--steps 200 --lr X --batch-size 8 --seed 1337 --lora-r 8 --lora-alpha 16
                                  --device D --no-progress --overwrite]

It trains the model on ``{"prompt": ..., "response": ...}`` lines laid out in the chat template
(:mod:`aigc_book.adaptation.finetune`), fully or with LoRA (saved merged), prints one JSON object last
(``initial_loss``, ``final_loss``, ``trainable_params``, ``wall_s``, ...) and writes ``--out`` only when
it has finished, atomically (:func:`save_model_out`, which ``rlhf`` uses too). ``sample --model DIR`` on
the result treats ``--prompt`` as the user's turn.
"""

from __future__ import annotations

import argparse
import math
import statistics

from aigc_book.commands.options import add_flag, check_out, check_seed, device_of
from aigc_book.errors import RunError, UsageError
from aigc_book.models.io import CheckpointError
from aigc_book.runtime import seed_everything

__all__ = ["SHARED", "SEED", "add_arguments", "interrupted", "run", "save_model_out"]

SHARED = ("device", "seed", "progress", "overwrite")
SEED = 1337  # train-gpt's, whose models it fine-tunes


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_flag(p, "--model", "--base", required=True, help="a directory train-gpt (or finetune) wrote")
    p.add_argument("--data", required=True, help='JSON Lines, one {"prompt": ..., "response": ...} per line')
    p.add_argument("--method", required=True, choices=("full", "lora"),
                   help="full: train every weight; lora: low-rank updates of every block's linears")
    p.add_argument("--out", required=True, help="directory for the fine-tuned model (written when training ends)")
    p.add_argument("--steps", type=int, default=200, help="optimizer steps (default 200)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default 3e-4 full, 3e-3 lora)")
    add_flag(p, "--batch-size", "--batch", type=int, default=8, help="pairs per step (default 8)")
    p.add_argument("--lora-r", type=int, default=None, help="LoRA rank (default 8)")
    p.add_argument("--lora-alpha", type=float, default=None, help="LoRA scale numerator, update x alpha/r (default 16)")


def check_args(args) -> None:
    """Every flag of ``finetune`` that can be checked without reading the data or the model."""
    for name in ("steps", "batch_size"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.lr is not None and not (math.isfinite(args.lr) and args.lr > 0):
        raise UsageError(f"--lr must be a finite number > 0, got {args.lr}")
    if args.method != "lora" and (args.lora_r is not None or args.lora_alpha is not None):
        raise UsageError("--lora-r and --lora-alpha apply to --method lora only")
    if args.lora_r is not None and args.lora_r < 1:
        raise UsageError(f"--lora-r must be >= 1, got {args.lora_r}")
    if args.lora_alpha is not None and not (math.isfinite(args.lora_alpha) and args.lora_alpha > 0):
        raise UsageError(f"--lora-alpha must be a finite number > 0, got {args.lora_alpha}")
    check_seed(args.seed)


def run(args) -> dict:
    """Fine-tune a ``train-gpt`` model on prompt/response pairs (:mod:`aigc_book.adaptation.finetune`)."""
    from aigc_book.adaptation.finetune import MAX_DATA_BYTES, FinetuneConfig, check_pairs, finetune, load_base
    from aigc_book.tasks.instructions import read_jsonl
    from aigc_book.training.trainer import NonFiniteLossError

    check_args(args)
    try:
        pairs, lines = read_jsonl(args.data, line_numbers=True, max_bytes=MAX_DATA_BYTES)
    except (OSError, ValueError) as err:
        raise UsageError(f"--data {err}") from None
    device = device_of(args)
    out = check_out(args.out, overwrite=args.overwrite, base=args.model)
    try:
        model, tok = load_base(args.model, device=device)
    except (CheckpointError, ValueError, TypeError) as err:
        raise UsageError(f"--model {err}") from None
    try:
        check_pairs(tok, pairs, block_size=model.config.block_size, lines=lines, source=args.data)
    except (ValueError, TypeError) as err:
        raise UsageError(f"--data {err}") from None
    config = FinetuneConfig(method=args.method, steps=args.steps, lr=args.lr, batch_size=args.batch_size,
                            seed=args.seed, lora_r=args.lora_r or 8, lora_alpha=args.lora_alpha or 16.0)
    lr = config.peak_lr
    seed_everything(args.seed)
    try:
        result = finetune(model, tok, pairs, config, progress=args.progress)
    except NonFiniteLossError as err:
        raise RunError(f"{err}; nothing was saved; try a smaller --lr (now {lr:g})") from None
    ms = [m for m in result.history["ms"] if m is not None]
    summary = {
        "method": args.method,
        "steps": args.steps,
        "pairs": len(pairs),
        "initial_loss": round(result.initial_loss, 4),
        "final_loss": round(result.final_loss, 4),
        "trainable_params": result.trainable,
        "params": result.total,
        "lr": lr,
        "batch": args.batch_size,
        "ms_per_step": round(statistics.median(ms), 3) if ms else None,
        "wall_s": round(result.seconds, 1),
        "device": str(device),
        "out": str(out),
    }
    save_model_out(result.model, tok, out, overwrite=args.overwrite,
                   log={"result": summary, "base": str(args.model), "data": str(args.data), "history": result.history})
    return summary


def save_model_out(model, tok, out, *, overwrite: bool, log: dict) -> None:
    """Write the trained chat model to ``--out`` in one atomic swap; a failure is one line (exit 1)."""
    from aigc_book.adaptation.finetune import save_finetuned

    try:
        save_finetuned(model, tok, out, overwrite=overwrite, log=log)
    except OSError as err:  # a full disk or a vanished directory
        raise RunError(f"cannot write {out} ({err.strerror or err}); it was left as it was: make room, then "
                       "run the command again") from None
    except ValueError as err:  # --out was filled by something else while training ran
        raise RunError(f"--out {err}; nothing was saved") from None


def interrupted(args) -> str:
    return ("aigc-book: interrupted; finetune writes --out only once training has finished, so it holds what it "
            "held before: run the command again")
