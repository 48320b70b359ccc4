"""SimCLR pretext (Chen et al. 2020): two augmented views of each image, NT-Xent over the batch.

The first stage of SCAN-style pipelines: its embedding (or, with SCAN's `neighbour_space: projector`,
its normalised projector output) is where the clustering stage mines neighbours, and its backbone is
what the clustering stage fine-tunes. Both views go through one forward call (one batch of 2N),
which keeps the GPU at its large-batch rate (DEVICE.md).
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from labelless.data.augment import Augment
from labelless.losses import nt_xent_loss
from labelless.methods.base import Batch, Method, predict_in_batches
from labelless.nn.backbones import build_backbone


def projection_head(in_features: int, hidden: int, out_features: int) -> nn.Module:
    """SimCLR's 2-layer MLP projector, with BN after the hidden layer (ours: SCAN's CIFAR projector is
    Linear-ReLU-Linear, 512-512-128). fast.yaml's 0.8205 (GPU_RUNS.md) was measured with this one."""
    return nn.Sequential(nn.Linear(in_features, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, out_features))


class SimCLR(Method):
    name = "simclr"

    def __init__(self, *, k: int, in_channels: int, image_size: int, pretrained: Method | None = None,
                 backbone: str = "resnet18", projection_dim: int = 128, hidden_dim: int = 2048,
                 temperature: float = 0.2, augment: str = "simclr") -> None:
        super().__init__()
        self.backbone = build_backbone(backbone, in_channels=in_channels, image_size=image_size)
        self.projector = projection_head(self.backbone.num_features, hidden_dim, projection_dim)
        self.temperature = temperature
        self.augment = Augment(augment, size=image_size, channels=in_channels)

    def training_step(self, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        n = len(batch.indices)
        z = self.projector(self.backbone(self.augment(batch.images.repeat(2, 1, 1, 1))))  # per-sample params: 2 views
        return nt_xent_loss(z[:n], z[n:], self.temperature), {}

    def embed(self, images: Tensor) -> Tensor:
        """Backbone features, L2-normalised (SCAN mines neighbours on the pretext features)."""
        return predict_in_batches(lambda x: F.normalize(self.backbone(x).float(), dim=1), images)

    def projector_embed(self, images: Tensor) -> Tensor:
        """Projector output z, L2-normalised (N×projection_dim): the space SCAN's reference code mines
        neighbours in (SCAN's `neighbour_space: projector`)."""
        return predict_in_batches(lambda x: F.normalize(self.projector(self.backbone(x)).float(), dim=1), images)
