"""Checks of plain Python arguments, shared by every layer: one clear message each.

``bool`` is a subclass of ``int`` in Python, so ``isinstance(True, int)`` holds; every check here
refuses booleans where a count or a number is meant. Tensor checks that must not synchronise a GPU
live in :mod:`aigc_book.layers.checks`. Introduced in chapter 2, section "The block and the whole GPT",
where the first configuration is checked.
"""

from __future__ import annotations

import math
from numbers import Integral, Real

__all__ = ["check_fraction", "check_int", "check_number", "is_int", "is_number"]


def is_int(value) -> bool:
    """True for Python and NumPy integers, False for booleans and everything else."""
    return isinstance(value, Integral) and not isinstance(value, bool)


def is_number(value) -> bool:
    """True for Python and NumPy real numbers (ints included), False for booleans."""
    return isinstance(value, Real) and not isinstance(value, bool)


def check_int(name: str, value, minimum: int | None = 1, maximum: int | None = None) -> int:
    """Return ``value`` as an ``int`` if it is an integer in ``[minimum, maximum]``; else raise.

    ``TypeError`` for a value that is not an integer (a bool, a float, a string), ``ValueError`` for
    one out of range. The message names the argument and the range: ``n_layer must be an int >= 1,
    got 0``.
    """
    if not is_int(value):
        raise TypeError(f"{name} must be an int{_range(minimum, maximum)}, got {value!r}")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(f"{name} must be an int{_range(minimum, maximum)}, got {value!r}")
    return int(value)


def check_number(name: str, value, *, minimum: float = 0.0, inclusive: bool = False,
                 maximum: float | None = None) -> float:
    """Return ``value`` as a ``float`` if it is a finite number above ``minimum`` (or equal to it
    with ``inclusive``) and at most ``maximum``; else ``TypeError``/``ValueError`` naming it."""
    if not is_number(value):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    low = value >= minimum if inclusive else value > minimum
    if not (math.isfinite(value) and low and (maximum is None or value <= maximum)):
        bound = f"{'>=' if inclusive else '>'} {minimum:g}" + (f" and <= {maximum:g}" if maximum is not None else "")
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return float(value)


def check_fraction(name: str, value) -> float:
    """A number in ``(0, 1]``: a share, a probability, a fraction of a peak."""
    return check_number(name, value, maximum=1.0)


def _range(minimum: int | None, maximum: int | None) -> str:
    if minimum is not None and maximum is not None:
        return f" in [{minimum}, {maximum}]"
    if minimum is not None:
        return f" >= {minimum}"
    return f" <= {maximum}" if maximum is not None else ""
