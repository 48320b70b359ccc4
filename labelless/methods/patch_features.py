"""A single-layer k-means feature extractor (Coates, Lee & Ng, "An Analysis of Single-Layer Networks in
Unsupervised Feature Learning", AISTATS 2011): a feature space for mining neighbours on a CPU, where a
pretext network would take days.

1. Random p×p patches of the images, each normalised (mean removed, divided by its standard deviation
   with ε = 10 on the 0–255 scale), ZCA-whitened (ε 0.1).
2. K centroids by Lloyd's k-means on the whitened patches.
3. Every image: all its patches (stride `stride`), each coded by the "triangle" activation
   f_k = max(0, mean_j d_j − d_k) of its distances d to the centroids, then averaged over the four
   quadrants of the image → 4·K features.

The paper's defaults (6×6 patches, stride 1, whitening, triangle coding, quadrant pooling) are kept;
K is 400, not the paper's 1600: encoding costs N·patches·K, and on 10k CIFAR-10 train images 1600
gave no better neighbours (the note in benchmarks/results/neighbours-cifar10.json). No label is used
at any step. The features are computed on the CPU whatever the training device.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from labelless.chunks import fill_by_chunks
from labelless.data.stores import ImageStore
from labelless.errors import UserError
from labelless.methods.deepcluster import torch_kmeans_centroids

NORMALISE_EPS = 10 / 255 ** 2  # Coates et al.'s 10 for 0–255 pixels, on our [0, 1] scale
WHITEN_EPS = 0.1
STANDARDISE_EPS = 0.01  # per-feature standardisation before PCA: a centroid almost never active stays small


def _normalised(patches: Tensor) -> Tensor:
    centred = patches - patches.mean(1, keepdim=True)
    return centred / torch.sqrt(centred.var(1, keepdim=True) + NORMALISE_EPS)


class PatchKMeans:
    """`fit` on an `ImageStore`, then `encode` batches of images (N×C×H×W in [0, 1]) to 4·K features;
    `features(store)` does both for a whole store. `stride` defaults to one patch step per 32 pixels of
    the shorter image side, so a larger image costs about as many patches as a 32×32 one."""

    def __init__(self, centroids: int = 400, patch: int = 6, samples: int = 200_000, iterations: int = 10,
                 stride: int | None = None, generator: torch.Generator | None = None) -> None:
        self.k, self.patch, self.samples, self.iterations = centroids, patch, samples, iterations
        self.stride, self.generator = stride, generator
        self.mean = self.whiten = self.centroids = None

    @torch.no_grad()
    def fit(self, store: ImageStore, chunk: int = 8192) -> PatchKMeans:
        height, width = store.image_size
        if min(height, width) < self.patch:
            raise UserError(f"patch features: the images are {height}×{width}, smaller than a "
                            f"{self.patch}×{self.patch} patch: mine on pixels instead (--set stages.0.method.pixel_space=centred)")
        if self.stride is None:
            self.stride = max(1, min(height, width) // 32)
        g = self.generator
        # a small folder has fewer distinct patches than `samples`: draw each about once, not many times
        samples = min(self.samples, len(store) * (height - self.patch + 1) * (width - self.patch + 1))
        which = torch.randint(len(store), (samples,), generator=g)
        top = torch.randint(height - self.patch + 1, (samples,), generator=g)
        left = torch.randint(width - self.patch + 1, (samples,), generator=g)
        offsets = torch.arange(self.patch)

        def cut(start: int, stop: int) -> Tensor:
            images = store.batch(which[start:stop].to(store.device)).cpu()  # n×C×H×W
            rows = (top[start:stop, None] + offsets)[:, None, :, None]
            cols = (left[start:stop, None] + offsets)[:, None, None, :]
            picks = torch.arange(stop - start)[:, None, None, None]
            channels = torch.arange(store.channels)[None, :, None, None]
            return images[picks, channels, rows, cols].flatten(1)

        patches = _normalised(fill_by_chunks(torch.empty(samples, store.channels * self.patch ** 2), chunk, cut))
        self.mean = patches.mean(0)
        eigenvalues, vectors = torch.linalg.eigh(torch.cov((patches - self.mean).T))
        self.whiten = vectors @ torch.diag(eigenvalues.clamp_min(0).add(WHITEN_EPS).rsqrt()) @ vectors.T
        self.centroids = torch_kmeans_centroids((patches - self.mean) @ self.whiten, self.k, self.iterations, g)
        self.k = len(self.centroids)  # fewer when there are fewer patches than centroids
        return self

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """N×(4·K) triangle-coded, quadrant-averaged features of a batch of images."""
        n, channels, height, width = images.shape
        side_h = (height - self.patch) // self.stride + 1
        side_w = (width - self.patch) // self.stride + 1
        rows = F.unfold(images.float(), self.patch, stride=self.stride).transpose(1, 2).reshape(-1, channels * self.patch ** 2)
        distances = torch.cdist((_normalised(rows) - self.mean) @ self.whiten, self.centroids)
        codes = torch.relu(distances.mean(1, keepdim=True) - distances)
        codes = codes.reshape(n, side_h, side_w, self.k).permute(0, 3, 1, 2)
        return F.adaptive_avg_pool2d(codes, 2).flatten(1)

    @torch.no_grad()
    def features(self, store: ImageStore, batch_size: int = 100) -> Tensor:
        """`fit` on `store`, then the features of all its images, each standardised over the store
        (so that no centroid's scale dominates a cosine), on the CPU, with a progress bar. The rows
        fill one matrix allocated up front (`labelless.chunks`: under the raised mmap threshold, a
        list of per-batch results joined at the end grew the heap to 24 GB on CIFAR-10)."""
        self.fit(store)
        with tqdm(total=len(store), desc="patch features", unit="img", leave=False, disable=None) as bar:
            def rows(start: int, stop: int) -> Tensor:
                bar.update(stop - start)
                return self.encode(store.batch(torch.arange(start, stop, device=store.device)).cpu())

            encoded = fill_by_chunks(torch.empty(len(store), 4 * self.k), batch_size, rows)
        encoded -= encoded.mean(0)
        return encoded.div_(encoded.std(0) + STANDARDISE_EPS)
