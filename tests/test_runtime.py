"""Device choice, seeding, chapter settings and the plotting style (aigc_book.runtime, aigc_book.plotting)."""

from __future__ import annotations

import random
from dataclasses import FrozenInstanceError, dataclass, fields
from typing import ClassVar

import matplotlib as mpl
import numpy as np
import pytest
import torch

from aigc_book import autocast, get_device, seed_everything, use_book_style
from aigc_book.runtime import ChapterSettings


def test_env_var_overrides_automatic_choice(monkeypatch):
    monkeypatch.setenv("AIGC_DEVICE", "cpu")
    assert get_device() == torch.device("cpu")


def test_argument_overrides_env_var(monkeypatch):
    monkeypatch.setenv("AIGC_DEVICE", "definitely-not-a-device")
    assert get_device("cpu") == torch.device("cpu")


def test_automatic_choice_prefers_cuda_then_mps_then_cpu(monkeypatch):
    monkeypatch.delenv("AIGC_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert get_device().type == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr("aigc_book.runtime._mps_available", lambda: True)
    assert get_device().type == "mps"
    monkeypatch.setattr("aigc_book.runtime._mps_available", lambda: False)
    assert get_device().type == "cpu"


def test_unknown_device_name_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown device 'gpu0'"):
        get_device("gpu0")


def test_unavailable_cuda_is_an_error_not_a_silent_fallback(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        get_device("cuda")


def test_seed_everything_makes_all_generators_repeat():
    def draw():
        return random.random(), float(np.random.rand()), torch.rand(3).tolist()

    seed_everything(123)
    first = draw()
    seed_everything(123)
    assert draw() == first
    seed_everything(124)
    assert draw() != first


def test_seed_everything_returns_an_independent_seeded_generator():
    a = torch.rand(2, generator=seed_everything(7))
    b = torch.rand(2, generator=seed_everything(7))
    assert torch.equal(a, b)


@pytest.mark.parametrize("bad", [-1, 2**32, 1.5, "0", True])
def test_seed_everything_rejects_bad_seeds(bad):
    with pytest.raises((TypeError, ValueError), match="seed must"):
        seed_everything(bad)


def test_autocast_is_a_no_op_on_cpu():
    x = torch.randn(4, 4)
    with autocast("cpu"):
        assert (x @ x).dtype == torch.float32


def test_book_style_is_applied():
    mpl.rcParams["axes.grid"] = False
    use_book_style()
    assert mpl.rcParams["axes.grid"] is True
    assert mpl.rcParams["savefig.bbox"] == "tight"


@dataclass(frozen=True)
class _Settings(ChapterSettings):
    n_layer: int = 2
    lr: float = 3e-3
    shape: tuple = (4, 128)
    cuda = dict(n_layer=4, shape=(8, 512))


def test_settings_for_device_applies_cuda_overrides_only_on_cuda():
    assert _Settings.for_device("cpu") == _Settings()
    assert _Settings.for_device(torch.device("mps")) == _Settings()
    on_gpu = _Settings.for_device(torch.device("cuda:1"))  # only the device's type matters; nothing runs there
    assert on_gpu == _Settings(n_layer=4, lr=3e-3, shape=(8, 512))
    assert _Settings.cuda == {"n_layer": 4, "shape": (8, 512)}  # the class itself is not changed


def test_settings_cuda_is_a_class_attribute_not_a_field():
    assert [f.name for f in fields(_Settings)] == ["n_layer", "lr", "shape"]
    with pytest.raises(FrozenInstanceError):
        _Settings().n_layer = 3


def test_settings_with_an_unknown_cuda_override_fail_when_the_class_is_defined():
    with pytest.raises(TypeError, match=r"cuda overrides 'n_layers', which is not a field of Misspelt"):

        @dataclass(frozen=True)
        class Misspelt(ChapterSettings):
            n_layer: int = 2
            cuda = dict(n_layers=4)


def test_settings_class_variables_are_not_overridable_fields():
    with pytest.raises(TypeError, match="'limit'"):

        @dataclass(frozen=True)
        class WithClassVar(ChapterSettings):
            limit: ClassVar[int] = 3
            cuda = dict(limit=4)


def test_settings_table_prints_one_line_per_field():
    assert _Settings().table() == "  n_layer       2\n  lr            0.003\n  shape         (4, 128)"
    numbers = _Settings(n_layer=20_000).table(name_width=8, number_width=8)
    assert numbers == "  n_layer   20,000\n  lr         0.003\n  shape   (4, 128)"
