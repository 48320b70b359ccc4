"""Readers for torchvision's on-disk dataset formats → ImageStore.

Each reader is `read_NAME(root, split, download) -> ImageStore` and parses the files itself (pickles,
raw binaries, `.mat`, IDX) rather than going through torchvision's dataset classes: those hold
N×C×H×W arrays and PIL conversion per item, while we want one N×H×W×C uint8 array with as few copies
as possible. torchvision is used only to download (`download=True`), and only when the files are
missing, so a local copy is never re-fetched.

The files are looked for in `root` and in `root/NAME` (so `--data-root ~/data` works whether the
archive was unpacked into `~/data` or `~/data/cifar100`). Every dataset has the splits `train`,
`test` and `all` (train then test); STL-10 also has `unlabeled` and `train+unlabeled`.
"""
from __future__ import annotations

import gzip
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from labelless.data.sources import MNIST_CLASSES
from labelless.data.stores import ImageStore, concat
from labelless.errors import UserError

STL10_CLASSES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
TRAIN_TEST = {"train": ("train",), "test": ("test",), "all": ("train", "test")}
STL10_SPLITS = {
    **TRAIN_TEST,
    "unlabeled": ("unlabeled",),
    "train+unlabeled": ("train", "unlabeled"),  # the papers' STL-10 training set; labels are None
}


def _parts(name: str, split: str, splits: dict[str, tuple[str, ...]]) -> tuple[str, ...]:
    if split not in splits:
        raise UserError(f"{name} has no split '{split}': choose one of {', '.join(splits)}, fit, holdout")
    return splits[split]


def _fetch_hint(name: str, root: Path) -> str:
    """How to get a missing dataset: the CLI reads files, Python's load_dataset can fetch them."""
    return (f"pass --data-root, or fetch it once with torchvision: "
            f"python -c \"import labelless; labelless.load_dataset('{name}', root='{root}', download=True)\"")


# a broken file's advice; the CLI reads files only, so the fetch is the Python call `_fetch_hint` gives
REFETCH = "delete it and fetch the dataset again with labelless.load_dataset(NAME, root=ROOT, download=True)"


def _locate(name: str, root: Path, marker: str, download: Callable[[], object] | None = None) -> Path:
    """The folder (root or root/NAME) holding `marker`; downloads into root first if asked and missing."""
    for base in (root, root / name):
        if (base / marker).exists():
            return base
    if download is not None:
        _download(name, root, download)
        if (root / marker).exists():
            return root
    raise UserError(f"{name} not found under {root} (expected {root / marker}); {_fetch_hint(name, root)}")


def _download(name: str, root: Path, fetch: Callable[[], object]) -> None:
    """torchvision's downloader, with a network or disk failure turned into one line."""
    try:
        fetch()
    except (OSError, RuntimeError) as e:  # URLError is an OSError; torchvision raises RuntimeError on bad md5
        raise UserError(f"downloading {name} into {root} failed: {e}") from None


def _read_split(name: str, split: str, splits: dict[str, tuple[str, ...]],
                read_part: Callable[[str], ImageStore]) -> ImageStore:
    stores = [read_part(part) for part in _parts(name, split, splits)]
    return stores[0] if len(stores) == 1 else concat(stores, " + ".join(s.source for s in stores))


def _existing(path: Path, name: str) -> Path:
    if not path.exists():
        raise UserError(f"{name}: {path} is missing (the copy is incomplete); {REFETCH}")
    return path


def _store(images: np.ndarray, labels: np.ndarray | None, class_names: list[str], source: str) -> ImageStore:
    tensor = torch.from_numpy(np.ascontiguousarray(images, dtype=np.uint8))
    label_tensor = torch.from_numpy(np.asarray(labels, dtype=np.int64)) if labels is not None else None
    return ImageStore(tensor, label_tensor, class_names, source)


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="latin1")
    except (OSError, EOFError, pickle.UnpicklingError, ValueError) as e:
        raise UserError(f"{path} is not a readable CIFAR pickle ({e}); {REFETCH}") from None


