# %% [markdown]
# # 1. Background: from AI to AIGC to ChatGPT
#
# ChatGPT did not appear from nowhere. It is a *{term}`language model`*, a program that assigns
# probabilities to text, made very large, trained on a great deal of text, and then taught to
# follow instructions with human feedback. This chapter answers five questions:
#
# 1. Where does ChatGPT sit in the history of {term}`artificial intelligence <artificial intelligence (AI)>`?
# 2. What is a language model? We build a first one, a character {term}`bigram model`, in a few lines,
#    generate text with it, and measure how good it is.
# 3. How large are real language models, and how much computation did training them take?
# 4. How do the words {term}`AIGC <generative AI, AIGC>`, {term}`LLM <large language model (LLM)>`, {term}`pretraining`, {term}`fine-tuning` and {term}`RLHF <reinforcement learning from human feedback (RLHF)>` fit together?
# 5. Which common claims about ChatGPT are wrong?
#
# Facts about the world carry a citation (author and year); the full references are listed at
# the end of the chapter. Numbers about our own experiments are printed by the cells that compute
# them, never typed into the prose.

# %%
import math
import platform
import sys
import time
from datetime import date
from fractions import Fraction
from types import SimpleNamespace

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from IPython.display import Markdown, display
from matplotlib.patches import FancyBboxPatch
from torch.utils.data import DataLoader, Dataset

from aigc_book import get_device, seed_everything, use_book_style
from aigc_book.facts import load_models, training_flops_estimate
from aigc_book.models.bigram import BigramLM
from aigc_book.text.char_tokenizer import CharTokenizer
from aigc_book.text.corpora import python_docs_text, split_train_val
from aigc_book.training.objectives import causal_lm_batch

use_book_style()
device = get_device()
seed_everything(0)
chapter_start = time.perf_counter()
print(f"Python {platform.python_version()}, PyTorch {torch.__version__}, device: {device}")

# %% [markdown]
# ## Settings
#
# Every knob of the chapter is in the next cell. The chapter counts characters and draws samples,
# which takes seconds on any CPU, so a GPU changes only one value: the number of random draws in
# the check that sampling follows the model's probabilities (the draws run on `device`). The
# stored outputs come from the CPU values. The count tables themselves stay on the CPU in
# float64, which the exact hand checks below need (and Apple's MPS does not offer).

# %%
HELD_OUT_FRACTION = 0.1  # the last 10% of the corpus is held out, never counted
K_FIRST = 0.1  # add-k smoothing constant used until we choose k on held-out text
K_GRID = [0.0, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0]  # smoothing constants compared
SAMPLE_CHARS = 300  # length of each generated text
SAMPLE_SEEDS = (0, 1)  # two seeds: sampled texts differ between them, greedy decoding cannot
N_DRAWS = 20_000  # random draws in the check that sampling follows p(b | a)
if device.type == "cuda":
    N_DRAWS = (
        2_000_000  # a GPU draws millions at once; the check's tolerance shrinks as 1/sqrt(N_DRAWS)
    )
print(
    f"held-out fraction {HELD_OUT_FRACTION}, k = {K_FIRST} first, {len(K_GRID)} values of k "
    f"compared, samples of {SAMPLE_CHARS} characters, {N_DRAWS:,} draws on {device}"
)

# %% [markdown]
# ## A short history
#
# *How did we get from "artificial intelligence" to ChatGPT?*
#
# **Artificial intelligence (AI)** is the study of machines that do tasks we would call
# intelligent if people did them. The field is usually dated from two events: Alan Turing's 1950
# paper "Computing Machinery and Intelligence", which proposed the imitation game now called the
# Turing test (Turing 1950), and the 1956 Dartmouth summer research project, whose proposal,
# dated 31 August 1955, asked for "a 2 month, 10 man study of artificial intelligence" and gave
# the field its name (McCarthy et al. 1955). For decades, progress came in waves of hand-written
# rules and, later, of statistical models trained on modest data.
#
# The present wave is **deep learning**: neural networks with many layers, trained on large data
# with GPUs. Its public turning point was 2012, when AlexNet, a convolutional network trained on
# GPUs, won the ImageNet image-classification challenge by a wide margin (Krizhevsky et al. 2012).
# For language, the decisive architecture arrived in 2017: the **Transformer** of "Attention Is
# All You Need", which replaced recurrent networks with attention (Vaswani et al. 2017).
#
# Then came the lineage that leads to ChatGPT (Radford et al. 2018, 2019; Brown et al. 2020; Ouyang et al. 2022; OpenAI 2022):
#
# * **GPT-1** (Radford et al., June 2018): a 12-layer *{term}`decoder-only <decoder-only Transformer>`* Transformer, about 117M
#   parameters, *pretrained* on books to predict the next {term}`token` and then *fine-tuned* on each task.
# * **BERT** (Devlin et al., 2018; NAACL 2019): an *encoder* pretrained by filling in masked words.
#   It is a different branch of the family, not an ancestor of ChatGPT (Devlin et al. 2019).
# * **GPT-2** (February 2019): 1.5B parameters trained on 40 GB of web text (WebText).
# * **GPT-3** (Brown et al., 2020): 175B parameters. It could do many tasks from a few examples in
#   the prompt, without fine-tuning.
# * **InstructGPT** (Ouyang et al., 2022): GPT-3 fine-tuned to follow instructions, first on
#   demonstrations written by people, then with *reinforcement learning from human feedback*
#   (RLHF). Outputs of a 1.3B InstructGPT model were preferred to those of the 175B GPT-3.
# * **ChatGPT** (30 November 2022): in OpenAI's words a "sibling model to InstructGPT", trained with
#   the same RLHF methods on dialogue, and fine-tuned from a GPT-3.5-series model.
#
# **AIGC** (AI-generated content, 人工智能生成内容) is the name common in Chinese-language writing,
# including the articles this book grew out of, for what English writing usually calls
# **generative AI**: models that produce new text, images, audio or code rather than only labels.
# ChatGPT spread fast. Sam Altman tweeted on 5 December 2022, five days after the launch, that
# ChatGPT had passed one million users; the often-quoted "100 million monthly users in January 2023" is an estimate by
# the bank UBS from Similarweb traffic data, reported by Reuters on 1 February 2023, not a figure
# from OpenAI.
#
# Figure 1.1 puts these events on one axis.

# %%
early_events = [  # (fractional year, height of the label: + above the axis, - below, label)
    (1950.8, 1, "Turing's imitation\ngame (1950)"),
    (1956.5, -1, "Dartmouth\nworkshop (1956)"),
]
modern_events = [  # months as given in the sources cited above
    (2012.75, 1, "AlexNet wins\nImageNet (2012)"),
    (2017.45, 1, "Transformer\n(2017)"),
    (2018.45, -1, "GPT-1, 117M\n(2018-06)"),
    (2018.8, 2, "BERT\n(2018)"),
    (2019.12, -2, "GPT-2, 1.5B\n(2019-02)"),
    (2020.4, 1, "GPT-3, 175B\n(2020)"),
    (2022.2, -1, "InstructGPT,\nRLHF (2022)"),
    (2022.91, 1, "ChatGPT\n(2022-11-30)"),
]

# %%
fig, (ax_early, ax_modern) = plt.subplots(
    1, 2, figsize=(11, 4.5), sharey=True, gridspec_kw={"width_ratios": [1, 3.0], "wspace": 0.06}
)
for ax, events, (lo, hi) in (
    (ax_early, early_events, (1948, 1959)),
    (ax_modern, modern_events, (2011.4, 2023.6)),
):
    ax.axhline(0, color="black", lw=1)
    for x, level, label in events:
        highlight = label.startswith("ChatGPT")
        ax.plot([x, x], [0, 0.9 * level], color="grey", lw=0.8)
        ax.plot(x, 0, "o", color="C1" if highlight else "C0", ms=9 if highlight else 6, zorder=3)
        ax.text(
            x,
            0.95 * level,
            label,
            ha="center",
            va="bottom" if level > 0 else "top",
            fontsize=8,
            fontweight="bold" if highlight else "normal",
        )
    ax.set_xlim(lo, hi)
    ax.set_ylim(-3.0, 3.0)
    ax.set_yticks([])
    ax.grid(False)
    ax.spines["left"].set_visible(False)
    ax.set_xlabel("year")
