"""The built book, opened in a real browser (headless Chromium).

Serves ``_build/html`` on localhost from a thread, opens every page of the table of contents in
headless Chromium and checks what a reader sees: the math is typeset by MathJax (``mjx-container``
elements, no TeX errors), every image has loaded with a non-zero size, the sidebar lists the pages in
the order of ``toc.yml``, exercises are boxed and their solutions folded, and each chapter offers its
notebook for download. It also saves a screenshot of the first chapter to
``_build/screenshots/`` for a person to look at.

Build the book's learner edition first (offline MathJax, see README "The book")::

    DDPM_BOOK_MATHJAX=~/.cache/ddpm-book-mathjax/node_modules/mathjax python tools/build_book.py

The test is skipped when there is no built site, no ``chromium``, or the site loads MathJax from its
CDN (which an offline machine cannot reach); ``REQUIRE_BROWSER_TEST=1`` (set by ``.ci/run``) turns each
of those skips into a failure. ``DDPM_BOOK_HTML`` and ``DDPM_BOOK_TOC`` point the test at another
build folder and its table of contents (e.g. a one-chapter build while editing).
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import shutil
import subprocess
import threading
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
HTML = Path(os.environ.get("DDPM_BOOK_HTML", ROOT / "_build" / "html"))
TOC = Path(os.environ.get("DDPM_BOOK_TOC", ROOT / "toc.yml"))
SCREENSHOTS = HTML.parent / "screenshots"
REQUIRED = os.environ.get("REQUIRE_BROWSER_TEST") == "1"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--hide-scrollbars",
    "--window-size=1280,1600",
    "--virtual-time-budget=30000",  # virtual ms the page may run (MathJax typesetting) before the dump
]

# Injected into every page the test server sends: once the page has loaded and MathJax has typeset
# it, record each image's natural size and MathJax's state as attributes that --dump-dom shows.
PROBE = b"""<script>
window.addEventListener("load", function () {
  var root = document.documentElement;
  root.setAttribute("data-probe-images", Array.prototype.map.call(document.images, function (img) {
    return img.naturalWidth + "x" + img.naturalHeight + " " + img.getAttribute("src");
  }).join("\\n"));
  var done = function (state) {
    root.setAttribute("data-probe-mathjax", state);
    // ?figure (for a screenshot, which shows the top of the page): hide what comes before the
    // section that holds the first figure, so that the section comes first.
    var figure = document.querySelector("article img");
    if (location.search === "?figure" && figure) {
      for (var node = figure.closest("section"); node && node.tagName !== "ARTICLE"; node = node.parentElement) {
        for (var before = node.previousElementSibling; before; before = before.previousElementSibling) {
          before.style.display = "none";
        }
      }
    }
  };
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
    MathJax.startup.promise.then(function () { done("typeset"); }, function (e) { done("error " + e); });
  } else {
    done("not loaded");
  }
});
</script>
"""


def toc_pages() -> list[str]:
    """Page names in the order the sidebar must show them: the root, then each file of toc.yml."""
    toc = yaml.safe_load(TOC.read_text())
    pages = [toc["root"]]

    def walk(entries):
        for entry in entries or []:
            if "file" in entry:
                pages.append(str(Path(entry["file"]).with_suffix("")))
            walk(entry.get("sections"))
            walk(entry.get("chapters"))

    for part in toc.get("parts", []):
        walk(part.get("chapters"))
    walk(toc.get("chapters"))
    return pages


PAGES = toc_pages()
CHAPTERS = [page for page in PAGES if page.startswith("chapters/")]


def skip_or_fail(reason: str):
    if REQUIRED:
        pytest.fail(f"{reason} (REQUIRE_BROWSER_TEST=1)")
    pytest.skip(reason)


class Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest's output clean
        pass

    def end_headers(self):
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def send_head(self):
        path = Path(self.translate_path(self.path))
        if path.suffix != ".html" or not path.is_file():
            return super().send_head()
        body = path.read_bytes().replace(b"</body>", PROBE + b"</body>", 1)
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        return None


@pytest.fixture(scope="module")
def site():
    """Base URL of the built book, served on localhost for the duration of the module."""
    if not (HTML / "index.html").is_file():
        skip_or_fail(f"no built book in {HTML}: build it first (README, 'The book')")
    if CHROMIUM is None:
        skip_or_fail("chromium is not installed (Debian: apt-get install chromium)")
    page = (HTML / f"{CHAPTERS[0]}.html").read_text(encoding="utf-8")
    mathjax = re.search(r'<script[^>]*src="([^"]*(?:mathjax|tex-[a-z]+)[^"]*\.js[^"]*)"', page, re.I)
    if mathjax and re.match(r"https?://", mathjax.group(1)):
        skip_or_fail(
            f"the book loads MathJax from {mathjax.group(1)}, which an offline browser cannot reach: "
            "build it with DDPM_BOOK_MATHJAX set (README, 'The book')"
        )
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(HTML))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def chromium(tmp_path: Path, *args: str) -> str:
    profile = tmp_path / "chromium-profile"
    profile.mkdir(exist_ok=True)
    result = subprocess.run(
        [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, f"chromium failed ({result.returncode}): {result.stderr[-2000:]}"
    return result.stdout


class Page(HTMLParser):
    """What the tests need from a dumped DOM."""

    def __init__(self, text: str):
        super().__init__()
        self.tags: dict[str, int] = {}
        self.root: dict[str, str] = {}
        self.math = 0  # Sphinx's math spans / divs, each of which MathJax must typeset
        self.classes: dict[str, int] = {}
        self.sidebar: list[str] = []
        self.links: list[tuple[dict[str, str], str]] = []
        self.folded_solutions = 0  # <details> titled "Show solution" (a hide-input solution cell)
        self._in_sidebar = 0
        self._link: dict[str, str] | None = None
        self._text: list[str] = []
        self.texts: list[str] = []  # every piece of text on the page, as the reader's DOM holds it
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = {key: value or "" for key, value in attrs}
        self.tags[tag] = self.tags.get(tag, 0) + 1
        if tag == "html":
            self.root = attrs
        classes = attrs.get("class", "").split()
        for name in classes:
            self.classes[name] = self.classes.get(name, 0) + 1
        if "math" in classes and tag in {"span", "div"}:
            self.math += 1
        if tag == "nav" and "bd-docs-nav" in classes:
            self._in_sidebar = 1
        elif self._in_sidebar and tag == "nav":
            self._in_sidebar += 1
        if tag == "a":
            self._link, self._text = attrs, []
            if self._in_sidebar and "reference" in classes:
                self.sidebar.append(attrs.get("href", ""))

    def handle_endtag(self, tag):
        if tag == "nav" and self._in_sidebar:
            self._in_sidebar -= 1
        if tag == "a" and self._link is not None:
            self.links.append((self._link, "".join(self._text).strip()))
            self._link = None

    def handle_data(self, data):
        self.texts.append(data)
        if self._link is not None:
            self._text.append(data)
        if data.strip() == "Show solution":
            self.folded_solutions += 1


@pytest.fixture(scope="module")
def pages(site, tmp_path_factory) -> dict[str, Page]:
    """Every page of the table of contents, loaded in Chromium and dumped after MathJax has run."""
    tmp = tmp_path_factory.mktemp("chromium")
    return {name: Page(chromium(tmp, "--dump-dom", f"{site}/{name}.html")) for name in PAGES}


@pytest.mark.parametrize("name", PAGES)
def test_math_is_typeset(pages, name):
    page = pages[name]
    if name != PAGES[0] and name not in CHAPTERS and page.math == 0:
        return  # a page without math (Sphinx then loads no MathJax)
    assert page.math > 0, f"{name}: no math on the page"
    assert page.root.get("data-probe-mathjax") == "typeset", (
        f"{name}: MathJax state {page.root.get('data-probe-mathjax')!r}"
    )
    assert page.tags.get("mjx-container", 0) >= page.math, (
        f"{name}: {page.tags.get('mjx-container', 0)} typeset formulas for {page.math} math elements"
    )
    assert page.tags.get("mjx-merror", 0) == 0, f"{name}: MathJax reports a TeX error"


@pytest.mark.parametrize("name", CHAPTERS)
def test_figures_are_shown(pages, name):
    images = [line for line in pages[name].root.get("data-probe-images", "").splitlines() if line]
    assert images, f"{name}: no figures"
    broken = [line for line in images if line.startswith(("0x", "x")) or re.match(r"\d+x0 ", line)]
    assert not broken, f"{name}: images that did not load: {broken}"


@pytest.mark.parametrize("name", CHAPTERS)
def test_exercises_are_boxed_and_solutions_folded(pages, name):
    exercises = (ROOT / f"{name}.py").read_text(encoding="utf-8").count("# :::{exercise}")
    page = pages[name]
    assert page.classes.get("exercise", 0) == exercises, f"{name}: {exercises} exercises, boxes in the page"
    assert page.folded_solutions == exercises, f"{name}: {page.folded_solutions} folded solutions"


def test_sidebar_lists_the_pages_in_toc_order(pages):
    sidebar = [re.sub(r"(\.html)?(#.*)?$", "", href).lstrip("./") for href in pages[PAGES[0]].sidebar]
    sidebar = [href for href in sidebar if href]
    assert sidebar == PAGES[1:], "the sidebar of the home page differs from toc.yml"


@pytest.mark.parametrize("name", CHAPTERS)
def test_chapter_shows_its_stored_full_profile_outputs(pages, name):
    """Every chapter shows the full-profile outputs stored in its notebook (tools/execute_chapters.py), not a
    CI-profile run: every chapter's first cell prints the profile it ran in. A chapter whose stored outputs are
    stale opens with a note that says so and what changed; a current one has no such note."""
    import sys

    sys.path.insert(0, str(ROOT / "tools"))
    import execute_chapters

    text = "".join(pages[name].texts)
    assert "profile: full" in text and "profile: ci" not in text, (
        f"{name}: the page does not show its stored outputs"
    )
    stale = execute_chapters.stale_reasons(ROOT / f"{name}.py", "full")
    notes = pages[name].classes.get("stale-outputs", 0)
    assert notes == (1 if stale else 0), (
        f"{name}: {'stale' if stale else 'current'} outputs, {notes} stale-outputs note(s) on the page"
    )
    if stale:
        assert "These outputs come from an earlier version of the code" in text


@pytest.mark.parametrize("name", CHAPTERS)
def test_chapter_offers_its_notebook(site, pages, name):
    hrefs = [link.get("href", "") for link, _ in pages[name].links]
    notebook = f"{Path(name).name}.ipynb"
    # The download button's link is relative; the launch buttons (Colab, Binder) point elsewhere.
    links = [href for href in hrefs if href.endswith(notebook) and "://" not in href]
    assert links, f"{name}: no link to {notebook}"
    url = f"{site}/{Path(name).parent}/{links[0]}"
    with urllib.request.urlopen(url, timeout=10) as response:  # localhost only
        assert response.status == 200
        assert b'"nbformat"' in response.read()


def hidden_check_lines(source: Path) -> list[str]:
    """The lines of a chapter's hidden checks that appear nowhere else in it (at least 12 characters)."""
    from ddpm_lib.course import HIDDEN_BEGIN, HIDDEN_END

    hidden, visible, inside = [], set(), False
    for line in source.read_text(encoding="utf-8").splitlines():
        if HIDDEN_BEGIN in line or HIDDEN_END in line:
            inside = HIDDEN_BEGIN in line
            continue
        (hidden.append if inside else visible.add)(line.strip())
    return [line for line in hidden if len(line) >= 12 and line not in visible]


