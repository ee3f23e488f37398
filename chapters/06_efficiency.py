# %% [markdown]
# # 6. Quantifying efficiency: the compute, memory, time and money a ChatGPT costs
#
# Two of the articles this book grew out of promise to quantify ChatGPT: "the efficiency gains it may
# bring" and "its principles and its cost". Neither gives a number a reader could check. This chapter
# gives every number with its derivation, checks each formula against PyTorch's own counters on your
# machine, scales the formulas up to real models with published figures, and then reads the published
# experiments on productivity soberly. By the end you can answer, for a model of any size:
#
# 1. How many {term}`floating-point operations <floating-point operation (FLOP)>` (FLOPs) does training it cost, and generating one token?
# 2. How fast does *your* hardware do them, and how much of that speed does a training run use?
# 3. Where does the memory go — weights, gradients, {term}`optimiser state`, activations, the {term}`KV cache`?
# 4. What did real models cost to train, and what does an answer cost to serve?
# 5. Which tricks make inference faster here, by how much, and at what price in quality?
# 6. What do the experiments say about productivity, and why do large gains on a task become small
#    gains in a whole economy?
#
# The code lives in `aigc_book.efficiency`: `flops` (counting), `hardware` (peaks, the {term}`roofline <roofline model, ridge point>`,
# utilisation), `memory` and `checkpointing`, `inference`, `cost`, `data_parallel` (DDP and FSDP checked,
# the all-reduce's cost); `aigc_book.generation.speculative`; `aigc_book.training.distributed` (the
# trainer's data-parallel plumbing); and `aigc_book.productivity`. The command
# `python -m aigc_book measure` measures your machine outside the notebook.

# %%
import math
import time
from dataclasses import dataclass

import matplotlib.pyplot as plt
import torch
from IPython.display import Markdown, display

from aigc_book import ChapterSettings, get_device, seed_everything, use_book_style
from aigc_book.models.gpt import GPT
from aigc_book.models.transformer import TransformerConfig

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
# Every size is set in the next cell. The CPU values produced the outputs stored in the notebook and
# finish in a few minutes on a laptop; on a CUDA GPU the same cells measure the GPU with models large
# enough to keep it busy (a 1.3-billion-parameter GPT for the utilisation), and every sentence that
# quotes a result is rendered from the numbers.


# %%
@dataclass(frozen=True)
class Settings(ChapterSettings):
    flop_shapes: tuple = (
        (2, 64, 4, 64),
        (4, 128, 4, 128),
        (3, 96, 4, 128),
    )  # (layers, width, heads, T)
    mfu_shape: tuple = (
        4,
        128,
        4,
        128,
    )  # the GPT whose training step is timed: layers, width, heads, T
    mfu_batch: int = 16
    mfu_vocab: int = 96
    mfu_steps: int = 5
    mfu_dtype: str = "float32"
    matmul_n: int = 1024
    mem_shape: tuple = (4, 128, 4, 128)  # the GPT whose memory is measured: layers, width, heads, T
    mem_batch: int = 8
    lm_seqs: int = 20_000  # bracket-language sequences for the served models
    lm_len: int = 48
    target_shape: tuple = (4, 128, 4)  # layers, width, heads
    target_steps: int = 100
    draft_shape: tuple = (1, 32, 2)
    draft_steps: int = 150
    decode_batches: tuple = (1, 4, 16, 64)
    speculative_ks: tuple = (2, 4, 8)

    cuda = dict(  # what a CUDA GPU changes (Settings.for_device)
        mfu_shape=(24, 2048, 16, 1024),
        mfu_batch=8,
        mfu_vocab=50304,
        mfu_steps=10,
        mfu_dtype="bfloat16",
        matmul_n=8192,
        mem_shape=(8, 512, 8, 512),
        mem_batch=16,
        target_shape=(8, 512, 8),
        target_steps=500,
        decode_batches=(1, 4, 16, 64, 256, 1024),
    )


settings = Settings.for_device(device)
print(settings.table())

# %% [markdown]
# ## Counting FLOPs
#
# *How many floating-point operations does a token cost, and how do we know the formula is right?*
#
# Chapter 2 derived the count for one small GPT (section "Counting FLOPs" there): a weight matrix with
# $P$ entries costs $2P$ {term}`FLOPs per token` (a multiply and an add per weight), so the $N$ non-embedding
# parameters cost $2N$ in the forward pass; attention adds the scores $QK^\top$ and the weighted sum
# $AV$, $4\,L\,T\,C$ FLOPs per token over the full $T\times T$ table for $L$ layers of width $C$; the
# output layer adds $2\,C\,V$ for a vocabulary of $V$. The backward pass computes two products for
# every one of the forward pass (the gradient with respect to the input and to the weight), so
# training costs three times the forward pass (Kaplan et al. 2020, §2.1):
#
# $$C_\text{train} \approx 3\,(2N + 4LTC + 2CV) \approx 6N \quad\text{per token, when } T \ll 6C
#   \text{ and } V \ll N/C.$$
#
# `GPT.flops_per_token(T, training=..., output_layer=True, full_attention=True)` computes the full
# expression; the defaults give Kaplan's shorter one. The independent count is PyTorch's
# `FlopCounterMode`, which watches every matrix product that actually runs. Chapter 2 showed its
# trap: with PyTorch 2.13 on a CPU it has no formula for the fused attention kernel, so attention
# silently counts zero. `aigc_book.efficiency.flops.count_flops` registers the formula PyTorch uses
# for the CUDA kernels first. Here is the formula against the counter for models of several shapes:

# %%
from aigc_book.efficiency import flops as flopcount

check_rows = []
for n_layer, n_embd, n_head, T_ctx in settings.flop_shapes:
    cfg = TransformerConfig(
        vocab_size=96, block_size=T_ctx, n_layer=n_layer, n_head=n_head, n_embd=n_embd
    )
    net = GPT(cfg).to(device)
    x = torch.randint(0, 96, (2, T_ctx), device=device)
    counted_fwd = flopcount.count_flops(lambda net=net, x=x: net(x)) / x.numel()
    counted_train = (
        flopcount.count_flops(lambda net=net, x=x: net(x, x).loss.backward()) / x.numel()
    )
    formula_fwd = net.flops_per_token(T_ctx, output_layer=True, full_attention=True)
    formula_train = net.flops_per_token(
        T_ctx, training=True, output_layer=True, full_attention=True
    )
    check_rows.append(
        (f"{n_layer}x{n_embd}, T={T_ctx}", counted_fwd, formula_fwd, counted_train, formula_train)
    )
    assert (
        abs(formula_fwd / counted_fwd - 1) < 0.05 and abs(formula_train / counted_train - 1) < 0.05
    )
print(
    f"{'model':<16}{'counted fwd':>13}{'formula':>13}{'ratio':>7}{'counted train':>15}"
    f"{'formula':>13}{'ratio':>7}"
)
for name, cf, ff, ct, ft in check_rows:
    print(
        f"{name:<16}{cf:>13,.0f}{ff:>13,.0f}{ff / cf:>7.3f}{ct:>15,.0f}{ft:>13,.0f}{ft / ct:>7.3f}"
    )

# %% [markdown]
# The formula is within 5% of the count for each model (the asserts). The gaps are not noise; every one
# can be named, and `flops_differences` does so in whole FLOPs per token for the largest model above:

# %%
# NBVAL_CHECK_OUTPUT
diff = flopcount.flops_differences(net, T_ctx, batch=2)
assert (
    13 / (12 * 22) < 0.05 < 13 / (12 * 21)
)  # biases and norms, 13C per layer against 12C², pass 5% below width 22
assert (
    diff["counted_forward"]
    == diff["weight_matrices"] + diff["attention_full"] + diff["output_layer"]
)
assert diff["formula_forward"] == diff["counted_forward"] + diff["biases_and_norms"]
assert diff["counted_training"] == 3 * diff["counted_forward"]
assert diff["counted_training_fused"] == diff["counted_training"] + diff["attention_recompute"]
for key in (
    "weight_matrices",
    "attention_full",
    "output_layer",
    "biases_and_norms",
    "embedding_lookups",
    "first_layer_input_grad_skipped",
    "attention_recompute",
    "elementwise_estimate",
):
    print(f"{key:<32}{diff[key]:>12,}")

# %% [markdown]
# Reading the list: the counter sees the weight matrices, the full attention table and the output
# layer, and nothing else (first assert). The formula also counts 2 FLOPs for every bias and LayerNorm
# parameter, as if they were weights (second). The backward pass is exactly twice the forward with the
# written-out attention (third); with the fused kernel it counts one more $QK^\top$, because
# FlashAttention does not store the $T\times T$ weights and recomputes the scores in the backward pass
# (Dao et al. 2022, §3.1) — work the hardware does, but not *model* FLOPs. Embedding look-ups are
# copies, not arithmetic. Nothing is skipped in the first layer's backward here, because the token
# embedding is trained: its input gradient is needed. Softmax, GELU, LayerNorm and residual additions
# are not matrix products; the last line is a rough estimate of them (a stated convention of a few
# FLOPs per element), a few per cent of the total for this small model. The 5% agreement needs
# the width to dominate: biases and LayerNorm parameters add about $13/(12C)$ to $N$'s matrices, more
# than 5% once the model is narrower than about 22.
#
# **What causal masking saves.** A token attends only to the tokens before it, so half the $T\times T$
# table is never needed. The counter and the written-out attention compute it all; Kaplan's count
# ($2LTC$ instead of $4LTC$) assumes the half; a tiled kernel such as FlashAttention skips the tiles
# above the diagonal and computes the diagonal ones whole:

# %%
for T_ctx in (256, 1024, 8192):
    frac = flopcount.causal_tile_fraction(T_ctx)
    print(f"T = {T_ctx:>5}: a causal kernel with 128 x 128 tiles computes {frac:.1%} of the table")
