"""The chapter runner (nbval plus tools/chapter_run.py) on tiny synthetic chapters: each guarantee it gives can fail.

Every test writes ``chapters/99_synthetic.ipynb`` into a scratch folder and runs pytest on it in this process, with
nbval (``--nbval-lax --nbval-current-env``) and the plugin, as ``python -m pytest`` runs the course's chapters:

1. every cell as written runs: a cell that raises fails as nbval reports it (``99_synthetic.ipynb::Cell N``, the
   cell's source and its traceback), and so does a solution that does not satisfy its check;
2. every check fails on the student copy: a check that passes on the stub (or fails with another error than
   NotImplementedError / NameError / AssertionError) fails the check's item;
3. nothing after an exercise depends on its solution: a later cell that uses a name only the solution (or the
   check) defines fails, naming the exercise.

And a passing chapter gives the outputs and random numbers of a plain top-to-bottom run, while its later cells see
the student copy's stub; nbval's markers work; on a CPU without bfloat16 a cell that asks for bfloat16 autocast on
the CPU fails. Each run starts one small kernel (without torch, but for the bfloat16 tests).
"""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tools.execute_chapters import current_env_kernel_manager, poll_in_short_waits

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.slow  # each test runs a kernel: 2-5 s

SOLUTION_TAGS = {
    "tags": ["hide-input"],
    "mystnb": {"code_prompt_show": "Show solution", "code_prompt_hide": "Hide solution"},
}
NODE = "chapters/99_synthetic.ipynb"

SETUP = "import random\n\nrandom.seed(0)\nBASE = 2"
SOLUTION = "def double(x):\n    ### BEGIN SOLUTION\n    return BASE * x\n    ### END SOLUTION"
CHECK = (
    "# Check 99.1\nassert double(2) == 4\n### BEGIN HIDDEN TESTS\nassert double(0) == 0\n"
    "### END HIDDEN TESTS\nprint('Exercise 99.1 passed')"
)


def chapter(*cells: str | tuple[str, str]) -> nbformat.NotebookNode:
    """A notebook from cells: a string is a code cell, ("md", text) a Markdown cell, ("solution",
    code) a solution cell (tagged as the course tags them), ("tags: a b", code) a code cell with those tags."""
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    for cell in cells:
        if isinstance(cell, str):
            notebook.cells.append(nbformat.v4.new_code_cell(cell))
        elif cell[0] == "md":
            notebook.cells.append(nbformat.v4.new_markdown_cell(cell[1]))
        elif cell[0].startswith("tags:"):
            notebook.cells.append(nbformat.v4.new_code_cell(cell[1], metadata={"tags": cell[0].split()[1:]}))
        else:
            notebook.cells.append(nbformat.v4.new_code_cell(cell[1], metadata=SOLUTION_TAGS))
    return notebook


def box(number: str = "99.1", title: str = "Double") -> tuple[str, str]:
    return ("md", f"## Exercises\n\n:::{{exercise}} {number} · ★☆☆ · {title}\n:nonumber:\n\nDo it.\n:::")


def exercise(solution: str = SOLUTION, check: str = CHECK, number: str = "99.1") -> list:
    return [box(number), ("solution", solution), check]


class Outputs:
    """A plugin for the inner session: the outputs of each chapter cell that ran, by code cell number."""

    def __init__(self):
        self.texts: dict[int, str] = {}
        self.data: dict[int, list] = {}

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item, call):
        yield
        if call.when == "call" and hasattr(item, "index"):  # a chapter's cell (nbval's own items have none)
            outputs = item.parent.outputs.get(item.index, [])
            self.texts[item.cell_num] = "".join(output.get("text", "") for output in outputs)
            self.data[item.cell_num] = outputs


def run(pytester: pytest.Pytester, notebook: nbformat.NotebookNode, *args: str):
    """Run pytest with nbval and the chapter runner on ``notebook``; the result and the cells' outputs."""
    chapters = pytester.path / "chapters"
    chapters.mkdir(exist_ok=True)
    nbformat.write(notebook, chapters / "99_synthetic.ipynb")
    outputs = Outputs()
    result = pytester.runpytest_inprocess(
        "-p", "tools.chapter_run", "-p", "no:cacheprovider", "--nbval-lax", "--nbval-current-env",
        "--nbval-cell-timeout=60", "-p", "no:randomly", "chapters", *args, plugins=[outputs],
    )  # fmt: skip
    return result, outputs