ax_early.set_xticks([1950, 1955])
ax_modern.set_xticks(range(2012, 2024, 2))
ax_early.text(1.0, 0.0, "//", transform=ax_early.transAxes, ha="center", va="center", fontsize=12)
fig.suptitle("Figure 1.1: From artificial intelligence to ChatGPT (note the broken time axis)")
plt.show()

# %%
# NBVAL_CHECK_OUTPUT
# Month precision (mid-month) where the sources give a month: the arXiv number 1706.03762 dates the
# Transformer paper to June 2017; GPT-1 is from June 2018 (Radford et al. 2018); ChatGPT launched
# on 30 November 2022.
transformer_paper, gpt1_paper, chatgpt_launch = (
    date(2017, 6, 15),
    date(2018, 6, 15),
    date(2022, 11, 30),
)
years = {
    name: (chatgpt_launch - start).days / 365.25
    for name, start in [("Transformer", transformer_paper), ("GPT-1", gpt1_paper)]
}
print(
    f"Transformer paper to ChatGPT: {years['Transformer']:.1f} years; GPT-1 to ChatGPT: "
    f"{years['GPT-1']:.1f} years"
)

# %% [markdown]
# The left panel covers the 1950s, the right panel 2012 to 2023; the decades in between are cut
# out. What to see: the path from the Transformer to ChatGPT took only the few years printed
# above, and from GPT-1 to ChatGPT each step kept the same kind of model, a decoder-only
# Transformer trained to predict the next token, and changed its size, its data and, at the end,
# how it was fine-tuned.

# %% [markdown]
# ## What is a language model?
#
# *What does it mean for a program to "model" language, and how do we measure whether it does so
# well?*
#
# A **language model** assigns a probability to every sequence of **tokens** $x_1, \dots, x_T$.
# A token is the unit the model reads and writes; in this chapter a token is one character,
# while GPT models use sub-word pieces. The set of possible tokens is the **{term}`vocabulary`**
# $\mathcal{V}$, and $|\mathcal{V}|$ is its size. By the chain rule of probability, any such
# distribution can be written as a product of next-token probabilities:
#
# $$p(x_1, \dots, x_T) = p(x_1)\prod_{t=2}^{T} p(x_t \mid x_1, \dots, x_{t-1}).$$
#
# So a language model is exactly a machine that, given the text so far, outputs a probability for
# each possible next token. GPT models are such machines, with a Transformer computing
# $p(x_t \mid x_{<t})$ (Radford et al. 2018).
#
# To **generate** text, the model chooses a next token, appends it, and repeats. There are two
# basic ways to choose, and they are not the same thing:
#
# * **{term}`sampling`** *draws* the next token at random, each with the model's probability; two runs
#   with different random seeds give different texts;
# * **{term}`greedy decoding`** *takes the most probable* token, $\arg\max_x p(x \mid x_{<t})$, every
#   time; nothing is random, and the same start always gives the same text.
#
# Calling the second one "sampling", as some introductions do, hides the difference that matters
# in practice: greedy decoding often falls into repeating the same few tokens. We show both on our
# first model below.
#
# The simplest non-trivial choice is to look only one token back, the **bigram** approximation
#
# $$p(x_t \mid x_1, \dots, x_{t-1}) \approx p(x_t \mid x_{t-1}).$$
#
# Its parameters are one probability for each pair of characters, and we can estimate them by
# counting. If $n(a,b)$ is the number of times character $b$ follows character $a$ in the training
# text, then with **add-$k$ {term}`smoothing`**
#
# $$p(b \mid a) = \frac{n(a,b) + k}{\sum_{b'} n(a,b') + k\,|\mathcal{V}|}.$$
#
# With $k=0$ this is the maximum-likelihood estimate; $k>0$ pretends every pair was seen $k$
# extra times, so that pairs missing from the training text do not get probability zero.
#
# We score a model by its **{term}`cross-entropy`** on text it has not seen: the average surprise, in
# nats when we use the natural log,
#
# $$H = -\frac{1}{T-1}\sum_{t=2}^{T} \log p(x_t \mid x_{t-1}).$$
#
# Lower is better. Dividing by $\ln 2$ gives **bits per character**: the number of bits an ideal
# compressor driven by the model would spend per character. The **{term}`perplexity`** $e^{H}$ is the
# number of equally likely characters the model is, on average, choosing between.
#
# Before we use a real corpus, here is the whole recipe on the word "banana", by hand, with exact
# fractions, and $k=1$. The cell lists its character pairs and its vocabulary.

# %%
# NBVAL_CHECK_OUTPUT
word = "banana"
pairs = list(zip(word, word[1:]))
chars = sorted(set(word))
counts = {a: {b: 0 for b in chars} for a in chars}
for a, b in pairs:
    counts[a][b] += 1
k = 1
prob = {
    a: {b: Fraction(counts[a][b] + k, sum(counts[a].values()) + k * len(chars)) for b in chars}
    for a in chars
}
print(
    f"{len(pairs)} pairs:",
    " ".join(a + b for a, b in pairs),
    f"| vocabulary {chars}, |V| = {len(chars)}",
)
for a in chars:
    print(f"p(. | {a}) =", {b: str(p) for b, p in prob[a].items()})
assert all(sum(prob[a].values()) == 1 for a in chars)  # exact: every row is a distribution
p_pairs = math.prod(prob[a][b] for a, b in pairs)
ce_by_hand = -math.log(p_pairs) / len(pairs)
print(f"p(pairs) = {p_pairs} = {float(p_pairs):.6f}")
print(
    f"cross-entropy = -ln({p_pairs}) / {len(pairs)} = {ce_by_hand:.6f} nats/char "
    f"= {ce_by_hand / math.log(2):.6f} bits/char"
)

banana = BigramLM.from_text(word, k=1.0)
assert math.isclose(banana.cross_entropy(word), ce_by_hand, rel_tol=1e-12)
print(f"aigc_book.models.bigram agrees: {banana.cross_entropy(word):.6f} nats/char")

# %% [markdown]
# Every row of the table is a probability distribution (each sums to 1, exactly, in fractions), and
# the package's `BigramLM` reproduces the hand computation to a relative error below $10^{-12}$,
# as the `assert` checks. Now the same on real text.
#
# ### A corpus every Python has
#
# *What text can we train on without downloading anything?*
#
# Every Python installation ships the text of its own `help()` topics, the pages you see with
# `help("with")` or `help("FORMATTING")`, in the module `pydoc_data.topics`: English technical
# prose with code examples. The exact text changes between Python versions, so **every number
# from here to the end of the section "What is a language model?" depends on your Python
# version**; the first line the next cell prints names the version that produced the stored
# outputs. `aigc_book.text.corpora.python_docs_text()` joins the topics in sorted order (later
# chapters use the same text), and `split_train_val` holds out the last `HELD_OUT_FRACTION` of the
# characters as **{term}`held-out text`**: the model never counts it, and we use it only to measure.

# %%
from pydoc_data.topics import topics

corpus = python_docs_text()
train_text, heldout_text = split_train_val(corpus, HELD_OUT_FRACTION)
vocab = CharTokenizer.train(
    corpus
)  # the alphabet of the whole corpus, so every held-out char has an id
vocab_size = len(vocab)  # |V| in the formulas
print(
    f"Python {sys.version.split()[0]}: {len(topics)} help topics, {len(corpus):,} characters, "
    f"{vocab_size} distinct characters"
)
print(
    f"training text: {len(train_text):,} characters; held-out text: "
    f"{len(heldout_text):,} characters"
)
print(f"held-out characters never seen in training: {sorted(set(heldout_text) - set(train_text))}")
print("start of the held-out text:", repr(heldout_text[:120]))
ends, pos = {}, 0
for name in sorted(topics):
    pos += len(topics[name].strip()) + 2  # python_docs_text strips each topic and joins with "\n\n"
    ends[name] = pos
heldout_topics = [name for name, end in ends.items() if end > len(train_text)]
print("topics (partly) in the held-out text:", heldout_topics)

# %% [markdown]
# Building the vocabulary from the whole corpus is a small, deliberate leak: it tells the model
# which characters exist, not how they are used. Held-out characters that training never showed
# would still get a probability from smoothing.
#
# ### What the model trains on: pairs, not single tokens
#
# *What is one training example for a language model?*
#
# A language model learns $p(\text{next} \mid \text{context})$, so every training example is a
# context *with* the token that follows it. For the bigram model the context is one character:
# the examples are the pairs $(x_{t-1}, x_t)$, and counting them is the whole of training. A
# Transformer (chapters 2 and 3) reads windows instead: the inputs $x_1..x_T$ and, as targets, the same
# window shifted by one, $x_2..x_{T+1}$, so that every position predicts its next token.
#
# One of the Chinese articles this book grew out of (the series "AIGC从入门到实战"; its article on
# AIGC tools for individuals, called article 004 in this book, §5.1) builds a character-level
# language-model dataset in PyTorch, and its code gets both the tokenizer and the examples wrong.
# We run it as printed, on our text instead of a Shakespeare file the reader does not have.

