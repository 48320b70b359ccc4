"""Discriminative entropy clustering with margin maximisation (Zhang & Boykov, "Revisiting
discriminative entropy clustering and its relation to K-means"; supplementary §A, §C, §E.3).

Posterior model σ_i = softmax(vᵀ f_w(X_i)): a backbone f_w and one linear classifier v.

- `objective: self_label` (Algorithm 1, the default): per batch, auxiliary targets y start at the
  network output and are iterated with the closed-form fixed point
      S_i^k = y_i^k / Σ_j y_j^k ;  y_i^k = (σ_i^k + λN u^k S_i^k) / (1 + λN Σ_c u^c S_i^c)
  (u uniform, λ = 100, N the batch); then [w, v] take a step on H_B(σ, y) + γ‖v‖², the reverse
  cross-entropy −mean_i Σ_k σ_i^k ln y_i^k plus the margin term.
- `objective: mi_margin`: loss (a) by plain gradient descent, mean H(σ) + w·KL(σ̄‖u) + γ‖v‖²
  (fairness weight w = 1.3 in the paper's deep experiments).

Self-augmentation: σ_i = E_t[σ(vᵀ f_w(t(X_i)))], the mean posterior over `views` augmentations (2 in
the paper; 0 uses the un-augmented image). The ResNet-18 variant (§E.3) takes σ from one image and
adds `augment_weight`·H(σ(t(X)), y), pulling an augmentation's prediction to the pseudo-label.

The margin term is explicit: the classifier's parameter group has no weight decay, so the paper's
Adam weight decay 0.01 on every parameter, which adds 0.01·v to v's gradient, is γ = 0.005 here.
"""
from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from labelless.data.augment import Augment
from labelless.losses.clustering import mean_entropy
from labelless.losses.entropy_margin import (entropy_margin_loss, margin_term, reverse_cross_entropy,
                                             self_label_targets)
from labelless.methods.base import Batch, Method, predict_in_batches
from labelless.nn.backbones import build_backbone

OBJECTIVES = ("self_label", "mi_margin")


class EntropyMargin(Method):
    name = "entropy_margin"

    def __init__(self, *, k: int, in_channels: int, image_size: int, pretrained: Method | None = None,
                 backbone: str = "vgg4", augment: str = "simclr", views: int = 2, objective: str = "self_label",
                 lamb: float = 100.0, gamma: float = 0.005, fairness_weight: float = 1.3,
                 augment_weight: float = 0.0, max_iterations: int = 300, tolerance: float = 1e-4,
                 backbone_lr_scale: float = 1.0) -> None:
        super().__init__()
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, not {objective!r}")
        if views < 0:
            raise ValueError(f"views must be ≥ 0 (0: the un-augmented image), not {views}")
        if augment_weight and objective != "self_label":
            raise ValueError("augment_weight pulls an augmentation to the pseudo-label y: it needs objective self_label")
        self.views, self.objective, self.lamb, self.gamma = views, objective, lamb, gamma
        self.fairness_weight, self.augment_weight = fairness_weight, augment_weight
        self.max_iterations, self.tolerance, self.backbone_lr_scale = max_iterations, tolerance, backbone_lr_scale
        # a previous stage (e.g. a SimCLR pretext, as the paper's ResNet-18 runs start from SCAN's) hands
        # over its trunk, fine-tuned here at `backbone_lr_scale`
        self.backbone = (copy.deepcopy(pretrained.backbone) if pretrained is not None
                         else build_backbone(backbone, in_channels=in_channels, image_size=image_size))
        self.head = nn.Linear(self.backbone.num_features, k)  # v
        self.augment = Augment(augment, size=image_size, channels=in_channels)

    def _posteriors(self, batch: Batch) -> tuple[Tensor, Tensor | None]:
        """σ (N×K, averaged over the views) and, with augment_weight, the extra view's posterior."""
        n, images = len(batch.indices), batch.images
        sigma_inputs = [self.augment(images) for _ in range(self.views)] or [images]
        extra = [self.augment(images)] if self.augment_weight else []
        logits = self.head(self.backbone(torch.cat(sigma_inputs + extra)))  # (V·N)×K
        per_view = logits.float().softmax(1).view(-1, n, logits.shape[1])  # V×N×K
        sigma = per_view[: len(sigma_inputs)].mean(0)  # σ_i = E_t σ(vᵀ f_w(t(X_i)))
        return sigma, per_view[-1] if extra else None

    def training_step(self, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        sigma, augmented = self._posteriors(batch)
        margin = margin_term(self.head.weight, self.gamma)
        logs = {"marginal_entropy": mean_entropy(sigma.detach()), "margin": margin.detach()}
        if self.objective == "mi_margin":
            loss = entropy_margin_loss(sigma, fairness_weight=self.fairness_weight) + margin
            return loss, logs
        targets, iterations = self_label_targets(sigma, self.lamb, max_iterations=self.max_iterations,
                                                 tolerance=self.tolerance)
        fitted = reverse_cross_entropy(sigma, targets)
        loss = fitted + margin
        if augmented is not None:
            loss = loss + self.augment_weight * reverse_cross_entropy(augmented, targets)
        logs.update(reverse_cross_entropy=fitted.detach(), fixed_point_iterations=float(iterations),
                    target_marginal_entropy=mean_entropy(targets))
        return loss, logs

    def parameter_groups(self) -> list[dict]:
        # no weight decay on v: γ‖v‖² is in the loss
        return [{"params": list(self.backbone.parameters()), "lr_scale": self.backbone_lr_scale},
                {"params": list(self.head.parameters()), "weight_decay": 0.0}]

    def embed(self, images: Tensor) -> Tensor:
        return predict_in_batches(self.backbone, images)

    def cluster_logits(self, images: Tensor) -> Tensor:
        return predict_in_batches(lambda x: self.head(self.backbone(x)), images)
