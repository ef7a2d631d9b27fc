"""The chapter runner (tools/chapter_run.py) on tiny synthetic chapters: each guarantee it gives can fail.

1. every cell as written runs: a solution that does not satisfy its check fails the run;
2. every check fails on the student copy: a check that passes on the stub (or fails with another
   error than NotImplementedError / NameError / AssertionError) fails the run;
3. nothing after an exercise depends on its solution: a later cell that uses a name only the
   solution (or the check) defines fails the run, naming the exercise.

And a passing chapter gives the outputs, execution counts and random numbers of a plain top-to-bottom
run, while its later cells see the student copy's stub. Each test starts one small kernel (without torch, but for
the tests of the float32 autocast on a CPU without bfloat16).
"""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tools.chapter_run import ChapterRun, current_env_kernel_manager, execute_chapter, poll_in_short_waits

pytest_plugins = ["pytester"]

SOLUTION_TAGS = {
    "tags": ["hide-input"],
    "mystnb": {"code_prompt_show": "Show solution", "code_prompt_hide": "Hide solution"},
}
LABEL = "chapters/99_synthetic.ipynb"

SETUP = "import random\n\nrandom.seed(0)\nBASE = 2"
SOLUTION = "def double(x):\n    ### BEGIN SOLUTION\n    return BASE * x\n    ### END SOLUTION"
CHECK = (
    "# Check 99.1\nassert double(2) == 4\n### BEGIN HIDDEN TESTS\nassert double(0) == 0\n"
    "### END HIDDEN TESTS\nprint('Exercise 99.1 passed')"
)


def chapter(*cells: str | tuple[str, str]) -> nbformat.NotebookNode:
    """A notebook from cells: a string is a code cell, ("md", text) a Markdown cell, ("solution",
    code) a solution cell (tagged as the course tags them)."""
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    for cell in cells:
        if isinstance(cell, str):
            notebook.cells.append(nbformat.v4.new_code_cell(cell))
        elif cell[0] == "md":
            notebook.cells.append(nbformat.v4.new_markdown_cell(cell[1]))
        else:
            notebook.cells.append(nbformat.v4.new_code_cell(cell[1], metadata=SOLUTION_TAGS))
    return notebook


def box(number: str = "99.1", title: str = "Double") -> tuple[str, str]:
    return ("md", f"## Exercises\n\n:::{{exercise}} {number} · ★☆☆ · {title}\n:nonumber:\n\nDo it.\n:::")


def exercise(solution: str = SOLUTION, check: str = CHECK, number: str = "99.1") -> list:
    return [box(number), ("solution", solution), check]


def run(notebook: nbformat.NotebookNode, tmp_path) -> ChapterRun:
    return execute_chapter(notebook, LABEL, tmp_path, timeout=60, float32_autocast=False)


def only_failure(result: ChapterRun) -> str:
    assert len(result.failures) == 1, result.failures
    return result.failures[0]


def texts(notebook: nbformat.NotebookNode) -> list[str]:
    return [
        "".join(output.get("text", "") for output in cell.outputs)
        for cell in notebook.cells
        if cell.cell_type == "code"
    ]


def test_a_good_chapter_passes_with_the_outputs_of_a_plain_run(tmp_path):
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
    result = run(notebook, tmp_path)
    assert result.failures == [] and result.complete
    plain = nbformat.v4.new_notebook(cells=[nbformat.from_dict(cell) for cell in notebook.cells])
    client = NotebookClient(plain, timeout=60, km=current_env_kernel_manager(), allow_errors=True)
    client.execute(cleanup_kc=True)
    ran, expected = texts(result.notebook), texts(plain)
    assert ran[:6] == expected[:6]  # setup, both exercises and the random draw after them: identical
    assert ran[2] == "Exercise 99.1 passed\n"
    assert ran[6] == "student state: double is the stub\n"  # the plain run has the solution here
    # after 99.2, the names are the student copy's: its check bound `first` before the stub raised,
    # and `second` only with the solution in place
    assert ran[7] == "['first']\n"
    assert [cell.execution_count for cell in result.notebook.cells if cell.cell_type == "code"] == list(
        range(1, 10)
    )
    assert result.notebook.cells[-1].outputs[0]["data"]["text/plain"] == "42"


@pytest.mark.parametrize("float32_autocast", [False, True])
def test_on_a_cpu_without_bfloat16_the_chapters_autocast_computes_in_float32(tmp_path, float32_autocast):
    """Where the CPU has no bfloat16 instructions (bfloat16 ten times slower than float32 there), the runner makes
    bfloat16 autocast on the CPU a no-op before the first cell; every other autocast is left alone."""
    notebook = chapter(
        "import torch\n\nx = torch.ones(2, 2)",
        "with torch.autocast('cpu', dtype=torch.bfloat16):\n    print((x @ x).dtype)",
        "with torch.autocast(device_type='cpu'):  # the CPU's default autocast dtype is bfloat16\n"
        "    print((x @ x).dtype)",
        "with torch.autocast('cpu', dtype=torch.float16):\n    print((x @ x).dtype)",
        "with torch.autocast('cpu', dtype=torch.bfloat16, enabled=False):\n    print((x @ x).dtype)",
    )
    result = execute_chapter(notebook, LABEL, tmp_path, timeout=120, float32_autocast=float32_autocast)
    assert result.failures == [] and result.complete and result.float32_autocast is float32_autocast
    bf16 = "torch.float32\n" if float32_autocast else "torch.bfloat16\n"
    assert texts(result.notebook)[1:] == [bf16, bf16, "torch.float16\n", "torch.float32\n"]
    assert result.notebook.cells[1].execution_count == 2  # the patch ran outside the chapter's own cells


