"""Published figures about real language models, and the 6·N·D training-compute estimate.

Introduced in chapter 1, section "Real models over time".

The table ``aigc_book/data/models.csv`` is copied from the book's fact sheet. Every row names its
source and a confidence label: ``V`` (checked against the paper, its abstract, a model card, or a
page quoting it) or ``M`` (from memory of the primary source, not re-checked). Empty cells mean the
source publishes no figure; they load as ``None`` and are never filled in with estimates.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from aigc_book.checks import is_number

__all__ = [
    "ModelFacts", "load_models", "positive_number", "read_table", "training_flops_estimate", "MODELS_CSV_COLUMNS",
]

MODELS_CSV_COLUMNS = (
    "model",
    "released",
    "params",
    "training_tokens",
    "training_flops",
    "gpu_hours",
    "hardware",
    "source",
    "confidence",
)


@dataclass(frozen=True)
class ModelFacts:
    """One row of ``models.csv``: a model's published size, data and compute.

    Numbers are floats (parameters, tokens, FLOPs, GPU-hours); ``None`` where the source gives no
    figure. ``released`` is ``"YYYY-MM"``.
    """

    model: str
    released: str
    params: float
    training_tokens: float | None
    training_flops: float | None
    gpu_hours: float | None
    hardware: str | None
    source: str
    confidence: str

    @property
    def released_year(self) -> float:
        """The release month as a fractional year (mid-month), e.g. ``"2020-05"`` → 2020.375."""
        year, month = self.released.split("-")
        return int(year) + (int(month) - 0.5) / 12


def positive_number(text: str, *, table: str, column: str, line: int, required: bool = True) -> float | None:
    """A table cell that must hold a positive, finite number (None for an empty optional cell)."""
    text = text.strip()
    if not text:
        if required:
            raise ValueError(f"{table} line {line}: column {column!r} must not be empty")
        return None
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{table} line {line}: column {column!r} is not a number: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{table} line {line}: column {column!r} must be positive, got {text!r}")
    return value


def read_table(filename: str, columns: tuple[str, ...], path: str | Path | None = None) -> list[tuple[int, dict]]:
    """Rows of one of the book's CSV tables as ``(line number, {column: text})``, header checked.

    ``path`` defaults to the copy of ``filename`` shipped in ``aigc_book/data``. A header other than
    ``columns`` or a row with too few or too many fields raises ``ValueError`` naming the file and line;
    the loaders (:func:`load_models`, ``efficiency.cost.load_accelerators``,
    ``productivity.load_studies``) check the values.
    """
    if path is None:
        text = resources.files("aigc_book").joinpath("data", filename).read_text(encoding="utf-8")
    else:
        text = Path(path).read_text(encoding="utf-8")
    reader = csv.DictReader(text.splitlines())
    if tuple(reader.fieldnames or ()) != columns:
        raise ValueError(f"{filename} columns must be {columns}, got {reader.fieldnames}")
    rows = []
    for line, raw in enumerate(reader, start=2):
        if None in raw or any(v is None for v in raw.values()):
            raise ValueError(f"{filename} line {line}: expected {len(columns)} fields")
        rows.append((line, raw))
    return rows


def load_models(path: str | Path | None = None) -> list[ModelFacts]:
    """Load the models table, in file order (which is release order).

    ``path`` defaults to the copy shipped inside the package. Malformed rows raise ``ValueError``
    naming the line and column: a missing source or confidence, a date not in ``YYYY-MM`` form, a
    number that does not parse or is not positive.
    """
    rows: list[ModelFacts] = []
    for line, raw in read_table("models.csv", MODELS_CSV_COLUMNS, path):
        released = raw["released"].strip()
        parts = released.split("-")
        if len(parts) != 2 or not (parts[0].isdigit() and parts[1].isdigit()) or not 1 <= int(parts[1]) <= 12:
            raise ValueError(f"models.csv line {line}: released must be YYYY-MM, got {released!r}")
        for column in ("model", "source"):
            if not raw[column].strip():
                raise ValueError(f"models.csv line {line}: column {column!r} must not be empty")
        confidence = raw["confidence"].strip()
        if confidence not in ("V", "M"):
            raise ValueError(f"models.csv line {line}: confidence must be 'V' or 'M', got {confidence!r}")
        num = {
            c: positive_number(raw[c], table="models.csv", column=c, line=line, required=(c == "params"))
            for c in ("params", "training_tokens", "training_flops", "gpu_hours")
        }
        rows.append(
            ModelFacts(
                model=raw["model"].strip(),
                released=released,
                params=num["params"],  # type: ignore[arg-type]  # required, so never None
                training_tokens=num["training_tokens"],
                training_flops=num["training_flops"],
                gpu_hours=num["gpu_hours"],
                hardware=raw["hardware"].strip() or None,
                source=raw["source"].strip(),
                confidence=confidence,
            )
        )
    return rows


def training_flops_estimate(params: float, tokens: float) -> float:
    """Training compute of a dense Transformer, ``C ≈ 6·N·D`` floating-point operations.

    ``N`` is the number of parameters and ``D`` the number of training tokens. Each token costs
    about ``2N`` FLOPs in the forward pass (one multiply and one add per weight) and about ``4N``
    in the backward pass, hence 6. The estimate ignores the attention term
    ``2·n_layer·n_ctx·d_model`` per token, which is small for large models.

    Source: Kaplan et al. 2020, "Scaling Laws for Neural Language Models", arXiv:2001.08361, §2.1.
    For a mixture-of-experts model, pass the parameters *active* per token, not the total.

    It is an estimate, not every paper's accounting: Hoffmann et al. 2022 (arXiv:2203.15556,
    Appendix F) count every matrix product, embeddings and attention included, and report the same
    training compute for Gopher and Chinchilla, while 6·N·D gives Chinchilla about 17% more than
    Gopher (checked in ``tests/test_facts.py``).

    >>> f"{training_flops_estimate(175e9, 300e9):.3e}"   # GPT-3; Brown et al. 2020 publish 3.14e23
    '3.150e+23'
    """
    for name, value in (("params", params), ("tokens", tokens)):
        if not is_number(value):
            raise TypeError(f"{name} must be a number, got {type(value).__name__}")
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"{name} must be a positive, finite number, got {value}")
    return 6.0 * float(params) * float(tokens)
