"""IIC: Invariant Information Clustering (Ji, Henriques, Vedaldi 2019).

Maximise the mutual information between the cluster posteriors of two augmented views of each
image (`labelless.losses.iic_loss`), with several sub-heads and an optional over-clustering head
(K' > K clusters) that shapes the trunk. The K-way head with the lowest loss is the answer.

Every step adds the over-clustering loss to the K-way heads' mean loss, one backward for both. The
authors' code instead alternates the two heads (a pass over the data for each per epoch); the sum is
the common simplification, not measured against the alternation here.
"""
from __future__ import annotations

import torch
from torch import Tensor

from labelless.data.augment import Augment
from labelless.losses import iic_loss
from labelless.methods.base import Batch, Method, MultiHeadClustering
from labelless.nn.backbones import build_backbone
from labelless.nn.heads import ClusterHeads, HeadSelector


class IIC(MultiHeadClustering):
    name = "iic"

    def __init__(self, *, k: int, in_channels: int, image_size: int, pretrained: Method | None = None,
                 backbone: str = "resnet18", heads: int = 5, overcluster_k: int | None = None,
                 augment: str = "simclr") -> None:
        super().__init__()
        self.backbone = build_backbone(backbone, in_channels=in_channels, image_size=image_size)
        self.heads = ClusterHeads(self.backbone.num_features, k, heads)
        self.overcluster = (ClusterHeads(self.backbone.num_features, overcluster_k, heads)
                            if overcluster_k else None)
        self.selector = HeadSelector(heads)
        self.augment = Augment(augment, size=image_size, channels=in_channels)

    def on_epoch_start(self, epoch, ctx) -> None:
        self.selector.start_epoch()

    def training_step(self, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        n = len(batch.indices)
        features = self.backbone(self.augment(batch.images.repeat(2, 1, 1, 1)))  # per-sample params: 2 views
        head_losses = torch.stack([iic_loss(logits[:n].float().softmax(1), logits[n:].float().softmax(1))
                                   for logits in self.heads(features)])
        self.selector.record(head_losses)
        loss, logs = head_losses.mean(), {"mi": -self.selector.pick(head_losses.detach())}
        if self.overcluster is not None:
            over = torch.stack([iic_loss(logits[:n].float().softmax(1), logits[n:].float().softmax(1))
                                for logits in self.overcluster(features)]).mean()
            loss, logs["overcluster_mi"] = loss + over, -over.detach()
        return loss, logs
