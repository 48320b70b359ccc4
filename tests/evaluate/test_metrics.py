"""Known answers for the clustering metrics (Hungarian ACC, vote ACC, NMI, ARI, top-5, confident ACC)."""
import itertools
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from labelless.evaluate import (
    cluster_accuracy,
    cluster_metrics,
    confident_accuracy,
    confusion_matrix,
    hungarian_match,
    majority_vote_accuracy,
    map_clusters,
    per_class_accuracy,
    top5_accuracy,
)


def test_permuted_labels_score_perfectly() -> None:
    labels = np.repeat(np.arange(5), 4)
    permutation = np.array([3, 0, 4, 1, 2])
    predictions = torch.from_numpy(permutation[labels])  # torch input is accepted too
    metrics = cluster_metrics(labels, predictions)
    assert metrics == {"ACC": 1.0, "NMI": 1.0, "ARI": 1.0}
    assert hungarian_match(labels, predictions) == {int(permutation[c]): c for c in range(5)}


def test_random_predictions_match_brute_force_and_sklearn() -> None:
    rng = np.random.default_rng(0)
    labels, predictions = rng.integers(0, 4, 200), rng.integers(0, 4, 200)
    best = max(np.mean(np.array(p)[predictions] == labels) for p in itertools.permutations(range(4)))
    metrics = cluster_metrics(labels, predictions)
    assert metrics["ACC"] == pytest.approx(best)
    assert metrics["NMI"] == pytest.approx(normalized_mutual_info_score(labels, predictions))
    assert metrics["ARI"] == pytest.approx(adjusted_rand_score(labels, predictions))


def test_hand_worked_three_by_three() -> None:
    # rows: true class, columns: cluster   cluster 0  1  2
    counts = np.array([[5, 1, 0],          # class 0
                       [0, 2, 4],          # class 1
                       [3, 3, 0]])         # class 2
    labels = np.repeat(np.repeat(np.arange(3), 3), counts.ravel())
    predictions = np.repeat(np.tile(np.arange(3), 3), counts.ravel())
    assert (confusion_matrix(labels, predictions) == counts).all()
    # Best one-to-one (of the 6): cluster 0→class 0 (5), 1→2 (3), 2→1 (4) = 12 of 18.
    assert hungarian_match(labels, predictions) == {0: 0, 1: 2, 2: 1}
    assert cluster_accuracy(labels, predictions) == pytest.approx(12 / 18)
    assert per_class_accuracy(labels, predictions) == pytest.approx({0: 5 / 6, 1: 4 / 6, 2: 3 / 6})


def test_over_clustering_vote_versus_hungarian() -> None:
    labels = np.repeat(np.arange(10), 20)
    predictions = 2 * labels + np.tile([0, 1], 100)  # 20 clusters, each pure, two per class
    metrics = cluster_metrics(labels, predictions)
    assert majority_vote_accuracy(labels, predictions) == metrics["ACC_VOTE"] == 1.0
    assert metrics["ACC"] == pytest.approx(0.5)  # 10 clusters matched, the other 10 count as wrong
    mapping = hungarian_match(labels, predictions)
    assert len(mapping) == 10 and (map_clusters(predictions, mapping) == -1).sum() == 100


def test_fewer_clusters_than_classes() -> None:
    labels = np.array([0, 0, 1, 1, 2, 2])
    predictions = np.array([0, 0, 1, 1, 1, 1])
    assert cluster_accuracy(labels, predictions) == pytest.approx(4 / 6)
    assert cluster_metrics(labels, predictions)["ACC_VOTE"] == pytest.approx(4 / 6)


def test_top5_and_confident_accuracy_on_hand_made_probabilities() -> None:
    labels = np.array([0, 1, 2, 2])
    probabilities = np.array([[0.90, 0.05, 0.05],
                              [0.10, 0.80, 0.10],
                              [0.05, 0.15, 0.80],
                              [0.40, 0.35, 0.25]])  # argmax cluster 0, but class 2: wrong
    assert cluster_accuracy(labels, probabilities.argmax(1)) == pytest.approx(3 / 4)
    assert top5_accuracy(labels, probabilities, top=1) == pytest.approx(3 / 4)
    assert top5_accuracy(labels, probabilities, top=2) == pytest.approx(3 / 4)  # 4th: clusters 0, 1
    assert top5_accuracy(labels, probabilities, top=3) == 1.0
    assert top5_accuracy(torch.tensor(labels), torch.tensor(probabilities).bfloat16(), top=1) == pytest.approx(3 / 4)
    fraction, accuracy = confident_accuracy(labels, probabilities, threshold=0.75)
    assert (fraction, accuracy) == (pytest.approx(3 / 4), 1.0)
    metrics = cluster_metrics(labels, probabilities.argmax(1), probabilities, confident_threshold=0.75)
    assert metrics["CONFIDENT_FRACTION"] == pytest.approx(3 / 4) and metrics["ACC_CONFIDENT"] == 1.0
    # "max probability > 0.9" (LSD-C): a probability equal to the threshold is not confident
    assert confident_accuracy(labels, probabilities, threshold=0.8) == (pytest.approx(1 / 4), 1.0)
    fraction, accuracy = confident_accuracy(labels, probabilities, threshold=0.95)
    assert fraction == 0.0 and math.isnan(accuracy)
    assert "ACC_CONFIDENT" not in cluster_metrics(labels, probabilities.argmax(1), probabilities, 0.95)


def test_confident_accuracy_keeps_the_mapping_of_all_samples() -> None:
    # All samples: cluster 0 ↔ class 0 (2 votes) beats cluster 0 ↔ class 1 (1 vote). The confident
    # subset alone (the single class-1 sample) would remap cluster 0 to class 1 and score 1.0.
    labels = np.array([0, 0, 1, 1])
    probabilities = np.array([[0.6, 0.4], [0.6, 0.4], [0.99, 0.01], [0.4, 0.6]])
    assert confident_accuracy(labels, probabilities, threshold=0.9) == (0.25, 0.0)


def test_bad_inputs_are_rejected() -> None:
    with pytest.raises(ValueError, match="3 labels for 2 predictions"):
        cluster_metrics(np.array([0, 1, 2]), np.array([0, 1]))
    with pytest.raises(ValueError, match="integers"):
        cluster_accuracy(np.array([0.0, 1.0]), np.array([0, 1]))
    with pytest.raises(ValueError, match="probabilities"):
        top5_accuracy(np.array([0, 1]), np.ones((3, 2)))
