"""One way to draw samples (hand-written plumbing around the samplers the chapters teach).

A :class:`SampleSpec` says how to sample — which sampler, how many network evaluations, DDIM's η, the
timestep spacing, clipping, classifier-free guidance, the label, the seed, the precision — and
:func:`generate` draws a batch of samples from it. Everything that samples goes through these two:
``python -m ddpm_lib sample`` and ``evaluate``, the grids of a training run, the chapters' measurements
and the benchmarks. The samplers themselves are promoted from the chapters:

- ``ddpm`` and ``clip``: chapter 06's reverse step, :func:`ddpm_lib.sampling.sample` and
  :func:`~ddpm_lib.sampling.sample_clip` (DDPM's ancestral step through the posterior; ``clip``
  clamps x̂0 to [-1, 1] first), over all T timesteps or a respaced subset of them (chapter 08);
- ``ddim`` and ``dpmpp``: chapter 08's DDIM and DPM-Solver++(2M).

Seeding, once for all: batch ``i`` (of ``batch_size`` samples) draws its starting noise and every
later random number from a generator seeded with ``seed + i``, so the first ``batch_size`` samples of
a larger request are the samples of a smaller one.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from .errors import UsageError
from .options import BOOLEAN, check_fields, integer, number, one_of, option, optional
from .result_cache import cached

#: the samplers :func:`generate` runs, and the network evaluations each takes by default (None: all T)
DEFAULT_STEPS: dict[str, int | None] = {"ddpm": None, "clip": None, "ddim": 50, "dpmpp": 20}
SAMPLERS = tuple(DEFAULT_STEPS)


def _spacings() -> tuple[str, ...]:
    from .fast_sampling import SPACINGS

    return SPACINGS


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
    seed: int = option(0, "seed of the starting noise and of every step's noise", check=integer(0))
    bf16: bool = option(
        True,
        "bfloat16 autocast for the network (about 1.5x faster on CPUs with bfloat16 support); the chain "
        "itself stays float32",
        check=BOOLEAN,
        flag="--float32",
    )
    batch_size: int = option(256, "samples per batch (memory, not results)", check=integer(1))

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
        return self

    def num_steps(self, num_timesteps: int) -> int:
        """The network evaluations per sample for a schedule of ``num_timesteps`` steps."""
        steps = self.steps if self.steps is not None else DEFAULT_STEPS[self.sampler] or num_timesteps
        if steps > num_timesteps:
            raise UsageError(
                f"steps must lie in 1..{num_timesteps} (the schedule's T), got {steps}", option="steps"
            )
        return steps

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
        words.append(f"seed {self.seed}")
        return ", ".join(words)


def balanced_labels(n: int, num_classes: int = 10) -> torch.Tensor:
    """Labels 0, 1, …, K−1, 0, 1, … (n,): every class equally often, as in the training data."""
    return torch.arange(n) % num_classes


def num_classes_of(model: nn.Module) -> int | None:
    """The classes of a class-conditional model (its ``config["num_classes"]``), None for an unconditional one."""
    config = getattr(model, "config", None)
    return config.get("num_classes") if isinstance(config, dict) else None


def _device_of(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def bf16_supported(device: torch.device) -> bool:
    return device.type == "cpu" or (device.type == "cuda" and torch.cuda.is_bf16_supported())


def _labels_for(
    model: nn.Module, spec: SampleSpec, n: int, labels: torch.Tensor | None
) -> torch.Tensor | None:
    classes = num_classes_of(model)
    if classes is None:
        if labels is not None or spec.label is not None or spec.guidance:
            asked = "guidance" if spec.guidance else "a label"
            raise UsageError(
                f"{asked} needs a class-conditional model; this one is unconditional",
                option="guidance" if spec.guidance else "label",
            )
        return None
    if labels is not None:
        labels = torch.as_tensor(labels)
        if tuple(labels.shape) != (n,) or labels.dtype.is_floating_point:
            raise UsageError(
                f"labels must be {n} integer class labels, shape ({n},); got {tuple(labels.shape)}"
            )
        if labels.numel() and (labels.min() < -1 or labels.max() >= classes):
            raise UsageError(f"labels must lie in 0..{classes - 1} (or -1: no label)")
        return labels.long()
    if spec.label is not None:
        if spec.label >= classes:
            raise UsageError(
                f"label must lie in 0..{classes - 1} for this model, got {spec.label}", option="label"
            )
        return torch.full((n,), spec.label, dtype=torch.long)
    return balanced_labels(n, classes)


def _run_sampler(spec: SampleSpec, model, scheduler, x_T, generator, timesteps, progress, on_step):
    """The one dispatch from a sampler's name to the chain that runs it."""
    from .fast_sampling import ddim_sample, dpm_solver_pp_sample
    from .sampling import sample_loop

    if spec.sampler in ("ddpm", "clip"):
        return sample_loop(scheduler, model, x_T, spec.sampler, generator, on_step, progress, timesteps)
    steps, spacing = len(timesteps), spec.spacing
    if spec.sampler == "ddim":
        return ddim_sample(
            model, scheduler, x_T, steps, spec.eta, spacing, spec.clip, generator, progress, on_step
        )
    return dpm_solver_pp_sample(model, scheduler, x_T, steps, spacing, spec.clip, progress, on_step)


@torch.no_grad()
def generate(
    model: nn.Module,
    scheduler,
    n: int,
    spec: SampleSpec | None = None,
    *,
    labels: torch.Tensor | None = None,
    image_shape: tuple[int, int, int] = (1, 28, 28),
    progress: bool = False,
    on_step=None,
    **options,
) -> torch.Tensor:
    """``n`` samples (n, C, H, W) in [−1, 1], float32 on the CPU, drawn as ``spec`` says.

    Options may be given as keywords instead of, or on top of, a spec:
    ``generate(model, scheduler, 16, sampler="ddim", steps=20)``. A class-conditional model draws every
    digit in turn unless ``spec.label`` or ``labels`` (n,) says otherwise. ``on_step(t, x_t)`` sees the
    image entering each step (of every batch), e.g. to record a trajectory.
    """
    spec = replace(spec or SampleSpec(), **options).check()
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise UsageError(f"n must be a positive integer, got {n!r}")
    labels = _labels_for(model, spec, n, labels)
    if on_step is not None:  # a caller that watches the chain must see it run
        return _draw(model, scheduler, n, spec, labels, image_shape, progress, on_step)
    return cached("generate", _draw, model, scheduler, n, spec, labels, image_shape, progress)


def _draw(model, scheduler, n, spec, labels, image_shape, progress, on_step=None) -> torch.Tensor:
    if spec.guidance:
        from .guidance import ClassifierFreeGuidance

        model = ClassifierFreeGuidance(model, spec.guidance)
    from .fast_sampling import timesteps_for
    from .unet import Conditioned

    timesteps = timesteps_for(scheduler.num_timesteps, spec.num_steps(scheduler.num_timesteps), spec.spacing)
    timesteps = timesteps.tolist()
    device = _device_of(model)
    bf16 = spec.bf16 and bf16_supported(device)
    out = []
    for i, start in enumerate(range(0, n, spec.batch_size)):
        size = min(spec.batch_size, n - start)
        generator = torch.Generator(device=device).manual_seed(spec.seed + i)
        x_T = torch.randn((size, *image_shape), generator=generator, device=device)
        denoiser = model if labels is None else Conditioned(model, labels[start : start + size].to(device))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            x = _run_sampler(spec, denoiser, scheduler, x_T, generator, timesteps, progress, on_step)
        out.append(x.float().clamp(-1.0, 1.0).cpu())
    return torch.cat(out)
