# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [raw]
# # ASSIGNMENT CONFIG
# name: 06_efficiency
# init_cell: true
# check_all_cell: false
# export_cell: false
# solutions_pdf: false
# generate: true
# tests:
#   files: false

# %% [markdown]
# # Assignment 6: Quantifying efficiency
#
# The exercises of chapter 6, "Quantifying efficiency: the compute, memory, time and money a ChatGPT
# costs". They use the sections "Counting FLOPs", "The roofline: compute-bound or memory-bound",
# "Where the memory goes", "From our GPT to GPT-3: training compute and money", "The cost of an
# answer", "Speculative decoding" and "An Amdahl model of a job". Every answer here is computed from
# a formula and published figures, never from a timing of this machine: exercise 6 asks you to
# measure your machine too, but only its timing-free part is graded. Define the variables each
# exercise names (keep the names), then run `grader.check("ex1")` (and so on) to run the public
# checks; more checks are hidden and run when the assignment is graded.

# %%
import math

from aigc_book import productivity
from aigc_book.efficiency import cost, memory
from aigc_book.efficiency import flops as flopcount
from aigc_book.generation import speculative
from aigc_book.models import accounting
from aigc_book.models.transformer import TransformerConfig

accelerators = {a.name: a for a in cost.load_accelerators()}
a100 = accelerators["A100 80GB SXM"]  # dense BF16 peak 312 TFLOP/s, 2,039 GB/s
print(f"A100: {a100.peak_flops:.3g} FLOP/s dense BF16, {a100.bandwidth:.4g} bytes/s")

# %% [raw]
# # BEGIN QUESTION
# name: ex1
# points: 3

# %% [markdown]
# **Exercise 1. Chinchilla's budget.** Chinchilla has 70 billion parameters trained on 1.4 trillion
# tokens (Hoffmann et al. 2022). How many days would it take on 1,024 A100s at 40% MFU, and what
# would it cost at $2 per GPU-hour? Use $C = 6ND$ and the A100's dense BF16 peak
# (`a100.peak_flops`). Define:
#
# * `chinchilla_flops`: the training compute in FLOPs;
# * `chinchilla_days`: the wall-clock days on 1,024 A100s at 40% MFU;
# * `chinchilla_cost`: the rental cost in dollars at $2 per GPU-hour.
#
# Compute them by hand first; `cost.training_time_and_cost` should then agree with you.

# %% [raw]
# # BEGIN SOLUTION

# %%
chinchilla_flops = 6 * 70e9 * 1.4e12  # SOLUTION
# BEGIN SOLUTION
gpu_seconds = chinchilla_flops / (a100.peak_flops * 0.40)
chinchilla_days = gpu_seconds / 1024 / 86400
chinchilla_cost = gpu_seconds / 3600 * 2.0
# END SOLUTION
print(f"{chinchilla_days:.1f} days, ${chinchilla_cost / 1e6:.2f} M")

# %% [raw]
# # END SOLUTION

# %% [raw]
# # BEGIN TESTS

# %%
assert math.isclose(chinchilla_flops, 6 * 70e9 * 1.4e12, rel_tol=1e-9), (
    "chinchilla_flops should be 6 N D with N = 70e9 parameters and D = 1.4e12 tokens"
)

# %%
assert math.isclose(
    chinchilla_days, 6 * 70e9 * 1.4e12 / (1024 * 312e12 * 0.40) / 86400, rel_tol=1e-6
), "chinchilla_days: FLOPs / (1,024 GPUs x 312e12 FLOP/s x 0.40), in seconds, then / 86,400"

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
assert math.isclose(
    chinchilla_cost, 6 * 70e9 * 1.4e12 / (312e12 * 0.40) / 3600 * 2.0, rel_tol=1e-6
), "chinchilla_cost: GPU-hours (FLOPs / (312e12 x 0.40) / 3,600) x $2, whatever the GPU count"
assert math.isclose(
    chinchilla_cost,
    cost.training_time_and_cost(6 * 70e9 * 1.4e12, 312e12, 1024, 0.40, 2.0)["cost"],
    rel_tol=1e-6,
), "chinchilla_cost should agree with cost.training_time_and_cost"

