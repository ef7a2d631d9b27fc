"""Time to digits on a CPU: the quick recipe against the reference recipe, for the same wall-clock budget.

    python benchmarks/time_to_digits.py --samples-out runs/time_to_digits/quick_samples.pt
    python benchmarks/time_to_digits.py --preset quick-unconditional --skip-reference
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python benchmarks/time_to_digits.py --skip-reference \
        --record ddpm_lib/results/time_to_digits.json
    python benchmarks/time_to_digits.py --preset quick-unconditional --skip-reference --autoguidance 0
    python benchmarks/time_to_digits.py --preset quick-unconditional --skip-reference --train '{"steps": 3000}'

``--preset`` picks the recipe of step 1 (default ``quick``, which on a CPU without bfloat16 instructions is
``quick-float32``, as ``python -m ddpm_lib train --preset quick`` picks it: ``ddpm_lib.config.preset_for``;
``quick-unconditional`` is the same network without labels, on the cosine schedule for 2,500 steps, its samples
autoguided: ``RECIPES``). ``--record FILE`` keeps the run's rows, command and machine in FILE under the preset's
name (``ddpm_lib/results/time_to_digits.json``: the measurements the README and chapter 11 quote). ``--train JSON`` tries a
candidate: options of the training configuration (``{"schedule": "cosine", "lr": 3e-3, "model": {"attention": []}}``)
given after the preset's, resolved and checked by ``ddpm_lib.config.resolve_train_config``. The samples are drawn the same
way whatever is given; ``--autoguidance W`` guides them away from the run's EMA snapshot at a quarter of its steps
(chapter 10, section 5), which the run then keeps (sampling a 16-digit grid at each quarter, as ``--preset`` runs
do, inside the training time), on the steps of ``--guidance-interval`` only. Each recipe has its own defaults for
both: none for ``quick``, w = 4 on 200 <= t <= 850 for ``quick-unconditional``.

1. Trains ``python -m ddpm_lib train --preset quick`` (chapter 11) on the bundled digits: a
   class-conditional U-Net with two dense units per block, self-attention at 7×7 and v-prediction, bfloat16
   autocast, batch 64, min-SNR-γ weighting.
   Then draws ``--n`` digits from its EMA weights, every class equally often (labels 0, 1, ..., 9, 0, ...: a
   sample of p(x) = Σ_y p(y) p(x | y), since the training digits are balanced), with 25-step DDPM
   (chapter 08's respaced chain) and the preset's classifier-free guidance w = 1 (chapter 10;
   ``--guidance`` changes it, 0 = none).
2. Trains the reference recipe — the reference's BatchNorm ShuffleNet-v2 U-Net with a learned time table,
   unconditional, float32, AdamW lr 1e-3 + OneCycleLR, batch 128, no EMA — for the same training wall time
   (its step count is set from a short timing probe, less the run's own overhead), then samples it with the same 25-step DDPM chain (this
   compares training recipes; the reference's own 1000-step sampler alone would take several minutes more).
3. Scores both with chapter 07's metrics: the confident share (max probability >= 0.9), the class histogram
   (every digit between 0.5x and 2x its uniform share) and the classifier Fréchet distance to the held-out
   digits, next to the real-vs-real floor at the same n.

With ``--preset quick-unconditional``, step 1 trains without labels and draws the digits unconditionally,
autoguided (above); the reference recipe of step 2 is unconditional anyway.

Prints wall time, steps, images/s and the metrics for both; writes the quick recipe's samples, a tensor
(N, 1, 28, 28) in [-1, 1], to ``--samples-out``; exits 1 if the quick recipe misses the bar:
>= 90% confident, every class within [0.5, 2] x its share, Fréchet distance <= 3x the floor.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ddpm_lib.checkpoint import load_denoiser, write_json  # noqa: E402
from ddpm_lib.config import PRESETS, TrainConfig, preset_for, resolve_train_config, schedule_for  # noqa: E402
from ddpm_lib.data import load_mnist  # noqa: E402
from ddpm_lib.errors import UsageError  # noqa: E402
from ddpm_lib.generation import SampleSpec, generate  # noqa: E402
from ddpm_lib.metrics import baseline_images, class_statistics, classify, features_distance  # noqa: E402
from ddpm_lib.precision import choose  # noqa: E402
from ddpm_lib.pretrained import load_classifier  # noqa: E402
from ddpm_lib.runner import run_training  # noqa: E402
from ddpm_lib.spec import parse_interval  # noqa: E402
from ddpm_lib.training import ddpm_loss, make_optimizer  # noqa: E402
from ddpm_lib.unet import REFERENCE_CONFIG, Unet  # noqa: E402

BAR = {"confident_share": 0.9, "min_class_ratio": 0.5, "max_class_ratio": 2.0, "fd_over_floor": 3.0}
#: the quick recipe's sampler, used for both recipes (guidance only where the model is class-conditional)
SAMPLER, SAMPLER_STEPS = PRESETS["quick"]["grid"]["sampler"], PRESETS["quick"]["grid"]["steps"]
#: a full run takes this much longer per step than the bare probe (checkpoints, metrics, EMA): measured 1.09x
RUN_OVERHEAD = 1.09
#: how each preset's samples are drawn here, unless --autoguidance / --guidance-interval say otherwise: the
#: autoguidance weight w (0: none) and the timesteps it guides (chapter 10, section 5). The unconditional one was
#: sized to 12 minutes on this 2-core CPU and its sampling chosen on sampling seeds 1-3 (engineering notes).
RECIPES = {
    "quick": {"autoguidance": 0.0, "interval": None},
    "quick-float32": {"autoguidance": 0.0, "interval": None},
    "quick-unconditional": {"autoguidance": 4.0, "interval": (200, 850)},
}


def quick_config(
    preset: str = "quick", train_options: dict | None = None, autoguided: bool = False
) -> TrainConfig:
    """The preset's configuration with ``train_options`` (as ``resolve_train_config`` takes them) given after it.

    ``autoguided``: keep the EMA snapshot at a quarter of the steps (as the preset's own run does), to guide with.
    """
    recipe = resolve_train_config(preset, **(train_options or {}))
    # one grid at the end only: the budget is for training
    return replace(recipe, eval_every=recipe.steps // 4 if autoguided else 0, checkpoint_every=10**9)


def reference_config(steps: int) -> TrainConfig:
    return resolve_train_config(
        steps=steps, batch_size=128, lr=1e-3, pct_start=0.25, ema_decay=0.0, precision="float32", eval_every=0,
        checkpoint_every=10**9, grid={"sampler": SAMPLER, "steps": SAMPLER_STEPS}, model=dict(REFERENCE_CONFIG),
    )  # fmt: skip


def seconds_per_step(config: TrainConfig, probe_steps: int = 5) -> float:
    """Time a few optimisation steps of ``config``'s model and batch size (after two warm-up steps)."""
    torch.manual_seed(0)
    model = Unet(**config.model).train()
    optimizer = make_optimizer(model, config.lr)
    x0 = load_mnist("train", verbose=False).tensors[0][: config.batch_size]
    scheduler = schedule_for(config)

    compute = choose("cpu", config.precision)

    def step():
        with compute.autocast():
            loss = ddpm_loss(model, scheduler, x0, torch.Generator().manual_seed(0))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    step()
    step()
    start = time.perf_counter()
    for _ in range(probe_steps):
        step()
    return (time.perf_counter() - start) / probe_steps


def train_and_sample(
    name: str,
    config: TrainConfig,
    out: Path,
    n: int,
    seed: int,
    guidance: float,
    autoguidance: float = 0.0,
    interval: tuple[int, int] | None = None,
) -> dict:
    print(f"== {name}: {config.steps} steps of batch {config.batch_size}", flush=True)
    start = time.perf_counter()
    run_training(config, out / name, progress=False)
    train_s = time.perf_counter() - start
    model, scheduler, _ = load_denoiser(out / name / "checkpoints" / "last.pt")
    start = time.perf_counter()
    conditional = model.config.get("num_classes") is not None  # then every digit in turn, guided
    # autoguided (chapter 10) away from the snapshot at a quarter of the run, in the precision this CPU is fast in
    weak = str(out / name / "checkpoints" / f"step_{config.eval_every:06d}.pt") if autoguidance else None
    spec = SampleSpec(
        sampler=SAMPLER, steps=SAMPLER_STEPS, guidance=guidance if conditional else 0.0, seed=seed,
        weak=weak, autoguidance=autoguidance if weak else None,
        guidance_interval=interval if weak else None,
    )  # fmt: skip
    samples = generate(model, scheduler, n, spec)
    sample_s = time.perf_counter() - start
    return {
        "name": name,
        "steps": config.steps,
        "batch_size": config.batch_size,
        "train_s": train_s,
        "sample_s": sample_s,
        "wall_s": train_s + sample_s,
        "images_per_s": config.steps * config.batch_size / train_s,
        "samples": samples,
    }


def score(samples: torch.Tensor, classifier, reference_features, seed: int) -> dict:
    features, probs = classify(classifier, samples)
    floor_features, _ = classify(classifier, baseline_images(len(samples), seed=seed)["real digits (floor)"])
    stats = class_statistics(probs)
    fd, floor = (
        features_distance(features, reference_features),
        features_distance(floor_features, reference_features),
    )
    result = {**stats, "frechet_distance": fd, "floor": floor, "fd_over_floor": fd / floor}
    result["bar_met"] = (
        result["confident_share"] >= BAR["confident_share"]
        and result["min_class_ratio"] >= BAR["min_class_ratio"]
        and result["max_class_ratio"] <= BAR["max_class_ratio"]
        and result["fd_over_floor"] <= BAR["fd_over_floor"]
    )
    return result


def interval_type(text: str):
    """``--guidance-interval``: (LO, HI) as the command line reads it (0 <= LO <= HI), or "all" (every step)."""
    if text == "all":
        return text
    try:
        lo, hi = parse_interval(text)
    except ValueError:
        lo, hi = -1, -1
    if not 0 <= lo <= hi:
        raise argparse.ArgumentTypeError(f"expected LO:HI, two timesteps with 0 <= LO <= HI, got {text!r}")
    return lo, hi


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=256, help="samples per recipe (default: 256)")
    parser.add_argument(
        "--samples-out", type=Path, default=None, help="where to save the quick recipe's samples"
    )
    parser.add_argument(
        "--out", type=Path, default=Path("runs/time_to_digits"), help="run folders (replaced)"
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the sampling noise (default: 1)")
    parser.add_argument(
        "--guidance",
        type=float,
        default=None,
        help="guidance w of the quick samples (default: the recipe's grids', after --train)",
    )
    parser.add_argument(
        "--autoguidance", type=float, default=None, metavar="W",
        help="guide the quick samples away from the recipe's own EMA snapshot at a quarter of its steps "
        "(autoguidance, chapter 10) with weight W; 0: none (default: the preset's, see RECIPES)",
    )  # fmt: skip
    parser.add_argument(
        "--guidance-interval", type=interval_type, default=None, metavar="LO:HI",
        help="autoguide only the steps with LO <= t <= HI; all: every step (default: the preset's)",
    )  # fmt: skip
    parser.add_argument("--skip-reference", action="store_true", help="only the quick recipe")
    parser.add_argument("--record", type=Path, default=None, metavar="FILE",
                        help="keep this run's rows, command and machine in FILE (JSON) under the preset's name")  # fmt: skip
    parser.add_argument(
        "--preset", choices=list(PRESETS), default="quick", help="the recipe to time (default: quick)"
    )
    parser.add_argument(
        "--train", default="{}", metavar="JSON",
        help='training options given after the preset, as ddpm_lib.config.resolve_train_config takes them: '
        '\'{"schedule": "cosine", "grid": {"sampler": "clip"}}\'',
    )  # fmt: skip
    args = parser.parse_args(argv)
    try:
        train_options = json.loads(args.train)
    except json.JSONDecodeError as error:
        parser.error(f"--train: not a JSON object ({error})")
    if not isinstance(train_options, dict):
        parser.error(f"--train: expected a JSON object of options, got {args.train!r}")
    args.preset, why = preset_for(args.preset, {"device": "cpu"})
    if why:
        print(why, flush=True)
    if args.autoguidance is None:
        args.autoguidance = RECIPES[args.preset]["autoguidance"]
    if args.guidance_interval is None:
        args.guidance_interval = RECIPES[args.preset]["interval"]
    if args.guidance_interval == "all" or not args.autoguidance:
        args.guidance_interval = None
    try:
        recipe = quick_config(args.preset, train_options, autoguided=bool(args.autoguidance))
    except UsageError as error:
        parser.error(f"--train: {error}")
    if args.guidance is None:
        args.guidance = recipe.grid.guidance
    if args.n < 2:
        parser.error(f"--n must be at least 2, got {args.n}")
    if args.guidance < -1:
        parser.error(f"--guidance must be >= -1, got {args.guidance}")
    if args.autoguidance < 0:
        parser.error(f"--autoguidance must be >= 0 (0: none), got {args.autoguidance}")

    shutil.rmtree(args.out, ignore_errors=True)
    started = time.perf_counter()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    classifier, _ = load_classifier()
    reference_features, _ = classify(classifier, load_mnist("heldout", verbose=False).tensors[0])

    quick = train_and_sample(
        args.preset,
        recipe,
        args.out,
        args.n,
        args.seed,
        args.guidance,
        args.autoguidance,
        args.guidance_interval,
    )
    if args.samples_out is not None:
        args.samples_out.parent.mkdir(parents=True, exist_ok=True)
        torch.save(quick["samples"], args.samples_out)
    rows = [quick]
    if not args.skip_reference:
        budget = quick["train_s"]
        per_step = seconds_per_step(reference_config(1))
        steps = max(1, int(budget / (per_step * RUN_OVERHEAD)))
        print(f"reference: {per_step:.3f} s/step in a probe -> {steps} steps for the {budget:.0f} s budget")
        rows.append(train_and_sample("reference", reference_config(steps), args.out, args.n, args.seed, 0.0))

    print()
    print(f"{'recipe':<10} {'wall s':>7} {'train s':>8} {'steps':>6} {'img/s':>7} {'confident':>10} "
          f"{'min/max class':>14} {'FD':>9} {'floor':>8} {'FD/floor':>9}  bar")  # fmt: skip
    report = []
    for row in rows:
        metrics = score(row.pop("samples"), classifier, reference_features, args.seed)
        row.update(metrics)
        report.append(row)
        print(
            f"{row['name']:<10} {row['wall_s']:7.0f} {row['train_s']:8.0f} {row['steps']:6d} {row['images_per_s']:7.0f} "
            f"{row['confident_share']:10.1%} {row['min_class_ratio']:6.2f}/{row['max_class_ratio']:<6.2f} "
            f"{row['frechet_distance']:9.2f} {row['floor']:8.2f} {row['fd_over_floor']:9.2f}  "
            f"{'met' if row['bar_met'] else 'missed'}"
        )
        print(f"{'':<10} classes: {row['class_counts']}")
    if len(report) == 2:
        print(f"quick / reference: {report[0]['images_per_s'] / report[1]['images_per_s']:.2f}x the images/s")
    print(f"bar: confident >= {BAR['confident_share']:.0%}, every class in [{BAR['min_class_ratio']}, "
          f"{BAR['max_class_ratio']}] x its share, FD <= {BAR['fd_over_floor']}x floor; n = {args.n}; "
          f"{args.preset} samples: {SAMPLER_STEPS}-step DDPM, guidance w = {args.guidance:g} "
          f"(class-conditional models only), autoguidance w = {args.autoguidance:g}"
          f"{'' if args.guidance_interval is None else ' on t in [{}, {}]'.format(*args.guidance_interval)}")  # fmt: skip
    print(f"benchmark wall time: {time.perf_counter() - started:.0f} s")
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "report.json",
               {"n": args.n, "guidance": args.guidance, "autoguidance": args.autoguidance,
                "guidance_interval": args.guidance_interval, "preset": args.preset,
                "train_options": train_options, "quick_config": asdict(recipe), "rows": report})  # fmt: skip
    if args.record is not None:
        simulated = [f"{name}={value}" for name, value in machine()["simulation"].items()]
        record(args.record, args.preset, {"command": " ".join([*simulated, "python benchmarks/time_to_digits.py",
                                                               *(argv or sys.argv[1:])]),
               "date": time.strftime("%Y-%m-%d"), "machine": machine(), "n": args.n, "seed": args.seed,
               "train_options": train_options, "rows": report})  # fmt: skip
    return 0 if report[0]["bar_met"] else 1


def machine() -> dict:
    """The CPU this ran on, what PyTorch computes with there, and the simulation variables if set."""
    import os
    import platform

    from ddpm_lib.precision import native_bf16

    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        model = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                      if line.startswith("model name")), model)  # fmt: skip
    return {"cpu": model, "cores": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "native_bf16": native_bf16("cpu"),
            "simulation": {name: os.environ[name] for name in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")
                           if name in os.environ}}  # fmt: skip


def record(path: Path, preset: str, entry: dict) -> None:
    """Put ``entry`` into the JSON file ``path`` under ``preset`` (the other presets' entries are kept)."""
    records = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    records[preset] = entry
    write_json(path, records)
    print(f"recorded under {preset!r} in {path}")


if __name__ == "__main__":
    sys.exit(main())
