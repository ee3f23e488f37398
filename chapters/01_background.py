# %% [markdown]
# # 1. Background: from AI to AIGC to ChatGPT
#
# ChatGPT did not appear from nowhere. It is a *language model*, a program that assigns
# probabilities to text, made very large, trained on a great deal of text, and then taught to
# follow instructions with human feedback. This chapter answers five questions:
#
# 1. Where does ChatGPT sit in the history of artificial intelligence?
# 2. What is a language model? We build a first one, a character bigram model, in a few lines, and
#    measure how good it is.
# 3. How large are real language models, and how much computation did training them take?
# 4. How do the words AIGC, LLM, pretraining, fine-tuning and RLHF fit together?
# 5. Which common claims about ChatGPT are wrong?
#
# Facts about the world carry a citation (author and year); the full references are listed at
# the end of the chapter.

# %%
import math
import platform
import sys
import time
from fractions import Fraction

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from matplotlib.patches import FancyBboxPatch

from aigc_book import get_device, seed_everything, use_book_style
from aigc_book.facts import load_models, training_flops_estimate
from aigc_book.models.bigram import BigramLM
from aigc_book.text.char_tokenizer import CharTokenizer
from aigc_book.text.corpora import python_docs_text, split_train_val

use_book_style()
device = get_device()
seed_everything(0)
chapter_start = time.perf_counter()
print(f"Python {platform.python_version()}, PyTorch {torch.__version__}, device: {device}")

# %% [markdown]
# Everything in this chapter is counting and arithmetic, so it runs on the CPU whatever `device`
# is; later chapters move tensors to `device`.
#
# ## A short history
#
# *How did we get from "artificial intelligence" to ChatGPT?*
#
# **Artificial intelligence (AI)** is the study of machines that do tasks we would call
# intelligent if people did them. The field is usually dated from two events: Alan Turing's 1950
# paper "Computing Machinery and Intelligence", which proposed the imitation game now called the
# Turing test, and the 1956 Dartmouth summer workshop, whose proposal coined the term "artificial
# intelligence". For decades, progress came in waves of hand-written rules and, later, of
# statistical models trained on modest data.
#
# The present wave is **deep learning**: neural networks with many layers, trained on large data
# with GPUs. Its public turning point was 2012, when AlexNet (Krizhevsky, Sutskever and Hinton), a
# convolutional network trained on GPUs, won the ImageNet image-classification challenge by a wide
# margin. For language, the decisive architecture arrived in 2017: the **Transformer** of Vaswani
# et al., "Attention Is All You Need", which replaced recurrent networks with attention.
#
# Then came the lineage that leads to ChatGPT (Radford et al. 2018, 2019; Brown et al. 2020; Ouyang et al. 2022; OpenAI 2022):
#
# * **GPT-1** (Radford et al., June 2018): a 12-layer *decoder-only* Transformer, about 117M
#   parameters, *pretrained* on books to predict the next token and then *fine-tuned* on each task.
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

fig, (ax_early, ax_modern) = plt.subplots(
    1, 2, figsize=(11, 4.5), sharey=True, gridspec_kw={"width_ratios": [1, 3.0], "wspace": 0.06}
)
for ax, events, (lo, hi) in ((ax_early, early_events, (1948, 1959)), (ax_modern, modern_events, (2011.4, 2023.6))):
    ax.axhline(0, color="black", lw=1)
    for x, level, label in events:
        highlight = label.startswith("ChatGPT")
        ax.plot([x, x], [0, 0.9 * level], color="grey", lw=0.8)
        ax.plot(x, 0, "o", color="C1" if highlight else "C0", ms=9 if highlight else 6, zorder=3)
        ax.text(x, 0.95 * level, label, ha="center", va="bottom" if level > 0 else "top", fontsize=8,
                fontweight="bold" if highlight else "normal")
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

# %% [markdown]
# The left panel covers the 1950s, the right panel 2012 to 2023; the decades in between are cut
# out. What to see: the path from the Transformer to ChatGPT took about five and a half years, and
# from GPT-1 to ChatGPT each step kept the same kind of model, a decoder-only Transformer
# trained to predict the next token, and changed its size, its data and, at the end, how it was
# fine-tuned.

