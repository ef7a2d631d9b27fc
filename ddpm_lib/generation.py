"""One way to draw samples (hand-written plumbing around the samplers the chapters teach).

A :class:`~ddpm_lib.spec.SampleSpec` says how to sample — which sampler, how many network evaluations, DDIM's η,
the timestep spacing, clipping, classifier-free guidance, the label, autoguidance, the seed, the precision — and
:func:`generate` draws a batch of samples from it. Everything that samples goes through it: ``python -m ddpm_lib
sample`` and ``evaluate`` (through :func:`sample_weights`), the grids of a training run, the chapters'
measurements and the benchmarks. The samplers themselves are promoted from the chapters, and all take the same
arguments (the network, the schedule, x_T, the timesteps, then ``clip``, the generator and the hooks), so
:data:`LOOPS` picks one by name:

- ``ddpm`` and ``clip``: chapter 06's :func:`~ddpm_lib.sampling.sample_loop` (DDPM's ancestral step through the
  posterior; ``clip`` clamps x̂0 to [-1, 1] first), over all T timesteps or a respaced subset of them (chapter 08);
- ``ddim`` and ``dpmpp``: chapter 08's DDIM and DPM-Solver++(2M).

Seeding, once for all: batch ``i`` (of ``batch_size`` samples) draws its starting noise and every later random
number from a generator seeded with ``seed + i``, so the first ``batch_size`` samples of a larger request are the
samples of a smaller one. Samples are kept by :mod:`ddpm_lib.result_cache` when it is on (maintainers' chapter
executions), keyed by the network's weights, the spec and the code that drew them.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from .errors import UsageError
from .fast_sampling import ddim_sample, dpm_solver_pp_sample, timesteps_for
from .guidance import AutoGuidance, ClassifierFreeGuidance
from .precision import choose
from .result_cache import cached
from .sampling import grid_image, sample_loop
from .spec import DEFAULT_STEPS, SAMPLERS, SampleSpec
from .unet import Conditioned

__all__ = [
    "DEFAULT_STEPS",
    "LOOPS",
    "SAMPLERS",
    "SampleSpec",
    "balanced_labels",
    "check_request",
    "generate",
    "num_classes_of",
    "sample_weights",
    "save_image",
]

#: the sampler loops by the name a spec gives them (chapters 06 and 08); their options: ``SampleSpec.loop_options``
LOOPS = {"ddpm": sample_loop, "clip": sample_loop, "ddim": ddim_sample, "dpmpp": dpm_solver_pp_sample}


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


def check_request(model: nn.Module, spec: SampleSpec, n: int, labels: torch.Tensor | None = None):
    """Check that ``model`` can draw ``n`` samples as ``spec`` says (a label or guidance needs a class-conditional
    model, labels its range); return the labels to draw them with (None for an unconditional model). Raises
    :class:`~ddpm_lib.errors.UsageError` naming the option at fault."""
    spec.check()
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise UsageError(f"n must be a positive integer, got {n!r}", option="n")
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


def autoguided(model: nn.Module, spec: SampleSpec) -> nn.Module:
    """``model`` guided away from ``spec.weak`` (chapter 10, section 5), or ``model`` itself when it names none."""
    if spec.weak is None:
        return model
    from .checkpoint import CheckpointError, load_denoiser
    from .pretrained import weights_file

    try:
        weak, _, _ = load_denoiser(weights_file(spec.weak, option="weak"), device=_device_of(model))
    except CheckpointError as error:
        raise UsageError(str(error), option="weak") from None
    try:
        return AutoGuidance(model, weak, spec.autoguidance_weight, interval=spec.guidance_interval)
    except ValueError as error:  # the weak model predicts another target or takes other labels
        raise UsageError(str(error), option="weak") from None


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
    spec = replace(spec or SampleSpec(), **options)
    labels = check_request(model, spec, n, labels)
    spec.num_steps(scheduler.num_timesteps)
    if on_step is not None:  # a caller that watches the chain must see it run
        return _draw(model, scheduler, n, spec, labels, image_shape, progress, on_step)
    return cached("generate", _draw, model, scheduler, n, spec, labels, image_shape, progress)


def _draw(model, scheduler, n, spec, labels, image_shape, progress, on_step=None) -> torch.Tensor:
    # the device and precision to sample in (spec.device "auto": the fastest this machine has); the network moves
    # there for the draw and back afterwards, so the caller's model stays where it was
    compute = choose(spec.device, spec.precision)
    if not isinstance(model, nn.Module) or _device_of(model) == compute.device:
        return _draw_on(model, scheduler, n, spec, labels, image_shape, progress, on_step, compute)
    home = _device_of(model)
    model.to(compute.device)
    try:
        return _draw_on(model, scheduler, n, spec, labels, image_shape, progress, on_step, compute)
    finally:
        model.to(home)


def _draw_on(model, scheduler, n, spec, labels, image_shape, progress, on_step, compute) -> torch.Tensor:
    model = autoguided(model, spec)
    if spec.guidance:
        model = ClassifierFreeGuidance(model, spec.guidance)
    timesteps = timesteps_for(scheduler.num_timesteps, spec.num_steps(scheduler.num_timesteps), spec.spacing)
    loop, options = LOOPS[spec.sampler], spec.loop_options()
    device = compute.device
    out = []
    for i, start in enumerate(range(0, n, spec.batch_size)):
        size = min(spec.batch_size, n - start)
        generator = torch.Generator(device=device).manual_seed(spec.seed + i)
        x_T = torch.randn((size, *image_shape), generator=generator, device=device)
        denoiser = model if labels is None else Conditioned(model, labels[start : start + size].to(device))
        with compute.autocast():
            x = loop(denoiser, scheduler, x_T, timesteps, generator=generator, progress=progress, on_step=on_step,
                     **options)  # fmt: skip
        out.append(x.float().clamp(-1.0, 1.0).cpu())
    return torch.cat(out)


def spec_for(found, n: int, options: dict, use_recipe: bool = True):
    """The spec to draw ``n`` samples of ``found`` (:func:`ddpm_lib.pretrained.open_denoiser`) with, as the command
    line's ``sample`` and ``evaluate`` do: the weights' sampling recipe when they ship one (and ``use_recipe``), else
    the defaults, then ``options`` field by field; checked against the model. Returns ``(spec, recipe or None, notes
    to show)``."""
    from .pretrained import recipe

    shipped = recipe(found.name) if use_recipe and found.name is not None else None
    spec = replace(shipped.spec if shipped else SampleSpec(), **options)
    check_request(found.model, spec, n)
    spec.num_steps(found.scheduler.num_timesteps)
    notes = []
    if found.config.schedule == "cosine" and spec.sampler != "clip" and not spec.clip:
        notes.append("warning: this model uses the cosine schedule, where samplers without a clipped x0 give noise "
                     "(chapter 09); use --sampler clip, or --clip-x0 with ddim / dpmpp")  # fmt: skip
    return spec, shipped, notes


def sample_weights(
    weights: str = "ddpm_mnist_cond",
    n: int = 16,
    spec: SampleSpec | None = None,
    *,
    device: str | torch.device = "cpu",
    progress: bool = False,
    **options,
) -> torch.Tensor:
    """``n`` samples of shipped weights (a name) or a checkpoint (a path), as ``python -m ddpm_lib sample`` draws
    them: by the weights' sampling recipe (``NAME.sampling.json``) when they ship one, else by ``SampleSpec()``;
    ``spec`` replaces that, and ``options`` override its fields one by one (``steps=50``)."""
    from .checkpoint import load_denoiser
    from .pretrained import pretrained_path, recipe

    path = Path(weights) if Path(weights).is_file() else pretrained_path(weights)
    model, scheduler, _ = load_denoiser(path, device=device)
    if spec is None:
        found = recipe(str(weights)) if not Path(weights).is_file() else None
        spec = found.spec if found is not None else SampleSpec()
    return generate(model, scheduler, n, replace(spec, **options), progress=progress)


def write_samples(found, spec: SampleSpec, n: int, out: Path, tensors: Path | None = None, gif: Path | None = None,
                  progress: bool = False) -> torch.Tensor:  # fmt: skip
    """Draw ``n`` samples of ``found`` (:func:`ddpm_lib.pretrained.open_denoiser`) as ``spec`` says and write them
    (atomically) as a grid PNG to ``out``, as a tensor file to ``tensors`` and their trajectory as an animated GIF
    (about 50 frames of the first 16) to ``gif``; return them (``python -m ddpm_lib sample``)."""
    import io

    from . import checkpoint

    steps, frames, calls = spec.num_steps(found.scheduler.num_timesteps), [], [0]
    every = max(1, steps // 50)

    def record(t: int, x_t) -> None:
        calls[0] += 1
        if calls[0] <= steps and (calls[0] - 1) % every == 0:
            frames.append(grid_image(x_t[:16].float()))

    samples = generate(found.model, found.scheduler, n, spec, progress=progress,
                       on_step=record if gif is not None else None)  # fmt: skip
    checkpoint.write_atomic(out, lambda f: grid_image(samples).save(f, format="png"))
    if tensors is not None:
        checkpoint.write_atomic(tensors, lambda f: torch.save(samples, f))
    if gif is not None:
        frames.append(grid_image(samples[:16]))  # hold the final grid for a moment
        buffer = io.BytesIO()
        frames[0].save(buffer, format="gif", save_all=True, append_images=frames[1:] + frames[-1:] * 10,
                       duration=60, loop=0)  # fmt: skip
        checkpoint.write_atomic(gif, lambda f: f.write(buffer.getvalue()))
    return samples


def save_image(model: nn.Module, scheduler, path, size: int = 16, spec: SampleSpec | None = None, **options):
    """Sample ``size`` digits and save them as a square-ish grid PNG (the reference's ``save_image``).

    Returns the samples. ``size=16`` gives the reference's 4×4 grid. How they are drawn — sampler, seed,
    labels, … — is a :class:`SampleSpec`, or its options as keywords (``sampler="ddpm"``).
    """
    samples = generate(model, scheduler, size, spec, **options)
    grid_image(samples).save(path)
    return samples
