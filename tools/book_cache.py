"""pytest plugin: the chapter executions the test run does anyway become the book's executions.

With ``DDPM_BOOK_CACHE`` set to the book's jupyter-cache folder (``execute.cache`` in ``book.yml``,
``_build/.jupyter_cache``), every chapter whose cells all passed (nbval's items, one execution per
chapter, ``tools/chapter_run.py``) is stored in that cache with the outputs of its real cells (the
cells as written; the student stubs the runner also executes leave no output), keyed the way Jupyter
Book (myst-nb) keys it: by the code cells of the chapter's Jupytext ``.py`` source. ``jupyter-book build`` then
finds every chapter in the cache and renders it without running it again::

    DDPM_BOOK_CACHE=_build/.jupyter_cache python -m pytest
    DDPM_PROFILE=ci jupyter-book build . --config book.yml --toc toc.yml -W -n --keep-going

A chapter is stored only when every cell ran and passed (none skipped or deselected) and its
``.ipynb`` has the same code cells as its ``.py``; otherwise the book executes it as usual. What is
lost against the book's own execution: widget state (not stored), so an ipywidgets output shows
nothing in the book instead of a static snapshot of the widget.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import pytest

from tools.chapter_run import ChapterCell, ChapterFile

ENV = "DDPM_BOOK_CACHE"


def pytest_configure(config: pytest.Config) -> None:
    folder = os.environ.get(ENV)
    if folder:
        config.pluginmanager.register(BookCache(Path(folder)), "ddpm-book-cache")


class BookCache:
    def __init__(self, folder: Path):
        self.folder = folder
        self.runs: dict[Path, ChapterFile] = {}  # .ipynb -> its execution
        self.failed: set[Path] = set()
        self.stored: list[str] = []
        self.not_stored: list[str] = []

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo):
        outcome = yield
        report = outcome.get_result()
        if not isinstance(item, ChapterCell) or report.when != "call":
            return
        notebook, chapter = Path(str(item.path)), item.parent
        if report.failed:
            self.failed.add(notebook)
        elif item.last and notebook not in self.failed:
            code_cells = sum(cell.cell_type == "code" for cell in chapter.nb.cells)
            if len(chapter.outputs) == code_cells and not chapter.failed:
                self.runs[notebook] = chapter
            else:
                self.failed.add(notebook)

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        for notebook in sorted(self.runs.keys() | self.failed):
            reason = (
                "its test failed" if notebook in self.failed else self.store(notebook, self.runs[notebook])
            )
            (self.not_stored if reason else self.stored).append(
                f"{notebook.stem} ({reason})" if reason else notebook.stem
            )

    def store(self, notebook: Path, run: ChapterFile) -> str | None:
        """Put the executed chapter into the cache; return why not, or None."""
        import jupytext
        import nbformat
        from jupyter_cache import get_cache
        from jupyter_cache.base import CacheBundleIn

        source = notebook.with_suffix(".py")
        if not source.is_file():
            return "no .py source"
        # Read the source as book.yml's nb_custom_formats does, so the cache key is the book's.
        book_nb = jupytext.reads(source.read_text(encoding="utf-8"), fmt="py:percent")
        book_cells = [cell for cell in book_nb.cells if cell.cell_type == "code"]
        tested = [index for index, cell in enumerate(run.nb.cells) if cell.cell_type == "code"]
        if [cell.source for cell in book_cells] != [run.nb.cells[index].source for index in tested]:
            return ".py and .ipynb differ: run jupytext --sync"
        for number, (cell, index) in enumerate(zip(book_cells, tested, strict=True), 1):
            cell.outputs = [_output(output, number) for output in run.outputs[index]]
            cell.execution_count = number
        # What nbclient would record from an ipykernel; myst-nb picks the code highlighting from it.
        book_nb.metadata["language_info"] = {
            "name": "python",
            "pygments_lexer": "ipython3",
            "codemirror_mode": {"name": "ipython", "version": 3},
            "file_extension": ".py",
            "mimetype": "text/x-python",
            "nbconvert_exporter": "python",
            "version": platform.python_version(),
        }
        try:
            nbformat.validate(book_nb)
        except nbformat.ValidationError as error:
            return f"invalid outputs: {error.message}"
        get_cache(str(self.folder)).cache_notebook_bundle(
            CacheBundleIn(book_nb, str(source.resolve()), data={"execution_seconds": round(run.seconds, 1)}),
            check_validity=False,
            overwrite=True,
        )
        return None

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if not self.stored and not self.not_stored:
            # Under pytest-xdist the workers run the chapters and store them; this (controller) process
            # saw none of it, so report what the cache holds instead.
            from jupyter_cache import get_cache

            held = len(get_cache(str(self.folder)).list_cache_records()) if self.folder.exists() else 0
            terminalreporter.write_line(f"book cache ({self.folder}): holds {held} executed chapter(s)")
            return
        terminalreporter.write_line(
            f"book cache ({self.folder}): stored {', '.join(self.stored)}"
            + (f"; not stored: {', '.join(self.not_stored)}" if self.not_stored else "")
        )


def _output(message, number: int):
    """An nbval output (a kernel message's content under its ``output_type``) as the output of cell ``number``."""
    import nbformat

    kind = message["output_type"]
    if kind == "stream":
        return nbformat.v4.new_output("stream", name=message["name"], text=message["text"])
    if kind == "error":
        return nbformat.v4.new_output("error", ename=message["ename"], evalue=message["evalue"],
                                      traceback=message["traceback"])  # fmt: skip
    output = nbformat.v4.new_output(kind, data=message["data"], metadata=message.get("metadata", {}))
    if kind == "execute_result":
        output.execution_count = number
    return output
