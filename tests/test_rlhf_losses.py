"""Chapter 5's losses (``aigc_book.rlhf.losses``): hand computations, the definitions written as loops,
simulations, and the real ``trl`` 1.16 code paths where the library still has one.

Cross-checks with trl (skipped when trl is missing): ``RewardTrainer.compute_loss`` on the same rewards
(a stub model) and on a tiny GPT-2 reward model's own outputs; ``DPOTrainer.compute_loss`` with
``loss_type="sigmoid"`` (summed completion log-probs) and ``"sigmoid_norm"`` (averaged ones) on a tiny
GPT-2 policy and reference with different weights. trl 1.16 has no PPO and no ``whiten`` helper any more,
so PPO, GAE and whitening are checked against hand computations and loops only.
"""

from __future__ import annotations

import contextlib
import math
import random
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from aigc_book.rlhf.losses import (
    bradley_terry_loss,
    dpo_loss,
    gae,
    grpo_advantages,
    kl_estimates,
    masked_mean,
    ppo_policy_loss,
    ppo_value_loss,
    whiten,
)

F64 = torch.float64


def t64(values) -> torch.Tensor:
    return torch.tensor(values, dtype=F64)


def log1p_exp(x: float) -> float:
    """``-log sigmoid(-x) = log(1 + e^x)``, written with math for the hand computations."""
    return math.log(1 + math.exp(x))


# ---------------------------------------------------------------------------------------------------
# A tiny offline GPT-2 world for the trl cross-checks (no hub, no downloads).

WORDS = "<pad> <eos> the cat dog sat ran on a mat rug".split()
PAIRS = {  # two preference pairs whose completions have different lengths (sum and mean differ)
    "prompt": ["the cat", "a dog"],
    "chosen": [" sat on a mat", " ran"],
    "rejected": [" ran", " sat on the rug"],
}


@contextlib.contextmanager
def rng_kept():
    """trl's trainers call ``transformers.set_seed``: keep the process's torch, random and numpy streams."""
    import numpy as np

    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        yield
    random.setstate(py_state)
    np.random.set_state(np_state)


def tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", padding_side="left")


def tiny_gpt2_config(**overrides):
    from transformers import GPT2Config

    # initializer_range 0.5 (not GPT-2's 0.02) so that two random models disagree clearly
    return GPT2Config(vocab_size=len(WORDS), n_positions=32, n_embd=16, n_layer=1, n_head=2, resid_pdrop=0.0,
                      embd_pdrop=0.0, attn_pdrop=0.0, pad_token_id=0, bos_token_id=1, eos_token_id=1,
                      initializer_range=0.5, **overrides)


def trainer_args(config_cls, output_dir, **kw):
    return config_cls(output_dir=str(output_dir), report_to=[], use_cpu=True, bf16=False,
                      activation_checkpointing=False, per_device_train_batch_size=2, max_length=None,
                      disable_tqdm=True, save_strategy="no", logging_strategy="no", **kw)


# ---------------------------------------------------------------------------------------------------
# masked_mean and the Bradley–Terry loss


def test_masked_mean_is_over_the_marked_tokens_of_the_whole_batch():
    x = t64([[1.0, 2.0, 100.0], [3.0, -50.0, 4.0]])
    mask = torch.tensor([[True, True, False], [True, False, True]])
    assert masked_mean(x, mask).item() == pytest.approx((1 + 2 + 3 + 4) / 4, abs=1e-15)
    assert masked_mean(x, mask.to(F64)).item() == pytest.approx(2.5, abs=1e-15)


def test_bradley_terry_loss_matches_a_hand_computation():
    chosen, rejected = [1.0, -0.5, 2.0, 0.3], [0.0, 0.5, 2.0, -1.2]
    expected = sum(log1p_exp(-(c - r)) for c, r in zip(chosen, rejected)) / 4  # -log sigma(d) = log(1 + e^-d)
    assert bradley_terry_loss(t64(chosen), t64(rejected)).item() == pytest.approx(expected, abs=1e-14)
    # one pair with equal rewards: a coin flip, log 2
    assert bradley_terry_loss(t64([0.7]), t64([0.7])).item() == pytest.approx(math.log(2), abs=1e-15)


