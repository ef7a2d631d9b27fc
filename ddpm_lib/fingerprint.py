"""What code a computation ran, function by function (hand-written plumbing; imports nothing but the standard library).

The chapters' stored outputs (``tools/execute_chapters.py``) and the cached results of expensive computations
(:mod:`ddpm_lib.result_cache`) are out of date exactly when code they *ran* changed. This module says which code
that was, and fingerprints it so that only changes that can change a result count:

- :func:`function_fingerprints`: for every function and method of a module (by qualified name, ``Unet.forward``),
  a hash of its source as the parser reads it, docstrings removed: comments, blank lines, formatting and
  docstrings do not count; its body, signature, defaults and decorators do. A function defined inside another
  belongs to the outer one.
- :func:`skeleton_fingerprint`: a hash of the module without its function bodies and docstrings: imports,
  module-level assignments, class bodies (dataclass fields), signatures, defaults and decorators. A module's
  skeleton is what every user of the module depends on, whichever of its functions ran.
- :class:`Recorder`: which package functions ran in this process (the C profiler ``cProfile`` counts every call
  of a function's code object; only code objects of files under ``ddpm_lib/`` are kept), which package modules
  were imported and which package data files (shipped weights, records) were opened.
- :func:`record_this_process`: switched on by ``DDPM_RECORD_DIR``, records the whole process and writes what it
  ran to that folder at exit. ``tools/recording/sitecustomize.py`` calls it in every Python process a chapter
  starts (``python -m ddpm_lib train``, ``torchrun`` and its workers), the chapter's kernel included.

The recorder's own code (this module and the result cache) is left out of every record: it decides what is stale
and cannot itself make a result stale.
"""

from __future__ import annotations

import ast
import atexit
import cProfile
import hashlib
import json
import os
import sys
import threading
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
ROOT = PACKAGE.parent
RECORD_DIR_ENV = "DDPM_RECORD_DIR"
#: files whose code decides staleness; never part of a record
INFRASTRUCTURE = frozenset({"ddpm_lib/fingerprint.py", "ddpm_lib/result_cache.py"})
DIGEST_CHARS = 16  # 64 bits of SHA-256: plenty to tell versions of one function apart


def digest(data: bytes | str) -> str:
    if isinstance(data, str):
        data = data.encode("utf-8")
    return hashlib.sha256(data).hexdigest()[:DIGEST_CHARS]


def relative(path: str | os.PathLike) -> str | None:
    """``path`` as ``ddpm_lib/…`` (POSIX) when it lies in the package, else None."""
    try:
        return "ddpm_lib/" + Path(os.path.realpath(path)).relative_to(PACKAGE).as_posix()
    except ValueError:
        return None


def _without_docstrings(tree: ast.AST) -> ast.AST:
    """``tree`` with the docstring of the module and of every class and function removed (in place)."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                if isinstance(body[0].value.value, str):
                    node.body = body[1:] or [ast.Pass()]
    return tree


@lru_cache(maxsize=256)
def _parsed(path: str, mtime_ns: int, size: int) -> tuple[dict[str, str], str]:
    """(function fingerprints, skeleton fingerprint) of the file at ``path`` as it is now (the key's mtime and
    size make a changed file parse again)."""
    tree = _without_docstrings(ast.parse(Path(path).read_text(encoding="utf-8"), filename=path))
    sources: dict[str, list[str]] = {}

    def walk(body: list[ast.stmt], prefix: str) -> None:
        for node in body:
            if isinstance(node, ast.ClassDef):
                walk(node.body, f"{prefix}{node.name}.")
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                # a property's getter and setter share a name: both count
                sources.setdefault(prefix + node.name, []).append(ast.unparse(node))
            elif isinstance(
                node, (ast.If, ast.Try)
            ):  # a def under `if TYPE_CHECKING:` / `try:` at this level
                for part in (node.body, node.orelse, *(h.body for h in getattr(node, "handlers", []))):
                    walk(part, prefix)

    walk(tree.body, "")
    functions = {name: digest("\n".join(parts)) for name, parts in sources.items()}
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            node.body = [ast.Pass()]
    return functions, digest(ast.unparse(tree))


def _fingerprints(path: Path) -> tuple[dict[str, str], str] | None:
    try:
        stat = path.stat()
        return _parsed(str(path), stat.st_mtime_ns, stat.st_size)
    except (OSError, SyntaxError, ValueError):
        return None


def function_fingerprints(path: Path) -> dict[str, str]:
    """``{qualified name: fingerprint}`` of every function and method defined in the Python file ``path``
    ({} when it is gone or does not parse)."""
    found = _fingerprints(path)
    return dict(found[0]) if found else {}


def skeleton_fingerprint(path: Path) -> str:
    """The fingerprint of the module at ``path`` without its function bodies and docstrings ("" when gone)."""
    found = _fingerprints(path)
    return found[1] if found else ""


def file_fingerprint(path: Path) -> str:
    """The fingerprint of a data file's bytes ("" when it is gone)."""
    try:
        return digest(path.read_bytes())
    except OSError:
        return ""


