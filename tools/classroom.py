"""Build and grade the book's assignments with otter-grader: offline, without Docker.

    python3 tools/book.py assignments                 # every chapter -> _build/assignments/
    python3 tools/book.py grade 01_background collected/ --csv grades.csv

An assignment is `assignments/NN_name.py`, a jupytext notebook in otter's assign format (questions,
solutions, public and hidden tests). `build_assignment` turns it into what a teacher hands out and
keeps: the student notebook (no solution code, public checks only), the autograder zip and the
solutions notebook.

Grading runs `otter run` on each submission in its own process. Every cell has a time limit, and
the whole run has one. A cell that runs past its limit, or that kills the kernel, is replaced by a
cell that raises, and the submission is graded again: the question that cell belonged to scores
zero with a message saying why, and the other questions are graded as usual. Nothing hangs.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ROOT / "assignments"
OUT = ROOT / "_build" / "assignments"
CELL_LIMIT_S = 60
RUN_LIMIT_S = 600
CHECK_CALL = re.compile(r"""grader\.check\(\s*["']([A-Za-z_]\w*)["']\s*\)""")


class ClassroomError(Exception):
    """A teacher's mistake with a one-line explanation (unknown assignment, missing submission)."""


# --------------------------------------------------------------------------- building


@dataclass(frozen=True)
class BuiltAssignment:
    name: str
    student: Path  # the notebook to hand out
    autograder: Path  # the zip that `otter run` grades with
    solutions: Path  # the notebook with solutions and every test


def assignment_sources(names: list[str] | None = None) -> list[Path]:
    """`assignments/NN_name.py` for the given names (`01_background` or a path), or all of them."""
    available = sorted(SOURCES.glob("[0-9][0-9]_*.py"))
    if not names:
        return available
    chosen = []
    for name in names:
        if name.endswith(".py") and Path(name).is_file():  # a teacher's own assignment
            chosen.append(Path(name).resolve())
            continue
        stem = Path(name).stem
        match = [p for p in available if p.stem == stem or p.stem.split("_", 1)[0] == stem]
        if not match:
            known = ", ".join(p.stem for p in available)
            raise ClassroomError(f"no assignment called {name!r}; there are: {known}")
        chosen += match
    return chosen


def build_assignment(source: Path, out: Path = OUT, run_tests: bool = True) -> BuiltAssignment:
    """`otter assign` one assignment into `out/NAME/{student,autograder,solutions}`.

    With `run_tests`, otter first runs the solutions against every test and fails the build if one
    does not pass, so a broken reference never reaches students.
    """
    import jupytext

    name = source.stem
    target = out / name
    shutil.rmtree(target, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix=f"assign-{name}-") as work:
        notebook = Path(work) / f"{name}.ipynb"
        jupytext.write(jupytext.read(source), notebook, fmt="ipynb")
        dist = Path(work) / "dist"
        cmd = [sys.executable, "-m", "otter", "assign", str(notebook), str(dist)]
        if not run_tests:
            cmd.append("--no-run-tests")
        proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True, env=_quiet_env())
        if proc.returncode != 0:
            tail = (proc.stdout + proc.stderr)[-3000:]
            raise ClassroomError(f"otter assign failed for {source.relative_to(ROOT)}:\n{tail}")
        zips = sorted((dist / "autograder").glob(f"{name}-autograder_*.zip"))
        built = BuiltAssignment(
            name=name,
            student=target / "student" / f"{name}.ipynb",
            autograder=target / "autograder" / f"{name}-autograder.zip",
            solutions=target / "solutions" / f"{name}.ipynb",
        )
        for path in (built.student, built.autograder, built.solutions):
            path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(dist / "student" / f"{name}.ipynb", built.student)
        shutil.copyfile(zips[-1], built.autograder)  # otter stamps the name with the time: drop it
        shutil.copyfile(dist / "autograder" / f"{name}.ipynb", built.solutions)
    return built


def _quiet_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("PYTHONHASHSEED", "0")
    env.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    return env


# --------------------------------------------------------------------------- grading


@dataclass
class Grade:
    """One submission's scores per question, and why any question was zeroed."""

    submission: Path
    scores: dict[str, float] = field(default_factory=dict)
    max_scores: dict[str, float] = field(default_factory=dict)
    messages: list[str] = field(default_factory=list)

    @property
    def total(self) -> float:
        return sum(self.scores.values())

    @property
    def max_total(self) -> float:
        return sum(self.max_scores.values())


def questions_of_cells(notebook: dict) -> list[str | None]:
    """For each cell, the question whose `grader.check("...")` call closes the block it sits in."""
    owners: list[str | None] = [None] * len(notebook["cells"])
    pending: list[int] = []
    for i, cell in enumerate(notebook["cells"]):
        pending.append(i)
        found = CHECK_CALL.search(_source(cell)) if cell["cell_type"] == "code" else None
        if found:
            for j in pending:
                owners[j] = found.group(1)
            pending = []
    return owners


def _source(cell: dict) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


def grade_submission(
    autograder: Path,
    submission: Path,
    cell_limit: float = CELL_LIMIT_S,
    run_limit: float = RUN_LIMIT_S,
) -> Grade:
    """Grade one notebook in a separate process; hanging or crashing cells cost only their question."""
    notebook = read_notebook(submission)
    owners = questions_of_cells(notebook)
    grade = Grade(submission)
    removed: dict[int, str] = {}
    with tempfile.TemporaryDirectory(prefix="grade-") as work:
        work = Path(work)
        for _attempt in range(len(notebook["cells"]) + 1):
            attempt_nb = _without_cells(notebook, removed)
            copy = work / submission.name
            copy.write_text(json.dumps(attempt_nb), encoding="utf-8")
            outcome = _run_worker(autograder, copy, work, cell_limit, run_limit)
            if outcome.results is not None:
                _read_scores(grade, outcome.results)
                break
            index = _cell_index(attempt_nb, outcome.running_source)
            if index is None or index in removed:
                grade.messages.append(f"grading stopped: {outcome.reason}; every question scores zero")
                _zero_everything(grade, autograder)
                break
            removed[index] = outcome.reason
        for index, reason in sorted(removed.items()):
            question = owners[index] or "no question"
            grade.messages.append(f"{question}: cell {index + 1} {reason}; it was left out, so {question} scores zero")
            if owners[index] in grade.scores:
                grade.scores[owners[index]] = 0.0
    return grade


def read_notebook(path: Path) -> dict:
    if not path.is_file():
        raise ClassroomError(f"no submission at {path}")
    try:
        notebook = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(notebook.get("cells"), list):
            raise ValueError
    except (ValueError, AttributeError, UnicodeDecodeError):
        raise ClassroomError(f"{path} is not a Jupyter notebook (.ipynb)") from None
    return notebook


@dataclass
class _Outcome:
    results: dict | None
    reason: str = ""
    running_source: str | None = None


def _run_worker(autograder: Path, copy: Path, work: Path, cell_limit: float, run_limit: float) -> _Outcome:
    progress = work / "running-cell.txt"
    results_dir = work / "results"
    shutil.rmtree(results_dir, ignore_errors=True)
    results_dir.mkdir()
    progress.unlink(missing_ok=True)
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "worker",
        str(autograder.resolve()),
        str(copy),
        str(results_dir),
        str(progress),
        str(cell_limit),
    ]
    proc = subprocess.Popen(
        cmd, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_quiet_env()
    )
    try:
        text, _ = proc.communicate(timeout=run_limit)
    except subprocess.TimeoutExpired:
        _kill_tree(proc)
        return _Outcome(None, f"ran past the {run_limit:g} s limit for the whole notebook", _read(progress))
    result_file = results_dir / "results.json"
    if proc.returncode == 0 and result_file.exists():
        return _Outcome(json.loads(result_file.read_text(encoding="utf-8")))
    if "CellTimeoutError" in text or "timed out" in text:
        reason = f"ran past the {cell_limit:g} s limit for one cell"
    elif "DeadKernelError" in text or "Kernel died" in text:
        reason = "crashed the Python kernel"
    else:
        reason = "stopped the grader: " + (text.strip().splitlines() or ["no output"])[-1][:200]
    return _Outcome(None, reason, _read(progress))


