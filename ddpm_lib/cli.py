"""Command line (hand-written plumbing): ``python -m ddpm_lib COMMAND`` or ``ddpm COMMAND``; ``--help`` lists the
commands (``train``, ``sample``, ``evaluate``, ``inpaint``, ``bound``, ...). This module declares options, parses
them and dispatches to the library: what a command does lives in :mod:`ddpm_lib.runner` (training runs),
:mod:`ddpm_lib.generation` (sampling), :mod:`ddpm_lib.evaluation` (scores, the bound, the classifier) and the
modules the chapters promote.

**Options are declared once.** The options of ``train`` are the fields of :class:`ddpm_lib.config.TrainConfig`
(``--preset NAME`` gives its defaults; an option given explicitly wins), those of its grids, ``sample`` and
``evaluate`` the fields of :class:`ddpm_lib.spec.SampleSpec`, the U-Net options the keyword arguments of
:class:`ddpm_lib.unet.Unet`: each option's default, help and check come from there. Plain ``argparse``: the course
needs about forty flat options, argparse is what learners know, and its help reads like any other command's.
Abbreviated options are refused (``--batch`` is not ``--batch-size``).

**Sampling recipes.** Shipped weights may come with a sampling recipe (``NAME.sampling.json``,
:func:`ddpm_lib.pretrained.recipe`): a spec measured to sample them best. ``sample`` and ``evaluate`` start from it,
say so, and apply the sampling options given on top, field by field; ``--no-recipe`` starts from the defaults.

**Errors.** Bad input — an option out of range, options that contradict each other, a missing, truncated or
foreign file, a checkpoint of another architecture — is a :class:`~ddpm_lib.errors.UsageError` where it is
detected: exit status 2 and one line on stderr naming the option, and nothing is written. A training run whose
loss stops being finite exits with status 1 and one line. Anything else is a bug and keeps its traceback. The
reference implementation's spelling ``--mode train`` / ``--mode eval`` is accepted for ``train`` / ``sample``.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from pathlib import Path

from .errors import UsageError
from .options import Check, add_dataclass_options, add_keyword_options, given, integer, value_parser

PROG = "python -m ddpm_lib"
DEFAULT_TIMESTEPS = (0, 50, 100, 200, 400, 700, 999)
MODE_ALIASES = {"train": "train", "eval": "sample"}


class Parser(argparse.ArgumentParser):
    """argparse with abbreviations off and errors on one line (``PROG COMMAND: error: ...``)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _preset_of(argv: list[str]) -> str | None:
    """The ``--preset`` of a ``train`` command line, read before the full parse (its values are the defaults)."""
    from .config import preset_for

    if not argv or argv[0] != "train":
        return None
    pre = Parser(prog=f"{PROG} train", add_help=False)
    pre.add_argument("--preset", default=None)
    return preset_for(pre.parse_known_args(argv[1:])[0].preset)[0]  # what this machine trains


def _int(name: str, minimum: int):
    return value_parser(name, "int", integer(minimum))