def owner(qualname: str, defined: dict[str, str] | set[str]) -> str | None:
    """The function of a module that holds the code object named ``qualname``: itself, or the function it is
    nested in (``train.<locals>.step`` -> ``train``); None for module-level or class-level code (the skeleton)."""
    name = qualname.split(".<locals>", 1)[0]
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in defined:
            return candidate
    return None


@dataclass
class Dependencies:
    """What a computation ran in the package: functions by module, the modules it imported, data files it
    opened. Paths are relative to the repository (``ddpm_lib/sampling.py``)."""

    functions: dict[str, set[str]] = field(default_factory=dict)
    modules: set[str] = field(default_factory=set)
    data: set[str] = field(default_factory=set)

    def update(self, other: Dependencies) -> None:
        for module, names in other.functions.items():
            self.functions.setdefault(module, set()).update(names)
        self.modules |= other.modules
        self.data |= other.data

    def to_json(self) -> dict:
        return {
            "functions": {module: sorted(names) for module, names in sorted(self.functions.items())},
            "modules": sorted(self.modules),
            "data": sorted(self.data),
        }

    @classmethod
    def from_json(cls, data: dict) -> Dependencies:
        return cls(
            {module: set(names) for module, names in data.get("functions", {}).items()},
            set(data.get("modules", [])),
            set(data.get("data", [])),
        )

    def fingerprints(self, root: Path = ROOT) -> dict:
        """``{"functions": {module: {name: fp}}, "skeletons": {module: fp}, "data": {file: fp}}`` of the files
        under ``root`` as they are now; a function that no longer exists gets ""."""
        functions = {}
        for module, names in sorted(self.functions.items()):
            now = function_fingerprints(root / module)
            functions[module] = {name: now.get(name, "") for name in sorted(names)}
        modules = sorted(self.modules | set(self.functions))
        return {
            "functions": functions,
            "skeletons": {module: skeleton_fingerprint(root / module) for module in modules},
            "data": {name: file_fingerprint(root / name) for name in sorted(self.data)},
        }


def changes(recorded: dict, root: Path = ROOT) -> dict[str, list[str]]:
    """What changed under ``root`` since ``recorded`` (as :meth:`Dependencies.fingerprints` gives):
    ``{"functions": ["ddpm_lib/sampling.py:sample_loop", …], "skeletons": [module, …], "data": [file, …]}``,
    each list empty when nothing of its kind changed."""
    changed_functions = []
    for module, names in sorted(recorded.get("functions", {}).items()):
        now = function_fingerprints(root / module)
        changed_functions += [
            f"{module}:{name}" for name, fp in sorted(names.items()) if now.get(name, "") != fp
        ]
    return {
        "functions": changed_functions,
        "skeletons": [
            m
            for m, fp in sorted(recorded.get("skeletons", {}).items())
            if skeleton_fingerprint(root / m) != fp
        ],
        "data": [f for f, fp in sorted(recorded.get("data", {}).items()) if file_fingerprint(root / f) != fp],
    }


