"""End-to-end pseudo-label classification (Chen et al. 2020, "Unsupervised image classification for
deep representation learning"), as the CIFAR-10 comparison study implements it.

"You do one forward pass with one set of randomly applied data augmentations; then you use the CNN's
predictions from this forward pass as the ground-truth. Then you do one more forward pass again with
randomly applied data augmentations [...] and you train with the standard softmax cross-entropy
loss." Per batch: pseudo-labels = argmax of the softmax on one augmentation (no gradient); empty
clusters receive half of the largest cluster's samples (`repair_empty_clusters`); cross-entropy of a
second, independent augmentation against them. Optional Sobel input (augment, then Sobel, as the study
does), upsampling (`input_size`: 64 for AlexNet on 32-px images) and dropout before the classifier
(0.5 in the study).

Weakly-supervised mode (`labelled_fraction`, our extension; the study has none): the classifier's
logits on the clean view of the labelled images (resized and Sobel-filtered like the evaluation view,
not augmented, as every method's labelled batch is) through the same dropout as the trained
augmentation, so both cross-entropies train one classifier under one regularisation.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from labelless.data.augment import Augment
from labelless.losses.clustering import mean_entropy
from labelless.losses.pseudo_label import repair_empty_clusters
from labelless.methods.base import Batch, Method, predict_in_batches
from labelless.nn.backbones import build_backbone


def input_views(augment: str, sobel: bool, image_size: int, in_channels: int,
                input_size: int | None) -> tuple[Augment, Augment]:
    """(training augmentation, evaluation view) for a pseudo-label classifier: both resized to
    `input_size` (default: the image size) and, with `sobel`, replaced by the two Sobel gradients."""
    size = input_size or image_size
    suffix = "+sobel" if sobel else ""
    return (Augment(augment + suffix, size=size, channels=in_channels),
            Augment("none" + suffix, size=size, channels=in_channels))


class PseudoLabel(Method):
    name = "pseudo_label"

    def __init__(self, *, k: int, in_channels: int, image_size: int, pretrained: Method | None = None,
                 backbone: str = "vgg4", augment: str = "simclr", sobel: bool = False, dropout: float = 0.5,
                 input_size: int | None = None) -> None:
        super().__init__()
        self.k = k
        self.augment, self.view = input_views(augment, sobel, image_size, in_channels, input_size)
        self.backbone = build_backbone(backbone, in_channels=self.augment.out_channels,
                                       image_size=input_size or image_size)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.backbone.num_features, k)

    def training_step(self, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        with torch.no_grad():
            labelling_logits = self.head(self.backbone(self.augment(batch.images)))
            found = labelling_logits.argmax(1)
            targets = repair_empty_clusters(found, self.k)
        logits = self._trained_logits(self.augment(batch.images))
        loss = F.cross_entropy(logits.float(), targets)
        return loss, {"labels_moved": (targets != found).float().mean(),
                      "marginal_entropy": mean_entropy(F.one_hot(targets, self.k).float())}

    def _trained_logits(self, inputs: Tensor) -> Tensor:
        """Logits with dropout before the classifier (active in training mode only), N×K."""
        return self.head(self.dropout(self.backbone(inputs)))

    def labelled_logits(self, images: Tensor) -> list[Tensor]:
        return [self._trained_logits(self.view(images))]

    def embed(self, images: Tensor) -> Tensor:
        return predict_in_batches(lambda x: self.backbone(self.view(x)), images)

    def cluster_logits(self, images: Tensor) -> Tensor:
        return predict_in_batches(lambda x: self.head(self.backbone(self.view(x))), images)
