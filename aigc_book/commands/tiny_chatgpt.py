"""``python -m aigc_book tiny-chatgpt``: the capstone's pipeline from the command line.

Introduced in chapter 8, section "The recipe in one command". Usage::

    python -m aigc_book tiny-chatgpt --out DIR [--method grpo|ppo|dpo|best-of-n --rl-steps N --seed 0
                                     --device D --pretrain-steps N --sft-steps N --n-layer L --n-embd C ...
                                     --no-progress --overwrite]

It trains a tokenizer, pretrains, fine-tunes on conversations and tunes with chapter 5's GRPO (or
``--method``) through :func:`aigc_book.capstone.pipeline.run_pipeline`, with progress bars on stderr,
writes ``DIR/report.md`` and prints one JSON object last: per stage its seconds, FLOPs and headline
figures, and where the report card is. Interrupted (Ctrl-C, exit 130) or killed, the same command
continues; a stage made with other settings is refused (exit 2) unless ``--overwrite``. On CUDA the
defaults scale up (:meth:`~aigc_book.capstone.pipeline.CapstoneConfig.for_device`); flags given
still win. The seed is 0, the one the chapter's run used.
"""

from __future__ import annotations

import argparse

from aigc_book.commands.options import add_flag, device_of, say
from aigc_book.errors import RunError, UsageError

__all__ = ["FLAGS", "SHARED", "SEED", "add_arguments", "interrupted", "run"]

SHARED = ("device", "seed", "progress", "overwrite")
SEED = 0  # the chapter's run

# settings field -> (flag, its old spellings, type, help); each flag's default is None: "the settings'
# default for this device"
FLAGS = {
    "vocab_size": ("--vocab-size", (), int, "byte-level BPE tokens (>= 256)"),
    "n_layer": ("--n-layer", ("--layers",), int, "Transformer blocks"),
    "n_head": ("--n-head", ("--heads",), int, "attention heads"),
    "n_embd": ("--n-embd", ("--embd",), int, "width"),
    "block_size": ("--block-size", ("--block",), int, "context length in tokens"),
    "batch_size": ("--batch-size", ("--batch",), int, "sequences per step"),
    "pretrain_steps": ("--pretrain-steps", ("--pretrain-iters",), int, "pretraining steps"),
    "sft_steps": ("--sft-steps", ("--sft-iters",), int, "supervised fine-tuning steps"),
    "conversations": ("--conversations", (), int, "fine-tuning conversations"),
    "rl_steps": ("--rl-steps", (), int, "GRPO/PPO iterations, DPO steps, or n of best-of-n (default: per method)"),
    "docs_chars": ("--docs-chars", (), int, "cap on the English characters of the corpus (default: all)"),
    "eval_prompts": ("--eval-prompts", (), int, "held-out instructions the report card checks"),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="directory for every stage and the report card (resumable)")
    p.add_argument("--method", default="grpo", help="preference tuning: grpo (default), ppo, dpo or best-of-n")
    for field, (flag, old, kind, text) in FLAGS.items():
        add_flag(p, flag, *old, dest=field, type=kind, default=None, help=text)


def _summary(report: dict, out) -> dict:
    stages = report["stages"]
    result = {"out": str(out), "report": f"{out}/report.md", "device": report["device"],
              "seconds": {k: round(v["seconds"], 1) for k, v in stages.items()},
              "flops": {k: v["flops"] for k, v in stages.items()}}
    p, f, t = stages["pretrained"], stages["sft"], stages["tuned"]
    result["bits_per_byte"] = {k: round(v, 4) for k, v in p["bits_per_byte"].items()}
    result["ngram_bits_per_byte"] = {k: round(v, 4) for k, v in p["ngram_bits_per_byte"].items()}
    result["accuracy"] = {s: round(stages[s]["accuracy"]["all"], 4) for s in ("pretrained", "sft", "tuned")}
    result["accuracy_sampled"] = {s: round(stages[s]["accuracy_sampled"]["all"], 4)
                                  for s in ("pretrained", "sft", "tuned")}
    result["method"], result["kl"] = t["method"], t["rlhf"]["kl"]
    result["sft_final_loss"] = round(f["loss"][-1][1], 4)
    return result


def run(args) -> dict:
    """Check every flag, run the pipeline, return the JSON summary."""
    from aigc_book.capstone.pipeline import CapstoneConfig, StageMismatchError, run_pipeline
    from aigc_book.training.trainer import NonFiniteLossError

    device = device_of(args)
    changes = {field: getattr(args, field) for field in FLAGS if getattr(args, field) is not None}
    try:
        settings = CapstoneConfig.for_device(device, method=args.method, seed=args.seed, **changes)
    except ValueError as err:
        raise UsageError(_as_flags(str(err))) from None
    log = (lambda message: say(f"[tiny-chatgpt] {message}")) if args.progress else (lambda message: None)
    try:
        report = run_pipeline(args.out, settings, device=device, progress=args.progress, log=log,
                              overwrite=args.overwrite)
    except StageMismatchError as err:
        raise UsageError(str(err)) from None
    except (NonFiniteLossError, FloatingPointError) as err:
        raise RunError(f"{err}; the finished stages are kept, run again to retry the rest") from None
    except OSError as err:
        raise RunError(f"cannot write {args.out} ({err.strerror or err}); finished stages are kept, make room "
                       "and run the command again") from None
    except ValueError as err:  # a directory given as --out that is a file, and the like
        raise UsageError(f"--out {err}") from None
    return _summary(report, args.out)


def _as_flags(message: str) -> str:
    """A settings error in the names of the flags (``n_layer`` -> ``--n-layer``)."""
    names = {field: flag for field, (flag, _, _, _) in FLAGS.items()} | {"method": "--method", "seed": "--seed"}
    for field, flag in sorted(names.items(), key=lambda kv: -len(kv[0])):
        message = message.replace(f"{field} ", f"{flag} ").replace(f"({field})", f"({flag})")
    return message


def interrupted(args) -> str:
    return ("aigc-book: interrupted; finished stages are kept and an unfinished pretraining or fine-tuning saved "
            "a checkpoint: run the same command again to continue")