# %% [markdown]
# ## What is a language model?
#
# *What does it mean for a program to "model" language, and how do we measure whether it does so
# well?*
#
# A **language model** assigns a probability to every sequence of **tokens** $x_1, \dots, x_T$.
# A token is the unit the model reads and writes; in this chapter a token is one character,
# while GPT models use sub-word pieces. By the chain rule of probability, any such distribution can
# be written as a product of next-token probabilities:
#
# $$p(x_1, \dots, x_T) = p(x_1)\prod_{t=2}^{T} p(x_t \mid x_1, \dots, x_{t-1}).$$
#
# So a language model is exactly a machine that, given the text so far, outputs a probability for
# each possible next token. Generating text means drawing a token from that distribution, appending
# it, and repeating. GPT models are such machines, with a Transformer computing
# $p(x_t \mid x_{<t})$ (Radford et al. 2018).
#
# The simplest non-trivial choice is to look only one token back, the **bigram** approximation
#
# $$p(x_t \mid x_1, \dots, x_{t-1}) \approx p(x_t \mid x_{t-1}).$$
#
# Its parameters are one probability for each pair of characters, and we can estimate them by
# counting. If $C[a,b]$ is the number of times character $b$ follows character $a$ in the training
# text, and $V$ is the number of distinct characters, then with **add-$k$ smoothing**
#
# $$p(b \mid a) = \frac{C[a,b] + k}{\sum_{b'} C[a,b'] + kV}.$$
#
# With $k=0$ this is the maximum-likelihood estimate; $k>0$ pretends every pair was seen $k$
# extra times, so that pairs missing from the training text do not get probability zero.
#
# We score a model by its **cross-entropy** on text it has not seen: the average surprise, in
# nats when we use the natural log,
#
# $$H = -\frac{1}{T-1}\sum_{t=2}^{T} \log p(x_t \mid x_{t-1}).$$
#
# Lower is better. Dividing by $\ln 2$ gives **bits per character**: the number of bits an ideal
# compressor driven by the model would spend per character. The **perplexity** $e^{H}$ is the
# number of equally likely characters the model is, on average, choosing between.
#
# Before we use a real corpus, here is the whole recipe on the word "banana", by hand, with exact
# fractions. Its five pairs are *ba, an, na, an, na*; the vocabulary is {a, b, n}, so $V=3$, and we
# take $k=1$.

# %%
# NBVAL_CHECK_OUTPUT
word = "banana"
pairs = list(zip(word, word[1:]))
chars = sorted(set(word))
counts = {a: {b: 0 for b in chars} for a in chars}
for a, b in pairs:
    counts[a][b] += 1
k = 1
prob = {a: {b: Fraction(counts[a][b] + k, sum(counts[a].values()) + k * len(chars)) for b in chars} for a in chars}
print("pairs:", " ".join(a + b for a, b in pairs))
for a in chars:
    print(f"p(. | {a}) =", {b: str(p) for b, p in prob[a].items()})
assert all(sum(prob[a].values()) == 1 for a in chars)  # exact: every row is a distribution
p_pairs = math.prod(prob[a][b] for a, b in pairs)
ce_by_hand = -math.log(p_pairs) / len(pairs)
print(f"p(pairs) = {p_pairs} = {float(p_pairs):.6f}")
print(f"cross-entropy = -ln({p_pairs}) / {len(pairs)} = {ce_by_hand:.6f} nats/char "
      f"= {ce_by_hand / math.log(2):.6f} bits/char")

banana = BigramLM.from_text(word, k=1.0)
assert math.isclose(banana.cross_entropy(word), ce_by_hand, rel_tol=1e-12)
print(f"aigc_book.models.bigram agrees: {banana.cross_entropy(word):.6f} nats/char")

# %% [markdown]
# Every row of the table is a probability distribution (each sums to 1), and the package's
# `BigramLM` reproduces the hand computation to twelve significant digits. Now the same on real
# text.
#
# ### A corpus every Python has
#
# *What text can we train on without downloading anything?*
#
# Every Python installation ships the text of its own `help()` topics, the pages you see with
# `help("with")` or `help("FORMATTING")`, in the module `pydoc_data.topics`. Together they are a few
# hundred thousand characters of English technical prose with code examples. The exact text changes
# between Python versions, so your numbers may differ slightly from the ones stored in this
# notebook. `aigc_book.text.corpora.python_docs_text()` joins the topics in sorted order (later chapters
# use the same text), and `split_train_val` holds out the last 10% of the characters as
# **held-out text**: the model never counts it, and we use it only to measure.

