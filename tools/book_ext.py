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
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from sphinx.application import Sphinx
from sphinx.config import Config
from sphinx.errors import ConfigError

MATHJAX_ENV = "DDPM_BOOK_MATHJAX"
MATHJAX_ENTRY = "es5/tex-chtml.js"


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


def setup(app: Sphinx) -> dict:
    app.connect("config-inited", use_local_mathjax)
    app.connect("html-page-context", add_notebook_download, priority=100)  # before the theme's buttons
    return {"parallel_read_safe": True, "parallel_write_safe": True}
