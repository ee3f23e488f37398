# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [raw]
# # ASSIGNMENT CONFIG
# name: 05_rlhf
# init_cell: true
# check_all_cell: false
# export_cell: false
# solutions_pdf: false
# generate: true
# tests:
#   files: false

# %% [markdown]
# # Assignment 5: Learning from human feedback
#
# The exercises of chapter 5, "Learning from human feedback: reward models, PPO, best-of-n, DPO
# and GRPO". Read the sections "PPO from scratch" (the KL estimators k1 and k3), "Best-of-n
# sampling", "The clipped objective", "The KL leash" (PPO-ptx), "DPO: preferences without a reward
# model" and "GRPO: a verifiable reward and no value head". The losses come from `aigc_book.rlhf`;
# the chapter's cells after its exercises check some of the same quantities, and this assignment
# asks you to compute them yourself. Exercise 8 runs PPO for real, shrunk to a tiny model and a few
# iterations so that it finishes in seconds; exercises 4 and 9 need the chapter's full runs and are
# graded by hand. Define the variables or functions each exercise names (keep the names), then run
# `grader.check("ex1")` (and so on) to run the public checks; more checks are hidden and run when
# the assignment is graded.

# %%
import copy
import math

import torch

from aigc_book.rlhf.best_of_n import best_of_n_distribution, best_of_n_kl, kl_divergence
from aigc_book.rlhf.losses import (
    dpo_loss,
    grpo_advantages,
    kl_estimates,
    masked_mean,
    ppo_policy_loss,
)
from aigc_book.rlhf.pipeline import RLHFConfig, checker_reward, prompt_sampler
from aigc_book.rlhf.ppo import PPOConfig, PPOTrainer
from aigc_book.rlhf.preferences import gold_rewards
from aigc_book.rlhf.sft_policy import PolicyConfig, build_sft_policy
from aigc_book.text.languages import BracketLanguage
from aigc_book.training.evaluation import lm_loss
from aigc_book.training.objectives import sequence_lm_batch

torch.set_num_threads(1)  # one thread: sums in one order, so exercise 8's PPO runs repeat exactly

# %% [raw]
# # BEGIN QUESTION
# name: ex1
# points: 2

# %% [markdown]
# **Exercise 1. k3 is never negative.** Show that $k_3 = (\rho - 1) - \log\rho \ge 0$ for every
# $\rho > 0$, with equality only at $\rho = 1$. Hint: $\log$ is concave, so it lies below its
# tangent at 1. Write the argument in the markdown cell below (read by your teacher, not scored).
# Then check it numerically with the package's `kl_estimates(logprobs, ref_logprobs)`, which takes
# $\log\rho = $ `ref_logprobs - logprobs`:
#
# * `k3_values`: k3 at every log-ratio of `log_rho_grid` (a float64 tensor like the grid);
# * `k3_min`: its smallest value (a float);
# * `log_rho_at_min`: the log-ratio where it is smallest (a float).

# %%
log_rho_grid = torch.arange(-1000, 1001, dtype=torch.float64) / 100  # -10 to 10, 0 included

# %% [raw]
# # BEGIN SOLUTION

# %%
# BEGIN SOLUTION
_, k3_values = kl_estimates(torch.zeros_like(log_rho_grid), log_rho_grid)
# END SOLUTION
k3_min = float(k3_values.min())  # SOLUTION
log_rho_at_min = float(log_rho_grid[k3_values.argmin()])  # SOLUTION
print(f"smallest k3 {k3_min:g} at log ρ = {log_rho_at_min:g}")

# %% [raw]
# # END SOLUTION

# %% [markdown]
# *Why is $k_3 \ge 0$, and when is it 0?* (your argument)

# %% [raw]
# # BEGIN TESTS

# %%
assert k3_values.shape == log_rho_grid.shape, "k3_values needs one value per log-ratio of the grid"
assert torch.allclose(k3_values, torch.expm1(log_rho_grid) - log_rho_grid, rtol=1e-12, atol=0), (
    "k3_values should be (ρ - 1) - log ρ at ρ = exp(log_rho_grid): did you take k1 instead of k3, "
    "or pass the log-ratio with the wrong sign?"
)

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
assert bool((k3_values >= 0).all()), "k3 is never negative"
assert k3_min == 0.0 and log_rho_at_min == 0.0, "k3 is smallest, exactly 0, at log ρ = 0 (ρ = 1)"

# %% [raw]
# # END TESTS

# %% [raw]
# # END QUESTION

# %% [raw]
# # BEGIN QUESTION
# name: ex2
# points: 3