def build_parser(argv: list[str] | None = None) -> tuple[Parser, dict[str, dict[str, str]]]:
    """The parser, with ``train``'s help showing the defaults of the ``--preset`` in ``argv``; and, per command,
    the flag of every option field (to name options in error messages)."""
    from .config import GRID_FLAGS, MODEL_OPTIONS, PRESETS, TrainConfig, preset_defaults
    from .data import DATASETS
    from .inpainting import MASK_KINDS
    from .precision import DEVICES
    from .spec import SampleSpec
    from .unet import Unet

    parser = Parser(prog=PROG, description="Diffusion from Scratch: DDPM on MNIST")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    spelled: dict[str, dict[str, str]] = {}

    def dataset(command, help_text: str) -> None:
        command.add_argument("--dataset", choices=DATASETS, default=None, help=help_text)

    def device(command) -> None:
        command.add_argument("--device", choices=DEVICES, default="auto",
                             help="auto (a CUDA GPU, else Apple's mps, else the CPU), cpu, cuda or mps (default: auto)")  # fmt: skip

    def denoiser(command, default: str = "ddpm_mnist_cond"):
        source = command.add_mutually_exclusive_group()
        source.add_argument("--checkpoint", type=Path, default=None,
                            help="a checkpoint of python -m ddpm_lib train (default: the shipped weights)")  # fmt: skip
        source.add_argument("--weights", default=None,
                            help=f"shipped weights instead of --checkpoint (default: {default}): ddpm_mnist_cond "
                            "(class-conditional, every digit in turn unless --label) or ddpm_mnist (unconditional); "
                            "see ddpm_lib/weights/")  # fmt: skip
        command.set_defaults(default_weights=default)
        return source

    def sampling(command, exclude=()) -> dict[str, str]:
        command.add_argument("--no-recipe", action="store_true",
                             help="ignore the shipped weights' sampling recipe: start from the defaults below")  # fmt: skip
        return add_dataclass_options(command, SampleSpec, SampleSpec(), prefix="spec.", exclude=exclude)

    preset = _preset_of(argv or [])
    defaults = preset_defaults(preset if preset in PRESETS else None)
    train = commands.add_parser(
        "train", help="train a denoiser into a run folder",
        description="Train a DDPM denoiser (chapter 05) and write a run folder: config.json, run.json, metrics.jsonl, "
        "loss_curve.png, samples/, checkpoints/. Defaults shown are "
        + (f"the preset {preset!r}'s." if preset in PRESETS else "TrainConfig's (a --preset replaces them)."),
    )  # fmt: skip
    train.add_argument("--out", type=Path, default=Path("runs/ddpm"), help="run folder (default: runs/ddpm)")
    train.add_argument(
        "--resume", action="store_true", help="continue the run in --out from checkpoints/last.pt"
    )
    train.add_argument("--init-from", default=None, metavar="WEIGHTS",
                       help="start a new run from trained weights (shipped weights such as ddpm_mnist, NAME@STEP, or "
                       "a checkpoint) instead of random ones: the same network, schedule and data; --steps counts "
                       "from their step")  # fmt: skip
    train.add_argument("--preset", choices=sorted(PRESETS), default=None,
                       help="a named set of defaults (options given explicitly win). quick (chapter 11): "
                       + ", ".join(f"{k}={v}" for k, v in PRESETS["quick"].items())
                       + "; quick-float32 where the CPU has no bfloat16 instructions")  # fmt: skip
    length = train.add_mutually_exclusive_group()
    spelled["train"] = add_dataclass_options(
        train, TrainConfig, defaults, targets={"steps": length, "epochs": length}
    )
    grid = train.add_argument_group("sample grids (ddpm_lib.spec.SampleSpec; seed and precision: the run's)")
    spelled["train"].update(add_dataclass_options(grid, SampleSpec, defaults.grid, prefix="grid.", flags=GRID_FLAGS,
                                                  exclude=("label", "seed", "precision", "device", "batch_size")))  # fmt: skip
    spelled["train"].update(add_keyword_options(train, Unet.__init__, MODEL_OPTIONS, defaults.model, "model.",
                                                "U-Net options (ddpm_lib.unet.Unet; chapter 04)"))  # fmt: skip
    train.add_argument("--no-progress", action="store_true", help="no progress bar")

    sample = commands.add_parser(
        "sample", help="sample a grid of digits from a checkpoint or the shipped weights"
    )
    denoiser(sample)
    dataset(sample, "the data set the model learnt: its shipped weights without --checkpoint / --weights; with "
            "them, a check that they learnt it")  # fmt: skip
    sample.add_argument("--n", type=_int("n", 1), default=16, help="number of digits (default: 16)")
    spelled["sample"] = sampling(sample)
    sample.add_argument(
        "--out", type=Path, default=Path("samples.png"), help="grid PNG (default: samples.png)"
    )
    sample.add_argument(
        "--tensors", type=Path, default=None, help="also save the samples as a .pt tensor file"
    )
    sample.add_argument("--gif", type=Path, default=None, help="also save the trajectory as an animated GIF")
    sample.add_argument("--no-progress", action="store_true", help="no progress bar")

    noise = commands.add_parser("noise", help="save a grid of digits noised by the forward process")
    noise.add_argument(
        "--out", type=Path, default=Path("noising.png"), help="PNG to write (default: noising.png)"
    )
    noise.add_argument("--timesteps", default=list(DEFAULT_TIMESTEPS),
                       type=value_parser("timesteps", "list[int]", Check(
                           "comma-separated integers in 0..999",
                           lambda vs: bool(vs) and all(isinstance(v, int) and 0 <= v < 1000 for v in vs))),
                       help=f"comma-separated t in 0..999 (default: {','.join(map(str, DEFAULT_TIMESTEPS))})")  # fmt: skip
    noise.add_argument("--seed", type=_int("seed", 0), default=0, help="seed of the noise (default: 0)")

    data = commands.add_parser("data", help="describe (or download) the data the course uses")
    dataset(data, "the data set to describe (default: mnist)")
    data.add_argument("--root", type=Path, default=None,
                      help="mnist: folder with torchvision's MNIST files; fashion-mnist: folder of its files")  # fmt: skip
    data.add_argument(
        "--download", action="store_true", help="download the data set into --root (needs a network)"
    )

    evaluate = commands.add_parser(
        "evaluate", help="score samples with chapter 07's metrics (Fréchet distance, confidence, class coverage)",
        description="Sample digits (or read a saved tensor) and score them against the held-out digits with the "
        "evaluation classifier: Fréchet distance, confident share, class histogram, entropy and the IS analogue, next "
        "to the real-vs-real floor and the blurred / noise ceilings at the same n, with the standard errors of the "
        "Fréchet distance and the confident share over --draws disjoint draws. Prints a table and writes it as JSON.",
    )  # fmt: skip
    source = denoiser(evaluate)
    dataset(evaluate, "the data set to score against (its classifier, held-out images and floor); default: the one "
            "the model learnt, or mnist for --samples; without --checkpoint / --weights, its shipped weights")  # fmt: skip
    source.add_argument("--samples", type=Path, default=None,
                        help="evaluate a saved (N, 1, 28, 28) tensor in [-1, 1] instead of sampling")  # fmt: skip
    evaluate.add_argument("--n", type=_int("n", 2), default=500, help="samples to draw (default: 500)")
    spelled["evaluate"] = sampling(evaluate, exclude=("label",))
    evaluate.add_argument("--draws", type=_int("draws", 1), default=4,
                          help="disjoint draws the samples are split into for the standard errors; each needs 2 "
                          "samples, so at most n // 2 (default: 4; 1: no standard errors)")  # fmt: skip
    evaluate.add_argument("--json", type=Path, default=Path("evaluation.json"),
                          help="where to write the results (default: evaluation.json)")  # fmt: skip
    evaluate.add_argument("--classifier", type=Path, default=None,
                          help="evaluation classifier (default: the data set's shipped one)")  # fmt: skip
    evaluate.add_argument("--no-progress", action="store_true", help="no progress bar")

    classifier = commands.add_parser(
        "train-classifier", help="train chapter 07's evaluation classifier and write it with its provenance",
        description="Train the evaluation classifier of chapter 07 on the training split and report its held-out "
        "accuracy; writes OUT and OUT with a .json suffix (provenance).",
    )  # fmt: skip
    dataset(classifier, "the images to classify (default: mnist)")
    classifier.add_argument("--out", type=Path, default=None,
                            help="default: runs/classifier/DATASET_classifier.pt, e.g. "
                            "runs/classifier/mnist_classifier.pt")  # fmt: skip
    classifier.add_argument("--epochs", type=_int("epochs", 1), default=15, help="default: 15")
    classifier.add_argument("--seed", type=_int("seed", 0), default=0, help="default: 0")

    inpaint = commands.add_parser(
        "inpaint", help="mask held-out digits and fill in the missing pixels (chapter 12)",
        description="Pick held-out digits, mask them and inpaint the missing pixels with an unconditional denoiser: "
        "the replacement method on a respaced chain, with RePaint's resampling (--resample). Writes a PNG of three "
        "rows: the originals, the masked digits (missing pixels grey) and the inpainted digits.",
    )  # fmt: skip
    inpaint.add_argument(
        "--mask", choices=MASK_KINDS, default="centre", help="the part that is missing (default: centre)"
    )
    inpaint.add_argument("--n", type=_int("n", 1), default=8, help="number of digits (default: 8)")
    inpaint.add_argument(
        "--steps", type=_int("steps", 1), default=50, help="timesteps of the respaced chain (default: 50)"
    )
    inpaint.add_argument("--resample", type=_int("resample", 0), default=4,
                         help="RePaint's resamplings per step; 0: the replacement method (default: 4)")  # fmt: skip
    inpaint.add_argument("--seed", type=_int("seed", 0), default=0,
                         help="picks the digits, the mask and the noise (default: 0)")  # fmt: skip
    denoiser(inpaint, default="ddpm_mnist")
    inpaint.add_argument(
        "--out", type=Path, default=Path("inpaint.png"), help="PNG to write (default: inpaint.png)"
    )
    device(inpaint)

    export = commands.add_parser(
        "export-onnx", help="write a denoiser as an ONNX graph and its sampler tables as JSON (the book's Try it page)",
        description="Export a denoiser for onnxruntime (e.g. onnxruntime-web in a browser): OUT/NAME.onnx, the U-Net "
        "with a dynamic batch dimension, and OUT/NAME.json, the schedule's alpha_bar in float64 and what else a "
        "sampler needs (see ddpm_lib.export). The graph outputs the noise estimate: a network that predicts v or x0 is "
        "exported with the conversion to noise inside it.",
    )  # fmt: skip
    denoiser(export)
    export.add_argument("--out", type=Path, default=Path("onnx"), help="folder to write into (default: onnx)")
    export.add_argument(
        "--opset", type=_int("opset", 14), default=17, help="ONNX opset version (default: 17)"
    )

    bound = commands.add_parser(
        "bound", help="the variational bound on held-out digits, in bits per dimension (chapter 03)",
        description="Estimate the variational bound on -log p(x_0) of an unconditional denoiser for N held-out digits "
        "(picked by --seed), in bits per dimension, with Ho et al.'s discretised decoder: L_T exactly, and per digit "
        "K draws of (t uniform in 1..T-1, its noise, the decoder's noise), each an unbiased estimate L_T + L_0 + "
        "(T - 1) L_t (ddpm_lib.theory.variational_bound; 2 K network calls per digit, float32). Prints the mean and "
        "its Monte-Carlo standard error over t and the noise.",
    )  # fmt: skip
    denoiser(bound, default="ddpm_mnist")
    bound.add_argument(
        "--n", type=_int("n", 1), default=500, help="held-out digits (default: 500, all of them)"
    )
    bound.add_argument("--t-samples", type=_int("t_samples", 2), default=100,
                       help="draws of t per digit, at least 2 for a standard error (default: 100)")  # fmt: skip
    bound.add_argument(
        "--seed", type=_int("seed", 0), default=0, help="picks the digits and every draw (default: 0)"
    )
    bound.add_argument("--json", type=Path, default=None, help="also write the result as JSON to this file")
    device(bound)
    return parser, spelled