# %%
SEED_004_CODE = '''
class ShakespeareDataset(Dataset):
    def __init__(self, text, tokenizer):
        self.text = text
        self.tokenizer = tokenizer
        self.vocab = tokenizer.vocab
        self.ids = tokenizer.encode(text)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, idx):
        return self.ids[idx]

tokenizer = torch.nn.Transformer.TransformerEncoder.build_tokenizer(text)
dataset = ShakespeareDataset(text, tokenizer)
'''
seed_namespace = {"torch": torch, "Dataset": Dataset, "text": train_text}
try:
    exec(SEED_004_CODE, seed_namespace)
except AttributeError as err:
    print("AttributeError:", err)
assert "dataset" not in seed_namespace  # the article's code stops at its tokenizer line
torch_names_with_token = [n for n in dir(torch) + dir(torch.nn) if "tokeniz" in n.lower()]
print("names containing 'tokeniz' in torch and torch.nn:", torch_names_with_token)
assert not torch_names_with_token

# %%
# Give the article's dataset a tokenizer that exists, and look at what it yields.
article_dataset = seed_namespace["ShakespeareDataset"](
    train_text, SimpleNamespace(vocab=vocab.itos, encode=vocab.encode)
)
article_batch = next(iter(DataLoader(article_dataset, batch_size=4)))
print(
    "the article's dataset, one batch:", article_batch.tolist(), "shape", tuple(article_batch.shape)
)
assert article_batch.shape == (4,)  # four unrelated single tokens: no target to predict

# %%
# What this chapter counts: (previous, next) pairs. What the Transformer chapters train on:
# windows and their shift.
ids = vocab.encode_tensor(train_text)
x_prev, x_next = ids[:-1], ids[1:]  # (T-1,) each: the bigram model's examples
print(
    "first bigram examples:",
    [vocab.decode([int(a)]) + vocab.decode([int(b)]) for a, b in zip(x_prev[:6], x_next[:6])],
)
window = causal_lm_batch(
    ids, batch_size=2, block_size=12, generator=torch.Generator().manual_seed(0)
)
for inp, tgt in zip(window["idx"], window["targets"]):
    print(f"input {vocab.decode(inp)!r:16} target {vocab.decode(tgt)!r}")
assert torch.equal(
    window["idx"][:, 1:], window["targets"][:, :-1]
)  # the target is the input shifted by one

# %% [markdown]
# Two mistakes show. `torch.nn.Transformer` has no attribute `TransformerEncoder` (that class
# lives in `torch.nn`), and neither `torch` nor `torch.nn` has any tokenizer (the cell lists the
# names that mention one: none). PyTorch works on tensors of ids; the tokenizer is ours to write,
# here `CharTokenizer`, a sorted list of characters. And once
# it has a tokenizer, the article's dataset yields *single* tokens, so a batch is a handful of
# unrelated characters with nothing to predict. Our examples are pairs (for counting) and shifted
# windows (for the Transformers of chapters 2 and 3), and the `assert` checks that every target is the next
# character of its input.
#
# ### Counting, and a picture of the counts
#
# *What does a bigram model actually learn?*
#
# Fitting is one pass of counting. We use $k$ = `K_FIRST` for now and choose $k$ properly below.

# %%
t0 = time.perf_counter()
model = BigramLM.from_text(train_text, k=K_FIRST, vocab=vocab)
print(f"counted {int(model.counts.sum()):,} character pairs in {time.perf_counter() - t0:.2f} s")
print(f"parameters: |V|^2 = {vocab_size}^2 = {vocab_size**2:,} probabilities")
assert int(model.counts.sum()) == len(x_prev)  # one count per training pair
P = model.probs()  # (|V|, |V|), float64, row a is p(. | a)
torch.testing.assert_close(P.sum(dim=1), torch.ones(vocab_size, dtype=torch.float64))

shown = [" "] + [chr(c) for c in range(ord("a"), ord("z") + 1)]
idx = torch.tensor([vocab.index(c) for c in shown])
fig, ax = plt.subplots(figsize=(7, 6))
im = ax.imshow(P[idx][:, idx].numpy(), cmap="Blues", vmin=0)
labels = ["space" if c == " " else c for c in shown]
ax.set_xticks(range(len(shown)), labels, fontsize=7, rotation=90)
ax.set_yticks(range(len(shown)), labels, fontsize=7)
ax.set_xlabel("next character b")
ax.set_ylabel("previous character a")
ax.grid(False)
fig.colorbar(im, ax=ax, label="probability p(b | a)")
ax.set_title("Figure 1.2: Bigram probabilities p(b | a), space and a-z")
plt.show()


# %%
def show_char(c: str) -> str:
    return "a space" if c == " " else ("a newline" if c == "\n" else f"*{c}*")


top1 = {}
for a in ["q", "h", "d", "s", "y", " "]:
    top = P[vocab.index(a)].topk(3)
    top1[a] = (vocab.itos[int(top.indices[0])], float(top.values[0]))
    shown_top = ", ".join(
        f"{vocab.itos[j]!r} {p:.2f}" for p, j in zip(top.values.tolist(), top.indices.tolist())
    )
    print(f"after {a!r}: {shown_top}")
(first_a, (first_b, first_p)), *rest = top1.items()
display(
    Markdown(
        "What to see: English spelling is already there. The likeliest next character "
        f"after {show_char(first_a)} is {show_char(first_b)} (p = {first_p:.2f}); "
        + "; ".join(f"after {show_char(a)}, {show_char(b)} ({p:.2f})" for a, (b, p) in rest)
        + "."
    )
)

# %% [markdown]
# Each row is the distribution of the next character after the row's character (only the columns
# for space and a–z are drawn, so a row's visible cells need not sum to 1). Letters that often end words
# (*d*, *s*, *y*) tend to be followed by a space; and since the corpus indents much of its text and
# code, a space is often followed by another space, while the rest of that row spreads over the
# letters that start words.
#
# ### Generating: sampling and greedy decoding
#
# *What text does the model believe in, and does it matter how we pick each character?*
#
# Both ways of generating start from a character and append one character at a time. **Sampling**
# draws the next one from $p(\cdot \mid a)$; the package's `BigramLM.sample` does it with
# `torch.multinomial` and a seeded `torch.Generator`, so a seed makes the draw repeatable.

# %%
sampled = {
    seed: model.sample(SAMPLE_CHARS, torch.Generator().manual_seed(seed), start="T")
    for seed in SAMPLE_SEEDS
}
assert (
    model.sample(SAMPLE_CHARS, torch.Generator().manual_seed(SAMPLE_SEEDS[0]), start="T")
    == sampled[SAMPLE_SEEDS[0]]
)
assert sampled[SAMPLE_SEEDS[0]] != sampled[SAMPLE_SEEDS[1]]  # another seed, another text
print(f"sampled with seed {SAMPLE_SEEDS[0]}:\n{sampled[SAMPLE_SEEDS[0]]}\n")
print(
    f"sampled with seed {SAMPLE_SEEDS[1]} (first 120 characters):\n{sampled[SAMPLE_SEEDS[1]][:120]}"
)

# %% [markdown]
# The output has the texture of the corpus (word-length chunks, spaces, the odd bracket or
# quote) but no words beyond the shortest ones: one character of memory is not enough to spell.
#
# **Greedy decoding** takes the row's most probable character instead. Written out, it is one
# `argmax` per step:


# %%
def greedy_decode(probs: torch.Tensor, start: str, n_chars: int) -> str:
    (
        "Append the most probable next character, argmax_b p(b | previous), "
        "until n_chars are written."
    )
    out = [vocab.index(start)]
    for _ in range(n_chars - 1):
        out.append(int(probs[out[-1]].argmax()))
    return vocab.decode(out)


greedy = greedy_decode(P, "T", SAMPLE_CHARS)
assert greedy == greedy_decode(P, "T", SAMPLE_CHARS)  # no randomness: always the same text
for a, b in zip(greedy, greedy[1:]):  # each step really took a largest entry of its row
    assert P[vocab.index(a), vocab.index(b)] == P[vocab.index(a)].max()

