#!/usr/bin/env python3
"""Print the map from each chapter section to the package modules it introduces.

    python3 tools/section_map.py          # the Markdown table kept in CONTRIBUTING.md
    python3 tools/section_map.py --write  # rewrite that table in CONTRIBUTING.md

Every module's docstring says `Introduced in chapter N, section "Heading"` (tests/test_docstrings.py
checks that the heading exists); this reads those lines, so the map cannot drift from the code.
"""

from __future__ import annotations

import ast
import re
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONTRIBUTING = ROOT / "CONTRIBUTING.md"
BEGIN, END = "<!-- section map: begin -->", "<!-- section map: end -->"
INTRODUCED = re.compile(r'Introduced in chapter (\d+), section\s+"([^"]+)"')


def chapter_files() -> dict[int, Path]:
    return {int(p.name[:2]): p for p in sorted((ROOT / "chapters").glob("[0-9][0-9]_*.py"))}


def introductions() -> dict[tuple[int, str], list[str]]:
    """(chapter, section) -> the modules whose docstring says they are introduced there."""
    found = defaultdict(list)
    for path in sorted((ROOT / "aigc_book").rglob("*.py")):
        if path.name in ("__init__.py", "__main__.py"):
            continue
        doc = re.sub(r"\s*\n\s*", " ", ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or "")
        match = INTRODUCED.search(doc)
        if match:
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[(int(match.group(1)), match.group(2))].append(module)
    return found


def section_order(chapter: Path) -> list[str]:
    return [m.group(1).strip() for m in re.finditer(r"^# #+ (.+)$", chapter.read_text(encoding="utf-8"), re.M)]


def table() -> str:
    chapters = chapter_files()
    rows = ["| chapter | section | modules |", "|---|---|---|"]
    found = introductions()
    for number, path in chapters.items():
        order = section_order(path)
        sections = [s for c, s in found if c == number]
        for section in sorted(sections, key=lambda s: order.index(s) if s in order else len(order)):
            modules = ", ".join(f"`{m}`" for m in found[(number, section)])
            rows.append(f"| {number} `{path.stem}` | {section} | {modules} |")
    return "\n".join(rows)


def with_table(text: str) -> str:
    start, stop = text.index(BEGIN) + len(BEGIN), text.index(END)
    return text[:start] + "\n" + table() + "\n" + text[stop:]


if __name__ == "__main__":
    if "--write" in sys.argv[1:]:
        CONTRIBUTING.write_text(with_table(CONTRIBUTING.read_text(encoding="utf-8")), encoding="utf-8")
    else:
        print(table())
