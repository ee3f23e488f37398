# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [raw]
# # ASSIGNMENT CONFIG
# name: 02_attention
# init_cell: true
# check_all_cell: false
# export_cell: false
# solutions_pdf: false
# generate: true
# tests:
#   files: false

# %% [markdown]
# # Assignment 2: Attention and the Transformer
#
# The exercises of chapter 2: the scale of the scores as an inverse temperature, a mask that hides
# every key, the parameter count of a GPT, the long-range behaviour of RoPE, the KV cache past the
# context, the heads of a longer-trained GPT, and a FLOP formula for causal attention. Read the
# chapter's sections "Why divide by $\sqrt{d_k}$?", "Masks, drawn", "Position: what attention does
# not know", "The block and the whole GPT" (with "Counting FLOPs") and "Generating, and the KV
# cache" first. The setup cell below builds small, seeded inputs and models on the CPU; run it
# first. Write your answers in the cells marked `...`, run them, and check each autograded one
# with `grader.check("ex1")` (and so on): it runs the public tests; hidden tests run when your
# notebook is graded. Every question uses only the setup cell and its own cell. Exercise 6 is graded
# by hand.

# %%
import math
import time

import matplotlib.pyplot as plt
import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from aigc_book import get_device, seed_everything
from aigc_book.layers.attention import attention_fused, attention_reference, causal_mask
from aigc_book.layers.positions import RotaryEmbedding, apply_rope
from aigc_book.models.gpt import GPT
from aigc_book.models.transformer import TransformerConfig

device = get_device("cpu")  # the CPU; its thread count follows the machine's load (preface)
seed_everything(0)
gen = torch.Generator().manual_seed(0)

# Exercise 1: one query against N_KEYS random keys, N_QUERIES times, for each head dimension
DIMS = [1, 4, 16, 64, 256, 1024]
N_KEYS, N_QUERIES = 32, 100
scale_probes = {
    d: (
        torch.randn(N_QUERIES, 1, d, generator=gen, dtype=torch.float64),  # queries
        torch.randn(N_QUERIES, N_KEYS, d, generator=gen, dtype=torch.float64),  # keys (= values)
    )
    for d in DIMS
}

# Exercise 2: queries, keys and values of 2 heads over T_MASK positions
T_MASK = 6
q_mask, k_mask, v_mask = (
    torch.randn(1, 2, T_MASK, 8, generator=gen, dtype=torch.float64) for _ in range(3)
)

# Exercise 4: the rotary tables of the exercise and one vector to rotate
rope = RotaryEmbedding(64, 4096)
q_rope = torch.randn(64, generator=gen, dtype=torch.float64)

# Exercise 5: a tiny GPT with a context of 64 tokens, and a way to see what it is fed
torch.manual_seed(0)
kv_model = GPT(
    TransformerConfig(vocab_size=64, block_size=64, n_layer=2, n_head=2, n_embd=32)
).eval()
kv_prompt = torch.randint(64, (1, 4), generator=gen)  # (B, T) = (1, 4)


def positions_fed(model: GPT, fn) -> list[int]:
    """Run ``fn()``; return how many positions ``model`` was fed at each of its forward passes."""
    fed = []
    record = lambda module, args: fed.append(args[0].size(1))  # noqa: E731  (args[0]: the ids)
    hook = model.transformer.register_forward_pre_hook(record)
    try:
        fn()
    finally:
        hook.remove()
    return fed


# Exercise 7: the chapter's GPT shape, with a small vocabulary, and two sequences to count on
torch.manual_seed(0)
flop_model = GPT(
    TransformerConfig(vocab_size=96, block_size=64, n_layer=4, n_head=4, n_embd=128)
).eval()
flop_idx = torch.randint(96, (2, 64), generator=gen)  # (B, T)
CPU_ATTENTION = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu  # the fused CPU kernel

# %% [raw]
# # BEGIN QUESTION
# name: ex1
# points: 3