# %%
from pydoc_data.topics import topics

corpus = python_docs_text()
train_text, heldout_text = split_train_val(corpus, 0.1)
vocab = CharTokenizer.fit(corpus)  # the alphabet of the whole corpus, so every held-out char has an id
print(f"Python {sys.version.split()[0]}: {len(topics)} help topics, {len(corpus):,} characters, "
      f"{len(vocab)} distinct characters")
print(f"training text: {len(train_text):,} characters; held-out text: {len(heldout_text):,} characters")
print(f"held-out characters never seen in training: {sorted(set(heldout_text) - set(train_text))}")
print("start of the held-out text:", repr(heldout_text[:120]))
ends, pos = {}, 0
for name in sorted(topics):
    pos += len(topics[name].strip()) + 2  # python_docs_text strips each topic and joins with "\n\n"
    ends[name] = pos
print("topics (partly) in the held-out text:", [name for name, end in ends.items() if end > len(train_text)])

# %% [markdown]
# Building the vocabulary from the whole corpus is a small, deliberate leak: it tells the model
# which characters exist, not how they are used. Held-out characters that training never showed
# would still get a probability from smoothing.
#
# ### Counting, and a picture of the counts
#
# *What does a bigram model actually learn?*
#
# Fitting is one pass of counting. We use $k=0.1$ for now and choose $k$ properly below.

# %%
K = 0.1
t0 = time.perf_counter()
model = BigramLM.from_text(train_text, k=K, vocab=vocab)
print(f"counted {int(model.counts.sum()):,} character pairs in {time.perf_counter() - t0:.2f} s")
print(f"parameters: V^2 = {model.vocab_size}^2 = {model.vocab_size ** 2:,} probabilities")
P = model.probs()  # (V, V), row a is p(. | a)
torch.testing.assert_close(P.sum(dim=1), torch.ones(model.vocab_size, dtype=torch.float64))

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
for a in ["q", " ", "d", "s", "y", "h"]:
    top = P[vocab.index(a)].topk(3)
    shown_top = ", ".join(f"{vocab.itos[j]!r} {p:.2f}" for p, j in zip(top.values.tolist(), top.indices.tolist()))
    print(f"after {a!r}: {shown_top}")

# %% [markdown]
# Each row is the distribution of the next character after the row's character (only the 27 shown
# columns are drawn, so a row's visible cells need not sum to 1). What to see: English spelling is
# already there, as the most likely continuations printed under the figure confirm. After *q* most
# of the mass is on *u*; after *h*, on *e*; after letters that often end words (*d*, *s*, *y*), the
# likeliest next character is a space. After a space, the likeliest next character is another
# space, because the corpus indents much of its text and code; the rest of that row spreads over the
# letters that start words.
#
# ### Sampling
#
# *What text does the model believe in?*
#
# To generate, we start from a character and repeatedly draw the next one from $p(\cdot \mid a)$.
# A seeded `torch.Generator` makes the draw repeatable.

# %%
generator = torch.Generator().manual_seed(0)
print(model.sample(300, generator, start="T"))

# %% [markdown]
# The output has the texture of the corpus (word-length chunks, spaces, the odd bracket or
# quote) but no words beyond the shortest ones: one character of memory is not enough to spell.
# Chapters on the Transformer replace this one-character memory with attention over the whole
# context.
#
# ### Measuring the model: cross-entropy on held-out text
#
# *How many bits per character does the bigram model need, and is that good?*
#
# Two baselines make the number meaningful. A **uniform** model that ignores the text gives every
# character probability $1/V$, so its cross-entropy is $\log V$. A **unigram** model uses each
# character's overall frequency, ignoring the previous character. The bigram model should beat both.

# %%
ln2 = math.log(2)
V = model.vocab_size
ce_uniform = math.log(V)

train_ids, heldout_ids = vocab.encode_tensor(train_text), vocab.encode_tensor(heldout_text)
unigram_counts = torch.bincount(train_ids, minlength=V).to(torch.float64)
p_train = unigram_counts / unigram_counts.sum()
unigram_entropy = -(p_train[p_train > 0] * p_train[p_train > 0].log()).sum().item()
p_unigram = (unigram_counts + K) / (unigram_counts.sum() + K * V)  # add-k smoothed, as for the bigram
ce_unigram = -p_unigram.log()[heldout_ids[1:]].mean().item()  # score the same T-1 characters
ce_bigram = model.cross_entropy(heldout_text)
ce_bigram_train = model.cross_entropy(train_text)

