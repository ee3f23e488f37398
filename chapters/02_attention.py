# %% [markdown]
# # 2. Attention and the Transformer
#
# Every GPT, from GPT-1 to the model behind ChatGPT, is a stack of the same block: **{term}`attention`**
# followed by a small {term}`feed-forward network`. This chapter builds that block from one dot product
# upwards and answers these questions:
#
# 1. What does attention compute? First by hand on three words, then as matrix products.
# 2. Why is the dot product divided by $\sqrt{d_k}$?
# 3. How do masks stop a token from seeing the future or the padding?
# 4. What is {term}`multi-head attention`? (A reshape, not a loop.)
# 5. Attention alone does not know word order. What do sinusoidal, learned and rotary position
#    encodings keep?
# 6. How does the block become a whole GPT: LayerNorm, {term}`GELU`, the initialisation, where the
#    parameters sit and how many FLOPs a token costs?
# 7. What does generation cost with a {term}`KV cache`, and how much memory does the cache take?
# 8. What does attention cost as sequences grow, and what does a {term}`fused kernel` save?
# 9. Does a small trained GPT beat counting, and what do its heads look at?
#
# All the code the chapter uses lives in the package: `aigc_book.layers` (attention and masks,
# {term}`positional encodings <positional encoding>`, the KV cache, LayerNorm and the block), `aigc_book.models.transformer` (the
# stack of blocks, causal or bidirectional), `aigc_book.models.gpt` (the GPT) and
# `aigc_book.training` (the trainer and `lm_loss`). Each formula below is followed by an `assert`
# against an independent reference: a hand computation, PyTorch's own layers, PyTorch's FLOP
# counter, or Hugging Face's GPT-2.

# %%
import contextlib
import math
import platform
import re
import time

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from IPython.display import Markdown, display
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from tqdm.auto import tqdm

from aigc_book import get_device, seed_everything, use_book_style
from aigc_book.efficiency.timing import attention_timings
from aigc_book.layers.attention import (
    MultiHeadAttention,
    attention_fused,
    attention_reference,
    causal_mask,
)
from aigc_book.layers.block import TransformerBlock
from aigc_book.layers.kv_cache import KVCache
from aigc_book.layers.positions import RotaryEmbedding, apply_rope, sinusoidal_encoding
from aigc_book.models.bigram import BigramLM
from aigc_book.models.gpt import GPT
from aigc_book.models.ngram import NGramLM
from aigc_book.models.transformer import Transformer, TransformerConfig
from aigc_book.text.char_tokenizer import CharTokenizer
from aigc_book.text.corpora import python_docs_text, split_train_val
from aigc_book.training.evaluation import lm_loss
from aigc_book.training.objectives import causal_lm_batch, causal_lm_loss
from aigc_book.training.trainer import TrainConfig, Trainer, lr_at

use_book_style()
device = get_device()
seed_everything(0)
chapter_start = time.perf_counter()
print(f"Python {platform.python_version()}, PyTorch {torch.__version__}, device: {device}")

# %% [markdown]
# Every size and length the chapter uses is set in the next cell. The CPU values produce the
# outputs stored with this notebook and keep the chapter within the book's budget of about two
# minutes on a 2-core laptop CPU (the last cell prints how long this run took); on a CUDA GPU the
# same experiments run larger, so the printed numbers differ from the stored ones.

# %%
GPT_SHAPE = dict(
    n_layer=4, n_head=4, n_embd=128, block_size=64
)  # the GPT we count, train and inspect
TRAIN = dict(steps=1600, batch_size=24, lr=5e-3, dropout=0.0)  # its training run
GENERATION = dict(context=1024, new_tokens=128)  # the KV-cache demonstration (context = block_size)
TIMING_LENGTHS = [128, 256, 512, 1024, 2048]  # sequence lengths timed in Figure 2.5
DEPTHS = [4, 12, 48]  # numbers of layers for the initialisation experiment (Figure 2.4)
if device.type == "cuda":
    GPT_SHAPE = dict(n_layer=6, n_head=6, n_embd=192, block_size=128)
    TRAIN = dict(steps=3000, batch_size=32, lr=2e-3, dropout=0.1)
    GENERATION = dict(context=1024, new_tokens=512)
    TIMING_LENGTHS = [512, 1024, 2048, 4096, 8192]
for name, value in (
    ("GPT_SHAPE", GPT_SHAPE),
    ("TRAIN", TRAIN),
    ("GENERATION", GENERATION),
    ("TIMING_LENGTHS", TIMING_LENGTHS),
    ("DEPTHS", DEPTHS),
):
    print(f"{name:<15}{value}")

# %% [markdown]
# ## Attention by hand
#
# *What does one attention step compute for one word?*
#
# Each token arrives as a vector. Attention lets every token build a new vector as a **weighted
# average of the other tokens' vectors**, where the weights say how relevant each other token is.
# Three roles are involved. The **{term}`query <query, key, value>`** $q_i$ is what token $i$ is looking for; the **key** $k_j$
# is what token $j$ offers to be matched against; the **value** $v_j$ is what token $j$ passes on
# if it is chosen. Relevance is the dot product $q_i \cdot k_j$, scaled by $1/\sqrt{d_k}$ (the
# next section explains why), and a **softmax** turns the scores of one query into weights that
# are positive and sum to one:
#
# $$s_{ij} = \frac{q_i \cdot k_j}{\sqrt{d_k}}, \qquad
#   a_{ij} = \frac{e^{s_{ij}}}{\sum_{j'} e^{s_{ij'}}}, \qquad
#   o_i = \sum_j a_{ij}\, v_j .$$
#
# Take three words with two-dimensional vectors, and (for now) let each vector be its own query,
# key and value. Everything below is plain Python arithmetic.

# %%
# NBVAL_CHECK_OUTPUT
words = ["the", "cat", "sat"]
vectors = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]
d_k = 2

scores = [[sum(qc * kc for qc, kc in zip(q, k)) / math.sqrt(d_k) for k in vectors] for q in vectors]
weights = [[math.exp(s) / sum(math.exp(t) for t in row) for s in row] for row in scores]
outputs = [[sum(w * v[c] for w, v in zip(row, vectors)) for c in range(d_k)] for row in weights]

print(f"{'query':<6}{'scores (the, cat, sat)':<28}{'weights (the, cat, sat)':<28}output")
for word, s, w, o in zip(words, scores, weights, outputs):
    print(
        f"{word:<6}{'  '.join(f'{x:6.4f}' for x in s):<28}{'  '.join(f'{x:6.4f}' for x in w):<28}"
        f"({o[0]:.4f}, {o[1]:.4f})"
    )

X = torch.tensor(vectors, dtype=torch.float64)
out, attn_weights = attention_reference(X, X, X, return_weights=True)
assert torch.allclose(attn_weights, torch.tensor(weights, dtype=torch.float64), atol=1e-15)
assert torch.allclose(out, torch.tensor(outputs, dtype=torch.float64), atol=1e-15)
assert torch.allclose(F.scaled_dot_product_attention(X, X, X), out, atol=1e-15)
assert (
    weights[0][0] == weights[0][2] > weights[0][1]
)  # "the": itself and "sat" tie, "cat" gets less
assert max(weights[2]) == weights[2][2]  # "sat" keeps the largest share for itself
assert all(abs(sum(row) - 1) < 1e-15 for row in weights)
print(
    "attention_reference and PyTorch's scaled_dot_product_attention agree with the hand computation"
)

# %% [markdown]
# Read the first row: "the" $=(1,0)$ matches itself and "sat" $=(1,1)$ equally (dot product 1)
# and "cat" $=(0,1)$ not at all (dot product 0), so "the" gives itself and "sat" the same weight
# and "cat" less. "sat" overlaps with both others and most with itself, so it keeps the largest
# share for itself. Every row of weights sums to one (the asserts check all three statements):
# each output is an average of the value vectors, pulled towards the most relevant ones.
#
# ## Attention as matrices
#
# *How is this computed for every token at once?*
#
# In a real model the query, key and value are three different **learned linear projections** of
# the token vector $x_i$: $q_i = x_i W_Q$, $k_i = x_i W_K$, $v_i = x_i W_V$. Stacking the $T$
# tokens as the rows of $X$ gives $Q = XW_Q$, $K = XW_K$, $V = XW_V$, and all the sums above become
# two matrix products (Vaswani et al. 2017, eq. 1):
#
# $$\operatorname{Attention}(Q, K, V) = \operatorname{softmax}\!\left(\frac{QK^\top}{\sqrt{d_k}}\right) V .$$
#
# $QK^\top$ is the $T\times T$ table of all scores; softmax acts on each row. In this chapter $V$
# is always this value matrix; the size of the vocabulary is written $n_\text{vocab}$. The cell
# checks the matrix form against a loop over the queries, one at a time.

# %%
# NBVAL_CHECK_OUTPUT
gen = torch.Generator().manual_seed(0)
T, d_model, d_k = 5, 8, 4
X = torch.randn(T, d_model, generator=gen, dtype=torch.float64)
W_Q, W_K, W_V = (torch.randn(d_model, d_k, generator=gen, dtype=torch.float64) for _ in range(3))
Q, K, V = X @ W_Q, X @ W_K, X @ W_V  # (T, d_k) each
A = torch.softmax(Q @ K.T / math.sqrt(d_k), dim=-1)  # (T, T): row i = weights of query i
O = A @ V  # (T, d_k)
print(
    f"X {tuple(X.shape)} -> Q, K, V {tuple(Q.shape)} -> scores QK^T {tuple((Q @ K.T).shape)} "
    f"-> output {tuple(O.shape)}"
)

rows = []
for i in range(T):  # one query at a time, as in the hand computation
    s = torch.stack([Q[i] @ K[j] for j in range(T)]) / math.sqrt(d_k)
    rows.append((torch.exp(s) / torch.exp(s).sum()) @ V)
assert torch.allclose(O, torch.stack(rows), atol=1e-12)
assert torch.allclose(attention_reference(Q, K, V), O, atol=1e-12)
assert torch.allclose(attention_fused(Q, K, V), O, atol=1e-12)
print("matrix form == per-query loop == attention_reference == attention_fused")

# %% [markdown]
# Two implementations of the formula live in `aigc_book.layers.attention`. `attention_reference`
# writes it out as above and stores the $T\times T$ scores and weights. `attention_fused` calls
# PyTorch's `scaled_dot_product_attention`, one function behind which PyTorch chooses, call by
# call, among several kernels according to the device, the dtype and the mask; some work in tiles
# and never store the score table (the FlashAttention idea, Dao et al. 2022), one is the written-out
# formula in C++. Section "The cost of attention" records which kernel ran here and what it
# stored. The model uses the fused function; the tests prove the two equal, in float64, with and
# without masks.
#
# ## Why divide by $\sqrt{d_k}$?
#
# *What goes wrong with the plain dot product when vectors get longer?*
#
# If the components of $q$ and $k$ are independent with mean 0 and variance 1, then
# $q\cdot k=\sum_{c=1}^{d_k} q_c k_c$ is a sum of $d_k$ independent terms of variance 1, so its
# variance is $d_k$ (Vaswani et al. 2017, footnote 4). Its typical size grows like $\sqrt{d_k}$.
# Dividing by $\sqrt{d_k}$ brings the variance back to 1 whatever the head size. We measure it.

# %%
gen = torch.Generator().manual_seed(0)
dims = [2**i for i in range(0, 11)]  # 1 ... 1024
n_pairs = 20_000
dot_var, scaled_var = [], []
for d in dims:
    q = torch.randn(n_pairs, d, generator=gen, dtype=torch.float64)
    k = torch.randn(n_pairs, d, generator=gen, dtype=torch.float64)
    dots = (q * k).sum(-1)
    dot_var.append(dots.var().item())
    scaled_var.append((dots / math.sqrt(d)).var().item())
for d, v, sv in zip(dims, dot_var, scaled_var):
    assert abs(v / d - 1) < 0.05 and abs(sv - 1) < 0.05  # Var(q.k) = d_k, Var(q.k/sqrt(d_k)) = 1
print("d_k         :", " ".join(f"{d:7d}" for d in dims))
print("Var(q.k)    :", " ".join(f"{v:7.1f}" for v in dot_var))
print("Var(scaled) :", " ".join(f"{v:7.2f}" for v in scaled_var))

# %% [markdown]
# Why does a large variance hurt? Softmax of large, spread-out scores **saturates**: nearly all the
# weight goes to the largest score. Saturation kills learning, because the softmax's derivative is
# its Jacobian $J = \operatorname{diag}(a) - a a^\top$, and when $a$ is nearly one-hot every entry of
# $J$ is nearly zero: the scores get almost no gradient. The cell measures, for one query against
# 32 random keys, the largest attention weight and the size $\lVert J\rVert_F$ of the Jacobian, with
# and without the scale, and checks the Jacobian formula against autograd.


# %%
def softmax_jacobian_norm(scores: torch.Tensor) -> torch.Tensor:
    """Frobenius norm of d softmax(s) / d s = diag(a) - a a^T, for each row of ``scores``."""
    a = torch.softmax(scores, dim=-1)
    jac = torch.diag_embed(a) - a[..., :, None] * a[..., None, :]
    return jac.flatten(-2).norm(dim=-1)


s_check = torch.randn(6, dtype=torch.float64, generator=gen)
jac_autograd = torch.autograd.functional.jacobian(lambda s: torch.softmax(s, -1), s_check)
assert torch.allclose(softmax_jacobian_norm(s_check), jac_autograd.norm(), atol=1e-12)

# %%
n_keys, n_queries = 32, 2_000
max_weight = {"unscaled": [], "scaled": []}
grad_norm = {"unscaled": [], "scaled": []}
# variance over queries of |q|^2 / d_k, which sets the spread of a query's scaled scores
sq_len_var = []
for d in dims:
    q = torch.randn(n_queries, 1, d, generator=gen, dtype=torch.float64)
    keys = torch.randn(n_queries, n_keys, d, generator=gen, dtype=torch.float64)
    sq_len_var.append((q**2).mean(-1).var().item())
    raw = (q * keys).sum(-1)  # (n_queries, n_keys) dot products
    for name, s in (("unscaled", raw), ("scaled", raw / math.sqrt(d))):
        max_weight[name].append(torch.softmax(s, -1).max(-1).values.mean().item())
        grad_norm[name].append(softmax_jacobian_norm(s).mean().item())

