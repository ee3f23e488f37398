"""Best-of-n: the KL formula against the exact distribution, the subset estimator, and the sampler."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from aigc_book.models.gpt import GPT
from aigc_book.models.transformer import TransformerConfig
from aigc_book.rlhf.best_of_n import (
    best_of_n,
    best_of_n_distribution,
    best_of_n_expectation,
    best_of_n_kl,
    kl_divergence,
)
from aigc_book.rlhf.heads import RewardModel
from aigc_book.rlhf.rollouts import sample_responses
from aigc_book.tasks.instructions import CHARS
from aigc_book.text.chat_tokenizer import ChatTokenizer

TOK = ChatTokenizer(CHARS)
pytestmark = pytest.mark.usefixtures("one_cpu_thread")




@pytest.fixture
def chat_gpt() -> GPT:
    """A tiny random GPT over the chat tokenizer's vocabulary (1 layer, 2 heads, 32 wide)."""
    torch.manual_seed(0)
    return GPT(TransformerConfig(vocab_size=TOK.vocab_size, block_size=48, n_layer=1, n_head=2, n_embd=32)).eval()


# ---- the KL of best-of-n -----------------------------------------------------------------------


def test_best_of_n_kl_by_hand():
    assert best_of_n_kl(1) == 0.0  # best of one is the policy itself
    assert best_of_n_kl(2) == pytest.approx(math.log(2) - 0.5)
    assert best_of_n_kl(np.int64(16)) == pytest.approx(math.log(16) - 15 / 16)
    for bad in (0, -3, 2.5, True, "4"):
        with pytest.raises(ValueError, match="n must be an int >= 1"):
            best_of_n_kl(bad)


@pytest.mark.parametrize("n", [2, 4, 16, 64])
def test_formula_is_nearly_exact_with_many_distinct_outcomes(n):
    K = 20_000
    p = np.full(K, 1 / K)
    rewards = np.random.default_rng(0).permutation(K)  # distinct, in no particular order
    exact = kl_divergence(best_of_n_distribution(p, rewards, n), p)
    assert exact <= best_of_n_kl(n)  # an upper bound (Beirami et al. 2024) ...
    assert exact == pytest.approx(best_of_n_kl(n), abs=1e-6)  # ... and a tight one here


def test_formula_overstates_the_kl_with_few_outcomes_or_ties():
    n = 16
    two = np.array([0.5, 0.5])
    exact_two = kl_divergence(best_of_n_distribution(two, [0.0, 1.0], n), two)
    # Two outcomes: the best of 16 is almost surely the better one, so the KL is about log 2, whatever n.
    assert exact_two == pytest.approx(math.log(2), abs=1e-3)
    assert exact_two < 0.4 * best_of_n_kl(n)
    # Many outcomes, but the reward takes only 3 values: ties cap the KL too.
    K = 3000
    p = np.full(K, 1 / K)
    tied = np.arange(K) % 3
    assert kl_divergence(best_of_n_distribution(p, tied, n), p) <= math.log(3) + 1e-12 < best_of_n_kl(n)


def test_distribution_by_hand_and_with_n_one():
    p = np.array([0.2, 0.5, 0.3])
    r = np.array([2.0, 0.0, 1.0])  # order by reward: outcome 1, then 2, then 0
    # F = 0.5, 0.8, 1.0 in reward order; P = F^2 - F_prev^2.
    np.testing.assert_allclose(best_of_n_distribution(p, r, 2), [1 - 0.64, 0.25, 0.64 - 0.25])
    np.testing.assert_allclose(best_of_n_distribution(p, r, 1), p)
    # Tied outcomes share their group's probability in proportion to p: 0.5 and 0.3 tie at the bottom.
    np.testing.assert_allclose(best_of_n_distribution(p, [1.0, 0.0, 0.0], 2), [1 - 0.64, 0.64 * 5 / 8, 0.64 * 3 / 8])


