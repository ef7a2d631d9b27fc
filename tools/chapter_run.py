"""pytest plugin: nbval runs the chapters, with the course's exercise protocol on top.

``python -m pytest`` runs every ``chapters/NN_topic.ipynb`` through nbval (``pyproject.toml`` passes
``--nbval-lax --nbval-current-env``): nbval collects the notebook, starts one kernel of this Python environment in
the chapter's folder, runs every code cell as a test item of its own (``chapters/05_training.ipynb::Cell 7``) and
reports a failing cell with its traceback; its markers work in the chapters (``# NBVAL_SKIP``, the
``raises-exception`` tag). This is the same command a learner or an instructor types to check edited notebooks:
``python -m pytest --nbval-lax chapters/05_training.ipynb``.

This plugin replaces nbval's notebook collector for the chapters by a subclass (:class:`ChapterFile`, cells
:class:`ChapterCell`) that adds what nbval does not know — the exercises. In the same single run it proves:

1. every cell as written (solutions and hidden checks in place) runs without error (nbval);
2. every exercise check fails without its solution: before the solution cell runs, the student version of the
   solution (nbgrader's ``ClearSolutions``: the solution becomes ``raise NotImplementedError()``) and then the
   student version of the check (``ClearHiddenTests``: hidden checks removed) run in the chapter's state, and the
   check must raise ``NotImplementedError``, ``NameError`` or ``AssertionError``; the stub itself may only raise
   ``NotImplementedError``;
3. nothing after an exercise depends on its solution: once the solution and the full check have run and passed,
   the global names they bound are put back as the student copy has them (names only the solution or the check
   defined are deleted, names the stub defines are the stub's again), so a later cell that uses the solution
   fails, naming the exercise.

At each exercise (``ddpm_lib.course.exercises``: text cell, solution cell, check cell)::

    save RNG states (torch, numpy, random, and every generator bound to a global name) and the global names
    run the student solution + student check       (hidden from the notebook's outputs)
    put back the names and the RNG states saved above, so the real solution sees what a plain run gives it
    run the real solution cell and the real check   (nbval's items; they must pass)
    put the global names back to the student state (as they were after the student check)

What the protocol does not undo: objects the student cells or the solution changed in place (as opposed to names
they bound), warnings shown only once, caches; and later cells see the random state the real solution left.

**No bfloat16 where the CPU has none.** On a CPU without bfloat16 instructions (AVX2 alone) bfloat16 runs ten to
thirty times slower than float32; the chapters therefore take their precision from ``ddpm_lib.precision`` and never
ask for bfloat16 there. On such a CPU this plugin holds them to it: before the first cell it makes bfloat16 autocast
on the CPU an error in the chapter's kernel (:data:`NO_CPU_BFLOAT16`), so a cell that asks for it fails, naming it.
CI runs chapter 11 that way (``.ci/run``, ``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2``).

The outputs of the real cells are the chapter's outputs; ``tools/book_cache.py`` stores them for the book.
"""

from __future__ import annotations

import json
import re
import textwrap
import time

import nbformat
import pytest
from nbval.plugin import IPyNbCell, IPyNbFile, NbCellError

#: the notebooks this plugin runs
CHAPTER_FILE = re.compile(r"^\d\d_\w+\.ipynb$")
#: the errors a check may raise on the student copy (instructors.md, rule 3)
STUDENT_ERRORS = ("NotImplementedError", "NameError", "AssertionError")
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
RESULT_TAG = "__chapter_run__ "

#: Runs in the kernel before the first cell where the CPU has no bfloat16 instructions: bfloat16 autocast on the CPU
#: (asked for explicitly, or as the CPU's default autocast dtype) raises, naming the reason.
NO_CPU_BFLOAT16 = r"""
import torch as _torch


class _NoCpuBfloat16(_torch.autocast):
    def __init__(self, device_type, dtype=None, enabled=True, cache_enabled=None):
        asked = dtype if dtype is not None else _torch.get_autocast_dtype(device_type)
        if enabled and device_type == "cpu" and asked == _torch.bfloat16:
            raise RuntimeError(
                "bfloat16 autocast on a CPU without bfloat16 instructions, ten to thirty times slower than float32 "
                "there: take the precision from ddpm_lib.precision (tools/chapter_run.py)"
            )
        super().__init__(device_type, dtype=dtype, enabled=enabled, cache_enabled=cache_enabled)


_torch.autocast = _NoCpuBfloat16
"""

#: Runs once in the kernel: a module ``_chapter_run`` (in ``sys.modules``, not in the user's namespace) with the
#: snapshot/restore functions the protocol calls.
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


def first_line(source: str) -> str:
    line = next((line.strip() for line in source.splitlines() if line.strip()), "")
    return line if len(line) <= 72 else line[:69] + "..."


