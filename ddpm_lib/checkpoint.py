"""The checkpoint format, and every file write of the package (hand-written plumbing).

This module is the one owner of what a checkpoint holds, how it is written and how it is read.
A checkpoint is a ``dict`` of tensors and plain data only, read with ``torch.load(...,
weights_only=True)``: loading a file never runs code from it. Its keys, exactly:

=============  ===================================================================================
``format``     ``"ddpm_lib.checkpoint"``
``version``    :data:`VERSION` (4); older files are upgraded when read (version 1, ddpm_lib 0.1: no
               ``kind``; version 2: no ``dataset`` in the config, which then means MNIST; version 3: what
               the run decided — world size, batch split, effective LR, precision — inside the config)
``kind``       one of :data:`KINDS`, which fixes the other keys:
``run``        a training run, written every ``--checkpoint-every`` steps: ``config`` (the run's
               :class:`~ddpm_lib.config.TrainConfig` as a dict: what was asked), ``record`` (its
               :class:`~ddpm_lib.config.RunRecord`: what the run decided), ``step``, ``model``, ``ema``,
               ``optimizer``, ``lr_scheduler`` and ``rng`` — everything ``--resume`` needs
``denoiser``   what sampling needs, and what the package ships: ``config``, ``record``, ``step``, ``ema``
``classifier`` chapter 07's evaluation classifier: ``config`` (its constructor's arguments), ``model``
=============  ===================================================================================

``ema`` is ``EMA.state_dict()`` (``model``, ``decay``, ``warmup``, ``num_updates``); ``rng`` holds the
run's ``generator`` state and the global ``torch`` state. A top-level key that is missing, or one this version
does not know, is an error naming the key — never silently dropped. Inside ``config`` and ``record``, an option
added in a later version takes its default, so adding an option needs no new version.

Every file the package writes goes through :func:`write_atomic`: the bytes go to a temporary file in
the same folder, which is flushed and fsync'ed, then renamed over the target (and the folder fsync'ed),
so a crash or Ctrl-C leaves the old file or the new one, never half of one.

Reading a denoiser (:func:`load_denoiser`) imports the U-Net, the schedules and the config, and neither
the training loop nor the distributed code.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO

import torch

from .errors import UsageError

FORMAT = "ddpm_lib.checkpoint"
VERSION = 4
#: kind -> its keys (besides format, version and kind)
KINDS: dict[str, tuple[str, ...]] = {
    "run": ("config", "record", "step", "model", "ema", "optimizer", "lr_scheduler", "rng"),
    "denoiser": ("config", "record", "step", "ema"),
    "classifier": ("config", "model"),
}
EMA_KEYS = ("model", "decay", "warmup", "num_updates")
RNG_KEYS = ("generator", "torch")


class CheckpointError(UsageError):
    """A file is missing, unreadable, not a ddpm_lib checkpoint, or for another architecture."""


# --- writing ---------------------------------------------------------------------------------------


def write_atomic(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(f)`` on a temporary file beside ``path``, fsync it, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    try:  # make the rename itself durable
        folder = os.open(path.parent, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. a platform that cannot open folders
        return path
    try:
        os.fsync(folder)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(folder)
    return path


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return write_atomic(path, lambda f: f.write(text.encode("utf-8")))


def write_json(path: str | Path, data) -> Path:
    """Write ``data`` as indented JSON to ``path`` atomically."""
    return write_text(path, json.dumps(data, indent=2) + "\n")


def save(path: str | Path, kind: str, **content) -> Path:
    """Write a checkpoint of ``kind`` holding exactly the keys :data:`KINDS` names for it."""
    payload = {"format": FORMAT, "version": VERSION, "kind": kind, **content}
    _check_payload(payload, path)
    return write_atomic(path, lambda f: torch.save(payload, f))


# --- reading ---------------------------------------------------------------------------------------


def load(path: str | Path, kind: str | tuple[str, ...] | None = None, map_location="cpu") -> dict:
    """Read a checkpoint with ``weights_only=True``; check its format, version, kind and keys.

    ``kind``: the kind(s) the caller can use; another kind is a :class:`CheckpointError` naming both.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch.load fails in many ways on a bad file; all mean the same here
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        first_line = f"{type(error).__name__}: {first_line}" if len(first_line) < 20 else first_line
        raise CheckpointError(
            f"{path} is not a readable checkpoint (truncated, corrupt, or not a file of tensors "
            f"and plain data): {first_line}"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is a PyTorch file but not a ddpm_lib checkpoint (no format={FORMAT!r})"
        )
    if payload.get("version") == 1:
        payload = _upgrade_v1(payload)
    if payload.get("version") == 2:
        payload = _upgrade_v2(payload)
    if payload.get("version") == 3:
        payload = _upgrade_v3(payload)
    if payload.get("version") != VERSION:
        raise CheckpointError(
            f"{path} is a version {payload.get('version')!r} checkpoint; this ddpm_lib reads versions 1 to {VERSION}"
        )
    _check_payload(payload, path)
    wanted = (kind,) if isinstance(kind, str) else kind
    if wanted is not None and payload["kind"] not in wanted:
        raise CheckpointError(
            f"{path} holds a {payload['kind']!r} checkpoint; expected {' or '.join(map(repr, wanted))}"
        )
    return payload


