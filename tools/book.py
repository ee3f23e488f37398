#!/usr/bin/env python3
"""Set up, build and test the book with one command each.

    python3 tools/book.py build     # install, execute every chapter, build the HTML site
    python3 tools/book.py test      # install, run every test (package, notebooks, pairs, site)
    python3 tools/book.py test --quick   # the unit tests only, in about a minute
    python3 tools/book.py execute chapters/01_background.py   # rebuild one pair after an edit
    python3 tools/book.py assignments   # student notebooks, autograders, solutions: _build/assignments/
    python3 tools/book.py grade 01_background collected/ --csv grades.csv   # grade submissions
    python3 tools/book.py profile chapters/05_rlhf.py   # where a chapter's time goes (default: all)

The first run creates `.venv/` (unless you are already inside a virtual or conda environment)
and installs PyTorch first: the CPU build on a machine without an NVIDIA GPU, the CUDA build on a
machine with one. Later runs reuse what is installed. Only the standard library is used until the
environment exists; then the script re-runs itself inside it.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
TORCH_VERSION = "2.13.0"
TORCH_CPU_INDEX = os.environ.get("AIGC_TORCH_CPU_INDEX", "https://download.pytorch.org/whl/cpu")
STAMP_NAME = ".aigc-book-installed"
SITE_INDEX = ROOT / "_build" / "html" / "index.html"
# The pytest markers (pyproject.toml) that `test --quick` leaves out: slow unit tests, the chapters'
# notebooks, the site and its browser check, the assignments, and the tests that start several processes.
QUICK_MARKERS = ("slow", "notebook", "site", "assignments", "torchrun")
QUICK_EXPRESSION = f"not ({' or '.join(QUICK_MARKERS)})"


def log(message: str) -> None:
    print(f"[book] {message}", flush=True)


def run(cmd: list[str], **kwargs) -> None:
    log("$ " + " ".join(str(c) for c in cmd))
    subprocess.run(cmd, check=True, **kwargs)


# --------------------------------------------------------------------------- environment


def in_managed_env() -> bool:
    """True inside a virtualenv or conda environment that the reader chose themselves."""
    return sys.prefix != sys.base_prefix or bool(os.environ.get("CONDA_PREFIX"))


def env_python() -> Path:
    if in_managed_env():
        return Path(sys.executable)
    sub = "Scripts/python.exe" if os.name == "nt" else "bin/python"
    return VENV / sub


def has_nvidia_gpu() -> bool:
    smi = shutil.which("nvidia-smi")
    if not smi:
        return False
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and "GPU" in out.stdout


def install_torch(python: Path) -> None:
    """PyTorch first, so that nothing later pulls the multi-GB CUDA build onto a CPU machine."""
    pip = [str(python), "-m", "pip", "install"]
    probe = subprocess.run([str(python), "-c", "import torch"], capture_output=True)
    if probe.returncode == 0:
        return
    if platform.system() != "Linux" or has_nvidia_gpu():
        # macOS and Windows wheels on PyPI are CPU/MPS builds; on Linux with a GPU we want CUDA.
        run(pip + [f"torch=={TORCH_VERSION}", "numpy"])
        return
    # Linux without an NVIDIA GPU: the CPU build. A local wheel (pip's find-links) is tried
    # first; otherwise PyTorch's CPU index serves it.
    try:
        run(pip + [f"torch=={TORCH_VERSION}+cpu", "numpy"])
    except subprocess.CalledProcessError:
        run(pip + [f"torch=={TORCH_VERSION}+cpu", "numpy", "--extra-index-url", TORCH_CPU_INDEX])


def ensure_environment(extras: str) -> Path:
    """Create the environment if needed and install the book with the given extras."""
    python = env_python()
    if not python.exists():
        log(f"creating a virtual environment in {VENV.relative_to(ROOT)}/")
        run([sys.executable, "-m", "venv", str(VENV)])
    stamp_dir = Path(
        subprocess.run(
            [str(python), "-c", "import sys; print(sys.prefix)"], capture_output=True, text=True, check=True
        ).stdout.strip()
    )
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + extras.encode()).hexdigest()
    stamp = stamp_dir / STAMP_NAME
    if stamp.exists() and wanted in stamp.read_text().split():
        return python
    install_torch(python)
    run([str(python), "-m", "pip", "install", "-e", f"{ROOT}[{extras}]"])
    previous = stamp.read_text() if stamp.exists() else ""
    stamp.write_text(previous + wanted + "\n")
    return python


def reexec_inside(python: Path, argv: list[str]) -> None:
    # Compare environments, not interpreters: a venv's python is a symlink to the base one.
    if in_managed_env():
        return
    os.execv(str(python), [str(python), str(Path(__file__).resolve()), *argv, "--inside"])


# --------------------------------------------------------------------------- chapters


def chapter_sources(paths: list[str] | None = None) -> list[Path]:
    if paths:
        return [Path(p).resolve() for p in paths]
    return sorted((ROOT / "chapters").glob("[0-9][0-9]_*.py"))


def execute_chapter(py: Path, timeout: int = 1200) -> float:
    """Build `NN_name.ipynb` from `NN_name.py`, execute it, and store the outputs. Returns seconds."""
    import jupytext
    from nbclient import NotebookClient

    if py.suffix != ".py" or not py.exists():
        raise SystemExit(f"expected an existing chapter source chapters/NN_name.py, got {py}")
    notebook = jupytext.read(py)
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    notebook.metadata["language_info"] = {"name": "python"}
    os.environ.setdefault("PYTHONHASHSEED", "0")
    start = time.perf_counter()
    NotebookClient(
        notebook, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(py.parent)}}
    ).execute()
    seconds = time.perf_counter() - start
    for i, cell in enumerate(notebook.cells):  # random ids and timestamps would make every run a diff
        cell.id = f"cell-{i:03d}"
        cell.metadata.pop("execution", None)
    jupytext.write(notebook, py.with_suffix(".ipynb"), fmt="ipynb")
    stabilise_widget_ids(py.with_suffix(".ipynb"))
    return seconds


def stabilise_widget_ids(notebook_path: Path) -> None:
    """Replace the random ids of saved widgets (progress bars, sliders) by ids numbered in order."""
    import json
    import re

    text = notebook_path.read_text(encoding="utf-8")
    state = json.loads(text).get("metadata", {}).get("widgets", {})
    ids = {key for value in state.values() for key in value.get("state", {})}
    if not ids:
        return
    order = {}
    for match in re.finditer(r"[0-9a-f]{32}", text):
        if match.group() in ids and match.group() not in order:
            order[match.group()] = f"{len(order):032x}"
    notebook_path.write_text(re.sub(r"[0-9a-f]{32}", lambda m: order.get(m.group(), m.group()), text), encoding="utf-8")


def execute_chapters(paths: list[str] | None) -> None:
    times = []
    for py in chapter_sources(paths):
        log(f"executing {py.relative_to(ROOT)} ...")
        seconds = execute_chapter(py)
        times.append((py.name, seconds))
        log(f"  {py.with_suffix('.ipynb').name}: executed in {seconds:.1f} s")
    if times:
        log("chapter execution times:")
        for name, seconds in times:
            log(f"  {name:<32} {seconds:7.1f} s")


def fetch_site_assets() -> None:
    """The widget manager the site serves itself (fetched with npm once; see tools/site_extension.py)."""
    sys.path.insert(0, str(ROOT / "tools"))
    import site_extension

    problem = site_extension.fetch_widget_manager()
    if problem:
        log(f"warning: {problem}; the site's widgets will show their saved text only")


def build_site(strict: bool = False) -> None:
    fetch_site_assets()
    cmd = [sys.executable, "-c", "from jupyter_book.cli.main import main; main()", "build", str(ROOT)]
    if strict:
        cmd += ["--warningiserror", "--keep-going"]
    run(cmd, cwd=ROOT)


# --------------------------------------------------------------------------- commands


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def cmd_build(args: argparse.Namespace) -> None:
    if not args.no_execute:
        execute_chapters(None)
    build_site()
    bindir = Path(sys.executable).parent
    log(f"the site is built: open {SITE_INDEX} in a browser")
    log(f"  or serve it: {sys.executable} -m http.server -d {SITE_INDEX.parent} 8000")
    log(f"to run the chapters in Jupyter: {bindir / 'jupyter'} lab chapters/")


def pytest_command(quick: bool, pytest_args: list[str]) -> list[str]:
    """The pytest command line of `book.py test`; with ``quick``, the marked long tests are deselected."""
    selection = ["-m", QUICK_EXPRESSION] if quick else []
    return [sys.executable, "-m", "pytest", *selection, *pytest_args]


def cmd_test(args: argparse.Namespace) -> None:
    if not args.quick:
        fetch_site_assets()  # the site test builds the site and checks its widgets in a browser
    code = subprocess.call(pytest_command(args.quick, args.pytest_args), cwd=ROOT)
    raise SystemExit(code)


def cmd_execute(args: argparse.Namespace) -> None:
    execute_chapters(args.chapters)


def cmd_profile(args: argparse.Namespace) -> None:
    import chapter_profile

    profiles = []
    for py in chapter_sources(args.chapters):
        log(f"profiling {py.relative_to(ROOT)} ...")
        profiles.append(chapter_profile.profile_chapter(py))
    print(chapter_profile.report(profiles, chapter_profile.machine_peaks(), top=args.top), flush=True)


def cmd_assignments(args: argparse.Namespace) -> None:
    import classroom

    sources = classroom.assignment_sources(args.names)
    for source in sources:
        log(f"building {source.relative_to(ROOT)} ...")
        start = time.perf_counter()
        built = classroom.build_assignment(source, run_tests=not args.no_run_tests)
        log(f"  {built.name}: built in {time.perf_counter() - start:.1f} s")
    log(f"for each assignment under {classroom.OUT.relative_to(ROOT)}/NAME/:")
    log("  student/NAME.ipynb     hand this out (public checks only, no solutions)")
    log("  autograder/NAME-autograder.zip   grade with: python3 tools/book.py grade NAME SUBMISSIONS...")
    log("  solutions/NAME.ipynb   the reference solutions with every test")


def cmd_grade(args: argparse.Namespace) -> None:
    import json

    import classroom

    (source,) = classroom.assignment_sources([args.name])
    autograder = Path(args.autograder) if args.autograder else classroom.OUT / source.stem / "autograder" / (
        f"{source.stem}-autograder.zip"
    )
    submissions = classroom.submissions_in(args.submissions)
    if not autograder.is_file():
        if args.autograder:
            raise classroom.ClassroomError(f"no autograder zip at {autograder}")
        log(f"building the autograder for {source.stem} first ...")
        autograder = classroom.build_assignment(source).autograder
    grades = []
    for submission in submissions:
        grade = classroom.grade_submission(autograder, submission, args.cell_limit, args.run_limit)
        grades.append(grade)
        log(f"{submission}: {grade.total:g} / {grade.max_total:g}")
        for message in grade.messages:
            log(f"  {message}")
    csv_path = Path(args.csv)
    classroom.write_csv(grades, csv_path)
    log(f"grades written to {csv_path}")
    summary = {
        "assignment": source.stem,
        "csv": str(csv_path),
        "graded": len(grades),
        "scores": {str(g.submission): g.total for g in grades},
        "max_total": max((g.max_total for g in grades), default=0.0),
    }
    print(json.dumps(summary), flush=True)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    inside = "--inside" in argv
    if inside:
        argv.remove("--inside")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_build = sub.add_parser("build", help="install, execute every chapter, build the HTML site")
    p_build.add_argument("--no-execute", action="store_true", help="build the site from the stored outputs")
    p_test = sub.add_parser("test", help="install and run every test; extra arguments go to pytest")
    p_test.add_argument("--quick", action="store_true",
                        help=f"only the unit tests, about a minute (pytest -m {QUICK_EXPRESSION!r})")
    p_exec = sub.add_parser("execute", help="rebuild and execute the notebooks of the given chapter sources")
    p_exec.add_argument("chapters", nargs="*", help="chapters/NN_name.py files (default: all)")
    p_prof = sub.add_parser("profile", help="execute chapters with timers: where each one's time goes")
    p_prof.add_argument("chapters", nargs="*", help="chapters/NN_name.py files (default: all)")
    p_prof.add_argument("--top", type=int, default=5, help="slowest cells listed per chapter (5)")
    p_assign = sub.add_parser("assignments", help="build student notebooks, autograders and solutions")
    p_assign.add_argument("names", nargs="*", help="assignment names such as 01_background (default: all)")
    p_assign.add_argument("--no-run-tests", action="store_true", help="skip checking the solutions against the tests")
    p_grade = sub.add_parser("grade", help="grade submitted notebooks of one assignment, offline, into a CSV")
    p_grade.add_argument("name", help="the assignment, e.g. 01_background")
    p_grade.add_argument("submissions", nargs="+", help="submitted .ipynb files, or folders of them")
    p_grade.add_argument("--csv", default="grades.csv", help="where to write the grades (default: grades.csv)")
    p_grade.add_argument("--autograder", help="the autograder zip (default: the one built under _build/assignments)")
    p_grade.add_argument("--cell-limit", type=positive_seconds, default=60, help="seconds one cell may run (60)")
    p_grade.add_argument("--run-limit", type=positive_seconds, default=600, help="seconds one submission may run (600)")
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "test":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.pytest_args = extra

    if not inside:
        extras = "book,test" if args.command == "test" else "book"
        python = ensure_environment(extras)
        reexec_inside(python, argv)
    commands = {
        "build": cmd_build,
        "test": cmd_test,
        "execute": cmd_execute,
        "profile": cmd_profile,
        "assignments": cmd_assignments,
        "grade": cmd_grade,
    }
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import classroom

    try:
        commands[args.command](args)
    except classroom.ClassroomError as error:
        first, *rest = str(error).splitlines()
        print(f"book.py {args.command}: {first}", file=sys.stderr)
        if rest:
            print("\n".join(rest), file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
