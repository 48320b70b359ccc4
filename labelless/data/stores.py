"""ImageStore: every dataset becomes one uint8 tensor (N×H×W×C) plus optional labels.

Labels are for evaluation only: nothing in training reads them unless the run says so explicitly
(weakly-supervised mode), and that is recorded in the run.

Where the pixels live (`memory_plan`, printed for every folder read):
- in memory, and on the training device whole after `to(device)`: batches are index gathers there;
- memory-mapped (`streamed`): a store larger than `MEMORY_FRACTION` of the available RAM is a
  copy-on-write map of a `.npy` file on disk, and the OS page cache does the streaming. `to(device)`
  then leaves the pixels on the host and `batch(index)` gathers the rows there (in sorted order, which
  reads a cold file sequentially) and moves only that batch to the device. A store in memory that
  exceeds `DEVICE_FRACTION` of the GPU's free memory is kept on the host the same way.
`LABELLESS_STREAM=always|never|auto` (default auto) forces the choice.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from labelless.errors import UserError

STREAM_ENV = "LABELLESS_STREAM"
STREAM_MODES = ("auto", "always", "never")
# In memory up to half the available RAM: decoding, the model, evaluation outputs and the page cache
# of the files being read need the other half.
MEMORY_FRACTION = 0.5
# Whole on the GPU up to half its free memory: the rest is for the model, activations and augmentation.
DEVICE_FRACTION = 0.5


@dataclass(frozen=True)
class MemoryPlan:
    """Where a store of `n` uint8 images of `shape` (H, W, C) lives, and why."""

    n: int
    shape: tuple[int, int, int]
    nbytes: int
    available: int | None  # bytes of RAM available (None: unknown)
    stream: bool  # True: memory-mapped from `cache_path`
    forced: bool = False  # chosen by LABELLESS_STREAM, not by size
    cache_path: str | None = None
    cache_reused: bool = False

    def describe(self) -> str:
        """One line, e.g. '60000 images 28×28×1 = 47 MB, 20.1 GB available → in memory'."""
        h, w, c = self.shape
        available = f"{format_bytes(self.available)} available" if self.available is not None \
            else "available memory unknown"
        where = "in memory" if not self.stream else \
            f"memory-mapped from {self.cache_path}" if self.cache_path else "memory-mapped"
        if self.cache_reused:
            where += " (decoded before, reused)"
        if self.forced:
            where += f" ({STREAM_ENV}={'always' if self.stream else 'never'})"
        return f"{self.n} images {h}×{w}×{c} = {format_bytes(self.nbytes)}, {available} → {where}"


def memory_plan(n: int, height: int, width: int, channels: int, *, mode: str | None = None,
                available: int | None = None) -> MemoryPlan:
    """In memory when N×H×W×C bytes are at most `MEMORY_FRACTION` of the available RAM, else streamed.

    `mode`: 'auto' (by size), 'always' (stream) or 'never'; default `$LABELLESS_STREAM`, else 'auto'.
    `available`: bytes of RAM, default `available_memory()`; unknown → in memory (as before streaming).
    """
    where = f"${STREAM_ENV}" if mode is None else "the dataset option 'stream'"
    mode = (mode if mode is not None else os.environ.get(STREAM_ENV) or "auto").strip().lower()
    if mode not in STREAM_MODES:
        raise UserError(f"{where} must be one of {', '.join(STREAM_MODES)}, not '{mode}'")
    nbytes = n * height * width * channels
    available = available_memory() if available is None else available
    if mode == "auto":
        stream = available is not None and nbytes > MEMORY_FRACTION * available
    else:
        stream = mode == "always"
    return MemoryPlan(n, (height, width, channels), nbytes, available, stream, forced=mode != "auto")


def available_memory() -> int | None:
    """Bytes of RAM this process can still use: /proc/meminfo's MemAvailable (page cache that can be
    dropped counts as available), capped by a cgroup memory limit (containers); None when unknown."""
    available = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    if available is None:
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(limit_file) as f:
                limit = f.read().strip()
        except OSError:
            continue
        if limit.isdigit():  # 'max' (cgroup v2) or a huge number (v1) mean no limit
            available = min(available, int(limit))
    return available


def format_bytes(n: int) -> str:
    """Decimal units, 3 significant digits: '47 MB', '20.1 GB'."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


