# %% [markdown]
# # 0. Preface: how to use this book
#
# This book explains the mathematics and the code behind ChatGPT, from the attention formula to
# learning from human feedback, and what it all costs. It is written for readers who know some
# Python and a little linear algebra and probability, and who want to *see* each idea work: every
# chapter is a {term}`notebook` you can run on a laptop CPU in a couple of minutes.
#
# This preface answers four practical questions: how to get the book running, where to read it,
# what runs differently on a CPU and a GPU, and how the chapters relate to the `aigc_book` package.
# It ends with the notation used throughout.

# %% [markdown]
# ## Two commands
#
# From a clone of the repository, on a machine with Python 3.10 or newer:
#
# ```bash
# python3 tools/book.py build   # installs what it needs, executes every chapter, builds the site
# python3 tools/book.py test    # runs every test: the package, the notebooks, the site
# ```
#
# The first command creates a virtual environment in `.venv/` (or uses the virtual or conda
# environment you are already in), installs PyTorch — the CPU build on a machine without an NVIDIA
# GPU, the CUDA build on one with — and then everything else the book needs. It executes each
# chapter, stores the outputs in the notebooks, and builds this website into `_build/html/`. A
# second run reuses the installation and is quick.
#
# The second command runs the unit tests of `aigc_book`, re-runs every chapter notebook and
# compares the outputs that must not change, checks that each chapter's two files agree, builds
# the site with warnings treated as errors, and loads a page in a headless browser with the
# network cut off, to prove that the mathematics is typeset from the site's own copy of MathJax.

# %% [markdown]
# ## Reading in Jupyter or on the site
#
# Each chapter is a pair of files in `chapters/`:
#
# * `NN_name.py`, the source in jupytext's "percent" format — plain Python in which `# %%` starts
#   a code cell and `# %% [markdown]` a prose cell. It is what authors edit and reviewers read.
# * `NN_name.ipynb`, the same cells executed, with their outputs. It is what the site shows and what
#   you open in Jupyter (`.venv/bin/jupyter lab chapters/`).
#
# On the site you read the outputs as they were when the book was built. In Jupyter you can change
# a number and run the cell again; the interactive widgets (sliders for temperature, attention
# heads and so on) only respond in Jupyter, and the site shows a static figure beside each. Every
# chapter page on the site offers its notebook and its `.py` for download. The site's Reference
# part has a glossary of the key terms (English and 中文), a bibliography, the API reference of
# `aigc_book`, and a page for teachers: each chapter's exercises are also a graded assignment
# (`assignments/NN_name.py`), built and graded offline with `python3 tools/book.py assignments`
# and `python3 tools/book.py grade`.

# %% [markdown]
# ## CPU or GPU
#
# Every chapter starts the same way: it chooses a {term}`device`, seeds every random number generator and
# sets the plotting style.

# %%
import os
import platform

import torch

import aigc_book
from aigc_book import get_device, seed_everything, use_book_style

use_book_style()
device = get_device()
seed_everything(0)
print(
    f"aigc_book {aigc_book.__version__}, PyTorch {torch.__version__}, "
    f"Python {platform.python_version()}"
)
print(f"device: {device}, CPU threads PyTorch uses: {torch.get_num_threads()}")

# %% [markdown]
# `get_device()` picks a CUDA GPU if PyTorch sees one, then Apple's MPS, then the CPU. To override
# the choice, set the environment variable `AIGC_DEVICE` (for example `AIGC_DEVICE=cpu` before
# starting Jupyter) or pass the device by name. A device that is asked for but absent is an error,
# not a silent fallback:

# %%
try:
    get_device("cuda:7" if torch.cuda.is_available() else "cuda")
except RuntimeError as err:
    print("RuntimeError:", err)
print("AIGC_DEVICE is", repr(os.environ.get("AIGC_DEVICE", "")), "(empty: automatic choice)")

