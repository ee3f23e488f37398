"""Writing a file so that a crash never leaves it half-written.

Introduced in chapter 3, section "Your own text": models, tokenizers and checkpoints are all saved
this way, so an interrupted or failed save leaves the previous file as it was.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

__all__ = ["atomic_write"]


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