def _kill_tree(proc: subprocess.Popen) -> None:
    """Kill the worker and its kernel: the kernel runs in a session of its own, so killing the worker's
    process group would leave it spinning."""
    import psutil

    try:
        family = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    for p in [*family, proc]:
        try:
            p.kill()
        except (psutil.NoSuchProcess, ProcessLookupError):
            pass
    proc.wait()


def _read(path: Path) -> str | None:
    return path.read_text(encoding="utf-8") if path.exists() else None


def _cell_index(notebook: dict, source: str | None) -> int | None:
    if source is None:
        return None
    for i, cell in enumerate(notebook["cells"]):
        if cell["cell_type"] == "code" and _source(cell).strip() == source.strip():
            return i
    return None


def _without_cells(notebook: dict, removed: dict[int, str]) -> dict:
    copy = json.loads(json.dumps(notebook))
    for index, reason in removed.items():
        cell = copy["cells"][index]
        cell["source"] = f"raise RuntimeError({('left out by the grader: this cell ' + reason)!r})\n"
        cell["outputs"] = []
    return copy


def _read_scores(grade: Grade, results: dict) -> None:
    for test in results.get("tests", []):
        if test.get("max_score") is None:
            continue  # the "Public Tests" summary row
        grade.scores[test["name"]] = float(test.get("score") or 0.0)
        grade.max_scores[test["name"]] = float(test["max_score"])


