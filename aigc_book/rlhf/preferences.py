r"""The setting of the RLHF chapter: a hidden gold reward, simulated labelers, and preference pairs.

Introduced in chapter 5, section "The setting: a policy, a gold reward and labelers". Real RLHF
never sees the quantity it cares about: people compare two answers and say which they prefer. The
chapter simulates them so that what a method *optimises* can be measured against what we *wanted*:

* the **gold reward** :func:`gold_reward` is the truth, hidden from every method: the graded score
  of :func:`aigc_book.tasks.instructions.score` (1 for a correct answer, partial credit
  ``1 - edit distance / length`` otherwise);
* the **labelers** (:class:`Labelers`) see two answers and prefer one at random, by the
  Bradley–Terry model (Bradley & Terry 1952) on the gold reward with a noise temperature, plus an
  optional bias towards longer answers (a real labeler's habit: longer looks more thorough;
  Singhal et al. 2023, "A long way to go: investigating length correlations in RLHF");
* :func:`collect_preferences` samples two answers per prompt from the policy and has them labelled:
  the data a reward model (section "A reward model from preferences") and DPO learn from.

Because the labelers' probabilities are known, so is the best accuracy any reward model could reach
on their labels (:func:`bayes_accuracy`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from aigc_book.checks import is_int, is_number
from aigc_book.rlhf.rollouts import Responses, sample_responses
from aigc_book.tasks.instructions import Instruction, score, well_formed
from aigc_book.text.chat_tokenizer import ChatTokenizer

__all__ = [
    "gold_reward",
    "gold_rewards",
    "Labelers",
    "bayes_accuracy",
    "PreferencePairs",
    "collect_preferences",
]

TensorLike = torch.Tensor | float | Sequence[float]  # what torch.as_tensor turns into a real tensor


def gold_reward(prompt: Instruction | str, response_text: str) -> float:
    r"""The hidden true reward of one response, in ``[0, 1]``: half for its form, half for its content.

    .. math:: g(x, y) = \tfrac12\,[\,y \text{ well formed}\,] + \tfrac12\,\mathrm{score}(x, y),

    with ``well formed`` from :func:`aigc_book.tasks.instructions.well_formed` (the answer's length
    and alphabet) and ``score`` the checker's partial credit,
    ``instructions.score(prompt, response_text, partial=True)``: 1.0 for the correct answer, else
    :math:`1 - d / \max(|a|, |y|)` with :math:`d` the Levenshtein distance between the answer
    :math:`a` and the response :math:`y`. It is 1 exactly for the correct answer, and graded, so two
    wrong answers can still be ranked — like a teacher who gives marks for a well-presented answer.
    """
    if not isinstance(prompt, (Instruction, str)):
        raise TypeError(f"prompt must be an Instruction or a str, got {type(prompt).__name__}")
    if not isinstance(response_text, str):
        raise TypeError(f"response_text must be a str (the decoded response), got {type(response_text).__name__}")
    return 0.5 * float(well_formed(prompt, response_text)) + 0.5 * score(prompt, response_text, partial=True)


def gold_rewards(responses: Responses) -> torch.Tensor:
    """``(B,)`` float: :func:`gold_reward` of each row's prompt and response text, on the rows' device."""
    if not isinstance(responses, Responses):
        raise TypeError(f"expected a Responses batch, got {type(responses).__name__}")
    values = [gold_reward(p, t) for p, t in zip(responses.prompts, responses.texts)]
    return torch.tensor(values, dtype=torch.get_default_dtype(), device=responses.tokens.device)


def _real(name: str, value) -> float:
    if not is_number(value) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _as_float_tensor(name: str, x: TensorLike) -> torch.Tensor:
    x = torch.as_tensor(x)
    if x.dtype == torch.bool or x.is_complex():
        raise TypeError(f"{name} must hold real numbers, got dtype {x.dtype}")
    if not x.is_floating_point():
        x = x.to(torch.get_default_dtype())
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} must be finite")
    return x


@dataclass(frozen=True)
class Labelers:
    r"""Simulated human labelers: Bradley–Terry on the gold reward, with noise and a length bias.

    For responses :math:`a` and :math:`b` with gold rewards :math:`g_a, g_b` and lengths
    :math:`\ell_a, \ell_b` (characters of the response text),

    .. math:: P(a \succ b) = \sigma\Big(\frac{g_a - g_b}{T} + \lambda\,(\ell_a - \ell_b)\Big).

    This is the Bradley–Terry model (Bradley & Terry 1952) that InstructGPT's reward model assumes
    (Ouyang et al. 2022, eq. 1), with the reward :math:`g/T + \lambda\ell`.

    Attributes:
        temperature: :math:`T > 0`, the labelers' noise. Gold rewards lie in [0, 1], so at
            :math:`T = 0.1` a gap of 0.1 is preferred 73% of the time and a gap of 0.5 99.3%;
            a large :math:`T` is a coin flip.
        length_bias: :math:`\lambda`, log-odds per character of extra length (0: no bias; 0.5: two
            more characters count as much as a gold gap of :math:`T`).
    """

    temperature: float = 0.1
    length_bias: float = 0.0

    def __post_init__(self) -> None:
        t = _real("temperature", self.temperature)
        if t <= 0:
            raise ValueError(f"temperature must be > 0 (0 would be a noiseless labeler: use a small value), got {t}")
        _real("length_bias", self.length_bias)

    def prob_prefers_first(self, gold_a: TensorLike, gold_b: TensorLike, len_a: TensorLike,
                           len_b: TensorLike) -> torch.Tensor:
        r""":math:`P(a \succ b)` for each pair: ``sigmoid((gold_a - gold_b) / T + length_bias * (len_a - len_b))``.

        The four arguments are tensors (or numbers) of one shape; lengths are in characters.
        """
        ga, gb = _as_float_tensor("gold_a", gold_a), _as_float_tensor("gold_b", gold_b)
        la, lb = _as_float_tensor("len_a", len_a), _as_float_tensor("len_b", len_b)
        if not (ga.shape == gb.shape == la.shape == lb.shape):
            raise ValueError(f"gold_a, gold_b, len_a and len_b must have one shape, got {tuple(ga.shape)}, "
                             f"{tuple(gb.shape)}, {tuple(la.shape)} and {tuple(lb.shape)}")
        if (la < 0).any() or (lb < 0).any():
            raise ValueError("lengths must be >= 0 (characters of the response text)")
        dtype = torch.promote_types(ga.dtype, gb.dtype)
        logit = (ga - gb).to(dtype) / self.temperature + self.length_bias * (la - lb).to(dtype)
        return torch.sigmoid(logit)

    def label(self, gold_a: TensorLike, gold_b: TensorLike, len_a: TensorLike, len_b: TensorLike, *,
              generator: torch.Generator) -> torch.Tensor:
        """Draw the labelers' choices: a bool tensor, True where ``a`` is preferred.

        Each pair is decided by one uniform draw from ``generator`` (True when it falls below
        :meth:`prob_prefers_first`), so the same generator state gives the same labels.
        """
        if not isinstance(generator, torch.Generator):
            raise TypeError("pass a torch.Generator: labels never draw from the global RNG")
        p = self.prob_prefers_first(gold_a, gold_b, len_a, len_b)
        u = torch.rand(p.shape, generator=generator, device=generator.device, dtype=torch.float64)
        return u.to(p.device) < p


def bayes_accuracy(p: TensorLike) -> float:
    r"""The best accuracy any predictor can reach on labels drawn with probabilities ``p``.

    A pair whose first answer is preferred with probability :math:`p_i` is predicted right at best
    :math:`\max(p_i, 1 - p_i)` of the time (always guess the likelier side), so the ceiling is

    .. math:: \mathrm{acc}^* = \frac1N \sum_i \max(p_i, 1 - p_i),

    the Bayes error's complement (e.g. Devroye, Györfi & Lugosi 1996, ch. 2). A reward model that
    scores above it on held-out labels has fitted noise. ``p`` is a non-empty tensor of values in [0, 1].
    """
    p = _as_float_tensor("p", p)
    if p.numel() == 0:
        raise ValueError("p is empty: need at least one pair's probability")
    if ((p < 0) | (p > 1)).any():
        raise ValueError("p must hold probabilities in [0, 1]")
    return float(torch.maximum(p, 1 - p).double().mean())


@dataclass
class PreferencePairs:
    """Labelled comparisons: row i of ``chosen`` was preferred to row i of ``rejected`` (same prompt).

    Attributes:
        chosen: the preferred responses, a :class:`Responses` of N rows.
        rejected: the other responses, in the same prompt order.
        p_chosen: ``(N,)`` the labelers' true probability of preferring ``chosen`` (what they would
            say on average; the label itself was one draw).
        gold_chosen, gold_rejected: ``(N,)`` the hidden gold rewards of the two responses.
    """

    chosen: Responses
    rejected: Responses
    p_chosen: torch.Tensor
    gold_chosen: torch.Tensor
    gold_rejected: torch.Tensor

    def __post_init__(self) -> None:
        if not isinstance(self.chosen, Responses) or not isinstance(self.rejected, Responses):
            raise TypeError("chosen and rejected must be Responses batches")
        n = len(self.chosen)
        if len(self.rejected) != n:
            raise ValueError(f"chosen has {n} rows but rejected has {len(self.rejected)}")
        if self.chosen.prompts != self.rejected.prompts:
            raise ValueError("chosen and rejected must answer the same prompts, row by row")
        for name in ("p_chosen", "gold_chosen", "gold_rejected"):
            value = getattr(self, name)
            if not isinstance(value, torch.Tensor) or tuple(value.shape) != (n,):
                raise ValueError(f"{name} must be a ({n},) tensor, got "
                                 f"{tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__}")
        for side in (self.chosen, self.rejected):
            # A reward model reads a response's last token: a response with none has nothing to score.
            if n and bool((side.response_lengths() == 0).any()):
                raise ValueError("every response needs at least one token (a reward model scores its last one)")

    def __len__(self) -> int:
        return len(self.chosen)

    def select(self, rows: Sequence[int] | torch.Tensor) -> PreferencePairs:
        """The pairs ``rows`` (a list or 1-D tensor of indices), in that order."""
        rows = torch.as_tensor(rows, dtype=torch.long).cpu()
        if rows.dim() != 1:
            raise ValueError(f"rows must be 1-D indices, got shape {tuple(rows.shape)}")
        if rows.numel() and (int(rows.min()) < -len(self) or int(rows.max()) >= len(self)):
            raise IndexError(f"a row index is out of range for {len(self)} pairs")

        def pick(t: torch.Tensor) -> torch.Tensor:
            return t[rows.to(t.device)]

        return PreferencePairs(self.chosen.select(rows), self.rejected.select(rows), pick(self.p_chosen),
                               pick(self.gold_chosen), pick(self.gold_rejected))

    def split(self, n_first: int) -> tuple[PreferencePairs, PreferencePairs]:
        """``(first n_first pairs, the rest)``: e.g. a training set and a held-out set."""
        if not is_int(n_first) or not 0 < n_first < len(self):
            raise ValueError(f"n_first must be an int in [1, {len(self) - 1}] so both parts are non-empty, "
                             f"got {n_first!r}")
        return self.select(list(range(n_first))), self.select(list(range(n_first, len(self))))


def collect_preferences(policy: nn.Module, tokenizer: ChatTokenizer, prompts: Sequence[str | Instruction],
                        labelers: Labelers, *,
                        max_new_tokens: int, generator: torch.Generator) -> PreferencePairs:
    """Sample two responses per prompt from ``policy`` and have ``labelers`` compare them.

    The two responses are drawn at temperature 1 (the policy's own distribution, as InstructGPT
    compared samples of its models; Ouyang et al. 2022, §3.3). A pair whose two response texts are
    identical is dropped: a labeler cannot rank an answer against itself, and such a pair would
    teach a reward model nothing. The labelled winner becomes ``chosen``. Sampling and labels both
    draw from ``generator``, so a seed fixes the whole data set.

    Args:
        policy: a GPT over ``tokenizer``'s vocabulary.
        prompts: texts or :class:`~aigc_book.tasks.instructions.Instruction` objects.
        labelers: who compares, a :class:`Labelers`.
        max_new_tokens: longest response, in tokens (an int >= 1).
        generator: a ``torch.Generator`` on the policy's device.
    """
    if not isinstance(labelers, Labelers):
        raise TypeError(f"labelers must be a Labelers, got {type(labelers).__name__}")
    if not isinstance(generator, torch.Generator):
        raise TypeError("pass a torch.Generator: sampling and labels never draw from the global RNG")
    if not is_int(max_new_tokens) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    prompts = list(prompts)
    if not prompts:
        raise ValueError("no prompts: need at least one to collect a comparison")
    both = sample_responses(policy, tokenizer, prompts, max_new_tokens=max_new_tokens, generator=generator,
                            temperature=1.0, num_return_sequences=2)  # rows 2i and 2i + 1 answer prompt i
    keep = [i for i in range(len(prompts)) if both.texts[2 * i] != both.texts[2 * i + 1]]
    if not keep:
        raise ValueError(f"all {len(prompts)} pairs had two identical responses, so none can be labelled; "
                         "use more prompts or longer responses")
    a = both.select([2 * i for i in keep])
    b = both.select([2 * i + 1 for i in keep])
    gold_a, gold_b = gold_rewards(a).cpu(), gold_rewards(b).cpu()
    len_a = torch.tensor([len(t) for t in a.texts])
    len_b = torch.tensor([len(t) for t in b.texts])
    p_a = labelers.prob_prefers_first(gold_a, gold_b, len_a, len_b)
    a_wins = labelers.label(gold_a, gold_b, len_a, len_b, generator=generator).cpu()
    chosen_rows = [2 * i + (0 if w else 1) for i, w in zip(keep, a_wins.tolist())]
    rejected_rows = [2 * i + (1 if w else 0) for i, w in zip(keep, a_wins.tolist())]
    return PreferencePairs(
        chosen=both.select(chosen_rows),
        rejected=both.select(rejected_rows),
        p_chosen=torch.where(a_wins, p_a, 1 - p_a),
        gold_chosen=torch.where(a_wins, gold_a, gold_b),
        gold_rejected=torch.where(a_wins, gold_b, gold_a),
    )
