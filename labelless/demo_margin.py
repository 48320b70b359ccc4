"""The margin demonstration of Zhang & Boykov (supplementary Fig. 4 and 6): a linear softmax classifier
σ(x) = softmax(Vx + b) clusters 2-D points by minimising loss (a),
    L = mean_i H(σ_i) − H(σ̄) + γ‖V‖²,
once per γ. Decision regions are coloured by the winning cluster, with saturation by confidence: the
"margin" is the pale band around each boundary. Without γ the classifier "squeezes a narrow-margin
linear decision boundary just between the data points" and grows ‖V‖ without bound; with γ > 0 the
band widens and the boundary moves to the middle of the gap.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from labelless.losses.entropy_margin import entropy_margin_loss

CLUSTER_COLOURS = np.array([[0.12, 0.47, 0.71], [0.84, 0.15, 0.16], [0.17, 0.63, 0.17], [1.0, 0.5, 0.05]])


def blobs(n_per_cluster: int = 60, k: int = 3, spread: float = 0.35, seed: int = 0) -> torch.Tensor:
    """k Gaussian blobs with centres on a circle, as normalised x-y coordinates (zero mean, unit
    standard deviation per axis, the supplementary's "normalised X-Y coordinates"): N×2."""
    generator = torch.Generator().manual_seed(seed)
    angles = torch.arange(k) * 2 * math.pi / k
    centres = torch.stack([angles.cos(), angles.sin()], 1) * 2
    points = torch.cat([centre + spread * torch.randn(n_per_cluster, 2, generator=generator) for centre in centres])
    return (points - points.mean(0)) / points.std(0)


def fit_linear_clustering(points: torch.Tensor, k: int, gamma: float, steps: int = 400, lr: float = 0.1,
                          seed: int = 0) -> torch.nn.Linear:
    """A linear softmax classifier trained on loss (a) (fairness weight 1) + γ‖V‖² with Adam, from a
    fixed small initialisation (the same for every γ)."""
    torch.manual_seed(seed)
    classifier = torch.nn.Linear(points.shape[1], k)
    with torch.no_grad():
        classifier.weight.mul_(0.1)
    optimizer = torch.optim.Adam(classifier.parameters(), lr=lr)
    for _ in range(steps):
        loss = entropy_margin_loss(classifier(points).softmax(1), classifier.weight, gamma=gamma)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return classifier


def region_image(classifier: torch.nn.Linear, extent: tuple[float, float, float, float],
                 resolution: int = 200) -> np.ndarray:
    """H×W×3 RGB of the decision regions over `extent` (x0, x1, y0, y1): the winning cluster's colour
    blended with white by confidence (max σ rescaled from 1/K…1 to 0…1)."""
    xs = torch.linspace(extent[0], extent[1], resolution)
    ys = torch.linspace(extent[2], extent[3], resolution)
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1).reshape(-1, 2)  # (H·W)×2, rows = y
    with torch.no_grad():
        sigma = classifier(grid).softmax(1)
    k = sigma.shape[1]
    confidence, winner = sigma.max(1)
    saturation = ((confidence - 1 / k) / (1 - 1 / k)).clamp(0, 1).numpy()[:, None]
    colours = CLUSTER_COLOURS[winner.numpy() % len(CLUSTER_COLOURS)]
    return (1 - saturation + saturation * colours).reshape(resolution, resolution, 3)


def demo_margin(out_png: str | Path, gammas: Sequence[float] = (0, 0.01, 0.1), k: int = 2, seed: int = 0,
                steps: int = 400) -> Path:
    """Write one panel per γ (decision regions, data points coloured by cluster, ‖V‖ in the title) to
    `out_png`; returns its path. Two clusters show the margin best; with k = 3, γ = 0.1 already
    merges two blobs (try gammas 0, 0.01, 0.03)."""
    out_png = Path(out_png)
    points = blobs(k=k, seed=seed)
    extent = (float(points[:, 0].min()) - 0.5, float(points[:, 0].max()) + 0.5,
              float(points[:, 1].min()) - 0.5, float(points[:, 1].max()) + 0.5)
    figure = Figure(figsize=(4 * len(gammas), 4.2))
    FigureCanvasAgg(figure)
    for index, gamma in enumerate(gammas):
        classifier = fit_linear_clustering(points, k, gamma, steps=steps, seed=seed)
        with torch.no_grad():
            clusters = classifier(points).argmax(1).numpy()
            norm = float(classifier.weight.norm())
        axes = figure.add_subplot(1, len(gammas), index + 1)
        axes.imshow(region_image(classifier, extent), origin="lower", extent=extent, interpolation="bilinear",
                    aspect="auto")
        axes.scatter(points[:, 0], points[:, 1], c=CLUSTER_COLOURS[clusters % len(CLUSTER_COLOURS)], s=12,
                     edgecolors="black", linewidths=0.4)
        axes.set_title(f"γ = {gamma:g}   ‖V‖ = {norm:.1f}")
        axes.set_xticks([])
        axes.set_yticks([])
    figure.suptitle("Entropy clustering, loss (a): mean H(σ) − H(σ̄) + γ‖V‖² — pale band = margin")
    figure.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_png, dpi=100)
    return out_png