# %% [markdown]
# **Exercise 2. The KL of best-of-2.** Let no two responses tie in reward, and let $u \in [0, 1]$ be
# a response's quantile in the reward distribution under $\pi$, so $u$ is uniform under $\pi$. Show
# that the better of two samples has quantile density $2u$, and derive
# $\mathrm{KL}(\pi_\text{bon} \,\|\, \pi) = \int_0^1 2u \log(2u)\,du = \log 2 - \tfrac12$. (For $n$
# samples the density is $n u^{n-1}$, which gives $\log n - (n-1)/n$.) Write the derivation in the
# markdown cell below (read by your teacher, not scored), and define:
#
# * `bo2_kl_integral`: $\int_0^1 2u \log(2u)\,du$ computed *numerically* (for example by the
#   midpoint rule on a fine grid), a float;
# * `best_of_n_kl_uniform(n, m)`: the exact $\mathrm{KL}(\pi_\text{bon} \,\|\, \pi)$ when $\pi$ is
#   uniform over $m$ responses with distinct rewards. The best of $n$ draws is the $i$-th lowest of
#   the $m$ with probability $(i/m)^n - ((i-1)/m)^n$;
# * `bo2_exact`: a dict mapping each $m$ of `MS` to `best_of_n_kl_uniform(2, m)`.
#
# The exact values stay below the formula and approach it as $m$ grows: that is why the formula is
# an upper bound in general (Beirami et al. 2024).

# %%
MS = (2, 10, 100, 10_000)

# %% [raw]
# # BEGIN SOLUTION


# %%
def best_of_n_kl_uniform(n, m):
    """KL(best-of-n ‖ π), exactly, for π uniform over m responses ranked by reward."""
    # BEGIN SOLUTION
    i = torch.arange(1, m + 1, dtype=torch.float64)
    p_bon = (i / m) ** n - ((i - 1) / m) ** n
    return float((p_bon * torch.log(p_bon * m)).sum())
    # END SOLUTION


# BEGIN SOLUTION
u = (torch.arange(1_000_000, dtype=torch.float64) + 0.5) / 1_000_000  # midpoints of [0, 1]
bo2_kl_integral = float((2 * u * torch.log(2 * u)).mean())
bo2_exact = {m: best_of_n_kl_uniform(2, m) for m in MS}
# END SOLUTION
print(f"integral {bo2_kl_integral:.6f}, log 2 - 1/2 = {math.log(2) - 0.5:.6f}; exact: {bo2_exact}")

# %% [raw]
# # END SOLUTION

# %% [markdown]
# *Why is the density of the better of two samples $2u$, and what is the integral?*
# (your derivation)

# %% [raw]
# # BEGIN TESTS

# %%
assert abs(bo2_kl_integral - (math.log(2) - 0.5)) < 1e-6, (
    "bo2_kl_integral should be ∫ 2u log(2u) du over [0, 1] = log 2 - 1/2 to 1e-6"
)

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
for _n, _m in ((2, 5), (3, 7), (8, 50), (2, 1000)):
    _uniform = [1 / _m] * _m
    _exact = kl_divergence(best_of_n_distribution(_uniform, list(range(_m)), _n), _uniform)
    assert abs(best_of_n_kl_uniform(_n, _m) - _exact) < 1e-9, (
        f"best_of_n_kl_uniform({_n}, {_m}) should be the KL of the best-of-n distribution "
        f"(i/m)^n - ((i-1)/m)^n from the uniform one: {_exact:.6f}"
    )

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
assert sorted(bo2_exact) == sorted(MS), "bo2_exact needs one entry for each m in MS"
_values = [bo2_exact[m] for m in sorted(MS)]
assert all(v <= best_of_n_kl(2) for v in _values), "the exact KL never exceeds log 2 - 1/2"
assert _values == sorted(_values), "the exact KL grows with the number of responses m"
assert abs(bo2_exact[10_000] - (math.log(2) - 0.5)) < 1e-3, "m = 10,000 should be near log 2 - 1/2"

# %% [raw]
# # END TESTS

# %% [raw]
# # END QUESTION

# %% [raw]
# # BEGIN QUESTION
# name: ex3
# points: 3

# %% [markdown]
# **Exercise 3. DPO as $\beta \to 0$.** What do DPO's loss and its gradient become? Write the
# gradient as $-\beta\,\sigma(-\beta u)\,\nabla u$, with $u$ the difference of the two log-ratios,
# and let $\beta \to 0$. Answer in the markdown cell below (read by your teacher, not scored), and
# define:
#
# * `dpo_loss_and_grad(beta)`: returns `(loss, grad)` for the 8 pairs of the setup cell, where
#   `loss` is the package's `dpo_loss` (a float) and `grad` its gradient with respect to
#   `dpo_policy` (a `(2, 8)` tensor: row 0 the chosen, row 1 the rejected log-probabilities), by
#   autograd.
#
# The checks evaluate it at several $\beta$, down to $10^{-6}$.

