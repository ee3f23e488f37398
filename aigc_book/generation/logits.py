"""Logits transformations: what decoding does to the model's scores before it picks a token.

Introduced in chapter 4, section "Decoding". Each function takes ``scores``, a ``(B, V)`` float
tensor of next-token logits (or log-probabilities), and returns a new ``(B, V)`` tensor; a filter
sets the tokens it removes to ``-inf`` so that ``softmax`` gives them probability zero. Each one
equals the Hugging Face ``transformers`` processor named in its docstring on the same scores, ties
and ``min_tokens_to_keep`` included (``tests/test_generation.py`` checks it):

* :func:`apply_temperature` — ``TemperatureLogitsWarper``: ``scores / T``;
* :func:`top_k_filter` — ``TopKLogitsWarper``: keeps the ``k`` highest scores (and ties);
* :func:`top_p_filter` — ``TopPLogitsWarper``: keeps the smallest top set with mass ``>= p``;
* :func:`min_p_filter` — ``MinPLogitsWarper``: keeps ``p_i >= min_p * max_j p_j``;
* :func:`apply_repetition_penalty` — ``RepetitionPenaltyLogitsProcessor``: lowers tokens already seen.

:func:`process_scores` chains them in Hugging Face's order (repetition penalty, then, when
sampling, temperature, top-k, top-p, min-p), and :func:`next_token_distribution` returns the
probabilities a sampler would draw from, for figures and widgets.
"""

from __future__ import annotations

import torch

from aigc_book.checks import is_int
from aigc_book.generation.config import (
    GenerationConfig,
    check_min_p,
    check_repetition_penalty,
    check_temperature,
    check_top_k,
    check_top_p,
)

__all__ = [
    "apply_temperature",
    "top_k_filter",
    "top_p_filter",
    "min_p_filter",
    "apply_repetition_penalty",
    "process_scores",
    "next_token_distribution",
]

NEG_INF = float("-inf")


# ----------------------------------------------------------------------------- checks


def _check_scores(scores: torch.Tensor) -> None:
    if not isinstance(scores, torch.Tensor) or not scores.is_floating_point():
        raise TypeError(f"scores must be a floating-point tensor of shape (B, V), got {_describe(scores)}")
    if scores.dim() != 2 or scores.size(-1) == 0:
        raise ValueError(f"scores must have shape (B, V) with V >= 1, got shape {tuple(scores.shape)}")


def _describe(x) -> str:
    return f"a {x.dtype} tensor" if isinstance(x, torch.Tensor) else type(x).__name__


def _check_min_tokens_to_keep(min_tokens_to_keep: int) -> None:
    if not is_int(min_tokens_to_keep) or min_tokens_to_keep < 1:
        raise ValueError(f"min_tokens_to_keep must be a positive int, got {min_tokens_to_keep!r}")


# ----------------------------------------------------------------------------- the transformations


def apply_temperature(scores: torch.Tensor, temperature: float) -> torch.Tensor:
    """Divide the logits by the temperature: ``softmax(z / T)``.

    ``T < 1`` sharpens the distribution (``T -> 0`` puts all the mass on the argmax), ``T > 1``
    flattens it (``T -> inf`` gives the uniform distribution); ``T = 1`` leaves it unchanged. The
    name comes from the Boltzmann distribution ``p_i ∝ exp(-E_i / kT)``. Equals
    ``TemperatureLogitsWarper(temperature)``.

    Args:
        scores: ``(B, V)`` logits.
        temperature: a finite number > 0.
    """
    _check_scores(scores)
    check_temperature(temperature)
    return scores / temperature


def top_k_filter(
    scores: torch.Tensor, top_k: int, *, min_tokens_to_keep: int = 1, filter_value: float = NEG_INF
) -> torch.Tensor:
    """Keep the ``top_k`` highest scores of each row; set the others to ``filter_value``.

    Top-k sampling (Fan, Lewis and Dauphin 2018, "Hierarchical Neural Story Generation") draws only
    among the k most probable tokens. Every token that ties with the k-th score is kept too, so a
    row may keep more than ``k`` tokens. ``k`` is raised to ``min_tokens_to_keep`` and capped at
    ``V``. Equals ``TopKLogitsWarper(top_k, filter_value, min_tokens_to_keep)`` (defaults: 1, -inf).

    Args:
        scores: ``(B, V)`` logits.
        top_k: how many of the highest-scoring tokens to keep, a positive int.
        min_tokens_to_keep: a floor on ``top_k`` (beam sampling keeps at least 2).
        filter_value: what removed tokens get.
    """
    _check_scores(scores)
    if top_k is None:
        raise ValueError("top_k must be a positive int (to keep every token, do not call top_k_filter)")
    check_top_k(top_k)
    _check_min_tokens_to_keep(min_tokens_to_keep)
    k = min(max(top_k, min_tokens_to_keep), scores.size(-1))
    kth = torch.topk(scores, k, dim=-1).values[..., -1:]  # (B, 1) the k-th highest score
    return scores.masked_fill(scores < kth, filter_value)


