# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [raw]
# # ASSIGNMENT CONFIG
# name: 01_background
# init_cell: true
# check_all_cell: false
# export_cell: false
# solutions_pdf: false
# generate: true
# tests:
#   files: false

# %% [markdown]
# # Assignment 1: From AI to AIGC to ChatGPT
#
# The exercises of chapter 1, on the character bigram model and on training compute: compression
# against cross-entropy, how much the held-out part matters, a trigram model, temperature, greedy
# decoding from every start, and GPT-3 trained the Chinchilla way. Read the chapter's sections
# "What is a language model?" and "Real models over time" first. The setup cell below rebuilds
# what the chapter built (the corpus, its split, the vocabulary and the bigram model with
# $k$ = `K_FIRST`); run it first. Write your answers in the cells marked `...`, run them, and check
# each one with `grader.check("ex1")` (and so on): it runs the public tests; hidden tests run when
# your notebook is graded. Every question uses only the setup cell and its own cell, so you can
# answer them in any order. Use the variable names asked for: the tests read them.

# %%
import math
import zlib

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

from aigc_book import get_device, seed_everything
from aigc_book.facts import load_models, training_flops_estimate
from aigc_book.models.bigram import BigramLM
from aigc_book.text.char_tokenizer import CharTokenizer
from aigc_book.text.corpora import python_docs_text, split_train_val

device = get_device("cpu")  # the CPU; its thread count follows the machine's load (preface)
seed_everything(0)
HELD_OUT_FRACTION = 0.1  # the chapter's settings
K_FIRST = 0.1
K_GRID = [0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0]  # the chapter's grid without k = 0

corpus = python_docs_text()
train_text, heldout_text = split_train_val(corpus, HELD_OUT_FRACTION)
vocab = CharTokenizer.train(corpus)
vocab_size = len(vocab)  # |V|
train_ids, heldout_ids = vocab.encode_tensor(train_text), vocab.encode_tensor(heldout_text)
model = BigramLM.from_text(train_text, k=K_FIRST, vocab=vocab)
P = model.probs()  # (|V|, |V|) float64, row a is p(. | a)


def greedy_decode(probs: torch.Tensor, start: str, n_chars: int) -> str:
    """The chapter's greedy decoding: append argmax_b p(b | previous) until n_chars are written."""
    out = [vocab.index(start)]
    for _ in range(n_chars - 1):
        out.append(int(probs[out[-1]].argmax()))
    return vocab.decode(out)


print(f"{len(corpus):,} characters, |V| = {vocab_size}, held-out {len(heldout_text):,} characters")
print(f"bigram model (k = {K_FIRST}): {model.cross_entropy(heldout_text):.4f} nats/char held out")

# %% [raw]
# # BEGIN QUESTION
# name: ex1
# points: 4

# %% [markdown]
# **Exercise 1. Bits and compression.** *(autograded)* Compress the held-out text with
# `zlib.compress(text.encode(), 9)` from the standard library and set `zlib_bits` to the
# compressed size in bits per character (a float; *hint:* `len(compressed) * 8 / len(text)`). Set
# `bigram_bits` to the bigram model's cross-entropy on the held-out text in **bits** per
# character, and `zlib_is_better` to `True` if zlib needs fewer bits per character than the
# bigram model, else `False`. A model's cross-entropy in bits is the size an ideal arithmetic
# coder driven by the model would reach; zlib is not driven by a probability model at all. (Ask
# yourself why zlib can still win: what does it see that a bigram model cannot?)

# %% [raw]
# # BEGIN SOLUTION

# %%
# BEGIN SOLUTION NO PROMPT
compressed = zlib.compress(heldout_text.encode(), 9)
# END SOLUTION
zlib_bits = len(compressed) * 8 / len(heldout_text)  # SOLUTION
bigram_bits = model.cross_entropy(heldout_text, bits=True)  # SOLUTION
zlib_is_better = zlib_bits < bigram_bits  # SOLUTION
print("zlib:", zlib_bits, "bits/char; bigram:", bigram_bits, "bits/char")

# %% [raw]
# # END SOLUTION

# %% [raw]
# # BEGIN TESTS

