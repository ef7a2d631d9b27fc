"""Cached results of expensive computations, valid while the code they ran is unchanged (hand-written plumbing).

Re-executing a chapter after a change to one sampler should not train again the networks whose code did not
change. :func:`cached` runs ``compute(*args, **kwargs)`` once and keeps its result in a folder outside git; a
later call with equal arguments returns the kept result instead, as long as every piece of code the first call
ran is unchanged. It is switched on by the environment variable ``DDPM_RESULT_CACHE`` (the folder), which
``tools/execute_chapters.py`` sets when it re-executes chapters for the book; a learner's run, the tests and CI
leave it unset, and then :func:`cached` simply calls ``compute``. :func:`ddpm_lib.generation.generate` caches
its samples through it, so a chapter's sampling is cached without the chapter asking.

An entry is used only when all of these are as they were when it was made:

- the call: ``name``, and the arguments, by value (tensors and networks by their numbers, generators by their
  state, functions by their code);
- what the computation ran (:mod:`ddpm_lib.fingerprint`): every package function it called, by its
  fingerprint, the skeletons of the package modules it used and the package data files (weights) it opened;
  every function of the notebook it called (a chapter's own ``train_classifier``), by its source, and the
  notebook's global values those functions read;
- the environment: PyTorch's and Python's versions, the CPU's instruction set, the thread count, autocast;
- the global random state (torch, NumPy, ``random``) at the start, when the computation used it.

A hit then does what the computation did, as far as the rest of the notebook can tell: it returns the result,
prints what the computation printed, leaves the global random state where the computation left it, and moves the
process's clocks (``time.perf_counter``, ``time.monotonic``, ``time.time``) on by the seconds the computation
took, so that a cell that times a cached call prints the computation's time rather than the cache's. A result
may hold tensors, NumPy arrays and scalars, and plain data (numbers, strings, lists, tuples, dicts, sets); it
is stored with ``torch.save`` and read back with ``weights_only=True``. An entry that cannot be read, whose
result file does not match its record, or that another machine or format made, is ignored with a one-line note
(to ``$DDPM_RESULT_CACHE_LOG`` when set, else to stderr) and computed again; it is never trusted. A computation
must not display figures (a hit could not show them again).
"""

from __future__ import annotations

import contextlib
import datetime
import inspect
import io
import json
import linecache
import math
import os
import pickle
import platform
import random
import re
import shutil
import sys
import tempfile
import textwrap
import time
import types
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from . import fingerprint
from .fingerprint import Dependencies, digest

CACHE_ENV = "DDPM_RESULT_CACHE"
LOG_ENV = "DDPM_RESULT_CACHE_LOG"
FORMAT = 1


