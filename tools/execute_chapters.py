"""Execute chapters and store their outputs in the paired notebooks, with a record of the code that produced them.

    python tools/execute_chapters.py --profile full            # every chapter whose stored outputs are stale
    python tools/execute_chapters.py --profile full 05 07      # chapters 05 and 07
    python tools/execute_chapters.py --profile full --force 01 # again, although its outputs are current
    python tools/execute_chapters.py --list                    # one line per chapter: current, or stale and why
    python tools/execute_chapters.py --check                   # exit status 1 while any chapter is stale

Each chapter runs top to bottom in a fresh kernel of this Python environment (``DDPM_PROFILE`` set to the
profile, the chapter's folder as working directory), cell by cell with progress on the terminal; its outputs go
into ``chapters/NN_topic.ipynb`` (written atomically when the chapter has finished, so an interrupted run loses
at most the chapter it was in; run the command again to resume: current chapters are skipped).

**What a chapter ran.** The kernel, and every Python process the chapter starts (``python -m ddpm_lib train``,
``torchrun`` and its workers), records the package code it runs (``ddpm_lib.fingerprint``, switched on through
``tools/recording/sitecustomize.py``). The notebook's metadata keeps, under ``ddpm_course``:

- ``code_sha256``: a hash of the chapter's code cells as Python tokens (prose, comments, blank lines do not count);
- ``functions``: every package function and method that ran, by module, with the fingerprint of its source
  (docstrings and formatting aside: ``ddpm_lib.fingerprint.function_fingerprints``);
- ``skeletons``: for every package module the chapter imported, the fingerprint of its skeleton (imports,
  module-level assignments, class bodies, signatures, defaults, decorators);
- ``weights``: the fingerprint of every package data file it opened (shipped weights, snapshots, records);
- the profile, torch's version, the wall time (what the chapter costs without the result cache), the date and
  this command.

A chapter is **stale** when any of these changed. A stale chapter fails no test: the book shows its stored outputs
under a note that says when they were made and what changed since (``tools/book_ext.py``), and ``--check`` fails
until the chapter is executed again. The last change of a batch of work re-executes what is stale.

**Result cache.** Expensive computations (sampling through ``ddpm_lib.generation.generate``, the chapters' training
runs through ``ddpm_lib.result_cache.cached``) keep their results under ``~/.cache/ddpm-course/results``, valid
while the code they ran is unchanged, so re-executing a chapter after a change to one sampler does not train
again what that sampler does not touch. ``--no-cache`` runs everything afresh. Widget output (progress bars,
sliders) and widget state are not stored: they need a live kernel to mean anything.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import io
import json
import os
import re
import sys
import tempfile
import time
import tokenize
from pathlib import Path

import jupytext
import nbformat

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from ddpm_lib import fingerprint, result_cache  # noqa: E402
from ddpm_lib.checkpoint import write_text  # noqa: E402
from ddpm_lib.course import chapter_sources  # noqa: E402
from ddpm_lib.profile import ENV_VAR  # noqa: E402

KEY = "ddpm_course"
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
RECORDING = ROOT / "tools" / "recording"  # its sitecustomize.py records every Python process of a chapter
#: run after the chapter: write the kernel's record, and say what the result cache did
PROBE = (
    "import json as _j, os as _o\n"
    "from ddpm_lib import fingerprint as _f, result_cache as _c\n"
    "_f.dump_process(_o.environ[_f.RECORD_DIR_ENV])\n"
    "_a = _c.active()\n"
    "print(_j.dumps({'replayed_s': _c.replayed_seconds(), 'hits': _a.hits if _a else 0, 'misses': _a.misses if _a else 0}))\n"
)


#: after each cell: the seconds of computation the kernel's cache hits skipped so far (nothing bound, nothing imported)
CELL_PROBE = "print(getattr(__import__('sys').modules.get('ddpm_lib.result_cache'), 'replayed_seconds', lambda: 0.0)())"


def _last_number(text: str, default: float) -> float:
    """The last number printed in ``text`` (a stream may arrive in pieces, after a cell's late output), or default."""
    found = re.findall(r"-?\d+(?:\.\d+)?(?:e-?\d+)?", text)
    return float(found[-1]) if found else default


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def executed_tokens(code: str) -> str:
    """``code`` as the interpreter reads it: its tokens without comments and blank lines, so that editing a
    comment (a model answer written in a solution cell, an explanation) leaves it unchanged. Code that does not
    tokenize as Python is returned as it is."""
    try:
        tokens = tokenize.generate_tokens(io.StringIO(code).readline)
        kept = [(t.type, t.string) for t in tokens if t.type not in (tokenize.COMMENT, tokenize.NL)]
    except (tokenize.TokenError, SyntaxError):
        return code
    return json.dumps(kept)


def code_hash(source: Path) -> str:
    """The chapter's code cells, joined: what its outputs depend on (prose and comments do not count)."""
    cells = [executed_tokens(cell.source) for cell in jupytext.read(source).cells if cell.cell_type == "code"]
    return sha256("\n\x00\n".join(cells).encode("utf-8"))


def stored_record(source: Path) -> dict | None:
    """The record of what made the outputs stored in ``source``'s paired notebook (None when it stores none)."""
    return nbformat.read(source.with_suffix(".ipynb"), as_version=4).metadata.get(KEY)


def changes(source: Path, record: dict, root: Path = ROOT) -> dict[str, list[str]]:
    """What changed since ``record`` was made, by kind: ``code cells``, ``functions``
    (``ddpm_lib/sampling.py:sample_loop``), ``skeletons`` (modules), ``weights`` (data files); [] where nothing."""
    found = fingerprint.changes(
        {"functions": record["functions"], "skeletons": record["skeletons"], "data": record["weights"]}, root
    )
    return {
        "code cells": ["its code cells"] if record["code_sha256"] != code_hash(source) else [],
        "functions": found["functions"],
        "skeletons": found["skeletons"],
        "weights": found["data"],
    }


def stale_reasons(source: Path, profile: str | None = None, root: Path = ROOT) -> list[str]:
    """Why the stored outputs of ``source``'s notebook are out of date ([] when current; no outputs is a reason):
    one line per kind of change, naming what changed."""
    record = stored_record(source)
    if record is None:
        return ["no stored outputs"]
    reasons = []
    if profile is not None and record["profile"] != profile:
        reasons.append(f"made in the {record['profile']} profile")
    if "functions" not in record:
        return [*reasons, "recorded before function-level records (ddpm_lib modules by file)"]
    labels = {"code cells": "changed", "functions": "functions changed", "skeletons": "module skeletons changed",
              "weights": "weights changed"}  # fmt: skip
    for kind, changed in changes(source, record, root).items():
        if changed:
            reasons.append(
                "its code cells changed" if kind == "code cells" else f"{labels[kind]}: {', '.join(changed)}"
            )
    return reasons


def smaller_png(data: str, limit: int = 60_000) -> str:
    """A base64 PNG over ``limit`` bytes as a 256-colour palette PNG, if that is smaller (scatter plots of thousands of
    points are the big ones; a palette keeps their look at a third of the size or less)."""
    import base64
    import io

    from PIL import Image

    raw = base64.b64decode(data)
    if len(raw) <= limit:
        return data
    image = Image.open(io.BytesIO(raw)).convert("RGB").quantize(256, method=Image.Quantize.FASTOCTREE)
    buffer = io.BytesIO()
    image.save(buffer, format="png", optimize=True)
    return base64.b64encode(buffer.getvalue()).decode("ascii") + "\n" if buffer.tell() < len(raw) else data


def clean_outputs(notebook: nbformat.NotebookNode) -> None:
    """Drop widget views (they need a live kernel) and the widget state; store large figures as palette PNGs."""
    notebook.metadata.pop("widgets", None)
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        kept = []
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if WIDGET_MIME in data:
                data.pop(WIDGET_MIME)
                if set(data) <= {"text/plain"}:  # only the widget's repr ("HBox(...)") was left
                    continue
            if "image/png" in data:
                data["image/png"] = smaller_png(data["image/png"])
            kept.append(output)
        cell.outputs = kept


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


def execute(source: Path, profile: str, timeout: int, cache: bool = True, store: bool = True) -> dict:
    """Run the chapter of ``source``; store its outputs and record (unless not ``store``); return the record."""
    from nbclient import NotebookClient

    target = source.with_suffix(".ipynb")
    notebook = nbformat.read(target, as_version=4)
    code = [i for i, cell in enumerate(notebook.cells) if cell.cell_type == "code"]
    client = NotebookClient(notebook, timeout=timeout, km=current_env_kernel_manager(),
                            resources={"metadata": {"path": str(source.parent)}})  # fmt: skip
    before = {path.relative_to(ROOT).as_posix(): (fingerprint.function_fingerprints(path),
              fingerprint.skeleton_fingerprint(path)) for path in sorted((ROOT / "ddpm_lib").rglob("*.py"))}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="ddpm-record-") as folder:
        env = {**os.environ, ENV_VAR: profile, fingerprint.RECORD_DIR_ENV: folder,
               "PYTHONPATH": os.pathsep.join(filter(None, [str(RECORDING), str(ROOT), os.environ.get("PYTHONPATH")])),
               result_cache.LOG_ENV: str(Path(folder) / "cache.log")}  # fmt: skip
        if cache:
            env.setdefault(result_cache.CACHE_ENV, str(result_cache.default_folder()))
        else:
            env.pop(result_cache.CACHE_ENV, None)
        started = time.perf_counter()
        with client.setup_kernel(env=env, cleanup_kc=True):  # the kernel's profile and recording
            poll_in_short_waits(client.kc.shell_channel)  # ipywidgets' comm traffic (nbclient #312)
            poll_in_short_waits(client.kc.iopub_channel)
            replayed, cell_seconds = 0.0, []
            for n, index in enumerate(code, 1):
                cell = notebook.cells[index]
                first = cell.source.strip().splitlines()[0][:60] if cell.source else ""
                print(f"  [{n}/{len(code)}] {time.perf_counter() - started:7.0f} s  {first}", flush=True)
                cell_started = time.perf_counter()
                client.execute_cell(cell, index)
                seconds = time.perf_counter() - cell_started
                # what the cell took, with the seconds its cache hits skipped (prose quotes cell times; a test
                # holds the prose to these); the probe goes after the last cell: nbclient stores a cell there
                probe = nbformat.v4.new_code_cell(CELL_PROBE)
                notebook.cells.append(probe)
                try:
                    client.execute_cell(probe, len(notebook.cells) - 1, store_history=False)
                finally:
                    notebook.cells.pop()
                now = _last_number("".join(output.get("text", "") for output in probe.outputs), replayed)
                cell_seconds.append(round(seconds + now - replayed, 1))
                replayed = now
            probe = nbformat.v4.new_code_cell(PROBE)  # the kernel's record and the cache's counts; not stored
            notebook.cells.append(probe)
            try:
                client.execute_cell(probe, len(notebook.cells) - 1, store_history=False)
            finally:
                notebook.cells.pop()
        executed = time.perf_counter() - started
        cache_use = json.loads(probe.outputs[-1]["text"])
        ran = fingerprint.read_folder(folder)
        log = Path(folder) / "cache.log"
        for line in log.read_text(encoding="utf-8").splitlines() if log.is_file() else []:
            print(f"  {line}")
    functions, skeletons = {}, {}
    for module in sorted(ran.modules | set(ran.functions)):
        defined, skeleton = before.get(module) or (fingerprint.function_fingerprints(ROOT / module),
                                                   fingerprint.skeleton_fingerprint(ROOT / module))  # fmt: skip
        skeletons[module] = skeleton
        if ran.functions.get(module):
            functions[module] = {name: defined.get(name, "") for name in sorted(ran.functions[module])}
    clean_outputs(notebook)
    import torch

    record = {
        "profile": profile,
        "code_sha256": code_hash(source),
        "functions": functions,
        "skeletons": skeletons,
        "weights": {name: fingerprint.file_fingerprint(ROOT / name) for name in sorted(ran.data)},
        "torch": torch.__version__,
        "wall_time_s": round(executed + cache_use["replayed_s"], 1),
        "executed_s": round(executed, 1),
        "cache": {"hits": cache_use["hits"], "misses": cache_use["misses"]},
        "cell_seconds": cell_seconds,  # per code cell, in order, with the seconds cache hits skipped
        "date": datetime.date.today().isoformat(),
        "command": f"python tools/execute_chapters.py --profile {profile} {source.name[:2]}",
    }
    if store:
        notebook.metadata[KEY] = record
        write_text(target, nbformat.writes(notebook) + "\n")
    return record