# The next character depends only on the current one, so once a character repeats, the text loops.
first_seen = {}
for t, c in enumerate(greedy):
    if c in first_seen:
        break
    first_seen[c] = t
loop_start, loop = first_seen[c], greedy[first_seen[c] : t]
assert t <= vocab_size  # at most |V| distinct characters can come before the first repeat
assert greedy[loop_start:] == (loop * SAMPLE_CHARS)[: SAMPLE_CHARS - loop_start]
print(f"greedy: {greedy[:60]!r}...")
print(
    f"after {loop_start} characters greedy decoding repeats {loop!r} (length {len(loop)}) "
    f"to the end of its {SAMPLE_CHARS} characters"
)

# %% [markdown]
# Greedy decoding is deterministic, and for this model it is useless: a first-order chain with a
# fixed rule must revisit a character within $|\mathcal{V}|$ steps, and from then on it repeats the
# same loop forever, as the cell shows. Sampling escapes because a draw can leave the likeliest
# path. Large Transformers also fall into repetition under greedy decoding, although they look at
# the whole context (Holtzman et al. 2020); the later chapter on decoding returns to this, with
# temperature, top-$k$ and nucleus sampling.
#
# One more check that sampling does what it claims: draw the character after *h* many times and
# compare the frequencies with the row $p(\cdot \mid h)$. Each frequency is an average of
# `N_DRAWS` independent indicators, so it may miss its probability by a few standard errors
# $\sqrt{p(1-p)/N}$, and no more.

# %%
row_cpu = P[vocab.index("h")]  # (|V|,) float64
row_dev = row_cpu.to(device=device, dtype=torch.float32)  # float32 exists on every device
draws = torch.multinomial(
    row_dev, N_DRAWS, replacement=True, generator=torch.Generator(device=device).manual_seed(0)
)
freq = torch.bincount(draws.cpu(), minlength=vocab_size).to(torch.float64) / N_DRAWS
std_err = (row_cpu * (1 - row_cpu) / N_DRAWS).sqrt()
z = (freq - row_cpu).abs() / std_err
for j in row_cpu.topk(3).indices.tolist():
    print(
        f"p({vocab.itos[j]!r} | 'h') = {row_cpu[j]:.4f}, frequency in {N_DRAWS:,} "
        f"draws = {freq[j]:.4f}"
    )
print(f"largest deviation over all {vocab_size} characters: {z.max():.2f} standard errors")
assert (z < 5).all()

# %% [markdown]
# The frequencies match the probabilities within the printed number of standard errors. Chapters
# on the Transformer replace the one-character memory with attention over the whole context.
#
# ### Measuring the model: cross-entropy on held-out text
#
# *How many bits per character does the bigram model need, and is that good?*
#
# Two baselines make the number meaningful. A **uniform** model that ignores the text gives every
# character probability $1/|\mathcal{V}|$, so its cross-entropy is $\log |\mathcal{V}|$. A
# **unigram** model uses each character's overall frequency, ignoring the previous character. The
# bigram model should beat both.

# %%
ln2 = math.log(2)
ce_uniform = math.log(vocab_size)

train_ids, heldout_ids = ids, vocab.encode_tensor(heldout_text)
unigram_counts = torch.bincount(train_ids, minlength=vocab_size).to(torch.float64)
p_train = unigram_counts / unigram_counts.sum()
unigram_entropy = -(p_train[p_train > 0] * p_train[p_train > 0].log()).sum().item()
p_unigram = (unigram_counts + K_FIRST) / (
    unigram_counts.sum() + K_FIRST * vocab_size
)  # add-k, as for the bigram
ce_unigram = -p_unigram.log()[heldout_ids[1:]].mean().item()  # score the same T-1 characters
ce_bigram = model.cross_entropy(heldout_text)
ce_bigram_train = model.cross_entropy(train_text)

print(
    f"{'model (scored on held-out text)':<38}{'nats/char':>10}{'bits/char':>11}{'perplexity':>12}"
)
for name, ce in [
    (f"uniform, ln |V| (|V| = {vocab_size})", ce_uniform),
    ("unigram, add-k", ce_unigram),
    ("bigram, add-k", ce_bigram),
]:
    print(f"{name:<38}{ce:>10.4f}{ce / ln2:>11.4f}{math.exp(ce):>12.2f}")
print(f"\nunigram entropy of the training text: {unigram_entropy:.4f} nats/char")
print(f"bigram cross-entropy on its own training text: {ce_bigram_train:.4f} nats/char")
assert ce_bigram < ce_unigram < ce_uniform
assert (ce_unigram - ce_bigram) / ln2 > 1  # the previous character is worth more than a bit
assert (ce_uniform - ce_bigram) / ln2 > 3
assert (
    abs(ce_unigram - unigram_entropy) < 0.1
)  # "close": the two parts use letters at similar rates

# %%
if ce_bigram < ce_bigram_train:
    train_vs_heldout = (
        f"Here the bigram model scores *better* on the held-out text ({ce_bigram:.4f} nats/char) "
        f"than on the text it was counted from ({ce_bigram_train:.4f}), which is unusual: "
        f"the held-out tail of the sorted topics (from {heldout_topics[0]!r} "
        f"to {heldout_topics[-1]!r}, printed above) happens to be more predictable "
        "than the average topic."
    )
else:
    train_vs_heldout = (
        f"As usual, the bigram model scores worse on the held-out text ({ce_bigram:.4f} nats/char) "
        f"than on the text it was counted from ({ce_bigram_train:.4f}): counts fit best "
        "the text they came from."
    )
display(
    Markdown(
        f"With Python {platform.python_version()}: the table reads from worst to best. "
        f"Knowing the character frequencies (unigram) saves {(ce_uniform - ce_unigram) / ln2:.2f} "
        "bits per character against the uniform guess; knowing the previous "
        f"character (bigram) saves {(ce_unigram - ce_bigram) / ln2:.2f} bits more. "
        f"The bigram model's perplexity, {math.exp(ce_bigram):.1f}, says that on "
        "average it is as unsure as if it were choosing among that many equally "
        f"likely characters, against all {vocab_size} for the uniform model.\n\n"
        f"The unigram model's held-out cross-entropy ({ce_unigram:.4f} nats/char) is close to "
        f"the entropy of the training text's character frequencies ({unigram_entropy:.4f}), "
        "as it should be when the two parts of the corpus use letters at similar rates. "
        f"{train_vs_heldout}"
    )
)

# %% [markdown]
# A held-out number describes the model *on that text*; compare models on the same held-out text,
# never numbers measured on different text. Exercise 2 measures how much the score varies with
# the choice of held-out part.
#
# ### Checking the number by hand
#
# *Is the vectorised cross-entropy really the formula above?*
#
# We recompute it with a plain Python loop over the held-out character pairs, reading the count
# table entry by entry, and compare it with the package's value and with PyTorch's
# `torch.nn.functional.cross_entropy`. That function applies a log-softmax to its input "logits"
# first; our rows of log-probabilities are already normalised, so the log-softmax leaves them
# unchanged and the result must agree.

# %%
count_table = model.counts.tolist()  # plain Python ints, n(a, b)
row_totals = [sum(row) for row in count_table]
total_nll = 0.0
for a, b in zip(heldout_text, heldout_text[1:]):
    i, j = vocab.index(a), vocab.index(b)
    p = (count_table[i][j] + K_FIRST) / (row_totals[i] + K_FIRST * vocab_size)
    total_nll += -math.log(p)
ce_loop = total_nll / (len(heldout_text) - 1)

log_P = model.log_probs()
ce_torch = F.cross_entropy(log_P[heldout_ids[:-1]], heldout_ids[1:]).item()
print(f"explicit loop over {len(heldout_text) - 1:,} pairs: {ce_loop:.10f} nats/char")
print(f"BigramLM.cross_entropy:                 {ce_bigram:.10f} nats/char")
print(f"F.cross_entropy on log-probabilities:   {ce_torch:.10f} nats/char")
assert math.isclose(ce_loop, ce_bigram, rel_tol=1e-9)
assert math.isclose(ce_torch, ce_bigram, rel_tol=1e-9)

