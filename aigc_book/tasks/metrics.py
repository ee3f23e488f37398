"""Evaluation metrics: perplexity, accuracy, SQuAD's exact match and F1, BLEU and chrF.

Introduced in chapter 4, section "Evaluation metrics".

* **Perplexity** ``exp(mean NLL)``: the number of equally likely choices that would be as surprising
  as the model is on average (the mean NLL from :func:`aigc_book.training.evaluation.lm_loss`, in nats).
* **Exact match and F1** as SQuAD v1.1's official evaluation script defines them (Rajpurkar et al.
  2016, "SQuAD: 100,000+ Questions for Machine Comprehension of Text"): both strings are lower-cased,
  stripped of punctuation and of the articles ``a``, ``an``, ``the``, and split on whitespace; exact
  match compares the token lists, F1 is the harmonic mean of precision and recall of the
  bag-of-tokens overlap; over several reference answers the best score counts. The span versions
  (:func:`span_exact_match`, :func:`span_f1`) do the same on token positions, with no normalisation.
* **BLEU** (Papineni et al. 2002, "BLEU: a Method for Automatic Evaluation of Machine
  Translation"): the geometric mean of the *modified* (clipped) n-gram precisions for n = 1..4,
  times a brevity penalty ``BP = min(1, exp(1 - r / c))`` (c: hypothesis length, r: reference
  length), computed over the whole corpus, not averaged over sentences.
* **chrF** (Popović 2015, "chrF: character n-gram F-score for automatic MT evaluation"): the
  F-beta score (beta = 2, recall weighted more) of character n-grams, n = 1..6.

BLEU and chrF come from ``sacrebleu`` (Post 2018, "A Call for Clarity in Reporting BLEU Scores"),
which fixes the tokenisation so that scores are comparable; :func:`bleu_by_hand` spells out the
formula and the tests check it against ``sacrebleu``.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Sequence

import torch

__all__ = [
    "perplexity",
    "accuracy",
    "normalize_answer",
    "squad_exact_match",
    "squad_f1",
    "squad_scores",
    "span_exact_match",
    "span_f1",
    "modified_precision",
    "brevity_penalty",
    "bleu_by_hand",
    "bleu",
    "chrf",
]


def perplexity(mean_nll: float) -> float:
    """``exp(mean_nll)``, with ``mean_nll`` the mean negative log-likelihood in **nats** per token.

    A uniform guess over V symbols has mean NLL ``log V`` and perplexity V. (A loss in bits needs
    ``2 ** bits`` instead.)
    """
    value = float(mean_nll)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"mean_nll must be a finite number >= 0 (nats per token), got {mean_nll!r}")
    return math.exp(value)


def accuracy(predictions, labels) -> float:
    """Fraction of positions where ``predictions == labels`` (tensors or sequences of the same shape)."""
    p, y = torch.as_tensor(predictions), torch.as_tensor(labels)
    if p.shape != y.shape:
        raise ValueError(f"predictions and labels must have the same shape, got {tuple(p.shape)} and {tuple(y.shape)}")
    if p.numel() == 0:
        raise ValueError("accuracy of nothing: predictions and labels are empty")
    return (p == y).double().mean().item()


# ---------------------------------------------------------------------------------------------
# SQuAD v1.1 (the official evaluate-v1.1.py, function by function)
# ---------------------------------------------------------------------------------------------


def normalize_answer(s: str) -> str:
    """Lower-case, remove punctuation, remove the articles a/an/the, collapse whitespace (SQuAD v1.1).

    >>> normalize_answer("The  Cat's hat!")
    'cats hat'
    """
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def squad_exact_match(prediction: str, ground_truth: str) -> float:
    """1.0 if the normalised strings are equal, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(ground_truth))


def squad_f1(prediction: str, ground_truth: str) -> float:
    """F1 of the bag-of-tokens overlap of the normalised strings (0 when nothing is shared)."""
    pred, gold = normalize_answer(prediction).split(), normalize_answer(ground_truth).split()
    common = Counter(pred) & Counter(gold)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision, recall = num_same / len(pred), num_same / len(gold)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: Sequence[str], ground_truths: Sequence[Sequence[str]]) -> dict[str, float]:
    """SQuAD's corpus scores in percent: the mean over questions of the best score against any
    of that question's reference answers. ``ground_truths[i]`` lists question i's references."""
    if isinstance(predictions, str) or len(predictions) != len(ground_truths) or not predictions:
        raise ValueError(f"need one prediction per question and at least one question, got {len(predictions)} "
                         f"predictions and {len(ground_truths)} reference lists")
    em = f1 = 0.0
    for i, (pred, refs) in enumerate(zip(predictions, ground_truths)):
        if isinstance(refs, str) or not refs:
            raise ValueError(f"ground_truths[{i}] must be a non-empty list of reference strings, got {refs!r}")
        em += max(squad_exact_match(pred, r) for r in refs)
        f1 += max(squad_f1(pred, r) for r in refs)
    n = len(predictions)
    return {"exact_match": 100.0 * em / n, "f1": 100.0 * f1 / n}


def _spans(*tensors: torch.Tensor) -> list[torch.Tensor]:
    ts = [torch.as_tensor(t).long().reshape(-1) for t in tensors]
    if len({t.numel() for t in ts}) != 1 or ts[0].numel() == 0:
        raise ValueError(f"starts and ends must be non-empty and of one length, got {[t.numel() for t in ts]}")
    for s, e in (ts[:2], ts[2:]):
        if bool((e < s).any()):
            raise ValueError("every span needs end >= start (positions inclusive)")
    return ts


