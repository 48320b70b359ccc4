"""LSD-C: Linearly Separable Deep Clusters (Rebuffi, Ehrhardt, Han, Vedaldi, Zisserman 2020), stage 2.

The trunk comes from a RotNet stage; its first blocks stay frozen ("the RotNet training provides robust
early filters", supplement §1) and the last macro-block plus a *linear* K-way classifier train. In every
batch each pair (i, j) gets a pseudo-label ℓ_ij ("same cluster") from the current network's pooled
features of a clean view, detached (`labelless.losses.pairwise`: kNN by default, cosine or SNE); the
classifier learns to make σ_iᵀσ_j match it with a binary cross-entropy, one side clean and the other
RICAP-mixed (targets mixed by patch area), plus a ramped MSE consistency between two mixed views:

    L = BCE(t_ij, σ(mixed_i)ᵀσ(clean_j)) + w(e)·MSE(σ(mixed₁), σ(mixed₂)),  w(e) = λ·exp(−5(1 − min(e, T)/T)²).

Defaults are the authors' released code (srebuffi/lsd-clusters; VERIFIED-DETAILS.md) for CIFAR-10:
kNN k = 20, λ = 5, T = 100, frozen stem + layers 1–3 of ResNet-18 with their BatchNorm layers still in
train mode, three pad-and-crop + flip views (zero padding) of each image, RICAP with Beta(0.3, 0.3)
and one tile boundary per batch ("for each minibatch permutation", supplement §1) whose two views
share tile sizes and sources but draw their own crop positions. Every choice the supplement ablates
is a switch: `trainable_from`, `head`, `labelling`, `data_mix`, `consistency_weight`; `mix_per:
sample` draws the RICAP boundary (or mixup's λ) per sample instead.

Two deliberate differences from the code: RICAP draws each tile's crop position per sample and every
tile's sources by a permutation (the code: crop positions per tile and batch, and the original image kept
in any tile larger than a quarter), and the pair targets of a mixed image are mixed over its *own* tile
sources, t_ij = Σ_q w_iq·ℓ[src_q(i), j] (the code indexes the permutation by the clean image, which
transposes the mixed part of the target).

One process only: pair labels, pair BCE and RICAP are per batch, which DDP would shrink to batch_size / W
(`check_train` refuses it before the pipeline trains).
"""
from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from labelless.data.augment import MIX_PER, Augment, mixup, ricap
from labelless.errors import UserError
from labelless.losses.pairwise import (cosine_pair_labels, knn_pair_labels, mix_pair_targets, pair_bce_loss,
                                       sigmoid_rampup, sne_pair_labels)
from labelless.methods.base import Batch, EpochContext, Method, predict_in_batches
from labelless.nn.backbones import Backbone, build_backbone
from labelless.train import distributed_info

LABELLINGS = ("knn", "cosine", "sne")
HEADS = ("linear", "mlp")
DATA_MIXES = ("ricap", "mixup", "none")
FROZEN_BATCHNORM = ("train", "eval")


def _choice(value: str, choices: tuple[str, ...], key: str) -> None:
    if value not in choices:
        raise UserError(f"lsd_c: {key} must be one of {', '.join(choices)}, got {value!r}")


def freeze_first_blocks(backbone: Backbone, trainable_from: int, frozen_batchnorm: str) -> int:
    """Stop gradients to the blocks before `trainable_from` (a block index; negative counts from the
    end, `len(blocks)` leaves only the head training). `frozen_batchnorm: train` keeps their BatchNorm
    layers in train mode — batch statistics, running averages still updated — as the authors' code
    does (it calls `model.train()` on the whole net); `eval` fixes them (`Backbone.freeze_blocks`).
    Returns the number of frozen blocks."""
    blocks = len(backbone.blocks)
    frozen = trainable_from + blocks if trainable_from < 0 else trainable_from
    if not 0 <= frozen <= blocks:
        raise UserError(f"lsd_c: trainable_from {trainable_from} is outside the backbone's {blocks} blocks "
                        f"(use 0…{blocks}, or −1 for the last block)")
    if frozen_batchnorm == "eval":
        backbone.freeze_blocks(frozen)
    else:
        for index, block in enumerate(backbone.blocks):
            block.requires_grad_(index >= frozen)
    return frozen


