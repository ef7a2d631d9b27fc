"""Every option of a training run, once; the run's record of what it decided (hand-written plumbing).

:class:`TrainConfig` declares each option of ``python -m ddpm_lib train`` with its default, its help text and its
check (:func:`ddpm_lib.options.option`). It is frozen: it says what was asked for, and nothing the run decides
is written into it. How the run's sample grids are drawn is a :class:`~ddpm_lib.spec.SampleSpec` (``grid``); the
U-Net's options are the keyword arguments of :class:`ddpm_lib.unet.Unet` (``model``), whose defaults stay in its
signature.

:func:`resolve_train_config` is the one way to a configuration: a preset's defaults, then the options given,
checked, with every U-Net option written out (so that a later change of a default cannot change a saved run).
The command line, the benchmarks and the tests call it; nothing parses an argument list to get one.

:class:`RunRecord` is what a run decided when it started: the steps it trains (from ``epochs`` too), the
processes, how the batch was split, the learning rate after scaling, the device and the precision it computes
in. A run writes both, ``config.json`` and ``run.json``, and a checkpoint holds both; :func:`config_from_dict`
and :func:`record_from_dict` read them back (a key added in a later version takes its default; an unknown key is
an error naming it).

:data:`PRESETS` are named sets of defaults: an option given explicitly always wins over the preset.

Importing this module imports neither the training loop nor the distributed code, so reading shipped weights
(which carry a config) does not either.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import asdict, dataclass, fields, replace

import torch

from .errors import UsageError
from .options import (
    BOOLEAN,
    TEXT,
    Check,
    check_fields,
    from_dict,
    integer,
    integer_list,
    number,
    one_of,
    option,
    optional,
)
from .spec import SampleSpec


def _loss_weightings() -> tuple[str, ...]:
    from .training import LOSS_WEIGHTINGS  # read when checked, so that loading a config stays light

    return LOSS_WEIGHTINGS


def _datasets() -> tuple[str, ...]:
    from .data import DATASETS

    return DATASETS


def _precisions() -> tuple[str, ...]:
    from .precision import PRECISIONS

    return PRECISIONS


def _devices() -> tuple[str, ...]:
    from .precision import DEVICES

    return DEVICES


def _schedules() -> tuple[str, ...]:
    from .schedule import SCHEDULES

    return tuple(SCHEDULES)


#: the batch size ``--lr`` is tuned for (the reference's); ``--lr-scaling`` scales from it
LR_REFERENCE_BATCH = 128
LR_SCALINGS = ("none", "linear", "sqrt")


@dataclass(frozen=True)
class TrainConfig:
    """Every option of a training run. Saved as ``config.json`` and inside each checkpoint."""

    steps: int | None = option(
        3000,
        "optimisation steps (None: as many as --epochs gives)",
        check=Check("a positive integer", lambda v: v is None or integer(1).ok(v)),
    )
    epochs: int | None = option(
        None, "passes over the training images, instead of --steps", check=optional(integer(1))
    )
    batch_size: int = option(
        128, "the global batch: under torchrun, split evenly across the processes", check=integer(1)
    )
    lr: float = option(
        1e-3,
        f"peak learning rate at batch {LR_REFERENCE_BATCH}, before --lr-scaling",
        check=number(0, low_open=True),
    )
    lr_scaling: str = option(
        "none",
        f"scale --lr by batch/{LR_REFERENCE_BATCH} (linear) or its square root (sqrt)",
        check=one_of(LR_SCALINGS),
    )
    weight_decay: float = option(0.01, "AdamW's weight decay", check=number(0))
    pct_start: float = option(
        0.25,
        "share of the run spent warming up the learning rate",
        check=number(0, 1, low_open=True, high_open=True),
    )
    grad_clip: float = option(1.0, "gradient norm clipping threshold", check=number(0, low_open=True))
    ema_decay: float = option(0.999, "decay of the EMA of the weights", check=number(0, 1, high_open=True))
    seed: int = option(0, "seed of the batch order, the noise, the timesteps and the grids", check=integer(0))
    precision: str = option(
        "float32",
        "precision of the forward pass: auto (bfloat16 where the hardware computes in it natively, float16 on other "
        "GPUs, else float32; ddpm_lib.precision), float32, bfloat16 or float16",
        check=one_of(_precisions),
    )
    loss_weighting: str = option(
        "uniform",
        "per-timestep loss weight: uniform (DDPM) or min_snr (min(SNR, gamma)/SNR, chapter 05)",
        check=one_of(_loss_weightings),
    )
    min_snr_gamma: float = option(5.0, "gamma of min_snr weighting", check=number(0, low_open=True))
    label_dropout: float = option(
        0.0,
        "share of labels replaced by 'no label' (class-conditional models, --num-classes; chapter 10)",
        check=number(0, 1),
    )
    device: str = option(
        "auto", "where to train (auto: a CUDA GPU, else Apple's mps, else the CPU)", check=one_of(_devices)
    )
    dataset: str = option(
        "mnist", "the images to learn: mnist or fashion-mnist (chapter 15)", check=one_of(_datasets)
    )
    data_root: str | None = option(
        None,
        "mnist: full MNIST in torchvision's layout (default: the bundled subset); fashion-mnist: the folder of "
        "its files (default: data/ or Debian's /usr/share/datasets/fashion-mnist)",
        check=optional(TEXT),
    )
    download: bool = option(False, "download the data set into --data-root (needs a network)", check=BOOLEAN)
    eval_every: int = option(
        500, "steps between sample grids and kept checkpoints; 0: only at the end", check=integer(0)
    )
    n_samples: int = option(16, "digits per sample grid", check=integer(1))
    checkpoint_every: int = option(100, "steps between checkpoints (checkpoints/last.pt)", check=integer(1))
    grid: SampleSpec = option(
        default_factory=SampleSpec, help="how the sample grids are drawn (seed and precision: the run's)"
    )
    wandb: bool = option(False, "log to Weights & Biases as well", check=BOOLEAN)
    wandb_project: str = option("ddpm-from-scratch", "the Weights & Biases project", check=TEXT)
    wandb_run_name: str | None = option(None, "the run's name in Weights & Biases (default: chosen by wandb)",
                                        check=optional(TEXT))  # fmt: skip
    wandb_mode: str = option(
        "offline",
        "offline needs no account; sync later with `wandb sync`",
        check=one_of(("offline", "online")),
    )
    num_timesteps: int = option(1000, "T, the number of noise levels", check=integer(1))
    schedule: str = option(
        "linear", "noise schedule: linear (chapter 01) or cosine (chapter 09)", check=one_of(_schedules)
    )
    beta_start: float = option(
        1e-4, "first beta of the linear schedule", check=number(0, 1, low_open=True, high_open=True)
    )
    beta_end: float = option(
        0.02, "last beta of the linear schedule", check=number(0, 1, low_open=True, high_open=True)
    )
    model: dict = option(
        default_factory=dict,
        help="keyword arguments of ddpm_lib.unet.Unet (its defaults for the rest)",
        cli=False,
    )
    preset: str | None = option(None, "the --preset the run started from", cli=False)

    def check(self) -> TrainConfig:
        """Raise :class:`~ddpm_lib.errors.UsageError` naming the first bad or contradicting option; return self."""
        check_fields(self)
        if (self.steps is None) == (self.epochs is None):
            raise UsageError("give either steps or epochs, not both", "epochs" if self.epochs else "steps")
        try:
            self.grid.check()
        except UsageError as error:
            raise UsageError(str(error), option=f"grid.{error.option}" if error.option else "grid") from None
        if not isinstance(self.model, dict):
            raise UsageError(
                f"model must be a dict of Unet options, got {type(self.model).__name__}", "model"
            )
        if self.beta_start > self.beta_end:
            raise UsageError(
                f"beta_start ({self.beta_start}) must not exceed beta_end ({self.beta_end})", "beta_start"
            )
        if self.download and self.data_root is None:
            raise UsageError("download needs data_root: the folder to download the data set into", "download")
        conditional = self.model.get("num_classes") is not None
        if self.label_dropout and not conditional:
            raise UsageError(
                "label_dropout applies to class-conditional models: set num_classes as well", "label_dropout"
            )
        if self.grid.guidance and not conditional:
            raise UsageError(
                "guidance of the grids needs a class-conditional model: set num_classes as well",
                "grid.guidance",
            )
        if self.grid.label is not None:
            raise UsageError("the grids draw every class in turn; grid.label must stay None", "grid.label")
        if self.schedule == "cosine" and self.grid.sampler != "clip" and not self.grid.clip:
            raise UsageError(
                f"the cosine schedule's grids need a clipped x0 estimate (chapter 09: at t = T-1 an error in eps "
                f"is multiplied by about 20,000 in x0, and unclipped samplers give pure noise); use the sampler "
                f"'clip', or clip the x0 estimate of {self.grid.sampler!r} (--clip-x0)",
                "grid.sampler",
            )
        return self

    def to_dict(self) -> dict:
        return asdict(self)


def config_from_dict(values: dict, what: str = "config") -> TrainConfig:
    """A :class:`TrainConfig` from its saved dict: an unknown key is a UsageError naming it; a missing one (an
    option added since the file was written) takes its default."""
    return from_dict(TrainConfig, values, what)


@dataclass(frozen=True)
class RunRecord:
    """What a run decided when it started (``run.json``, and in every checkpoint beside the config)."""

    steps: int = option(
        0, "optimisation steps in all: --steps, or --epochs times the batches per epoch", cli=False
    )
    world_size: int = option(1, "processes that train the run", cli=False)
    per_process_batch_size: int = option(0, "each process's share of the batch", cli=False)
    backend: str | None = option(None, "torch.distributed backend, if several processes", cli=False)
    effective_lr: float = option(0.0, "--lr after --lr-scaling", cli=False)
    device: str = option("cpu", "where the run trains (the device --device auto chose)", cli=False)
    precision: str = option(
        "float32", "the precision the forward pass computes in (ddpm_lib.precision)", cli=False
    )

    def to_dict(self) -> dict:
        return asdict(self)


def record_from_dict(values: dict, what: str = "run record") -> RunRecord:
    return from_dict(RunRecord, values, what)


#: Named recipes for ``python -m ddpm_lib train --preset NAME``: defaults that options given explicitly
#: override (``model`` entries key by key, ``grid`` entries field by field).
#: ``quick``: the CPU time-to-digits recipe of chapter 11, measured in
#: ``benchmarks/time_to_digits.py`` (about 5 minutes of training on 2 CPU cores): a class-conditional U-Net
#: with two dense units per block, self-attention at 7×7 and v-prediction (the winner of chapter 11's equal-time
#: benchmark of denoisers; labels dropped 10% of the time, so that it can be guided), the precision the hardware
#: computes in fast (bfloat16 on CPUs with bfloat16 instructions), batch 64 at a higher LR, min-SNR-γ loss weighting, a short EMA, and grids drawn with 25-step
#: DDPM and classifier-free guidance w = 1 (chapter 10). ``quick-unconditional``: the same network without labels,
#: on the cosine schedule, so that training and autoguided sampling fit in 12 minutes on 2 CPU cores
#: (``benchmarks/time_to_digits.py --preset quick-unconditional``).
PRESETS: dict[str, dict] = {
    "quick": {
        "steps": 1400,
        "batch_size": 64,
        "lr": 2e-3,
        "pct_start": 0.1,
        "ema_decay": 0.995,
        "precision": "auto",
        "loss_weighting": "min_snr",
        "label_dropout": 0.1,
        "eval_every": 350,
        "grid": {"sampler": "ddpm", "steps": 25, "guidance": 1.0},
        "model": {
            "units_per_block": 2,
            "mid_units": 2,
            "num_classes": 10,
            "attention": [2],
            "prediction": "v",
        },
    },
}
#: without labels: no label dropout, no conditioning and no guidance; the cosine schedule (chapter 09), whose grids
#: need the clipped sampler, and 2,500 steps; a snapshot at each quarter, the first of which its samples are
#: autoguided away from (chapter 10, section 5; ``benchmarks/time_to_digits.py --preset quick-unconditional``)
PRESETS["quick-unconditional"] = {
    **{key: value for key, value in PRESETS["quick"].items() if key != "label_dropout"},
    "steps": 2500,
    "eval_every": 625,
    "schedule": "cosine",
    "grid": {"sampler": "clip", "steps": PRESETS["quick"]["grid"]["steps"]},
    "model": {key: value for key, value in PRESETS["quick"]["model"].items() if key != "num_classes"},
}

#: ``quick`` for a CPU that computes in float32 (no bfloat16 instructions: AVX2 alone, most laptops): the same recipe
#: on a network of base width 16 (a quarter of the parameters, about three times the float32 steps per second), for
#: 1,600 steps, its grids guided with w = 1.5 (a shorter run is less sure of its labels; chapter 10): about five
#: minutes of training on 2 cores, measured against the same bar (``benchmarks/time_to_digits.py``, under
#: ``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2``; ``ddpm_lib/results/time_to_digits.json``). ``--preset quick``
#: picks it where :func:`ddpm_lib.precision.choose` lands on a CPU in float32 (:func:`preset_for`).
PRESETS["quick-float32"] = {
    **PRESETS["quick"],
    "steps": 1600,
    "eval_every": 400,
    "grid": {**PRESETS["quick"]["grid"], "guidance": 1.5},
    "precision": "float32",
    "model": {**PRESETS["quick"]["model"], "base_dim": 16},
}
#: the presets that stand for another on some machines: name -> (its float32 CPU variant)
FLOAT32_CPU_VARIANTS = {"quick": "quick-float32"}


def preset_for(name: str | None, options: dict | None = None) -> tuple[str | None, str | None]:
    """The preset ``name`` stands for on this machine, and a line saying why if it is another: ``quick`` on a CPU that
    computes in float32 (:func:`ddpm_lib.precision.choose`, with the ``device`` and ``precision`` of ``options`` if
    given) is ``quick-float32``."""
    if name not in FLOAT32_CPU_VARIANTS:
        return name, None
    from .precision import choose

    options = options or {}
    compute = choose(options.get("device", "auto"), options.get("precision", "auto"))
    if compute.device.type == "cpu" and compute.precision == "float32":
        variant = FLOAT32_CPU_VARIANTS[name]
        return (
            variant,
            f"--preset {name} is {variant} here, the recipe sized for float32 ({compute.describe()})",
        )
    return name, None


def _unet_choices(name: str):
    def allowed() -> tuple[str, ...]:  # read when checked, so that loading a config does not build a U-Net
        from . import diffusion, unet

        return {"unit": tuple(unet.UNITS), "norm": unet.NORMS, "time_embedding": unet.TIME_EMBEDDINGS,
                "prediction": diffusion.PREDICTIONS}[name]  # fmt: skip

    return one_of(allowed)


#: The U-Net options of a run (keyword arguments of ddpm_lib.unet.Unet, which checks them and holds their
#: defaults): the help ``python -m ddpm_lib train`` shows, and how it reads each value
MODEL_OPTIONS = {
    "base_dim": ("width of the first level of the U-Net", integer(2)),
    "dim_mults": ("widths of the U-Net's levels as multiples of --base-dim, comma-separated", integer_list(1)),
    "units_per_block": ("residual units in each encoder and decoder block", integer(1)),
    "mid_units": ("residual units in the bottleneck", integer(1)),
    "unit": ("residual unit: dense (the course's) or shuffle (the reference's ShuffleNet-v2 unit)", _unet_choices("unit")),
    "norm": ("normalisation: group (the course's) or batch (the reference's)", _unet_choices("norm")),
    "time_embedding": ("time embedding: sinusoidal (the course's) or learned (the reference's table)",
                       _unet_choices("time_embedding")),
    "num_classes": ("classes of a class-conditional U-Net (10 for MNIST's digits); 0: unconditional", integer(0)),
    "attention": ("levels with self-attention, comma-separated: len(dim_mults) is the 7x7 bottleneck, one less "
                  "14x14; none: no attention (chapter 04, section 13)",
                  Check("levels 0..len(dim_mults), comma-separated, or none",
                        lambda v: isinstance(v, list) and all(isinstance(x, int) and x >= 0 for x in v))),
    "prediction": ("what the network learns to output: eps (the noise), v or x0 (chapter 05)", _unet_choices("prediction")),
}  # fmt: skip
#: how ``python -m ddpm_lib train`` spells the options of its grids' SampleSpec (``--steps`` is the run's length)
GRID_FLAGS = {"sampler": "--sampler", "steps": "--sampler-steps", "eta": "--eta", "spacing": "--spacing",
              "clip": "--clip-x0", "guidance": "--guidance"}  # fmt: skip


def option_flag(name: str) -> str:
    """The train command's flag for an option of :func:`resolve_train_config`: ``lr`` -> ``--lr``,
    ``grid.steps`` -> ``--sampler-steps``, ``model.base_dim`` -> ``--base-dim``."""
    part, _, key = name.partition(".")
    if part == "grid" and key in GRID_FLAGS:
        return GRID_FLAGS[key]
    return "--" + (key or part).replace("_", "-")


def preset_defaults(name: str | None) -> TrainConfig:
    """The defaults of a run: :class:`TrainConfig`'s, with the preset ``name``'s values in their place."""
    config = TrainConfig()
    if name is None:
        return config
    if name not in PRESETS:
        raise UsageError(f"preset must be one of {', '.join(PRESETS)}, got {name!r}", "preset")
    values = dict(PRESETS[name])
    grid = replace(config.grid, **values.pop("grid", {}))
    model = {**config.model, **values.pop("model", {})}
    return replace(config, **values, grid=grid, model=model, preset=name)


def resolve_train_config(preset: str | None = None, **options) -> TrainConfig:
    """The configuration of a run: :class:`TrainConfig`'s defaults, the preset's in their place, then ``options``:
    fields by name, ``grid={...}`` field by field and ``model={...}`` key by key (``epochs`` replaces ``steps``).

    Checked (a :class:`~ddpm_lib.errors.UsageError` names the first bad option), with every U-Net option written
    out: ``resolve_train_config("quick", lr=3e-3, model={"attention": []})``.
    """
    from .unet import Unet

    config = preset_defaults(preset)
    options = dict(options)
    grid, model = dict(options.pop("grid", None) or {}), dict(options.pop("model", None) or {})
    known = {f.name for f in fields(TrainConfig)} - {"grid", "model", "preset"}
    for given, allowed, where in ((options, known, ""), (grid, {f.name for f in fields(SampleSpec)}, "grid."),
                                  (model, set(inspect.signature(Unet.__init__).parameters) - {"self"}, "model.")):  # fmt: skip
        unknown = sorted(set(given) - allowed)
        if unknown:
            raise UsageError(
                f"unknown option(s) {', '.join(where + name for name in unknown)}", where + unknown[0]
            )
    if options.get("epochs") is not None and "steps" not in options:
        options["steps"] = None
    config = replace(
        config, **options, grid=replace(config.grid, **grid), model={**config.model, **model}
    ).check()
    try:
        network = Unet(**config.model)  # its own checks of its options
    except UsageError as error:
        raise UsageError(str(error), f"model.{error.option}" if error.option else "model") from None
    return replace(config, model=dict(network.config))


def build_model(config: TrainConfig) -> torch.nn.Module:
    """The U-Net a run trains: :class:`ddpm_lib.unet.Unet` with ``config.model``'s options."""
    from .unet import Unet

    return Unet(**config.model)


def schedule_for(config: TrainConfig):
    """The noise schedule a run trains (and its checkpoints sample) with."""
    from .schedule import LinearBetaScheduler, make_schedule

    if config.schedule == "linear":
        return LinearBetaScheduler(config.num_timesteps, config.beta_start, config.beta_end)
    return make_schedule(config.schedule, config.num_timesteps)


def scaled_lr(lr: float, batch_size: int, rule: str = "none") -> float:
    """``lr`` for the global ``batch_size`` by ``rule``: ``none``, ``linear`` (× B/128) or ``sqrt`` (× √(B/128))."""
    if rule not in LR_SCALINGS:
        raise UsageError(f"lr_scaling must be one of {', '.join(LR_SCALINGS)}; got {rule!r}")
    ratio = batch_size / LR_REFERENCE_BATCH
    return lr * {"none": 1.0, "linear": ratio, "sqrt": math.sqrt(ratio)}[rule]
