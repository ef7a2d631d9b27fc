"""The exercises follow the course convention (instructors.md), and nbgrader grades them.

That every exercise check can fail (in the student copy, solution replaced by nbgrader's stub and
hidden checks removed, each check cell raises while every other cell still runs) and passes with
the solution in place is proved by the chapter runs themselves: ``tools/chapter_run.py`` executes
each chapter once, running every exercise on its stub and then with its solution
(``tests/test_chapter_run.py`` shows each guarantee can fail)."""

import copy
import re
from pathlib import Path

import jupytext
import nbformat
import pytest
from nbgrader.nbgraderformat import MetadataValidator

from ddpm_lib.course import (
    HIDE_TAG,
    chapter_sources,
    exercises,
    instructor_notebook,
    is_answer_cell,
    is_check_cell,
    is_solution_cell,
    student_notebook,
)

ROOT = Path(__file__).resolve().parents[1]
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
    answers = {exercise.answer_cell for exercise in found if exercise.answer_cell is not None}
    for exercise in found:
        if exercise.answer_cell is None:
            continue
        answer = notebook.cells[exercise.answer_cell].source
        label = f"{source.name}, exercise {exercise.number}'s written answer"
        # the model answer folded, then the rubric folded, both inside the solution region nbgrader clears
        assert re.search(
            r"^<!-- ### BEGIN SOLUTION -->\n:::\{admonition\} Model answer\n:class: dropdown\n(?:.*\n)+?:::\n\n"
            r"<!-- ### BEGIN RUBRIC -->\n:::\{admonition\} Rubric \((\d+) points?\)\n:class: dropdown\n(?:.*\n)+?:::\n"
            r"<!-- ### END RUBRIC -->\n<!-- ### END SOLUTION -->$",
            answer, re.M,
        ), label  # fmt: skip
        assert f"Rubric ({exercise.answer_points} point" in answer, (
            f"{label}: the rubric's points are the cell's"
        )
        assert re.search(r"^- \*\*0\*\*:", answer, re.M) and "**½ point**" in answer, (
            f"{label}: full, partial, none"
        )
    for index, cell in enumerate(notebook.cells):
        if (
            cell.cell_type == "markdown" and index not in answers
        ):  # nbgrader would treat these words as delimiters
            assert not any(word in cell.source for word in NBGRADER_DELIMITERS), f"{source.name} cell {index}"
        elif cell.cell_type == "markdown":
            assert "HIDDEN TESTS" not in cell.source, f"{source.name} cell {index}"
        elif cell.cell_type == "code" and not is_solution_cell(cell):
            assert "BEGIN SOLUTION" not in cell.source, f"{source.name} cell {index}"
            if "BEGIN HIDDEN TESTS" in cell.source:
                assert is_check_cell(cell), f"{source.name} cell {index}: hidden tests outside a check cell"


@pytest.mark.parametrize("source", CHAPTERS, ids=lambda p: p.stem)
def test_instructor_copy_is_an_nbgrader_source_notebook(source):
    notebook = instructor_notebook(jupytext.read(source))
    MetadataValidator().validate_nb(notebook)  # raises on a missing grade_id, points or a duplicate id
    graded = [cell for cell in notebook.cells if cell.metadata.get("nbgrader", {}).get("grade")]
    assert graded and all(is_check_cell(cell) or is_answer_cell(cell) for cell in graded)
    assert sum(cell.metadata["nbgrader"]["points"] for cell in graded) == sum(
        exercise.stars + exercise.answer_points for exercise in exercises(notebook)
    )
    for cell in graded:  # a written answer is graded by hand: nbgrader's "manually graded answer" cell
        if is_answer_cell(cell):
            assert cell.metadata["nbgrader"]["solution"] and not cell.metadata["nbgrader"]["locked"]


@pytest.mark.parametrize("source", CHAPTERS, ids=lambda p: p.stem)
def test_student_copy_has_no_solutions_and_no_hidden_checks(source):
    notebook = jupytext.read(source)
    student = student_notebook(notebook)
    assert len(student.cells) == len(notebook.cells)  # the chapter runner maps cells by index
    for exercise in exercises(notebook):
        stub = student.cells[exercise.solution_cell].source
        assert "raise NotImplementedError()" in stub and "BEGIN SOLUTION" not in stub, exercise.number
        if exercise.answer_cell is not None:
            answer = student.cells[exercise.answer_cell].source
            assert "YOUR ANSWER HERE" in answer and "Model answer" not in answer and "Rubric" not in answer
    assert all("BEGIN HIDDEN TESTS" not in cell.source for cell in student.cells)