def default_folder() -> Path:
    """Where ``tools/execute_chapters.py`` keeps the cache: ``$XDG_CACHE_HOME/ddpm-course/results``."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ddpm-course" / "results"


def note(message: str) -> None:
    """One line about the cache, where the maintainer sees it (never into a notebook's outputs when logged)."""
    log = os.environ.get(LOG_ENV)
    line = f"result cache: {message}"
    if log:
        with open(log, "a", encoding="utf-8") as file:
            file.write(line + "\n")
    else:
        print(line, file=sys.stderr)


# --- fingerprints of values -----------------------------------------------------------------------------------


def describe(value: Any, _seen: set[int] | None = None) -> Any:
    """A JSON-able description of ``value`` that is equal for equal values: what a cache key is made of."""
    import numpy as np
    import torch

    seen = set() if _seen is None else _seen
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    if isinstance(value, (list, tuple)):
        return [type(value).__name__, [describe(item, seen) for item in value]]
    if isinstance(value, (set, frozenset)):
        return ["set", sorted(json.dumps(describe(item, seen), sort_keys=True) for item in value)]
    if isinstance(value, dict):
        return ["dict", [[describe(k, seen), describe(v, seen)] for k, v in value.items()]]
    if isinstance(value, torch.Tensor):
        flat = value.detach().cpu().contiguous().reshape(-1)
        raw = flat.to(torch.uint8) if flat.dtype == torch.bool else flat.view(torch.uint8)
        return [
            "tensor",
            str(value.dtype),
            list(value.shape),
            str(value.device.type),
            digest(raw.numpy().tobytes()),
        ]
    if isinstance(value, np.ndarray):
        return ["ndarray", str(value.dtype), list(value.shape), digest(np.ascontiguousarray(value).tobytes())]
    if isinstance(value, np.generic):
        return ["npscalar", str(value.dtype), describe(value.item(), seen)]
    if isinstance(value, os.PathLike):
        return ["path", os.fspath(value)]
    if isinstance(value, (torch.dtype, torch.device)):
        return [type(value).__name__, str(value)]
    if isinstance(value, torch.Generator):
        return ["generator", describe(value.get_state(), seen)]
    if isinstance(value, random.Random):
        return ["random", digest(repr(value.getstate()))]
    if isinstance(value, np.random.Generator):
        return ["np-generator", digest(repr(value.bit_generator.state))]
    if isinstance(value, (types.FunctionType, types.MethodType)):
        return ["function", *code_description(value)]
    if isinstance(value, (types.BuiltinFunctionType, type, types.ModuleType)):
        return [
            type(value).__name__,
            getattr(value, "__module__", None),
            getattr(value, "__qualname__", value.__name__),
        ]
    if id(value) in seen:
        return ["cycle", type(value).__qualname__]
    seen.add(id(value))
    kind = [type(value).__module__, type(value).__qualname__]
    if isinstance(value, torch.nn.Module):
        state = [[name, describe(tensor, seen)] for name, tensor in value.state_dict(keep_vars=True).items()]
        parts = []  # every submodule's kind, mode and plain attributes (its tensors are in the state above)
        for name, module in value.named_modules():
            seen.add(id(module))
            attributes = {k: v for k, v in vars(module).items() if not k.startswith("_") and k != "training"}
            parts.append([name, type(module).__qualname__, module.training, describe(attributes, seen)])
        return ["module", *kind, state, parts]
    if is_dataclass(value):
        return ["dataclass", *kind, [[f.name, describe(getattr(value, f.name), seen)] for f in fields(value)]]
    if hasattr(value, "__dict__"):
        return ["object", *kind, describe(dict(vars(value)), seen)]
    raise TypeError(f"cannot tell a {type(value).__qualname__} apart from another: not a cache key")


def code_description(function) -> list[str]:
    """``[qualified name, fingerprint]`` of a function: package code by its source file, notebook code by the
    source the notebook holds."""
    function = inspect.unwrap(getattr(function, "__func__", function))
    code = function.__code__
    module = fingerprint.relative(code.co_filename)
    if module is not None:
        owner = fingerprint.owner(
            code.co_qualname, fingerprint.function_fingerprints(fingerprint.ROOT / module)
        )
        return [
            f"{module}:{code.co_qualname}",
            fingerprint.function_fingerprints(fingerprint.ROOT / module).get(owner or "", ""),
        ]
    return [f"{function.__module__}:{code.co_qualname}", source_fingerprint(code)]


def source_fingerprint(code: types.CodeType) -> str:
    """The fingerprint of a function's source (docstrings and formatting aside), from ``linecache`` (where IPython
    keeps its cells); of its bytecode when the source cannot be read."""
    import ast

    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(code)))
        return digest(ast.unparse(fingerprint._without_docstrings(tree)))
    except (OSError, TypeError, SyntaxError):
        return digest(repr((code.co_code, code.co_consts, code.co_names)))


# --- what a computation ran outside the package: the notebook's own functions and the globals they read ------------


def interactive(code: types.CodeType) -> bool:
    """Whether ``code`` was compiled from a notebook cell (IPython keeps its cells in ``linecache``, under a
    name that is not a file)."""
    name = code.co_filename
    return name in linecache.cache and not os.path.exists(name)


def _namespace() -> dict:
    return vars(sys.modules["__main__"])


def _lookup(qualname: str) -> Any:
    """The notebook's current object called ``qualname`` (``MnistClassifier.forward``), or None."""
    value: Any = _namespace()
    for i, part in enumerate(qualname.split(".")):
        value = value.get(part) if i == 0 else getattr(value, part, None)
        if value is None:
            return None
    return value