# %% [raw]
# # END TESTS

# %% [raw]
# # END QUESTION

# %% [raw]
# # BEGIN QUESTION
# name: ex2
# points: 3

# %% [markdown]
# **Exercise 2. GPT-3's cache.** GPT-3 has 96 layers and 96 heads of 128 dimensions, with no
# key/value sharing. How many bytes does it need to cache one 2,048-token sequence in bf16 (2 bytes
# per number)? How many such sequences fit in 80 GB (80e9 bytes; leave the weights aside)? Define:
#
# * `gpt3_kv_bytes_per_token`: bytes of keys and values cached per token (an int);
# * `gpt3_kv_bytes`: bytes for one 2,048-token sequence (an int);
# * `gpt3_sequences_in_80gb`: how many whole sequences fit in 80e9 bytes (an int).
#
# By hand first, then check with `memory.kv_cache_bytes`.

# %% [raw]
# # BEGIN SOLUTION

# %%
gpt3_kv_bytes_per_token = 2 * 96 * 96 * 128 * 2  # SOLUTION
gpt3_kv_bytes = memory.kv_cache_bytes(96, 96, 128, 2048, 1, bytes_per_element=2)  # SOLUTION
gpt3_sequences_in_80gb = int(80e9 // gpt3_kv_bytes)  # SOLUTION
print(
    f"{gpt3_kv_bytes_per_token / 2**20:.2f} MiB per token, "
    f"{gpt3_kv_bytes / 1e9:.2f} GB per sequence, {gpt3_sequences_in_80gb} sequences in 80 GB"
)

# %% [raw]
# # END SOLUTION

# %% [raw]
# # BEGIN TESTS

# %%
assert gpt3_kv_bytes_per_token == 2 * 96 * 96 * 128 * 2, (
    "per token: keys and values (2) x 96 layers x 96 heads x 128 dimensions x 2 bytes"
)

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
assert gpt3_kv_bytes == 2 * 96 * 96 * 128 * 2 * 2048, (
    "per sequence: the bytes per token times 2,048 positions"
)
assert gpt3_kv_bytes == memory.KV_CACHE_SHAPES["GPT-3 175B"].kv_cache_bytes(), (
    "gpt3_kv_bytes should equal the package's figure for GPT-3's full context"
)

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
assert isinstance(gpt3_sequences_in_80gb, int), "gpt3_sequences_in_80gb should be an int"
assert (
    gpt3_sequences_in_80gb * 2 * 96 * 96 * 128 * 2 * 2048
    <= 80e9
    < (gpt3_sequences_in_80gb + 1) * 2 * 96 * 96 * 128 * 2 * 2048
), "gpt3_sequences_in_80gb: the largest number of whole sequences whose cache fits in 80e9 bytes"

# %% [raw]
# # END TESTS

# %% [raw]
# # END QUESTION

# %% [raw]
# # BEGIN QUESTION
# name: ex3
# points: 2

# %% [markdown]
# **Exercise 3. The A100's critical batch.** At what batch does decoding in bf16 (2 bytes per
# weight) become compute-bound on an A100 (312 TFLOP/s, 2,039 GB/s), ignoring the KV cache? A step
# costs $2NB$ FLOPs and reads the $N$ weights once. Define:
#
# * `a100_critical_batch`: the batch $B^*$ at which compute time equals memory time (a float);
# * `compute_bound_from`: a dict that maps each model size in `SIZES` (parameters) to the smallest
#   whole batch at which a decoding step is compute-bound (compute time strictly larger than memory
#   time). `cost.decode_step_bounds` reports the bound of a step.
#
# Then say in the markdown cell below why the model's size does not matter (read by your teacher,
# not scored).

# %%
SIZES = (1e9, 7e9, 70e9, 175e9)

# %% [raw]
# # BEGIN SOLUTION

# %%
a100_critical_batch = a100.peak_flops / a100.bandwidth * 2 / 2  # SOLUTION
# BEGIN SOLUTION
compute_bound_from = {}
for n_params in SIZES:
    batch = 1
    while (
        cost.decode_step_bounds(
            n_params, batch, peak_flops=a100.peak_flops, bandwidth=a100.bandwidth
        )["bound"]
        != "compute"
    ):
        batch += 1
    compute_bound_from[n_params] = batch
# END SOLUTION
print(f"B* = {a100_critical_batch:.1f}; compute-bound from batch {compute_bound_from}")

# %% [raw]
# # END SOLUTION

# %% [markdown]
# *Why does the model's size not matter?* (your answer)

# %% [raw]
# # BEGIN TESTS

# %%
assert math.isclose(a100_critical_batch, 312e12 / 2039e9, rel_tol=1e-9), (
    "B* = (peak / bandwidth) x (bytes per weight / 2): 2 N B / peak = 2 N / bandwidth"
)

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
assert sorted(compute_bound_from) == sorted(SIZES), "compute_bound_from: one entry per size"
for _n in SIZES:
    _b = compute_bound_from[_n]
    assert 2 * _n * _b / 312e12 > _n * 2 / 2039e9 >= 2 * _n * (_b - 1) / 312e12, (
        f"for N = {_n:g}: batch {_b} is not the smallest at which 2NB/peak exceeds 2N/bandwidth"
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
# **Exercise 4. Tokens per pass.** With acceptance rate $\alpha = 0.8$ and $k = 4$ draft tokens, how
# many tokens does one target pass of speculative decoding yield on average (Leviathan et al. 2023,
# eq. 1)? What $k$ maximises it, and why is the largest $k$ not the best choice in practice? Define:
#
# * `tokens_per_pass`: eq. 1 at $\alpha = 0.8$, $k = 4$ (by hand, then check with
#   `speculative.expected_tokens_per_pass`);
# * `tokens_per_pass_limit`: the value eq. 1 approaches as $k$ grows without bound (it grows with
#   every $k$);
# * `best_k`: the $k$ from 1 to 20 that maximises the expected *speed-up* (their Theorem 3.8,
#   `speculative.expected_speedup`) when one draft pass costs `DRAFT_COST` = 0.1 of a target pass.

# %%
ALPHA, DRAFT_COST = 0.8, 0.1

# %% [raw]
# # BEGIN SOLUTION

# %%
tokens_per_pass = sum(ALPHA**i for i in range(4 + 1))  # SOLUTION
tokens_per_pass_limit = 1 / (1 - ALPHA)  # SOLUTION
best_k = max(range(1, 21), key=lambda k: speculative.expected_speedup(ALPHA, k, 0.1))  # SOLUTION
print(f"{tokens_per_pass:.4f} tokens per pass at k = 4, at most {tokens_per_pass_limit:.2f}")
print(f"best k with a draft costing 0.1 of a target pass: {best_k}")

# %% [raw]
# # END SOLUTION

# %% [raw]
# # BEGIN TESTS

# %%
assert math.isclose(tokens_per_pass, (1 - 0.8**5) / (1 - 0.8), rel_tol=1e-9), (
    "tokens_per_pass: 1 + a + a^2 + ... + a^k = (1 - a^(k+1)) / (1 - a) with a = 0.8, k = 4"
)

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
assert math.isclose(tokens_per_pass_limit, 1 / (1 - 0.8), rel_tol=1e-9), (
    "as k grows, a^(k+1) -> 0, so eq. 1 tends to 1 / (1 - a)"
)

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
_speedups = {k: (1 - 0.8 ** (k + 1)) / ((1 - 0.8) * (k * 0.1 + 1)) for k in range(1, 21)}
assert best_k == max(_speedups, key=_speedups.get), (
    "best_k: each draft token costs 0.1 of a target pass, so the speed-up "
    "(1 - a^(k+1)) / ((1 - a)(k c + 1)) peaks at a finite k"
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
# **Exercise 5. A slower task in the job.** Suppose, as in METR's trial, a tool makes some tasks 19%
# slower (they take 1.19 times as long), and those tasks fill 30% of the hours, while it makes
# another 20% of the hours twice as fast. What share of the hours does the worker save? Combine two
# uses of the Amdahl model, $s\,(1 - 1/k)$ (`productivity.job_time_saved`). Define, as fractions of
# all hours:
#
# * `saved_on_slower`: the time saved on the slower tasks (negative: time lost);
# * `saved_on_faster`: the time saved on the faster tasks;
# * `hours_saved`: the worker's total saving.

# %% [raw]
# # BEGIN SOLUTION

# %%
saved_on_slower = productivity.job_time_saved(0.3, 1 / 1.19)  # SOLUTION
saved_on_faster = productivity.job_time_saved(0.2, 2.0)  # SOLUTION
hours_saved = saved_on_slower + saved_on_faster  # SOLUTION
print(f"{saved_on_slower:+.3f} + {saved_on_faster:+.3f} = {hours_saved:+.3f} of the hours")

# %% [raw]
# # END SOLUTION

# %% [raw]
# # BEGIN TESTS

# %%
assert math.isclose(hours_saved, 1 - ((1 - 0.3 - 0.2) + 0.3 * 1.19 + 0.2 / 2), rel_tol=1e-9), (
    "hours_saved: the job took 1 and now takes 0.5 + 0.3 x 1.19 + 0.2 / 2"
)

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
assert math.isclose(saved_on_slower, -0.3 * 0.19, rel_tol=1e-9), (
    "saved_on_slower: 30% of the hours take 19% longer, so -0.3 x 0.19 of the hours are lost"
)

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
assert math.isclose(saved_on_faster, 0.2 * (1 - 1 / 2), rel_tol=1e-9), (
    "saved_on_faster: 20% of the hours done twice as fast save half of them"
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
# **Exercise 6. Bigger models use the chip better.** In the chapter, change `mfu_shape` in the
# settings to (4, 256, 4, 128) and to (8, 256, 8, 128) and rerun the MFU cell. Does the utilisation
# rise with the width? Write what you measured, and your explanation, in the markdown cell below
# (read by your teacher, not scored: timings on a shared machine vary). The graded part is the
# explanation by the roofline, which needs no clock:
#
# * `matmul_intensity(m, k, n, bytes_per_element=4)`: the arithmetic intensity, in FLOPs per byte,
#   of the product of an $m\times k$ and a $k\times n$ matrix that reads both and writes the
#   $m\times n$ result once;
# * `mlp_intensity`: a dict mapping the width $C$ (128 and 256) to the intensity of the first MLP
#   product of a training step, the $(B T) \times C$ activations times the $C \times 4C$ weight,
#   with $B = 16$ sequences of $T = 128$ tokens in float32;
# * `mfu_flops_per_token`: a dict mapping each shape in `SHAPES` to the model FLOPs per token that
#   `hardware.training_mfu` divides by: $3\,(2N + 2LTC + 2CV)$, $N$ the non-embedding parameters,
#   vocabulary $V = 96$, $T = 128$ (`accounting.flops_per_token` computes it from a
#   `TransformerConfig`).

# %%
SHAPES = ((4, 128, 4, 128), (4, 256, 4, 128), (8, 256, 8, 128))  # layers, width, heads, T

# %% [raw]
# # BEGIN SOLUTION


# %%
def matmul_intensity(m, k, n, bytes_per_element=4):
    """FLOPs per byte of an (m x k) @ (k x n) product."""
    # BEGIN SOLUTION
    return 2 * m * k * n / (bytes_per_element * (m * k + k * n + m * n))
    # END SOLUTION


# BEGIN SOLUTION
mlp_intensity = {c: matmul_intensity(16 * 128, c, 4 * c) for c in (128, 256)}
mfu_flops_per_token = {
    shape: accounting.flops_per_token(
        TransformerConfig(
            vocab_size=96, block_size=shape[3], n_layer=shape[0], n_head=shape[2], n_embd=shape[1]
        ),
        training=True,
        output_layer=True,
    )
    for shape in SHAPES
}
# END SOLUTION
print(f"MLP product: {mlp_intensity}")
print(f"model FLOPs per token: {mfu_flops_per_token}")

# %% [raw]
# # END SOLUTION

# %% [markdown]
# *What did the MFU cell measure for the three shapes, and why?* (your answer)

# %% [raw]
# # BEGIN TESTS

# %%
for _m, _k, _n in ((64, 64, 64), (2048, 128, 512), (1, 4096, 4096)):
    assert math.isclose(
        matmul_intensity(_m, _k, _n), 2 * _m * _k * _n / (4 * (_m * _k + _k * _n + _m * _n))
    ), f"matmul_intensity({_m}, {_k}, {_n}): 2mkn FLOPs over 4 bytes x (mk + kn + mn) numbers"
assert math.isclose(matmul_intensity(64, 64, 64, 2), 2 * 64**3 / (2 * 3 * 64**2)), (
    "matmul_intensity should use bytes_per_element"
)

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
for _c in (128, 256):
    _m = 16 * 128
    _want = 2 * _m * _c * 4 * _c / (4 * (_m * _c + 4 * _c * _c + _m * 4 * _c))
    assert math.isclose(mlp_intensity[_c], _want, rel_tol=1e-9), (
        f"mlp_intensity[{_c}]: ({_m} x {_c}) @ ({_c} x {4 * _c}) in float32"
    )
assert mlp_intensity[256] > mlp_intensity[128], "the wider product should have the higher intensity"

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
for _shape in SHAPES:
    _L, _C, _H, _T = _shape
    _N = _L * (12 * _C**2 + 13 * _C) + 2 * _C  # weights, biases and LayerNorms; the final LayerNorm
    _want = 3 * (2 * _N + 2 * _L * _T * _C + 2 * _C * 96)
    assert math.isclose(mfu_flops_per_token[_shape], _want, rel_tol=1e-9), (
        f"mfu_flops_per_token[{_shape}] should be 3 (2N + 2LTC + 2CV) = {_want:,}"
    )

# %% [raw]
# # END TESTS

# %% [raw]
# # END QUESTION

# %% [raw]
# # BEGIN QUESTION
# name: ex7
# points: 2

# %% [markdown]
# **Exercise 7. Where the 6N rule breaks.** At what context length $T$ does attention add 50% to the
# $6N$ training FLOPs of a model of width $C$ (ignore the output layer, and count $N$ as the
# $12LC^2$ of the weight matrices)? Solve $12LTC = 0.5 \cdot 72LC^2$. Define:
#
# * `t_half_over_c`: that $T$ as a multiple of $C$;
# * `t_half_gpt3`: that $T$ for GPT-3's width, 12,288 (an int);
# * `ratio_at_t_half`: the true training FLOPs over $6N$ for GPT-3's shape at that context,
#   `flopcount.six_n_ratio(flopcount.gpt3_175b_config(block_size=...), [...])`, which also counts
#   the output layer and the biases.

# %% [raw]
# # BEGIN SOLUTION

# %%
t_half_over_c = 0.5 * 72 / 12  # SOLUTION
t_half_gpt3 = int(t_half_over_c * 12288)  # SOLUTION
# BEGIN SOLUTION
ratio_at_t_half = flopcount.six_n_ratio(
    flopcount.gpt3_175b_config(block_size=t_half_gpt3), [t_half_gpt3]
)[0]
# END SOLUTION
print(f"T = {t_half_over_c:g} C = {t_half_gpt3:,}: true / 6N = {ratio_at_t_half:.4f}")

# %% [raw]
# # END SOLUTION

# %% [raw]
# # BEGIN TESTS

# %%
assert math.isclose(t_half_over_c * 12, 0.5 * 72), "12 L T C = 0.5 x 72 L C^2 gives T / C = 36 / 12"
assert t_half_gpt3 == t_half_over_c * 12288 and 12 * t_half_gpt3 * 12288 == 0.5 * 72 * 12288**2, (
    "t_half_gpt3 should solve 12 L T C = 0.5 x 72 L C^2 for C = 12,288"
)

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
_L, _C, _V, _T = 96, 12288, 50257, 3 * 12288
_N = _L * (12 * _C**2 + 13 * _C) + 2 * _C
_want = 3 * (2 * _N + 4 * _L * _T * _C + 2 * _C * _V) / (6 * _N)
assert math.isclose(ratio_at_t_half, _want, rel_tol=1e-9), (
    f"ratio_at_t_half should be 3 (2N + 4LTC + 2CV) / 6N = {_want:.4f} at T = 3C"
)

# %% [raw]
# # END TESTS

# %% [raw]
# # END QUESTION