# %%
dpo_gen = torch.Generator().manual_seed(0)
# log π_θ(y_w|x) (row 0) and log π_θ(y_l|x) (row 1) of 8 pairs, and log π_ref of the same responses:
dpo_policy = -20 + 5 * torch.randn(2, 8, generator=dpo_gen, dtype=torch.float64)
dpo_reference = dpo_policy + torch.randn(2, 8, generator=dpo_gen, dtype=torch.float64)

# %% [raw]
# # BEGIN SOLUTION


# %%
def dpo_loss_and_grad(beta):
    """DPO's loss on the 8 pairs and its gradient with respect to dpo_policy."""
    # BEGIN SOLUTION
    logps = dpo_policy.clone().requires_grad_(True)
    loss = dpo_loss(logps[0], logps[1], dpo_reference[0], dpo_reference[1], beta=beta)
    (grad,) = torch.autograd.grad(loss, logps)
    return float(loss.detach()), grad
    # END SOLUTION


# %% [raw]
# # END SOLUTION

# %%
for _beta in (1.0, 0.1, 1e-6):
    print(f"β = {_beta:g}: loss {dpo_loss_and_grad(_beta)[0]:.6f} (log 2 = {math.log(2):.6f})")

# %% [markdown]
# *What do the loss and its gradient tend to as $\beta \to 0$, and what does the policy learn then?*
# (your answer)

# %% [raw]
# # BEGIN TESTS

# %%
_u = (dpo_policy[0] - dpo_reference[0] - dpo_policy[1] + dpo_reference[1]).tolist()
_by_hand = sum(math.log1p(math.exp(-1.0 * x)) for x in _u) / len(_u)  # -mean log σ(βu), β = 1
assert abs(dpo_loss_and_grad(1.0)[0] - _by_hand) < 1e-9, (
    "at β = 1 the loss should be -mean log σ(β u), "
    "u = (log π - log π_ref)(chosen) - (log π - log π_ref)(rejected)"
)

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
_u = dpo_policy[0] - dpo_reference[0] - dpo_policy[1] + dpo_reference[1]
_weight = 0.5 * torch.sigmoid(-0.5 * _u) / _u.numel()  # β σ(-β u) / N at β = 0.5
_grad = dpo_loss_and_grad(0.5)[1]
assert _grad.shape == (2, 8), "grad should have the shape of dpo_policy, (2, 8)"
torch.testing.assert_close(
    _grad,
    torch.stack([-_weight, _weight]),
    msg="the gradient should be -β σ(-β u) / N on each chosen and +β σ(-β u) / N on each rejected "
    "log-probability (the loss is a mean over N pairs)",
)

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
_loss, _grad = dpo_loss_and_grad(1e-6)
assert abs(_loss - math.log(2)) < 1e-5, "as β → 0 the loss tends to log 2 (σ(0) = 1/2 per pair)"
_sign = torch.tensor([[-1.0], [1.0]], dtype=torch.float64).expand(2, 8)
torch.testing.assert_close(
    _grad,
    _sign * 1e-6 / (2 * 8),
    rtol=1e-4,
    atol=0,
    msg="as β → 0 the gradient tends to -(β/2)∇u / N: the same push on every pair, "
    "whatever its margin",
)

# %% [raw]
# # END TESTS

# %% [raw]
# # END QUESTION

# %% [raw]
# # BEGIN QUESTION
# name: ex4
# manual: true
# points: 3

# %% [markdown]
# **Exercise 4. Labelers without length bias.** *(open: graded by hand)* Set the labelers' length
# bias to 0 (`RLHFConfig(length_bias=0.0)`, or `Labelers(..., length_bias=0.0)` in the chapter's
# preference cell) and re-run the over-optimisation cell. Does the exploit disappear? Does
# over-optimisation? Compare the mean response length of the most optimised policy (PPO with
# β = 0) with the SFT model's, and the gold reward's peak with its final value. Hint: a reward model
# fitted to finite data still has errors, even when the labels have no bias; Gao et al. (2023) saw
# over-optimisation with labels from an unbiased gold model. This needs the chapter's full runs
# (about a minute on a laptop CPU for the preferences, the reward model and one PPO run); report
# your numbers and explain them.

# %% [raw]
# # BEGIN SOLUTION

