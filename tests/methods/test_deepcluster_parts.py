"""Known answers for DeepCluster's parts: the k-means fallback (`torch_kmeans`), its empty-cluster split
(`_split_empty`, faiss's `split_clusters`) and the PCA-whitening-L2 preprocessing (`pca_whiten_l2`)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import labelless.methods.deepcluster as deepcluster
from labelless.methods.deepcluster import SPLIT_PERTURBATION, _assign, _split_empty, kmeans, pca_whiten_l2, torch_kmeans

# a square ring around a centre: the 8 offsets sum to exactly 0, so a blob's mean is exactly its centre
RING = torch.tensor([[1., 0.], [-1., 0.], [0., 1.], [0., -1.], [1., 1.], [-1., -1.], [1., -1.], [-1., 1.]])


def _same_partition(found: torch.Tensor, truth: torch.Tensor) -> bool:
    """Equal up to a permutation of the cluster ids."""
    pairs = torch.stack([found, truth], 1).unique(dim=0)
    return len(pairs) == len(found.unique()) == len(truth.unique())


def test_split_empty_gives_an_empty_cluster_a_perturbed_copy_of_the_donor():
    centroids = torch.tensor([[2., 4., 6.], [9., 9., 9.], [1., 1., 1.]])
    counts = torch.tensor([3, 0, 0])  # only cluster 0 can donate to 1; then 0 or 1 (1.5 each) to 2
    before = centroids.clone()
    split = _split_empty(centroids, counts, torch.Generator().manual_seed(0))
    eps = SPLIT_PERTURBATION
    assert torch.equal(centroids, before) and counts.tolist() == [3, 0, 0]  # inputs untouched
    first = torch.tensor([2 * (1 + eps), 4 * (1 - eps), 6 * (1 + eps)])  # alternate coordinates 1 ± ε
    donor = torch.tensor([2 * (1 - eps), 4 * (1 + eps), 6 * (1 - eps)])  # the donor moves the other way
    # cluster 2 took from 0 (then 1 keeps `first`) or from 1 (then 0 keeps `donor`), each ∝ its 1.5 left
    assert torch.allclose(split[1], first, rtol=0, atol=1e-5) or torch.allclose(split[0], donor, rtol=0, atol=1e-5)
    # the three centroids end distinct, all within a relative ε of the donor
    assert len(split.unique(dim=0)) == 3
    assert torch.allclose(split, torch.tensor([2., 4., 6.]).expand(3, 3), rtol=2.5 * eps, atol=0)
    one_empty = _split_empty(centroids[:2], torch.tensor([3, 0]), None)
    assert torch.allclose(one_empty, torch.stack([donor, first]), rtol=0, atol=1e-5)


def _duplicated_start(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """18 points: blob A (10 rows: 2 exact copies of its centre (4, 4) and a ring around it) and blob B
    (a ring around (20, 8)). `torch_kmeans` starts from the rows `randperm(N, generator)[:k]`; the same
    permutation puts both copies of A's centre at the first two of them, so centroids 0 and 1 coincide.
    Every point then ties between them and goes to 0 (argmin's first index), A's mean is exactly (4, 4)
    again, and plain Lloyd iterations leave cluster 1 empty for ever."""
    centre_a, centre_b = torch.tensor([4., 4.]), torch.tensor([20., 8.])
    ordered = torch.cat([centre_a.expand(2, 2), centre_b + RING[:1], centre_a + RING, centre_b + RING[1:]])
    blob = torch.tensor([0, 0, 1] + [0] * 8 + [1] * 7)
    permutation = torch.randperm(18, generator=torch.Generator().manual_seed(seed))
    x, truth = torch.empty(18, 2), torch.empty(18, dtype=torch.long)
    x[permutation], truth[permutation] = ordered, blob
    return x, truth


@pytest.mark.parametrize("seed", [0, 1, 2, 3])  # seeds 0, 1 split blob B, seeds 2, 3 blob A
def test_kmeans_splits_a_cluster_that_lloyd_would_leave_empty(seed: int):
    x, blob = _duplicated_start(seed)
    start = x[torch.randperm(18, generator=torch.Generator().manual_seed(seed))[:3]]
    assert torch.equal(start[0], start[1])
    assert torch.bincount(_assign(x, start), minlength=3).tolist()[1] == 0  # the construction: 1 starts empty

    labels = torch_kmeans(x, 3, iterations=20, generator=torch.Generator().manual_seed(seed))
    assert labels.shape == (18,) and labels.dtype == torch.long  # no sample lost
    counts = torch.bincount(labels, minlength=3)
    assert len(counts) == 3 and bool((counts > 0).all()), counts.tolist()
    # one blob was split in two, the other kept whole: no cluster mixes the blobs
    assert all(len(blob[labels == c].unique()) == 1 for c in range(3))
    assert sorted(len(labels[blob == b].unique()) for b in (0, 1)) == [1, 2]


def _edge_started_blobs(seed: int, k: int = 4, per: int = 25, d: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """k blobs centred 10 apart on the first axis (±3 on it, ±1 on the others): well separated. The
    starting rows (the first k of `randperm(N, generator)`, see above) are put on each blob's right
    edge, so the initial assignment gives the left edge of every blob but the first to its left
    neighbour and only the Lloyd iterations recover the blobs."""
    generator = torch.Generator().manual_seed(100 + seed)
    offsets = torch.rand(k, per, d, generator=generator) * 2 - 1
    offsets[..., 0] *= 3
    offsets[:, 0, 0], offsets[:, 1, 0] = 3.0, -3.0  # row 0: right edge (a start), row 1: left edge
    points = (offsets + torch.nn.functional.pad(10.0 * torch.arange(k)[:, None, None], (0, d - 1))).reshape(-1, d)
    truth = torch.arange(k).repeat_interleave(per)
    source = torch.cat([torch.arange(k) * per, torch.tensor([i for i in range(k * per) if i % per])])
    permutation = torch.randperm(k * per, generator=torch.Generator().manual_seed(seed))
    x, labels = torch.empty_like(points), torch.empty_like(truth)
    x[permutation], labels[permutation] = points[source], truth[source]
    return x, labels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kmeans_recovers_well_separated_blobs_up_to_permutation(seed: int):
    x, truth = _edge_started_blobs(seed)
    initial = torch_kmeans(x, 4, iterations=0, generator=torch.Generator().manual_seed(seed))
    assert not _same_partition(initial, truth)  # the start alone does not find the blobs
    found = torch_kmeans(x, 4, iterations=20, generator=torch.Generator().manual_seed(seed))
    assert _same_partition(found, truth) and torch.bincount(found).tolist() == [25] * 4
    assert _same_partition(kmeans(x, 4, iterations=20, seed=seed), truth)  # the public entry (faiss or torch)


def _low_rank_features(n: int = 400, d: int = 48, dims: int = 12) -> torch.Tensor:
    """dims strong directions (standard deviations 20 → 4) in a random rotation, a weak rest (0.05),
    and an offset: the top-`dims` principal subspace is well separated, so randomised PCA is accurate."""
    generator = torch.Generator().manual_seed(0)
    basis, _ = torch.linalg.qr(torch.randn(d, d, generator=generator))
    scales = torch.cat([torch.linspace(20, 4, dims), torch.full((d - dims,), 0.05)])
    return (torch.randn(n, d, generator=generator) * scales) @ basis.T + 5 * torch.randn(d, generator=generator)


def test_pca_whiten_l2_whitens_the_top_principal_components_then_normalises(monkeypatch):
    x, dims = _low_rank_features(), 12
    torch.manual_seed(0)  # torch.pca_lowrank draws its random projection from the global RNG
    out = pca_whiten_l2(x, dims)
    assert out.shape == (400, dims) and out.dtype == torch.float32
    assert torch.allclose(out.norm(dim=1), torch.ones(400), atol=1e-5)

    monkeypatch.setattr(deepcluster, "F", SimpleNamespace(normalize=lambda t, dim: t))  # stop before the L2 step
    torch.manual_seed(0)
    whitened = pca_whiten_l2(x, dims)
    assert torch.allclose(out, torch.nn.functional.normalize(whitened, dim=1), atol=1e-6)
    assert whitened.mean(0).abs().max().item() < 1e-4  # centred
    covariance = torch.cov(whitened.T)
    assert (covariance - torch.eye(dims)).abs().max().item() < 1e-3  # unit variance, decorrelated
    # exactly the top principal components (exact SVD), each scaled to unit variance, up to sign
    u, _, _ = torch.linalg.svd((x - x.mean(0)).double(), full_matrices=False)
    reference = u[:, :dims] * (len(x) - 1) ** 0.5
    reference = reference * torch.sign((reference * whitened.double()).sum(0))
    assert (whitened.double() - reference).abs().max().item() < 1e-3


def test_pca_whiten_l2_caps_the_dimension_at_the_data_size():
    torch.manual_seed(0)
    out = pca_whiten_l2(torch.randn(30, 20, generator=torch.Generator().manual_seed(1)), dims=256)
    assert out.shape == (30, 20) and bool(torch.isfinite(out).all())
    assert torch.allclose(out.norm(dim=1), torch.ones(30), atol=1e-5)


def test_assign_in_chunks_matches_the_whole_distance_matrix():
    generator = torch.Generator().manual_seed(5)
    x, centroids = torch.randn(10, 4, generator=generator), torch.randn(3, 4, generator=generator)
    expected = torch.cdist(x, centroids).argmin(1)
    assert torch.equal(_assign(x, centroids, chunk=3), expected)  # 3 + 3 + 3 + 1 rows
    assert torch.equal(_assign(x, centroids), expected)  # one chunk
