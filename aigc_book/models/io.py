"""Saving and loading models: ``config.json`` plus ``model.safetensors`` in a directory.

Introduced in chapter 3, section "Your own text". The layout and the names follow Hugging Face's
``save_pretrained``/``from_pretrained``: a model saves itself to a directory and a class builds
itself back from one. Loading never unpickles anything (safetensors holds raw tensors only), and
every problem — a missing, corrupt or edited file, or weights that do not fit — raises
:class:`CheckpointError` with the file's path and what to do.

The config is written twice: as ``config.json`` to read and edit, and inside the safetensors
header. A ``config.json`` edited after saving (say ``n_head``, which no weight shape reveals) is
refused instead of silently producing garbage.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, fields, is_dataclass
from pathlib import Path

from torch import nn

from aigc_book.files import atomic_write

__all__ = [
    "CONFIG_FILE",
    "MODEL_FILE",
    "CheckpointError",
    "PretrainedMixin",
    "save_model",
    "load_model",
    "read_config",
    "config_from_dict",
]

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


class CheckpointError(ValueError):
    """A model or checkpoint file is missing, corrupt, edited, or does not fit the model it is loaded into."""


def _config_dict(model: nn.Module) -> dict | None:
    config = getattr(model, "config", None)
    if config is not None and is_dataclass(config):
        return {"architecture": type(model).__name__, **json.loads(json.dumps(asdict(config)))}
    return None


def save_model(model: nn.Module, directory) -> Path:
    """Write ``model.safetensors`` (tied tensors stored once) and, if the model has a dataclass
    ``config``, ``config.json``; returns the directory."""
    from safetensors.torch import save_model as st_save_model

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = _config_dict(model)
    metadata = {"config": json.dumps(config, sort_keys=True)} if config is not None else None
    atomic_write(directory / MODEL_FILE, lambda p: st_save_model(model, p, metadata=metadata))
    if config is not None:
        atomic_write(directory / CONFIG_FILE,
                     lambda p: Path(p).write_text(json.dumps(config, indent=2), encoding="utf-8"))
    return directory


def read_config(directory) -> dict:
    """The ``config.json`` of a saved model, checked against the copy in the weights' header."""
    path = Path(directory) / CONFIG_FILE
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(
            f"{path}: no such file; is this a directory written by save_pretrained or train-gpt?"
        ) from None
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: expected a JSON object of config fields, got {type(config).__name__}")
    header = _header_config(Path(directory) / MODEL_FILE)
    if header is not None and header != config:
        changed = sorted(k for k in set(config) | set(header) if config.get(k) != header.get(k))
        raise CheckpointError(
            f"{path}: differs from the config the weights were saved with in {', '.join(changed)} "
            f"(e.g. {changed[0]}={config.get(changed[0])!r} vs {header.get(changed[0])!r}); restore it"
        )
    return config


def _header_config(weights: Path) -> dict | None:
    from safetensors import safe_open

    if not weights.is_file():
        return None
    try:
        with safe_open(str(weights), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as err:  # safetensors raises its own error types for corrupt headers
        raise CheckpointError(f"{weights}: not a readable safetensors file ({err})") from err
    return json.loads(meta["config"]) if "config" in meta else None


def config_from_dict(cls, data: dict):
    """Build the config dataclass ``cls`` from a saved dict; unknown fields are an error."""
    names = {f.name for f in fields(cls)}
    extra = set(data) - names - {"architecture"}
    if extra:
        raise CheckpointError(f"unknown {cls.__name__} fields in the saved config: {sorted(extra)}")
    try:
        return cls(**{k: v for k, v in data.items() if k in names})
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"the saved config does not make a valid {cls.__name__}: {err}") from err


def load_model(model: nn.Module, directory) -> None:
    """Load ``model.safetensors`` into ``model``.

    A missing, corrupt or mismatched file raises :class:`CheckpointError`."""
    from safetensors.torch import load_model as st_load_model

    directory = Path(directory)
    own = _config_dict(model)
    if own is not None and (directory / CONFIG_FILE).exists():
        saved = read_config(directory)
        diff = [k for k in sorted(set(own) | set(saved)) if own.get(k) != saved.get(k)]
        if diff:
            raise CheckpointError(
                f"{directory / CONFIG_FILE}: the saved model differs from this one in "
                + ", ".join(f"{k}={saved.get(k)!r} (saved) vs {own.get(k)!r} (model)" for k in diff)
            )
    path = directory / MODEL_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        st_load_model(model, str(path), strict=True, device=str(next(model.parameters()).device))
    except Exception as err:  # safetensors raises its own error types for corrupt headers
        raise CheckpointError(f"{path}: cannot load weights into {type(model).__name__} ({err})") from err


def _parameters_in(weights: Path) -> int:
    """How many numbers a safetensors file holds, read from its header alone."""
    from safetensors import safe_open

    if not weights.is_file():
        raise CheckpointError(f"{weights}: no such checkpoint file")
    try:
        with safe_open(str(weights), framework="pt") as f:
            return sum(math.prod(f.get_slice(name).get_shape()) for name in f.keys())
    except Exception as err:  # safetensors raises its own error types for corrupt headers
        raise CheckpointError(f"{weights}: not a readable safetensors file ({err})") from err


class PretrainedMixin:
    """``model.save_pretrained(dir)`` and ``Model.from_pretrained(dir)`` for a model whose
    ``__init__`` takes one dataclass config of type ``config_class``."""

    config_class: type

    def save_pretrained(self, directory) -> Path:
        return save_model(self, directory)

    @classmethod
    def min_parameters(cls, config) -> int:
        """A lower bound on the parameters a model with ``config`` has (0: no check)."""
        return 0

    @classmethod
    def from_pretrained(cls, directory, device=None):
        config = read_config(directory)
        if config.get("architecture", cls.__name__) != cls.__name__:
            raise CheckpointError(
                f"{Path(directory) / CONFIG_FILE}: holds a {config['architecture']}, not a {cls.__name__}"
            )
        config = config_from_dict(cls.config_class, config)
        held = _parameters_in(Path(directory) / MODEL_FILE)
        if cls.min_parameters(config) > held:
            raise CheckpointError(
                f"{Path(directory) / CONFIG_FILE}: describes a model of at least {cls.min_parameters(config):,} "
                f"parameters, but {MODEL_FILE} holds {held:,}; the two do not belong together"
            )
        model = cls(config)
        if device is not None:
            model.to(device)
        load_model(model, directory)
        return model.eval()
