"""Instructor tooling (hand-written): student and instructor copies of the chapters.

The exercise format is nbgrader's (the delimiters are otter-grader's too). An exercise is three
cells (``instructors.md`` has the templates):

1. a Markdown cell with the task in a ``:::{exercise} N.K · ★☆☆ · Title`` box (MyST, sphinx-exercise;
   ★☆☆ / ★★☆ / ★★★ is the difficulty);
2. the solution cell, tagged ``hide-input`` (the book folds it): the solution sits between
   ``### BEGIN SOLUTION`` and ``### END SOLUTION``;
3. the check cell, whose first line is ``# Check N.K``; lines between ``### BEGIN HIDDEN TESTS``
   and ``### END HIDDEN TESTS`` are checks the student copy does not show.

The same two edits, :func:`clear_hidden_tests` and :func:`clear_solution`, make the book's **learner edition**
(``tools/build_book.py``): hidden checks removed from every page, solutions folded or, with
``--no-solutions``, replaced by the stub. Their output is nbgrader's, line for line (tests/test_exercises.py
compares them with nbgrader's preprocessors on every chapter), without needing nbgrader to build the book.

``python -m ddpm_lib.course student-copies --out dist`` writes, for every chapter,

- ``dist/student/NN_topic.ipynb``: solutions replaced by ``raise NotImplementedError()`` and hidden
  checks removed, exactly as nbgrader's ``ClearSolutions`` and ``ClearHiddenTests`` preprocessors do it
  (:func:`clear_solution`, :func:`clear_hidden_tests`; no nbgrader course database needed);
- ``dist/instructor/NN_topic.ipynb``: everything, with nbgrader cell metadata (each solution cell an
  nbgrader solution cell, each check cell an autograded test cell worth as many points as the
  exercise has stars), so it can go straight into an nbgrader course's ``source/`` folder.
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import jupytext
import nbformat

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = ROOT / "chapters"
CHECK_PREFIX = "# Check"
SOLUTION_BEGIN = "### BEGIN SOLUTION"
SOLUTION_END = "### END SOLUTION"
HIDDEN_BEGIN = "### BEGIN HIDDEN TESTS"
HIDDEN_END = "### END HIDDEN TESTS"
#: what a cleared solution becomes (nbgrader's default stub for Python), indented like the BEGIN line
SOLUTION_STUB = ("# YOUR CODE HERE", "raise NotImplementedError()")
HIDE_TAG = "hide-input"
#: the first line of an exercise's Markdown cell: ``:::{exercise} 1.2 · ★★☆ · The half-life of the signal``
EXERCISE_RE = re.compile(
    r"^:::\{exercise\} (?P<number>\d+\.\d+) · (?P<stars>★[★☆]{2}) · (?P<title>\S.*)$", re.M
)


@dataclass(frozen=True)
class Exercise:
    number: str  # "1.2"
    stars: int  # difficulty, 1-3
    title: str
    text_cell: int  # indices into the notebook's cells
    solution_cell: int
    check_cell: int


def chapter_sources(chapters_dir: Path = CHAPTERS) -> list[Path]:
    """The chapters' Jupytext sources, in course order."""
    return sorted(chapters_dir.glob("[0-9][0-9]_*.py"))


def is_check_cell(cell) -> bool:
    return cell.cell_type == "code" and cell.source.lstrip().startswith(CHECK_PREFIX)


def is_solution_cell(cell) -> bool:
    return cell.cell_type == "code" and SOLUTION_BEGIN in cell.source


def exercises(notebook: nbformat.NotebookNode) -> list[Exercise]:
    """The chapter's exercises, each a text cell, the solution cell right after it and the check
    cell right after that. Raises ``ValueError`` naming the cell where the format is broken."""
    found = []
    cells = notebook.cells
    for index, cell in enumerate(cells):
        if not is_solution_cell(cell):
            continue
        text = cells[index - 1] if index > 0 else None
        match = EXERCISE_RE.search(text.source) if text is not None and text.cell_type == "markdown" else None
        if match is None:
            raise ValueError(
                f"cell {index}: a solution cell must follow a Markdown cell with ':::{{exercise}} N.K · ★☆☆ · Title'"
            )
        if index + 1 >= len(cells) or not is_check_cell(cells[index + 1]):
            raise ValueError(
                f"cell {index}: a solution cell must be followed by a cell starting '{CHECK_PREFIX} {match['number']}'"
            )
        found.append(
            Exercise(match["number"], match["stars"].count("★"), match["title"], index - 1, index, index + 1)
        )
    return found


