"""The exercises follow the course convention (instructors.md), and nbgrader grades them.

That every exercise check can fail (in the student copy, solution replaced by nbgrader's stub and
hidden checks removed, each check cell raises while every other cell still runs) and passes with
the solution in place is proved by the chapter runs themselves: ``tools/chapter_run.py`` executes
each chapter once, running every exercise on its stub and then with its solution
(``tests/test_chapter_run.py`` shows each guarantee can fail)."""

import copy
import re

import jupytext
import pytest
from nbgrader.nbgraderformat import MetadataValidator

from ddpm_lib.course import (
    HIDE_TAG,
    chapter_sources,
    exercises,
    instructor_notebook,
    is_check_cell,
    is_solution_cell,
    student_notebook,
)

CHAPTERS = chapter_sources()
NBGRADER_DELIMITERS = ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "END HIDDEN TESTS")


@pytest.mark.parametrize("source", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_has_two_to_four_exercises_in_the_course_format(source):
    notebook = jupytext.read(source)
    found = exercises(notebook)  # raises when a solution cell lacks its exercise box or its check
    assert 2 <= len(found) <= 4, f"{source.name} has {len(found)} exercises"
    assert any(exercise.stars == 1 for exercise in found), f"{source.name}: no ★☆☆ exercise"
    chapter = int(source.name[:2])
    assert [exercise.number for exercise in found] == [f"{chapter}.{k}" for k in range(1, len(found) + 1)]
    for exercise in found:
        label = f"{source.name}, exercise {exercise.number}"
        text = notebook.cells[exercise.text_cell].source
        assert 1 <= exercise.stars <= 3
        assert re.search(r"^:nonumber:$", text, re.M), f"{label}: the box needs :nonumber: (the title has it)"
        assert text.rstrip().endswith("\n:::"), (
            f"{label}: close the exercise box with ':::' at the cell's end"
        )
        solution = notebook.cells[exercise.solution_cell]
        assert HIDE_TAG in solution.metadata.get("tags", []), f"{label}: tag the solution cell {HIDE_TAG}"
        assert solution.metadata.get("mystnb", {}).get("code_prompt_show") == "Show solution", label
        assert "### END SOLUTION" in solution.source, label
        check = notebook.cells[exercise.check_cell].source
        assert check.startswith(f"# Check {exercise.number}\n"), (
            f"{label}: the check starts '# Check {exercise.number}'"
        )
        # In JupyterLab the learner sees the exercise and a folded "…" for the solution and for the check
        # (whose hidden tests would give the answer away); the outputs stay visible.
        for kind, index in (("solution", exercise.solution_cell), ("check", exercise.check_cell)):
            folded = notebook.cells[index].metadata.get("jupyter", {}).get("source_hidden")
            assert folded is True, (
                f'{label}: fold the {kind} cell (# %% ... jupyter={{"source_hidden": true}})'
            )
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type == "markdown":  # nbgrader would treat these words as delimiters
            assert not any(word in cell.source for word in NBGRADER_DELIMITERS), f"{source.name} cell {index}"
        elif cell.cell_type == "code" and not is_solution_cell(cell):
            assert "BEGIN SOLUTION" not in cell.source, f"{source.name} cell {index}"
            if "BEGIN HIDDEN TESTS" in cell.source:
                assert is_check_cell(cell), f"{source.name} cell {index}: hidden tests outside a check cell"


@pytest.mark.parametrize("source", CHAPTERS, ids=lambda p: p.stem)
def test_instructor_copy_is_an_nbgrader_source_notebook(source):
    notebook = instructor_notebook(jupytext.read(source))
    MetadataValidator().validate_nb(notebook)  # raises on a missing grade_id, points or a duplicate id
    graded = [cell for cell in notebook.cells if cell.metadata.get("nbgrader", {}).get("grade")]
    assert graded and all(is_check_cell(cell) for cell in graded)
    assert sum(cell.metadata["nbgrader"]["points"] for cell in graded) == sum(
        exercise.stars for exercise in exercises(notebook)
    )


@pytest.mark.parametrize("source", CHAPTERS, ids=lambda p: p.stem)
def test_student_copy_has_no_solutions_and_no_hidden_checks(source):
    notebook = jupytext.read(source)
    student = student_notebook(notebook)
    assert len(student.cells) == len(notebook.cells)  # the chapter runner maps cells by index
    for exercise in exercises(notebook):
        stub = student.cells[exercise.solution_cell].source
        assert "raise NotImplementedError()" in stub and "BEGIN SOLUTION" not in stub, exercise.number
    assert all("BEGIN HIDDEN TESTS" not in cell.source for cell in student.cells)


@pytest.mark.slow
def test_nbgrader_grades_the_instructor_copy_full_marks_and_the_student_copy_zero(tmp_path):
    """The instructions in instructors.md, run with nbgrader itself on the first chapter:
    generate_assignment from the instructor copy, autograde two submissions, export the grades."""
    import csv
    import shutil
    import subprocess
    import sys

    import nbformat

    from ddpm_lib.course import write_copies

    source = CHAPTERS[0]
    name = source.stem
    dist = tmp_path / "dist"
    chapters = tmp_path / "chapters"
    chapters.mkdir()
    shutil.copy(source, chapters / source.name)
    write_copies(dist, chapters)
    course = tmp_path / "course"
    (course / "source" / name).mkdir(parents=True)
    shutil.copy(dist / "instructor" / f"{name}.ipynb", course / "source" / name)
    (course / "nbgrader_config.py").write_text(
        "c = get_config()\n"
        f"c.CourseDirectory.db_assignments = [dict(name={name!r})]\n"
        "c.CourseDirectory.db_students = [dict(id='solver'), dict(id='untouched')]\n"
    )

    def nbgrader(*args):
        result = subprocess.run(
            [sys.executable, "-m", "nbgrader", *args], cwd=course, capture_output=True, text=True, timeout=600
        )
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]

    nbgrader("generate_assignment", name, "--force")
    released = nbformat.read(course / "release" / name / f"{name}.ipynb", as_version=4)
    assert not any(
        "BEGIN SOLUTION" in cell.source or "HIDDEN TESTS" in cell.source for cell in released.cells
    )
    for student, notebook in (("solver", course / "source"), ("untouched", course / "release")):
        (course / "submitted" / student / name).mkdir(parents=True)
        shutil.copy(notebook / name / f"{name}.ipynb", course / "submitted" / student / name)
    nbgrader("autograde", name)
    nbgrader("export")
    with open(course / "grades.csv", newline="") as grades:
        scores = {
            row["student_id"]: (float(row["score"]), float(row["max_score"]))
            for row in csv.DictReader(grades)
        }
    total = sum(exercise.stars for exercise in exercises(jupytext.read(source)))
    assert scores == {"solver": (total, total), "untouched": (0.0, total)}


