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
from pathlib import Path

import torch

from . import checkpoint
from .errors import UsageError

WEIGHTS = Path(__file__).resolve().parent / "weights"
#: the shipped evaluation classifier of each data set (see ddpm_lib.data.DATASETS)
CLASSIFIERS = {
    "mnist": WEIGHTS / "mnist_classifier.pt",
    "fashion-mnist": WEIGHTS / "fashion_mnist_classifier.pt",
}


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
    try:
        classifier = MnistClassifier(**state["config"])
    except (TypeError, ValueError) as error:
        raise checkpoint.CheckpointError(f"{path}: its classifier config cannot be built ({error})") from None
    checkpoint.load_state(classifier, state["model"], path, "classifier")
    record_path = path.with_suffix(".json")
    record = json.loads(record_path.read_text(encoding="utf-8")) if record_path.is_file() else {}
    return classifier.to(device).eval(), record