# %%
fig, axes = plt.subplots(1, 3, figsize=(14, 3.8), gridspec_kw={"wspace": 0.3})
axes[0].loglog(dims, dot_var, "o-", label="q·k")
axes[0].loglog(dims, scaled_var, "s-", label="q·k / √d_k")
axes[0].loglog(dims, dims, "k:", lw=1, label="slope 1 (= d_k)")
axes[0].set(
    xlabel="head dimension d_k",
    ylabel="variance of the score",
    title="(a) variance of dot products",
)
for name, style in (("unscaled", "o-"), ("scaled", "s-")):
    axes[1].semilogx(dims, max_weight[name], style, label=name)
    axes[2].loglog(dims, grad_norm[name], style, label=name)
axes[1].axhline(1 / n_keys, color="grey", ls=":", lw=1, label=f"uniform (1/{n_keys})")
axes[1].set(
    xlabel="head dimension d_k",
    ylabel="mean largest weight",
    title=f"(b) softmax saturation, {n_keys} keys",
)
axes[2].set(
    xlabel="head dimension d_k",
    ylabel="mean Frobenius norm of the Jacobian",
    title="(c) size of the softmax gradient",
)
for ax in axes:
    ax.legend()
fig.suptitle(
    "Figure 2.1: Without the 1/√d_k scale, scores grow, softmax saturates and gradients vanish",
    y=1.03,
)
plt.show()

# %%
print("d_k                     :", " ".join(f"{d:6d}" for d in dims))
for name in ("unscaled", "scaled"):
    print(f"largest weight, {name:<8}:", " ".join(f"{x:6.3f}" for x in max_weight[name]))
for name in ("unscaled", "scaled"):
    print(f"gradient norm, {name:<9}:", " ".join(f"{x:6.3f}" for x in grad_norm[name]))
i64 = dims.index(64)
below = [u < s for u, s in zip(grad_norm["unscaled"], grad_norm["scaled"])]
d_cross = dims[below.index(True)]  # from here on the unscaled gradient is the smaller one
assert all(below[below.index(True) :])
assert (
    max_weight["unscaled"][i64] > 0.5
    and max_weight["unscaled"][-1] > 0.9
    and max_weight["scaled"][-1] < 0.5
)
assert grad_norm["unscaled"][-1] < grad_norm["scaled"][-1] / 3
spread = {
    name: (min(v), max(v))
    for name, v in (("weight", max_weight["scaled"]), ("gradient", grad_norm["scaled"]))
}
spread_from_16 = {
    name: (min(v[dims.index(16) :]), max(v[dims.index(16) :]))
    for name, v in (("weight", max_weight["scaled"]), ("gradient", grad_norm["scaled"]))
}
assert spread_from_16["weight"][1] - spread_from_16["weight"][0] < 0.02  # flat from d_k = 16 on
assert spread_from_16["gradient"][1] - spread_from_16["gradient"][0] < 0.02
assert all(
    abs(v * d / 2 - 1) < 0.15 for v, d in zip(sq_len_var, dims)
)  # Var(|q|^2 / d_k) = 2 / d_k

# %%
display(
    Markdown(
        f"Without the scale, the mean largest weight climbs from {max_weight['unscaled'][0]:.3f} "
        f"at $d_k=1$ to {max_weight['unscaled'][i64]:.3f} at GPT-2's head size $d_k=64$ and "
        f"{max_weight['unscaled'][-1]:.3f} at $d_k=1024$. From $d_k={d_cross}$ on, the unscaled "
        f"gradient is the smaller one and keeps falling, to {grad_norm['unscaled'][-1]:.3f} "
        f"at $d_k=1024$ against {grad_norm['scaled'][-1]:.3f} with the scale. "
        "With the scale, over the whole range $d_k = 1 \\ldots 1024$ the largest weight stays "
        f"between {spread['weight'][0]:.3f} and {spread['weight'][1]:.3f} and the gradient norm "
        f"between {spread['gradient'][0]:.3f} and {spread['gradient'][1]:.3f}; from $d_k=16$ on "
        "both vary by less than 0.02. The variance of $\\lVert q\\rVert^2/d_k$ across queries, "
        f"which sets how spread out one query's scaled scores are, is {sq_len_var[0]:.2f} at "
        f"$d_k=1$ and {sq_len_var[-1]:.4f} at $d_k=1024$ ($2/d_k$ in theory)."
    )
)

# %% [markdown]
# What to see: (a) the variance of the raw dot product follows the dotted line $d_k$ (within the 5%
# that the first cell's assert allows), while the scaled one stays at 1. (b) Without the scale the
# softmax puts more and more of its weight on one of the 32 keys as $d_k$ grows, and (c) the
# gradient the scores receive shrinks; the numbers are in the sentences above, rendered from the
# measured values. With the scale, the weights and the gradient are *nearly* independent of $d_k$,
# not exactly: for small $d_k$ a query's squared length $\lVert q\rVert^2/d_k$, which sets the
# spread of its scores, still varies a lot from one query to the next (its variance is $2/d_k$,
# measured above), and that changes the averages a little. So the scale is not an arbitrary
# normalisation, as the source articles' readers sometimes hear: it keeps the scores' variance at 1
# and the softmax trainable, under the stated assumption of independent unit-variance components
# (a trained model's queries and keys need not have them).
#
# ## Masks, drawn
#
# *How do we stop a token from attending where it must not?*
#
# A **mask** removes some (query, key) pairs before the softmax, by setting their scores to
# $-\infty$ so that their weights become exactly 0. Two masks matter for GPT-style models.
#
# * The **{term}`causal mask`** lets token $i$ see only tokens $j \le i$. A language model predicts token
#   $i+1$ from tokens $1..i$; if it could see the future during training, it would learn to copy.
# * The **{term}`padding mask`** hides the padding tokens added to make the sequences of a batch equally
#   long.
#
# In `aigc_book` a boolean mask is **True where attention is allowed**, the convention of
# PyTorch's `scaled_dot_product_attention` (`nn.MultiheadAttention` uses the opposite one, a
# common source of bugs). Masks combine with a logical *and*.

# %%
T = 8
lengths = [8, 5]  # a batch of two sequences; the second has 3 padding tokens
causal = causal_mask(T, device=device)  # (T, T)
padding = (
    torch.arange(T, device=device)[None, :] < torch.tensor(lengths, device=device)[:, None]
)  # (B, T): True = real
combined = causal & padding[1][None, :]  # sequence 2: causal and no padded keys

gen = torch.Generator().manual_seed(1)
q, k, v = (torch.randn(2, 1, T, 4, generator=gen, dtype=torch.float64).to(device) for _ in range(3))
mask = causal & padding[:, None, None, :]  # (B, 1, T, T)
_, w = attention_reference(q, k, v, mask, return_weights=True)
assert torch.all(w[~mask.expand_as(w)] == 0)  # hidden pairs get exactly zero weight
assert torch.allclose(
    w.sum(-1), torch.ones(2, 1, T, dtype=torch.float64, device=device)
)  # rows still sum to 1
assert torch.allclose(
    attention_fused(q, k, v, mask), attention_reference(q, k, v, mask), atol=1e-12
)

fig, axes = plt.subplots(1, 4, figsize=(14, 3.6))
panels = [
    (causal, "(a) causal mask"),
    (padding[1][None, :].expand(T, T), "(b) padding mask, sequence 2"),
    (combined, "(c) causal and padding"),
    (w[1, 0], "(d) weights under (c)"),
]
for ax, (m, title) in zip(axes, panels):
    ax.imshow(m.float().cpu(), cmap="Blues", vmin=0, vmax=1)
    ax.set(
        title=title,
        xlabel="key position j",
        ylabel="query position i",
        xticks=range(T),
        yticks=range(T),
    )
    ax.grid(False)
fig.suptitle(
    "Figure 2.2: Masks as pictures (blue = may attend) and the attention weights they allow", y=1.02
)
plt.show()

# %% [markdown]
# Row $i$ of each picture is query $i$; column $j$ is key $j$. The causal mask (a) is a lower
# triangle; padding (b) blanks the last three columns; together (c) they leave a triangle cut off on
# the right. Panel (d) shows real weights computed under mask (c): the hidden cells are exactly
# zero and each row's remaining weights sum to one. The rows of the padded queries (5 to 7) still
# attend to the real tokens; their outputs are simply never used.
#
# ## Multi-head attention is a reshape
#
# *Why several heads, and how are they computed without a loop?*
#
# One softmax gives one way of weighting the context. **Multi-head attention** runs $h$ attentions
# side by side, each on its own $d_k = C/h$ slice of the projected vectors, so that one head can
# follow, say, the previous token while another follows the start of the word. The heads' outputs
# are concatenated and mixed by one more linear layer $W_O$ (Vaswani et al. 2017, §3.2.2). In code
# the heads are a **reshape**: the $C$ features of each token are viewed as $h$ groups of $d_k$,
# and the head axis is moved next to the batch axis so that one batched matrix product does all
# heads at once. The cell prints the shapes and checks the result against a loop over heads and
# against PyTorch's `nn.MultiheadAttention` with the same weights.

# %%
# NBVAL_CHECK_OUTPUT
torch.manual_seed(0)
B, T, C, H = 2, 5, 8, 2
x = torch.randn(B, T, C, dtype=torch.float64).to(device)
mha = MultiHeadAttention(C, H, causal=True).double().to(device).eval()

