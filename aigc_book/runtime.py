"""Device choice, seeding and mixed precision: what every chapter needs first.

Introduced in chapter 0, section "CPU or GPU".
"""

from __future__ import annotations

import contextlib
import os
import random

import numpy as np
import torch

from aigc_book.checks import is_int
from aigc_book.cpu_threads import follow_cpu_load

DEVICE_ENV_VAR = "AIGC_DEVICE"
_KNOWN_DEVICE_TYPES = ("cpu", "cuda", "mps")


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def get_device(prefer: str | None = None) -> torch.device:
    """Return the device the book runs on.

    Order of choice: the argument ``prefer``, else the environment variable ``AIGC_DEVICE``,
    else CUDA, then Apple MPS, then the CPU. A named device that is not available raises a
    ``RuntimeError`` rather than silently running somewhere else. On the CPU, PyTorch's thread
    count then follows the machine's load (:func:`aigc_book.cpu_threads.follow_cpu_load`).

    >>> get_device("cpu")
    device(type='cpu')
    """
    device = _choose_device(prefer)
    if device.type == "cpu":
        follow_cpu_load()
    return device


def _choose_device(prefer: str | None) -> torch.device:
    choice = prefer if prefer is not None else os.environ.get(DEVICE_ENV_VAR, "").strip()
    if not choice:
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(choice)
    except RuntimeError as err:
        raise ValueError(
            f"unknown device {choice!r}: expected one of {', '.join(_KNOWN_DEVICE_TYPES)} "
            f"(optionally with an index, e.g. 'cuda:1')"
        ) from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {choice!r} was asked for, but PyTorch sees no CUDA GPU")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise RuntimeError(
            f"device {choice!r} was asked for, but only {torch.cuda.device_count()} CUDA GPU(s) exist"
        )
    if device.type == "cpu" and device.index not in (None, 0):
        raise ValueError(f"device {choice!r}: PyTorch has one CPU device; use 'cpu' (threads are set separately)")
    if device.type == "mps" and not _mps_available():
        raise RuntimeError(f"device {choice!r} was asked for, but Apple MPS is not available")
    if device.type not in _KNOWN_DEVICE_TYPES:
        raise ValueError(f"unsupported device type {device.type!r}: use one of {_KNOWN_DEVICE_TYPES}")
    return device


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and PyTorch (all devices) and return a CPU generator seeded the same.

    Re-running a cell that starts with ``seed_everything(0)`` gives the same numbers on the same
    machine. The returned generator is for code that wants its own independent stream.
    """
    if not is_int(seed):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed must be in [0, 2**32), got {seed}")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    return torch.Generator().manual_seed(seed)


def autocast(device: torch.device | str):
    """Mixed precision where it pays: bf16 autocast on CUDA, plain float32 elsewhere.

    On CPUs without AMX, bf16 matrix products run slower than float32, so the CPU path is a
    no-op context.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
