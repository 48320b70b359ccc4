"""LSD-C's pair pseudo-labels, pair BCE and ramp-up on hand-made features with a known pair structure."""
from __future__ import annotations

import math

import pytest
import torch

from labelless.losses.pairwise import (cosine_pair_labels, knn_pair_labels, mix_pair_targets, pair_bce_loss,
                                       sigmoid_rampup, sne_pair_labels, squared_distances)

CLUSTER = 6  # samples per cluster


def two_tight_clusters() -> tuple[torch.Tensor, torch.Tensor]:
    """12 samples in 8-d: two tight clusters around orthogonal centres, interleaved in the batch, and
    the block-diagonal 'same cluster' matrix they should produce."""
    g = torch.Generator().manual_seed(0)
    centres = torch.eye(8)[:2] * 10  # centres: 2×8
    cluster = torch.arange(2 * CLUSTER) % 2
    features = centres[cluster] + 0.05 * torch.randn(2 * CLUSTER, 8, generator=g)
    return features, (cluster[:, None] == cluster[None, :]).float()


@pytest.mark.parametrize("labelling", [
    lambda f: cosine_pair_labels(f, threshold=0.9),
    lambda f: sne_pair_labels(f, threshold=0.01, temperature=1.0),
    lambda f: knn_pair_labels(f, k=CLUSTER + 1),
], ids=["cosine", "sne", "knn"])
def test_two_tight_clusters_give_block_diagonal_labels(labelling):
    features, expected = two_tight_clusters()
    labels = labelling(features)
    assert labels.shape == expected.shape and labels.dtype == torch.float32
    assert torch.equal(labels, expected)


def test_knn_links_self_plus_k_minus_2_nearest_or_symmetrised():
    points = torch.tensor([[0.0], [1.0], [3.0], [7.0], [15.0]])  # distinct distances: no ties
    labels = knn_pair_labels(points, k=3)  # each row: itself and its single nearest other
    nearest = {0: 1, 1: 0, 2: 1, 3: 2, 4: 3}
    expected = torch.eye(5)
    for i, j in nearest.items():
        expected[i, j] = expected[j, i] = 1  # OR over row i and column j
    assert torch.equal(labels, expected)
    assert torch.equal(labels, labels.t())


def test_cosine_threshold_is_inclusive_and_ignores_norms():
    features = torch.tensor([[1.0, 0.0], [5.0, 0.0], [0.0, 2.0]])
    assert torch.equal(cosine_pair_labels(features, 1.0), torch.tensor([[1.0, 1, 0], [1, 1, 0], [0, 0, 1]]))


def test_sne_labels_every_sample_with_itself():
    features = torch.randn(10, 4, generator=torch.Generator().manual_seed(1)) * 100  # far apart
    assert torch.equal(sne_pair_labels(features, 0.01, 1.0), torch.eye(10))


def test_squared_distances_are_exact_on_the_diagonal():
    features = torch.randn(7, 5, generator=torch.Generator().manual_seed(2)) * 1e3
    distances = squared_distances(features)
    assert torch.all(distances.diagonal() == 0)
    assert torch.allclose(distances, ((features[:, None] - features[None]) ** 2).sum(-1), rtol=1e-5)


def test_mixed_targets_weight_each_source_row():
    labels = torch.tensor([[1.0, 0, 1], [0, 1, 0], [1, 0, 1]])
    sources = torch.tensor([[0, 1, 2], [1, 2, 0]])  # image i is 0.75·source₀(i) + 0.25·source₁(i)
    weights = torch.tensor([[0.75, 0.25]] * 3)
    targets = mix_pair_targets(labels, sources, weights)
    assert torch.allclose(targets[0], 0.75 * labels[0] + 0.25 * labels[1])
    assert torch.allclose(targets[2], 0.75 * labels[2] + 0.25 * labels[0])
    unmixed = mix_pair_targets(labels, torch.arange(3)[None], torch.ones(3, 1))
    assert torch.equal(unmixed, labels)


def test_pair_bce_is_minimal_when_similarities_match_the_labels():
    _, labels = two_tight_clusters()
    cluster = torch.arange(2 * CLUSTER) % 2
    matching = torch.nn.functional.one_hot(cluster, 3).float()  # σ_iᵀσ_j = ℓ_ij exactly
    best = pair_bce_loss(matching, matching, labels)
    assert best < 1e-5
    g = torch.Generator().manual_seed(3)
    for _ in range(5):
        other = torch.randn(2 * CLUSTER, 3, generator=g).softmax(1)
        assert pair_bce_loss(other, other, labels) > best + 0.1
    swapped = torch.nn.functional.one_hot(1 - cluster, 3).float()  # the same partition, clusters renamed
    assert torch.isclose(pair_bce_loss(swapped, swapped, labels), best)


def test_pair_bce_of_a_soft_target_is_its_entropy_at_the_optimum():
    p = torch.tensor([[0.5, 0.5]])  # σᵀσ = 0.5
    value = pair_bce_loss(p, p, torch.tensor([[0.5]]))
    assert math.isclose(float(value), math.log(2), rel_tol=1e-5)


def test_sigmoid_rampup_values():
    assert math.isclose(sigmoid_rampup(0, 100), math.exp(-5))
    assert math.isclose(sigmoid_rampup(50, 100), math.exp(-5 * 0.25))
    assert sigmoid_rampup(100, 100) == 1.0 and sigmoid_rampup(220, 100) == 1.0
    assert sigmoid_rampup(3, 0) == 1.0


def test_cosine_labels_are_float32_under_autocast():
    # features clustered so that many cosines lie within bf16's rounding (±0.002) of τ = 0.9
    g = torch.Generator().manual_seed(5)
    centres = torch.randn(10, 512, generator=g)
    features = (centres[torch.randint(0, 10, (256,), generator=g)] + 0.33 * torch.randn(256, 512, generator=g)).relu()
    expected = cosine_pair_labels(features, 0.9)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(cosine_pair_labels(features, 0.9), expected)


def test_pair_bce_is_float32_under_autocast():
    # two samples merged with s = 0.999 although their label says apart: −log(0.001), not bf16's −log ε
    p = torch.tensor([[0.9995, 0.0005], [0.9995, 0.0005]])
    targets = torch.eye(2)
    expected = pair_bce_loss(p, p, targets)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = pair_bce_loss(p, p, targets)
    assert got.dtype == torch.float32 and got.item() == pytest.approx(expected.item(), rel=1e-6)
    assert expected.item() == pytest.approx(-0.5 * math.log(1 - 0.9995**2 - 0.0005**2), rel=1e-3)


def test_mixed_targets_are_float32_under_autocast():
    g = torch.Generator().manual_seed(7)
    labels = (torch.rand(64, 64, generator=g) > 0.8).float()
    sources = torch.randint(0, 64, (4, 64), generator=g)
    weights = torch.rand(64, 4, generator=g)
    weights = weights / weights.sum(1, keepdim=True)  # RICAP's four tile areas
    expected = mix_pair_targets(labels, sources, weights)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = mix_pair_targets(labels, sources, weights)
    assert got.dtype == torch.float32 and torch.allclose(got, expected, atol=1e-6)
