"""The graded assignments: built for every chapter, graded offline, and no grading can hang.

Each chapter's assignment is built with `otter assign`; its reference solutions must score full
marks and its blank student notebook zero, and the student notebook must hold no solution code and
no hidden test. The grading machinery itself (time limits, crashes, partial marks, the CSV, the
command's bad inputs) is tested on `tests/data/99_tiny.py`, small enough to grade in seconds.
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import jupytext
import pytest

pytestmark = pytest.mark.assignments
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import classroom  # noqa: E402

CHAPTERS = sorted(p.stem for p in (ROOT / "chapters").glob("[0-9][0-9]_*.py"))
TINY = ROOT / "tests" / "data" / "99_tiny.py"


# ----------------------------------------------------------------------------- every chapter


def test_every_chapter_has_an_assignment():
    missing = [name for name in CHAPTERS if not (classroom.SOURCES / f"{name}.py").exists()]
    assert not missing, f"chapters without assignments/NAME.py: {missing}"


def exercise_numbers(chapter: str) -> list[int]:
    """The numbers of the chapter's exercises: `1. **Title.**` items under "## Exercises"."""
    text = (ROOT / "chapters" / f"{chapter}.py").read_text(encoding="utf-8")
    section = text.split("# ## Exercises", 1)[1].split("# ## ", 1)[0]
    return [int(n) for n in re.findall(r"^#\s{1,3}(\d+)\.\s+\*\*", section, flags=re.M)]


def questions(source: Path) -> list[dict]:
    """The question configs (`# BEGIN QUESTION` raw cells) of an assignment source, in order."""
    import yaml

    found = []
    for cell in jupytext.read(source).cells:
        if cell.cell_type == "raw" and cell.source.lstrip().upper().startswith("# BEGIN QUESTION"):
            found.append(yaml.safe_load(cell.source.split("\n", 1)[1]) or {})
    return found


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_every_exercise_is_a_question(chapter: str):
    names = [q.get("name") for q in questions(classroom.SOURCES / f"{chapter}.py")]
    expected = [f"ex{n}" for n in exercise_numbers(chapter)]
    assert expected, f"{chapter}: no numbered exercises found in the chapter"
    assert names == expected, (
        f"{chapter}: the assignment's questions {names} are not the chapter's exercises {expected}"
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, classroom.BuiltAssignment]:
    """Every chapter's assignment, built once (the reference is graded below, so otter need not)."""
    out = tmp_path_factory.mktemp("assignments")
    return {s.stem: classroom.build_assignment(s, out, run_tests=False) for s in classroom.assignment_sources()}


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_reference_solutions_score_full_marks(chapter: str, built):
    assignment = built[chapter]
    grade = classroom.grade_submission(assignment.autograder, assignment.solutions)
    assert grade.max_total > 0 or all(q.get("manual") for q in questions(classroom.SOURCES / f"{chapter}.py"))
    assert grade.total == grade.max_total, f"{chapter}: {grade.scores} of {grade.max_scores}; {grade.messages}"
    assert not grade.messages


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_blank_student_notebook_scores_zero(chapter: str, built):
    assignment = built[chapter]
    grade = classroom.grade_submission(assignment.autograder, assignment.student)
    assert grade.total == 0, f"{chapter}: a blank notebook scored {grade.scores}"
    assert set(grade.max_scores) == {
        q["name"] for q in questions(classroom.SOURCES / f"{chapter}.py") if not q.get("manual")
    }


