"""Small plotting helpers the chapters share (hand-written plumbing: it teaches nothing)."""

from __future__ import annotations

import torch

from .profile import PROFILE


def to_image(x: torch.Tensor):
    """Map a (1, H, W) or (H, W) tensor from model space [-1, 1] to a numpy image in [0, 1]."""
    x = x.detach().to("cpu", torch.float32)
    if x.dim() == 3:
        x = x[0]
    return ((x.clamp(-1, 1) + 1) / 2).numpy()


def save_figure(fig, name: str) -> None:
    """Save ``fig`` as ``<figures dir>/<name>.png`` when the profile names a figures directory.

    ``python tools/make_figures.py`` runs the chapters with that directory set, so every image
    in ``figures/`` is produced by chapter code; otherwise this does nothing.
    """
    if PROFILE.figures_dir is None:
        return
    PROFILE.figures_dir.mkdir(parents=True, exist_ok=True)
    # No timestamps or software versions in the file: the same figure gives the same bytes.
    fig.savefig(
        PROFILE.figures_dir / f"{name}.png", dpi=110, bbox_inches="tight", metadata={"Software": None}
    )
