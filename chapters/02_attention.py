# %% [markdown]
# # 2. Attention and the Transformer
#
# Every GPT, from GPT-1 to the model behind ChatGPT, is a stack of the same block: **attention**
# followed by a small feed-forward network. This chapter builds that block from one dot product
# upwards and answers these questions:
#
# 1. What does attention compute? First by hand on three words, then as matrix products.
# 2. Why is the dot product divided by $\sqrt{d_k}$?
# 3. How do masks stop a token from seeing the future or the padding?
# 4. What is multi-head attention? (A reshape, not a loop.)
# 5. Attention alone does not know word order. What do sinusoidal, learned and rotary position
#    encodings keep?
# 6. How does the block become a whole GPT, and where do its parameters sit?
# 7. What does attention cost as sequences grow, and what does a fused kernel save?
# 8. What do the heads of a small trained model look at?
#
# All the code the chapter uses lives in the package: `aigc_book.layers` (attention and masks,
# positional encodings, the KV cache, LayerNorm and the block), `aigc_book.models.transformer` (the
# stack of blocks, causal or bidirectional) and `aigc_book.models.gpt` (the GPT). Each formula
# below is followed by an `assert` against an independent reference: a hand computation, PyTorch's
# own layers, or Hugging Face's GPT-2.

# %%
import math
import platform
import time

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from aigc_book import get_device, seed_everything, use_book_style
from aigc_book.efficiency.timing import attention_timings
from aigc_book.layers.attention import MultiHeadAttention, attention_fused, attention_reference, causal_mask
from aigc_book.layers.block import TransformerBlock
from aigc_book.layers.positions import RotaryEmbedding, apply_rope, sinusoidal_encoding
from aigc_book.models.gpt import GPT
from aigc_book.models.transformer import Transformer, TransformerConfig
from aigc_book.text.char_tokenizer import CharTokenizer
from aigc_book.text.corpora import python_docs_text, split_train_val
from aigc_book.training.evaluation import lm_loss

use_book_style()
device = get_device()
seed_everything(0)
chapter_start = time.perf_counter()
print(f"Python {platform.python_version()}, PyTorch {torch.__version__}, device: {device}")

# %% [markdown]
# ## Attention by hand
#
# *What does one attention step compute for one word?*
#
# Each token arrives as a vector. Attention lets every token build a new vector as a **weighted
# average of the other tokens' vectors**, where the weights say how relevant each other token is.
# Three roles are involved. The **query** $q_i$ is what token $i$ is looking for; the **key** $k_j$
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
    print(f"{word:<6}{'  '.join(f'{x:6.4f}' for x in s):<28}{'  '.join(f'{x:6.4f}' for x in w):<28}"
          f"({o[0]:.4f}, {o[1]:.4f})")

X = torch.tensor(vectors, dtype=torch.float64)
out, attn_weights = attention_reference(X, X, X, return_weights=True)
assert torch.allclose(attn_weights, torch.tensor(weights, dtype=torch.float64), atol=1e-15)
assert torch.allclose(out, torch.tensor(outputs, dtype=torch.float64), atol=1e-15)
assert torch.allclose(F.scaled_dot_product_attention(X, X, X), out, atol=1e-15)
print("attention_reference and PyTorch's scaled_dot_product_attention agree with the hand computation")

# %% [markdown]
# Read the first row: "the" $=(1,0)$ matches itself and "sat" $=(1,1)$ equally (dot product 1)
# and "cat" $=(0,1)$ not at all (dot product 0), so "the" takes about 40% from itself, 40% from
# "sat" and the remaining 20% from "cat". "sat" overlaps with both others and most with itself,
# so it keeps the largest share for itself. Every row of weights sums to one: each output is an
# average of the value vectors, pulled towards the most relevant ones.
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
# $QK^\top$ is the $T\times T$ table of all scores; softmax acts on each row. The cell checks the
# matrix form against a loop over the queries, one at a time.

# %%
# NBVAL_CHECK_OUTPUT
gen = torch.Generator().manual_seed(0)
T, d_model, d_k = 5, 8, 4
X = torch.randn(T, d_model, generator=gen, dtype=torch.float64)
W_Q, W_K, W_V = (torch.randn(d_model, d_k, generator=gen, dtype=torch.float64) for _ in range(3))
Q, K, V = X @ W_Q, X @ W_K, X @ W_V  # (T, d_k) each
A = torch.softmax(Q @ K.T / math.sqrt(d_k), dim=-1)  # (T, T): row i = weights of query i
O = A @ V  # (T, d_k)
print(f"X {tuple(X.shape)} -> Q, K, V {tuple(Q.shape)} -> scores QK^T {tuple((Q @ K.T).shape)} -> output {tuple(O.shape)}")

rows = []
for i in range(T):  # one query at a time, as in the hand computation
    s = torch.stack([Q[i] @ K[j] for j in range(T)]) / math.sqrt(d_k)
    rows.append((torch.exp(s) / torch.exp(s).sum()) @ V)
assert torch.allclose(O, torch.stack(rows), atol=1e-12)
assert torch.allclose(attention_reference(Q, K, V), O, atol=1e-12)
assert torch.allclose(attention_fused(Q, K, V), O, atol=1e-12)
print("matrix form == per-query loop == attention_reference == attention_fused")