print(f"{'model (scored on held-out text)':<38}{'nats/char':>10}{'bits/char':>11}{'perplexity':>12}")
for name, ce in [
    (f"uniform, log V (V = {V})", ce_uniform),
    ("unigram, add-k", ce_unigram),
    ("bigram, add-k", ce_bigram),
]:
    print(f"{name:<38}{ce:>10.4f}{ce / ln2:>11.4f}{math.exp(ce):>12.2f}")
print(f"\nbits/char saved: unigram over uniform {(ce_uniform - ce_unigram) / ln2:.2f}, "
      f"bigram over unigram {(ce_unigram - ce_bigram) / ln2:.2f}")
print(f"unigram entropy of the training text: {unigram_entropy:.4f} nats/char")
print(f"bigram cross-entropy on its own training text: {ce_bigram_train:.4f} nats/char")
assert ce_bigram < ce_unigram < ce_uniform
assert (ce_unigram - ce_bigram) / ln2 > 1  # the previous character is worth more than a bit
assert (ce_uniform - ce_bigram) / ln2 > 3

# %% [markdown]
# The table reads from worst to best. Knowing the character frequencies (unigram) already saves
# about two bits per character against the uniform guess; knowing the previous character (bigram)
# saves more than one bit more. The bigram model's perplexity says that, on average, it is as
# unsure as if it were choosing among about ten equally likely characters, against all $V$ of them
# for the uniform model.
#
# Two details deserve a remark. The unigram model's held-out cross-entropy is close to the
# entropy of the training text's character frequencies, as it should be when the two parts of the
# corpus use letters at similar rates. And here the bigram model scores *better* on the held-out
# text than on the text it was counted from, which is unusual: the last tenth of the sorted topics
# (mostly the reference pages on built-in mapping and sequence types, listed above) happens to be
# more predictable than the average topic. A held-out number describes the model *on that text*; compare models on the same
# held-out text, never numbers measured on different text. Exercise 2 measures how much the score
# varies with the choice of held-out part.
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
count_table = model.counts.tolist()  # plain Python ints, C[a][b]
row_totals = [sum(row) for row in count_table]
total_nll = 0.0
for a, b in zip(heldout_text, heldout_text[1:]):
    i, j = vocab.index(a), vocab.index(b)
    p = (count_table[i][j] + K) / (row_totals[i] + K * V)
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
# All three agree to at least nine significant digits (they differ only in the order of floating-point
# additions). The same function, `F.cross_entropy`, is the training loss of every GPT model
# in this book: the only thing that changes is the machine that produces the logits.
#
# ### How much smoothing?
#
# *Why not simply use the counts ($k=0$), and how should $k$ be chosen?*

# %%
ks = [0.0, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0]
ce_train_k, ce_heldout_k = [], []
for k_ in ks:
    m = BigramLM.from_text(train_text, k=k_, vocab=vocab)
    ce_train_k.append(m.cross_entropy(train_text))
    ce_heldout_k.append(m.cross_entropy(heldout_text))
for k_, tr, ho in zip(ks, ce_train_k, ce_heldout_k):
    print(f"k = {k_:<6g} training {tr:.4f}   held-out {ho:.4f} nats/char")
best_k = min(zip(ce_heldout_k, ks))[1]
print(f"lowest held-out cross-entropy at k = {best_k:g}")
assert ce_train_k[0] == min(ce_train_k)  # k = 0 maximises the likelihood of the training text
assert math.isinf(ce_heldout_k[0])  # ... and gives some held-out pair probability 0

fig, ax = plt.subplots()
ax.semilogx(ks[1:], ce_train_k[1:], "o-", label="training text")
ax.semilogx(ks[1:], ce_heldout_k[1:], "s-", label="held-out text")
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
# say. What to see in Figure 1.3: the held-out curve has a minimum, and the training curve alone
# cannot find it. Choosing $k$ (a **hyperparameter**) by held-out score is, in miniature, how the
# training settings of real models are chosen. Strictly, choosing it on the same held-out text we
# report makes that report slightly optimistic; a third, untouched test set avoids this.
#
# A bigram model can also say which of two strings is more "English-like in the corpus' way":

