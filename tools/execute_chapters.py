"""Execute chapters and store their outputs in the paired notebooks, with a record of what produced them.

    python tools/execute_chapters.py --profile full            # every chapter whose stored outputs are stale
    python tools/execute_chapters.py --profile full 05 07      # chapters 05 and 07
    python tools/execute_chapters.py --profile full --force 01 # again, although its outputs are current
    python tools/execute_chapters.py --list                    # what is stored (profile, date, wall time), what is stale

Each chapter runs top to bottom in a fresh kernel of this Python environment (``DDPM_PROFILE`` set to the
profile, the chapter's folder as working directory), cell by cell with progress on the terminal; its outputs go
into ``chapters/NN_topic.ipynb`` (written atomically when the chapter has finished, so an interrupted run loses
at most the chapter it was in; run the command again to resume: current chapters are skipped). The notebook's
metadata records, under ``ddpm_course``, what produced the outputs:

- ``code_sha256``: a hash of the chapter's code cells as Python tokens (edits to prose, to comments and to
  blank lines leave it unchanged);
- ``modules``: the SHA-256 of every ``ddpm_lib`` module the kernel had imported by the end, by file (of its
  Python tokens: comments do not count);
- ``weights``: the SHA-256 of every file under ``ddpm_lib/weights`` the kernel opened (shipped weights,
  snapshots, provenance records), by file, so that re-shipping one model makes stale only the chapters that read
  it (an audit hook installed before the first cell records the opens; records made before it have
  ``weights_sha256``, a hash of all the shipped weights, which is still honoured);
- the profile, torch's version, the wall time, the date and this command.

``tests/test_stored_outputs.py`` recomputes the hashes and fails, naming the command that refreshes them, when
a chapter's code, a module it used or the weights changed after its outputs were made. Widget output (progress
bars drawn as ipywidgets, sliders) and widget state are not stored: they need a live kernel to mean anything.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import io
import json
import os
import sys
import time
import tokenize
from pathlib import Path

import jupytext
import nbformat

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from ddpm_lib.checkpoint import write_text  # noqa: E402
from ddpm_lib.course import chapter_sources  # noqa: E402
from ddpm_lib.profile import ENV_VAR  # noqa: E402

KEY = "ddpm_course"
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
WEIGHTS = ROOT / "ddpm_lib" / "weights"
#: run before the chapter, not stored: record, in a module of its own, every file under WEIGHTS opened
AUDIT = (
    "import os as _o, sys as _s, types as _t\n"
    "_s.modules['_ddpm_weights_opened'] = _t.ModuleType('_ddpm_weights_opened')\n"
    "_s.modules['_ddpm_weights_opened'].paths = set()\n"
    f"def _ddpm_audit(event, args, _root={str(WEIGHTS.resolve())!r}, _paths=_s.modules['_ddpm_weights_opened'].paths, _os=_o):\n"
    "    if event == 'open' and isinstance(args[0], (str, _os.PathLike)):\n"
    "        path = _os.path.realpath(_os.fspath(args[0]))\n"
    "        if path.startswith(_root + _os.sep):\n"
    "            _paths.add(path)\n"
    "_s.addaudithook(_ddpm_audit)\n"
    "del _o, _s, _t, _ddpm_audit\n"
)
#: run after the chapter: the files of the ddpm_lib modules the kernel imported and of the weights it opened, as JSON
PROBE = (
    "import json as _j, sys as _s; print(_j.dumps({'modules': sorted(m.__file__ for n, m in _s.modules.items() "
    "if (n == 'ddpm_lib' or n.startswith('ddpm_lib.')) and getattr(m, '__file__', None)), "
    "'weights': sorted(_s.modules['_ddpm_weights_opened'].paths)}))"
)


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


def file_hash(path: Path) -> str:
    """The SHA-256 of a file: of its Python tokens for a ``.py`` file (so a comment, such as the ``# --- chapters/…``
    line a promoted function's cell moved to, does not count), of its bytes otherwise; ``""`` when it is gone."""
    if not path.is_file():
        return ""
    if path.suffix == ".py":
        return sha256(executed_tokens(path.read_text(encoding="utf-8")).encode("utf-8"))
    return sha256(path.read_bytes())


def module_hashes(paths: list[str]) -> dict[str, str]:
    """``{path relative to the repository: file_hash}`` of the files ``paths`` (absolute, or relative to the
    repository)."""
    files = sorted({(ROOT / path).resolve() for path in paths})
    return {path.relative_to(ROOT).as_posix(): file_hash(path) for path in files}


def weights_hash() -> str:
    weights = sorted((ROOT / "ddpm_lib" / "weights").rglob("*.pt"))
    return sha256(
        b"".join(p.relative_to(ROOT).as_posix().encode() + sha256(p.read_bytes()).encode() for p in weights)
    )


def changed_files(recorded: dict[str, str]) -> list[str]:
    """The files of ``recorded`` (path -> SHA-256, as :func:`module_hashes` gives) whose bytes differ now, sorted."""
    now = module_hashes(list(recorded))
    return sorted(path for path, digest in recorded.items() if now.get(path) != digest)


def stored_record(source: Path) -> dict | None:
    """The record of what made the outputs stored in ``source``'s paired notebook (None when it stores none)."""
    return nbformat.read(source.with_suffix(".ipynb"), as_version=4).metadata.get(KEY)


def stale_reasons(source: Path, profile: str | None = None) -> list[str]:
    """Why the stored outputs of ``source``'s notebook are out of date ([] when current; no outputs is a reason)."""
    record = stored_record(source)
    if record is None:
        return ["no stored outputs"]
    reasons = []
    if profile is not None and record["profile"] != profile:
        reasons.append(f"made in the {record['profile']} profile")
    if record["code_sha256"] != code_hash(source):
        reasons.append("its code cells changed")
    changed = changed_files(record["modules"])
    if changed:
        reasons.append(f"ddpm_lib changed: {', '.join(changed)}")
    if "weights" in record:
        changed = changed_files(record["weights"])
        if changed:
            reasons.append(f"shipped weights changed: {', '.join(changed)}")
    elif record.get("weights_sha256") is not None and record["weights_sha256"] != weights_hash():
        reasons.append("the shipped weights changed")
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


def execute(source: Path, profile: str, timeout: int) -> float:
    """Run the chapter of ``source``; store its outputs and record; return the wall time in seconds."""
    # the test runner's kernel handling: this interpreter's kernel, polled in short waits (nbclient #312)
    from chapter_run import current_env_kernel_manager, poll_in_short_waits
    from nbclient import NotebookClient

    target = source.with_suffix(".ipynb")
    notebook = nbformat.read(target, as_version=4)
    code = [i for i, cell in enumerate(notebook.cells) if cell.cell_type == "code"]
    client = NotebookClient(notebook, timeout=timeout, km=current_env_kernel_manager(),
                            resources={"metadata": {"path": str(source.parent)}})  # fmt: skip
    started = time.perf_counter()
    with client.setup_kernel(env={**os.environ, ENV_VAR: profile}, cleanup_kc=True):  # the kernel's profile
        poll_in_short_waits(
            client.kc.shell_channel
        )  # ipywidgets' comm traffic (nbclient #312, see chapter_run)
        poll_in_short_waits(client.kc.iopub_channel)
        audit = nbformat.v4.new_code_cell(AUDIT)  # records the weights the chapter opens; not stored
        notebook.cells.append(audit)
        try:
            client.execute_cell(audit, len(notebook.cells) - 1, store_history=False)
        finally:
            notebook.cells.pop()
        for n, index in enumerate(code, 1):
            first = (
                notebook.cells[index].source.strip().splitlines()[0][:60]
                if notebook.cells[index].source
                else ""
            )
            print(f"  [{n}/{len(code)}] {time.perf_counter() - started:7.0f} s  {first}", flush=True)
            client.execute_cell(notebook.cells[index], index)
        probe = nbformat.v4.new_code_cell(PROBE)  # the ddpm_lib modules and weights it used; not stored
        notebook.cells.append(probe)
        try:
            client.execute_cell(probe, len(notebook.cells) - 1)
        finally:
            notebook.cells.pop()
    wall = time.perf_counter() - started
    used = json.loads(probe.outputs[0]["text"])
    modules, weights = module_hashes(used["modules"]), module_hashes(used["weights"])
    clean_outputs(notebook)
    import torch

    notebook.metadata[KEY] = {
        "profile": profile,
        "code_sha256": code_hash(source),
        "modules": modules,
        "weights": weights,
        "torch": torch.__version__,
        "wall_time_s": round(wall, 1),
        "date": datetime.date.today().isoformat(),
        "command": f"python tools/execute_chapters.py --profile {profile} {source.name[:2]}",
    }
    write_text(target, nbformat.writes(notebook) + "\n")
    return wall


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("chapters", nargs="*", help="chapter numbers, e.g. 05 07 (default: all)")
    parser.add_argument("--profile", choices=("full", "ci"), default="full")
    parser.add_argument(
        "--force", action="store_true", help="execute even chapters whose outputs are current"
    )
    parser.add_argument(
        "--list", action="store_true", help="say what is stored and what is stale; run nothing"
    )
    parser.add_argument("--timeout", type=int, default=7200, help="seconds per cell (default: 7200)")
    args = parser.parse_args(argv)
    sources = chapter_sources()
    known = {source.name[:2]: source for source in sources}
    unknown = [number for number in args.chapters if number.zfill(2) not in known]
    if unknown:
        parser.error(f"no chapter numbered {', '.join(unknown)}; chapters: {', '.join(known)}")
    chosen = [known[number.zfill(2)] for number in args.chapters] or sources
    for i, source in enumerate(chosen, 1):
        reasons = stale_reasons(source, args.profile)
        if args.list:
            record = stored_record(source)
            made = (
                f" ({record['profile']} profile, {record['date']}, {record['wall_time_s']:.0f} s, torch {record['torch']})"
                if record
                else ""
            )
            print(f"{source.stem}: {'current' if not reasons else 'stale: ' + '; '.join(reasons)}{made}")
            continue
        if not reasons and not args.force:
            print(f"[{i}/{len(chosen)}] {source.stem}: outputs current ({args.profile} profile), skipped")
            continue
        print(f"[{i}/{len(chosen)}] {source.stem}: executing in the {args.profile} profile "
              f"({'; '.join(reasons) or 'forced'})", flush=True)  # fmt: skip
        wall = execute(source, args.profile, args.timeout)
        print(
            f"[{i}/{len(chosen)}] {source.stem}: done in {wall:.0f} s; outputs stored in {source.stem}.ipynb"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