@pytest.mark.parametrize("name", CHAPTERS)
def test_the_learner_edition_shows_no_hidden_checks(pages, name):
    """The public site is the learner edition (tools/build_book.py): no hidden check of the chapter reaches its page
    as the browser shows it, nor the sources it offers for download."""
    import json

    edition = json.loads((HTML / "_static" / "edition.json").read_text(encoding="utf-8"))
    assert edition["edition"] == "learner", (
        f"{HTML} holds the {edition['edition']} edition; build the learner one"
    )
    lines = hidden_check_lines(ROOT / f"{name}.py")
    assert lines, f"{name}: no hidden checks to look for"

    def shown(text: str) -> list[str]:  # whole lines only: a hidden line may be part of a visible one
        present = {line.strip() for line in text.splitlines()}
        return [line for line in lines if line in present]

    text = "".join(pages[name].texts)
    assert "HIDDEN TESTS" not in text
    assert "Rubric (" not in text, f"{name}: a written answer's rubric on the learner's page"
    assert not shown(text), f"{name}: hidden checks on the page: {shown(text)[:3]}"
    for download in (HTML / "_sources" / Path(name).parent).glob(f"{Path(name).name}.*"):
        content = download.read_text(encoding="utf-8")
        if download.suffix == ".ipynb":
            cells = json.loads(content)["cells"]
            assert not any("Rubric (" in "".join(cell["source"]) for cell in cells), f"{download}: a rubric"
            content = "\n".join("".join(cell["source"]) for cell in cells if cell["cell_type"] == "code")
        assert "HIDDEN TESTS" not in content and not shown(content), f"{download}: {shown(content)[:3]}"
        assert "BEGIN RUBRIC" not in content, f"{download}: a rubric"