def test_a_half_right_chapter_answer_gets_part_of_the_points(built, tmp_path):
    # Chapter 1, exercise 6: the compute and the ratio right, the closest model wrong ("PaLM" is
    # what DeepSeek-V3's total parameters instead of its active ones give).
    notebook = json.loads(built["01_background"].solutions.read_text(encoding="utf-8"))
    cells = [c for c in notebook["cells"] if "models = load_models()" in "".join(c["source"])]
    assert len(cells) == 1, "the exercise 6 solution cell moved: update this test"
    cells[0]["source"] = (
        "chinchilla_gpt3_flops = training_flops_estimate(175e9, 3.7e12)\n"
        "times_gpt3 = chinchilla_gpt3_flops / 3.14e23\n"
        'closest_model = "PaLM"\n'
    )
    submission = tmp_path / "01_background.ipynb"
    submission.write_text(json.dumps(notebook), encoding="utf-8")
    grade = classroom.grade_submission(built["01_background"].autograder, submission)
    assert 0 < grade.scores["ex6"] < grade.max_scores["ex6"], grade.scores
    others = {q: s for q, s in grade.scores.items() if q != "ex6"}
    assert others == {q: grade.max_scores[q] for q in others}, grade.scores


def solution_lines(source: Path) -> tuple[list[list[str]], list[str]]:
    """The solution code of each solution cell, and the model answers' text, from the source."""
    code, prose, inside = [], [], False
    for cell in jupytext.read(source).cells:
        if cell.cell_type == "raw":
            head = cell.source.strip().upper()
            inside = head.startswith("# BEGIN SOLUTION") or (inside and not head.startswith("# END SOLUTION"))
            continue
        if not inside:
            continue
        if cell.cell_type == "markdown":
            prose += [line.strip() for line in cell.source.splitlines() if len(line.strip()) > 20]
            continue
        lines, shown, block = [], set(), False
        for line in cell.source.splitlines():
            stripped = line.strip()
            if stripped in ("# BEGIN SOLUTION", "# BEGIN SOLUTION NO PROMPT"):
                block = True
            elif stripped == "# END SOLUTION":
                block = False
            elif block or stripped.endswith("# SOLUTION"):
                text = stripped.removesuffix("# SOLUTION").strip()
                if block and text and not text.startswith("#"):
                    lines.append(text)
                elif "=" in text:
                    lines.append(text.split("=", 1)[1].strip())  # the value the student must find
            else:
                shown.add(stripped)  # the scaffold students get (a loop header may be in both)
        code.append([line for line in lines if line not in ("...", "") and line not in shown])
    return code, prose


@pytest.mark.parametrize("chapter", [*CHAPTERS, "99_tiny"])
def test_student_notebook_holds_no_solution_and_no_hidden_test(chapter: str, built, tiny):
    assignment = tiny if chapter == "99_tiny" else built[chapter]
    source = TINY if chapter == "99_tiny" else classroom.SOURCES / f"{chapter}.py"
    student = json.loads(assignment.student.read_text(encoding="utf-8"))
    answer_cells = [
        "".join(c["source"])
        for c in student["cells"]
        if c["cell_type"] == "code" and "otter_answer_cell" in c.get("metadata", {}).get("tags", [])
    ]
    code, prose = solution_lines(source)
    assert len(answer_cells) == len(code), f"{chapter}: {len(code)} solution cells but {len(answer_cells)} answer cells"
    for shown, hidden in zip(answer_cells, code):
        shown_lines = {line.strip() for line in shown.splitlines()}
        leaked = [line for line in hidden if line in shown_lines]
        assert not leaked, f"{chapter}: solution code in the student notebook: {leaked[:3]}"
    whole = json.dumps(student, ensure_ascii=False)
    leaked_prose = [line for line in prose if json.dumps(line, ensure_ascii=False)[1:-1] in whole]
    assert not leaked_prose, f"{chapter}: a model answer is in the student notebook: {leaked_prose[:2]}"
    tests = student["metadata"]["otter"]["tests"]
    hidden = [case for t in tests.values() for suite in t["suites"] for case in suite["cases"] if case["hidden"]]
    assert not hidden, f"{chapter}: hidden tests reached the student notebook"


# ----------------------------------------------------------------------------- the grading machinery


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> classroom.BuiltAssignment:
    return classroom.build_assignment(TINY, tmp_path_factory.mktemp("tiny"))


