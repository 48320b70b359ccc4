"""Discriminative entropy clustering with margin maximisation (Zhang & Boykov, "Revisiting
discriminative entropy clustering and its relation to K-means"; supplementary §A, §C, §E.3).

Posterior model σ_i = softmax(vᵀ f_w(X_i)): a backbone f_w and one linear classifier v.

- `objective: self_label` (Algorithm 1, the default): per batch, auxiliary targets y start at the
  network output and are iterated with the closed-form fixed point
      S_i^k = y_i^k / Σ_j y_j^k ;  y_i^k = (σ_i^k + λN u^k S_i^k) / (1 + λN Σ_c u^c S_i^c)
  (u uniform, λ = 100, N the batch) — "to convergence": its `max_iterations` map evaluations run in
  SQUAREM cycles (`squarem: true`, ours), which bring y far closer to the minimiser than as many
  plain steps (`squarem: false`, the paper's loop as written; see `self_label_targets`); then [w, v]
  take a step on H_B(σ, y) + γ‖v‖², the reverse cross-entropy −mean_i Σ_k σ_i^k ln y_i^k plus the
  margin term.
- `objective: mi_margin`: loss (a) by plain gradient descent, mean H(σ) + w·KL(σ̄‖u) + γ‖v‖²
  (fairness weight w = 1.3 in the paper's deep experiments).

Self-augmentation: σ_i = E_t[σ(vᵀ f_w(t(X_i)))], the mean posterior over `views` augmentations (2 in
the paper; 0 uses the un-augmented image). The ResNet-18 variant (§E.3) takes σ from one image and
adds `augment_weight`·H(σ(t(X)), y), pulling an augmentation's prediction to the pseudo-label.

Virtual adversarial self-augmentation (`vat_weight` > 0; IMSAT, Hu et al. 2017, the paper's "MI-D"
comparison): adds `vat_weight`·mean_i KL(p(x_i) ‖ p(x_i + ε_i r_i)) on the clean images, r_i the
adversarial unit direction (one power iteration, finite difference `vat_xi`), ε_i = `vat_radius` × the
distance from x_i to its `vat_neighbour`-th nearest image in pixel space, measured once before the
first epoch. IMSAT itself is `objective: mi_margin`, `views: 0`, fairness weight μ = 4, γ = 0 and
VAT (see configs/mnist/imsat.yaml).

The margin term is explicit: the classifier's parameter group has no weight decay, so the paper's
Adam weight decay 0.01 on every parameter, which adds 0.01·v to v's gradient, is γ = 0.005 here.
"""
from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from labelless.data.augment import Augment, deskew
from labelless.evaluate.knn import kth_neighbour_distance
from labelless.losses.clustering import mean_entropy
from labelless.losses.entropy_margin import (entropy_margin_loss, margin_term, reverse_cross_entropy,
                                             self_label_targets)
from labelless.losses.vat import frozen_batchnorm_statistics, vat_loss
from labelless.methods.base import Batch, EpochContext, Method, predict_in_batches
from labelless.nn.backbones import build_backbone

OBJECTIVES = ("self_label", "mi_margin")