assert flopcount.causal_tile_fraction(1024) == (8 * 9 / 2) / 64  # 36 of the 64 tiles, by hand

# %% [markdown]
# **How wrong is $6N$?** The rule leaves out attention and the output layer. For a model as wide as
# GPT-3 (Brown et al. 2020: 96 layers, width 12,288), attention is small until the context is long:

# %%
contexts = [512, 2048, 8192, 32768, 131072]
gpt3_ratio = flopcount.six_n_ratio(flopcount.gpt3_175b_config(), contexts)
small_cfg = TransformerConfig(
    vocab_size=96, block_size=max(contexts), n_layer=2, n_head=4, n_embd=64
)
small_ratio = flopcount.six_n_ratio(small_cfg, contexts)
fig, ax = plt.subplots(figsize=(6.5, 3.8))
ax.plot(contexts, gpt3_ratio, "o-", label="GPT-3 175B shape (96 x 12288)")
ax.plot(contexts, small_ratio, "s-", label="a 2 x 64 GPT (this chapter's size)")
ax.set_xscale("log", base=2)
ax.set_yscale("log")
ax.set_xlabel("context length T (tokens)")
ax.set_ylabel("true training FLOPs / 6N")
ax.set_title("The 6N rule undercounts as the context grows")
ax.legend()
plt.show()
display(
    Markdown(
        f"What to see: for GPT-3's shape $6N$ is off by {gpt3_ratio[1] - 1:.0%} at its own "
        f"context of 2,048 tokens, by {gpt3_ratio[2] - 1:.0%} at 8,192 and by a factor "
        f"{gpt3_ratio[-1]:.1f} at 131,072 — long-context training is *not* $6ND$. For a model 64 "
        f"wide, attention dominates already at {contexts[1]:,} tokens ({small_ratio[1]:.1f}×). "
        "The ratio grows linearly in $T/C$: attention's $12LTC$ against the weights' $72LC^2$."
    )
)

# %% [markdown]
# ## Peak FLOP/s and model FLOP utilisation
#
# *How fast can your machine multiply, and how much of that does training a GPT use?*
#
# A datasheet's peak is a ceiling. The first measurement is what a large matrix product actually
# achieves here, in float32 and in bfloat16 (16-bit "brain" floating point: float32's exponent range
# with 8 bits of precision, 7 of them stored: checked below). Then a real training step of a GPT — forward, backward and an AdamW update
# on random tokens — gives the **{term}`model FLOP utilisation <model FLOP utilisation (MFU)>`** (Chowdhery et al. 2022, App. B): the model
# FLOPs per token times the tokens per second, divided by the peak. "Model FLOPs" are the FLOPs the
# model needs, not the ones the hardware happened to do: recomputation (checkpointing, the fused
# kernel's backward) does not count.

# %%
from aigc_book.efficiency import cost, hardware

assert (
    torch.finfo(torch.bfloat16).eps == 2**-7 and torch.finfo(torch.float32).eps == 2**-23
)  # stored mantissa bits
peaks = {"float32": hardware.matmul_peak(device, torch.float32, n=settings.matmul_n)}
if hardware.bf16_supported(device):
    peaks["bfloat16"] = hardware.matmul_peak(device, torch.bfloat16, n=settings.matmul_n)
for dtype_name, value in peaks.items():
    print(
        f"{settings.matmul_n} x {settings.matmul_n} matrix product, {dtype_name:<9}: "
        f"{value / 1e12:8.3f} TFLOP/s"
    )
datasheet = None
if device.type == "cuda" and any(
    chip in torch.cuda.get_device_name(device) for chip in ("H100", "H200")
):
    datasheet = {a.name: a for a in cost.load_accelerators()}[
        "H100 SXM"
    ].peak_flops  # the H200 has the same units
    print(f"datasheet dense BF16 peak of an H100 SXM: {datasheet / 1e12:.0f} TFLOP/s")

# %%
L_mfu, C_mfu, H_mfu, T_mfu = settings.mfu_shape
mfu_config = TransformerConfig(
    vocab_size=settings.mfu_vocab,
    block_size=T_mfu,
    n_layer=L_mfu,
    n_head=H_mfu,
    n_embd=C_mfu,
    dropout=0.0,
)
run = hardware.training_mfu(
    mfu_config,
    settings.mfu_batch,
    device,
    steps=settings.mfu_steps,
    dtype=settings.mfu_dtype,
    peak=peaks[settings.mfu_dtype],
)
assert math.isclose(
    run["achieved_flops"], run["flops_per_token"] * run["tokens_per_s"], rel_tol=1e-9
)
print(
    f"GPT {L_mfu} x {C_mfu}, T = {T_mfu}, batch {settings.mfu_batch}, {run['params'] / 1e6:.1f} M "
    f"parameters, {settings.mfu_dtype}: {run['ms_per_step']:.1f} ms per step, "
    f"{run['tokens_per_s']:,.0f} tokens/s"
)
print(
    f"model FLOPs per token {run['flops_per_token']:,.0f} -> {run['achieved_flops'] / 1e12:.3f} "
    f"TFLOP/s achieved, MFU {run['mfu']:.0%} of the measured {settings.mfu_dtype} peak"
)
if datasheet is not None:
    print(
        f"MFU against the datasheet peak: {run['achieved_flops'] / datasheet:.1%} "
        "(goal: at least 40%)"
    )
if run["peak_memory_bytes"] is not None:
    print(f"peak GPU memory of the step: {run['peak_memory_bytes'] / 2**30:.1f} GiB")

# %% [markdown]
# For reference, the published utilisations of large runs: PaLM 46.2% on 6,144 TPU v4 chips, against
# 21.3% for GPT-3 and 32.5% for Gopher as PaLM's authors computed them (Chowdhery et al. 2022, §4.1);
# Llama 3.1 405B 38–43% on up to 16,000 H100s (Llama Team 2024). On a CPU, a small model can use a
# large share of a small peak: the matrix products dominate and the CPU's peak is low. On a GPU, a small
# model leaves most of the chip idle — the next section shows why.

# %% [markdown]
# ## The roofline: compute-bound or memory-bound
#
# *Why do small models and decoding use so little of the peak?*
#
# An operation reads and writes bytes and does FLOPs. Its **{term}`arithmetic intensity`** is FLOPs per byte
# moved. If memory delivers $\beta$ bytes per second, an operation of intensity $I$ cannot run faster than
# $I\beta$ FLOP/s, nor faster than the peak $\pi$: attainable $=\min(\pi, I\beta)$, the **roofline**
# (Williams, Waterman & Patterson 2009). The bend, the **ridge point** $\pi/\beta$, separates
# {term}`memory-bound <memory-bound, compute-bound>` operations (left) from compute-bound ones (right). An $n\times n$ matrix product does
# $2n^3$ FLOPs on $3n^2$ numbers: its intensity grows with $n$. A softmax, a LayerNorm or a GELU does a
# few FLOPs per number it reads: they are memory-bound everywhere. So is a decoding step at batch 1: each
# weight is read once and used for one multiply-add.

# %%
bandwidth_here = hardware.memory_bandwidth(device)
roof_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
roof_peak = peaks["bfloat16" if device.type == "cuda" else "float32"]
rows = hardware.roofline(device, roof_dtype)
assert rows[0]["name"] == "matmul 64" and rows[0]["flops"] == 2 * 64**3  # by hand: 2n^3 FLOPs
print(
    f"memory bandwidth (copy): {bandwidth_here / 1e9:.1f} GB/s; ridge point "
    f"{roof_peak / bandwidth_here:.1f} FLOP/byte"
)
print(f"{'operation':<24}{'FLOP/byte':>10}{'achieved GFLOP/s':>18}{'roofline GFLOP/s':>18}")
for r in rows:
    print(
        f"{r['name']:<24}{r['intensity']:>10.2f}{r['flops_per_s'] / 1e9:>18.1f}"
        f"{hardware.attainable_flops(r['intensity'], roof_peak, bandwidth_here) / 1e9:>18.1f}"
    )

# %%
fig, ax = plt.subplots(figsize=(7, 4.5))
hardware.plot_roofline(
    ax, rows, roof_peak, bandwidth_here, title=f"The roofline of this machine ({device.type})"
)
plt.show()

# %%
by_op = {r["name"]: r for r in rows}
decode_row = by_op["GPT decode step"]
largest = max((r for r in rows if r["name"].startswith("matmul")), key=lambda r: r["flops"])
of_roof = {
    name: by_op[name]["flops_per_s"]
    / hardware.attainable_flops(by_op[name]["intensity"], roof_peak, bandwidth_here)
    for name in by_op
}


def pct(x):
    """A share as a percentage with two significant digits (0.047 -> 4.7%, 0.00009 -> 0.009%)."""
    return f"{100 * x:.0f}%" if x >= 0.095 else f"{100 * x:.2g}%"


display(
    Markdown(
        f"What to see: the largest matrix product ({largest['name']}, "
        f"{largest['intensity']:.0f} FLOP/byte) reaches {pct(of_roof[largest['name']])} "
        "of its roofline; the softmax, LayerNorm and GELU, at about one FLOP "
        "per byte, sit on the slanted part, where memory sets the limit "
        f"(they reach {pct(min(of_roof[n] for n in ('softmax', 'layernorm', 'gelu')))} "
        f"to {pct(max(of_roof[n] for n in ('softmax', 'layernorm', 'gelu')))} of it). "
        f"A GPT decoding step at batch 1 has an intensity of {decode_row['intensity']:.2f} "
        f"FLOP/byte and reaches {pct(decode_row['flops_per_s'] / roof_peak)} of the peak. "
        "The training step, whose products reuse each weight for every token of the batch, is "
        "where the FLOPs are used. Small operations fall well short of even their slanted roof: "
        "each launch has a fixed cost (large on a GPU) that no bandwidth figure includes. "
        "A point above the line means the data stayed in a cache faster than main memory."
    )
)