@pytest.mark.slow
def test_nbgrader_grades_the_course_folder_full_marks_and_zero_with_feedback(tmp_path):
    """The course folder's README, run with nbgrader itself on the first chapter: generate_assignment, autograde
    a solved and an untouched submission, grade the solved one's written answers by hand (full points),
    generate_feedback, export the grades."""
    import csv
    import os
    import shutil
    import subprocess
    import sys

    from ddpm_lib.course import nbgrader_course

    source = CHAPTERS[0]
    name = source.stem
    chapters = tmp_path / "chapters"
    chapters.mkdir()
    shutil.copy(source, chapters / source.name)
    course = tmp_path / "course"
    nbgrader_course(course, chapters, students=("solver", "untouched"))

    def nbgrader(*args):
        result = subprocess.run(
            [sys.executable, "-m", "nbgrader", *args], cwd=course, capture_output=True, text=True, timeout=600,
            env={**os.environ, "DDPM_PROFILE": "ci"},
        )  # fmt: skip
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
    found = exercises(jupytext.read(source))
    written = {
        f"ex{e.number.replace('.', '_')}_answer": e.answer_points for e in found if e.answer_cell is not None
    }
    assert written, "the chapter has no written answer to grade by hand"
    from nbgrader.api import Gradebook  # what nbgrader formgrader does when the instructor grades an answer

    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gradebook:
        for grade_id, points in written.items():
            assert gradebook.find_grade(grade_id, name, name, "solver").needs_manual_grade
            gradebook.find_grade(grade_id, name, name, "solver").manual_score = points
        gradebook.db.commit()
    nbgrader("generate_feedback", name)
    nbgrader("export")
    with open(course / "grades.csv", newline="") as grades:
        scores = {
            row["student_id"]: (float(row["score"]), float(row["max_score"]))
            for row in csv.DictReader(grades)
        }
    total = sum(exercise.stars + exercise.answer_points for exercise in found)
    assert scores == {"solver": (total, total), "untouched": (0.0, total)}
    feedback = (course / "feedback" / "untouched" / name / f"{name}.html").read_text(encoding="utf-8")
    solved = (course / "feedback" / "solver" / name / f"{name}.html").read_text(encoding="utf-8")
    for exercise in found:
        assert f"Check {exercise.number}" in feedback
    # each check's error, with its message, is under the check in the untouched submission's feedback
    assert feedback.count("output_error") == len(found) and "output_error" not in solved
    assert f"Score: 0.0 / {float(total)}" in feedback and f"Score: {float(total)} / {float(total)}" in solved
    assert "YOUR ANSWER HERE" in feedback and "Rubric" not in feedback  # the student's own (empty) answer


def test_the_course_folder_holds_every_chapter_and_says_what_each_needs(tmp_path):
    from ddpm_lib.course import main, nbgrader_course

    course = tmp_path / "course"
    assert main(["nbgrader-course", str(course), "--students", "ada, grace"]) == 0
    config = (course / "nbgrader_config.py").read_text(encoding="utf-8")
    namespace = {"get_config": lambda: __import__("traitlets.config", fromlist=["Config"]).Config()}
    exec(config, namespace)
    c = namespace["c"]
    assert [a["name"] for a in c.CourseDirectory.db_assignments] == [path.stem for path in CHAPTERS]
    assert [s["id"] for s in c.CourseDirectory.db_students] == ["ada", "grace"]
    assert c.Execute.timeout >= 3600
    for path in CHAPTERS:
        notebook = nbformat.read(course / "source" / path.stem / f"{path.stem}.ipynb", as_version=4)
        graded = [cell for cell in notebook.cells if cell.metadata.get("nbgrader", {}).get("grade")]
        found = exercises(jupytext.read(path))
        assert len(graded) == len(found) + sum(exercise.answer_cell is not None for exercise in found)
    readme = (course / "README.md").read_text(encoding="utf-8")
    for command in ("generate_assignment", "autograde", "generate_feedback", "export", "formgrader"):
        assert f"nbgrader {command}" in readme
    rows = [line for line in readme.splitlines() if line.startswith("| ") and line[2:4].isdigit()]
    assert [row[2:4] for row in rows] == [path.stem[:2] for path in CHAPTERS]
    assert "fashion-mnist" in next(row for row in rows if row[2:4] == "15")
    try:
        nbgrader_course(course)
    except ValueError as error:
        assert "already holds an nbgrader course" in str(error)
    else:
        raise AssertionError("an existing course folder was overwritten")


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