def test_distribution_matches_simulated_best_of_n_picks():
    p = torch.tensor([0.1, 0.25, 0.05, 0.3, 0.2, 0.1], dtype=torch.float64)
    rewards = torch.tensor([3.0, 1.0, 5.0, 1.0, 2.0, 0.0], dtype=torch.float64)  # outcomes 1 and 3 tie
    n, trials = 3, 200_000
    draws = torch.multinomial(p, trials * n, replacement=True, generator=torch.Generator().manual_seed(0))
    draws = draws.view(trials, n)
    picks = draws.gather(1, rewards[draws].argmax(1, keepdim=True)).squeeze(1)  # the first best draw
    freq = torch.bincount(picks, minlength=len(p)).double() / trials
    exact = torch.from_numpy(best_of_n_distribution(p, rewards, n))
    assert float(exact.sum()) == pytest.approx(1.0)
    sd = (exact * (1 - exact) / trials).sqrt()
    assert ((freq - exact).abs() <= 4 * sd + 1e-12).all(), (freq, exact)


def test_kl_divergence_by_hand_and_edge_cases():
    assert kl_divergence([0.5, 0.5], [0.25, 0.75]) == pytest.approx(0.5 * math.log(2) + 0.5 * math.log(2 / 3))
    assert kl_divergence([0.0, 1.0], [0.5, 0.5]) == pytest.approx(math.log(2))  # 0 log 0 counts 0
    assert kl_divergence([0.5, 0.5], [1.0, 0.0]) == math.inf
    assert kl_divergence([0.3, 0.7], [0.3, 0.7]) == 0.0


@pytest.mark.parametrize("call, match", [
    (lambda: kl_divergence([0.5, 0.6], [0.5, 0.5]), "p must sum to 1"),
    (lambda: kl_divergence([0.5, 0.5], [0.2, 0.3, 0.5]), "one shape"),
    (lambda: kl_divergence([-0.5, 1.5], [0.5, 0.5]), "probabilities >= 0"),
    (lambda: best_of_n_distribution([0.5, 0.5], [1.0], 2), "shape of probs"),
    (lambda: best_of_n_distribution([0.5, 0.5], [1.0, float("nan")], 2), "rewards must be finite"),
    (lambda: best_of_n_distribution([], [], 2), "non-empty 1-D"),
    (lambda: best_of_n_distribution([0.5, 0.5], [0.0, 1.0], 0), "n must be an int"),
])
def test_distribution_and_kl_reject_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ---- the subset estimator ----------------------------------------------------------------------


def brute_force(proxy: np.ndarray, gold: np.ndarray, n: int) -> tuple[float, float]:
    """Average over every n-subset of every row of the pick with the highest proxy (the first on ties)."""
    g, r = [], []
    for row_p, row_g in zip(proxy, gold):
        for subset in itertools.combinations(range(len(row_p)), n):
            best = subset[int(np.argmax(row_p[list(subset)]))]  # argmax: the first maximum
            g.append(row_g[best])
            r.append(row_p[best])
    return float(np.mean(g)), float(np.mean(r))


def test_subset_estimator_equals_enumerating_every_subset():
    rng = np.random.default_rng(0)
    proxy = rng.integers(0, 4, size=(3, 7)).astype(float)  # few values: many ties to break
    gold = rng.normal(size=(3, 7))
    out = best_of_n_expectation(proxy, gold, range(1, 8))
    for i, n in enumerate(range(1, 8)):
        g, r = brute_force(proxy, gold, n)
        assert out["gold"][i] == pytest.approx(g, abs=1e-12)
        assert out["proxy"][i] == pytest.approx(r, abs=1e-12)
    np.testing.assert_array_equal(out["n"], np.arange(1, 8))
    np.testing.assert_allclose(out["kl"], [best_of_n_kl(n) for n in range(1, 8)])
    # n = 1 is the plain mean; n = N takes the best sample of each row.
    assert out["gold"][0] == pytest.approx(gold.mean())
    assert out["proxy"][-1] == pytest.approx(proxy.max(1).mean())
    assert np.all(np.diff(out["proxy"]) >= -1e-12)  # more samples never lower the proxy reward


