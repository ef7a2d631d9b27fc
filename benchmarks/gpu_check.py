"""GPU check: the README's main command and chapter 11's quick run on a CUDA GPU (or Apple's mps), timed and scored.

    python benchmarks/gpu_check.py                       # on a machine with a CUDA GPU: about 5 minutes
    python benchmarks/gpu_check.py --device mps          # on Apple silicon
    python benchmarks/gpu_check.py --device cpu --steps 20 --n 100 --no-chapter   # a dry run of the script itself

The course is developed on CPUs; its CUDA and mps paths are tested with the device queries patched
(``tests/test_precision.py``). This script is for whoever has a GPU machine: it runs, as a learner would,

1. ``python -m ddpm_lib train --preset quick --out OUT/demo`` on the device (the README's main command), timed;
2. ``python -m ddpm_lib evaluate --checkpoint OUT/demo/checkpoints/last.pt --n N``: chapter 07's scores of what it
   trained (confident share, classes, Fréchet distance against the real-vs-real floor);
3. chapter 11 in the full profile (its quick run trains live and is judged against the bar), executed in a kernel
   whose ``DDPM_DEVICE`` is the device, timed; the executed notebook is kept in ``OUT``,

and writes ``OUT/report.json``: the device and precision ``ddpm_lib.precision`` chose there, each step's wall time,
the scores, and the lines chapter 11 printed about its quick run. Please send that file (and the machine's name)
to the maintainers: the README quotes GPU times only from such a report.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(command: list[str], env: dict | None = None) -> float:
    """Run ``command`` from the repository's root, its output shown; its wall time in seconds (a failure raises)."""
    print("$ " + " ".join(command), flush=True)
    started = time.perf_counter()
    subprocess.run(command, cwd=ROOT, env=env, check=True)
    return round(time.perf_counter() - started, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "mps", "cpu"), default="cuda", help="default: cuda")
    parser.add_argument("--out", type=Path, default=Path("runs/gpu_check"), help="default: runs/gpu_check")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the preset's)")
    parser.add_argument("--n", type=int, default=500, help="digits evaluate draws (default: 500)")
    parser.add_argument("--no-chapter", action="store_true", help="skip chapter 11")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(ROOT))
    from ddpm_lib.errors import UsageError
    from ddpm_lib.precision import choose

    try:
        compute = choose(args.device)
    except UsageError as error:
        parser.error(str(error))
    out = args.out if args.out.is_absolute() else ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    python = sys.executable
    report = {"device": compute.describe(), "python": sys.version.split()[0]}
    import torch

    report["torch"] = torch.__version__
    if compute.device.type == "cuda":
        report["gpu"] = torch.cuda.get_device_name(compute.device)

    train = [python, "-m", "ddpm_lib", "train", "--preset", "quick", "--out", str(out / "demo"),
             "--device", args.device, "--no-progress"] + (["--steps", str(args.steps)] if args.steps else [])  # fmt: skip
    report["train_s"] = run(train)
    report["train_command"] = " ".join(train[1:])
    scores = out / "demo_scores.json"
    report["evaluate_s"] = run([python, "-m", "ddpm_lib", "evaluate", "--checkpoint",
                                str(out / "demo" / "checkpoints" / "last.pt"), "--n", str(args.n), "--device",
                                args.device, "--no-progress", "--json", str(scores)])  # fmt: skip
    evaluated = json.loads(scores.read_text(encoding="utf-8"))
    report["scores"] = {"bar_met": evaluated["bar_met"], "results": evaluated["results"]}

    if not args.no_chapter:
        import nbformat
        from nbclient import NotebookClient

        notebook = nbformat.read(ROOT / "chapters" / "11_putting_together.ipynb", as_version=4)
        env = {**os.environ, "DDPM_DEVICE": args.device, "DDPM_PROFILE": "full"}
        started = time.perf_counter()
        client = NotebookClient(notebook, timeout=3600, kernel_name="python3",
                                resources={"metadata": {"path": str(ROOT / "chapters")}})  # fmt: skip
        with client.setup_kernel(env=env):
            for index, cell in enumerate(notebook.cells):
                if cell.cell_type == "code":
                    client.execute_cell(cell, index)
        report["chapter_11_s"] = round(time.perf_counter() - started, 1)
        nbformat.write(notebook, out / "11_putting_together.executed.ipynb")
        printed = [output.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                   for output in cell.outputs if output.get("name") == "stdout"]  # fmt: skip
        report["chapter_11_lines"] = [line for text in printed for line in text.splitlines()
                                      if any(word in line for word in ("quick", "confident", "bar", "device"))]  # fmt: skip

    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(report, indent=2))
    print(f"wrote {out / 'report.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