def test_grading_md_holds_the_current_grading_notes():
    """grading.md reads on GitHub as in the book: its table is written from the chapters, and kept current."""
    from ddpm_lib.course import ROOT, write_grading_notes

    assert write_grading_notes(ROOT / "grading.md", check=True), (
        "grading.md is out of date: python -m ddpm_lib.course grading-notes --write"
    )


def test_the_model_answers_first_sentence_is_found_in_either_spelling():
    from ddpm_lib.course import model_answer

    solution = (
        "def f():\n    ### BEGIN SOLUTION\n    # Model answer: the bias grows with (1000/T)². The rest\n"
        "    # follows. More.\n    return 1\n    ### END SOLUTION"
    )
    assert model_answer(solution) == "the bias grows with (1000/T)²."
    assert (
        model_answer(solution.replace("Model answer:", "Model answer.")) == "the bias grows with (1000/T)²."
    )
    assert (
        model_answer("# Model answer. It is wider\n# than the posterior. Yes")
        == "It is wider than the posterior."
    )
    assert model_answer("return 1") == ""


def test_the_editions_show_the_model_answer_folded_and_the_rubric_to_instructors_only():
    """What tools/book_ext.py makes of a chapter with written answers (the pages and the downloadable sources)."""
    import sys

    sys.path.insert(0, str(ROOT / "tools"))
    import book_ext

    source = CHAPTERS[0]
    text = source.read_text(encoding="utf-8")
    notebook = jupytext.reads(text, fmt="py:percent")
    answer = next(cell.source for cell in notebook.cells if is_answer_cell(cell))
    assert book_ext.edit_for_edition(text, "instructor", "fold") == text
    folded = book_ext.edit_for_edition(text, "learner", "fold")
    assert "Model answer" in folded and "BEGIN RUBRIC" not in folded and "Rubric (" not in folded
    removed = book_ext.edit_for_edition(text, "learner", "remove")
    assert (
        "Model answer" not in removed and "# YOUR ANSWER HERE" in removed and "BEGIN SOLUTION" not in removed
    )
    assert len(jupytext.reads(removed, fmt="py:percent").cells) == len(notebook.cells)
    assert book_ext.edit_answer_for_edition(answer, "instructor", "fold") == answer
    learner = book_ext.edit_answer_for_edition(answer, "learner", "fold")
    assert ":::{admonition} Model answer\n:class: dropdown" in learner and "Rubric" not in learner
    assert "Model answer" not in book_ext.edit_answer_for_edition(answer, "learner", "remove")


def test_the_launch_copies_are_current_and_hold_no_solutions_checks_or_myst():
    """student/NN_topic.ipynb, what the learner edition's Colab and Binder buttons open: the student copy, its
    Markdown plain (Colab renders no MyST), written from the chapters and kept current."""
    from ddpm_lib.course import LAUNCH_DIR, write_launch_copies

    assert not write_launch_copies(check=True), "out of date: python -m ddpm_lib.course launch-copies"
    for source in CHAPTERS:
        notebook = nbformat.read(LAUNCH_DIR / f"{source.stem}.ipynb", as_version=4)
        assert len(notebook.cells) == len(jupytext.read(source).cells)
        text = "\n".join(cell.source for cell in notebook.cells)
        for word in ("BEGIN SOLUTION", "HIDDEN TESTS", "Model answer", "Rubric (", ":::{", "{cite:", ".py)"):
            assert word not in text, f"{source.stem}'s launch copy holds {word!r}"
        assert "raise NotImplementedError()" in text and "> **Exercise" in text


def test_plain_markdown_quotes_boxes_and_writes_citations_out():
    from ddpm_lib.course import plain_markdown

    citations = {"ho2020ddpm": ("Ho et al.", "2020"), "song2019ncsn": ("Song and Ermon", "2019")}
    text = (
        ":::{exercise} 1.2 · ★★☆ · Title\n:nonumber:\n\nWrite it {cite:p}`ho2020ddpm,song2019ncsn`.\n\n"
        "As {cite:t}`ho2020ddpm` do ([chapter 05](05_training.py), [notation](../notation.md#t)).\n:::"
    )
    assert plain_markdown(text, citations, "https://github.com/o/r") == (
        "> **Exercise 1.2 · ★★☆ · Title**\n>\n> Write it (Ho et al. 2020; Song and Ermon 2019).\n>\n"
        "> As Ho et al. (2020) do ([chapter 05](05_training.ipynb), "
        "[notation](https://github.com/o/r/blob/main/notation.md#t))."
    )
    with pytest.raises(ValueError, match="unknown citation"):
        plain_markdown("{cite:p}`nobody2024`", citations, "https://github.com/o/r")