# %% [markdown]
# The three agree to a relative error below $10^{-9}$, as asserted (they differ only in the order of
# floating-point additions). The same function, `F.cross_entropy`, is the training loss of every
# GPT model in this book: the only thing that changes is the machine that produces the logits.
#
# ### How much smoothing?
#
# *Why not simply use the counts ($k=0$), and how should $k$ be chosen?*

# %%
ce_train_k, ce_heldout_k = [], []
for k_ in K_GRID:
    m = BigramLM.from_text(train_text, k=k_, vocab=vocab)
    ce_train_k.append(m.cross_entropy(train_text))
    ce_heldout_k.append(m.cross_entropy(heldout_text))
for k_, tr, ho in zip(K_GRID, ce_train_k, ce_heldout_k):
    print(f"k = {k_:<6g} training {tr:.4f}   held-out {ho:.4f} nats/char")
best_k = min(zip(ce_heldout_k, K_GRID))[1]
print(
    f"lowest held-out cross-entropy at k = {best_k:g}; the chapter used K_FIRST = {K_FIRST:g} above"
)
assert K_GRID[0] == 0 and ce_train_k[0] == min(
    ce_train_k
)  # k = 0 maximises the likelihood of the training text
assert math.isinf(ce_heldout_k[0])  # ... and gives some held-out pair probability 0
assert (
    0 < K_GRID.index(best_k) < len(K_GRID) - 1
)  # the held-out minimum lies inside the grid, not at an end

fig, ax = plt.subplots()
ax.semilogx(K_GRID[1:], ce_train_k[1:], "o-", label="training text")
ax.semilogx(K_GRID[1:], ce_heldout_k[1:], "s-", label="held-out text")
ax.set_xlabel("smoothing constant k (pseudo-counts per pair)")
ax.set_ylabel("cross-entropy (nats/char)")
ax.set_title("Figure 1.3: Smoothing trades fit to the training text for held-out score")
ax.legend()
plt.show()

# %% [markdown]
# With $k=0$ the model fits the training text best, but some character pair in the held-out text
# never occurred in training, gets probability zero, and makes the cross-entropy infinite: one
# impossible event costs $-\log 0 = \infty$. As $k$ grows, the training cross-entropy rises
# steadily while the held-out one first falls, then rises once smoothing washes out what the counts
# say. What to see in Figure 1.3: the held-out curve has a minimum inside the grid (asserted
# above), and the training curve alone cannot find it. Choosing $k$ (a **{term}`hyperparameter`**) by
# held-out score is, in miniature, how the training settings of real models are chosen. Strictly,
# choosing it on the same held-out text we report makes that report slightly optimistic; a third,
# untouched test set avoids this.
#
# A bigram model can also say which of two strings is more "English-like in the corpus' way":


# %%
def log_p_after_first(s: str) -> float:
    ids_s = vocab.encode_tensor(s)
    return log_P[ids_s[:-1], ids_s[1:]].sum().item()


ratios = []
for good, bad in [("the ", "teh "), ("def ", "fde ")]:
    lg, lb = log_p_after_first(good), log_p_after_first(bad)
    ratios.append(math.exp(lg - lb))
    print(
        f"log p({good!r}) = {lg:7.3f}, log p({bad!r}) = {lb:7.3f} nats (given the first "
        f"character): {good!r} is {ratios[-1]:,.0f} times more probable"
    )
    assert lg > lb
display(
    Markdown(
        f"The correct spellings are {math.log(min(ratios)):.1f} to {math.log(max(ratios)):.1f} "
        f"nats, that is {min(ratios):,.0f} to {max(ratios):,.0f} times, more probable than the "
        "scrambled ones. This is all a language model is; ChatGPT differs in *how* it computes "
        "the next-token probabilities (a Transformer over thousands of previous tokens instead of "
        "a table over one), in scale, and in fine-tuning."
    )
)

# %% [markdown]
# ## Real models over time
#
# *How large are real language models, how much text did they see, and how much computation did
# training them take?*
#
# The package ships a small table of published figures. Every row names its source and a
# confidence label: V means checked against the paper, its abstract, a model card or a page
# quoting it; M means from memory of the primary source and not re-checked, so treat such rows as
# approximate. An empty cell means the source publishes no figure. The numbered references under
# the table are the rows' sources; the chapter's source list gives them in full.

# %%
# NBVAL_CHECK_OUTPUT
models = load_models()


def fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3g}"


header = (
    f"{'model':<15}{'released':<10}{'params':>9}{'tokens':>9}{'tokens/param':>14}"
    f"{'FLOPs (published)':>19}{'conf':>6}  ref"
)
print(header)
print("-" * len(header))
for i, r in enumerate(models, start=1):
    ratio = fmt(r.training_tokens / r.params) if r.training_tokens else "-"
    print(
        f"{r.model:<15}{r.released:<10}{fmt(r.params):>9}{fmt(r.training_tokens):>9}{ratio:>14}"
        f"{fmt(r.training_flops):>19}{r.confidence:>6}  [{i}]"
    )
print()
for i, r in enumerate(models, start=1):
    print(f"[{i}] {r.source}")
n_published = sum(r.training_flops is not None for r in models)
print(
    f"\n{len(models)} models, {n_published} with published training compute, "
    f"{sum(r.confidence == 'V' for r in models)} rows labelled V and "
    f"{sum(r.confidence == 'M' for r in models)} labelled M"
)

# %%
by_name = {r.model: r for r in models}
largest = max(models, key=lambda r: r.params)
growth = largest.params / by_name["GPT-1"].params
span = largest.released_year - by_name["GPT-1"].released_year
tokens_per_param = {
    name: by_name[name].training_tokens / by_name[name].params
    for name in ("GPT-3", "Chinchilla", "Llama 3 70B")
}
assert (
    tokens_per_param["GPT-3"] < 2 < tokens_per_param["Chinchilla"] < tokens_per_param["Llama 3 70B"]
)
display(
    Markdown(
        f"Two patterns stand out. The largest parameter count in the table, {largest.model}'s "
        f"({largest.params / 1e9:.0f}B; a mixture of experts, counted here by all its parameters), "
        f"is {growth:,.0f} times GPT-1's: {math.log10(growth):.1f} orders of magnitude "
        f"in {span:.1f} years. And after Chinchilla (Hoffmann et al. 2022), which found "
        "that parameters and training tokens should be scaled equally, models were trained "
        f"on far more tokens per parameter: GPT-3 saw {tokens_per_param['GPT-3']:.2f} "
        f"tokens per parameter, Chinchilla {tokens_per_param['Chinchilla']:.0f}, "
        f"Llama 3 70B {tokens_per_param['Llama 3 70B']:.0f}."
    )
)

# %% [markdown]
# ### Estimating training compute: 6·N·D
#
# *Few rows publish their {term}`training compute`. Can we estimate the others?*
#
# Kaplan et al. (2020) estimate the training cost of a dense Transformer with $N$ parameters on $D$
# tokens as $C \approx 6ND$ floating-point operations (FLOPs): about $2N$ per token for the forward
# pass (a multiply and an add per weight) and twice that for the backward pass (Kaplan et al. 2020, §2.1). Check it
# against GPT-3, whose paper publishes its compute in petaflop/s-days (Brown et al. 2020, Table D.1),
# and against Llama 3.1 405B (Llama Team 2024).

# %%
# NBVAL_CHECK_OUTPUT
gpt3 = by_name["GPT-3"]
pf_days = 3.64e3  # Brown et al. 2020, Table D.1
pf_days_in_flops = pf_days * 1e15 * 24 * 3600  # 1 PF/s-day = 1e15 FLOP/s for 86,400 s
estimate = training_flops_estimate(gpt3.params, gpt3.training_tokens)
rel = abs(estimate - gpt3.training_flops) / gpt3.training_flops
print(
    f"GPT-3 published: {pf_days:.3g} PF-days = {pf_days_in_flops:.4g} FLOPs (table: "
    f"{gpt3.training_flops:.3g})"
)
print(f"6 N D = 6 x {gpt3.params:.3g} x {gpt3.training_tokens:.3g} = {estimate:.3g} FLOPs")
print(f"relative difference: {rel:.2%}")
assert math.isclose(pf_days_in_flops, gpt3.training_flops, rel_tol=0.005)
assert rel < 0.01

llama = by_name["Llama 3.1 405B"]
est_llama = training_flops_estimate(llama.params, llama.training_tokens)
rel_llama = abs(est_llama - llama.training_flops) / llama.training_flops
print(
    f"\nLlama 3.1 405B published: {llama.training_flops:.3g} FLOPs; 6ND = {est_llama:.3g} "
    f"({rel_llama:.2%} apart)"
)
assert rel_llama < 0.01