def machine() -> dict:
    """The CPU the chapters ran on, what PyTorch computes with there, and the simulation variables if set."""
    import platform

    import torch

    from ddpm_lib.precision import native_bf16

    model = platform.processor() or platform.machine()
    if Path("/proc/cpuinfo").is_file():
        model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), model)  # fmt: skip
    return {"cpu": model, "cores": os.cpu_count(), "torch": torch.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "native_bf16": native_bf16("cpu"),
            "simulation": {name: os.environ[name] for name in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")
                           if name in os.environ}}  # fmt: skip


def record_time(path: Path, source: Path, record: dict) -> None:
    """Keep a chapter's wall time in the JSON file ``path`` (``--time-only``), with the machine it ran on."""
    times = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {"chapters": {}}
    times["machine"] = machine()
    simulated = " ".join(f"{k}={v}" for k, v in times["machine"]["simulation"].items())
    times["chapters"][source.stem] = {
        "wall_time_s": record["executed_s"], "profile": record["profile"], "date": record["date"],
        "command": f"{simulated + ' ' if simulated else ''}python tools/execute_chapters.py --profile "
                   f"{record['profile']} --no-cache --time-only {path.as_posix()} {source.name[:2]}",
    }  # fmt: skip
    write_text(path, json.dumps(times, indent=2) + "\n")