# %% [markdown]
# **Exercise 1. Sharper or flatter attention.** *(autograded)* Replace the scale $1/\sqrt{d_k}$
# by $\beta/\sqrt{d_k}$ in `attention_reference(..., scale=...)` and repeat Figure 2.1(b) for
# $\beta \in \{0.25, 1, 4\}$: for every head dimension `d` in `DIMS`, take the queries and keys
# `q, keys = scale_probes[d]` of the setup cell, compute the attention weights of
# `attention_reference(q, keys, keys, scale=..., return_weights=True)` (one query against
# `N_KEYS` keys, `N_QUERIES` times) and their mean largest weight (the mean over the queries of
# each row's maximum). Set `max_weight_beta` to a dict from each $\beta$ to the list of these
# means, one per `d` in the order of `DIMS`, and plot them against `d` as in Figure 2.1(b).
# $\beta$ *multiplies* the scores, so it is an **inverse** temperature: $\beta = 1/\tau$, where
# `GPT.generate`'s `temperature` $\tau$ *divides* the logits. What does $\beta \to 0$ (a very high
# temperature) do to the weights, and what does $\beta \to \infty$ do? Find out: set
# `weights_beta_small` and `weights_beta_large` to the weights (shape `(N_QUERIES, 1, N_KEYS)`) at
# $d = 64$ for $\beta = 10^{-3}$ and $\beta = 10^{3}$. *Hint:* one limit is uniform, the other is
# one-hot.

# %% [raw]
# # BEGIN SOLUTION

# %%
def attention_weights(d, beta):
    """The weights of the probes of dimension d, with the scores scaled by beta / sqrt(d)."""
    q, keys = scale_probes[d]
    # BEGIN SOLUTION
    _, weights = attention_reference(q, keys, keys, scale=beta / math.sqrt(d), return_weights=True)
    return weights  # (N_QUERIES, 1, N_KEYS)
    # END SOLUTION


# BEGIN PROMPT
max_weight_beta = ...
# END PROMPT
# BEGIN SOLUTION NO PROMPT
max_weight_beta = {
    beta: [attention_weights(d, beta).max(dim=-1).values.mean().item() for d in DIMS]
    for beta in (0.25, 1, 4)
}
fig, ax = plt.subplots(figsize=(6, 3.5))
for beta, means in max_weight_beta.items():
    ax.semilogx(DIMS, means, "o-", label=f"beta = {beta}")
ax.axhline(1 / N_KEYS, color="grey", ls=":", label=f"uniform (1/{N_KEYS})")
ax.set(xlabel="head dimension d_k", ylabel="mean largest weight", title="Scores scaled by beta")
ax.legend()
plt.show()
# END SOLUTION
weights_beta_small = attention_weights(64, 1e-3)  # SOLUTION
weights_beta_large = attention_weights(64, 1e3)  # SOLUTION

# %% [raw]
# # END SOLUTION

# %% [raw]
# # BEGIN TESTS

