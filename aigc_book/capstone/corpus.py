"""The capstone's pretraining text, built offline from what every Python installation ships.

Introduced in chapter 8, section "A corpus that ships with Python". Two sources:

* **"python docs"**: English technical prose, the ``pydoc_data.topics`` pages behind ``help()``
  (chapter 1's corpus) and the docstrings of the standard library's own source, about 2 MB together.
  The docstrings are read with :mod:`ast`, never by importing the modules (importing runs code).
* **"bracket language"**: chapter 3's generated language, whose entropy floor is known exactly, so
  the capstone's model can be scored against the best possible on part of what it learned.

Documents are held out per source, whole and at random, and a held-out document that also occurs
inside a training document is dropped: exact-match decontamination, a simple form of the n-gram
overlap filter of GPT-3 (Brown et al. 2020, arXiv:2005.14165, appendix C). Everything is deterministic
for a given seed and Python version, and needs no download.
"""

from __future__ import annotations

import ast
import functools
import math
import os
import random
import sysconfig
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from aigc_book.checks import is_int
from aigc_book.text.corpora import python_topics
from aigc_book.text.languages import BracketLanguage

__all__ = [
    "DOCS",
    "BRACKETS",
    "SKIP_DIRS",
    "MIN_DOCSTRING_CHARS",
    "stdlib_docstrings",
    "python_topics",
    "bracket_documents",
    "CorpusConfig",
    "Corpus",
    "build_corpus",
]

DOCS, BRACKETS = "python docs", "bracket language"  # the source names of Corpus.held_out and Corpus.chars
SEPARATOR = "\n\n"
# Tests, an IDE, demos, a retired tool and vendored wheels: not the library's own prose.
SKIP_DIRS = frozenset({"test", "tests", "idlelib", "turtledemo", "lib2to3", "site-packages", "ensurepip",
                       "__pycache__"})
MIN_DOCSTRING_CHARS = 40  # shorter ones are mostly "Return self." boilerplate
BRACKET_LENGTH = 48  # symbols per bracket-language document
_DOCUMENTED = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def _source_files(root: Path) -> list[Path]:
    """The ``.py`` files under ``root`` (any depth, :data:`SKIP_DIRS` pruned), in sorted relative-path order."""
    found = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS]  # pruned in place, so os.walk never enters them
        found += [Path(folder, n).relative_to(root).as_posix() for n in names if n.endswith(".py")]
    return [root / f for f in sorted(found)]


def _docstrings_of(path: Path) -> list[str]:
    """Module, class and function docstrings of one file; none if it cannot be read or parsed."""
    try:
        with warnings.catch_warnings():  # old files have invalid escapes, which newer Pythons warn about
            warnings.simplefilter("ignore")
            tree = ast.parse(path.read_bytes())  # bytes: ast honours the file's own encoding line
    except (OSError, SyntaxError, ValueError, RecursionError):
        return []
    docs = (ast.get_docstring(node) for node in ast.walk(tree) if isinstance(node, _DOCUMENTED))
    return [d.strip() for d in docs if d]  # strip: a blank last line can keep its indentation


def stdlib_docstrings(max_chars: int | None = None) -> list[str]:
    """Docstrings of the standard library's pure-Python source, of at least :data:`MIN_DOCSTRING_CHARS`
    characters, each once (first kept), in file order; at most ``max_chars`` characters in all.

    Raises RuntimeError when this Python ships no source (some distributions install only ``.pyc``).
    """
    if max_chars is not None and (not is_int(max_chars) or max_chars < 1):
        raise ValueError(f"max_chars must be a positive int or None, got {max_chars!r}")
    docs = _read_docstrings(sysconfig.get_paths()["stdlib"])
    if max_chars is None:
        return list(docs)
    out, total = [], 0
    for doc in docs:
        if total + len(doc) > max_chars:
            break
        out.append(doc)
        total += len(doc)
    return out


@functools.lru_cache(maxsize=1)  # parsing takes about 2 s; the book builds the corpus more than once
def _read_docstrings(stdlib: str) -> tuple[str, ...]:
    root = Path(stdlib)
    files = _source_files(root) if root.is_dir() else []
    if not files:
        raise RuntimeError(f"no standard-library source (.py files) under {root}: this Python ships only compiled "
                           "files, so its docstrings cannot be read; use a Python installed with its source")
    docs = (d for path in files for d in _docstrings_of(path) if len(d) >= MIN_DOCSTRING_CHARS)
    return tuple(dict.fromkeys(docs))  # each once, the first kept