def status_line(source: Path, profile: str) -> tuple[bool, str]:
    """(current?, the line ``--list`` prints for ``source``: its file name, ``current`` or ``stale``, and why)."""
    reasons = stale_reasons(source, profile)
    record = stored_record(source)
    made = (
        f" ({record['profile']} profile, {record['date']}, {record['wall_time_s']:.0f} s)" if record else ""
    )
    if not reasons:
        return True, f"{source.name} current{made}"
    return False, f"{source.name} stale{made}: " + "; ".join(reasons)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("chapters", nargs="*", help="chapter numbers, e.g. 05 07 (default: all)")
    parser.add_argument("--profile", choices=("full", "ci"), default="full")
    parser.add_argument(
        "--force", action="store_true", help="execute even chapters whose outputs are current"
    )
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--list", action="store_true", help="say which chapters are current or stale, and why")
    what.add_argument(
        "--check", action="store_true", help="like --list, and exit with status 1 if any is stale"
    )
    parser.add_argument("--no-cache", action="store_true", help="compute everything afresh (no result cache)")
    parser.add_argument("--timeout", type=int, default=7200, help="seconds per cell (default: 7200)")
    parser.add_argument("--time-only", type=Path, default=None, metavar="FILE",
                        help="execute (every chosen chapter, stale or not, without the result cache) without "
                        "storing outputs; keep each "
                        "chapter's wall time in FILE, with the machine (instructors.md's column for CPUs without "
                        "bfloat16 comes from such a run under ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2)")  # fmt: skip
    args = parser.parse_args(argv)
    sources = chapter_sources()
    known = {source.name[:2]: source for source in sources}
    unknown = [number for number in args.chapters if number.zfill(2) not in known]
    if unknown:
        parser.error(f"no chapter numbered {', '.join(unknown)}; chapters: {', '.join(known)}")
    chosen = [known[number.zfill(2)] for number in args.chapters] or sources
    if args.list or args.check:
        stale = []
        for source in chosen:
            current, line = status_line(source, args.profile)
            print(line)
            if not current:
                stale.append(source.name[:2])
        if args.check and stale:
            print(f"stale: {', '.join(stale)}; re-execute with  python tools/execute_chapters.py --profile "
                  f"{args.profile} {' '.join(stale)}", file=sys.stderr)  # fmt: skip
            return 1
        return 0
    if args.time_only is not None:
        for i, source in enumerate(chosen, 1):
            print(f"[{i}/{len(chosen)}] {source.stem}: timing in the {args.profile} profile", flush=True)
            record = execute(source, args.profile, args.timeout, cache=False, store=False)  # times: no cache
            record_time(args.time_only, source, record)
            print(
                f"[{i}/{len(chosen)}] {source.stem}: {record['executed_s']:.0f} s, kept in {args.time_only}"
            )
        return 0
    for i, source in enumerate(chosen, 1):
        reasons = stale_reasons(source, args.profile)
        if not reasons and not args.force:
            print(f"[{i}/{len(chosen)}] {source.stem}: outputs current ({args.profile} profile), skipped")
            continue
        print(f"[{i}/{len(chosen)}] {source.stem}: executing in the {args.profile} profile "
              f"({'; '.join(reasons) or 'forced'})", flush=True)  # fmt: skip
        record = execute(source, args.profile, args.timeout, cache=not args.no_cache)
        print(f"[{i}/{len(chosen)}] {source.stem}: done in {record['executed_s']:.0f} s (without the result cache: "
              f"{record['wall_time_s']:.0f} s; cache hits {record['cache']['hits']}, misses "
              f"{record['cache']['misses']}); outputs stored in {source.stem}.ipynb")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
