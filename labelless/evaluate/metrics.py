"""Clustering metrics: the field's protocol for scoring predictions against held-back labels.

Pure functions over 1-D integer arrays (numpy or torch, any device); every score is a python float.
Classes are `0..k_true-1`, clusters `0..k_pred-1`; both counts default to `max + 1` of what is given.

- `ACC`: the best one-to-one cluster→class mapping (Hungarian algorithm on the contingency matrix,
  Kuhn 1955 via `scipy.optimize.linear_sum_assignment`), as in DEC (Xie et al. 2016), IIC and SCAN.
  With more clusters than classes only `k_true` clusters are matched and the others count as wrong.
- `ACC_VOTE`: each cluster takes its majority class (many-to-one), the over-clustering protocol of
  IIC (Ji et al. 2019) and of DeepCluster's evaluation.
- `NMI`: `sklearn.metrics.normalized_mutual_info_score` with its default arithmetic-mean
  normalisation (sklearn ≥ 0.22; older papers used the geometric mean, which differs slightly).
- `ARI`: `sklearn.metrics.adjusted_rand_score`.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from torch import Tensor

ArrayLike = np.ndarray | Tensor


def as_numpy(values: ArrayLike) -> np.ndarray:
    """A numpy array of a numpy array or a torch tensor (detached, on the CPU; bfloat16, which numpy
    lacks, becomes float32)."""
    if not isinstance(values, Tensor):
        return np.asarray(values)
    values = values.detach().cpu()
    return (values.float() if values.dtype == torch.bfloat16 else values).numpy()


def _as_labels(values: ArrayLike, name: str) -> np.ndarray:
    array = as_numpy(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name} must be integers, got {array.dtype}")
    if array.min() < 0:
        raise ValueError(f"{name} must be non-negative, got {array.min()}")
    return array.astype(np.int64, copy=False)


def _pair(labels: ArrayLike, predictions: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    true, pred = _as_labels(labels, "labels"), _as_labels(predictions, "predictions")
    if len(true) != len(pred):
        raise ValueError(f"{len(true)} labels for {len(pred)} predictions")
    return true, pred


def _as_probabilities(probabilities: ArrayLike, n: int) -> np.ndarray:
    array = as_numpy(probabilities)
    if array.ndim != 2 or array.shape[0] != n:
        raise ValueError(f"probabilities must be {n}×K, got shape {array.shape}")
    return array


def _count(values: np.ndarray, given: int | None, name: str) -> int:
    needed = int(values.max()) + 1
    if given is None:
        return needed
    if given < needed:
        raise ValueError(f"{name}={given} but the values reach {needed - 1}")
    return given


def confusion_matrix(labels: ArrayLike, predictions: ArrayLike, *, k_pred: int | None = None,
                     k_true: int | None = None) -> np.ndarray:
    """Counts of (class, cluster) pairs: an int64 `k_true × k_pred` matrix, rows true, columns predicted.

    Rectangular when the numbers of clusters and classes differ; empty classes or clusters keep
    their (zero) row or column, unlike `sklearn.metrics.cluster.contingency_matrix`.
    """
    true, pred = _pair(labels, predictions)
    k_true, k_pred = _count(true, k_true, "k_true"), _count(pred, k_pred, "k_pred")
    return np.bincount(true * k_pred + pred, minlength=k_true * k_pred).reshape(k_true, k_pred)


def hungarian_match(labels: ArrayLike, predictions: ArrayLike, *, k_pred: int | None = None,
                    k_true: int | None = None) -> dict[int, int]:
    """The one-to-one cluster→class mapping that maximises the number of agreeing samples.

    `linear_sum_assignment` on the rectangular contingency matrix: with `k_pred > k_true` only
    `k_true` clusters appear in the mapping (the rest stay unmatched); with `k_pred < k_true` every
    cluster is matched and some classes go without a cluster.
    """
    counts = confusion_matrix(labels, predictions, k_pred=k_pred, k_true=k_true)  # k_true × k_pred
    classes, clusters = linear_sum_assignment(counts, maximize=True)
    return {int(c): int(t) for t, c in zip(classes, clusters)}


def majority_vote_match(labels: ArrayLike, predictions: ArrayLike) -> dict[int, int]:
    """Many-to-one mapping: every non-empty cluster → its most frequent class (ties: lowest class)."""
    counts = confusion_matrix(labels, predictions)
    used = np.flatnonzero(counts.sum(axis=0))
    return {int(c): int(counts[:, c].argmax()) for c in used}


def map_clusters(predictions: ArrayLike, mapping: dict[int, int]) -> np.ndarray:
    """Cluster ids → class ids through `mapping`; clusters the mapping leaves out become −1."""
    pred = _as_labels(predictions, "predictions")
    lookup = np.full(int(pred.max()) + 1, -1, dtype=np.int64)
    for cluster, cls in mapping.items():
        if cluster < len(lookup):
            lookup[cluster] = cls
    return lookup[pred]


def _mapped_accuracy(labels: np.ndarray, predictions: np.ndarray, mapping: dict[int, int]) -> float:
    return float(np.mean(map_clusters(predictions, mapping) == labels))


def cluster_accuracy(labels: ArrayLike, predictions: ArrayLike) -> float:
    """ACC = max over one-to-one mappings m of (1/N) Σ_i 1[y_i = m(c_i)] (Hungarian; unmatched clusters wrong)."""
    true, pred = _pair(labels, predictions)
    return _mapped_accuracy(true, pred, hungarian_match(true, pred))


def majority_vote_accuracy(labels: ArrayLike, predictions: ArrayLike) -> float:
    """ACC_VOTE: accuracy when each cluster predicts its majority class (for over-clustering heads)."""
    true, pred = _pair(labels, predictions)
    return _mapped_accuracy(true, pred, majority_vote_match(true, pred))


def per_class_accuracy(labels: ArrayLike, predictions: ArrayLike,
                       mapping: dict[int, int] | None = None) -> dict[int, float]:
    """Recall of every class present in `labels` under `mapping` (default: the Hungarian one)."""
    true, pred = _pair(labels, predictions)
    mapped = map_clusters(pred, hungarian_match(true, pred) if mapping is None else mapping)
    return {int(c): float(np.mean(mapped[true == c] == c)) for c in np.unique(true)}


def top5_accuracy(labels: ArrayLike, probabilities: ArrayLike, top: int = 5) -> float:
    """Top-5 ACC for cluster probabilities (N×K_pred).

    The Hungarian mapping is fitted once, on the argmax clusters of all samples. A sample counts
    as correct when its true class is the mapped class of any of its `top` most probable clusters;
    clusters left unmatched (when K_pred > K_true) contribute no class. With `top ≥ K_pred` every
    matched class is in every sample's set.
    """
    true = _as_labels(labels, "labels")
    probs = _as_probabilities(probabilities, len(true))
    predictions = probs.argmax(axis=1)
    lookup = map_clusters(np.arange(probs.shape[1]), hungarian_match(true, predictions, k_pred=probs.shape[1]))
    best = np.argsort(-probs, axis=1, kind="stable")[:, :top]  # N×top cluster ids, most probable first
    return float(np.mean((lookup[best] == true[:, None]).any(axis=1)))


def confident_accuracy(labels: ArrayLike, probabilities: ArrayLike, threshold: float) -> tuple[float, float]:
    """(CONFIDENT_FRACTION, ACC_CONFIDENT): the samples whose top probability exceeds `threshold` (LSD-C:
    "max probability > 0.9").

    The accuracy on the confident samples uses the Hungarian mapping fitted on *all* samples'
    argmax clusters, so it measures the same clustering as ACC restricted to a subset (refitting
    on the subset could relabel clusters). NaN when no sample reaches the threshold.
    """
    true = _as_labels(labels, "labels")
    probs = _as_probabilities(probabilities, len(true))
    predictions = probs.argmax(axis=1)
    confident = probs.max(axis=1) > threshold
    fraction = float(confident.mean())
    if not confident.any():
        return fraction, math.nan
    mapped = map_clusters(predictions, hungarian_match(true, predictions, k_pred=probs.shape[1]))
    return fraction, float(np.mean(mapped[confident] == true[confident]))


def cluster_metrics(labels: ArrayLike, predictions: ArrayLike, probabilities: ArrayLike | None = None,
                    confident_threshold: float | None = None) -> dict[str, float]:
    """The headline metrics of one clustering, keyed as in RESULTS.md.

    Always `ACC`, `NMI`, `ARI`. `ACC_VOTE` is added when the number of distinct predicted clusters
    differs from the number of distinct classes (over-clustering or collapsed clusters): with equal
    counts the one-to-one ACC is the protocol and a many-to-one vote would only flatter it.
    `CONFIDENT_FRACTION` and `ACC_CONFIDENT` are added when `probabilities` (N×K, argmax = `predictions`) and
    `confident_threshold` are both given (`ACC_CONFIDENT` is left out when no sample is confident).
    """
    true, pred = _pair(labels, predictions)
    metrics = {
        "ACC": cluster_accuracy(true, pred),
        "NMI": float(normalized_mutual_info_score(true, pred)),
        "ARI": float(adjusted_rand_score(true, pred)),
    }
    if len(np.unique(pred)) != len(np.unique(true)):
        metrics["ACC_VOTE"] = majority_vote_accuracy(true, pred)
    if probabilities is not None and confident_threshold is not None:
        fraction, accuracy = confident_accuracy(true, probabilities, confident_threshold)
        metrics["CONFIDENT_FRACTION"] = fraction
        if not math.isnan(accuracy):
            metrics["ACC_CONFIDENT"] = accuracy
    return metrics
