"""The capstone's corpus: offline, deterministic, held-out documents never trained on."""

from __future__ import annotations

import sys
import sysconfig

import pytest

from aigc_book.capstone import corpus
from aigc_book.capstone.corpus import (
    BRACKETS,
    DOCS,
    MIN_DOCSTRING_CHARS,
    CorpusConfig,
    bracket_documents,
    build_corpus,
    python_topics,
    stdlib_docstrings,
)
from aigc_book.text.corpora import python_docs_text
from aigc_book.text.languages import BracketLanguage

SEP = "\n\n"


@pytest.fixture
def synthetic(monkeypatch):
    """Replace the English sources by 400 distinct one-paragraph documents (exact checks, no parsing)."""
    topics = [f"topic {i:03d}: " + "the quick brown fox " * (1 + i % 7) for i in range(100)]
    docstrings = [f"docstring {i:03d}: " + "returns a value " * (1 + i % 5) for i in range(300)]
    monkeypatch.setattr(corpus, "python_topics", lambda: list(topics))
    monkeypatch.setattr(corpus, "stdlib_docstrings", lambda: list(docstrings))
    return topics + docstrings


@pytest.mark.slow
def test_stdlib_docstrings_are_long_unique_and_read_without_importing():
    docs = stdlib_docstrings()
    assert len(docs) > 2000 and sum(map(len, docs)) > 500_000
    assert min(map(len, docs)) >= MIN_DOCSTRING_CHARS and len(set(docs)) == len(docs)
    assert any(d.startswith("JSON (JavaScript Object Notation)") for d in docs)  # json/__init__.py, a subfolder
    assert "antigravity" not in sys.modules  # importing it would open a web browser


@pytest.mark.slow
def test_stdlib_docstrings_cap_keeps_a_prefix_within_max_chars():
    capped = stdlib_docstrings(max_chars=20_000)
    assert 19_000 <= sum(map(len, capped)) <= 20_000
    assert capped == stdlib_docstrings()[: len(capped)]
    with pytest.raises(ValueError, match="max_chars must be a positive int"):
        stdlib_docstrings(max_chars=0)


def test_python_without_stdlib_source_raises_runtime_error(monkeypatch, tmp_path):
    (tmp_path / "os.pyc").write_bytes(b"")  # only compiled files, as some distributions ship
    monkeypatch.setattr(sysconfig, "get_paths", lambda *a, **k: {"stdlib": str(tmp_path)})
    with pytest.raises(RuntimeError, match="no standard-library source") as err:
        stdlib_docstrings()
    assert "\n" not in str(err.value)


def test_python_topics_are_the_chapter_one_corpus_as_documents():
    topics = python_topics()
    assert len(topics) > 50 and SEP.join(topics) == python_docs_text()


def test_bracket_documents_are_well_formed_deterministic_and_without_bos():
    docs = bracket_documents(20, seed=3, length=30)
    lang = BracketLanguage()
    assert len(docs) == 20 and all(len(d) == 30 and "^" not in d for d in docs)
    assert all(lang.is_well_formed([lang.bos_id, *lang.encode(d)]) for d in docs)
    assert docs == bracket_documents(20, seed=3, length=30) != bracket_documents(20, seed=4, length=30)


def test_same_settings_give_the_same_corpus_and_another_seed_another():
    small = CorpusConfig(docs_chars=100_000, seed=5)
    a, b = build_corpus(small), build_corpus(small)
    assert a == b
    other = build_corpus(CorpusConfig(docs_chars=100_000, seed=6))
    assert other.train != a.train and other.held_out != a.held_out


def test_no_held_out_document_is_a_training_document(synthetic):
    c = build_corpus(CorpusConfig(held_out=0.1, seed=1))
    train = set(c.train.split(SEP))
    held = {name: text.split(SEP) for name, text in c.held_out.items()}
    assert set(held) == {DOCS, BRACKETS}
    for name, docs in held.items():
        assert len(docs) >= 5 and not train & set(docs), name
        assert all(d not in c.train for d in docs)  # not even inside a longer document
    assert train | set(held[DOCS]) >= set(synthetic)  # every document is used


def test_held_out_document_contained_in_a_training_document_is_dropped(monkeypatch):
    short = [f"note {i:03d} on the value" for i in range(100)]
    long = [f"{s}, and a longer paragraph about it" for s in short]  # each contains a short one
    monkeypatch.setattr(corpus, "python_topics", lambda: long)
    monkeypatch.setattr(corpus, "stdlib_docstrings", lambda: short)
    c = build_corpus(CorpusConfig(held_out=0.3, bracket_share=0.0))
    held = c.held_out[DOCS].split(SEP)
    assert all(d not in c.train for d in held)
    assert len(held) < round(0.3 * 200)  # some short notes were held out while their long version trained


def test_real_corpus_holds_out_whole_documents_never_seen_in_training():
    c = build_corpus(CorpusConfig(docs_chars=300_000, seed=2))
    long_pieces = [p for p in c.held_out[DOCS].split(SEP) if len(p) >= 200]
    assert len(long_pieces) >= 5 and all(p not in c.train for p in long_pieces)
    assert all(p not in c.train for p in c.held_out[BRACKETS].split(SEP))


@pytest.mark.parametrize("share", [0.1, 0.3])
def test_bracket_share_of_training_characters_is_as_asked(synthetic, share):
    c = build_corpus(CorpusConfig(bracket_share=share))
    assert c.chars[BRACKETS] / sum(c.chars.values()) == pytest.approx(share, abs=0.02)


def test_zero_bracket_share_leaves_the_source_out(synthetic):
    c = build_corpus(CorpusConfig(bracket_share=0.0))
    assert set(c.chars) == set(c.held_out) == {DOCS}


def test_docs_chars_caps_the_english_text(synthetic):
    cap = 5_000
    c = build_corpus(CorpusConfig(docs_chars=cap))
    english = c.chars[DOCS] + sum(len(d) for d in c.held_out[DOCS].split(SEP))
    assert 0.9 * cap <= english <= cap
    assert c.train_bytes == len(c.train.encode("utf-8"))


@pytest.mark.parametrize("kwargs, message", [
    ({"docs_chars": 0}, "docs_chars must be a positive int"),
    ({"docs_chars": 2.5}, "docs_chars must be a positive int"),
    ({"bracket_share": 1.0}, "bracket_share must be a number in"),
    ({"bracket_share": -0.1}, "bracket_share must be a number in"),
    ({"bracket_share": float("nan")}, "bracket_share must be a number in"),
    ({"held_out": 0.6}, "held_out must be a number in"),
    ({"held_out": True}, "held_out must be a number in"),
    ({"seed": "0"}, "seed must be an int"),
])
def test_bad_settings_raise_one_line_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message) as err:
        CorpusConfig(**kwargs)
    assert "\n" not in str(err.value)


def test_build_corpus_refuses_a_cap_no_two_documents_fit_and_a_wrong_type(synthetic):
    with pytest.raises(ValueError, match="too small"):
        build_corpus(CorpusConfig(docs_chars=30))
    with pytest.raises(TypeError, match="CorpusConfig"):
        build_corpus({"seed": 0})