def test_bradley_terry_loss_sees_only_reward_differences():
    g = torch.Generator().manual_seed(0)
    chosen, rejected = torch.randn(8, generator=g, dtype=F64), torch.randn(8, generator=g, dtype=F64)
    base = bradley_terry_loss(chosen, rejected)
    for shift in (-100.0, 3.5, 1e3):
        torch.testing.assert_close(bradley_terry_loss(chosen + shift, rejected + shift), base, rtol=0, atol=1e-12)


def test_bradley_terry_loss_and_gradient_stay_finite_for_huge_differences():
    chosen = t64([1000.0, -1000.0]).requires_grad_()
    rejected = t64([-1000.0, 1000.0])
    loss = bradley_terry_loss(chosen, rejected)
    loss.backward()
    # pair 1: d = 2000, loss ~ e^-2000 = 0; pair 2: d = -2000, loss ~ 2000 (log sigma(d) -> d): mean 1000
    assert loss.item() == pytest.approx(1000.0, abs=1e-9)
    torch.testing.assert_close(chosen.grad, t64([0.0, -0.5]), rtol=0, atol=1e-12)  # d/dr_c = -sigma(-d) / N


def test_bradley_terry_loss_rejects_rewards_of_different_shapes():
    with pytest.raises(ValueError, match=r"one shape, got \(3,\) and \(2,\)"):
        bradley_terry_loss(torch.zeros(3), torch.zeros(2))


class _RewardStub(torch.nn.Module):
    """A "reward model" whose score column is given: trl's loss then sees exactly these rewards."""

    def __init__(self, rewards: torch.Tensor):
        super().__init__()
        self.rewards = rewards

    def forward(self, **inputs):
        return SimpleNamespace(logits=self.rewards[:, None])


@pytest.fixture(scope="module")
def reward_trainer(tmp_path_factory):
    pytest.importorskip("trl")
    from datasets import Dataset
    from transformers import GPT2ForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    with rng_kept():
        torch.manual_seed(0)
        model = GPT2ForSequenceClassification(tiny_gpt2_config(num_labels=1)).to(F64).eval()
        args = trainer_args(RewardConfig, tmp_path_factory.mktemp("reward"))
        return RewardTrainer(model=model, args=args, train_dataset=Dataset.from_dict(PAIRS),
                             processing_class=tiny_tokenizer())


def test_bradley_terry_loss_equals_trl_reward_trainer_compute_loss_on_the_same_rewards(reward_trainer):
    """trl 1.16 ``RewardTrainer.compute_loss`` (real method, stub model): float64 throughout, atol 1e-12."""
    chosen = t64([1.0, -0.5, 2.0, 30.0, -800.0])
    rejected = t64([0.0, 0.5, 2.0, -40.0, 900.0])
    inputs = {"input_ids": torch.zeros(10, 3, dtype=torch.long), "attention_mask": torch.ones(10, 3, dtype=torch.long)}
    # trl's batch is [all chosen rows, then all rejected rows]; it chunks the score column in two
    stub = _RewardStub(torch.cat([chosen, rejected]))
    trl_loss = reward_trainer.compute_loss(stub, inputs)
    assert torch.isfinite(trl_loss)
    torch.testing.assert_close(bradley_terry_loss(chosen, rejected), trl_loss, rtol=0, atol=1e-12)


