"""The generated language (aigc_book.text.languages) and the n-gram baseline (aigc_book.models.ngram)."""

import itertools
import math

import numpy as np
import pytest
import torch

from aigc_book.models.ngram import NGramLM
from aigc_book.text.languages import BracketLanguage, LanguageConfig


@pytest.fixture(scope="module")
def lang():
    return BracketLanguage()


def test_vocabulary_is_small_and_round_trips(lang):
    assert lang.vocab_size == 29
    text = "^x(ab[ef]c)z"
    assert lang.decode(lang.encode(text)) == text


def test_unknown_symbol_is_rejected_with_its_name(lang):
    with pytest.raises(ValueError, match="'Q' is not in the language's vocabulary"):
        lang.encode("^Q")


def test_sampling_is_deterministic_for_a_seed(lang):
    assert torch.equal(lang.sample(50, 20, seed=3), lang.sample(50, 20, seed=3))
    assert not torch.equal(lang.sample(50, 20, seed=3), lang.sample(50, 20, seed=4))


def test_samples_start_with_bos_and_are_well_formed(lang):
    seqs = lang.sample(300, 40, seed=0)
    assert seqs.shape == (300, 41) and (seqs[:, 0] == lang.bos_id).all() and (seqs[:, 1:] != lang.bos_id).all()
    assert all(lang.is_well_formed(row) for row in seqs)


def test_closer_is_determined_by_a_bracket_opened_far_back(lang):
    # After "[ ... ( ... )" the only possible closer is "]", whatever came in between.
    p = lang.next_token_probs(lang.encode("^[ef(abba)"))
    assert p.sum() == pytest.approx(1.0)
    assert p[lang.stoi["]"]] == pytest.approx(lang.config.p_close)
    assert p[lang.stoi[")"]] == 0 and p[lang.stoi[">"]] == 0
    # words agree with the open bracket: inside "[", only e f g h
    assert p[lang.stoi["e"]] > 0 and p[lang.stoi["a"]] == 0


def test_next_token_table_rows_equal_next_token_probs_of_each_prefix(lang):
    for row in lang.sample(5, 30, seed=7):
        table = lang.next_token_table(row)
        assert table.shape == (31, lang.vocab_size)
        for t in range(31):
            np.testing.assert_array_equal(table[t], lang.next_token_probs(row[: t + 1]))
        np.testing.assert_allclose(table.sum(1), 1.0, atol=1e-12)
        # the observed next token always had positive probability
        assert (table[np.arange(30), row[1:].numpy()] > 0).all()


def test_next_token_table_refuses_an_impossible_prefix(lang):
    with pytest.raises(ValueError, match="impossible"):
        lang.next_token_table(lang.encode("^(]"))
    with pytest.raises(ValueError, match="BOS"):
        lang.next_token_table(lang.encode("(a)"))


def test_impossible_sequences_have_zero_probability(lang):
    for text in ("^(]", "^a", "^)", "^((((("):  # wrong closer, word of the wrong group, close at depth 0, too deep
        assert lang.log_prob(lang.encode(text)) == -math.inf
        assert not lang.is_well_formed(lang.encode(text))
    with pytest.raises(ValueError, match="BOS"):
        lang.log_prob(lang.encode("x"))


def test_probabilities_sum_to_one_and_floor_equals_brute_force_entropy():
    """Enumerate every string of length 4 of a small language: sum p = 1 and H/4 = entropy_floor(4)."""
    small = BracketLanguage(LanguageConfig(n_types=2, max_depth=2, word_weights=(2.0, 1.0)))
    V, T = small.vocab_size, 4
    total_p, entropy = 0.0, 0.0
    for tail in itertools.product(range(1, V), repeat=T):
        lp = small.log_prob((0,) + tail)
        if lp > -math.inf:
            total_p += math.exp(lp)
            entropy -= math.exp(lp) * lp
    assert total_p == pytest.approx(1.0, abs=1e-12)
    assert entropy / T == pytest.approx(small.entropy_floor(T), abs=1e-12)


def test_entropy_floor_matches_monte_carlo_estimate(lang):
    """-log p(x)/T of sampled sequences averages to the exact floor (within 4 standard errors)."""
    T, n = 48, 1500
    nll = np.array([-lang.log_prob(row) / T for row in lang.sample(n, T, seed=11)])
    se = nll.std(ddof=1) / math.sqrt(n)
    assert abs(nll.mean() - lang.entropy_floor(T)) < 4 * se
    assert se < 0.01  # the check is sharp enough to catch a wrong floor


def test_entropy_rate_is_the_limit_of_the_floor(lang):
    assert lang.entropy_floor(5000) == pytest.approx(lang.entropy_rate(), abs=2e-3)
    assert lang.entropy_floor(1) == pytest.approx(lang.depth_entropies()[0])


def test_bad_config_is_rejected_with_a_reason():
    with pytest.raises(ValueError, match="p_open \\+ p_close must be < 1"):
        LanguageConfig(p_open=0.6, p_close=0.5)
    with pytest.raises(ValueError, match="n_types"):
        LanguageConfig(n_types=9)
    with pytest.raises(ValueError, match="exactly one of seed= or rng="):
        BracketLanguage().sample(2, 3)


def test_ngram_matches_hand_counts():
    lm = NGramLM(2, vocab_size=3).fit([[0, 1, 2, 1, 2]])
    p1_2 = (2 + 2 / 3) / (4 + 2)  # unigram Witten-Bell: c(2)=2, 4 tokens, 2 types, uniform 1/3 below
    p2 = (2 + 1 * p1_2) / (2 + 1)  # after "1": "2" seen twice, one type
    assert np.exp(NGramLM(2, 3).fit([[0, 1, 2, 1, 2]]).log_probs([[0, 1, 2]])[0, 1]) == pytest.approx(p2)
    assert np.exp(lm.log_probs([[0, 1, 2]])).sum() < 2  # two probabilities, each < 1
    with pytest.raises(ValueError, match="token ids must be in"):
        NGramLM(2, 3).fit([[0, 5]])
    with pytest.raises(RuntimeError, match="fit"):
        NGramLM(2, 3).log_probs([[0, 1]])


def test_ngram_probabilities_are_normalised():
    rng = np.random.default_rng(0)
    lm = NGramLM(3, 5).fit(rng.integers(0, 5, size=(50, 20)))
    ctx = np.array([[1, 2, w] for w in range(5)])
    assert np.exp(lm.log_probs(ctx)[:, 1]).sum() == pytest.approx(1.0)


def test_ngram_stalls_above_the_floor(lang):
    """The best of orders 2-5 stays well above the entropy floor: brackets need unbounded memory."""
    train, val = lang.sample(4000, 48, seed=1), lang.sample(400, 48, seed=2)
    best = min(NGramLM(n, lang.vocab_size).fit(train).cross_entropy(val) for n in (2, 3, 4, 5))
    assert best > lang.entropy_floor(48) + 0.15