# %% [markdown]
# ## Where the memory goes
#
# *How many bytes does training take, and which part grows with what?*
#
# A training step keeps four kinds of tensors in memory:
#
# * the **parameters**, 4 bytes each in float32;
# * their **gradients**, as many again;
# * the **optimiser state**: AdamW keeps two moments per parameter (Loshchilov & Hutter 2019), 8 bytes,
#   plus one step counter per parameter tensor — 16 bytes per parameter in all. Mixed-precision recipes
#   come to the same 16 (2 for 16-bit weights, 2 for gradients, 12 for float32 master weights and
#   moments: Rajbhandari et al. 2020, §3.1);
# * the **activations** that the forward pass saves for the backward pass, which grow with the batch
#   and the context, not with the optimiser.
#
# `training_memory` measures each kind on a real step: the state from the tensors themselves, the
# activations with `saved_tensors_hooks`, which see every tensor autograd keeps. The formulas must
# match to the byte.

# %%
from aigc_book.efficiency import checkpointing, memory
from aigc_book.layers.kv_cache import KVCache
from aigc_book.training.objectives import causal_lm_loss

L_mem, C_mem, H_mem, T_mem = settings.mem_shape
mem_config = TransformerConfig(
    vocab_size=96, block_size=T_mem, n_layer=L_mem, n_head=H_mem, n_embd=C_mem
)
mem_model, mem_batch = memory.lm_training_setup(mem_config, settings.mem_batch, T_mem, device)
measured = memory.training_memory(
    mem_model, lambda ps: torch.optim.AdamW(ps, lr=1e-3), mem_batch, causal_lm_loss
)
n_params = mem_model.num_parameters()
state = memory.training_state_bytes(n_params, n_param_tensors=len(list(mem_model.parameters())))
act_formula = memory.activation_bytes(mem_config, settings.mem_batch, T_mem)
assert measured.parameters == state["parameters"] and measured.gradients == state["gradients"]
assert measured.optimizer_state == state["momentum"] + state["variance"] + state["step counters"]
# Exact on a CPU; CUDA's attention kernels pad what they save (log-sum-exp rows to a multiple
# of 32, a seed), so there the formula is checked to 2%.
agrees = (lambda a, b: a == b) if device.type == "cpu" else (lambda a, b: abs(a - b) <= 0.02 * b)
assert agrees(measured.activations, act_formula), (measured.activations, act_formula)
print(
    f"GPT {L_mem} x {C_mem}, {n_params:,} parameters, batch {settings.mem_batch} x {T_mem} "
    "tokens (float32):"
)
for kind, value in (
    ("parameters", measured.parameters),
    ("gradients", measured.gradients),
    ("AdamW state", measured.optimizer_state),
    ("activations", measured.activations),
):
    print(f"  {kind:<13}{value / 2**20:>9.2f} MiB  ({value / measured.total:.0%})")
if measured.peak_cuda is not None:
    print(
        f"  torch.cuda.max_memory_allocated over the step: {measured.peak_cuda / 2**20:.2f} MiB "
        f"(allocator rounding, temporaries and workspaces included)"
    )
print(
    f"per layer: B x T x (16 C + 4 + heads) x 4 bytes = "
    f"{memory.layer_activation_bytes(mem_config, settings.mem_batch, T_mem):,} bytes"
)

# %% [markdown]
# Every line equals its formula (the asserts; to the byte on a CPU). The activations dominate here, and they grow linearly
# with the batch and the context. Our per-layer formula is $B\,T\,(16C + 4 + a)$ numbers for width $C$
# and $a$ heads. Korthikanti et al. (2022) give the standard one for GPT layers in 16-bit precision,
# $s\,b\,h\,(34 + 5as/h)$ bytes per layer; term by term, the two differ where the implementations do:

# %%
print(f"{'term (one layer)':<42}{'Korthikanti':>12}{'ours':>12}  why they differ")
for r in memory.activation_reconciliation(mem_config, settings.mem_batch, T_mem):
    print(f"{r['term'][:41]:<42}{r['korthikanti']:>12,}{r['ours']:>12,}  {r['why']}")

# %% [markdown]
# Their 34 is our 16 tensors of width $C$ at 2 bytes each, plus two 1-byte dropout masks; their
# $5as/h$ is the $s\times s$ attention table, stored per head, which the fused kernel never keeps (it
# keeps one log-sum-exp per row instead and recomputes the table in the backward pass). Without it,
# {term}`activation memory` grows linearly with the context rather than quadratically.
#
# **At scale** the state dominates instead. At 16 bytes per parameter, and the **KV cache** of
# inference next to it, the cache's size is $2\,L\,n_\text{kv}\,d_\text{head}\,T\,B$ numbers (keys
# and values, every layer, every cached position); with {term}`grouped-query attention <grouped-query attention (GQA)>` $n_\text{kv}$, the
# key/value heads, is smaller than the query heads (Ainslie et al. 2023):

# %%
small_cache = KVCache(n_layer=3, batch=2, n_head=2, max_len=50, head_dim=16, dtype=torch.bfloat16)
assert (
    memory.kv_cache_bytes(3, 2, 16, 50, 2, bytes_per_element=2)
    == small_cache.k.numel() * small_cache.k.element_size()
    + small_cache.v.numel() * small_cache.v.element_size()
)
kv_per_token_of = {}
for shape in memory.KV_CACHE_SHAPES.values():
    per_token = memory.kv_cache_bytes(
        shape.n_layer, shape.n_kv_head, shape.head_dim, 1, 1, bytes_per_element=2
    )
    kv_per_token_of[shape.name] = per_token
    full = per_token * shape.context
    print(
        f"{shape.name:<12} {shape.n_layer} layers, {shape.n_head} query / {shape.n_kv_head} "
        f"key-value heads: {per_token / 2**10:,.0f} KiB per token in bf16, {full / 2**30:.2f} GiB "
        f"per {shape.context:,}-token sequence"
    )
for name, n in (("GPT-3 175B", 175e9), ("Llama 2 70B", 70e9)):
    print(
        f"{name:<12} training state at 16 bytes/parameter: {n * 16 / 1e12:.2f} TB "
        f"= {n * 16 / 80e9:.0f} GPUs of 80 GB before any activation"
    )
print(
    "GPT-3's cache per token / Llama 2 70B's: "
    f"{kv_per_token_of['GPT-3 175B'] / kv_per_token_of['Llama 2 70B']:.1f}"
)

# %% [markdown]
# So a model of 175 billion parameters cannot be trained on one GPU, or eight: its state alone needs
# dozens, which is why large runs shard the state across GPUs (the section "When one machine is not
# enough"). And GPT-3's cache per token is many times Llama 2 70B's (the last line), for a model of
# comparable size: 96 key/value heads instead of 8, and more layers.

# %% [markdown]
# ## Trading time for memory
#
# *Can we spend compute to save memory?*
#
# **{term}`Activation checkpointing <activation checkpointing>`** (Chen et al. 2016) keeps only each block's input during the forward
# pass and recomputes the block's activations in the backward pass: one more forward pass through the
# blocks, about a third more time, for most of the activation memory. `checkpointed_blocks` wraps each
# block in `torch.utils.checkpoint` and leaves the weights and their names untouched. **Mixed
# precision** (Micikevicius et al. 2018) runs the matrix products in 16 bits under `torch.autocast`:
# their saved inputs take half the bytes; what autocast keeps in float32 does not shrink.

# %%
trade = checkpointing.checkpointing_tradeoff(
    mem_config, settings.mem_batch, T_mem, device, repeats=3
)
assert agrees(trade["activations"], trade["activations formula"])
assert agrees(trade["activations checkpointed"], trade["activations checkpointed formula"])
precision = memory.memory_by_precision(mem_config, settings.mem_batch, T_mem, device)
assert agrees(precision["autocast"], precision["autocast formula"])
print(
    f"activations, float32:            {trade['activations'] / 2**20:8.2f} MiB, "
    f"{trade['ms per step']:.0f} ms per step"
)
print(
    f"activations, checkpointed:       {trade['activations checkpointed'] / 2**20:8.2f} MiB, "
    f"{trade['ms per step checkpointed']:.0f} ms per step"
)
print(
    f"activations, bf16 autocast:      {precision['autocast'] / 2**20:8.2f} MiB "
    f"(+ {precision['parameter copies'] / 2**20:.2f} MiB of 16-bit weight copies)"
)
display(
    Markdown(
        f"Checkpointing saved {trade['memory saved']:.0%} of the activation memory "
        f"for {trade['extra time']:+.0%} time per step (Chen et al. expect about "
        "one extra forward pass, a third of a step). Autocast cut the activations "
        f"to {precision['autocast'] / precision['float32']:.0%} of float32, not 50%: "
        "the LayerNorm inputs (the residual stream) and their statistics, the attention's "
        "log-sum-exp and the loss's log-probabilities stay in float32, as autocast's rules keep "
        "precision-sensitive operations there."
    )
)

# %% [markdown]
# ## From our GPT to GPT-3: training compute and money
#
# *What did real models cost to train, and what would one cost you?*
#
# Training costs about $6ND$ FLOPs for $N$ parameters and $D$ tokens (the section "Counting FLOPs" above
# showed where the 6 comes from and what it leaves out). The table applies it to every model in the
# book's table of published figures (chapter 1), next to the compute the authors published, and —
# where they published GPU-hours — the **implied utilisation**: $6ND$ divided by what the GPUs could
# have done at their dense BF16 peak in those hours. Peaks are the datasheet's dense figures
# (A100: 312 TFLOP/s; H100 SXM: 989 TFLOP/s); the headline figures twice as large assume 2:4 sparsity,
# which training does not use. DeepSeek-V3 is a mixture of experts: each token passes through
# 37 billion of its 671 billion parameters (DeepSeek-AI 2024), so $N$ is the active count.

