"""Where a chapter's time goes: per cell, and split into training, evaluation, sampling and plotting.

    python3 tools/book.py profile                       # every chapter
    python3 tools/book.py profile chapters/05_rlhf.py   # one chapter (several may follow)

The chapter runs in a fresh kernel exactly as `book.py execute` runs it, with timers installed by a
first, hidden cell (nothing is written back to the notebook). Time is attributed to the innermost
activity running, so nothing is counted twice:

- training: a model's forward pass with gradients on, `backward`, and optimizer steps;
- evaluation: a forward pass with gradients off, outside generation;
- sampling: everything inside a generation function (`generate`, beam search, speculative decoding);
- plotting: drawing figures (`plt.show`, the inline backend's rendering, `savefig`);
- other: the rest of the cell (data, Python loops, tokenizers, checks).

PyTorch's global module hooks (`register_module_forward_pre_hook`) and optimizer hooks
(`register_optimizer_step_pre_hook`) see every model without touching the book's code. The report
also gives the machine's float32 and bfloat16 matmul peaks, so that times from different machines
can be compared.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

MARK = "@@chapter-profile@@"
CATEGORIES = ("training", "evaluation", "sampling", "plotting", "other")

# Runs inside the chapter's kernel before its first cell.
KERNEL_SETUP = r'''
import functools as _ft, importlib as _il, json as _json, time as _time
import torch as _torch
from torch.optim.optimizer import register_optimizer_step_post_hook as _opt_post
from torch.optim.optimizer import register_optimizer_step_pre_hook as _opt_pre
from IPython import get_ipython as _get_ipython


class _ChapterTimer:
    def __init__(self):
        self.stack, self.totals, self.cells, self.forward_depth = [], {}, [], 0
        self.start = self.last = _time.perf_counter()
        self.recording = False

    def _charge(self):
        now = _time.perf_counter()
        if self.stack:
            self.totals[self.stack[-1]] = self.totals.get(self.stack[-1], 0.0) + now - self.last
        self.last = now

    def enter(self, category):
        self._charge()
        self.stack.append(category)

    def leave(self):
        self._charge()
        if self.stack:
            self.stack.pop()

    def pre_cell(self, info):
        self.recording = MARK not in info.raw_cell  # the report cell is not the chapter's
        self.stack, self.totals, self.forward_depth = ["other"], {}, 0
        self.start = self.last = _time.perf_counter()

    def post_cell(self, result):
        self._charge()
        if self.recording:
            self.cells.append({"seconds": _time.perf_counter() - self.start, **self.totals})
        self.stack, self.recording = [], False

    def forward_pre(self, module, args):
        self.forward_depth += 1
        if self.forward_depth == 1:
            top = self.stack[-1] if self.stack else "other"
            self.enter("sampling" if top == "sampling" else "training" if _torch.is_grad_enabled() else "evaluation")

    def forward_post(self, module, args, output):
        self.forward_depth -= 1
        if self.forward_depth == 0:
            self.leave()

    def wrap(self, category, fn):
        @_ft.wraps(fn)
        def timed(*args, **kwargs):
            self.enter(category)
            try:
                return fn(*args, **kwargs)
            finally:
                self.leave()
        return timed


_chapter_timer = _ChapterTimer()
_torch.nn.modules.module.register_module_forward_pre_hook(_chapter_timer.forward_pre)
_torch.nn.modules.module.register_module_forward_hook(_chapter_timer.forward_post)
_opt_pre(lambda *a: _chapter_timer.enter("training"))
_opt_post(lambda *a: _chapter_timer.leave())
_torch.autograd.backward = _chapter_timer.wrap("training", _torch.autograd.backward)
for _module, _owner, _name, _category in SAMPLING_AND_PLOTTING:
    try:
        _target = _il.import_module(_module)
        _holder = getattr(_target, _owner) if _owner else _target
        setattr(_holder, _name, _chapter_timer.wrap(_category, getattr(_holder, _name)))
    except (ImportError, AttributeError):
        pass  # a name the package no longer has: its time counts as "other"
_get_ipython().events.register("pre_run_cell", _chapter_timer.pre_cell)
_get_ipython().events.register("post_run_cell", _chapter_timer.post_cell)
'''

# (module, class or "", function, category): wrapped before the chapter imports anything.
WRAPPED = [
    ("aigc_book.generation.search", "", "generate", "sampling"),
    ("aigc_book.generation.beam", "", "beam_search", "sampling"),
    ("aigc_book.generation.speculative", "", "speculative_generate", "sampling"),
    ("aigc_book.models.gpt", "GPT", "generate", "sampling"),
    ("aigc_book.vision.captioner", "Captioner", "generate", "sampling"),
    ("aigc_book.tasks.sft", "", "generate_responses", "sampling"),
    ("matplotlib.pyplot", "", "show", "plotting"),
    ("matplotlib.figure", "Figure", "savefig", "plotting"),
    ("matplotlib_inline.backend_inline", "", "flush_figures", "plotting"),
]

REPORT_CELL = f"print({MARK!r} + _json.dumps(_chapter_timer.cells))"


def profile_chapter(py: Path, timeout: int = 1800) -> dict:
    """Execute one chapter with timers; return its wall time, per-cell rows and category totals."""
    import jupytext
    import nbformat
    from nbclient import NotebookClient

    notebook = jupytext.read(py)
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    sources = [cell.source for cell in notebook.cells if cell.cell_type == "code"]
    setup = f"SAMPLING_AND_PLOTTING = {WRAPPED!r}\nMARK = {MARK!r}\n{KERNEL_SETUP}"
    notebook.cells = ([nbformat.v4.new_code_cell(setup)] + [c for c in notebook.cells if c.cell_type == "code"]
                      + [nbformat.v4.new_code_cell(REPORT_CELL)])
    os.environ.setdefault("PYTHONHASHSEED", "0")
    start = time.perf_counter()
    NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(py.parent)}}).execute()
    wall = time.perf_counter() - start
    text = "".join(o.get("text", "") for o in notebook.cells[-1].outputs if o.get("name") == "stdout")
    cells = json.loads(text.split(MARK, 1)[1])  # the set-up cell registered the timers as it ended
    rows = []
    for index, (source, cell) in enumerate(zip(sources, cells)):
        known = sum(cell.get(c, 0.0) for c in CATEGORIES if c != "other")
        row = {c: cell.get(c, 0.0) for c in CATEGORIES if c != "other"}
        row.update(index=index, seconds=cell["seconds"], other=max(0.0, cell["seconds"] - known),
                   first_line=next((line for line in source.splitlines() if line.strip()), "")[:60])
        rows.append(row)
    totals = {c: sum(r[c] for r in rows) for c in CATEGORIES}
    return {"chapter": py.stem, "wall_seconds": wall, "cells": rows, "totals": totals}


def machine_peaks() -> dict:
    """Float32 and bfloat16 matmul peaks of this CPU (GFLOP/s), measured as chapter 6 does."""
    import torch

    from aigc_book.efficiency.hardware import matmul_peak

    return {f"{dtype}_gflops": matmul_peak("cpu", getattr(torch, dtype)) / 1e9 for dtype in ("float32", "bfloat16")}


def table_row(name: str, wall: float, totals: dict) -> str:
    return f"{name:<24}{wall:8.1f}" + "".join(f"{totals[c]:12.1f}" for c in CATEGORIES)


def report(profiles: list[dict], peaks: dict, top: int = 5) -> str:
    lines = [f"matmul peak on this CPU: float32 {peaks['float32_gflops']:.0f} GFLOP/s, "
             f"bfloat16 {peaks['bfloat16_gflops']:.0f} GFLOP/s ({os.cpu_count()} logical cores)", ""]
    header = f"{'chapter':<24}{'wall s':>8}" + "".join(f"{c:>12}" for c in CATEGORIES)
    lines += [header, "-" * len(header)]
    for p in profiles:
        lines.append(table_row(p["chapter"], p["wall_seconds"], p["totals"]))
    total = {c: sum(p["totals"][c] for p in profiles) for c in CATEGORIES}
    lines.append(table_row("all", sum(p["wall_seconds"] for p in profiles), total))
    for p in profiles:
        lines += ["", f"{p['chapter']}: the {top} slowest cells"]
        for row in sorted(p["cells"], key=lambda r: -r["seconds"])[:top]:
            split = ", ".join(f"{c} {row[c]:.1f}" for c in CATEGORIES if row[c] >= 0.05)
            lines.append(f"  cell {row['index']:>3} {row['seconds']:7.1f} s  ({split})  {row['first_line']}")
    return "\n".join(lines)
