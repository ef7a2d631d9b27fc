"""How samples are drawn: :class:`SampleSpec`, every option of every sampler in one place (hand-written plumbing).

A spec holds everything that decides which samples come out — the sampler and its steps, DDIM's η, the timestep
spacing, clipping, classifier-free guidance, the label, autoguidance (its weak model, weight and interval), the
seed and the precision — so that one value says how a set of samples was made: ``ddpm_lib.generation.generate``
draws from it, the command line builds one from its options, a training run's grids keep one in the run's
config, and shipped weights carry one as their sampling recipe (``ddpm_lib.pretrained.recipe``). It is plain
data (no tensors, no networks): the weak model of autoguidance is named, not held.

Saved specs (in checkpoints and recipes) are read back with :meth:`SampleSpec.from_dict`: a field added later takes
its default, an unknown key is refused by name.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .errors import UsageError
from .options import BOOLEAN, TEXT, Check, check_fields, from_dict, integer, number, one_of, option, optional

#: the samplers, and the network evaluations each takes by default (None: all T)
DEFAULT_STEPS: dict[str, int | None] = {"ddpm": None, "clip": None, "ddim": 50, "dpmpp": 20}
SAMPLERS = tuple(DEFAULT_STEPS)


def _precisions() -> tuple[str, ...]:
    from .precision import PRECISIONS

    return PRECISIONS


def _devices() -> tuple[str, ...]:
    from .precision import DEVICES

    return DEVICES


def _spacings() -> tuple[str, ...]:
    from .fast_sampling import SPACINGS  # read when checked: a spec stays light to import

    return SPACINGS


def parse_interval(text: str) -> tuple[int, int]:
    """``LO:HI`` (the command line's spelling of an interval of timesteps) as ``(LO, HI)``."""
    lo, colon, hi = text.partition(":")
    if colon and lo.strip().isdigit() and hi.strip().isdigit():
        return int(lo), int(hi)
    raise ValueError(f"expected LO:HI, two timesteps, got {text!r}")


INTERVAL = Check(
    "LO:HI, two timesteps with 0 <= LO <= HI",
    lambda v: (
        isinstance(v, (tuple, list))
        and len(v) == 2
        and all(isinstance(x, int) and not isinstance(x, bool) for x in v)
        and 0 <= v[0] <= v[1]
    ),
)


@dataclass(frozen=True)
class SampleSpec:
    """How to draw samples: every option of every sampler, with its default, in one place."""

    sampler: str = option(
        "clip",
        "the reverse process: ddpm (DDPM's ancestral step, chapter 06), clip (the same step through a "
        "clipped x0 estimate, chapter 06), ddim or dpmpp (DDIM, DPM-Solver++(2M): chapter 08)",
        check=one_of(SAMPLERS),
    )
    steps: int | None = option(
        None,
        "network evaluations per sample (default: all T steps for ddpm / clip, 50 for ddim, 20 for dpmpp); "
        "fewer than T runs the sampler on a respaced chain (chapter 08)",
        check=optional(integer(1)),
    )
    eta: float = option(
        0.0, "DDIM's noise scale: 0 deterministic, 1 DDPM-like (ddim only)", check=number(0, 1)
    )
    spacing: str = option(
        "trailing", "which timesteps a shortened chain visits (chapter 08)", check=one_of(_spacings)
    )
    clip: bool = option(
        False,
        "clamp the x0 estimate to [-1, 1] in ddim / dpmpp (the sampler 'clip' is ddpm with it)",
        check=BOOLEAN,
        flag="--clip-x0",
    )
    guidance: float = option(
        0.0,
        "classifier-free guidance w of a class-conditional model (chapter 10); 0: none",
        check=number(-1),
    )
    label: int | None = option(
        None,
        "the digit a class-conditional model draws (default: every digit in turn)",
        check=optional(integer(0)),
    )
    weak: str | None = option(
        None,
        "autoguidance (chapter 10, section 5): steer the model away from a weaker version of itself, given as "
        "shipped weights, NAME@STEP for a snapshot of their run (e.g. ddpm_mnist@4000) or a checkpoint file",
        check=optional(TEXT),
        metavar="WEIGHTS",
    )
    autoguidance: float | None = option(
        None, "the autoguidance weight w, with --weak (default: 1)", check=optional(number(-1)), metavar="W"
    )
    guidance_interval: tuple[int, int] | None = option(
        None,
        "autoguide only the steps with LO <= t <= HI, e.g. 200:900 (default: every step)",
        check=optional(INTERVAL),
        parse=parse_interval,
        metavar="LO:HI",
    )
    seed: int = option(0, "seed of the starting noise and of every step's noise", check=integer(0))
    device: str = option(
        "auto",
        "where the network runs: auto (a CUDA GPU, else Apple's mps, else the CPU; ddpm_lib.precision), cpu, cuda or "
        "mps; the samples come back on the CPU",
        check=one_of(_devices),
    )
    precision: str = option(
        "auto",
        "precision of the network: auto (what the hardware computes in fast: bfloat16 on CPUs and GPUs with it, "
        "float16 on other GPUs, else float32; ddpm_lib.precision), float32, bfloat16 or float16; the chain itself "
        "stays float32",
        check=one_of(_precisions),
    )
    batch_size: int = option(256, "samples per batch (memory, not results)", check=integer(1))

    def __post_init__(self):
        if isinstance(self.guidance_interval, list):  # read back from JSON
            object.__setattr__(self, "guidance_interval", tuple(self.guidance_interval))

    def check(self) -> SampleSpec:
        """Raise :class:`~ddpm_lib.errors.UsageError` on a bad value or a contradiction; return self."""
        check_fields(self)
        if self.eta != 0 and self.sampler != "ddim":
            raise UsageError(
                f"eta applies only to the sampler 'ddim', got eta={self.eta} with {self.sampler!r}",
                option="eta",
            )
        if self.clip and self.sampler in ("ddpm", "clip"):
            raise UsageError(
                "clip (--clip-x0) applies to the samplers 'ddim' and 'dpmpp'; for DDPM with a clipped "
                "x0 estimate use the sampler 'clip'",
                option="clip",
            )
        for name in ("autoguidance", "guidance_interval"):
            if getattr(self, name) is not None and self.weak is None:
                raise UsageError("needs --weak, the weights to guide away from", option=name)
        return self

    @property
    def autoguidance_weight(self) -> float:
        """The autoguidance weight w: ``autoguidance``, or 1 when a weak model is named without one."""
        return 1.0 if self.autoguidance is None else self.autoguidance

    def num_steps(self, num_timesteps: int) -> int:
        """The network evaluations per sample for a schedule of ``num_timesteps`` steps."""
        steps = self.steps if self.steps is not None else DEFAULT_STEPS[self.sampler] or num_timesteps
        if steps > num_timesteps:
            raise UsageError(
                f"steps must lie in 1..{num_timesteps} (the schedule's T), got {steps}", option="steps"
            )
        return steps

    def loop_options(self) -> dict:
        """The options of the sampler's loop (chapters 06 and 08) this spec sets, beyond the common ones."""
        return {
            "ddpm": {"clip": False},
            "clip": {"clip": True},
            "ddim": {"clip": self.clip, "eta": self.eta},
            "dpmpp": {"clip": self.clip},
        }[self.sampler]

    def describe(self, num_timesteps: int = 1000) -> str:
        """A short human description, e.g. ``"ddim, 50 steps (trailing), eta 0"``."""
        steps = self.num_steps(num_timesteps)
        words = [self.sampler, f"{steps} steps" + (f" ({self.spacing})" if steps < num_timesteps else "")]
        if self.sampler == "ddim":
            words.append(f"eta {self.eta:g}")
        if self.clip:
            words.append("clipped x0")
        if self.guidance:
            words.append(f"guidance w = {self.guidance:g}")
        if self.label is not None:
            words.append(f"label {self.label}")
        if self.weak is not None:
            where = (
                ""
                if self.guidance_interval is None
                else ", only for {} <= t <= {}".format(*self.guidance_interval)
            )
            words.append(f"autoguided away from {self.weak} (w = {self.autoguidance_weight:g}{where})")
        words.append(f"seed {self.seed}")
        return ", ".join(words)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict, what: str = "sample spec") -> SampleSpec:
        """A spec from saved values: a missing field takes its default, an unknown key is a UsageError."""
        return from_dict(cls, values, what)