def top_p_filter(
    scores: torch.Tensor, top_p: float, *, min_tokens_to_keep: int = 1, filter_value: float = NEG_INF
) -> torch.Tensor:
    """Nucleus filtering: keep the smallest set of most probable tokens whose probability adds up to
    at least ``top_p``; set the others to ``filter_value``.

    Holtzman, Buys, Du, Forbes and Choi (2020), "The Curious Case of Neural Text Degeneration":
    with ``p = softmax(scores)`` sorted in decreasing order, keep tokens ``1..m`` with ``m`` the
    smallest index where ``p_1 + ... + p_m >= top_p``. Computed as Hugging Face does, from the
    ascending side: a token is removed when the mass of the tokens up to and including it, counted
    from the least probable, is ``<= 1 - top_p`` (so ``top_p = 1`` keeps all, ``top_p = 0`` keeps
    ``min_tokens_to_keep``). Among tokens with equal scores, which ones fall on each side of the cut
    is decided by ``torch.sort``, exactly as in Hugging Face. The ``min_tokens_to_keep`` most
    probable tokens are always kept. Equals ``TopPLogitsWarper(top_p, filter_value,
    min_tokens_to_keep)`` (defaults: 1, -inf).

    Args:
        scores: ``(B, V)`` logits.
        top_p: probability mass to keep, in ``[0, 1]``.
        min_tokens_to_keep: never keep fewer tokens than this.
        filter_value: what removed tokens get.
    """
    _check_scores(scores)
    if top_p is None:
        raise ValueError("top_p must be a number in [0, 1] (to keep every token, do not call top_p_filter)")
    check_top_p(top_p)
    _check_min_tokens_to_keep(min_tokens_to_keep)
    sorted_scores, order = torch.sort(scores, descending=False)  # (B, V) least probable first
    cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)  # (B, V) mass up to and including each token
    remove_sorted = cumulative <= 1 - top_p
    remove_sorted[..., -min_tokens_to_keep:] = False  # the most probable ones stay
    remove = remove_sorted.scatter(1, order, remove_sorted)  # back to vocabulary order
    return scores.masked_fill(remove, filter_value)


def min_p_filter(
    scores: torch.Tensor, min_p: float, *, min_tokens_to_keep: int = 1, filter_value: float = NEG_INF
) -> torch.Tensor:
    """Keep the tokens whose probability is at least ``min_p`` times that of the most probable token.

    Nguyen, Baker, Neo, Roush, Kirsch and Shwartz-Ziv (2024), "Turning Up the Heat: Min-p Sampling
    for Creative and Coherent LLM Outputs": keep ``i`` when ``p_i >= min_p * max_j p_j`` with
    ``p = softmax(scores)``. The cut follows the model's confidence: a peaked distribution keeps
    few tokens, a flat one many. The ``min_tokens_to_keep`` most probable tokens (by
    ``torch.topk``) are always kept. Equals ``MinPLogitsWarper(min_p, filter_value,
    min_tokens_to_keep)`` (defaults: 1, -inf). Hugging Face applies it after the temperature.

    Args:
        scores: ``(B, V)`` logits.
        min_p: the fraction of the top probability a token needs, in ``[0, 1]``.
        min_tokens_to_keep: never keep fewer tokens than this.
        filter_value: what removed tokens get.
    """
    _check_scores(scores)
    if min_p is None:
        raise ValueError("min_p must be a number in [0, 1] (to keep every token, do not call min_p_filter)")
    check_min_p(min_p)
    _check_min_tokens_to_keep(min_tokens_to_keep)
    probs = torch.softmax(scores, dim=-1)  # (B, V)
    remove = probs < min_p * probs.amax(dim=-1, keepdim=True)
    keep = torch.topk(probs, min(min_tokens_to_keep, probs.size(-1)), dim=-1).indices  # (B, m)
    remove.scatter_(-1, keep, False)
    return scores.masked_fill(remove, filter_value)


