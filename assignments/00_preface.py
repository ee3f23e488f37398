# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [raw]
# # ASSIGNMENT CONFIG
# name: 00_preface
# init_cell: true
# check_all_cell: false
# export_cell: false
# solutions_pdf: false
# generate: true
# tests:
#   files: false

# %% [markdown]
# # Assignment 0: How to use this book
#
# The exercises of the preface: finding the chapters' run times, choosing the device with
# `AIGC_DEVICE`, the cross-entropy and perplexity of a uniform model, and the settings cell of
# chapter 1. Read the preface's sections "Two commands", "CPU or GPU" and "Notation" first. Write
# your answers in the cells marked `...`, run them, and check each autograded answer with
# `grader.check("ex2")` (and so on): it runs the public tests; hidden tests run when your notebook
# is graded. Exercise 1 is graded by hand.

# %%
import math
import os
from unittest import mock

import torch
import torch.nn.functional as F

from aigc_book import get_device, seed_everything

seed_everything(0)

# %% [raw]
# # BEGIN QUESTION
# name: ex1
# manual: true
# points: 2

# %% [markdown]
# **Exercise 1. How long did each chapter take?** *(open: graded by hand)* Run
# `python3 tools/book.py test` and find, in its output, how long each chapter took. Say where in
# the output the times are, what a time includes, and name the slowest chapter on your machine
# with its time.

# %% [raw]
# # BEGIN SOLUTION

# %% [markdown]
# The times are in the section **"chapter execution times"** that pytest prints at the very end of
# its output, after the test results: one line per notebook (`00_preface.ipynb ... s`, and so on)
# and a last line `all chapters`. The repository's `conftest.py` writes that section: it adds up,
# for each `.ipynb`, the durations pytest reports for its cells, kernel start (set-up) and
# teardown included, so a chapter's time there is a little longer than its own cells' run time.
# The last cell of each chapter also prints its own time (`chapter executed in ... s`), and
# `python3 tools/book.py execute` (or `build`) prints the same kind of table when it executes the
# chapters. The slowest chapters are the ones that train models (chapters 3 to 5 and the capstone;
# chapter 2 takes about two minutes on a 2-core laptop CPU); the exact numbers depend on the
# machine and on what else is running. A full answer names the section, one or two of the measured
# times, and the slowest chapter.

# %% [raw]
# # END SOLUTION

# %% [raw]
# # END QUESTION

# %% [raw]
# # BEGIN QUESTION
# name: ex2
# points: 3

# %% [markdown]
# **Exercise 2. `AIGC_DEVICE=cpu` wins over a GPU.** *(autograded)* Starting Jupyter with
# `AIGC_DEVICE=cpu` sets an environment variable that the kernel inherits; in a notebook you can
# set it directly in `os.environ`. Define three `torch.device` values:
#
# * `device_from_env`: what `get_device()` returns after `os.environ["AIGC_DEVICE"] = "cpu"`;
# * `fake_gpu_default`: what `get_device()` returns on a machine that *claims* to have a GPU, with
#   `AIGC_DEVICE` empty. Fake the GPU with
#   `mock.patch("torch.cuda.is_available", return_value=True)` and empty the variable with
#   `mock.patch.dict(os.environ, {"AIGC_DEVICE": ""})`, both in one `with` statement. (Nothing runs
#   on the device: `get_device` only chooses it.)
# * `fake_gpu_with_env`: the same fake GPU machine, with `AIGC_DEVICE` set to `"cpu"`.
#
# The first shows the variable works here; the other two show that it overrides a GPU.

# %% [raw]
# # BEGIN SOLUTION

# %%
# BEGIN SOLUTION
os.environ["AIGC_DEVICE"] = "cpu"
# END SOLUTION
device_from_env = get_device()  # SOLUTION
# BEGIN PROMPT
fake_gpu_default = ...
fake_gpu_with_env = ...
# END PROMPT
# BEGIN SOLUTION NO PROMPT
with (
    mock.patch("torch.cuda.is_available", return_value=True),
    mock.patch.dict(os.environ, {"AIGC_DEVICE": ""}),
):
    fake_gpu_default = get_device()
