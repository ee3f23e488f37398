"""Metrics: SQuAD's scores as its official script computes them, span scores, BLEU by hand and by sacrebleu."""

import math
import re
import string
from collections import Counter

import pytest
import sacrebleu
import torch
import torch.nn.functional as F

from aigc_book.tasks.metrics import (
    accuracy,
    bleu,
    bleu_by_hand,
    brevity_penalty,
    chrf,
    modified_precision,
    normalize_answer,
    perplexity,
    span_exact_match,
    span_f1,
    squad_exact_match,
    squad_f1,
    squad_scores,
)

# ---- the reference: SQuAD v1.1's official evaluate-v1.1.py, its functions as published -------------


def ref_normalize_answer(s):
    def remove_articles(text):
        return re.sub(r"\b(a|an|the)\b", " ", text)

    def white_space_fix(text):
        return " ".join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    def lower(text):
        return text.lower()

    return white_space_fix(remove_articles(remove_punc(lower(s))))


def ref_f1_score(prediction, ground_truth):
    prediction_tokens = ref_normalize_answer(prediction).split()
    ground_truth_tokens = ref_normalize_answer(ground_truth).split()
    common = Counter(prediction_tokens) & Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(prediction_tokens)
    recall = 1.0 * num_same / len(ground_truth_tokens)
    return (2 * precision * recall) / (precision + recall)


def ref_exact_match_score(prediction, ground_truth):
    return ref_normalize_answer(prediction) == ref_normalize_answer(ground_truth)


PAIRS = [
    ("The Eiffel Tower", "eiffel tower"),
    ("in 1889.", "1889"),
    ("a  cat, an owl and the dog", "cat owl dog"),
    ("Denver Broncos", "the Denver Broncos win"),
    ("theater", "the theater"),  # 'the' inside a word is not an article
    ("", "anything"),
    ("( a b )", "( b )"),  # brackets are punctuation; 'a' is an article
    ("x x y", "x y y"),
    ("Ünïcode—dash", "ünïcode—dash"),
]


@pytest.mark.parametrize("prediction, truth", PAIRS)
def test_squad_metrics_equal_the_official_script(prediction, truth):
    assert normalize_answer(prediction) == ref_normalize_answer(prediction)
    assert squad_exact_match(prediction, truth) == float(ref_exact_match_score(prediction, truth))
    assert squad_f1(prediction, truth) == pytest.approx(ref_f1_score(prediction, truth), abs=1e-15)


def test_squad_f1_counts_a_bag_of_tokens_by_hand():
    # "x x y" vs "x y y": common = {x: 1, y: 1} -> precision 2/3, recall 2/3, F1 2/3
    assert squad_f1("x x y", "x y y") == pytest.approx(2 / 3)
    assert squad_f1("Denver Broncos", "the Denver Broncos win") == pytest.approx(2 * 1 * (2 / 3) / (1 + 2 / 3))


def test_squad_scores_take_the_best_reference_and_report_percent():
    out = squad_scores(["Denver Broncos", "1889"], [["Broncos", "denver broncos"], ["in 1890"]])
    assert out == {"exact_match": 50.0, "f1": 50.0}


def test_squad_scores_refuse_mismatched_or_empty_references():
    with pytest.raises(ValueError, match="one prediction per question"):
        squad_scores(["a"], [["a"], ["b"]])
    with pytest.raises(ValueError, match="non-empty list"):
        squad_scores(["a"], ["a"])  # a bare string where a list of references belongs


def test_span_metrics_compare_positions_by_hand():
    # predicted 2..5, gold 4..7: 2 shared positions, precision 2/4, recall 2/4 -> F1 1/2
    assert span_f1([2], [5], [4], [7]) == pytest.approx(0.5)
    assert span_f1([0], [1], [3], [4]) == 0.0
    assert span_exact_match([2, 3], [5, 4], [2, 3], [5, 5]) == 0.5
    assert span_f1([3, 1], [4, 1], [3, 1], [4, 1]) == 1.0


