"""The glossary page and the chapters' Key terms tables agree (files only; no site build).

`glossary.md` holds one MyST ``{glossary}`` directive. Each entry is two term lines, the English
name and the Chinese name, then a one-line definition that ends with the chapters that list the
term ("Chapters {doc}`1 <chapters/01_background>`, ..."). Each chapter's "## Key terms" table
links every English term to its entry with ``{term}`name``` or ``{term}`text <name>```.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GLOSSARY = ROOT / "glossary.md"
CHAPTERS = sorted((ROOT / "chapters").glob("[0-9][0-9]_*.py"))

CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
TERM_ROLE = re.compile(r"\{term\}`([^`]+)`")
CHAPTER_LIST = re.compile(r"\bChapters? ((?:\{doc\}`\d+ <chapters/\w+>`(?:, )?)+)\.$")
CHAPTER_LINK = re.compile(r"\{doc\}`(\d+) <chapters/(\w+)>`")


@dataclass
class Entry:
    terms: list[str]
    definition: str
    line: int


@dataclass
class KeyTerm:
    chapter: int
    english: str  # the table's English cell, {term} roles included
    chinese: str
    line: int

    @property
    def where(self) -> str:
        return f"{CHAPTERS[self.chapter].name}:{self.line}"


def parse_glossary(text: str) -> tuple[list[str], list[Entry]]:
    """The options and the entries of the one ``{glossary}`` directive in ``text``."""
    lines = text.split("\n")
    starts = [i for i, line in enumerate(lines) if re.fullmatch(r"```+\{glossary\}\s*", line)]
    assert len(starts) == 1, "glossary.md must hold exactly one ```{glossary} directive"
    fence = lines[starts[0]].split("{")[0]
    end = next(i for i in range(starts[0] + 1, len(lines)) if lines[i].rstrip() == fence)
    body = lines[starts[0] + 1 : end]
    options = [line for line in body if line.startswith(":")]
    entries: list[Entry] = []
    previous = ""
    for number, line in enumerate(body, start=starts[0] + 2):
        if not line.strip() or line.startswith(":"):
            previous = line
            continue
        if not line[0].isspace():  # a term line: it starts an entry, or adds a name to one
            if not previous.strip() or previous.startswith(":"):
                entries.append(Entry([], "", number))
            entries[-1].terms.append(line.strip())
        else:
            entries[-1].definition = (entries[-1].definition + " " + line.strip()).strip()
        previous = line
    return options, entries


def parse_key_terms(path: Path, chapter: int) -> list[KeyTerm]:
    """The rows of a chapter's "## Key terms" table (markdown cells of a jupytext percent file)."""
    lines = path.read_text(encoding="utf-8").split("\n")
    heading = [i for i, line in enumerate(lines) if line.strip() == "# ## Key terms"]
    assert len(heading) == 1, f"{path.name}: expected one '## Key terms' section"
    rows = []
    for i in range(heading[0] + 1, len(lines)):
        line = lines[i]
        if line.startswith("# ## ") or line.startswith("# %%") or not line.startswith("#"):
            break
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line[1:].strip().strip("|"))]
        if not line.startswith("# |") or set(cells[0]) <= set("-: ") or cells[0] == "English":
            continue
        rows.append(KeyTerm(chapter, cells[0], cells[1] if len(cells) > 1 else "", i + 1))
    return rows


def role_target(content: str) -> str:
    """The entry a ``{term}`` role points to: ``text <target>`` or the text itself."""
    explicit = re.fullmatch(r"(.*?)\s*<([^<>]+)>", content, flags=re.S)
    return (explicit.group(2) if explicit else content).strip()


def missing_key_terms(entries: list[Entry], key_terms: list[KeyTerm]) -> list[str]:
    """Key-term rows whose English terms are not all linked to an English glossary name."""
    english = {e.terms[0] for e in entries if e.terms}
    problems = []
    for row in key_terms:
        targets = [role_target(m) for m in TERM_ROLE.findall(row.english)]
        unlinked = TERM_ROLE.sub("", row.english).strip(" ,;/")
        if not targets or unlinked:
            problems.append(f"{row.where}: {row.english!r} is not (only) {{term}} links")
        problems += [f"{row.where}: no glossary entry {t!r}" for t in targets if t not in english]
    return problems


def chapters_listed(definition: str) -> list[int]:
    match = CHAPTER_LIST.search(definition)
    return [int(n) for n, _ in CHAPTER_LINK.findall(match.group(1))] if match else []


