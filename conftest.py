"""Repository-wide pytest hooks: report how long each chapter notebook took to execute."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

_notebook_seconds: dict[str, float] = defaultdict(float)


def pytest_runtest_logreport(report):
    path = report.nodeid.split("::", 1)[0]
    if path.endswith(".ipynb"):
        _notebook_seconds[path] += report.duration  # setup (kernel start), call and teardown


def pytest_terminal_summary(terminalreporter):
    if not _notebook_seconds:
        return
    terminalreporter.section("chapter execution times")
    for path, seconds in sorted(_notebook_seconds.items()):
        terminalreporter.write_line(f"{Path(path).name:<36} {seconds:7.1f} s")
    terminalreporter.write_line(f"{'all chapters':<36} {sum(_notebook_seconds.values()):7.1f} s")
