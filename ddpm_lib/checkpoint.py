"""Checkpoints you can trust (hand-written plumbing).

A checkpoint is a ``dict`` of tensors and plain data only — model and EMA weights, optimiser and
LR-scheduler state, step, RNG states and the run's config — so it is read with
``torch.load(..., weights_only=True)``: loading a file never runs code from it. Writes are atomic:
the file is written under a temporary name, flushed to disk, then renamed over the old one, so a
crash or Ctrl-C mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

FORMAT = "ddpm_lib.checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A file is missing, unreadable, not a ddpm_lib checkpoint, or for another architecture."""


def save_checkpoint(payload: dict, path: str | Path) -> Path:
    """Atomically write ``payload`` (plus format and version fields) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save({"format": FORMAT, "version": VERSION, **payload}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`, with ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch.load fails in many ways on a bad file; all mean the same here
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(
            f"{path} is not a readable checkpoint (truncated, corrupt or not a PyTorch file): {first_line}"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is a PyTorch file but not a ddpm_lib checkpoint (no format={FORMAT!r})"
        )
    if payload.get("version") != VERSION:
        raise CheckpointError(
            f"{path} is a version {payload.get('version')} checkpoint; this ddpm_lib reads version {VERSION}"
        )
    return payload


def load_state(module: torch.nn.Module, state: dict, path: str | Path, what: str = "model") -> None:
    """``module.load_state_dict(state)`` with a one-line error when the architectures differ."""
    try:
        module.load_state_dict(state)
    except RuntimeError as error:
        details = [line.strip() for line in str(error).splitlines()[1:] if line.strip()]
        summary = details[0][:200] if details else str(error)[:200]
        raise CheckpointError(
            f"{path}: the {what} weights were made for another architecture ({summary})"
        ) from None
