"""Few-shot prompts and accuracy against the number of examples in the prompt.

Introduced in chapter 4, section "In-context learning and induction heads". Brown et al. (2020),
"Language Models are Few-Shot Learners" (§2), call it *K-shot* learning when ``K`` solved examples
("demonstrations") are written into the prompt before the query and the model is left to continue
the text; no weight changes. Their protocol (§2.4): "For few-shot learning, we evaluate each example
in the evaluation set by randomly drawing K examples from that task's training set as conditioning".

This module builds such prompts from a template (:func:`few_shot_prompt`), continues them greedily
with any model whose ``forward(idx)`` returns logits (:func:`greedy_complete`), and measures the
accuracy for several ``K`` on a task whose answers a program checks (:func:`few_shot_accuracy`).
The same demonstrations are reused across ``K``: each query gets one random order of the training
pairs, and its ``K``-shot prompt uses the first ``K`` of them, so the curve compares like with like.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from aigc_book.checks import is_int
from aigc_book.incontext.induction import logits_of

__all__ = ["few_shot_prompt", "split_template", "greedy_complete", "exact_match", "FewShotResult", "few_shot_accuracy"]

DEFAULT_TEMPLATE = "{input} = {output}\n"


def split_template(template: str) -> tuple[str, str, str]:
    """Split a template into ``(before_input, between, after_output)`` around ``{input}`` and ``{output}``.

    A template holds ``{input}`` once and, after it, ``{output}`` once, e.g. ``"Q: {input}\\nA: {output}\\n\\n"``.
    The text after ``{output}`` ends each demonstration; generation stops there.
    """
    if not isinstance(template, str):
        raise TypeError(f"template must be a str, got {type(template).__name__}")
    if template.count("{input}") != 1 or template.count("{output}") != 1:
        raise ValueError(f"template must contain '{{input}}' and '{{output}}' exactly once each, got {template!r}")
    i, o = template.index("{input}"), template.index("{output}")
    if o < i:
        raise ValueError(
            f"'{{output}}' must come after '{{input}}' in the template (the model writes it), got {template!r}"
        )
    return template[:i], template[i + len("{input}") : o], template[o + len("{output}") :]


def few_shot_prompt(examples: Sequence[tuple[str, str]], query: str, template: str = DEFAULT_TEMPLATE) -> str:
    """The ``K``-shot prompt: each ``(input, output)`` example filled into ``template``, then ``query``
    filled in up to ``{output}``, for the model to continue.

    >>> few_shot_prompt([("2+2", "4"), ("3+1", "4")], "1+2")
    '2+2 = 4\\n3+1 = 4\\n1+2 = '

    Args:
        examples: the demonstrations, ``K`` pairs of strings (``K = 0`` gives a zero-shot prompt).
        query: the input to answer.
        template: text with ``{input}`` and then ``{output}`` (see :func:`split_template`).
    """
    before, between, after = split_template(template)
    if not isinstance(query, str):
        raise TypeError(f"query must be a str, got {type(query).__name__}")
    parts = []
    for n, pair in enumerate(examples):
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and all(isinstance(s, str) for s in pair)):
            raise TypeError(f"example {n} must be an (input, output) pair of strings, got {pair!r}")
        parts.append(f"{before}{pair[0]}{between}{pair[1]}{after}")
    return "".join(parts) + f"{before}{query}{between}"


def _check_tokenizer(tokenizer) -> None:
    if not (callable(getattr(tokenizer, "encode", None)) and callable(getattr(tokenizer, "decode", None))):
        raise TypeError(
            f"tokenizer must have encode(str) -> ids and decode(ids) -> str, got {type(tokenizer).__name__}"
        )


@torch.no_grad()
def greedy_complete(model: nn.Module, tokenizer, prompts: Sequence[str], *, max_new_tokens: int,
                    stop: str | None = None, context_len: int | None = None) -> list[str]:
    """Continue each prompt with the most probable token, ``max_new_tokens`` times or until ``stop``.

    Prompts of the same token length run as one batch (no padding, so any ``model(idx)`` works);
    the whole sequence is re-read at every step (no KV cache: slower, but model-agnostic).

    Args:
        model: ``model(idx)`` with ``idx`` ``(B, T)`` returns ``(B, T, V)`` logits (a tensor, an output
            with ``.logits``, or a ``(logits, ...)`` tuple). Run in eval mode; its mode is restored.
        tokenizer: ``encode(str) -> list[int]`` and ``decode(list[int]) -> str``.
        prompts: the texts to continue.
        max_new_tokens: tokens to generate at most.
        stop: cut each completion before the first occurrence of this text (and stop early once
            every completion of a batch contains it).
        context_len: the longest sequence the model accepts (default ``model.config.block_size``
            when it exists); a prompt that does not fit with ``max_new_tokens - 1`` more tokens is an
            error (cropping it would silently drop demonstrations).

    Returns the completions (the generated text only, cut at ``stop``), in the order of ``prompts``.
    """
    _check_tokenizer(tokenizer)
    if not is_int(max_new_tokens) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    if isinstance(prompts, str):
        raise TypeError("prompts must be a list of strings, not one string (wrap it: [prompt])")
    if context_len is None:
        context_len = getattr(getattr(model, "config", None), "block_size", None)
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    encoded = []
    for p in prompts:
        if not isinstance(p, str):
            raise TypeError(f"each prompt must be a str, got {type(p).__name__}")
        ids = list(tokenizer.encode(p))
        if not ids:
            raise ValueError("a prompt encodes to no tokens: give the model at least one token to continue")
        if context_len is not None and len(ids) + max_new_tokens - 1 > context_len:  # the last token is not read
            raise ValueError(
                f"a prompt of {len(ids)} tokens plus max_new_tokens={max_new_tokens} exceeds the model's context "
                f"of {context_len} tokens: use fewer examples, a shorter template or fewer new tokens"
            )
        encoded.append(ids)
    groups: dict[int, list[int]] = {}
    for n, ids in enumerate(encoded):
        groups.setdefault(len(ids), []).append(n)
    out: list[str] = [""] * len(prompts)
    was_training = model.training
    model.eval()
    try:
        for rows in groups.values():
            idx = torch.tensor([encoded[n] for n in rows], dtype=torch.long, device=device)  # (b, T)
            start = idx.size(1)
            for _ in range(max_new_tokens):
                logits = logits_of(model(idx))[:, -1, :]  # (b, V)
                idx = torch.cat([idx, logits.argmax(dim=-1, keepdim=True)], dim=1)  # (b, T + 1)
                if stop and all(stop in tokenizer.decode(row[start:].tolist()) for row in idx):
                    break
            for n, row in zip(rows, idx):
                text = tokenizer.decode(row[start:].tolist())
                out[n] = text.split(stop, 1)[0] if stop else text
    finally:
        model.train(was_training)
    return out


def exact_match(query: str, expected: str, completion: str) -> bool:
    """The default check: the completion, stripped of surrounding spaces, equals the expected answer."""
    return completion.strip() == expected.strip()


@dataclass
class FewShotResult:
    """What :func:`few_shot_accuracy` measured.

    Attributes:
        shots: the numbers of examples ``K`` tried.
        accuracy: the fraction of queries answered correctly, one per ``K``.
        completions: ``{K: [completion, ...]}`` in the order of the test queries (for inspection).
        prompts: ``{K: [prompt, ...]}`` the prompts that produced them.
    """

    shots: list[int]
    accuracy: list[float]
    completions: dict[int, list[str]] = field(default_factory=dict)
    prompts: dict[int, list[str]] = field(default_factory=dict)


def few_shot_accuracy(model: nn.Module, tokenizer, train: Sequence[tuple[str, str]], test: Sequence[tuple[str, str]],
                      *, shots: Sequence[int] = (0, 1, 2, 4, 8), template: str = DEFAULT_TEMPLATE,
                      check: Callable[[str, str, str], bool] | None = None, max_new_tokens: int | None = None,
                      seed: int = 0, context_len: int | None = None) -> FewShotResult:
    """Accuracy of greedy completions of ``K``-shot prompts, for each ``K`` in ``shots``.

    For every test pair ``(query, expected)`` the training pairs are shuffled once (seeded by ``seed``;
    pairs whose input equals the query are left out), and the ``K``-shot prompt is
    ``few_shot_prompt(first K of them, query, template)``. The completion, cut at the text that ends a
    demonstration, is judged by ``check(query, expected, completion)``.

    Args:
        model: any ``model(idx) -> logits`` (see :func:`greedy_complete`), e.g. the chapter's GPT.
        tokenizer: ``encode``/``decode``, the one the model was trained with.
        train: the pool of ``(input, output)`` demonstrations.
        test: the ``(input, expected output)`` queries.
        shots: the numbers of demonstrations to try, each ``0 <= K <= len(train) - 1``.
        template: with ``{input}`` then ``{output}`` (see :func:`split_template`).
        check: decides whether a completion is right (default :func:`exact_match`); a task whose
            answers a program checks (arithmetic, sorting, ...) passes its own checker here.
        max_new_tokens: default: the longest expected answer's token count plus 2.
        seed: for the draw of demonstrations.
        context_len: the model's context (default ``model.config.block_size``); too long a prompt is an error.
    """
    _check_tokenizer(tokenizer)
    for name, pairs in (("train", train), ("test", test)):
        if isinstance(pairs, str) or len(pairs) == 0:
            raise ValueError(f"{name} must be a non-empty sequence of (input, output) pairs")
        for n, pair in enumerate(pairs):
            if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and all(isinstance(s, str) for s in pair)):
                raise TypeError(f"{name}[{n}] must be an (input, output) pair of strings, got {pair!r}")
    shots = list(shots)
    for k in shots:
        if not is_int(k) or not 0 <= k <= len(train) - 1:
            raise ValueError(
                f"each number of shots must be an int in 0 .. len(train) - 1 = {len(train) - 1}, got {k!r}"
            )
    check = exact_match if check is None else check
    if not callable(check):
        raise TypeError("check must be a function check(query, expected, completion) -> bool")
    stop = split_template(template)[2] or None
    if max_new_tokens is None:
        max_new_tokens = max(len(tokenizer.encode(expected)) for _, expected in test) + 2
    gen = torch.Generator().manual_seed(seed)
    orders = []
    for query, _ in test:
        order = [train[i] for i in torch.randperm(len(train), generator=gen).tolist()]
        orders.append([pair for pair in order if pair[0] != query])
        if len(orders[-1]) < max(shots, default=0):
            raise ValueError(
                f"the query {query!r} leaves only {len(orders[-1])} other training pairs, fewer than "
                f"{max(shots)} shots: add training pairs or ask for fewer shots"
            )
    result = FewShotResult(shots=shots, accuracy=[])
    for k in shots:
        prompts = [few_shot_prompt(order[:k], query, template) for order, (query, _) in zip(orders, test)]
        completions = greedy_complete(model, tokenizer, prompts, max_new_tokens=max_new_tokens, stop=stop,
                                      context_len=context_len)
        correct = [bool(check(q, expected, c)) for (q, expected), c in zip(test, completions)]
        result.accuracy.append(sum(correct) / len(correct))
        result.completions[k] = completions
        result.prompts[k] = prompts
    return result
