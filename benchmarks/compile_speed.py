"""Does ``torch.compile`` speed up training on this CPU? The quick recipe's training step, eager against compiled.

    python benchmarks/compile_speed.py                 # 30 steps per round, 3 rounds: a few minutes on 2 cores
    python benchmarks/compile_speed.py --steps 5 --rounds 1   # a smoke run

Both sides run :func:`ddpm_lib.training.train_step` with the ``quick-unconditional`` preset's network, schedule,
learning rate, precision and loss weighting (chapter 11: two dense units per block, self-attention at 7×7,
v-prediction, bfloat16 autocast, min-SNR-γ), batch 64, on the same batch in memory, with fresh weights and
optimisers from the same seed. The compiled side wraps the network in
``torch.compile`` (inductor, the default backend; it builds C++ kernels with the machine's compiler on the first
calls), and the time that first compilation takes is printed on its own: a quick run pays it once, so it counts
against the speed-up. Inductor caches what it built on disk (under the system's temporary folder), so only the
first run on a machine pays the whole compilation; later runs print a much shorter first step. The two sides alternate in rounds, so a machine that gets busier slows both alike.

Prints images/s for each side (median over rounds), the ratio compiled / eager, the compile time, and how many
training steps the speed-up must pay for before compiling saves time. Numbers are printed, never asserted.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ddpm_lib.config import build_model, preset_defaults, schedule_for  # noqa: E402
from ddpm_lib.precision import choose  # noqa: E402
from ddpm_lib.training import make_optimizer, train_step  # noqa: E402

#: the recipe both sides train with (the quick preset's without labels)
RECIPE = preset_defaults("quick-unconditional")
#: the recipe's precision on this CPU (ddpm_lib.precision: bfloat16 only with bfloat16 instructions)
PRECISION = choose("cpu", RECIPE.precision).precision


class Side:
    """One side of the comparison: a network (compiled or not), its optimiser, and the batch it trains on."""

    def __init__(self, compiled: bool, batch_size: int, seed: int):
        torch.manual_seed(seed)
        network = build_model(RECIPE)
        self.model = torch.compile(network) if compiled else network
        self.optimizer = make_optimizer(network, RECIPE.lr)
        self.schedule = schedule_for(RECIPE)
        self.x0 = torch.rand((batch_size, 1, 28, 28), generator=torch.Generator().manual_seed(seed)) * 2 - 1
        self.generator = torch.Generator().manual_seed(seed)
        self.batch_size = batch_size

    def step(self) -> None:
        train_step(self.model, self.optimizer, None, self.schedule, self.x0, self.generator, RECIPE.grad_clip,
                   precision=PRECISION, weighting=RECIPE.loss_weighting, min_snr_gamma=RECIPE.min_snr_gamma)  # fmt: skip

    def images_per_s(self, steps: int) -> float:
        start = time.perf_counter()
        for _ in range(steps):
            self.step()
        return steps * self.batch_size / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="timed steps per round and side (default 30)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    parser.add_argument(
        "--batch-size", type=int, default=64, help="batch size (default 64, the quick recipe's)"
    )
    args = parser.parse_args(argv)
    for name in ("steps", "rounds", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    print("command:", shlex.join(["python", "benchmarks/compile_speed.py", *(argv or sys.argv[1:])]))
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}, precision {PRECISION}"
    )

    eager, compiled = Side(False, args.batch_size, 0), Side(True, args.batch_size, 0)
    for _ in range(2):  # oneDNN builds its kernels on the first calls
        eager.step()
    start = time.perf_counter()
    compiled.step()  # the first call compiles the forward and backward graphs
    compile_s = time.perf_counter() - start
    compiled.step()  # and a second, so that neither side's timed rounds include a first call
    print(f"first compiled step (compilation included): {compile_s:.1f} s")

    results: dict[str, list[float]] = {"eager": [], "compiled": []}
    for _ in range(args.rounds):
        results["eager"].append(eager.images_per_s(args.steps))
        results["compiled"].append(compiled.images_per_s(args.steps))
    medians = {name: statistics.median(values) for name, values in results.items()}
    for name, value in medians.items():
        print(f"{name:>9}: {value:6.1f} images/s  (rounds: {', '.join(f'{v:.1f}' for v in results[name])})")
    ratio = medians["compiled"] / medians["eager"]
    print(f"ratio compiled / eager: {ratio:.3f}")
    saved_per_step = args.batch_size / medians["eager"] - args.batch_size / medians["compiled"]
    if saved_per_step > 0:
        print(f"compiling pays for itself after {compile_s / saved_per_step:.0f} steps "
              f"({saved_per_step * 1000:.0f} ms saved per step)")  # fmt: skip
    else:
        print("compiling never pays for itself here: a compiled step is no faster")
    return 0


if __name__ == "__main__":
    sys.exit(main())
