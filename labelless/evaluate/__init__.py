"""Scoring: the same pure functions score every method (see DESIGN.md, "evaluate").

`cluster_metrics(labels, predictions)` → {ACC, NMI, ARI, …}; `knn_accuracy` and `linear_probe` score
frozen embeddings (the KNN and LINEAR metrics); `knn_indices` mines neighbours for SCAN-style methods.
"""
from labelless.evaluate.knn import knn_accuracy, knn_indices, weighted_knn_predict
from labelless.evaluate.metrics import (
    cluster_accuracy,
    cluster_metrics,
    confident_accuracy,
    confusion_matrix,
    hungarian_match,
    majority_vote_accuracy,
    majority_vote_match,
    map_clusters,
    per_class_accuracy,
    top5_accuracy,
)
from labelless.evaluate.probe import linear_probe, logistic_regression

__all__ = [
    "cluster_accuracy",
    "cluster_metrics",
    "confident_accuracy",
    "confusion_matrix",
    "hungarian_match",
    "knn_accuracy",
    "knn_indices",
    "linear_probe",
    "logistic_regression",
    "majority_vote_accuracy",
    "majority_vote_match",
    "map_clusters",
    "per_class_accuracy",
    "top5_accuracy",
    "weighted_knn_predict",
]