def native_cpu_bf16() -> bool:
    """Whether this machine's CPU computes in bfloat16 natively (the package's own test)."""
    from ddpm_lib.precision import native_bf16

    return native_bf16("cpu")


def pytest_configure(config: pytest.Config) -> None:
    if not any(line.startswith("slow:") for line in config.getini("markers")):  # pyproject.toml has it
        config.addinivalue_line("markers", "slow: chapter executions and other tests over ~3 s")


@pytest.hookimpl(hookwrapper=True)
def pytest_collect_file(file_path, parent):
    """A chapter that nbval collects (``--nbval`` / ``--nbval-lax``) is collected as a :class:`ChapterFile`."""
    outcome = yield
    if file_path.suffix != ".ipynb" or not CHAPTER_FILE.match(file_path.name):
        return
    collected = outcome.get_result()
    if any(isinstance(collector, IPyNbFile) for collector in collected):
        outcome.force_result([c for c in collected if not isinstance(c, IPyNbFile)]
                             + [ChapterFile.from_parent(parent, path=file_path)])  # fmt: skip


class ChapterFile(IPyNbFile):
    """A chapter: nbval's notebook collector and kernel, plus the exercises (see the module docstring)."""

    def setup(self):
        super().setup()  # nbval's kernel, in the chapter's folder
        # global name -> (exercise, "removed" | "reset to the stub")
        self.undone: dict[str, tuple[str, str]] = {}
        self.outputs: dict[int, list] = {}  # notebook cell index -> the outputs of the real cell
        self.failed = False
        self.seconds = 0.0  # the real cells' time (the book cache records it)
        self.no_cpu_bfloat16 = not native_cpu_bf16()
        helpers = repr(KERNEL_HELPERS)
        self.hidden(f"exec({helpers}, __import__('sys').modules.setdefault('_chapter_run', "
                    "__import__('types').ModuleType('_chapter_run')).__dict__)")  # fmt: skip
        if self.no_cpu_bfloat16:
            self.hidden(f"exec({NO_CPU_BFLOAT16!r}, {{}})")  # its own globals: nothing added to the chapter's

    def hidden(self, source: str, what: str = "the runner's own code") -> list:
        """Run ``source`` in the chapter's kernel without adding to the notebook; its outputs (a failure raises)."""
        error = self.scratch(source)
        if error is not None:
            raise RuntimeError(f"{self.name}: {what} failed: {error}")
        return self._scratch.test_outputs

    def scratch(self, source: str) -> NbCellError | None:
        """Run ``source`` as nbval runs a cell, outside the notebook; return its error, if any."""
        cell = nbformat.v4.new_code_cell(source)
        self._scratch = IPyNbCell.from_parent(self, name="scratch", cell_num=-1, cell=cell,
                                              options={"check": False, "check_exception": False, "skip": False})  # fmt: skip
        try:
            self._scratch.runtest()
        except NbCellError as error:
            return error
        return None

    def helper(self, call: str) -> dict:
        for output in self.hidden(f"__import__('_chapter_run').{call}"):
            for line in output.get("text", "").splitlines() if output.get("name") == "stdout" else []:
                if line.startswith(RESULT_TAG):
                    return json.loads(line[len(RESULT_TAG) :])
        return {}

    def collect(self):
        from ddpm_lib.course import exercises, student_notebook

        # nbval's items, one per code cell (it reads the notebook into self.nb)
        cells = list(super().collect())
        self.by_index: dict[int, ChapterCell] = {}
        try:
            found = exercises(self.nb)
        except (ValueError, SystemExit) as error:
            raise pytest.UsageError(f"{self.name}: the exercises are malformed: {error}") from None
        student = student_notebook(self.nb).cells if found else self.nb.cells
        by_cell = {
            **{e.solution_cell: ("solution", e) for e in found},
            **{e.check_cell: ("check", e) for e in found},
        }
        indices = [i for i, cell in enumerate(self.nb.cells) if cell.cell_type == "code"]
        for item, index in zip(cells, indices, strict=True):
            role, exercise = by_cell.get(index, (None, None))
            self.by_index[index] = ChapterCell.from_parent(
                self, name=item.name, cell_num=item.cell_num, cell=item.cell, options=item.options, index=index,
                role=role, exercise=exercise, student=student[index].source, last=index == indices[-1])  # fmt: skip
            yield self.by_index[index]