with (
    mock.patch("torch.cuda.is_available", return_value=True),
    mock.patch.dict(os.environ, {"AIGC_DEVICE": "cpu"}),
):
    fake_gpu_with_env = get_device()
# END SOLUTION
print(device_from_env, fake_gpu_default, fake_gpu_with_env)

# %% [raw]
# # END SOLUTION

# %% [raw]
# # BEGIN TESTS

# %%
assert isinstance(device_from_env, torch.device), "device_from_env should be a torch.device"
assert device_from_env.type == "cpu", (
    f"with AIGC_DEVICE=cpu, get_device() should return the CPU, got {device_from_env}"
)

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
assert isinstance(fake_gpu_default, torch.device) and fake_gpu_default.type == "cuda", (
    "fake_gpu_default: with torch.cuda.is_available() patched to True and AIGC_DEVICE empty, "
    f"get_device() should choose 'cuda' (got {fake_gpu_default}); is the patch active during "
    "the call?"
)

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
assert isinstance(fake_gpu_with_env, torch.device) and fake_gpu_with_env.type == "cpu", (
    "fake_gpu_with_env: on the fake GPU machine, AIGC_DEVICE=cpu should still give the CPU, "
    f"got {fake_gpu_with_env}"
)

# %% [raw]
# # END TESTS

# %% [raw]
# # END QUESTION

# %% [raw]
# # BEGIN QUESTION
# name: ex3
# points: 3

# %% [markdown]
# **Exercise 3. The uniform model.** *(autograded)* A model assigns probability
# $1/\lvert\mathcal{V}\rvert$ to every token of a vocabulary of size $\lvert\mathcal{V}\rvert$.
# Write two functions of the vocabulary size: `uniform_cross_entropy(vocab_size)`, its
# cross-entropy in **nats** per token (a float), and `uniform_perplexity(vocab_size)`, its
# perplexity. Then check your formula the way the preface's last cell computes a cross-entropy:
# set `checked_nats` to $-\frac1T\sum_t \log p_t$ computed with `torch` from a float64 tensor of
# $T = 10$ probabilities, all equal to $1/50257$ (GPT-2's vocabulary size).

# %% [raw]
# # BEGIN SOLUTION

# %%
def uniform_cross_entropy(vocab_size):
    """Cross-entropy of the uniform model, in nats per token."""
    return math.log(vocab_size)  # SOLUTION


def uniform_perplexity(vocab_size):
    """Perplexity of the uniform model: exp(cross-entropy in nats)."""
    return math.exp(uniform_cross_entropy(vocab_size))  # SOLUTION


# BEGIN SOLUTION NO PROMPT
uniform_probabilities = torch.full((10,), 1 / 50257, dtype=torch.float64)
# END SOLUTION
checked_nats = -uniform_probabilities.log().mean().item()  # SOLUTION
print("nats:", uniform_cross_entropy(50257), "perplexity:", uniform_perplexity(50257))
print("checked with torch:", checked_nats)

# %% [raw]
# # END SOLUTION

# %% [raw]
# # BEGIN TESTS

