"""aigc_book.checks: integers and numbers are checked once, the same way everywhere.

Booleans are refused where a count or a number is meant (``True`` is an ``int`` to Python), NumPy's
integers and floats are accepted, the bounds are inclusive for ints, and the message names the
argument, the range and the value.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from aigc_book.checks import check_fraction, check_int, check_number, is_int, is_number


@pytest.mark.parametrize("value, expected", [(3, True), (0, True), (-2, True), (np.int64(3), True), (np.uint8(1), True),
                                             (True, False), (False, False), (np.bool_(True), False), (3.0, False),
                                             ("3", False), (None, False)])
def test_is_int_takes_python_and_numpy_integers_but_not_booleans(value, expected):
    assert is_int(value) is expected


@pytest.mark.parametrize("value, expected", [(3, True), (2.5, True), (np.float32(0.5), True), (np.int32(2), True),
                                             (Fraction(1, 3), True), (math.nan, True), (True, False),
                                             ("2.5", False), (None, False), (1j, False)])
def test_is_number_takes_real_numbers_but_not_booleans(value, expected):
    assert is_number(value) is expected


def test_check_int_returns_a_python_int():
    assert check_int("n", 3) == 3
    value = check_int("n", np.int64(7))
    assert value == 7 and type(value) is int
    assert check_int("n", 0, minimum=0) == 0 and check_int("n", -5, minimum=None) == -5
    assert check_int("k", 4, minimum=1, maximum=4) == 4  # both bounds are inclusive


@pytest.mark.parametrize("value", [True, False, 2.0, "2", None, np.bool_(False)])
def test_check_int_refuses_what_is_not_an_integer_with_a_type_error(value):
    with pytest.raises(TypeError, match=r"^n_layer must be an int >= 1, got "):
        check_int("n_layer", value)


@pytest.mark.parametrize("kwargs, value, message", [
    ({}, 0, "n_layer must be an int >= 1, got 0"),
    ({"minimum": 0}, -1, "n_layer must be an int >= 0, got -1"),
    ({"minimum": 1, "maximum": 4}, 5, r"n_layer must be an int in \[1, 4\], got 5"),
    ({"minimum": None, "maximum": 4}, 5, "n_layer must be an int <= 4, got 5"),
])
def test_check_int_names_the_argument_the_range_and_the_value(kwargs, value, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        check_int("n_layer", value, **kwargs)


def test_check_number_returns_a_float_and_honours_the_bounds():
    value = check_number("lr", np.float32(0.5))
    assert value == 0.5 and type(value) is float
    assert check_number("lr", 3) == 3.0
    assert check_number("beta", 0, inclusive=True) == 0.0
    assert check_number("p", 1.0, maximum=1.0) == 1.0
    assert check_number("t", -1.0, minimum=-2.0) == -1.0


@pytest.mark.parametrize("value", [True, "0.1", None])
def test_check_number_refuses_booleans_and_strings_with_a_type_error(value):
    with pytest.raises(TypeError, match=f"^lr must be a number, got {type(value).__name__}$"):
        check_number("lr", value)


@pytest.mark.parametrize("kwargs, value, message", [
    ({}, 0.0, "lr must be a finite number > 0, got 0.0"),
    ({}, math.nan, "lr must be a finite number > 0, got nan"),
    ({}, math.inf, "lr must be a finite number > 0, got inf"),
    ({"inclusive": True}, -0.5, "lr must be a finite number >= 0, got -0.5"),
    ({"maximum": 1.0}, 1.5, "lr must be a finite number > 0 and <= 1, got 1.5"),
])
def test_check_number_names_the_argument_the_bound_and_the_value(kwargs, value, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        check_number("lr", value, **kwargs)


def test_check_fraction_takes_the_half_open_unit_interval():
    assert check_fraction("share", 1.0) == 1.0 and check_fraction("share", 1e-9) == 1e-9
    for bad in (0.0, 1.0001, -0.1):
        with pytest.raises(ValueError, match=r"^share must be a finite number > 0 and <= 1, got "):
            check_fraction("share", bad)
    with pytest.raises(TypeError, match="share must be a number"):
        check_fraction("share", True)