def apply_repetition_penalty(scores: torch.Tensor, input_ids: torch.Tensor, penalty: float) -> torch.Tensor:
    """Make every token that already occurs in ``input_ids`` less likely (CTRL's repetition penalty).

    Keskar, McCann, Varshney, Xiong and Socher (2019), "CTRL: A Conditional Transformer Language
    Model for Controllable Generation", §4.1: for each token ``i`` present in the row (prompt
    included, counted once however often it occurs), ``z_i / penalty`` if ``z_i > 0`` else
    ``z_i * penalty``. ``penalty > 1`` discourages repetition (CTRL used 1.2), ``penalty < 1``
    encourages it, ``1`` changes nothing. Dividing a positive logit and multiplying a negative one
    both lower it, which a plain division would not do. Equals
    ``RepetitionPenaltyLogitsProcessor(penalty)(input_ids, scores)``.

    Args:
        scores: ``(B, V)`` logits (or log-probabilities, as beam search passes them).
        input_ids: ``(B, T)`` the tokens so far, values in ``[0, V)``.
        penalty: a finite number > 0.
    """
    _check_scores(scores)
    check_repetition_penalty(penalty)
    if penalty is None:
        raise ValueError("repetition_penalty must be a finite number > 0 (1 = no penalty)")
    B, V = scores.shape
    if not isinstance(input_ids, torch.Tensor) or input_ids.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"input_ids must be an int64 or int32 tensor of shape (B, T), got {_describe(input_ids)}")
    if input_ids.dim() != 2 or input_ids.size(0) != B:
        raise ValueError(f"input_ids must have shape (B, T) with B = {B} (the rows of scores), "
                         f"got shape {tuple(input_ids.shape)}")
    if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= V):
        raise ValueError(f"input_ids must lie in [0, {V}) (the vocabulary of scores), got values in "
                         f"[{int(input_ids.min())}, {int(input_ids.max())}]")
    seen = torch.gather(scores, 1, input_ids.long())  # (B, T) the score of each token in the row
    seen = torch.where(seen < 0, seen * penalty, seen / penalty)
    return scores.scatter(1, input_ids.long(), seen)  # a repeated token gets the same value each time


# ----------------------------------------------------------------------------- the pipeline


def process_scores(
    scores: torch.Tensor,
    generation_config: GenerationConfig,
    input_ids: torch.Tensor | None = None,
    *,
    min_tokens_to_keep: int = 1,
) -> torch.Tensor:
    """All the transformations ``generation_config`` asks for, in Hugging Face's order
    (``GenerationMixin._get_logits_processor``).

    1. the repetition penalty (needs ``input_ids``), whether sampling or not;
    2. only when ``do_sample``: temperature, top-k, top-p, min-p.

    A setting that changes nothing is skipped, as Hugging Face does: ``temperature == 1``,
    ``top_p == 1``, ``repetition_penalty == 1`` or None. Greedy decoding and beam search ignore the
    sampling settings. Unlike Hugging Face's ``GenerationConfig``, whose ``top_k`` defaults to 50,
    ``top_k=None`` here means no limit.

    Args:
        scores: ``(B, V)`` logits.
        generation_config: ``do_sample``, ``temperature``, ``top_k``, ``top_p``, ``min_p`` and
            ``repetition_penalty`` are read (see the functions above); the other fields are not.
        input_ids: ``(B, T)`` tokens so far, for the repetition penalty.
        min_tokens_to_keep: passed to the filters (1 for sampling, 2 for beam sampling with one eos).
    """
    c = generation_config
    if c.repetition_penalty is not None and c.repetition_penalty != 1.0:
        if input_ids is None:
            raise ValueError("the repetition penalty needs input_ids, the tokens it penalises")
        scores = apply_repetition_penalty(scores, input_ids, c.repetition_penalty)
    if not c.do_sample:
        return scores
    if c.temperature != 1.0:
        scores = apply_temperature(scores, c.temperature)
    if c.top_k is not None:
        scores = top_k_filter(scores, c.top_k, min_tokens_to_keep=min_tokens_to_keep)
    if c.top_p is not None and c.top_p < 1.0:
        scores = top_p_filter(scores, c.top_p, min_tokens_to_keep=min_tokens_to_keep)
    if c.min_p is not None:
        scores = min_p_filter(scores, c.min_p, min_tokens_to_keep=min_tokens_to_keep)
    return scores


def next_token_distribution(
    scores: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
) -> torch.Tensor:
    """The probabilities a sampler draws the next token from: ``softmax`` of the transformed scores.

    For figures and widgets: how temperature, top-k, top-p and min-p reshape one distribution.
    Applied in Hugging Face's order (temperature, top-k, top-p, min-p); removed tokens get
    probability exactly 0 and the kept ones sum to 1.

    Args:
        scores: ``(V,)`` or ``(B, V)`` logits.
        temperature: a finite number > 0.
        top_k, top_p, min_p: the filters, None to leave out.

    Returns:
        probabilities of the shape of ``scores``.
    """
    if isinstance(scores, torch.Tensor) and scores.dim() == 1:
        return next_token_distribution(scores[None], temperature=temperature, top_k=top_k, top_p=top_p,
                                       min_p=min_p)[0]
    _check_scores(scores)
    config = GenerationConfig(do_sample=True, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p)
    warped = process_scores(scores, config)
    return torch.softmax(warped, dim=-1)