# %%
_zero_logits = torch.zeros(1, 4, dtype=torch.float64)  # softmax of equal logits is uniform
_expected = F.cross_entropy(_zero_logits, torch.tensor([2])).item()
assert abs(uniform_cross_entropy(4) - _expected) < 1e-9, (
    f"uniform_cross_entropy(4) should be the cross-entropy of 4 equally likely tokens, "
    f"{_expected:.6f} nats, got {uniform_cross_entropy(4)}"
)
assert abs(checked_nats - uniform_cross_entropy(50257)) < 1e-9, (
    "checked_nats (computed with torch from the probabilities) should equal "
    "uniform_cross_entropy(50257)"
)

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
for _v in (2, 65, 1000, 50257):
    _logits = torch.zeros(3, _v, dtype=torch.float64)
    _expected = F.cross_entropy(_logits, torch.tensor([0, _v // 2, _v - 1])).item()
    assert abs(uniform_cross_entropy(_v) - _expected) < 1e-9, (
        f"uniform_cross_entropy({_v}) should be {_expected:.6f} nats (natural log), "
        f"got {uniform_cross_entropy(_v)}"
    )

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
for _v in (2, 65, 1000, 50257):
    assert math.isclose(uniform_perplexity(_v), _v, rel_tol=1e-9), (
        f"the perplexity of a uniform model over {_v} tokens should be {_v} (the number of "
        f"equally likely tokens), got {uniform_perplexity(_v)}"
    )

# %% [raw]
# # END TESTS

# %% [raw]
# # END QUESTION

# %% [raw]
# # BEGIN QUESTION
# name: ex4
# points: 3

# %% [markdown]
# **Exercise 4. What a GPU changes in chapter 1.** *(autograded)* Open chapter 1
# (`chapters/01_background.py`), find its settings cell, and list which of its values change when
# `device.type == "cuda"`. Set `cuda_changes` to the **set** of the names (strings, spelled as in
# the cell) of the settings that the `if device.type == "cuda":` block changes, and `cuda_values`
# to a dict from each of those names to its value on a GPU.

# %% [raw]
# # BEGIN SOLUTION

# %%
cuda_changes = {"N_DRAWS"}  # SOLUTION
cuda_values = {"N_DRAWS": 2_000_000}  # SOLUTION

# %% [raw]
# # END SOLUTION

# %% [raw]
# # BEGIN TESTS

# %%
_settings = {"HELD_OUT_FRACTION", "K_FIRST", "K_GRID", "SAMPLE_CHARS", "SAMPLE_SEEDS", "N_DRAWS"}
assert isinstance(cuda_changes, set) and all(isinstance(n, str) for n in cuda_changes), (
    "cuda_changes should be a set of names (strings), e.g. {'K_FIRST'}"
)
assert cuda_changes <= _settings, (
    f"cuda_changes should hold names from chapter 1's settings cell, {sorted(_settings)}; "
    f"not {sorted(cuda_changes - _settings)}"
)
assert isinstance(cuda_values, dict) and set(cuda_values) == cuda_changes, (
    "cuda_values should be a dict with one entry for each name in cuda_changes"
)

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
import ast as _ast  # noqa: E402
from pathlib import Path as _Path  # noqa: E402

import aigc_book as _book  # noqa: E402

# What chapter 1 assigns under `if device.type == "cuda":`, read from its source when the grader
# has the book's sources, else the values of the book as this assignment was written.
_source = _Path(_book.__file__).resolve().parents[1] / "chapters" / "01_background.py"
_cuda_settings = {"N_DRAWS": 2_000_000}
if _source.exists():
    _ifs = [
        n
        for n in _ast.parse(_source.read_text(encoding="utf-8")).body
        if isinstance(n, _ast.If) and "cuda" in _ast.unparse(n.test)
    ]
    _cuda_settings = {
        t.id: _ast.literal_eval(a.value)
        for a in _ifs[0].body
        if isinstance(a, _ast.Assign)
        for t in a.targets
    }
assert cuda_changes == set(_cuda_settings), (
    f"chapter 1's settings cell changes {len(_cuda_settings)} value(s) on a GPU; your set "
    f"{sorted(cuda_changes)} is not it (read the lines under `if device.type == \"cuda\":`)"
)

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
import ast as _ast  # noqa: E402
from pathlib import Path as _Path  # noqa: E402

import aigc_book as _book  # noqa: E402

# What chapter 1 assigns under `if device.type == "cuda":`, read from its source when the grader
# has the book's sources, else the values of the book as this assignment was written.
_source = _Path(_book.__file__).resolve().parents[1] / "chapters" / "01_background.py"
_cuda_settings = {"N_DRAWS": 2_000_000}
if _source.exists():
    _ifs = [
        n
        for n in _ast.parse(_source.read_text(encoding="utf-8")).body
        if isinstance(n, _ast.If) and "cuda" in _ast.unparse(n.test)
    ]
    _cuda_settings = {
        t.id: _ast.literal_eval(a.value)
        for a in _ifs[0].body
        if isinstance(a, _ast.Assign)
        for t in a.targets
    }
assert all(cuda_values.get(n) == v for n, v in _cuda_settings.items()), (
    "cuda_values should give each changed setting the value the chapter sets on a GPU "
    "(a number written 1_000 in Python is 1000)"
)

# %% [raw]
# # END TESTS

# %% [raw]
# # END QUESTION