# %% [markdown]
# Two implementations of the formula live in `aigc_book.layers.attention`. `attention_reference` writes it
# out as above; `attention_fused` calls PyTorch's `scaled_dot_product_attention`, which never builds
# the $T\times T$ table in memory (on a GPU it runs FlashAttention-style kernels, Dao et al. 2022).
# The model uses the fused one; the tests prove the two equal, in float64, with and without masks.
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

n_keys, n_queries = 32, 2_000
max_weight = {"unscaled": [], "scaled": []}
grad_norm = {"unscaled": [], "scaled": []}
for d in dims:
    q = torch.randn(n_queries, 1, d, generator=gen, dtype=torch.float64)
    keys = torch.randn(n_queries, n_keys, d, generator=gen, dtype=torch.float64)
    raw = (q * keys).sum(-1)  # (n_queries, n_keys) dot products
    for name, s in (("unscaled", raw), ("scaled", raw / math.sqrt(d))):
        max_weight[name].append(torch.softmax(s, -1).max(-1).values.mean().item())
        grad_norm[name].append(softmax_jacobian_norm(s).mean().item())

fig, axes = plt.subplots(1, 3, figsize=(14, 3.8), gridspec_kw={"wspace": 0.3})
axes[0].loglog(dims, dot_var, "o-", label="q·k")
axes[0].loglog(dims, scaled_var, "s-", label="q·k / √d_k")
axes[0].loglog(dims, dims, "k:", lw=1, label="slope 1 (= d_k)")
axes[0].set(xlabel="head dimension d_k", ylabel="variance of the score", title="(a) variance of dot products")
for name, style in (("unscaled", "o-"), ("scaled", "s-")):
    axes[1].semilogx(dims, max_weight[name], style, label=name)
    axes[2].loglog(dims, grad_norm[name], style, label=name)
axes[1].axhline(1 / n_keys, color="grey", ls=":", lw=1, label=f"uniform (1/{n_keys})")
axes[1].set(xlabel="head dimension d_k", ylabel="mean largest weight", title=f"(b) softmax saturation, {n_keys} keys")
axes[2].set(xlabel="head dimension d_k", ylabel="mean Frobenius norm of the Jacobian", title="(c) size of the softmax gradient")
for ax in axes:
    ax.legend()
fig.suptitle("Figure 2.1: Without the 1/√d_k scale, scores grow, softmax saturates and gradients vanish", y=1.03)
plt.show()
for d in (64, 1024):
    i = dims.index(d)
    print(f"d_k = {d:>4}: largest weight {max_weight['unscaled'][i]:.3f} unscaled vs {max_weight['scaled'][i]:.3f} "
          f"scaled; gradient norm {grad_norm['unscaled'][i]:.4f} vs {grad_norm['scaled'][i]:.4f}")
assert max_weight["unscaled"][-1] > 0.9 and max_weight["scaled"][-1] < 0.5
assert grad_norm["unscaled"][-1] < grad_norm["scaled"][-1] / 3

# %% [markdown]
# What to see: (a) the variance of the raw dot product follows the dotted line $d_k$ exactly,
# while the scaled one stays at 1. (b) Without the scale, at GPT-2's head size $d_k=64$ the softmax
# already puts most of its weight on one of the 32 keys, and at $d_k=1024$ nearly all of it (the
# numbers under the figure). (c) Beyond $d_k \approx 32$ the gradient the scores receive falls
# further and further below the scaled one.
# With the scale, the weights and the gradient do not depend on $d_k$ at all. So the scale is not
# an arbitrary normalisation, as the source articles' readers sometimes hear: it keeps the scores'
# variance at 1 and the softmax trainable.
#
# ## Masks, drawn
#
# *How do we stop a token from attending where it must not?*
#
# A **mask** removes some (query, key) pairs before the softmax, by setting their scores to
# $-\infty$ so that their weights become exactly 0. Two masks matter for GPT-style models.
#
# * The **causal mask** lets token $i$ see only tokens $j \le i$. A language model predicts token
#   $i+1$ from tokens $1..i$; if it could see the future during training, it would learn to copy.
# * The **padding mask** hides the padding tokens added to make the sequences of a batch equally
#   long.
#
# In `aigc_book` a boolean mask is **True where attention is allowed**, the convention of
# PyTorch's `scaled_dot_product_attention` (`nn.MultiheadAttention` uses the opposite one, a
# common source of bugs). Masks combine with a logical *and*.

# %%
T = 8
lengths = [8, 5]  # a batch of two sequences; the second has 3 padding tokens
causal = causal_mask(T)  # (T, T)
padding = torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]  # (B, T): True = real token
combined = causal & padding[1][None, :]  # sequence 2: causal and no padded keys

gen = torch.Generator().manual_seed(1)
q, k, v = (torch.randn(2, 1, T, 4, generator=gen, dtype=torch.float64) for _ in range(3))
mask = causal & padding[:, None, None, :]  # (B, 1, T, T)
_, w = attention_reference(q, k, v, mask, return_weights=True)
assert torch.all(w[~mask.expand_as(w)] == 0)  # hidden pairs get exactly zero weight
assert torch.allclose(w.sum(-1), torch.ones(2, 1, T, dtype=torch.float64))  # rows still sum to 1
assert torch.allclose(attention_fused(q, k, v, mask), attention_reference(q, k, v, mask), atol=1e-12)

