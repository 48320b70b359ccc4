"""`load_dataset`: names, splits, npz shards, the torchvision fallback, and the real shared data when present."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from labelless.data.sources import default_data_root, holdout_rows, load_dataset
from labelless.errors import UserError

DATA = default_data_root()


def test_digits():
    store = load_dataset("digits")
    assert store.images.shape == (1797, 8, 8, 1) and store.images.dtype == torch.uint8
    assert store.labels.unique().tolist() == list(range(10))
    assert int(store.images.max()) == 255


def test_unknown_dataset_and_bad_split():
    with pytest.raises(UserError, match="unknown dataset 'cifar11'"):
        load_dataset("cifar11")
    with pytest.raises(UserError, match="has the split 'all'"):
        load_dataset("digits", split="test")


def test_dataset_options_are_checked_not_dropped(tmp_path: Path):
    """`dataset.options` reaches only the folder reader: an option a loader would ignore, or of the wrong
    type, is refused before any image is read (it once trained on digits unchanged, recorded as a variant)."""
    with pytest.raises(UserError, match="dataset 'digits' takes no options, got image_size"):
        load_dataset("digits", image_size=32)
    with pytest.raises(UserError, match="unknown option 'foo' for folder:PATH"):
        load_dataset(f"folder:{tmp_path}", foo=1)
    with pytest.raises(UserError, match="folder option 'image_size' must be int or null, got 'abc'"):
        load_dataset(f"folder:{tmp_path}", image_size="abc")
    with pytest.raises(UserError, match="folder option 'labels_from_folders' must be bool or null, got 1"):
        load_dataset(f"folder:{tmp_path}", labels_from_folders=1)
    with pytest.raises(UserError, match="folder option 'max_pixels' must be int, got True"):
        load_dataset(f"folder:{tmp_path}", max_pixels=True)
    with pytest.raises(UserError, match="holds no files"):  # valid options reach the reader
        load_dataset(f"folder:{tmp_path}", image_size=None, labels_from_folders=False, progress=False)


def test_npz_shards_from_root(tmp_path: Path):
    rng = np.random.default_rng(3)
    shards = [(rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n)) for n in (3, 2)]
    (tmp_path / "mnist").mkdir()
    for i, (x, y) in enumerate(shards):
        np.savez_compressed(tmp_path / "mnist" / f"train_{i:02d}.npz", x=x, y=y)
    np.savez_compressed(tmp_path / "mnist" / "test_00.npz", x=shards[0][0], y=shards[0][1])
    store = load_dataset("mnist", root=tmp_path)
    assert store.images.shape == (5, 28, 28, 1)
    assert np.array_equal(store.images[..., 0].numpy(), np.concatenate([x for x, _ in shards]))
    assert store.labels.tolist() == np.concatenate([y for _, y in shards]).tolist()
    assert len(load_dataset("mnist", split="all", root=tmp_path)) == 8


def test_cifar10_falls_back_to_torchvision_pickles(cifar10_root):
    root, train_x, train_y, *_ = cifar10_root
    store = load_dataset("cifar10", root=root)
    assert np.array_equal(store.images.numpy(), train_x)
    assert store.labels.tolist() == train_y.tolist()
    assert len(load_dataset("cifar10", split="all", root=root)) == 13


def test_torchvision_only_dataset_missing(tmp_path: Path):
    with pytest.raises(UserError, match="stl10 not found under"):
        load_dataset("stl10", root=tmp_path)


@pytest.mark.skipif(not (DATA / "cifar10").is_dir(), reason=f"real CIFAR-10 npz shards not at {DATA}/cifar10")
def test_real_cifar10():
    train = load_dataset("cifar10")
    assert train.images.shape == (50000, 32, 32, 3)
    assert train.labels[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]
    assert train.class_names[6] == "frog"
    assert load_dataset("cifar10", split="test").images.shape == (10000, 32, 32, 3)


@pytest.mark.skipif(not (DATA / "mnist").is_dir(), reason=f"real MNIST npz shards not at {DATA}/mnist")
def test_real_mnist():
    train = load_dataset("mnist")
    assert train.images.shape == (60000, 28, 28, 1)
    assert train.labels[:5].tolist() == [5, 0, 4, 1, 9]


def test_fit_and_holdout_partition_the_training_split_the_same_way_every_time(tmp_path: Path):
    rng = np.random.default_rng(5)
    (tmp_path / "mnist").mkdir()
    x, y = rng.integers(0, 256, (50, 28, 28), dtype=np.uint8), rng.integers(0, 10, 50)
    np.savez_compressed(tmp_path / "mnist" / "train_00.npz", x=x, y=y)
    np.savez_compressed(tmp_path / "mnist" / "test_00.npz", x=x[:3], y=y[:3])
    torch.manual_seed(123)  # the run's own seed must not move images between fit and holdout
    fit, holdout = (load_dataset("mnist", split=s, root=tmp_path) for s in ("fit", "holdout"))
    torch.manual_seed(7)
    assert torch.equal(load_dataset("mnist", split="holdout", root=tmp_path).images, holdout.images)
    rows = holdout_rows(50)
    assert len(holdout) == len(rows) == 5 and len(fit) == 45
    assert torch.equal(holdout.images[..., 0], torch.from_numpy(x)[rows])
    assert torch.equal(holdout.labels, torch.from_numpy(y)[rows])
    rest = torch.ones(50, dtype=torch.bool)
    rest[rows] = False
    assert torch.equal(fit.images[..., 0], torch.from_numpy(x)[rest])  # disjoint, and together all of train
    assert "holdout (10% of train" in holdout.source


def test_holdout_of_a_dataset_without_a_train_split_comes_from_all():
    fit, holdout = load_dataset("digits", split="fit"), load_dataset("digits", split="holdout")
    assert (len(fit), len(holdout)) == (1617, 180)
    assert holdout_rows(1797).tolist() == sorted(set(holdout_rows(1797).tolist()))  # sorted, no repeats
    with pytest.raises(UserError, match="cannot be divided"):
        holdout_rows(1)