def span_exact_match(pred_start, pred_end, gold_start, gold_end) -> float:
    """Fraction of spans whose start and end positions are both right (inclusive ends)."""
    ps, pe, gs, ge = _spans(pred_start, pred_end, gold_start, gold_end)
    return ((ps == gs) & (pe == ge)).double().mean().item()


def span_f1(pred_start, pred_end, gold_start, gold_end) -> float:
    """Mean F1 of the overlap of predicted and gold *positions* (inclusive spans).

    ``overlap = max(0, min(ends) - max(starts) + 1)``, precision ``overlap / len(pred)``, recall
    ``overlap / len(gold)``: SQuAD's F1 with token positions in place of normalised words.
    """
    ps, pe, gs, ge = (t.double() for t in _spans(pred_start, pred_end, gold_start, gold_end))
    overlap = (torch.minimum(pe, ge) - torch.maximum(ps, gs) + 1).clamp(min=0)
    precision, recall = overlap / (pe - ps + 1), overlap / (ge - gs + 1)
    f1 = torch.where(overlap > 0, 2 * precision * recall / (precision + recall).clamp(min=1e-12), 0.0)
    return f1.mean().item()


# ---------------------------------------------------------------------------------------------
# BLEU and chrF
# ---------------------------------------------------------------------------------------------


def modified_precision(hypothesis: Sequence[str], references: Sequence[Sequence[str]], n: int) -> tuple[int, int]:
    """``(clipped matches, n-grams in the hypothesis)`` for one sentence (Papineni et al. 2002, §2.1).

    Each hypothesis n-gram counts at most as often as it occurs in the reference where it occurs
    most: "the the the" against "the cat" matches one "the", not three.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    grams = Counter(tuple(hypothesis[i : i + n]) for i in range(len(hypothesis) - n + 1))
    max_ref: Counter = Counter()
    for ref in references:
        max_ref |= Counter(tuple(ref[i : i + n]) for i in range(len(ref) - n + 1))
    return sum((grams & max_ref).values()), sum(grams.values())


def brevity_penalty(hyp_len: int, ref_len: int) -> float:
    """``1`` if the hypothesis is longer than the reference, else ``exp(1 - ref_len / hyp_len)``."""
    if hyp_len < 0 or ref_len < 0:
        raise ValueError(f"lengths must be >= 0, got {hyp_len} and {ref_len}")
    if hyp_len == 0:
        return 0.0
    return 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)


def bleu_by_hand(hypotheses: Sequence[Sequence[str]], references: Sequence[Sequence[Sequence[str]]],
                 *, max_n: int = 4) -> float:
    """Corpus BLEU in percent from token lists, without smoothing (0 if some n has no match).

    Clipped matches and n-gram totals are summed over the corpus before dividing; the reference
    length r sums, per sentence, the reference length closest to the hypothesis (the shorter on a
    tie), as ``sacrebleu`` does.
    """
    matches, totals = [0] * max_n, [0] * max_n
    c = r = 0
    for hyp, refs in zip(hypotheses, references, strict=True):
        for n in range(1, max_n + 1):
            m, t = modified_precision(hyp, refs, n)
            matches[n - 1] += m
            totals[n - 1] += t
        c += len(hyp)
        r += min((abs(len(ref) - len(hyp)), len(ref)) for ref in refs)[1]
    if min(matches) == 0:
        return 0.0
    log_p = sum(math.log(m / t) for m, t in zip(matches, totals)) / max_n
    return 100.0 * brevity_penalty(c, r) * math.exp(log_p)


def _streams(hypotheses: Sequence[str], references) -> list[list[str]]:
    """Per-hypothesis references (a string or a list of strings each) -> sacrebleu's reference streams."""
    if isinstance(hypotheses, str) or not hypotheses:
        raise ValueError("hypotheses must be a non-empty list of strings (one per sentence)")
    if isinstance(references, str) or len(references) != len(hypotheses):
        raise ValueError(f"need the references of each hypothesis: {len(hypotheses)} hypotheses, "
                         f"got {len(references) if not isinstance(references, str) else 'one string'}")
    per = [[r] if isinstance(r, str) else list(r) for r in references]
    counts = {len(p) for p in per}
    if len(counts) != 1 or 0 in counts:
        raise ValueError(f"every hypothesis needs the same number (>= 1) of references, got {sorted(counts)}")
    return [list(stream) for stream in zip(*per)]


def bleu(hypotheses: Sequence[str], references, *, tokenize: str = "13a", smooth_method: str = "exp") -> float:
    """Corpus BLEU in percent through ``sacrebleu.corpus_bleu``.

    ``references[i]`` is hypothesis i's reference, or a list of its references (the same number for
    every hypothesis); this function turns them into ``sacrebleu``'s per-reference streams.
    """
    import sacrebleu

    return float(sacrebleu.corpus_bleu(list(hypotheses), _streams(hypotheses, references),
                                       tokenize=tokenize, smooth_method=smooth_method).score)


def chrf(hypotheses: Sequence[str], references) -> float:
    """Corpus chrF in percent through ``sacrebleu.corpus_chrf`` (character 6-grams, beta = 2)."""
    import sacrebleu

    return float(sacrebleu.corpus_chrf(list(hypotheses), _streams(hypotheses, references)).score)