def submission(tiny: classroom.BuiltAssignment, tmp_path: Path, replace: dict[str, str]) -> Path:
    """The reference notebook with each cell that starts with a key of `replace` replaced."""
    notebook = json.loads(tiny.solutions.read_text(encoding="utf-8"))
    for cell in notebook["cells"]:
        for start, new in replace.items():
            if "".join(cell["source"]).startswith(start):
                cell["source"] = new
    path = tmp_path / "99_tiny.ipynb"
    path.write_text(json.dumps(notebook), encoding="utf-8")
    return path


def test_tiny_reference_full_and_blank_zero(tiny):
    assert classroom.grade_submission(tiny.autograder, tiny.solutions).scores == {"ex1": 2, "ex2": 2}
    assert classroom.grade_submission(tiny.autograder, tiny.student).scores == {"ex1": 0, "ex2": 0}


def test_half_right_answer_gets_part_of_the_points(tiny, tmp_path):
    wrong = submission(tiny, tmp_path, {"square =": "square = 9\nroot = 1.4\n"})
    grade = classroom.grade_submission(tiny.autograder, wrong)
    assert grade.scores == {"ex1": 1, "ex2": 2}, grade.scores


def test_an_endless_loop_costs_only_its_question(tiny, tmp_path):
    looping = submission(tiny, tmp_path, {"square =": "square = 9\nroot = 2 ** 0.5\nwhile True:\n    pass\n"})
    grade = classroom.grade_submission(tiny.autograder, looping, cell_limit=20)
    assert grade.scores == {"ex1": 0, "ex2": 2}, (grade.scores, grade.messages)
    assert any("ex1" in m and "20 s limit for one cell" in m for m in grade.messages), grade.messages


def test_a_kernel_crash_costs_only_its_question(tiny, tmp_path):
    crashing = submission(tiny, tmp_path, {"def double": "import os\nos._exit(1)\n"})
    grade = classroom.grade_submission(tiny.autograder, crashing)
    assert grade.scores == {"ex1": 2, "ex2": 0}, grade.scores
    assert any("ex2" in m and "crashed" in m for m in grade.messages), grade.messages


def test_the_whole_run_has_a_time_limit_too(tiny, tmp_path):
    # Each cell stays under its own limit; together they would take far longer than the run may.
    slow = submission(tiny, tmp_path, {"def double": "import time\ntime.sleep(120)\n"})
    grade = classroom.grade_submission(tiny.autograder, slow, cell_limit=200, run_limit=25)
    assert grade.scores == {"ex1": 2, "ex2": 0}, grade.scores
    assert any("25 s limit for the whole notebook" in m for m in grade.messages), grade.messages


def test_grade_command_writes_a_csv_and_one_json_line(tiny, tmp_path):
    folder = tmp_path / "collected"
    folder.mkdir()
    (folder / "alice.ipynb").write_bytes(tiny.solutions.read_bytes())
    (folder / "bob.ipynb").write_bytes(tiny.student.read_bytes())
    out = tmp_path / "grades.csv"
    proc = run_book("grade", str(TINY), str(folder), "--autograder", str(tiny.autograder), "--csv", str(out))
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["graded"] == 2 and summary["max_total"] == 4
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    assert [(r["submission"], r["ex1"], r["ex2"], r["total"]) for r in rows] == [
        ("alice.ipynb", "2", "2", "4"),
        ("bob.ipynb", "0", "0", "0"),
    ]


def run_book(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "tools" / "book.py"), *args, "--inside"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["grade", "77_nothing", "x.ipynb"], "no assignment called '77_nothing'"),
        (["grade", CHAPTERS[0], "missing.ipynb"], "no submission at missing.ipynb"),
        (["grade", CHAPTERS[0], "pyproject.toml"], "is not a Jupyter notebook"),
        (["grade", CHAPTERS[0], "tests/data"], "no .ipynb submissions in tests/data"),
        (["assignments", "77_nothing"], "no assignment called '77_nothing'"),
    ],
)
def test_bad_classroom_input_is_one_line_and_exit_2(args, message):
    proc = run_book(*args)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
