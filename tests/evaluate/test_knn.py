"""Weighted kNN (Wu et al. 2018) and neighbour mining, against known answers and brute force."""
import numpy as np
import torch
import torch.nn.functional as F

from labelless.evaluate import knn_accuracy, weighted_knn_predict
from labelless.evaluate.knn import knn_indices


def _blobs(n_per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    centres = 5 * torch.eye(4, 16)  # orthogonal directions: far apart in cosine similarity
    labels = torch.arange(4).repeat_interleave(n_per_class)
    return centres[labels] + 0.3 * torch.randn(len(labels), 16, generator=generator), labels


def test_separated_blobs_are_classified_perfectly() -> None:
    (train, train_labels), (test, test_labels) = _blobs(50, 0), _blobs(10, 1)
    assert knn_accuracy(train, train_labels, test, test_labels, k=20) == 1.0
    assert knn_accuracy(train.numpy(), train_labels.numpy(), test.numpy(), test_labels.numpy(), k=500) == 1.0


def test_chunking_does_not_change_predictions() -> None:
    generator = torch.Generator().manual_seed(0)
    train, test = torch.randn(300, 8, generator=generator), torch.randn(70, 8, generator=generator)
    labels = torch.randint(0, 5, (300,), generator=generator)
    whole = weighted_knn_predict(train, labels, test, k=15, chunk_size=len(test))
    assert torch.equal(weighted_knn_predict(train, labels, test, k=15, chunk_size=16), whole)


def test_weights_follow_exp_similarity_over_temperature() -> None:
    # Query along x: two class-1 neighbours at similarity 0.6 against one class-0 neighbour at 1.0.
    train = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.6, -0.8]])
    labels = torch.tensor([0, 1, 1])
    query = torch.tensor([[1.0, 0.0]])
    # τ = 0.1: e^10 > 2·e^6, class 0 wins; τ = 1: e^1 = 2.72 < 2·e^0.6 = 3.64, class 1 wins.
    assert weighted_knn_predict(train, labels, query, k=3, temperature=0.1).item() == 0
    assert weighted_knn_predict(train, labels, query, k=3, temperature=1.0).item() == 1


def test_knn_indices_match_brute_force() -> None:
    features = torch.randn(90, 6, generator=torch.Generator().manual_seed(0))
    normalised = F.normalize(features, dim=1)
    similarity = normalised @ normalised.T
    similarity.fill_diagonal_(-np.inf)
    expected = similarity.argsort(dim=1, descending=True)[:, :7]
    assert torch.equal(knn_indices(features, 7, chunk_size=32), expected)
    with_self = knn_indices(features, 7, chunk_size=32, exclude_self=False)
    assert torch.equal(with_self[:, 0], torch.arange(90)) and with_self.dtype == torch.int64


def _brute_kth(points: torch.Tensor, k: int) -> torch.Tensor:
    distances = torch.cdist(points.double(), points.double())
    distances.fill_diagonal_(float("inf"))
    return distances.sort(1).values[:, k - 1].float()


def test_kth_neighbour_distance_matches_brute_force() -> None:
    from labelless.evaluate.knn import kth_neighbour_distance

    generator = torch.Generator().manual_seed(0)
    points = torch.randn(300, 12, generator=generator)
    exact = _brute_kth(points, 10)
    assert torch.allclose(kth_neighbour_distance(points, 10, pca=0, chunk_size=64), exact, atol=1e-4)
    # data on a 4-d subspace of 40-d: 4 principal components lose nothing, so the candidates are right
    flat = torch.randn(300, 4, generator=generator) @ torch.randn(4, 40, generator=generator)
    assert torch.allclose(kth_neighbour_distance(flat, 3, pca=4, candidates=10), _brute_kth(flat, 3), atol=1e-3)
    # an exact duplicate is a neighbour at distance 0, never the sample itself
    doubled = torch.cat([points[:5], points[:5]])
    assert torch.equal(kth_neighbour_distance(doubled, 1, pca=0), torch.zeros(10))
