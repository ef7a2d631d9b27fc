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


def noising_figure(timesteps: list[int], seed: int = 0) -> bytes:
    """A PNG of one held-out digit of every class (rows) noised by the forward process at ``timesteps`` (columns),
    the same noise draw for every t (``python -m ddpm_lib noise``; chapter 02)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .data import load_mnist
    from .diffusion import q_sample
    from .schedule import LinearBetaScheduler

    images, labels = load_mnist("heldout").tensors
    digits = torch.stack([images[labels == d][0] for d in range(10)])  # (10, 1, 28, 28)
    scheduler = LinearBetaScheduler()
    noise = torch.randn(digits.shape, generator=torch.Generator().manual_seed(seed))  # one draw per digit
    fig, axes = plt.subplots(10, len(timesteps), figsize=(1.1 * len(timesteps), 11.5), squeeze=False)
    for column, t in enumerate(timesteps):
        noised = q_sample(scheduler, digits, t, noise)
        for row in range(10):
            axes[row, column].imshow(to_image(noised[row]), cmap="gray")
            axes[row, column].set_xticks([])
            axes[row, column].set_yticks([])
        axes[0, column].set_title(f"t={t}", fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    return buffer.getvalue()


def inpainting_figure(x0: torch.Tensor, mask: torch.Tensor, filled: torch.Tensor) -> bytes:
    """A PNG of three rows: the digits ``x0``, the same masked (missing pixels grey) and ``filled`` (chapter 12's
    ``python -m ddpm_lib inpaint``)."""
    import io

    from PIL import Image
    from torchvision.utils import make_grid

    rows = torch.cat([x0, mask * x0, filled]).cpu()  # masked: the missing pixels at 0, grey
    grid = make_grid((rows + 1) / 2, nrow=len(x0), padding=2, pad_value=1.0)
    buffer = io.BytesIO()
    Image.fromarray((grid[0] * 255).round().to(torch.uint8).numpy(), mode="L").save(buffer, format="png")
    return buffer.getvalue()
