"""pytest plugin: every chapter executed once, as the instructor copy and, at each exercise, as the
student copy.

``pytest`` collects ``chapters/NN_topic.ipynb`` as one test item per chapter (marked ``slow``). The
item runs the chapter's cells in order in one fresh kernel of the current Python environment, with
the chapter's folder as working directory, and proves three things in that single run:

1. every cell as written (solutions and hidden checks in place) runs without error, as nbval
   ``--nbval-lax`` did;
2. every exercise check fails without its solution: the student version of the solution cell
   (nbgrader's ``ClearSolutions``: the solution becomes ``raise NotImplementedError()``), then the
   student version of the check cell (``ClearHiddenTests``: hidden checks removed) must raise
   ``NotImplementedError``, ``NameError`` or ``AssertionError``; the stub itself may only raise
   ``NotImplementedError``;
3. nothing after an exercise depends on its solution: once the solution and the full check have run
   and passed, the global names they bound are put back as the student copy has them (names only
   the solution or the check defined are deleted, names the stub defines are the stub's again), so
   a later cell that uses the solution fails, naming the exercise.

At each exercise (``ddpm_lib.course.exercises``: text cell, solution cell, check cell)::

    save RNG states (torch, numpy, random, and every torch/numpy/random generator bound to a
        global name) and the global names
    run the student solution + student check        (store_history=False: no execution count)
    put back the names and the RNG states saved above, so the real solution sees exactly what a
        top-to-bottom run gives it
    run the real solution cell and the real check   (must pass)
    put the global names back to the student state (as they were after the student check)

The outputs of the real cells are the chapter's outputs, with the execution counts of a plain
top-to-bottom run; ``tools/book_cache.py`` stores them for the book. The student cells run in a
scratch cell whose outputs are dropped. What the protocol does not undo: objects the student cells
or the solution changed in place (as opposed to names they bound), warnings shown only once, caches;
and later cells see the random state the real solution left, not the stub's.

A failure names the chapter, the cell (its 0-based index, as JupyterLab numbers it) and the cell's
first line, and shows the traceback. The first failing cell of the chapter ends the run; an
exercise whose check does not fail on the stub is reported and the run goes on.

On a CPU without bfloat16 instructions (``ddpm_lib.precision.native_bf16``: no AVX-512 BF16 or AMX, e.g. an
AVX2-only x86), bfloat16 autocast runs on generic kernels, ten to fifteen times slower than float32; chapter 07
alone then overran the cell timeout. There the runner makes bfloat16 autocast on the CPU a no-op in the
chapter's kernel before its first cell (:data:`FLOAT32_AUTOCAST`), so the chapters' bfloat16 cells compute in
float32, and the terminal summary says so. What such a run proves is unchanged (every cell runs, every check
fails on its stub); its numbers are float32 ones. The chapters' stored full-profile outputs
(``tools/execute_chapters.py``) are made without this, on a CPU with bfloat16 instructions.

With ``--nbval`` or ``--nbval-lax`` on the command line this plugin collects nothing and nbval runs
the notebooks its own way (cell by cell, no student copy).
"""

from __future__ import annotations

import copy
import json
import re
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
import pytest

#: the notebooks this plugin runs
CHAPTER_FILE = re.compile(r"^\d\d_\w+\.ipynb$")
#: the errors a check may raise on the student copy (instructors.md, rule 3)
STUDENT_ERRORS = ("NotImplementedError", "NameError", "AssertionError")
CELL_TIMEOUT = 2000  # seconds per cell, nbval's default
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
RESULT_TAG = "__chapter_run__ "
PRINTED_LINES = 20  # of a failing cell's output, shown above its traceback

#: Runs in the kernel before the first cell where the CPU has no bfloat16 instructions: bfloat16 autocast on the
#: CPU becomes a no-op (float32), as a learner on such a CPU gets from ``ddpm_lib.precision.use_native_precision``.
FLOAT32_AUTOCAST = "__import__('ddpm_lib.precision').precision.disable_cpu_bf16_autocast()"