@pytest.fixture(scope="module")
def glossary() -> tuple[list[str], list[Entry]]:
    return parse_glossary(GLOSSARY.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def key_terms() -> list[KeyTerm]:
    assert CHAPTERS, "no chapters found"
    return [row for n, path in enumerate(CHAPTERS) for row in parse_key_terms(path, n)]


def test_chapters_are_numbered_in_order():
    assert [int(p.name[:2]) for p in CHAPTERS] == list(range(len(CHAPTERS)))


def test_every_chapter_has_key_terms_with_chinese_names(key_terms):
    for n, path in enumerate(CHAPTERS):
        assert any(row.chapter == n for row in key_terms), f"{path.name}: empty Key terms table"
    no_chinese = [f"{row.where}: {row.english}" for row in key_terms if not CJK.search(row.chinese)]
    assert not no_chinese, "key terms without a Chinese name:\n" + "\n".join(no_chinese)


def test_every_entry_has_an_english_name_a_chinese_name_and_a_definition(glossary):
    options, entries = glossary
    assert ":sorted:" in options
    assert len(entries) >= 100
    bad = []
    for e in entries:
        if len(e.terms) != 2:
            bad.append(f"line {e.line}: {e.terms} (want an English and a Chinese term line)")
            continue
        english, chinese = e.terms
        if CJK.search(english) or not re.search(r"[A-Za-z]", english):
            bad.append(f"line {e.line}: {english!r} is not an English name")
        if not CJK.search(chinese):
            bad.append(f"line {e.line}: {chinese!r} has no Chinese characters")
        if " : " in english + chinese:  # Sphinx would read the rest as a classifier
            bad.append(f"line {e.line}: ' : ' in a term")
        text = CHAPTER_LIST.sub("", e.definition).strip()
        if len(text) < 10:
            bad.append(f"line {e.line}: {english!r} has no definition")
        if not chapters_listed(e.definition):
            bad.append(f"line {e.line}: {english!r}'s definition does not end with its chapters")
    assert not bad, "malformed glossary entries:\n" + "\n".join(bad)


def test_no_duplicate_entries(glossary):
    _, entries = glossary
    names = [t.lower() for e in entries for t in e.terms]  # Sphinx matches terms case-insensitively
    duplicates = sorted({t for t in names if names.count(t) > 1})
    assert not duplicates, f"terms defined twice: {duplicates}"


def test_entries_are_in_alphabetical_order(glossary):
    _, entries = glossary
    first = [e.terms[0] for e in entries]
    key = [unicodedata.normalize("NFD", t.lower()) for t in first]  # the order of :sorted:
    assert key == sorted(key), "glossary.md is not in alphabetical order"


def test_every_key_term_is_a_glossary_entry(glossary, key_terms):
    _, entries = glossary
    problems = missing_key_terms(entries, key_terms)
    assert not problems, "key terms missing from glossary.md:\n" + "\n".join(problems)


def test_a_removed_entry_is_reported(glossary, key_terms):
    _, entries = glossary
    row = key_terms[0]
    target = role_target(TERM_ROLE.findall(row.english)[0])
    fewer = [e for e in entries if e.terms[0] != target]
    assert len(fewer) == len(entries) - 1
    assert any(target in p for p in missing_key_terms(fewer, key_terms))
    unlinked = KeyTerm(row.chapter, "a term without a link", "术语", row.line)
    assert missing_key_terms(entries, [unlinked])


def test_each_entry_names_the_chapters_that_list_it(glossary, key_terms):
    _, entries = glossary
    listed_by: dict[str, set[int]] = {}
    for row in key_terms:
        for content in TERM_ROLE.findall(row.english):
            listed_by.setdefault(role_target(content), set()).add(row.chapter)
    wrong = []
    for e in entries:
        for number, name in CHAPTER_LINK.findall(e.definition):
            if not (ROOT / "chapters" / f"{name}.py").exists() or int(name[:2]) != int(number):
                wrong.append(f"{e.terms[0]!r}: bad chapter link {number} <chapters/{name}>")
        named = chapters_listed(e.definition)
        if named != sorted(listed_by.get(e.terms[0], ())):
            wrong.append(f"{e.terms[0]!r}: says chapters {named}, listed in {sorted(listed_by.get(e.terms[0], ()))}")
    assert not wrong, "glossary chapters disagree with the Key terms tables:\n" + "\n".join(wrong)


def test_every_term_link_in_the_book_resolves(glossary):
    _, entries = glossary
    known = {t.lower() for e in entries for t in e.terms}
    sources = [GLOSSARY, ROOT / "intro.md", *CHAPTERS]
    broken = []
    for path in sources:
        for number, line in enumerate(path.read_text(encoding="utf-8").split("\n"), start=1):
            for content in TERM_ROLE.findall(line):
                if role_target(content).lower() not in known:
                    broken.append(f"{path.name}:{number}: {{term}}`{content}`")
    assert not broken, "links to terms that glossary.md does not define:\n" + "\n".join(broken)
