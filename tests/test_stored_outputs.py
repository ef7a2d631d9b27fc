"""Stored chapter outputs follow the code they ran (tools/execute_chapters.py).

A chapter's paired notebook carries the outputs of a full-profile execution with a record of what produced them:
its code cells, the package functions it ran (in its kernel and in the processes it started), the skeletons of the
package modules it imported and the weights it opened. These tests check the staleness decision on a copy of the
repository: which edits make which chapters stale. A stale chapter fails none of them (the book shows its outputs
under a note; ``python tools/execute_chapters.py --check`` is what publishing waits for).
"""

import shutil
import sys
from pathlib import Path

import nbformat
import pytest

from ddpm_lib.course import chapter_sources

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import execute_chapters  # noqa: E402

#: the chapters whose stored record is function-level and current: the edits below are judged on them (a stale
#: chapter is waiting for its re-execution; an older record says nothing of what the chapter ran)
STORED = [source for source in chapter_sources()
          if "functions" in (execute_chapters.stored_record(source) or {})
          and not execute_chapters.stale_reasons(source, "full")]  # fmt: skip


def test_list_and_check_say_current_or_stale_for_every_chapter():
    import subprocess

    result = subprocess.run([sys.executable, str(ROOT / "tools" / "execute_chapters.py"), "--check"],
                            capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines] == [source.name for source in chapter_sources()]
    words = [line.split()[1] for line in lines]
    assert set(words) <= {"current", "stale"}
    assert result.returncode == (1 if "stale" in words else 0)
    if "stale" in words:
        assert (
            "stale:" in result.stderr and "python tools/execute_chapters.py --profile full" in result.stderr
        )


@pytest.fixture
def repository(tmp_path):
    """A copy of the package and the chapters (with their stored records) to edit."""
    copy = tmp_path / "repository"
    shutil.copytree(ROOT / "ddpm_lib", copy / "ddpm_lib", ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "chapters").mkdir()
    for source in chapter_sources():
        shutil.copy(source, copy / "chapters" / source.name)
        shutil.copy(source.with_suffix(".ipynb"), copy / "chapters" / source.with_suffix(".ipynb").name)
    return copy


def reasons(copy: Path) -> dict[str, list[str]]:
    return {source.name[:2]: execute_chapters.stale_reasons(source, "full", root=copy)
            for source in sorted((copy / "chapters").glob("[0-9][0-9]_*.py"))}  # fmt: skip


def staled(copy: Path, before: dict[str, list[str]]) -> set[str]:
    """The current chapters (``STORED``) that an edit of ``copy`` made stale."""
    current = {source.name[:2] for source in STORED}
    return {number for number, now in reasons(copy).items() if number in current and now != before[number]}


def recorded() -> dict[str, dict]:
    return {source.name[:2]: execute_chapters.stored_record(source) for source in STORED}


def runners(module: str, name: str) -> set[str]:
    """The chapters whose records say they ran ``module``'s function ``name``."""
    return {
        number for number, record in recorded().items() if name in record.get("functions", {}).get(module, {})
    }


def edit_body(copy: Path, module: str, qualname: str) -> None:
    """Insert a statement at the top of the body of ``qualname`` (after its docstring) in the copy."""
    import ast

    path = copy / module
    text = path.read_text(encoding="utf-8")
    body = None
    nodes = ast.parse(text).body
    for part in qualname.split("."):
        node = next(n for n in nodes if isinstance(n, (ast.ClassDef, ast.FunctionDef)) and n.name == part)
        body = nodes = node.body
    first = (
        body[1]
        if isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) and len(body) > 1
        else body[0]
    )
    lines = text.splitlines(keepends=True)
    lines.insert(first.lineno - 1, " " * first.col_offset + "_edited = None\n")
    path.write_text("".join(lines), encoding="utf-8")


def test_a_docstring_or_comment_edit_in_a_module_every_chapter_imports_stales_nothing(repository):
    path = repository / "ddpm_lib" / "profile.py"
    text = path.read_text(encoding="utf-8")
    edited = text.replace(
        '"""Sizes a chapter may scale with the profile.', '"""Sizes a chapter scales with the profile.', 1
    )
    edited = edited.replace("PROFILE = get_profile()", "PROFILE = get_profile()  # read once, at import", 1)
    assert edited.count("Sizes a chapter scales") == 1 and "at import" in edited
    before = reasons(repository)
    path.write_text(edited, encoding="utf-8")
    assert all("ddpm_lib/profile.py" in record["skeletons"] for record in recorded().values())
    assert staled(repository, before) == set()


def test_a_body_edit_of_a_function_only_chapter_12_runs_stales_only_chapter_12(repository):
    if "12" not in recorded():
        pytest.skip("chapter 12's record is not function-level yet: python tools/execute_chapters.py 12")
    only = sorted((module, name) for module, names in recorded()["12"]["functions"].items() for name in names
                  if runners(module, name) == {"12"})  # fmt: skip
    # (the functions chapter 12 promotes, such as inpaint, run from its own cells: an edit of them is an edit of its
    # code cells, and ddpm_lib/inpainting.py is their promoted copy)
    assert only, "chapter 12 runs no package function that no other chapter runs"
    module, name = only[0]
    before = reasons(repository)
    edit_body(repository, module, name)
    assert staled(repository, before) == {"12"}
    assert f"functions changed: {module}:{name}" in " ".join(reasons(repository)["12"])


def test_a_body_edit_of_the_training_runner_stales_the_chapters_that_train_from_the_command_line(repository):
    assert {"05", "14"} & set(recorded()), "neither chapter that trains from the command line has a record"
    assert {"05", "14"} & set(recorded()) <= runners("ddpm_lib/runner.py", "run_training")
    before = reasons(repository)
    edit_body(repository, "ddpm_lib/runner.py", "run_training")
    assert staled(repository, before) == runners("ddpm_lib/runner.py", "run_training")