# %% [markdown]
# For these two models $6ND$ is within 1% of the published figure. (Inference, by the same
# accounting, costs about $2N$ FLOPs per generated token, not $6N$ (Kaplan et al. 2020).)
#
# Chinchilla and Gopher test the estimate harder. Hoffmann et al. (2022) write that Chinchilla
# "uses the same compute budget as Gopher but with 70B parameters and 4× more more data"
# (abstract, sic), and that "both Chinchilla and Gopher have been trained for the same number of
# FLOPs" (§4); they give the number of FLOPs used to train Gopher in the caption of their
# Figure 2, and the table holds it for both models. What does $6ND$ say?

# %%
# NBVAL_CHECK_OUTPUT
gopher, chinchilla = by_name["Gopher"], by_name["Chinchilla"]
budget = gopher.training_flops  # Hoffmann et al. 2022, Figure 2 caption
assert (
    chinchilla.training_flops == budget
)  # Hoffmann et al. 2022, section 4: the same number of FLOPs
six_nd = {}
for r in (gopher, chinchilla):
    six_nd[r.model] = training_flops_estimate(r.params, r.training_tokens)
    print(
        f"{r.model:<11} N = {r.params:.3g}, D = {r.training_tokens:.3g}: "
        f"6ND = {six_nd[r.model]:.3g} FLOPs, paper {r.training_flops:.3g} "
        f"({six_nd[r.model] / r.training_flops - 1:+.1%})"
    )
param_ratio = gopher.params / chinchilla.params
token_ratio = chinchilla.training_tokens / gopher.training_tokens
print(
    f"Gopher has {param_ratio:.2f}x Chinchilla's parameters; Chinchilla saw "
    f"{token_ratio:.2f}x Gopher's tokens"
)
print(f"6ND of Chinchilla / 6ND of Gopher = {six_nd['Chinchilla'] / six_nd['Gopher']:.3f}")
assert math.isclose(six_nd["Chinchilla"] / six_nd["Gopher"], token_ratio / param_ratio)
tolerance = 0.15  # how far 6ND may stray from the paper's own count for these two runs
assert all(abs(c / budget - 1) < tolerance for c in six_nd.values())

# %%
display(
    Markdown(
        f"By $6ND$ the two runs differ by {six_nd['Chinchilla'] / six_nd['Gopher'] - 1:.1%}, "
        "because the paper's round \"4×\" is two different ratios: the model "
        f"is {param_ratio:.2f} times smaller, but the data {token_ratio:.2f} times larger. "
        "The paper did not pick the pair by $6ND$: its §4 says that the compute-optimal "
        "size for Gopher's budget lay \"somewhere between 40 and 70 billion parameters\" "
        "and that it trained the larger end \"for 1.4T tokens, due to both dataset and "
        "computational efficiency considerations\". Nor does it count FLOPs as $6ND$: "
        "its Appendix F counts every matrix product, the embeddings and attention included, "
        "and counts the embedding matrices among the parameters. So \"the same compute "
        "budget\" is true by the paper's own count and at the precision of a training plan, "
        f"while $6ND$ is {abs(six_nd['Gopher'] / budget - 1):.1%} below the published figure "
        f"for Gopher and {abs(six_nd['Chinchilla'] / budget - 1):.1%} above it for Chinchilla. "
        f"$6ND$ is an estimate, good to {max(rel, rel_llama):.1%} for GPT-3 and Llama 3.1 405B but "
        f"only to within {tolerance:.0%} (asserted) for these two, not an identity."
    )
)

# %% [markdown]
# We can therefore fill the gaps with estimates, as long as we label them as estimates.
#
# One row needs care. DeepSeek-V3 is a *{term}`mixture-of-experts <mixture of experts (MoE)>`* model: for each token, a router sends
# it through a few of many expert sub-networks, so only part of the parameters is used. Of its
# parameters, the number "activated for each token" is given in the abstract of its technical
# report (DeepSeek-AI 2024). The FLOPs per token depend on the parameters that are used, so the
# estimate must use $N_{\text{active}}$.

# %%
ACTIVE_PARAMS = {
    "DeepSeek-V3": 37e9
}  # "37B activated for each token": DeepSeek-AI 2024, arXiv:2412.19437, abstract

print(f"{'model':<15}{'N used':>9}{'D':>9}{'6ND (estimate)':>16}{'published':>11}")
compute_points = []  # (year, FLOPs, published?, model)
for r in models:
    if r.training_tokens is None:
        print(f"{r.model:<15}{'':>9}{'-':>9}{'no token count':>16}{fmt(r.training_flops):>11}")
        continue
    n_used = ACTIVE_PARAMS.get(r.model, r.params)
    est = training_flops_estimate(n_used, r.training_tokens)
    print(
        f"{r.model:<15}{n_used:>9.3g}{r.training_tokens:>9.3g}{est:>16.3g}"
        f"{fmt(r.training_flops):>11}"
    )
    if r.training_flops is not None:
        compute_points.append((r.released_year, r.training_flops, True, r.model))
    else:
        compute_points.append((r.released_year, est, False, r.model))

deepseek = by_name["DeepSeek-V3"]
overstatement = deepseek.params / ACTIVE_PARAMS["DeepSeek-V3"]
print(
    f"\nDeepSeek-V3: using all {deepseek.params:.3g} parameters instead of "
    f"the {ACTIVE_PARAMS['DeepSeek-V3']:.3g} active ones would overstate its compute "
    f"{overstatement:.1f}-fold"
)
print(
    f"for scale: GPT-3 has {gpt3.params / vocab_size**2:.1e} times as many parameters as our "
    f"bigram table and saw {gpt3.training_tokens / len(train_text):.1e} times as many tokens "
    "as we counted characters"
)

# %%
# Where a label would overlap a neighbour's: (x offset, y offset in points, alignment) per panel.
LABEL_PLACES = {
    "params": {"LLaMA-65B": (0, -12, "center"), "Llama 2 70B": (0, 6, "center")},
    "tokens": {
        "Llama 3 70B": (-6, -2, "right"),
        "Llama 3.1 405B": (0, 7, "center"),
        "DeepSeek-V3": (0, -13, "center"),
        "Gopher": (0, 7, "center"),
    },
    "compute": {
        "Gopher": (-6, 2, "right"),
        "Chinchilla": (0, 7, "center"),
        "LLaMA-65B": (0, -13, "center"),
    },
}


def label_points(ax, points, panel):
    for x, y, name in points:
        dx, dy, ha = LABEL_PLACES[panel].get(name, (5, 3, "left"))
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(dx, dy), ha=ha, fontsize=7)

# %%
fig, axes = plt.subplots(3, 1, figsize=(7.5, 9), sharex=True)
axes[0].semilogy([r.released_year for r in models], [r.params for r in models], "o", color="C0")
label_points(axes[0], [(r.released_year, r.params, r.model) for r in models], "params")
axes[0].set_ylabel("parameters N")
axes[0].set_title("Figure 1.4: Language models by release date (log scale)")

with_tokens = [r for r in models if r.training_tokens is not None]
axes[1].semilogy(
    [r.released_year for r in with_tokens],
    [r.training_tokens for r in with_tokens],
    "o",
    color="C2",
)
label_points(
    axes[1], [(r.released_year, r.training_tokens, r.model) for r in with_tokens], "tokens"
)
axes[1].set_ylabel("training tokens D")
axes[1].set_ylim(1.5e11, 5e13)

pub = [(y, c) for y, c, is_pub, _ in compute_points if is_pub]
est = [(y, c) for y, c, is_pub, _ in compute_points if not is_pub]
axes[2].semilogy(*zip(*pub), "o", color="C1", ms=8, label="published")
axes[2].semilogy(*zip(*est), "o", mfc="none", color="C1", ms=8, label="estimate, 6ND")
label_points(axes[2], [(y, c, name) for y, c, _, name in compute_points], "compute")
axes[2].set_ylabel("training compute (FLOPs)")
axes[2].set_xlabel("release date (year)")
axes[2].legend(loc="upper left")
axes[2].set_xlim(2018, 2025.6)
axes[2].set_ylim(1.5e23, 1.5e26)
plt.show()

