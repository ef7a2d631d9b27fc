"""Sphinx extension for the course book (loaded through ``book.yml``'s ``local_extensions``).

1. **MathJax from a local copy**, only when asked: with ``DDPM_BOOK_MATHJAX`` set to the folder of
   the ``mathjax`` npm package (version 3: ``npm install --prefix ~/.cache/ddpm-book-mathjax
   mathjax@3`` puts it in ``~/.cache/ddpm-book-mathjax/node_modules/mathjax``), the build copies it
   to ``_static/mathjax/`` and the pages load MathJax from there, so math is typeset with no network
   (CI's browser test). Without the variable the pages load MathJax 3 from Sphinx's default CDN.
   The copy is made at the end of the build rather than through ``html_static_path`` from
   ``book.yml``, where Jupyter Book would turn each of its ``.js`` files into a script tag.
2. **The source notebook of every chapter** in the page's download menu (next to the ``.py``
   source): the chapter's paired ``.ipynb`` (no outputs; it runs the full profile by default) is
   copied to ``_sources/`` and offered as ``.ipynb``. No repository URL is needed, so the link
   works offline and on any static host.
3. **The "Try it" page's assets** (``try_it.md``), assembled at the end of the build into
   ``_static/try_it/``: the page's scripts from ``web/try_it/``, the shipped denoisers exported by
   ``ddpm_lib.export`` (ONNX graphs and their tables, made from the package's weights at build time, so
   they are never stale), and, with ``DDPM_BOOK_ORT`` set to the ``onnxruntime-web`` npm package's folder
   (version 1.18: ``npm install --prefix ~/.cache/ddpm-book-ort onnxruntime-web@1.18.0``), its
   WebAssembly runtime in ``_static/ort/``. Nothing loads from a CDN. Without ``DDPM_BOOK_ORT`` the page
   builds and says on the page that its runtime is missing.
4. **Stored outputs**: ``read_chapter`` is the reader ``book.yml`` gives myst-nb for the chapters' ``.py``
   sources. When the chapter's paired ``.ipynb`` holds outputs stored by ``tools/execute_chapters.py`` (the
   full profile's), the page shows them and the chapter is not executed (myst-nb's ``execution_mode: off`` for
   that page); when they are stale, the page opens with a note saying when they were made and what code changed
   since (:func:`stale_note`). A chapter without stored outputs runs as before, through the execution cache.
5. **Editions** (``tools/build_book.py`` sets them): ``DDPM_BOOK_EDITION=learner`` (the default, the public
   site) removes every exercise's hidden checks from the pages and from the downloadable ``.py`` / ``.ipynb``
   sources, with ``DDPM_BOOK_SOLUTIONS=remove`` also the solutions (replaced by the student copy's stub;
   default ``fold``: shown folded); ``instructor`` shows everything and adds the grading notes
   (``grading.md``, whose table ``python -m ddpm_lib.course grading-notes --write`` keeps current). The edits are
   ``ddpm_lib.course``'s, the ones that make the student copies. The site records its edition in
   ``_static/edition.json``. The learner edition's Colab and Binder buttons open the chapter's launch copy,
   ``student/NN_topic.ipynb`` (the student copy in plain Markdown, no MyST: ``python -m ddpm_lib.course
   launch-copies``), the instructor edition's the full notebook.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.config import Config
from sphinx.errors import ConfigError

MATHJAX_ENV = "DDPM_BOOK_MATHJAX"
MATHJAX_ENTRY = "es5/tex-chtml.js"
ORT_ENV = "DDPM_BOOK_ORT"
#: onnxruntime-web's single-threaded WebAssembly runtime: the loader and its SIMD and plain builds
ORT_FILES = ("dist/ort.wasm.min.js", "dist/ort-wasm-simd.wasm", "dist/ort-wasm.wasm")
TRY_IT_MODELS = ("ddpm_mnist_cond", "ddpm_mnist")
ROOT = Path(__file__).resolve().parents[1]
EDITION_ENV = "DDPM_BOOK_EDITION"
SOLUTIONS_ENV = "DDPM_BOOK_SOLUTIONS"
EDITIONS = ("learner", "instructor")
SOLUTION_MODES = ("fold", "remove")


def use_local_mathjax(app: Sphinx, config: Config) -> None:
    folder = os.environ.get(MATHJAX_ENV)
    if not folder:
        return
    package = Path(folder).expanduser().resolve()
    if not (package / MATHJAX_ENTRY).is_file():
        raise ConfigError(
            f"{MATHJAX_ENV}={folder!r} is not the mathjax npm package (no {MATHJAX_ENTRY} in it); "
            "install it with: npm install --prefix ~/.cache/ddpm-book-mathjax mathjax@3 and set "
            f"{MATHJAX_ENV}=~/.cache/ddpm-book-mathjax/node_modules/mathjax"
        )
    app.connect("build-finished", lambda app, exc: copy_mathjax(app, exc, package))
    config.mathjax_path = f"mathjax/{MATHJAX_ENTRY}"


def copy_mathjax(app: Sphinx, exception: Exception | None, package: Path) -> None:
    if exception is None and app.builder.format == "html":
        target = Path(app.outdir) / "_static" / "mathjax"
        shutil.copytree(package, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".*"))


def add_notebook_download(app: Sphinx, pagename: str, templatename: str, context: dict, doctree) -> None:
    """Offer the chapter's paired ``.ipynb`` in the page's download menu (sphinx-book-theme reads
    ``ipynb_source``; it fills it in itself only for Markdown notebooks with launch buttons)."""
    if doctree is None or app.builder.format != "html":
        return
    source = Path(app.env.doc2path(pagename))
    notebook = source.with_suffix(".ipynb")
    if source.suffix != ".py" or not notebook.is_file():
        return
    target = Path(app.outdir) / "_sources" / Path(pagename).with_suffix(".ipynb")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(notebook, target)
    context["ipynb_source"] = f"{pagename}.ipynb"


def check_ort(app: Sphinx, config: Config) -> None:
    folder = os.environ.get(ORT_ENV)
    if folder and not all((Path(folder).expanduser() / name).is_file() for name in ORT_FILES):
        raise ConfigError(
            f"{ORT_ENV}={folder!r} is not the onnxruntime-web 1.18 npm package (it needs {', '.join(ORT_FILES)}); "
            "install it with: npm install --prefix ~/.cache/ddpm-book-ort onnxruntime-web@1.18.0 and set "
            f"{ORT_ENV}=~/.cache/ddpm-book-ort/node_modules/onnxruntime-web"
        )


def copy_try_it(app: Sphinx, exception: Exception | None) -> None:
    """Assemble _static/try_it/ (scripts, exported models) and _static/ort/ (the runtime) after the pages."""
    if exception is not None or app.builder.format != "html":
        return
    static = Path(app.outdir) / "_static"
    target = static / "try_it"
    shutil.copytree(ROOT / "web" / "try_it", target, dirs_exist_ok=True)
    from sphinx.util import logging

    log = logging.getLogger(__name__)
    try:
        from ddpm_lib.export import export

        for name in TRY_IT_MODELS:
            export(name, None, target / "models")
    except Exception as error:  # the page says the models are missing; the rest of the book is unaffected
        log.info(f"try_it: the models were not exported ({error})")
    folder = os.environ.get(ORT_ENV)
    if folder:
        for name in ORT_FILES:
            destination = static / "ort" / Path(name).name
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(Path(folder).expanduser() / name, destination)
    else:
        log.info(f"try_it: {ORT_ENV} is not set, so the page has no onnxruntime-web to run the models")


def add_footer(app: Sphinx, config: Config) -> None:
    """The footer of every page: the version (ddpm_lib.__version__, the one place it is written) and the licenses."""
    from ddpm_lib import __version__

    options = dict(config.html_theme_options or {})
    options["extra_footer"] = (
        f"<p>Diffusion from Scratch, version {__version__}. Text and figures: "
        '<a href="https://creativecommons.org/licenses/by/4.0/">CC BY 4.0</a>; code: MIT License '
        "(LICENSE and LICENSE-TEXT.md in the repository). Cite it with its CITATION.cff.</p>"
    )
    config.html_theme_options = options


#: at most this many changed items are named in a stale page's note
NOTE_ITEMS = 8


def stale_note(record: dict, reasons: list[str]) -> str:
    """The MyST note that opens the page of a chapter whose stored outputs are stale (class ``stale-outputs``): when
    they were made, and what changed since (at most :data:`NOTE_ITEMS` names per kind of change)."""
    lines = []
    for reason in reasons:
        kind, _, names = reason.partition(": ")
        names = names.split(", ") if names else []
        if len(names) > NOTE_ITEMS:
            names = [*names[:NOTE_ITEMS], f"and {len(names) - NOTE_ITEMS} more"]
        shown = ", ".join(f"`{name}`" if name.startswith("ddpm_lib/") else name for name in names)
        lines.append(f"- {kind}: {shown}" if shown else f"- {kind}")
    listed = "\n".join(lines)
    return (
        ":::{admonition} These outputs come from an earlier version of the code\n"
        ":class: warning stale-outputs\n"
        f"The outputs below were computed on {record['date']} ({record['profile']} profile) by an earlier version "
        f"of the course's code. Since then:\n\n{listed}\n\n"
        "The text may quote numbers that the current code no longer prints exactly; running the chapter gives the "
        "current ones.\n:::\n"
    )


def read_chapter(text: str, fmt: str = "py:percent"):
    """A chapter's notebook for myst-nb: its ``.py`` source with the outputs stored in its paired ``.ipynb``, when it
    holds some (then the page executes nothing). When those outputs are stale (``tools/execute_chapters.py``), the
    page opens with a note that says when they were made and what changed since."""
    import execute_chapters  # beside this file (tools/, on sys.path as the book's local extension folder)
    import jupytext
    import nbformat

    notebook = jupytext.reads(text, fmt=fmt)
    name, solutions = edition()
    for cell in notebook.cells:
        if cell.cell_type == "markdown":
            cell.source = edit_answer_for_edition(cell.source, name, solutions)
    source = next((p for p in sorted((ROOT / "chapters").glob("[0-9][0-9]_*.py"))
                   if p.read_text(encoding="utf-8") == text), None)  # fmt: skip
    if source is None:
        return notebook
    stored = nbformat.read(source.with_suffix(".ipynb"), as_version=4)
    record = stored.metadata.get(execute_chapters.KEY)
    if record is None:
        return notebook  # no stored outputs: executed (or read from the cache) as usual
    ours = [cell for cell in notebook.cells if cell.cell_type == "code"]
    theirs = [cell for cell in stored.cells if cell.cell_type == "code"]
    if [cell.source for cell in ours] != [cell.source for cell in theirs]:
        return notebook  # .py and .ipynb out of sync (tests/test_pipeline.py says so): executed as usual
    for cell, done in zip(ours, theirs, strict=True):
        cell.outputs, cell.execution_count = done.outputs, done.execution_count
    reasons = execute_chapters.stale_reasons(source, record["profile"])
    if reasons:
        title = next(cell for cell in notebook.cells if cell.cell_type == "markdown")
        heading, _, rest = title.source.partition("\n")
        title.source = f"{heading}\n\n{stale_note(record, reasons)}{rest}"
    notebook.metadata["mystnb"] = {"execution_mode": "off"}
    notebook.metadata[execute_chapters.KEY] = record
    return notebook


def note_stored_outputs(app: Sphinx, doctree: nodes.document) -> None:
    """A chapter's page depends on its paired ``.ipynb`` too (stored outputs): refreshing them rebuilds the page."""
    source = Path(app.env.doc2path(app.env.docname))
    if source.suffix == ".py" and source.with_suffix(".ipynb").is_file():
        app.env.note_dependency(str(source.with_suffix(".ipynb")))


