"""The supervised reference: the same backbone and classifier trained with cross-entropy on the true
labels — the upper bound every results table shows beside the unsupervised rows (the comparison
study: ResNet-18 0.87, VGG16-bn 0.90 CIFAR-10 test accuracy with SGD, dropout 0.5).

Labels reach a method only when its stage config says `uses_labels: true` (the run then records that
labels were used) and the method class declares `uses_labels = True`; the Trainer then fills
`Batch.labels`. Rows labelled −1 (unlabelled, in weakly-supervised runs) are ignored.
"""
from __future__ import annotations

from typing import ClassVar

import torch.nn.functional as F
from torch import Tensor, nn

from labelless.data.augment import Augment
from labelless.errors import UserError
from labelless.methods.base import Batch, Method, predict_in_batches
from labelless.nn.backbones import build_backbone


class Supervised(Method):
    name = "supervised"
    uses_labels: ClassVar[bool] = True

    def __init__(self, *, k: int, in_channels: int, image_size: int, pretrained: Method | None = None,
                 backbone: str = "vgg4", augment: str = "weak", dropout: float = 0.0, uses_labels: bool = False,
                 backbone_options: dict | None = None) -> None:
        super().__init__()
        if not uses_labels:
            raise UserError("method 'supervised' trains on the labels: set `uses_labels: true` in its method "
                            "config, so that the Trainer passes them and the run records it")
        self.backbone = build_backbone(backbone, in_channels=in_channels, image_size=image_size,
                                       **(backbone_options or {}))
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.backbone.num_features, k)
        self.augment = Augment(augment, size=image_size, channels=in_channels)

    def training_step(self, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        if batch.labels is None:
            raise UserError("method 'supervised' got a batch without labels: the Trainer passes them only "
                            "when the stage's method config sets `uses_labels: true`")
        logits = self.head(self.dropout(self.backbone(self.augment(batch.images)))).float()
        labelled = batch.labels >= 0
        # mean over the labelled rows; in weakly-supervised mode (−1 elsewhere) a batch may hold none: 0
        count = labelled.sum().clamp_min(1)
        loss = F.cross_entropy(logits, batch.labels, ignore_index=-1, reduction="sum") / count
        accuracy = ((logits.argmax(1) == batch.labels) & labelled).sum() / count
        return loss, {"train_accuracy": accuracy.detach()}

    def embed(self, images: Tensor) -> Tensor:
        return predict_in_batches(self.backbone, images)

    def cluster_logits(self, images: Tensor) -> Tensor:
        return predict_in_batches(lambda x: self.head(self.backbone(x)), images)
