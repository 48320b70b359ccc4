"""The report's figures as PNG bytes (matplotlib's Agg backend: no display, no network).

Each function takes plain arrays and returns PNG bytes, so the HTML page can inline them and tests
can check them without a browser.
"""
from __future__ import annotations

import io
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # before pyplot: a headless server has no display
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.offsetbox import AnnotationBbox, OffsetImage
from PIL import Image

DPI = 110


def png_bytes(figure: plt.Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def thumbnail_png(image: np.ndarray) -> bytes:
    """One H×W×C uint8 image as PNG at its native size (the page scales it up with crisp pixels)."""
    array = image[..., 0] if image.shape[-1] == 1 else image
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def cluster_colours(k: int) -> np.ndarray:
    """k RGBA colours: tab10/tab20 while they last (distinct at a glance), then a spread of hsv."""
    if k <= 10:
        return plt.get_cmap("tab10")(np.arange(k))
    if k <= 20:
        return plt.get_cmap("tab20")(np.arange(k))
    return plt.get_cmap("hsv")(np.linspace(0, 1, k, endpoint=False))


def confusion_heatmap(counts: np.ndarray, class_names: Sequence[str], cluster_order: Sequence[int]) -> bytes:
    """Rows: true classes; columns: clusters in `cluster_order` (Hungarian-matched first, so a good
    clustering shows a bright diagonal). Colour is the row fraction, so small classes stay visible."""
    counts = counts[:, list(cluster_order)]  # k_true × k_pred
    fractions = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    k_true, k_pred = counts.shape
    side = min(0.5 * max(k_true, k_pred) + 2.5, 11)
    figure, axis = plt.subplots(figsize=(side * max(k_pred / max(k_true, 1), 0.6) ** 0.5 + 1, side))
    shown = axis.imshow(fractions, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    figure.colorbar(shown, ax=axis, fraction=0.046, pad=0.03, label="fraction of the class")
    if k_true * k_pred <= 400:
        for row in range(k_true):
            for column in range(k_pred):
                if counts[row, column]:
                    axis.text(column, row, str(counts[row, column]), ha="center", va="center", fontsize=8,
                              color="white" if fractions[row, column] > 0.5 else "black")
    tick_step = max(1, k_pred // 30)
    axis.set_xticks(range(0, k_pred, tick_step), [str(c) for c in list(cluster_order)[::tick_step]])
    axis.set_yticks(range(k_true), class_names if k_true <= 40 else [""] * k_true)
    axis.set_xlabel("cluster (ordered by the Hungarian match)")
    axis.set_ylabel("true class")
    return png_bytes(figure)


def embedding_map(xy: np.ndarray, clusters: np.ndarray, k: int, images: np.ndarray | None = None,
                  thumbnails: int = 30, seed: int = 0) -> bytes:
    """2-D map coloured by cluster; `thumbnails` of the points also show their image, spread over the map."""
    colours = cluster_colours(k)
    figure, axis = plt.subplots(figsize=(8.5, 7))
    axis.scatter(xy[:, 0], xy[:, 1], c=colours[clusters], s=8, linewidths=0, alpha=0.8)
    if images is not None and thumbnails:
        rng = np.random.default_rng(seed)
        for i in rng.choice(len(xy), size=min(thumbnails, len(xy)), replace=False):
            image = images[i][..., 0] if images.shape[-1] == 1 else images[i]
            zoom = 24 / max(image.shape[:2])  # every thumbnail ~24 px, whatever the input size
            box = OffsetImage(image, zoom=zoom, cmap="gray" if image.ndim == 2 else None)
            axis.add_artist(AnnotationBbox(box, xy[i], frameon=True, pad=0.1,
                                           bboxprops={"edgecolor": colours[clusters[i]], "linewidth": 1.5}))
    if k <= 20:
        handles = [plt.Line2D([], [], marker="o", linestyle="", color=colours[c], label=str(c)) for c in range(k)]
        axis.legend(handles=handles, title="cluster", loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    axis.set_xticks([])
    axis.set_yticks([])
    return png_bytes(figure)


def training_curves(lines: Sequence[dict]) -> bytes | None:
    """Loss of each stage (own panel: stages' losses have unrelated scales), then cluster-size
    entropy and largest-cluster fraction across stages on one epoch axis; None when nothing was logged."""
    stages = list(dict.fromkeys(line["stage"] for line in lines if "stage" in line))
    if not stages:
        return None
    extras = [key for key in ("entropy", "largest_cluster_fraction", "confident_fraction")
              if any(key in line for line in lines)]
    panels = len(stages) + len(extras)
    columns = min(panels, 3)
    rows = -(-panels // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.0 * rows), squeeze=False)
    colours = plt.get_cmap("tab10")(np.arange(len(stages)) % 10)
    offsets, offset = {}, 0
    for stage in stages:
        offsets[stage] = offset
        offset += 1 + max(line["epoch"] for line in lines if line.get("stage") == stage)
    flat = list(axes.flat)
    for axis, stage, colour in zip(flat, stages, colours):
        own = [line for line in lines if line.get("stage") == stage and "loss" in line]
        axis.plot([line["epoch"] for line in own], [line["loss"] for line in own], color=colour, marker=".")
        axis.set_title(f"loss: stage '{stage}'", fontsize=10)
        axis.set_xlabel("epoch")
    for axis, key in zip(flat[len(stages):], extras):
        for stage, colour in zip(stages, colours):
            own = [line for line in lines if line.get("stage") == stage and key in line]
            if own:
                axis.plot([offsets[stage] + line["epoch"] for line in own], [line[key] for line in own],
                          color=colour, marker=".", label=stage)
        axis.set_title(key.replace("_", " "), fontsize=10)
        axis.set_xlabel("epoch (all stages)")
        axis.legend(fontsize=8, frameon=False)
    for axis in flat[panels:]:
        axis.set_visible(False)
    figure.tight_layout()
    return png_bytes(figure)