def _code_names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for constant in code.co_consts:
        if isinstance(constant, types.CodeType):
            names |= _code_names(constant)
    return names


def _global_values(names: set[str]) -> dict[str, Any]:
    """The notebook's global data among ``names`` (modules, classes and functions aside: their code counts)."""
    namespace = _namespace()
    skipped = (types.ModuleType, type, types.FunctionType, types.BuiltinFunctionType, types.MethodType)
    return {name: namespace[name] for name in sorted(names) if name in namespace and not isinstance(namespace[name], skipped)
            and not name.startswith("_")}  # fmt: skip


def notebook_dependencies(codes) -> dict:
    """``{"functions": {qualname: fingerprint}, "globals": {name: description digest}}`` for the notebook code
    objects among ``codes``."""
    functions, names = {}, set()
    for code in codes:
        if not interactive(code):
            continue
        qualname = code.co_qualname.split(".<locals>", 1)[0]
        current = _lookup(qualname)
        if current is None or not hasattr(current, "__code__"):
            continue  # a cell's top-level code: the chapter's code fingerprint covers it
        functions[qualname] = source_fingerprint(current.__code__)
        names |= _code_names(current.__code__)
    values = {}
    for name, value in _global_values(names).items():
        with contextlib.suppress(TypeError):
            values[name] = digest(json.dumps(describe(value), sort_keys=True))
    return {"functions": functions, "globals": values}


def notebook_changes(recorded: dict) -> list[str]:
    changed = []
    for qualname, fp in recorded.get("functions", {}).items():
        current = _lookup(qualname)
        if current is None or not hasattr(current, "__code__") or source_fingerprint(current.__code__) != fp:
            changed.append(f"notebook function {qualname}")
    namespace = _namespace()
    for name, fp in recorded.get("globals", {}).items():
        try:
            now = digest(json.dumps(describe(namespace[name]), sort_keys=True)) if name in namespace else ""
        except TypeError:
            now = ""
        if now != fp:
            changed.append(f"notebook value {name}")
    return changed


# --- the global random state, the environment, stored values -----------------------------------------------------


def _rng_state() -> dict:
    import numpy as np
    import torch

    kind, keys, position, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [
            kind,
            torch.from_numpy(keys.astype(np.int64)),
            int(position),
            int(has_gauss),
            float(cached),
        ],
        "random": list(random.getstate()[1]) + [random.getstate()[0], random.getstate()[2]],
    }


def _set_rng_state(state: dict) -> None:
    import numpy as np
    import torch

    torch.set_rng_state(state["torch"])
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    *internal, version, gauss = state["random"]
    random.setstate((version, tuple(internal), gauss))


def environment() -> dict:
    import torch

    autocast = [torch.is_autocast_enabled("cpu"), str(torch.get_autocast_dtype("cpu"))]
    return {
        "format": FORMAT,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu": torch.backends.cpu.get_cpu_capability(),
        "accelerators": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        + (["mps"] if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available() else []),
        "threads": torch.get_num_threads(),
        "default_dtype": str(torch.get_default_dtype()),
        "autocast_cpu": autocast,
        "autocast_class": f"{torch.autocast.__module__}.{torch.autocast.__qualname__}",
    }


def encode(value: Any) -> Any:
    """``value`` as ``torch.save`` can store and ``torch.load(weights_only=True)`` read back (:func:`decode`)."""
    import numpy as np
    import torch

    if isinstance(value, np.generic):  # before float: np.float64 is a float
        return {"__npscalar__": value.item(), "dtype": str(value.dtype)}
    if value is None or isinstance(value, (bool, int, float, str, torch.Tensor)):
        return value
    if isinstance(value, np.ndarray):
        return {
            "__ndarray__": torch.from_numpy(np.ascontiguousarray(value)).clone(),
            "dtype": str(value.dtype),
        }
    if isinstance(value, np.generic):
        return {"__npscalar__": value.item(), "dtype": str(value.dtype)}
    if isinstance(value, (set, frozenset)):
        return {"__set__": [encode(item) for item in value]}
    if isinstance(value, list):
        return [encode(item) for item in value]
    if isinstance(value, tuple):
        return tuple(encode(item) for item in value)
    if isinstance(value, dict):
        if any(not isinstance(key, (str, int)) for key in value):
            raise TypeError("dict keys other than str and int")
        if any(isinstance(key, str) and key.startswith("__") for key in value):
            return {"__dict__": [[key, encode(item)] for key, item in value.items()]}
        return {key: encode(item) for key, item in value.items()}
    raise TypeError(f"a {type(value).__qualname__}")


