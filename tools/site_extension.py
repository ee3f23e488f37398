"""What the book's site adds to Jupyter Book 1 (a local Sphinx extension, see `_config.yml`).

- Chapter pages show code as a reader would type it: the test markers nbval reads
  (`# NBVAL_CHECK_OUTPUT` and the like) are taken out of the code cells.
- Each chapter page starts with downloads of the chapter as a notebook and as a Python script.
- A script is added to a page once: sphinx-thebe's inline settings, added twice, declared the same
  `const` twice, a SyntaxError in every page's console.
- Saved widget state (progress bars, sliders) renders from a widget manager served by the site
  itself: `@jupyter-widgets/html-manager`, which `tools/book.py` fetches once with npm into
  `_build/vendor/` (an install step, like pip's) and this extension copies into `_static/widgets/`.
  Without it the site still builds, with a warning, and widget cells show their saved text.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WIDGET_MANAGER = "@jupyter-widgets/html-manager@1.0.15"  # the release that renders ipywidgets 8 state
VENDOR = ROOT / "_build" / "vendor"
EMBED = VENDOR / "widgets" / "embed.js"
NBVAL_MARKER = re.compile(r"^\s*# NBVAL_[A-Z_]+\s*$")


def fetch_widget_manager() -> str | None:
    """Unpack the widget manager's browser bundle into `_build/vendor/widgets/`; None when it is there,
    else why it is not."""
    if EMBED.exists():
        return None
    npm = shutil.which("npm")
    if npm is None:
        return "no npm (install Node.js) to fetch the widget manager"
    with tempfile.TemporaryDirectory() as work:
        proc = subprocess.run(
            [npm, "pack", WIDGET_MANAGER, "--silent", "--pack-destination", work],
            capture_output=True,
            text=True,
            timeout=300,
        )
        tarballs = list(Path(work).glob("*.tgz"))
        if proc.returncode != 0 or not tarballs:
            return f"npm pack {WIDGET_MANAGER} failed: {proc.stderr.strip()[-300:]}"
        staging = VENDOR / "widgets.partial"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        with tarfile.open(tarballs[0]) as archive:
            for member in archive.getmembers():
                name = member.name.removeprefix("package/dist/")
                if member.isfile() and name != member.name and "/" not in name and not name.endswith(".map"):
                    (staging / name).write_bytes(archive.extractfile(member).read())
                elif member.name in ("package/LICENSE", "package/package.json"):
                    (staging / Path(member.name).name).write_bytes(archive.extractfile(member).read())
        shutil.rmtree(EMBED.parent, ignore_errors=True)
        staging.rename(EMBED.parent)  # whole or not at all: an interrupted fetch leaves no half bundle
    return None


def serve_widget_manager(app, config) -> None:
    from sphinx.util import logging

    if EMBED.exists():
        config.html_static_path.append(str(VENDOR))
        config.nb_ipywidgets_js = {"widgets/embed.js": {}}
    else:
        logging.getLogger(__name__).warning(
            f"no widget manager at {EMBED.relative_to(ROOT)}: widget cells show their saved text only "
            "(python3 tools/book.py build fetches it with npm)"
        )


def prepare_chapter(app, docname: str, source: list[str]) -> None:
    """Strip nbval markers from a chapter notebook's code and add the download links."""
    if not docname.startswith("chapters/") or not source[0].lstrip().startswith("{"):
        return
    notebook = json.loads(source[0])
    for cell in notebook["cells"]:
        if cell["cell_type"] == "code":
            lines = cell["source"] if isinstance(cell["source"], list) else cell["source"].splitlines(True)
            kept = [line for line in lines if not NBVAL_MARKER.match(line)]
            if kept and kept[-1].endswith("\n"):
                kept[-1] = kept[-1].rstrip("\n")
            cell["source"] = kept
    stem = Path(docname).name
    downloads = (
        f"Download this chapter: {{download}}`notebook (.ipynb) <{stem}.ipynb>` · "
        f"{{download}}`Python script (.py) <{stem}.py>`"
    )
    title = next(cell for cell in notebook["cells"] if cell["cell_type"] == "markdown")
    heading, _, rest = "".join(title["source"]).partition("\n")  # the chapter's "# N. Title" line
    title["source"] = f"{heading}\n\n{downloads}\n{rest}"
    source[0] = json.dumps(notebook)


def drop_repeated_scripts(app, pagename, templatename, context, doctree) -> None:
    unique, seen = [], set()
    for script in context.get("script_files", []):
        # An inline script's filename is None from one registration and "" from the other.
        filename = getattr(script, "filename", script) or ""
        key = (str(filename), repr(sorted(getattr(script, "attributes", {}).items())))
        if key not in seen:
            seen.add(key)
            unique.append(script)
    context["script_files"][:] = unique  # in place: it is the builder's list, which others append to


def setup(app):
    app.connect("config-inited", serve_widget_manager)
    app.connect("source-read", prepare_chapter)
    app.connect("html-page-context", drop_repeated_scripts, priority=900)  # after those that add scripts
    return {"parallel_read_safe": True, "parallel_write_safe": True}