def test_an_edit_of_a_function_no_chapter_runs_stales_nothing(repository):
    from ddpm_lib.fingerprint import function_fingerprints

    unrun = [
        name
        for name in function_fingerprints(ROOT / "ddpm_lib" / "cli.py")
        if not runners("ddpm_lib/cli.py", name)
    ]
    assert unrun, "every function of cli.py runs in some chapter"
    before = reasons(repository)
    edit_body(repository, "ddpm_lib/cli.py", unrun[0])
    assert staled(repository, before) == set()


def test_a_changed_weights_file_stales_the_chapters_that_read_it(repository):
    readers = {
        number
        for number, record in recorded().items()
        if "ddpm_lib/weights/ddpm_mnist.pt" in record["weights"]
    }
    assert readers
    before = reasons(repository)
    with open(repository / "ddpm_lib" / "weights" / "ddpm_mnist.pt", "ab") as file:
        file.write(b"\0")
    assert staled(repository, before) == readers


def test_a_changed_default_of_an_executed_function_stales_its_chapters(repository):
    path = repository / "ddpm_lib" / "fast_sampling.py"
    text = path.read_text(encoding="utf-8")
    assert text.count('spacing: str = "trailing"') >= 1
    before = reasons(repository)
    path.write_text(text.replace('spacing: str = "trailing"', 'spacing: str = "leading"'), encoding="utf-8")
    ran = runners("ddpm_lib/fast_sampling.py", "timesteps_for")
    assert ran and ran <= staled(repository, before)


def test_a_code_cell_edit_stales_its_chapter_and_a_prose_edit_does_not(repository):
    source = repository / "chapters" / "01_noise_schedule.py"
    text = source.read_text(encoding="utf-8")
    before = reasons(repository)
    source.write_text(text.replace("# # 01 ·", "# # 01 (edited prose) ·", 1), encoding="utf-8")
    assert staled(repository, before) == set()
    source.write_text(text.replace("import math\n", "import math  # a comment\n\n", 1), encoding="utf-8")
    assert staled(repository, before) == set()  # nor do comments and blank lines
    source.write_text(text.replace("import math\n", "import math, os\n", 1), encoding="utf-8")
    assert staled(repository, before) == {"01"}
    assert "its code cells changed" in reasons(repository)["01"]


def test_widget_views_and_state_are_not_stored():
    notebook = nbformat.v4.new_notebook(metadata={"widgets": {"state": {}}})
    bar = {"text/plain": "HBox(children=(...))", execute_chapters.WIDGET_MIME: {"model_id": "x"}}
    figure = {"image/png": "iVBORw0KGgo=", "text/plain": "<Figure>"}
    notebook.cells = [nbformat.v4.new_code_cell("x", outputs=[nbformat.v4.new_output("display_data", data=bar),
                                                              nbformat.v4.new_output("display_data", data=figure)])]  # fmt: skip
    execute_chapters.clean_outputs(notebook)
    assert "widgets" not in notebook.metadata
    assert [output["data"] for output in notebook.cells[0].outputs] == [figure]


def minutes_or_seconds(seconds: float) -> str:
    """How instructors.md's time table writes a wall time: whole seconds under a minute, minutes with one decimal
    under ten, whole minutes above."""
    if seconds < 59.5:
        return f"{seconds:.0f} s"
    if seconds < 9.95 * 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 60:.0f} min"


def test_the_instructors_time_table_gives_the_stored_wall_times():
    """The full-profile column says what each chapter's stored record says, so that re-executing a chapter and
    forgetting the table fails here rather than misleading an instructor who plans a session by it."""
    rows = {}
    for line in (ROOT / "instructors.md").read_text(encoding="utf-8").splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0][:2].isdigit() and " · " in cells[0]:
            rows[cells[0][:2]] = cells[2]
    assert sorted(rows) == sorted(source.name[:2] for source in chapter_sources()), "one row per chapter"
    wrong = []
    for source in STORED:
        record = execute_chapters.stored_record(source)
        if record["profile"] != "full":
            continue
        expected = minutes_or_seconds(record["wall_time_s"])
        if rows[source.name[:2]] != expected:
            wrong.append(f"{source.stem}: table says {rows[source.name[:2]]}, the record {expected}")
    assert not wrong, "instructors.md's time table (full profile) is out of date: " + "; ".join(wrong)


def test_the_book_shows_stored_outputs_with_a_note_on_exactly_the_stale_pages(monkeypatch):
    """tools/book_ext.py's reader: stored outputs always; the note only when the chapter is stale."""
    import book_ext

    source = ROOT / "chapters" / "01_noise_schedule.py"
    monkeypatch.setattr(execute_chapters, "stale_reasons", lambda *args, **kwargs: [])
    notebook = book_ext.read_chapter(source.read_text(encoding="utf-8"))
    assert notebook.metadata["mystnb"] == {"execution_mode": "off"}
    assert "stale-outputs" not in "".join(cell.source for cell in notebook.cells)
    assert any(cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code")
    names = ", ".join(f"ddpm_lib/schedule.py:f{i}" for i in range(10))
    monkeypatch.setattr(
        execute_chapters, "stale_reasons", lambda *args, **kwargs: [f"functions changed: {names}"]
    )
    notebook = book_ext.read_chapter(source.read_text(encoding="utf-8"))
    title = notebook.cells[0].source
    assert title.startswith("# 01 · ") and ":class: warning stale-outputs" in title
    assert "`ddpm_lib/schedule.py:f7`" in title and "and 2 more" in title and "f8" not in title
    assert any(cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code")