def test_the_runner_decides_float32_autocast_by_the_packages_test(tmp_path, monkeypatch):
    import tools.chapter_run as chapter_run

    for native in (False, True):
        monkeypatch.setattr(chapter_run, "native_cpu_bf16", lambda native=native: native)
        assert execute_chapter(chapter("1 + 1"), LABEL, tmp_path, timeout=120).float32_autocast is not native


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
def test_the_runner_shuts_its_kernel_down(tmp_path):
    before = set(child_kernels())
    run(chapter(SETUP, *exercise()), tmp_path)
    run(chapter(SETUP, "1 / 0"), tmp_path)  # a failing run too
    assert set(child_kernels()) <= before


def test_a_solution_that_fails_its_check_fails_the_run(tmp_path):
    wrong = SOLUTION.replace("return BASE * x", "return BASE + x + 1")
    result = run(chapter(SETUP, *exercise(solution=wrong), "print('after')"), tmp_path)
    message = only_failure(result)
    assert message.startswith(f"{LABEL}, cell 3 (`# Check 99.1`), the check of exercise 99.1, fails with")
    assert "AssertionError" in message and "assert double(2) == 4" in message  # the traceback
    assert not result.complete


def test_a_cell_that_fails_as_written_fails_the_run_naming_it(tmp_path):
    result = run(chapter(SETUP, "x = 1\ny = x / 0", "print('never')"), tmp_path)
    message = only_failure(result)
    assert message.startswith(f"{LABEL}, cell 1 (`x = 1`) raised ZeroDivisionError:")
    assert "y = x / 0" in message
    assert result.notebook.cells[2].outputs == []  # the run stops at the first failing cell


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
def test_a_check_that_does_not_fail_on_the_stub_fails_the_run(tmp_path, check, expected):
    result = run(chapter(SETUP, *exercise(check=check), "print('after')"), tmp_path)
    message = only_failure(result)
    assert message.startswith(f"{LABEL}, cell 3 (`# Check 99.1`), the check of exercise 99.1, {expected}")
    assert "NotImplementedError, NameError, AssertionError" in message
    assert result.complete  # the run goes on: the other cells still ran
    assert texts(result.notebook)[-1] == "after\n"


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
def test_a_later_cell_that_uses_the_solution_fails_the_run(tmp_path, solution, check, later, name):
    result = run(chapter(SETUP, *exercise(solution, check), later), tmp_path)
    message = only_failure(result)
    assert message.startswith(f"{LABEL}, cell 4 (`{later}`) raised NameError")
    assert f"`{name}` is defined only by exercise 99.1's solution or check" in message


def test_a_later_cell_that_calls_the_solution_meets_the_stub(tmp_path):
    result = run(chapter(SETUP, *exercise(), "print(double(21))"), tmp_path)
    message = only_failure(result)
    assert message.startswith(f"{LABEL}, cell 4 (`print(double(21))`) raised NotImplementedError")
    assert "this cell calls an exercise's stub" in message and "double (99.1, reset to the stub)" in message


def test_a_stub_that_raises_something_else_fails_the_run(tmp_path):
    # the solution markers cut an expression: the student copy's cell is a syntax error
    broken = "value = (\n    ### BEGIN SOLUTION\n    2\n    ### END SOLUTION\n)\n\n\ndef double(x):\n    return value * x"
    result = run(chapter(SETUP, *exercise(solution=broken)), tmp_path)
    message = only_failure(result)
    assert message.startswith(
        f"{LABEL}, cell 2 (`value = (`), the solution of exercise 99.1: its student version"
    )
    assert "SyntaxError" in message or "IndentationError" in message


@pytest.mark.slow  # two in-process pytest sessions: ~5 s
def test_pytest_collects_a_chapter_as_one_slow_item_and_reports_the_cell(pytester):
    chapters = pytester.mkdir("chapters")
    wrong = SOLUTION.replace("return BASE * x", "return BASE + x + 1")
    nbformat.write(chapter(SETUP, *exercise(solution=wrong)), chapters / "99_synthetic.ipynb")
    nbformat.write(chapter(SETUP), chapters / "notes.ipynb")  # not NN_topic: not collected
    deselected = pytester.runpytest_inprocess("-p", "tools.chapter_run", "-m", "not slow", "chapters")
    deselected.assert_outcomes(deselected=1)
    result = pytester.runpytest_inprocess("-p", "tools.chapter_run", "chapters")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*chapters/99_synthetic.ipynb, cell 3 (`# Check 99.1`), the check of exercise 99.1, fails with*",
            "*assert double(2) == 4*",
        ]
    )


def test_channels_poll_in_short_waits_and_keep_the_callers_timeout():
    """A poll that comes back empty is repeated (nbclient #312); the caller's timeout still ends the wait."""
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