# %%
assert isinstance(zlib_bits, float) and isinstance(bigram_bits, float), (
    "zlib_bits and bigram_bits should be floats (bits per character)"
)
assert 0 < zlib_bits < 8 and 0 < bigram_bits < math.log2(vocab_size) + 1e-9, (
    "bits per character should be positive, at most 8 for zlib (8 bits per byte) and at most "
    "log2(|V|) for the bigram model"
)

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
_expected = len(zlib.compress(heldout_text.encode("utf-8"), 9)) * 8 / len(heldout_text)
assert abs(zlib_bits - _expected) < 1e-9, (
    f"zlib_bits should be {_expected:.4f}: compress the held-out text (heldout_text) at level 9 "
    "and divide its size in bits by the number of characters"
)

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
# the bigram model from its counts, by hand: p(b | a) = (n(a, b) + k) / (n(a) + k |V|)
_n = torch.bincount(train_ids[:-1] * vocab_size + train_ids[1:], minlength=vocab_size**2)
_c = _n.view(vocab_size, vocab_size).double() + K_FIRST
_p = _c / _c.sum(dim=1, keepdim=True)
_expected = -torch.log2(_p[heldout_ids[:-1], heldout_ids[1:]]).mean().item()
assert abs(bigram_bits - _expected) < 1e-9, (
    f"bigram_bits should be the bigram model's held-out cross-entropy in bits, {_expected:.4f} "
    "(nats divided by ln 2)"
)

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
_zlib = len(zlib.compress(heldout_text.encode("utf-8"), 9)) * 8 / len(heldout_text)
_bigram = model.cross_entropy(heldout_text) / math.log(2)
assert zlib_is_better == (_zlib < _bigram) and isinstance(zlib_is_better, bool), (
    "zlib_is_better should be True exactly when zlib's bits per character are fewer than the "
    "bigram model's"
)

# %% [raw]
# # END TESTS

# %% [raw]
# # END QUESTION

# %% [raw]
# # BEGIN QUESTION
# name: ex2
# points: 3

# %% [markdown]
# **Exercise 2. How much does the held-out part matter?** *(autograded)* Split the corpus into
# ten contiguous parts, part `i` being `corpus[lo:hi]` with `lo = i * len(corpus) // 10` and
# `hi = (i + 1) * len(corpus) // 10`. For each part, count the bigrams on the other nine
# (`corpus[:lo] + corpus[hi:]`, which creates one spurious pair at the seam; it changes the counts
# by one) with `BigramLM.from_text(..., k=K_FIRST, vocab=vocab)`, and score the held-out part.
# Set `fold_ce` to the list of the ten cross-entropies in nats per character, in the order of
# the parts, and plot them. Where in the range does this chapter's last-10% split (part 9) fall?
# Set `last_part_rank` to its rank among the ten: 0 if it has the lowest cross-entropy, 9 if the
# highest. (This takes a few seconds.)

# %% [raw]
# # BEGIN SOLUTION

# %%
# BEGIN PROMPT
fold_ce = ...
# END PROMPT
# BEGIN SOLUTION NO PROMPT
fold_ce = []
for i in range(10):
    lo, hi = i * len(corpus) // 10, (i + 1) * len(corpus) // 10
    fold_model = BigramLM.from_text(corpus[:lo] + corpus[hi:], k=K_FIRST, vocab=vocab)
    fold_ce.append(fold_model.cross_entropy(corpus[lo:hi]))
# END SOLUTION
last_part_rank = sorted(fold_ce).index(fold_ce[9])  # SOLUTION
# BEGIN SOLUTION NO PROMPT
fig, ax = plt.subplots(figsize=(6, 3))
ax.plot(range(10), fold_ce, "o-")
ax.plot(9, fold_ce[9], "s", color="C1", ms=10, label="the chapter's split (last 10%)")
ax.set(xlabel="held-out part", ylabel="cross-entropy (nats/char)", title="Ten held-out parts")
ax.legend()
plt.show()
# END SOLUTION
print("rank of the last part:", last_part_rank)

# %% [raw]
# # END SOLUTION

# %% [raw]
# # BEGIN TESTS

