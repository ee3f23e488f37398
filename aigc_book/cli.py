"""Command line: ``python -m aigc_book COMMAND ...`` (also the ``aigc-book`` console script).

Introduced in chapter 3, section "Your own text". Usage::

    python -m aigc_book train-gpt --text FILE [--n-layer 4 --n-head 4 --n-embd 128 --block-size 64
                                  --batch-size 12 --steps 2000 --lr 1e-3 --device cpu --seed 1337 --out DIR]
    python -m aigc_book sample --model DIR [--prompt TEXT --max-new-tokens 300 --temperature 0.8 --top-k K
                               --top-p P --min-p P --repetition-penalty R --greedy --num-beams K --length-penalty A]
    python -m aigc_book finetune --model DIR --data PAIRS.jsonl --method full|lora --out DIR
                                 [--steps 200 --lr X --batch-size 8 --seed 1337 --lora-r 8 --lora-alpha 16
                                  --device D --overwrite]
    python -m aigc_book rlhf --method ppo|dpo|grpo|best-of-n --out DIR [--steps 150 --seed 0 --device D
                             --no-progress --overwrite]
    python -m aigc_book chat --model DIR [--temperature 0.8 --greedy --max-new-tokens 64 --seed 0 --message TEXT ...]
    python -m aigc_book tiny-chatgpt --out DIR [--method grpo|ppo|dpo|best-of-n --device D --overwrite ...]
    python -m aigc_book measure [--n-layer 4 --n-embd 256 --dtype float32|bfloat16 --device D ...]

Each command is a module of :mod:`aigc_book.commands`, which says what they share; this module builds
the parser from :data:`aigc_book.commands.COMMANDS`, runs the command, prints its JSON summary as the
last line of stdout, and turns every failure into one line on stderr and an exit status:

* bad input (a missing, empty, binary or huge file; a flag out of range; a model that would not fit in
  memory; an unusable ``--out``): :class:`~aigc_book.errors.UsageError`, exit 2, before any training;
* a failed run (a NaN or infinite loss, a full disk): :class:`~aigc_book.errors.RunError`, exit 1,
  the last good checkpoint kept;
* Ctrl-C: exit 130 and a line saying what was kept (``train-gpt`` saves a checkpoint that
  ``--resume`` continues exactly); an existing run is never overwritten without ``--overwrite``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from aigc_book.commands import COMMANDS
from aigc_book.commands.options import HelpFormatter, shared_parser
from aigc_book.errors import RunError, UsageError

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command in :data:`~aigc_book.commands.COMMANDS`, each with its shared options."""
    parser = argparse.ArgumentParser(prog="python -m aigc_book",
                                     description="Train and sample small GPTs on a CPU or GPU.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (command, text) in COMMANDS.items():
        parent = shared_parser(command.SHARED, seed=getattr(command, "SEED", 0))
        command.add_arguments(sub.add_parser(name, help=text, description=text, parents=[parent],
                                             formatter_class=HelpFormatter))
    return parser


def speaks(args) -> bool:
    """Whether this process reports errors: all but the ranks > 0 of a torchrun ``train-gpt``, which
    check the same inputs and meet the same failures as rank 0 (one line, not one per process)."""
    return args.command != "train-gpt" or os.environ.get("RANK", "0") in ("", "0")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m aigc_book`` and the ``aigc-book`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    command = COMMANDS[args.command][0]
    try:
        result = command.run(args)
        if result is not None:  # None: printed as it went (sample, the interactive chat, torchrun ranks > 0)
            print(json.dumps(result, ensure_ascii=False), flush=True)
    except UsageError as err:
        if speaks(args):
            print(f"aigc-book: error: {err}", file=sys.stderr)
        return 2
    except RunError as err:
        if speaks(args):
            print(f"aigc-book: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if speaks(args):
            print(command.interrupted(args), file=sys.stderr)
        return 130
    return 0