def test_a_good_chapter_passes_with_the_outputs_of_a_plain_run(pytester):
    draw = "def draw():\n    ### BEGIN SOLUTION\n    return round(random.random(), 6)\n    ### END SOLUTION"
    check = (
        "# Check 99.2\nfirst = round(random.random(), 6)  # the check draws before it calls the stub\n"
        "second = draw()\nassert 0 <= second < 1\nprint(first, second)"
    )
    notebook = chapter(
        ("md", "# 99 · Synthetic"),
        SETUP,
        *exercise(),
        *exercise(draw, check, number="99.2"),
        "print(round(random.random(), 6))  # sees the random state of a top-to-bottom run",
        "try:\n    double(1)\nexcept NotImplementedError:\n    print('student state: double is the stub')",
        "print(sorted(name for name in ('first', 'second') if name in globals()))",
        "BASE * 21",
    )
    result, outputs = run(pytester, notebook)
    result.assert_outcomes(passed=9)  # nbval's items, one per code cell
    result.stdout.no_fnmatch_line("*failed*")
    plain = nbformat.v4.new_notebook(cells=[nbformat.from_dict(cell) for cell in notebook.cells])
    NotebookClient(plain, timeout=60, km=current_env_kernel_manager(), allow_errors=True).execute(
        cleanup_kc=True
    )
    expected = [
        "".join(o.get("text", "") for o in cell.outputs) for cell in plain.cells if cell.cell_type == "code"
    ]
    ran = [outputs.texts[number] for number in range(9)]
    assert ran[:6] == expected[:6]  # setup, both exercises and the random draw after them: identical
    assert ran[2] == "Exercise 99.1 passed\n"
    assert ran[6] == "student state: double is the stub\n"  # the plain run has the solution here
    # after 99.2, the names are the student copy's: its check bound `first` before the stub raised,
    # and `second` only with the solution in place
    assert ran[7] == "['first']\n"
    assert outputs.data[8][0]["data"]["text/plain"] == "42"


def test_a_cell_that_fails_as_written_fails_as_nbval_reports_it(pytester):
    result, outputs = run(pytester, chapter(SETUP, "x = 1\ny = x / 0", "print('after')"))
    result.assert_outcomes(passed=2, failed=1)  # nbval goes on with the next cells
    result.stdout.fnmatch_lines(
        [f"*{NODE}::Cell 1*", "*Cell execution caused an exception*", "*y = x / 0*", "*ZeroDivisionError*"]
    )


def test_nbvals_markers_work_in_a_chapter(pytester):
    notebook = chapter(
        SETUP,
        "# NBVAL_SKIP\nraise SystemExit('never run')",
        ("tags: raises-exception", "1 / 0"),
        "print('after')",
    )
    result, _ = run(pytester, notebook)
    result.assert_outcomes(passed=3, skipped=1)


def test_a_solution_that_fails_its_check_fails_the_check(pytester):
    wrong = SOLUTION.replace("return BASE * x", "return BASE + x + 1")
    result, _ = run(pytester, chapter(SETUP, *exercise(solution=wrong), "print('after')"))
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines([f"*{NODE}::Cell 2*", "*assert double(2) == 4*", "*AssertionError*"])


@pytest.mark.parametrize(
    "check, expected",
    [
        ("# Check 99.1\nassert BASE == 2\n### BEGIN HIDDEN TESTS\nassert double(2) == 4\n### END HIDDEN TESTS",
         "passes on the student copy"),
        ("# Check 99.1\ntry:\n    result = double(2)\nexcept NotImplementedError:\n    result = None\n"
         "assert result + 0 == 4",
         "raised TypeError"),
    ],
    ids=["passes-on-the-stub", "wrong-error-on-the-stub"],
)  # fmt: skip
def test_a_check_that_does_not_fail_on_the_stub_fails(pytester, check, expected):
    result, outputs = run(pytester, chapter(SETUP, *exercise(check=check), "print('after')"))
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(
        [f"*{NODE}::Cell 2 (`# Check 99.1`), the check of exercise 99.1, {expected}*"]
    )
    result.stdout.fnmatch_lines(["*NotImplementedError, NameError, AssertionError*"])
    assert outputs.texts[3] == "after\n"  # the other cells still ran


@pytest.mark.parametrize(
    "solution, check, later, name",
    [
        (
            "### BEGIN SOLUTION\nFACTOR = 2\n### END SOLUTION\n\n\ndef double(x):\n    return FACTOR * x",
            CHECK,
            "print(FACTOR)",
            "FACTOR",
        ),
        (
            SOLUTION,
            CHECK.replace("assert double(2) == 4", "four = double(2)\nassert four == 4"),
            "four",
            "four",
        ),
    ],
    ids=["defined-by-the-solution", "defined-by-the-check"],
)
def test_a_later_cell_that_uses_the_solution_fails(pytester, solution, check, later, name):
    result, _ = run(pytester, chapter(SETUP, *exercise(solution, check), later))
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(
        [
            f"*{NODE}::Cell 3*",
            "*NameError*",
            f"*`{name}` is defined only by exercise 99.1's solution or check*",
        ]
    )