# %%
table = cost.compute_table()
print(
    f"{'model':<16}{'N (active)':>11}{'D tokens':>10}{'6ND':>10}{'published':>11}{'ratio':>7}"
    f"{'GPU-hours':>12}{'implied MFU':>13}"
)
for r in table:

    def fmt(x, spec):
        return format(x, spec) if x is not None else "-"

    print(
        f"{r.model:<16}{r.active_params:>11.3g}{fmt(r.tokens, '.3g'):>10}"
        f"{fmt(r.flops_6nd, '.3g'):>10}{fmt(r.published_flops, '.3g'):>11}{fmt(r.ratio, '.3f'):>7}"
        f"{fmt(r.gpu_hours, ',.0f'):>12}{fmt(r.implied_mfu, '.1%'):>13}"
    )
by_name = {r.model: r for r in table}
gpt3, llama405 = by_name["GPT-3"], by_name["Llama 3.1 405B"]
assert abs(gpt3.flops_6nd / gpt3.published_flops - 1) < 0.01  # Brown et al. 2020, Table D.1
assert abs(llama405.flops_6nd / llama405.published_flops - 1) < 0.01  # Llama Team 2024: 3.8e25
display(
    Markdown(
        f"For GPT-3, $6ND$ = {gpt3.flops_6nd:.3g} FLOPs against the "
        f"published {gpt3.published_flops:.3g} (Brown et al. 2020, Table D.1): "
        f"{abs(gpt3.ratio - 1):.1%} apart; for Llama 3.1 405B, "
        f"{llama405.flops_6nd:.3g} against {llama405.published_flops:.3g}. "
        "Hoffmann et al. (2022) count FLOPs with a fuller formula and give Chinchilla and "
        f"Gopher the same compute, {by_name['Gopher'].published_flops:.3g}; $6ND$ gives "
        f"them {by_name['Chinchilla'].flops_6nd:.3g} and {by_name['Gopher'].flops_6nd:.3g}: "
        "a rule of thumb, good to about ten per cent. The implied utilisations "
        f"range from {min(r.implied_mfu for r in table if r.implied_mfu):.0%} "
        f"to {max(r.implied_mfu for r in table if r.implied_mfu):.0%}. "
        "They count every hour the GPUs were held (restarts, evaluation and stragglers included), "
        "so they are lower bounds on the utilisation of the training steps themselves: "
        "for Llama 3.1 405B the paper reports 38–43% measured during training, "
        f"above the {llama405.implied_mfu:.1%} implied here."
    )
)

# %% [markdown]
# Money follows from hours. Nobody publishes what a run was billed; the estimates below are
# reconstructions from rental prices, each with its source. Note how DeepSeek's figure is built: GPU-hours
# of the final run times an *assumed* $2 per hour, which leaves out the research and failed runs
# before it.

# %%
for c in cost.PUBLISHED_TRAINING_COSTS:
    print(f"{c.model:<14} ${c.cost_usd / 1e6:>6.1f} M   {c.basis}  ({c.source})")
print(f"frontier training costs grew {cost.COST_GROWTH_PER_YEAR}x per year (Cottier et al. 2024)")

# %% [markdown]
# The calculator: choose an accelerator, a count, the utilisation you expect (this chapter measures
# yours below), a price, and a model. The static table under it is GPT-3's recipe on 1,024 accelerators
# at 40% MFU and $2 per hour.

# %% tags=["remove-output"]
# NBVAL_IGNORE_OUTPUT
display(cost.cost_calculator_widget())

# %%
print(
    cost.format_cost_table(
        cost.cost_table(175e9, 300e9, n_accelerators=1024, mfu=0.40, price_per_hour=2.0)
    )
)

# %% [markdown]
# ## The cost of an answer
#
# *What limits the speed of generating text, and what does a million tokens cost?*
#
# Generating one token with a KV cache runs the model on *one* position: $2N$ FLOPs for the weights,
# plus attention over the $t$ cached positions ($4LtC$) and the output layer ($2CV$). Checked with the
# counter on one cached step of a small GPT:

# %%
net = (
    GPT(TransformerConfig(vocab_size=96, block_size=128, n_layer=4, n_head=4, n_embd=128))
    .to(device)
    .eval()
)
prompt = torch.randint(0, 96, (1, 100), device=device)
kv = net.new_kv_cache(1)
with torch.no_grad():
    net(prompt, kv_cache=kv)  # the prompt fills the cache: 100 positions
    t_keys = kv.length + 1  # the new token attends to the cached ones and itself
    step_flops = flopcount.count_flops(lambda: net(prompt[:, -1:], kv_cache=kv))
c = net.config
expected = (
    2 * 12 * c.n_layer * c.n_embd**2
    + 4 * c.n_layer * t_keys * c.n_embd
    + 2 * c.n_embd * c.vocab_size
)
assert step_flops == expected
print(
    f"one decoding step at position {t_keys}: {step_flops:,} FLOPs counted = 2 x 12LC² + 4LtC "
    f"+ 2CV; 2N alone is {2 * net.num_parameters(exclude_embeddings=True):,}"
)

# %% [markdown]
# So serving a 70-billion-parameter model costs about $1.4\times10^{11}$ FLOPs per token. But FLOPs are
# not what limits a decoding step: **memory traffic** is. Every step must read every weight from memory
# (and the whole KV cache), and produces one token per sequence. A step can go no faster than either
#
# $$t_\text{compute} = \frac{2N\cdot B}{\text{peak FLOP/s}}, \qquad
#   t_\text{memory} = \frac{N\cdot b + \text{KV bytes}}{\text{bandwidth}},$$
#
# for a batch of $B$ sequences and $b$ bytes per weight (2 in bf16). Without the cache term, the two
# meet at the **{term}`critical batch <critical batch size>`** $B^* = \frac{\text{peak}}{\text{bandwidth}}\cdot\frac{b}{2}$, whatever
# the model's size. Below it, adding sequences to the batch is nearly free; that is why servers batch.
# Take Llama 2 70B (Touvron et al. 2023: 80 layers, width 8,192, 64 query heads sharing 8 key/value
# heads, grouped-query attention) on two H100s, the fewest that hold its 140 GB of bf16 weights:

# %%
h100 = {a.name: a for a in cost.load_accelerators()}["H100 SXM"]
gpus, N70, price = 2, 70e9, 2.0  # price: dollars per GPU-hour, DeepSeek-AI's assumption
peak, bandwidth = gpus * h100.peak_flops, gpus * h100.bandwidth
b_star = cost.critical_batch(N70, 2, peak, bandwidth)
at_b_star = cost.decode_step_bounds(N70, math.ceil(b_star), peak_flops=peak, bandwidth=bandwidth)
assert math.isclose(
    b_star, h100.peak_flops / h100.bandwidth * 2 / 2
)  # N cancels; so does the GPU count
llama = memory.KV_CACHE_SHAPES["Llama 2 70B"]
kv_per_token = kv_per_token_of[llama.name]
context = llama.context
kv_seq = kv_per_token * context
batches = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]
weights_only = [
    cost.decode_step_bounds(N70, B, peak_flops=peak, bandwidth=bandwidth) for B in batches
]
with_kv = [
    cost.decode_step_bounds(N70, B, kv_bytes=B * kv_seq, peak_flops=peak, bandwidth=bandwidth)
    for B in batches
]

# %%
fig, ax = plt.subplots(figsize=(6.5, 4))
ax.plot(batches, [r["tokens_per_second"] for r in weights_only], "o-", label="weights only")
ax.plot(
    batches,
    [r["tokens_per_second"] for r in with_kv],
    "s-",
    label=f"with a {context:,}-token KV cache per sequence",
)
ax.axvline(b_star, color="gray", linestyle=":", label=f"critical batch B* = {b_star:.0f}")
ax.set_xscale("log", base=2)
ax.set_yscale("log")
ax.set_xlabel("batch (sequences decoded together)")
ax.set_ylabel("tokens per second (upper bound)")
ax.set_title("Llama 2 70B on two H100s: decoding is memory-bound")
ax.legend()
plt.show()

# %%
one = weights_only[0]
fits = int(
    (gpus * h100.memory_gb * 1e9 - N70 * 2) // kv_seq
)  # sequences whose cache fits beside the weights
kv_fit = cost.decode_step_bounds(
    N70, fits, kv_bytes=fits * kv_seq, peak_flops=peak, bandwidth=bandwidth
)
display(
    Markdown(
        f"At batch 1 a step needs {one['memory_seconds'] * 1e3:.1f} ms to read "
        f"the weights and {one['compute_seconds'] * 1e3:.2f} ms of arithmetic: "
        f"{one['tokens_per_second']:.0f} tokens per second at best, "
        f"${cost.cost_per_million_tokens(gpus * price, one['tokens_per_second']):,.2f} per "
        f"million tokens at ${price:.0f} per GPU-hour. At the critical batch of {b_star:.0f} "
        f"sequences the same step yields {at_b_star['tokens_per_second']:,.0f} tokens per second, "
        f"${cost.cost_per_million_tokens(gpus * price, at_b_star['tokens_per_second']):.3f} per "
        f"million. But the cache takes memory too: {kv_per_token / 1024:.0f} KiB per token, "
        f"{kv_seq / 1e9:.2f} GB for one {context:,}-token sequence. Two H100s hold "
        f"{gpus * h100.memory_gb:.0f} GB; the weights take {N70 * 2 / 1e9:.0f}, so only **{fits}** "
        f"such sequences fit beside them, giving {kv_fit['tokens_per_second']:,.0f} tokens per "
        "second. And since every sequence adds its cache to the bytes read, with contexts "
        "this long a step stays memory-bound at any batch (the critical batch with the cache "
        f"is {cost.critical_batch(N70, 2, peak, bandwidth, kv_bytes_per_sequence=kv_seq):.0f} "
        "sequences). Grouped-query attention is what keeps the cache at 8 heads instead of 64: "
        "eight times smaller. These are bounds under stated assumptions (perfect overlap, "
        "peaks reached, prompt processing and idle time left out); the next sections measure "
        "what a real machine does."
    )
)

