"""Dataset sources → ImageStore. One function per source, looked up by name in `DATASETS`.

`load_dataset("cifar10", split="test")` is the one entry point (the CLI's `--dataset NAME`):
- `cifar10`, `mnist`: lossless `.npz` shards (`train_*.npz`, `test_*.npz` with `x`, `y`) under the data
  root, or torchvision's own on-disk format when the root holds that instead;
- `cifar100`, `cifar20`, `stl10`, `svhn`: torchvision's on-disk formats under the root (`download=True`
  lets torchvision fetch them, for users with internet);
- `digits`: scikit-learn's bundled 8×8 digits (needs no download; single split `all`);
- `folder:PATH`: every image under PATH (see `labelless.data.folder`).

Every dataset also has the splits `fit` and `holdout`, for tuning without the test split (issue 8's
honesty rule): `holdout` is a fixed 10 % of the training split (`train`, or `all` where a dataset has
no train split), drawn by a permutation with a fixed seed — the same rows in every run, every seed and
every process, chosen without looking at labels — and `fit` is the other 90 %. Tune with
`dataset.split: fit` and `dataset.eval_split: holdout`; report the chosen settings trained on `train`
and scored on `test`, once.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from labelless.data.stores import ImageStore, concat
from labelless.errors import UserError

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
MNIST_CLASSES = [str(d) for d in range(10)]


def default_data_root() -> Path:
    """`$LABELLESS_DATA`, else the project's `../shared/data` (beside the checkout), else `./data`."""
    env = os.environ.get("LABELLESS_DATA")
    if env:
        return Path(env)
    beside_checkout = Path(__file__).resolve().parents[2].parent / "shared" / "data"
    if beside_checkout.is_dir():
        return beside_checkout
    return Path("data")


def _npz_split(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray] | None:
    files = sorted(folder.glob(f"{split}_*.npz"))
    if not files:
        return None
    parts = [np.load(f) for f in files]
    return np.concatenate([p["x"] for p in parts]), np.concatenate([p["y"] for p in parts])


def _as_store(x: np.ndarray, y: np.ndarray | None, class_names: list[str] | None, source: str) -> ImageStore:
    if x.ndim == 3:  # gray N×H×W → N×H×W×1
        x = x[..., None]
    labels = torch.from_numpy(np.asarray(y, dtype=np.int64)) if y is not None else None
    return ImageStore(torch.from_numpy(np.ascontiguousarray(x, dtype=np.uint8)), labels, class_names, source)


def _splits(split: str, available: tuple[str, ...]) -> list[str]:
    if split == "all":
        return list(available)
    if split not in available:
        raise UserError(f"split '{split}' does not exist here: choose one of {', '.join(available + ('all',) + HOLDOUT_SPLITS)}")
    return [split]


def _npz_or_torchvision(name: str, class_names: list[str], torchvision_reader: Callable) -> Callable:
    def load(split: str = "train", root: str | Path | None = None, download: bool = False, **_) -> ImageStore:
        base = Path(root) if root else default_data_root()
        folder = base / name if (base / name).is_dir() else base
        stores = []
        for s in _splits(split, ("train", "test")):
            found = _npz_split(folder, s)
            if found is not None:
                stores.append(_as_store(*found, class_names, f"{name} {s} ({folder})"))
            else:
                stores.append(torchvision_reader(base, s, download))
        return stores[0] if len(stores) == 1 else concat(stores, f"{name} {split} ({folder})")

    return load


def load_digits_store(split: str = "all", **_) -> ImageStore:
    """scikit-learn's digits: 1,797 8×8 images with 17 gray levels (0..16), scaled to 0..255."""
    from sklearn.datasets import load_digits

    if split != "all":
        raise UserError(f"digits has the split 'all' (and fit, holdout), not '{split}'")
    d = load_digits()
    x = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)
    return _as_store(x, d.target, MNIST_CLASSES, "scikit-learn digits (8×8)")


def _lazy(module: str, function: str) -> Callable:
    def call(*args, **kwargs):
        import importlib

        return getattr(importlib.import_module(module), function)(*args, **kwargs)

    return call


def _torchvision_only(name: str) -> Callable:
    reader = _lazy("labelless.data.formats", f"read_{name}")

    def load(split: str = "train", root: str | Path | None = None, download: bool = False, **_) -> ImageStore:
        return reader(Path(root) if root else default_data_root(), split, download)

    return load


DATASETS: dict[str, Callable[..., ImageStore]] = {
    "cifar10": _npz_or_torchvision("cifar10", CIFAR10_CLASSES, _lazy("labelless.data.formats", "read_cifar10")),
    "mnist": _npz_or_torchvision("mnist", MNIST_CLASSES, _lazy("labelless.data.formats", "read_mnist")),
    "cifar100": _torchvision_only("cifar100"),
    "cifar20": _torchvision_only("cifar20"),
    "stl10": _torchvision_only("stl10"),
    "svhn": _torchvision_only("svhn"),
    "digits": load_digits_store,
}

DEFAULT_SPLIT = {"digits": "all", "folder": "all"}
HOLDOUT_SPLITS = ("fit", "holdout")
HOLDOUT_FRACTION = 0.1
HOLDOUT_SEED = 0  # fixed on purpose: a run's own seed must not move images between fit and holdout


