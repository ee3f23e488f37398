# %% [markdown]
# # 3. Language modelling, and every pretraining objective on one backbone
#
# Chapter 1 counted a bigram model; chapter 2 built the Transformer. This chapter trains
# Transformers, and asks seven questions:
#
# 1. What exactly does a language model's loss measure, and what is the best loss possible? We
#    answer with a generated language whose true probabilities we know, so the **floor** no model
#    can beat is a number we compute, not guess.
# 2. What is a token? Characters, and {term}`byte-pair encoding <byte-pair encoding (BPE)>` (BPE): by hand, written from scratch, and
#    compared with the Hugging Face library's BPE.
# 3. How far does counting get? An n-gram baseline.
# 4. How does a model learn from its loss? {term}`Gradient descent <gradient descent>`, {term}`momentum`, {term}`Adam` and {term}`AdamW <decoupled weight decay (AdamW)>`, each written
#    out and checked against `torch.optim`, and the learning-rate schedule the book uses.
# 5. How close does a small GPT, trained with the causal (next-token) objective, get to the floor,
#    and what exactly is the gap that remains?
# 6. What do the other pretraining objectives — BERT's {term}`masked LM <masked language modelling (MLM)>` and {term}`next-sentence prediction <next-sentence prediction (NSP)>`,
#    XLNet's {term}`permutation LM <permutation language modelling (PLM)>`, T5's {term}`span corruption` — ask of a model, and what can each model do
#    afterwards? All are trained here, on the same data.
# 7. Which common claims about how ChatGPT was pretrained are wrong?
#
# All implementations live in the package: `aigc_book.text.languages` (the generated language),
# `aigc_book.text.bpe` and `aigc_book.text.char_tokenizer`, `aigc_book.models.ngram`,
# `aigc_book.training.optim` (the update rules written out), `aigc_book.training.objectives` (one
# batch function and one loss per objective), `aigc_book.training.trainer` (the training loop) and
# `aigc_book.training.evaluation` (the held-out loss).

# %%
import itertools
import math
import re
import time
from collections import Counter
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from IPython.display import Markdown, display

from aigc_book import ChapterSettings, get_device, seed_everything, use_book_style
from aigc_book.models.gpt import GPT
from aigc_book.models.ngram import NGramLM
from aigc_book.models.transformer import Transformer, TransformerConfig
from aigc_book.text.bpe import GPT2_SPLIT_PATTERN, ByteBPE, train_hf_bpe
from aigc_book.text.char_tokenizer import CharTokenizer
from aigc_book.text.corpora import python_docs_text, split_train_val
from aigc_book.text.languages import BracketLanguage
from aigc_book.training.evaluation import lm_loss
from aigc_book.training.objectives import (
    IGNORE,
    EncoderForPretraining,
    SpecialTokens,
    causal_lm_batch,
    causal_lm_loss,
    mlm_loss,
    mlm_nsp_loss,
    nsp_batch,
    plm_batch,
    plm_loss,
    prefix_lm_mask,
    random_spans_noise_mask,
    sequence_lm_batch,
    span_corrupt,
    span_corruption_batch,
    span_corruption_loss,
    two_stream_logits,
    two_stream_mask,
)
from aigc_book.training.optim import AdamState, adam_step, adamw_step, gd_step, momentum_step
from aigc_book.training.trainer import TrainConfig, Trainer, configure_optimizer, lr_at

use_book_style()
device = get_device()
seed_everything(0)
chapter_start = time.perf_counter()
print(f"PyTorch {torch.__version__}, device: {device}, threads: {torch.get_num_threads()}")

# %% [markdown]
# ## Settings
#
# *How large are the experiments, and where do you change them?*
#
# The next cell sets every size, step count and batch size of the chapter's experiments; each is
# explained where it is used. The CPU values are the ones behind the outputs stored in the notebook.
# On a CUDA GPU the same code trains larger models for longer (in bf16 autocast), so your numbers
# will differ from the stored ones; the sentences that quote results are rendered from the numbers
# by the cells, so they stay true. The language itself (the sequence length `T` and the validation
# set) is the same on every device, so the floor and the exactly checked outputs do not change.
#
# On a CPU, PyTorch splits each matrix product over all cores and waits for the slowest; when other
# programs keep a core busy, `get_device()` has already arranged for the thread count to follow the
# load (chapter 0, section "CPU or GPU").

# %%
T = 48  # tokens after BOS in every sequence of the language (fixed: the floor depends on it)
N_VAL = 1_000  # validation sequences (fixed)


@dataclass(frozen=True)
class Settings(ChapterSettings):
    n_train: int = 20_000  # training sequences of the language
    n_layer: int = 2  # every Transformer in the chapter: layers, heads, width
    n_head: int = 4
    n_embd: int = 64
    batch: int = 32  # sequences per optimizer step, for every objective
    lr: float = 3e-3  # peak learning rate, for every objective
    gpt_iters: int = (
        600  # causal LM (GPT): optimizer steps, warm-up steps, steps between evaluations
    )
    gpt_warmup: int = 50
    eval_interval: int = 50
    enc_iters: int = 700  # each masked-LM encoder (MLM + NSP, MLM only)
    enc_warmup: int = 40
    plm_iters: int = 400  # permutation LM (XLNet)
    t5_iters: int = 400  # span corruption (T5)
    obj_warmup: int = 50  # warm-up of the permutation-LM and span-corruption runs
    n_samples: int = 200  # sequences the GPT generates before and after training

    cuda = dict(  # what a CUDA GPU changes (Settings.for_device)
        n_train=100_000,
        n_layer=4,
        n_embd=128,
        batch=128,
        lr=1e-3,
        gpt_iters=3000,
        gpt_warmup=200,
        eval_interval=250,
        enc_iters=3000,
        enc_warmup=200,
        plm_iters=3000,
        t5_iters=3000,
        obj_warmup=200,
    )


settings = Settings.for_device(device)
print(f"settings for {device.type}:")
print(settings.table(number_width=10))

# %% [markdown]
# ## A language with a known floor
#
# *What is the lowest loss a language model can reach on a given kind of text?*
#
# On real text nobody knows. So we first make a language whose answer we know. Its sentences are
# nested brackets of four types, `( [ { <`, with **words** in between, and two rules that reach
# across any distance:
#
# * a closing bracket must match the most recent unclosed opener — **bracket matching**;
# * a word inside a bracket must belong to that bracket's word group: `(` takes `a b c d`,
#   `[` takes `e f g h`, `{` takes `i j k l`, `<` takes `m n o p`; outside any bracket the words are
#   `w x y z` — **agreement**.
#
# Each step is random: at depth $d$ (the number of unclosed brackets) the next token opens a
# bracket, closes one, or is a word, with fixed probabilities; a new bracket's type is uniform; a
# word is drawn with weights 4 : 3 : 2 : 1 from the allowed group. Every sequence starts with `^`
# (beginning of sequence, BOS) and has `T` tokens after it (`T` is set in the cell above).

# %%
lang = BracketLanguage()
train_seqs = lang.sample(settings.n_train, T, seed=1)  # (n_train, T + 1)
val_seqs = lang.sample(N_VAL, T, seed=2)  # (N_VAL, T + 1)
print("vocabulary:", "".join(lang.itos), f"({lang.vocab_size} symbols)")
for row in train_seqs[:4]:
    print(lang.decode(row))
assert all(lang.is_well_formed(row) for row in train_seqs[:1000])

# %% [markdown]
# Look at the first sample: after a nested group closes, the next closer and the next words are
# decided by a bracket opened many tokens earlier. A model that remembers only the last few tokens
# cannot know it.
#
# ### The chain rule, checked
#
# A language model factorises the probability of a sequence with the chain rule,
#
# $$p(x_1,\dots,x_T) = \prod_{t=1}^{T} p(x_t \mid x_{<t}).$$
#
# Our language gives every conditional exactly (`next_token_probs`), and independently the
# probability of a whole sequence (`log_prob`, a parser). The two must agree, and the probabilities
# of all sequences of a given length must sum to one.

# %%
# NBVAL_CHECK_OUTPUT
x = lang.encode("^x(ab[e]c")
conditionals = [lang.next_token_probs(x[:t])[x[t]] for t in range(1, len(x))]
print("p(x_t | x_<t):", " ".join(f"{p:.4f}" for p in conditionals))
print(f"product = {math.prod(conditionals):.6e}, exp(log_prob) = {math.exp(lang.log_prob(x)):.6e}")
assert math.isclose(math.log(math.prod(conditionals)), lang.log_prob(x), rel_tol=1e-12)

total = sum(
    math.exp(lang.log_prob((0,) + tail))
    for tail in itertools.product(range(1, lang.vocab_size), repeat=3)
)
print(f"sum of p over all {(lang.vocab_size - 1) ** 3:,} sequences of length 3: {total:.12f}")
assert math.isclose(total, 1.0, abs_tol=1e-12)

# %% [markdown]
# ### Cross-entropy, perplexity, and the floor
#
# A model $q$ is scored by its **{term}`cross-entropy`** on text drawn from the true process $p$, in nats
# per token:
#
# $$H(p, q) = -\frac{1}{T}\,\mathbb{E}_{x\sim p}\Big[\sum_{t=1}^{T}\log q(x_t\mid x_{<t})\Big]
#           = \underbrace{\frac{1}{T}\sum_{t=1}^{T}\mathbb{E}\,H\big(p(\cdot\mid x_{<t})\big)}_{\text{entropy: the floor}}
#           + \underbrace{\frac{1}{T}\sum_{t=1}^{T}\mathbb{E}\,\mathrm{KL}\big(p(\cdot\mid x_{<t})\,\|\,q(\cdot\mid x_{<t})\big)}_{\ge 0}.$$
#
# The split holds prefix by prefix: for any two distributions,
# $-\sum_v p_v \log q_v = -\sum_v p_v \log p_v + \sum_v p_v \log (p_v / q_v)$, where the last sum
# is the relative entropy ({term}`KL divergence`; Cover and Thomas 2006, §2.3). The first term does not
# depend on the model; the second is never negative and zero only when $q = p$ (the information
# inequality, their Theorem 2.6.3).
# So the loss of a perfect model is the **{term}`entropy <entropy (rate)>`** of the language, and the gap above it is the
# model's KL divergence from the truth. **{term}`Perplexity <perplexity>`** is $e^{H}$: the number of equally likely
# choices that would be as surprising.
#
# By the chain rule for entropy, the floor is also the entropy of a whole sequence divided by its
# length, $H(X_1,\dots,X_T)/T$. In our language the conditional entropy depends only on the depth
# $d$, and the depth is a Markov chain that starts at 0, so the floor is an exact finite sum
# (`entropy_floor`).

# %%
# NBVAL_CHECK_OUTPUT
floor = lang.entropy_floor(T)
print("H(next | depth d), nats:", np.round(lang.depth_entropies(), 4))
print(
    f"floor for T={T}: {floor:.4f} nats/token = {floor / math.log(2):.4f} bits/token, "
    f"perplexity {math.exp(floor):.3f}; stationary rate {lang.entropy_rate():.4f}"
)
print(
    f"for comparison, a uniform guess over the {lang.vocab_size - 1} symbols that can follow BOS: "
    f"{math.log(lang.vocab_size - 1):.4f} nats/token"
)

# %% [markdown]
# `entropy_floor` is a formula about depths. We check it two ways that know nothing of depths.
#
# **Exact enumeration.** For a short length $L$ we list every sequence that has nonzero
# probability, take each one's probability from the parser, and sum $-p \log p$. If the listing
# missed a possible sequence, the probabilities would not sum to one.

# %%
# NBVAL_CHECK_OUTPUT
L = 5
sequences = []


def extend(prefix: list[int]) -> None:
    """Append to `sequences` every continuation of `prefix` to length L + 1 that is possible."""
    if len(prefix) == L + 1:
        sequences.append(prefix)
        return
    for tok in np.flatnonzero(lang.next_token_probs(prefix)):
        extend(prefix + [int(tok)])