# %% [markdown]
# ## Making inference faster
#
# *Which tricks speed up generation on your machine, and what do they cost in quality?*
#
# A real model to serve first: a GPT (4 layers, 128 wide) and a much smaller one (1 layer, 32 wide; the
# next section's "draft"), both trained briefly on chapter 3's bracket language, whose held-out loss
# we can compare with the language's entropy floor.

# %%
from aigc_book.efficiency import inference
from aigc_book.generation import speculative
from aigc_book.text.languages import BracketLanguage
from aigc_book.training.evaluation import lm_loss
from aigc_book.training.objectives import sequence_lm_batch
from aigc_book.training.trainer import TrainConfig, Trainer

lang = BracketLanguage()
lm_seqs = lang.sample(
    settings.lm_seqs, settings.lm_len, seed=1
)  # (N, T + 1), each starting with BOS
lm_val = lang.sample(1_000, settings.lm_len, seed=2)


def train_lm(n_layer, n_embd, n_head, steps):
    torch.manual_seed(0)
    cfg = TransformerConfig(
        vocab_size=lang.vocab_size, block_size=64, n_layer=n_layer, n_head=n_head, n_embd=n_embd
    )
    lm = GPT(cfg).to(device)
    Trainer(
        lm,
        lambda split, g: sequence_lm_batch(lm_seqs, 32, g),
        causal_lm_loss,
        TrainConfig(steps=steps, lr=3e-3, warmup_steps=20, progress=False),
        device=device,
    ).train()
    return lm.eval()


t0 = time.perf_counter()
target = train_lm(*settings.target_shape, settings.target_steps)
draft = train_lm(*settings.draft_shape, settings.draft_steps)
floor = lang.entropy_floor(settings.lm_len)
print(
    f"trained in {time.perf_counter() - t0:.0f} s; held-out loss (nats/token): "
    f"target {lm_loss(target, lm_val.to(device)):.3f} ({target.num_parameters():,} parameters), "
    f"draft {lm_loss(draft, lm_val.to(device)):.3f} ({draft.num_parameters():,}); "
    f"the language's floor {floor:.3f}"
)

# %% [markdown]
# Four tricks, each measured here on the target model:
#
# 1. **The KV cache** (chapter 2): keep every layer's keys and values so each new token runs the model
#    on one position, not on the whole prefix. It costs memory, $2\,L\,C$ numbers per token.
# 2. **Batching**: decode many sequences together. A step reads the weights once for the whole batch,
#    so while decoding is memory-bound, more sequences cost almost nothing extra.
# 3. **int8 {term}`quantisation <quantisation (int8)>`** (dynamic: weights stored as 8-bit integers with a scale per row,
#    activations quantised on the fly; Jacob et al. 2018): a quarter of float32's bytes per weight.
# 4. **bf16**: half the bytes, and on hardware with bf16 units, faster products.

# %%
kv_cmp = inference.compare_kv_cache(target, 32, device)
assert kv_cmp["same_tokens"]  # the cache changes the cost, never the output
assert (
    kv_cmp["cache_bytes_per_token"] == 2 * target.config.n_layer * target.config.n_embd * 4
)  # float32
batch_rows = inference.throughput_vs_batch(target, settings.decode_batches, 16, device)
print(
    f"KV cache: {kv_cmp['with_cache_tokens_per_s']:,.0f} vs "
    f"{kv_cmp['without_cache_tokens_per_s']:,.0f} tokens/s without ({kv_cmp['speedup']:.1f}x), "
    f"for {kv_cmp['cache_bytes']:,} bytes of cache ({kv_cmp['cache_bytes_per_token']:,} per token)"
)
for r in batch_rows:
    print(
        f"batch {r['batch_size']:>4}: {r['ms_per_step']:6.2f} ms per step, "
        f"{r['tokens_per_s']:>9,.0f} tokens/s"
    )
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot(
    [r["batch_size"] for r in batch_rows],
    [r["tokens_per_s"] for r in batch_rows],
    "o-",
    label="measured",
)
ax.plot(
    [r["batch_size"] for r in batch_rows],
    [batch_rows[0]["tokens_per_s"] * r["batch_size"] for r in batch_rows],
    ":",
    color="gray",
    label="linear in the batch (a free ride)",
)
ax.set_xscale("log", base=2)
ax.set_yscale("log")
ax.set_xlabel("batch (sequences)")
ax.set_ylabel("tokens per second")
ax.set_title(f"Decoding throughput against batch size ({device.type})")
ax.legend()
plt.show()

# %% [markdown]
# What to see: throughput grows with the batch, first nearly in proportion (the dotted line), then
# less as the products get large enough to be limited by arithmetic rather than memory — the roofline
# in action. Now precision: int8 weights, and bf16.

# %%
int8 = inference.compare_int8(target, lm_val, device)
dtypes = inference.compare_dtypes(target, device)
print(
    f"int8 (torch.ao dynamic quantisation): size {int8['bytes_fp32'] / 1e6:.2f} "
    f"-> {int8['bytes_int8'] / 1e6:.2f} MB, forward {int8['forward_ms_fp32']:.1f} "
    f"-> {int8['forward_ms_int8']:.1f} ms, one decoding step {int8['decode_ms_fp32']:.2f} "
    f"-> {int8['decode_ms_int8']:.2f} ms"
)
print(
    f"        held-out loss {int8['loss_fp32']:.4f} -> {int8['loss_int8']:.4f} nats/token "
    f"(perplexity {int8['perplexity_fp32']:.3f} -> {int8['perplexity_int8']:.3f})"
)
print(f"        warning recorded: {int8['warnings'][0].strip()[:90]}")
for r in dtypes:
    print(
        f"{r['variant']:<15} forward {r['forward_ms']:6.2f} ms, decoding step "
        f"{r['decode_ms']:5.2f} ms, largest logit change {r['max_abs_logit_diff']:.3f}"
    )
assert int8["bytes_int8"] < 0.4 * int8["bytes_fp32"]
bf16 = {r["variant"]: r for r in dtypes}["bf16 autocast"]
fp32 = {r["variant"]: r for r in dtypes}["float32"]


def change(before, after):
    return f"{before:.2f} → {after:.2f} ms ({'faster' if after < before else 'slower'})"


display(
    Markdown(
        f"int8 made the saved model {int8['bytes_fp32'] / int8['bytes_int8']:.1f}× "
        "smaller (not 4×: the tied embedding and output matrix stays float32, "
        "because quantising it would untie the two) and changed the held-out "
        f"loss by {int8['loss_int8'] - int8['loss_fp32']:+.4f} nats. Its time: "
        f"batched forward pass {change(int8['forward_ms_fp32'], int8['forward_ms_int8'])}, "
        f"one decoding step {change(int8['decode_ms_fp32'], int8['decode_ms_int8'])}. "
        f"bf16 autocast: forward {change(fp32['forward_ms'], bf16['forward_ms'])}, decoding "
        f"step {change(fp32['decode_ms'], bf16['decode_ms'])}. Lower precision pays on large "
        "products where the hardware has fast units for it; a small decoding step is dominated by "
        "per-operation overhead, and converting the activations to 8 or 16 bits adds operations. "
        "The `torch.ao` quantisation used here is deprecated (the warning above) in favour of the "
        "separate `torchao` package (PyTorch's own, installed separately; the book sticks to what "
        "ships with PyTorch). Measure on your own hardware before you choose."
    )
)

# %% [markdown]
# ## Speculative decoding
#
# *Can a small model make a large one generate faster without changing what it says?*
#
# Decoding is memory-bound: checking $k$ tokens in one forward pass costs the large model about as much
# as generating one. **{term}`Speculative decoding <speculative decoding, draft model>`** (Leviathan, Kalman & Matias 2023; Chen et al. 2023) lets
# a cheap **draft** model propose $k$ tokens, one at a time; the **target** model scores all of them in
# one pass and keeps the longest prefix it agrees with, then adds one token of its own. With greedy
# decoding, "agrees" means "is the target's own argmax", so the output is *identical* to the target's
# greedy output. With sampling, a proposed token $x$ drawn from the draft's $q$ is kept with probability
# $\min(1, p(x)/q(x))$ under the target's $p$, and a rejected one is replaced by a draw from
# $\max(0, p - q)$, renormalised: the result is distributed exactly as $p$. If each proposal is kept
# with probability $\alpha$, one target pass yields on average
#
# $$\mathbb{E}[\text{tokens per pass}] = \frac{1 - \alpha^{k+1}}{1 - \alpha} \qquad
#   \text{(Leviathan et al. 2023, eq. 1).}$$

# %%
prompts = lm_val[:8, :4].to(device)
greedy = speculative.speculative_generate(target, draft, prompts[:1], max_new_tokens=40, k=4)
plain = target.generate(prompts[:1], 40, temperature=0)
assert torch.equal(greedy.sequences, plain)  # identical to the target's own greedy output
assert math.isclose(speculative.expected_tokens_per_pass(0.5, 2), 1 + 0.5 + 0.25)  # by hand
print(
    f"greedy: identical to the target's own output; {greedy.target_passes} target passes "
    "for 40 tokens instead of 40"
)
spec_rows = [
    speculative.speculative_speedup(
        target, draft, prompts, k, device, max_new_tokens=44, do_sample=True
    )
    for k in settings.speculative_ks
]
print(
    f"{'k':>3}{'alpha':>8}{'tokens/pass':>13}{'eq. 1':>8}{'draft cost':>12}"
    f"{'speed-up':>10}{'expected':>10}"
)
for r in spec_rows:
    print(
        f"{r['k']:>3}{r['alpha']:>8.2f}{r['tokens_per_target_pass']:>13.2f}"
        f"{r['expected_tokens_per_pass']:>8.2f}{r['cost_ratio']:>12.2f}"
        f"{r['speedup']:>9.2f}x{r['expected_speedup']:>9.2f}x"
    )

