"""environment.yml (for conda users) lists exactly the packages pyproject.toml asks for."""

from __future__ import annotations

import re
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent
CONDA_TO_PIP = {"pytorch": "torch"}  # conda-forge's name for the same package


def split(requirement: str) -> tuple[str, str]:
    match = re.match(r"\s*([A-Za-z0-9_.\-]+)\s*(.*)", requirement)
    assert match, f"cannot parse requirement {requirement!r}"
    name = match.group(1).lower().replace("_", "-")
    return CONDA_TO_PIP.get(name, name), match.group(2).replace(" ", "")


def pyproject_requirements() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        reqs += extra
    return dict(split(r) for r in reqs)


def environment_requirements() -> dict[str, str]:
    """A small reader for the two lists in environment.yml (PyYAML is not a dependency)."""
    reqs: dict[str, str] = {}
    for line in (ROOT / "environment.yml").read_text().splitlines():
        item = re.match(r"^\s+-\s+([^#]+?)\s*$", line)
        if not item or item.group(1) in {"pip", "pip:", "conda-forge"} or item.group(1).startswith("python="):
            continue
        name, spec = split(item.group(1))
        reqs[name] = spec
    return reqs


def test_environment_yml_matches_pyproject():
    assert environment_requirements() == pyproject_requirements()


def test_pyproject_never_asks_for_an_unbounded_jupyter_book():
    assert "<2" in pyproject_requirements()["jupyter-book"], "jupyter-book 2 is a different program"
