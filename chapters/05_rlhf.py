# %% [markdown]
# # 5. Learning from human feedback: reward models, PPO, best-of-n, DPO and GRPO
#
# Chapter 4 turned a pretrained model into a chat model by supervised fine-tuning (SFT): it imitates
# demonstrations. InstructGPT and ChatGPT went one step further: people *compared* the model's answers,
# a **{term}`reward model`** learned their preferences, and reinforcement learning pushed the model towards
# answers the reward model likes (Ouyang et al. 2022). This chapter does all of that on a laptop CPU,
# with something no real lab has: an answer key. Every instruction of chapter 4's family has a checked
# answer, so a **{term}`gold reward`** is known exactly. The methods never see it (except {term}`GRPO <group relative policy optimisation (GRPO)>`, which is given
# the checker on purpose); the labelers who rank answers do, noisily. So we can ask:
#
# 1. How well does a reward model learn preferences, against the best any model could do?
# 2. What do {term}`best-of-n sampling`, {term}`PPO <proximal policy optimisation (PPO)>`, {term}`DPO <direct preference optimisation (DPO)>` and GRPO each optimise, and how much gold reward does each
#    buy per unit of divergence from the starting model?
# 3. When does optimising a learned reward stop helping — and what does the {term}`policy` learn to exploit?
#
# The code lives in `aigc_book.rlhf`: one small function per loss (`losses.py`), the rollouts and
# heads, the trainers (`ppo.py`, `grpo.py`, `dpo.py`), and the whole pipeline behind
# `python -m aigc_book rlhf`.

# %%
import copy
import math
import time
from dataclasses import asdict, dataclass, field, replace

import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import HTML, Markdown, display

from aigc_book import ChapterSettings, get_device, seed_everything, use_book_style
from aigc_book.rlhf.ppo import PPOConfig
from aigc_book.rlhf.sft_policy import PolicyConfig

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
# Every size and step count is set in the next cell. The CPU values produced the outputs stored in
# the notebook; on a CUDA GPU the same cells run larger models for longer, and the sentences that
# quote results are rendered from the numbers.


# %%
@dataclass(frozen=True)
class Settings(ChapterSettings):
    recipe: PolicyConfig = field(default_factory=PolicyConfig)  # chapter 4's SFT model
    preference_prompts: int = 12_000  # prompts whose two sampled answers the labelers rank
    rm_pair_counts: tuple = (
        300,
        1_500,
        100_000,
    )  # reward models trained on this many pairs (at most all)
    rm_steps: int = 600
    eval_prompts: int = (
        1_024  # held-out prompts for every measurement (standard error of a mean gold ≈ 0.01)
    )
    bon_samples: int = 32  # samples per prompt for the best-of-n curves
    ppo_steps: int = 120
    leash_steps: int = 60  # the shorter PPO runs of the KL-leash comparison
    dpo_steps: int = 200
    grpo_steps: int = 150
    checker_ppo_steps: int = 150  # PPO on GRPO's reward, for the comparison
    max_new_tokens: int = 10

    cuda = dict(  # what a CUDA GPU changes (Settings.for_device)
        recipe=PolicyConfig(
            n_layer=4,
            n_embd=128,
            pretrain_seqs=100_000,
            pretrain_steps=3000,
            sft_pairs=20_000,
            sft_steps=2000,
            batch_size=128,
            pretrain_lr=1e-3,
            sft_lr=1e-3,
        ),
        preference_prompts=40_000,
        rm_pair_counts=(1_000, 4_000, 16_000),
        rm_steps=1500,
        eval_prompts=4096,
        bon_samples=64,
        ppo_steps=500,
        leash_steps=300,
        dpo_steps=800,
        grpo_steps=600,
        checker_ppo_steps=600,
    )


settings = Settings.for_device(device)
print(settings.table(name_width=20))

# %% [markdown]
# ## The setting: a policy, a gold reward and labelers
#
# *What is being optimised, by whom, and against what truth?*
#
# **The policy** is chapter 4's supervised chat model, rebuilt by the next cell with chapter 4's recipe:
# a small GPT pretrained on the bracket language, then fine-tuned on the instruction family (close
# brackets, reverse, sort, count, add) in the chat template. A frozen copy is the **reference**
# $\pi_\text{ref}$ that every method is measured against.
#
# The feedback stage uses two of the five kinds, `sort` and `count`: their answers can be judged from
# simple features (the letters of a sorted answer are in order; a count is one digit), so a reward
# model as small as the policy has a chance. Exercise 9 runs the stage on every kind, where the reward
# model must judge `add 7+12 → 19` — which takes knowing the sum.

# %%
from aigc_book.rlhf.pipeline import RLHFConfig
from aigc_book.rlhf.sft_policy import build_sft_policy
from aigc_book.tasks import instructions

sft = build_sft_policy(settings.recipe, seed=0, device=device)
reference, tok = sft.model, sft.tokenizer
print(
    f"SFT policy: {reference.num_parameters():,} parameters, built in {sft.seconds:.0f} s; "
    f"greedy accuracy on held-out instructions {sft.accuracy['all']:.2f}"
)
rl = (
    RLHFConfig()
)  # the defaults of `python -m aigc_book rlhf`: the feedback stage's instructions, labelers, ...
family = rl.instruction_config
print(f"the feedback stage's instructions: {', '.join(family.kinds)}")
held_out = instructions.sample_instructions(settings.eval_prompts, seed=2000, config=family)

# %% [markdown]
# **The gold reward** $g(x, y)$ grades a response $y$ to the prompt $x$ the way a teacher marks an
# answer: half the marks for its *form* — the right length, and only characters a right answer could
# use (`instructions.well_formed`) — and half for its *content*, 1 for the correct answer $y^*$ and
# partial credit $1 - d/\max(|y^*|, |y|)$ for a wrong one, with $d$ the edit distance
# (`instructions.score`). So $g = 1$ exactly for the correct answer. It plays the human's true,
# unknowable taste.
#
# **The labelers** see two responses to one prompt and say which is better. Like people, they are
# noisy, and ours have a bias real labelers are known to have: longer answers look more thorough
# (Singhal et al. 2023 found length correlations throughout {term}`RLHF <reinforcement learning from human feedback (RLHF)>`). They prefer $y_a$ to $y_b$ with the
# **{term}`Bradley–Terry <Bradley–Terry model>`** probability (Bradley & Terry 1952)
#
# $$P(y_a \succ y_b) = \sigma\!\left(\frac{g(x, y_a) - g(x, y_b)}{\tau} + b\,(|y_a| - |y_b|)\right),$$
#
# with noise temperature $\tau$ and a bias $b$ per character. Because we know these probabilities,
# we know the best accuracy *any* predictor of their labels can reach: for each pair, predict the
# likelier label, which is right with probability $\max(p, 1-p)$. That **Bayes limit** is the ceiling
# for the reward model below.

# %%
# NBVAL_CHECK_OUTPUT
from aigc_book.rlhf.preferences import Labelers, bayes_accuracy, collect_preferences, gold_reward

labelers = Labelers(temperature=rl.labeler_temperature, length_bias=rl.length_bias)
for prompt, response in [
    ("add 7+12", "19"),
    ("add 7+12", "18"),
    ("add 7+12", "1+"),
    ("sort dbca", "abdc"),
    ("sort dbca", "abcd]]"),
]:
    print(f"gold({prompt!r}, {response!r}) = {gold_reward(prompt, response):.3f}")
p = labelers.prob_prefers_first(
    torch.tensor(1.0), torch.tensor(0.5), torch.tensor(2), torch.tensor(2)
)
assert torch.isclose(
    p, torch.sigmoid(torch.tensor(0.5 / rl.labeler_temperature))
)  # the formula, by hand
p = labelers.prob_prefers_first(
    torch.tensor(0.5), torch.tensor(0.5), torch.tensor(4), torch.tensor(2)
)
print(
    f"labelers: temperature {labelers.temperature}, length bias {labelers.length_bias} per "
    "character; two equally good answers, 4 and 2 characters long: the longer is preferred "
    f"with probability {p:.3f}"
)

# %%
t0 = time.perf_counter()
prefs = collect_preferences(
    reference,
    tok,
    instructions.sample_instructions(settings.preference_prompts, seed=1000, config=family),
    labelers,
    max_new_tokens=settings.max_new_tokens,
    generator=torch.Generator(device=device).manual_seed(1),
)
rm_eval, rm_train = prefs.split(500)
print(
    f"{len(prefs):,} pairs from {settings.preference_prompts:,} prompts (pairs of identical "
    f"answers dropped) in {time.perf_counter() - t0:.0f} s; {len(rm_eval)} held out"
)
bayes = bayes_accuracy(rm_eval.p_chosen)
len_c = torch.tensor([len(t) for t in rm_train.chosen.texts])
len_r = torch.tensor([len(t) for t in rm_train.rejected.texts])
differ = len_c != len_r
print(f"Bayes limit of label accuracy on the held-out pairs: {bayes:.3f}")
print(
    f"of the {int(differ.sum()):,} training pairs whose answers differ in length, the longer one "
    f"was chosen in {(len_c > len_r)[differ].float().mean():.0%}"
)

# %% [markdown]
# ## A reward model from preferences
#
# *Can a model learn the labelers' taste from their comparisons, and how close to the limit does it get?*
#
# The reward model $r_\phi(x, y)$ is the SFT model's trunk with its output layer replaced by one
# number, read at the last token (InstructGPT started its reward model from the SFT model too). It is
# fitted by maximum likelihood under Bradley–Terry, the loss of InstructGPT's eq. 1:
#
# $$\mathcal{L}(\phi) = -\,\mathbb{E}\big[\log \sigma\big(r_\phi(x, y_c) - r_\phi(x, y_r)\big)\big],$$
#
# $y_c$ the chosen and $y_r$ the rejected response. The check: the package's loss against the formula.

# %%
from aigc_book.rlhf.heads import RewardModel
from aigc_book.rlhf.losses import bradley_terry_loss
from aigc_book.rlhf.reward_training import pair_rewards, preference_accuracy, train_reward_model

r_c, r_r = torch.tensor([2.0, -1.0, 0.5]), torch.tensor([1.0, 0.0, 0.5])
by_hand = (
    -sum(math.log(1 / (1 + math.exp(-(a - b)))) for a, b in zip(r_c.tolist(), r_r.tolist())) / 3
)
assert math.isclose(bradley_terry_loss(r_c, r_r).item(), by_hand, rel_tol=1e-6)