#: Runs once in the kernel: a module ``_chapter_run`` (in ``sys.modules``, not in the user's
#: namespace) with the snapshot/restore functions the protocol calls.
KERNEL_HELPERS = (
    r'''
import json
import random
import re
import sys

from IPython import get_ipython

_IPYTHON_NAMES = re.compile(r"^(_+|_i+|_i?\d+|_[iod]h|In|Out|exit|quit|get_ipython|__\w+__)$")
_saved = {}


def _user_names():
    shell = get_ipython()
    hidden = shell.user_ns_hidden
    return [name for name in shell.user_ns if name not in hidden and not _IPYTHON_NAMES.match(name)]


def _rng_state(namespace):
    state = {"random": random.getstate()}
    numpy = sys.modules.get("numpy")
    torch = sys.modules.get("torch")
    if numpy is not None:
        state["numpy"] = numpy.random.get_state()
    if torch is not None:
        state["torch"] = torch.get_rng_state()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
    generators = []
    for value in namespace.values():
        if torch is not None and isinstance(value, torch.Generator):
            generators.append((value, value.get_state()))
        elif numpy is not None and isinstance(value, numpy.random.Generator):
            generators.append((value, value.bit_generator.state))
        elif numpy is not None and isinstance(value, numpy.random.RandomState):
            generators.append((value, value.get_state()))
        elif isinstance(value, random.Random):
            generators.append((value, value.getstate()))
    state["generators"] = generators
    return state


def _set_rng_state(state):
    random.setstate(state["random"])
    if "numpy" in state:
        sys.modules["numpy"].random.set_state(state["numpy"])
    if "torch" in state:
        torch = sys.modules["torch"]
        torch.set_rng_state(state["torch"])
        if "cuda" in state:
            torch.cuda.set_rng_state_all(state["cuda"])
    numpy = sys.modules.get("numpy")
    for generator, generator_state in state["generators"]:
        if numpy is not None and isinstance(generator, numpy.random.Generator):
            generator.bit_generator.state = generator_state
        elif numpy is not None and isinstance(generator, numpy.random.RandomState):
            generator.set_state(generator_state)
        elif isinstance(generator, random.Random):
            generator.setstate(generator_state)
        else:
            generator.set_state(generator_state)


def save(key, rng=True):
    namespace = get_ipython().user_ns
    names = {name: namespace[name] for name in _user_names()}
    _saved[key] = (names, _rng_state(names) if rng else None)


def restore(key, rng=True):
    """Put the global names (and the RNG states) back as saved; report what changed."""
    namespace = get_ipython().user_ns
    names, state = _saved[key]
    removed = [name for name in _user_names() if name not in names]
    for name in removed:
        del namespace[name]
    reset = [name for name, value in names.items() if name not in namespace or namespace[name] is not value]
    namespace.update({name: names[name] for name in reset})
    if rng and state is not None:
        _set_rng_state(state)
    print("'''
    + RESULT_TAG
    + r"""" + json.dumps({"removed": removed, "reset": reset}))


def forget():
    _saved.clear()
"""
)


class ChapterFailed(Exception):
    """The chapter run found problems; ``args[0]`` is the list of messages."""


@dataclass
class ChapterRun:
    """What one execution of a chapter produced."""

    notebook: nbformat.NotebookNode  # the chapter with the outputs of its real cells
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0  # the real cells (what a top-to-bottom run costs)
    student_seconds: float = 0.0  # the student stubs and checks
    complete: bool = False  # every cell ran
    float32_autocast: bool = False  # bfloat16 autocast on the CPU ran in float32 (FLOAT32_AUTOCAST)


def first_line(source: str) -> str:
    line = next((line.strip() for line in source.splitlines() if line.strip()), "")
    return line if len(line) <= 72 else line[:69] + "..."


def current_env_kernel_manager():
    """An async kernel manager for an IPython kernel of this very interpreter (nbval's
    ``--nbval-current-env``), whatever kernel the notebook's metadata names."""
    import ipykernel.kernelspec
    from jupyter_client import AsyncKernelManager
    from jupyter_client.kernelspec import KernelSpecManager

    class CurrentEnv(KernelSpecManager):
        def get_kernel_spec(self, kernel_name):
            return self.kernel_spec_class(
                resource_dir=ipykernel.kernelspec.RESOURCES, **ipykernel.kernelspec.get_kernel_dict()
            )

    return AsyncKernelManager(kernel_name="python3", kernel_spec_manager=CurrentEnv())


