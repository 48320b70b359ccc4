"""BYOL pretext (Grill et al. 2020, "Bootstrap your own latent"): an online network (backbone →
projector → predictor) predicts a target network's projection of the other augmented view; the
target is an exponential moving average of the online backbone and projector, and no negatives
are used. Issue 8 asks that the pretext be chosen by accuracy per minute, not by habit: this is the
self-distillation candidate beside SimCLR, with the same output (`backbone`, `embed`, and
`projector_embed`: the online projector's) so SCAN, IIC or self-labelling continue it unchanged.

Sizes as lightly's and solo-learn's CIFAR recipes: projector 512 → 4096 → 256, predictor
256 → 4096 → 256 (BatchNorm in both hidden layers). The target momentum τ rises from `momentum`
(0.99) to 1 along a cosine over the stage's epochs (BYOL §3.2; set once per epoch here, per step
there). The target is updated at the *start* of each step, from the online weights the previous
optimiser step left: the same sequence of targets as updating after each step (the first update
is a no-op: the target starts as a copy), and it keeps the whole step in one compiled graph.
Both views go through one forward of 2N images, as in SimCLR (DEVICE.md: the large-batch rate).
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from labelless.data.augment import Augment
from labelless.errors import UserError
from labelless.losses import byol_loss
from labelless.methods.base import Batch, EpochContext, Method, predict_in_batches
from labelless.methods.simclr import projection_head
from labelless.nn.backbones import build_backbone


def target_momentum(epoch: int, epochs: int, base: float) -> float:
    """τ at `epoch` of `epochs`: 1 − (1 − base)·(cos(π·epoch/epochs) + 1)/2 — `base` at the start, → 1."""
    return 1 - (1 - base) * (math.cos(math.pi * epoch / max(epochs, 1)) + 1) / 2


class BYOL(Method):
    name = "byol"

    def __init__(self, *, k: int, in_channels: int, image_size: int, pretrained: Method | None = None,
                 backbone: str = "resnet18", projection_dim: int = 256, hidden_dim: int = 4096,
                 momentum: float = 0.99, augment: str = "simclr") -> None:
        super().__init__()
        if pretrained is not None:
            raise UserError("byol learns its backbone from scratch: put it first in the pipeline")
        if not 0 <= momentum < 1:
            raise UserError(f"byol: momentum must be in [0, 1), not {momentum}")
        self.backbone = build_backbone(backbone, in_channels=in_channels, image_size=image_size)
        self.projector = projection_head(self.backbone.num_features, hidden_dim, projection_dim)
        self.predictor = projection_head(projection_dim, hidden_dim, projection_dim)
        self.target_backbone = copy.deepcopy(self.backbone).requires_grad_(False)
        self.target_projector = copy.deepcopy(self.projector).requires_grad_(False)
        self.base_momentum = momentum
        # a tensor, not a float: a new value each epoch must not recompile the compiled step
        self.register_buffer("momentum", torch.tensor(momentum))
        self.augment = Augment(augment, size=image_size, channels=in_channels)

    def on_epoch_start(self, epoch: int, ctx: EpochContext) -> None:
        self.momentum.fill_(target_momentum(epoch, ctx.epochs, self.base_momentum))
        ctx.logs["target_momentum"] = float(self.momentum)

    def _online_and_target(self) -> tuple[list[Tensor], list[Tensor]]:
        online = [*self.backbone.parameters(), *self.projector.parameters()]
        target = [*self.target_backbone.parameters(), *self.target_projector.parameters()]
        return online, target

    @torch.no_grad()
    def update_target(self) -> None:
        """ξ ← τ·ξ + (1 − τ)·θ for the backbone's and projector's parameters (their BatchNorm
        statistics are the target's own, from its forward passes)."""
        online, target = self._online_and_target()
        torch._foreach_lerp_(target, online, 1 - self.momentum)

    def training_step(self, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        self.update_target()
        n = len(batch.indices)
        views = self.augment(batch.images.repeat(2, 1, 1, 1))  # per-sample parameters: two views
        predictions = self.predictor(self.projector(self.backbone(views)))
        with torch.no_grad():
            targets = self.target_projector(self.target_backbone(views))
        # symmetric: each view's prediction of the other view's target
        loss = byol_loss(predictions[:n], targets[n:]) + byol_loss(predictions[n:], targets[:n])
        return loss, {}

    def embed(self, images: Tensor) -> Tensor:
        """Online backbone features, L2-normalised (SCAN mines neighbours on them, as after SimCLR)."""
        return predict_in_batches(lambda x: F.normalize(self.backbone(x).float(), dim=1), images)

    def projector_embed(self, images: Tensor) -> Tensor:
        """Online projector output, L2-normalised (N×projection_dim), for SCAN's `neighbour_space:
        projector`. The online projection is SimCLR's z counterpart; the predictor's output is only an
        estimate of the other view's target, and the target projector is a lagging average of this one."""
        return predict_in_batches(lambda x: F.normalize(self.projector(self.backbone(x)).float(), dim=1), images)

    def parameter_groups(self) -> list[dict]:
        return [{"params": [*self.backbone.parameters(), *self.projector.parameters(), *self.predictor.parameters()]}]
