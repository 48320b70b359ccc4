"""ImageStore: every dataset becomes one in-memory uint8 tensor (N×H×W×C) plus optional labels.

Labels are for evaluation only: nothing in training reads them unless the run says so explicitly
(weakly-supervised mode), and that is recorded in the run.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import Tensor


@dataclass
class ImageStore:
    images: Tensor  # N×H×W×C uint8; uint8 on the device costs 4× less memory traffic than float
    labels: Tensor | None = None  # N int64, evaluation only
    class_names: list[str] | None = None
    source: str = ""
    paths: list[str] | None = None  # for folder sources: the file behind each row
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) of unreadable files

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
        return self.images.device

    def to(self, device: str | torch.device) -> ImageStore:
        labels = self.labels.to(device) if self.labels is not None else None
        return replace(self, images=self.images.to(device), labels=labels)

    def subset(self, index: Tensor | slice) -> ImageStore:
        labels = self.labels[index] if self.labels is not None else None
        paths = None
        if self.paths is not None:
            rows = range(len(self))[index] if isinstance(index, slice) else index.tolist()
            paths = [self.paths[i] for i in rows]
        return replace(self, images=self.images[index], labels=labels, paths=paths)

    def batch(self, index: Tensor) -> Tensor:
        """Rows `index` as float N×C×H×W in [0, 1], gathered on the store's device."""
        return to_float(self.images[index])

    def without_labels(self) -> ImageStore:
        return replace(self, labels=None)


def to_float(images: Tensor) -> Tensor:
    """uint8 N×H×W×C → float N×C×H×W in [0, 1]."""
    return images.permute(0, 3, 1, 2).float().div_(255.0)


def concat(stores: list[ImageStore], source: str) -> ImageStore:
    images = torch.cat([s.images for s in stores])
    labels = None if any(s.labels is None for s in stores) else torch.cat([s.labels for s in stores])
    return ImageStore(images, labels, stores[0].class_names, source)