# %%
assert isinstance(fold_ce, list) and len(fold_ce) == 10, "fold_ce should be a list of 10 numbers"
assert all(isinstance(x, float) and 1 < x < math.log(vocab_size) for x in fold_ce), (
    "each cross-entropy should be a float in nats/char, between 1 and ln|V| (the uniform model)"
)

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
# two parts recomputed from the counts, by hand (part 5 has a seam, part 0 has none)
_V = vocab_size
for _i in (0, 5):
    _lo, _hi = _i * len(corpus) // 10, (_i + 1) * len(corpus) // 10
    _tr = vocab.encode_tensor(corpus[:_lo] + corpus[_hi:])
    _ho = vocab.encode_tensor(corpus[_lo:_hi])
    _c = torch.bincount(_tr[:-1] * _V + _tr[1:], minlength=_V * _V).view(_V, _V).double()
    _c += K_FIRST
    _expected = -(_c / _c.sum(1, keepdim=True)).log()[_ho[:-1], _ho[1:]].mean().item()
    assert abs(fold_ce[_i] - _expected) < 1e-9, (
        f"fold_ce[{_i}] should be {_expected:.4f}: count on corpus[:lo] + corpus[hi:] with "
        f"k = K_FIRST and score corpus[lo:hi] (lo, hi = {_lo}, {_hi})"
    )

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
assert abs(fold_ce[9] - model.cross_entropy(heldout_text)) < 1e-9, (
    "part 9 is the chapter's own split: fold_ce[9] should equal the chapter model's held-out "
    "cross-entropy"
)
assert last_part_rank == sum(x < fold_ce[9] for x in fold_ce), (
    "last_part_rank should count how many parts have a lower cross-entropy than part 9 "
    "(0 = the lowest of the ten)"
)

# %% [raw]
# # END TESTS

# %% [raw]
# # END QUESTION

# %% [raw]
# # BEGIN QUESTION
# name: ex3
# points: 4

# %% [markdown]
# **Exercise 3. A trigram model.** *(autograded)* Condition on the two previous characters: count
# $n(a,b,c)$ on the training ids with `torch.bincount` on `(a * V + b) * V + c` (with
# `V = vocab_size`), smooth with add-$k$,
# $p(c \mid a,b) = \bigl(n(a,b,c) + k\bigr) / \bigl(\sum_{c'} n(a,b,c') + k V\bigr)$, and score
# the held-out text: the mean of $-\log p(x_t \mid x_{t-2}, x_{t-1})$ over its positions
# $t = 2, 3, \dots$ (the first two characters are not scored). Set
#
# * `trigram_params` to its number of parameters (one probability per $(a, b, c)$, an int);
# * `unseen_contexts` to how many of its $V^2$ contexts $(a, b)$ were never seen in training (a
#   context is seen when the pair $a\,b$ is followed by some character in the training text);
# * `trigram_ce` to a dict from each $k$ in `K_GRID` to the held-out cross-entropy in nats/char;
# * `best_k_trigram` to the $k$ of `K_GRID` with the lowest held-out cross-entropy.
#
# *Hint:* the best $k$ is smaller than for the bigram. Why? (Think about how many counts a context
# has, and how many it would need.)

# %% [raw]
# # BEGIN SOLUTION

# %%
# BEGIN SOLUTION NO PROMPT
V = vocab_size
n3 = torch.bincount(
    (train_ids[:-2] * V + train_ids[1:-1]) * V + train_ids[2:], minlength=V**3
).view(V, V, V).double()  # float64 counts: exact, and the probabilities in float64
n_context = n3.sum(dim=-1)  # (V, V): how often each pair a b is followed by a character
a, b, c = heldout_ids[:-2], heldout_ids[1:-1], heldout_ids[2:]
# END SOLUTION
trigram_params = V**3  # SOLUTION
unseen_contexts = int((n_context == 0).sum())  # SOLUTION
# BEGIN PROMPT
trigram_ce = ...
# END PROMPT
# BEGIN SOLUTION NO PROMPT
trigram_ce = {}
for k in K_GRID:
    p_next = (n3[a, b, c] + k) / (n_context[a, b] + k * V)  # (T-2,) float64
    trigram_ce[k] = -p_next.log().mean().item()
# END SOLUTION
best_k_trigram = min(trigram_ce, key=trigram_ce.get)  # SOLUTION
print(trigram_params, "parameters;", unseen_contexts, "unseen contexts; best k", best_k_trigram)

# %% [raw]
# # END SOLUTION

# %% [raw]
# # BEGIN TESTS