def holdout_rows(n: int) -> torch.Tensor:
    """The sorted rows of an n-image training split that form `holdout`: 10 % of them, rounded, at least one."""
    if n < 2:
        raise UserError(f"a split of {n} image(s) cannot be divided into fit and holdout")
    size = max(1, round(n * HOLDOUT_FRACTION))
    permutation = torch.randperm(n, generator=torch.Generator().manual_seed(HOLDOUT_SEED))
    return permutation[:size].sort().values


def default_train_split(name: str) -> str:
    """The split a run of dataset `name` trains on unless told: `train`, or `all` for digits and folders
    (they have no other). It is also the split that `fit` and `holdout` divide."""
    return DEFAULT_SPLIT.get("folder" if name.startswith("folder:") else name, "train")


def default_eval_split(name: str) -> str:
    """The split a run of dataset `name` is scored on unless told: `test`, or `all` where there is no other."""
    return "all" if default_train_split(name) == "all" else "test"


holdout_parent = default_train_split


def canonical_name(name: str) -> str:
    """A dataset name as a run records it: a folder's path made absolute (`~` expanded), so that `report`
    and `--resume` work from anywhere and two spellings of one folder compare equal."""
    if name.startswith("folder:") and name != "folder:":
        return "folder:" + os.path.abspath(os.path.expanduser(name[len("folder:"):]))
    return name


def same_dataset(a: object, b: str) -> bool:
    """Whether two dataset names (a may be a value read from a file) name the same dataset."""
    return isinstance(a, str) and canonical_name(a) == canonical_name(b)


def splits_overlap(name: str, a: str, b: str) -> bool:
    """Whether splits a and b of dataset `name` share images: the same split, `all` and any other, or
    `fit`/`holdout` and the split they are drawn from (a kNN bank must share none with its queries)."""
    parent = holdout_parent(name)
    return a == b or "all" in (a, b) or {a, b} in ({"fit", parent}, {"holdout", parent})


def _holdout_split(name: str, split: str, root: str | Path | None, download: bool, options: dict) -> ImageStore:
    parent = holdout_parent(name)
    share = HOLDOUT_FRACTION if split == "holdout" else 1 - HOLDOUT_FRACTION
    store = load_dataset(name, split=parent, root=root, download=download, **options)
    if store.streamed:  # a random subset of a memory map is a copy in memory: larger than memory, by definition
        raise UserError(f"'{split}' would copy a random {share:.0%} of {name} into memory, and it is streamed "
                        f"from disk because it does not fit: use '{parent}'")
    keep = torch.zeros(len(store), dtype=torch.bool)
    keep[holdout_rows(len(store))] = True
    if split == "fit":
        keep = ~keep
    subset = store.subset(keep.nonzero().squeeze(1))
    return dataclasses.replace(subset, source=f"{store.source}, {split} ({share:.0%} of {parent}, fixed seed {HOLDOUT_SEED})")


# the folder reader's options (`dataset.options` in a config) and the types each accepts; None: not given
FOLDER_OPTIONS: dict[str, tuple[type, ...]] = {
    "image_size": (int, type(None)), "labels_from_folders": (bool, type(None)), "max_pixels": (int,),
    "stream": (str, type(None)), "cache_dir": (str, os.PathLike, type(None)), "progress": (bool,),
}


def _check_options(name: str, options: dict) -> None:
    """An option the loader would not use, or of the wrong type, is a one-line error, not silently dropped."""
    if not name.startswith("folder:"):
        if options:
            raise UserError(f"dataset '{name}' takes no options, got {', '.join(sorted(options))} "
                            f"(dataset.options is for folder:PATH)")
        return
    for key, value in options.items():
        if key not in FOLDER_OPTIONS:
            raise UserError(f"unknown option '{key}' for folder:PATH: choose from {', '.join(FOLDER_OPTIONS)}")
        wanted = FOLDER_OPTIONS[key]
        if not isinstance(value, wanted) or (isinstance(value, bool) and bool not in wanted):
            names = " or ".join("null" if t is type(None) else t.__name__ for t in wanted)
            raise UserError(f"folder option '{key}' must be {names}, got {value!r}")


def load_dataset(name: str, split: str | None = None, root: str | Path | None = None, download: bool = False,
                 **options) -> ImageStore:
    """Load a dataset by its CLI name into an ImageStore (labels, where present, for evaluation only).

    `split` defaults to `train` (`all` for `digits` and folders). `folder:PATH` accepts the folder
    reader's options (`image_size`, `labels_from_folders`).
    """
    _check_options(name, options)
    if split in HOLDOUT_SPLITS:
        return _holdout_split(name, split, root, download, options)
    if name.startswith("folder:"):
        from labelless.data.folder import read_folder

        if split not in (None, "all"):
            raise UserError(f"a folder has the split 'all' (and {' and '.join(HOLDOUT_SPLITS)}), not '{split}'")
        return read_folder(name[len("folder:"):], **options)
    if name not in DATASETS:
        raise UserError(f"unknown dataset '{name}': choose one of {', '.join(list(DATASETS) + ['folder:PATH'])}")
    return DATASETS[name](split=split or DEFAULT_SPLIT.get(name, "train"), root=root, download=download, **options)
