"""Clustering losses over cluster posteriors (softmax outputs), shared by IIC, SCAN, TwoStageUC and
the self-labelling stage. All take probabilities or logits as N×K tensors and return a scalar."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from labelless.losses.precision import float32_under_autocast

EPS = torch.finfo(torch.float32).eps


def entropy(probabilities: Tensor, dim: int = -1) -> Tensor:
    """H(p) = −Σ p log p along `dim` (0·log 0 taken as 0)."""
    return -(probabilities * probabilities.clamp_min(EPS).log()).sum(dim)


def mean_entropy(probabilities: Tensor) -> Tensor:
    """H(mean_i p_i): the entropy of the marginal cluster distribution, log K when clusters are balanced."""
    return entropy(probabilities.mean(0))


@float32_under_autocast
def iic_loss(p: Tensor, p_other: Tensor, lamb: float = 1.0) -> Tensor:
    """IIC (Ji et al. 2019, Eq. 3): −I(z, z′) between the cluster posteriors of two views.

    Joint P = Σ_n p_n p′_nᵀ, symmetrised and normalised; marginals are taken before clamping and every
    entry below machine epsilon is set to epsilon (as the released code does, VERIFIED-DETAILS.md).
    Loss = −Σ_ij P_ij (ln P_ij − λ ln P_j − λ ln P_i). Identical one-hot balanced views give −ln K.
    Computed in float32 under autocast: a bf16 joint is rounded to 3 significant digits, which moved the
    loss by up to 0.007 (a quarter of a young head's MI) in a CPU check, and loss-chosen heads are
    compared by this value. p, p_other: N×K probabilities.
    """
    joint = p.t() @ p_other  # K×K
    joint = (joint + joint.t()) / 2
    joint = joint / joint.sum()
    rows = joint.sum(1, keepdim=True).expand_as(joint)
    cols = joint.sum(0, keepdim=True).expand_as(joint)
    joint, rows, cols = joint.clamp_min(EPS), rows.clamp_min(EPS), cols.clamp_min(EPS)
    return -(joint * (joint.log() - lamb * rows.log() - lamb * cols.log())).sum()


def scan_loss(anchor_logits: Tensor, neighbour_logits: Tensor, entropy_weight: float = 5.0) -> tuple[Tensor, Tensor, Tensor]:
    """SCAN (Van Gansbeke et al. 2020, Eq. 2): −mean_i log⟨σ_i, σ_j⟩ − w·H(mean σ).

    Each image's posterior should agree with that of a mined neighbour, while the entropy of the mean
    posterior keeps every cluster in use. Returns (total, consistency, marginal entropy).
    anchor_logits, neighbour_logits: N×K.
    """
    anchor = F.softmax(anchor_logits.float(), dim=1)
    neighbour = F.softmax(neighbour_logits.float(), dim=1)
    consistency = -(anchor * neighbour).sum(1).clamp_min(EPS).log().mean()
    marginal = mean_entropy(anchor)
    return consistency - entropy_weight * marginal, consistency, marginal


def confident_self_label_loss(weak_logits: Tensor, strong_logits: Tensor, threshold: float = 0.99,
                              balance: bool = True) -> tuple[Tensor, Tensor]:
    """SCAN's self-labelling step: cross-entropy of the strong view against the weak view's argmax,
    only where the weak view is confident (max probability > threshold); with `balance`, each class is
    weighted by the inverse of its count among the confident samples, so large clusters do not swallow
    small ones. Returns (loss, confident mask). weak_logits are not differentiated."""
    probs = F.softmax(weak_logits.detach().float(), dim=1)
    confidence, targets = probs.max(1)
    mask = confidence > threshold
    # Written without boolean indexing or `if mask.any()`: shapes stay static and nothing waits for the
    # device, so a compiled step is one graph. Σ_confident w_t·CE / Σ_confident w_t is what
    # F.cross_entropy(logits[mask], targets[mask], weight=w) computes; no confident sample gives 0.
    sample_weight = mask.float()
    if balance:  # each class weighted by 1 / its count among the confident samples
        counts = (F.one_hot(targets, weak_logits.shape[1]).float() * sample_weight[:, None]).sum(0)
        sample_weight = sample_weight / counts.clamp_min(1)[targets]
    per_sample = F.cross_entropy(strong_logits.float(), targets, reduction="none")
    return (sample_weight * per_sample).sum() / sample_weight.sum().clamp_min(1e-12), mask


def uniform_entropy(k: int) -> float:
    """log K: the largest possible entropy over K clusters (a reference for logs and tests)."""
    return math.log(k)
