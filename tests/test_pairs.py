"""Every chapter is a jupytext pair whose two sides agree, executed, and checked by nbval."""

from __future__ import annotations

from pathlib import Path

import jupytext
import pytest

CHAPTERS = Path(__file__).resolve().parent.parent / "chapters"
SOURCES = sorted(CHAPTERS.glob("[0-9][0-9]_*.py"))
NOTEBOOKS = sorted(CHAPTERS.glob("[0-9][0-9]_*.ipynb"))


def cell_sources(path: Path) -> list[tuple[str, str]]:
    return [(cell.cell_type, cell.source.strip()) for cell in jupytext.read(path).cells]


def first_difference(a: list, b: list) -> str:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return f"cell {i}: .py has {x[1][:60]!r}, .ipynb has {y[1][:60]!r}"
    return f".py has {len(a)} cells, .ipynb has {len(b)}"


def test_there_are_chapters():
    assert len(SOURCES) >= 2, "expected at least the preface and chapter 1 in chapters/"


@pytest.mark.parametrize("py", SOURCES, ids=lambda p: p.name)
def test_pair_cell_sources_are_identical(py: Path):
    notebook = py.with_suffix(".ipynb")
    assert notebook.exists(), f"{py.name} has no {notebook.name}: run python3 tools/book.py execute {py}"
    a, b = cell_sources(py), cell_sources(notebook)
    assert a == b, (
        f"{py.name} and {notebook.name} have drifted apart ({first_difference(a, b)}); "
        f"edit the .py and run python3 tools/book.py execute chapters/{py.name}"
    )


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_has_a_source(notebook: Path):
    assert notebook.with_suffix(".py").exists(), f"{notebook.name} has no .py source beside it"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_executed_with_outputs(notebook: Path):
    code = [c for c in jupytext.read(notebook).cells if c.cell_type == "code"]
    assert code, f"{notebook.name} has no code cells"
    unexecuted = [i for i, c in enumerate(code) if c.get("execution_count") is None]
    assert not unexecuted, f"{notebook.name}: code cells {unexecuted} were never executed"
    assert any(c.get("outputs") for c in code), f"{notebook.name} stores no outputs"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_has_output_checked_by_nbval(notebook: Path):
    checked = [
        c for c in jupytext.read(notebook).cells
        if c.cell_type == "code" and c.source.lstrip().startswith("# NBVAL_CHECK_OUTPUT") and c.get("outputs")
    ]
    assert checked, f"{notebook.name}: mark at least one deterministic cell with # NBVAL_CHECK_OUTPUT"