def edition() -> tuple[str, str]:
    """The edition being built and what happens to the solutions, from the environment (checked)."""
    name = os.environ.get(EDITION_ENV, "learner") or "learner"
    solutions = os.environ.get(SOLUTIONS_ENV, "fold") or "fold"
    if name not in EDITIONS:
        raise ConfigError(f"{EDITION_ENV} must be one of {', '.join(EDITIONS)}, got {name!r}")
    if solutions not in SOLUTION_MODES:
        raise ConfigError(f"{SOLUTIONS_ENV} must be one of {', '.join(SOLUTION_MODES)}, got {solutions!r}")
    if name == "instructor" and solutions == "remove":
        raise ConfigError(
            f"the instructor edition shows the solutions; {SOLUTIONS_ENV}=remove is for learners"
        )
    return name, solutions


def edit_for_edition(text: str, name: str, solutions: str) -> str:
    """``text`` (a code cell, or a whole chapter source in the percent format) as the edition shows it: the learner
    edition without hidden checks and rubrics, and with ``remove``, without solutions and model answers."""
    import re

    from ddpm_lib.course import (
        HIDDEN_BEGIN,
        RUBRIC_BEGIN,
        SOLUTION_BEGIN,
        clear_hidden_tests,
        clear_rubric,
        clear_solution,
    )

    if name == "learner" and HIDDEN_BEGIN in text:
        text = clear_hidden_tests(text)
    if name == "learner" and RUBRIC_BEGIN in text:
        text = clear_rubric(text)
    if solutions == "remove" and SOLUTION_BEGIN in text:
        # a written answer's region, in a Markdown cell of the percent format, becomes the text stub first
        text = re.sub(r"^# <!-- ### BEGIN SOLUTION -->\n(?:.*\n)*?# <!-- ### END SOLUTION -->$", "# YOUR ANSWER HERE",
                      text, flags=re.M)  # fmt: skip
        text = clear_solution(text)
    return text