extend([lang.bos_id])
log_p = np.array([lang.log_prob(s) for s in sequences])  # the parser's log p(x_1 .. x_L)
p_seq = np.exp(log_p)
enumerated = -(p_seq * log_p).sum() / L
print(
    f"{len(sequences):,} possible sequences of length {L} (of {(lang.vocab_size - 1) ** L:,} "
    f"strings); sum of p = {p_seq.sum():.12f}"
)
print(
    f"H(X_1..X_{L}) / {L}: enumeration {enumerated:.12f}, entropy_floor({L}) "
    f"{lang.entropy_floor(L):.12f}"
)
assert math.isclose(p_seq.sum(), 1.0, abs_tol=1e-12)
assert math.isclose(enumerated, lang.entropy_floor(L), abs_tol=1e-12)

# %% [markdown]
# **{term}`Monte-Carlo <Monte-Carlo estimate>`.** For the full length $T$ there are far too many sequences to list. But the floor
# is an expectation, $\mathbb{E}_{x \sim p}[-\log p(x)]/T$, so the mean of $-\log p(x)/T$ over
# sequences sampled from the language estimates it, with a {term}`standard error` of $s/\sqrt{n}$ ($s$ the
# sample standard deviation over $n$ sequences). Our validation sequences are such a sample.

# %%
# NBVAL_CHECK_OUTPUT
true_nll = np.array([-lang.log_prob(row) / T for row in val_seqs])  # -log p(x) / T of each sequence
mc, mc_se = true_nll.mean(), true_nll.std(ddof=1) / math.sqrt(len(true_nll))
print(
    f"Monte-Carlo over the {len(val_seqs):,} validation sequences: {mc:.4f} ± {mc_se:.4f} "
    "nats/token (± one standard error)"
)
print(
    f"exact floor {floor:.4f}: the estimate is {(mc - floor) / mc_se:+.1f} standard errors from it"
)
assert abs(mc - floor) < 4 * mc_se
display(
    Markdown(
        f"The floor is {floor:.2f} nats per token, a perplexity of {math.exp(floor):.2f}: "
        f"even a perfect model is choosing among about {math.exp(floor):.0f} equally likely tokens "
        "at each step, because the language really is random. A model at the floor has learned "
        "*everything* there is to learn. Every loss below is read against this line."
    )
)

# %% [markdown]
# ## Tokenization compared
#
# *What does a model actually read?*
#
# A model reads integer ids. The generated language has one symbol per id; real text has to be cut
# into **tokens** first. Three options, on the English text every Python ships with
# (`pydoc_data.topics`, the pages behind `help()`), trained on the first 90% and measured on the
# last 10%:
#
# * **characters**: one id per Unicode character; tiny vocabulary, long sequences;
# * **byte-level BPE** (Sennrich et al. 2016; on bytes as in GPT-2, Radford et al. 2019), our
#   implementation: start from the 256 byte values, repeatedly merge the most frequent adjacent
#   pair into a new token; never an unknown token;
# * the same algorithm from the Hugging Face `tokenizers` library, with the same pre-tokenization.
#
# ### BPE merges by hand
#
# Before training on a whole manual, we run BPE's loop by hand on one short string. First the text
# is cut into **{term}`pre-tokens <pre-token>`** — words with their leading space — so that no {term}`merge <merge (BPE)>` crosses a word
# boundary; each pre-token starts as its bytes. Then, repeatedly: count every adjacent pair of
# tokens inside the pre-tokens, pick the most frequent pair (ties go to the pair with the smaller
# ids, so the result is deterministic), and replace it everywhere by one new token. BPE stops at the
# target vocabulary size, or when no pair occurs twice. Below, `|` separates tokens and `·` shows a
# leading space.

# %%
# NBVAL_CHECK_OUTPUT
bpe_text = "low lower lowest newest widest"
words = [
    list(w.encode("utf-8")) for w in re.findall(GPT2_SPLIT_PATTERN, bpe_text)
]  # pre-tokens, as byte ids
pieces = {i: bytes([i]) for i in range(256)}  # token id -> the bytes it stands for


def show(ids) -> str:
    return "|".join(pieces[i].decode("utf-8").replace(" ", "·") for i in ids)