reward_models, rm_accuracy = {}, {}
for n_pairs in settings.rm_pair_counts:
    n_pairs = min(n_pairs, len(rm_train))
    torch.manual_seed(0)
    rm = RewardModel(reference)
    steps = min(
        settings.rm_steps, max(100, 8 * n_pairs // rl.reward.batch_size)
    )  # about 8 passes over a small set
    train_reward_model(
        rm,
        rm_train.split(n_pairs)[0] if n_pairs < len(rm_train) else rm_train,
        replace(rl.reward, steps=steps),
        seed=0,
        device=device,
    )
    reward_models[n_pairs], rm_accuracy[n_pairs] = rm, preference_accuracy(rm, rm_eval)
    print(
        f"reward model on {n_pairs:>5,} pairs, {steps} steps: held-out accuracy "
        f"{rm_accuracy[n_pairs]:.3f}"
    )
rm = reward_models[max(reward_models)]  # the best one: PPO and best-of-n optimise it
small_rm = reward_models[min(reward_models)]

fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot(list(rm_accuracy), list(rm_accuracy.values()), "o-", label="reward model")
ax.axhline(bayes, color="k", ls="--", label=f"Bayes limit ({bayes:.2f})")
ax.axhline(0.5, color="gray", ls=":", label="chance")
ax.set_xscale("log")
ax.set_xticks(list(rm_accuracy), [f"{n:,}" for n in rm_accuracy])
ax.minorticks_off()
ax.set_xlabel("training pairs")
ax.set_ylabel("held-out label accuracy")
ax.set_title("Reward-model accuracy against the best possible")
ax.legend()
plt.show()

# %%
gap = bayes - rm_accuracy[max(rm_accuracy)]
r_chosen, r_rejected = pair_rewards(rm, rm_eval)
right = (r_chosen > r_rejected).float()
form_differs = torch.tensor(
    [
        instructions.well_formed(p, a) != instructions.well_formed(p, b)
        for p, a, b in zip(rm_eval.chosen.prompts, rm_eval.chosen.texts, rm_eval.rejected.texts)
    ]
)
display(
    Markdown(
        f"The largest reward model agrees with {rm_accuracy[max(rm_accuracy)]:.1%} "
        f"of held-out labels, {gap:.2f} below the Bayes limit of {bayes:.1%}. "
        f"On the {int(form_differs.sum())} held-out pairs whose answers differ in *form* it is "
        f"right {right[form_differs].mean():.1%} of the time; on the {int((~form_differs).sum())} "
        f"that differ only in content, {right[~form_differs].mean():.1%}. Preferring `abcd` to "
        "`abdc` for `sort dbca` takes seeing that two letters are out of order, and preferring "
        "the right count takes counting; this reward model is no bigger than the policy, "
        "and has only these comparisons to learn from. Real reward models are imperfect too: "
        "InstructGPT's 6B reward model agreed with held-out labelers 69.6 ± 0.9% of the time "
        "(Ouyang et al. 2022, §4.1). Everything below optimises this imperfect judge."
    )
)

# %% [markdown]
# ## Best-of-n sampling
#
# *What is the simplest way to use a reward model, and what does it cost in divergence?*
#
# Sample $n$ responses, return the one the reward model scores highest. No training at all — but the
# answers now come from a different distribution $\pi_{\text{bo}n}$. For continuous rewards its
# divergence from the policy is exactly
#
# $$\mathrm{KL}(\pi_{\text{bo}n} \,\|\, \pi) = \log n - \frac{n-1}{n},$$
#
# (Stiennon et al. 2020; Gao et al. 2023), and for a finite set of outcomes it is an upper bound
# (Beirami et al. 2024). The check: the exact best-of-n distribution over 10,000 outcomes with distinct
# rewards, and over 5 outcomes, against the formula; then a simulation of the picks.

# %%
from aigc_book.rlhf.best_of_n import (
    best_of_n_distribution,
    best_of_n_expectation,
    best_of_n_kl,
    kl_divergence,
)

rng = np.random.default_rng(0)
for outcomes in (10_000, 5):
    probs = rng.dirichlet(np.ones(outcomes))
    rewards = rng.permutation(outcomes).astype(float)
    for n in (2, 8, 32):
        exact = kl_divergence(best_of_n_distribution(probs, rewards, n), probs)
        print(
            f"{outcomes:>6} outcomes, n={n:>2}: exact KL {exact:.4f}, formula {best_of_n_kl(n):.4f}"
        )
        assert exact <= best_of_n_kl(n) + 1e-9
        if outcomes > 1000:
            assert abs(exact - best_of_n_kl(n)) < 0.01
n, draws = (
    8,
    200_000,
)  # simulate: draw n, keep the best; compare frequencies with the exact distribution
samples = rng.choice(5, size=(draws, n), p=probs)
picks = samples[np.arange(draws), rewards[samples].argmax(1)]
freq = np.bincount(picks, minlength=5) / draws
assert np.abs(freq - best_of_n_distribution(probs, rewards, n)).max() < 0.005

# %% [markdown]
# Now on our policy. For each held-out prompt we draw `bon_samples` responses once, score them with
# the reward model and with the gold reward, and compute the expected best-of-n for every $n$ up to
# that number from all its subsets (an unbiased estimate, lower in variance than drawing anew). The
# horizontal axis is $d = \sqrt{\mathrm{KL}}$, as in Gao et al. (2023).

# %%
from aigc_book.rlhf.preferences import gold_rewards
from aigc_book.rlhf.reward_training import reward_scores
from aigc_book.rlhf.rollouts import sample_responses

N = settings.bon_samples
bon_pool = sample_responses(
    reference,
    tok,
    held_out,
    max_new_tokens=settings.max_new_tokens,
    num_return_sequences=N,
    generator=torch.Generator(device=device).manual_seed(3),
)
gold_pool = gold_rewards(bon_pool).view(-1, N).cpu().numpy()
ns = [n for n in (1, 2, 4, 8, 16, 32, 64, 128) if n <= N]
bon = {
    name: best_of_n_expectation(
        reward_scores(model, bon_pool).view(-1, N).cpu().numpy(), gold_pool, ns
    )
    for name, model in (("large", rm), ("small", small_rm))
}
bon["gold"] = best_of_n_expectation(
    gold_pool, gold_pool, ns
)  # picking by the gold reward itself: the ceiling
fig, ax = plt.subplots(figsize=(6.5, 3.8))
for name, style in (("gold", "k--"), ("large", "o-"), ("small", "s-")):
    label = {
        "gold": "picked by the gold reward",
        "large": f"picked by the RM on {max(reward_models):,} pairs",
        "small": f"picked by the RM on {min(reward_models):,} pairs",
    }[name]
    ax.plot(np.sqrt(bon[name]["kl"]), bon[name]["gold"], style, label=label)
ax.set_xlabel(r"$d = \sqrt{\mathrm{KL}}$ (nats$^{1/2}$), $n = 1 \ldots$" + str(N))
ax.set_ylabel("gold reward of the pick")
ax.set_title("Best-of-n: gold reward against divergence")
ax.legend(fontsize=8)
plt.show()
display(
    Markdown(
        f"At $n = {N}$ (KL {best_of_n_kl(N):.2f} nats) picking by the gold reward itself "
        f"would raise it from {bon['gold']['gold'][0]:.3f} to {bon['gold']['gold'][-1]:.3f}: "
        "that much better answers are already among the samples. The larger reward model "
        f"gets {bon['large']['gold'][-1]:.3f}, the smaller {bon['small']['gold'][-1]:.3f}: "
        "a reward model turns samples into gold only as well as it judges."
    )
)

# %% [markdown]
# ## PPO from scratch
#
# *How does reinforcement learning push a language model towards higher reward without losing it?*
#
# The source articles give the {term}`policy gradient` $g = \mathbb{E}[\nabla_\theta \log \pi_\theta(a|s)\,A(s,a)]$
# and name PPO, but a language-model PPO has more parts (Ziegler et al. 2019; Ouyang et al. 2022;
# Huang et al. 2024 list them all). One iteration of `aigc_book.rlhf.ppo.PPOTrainer`:
#
# 1. **Rollouts**: one response per prompt, sampled at temperature 1 with the KV cache.
# 2. **Reward with a {term}`KL penalty`**: each response token $t$ pays $-\beta\,(\log\pi_\theta(y_t) - \log\pi_\text{ref}(y_t))$
#    and the last token also gets the reward model's score, so a response's return is
#    $r_\phi(x, y) - \beta\,\widehat{\mathrm{KL}}$: InstructGPT's objective, which the source
#    article's "maximise the reward model's score" (001 §3.4) leaves out. Without the penalty nothing
#    keeps the policy near the model whose answers the reward model was trained on.
# 3. **{term}`Advantages <advantage>`** by {term}`GAE <generalised advantage estimation (GAE)>` (Schulman et al. 2016), $\hat A_t = \sum_l (\gamma\lambda)^l \delta_{t+l}$
#    with $\delta_t = r_t + \gamma V_{t+1} - V_t$ from a **{term}`value head <value function, value head>`** on the policy's trunk; then
#    whitened over the batch.
# 4. **Updates**: a few epochs of minibatch steps on the {term}`clipped surrogate <clipped surrogate objective>` (next section) plus the
#    value head's clipped loss. **PPO-ptx** (InstructGPT) adds the pretraining loss, `ptx_coef` times.
# 5. **KL coefficient** fixed, or steered to a target by the controller of Ziegler et al. (2019).
#
# The KL penalty uses the **k1** estimator $\log\pi_\theta - \log\pi_\text{ref}$ of each sampled
# token; **k3** $= (\rho - 1) - \log\rho$, $\rho = \pi_\text{ref}/\pi_\theta$, is also unbiased and
# never negative (Schulman 2020). The checks: GAE against its definition, and both estimators against
# an exact KL.

# %%
from aigc_book.rlhf.losses import gae, kl_estimates

rewards, values = (
    torch.tensor([[0.0, 0.0, 0.1, -0.2, 1.0, 0.0]]),
    torch.tensor([[0.0, 0.0, 0.5, 0.4, 0.6, 0.0]]),
)
mask = torch.tensor([[False, False, True, True, True, False]])
gamma, lam = 0.9, 0.8
adv, _ = gae(rewards, values, mask, gamma, lam)
v_next = [0.4, 0.6, 0.0]  # the value after the last response token is 0
deltas = [
    rewards[0, t].item() + gamma * v_next[i] - values[0, t].item() for i, t in enumerate((2, 3, 4))
]
by_definition = [sum((gamma * lam) ** k * deltas[i + k] for k in range(3 - i)) for i in range(3)]
assert torch.allclose(adv[0, 2:5], torch.tensor(by_definition), atol=1e-6)

p_pi, p_ref = torch.tensor([0.5, 0.3, 0.2]), torch.tensor([0.3, 0.3, 0.4])
exact_kl = (p_pi * (p_pi / p_ref).log()).sum().item()
draw = torch.multinomial(
    p_pi, 400_000, replacement=True, generator=torch.Generator().manual_seed(0)
)
k1, k3 = kl_estimates(p_pi.log()[draw], p_ref.log()[draw])
print(
    f"exact KL {exact_kl:.4f}; k1 mean {k1.mean():.4f} (negative on {(k1 < 0).float().mean():.0%} "
    f"of tokens); k3 mean {k3.mean():.4f} (min {k3.min():.4f})"
)
assert abs(k1.mean() - exact_kl) < 0.005 and abs(k3.mean() - exact_kl) < 0.005 and k3.min() >= 0

# %% [markdown]
# Now PPO against the larger reward model, with InstructGPT's per-token KL penalty. Every iteration
# the trainer calls back with its rollouts, and we grade them with the gold reward it never sees.

# %%
from aigc_book.rlhf.pipeline import evaluate, prompt_sampler, run_steps
from aigc_book.rlhf.ppo import PPOTrainer


def run_ppo(reward_model, steps, kl_coef, seed=0):
    (
        "PPO from a fresh copy of the SFT model; "
        "returns (policy, per-step trace of score, gold, KL, length)."
    )
    trace = []

    def grade(step, responses, stats):
        trace.append(
            {
                "proxy": stats["score"],
                "gold": gold_rewards(responses).mean().item(),
                "kl": stats["kl"],
                "length": sum(map(len, responses.texts)) / len(responses),
            }
        )

    policy = copy.deepcopy(reference)
    config = PPOConfig(**{**asdict(rl.ppo), "kl_coef": kl_coef})
    trainer = PPOTrainer(
        policy,
        reference,
        tok,
        reward_model.score,
        prompt_sampler(family),
        config,
        seed=seed,
        callback=grade,
    )
    run_steps(trainer, steps)
    return policy, trace


def smooth(xs, k=10):
    return np.convolve(xs, np.ones(k) / k, mode="valid")


t0 = time.perf_counter()
ppo_policy, ppo_trace = run_ppo(rm, settings.ppo_steps, rl.ppo.kl_coef)
ppo_seconds = time.perf_counter() - t0
measure = dict(max_new_tokens=settings.max_new_tokens, seed=5)
sft_eval = evaluate(reference, reference, tok, held_out, reward_model=rm, **measure)
ppo_eval = evaluate(ppo_policy, reference, tok, held_out, reward_model=rm, **measure)
print(f"{settings.ppo_steps} PPO iterations of {rl.ppo.batch_size} rollouts in {ppo_seconds:.0f} s")
for name, e in (("SFT", sft_eval), ("PPO", ppo_eval)):
    print(
        f"{name}: reward-model score {e['proxy']:+.3f}, gold {e['gold']:.3f}, "
        f"accuracy {e['accuracy']:.3f}, KL {e['kl']:.2f} nats, length {e['length']:.2f} characters"
    )

fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
for ax, key, label in zip(
    axes, ("proxy", "gold", "kl"), ("reward-model score", "gold reward", "KL to SFT (nats)")
):
    ax.plot(smooth([t[key] for t in ppo_trace]))
    ax.set_xlabel("PPO iteration")
    ax.set_title(label)
fig.suptitle("PPO against the learned reward (rollouts, moving average of 10)")
plt.tight_layout()
plt.show()

# %%
shown = held_out[:8]
before = sample_responses(
    reference,
    tok,
    shown,
    max_new_tokens=settings.max_new_tokens,
    generator=torch.Generator(device=device).manual_seed(7),
)
after = sample_responses(
    ppo_policy,
    tok,
    shown,
    max_new_tokens=settings.max_new_tokens,
    generator=torch.Generator(device=device).manual_seed(7),
)
rows = ["| prompt | answer | SFT sample | PPO sample |", "|---|---|---|---|"]
rows += [
    f"| `{i.prompt}` | `{i.answer}` | `{a}` | `{b}` |"
    for i, a, b in zip(shown, before.texts, after.texts)
]
display(Markdown("\n".join(rows)))
display(
    Markdown(
        f"The reward model's score rose from {sft_eval['proxy']:+.3f} to {ppo_eval['proxy']:+.3f}; "
        f"the gold reward went from {sft_eval['gold']:.3f} to {ppo_eval['gold']:.3f}, "
        f"and answers from {sft_eval['length']:.2f} to {ppo_eval['length']:.2f} characters long. "
        "PPO did its job — it raised the reward it was given — "
        + (
            "and the gold reward rose with it."
            if ppo_eval["gold"] > sft_eval["gold"]
            else (
                "but what it was given is a judge that is often wrong about content and likes "
                "long answers, so the gold reward did not follow."
            )
        )
    )
)

# %% [markdown]
# ## The clipped objective
#
# *Why does PPO clip the {term}`probability ratio`, and what does the clip do to the gradient?*
#
# PPO collects a batch of responses with the current policy, call it $\pi_{\theta_\text{old}}$, and
# then takes several gradient steps on that same batch. After the first step, the policy being
# trained, $\pi_\theta$, is no longer the one that produced the samples. The **probability ratio**
#
# $$r_t(\theta) = \frac{\pi_\theta(a_t \mid s_t)}{\pi_{\theta_\text{old}}(a_t \mid s_t)}$$
#
# says how far the probability of each sampled token has moved since. In a language model the state
# $s_t$ is the prompt and the response so far, and the action $a_t$ is the next token. The surrogate
# $r_t \hat A_t$ weights the token's advantage $\hat A_t$ by that ratio. Maximised without limit, it
# would push $r_t$ far from 1, where the batch says little about the new policy. PPO's **clipped
# surrogate objective** (Schulman et al. 2017, arXiv:1707.06347, eq. 7) removes the incentive to go
# there:
#
# $$L^\text{CLIP}(\theta) = \mathbb{E}_t\Big[\min\big(r_t(\theta)\,\hat A_t,\;
#   \operatorname{clip}(r_t(\theta),\, 1-\epsilon,\, 1+\epsilon)\,\hat A_t\big)\Big].$$
#
# Three things to read in it.
#
# * **It is an objective to maximise.** The source article 000 (§4.3) calls it the loss function with
#   which PPO updates the policy, and never says in which direction. Minimising $L^\text{CLIP}$ as
#   written would make good tokens *less* likely. Optimisers minimise, so the package's
#   `ppo_policy_loss` returns $-L^\text{CLIP}$, a masked mean over the response tokens. The cell below
#   negates it back.
# * **The min makes it pessimistic.** Each token contributes the smaller of the unclipped and the
#   clipped term, so $L^\text{CLIP} \le r_t \hat A_t$: a lower bound on the unclipped surrogate. The
#   clip binds only on the side where moving further would *raise* the objective: for $\hat A_t > 0$
#   once $r_t > 1+\epsilon$, and for $\hat A_t < 0$ once $r_t < 1-\epsilon$. There the term is constant
#   and its gradient is zero. A move the wrong way, such as a good token made less likely, is never
#   clipped, so the gradient can still undo it.
# * **$\epsilon$ sets how far it pays to move a token on one batch.** In the PPO paper's comparison on MuJoCo
#   tasks, $\epsilon = 0.2$ did best, with an average normalised score of 0.82 against 0.76 for
#   $\epsilon = 0.1$ and 0.70 for $\epsilon = 0.3$ (Schulman et al. 2017, Table 1).
#
# The next cell evaluates the package's loss for a single token over a grid of ratios between 0 and
# 2, once with $\hat A = +1$ and once with $\hat A = -1$. It takes the gradient with respect to $r$ by
# autograd, shades the ratios where that gradient is zero, and checks that they are exactly the ones
# the rule above predicts.

# %%
from aigc_book.rlhf.losses import ppo_policy_loss

eps_clip = 0.2  # PPO's ε (Schulman et al. 2017)
r_grid = (
    torch.arange(200, dtype=torch.float64) + 0.5
) / 100  # ratios 0.005, 0.015, ..., 1.995: none is 1 ± ε


def clipped_objective_and_gradient(r: float, advantage: float) -> tuple[float, float]:
    (
        "L^CLIP of one token whose probability ratio is r, and dL^CLIP/dr by autograd, "
        "from the package's loss."
    )
    ratio = torch.tensor(r, dtype=torch.float64, requires_grad=True)
    logprobs = torch.log(ratio).reshape(1, 1)  # (B, T) = (1, 1): log π_θ(a|s) of the token
    old_logprobs = torch.zeros(
        1, 1, dtype=torch.float64
    )  # log π_old = 0, so exp(logprobs - old_logprobs) = r
    adv = torch.full((1, 1), advantage, dtype=torch.float64)
    mask = torch.ones(1, 1, dtype=torch.bool)
    objective = -ppo_policy_loss(
        logprobs, old_logprobs, adv, mask, clip_eps=eps_clip
    )  # the loss is -L^CLIP
    (grad,) = torch.autograd.grad(objective, ratio)
    return objective.item(), grad.item()


fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
zero_gradient_ratios = {}
for ax, clip_adv in zip(axes, (1.0, -1.0)):
    clip_pairs = [clipped_objective_and_gradient(r, clip_adv) for r in r_grid.tolist()]
    clip_values = torch.tensor(
        [v for v, _ in clip_pairs], dtype=torch.float64
    )  # (200,) L^CLIP per token
    clip_grads = torch.tensor([g for _, g in clip_pairs], dtype=torch.float64)  # (200,) dL^CLIP/dr
    clip_unclipped = r_grid * clip_adv

    clip_zero_grad = clip_grads == 0  # exactly zero: the clipped branch does not depend on r
    clip_binds = (r_grid > 1 + eps_clip) if clip_adv > 0 else (r_grid < 1 - eps_clip)
    assert torch.equal(clip_zero_grad, clip_binds), (
        "the gradient must vanish exactly where the clip binds"
    )
    clip_free = ~clip_binds
    # Everywhere else d(rA)/dr = A:
    torch.testing.assert_close(
        clip_grads[clip_free], torch.full_like(clip_grads[clip_free], clip_adv)
    )
    clip_inside = (r_grid >= 1 - eps_clip) & (r_grid <= 1 + eps_clip)
    torch.testing.assert_close(
        clip_values[clip_inside], clip_unclipped[clip_inside]
    )  # inside [1-ε, 1+ε]: plain r·A
    clip_floor = (
        1 + eps_clip if clip_adv > 0 else 1 - eps_clip
    ) * clip_adv  # the flat value where it binds
    torch.testing.assert_close(
        clip_values[clip_binds], torch.full_like(clip_values[clip_binds], clip_floor)
    )
    assert bool((clip_values <= clip_unclipped + 1e-12).all()), (
        "L^CLIP must be a lower bound on r·A (the min)"
    )
    zero_gradient_ratios[clip_adv] = r_grid[clip_zero_grad]

    ax.plot(r_grid, clip_unclipped, "--", color="grey", label=r"unclipped $r\hat A$")
    ax.plot(r_grid, clip_values, label=r"$L^\mathrm{CLIP}$ (from ppo_policy_loss)")
    ax.fill_between(
        r_grid,
        0,
        1,
        where=clip_zero_grad.numpy(),
        color="grey",
        alpha=0.25,
        lw=0,
        transform=ax.get_xaxis_transform(),
        label="autograd: gradient = 0",
    )
    for clip_edge in (1 - eps_clip, 1 + eps_clip):
        ax.axvline(clip_edge, color="black", lw=0.8, ls=":")
    clip_sign = "+1" if clip_adv > 0 else "−1"
    ax.set_title(
        rf"$\hat A = {clip_sign}$: a {'better' if clip_adv > 0 else 'worse'}-than-expected token"
    )
    ax.set_xlabel(r"probability ratio $r = \pi_\theta(a|s)\,/\,\pi_{\theta_\mathrm{old}}(a|s)$")
    ax.legend(loc="upper left" if clip_adv > 0 else "lower left", fontsize=8)
axes[0].set_ylabel(r"objective per token (units of $\hat A$)")
fig.suptitle(
    rf"PPO's clipped objective for one token, $\epsilon = {eps_clip}$; "
    r"dotted lines at $1 \pm \epsilon$"
)
fig.tight_layout()
plt.show()

clip_pos, clip_neg = zero_gradient_ratios[1.0], zero_gradient_ratios[-1.0]
display(
    Markdown(
        f"Of the {len(r_grid)} ratios, the gradient is exactly zero at {len(clip_pos)} "
        f"for $\\hat A = +1$ (from $r = {clip_pos.min():.3f}$ up, all above "
        f"$1 + \\epsilon = {1 + eps_clip:.1f}$) and at {len(clip_neg)} for $\\hat A = -1$ "
        f"(up to $r = {clip_neg.max():.3f}$, all below $1 - \\epsilon = {1 - eps_clip:.1f}$). At "
        f"every other ratio it equals $\\hat A$. Inside $[{1 - eps_clip:.1f}, {1 + eps_clip:.1f}]$ "
        "the objective is exactly $r\\hat A$."
    )
)

# %% [markdown]
# The figure shows the objective from the token's side. With $\hat A = +1$ (left), raising the
# token's probability pays until the ratio reaches $1 + \epsilon$. Beyond that the objective is flat
# (shaded), so this batch gives no reason to push further. Below $1 - \epsilon$ nothing is clipped:
# had an earlier step made this good token much less likely, the full slope would pull it back.
# With $\hat A = -1$ (right) it is the mirror image. Lowering a bad token's probability pays only down
# to $1 - \epsilon$, while raising it is penalised however far it goes. The shading was drawn from
# where autograd returned a zero gradient, and the assertions checked that it falls exactly where
# the formula says.
#
# The clip limits each *update* relative to $\pi_{\theta_\text{old}}$, the policy that collected the
# batch. A new batch brings a new $\pi_{\theta_\text{old}}$, so nothing here keeps the policy close to
# the SFT model over many batches. That is the KL penalty's job (section "The KL leash").

# %% [markdown]
# ### The clipped objective and the plain policy gradient
#
# Both source articles give PPO's gradient as
# $g = \mathbb{E}_t\big[\nabla_\theta \log \pi_\theta(a_t \mid s_t)\,\hat A_t\big]$ (000 §4.3, 001 §3.4).
# That is the plain policy gradient, the REINFORCE estimator with an advantage in place of the
# return (Williams 1992). Every policy-gradient method uses it; it is not specific to PPO. The two are
# related, though. At $\theta = \theta_\text{old}$ every ratio equals 1, inside the clip range, and
#
# $$\nabla_\theta\, r_t(\theta)\Big|_{\theta_\text{old}}
#   = \frac{\nabla_\theta \pi_\theta(a_t \mid s_t)}{\pi_{\theta_\text{old}}(a_t \mid s_t)}\Big|_{\theta_\text{old}}
#   = \nabla_\theta \log \pi_\theta(a_t \mid s_t)\Big|_{\theta_\text{old}},$$
#
# so the first gradient of $L^\text{CLIP}$ on a fresh batch *is* $g$. PPO differs on the later steps
# on the same batch. There the gradient of a token whose clip does not bind is
# $r_t\,\nabla_\theta \log \pi_\theta\,\hat A_t$, reweighted by the ratio for a policy that has moved
# ({term}`importance sampling`), and the gradient of a token whose clip binds is zero.
#
# The cell checks both statements on a tiny softmax policy: 3 states, 5 actions, a batch of actions
# sampled from $\pi_{\theta_\text{old}}$ with random advantages. It first compares the two gradients at
# $\theta_\text{old}$, then takes a few ascent steps on $L^\text{CLIP}$, as PPO's inner loop does, and
# compares again.

# %%
pg_gen = torch.Generator().manual_seed(0)
n_states, n_actions, n_tokens = 3, 5, 64
theta_old = torch.randn(
    n_states, n_actions, generator=pg_gen, dtype=torch.float64
)  # logits: π(·|s) = softmax(θ[s])
pg_states = torch.randint(n_states, (n_tokens,), generator=pg_gen)  # (N,)
pg_actions = torch.multinomial(
    torch.softmax(theta_old[pg_states], -1), 1, generator=pg_gen
).squeeze(-1)  # a ~ π_old
pg_advantages = torch.randn(
    n_tokens, generator=pg_gen, dtype=torch.float64
)  # (N,) stand-ins for GAE's Â
pg_mask = torch.ones(1, n_tokens, dtype=torch.bool)  # one "response" of N tokens, all counted


def sampled_logprobs(theta: torch.Tensor) -> torch.Tensor:
    """log π_θ(a_t | s_t) of the sampled actions, shape (N,)."""
    return torch.log_softmax(theta[pg_states], -1).gather(-1, pg_actions[:, None]).squeeze(-1)


pg_old_logprobs = sampled_logprobs(theta_old).detach()


def clipped_objective_gradient(theta: torch.Tensor) -> torch.Tensor:
    """∇_θ L^CLIP on the batch, through the package's loss."""
    theta = theta.detach().requires_grad_(True)
    loss = ppo_policy_loss(
        sampled_logprobs(theta)[None],
        pg_old_logprobs[None],
        pg_advantages[None],
        pg_mask,
        clip_eps=eps_clip,
    )
    (grad,) = torch.autograd.grad(-loss, theta)
    return grad


def weighted_score_gradient(theta: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    (
        "∇_θ mean_t[w_t · log π_θ(a_t|s_t)] with fixed weights w_t: "
        "with w = Â it is the policy gradient g."
    )
    theta = theta.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad((weights.detach() * sampled_logprobs(theta)).mean(), theta)
    return grad


# 1. At θ_old every ratio is 1: the clipped objective's gradient is the policy gradient.
torch.testing.assert_close(
    clipped_objective_gradient(theta_old), weighted_score_gradient(theta_old, pg_advantages)
)

# 2. A few ascent steps on L^CLIP on the same batch, as in PPO's inner loop; then compare again.
pg_steps, pg_lr = 8, 2.0
pg_theta = theta_old.clone()
for _ in range(pg_steps):
    pg_theta = pg_theta + pg_lr * clipped_objective_gradient(pg_theta)
pg_ratio = torch.exp(sampled_logprobs(pg_theta) - pg_old_logprobs)  # (N,)
pg_binds = ((pg_advantages > 0) & (pg_ratio > 1 + eps_clip)) | (
    (pg_advantages < 0) & (pg_ratio < 1 - eps_clip)
)
pg_g_clip = clipped_objective_gradient(pg_theta)
pg_g_plain = weighted_score_gradient(pg_theta, pg_advantages)
pg_g_by_hand = weighted_score_gradient(
    pg_theta, pg_ratio * pg_advantages * (~pg_binds)
)  # r·Â if free, 0 if clipped
torch.testing.assert_close(pg_g_clip, pg_g_by_hand)
pg_relative_gap = float((pg_g_clip - pg_g_plain).norm() / pg_g_plain.norm())
assert pg_binds.any() and pg_relative_gap > 0.1, (
    "after some steps the clip must bind and the gradients must differ"
)
print("at θ_old: ∇L^CLIP equals the policy gradient E[∇log π · Â] (assert_close, float64)")
print(
    f"after {pg_steps} ascent steps: ratios from {pg_ratio.min():.2f} to {pg_ratio.max():.2f}; "
    f"clip binds on {int(pg_binds.sum())} of {n_tokens} tokens; |∇L^CLIP − g| / |g| "
    f"= {pg_relative_gap:.2f}"
)

# %% [markdown]
# The first check passed: at $\theta_\text{old}$ the gradient of the clipped objective and the plain
# policy gradient agree within `assert_close`'s float64 tolerance. After a few steps on the same
# batch they no longer agree (the printed gap). The gradient of $L^\text{CLIP}$ is then a mean over
# all the tokens in which a token whose clip does not bind contributes
# $r_t \hat A_t \nabla_\theta \log\pi_\theta(a_t \mid s_t)$ and a token whose clip binds contributes
# nothing, as the second check confirmed. So the source articles'
# formula describes only PPO's first step on each batch. What makes PPO *proximal* happens on the
# steps after it.

# %% [markdown]
# ## The KL leash
#
# *What does the KL coefficient β buy, and what does it cost?*
#
# β prices divergence from the SFT model. The next cell runs PPO with several values for
# `leash_steps` iterations (the main run above supplies one of them) and draws each run's reward-model
# score, gold reward and KL. The slider switches between the precomputed runs, so it works on the
# static site too.

# %%
import base64
import io

betas = sorted({0.0, 0.03, 0.1, rl.ppo.kl_coef})
leash, leash_policies = {}, {}
for beta in betas:
    if beta == rl.ppo.kl_coef:
        leash[beta] = ppo_trace[: settings.leash_steps]
    else:
        leash_policies[beta], leash[beta] = run_ppo(rm, settings.leash_steps, beta)


def leash_figure(beta):
    fig, axes = plt.subplots(1, 3, figsize=(11, 2.8))
    for ax, key, label in zip(
        axes, ("proxy", "gold", "kl"), ("reward-model score", "gold reward", "KL (nats)")
    ):
        for b in betas:
            ax.plot(
                smooth([t[key] for t in leash[b]]),
                color="C0" if b == beta else "0.85",
                lw=2 if b == beta else 1,
            )
        ax.set_title(label)
        ax.set_xlabel("PPO iteration")
    fig.suptitle(f"β = {beta:g} (grey: the other values)")
    plt.tight_layout()
    return fig


def png(fig):
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


images = [png(leash_figure(b)) for b in betas]
options = ",".join(f'"{i}"' for i in images)
labels = ",".join(f'"{b:g}"' for b in betas)
display(
    HTML(f"""<div><label>β = <span id="leash-beta">{betas[0]:g}</span>
<input type="range" min="0" max="{len(betas) - 1}" value="0" style="width:200px"
 oninput="document.getElementById('leash-img').src='data:image/png;base64,'+[{options}][this.value];
          document.getElementById('leash-beta').textContent=[{labels}][this.value];"></label><br>
<img id="leash-img" src="data:image/png;base64,{images[0]}" style="max-width:100%"></div>""")
)
last = {
    b: {
        k: float(np.mean([t[k] for t in leash[b][-10:]])) for k in ("proxy", "gold", "kl", "length")
    }
    for b in betas
}
leash_start = {
    b: {k: float(np.mean([t[k] for t in leash[b][:5]])) for k in ("proxy", "gold", "kl", "length")}
    for b in betas
}
rows = [
    "| β | reward-model score | gold reward | KL (nats) | length |",
    "|---:|---:|---:|---:|---:|",
]
rows += [
    f"| {b:g} | {v['proxy']:+.3f} | {v['gold']:.3f} | {v['kl']:.2f} | {v['length']:.2f} |"
    for b, v in last.items()
]
display(Markdown("Means over the last 10 iterations of each run:\n\n" + "\n".join(rows)))

# %% [markdown]
# InstructGPT had a second leash. RL against a reward model made the policy worse at what it had
# learned in pretraining (the paper measured it on public NLP datasets and called it an "alignment
# tax"); **PPO-ptx** adds the pretraining loss to PPO's, $\gamma$ times (Ouyang et al. 2022, eq. 2).
# Here the pretraining data is chapter 3's bracket language: the next cell measures the policies'
# loss on held-out bracket sequences, the floor being the language's entropy, and reruns the
# unleashed (β = 0) PPO with $\gamma = 1$.

# %%
from aigc_book.text.languages import BracketLanguage
from aigc_book.training.evaluation import lm_loss
from aigc_book.training.objectives import sequence_lm_batch

bracket = BracketLanguage()
bracket_val = bracket.sample(500, sft.pretrain_seqs.size(1) - 1, seed=99).to(device)
floor = bracket.entropy_floor(sft.pretrain_seqs.size(1) - 1)
ptx_config = PPOConfig(**{**asdict(rl.ppo), "kl_coef": 0.0, "ptx_coef": 1.0})
ptx_trace = []
ptx_policy = copy.deepcopy(reference)
trainer = PPOTrainer(
    ptx_policy,
    reference,
    tok,
    rm.score,
    prompt_sampler(family),
    ptx_config,
    seed=0,
    ptx_batch_fn=lambda g: sequence_lm_batch(sft.pretrain_seqs, rl.ptx_batch_size, g),
    callback=lambda step, responses, stats: ptx_trace.append(
        {"gold": gold_rewards(responses).mean().item(), "kl": stats["kl"]}
    ),
)
run_steps(trainer, settings.leash_steps)
tax = {
    "SFT": lm_loss(reference, bracket_val),
    "PPO, β = 0": lm_loss(leash_policies[0.0], bracket_val),
    "PPO-ptx, β = 0, γ = 1": lm_loss(ptx_policy, bracket_val),
}
gold_end = {
    "SFT": leash_start[0.0]["gold"],
    "PPO, β = 0": last[0.0]["gold"],
    "PPO-ptx, β = 0, γ = 1": float(np.mean([t["gold"] for t in ptx_trace[-10:]])),
}
rows = [
    "| policy | bracket-language loss (nats/token) | gold reward of the last rollouts |",
    "|---|---:|---:|",
]
rows += [f"| {name} | {tax[name]:.3f} | {gold_end[name]:.3f} |" for name in tax]
display(Markdown("\n".join(rows)))
display(
    Markdown(
        f"The language's entropy floor is {floor:.3f} nats per token, and the SFT model is already "
        f"far above it, at {tax['SFT']:.3f}: supervised fine-tuning on chat data had paid most of "
        f"the tax before RL began. Unleashed PPO moved the pretraining loss from {tax['SFT']:.3f} "
        f"to {tax['PPO, β = 0']:.3f} nats per token; with the pretraining gradients mixed in it "
        f"ended at {tax['PPO-ptx, β = 0, γ = 1']:.3f}. "
        + (
            "PPO-ptx paid less of the tax. "
            if tax["PPO-ptx, β = 0, γ = 1"] < tax["PPO, β = 0"]
            else ""
        )
        + "It does not stop the reward model being gamed — that is the KL penalty's job, "
        "or a better reward model's."
    )
)

# %% [markdown]
# ## Over-optimisation
#
# *Why does more reward-model score eventually mean worse answers?*
#
# A reward model is a proxy, right only where it was trained. Gao, Schulman & Hilton (2023) measured
# how a fixed gold reward model's score moves as a policy optimises a smaller proxy, and found forms
# that fit, with $d = \sqrt{\mathrm{KL}(\pi\|\pi_\text{init})}$ and $R$ the gold gain:
#
# $$R_{\text{bo}n}(d) = d\,(\alpha_{\text{bo}n} - \beta_{\text{bo}n}\, d), \qquad R_\text{RL}(d) = d\,(\alpha_\text{RL} - \beta_\text{RL} \log d).$$
#
# Both rise and then fall: the proxy keeps improving while the gold peaks. The next cell fits them to
# our best-of-n curve (smaller reward model) and to PPO's rollouts with no KL penalty (β = 0), and
# draws data and fits.

# %%
from aigc_book.rlhf.overoptimization import (
    fit_best_of_n,
    fit_rl,
    peak_of_best_of_n,
    peak_of_rl,
    predict_best_of_n,
    predict_rl,
)

d_bon = np.sqrt(bon["small"]["kl"])
gain_bon = bon["small"]["gold"] - bon["small"]["gold"][0]
a_bon, b_bon = fit_best_of_n(d_bon, gain_bon)
free_trace = leash[0.0]
d_rl = np.sqrt(np.maximum(smooth([t["kl"] for t in free_trace]), 1e-6))
gain_rl = smooth([t["gold"] for t in free_trace]) - np.mean([t["gold"] for t in free_trace[:5]])
a_rl, b_rl = fit_rl(d_rl, gain_rl)
fig, axes = plt.subplots(1, 2, figsize=(11, 3.5))
grid = np.linspace(0, d_bon.max() * 1.05, 100)
axes[0].plot(d_bon, gain_bon, "o", label="best-of-n, small RM")
axes[0].plot(
    grid,
    predict_best_of_n(grid, a_bon, b_bon),
    "-",
    label=rf"fit: $\alpha$={a_bon:.3f}, $\beta$={b_bon:.3f}",
)
grid = np.linspace(1e-3, d_rl.max() * 1.05, 100)
axes[1].plot(d_rl, gain_rl, ".", alpha=0.5, label="PPO, β = 0 (moving average)")
axes[1].plot(
    grid, predict_rl(grid, a_rl, b_rl), "-", label=rf"fit: $\alpha$={a_rl:.3f}, $\beta$={b_rl:.3f}"
)
for ax in axes:
    ax.axhline(0, color="gray", lw=0.5)
    ax.set_xlabel(r"$d = \sqrt{\mathrm{KL}}$")
    ax.set_ylabel("gold reward gain")
    ax.legend(fontsize=8)
axes[0].set_title("Best-of-n")
axes[1].set_title("PPO")
plt.tight_layout()
plt.show()
peak_d = peak_of_rl(a_rl, b_rl)
peak_gain = predict_rl(peak_d, a_rl, b_rl) if math.isfinite(peak_d) else float("nan")
fits = {
    "best-of-n": (a_bon, b_bon, peak_of_best_of_n(a_bon, b_bon), d_bon.max()),
    "PPO, β = 0": (a_rl, b_rl, peak_of_rl(a_rl, b_rl), d_rl.max()),
}
for name, (a, b, peak, reach) in fits.items():
    where = "beyond the data" if peak > reach else f"at d = {peak:.2f}"
    print(
        f"{name}: alpha {a:+.4f}, beta {b:+.4f}; fitted peak {where} (data reach d = {reach:.2f})"
    )
display(
    Markdown(
        "With no KL penalty, PPO's reward-model score climbed from "
        f"{leash_start[0.0]['proxy']:+.3f} to {last[0.0]['proxy']:+.3f} while the gold reward of "
        f"its rollouts went from {leash_start[0.0]['gold']:.3f} to {last[0.0]['gold']:.3f} (means "
        "of the first 5 and the last 10 iterations). Gao et al. saw gold rise before it fell. "
        + (
            f"Ours rises to a fitted peak of {peak_gain:+.3f} at d = {peak_d:.2f}, then falls."
            if peak_d >= d_rl.min()
            else (
                f"Here the fitted curve peaks at d = {peak_d:.2f} (a gain of {peak_gain:+.3f}), "
                f"before the first smoothed point at d = {d_rl.min():.2f}: "
                "without a leash the policy passes the peak within its first iterations. "
                f"With β = {rl.ppo.kl_coef:g} (section \"PPO from scratch\") the gold reward "
                f"gained {ppo_eval['gold'] - sft_eval['gold']:+.3f} instead."
            )
        )
    )
)

# %% [markdown]
# What did the unleashed policy learn to exploit? The labelers liked length, so the reward model
# learned to like it; and it judges form better than content. Look at length, form and whether the
# answers still end:

# %%
for b in betas:  # first 5 iterations -> last 10
    print(
        f"β = {b:<5g} answer length {leash_start[b]['length']:.2f} -> {last[b]['length']:.2f} "
        f"characters; gold {leash_start[b]['gold']:.3f} -> {last[b]['gold']:.3f}"
    )
free = sample_responses(
    leash_policies[0.0],
    tok,
    held_out,
    max_new_tokens=settings.max_new_tokens,
    generator=torch.Generator(device=device).manual_seed(7),
)
sft_samples = sample_responses(
    reference,
    tok,
    held_out,
    max_new_tokens=settings.max_new_tokens,
    generator=torch.Generator(device=device).manual_seed(7),
)
ill = [not instructions.well_formed(p, t) for p, t in zip(free.prompts, free.texts)]
ill_sft = [
    not instructions.well_formed(p, t) for p, t in zip(sft_samples.prompts, sft_samples.texts)
]
unfinished = 1 - np.mean(free.finished(tok.end_id))
print(
    f"β = 0 policy: {np.mean(ill):.0%} of answers ill-formed (SFT: "
    f"{np.mean(ill_sft):.0%}); {unfinished:.0%} never close with <|end|> (SFT: "
    f"{1 - np.mean(sft_samples.finished(tok.end_id)):.0%})"
)
rows = ["| prompt | answer | β = 0 PPO sample | gold | reward model |", "|---|---|---|---:|---:|"]
scores = reward_scores(rm, free)
for i in range(6):
    rows.append(
        f"| `{held_out[i].prompt}` | `{held_out[i].answer}` | `{free.texts[i]}` | "
        f"{gold_reward(held_out[i], free.texts[i]):.2f} | {scores[i]:+.2f} |"
    )
display(Markdown("\n".join(rows)))

# %% [markdown]
# ## DPO: preferences without a reward model
#
# *Can the policy learn from the comparisons directly, with no reward model and no sampling?*
#
# The KL-regularised objective PPO optimises has a closed-form optimum,
# $\pi^*(y|x) \propto \pi_\text{ref}(y|x)\,e^{r(x,y)/\beta}$. Rafailov et al. (2023) solve it for the reward,
# $r = \beta \log(\pi^*/\pi_\text{ref}) + \text{const}$, and put that into the Bradley–Terry loss:
#
# $$\mathcal{L}_\text{DPO} = -\,\mathbb{E}\Big[\log\sigma\Big(\beta\log\frac{\pi_\theta(y_c|x)}{\pi_\text{ref}(y_c|x)} - \beta\log\frac{\pi_\theta(y_r|x)}{\pi_\text{ref}(y_r|x)}\Big)\Big].$$
#
# The {term}`reference model` is still there, inside the loss. $\log\pi(y|x)$ is the log-probability of the
# whole response: the **sum** over its tokens. A popular from-scratch implementation takes the per-token
# *mean* instead, and its users report collapse; with a mean, a pair's effective β is divided by its
# length, and the quantity is no longer the one the derivation needs. The next cell checks the loss by
# hand and trains DPO both ways on the same pairs the reward model saw.

# %%
from aigc_book.rlhf.dpo import train_dpo
from aigc_book.rlhf.losses import dpo_loss

pc, pr, rc, rr = (
    torch.tensor([-3.0]),
    torch.tensor([-5.0]),
    torch.tensor([-4.0]),
    torch.tensor([-4.5]),
)
assert math.isclose(
    dpo_loss(pc, pr, rc, rr, beta=0.5).item(),
    -math.log(1 / (1 + math.exp(-0.5 * ((-3 + 4) - (-5 + 4.5))))),
    rel_tol=1e-6,
)
dpo_eval = {}
for average in (False, True):
    policy = copy.deepcopy(reference)
    t0 = time.perf_counter()
    train_dpo(
        policy,
        reference,
        rm_train,
        replace(rl.dpo, steps=settings.dpo_steps, average=average),
        seed=0,
    )
    name = "DPO, mean log-probs" if average else "DPO"
    dpo_eval[name] = evaluate(policy, reference, tok, held_out, reward_model=rm, **measure)
    e = dpo_eval[name]
    print(
        f"{name:<20} gold {e['gold']:.3f} (SFT {sft_eval['gold']:.3f}), "
        f"accuracy {e['accuracy']:.3f}, KL {e['kl']:.2f} nats, length {e['length']:.2f}, "
        f"{time.perf_counter() - t0:.0f} s"
    )
summed, averaged = dpo_eval["DPO"], dpo_eval["DPO, mean log-probs"]
display(
    Markdown(
        "Same pairs, same β, same steps: with summed log-probabilities DPO ends at "
        f"gold {summed['gold']:.3f} and KL {summed['kl']:.2f} nats; with averaged ones at "
        f"gold {averaged['gold']:.3f} and KL {averaged['kl']:.2f} nats. "
        + (
            "Averaging moved the policy further for less: dividing by the length weakens "
            "the leash β provides. "
            if averaged["kl"] > summed["kl"] and averaged["gold"] < summed["gold"]
            else ""
        )
        + "Both learned from the same labels as the reward model, length bias included: "
        "DPO optimises the labelers' preferences, not the gold reward, and nothing stops "
        "it exploiting the same bias."
    )
)

# %% [markdown]
# ## GRPO: a verifiable reward and no value head
#
# *What if the reward is a program that checks the answer?*
#
# Recent reasoning models are trained against rewards that verify: a unit test passes, a maths answer
# matches. GRPO (Shao et al. 2024, DeepSeekMath) drops PPO's value head: it samples a *group* of $G$
# responses per prompt and uses each one's reward standardised within its group as the advantage of all
# its tokens, $\hat A_i = (r_i - \mathrm{mean}(r))/\mathrm{std}(r)$; the KL to the reference becomes a
# term of the loss (k3). Here the reward is chapter 4's checker: 1 if the answer is right, else 0. It
# cannot be gamed by length, and it is not the gold reward either (it gives no partial credit).

# %%
from aigc_book.rlhf.grpo import GRPOTrainer
from aigc_book.rlhf.losses import grpo_advantages
from aigc_book.rlhf.pipeline import checker_reward

adv = grpo_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0]), group_size=4)
by_hand = 0.5 / math.sqrt(4 * 0.25 / 3)  # |r - mean| / unbiased std, for the first group
assert torch.allclose(adv[:4], torch.tensor([1.0, -1.0, -1.0, 1.0]) * by_hand, atol=1e-3)
assert adv[4:].abs().max() == 0  # a group whose answers all earn the same teaches nothing
grpo_trace = []
grpo_policy = copy.deepcopy(reference)
grpo = GRPOTrainer(
    grpo_policy,
    reference,
    tok,
    checker_reward,
    prompt_sampler(family),
    rl.grpo,
    seed=0,
    callback=lambda step, responses, stats: grpo_trace.append(
        {"gold": gold_rewards(responses).mean().item(), "kl": stats["kl"]}
    ),
)
t0 = time.perf_counter()
run_steps(grpo, settings.grpo_steps)
grpo_eval = evaluate(grpo_policy, reference, tok, held_out, reward_model=rm, **measure)
grpo_rollouts = settings.grpo_steps * rl.grpo.prompts_per_step * rl.grpo.group_size
print(
    f"GRPO: {grpo_rollouts:,} rollouts in {time.perf_counter() - t0:.0f} s; "
    f"gold {sft_eval['gold']:.3f} -> {grpo_eval['gold']:.3f}, accuracy {sft_eval['accuracy']:.3f} "
    f"-> {grpo_eval['accuracy']:.3f}, KL {grpo_eval['kl']:.2f} nats"
)

