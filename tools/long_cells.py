"""List the chapters' code cells longer than a limit (issue 23: cells of at most ~40 lines).

Usage: python3 tools/long_cells.py [LIMIT]   (default 40). Counts the lines of each `# %%` code
cell of chapters/NN_name.py (the jupytext sources), blank lines at the end left out, and prints,
per chapter, how many cells exceed the limit and where they start, longest first.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def code_cells(path: Path) -> Iterator[tuple[int, int]]:
    """(line where the cell's `# %%` marker is, 1-based; number of lines of code) for each code cell."""
    lines = path.read_text(encoding="utf-8").splitlines()
    start, is_code = None, False
    for i, line in enumerate([*lines, "# %%"]):
        if line.startswith("# %%"):
            if start is not None and is_code:
                body = lines[start + 1 : i]
                while body and not body[-1].strip():
                    body.pop()
                yield start + 1, len(body)
            start, is_code = i, "[markdown]" not in line and "[raw]" not in line


def main(argv: list[str]) -> int:
    limit = int(argv[0]) if argv else 40
    total = 0
    for path in sorted((ROOT / "chapters").glob("[0-9][0-9]_*.py")):
        long = sorted((n, line) for line, n in code_cells(path) if n > limit)[::-1]
        total += len(long)
        where = ", ".join(f"line {line} ({n})" for n, line in long)
        print(f"{path.name}: {len(long)} code cells over {limit} lines" + (f": {where}" if where else ""))
    print(f"total: {total}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
