"""Every module says where the book introduces it, and every chapter section it names exists."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODULES = sorted(p for p in (ROOT / "aigc_book").rglob("*.py") if p.name not in ("__init__.py", "__main__.py"))
# `chapter 2, section "The block and the whole GPT"` (quotes may wrap onto the next docstring line)
SECTION = re.compile(r'chapter (\d+), section\s+"([^"]+)"')


def headings(chapter: int) -> set[str]:
    (source,) = (ROOT / "chapters").glob(f"{chapter:02d}_*.py")
    return {m.group(1).strip() for m in re.finditer(r"^# #+ (.+)$", source.read_text(encoding="utf-8"), re.M)}


def docstrings(path: Path) -> str:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = [tree] + [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))]
    return "\n".join(ast.get_docstring(n) or "" for n in nodes)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT / "aigc_book")))
def test_module_names_the_section_that_introduces_it(path):
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    assert re.search(r"Introduced in chapter \d+, section\s+\"", doc), (
        f"{path.name}: the module docstring should say 'Introduced in chapter N, section \"Heading\"'"
    )


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT / "aigc_book")))
def test_every_named_section_is_a_real_heading(path):
    text = re.sub(r"\s*\n\s*", " ", docstrings(path))  # a quoted heading may wrap across lines
    for chapter, section in SECTION.findall(text):
        assert section in headings(int(chapter)), f'{path.name}: chapter {chapter} has no section "{section}"'


def test_the_check_itself_catches_a_wrong_section():
    assert "The block and the whole GPT" in headings(2)
    assert "The training loop" not in headings(3)  # what trainer.py used to claim


def test_contributing_maps_every_section_to_its_modules():
    """CONTRIBUTING.md's table of chapter sections and their modules is the one the docstrings give."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("section_map", ROOT / "tools" / "section_map.py")
    section_map = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(section_map)
    text = (ROOT / "CONTRIBUTING.md").read_text(encoding="utf-8")
    stale = "CONTRIBUTING.md's section map is stale: run python3 tools/section_map.py --write"
    assert section_map.with_table(text) == text, stale
    assert "| 2 `02_attention` | The block and the whole GPT |" in text