fig, axes = plt.subplots(1, 4, figsize=(14, 3.6))
panels = [(causal, "(a) causal mask"), (padding[1][None, :].expand(T, T), "(b) padding mask, sequence 2"),
          (combined, "(c) causal and padding"), (w[1, 0], "(d) weights under (c)")]
for ax, (m, title) in zip(axes, panels):
    ax.imshow(m.float(), cmap="Blues", vmin=0, vmax=1)
    ax.set(title=title, xlabel="key position j", ylabel="query position i", xticks=range(T), yticks=range(T))
    ax.grid(False)
fig.suptitle("Figure 2.2: Masks as pictures (blue = may attend) and the attention weights they allow", y=1.02)
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
x = torch.randn(B, T, C, dtype=torch.float64)
mha = MultiHeadAttention(C, H, causal=True).double().eval()

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

ref = nn.MultiheadAttention(C, H, batch_first=True, dtype=torch.float64).eval()
with torch.no_grad():
    ref.in_proj_weight.copy_(mha.c_attn.weight)
    ref.in_proj_bias.copy_(mha.c_attn.bias)
    ref.out_proj.load_state_dict(mha.c_proj.state_dict())
y_torch, _ = ref(x, x, x, attn_mask=~causal_mask(T))  # PyTorch's mask: True = NOT allowed
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
encoder_config = TransformerConfig(vocab_size=20, block_size=16, n_layer=2, n_head=2, n_embd=16, causal=False)
encoder = Transformer(encoder_config).double().eval()  # bidirectional: causal=False


def encode(ids):
    return encoder(ids).last_hidden_state  # (B, T, C)


tokens = torch.tensor([[3, 7, 1, 12, 5, 9]])
perm = torch.tensor([4, 2, 0, 5, 1, 3])
assert not torch.allclose(encode(tokens[:, perm]), encode(tokens)[:, perm])  # with positions: order matters
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
# * **Rotary, RoPE** (Su et al. 2021): do not add anything; instead *rotate* each query and key by
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
q0, k0 = torch.randn(d, generator=gen, dtype=torch.float64), torch.randn(d, generator=gen, dtype=torch.float64)
rope_scores = apply_rope(q0.expand(P, d), cos, sin) @ apply_rope(k0.expand(P, d), cos, sin).T  # [m, n]
learned = torch.randn(P, d, generator=gen, dtype=torch.float64)  # an (untrained) learned table


def diagonal_spread(gram: torch.Tensor) -> float:
    """Largest range of values along any diagonal: 0 when entries depend only on n - m."""
    return max((torch.diagonal(gram, o).max() - torch.diagonal(gram, o).min()).item() for o in range(-P + 2, P - 1))


spreads = {"sinusoidal": diagonal_spread(pe @ pe.T), "rotary": diagonal_spread(rope_scores),
           "learned (random init)": diagonal_spread(learned @ learned.T)}
for name, s in spreads.items():
    print(f"{name:<22} largest spread along a diagonal: {s:.2e}")
assert spreads["sinusoidal"] < 1e-10 and spreads["rotary"] < 1e-10 and spreads["learned (random init)"] > 1

fig, axes = plt.subplots(1, 4, figsize=(15, 3.6))
axes[0].imshow(pe.T, aspect="auto", cmap="RdBu", vmin=-1, vmax=1)
axes[0].set(title="(a) sinusoidal PE", xlabel="position p", ylabel="dimension")
for ax, gram, title in ((axes[1], pe @ pe.T, "(b) sinusoidal: PE_m · PE_n"),
                        (axes[2], rope_scores, "(c) rotary: score of q at m, k at n"),
                        (axes[3], learned @ learned.T, "(d) learned (random): E_m · E_n")):
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
# attention score still mixes content and absolute position; RoPE makes the *score* relative, which
# is why most recent open models use it. Which one to use is a `TransformerConfig` field:
# `pos_encoding="learned" | "sinusoidal" | "rope"`.
#
# ## The block and the whole GPT
#
# *How do attention and a feed-forward network make a Transformer block, and a stack of blocks a GPT?*
#
# A **Transformer block** has two sub-layers, each inside a **residual connection** ($x + f(x)$,
# so the block only learns a correction) and a **LayerNorm** (which rescales each token's vector to
# mean 0 and variance 1, then applies a learned gain and bias). The second sub-layer is a
# **feed-forward network** applied to each token separately: $\operatorname{GELU}(xW_1+b_1)W_2+b_2$
# with a hidden width of $4C$. GPT-2 normalises *before* each sub-layer (**pre-LN**); the 2017
# Transformer and BERT normalise *after* the residual sum (**post-LN**):
#
# $$\text{pre-LN: } x \leftarrow x + \operatorname{Attn}(\operatorname{LN}(x)),\; x \leftarrow x + \operatorname{FFN}(\operatorname{LN}(x)) \qquad
#   \text{post-LN: } x \leftarrow \operatorname{LN}(x + \operatorname{Attn}(x)),\; x \leftarrow \operatorname{LN}(x + \operatorname{FFN}(x)).$$
#
# Pre-LN keeps an un-normalised path from input to output, which makes deep stacks train without a
# careful learning-rate warm-up. Both variants are `TransformerBlock(norm_first=...)`; the cell
# checks both against PyTorch's own `nn.TransformerEncoderLayer` with the same weights.