# %%
def log_p_after_first(s: str) -> float:
    ids = vocab.encode_tensor(s)
    return log_P[ids[:-1], ids[1:]].sum().item()


for good, bad in [("the ", "teh "), ("def ", "fde ")]:
    lg, lb = log_p_after_first(good), log_p_after_first(bad)
    print(f"log p({good!r}) = {lg:7.3f}, log p({bad!r}) = {lb:7.3f} nats (given the first character): "
          f"{good!r} is {math.exp(lg - lb):,.0f} times more probable")
    assert lg > lb

# %% [markdown]
# The correct spellings are several nats, that is hundreds of times or more, more probable than
# the scrambled ones. This is all a language model is; ChatGPT differs in *how* it computes the next-token
# probabilities (a Transformer over thousands of previous tokens instead of a table over one), in
# scale, and in fine-tuning.
#
# ## Real models over time
#
# *How large are real language models, how much text did they see, and how much computation did
# training them take?*
#
# The package ships a small table of published figures. Every row names its source
# and a confidence label: V means checked against the paper, its abstract, a model card or a page
# quoting it; M means from memory of the primary source and not re-checked, so treat those rows as
# approximate. An empty cell means the source publishes no figure.

# %%
# NBVAL_CHECK_OUTPUT
models = load_models()


def fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3g}"


header = f"{'model':<15}{'released':<10}{'params':>9}{'tokens':>9}{'tokens/param':>14}{'FLOPs (published)':>19}{'conf':>6}  ref"
print(header)
print("-" * len(header))
for i, r in enumerate(models, start=1):
    ratio = fmt(r.training_tokens / r.params) if r.training_tokens else "-"
    print(f"{r.model:<15}{r.released:<10}{fmt(r.params):>9}{fmt(r.training_tokens):>9}{ratio:>14}"
          f"{fmt(r.training_flops):>19}{r.confidence:>6}  [{i}]")
print()
for i, r in enumerate(models, start=1):
    print(f"[{i}] {r.source}")
print(f"\n{len(models)} models, {sum(r.training_flops is not None for r in models)} with published training compute")

# %% [markdown]
# Two patterns stand out. Parameters grew by more than three orders of magnitude in six years. And
# after Chinchilla (Hoffmann et al. 2022), which found that parameters and training tokens should
# be scaled equally, models were trained on far more tokens per parameter: GPT-3 saw
# fewer than two tokens per parameter, Chinchilla twenty, Llama 3 70B about two hundred.
#
# ### Estimating training compute: 6·N·D
#
# *Only two rows publish their training compute. Can we estimate the others?*
#
# Kaplan et al. (2020) estimate the training cost of a dense Transformer with $N$ parameters on $D$
# tokens as $C \approx 6ND$ floating-point operations (FLOPs): about $2N$ per token for the forward
# pass (a multiply and an add per weight) and twice that for the backward pass (Kaplan et al. 2020, §2.1). Check it
# against GPT-3, whose paper publishes $3.64\times 10^3$ petaflop/s-days, that is
# $3.14\times10^{23}$ FLOPs (Brown et al. 2020, Table D.1).

# %%
# NBVAL_CHECK_OUTPUT
by_name = {r.model: r for r in models}
gpt3 = by_name["GPT-3"]
pf_days = 3.64e3  # Brown et al. 2020, Table D.1
pf_days_in_flops = pf_days * 1e15 * 24 * 3600  # 1 PF/s-day = 1e15 FLOP/s for 86,400 s
estimate = training_flops_estimate(gpt3.params, gpt3.training_tokens)
rel = abs(estimate - gpt3.training_flops) / gpt3.training_flops
print(f"GPT-3 published: {pf_days:.3g} PF-days = {pf_days_in_flops:.4g} FLOPs (table: {gpt3.training_flops:.3g})")
print(f"6 N D = 6 x {gpt3.params:.3g} x {gpt3.training_tokens:.3g} = {estimate:.3g} FLOPs")
print(f"relative difference: {rel:.2%}")
assert math.isclose(pf_days_in_flops, gpt3.training_flops, rel_tol=0.005)
assert rel < 0.01

llama = by_name["Llama 3.1 405B"]
est_llama = training_flops_estimate(llama.params, llama.training_tokens)
rel_llama = abs(est_llama - llama.training_flops) / llama.training_flops
print(f"\nLlama 3.1 405B published: {llama.training_flops:.3g} FLOPs; 6ND = {est_llama:.3g} ({rel_llama:.2%} apart)")
assert rel_llama < 0.01

