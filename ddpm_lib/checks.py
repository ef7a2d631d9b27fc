"""Argument checks shared by the promoted modules (hand-written plumbing; teaches nothing about diffusion).

Each raises ``ValueError`` naming the argument and what is allowed, and returns the checked value. The samplers of
chapters 06 and 08, inpainting (chapter 12) and the theory of chapter 03 import them from here, so that one
module owns the wording of a bad-input message and no module reaches for another's private helpers.
"""

from __future__ import annotations

import numbers

import torch


def check_int(value, name: str, low: int, high: int) -> int:
    """``value`` as an int after checking it is an integer (or a one-element integer tensor) in low..high."""
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.dtype.is_floating_point:
        value = int(value.item())
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer in {low}..{high}, got {value!r}")
    if not low <= int(value) <= high:
        raise ValueError(f"{name} must lie in {low}..{high}, got {value}")
    return int(value)


def check_sample(x: torch.Tensor, name: str) -> torch.Tensor:
    """``x`` after checking it is a floating-point batch of images, e.g. (B, 1, 28, 28)."""
    if not isinstance(x, torch.Tensor) or not x.dtype.is_floating_point or x.dim() < 2:
        raise ValueError(
            f"{name} must be a floating-point tensor with a batch dimension, e.g. (B, 1, 28, 28)"
        )
    return x


def check_jump(num_timesteps: int, t, t_prev) -> tuple[int, int]:
    """A step from timestep t (0..T−1) to an earlier t_prev (−1..t−1; −1 is the clean end, ᾱ = 1)."""
    t = check_int(t, "t", 0, num_timesteps - 1)
    return t, check_int(t_prev, "t_prev", -1, t - 1)


def check_choice(value, name: str, allowed: tuple[str, ...]) -> str:
    """``value`` after checking it is one of the strings ``allowed``."""
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")
    return value


def check_generator(generator) -> torch.Generator | None:
    """``generator`` after checking it is a ``torch.Generator`` or None."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    return generator


def check_timesteps(timesteps, num_timesteps: int) -> list[int]:
    """The timesteps a sampler loop visits, as ints: a strictly descending sequence in 0..T−1, or None for all T of
    them (T−1, …, 0)."""
    if timesteps is None:
        return list(range(num_timesteps - 1, -1, -1))
    if isinstance(timesteps, (str, bytes)) or not hasattr(timesteps, "__iter__"):
        raise ValueError(f"timesteps must be a descending sequence of timesteps in 0..{num_timesteps - 1} or None, "
                         f"got {timesteps!r}")  # fmt: skip
    found = [check_int(t, "every timestep", 0, num_timesteps - 1) for t in timesteps]
    if not found or any(a <= b for a, b in zip(found, found[1:], strict=False)):
        raise ValueError(f"timesteps must be a non-empty, strictly descending sequence, got {found[:8]}")
    return found
