"""The thin interface between the Trainer and a method (see DESIGN.md).

A method is an `nn.Module` that owns its networks, losses and state (memory banks, pseudo-labels,
neighbours). The Trainer calls `on_epoch_start`, `training_step`, `parameter_groups`, the checkpoint
pair and, only in weakly-supervised mode, `labelled_logits` (DESIGN.md's interface plus that one hook);
evaluation and reports call `embed`, `cluster_logits` and `head_logits`. Everything a method shares
with another lives in `labelless.losses` or `labelless.nn` as functions, not in this base class.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor, nn

from labelless.data.stores import ImageStore

if TYPE_CHECKING:
    from labelless.config import TrainConfig


@dataclass
class Batch:
    images: Tensor  # N×C×H×W float in [0, 1], on the training device, not yet augmented
    indices: Tensor  # N int64: the rows of the store (memory banks and pseudo-labels are indexed by these)
    labels: Tensor | None = None  # only in weakly-supervised mode; −1 marks an unlabelled row


@dataclass
class EpochContext:
    """What a method may look at between epochs: the (unlabelled) store, the schedule, the run dir."""

    epoch: int
    epochs: int
    store: ImageStore  # labels stripped: a method never sees them
    device: torch.device
    batch_size: int = 512
    run_dir: Path | None = None
    logs: dict[str, float] = field(default_factory=dict)  # a method may add epoch-level diagnostics

    def batches(self, batch_size: int | None = None) -> Iterator[tuple[Tensor, Tensor]]:
        """Every row once, in order, as (indices, float images) — for feature passes over the dataset."""
        size = batch_size or self.batch_size
        for start in range(0, len(self.store), size):
            index = torch.arange(start, min(start + size, len(self.store)), device=self.store.device)
            yield index, self.store.batch(index).to(self.device, non_blocking=True)


class Method(nn.Module):
    """Base of every method. Subclasses set `name` and implement `training_step` and `embed`."""

    name: ClassVar[str]

    def training_step(self, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        """Loss to minimise for one batch, and scalar logs."""
        raise NotImplementedError

    def on_epoch_start(self, epoch: int, ctx: EpochContext) -> None:
        """Refresh pseudo-labels, neighbours or curriculum rounds. Default: nothing."""

    def embed(self, images: Tensor) -> Tensor:
        """Features for kNN, probes and maps: N×D."""
        raise NotImplementedError

    def cluster_logits(self, images: Tensor) -> Tensor | None:
        """N×K logits of the chosen head, or None for pure embedding methods."""
        return None

    def head_logits(self, images: Tensor) -> list[Tensor] | None:
        """N×K logits of every head (multi-head methods), for the report. Default: the chosen head only."""
        logits = self.cluster_logits(images)
        return None if logits is None else [logits]

    def check_train(self, train: TrainConfig) -> None:
        """Refuse (UserError) a stage's train config that contradicts the method's own schedule
        (Super-AND: rounds against lr restarts and steps, UE steps). Called when the pipeline is built,
        before any stage trains. Default: any train config."""

    def knn_bank(self) -> Tensor | None:
        """The training images' features that weighted-kNN evaluation scores test queries against, row i
        = image i of the store the method trained on (Super-AND: its memory bank, the paper's protocol).
        None (default): `evaluate` embeds the training images with `embed`."""
        return None

    def diagnostics(self, labels: Tensor, run_dir: Path | None) -> dict:
        """Evaluation-only figures that need the training images' labels (N int64, aligned with the
        training store), e.g. Super-AND's per-round neighbourhood consistency. Called by `evaluate` after
        training and never during it; nothing here may change the model. Default: none."""
        return {}

    def labelled_logits(self, images: Tensor) -> list[Tensor] | None:
        """Weakly-supervised mode: differentiable N×K logits of every head on (un-augmented) labelled
        images, trained with cross-entropy so that cluster k is class k. None: the method has no
        cluster head to take labels (the run then refuses `labelled_fraction`)."""
        return None

    def state_for_checkpoint(self) -> dict:
        """Non-parameter state to checkpoint (python values); tensors belong in registered buffers."""
        return {}

    def load_state_from_checkpoint(self, state: dict) -> None:
        """Inverse of `state_for_checkpoint`."""

    def parameter_groups(self) -> list[dict]:
        """Optimiser parameter groups; override for per-part learning rates."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]


class MultiHeadClustering(Method):
    """Inference shared by methods built as `backbone` → `heads` (`ClusterHeads`) with a `selector`
    (`HeadSelector`, lowest loss): SCAN and IIC. Subclasses still write their own training step."""

    backbone: nn.Module
    heads: nn.Module
    selector: nn.Module

    def embed(self, images: Tensor) -> Tensor:
        return predict_in_batches(self.backbone, images)

    def cluster_logits(self, images: Tensor) -> Tensor:
        return predict_in_batches(lambda x: self.heads.heads[self.selector.chosen](self.backbone(x)), images)

    def head_logits(self, images: Tensor) -> list[Tensor]:
        features = self.embed(images)
        return [head(features) for head in self.heads.heads]

    def labelled_logits(self, images: Tensor) -> list[Tensor]:
        features = self.backbone(images)
        return [head(features) for head in self.heads.heads]


@torch.no_grad()
def predict_in_batches(fn, images: Tensor, batch_size: int = 1024) -> Tensor:
    """Apply `fn` (embed / cluster_logits) over a large float image tensor without running out of memory."""
    return torch.cat([fn(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])