def test_subset_estimator_handles_many_samples_and_torch_input():
    proxy = torch.randn(2, 2000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = best_of_n_expectation(proxy, proxy, [1, 1000, 2000])
    assert np.isfinite(out["gold"]).all()
    assert out["gold"][2] == pytest.approx(float(proxy.max(1).values.mean()))
    # The expected maximum of n standard normals grows like sqrt(2 log n): about 3.24 for n = 1000.
    assert 3.0 < out["gold"][1] < 3.5


@pytest.mark.parametrize("proxy, gold, ns, match", [
    (np.zeros((2, 3)), np.zeros((2, 4)), [1], "one \\(prompts, samples\\) shape"),
    (np.zeros(3), np.zeros(3), [1], "non-empty \\(prompts, samples\\)"),
    (np.zeros((2, 3)), np.zeros((2, 3)), [4], "every n in \\[1, 3\\]"),
    (np.zeros((2, 3)), np.zeros((2, 3)), [], "non-empty"),
    (np.zeros((2, 3)), np.zeros((2, 3)), [0], "every n in ns must be an int >= 1"),
    (np.full((2, 3), np.nan), np.zeros((2, 3)), [1], "proxy must be finite"),
])
def test_subset_estimator_rejects_bad_input(proxy, gold, ns, match):
    with pytest.raises(ValueError, match=match):
        best_of_n_expectation(proxy, gold, ns)


# ---- best-of-n on a policy ---------------------------------------------------------------------


def count_a(responses) -> torch.Tensor:
    """A toy reward with many ties: how many 'a's the response has."""
    return torch.tensor([float(t.count("a")) for t in responses.texts])


def test_best_of_n_keeps_the_highest_reward_first_on_ties(chat_gpt):
    prompts = ["reverse ab", "sort ba", "add 1+2"]
    out = best_of_n(chat_gpt, TOK, prompts, count_a, n=6, max_new_tokens=8, generator=torch.Generator().manual_seed(0))
    samples = sample_responses(chat_gpt, TOK, prompts, max_new_tokens=8, generator=torch.Generator().manual_seed(0),
                               num_return_sequences=6)
    scores = count_a(samples).view(3, 6)
    assert out.prompts == prompts
    for i in range(3):
        first_best = int((scores[i] == scores[i].max()).nonzero()[0])
        assert out.texts[i] == samples.texts[6 * i + first_best]
        assert torch.equal(out.tokens[i], samples.tokens[6 * i + first_best])
    assert float(count_a(out).mean()) >= float(scores.mean())


def test_best_of_n_uses_a_reward_models_score(chat_gpt):
    rm = RewardModel(chat_gpt)
    with torch.no_grad():
        rm.head.weight.normal_(generator=torch.Generator().manual_seed(1))
    prompts = ["reverse ab", "sort ba"]
    out = best_of_n(chat_gpt, TOK, prompts, rm, n=4, max_new_tokens=6, generator=torch.Generator().manual_seed(2))
    samples = sample_responses(chat_gpt, TOK, prompts, max_new_tokens=6, generator=torch.Generator().manual_seed(2),
                               num_return_sequences=4)
    best = rm.score(samples).detach().view(2, 4).argmax(1)
    assert out.texts == [samples.texts[4 * i + int(b)] for i, b in enumerate(best)]


def test_best_of_n_rejects_bad_arguments(chat_gpt):
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="n must be an int >= 1"):
        best_of_n(chat_gpt, TOK, ["add 1+2"], count_a, n=0, max_new_tokens=4, generator=g)
    with pytest.raises(ValueError, match="max_new_tokens"):
        best_of_n(chat_gpt, TOK, ["add 1+2"], count_a, n=2, max_new_tokens=0, generator=g)
    with pytest.raises(TypeError, match="torch.Generator"):
        best_of_n(chat_gpt, TOK, ["add 1+2"], count_a, n=2, max_new_tokens=4, generator=None)
    with pytest.raises(TypeError, match="reward_fn"):
        best_of_n(chat_gpt, TOK, ["add 1+2"], "gold", n=2, max_new_tokens=4, generator=g)
    with pytest.raises(ValueError, match="no prompts"):
        best_of_n(chat_gpt, TOK, [], count_a, n=2, max_new_tokens=4, generator=g)
