"""Weights the course ships (hand-written plumbing), so a learner sees digits without hours of CPU.

``ddpm_lib/weights/ddpm_mnist.pt`` holds the EMA weights, config and step of a run of
``python -m ddpm_lib train`` (tensors and plain data only, read with ``weights_only=True``);
``ddpm_mnist.json`` beside it records the exact command, seed, data, steps, wall time, machine and
final loss. ``python tools/ship_weights.py RUN_FOLDER`` produces both from a finished run, and
``ddpm_mnist_steps/step_NNNNNN.pt`` (the run's EMA weights at earlier steps, stored in float16) for
chapter 06's quality-vs-training-steps curve.

``mnist_classifier.pt`` / ``.json`` hold the evaluation classifier of chapter 06 and its provenance,
written by ``python -m ddpm_lib train-classifier``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .checkpoint import CheckpointError, load_checkpoint, load_state, save_checkpoint
from .runner import load_model
from .schedule import NoiseSchedule

WEIGHTS = Path(__file__).resolve().parent / "weights"


def pretrained_path(name: str = "ddpm_mnist") -> Path:
    path = WEIGHTS / f"{name}.pt"
    if not path.is_file():
        available = sorted(p.stem for p in WEIGHTS.glob("*.pt"))
        raise ValueError(f"no shipped weights called {name!r}; available: {', '.join(available) or 'none'}")
    return path


def provenance(name: str = "ddpm_mnist") -> dict:
    """The provenance record of shipped weights (command, seed, data, steps, wall time, ...)."""
    return json.loads((WEIGHTS / f"{name}.json").read_text(encoding="utf-8"))


def load_pretrained(
    name: str = "ddpm_mnist", device: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, NoiseSchedule, dict]:
    """The shipped denoiser (EMA weights, eval mode), its noise schedule and its provenance record."""
    model, scheduler, _ = load_model(pretrained_path(name), ema=True, device=str(device))
    return model, scheduler, provenance(name)


def snapshot_paths(name: str = "ddpm_mnist") -> list[tuple[int, Path]]:
    """``(step, path)`` of the shipped run's EMA weights along training, by step; the last is the shipped model."""
    folder = WEIGHTS / f"{name}_steps"
    earlier = sorted((int(p.stem.split("_")[1]), p) for p in folder.glob("step_*.pt"))
    return [*earlier, (int(provenance(name)["steps"]), pretrained_path(name))]


CLASSIFIER = WEIGHTS / "mnist_classifier.pt"


def save_classifier(classifier: torch.nn.Module, path: str | Path, record: dict) -> Path:
    """Write an evaluation classifier (tensors and plain data) and its provenance record beside it."""
    path = Path(path)
    save_checkpoint({"config": dict(classifier.config), "model": classifier.state_dict()}, path)
    path.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return path


def load_classifier(path: str | Path | None = None, device: str | torch.device = "cpu"):
    """The evaluation classifier of chapter 06 (eval mode) and its provenance record.

    Default: the shipped one; ``path`` reads one written by ``python -m ddpm_lib train-classifier``.
    """
    from .metrics import MnistClassifier

    path = CLASSIFIER if path is None else Path(path)
    state = load_checkpoint(path, map_location=device)
    if "config" not in state or "model" not in state:
        raise CheckpointError(f"{path} is not an evaluation classifier (no config/model entries)")
    classifier = MnistClassifier(**state["config"])
    load_state(classifier, state["model"], path, "classifier")
    record_path = path.with_suffix(".json")
    record = json.loads(record_path.read_text(encoding="utf-8")) if record_path.is_file() else {}
    return classifier.to(device).eval(), record
