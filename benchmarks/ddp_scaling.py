"""Training throughput of ``python -m ddpm_lib train`` on 1 and N processes (DistributedDataParallel).

    python benchmarks/ddp_scaling.py                       # CPU: 1 process, torchrun 1 and 2 (about 3 min)
    python benchmarks/ddp_scaling.py --steps 8 --base-dim 8   # a smoke run
    python benchmarks/ddp_scaling.py --cpu-only --rounds 3 --record ddpm_lib/results/ddp_scaling.json
                                                           # the run chapter 14 prints (about 10 min)

Every figure comes from a real run of the command line it prints (a subprocess, in a temporary run
folder): images per second over the timed steps of its ``metrics.jsonl`` (the first ``--warmup`` steps
and the final sample grid are not counted), with the same **global** batch for every process count, so
the runs do the same work and reach the same weights (strong scaling). Each configuration gets the same
CPU cores in all: ``OMP_NUM_THREADS`` = cores // processes.

* CPU: ``python -m ddpm_lib`` (no launcher; also on one thread, the one-core baseline), ``torchrun``
  with 1 process, and with 2 (``gloo``). Two processes get no more cores than one process with two
  threads: they only trade intra-op threading (splitting every convolution) for data parallelism
  (splitting the batch, plus one all-reduce of the gradients per step), so expect no large speed-up.
* GPU (when CUDA is available): 1 GPU without a launcher, in float32 and ``--precision auto``, and ``torchrun``
  over every visible GPU (``nccl``) when there are several.

Configurations alternate in ``--rounds`` rounds, so a machine that gets busier slows all alike; the
median is reported, with the ratio to the first configuration of its device. Numbers are printed,
never asserted. ``--record`` writes them as JSON, with the machine, the date and every command.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ddpm_lib.checkpoint import write_json  # noqa: E402


def configurations(args: argparse.Namespace) -> list[dict]:
    cores = os.cpu_count() or 1
    size = ["--base-dim", str(args.base_dim), "--batch-size", str(args.batch_size)]
    common = ["--steps", str(args.steps), "--eval-every", "0", "--n-samples", "1", "--no-progress", *size]
    python = [sys.executable, "-m", "ddpm_lib", "train"]

    def torchrun(n: int) -> list[str]:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n),
                "-m", "ddpm_lib", "train"]  # fmt: skip

    runs = [
        {"device": "cpu", "name": "1 process, no launcher", "command": python, "processes": 1},
        {
            "device": "cpu",
            "name": "1 process, no launcher, 1 thread",
            "command": python,
            "processes": 1,
            "threads": 1,
        },  # fmt: skip
        {"device": "cpu", "name": "1 process, torchrun (gloo)", "command": torchrun(1), "processes": 1},
        {"device": "cpu", "name": "2 processes, torchrun (gloo)", "command": torchrun(2), "processes": 2},
    ]
    for run in runs:
        run["command"] = [*run["command"], *common, "--device", "cpu"]
        run.setdefault("threads", max(1, cores // run["processes"]))
    if torch.cuda.is_available() and not args.cpu_only:
        gpus = torch.cuda.device_count()
        gpu_runs = [
            {"name": "1 GPU, float32", "command": [*python, *common, "--device", "cuda"], "processes": 1},
            {
                "name": "1 GPU, auto precision",
                "command": [*python, *common, "--device", "cuda", "--precision", "auto"],
                "processes": 1,
            },
        ]
        if gpus > 1:
            for precision in ("float32", "auto"):
                gpu_runs.append({
                    "name": f"{gpus} GPUs, torchrun (nccl), {precision} precision",
                    "command": [*torchrun(gpus), *common, "--device", "cuda", "--precision", precision],
                    "processes": gpus,
                })  # fmt: skip
        for run in gpu_runs:
            run["device"] = "cuda"
            run["threads"] = max(1, cores // run["processes"])
        runs += gpu_runs
    return runs


def measure(run: dict, warmup: int, folder: Path) -> float:
    out = folder / f"run{len(list(folder.iterdir()))}"
    env = {**os.environ, "OMP_NUM_THREADS": str(run["threads"])}
    result = subprocess.run([*run["command"], "--out", str(out)], capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise SystemExit(f"{shlex.join(run['command'])} failed:\n{result.stderr[-3000:]}")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    config = json.loads((out / "config.json").read_text())
    assert config["world_size"] == run["processes"], config
    timed = records[warmup:]
    seconds = sum(config["batch_size"] / r["images_per_s"] for r in timed)
    return len(timed) * config["batch_size"] / seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="steps per run, warm-up included (default 30)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed first steps (default 3)")
    parser.add_argument("--batch-size", type=int, default=128, help="global batch (default 128)")
    parser.add_argument("--base-dim", type=int, default=32, help="U-Net width (default 32, the course's)")
    parser.add_argument("--rounds", type=int, default=1, help="alternating rounds (default 1)")
    parser.add_argument("--cpu-only", action="store_true", help="skip the GPU figures")
    parser.add_argument(
        "--record", type=Path, default=None, help="write the figures and their commands as JSON here"
    )
    args = parser.parse_args(argv)
    if args.steps <= args.warmup:
        parser.error("--steps must exceed --warmup")
    runs = configurations(args)
    this_command = shlex.join(
        ["python", "benchmarks/ddp_scaling.py", *(sys.argv[1:] if argv is None else argv)]
    )
    print("command:", this_command)
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    print(f"torch {torch.__version__}, {os.cpu_count()} CPU cores, GPU: {gpu}; global batch {args.batch_size}, "
          f"base_dim {args.base_dim}, {args.steps - args.warmup} timed steps per run")  # fmt: skip
    results: list[list[float]] = [[] for _ in runs]
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(args.rounds):
            for i, run in enumerate(runs):
                results[i].append(measure(run, args.warmup, Path(folder)))
    first: dict[str, float] = {}
    rows = []
    for run, values in zip(runs, results, strict=True):
        median = statistics.median(values)
        base = first.setdefault(run["device"], median)
        command = f"OMP_NUM_THREADS={run['threads']} {shlex.join(['python', *run['command'][1:]])} --out RUN"
        print(f"\n[{run['device']}] {run['name']}: {median:8.1f} images/s  (ratio to the first "
              f"{run['device']} figure: {median / base:.2f}x; rounds: {', '.join(f'{v:.1f}' for v in values)})")  # fmt: skip
        print(f"    {command}")
        rows.append({"device": run["device"], "name": run["name"], "processes": run["processes"],
                     "threads": run["threads"], "images_per_s": median, "rounds": values,
                     "ratio": median / base, "command": command})  # fmt: skip
    if args.record is not None:
        write_json(args.record, {
            "command": this_command,
            "torch": torch.__version__, "cpu_cores": os.cpu_count(), "machine": platform.machine(),
            "gpu": gpu, "date": time.strftime("%Y-%m-%d"), "global_batch": args.batch_size,
            "base_dim": args.base_dim, "timed_steps": args.steps - args.warmup, "rounds": args.rounds,
            "rows": rows,
        })  # fmt: skip
        print(f"\nrecorded in {args.record}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
