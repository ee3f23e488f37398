"""Writing a file or a directory so that a crash never leaves it half-written.

Introduced in chapter 3, section "Your own text": models, tokenizers and checkpoints are all saved
this way, so an interrupted or failed save leaves the previous file as it was. A file is written
beside its name and renamed over it (:func:`atomic_write`); a directory (a checkpoint, a fine-tuned
model, a capstone stage) is written whole beside its name, synced (:func:`sync_directory`), and
swapped in by renames (:func:`replace_directory`).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

__all__ = ["atomic_write", "fsync_path", "sync_directory", "replace_directory", "set_aside_path",
           "finish_interrupted_swap"]


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Call ``write(temporary_path)``, then rename it to ``path``: a reader sees the old file or the new one.

    The file gets the usual permissions (0666 less the umask): safetensors alone writes 0600.
    """
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(str(tmp))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # no stray .tmp after a full disk or a Ctrl-C
        raise


def fsync_path(path) -> None:
    """Flush a file, or a directory's entries, to disk (so a rename that follows is durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_directory(path) -> None:
    """Flush every entry of the directory ``path``, then its own entries, to disk."""
    path = Path(path)
    for entry in path.iterdir():
        fsync_path(entry)
    fsync_path(path)


def set_aside_path(target) -> Path:
    """Where :func:`replace_directory` moves the old ``target`` for the instant of a swap: ``.NAME.old`` beside it."""
    target = Path(target)
    return target.with_name(f".{target.name}.old")


def replace_directory(staged, target, *, previous=None) -> Path:
    """Put the finished directory ``staged`` in the place of ``target`` by two renames; returns ``target``.

    ``staged`` must be complete and synced (:func:`sync_directory`) and on the same file system as
    ``target`` (beside it). If ``target`` exists it is renamed to ``previous`` first (a stale directory
    there is deleted), then ``staged`` is renamed to ``target`` and the parent directory synced. A
    reader, or a crash at any instant, finds the old directory or the new one, never a mix: killed
    between the renames, the old one waits at ``previous`` (:func:`finish_interrupted_swap` puts it
    back); a failed second rename puts it back at once.

    ``previous`` defaults to :func:`set_aside_path`, deleted once the new directory is in place; a
    path given is kept (a checkpoint keeps ``NAME.prev`` as its fallback). The caller holds back
    Ctrl-C around the call if it must (:func:`~aigc_book.training.checkpoint.interrupts_deferred`).
    """
    staged, target = Path(staged), Path(target)
    aside = set_aside_path(target) if previous is None else Path(previous)
    moved = target.exists()
    if moved:
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(target, aside)
    try:
        os.replace(staged, target)
    except BaseException:
        if moved and not target.exists():
            os.replace(aside, target)  # the old directory goes back
        raise
    try:
        fsync_path(target.parent)
    finally:
        if moved and previous is None:
            shutil.rmtree(aside, ignore_errors=True)
    return target


def finish_interrupted_swap(target) -> None:
    """If a kill fell between :func:`replace_directory`'s two renames (``target`` missing, its set-aside
    copy there), rename the set-aside copy back to ``target``."""
    target, aside = Path(target), set_aside_path(target)
    if not target.exists() and aside.is_dir():
        os.replace(aside, target)