# %%
compute_growth = llama.training_flops / gpt3.training_flops
late = [r for r in models if r.released_year > 2023]
display(
    Markdown(
        "What to see: all three quantities grew roughly exponentially, "
        "which a log scale turns into straight lines. Among the models released "
        f"from 2023 on, {sum(r.params <= 1e11 for r in late)} of {len(late)} "
        f"have at most {1e11 / 1e9:.0f}B parameters, while their training "
        f"tokens range from {min(r.training_tokens for r in late) / 1e12:.1f}T "
        f"to {max(r.training_tokens for r in late) / 1e12:.1f}T: the Chinchilla lesson "
        "in one picture. Filled markers in the bottom panel are published compute; "
        "hollow markers are our $6ND$ estimates (DeepSeek-V3 with its active parameters). "
        "Between GPT-3 and Llama 3.1 405B, published training compute grew "
        f"{compute_growth:.0f}-fold in {llama.released_year - gpt3.released_year:.1f} years. "
        "GPT-1 and GPT-2 have no token count in the table, so they have no compute point."
    )
)

# %% [markdown]
# ## How the words fit together
#
# *What is the relation between AIGC, a large language model, pretraining, fine-tuning, RLHF and
# ChatGPT?*
#
# A **large language model (LLM)** is a language model, in the sense above, with billions of
# parameters trained on a very large corpus. **Pretraining** is that first, expensive stage: the
# model learns to predict the next token of web-scale text, a *self-supervised* objective that needs
# no human labels. **Fine-tuning** then trains the pretrained model further on a smaller, targeted
# dataset. For ChatGPT the fine-tuning followed the InstructGPT recipe (Ouyang et al. 2022; OpenAI 2022):
#
# 1. **supervised fine-tuning (SFT)** on demonstrations written by people (about 13k prompts for
#    InstructGPT);
# 2. a **reward model** trained on people's rankings of several model outputs for the same prompt;
# 3. **reinforcement learning** with PPO against that reward model, with a KL penalty that keeps
#    the model close to the SFT model.
#
# Steps 2 and 3 together are **RLHF**, reinforcement learning from human feedback. Figure 1.5 draws
# the map.

