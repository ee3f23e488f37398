"""The package's one rule for hyperparameters: every bundle is a frozen dataclass named ``<Thing>Config``
(CONTRIBUTING, "Configs"). Changing a run means ``dataclasses.replace``, never mutating a shared config."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil

import pytest

import aigc_book


def package_dataclasses() -> list[type]:
    """Every dataclass defined in a module of ``aigc_book`` (``__main__`` aside: importing it runs the CLI)."""
    found = []
    for info in pkgutil.walk_packages(aigc_book.__path__, prefix="aigc_book."):
        if info.name.rsplit(".", 1)[-1] == "__main__":
            continue
        module = importlib.import_module(info.name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if obj.__module__ == module.__name__ and dataclasses.is_dataclass(obj):
                found.append(obj)
    return found


DATACLASSES = package_dataclasses()
CONFIGS = [cls for cls in DATACLASSES if cls.__name__.endswith("Config")]


def test_the_walk_finds_the_configs():
    names = {cls.__name__ for cls in CONFIGS}
    assert {"TrainConfig", "TransformerConfig", "PPOConfig", "GRPOConfig", "DPOConfig", "RewardConfig",
            "PolicyConfig", "RLHFConfig", "CapstoneConfig", "CorpusConfig"} <= names


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda cls: f"{cls.__module__}.{cls.__name__}")
def test_every_config_is_frozen(cls):
    assert cls.__dataclass_params__.frozen, f"{cls.__module__}.{cls.__name__} must be @dataclass(frozen=True)"


def test_no_hyperparameter_bundle_is_named_settings_or_recipe():
    odd = {f"{cls.__module__}.{cls.__name__}" for cls in DATACLASSES
           if cls.__name__.endswith(("Settings", "Recipe"))}
    assert not odd, f"name these <Thing>Config: {sorted(odd)}"