class Recorder:
    """Which package code runs in this process, from the moment :meth:`start` is called.

    ``cProfile`` (the C profiler of the standard library) counts the calls of every code object of the thread
    it runs in: :meth:`start` starts one in the calling thread (once per thread), and :meth:`counts` adds up
    all of them; :meth:`dependencies` keeps the code objects of files under ``ddpm_lib/``. :meth:`since` gives what
    ran between two :meth:`counts`, for a computation inside the recorded process (the result cache). Work that
    skipped running code because a cached result stood in for it adds that result's dependencies with
    :meth:`add`, so a record never misses code a result depends on.
    """

    def __init__(self) -> None:
        self._profiles: dict[int, cProfile.Profile] = {}
        self._added = Dependencies()
        self.data: dict[str, int] = {}  # package data file -> times opened

    def start(self) -> Recorder:
        """Record the calling thread too (a no-op when it is recorded already). A thread has one profiler at a time:
        when another took over (or ``sys.setprofile(None)`` removed ours), ours is enabled again, its counts kept."""
        thread = threading.get_ident()
        profile = self._profiles.get(thread)
        if profile is None:
            profile = self._profiles[thread] = cProfile.Profile()
        if sys.getprofile() is not profile:
            profile.enable()
        return self

    def counts(self, all_code: bool = False) -> dict:
        """``{code object: calls}`` of the package's code objects called so far, in every recorded thread (with
        ``all_code``, of every Python code object: a notebook's own functions too)."""
        root = "" if all_code else str(PACKAGE) + os.sep
        counted: dict = {}
        for profile in list(self._profiles.values()):
            for entry in profile.getstats():
                if not isinstance(entry.code, str) and entry.code.co_filename.startswith(root):
                    counted[entry.code] = counted.get(entry.code, 0) + entry.callcount
        return counted

    def since(self, before: dict) -> Dependencies:
        """The package functions called since ``before`` (a :meth:`counts`)."""
        return _dependencies(code for code, calls in self.counts().items() if calls > before.get(code, 0))

    def add(self, dependencies: Dependencies) -> None:
        self._added.update(dependencies)

    def dependencies(self) -> Dependencies:
        """Everything recorded so far: functions called, package modules imported, data files opened."""
        found = _dependencies(self.counts())
        found.update(self._added)
        found.modules |= {
            path
            for module in list(sys.modules.values())
            if (path := relative(getattr(module, "__file__", None) or os.devnull)) is not None
            and path.endswith(".py")
            and path not in INFRASTRUCTURE
        }
        found.data |= set(self.data)
        return found


def _dependencies(codes) -> Dependencies:
    found = Dependencies()
    for code in codes:
        module = relative(code.co_filename)
        if module is None or module in INFRASTRUCTURE:
            continue
        name = owner(getattr(code, "co_qualname", code.co_name), function_fingerprints(ROOT / module))
        if name is not None:
            found.functions.setdefault(module, set()).add(name)
        found.modules.add(module)
    return found


_recorder: Recorder | None = None


def process_recorder() -> Recorder:
    """The recorder of this process, recording the calling thread (started on first use, with an audit hook that
    notes the package data files the process opens)."""
    global _recorder
    if _recorder is None:
        _recorder = Recorder()
        sys.addaudithook(_audit)
    return _recorder.start()


def _audit(event: str, args: tuple) -> None:
    if event == "open" and _recorder is not None and isinstance(args[0], (str, os.PathLike)):
        path = relative(args[0])
        if path is not None and not path.endswith((".py", ".pyc")) and "/__pycache__/" not in path:
            _recorder.data[path] = _recorder.data.get(path, 0) + 1


def record_this_process(folder: str | os.PathLike) -> Recorder:
    """Record this whole process (code run, package data files opened) and write it to ``folder`` at exit
    (:func:`dump_process`; also callable earlier, e.g. by a notebook kernel that is about to be shut down)."""
    recorder = process_recorder()
    atexit.register(dump_process, folder)
    return recorder


def dump_process(folder: str | os.PathLike) -> Path | None:
    """Write what this process ran to ``folder/<pid>.json``; return the file (None when not recording)."""
    if _recorder is None:
        return None
    target = Path(folder) / f"{os.getpid()}.json"
    found = _recorder.dependencies().to_json()
    found["argv"] = sys.argv
    temporary = target.with_suffix(".tmp")
    temporary.write_text(json.dumps(found), encoding="utf-8")
    os.replace(temporary, target)
    return target


def read_folder(folder: str | os.PathLike) -> Dependencies:
    """Everything the processes that recorded into ``folder`` ran, together."""
    found = Dependencies()
    for path in sorted(Path(folder).glob("*.json")):
        found.update(Dependencies.from_json(json.loads(path.read_text(encoding="utf-8"))))
    return found
