"""Seconds per 1000-step sampling run of 64 digits: float32 against faster CPU settings, in one process.

    python benchmarks/sampling_speed.py            # full 1000-step chains, about 3-4 minutes on 2 cores
    python benchmarks/sampling_speed.py --steps 100   # 100-step respaced chains, time scaled to 1000 steps

Settings, all on the shipped weights and the same starting noise and random numbers, each drawn by
``ddpm_lib.generation.generate`` (``sample_clip``):

* ``float32``: ``generate(..., precision="float32")`` (``torch.no_grad``);
* ``inference_mode``: the same under ``torch.inference_mode``;
* ``bf16``: bfloat16 autocast for the network (the update arithmetic stays float32): ``generate``'s default on a
  CPU with bfloat16 instructions;
* ``bf16 + channels_last``: the network's weights and inputs in channels-last memory format.

Next to each speed-up: the largest pixel difference from the float32 samples (on [-1, 1]), so a
fast setting that changes the digits shows it. Numbers are printed, never asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import sys
import time

import torch

from ddpm_lib.generation import generate
from ddpm_lib.pretrained import load_pretrained


class ChannelsLast(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model.to(memory_format=torch.channels_last)

    def forward(self, x, t):
        return self.model(x.contiguous(memory_format=torch.channels_last), t).contiguous()


def run(model, scheduler, steps, n, context, bf16: bool) -> tuple[float, torch.Tensor]:
    steps = min(steps, scheduler.num_timesteps)
    with context():
        start = time.perf_counter()
        out = generate(model, scheduler, n, sampler="clip", steps=steps, seed=0,
                       precision="bfloat16" if bf16 else "float32")  # fmt: skip
        seconds = time.perf_counter() - start
    return seconds * scheduler.num_timesteps / steps, out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000, help="reverse steps timed (default: all 1000)")
    parser.add_argument("--n", type=int, default=64, help="digits per run (default 64)")
    args = parser.parse_args()
    print("command:", shlex.join([sys.executable, *sys.argv]))
    model, scheduler, _ = load_pretrained()
    model.requires_grad_(False)
    settings = {
        "float32": (model, contextlib.nullcontext, False),
        "inference_mode": (model, torch.inference_mode, False),
        "bf16": (model, contextlib.nullcontext, True),
        "bf16 + channels_last": (ChannelsLast(model), contextlib.nullcontext, True),
    }
    run(model, scheduler, 5, args.n, contextlib.nullcontext, False)  # warm-up
    net, context, bf16 = settings["float32"]
    baseline_seconds, baseline = run(net, scheduler, args.steps, args.n, context, bf16)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.n} digits; "
          f"{args.steps}-step chains timed, scaled to 1000 steps")  # fmt: skip
    print(f"{'setting':>22}  s/1000 steps  speed-up  max |pixel diff|")
    print(f"{'float32':>22}  {baseline_seconds:12.1f}  {1.0:8.2f}  {0.0:16.4f}")
    for name, (net, context, bf16) in list(settings.items())[1:]:
        seconds, out = run(net, scheduler, args.steps, args.n, context, bf16)
        diff = (out - baseline).abs().max().item()
        print(f"{name:>22}  {seconds:12.1f}  {baseline_seconds / seconds:8.2f}  {diff:16.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
