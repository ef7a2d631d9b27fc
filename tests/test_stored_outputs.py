"""Stored chapter outputs are never stale silently (tools/execute_chapters.py).

A chapter's paired notebook may carry the outputs of a full-profile execution, with a record of what produced
them (the hash of its code cells, of every ddpm_lib module it used and of the shipped weights). These tests fail
when one of those changed after the outputs were made, naming the command that refreshes them.
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

STORED = [source for source in chapter_sources() if execute_chapters.stored_record(source) is not None]


@pytest.mark.parametrize("source", STORED, ids=lambda p: p.stem)
def test_stored_outputs_are_current(source):
    record = execute_chapters.stored_record(source)
    reasons = execute_chapters.stale_reasons(source, record["profile"])
    assert not reasons, (
        f"{source.name}: its stored {record['profile']}-profile outputs are stale ({'; '.join(reasons)}); "
        f"refresh them with:  python tools/execute_chapters.py --profile {record['profile']} {source.name[:2]}"
    )


def test_a_code_change_makes_outputs_stale_and_a_prose_change_does_not(tmp_path, monkeypatch):
    source = tmp_path / "01_noise_schedule.py"
    shutil.copy(ROOT / "chapters" / source.name, source)
    notebook = nbformat.read(ROOT / "chapters" / "01_noise_schedule.ipynb", 4)
    notebook.metadata[execute_chapters.KEY] = {
        "profile": "full",
        "code_sha256": execute_chapters.code_hash(source),
        "modules": execute_chapters.module_hashes(["ddpm_lib/__init__.py", "ddpm_lib/profile.py"]),
        "weights": execute_chapters.module_hashes(["ddpm_lib/weights/ddpm_mnist.json"]),
    }
    nbformat.write(notebook, source.with_suffix(".ipynb"))
    assert execute_chapters.stale_reasons(source, "full") == []
    assert execute_chapters.stale_reasons(source, "ci") == ["made in the full profile"]
    text = source.read_text(encoding="utf-8")
    source.write_text(text.replace("# # 01 ·", "# # 01 (edited prose) ·", 1), encoding="utf-8")
    assert execute_chapters.stale_reasons(source, "full") == []  # prose does not count
    source.write_text(text.replace("import math\n", "import math  # a comment\n\n", 1), encoding="utf-8")
    assert execute_chapters.stale_reasons(source, "full") == []  # nor do comments and blank lines
    source.write_text(text.replace("import math\n", "import math, os\n", 1), encoding="utf-8")
    assert execute_chapters.stale_reasons(source, "full") == ["its code cells changed"]
    source.write_text(text.replace("import math\n", "import  math\n", 1), encoding="utf-8")
    assert execute_chapters.stale_reasons(source, "full") == []  # spacing within a line is not code either
    record = notebook.metadata[execute_chapters.KEY]
    record["modules"]["ddpm_lib/profile.py"] = "0" * 64  # as if profile.py changed since
    nbformat.write(notebook, source.with_suffix(".ipynb"))
    source.write_text(text, encoding="utf-8")
    assert execute_chapters.stale_reasons(source, "full") == ["ddpm_lib changed: ddpm_lib/profile.py"]
    record["modules"] = execute_chapters.module_hashes(["ddpm_lib/__init__.py", "ddpm_lib/profile.py"])
    record["weights"]["ddpm_lib/weights/ddpm_mnist.json"] = "0" * 64  # as if those weights were re-shipped
    nbformat.write(notebook, source.with_suffix(".ipynb"))
    assert execute_chapters.stale_reasons(source, "full") == [
        "shipped weights changed: ddpm_lib/weights/ddpm_mnist.json"
    ]
    del record["weights"]  # a record made before weights were tracked per file: all of them count
    record["weights_sha256"] = "0" * 64
    nbformat.write(notebook, source.with_suffix(".ipynb"))
    assert execute_chapters.stale_reasons(source, "full") == ["the shipped weights changed"]


def test_the_audit_records_the_weights_a_kernel_opens(tmp_path):
    """AUDIT then PROBE, run as the kernel runs them: the files opened under ddpm_lib/weights, and nothing else."""
    import json
    import subprocess

    code = (
        execute_chapters.AUDIT
        + "from ddpm_lib.pretrained import provenance\nprovenance('ddpm_mnist_cond')\n"
        + f"open({str(tmp_path / 'elsewhere.txt')!r}, 'w').close()\n"
        + execute_chapters.PROBE
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    used = json.loads(result.stdout)
    assert used["weights"] == [str((ROOT / "ddpm_lib" / "weights" / "ddpm_mnist_cond.json").resolve())]
    assert str(ROOT / "ddpm_lib" / "pretrained.py") in used["modules"]


def test_widget_views_and_state_are_not_stored():
    notebook = nbformat.v4.new_notebook(metadata={"widgets": {"state": {}}})
    bar = {"text/plain": "HBox(children=(...))", execute_chapters.WIDGET_MIME: {"model_id": "x"}}
    figure = {"image/png": "iVBORw0KGgo=", "text/plain": "<Figure>"}
    notebook.cells = [nbformat.v4.new_code_cell("x", outputs=[nbformat.v4.new_output("display_data", data=bar),
                                                              nbformat.v4.new_output("display_data", data=figure)])]  # fmt: skip
    execute_chapters.clean_outputs(notebook)
    assert "widgets" not in notebook.metadata
    assert [output["data"] for output in notebook.cells[0].outputs] == [figure]


def test_a_module_hash_ignores_comments_but_not_code(tmp_path):
    """A promoted module's ``# --- chapters/…, cell N (line L)`` marker moves when its chapter gains a line above;
    that changes no code, so it must not make stored outputs stale. A changed line of code must."""
    module = tmp_path / "module.py"
    module.write_text(
        "# --- chapters/04_unet.py, cell 58 (line 1241): edit there ---\nx = 1\n", encoding="utf-8"
    )
    before = execute_chapters.file_hash(module)
    module.write_text(
        "# --- chapters/04_unet.py, cell 58 (line 1245): edit there ---\nx = 1\n", encoding="utf-8"
    )
    assert execute_chapters.file_hash(module) == before
    module.write_text(
        "# --- chapters/04_unet.py, cell 58 (line 1245): edit there ---\nx = 2\n", encoding="utf-8"
    )
    assert execute_chapters.file_hash(module) != before
    data = tmp_path / "weights.json"
    data.write_text('{"a": 1}', encoding="utf-8")
    digest = execute_chapters.file_hash(data)
    data.write_text('{"a": 1} ', encoding="utf-8")
    assert execute_chapters.file_hash(data) != digest  # any other file: its bytes


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