def _cifar_images(batch: dict) -> np.ndarray:
    # rows are CHW-flat: 1024 red, 1024 green, 1024 blue values, each plane row-major
    return np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


# --- CIFAR-10 ---------------------------------------------------------------------------------------

def read_cifar10(root: Path, split: str, download: bool) -> ImageStore:
    """CIFAR-10 python pickles in `root/cifar-10-batches-py/` (data_batch_1..5, test_batch)."""
    from torchvision.datasets import CIFAR10

    fetch = (lambda: CIFAR10(str(root), download=True)) if download else None
    folder = _locate("cifar10", root, "cifar-10-batches-py/batches.meta", fetch) / "cifar-10-batches-py"
    class_names = list(_unpickle(folder / "batches.meta")["label_names"])

    def read_part(part: str) -> ImageStore:
        files = [f"data_batch_{i}" for i in range(1, 6)] if part == "train" else ["test_batch"]
        batches = [_unpickle(_existing(folder / f, "cifar10")) for f in files]
        images = np.concatenate([_cifar_images(b) for b in batches])
        labels = np.concatenate([b["labels"] for b in batches])
        return _store(images, labels, class_names, f"CIFAR-10 {part} (torchvision format, {folder})")

    return _read_split("cifar10", split, TRAIN_TEST, read_part)


# --- CIFAR-100 / CIFAR-20 -------------------------------------------------------------------------

def _read_cifar100(root: Path, split: str, download: bool, coarse: bool) -> ImageStore:
    from torchvision.datasets import CIFAR100

    name = "cifar20" if coarse else "cifar100"
    fetch = (lambda: CIFAR100(str(root), download=True)) if download else None
    folder = _locate(name, root, "cifar-100-python/train", fetch) / "cifar-100-python"
    kind = "coarse" if coarse else "fine"
    class_names = list(_unpickle(_existing(folder / "meta", name))[f"{kind}_label_names"])
    title = "CIFAR-20 (CIFAR-100 superclasses)" if coarse else "CIFAR-100"

    def read_part(part: str) -> ImageStore:
        batch = _unpickle(_existing(folder / part, name))
        return _store(_cifar_images(batch), batch[f"{kind}_labels"], class_names,
                      f"{title} {part} (torchvision format, {folder})")

    return _read_split(name, split, TRAIN_TEST, read_part)


def read_cifar100(root: Path, split: str, download: bool) -> ImageStore:
    """CIFAR-100 with its 100 fine labels, from `root/cifar-100-python/{train,test,meta}`."""
    return _read_cifar100(root, split, download, coarse=False)


def read_cifar20(root: Path, split: str, download: bool) -> ImageStore:
    """CIFAR-100 scored on its 20 superclasses (the pickle's `coarse_labels`), as the clustering papers do."""
    return _read_cifar100(root, split, download, coarse=True)


# --- STL-10 ---------------------------------------------------------------------------------------

def _stl10_images(path: Path) -> np.ndarray:
    """N×96×96×3 from STL-10's binary, which stores each channel plane column-major.

    Converted in chunks from a memory map, so the 100,000 unlabeled images (2.8 GB) cost one copy in
    memory instead of two.
    """
    plane = 3 * 96 * 96
    if path.stat().st_size % plane:
        raise UserError(f"{path} is truncated (size not a multiple of {plane}); {REFETCH}")
    raw = np.memmap(path, dtype=np.uint8, mode="r").reshape(-1, 3, 96, 96)  # N × C × W × H
    images = np.empty((len(raw), 96, 96, 3), dtype=np.uint8)
    for start in range(0, len(raw), 4096):
        images[start:start + 4096] = raw[start:start + 4096].transpose(0, 3, 2, 1)
    return images