@pytest.mark.parametrize("name", CHAPTERS)
def test_chapter_offers_launch_buttons(pages, name):
    """Open in Colab and Launch Binder, both at this chapter's launch copy (student/NN_topic.ipynb: no solutions,
    no hidden checks, no MyST) in the repository that book.yml names once."""

    repository = yaml.safe_load((ROOT / "book.yml").read_text(encoding="utf-8"))["repository"]["url"]
    repository = repository.removeprefix("https://github.com/").rstrip("/")
    hrefs = [link.get("href", "") for link, _ in pages[name].links]
    # the learner edition opens the chapter's launch copy: the student copy, in plain Markdown
    notebook = f"student/{Path(name).name}.ipynb"
    colab = [h for h in hrefs if h.startswith("https://colab.research.google.com/github/")]
    binder = [h for h in hrefs if "mybinder.org" in h]
    assert any(repository in h and h.endswith(notebook) for h in colab), (
        f"{name}: no Colab link to {notebook}"
    )
    assert any(repository in h and notebook in h for h in binder), f"{name}: no Binder link to {notebook}"
    assert not any("chapters/" in h for h in colab + binder), (
        f"{name}: a launch button opens the full notebook"
    )
    target = (ROOT / notebook).read_text(encoding="utf-8")
    for word in ("BEGIN SOLUTION", "HIDDEN TESTS", "Model answer", "Rubric (", ":::{"):
        assert word not in target, f"{notebook}, what a launch button opens, holds {word!r}"


@pytest.mark.parametrize("view", ["top", "figure"])
def test_screenshot_of_the_first_chapter(site, pages, tmp_path, view):
    """Screenshots of the first chapter for a person to look at: its top (title and math) and the
    section with its first figure (headless Chromium shots the top of a page, so what comes before
    that section is hidden)."""
    from PIL import Image

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shot = SCREENSHOTS / f"{Path(CHAPTERS[0]).name}-{view}.png"
    shot.unlink(missing_ok=True)
    query = "?figure" if view == "figure" else ""
    chromium(tmp_path, f"--screenshot={shot}", f"{site}/{CHAPTERS[0]}.html{query}")
    with Image.open(shot) as image:
        assert image.size == (1280, 1600)
        colours = image.convert("RGB").getcolors(maxcolors=1 << 16)
    assert colours is None or len(colours) > 50, f"{shot} is (almost) blank"