# %% [markdown]
# Is the gain GRPO's, or the reward's? PPO on the same checker, with its value head, tells them apart.
# The comparison that matters is gold reward gained per rollout sampled.

# %%
checker_trace = []
ppo_checker = copy.deepcopy(reference)
trainer = PPOTrainer(
    ppo_checker,
    reference,
    tok,
    checker_reward,
    prompt_sampler(family),
    PPOConfig(**{**asdict(rl.ppo), "lr": 3e-5, "kl_coef": 0.05}),
    seed=0,
    callback=lambda step, responses, stats: checker_trace.append(
        {"gold": gold_rewards(responses).mean().item(), "kl": stats["kl"]}
    ),
)
run_steps(trainer, settings.checker_ppo_steps)
checker_eval = evaluate(ppo_checker, reference, tok, held_out, reward_model=rm, **measure)
runs = {
    "GRPO, checker": (grpo_eval, grpo_rollouts),
    "PPO, checker": (checker_eval, settings.checker_ppo_steps * rl.ppo.batch_size),
    "PPO, reward model": (ppo_eval, settings.ppo_steps * rl.ppo.batch_size),
}
rows = [
    "| method, reward | rollouts | gold reward | accuracy | KL (nats) | "
    "gold gain per 1,000 rollouts |",
    "|---|---:|---:|---:|---:|---:|",
]
rows += [
    f"| {name} | {n:,} | {e['gold']:.3f} | {e['accuracy']:.3f} | {e['kl']:.2f} | "
    f"{1000 * (e['gold'] - sft_eval['gold']) / n:+.4f} |"
    for name, (e, n) in runs.items()
]
display(
    Markdown(
        f"SFT: gold {sft_eval['gold']:.3f}, accuracy {sft_eval['accuracy']:.3f}.\n\n"
        + "\n".join(rows)
    )
)