def edit_answer_for_edition(text: str, name: str, solutions: str) -> str:
    """A written answer's Markdown cell as the edition shows it: the rubric is the instructor's; with ``remove`` the
    model answer goes too (the student copy's ``YOUR ANSWER HERE``)."""
    from ddpm_lib.course import SOLUTION_BEGIN, clear_rubric, clear_solution

    if name == "instructor" or SOLUTION_BEGIN not in text:
        return text
    return clear_solution(text, text=True) if solutions == "remove" else clear_rubric(text)


def apply_edition(app: Sphinx, doctree: nodes.document) -> None:
    """Edit every code block of the page for the edition (cell inputs are literal blocks in myst-nb's doctree)."""
    name, solutions = edition()
    if name == "instructor":
        return
    for block in list(doctree.findall(nodes.literal_block)):
        text = block.astext()
        edited = edit_for_edition(text, name, solutions)
        if edited != text:
            replacement = nodes.literal_block(edited, edited)
            replacement.attributes.update(block.attributes)
            block.replace_self(replacement)


def edit_downloads(app: Sphinx, exception: Exception | None) -> None:
    """The learner edition's downloadable sources (``_sources/``, executed notebooks) lose what its pages lose."""
    import json

    if exception is not None or app.builder.format != "html":
        return
    name, solutions = edition()
    outdir = Path(app.outdir)
    (outdir / "_static").mkdir(parents=True, exist_ok=True)
    (outdir / "_static" / "edition.json").write_text(
        json.dumps({"edition": name, "solutions": solutions}) + "\n"
    )
    if name == "instructor":
        return
    for path in [*outdir.rglob("*.py"), *outdir.rglob("*.ipynb")]:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".ipynb":
            notebook = json.loads(text)
            for cell in notebook.get("cells", []):
                if cell.get("cell_type") in ("code", "markdown"):
                    source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
                    edit = edit_for_edition if cell["cell_type"] == "code" else edit_answer_for_edition
                    edited = edit(source, name, solutions)
                    if edited != source:
                        cell["source"] = edited.splitlines(keepends=True)
            edited_text = json.dumps(notebook, indent=1, ensure_ascii=False) + "\n"
            if json.loads(edited_text) != json.loads(text):
                path.write_text(edited_text, encoding="utf-8")
        else:
            edited_text = edit_for_edition(text, name, solutions)
            if edited_text != text:
                path.write_text(edited_text, encoding="utf-8")