# %%
x = torch.randn(2, 6, 16, dtype=torch.float64)
for norm_first in (True, False):
    torch.manual_seed(0)
    block = TransformerBlock(16, 4, norm_first=norm_first, causal=False).double().eval()
    ref = nn.TransformerEncoderLayer(16, 4, dim_feedforward=64, dropout=0.0, batch_first=True, norm_first=norm_first,
                                     activation=lambda h: F.gelu(h, approximate="tanh"), dtype=torch.float64).eval()
    with torch.no_grad():
        ref.self_attn.in_proj_weight.copy_(block.attn.c_attn.weight)
        ref.self_attn.in_proj_bias.copy_(block.attn.c_attn.bias)
        ref.self_attn.out_proj.load_state_dict(block.attn.c_proj.state_dict())
        ref.linear1.load_state_dict(block.mlp.c_fc.state_dict())
        ref.linear2.load_state_dict(block.mlp.c_proj.state_dict())
        ref.norm1.load_state_dict(block.ln_1.state_dict())
        ref.norm2.load_state_dict(block.ln_2.state_dict())
    assert torch.allclose(block(x), ref(x), atol=1e-12)
    print(f"{'pre-LN' if norm_first else 'post-LN'} block == nn.TransformerEncoderLayer(norm_first={norm_first})")

# %% [markdown]
# A **GPT** is then: a token embedding (a $V\times C$ table), a position embedding, $L$ causal
# blocks, a final LayerNorm, and a linear map back to $V$ scores per position, the **logits**, whose
# softmax is the next-token distribution. GPT-2 ties that output matrix to the token embedding
# (**weight tying**): the same $V\times C$ matrix reads tokens in and scores them out.
#
# The chapter's GPT is small: 4 layers, 4 heads, width 128, trained on characters. Its vocabulary is
# the characters of the Python documentation topics that ship with every Python (the corpus of
# chapter 3). The table counts its parameters by component; Kaplan et al. (2020, §2.1) approximate
# the non-embedding count by $12\,L\,C^2$, because each block has $4C^2$ in attention ($W_Q, W_K,
# W_V, W_O$) and $8C^2$ in the feed-forward network ($C\times 4C$ twice).

# %%
text = python_docs_text()
tokenizer = CharTokenizer.fit(text)
config = TransformerConfig(vocab_size=tokenizer.vocab_size, block_size=64, n_layer=4, n_head=4, n_embd=128)
torch.manual_seed(0)
model = GPT(config)
counts = model.parameter_counts()
total = model.num_parameters()
for name, n in counts.items():
    print(f"{name:<22}{n:>9,}  {n / total:6.1%}")
print(f"{'total':<22}{total:>9,}")
L, C = config.n_layer, config.n_embd
non_embedding = model.num_parameters(exclude_embeddings=True)
print(f"\nnon-embedding N = {non_embedding:,}; Kaplan's 12·L·C² = {12 * L * C * C:,} "
      f"(the difference is biases and LayerNorms: 13·L·C + 2·C = {13 * L * C + 2 * C:,})")
assert sum(counts.values()) == total
assert non_embedding == 12 * L * C * C + 13 * L * C + 2 * C
assert counts["attention"] == L * (4 * C * C + 4 * C) and counts["feed-forward"] == L * (8 * C * C + 5 * C)
print(f"forward FLOPs per token at context {config.block_size}: {model.flops_per_token():,.0f} "
      f"(≈ 2N = {2 * non_embedding:,}); training: {model.flops_per_token(training=True):,.0f} (≈ 6N)")

# %% [markdown]
# Two thirds of the block's parameters sit in the feed-forward network, one third in attention.
# In this tiny model the embeddings are a small share because the vocabulary is only about a hundred
# characters; in GPT-2 small, the $50257\times768$ token table alone holds 38.6M of its 124M
# parameters.
#
# ### Proven equal: our GPT and Hugging Face's GPT-2
#
# *Is this really GPT-2's architecture?*
#
# Our parameter names and shapes follow GPT-2, so `aigc_book.models.hf_gpt2` converts a model to a
# Hugging Face `GPT2LMHeadModel` (built from a `GPT2Config` with random weights: nothing is
# downloaded) and back. Same weights must give the same logits.

# %%
from aigc_book.models.hf_gpt2 import from_hf_gpt2, to_hf_gpt2  # noqa: E402  (imports transformers: a few seconds)

model64 = model.double().eval()
hf_model = to_hf_gpt2(model64)
sample = torch.tensor([tokenizer.encode("def attention(q, k, v):")])
ours_logits = model64(sample)[0]
hf_logits = hf_model(sample).logits
torch.testing.assert_close(ours_logits, hf_logits, rtol=1e-10, atol=1e-12)
back = from_hf_gpt2(hf_model)
torch.testing.assert_close(back(sample)[0], ours_logits, rtol=0, atol=0)
print(f"{type(hf_model).__name__}: largest logit difference {(ours_logits - hf_logits).abs().max().item():.1e} "
      f"over {ours_logits.numel():,} logits (float64); converting back is exact")
model = model.float()

