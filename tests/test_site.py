"""The Jupyter Book site builds without warnings and works offline, checked page by page in a browser.

The static checks read the built HTML: every chapter has a page with its downloads, nothing loads
from another host, every internal link and anchor resolves, code shows no test markers and fits in
100 columns, and the reference pages (glossary, bibliography, API, teaching) are there.

The browser checks drive headless Chromium through its DevTools protocol, one chapter page at a
time, served on 127.0.0.1 with every other host name unresolvable: the math is typeset, every image
loaded, the saved widgets rendered, the console shows no error and no request left 127.0.0.1. A
screenshot of each chapter lands in `_build/screenshots/`. In CI (the environment variable CI is
set) a missing browser is a failure; elsewhere those checks are skipped and say why.
"""

from __future__ import annotations

import base64
import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import pytest

pytestmark = pytest.mark.site
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


def chapter_html(site: Path, name: str) -> str:
    return (site / "chapters" / name).read_text(encoding="utf-8")


# ----------------------------------------------------------------------------- the static site


def test_every_chapter_has_a_page(site: Path):
    assert (site / "index.html").exists()
    missing = [name for name in CHAPTER_PAGES if not (site / "chapters" / name).exists()]
    assert not missing, f"chapters without a page (add them to _toc.yml): {missing}"


class _Links(HTMLParser):
    """What a page loads by itself (scripts, styles, images, frames), what it links to, and its ids."""

    def __init__(self) -> None:
        super().__init__()
        self.assets: list[str] = []
        self.links: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if attrs.get("id"):
            self.ids.add(attrs["id"])
        if tag in ("script", "img", "iframe") and attrs.get("src"):
            self.assets.append(attrs["src"])
        if tag == "link" and attrs.get("href") and attrs.get("rel") not in ("canonical", "author", "next", "prev"):
            self.assets.append(attrs["href"])
        if tag == "a" and attrs.get("href"):
            self.links.append(attrs["href"])


@functools.cache
def parsed(page: Path) -> _Links:
    parser = _Links()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser


def test_pages_load_nothing_from_other_hosts(site: Path):
    external = []
    for page in site.rglob("*.html"):
        external += [
            f"{page.relative_to(site)}: {url}" for url in parsed(page).assets if re.match(r"^(https?:)?//", url)
        ]
    assert not external, "pages load assets from the network:\n" + "\n".join(external[:20])


def test_every_internal_link_and_anchor_resolves(site: Path):
    broken = []
    for page in site.rglob("*.html"):
        for href in parsed(page).links:
            url = urllib.parse.urlsplit(href)
            if url.scheme or url.netloc or href.startswith(("mailto:", "javascript:")):
                continue
            target = page if not url.path else (page.parent / urllib.parse.unquote(url.path)).resolve()
            if target.is_dir():
                target = target / "index.html"
            if not target.exists():
                broken.append(f"{page.relative_to(site)} -> {href} (no such file)")
            elif url.fragment and target.suffix == ".html" and url.fragment not in parsed(target).ids:
                broken.append(f"{page.relative_to(site)} -> {href} (no such anchor)")
    assert not broken, f"{len(broken)} broken internal links:\n" + "\n".join(broken[:30])


def test_mathjax_is_served_by_the_site(site: Path):
    assert (site / "_static" / "mathjax" / "tex-chtml.js").exists()
    page = chapter_html(site, CHAPTER_PAGES[0])
    assert re.search(r'src="(\.\./)*_static/mathjax/tex-chtml\.js', page), "the page does not load the local MathJax"