def merge_pair(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    out, i = [], 0
    while i < len(ids):
        if tuple(ids[i : i + 2]) == pair:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


print("start:  ", "  ".join(show(w) for w in words))
hand_merges = []
while True:
    counts = Counter(pair for w in words for pair in zip(w, w[1:]))
    top = max(counts.values())
    if top < 2:
        print(f"no pair occurs twice any more: stop after {len(hand_merges)} merges")
        break
    pair = min(p for p, c in counts.items() if c == top)  # the most frequent; ties -> smaller ids
    new_id = 256 + len(hand_merges)
    hand_merges.append(pair)
    pieces[new_id] = pieces[pair[0]] + pieces[pair[1]]
    leaders = ", ".join(
        f"{show(p)} x{c}" for p, c in sorted(counts.items(), key=lambda pc: (-pc[1], pc[0]))[:4]
    )
    words = [merge_pair(w, pair, new_id) for w in words]
    print(f"merge {len(hand_merges)}: most frequent pairs {leaders}")
    print(
        f"         -> new token {show([new_id])!r} (id {new_id}):  "
        + "  ".join(show(w) for w in words)
    )

learned = ByteBPE.train(bpe_text, vocab_size=256 + len(hand_merges) + 10).merges
print("ByteBPE.train learns:", [show([a]) + "+" + show([b]) for a, b in learned])
assert learned == hand_merges

# %% [markdown]
# The package's `ByteBPE` learns exactly these merges, in this order, from the same string (it was
# allowed more, and stopped for the same reason). Each merge adds one token to the vocabulary;
# encoding new text replays the merges in the order they were learned. Now the same loop, run on
# the Python manual:

# %%
docs = python_docs_text()
docs_train, docs_val = split_train_val(docs, 0.1)
assert abs(len(docs_val) / len(docs) - 0.1) < 1e-3  # the prose's "first 90% ... last 10%"
char_tok = CharTokenizer.train(docs)

t0 = time.perf_counter()
our_bpe = ByteBPE.train(docs_train, vocab_size=1024)
our_train_s = time.perf_counter() - t0
t0 = time.perf_counter()
hf_bpe = train_hf_bpe(docs_train, vocab_size=1024)
hf_train_s = time.perf_counter() - t0

rows = []
for name, encode, decode, vocab, train_s in [
    ("characters", char_tok.encode, char_tok.decode, char_tok.vocab_size, 0.0),
    ("our byte BPE", our_bpe.encode, our_bpe.decode, our_bpe.vocab_size, our_train_s),
    (
        "HF tokenizers BPE",
        lambda s: hf_bpe.encode(s).ids,
        hf_bpe.decode,
        hf_bpe.get_vocab_size(),
        hf_train_s,
    ),
]:
    t0 = time.perf_counter()
    ids = encode(docs_val)
    enc_ms = 1000 * (time.perf_counter() - t0)
    rows.append(
        (name, vocab, len(ids), len(docs_val) / len(ids), decode(ids) == docs_val, train_s, enc_ms)
    )
print(
    f"{'tokenizer':<19}{'vocab':>6}{'tokens':>9}{'chars/token':>13}{'round trip':>12}"
    f"{'train':>9}{'encode':>10}"
)
for name, vocab, n, ratio, ok, train_s, enc_ms in rows:
    print(f"{name:<19}{vocab:>6}{n:>9,}{ratio:>13.3f}{str(ok):>12}{train_s:>8.2f}s{enc_ms:>8.0f}ms")
assert all(r[4] for r in rows)  # every tokenizer round-trips the held-out text exactly
assert abs(rows[1][2] - rows[2][2]) / rows[2][2] < 0.01  # ours and the library's agree within 1%

sentence = "The tokenizer's merges were learned from Python's documentation."
print(our_bpe.token_strings(our_bpe.encode(sentence)))
print([hf_bpe.decode([i]) for i in hf_bpe.encode(sentence).ids])
sentence_words = [w for w in re.findall(GPT2_SPLIT_PATTERN, sentence) if w.strip().isalpha()]
whole = [w for w in sentence_words if len(our_bpe.encode(w)) == 1]
split = {
    w: our_bpe.token_strings(our_bpe.encode(w))
    for w in sentence_words
    if len(our_bpe.encode(w)) > 2
}
display(
    Markdown(
        f"Our BPE cuts the held-out text into {rows[1][2]:,} tokens, {rows[0][2] / rows[1][2]:.1f} "
        f"times fewer than its {rows[0][2]:,} characters; the library's BPE gives {rows[2][2]:,} "
        "(same algorithm, same pre-tokenization; the library is written in Rust, "
        "and its speed matters at the scale of real corpora). In the sentence above, "
        f"some words are single tokens ({', '.join(repr(w) for w in whole)}): the manual used them "
        "often enough for merges to build them whole. Others are split into pieces ("
        + "; ".join(f"{w!r} into {len(p)}" for w, p in split.items())
        + ")."
    )
)

# %% [markdown]
# GPT-2 uses the same design with a vocabulary of 50,257 tokens, for a model trained on 40 GB of
# web text (Radford et al. 2019). From here on, the generated language needs no tokenizer:
# each symbol is a token.
#
# ## A baseline that counts
#
# *How far does remembering the last few tokens get?*
#
# An **{term}`n-gram model`** predicts $x_t$ from the previous $n-1$ tokens only, estimated by counting,
# with interpolated Witten–Bell smoothing (`aigc_book.models.ngram`). We fit orders 1 to 5 on the
# training sequences and score the validation sequences.

# %%
t0 = time.perf_counter()
ngrams = {n: NGramLM(n, lang.vocab_size).fit(train_seqs) for n in range(1, 6)}
ngram_ce = {n: model.cross_entropy(val_seqs) for n, model in ngrams.items()}
best_n = min(ngram_ce, key=ngram_ce.get)
ngram = ngrams[best_n]
train_positions = train_seqs[:, 1:].numel()
print(
    f"{'order':<7}{'nats/token':>11}{'above floor':>13}{'contexts seen':>15}"
    f"{'uses per context':>18}"
)
for n, ce in ngram_ce.items():
    n_contexts = len(ngrams[n].tables[-1]["ctx_keys"])  # distinct (n-1)-token contexts in training
    print(
        f"{n}-gram {ce:>11.4f}{ce - floor:>+13.4f}{n_contexts:>15,}"
        f"{train_positions / n_contexts:>18,.0f}"
    )
print(f"fitted in {time.perf_counter() - t0:.1f} s; best order: {best_n}")
assert ngram_ce[best_n] > floor + 0.15
longer = [n for n in ngram_ce if n > best_n]
summary = (
    f"The best order is {best_n}, {ngram_ce[best_n] - floor:.2f} nats above the floor: "
    f"no window of {best_n - 1} tokens can see the bracket that a closer must match when "
    "it was opened further back."
)
if longer:
    summary += (
        f" Longer windows ({', '.join(f'{n}-gram' for n in longer)}) are worse, not better: "
        "each of their contexts is seen fewer times in training (last column), "
        "so their counts are less reliable."
    )
display(Markdown(summary))

# %% [markdown]
# ## How a model learns: from gradient descent to AdamW
#
# *What does one training step do to the weights, and why does the book train with AdamW, {term}`warm-up <warm-up and cosine schedule>`
# and cosine decay?*
#
# Training lowers a loss $L(\theta)$ by changing the weights $\theta$. Backpropagation
# (`loss.backward()`) gives the gradient $g = \nabla_\theta L$, the direction in which the loss
# rises fastest; every rule below steps against it. Each rule is one small function in
# `aigc_book.training.optim`, and each is checked here, step for step, against `torch.optim`.
#
# ### Gradient descent and momentum
#
# **Gradient descent** moves every weight against its gradient, scaled by the **{term}`learning rate`**
# $\eta$:
#
# $$\theta_t = \theta_{t-1} - \eta\, g_t .$$
#
# **Momentum** (Polyak 1964) keeps a velocity, a running sum of past gradients with weights
# $1, \mu, \mu^2, \dots$:
#
# $$v_t = \mu\, v_{t-1} + g_t, \qquad \theta_t = \theta_{t-1} - \eta\, v_t, \qquad v_0 = 0 .$$
#
# Where successive gradients agree, the steps build up (towards $1/(1-\mu)$ times a plain step);
# where they flip sign, they cancel. (This is PyTorch's form; others put $\eta$ inside $v$, which is
# the same while $\eta$ is constant.)
#
# ### Adam
#
# **Adam** (Kingma and Ba 2015) gives every weight its own step size. It keeps running means of the
# gradient and of its square, corrects both for having started at zero (**{term}`bias correction`**), and
# divides one by the square root of the other:
#
# $$m_t = \beta_1 m_{t-1} + (1-\beta_1)\, g_t, \qquad v_t = \beta_2 v_{t-1} + (1-\beta_2)\, g_t^2,$$
# $$\hat m_t = \frac{m_t}{1-\beta_1^{\,t}}, \qquad \hat v_t = \frac{v_t}{1-\beta_2^{\,t}}, \qquad
#   \theta_t = \theta_{t-1} - \eta\, \frac{\hat m_t}{\sqrt{\hat v_t} + \epsilon}.$$
#
# The ratio $\hat m / \sqrt{\hat v}$ does not change when a weight's gradients are all multiplied by
# the same factor, so a weight whose gradients are a thousand times larger takes steps of the same
# size; this is one reason a single learning rate can serve embeddings, attention and output layers.
#
# The three rules, written out, against `torch.optim` on the same made-up gradients (float64, five
# steps, gradients whose scale changes by a factor of 10 from step to step); then the two claims
# just made: Adam takes the same steps when every gradient is a thousand times larger, and under a
# constant gradient the velocity grows to $g/(1-\mu)$.


# %%
def torch_path(opt_class, theta_0, grads, **kwargs) -> list[torch.Tensor]:
    """The weights after each step of a torch.optim optimizer that is fed the given gradients."""
    p = torch.nn.Parameter(theta_0.clone())
    opt = opt_class([p], **kwargs)
    path = []
    for g in grads:
        p.grad = g.clone()
        opt.step()
        path.append(p.detach().clone())
    return path


gen = torch.Generator().manual_seed(0)
theta_0 = torch.randn(5, generator=gen, dtype=torch.float64)
grads = [torch.randn(5, generator=gen, dtype=torch.float64) * 10.0 ** (t % 3) for t in range(5)]

ours = {"gradient descent": [], "momentum 0.9": [], "Adam": []}
theta_gd, theta_mom, velocity = theta_0, theta_0, None
theta_adam, adam_state = theta_0, AdamState.zeros_like(theta_0)
for g in grads:
    theta_gd = gd_step(theta_gd, g, lr=0.1)
    theta_mom, velocity = momentum_step(theta_mom, g, velocity, lr=0.1, momentum=0.9)
    theta_adam, adam_state = adam_step(theta_adam, g, adam_state, lr=0.1, betas=(0.9, 0.99))
    ours["gradient descent"].append(theta_gd)
    ours["momentum 0.9"].append(theta_mom)
    ours["Adam"].append(theta_adam)
reference = {
    "gradient descent": torch_path(torch.optim.SGD, theta_0, grads, lr=0.1),
    "momentum 0.9": torch_path(torch.optim.SGD, theta_0, grads, lr=0.1, momentum=0.9),
    "Adam": torch_path(torch.optim.Adam, theta_0, grads, lr=0.1, betas=(0.9, 0.99)),
}
for name in ours:
    diff = max((a - b).abs().max().item() for a, b in zip(ours[name], reference[name]))
    print(f"{name:<17} largest difference from torch.optim over {len(grads)} steps: {diff:.1e}")
    assert diff < 1e-12

theta_big, state_big = theta_0, AdamState.zeros_like(theta_0)
for g in grads:  # Adam on the same gradients times 1000 takes the same steps (up to epsilon)
    theta_big, state_big = adam_step(theta_big, 1000 * g, state_big, lr=0.1, betas=(0.9, 0.99))
print(
    "Adam with every gradient x1000: largest difference in the weights "
    f"{(theta_big - theta_adam).abs().max():.1e}"
)
assert torch.allclose(theta_big, theta_adam, rtol=0, atol=1e-6)
velocity = None
for _ in range(300):  # a constant gradient: the velocity builds up to g / (1 - mu)
    _, velocity = momentum_step(theta_0, grads[0], velocity, lr=0.1, momentum=0.9)
assert torch.allclose(velocity, grads[0] / (1 - 0.9))

# %% [markdown]
# How do they behave? A loss shaped like a long, narrow valley,
# $L(\theta) = \tfrac12(\theta_1^2 + 25\,\theta_2^2)$, is the classic test: the curvature is 25
# times larger across the valley than along it. For gradient descent on a quadratic, any
# $\eta > 2/\text{curvature}$ diverges, so the steep direction caps $\eta$ below $2/25$, and along
# the flat direction each step then removes only a fraction $\eta$ of the distance.

# %%
curvature = torch.tensor([1.0, 25.0], dtype=torch.float64)
valley_start = torch.tensor([-4.0, 1.0], dtype=torch.float64)


def valley_loss(theta):
    return 0.5 * (curvature * theta**2).sum().item()


def valley_path(rule, steps: int = 150) -> torch.Tensor:
    """Positions (steps + 1, 2) of `rule(theta, grad, state) -> (theta, state)` on the valley."""
    theta, state, path = valley_start, None, [valley_start]
    for _ in range(steps):
        theta, state = rule(
            theta, curvature * theta, state
        )  # the gradient of the valley is curvature * theta
        path.append(theta)
    return torch.stack(path)


eta = 0.07  # just under the limit 2/25 = 0.08
paths = {
    f"gradient descent, lr {eta}": valley_path(lambda th, g, s: (gd_step(th, g, lr=eta), None)),
    f"momentum 0.5, lr {eta}": valley_path(
        lambda th, g, s: momentum_step(th, g, s, lr=eta, momentum=0.5)
    ),
    "Adam, lr 0.2": valley_path(
        lambda th, g, s: adam_step(th, g, s or AdamState.zeros_like(th), lr=0.2)
    ),
}
steps_needed = {}
for name, path in paths.items():
    losses = np.array([valley_loss(th) for th in path])
    steps_needed[name] = int(np.argmax(losses < 1e-3)) if (losses < 1e-3).any() else None
    print(f"{name:<28} steps until the loss is below 1e-3: {steps_needed[name]}")
too_big = valley_path(lambda th, g, s: (gd_step(th, g, lr=0.085), None), steps=50)
print(
    f"gradient descent, lr 0.085 (> 2/25): loss {valley_loss(too_big[0]):.1f} at the start, "
    f"{valley_loss(too_big[-1]):.3g} after 50 steps"
)
assert valley_loss(too_big[-1]) > valley_loss(too_big[0])  # it diverges
gd_name, mom_name, adam_name = paths
assert steps_needed[mom_name] < steps_needed[gd_name]
assert (
    paths[gd_name][1:, 1] * paths[gd_name][:-1, 1] < 0
).all()  # gradient descent zigzags across the valley
assert torch.allclose(
    (paths[adam_name][1] - valley_start).abs(), torch.tensor([0.2, 0.2], dtype=torch.float64)
)

grid1, grid2 = np.meshgrid(np.linspace(-4.5, 1.0, 200), np.linspace(-1.3, 1.3, 200))
fig, ax = plt.subplots()
ax.contour(
    grid1, grid2, 0.5 * (grid1**2 + 25 * grid2**2), levels=np.geomspace(0.01, 30, 12), colors="0.8"
)
for name, path in paths.items():
    ax.plot(path[:41, 0], path[:41, 1], ".-", lw=1, ms=3, label=name)
ax.plot(0, 0, "k*", ms=12)
ax.set(
    xlabel="theta_1 (flat direction)",
    ylabel="theta_2 (steep direction)",
    title="Figure 3.1  Three update rules on a narrow valley (first 40 steps)",
)
ax.legend()
plt.show()

# %% [markdown]
# Figure 3.1: gradient descent zigzags across the valley while creeping along it; momentum's
# velocity carries it along the flat direction faster; Adam, whose first steps have about the same
# size in both coordinates, heads diagonally at first. The step counts above are what to read.
#
# ### Weight decay: L2 in the loss is not AdamW
#
# **{term}`Weight decay <weight decay>`** shrinks weights toward zero at every step, a regulariser that keeps them small.
# The classic way to get it is an **L2 term** in the loss, $L + \tfrac{\lambda}{2}\lVert\theta\rVert^2$,
# whose gradient adds $\lambda\theta$ to $g$. Under gradient descent that is the same as shrinking
# the weights first: $\theta - \eta(g + \lambda\theta) = (1-\eta\lambda)\,\theta - \eta g$. Under Adam it
# is not: the added $\lambda\theta$ goes through the division by $\sqrt{\hat v}$ together with the
# rest of the gradient. Loshchilov and Hutter (2019) pointed this out and **decoupled** the decay
# from the gradient (**AdamW**):
#
# $$\theta_t = (1-\eta\lambda)\,\theta_{t-1} - \eta\,\frac{\hat m_t}{\sqrt{\hat v_t}+\epsilon},$$
#
# with $\hat m, \hat v$ computed from $g$ alone. (This is PyTorch's form, which multiplies the decay by
# $\eta$; the paper multiplies it by the schedule's factor only, so PyTorch's $\lambda$ is the paper's
# divided by the base learning rate.) First the checks: the two are equal under gradient descent,
# and `adamw_step` equals `torch.optim.AdamW`.

# %%
lam = 0.1
theta_l2 = gd_step(theta_0, grads[0] + lam * theta_0, lr=0.1)  # L2 term in the loss
theta_decoupled = gd_step((1 - 0.1 * lam) * theta_0, grads[0], lr=0.1)  # shrink, then step
print(
    "gradient descent, L2 vs decoupled: largest difference "
    f"{(theta_l2 - theta_decoupled).abs().max():.1e}"
)
assert torch.allclose(theta_l2, theta_decoupled, rtol=0, atol=1e-15)

theta_w, state_w, path_w = theta_0, AdamState.zeros_like(theta_0), []
for g in grads:
    theta_w, state_w = adamw_step(theta_w, g, state_w, lr=0.1, betas=(0.9, 0.99), weight_decay=lam)
    path_w.append(theta_w)
ref_w = torch_path(torch.optim.AdamW, theta_0, grads, lr=0.1, betas=(0.9, 0.99), weight_decay=lam)
diff = max((a - b).abs().max().item() for a, b in zip(path_w, ref_w))
print(f"AdamW: largest difference from torch.optim.AdamW over {len(grads)} steps: {diff:.1e}")
assert diff < 1e-12

# %% [markdown]
# Now the difference. Four weights start at 1. Each receives gradients from the data with the same
# random signs but a different scale: 0 (a weight the data does not use), 0.01, 1 and 100. We run
# 100 steps of Adam three times on the same gradients — without decay, with an L2 term, and with
# decoupled decay (AdamW) — and measure how far each kind of decay moved each weight, compared with
# no decay.

# %%
scales = torch.tensor([0.0, 0.01, 1.0, 100.0], dtype=torch.float64)
signs = torch.randn(100, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
decay_lr, decay_lam = 0.01, 0.1
runs = {}
for kind in ("none", "L2 in the loss", "decoupled (AdamW)"):
    theta, state = torch.ones(4, dtype=torch.float64), AdamState.zeros_like(scales)
    for g in signs * scales:
        if kind == "decoupled (AdamW)":
            theta, state = adamw_step(theta, g, state, lr=decay_lr, weight_decay=decay_lam)
        else:
            theta, state = adam_step(
                theta, g, state, lr=decay_lr, l2=decay_lam if kind == "L2 in the loss" else 0.0
            )
    runs[kind] = theta
effect = {kind: runs["none"] - runs[kind] for kind in ("L2 in the loss", "decoupled (AdamW)")}
print(f"{'gradient scale':<22}" + "".join(f"{s:>10g}" for s in scales.tolist()))
for kind, e in effect.items():
    print(f"{kind:<22}" + "".join(f"{v:>10.4f}" for v in e.tolist()))
print(
    "(decoupled decay alone would give 1 - (1 - lr*lambda)^100 "
    f"= {1 - (1 - decay_lr * decay_lam) ** 100:.4f})"
)
l2_e, w_e = effect["L2 in the loss"], effect["decoupled (AdamW)"]
assert (w_e.max() - w_e.min()) / w_e.mean() < 0.2  # decoupled: every weight decays about the same
assert (
    l2_e[-1] < 0.1 * w_e[-1] and l2_e[0] > 2 * w_e[0]
)  # L2: large-gradient weights escape, unused ones collapse
display(
    Markdown(
        f"Decoupled decay moved every weight by about the same amount ({w_e.min():.3f} to "
        f"{w_e.max():.3f}). The L2 term moved the weight the data does not use by {l2_e[0]:.3f}, "
        f"{l2_e[0] / w_e[0]:.0f} times as far, because Adam turns even the small gradient "
        "$\\lambda\\theta$ into a full-size step; and it moved the weight with the largest "
        f"gradients by {l2_e[-1]:.1e}, practically no decay, because next to gradients that large "
        "$\\lambda\\theta$ hardly changes the normalised step."
    )
)

# %% [markdown]
# ### Which weights decay
#
# The book's trainer decays only the matrices — token and position embeddings and the weights of
# Linear layers — and not biases or LayerNorm gains and shifts, as nanoGPT does. The usual argument:
# decay is meant to limit how strongly a layer mixes its inputs, and that lives in the matrices; a
# bias or a gain only shifts or scales one feature, and pulling a LayerNorm gain toward zero would
# just turn that feature down. `configure_optimizer`
# (in `aigc_book.training.trainer`) makes two parameter groups by tensor dimension. We check on a
# GPT which modules each group's tensors belong to:

# %%
decay_demo = GPT(
    TransformerConfig(
        vocab_size=lang.vocab_size,
        block_size=T,
        n_layer=settings.n_layer,
        n_head=settings.n_head,
        n_embd=settings.n_embd,
    )
)
owner = {
    id(p): f"{type(m).__name__}.{name}"
    for m in decay_demo.modules()
    for name, p in m.named_parameters(recurse=False)
}
decay_group, no_decay_group = configure_optimizer(
    decay_demo, TrainConfig(), torch.device("cpu")
).param_groups
for group in (decay_group, no_decay_group):
    kinds = Counter(owner[id(p)] for p in group["params"])
    print(
        f"weight_decay {group['weight_decay']}: {sum(p.numel() for p in group['params']):>7,} "
        f"numbers in {len(group['params'])} tensors: "
        + ", ".join(f"{k} x{c}" for k, c in sorted(kinds.items()))
    )
assert decay_group["weight_decay"] > 0 and no_decay_group["weight_decay"] == 0
assert {owner[id(p)] for p in decay_group["params"]} <= {
    "Embedding.weight",
    "LearnedPositions.weight",
    "Linear.weight",
}
assert all(
    owner[id(p)].endswith(".bias") or owner[id(p)].startswith("LayerNorm.")
    for p in no_decay_group["params"]
)
assert sum(len(gr["params"]) for gr in (decay_group, no_decay_group)) == len(
    list(decay_demo.parameters())
)
assert (
    decay_demo.lm_head.weight is decay_demo.transformer.wte.weight
)  # tied: one tensor, listed once

# %% [markdown]
# (The output layer shares its matrix with the token embedding, so it appears once, as `Linear`.)
#
# ### Warm-up and cosine decay
#
# The learning rate also changes over a run. The book's `lr_at` rises linearly for the first $W$
# steps (**warm-up**; the common explanation is that at the start the weights are random and Adam's
# $\hat v$ rests on few gradients, so full-size steps are risky; Goyal et al. 2017 warm up, and so
# did the original Transformer, Vaswani et al. 2017, §5.3) and then falls along half a cosine to
# $\eta_{\min}$ at the last step $N$ (**cosine decay**, Loshchilov and Hutter 2017), for steps
# $t = 0, 1, \dots, N-1$:
#
# $$\eta_t = \begin{cases} \eta_{\max}\,\dfrac{t+1}{W} & t < W,\\[1ex]
#   \eta_{\min} + \tfrac12\Big(1 + \cos\big(\pi\,\tfrac{t-W}{N-W}\big)\Big)(\eta_{\max}-\eta_{\min}) & t \ge W,
#   \end{cases}$$
#
# with $\eta_{\min} = \eta_{\max}/10$ by default. PyTorch builds the same schedule from two of its own
# schedulers chained: `LinearLR` for the warm-up, then `CosineAnnealingLR`. We compare them for the
# GPT's run below.

# %%
gpt_cfg = TrainConfig(
    steps=settings.gpt_iters,
    lr=settings.lr,
    warmup_steps=settings.gpt_warmup,
    eval_interval=settings.eval_interval,
    eval_batches=8,
    progress=False,
)
ours_lr = [lr_at(t, gpt_cfg) for t in range(gpt_cfg.steps)]

param = torch.nn.Parameter(torch.zeros(1))
sgd = torch.optim.SGD([param], lr=gpt_cfg.lr)
min_lr = gpt_cfg.lr / 10
schedule = torch.optim.lr_scheduler.SequentialLR(
    sgd,
    [
        torch.optim.lr_scheduler.LinearLR(
            sgd, start_factor=1 / gpt_cfg.warmup_steps, total_iters=gpt_cfg.warmup_steps - 1
        ),
        torch.optim.lr_scheduler.CosineAnnealingLR(
            sgd, T_max=gpt_cfg.steps - gpt_cfg.warmup_steps, eta_min=min_lr
        ),
    ],
    milestones=[gpt_cfg.warmup_steps],
)
torch_lr = []
for _ in range(gpt_cfg.steps):
    torch_lr.append(sgd.param_groups[0]["lr"])
    sgd.step()
    schedule.step()
rel = max(abs(a - b) / b for a, b in zip(ours_lr, torch_lr))
print(
    f"lr_at vs PyTorch's LinearLR + CosineAnnealingLR over {gpt_cfg.steps} steps: "
    f"largest relative difference {rel:.1e}"
)
print(f"peak {max(ours_lr):.2e} at step {int(np.argmax(ours_lr))}; last step {ours_lr[-1]:.2e}")
assert rel < 1e-9

fig, ax = plt.subplots()
ax.plot(range(gpt_cfg.steps), ours_lr, label="lr_at (the book's trainer)")
ax.plot(
    range(0, gpt_cfg.steps, 25),
    torch_lr[::25],
    "o",
    ms=4,
    label="torch.optim.lr_scheduler, chained",
)
ax.axvline(gpt_cfg.warmup_steps, color="0.6", ls=":", label="end of warm-up")
ax.set(
    xlabel="optimizer step",
    ylabel="learning rate",
    title="Figure 3.2  Warm-up, then cosine decay (the GPT's run)",
)
ax.legend()
plt.show()

# %% [markdown]
# Figure 3.2: the two schedules lie on top of each other. The trainer also **clips** the gradient:
# if the norm of all gradients together exceeds a limit (`grad_clip`, printed with the GPT run
# below), the gradient is scaled down to that norm before the step, so that one unlucky batch cannot
# throw the weights far.
#
# Now you know everything one training step of the book's `Trainer` does.
#
# ## Causal language modelling: training a GPT
#
# *Can a small Transformer find the long-range rules from examples alone?*
#
# The **{term}`causal LM <causal language modelling>`** objective (GPT; Radford et al. 2018) is next-token cross-entropy: the target
# at position $t$ is the input at $t+1$, and a causal mask stops position $t$ from seeing anything
# later, so all $T$ predictions of a sequence are trained in one pass. `Trainer` takes a model, a
# batch function and a loss function, and runs the steps of the previous section: AdamW with weight
# decay on matrices only, warm-up then cosine decay, {term}`gradient clipping`; its checkpoints resume
# exactly.

# %%
special = SpecialTokens(
    lang.vocab_size
)  # [MASK], [CLS], [SEP] and 8 sentinels after the language's symbols
itos = lang.itos + special.names()
V = special.vocab_size
data = {"train": train_seqs, "val": val_seqs}


def decode(ids) -> str:
    return "".join(itos[int(i)] for i in ids)


def small_gpt(block: int, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    config = TransformerConfig(
        vocab_size=V,
        block_size=block,
        n_layer=settings.n_layer,
        n_head=settings.n_head,
        n_embd=settings.n_embd,
    )
    return GPT(config).to(device)


def bos_column(n: int) -> torch.Tensor:  # (n, 1) prompts holding only BOS
    return torch.full((n, 1), lang.bos_id, dtype=torch.long, device=device)


gpt = small_gpt(block=T)
before = gpt.generate(
    bos_column(settings.n_samples), T, generator=torch.Generator(device=device).manual_seed(0)
).cpu()
print(
    f"{gpt.num_parameters():,} parameters; loss before training {lm_loss(gpt, val_seqs):.3f} "
    f"(uniform over {V} ids: {math.log(V):.3f})"
)
for row in before[:3]:
    print("untrained:", decode(row))

gpt_trainer = Trainer(
    gpt,
    lambda split, g: sequence_lm_batch(data[split], settings.batch, g),
    causal_lm_loss,
    gpt_cfg,
    device=device,
)
print(
    f"AdamW: peak lr {gpt_cfg.lr:g}, betas {gpt_cfg.betas}, weight decay {gpt_cfg.weight_decay:g}, "
    f"gradient clipped to norm {gpt_cfg.grad_clip:g}"
)
t0 = time.perf_counter()
gpt_trainer.train()
gpt_seconds = time.perf_counter() - t0
gpt_ce = lm_loss(gpt, val_seqs)
print(
    f"trained {gpt_cfg.steps} steps in {gpt_seconds:.0f} s "
    f"({np.median(gpt_trainer.history['ms']):.0f} ms/step)"
)
print(
    f"validation loss {gpt_ce:.4f} nats/token; floor {floor:.4f}; gap {gpt_ce - floor:.4f}; "
    f"best n-gram {ngram_ce[best_n]:.4f}"
)
assert gpt_ce < ngram_ce[best_n] and gpt_ce - floor < 0.15

# %%
evals = gpt_trainer.history["evals"]
fig, ax = plt.subplots()
ax.plot(
    gpt_trainer.history["step"],
    gpt_trainer.history["train_loss"],
    lw=0.6,
    alpha=0.5,
    label="GPT, training batches",
)
ax.plot([e["step"] for e in evals], [e["val"] for e in evals], "o-", label="GPT, validation")
ax.axhline(ngram_ce[best_n], color="C3", ls="--", label=f"best n-gram ({best_n}-gram)")
ax.axhline(floor, color="black", lw=1.5, label="entropy floor (exact)")
ax.set(
    ylim=(floor - 0.1, 3.0),
    xlabel="optimizer step",
    ylabel="cross-entropy (nats/token)",
    title="Figure 3.3  A GPT approaches the entropy floor; the n-gram stalls above it",
)
ax.legend()
plt.show()
below = [e["step"] for e in evals if e["val"] < ngram_ce[best_n]]
display(
    Markdown(
        f"Figure 3.3: the validation loss (measured every {settings.eval_interval} steps) "
        + (
            f"first drops below the best n-gram's at step {below[0]}"
            if below
            else "never drops below the n-gram's"
        )
        + f"; after the last step the loss on the whole validation set is {gpt_ce - floor:.3f} "
        "nats above the black line that no model can cross."
    )
)

# %% [markdown]
# ### The gap is the KL divergence
#
# *What exactly is the remaining gap?*
#
# The formula says: the model's KL divergence from the truth. We can compute that KL exactly,
# because at every prefix of every validation sequence the language gives the true next-token
# distribution $p(\cdot \mid x_{<t})$ (`next_token_table`, one row per prefix), and the GPT gives
# its own $q(\cdot \mid x_{<t})$. Prefix by prefix, $\mathbb{E}_{v\sim p}[-\log q_v] = H(p) +
# \mathrm{KL}(p\,\|\,q)$ holds exactly. The validation loss, though, is $-\log q$ at the tokens that
# actually came, one sample of the left-hand side; so per sequence, (observed loss $-$ exact KL) has
# expectation equal to the floor, and the gap (validation loss $-$ floor) should equal the mean KL
# up to the sampling error of the validation set.

# %%
with torch.no_grad():
    logits, _ = gpt.eval()(val_seqs[:, :-1].to(device))
log_q = logits.double().log_softmax(-1).cpu()  # (N, T, V): the GPT's log q(. | x_<t)
p_true = torch.from_numpy(
    np.stack([lang.next_token_table(row[:-1]) for row in val_seqs])
)  # (N, T, 29)
p_true = F.pad(p_true, (0, V - lang.vocab_size))  # (N, T, V): the special tokens have p = 0
p_log_p = torch.where(p_true > 0, p_true * p_true.log(), torch.zeros_like(p_true))
entropy = -p_log_p.sum(-1)  # (N, T): H(p(. | x_<t))
kl = (p_log_p - p_true * log_q).sum(-1)  # (N, T): KL(p || q)
expected_loss = -(p_true * log_q).sum(-1)  # (N, T): E_p[-log q]
observed_loss = -log_q.gather(-1, val_seqs[:, 1:, None]).squeeze(
    -1
)  # (N, T): -log q of the actual token
identity_err = (expected_loss - entropy - kl).abs().max().item()
print(f"largest |E_p[-log q] - H(p) - KL(p||q)| over {kl.numel():,} prefixes: {identity_err:.1e}")
assert identity_err < 1e-10
assert abs(observed_loss.mean().item() - gpt_ce) < 1e-4  # the same validation loss as lm_loss

per_seq = (observed_loss - kl).mean(
    1
)  # (N,): observed loss minus exact KL; its expectation is the floor
se_seq = per_seq.std().item() / math.sqrt(len(per_seq))
gap, kl_mean = gpt_ce - floor, kl.mean().item()
print(f"validation loss of the GPT                          {gpt_ce:.4f}")
print(f"exact floor                                         {floor:.4f}")
print(f"gap                                                 {gap:.4f}")
print(f"exact KL(p || q), averaged over the same prefixes   {kl_mean:.4f}")
print(
    f"gap - KL = sampling error                           {gap - kl_mean:+.4f}  "
    f"(standard error {se_seq:.4f})"
)
assert kl.min() > -1e-12 and abs(gap - kl_mean) < 4 * se_seq
display(
    Markdown(
        "The gap to the floor is the GPT's KL divergence: they differ "
        f"by {abs(gap - kl_mean) / se_seq:.1f} standard errors of a {len(val_seqs):,}-sequence "
        f"validation set. Of the GPT's {gpt_ce:.3f} nats per token, about {kl_mean:.3f} are "
        "its own error, its KL from the truth; the rest is the language's own randomness, "
        "which no model can remove."
    )
)

# %% [markdown]
# Samples tell the same story. We draw sequences from the trained model and ask the true language
# whether each one is possible: every closer matching its opener, every word agreeing. A small KL
# per token still adds up over a whole sequence: the GPT puts some probability on tokens the
# language forbids, and we can measure how much on the validation prefixes.

# %%
after = gpt.generate(
    bos_column(settings.n_samples), T, generator=torch.Generator(device=device).manual_seed(1)
).cpu()
for row in after[:3]:
    print("trained:", decode(row))
ok_before = np.mean(
    [lang.is_well_formed(r) for r in before]
)  # ids beyond the language count as errors
ok_after = np.mean([lang.is_well_formed(r) for r in after])
print(
    f"well-formed samples: {ok_after:.0%} of {settings.n_samples} after training, "
    f"{ok_before:.0%} before"
)
forbidden = (log_q.exp() * (p_true == 0)).sum(
    -1
)  # (N, T): the GPT's probability of a forbidden next token
clean = torch.exp(
    torch.log1p(-forbidden).sum(1)
)  # (N,): chance that T steps all avoid one, along each sequence
se_ok = math.sqrt(ok_after * (1 - ok_after) / settings.n_samples)
print(
    f"on validation prefixes: {forbidden.mean():.2%} of the probability per step on forbidden "
    f"tokens, {forbidden.sum(1).mean():.2f} forbidden tokens expected per {T}-token sequence, "
    f"{clean.mean():.0%} chance of none"
)
assert ok_after > 0.2 and ok_before < 0.05
assert abs(clean.mean().item() - ok_after) < 4 * max(se_ok, 0.01)
display(
    Markdown(
        f"Before training {ok_before:.0%} of the samples are valid; after training {ok_after:.0%} "
        f"(± {se_ok:.0%}) break no rule. The GPT's forbidden-token probability on the "
        f"validation prefixes predicts this: {forbidden.mean():.2%} per step adds up "
        f"to {forbidden.sum(1).mean():.2f} expected errors in {T} tokens, and a {clean.mean():.0%} "
        f"chance of none, {abs(clean.mean().item() - ok_after) / max(se_ok, 0.01):.1f} standard "
        "errors from the fraction measured on the samples."
    )
)

# %% [markdown]
# ## Five objectives on one corpus
#
# *What else could a Transformer be trained to predict, and what can it do afterwards?*
#
# Every objective below turns the same unlabelled sequences into questions with known answers.
# They differ in which tokens are hidden, what the model may look at, and so what it learns to do.
#
# ### Masked LM and next-sentence prediction (BERT)
#
# BERT (Devlin et al. 2019) uses a bidirectional **encoder**: every position sees every other.
# Predicting the next token would then be trivial, so BERT hides tokens instead. **Masked LM**:
# select 15% of the positions; replace 80% of the selected tokens with `[MASK]`, 10% with a random
# token, and leave 10% unchanged; predict the original token at the selected positions only. The
# random and unchanged cases keep the model honest at positions that show no `[MASK]` — which is
# every position when the model is used later. **Next-sentence prediction** (NSP): the input is
# `[CLS] A [SEP] B [SEP]`; half the time B is A's true continuation, half the time a random
# segment; a classifier on `[CLS]` says which. We write `[MASK]`, `[CLS]`, `[SEP]` as `␣ | ‖`.

# %%
g = torch.Generator().manual_seed(3)
example = nsp_batch(val_seqs, 2, special, g)
for row, orig, label in zip(example["idx"], example["original"], example["nsp_labels"]):
    print("original:", decode(orig), "  is next:", bool(label))
    print("input:   ", decode(row))
big = nsp_batch(train_seqs, 4000, special, torch.Generator().manual_seed(4))
selected = big["mlm_labels"] != IGNORE
eligible = big["original"] < lang.vocab_size
print(
    f"selected {selected.sum() / eligible.sum():.3f} of tokens; of those "
    f"[MASK] {(big['idx'][selected] == special.mask).float().mean():.3f}, "
    f"unchanged {(big['idx'][selected] == big['original'][selected]).float().mean():.3f}; "
    f"true next segment {big['nsp_labels'].float().mean():.3f}"
)
assert abs(selected.sum() / eligible.sum() - 0.15) < 0.005

# %% [markdown]
# RoBERTa (Liu et al. 2019) found that "removing the NSP loss matches or slightly improves
# downstream task performance". We try it in miniature: two identical encoders, the same inputs,
# one trained on MLM + NSP, one on MLM alone.

# %%
PAIR_LEN = T + 3  # [CLS] first half [SEP] second half [SEP]


def small_encoder(seed: int = 0) -> EncoderForPretraining:
    torch.manual_seed(seed)
    config = TransformerConfig(
        V,
        PAIR_LEN,
        n_layer=settings.n_layer,
        n_head=settings.n_head,
        n_embd=settings.n_embd,
        causal=False,
    )
    return EncoderForPretraining(Transformer(config)).to(device)


def nsp_batches(split, g):
    return nsp_batch(data[split], settings.batch, special, g)


enc_cfg = TrainConfig(
    steps=settings.enc_iters,
    lr=settings.lr,
    warmup_steps=settings.enc_warmup,
    eval_batches=8,
    progress=False,
)
encoders, enc_seconds = {}, {}
for name, loss_fn in [("MLM + NSP", mlm_nsp_loss), ("MLM only", mlm_loss)]:
    encoders[name] = small_encoder()
    t0 = time.perf_counter()
    Trainer(encoders[name], nsp_batches, loss_fn, enc_cfg, device=device).train()
    enc_seconds[name] = time.perf_counter() - t0

# %%
@torch.no_grad()
def mlm_eval(model, n_batches: int = 20) -> dict[str, float]:
    (
        "Masked-token loss and accuracy (with its standard error), "
        "and NSP accuracy, on validation pairs."
    )
    model.eval()
    g = torch.Generator().manual_seed(5)  # the same pairs for every model
    losses, correct, total, nsp_correct = [], 0, 0, 0
    for _ in range(n_batches):
        b = nsp_batch(val_seqs, 100, special, g)
        token_logits, nsp_logits = model(b["idx"].to(device))
        token_logits, nsp_logits = token_logits.float().cpu(), nsp_logits.float().cpu()
        sel = b["mlm_labels"] != IGNORE
        losses.append(F.cross_entropy(token_logits[sel], b["mlm_labels"][sel]).item())
        correct += (token_logits[sel].argmax(-1) == b["mlm_labels"][sel]).sum().item()
        total += sel.sum().item()
        nsp_correct += (nsp_logits.argmax(-1) == b["nsp_labels"]).sum().item()
    acc = correct / total
    return {
        "loss": float(np.mean(losses)),
        "acc": acc,
        "acc_se": math.sqrt(acc * (1 - acc) / total),
        "nsp_acc": nsp_correct / (100 * n_batches),
    }

# %%
mlm_results = {name: mlm_eval(m) for name, m in encoders.items()}
for name, r in mlm_results.items():
    print(
        f"{name:<10} masked-token loss {r['loss']:.3f}, accuracy {r['acc']:.3f} "
        f"± {r['acc_se']:.3f}; NSP accuracy {r['nsp_acc']:.3f} ({enc_seconds[name]:.0f} s)"
    )
assert (
    mlm_results["MLM + NSP"]["nsp_acc"] > 0.6
)  # NSP is learnable here: a random B usually breaks the brackets
assert mlm_results["MLM only"]["nsp_acc"] < 0.6  # ... and an untrained NSP head is at chance

# %%
with_nsp, without_nsp = mlm_results["MLM + NSP"], mlm_results["MLM only"]
diff_se = math.hypot(with_nsp["acc_se"], without_nsp["acc_se"])
if without_nsp["acc"] - with_nsp["acc"] > 2 * diff_se:
    verdict = (
        "The encoder without NSP is better: in this run, sharing a small model between two tasks "
        "hurt the one we care about, in line with RoBERTa's finding"
    )
elif with_nsp["acc"] - without_nsp["acc"] > 2 * diff_se:
    verdict = (
        "The encoder with NSP is better: in this run, NSP helped MLM, unlike RoBERTa's finding"
    )
else:
    verdict = "This evaluation does not tell the two apart"
display(
    Markdown(
        "NSP is learnable in our language (a random second half usually closes brackets that A "
        f"never opened): the MLM + NSP encoder classifies {with_nsp['nsp_acc']:.0%} of the pairs "
        f"correctly, the untrained NSP head of the other encoder {without_nsp['nsp_acc']:.0%} "
        "(chance is 50%). On the masked tokens, the encoder trained on MLM alone is right "
        f"{without_nsp['acc']:.1%} of the time and the MLM + NSP encoder {with_nsp['acc']:.1%} "
        f"(standard error of the difference {diff_se:.1%}). {verdict}. That standard error covers "
        "only the choice of evaluation pairs: each encoder was trained once, with one seed, "
        "and exercise 3 asks whether the difference survives other seeds."
    )
)

# %% [markdown]
# What can the encoder *do*? It fills in blanks using both sides. Here it restores hidden closers,
# the tokens whose answer lies furthest away:

# %%
row = val_seqs[3]
pair = torch.cat(
    [
        torch.tensor([special.cls]),
        row[1 : 1 + T // 2],
        torch.tensor([special.sep]),
        row[1 + T // 2 :],
        torch.tensor([special.sep]),
    ]
)
closers = torch.isin(pair, torch.tensor(lang.close_ids))
blanked = torch.where(closers, torch.tensor(special.mask), pair)
with torch.no_grad():
    filled = encoders["MLM only"].eval()(blanked[None].to(device))[0][0].argmax(-1).cpu()
filled = torch.where(closers, filled, pair)
print("with blanks:", decode(blanked))
print("filled in:  ", decode(filled))
print("original:   ", decode(pair))
print(
    f"{(filled[closers] == pair[closers]).sum().item()} of {closers.sum().item()} closers restored"
)

# %% [markdown]
# An encoder cannot generate text left to right, though: trained to see both sides, it has no
# distribution over "the next token given only the past". A GPT is the opposite: it generates, but
# fills a blank using only the left context. That is why GPT models — and ChatGPT — are trained
# with the causal objective.
#
# ### Permutation LM (XLNet)
#
# XLNet (Yang et al. 2019) wants both: autoregressive training *and* context from both sides. For
# each sequence it samples a **factorisation order** $z$, a permutation of the positions, and
# trains $\prod_t p(x_{z_t} \mid x_{z_{<t}})$: each token is predicted from the tokens that come
# *earlier in the order*, wherever they sit in the sentence. Averaged over orders, every token is
# predicted from every subset of the others.
#
# The sequence itself is **not shuffled**. Each token keeps its position and its positional
# encoding; only the attention mask changes (who may see whom). Shuffling the words would destroy
# what the model is supposed to learn: the shuffled text is not text of the language.

# %%
# NBVAL_CHECK_OUTPUT
shuffled_ok = []
g = torch.Generator().manual_seed(7)
for r in val_seqs[:500]:
    perm = torch.randperm(T, generator=g) + 1
    shuffled_ok.append(lang.is_well_formed(torch.cat([r[:1], r[perm]])))
print(
    f"well-formed after shuffling the tokens: {np.mean(shuffled_ok):.1%} of 500 "
    "sequences (before: 100%)"
)
assert np.mean(shuffled_ok) < 0.05

# %% [markdown]
# Predicting token $x_{z_t}$ raises a problem: the prediction must know *where* the target is
# (its position) but not *what* it is (its content), while the same token, once predicted, must
# show its content to tokens later in the order. XLNet's answer is **{term}`two-stream attention`**: a
# *content stream* $h$ (token plus position, may see itself and everything earlier in the order) and
# a *query stream* $g$ (position plus a learned vector, may see the content of tokens strictly
# earlier in the order, never its own). We run both streams through the same blocks as one sequence
# of length $2T$ with the mask drawn in Figure 3.4; `two_stream_logits` reads the predictions off
# the query stream.

# %%
# NBVAL_CHECK_OUTPUT
rank = torch.tensor([[0, 3, 1, 4, 2]])  # BOS first; then positions 2, 4, 1, 3 in that order
mask = two_stream_mask(rank)[0, 0]
print("factorisation order (positions):", rank[0].argsort().tolist())
print(mask.int())
n = rank.size(1)
assert not mask[n:, :n].diagonal().any()  # no query sees its own content
assert not mask[:n, n:].any()  # content never reads the query stream
assert mask[n + 3, :n].tolist() == [
    True,
    True,
    True,
    False,
    True,
]  # q3 (last in the order) sees every c but c3
fig, ax = plt.subplots(figsize=(5, 5))
ax.imshow(mask.int(), cmap="Blues")
labels = [f"c{i}" for i in range(n)] + [f"q{i}" for i in range(n)]
ax.set_xticks(range(2 * n), labels)
ax.set_yticks(range(2 * n), labels)
ax.axhline(n - 0.5, color="C1")
ax.axvline(n - 0.5, color="C1")
ax.grid(False)
ax.set(
    xlabel="key (c = content stream, q = query stream; number = position)",
    ylabel="query",
    title="Figure 3.4  Two-stream attention mask, order 0, 2, 4, 1, 3",
)
plt.show()

# %% [markdown]
# Figure 3.4 (blue = may attend): the content rows $c_i$ see the content of every position up to
# and including themselves *in the order*; the query rows $q_i$ see the content strictly before
# position $i$ in the order, and their own query slot (which holds only the position). Position 3
# comes last, so $q_3$ sees every content slot except $c_3$. A test in `tests/test_objectives.py`
# checks the same thing with gradients: the query output at $i$ has zero gradient with respect to
# token $i$ and to every token later in the order.
#
# We train the same small GPT architecture with this objective. With the identity order the query
# stream is an ordinary left-to-right language model, so we can score the PLM model against the
# floor exactly like the GPT.

# %%
plm_gpt = small_gpt(block=T + 1)
plm_cfg = TrainConfig(
    steps=settings.plm_iters,
    lr=settings.lr,
    warmup_steps=settings.obj_warmup,
    eval_batches=8,
    progress=False,
)


def plm_batches(split, g):
    return {**plm_batch(data[split], settings.batch, g), "query_token": special.mask}


t0 = time.perf_counter()
Trainer(plm_gpt, plm_batches, plm_loss, plm_cfg, device=device).train()
plm_seconds = time.perf_counter() - t0


@torch.no_grad()
def plm_left_to_right_ce(model, seqs) -> float:
    (
        "Cross-entropy of the query stream with the identity order: "
        "every token from the ones on its left."
    )
    model.eval()
    targets = seqs.clone()
    targets[:, 0] = IGNORE  # BOS is given, never predicted
    batch = {
        "idx": seqs.to(device),
        "rank": torch.arange(T + 1, device=device).expand(len(seqs), T + 1),
        "targets": targets.to(device),
        "query_token": special.mask,
    }
    return plm_loss(model, batch).item()


plm_ce = plm_left_to_right_ce(plm_gpt, val_seqs)
gpt_val_by_step = {e["step"]: e["val"] for e in gpt_trainer.history["evals"]}
gpt_same_step = gpt_val_by_step.get(plm_cfg.steps)
print(
    f"PLM model, left-to-right order: {plm_ce:.4f} nats/token after {plm_cfg.steps} "
    f"steps ({plm_seconds:.0f} s); floor {floor:.4f}; best n-gram {ngram_ce[best_n]:.4f}; "
    f"unigram {ngram_ce[1]:.4f}"
)
if gpt_same_step is not None:
    print(
        f"the GPT's validation loss at step {plm_cfg.steps} of its own run: {gpt_same_step:.4f}"
    )
assert plm_ce < ngram_ce[1]

# %%
versus_ngram = "above" if plm_ce > ngram_ce[best_n] else "below"
display(
    Markdown(
        f"The PLM model spends its training on all orders: left-to-right is only one of the {T}! "
        "orders it practises, and each token is predicted from a *random subset* of the others — "
        f"often without the opener it needs. After {plm_cfg.steps} steps its left-to-right "
        f"loss is {plm_ce - floor:.3f} nats above the floor, {versus_ngram} the best n-gram's "
        f"and {ngram_ce[1] - plm_ce:.3f} nats below a unigram model's"
        + (
            "; the GPT, after the same number of steps of its own run, "
            f"was {gpt_same_step - floor:.3f} above the floor"
            if gpt_same_step is not None
            else ""
        )
        + ". To make optimisation easier, XLNet predicts only the last tokens of each order, "
        "which have the most context (\"partial prediction\", Yang et al. 2019), "
        "and trains far longer (exercise 4)."
    )
)

# %% [markdown]
# ### Span corruption (T5)
#
# T5 (Raffel et al. 2020) corrupts 15% of the tokens in **spans** of mean length 3, replaces each
# span by one **sentinel** token, and trains the model to output the list of spans, each after its
# sentinel. T5 is an encoder–decoder; we run the same objective on a decoder-only model as a
# *prefix LM*: the corrupted input (up to `‖`) is read bidirectionally, the targets are generated
# causally after it, and the loss is on the targets only. Sentinels are printed ①②③.

# %%
g = torch.Generator().manual_seed(8)
noise = random_spans_noise_mask(T, g)
inp, tgt = span_corrupt(val_seqs[0, 1:], noise, special.sentinels)
print("original:", decode(val_seqs[0, 1:]))
print("input:   ", decode(inp))
print("targets: ", decode(tgt))
lengths = [random_spans_noise_mask(100, g).float() for _ in range(200)]
density = torch.stack(lengths).mean().item()
print(
    f"noise density over 200 masks of length 100: {density:.3f}; mean span length "
    f"""{
        sum(m.sum().item() for m in lengths)
        / sum((m.diff(prepend=torch.zeros(1)) == 1).sum().item() for m in lengths)
    :.2f}"""
)
assert abs(density - 0.15) < 1e-6

span_example = span_corruption_batch(train_seqs, 1, special, g)
SPAN_LEN = span_example["idx"].size(1)
t5_gpt = small_gpt(block=SPAN_LEN)
t5_cfg = TrainConfig(
    steps=settings.t5_iters,
    lr=settings.lr,
    warmup_steps=settings.obj_warmup,
    eval_batches=8,
    progress=False,
)
t0 = time.perf_counter()
t5_trainer = Trainer(
    t5_gpt,
    lambda split, g: span_corruption_batch(data[split], settings.batch, special, g),
    span_corruption_loss,
    t5_cfg,
    device=device,
)
t5_trainer.train()
t5_seconds = time.perf_counter() - t0
print(
    f"span-corruption loss on validation: {t5_trainer.history['evals'][-1]['val']:.3f} nats/target "
    f"token ({t5_cfg.steps} steps, {t5_seconds:.0f} s)"
)

# %% [markdown]
# ### One table, one probe
#
# The objectives' own losses are not comparable: each predicts different tokens from different
# context. So we ask every model the same question — **which bracket closes here?** — at a closer
# whose answer is far away: it comes right after another closer (a nested group has just ended, so
# the last tokens say nothing about the answer) and its opener is beyond the best n-gram's window.
# Each model answers the way its objective allows: the GPT and the n-gram from the tokens on the
# left; the encoders with that one token masked; the PLM model with that position last in the order
# (so it sees everything else); the span model with that token inside one of its usual corrupted
# spans. The answer is the most probable of the four closers.

# %%
closer_ids = torch.tensor(lang.close_ids)
probe_seqs = lang.sample(3000, T, seed=3)
g = torch.Generator().manual_seed(9)
rows_p, pos_p, masks_p = [], [], []
for i, r in enumerate(probe_seqs.tolist()):
    noise = random_spans_noise_mask(T, g)  # the span model's own kind of corruption for this row
    stack, opened_at = [], {}
    for p, tok in enumerate(r[1:], start=1):
        if tok in lang.open_ids:
            stack.append(p)
        elif tok in lang.close_ids:
            opened_at[p] = stack.pop()
    # a closer right after a closer, inside a corrupted span, whose opener the n-gram cannot see
    hard = [
        p
        for p, o in opened_at.items()
        if noise[p - 1] and r[p - 1] in lang.close_ids and p - o >= best_n
    ]
    if hard:
        rows_p.append(i)
        pos_p.append(hard[0])
        masks_p.append(noise)
seqs_p, pos_t = probe_seqs[rows_p], torch.tensor(pos_p)
n_probe, ar = len(rows_p), torch.arange(len(rows_p))
answer = seqs_p[ar, pos_t]

# %%
def pick_closer(logits_at_pos):  # (N, V) -> the most probable closer
    return closer_ids[logits_at_pos.float().cpu()[:, closer_ids].argmax(-1)]


probe = {}
with torch.no_grad():
    logits, _ = gpt.eval()(seqs_p[:, :-1].to(device))
    probe["causal LM (GPT)"] = pick_closer(logits[ar, pos_t - 1])

    scores = []
    for c in lang.close_ids:  # the n-gram's probability of each closer at the probed position
        alt = seqs_p.clone()
        alt[ar, pos_t] = c
        scores.append(torch.from_numpy(ngram.log_probs(alt))[ar, pos_t - 1])
    probe[f"{best_n}-gram (counts)"] = closer_ids[torch.stack(scores, 1).argmax(1)]

    for name, enc in encoders.items():
        pairs = torch.cat(
            [
                torch.full((n_probe, 1), special.cls),
                seqs_p[:, 1 : 1 + T // 2],
                torch.full((n_probe, 1), special.sep),
                seqs_p[:, 1 + T // 2 :],
                torch.full((n_probe, 1), special.sep),
            ],
            dim=1,
        )
        pair_pos = pos_t + (pos_t > T // 2).long()  # shift past the middle [SEP]
        pairs[ar, pair_pos] = special.mask
        token_logits, _ = enc.eval()(pairs.to(device))
        probe[f"masked LM ({name})"] = pick_closer(token_logits[ar, pair_pos])

    ranks = torch.arange(T + 1).repeat(n_probe, 1)
    ranks = ranks - (ranks > pos_t[:, None]).long()  # close the gap ...
    ranks[ar, pos_t] = T  # ... and put the probed position last in the order
    plm_logits = two_stream_logits(
        plm_gpt.eval(), seqs_p.to(device), ranks.to(device), special.mask
    )
    probe["permutation LM (XLNet)"] = pick_closer(plm_logits[ar, pos_t])

    fulls, where = [], []
    for r, p, noise in zip(seqs_p, pos_p, masks_p):
        inp, tgt = span_corrupt(r[1:], noise, special.sentinels)
        prefix = torch.cat([r[:1], inp, torch.tensor([special.sep])])
        b = p - 1  # the probed token's index in the body (the sequence without BOS)
        starts = noise & ~torch.cat([torch.tensor([False]), noise[:-1]])
        k = int(starts[: b + 1].sum()) - 1  # the span that holds it ...
        run_start = int(torch.nonzero(starts[: b + 1]).flatten()[-1])  # ... starts here
        idx_in_tgt = int((tgt == special.sentinels[k]).nonzero()) + 1 + (b - run_start)
        fulls.append(torch.cat([prefix, tgt]))
        where.append(len(prefix) + idx_in_tgt - 1)  # the logits one position earlier predict it
    fulls = torch.stack(fulls)
    span_mask = prefix_lm_mask(fulls.size(1) - 1, span_example["n_prefix"]).to(device)
    out, _ = t5_gpt.eval()(fulls[:, :-1].to(device), attn_mask=span_mask)
    where_t = torch.tensor(where)
    assert torch.equal(
        fulls[ar, where_t + 1], answer
    )  # we read the logits that predict the probed token
    probe["span corruption (T5)"] = pick_closer(out[ar, where_t])

# %%
chance = 1 / len(lang.close_ids)
accuracy = {name: (pred == answer).float().mean().item() for name, pred in probe.items()}
acc_se = {name: math.sqrt(a * (1 - a) / n_probe) for name, a in accuracy.items()}
print(
    f"closer probe: {n_probe} fresh sequences, one hard closing bracket each; chance = {chance:.0%}"
)
for name, acc in accuracy.items():
    print(f"  {name:<28} {acc:6.1%} ± {acc_se[name]:.1%}")
assert accuracy["causal LM (GPT)"] > accuracy[f"{best_n}-gram (counts)"] + 0.2

# %%
supervised = {
    "causal LM (GPT)": "every token",
    "masked LM (MLM + NSP)": "15% of tokens + 1 label per pair",
    "masked LM (MLM only)": "15% of tokens",
    "permutation LM (XLNet)": "every token (in a random order)",
    "span corruption (T5)": "15% of tokens + sentinels",
}
context = {
    "causal LM (GPT)": "tokens to the left",
    "masked LM (MLM + NSP)": "both sides, with [MASK]s",
    "masked LM (MLM only)": "both sides, with [MASK]s",
    "permutation LM (XLNet)": "tokens earlier in the order",
    "span corruption (T5)": "corrupted input, earlier targets",
}
seconds = {
    "causal LM (GPT)": gpt_seconds,
    "masked LM (MLM + NSP)": enc_seconds["MLM + NSP"],
    "masked LM (MLM only)": enc_seconds["MLM only"],
    "permutation LM (XLNet)": plm_seconds,
    "span corruption (T5)": t5_seconds,
}
steps = {
    "causal LM (GPT)": gpt_cfg.steps,
    "masked LM (MLM + NSP)": enc_cfg.steps,
    "masked LM (MLM only)": enc_cfg.steps,
    "permutation LM (XLNet)": plm_cfg.steps,
    "span corruption (T5)": t5_cfg.steps,
}
left_to_right = {"causal LM (GPT)": gpt_ce, "permutation LM (XLNet)": plm_ce}
print(
    f"{'objective':<24}{'predicts from':<34}{'loss on':<34}{'steps':>6}{'time':>7}"
    f"{'closer acc.':>13}{'L-to-R CE':>11}"
)
for name in supervised:
    ce = f"{left_to_right[name]:.3f}" if name in left_to_right else "-"
    print(
        f"{name:<24}{context[name]:<34}{supervised[name]:<34}{steps[name]:>6}{seconds[name]:>6.0f}s"
        f"{accuracy[name]:>13.1%}{ce:>11}"
    )
print(
    f"{'n-gram (' + str(best_n) + ')':<24}{'last ' + str(best_n - 1) + ' tokens':<34}"
    f"{'(counts)':<34}{'-':>6}{'':>7}{accuracy[f'{best_n}-gram (counts)']:>13.1%}"
    f"{ngram_ce[best_n]:>11.3f}"
)
print(f"entropy floor of left-to-right cross-entropy: {floor:.3f} nats/token")

# %% [markdown]
# Read the table against the probe's noise: with the number of probe sequences printed above, each
# accuracy has the standard error shown next to it, and two models whose accuracies are within
# about two standard errors of each other are not told apart by this probe. Every model was trained
# once, with one seed; a different seed can reorder models whose accuracies are close. What this run
# shows:

# %%
ranking = sorted(accuracy, key=accuracy.get, reverse=True)


def compare(a: str, b: str) -> str:
    """'a > b' when the probe separates them (more than 2 standard errors), else 'a ≈ b'."""
    separated = accuracy[a] - accuracy[b] > 2 * math.hypot(acc_se[a], acc_se[b])
    return ">" if separated else "≈"


order = ranking[0] + "".join(f" {compare(a, b)} {b}" for a, b in zip(ranking, ranking[1:]))
enc_probe = accuracy["masked LM (MLM + NSP)"] - accuracy["masked LM (MLM only)"]
enc_masked = with_nsp["acc"] - without_nsp["acc"]
plm_vs_chance = accuracy["permutation LM (XLNet)"] - chance
lines = [
    "* Ranking on the hard closers (`>`: separated by more than two standard errors; "
    f"`≈`: not): {order}.",
    f"* The causal LM answers {accuracy['causal LM (GPT)']:.0%} of the hard closers from "
    f"the left context alone; the {best_n}-gram, which sees only {best_n - 1} tokens back, "
    f"{accuracy[f'{best_n}-gram (counts)']:.0%} (chance is {chance:.0%}). Every position of every "
    "sequence is a training question for the causal LM.",
    f"* Span corruption reaches {accuracy['span corruption (T5)']:.0%}: its targets are also "
    "generated left to right, with the corrupted sequence around them as context.",
    "* The masked-LM encoders see the most context at the probed position "
    f"and reach {accuracy['masked LM (MLM + NSP)']:.0%} (MLM + NSP) "
    f"and {accuracy['masked LM (MLM only)']:.0%} (MLM only) after {enc_cfg.steps} steps; "
    "only 15% of each sequence's tokens are questions for them. Their order on this probe "
    f"is {'the same as' if enc_probe * enc_masked > 0 else 'the reverse of'} their order on all "
    "masked tokens above — one seed of a small run settles little (exercise 3).",
    f"* The permutation LM answers {accuracy['permutation LM (XLNet)']:.0%} after "
    f"{plm_cfg.steps} steps, {100 * plm_vs_chance:+.0f} percentage points from chance "
    f"({'within' if abs(plm_vs_chance) < 2 * acc_se['permutation LM (XLNet)'] else 'more than'} "
    "two standard errors).",
    "* Only the causal LM and the PLM define a left-to-right distribution, so only they can be "
    "scored against the floor (\"L-to-R CE\") and only they can generate text one token at a "
    f"time. The causal LM, trained on exactly that order, is {gpt_ce - floor:.3f} nats above the "
    f"floor, the PLM {plm_ce - floor:.3f}.",
    f"\nThese are runs of {min(steps.values())} to {max(steps.values())} steps with models the "
    f"size of the GPT ({gpt.num_parameters():,} parameters): they show what each objective asks "
    "and how fast a small model picks it up, not which objective wins at scale.",
]
display(Markdown("\n".join(lines)))

# %% [markdown]
# ## What the articles get wrong
#
# *Which claims about ChatGPT's pretraining, and which code, does this chapter correct?*
#
# * **"ChatGPT is pretrained with masked language modelling and next-sentence prediction."** No.
#   MLM and NSP are BERT's objectives (Devlin et al. 2019). GPT models, from GPT-1 to the GPT-3.5
#   series that ChatGPT was fine-tuned from, are decoder-only Transformers pretrained with the
#   causal, next-token objective (Radford et al. 2018; Brown et al. 2020; OpenAI 2022). Our GPT
#   above is that objective in miniature; the encoder above shows why an MLM model could not serve
#   as a chatbot: it has no left-to-right distribution to generate from.
# * **"NSP is essential."** RoBERTa found that removing it matches or slightly improves downstream
#   performance (Liu et al. 2019). Our miniature shows NSP learnable; whether it helped MLM in this
#   run is printed with the encoders above.
# * **"BERT replaces 15% of the tokens with [MASK]."** Incomplete: 15% are *selected*, and of
#   those 80% become [MASK], 10% a random token and 10% stay the same (measured above).
# * **"Permutation LM shuffles the words and the model restores the order."** No. XLNet keeps the
#   input order and the positional encodings and permutes only the *factorisation order*, through
#   attention masks, with two-stream attention so that a prediction never sees its own token
#   (Yang et al. 2019). Shuffling the tokens of our language leaves almost no valid sentence.
# * **A character-level language model that cannot train.** One of the source articles builds a
#   character-level Transformer LM on a Shakespeare text. Its data code fails twice before training
#   starts: it calls `torch.nn.Transformer.TransformerEncoder.build_tokenizer(text)`, which does
#   not exist in PyTorch, and its `Dataset` returns `ids[idx]`,
#   one token per item, so a batch is a vector of unrelated characters: no sequence for attention
#   to look along, and no next token to predict. A language model's example is a *window* and the
#   same window shifted by one. The cell below checks both points and shows the book's two pieces:
#   `CharTokenizer.train` (a sorted set of the characters) and `causal_lm_batch` (random windows).

# %%
print(
    "torch.nn.Transformer has an attribute TransformerEncoder:",
    hasattr(torch.nn.Transformer, "TransformerEncoder"),
)
print(
    "anything in torch.nn has build_tokenizer:",
    any(hasattr(getattr(torch.nn, name), "build_tokenizer") for name in dir(torch.nn)),
)


class SingleTokenDataset(torch.utils.data.Dataset):  # the article's __getitem__, as written
    def __init__(self, ids):
        self.ids = ids

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, idx):
        return self.ids[idx]


char_ids = char_tok.encode_tensor(docs_train)  # (number of characters,)
loader = torch.utils.data.DataLoader(
    SingleTokenDataset(char_ids),
    batch_size=4,
    shuffle=True,
    generator=torch.Generator().manual_seed(0),
)
article_batch = next(iter(loader))
print(
    f"the article's batch: shape {tuple(article_batch.shape)}, characters "
    f"{char_tok.decode(article_batch.tolist())!r}"
)

window = causal_lm_batch(
    char_ids, batch_size=2, block_size=24, generator=torch.Generator().manual_seed(0)
)
print(
    f"a language-model batch: inputs {tuple(window['idx'].shape)}, targets "
    f"{tuple(window['targets'].shape)}"
)
for x_row, y_row in zip(window["idx"], window["targets"]):
    print(
        f"  input  {char_tok.decode(x_row.tolist())!r}\n"
        f"  target {char_tok.decode(y_row.tolist())!r}"
    )
assert article_batch.dim() == 1  # no time axis: nothing to attend over, no targets
assert torch.equal(
    window["idx"][:, 1:], window["targets"][:, :-1]
)  # targets are the inputs shifted by one

# %% [markdown]
# ## Your own text
#
# The package has a command line that trains a character-level GPT on any UTF-8 file with exactly
# these two pieces, holding out the last 10% for validation, and samples from it:
#
# ```bash
# python -m aigc_book train-gpt --text my_text.txt --n-layer 4 --n-head 4 --n-embd 128 --block-size 64 \
#        --batch-size 12 --steps 2000 --out runs/mine
# python -m aigc_book sample --model runs/mine --prompt "Once upon a time" --max-new-tokens 300
# ```
#
# Its last line of output is a JSON summary (parameters, milliseconds per step, tokens per second,
# training and validation loss in nats per character). `benchmarks/train_gpt.py` runs the same
# training on Python's documentation side by side with nanoGPT's model and training loop and
# reports the step time, tokens per second and the fraction of the CPU's measured matrix-multiply
# peak.
#
# ## Summary
#
# * A language model's cross-entropy is the entropy of the text plus the model's KL divergence
#   from it. On a generated language we computed the entropy exactly — the floor — and checked it
#   by enumerating every possible sequence of a short length and by a Monte-Carlo estimate with its
#   standard error. For the trained GPT we computed the KL itself, prefix by prefix: the gap between
#   its validation loss and the floor is that KL, within the validation set's sampling error.
# * Tokenizers trade vocabulary size for sequence length. BPE counts adjacent pairs and merges the
#   most frequent, again and again; our hand-run merges equal the package's `ByteBPE`, which
#   round-trips any text and matches Hugging Face's BPE in compression.
# * An n-gram model stalls above the floor because the language's rules reach further back than
#   any fixed window, and longer windows run out of data.
# * Gradient descent, momentum, Adam and AdamW are a few lines each, and equal `torch.optim` step for
#   step. Under Adam an L2 term in the loss is not weight decay: it over-decays weights with small
#   gradients and hardly touches those with large ones; AdamW decays every weight by the same
#   fraction. The book decays matrices only, and warms the learning rate up before a cosine decay.
# * A small GPT trained with next-token prediction gets close to the floor; the forbidden tokens it
#   still gives some probability explain how often its samples break a rule.
# * MLM, NSP, permutation LM and span corruption turn the same data into different questions, and
#   only left-to-right objectives give a model that generates. How the objectives ranked on our
#   probe is printed with its noise, from one seed each. GPT and ChatGPT are pretrained with the
#   causal objective.
#
# ## Exercises
#
# These exercises are also a graded assignment, `assignments/03_language_modeling.py`: a teacher
# builds it with `python3 tools/book.py assignments` (see the teacher's page, `teaching.md`).
# Exercises marked *(autograded)* are checked by tests; those marked *(open)* are graded by hand.
# The assignment shrinks the training runs to tiny seeded models that train in seconds.
#
# 1. **Distance.** *(autograded)* Split the closer probe by the distance between a closer and its
#    opener. At what distance does the n-gram fall to chance? Does the GPT? *Hint:* keep your own
#    stack while scanning the sequence, as the probe cell does.
# 2. **The floor moves.** *(autograded)* Set `p_close` to 0.2 in `LanguageConfig`. Predict whether
#    the floor goes up or down before computing it, then retrain the GPT. Is the gap to the floor
#    larger or smaller?
# 3. **RoBERTa, properly.** *(open)* Repeat the MLM vs MLM + NSP comparison with three seeds each
#    and report the mean and spread of the masked-token accuracy. Is the difference larger than the
#    spread? Do the same for the closer probe's ranking.
# 4. **Partial prediction.** *(autograded)* XLNet predicts only the last $1/K$ of each order
#    (`predict_fraction`). Train with `predict_fraction=1/6` for the same number of steps. What
#    happens to the left-to-right cross-entropy and to the probe? Why might predicting only
#    late-in-the-order tokens help optimisation?
# 5. **Resume.** *(autograded)* Train the GPT for half its steps, save a checkpoint with
#    `save_checkpoint`, start a new Python process, load it and train the rest. Check with
#    `torch.equal` that the weights equal those of an uninterrupted run. Which random states would
#    break this if they were not saved?
# 6. **Tokens for English.** *(autograded)* Train our BPE with vocabularies of 300, 1,000 and 4,000
#    on the Python documentation. Plot characters per token on the held-out tail against vocabulary
#    size.
# 7. **Where the KL lives.** *(autograded)* Split the GPT's exact KL by the kind of token the truth
#    allows next (only words and openers, or also a closer) and by depth. Where does the model lose
#    most?
# 8. **L2 is not decay, in training.** *(autograded)* Replace the GPT trainer's optimizer by
#    `torch.optim.Adam(..., weight_decay=0.1)` (an L2 term) with the same two parameter groups, and
#    train again. Compare the validation loss and the norms of the embedding and output matrices
#    with the AdamW run.
# 9. **Without warm-up.** *(autograded)* Train the GPT with `warmup_steps=0` at the chapter's peak
#    learning rate, and at three times that rate. Does either run hit a `NonFiniteLossError` or end
#    worse?
#
# ## Key terms
#
# | English | 中文 | Meaning here |
# |---|---|---|
# | {term}`cross-entropy` | 交叉熵 | A model's mean surprise (−log q) on text from the true process, in nats per token. |
# | {term}`entropy (rate)` | 熵（率） | The expected surprise per token of the true process; the floor of the cross-entropy. |
# | {term}`KL divergence` | KL 散度 | The extra nats per token a model pays for differing from the truth. |
# | {term}`perplexity` | 困惑度 | e to the cross-entropy: the number of equally likely choices that would be as surprising. |
# | {term}`Monte-Carlo estimate` | 蒙特卡洛估计 | An expectation estimated by averaging over samples, with a standard error. |
# | {term}`standard error` | 标准误 | The standard deviation of an estimate; s/√n for a mean of n samples. |
# | {term}`byte-pair encoding (BPE)` | 字节对编码 | A tokenizer that merges the most frequent adjacent pair, repeatedly. |
# | {term}`merge (BPE)` | 合并（规则） | One learned rule "pair a, b becomes a new token", replayed in order when encoding. |
# | {term}`pre-token` | 预分词单元 | A piece of text (a word with its leading space) that merges never cross. |
# | {term}`n-gram model` | n 元语法模型 | Predicts from the previous n − 1 tokens, by counting. |
# | {term}`gradient descent` | 梯度下降 | Moving the weights against the gradient, scaled by the learning rate. |
# | {term}`learning rate` | 学习率 | The step size η of an update rule. |
# | {term}`momentum` | 动量 | A running sum of past gradients that the weights move along. |
# | {term}`Adam` | Adam 优化器 | Per-weight steps: a running mean of gradients divided by the root of a running mean of their squares. |
# | {term}`bias correction` | 偏差校正 | Dividing Adam's moments by 1 − β^t, undoing their start at zero. |
# | {term}`L2 regularisation` | L2 正则化 | A penalty (λ/2)‖θ‖² added to the loss; under Adam it is not the same as weight decay. |
# | {term}`decoupled weight decay (AdamW)` | 解耦权重衰减（AdamW） | Shrinking weights by ηλ per step, outside Adam's normalisation. |
# | {term}`weight decay` | 权重衰减 | Shrinking weights toward zero each step; applied to matrices only. |
# | {term}`warm-up and cosine schedule` | 预热与余弦退火 | Learning rate rises linearly, then falls along a cosine. |
# | {term}`gradient clipping` | 梯度裁剪 | Scaling the gradient down when its norm exceeds a limit. |
# | {term}`causal language modelling` | 因果语言建模 | Next-token prediction with a causal mask: GPT's objective. |
# | {term}`masked language modelling (MLM)` | 掩码语言建模 | Predicting selected, mostly masked tokens from both sides: BERT's objective. |
# | {term}`next-sentence prediction (NSP)` | 下一句预测 | Classifying whether segment B follows segment A. |
# | {term}`permutation language modelling (PLM)` | 排列语言建模 | Autoregression in a sampled factorisation order, realised with attention masks: XLNet. |
# | {term}`two-stream attention` | 双流注意力 | XLNet's content and query streams, so a prediction never sees its own token. |
# | {term}`span corruption` | 片段破坏 | Replacing spans with sentinels and predicting them: T5's objective. |
# | {term}`sentinel token` | 哨兵词元 | A placeholder that marks a removed span in input and target. |
#
# ## Sources
#
# * {cite:t}`ch03-brown2020gpt3` (GPT-3).
# * {cite:t}`ch03-chen1999smoothing`.
# * {cite:t}`ch03-cover2006elements` (entropy, relative entropy and the chain rule, chapter 2).
# * {cite:t}`ch03-devlin2019bert` (BERT).
# * {cite:t}`ch03-goyal2017minibatch` (gradual warm-up).
# * {cite:t}`ch03-karpathy_nanogpt`, the baseline in `benchmarks/`, and its weight-decay groups.
# * {cite:t}`ch03-kingma2015adam` (Adam).
# * {cite:t}`ch03-liu2019roberta` (RoBERTa).
# * {cite:t}`ch03-loshchilov2017sgdr` (cosine schedule).
# * {cite:t}`ch03-loshchilov2019adamw` (AdamW).
# * {cite:t}`ch03-openai2022chatgpt`.
# * {cite:t}`ch03-polyak1964momentum` (momentum).
# * {cite:t}`ch03-radford2018gpt1` (GPT-1); {cite:t}`ch03-radford2019gpt2` (GPT-2).
# * {cite:t}`ch03-raffel2020t5` (T5).
# * {cite:t}`ch03-sennrich2016bpe` (BPE).
# * {cite:t}`ch03-vaswani2017attention` (learning-rate warm-up, §5.3).
# * {cite:t}`ch03-yang2019xlnet` (XLNet).
#
# ```{bibliography}
# :filter: docname in docnames
# :keyprefix: ch03-
# :labelprefix: 3.
# :style: unsrt
# ```

# %%
print(f"chapter executed in {time.perf_counter() - chapter_start:.1f} s")
