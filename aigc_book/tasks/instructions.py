"""A family of instructions whose every answer a program can check.

Introduced in chapter 4, section "Instruction following". Reused by the RLHF chapter (where
:func:`score` is the reward that needs no human) and by the capstone's ``finetune`` command (which
reads prompt/response pairs with :func:`read_jsonl`).

Five kinds of instruction, each a short prompt with exactly one correct response:

==========  ======================  ==========  ==============================================
kind        prompt                  response    what the model must do
==========  ======================  ==========  ==============================================
close       ``close ([ae{i``        ``}])``     close the open brackets of a prefix of the
                                                bracket language, innermost first
reverse     ``reverse abcd``        ``dcba``    write the characters backwards
sort        ``sort dbca``           ``abcd``    write the characters in sorted order
count       ``count a in abab``     ``2``       count one character
add         ``add 7+12``            ``19``      add two small numbers
==========  ======================  ==========  ==============================================

The prompts use a small fixed character set, :data:`CHARS`: the bracket language's symbols (so a
model pretrained on that language keeps its token ids), the lowercase letters it lacks, the digits,
``+`` and the space. :func:`answer` computes the response from the prompt text alone, so
:func:`check` is exact and works on any prompt, generated or typed by a reader.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aigc_book.checks import is_int
from aigc_book.files import atomic_write
from aigc_book.text.languages import CLOSERS, OPENERS, BracketLanguage

__all__ = [
    "KINDS",
    "CHARS",
    "Instruction",
    "InstructionConfig",
    "sample_instruction",
    "sample_instructions",
    "parse",
    "answer",
    "check",
    "score",
    "well_formed",
    "as_pair",
    "read_jsonl",
    "write_jsonl",
]

KINDS = ("close", "reverse", "sort", "count", "add")
LANG = BracketLanguage()
# The bracket language's 29 symbols first (same ids as in chapter 3), then what the prompts add.
CHARS: tuple[str, ...] = tuple(LANG.itos) + tuple(
    c for c in "abcdefghijklmnopqrstuvwxyz0123456789+ " if c not in LANG.stoi
)

_ADD = re.compile(r"add (\d+)\+(\d+)")
_COUNT = re.compile(r"count (.) in (.+)", re.S)


@dataclass(frozen=True)
class Instruction:
    """One instruction: its ``kind``, the ``prompt`` text and the one correct ``answer``."""

    kind: str
    prompt: str
    answer: str


@dataclass(frozen=True)
class InstructionConfig:
    """What :func:`sample_instructions` draws.

    Attributes:
        kinds: which of :data:`KINDS` to draw, uniformly.
        max_len: longest argument of ``reverse``, ``sort`` and ``count`` (characters), and of
            ``close`` (tokens of the bracket-language prefix).
        letters: the alphabet of ``reverse``, ``sort`` and ``count`` arguments.
        max_operand: ``add`` draws both numbers from ``0..max_operand``.
    """

    kinds: tuple[str, ...] = KINDS
    max_len: int = 6
    letters: str = "abcdefgh"
    max_operand: int = 9

    def __post_init__(self) -> None:
        kinds = tuple(self.kinds)
        object.__setattr__(self, "kinds", kinds)
        if not kinds or any(k not in KINDS for k in kinds):
            raise ValueError(f"kinds must be a non-empty selection of {KINDS}, got {kinds}")
        if not is_int(self.max_len) or self.max_len < 2:
            raise ValueError(f"max_len must be an int >= 2, got {self.max_len!r}")
        if not self.letters or len(set(self.letters)) != len(self.letters) or any(
            c not in CHARS or c in " +" or c in OPENERS + CLOSERS or c.isdigit() for c in self.letters
        ):
            raise ValueError(f"letters must be distinct lowercase letters, got {self.letters!r}")
        if not is_int(self.max_operand) or self.max_operand < 1:
            raise ValueError(f"max_operand must be an int >= 1, got {self.max_operand!r}")


def _close_prefix(rng: np.random.Generator, max_len: int) -> str:
    """A prefix of the bracket language (1..max_len tokens) that leaves at least one bracket open."""
    while True:
        length = int(rng.integers(1, max_len + 1))
        text = LANG.decode(LANG.sample(1, length, rng=rng)[0, 1:])
        if _open_stack(text):
            return text


def sample_instruction(rng: np.random.Generator, config: InstructionConfig | None = None) -> Instruction:
    """One instruction drawn with ``rng`` (a ``numpy.random.Generator``) under ``config``."""
    c = config or InstructionConfig()
    kind = c.kinds[int(rng.integers(len(c.kinds)))]
    letters = list(c.letters)
    word = "".join(rng.choice(letters, size=int(rng.integers(1, c.max_len + 1))))
    if kind == "close":
        prompt = "close " + _close_prefix(rng, c.max_len)
    elif kind in ("reverse", "sort"):
        prompt = f"{kind} {word}"
    elif kind == "count":
        target = word[int(rng.integers(len(word)))] if rng.random() < 0.8 else letters[int(rng.integers(len(letters)))]
        prompt = f"count {target} in {word}"
    else:
        a, b = (int(v) for v in rng.integers(0, c.max_operand + 1, size=2))
        prompt = f"add {a}+{b}"
    return Instruction(kind, prompt, answer(prompt))


def sample_instructions(n: int, *, seed: int, config: InstructionConfig | None = None) -> list[Instruction]:
    """``n`` instructions, the same ones for the same ``seed`` and ``config``.

    Prompts may repeat (``add`` with ``max_operand=9`` has only 100 different prompts); draw a
    held-out set with another seed and remove its prompts from the training set if that matters.
    """
    if not is_int(n) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    rng = np.random.default_rng(seed)
    return [sample_instruction(rng, config) for _ in range(n)]


def _open_stack(prefix: str) -> list[str]:
    """The brackets left open by a bracket-language prefix, outermost first (ValueError if invalid)."""
    ids = LANG.encode("^" + prefix)  # raises for a symbol outside the language
    if not np.isfinite(LANG.token_log_probs(ids)).all():
        raise ValueError(
            f"{prefix!r} is not a valid prefix of the bracket language (a closer that does not match, "
            "a word that does not agree with its bracket, or nesting deeper than the language allows)"
        )
    stack: list[str] = []
    for ch in prefix:
        if ch in OPENERS:
            stack.append(ch)
        elif ch in CLOSERS:
            stack.pop()
    return stack


def parse(prompt: str) -> tuple[str, tuple]:
    """``(kind, arguments)`` of a prompt; a ValueError says which forms are understood."""
    if not isinstance(prompt, str):
        raise TypeError(f"a prompt must be a str, got {type(prompt).__name__}")
    kind, _, rest = prompt.partition(" ")
    if kind == "close" and rest:
        return kind, (rest,)
    if kind in ("reverse", "sort") and rest:
        return kind, (rest,)
    if kind == "count" and (m := _COUNT.fullmatch(prompt)):
        return kind, (m.group(1), m.group(2))
    if kind == "add" and (m := _ADD.fullmatch(prompt)):
        return kind, (int(m.group(1)), int(m.group(2)))
    raise ValueError(
        f"cannot parse the instruction {prompt!r}; the forms are 'close <bracket prefix>', 'reverse <text>', "
        "'sort <text>', 'count <char> in <text>' and 'add <int>+<int>'"
    )


def answer(prompt: str) -> str:
    """The one correct response to ``prompt``, computed from its text."""
    kind, args = parse(prompt)
    if kind == "close":
        return "".join(CLOSERS[OPENERS.index(b)] for b in reversed(_open_stack(args[0])))
    if kind == "reverse":
        return args[0][::-1]
    if kind == "sort":
        return "".join(sorted(args[0]))
    if kind == "count":
        return str(args[1].count(args[0]))
    return str(args[0] + args[1])


def _prompt(instruction: Instruction | str) -> str:
    return instruction.prompt if isinstance(instruction, Instruction) else instruction


def check(instruction: Instruction | str, response: str) -> bool:
    """True when ``response`` is the correct answer; surrounding whitespace is ignored, nothing else."""
    if not isinstance(response, str):
        raise TypeError(f"a response must be a str, got {type(response).__name__}")
    return response.strip() == answer(_prompt(instruction))


def _edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions each cost 1)."""
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def score(instruction: Instruction | str, response: str, *, partial: bool = False) -> float:
    """A reward in ``[0, 1]``: 1.0 for a correct response (:func:`check`), else 0.0.

    With ``partial``, a wrong response earns ``1 - d / max(len(answer), len(response))``, with ``d``
    the Levenshtein distance: a denser signal for reinforcement learning, still 1.0 only when
    correct.
    """
    if check(instruction, response):
        return 1.0
    if not partial:
        return 0.0
    target, got = answer(_prompt(instruction)), response.strip()
    return 1.0 - _edit_distance(target, got) / max(len(target), len(got), 1)


