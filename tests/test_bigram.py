"""Tests for aigc_book.models.bigram (chapter 1): counting, smoothing, scoring, sampling, bad input."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F

from aigc_book.models.bigram import BigramLM, count_bigrams
from aigc_book.text.char_tokenizer import CharTokenizer


def test_vocab_is_sorted_and_round_trips():
    vocab = CharTokenizer.train("banana")
    assert vocab.itos == ["a", "b", "n"]
    ids = vocab.encode_tensor("banana")
    assert ids.tolist() == [1, 0, 2, 0, 2, 0]
    assert vocab.decode(ids) == "banana"


def test_counts_cover_every_adjacent_pair():
    vocab = CharTokenizer.train("banana")
    counts = count_bigrams(vocab.encode_tensor("banana"), len(vocab))
    a, b, n = 0, 1, 2
    assert counts.sum().item() == len("banana") - 1
    assert counts[b, a] == 1 and counts[a, n] == 2 and counts[n, a] == 2
    assert counts[a, a] == 0 and counts[a, b] == 0


@pytest.mark.parametrize("k", [0.0, 0.1, 1.0])
def test_probabilities_are_rows_that_sum_to_one(k):
    model = BigramLM.from_text("hello world, hello bigram", k=k)
    P = model.probs()
    assert P.dtype == torch.float64
    assert (P >= 0).all()
    torch.testing.assert_close(P.sum(dim=1), torch.ones(model.vocab_size, dtype=torch.float64))


def test_cross_entropy_equals_hand_computation_on_banana():
    # Add-one smoothing, V = 3: p(a|b) = (1+1)/(1+3) = 1/2, p(n|a) = p(a|n) = (2+1)/(2+3) = 3/5.
    model = BigramLM.from_text("banana", k=1.0)
    prob_of_pairs = Fraction(1, 2) * Fraction(3, 5) ** 4
    expected = -math.log(prob_of_pairs) / 5
    assert model.cross_entropy("banana") == pytest.approx(expected, rel=1e-12)
    assert model.cross_entropy("banana", bits=True) == pytest.approx(expected / math.log(2), rel=1e-12)
    assert model.perplexity("banana") == pytest.approx(math.exp(expected), rel=1e-12)


def test_cross_entropy_matches_torch_cross_entropy():
    train, test = "the cat sat on the mat. " * 3, "a cat at the hat"
    vocab = CharTokenizer.train(train + test)
    model = BigramLM.from_text(train, k=0.5, vocab=vocab)
    ids = vocab.encode_tensor(test)
    ref = F.cross_entropy(model.log_probs()[ids[:-1]], ids[1:]).item()
    assert model.cross_entropy(test) == pytest.approx(ref, rel=1e-12)


def test_unsmoothed_model_gives_infinite_cross_entropy_to_unseen_pairs():
    vocab = CharTokenizer.train("abc")
    model = BigramLM.from_text("abab", k=0.0, vocab=vocab)
    assert model.probs()[vocab.index("a"), vocab.index("b")] == 1.0
    assert math.isinf(model.cross_entropy("ac"))
    # 'c' never appears as a previous character: its row falls back to uniform.
    torch.testing.assert_close(model.probs()[vocab.index("c")], torch.full((3,), 1 / 3, dtype=torch.float64))


def test_smoothing_moves_mass_to_unseen_pairs():
    vocab = CharTokenizer.train("abc")
    small = BigramLM.from_text("abab", k=0.01, vocab=vocab).probs()
    large = BigramLM.from_text("abab", k=10.0, vocab=vocab).probs()
    a, c = vocab.index("a"), vocab.index("c")
    assert 0 < small[a, c] < large[a, c] < 1 / 3
    # As k grows the rows approach uniform.
    huge = BigramLM.from_text("abab", k=1e9, vocab=vocab).probs()
    torch.testing.assert_close(huge, torch.full((3, 3), 1 / 3, dtype=torch.float64))


def test_sampling_is_deterministic_under_a_seed_and_uses_only_seen_pairs():
    model = BigramLM.from_text("abcabcabc", k=0.0)
    s1 = model.sample(50, torch.Generator().manual_seed(123), start="a")
    s2 = model.sample(50, torch.Generator().manual_seed(123), start="a")
    assert s1 == s2 and len(s1) == 50
    assert s1 == ("abc" * 17)[:50]  # k = 0 on a cycle: the only possible path
    smoothed = BigramLM.from_text("hello world", k=1.0)
    a = smoothed.sample(40, torch.Generator().manual_seed(1))
    b = smoothed.sample(40, torch.Generator().manual_seed(1))
    c = smoothed.sample(40, torch.Generator().manual_seed(2))
    assert a == b and a != c
    assert set(a) <= set(smoothed.vocab.itos)
    assert smoothed.sample(0, torch.Generator()) == ""


def test_bad_input_raises_clear_errors():
    with pytest.raises(TypeError, match="must be a str"):
        BigramLM.from_text(b"bytes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least 2"):
        BigramLM.from_text("a")
    with pytest.raises(ValueError, match=">= 0"):
        BigramLM.from_text("abc", k=-1.0)
    with pytest.raises(ValueError, match="finite"):
        BigramLM.from_text("abc", k=float("nan"))
    with pytest.raises(TypeError, match="must be a number"):
        BigramLM.from_text("abc", k="1")  # type: ignore[arg-type]
    model = BigramLM.from_text("abc")
    with pytest.raises(ValueError, match=r"'z' is not in the tokenizer's vocabulary.*CharTokenizer.train"):
        model.cross_entropy("az")
    with pytest.raises(ValueError, match="at least 2"):
        model.cross_entropy("a")
    with pytest.raises(TypeError, match="torch.Generator"):
        model.sample(5, generator=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="non-negative"):
        model.sample(-1, torch.Generator())
    with pytest.raises(ValueError, match="not in the tokenizer's vocabulary"):
        model.sample(3, torch.Generator(), start="z")
    with pytest.raises(ValueError, match="distinct"):
        CharTokenizer(["a", "a"])
    with pytest.raises(ValueError, match="out of range"):
        model.vocab.decode([7])


def test_negative_ids_are_refused_rather_than_wrapped_around():
    with pytest.raises(ValueError, match="out of range"):
        CharTokenizer.train("abc").decode([-1])