class ChapterCell(IPyNbCell):
    """A chapter's code cell: nbval's item, and at an exercise the student copy's stub and check too."""

    def __init__(self, *args, index: int, role: str | None, exercise, student: str, last: bool, **kwargs):
        super().__init__(*args, **kwargs)
        self.index, self.role, self.exercise, self.student, self.last = index, role, exercise, student, last
        self.add_marker(pytest.mark.slow)

    def where(self) -> str:
        return f"{self.nodeid} (`{first_line(self.cell.source)}`)"

    def runtest(self) -> None:
        chapter = self.parent
        if (
            chapter.no_cpu_bfloat16
        ):  # for the terminal summary (xdist sends user_properties to the controller)
            self.user_properties.append(("no_cpu_bfloat16", True))
        started = time.perf_counter()
        problems, pending = self.student_run() if self.role == "solution" else ([], [])
        try:
            super().runtest()  # the cell as written (nbval)
        except NbCellError:
            chapter.failed = True
            raise
        finally:
            chapter.seconds += time.perf_counter() - started
            chapter.outputs[self.index] = list(self.test_outputs or [])
        if self.role == "solution":
            chapter.pending = (
                pending  # the check's problems: reported by the check, once it has run as written too
            )
        if self.role == "check":
            problems = chapter.__dict__.pop("pending", []) + self.after_check()
        if problems:
            chapter.failed = True
            raise NbCellError(self.cell_num, "\n\n".join(problems), self.cell.source)

    def student_run(self) -> tuple[list[str], list[str]]:
        """The student copy at this exercise: its stub, then its check, in the chapter's state; then that state put
        back. Returns what went wrong with the stub and with the check."""
        chapter, exercise = self.parent, self.exercise
        name = f"exercise {exercise.number}"
        check = chapter.by_index[exercise.check_cell]
        problems, pending = [], []
        chapter.helper("save('before')")
        error = chapter.scratch(self.student)
        if error is not None and _ename(error) != "NotImplementedError":
            problems.append(f"{self.where()}, the solution of {name}: its student version (solution replaced by "
                            f"the nbgrader stub) raised {_details(error)}\nOnly NotImplementedError may come from "
                            "the stub.")  # fmt: skip
        error = chapter.scratch(check.student)
        if error is None:
            pending.append(f"{check.where()}, the check of {name}, passes on the student copy (solution replaced by "
                           f"`raise NotImplementedError()`, hidden tests removed): it must fail there with "
                            f"{', '.join(STUDENT_ERRORS)}. The check as the student copy has it:\n"
                            + textwrap.indent(check.student, "    "))  # fmt: skip
        elif _ename(error) not in STUDENT_ERRORS:
            pending.append(f"{check.where()}, the check of {name}, raised {_details(error)}\non the student copy; "
                            f"it must fail there with {', '.join(STUDENT_ERRORS)}.")  # fmt: skip
        chapter.helper("save('student', rng=False)")
        chapter.helper("restore('before')")
        return problems, pending

    def after_check(self) -> list[str]:
        """After the real check: the names back to the student copy's."""
        chapter = self.parent
        changed = chapter.helper("restore('student', rng=False)")
        number = self.exercise.number
        chapter.undone.update({n: (number, "removed") for n in changed.get("removed", [])})
        chapter.undone.update({n: (number, "reset to the stub") for n in changed.get("reset", [])})
        chapter.helper("forget()")
        return []

    def repr_failure(self, excinfo, style=None):
        text = ANSI.sub("", super().repr_failure(excinfo))
        return text + self.hint(text)

    def hint(self, text: str) -> str:
        """Why a cell after an exercise may fail: it depends on the solution, which the student copy lacks."""
        undone = self.parent.undone
        if not undone:
            return ""
        name = re.search(r"NameError: name '(\w+)' is not defined", text)
        if name and name.group(1) in undone:
            exercise, _ = undone[name.group(1)]
            return (f"\n-> `{name.group(1)}` is defined only by exercise {exercise}'s solution or check: the student "
                    "copy fails here. Cells after an exercise must not depend on it.")  # fmt: skip
        names = ", ".join(f"{name} ({exercise}, {how})" for name, (exercise, how) in undone.items())
        if "NotImplementedError" in text and "YOUR CODE HERE" in text:
            return (f"\n-> The student copy fails here: this cell calls an exercise's stub (names undone after each "
                    f"exercise: {names}). Cells after an exercise must not depend on it.")  # fmt: skip
        return ""


def _ename(error: NbCellError) -> str:
    found = re.findall(r"^(\w+(?:Error|Exception|Interrupt)|NotImplementedError)\b", ANSI.sub("", error.inner_traceback
                                                                                           or ""), re.M)  # fmt: skip
    return found[-1] if found else "Error"


def _details(error: NbCellError) -> str:
    return f"{_ename(error)}:\n{ANSI.sub('', error.inner_traceback or str(error)).strip()}"


def pytest_terminal_summary(terminalreporter) -> None:
    if any(("no_cpu_bfloat16", True) in report.user_properties for kind in ("passed", "failed")
           for report in terminalreporter.getreports(kind)):  # fmt: skip
        terminalreporter.write_line(
            "chapter runs: this CPU has no bfloat16 instructions; bfloat16 autocast on the CPU was an error in the "
            "chapters' kernels (tools/chapter_run.py)"
        )