# %% [markdown]
# For both models with a published figure, $6ND$ is within 1% of it. (Inference, by the same
# accounting, costs about $2N$ FLOPs per generated token, not $6N$ (Kaplan et al. 2020).) We can therefore
# fill the gaps with estimates, as long as we label them as estimates.
#
# One row needs care. DeepSeek-V3 is a *mixture-of-experts* model: of its 671B parameters, only
# about 37B are used for each token, according to the source in the table (an M row, so
# approximate). The FLOPs per token depend on the parameters that are used, so the estimate must use
# $N_{\text{active}}$; using the total would overstate the compute about eighteen-fold.

# %%
ACTIVE_PARAMS = {"DeepSeek-V3": 37e9}  # mixture of experts: parameters used per token (models.csv source column)

print(f"{'model':<15}{'N used':>9}{'D':>9}{'6ND (estimate)':>16}{'published':>11}")
compute_points = []  # (year, FLOPs, published?, model)
for r in models:
    if r.training_tokens is None:
        print(f"{r.model:<15}{'':>9}{'-':>9}{'no token count':>16}{fmt(r.training_flops):>11}")
        continue
    n_used = ACTIVE_PARAMS.get(r.model, r.params)
    est = training_flops_estimate(n_used, r.training_tokens)
    print(f"{r.model:<15}{n_used:>9.3g}{r.training_tokens:>9.3g}{est:>16.3g}{fmt(r.training_flops):>11}")
    if r.training_flops is not None:
        compute_points.append((r.released_year, r.training_flops, True, r.model))
    else:
        compute_points.append((r.released_year, est, False, r.model))

print(f"\nfor scale: GPT-3 has {gpt3.params / model.vocab_size**2:.1e} times as many parameters as our bigram "
      f"table and saw {gpt3.training_tokens / len(train_text):.1e} times as many tokens as we counted characters")

# %%
# Where a label would overlap a neighbour's: (x offset, y offset in points, alignment) per panel.
LABEL_PLACES = {
    "params": {"LLaMA-65B": (0, -12, "center"), "Llama 2 70B": (0, 6, "center")},
    "tokens": {"Llama 3 70B": (-6, -2, "right"), "Llama 3.1 405B": (0, 7, "center"),
               "DeepSeek-V3": (0, -13, "center")},
    "compute": {"Gopher": (-6, 2, "right"), "LLaMA-65B": (0, -13, "center")},
}


def label_points(ax, points, panel):
    for x, y, name in points:
        dx, dy, ha = LABEL_PLACES[panel].get(name, (5, 3, "left"))
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(dx, dy), ha=ha, fontsize=7)


fig, axes = plt.subplots(3, 1, figsize=(7.5, 9), sharex=True)
axes[0].semilogy([r.released_year for r in models], [r.params for r in models], "o", color="C0")
label_points(axes[0], [(r.released_year, r.params, r.model) for r in models], "params")
axes[0].set_ylabel("parameters N")
axes[0].set_title("Figure 1.4: Language models by release date (log scale)")

with_tokens = [r for r in models if r.training_tokens is not None]
axes[1].semilogy([r.released_year for r in with_tokens], [r.training_tokens for r in with_tokens], "o", color="C2")
label_points(axes[1], [(r.released_year, r.training_tokens, r.model) for r in with_tokens], "tokens")
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
plt.show()

# %% [markdown]
# What to see: all three quantities grew roughly exponentially, which a log scale turns into
# straight lines. After 2022 parameter counts stop rising steadily (several models of 65–70B
# parameters), while training tokens keep rising by an order of magnitude: the Chinchilla lesson
# in one picture. Filled markers in the bottom panel are published compute; hollow markers are our
# $6ND$ estimates (DeepSeek-V3 with its active parameters). Between GPT-3 and Llama 3.1 405B,
# training compute grew more than a hundredfold in about four years. GPT-1 and GPT-2 have no token
# count in the table, so they have no compute point.
#
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
fig, ax = plt.subplots(figsize=(10, 5.2))
ax.set_xlim(0, 10)
ax.set_ylim(0, 5.2)
ax.axis("off")