# %% [markdown]
# ## All the methods on one chart
#
# *Which method buys the most gold reward for a given divergence from the SFT model?*
#
# Every method measured the same way: held-out prompts, one sample each, the gold reward no method saw
# (GRPO saw the checker), against $\sqrt{\mathrm{KL}}$ to the SFT model. Best-of-n and PPO draw
# curves; DPO and GRPO are points after their training.

# %%
fig, ax = plt.subplots(figsize=(7, 4.2))
ax.plot(np.sqrt(bon["large"]["kl"]), bon["large"]["gold"], "o-", label="best-of-n (reward model)")
ax.plot(
    np.sqrt(np.maximum(smooth([t["kl"] for t in ppo_trace]), 0)),
    smooth([t["gold"] for t in ppo_trace]),
    "-",
    label=f"PPO rollouts (β = {rl.ppo.kl_coef:g})",
)
ax.plot(
    np.sqrt(np.maximum(smooth([t["kl"] for t in grpo_trace], 30), 0)),
    smooth([t["gold"] for t in grpo_trace], 30),
    "-",
    label="GRPO rollouts (checker, moving average of 30)",
)
points = {
    "SFT": sft_eval,
    "PPO": ppo_eval,
    **dpo_eval,
    "GRPO": grpo_eval,
    "PPO, checker": checker_eval,
}
for name, e in points.items():
    ax.plot(math.sqrt(max(e["kl"], 0)), e["gold"], "k*" if name == "SFT" else "D", ms=10)
    ax.annotate(
        name,
        (math.sqrt(max(e["kl"], 0)), e["gold"]),
        textcoords="offset points",
        xytext=(5, 5),
        fontsize=8,
    )