def _version() -> str:
    from . import __version__

    return __version__


# --- commands -----------------------------------------------------------------------------------------------


def train_options(args: argparse.Namespace) -> dict:
    """The options a parsed ``train`` command line gives, as :func:`ddpm_lib.config.resolve_train_config` takes
    them (``num_classes`` 0 is None: unconditional)."""
    from .config import TrainConfig

    options = {
        f.name: vars(args)[f.name] for f in fields(TrainConfig) if f.metadata["cli"] and f.name in vars(args)
    }
    grid, model = given(args, "grid."), given(args, "model.")
    if "num_classes" in model:
        model["num_classes"] = model["num_classes"] or None
    return {**options, **({"grid": grid} if grid else {}), **({"model": model} if model else {})}


def run_train(args: argparse.Namespace) -> None:
    from .config import preset_for, resolve_train_config
    from .runner import resume_training, run_training

    options = train_options(args)
    progress = not args.no_progress
    args.preset, why = preset_for(args.preset, options)
    if why:
        print(why, flush=True)
    if args.resume:
        summary = resume_training(args.out, args.preset, options, progress=progress, init_from=args.init_from)
    else:
        config = resolve_train_config(args.preset, **options)
        summary = run_training(config, args.out, progress=progress, init_from=args.init_from)
    if summary["stopped_by"]:
        world = summary["world_size"]
        launcher = "python" if world == 1 else f"torchrun (with {world} processes in all)"
        if summary["rank"] == 0:
            print(f"stopped by {summary['stopped_by']} after step {summary['step']}; checkpoint saved to "
                  f"{summary['checkpoint']}; continue with: {launcher} -m ddpm_lib train --out {args.out} --resume")  # fmt: skip
        raise SystemExit(130 if summary["stopped_by"] == "SIGINT" else 143)
    if summary["rank"] == 0:
        processes = f" on {summary['world_size']} processes" if summary["world_size"] > 1 else ""
        grid_path = args.out / "samples" / f"step_{summary['step']:06d}.png"
        print(f"trained {summary['step']} steps{processes}; run folder {args.out}; final samples {grid_path}")


