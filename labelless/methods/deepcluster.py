"""DeepCluster (Caron, Bojanowski, Joulin, Douze, "Deep Clustering for Unsupervised Learning of
Visual Features", ECCV 2018).

"We iteratively group the features with a standard clustering algorithm, k-means, and use the
subsequent assignments as supervision to update the weights of the network." Each epoch: features
of every image (un-augmented, eval mode) → PCA to 256 dimensions, whitening, L2 normalisation →
k-means (faiss when installed, else `torch_kmeans` on the training device) → pseudo-labels; the
classifier is re-initialised (N(0, 0.01), zero bias, as the released code does) and trained with the
backbone on cross-entropy to the pseudo-labels of augmented views. Sobel input optional (the paper's
default). K may exceed the class count (`num_clusters`).

Uniform sampling over clusters: the paper samples images "based on a uniform distribution over the
classes, or pseudo-labels", so that a large cluster cannot dominate. The Trainer draws one
permutation of all rows per epoch, so this uses per-sample loss weights ∝ 1/|cluster| instead
(`inverse_frequency_weights`): the same expected gradient, every cluster weighted equally.

Empty clusters, as in the paper: "when a cluster becomes empty, we randomly select a non-empty
cluster and use its centroid with a small random perturbation as the new centroid for the empty
cluster. We then reassign the points belonging to the non-empty cluster to the two resulting
clusters." (faiss does this inside its k-means; `torch_kmeans` does the same.)

The classifier is re-initialised in place, so the optimiser's state for it (momentum, Adam moments)
carries over between epochs, where the released code builds a fresh optimiser for the top layer.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from labelless.chunks import fill_by_chunks
from labelless.losses.pseudo_label import inverse_frequency_weights
from labelless.methods.base import Batch, EpochContext, Method, predict_in_batches
from labelless.methods.pseudo_label import input_views
from labelless.nn.backbones import build_backbone
from labelless.train import broadcast_from_rank_0

SPLIT_PERTURBATION = 1.0 / 1024  # faiss's relative perturbation when it splits a centroid


def pca_whiten_l2(features: Tensor, dims: int = 256) -> Tensor:
    """Project N×D features on their top `dims` principal directions, whiten (divide each by its
    standard deviation: faiss's PCA with eigen_power −0.5, as DeepCluster's `preprocess_features`)
    and L2-normalise each row. `dims` is capped at min(N, D). Randomised PCA (`torch.pca_lowrank`)."""
    features = features.float()
    dims = min(dims, *features.shape)
    mean = features.mean(0, keepdim=True)
    _, singular, directions = torch.pca_lowrank(features, q=dims, center=True, niter=4)  # directions: D×dims
    std = singular / max(1, len(features) - 1) ** 0.5
    whitened = (features - mean) @ directions / std.clamp_min(1e-8)
    return F.normalize(whitened, dim=1)


def _split_empty(centroids: Tensor, counts: Tensor, generator: torch.Generator | None) -> Tensor:
    """Give each empty cluster a perturbed copy of a non-empty centroid, chosen with probability ∝
    its size, and move the donor the other way: faiss's `split_clusters`, which scales alternate
    coordinates by 1 ± ε and 1 ∓ ε."""
    centroids = centroids.clone()
    counts = counts.clone().float()
    signs = torch.ones(centroids.shape[1], device=centroids.device)
    signs[1::2] = -1
    for empty in (counts == 0).nonzero().flatten().tolist():
        donor = int(torch.multinomial(counts.cpu(), 1, generator=generator))
        centroids[empty] = centroids[donor] * (1 + SPLIT_PERTURBATION * signs)
        centroids[donor] = centroids[donor] * (1 - SPLIT_PERTURBATION * signs)
        counts[empty] = counts[donor] / 2
        counts[donor] -= counts[empty]
    return centroids


def _assign(x: Tensor, centroids: Tensor, chunk: int = 8192) -> Tensor:
    """Nearest centroid (squared Euclidean) of every row, in chunks to bound the N×K distance matrix."""
    squared = centroids.pow(2).sum(1)
    return fill_by_chunks(torch.empty(len(x), dtype=torch.long, device=x.device), chunk,
                          lambda start, stop: (squared - 2 * x[start:stop] @ centroids.t()).argmin(1))


def torch_kmeans(x: Tensor, k: int, iterations: int = 20, generator: torch.Generator | None = None) -> Tensor:
    """Lloyd's k-means on the device of `x` (N×D): the N assignments of `torch_kmeans_centroids`."""
    return _assign(x, torch_kmeans_centroids(x, k, iterations, generator))


