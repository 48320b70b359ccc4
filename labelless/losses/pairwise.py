"""Pairwise clustering losses of LSD-C (Rebuffi, Ehrhardt, Han, Vedaldi, Zisserman, "LSD-C: Linearly
Separable Deep Clusters", 2020): every pair (i, j) of a batch gets a pseudo-label ℓ_ij ∈ {0, 1} ("same
cluster") from a feature-space similarity, and the classifier is trained so that the probability that
two samples fall in the same cluster, σ_iᵀσ_j, matches it. Hyper-parameters: supplement, Table 1.

The three labellings follow the authors' code (VERIFIED-DETAILS.md): they take N×D features — the
current network's pooled features of the clean view, detached — and return an N×N float matrix of
0/1 labels, self-pairs included.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from labelless.losses.precision import float32_under_autocast

BCE_EPS = 1e-7  # inside the logs of the pair BCE, as the authors' code (float16's smallest step)
SNE_SELF_LOGIT = -1000.0  # subtracted from d_ii so that a sample is not its own SNE neighbour


def squared_distances(features: Tensor) -> Tensor:
    """‖f_i − f_j‖² for all pairs, N×N float32, with an exactly zero diagonal. Expanded as
    ‖f_i‖² + ‖f_j‖² − 2f_iᵀf_j in float64: one matrix product (6× faster on a CPU than summing the
    N²·D differences), and float64 keeps the cancellation error far below float32's resolution, so the
    order of near-equal distances — which the kNN labels depend on — is the exact one."""
    f = features.double()
    norms = f.square().sum(1)
    distances = (norms[:, None] + norms[None, :] - 2 * f @ f.t()).clamp_min(0)
    return distances.fill_diagonal_(0).float()


@float32_under_autocast
def cosine_pair_labels(features: Tensor, threshold: float = 0.9) -> Tensor:
    """Cosine labelling: ℓ_ij = 1 iff cos(f_i, f_j) ≥ τ (LSD-C; CIFAR-10 τ = 0.9, CIFAR-20 0.95).
    features: N×D → N×N. Computed in float32 under autocast: bf16 cosines are rounded by up to 0.002
    near τ = 0.9, which flipped 6 % of the positive pairs of features clustered near the threshold."""
    f = F.normalize(features, dim=1)
    return (f @ f.t() >= threshold).float()


def sne_pair_labels(features: Tensor, threshold: float = 0.01, temperature: float = 1.0) -> Tensor:
    """SNE labelling (LSD-C, after van der Maaten & Hinton's SNE): with d_ij = −‖f_i − f_j‖²/T²
    (d_ii pushed to −1000), p = ½·softmax_row(d) + ½·softmax_column(d) + I and ℓ_ij = 1 iff p_ij > τ
    (CIFAR-10 τ = 0.01, T = 1). features: N×D → N×N."""
    n = features.shape[0]
    eye = torch.eye(n, device=features.device)
    logits = -squared_distances(features) / temperature**2 + SNE_SELF_LOGIT * eye
    p = 0.5 * logits.softmax(1) + 0.5 * logits.softmax(0) + eye
    return (p > threshold).float()


def knn_pair_labels(features: Tensor, k: int = 20) -> Tensor:
    """kNN labelling (LSD-C's default; CIFAR-10 k = 20, CIFAR-20 and MNIST k = 10): ℓ_ij = 1 iff
    ‖f_i − f_j‖² is strictly below the k-th smallest squared distance of row i or of column j. Row i's
    own test admits k − 1 samples — the sample itself plus its k − 2 nearest others (none with k = 1) —
    or fewer when the (k − 1)-th smallest distance ties the k-th (duplicates of the sample, at distance 0,
    can leave out the sample itself); the OR, which makes the labels symmetric, then adds every j whose
    own test admits i.
    features: N×D → N×N."""
    if not 1 <= k <= features.shape[0]:
        raise ValueError(f"kNN pair labels need 1 ≤ k ≤ batch size, got k = {k} for {features.shape[0]} samples: "
                         f"lower knn_k or raise the batch size")
    distances = squared_distances(features)
    row_kth = distances.kthvalue(k, dim=1, keepdim=True).values  # row_kth: N×1
    column_kth = distances.kthvalue(k, dim=0, keepdim=True).values  # column_kth: 1×N
    return ((distances < row_kth) | (distances < column_kth)).float()


@float32_under_autocast
def mix_pair_targets(pair_labels: Tensor, sources: Tensor, weights: Tensor) -> Tensor:
    """Targets for the pairs (mixed image i, clean image j) when image i is a mix of Q source images
    (RICAP: Q = 4 tiles; mixup: Q = 2): t_ij = Σ_q weights[i, q]·ℓ[sources[q, i], j], the pair labels
    mixed by patch area (or mixing weight) as RICAP mixes class labels.
    pair_labels: N×N, sources: Q×N (row indices), weights: N×Q → N×N. float32 under autocast, whose
    bf16 einsum moved the targets by up to 0.004."""
    return torch.einsum("nq,qnm->nm", weights, pair_labels[sources])


@float32_under_autocast
def pair_bce_loss(probabilities: Tensor, other_probabilities: Tensor, targets: Tensor) -> Tensor:
    """LSD-C clustering loss: soft-target binary cross-entropy between the pair targets t_ij and
    the probability that i and j share a cluster, s_ij = σ_iᵀσ′_j, averaged over all N² pairs
    (self-pairs included): −mean_ij [t_ij log(s_ij + ε) + (1 − t_ij) log(1 − s_ij + ε)], ε = 1e-7.
    probabilities: N×K (rows of t), other_probabilities: N×K (columns of t), targets: N×N.
    Computed in float32 under autocast: bf16 rounds every s_ij above 0.998 to 1, so a confidently
    merged pair with t_ij = 0 would cost −log ε = 16.1 instead of −log(1 − s_ij)."""
    similarity = probabilities @ other_probabilities.t()  # similarity: N×N
    return -(targets * (similarity + BCE_EPS).log() + (1 - targets) * (1 - similarity + BCE_EPS).log()).mean()


def sigmoid_rampup(epoch: float, length: float) -> float:
    """The consistency weight's ramp-up exp(−5(1 − min(e, T)/T)²) (Laine & Aila 2017, "Temporal
    ensembling", as LSD-C uses it with the 0-based epoch e): e^−5 at e = 0, 1 from e = T on, 1 when
    T = 0."""
    if length <= 0:
        return 1.0
    phase = 1.0 - min(max(epoch, 0.0), length) / length
    return math.exp(-5.0 * phase * phase)
