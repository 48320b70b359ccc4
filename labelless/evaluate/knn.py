"""Weighted k-nearest-neighbour evaluation of embeddings, and neighbour mining.

Everything runs on the device the tensors live on and is chunked over queries, so memory is
O(chunk_size · N) for the similarity block instead of O(N²).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from labelless.chunks import fill_by_chunks

DEFAULT_CHUNK = 1024  # 1024 queries × 50,000 bank rows × 4 B = 200 MB of similarities


def _as_tensor(values: Tensor | np.ndarray) -> Tensor:
    return values if isinstance(values, Tensor) else torch.as_tensor(values)


def _normalised(features: Tensor | np.ndarray) -> Tensor:
    features = _as_tensor(features)
    if features.ndim != 2:
        raise ValueError(f"features must be N×D, got shape {tuple(features.shape)}")
    return F.normalize(features.float(), dim=1)


@torch.no_grad()
def weighted_knn_predict(train_features: Tensor | np.ndarray, train_labels: Tensor | np.ndarray,
                         query_features: Tensor | np.ndarray, k: int = 200, temperature: float = 0.1,
                         num_classes: int | None = None, chunk_size: int = DEFAULT_CHUNK) -> Tensor:
    """Class predictions (int64, on the features' device) by temperature-weighted kNN voting.

    Wu et al. 2018 ("Unsupervised feature learning via non-parametric instance discrimination",
    §3.5), the protocol Super-AND and most embedding methods report: features are L2-normalised,
    the k most cosine-similar bank samples N_k(q) vote, and class c scores
    Σ_{i ∈ N_k(q), y_i = c} exp(s_i / τ); the prediction is the arg-max class.
    """
    bank = _normalised(train_features)
    queries = _normalised(query_features).to(bank.device)
    labels = _as_tensor(train_labels).to(bank.device).long()
    if len(labels) != len(bank):
        raise ValueError(f"{len(labels)} train labels for {len(bank)} train features")
    num_classes = num_classes if num_classes is not None else int(labels.max()) + 1
    k = min(k, len(bank))

    def predict(start: int, stop: int) -> Tensor:
        similarity = queries[start:stop] @ bank.T  # chunk×N
        top_similarity, top_index = similarity.topk(k, dim=1)  # chunk×k
        weights = (top_similarity / temperature).exp()
        scores = torch.zeros(len(top_index), num_classes, device=bank.device)
        scores.scatter_add_(1, labels[top_index], weights)  # chunk×C
        return scores.argmax(dim=1)

    return fill_by_chunks(torch.empty(len(queries), dtype=torch.long, device=bank.device), chunk_size, predict)


def knn_accuracy(train_features: Tensor | np.ndarray, train_labels: Tensor | np.ndarray,
                 test_features: Tensor | np.ndarray, test_labels: Tensor | np.ndarray, k: int = 200,
                 temperature: float = 0.1, chunk_size: int = DEFAULT_CHUNK) -> float:
    """KNN metric: fraction of test samples whose weighted-kNN class (see `weighted_knn_predict`) is right."""
    predictions = weighted_knn_predict(train_features, train_labels, test_features, k, temperature,
                                       chunk_size=chunk_size)
    test_labels = _as_tensor(test_labels).to(predictions.device)
    if len(test_labels) != len(predictions):
        raise ValueError(f"{len(test_labels)} test labels for {len(predictions)} test features")
    return float((predictions == test_labels).float().mean())


@torch.no_grad()
def knn_indices(features: Tensor | np.ndarray, k: int, chunk_size: int = DEFAULT_CHUNK,
                exclude_self: bool = True) -> Tensor:
    """N×k int64 indices of every sample's k most cosine-similar samples, most similar first.

    The neighbour mining of SCAN (Van Gansbeke et al. 2020, §2.1) and LSD-C. With `exclude_self`
    a sample never lists itself (its own row is masked, so exact duplicates still count as neighbours).
    """
    bank = _normalised(features)
    limit = len(bank) - 1 if exclude_self else len(bank)
    if not 0 < k <= limit:
        raise ValueError(f"k={k} neighbours asked of {len(bank)} samples (at most {limit})")

    def nearest(start: int, stop: int) -> Tensor:
        similarity = bank[start:stop] @ bank.T  # chunk×N
        if exclude_self:
            rows = torch.arange(len(similarity), device=bank.device)
            similarity[rows, rows + start] = -torch.inf
        return similarity.topk(k, dim=1).indices

    return fill_by_chunks(torch.empty(len(bank), k, dtype=torch.long, device=bank.device), chunk_size, nearest)


def principal_components(features: Tensor, dims: int) -> Tensor:
    """The first `dims` principal-component scores of centred `features` (randomised SVD, torch's
    `pca_lowrank`): cosine kNN on 50 components of MNIST pixels agrees with the labels a little more often than on
    all 784 (0.945 against 0.939) and mines 3.5× faster (benchmarks/results/neighbours-mnist.json).
    With `dims` ≤ 0 or ≥ the feature dimension the features come back as they are; with as many dims as
    samples or more (a small folder), the centred features (all their components: a rotation away)."""
    if dims <= 0 or dims >= features.shape[1]:
        return features
    centred = features - features.mean(0)
    if dims >= len(features):
        return centred
    _, _, v = torch.pca_lowrank(centred, q=dims, center=False, niter=3)
    return centred @ v


@torch.no_grad()
def kth_neighbour_distance(features: Tensor | np.ndarray, k: int = 10, *, candidates: int = 30, pca: int = 50,
                           chunk_size: int = DEFAULT_CHUNK) -> Tensor:
    """Every sample's Euclidean distance to its k-th nearest other sample (N, float32): IMSAT's
    adaptive VAT radius (Hu et al. 2017 use 0.25 × the 10th-neighbour distance in pixel space).

    Exact search in D = 784 dimensions costs N²·D; instead the `candidates` nearest samples are found on
    the first `pca` principal components (a projection never lengthens a distance, so true neighbours
    rank early there), then re-ranked by their exact distance. With pca ≤ 0 or ≥ D the search is exact.
    """
    points = _as_tensor(features).float().flatten(1)
    if not 0 < k < len(points):
        raise ValueError(f"the {k}-th neighbour asked of {len(points)} samples")
    candidates = min(max(candidates, k), len(points) - 1)
    search = principal_components(points, pca)  # distances ignore the centring
    squared = search.pow(2).sum(1)

    def kth(start: int, stop: int) -> Tensor:
        # ‖a − b‖² = ‖a‖² − 2a·b + ‖b‖², one matrix product per chunk
        gap = squared[start:stop, None] - 2 * search[start:stop] @ search.T + squared[None]
        rows = torch.arange(stop - start, device=points.device)
        gap[rows, rows + start] = torch.inf  # never one's own neighbour
        nearest = gap.topk(candidates, dim=1, largest=False).indices  # chunk×candidates
        exact = (points[nearest] - points[start:stop, None]).norm(dim=2)
        return exact.sort(dim=1).values[:, k - 1]

    return fill_by_chunks(torch.empty(len(points), device=points.device), chunk_size, kth)