# %% [markdown]
# ## Generating, and the KV cache
#
# *Why does generation get faster if we remember keys and values?*
#
# A GPT generates one token at a time: run the model on the text so far, pick the next token from
# the last position's distribution, append it, repeat. Run naively, step $t$ recomputes the keys and
# values of all $t$ earlier tokens, although they have not changed (a causal mask means earlier
# tokens never see later ones). A **KV cache** keeps each layer's keys and values; each step then
# feeds only the newest token, computes its query, key and value, and attends over the cache. The
# work per step drops from a forward pass over $t$ tokens to a forward pass over one.
# `GPT.generate(..., use_cache=True)` does this; the tests check that it produces exactly the tokens
# of the uncached loop. Here the same check on a model with a longer context, with timings.

# %%
torch.manual_seed(0)
long_model = GPT(TransformerConfig(vocab_size=tokenizer.vocab_size, block_size=1024, n_layer=4, n_head=4, n_embd=128))
prompt = torch.tensor([tokenizer.encode("The ")])
n_new = 128
results = {}
for use_cache in (False, True):
    start = time.perf_counter()
    results[use_cache] = long_model.generate(prompt, n_new, temperature=0, use_cache=use_cache)
    results[use_cache, "s"] = time.perf_counter() - start
assert torch.equal(results[True], results[False])
print(f"{n_new} new tokens, greedy: without cache {n_new / results[False, 's']:.0f} tok/s, "
      f"with KV cache {n_new / results[True, 's']:.0f} tok/s "
      f"({results[False, 's'] / results[True, 's']:.1f}x); identical tokens")
kv_bytes = 2 * long_model.config.n_layer * long_model.config.n_embd * 1024 * 4
print(f"cache size for 1024 positions: 2 x layers x C x positions x 4 bytes = {kv_bytes / 2**20:.1f} MiB")

# %% [markdown]
# The speed-up grows with the length of the generated text, since the uncached loop's cost per
# step grows with $t$ and the cached one's barely does; `benchmarks/attention.py` measures it at 256
# and 512 tokens. The price is memory: $2 \times$ layers $\times$ heads $\times d_k \times$ positions
# $\times$ bytes per number per sequence; for a 7B model in 16-bit floats this is 0.5 MiB per token
# (FACTS.md §E, our arithmetic).
#
# ## The cost of attention
#
# *How do time and memory grow with the sequence length $T$?*
#
# The score matrix has $T^2$ entries per head, and computing it takes $T^2 d_k$ multiply-adds, so
# both the written-out attention's time and its memory grow like $T^2$. The fused kernel does the
# same arithmetic but in tiles, never storing the full matrix (Dao et al. 2022): its extra memory
# grows like $T$, and it skips the tiles that the causal mask hides. We time one causal attention
# call (batch 1, 8 heads of 64) on this machine's device and fit the slope of $\log(\text{time})$
# against $\log T$: a slope of 2 means quadratic growth.

# %%
seq_lens = [128, 256, 512, 1024, 2048]
timings = {T: attention_timings(T, device=device, repeats=3, min_seconds=0.05) for T in tqdm(seq_lens, desc="timing")}
ref_times = np.array([timings[T]["written-out"] for T in seq_lens])
fused_times = np.array([timings[T]["fused"] for T in seq_lens])
fit = slice(1, None)  # fit from 256 on, where the arithmetic dominates the fixed overheads
slope_ref = np.polyfit(np.log(seq_lens[fit]), np.log(ref_times[fit]), 1)[0]
slope_fused = np.polyfit(np.log(seq_lens[fit]), np.log(fused_times[fit]), 1)[0]
batch, heads, head_dim, bytes_per = 1, 8, 64, 4
score_bytes = np.array([2 * batch * heads * T * T * bytes_per for T in seq_lens])  # scores + weights
fused_bytes = np.array([batch * heads * T * (head_dim + 1) * bytes_per for T in seq_lens])  # output + row stats

fig, axes = plt.subplots(1, 2, figsize=(12, 4))
axes[0].loglog(seq_lens, ref_times * 1e3, "o-", label=f"written-out (slope {slope_ref:.2f})")
axes[0].loglog(seq_lens, fused_times * 1e3, "s-", label=f"fused SDPA (slope {slope_fused:.2f})")
axes[0].set(xlabel="sequence length T (tokens)", ylabel="time per call (ms)",
            title=f"(a) causal attention, forward, on {device.type}")
axes[1].loglog(seq_lens, score_bytes / 2**20, "o-", label="written-out: T×T scores and weights")
axes[1].loglog(seq_lens, fused_bytes / 2**20, "s-", label="fused: output and row statistics")
axes[1].set(xlabel="sequence length T (tokens)", ylabel="intermediate memory (MiB)", title="(b) memory, by count")
for ax in axes:
    ax.set_xticks(seq_lens, [str(T) for T in seq_lens])
    ax.xaxis.set_minor_formatter(plt.NullFormatter())
    ax.legend()
fig.suptitle("Figure 2.4: Attention cost against sequence length (batch 1, 8 heads × 64)", y=1.02)
plt.show()
for T in seq_lens:
    print(f"T = {T:>5}: written-out {timings[T]['written-out'] * 1e3:8.2f} ms, fused {timings[T]['fused'] * 1e3:7.2f} ms, "
          f"speed-up {timings[T]['written-out'] / timings[T]['fused']:4.1f}x")

