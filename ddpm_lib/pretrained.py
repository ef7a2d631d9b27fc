"""Weights the course ships (hand-written plumbing), so a learner sees digits without hours of CPU.

``ddpm_lib/weights/ddpm_mnist.pt`` holds the EMA weights, config and step of a run of
``python -m ddpm_lib train`` (tensors and plain data only, read with ``weights_only=True``);
``ddpm_mnist.json`` beside it records the exact command, seed, data, steps, wall time, machine and
final loss. ``python tools/ship_weights.py RUN_FOLDER`` produces both from a finished run.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .runner import load_model
from .schedule import LinearBetaScheduler

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
) -> tuple[torch.nn.Module, LinearBetaScheduler, dict]:
    """The shipped denoiser (EMA weights, eval mode), its noise schedule and its provenance record."""
    model, scheduler, _ = load_model(pretrained_path(name), ema=True, device=str(device))
    return model, scheduler, provenance(name)