def poll_in_short_waits(channel, wait: float = 1.0) -> None:
    """Make ``channel.get_msg`` wait for a message in steps of ``wait`` seconds.

    Waiting on a kernel channel in one long poll can miss a message that arrived while ipywidgets' comm
    traffic was being read, and then waits for the whole cell timeout with the kernel idle (nbclient
    issue #312; seen here on chapter 03's slider, about one run in three under load). A poll that ends
    looks at the socket again, so short polls pick such a message up within ``wait`` seconds; the
    caller's overall timeout is unchanged."""
    from queue import Empty

    original = channel.get_msg

    async def get_msg(timeout: float | None = None):
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            step = wait if deadline is None else min(wait, max(0.0, deadline - time.monotonic()))
            try:
                return await original(timeout=step)
            except Empty:
                if deadline is not None and time.monotonic() >= deadline:
                    raise

    channel.get_msg = get_msg


def native_cpu_bf16() -> bool:
    """Whether this machine's CPU computes in bfloat16 natively (the package's own test)."""
    from ddpm_lib.precision import native_bf16

    return native_bf16("cpu")


def execute_chapter(
    notebook: nbformat.NotebookNode,
    label: str,
    cwd: Path,
    timeout: int = CELL_TIMEOUT,
    float32_autocast: bool | None = None,
) -> ChapterRun:
    """Run ``notebook`` once as described in the module docstring; ``label`` names it in messages.
    ``float32_autocast`` (default: where the CPU has no bfloat16 instructions) runs :data:`FLOAT32_AUTOCAST`
    first."""
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    from ddpm_lib.course import exercises, student_notebook

    if float32_autocast is None:
        float32_autocast = not native_cpu_bf16()
    run = ChapterRun(copy.deepcopy(notebook), float32_autocast=float32_autocast)
    cells = run.notebook.cells
    try:
        found = exercises(notebook)
        student = student_notebook(notebook).cells if found else cells
    except (ValueError, SystemExit) as error:
        run.failures.append(f"{label}: the exercises are malformed: {error}")
        return run
    by_solution = {exercise.solution_cell: exercise for exercise in found}
    checks = {exercise.check_cell for exercise in found}

    scratch = nbformat.v4.new_code_cell("")
    # the client's notebook: the real cells (the same objects, which it fills) plus one scratch cell
    work = nbformat.v4.new_notebook(metadata=run.notebook.metadata, cells=[*cells, scratch])
    scratch_index = len(cells)
    client = NotebookClient(
        work, timeout=timeout, km=current_env_kernel_manager(), resources={"metadata": {"path": str(cwd)}}
    )
    undone: dict[str, tuple[str, str]] = {}  # global name -> (exercise, "removed" | "reset to the stub")

    def where(index: int) -> str:
        return f"{label}, cell {index} (`{first_line(cells[index].source)}`)"

    def error_text(error: Exception, cell: nbformat.NotebookNode) -> str:
        """The kernel's traceback (and the last lines the cell printed), without colour codes."""
        printed = "".join(output.get("text", "") for output in cell.outputs if output.output_type == "stream")
        tracebacks = ["\n".join(output.traceback) for output in cell.outputs if output.output_type == "error"]
        text = "\n".join(tracebacks) or getattr(error, "traceback", None) or str(error)
        if printed.strip():
            tail = printed.rstrip().splitlines()[-PRINTED_LINES:]
            text = (
                f"----- the cell printed (last {len(tail)} lines) -----\n"
                + "\n".join(tail)
                + "\n-----\n"
                + text
            )
        return ANSI.sub("", text).rstrip()

    def real(index: int, what: str) -> bool:
        """Run cell ``index`` as written; record a failure and return False when it raises."""
        started = time.perf_counter()
        try:
            client.execute_cell(cells[index], index)
        except CellExecutionError as error:
            run.failures.append(
                f"{where(index)}{what} raised {error.ename}:\n{error_text(error, cells[index])}{hint(error)}"
            )
            return False
        except (CellTimeoutError, DeadKernelError) as error:
            run.failures.append(f"{where(index)}{what}: {type(error).__name__}: {error}")
            return False
        finally:
            run.seconds += time.perf_counter() - started
        return True

    def hint(error: CellExecutionError) -> str:
        if not undone:
            return ""
        name = re.search(r"name '(\w+)' is not defined", error.evalue or "")
        if error.ename == "NameError" and name and name.group(1) in undone:
            exercise, how = undone[name.group(1)]
            return (
                f"\n-> `{name.group(1)}` is defined only by exercise {exercise}'s solution or check: "
                "the student copy fails here. Cells after an exercise must not depend on it."
            )
        names = ", ".join(f"{name} ({exercise}, {how})" for name, (exercise, how) in undone.items())
        if error.ename == "NotImplementedError" and "YOUR CODE HERE" in (error.traceback or ""):
            return (
                f"\n-> The student copy fails here: this cell calls an exercise's stub (names undone after "
                f"each exercise: {names}). Cells after an exercise must not depend on it."
            )
        return (
            "\n-> This cell ran in the student state (after each exercise the names its solution and "
            f"check bound were undone: {names}); if it passes with the solutions in place, it depends on one."
        )

    def scratch_run(source: str) -> CellExecutionError | None | str:
        """Run ``source`` in the scratch cell without an execution count; return its error, if any
        (a string for a timeout or a dead kernel)."""
        scratch.source, scratch.outputs = source, []
        started = time.perf_counter()
        try:
            client.execute_cell(scratch, scratch_index, store_history=False)
        except CellExecutionError as error:
            return error
        except (CellTimeoutError, DeadKernelError) as error:
            return f"{type(error).__name__}: {error}"
        finally:
            run.student_seconds += time.perf_counter() - started
        return None

    def helper(call: str) -> dict:
        error = scratch_run(f"__import__('_chapter_run').{call}")
        if error is not None:
            raise RuntimeError(f"{label}: the runner's own kernel helper failed: {error}")
        for output in scratch.outputs:
            for line in output.get("text", "").splitlines() if output.get("name") == "stdout" else []:
                if line.startswith(RESULT_TAG):
                    return json.loads(line[len(RESULT_TAG) :])
        return {}

    def exercise_run(index: int) -> bool:
        """Exercise whose solution is cell ``index``: student stub and check, then the real ones."""
        exercise = by_solution[index]
        name, check = f"exercise {exercise.number}", exercise.check_cell
        helper("save('before')")
        error = scratch_run(student[index].source)
        if isinstance(error, str) or (error is not None and error.ename != "NotImplementedError"):
            details = error if isinstance(error, str) else f"{error.ename}:\n{error_text(error, scratch)}"
            run.failures.append(
                f"{where(index)}, the solution of {name}: its student version (solution replaced by "
                f"the nbgrader stub) raised {details}\nOnly NotImplementedError may come from the stub."
            )
        error = scratch_run(student[check].source)
        if error is None:
            run.failures.append(
                f"{where(check)}, the check of {name}, passes on the student copy (solution replaced by "
                "`raise NotImplementedError()`, hidden tests removed): it must fail there with "
                f"{', '.join(STUDENT_ERRORS)}. The check as the student copy has it:\n"
                + textwrap.indent(student[check].source, "    ")
            )
        elif isinstance(error, str) or error.ename not in STUDENT_ERRORS:
            details = error if isinstance(error, str) else f"{error.ename}:\n{error_text(error, scratch)}"
            run.failures.append(
                f"{where(check)}, the check of {name}, raised {details}\non the student copy; it must fail "
                f"there with {', '.join(STUDENT_ERRORS)}."
            )
        helper("save('student', rng=False)")
        helper("restore('before')")
        if not real(index, f", the solution of {name},"):
            return False
        if not real(check, f", the check of {name}, fails with the solution in place: it"):
            return False
        changed = helper("restore('student', rng=False)")
        undone.update({n: (exercise.number, "removed") for n in changed.get("removed", [])})
        undone.update({n: (exercise.number, "reset to the stub") for n in changed.get("reset", [])})
        helper("forget()")
        return True

    try:
        with client.setup_kernel(cleanup_kc=True):  # shut the kernel down (we own its manager)
            poll_in_short_waits(client.kc.shell_channel)
            poll_in_short_waits(client.kc.iopub_channel)
            helpers = repr(KERNEL_HELPERS)
            error = scratch_run(
                f"exec({helpers}, __import__('sys').modules.setdefault('_chapter_run', "
                "__import__('types').ModuleType('_chapter_run')).__dict__)"
            )
            if error is not None:
                raise RuntimeError(f"{label}: the runner's kernel helpers failed to load: {error}")
            if float32_autocast and (error := scratch_run(FLOAT32_AUTOCAST)) is not None:
                raise RuntimeError(f"{label}: the runner's float32 autocast failed to load: {error}")
            for index, cell in enumerate(cells):
                if cell.cell_type != "code" or index in checks:
                    continue
                ok = exercise_run(index) if index in by_solution else real(index, "")
                if not ok:
                    break
            else:
                run.complete = True
    except DeadKernelError as error:
        run.failures.append(f"{label}: the kernel died: {error}")
        run.complete = False
    return run