def _denoiser(args: argparse.Namespace):
    from .precision import resolve_device
    from .pretrained import open_denoiser

    device = vars(args).get(
        "spec.device", getattr(args, "device", "auto")
    )  # sample / evaluate: the spec's option
    return open_denoiser(args.checkpoint, args.weights, getattr(args, "dataset", None),
                         device=resolve_device(device), default=args.default_weights)  # fmt: skip


def _sample_spec(args: argparse.Namespace, found, n: int):
    """The spec a ``sample`` / ``evaluate`` command line asks for, checked (``ddpm_lib.generation.spec_for``)."""
    from .generation import spec_for

    spec, shipped, notes = spec_for(found, n, given(args, "spec."), use_recipe=not args.no_recipe)
    for note in notes:
        print(f"{PROG}: {note}", file=sys.stderr)
    if shipped is not None:
        print(f"{found.name}'s sampling recipe ({shipped.path.name}): {shipped.summary}; options given override it "
              "field by field, --no-recipe samples from the defaults", flush=True)  # fmt: skip
    return spec, shipped


def run_sample(args: argparse.Namespace) -> None:
    from .generation import write_samples

    found = _denoiser(args)
    spec, _ = _sample_spec(args, found, args.n)
    write_samples(found, spec, args.n, args.out, args.tensors, args.gif, progress=not args.no_progress)
    print(
        f"wrote {args.out}: {args.n} samples ({spec.describe(found.scheduler.num_timesteps)}) from {found.source}"
    )


