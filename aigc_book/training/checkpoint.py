"""Checkpoints that are whole or absent: written aside, verified, then switched in.

Introduced in chapter 3, section "Your own text". A checkpoint is a directory: the model
(:mod:`aigc_book.models.io`), the trainer's state, and ``manifest.json`` with the step and a SHA-256
of every file, written last. Saving builds the new checkpoint in ``NAME.tmp``, moves the current
one to ``NAME.prev`` and renames the new one to ``NAME``: whenever the process dies (``kill -9``, a
full disk, a power cut), one complete checkpoint survives. Loading verifies the manifest and falls
back to ``NAME.prev`` when ``NAME`` is missing or damaged, saying so; it never accepts weights from
one step with optimiser state from another.

:func:`interrupts_deferred` holds back Ctrl-C while a step or a checkpoint is being committed, so an
interrupt lands before or after it, never in the middle.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import signal
import threading
from pathlib import Path

import torch
from torch import nn

from aigc_book.files import fsync_path, replace_directory
from aigc_book.models.io import CheckpointError, load_model, save_model

__all__ = ["MANIFEST_FILE", "STATE_FILE", "write_checkpoint", "read_checkpoint", "interrupts_deferred"]

MANIFEST_FILE = "manifest.json"
STATE_FILE = "trainer_state.pt"
FORMAT = 2


@contextlib.contextmanager
def interrupts_deferred():
    """Run the block with SIGINT (Ctrl-C) held back; a Ctrl-C that arrived is raised right after it."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    received = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_checkpoint(directory, model: nn.Module, state: dict) -> Path:
    """Write ``model`` and ``state`` (which must hold ``"step"``) as the checkpoint ``directory``, atomically."""
    directory = Path(directory)
    tmp, prev = directory.with_name(directory.name + ".tmp"), directory.with_name(directory.name + ".prev")
    with interrupts_deferred():
        shutil.rmtree(tmp, ignore_errors=True)  # what a crash may have left half-written
        try:
            _write_files(tmp, model, state)
        except BaseException:  # a full disk: leave no half-written copy behind; the current one stands
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        replace_directory(tmp, directory, previous=prev)  # the current one stays as NAME.prev, the fallback
    return directory


def _write_files(tmp: Path, model: nn.Module, state: dict) -> None:
    save_model(model, tmp)
    torch.save(state, tmp / STATE_FILE)
    files = sorted(p.name for p in tmp.iterdir())
    digests = {name: _sha256(tmp / name) for name in files}
    manifest = {"format": FORMAT, "step": int(state["step"]), "files": digests}
    (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    for name in [*files, MANIFEST_FILE]:
        fsync_path(tmp / name)
    fsync_path(tmp)


def _verify(directory: Path) -> dict:
    """The manifest of a complete, untouched checkpoint; raises :class:`CheckpointError` otherwise."""
    path = directory / MANIFEST_FILE
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: no such checkpoint")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        files, step = manifest["files"], int(manifest["step"])
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing, so the checkpoint was never completed") from None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{path}: unreadable ({err})") from err
    for name, digest in files.items():
        if not (directory / name).is_file():
            raise CheckpointError(f"{directory / name}: missing from a checkpoint that lists it")
        if _sha256(directory / name) != digest:
            raise CheckpointError(f"{directory / name}: changed since the checkpoint at step {step} was written")
    return manifest


def read_checkpoint(directory, model: nn.Module) -> tuple[dict, Path, str | None]:
    """Load the newest complete checkpoint at ``directory`` into ``model``.

    Returns ``(state, path, note)``: the trainer state, the directory it came from, and a sentence
    to show the user when it came from ``NAME.prev`` because ``NAME`` was missing or damaged.
    """
    directory = Path(directory)
    prev = directory.with_name(directory.name + ".prev")
    try:
        manifest, path, note = _verify(directory), directory, None
    except CheckpointError as err:
        try:
            manifest, path = _verify(prev), prev
        except CheckpointError:
            raise err from None
        note = f"{err}; resuming from the previous complete checkpoint ({prev}, step {manifest['step']})"
    load_model(model, path)
    try:
        state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling raises many types; all mean "not a valid state"
        reason = f"{type(err).__name__}: {err}"
        raise CheckpointError(f"{path / STATE_FILE}: corrupt or unsafe checkpoint ({reason})") from err
    if not isinstance(state, dict) or state.get("step") != manifest["step"]:
        raise CheckpointError(f"{path / STATE_FILE}: its step does not match the manifest's ({manifest['step']})")
    return state, path, note