def test_span_metrics_refuse_end_before_start():
    with pytest.raises(ValueError, match="end >= start"):
        span_f1([5], [2], [1], [3])
    with pytest.raises(ValueError, match="one length"):
        span_exact_match([1, 2], [3], [1], [3])


def test_perplexity_of_a_uniform_guess_is_the_vocabulary_size():
    assert perplexity(math.log(29)) == pytest.approx(29)
    logits = torch.zeros(3, 7, dtype=torch.float64)
    nll = F.cross_entropy(logits, torch.tensor([0, 3, 6])).item()
    assert perplexity(nll) == pytest.approx(7, rel=1e-12)


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf")])
def test_perplexity_refuses_impossible_losses(bad):
    with pytest.raises(ValueError, match="finite number >= 0"):
        perplexity(bad)


def test_accuracy_counts_equal_positions_and_refuses_bad_shapes():
    assert accuracy(torch.tensor([1, 2, 3, 4]), torch.tensor([1, 0, 3, 0])) == 0.5
    with pytest.raises(ValueError, match="same shape"):
        accuracy([1, 2], [1])
    with pytest.raises(ValueError, match="empty"):
        accuracy([], [])


def test_modified_precision_clips_repeated_ngrams():
    # Papineni et al.'s example: "the the the the the the the" against a reference with two "the"
    assert modified_precision(["the"] * 7, [["the", "cat", "is", "on", "the", "mat"]], 1) == (2, 7)


def test_bleu_matches_a_hand_computation_and_sacrebleu():
    hyp, ref = "the cat sat on the mat", "the cat sat on the red mat"
    # clipped n-gram precisions by hand: 6/6, 4/5 ("the mat" is not in the reference), 3/4, 2/3
    h, r = hyp.split(), [ref.split()]
    assert [modified_precision(h, r, n) for n in (1, 2, 3, 4)] == [(6, 6), (4, 5), (3, 4), (2, 3)]
    assert brevity_penalty(6, 7) == pytest.approx(math.exp(1 - 7 / 6))  # shorter than the reference
    expected = 100 * math.exp(1 - 7 / 6) * (1 * 4 / 5 * 3 / 4 * 2 / 3) ** 0.25
    assert bleu_by_hand([h], [r]) == pytest.approx(expected, abs=1e-9)
    assert bleu([hyp], [ref]) == pytest.approx(expected, abs=1e-9)
    stats = sacrebleu.corpus_bleu([hyp], [[ref]])
    assert stats.counts == [6, 4, 3, 2] and stats.totals == [6, 5, 4, 3]


def test_bleu_is_corpus_level_not_a_mean_of_sentence_scores():
    hyps = ["the cat sat on the mat", "a dog ran in the park today"]
    refs = [["the cat sat on the red mat", "a cat sat on the mat"], ["a dog ran in a park", "the dog ran in the park"]]
    by_hand = bleu_by_hand([h.split() for h in hyps], [[r.split() for r in rs] for rs in refs])
    ours = bleu(hyps, refs)
    streams = [[rs[0] for rs in refs], [rs[1] for rs in refs]]  # sacrebleu wants one list per reference
    assert ours == pytest.approx(sacrebleu.corpus_bleu(hyps, streams).score, abs=1e-9)
    assert ours == pytest.approx(by_hand, abs=1e-9)
    sentence_mean = sum(bleu([h], [rs]) for h, rs in zip(hyps, refs)) / 2
    assert abs(ours - sentence_mean) > 0.1


def test_chrf_goes_through_sacrebleu():
    hyps, refs = ["the cat sat", "hello world"], ["the cat sat down", "hello there world"]
    assert chrf(hyps, refs) == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score, abs=1e-12)
    assert chrf(["abc def"], ["abc def"]) == pytest.approx(100.0)


def test_bleu_refuses_references_that_do_not_line_up():
    with pytest.raises(ValueError, match="references of each hypothesis"):
        bleu(["a b", "c d"], ["a b"])
    with pytest.raises(ValueError, match="same number"):
        bleu(["a b", "c d"], [["a b"], ["c d", "c e"]])
    with pytest.raises(ValueError, match="non-empty list"):
        chrf("a b", ["a b"])