# %% [markdown]
# What to see in (a): the written-out attention's time grows at least as fast as $T^2$. The count
# predicts a slope of 2; the fitted slope in the legend comes out steeper when the $T\times T$
# matrices outgrow the CPU's caches and every pass over them goes to main memory. The fused kernel
# is faster at every length, and its advantage grows with $T$, sharply once those matrices no
# longer fit in the caches (here from about $T=1024$ for one sequence of 8 heads; with a batch of several
# sequences, earlier). The printed ratios are from the machine that ran this notebook last, and
# timings are noisy when other programs share the CPU; `python benchmarks/attention.py` prints a
# fuller table, with a batch of 4, on yours. Panel
# (b) counts bytes rather than measuring them: the written-out form must hold two $T\times T$
# matrices per head, 64 MiB at $T=1024$ for 8 heads of one sequence, while the fused kernel needs
# memory proportional to $T$. That difference, not the arithmetic, is what FlashAttention attacks on
# a GPU, where moving data between memory levels costs more than computing (Dao et al. 2022).
#
# ## What do the heads of a trained model look at?
#
# *Do heads learn recognisable patterns?*
#
# We train the chapter's GPT for a short while on the Python documentation text (about 465,000
# characters, 90% for training) to predict the next character, then look at its attention weights.
# `GPT.attention_maps(idx)` returns them for every layer and head, shape
# `(n_layer, B, n_head, T, T)`, by running the written-out attention (the fused kernel never forms
# the weights). The run is a fixed 400 steps of 16 sequences of 64 characters, so that every machine trains
# the same model; it takes well under a minute on a laptop CPU.

# %%
train_text, val_text = split_train_val(text, 0.1)
train_ids, val_ids = tokenizer.encode_tensor(train_text), tokenizer.encode_tensor(val_text)
seed_everything(0)
gen = torch.Generator().manual_seed(0)
model = GPT(config).to(device)
optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
n_steps, batch_size = 400, 16


def get_batch(ids: torch.Tensor, generator: torch.Generator):
    starts = torch.randint(0, len(ids) - config.block_size - 1, (batch_size,), generator=generator)
    xb = torch.stack([ids[s:s + config.block_size] for s in starts])
    yb = torch.stack([ids[s + 1:s + 1 + config.block_size] for s in starts])
    return xb.to(device), yb.to(device)


start = time.perf_counter()
history = []
for step in tqdm(range(n_steps), desc="training"):
    lr = 3e-3 * min(1.0, (step + 1) / 50) * (0.1 + 0.9 * (1 + math.cos(math.pi * step / n_steps)) / 2)
    for group in optimizer.param_groups:
        group["lr"] = lr  # warm-up, then cosine decay
    xb, yb = get_batch(train_ids, gen)
    _, loss = model(xb, yb)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    history.append(loss.item())
train_seconds = time.perf_counter() - start
final_val = lm_loss(model, val_ids)  # every held-out character, in consecutive windows
print(f"{len(history)} steps in {train_seconds:.1f} s ({1e3 * train_seconds / len(history):.0f} ms/step); "
      f"validation loss {final_val:.3f} nats/char (uniform guess: ln {config.vocab_size} = {math.log(config.vocab_size):.3f})")
assert final_val < math.log(config.vocab_size) - 1.0  # far better than guessing
model.eval()
sample = model.generate(torch.tensor([tokenizer.encode("The ")], device=device), 120, temperature=0.8, top_k=20,
                        generator=torch.Generator(device=device).manual_seed(0))
print("sample:", repr(tokenizer.decode(sample[0].tolist())))