# %% [markdown]
# What changes on a GPU is decided in one place per chapter. From chapter 1 on, each chapter has
# one **{term}`settings cell`** right after its setup cell: every size, step count and sample count the
# chapter uses is set there, with the CPU values first and, where a GPU allows more, larger values
# beside them. The outputs stored in the notebooks — what the site shows and what the tests compare —
# were produced with the CPU values, so a laptop reproduces what you read; with CUDA the same cells
# run with the larger values, and their numbers and figures differ. Chapters 1 and 2 set a few
# constants and change them under `if device.type == "cuda":` (chapter 1 only counts and samples,
# so a GPU changes a single number there). From chapter 3 on, the settings are one frozen dataclass,
# `Settings`, built on the package's `ChapterSettings`: its fields' defaults are the CPU values, its
# class attribute `cuda` names what a GPU changes, and `Settings.for_device(device)` returns the one
# or the other; `settings.table()` prints them. A name in `cuda` that is not a field is an error as
# soon as the cell runs, on any device, so a misspelt GPU value does not wait for a GPU to be found.
#
# The package's `Trainer` computes each step's forward pass and loss inside
# `aigc_book.autocast(device)`: {term}`bfloat16 autocast <mixed precision>` on CUDA, and nothing at all elsewhere, so that on
# a CPU the products stay in float32, the precision the stored outputs were computed in. The
# models' attention calls PyTorch's `scaled_dot_product_attention` on every device (chapter 2 also
# writes it out and checks that the two agree), and PyTorch picks the kernel the device has.
# The cell below shows what `autocast` does on your device:

# %%
a = torch.randn(4, 4, device=device)
with aigc_book.autocast(device):
    product = a @ a  # (4, 4)
expected = torch.bfloat16 if device.type == "cuda" else torch.float32
assert product.dtype == expected, (device, product.dtype)
print(f"on {device.type}, a matrix product inside aigc_book.autocast is {product.dtype}")

# %% [markdown]
# On a CPU, PyTorch splits every large operation over several threads, one per core, and waits for
# the slowest. Your laptop is rarely quiet: when another program (or a second notebook that is
# training) holds one of those cores, that thread runs only in the time slices the operating system
# gives it, every operation waits for it, and the idle threads spin on the cores the other program
# needs; two trainings side by side can each become many times slower (`benchmarks/contention.py`
# measures how much on your machine). So when `get_device()` picks the CPU, it also lets the thread
# count follow the machine's load (`aigc_book.cpu_threads`): before each optimiser step, at most
# once a second, it counts how many cores *other* processes used and gives PyTorch the rest, so two
# trainings take one core each instead of fighting over both. The price is that a sum split over a
# different number of threads is added in a different order, so a run on a busy machine differs from
# a quiet one in the last bits; set `AIGC_CPU_THREADS=N` before starting Jupyter to fix the count
# and keep runs bit-for-bit repeatable.

# %%
from aigc_book import cpu_threads

follower = cpu_threads.follow_cpu_load()  # get_device() above already did this; it is idempotent
print(
    f"threads now: {torch.get_num_threads()} (at most "
    f"{follower.max_threads if follower else 'fixed'})"
)
for others in (0.0, 1.0):
    n = cpu_threads.threads_for_load(2, others, 2)
    print(f"2 cores, other programs using {others:.0f} core(s): {n} thread(s)")
assert cpu_threads.threads_for_load(2, 1.0, 2) == 1

# %% [markdown]
# ## Reproducible randomness
#
# `seed_everything(seed)` seeds Python's `random`, NumPy and PyTorch on every device. Re-running a
# cell that begins with it gives the same numbers on the same machine. PyTorch's CPU generator is
# also the same on every machine, so the draws below are checked by the tests on every run:

# %%
# NBVAL_CHECK_OUTPUT
seed_everything(0)
first = torch.randint(0, 10, (12,))
seed_everything(0)
again = torch.randint(0, 10, (12,))
assert torch.equal(first, again)
print(first.tolist())

# %% [markdown]
# Results computed with floating point — a training loss, say — can differ in the last digits
# between machines, because matrix libraries add numbers in different orders on different
# processors. The tests therefore compare only outputs that cannot change in that way; the other
# cells must still run without error, and their `assert` statements do the checking.