ax.set_xlabel(r"$\sqrt{\mathrm{KL}(\pi\,\|\,\pi_\mathrm{SFT})}$ (nats$^{1/2}$)")
ax.set_ylabel("gold reward")
ax.set_title("Gold reward against divergence, every method")
ax.legend(fontsize=8)
plt.show()
rows = [
    "| method | gold reward | accuracy | reward-model score | KL (nats) | length |",
    "|---|---:|---:|---:|---:|---:|",
]
rows += [
    f"| {name} | {e['gold']:.3f} | {e['accuracy']:.3f} | {e['proxy']:+.3f} | {max(e['kl'], 0):.2f} "
    f"| {e['length']:.2f} |"
    for name, e in points.items()
]
rows.append(
    f"| best-of-{N} | {bon['large']['gold'][-1]:.3f} | | {bon['large']['proxy'][-1]:+.3f} | "
    f"{best_of_n_kl(N):.2f} (bound) | |"
)
display(Markdown("\n".join(rows)))
best = max(points, key=lambda k: points[k]["gold"])
display(
    Markdown(
        f"On held-out prompts the highest gold reward is {best}'s, {points[best]['gold']:.3f} "
        f"(SFT: {sft_eval['gold']:.3f})."
    )
)

# %% [markdown]
# ## What InstructGPT did
#
# *What did the paper that brought this recipe to large language models actually do, and at what scale?*
#
# This chapter's pipeline has three stages: supervised fine-tuning, a reward model trained on
# rankings, and PPO with a KL penalty. It is the pipeline of InstructGPT (Ouyang et al. 2022,
# arXiv:2203.02155), which in turn followed Ziegler et al. (2019) and Stiennon et al. (2020). The
# next cell builds a table from the paper, and each row names the section its figure comes from. The
# numbers describe InstructGPT, not ChatGPT: OpenAI has published no paper that gives ChatGPT's data
# or sizes.

