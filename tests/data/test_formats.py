"""torchvision's on-disk formats: tiny files written here, read back exactly (no download, no network)."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
import torchvision.datasets as tvd

from labelless.data.formats import (read_cifar10, read_cifar20, read_cifar100, read_mnist, read_stl10,
                                    read_svhn)
from labelless.data.sources import CIFAR10_CLASSES
from labelless.errors import UserError

RNG = np.random.default_rng(1)


def random_images(n: int, size: int, channels: int = 3) -> np.ndarray:
    return RNG.integers(0, 256, (n, size, size, channels), dtype=np.uint8)


def assert_store(store, images: np.ndarray, labels: np.ndarray | None) -> None:
    assert store.images.dtype == torch.uint8
    assert torch.equal(store.images, torch.from_numpy(images))
    if labels is None:
        assert store.labels is None
    else:
        assert store.labels.dtype == torch.int64
        assert store.labels.tolist() == list(labels)


# --- CIFAR-10 ---

def test_cifar10_round_trip(cifar10_root):
    root, train_x, train_y, test_x, test_y = cifar10_root
    train = read_cifar10(root, "train", download=False)
    assert train.images.shape == (10, 32, 32, 3)
    assert_store(train, train_x, train_y)
    assert train.class_names == CIFAR10_CLASSES
    assert_store(read_cifar10(root, "test", download=False), test_x, test_y)


def test_cifar10_orientation_matches_torchvision(cifar10_root, monkeypatch):
    root, train_x, *_ = cifar10_root
    monkeypatch.setattr(tvd.cifar, "check_integrity", lambda *args: True)  # it wants the real files' md5s
    assert np.array_equal(tvd.CIFAR10(str(root), train=True).data, read_cifar10(root, "train", False).images.numpy())


def test_cifar10_found_in_named_subfolder(cifar10_root, tmp_path):
    root, _, train_y, *_ = cifar10_root
    data_root = tmp_path / "data"
    (data_root / "cifar10").mkdir(parents=True)
    (root / "cifar-10-batches-py").rename(data_root / "cifar10" / "cifar-10-batches-py")
    assert read_cifar10(data_root, "train", False).labels.tolist() == train_y.tolist()


# --- CIFAR-100 / CIFAR-20 ---

def test_cifar100_and_cifar20(cifar100_root, monkeypatch):
    root, parts = cifar100_root
    x, fine, coarse = parts["train"]
    cifar100 = read_cifar100(root, "train", False)
    assert_store(cifar100, x, fine)
    assert cifar100.class_names == [f"fine{i}" for i in range(100)]
    cifar20 = read_cifar20(root, "train", False)
    assert_store(cifar20, x, coarse)
    assert cifar20.class_names == [f"coarse{i}" for i in range(20)]
    monkeypatch.setattr(tvd.cifar, "check_integrity", lambda *args: True)
    assert np.array_equal(tvd.CIFAR100(str(root), train=True).data, cifar100.images.numpy())


def test_cifar20_all_is_train_then_test(cifar100_root):
    root, parts = cifar100_root
    store = read_cifar20(root, "all", False)
    assert len(store) == 10
    assert_store(store, np.concatenate([parts["train"][0], parts["test"][0]]),
                 np.concatenate([parts["train"][2], parts["test"][2]]))


def test_missing_root_is_one_line_user_error(tmp_path):
    with pytest.raises(UserError) as error:
        read_cifar100(tmp_path, "train", False)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"cifar100 not found under {tmp_path}")
    assert "cifar-100-python/train" in message and "--data-root" in message
    # the fetch it names is a real one: load_dataset's download=True (the CLI has no --download)
    assert f"labelless.load_dataset('cifar100', root='{tmp_path}', download=True)" in message


def test_unknown_split(cifar100_root):
    with pytest.raises(UserError, match="cifar100 has no split 'val'"):
        read_cifar100(cifar100_root[0], "val", False)


# --- STL-10 ---

def write_stl10_images(path: Path, images: np.ndarray) -> None:
    # each channel plane is stored column-major: N×C×W×H
    path.write_bytes(images.transpose(0, 3, 2, 1).tobytes())


@pytest.fixture
def stl10_root(tmp_path: Path):
    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    parts = {}
    for part, n in (("train", 5), ("test", 4), ("unlabeled", 3)):
        x = random_images(n, 96)
        x[:, 0, :, 0] = 255  # a bright top row in red: orientation is visible
        write_stl10_images(folder / f"{part}_X.bin", x)
        y = RNG.integers(0, 10, n)
        if part != "unlabeled":
            (folder / f"{part}_y.bin").write_bytes((y + 1).astype(np.uint8).tobytes())  # 1-based on disk
        parts[part] = (x, y)
    (folder / "class_names.txt").write_text("\n".join(f"class{i}" for i in range(10)) + "\n")
    return tmp_path, parts


def test_stl10_splits(stl10_root):
    root, parts = stl10_root
    train = read_stl10(root, "train", False)
    assert train.images.shape == (5, 96, 96, 3)
    assert_store(train, *parts["train"])
    assert train.class_names == [f"class{i}" for i in range(10)]
    assert_store(read_stl10(root, "test", False), *parts["test"])
    assert_store(read_stl10(root, "unlabeled", False), parts["unlabeled"][0], None)
    everything = read_stl10(root, "all", False)
    assert_store(everything, np.concatenate([parts["train"][0], parts["test"][0]]),
                 np.concatenate([parts["train"][1], parts["test"][1]]))
    union = read_stl10(root, "train+unlabeled", False)
    assert_store(union, np.concatenate([parts["train"][0], parts["unlabeled"][0]]), None)


def test_stl10_orientation_matches_torchvision(stl10_root, monkeypatch):
    root, _ = stl10_root
    monkeypatch.setattr(tvd.STL10, "_check_integrity", lambda self: True)
    for split in ("train", "unlabeled"):
        theirs = tvd.STL10(str(root), split=split)
        ours = read_stl10(root, split, False)
        assert np.array_equal(theirs.data.transpose(0, 2, 3, 1), ours.images.numpy())  # their N×C×H×W
    assert theirs.classes == ours.class_names


def test_stl10_truncated_binary(stl10_root):
    root, _ = stl10_root
    path = root / "stl10_binary" / "train_X.bin"
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(UserError, match="truncated"):
        read_stl10(root, "train", False)


# --- SVHN ---

@pytest.fixture
def svhn_root(tmp_path: Path):
    parts = {}
    for part in ("train", "test"):
        x = random_images(5, 32)
        digits = np.array([0, 1, 9, 0, 5])
        on_disk = np.where(digits == 0, 10, digits).reshape(-1, 1)  # SVHN writes digit 0 as label 10
        scipy.io.savemat(tmp_path / f"{part}_32x32.mat", {"X": x.transpose(1, 2, 3, 0), "y": on_disk})
        parts[part] = (x, digits)
    return tmp_path, parts


def test_svhn(svhn_root, monkeypatch):
    root, parts = svhn_root
    train = read_svhn(root, "train", False)
    assert_store(train, *parts["train"])
    assert train.class_names == [str(d) for d in range(10)]
    assert len(read_svhn(root, "all", False)) == 10
    monkeypatch.setattr(tvd.SVHN, "_check_integrity", lambda self: True)
    theirs = tvd.SVHN(str(root), split="test")
    assert np.array_equal(theirs.data.transpose(0, 2, 3, 1), read_svhn(root, "test", False).images.numpy())


def test_svhn_missing(tmp_path):
    with pytest.raises(UserError, match="svhn not found under .*train_32x32.mat"):
        read_svhn(tmp_path, "train", False)


# --- MNIST ---

def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 8, array.ndim]) + np.array(array.shape, dtype=">i4").tobytes()
    return header + array.astype(np.uint8).tobytes()


def write_mnist(folder: Path, compress: bool) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    parts = {}
    for part, prefix in (("train", "train"), ("test", "t10k")):
        x = RNG.integers(0, 256, (5, 28, 28), dtype=np.uint8)
        y = RNG.integers(0, 10, 5)
        for kind, array in (("images-idx3", x), ("labels-idx1", y)):
            name = f"{prefix}-{kind}-ubyte"
            data = idx_bytes(array)
            if compress:
                (folder / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (folder / name).write_bytes(data)
        parts[part] = (x[..., None], y)
    return parts


def test_mnist_torchvision_layout(tmp_path):
    parts = write_mnist(tmp_path / "MNIST" / "raw", compress=False)
    train = read_mnist(tmp_path, "train", False)
    assert train.images.shape == (5, 28, 28, 1)
    assert_store(train, *parts["train"])
    assert_store(read_mnist(tmp_path, "test", False), *parts["test"])
    theirs = tvd.mnist.read_image_file(str(tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"))
    assert torch.equal(theirs, train.images[..., 0])


def test_mnist_gzipped_in_root(tmp_path):
    parts = write_mnist(tmp_path, compress=True)
    assert_store(read_mnist(tmp_path, "test", False), *parts["test"])


def test_mnist_bad_magic_and_missing(tmp_path):
    write_mnist(tmp_path, compress=False)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x09\x03" + bytes(12))
    with pytest.raises(UserError, match="not an IDX file") as error:
        read_mnist(tmp_path, "train", False)
    # the advice is a call that exists (the CLI has no --download flag)
    assert "--download" not in str(error.value) and "load_dataset(NAME, root=ROOT, download=True)" in str(error.value)
    with pytest.raises(UserError, match="mnist not found under"):
        read_mnist(tmp_path / "nothing", "test", False)


def test_download_failure_is_one_line_user_error(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(tvd, "MNIST", offline)
    monkeypatch.setattr(tvd, "CIFAR100", offline)
    with pytest.raises(UserError, match="downloading mnist into .* failed: no network"):
        read_mnist(tmp_path, "train", download=True)
    with pytest.raises(UserError, match="downloading cifar20 into .* failed: no network"):
        read_cifar20(tmp_path, "train", download=True)
