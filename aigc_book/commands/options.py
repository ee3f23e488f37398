"""What every command shares: the parent parser of common options, renamed flags, and the checks of
``--seed``, ``--device`` and ``--out``.

Introduced in chapter 3, section "Your own text", where the first command trains a GPT. Every command
takes its common options from :func:`shared_parser` (``--device``, ``--seed``, ``--progress`` /
``--no-progress``, ``--overwrite``: those that make sense for it), so they are spelled, defaulted and
explained the same everywhere. A flag that was renamed keeps its old spelling as a hidden alias
(:func:`add_flag`): it still works, and says on stderr which flag replaces it.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
from pathlib import Path

import torch

from aigc_book.errors import UsageError
from aigc_book.runtime import get_device

__all__ = ["CHECKPOINT_DIR", "MAX_SEED", "SHARED_OPTIONS", "HelpFormatter", "add_flag", "check_out", "check_seed",
           "device_of", "say", "shared_parser"]

SHARED_OPTIONS = ("device", "seed", "progress", "overwrite")
MAX_SEED = 2**32 - 1  # NumPy's seeds stop here
CHECKPOINT_DIR = "checkpoint"  # where a run written in place keeps its checkpoints (OUT/checkpoint)


def shared_parser(options: tuple[str, ...], *, seed: int = 0) -> argparse.ArgumentParser:
    """The parent parser of a command: the ``options`` (a subset of :data:`SHARED_OPTIONS`) it takes.

    Built afresh for every command, so that a command's own ``seed`` default stays its own.
    """
    unknown = set(options) - set(SHARED_OPTIONS)
    if unknown:
        raise ValueError(f"unknown shared options {sorted(unknown)}; choose among {SHARED_OPTIONS}")
    parent = argparse.ArgumentParser(add_help=False)
    if "device" in options:
        parent.add_argument("--device", default=None, help="cpu, cuda or mps (default: the best available)")
    if "seed" in options:
        parent.add_argument("--seed", type=int, default=seed,
                            help="random seed; the same seed gives the same run (default %(default)s)")
    if "progress" in options:
        parent.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                            help="progress bars and stage messages on stderr")
    if "overwrite" in options:
        parent.add_argument("--overwrite", action="store_true", help="replace what --out already holds")
    return parent


class RenamedFlag(argparse.Action):
    """Stores its value like ``store``; the option strings in ``old`` are deprecated spellings."""

    def __init__(self, option_strings, dest, old: tuple[str, ...] = (), **kwargs):
        super().__init__(option_strings, dest, **kwargs)
        self.old = old

    def __call__(self, parser, namespace, values, option_string=None):
        if option_string in self.old:
            say(f"aigc-book: warning: {option_string} is deprecated; use {self.option_strings[0]}")
        setattr(namespace, self.dest, values)


def add_flag(parser: argparse.ArgumentParser, flag: str, *old: str, **kwargs) -> argparse.Action:
    """``parser.add_argument(flag, **kwargs)``, also answering to the ``old`` spellings (hidden from
    ``--help`` by :class:`HelpFormatter`; each use prints a one-line deprecation note)."""
    if not old:
        return parser.add_argument(flag, **kwargs)
    return parser.add_argument(flag, *old, action=RenamedFlag, old=old, **kwargs)


class HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, without the deprecated spellings of renamed flags."""

    def _format_action_invocation(self, action):
        if isinstance(action, RenamedFlag):
            action = copy.copy(action)
            action.option_strings = [s for s in action.option_strings if s not in action.old]
        return super()._format_action_invocation(action)


def say(message: str) -> None:
    """A line on stderr, from one process only under torchrun (rank 0)."""
    if os.environ.get("RANK", "0") in ("", "0"):
        print(message, file=sys.stderr, flush=True)


def check_seed(seed: int) -> None:
    if not 0 <= seed <= MAX_SEED:
        raise UsageError(f"--seed must be in [0, {MAX_SEED}], got {seed}")


def device_of(args) -> torch.device:
    """The device ``--device`` names (the best available without it)."""
    try:
        return get_device(args.device)
    except (ValueError, RuntimeError) as err:
        raise UsageError(f"--device: {err}") from None


def check_out(out, *, overwrite: bool, resume: bool = False, base=None, in_place: bool = False) -> Path:
    """Make sure ``--out`` can receive what the command writes, before any work is done; returns it.

    Refused, in one line each: ``out`` is the ``base`` model's directory; ``out`` is a file; it cannot
    be written; it already holds something and neither ``overwrite`` nor (for a run written
    ``in_place``, with checkpoints) ``resume`` is given. A command that writes ``out`` in place
    (``train-gpt``) gets it created now; the others write it at the end, in one atomic swap
    (:func:`aigc_book.adaptation.finetune.check_output_dir` says what they refuse to replace).
    """
    if not in_place:
        from aigc_book.adaptation.finetune import check_output_dir

        try:
            return check_output_dir(out, overwrite=overwrite, base=base)
        except ValueError as err:
            raise UsageError(f"--out {err}") from None
    return _check_run_dir(Path(out), resume=resume, overwrite=overwrite)


def _check_run_dir(out: Path, *, resume: bool, overwrite: bool) -> Path:
    """``out`` for a run written in place: created now; a run it holds needs ``resume`` or ``overwrite``
    (which removes the run's checkpoints)."""
    import shutil
    import tempfile

    from aigc_book.models.io import CONFIG_FILE

    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as err:
        raise UsageError(f"--out {out}: cannot write there ({err.strerror or err})") from None
    checkpoints = [out / f"{CHECKPOINT_DIR}{suffix}" for suffix in ("", ".prev", ".tmp")]
    existing = [p for p in [*checkpoints[:2], out / CONFIG_FILE] if p.exists()]  # .tmp alone is no run
    if resume or not existing:
        return out
    if not overwrite:
        raise UsageError(
            f"--out {out} already holds a run ({existing[0].name}); add --resume to continue it, "
            f"or --overwrite to replace it"
        )
    for p in checkpoints:
        shutil.rmtree(p, ignore_errors=True)
    return out