def launch_student_copies(app: Sphinx, pagename: str, templatename: str, context: dict, doctree) -> None:
    """In the learner edition, a chapter's Colab and Binder buttons open its launch copy (``student/NN_topic.ipynb``:
    no solutions, no hidden checks, plain Markdown; ``python -m ddpm_lib.course launch-copies``), not the full
    notebook; the instructor edition keeps the full notebooks. Runs after sphinx-book-theme made the buttons."""
    name, _ = edition()
    chapter = Path(pagename).name
    if name != "learner" or not (ROOT / "student" / f"{chapter}.ipynb").is_file():
        return
    for group in context.get("header_buttons", []):
        for button in group.get("buttons", []) if group.get("label") == "launch-buttons" else []:
            if "url" in button:
                button["url"] = button["url"].replace(f"chapters/{chapter}.ipynb", f"student/{chapter}.ipynb")


def setup(app: Sphinx) -> dict:
    app.connect("config-inited", lambda app, config: edition())  # a bad edition fails at once
    app.connect("doctree-read", apply_edition)
    app.connect("doctree-read", note_stored_outputs)
    app.connect("build-finished", edit_downloads)
    app.connect("html-page-context", launch_student_copies, priority=502)
    app.connect("config-inited", add_footer)
    app.connect("config-inited", use_local_mathjax)
    app.connect("config-inited", check_ort)
    app.connect("build-finished", copy_try_it)
    app.connect("html-page-context", add_notebook_download, priority=100)  # before the theme's buttons
    return {"parallel_read_safe": True, "parallel_write_safe": True}