def test_a_later_cell_that_calls_the_solution_meets_the_stub(pytester):
    result, _ = run(pytester, chapter(SETUP, *exercise(), "print(double(21))"))
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(["*this cell calls an exercise's stub*double (99.1, reset to the stub)*"])


def test_a_stub_that_raises_something_else_fails(pytester):
    # the solution markers cut an expression: the student copy's cell is a syntax error
    broken = "value = (\n    ### BEGIN SOLUTION\n    2\n    ### END SOLUTION\n)\n\n\ndef double(x):\n    return value * x"
    result, _ = run(pytester, chapter(SETUP, *exercise(solution=broken)))
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(
        [f"*{NODE}::Cell 1 (`value = (`), the solution of exercise 99.1: its student version*"]
    )
    assert "SyntaxError" in result.stdout.str() or "IndentationError" in result.stdout.str()


def test_the_chapters_cells_are_slow_and_other_notebooks_are_nbvals(pytester):
    chapters = pytester.mkdir("chapters")
    nbformat.write(chapter("print('notes')"), chapters / "notes.ipynb")  # not NN_topic: nbval's own items
    result, _ = run(pytester, chapter(SETUP, *exercise()), "-m", "not slow")
    result.assert_outcomes(passed=1, deselected=3)


BFLOAT16_CELLS = (
    "import torch\n\nx = torch.ones(2, 2)",
    "with torch.autocast('cpu', dtype=torch.bfloat16):\n    print((x @ x).dtype)",
    "with torch.autocast(device_type='cpu'):  # the CPU's default autocast dtype is bfloat16\n    print((x @ x).dtype)",
    "with torch.autocast('cpu', dtype=torch.float16):\n    print((x @ x).dtype)",
    "with torch.autocast('cpu', dtype=torch.bfloat16, enabled=False):\n    print((x @ x).dtype)",
)


@pytest.mark.parametrize("native", [False, True], ids=["cpu-without-bfloat16", "cpu-with-bfloat16"])
def test_on_a_cpu_without_bfloat16_a_cell_that_asks_for_it_fails(pytester, monkeypatch, native):
    """Where the CPU has no bfloat16 instructions (bfloat16 ten to thirty times slower than float32 there), the
    runner makes bfloat16 autocast on the CPU an error before the first cell; every other autocast is left alone."""
    import tools.chapter_run as chapter_run

    monkeypatch.setattr(chapter_run, "native_cpu_bf16", lambda: native)
    result, outputs = run(pytester, chapter(*BFLOAT16_CELLS))
    if native:
        result.assert_outcomes(passed=5)
        assert [outputs.texts[n] for n in range(1, 5)] == ["torch.bfloat16\n"] * 2 + [
            "torch.float16\n",
            "torch.float32\n",
        ]
    else:
        result.assert_outcomes(passed=3, failed=2)
        result.stdout.fnmatch_lines(["*bfloat16 autocast on a CPU without bfloat16 instructions*"])
        result.stdout.fnmatch_lines(["*this CPU has no bfloat16 instructions*"])
        assert [outputs.texts[n] for n in (3, 4)] == ["torch.float16\n", "torch.float32\n"]


def child_kernels() -> list[int]:
    """Process ids of the IPython kernels this process started and that still run."""
    kernels = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == os.getpid() and b"ipykernel" in cmdline:
            kernels.append(int(stat.parent.name))
    return kernels


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the kernels through /proc")
def test_the_runner_shuts_its_kernel_down(pytester):
    before = set(child_kernels())
    run(pytester, chapter(SETUP, *exercise()))
    run(pytester, chapter(SETUP, "1 / 0"))  # a failing run too
    assert set(child_kernels()) <= before


def test_widget_comm_traffic_does_not_hang_a_cell(pytester):
    """ipywidgets' comm messages between a cell's output and its reply once made a waiting client miss the reply
    and sit out the cell timeout (nbclient #312, an asyncio client). nbval's client polls its sockets blocking,
    level-triggered; this keeps it proved: three cells of heavy comm traffic, each under a 20 s timeout."""
    traffic = (
        "sliders = [widgets.IntSlider(value=0, max=500) for _ in range(100)]\n"
        "for value in range(20):\n    for slider in sliders:\n        slider.value = value\n"
        "display(widgets.interactive(lambda t: print(t), t=sliders[0]))"
    )
    notebook = chapter(
        "import ipywidgets as widgets\nfrom IPython.display import display", traffic, traffic, traffic
    )
    chapters = pytester.path / "chapters"
    chapters.mkdir()
    nbformat.write(notebook, chapters / "99_synthetic.ipynb")
    result = pytester.runpytest_inprocess(
        "-p", "tools.chapter_run", "-p", "no:cacheprovider", "--nbval-lax", "--nbval-current-env",
        "--nbval-cell-timeout=20", "chapters",
    )  # fmt: skip
    result.assert_outcomes(passed=4)


