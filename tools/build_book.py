"""Build the book in one of its two editions, with one command.

    python tools/build_book.py                              # the learner edition (the public site): _build/html
    python tools/build_book.py --no-solutions               # ... with the solutions removed, for graded courses
    python tools/build_book.py --edition instructor         # everything + grading notes: _build/instructor/html

The **learner edition** shows each exercise with its solution folded and without its hidden checks (on the page
and in the downloadable sources); ``--no-solutions`` replaces the solutions by the student copy's stub. The
**instructor edition** shows everything and adds the grading notes page (``grading.md``). Both read the
chapters' outputs from the execution cache (``_build/.jupyter_cache``), so building the second edition
executes nothing the first already ran. Extra arguments go to ``jupyter-book build`` (e.g. ``--builder pdflatex``).
The edits themselves are made by ``tools/book_ext.py``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
OUTPUT = {"learner": ROOT, "instructor": ROOT / "_build" / "instructor"}  # jupyter-book adds _build/html


def instructor_toc(toc: Path, out: Path) -> Path:
    """``toc``, with the grading notes after the instructors' page, written to ``out``."""
    data = yaml.safe_load(toc.read_text(encoding="utf-8"))
    for part in data["parts"]:
        files = [entry.get("file") for entry in part["chapters"]]
        if "instructors" in files:
            part["chapters"].insert(files.index("instructors") + 1, {"file": "grading"})
            break
    else:
        raise SystemExit(f"{toc} has no 'instructors' page to put the grading notes after")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edition", choices=("learner", "instructor"), default="learner")
    parser.add_argument("--no-solutions", action="store_true",
                        help="learner edition only: replace the solutions by the student copy's stub")  # fmt: skip
    parser.add_argument("--toc", type=Path, default=ROOT / "toc.yml")
    args, extra = parser.parse_known_args(argv)
    if args.no_solutions and args.edition == "instructor":
        parser.error("--no-solutions: the instructor edition shows the solutions")
    toc = (
        args.toc
        if args.edition == "learner"
        else instructor_toc(args.toc, ROOT / "_build" / "toc_instructor.yml")
    )
    env = {**os.environ, "DDPM_BOOK_EDITION": args.edition,
           "DDPM_BOOK_SOLUTIONS": "remove" if args.no_solutions else "fold"}  # fmt: skip
    env.setdefault("DDPM_PROFILE", "ci")
    command = ["jupyter-book", "build", str(ROOT), "--config", str(ROOT / "book.yml"), "--toc", str(toc),
               "--path-output", str(OUTPUT[args.edition]), "-W", "-n", "--keep-going", *extra]  # fmt: skip
    print(
        "$",
        " ".join(command),
        f"(edition: {args.edition}, solutions: {env['DDPM_BOOK_SOLUTIONS']})",
        flush=True,
    )
    return subprocess.run(command, env=env, cwd=ROOT).returncode


if __name__ == "__main__":
    sys.exit(main())