def run_evaluate(args: argparse.Namespace) -> None:
    from . import checkpoint, evaluation

    if args.samples is not None:
        images = evaluation.read_samples(args.samples)
        report = evaluation.evaluate(images, "samples", evaluation.scorer(args.dataset or "mnist", args.classifier),
                                     args.draws, source=str(args.samples))  # fmt: skip
    else:
        evaluation.check_draws(args.draws, args.n)
        found = _denoiser(args)
        scoring = evaluation.scorer(found.config.dataset, args.classifier)
        spec, shipped = _sample_spec(args, found, args.n)
        print(f"sampling {args.n} {evaluation.things(scoring.dataset)} "
              f"({spec.describe(found.scheduler.num_timesteps)}) from {found.source}", flush=True)  # fmt: skip
        report = evaluation.evaluate_denoiser(found, spec, args.n, scoring, args.draws, shipped,
                                              progress=not args.no_progress)  # fmt: skip
    print("\n".join(report.pop("lines")))
    checkpoint.write_json(args.json, report)
    print(f"wrote {args.json}")


def run_train_classifier(args: argparse.Namespace) -> None:
    from .evaluation import train_evaluation_classifier

    dataset = args.dataset or "mnist"
    out = args.out or Path(f"runs/classifier/{dataset.replace('-', '_')}_classifier.pt")
    record = train_evaluation_classifier(dataset, args.epochs, args.seed, out, on_epoch=lambda e, held_out: print(
        f"epoch {e:2d}: held-out accuracy {held_out:.2%}", flush=True))  # fmt: skip
    print(f"held-out accuracy {record['heldout_accuracy']:.2%}; wrote {out} and {out.with_suffix('.json')}")


def run_inpaint(args: argparse.Namespace) -> None:
    from . import checkpoint
    from .evaluation import heldout_for, inpaint_heldout

    found = _denoiser(args)
    images = heldout_for(found, args.n, "inpainting uses an unconditional denoiser")
    picture, description = inpaint_heldout(
        found, images, args.mask, args.n, args.steps, args.resample, args.seed
    )
    checkpoint.write_atomic(args.out, lambda f: f.write(picture))
    print(f"wrote {args.out}: {args.n} held-out digits, {description}; seed {args.seed}) from {found.source}")


