"""Weights the course ships (hand-written plumbing), so a learner sees digits without hours of CPU.

``ddpm_lib/weights/NAME.pt`` is a ``denoiser`` checkpoint (:mod:`ddpm_lib.checkpoint`: the EMA weights, the
config and the step of a run of ``python -m ddpm_lib train``; tensors and plain data only, read with
``weights_only=True``); ``NAME.json`` beside it records the exact command, seed, data, steps, wall time,
machine, final loss and the metrics the weights reach. ``python tools/ship_weights.py RUN_FOLDER`` produces
both from a finished run, and ``NAME_steps/step_NNNNNN.pt`` (the run's EMA weights at earlier steps, stored
in float16) for chapter 07's quality-vs-training-steps curve.

``mnist_classifier.pt`` / ``.json`` hold the evaluation classifier of chapter 07 (a ``classifier``
checkpoint) and its provenance, written by ``python -m ddpm_lib train-classifier``;
``fashion_mnist_classifier.pt`` / ``.json`` the same network trained on Fashion-MNIST (chapter 15), written by
``python -m ddpm_lib train-classifier --dataset fashion-mnist``. :data:`CLASSIFIERS` maps each data set to its file.

Loading weights imports the U-Net, the schedules and the config — not the training loop, and not the
distributed code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from . import checkpoint
from .errors import UsageError
from .options import integer, number
from .spec import SampleSpec

WEIGHTS = Path(__file__).resolve().parent / "weights"
#: the shipped evaluation classifier of each data set (see ddpm_lib.data.DATASETS)
CLASSIFIERS = {
    "mnist": WEIGHTS / "mnist_classifier.pt",
    "fashion-mnist": WEIGHTS / "fashion_mnist_classifier.pt",
}


#: the shipped denoiser the command line samples for each data set when no weights are named: the class-conditional
#: models, the best the course ships (chapters 10 and 15)
DEFAULT_WEIGHTS = {"mnist": "ddpm_mnist_cond", "fashion-mnist": "ddpm_fashion_mnist_cond"}
#: a sampling recipe sits beside the weights it samples: ``NAME.sampling.json``
RECIPE_SUFFIX = ".sampling.json"


def available() -> list[str]:
    """The names of the shipped denoisers."""
    return sorted(p.stem for p in WEIGHTS.glob("*.pt") if p not in CLASSIFIERS.values())


def pretrained_path(name: str = "ddpm_mnist") -> Path:
    path = WEIGHTS / f"{name}.pt"
    if not path.is_file() or path in CLASSIFIERS.values():
        raise UsageError(f"no shipped weights called {name!r}; available: {', '.join(available()) or 'none'}")
    return path


def provenance(name: str = "ddpm_mnist") -> dict:
    """The provenance record of shipped weights (command, seed, data, steps, wall time, ...)."""
    return json.loads((WEIGHTS / f"{name}.json").read_text(encoding="utf-8"))


def load_pretrained(name: str = "ddpm_mnist", device: str | torch.device = "cpu"):
    """The shipped denoiser (EMA weights, eval mode), its noise schedule and its provenance record."""
    model, scheduler, _ = checkpoint.load_denoiser(pretrained_path(name), device=device)
    return model, scheduler, provenance(name)


def snapshot_paths(name: str = "ddpm_mnist") -> list[tuple[int, Path]]:
    """``(step, path)`` of the shipped run's EMA weights along training, by step; the last is the shipped model."""
    folder = WEIGHTS / f"{name}_steps"
    earlier = sorted((int(p.stem.split("_")[1]), p) for p in folder.glob("step_*.pt"))
    return [*earlier, (int(provenance(name)["steps"]), pretrained_path(name))]


def weights_file(name: str | Path, option: str = "weights") -> Path:
    """The checkpoint a name stands for: shipped weights ``NAME``, ``NAME@STEP`` (the EMA weights of their run at
    that step, e.g. ``ddpm_mnist@4000``) or a checkpoint file. Anything else is a UsageError naming ``option``."""
    if Path(name).is_file():
        return Path(name)
    text = str(name)
    try:
        if "@" not in text:
            return pretrained_path(text)
        weights, _, step = text.partition("@")
        pretrained_path(weights)
        snapshots = dict(snapshot_paths(weights))
        if not step.isdigit() or int(step) not in snapshots:
            raise UsageError(
                f"{weights} has snapshots at steps {', '.join(map(str, snapshots))}; got {text!r}"
            )
        return snapshots[int(step)]
    except UsageError as error:
        raise UsageError(
            f"{error} (a checkpoint file, shipped weights or NAME@STEP)", option=option
        ) from None