# %% [markdown]
# After these few hundred steps the model is far better than a uniform guess (the printed validation loss
# against $\ln V$) but still writes only
# word-shaped text; that is enough for its heads to have specialised. The explorer below shows one
# head at a time for any sentence you type (it needs a running Jupyter kernel); the static figure
# after it shows all sixteen heads for one sentence, for readers of the web page.

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
    ax.set(xlabel="key (attended to)", ylabel="query (attending)", title=f"layer {layer}, head {head}")
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
ids = torch.tensor([tokenizer.encode(sentence)], device=device)
maps = model.attention_maps(ids)[:, 0].cpu()  # (n_layer, n_head, T, T)
assert torch.allclose(maps.sum(-1), torch.ones(maps.shape[:-1])) and torch.all(maps.triu(1) == 0)
prev_token = maps.diagonal(offset=-1, dim1=-2, dim2=-1).mean(-1)  # mean weight on the previous character
self_token = maps.diagonal(dim1=-2, dim2=-1).mean(-1)  # ... on the character itself
fig, axes = plt.subplots(config.n_layer, config.n_head, figsize=(12, 12))
for layer in range(config.n_layer):
    for head in range(config.n_head):
        ax = axes[layer, head]
        ax.imshow(maps[layer, head], cmap="viridis", vmin=0, vmax=1)
        ax.set_title(f"L{layer} H{head}: prev {prev_token[layer, head]:.2f}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.grid(False)
for layer in range(config.n_layer):
    axes[layer, 0].set_ylabel(f"layer {layer}\nquery position")
for head in range(config.n_head):
    axes[-1, head].set_xlabel(f"key position (head {head})")
fig.suptitle(f"Figure 2.5: Attention of every head on {sentence!r}", y=0.92)
plt.show()
best = divmod(int(prev_token.argmax()), config.n_head)
print(f"strongest previous-character head: layer {best[0]}, head {best[1]} "
      f"(mean weight {prev_token.max():.2f} on the previous character)")
print(f"mean weight on the character itself, per layer: {[round(v, 2) for v in self_token.mean(1).tolist()]}")

# %% [markdown]
# Each small square is one head; row = query character, column = key character, brighter = more
# weight, and the upper triangle is dark because of the causal mask. What to see: the heads of
# the first layer concentrate on the diagonal just below the main one, the **previous character**
# (the share of weight it gets is in each panel's title; the strongest head is printed above).
# Later layers look different: vertical stripes, where many queries attend to the same few earlier
# characters (the explorer's axis labels show which), and weight parked on the first character when
# nothing else is relevant. Nobody programmed these roles; next-character prediction found them.
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
        div_term = torch.exp(torch.arange(0, embed_dim, 2).float() * (-math.log(10000.0) / embed_dim))
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
    seed_namespace["TransformerEncoder"](vocab_size=100, embed_dim=16, num_heads=2, hidden_dim=32, num_layers=2)
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
seed_model = seed_namespace["TransformerEncoder"](vocab_size=100, embed_dim=16, num_heads=2, hidden_dim=32,
                                                  num_layers=2).eval()
batch = torch.randint(0, 100, (2, 6), generator=torch.Generator().manual_seed(0))  # (B, T) as Embedding expects
changed = batch.clone()
changed[1] = (changed[1] + 1) % 100  # change only sentence 2
with torch.no_grad():
    leak = (seed_model(batch)[0] - seed_model(changed)[0]).abs().max().item()
print(f"runs, output shape {tuple(seed_model(batch).shape)}; sentence 1's output moved by {leak:.3f} "
      f"when only sentence 2 changed")
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
        self.self_attn = nn.MultiheadAttention(embed_dim, num_heads, dropout=dropout, batch_first=True)
        self.fc1, self.fc2 = nn.Linear(embed_dim, hidden_dim), nn.Linear(hidden_dim, embed_dim)
        self.norm1, self.norm2 = nn.LayerNorm(embed_dim), nn.LayerNorm(embed_dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, key_padding_mask=None):
        x = self.norm1(x + self.dropout(self.self_attn(x, x, x, key_padding_mask=key_padding_mask)[0]))
        return self.norm2(x + self.dropout(self.fc2(self.dropout(torch.relu(self.fc1(x))))))


class TransformerEncoderFixed(nn.Module):
    def __init__(self, vocab_size, embed_dim, num_heads, hidden_dim, num_layers, dropout=0.1):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed_dim)
        self.pos_encoding = PositionalEncodingFixed(embed_dim)
        self.layers = nn.ModuleList(EncoderLayerFixed(embed_dim, num_heads, hidden_dim, dropout) for _ in range(num_layers))

    def forward(self, x):  # x: (B, T) token ids
        x = self.pos_encoding(self.embedding(x))  # (B, T, C)
        for layer in self.layers:
            x = layer(x)
        return x


# the article's math, now correct, equals our sinusoidal_encoding
pe_article = seed_namespace["PositionalEncoding"](16, max_len=50).pe[:, 0]  # (max_len, C)
assert torch.allclose(pe_article, sinusoidal_encoding(50, 16), atol=1e-5)

torch.manual_seed(0)
fixed = TransformerEncoderFixed(vocab_size=100, embed_dim=16, num_heads=2, hidden_dim=32, num_layers=2).eval()
with torch.no_grad():
    leak_fixed = (fixed(batch)[0] - fixed(changed)[0]).abs().max().item()
    alone = fixed(batch[:1])[0]
assert leak_fixed == 0.0 and torch.allclose(fixed(batch)[0], alone, atol=1e-6)
package_encoder = Transformer(TransformerConfig(100, 64, n_layer=2, n_head=2, n_embd=16, pos_encoding="sinusoidal",
                                                norm_first=False, causal=False)).eval()
with torch.no_grad():
    assert torch.equal(package_encoder(batch).last_hidden_state[0], package_encoder(changed).last_hidden_state[0])