# %% [markdown]
# ## Chapters and the package
#
# Chapters stay thin: prose, small experiments and plots. Everything a reader might want to import
# again lives in the `aigc_book` package, with tests in `tests/`. Each module's docstring names the
# chapter that introduces it.
#
# | Chapter | Topic | Modules in `aigc_book` |
# |---|---|---|
# | 0 | Preface | `runtime` (devices, seeds, mixed precision), `cpu_threads`, `plotting` |
# | 1 | From AI to AIGC to ChatGPT | `models.bigram`, `text.corpora`, `text.char_tokenizer`, `facts` |
# | 2 | Attention, from the formula to a GPT | `layers.attention`, `layers.positions`, `layers.kv_cache`, `layers.block`, `layers.surgery`, `models.transformer`, `models.gpt`, `models.accounting`, `models.hf_gpt2`, `training.evaluation`, `efficiency.timing` |
# | 3 | Language modelling and pretraining objectives | `text.languages`, `text.bpe`, `text.tokenizer`, `text.load`, `models.ngram`, `training.objectives`, `training.trainer`, `training.checkpoint`, `models.io`, `files`, `errors`, `cli`, `commands.train_gpt`, `commands.sample` |
# | 4 | Adapting a pretrained model | `adaptation.*` (freezing, LoRA, adapters, prompts), `tasks.*` (classification, QA, instructions, chat, metrics), `incontext.*`, `generation.*`, `efficiency.memory`, `adaptation.finetune`, `models.surgery`, `text.chat_tokenizer`, `commands.finetune` |
# | 5 | Learning from human feedback | `rlhf.*` (losses, rollouts, heads, preferences, reward training, best-of-n, PPO, DPO, GRPO, over-optimisation fits, the SFT policy, the pipeline behind `rlhf`), `commands.rlhf` |
# | 6 | Quantifying efficiency | `efficiency.flops`, `efficiency.hardware`, `efficiency.measure`, `efficiency.memory`, `efficiency.checkpointing`, `efficiency.inference`, `efficiency.cost`, `generation.speculative`, `efficiency.data_parallel`, `training.distributed`, `productivity`, `commands.measure` |
# | 7 | Beyond text | `layers.cross_attention`, `vision.shapes`, `vision.patches`, `vision.captioner` |
# | 8 | Capstone: your own tiny ChatGPT | `capstone.corpus`, `capstone.conversations`, `capstone.scoring`, `capstone.pipeline`, `capstone.report`, `capstone.chat`, `commands.tiny_chatgpt`, `commands.chat` |
#
# The subpackages show the architecture: `layers` holds the building blocks, `models` the whole
# models and how they are saved, `text` the corpora and tokenizers, `training` the objectives, the
# loop and the evaluation, and `efficiency` the measuring tools. Chapter 4 adds `adaptation`,
# `tasks`, `incontext` and `generation` beside these, chapter 5 `rlhf`, and chapter 6 fills
# `efficiency` with the accounting of compute, memory, time and money, plus `productivity`; chapter 7
# adds cross-attention and `vision`. The capstone, chapter 8, chains them all in `capstone`: a tiny
# chat model from nothing, on a laptop CPU, with a report card of every stage.

