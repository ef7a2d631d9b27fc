"""Every exercise check can fail: in the student copy (solutions replaced by nbgrader's stub,
hidden checks removed) each check cell raises, while every other cell of the chapter still runs.

The instructor copy (the chapter as written) passing every check is what nbval proves."""

from pathlib import Path

import jupytext
import pytest
from nbclient import NotebookClient

from ddpm_lib.course import chapter_sources, is_check_cell, is_solution_cell, student_notebook

CHAPTERS = chapter_sources()


@pytest.mark.parametrize("source", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_has_two_to_four_exercises_each_with_a_check(source):
    cells = jupytext.read(source).cells
    solutions = [i for i, cell in enumerate(cells) if is_solution_cell(cell)]
    assert 2 <= len(solutions) <= 4, f"{source.name} has {len(solutions)} exercises"
    for i in solutions:
        assert i + 1 < len(cells) and is_check_cell(cells[i + 1]), f"{source.name}: no check after cell {i}"


@pytest.mark.parametrize("source", CHAPTERS, ids=lambda p: p.stem)
def test_student_copy_checks_fail_and_the_rest_runs(source: Path):
    notebook = student_notebook(jupytext.read(source))
    assert all("BEGIN HIDDEN TESTS" not in cell.source for cell in notebook.cells)
    NotebookClient(
        notebook, timeout=600, allow_errors=True, resources={"metadata": {"path": str(source.parent)}}
    ).execute()
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type != "code":
            continue
        errors = [out for out in cell.outputs if out.output_type == "error"]
        if is_check_cell(cell):
            assert errors, f"{source.name} cell {index}: the check passed without a solution"
            assert errors[0].ename in {"NotImplementedError", "NameError", "AssertionError"}
        elif not is_solution_cell(cell):
            assert not errors, f"{source.name} cell {index} failed in the student copy: {errors[0].ename}"