# %%
assert trigram_params == vocab_size**3, "a trigram model has one probability per (a, b, c)"
assert isinstance(trigram_ce, dict) and sorted(trigram_ce) == sorted(K_GRID), (
    "trigram_ce should map every k of K_GRID to a cross-entropy"
)
assert best_k_trigram in K_GRID, "best_k_trigram should be one of the values in K_GRID"

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
_seen = {train_text[_j : _j + 2] for _j in range(len(train_text) - 2)}  # pairs followed by a char
assert unseen_contexts == vocab_size**2 - len(_seen), (
    f"of the {vocab_size**2} contexts (a, b), {vocab_size**2 - len(_seen)} are never followed by "
    f"a character in the training text; got {unseen_contexts}"
)

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
# counts of the held-out trigrams only, found in the sorted training trigrams (no V^3 table)
_V, _k = vocab_size, K_FIRST
_tr = torch.sort((train_ids[:-2] * _V + train_ids[1:-1]) * _V + train_ids[2:]).values
_ho = (heldout_ids[:-2] * _V + heldout_ids[1:-1]) * _V + heldout_ids[2:]
_n3 = torch.searchsorted(_tr, _ho, right=True) - torch.searchsorted(_tr, _ho)
_ctx = torch.sort(_tr // _V).values
_n2 = torch.searchsorted(_ctx, _ho // _V, right=True) - torch.searchsorted(_ctx, _ho // _V)
_expected = -((_n3.double() + _k) / (_n2.double() + _k * _V)).log().mean().item()
assert abs(trigram_ce[K_FIRST] - _expected) < 1e-9, (
    f"with k = {K_FIRST}, the trigram model's held-out cross-entropy should be {_expected:.4f} "
    f"nats/char, got {trigram_ce[K_FIRST]}"
)

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
assert trigram_ce[best_k_trigram] == min(trigram_ce.values()), (
    "best_k_trigram should be the k with the lowest held-out cross-entropy in trigram_ce"
)
_logp = {k: BigramLM(vocab, model.counts, k).log_probs() for k in K_GRID}
_bigram_ce = {k: -lp[heldout_ids[:-1], heldout_ids[1:]].mean().item() for k, lp in _logp.items()}
assert best_k_trigram < min(_bigram_ce, key=_bigram_ce.get), (
    "the trigram model's best k should be smaller than the bigram model's"
)

# %% [raw]
# # END TESTS

# %% [raw]
# # END QUESTION

# %% [raw]
# # BEGIN QUESTION
# name: ex4
# points: 4

# %% [markdown]
# **Exercise 4. Temperature, between greedy and uniform.** *(autograded)* Write a function
# `temper(probs, tau)` that returns the matrix $p(b \mid a)^{1/\tau}$ with every row renormalised
# to sum to 1 (a float64 tensor of the shape of `probs`). Set `tempered_ce` to a dict from each
# $\tau$ in `(0.5, 1, 2)` to the cross-entropy of the tempered model `temper(P, tau)` on the
# held-out text, in nats/char, and `ce_cold` and `ce_hot` to the same for $\tau = 0.01$ and
# $\tau = 100$. Draw a 300-character sample from each tempered model (start from `"T"`, draw
# each next character with `torch.multinomial` and a seeded `torch.Generator`) and read them.
# What happens to the samples and to the cross-entropy as $\tau \to 0$ and as $\tau \to \infty$?
# *Hint:* as $\tau \to 0$ each row puts all its mass on its largest entry, so sampling becomes
# greedy decoding; as $\tau \to \infty$ every row becomes uniform. Raising a probability to the
# power 100 underflows to 0; computing in log space, $\operatorname{softmax}(\log p / \tau)$, does
# not.

# %% [raw]
# # BEGIN SOLUTION

# %%
def temper(probs, tau):
    """p(b | a) ** (1 / tau), every row renormalised to sum to 1."""
    return torch.softmax(probs.log() / tau, dim=-1)  # SOLUTION


def tempered_cross_entropy(tau):
    """Held-out cross-entropy of temper(P, tau), in nats/char."""
    return -temper(P, tau).log()[heldout_ids[:-1], heldout_ids[1:]].mean().item()  # SOLUTION


tempered_ce = {tau: tempered_cross_entropy(tau) for tau in (0.5, 1, 2)}  # SOLUTION
ce_cold = tempered_cross_entropy(0.01)  # SOLUTION
ce_hot = tempered_cross_entropy(100)  # SOLUTION
# BEGIN SOLUTION
for tau in (0.01, 0.5, 1, 2, 100):
    rows, gen, out = temper(P, tau), torch.Generator().manual_seed(0), [vocab.index("T")]
    for _ in range(299):
        out.append(int(torch.multinomial(rows[out[-1]], 1, generator=gen)))
    print(f"tau = {tau}:", repr(vocab.decode(out)[:100]))
# END SOLUTION
print("tempered:", tempered_ce, "cold:", ce_cold, "hot:", ce_hot)

# %% [raw]
# # END SOLUTION

# %% [raw]
# # BEGIN TESTS

# %%
assert torch.allclose(temper(P, 1.0), P, atol=1e-12), "temper(P, 1) should be P itself"
assert torch.allclose(
    temper(P, 0.5).sum(dim=1), torch.ones(vocab_size, dtype=torch.float64), atol=1e-12
), "every row of temper(P, tau) should sum to 1"

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
_test_probs = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]], dtype=torch.float64)
for _tau in (0.5, 2.0, 3.0):
    _powered = _test_probs ** (1 / _tau)
    _expected = _powered / _powered.sum(dim=1, keepdim=True)
    assert torch.allclose(temper(_test_probs, _tau), _expected, atol=1e-12), (
        f"temper(probs, {_tau}) should raise each probability to the power 1/{_tau} and "
        "renormalise each row"
    )

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
assert sorted(tempered_ce) == [0.5, 1, 2], "tempered_ce should have the keys 0.5, 1 and 2"
for _tau, _ce in tempered_ce.items():
    # F.cross_entropy takes logits: log p / tau are the tempered model's logits
    _expected = F.cross_entropy(P.log()[heldout_ids[:-1]] / _tau, heldout_ids[1:]).item()
    assert abs(_ce - _expected) < 1e-9, (
        f"the held-out cross-entropy at tau = {_tau} should be {_expected:.4f} nats/char, got {_ce}"
    )

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
_expected = F.cross_entropy(P.log()[heldout_ids[:-1]] / 100, heldout_ids[1:]).item()
assert abs(ce_hot - _expected) < 1e-6 and abs(ce_hot - math.log(vocab_size)) < 0.1, (
    f"ce_hot (tau = 100) should be {_expected:.4f}, close to ln|V| = {math.log(vocab_size):.4f}: "
    "a very hot model is nearly uniform"
)
assert ce_cold > max(tempered_ce.values()), (
    "ce_cold (tau = 0.01) should be larger than the cross-entropies at tau = 0.5, 1, 2: a nearly "
    "greedy model gives tiny probabilities to every character but the likeliest"
)