def _edit_regions(source: str, begin: str, end: str, replacement: tuple[str, ...]) -> str:
    """``source`` with every region from a line holding ``begin`` to the next holding ``end`` replaced by
    ``replacement``'s lines, indented like the ``begin`` line. Unbalanced or nested markers are a ValueError."""
    kept, inside = [], False
    for line in source.split("\n"):
        if begin in line:
            if inside:
                raise ValueError(f"nested {begin!r}")
            inside = True
            indent = line[: len(line) - len(line.lstrip())]
            kept.extend(indent + stub for stub in replacement)
        elif end in line:
            if not inside:
                raise ValueError(f"{end!r} without {begin!r}")
            inside = False
        elif not inside:
            kept.append(line)
    if inside:
        raise ValueError(f"{begin!r} without {end!r}")
    return "\n".join(kept)


def clear_hidden_tests(source: str) -> str:
    """A check cell's source without its hidden checks (the lines between the HIDDEN TESTS markers, and them)."""
    return _edit_regions(source, HIDDEN_BEGIN, HIDDEN_END, ())


def clear_solution(source: str) -> str:
    """A solution cell's source with the solution replaced by the ``raise NotImplementedError()`` stub."""
    return _edit_regions(source, SOLUTION_BEGIN, SOLUTION_END, SOLUTION_STUB)


def instructor_notebook(notebook: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """A copy of ``notebook`` with nbgrader metadata on every exercise's solution and check cells."""
    instructor = copy.deepcopy(notebook)
    for exercise in exercises(instructor):
        grade_id = "ex" + exercise.number.replace(".", "_")
        common = {"schema_version": 3, "task": False}
        instructor.cells[exercise.solution_cell].metadata["nbgrader"] = {
            **common,
            "grade": False,
            "solution": True,
            "locked": False,
            "grade_id": f"{grade_id}_solution",
        }
        instructor.cells[exercise.check_cell].metadata["nbgrader"] = {
            **common,
            "grade": True,
            "solution": False,
            "locked": True,
            "grade_id": f"{grade_id}_check",
            "points": exercise.stars,
        }
    return instructor


def student_notebook(notebook: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """A copy of ``notebook`` with solutions replaced by a ``NotImplementedError`` stub and hidden checks removed
    (what nbgrader's ``ClearSolutions`` and ``ClearHiddenTests`` make of it)."""
    student = copy.deepcopy(notebook)
    for cell in student.cells:
        if cell.cell_type == "code":
            cell.source = clear_hidden_tests(clear_solution(cell.source))
        cell.metadata.pop("nbgrader", None)
        cell.metadata.pop("mystnb", None)  # the book's "Show solution" label
        # The learner's notebooks fold solutions and checks; in the student copy the stub is where the
        # student writes, and the check has nothing left to hide.
        cell.metadata.get("jupyter", {}).pop("source_hidden", None)
        if cell.metadata.get("jupyter") == {}:
            del cell.metadata["jupyter"]
        if HIDE_TAG in cell.metadata.get("tags", []):
            cell.metadata["tags"].remove(HIDE_TAG)
            if not cell.metadata["tags"]:
                del cell.metadata["tags"]
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    return student


def write_copies(out: Path, chapters_dir: Path = CHAPTERS) -> list[Path]:
    """Write ``out/student/*.ipynb`` and ``out/instructor/*.ipynb`` for every chapter."""
    written = []
    for source in chapter_sources(chapters_dir):
        notebook = jupytext.read(source)
        try:
            copies = {"instructor": instructor_notebook(notebook), "student": student_notebook(notebook)}
        except ValueError as error:
            raise ValueError(f"{source.name}, {error}") from error
        for kind, copy_ in copies.items():
            path = out / kind / f"{source.stem}.ipynb"
            path.parent.mkdir(parents=True, exist_ok=True)
            nbformat.write(copy_, path)
            written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ddpm_lib.course", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    copies = commands.add_parser(
        "student-copies",
        help="write OUT/student/*.ipynb (no solutions) and OUT/instructor/*.ipynb (everything)",
    )
    copies.add_argument("--out", type=Path, default=Path("dist"), help="output folder (default: dist)")
    args = parser.parse_args(argv)
    try:
        written = write_copies(args.out)
    except ValueError as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