# %%
draft_cost = sum(r["cost_ratio"] for r in spec_rows) / len(spec_rows)
display(
    Markdown(
        f"Reading the table (sampling at temperature 1, {len(prompts)} prompts): "
        "$\\alpha$ is the share of judged proposals the target kept; the measured tokens per pass "
        "sit close to eq. 1's prediction from that $\\alpha$; \"draft cost\" is one draft pass as "
        "a fraction of a target pass, and \"expected\" is Leviathan et al.'s predicted speed-up "
        "from $\\alpha$, $k$ and that cost (their Theorem 3.8), which ignores the bookkeeping "
        f"between passes. A draft with {draft.num_parameters() / target.num_parameters():.1%} "
        f"of the target's parameters costs {draft_cost:.2f} of a target pass here: "
        "small models are dominated by per-operation overhead, not arithmetic. "
        "The gain is largest when the target is expensive and the draft cheap and agreeable. "
        "The package's tests check the greedy output against Hugging Face's assisted "
        "generation (`generate(assistant_model=...)`): the same tokens, and the same number of "
        "forward passes of each model."
    )
)

# %% [markdown]
# ## When one machine is not enough
#
# *How is a model trained on many processors at once, and what does the communication cost?*
#
# **{term}`Data parallelism <data parallelism (DDP)>`**: every process holds a full copy of the model and takes a different batch; after
# the backward pass the processes average their gradients, so every copy takes the same step — the step
# one process would take on the combined batch. PyTorch's `DistributedDataParallel` (DDP; Li et al.
# 2020) does the averaging with an **{term}`all-reduce`**, overlapped with the backward pass; on CPUs it talks
# through the gloo library, on NVIDIA GPUs through NCCL. The book's `train-gpt` runs under PyTorch's
# launcher with the same flags as one process:
#
# ```
# torchrun --nproc_per_node 2 -m aigc_book train-gpt --text FILE --steps 2000 --out run
# ```
#
# Each process draws its own batches, rank 0 alone writes the model and prints the JSON line
# (`world_size`, `global_batch`), and `--resume` is exact with the same number of processes. On several
# machines the same command takes `--nnodes 2 --node_rank i --rdzv_backend c10d --rdzv_endpoint HOST:PORT`.
# The cell starts two CPU processes (also on a GPU machine: one GPU cannot host two NCCL ranks), checks
# that DDP's gradients equal one process's on the combined batch, and times both:

# %%
from aigc_book.efficiency import data_parallel

dp_config = TransformerConfig(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128)
dp = data_parallel.data_parallel_demo(world_size=2, config=dp_config, batch=12, steps=8)
assert dp["grads_match"] and dp["weights_identical"]
print(
    f"gradients of 2 processes x {dp['batch']} sequences vs 1 process x {dp['global_batch']}: "
    f"largest difference {dp['max_abs_diff']:.1e} ({dp['dtype']}); against one process's own batch "
    f"alone: {dp['max_abs_diff_own_batch']:.2f}"
)
print(
    f"1 process: {dp['ms_per_step_1']:.0f} ms per step, {dp['tokens_per_s_1']:,.0f} tokens/s; "
    f"2 processes: {dp['ms_per_step_2']:.0f} ms, {dp['tokens_per_s_2']:,.0f} tokens/s; "
    f"scaling efficiency {dp['efficiency']:.0%}"
)
predicted = data_parallel.allreduce_bytes_per_rank(dp["params"], 4, 2)
assert predicted == dp["allreduce_bytes_per_step"]
print(
    f"all-reduce of {dp['params']:,} float32 gradients: 2(p-1)/p x N x 4 = "
    f"{predicted / 1e6:.2f} MB sent per process, {dp['allreduce_ms']:.1f} ms measured "
    f"({dp['allreduce_ms'] / dp['ms_per_step_2']:.0%} of a step)"
)
fsdp = data_parallel.fsdp_demo()
assert fsdp["max_abs_diff"] < 1e-12
print(
    f"FSDP: each of 2 processes stores {fsdp['params_per_rank_fsdp']:,} of {fsdp['params_full']:,} "
    "parameters; after a step the weights equal DDP's (largest difference "
    f"{fsdp['max_abs_diff']:.1e})"
)

# %% [markdown]
# The gradients agree to rounding, while a single process's own half-batch gives visibly different
# ones. **{term}`Scaling efficiency <scaling efficiency>`** is the throughput of $p$ processes over $p$ times that of one; on a
# laptop both processes share the same cores and memory, so it says more about the laptop than about
# DDP. **Sharded training** ({term}`FSDP <fully sharded data parallel (FSDP)>`; Zhao et al. 2023, after ZeRO: Rajbhandari et al. 2020) goes further:
# each process keeps only its shard of the parameters, gradients and optimiser state, and gathers the
# full weights of a layer just before using them — the answer to the 16 bytes per parameter that the
# section "Where the memory goes" found no single GPU can hold for a large model.
#
# **What the communication costs at scale.** A ring all-reduce sends $2\frac{p-1}{p}\,N\,b$ bytes per
# process (Patarasuk & Yuan 2009): almost twice the gradients, however many processes there are. For
# GPT-3, whose batch was 3.2 million tokens (Brown et al. 2020, Table 2.1), on 1,024 GPUs:

# %%
gpus_gpt3, link = 1024, 50e9  # an assumed 50 GB/s of network per GPU: change it to your cluster's
sent = data_parallel.allreduce_bytes_per_rank(175_000_000_000, 2, gpus_gpt3)  # bf16 gradients
comm_s = data_parallel.allreduce_seconds(175_000_000_000, 2, gpus_gpt3, link)
step_flops = cost.training_flops(175e9, 3.2e6)
compute_s = step_flops / (gpus_gpt3 * h100.peak_flops * 0.40)
print(
    f"per step: each GPU sends {sent / 1e9:.0f} GB of gradients: {comm_s:.1f} s "
    f"at {link / 1e9:.0f} GB/s; the step's 6ND = {step_flops:.2e} FLOPs take {compute_s:.1f} s "
    f"on {gpus_gpt3:,} H100s at 40% MFU"
)

# %% [markdown]
# Communication of the same order as computation: that is why large runs overlap the two, accumulate
# gradients over several micro-batches before communicating, and split the model itself across GPUs
# (tensor and pipeline parallelism: Shoeybi et al. 2019; Narayanan et al. 2021), so that the gradients each
# GPU must exchange with the others are a fraction of $N$.

# %% [markdown]
# ## What the experiments say about productivity
#
# *How much faster or better does generative AI make people's work, according to experiments?*
#
# The first source article promises to quantify "the efficiency gains ChatGPT may bring" and then
# gives no figure. A figure often repeated — that such tools raise everyone's productivity by 40 to 55
# per cent — comes from single tasks in two experiments, and it does not generalise. Here are the
# published studies the book has checked, each with its design, its sample and its source. The plot
# puts them on one axis with one sign convention: **positive is better for the worker** (more output,
# higher quality, or time saved). Whiskers are 95% confidence intervals where the paper gives one.

# %%
from aigc_book import productivity

studies = productivity.load_studies()
for st in studies:
    value, lo, hi = productivity.worker_effect(st)
    ci = f"[{lo:+.0f}, {hi:+.0f}]" if lo is not None else "(no CI given)"
    print(
        f"{st.study[:34]:<35}{st.year}  N={st.n:<6,} {productivity.design_kind(st.design):<19}"
        f"{st.outcome[:32]:<33}{value:+6.1f} {ci}"
    )
fig, ax = plt.subplots(figsize=(8, 5.5))
productivity.forest_plot(ax, studies)
ax.set_title("Generative AI and work: published effects (positive = better for the worker)")
plt.show()

# %% [markdown]
# What to see, and what each design can show:
#
# * **{term}`Randomised controlled trials <randomised controlled trial (RCT)>`** (circles) compare people who were randomly given the tool with
#   people who were not, so a difference is caused by the tool — on *that* task, for *those* people.
#   Noy & Zhang (2023): writing tasks done 40% faster and graded 18% better. Peng et al. (2023): one
#   programming task, 55.8% faster, with a wide interval (21% to 89%) from 95 developers, and code
#   quality not measured. Dell'Acqua et al. (2023): consultants inside the "frontier" of what GPT-4 does
#   well finished 12.2% more tasks, 25.1% faster — and on a task outside it were 19 percentage points
#   *less* often correct. Cui et al. (2024): three company trials pooled, 26% more pull requests.
# * **METR's trial** (Becker et al. 2025) is the odd one: experienced developers on their own
#   repositories took 19% *longer* with AI tools, while believing they had been 20% faster.
# * **A staggered roll-out** (square; Brynjolfsson, Li & Raymond 2023) is not randomised: the assistant
#   reached groups of support agents at different times, and the comparison of before and after, between
#   groups, gives +14% issues resolved per hour — mostly from novices (about +34%), while the most
#   skilled agents gained little.
# * **A survey linked to administrative records** (diamond; Humlum & Vestergaard 2025) measures the
#   whole labour market: in 11 exposed occupations in Denmark, time savings averaged 2.8% of work
#   hours, and earnings and hours did not move.
#
# Two patterns recur: less experienced workers gain most, and tasks beyond what the model does well
# can get worse. And exposure studies (Eloundou et al. 2024: about 80% of US workers have at least 10%
# of their tasks "exposed") estimate what *could* be sped up, not what was.