@dataclass(frozen=True)
class Recipe:
    """How shipped weights sample best (``NAME.sampling.json``): a :class:`~ddpm_lib.spec.SampleSpec`, a summary
    and what ``evaluate`` measured that way (command, machine, scores)."""

    name: str
    path: Path
    spec: SampleSpec
    summary: str
    evaluation: dict


def recipe(name: str) -> Recipe | None:
    """The sampling recipe shipped beside weights ``name``, or None when they have none."""
    path = WEIGHTS / f"{name}{RECIPE_SUFFIX}"
    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    spec = SampleSpec.from_dict(data["use"], f"{path}: its 'use'").check()
    return Recipe(name, path, spec, data["summary"], data.get("evaluation", {}))


@dataclass(frozen=True)
class Denoiser:
    """A denoiser ready to sample: the network (eval mode), its schedule and training config, where it came from
    (a description for messages) and the name of the shipped weights, if it is some."""

    model: torch.nn.Module
    scheduler: object
    config: object
    source: str
    name: str | None


def open_denoiser(
    checkpoint_path: str | Path | None = None,
    weights: str | None = None,
    dataset: str | None = None,
    device: str | torch.device = "cpu",
    default: str | None = None,
) -> Denoiser:
    """The denoiser the command line's ``--checkpoint`` / ``--weights`` / ``--dataset`` name: a checkpoint file, or
    shipped weights (``weights``, else ``default``, else the data set's :data:`DEFAULT_WEIGHTS`). With ``dataset``
    and a model that learnt another data set: a UsageError naming ``dataset``."""
    if checkpoint_path is not None:
        model, scheduler, config = checkpoint.load_denoiser(checkpoint_path, device=device)
        source, name = str(checkpoint_path), None
    else:
        if weights is not None:
            name = weights
        else:
            name = DEFAULT_WEIGHTS[dataset] if dataset is not None else default or DEFAULT_WEIGHTS["mnist"]
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
    return Denoiser(model, scheduler, config, source, name)


#: the options of chapter 07's classifier (``MnistClassifier``) a classifier checkpoint may set
CLASSIFIER_OPTIONS = {"feature_dim": integer(1), "dropout": number(0, 1, high_open=True)}


def save_classifier(classifier: torch.nn.Module, path: str | Path, record: dict) -> Path:
    """Write an evaluation classifier (a ``classifier`` checkpoint) and its provenance record beside it."""
    path = Path(path)
    checkpoint.save(path, "classifier", config=dict(classifier.config), model=classifier.state_dict())
    checkpoint.write_json(path.with_suffix(".json"), record)
    return path


def load_classifier(
    path: str | Path | None = None, device: str | torch.device = "cpu", dataset: str = "mnist"
):
    """The evaluation classifier of chapter 07 (eval mode) and its provenance record.

    Default: the one shipped for ``dataset`` (``"mnist"`` or ``"fashion-mnist"``); ``path`` reads one written by
    ``python -m ddpm_lib train-classifier``.
    """
    from .metrics import MnistClassifier

    if path is None:
        if dataset not in CLASSIFIERS:
            raise UsageError(
                f"dataset must be one of {', '.join(CLASSIFIERS)}, got {dataset!r}", option="dataset"
            )
        path = CLASSIFIERS[dataset]
    state = checkpoint.load(path, "classifier", map_location=device)
    config = state["config"]
    if not isinstance(config, dict) or set(config) - set(CLASSIFIER_OPTIONS):
        raise checkpoint.CheckpointError(
            f"{path}: its classifier config must set only {', '.join(CLASSIFIER_OPTIONS)}; got {config!r}"
        )
    for name, value in config.items():
        if not CLASSIFIER_OPTIONS[name].ok(value):
            raise checkpoint.CheckpointError(
                f"{path}: its classifier's {name} must be {CLASSIFIER_OPTIONS[name].describe}, got {value!r}"
            )
    classifier = MnistClassifier(**config)
    checkpoint.load_state(classifier, state["model"], path, "classifier")
    record_path = path.with_suffix(".json")
    record = json.loads(record_path.read_text(encoding="utf-8")) if record_path.is_file() else {}
    return classifier.to(device).eval(), record
