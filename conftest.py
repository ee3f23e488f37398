"""Repository-wide pytest set-up: run offline, and report how long each chapter took to execute."""

from __future__ import annotations

import os
import sys
from collections import defaultdict
from pathlib import Path

_OFFLINE = Path(__file__).resolve().parent / "tools" / "offline"

# Every process started from here on (notebook kernels, the site build) imports the network guard.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_OFFLINE), os.environ.get("PYTHONPATH")]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PYTHONHASHSEED", "0")
sys.path.insert(0, str(_OFFLINE))
import sitecustomize as _network_guard  # noqa: E402,F401  (this process too)

_notebook_seconds: dict[str, float] = defaultdict(float)


def pytest_collection_modifyitems(items):
    """Every chapter notebook that nbval collects is marked ``notebook`` (``book.py test --quick`` leaves them out)."""
    import pytest

    for item in items:
        if item.nodeid.split("::", 1)[0].endswith(".ipynb"):
            item.add_marker(pytest.mark.notebook)


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