# %% [markdown]
# ## An Amdahl model of a job
#
# *How can a task get 56% faster while a whole economy saves 3% of its hours?*
#
# A job is many tasks. If a share $s$ of the hours goes to tasks that the tool makes $k$ times faster,
# the job's time falls from 1 to $(1-s) + s/k$ — the same arithmetic Amdahl (1967) used for programs
# that are only partly parallel:
#
# $$\text{hours saved} = s\left(1 - \frac{1}{k}\right), \qquad
#   \text{job speed-up} = \frac{1}{(1-s) + s/k}.$$
#
# Turned around, it says what share of hours a measured task-level gain must touch to produce a
# measured economy-wide saving.

# %%
k_peng = productivity.speedup_from_time_saved(productivity.PENG_TIME_SAVED)
assert math.isclose(k_peng, 160.89 / 71.17, rel_tol=2e-3)  # Peng et al.: 160.89 vs 71.17 minutes
s_needed = productivity.share_needed(productivity.MEASURED_TIME_SAVED, k_peng)
assert math.isclose(productivity.job_time_saved(s_needed, k_peng), productivity.MEASURED_TIME_SAVED)
assert math.isclose(productivity.overall_speedup(0.5, 2.0), 1 / (0.5 + 0.25))  # by hand
half_the_job = productivity.job_time_saved(0.5, k_peng)
display(
    Markdown(
        f"Peng et al.'s task took {productivity.PENG_TIME_SAVED:.1%} less time: "
        f"$k$ = {k_peng:.2f}. Applied to **{s_needed:.1%}** of a worker's hours, "
        f"it saves {productivity.MEASURED_TIME_SAVED:.1%} of them — exactly the Danish average. "
        f"Applied to half the hours it would save {half_the_job:.1%}. Large task-level gains and "
        "small economy-wide savings are not a contradiction: few hours are yet spent on tasks "
        "where the tool helps that much, and not everyone uses it."
    )
)
fig, ax = plt.subplots(figsize=(7, 4))
productivity.plot_time_saved(ax)
ax.set_title("Hours saved in a job: share of hours assisted x speed-up on them")
plt.show()

# %% [markdown]
# What to see: each curve is one task-level speed-up; the horizontal line is the measured 2.8%. Even a
# tool that doubles the speed of a task saves less than a tenth of the hours if it touches a fifth of
# them. The calculator adds adoption: the share of workers who use the tool at all.

# %% tags=["remove-output"]
# NBVAL_IGNORE_OUTPUT
display(productivity.productivity_calculator_widget())

# %% [markdown]
# ## Outside the notebook: `measure`
#
# *How do I measure another machine, or a bigger model, without the notebook?*
#
# `python -m aigc_book measure` runs this chapter's measurements as one command: the matrix-product
# peak in float32 and bfloat16, the {term}`memory bandwidth`, the utilisation of a GPT training step of a size
# you choose, and decoding speed with and without the KV cache. It shows a progress bar on stderr and
# prints one JSON object as its last line, to compare machines or keep in a log. On a GPU, for example:
#
# ```
# python -m aigc_book measure --device cuda --n-layer 24 --n-embd 2048 --n-head 16 --block-size 1024 \
#     --batch-size 8 --vocab-size 50304 --dtype bfloat16 --peak 989e12
# ```
#
# Every bad flag is one line and exit status 2. The cell runs it with small settings:

# %%
import json
import os
import subprocess
import sys
from pathlib import Path

repo_root = str(Path.cwd().parent)
env = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join(filter(None, [repo_root, os.environ.get("PYTHONPATH")])),
}
command = [
    sys.executable,
    "-m",
    "aigc_book",
    "measure",
    "--no-progress",
    "--steps",
    "3",
    "--device",
    device.type,
]
done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
assert done.returncode == 0, done.stderr
measured_here = json.loads(done.stdout.strip().splitlines()[-1])
for key in (
    "device",
    "matmul_float32_flops",
    "matmul_bfloat16_flops",
    "memory_bandwidth",
    "params",
    "mfu",
    "decode_tokens_per_s_cache",
    "decode_tokens_per_s_no_cache",
    "wall_s",
):
    value = measured_here.get(key)
    print(f"{key:<30}{value:,.4g}" if isinstance(value, float) else f"{key:<30}{value}")
bad = subprocess.run(
    [*command[:3], "measure", "--n-embd", "30", "--n-head", "4"],
    capture_output=True,
    text=True,
    env=env,
)
assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
print(f"a bad flag: exit {bad.returncode}, {bad.stderr.strip()}")

# %% [markdown]
# ## Common misconceptions
#
# * **"Training costs $2ND$."** Generating costs about $2N$ per token; training about $6N$ (forward plus
#   a backward pass twice as expensive), plus attention, which $6N$ leaves out and which grows with the
#   context (section "Counting FLOPs").
# * **"The H100 does 1,979 TFLOP/s."** That figure assumes 2:4 structured sparsity. Dense BF16, what
#   training uses, is about 989 TFLOP/s; and a real run reaches 40–50% of it (the published MFUs and the
#   one measured here).
# * **"A faster chip makes generation proportionally faster."** Decoding at small batch is memory-bound:
#   the speed is set by how fast the weights (and the KV cache) can be read, not by the FLOP/s.
# * **"FLOP counters see everything."** PyTorch's counter counts only operators it has a formula for;
#   with PyTorch 2.13 on a CPU the fused attention kernel has none, so attention silently counts zero.
# * **"Lower precision is always faster."** It halves or quarters the bytes; it speeds up large products
#   on hardware with units for it; on small steps the conversions can cost more than they save (measured
#   above).
# * **"Speculative decoding approximates the large model."** It does not: greedy output is identical, and
#   sampled output has exactly the target's distribution. It trades draft compute for fewer passes of
#   the large model.
# * **"AI raises productivity by 40–55%."** Those are gains on single, well-defined tasks in two
#   experiments. Other experiments found losses (experienced developers, tasks outside the model's
#   frontier), and an economy-wide study found 2.8% of work hours saved. Task gains become job gains
#   only in proportion to the share of the work they touch.

# %% [markdown]
# ## Summary

# %%
rct_effects = [
    productivity.worker_effect(st)[0]
    for st in studies
    if productivity.design_kind(st.design) == "RCT"
]
summary = (
    "* **Compute.** Training costs about $6N$ FLOPs per token plus attention; the book's "
    "formula agrees with PyTorch's FLOP counter within 5% on every model checked, and every "
    f"remaining gap has a name. For GPT-3's shape, $6N$ undercounts by {gpt3_ratio[1] - 1:.0%} "
    f"at 2,048 tokens of context and by a factor {gpt3_ratio[-1]:.1f} at 131,072.\n"
    f"* **This machine** ({device.type}) multiplies at {peaks['float32'] / 1e12:.3f} "
    "TFLOP/s in float32"
    + (f" and {peaks['bfloat16'] / 1e12:.3f} in bfloat16" if "bfloat16" in peaks else "")
    + f"; a training step of a {run['params'] / 1e6:.1f}M-parameter GPT used {run['mfu']:.0%} of "
    f"the {settings.mfu_dtype} peak"
    + (
        f" ({run['achieved_flops'] / datasheet:.0%} of the H100's datasheet peak)"
        if datasheet
        else ""
    )
    + f". Decoding at batch 1 reached {pct(decode_row['flops_per_s'] / roof_peak)} of the peak: "
    "memory-bound.\n"
    "* **Memory.** AdamW training holds 16 bytes per parameter before "
    "activations; our activation formula equals the saved tensors "
    f"{'to the byte' if device.type == 'cpu' else 'within 2%'}. Checkpointing "
    f"saved {trade['memory saved']:.0%} of the activations for {trade['extra time']:+.0%} time; "
    f"bf16 autocast kept {precision['autocast'] / precision['float32']:.0%} of them.\n"
    f"* **Money.** $6ND$ matches GPT-3's published compute to {abs(gpt3.ratio - 1):.1%}; published "
    f"GPU-hours imply utilisations of {min(r.implied_mfu for r in table if r.implied_mfu):.0%} "
    f"to {max(r.implied_mfu for r in table if r.implied_mfu):.0%}. Serving Llama 2 70B at batch 1 "
    f"is bounded by memory at {one['tokens_per_second']:.0f} tokens/s on two H100s; batching to "
    f"{b_star:.0f} sequences would make it compute-bound if the KV cache did not take the memory.\n"
    f"* **Inference here.** The KV cache gave {kv_cmp['speedup']:.1f}× "
    f"on the served model; batch {batch_rows[-1]['batch_size']} gave "
    f"{batch_rows[-1]['tokens_per_s'] / batch_rows[0]['tokens_per_s']:.0f}× the "
    f"throughput of batch 1; int8 made it {int8['bytes_fp32'] / int8['bytes_int8']:.1f}× "
    f"smaller for {int8['loss_int8'] - int8['loss_fp32']:+.4f} nats; "
    "speculative decoding reproduced the target's greedy output exactly and, "
    f"sampling, gave {max(r['speedup'] for r in spec_rows):.2f}× at best.\n"
    "* **Many processes.** DDP's gradients equal one process's on the combined batch; "
    "the all-reduce sends about twice the gradients' bytes per process, "
    "which at GPT-3's scale is of the order of the compute.\n"
    f"* **Productivity.** The randomised trials' effects range from {min(rct_effects):+.0f}% "
    f"to {max(rct_effects):+.0f}%, by task and worker; the economy-wide estimate is "
    f"{productivity.MEASURED_TIME_SAVED:.1%} of hours, which a {productivity.PENG_TIME_SAVED:.0%} "
    f"task saving explains if it touches {s_needed:.0%} of them."
)
display(Markdown(summary))