def box(x, y, text, color="#deebf7", w=2.6, h=1.0):
    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.05",
                                fc=color, ec="#3c6e9f", lw=1.2))
    ax.text(x, y, text, ha="center", va="center", fontsize=8.5)


def arrow(start, end, text="", style="-|>", ls="-"):
    ax.annotate("", xy=end, xytext=start,
                arrowprops=dict(arrowstyle=style, color="#333333", lw=1.3, ls=ls, shrinkA=0, shrinkB=0))
    if text:
        ax.text((start[0] + end[0]) / 2, (start[1] + end[1]) / 2 + 0.15, text, ha="center", fontsize=7.5,
                style="italic")


box(1.5, 3.9, "AIGC / generative AI\ntext, images, audio, code")
box(5.0, 3.9, "Large language model (LLM)\nlearns p(next token | text so far)")
box(8.5, 3.9, "Pretraining\nnext-token prediction on\nweb-scale text (self-supervised)")
box(8.5, 1.3, "Supervised fine-tuning (SFT)\non human-written\ndemonstrations")
box(5.0, 1.3, "RLHF\nreward model from human rankings,\nthen PPO with a KL penalty", w=3.2)
box(1.5, 1.3, "ChatGPT (2022-11-30)\nGPT-3.5-series model,\nsibling of InstructGPT", color="#fdd0a2")
arrow((2.8, 3.9), (3.7, 3.9), "for text")
arrow((6.3, 3.9), (7.2, 3.9), "stage 1")
arrow((8.5, 3.35), (8.5, 1.85), "")
ax.text(8.6, 2.6, "stage 2", fontsize=7.5, style="italic")
arrow((7.2, 1.3), (6.65, 1.3), "stage 3")
arrow((3.35, 1.3), (2.8, 1.3), "")
ax.text(5.0, 5.0, "architecture: decoder-only Transformer (later chapters)", ha="center", fontsize=8,
        color="#555555")
arrow((5.0, 4.85), (5.0, 4.45), ls="--")
ax.text(5.0, 2.6, "the character bigram model of this chapter asks the same question,\n"
        "p(next | context), with a one-character context", ha="center", fontsize=7.5,
        color="#555555")
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
#   $3.14\times10^{23}$ FLOPs to within 1%, as computed above (Brown et al. 2020, Table D.1).
# ```