# %%
# InstructGPT (Ouyang et al. 2022, arXiv:2203.02155): each entry is (value, where in the paper).
instructgpt = {
    "policy_sizes_b": ((1.3, 6, 175), "§1, §3.5: all three use the GPT-3 architecture"),
    "sft_prompts": (13_000, "§3.2: 'about 13k' training prompts, API and labeler-written"),
    "rm_prompts": (33_000, "§3.2: API and labeler-written"),
    "ppo_prompts": (31_000, "§3.2: API only, with no human labels"),
    "labelers": (40, "§1, §3.4: 'about 40 contractors' (Upwork and ScaleAI)"),
    "outputs_ranked": ((4, 9), "§3.5"),
    "rm_size_b": (6, "§3.5; App. C.2: one 6B RM for the PPO policies of every size"),
    "labeler_agreement_pct": ((72.6, 1.5), "§3.4: training labelers with each other"),
    "rm_heldout_accuracy_pct": ((69.6, 0.9), "§4.1: RMs cross-validated over 5 groups of labelers"),
    "win_rate_175b_pct": ((85, 3), "§1, §4.1: 175B InstructGPT against 175B GPT-3"),
}
(ig_small, ig_mid, ig_large), ig_sizes_where = instructgpt["policy_sizes_b"]
(ig_k_min, ig_k_max), _ = instructgpt["outputs_ranked"]
# A ranking of K outputs gives C(K, 2) pairs:
ig_pairs_min, ig_pairs_max = math.comb(ig_k_min, 2), math.comb(ig_k_max, 2)
assert (
    (ig_pairs_min, ig_pairs_max)
    == (ig_k_min * (ig_k_min - 1) // 2, ig_k_max * (ig_k_max - 1) // 2)
    == (6, 36)
)
ig_size_ratio = ig_large / ig_small
assert ig_size_ratio > 100  # the paper's "over 100x fewer parameters"
print(
    f"K = {ig_k_min}: C({ig_k_min},2) = {ig_pairs_min} pairs; K = {ig_k_max}: C({ig_k_max},2) = "
    f"{ig_pairs_max} pairs; {ig_large:g}B / {ig_small:g}B = {ig_size_ratio:.0f}"
)


def ig_pm(key: str) -> str:
    (ig_value, ig_spread), _ = instructgpt[key]
    return f"{ig_value} ± {ig_spread}%"


ig_rows = [
    (
        "Stages",
        "SFT on labeler demonstrations → reward model (RM) on rankings → PPO against the RM",
        "§3.1, Fig. 2",
    ),
    ("Policy sizes", ", ".join(f"{s:g}B" for s in (ig_small, ig_mid, ig_large)), ig_sizes_where),
    (
        "Prompts for SFT / RM / PPO",
        " / ".join(
            f"{instructgpt[k][0] // 1000}k" for k in ("sft_prompts", "rm_prompts", "ppo_prompts")
        ),
        "§3.2: SFT and RM prompts from the API and labelers; PPO prompts from "
        "the API only, unlabelled",
    ),
    ("Labelers", f"about {instructgpt['labelers'][0]} contractors", instructgpt["labelers"][1]),
    (
        "Outputs ranked per prompt",
        f"K = {ig_k_min} to {ig_k_max}, giving C(K, 2) = {ig_pairs_min} to {ig_pairs_max} pairs",
        "§3.5: all pairs of one prompt form one batch element",
    ),
    (
        "Reward model",
        f"{instructgpt['rm_size_b'][0]}B, the SFT model with a scalar head; loss "
        r"$-\log\sigma(r(x, y_w) - r(x, y_l))$",
        instructgpt["rm_size_b"][1] + "; eq. 1",
    ),
    ("Labeler agreement", ig_pm("labeler_agreement_pct"), instructgpt["labeler_agreement_pct"][1]),
    (
        "RM accuracy on held-out labelers",
        ig_pm("rm_heldout_accuracy_pct"),
        instructgpt["rm_heldout_accuracy_pct"][1],
    ),
    (
        "RL",
        "PPO on a bandit: one reward per response from the RM, a per-token KL penalty (β) toward "
        "the SFT model; value function initialised from the RM",
        "§3.5",
    ),
    (
        "PPO-ptx",
        "adds pretraining gradients (γ) to cut regressions on public NLP datasets (SQuAD, DROP, "
        "HellaSwag, WMT15 Fr→En), the 'alignment tax'; 'InstructGPT' means these models",
        "§1, §3.5",
    ),
    (
        "Headline",
        f"outputs of {ig_small:g}B InstructGPT preferred to those of {ig_large:g}B GPT-3, a model "
        f"{ig_size_ratio:.0f}× larger",
        "Abstract, §1, Fig. 1",
    ),
    (
        "175B vs 175B",
        f"InstructGPT preferred to GPT-3 {ig_pm('win_rate_175b_pct')} of the time",
        instructgpt["win_rate_175b_pct"][1],
    ),
]
ig_table = ["| | InstructGPT (Ouyang et al. 2022) | Where in the paper |", "|---|---|---|"]
ig_table += [f"| {ig_what} | {ig_value} | {ig_where} |" for ig_what, ig_value, ig_where in ig_rows]
display(Markdown("\n".join(ig_table)))

(ig_agree, _), _ = instructgpt["labeler_agreement_pct"]
(ig_rm_acc, _), _ = instructgpt["rm_heldout_accuracy_pct"]
display(
    Markdown(
        "Ranking $K$ outputs of one prompt gives $\\binom{K}{2}$ comparisons: "
        f"{ig_pairs_min} for $K = {ig_k_min}$, {ig_pairs_max} for $K = {ig_k_max}$. "
        "The paper trained on all the pairs of a prompt together, as one batch element: "
        "shuffled into the data as independent examples, they made the reward model "
        "overfit after a single pass (§3.5). Two numbers say how noisy such labels are. "
        f"The labelers agreed with each other {ig_agree}% of the time, and reward models agreed "
        f"with labelers they were not trained on {ig_rm_acc}% of the time."
    )
)

# %% [markdown]
# **Where the source articles go wrong.**
#
# * *"People score and rank the model's outputs, and the result is used as the reward signal"*
#   (001 §2.5). Article 000 §3.3 likewise has people score the replies and then "design" a reward
#   function from the feedback. Neither is what happens. Labelers *rank* outputs. The rankings train a
#   reward model with the Bradley–Terry loss of section "A reward model from preferences". PPO then
#   optimises the policy against that model, on prompts no human labelled. During RL the policy never
#   sees a human judgement, only the reward model's guess at one. The paper did ask labelers for
#   1–7 quality scores, but to *evaluate* the models (§3.6), not to train them. The reward function is
#   learned, not designed.
# * *"Optimise the policy with PPO to maximise the score the reward model gives"* (001 §3.4) leaves
#   out the term that holds the method together. InstructGPT maximises
#   $\mathbb{E}\big[r_\phi(x, y) - \beta \log\big(\pi^\text{RL}(y \mid x) / \pi^\text{SFT}(y \mid x)\big)\big]$,
#   plus a pretraining term for PPO-ptx: the reward *minus* a KL penalty toward the SFT model, added
#   "to mitigate overoptimization of the reward model" (§3.5). Sections "The KL leash" and
#   "Over-optimisation" show what this chapter's policy does without it.
# * *"ChatGPT reportedly uses this technique as well"* (001 §2.5). There is no need for hearsay: OpenAI's
#   announcement of ChatGPT (OpenAI 2022) calls it a sibling model to InstructGPT, trained with the
#   same RLHF methods on dialogue data written by AI trainers, and fine-tuned from a model in the
#   GPT-3.5 series. The announcement gives no sizes or dataset counts, which is why the table above
#   describes InstructGPT only.

# %% [markdown]
# ## Common misconceptions
#
# *Which claims about learning from human feedback are wrong, and what is right instead?*
#
# ```{admonition} Common misconceptions, corrected
# :class: warning
#
# * **"The reward model is the human."** It is a model fitted to a finite set of rankings, and it
#   disagrees with people. InstructGPT's reward models agreed with labelers they had not been trained
#   on 69.6 ± 0.9% of the time; the labelers agreed with each other 72.6 ± 1.5% of the time (Ouyang et
#   al. 2022, arXiv:2203.02155, §4.1 and §3.4). This chapter's reward model is further still from its
#   labelers (section "A reward model from preferences"). It is least reliable where the policy goes once it is optimised:
#   on responses unlike the ones it was trained on.
# * **"More reward is always better."** The reward being maximised is a proxy for what people want.
#   Gao, Schulman and Hilton (2023, arXiv:2210.10760) trained proxy reward models on labels from a
#   "gold" reward model that played the human. As best-of-n or RL optimised against the proxy, the
#   gold reward rose, peaked and fell, while the proxy kept rising. Section "Over-optimisation" shows the
#   same on our proxy, and what the policy exploited: our labelers favour longer answers. Singhal et al. (2023,
#   arXiv:2310.03716) found that in their settings much of RLHF's reward gain came from longer outputs.
# * **"PPO's clip keeps the policy near the SFT model."** The clip limits each update relative to
#   $\pi_{\theta_\text{old}}$, the policy that collected the current batch (section "The clipped
#   objective"). Every batch brings a new $\pi_{\theta_\text{old}}$, so over many batches a clipped
#   policy can drift arbitrarily far. The KL penalty toward the reference model is what keeps it
#   close. Compare the runs of section "The KL leash": every one was clipped
#   with the same $\epsilon$, and only β told them apart.
# * **"DPO needs no reference model."** DPO needs no *reward* model and no sampling during training,
#   but $\pi_\text{ref}$ is in its loss. The implicit reward of a response is
#   $\beta \log\big(\pi_\theta(y \mid x)/\pi_\text{ref}(y \mid x)\big)$ (Rafailov et al. 2023,
#   arXiv:2305.18290), so the reference model's log-probabilities must be computed for every pair,
#   and $\beta$ plays the part of the KL coefficient. Drop the reference and nothing anchors the
#   policy: the loss rewards widening the gap between chosen and rejected log-probabilities without
#   limit.
# * **"Best-of-n is free, because nothing is trained."** It costs $n$ samples and $n$ reward-model
#   calls for every answer, every time. And it moves the output distribution just as training does:
#   $\mathrm{KL}(\pi_\text{bon} \,\|\, \pi) \le \log n - (n-1)/n$, with near equality when no single
#   response is likely (Beirami et al. 2024, arXiv:2401.01879). It can over-optimise as well: Gao et al. (2023) saw the gold
#   reward of best-of-n fall once $n$ was large enough.
# * **"Averaging the token log-probabilities in DPO is harmless."** DPO's derivation is about whole
#   responses: $\log \pi(y \mid x)$ is the *sum* of the token log-probabilities. Dividing by the length
#   replaces the implicit reward by a per-token average. That is no longer $\beta$ times the
#   log-ratio of the response, so the result that DPO solves the KL-regularised problem no longer
#   applies. It also changes how length counts: a long response moves the summed log-ratio more than
#   a short one, while the average hides its length. Section "DPO: preferences without a reward model" trains both
#   ways on the same pairs.
# * **"GRPO needs no reward model."** GRPO removes the *value head*: each response's baseline is the
#   mean reward of a group of responses to the same prompt (Shao et al. 2024, arXiv:2402.03300).
#   The reward itself can still come from a learned reward model, as it did in DeepSeekMath's own
#   RL experiments, or from a program that checks the answer, as in this chapter's GRPO section.
#   With a reward a program can verify, the policy has only the checker's blind spots to exploit.
# ```

# %% [markdown]
# ## Summary
#
# * **Learning from human feedback has three stages.** Supervised fine-tuning on demonstrations gives
#   a starting policy and the reference model. A **reward model** is trained on {term}`preference pairs <preference pair>` with
#   the Bradley–Terry loss $-\log\sigma(r(x, y_w) - r(x, y_l))$, where only reward differences matter.
#   The policy is then optimised against the reward model, with a penalty for moving away from the
#   reference. People's rankings train the reward model, and the policy only ever meets the reward
#   model.
# * **Best-of-n** samples $n$ responses and keeps the one the reward model likes best. It trains
#   nothing, but it costs $n$ samples per answer, and it moves the distribution by at most
#   $\log n - (n-1)/n$ nats of KL.
# * **PPO** trains a policy with a value head. Advantages come from GAE, where $\lambda$ trades bias
#   against variance. Its **clipped objective** is maximised. It equals the plain policy gradient on
#   the first step of each batch and has zero gradient wherever the clip binds. The per-token KL
#   penalty (estimated with k1 in the reward; k3 is unbiased and never negative) ties the policy to
#   the reference model. The clip limits each update; the KL penalty limits the total drift.
# * **Over-optimisation**: the proxy reward keeps rising while the gold reward peaks and falls. The
#   KL leash trades proxy reward for staying where the reward model is still right.
# * **DPO** fits the Bradley–Terry model to the implicit reward $\beta\log(\pi_\theta/\pi_\text{ref})$
#   of whole responses (sums of token log-probabilities). It needs no reward model and no sampling,
#   but it does need the reference model.
# * **GRPO** replaces the value head by the mean reward of a group of responses to the same prompt.
#   Paired with a reward a program can verify, it leaves little to exploit.
# * **InstructGPT** (Ouyang et al. 2022) ran this recipe at scale: a 6B reward model trained on
#   rankings of 4 to 9 outputs per prompt, and PPO with a per-token KL penalty. Its 1.3B model's
#   outputs were preferred to 175B GPT-3's. ChatGPT is a sibling of InstructGPT, fine-tuned from a
#   GPT-3.5-series model (OpenAI 2022).

# %% [markdown]
# What this chapter measured, on its held-out prompts:

# %%
display(
    Markdown(
        "\n".join(
            [
                f"* The reward model agreed with {rm_accuracy[max(rm_accuracy)]:.1%} of held-out "
                f"labels; the Bayes limit was {bayes:.1%}.",
                f"* PPO against it raised its score from {sft_eval['proxy']:+.3f} to "
                f"{ppo_eval['proxy']:+.3f} and moved the gold reward from {sft_eval['gold']:.3f} "
                f"to {ppo_eval['gold']:.3f} (β = {rl.ppo.kl_coef:g}); without a KL penalty the "
                f"gold reward of its rollouts ended at {last[0.0]['gold']:.3f}.",
                f"* PPO against the checker moved the gold reward from {sft_eval['gold']:.3f} "
                f"to {checker_eval['gold']:.3f}, GRPO to {grpo_eval['gold']:.3f}; "
                f"DPO (summed log-probabilities) to {dpo_eval['DPO']['gold']:.3f}, averaged "
                f"to {dpo_eval['DPO, mean log-probs']['gold']:.3f}.",
            ]
        )
    )
)

# %% [markdown]
# ## Exercises
#
# These exercises are also a graded assignment, `assignments/05_rlhf.py`: a teacher builds it with
# `python3 tools/book.py assignments` (see the teacher's page, `teaching.md`). Exercises marked
# *(autograded)* are checked by tests; those marked *(open)* are graded by hand.
#
# 1. **k3 is never negative.** *(autograded)* Show that $k_3 = (\rho - 1) - \log\rho \ge 0$ for
#    every $\rho > 0$, with equality only at $\rho = 1$. Hint: $\log$ is concave, so it lies below
#    its tangent at 1. *Check:* the cell below evaluates `kl_estimates` over a wide range of
#    log-ratios.
# 2. **The KL of best-of-2.** *(autograded)* Let no two responses tie in reward, and let
#    $u \in [0, 1]$ be a response's quantile in the reward distribution under $\pi$, so $u$ is
#    uniform under $\pi$. Show that the better of two samples has quantile density $2u$, and derive
#    $\mathrm{KL}(\pi_\text{bon} \,\|\, \pi) = \int_0^1 2u \log(2u)\,du = \log 2 - \tfrac12$. (For
#    $n$ samples the density is $n u^{n-1}$, which gives $\log n - (n-1)/n$.) *Check:* the cell
#    below computes this value, and the exact KL when $\pi$ is uniform over $m$ responses. That KL
#    stays below the formula and approaches it as $m$ grows, which is why the formula is an upper
#    bound in general (Beirami et al. 2024).
# 3. **DPO as $\beta \to 0$.** *(autograded)* What do DPO's loss and its gradient become? Write the
#    gradient as $-\beta\,\sigma(-\beta u)\,\nabla u$, with $u$ the difference of the two
#    log-ratios, and let $\beta \to 0$. *Check:* the cell below evaluates `dpo_loss` and its
#    gradient at decreasing $\beta$.
# 4. **Labelers without length bias.** *(open)* Set the labelers' length bias to 0 and re-run the
#    over-optimisation cell. Does the exploit disappear? Does over-optimisation? *Check:* compare
#    the mean response length of the most optimised policy with the SFT model's, and the gold
#    reward's peak with its final value. Hint: a reward model fitted to finite data still has
#    errors, even when the labels have no bias; Gao et al. (2023) saw over-optimisation with labels
#    from an unbiased gold model.
# 5. **The k2 estimator.** *(autograded)* Implement $k_2 = \tfrac12(\log\rho)^2$ and compare its
#    bias with k1 and k3, for two categorical distributions whose exact KL you can compute. How does
#    the bias change as the distributions move apart? *Check:* take expectations exactly (sums over
#    the outcomes, no sampling). k1 and k3 must match the exact KL to rounding; the cell below gives
#    $\mathbb{E}[k_2]$ for one pair of distributions.
# 6. **The clip without the min.** *(autograded)* Replace PPO's objective by its clipped term alone,
#    $\operatorname{clip}(r, 1-\epsilon, 1+\epsilon)\hat A$, and redraw the figure of section "The
#    clipped objective". Where is the gradient zero now, and why is that worse? *Check:* the cell
#    below counts the zero-gradient ratios on the same grid for both objectives.
# 7. **A group that teaches nothing.** *(autograded)* Call `grpo_advantages` on a group in which
#    every response earned the same reward. What are the advantages, and what does the policy learn
#    from that prompt? *Check:* the cell below.
# 8. **How much pretraining to mix in.** *(autograded)* Rerun the PPO-ptx cell of section "The KL
#    leash" with $\gamma$ = 0.1 and 10. How do the bracket-language loss and the gold reward trade
#    off? *Check:* the trainer's stats report `ptx_loss` every iteration. Instruction tuning made
#    the SFT model forget much of the bracket language, so with $\gamma$ = 10 the pretraining loss
#    should fall far below the SFT model's, towards the language's floor.
# 9. **Feedback on every kind.** *(open)* Rerun the chapter with
#    `RLHFConfig(kinds=instructions.KINDS)` in place of `RLHFConfig()`. How accurate is the
#    reward model now, and what does PPO do to the gold reward at each β? *Check:* compare the
#    reward model's accuracy on the pairs of each kind (`pair_rewards` on `rm_eval.select(...)`).
#    Which kinds are hardest to judge, and what do their right answers have in common?

# %%
from aigc_book.rlhf.losses import dpo_loss, grpo_advantages, kl_estimates

# 1. k3 over log-ratios log ρ from -10 to 10: never negative, zero only at ρ = 1.
ex_log_rho = (
    torch.arange(-1000, 1001, dtype=torch.float64) / 100
)  # log ρ = log π_ref - log π, 0 included exactly
_, ex_k3 = kl_estimates(torch.zeros_like(ex_log_rho), ex_log_rho)
assert (
    bool((ex_k3 >= 0).all())
    and float(ex_log_rho[ex_k3.argmin()]) == 0.0
    and float(ex_k3.min()) == 0.0
)


# 2. Best-of-2: the formula, and the exact KL when π is uniform over m responses with distinct
# rewards.
def best_of_n_kl_uniform(n: int, m: int) -> float:
    """KL(best-of-n ‖ π), exactly, for π uniform over m responses ranked by reward."""
    i = torch.arange(1, m + 1, dtype=torch.float64)
    p_bon = (i / m) ** n - (
        (i - 1) / m
    ) ** n  # P(the best of n draws is the i-th lowest-ranked response)
    return float((p_bon * torch.log(p_bon * m)).sum())


ex_bon_formula = math.log(2) - 1 / 2
ex_bon_exact = {m: best_of_n_kl_uniform(2, m) for m in (2, 10, 100, 10_000)}
assert all(v <= ex_bon_formula for v in ex_bon_exact.values())  # an upper bound...
assert list(ex_bon_exact.values()) == sorted(ex_bon_exact.values())  # ...approached as m grows
assert abs(ex_bon_exact[10_000] - ex_bon_formula) < 1e-3

# 3. DPO as β → 0: the loss tends to log 2 and the gradient to -(β/2)∇u for every pair.
ex_gen = torch.Generator().manual_seed(0)
ex_policy = -20 + 5 * torch.randn(
    2, 8, generator=ex_gen, dtype=torch.float64
)  # log π_θ(y_w|x), log π_θ(y_l|x)
ex_reference = ex_policy + torch.randn(
    2, 8, generator=ex_gen, dtype=torch.float64
)  # log π_ref of the same
ex_dpo = {}
for ex_beta in (1.0, 0.1, 1e-6):
    ex_logps = ex_policy.clone().requires_grad_(True)
    ex_loss_b = dpo_loss(ex_logps[0], ex_logps[1], ex_reference[0], ex_reference[1], beta=ex_beta)
    (ex_grad_b,) = torch.autograd.grad(ex_loss_b, ex_logps)
    ex_dpo[ex_beta] = (float(ex_loss_b.detach()), ex_grad_b)
ex_small_beta = 1e-6
ex_loss, ex_grad = ex_dpo[ex_small_beta]
assert abs(ex_loss - math.log(2)) < 1e-5
ex_n_pairs = ex_policy.shape[1]
ex_sign = torch.tensor([[-1.0], [1.0]], dtype=torch.float64).expand(
    2, ex_n_pairs
)  # descent: chosen up, rejected down
torch.testing.assert_close(ex_grad, ex_sign * ex_small_beta / (2 * ex_n_pairs), rtol=1e-4, atol=0)

# 5. Exact expectations of k1, k2, k3 under π, for a reference distribution and π moved away
# from it.
ex_ref_logits = torch.randn(10, generator=ex_gen, dtype=torch.float64)
ex_shift = torch.randn(10, generator=ex_gen, dtype=torch.float64)
ex_k2_rows = []
ex_log_ref = torch.log_softmax(ex_ref_logits, 0)
for ex_step in (0.1, 0.5, 1.0, 2.0):
    ex_log_pi = torch.log_softmax(ex_ref_logits + ex_step * ex_shift, 0)
    ex_pi = ex_log_pi.exp()
    ex_exact_kl = float((ex_pi * (ex_log_pi - ex_log_ref)).sum())
    ex_k1s, ex_k3s = kl_estimates(ex_log_pi, ex_log_ref)  # per outcome
    for ex_k in (ex_k1s, ex_k3s):  # both unbiased: their expectations under π are the KL
        assert abs(float((ex_pi * ex_k).sum()) - ex_exact_kl) < 1e-12
    ex_k2_rows.append((ex_exact_kl, float((ex_pi * 0.5 * (ex_log_ref - ex_log_pi) ** 2).sum())))

# 6. Zero-gradient ratios with and without the min, on the grid of the clipped-objective figure.
ex_r = ((torch.arange(200, dtype=torch.float64) + 0.5) / 100).requires_grad_(True)
ex_eps = 0.2
ex_zero = {}
for ex_adv in (1.0, -1.0):
    ex_with_min = torch.minimum(ex_r * ex_adv, torch.clamp(ex_r, 1 - ex_eps, 1 + ex_eps) * ex_adv)
    ex_clip_only = torch.clamp(ex_r, 1 - ex_eps, 1 + ex_eps) * ex_adv
    ex_g_min, ex_g_clip = (
        torch.autograd.grad(obj.sum(), ex_r)[0] for obj in (ex_with_min, ex_clip_only)
    )
    ex_zero[ex_adv] = (int((ex_g_min == 0).sum()), int((ex_g_clip == 0).sum()))
    assert bool(
        (ex_g_clip[(ex_r < 1 - ex_eps) | (ex_r > 1 + ex_eps)] == 0).all()
    )  # dead on both sides

# 7. A group whose responses all earned the same reward.
ex_flat = grpo_advantages(torch.ones(4, dtype=torch.float64), group_size=4)
assert torch.equal(ex_flat, torch.zeros(4, dtype=torch.float64))

ex_lines = [
    f"1. k3 over log ρ in [−10, 10]: smallest value {float(ex_k3.min()):g}, at log ρ = "
    f"{float(ex_log_rho[ex_k3.argmin()]):g}",
    f"2. best-of-2: log 2 − 1/2 = {ex_bon_formula:.5f}; exact for uniform π over m responses: "
    + ", ".join(f"m={m:,}: {v:.5f}" for m, v in ex_bon_exact.items()),
    "3. DPO: "
    + "; ".join(f"β={b:g}: loss {val:.4f}" for b, (val, _) in ex_dpo.items())
    + f" (log 2 = {math.log(2):.4f}); at β={ex_small_beta:g} the gradient is −β/(2N) "
    f"on every chosen and +β/(2N) on every rejected log-probability (N = {ex_n_pairs} pairs; "
    "the loss is a mean)",
    "5. exact KL vs E[k2]: " + "; ".join(f"{kl:.4f} vs {k2:.4f}" for kl, k2 in ex_k2_rows),
    "6. zero-gradient ratios of 200, with min / clipped term only: "
    + "; ".join(f"Â={a:+g}: {z_min} / {z_clip}" for a, (z_min, z_clip) in ex_zero.items()),
    f"7. advantages of a group with equal rewards: {ex_flat.tolist()}",
]
print("\n".join(ex_lines))

# %% [markdown]
# ## Key terms
#
# | English | 中文 |
# |---|---|
# | {term}`reinforcement learning from human feedback (RLHF)` | 人类反馈强化学习 |
# | {term}`reward model` | 奖励模型 |
# | {term}`preference pair (chosen, rejected) <preference pair>` | 偏好对（选中、拒绝） |
# | {term}`Bradley–Terry model` | Bradley–Terry 模型 |
# | {term}`gold reward` | 金标准奖励 |
# | {term}`policy` | 策略 |
# | {term}`reference model` | 参考模型 |
# | {term}`policy gradient` | 策略梯度 |
# | {term}`value function, value head` | 价值函数，价值头 |
# | {term}`advantage` | 优势 |
# | {term}`generalised advantage estimation (GAE)` | 广义优势估计 |
# | {term}`probability ratio` | 概率比 |
# | {term}`importance sampling` | 重要性采样 |
# | {term}`proximal policy optimisation (PPO)` | 近端策略优化 |
# | {term}`clipped surrogate objective` | 裁剪替代目标 |
# | {term}`KL penalty` | KL 惩罚 |
# | {term}`KL estimator (k1, k2, k3)` | KL 估计量（k1、k2、k3） |
# | {term}`best-of-n sampling` | best-of-n 采样（n 选优） |
# | {term}`reward over-optimisation, reward hacking` | 奖励过度优化，奖励投机 |
# | {term}`direct preference optimisation (DPO)` | 直接偏好优化 |
# | {term}`group relative policy optimisation (GRPO)` | 组相对策略优化 |
# | {term}`verifiable reward` | 可验证奖励 |
# | {term}`alignment tax` | 对齐税 |

# %% [markdown]
# ## References
#
# * {cite:t}`ch05-beirami2024bestofn` (best-of-n).
# * {cite:t}`ch05-bradley1952rank` (the Bradley–Terry model).
# * {cite:t}`ch05-christiano2017deep`.
# * {cite:t}`ch05-gao2023overoptimization` (reward-model over-optimisation).
# * {cite:t}`ch05-huang2024nplus` (PPO implementation details).
# * {cite:t}`ch05-openai2022chatgpt`.
# * {cite:t}`ch05-ouyang2022instructgpt` (InstructGPT).
# * {cite:t}`ch05-rafailov2023dpo` (DPO).
# * {cite:t}`ch05-schulman2016gae` (GAE).
# * {cite:t}`ch05-schulman2017ppo` (PPO).
# * {cite:t}`ch05-schulman2020klapprox` (KL estimators).
# * {cite:t}`ch05-shao2024deepseekmath` (GRPO).
# * {cite:t}`ch05-singhal2023length` (length correlations).
# * {cite:t}`ch05-stiennon2020summarize`.
# * {cite:t}`ch05-williams1992reinforce` (REINFORCE).
# * {cite:t}`ch05-ziegler2019finetuning`.
#
# ```{bibliography}
# :filter: docname in docnames
# :keyprefix: ch05-
# :labelprefix: 5.
# :style: unsrt
# ```

# %%
print(f"chapter run time: {time.perf_counter() - chapter_start:.0f} s")