@dataclass
class ImageStore:
    images: Tensor  # N×H×W×C uint8; uint8 on the device costs 4× less memory traffic than float
    labels: Tensor | None = None  # N int64, evaluation only
    class_names: list[str] | None = None
    source: str = ""
    paths: list[str] | None = None  # for folder sources: the file behind each row
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) of unreadable files
    streamed: bool = False  # images are a copy-on-write memory map of a file on disk (see module doc)
    batch_device: torch.device | None = None  # set when images stay on the host: where batch() puts rows

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(f"ImageStore wants uint8 N×H×W×C images, got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels is not None and len(self.labels) != len(self.images):
            raise ValueError(f"{len(self.labels)} labels for {len(self.images)} images")

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def channels(self) -> int:
        return self.images.shape[3]

    @property
    def image_size(self) -> tuple[int, int]:
        return self.images.shape[1], self.images.shape[2]

    @property
    def num_classes(self) -> int | None:
        if self.class_names is not None:
            return len(self.class_names)
        return int(self.labels.max()) + 1 if self.labels is not None else None

    @property
    def device(self) -> torch.device:
        """Where batches, labels and row indices live (the pixels may stay on the host: `batch_device`)."""
        return self.batch_device if self.batch_device is not None else self.images.device

    def to(self, device: str | torch.device) -> ImageStore:
        """Labels to `device`; the pixels too, unless the store is streamed or too large for the GPU:
        then they stay on the host and each `batch` moves only its rows."""
        device = torch.device(device)
        labels = self.labels.to(device) if self.labels is not None else None
        if self.streamed or not _fits_on_device(self.images, device):
            return replace(self, images=self.images.cpu(), labels=labels, batch_device=device)
        return replace(self, images=self.images.to(device), labels=labels, batch_device=None)

    def subset(self, index: Tensor | slice) -> ImageStore:
        """Rows `index`; a slice of a streamed store stays a map, a gather copies its rows into memory."""
        labels = self.labels[index] if self.labels is not None else None
        paths = None
        if self.paths is not None:
            rows = range(len(self))[index] if isinstance(index, slice) else index.tolist()
            paths = [self.paths[i] for i in rows]
        images = self.images[index.to(self.images.device) if isinstance(index, Tensor) else index]
        return replace(self, images=images, labels=labels, paths=paths,
                       streamed=self.streamed and isinstance(index, slice))

    def batch(self, index: Tensor) -> Tensor:
        """Rows `index` as float N×C×H×W in [0, 1], on the store's device."""
        if self.batch_device is None:  # the pixels are on the device: one gather, no copy
            return to_float(self.images[index])
        # uint8 crosses to the device and is converted there: 4× fewer bytes than float
        return to_float(gather_rows(self.images, index).to(self.batch_device))

    def without_labels(self) -> ImageStore:
        return replace(self, labels=None)


def gather_rows(images: Tensor, index: Tensor) -> Tensor:
    """images[index] on the host, read in ascending row order (sequential on a cold memory map)."""
    index = index.cpu()
    order = index.argsort()
    rows = torch.empty((len(index), *images.shape[1:]), dtype=images.dtype)
    rows[order] = images[index[order]]
    return rows


def _fits_on_device(images: Tensor, device: torch.device) -> bool:
    """Whether `images` may move to `device` whole: always for the CPU, else ≤ DEVICE_FRACTION of the
    GPU's free memory (printing the plan when it does not)."""
    if device.type != "cuda" or images.device.type == "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    if images.nbytes <= DEVICE_FRACTION * free:
        return True
    print(f"labelless: images take {format_bytes(images.nbytes)}, more than {DEVICE_FRACTION:.0%} of the "
          f"{format_bytes(free)} free on {device}: kept in host memory, each batch copied to the GPU",
          file=sys.stderr)
    return False


def to_float(images: Tensor) -> Tensor:
    """uint8 N×H×W×C → float N×C×H×W in [0, 1]."""
    return images.permute(0, 3, 1, 2).float().div_(255.0)


def concat(stores: list[ImageStore], source: str) -> ImageStore:
    images = torch.cat([s.images for s in stores])
    labels = None if any(s.labels is None for s in stores) else torch.cat([s.labels for s in stores])
    return ImageStore(images, labels, stores[0].class_names, source)


def partial_labels(labels: Tensor, fraction: float, seed: int = 0) -> Tensor:
    """Weakly-supervised mode: keep the labels of a random `fraction` of each class (at least one image
    per class), −1 elsewhere. Deterministic in `seed`; int64, same length as `labels`."""
    if not 0 < fraction <= 1:
        raise UserError(f"labelled fraction must be in (0, 1], not {fraction}")
    labels = labels.long().cpu()
    generator = torch.Generator().manual_seed(seed)
    kept = torch.full_like(labels, -1)
    for label in labels.unique().tolist():
        rows = torch.nonzero(labels == label).flatten()
        take = max(1, round(fraction * len(rows)))
        chosen = rows[torch.randperm(len(rows), generator=generator)[:take]]
        kept[chosen] = label
    return kept