def run_bound(args: argparse.Namespace) -> None:
    from . import checkpoint
    from .evaluation import bound_on_heldout, heldout_for

    found = _denoiser(args)
    images = heldout_for(found, args.n, "the bound needs an unconditional denoiser")
    print(f"bound of {found.source} on {args.n} held-out digits, {args.t_samples} t-samples each "
          f"({2 * args.n * args.t_samples} network calls)", flush=True)  # fmt: skip
    report = bound_on_heldout(found, images, args.n, args.t_samples, args.seed)
    print("\n".join(report.pop("lines")))
    if args.json is not None:
        source = (
            f"--checkpoint {args.checkpoint}" if args.checkpoint is not None else f"--weights {found.name}"
        )
        command = f"{PROG} bound {source} --n {args.n} --t-samples {args.t_samples} --seed {args.seed}"
        checkpoint.write_json(args.json, {"command": command, **report})
        print(f"wrote {args.json}")


def run_noise(args: argparse.Namespace) -> None:
    from . import checkpoint
    from .plotting import noising_figure

    picture = noising_figure(args.timesteps, args.seed)
    checkpoint.write_atomic(args.out, lambda f: f.write(picture))
    print(f"wrote {args.out}: 10 held-out digits noised at t = {', '.join(map(str, args.timesteps))}")


def run_data(args: argparse.Namespace) -> None:
    import torch

    from .data import load_dataset

    for split in ("train", "heldout"):
        dataset = load_dataset(args.dataset or "mnist", split, root=args.root, download=args.download)
        labels = dataset.tensors[1]
        print(f"  per class: {torch.bincount(labels, minlength=10).tolist()}")


def run_export_onnx(args: argparse.Namespace) -> None:
    from .export import export

    name = None if args.checkpoint is not None else (args.weights or args.default_weights)
    onnx_path, json_path = export(name, args.checkpoint, args.out, args.opset)
    print(f"wrote {onnx_path} and {json_path}")


# --- entry point --------------------------------------------------------------------------------------------


def _translate_mode(argv: list[str]) -> list[str]:
    """Accept the reference's ``--mode train|eval`` as the ``train`` / ``sample`` commands."""
    for i, arg in enumerate(argv):
        value = None
        if arg == "--mode" and i + 1 < len(argv):
            value, rest = argv[i + 1], argv[:i] + argv[i + 2 :]
        elif arg.startswith("--mode="):
            value, rest = arg.split("=", 1)[1], argv[:i] + argv[i + 1 :]
        if value is not None:
            return [MODE_ALIASES.get(value, value), *rest]  # argparse reports an invalid choice
    return argv


def _rank_prefix() -> str:
    """``[rank N] `` in the processes of a torchrun launch other than rank 0, to tell their errors apart."""
    from .distributed import Distributed

    try:
        rank = Distributed.from_env().rank
    except UsageError:
        return ""
    return f"[rank {rank}] " if rank else ""


COMMANDS = {"train": run_train, "sample": run_sample, "noise": run_noise, "data": run_data, "evaluate": run_evaluate,
            "train-classifier": run_train_classifier, "inpaint": run_inpaint, "export-onnx": run_export_onnx,
            "bound": run_bound}  # fmt: skip


def describe_usage_error(error: UsageError, spelled: dict[str, str]) -> str:
    """The one line a usage error prints: the flag at fault (if known), then the message."""
    from .config import option_flag

    if error.option is None:
        return str(error)
    flag = spelled.get(error.option) or spelled.get(f"spec.{error.option}") or option_flag(error.option)
    return f"{flag}: {error}"


def main(argv: list[str] | None = None) -> int:
    from .training import NonFiniteLossError

    argv = _translate_mode(list(sys.argv[1:] if argv is None else argv))
    parser, spelled = build_parser(argv)
    args = parser.parse_args(argv)  # bad options: one line, exit 2
    try:
        COMMANDS[args.command](args)
    except NonFiniteLossError as error:  # not bad input: the run diverged; its last good checkpoint is kept
        print(f"{_rank_prefix()}{PROG} {args.command}: error: {error}", file=sys.stderr)
        return 1
    except UsageError as error:
        print(f"{_rank_prefix()}{PROG} {args.command}: error: "
              f"{describe_usage_error(error, spelled.get(args.command, {}))}", file=sys.stderr)  # fmt: skip
        return 2
    return 0