# %% [markdown]
# *Model answer.* The length exploit disappears; over-optimisation does not. One run at the
# chapter's CPU settings (about 7,300 training pairs, PPO with β = 0 for the 60 iterations of the
# leash runs; seeded, but the numbers move a little with the number of CPU threads). Columns: the
# reward model's held-out accuracy (Bayes limit), then the rollouts' mean length and gold reward
# over the first 5 iterations, at the peak (the largest moving average of 10) and over the last 10,
# and the KL to the SFT model at the end:
#
# | labelers | accuracy | length | gold: start, peak, end | KL |
# |---|---:|---:|---:|---:|
# | length bias 0.3 (the chapter) | 65.4% (83.6%) | 2.52 → 5.34 | 0.541, 0.550, 0.341 | 18 nats |
# | no length bias | 63.2% (83.1%) | 2.45 → 2.46 | 0.540, 0.553, 0.492 | 4.3 nats |
#
# Without the bias the labels no longer reward length, so the reward model learns no preference for
# it and the optimised policy's answers stay as long as the SFT model's: the exploit is gone, and
# with it most of the damage (the gold reward ends 0.05 below its start instead of 0.20). But the
# gold reward still rises a little, peaks within the first iterations and falls while the reward
# model's score keeps rising (+0.03 → +0.21) and the KL grows: over-optimisation. The reward model
# is fitted to a finite set of noisy comparisons and is right only about two times in three, even on
# unbiased labels; its errors on content (it cannot count or check an order reliably) are what an
# unleashed policy finds and exploits, far from the SFT answers it was trained on. This is Gao et
# al.'s (2023) finding with an unbiased gold model, and the reason the KL penalty (or early
# stopping) is still needed.
#
# *Grading (3 points):* 1 for the length comparison (the exploit disappears), 1 for the gold
# reward's peak against its final value while the proxy rises (over-optimisation remains), 1 for the
# explanation (a finite, imperfect reward model is still a proxy; the KL leash is still needed).

# %% [raw]
# # END SOLUTION

# %% [raw]
# # END QUESTION

# %% [raw]
# # BEGIN QUESTION
# name: ex5
# points: 3

# %% [markdown]
# **Exercise 5. The k2 estimator.** Implement $k_2 = \tfrac12(\log\rho)^2$,
# $\rho = \pi_\text{ref}/\pi$, and compare its bias with k1 and k3 for two categorical
# distributions whose exact KL you can compute. How does the bias change as the distributions move
# apart? Take the expectations exactly: sums over the 10 outcomes weighted by $\pi$, no sampling.
# Define:
#
# * `k2_estimate(logprobs, ref_logprobs)`: k2 per outcome, elementwise (same argument order as
#   `kl_estimates`);
# * `kl_rows`: a list with one tuple `(exact_kl, mean_k1, mean_k2, mean_k3)` per step $s$ of
#   `STEPS`, in order, for $\pi$ = softmax(`ref_logits` + $s\,\cdot$ `shift`) and
#   $\pi_\text{ref}$ = softmax(`ref_logits`): the exact $\mathrm{KL}(\pi\|\pi_\text{ref})$ and
#   $\mathbb{E}_\pi$ of each estimator (all floats).
#
# k1 and k3 must match the exact KL to rounding. Say in the markdown cell below how k2's bias
# changes with $s$ (read by your teacher, not scored).

# %%
k_gen = torch.Generator().manual_seed(0)
ref_logits = torch.randn(10, generator=k_gen, dtype=torch.float64)
shift = torch.randn(10, generator=k_gen, dtype=torch.float64)
STEPS = (0.1, 0.5, 1.0, 2.0)

# %% [raw]
# # BEGIN SOLUTION


# %%
def k2_estimate(logprobs, ref_logprobs):
    """k2 = (log ρ)² / 2 with log ρ = ref_logprobs - logprobs, elementwise."""
    # BEGIN SOLUTION
    return 0.5 * (ref_logprobs - logprobs) ** 2
    # END SOLUTION


# BEGIN SOLUTION
kl_rows = []
log_ref = torch.log_softmax(ref_logits, 0)
for step in STEPS:
    log_pi = torch.log_softmax(ref_logits + step * shift, 0)
    pi = log_pi.exp()
    k1s, k3s = kl_estimates(log_pi, log_ref)
    exact_kl = float((pi * (log_pi - log_ref)).sum())
    means = [float((pi * k).sum()) for k in (k1s, k2_estimate(log_pi, log_ref), k3s)]
    kl_rows.append((exact_kl, *means))
# END SOLUTION
for _step, (_kl, _k1, _k2, _k3) in zip(STEPS, kl_rows):
    print(f"s = {_step}: KL {_kl:.5f}, E[k1] {_k1:.5f}, E[k2] {_k2:.5f}, E[k3] {_k3:.5f}")

# %% [raw]
# # END SOLUTION