def code_blocks(page_html: str) -> list[str]:
    """The text of the code cells' inputs on a chapter page."""
    blocks = re.findall(r'<div class="cell_input.*?<pre>(.*?)</pre>', page_html, flags=re.S)
    return [re.sub(r"<[^>]+>", "", b).replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&") for b in blocks]


@pytest.mark.parametrize("name", CHAPTER_PAGES)
def test_code_on_the_page_has_no_test_markers_and_fits_100_columns(site: Path, name: str):
    blocks = code_blocks(chapter_html(site, name))
    assert blocks, f"{name}: no code cells found on the page"
    text = "\n".join(blocks)
    assert "NBVAL_" not in text, f"{name}: nbval markers are shown to readers"
    wide = [line for line in text.splitlines() if len(line) > 100]
    assert not wide, f"{name}: {len(wide)} code lines wider than 100 columns, e.g. {wide[0]!r}"


@pytest.mark.parametrize("name", CHAPTER_PAGES)
def test_chapter_page_offers_the_notebook_and_the_script(site: Path, name: str):
    stem = name.removesuffix(".html")
    page = site / "chapters" / name
    for suffix in (".ipynb", ".py"):
        links = [href for href in parsed(page).links if href.endswith(f"/{stem}{suffix}") and "_downloads" in href]
        assert links, f"{name}: no download link for {stem}{suffix}"
        downloaded = (page.parent / links[0]).resolve()
        assert downloaded.read_bytes() == (ROOT / "chapters" / f"{stem}{suffix}").read_bytes()


def test_reference_pages_are_there(site: Path):
    glossary = (site / "glossary.html").read_text(encoding="utf-8")
    assert glossary.count('<dt id="term-') >= 100, "the glossary has too few terms"
    bibliography = (site / "bibliography.html").read_text(encoding="utf-8")
    assert bibliography.count('class="citation"') + bibliography.count('role="doc-biblioentry"') >= 50
    api = (site / "api" / "aigc_book" / "models" / "gpt" / "index.html").read_text(encoding="utf-8")
    assert "aigc_book.models.gpt.GPT" in api and "generate" in api, "the API reference lacks the GPT class"
    teaching = re.sub(r"<[^>]+>", "", (site / "teaching.html").read_text(encoding="utf-8"))
    assert "tools/book.py assignments" in teaching and "tools/book.py grade" in teaching


def test_chapter_terms_link_to_the_glossary(site: Path):
    for name in CHAPTER_PAGES[1:]:
        assert re.search(r'href="\.\./glossary\.html#term-', chapter_html(site, name)), f"{name}: no glossary links"


# ----------------------------------------------------------------------------- the browser


def find_browser() -> str | None:
    for name in BROWSERS:
        if path := shutil.which(name):
            return path
    return None


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server(site: Path):
    """Serve the built site on 127.0.0.1, as a reader's local web server would."""
    handler = functools.partial(_QuietHandler, directory=str(site))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


class Browser:
    """Headless Chromium driven over the DevTools protocol: load a page, record what it did."""

    def __init__(self, path: str) -> None:
        import websocket  # websocket-client

        self.profile = tempfile.mkdtemp(prefix="chromium-")
        self.proc = subprocess.Popen(
            [
                path,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--hide-scrollbars",
                f"--user-data-dir={self.profile}",
                # Offline: every host name but the local server fails to resolve.
                "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
                "--remote-debugging-port=0",
                "--window-size=1200,1600",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        port_file = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not port_file.exists() or not port_file.read_text().strip():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.close()
                raise RuntimeError(f"{path} did not start its DevTools server")
            time.sleep(0.1)
        port = port_file.read_text().split()[0]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as response:
            targets = json.load(response)
        page = next(t for t in targets if t["type"] == "page")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=120, suppress_origin=True)
        self.next_id = 0
        self.events: list[dict] = []
        for domain in ("Page", "Runtime", "Network", "Log"):
            self.call(f"{domain}.enable")

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:60]}...: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def load(self, url: str) -> list[dict]:
        """Navigate and wait for the load event; returns the protocol events the page caused."""
        self.events = []
        self.call("Page.navigate", url=url)
        deadline = time.monotonic() + 120
        while not any(e.get("method") == "Page.loadEventFired" for e in self.events):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not finish loading")
            self.events.append(json.loads(self.ws.recv()))
        return self.events

    def wait_for(self, expression: str, seconds: float = 30) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.evaluate(expression):
                return True
            time.sleep(0.25)
        return False

    def screenshot(self, target: Path) -> None:
        target.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))

    def close(self) -> None:
        if getattr(self, "ws", None):
            self.ws.close()
        self.proc.kill()
        self.proc.wait()
        shutil.rmtree(self.profile, ignore_errors=True)