def read_stl10(root: Path, split: str, download: bool) -> ImageStore:
    """STL-10 binaries in `root/stl10_binary/`; `unlabeled` and `train+unlabeled` have labels None."""
    from torchvision.datasets import STL10
    from torchvision.datasets.utils import download_and_extract_archive

    # torchvision's downloader without building an STL10 dataset, which would load 2.8 GB we then discard
    fetch = (lambda: download_and_extract_archive(STL10.url, str(root), filename=STL10.filename,
                                                  md5=STL10.tgz_md5)) if download else None
    folder = _locate("stl10", root, "stl10_binary/train_X.bin", fetch) / "stl10_binary"
    names_file = folder / "class_names.txt"
    class_names = names_file.read_text().split() if names_file.exists() else STL10_CLASSES  # no spaces in names

    def read_part(part: str) -> ImageStore:
        images = _stl10_images(_existing(folder / f"{part}_X.bin", "stl10"))
        labels = None
        if part != "unlabeled":
            labels = np.fromfile(_existing(folder / f"{part}_y.bin", "stl10"), dtype=np.uint8).astype(np.int64) - 1
        return _store(images, labels, class_names, f"STL-10 {part} (torchvision format, {folder})")

    return _read_split("stl10", split, STL10_SPLITS, read_part)


# --- SVHN -----------------------------------------------------------------------------------------

def read_svhn(root: Path, split: str, download: bool) -> ImageStore:
    """SVHN cropped digits, `root/{train,test}_32x32.mat`; label 10 means digit 0."""
    from scipy.io import loadmat
    from torchvision.datasets import SVHN

    def read_part(part: str) -> ImageStore:
        fetch = (lambda: SVHN(str(root), split=part, download=True)) if download else None
        path = _locate("svhn", root, f"{part}_32x32.mat", fetch) / f"{part}_32x32.mat"
        mat = loadmat(path)
        images = mat["X"].transpose(3, 0, 1, 2)  # H×W×C×N → N×H×W×C
        labels = mat["y"].reshape(-1).astype(np.int64) % 10
        return _store(images, labels, MNIST_CLASSES, f"SVHN {part} ({path})")

    return _read_split("svhn", split, TRAIN_TEST, read_part)


# --- MNIST ----------------------------------------------------------------------------------------

def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """An IDX file of unsigned bytes (magic 0x0000 08 NDIM, big-endian int32 dims), gzipped or not."""
    with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
        data = bytearray(f.read())  # writable, so the tensor built on it is too
    if len(data) < 4 + 4 * ndim or data[:4] != bytes([0, 0, 8, ndim]):
        raise UserError(f"{path} is not an IDX file of {ndim}-D unsigned bytes; {REFETCH}")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">i4", count=ndim, offset=4))
    values = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if values.size != np.prod(dims):
        raise UserError(f"{path} holds {values.size} bytes for shape {dims}: truncated?")
    return values.reshape(dims)


def _idx_file(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.exists():
            return candidate
    return None


def read_mnist(root: Path, split: str, download: bool) -> ImageStore:
    """MNIST IDX files (plain or .gz) in `root/MNIST/raw/` (torchvision's layout) or directly in root."""
    from torchvision.datasets import MNIST

    folders = [base / sub for base in (root, root / "mnist") for sub in ("MNIST/raw", ".")]
    if download and not any(_idx_file(f, "train-images-idx3-ubyte") for f in folders):
        _download("mnist", root, lambda: MNIST(str(root), download=True))

    def read_part(part: str) -> ImageStore:
        prefix = "train" if part == "train" else "t10k"
        for folder in folders:
            images_file = _idx_file(folder, f"{prefix}-images-idx3-ubyte")
            labels_file = _idx_file(folder, f"{prefix}-labels-idx1-ubyte")
            if images_file and labels_file:
                images = _read_idx(images_file, 3)[..., None]
                return _store(images, _read_idx(labels_file, 1), MNIST_CLASSES,
                              f"MNIST {part} (IDX, {folder})")
        raise UserError(f"mnist not found under {root} (expected {root}/MNIST/raw/{prefix}-images-idx3-ubyte[.gz]); "
                        f"{_fetch_hint('mnist', root)}")

    return _read_split("mnist", split, TRAIN_TEST, read_part)