def well_formed(instruction: Instruction | str, response: str) -> bool:
    """True when ``response`` has the *form* of a right answer, right or not: the answer's length, and
    only characters a right answer could use (closing brackets for ``close``; the argument's characters
    for ``reverse`` and ``sort``; digits for ``count`` and ``add``). Checking the form needs no solving,
    which is why a reward model learns it far sooner than correctness (chapter 5)."""
    if not isinstance(response, str):
        raise TypeError(f"a response must be a str, got {type(response).__name__}")
    prompt = _prompt(instruction)
    kind, args = parse(prompt)
    text = response.strip()
    if len(text) != len(answer(prompt)):
        return False
    allowed = set(CLOSERS) if kind == "close" else set(args[0]) if kind in ("reverse", "sort") else set("0123456789")
    return all(c in allowed for c in text)


# ---------------------------------------------------------------------------------------------
# Prompt/response pairs on disk (JSON Lines)
# ---------------------------------------------------------------------------------------------


def as_pair(pair, i: int = 0) -> tuple[str, str]:
    """A ``(prompt, response)`` pair from an :class:`Instruction`, a tuple or a dict.

    An instruction's answer is its response; a dict needs the keys ``prompt`` and ``response``.
    ``i`` names the pair in the error message."""
    if isinstance(pair, Instruction):
        prompt, response = pair.prompt, pair.answer
    elif isinstance(pair, dict):
        prompt, response = pair.get("prompt"), pair.get("response")
    elif isinstance(pair, (tuple, list)) and len(pair) == 2:
        prompt, response = pair
    else:
        raise TypeError(f"pair {i}: expected an Instruction, a (prompt, response) tuple or a dict with 'prompt' "
                        f"and 'response', got {pair!r}")
    if not isinstance(prompt, str) or not isinstance(response, str):
        raise TypeError(f"pair {i}: prompt and response must be strings, got {prompt!r} and {response!r}")
    return prompt, response


