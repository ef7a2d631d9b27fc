"""Denoisers at equal CPU time: the course's U-Net, with self-attention, with v-prediction, diffusers' U-Net and the reference.

    python benchmarks/denoisers.py --budget 450 --n 256 --record ddpm_lib/results/denoisers.json

Every candidate learns the bundled 4,500 digits **unconditionally** with one recipe, the quick preset's
(chapter 11) without labels: AdamW at peak LR 2e-3 on a one-cycle schedule with 10% warm-up, batch 64,
min-SNR-γ loss weighting (γ = 5, weighted per target, chapter 05), gradient clipping at 1, an EMA of decay
0.995, and the same batches, timesteps and noise (seed 0). Each trains for the same wall-clock budget, and its
one-cycle learning rate follows the share of the budget spent (torch's ``OneCycleLR`` curve with wall time in
place of the step count), so every network warms up and anneals fully however fast it is.
Each uses the precision that is faster for it on this CPU (bfloat16 autocast for the course's networks,
float32 for diffusers', which bfloat16 slows down here); on a CPU without bfloat16 instructions
(``ddpm_lib.precision.choose``), where bfloat16 is about ten times slower, every row trains and samples in float32.

Then ``--n`` samples from each EMA network with 25-step DDPM on chapter 08's respaced chain (the quick recipe's
sampler), scored by chapter 07's metrics against the held-out digits in 4 disjoint draws: the confident share
(classifier probability >= 0.9) with its standard error, the class ratio range (every digit's share over 1/10),
the Fréchet distance with the standard error of the draws, and its ratio to the real-vs-real floor at the same n.

Rows (``--rows`` picks some):

- ``default``: the course's U-Net as the quick preset builds it (two dense units per block and in the bottleneck);
- ``attention``: the same with self-attention at 7×7 (``attention=[2]``, chapter 04, section 13);
- ``v``: the same network trained to predict v (``prediction="v"``, chapter 05, section 8);
- ``attention+v``: both;
- ``diffusers``: diffusers' ``UNet2DModel`` in the Hugging Face diffusion course's MNIST configuration
  (block widths 32, 64, 64; three ResNet layers per block; attention in the two lower blocks), without its class
  embedding;
- ``reference``: the reference implementation's network (``REFERENCE_CONFIG``: BatchNorm ShuffleNet-v2 units).

``--rows`` also takes three larger variants of ``attention+v`` that the default run leaves out: ``attention14+v``
(attention at 14×14 as well), ``wide+v`` (base width 48 instead of 32) and ``deep+v`` (three units per block and in
the bottleneck).

Prints the table and, under it, the command that reproduces each row; ``--record`` writes it all as JSON.
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ddpm_lib.checkpoint import write_json  # noqa: E402
from ddpm_lib.data import load_mnist  # noqa: E402
from ddpm_lib.generation import SampleSpec, generate  # noqa: E402
from ddpm_lib.metrics import baseline_images, classify, compare  # noqa: E402
from ddpm_lib.precision import choose  # noqa: E402
from ddpm_lib.pretrained import load_classifier  # noqa: E402
from ddpm_lib.schedule import LinearBetaScheduler  # noqa: E402
from ddpm_lib.training import EMA, batch_stream, make_optimizer, train_step  # noqa: E402
from ddpm_lib.unet import REFERENCE_CONFIG, Unet  # noqa: E402

#: the quick preset's recipe, without labels (see ddpm_lib.config.PRESETS["quick"])
RECIPE = dict(batch_size=64, lr=2e-3, pct_start=0.1, ema_decay=0.995, weighting="min_snr", grad_clip=1.0)
SAMPLER = dict(sampler="ddpm", steps=25)
DRAWS = 4
QUICK_UNET = dict(units_per_block=2, mid_units=2)
#: the Hugging Face diffusion course's MNIST U-Net (unit 2, class-conditioned), without the class embedding
HF_COURSE_UNET = dict(
    sample_size=28, in_channels=1, out_channels=1, layers_per_block=3, block_out_channels=(32, 64, 64),
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
)  # fmt: skip


class DiffusersDenoiser(nn.Module):
    """diffusers' ``UNet2DModel`` called like the course's networks: ``model(x_t, t)`` → predicted noise."""

    def __init__(self, **options):
        super().__init__()
        from diffusers import UNet2DModel

        self.unet = UNet2DModel(**options)
        self.config = {"prediction": "eps"}

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t).sample


#: row name → (description, network builder, bfloat16 autocast)
ROWS = {
    "default": ("course default (2 dense units per block)", lambda: Unet(**QUICK_UNET), True),
    "attention": ("+ self-attention at 7x7", lambda: Unet(**QUICK_UNET, attention=[2]), True),
    "v": ("+ v-prediction", lambda: Unet(**QUICK_UNET, prediction="v"), True),
    "attention+v": ("+ attention and v", lambda: Unet(**QUICK_UNET, attention=[2], prediction="v"), True),
    "diffusers": (
        "diffusers UNet2DModel (HF course MNIST)",
        lambda: DiffusersDenoiser(**HF_COURSE_UNET),
        False,
    ),
    "reference": ("reference network (REFERENCE_CONFIG)", lambda: Unet(**REFERENCE_CONFIG), True),
}
#: larger variants of the winner, the levers for a better unconditional model (``--rows`` only; not in the default
#: run or the shipped record)
EXTRA_ROWS = {
    "attention14+v": (
        "+ attention at 14x14 and 7x7, and v",
        lambda: Unet(**QUICK_UNET, attention=[1, 2], prediction="v"),
        True,
    ),
    "wide+v": (
        "+ attention and v, base width 48",
        lambda: Unet(**QUICK_UNET, base_dim=48, attention=[2], prediction="v"),
        True,
    ),
    "deep+v": (
        "+ attention and v, 3 units per block",
        lambda: Unet(units_per_block=3, mid_units=3, attention=[2], prediction="v"),
        True,
    ),
}


def one_cycle_lr(progress: float, max_lr: float, pct_start: float) -> float:
    """OneCycleLR's learning rate (its defaults: start at max_lr / 25, cosine warm-up and anneal, end at
    max_lr / 25 / 1e4) at ``progress`` in [0, 1] of the run."""
    initial, final = max_lr / 25, max_lr / 25 / 1e4

    def cosine(start: float, end: float, fraction: float) -> float:
        return end + (start - end) / 2 * (1 + math.cos(math.pi * min(max(fraction, 0.0), 1.0)))

    if progress < pct_start:
        return cosine(initial, max_lr, progress / pct_start)
    return cosine(max_lr, final, (progress - pct_start) / (1 - pct_start))


def train_for(
    build, precision: str, budget_s: float, images: torch.Tensor, scheduler, seed: int
) -> tuple[nn.Module, dict]:
    """Train a fresh network for ``budget_s`` seconds of wall time; return its EMA copy and what the run did."""
    torch.manual_seed(seed)
    model = build().train()
    optimizer = make_optimizer(model, RECIPE["lr"])
    ema = EMA(model, RECIPE["ema_decay"])
    generator = torch.Generator().manual_seed(seed)
    losses, done = [], 0
    start = time.perf_counter()
    for step, batch in batch_stream(images, RECIPE["batch_size"], seed):
        elapsed = time.perf_counter() - start
        if elapsed >= budget_s:
            break
        for group in optimizer.param_groups:
            group["lr"] = one_cycle_lr(elapsed / budget_s, RECIPE["lr"], RECIPE["pct_start"])
        stats = train_step(model, optimizer, None, scheduler, batch, generator, RECIPE["grad_clip"],
                           precision=precision, weighting=RECIPE["weighting"])  # fmt: skip
        ema.update(model)
        losses.append(stats["loss"])
        done = step + 1
    train_s = time.perf_counter() - start
    return ema.model, {
        "steps": done,
        "train_s": train_s,
        "images_per_s": done * RECIPE["batch_size"] / train_s,
        "final_loss": float(np.mean(losses[-50:])),
        "parameters": sum(p.numel() for p in model.parameters()),
        "precision": precision,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=300.0, help="training seconds per row (default: 300)")
    parser.add_argument("--n", type=int, default=256, help="samples per row (default: 256)")
    parser.add_argument(
        "--rows", default=",".join(ROWS), help=f"comma-separated, from: {', '.join([*ROWS, *EXTRA_ROWS])}"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the batches, noise and samples (default: 0)"
    )
    parser.add_argument(
        "--record", type=Path, default=None, help="write the table and its commands as JSON here"
    )
    args = parser.parse_args(argv)
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    known = {**ROWS, **EXTRA_ROWS}
    unknown = [r for r in rows if r not in known]
    if unknown or not rows:
        parser.error(
            f"--rows: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(known)}"
        )
    if args.budget <= 0:
        parser.error(f"--budget must be positive, got {args.budget}")
    if args.n < 2 * DRAWS:
        parser.error(f"--n must be at least {2 * DRAWS} ({DRAWS} draws of 2), got {args.n}")
    if "diffusers" in rows:
        try:
            import diffusers  # noqa: F401
        except ImportError:
            parser.error("the diffusers row needs diffusers (pip install -r requirements.txt)")

    started = time.perf_counter()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.machine()}; "
          f"budget {args.budget:g} s per row, n = {args.n}", flush=True)  # fmt: skip
    scheduler = LinearBetaScheduler(1000, 1e-4, 0.02)
    images = load_mnist("train", verbose=False).tensors[0]
    classifier, _ = load_classifier()
    reference_features, _ = classify(classifier, load_mnist("heldout", verbose=False).tensors[0])
    floor = compare(classify(classifier, baseline_images(args.n, seed=args.seed)["real digits (floor)"]),
                    reference_features, DRAWS)  # fmt: skip

    results = []
    for name in rows:
        description, build, low_precision = known[name]
        precision = choose("cpu", "auto" if low_precision else "float32").precision
        print(f"== {name}: {description}", flush=True)
        model, run = train_for(build, precision, args.budget, images, scheduler, args.seed)
        start = time.perf_counter()
        spec = SampleSpec(**SAMPLER, seed=args.seed)  # in the precision this CPU computes fast in
        samples = generate(model, scheduler, args.n, spec)
        run["sample_s"] = time.perf_counter() - start
        scores = compare(classify(classifier, samples), reference_features, DRAWS)
        command = f"python benchmarks/denoisers.py --rows {name} --budget {args.budget:g} --n {args.n} --seed {args.seed}"
        results.append({
            "row": name, "description": description, **run, "command": command,
            "confident_share": scores["confident_share"],
            "confident_se": float(np.sqrt(scores["confident_share"] * (1 - scores["confident_share"]) / args.n)),
            "min_class_ratio": scores["min_class_ratio"], "max_class_ratio": scores["max_class_ratio"],
            "class_counts": scores["class_counts"],
            "frechet_distance": scores["frechet_distance"], "frechet_se": scores["draw_se"]["frechet_distance"],
            "fd_over_floor": scores["frechet_distance"] / floor["frechet_distance"],
        })  # fmt: skip
        r = results[-1]
        print(f"   {r['steps']} steps in {r['train_s']:.0f} s ({r['images_per_s']:.0f} images/s), "
              f"sampled in {r['sample_s']:.0f} s; confident {r['confident_share']:.1%}, "
              f"FD {r['frechet_distance']:.1f} = {r['fd_over_floor']:.2f}x floor", flush=True)  # fmt: skip

    print()
    print(f"{'row':<42} {'params':>9} {'steps':>6} {'img/s':>6} {'confident':>14} {'class ratios':>12} "
          f"{'Fréchet':>14} {'/floor':>6}")  # fmt: skip
    for r in results:
        print(f"{r['description']:<42} {r['parameters']:9,d} {r['steps']:6d} {r['images_per_s']:6.0f} "
              f"{r['confident_share']:8.1%} ±{r['confident_se']:4.1%} {r['min_class_ratio']:5.2f}-{r['max_class_ratio']:<5.2f} "
              f"{r['frechet_distance']:7.1f} ±{r['frechet_se']:5.1f} {r['fd_over_floor']:6.2f}")  # fmt: skip
    print(f"{'real digits (floor)':<42} {'':>9} {'':>6} {'':>6} {floor['confident_share']:8.1%} {'':>6} "
          f"{floor['min_class_ratio']:5.2f}-{floor['max_class_ratio']:<5.2f} {floor['frechet_distance']:7.1f} "
          f"±{floor['draw_se']['frechet_distance']:5.1f} {1:6.2f}")  # fmt: skip
    print(f"\n± : standard errors (confident share: binomial; Fréchet: {DRAWS} disjoint draws of {args.n // DRAWS}). "
          f"Samples: {SAMPLER['steps']}-step DDPM. Commands:")  # fmt: skip
    for r in results:
        print(f"  {r['row']:<12} {r['command']}")
    wall = time.perf_counter() - started
    print(f"benchmark wall time: {wall:.0f} s")
    if args.record is not None:
        write_json(args.record, {
            "command": "python benchmarks/denoisers.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
            "budget_s": args.budget, "n": args.n, "seed": args.seed, "draws": DRAWS, "recipe": RECIPE,
            "sampler": SAMPLER, "wall_s": wall, "date": time.strftime("%Y-%m-%d"),
            "floor": {"confident_share": floor["confident_share"], "frechet_distance": floor["frechet_distance"],
                      "frechet_se": floor["draw_se"]["frechet_distance"],
                      "min_class_ratio": floor["min_class_ratio"], "max_class_ratio": floor["max_class_ratio"]},
            "rows": results,
        })  # fmt: skip
        print(f"recorded in {args.record}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