# %% [markdown]
# *How does k2's bias change as the distributions move apart, and why?* (your answer)

# %% [raw]
# # BEGIN TESTS

# %%
_a = torch.randn(7, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
_b = torch.randn(7, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
torch.testing.assert_close(
    k2_estimate(_a, _b), 0.5 * (_b - _a) ** 2, msg="k2_estimate should be (ref - logprobs)² / 2"
)

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
assert len(kl_rows) == len(STEPS), "kl_rows needs one tuple per step of STEPS"
for _step, _row in zip(STEPS, kl_rows):
    _kl = float(
        torch.distributions.kl_divergence(
            torch.distributions.Categorical(logits=ref_logits + _step * shift),
            torch.distributions.Categorical(logits=ref_logits),
        )
    )
    assert abs(_row[0] - _kl) < 1e-10, f"s = {_step}: exact_kl should be KL(π ‖ π_ref) = {_kl:.6f}"
    assert abs(_row[1] - _kl) < 1e-10 and abs(_row[3] - _kl) < 1e-10, (
        f"s = {_step}: the π-weighted means of k1 and k3 should equal the exact KL (both unbiased)"
    )

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
for _step, _row in zip(STEPS, kl_rows):
    _pi = torch.softmax(ref_logits + _step * shift, 0)
    _log_rho = torch.log_softmax(ref_logits, 0) - torch.log_softmax(ref_logits + _step * shift, 0)
    _k2 = float((_pi * _log_rho**2).sum()) / 2
    assert abs(_row[2] - _k2) < 1e-10, f"s = {_step}: mean_k2 should be Σ π (log ρ)²/2 = {_k2:.6f}"

# %% [raw]
# # END TESTS

# %% [raw]
# # END QUESTION

# %% [raw]
# # BEGIN QUESTION
# name: ex6
# points: 2

# %% [markdown]
# **Exercise 6. The clip without the min.** Replace PPO's objective by its clipped term alone,
# $\operatorname{clip}(r, 1-\epsilon, 1+\epsilon)\hat A$, and redraw (if you like) the figure of
# section "The clipped objective". Where is the gradient zero now, and why is that worse? Define:
#
# * `clip_only_objective(r, adv, eps)`: the clipped term alone, elementwise, for a tensor of ratios
#   `r` and an advantage `adv`;
# * `zero_grad_counts`: a dict mapping each advantage $\hat A = +1.0$ and $-1.0$ to a pair
#   `(with_min, clip_only)`: how many ratios of `r_grid` have a gradient exactly 0 (by autograd)
#   under PPO's objective $\min(r\hat A, \operatorname{clip}(r)\hat A)$ and under the clipped term
#   alone, with $\epsilon$ = `EPS`.
#
# Explain in the markdown cell below why the zeros of the clipped term alone are worse (read by your
# teacher, not scored).

# %%
r_grid = (torch.arange(200, dtype=torch.float64) + 0.5) / 100  # 0.005 ... 1.995: none is 1 ± ε
EPS = 0.2

# %% [raw]
# # BEGIN SOLUTION


# %%
def clip_only_objective(r, adv, eps):
    """clip(r, 1 - eps, 1 + eps) · adv, elementwise."""
    # BEGIN SOLUTION
    return torch.clamp(r, 1 - eps, 1 + eps) * adv
    # END SOLUTION


# BEGIN SOLUTION
zero_grad_counts = {}
for adv in (1.0, -1.0):
    r = r_grid.clone().requires_grad_(True)
    with_min = torch.minimum(r * adv, clip_only_objective(r, adv, EPS))
    (g_min,) = torch.autograd.grad(with_min.sum(), r)
    (g_clip,) = torch.autograd.grad(clip_only_objective(r, adv, EPS).sum(), r)
    zero_grad_counts[adv] = (int((g_min == 0).sum()), int((g_clip == 0).sum()))
# END SOLUTION
print(zero_grad_counts)

# %% [raw]
# # END SOLUTION

# %% [markdown]
# *Where is the gradient of the clipped term alone zero, and why is that worse?* (your answer)

# %% [raw]
# # BEGIN TESTS

# %%
_r = torch.rand(50, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 2
for _adv, _eps in ((1.0, 0.2), (-2.0, 0.1)):
    _want = torch.where(_r < 1 - _eps, 1 - _eps, torch.where(_r > 1 + _eps, 1 + _eps, _r)) * _adv
    torch.testing.assert_close(
        clip_only_objective(_r, _adv, _eps),
        _want,
        msg="clip_only_objective should be clip(r, 1 - eps, 1 + eps) x adv, elementwise",
    )

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
_above, _below = int((r_grid > 1 + EPS).sum()), int((r_grid < 1 - EPS).sum())
assert zero_grad_counts[1.0][0] == _above and zero_grad_counts[-1.0][0] == _below, (
    "with the min the gradient is 0 only where the clip binds on the side that would raise the "
    "objective: r > 1 + ε for Â > 0, r < 1 - ε for Â < 0"
)
assert zero_grad_counts[1.0][1] == zero_grad_counts[-1.0][1] == _above + _below, (
    "the clipped term alone is flat on both sides: every ratio outside [1 - ε, 1 + ε]"
)

# %% [raw]
# # END TESTS

# %% [raw]
# # END QUESTION

# %% [raw]
# # BEGIN QUESTION
# name: ex7
# points: 3

# %% [markdown]
# **Exercise 7. A group that teaches nothing.** Call `grpo_advantages` on a group of 4 responses
# that all earned reward 1. What are the advantages, and what does the policy learn from that
# prompt? GRPO's loss on a minibatch is PPO's clipped surrogate plus $\beta$ times the masked mean
# of k3 to the reference (`aigc_book.rlhf.grpo`). On the first update of a batch the old
# log-probabilities equal the current ones. Define:
#
# * `flat_advantages`: the advantages of that group (a `(4,)` tensor);
# * `flat_policy_grad`: the gradient, with respect to the log-probabilities `grpo_logprobs`, of
#   `ppo_policy_loss(logprobs, grpo_logprobs, A, grpo_mask)` with every token of a response given
#   its response's advantage A from `flat_advantages`;
# * `flat_total_grad`: the gradient of that loss plus `GRPO_BETA` times the masked mean of k3
#   between the log-probabilities and `grpo_ref_logprobs` (GRPO's whole loss).

# %%
g_gen = torch.Generator().manual_seed(1)
grpo_logprobs = -3 * torch.rand(4, 6, generator=g_gen, dtype=torch.float64)  # 4 responses x 6
grpo_ref_logprobs = grpo_logprobs + 0.3 * torch.randn(4, 6, generator=g_gen, dtype=torch.float64)
grpo_mask = torch.tensor(  # True on response tokens
    [[0, 1, 1, 1, 1, 1], [0, 1, 1, 0, 0, 0], [0, 1, 1, 1, 0, 0], [0, 1, 0, 0, 0, 0]]
).bool()
GRPO_BETA = 0.04

# %% [raw]
# # BEGIN SOLUTION

# %%
flat_advantages = grpo_advantages(torch.ones(4, dtype=torch.float64), group_size=4)  # SOLUTION
# BEGIN SOLUTION
lp = grpo_logprobs.clone().requires_grad_(True)
token_adv = flat_advantages[:, None].expand_as(lp)
policy_term = ppo_policy_loss(lp, grpo_logprobs, token_adv, grpo_mask)
(flat_policy_grad,) = torch.autograd.grad(policy_term, lp, retain_graph=True)
k3 = kl_estimates(lp, grpo_ref_logprobs)[1]
(flat_total_grad,) = torch.autograd.grad(policy_term + GRPO_BETA * masked_mean(k3, grpo_mask), lp)
# END SOLUTION
print(f"advantages {flat_advantages.tolist()}")
print(f"largest entry of the policy term's gradient: {flat_policy_grad.abs().max():g}")

# %% [raw]
# # END SOLUTION

# %% [markdown]
# *What does the policy learn from such a prompt?* (your answer)

# %% [raw]
# # BEGIN TESTS

# %%
assert flat_advantages.shape == (4,), "flat_advantages needs one advantage per response"
assert float(flat_advantages.abs().max()) < 1e-12, (
    "every response equals the group's mean, so every advantage is 0"
)

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
assert flat_policy_grad.shape == grpo_logprobs.shape, "flat_policy_grad: (4, 6), one per token"
assert float(flat_policy_grad.abs().max()) == 0.0, (
    "with every advantage 0, the clipped surrogate has zero gradient: the reward teaches nothing"
)

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
# d k3 / d log π = 1 - exp(log π_ref - log π); the masked mean divides by the response tokens.
_want = GRPO_BETA * (1 - torch.exp(grpo_ref_logprobs - grpo_logprobs)) * grpo_mask / grpo_mask.sum()
torch.testing.assert_close(
    flat_total_grad,
    _want,
    msg="the whole loss's gradient should be the KL term's alone: β (1 - ρ) / (number of response "
    "tokens) on each response token, pulling the policy back towards the reference",
)

# %% [raw]
# # END TESTS

# %% [raw]
# # END QUESTION

# %% [raw]
# # BEGIN QUESTION
# name: ex8
# points: 3

# %% [markdown]
# **Exercise 8. How much pretraining to mix in.** The chapter reruns the unleashed (β = 0) PPO
# with PPO-ptx, the pretraining loss added $\gamma$ times; the exercise asks for $\gamma$ = 0.1 and
# 10. Here it is shrunk so that it runs in seconds: the setup cell builds a tiny SFT model (1 layer,
# 32 wide, a few hundred steps of pretraining on the bracket language and of supervised
# fine-tuning), and PPO runs `PPO_STEPS` = 10 iterations of 16 rollouts against the checker
# (`checker_reward`, 1 for a right answer) instead of a reward model. For each $\gamma$ in `GAMMAS`
# (0 is plain PPO), starting from a fresh copy of `sft.model`, run
# `PPOTrainer(policy, sft.model, sft.tokenizer, checker_reward, prompt_sampler(family),
# ppo_config(gamma), seed=0, ptx_batch_fn=...)`, with `ptx_batch_fn=ptx_batch` when $\gamma > 0$
# (else None). Define:
#
# * `ptx_policies`: a dict mapping each $\gamma$ to its trained policy (the GPT you passed in);
# * `bracket_loss`: a dict mapping each $\gamma$ to its policy's bracket-language loss on
#   `bracket_val` (`lm_loss`, nats per token);
# * `ptx_loss_trace`: a dict mapping each $\gamma > 0$ to the list of the trainer's `ptx_loss`
#   statistic, one per iteration (`trainer.step()` returns the statistics).
#
# Compare with `sft_bracket_loss`, the SFT model's. In the markdown cell below, say how the
# bracket-language loss and the gold reward (`gold_rewards` of each iteration's rollouts, if you
# track it with a `callback`) trade off in the chapter's full-size runs or in yours (read by your
# teacher, not scored).

# %%
sft = build_sft_policy(
    PolicyConfig(
        n_layer=1,
        n_head=2,
        n_embd=32,
        pretrain_seqs=2000,
        pretrain_steps=150,
        sft_pairs=1000,
        sft_steps=150,
    ),
    seed=0,
)
family = RLHFConfig().instruction_config  # the feedback stage's instructions: sort and count
bracket_val = BracketLanguage().sample(200, sft.pretrain_seqs.size(1) - 1, seed=99)
sft_bracket_loss = lm_loss(sft.model, bracket_val)
GAMMAS, PPO_STEPS = (0.0, 0.1, 10.0), 10


def ppo_config(gamma):
    """Tiny PPO without a KL penalty (β = 0) and with PPO-ptx weight gamma."""
    return PPOConfig(
        batch_size=16, minibatch_size=8, ppo_epochs=2, lr=1e-3, kl_coef=0.0, ptx_coef=gamma
    )


def ptx_batch(generator):
    """A batch of 16 of the SFT model's pretraining sequences."""
    return sequence_lm_batch(sft.pretrain_seqs, 16, generator)


print(f"SFT model: bracket-language loss {sft_bracket_loss:.3f} nats per token")

# %% [raw]
# # BEGIN SOLUTION

# %%
# BEGIN SOLUTION
ptx_policies, bracket_loss, ptx_loss_trace, gold_trace = {}, {}, {}, {}
for gamma in GAMMAS:
    policy = copy.deepcopy(sft.model)
    golds = []
    trainer = PPOTrainer(
        policy,
        sft.model,
        sft.tokenizer,
        checker_reward,
        prompt_sampler(family),
        ppo_config(gamma),
        seed=0,
        ptx_batch_fn=ptx_batch if gamma > 0 else None,
        callback=lambda step, responses, stats, golds=golds: golds.append(
            gold_rewards(responses).mean().item()
        ),
    )
    stats = [trainer.step() for _ in range(PPO_STEPS)]
    ptx_policies[gamma], gold_trace[gamma] = policy, golds
    bracket_loss[gamma] = lm_loss(policy, bracket_val)
    if gamma > 0:
        ptx_loss_trace[gamma] = [s["ptx_loss"] for s in stats]
# END SOLUTION
for _g in GAMMAS:
    print(f"γ = {_g:g}: bracket-language loss {bracket_loss[_g]:.3f} (SFT {sft_bracket_loss:.3f})")

# %% [raw]
# # END SOLUTION

# %% [markdown]
# *How do the bracket-language loss and the gold reward trade off as γ grows?* (your answer)

# %% [raw]
# # BEGIN TESTS

# %%
for _g in GAMMAS:
    assert ptx_policies[_g] is not sft.model, f"γ = {_g:g}: train a copy of sft.model, not itself"
    assert abs(bracket_loss[_g] - lm_loss(ptx_policies[_g], bracket_val)) < 1e-6, (
        f"bracket_loss[{_g:g}] should be lm_loss(ptx_policies[{_g:g}], bracket_val)"
    )
    assert abs(bracket_loss[_g] - sft_bracket_loss) > 1e-3, f"γ = {_g:g}: the policy is untrained"

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
assert bracket_loss[10.0] < bracket_loss[0.1] < bracket_loss[0.0], (
    "the more pretraining is mixed in, the lower the bracket-language loss after PPO"
)
assert bracket_loss[10.0] < sft_bracket_loss, (
    "with γ = 10 the pretraining gradients should win back the bracket language that supervised "
    "fine-tuning had lost: a loss below the SFT model's"
)

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
assert sorted(ptx_loss_trace) == [0.1, 10.0], "ptx_loss_trace needs the runs with γ > 0: 0.1 and 10"
for _g, _trace in ptx_loss_trace.items():
    assert len(_trace) == PPO_STEPS and all(math.isfinite(x) for x in _trace), (
        f"ptx_loss_trace[{_g:g}] should hold one ptx_loss per PPO iteration"
    )
assert abs(sum(ptx_loss_trace[10.0][-3:]) / 3 - bracket_loss[10.0]) < 0.3, (
    "with γ = 10 the trainer's last ptx_loss values should be near the held-out bracket loss"
)

# %% [raw]
# # END TESTS

# %% [raw]
# # END QUESTION

# %% [raw]
# # BEGIN QUESTION
# name: ex9
# manual: true
# points: 3

# %% [markdown]
# **Exercise 9. Feedback on every kind.** *(open: graded by hand)* Rerun the chapter with
# `RLHFConfig(kinds=instructions.KINDS)` in place of `RLHFConfig()`. How accurate is the reward
# model now, and what does PPO do to the gold reward at each β? Compare the reward model's accuracy
# on the pairs of each kind (`pair_rewards` on `rm_eval.select(...)`). Which kinds are hardest to
# judge, and what do their right answers have in common? This needs the chapter's full runs (a few
# minutes on a laptop CPU); report your numbers and explain them.

# %% [raw]
# # BEGIN SOLUTION

# %% [markdown]
# *Model answer.* One run at the chapter's CPU settings with
# `RLHFConfig(kinds=instructions.KINDS)` (the pairs from 12,000 preference prompts, the reward
# model trained for 600 steps, PPO for the 60 iterations of the leash runs; seeded, but the numbers
# move a little with the number of CPU threads). The reward model agrees with 57.8% of the 500
# held-out labels, against a Bayes limit of 80.2% (with sort and count only: 59-65% of 82-84%). By
# kind (held-out pairs; standard error about 0.04 each):
#
# | kind | held-out pairs | reward-model accuracy |
# |---|---:|---:|
# | close | 35 | 77% |
# | add | 114 | 67% |
# | count | 63 | 65% |
# | reverse | 148 | 56% |
# | sort | 140 | 44% |
#
# `reverse` and `sort` are the hardest: judging them takes comparing the answer with the prompt
# letter by letter, which a reward model of the policy's size does badly. `add` came out easier in
# this run, and `sort`, which the same kind of model judged
# at 62-64% when it saw only sort and count, fell to chance once it had to judge five kinds at once.
# With 35 to 148 pairs per kind the ranking between neighbours is noisy, so students' orders will
# differ; what matters is that the accuracy is lower overall, further below the Bayes limit, and
# uneven across kinds.
#
# PPO against this reward model (rollouts, first 5 → last 10 iterations):
#
# | β | gold reward | KL at the end | length |
# |---:|---:|---:|---:|
# | 0 | 0.569 → 0.364 | 13.9 nats | 2.20 → 4.29 |
# | 0.03 | 0.570 → 0.425 | 4.6 nats | 2.18 → 2.83 |
# | 0.1 | 0.568 → 0.510 | 1.9 nats | 2.20 → 2.55 |
# | 0.3 | 0.574 → 0.552 | 0.75 nats | 2.18 → 2.26 |
#
# At every β the gold reward ends below where it started (it rises briefly, to about 0.58, in the
# first iterations): a worse judge gives the policy more errors to exploit, and length (the
# labelers' bias) grows again without a leash. A larger β only slows the decline. The chapter keeps
# the feedback stage to sort and count because there a reward model this small judges well enough
# for PPO with β = 0.3 to raise the gold reward; for add and reverse a verifiable reward (GRPO
# against the checker) is the better choice.
#
# *Grading (3 points):* 1 for the overall and per-kind accuracies with the Bayes limit, 1 for the
# gold reward at each β, 1 for the explanation (a weaker judge, more to exploit; the leash slows but
# does not stop it).

# %% [raw]
# # END SOLUTION

# %% [raw]
# # END QUESTION
