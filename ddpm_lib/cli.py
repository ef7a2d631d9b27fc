"""Command line (hand-written plumbing): ``python -m ddpm_lib COMMAND`` or ``ddpm COMMAND``.

Commands so far:

- ``noise``: noise one held-out digit of every class at several timesteps and save the grid
  (the forward process of chapter 02, end to end on the bundled data);
- ``data``: say which MNIST source is used and count its digits; ``--download`` fetches full MNIST.

``train``, ``sample`` and ``evaluate`` arrive with chapters 04-06. Bad arguments exit with status 2
and one line on stderr.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_TIMESTEPS = (0, 50, 100, 200, 400, 700, 999)


def _timesteps(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(not 0 <= v < 1000 for v in values):
        raise argparse.ArgumentTypeError(f"timesteps must lie in 0..999, got {text!r}")
    return values


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ddpm_lib", description="Diffusion from Scratch: DDPM on MNIST"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    noise = commands.add_parser("noise", help="save a grid of digits noised by the forward process")
    noise.add_argument(
        "--out", type=Path, default=Path("noising.png"), help="PNG to write (default: noising.png)"
    )
    noise.add_argument(
        "--timesteps",
        type=_timesteps,
        default=list(DEFAULT_TIMESTEPS),
        help="comma-separated t in 0..999 (default: %(default)s)",
    )
    noise.add_argument("--seed", type=_non_negative, default=0, help="seed of the noise (default: 0)")

    data = commands.add_parser("data", help="describe (or download) the MNIST data the course uses")
    data.add_argument("--root", type=Path, default=None, help="folder with torchvision's MNIST files")
    data.add_argument(
        "--download", action="store_true", help="download full MNIST into --root (needs a network)"
    )
    return parser


def run_noise(args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from .data import load_mnist
    from .diffusion import q_sample
    from .plotting import to_image
    from .schedule import LinearBetaScheduler

    images, labels = load_mnist("heldout").tensors
    digits = torch.stack([images[labels == d][0] for d in range(10)])  # (10, 1, 28, 28)
    scheduler = LinearBetaScheduler()
    generator = torch.Generator().manual_seed(args.seed)
    noise = torch.randn(digits.shape, generator=generator)  # one draw per digit, shared across t
    fig, axes = plt.subplots(
        10, len(args.timesteps), figsize=(1.1 * len(args.timesteps), 11.5), squeeze=False
    )
    for column, t in enumerate(args.timesteps):
        noised = q_sample(scheduler, digits, t, noise)
        for row in range(10):
            axes[row, column].imshow(to_image(noised[row]), cmap="gray")
            axes[row, column].set_xticks([])
            axes[row, column].set_yticks([])
        axes[0, column].set_title(f"t={t}", fontsize=9)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=100, metadata={"Software": None})
    print(f"wrote {args.out}: 10 held-out digits noised at t = {', '.join(map(str, args.timesteps))}")


def run_data(args: argparse.Namespace) -> None:
    import torch

    from .data import load_mnist

    for split in ("train", "heldout"):
        labels = load_mnist(split, root=args.root, download=args.download).tensors[1]
        print(f"  per class: {torch.bincount(labels, minlength=10).tolist()}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from .data import DataSourceError

    try:
        {"noise": run_noise, "data": run_data}[args.command](args)
    except DataSourceError as error:
        print(f"{parser.prog} {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0