# %%
assert isinstance(max_weight_beta, dict) and sorted(max_weight_beta) == [0.25, 1, 4], (
    "max_weight_beta should have the keys 0.25, 1 and 4"
)
assert all(len(v) == len(DIMS) for v in max_weight_beta.values()), "one mean per d in DIMS"
assert all(1 / N_KEYS - 1e-9 <= x <= 1 for v in max_weight_beta.values() for x in v), (
    f"a mean largest weight lies between 1/N_KEYS = {1 / N_KEYS} (uniform) and 1 (one-hot)"
)

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
for _beta, _means in max_weight_beta.items():
    for _d, _m in zip(DIMS, _means):
        _q, _k = scale_probes[_d]
        _scores = torch.einsum("nqd,nkd->nqk", _q, _k) * _beta / math.sqrt(_d)
        _expected = torch.softmax(_scores, dim=-1).amax(dim=-1).mean().item()
        assert abs(_m - _expected) < 1e-9, (
            f"beta = {_beta}, d = {_d}: the mean largest weight should be {_expected:.4f}, got {_m}"
        )

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
assert tuple(weights_beta_small.shape) == (N_QUERIES, 1, N_KEYS), "weights of shape (N, 1, N_KEYS)"
_uniform = torch.full_like(weights_beta_small, 1 / N_KEYS)
assert torch.allclose(weights_beta_small, _uniform, atol=1e-3), (
    "as beta -> 0 every score becomes 0 and the weights become uniform, 1/N_KEYS each"
)
assert weights_beta_large.amax(dim=-1).mean() > 0.99, (
    "as beta -> infinity the largest score takes all the weight: the weights become one-hot"
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
# **Exercise 2. A mask that is too strict.** *(autograded)* Build a boolean mask `strict_mask`
# of shape `(T_MASK, T_MASK)` (True = may attend) that is the causal mask with one query row, row
# 2, set all False. Set `out_reference` and `out_fused` to what `attention_reference` and
# `attention_fused` return for `q_mask, k_mask, v_mask` with that mask. What do they return for
# that row, and why is it not NaN? Answer in a comment in your cell. *Hint:* read the module
# docstring of `aigc_book.layers.attention` (`help(aigc_book.layers.attention)`), and compute
# $\operatorname{softmax}$ of a row of $-\infty$ by hand.

# %% [raw]
# # BEGIN SOLUTION

# %%
# BEGIN PROMPT
strict_mask = ...
# END PROMPT
# BEGIN SOLUTION NO PROMPT
strict_mask = causal_mask(T_MASK).clone()
strict_mask[2] = False  # query 2 may see no key at all
# END SOLUTION
out_reference = attention_reference(q_mask, k_mask, v_mask, strict_mask)  # SOLUTION
out_fused = attention_fused(q_mask, k_mask, v_mask, strict_mask)  # SOLUTION
# BEGIN SOLUTION
# Both return zeros for row 2. Every score of that row is -inf, and softmax of a row of -inf is
# 0/0 = NaN (and so is its gradient). attention_reference finds the rows whose keys are all hidden,
# computes their softmax on zeros instead and then sets their weights to 0, so the output row is a
# sum with zero weights: 0. It does so to match PyTorch's fused kernel, which returns zeros for such
# a row. A row that attends to nothing has nothing to average, and zeros keep NaN out of the model.
# END SOLUTION
print(out_reference, out_fused, sep="\n")

# %% [raw]
# # END SOLUTION

# %% [raw]
# # BEGIN TESTS

# %%
assert strict_mask.dtype == torch.bool and tuple(strict_mask.shape) == (T_MASK, T_MASK), (
    "strict_mask should be a boolean (T_MASK, T_MASK) tensor"
)
assert not strict_mask[2].any() and strict_mask.sum(dim=1).gt(0).sum() == T_MASK - 1, (
    "row 2 of strict_mask should be all False and every other row should allow some key"
)
assert out_reference.shape == q_mask.shape and out_fused.shape == q_mask.shape, (
    "the outputs should have the shape of the queries, (1, 2, T_MASK, 8)"
)

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
assert not out_reference.isnan().any() and not out_fused.isnan().any(), "no output may be NaN"
assert torch.equal(out_reference[..., 2, :], torch.zeros_like(out_reference[..., 2, :])), (
    "attention_reference should return zeros for the row whose keys are all hidden"
)
assert torch.equal(out_fused[..., 2, :], torch.zeros_like(out_fused[..., 2, :])), (
    "attention_fused should return zeros for the row whose keys are all hidden"
)

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
_causal = torch.ones(T_MASK, T_MASK, dtype=torch.bool).tril()
_scores = (q_mask @ k_mask.transpose(-2, -1)) / math.sqrt(q_mask.size(-1))
_expected = torch.softmax(_scores.masked_fill(~_causal, float("-inf")), dim=-1) @ v_mask
_rows = [i for i in range(T_MASK) if i != 2]
for _out, _name in ((out_reference, "out_reference"), (out_fused, "out_fused")):
    assert torch.allclose(_out[..., _rows, :], _expected[..., _rows, :], atol=1e-10), (
        f"the rows other than 2 of {_name} should be causal attention, as without the change"
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
# **Exercise 3. Counting parameters.** *(autograded)* Write the parameter count of a GPT with
# vocabulary size $n_\text{vocab}$, context $T$, $L$ layers and width $C$ as a formula (biases
# included; the package's GPT has learned positions and ties the output matrix to the token
# embedding) in a function `gpt_parameter_count(n_vocab, T, L, C)`, and check it against
# `GPT.num_parameters()` for GPT-2 small ($n_\text{vocab}=50257$, $T=1024$, $L=12$, $C=768$,
# 12 heads; build it on the `meta` device, as the chapter does, so that no memory is allocated).
# Set `gpt2_small_count` to your formula's value for GPT-2 small. Do you get about 124M? *Hint:*
# the per-layer count is $12C^2 + 13C$.

# %% [raw]
# # BEGIN SOLUTION

# %%
def gpt_parameter_count(n_vocab, T, L, C):
    """Parameters of a GPT: token and position tables, L blocks, the final LayerNorm (tied head)."""
    return n_vocab * C + T * C + L * (12 * C * C + 13 * C) + 2 * C  # SOLUTION


gpt2_small_count = gpt_parameter_count(50257, 1024, 12, 768)  # SOLUTION
# BEGIN SOLUTION
with torch.device("meta"):
    gpt2_small = GPT(
        TransformerConfig(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768)
    )
assert gpt2_small.num_parameters() == gpt2_small_count
# END SOLUTION
print(gpt2_small_count)

# %% [raw]
# # END SOLUTION

# %% [raw]
# # BEGIN TESTS

# %%
with torch.device("meta"):
    _tiny = GPT(TransformerConfig(vocab_size=10, block_size=8, n_layer=1, n_head=2, n_embd=4))
assert gpt_parameter_count(10, 8, 1, 4) == _tiny.num_parameters(), (
    f"for n_vocab=10, T=8, L=1, C=4 the GPT has {_tiny.num_parameters()} parameters, "
    f"your formula gives {gpt_parameter_count(10, 8, 1, 4)}"
)

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
for _v, _t, _l, _c, _h in ((65, 64, 2, 32, 4), (1000, 256, 6, 128, 8), (50257, 2048, 24, 1024, 16)):
    _config = TransformerConfig(vocab_size=_v, block_size=_t, n_layer=_l, n_head=_h, n_embd=_c)
    with torch.device("meta"):
        _gpt = GPT(_config)
    assert gpt_parameter_count(_v, _t, _l, _c) == _gpt.num_parameters(), (
        f"for n_vocab={_v}, T={_t}, L={_l}, C={_c} the GPT has {_gpt.num_parameters():,} "
        f"parameters, your formula gives {gpt_parameter_count(_v, _t, _l, _c):,}"
    )

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
with torch.device("meta"):
    _gpt2 = GPT(
        TransformerConfig(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768)
    )
assert gpt2_small_count == _gpt2.num_parameters() and round(gpt2_small_count / 1e6) == 124, (
    f"gpt2_small_count should be GPT-2 small's count, {_gpt2.num_parameters():,} (about 124M)"
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
# **Exercise 4. RoPE and long contexts.** *(autograded)* With the rotary tables
# `rope = RotaryEmbedding(64, 4096)` of the setup cell (`cos, sin = rope(0, 4096,
# dtype=torch.float64)`, then `apply_rope`), compute the score
# $\langle R_m q, R_{m+\Delta} q\rangle$ of the vector `q_rope` with itself, for $m = 0$ and every
# offset $\Delta = 0, 1, \dots, 4095$, and set `rope_self_scores` to these 4096 scores (a float64
# tensor), and plot them against $\Delta$. Does the score decay? Set `decay_near` to the mean of
# $|\text{score}|/\text{score}_0$ over $\Delta = 1, \dots, 16$ and `decay_far` to the same over
# $\Delta = 1024, \dots, 4095$. What does that suggest about attention to far-away tokens?
# (Answer in a comment.)

# %% [raw]
# # BEGIN SOLUTION

# %%
# BEGIN SOLUTION NO PROMPT
cos, sin = rope(0, 4096, dtype=torch.float64)  # (4096, 64) each
rotated = apply_rope(q_rope.expand(4096, 64), cos, sin)  # row n: R_n q
# END SOLUTION
rope_self_scores = rotated @ rotated[0]  # SOLUTION
decay_near = (rope_self_scores[1:17].abs() / rope_self_scores[0]).mean().item()  # SOLUTION
decay_far = (rope_self_scores[1024:].abs() / rope_self_scores[0]).mean().item()  # SOLUTION
# BEGIN SOLUTION
fig, ax = plt.subplots(figsize=(7, 3))
ax.plot(rope_self_scores / rope_self_scores[0], lw=0.6)
ax.set(xlabel="offset Delta", ylabel="score / score at Delta = 0", title="RoPE: q with itself")
plt.show()
# The score oscillates with an envelope that shrinks with the offset: near tokens keep most of the
# score (decay_near), far ones only a small share (decay_far), since the fast-turning pairs of
# dimensions average out. So, all else equal, RoPE biases attention towards nearby tokens; a far
# token needs a larger content match to win. The decay is not monotone, and the model can learn
# queries and keys that overcome it.
# END SOLUTION
print("near:", decay_near, "far:", decay_far)

# %% [raw]
# # END SOLUTION

# %% [raw]
# # BEGIN TESTS

# %%
assert isinstance(rope_self_scores, torch.Tensor) and tuple(rope_self_scores.shape) == (4096,), (
    "rope_self_scores should be a tensor of 4096 scores, one per offset"
)
assert rope_self_scores.dtype == torch.float64, "compute in float64 (pass dtype=torch.float64)"
assert abs(rope_self_scores[0].item() - (q_rope @ q_rope).item()) < 1e-9, (
    "at offset 0 the score is <q, q> = |q|^2: a rotation keeps the length"
)

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
# <R_0 q, R_D q> = sum over the pairs (i, i + 32) of (q_i^2 + q_{i+32}^2) cos(D theta_i)
_theta = 10000.0 ** (-torch.arange(0, 64, 2, dtype=torch.float64) / 64)  # (32,)
_pair_sq = q_rope[:32] ** 2 + q_rope[32:] ** 2  # (32,)
_offsets = torch.arange(4096, dtype=torch.float64)[:, None]  # (4096, 1)
_expected = (_pair_sq * torch.cos(_offsets * _theta)).sum(dim=-1)
assert torch.allclose(rope_self_scores, _expected, atol=1e-9), (
    "rope_self_scores should be <R_0 q, R_D q> for D = 0..4095 (rotate q by the tables of "
    "positions 0..4095 and take the dot product with the unrotated q)"
)

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
_theta = 10000.0 ** (-torch.arange(0, 64, 2, dtype=torch.float64) / 64)
_pair_sq = q_rope[:32] ** 2 + q_rope[32:] ** 2
_rel = (_pair_sq * torch.cos(torch.arange(4096.0, dtype=torch.float64)[:, None] * _theta)).sum(-1)
_rel = _rel.abs() / _rel[0]
assert abs(decay_near - _rel[1:17].mean().item()) < 1e-9, "decay_near: offsets 1..16"
assert abs(decay_far - _rel[1024:].mean().item()) < 1e-9, "decay_far: offsets 1024..4095"
assert decay_far < decay_near, "the far offsets should keep a smaller share of the score"

# %% [raw]
# # END TESTS

# %% [raw]
# # END QUESTION

# %% [raw]
# # BEGIN QUESTION
# name: ex5
# points: 3

# %% [markdown]
# **Exercise 5. Where does the KV cache stop helping?** *(autograded)* Generate 100 tokens greedily
# (`temperature=0`) after `kv_prompt` (4 tokens) from `kv_model`, whose context is `block_size=64`,
# with and without the cache (`use_cache=True` / `False`). Set `tokens_cached` and `tokens_uncached`
# to the two outputs, and time both with `time.perf_counter()` (`seconds_cached`,
# `seconds_uncached`; time a second run of each, since a first call also pays for warming up, and on
# a busy machine the times are noisy, so they are not graded). Then count instead of timing:
# `positions_fed(kv_model, fn)` (setup cell) runs `fn()` and returns how many positions the model
# was fed at each of its forward passes, one per generated token. Set `fed_cached` and
# `fed_uncached` to these lists for the two runs, and `saving_within` and `saving_past` to the ratio
# (uncached over cached) of the positions fed over the steps whose sequence still fits the context
# (the first 61 steps: 4 to 64 tokens so far) and over the steps past it (the last 39). Read
# `GPT.generate`'s docstring (`help(GPT.generate)`) to explain the result in a comment.

# %% [raw]
# # BEGIN SOLUTION

# %%
# BEGIN PROMPT
tokens_cached, seconds_cached = ..., ...
tokens_uncached, seconds_uncached = ..., ...
# END PROMPT
# BEGIN SOLUTION NO PROMPT
def generate_100(use_cache):
    return kv_model.generate(kv_prompt, 100, temperature=0, use_cache=use_cache)


runs = {}
for use_cache in (True, False):
    tokens = generate_100(use_cache)  # the first call also warms up
    start = time.perf_counter()
    fed = positions_fed(kv_model, lambda c=use_cache: generate_100(c))
    runs[use_cache] = (tokens, time.perf_counter() - start, fed)
(tokens_cached, seconds_cached, _), (tokens_uncached, seconds_uncached, _) = runs[True], runs[False]
# END SOLUTION
fed_cached = runs[True][2]  # SOLUTION
fed_uncached = runs[False][2]  # SOLUTION
saving_within = sum(fed_uncached[:61]) / sum(fed_cached[:61])  # SOLUTION
saving_past = sum(fed_uncached[61:]) / sum(fed_cached[61:])  # SOLUTION
# BEGIN SOLUTION
# Within the context the cache feeds one position per step instead of the whole sequence. Once the
# context is full, GPT.generate slides the window and rebuilds the cache from the last block_size
# tokens at every step, exactly what the uncached path computes, so past the context both feed
# 64 positions per step: the cache saves nothing there (saving_past = 1), and the two timings of
# those steps are alike.
# END SOLUTION
print("seconds:", seconds_cached, seconds_uncached, "savings:", saving_within, saving_past)

# %% [raw]
# # END SOLUTION

# %% [raw]
# # BEGIN TESTS

# %%
assert tuple(tokens_cached.shape) == (1, 104) and torch.equal(tokens_cached, tokens_uncached), (
    "with and without the cache, greedy decoding should give the same 104 tokens"
)
assert len(fed_cached) == 100 and len(fed_uncached) == 100, (
    "fed_cached and fed_uncached should have one entry per generated token (100)"
)

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
# n tokens so far at each step: 4, 5, ..., 103; the model reads at most its last 64
_expected_uncached = [min(_n, 64) for _n in range(4, 104)]
_expected_cached = [4] + [1] * 60 + [64] * 39  # prompt, newest token only, full window again
assert list(fed_uncached) == _expected_uncached, (
    "without the cache every step feeds the last min(n, 64) tokens"
)
assert list(fed_cached) == _expected_cached, (
    "with the cache: the prompt, then one new token per step until the context is full, then "
    "the whole window at every step"
)

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
_unc = [min(_n, 64) for _n in range(4, 104)]
_cac = [4] + [1] * 60 + [64] * 39
assert abs(saving_within - sum(_unc[:61]) / sum(_cac[:61])) < 1e-9, (
    "saving_within: positions fed without the cache over those with it, first 61 steps"
)
assert abs(saving_past - 1.0) < 1e-9, "past the context the cache feeds as much as no cache"

# %% [raw]
# # END TESTS

# %% [raw]
# # END QUESTION

# %% [raw]
# # BEGIN QUESTION
# name: ex6
# manual: true
# points: 3

# %% [markdown]
# **Exercise 6. Heads after longer training.** *(open: graded by hand)* In the chapter, train the
# GPT for twice as many steps (`TRAIN["steps"]` in the settings cell; on a CPU this roughly doubles
# the chapter's training time, a few minutes). Does the validation loss keep falling, and which
# head statistics in the table of the last section change? Report the numbers of both runs side by
# side and explain what changed. *Hint:* the induction column is the one to watch.

# %% [raw]
# # BEGIN SOLUTION

# %% [markdown]
# *Model answer (what a full answer contains). The 1600-step numbers below are the chapter's
# stored CPU run; the 3200-step run was not made for this answer, so its outcome is stated as what
# to expect and what to check, and the student's own numbers decide.* With the chapter's CPU
# settings, 1600 steps end at a validation loss of about 1.25 nats/char (stored run: 1.249, against
# 1.343 for the best n-gram). With 3200 steps one expects the validation loss to be lower again
# but to fall by much less than in the first 1600 steps, since most of the gain comes early. Note
# that the cosine schedule (`lr_at`) then decays over 3200 steps, so the two runs differ in their
# learning rate at every step after the warm-up, not only in their length. The gap between the
# loss on training text and on held-out text (the line under the table) is worth reporting: if it
# widens, the longer run fits its training text better than it generalises.
#
# In the head table, the first layer is expected to stay local (high **prev**, small **back**).
# The column to watch is **induction**: in the stored 1600-step run the largest induction weight
# is only about 1.4 times the uniform baseline (0.171 against 0.121, head L2 H0). Induction heads
# tend to form with more training (Olsson et al. 2022), so a longer run may show one or more
# later-layer heads putting clearly more weight on the key that follows an earlier occurrence of
# the query's character, and looking further back. A good answer reports both tables (or the rows
# that changed), names the heads whose induction weight grew (or says that none did) and by how
# much relative to the uniform baseline, and is careful about what the numbers show: a larger
# induction weight says where the weight goes, not what the head computes, and one run per length
# is a single sample (a second seed would show how much of the change is noise).

# %% [raw]
# # END SOLUTION

# %% [raw]
# # END QUESTION

# %% [raw]
# # BEGIN QUESTION
# name: ex7
# points: 4

# %% [markdown]
# **Exercise 7. Counting the causal saving.** *(autograded)* PyTorch's `FlopCounterMode` has no
# formula for the fused CPU attention kernel, `CPU_ATTENTION` in the setup cell; the chapter gives
# it PyTorch's own formula, which counts the full $T \times T$ table. Write a FLOP formula
# `causal_sdpa_flops(query, key, value, *args, out_shape=None, **kwargs)` that counts only the
# unmasked part of the table when `is_causal=True`: the counter calls it with the *shapes*
# `(B, h, T_q, d)` of query, key and value, followed by the kernel's other arguments, `dropout_p`
# and `is_causal` (positional, where given) and keywords. With `is_causal`, query $i$ sees keys
# $0..i$, so $QK^\top$ and $AV$ take $T(T+1)/2$ rows-times-keys instead of $T^2$, at
# $2d$ FLOPs each per product; without it, return the full count (`sdpa_flop_count(query, key,
# value)`). Register it for one counter only, with
# `FlopCounterMode(display=False, custom_mapping={CPU_ATTENTION: causal_sdpa_flops})`, count the
# forward pass `flop_model(flop_idx)` (under `torch.no_grad()`), and set `causal_count` to the
# FLOPs **per token** (an int; `flop_idx` holds 2 x 64 tokens) and `kaplan_estimate` to
# `flop_model.flops_per_token()`. What is left between them? Set `gap = causal_count -
# kaplan_estimate` and split it into three positive integers (per token, forward):
# `output_layer_flops`, which the count has and the estimate leaves out; `diagonal_flops`, the
# attention the count has beyond the estimate's $2\,L\,T\,C$; and `bias_norm_flops`, which the
# estimate has and the count does not. So `gap == output_layer_flops + diagonal_flops -
# bias_norm_flops`.

# %% [raw]
# # BEGIN SOLUTION

# %%
def causal_sdpa_flops(query, key, value, *args, out_shape=None, **kwargs):
    """FLOPs of QK^T and AV, counting only the unmasked (query, key) pairs when is_causal."""
    # BEGIN SOLUTION
    is_causal = args[1] if len(args) > 1 else kwargs.get("is_causal", False)
    if not is_causal:
        return sdpa_flop_count(query, key, value)
    b, h, t, d = query
    return 2 * (2 * b * h * (t * (t + 1) // 2) * d)  # two products, 2 d FLOPs per pair each
    # END SOLUTION


# BEGIN SOLUTION NO PROMPT
cfg = flop_model.config
L, C, T, n_vocab = cfg.n_layer, cfg.n_embd, flop_idx.size(1), cfg.vocab_size
with torch.no_grad(), FlopCounterMode(
    display=False, custom_mapping={CPU_ATTENTION: causal_sdpa_flops}
) as counter:
    flop_model(flop_idx)
# END SOLUTION
causal_count = counter.get_total_flops() // flop_idx.numel()  # SOLUTION
kaplan_estimate = flop_model.flops_per_token()  # SOLUTION
gap = causal_count - kaplan_estimate  # SOLUTION
output_layer_flops = 2 * C * n_vocab  # SOLUTION
diagonal_flops = 2 * L * C  # SOLUTION
bias_norm_flops = 2 * (13 * L * C + 2 * C)  # SOLUTION
print(causal_count, kaplan_estimate, gap, output_layer_flops, diagonal_flops, bias_norm_flops)

# %% [raw]
# # END SOLUTION

# %% [raw]
# # BEGIN TESTS

# %%
assert isinstance(causal_count, int), "causal_count should be an int (FLOPs per token)"
assert gap == causal_count - kaplan_estimate, "gap should be causal_count - kaplan_estimate"
assert gap == output_layer_flops + diagonal_flops - bias_norm_flops, (
    "the three parts should add up: gap == output_layer_flops + diagonal_flops - bias_norm_flops"
)

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
_shape = torch.Size([2, 3, 10, 4])  # (B, h, T, d)
_full = 2 * (2 * 2 * 3 * 10 * 10 * 4)  # QK^T and AV, every pair
assert causal_sdpa_flops(_shape, _shape, _shape, 0.0, False) == _full, (
    "without is_causal, causal_sdpa_flops should count the full table, as sdpa_flop_count does"
)
assert causal_sdpa_flops(_shape, _shape, _shape, 0.0, True) == 2 * (2 * 2 * 3 * 55 * 4), (
    "with is_causal, count only the 10 * 11 / 2 = 55 unmasked pairs per head"
)
assert causal_sdpa_flops(_shape, _shape, _shape) == _full, "is_causal defaults to False"

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
_c = flop_model.config
_L, _C, _T, _V = _c.n_layer, _c.n_embd, flop_idx.size(1), _c.vocab_size
# per token: T(T+1)/2 pairs x 2 products x 2 C FLOPs per layer, over T tokens = 2 L C (T+1)
_expected = 2 * 12 * _L * _C * _C + 2 * _L * _C * (_T + 1) + 2 * _C * _V
assert causal_count == _expected, (
    f"causal_count should be {_expected:,} FLOPs per token: the blocks' weight matrices, the "
    "unmasked half of attention (diagonal included) and the output layer"
)

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
_c = flop_model.config
_L, _C, _V = _c.n_layer, _c.n_embd, _c.vocab_size
_n_small = flop_model.num_parameters(exclude_embeddings=True) - 12 * _L * _C * _C  # not matrices
assert output_layer_flops == 2 * _C * _V, "output_layer_flops: 2 C n_vocab, the output layer"
assert diagonal_flops == 2 * _L * _C, (
    "diagonal_flops: the causal count has T(T+1)/2 pairs where the estimate has T^2/2"
)
assert bias_norm_flops == 2 * _n_small, (
    "bias_norm_flops: 2 FLOPs for every bias and LayerNorm parameter counted in N"
)

# %% [raw]
# # END TESTS

# %% [raw]
# # END QUESTION
