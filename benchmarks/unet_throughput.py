"""CPU throughput of the course's U-Net against the reference configuration, in one process.

    python benchmarks/unet_throughput.py            # about two minutes on 2 cores
    python benchmarks/unet_throughput.py --quick    # a smoke run of a few iterations

* training: images/s of forward + backward + AdamW step on a batch of 128 random 28×28 images
  with random timesteps (the data loader is not timed: the digits are tensors in memory);
* sampling: forward passes/s on a batch of 64 sharing one timestep, in eval mode — each of the
  1000 steps of DDPM sampling costs one of these.

The reference runs as its script does: float32, ``torch.no_grad`` for sampling. On the course's
default model the table also tries the cheap CPU levers — bfloat16 autocast, channels-last memory
format, ``torch.inference_mode`` — and two architecture variants, so the choice of levers and of
``unit="dense"`` with one unit per block can be read off the numbers. The headline compares the
default with the levers we keep (bfloat16 autocast, inference mode) against the reference.

All variants are measured in interleaved rounds after warm-up steps (oneDNN builds its kernels in the
first few calls), so a machine that gets busier slows every variant alike; each figure is the median
over rounds (the ratio of the best rounds is printed too). Timings vary between machines and runs:
there is no pass/fail, only the printed numbers.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ddpm_lib.precision import NO_NATIVE_BF16, native_bf16
from ddpm_lib.unet import REFERENCE_CONFIG, Unet

TRAIN_BATCH, SAMPLE_BATCH = 128, 64
TARGET_TRAIN_RATIO, TARGET_SAMPLE_RATIO = 1.5, 2.0


@dataclass
class Variant:
    name: str
    config: dict = field(default_factory=dict)
    bf16: bool = False
    channels_last: bool = False
    inference_mode: bool = False


REFERENCE = Variant("reference (float32, as written)", REFERENCE_CONFIG)
HEADLINE = Variant("course default + bf16 + inference_mode", bf16=True, inference_mode=True)
VARIANTS = [
    REFERENCE,
    Variant("reference + bf16 + inference_mode", REFERENCE_CONFIG, bf16=True, inference_mode=True),
    Variant(
        "reference units, GroupNorm, sinusoidal",
        dict(unit="shuffle", units_per_block=4, mid_units=3),
        inference_mode=True,
    ),
    Variant("course default, float32", inference_mode=True),
    Variant("course default, float32, channels_last", channels_last=True, inference_mode=True),
    HEADLINE,
    Variant("course default + bf16 + channels_last", bf16=True, channels_last=True, inference_mode=True),
    Variant(
        "2 dense units per block + bf16", dict(units_per_block=2, mid_units=2), bf16=True, inference_mode=True
    ),
]


class Measurement:
    """One variant's model, optimiser and fixed random inputs, and its timings per round."""

    def __init__(self, variant: Variant, seed: int):
        self.variant = variant
        generator = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        self.model = Unet(**variant.config)
        self.parameters = sum(p.numel() for p in self.model.parameters())
        self.x = torch.randn(TRAIN_BATCH, 1, 28, 28, generator=generator)
        self.t = torch.randint(0, 1000, (TRAIN_BATCH,), generator=generator)
        self.noise = torch.randn(self.x.shape, generator=generator)
        self.x_sample = torch.randn(SAMPLE_BATCH, 1, 28, 28, generator=generator)
        if variant.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
            self.x = self.x.contiguous(memory_format=torch.channels_last)
            self.x_sample = self.x_sample.contiguous(memory_format=torch.channels_last)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-3)
        self.train_rates: list[float] = []
        self.sample_rates: list[float] = []

    def autocast(self):
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.variant.bf16)

    def train_step(self) -> None:
        with self.autocast():
            prediction = self.model(self.x, self.t)
        loss = F.mse_loss(prediction.float(), self.noise)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def sample_forward(self) -> None:
        grad_mode = torch.inference_mode() if self.variant.inference_mode else torch.no_grad()
        with grad_mode, self.autocast():
            self.model(self.x_sample, 500)

    def run(self, train_steps: int, forwards: int, record: bool = True) -> None:
        self.model.train()
        start = time.perf_counter()
        for _ in range(train_steps):
            self.train_step()
        train_rate = train_steps * TRAIN_BATCH / (time.perf_counter() - start)
        self.model.eval()
        start = time.perf_counter()
        for _ in range(forwards):
            self.sample_forward()
        sample_rate = forwards / (time.perf_counter() - start)
        if record:
            self.train_rates.append(train_rate)
            self.sample_rates.append(sample_rate)


def spread(rates: list[float], digits: int) -> str:
    return f"{statistics.median(rates):7.{digits}f} ({min(rates):.{digits}f}-{max(rates):.{digits}f})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few iterations only (a smoke run)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5; quick: 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    rounds = args.rounds if args.rounds is not None else (1 if args.quick else 5)
    if rounds < 1:
        parser.error(f"--rounds must be >= 1, got {rounds}")
    warmup_steps, train_steps, forwards = (2, 1, 2) if args.quick else (3, 2, 4)

    command = shlex.join(["python", *sys.argv]) if argv is None else shlex.join(["python", __file__, *argv])
    print(f"command: {command}")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"CPU capability {torch.backends.cpu.get_cpu_capability()}; "
        f"{rounds} round(s) of {train_steps} training step(s) + {forwards} sampling forward(s) per variant"
    )
    measurements = [Measurement(variant, args.seed) for variant in VARIANTS]
    for measurement in measurements:  # warm-up, not recorded
        measurement.run(warmup_steps, warmup_steps, record=False)
    for _ in range(rounds):
        for measurement in measurements:
            measurement.run(train_steps, forwards)

    print(
        f"\n{'variant':42s} {'parameters':>10s}  {'train images/s (min-max)':>26s}  {'sample fwd/s (min-max)':>24s}"
    )
    for m in measurements:
        print(
            f"{m.variant.name:42s} {m.parameters:10,}  {spread(m.train_rates, 1):>26s}  {spread(m.sample_rates, 2):>24s}"
        )

    reference = measurements[VARIANTS.index(REFERENCE)]
    ours = measurements[VARIANTS.index(HEADLINE)]
    train_ratio = statistics.median(ours.train_rates) / statistics.median(reference.train_rates)
    sample_ratio = statistics.median(ours.sample_rates) / statistics.median(reference.sample_rates)
    # Another process can only slow a round down, so the ratio of the best rounds is a second opinion.
    best_train_ratio = max(ours.train_rates) / max(reference.train_rates)
    best_sample_ratio = max(ours.sample_rates) / max(reference.sample_rates)
    print(f"\nours = {HEADLINE.name}; reference = {REFERENCE.name}")
    print(f"parameters: ours {ours.parameters:,}, reference {reference.parameters:,}")
    print(
        f"training: ours/reference = {train_ratio:.2f} (best rounds: {best_train_ratio:.2f}); "
        f"{'meets' if train_ratio >= TARGET_TRAIN_RATIO else 'misses'} the target of {TARGET_TRAIN_RATIO}"
    )
    print(
        f"sampling: ours/reference = {sample_ratio:.2f} (best rounds: {best_sample_ratio:.2f}); "
        f"{'meets' if sample_ratio >= TARGET_SAMPLE_RATIO else 'misses'} the target of {TARGET_SAMPLE_RATIO}"
    )
    if not native_bf16("cpu"):
        print(
            f"note: {NO_NATIVE_BF16}, so every bf16 row above is slow; the targets assume bfloat16 instructions"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