# %% [markdown]
# ## Summary
#
# * The line to ChatGPT runs from the Transformer (2017) through GPT-1 (2018), GPT-2 (2019), GPT-3
#   (2020) and InstructGPT (2022) to ChatGPT (30 November 2022): the same decoder-only, next-token
#   model, scaled up and then fine-tuned with human feedback.
# * A language model gives $p(\text{next token} \mid \text{text so far})$. A character bigram model
#   does this with a table of counts and add-$k$ smoothing; on Python's help topics it beats the
#   unigram model by more than a bit per character, and the uniform model by more than three, as
#   printed above.
# * Cross-entropy on held-out text, in nats or bits per character, measures a language model; we
#   checked the vectorised number against an explicit loop and against `F.cross_entropy`.
# * Smoothing is needed because one unseen pair makes the held-out cross-entropy infinite; its
#   strength is chosen by held-out score.
# * Real models grew from 117M to hundreds of billions of parameters and trillions of training
#   tokens; training compute is well estimated by $6ND$, which matches GPT-3's published figure to
#   within 1%.
#
# ## Exercises
#
# 1. **Bits and compression.** Compress the held-out text with `zlib.compress(text.encode(), 9)`
#    from the standard library and compute the compressed size in bits per character. Is it better
#    or worse than the bigram model's bits per character? *Hint:* `len(compressed) * 8 /
#    len(text)`. A model's cross-entropy in bits is the size an ideal arithmetic coder driven by the
#    model would reach; zlib is not driven by a probability model at all.
# 2. **How much does the held-out part matter?** Split the corpus into ten contiguous parts; for
#    each, count the bigrams on the other nine and score the held-out part. Plot the ten
#    cross-entropies. Where in the range does this chapter's last-10% split fall? *Hint:* build the
#    training text as `corpus[:lo] + corpus[hi:]`, which creates one spurious pair at the seam; it
#    changes the counts by one.
# 3. **A trigram model.** Condition on the two previous characters: count $C[a,b,c]$ with
#    `torch.bincount` on `(a * V + b) * V + c`, smooth, and score the held-out text. How many
#    parameters does it have, how many of its contexts $(a, b)$ were never seen in training, and
#    what is the best $k$ now? *Hint:* the best $k$ is smaller than for the bigram. Why?
# 4. **Samples and temperature.** Sample from $p(b \mid a)^{1/\tau}$, renormalised, for
#    $\tau \in \{0.5, 1, 2\}$. What happens as $\tau \to 0$? Which choice is *greedy decoding*, and
#    why is greedy decoding not sampling? *Hint:* with $\tau \to 0$ each row puts all its mass on
#    its largest entry.
# 5. **GPT-3, trained the Chinchilla way.** Chinchilla's Table 3 suggests about 3.7T training
#    tokens for a 175B-parameter model, roughly twenty per parameter (Hoffmann et al. 2022). Use
#    `training_flops_estimate` to compute the training compute of such a model. How many times
#    GPT-3's published compute is it? Which model in the table comes closest in compute?
#    *Hint:* the ratio is simply $3.7\text{T} / 300\text{B}$, since $N$ is unchanged.
#
# ## Key terms
#
# | English | 中文 | Meaning here |
# |---|---|---|
# | artificial intelligence (AI) | 人工智能 | Machines doing tasks we would call intelligent if people did them. |
# | generative AI, AIGC | 生成式人工智能, 人工智能生成内容 | Models that produce new content rather than only labels. |
# | language model | 语言模型 | A probability distribution over token sequences, written as next-token probabilities. |
# | large language model (LLM) | 大语言模型 | A language model with billions of parameters trained on a very large corpus. |
# | token | 词元 | The unit a model reads and writes: here a character, in GPT a sub-word piece. |
# | bigram model | 二元语法模型 | A language model that conditions only on the previous token. |
# | smoothing | 平滑 | Adding pseudo-counts so unseen events keep a non-zero probability. |
# | held-out text | 留出集 | Text the model never trained on, used only to measure it. |
# | cross-entropy | 交叉熵 | The mean of −log p(next token) under the model, in nats or bits. |
# | perplexity | 困惑度 | exp(cross-entropy in nats): the effective number of equally likely next tokens. |
# | pretraining | 预训练 | Training on a large unlabelled corpus with a self-supervised objective. |
# | fine-tuning | 微调 | Further training of a pretrained model on a smaller, targeted dataset. |
# | reinforcement learning from human feedback (RLHF) | 人类反馈强化学习 | Fine-tuning against a reward model trained on human preference rankings. |
# | decoder-only Transformer | 仅解码器 Transformer | A Transformer whose every layer sees only earlier tokens; the GPT architecture. |
#
# ## Sources
#
# * Brown, T. et al. (2020). *Language Models are Few-Shot Learners.* arXiv:2005.14165 (GPT-3;
#   Table D.1 for training compute).
# * Devlin, J. et al. (2019). *BERT: Pre-training of Deep Bidirectional Transformers for Language
#   Understanding.* NAACL.
# * Hoffmann, J. et al. (2022). *Training Compute-Optimal Large Language Models.* arXiv:2203.15556
#   (Chinchilla).
# * Kaplan, J. et al. (2020). *Scaling Laws for Neural Language Models.* arXiv:2001.08361 (§2.1,
#   $C \approx 6ND$).
# * Krizhevsky, A., Sutskever, I. and Hinton, G. (2012). *ImageNet Classification with Deep
#   Convolutional Neural Networks.* NeurIPS.
# * OpenAI (2022). *Introducing ChatGPT* (announcement, 30 November 2022).
# * Ouyang, L. et al. (2022). *Training language models to follow instructions with human
#   feedback.* arXiv:2203.02155 (InstructGPT).
# * Radford, A. et al. (2018). *Improving Language Understanding by Generative Pre-Training*
#   (GPT-1); (2019) *Language Models are Unsupervised Multitask Learners* (GPT-2).
# * Turing, A. (1950). *Computing Machinery and Intelligence.* Mind.
# * Vaswani, A. et al. (2017). *Attention Is All You Need.* NeurIPS.
# * Reuters (1 February 2023), reporting the UBS estimate of ChatGPT's monthly users; Sam Altman,
#   post on Twitter, 5 December 2022.
# * The models table's own sources are listed under it, with one reference per row.

# %%
print(f"chapter executed in {time.perf_counter() - chapter_start:.1f} s")