# %% [markdown]
# ## Exercises
#
# These exercises are also a graded assignment, `assignments/06_efficiency.py`: a teacher builds it
# with `python3 tools/book.py assignments` (see the teacher's page, `teaching.md`). Exercises marked
# *(autograded)* are checked by tests; those marked *(open)* are graded by hand.
#
# 1. **Chinchilla's budget.** *(autograded)* Chinchilla has 70 billion parameters trained on 1.4
#    trillion tokens (Hoffmann et al. 2022). How many days would it take on 1,024 A100s at 40% MFU,
#    and what would it cost at $2 per GPU-hour? *Check:* compute it by hand from $6ND$ and the dense
#    BF16 peak, then with `cost.training_time_and_cost`.
# 2. **GPT-3's cache.** *(autograded)* How many bytes does GPT-3 (96 layers, 96 heads of 128
#    dimensions) need to cache one 2,048-token sequence in bf16? How many such sequences fit in
#    80 GB? *Check:* by hand, then `memory.kv_cache_bytes`.
# 3. **The A100's critical batch.** *(autograded)* At what batch does decoding in bf16 become
#    compute-bound on an A100 (312 TFLOP/s, 2,039 GB/s), ignoring the cache? Why does the model's
#    size not matter? *Check:* `cost.critical_batch`.
# 4. **Tokens per pass.** *(autograded)* With $\alpha = 0.8$ and $k = 4$, how many tokens does one
#    target pass of speculative decoding yield on average? What $k$ maximises it, and why is the
#    largest $k$ not the best choice in practice? *Check:* eq. 1 by hand and
#    `speculative.expected_tokens_per_pass`.
# 5. **A slower task in the job.** *(autograded)* Suppose, as in METR's trial, a tool makes some
#    tasks 19% slower, and those tasks fill 30% of the hours, while it makes another 20% of the
#    hours twice as fast. What share of the hours does the worker save? *Check:* combine two uses of
#    the Amdahl model; the cell below.
# 6. **Bigger models use the chip better.** *(autograded)* Change `mfu_shape` in the settings to
#    (4, 256, 4, 128) and to (8, 256, 8, 128) and rerun the MFU cell. Does the utilisation rise with
#    the width? *Check:* the printed MFU; explain with the roofline (a wider matrix product has a
#    higher arithmetic intensity).
# 7. **Where the 6N rule breaks.** *(autograded)* At what context length does attention add 50% to
#    the $6N$ training FLOPs of a model of width $C$ (ignore the output layer)? *Check:* solve
#    $12LTC = 0.5 \cdot 72LC^2$ and compare with `flopcount.six_n_ratio` for GPT-3's shape.

# %%
# 1. Chinchilla on 1,024 A100s.
a100 = {a.name: a for a in cost.load_accelerators()}["A100 80GB SXM"]
chinchilla = cost.training_time_and_cost(6 * 70e9 * 1.4e12, a100.peak_flops, 1024, 0.40, 2.0)
assert math.isclose(
    chinchilla["wall_clock_days"], 6 * 70e9 * 1.4e12 / (1024 * 312e12 * 0.40) / 86400
)
print(f"1. Chinchilla: {chinchilla['wall_clock_days']:.0f} days, ${chinchilla['cost'] / 1e6:.1f} M")
# 2. GPT-3's cache for one 2,048-token sequence.
gpt3_kv = memory.kv_cache_bytes(96, 96, 128, 2048, 1, bytes_per_element=2)
assert gpt3_kv == 2 * 96 * 96 * 128 * 2048 * 2
print(
    f"2. {gpt3_kv / 2**30:.1f} GiB per sequence; {int(80e9 // gpt3_kv)} fit "
    "in 80 GB (weights aside)"
)
# 3. The A100's critical batch.
assert math.isclose(cost.critical_batch(7e9, 2, a100.peak_flops, a100.bandwidth), 312e12 / 2039e9)
print(f"3. B* = {cost.critical_batch(7e9, 2, a100.peak_flops, a100.bandwidth):.0f} sequences")
# 4. Tokens per target pass.
assert math.isclose(speculative.expected_tokens_per_pass(0.8, 4), sum(0.8**i for i in range(5)))
print(f"4. {speculative.expected_tokens_per_pass(0.8, 4):.2f} tokens per pass")
# 5. A job with a slower share and a faster share: time = 0.5 + 0.3 x 1.19 + 0.2 / 2.
job_time = (1 - 0.3 - 0.2) + 0.3 * 1.19 + 0.2 / 2
two_uses = productivity.job_time_saved(0.3, 1 / 1.19) + productivity.job_time_saved(0.2, 2.0)
assert math.isclose(1 - job_time, two_uses)
print(f"5. the worker saves {1 - job_time:.1%} of the hours")
# 7. Attention adds 50% to 6N when T = 3C.
ratio_at_3c = flopcount.six_n_ratio(flopcount.gpt3_175b_config(block_size=3 * 12288), [3 * 12288])[
    0
]
print(
    f"7. GPT-3's shape at T = 3C = {3 * 12288:,}: true/6N = {ratio_at_3c:.3f} "
    "(1.5 plus the output layer)"
)

# %% [markdown]
# ## Key terms
#
# | English | 中文 |
# |---|---|
# | {term}`floating-point operation (FLOP)` | 浮点运算 |
# | {term}`FLOPs per token` | 每词元浮点运算数 |
# | {term}`peak FLOP/s` | 峰值算力（每秒浮点运算次数） |
# | {term}`model FLOP utilisation (MFU)` | 模型算力利用率 |
# | {term}`arithmetic intensity` | 算术强度 |
# | {term}`roofline model, ridge point` | 屋顶线模型，脊点 |
# | {term}`memory-bound, compute-bound` | 访存受限，计算受限 |
# | {term}`memory bandwidth` | 内存带宽 |
# | {term}`optimiser state` | 优化器状态 |
# | {term}`activation memory` | 激活值内存 |
# | {term}`activation checkpointing` | 激活检查点（重计算） |
# | {term}`mixed precision, bfloat16 <mixed precision>` | 混合精度，bfloat16 |
# | {term}`KV cache`, {term}`grouped-query attention <grouped-query attention (GQA)>` | 键值缓存，分组查询注意力 |
# | {term}`critical batch size` | 临界批大小 |
# | {term}`quantisation (int8)` | 量化（int8） |
# | {term}`speculative decoding, draft model` | 推测解码，草稿模型 |
# | {term}`acceptance rate` | 接受率 |
# | {term}`data parallelism (DDP)` | 数据并行 |
# | {term}`all-reduce` | 全归约 |
# | {term}`fully sharded data parallel (FSDP)` | 完全分片数据并行 |
# | {term}`scaling efficiency` | 扩展效率 |
# | {term}`randomised controlled trial (RCT)` | 随机对照试验 |
# | {term}`forest plot` | 森林图 |
# | {term}`Amdahl's law` | 阿姆达尔定律 |

# %% [markdown]
# ## References
#
# * {cite:t}`ch06-ainslie2023gqa` (GQA).
# * {cite:t}`ch06-amdahl1967validity` (Amdahl's law).
# * {cite:t}`ch06-becker2025measuring`.
# * {cite:t}`ch06-brown2020gpt3` (GPT-3).
# * {cite:t}`ch06-brynjolfsson2023genai`.
# * {cite:t}`ch06-chen2023speculative` (speculative sampling).
# * {cite:t}`ch06-chen2016sublinear` (activation checkpointing).
# * {cite:t}`ch06-chowdhery2022palm` (PaLM).
# * {cite:t}`ch06-cottier2024rising`.
# * {cite:t}`ch06-cui2024effects`.
# * {cite:t}`ch06-dao2022flashattention` (FlashAttention).
# * {cite:t}`ch06-dellacqua2023jagged`.
# * {cite:t}`ch06-deepseekai2024v3` (DeepSeek-V3).
# * {cite:t}`ch06-eloundou2024gpts`.
# * {cite:t}`ch06-hoffmann2022chinchilla` (Chinchilla).
# * {cite:t}`ch06-humlum2025small`.
# * {cite:t}`ch06-jacob2018quantization` (int8 quantisation).
# * {cite:t}`ch06-kaplan2020scaling`.
# * {cite:t}`ch06-korthikanti2022reducing`.
# * {cite:t}`ch06-leviathan2023speculative` (speculative decoding).
# * {cite:t}`ch06-li2020pytorchdistributed` (PyTorch DDP).
# * {cite:t}`ch06-llamateam2024llama3` (Llama 3).
# * {cite:t}`ch06-loshchilov2019adamw` (AdamW).
# * {cite:t}`ch06-micikevicius2018mixed` (mixed precision).
# * {cite:t}`ch06-narayanan2021megatron`.
# * {cite:t}`ch06-noy2023experimental`.
# * {cite:t}`ch06-patarasuk2009bandwidth` (ring all-reduce).
# * {cite:t}`ch06-peng2023copilot`.
# * {cite:t}`ch06-rajbhandari2020zero` (ZeRO).
# * {cite:t}`ch06-shoeybi2019megatron` (Megatron-LM).
# * {cite:t}`ch06-stanfordhai2024aiindex`.
# * {cite:t}`ch06-touvron2023llama` (LLaMA).
# * {cite:t}`ch06-touvron2023llama2` (Llama 2).
# * {cite:t}`ch06-williams2009roofline` (the roofline model).
# * {cite:t}`ch06-zhao2023fsdp` (FSDP).
#
# ```{bibliography}
# :filter: docname in docnames
# :keyprefix: ch06-
# :labelprefix: 6.
# :style: unsrt
# ```

# %%
print(f"chapter run time: {time.perf_counter() - chapter_start:.0f} s")