# %% [raw]
# # END TESTS

# %% [raw]
# # END QUESTION

# %% [raw]
# # BEGIN QUESTION
# name: ex5
# points: 3

# %% [markdown]
# **Exercise 5. Greedy from every start.** *(autograded)* Run `greedy_decode(P, start, n)` (defined
# in the setup cell, as in the chapter) from each character of the vocabulary, long enough to
# reach its loop. How many different loops does greedy decoding end in? Set `greedy_loops` to the
# set of loops, each written as a `frozenset` of its characters, and `n_greedy_loops` to their
# number. *Hint:* each character has exactly one greedy successor, so the vocabulary is a graph
# with one arrow out of every node; after $\lvert\mathcal{V}\rvert$ steps every path is in its
# loop.

# %% [raw]
# # BEGIN SOLUTION

# %%
# BEGIN PROMPT
greedy_loops = ...
# END PROMPT
# BEGIN SOLUTION NO PROMPT
greedy_loops = set()
for start in vocab.itos:
    text = greedy_decode(P, start, 2 * vocab_size + 1)
    greedy_loops.add(frozenset(text[vocab_size:]))  # the last |V| + 1 characters go round the loop
# END SOLUTION
n_greedy_loops = len(greedy_loops)  # SOLUTION
print(n_greedy_loops, "loops:", greedy_loops)

# %% [raw]
# # END SOLUTION

# %% [raw]
# # BEGIN TESTS

# %%
assert isinstance(greedy_loops, set) and all(isinstance(x, frozenset) for x in greedy_loops), (
    "greedy_loops should be a set of frozensets of characters"
)
assert n_greedy_loops == len(greedy_loops), "n_greedy_loops should be the number of loops"

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
_next = P.argmax(dim=1).tolist()  # the greedy successor of every character id
_on_loop = set()
for _x in range(vocab_size):
    _y = _x
    for _ in range(vocab_size):  # walk until surely inside the loop
        _y = _next[_y]
    _on_loop.add(_y)
_loops = set()
for _x in _on_loop:  # collect each loop from one of its nodes
    _cycle, _y = {_x}, _next[_x]
    while _y != _x:
        _cycle.add(_y)
        _y = _next[_y]
    _loops.add(frozenset(vocab.itos[i] for i in _cycle))
