"""RotNet (Gidaris, Singh, Komodakis, "Unsupervised Representation Learning by Predicting Image
Rotations", ICLR 2018): a 4-way linear classifier on the backbone's features predicts which of the
rotations 0°, 90°, 180°, 270° was applied, with cross-entropy; every image of the batch is shown in
all four rotations (the released code's choice, so a batch of N images is 4N forward passes).

A pretext stage: it learns an embedding, not clusters (`cluster_logits` is None). LSD-C's first stage
(supplement §1: 200 epochs, lr 0.1 divided by 5 at epochs 60, 120, 160); the authors' RotNet code
pads and crops CIFAR images (torchvision `RandomCrop(32, padding=4)`, zero padding) and flips them.
"""
from __future__ import annotations

import copy

import torch.nn.functional as F
from torch import Tensor, nn

from labelless.data.augment import Augment, rotnet_batch
from labelless.methods.base import Batch, Method, predict_in_batches
from labelless.nn.backbones import build_backbone

ROTATIONS = 4


class RotNet(Method):
    name = "rotnet"

    def __init__(self, *, k: int, in_channels: int, image_size: int, pretrained: Method | None = None,
                 backbone: str = "resnet18", padding_mode: str = "constant", flip: bool = True) -> None:
        """`k` is unused (the pretext task has 4 classes); `pretrained` continues its backbone.
        `padding_mode` and `flip` shape the pad-and-crop view that is rotated (`flip: false` for digits)."""
        super().__init__()
        self.backbone = (copy.deepcopy(pretrained.backbone) if pretrained is not None
                         else build_backbone(backbone, in_channels=in_channels, image_size=image_size))
        self.rotation_head = nn.Linear(self.backbone.num_features, ROTATIONS)
        self.augment = Augment("rotnet", size=image_size, channels=in_channels, padding_mode=padding_mode,
                               flip_p=0.5 if flip else 0.0)

    def training_step(self, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        rotated, rotations = rotnet_batch(self.augment(batch.images))  # rotated: 4N×C×H×W, rotations: 4N
        logits = self.rotation_head(self.backbone(rotated)).float()  # logits: 4N×4
        accuracy = (logits.argmax(1) == rotations).float().mean()
        return F.cross_entropy(logits, rotations), {"rotation_accuracy": accuracy.detach()}

    def rotation_logits(self, images: Tensor) -> Tensor:
        """N×4 logits of the rotation classifier on (already rotated) images."""
        return predict_in_batches(lambda x: self.rotation_head(self.backbone(x)), images)

    def embed(self, images: Tensor) -> Tensor:
        return predict_in_batches(self.backbone, images)
