"""tools/book.py installs the right PyTorch build and keeps the pairs' notebooks clean."""

from __future__ import annotations

import importlib.util
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture()
def book(monkeypatch):
    spec = importlib.util.spec_from_file_location("book_tool", ROOT / "tools" / "book.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    calls: list[list[str]] = []
    monkeypatch.setattr(module, "run", lambda cmd, **kw: calls.append([str(c) for c in cmd]))
    # Pretend torch is not installed yet.
    monkeypatch.setattr(module.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 1))
    module.calls = calls
    return module


def test_linux_without_gpu_installs_the_cpu_build_only(book, monkeypatch):
    monkeypatch.setattr(book.platform, "system", lambda: "Linux")
    monkeypatch.setattr(book, "has_nvidia_gpu", lambda: False)
    book.install_torch(Path("python"))
    requested = [arg for cmd in book.calls for arg in cmd if arg.startswith("torch")]
    assert requested == [f"torch=={book.TORCH_VERSION}+cpu"]


def test_linux_without_gpu_falls_back_to_the_pytorch_cpu_index(book, monkeypatch):
    monkeypatch.setattr(book.platform, "system", lambda: "Linux")
    monkeypatch.setattr(book, "has_nvidia_gpu", lambda: False)

    def fail_without_index(cmd, **kw):
        book.calls.append(cmd)
        if "--extra-index-url" not in cmd:
            raise subprocess.CalledProcessError(1, cmd)

    monkeypatch.setattr(book, "run", fail_without_index)
    book.install_torch(Path("python"))
    assert book.calls[-1][-2:] == ["--extra-index-url", book.TORCH_CPU_INDEX]
    assert all(f"torch=={book.TORCH_VERSION}+cpu" in cmd for cmd in book.calls)


def test_linux_with_gpu_installs_the_default_cuda_build(book, monkeypatch):
    monkeypatch.setattr(book.platform, "system", lambda: "Linux")
    monkeypatch.setattr(book, "has_nvidia_gpu", lambda: True)
    book.install_torch(Path("python"))
    assert f"torch=={book.TORCH_VERSION}" in book.calls[0]


def test_execute_rejects_a_file_that_is_not_a_chapter_source(tmp_path):
    spec = importlib.util.spec_from_file_location("book_tool2", ROOT / "tools" / "book.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(SystemExit, match="chapters/NN_name.py"):
        module.execute_chapter(tmp_path / "missing.py")


def test_widget_ids_become_stable_and_stay_consistent(tmp_path):
    import json

    spec = importlib.util.spec_from_file_location("book_tool3", ROOT / "tools" / "book.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    a, b = "3f" * 16, "9c" * 16
    notebook = {
        "cells": [
            {"cell_type": "code", "outputs": [{"data": {"application/vnd.jupyter.widget-view+json": {"model_id": b}}}]}
        ],
        "metadata": {
            "widgets": {
                "application/vnd.jupyter.widget-state+json": {
                    "state": {a: {"state": {}}, b: {"state": {"children": [f"IPY_MODEL_{a}"]}}}
                }
            }
        },
    }
    path = tmp_path / "x.ipynb"
    path.write_text(json.dumps(notebook))
    module.stabilise_widget_ids(path)
    text = path.read_text()
    assert a not in text and b not in text
    result = json.loads(text)
    state = result["metadata"]["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    view_id = result["cells"][0]["outputs"][0]["data"]["application/vnd.jupyter.widget-view+json"]["model_id"]
    assert view_id == "0" * 32 and view_id in state  # first seen, first numbered
    assert state[view_id]["state"]["children"] == [f"IPY_MODEL_{'0' * 31}1"]  # references follow the rename


def test_unknown_options_are_refused_except_for_pytest(monkeypatch):
    spec = importlib.util.spec_from_file_location("book_tool4", ROOT / "tools" / "book.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(SystemExit) as err:
        module.main(["build", "--bogus", "--inside"])
    assert err.value.code == 2
    seen = {}
    monkeypatch.setattr(module, "cmd_test", lambda args: seen.setdefault("args", args.pytest_args))
    module.main(["test", "-q", "-k", "site", "--inside"])
    assert seen["args"] == ["-q", "-k", "site"]


@pytest.mark.slow
def test_quick_leaves_out_the_notebooks_the_site_the_assignments_and_the_processes(tmp_path):
    spec = importlib.util.spec_from_file_location("book_tool5", ROOT / "tools" / "book.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.QUICK_EXPRESSION == "not (slow or notebook or site or assignments or torchrun)"
    assert module.pytest_command(False, ["-q"])[-2:] == ["pytest", "-q"]  # the full run is unchanged
    # Collect (without running) the files that hold the long tests, and list what --quick deselects.
    (tmp_path / "list_deselected.py").write_text(
        "import os\n"
        "def pytest_deselected(items):\n"
        "    with open(os.environ['DESELECTED_LIST'], 'a') as f:\n"
        "        f.writelines(item.nodeid + '\\n' for item in items)\n"
    )
    listed = tmp_path / "deselected.txt"
    env = {**os.environ, "DESELECTED_LIST": str(listed),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))}
    paths = ["tests/test_site.py", "tests/test_assignments.py", "tests/test_distributed.py", "chapters"]
    command = module.pytest_command(True, ["--collect-only", "-q", "-p", "list_deselected", "-p", "no:cacheprovider",
                                           *paths])
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    kept = [line for line in result.stdout.splitlines() if "::" in line]
    deselected = listed.read_text().splitlines()
    long_tests = ("test_site.py::", "test_assignments.py::", ".ipynb::", "test_distributed.py::test_torchrun_train_gpt",
                  "test_distributed.py::test_two_process_resume_is_exact")
    for long_test in long_tests:
        assert not [k for k in kept if long_test in k], long_test
        assert [d for d in deselected if long_test in d], long_test  # it exists, and --quick left it out
    assert "tests/test_distributed.py::test_torchrun_env_reads_the_launcher_variables" in kept  # a unit test stays