def test_channels_poll_in_short_waits_and_keep_the_callers_timeout():
    """The book's executions (tools/execute_chapters.py, nbclient's asyncio client) poll in short waits: a poll that
    comes back empty is repeated (nbclient #312); the caller's timeout still ends the wait."""
    import asyncio
    from queue import Empty

    class Channel:
        def __init__(self, empty_polls):
            self.empty_polls, self.waits = empty_polls, []

        async def get_msg(self, timeout=None):
            self.waits.append(timeout)
            if len(self.waits) <= self.empty_polls:
                raise Empty
            return {"msg_type": "execute_reply"}

    patient = Channel(empty_polls=3)
    poll_in_short_waits(patient, wait=0.01)
    assert asyncio.run(patient.get_msg(timeout=None)) == {"msg_type": "execute_reply"}
    assert patient.waits == [0.01] * 4  # never one unbounded wait
    hopeless = Channel(empty_polls=10**9)
    poll_in_short_waits(hopeless, wait=0.01)
    with pytest.raises(Empty):
        asyncio.run(hopeless.get_msg(timeout=0.05))
    assert all(wait <= 0.01 for wait in hopeless.waits) and len(hopeless.waits) >= 2


def cached_notebooks(cache: Path) -> list[tuple[str, nbformat.NotebookNode]]:
    """(source file name, notebook) for each record of a jupyter-cache folder (read in a subprocess, as written)."""
    import json
    import subprocess
    import sys

    script = (
        "import json, sys\nfrom pathlib import Path\nfrom jupyter_cache import get_cache\n"
        "cache = get_cache(sys.argv[1])\n"
        "print(json.dumps([[Path(r.uri).name, cache.get_cache_bundle(r.pk).nb] for r in cache.list_cache_records()]))"
    )
    if not cache.exists():
        return []
    out = subprocess.run(
        [sys.executable, "-c", script, str(cache)], capture_output=True, text=True, check=True
    )
    return [(name, nbformat.from_dict(notebook)) for name, notebook in json.loads(out.stdout)]


@pytest.mark.parametrize("good", [True, False], ids=["passing", "failing"])
def test_a_passing_chapter_fills_the_books_execution_cache(pytester, monkeypatch, good):
    """tools/book_cache.py: the outputs of the test run's own execution, keyed as Jupyter Book keys the .py source."""
    import jupytext

    cache = pytester.path / "cache"
    monkeypatch.setenv("DDPM_BOOK_CACHE", str(cache))
    notebook = chapter(("md", "# 99 · Synthetic"), SETUP, *exercise(), "BASE * 21" if good else "BASE / 0")
    (pytester.path / "chapters").mkdir()
    nbformat.write(notebook, pytester.path / "chapters" / "99_synthetic.ipynb")
    jupytext.write(notebook, pytester.path / "chapters" / "99_synthetic.py", fmt="py:percent")
    # in a subprocess: an in-process run imports jupyter_cache's sqlalchemy, whose removal afterwards (pytester puts
    # sys.modules back) breaks the next in-process pytest run's plugin loading
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[1]))
    result = pytester.runpytest_subprocess(
        "-p", "tools.chapter_run", "-p", "tools.book_cache", "-p", "no:cacheprovider", "--nbval-lax",
        "--nbval-current-env", "chapters",
    )  # fmt: skip
    stored = cached_notebooks(cache)
    if not good:
        result.stdout.fnmatch_lines(["*book cache*not stored: 99_synthetic (its test failed)*"])
        assert stored == []
        return
    result.stdout.fnmatch_lines(["*book cache*stored 99_synthetic*"])
    assert [name for name, _ in stored] == ["99_synthetic.py"]
    code = [cell for cell in stored[0][1].cells if cell.cell_type == "code"]
    assert [cell.execution_count for cell in code] == [1, 2, 3, 4]
    assert code[2].outputs[0]["text"] == "Exercise 99.1 passed\n"
    assert code[3].outputs[0]["data"]["text/plain"] == "42"
    assert all(not cell.outputs for cell in code[:2])  # the student stubs left nothing behind
