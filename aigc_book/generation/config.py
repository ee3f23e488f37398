"""``GenerationConfig``: every decoding option in one frozen dataclass, checked once.

Introduced in chapter 4, section "Decoding". The fields carry the names, meanings and defaults of
Hugging Face ``transformers``' ``GenerationConfig`` (``transformers`` 5 keeps its fields at None and
fills them from ``GenerationConfig._get_default_generation_params()``; those are the defaults here),
so a configuration written for our :func:`~aigc_book.generation.search.generate` reads the same in
``transformers``. Two differences, both deliberate:

* ``top_k`` defaults to None (no limit), where Hugging Face uses 50: sampling draws from the model's
  whole distribution unless asked otherwise;
* ``max_new_tokens`` has no default length (Hugging Face falls back to ``max_length=20`` tokens,
  prompt included): :func:`~aigc_book.generation.search.generate` asks for it.

``top_p``, ``min_p`` and ``repetition_penalty`` also accept None for "none", as 1.0, None and 1.0 do.
A configuration is checked when it is made, so a bad value fails where it is written, not steps
later inside a decoding loop; :func:`resolve_generation_config` applies keyword overrides the way
``generate(**kwargs)`` does in ``transformers`` (an unknown keyword is a ``TypeError`` naming it).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

from aigc_book.checks import check_int, is_int, is_number

__all__ = [
    "FIELD_NAMES",
    "GenerationConfig",
    "check_min_p",
    "check_repetition_penalty",
    "check_temperature",
    "check_top_k",
    "check_top_p",
    "resolve_generation_config",
]


# ----------------------------------------------------------------------------- field checks


def check_temperature(temperature: float) -> None:
    """Refuse a temperature that is not a finite number > 0 (greedy decoding is ``do_sample=False``)."""
    if not is_number(temperature) or not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0 (for greedy decoding use do_sample=False), "
                         f"got {temperature!r}")


def check_top_k(top_k: int | None) -> None:
    if top_k is not None and (not is_int(top_k) or top_k < 1):
        raise ValueError(f"top_k must be a positive int or None (no limit), got {top_k!r}")


def check_top_p(top_p: float | None) -> None:
    if top_p is not None and (not is_number(top_p) or not 0.0 <= top_p <= 1.0):
        raise ValueError(f"top_p must be a number in [0, 1] or None (no limit), got {top_p!r}")


def check_min_p(min_p: float | None) -> None:
    if min_p is not None and (not is_number(min_p) or not 0.0 <= min_p <= 1.0):
        raise ValueError(f"min_p must be a number in [0, 1] or None (no limit), got {min_p!r}")


def check_repetition_penalty(penalty: float | None) -> None:
    if penalty is not None and (not is_number(penalty) or not (math.isfinite(penalty) and penalty > 0)):
        raise ValueError(f"repetition_penalty must be a finite number > 0 (1 = no penalty) or None, got {penalty!r}")


def _check_flag(name: str, value) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")


def _eos_tuple(eos_token_id) -> int | tuple[int, ...] | None:
    """``eos_token_id`` as an int, a tuple of ints or None (a list becomes a tuple: the config is hashable)."""
    if eos_token_id is None or is_int(eos_token_id):
        return eos_token_id
    if (not isinstance(eos_token_id, Sequence) or isinstance(eos_token_id, (str, bytes)) or not eos_token_id
            or not all(is_int(i) for i in eos_token_id)):
        raise TypeError(f"eos_token_id must be an int, a non-empty list of ints, or None, got {eos_token_id!r}")
    return tuple(int(i) for i in eos_token_id)


# ----------------------------------------------------------------------------- the configuration


@dataclass(frozen=True, kw_only=True)
class GenerationConfig:
    """How :func:`~aigc_book.generation.search.generate` decodes: Hugging Face's names and defaults.

    Greedy decoding is the default (``do_sample=False, num_beams=1``); ``do_sample=True`` samples,
    ``num_beams > 1`` runs beam search (beam sampling with ``do_sample=True``).

    Attributes:
        max_new_tokens: how many tokens to add at most, an int >= 0 (None: not set yet; ``generate``
            needs it).
        do_sample: draw tokens at random (True) or take the most probable / the best beams (False).
        num_beams: 1 for greedy decoding or sampling; more for beam search (each step keeps the
            ``num_beams`` best partial sequences by summed log-probability).
        use_cache: reuse keys and values through the model's KV cache (same tokens, fewer FLOPs).
        temperature, top_k, top_p, min_p: the sampling transformations of
            :mod:`aigc_book.generation.logits`, used only when ``do_sample``; None (and ``top_p=1``)
            leave a filter out.
        repetition_penalty: CTRL's penalty (> 1 discourages tokens already in the row, prompt
            included); used in every mode. 1 or None = none.
        length_penalty: beam search ranks finished hypotheses by ``sum log p / n ** length_penalty``,
            ``n`` the number of generated tokens (eos included, prompt not). Scores are negative,
            so ``length_penalty > 0`` favours longer hypotheses and ``< 0`` shorter ones.
        early_stopping: beam search only, Hugging Face's meaning: True stops once ``num_beams``
            hypotheses have finished; False stops when the best running beam, scored with its
            current length, cannot beat the worst finished one; ``"never"`` stops only when no
            better hypothesis is possible (with ``length_penalty > 0`` judged at ``max_new_tokens``).
        num_return_sequences: rows returned per prompt: the best beams (at most ``num_beams``), or
            independent samples; greedy decoding returns 1.
        eos_token_id: the token (or tokens; a list is kept as a tuple) that end a sequence, or None
            to always run ``max_new_tokens`` steps.
    """

    max_new_tokens: int | None = None
    do_sample: bool = False
    num_beams: int = 1
    use_cache: bool = True
    temperature: float = 1.0
    top_k: int | None = None  # Hugging Face: 50
    top_p: float | None = 1.0
    min_p: float | None = None
    repetition_penalty: float | None = 1.0
    length_penalty: float = 1.0
    early_stopping: bool | str = False
    num_return_sequences: int = 1
    eos_token_id: int | tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens is not None:
            check_int("max_new_tokens", self.max_new_tokens, 0)
        _check_flag("do_sample", self.do_sample)
        check_int("num_beams", self.num_beams, 1)
        _check_flag("use_cache", self.use_cache)
        check_temperature(self.temperature)
        check_top_k(self.top_k)
        check_top_p(self.top_p)
        check_min_p(self.min_p)
        check_repetition_penalty(self.repetition_penalty)
        if not is_number(self.length_penalty) or not math.isfinite(self.length_penalty):
            raise ValueError(f"length_penalty must be a finite number, got {self.length_penalty!r}")
        if not (isinstance(self.early_stopping, bool) or self.early_stopping == "never"):
            raise ValueError(f"early_stopping must be True, False or 'never', got {self.early_stopping!r}")
        check_int("num_return_sequences", self.num_return_sequences, 1)
        r, k = self.num_return_sequences, self.num_beams
        if k > 1 and r > k:
            raise ValueError(f"num_return_sequences={r} must be <= num_beams={k}: beam search returns its best beams")
        if k == 1 and r > 1 and not self.do_sample:
            raise ValueError("greedy decoding gives one sequence per prompt: num_return_sequences must be 1 "
                             "(use do_sample=True or num_beams > 1 for several)")
        object.__setattr__(self, "eos_token_id", _eos_tuple(self.eos_token_id))

    def required_max_new_tokens(self) -> int:
        """``max_new_tokens``, or a ValueError when it is not set: decoding must know when to stop."""
        if self.max_new_tokens is None:
            raise ValueError("max_new_tokens must be an int >= 0, got None: say how many tokens to add at most")
        return self.max_new_tokens

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        """The eos tokens as a tuple, empty when there are none."""
        eos = self.eos_token_id
        return () if eos is None else (eos,) if isinstance(eos, int) else eos


FIELD_NAMES = frozenset(f.name for f in dataclasses.fields(GenerationConfig))


def resolve_generation_config(generation_config: GenerationConfig | None = None, **overrides) -> GenerationConfig:
    """``generation_config`` (default: ``GenerationConfig()``) with the fields named in ``overrides``
    replaced, checked again; what ``generate(model, ids, config, temperature=0.7)`` decodes with.

    An override that is not a field is a ``TypeError`` naming it, as an unknown keyword argument is.
    """
    config = GenerationConfig() if generation_config is None else generation_config
    if not isinstance(config, GenerationConfig):
        raise TypeError(f"generation_config must be a GenerationConfig or None, got {type(config).__name__}")
    unknown = sorted(set(overrides) - FIELD_NAMES)
    if unknown:
        raise TypeError(f"unexpected keyword argument {unknown[0]!r}: not a GenerationConfig field "
                        f"({', '.join(f.name for f in dataclasses.fields(GenerationConfig))})")
    return dataclasses.replace(config, **overrides) if overrides else config