def bracket_documents(n: int, seed: int, length: int = 48) -> list[str]:
    """``n`` sequences of chapter 3's bracket language, ``length`` symbols each, without the BOS symbol."""
    lang = BracketLanguage()
    return [lang.decode(row[1:]) for row in lang.sample(n, length, seed=seed)]


@dataclass(frozen=True)
class CorpusConfig:
    """What goes into the corpus.

    Attributes:
        docs_chars: at most this many characters of English (documents drawn at random); None for all.
        bracket_share: the share of the characters that is bracket language, in [0, 1).
        held_out: the share of each source's documents held out for evaluation, in [0, 0.5].
        seed: one seed for every random choice (which documents, their order, the bracket sequences).
    """

    docs_chars: int | None = None
    bracket_share: float = 0.1
    held_out: float = 0.05
    seed: int = 0

    def __post_init__(self) -> None:
        cap = self.docs_chars
        if cap is not None and (not is_int(cap) or cap < 1):
            raise ValueError(f"docs_chars must be a positive int or None (all the text), got {cap!r}")
        if not _is_number(self.bracket_share) or not 0.0 <= self.bracket_share < 1.0:
            raise ValueError(f"bracket_share must be a number in [0, 1), got {self.bracket_share!r}")
        if not _is_number(self.held_out) or not 0.0 <= self.held_out <= 0.5:
            raise ValueError(f"held_out must be a number in [0, 0.5], got {self.held_out!r}")
        if not is_int(self.seed):
            raise ValueError(f"seed must be an int, got {self.seed!r}")


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@dataclass(frozen=True)
class Corpus:
    """The pretraining text.

    Attributes:
        train: every training document of every source, shuffled, joined with a blank line.
        held_out: per source, its held-out documents joined the same way (never inside ``train``).
        chars: per source, the characters of its training documents (separators not counted).
        held_out_documents: per source, the held-out documents themselves (``held_out`` joins them).
    """

    train: str
    held_out: dict[str, str]
    chars: dict[str, int]
    held_out_documents: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def train_bytes(self) -> int:
        """Size of ``train`` in UTF-8 bytes (what a byte-level tokenizer starts from)."""
        return len(self.train.encode("utf-8"))


def _take(docs: list[str], max_chars: int) -> list[str]:
    """The documents, in order, that fit in ``max_chars`` characters (one too long is skipped, not cut)."""
    out, total = [], 0
    for d in docs:
        if total + len(d) <= max_chars:
            out.append(d)
            total += len(d)
    return out


def _split(docs: list[str], share: float, rng: random.Random) -> tuple[list[str], list[str]]:
    """``(train, held_out)``: ``share`` of the documents, drawn at random (at least one when share > 0)."""
    docs = list(docs)
    rng.shuffle(docs)
    k = min(max(1, round(share * len(docs))), len(docs) - 1) if share > 0 else 0
    return docs[k:], docs[:k]


def build_corpus(config: CorpusConfig | None = None) -> Corpus:
    """Read, sample, hold out and shuffle the two sources (about 3 s the first time, parsing; 0.3 s after)."""
    s = config or CorpusConfig()
    if not isinstance(s, CorpusConfig):
        raise TypeError(f"config must be a CorpusConfig, got {type(s).__name__}")
    rng = random.Random(s.seed)
    english = list(dict.fromkeys(python_topics() + stdlib_docstrings()))  # one copy of each text
    rng.shuffle(english)
    if s.docs_chars is not None:
        english = _take(english, s.docs_chars)
        if len(english) < 2:  # one to train on, one to hold out
            raise ValueError(f"docs_chars={s.docs_chars} is too small: fewer than 2 documents fit; give 10000 or more")
    sources = {DOCS: english}
    if s.bracket_share > 0:
        wanted = sum(map(len, english)) * s.bracket_share / (1.0 - s.bracket_share)
        n = max(2, math.ceil(wanted / BRACKET_LENGTH))
        sources[BRACKETS] = bracket_documents(n, seed=s.seed, length=BRACKET_LENGTH)
    train: list[str] = []
    held: dict[str, list[str]] = {}
    chars: dict[str, int] = {}
    for name, docs in sources.items():
        kept, held[name] = _split(docs, s.held_out, rng)
        train += kept
        chars[name] = sum(map(len, kept))
    rng.shuffle(train)
    text = SEPARATOR.join(train)
    clean = {name: tuple(d for d in docs if d not in text) for name, docs in held.items()}
    return Corpus(text, {name: SEPARATOR.join(docs) for name, docs in clean.items()}, chars, clean)
