"""Shared fixtures: one thread a test; tiny CIFAR-10 and CIFAR-100 in torchvision's pickle layout
(the format, source and CLI tests)."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from labelless.data.sources import CIFAR10_CLASSES


def pytest_collection_modifyitems(items: list) -> None:
    """The benchmark scripts' tests (each a chain of subprocesses, up to ~1.5 min) first, the rest in
    their usual order: `make test` shares the tests among pytest-xdist workers, and a long test taken
    last would leave the other workers idle while it runs."""
    items.sort(key=lambda item: not item.path.name.endswith("_benchmark.py"))


@pytest.fixture(autouse=True)
def _one_thread_per_test():
    """Tests run side by side with other work on 2 cores: competing intra-op threads made small
    convolutions ~10× slower, so each test uses one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def cifar_rows(images: np.ndarray) -> np.ndarray:
    """N×32×32×3 → the pickles' CHW-flat N×3072 rows."""
    return images.transpose(0, 3, 1, 2).reshape(len(images), -1)


def write_pickle(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f)


@pytest.fixture
def cifar10_root(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """root with 5 train batches of 2 images and a test batch of 3: (root, train_x, train_y, test_x, test_y)."""
    rng = np.random.default_rng(0)
    train_x = rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)
    train_y = rng.integers(0, 10, 10)
    test_x = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    test_y = rng.integers(0, 10, 3)
    folder = tmp_path / "cifar-10-batches-py"
    for b in range(5):
        rows = slice(2 * b, 2 * b + 2)
        batch = {"data": cifar_rows(train_x[rows]), "labels": train_y[rows].tolist()}
        write_pickle(folder / f"data_batch_{b + 1}", batch)
    write_pickle(folder / "test_batch", {"data": cifar_rows(test_x), "labels": test_y.tolist()})
    write_pickle(folder / "batches.meta", {"label_names": CIFAR10_CLASSES})
    return tmp_path, train_x, train_y, test_x, test_y


@pytest.fixture
def cifar100_root(tmp_path: Path) -> tuple[Path, dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """root with 5 train and 5 test images: (root, {part: (images, fine labels, coarse labels)})."""
    rng = np.random.default_rng(4)
    parts = {}
    for part in ("train", "test"):
        x = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
        fine = rng.integers(0, 100, 5)
        coarse = fine // 5
        write_pickle(tmp_path / "cifar-100-python" / part,
                     {"data": cifar_rows(x), "fine_labels": fine.tolist(), "coarse_labels": coarse.tolist()})
        parts[part] = (x, fine, coarse)
    write_pickle(tmp_path / "cifar-100-python" / "meta", {"fine_label_names": [f"fine{i}" for i in range(100)],
                                                          "coarse_label_names": [f"coarse{i}" for i in range(20)]})
    return tmp_path, parts