class EntropyMargin(Method):
    name = "entropy_margin"

    def __init__(self, *, k: int, in_channels: int, image_size: int, pretrained: Method | None = None,
                 backbone: str = "vgg4", augment: str = "simclr", views: int = 2, objective: str = "self_label",
                 lamb: float = 100.0, gamma: float = 0.005, fairness_weight: float = 1.3,
                 augment_weight: float = 0.0, max_iterations: int = 300, tolerance: float = 1e-4,
                 squarem: bool = True,
                 backbone_lr_scale: float = 1.0, backbone_options: dict | None = None, vat_weight: float = 0.0,
                 vat_radius: float = 0.25, vat_neighbour: int = 10, vat_xi: float = 10.0, vat_iterations: int = 1,
                 head_init_std: float | None = None, deskew_input: bool = False) -> None:
        super().__init__()
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, not {objective!r}")
        if views < 0:
            raise ValueError(f"views must be ≥ 0 (0: the un-augmented image), not {views}")
        if augment_weight and objective != "self_label":
            raise ValueError("augment_weight pulls an augmentation to the pseudo-label y: it needs objective self_label")
        self.views, self.objective, self.lamb, self.gamma = views, objective, lamb, gamma
        self.fairness_weight, self.augment_weight = fairness_weight, augment_weight
        self.max_iterations, self.tolerance, self.squarem = max_iterations, tolerance, squarem
        self.backbone_lr_scale = backbone_lr_scale
        if vat_weight < 0 or vat_radius <= 0 or vat_neighbour < 1 or vat_iterations < 0:
            raise ValueError("VAT needs vat_weight ≥ 0, vat_radius > 0, vat_neighbour ≥ 1, vat_iterations ≥ 0")
        self.vat_weight, self.vat_radius, self.vat_neighbour = vat_weight, vat_radius, vat_neighbour
        self.vat_xi, self.vat_iterations = vat_xi, vat_iterations
        self.deskew_input = deskew_input
        # per store row: distance to the vat_neighbour-th nearest image, set before the first epoch
        self.neighbour_distance: Tensor | None = None
        # a previous stage (e.g. a SimCLR pretext, as the paper's ResNet-18 runs start from SCAN's) hands
        # over its trunk, fine-tuned here at `backbone_lr_scale`
        self.backbone = (copy.deepcopy(pretrained.backbone) if pretrained is not None
                         else build_backbone(backbone, in_channels=in_channels, image_size=image_size,
                                             **(backbone_options or {})))
        self.head = nn.Linear(self.backbone.num_features, k)  # v
        if head_init_std is not None:  # IMSAT starts from near-uniform posteriors (weights ~ N(0, 1e-4²))
            nn.init.normal_(self.head.weight, std=head_init_std)
            nn.init.zeros_(self.head.bias)
        self.augment = Augment(augment, size=image_size, channels=in_channels)

    def _inputs(self, images: Tensor) -> Tensor:
        """What the network sees: the images, or with `deskew_input` each one deskewed by its ink
        moments (a handwriting prior, as SCAN's `pixel_space: deskewed`; at evaluation too)."""
        return deskew(images) if self.deskew_input else images

    def _logits(self, images: Tensor) -> Tensor:
        return self.head(self.backbone(images))

    def _posteriors(self, batch: Batch) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """σ (N×K, averaged over the views), with augment_weight the extra view's posterior, and with
        views = 0 the clean images' logits (VAT's reference)."""
        n, images = len(batch.indices), batch.images
        sigma_inputs = [self.augment(images) for _ in range(self.views)] or [images]
        extra = [self.augment(images)] if self.augment_weight else []
        logits = self._logits(torch.cat(sigma_inputs + extra))  # (V·N)×K
        per_view = logits.float().softmax(1).view(-1, n, logits.shape[1])  # V×N×K
        sigma = per_view[: len(sigma_inputs)].mean(0)  # σ_i = E_t σ(vᵀ f_w(t(X_i)))
        return sigma, per_view[-1] if extra else None, logits[:n] if not self.views else None

    def on_epoch_start(self, epoch: int, ctx: EpochContext) -> None:
        if self.vat_weight and self.neighbour_distance is None:
            pixels = torch.cat([self._inputs(images).flatten(1).float() for _, images in ctx.batches(4096)])
            self.neighbour_distance = kth_neighbour_distance(pixels, self.vat_neighbour).to(ctx.device)
            ctx.logs["vat_radius_mean"] = float(self.vat_radius * self.neighbour_distance.mean())

    def _vat(self, batch: Batch, reference: Tensor | None) -> Tensor:
        if self.neighbour_distance is None:
            raise RuntimeError("VAT radii are measured in on_epoch_start; call it before training_step")
        radius = self.vat_radius * self.neighbour_distance[batch.indices].to(batch.images)
        with frozen_batchnorm_statistics(self):
            return vat_loss(self._logits, batch.images, radius, reference, xi=self.vat_xi,
                            iterations=self.vat_iterations)

    def training_step(self, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        if self.deskew_input:
            batch = Batch(self._inputs(batch.images), batch.indices, batch.labels)
        sigma, augmented, clean_logits = self._posteriors(batch)
        margin = margin_term(self.head.weight, self.gamma)
        logs = {"marginal_entropy": mean_entropy(sigma.detach()), "margin": margin.detach()}
        vat = self._vat(batch, clean_logits) if self.vat_weight else None
        if vat is not None:
            logs["vat"] = vat.detach()
        if self.objective == "mi_margin":
            loss = entropy_margin_loss(sigma, fairness_weight=self.fairness_weight) + margin
            return (loss if vat is None else loss + self.vat_weight * vat), logs
        targets, iterations = self_label_targets(sigma, self.lamb, max_iterations=self.max_iterations,
                                                 tolerance=self.tolerance, accelerate=self.squarem)
        fitted = reverse_cross_entropy(sigma, targets)
        loss = fitted + margin
        if augmented is not None:
            loss = loss + self.augment_weight * reverse_cross_entropy(augmented, targets)
        if vat is not None:
            loss = loss + self.vat_weight * vat
        logs.update(reverse_cross_entropy=fitted.detach(), fixed_point_iterations=float(iterations),
                    target_marginal_entropy=mean_entropy(targets))
        return loss, logs

    def parameter_groups(self) -> list[dict]:
        # no weight decay on v: γ‖v‖² is in the loss; the head's bias (absent from the paper's vᵀf) gets none
        return [{"params": list(self.backbone.parameters()), "lr_scale": self.backbone_lr_scale},
                {"params": list(self.head.parameters()), "weight_decay": 0.0}]

    def state_for_checkpoint(self) -> dict:
        return {"neighbour_distance": None if self.neighbour_distance is None else self.neighbour_distance.cpu()}

    def load_state_from_checkpoint(self, state: dict) -> None:
        found = state.get("neighbour_distance")
        self.neighbour_distance = None if found is None else found.to(self.head.weight.device)

    def labelled_logits(self, images: Tensor) -> list[Tensor]:
        return [self._logits(self._inputs(images))]

    def embed(self, images: Tensor) -> Tensor:
        return predict_in_batches(lambda x: self.backbone(self._inputs(x)), images)

    def cluster_logits(self, images: Tensor) -> Tensor:
        return predict_in_batches(lambda x: self._logits(self._inputs(x)), images)