@pytest.mark.parametrize("source", CHAPTERS[:1], ids=lambda p: p.stem)
def test_student_copy_unfolds_the_cells_the_student_works_in(source):
    student = student_notebook(jupytext.read(source))
    assert not [cell for cell in student.cells if cell.metadata.get("jupyter", {}).get("source_hidden")]


@pytest.mark.parametrize("source", CHAPTERS, ids=lambda p: p.stem)
def test_the_course_clears_solutions_and_hidden_tests_as_nbgrader_does(source):
    """ddpm_lib.course's own edits (used by the student copies and the book's learner edition, which must build
    without nbgrader) give nbgrader's ClearSolutions + ClearHiddenTests output, cell for cell."""
    from nbgrader.preprocessors import ClearHiddenTests, ClearSolutions

    notebook = jupytext.read(source)
    theirs, resources = notebook, {"language": "python"}
    for preprocessor in (ClearSolutions(enforce_metadata=False), ClearHiddenTests(enforce_metadata=False)):
        theirs, resources = preprocessor.preprocess(copy.deepcopy(theirs), resources)
    ours = student_notebook(notebook)
    assert [cell.source for cell in ours.cells] == [cell.source for cell in theirs.cells]
    assert any("raise NotImplementedError()" in cell.source for cell in ours.cells)
    assert not any("BEGIN HIDDEN TESTS" in cell.source for cell in ours.cells)


def test_region_edits_refuse_unbalanced_markers():
    from ddpm_lib.course import clear_hidden_tests, clear_solution

    assert clear_solution("def f():\n    ### BEGIN SOLUTION\n    return 1\n    ### END SOLUTION") == (
        "def f():\n    # YOUR CODE HERE\n    raise NotImplementedError()"
    )
    for broken in (
        "### BEGIN SOLUTION\nx = 1",
        "x = 1\n### END SOLUTION",
        "### BEGIN SOLUTION\n### BEGIN SOLUTION",
    ):
        with pytest.raises(ValueError, match="SOLUTION"):
            clear_solution(broken)
    assert clear_hidden_tests("a\n### BEGIN HIDDEN TESTS\nb\n### END HIDDEN TESTS\nc") == "a\nc"


def test_grading_tools_are_instructor_extras_and_the_learner_gets_the_lab_settings():
    """A learner's `pip install -r requirements.txt` brings no grading menus; the instructor file adds them."""
    root = CHAPTERS[0].parent.parent
    names = lambda text: {  # noqa: E731
        re.split(r"[<>=!~ \[;#]", line.strip(), maxsplit=1)[0].lower()
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    }
    learner = names((root / "requirements.txt").read_text(encoding="utf-8"))
    instructor = names((root / "requirements-instructor.txt").read_text(encoding="utf-8"))
    assert "nbgrader" not in learner and "otter-grader" not in learner
    assert {"-r", "nbgrader"} <= instructor
    assert "jupyterlab-myst" in learner and "./jupyter" in learner
    import json

    settings = json.loads((root / "jupyter" / "settings" / "ddpm-course.json").read_text(encoding="utf-8"))
    assert (
        settings["@jupyterlab/docmanager-extension:plugin"]["defaultViewers"]["python"] == "Jupytext Notebook"
    )
    assert settings["@jupyterlab/apputils-extension:notification"]["fetchNews"] == "false"