# %% [markdown]
# ## Notation
#
# | Symbol | Meaning |
# |---|---|
# | $x_1, \dots, x_T$ | a sequence of $T$ tokens; $x_{<t}$ are the tokens before position $t$ |
# | $\mathcal{V}$, $\lvert\mathcal{V}\rvert$ | the vocabulary (the set of tokens) and its size |
# | $B$, $T$ | batch size; sequence (context) length |
# | $d$ or $d_\text{model}$ | width of the model (embedding size); $h$ attention heads, $d_k = d/h$ per head |
# | $Q, K, V$ | queries, keys and values (matrices of shape $T \times d_k$ per head) |
# | $p_\theta(x_t \mid x_{<t})$ | the model's probability of the next token, with parameters $\theta$ |
# | $N$, $D$, $C$ | number of parameters, number of training tokens, training compute in FLOPs |
# | $\log$ | the natural logarithm: losses are in **nats**; divide by $\ln 2$ for bits |
#
# $V$ always means the value matrix of attention; the {term}`vocabulary` size is written
# $\lvert\mathcal{V}\rvert$, so that the two never share a letter. In code, where there is no
# such clash, the vocabulary size is `vocab_size`, and tensor shapes are written in comments as
# `(B, T, C)`: batch, time (position), channels (this `C` is a width, not compute).
#
# The {term}`cross-entropy` of a model on a text $x_1,\dots,x_T$ is the average negative log-probability
#
# $$
# H = -\frac{1}{T}\sum_{t=1}^{T} \log p_\theta(x_t \mid x_{<t}),
# $$
#
# and its {term}`perplexity` is $e^{H}$. A check of the conversion between the two units:

# %%
# NBVAL_CHECK_OUTPUT
import math

probabilities = torch.tensor(
    [0.5, 0.25, 0.125, 0.125], dtype=torch.float64
)  # p(x_t | x_<t) at four positions
nats = -probabilities.log().mean().item()
bits = -probabilities.log2().mean().item()
assert math.isclose(bits, nats / math.log(2))
assert math.isclose(bits, (1 + 2 + 3 + 3) / 4)  # by hand: -log2 of 1/2, 1/4, 1/8, 1/8
print(f"cross-entropy {nats:.4f} nats = {bits:.4f} bits per token, perplexity {math.exp(nats):.4f}")

# %% [markdown]
# ## Summary
#
# * `python3 tools/book.py build` installs, executes and builds; `python3 tools/book.py test`
#   checks everything.
# * Edit the `.py` of a chapter, then rebuild its notebook with
#   `python3 tools/book.py execute chapters/NN_name.py`.
# * `get_device()` and `seed_everything()` start every chapter; outputs that could differ between
#   machines are never what a test compares.
# * Each chapter's knobs are in one settings cell: CPU values (which made the stored outputs), and
#   larger values where a GPU allows them (from chapter 3 on, `Settings.for_device(device)`).
# * $V$ is attention's value matrix; the vocabulary is $\mathcal{V}$ and its size
#   $\lvert\mathcal{V}\rvert$.
#
# ## Key terms
#
# | English | 中文 |
# |---|---|
# | {term}`device` | 设备 |
# | {term}`random seed` | 随机种子 |
# | {term}`settings cell` | 设置单元格 |
# | {term}`mixed precision (bfloat16 autocast) <mixed precision>` | 混合精度（bfloat16 自动类型转换） |
# | {term}`vocabulary` | 词表 |
# | {term}`notebook` | 笔记本 |
# | {term}`cross-entropy` | 交叉熵 |
# | {term}`perplexity` | 困惑度 |
#
# ## Exercises
#
# These exercises are also a graded assignment, `assignments/00_preface.py`: a teacher builds it
# with `python3 tools/book.py assignments` (see the teacher's page, `teaching.md`). Exercises
# marked *(autograded)* are checked by tests; those marked *(open)* are graded by hand.
#
# 1. **How long did each chapter take?** *(open)* Run `python3 tools/book.py test` and find, in
#    its output, how long each chapter took.
# 2. **`AIGC_DEVICE=cpu` wins over a GPU.** *(autograded)* Start Jupyter with `AIGC_DEVICE=cpu`
#    and check that `get_device()` returns the CPU even on a machine with a GPU.
# 3. **The uniform model.** *(autograded)* A model assigns probability
#    $1/\lvert\mathcal{V}\rvert$ to every token of a vocabulary of size $\lvert\mathcal{V}\rvert$.
#    What are its cross-entropy and perplexity? Check your answer with the cell above.
# 4. **What a GPU changes in chapter 1.** *(autograded)* Open chapter 1, find its settings cell,
#    and list which of its values change when `device.type == "cuda"`.