def test_bradley_terry_loss_equals_trl_reward_trainer_on_a_tiny_gpt2_reward_model(reward_trainer):
    """trl's whole path (dataset tokenisation, collator, model, compute_loss) against ours on its rewards."""
    batch = reward_trainer.data_collator([reward_trainer.train_dataset[i] for i in range(2)])
    with torch.no_grad():
        trl_loss, outputs = reward_trainer.compute_loss(reward_trainer.model, batch, return_outputs=True)
    chosen, rejected = outputs.logits.squeeze(-1).chunk(2)
    assert not torch.equal(chosen, rejected)
    torch.testing.assert_close(bradley_terry_loss(chosen, rejected), trl_loss, rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------------------------
# DPO


def test_dpo_loss_matches_a_hand_computation():
    beta = 0.1
    pc, pr, rc, rr = [-3.0, -10.0], [-5.0, -9.0], [-4.0, -12.0], [-4.5, -8.0]
    margins = [beta * ((pc[i] - rc[i]) - (pr[i] - rr[i])) for i in range(2)]  # 0.15 and 0.3
    expected = (log1p_exp(-margins[0]) + log1p_exp(-margins[1])) / 2
    got = dpo_loss(t64(pc), t64(pr), t64(rc), t64(rr), beta=beta)
    assert got.item() == pytest.approx(expected, abs=1e-14)
    # a policy equal to the reference: log 2 whatever beta
    assert dpo_loss(t64(pc), t64(pr), t64(pc), t64(pr), beta=7.0).item() == pytest.approx(math.log(2), abs=1e-15)


def test_dpo_loss_falls_when_the_policy_moves_toward_the_chosen_response():
    ref_c, ref_r = t64([-4.0]), t64([-4.0])
    losses = [dpo_loss(t64([-4.0 + s]), t64([-4.0 - s]), ref_c, ref_r, beta=0.1).item() for s in (0.0, 1.0, 5.0)]
    assert losses[0] > losses[1] > losses[2]


DPO_BETA = 0.5


def completion_logprobs(model, tokenizer, prompt: str, completion: str) -> tuple[float, float]:
    """(sum, mean) over the completion's tokens (EOS appended, as trl does) of log p(token | prefix):
    one unpadded sequence, log_softmax and gather, written here independently of trl."""
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = torch.tensor([prompt_ids + completion_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].to(F64)  # (L, V)
    logp = F.log_softmax(logits[:-1], -1).gather(-1, ids[0, 1:, None]).squeeze(-1)  # (L-1,) log p(ids[t+1] | ...)
    per_token = logp[len(prompt_ids) - 1:]  # the targets that are completion tokens
    assert per_token.numel() == len(completion_ids)
    return per_token.sum().item(), per_token.mean().item()


@pytest.fixture(scope="module")
def dpo_world(tmp_path_factory):
    """Our sequence log-probs from fresh models, and trl's DPO loss for a loss type (fresh models each time:
    ``DPOTrainer`` patches its models' forward)."""
    pytest.importorskip("trl")
    from datasets import Dataset
    from transformers import GPT2LMHeadModel
    from trl import DPOConfig, DPOTrainer

    tokenizer = tiny_tokenizer()

    def models():
        with rng_kept():
            out = []
            for seed in (0, 1):  # policy, reference: different weights
                torch.manual_seed(seed)
                out.append(GPT2LMHeadModel(tiny_gpt2_config()).eval())  # float32: trl's log-prob kernel is float32
            return out

    policy, ref = models()
    logps = {}
    for name, model in (("policy", policy), ("ref", ref)):
        for side in ("chosen", "rejected"):
            pairs = [completion_logprobs(model, tokenizer, p, c) for p, c in zip(PAIRS["prompt"], PAIRS[side])]
            logps[name, side, "sum"] = t64([s for s, _ in pairs])
            logps[name, side, "mean"] = t64([m for _, m in pairs])

    def trl_loss(loss_type: str) -> torch.Tensor:
        policy, ref = models()
        with rng_kept():
            args = trainer_args(DPOConfig, tmp_path_factory.mktemp("dpo"), beta=DPO_BETA, loss_type=loss_type)
            trainer = DPOTrainer(model=policy, ref_model=ref, args=args, train_dataset=Dataset.from_dict(PAIRS),
                                 processing_class=tokenizer)
        batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
        # same token ids as ours: trl's rows are [chosen..., rejected...], prompt + completion + EOS, right-padded
        row0 = tokenizer(PAIRS["prompt"][0] + PAIRS["chosen"][0], add_special_tokens=False)["input_ids"]
        assert batch["input_ids"][0, : len(row0) + 1].tolist() == row0 + [tokenizer.eos_token_id]
        with torch.no_grad():
            return trainer.compute_loss(trainer.model, batch)

    return SimpleNamespace(logps=logps, trl_loss=trl_loss)


def ours(world, reduce: str) -> torch.Tensor:
    lp = world.logps
    return dpo_loss(lp["policy", "chosen", reduce], lp["policy", "rejected", reduce], lp["ref", "chosen", reduce],
                    lp["ref", "rejected", reduce], beta=DPO_BETA)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # transformers' is_gradient_checkpointing, called by trl
def test_dpo_loss_on_summed_logprobs_equals_trl_dpo_trainer_sigmoid(dpo_world):
    """trl 1.16 ``DPOTrainer.compute_loss`` (loss_type="sigmoid") on the same two pairs: its log-probs are float32,
    so atol 1e-5 (the observed gap is about 2e-7)."""
    trl_loss = dpo_world.trl_loss("sigmoid")
    torch.testing.assert_close(ours(dpo_world, "sum"), trl_loss.to(F64), rtol=0, atol=1e-5)
    # the chapter's warning: feeding per-token *averages* gives another loss (here 0.65 against 0.42)
    assert abs(ours(dpo_world, "mean").item() - trl_loss.item()) > 0.1


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_dpo_loss_on_averaged_logprobs_is_trl_length_normalised_sigmoid_norm(dpo_world):
    """What the averaged inputs compute is a different, named loss: trl's loss_type="sigmoid_norm"."""
    torch.testing.assert_close(ours(dpo_world, "mean"), dpo_world.trl_loss("sigmoid_norm").to(F64), rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------------------
# PPO

EPS = 0.2
# (advantage, ratio, whether the clip binds): every case of the min on both signs of the advantage
PPO_CASES = [
    (2.0, 1.5, True),  # A > 0, ratio above 1 + eps: the gain is capped at (1 + eps) A
    (2.0, 0.5, False),  # A > 0, ratio below 1 - eps: the harmful direction is never clipped
    (-1.0, 0.5, True),  # A < 0, ratio below 1 - eps: capped at (1 - eps) A
    (-1.0, 1.5, False),  # A < 0, ratio above 1 + eps: not clipped
    (1.0, 1.1, False),  # inside the trust region
    (-3.0, 0.9, False),
]


def ppo_case_tensors():
    adv = t64([a for a, _, _ in PPO_CASES] + [1e6])  # a last, masked-out token with a huge advantage
    ratio = t64([r for _, r, _ in PPO_CASES] + [7.0])
    old = t64([-1.3, -0.2, -2.5, -0.7, -1.0, -4.0, -0.1])
    mask = torch.tensor([True] * len(PPO_CASES) + [False])
    return (old + ratio.log()).reshape(1, -1), old.reshape(1, -1), adv.reshape(1, -1), mask.reshape(1, -1)


def test_ppo_policy_loss_matches_a_hand_computation_with_clipping_on_both_signs():
    logprobs, old, adv, mask = ppo_case_tensors()
    objective = []
    for a, r, binds in PPO_CASES:
        clipped_ratio = min(max(r, 1 - EPS), 1 + EPS)
        objective.append(min(r * a, clipped_ratio * a))
        assert (objective[-1] != r * a) == binds  # the table's own claim, checked by hand
    expected = -sum(objective) / len(PPO_CASES)  # the masked token does not count
    assert ppo_policy_loss(logprobs, old, adv, mask, clip_eps=EPS).item() == pytest.approx(expected, abs=1e-12)
    # the binding cases' values by hand: 1.2 * 2 and 0.8 * (-1)
    assert objective[0] == pytest.approx(2.4) and objective[2] == pytest.approx(-0.8)


def test_ppo_policy_loss_gradient_is_zero_exactly_where_the_clip_binds():
    logprobs, old, adv, mask = ppo_case_tensors()
    logprobs.requires_grad_()
    ppo_policy_loss(logprobs, old, adv, mask, clip_eps=EPS).backward()
    n = len(PPO_CASES)
    # d(-r A / n) / d log pi = -r A / n where unclipped (dr/dlog pi = r); 0 where clipped or masked out
    expected = [0.0 if binds else -r * a / n for a, r, binds in PPO_CASES] + [0.0]
    torch.testing.assert_close(logprobs.grad, t64([expected]), rtol=0, atol=1e-12)
    binds = torch.tensor([b for _, _, b in PPO_CASES] + [True])
    assert torch.all(logprobs.grad[0, binds] == 0)  # exactly zero, not small


def test_ppo_policy_loss_on_policy_is_minus_the_mean_advantage():
    g = torch.Generator().manual_seed(0)
    logprobs, adv = -torch.rand(3, 5, generator=g, dtype=F64), torch.randn(3, 5, generator=g, dtype=F64)
    mask = torch.rand(3, 5, generator=g) > 0.3
    torch.testing.assert_close(ppo_policy_loss(logprobs, logprobs, adv, mask), -adv[mask].mean(), rtol=0, atol=1e-12)


def test_ppo_value_loss_matches_a_hand_computation():
    # (value, old value, return): clip binds upward, not binding, inside, downward not binding, downward binding
    cases = [(1.0, 0.5, 2.0), (1.0, 0.5, 0.0), (0.1, 0.0, 1.0), (-1.0, 0.0, -0.5), (-1.0, 0.0, -2.0)]
    per_token = []
    for v, old, ret in cases:
        v_clip = old + min(max(v - old, -EPS), EPS)
        per_token.append(0.5 * max((v - ret) ** 2, (v_clip - ret) ** 2))
    assert per_token == pytest.approx([0.5 * 1.69, 0.5 * 1.0, 0.5 * 0.81, 0.5 * 0.25, 0.5 * 3.24])
    values = t64([[c[0] for c in cases] + [50.0]])
    old_values = t64([[c[1] for c in cases] + [0.0]])
    returns = t64([[c[2] for c in cases] + [-50.0]])  # the masked-out token would dominate if counted
    mask = torch.tensor([[1, 1, 1, 1, 1, 0]])
    got = ppo_value_loss(values, old_values, returns, mask, clip_eps=EPS)
    assert got.item() == pytest.approx(sum(per_token) / len(cases), abs=1e-12)


# ---------------------------------------------------------------------------------------------------
# GAE

T = 7
# each row's mask: one contiguous run [start, end), at different offsets, some ending before the last column;
# a one-token run and an empty row too
RUNS = [(0, 7), (2, 5), (1, 6), (3, 7), (0, 1), (4, 4)]


def gae_inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(len(RUNS), T, dtype=torch.bool)
    for b, (s, e) in enumerate(RUNS):
        mask[b, s:e] = True
    rewards = torch.randn(len(RUNS), T, generator=g, dtype=F64)
    values = torch.randn(len(RUNS), T, generator=g, dtype=F64)
    garbage = 1e3 * torch.randn(len(RUNS), T, generator=g, dtype=F64)  # off the mask: must be ignored
    return torch.where(mask, rewards, garbage), torch.where(mask, values, -garbage), mask


def gae_by_definition(rewards, values, gamma, lam):
    """A_t = sum_l (gamma lam)^l delta_{t+l} over each row's run, V after the run's end = 0: Python loops."""
    adv = torch.zeros(len(RUNS), T, dtype=F64)
    for b, (s, e) in enumerate(RUNS):
        def v(t, b=b, e=e):
            return values[b, t].item() if t < e else 0.0

        delta = {t: rewards[b, t].item() + gamma * v(t + 1) - v(t) for t in range(s, e)}
        for t in range(s, e):
            adv[b, t] = sum((gamma * lam) ** k * delta[t + k] for k in range(e - t))
    return adv


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.99, 0.9), (0.9, 0.5), (0.5, 1.0), (1.0, 0.0), (0.8, 0.3)])
def test_gae_matches_the_sum_of_discounted_deltas(gamma, lam):
    rewards, values, mask = gae_inputs()
    adv, ret = gae(rewards, values, mask, gamma=gamma, lam=lam)
    expected = gae_by_definition(rewards, values, gamma, lam)
    torch.testing.assert_close(adv, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(ret, torch.where(mask, expected + values, 0.0), rtol=0, atol=1e-12)
    assert torch.all(adv[~mask] == 0) and torch.all(ret[~mask] == 0)
    # a 0/1 float mask is the same mask
    adv_f, ret_f = gae(rewards, values, mask.to(F64), gamma=gamma, lam=lam)
    assert torch.equal(adv_f, adv) and torch.equal(ret_f, ret)


@pytest.mark.parametrize("gamma", [1.0, 0.9])
def test_gae_with_lambda_one_is_the_discounted_reward_to_go_minus_the_value(gamma):
    rewards, values, mask = gae_inputs(seed=1)
    adv, ret = gae(rewards, values, mask, gamma=gamma, lam=1.0)
    to_go = torch.zeros_like(rewards)
    for b, (s, e) in enumerate(RUNS):
        for t in range(s, e):
            to_go[b, t] = sum(gamma**k * rewards[b, t + k].item() for k in range(e - t))
    torch.testing.assert_close(adv, torch.where(mask, to_go - values, 0.0), rtol=0, atol=1e-12)
    torch.testing.assert_close(ret, to_go, rtol=0, atol=1e-12)  # the Monte-Carlo return: values drop out


def test_gae_with_lambda_zero_is_the_one_step_td_error():
    gamma = 0.9
    rewards, values, mask = gae_inputs(seed=2)
    adv, _ = gae(rewards, values, mask, gamma=gamma, lam=0.0)
    next_v = torch.where(mask[:, 1:], values[:, 1:], 0.0)  # the value after each run's end is 0
    next_v = torch.cat([next_v, torch.zeros(len(RUNS), 1, dtype=F64)], 1)
    torch.testing.assert_close(adv, torch.where(mask, rewards + gamma * next_v - values, 0.0), rtol=0, atol=1e-12)


def test_gae_rejects_inputs_of_different_shapes():
    with pytest.raises(ValueError, match=r"one \(B, T\) shape"):
        gae(torch.zeros(2, 5), torch.zeros(2, 4), torch.ones(2, 5))
    with pytest.raises(ValueError, match=r"one \(B, T\) shape"):
        gae(torch.zeros(2, 5), torch.zeros(2, 5), torch.ones(1, 5))


# ---------------------------------------------------------------------------------------------------
# KL estimators


def sampled_kl_estimates(ref_shift_scale: float, n: int = 100_000):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(10, generator=g, dtype=F64)
    ref_logits = logits + ref_shift_scale * torch.randn(10, generator=g, dtype=F64)
    logp, ref_logp = F.log_softmax(logits, -1), F.log_softmax(ref_logits, -1)
    exact = (logp.exp() * (logp - ref_logp)).sum().item()
    tokens = torch.multinomial(logp.exp(), n, replacement=True, generator=g)  # sampled from pi
    k1, k3 = kl_estimates(logp[tokens], ref_logp[tokens])
    return exact, k1, k3


@pytest.mark.parametrize("scale", [0.2, 1.0])
def test_k1_and_k3_are_unbiased_estimates_of_the_kl(scale):
    exact, k1, k3 = sampled_kl_estimates(scale)
    n = k1.numel()
    for k in (k1, k3):  # within 4 standard errors of the exact KL(pi || pi_ref)
        assert abs(k.mean().item() - exact) < 4 * k.std().item() / math.sqrt(n)
    assert (k1 < 0).any()  # k1 goes negative on single tokens, though its mean does not


def test_k3_is_never_negative():
    _, _, k3 = sampled_kl_estimates(1.0)
    assert torch.all(k3 >= 0)
    log_ratio = torch.cat([torch.linspace(-40, 40, 2001, dtype=F64), t64([1e-300, -1e-300, 1e-12, -1e-12, 0.0])])
    _, k3 = kl_estimates(torch.zeros_like(log_ratio), log_ratio)  # ref_logprobs - logprobs = log rho
    assert torch.all(k3 >= 0)


def test_k3_has_lower_variance_than_k1_when_the_distributions_are_close():
    _, k1, k3 = sampled_kl_estimates(0.2)
    assert k3.var().item() < 0.1 * k1.var().item()  # k3 ~ (log rho)^2 / 2 is second order in a small log rho


def test_kl_estimates_by_hand():
    k1, k3 = kl_estimates(t64([-1.0]), t64([-1.5]))  # log rho = -0.5
    assert k1.item() == pytest.approx(0.5, abs=1e-15)
    assert k3.item() == pytest.approx(math.exp(-0.5) - 1 + 0.5, abs=1e-15)


# ---------------------------------------------------------------------------------------------------
# whiten (trl 1.16 has no masked_whiten any more: checked against its definition)


def whiten_inputs():
    g = torch.Generator().manual_seed(0)
    x = 3.0 + 2.5 * torch.randn(4, 6, generator=g, dtype=F64)
    mask = torch.rand(4, 6, generator=g) > 0.35
    return x, mask


def test_whiten_gives_mean_zero_and_unbiased_std_one_on_the_mask_and_zero_off_it():
    x, mask = whiten_inputs()
    out = whiten(x, mask)
    assert abs(out[mask].mean().item()) < 1e-12
    assert out[mask].std(unbiased=True).item() == pytest.approx(1.0, abs=1e-8)  # eps 1e-8 in the root: ~1e-9
    assert torch.all(out[~mask] == 0)
    expected = (x[mask] - x[mask].mean()) / x[mask].std(unbiased=True)
    torch.testing.assert_close(out[mask], expected, rtol=1e-8, atol=1e-10)


def test_whiten_ignores_values_off_the_mask():
    x, mask = whiten_inputs()
    torch.testing.assert_close(whiten(torch.where(mask, x, 1e6), mask), whiten(x, mask), rtol=0, atol=1e-12)


def test_whiten_without_shifting_the_mean_keeps_it():
    x, mask = whiten_inputs()
    out = whiten(x, mask, shift_mean=False)
    assert out[mask].mean().item() == pytest.approx(x[mask].mean().item(), abs=1e-12)
    assert out[mask].std(unbiased=True).item() == pytest.approx(1.0, abs=1e-8)
    assert torch.all(out[~mask] == 0)


# ---------------------------------------------------------------------------------------------------
# GRPO


def test_grpo_advantages_match_a_hand_computation():
    rewards = [1.0, 0.0, 0.0, 1.0, 3.0, 1.0, 2.0, 0.0]
    expected = []
    for group in (rewards[:4], rewards[4:]):
        mean = sum(group) / 4
        std = math.sqrt(sum((r - mean) ** 2 for r in group) / 3)  # unbiased: n - 1
        expected += [(r - mean) / (std + 1e-4) for r in group]
    got = grpo_advantages(t64(rewards), group_size=4)
    torch.testing.assert_close(got, t64(expected), rtol=0, atol=1e-12)
    assert got[0].item() == pytest.approx(0.5 / (math.sqrt(1 / 3) + 1e-4), abs=1e-12)


def test_grpo_group_with_equal_rewards_teaches_nothing():
    got = grpo_advantages(t64([0.5, 0.5, 0.5, 1.0, 0.0, 3.0]), group_size=3)
    assert torch.all(got[:3] == 0)
    assert torch.all(got[3:] != 0)


@pytest.mark.parametrize("group_size", [1, 0, -2, True, 2.0, "2"])
def test_grpo_advantages_reject_a_bad_group_size(group_size):
    with pytest.raises(ValueError, match="group_size must be an int >= 2"):
        grpo_advantages(torch.zeros(4), group_size)


@pytest.mark.parametrize("shape", [(5,), (2, 4)])
def test_grpo_advantages_reject_rewards_that_are_not_whole_groups(shape):
    with pytest.raises(ValueError, match=r"rewards must be \(prompts \* group_size,\)"):
        grpo_advantages(torch.zeros(shape), group_size=2)