def pytest_configure(config: pytest.Config) -> None:
    if not any(line.startswith("slow:") for line in config.getini("markers")):  # pyproject.toml has it
        config.addinivalue_line("markers", "slow: chapter executions and other tests over ~3 s")


def pytest_collect_file(file_path: Path, parent: pytest.Collector):
    options = parent.config.option
    if getattr(options, "nbval", False) or getattr(options, "nbval_lax", False):
        return None  # nbval runs the notebooks instead
    if file_path.suffix == ".ipynb" and CHAPTER_FILE.match(file_path.name):
        return ChapterFile.from_parent(parent, path=file_path)
    return None


class ChapterFile(pytest.File):
    def collect(self):
        yield ChapterItem.from_parent(self, name="run")


class ChapterItem(pytest.Item):
    """One chapter: every cell as written, each exercise also on its stub."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_marker(pytest.mark.slow)
        self.chapter_run: ChapterRun | None = None

    def label(self) -> str:
        try:
            return self.path.relative_to(self.config.rootpath).as_posix()
        except ValueError:
            return self.path.name

    def runtest(self) -> None:
        notebook = nbformat.read(self.path, as_version=4)
        self.chapter_run = execute_chapter(notebook, self.label(), self.path.parent)
        run = self.chapter_run
        self.user_properties += [
            ("seconds", round(run.seconds, 1)),
            ("student_seconds", round(run.student_seconds, 1)),
            ("float32_autocast", run.float32_autocast),
        ]
        if run.failures:
            raise ChapterFailed(run.failures)

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, ChapterFailed):
            failures = excinfo.value.args[0]
            return f"\n\n{'-' * 70}\n".join(failures)
        return super().repr_failure(excinfo, style)

    def reportinfo(self):
        return self.path, None, f"{self.label()}: every cell, each exercise also on its stub"


def pytest_terminal_summary(terminalreporter) -> None:
    runs = [
        dict(report.user_properties)
        for kind in ("passed", "failed")
        for report in terminalreporter.getreports(kind)
        if report.when == "call" and "student_seconds" in dict(report.user_properties)
    ]
    if runs:
        terminalreporter.write_line(
            f"chapter runs: {len(runs)} chapter(s), {sum(run['seconds'] for run in runs):.0f} s in their cells, "
            f"{sum(run['student_seconds'] for run in runs):.0f} s in the student stubs and checks"
        )
    if any(run.get("float32_autocast") for run in runs):
        terminalreporter.write_line(
            "chapter runs: this CPU has no bfloat16 instructions, so the chapters' bfloat16 autocast ran in "
            "float32 (tools/chapter_run.py, FLOAT32_AUTOCAST)"
        )