def torch_kmeans_centroids(x: Tensor, k: int, iterations: int = 20, generator: torch.Generator | None = None) -> Tensor:
    """k×D centroids of Lloyd's k-means on the rows of `x`: they start at k random rows (faiss's
    default), then `iterations` rounds of assignment and mean update, empty clusters split from a
    random non-empty one (`_split_empty`). With fewer rows than k, as many centroids as rows."""
    k = min(k, len(x))
    rows = torch.randperm(len(x), generator=generator)[:k].to(x.device)
    centroids = x[rows].clone()
    for _ in range(iterations):
        assignment = _assign(x, centroids)
        counts = torch.bincount(assignment, minlength=k)
        sums = torch.zeros_like(centroids).index_add_(0, assignment, x)
        centroids = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], centroids)
        if bool((counts == 0).any()):
            centroids = _split_empty(centroids, counts, generator)
    return centroids


def kmeans(x: Tensor, k: int, iterations: int = 20, seed: int = 0) -> Tensor:
    """N cluster assignments of the rows of `x`: faiss's k-means when faiss is installed (as the
    paper), else `torch_kmeans` on x's device."""
    try:
        import faiss
    except ImportError:
        return torch_kmeans(x, k, iterations, torch.Generator().manual_seed(seed))
    data = x.detach().float().cpu().contiguous().numpy()
    clustering = faiss.Kmeans(data.shape[1], k, niter=iterations, seed=seed)
    clustering.train(data)
    _, assignment = clustering.index.search(data, 1)
    return torch.from_numpy(assignment[:, 0]).long().to(x.device)


class DeepCluster(Method):
    name = "deepcluster"

    def __init__(self, *, k: int, in_channels: int, image_size: int, pretrained: Method | None = None,
                 backbone: str = "vgg4", augment: str = "simclr", sobel: bool = True, num_clusters: int | None = None,
                 pca_dims: int = 256, kmeans_iterations: int = 20, input_size: int | None = None,
                 feature_batch_size: int = 1024) -> None:
        super().__init__()
        self.num_clusters = num_clusters or k
        self.pca_dims, self.kmeans_iterations, self.feature_batch_size = pca_dims, kmeans_iterations, feature_batch_size
        self.augment, self.view = input_views(augment, sobel, image_size, in_channels, input_size)
        self.backbone = build_backbone(backbone, in_channels=self.augment.out_channels,
                                       image_size=input_size or image_size)
        self.head = nn.Linear(self.backbone.num_features, self.num_clusters)  # the "top layer"
        self.register_buffer("cluster_weights", torch.ones(self.num_clusters))
        self.pseudo_labels: Tensor | None = None  # N, recomputed at every epoch start

    def reset_head(self) -> None:
        """The released code's top-layer initialisation: weights N(0, 0.01), bias 0."""
        nn.init.normal_(self.head.weight, 0.0, 0.01)
        nn.init.zeros_(self.head.bias)

    @torch.no_grad()
    def on_epoch_start(self, epoch: int, ctx: EpochContext) -> None:
        was_training = self.training
        self.eval()
        features = torch.cat([self.embed(images).float()
                              for _, images in ctx.batches(self.feature_batch_size)])  # N×D
        self.train(was_training)
        seed = int(torch.randint(2**31 - 1, ()))  # from the Trainer's per-epoch seeded RNG
        labels = kmeans(pca_whiten_l2(features, self.pca_dims), self.num_clusters, self.kmeans_iterations, seed)
        self.reset_head()
        # The seed, the randomised PCA and the head's init come from the per-rank RNG, and BatchNorm running
        # statistics (hence the features) are per rank too: take rank 0's labelling and head, or DDP would
        # average gradients of inconsistent labellings. Every rank still clusters, so that all reach the
        # broadcast together instead of one idling in it through the whole feature pass.
        broadcast_from_rank_0(labels, self.head.weight, self.head.bias)
        self.pseudo_labels = labels.to(ctx.store.device)
        self.cluster_weights.copy_(inverse_frequency_weights(self.pseudo_labels, self.num_clusters))
        counts = torch.bincount(self.pseudo_labels, minlength=self.num_clusters)
        ctx.logs.update(largest_pseudo_cluster=float(counts.max()) / len(self.pseudo_labels),
                        empty_pseudo_clusters=float((counts == 0).sum()))

    def training_step(self, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        targets = self.pseudo_labels[batch.indices].to(batch.images.device)
        logits = self.head(self.backbone(self.augment(batch.images)))
        # weighted mean: Σ w_{y_i} CE_i / Σ w_{y_i}, every cluster counting equally (uniform sampling)
        loss = F.cross_entropy(logits.float(), targets, weight=self.cluster_weights)
        return loss, {"pseudo_label_agreement": (logits.argmax(1) == targets).float().mean()}

    def embed(self, images: Tensor) -> Tensor:
        return predict_in_batches(lambda x: self.backbone(self.view(x)), images)

    def cluster_logits(self, images: Tensor) -> Tensor:
        return predict_in_batches(lambda x: self.head(self.backbone(self.view(x))), images)