def write_jsonl(path, pairs: Iterable) -> int:
    """Write ``{"prompt": ..., "response": ...}`` lines; returns how many.

    ``pairs`` holds anything :func:`as_pair` takes. Written atomically (:func:`aigc_book.files.atomic_write`).
    """
    lines = []
    for i, pair in enumerate(pairs):
        prompt, response = as_pair(pair, i)
        lines.append(json.dumps({"prompt": prompt, "response": response}, ensure_ascii=False))
    if not lines:
        raise ValueError("no pairs to write: an empty file could not be read back")
    data = ("\n".join(lines) + "\n").encode("utf-8")
    atomic_write(Path(path), lambda tmp: Path(tmp).write_bytes(data))
    return len(lines)


def read_jsonl(path, *, line_numbers: bool = False, max_bytes: int | None = None):
    """Prompt/response pairs from a JSON Lines file: one ``{"prompt": str, "response": str}`` per line.

    Blank lines are skipped and other keys ignored. A ValueError names the file and the line number
    of the first line that is not a JSON object, lacks a key or holds a non-string; a file with no
    pairs at all, a path that is not a regular file, or a file larger than ``max_bytes`` (when given)
    is an error too. Lines end at ``\\n`` only (JSON Lines' separator), so a string holding another
    Unicode line break (U+2028, ...) is read back as written. With ``line_numbers=True`` returns
    ``(pairs, numbers)``: the line each pair came from, for later messages.
    """
    path = Path(path)
    if path.exists() and not path.is_file():
        raise ValueError(f"{path}: not a regular file (expected JSON Lines of prompt/response pairs)")
    if max_bytes is not None and path.is_file() and path.stat().st_size > max_bytes:
        raise ValueError(f"{path}: {path.stat().st_size / 2**20:.0f} MB is more than this reads "
                         f"({max_bytes / 2**20:.0f} MB); use a sample of the pairs")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file (expected JSON Lines of prompt/response pairs)") from None
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    pairs, numbers = [], []
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{lineno}: not valid JSON ({err.msg} at column {err.colno})") from None
        if not isinstance(obj, dict):
            raise ValueError(f"{path}:{lineno}: expected a JSON object with 'prompt' and 'response', "
                             f"got {type(obj).__name__}")
        missing = [k for k in ("prompt", "response") if k not in obj]
        if missing:
            raise ValueError(f"{path}:{lineno}: missing key {missing[0]!r} (each line needs 'prompt' and 'response')")
        for key in ("prompt", "response"):
            if not isinstance(obj[key], str):
                raise ValueError(f"{path}:{lineno}: {key!r} must be a string, got {type(obj[key]).__name__}")
        pairs.append({"prompt": obj["prompt"], "response": obj["response"]})
        numbers.append(lineno)
    if not pairs:
        raise ValueError(f"{path}: the file holds no prompt/response pairs (it is empty or blank)")
    return (pairs, numbers) if line_numbers else pairs