assert n_greedy_loops == len(_loops), (
    f"greedy decoding ends in {len(_loops)} different loops, not {n_greedy_loops}"
)

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
_next = P.argmax(dim=1).tolist()
_loops = set()
for _x in range(vocab_size):
    _path = [_x]
    while _next[_path[-1]] not in _path:  # follow the arrows until a node repeats
        _path.append(_next[_path[-1]])
    _first = _path.index(_next[_path[-1]])
    _loops.add(frozenset(vocab.itos[i] for i in _path[_first:]))
assert greedy_loops == _loops, (
    "greedy_loops should hold each loop as the frozenset of the characters it repeats"
)

# %% [raw]
# # END TESTS

# %% [raw]
# # END QUESTION

# %% [raw]
# # BEGIN QUESTION
# name: ex6
# points: 3

# %% [markdown]
# **Exercise 6. GPT-3, trained the Chinchilla way.** *(autograded)* Chinchilla's Table 3 suggests
# about 3.7T training tokens for a 175B-parameter model, roughly twenty per parameter (Hoffmann et
# al. 2022). Use `training_flops_estimate` to set `chinchilla_gpt3_flops` to the training compute
# of such a model, and `times_gpt3` to how many times GPT-3's published compute (the table's
# `training_flops` for GPT-3, from `load_models()`) it is. Which model in the table comes closest
# in compute? Compare, as the chapter's Figure 1.4 does, with each model's published compute where
# the table has one and its $6ND$ estimate otherwise (for DeepSeek-V3 with its 37B *active*
# parameters; models without a token count have no compute), take the one whose compute is
# nearest on a log scale, and set `closest_model` to its name as the table spells it. *Hint:* the
# ratio is close to $3.7\text{T} / 300\text{B}$, since $N$ is unchanged.

# %% [raw]
# # BEGIN SOLUTION

# %%
# BEGIN SOLUTION NO PROMPT
models = load_models()
by_name = {r.model: r for r in models}
active_params = {"DeepSeek-V3": 37e9}  # the chapter's ACTIVE_PARAMS
# END SOLUTION
chinchilla_gpt3_flops = training_flops_estimate(175e9, 3.7e12)  # SOLUTION
times_gpt3 = chinchilla_gpt3_flops / by_name["GPT-3"].training_flops  # SOLUTION
# BEGIN SOLUTION NO PROMPT
compute = {
    r.model: r.training_flops
    or training_flops_estimate(active_params.get(r.model, r.params), r.training_tokens)
    for r in models
    if r.training_tokens is not None
}
# END SOLUTION
# BEGIN SOLUTION NO PROMPT
log_gap = {m: abs(math.log(c / chinchilla_gpt3_flops)) for m, c in compute.items()}
# END SOLUTION
closest_model = min(log_gap, key=log_gap.get)  # SOLUTION
print(chinchilla_gpt3_flops, "FLOPs,", times_gpt3, "x GPT-3; closest:", closest_model)

# %% [raw]
# # END SOLUTION

# %% [raw]
# # BEGIN TESTS

# %%
assert isinstance(chinchilla_gpt3_flops, float), "chinchilla_gpt3_flops should be a float (FLOPs)"
assert math.isclose(chinchilla_gpt3_flops, 6 * 175e9 * 3.7e12, rel_tol=1e-9), (
    "chinchilla_gpt3_flops should be 6 N D with N = 175e9 parameters and D = 3.7e12 tokens"
)

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
_gpt3 = [r for r in load_models() if r.model == "GPT-3"][0]
assert math.isclose(times_gpt3, 6 * 175e9 * 3.7e12 / _gpt3.training_flops, rel_tol=1e-9), (
    f"times_gpt3 should divide by GPT-3's published compute, {_gpt3.training_flops:.3g} FLOPs"
)
assert abs(times_gpt3 / (3.7e12 / 300e9) - 1) < 0.01, "the ratio should be close to 3.7T / 300B"

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
_target, _best, _best_gap = 6 * 175e9 * 3.7e12, None, float("inf")
for _r in load_models():
    if _r.training_tokens is None:
        continue
    _n = 37e9 if _r.model == "DeepSeek-V3" else _r.params  # active parameters for the MoE model
    _c = _r.training_flops if _r.training_flops is not None else 6 * _n * _r.training_tokens
    if abs(math.log10(_c / _target)) < _best_gap:
        _best, _best_gap = _r.model, abs(math.log10(_c / _target))
assert closest_model == _best, (
    "closest_model is not the model nearest in compute; did you use published compute where "
    "the table has it, and DeepSeek-V3's 37B active parameters for its 6ND estimate?"
)

# %% [raw]
# # END TESTS

# %% [raw]
# # END QUESTION