@pytest.fixture(scope="module")
def browser():
    path = find_browser()
    if path is None:
        message = "no Chromium found (apt-get install chromium): the offline browser check cannot run"
        if os.environ.get("CI"):
            pytest.fail(message + " — and in CI it must run")
        pytest.skip(message)
    chromium = Browser(path)
    yield chromium
    chromium.close()


def math_in_static_page(page_html: str) -> int:
    return len(re.findall(r'class="math notranslate nohighlight"', page_html))


def widget_views_in_static_page(page_html: str) -> int:
    return page_html.count('type="application/vnd.jupyter.widget-view+json"')


def problems(events: list[dict]) -> tuple[list[str], list[str]]:
    """Console errors and uncaught exceptions; requests to anything but the local server."""
    errors, outside = [], []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            errors.append(details.get("exception", {}).get("description") or details.get("text"))
        elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
            errors.append(" ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", [])))
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            if params["entry"].get("url", "").endswith("/favicon.ico"):
                continue  # the browser asks for an icon by itself; the site has none
            errors.append(f"{params['entry'].get('text')} {params['entry'].get('url', '')}")
        elif method == "Network.requestWillBeSent":
            url = urllib.parse.urlsplit(params["request"]["url"])
            if url.scheme not in ("data", "blob", "about") and url.hostname not in ("127.0.0.1",):
                outside.append(params["request"]["url"])
    return errors, outside


@pytest.mark.parametrize("name", CHAPTER_PAGES)
def test_chapter_page_in_a_browser(name: str, site: Path, browser: Browser, server: str):
    page_html = chapter_html(site, name)
    browser.load(f"{server}/chapters/{name}")

    expected_math = math_in_static_page(page_html)
    if expected_math:
        assert browser.wait_for("window.MathJax?.startup?.promise?.then(() => true)"), f"{name}: MathJax never started"
        typeset = browser.evaluate(
            "MathJax.startup.promise.then(() => document.querySelectorAll('mjx-container').length)"
        )
        assert typeset >= expected_math, f"{name}: {typeset} formulas typeset, expected {expected_math}"
        raw = browser.evaluate(
            "[...document.querySelectorAll('.math')].map(e => e.textContent)"
            ".filter(t => /\\$\\$|\\\\\\[|\\\\\\(/.test(t)).length"
        )
        assert raw == 0, f"{name}: {raw} formulas left as raw TeX"

    views = widget_views_in_static_page(page_html)
    if views:
        rendered = (
            f"document.querySelectorAll('.jupyter-widgets.widget-container, .widget-hprogress').length >= {views}"
        )
        assert browser.wait_for(rendered), f"{name}: the saved widgets did not render from the local widget manager"

    broken_images = browser.evaluate(
        "Promise.all([...document.images].map(i => i.decode().then(() => null, () => i.src)))"
        ".then(r => r.filter(Boolean))"
    )
    assert not broken_images, f"{name}: images that did not load: {broken_images[:5]}"

    time.sleep(0.5)  # late console messages
    browser.evaluate("1")  # collects the events that arrived meanwhile
    errors, outside = problems(browser.events)
    assert not outside, f"{name}: requests left 127.0.0.1: {outside[:5]}"
    assert not errors, f"{name}: console errors: {errors[:5]}"

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    target = SCREENSHOTS / name.replace(".html", ".png")
    target.unlink(missing_ok=True)
    browser.screenshot(target)
    assert target.stat().st_size > 10_000, f"{name}: the screenshot is blank"
