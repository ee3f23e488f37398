"""The Jupyter Book site builds without warnings and works offline, checked in a real browser.

The browser check needs Chromium. In CI (the environment variable CI is set) a missing browser
is a failure; elsewhere the test is skipped and says why.
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from html.parser import HTMLParser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HTML = ROOT / "_build" / "html"
SCREENSHOTS = ROOT / "_build" / "screenshots"
CHAPTER_PAGES = sorted(p.with_suffix(".html").name for p in (ROOT / "chapters").glob("[0-9][0-9]_*.ipynb"))
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


@pytest.fixture(scope="module")
def site() -> Path:
    """Build the site from the stored notebook outputs, every page, warnings as errors."""
    cmd = [
        sys.executable,
        "-c",
        "from jupyter_book.cli.main import main; main()",
        "build",
        str(ROOT),
        "--all",
        "--warningiserror",
        "--keep-going",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(
            f"jupyter-book build failed (exit {proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        )
    return HTML


def test_every_chapter_has_a_page(site: Path):
    assert (site / "index.html").exists()
    missing = [name for name in CHAPTER_PAGES if not (site / "chapters" / name).exists()]
    assert not missing, f"chapters without a page (add them to _toc.yml): {missing}"


class _AssetLinks(HTMLParser):
    """Collects the URLs a page loads by itself: scripts, styles, images, frames."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in ("script", "img", "iframe") and attrs.get("src"):
            self.urls.append(attrs["src"])
        if tag == "link" and attrs.get("href") and attrs.get("rel") not in ("canonical", "author", "next", "prev"):
            self.urls.append(attrs["href"])


def test_pages_load_nothing_from_other_hosts(site: Path):
    external = []
    for page in site.rglob("*.html"):
        parser = _AssetLinks()
        parser.feed(page.read_text(encoding="utf-8"))
        external += [f"{page.relative_to(site)}: {url}" for url in parser.urls if re.match(r"^(https?:)?//", url)]
    assert not external, "pages load assets from the network:\n" + "\n".join(external[:20])


def test_mathjax_is_served_by_the_site(site: Path):
    assert (site / "_static" / "mathjax" / "tex-chtml.js").exists()
    page = (site / "chapters" / CHAPTER_PAGES[0]).read_text(encoding="utf-8")
    assert re.search(r'src="(\.\./)*_static/mathjax/tex-chtml\.js', page), "the page does not load the local MathJax"


# ----------------------------------------------------------------------------- the browser


def find_browser() -> str | None:
    for name in BROWSERS:
        if path := shutil.which(name):
            return path
    return None


@pytest.fixture(scope="module")
def browser() -> str:
    path = find_browser()
    if path is None:
        message = "no Chromium found (apt-get install chromium): the offline browser check cannot run"
        if os.environ.get("CI"):
            pytest.fail(message + " — and in CI it must run")
        pytest.skip(message)
    return path


@pytest.fixture(scope="module")
def server(site: Path):
    """Serve the built site on 127.0.0.1, as a reader's local web server would."""
    handler = functools.partial(_QuietHandler, directory=str(site))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def run_browser(browser: str, url: str, *extra: str) -> str:
    with tempfile.TemporaryDirectory() as profile:
        cmd = [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            f"--user-data-dir={profile}",
            # Offline: every host name but the local server fails to resolve.
            "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
            "--virtual-time-budget=20000",
            "--window-size=1200,4000",
            *extra,
            url,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, f"{browser} failed on {url}: {proc.stderr[-2000:]}"
    return proc.stdout


class _MathText(HTMLParser):
    """Text inside elements of class "math", and the number of MathJax containers."""

    def __init__(self) -> None:
        super().__init__()
        self.depth = 0
        self.raw: list[str] = []
        self.typeset = 0

    def handle_starttag(self, tag, attrs):
        if tag == "mjx-container":
            self.typeset += 1
        classes = (dict(attrs).get("class") or "").split()
        if self.depth or "math" in classes:
            self.depth += 1

    def handle_endtag(self, tag):
        if self.depth:
            self.depth -= 1

    def handle_data(self, data):
        if self.depth and re.search(r"\$\$|\\\[|\\\(", data):
            self.raw.append(data.strip()[:80])


def math_in_static_page(page: Path) -> int:
    return len(re.findall(r'class="math notranslate nohighlight"', page.read_text(encoding="utf-8")))


@pytest.mark.parametrize("name", CHAPTER_PAGES)
def test_math_is_typeset_offline_in_a_browser(name: str, site: Path, browser: str, server: str):
    expected = math_in_static_page(site / "chapters" / name)
    if expected == 0:
        pytest.skip(f"{name} has no math to typeset")
    dom = run_browser(browser, f"{server}/chapters/{name}", "--dump-dom")
    found = _MathText()
    found.feed(dom)
    assert not found.raw, f"{name}: math left as raw TeX: {found.raw[:5]}"
    assert found.typeset >= expected, f"{name}: {found.typeset} typeset formulas, expected {expected}"
    prose = re.sub(r"<(pre|code|script|style)\b.*?</\1>", "", dom.split("<body", 1)[-1], flags=re.S)
    assert "$$" not in prose, f"{name}: a $$ delimiter was left in the page text (math that did not parse)"


def test_screenshot_of_a_chapter(site: Path, browser: str, server: str):
    name = "01_background.html" if "01_background.html" in CHAPTER_PAGES else CHAPTER_PAGES[0]
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    target = SCREENSHOTS / name.replace(".html", ".png")
    target.unlink(missing_ok=True)
    run_browser(browser, f"{server}/chapters/{name}", f"--screenshot={target}")
    assert target.exists() and target.stat().st_size > 10_000, "the screenshot is missing or blank"
    print(f"screenshot saved to {target.relative_to(ROOT)}")