def _zero_everything(grade: Grade, autograder: Path) -> None:
    """Every question of the autograder at zero, with its points read from otter's test files."""
    import ast
    import zipfile

    with zipfile.ZipFile(autograder) as archive:
        for member in archive.namelist():
            if member.startswith("tests/") and member.endswith(".py"):
                tree = ast.parse(archive.read(member).decode("utf-8"))
                for node in tree.body:
                    if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "test":
                        test = ast.literal_eval(node.value)
                        grade.scores[test["name"]] = 0.0
                        grade.max_scores[test["name"]] = float(test.get("points") or 1)


def write_csv(grades: list[Grade], path: Path) -> None:
    """One row per submission: each question's score, the total, and what the grader had to do."""
    questions = sorted({q for g in grades for q in g.max_scores}, key=_question_order)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["submission", *questions, "total", "max_total", "messages"])
        for g in grades:
            writer.writerow(
                [
                    g.submission.name,
                    *[_number(g.scores.get(q, 0.0)) for q in questions],
                    _number(g.total),
                    _number(g.max_total),
                    " | ".join(g.messages),
                ]
            )


def _question_order(name: str) -> tuple:
    digits = re.findall(r"\d+", name)
    return (int(digits[0]) if digits else 0, name)


def _number(x: float) -> str:
    return f"{x:g}"


def submissions_in(paths: list[str]) -> list[Path]:
    """Notebooks named on the command line, or every `.ipynb` in the folders named there."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found += sorted(q for q in p.glob("*.ipynb") if not q.name.startswith("."))
        elif p.is_file():
            found.append(p)
        else:
            raise ClassroomError(f"no submission at {p}")
    if not found:
        raise ClassroomError(f"no .ipynb submissions in {', '.join(paths)}")
    for path in found:
        read_notebook(path)  # refuse a stray file before any grading starts
    return found


# --------------------------------------------------------------------------- the worker process


def _worker(autograder: str, submission: str, results_dir: str, progress: str, cell_limit: str) -> None:
    """Runs `otter run` with a time limit on every cell, noting which cell is running."""
    import nbconvert.preprocessors as preprocessors

    base = preprocessors.ExecutePreprocessor

    class LimitedExecutePreprocessor(base):
        def preprocess_cell(self, cell, resources, index):
            self.timeout = float(cell_limit)
            self.interrupt_on_timeout = False  # a timeout raises; the parent re-grades without the cell
            if cell.cell_type == "code":
                Path(progress).write_text(cell.source, encoding="utf-8")
            return super().preprocess_cell(cell, resources, index)

    # otter builds its executor from this name at grading time; it offers no setting for a limit.
    preprocessors.ExecutePreprocessor = LimitedExecutePreprocessor
    from otter.run import main as otter_run

    otter_run(submission, autograder=autograder, output_dir=results_dir, no_logo=True)


if __name__ == "__main__" and len(sys.argv) == 7 and sys.argv[1] == "worker":
    _worker(*sys.argv[2:])
