"""Device choice, seeding, mixed precision and the settings cell: what every chapter needs first.

Introduced in chapter 0, section "CPU or GPU".
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import re
import typing
from collections.abc import Mapping
from typing import Any, ClassVar

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


class ChapterSettings:
    """Base of a chapter's settings cell: CPU values as the fields' defaults, GPU values in ``cuda``.

    A chapter declares its knobs once, as a frozen dataclass whose defaults are the CPU values (those
    behind the stored outputs), and names what a CUDA GPU changes in the class attribute ``cuda``::

        @dataclass(frozen=True)
        class Settings(ChapterSettings):
            n_layer: int = 2
            steps: int = 600
            cuda = dict(n_layer=4, steps=3000)  # not annotated: a class attribute, not a field

        settings = Settings.for_device(device)
        print(settings.table())

    A name in ``cuda`` that is not a field is an error when the class is defined, on every device,
    so a misspelt GPU override does not wait for a GPU to be found.
    """

    cuda: ClassVar[Mapping[str, Any]] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if not isinstance(cls.cuda, Mapping):
            kind = type(cls.cuda).__name__
            raise TypeError(f"{cls.__name__}.cuda must be a dict of field names to values, got {kind}")
        fields = _declared_fields(cls)
        unknown = sorted(set(cls.cuda) - fields)
        if unknown:
            raise TypeError(
                f"{cls.__name__}.cuda overrides {', '.join(map(repr, unknown))}, which "
                f"{'is not a field' if len(unknown) == 1 else 'are not fields'} of {cls.__name__} "
                f"(fields: {', '.join(sorted(fields))})"
            )

    @classmethod
    def for_device(cls, device: torch.device | str):
        """The defaults on a CPU or Apple MPS; the defaults with ``cls.cuda`` applied on a CUDA GPU."""
        if torch.device(device).type == "cuda":
            return dataclasses.replace(cls(), **cls.cuda)
        return cls()

    def table(self, *, name_width: int = 14, number_width: int | None = None) -> str:
        """The settings one per line, ``"  name value"``, the name padded to ``name_width`` characters.

        With ``number_width``, numbers are right-aligned in that many characters: integers with
        thousands separators, floats in ``%g``. Nested dataclasses print as dicts.
        """
        lines = []
        for name, value in dataclasses.asdict(self).items():
            if number_width is not None and isinstance(value, int) and not isinstance(value, bool):
                shown = f"{value:>{number_width},}"
            elif number_width is not None and isinstance(value, float):
                shown = f"{value:>{number_width}g}"
            else:
                shown = f"{value}"
            lines.append(f"  {name:<{name_width}}{shown}")
        return "\n".join(lines)


def _declared_fields(cls: type) -> set[str]:
    """The annotated names of ``cls`` and its bases, ``ClassVar`` ones left out (read before ``@dataclass`` runs)."""
    names = set()
    for klass in reversed(cls.__mro__):
        for name, annotation in vars(klass).get("__annotations__", {}).items():
            if _is_class_var(annotation):
                names.discard(name)
            else:
                names.add(name)
    return names


def _is_class_var(annotation) -> bool:
    if isinstance(annotation, str):  # under `from __future__ import annotations`
        return re.match(r"^(typing\.)?ClassVar\b", annotation.strip()) is not None
    return annotation is ClassVar or typing.get_origin(annotation) is ClassVar
