"""Instructor tooling (hand-written): student copies of the chapters.

The exercise format is nbgrader's (also read by otter-grader): in a solution cell the code between
``### BEGIN SOLUTION`` and ``### END SOLUTION`` is the solution, the next cell (starting
``# Check``) checks it, and lines between ``### BEGIN HIDDEN TESTS`` and ``### END HIDDEN TESTS``
are checks the student copy does not show. nbgrader's own ``ClearSolutions`` and
``ClearHiddenTests`` preprocessors make the student copy, with no course database::

    python -m ddpm_lib.course student-copies --out dist
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import jupytext
import nbformat

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = ROOT / "chapters"
CHECK_PREFIX = "# Check"
SOLUTION_BEGIN = "### BEGIN SOLUTION"


def chapter_sources(chapters_dir: Path = CHAPTERS) -> list[Path]:
    """The chapters' Jupytext sources, in course order."""
    return sorted(chapters_dir.glob("[0-9][0-9]_*.py"))


def is_check_cell(cell) -> bool:
    return cell.cell_type == "code" and cell.source.lstrip().startswith(CHECK_PREFIX)


def is_solution_cell(cell) -> bool:
    return cell.cell_type == "code" and SOLUTION_BEGIN in cell.source


def student_notebook(notebook: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """A copy of ``notebook`` with solutions replaced by a ``NotImplementedError`` stub and hidden checks removed."""
    try:
        from nbgrader.preprocessors import ClearHiddenTests, ClearSolutions
    except ImportError as error:  # pragma: no cover - nbgrader is in requirements.txt
        raise SystemExit("student copies need nbgrader: pip install nbgrader") from error
    student = copy.deepcopy(notebook)
    resources = {"language": "python"}
    for preprocessor in (ClearSolutions(enforce_metadata=False), ClearHiddenTests(enforce_metadata=False)):
        student, resources = preprocessor.preprocess(student, resources)
    for cell in student.cells:  # nbgrader tags cells it changed; keep the copy clean of that
        cell.metadata.pop("nbgrader", None)
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    return student


def write_copies(out: Path, chapters_dir: Path = CHAPTERS) -> list[Path]:
    """Write ``out/student/*.ipynb`` and ``out/instructor/*.ipynb`` for every chapter."""
    written = []
    for source in chapter_sources(chapters_dir):
        notebook = jupytext.read(source)
        for kind, copy_ in (("instructor", notebook), ("student", student_notebook(notebook))):
            path = out / kind / f"{source.stem}.ipynb"
            path.parent.mkdir(parents=True, exist_ok=True)
            nbformat.write(copy_, path)
            written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ddpm_lib.course", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    copies = commands.add_parser("student-copies", help="write student and instructor notebooks")
    copies.add_argument("--out", type=Path, default=Path("dist"), help="output folder (default: dist)")
    args = parser.parse_args(argv)
    for path in write_copies(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
