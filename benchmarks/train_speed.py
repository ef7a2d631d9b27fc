"""End-to-end training throughput of the CLI loop against the bare model step, in one process.

    python benchmarks/train_speed.py              # 80 steps each, about 1-2 minutes on 2 cores
    python benchmarks/train_speed.py --steps 20   # a smoke run

* bare step: ``train_step`` on one batch already in memory, in a plain Python loop;
* CLI loop: ``ddpm_lib.runner.run_training`` as ``python -m ddpm_lib train`` runs it — data order,
  EMA update, metrics file, progress bar and periodic checkpoints included (sample grids excluded:
  they are not training, and the run's own clock skips them).

The two alternate in rounds so a machine that gets busier slows both alike. Target: the loop costs at
most 10% over the bare step. Numbers are printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from ddpm_lib.config import TrainConfig
from ddpm_lib.runner import run_training
from ddpm_lib.schedule import LinearBetaScheduler
from ddpm_lib.training import make_lr_scheduler, make_optimizer, train_step
from ddpm_lib.unet import Unet


def bare(steps: int, batch_size: int, precision: str) -> float:
    torch.manual_seed(0)
    model = Unet()
    optimizer = make_optimizer(model)
    lr_scheduler = make_lr_scheduler(optimizer, 1e-3, steps + 2)
    scheduler = LinearBetaScheduler()
    x0 = torch.rand((batch_size, 1, 28, 28)) * 2 - 1
    generator = torch.Generator().manual_seed(0)
    for _ in range(2):  # warm-up: oneDNN builds its kernels on the first calls
        train_step(model, optimizer, lr_scheduler, scheduler, x0, generator, precision=precision)
    start = time.perf_counter()
    for _ in range(steps):
        train_step(model, optimizer, lr_scheduler, scheduler, x0, generator, precision=precision)
    return steps * batch_size / (time.perf_counter() - start)


def loop(steps: int, batch_size: int, precision: str) -> float:
    with tempfile.TemporaryDirectory() as folder:
        config = TrainConfig(
            steps=steps + 2, batch_size=batch_size, precision=precision, eval_every=0, n_samples=1
        )
        run_training(config, Path(folder) / "run", progress=True)
        records = [
            json.loads(line) for line in (Path(folder) / "run" / "metrics.jsonl").read_text().splitlines()
        ]
    timed = records[2:]  # the same two warm-up steps as the bare loop
    return len(timed) * batch_size / sum(batch_size / r["images_per_s"] for r in timed)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="timed steps per round (default 40)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds (default 2)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument(
        "--precision",
        choices=("float32", "bfloat16", "float16"),
        default="float32",
        help="the forward pass's precision in both (default: float32)",
    )
    args = parser.parse_args()
    print("command:", shlex.join([sys.executable, *sys.argv]))
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}, precision {args.precision}"
    )
    results: dict[str, list[float]] = {"bare step": [], "CLI loop": []}
    for _ in range(args.rounds):
        results["bare step"].append(bare(args.steps, args.batch_size, args.precision))
        results["CLI loop"].append(loop(args.steps, args.batch_size, args.precision))
    medians = {name: statistics.median(values) for name, values in results.items()}
    for name, value in medians.items():
        print(f"{name:>10}: {value:7.1f} images/s  (rounds: {', '.join(f'{v:.1f}' for v in results[name])})")
    overhead = medians["bare step"] / medians["CLI loop"] - 1
    print(f"ratio CLI loop / bare step: {medians['CLI loop'] / medians['bare step']:.3f} "
          f"(loop overhead {overhead:+.1%}; target <= +10%)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