def decode(value: Any) -> Any:
    import numpy as np

    if isinstance(value, list):
        return [decode(item) for item in value]
    if isinstance(value, tuple):
        return tuple(decode(item) for item in value)
    if isinstance(value, dict):
        if "__ndarray__" in value:
            return value["__ndarray__"].numpy().astype(value["dtype"], copy=False)
        if "__npscalar__" in value:
            return np.dtype(value["dtype"]).type(value["__npscalar__"])
        if "__set__" in value:
            return {decode(item) for item in value["__set__"]}
        if "__dict__" in value:
            return {key: decode(item) for key, item in value["__dict__"]}
        return {key: decode(item) for key, item in value.items()}
    return value


# --- the clocks a hit moves on --------------------------------------------------------------------------------

_replayed = 0.0
_clocks_patched = False


def replayed_seconds() -> float:
    """The seconds of computation this process skipped by cache hits (what its clocks were moved on by)."""
    return _replayed


def _advance_clocks(seconds: float) -> None:
    global _replayed, _clocks_patched
    if not _clocks_patched:
        for name in ("perf_counter", "monotonic", "time"):
            real = getattr(time, name)
            setattr(time, name, lambda real=real: real() + _replayed)
        _clocks_patched = True
    _replayed += seconds


class _Tee(io.TextIOBase):
    def __init__(self, stream):
        self.stream, self.kept = stream, io.StringIO()

    def write(self, text):
        self.kept.write(text)
        return self.stream.write(text)

    def flush(self):
        self.stream.flush()

    def __getattr__(self, name):
        return getattr(self.stream, name)


# --- the cache ------------------------------------------------------------------------------------------------


@dataclass
class _Frame:
    """A computation being run: what nested hits added to what it ran."""

    added: Dependencies = field(default_factory=Dependencies)
    notebook: dict = field(default_factory=lambda: {"functions": {}, "globals": {}})