q, k, v = mha.c_attn(x).split(C, dim=2)  # one Linear(C, 3C) gives q, k, v: (B, T, C) each
print("q         ", tuple(q.shape), "(B, T, C)")
qh = q.view(B, T, H, C // H)
print("view      ", tuple(qh.shape), "(B, T, h, d_k)")
qh = qh.transpose(1, 2)
print("transpose ", tuple(qh.shape), "(B, h, T, d_k): heads become a batch axis")
kh, vh = (t.view(B, T, H, C // H).transpose(1, 2) for t in (k, v))
yh = attention_fused(qh, kh, vh, is_causal=True)  # (B, h, T, d_k): all heads in one call
y = mha.c_proj(yh.transpose(1, 2).reshape(B, T, C))  # heads side by side again, then W_O
print("output    ", tuple(y.shape), "(B, T, C)")

heads = []
for i in range(H):  # the slow way: one head at a time on its slice of the features
    sl = slice(i * C // H, (i + 1) * C // H)
    heads.append(attention_reference(q[..., sl], k[..., sl], v[..., sl], is_causal=True))
y_loop = mha.c_proj(torch.cat(heads, dim=-1))
assert torch.allclose(y, y_loop, atol=1e-12) and torch.allclose(mha(x), y, atol=1e-12)

ref = nn.MultiheadAttention(C, H, batch_first=True, dtype=torch.float64, device=device).eval()
with torch.no_grad():
    ref.in_proj_weight.copy_(mha.c_attn.weight)
    ref.in_proj_bias.copy_(mha.c_attn.bias)
    ref.out_proj.load_state_dict(mha.c_proj.state_dict())
y_torch, _ = ref(
    x, x, x, attn_mask=~causal_mask(T, device=device)
)  # PyTorch's mask: True = NOT allowed
assert torch.allclose(y, y_torch, atol=1e-12)
print("reshape == loop over heads == nn.MultiheadAttention")

# %% [markdown]
# The reshape costs nothing (a `view` and a `transpose` move no data), and the heads add no
# parameters: $W_Q, W_K, W_V, W_O$ are $C\times C$ whatever $h$ is. Heads split the width; they do
# not multiply it.
#
# ## Position: what attention does not know
#
# *Does attention care about word order?*
#
# Not by itself. Shuffle the tokens and the scores $q_i\cdot k_j$ are the same numbers in shuffled
# places: without position information, self-attention is **permutation-equivariant**, so "dog bites
# man" and "man bites dog" would contain the same token vectors. The cell checks this on an encoder
# whose position embedding has been zeroed.

# %%
torch.manual_seed(0)
encoder_config = TransformerConfig(
    vocab_size=20, block_size=16, n_layer=2, n_head=2, n_embd=16, causal=False
)
encoder = Transformer(encoder_config).double().to(device).eval()  # bidirectional: causal=False


def encode(ids):
    return encoder(ids).last_hidden_state  # (B, T, C)


tokens = torch.tensor([[3, 7, 1, 12, 5, 9]], device=device)
perm = torch.tensor([4, 2, 0, 5, 1, 3], device=device)
assert not torch.allclose(
    encode(tokens[:, perm]), encode(tokens)[:, perm]
)  # with positions: order matters
with torch.no_grad():
    encoder.wpe.weight.zero_()  # remove the position information
assert torch.allclose(encode(tokens[:, perm]), encode(tokens)[:, perm], atol=1e-12)
print("without positions, shuffling the input only shuffles the output")

# %% [markdown]
# Three ways to add position are in use.
#
# * **Sinusoidal** (Vaswani et al. 2017, §3.5): add to token $p$ the fixed vector
#   $PE_{p,2i} = \sin(p/10000^{2i/d})$, $PE_{p,2i+1} = \cos(p/10000^{2i/d})$. Each pair of
#   dimensions is a clock hand turning at its own speed.
# * **Learned** (GPT-2): add a trained vector per position, one row of a $T_{\max}\times C$ table.
#   Nothing is built in; the model must learn what positions mean, and it cannot go beyond $T_{\max}$.
# * **Rotary, {term}`RoPE <rotary position embedding (RoPE)>`** (Su et al. 2021): do not add anything; instead *rotate* each query and key by
#   an angle proportional to its position, pair of dimensions by pair of dimensions, with the same
#   frequencies as the sinusoids.
#
# What each preserves is a property of dot products. For sinusoids, $PE_p\cdot PE_{p+\Delta} =
# \sum_i \cos(\Delta\,\theta_i)$ depends only on the offset $\Delta$. For RoPE, rotating $q$ by
# $m\theta$ and $k$ by $n\theta$ gives $\langle R_m q, R_n k\rangle = \langle q, R_{n-m}k\rangle$:
# the **attention score itself** depends on positions only through $n-m$. Learned embeddings
# promise nothing of the kind. Figure 2.3 shows the three Gram matrices; the assert checks the
# constant diagonals numerically.

# %%
P, d = 64, 32
pe = sinusoidal_encoding(P, d, dtype=torch.float64)
assert abs(pe[3, 4].item() - math.sin(3 / 10000 ** (4 / d))) < 1e-12  # the formula, one entry
assert abs(pe[3, 5].item() - math.cos(3 / 10000 ** (4 / d))) < 1e-12

gen = torch.Generator().manual_seed(0)
cos, sin = RotaryEmbedding(d, P)(0, P, dtype=torch.float64)
q0, k0 = (
    torch.randn(d, generator=gen, dtype=torch.float64),
    torch.randn(d, generator=gen, dtype=torch.float64),
)
rope_scores = (
    apply_rope(q0.expand(P, d), cos, sin) @ apply_rope(k0.expand(P, d), cos, sin).T
)  # [m, n]
learned = torch.randn(P, d, generator=gen, dtype=torch.float64)  # an (untrained) learned table


def diagonal_spread(gram: torch.Tensor) -> float:
    """Largest range of values along any diagonal: 0 when entries depend only on n - m."""
    return max(
        (torch.diagonal(gram, o).max() - torch.diagonal(gram, o).min()).item()
        for o in range(-P + 2, P - 1)
    )


spreads = {
    "sinusoidal": diagonal_spread(pe @ pe.T),
    "rotary": diagonal_spread(rope_scores),
    "learned (random init)": diagonal_spread(learned @ learned.T),
}
for name, s in spreads.items():
    print(f"{name:<22} largest spread along a diagonal: {s:.2e}")
assert (
    spreads["sinusoidal"] < 1e-10
    and spreads["rotary"] < 1e-10
    and spreads["learned (random init)"] > 1
)
gram_sin = pe @ pe.T
assert torch.all(
    gram_sin.diagonal() >= gram_sin.max(dim=1).values - 1e-12
)  # each position most similar to itself

fig, axes = plt.subplots(1, 4, figsize=(15, 3.6))
axes[0].imshow(pe.T, aspect="auto", cmap="RdBu", vmin=-1, vmax=1)
axes[0].set(title="(a) sinusoidal PE", xlabel="position p", ylabel="dimension")
for ax, gram, title in (
    (axes[1], pe @ pe.T, "(b) sinusoidal: PE_m · PE_n"),
    (axes[2], rope_scores, "(c) rotary: score of q at m, k at n"),
    (axes[3], learned @ learned.T, "(d) learned (random): E_m · E_n"),
):
    ax.imshow(gram, cmap="viridis")
    ax.set(title=title, xlabel="position n", ylabel="position m")
for ax in axes:
    ax.grid(False)
fig.suptitle("Figure 2.3: Positional encodings and what their dot products keep", y=1.02)
plt.show()

# %% [markdown]
# What to see: in (b) and (c) every diagonal has a single colour, since the dot product is a
# function of the offset $n-m$ only; (b) is largest on the main diagonal (a position is most
# similar to itself), and (c) has its own pattern because $q \neq k$. The random table (d) has no
# such structure. Sinusoids make *similarity* relative but add it to the token vector, so the
# attention score still mixes content and absolute position; RoPE makes the *score* relative, and it
# is what LLaMA uses (Touvron et al. 2023a, §2.2). Which one to use is a `TransformerConfig` field:
# `pos_encoding="learned" | "sinusoidal" | "rope"`.
#
# ## The block and the whole GPT
#
# *How do attention and a feed-forward network make a Transformer block, and a stack of blocks a GPT?*
#
# A **Transformer block** has two sub-layers, each inside a **{term}`residual connection`** ($x + f(x)$,
# so the block only learns a correction) and a **LayerNorm**. The second sub-layer is a
# **feed-forward network** applied to each token separately: $\operatorname{GELU}(xW_1+b_1)W_2+b_2$
# with a hidden width of $4C$. GPT-2 normalises *before* each sub-layer (**{term}`pre-LN <pre-LN / post-LN>`**); the 2017
# Transformer and BERT normalise *after* the residual sum (**post-LN**):
#
# $$\text{pre-LN: } x \leftarrow x + \operatorname{Attn}(\operatorname{LN}(x)),\; x \leftarrow x + \operatorname{FFN}(\operatorname{LN}(x)) \qquad
#   \text{post-LN: } x \leftarrow \operatorname{LN}(x + \operatorname{Attn}(x)),\; x \leftarrow \operatorname{LN}(x + \operatorname{FFN}(x)).$$
#
# Pre-LN keeps an un-normalised path from input to output; Xiong et al. (2020) show that pre-LN
# Transformers can be trained without the learning-rate warm-up that post-LN ones need.
#
# ### LayerNorm and GELU, written out
#
# *What exactly do the two non-linear pieces of the block compute?*
#
# **{term}`Layer normalisation <layer normalisation>`** (Ba et al. 2016) rescales each token's vector $x \in \mathbb{R}^C$ on its
# own, over its $C$ features, then applies a learned gain $\gamma$ and bias $\beta$:
#
# $$\mu = \frac1C\sum_{c} x_c,\qquad \sigma^2 = \frac1C\sum_c (x_c-\mu)^2,\qquad
#   \operatorname{LN}(x) = \gamma \odot \frac{x-\mu}{\sqrt{\sigma^2+\epsilon}} + \beta .$$
#
# The variance divides by $C$, not $C-1$. The **GELU** activation (Hendrycks and Gimpel 2016)
# weights its input by the probability that a standard normal variable is smaller,
# $\operatorname{GELU}(x) = x\,\Phi(x)$; GPT-2 uses the tanh approximation from the same paper,
# $\tfrac12 x\bigl(1+\tanh\bigl(\sqrt{2/\pi}\,(x+0.044715\,x^3)\bigr)\bigr)$. The cell checks both
# against PyTorch, and shows that the common slip (dividing by $C-1$) is caught by the check.

# %%
# NBVAL_CHECK_OUTPUT
gen = torch.Generator().manual_seed(0)
C_ln, eps = 16, 1e-5
x = (3 * torch.randn(4, 6, C_ln, generator=gen, dtype=torch.float64) + 1).to(device)  # (B, T, C)
gamma = torch.randn(C_ln, generator=gen, dtype=torch.float64).to(device)
beta = torch.randn(C_ln, generator=gen, dtype=torch.float64).to(device)
mu = x.mean(dim=-1, keepdim=True)  # (B, T, 1): one mean per token
var = ((x - mu) ** 2).mean(dim=-1, keepdim=True)  # divides by C
ln_ours = gamma * (x - mu) / torch.sqrt(var + eps) + beta
ln_torch = F.layer_norm(x, (C_ln,), gamma, beta, eps)
torch.testing.assert_close(ln_ours, ln_torch, rtol=0, atol=1e-12)
ln_slip = (
    gamma * (x - mu) / torch.sqrt(x.var(dim=-1, keepdim=True) + eps) + beta
)  # x.var divides by C - 1
slip = (ln_slip - ln_torch).abs().max().item()
assert slip > 1e-3
print(
    f"LayerNorm written out == F.layer_norm; dividing by C - 1 instead is off by up to {slip:.3f}"
)

u = torch.linspace(-6, 6, 2001, dtype=torch.float64, device=device)
gelu_exact = u * 0.5 * (1 + torch.erf(u / math.sqrt(2)))  # x * Phi(x)
gelu_tanh = 0.5 * u * (1 + torch.tanh(math.sqrt(2 / math.pi) * (u + 0.044715 * u**3)))
torch.testing.assert_close(gelu_exact, F.gelu(u), rtol=0, atol=1e-12)
torch.testing.assert_close(gelu_tanh, F.gelu(u, approximate="tanh"), rtol=0, atol=1e-12)
gap = (gelu_tanh - gelu_exact).abs()
print(
    "GELU written out == F.gelu (exact and tanh); on [-6, 6] the tanh approximation differs from "
    f"x·Φ(x) by at most {gap.max().item():.1e} (at x = {u[gap.argmax()].item():+.2f})"
)

# %% [markdown]
# The tanh form is an approximation, and a close one: the largest gap is printed above. It matters
# only when weights trained with one form are run with the other, so the package uses the tanh form
# that GPT-2's weights were trained with. Both variants of the block are
# `TransformerBlock(norm_first=...)`; the next cell checks both against PyTorch's own
# `nn.TransformerEncoderLayer` with the same weights.

# %%
x = torch.randn(2, 6, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).to(
    device
)
for norm_first in (True, False):
    torch.manual_seed(0)
    block = TransformerBlock(16, 4, norm_first=norm_first, causal=False).double().to(device).eval()
    ref = nn.TransformerEncoderLayer(
        16,
        4,
        dim_feedforward=64,
        dropout=0.0,
        batch_first=True,
        norm_first=norm_first,
        activation=lambda h: F.gelu(h, approximate="tanh"),
        dtype=torch.float64,
        device=device,
    ).eval()
    with torch.no_grad():
        ref.self_attn.in_proj_weight.copy_(block.attn.c_attn.weight)
        ref.self_attn.in_proj_bias.copy_(block.attn.c_attn.bias)
        ref.self_attn.out_proj.load_state_dict(block.attn.c_proj.state_dict())
        ref.linear1.load_state_dict(block.mlp.c_fc.state_dict())
        ref.linear2.load_state_dict(block.mlp.c_proj.state_dict())
        ref.norm1.load_state_dict(block.ln_1.state_dict())
        ref.norm2.load_state_dict(block.ln_2.state_dict())
    assert torch.allclose(block(x), ref(x), atol=1e-12)
    print(
        f"{'pre-LN' if norm_first else 'post-LN'} block == "
        f"nn.TransformerEncoderLayer(norm_first={norm_first})"
    )

# %% [markdown]
# A **GPT** is then: a token embedding (an $n_\text{vocab}\times C$ table), a position embedding,
# $L$ causal blocks, a final LayerNorm, and a linear map back to $n_\text{vocab}$ scores per
# position, the **{term}`logits`**, whose softmax is the next-token distribution. GPT-2 ties that output
# matrix to the token embedding (**{term}`weight tying`**): the same $n_\text{vocab}\times C$ matrix reads
# tokens in and scores them out.
#
# The chapter's GPT is small (its shape is `GPT_SHAPE` in the settings cell) and reads characters.
# Its vocabulary is the characters of the Python documentation topics that ship with every Python
# (the corpus of chapters 1 and 3). The table counts its parameters by component; Kaplan et al.
# (2020, §2.1) approximate the non-embedding count by $12\,L\,C^2$, because each block has $4C^2$ in
# attention ($W_Q, W_K, W_V, W_O$) and $8C^2$ in the feed-forward network ($C\times 4C$ twice).

# %%
text = python_docs_text()
tokenizer = CharTokenizer.train(text)
config = TransformerConfig(vocab_size=tokenizer.vocab_size, dropout=TRAIN["dropout"], **GPT_SHAPE)
torch.manual_seed(0)
model = GPT(config).to(device)
counts = model.parameter_counts()
total = model.num_parameters()
print(
    f"n_vocab = {config.vocab_size} characters, context {config.block_size}, L = {config.n_layer} "
    f"layers, {config.n_head} heads, C = {config.n_embd}\n"
)
for name, n in counts.items():
    print(f"{name:<22}{n:>11,}  {n / total:6.1%}")
print(f"{'total':<22}{total:>11,}")
L, C, n_vocab = config.n_layer, config.n_embd, config.vocab_size
non_embedding = model.num_parameters(exclude_embeddings=True)
print(
    f"\nnon-embedding N = {non_embedding:,}; Kaplan's 12·L·C² = {12 * L * C * C:,} "
    f"(the difference is biases and LayerNorms: 13·L·C + 2·C = {13 * L * C + 2 * C:,})"
)
assert sum(counts.values()) == total
assert non_embedding == 12 * L * C * C + 13 * L * C + 2 * C
assert counts["attention"] == L * (4 * C * C + 4 * C) and counts["feed-forward"] == L * (
    8 * C * C + 5 * C
)

with torch.device("meta"):  # GPT-2 small's shape, without allocating its weights
    gpt2_small = GPT(
        TransformerConfig(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768)
    )
gpt2_counts = gpt2_small.parameter_counts()
print(
    f"GPT-2 small (n_vocab 50257, 12 layers, C = 768): {gpt2_small.num_parameters():,} "
    f"parameters, of which the token table holds {gpt2_counts['token embedding']:,} "
    f"({gpt2_counts['token embedding'] / gpt2_small.num_parameters():.0%})"
)

# %% [markdown]
# Two thirds of the block's parameters sit in the feed-forward network, one third in attention (the
# asserts check $8C^2$ against $4C^2$ per layer). In this tiny model the embeddings are a small share
# because the vocabulary has only $n_\text{vocab}$ characters (printed above); in GPT-2 small the
# token table alone is a large share of all parameters (the last line).
#
# ### GPT-2's scaled initialisation
#
# *Why are two of each block's weight matrices initialised smaller than the others?*
#
# GPT-1 initialised its weights from $\mathcal N(0, 0.02^2)$ (Radford et al. 2018, §4.1). GPT-2
# adds "a modified initialization which accounts for the accumulation on the residual path with
# model depth": the weights of the residual layers are scaled by $1/\sqrt{N}$, $N$ the number of
# residual layers (Radford et al. 2019, §2.3). The reason is a sum of variances. Each residual
# branch ends in a projection (`c_proj`, the attention's $W_O$ and the feed-forward network's
# $W_2$) and adds its output to the **{term}`residual stream`**, the vector $x$ that runs through the
# stack; if the $N$ additions are roughly independent, their variances add up, so the stream's
# variance grows linearly with depth. A block has two residual branches, so $N = 2L$, and the package
# (like nanoGPT) initialises every `c_proj.weight` with standard deviation $0.02/\sqrt{2L}$. The
# cell checks that, then measures the standard deviation of the residual stream after every block
# of freshly initialised GPTs of several depths, with the scaling and with all projections at 0.02.


# %%
def residual_stream_std(n_layer: int, scaled: bool, batch: torch.Tensor) -> list[float]:
    (
        "Standard deviation of the residual stream after the embeddings and after each block, "
        "at initialisation."
    )
    torch.manual_seed(0)
    net = (
        GPT(
            TransformerConfig(
                vocab_size=n_vocab,
                block_size=config.block_size,
                n_layer=n_layer,
                n_head=config.n_head,
                n_embd=config.n_embd,
            )
        )
        .to(device)
        .eval()
    )
    proj = [p for name, p in net.named_parameters() if name.endswith("c_proj.weight")]
    assert len(proj) == 2 * n_layer  # N = 2L residual branches
    measured = torch.cat([p.detach().flatten() for p in proj]).std().item()
    assert abs(measured / (0.02 / math.sqrt(2 * n_layer)) - 1) < 0.05  # what init_gpt2_weights did
    if not scaled:
        for p in proj:
            nn.init.normal_(p, mean=0.0, std=0.02)
    stds = []
    hooks = [
        blk.register_forward_hook(lambda mod, inp, out: stds.append(out.std().item()))
        for blk in net.transformer.h
    ]
    with torch.no_grad():
        emb = net.transformer.wpe.add(
            net.transformer.wte(batch), torch.arange(batch.size(1), device=device)
        )
        net(batch)
    for h in hooks:
        h.remove()
    return [emb.std().item(), *stds]

# %%
probe = torch.randint(
    n_vocab, (8, config.block_size), generator=torch.Generator().manual_seed(0)
).to(device)
stream = {
    (n, scaled): residual_stream_std(n, scaled, probe) for n in DEPTHS for scaled in (True, False)
}
print(f"{'layers':>6}  {'final std, 0.02/sqrt(2L)':>25}  {'final std, 0.02':>16}  {'ratio':>6}")
for n in DEPTHS:
    print(
        f"{n:>6}  {stream[n, True][-1]:>25.4f}  {stream[n, False][-1]:>16.4f}  "
        f"{stream[n, False][-1] / stream[n, True][-1]:>6.2f}"
    )
final_scaled = [stream[n, True][-1] for n in DEPTHS]
growth = stream[DEPTHS[-1], False][-1] / stream[DEPTHS[0], False][-1]
print(
    f"unscaled: {DEPTHS[-1]} layers vs {DEPTHS[0]}: std x{growth:.2f} "
    f"(sqrt of the depth ratio: {math.sqrt(DEPTHS[-1] / DEPTHS[0]):.2f}); "
    f"scaled: spread of the final std across depths {max(final_scaled) / min(final_scaled):.3f}x"
)
assert (
    max(final_scaled) / min(final_scaled) < 1.15
)  # scaled: the end of the stream does not grow with depth
assert growth > 2.5  # unscaled: it does

# %%
deep = DEPTHS[-1]
fig, ax = plt.subplots(figsize=(7, 3.8))
for scaled, style, label in (
    (True, "o-", "c_proj std 0.02/√(2L) (GPT-2)"),
    (False, "s-", "c_proj std 0.02"),
):
    ax.plot(range(deep + 1), stream[deep, scaled], style, ms=3, label=label)
ax.set(
    xlabel="position in the stack (0 = embeddings, l = after block l)",
    ylabel="std of the residual stream",
    title=f"Figure 2.4: The residual stream at initialisation, {deep} layers",
)
ax.legend()
plt.show()

# %% [markdown]
# What to see: with all projections at 0.02 the stream's standard deviation keeps growing block
# after block, and the deeper the model the larger it ends (the table: roughly like the square root
# of the depth, as a sum of independent variances predicts). With GPT-2's scaling, the stream ends
# at about the same scale whatever the depth (the spread across depths is printed). This is a
# statement about initialisation only; we did not measure here how it changes training.
#
# ### Counting FLOPs
#
# *How many floating-point operations does one token cost, and what does the usual estimate leave
# out?*
#
# A matrix product of an $m\times n$ by an $n\times p$ matrix takes $mnp$ multiply-adds, counted as
# $2mnp$ FLOPs. Kaplan et al. (2020, Table 1) add these up per token: a weight matrix with $P$ entries
# costs $2P$ {term}`FLOPs per token` in the forward pass, so the non-embedding weights cost $2N$. Attention
# adds a term that no weight matrix accounts for: a query is compared with the keys of $n_\text{ctx}$
# positions ($QK^\top$: $n_\text{ctx}\,d_\text{attn}$ multiply-adds per token and layer,
# $d_\text{attn} = C$ for all heads together) and the weights average $n_\text{ctx}$ values
# ($AV$: as many again). Over the full $T\times T$ table that is $4\,L\,n_\text{ctx}\,C$ FLOPs per
# token. Kaplan's Table 1 writes $C_\text{forward} = 2N + 2\,L\,n_\text{ctx}\,d_\text{attn}$ (its
# "Attention: Mask" row), half of that: about what a kernel that skips the hidden upper triangle must
# compute, since query $i$ needs only $i+1$ keys. The same table lists, and leaves out of the
# total, the embeddings ($4C$ per token) and the output layer ("De-embed", $2\,C\,n_\text{vocab}$),
# and omits biases, LayerNorm and the softmax as sub-leading. The backward pass costs about twice
# the forward pass, hence $6N$ per token for training (§2.1). `GPT.flops_per_token` implements this
# estimate.
#
# To check it we need a count that does not come from the same formula. PyTorch's `FlopCounterMode`
# watches every operator that actually runs and counts the FLOPs of each matrix product from its
# shapes. Two traps. It counts only operators it has a formula for: on a CPU with PyTorch 2.13 the
# fused attention kernel (`aten._scaled_dot_product_flash_attention_for_cpu`) has none, so we
# first count with the written-out attention (`MultiHeadAttention.fused = False`), and then register
# the missing formula with `register_flop_formula`. And, like the written-out attention, PyTorch's
# formula counts the full $T\times T$ table, masked half included.


# %%
def count_flops(fn) -> int:
    """FLOPs of every matrix product that ``fn()`` runs, as counted by PyTorch."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def set_fused(net: GPT, fused: bool) -> None:
    for blk in net.transformer.h:
        blk.attn.fused = fused


T_ctx = config.block_size
idx = torch.randint(n_vocab, (2, T_ctx), generator=torch.Generator().manual_seed(0)).to(device)
n_tok = idx.numel()
set_fused(model, False)  # written-out attention: two bmm's per layer that the counter sees
forward = count_flops(lambda: model(idx)) // n_tok
training = count_flops(lambda: model(idx, idx).loss.backward()) // n_tok
model.zero_grad(set_to_none=True)

matrices = 2 * 12 * L * C * C  # every weight matrix of the blocks, 2 FLOPs per weight
attention_full = 4 * L * T_ctx * C  # QK^T and AV over the full T x T table
head_flops = 2 * C * n_vocab  # the output layer ("De-embed")
assert forward == matrices + attention_full + head_flops
assert training == 3 * forward  # backward = 2 x forward, product by product
kaplan = model.flops_per_token()  # 2N + 2 L n_ctx C, N with biases and LayerNorms
small = 2 * (13 * L * C + 2 * C)  # biases and LayerNorm parameters inside N
assert kaplan == matrices + small + 2 * L * T_ctx * C
assert model.flops_per_token(training=True) == 3 * kaplan

rows = [
    ("weight matrices, 2 x 12LC²", matrices, matrices),
    ("biases and LayerNorms (in N)", 0, small),
    ("attention, QK^T and AV", attention_full, 2 * L * T_ctx * C),
    ("output layer, 2 C n_vocab", head_flops, 0),
    ("embedding look-ups", 0, 0),
]
print(f"forward FLOPs per token at context {T_ctx}:")
print(f"{'term':<32}{'FlopCounterMode':>16}{'flops_per_token':>17}")
for name, counted, estimated in rows:
    print(f"{name:<32}{counted:>16,}{estimated:>17,}")
print(f"{'total':<32}{forward:>16,}{int(kaplan):>17,}")
print(
    f"training (forward + backward): counted {training:,} = 3 x forward; "
    f"estimate {model.flops_per_token(training=True):,.0f}"
)
print(
    f"left out of the estimate: the output layer, {head_flops:,} FLOPs/token "
    f"= {head_flops / forward:.1%} of the counted forward pass, and half of the counted attention, "
    f"{attention_full // 2:,} = {attention_full / 2 / forward:.1%}"
)
g = gpt2_small.config
gpt2_head = 2 * g.n_embd * g.vocab_size
print(
    f"GPT-2 small at context {g.block_size}: estimate {gpt2_small.flops_per_token():,.0f} "
    f"FLOPs/token; its output layer adds {gpt2_head:,} "
    f"({gpt2_head / (gpt2_small.flops_per_token() + gpt2_head):.0%} of the sum)"
)

# %% [markdown]
# Every term of the counted forward pass is accounted for exactly (the asserts), and the backward
# pass counts exactly twice the forward. The estimate differs from the count in three places: it
# counts half the attention table, it leaves out the output layer, and it counts biases and
# LayerNorm parameters as if they were matrix weights. For this small model and short context the
# gaps are a few per cent (printed); for GPT-2 small, whose output layer multiplies by a
# $768\times 50257$ matrix, leaving out the output layer matters much more (the last line). Now the
# fused kernel: what does the counter see with it, before and after we register a formula?

# %%
from torch.utils.flop_counter import (
    flop_registry,
    register_flop_formula,
    sdpa_backward_flop_count,
    sdpa_flop_count,
)

set_fused(model, True)
fused_before = count_flops(lambda: model(idx)) // n_tok
print(
    f"fused kernel on {device.type}, as PyTorch ships: the counter sees "
    f"{fused_before - matrices - head_flops:,} attention FLOPs per token"
)
cpu_kernel = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
cpu_kernel_backward = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward
print(f"formula registered for {cpu_kernel}: {cpu_kernel in flop_registry}")
if cpu_kernel not in flop_registry:  # the guard lets the cell run twice
    register_flop_formula(cpu_kernel)(
        lambda q, k, v, *args, out_shape=None, **kwargs: sdpa_flop_count(q, k, v)
    )
    register_flop_formula(cpu_kernel_backward)(
        lambda grad_out, q, k, v, *args, out_shape=None, **kwargs: sdpa_backward_flop_count(
            grad_out, q, k, v
        )
    )
fused_forward = count_flops(lambda: model(idx)) // n_tok
fused_training = count_flops(lambda: model(idx, idx).loss.backward()) // n_tok
model.zero_grad(set_to_none=True)
assert fused_forward == forward
assert (
    fused_training == training + attention_full // 2
)  # the fused backward recomputes QK^T once more
print(
    f"with a formula: forward {fused_forward:,} (= written-out), "
    f"forward + backward {fused_training:,} (= written-out + {attention_full // 2:,}: "
    "the backward recomputes the scores)"
)

# %% [markdown]
# If the first line above reports 0 attention FLOPs, the counter had no formula for the kernel that
# ran, and any utilisation figure computed from such a count would be too low. With the formula
# registered, the fused forward pass counts the same as the written-out one. Its backward pass
# counts one product more: FlashAttention does not store the $T\times T$ weights, so its backward
# pass recomputes the scores (Dao et al. 2022, §3.1), which PyTorch's backward formula includes.

# %% [markdown]
# ### Proven equal: our GPT and Hugging Face's GPT-2
#
# *Is this really GPT-2's architecture?*
#
# Our parameter names and shapes follow GPT-2, so `aigc_book.models.hf_gpt2` converts a model to a
# Hugging Face `GPT2LMHeadModel` (built from a `GPT2Config` with random weights: nothing is
# downloaded) and back. Same weights must give the same logits.

# %%
# (imports transformers: a few seconds)
from aigc_book.models.hf_gpt2 import from_hf_gpt2, to_hf_gpt2  # noqa: E402

model64 = model.double().eval()
hf_model = to_hf_gpt2(model64)  # same device and dtype as our model
sample = torch.tensor([tokenizer.encode("def attention(q, k, v):")], device=device)
ours_logits = model64(sample)[0]
hf_logits = hf_model(sample).logits
torch.testing.assert_close(ours_logits, hf_logits, rtol=1e-10, atol=1e-12)
back = from_hf_gpt2(hf_model)
torch.testing.assert_close(back(sample)[0], ours_logits, rtol=0, atol=0)
print(
    f"{type(hf_model).__name__}: largest logit difference "
    f"{(ours_logits - hf_logits).abs().max().item():.1e} over {ours_logits.numel():,} logits "
    "(float64); converting back is exact"
)
model = model.float()

# %% [markdown]
# ## Generating, and the KV cache
#
# *Why does generation get faster if we remember keys and values, and what does it still cost?*
#
# A GPT generates one token at a time: run the model on the text so far, choose the next token
# from the last position's distribution, append it, repeat. There are two ways to choose.
# **{term}`Greedy decoding <greedy decoding>`** always takes the most probable token (`temperature=0` in `GPT.generate`): it
# is deterministic and tends to repeat itself. **{term}`Sampling <sampling>`** draws the token at random from
# $\operatorname{softmax}(z/\text{temperature})$, optionally only among the `top_k` most probable;
# a temperature below 1 sharpens the distribution, above 1 flattens it.
#
# Run naively, step $t$ recomputes the keys and values of all $t$ earlier tokens, although they
# have not changed (a causal mask means earlier tokens never see later ones). A **KV cache** keeps
# each layer's keys and values; each step then feeds only the newest token, computes its query, key
# and value, and attends over the cache. `GPT.generate(..., use_cache=True)` does this; the tests
# check that it produces exactly the tokens of the uncached loop. Here the same check, greedy and
# sampled, on a model with a longer context, with timings.

# %%
torch.manual_seed(0)
long_model = GPT(
    TransformerConfig(
        vocab_size=n_vocab,
        block_size=GENERATION["context"],
        n_layer=config.n_layer,
        n_head=config.n_head,
        n_embd=config.n_embd,
    )
).to(device)
prompt = torch.tensor([tokenizer.encode("The ")], device=device)
n_new = GENERATION["new_tokens"]
results = {}
for use_cache in (False, True):
    start = time.perf_counter()
    results[use_cache] = long_model.generate(prompt, n_new, temperature=0, use_cache=use_cache)
    if device.type == "cuda":
        torch.cuda.synchronize()
    results[use_cache, "s"] = time.perf_counter() - start
assert torch.equal(results[True], results[False])
sampled = [
    long_model.generate(
        prompt,
        n_new,
        temperature=1.0,
        top_k=20,
        use_cache=use_cache,
        generator=torch.Generator(device=device).manual_seed(0),
    )
    for use_cache in (False, True)
]
assert torch.equal(
    *sampled
)  # the same random draws give the same tokens with and without the cache
print(
    f"{n_new} new tokens, greedy: without cache {n_new / results[False, 's']:.0f} tok/s, "
    f"with KV cache {n_new / results[True, 's']:.0f} tok/s "
    f"({results[False, 's'] / results[True, 's']:.1f}x); identical tokens, greedy and sampled"
)

# %% [markdown]
# The cache does not make a step cost "one token's forward pass". It removes the recomputation of
# the earlier tokens' projections and feed-forward networks, but the newest query must still be
# compared with all $t$ cached keys and average all $t$ cached values: attention at step $t$ reads
# $2\,L\,t\,C$ numbers from the cache and costs $4\,L\,t\,C$ FLOPs, which grows with $t$. The cell
# counts the FLOPs of one generation step at several positions with `FlopCounterMode` (written-out
# attention, so that every product is counted) and checks both against the formulas
# $2\cdot 12LC^2 + 4L(t+1)C + 2Cn_\text{vocab}$ with the cache and
# $(t+1)\cdot 2\cdot 12LC^2 + 4L(t+1)^2C + 2Cn_\text{vocab}$ without it.

# %%
set_fused(long_model, False)
ctx_ids = torch.randint(
    n_vocab, (1, GENERATION["context"]), generator=torch.Generator().manual_seed(0)
).to(device)
positions = [16, GENERATION["context"] // 4, GENERATION["context"] - 1]
step_flops = {}
with torch.no_grad():
    for t in positions:
        cache = long_model.new_kv_cache(1)
        long_model._last_logits(ctx_ids[:, :t], cache)  # the t earlier tokens are in the cache
        cached = count_flops(
            lambda: long_model._last_logits(ctx_ids[:, t : t + 1], cache)  # noqa: B023
        )
        uncached = count_flops(lambda: long_model._last_logits(ctx_ids[:, : t + 1]))  # noqa: B023
        attention_part = 4 * L * (t + 1) * C
        assert cached == matrices + attention_part + head_flops
        assert uncached == (t + 1) * matrices + 4 * L * (t + 1) ** 2 * C + head_flops
        step_flops[t] = (cached, attention_part, uncached)
set_fused(long_model, True)
print(
    f"{'position t':>10}  {'step with cache':>16}  {'of which attention':>19}  "
    f"{'step without cache':>19}  {'saving':>7}"
)
for t, (cached, attention_part, uncached) in step_flops.items():
    print(
        f"{t:>10}  {cached:>16,}  {attention_part:>12,} ({attention_part / cached:4.0%})  "
        f"{uncached:>19,}  {uncached / cached:6.0f}x"
    )
first, last = step_flops[positions[0]], step_flops[positions[-1]]
assert (
    last[0] > first[0] and last[1] / last[0] > first[1] / first[0]
)  # the cached step grows with t
display(
    Markdown(
        f"With the cache, a step at position {positions[-1]} costs {last[0] / first[0]:.1f} "
        f"times a step at position {positions[0]}, and attention's share of it rises "
        f"from {first[1] / first[0]:.0%} to {last[1] / last[0]:.0%}; without the cache the same "
        f"step would cost {last[2] / last[0]:.0f} times more."
    )
)

# %% [markdown]
# So the cache turns the cost of step $t$ from "a forward pass over $t$ tokens" into "a forward pass
# over one token plus attention over $t$ cached positions". For a small model with a long context the
# second part is not small (the sentence above), and it is a memory read: every step streams the
# whole cache through the processor.
#
# How big is the cache? For every layer, every stored key/value head and every position it holds
# one key and one value vector of $d_\text{head}$ numbers:
#
# $$\text{bytes} = 2 \times n_\text{layer} \times n_\text{kv heads} \times d_\text{head} \times
#   \text{positions} \times \text{batch} \times \text{bytes per number}.$$
#
# In the multi-head attention of this chapter every head has its own keys and values, so
# $n_\text{kv heads} = n_\text{head}$ and $n_\text{kv heads}\, d_\text{head} = C$. **Grouped-query
# attention** ({term}`GQA <grouped-query attention (GQA)>`, Ainslie et al. 2023) lets groups of query heads share one key/value head, so
# $n_\text{kv heads} < n_\text{head}$ and the cache shrinks by the group size; multi-query attention
# (Shazeer 2019) is the extreme $n_\text{kv heads} = 1$. The cell checks the formula against the
# bytes a `KVCache` actually allocates, for our model and for a cache shaped like a GQA model's, and
# then computes it for LLaMA-7B's configuration: 32 layers, 32 heads of 128 dimensions (Touvron et
# al. 2023a, Table 2; its model dimension 4096 divided by 32 heads), a 4,096-token context in Llama 2
# (Touvron et al. 2023b, Table 1, where GQA is used only by the 34B and 70B models), 16-bit numbers.
# That cache is built on PyTorch's `meta` device, which records shapes and dtypes without allocating
# memory.


# %%
from aigc_book.efficiency.inference import kv_cache_bytes as allocated_bytes  # what a KVCache holds
from aigc_book.efficiency.memory import kv_cache_bytes  # the formula above

c = long_model.config
ours = long_model.new_kv_cache(batch_size=1)  # n_kv_heads = n_head
assert allocated_bytes(ours) == kv_cache_bytes(c.n_layer, c.n_head, c.head_dim, c.block_size, 1, 4)
gqa_shaped = KVCache(
    c.n_layer, 2, 1, c.block_size, c.head_dim, device=device
)  # one shared key/value head
assert allocated_bytes(gqa_shaped) == kv_cache_bytes(c.n_layer, 1, c.head_dim, c.block_size, 2, 4)
print(
    f"our model: {allocated_bytes(ours) / 2**20:.1f} MiB allocated for {c.block_size} positions "
    f"(float32, {c.n_head} key/value heads of {c.head_dim}) = the formula"
)

llama_7b = dict(
    n_layer=32, n_head=32, model_dim=4096, context=4096
)  # Touvron et al. 2023a, Table 2; 2023b, Table 1
head_dim_7b = llama_7b["model_dim"] // llama_7b["n_head"]
cache_7b = KVCache(
    llama_7b["n_layer"],
    1,
    llama_7b["n_head"],
    llama_7b["context"],
    head_dim_7b,
    device="meta",
    dtype=torch.float16,
)
bytes_7b = allocated_bytes(cache_7b)
assert bytes_7b == kv_cache_bytes(
    llama_7b["n_layer"], llama_7b["n_head"], head_dim_7b, llama_7b["context"], 1, 2
)
per_token = bytes_7b / llama_7b["context"]
print(
    f"LLaMA-7B shape, float16: {per_token / 2**20:.2f} MiB per token, {bytes_7b / 2**30:.1f} GiB "
    f"for one {llama_7b['context']:,}-token sequence; its 6.7B weights (Table 2) "
    f"take {6.7e9 * 2 / 2**30:.1f} GiB"
)
for n_kv in (8, 1):
    shared = kv_cache_bytes(llama_7b["n_layer"], n_kv, head_dim_7b, llama_7b["context"], 1, 2)
    print(
        f"  the same model with {n_kv} key/value head{'s' if n_kv > 1 else ''} (hypothetical): "
        f"{shared / 2**30:.3f} GiB"
    )

# %% [markdown]
# One full-length sequence's cache is a sizeable fraction of the weights' own memory (both printed),
# and a batch of sequences multiplies it. Llama 2's larger models use GQA "for improved inference
# scalability" (Touvron et al. 2023b, Table 1); the two hypothetical lines show what 8 or 1 shared
# key/value heads would save on the 7B shape.

# %% [markdown]
# ## The cost of attention
#
# *How do time and memory grow with the sequence length $T$?*
#
# The score matrix has $T^2$ entries per head, and computing it takes $T^2 d_k$ multiply-adds, so
# the written-out attention's time and memory both grow like $T^2$. A tiled kernel does the same
# arithmetic block by block and keeps only running row statistics, never the full matrix (Dao et
# al. 2022): its extra memory grows like $T$, and it can skip the tiles that the causal mask hides
# entirely.
# We time one causal attention call (batch 1, 8 heads of 64) on this machine's device at the
# lengths in `TIMING_LENGTHS` and fit the slope of $\log(\text{time})$ against $\log T$: a slope of 2
# means quadratic growth.

# %%
seq_lens = TIMING_LENGTHS
timings = {
    T: attention_timings(T, device=device, repeats=3, min_seconds=0.05)
    for T in tqdm(seq_lens, desc="timing")
}
ref_times = np.array([timings[T]["written-out"] for T in seq_lens])
fused_times = np.array([timings[T]["fused"] for T in seq_lens])
fit = slice(
    1, None
)  # fit from the second length on, where the arithmetic dominates the fixed overheads
slope_ref = np.polyfit(np.log(seq_lens[fit]), np.log(ref_times[fit]), 1)[0]
slope_fused = np.polyfit(np.log(seq_lens[fit]), np.log(fused_times[fit]), 1)[0]
batch, heads, head_dim, bytes_per = 1, 8, 64, 4
score_bytes = np.array(
    [2 * batch * heads * T * T * bytes_per for T in seq_lens]
)  # scores + weights
fused_bytes = np.array(
    [batch * heads * T * (head_dim + 1) * bytes_per for T in seq_lens]
)  # output + row stats

fig, axes = plt.subplots(1, 2, figsize=(12, 4))
axes[0].loglog(seq_lens, ref_times * 1e3, "o-", label=f"written-out (slope {slope_ref:.2f})")
axes[0].loglog(seq_lens, fused_times * 1e3, "s-", label=f"fused SDPA (slope {slope_fused:.2f})")
axes[0].set(
    xlabel="sequence length T (tokens)",
    ylabel="time per call (ms)",
    title=f"(a) causal attention, forward, on {device.type}",
)
axes[1].loglog(seq_lens, score_bytes / 2**20, "o-", label="written-out: T×T scores and weights")
axes[1].loglog(seq_lens, fused_bytes / 2**20, "s-", label="tiled: output and row statistics")
axes[1].set(
    xlabel="sequence length T (tokens)",
    ylabel="intermediate memory (MiB)",
    title="(b) memory, by count",
)
for ax in axes:
    ax.set_xticks(seq_lens, [str(T) for T in seq_lens])
    ax.xaxis.set_minor_formatter(plt.NullFormatter())
    ax.legend()
fig.suptitle("Figure 2.5: Attention cost against sequence length (batch 1, 8 heads × 64)", y=1.02)
plt.show()
speedups = ref_times / fused_times
for T, r, f_, s, mb in zip(seq_lens, ref_times, fused_times, speedups, score_bytes / 2**20):
    print(
        f"T = {T:>5}: written-out {r * 1e3:8.2f} ms, fused {f_ * 1e3:7.2f} ms, speed-up {s:4.1f}x; "
        f"written-out stores {mb:7.1f} MiB of scores and weights"
    )
n_faster = int((speedups > 1).sum())
rising = bool(np.all(np.diff(speedups) > 0))
lo, hi = int(speedups.argmin()), int(speedups.argmax())
display(
    Markdown(
        f"On this run ({device.type}) the fused kernel was faster at {n_faster} of "
        f"the {len(seq_lens)} lengths; its speed-up ranged from {speedups[lo]:.1f}x "
        f"(T = {seq_lens[lo]}) to {speedups[hi]:.1f}x (T = {seq_lens[hi]}), and "
        f"it {'rose at every step' if rising else 'did not rise at every step'} from one length to "
        f"the next. Fitted slopes: written-out {slope_ref:.2f}, fused {slope_fused:.2f}."
    )
)

# %% [markdown]
# What to see in (a): the count predicts a slope of 2 for the written-out attention, and the fitted
# slope is in the legend; a slope above 2 means time grew faster than the arithmetic, which on a CPU
# usually means the $T\times T$ matrices have outgrown its caches (a plausible reading that we did
# not measure). The speed-ups are printed under the figure and summarised in the sentence above,
# from the values of this run: they differ between machines and between runs, and they are noisy
# when other programs share the CPU. `python benchmarks/attention.py` prints a fuller table, with a
# batch of 4, on yours. Panel (b) counts bytes rather than measuring them: the written-out form
# holds two $T\times T$ matrices per head (the last column of the printout), while a tiled kernel
# needs memory proportional to $T$. That difference, not the arithmetic, is what FlashAttention
# attacks on a GPU, where moving data between memory levels costs more than computing (Dao et al.
# 2022).
#
# Does the fused call really never build the $T\times T$ table? That depends on which kernel
# PyTorch picks, and on what we pass in. The next cell records every operator that runs inside one
# attention call, with a `TorchDispatchMode` (the hook that `FlopCounterMode` is built on), and lists
# the tensors it creates whose last two dimensions are $T\times T$. Four calls: the written-out
# formula; the fused function with `is_causal=True`; the fused function with the same causal mask
# passed as a boolean tensor; and the fused function restricted to PyTorch's `MATH` backend, the
# fallback it uses when no tiled kernel accepts the inputs.

# %%
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class RecordTables(TorchDispatchMode):
    """Record which ATen operators run, and every (..., T, T) tensor they return."""

    def __init__(self, T: int):
        super().__init__()
        self.T, self.kernels, self.tables = T, [], []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.kernels.append(func.overloadpacket.__name__)
        for t in tree_flatten(out)[0]:
            if (
                isinstance(t, torch.Tensor)
                and t.dim() >= 2
                and tuple(t.shape[-2:]) == (self.T, self.T)
            ):
                self.tables.append((func.overloadpacket.__name__, tuple(t.shape), t.dtype))
        return out


T_rec = TIMING_LENGTHS[len(TIMING_LENGTHS) // 2]
q, k, v = (
    torch.randn(1, 8, T_rec, 64, generator=torch.Generator().manual_seed(i)).to(device)
    for i in range(3)
)
bool_mask = causal_mask(T_rec, device=device)
calls = {
    "written-out": lambda: attention_reference(q, k, v, is_causal=True),
    "fused, is_causal=True": lambda: attention_fused(q, k, v, is_causal=True),
    "fused, boolean mask": lambda: attention_fused(q, k, v, bool_mask),
    "fused, MATH backend": lambda: attention_fused(q, k, v, is_causal=True),
}
recorded = {}
with torch.no_grad():
    for name, call in calls.items():
        with (
            sdpa_kernel(SDPBackend.MATH) if "MATH" in name else contextlib.nullcontext(),
            RecordTables(T_rec) as rec,
        ):
            call()
        recorded[name] = rec
print(
    f"T = {T_rec}, batch 1, 8 heads; a boolean T x T mask itself takes "
    f"{bool_mask.numel() * bool_mask.element_size() / 2**20:.2f} MiB"
)
for name, rec in recorded.items():
    attention_kernels = sorted(
        {k for k in rec.kernels if "attention" in k or k in ("bmm", "_softmax", "_safe_softmax")}
    )
    biggest = max(rec.tables, key=lambda r: math.prod(r[1]), default=None)
    print(
        f"{name:<23} kernels: {', '.join(attention_kernels):<52} T x T tensors created: "
        f"{len(rec.tables):>2}"
        + (f", largest {biggest[1]} {str(biggest[2]).replace('torch.', '')}" if biggest else "")
    )
assert any(len(shape) == 4 for _, shape, _ in recorded["written-out"].tables)  # (B, h, T, T) scores
assert any(len(shape) == 4 for _, shape, _ in recorded["fused, MATH backend"].tables)
assert not any(len(shape) == 4 for _, shape, _ in recorded["fused, is_causal=True"].tables)
assert bool_mask.shape == (T_rec, T_rec)

# %% [markdown]
# Read the lines from the top. The written-out formula creates several $(B, h, T, T)$ tensors: the
# scores, the masked scores, the weights. With `is_causal=True` the fused call ran a single tiled
# kernel and created no $(B, h, T, T)$ tensor. Passing the same mask as a boolean tensor changes
# that: the mask is itself a $T\times T$ tensor (one byte per entry, or $B\times T\times T$ for a
# padding-aware batch), and the recorder shows whatever PyTorch builds from it before the kernel
# runs (on a CPU, a $T\times T$ float copy of the mask). With the `MATH` backend, the "fused" function
# builds the full tables just like the written-out one. Which kernel runs is PyTorch's choice per
# call: on NVIDIA GPUs its FlashAttention kernel takes 16-bit inputs, and other dtypes or an
# explicit mask go to another kernel or to the `MATH` fallback (PyTorch's documentation of
# `scaled_dot_product_attention` lists the kernels and their conditions). So the true statement is:
# *the tiled kernels* never store the score table; whether your call uses one depends on the device,
# the dtype and the mask, and a mask you pass is a $T\times T$ tensor of its own.

# %% [markdown]
# ## What do the heads of a trained model look at?
#
# *Does a small trained GPT beat counting, and do its heads learn recognisable patterns?*
#
# ### Training the GPT, and the baselines it must beat
#
# We train the chapter's GPT on the Python documentation text to predict the next character. A
# trained model is only interesting if it beats the models that merely count, so we fit those on
# the same split: chapter 1's bigram model (add-one smoothing) and the n-gram models of chapter 3,
# which predict a character from the previous $n-1$ characters with Witten–Bell smoothing. All of
# them are scored the way `lm_loss` scores the GPT: the held-out text is cut into consecutive
# windows of `block_size + 1` characters, and every character of a window but the first is
# predicted from the earlier characters of its own window, in nats per character. The n-gram models
# get the same windows, so no model sees context that another is denied.
#
# The GPT is trained with the package's `Trainer` and the settings of the `train-gpt` command
# (`python -m aigc_book train-gpt`, used again in chapter 3), except the number of steps, the batch size and the learning rate, which come from
# `TRAIN`: AdamW with $\beta_2 = 0.99$, a linear warm-up over 100 steps and then a cosine decay to a
# tenth of the peak learning rate (`lr_at`), gradients clipped to norm 1, and **{term}`weight decay`** 0.1 on
# the weight matrices and embeddings only: `configure_optimizer` puts every tensor with two or more
# dimensions in a decayed group and biases and LayerNorm gains in a group without decay. The cell
# checks that split.

# %%
train_text, val_text = split_train_val(text, 0.1)
train_ids, val_ids = tokenizer.encode_tensor(train_text), tokenizer.encode_tensor(val_text)
T_blk = config.block_size
val_windows = torch.stack(
    [val_ids[s : s + T_blk + 1] for s in range(0, len(val_ids) - T_blk, T_blk)]
)  # (N, T + 1)
print(
    f"{len(text):,} characters: {len(train_ids):,} for training, {len(val_ids):,} "
    f"held out (the last 10%); scored on {len(val_windows)} windows of {T_blk + 1}, "
    f"{val_windows[:, 1:].numel():,} predicted characters"
)

seed_everything(0)
model = GPT(config).to(device)
train_config = TrainConfig(
    steps=TRAIN["steps"],
    lr=TRAIN["lr"],
    min_lr=TRAIN["lr"] / 10,
    warmup_steps=100,
    weight_decay=0.1,
    betas=(0.9, 0.99),
    grad_clip=1.0,
    seed=0,
)
data = {"train": train_ids, "val": val_ids}
trainer = Trainer(
    model,
    lambda split, g: causal_lm_batch(data[split], TRAIN["batch_size"], T_blk, g),
    causal_lm_loss,
    train_config,
    device=device,
    eval_fn=lambda m: {"val": lm_loss(m, val_windows)},
)
decayed, not_decayed = trainer.optimizer.param_groups
assert decayed["weight_decay"] == 0.1 and not_decayed["weight_decay"] == 0.0
assert all(p.dim() >= 2 for p in decayed["params"]) and all(
    p.dim() == 1 for p in not_decayed["params"]
)
print(
    f"weight decay on {sum(p.numel() for p in decayed['params']):,} parameters in "
    f"{len(decayed['params'])} matrices; none on {sum(p.numel() for p in not_decayed['params']):,} "
    f"in {len(not_decayed['params'])} biases and LayerNorm vectors"
)
assert math.isclose(lr_at(0, train_config), TRAIN["lr"] / 100) and math.isclose(
    lr_at(99, train_config), TRAIN["lr"]
)
assert math.isclose(
    lr_at(TRAIN["steps"], train_config), TRAIN["lr"] / 10
)  # warm-up, then cosine to a tenth

start = time.perf_counter()
history = trainer.train()
train_seconds = time.perf_counter() - start
gpt_val = lm_loss(model, val_windows)  # float32 on every device
assert (
    abs(history["evals"][-1]["val"] - gpt_val) < 0.02
)  # the trainer's own evaluation (bf16 autocast on a GPU)
print(
    f"{len(history['train_loss'])} steps of {TRAIN['batch_size']} x {T_blk} characters "
    f"in {train_seconds:.1f} s ({1e3 * train_seconds / len(history['train_loss']):.0f} ms/step); "
    f"validation loss {gpt_val:.3f} nats/char"
)

# %% [markdown]
# Now the baselines, fitted on the training text and scored on the same windows, and a table.

# %%
bigram = BigramLM.from_text(train_text, k=1.0, vocab=tokenizer)  # chapter 1's model
bigram_val = -bigram.log_probs()[val_windows[:, :-1], val_windows[:, 1:]].mean().item()
ngram_val = {
    n: NGramLM(n, n_vocab).fit(train_ids[None]).cross_entropy(val_windows) for n in range(1, 8)
}
best_n = min(ngram_val, key=ngram_val.get)


def unseen_contexts(n: int) -> float:
    (
        "Share of held-out positions whose previous n - 1 characters never occur in "
        "the training text."
    )
    seen = {train_text[j : j + n - 1] for j in range(len(train_text) - n + 2)}
    return sum(val_text[j - n + 1 : j] not in seen for j in range(n - 1, len(val_text))) / (
        len(val_text) - n + 1
    )

# %%
rows = [
    ("uniform guess", "none", math.log(n_vocab), ""),
    ("bigram, add-one (chapter 1)", "1 character", bigram_val, f"{unseen_contexts(2):.1%}"),
]
rows += [
    (
        f"{n}-gram, Witten-Bell" + ("  <- best" if n == best_n else ""),
        f"{n - 1} characters",
        ngram_val[n],
        f"{unseen_contexts(n):.1%}" if n > 1 else "",
    )
    for n in ngram_val
]
rows += [("GPT (this chapter)", f"up to {T_blk - 1} characters", gpt_val, "")]
print(
    f"{'model':<32}{'context':<22}{'nats/char':>10}{'bits/char':>10}"
    f"{'contexts unseen in training':>29}"
)
for name, context, nats, unseen in rows:
    print(f"{name:<32}{context:<22}{nats:>10.3f}{nats / math.log(2):>10.3f}{unseen:>29}")
assert gpt_val < ngram_val[best_n] - 0.05 and gpt_val < bigram_val - 0.5
seen_windows = torch.stack(
    [train_ids[s : s + T_blk + 1] for s in range(0, len(val_windows) * T_blk, T_blk)]
)
gpt_seen = lm_loss(
    model, seen_windows
)  # an equally long stretch of the training text, scored the same way
print(
    f"GPT on {len(seen_windows)} windows of training text: {gpt_seen:.3f} nats/char "
    f"(held-out: {gpt_val:.3f})"
)

# %%
fig, ax = plt.subplots(figsize=(8, 4))
steps = np.array(history["step"])
train_loss = np.array(history["train_loss"])
window = 50
smooth = np.convolve(train_loss, np.ones(window) / window, mode="valid")
ax.plot(steps, train_loss, color="C0", alpha=0.25, lw=0.8, label="training loss (one batch)")
ax.plot(steps[window - 1 :], smooth, color="C0", label=f"training loss ({window}-step mean)")
ax.axhline(bigram_val, color="C1", ls=":", label=f"bigram, validation ({bigram_val:.2f})")
ax.axhline(
    ngram_val[best_n],
    color="C3",
    ls="--",
    label=f"best n-gram ({best_n}-gram), validation ({ngram_val[best_n]:.2f})",
)
ax.axhline(gpt_val, color="C2", ls="-.", label=f"GPT at the end, validation ({gpt_val:.2f})")
ax.set(
    xlabel="optimizer step",
    ylabel="cross-entropy (nats/char)",
    ylim=(1.0, 3.5),
    title="Figure 2.6: Training the chapter's GPT against two counting baselines",
)
ax.legend(fontsize=8)
plt.show()

# %%
smooth_steps = steps[window - 1 :]
crossing = (
    smooth_steps[np.argmax(smooth < ngram_val[best_n])]
    if (smooth < ngram_val[best_n]).any()
    else None
)
display(
    Markdown(
        (
            f"The {window}-step mean of the training loss first fell below the best n-gram's "
            f"held-out loss at step {crossing} of {len(steps)}. "
            if crossing is not None
            else "The smoothed training loss never fell below the best n-gram's held-out loss. "
        )
        + f"The GPT ends at {gpt_val:.3f} nats/char on the held-out windows: "
        f"{bigram_val - gpt_val:.2f} below chapter 1's bigram and "
        f"{ngram_val[best_n] - gpt_val:.3f} below the best n-gram ({best_n}-gram, "
        f"{ngram_val[best_n]:.3f}). In perplexity, the effective number of equally likely next "
        f"characters, that is {math.exp(gpt_val):.2f} against {math.exp(ngram_val[best_n]):.2f} "
        f"and {math.exp(bigram_val):.2f}. Training took {train_seconds:.0f} s on {device.type}."
    )
)

# %% [markdown]
# The training curve is noisy because each point is one batch of training text; the sentence under
# the figure says where the smoothed curve first fell below the best n-gram's held-out loss, so a
# much shorter run would not have beaten it. The training loss ends below the held-out loss, and
# the line under the table measures the gap on an equally long stretch of training text: the model
# does better on text it was trained on. Part of that may be memorisation and part a difference
# between the two stretches of text; we did not separate them. Longer n-grams stop helping beyond the best order in
# the table. The last column shows one reason: the longer the context, the larger the share of
# held-out positions whose context never occurs in the training text, and for those the n-gram can
# only fall back to a shorter one. The GPT is not limited to a fixed number of previous characters:
# it can attend to the whole window.
#
# What does this difference look like as text? Below, 300 characters from each model after the same
# prompt: the GPT **sampled** (temperature 0.8, top-$k$ 20) and **greedy**, and the bigram sampled.
# To put numbers on "looks like words", we count how many of the words in each sample (runs of
# letters) occur as words in the training text, and how many of them are distinct.

# %%
model.eval()
prompt_text = "The return statement"
prompt_ids = torch.tensor([tokenizer.encode(prompt_text)], device=device)
gpt_sampled = tokenizer.decode(
    model.generate(
        prompt_ids,
        300,
        temperature=0.8,
        top_k=20,
        generator=torch.Generator(device=device).manual_seed(0),
    )[0].tolist()
)
gpt_greedy = tokenizer.decode(model.generate(prompt_ids, 300, temperature=0)[0].tolist())
bigram_sampled = prompt_text[:-1] + bigram.sample(
    300 + 1, torch.Generator().manual_seed(0), start=prompt_text[-1]
)
known_words = set(re.findall(r"[A-Za-z]+", train_text))


def generated_words(sample_text: str) -> list[str]:
    return re.findall(r"[A-Za-z]+", sample_text[len(prompt_text) :])


def known_share(sample_text: str) -> float:
    words = generated_words(sample_text)
    return sum(w in known_words for w in words) / max(1, len(words))


for name, sample_text in (
    ("GPT, sampled", gpt_sampled),
    ("GPT, greedy", gpt_greedy),
    ("bigram, sampled", bigram_sampled),
):
    words = generated_words(sample_text)
    print(
        f"--- {name}: {len(words)} words, {len(set(words))} distinct, "
        f"{known_share(sample_text):.0%} of them occur in the training text\n"
        f"{sample_text}\n"
    )
assert known_share(gpt_sampled) > known_share(bigram_sampled)

# %% [markdown]
# ### What the heads attend to
#
# `GPT.attention_maps(idx)` returns the attention weights of every layer and head, shape
# `(n_layer, B, n_head, T, T)`, by running the written-out attention (the fused kernel does not
# form the weights). The explorer below shows one head at a time for any sentence you type (it
# needs a running Jupyter kernel); the static figure after it shows every head for one sentence,
# for readers of the web page.

# %% tags=["remove-output"]
# NBVAL_IGNORE_OUTPUT
import ipywidgets as widgets  # noqa: E402

sentence = "The return statement leaves the current function call."


def show_head(text_in: str, layer: int, head: int):
    ids = torch.tensor([tokenizer.encode(text_in[: config.block_size])], device=device)
    maps = model.attention_maps(ids)[:, 0].cpu()  # (n_layer, n_head, T, T)
    chars = [c if c != " " else "␣" for c in tokenizer.decode(ids[0].tolist())]
    fig, ax = plt.subplots(figsize=(7, 6))
    ax.imshow(maps[layer, head], cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(len(chars)), chars, fontsize=7)
    ax.set_yticks(range(len(chars)), chars, fontsize=7)
    ax.set(
        xlabel="key (attended to)", ylabel="query (attending)", title=f"layer {layer}, head {head}"
    )
    ax.grid(False)
    plt.show()


explorer = widgets.interactive(
    show_head,
    text_in=widgets.Text(value=sentence, description="sentence"),
    layer=widgets.IntSlider(min=0, max=config.n_layer - 1, value=0, description="layer"),
    head=widgets.IntSlider(min=0, max=config.n_head - 1, value=0, description="head"),
)
explorer

# %%
ids = torch.tensor([tokenizer.encode(sentence[: config.block_size])], device=device)
maps = model.attention_maps(ids)[:, 0].cpu()  # (n_layer, n_head, T, T)
assert torch.allclose(maps.sum(-1), torch.ones(maps.shape[:-1])) and torch.all(maps.triu(1) == 0)
prev_in_sentence = maps.diagonal(offset=-1, dim1=-2, dim2=-1).mean(-1)  # (n_layer, n_head)
assert (
    prev_in_sentence[0].mean() > prev_in_sentence[1:].mean()
)  # the first layer looks at the previous character most
fig, axes = plt.subplots(
    config.n_layer, config.n_head, figsize=(12, 12 * config.n_layer / config.n_head), squeeze=False
)
for layer in range(config.n_layer):
    for head in range(config.n_head):
        ax = axes[layer, head]
        ax.imshow(maps[layer, head], cmap="viridis", vmin=0, vmax=1)
        ax.set_title(f"L{layer} H{head}: prev {prev_in_sentence[layer, head]:.2f}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.grid(False)
for layer in range(config.n_layer):
    axes[layer, 0].set_ylabel(f"layer {layer}\nquery position")
for head in range(config.n_head):
    axes[-1, head].set_xlabel(f"key position (head {head})")
fig.suptitle(f"Figure 2.7: Attention of every head on {sentence!r}", y=0.92)
plt.show()

# %% [markdown]
# Each small square is one head; row = query character, column = key character, brighter = more
# weight, and the upper triangle is dark because of the causal mask. What to see: in the first
# layer the weight lies along the diagonal just below the main one (the previous characters); in the
# later layers it forms vertical stripes, where many queries put weight on the same few earlier
# characters. One sentence is a small
# sample, so the next cell measures five statistics of every head over held-out windows instead:
#
# * **prev**: the mean weight a query puts on the character just before it;
# * **self**: the mean weight on itself;
# * **first**: the mean weight on the first position of the window;
# * **back**: how far back, in characters, the weight sits on average ($\sum_j a_{ij}(i-j)$);
# * **induction**: the weight on keys that *follow an earlier occurrence of the query's own
#   character* (if the query is "e" and an earlier "e" was followed by "x", the key "x"), next to
#   the share such keys would get from uniform attention. A head that finds the earlier occurrence
#   and looks one step past it can copy what came next, the "induction head" pattern described by
#   Olsson et al. (2022).

# %%
probe_windows = val_windows[:64, :-1].to(device)  # (64, T) held-out inputs
all_maps = model.attention_maps(probe_windows).float()  # (n_layer, B, n_head, T, T)
Tq = probe_windows.size(1)
i = torch.arange(Tq, device=device)
prev_w = all_maps[..., i[1:], i[1:] - 1].mean(dim=(1, 3))  # (n_layer, n_head), queries 1..T-1
self_w = all_maps[..., i, i].mean(dim=(1, 3))
first_w = all_maps[..., 1:, 0].mean(dim=(1, 3))
back = (
    (all_maps * (i[:, None] - i[None, :]).clamp(min=0)).sum(-1).mean(dim=(1, 3))
)  # mean distance i - j
x = probe_windows
follows_match = torch.zeros(
    x.size(0), Tq, Tq, dtype=torch.bool, device=device
)  # [b, query i, key j]
follows_match[:, :, 1:] = (
    x[:, :, None] == x[:, None, :-1]
)  # key j follows a copy of query i's character
follows_match &= (i[None, :] < i[:, None])[None]  # an earlier key: j < i
has_match = follows_match.any(-1)  # queries that have at least one such key
induction_w = (all_maps * follows_match[None, :, None]).sum(-1)  # (n_layer, B, n_head, T)
induction = induction_w.permute(0, 2, 1, 3)[..., has_match].mean(-1)  # (n_layer, n_head)
uniform = (follows_match.sum(-1) / (i + 1))[has_match].float().mean().item()
print(
    f"statistics over {x.size(0)} held-out windows of {Tq} characters (induction: "
    f"{int(has_match.sum())} queries with a match; uniform attention would give {uniform:.3f})"
)
print(f"{'head':<8}{'prev':>7}{'self':>7}{'first':>7}{'back':>7}{'induction':>11}")
for layer in range(config.n_layer):
    for head in range(config.n_head):
        print(
            f"L{layer} H{head}  {prev_w[layer, head]:7.3f}{self_w[layer, head]:7.3f}"
            f"{first_w[layer, head]:7.3f}{back[layer, head]:7.1f}{induction[layer, head]:11.3f}"
        )
prev_first_layer, prev_later = prev_w[0].mean().item(), prev_w[1:].mean().item()
back_first_layer, back_later = back[0].mean().item(), back[1:].mean().item()
assert (
    prev_first_layer > prev_later and back_first_layer < back_later
)  # the first layer is the local one
best_prev = divmod(int(prev_w.argmax()), config.n_head)
best_first = divmod(int(first_w.argmax()), config.n_head)
best_ind = divmod(int(induction.argmax()), config.n_head)
ind_ratio = induction.max().item() / uniform
display(
    Markdown(
        f"Layer 0 is the local layer: its heads put {prev_w[0].min():.2f} to {prev_w[0].max():.2f} "
        f"of their weight on the previous character and look {back[0].min():.1f} "
        f"to {back[0].max():.1f} characters back on average; the heads of the later layers "
        f"put {prev_w[1:].min():.2f} to {prev_w[1:].max():.2f} on it and look {back[1:].min():.1f} "
        f"to {back[1:].max():.1f} characters back. The strongest previous-character head is "
        f"L{best_prev[0]} H{best_prev[1]} ({prev_w.max():.2f}). "
        + (
            f"No head parks much weight on the first position: the most is {first_w.max():.2f} "
            f"(L{best_first[0]} H{best_first[1]}). "
            if first_w.max() < 0.2
            else (
                f"Head L{best_first[0]} H{best_first[1]} parks {first_w.max():.2f} of its "
                "weight on the first position. "
            )
        )
        + f"The largest induction weight is {induction.max():.3f} (L{best_ind[0]} H{best_ind[1]}), "
        f"{ind_ratio:.2f} times the {uniform:.3f} that uniform attention would give; "
        + (
            "no head puts even half of its weight on such keys."
            if induction.max() < 0.5
            else "that head puts most of its weight on such keys."
        )
    )
)

# %% [markdown]
# What the measurements support: the heads of the first layer are local (they look a few
# characters back on average) and give the previous character, the information a bigram model
# uses, more weight than the later layers do; the later layers spread their weight over a longer
# stretch of the window, which is where the GPT can get what an n-gram cannot (the sentence above
# gives the numbers, the asserts check the comparison between layers, and Figure 2.7 shows the same
# split on one sentence). What
# they do not support: we have not shown what any later head *computes*, only where its weight
# goes, and a head's weight pattern alone does not say how the rest of the model uses its output.
# Nobody programmed the local heads; next-character prediction produced them.
#
# ## The source articles' Transformer code, run
#
# *Does the encoder in the source article (000, §5) work?*
#
# The article that this book grew from gives a short PyTorch Transformer encoder. We run it exactly
# as printed.

# %%
SEED_000_CODE = '''
import torch
import torch.nn as nn

class TransformerEncoder(nn.Module):
    def __init__(self, vocab_size, embed_dim, num_heads, hidden_dim, num_layers, dropout=0.1):
        super(TransformerEncoder, self).__init__()
        self.embedding = nn.Embedding(vocab_size, embed_dim)
        self.pos_encoding = PositionalEncoding(embed_dim)
        self.layers = nn.ModuleList([
            TransformerEncoderLayer(embed_dim, num_heads, hidden_dim, dropout)
            for _ in range(num_layers)
        ])

    def forward(self, x):
        x = self.embedding(x)
        x = self.pos_encoding(x)
        for layer in self.layers:
            x = layer(x)
        return x

class TransformerEncoderLayer(nn.Module):
    def __init__(self, embed_dim, num_heads, hidden_dim, dropout=0.1):
        super(TransformerEncoderLayer, self).__init__()
        self.self_attn = nn.MultiheadAttention(embed_dim, num_heads, dropout=dropout)
        self.fc1 = nn.Linear(embed_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, embed_dim)
        self.norm1 = nn.LayerNorm(embed_dim)
        self.norm2 = nn.LayerNorm(embed_dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        residual = x
        x, _ = self.self_attn(x, x, x)
        x = self.norm1(residual + self.dropout(x))
        residual = x
        x = self.fc2(self.dropout(torch.relu(self.fc1(x))))
        x = self.norm2(residual + self.dropout(x))
        return x

class PositionalEncoding(nn.Module):
    def __init__(self, embed_dim, max_len=5000):
        super(PositionalEncoding, self).__init__()
        pe = torch.zeros(max_len, embed_dim)
        position = torch.arange(0, max_len, dtype=torch.float).unsqueeze(1)
        div_term = torch.exp(torch.arange(0, embed_dim, 2).float() * \
(-math.log(10000.0) / embed_dim))
        pe[:, 0::2] = torch.sin(position * div_term)
        pe[:, 1::2] = torch.cos(position * div_term)
        pe = pe.unsqueeze(0).transpose(0, 1)
        self.register_buffer('pe', pe)

    def forward(self, x):
        x = x + self.pe[:x.size(0), :]
        return x
'''

seed_namespace: dict = {}
exec(SEED_000_CODE, seed_namespace)  # defines the classes; nothing has run yet
try:
    seed_namespace["TransformerEncoder"](
        vocab_size=100, embed_dim=16, num_heads=2, hidden_dim=32, num_layers=2
    )
except NameError as err:
    print(f"NameError: {err}")
    construction_error = err
assert "math" in str(construction_error)

# %% [markdown]
# It fails before doing anything: `PositionalEncoding` uses `math.log`, and `math` is never
# imported. Adding the import makes it run, and that hides a worse problem. `nn.Embedding` returns
# a **batch-first** tensor `(batch, seq, dim)`, while `nn.MultiheadAttention` (without
# `batch_first=True`) and the positional encoding (`self.pe[:x.size(0)]`, a `(max_len, 1, dim)`
# buffer) both expect **sequence-first** `(seq, batch, dim)`. So the code silently treats the batch
# as the sequence: every token of sentence $b$ gets the position encoding of position $b$, and
# attention mixes tokens *across different sentences of the batch*. The test: change sentence 2
# and see whether sentence 1's output changes.

# %%
exec("import math\n" + SEED_000_CODE, seed_namespace)
torch.manual_seed(0)
seed_model = (
    seed_namespace["TransformerEncoder"](
        vocab_size=100, embed_dim=16, num_heads=2, hidden_dim=32, num_layers=2
    )
    .to(device)
    .eval()
)
batch = torch.randint(0, 100, (2, 6), generator=torch.Generator().manual_seed(0)).to(
    device
)  # (B, T) as Embedding expects
changed = batch.clone()
changed[1] = (changed[1] + 1) % 100  # change only sentence 2
with torch.no_grad():
    leak = (seed_model(batch)[0] - seed_model(changed)[0]).abs().max().item()
print(
    f"runs, output shape {tuple(seed_model(batch).shape)}; sentence 1's output moved by {leak:.3f} "
    f"when only sentence 2 changed"
)
assert leak > 1e-3

# %% [markdown]
# It runs and returns the right shape, and it is wrong: sentence 1's output depends on sentence 2.
# The correct counterpart declares its layout: `batch_first=True` for attention, a `(1, max_len,
# dim)` position table indexed by `x.size(1)`, and the missing import. The package's
# `Transformer` with `causal=False` (post-LN like the original when `norm_first=False`, with
# sinusoidal positions when `pos_encoding="sinusoidal"`) is the same model built from this chapter's
# parts; it takes an optional padding mask as well.


# %%
class PositionalEncodingFixed(nn.Module):
    """Sinusoidal encoding for batch-first input (B, T, C)."""

    def __init__(self, embed_dim: int, max_len: int = 5000):
        super().__init__()
        self.register_buffer("pe", sinusoidal_encoding(max_len, embed_dim)[None])  # (1, max_len, C)

    def forward(self, x):
        return x + self.pe[:, : x.size(1)]  # positions run along dim 1


class EncoderLayerFixed(nn.Module):
    """The article's post-LN layer with the layout made explicit."""

    def __init__(self, embed_dim, num_heads, hidden_dim, dropout=0.1):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(
            embed_dim, num_heads, dropout=dropout, batch_first=True
        )
        self.fc1, self.fc2 = nn.Linear(embed_dim, hidden_dim), nn.Linear(hidden_dim, embed_dim)
        self.norm1, self.norm2 = nn.LayerNorm(embed_dim), nn.LayerNorm(embed_dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, key_padding_mask=None):
        x = self.norm1(
            x + self.dropout(self.self_attn(x, x, x, key_padding_mask=key_padding_mask)[0])
        )
        return self.norm2(x + self.dropout(self.fc2(self.dropout(torch.relu(self.fc1(x))))))


class TransformerEncoderFixed(nn.Module):
    def __init__(self, vocab_size, embed_dim, num_heads, hidden_dim, num_layers, dropout=0.1):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed_dim)
        self.pos_encoding = PositionalEncodingFixed(embed_dim)
        self.layers = nn.ModuleList(
            EncoderLayerFixed(embed_dim, num_heads, hidden_dim, dropout) for _ in range(num_layers)
        )

    def forward(self, x):  # x: (B, T) token ids
        x = self.pos_encoding(self.embedding(x))  # (B, T, C)
        for layer in self.layers:
            x = layer(x)
        return x


# the article's math, now correct, equals our sinusoidal_encoding
pe_article = seed_namespace["PositionalEncoding"](16, max_len=50).pe[:, 0]  # (max_len, C)
assert torch.allclose(pe_article, sinusoidal_encoding(50, 16), atol=1e-5)

torch.manual_seed(0)
fixed = (
    TransformerEncoderFixed(vocab_size=100, embed_dim=16, num_heads=2, hidden_dim=32, num_layers=2)
    .to(device)
    .eval()
)
with torch.no_grad():
    leak_fixed = (fixed(batch)[0] - fixed(changed)[0]).abs().max().item()
    alone = fixed(batch[:1])[0]
assert leak_fixed < 1e-6 and torch.allclose(fixed(batch)[0], alone, atol=1e-6)
package_encoder = (
    Transformer(
        TransformerConfig(
            100,
            64,
            n_layer=2,
            n_head=2,
            n_embd=16,
            pos_encoding="sinusoidal",
            norm_first=False,
            causal=False,
        )
    )
    .to(device)
    .eval()
)
with torch.no_grad():
    assert torch.allclose(
        package_encoder(batch).last_hidden_state[0],
        package_encoder(changed).last_hidden_state[0],
        atol=1e-6,
    )
print(
    f"fixed version: sentence 1 moves by {leak_fixed} when sentence 2 changes, "
    "and equals running it alone"
)

# %% [markdown]
# The positional formula in the article was right; only the import and the layout were wrong,
# and the layout error is the dangerous kind, the kind that trains without complaint. Two habits
# prevent it: write the shape on every line that reshapes (`# (B, T, C)`), and test that examples in
# a batch do not influence each other.
#
# ## Summary
#
# * Attention gives each token a weighted average of value vectors, with weights
#   $\operatorname{softmax}(q_i\cdot k_j/\sqrt{d_k})$; for all tokens at once,
#   $\operatorname{softmax}(QK^\top/\sqrt{d_k})V$. We checked it by hand, against a loop, and against
#   PyTorch's `scaled_dot_product_attention`.
# * The dot product of random unit-variance vectors has variance $d_k$; without the $1/\sqrt{d_k}$
#   scale the softmax saturates and its gradient shrinks as $d_k$ grows (Figure 2.1). With it, the
#   weights and gradients are nearly, not exactly, independent of $d_k$.
# * Masks set scores to $-\infty$: the causal mask hides the future, the padding mask hides padding;
#   in this package True means "may attend".
# * Multi-head attention is a reshape of $C$ into $h\times d_k$ and adds no parameters; it equals
#   `nn.MultiheadAttention` with the same weights.
# * Attention alone ignores order. Sinusoidal encodings make position *similarity* depend on the
#   offset; RoPE makes the attention *score* depend on the offset; learned embeddings promise
#   neither.
# * A GPT is embeddings, $L$ pre-LN blocks and a tied output layer; about $12LC^2$ parameters sit in
#   the blocks. LayerNorm divides by $C$, GPT-2's GELU is the tanh approximation, and scaling the
#   residual projections by $1/\sqrt{2L}$ keeps the residual stream's scale at initialisation from
#   growing with depth (Figure 2.4). Ours gives the same logits as Hugging Face's GPT-2.
# * Kaplan's $2N + 2Ln_\text{ctx}C$ FLOPs per token matches PyTorch's count term by term once we
#   account for what it leaves out (the output layer, half of the attention table) and what it adds
#   (biases and LayerNorm parameters counted as weights); a FLOP counter counts only the kernels it
#   has formulas for.
# * The KV cache removes the recomputation of earlier tokens, without changing a single generated
#   token, greedy or sampled; each step still attends over all $t$ cached positions, so its cost
#   grows with $t$. The cache takes $2\,L\,n_\text{kv heads}\,d_\text{head}$ numbers per token, which
#   grouped-query attention reduces.
# * Written-out attention stores $T\times T$ tables; the tiled kernels behind
#   `scaled_dot_product_attention` do not, but which kernel runs depends on device, dtype and mask,
#   and a boolean mask is itself $T\times T$. How much faster the fused call was on this run is
#   measured, not promised (Figure 2.5 and the numbers below).
# * Trained briefly (the time is printed in its section), the chapter's GPT beats the best n-gram
#   model fitted on the same text, on the same held-out windows (Figure 2.6, numbers below). Its
#   first-layer heads look only a few characters back and weight the previous character more than
#   the later layers, which look further back.
# * The source article's encoder fails on a missing import and, once fixed, silently mixes the
#   sentences of a batch because it confuses sequence-first and batch-first layouts.
#
# The measured numbers behind these statements, from this run:

# %%
display(
    Markdown(
        "\n".join(
            [
                "* Without the scale, the mean largest weight at $d_k=1024$ "
                f"is {max_weight['unscaled'][-1]:.3f}; with it, {max_weight['scaled'][-1]:.3f}.",
                f"* Residual stream at initialisation, final std for {DEPTHS} layers: "
                f"with GPT-2's scaling {', '.join(f'{stream[n, True][-1]:.3f}' for n in DEPTHS)}; "
                f"without {', '.join(f'{stream[n, False][-1]:.3f}' for n in DEPTHS)}.",
                f"* FLOPs per token (forward, context {T_ctx}): counted {forward:,}, "
                f"estimated {kaplan:,.0f}; the output layer left out is {head_flops / forward:.1%} "
                "of the count.",
                f"* KV-cached step at position {positions[-1]} vs {positions[0]}: "
                f"{last[0] / first[0]:.1f}x the FLOPs; LLaMA-7B-shaped cache: "
                f"{per_token / 2**20:.2f} MiB per token in float16.",
                f"* Fused attention speed-up on {device.type}: "
                + ", ".join(f"{s:.1f}x (T = {T})" for T, s in zip(seq_lens, speedups))
                + f"; faster at {n_faster} of {len(seq_lens)} lengths.",
                f"* Validation loss (nats/char): GPT {gpt_val:.3f}, best n-gram ({best_n}-gram) "
                f"{ngram_val[best_n]:.3f}, bigram {bigram_val:.3f}.",
            ]
        )
    )
)

# %% [markdown]
# ## Exercises
#
# These exercises are also a graded assignment, `assignments/02_attention.py`: a teacher builds
# it with `python3 tools/book.py assignments` (see the teacher's page, `teaching.md`).
# Exercises marked *(autograded)* are checked by tests; those marked *(open)* are graded by
# hand.
#
# 1. **Sharper or flatter attention.** *(autograded)* Replace the scale $1/\sqrt{d_k}$ by
#    $\beta/\sqrt{d_k}$ in `attention_reference(..., scale=...)` and repeat Figure 2.1(b) for
#    $\beta \in \{0.25, 1, 4\}$. $\beta$ *multiplies* the scores, so it is an **inverse**
#    temperature: $\beta = 1/\tau$, where `GPT.generate`'s `temperature` $\tau$ *divides* the
#    logits. What does $\beta \to 0$ (a very high temperature) do to the weights, and what does
#    $\beta \to \infty$ do? *Hint:* one limit is uniform, the other is one-hot.
# 2. **A mask that is too strict.** *(autograded)* Build a boolean mask in which one query row is
#    all False. What do `attention_reference` and `attention_fused` return for that row, and why is
#    it not NaN? *Hint:* read the module docstring of `aigc_book.layers.attention`.
# 3. **Counting parameters.** *(autograded)* Write the parameter count of a GPT with vocabulary
#    size $n_\text{vocab}$, context $T$, $L$ layers and width $C$ as a formula (biases included)
#    and check it against `GPT.num_parameters()` for GPT-2 small ($n_\text{vocab}=50257$, $T=1024$,
#    $L=12$, $C=768$; build it on the `meta` device as above). Do you get about 124M? *Hint:* the
#    per-layer count is $12C^2 + 13C$.
# 4. **RoPE and long contexts.** *(autograded)* With `RotaryEmbedding(64, 4096)` plot the score
#    $\langle R_m q, R_{m+\Delta} q\rangle$ of a vector with itself against the offset $\Delta$.
#    Does it decay? What does that suggest about attention to far-away tokens?
# 5. **Where does the KV cache stop helping?** *(autograded)* Generate past the context length
#    (e.g. 100 tokens from a model with `block_size=64`) with and without the cache and time both.
#    Read `GPT.generate`'s docstring to explain the result.
# 6. **Heads after longer training.** *(open)* Train the chapter's GPT for twice as many steps.
#    Does the validation loss keep falling, and which head statistics in the table of the last
#    section change? *Hint:* the induction column is the one to watch.
# 7. **Counting the causal saving.** *(autograded)* Register a FLOP formula for the CPU attention
#    kernel that counts only the unmasked half of the table when `is_causal=True`, and compare the
#    count with `GPT.flops_per_token`. What is left between them?
#
# ## Key terms
#
# | English | 中文 | Meaning here |
# |---|---|---|
# | {term}`attention` | 注意力 | A weighted average of value vectors, weighted by query–key similarity. |
# | {term}`query, key, value` | 查询、键、值 | The three learned projections of each token used by attention. |
# | {term}`scaled dot-product attention` | 缩放点积注意力 | $\operatorname{softmax}(QK^\top/\sqrt{d_k})V$. |
# | {term}`softmax saturation` | softmax 饱和 | Nearly all weight on one entry, with nearly zero gradient. |
# | {term}`causal mask` | 因果掩码 | Hides later tokens from earlier ones. |
# | {term}`padding mask` | 填充掩码 | Hides the padding tokens of a batch. |
# | {term}`multi-head attention` | 多头注意力 | Several attentions on slices of the features, run as one batched product. |
# | {term}`positional encoding` | 位置编码 | Information about token order added to (or rotating) the vectors. |
# | {term}`rotary position embedding (RoPE)` | 旋转位置编码 | Rotating queries and keys so scores depend on relative position. |
# | {term}`residual connection` | 残差连接 | $x + f(x)$: the sub-layer learns a correction. |
# | {term}`residual stream` | 残差流 | The vector that runs through the stack and to which every block adds its output. |
# | {term}`layer normalisation` | 层归一化 | Rescaling each token's vector to mean 0 and variance 1 (dividing by $C$), then a learned gain and bias. |
# | {term}`GELU` | 高斯误差线性单元 | The activation $x\,\Phi(x)$; GPT-2 uses its tanh approximation. |
# | {term}`feed-forward network` | 前馈网络 | The per-token MLP of a block, hidden width $4C$. |
# | {term}`pre-LN / post-LN` | 前置/后置层归一化 | LayerNorm before each sub-layer (GPT-2) or after the residual sum (2017, BERT). |
# | {term}`scaled residual initialisation` | 残差缩放初始化 | Initialising the residual projections with std $0.02/\sqrt{2L}$ (GPT-2). |
# | {term}`weight tying` | 权重共享 | Using the token embedding matrix as the output layer. |
# | {term}`logits` | 对数几率 | The unnormalised scores whose softmax is the next-token distribution. |
# | {term}`FLOPs per token` | 每词元浮点运算数 | Floating-point operations to process one token; a multiply-add counts as 2. |
# | {term}`greedy decoding` | 贪心解码 | Always choosing the most probable next token. |
# | {term}`sampling (decoding) <sampling>` | 采样解码 | Drawing the next token from the softmax of the logits divided by a temperature. |
# | {term}`KV cache` | 键值缓存 | Stored keys and values of earlier tokens, reused at each generation step. |
# | {term}`grouped-query attention (GQA)` | 分组查询注意力 | Groups of query heads share one key/value head, shrinking the KV cache. |
# | {term}`fused kernel` | 融合算子 | One kernel for the whole attention; the tiled ones never store the score matrix. |
# | {term}`weight decay` | 权重衰减 | Shrinking weights toward zero each step; applied to matrices only. |
#
# ## Sources
#
# * {cite:t}`ch02-vaswani2017attention` (eq. 1; §3.2.2 multi-head; §3.5 sinusoidal encoding;
#   footnote 4 on the variance of dot products).
# * {cite:t}`ch02-su2021roformer` (RoFormer).
# * {cite:t}`ch02-dao2022flashattention` (§3.1: tiling, and recomputation in the backward pass).
# * {cite:t}`ch02-kaplan2020scaling` (§2.1 and Table 1, parameter and FLOP counts).
# * {cite:t}`ch02-radford2018gpt1` (GPT-1: §4.1, initialisation from $\mathcal N(0, 0.02^2)$).
# * {cite:t}`ch02-radford2019gpt2` (GPT-2: §2.3, pre-LN, weight tying, and the $1/\sqrt{N}$
#   scaling of residual layers at initialisation).
# * {cite:t}`ch02-ba2016layernorm` (layer normalization).
# * {cite:t}`ch02-hendrycks2016gelu` (GELU).
# * {cite:t}`ch02-xiong2020layernorm`.
# * {cite:t}`ch02-shazeer2019mqa` (multi-query attention).
# * {cite:t}`ch02-ainslie2023gqa` (GQA).
# * {cite:t}`ch02-touvron2023llama` (LLaMA; Table 2: the 6.7B model has dimension 4096, 32 heads,
#   32 layers).
# * {cite:t}`ch02-touvron2023llama2` (Llama 2; Table 1: 4k context; GQA in the 34B and 70B models
#   only).
# * {cite:t}`ch02-olsson2022induction` (the induction-head pattern).
# * {cite:t}`ch02-witten1991zerofrequency` (the smoothing of the n-gram baselines).
# * {cite:t}`ch02-pytorch_docs`: `torch.nn.functional.scaled_dot_product_attention` (its kernels
#   and their conditions) and `torch.utils.flop_counter`.
#
# ```{bibliography}
# :filter: docname in docnames
# :keyprefix: ch02-
# :labelprefix: 2.
# :style: unsrt
# ```

# %%
print(f"chapter executed in {time.perf_counter() - chapter_start:.1f} s")