# %%
# Drawing helpers for the concept map: a rounded box with text, and a labelled arrow, on `ax`.
def box(x, y, text, color="#deebf7", w=2.6, h=1.0):
    ax.add_patch(
        FancyBboxPatch(
            (x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.05", fc=color, ec="#3c6e9f", lw=1.2
        )
    )
    ax.text(x, y, text, ha="center", va="center", fontsize=8.5)


def arrow(start, end, text="", style="-|>", ls="-"):
    ax.annotate(
        "",
        xy=end,
        xytext=start,
        arrowprops=dict(arrowstyle=style, color="#333333", lw=1.3, ls=ls, shrinkA=0, shrinkB=0),
    )
    if text:
        ax.text(
            (start[0] + end[0]) / 2,
            (start[1] + end[1]) / 2 + 0.15,
            text,
            ha="center",
            fontsize=7.5,
            style="italic",
        )


# %%
fig, ax = plt.subplots(figsize=(10, 5.2))
ax.set_xlim(0, 10)
ax.set_ylim(0, 5.2)
ax.axis("off")
box(1.5, 3.9, "AIGC / generative AI\ntext, images, audio, code")
box(5.0, 3.9, "Large language model (LLM)\nlearns p(next token | text so far)")
box(8.5, 3.9, "Pretraining\nnext-token prediction on\nweb-scale text (self-supervised)")
box(8.5, 1.3, "Supervised fine-tuning (SFT)\non human-written\ndemonstrations")
box(5.0, 1.3, "RLHF\nreward model from human rankings,\nthen PPO with a KL penalty", w=3.2)
box(
    1.5, 1.3, "ChatGPT (2022-11-30)\nGPT-3.5-series model,\nsibling of InstructGPT", color="#fdd0a2"
)
arrow((2.8, 3.9), (3.7, 3.9), "for text")
arrow((6.3, 3.9), (7.2, 3.9), "stage 1")
arrow((8.5, 3.35), (8.5, 1.85), "")
ax.text(8.6, 2.6, "stage 2", fontsize=7.5, style="italic")
arrow((7.2, 1.3), (6.65, 1.3), "stage 3")
arrow((3.35, 1.3), (2.8, 1.3), "")
ax.text(
    5.0,
    5.0,
    "architecture: decoder-only Transformer (later chapters)",
    ha="center",
    fontsize=8,
    color="#555555",
)
arrow((5.0, 4.85), (5.0, 4.45), ls="--")
ax.text(
    5.0,
    2.6,
    "the character bigram model of this chapter asks the same question,\n"
    "p(next | context), with a one-character context",
    ha="center",
    fontsize=7.5,
    color="#555555",
)
ax.set_title("Figure 1.5: From AIGC to ChatGPT, a concept map")
plt.show()

# %% [markdown]
# Read the map along the arrows: AIGC is the broad field; for text, its engine is a large
# language model; an LLM becomes ChatGPT through three training stages, one of pretraining and two
# of fine-tuning (SFT, then RLHF). What to see: the LLM box holds the same kind of object as the
# bigram model we just built, a next-token distribution; the three stages then decide how well it
# predicts text (pretraining) and how it behaves in conversation (fine-tuning).

# %% [markdown]
# ## Common misconceptions
#
# *Which often-repeated claims about ChatGPT are wrong, and what is right instead?*
#
# ```{admonition} Common misconceptions, corrected
# :class: warning
#
# * **"ChatGPT is a variant of GPT-2."** No. ChatGPT was fine-tuned from a GPT-3.5-series model
#   and is a sibling of InstructGPT, trained with the same RLHF methods (OpenAI 2022).
# * **"ChatGPT is an encoder–decoder Transformer" or "it encodes, then decodes."** No. GPT models,
#   from GPT-1 on, are *decoder-only* Transformers (Radford et al. 2018). The encoder–decoder is
#   the original 2017 Transformer for translation.
# * **"ChatGPT generates text with RNNs or LSTMs."** No. It is a Transformer; there is no recurrent
#   network in it. It generates one token at a time, each chosen from its next-token distribution
#   given all the tokens so far; that loop is what makes it *autoregressive*, and it needs no
#   recurrence in the architecture (Vaswani et al. 2017; Radford et al. 2018).
# * **"Sampling means taking the most probable token."** No. Taking the most probable token is
#   *greedy decoding*; *sampling* draws the token at random with the model's probabilities. This
#   chapter ran both on the bigram model: greedy decoding gave the same text every time and fell
#   into a loop, sampling gave a different text for each seed, with frequencies that match the
#   probabilities.
# * **"ChatGPT is pretrained with masked language modelling (MLM) and next-sentence prediction
#   (NSP)."** No. GPT models are pretrained with causal next-token prediction, the objective of
#   this chapter's bigram model. MLM and NSP are BERT's objectives (Devlin et al. 2019).
#   Chapter 3 compares the objectives in detail.
# * **"OpenAI said ChatGPT reached 100 million users."** Wrong attribution. "100M monthly users in
#   January 2023" is a UBS estimate from Similarweb data, reported by Reuters. "One million users in
#   five days" comes from Sam Altman's tweet of 5 December 2022; "five million in five days" is a
#   misquote.
# * **"Training costs 2·N·D FLOPs."** No. Training costs about $6ND$ (forward and backward passes);
#   $2N$ per token is the cost of *inference*. For GPT-3, $6ND$ reproduces the published
#   compute to within 1%, as asserted above (Brown et al. 2020, Table D.1).
# ```

# %% [markdown]
# ## Summary
#
# * The line to ChatGPT runs from the Transformer (2017) through GPT-1 (2018), GPT-2 (2019), GPT-3
#   (2020) and InstructGPT (2022) to ChatGPT (30 November 2022): the same decoder-only, next-token
#   model, scaled up and then fine-tuned with human feedback.
# * A language model gives $p(\text{next token} \mid \text{text so far})$, and it trains on
#   contexts paired with the token that follows, never on single tokens. A character bigram model
#   does this with a table of counts and add-$k$ smoothing; on Python's help topics it beats the
#   unigram model by more than a bit per character and the uniform model by more than three (the
#   cells assert both; the exact margins, printed above, depend on the Python version).
# * Generating means choosing tokens one at a time: *sampling* draws them with the model's
#   probabilities, *greedy decoding* takes the most probable one. Greedy decoding is deterministic
#   and sent our bigram model into an endless loop.
# * Cross-entropy on held-out text, in nats or bits per character, measures a language model; we
#   checked the vectorised number against an explicit loop and against `F.cross_entropy`.
# * Smoothing is needed because one unseen pair makes the held-out cross-entropy infinite; its
#   strength is a hyperparameter, chosen by held-out score.
# * Real models grew from 117M to hundreds of billions of parameters and trillions of training
#   tokens. Training compute is estimated by $6ND$: within 1% of the published figures for GPT-3
#   and Llama 3.1 405B, but only within 15% of the Chinchilla paper's own count for Chinchilla and
#   Gopher, which that paper says used the same compute budget.
#
# ## Exercises
#
# These exercises are also a graded assignment, `assignments/01_background.py`: a teacher builds
# it with `python3 tools/book.py assignments` (see the teacher's page, `teaching.md`).
# Exercises marked *(autograded)* are checked by tests; those marked *(open)* are graded by
# hand.
#
# 1. **Bits and compression.** *(autograded)* Compress the held-out text with
#    `zlib.compress(text.encode(), 9)` from the standard library and compute the compressed size in
#    bits per character. Is it better or worse than the bigram model's bits per character? *Hint:*
#    `len(compressed) * 8 / len(text)`. A model's cross-entropy in bits is the size an ideal
#    arithmetic coder driven by the model would reach; zlib is not driven by a probability model at
#    all.
# 2. **How much does the held-out part matter?** *(autograded)* Split the corpus into ten
#    contiguous parts; for each, count the bigrams on the other nine and score the held-out part.
#    Plot the ten cross-entropies. Where in the range does this chapter's last-10% split fall?
#    *Hint:* build the training text as `corpus[:lo] + corpus[hi:]`, which creates one spurious
#    pair at the seam; it changes the counts by one.
# 3. **A trigram model.** *(autograded)* Condition on the two previous characters: count $n(a,b,c)$
#    with `torch.bincount` on `(a * V + b) * V + c` (with `V = vocab_size`), smooth, and score the
#    held-out text. How many parameters does it have, how many of its contexts $(a, b)$ were never
#    seen in training, and what is the best $k$ now? *Hint:* the best $k$ is smaller than for the
#    bigram. Why?
# 4. **Temperature, between greedy and uniform.** *(autograded)* Sample from
#    $p(b \mid a)^{1/\tau}$, renormalised, for $\tau \in \{0.5, 1, 2\}$, and compute the
#    cross-entropy of each tempered model on the held-out text. What happens to the samples and
#    to the cross-entropy as $\tau \to 0$ and as $\tau \to \infty$? *Hint:* as $\tau \to 0$ each
#    row puts all its mass on its largest entry, so sampling becomes greedy decoding; as
#    $\tau \to \infty$ every row becomes uniform.
# 5. **Greedy from every start.** *(autograded)* Run `greedy_decode` from each character of the
#    vocabulary. How many different loops does greedy decoding end in? *Hint:* each character has
#    exactly one greedy successor, so the vocabulary is a graph with one arrow out of every node.
# 6. **GPT-3, trained the Chinchilla way.** *(autograded)* Chinchilla's Table 3 suggests about 3.7T
#    training tokens for a 175B-parameter model, roughly twenty per parameter (Hoffmann et al.
#    2022). Use `training_flops_estimate` to compute the training compute of such a model. How many
#    times GPT-3's published compute is it? Which model in the table comes closest in compute?
#    *Hint:* the ratio is simply $3.7\text{T} / 300\text{B}$, since $N$ is unchanged.
#
# ## Key terms
#
# | English | 中文 | Meaning here |
# |---|---|---|
# | {term}`artificial intelligence (AI)` | 人工智能 | Machines doing tasks we would call intelligent if people did them. |
# | {term}`generative AI, AIGC` | 生成式人工智能, 人工智能生成内容 | Models that produce new content rather than only labels. |
# | {term}`language model` | 语言模型 | A probability distribution over token sequences, written as next-token probabilities. |
# | {term}`large language model (LLM)` | 大语言模型 | A language model with billions of parameters trained on a very large corpus. |
# | {term}`token` | 词元 | The unit a model reads and writes: here a character, in GPT a sub-word piece. |
# | {term}`vocabulary` | 词表 | The set $\mathcal{V}$ of all tokens a model can read and write; its size is $\lvert\mathcal{V}\rvert$. |
# | {term}`bigram model` | 二元语法模型 | A language model that conditions only on the previous token. |
# | {term}`sampling` | 采样 | Generating by drawing each next token at random with the model's probabilities. |
# | {term}`greedy decoding` | 贪心解码 | Generating by always taking the most probable next token; deterministic. |
# | {term}`smoothing` | 平滑 | Adding pseudo-counts so unseen events keep a non-zero probability. |
# | {term}`hyperparameter` | 超参数 | A setting chosen before training (here the smoothing constant $k$), not learned from the training text. |
# | {term}`held-out text` | 留出集 | Text the model never trained on, used only to measure it. |
# | {term}`cross-entropy` | 交叉熵 | The mean of −log p(next token) under the model, in nats or bits. |
# | {term}`perplexity` | 困惑度 | exp(cross-entropy in nats): the effective number of equally likely next tokens. |
# | {term}`pretraining` | 预训练 | Training on a large unlabelled corpus with a self-supervised objective. |
# | {term}`fine-tuning` | 微调 | Further training of a pretrained model on a smaller, targeted dataset. |
# | {term}`reinforcement learning from human feedback (RLHF)` | 人类反馈强化学习 | Fine-tuning against a reward model trained on human preference rankings. |
# | {term}`decoder-only Transformer` | 仅解码器 Transformer | A Transformer whose every layer sees only earlier tokens; the GPT architecture. |
# | {term}`training compute (FLOPs) <training compute>` | 训练计算量（浮点运算次数） | The floating-point operations a training run performs, about $6ND$ for a dense Transformer. |
# | {term}`mixture of experts (MoE)` | 混合专家模型 | A model that routes each token through a few of many expert sub-networks, so only part of its parameters is used per token. |
#
# ## Sources
#
# * {cite:t}`ch01-brown2020gpt3` (GPT-3; Table D.1 for training compute).
# * {cite:t}`ch01-chowdhery2022palm` (PaLM).
# * {cite:t}`ch01-deepseekai2024v3` (abstract: 671B total parameters, 37B activated per token,
#   14.8T training tokens, 2.788M H800 GPU-hours).
# * {cite:t}`ch01-devlin2019bert` (BERT).
# * {cite:t}`ch01-hoffmann2022chinchilla` (Chinchilla; abstract and §4 for "the same compute
#   budget", Table 1 for Gopher's and Chinchilla's parameters and tokens, Figure 2's caption for
#   the FLOPs used to train Gopher, Table 3 for compute-optimal sizes, Appendix F for how FLOPs are
#   counted).
# * {cite:t}`ch01-holtzman2020degeneration` (repetition under greedy decoding).
# * {cite:t}`ch01-kaplan2020scaling` (§2.1, $C \approx 6ND$).
# * {cite:t}`ch01-krizhevsky2012imagenet`.
# * {cite:t}`ch01-llamateam2024llama3` (Llama 3.1 405B); {cite:t}`ch01-meta2024llama3card`
#   (Llama 3 70B).
# * {cite:t}`ch01-mccarthy1955dartmouth` (the Dartmouth proposal).
# * {cite:t}`ch01-openai2022chatgpt`.
# * {cite:t}`ch01-ouyang2022instructgpt` (InstructGPT).
# * {cite:t}`ch01-radford2018gpt1` (GPT-1); {cite:t}`ch01-radford2019gpt2` (GPT-2).
# * {cite:t}`ch01-rae2021gopher` (Gopher).
# * {cite:t}`ch01-touvron2023llama` (LLaMA) and {cite:t}`ch01-touvron2023llama2` (Llama 2).
# * {cite:t}`ch01-turing1950computing`.
# * {cite:t}`ch01-vaswani2017attention`.
# * {cite:t}`ch01-reuters2023chatgptusers`, reporting the UBS estimate of ChatGPT's monthly users;
#   {cite:t}`ch01-altman2022tweet`, post on Twitter.
# * The corpus: {cite:t}`ch01-python_pydoc_data_topics`, in the version that runs the notebook
#   (printed in the corpus cell).
#
# ```{bibliography}
# :filter: docname in docnames
# :keyprefix: ch01-
# :labelprefix: 1.
# :style: unsrt
# ```

# %%
print(f"chapter executed in {time.perf_counter() - chapter_start:.1f} s")