@dataclass
class ResultCache:
    folder: Path
    hits: int = 0
    misses: int = 0
    _stack: list[_Frame] = field(default_factory=list)

    def entry_folder(self, name: str, key: str) -> Path:
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-")[:60] or "result"
        return self.folder / slug / key

    def call(self, name: str, compute, args: tuple, kwargs: dict):
        import torch

        try:
            call = describe([name, describe(compute), args, kwargs])
        except TypeError as error:
            note(f"{name}: not cached ({error})")
            return compute(*args, **kwargs)
        key = digest(json.dumps([call, environment()], sort_keys=True))
        folder = self.entry_folder(name, key)
        found = self._read(folder, name)
        if found is not None:
            entry, stored = found
            self.hits += 1
            dependencies = Dependencies.from_json(entry["ran"])
            fingerprint.process_recorder().add(dependencies)
            for frame in self._stack:
                frame.added.update(dependencies)
                for kind in ("functions", "globals"):
                    frame.notebook[kind].update(entry["notebook"][kind])
            if stored["rng"] is not None:
                _set_rng_state(stored["rng"])
            sys.stdout.write(stored["stdout"])
            sys.stderr.write(stored["stderr"])
            _advance_clocks(entry["seconds"])
            return decode(stored["value"])

        self.misses += 1
        recorder = fingerprint.process_recorder()
        before, opened, rng_before = recorder.counts(all_code=True), dict(recorder.data), _rng_state()
        frame = _Frame()
        self._stack.append(frame)
        out, err = _Tee(sys.stdout), _Tee(sys.stderr)
        started = time.perf_counter()
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                value = compute(*args, **kwargs)
        finally:
            self._stack.pop()
        seconds = time.perf_counter() - started
        codes = [
            code for code, calls in recorder.counts(all_code=True).items() if calls > before.get(code, 0)
        ]
        ran = fingerprint._dependencies(codes)
        ran.update(frame.added)
        ran.data |= {path for path, times in recorder.data.items() if times > opened.get(path, 0)}
        notebook = notebook_dependencies(codes)
        for kind in ("functions", "globals"):
            notebook[kind].update(frame.notebook[kind])
        for outer in self._stack:
            outer.added.update(ran)
            for kind in ("functions", "globals"):
                outer.notebook[kind].update(notebook[kind])
        rng_after = _rng_state()
        rng_used = describe(rng_after) != describe(rng_before)
        try:
            stored = {
                "value": encode(value),
                "stdout": out.kept.getvalue(),
                "stderr": err.kept.getvalue(),
                "rng": rng_after if rng_used else None,
            }
        except TypeError as error:
            note(f"{name}: result not cached (it holds {error})")
            return value
        entry = {
            "format": FORMAT,
            "name": name,
            "environment": environment(),
            "ran": ran.to_json(),
            "fingerprints": ran.fingerprints(),
            "notebook": notebook,
            "rng_before": digest(json.dumps(describe(rng_before))) if rng_used else None,
            "seconds": seconds,
            "created": datetime.datetime.now().isoformat(timespec="seconds"),
        }
        self._write(folder, entry, stored, torch)
        return value

    def _read(self, folder: Path, name: str) -> tuple[dict, dict] | None:
        import torch

        record, result = folder / "entry.json", folder / "result.pt"
        if not record.is_file():
            return None
        try:
            entry = json.loads(record.read_text(encoding="utf-8"))
            if entry.get("format") != FORMAT or entry.get("environment") != environment():
                note(f"{name}: ignored an entry made elsewhere or by another format ({folder})")
                return None
            if digest(result.read_bytes()) != entry["result"]:
                note(f"{name}: ignored a corrupt entry (its result does not match its record: {folder})")
                return None
            changed = fingerprint.changes(entry["fingerprints"])
            stale = [
                *changed["functions"],
                *changed["skeletons"],
                *changed["data"],
                *notebook_changes(entry["notebook"]),
            ]
            if (
                entry["rng_before"] is not None
                and digest(json.dumps(describe(_rng_state()))) != entry["rng_before"]
            ):
                stale.append("the global random state")
            if stale:
                return None  # the code changed: computed again, and the entry replaced
            stored = torch.load(result, weights_only=True)
        except (
            OSError,
            ValueError,
            KeyError,
            TypeError,
            RuntimeError,
            EOFError,
            pickle.UnpicklingError,
        ) as error:
            note(f"{name}: ignored an unreadable entry ({type(error).__name__}: {error}; {folder})")
            return None
        return entry, stored

    def _write(self, folder: Path, entry: dict, stored: dict, torch) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=folder, suffix=".tmp")
        os.close(handle)
        torch.save(stored, temporary)
        entry["result"] = digest(Path(temporary).read_bytes())
        os.replace(temporary, folder / "result.pt")
        record = folder / "entry.json.tmp"
        record.write_text(json.dumps(entry, indent=1), encoding="utf-8")
        os.replace(record, folder / "entry.json")

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


_cache: ResultCache | None = None


def active() -> ResultCache | None:
    """The cache of this process: the folder ``$DDPM_RESULT_CACHE``, or None (no caching)."""
    global _cache
    folder = os.environ.get(CACHE_ENV)
    if not folder:
        return None
    if _cache is None or _cache.folder != Path(folder):
        _cache = ResultCache(Path(folder))
    return _cache


def cached(name: str, compute, /, *args, **kwargs):
    """``compute(*args, **kwargs)``, or its kept result when the cache is on and nothing it depends on changed
    (the module docstring says what that is). ``name`` says what it is, for the cache's folder and notes."""
    cache = active()
    if cache is None:
        return compute(*args, **kwargs)
    return cache.call(name, compute, args, kwargs)