def build_head(in_features: int, k: int, head: str) -> nn.Module:
    """`linear` (the paper's: clusters linearly separable in feature space) or `mlp`, the supplement's
    2-layer non-linear ablation (Table 2): Linear(D, D) → ReLU → Linear(D, K)."""
    if head == "linear":
        return nn.Linear(in_features, k)
    return nn.Sequential(nn.Linear(in_features, in_features), nn.ReLU(inplace=True), nn.Linear(in_features, k))


def mixed_views(first: Tensor, second: Tensor, data_mix: str, beta: float,
                per: str = "batch") -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Two mixed views that share the mix (tile sizes and sources, or mixing weights and partners), and
    how row i of them is composed: (mixed₁, mixed₂, sources Q×N, weights N×Q), for `mix_pair_targets`.
    RICAP draws each view's crop positions anew; mixup mixes the two views channel-stacked, so one draw
    of λ and partner serves both; `none` returns the views unmixed. `per`: one RICAP boundary or λ per
    batch (the papers') or per sample."""
    n = first.shape[0]
    identity = torch.arange(n, device=first.device)
    if data_mix == "ricap":
        mixed, perms, weights = ricap(first, beta, per=per)
        other, _, _ = ricap(second, beta, layout=(perms, weights))
        return mixed, other, perms, weights
    if data_mix == "mixup":
        stacked, perm, lam = mixup(torch.cat([first, second], 1), beta, per=per)
        mixed, other = stacked.split(first.shape[1], 1)
        return mixed, other, torch.stack([identity, perm]), torch.stack([lam, 1 - lam], 1)
    return first, second, identity[None], torch.ones(n, 1, device=first.device)


class LSDC(Method):
    name = "lsd_c"

    def __init__(self, *, k: int, in_channels: int, image_size: int, pretrained: Method | None = None,
                 backbone: str = "resnet18", trainable_from: int = -1, frozen_batchnorm: str = "train",
                 head: str = "linear", labelling: str = "knn", knn_k: int = 20, cosine_threshold: float = 0.9,
                 sne_threshold: float = 0.01, sne_temperature: float = 1.0, consistency_weight: float = 5.0,
                 rampup_epochs: int = 100, data_mix: str = "ricap", mix_beta: float = 0.3, mix_per: str = "batch",
                 padding_mode: str = "constant", flip: bool = True) -> None:
        """`pretrained`: the RotNet stage, whose backbone is copied (None: `backbone` from scratch, for
        tests). `trainable_from`: first trained block (ResNet blocks are stem, layer1…layer4: −1 = layer4
        only, the paper's "from macro-block 3"; 3 = "from macro-block 2"; 5 = linear head only).
        `labelling` picks the pair pseudo-labels and its hyper-parameters (`knn_k`; `cosine_threshold`;
        `sne_threshold`, `sne_temperature`). `consistency_weight` λ (0 = the "w/o MSE" ablation) and
        `rampup_epochs` T shape the MSE weight. `data_mix`: ricap | mixup | none, with Beta(`mix_beta`,
        `mix_beta`) (the supplement's mixup needs weight decay 1e-4: set it in the stage's train), drawn
        `mix_per` batch (one RICAP boundary or λ per batch: the papers' and the authors' code) or sample.
        `padding_mode`, `flip`: the pad-and-crop views (`flip: false` for digits)."""
        super().__init__()
        for value, choices, key in ((labelling, LABELLINGS, "labelling"), (head, HEADS, "head"),
                                    (data_mix, DATA_MIXES, "data_mix"), (mix_per, MIX_PER, "mix_per"),
                                    (frozen_batchnorm, FROZEN_BATCHNORM, "frozen_batchnorm")):
            _choice(value, choices, key)
        if pretrained is not None and not isinstance(getattr(pretrained, "backbone", None), Backbone):
            raise UserError(f"lsd_c: the previous stage ('{pretrained.name}') has no backbone to continue")
        self.backbone = (copy.deepcopy(pretrained.backbone) if pretrained is not None
                         else build_backbone(backbone, in_channels=in_channels, image_size=image_size))
        self.frozen_blocks = freeze_first_blocks(self.backbone, trainable_from, frozen_batchnorm)
        self.head = build_head(self.backbone.num_features, k, head)
        self.pair_labels: Callable[[Tensor], Tensor] = {
            "knn": partial(knn_pair_labels, k=knn_k),
            "cosine": partial(cosine_pair_labels, threshold=cosine_threshold),
            "sne": partial(sne_pair_labels, threshold=sne_threshold, temperature=sne_temperature),
        }[labelling]
        self.knn_k = knn_k if labelling == "knn" else None
        self.consistency_weight, self.rampup_epochs = consistency_weight, rampup_epochs
        self.data_mix, self.mix_beta, self.mix_per = data_mix, mix_beta, mix_per
        self.augment = Augment("weak", size=image_size, channels=in_channels, padding_mode=padding_mode,
                               flip_p=0.5 if flip else 0.0)
        self.epoch = 0

    def check_train(self, train) -> None:
        """Refuse, before any stage trains, what `on_epoch_start` would (more than one process, a batch
        smaller than knn_k, a short last batch that could be). The supplement trains MixUp with weight
        decay 1e-4 (RICAP with 5e-4): say so when a MixUp stage keeps another value — a warning, since a
        user may mean it."""
        self._check_batch(train.batch_size)
        if self.knn_k is not None and not train.drop_last:
            raise UserError(f"lsd_c links each image to its {self.knn_k} nearest in the batch, and with "
                            f"train.drop_last false the epoch's last batch may hold fewer: keep drop_last true")
        if self.data_mix == "mixup" and train.weight_decay != 1e-4:
            warnings.warn(f"lsd_c with data_mix: mixup trains with weight decay {train.weight_decay:g}; the "
                          f"supplement's MixUp runs use 1e-4 (train.weight_decay=1e-4)", stacklevel=2)

    def _check_batch(self, batch_size: int) -> None:
        """The pair labels, the pair BCE and the RICAP draw are per batch, and the paper's accuracy grows
        with it (CIFAR-10: 72.4 at 64, 81.7 at 256). Under DDP each process would see batch_size / W
        images — silently a smaller-batch method — so one process only; its step is small."""
        world_size = distributed_info().world_size
        if world_size > 1:
            raise UserError(f"lsd_c pairs the images within a batch, so {world_size} processes would each train "
                            f"on batch_size / {world_size} images: run this stage as one process, without torchrun")
        if self.knn_k is not None and self.knn_k > batch_size:
            raise UserError(f"lsd_c: knn_k {self.knn_k} links each image to its {self.knn_k} nearest in the batch, "
                            f"but train.batch_size is {batch_size}: lower knn_k or raise the batch size")

    def on_epoch_start(self, epoch: int, ctx: EpochContext) -> None:
        self._check_batch(ctx.batch_size)  # also for a Trainer used without `check_train`
        self.epoch = epoch
        ctx.logs["consistency_weight"] = self.current_consistency_weight()

    def current_consistency_weight(self) -> float:
        """w(e) = λ·exp(−5(1 − min(e, T)/T)²) at the current 0-based epoch, constant within it."""
        return self.consistency_weight * sigmoid_rampup(self.epoch, self.rampup_epochs)

    def training_step(self, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        clean, first, second = (self.augment(batch.images) for _ in range(3))
        mixed, other, sources, weights = mixed_views(first, second, self.data_mix, self.mix_beta, self.mix_per)
        # three forward passes, not one concatenated batch: each view gets its own BatchNorm statistics,
        # as in the authors' code
        features = self.backbone(clean)  # features: N×D
        probabilities = self.head(features).float().softmax(1)  # probabilities: N×K
        mixed_probabilities = self.head(self.backbone(mixed)).float().softmax(1)
        other_probabilities = self.head(self.backbone(other)).float().softmax(1)
        with torch.no_grad():
            pair_labels = self.pair_labels(features.detach().float())  # pair_labels: N×N
            targets = mix_pair_targets(pair_labels, sources, weights)
        clustering = pair_bce_loss(mixed_probabilities, probabilities, targets)
        consistency = F.mse_loss(mixed_probabilities, other_probabilities)
        loss = clustering + self.current_consistency_weight() * consistency
        return loss, {"pair_bce": clustering.detach(), "consistency_mse": consistency.detach(),
                      "positive_pairs": pair_labels.mean()}

    def embed(self, images: Tensor) -> Tensor:
        return predict_in_batches(self.backbone, images)

    def cluster_logits(self, images: Tensor) -> Tensor:
        return predict_in_batches(lambda x: self.head(self.backbone(x)), images)