def _check_payload(payload: dict, path) -> None:
    kind = payload.get("kind")
    if kind not in KINDS:
        raise CheckpointError(f"{path}: unknown checkpoint kind {kind!r}; known kinds: {', '.join(KINDS)}")
    _check_keys(payload, ("format", "version", "kind", *KINDS[kind]), f"{path} ({kind} checkpoint)")
    if "ema" in payload:
        _check_keys(payload["ema"], EMA_KEYS, f"{path}: its 'ema' entry")
    if "rng" in payload:
        _check_keys(payload["rng"], RNG_KEYS, f"{path}: its 'rng' entry")


def _check_keys(mapping, expected: tuple[str, ...], what: str) -> None:
    if not isinstance(mapping, dict):
        raise CheckpointError(f"{what} must be a dict, got {type(mapping).__name__}")
    unknown = sorted(set(mapping) - set(expected))
    if unknown:
        raise CheckpointError(f"{what} has unknown key(s) {', '.join(map(repr, unknown))}")
    missing = [key for key in expected if key not in mapping]
    if missing:
        raise CheckpointError(f"{what} lacks the key(s) {', '.join(map(repr, missing))}")


def _upgrade_v1(payload: dict) -> dict:
    """A version 1 checkpoint (no ``kind``; the grid sampler's options flat in the config) as version 2."""
    payload = {**payload, "version": 2}
    if "optimizer" in payload:
        payload["kind"] = "run"
    elif "ema" in payload:
        payload["kind"] = "denoiser"
    else:
        payload["kind"] = "classifier"
    config = payload.get("config")
    if payload["kind"] != "classifier" and isinstance(config, dict) and "grid" not in config:
        config = dict(config)
        config["grid"] = {  # the grid's other options came later: they take their defaults when read
            "sampler": config.pop("sampler", "clip"),
            "steps": config.pop("sampler_steps", None),
            "guidance": config.pop("guidance", 0.0),
            "seed": config.get("seed", 0),
            "bf16": config.get("bf16", False),
        }
        payload["config"] = config
    return payload


def _upgrade_v2(payload: dict) -> dict:
    """A version 2 checkpoint (written before Fashion-MNIST; every run learnt MNIST) as version 3."""
    payload = {**payload, "version": 3}
    config = payload.get("config")
    if payload.get("kind") != "classifier" and isinstance(config, dict) and "dataset" not in config:
        payload["config"] = {**config, "dataset": "mnist"}
    return payload


#: what a version 3 config recorded about the run, now the run record's
_DECIDED_V3 = ("world_size", "per_process_batch_size", "backend", "effective_lr")


def _upgrade_v3(payload: dict) -> dict:
    """A version 3 checkpoint (what the run decided written into its config) as version 4 (config and record)."""
    payload = {**payload, "version": 4}
    config = payload.get("config")
    if payload.get("kind") == "classifier" or not isinstance(config, dict):
        return payload
    config = dict(config)
    decided = {key: config.pop(key) for key in _DECIDED_V3 if key in config}
    # a version 3 config's bf16 and steps were what the run used (it overwrote what was asked); "precision" replaced
    # bf16, in the config and in its grids' spec
    used = config.pop("bf16", False)
    config["precision"] = "auto" if used else "float32"
    if isinstance(config.get("grid"), dict) and "bf16" in config["grid"]:
        grid = dict(config["grid"])
        grid["precision"] = "auto" if grid.pop("bf16") else "float32"
        config["grid"] = grid
    record = {
        "steps": config.get("steps"),
        "precision": "bfloat16" if used else "float32",
        "device": "cpu",
        **decided,
    }
    if record.get("per_process_batch_size") is None:
        record["per_process_batch_size"] = config.get("batch_size")
    if record.get("effective_lr") is None:
        record["effective_lr"] = config.get("lr")
    payload["config"], payload["record"] = config, record
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


def denoiser_content(run_state: dict) -> dict:
    """The ``denoiser`` content of a ``run`` checkpoint: its config, record, step and EMA."""
    return {key: run_state[key] for key in KINDS["denoiser"]}


def load_denoiser(path: str | Path, ema: bool = True, device: str | torch.device = "cpu"):
    """The (EMA) network of a ``run`` or ``denoiser`` checkpoint, eval mode, with its noise schedule and config.

    Returns ``(model, schedule, config)``; ``config`` is the run's :class:`~ddpm_lib.config.TrainConfig`.
    ``ema=False`` takes the raw weights of a ``run`` checkpoint instead of their average.
    """
    from .config import build_model, config_from_dict, schedule_for

    state = load(path, ("run", "denoiser") if ema else "run", map_location=device)
    try:
        config = config_from_dict(state["config"], f"{path}: its config")
        model = build_model(config)  # the U-Net checks its options (UsageError)
    except UsageError as error:
        raise CheckpointError(f"{path}: its config cannot be used by this ddpm_lib ({error})") from None
    load_state(model, state["ema"]["model"] if ema else state["model"], path)
    return model.to(device).eval(), schedule_for(config), config