print(f"fixed version: sentence 1 moves by {leak_fixed} when sentence 2 changes, and equals running it alone")

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
#   PyTorch's fused kernel.
# * The dot product of random unit-variance vectors has variance $d_k$; without the $1/\sqrt{d_k}$
#   scale the softmax saturates and its gradient shrinks as $d_k$ grows (Figure 2.1).
# * Masks set scores to $-\infty$: the causal mask hides the future, the padding mask hides padding;
#   in this package True means "may attend".
# * Multi-head attention is a reshape of $C$ into $h\times d_k$ and adds no parameters; it equals
#   `nn.MultiheadAttention` with the same weights.
# * Attention alone ignores order. Sinusoidal encodings make position *similarity* depend on the
#   offset; RoPE makes the attention *score* depend on the offset; learned embeddings promise
#   neither.
# * A GPT is embeddings, $L$ pre-LN blocks and a tied output layer; about $12LC^2$ parameters sit in
#   the blocks. Ours gives the same logits as Hugging Face's GPT-2 with the same weights.
# * The KV cache makes each generation step cost one token's forward pass instead of $t$, without
#   changing a single generated token.
# * Written-out attention costs $O(T^2)$ time and memory; the fused kernel does the same arithmetic
#   in tiles with $O(T)$ extra memory, and its lead grows with $T$: several times faster for long
#   sequences on a CPU (Figure 2.4).
# * The source article's encoder fails on a missing import and, once fixed, silently mixes the
#   sentences of a batch because it confuses sequence-first and batch-first layouts.
#
# ## Exercises
#
# 1. **Temperature of attention.** Replace the scale $1/\sqrt{d_k}$ by $\tau/\sqrt{d_k}$ in
#    `attention_reference(..., scale=...)` and repeat Figure 2.1(b) for $\tau \in \{0.25, 1, 4\}$.
#    What does $\tau \to 0$ do to the weights? *Hint:* the weights tend to uniform.
# 2. **A mask that is too strict.** Build a boolean mask in which one query row is all False.
#    What do `attention_reference` and `attention_fused` return for that row, and why is it not NaN?
#    *Hint:* read the module docstring of `aigc_book.layers.attention`.
# 3. **Counting parameters.** Write the parameter count of a GPT with vocabulary $V$, context $T$,
#    $L$ layers and width $C$ as a formula (biases included) and check it against
#    `GPT.num_parameters()` for GPT-2 small ($V=50257$, $T=1024$, $L=12$, $C=768$). Do you get
#    about 124M? *Hint:* the per-layer count is $12C^2 + 13C$.
# 4. **RoPE and long contexts.** With `RotaryEmbedding(64, 4096)` plot the score
#    $\langle R_m q, R_{m+\Delta} q\rangle$ of a vector with itself against the offset $\Delta$.
#    Does it decay? What does that suggest about attention to far-away tokens?
# 5. **Where does the KV cache stop helping?** Generate past the context length (e.g. 100 tokens
#    from a model with `block_size=64`) with and without the cache and time both. Read
#    `GPT.generate`'s docstring to explain the result.
# 6. **Heads after longer training.** Train the explorer's model for 3,000 steps instead of 400.
#    Which head patterns appear that were not there before? *Hint:* look for heads that attend to
#    the character after an earlier occurrence of the current one.
#
# ## Key terms
#
# | English | 中文 | Meaning here |
# |---|---|---|
# | attention | 注意力 | A weighted average of value vectors, weighted by query–key similarity. |
# | query, key, value | 查询、键、值 | The three learned projections of each token used by attention. |
# | scaled dot-product attention | 缩放点积注意力 | $\operatorname{softmax}(QK^\top/\sqrt{d_k})V$. |
# | softmax saturation | softmax 饱和 | Nearly all weight on one entry, with nearly zero gradient. |
# | causal mask | 因果掩码 | Hides later tokens from earlier ones. |
# | padding mask | 填充掩码 | Hides the padding tokens of a batch. |
# | multi-head attention | 多头注意力 | Several attentions on slices of the features, run as one batched product. |
# | positional encoding | 位置编码 | Information about token order added to (or rotating) the vectors. |
# | rotary position embedding (RoPE) | 旋转位置编码 | Rotating queries and keys so scores depend on relative position. |
# | residual connection | 残差连接 | $x + f(x)$: the sub-layer learns a correction. |
# | layer normalisation | 层归一化 | Rescaling each token's vector to mean 0 and variance 1, then a learned gain and bias. |
# | feed-forward network | 前馈网络 | The per-token MLP of a block, hidden width $4C$. |
# | pre-LN / post-LN | 前置/后置层归一化 | LayerNorm before each sub-layer (GPT-2) or after the residual sum (2017, BERT). |
# | weight tying | 权重共享 | Using the token embedding matrix as the output layer. |
# | logits | 对数几率 | The unnormalised scores whose softmax is the next-token distribution. |
# | KV cache | 键值缓存 | Stored keys and values of earlier tokens, reused at each generation step. |
# | fused kernel | 融合算子 | One kernel that computes attention in tiles without storing the score matrix. |
#
# ## Sources
#
# * Vaswani, A. et al. (2017). *Attention Is All You Need.* NeurIPS (eq. 1; §3.2.2 multi-head;
#   §3.5 sinusoidal encoding; footnote 4 on the variance of dot products).
# * Su, J. et al. (2021). *RoFormer: Enhanced Transformer with Rotary Position Embedding.*
#   arXiv:2104.09864.
# * Dao, T. et al. (2022). *FlashAttention: Fast and Memory-Efficient Exact Attention with
#   IO-Awareness.* arXiv:2205.14135.
# * Kaplan, J. et al. (2020). *Scaling Laws for Neural Language Models.* arXiv:2001.08361 (§2.1,
#   parameter and FLOP counts).
# * Radford, A. et al. (2019). *Language Models are Unsupervised Multitask Learners* (GPT-2:
#   pre-LN, learned positions, weight tying, scaled residual initialisation).
# * Ba, J. L., Kiros, J. R. and Hinton, G. E. (2016). *Layer Normalization.* arXiv:1607.06450.
# * The KV-cache memory formula and the 7B example are from the book's fact sheet (FACTS.md §E).

# %%
print(f"chapter executed in {time.perf_counter() - chapter_start:.1f} s")
