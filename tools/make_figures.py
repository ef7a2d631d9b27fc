"""Regenerate figures/ from the chapters: every image there is drawn by chapter code.

    python tools/make_figures.py            # all chapters, full profile
    python tools/make_figures.py 02         # chapters whose name starts with 02

Each chapter runs top to bottom in a fresh kernel with DDPM_FIGURES_DIR=figures, which makes
``ddpm_lib.plotting.save_figure`` write the figures it is given.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import jupytext
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]


def main(prefixes: list[str]) -> int:
    env = {**os.environ, "DDPM_FIGURES_DIR": str(ROOT / "figures"), "DDPM_PROFILE": "full"}
    for source in sorted((ROOT / "chapters").glob("[0-9][0-9]_*.py")):
        if prefixes and not any(source.name.startswith(p) for p in prefixes):
            continue
        print(f"running {source.relative_to(ROOT)} ...", flush=True)
        notebook = jupytext.read(source)
        client = NotebookClient(notebook, timeout=3600, resources={"metadata": {"path": str(source.parent)}})
        client.execute(env=env)
    for figure in sorted((ROOT / "figures").glob("*.png")):
        print(f"  {figure.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
