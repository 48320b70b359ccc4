"""`report.html`: one self-contained page a person reads to judge a run (DESIGN.md, issue 7).

Self-contained on purpose: every figure and thumbnail is an inlined base64 PNG and the style sheet
is inline, so the page opens from a file, an e-mail or an air-gapped cluster and never touches the
network. Sections: protocol and metrics (when labels exist), per-cluster galleries, confusion
heatmap, 2-D map of the embedding, training curves.

Label use: labels are read here only to score and annotate a finished run, as in `evaluate`.
"""
from __future__ import annotations

import base64
import csv
import html
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from labelless.data.sources import default_eval_split, default_train_split, load_dataset, same_dataset
from labelless.data.stores import ImageStore
from labelless.evaluate.metrics import (
    cluster_metrics,
    confusion_matrix,
    hungarian_match,
)
from labelless.pipeline import Run
from labelless.predict import load_run
from labelless.report import plots

MOST_CONFIDENT, LEAST_CONFIDENT = 16, 8
TSNE_DIMS, TSNE_ITERATIONS = 50, 500  # 500 iterations: the map's layout has settled; halves the time


def write_report(run_dir: str | Path, store: ImageStore | None = None, split: str | None = None,
                 tsne_points: int = 2000, seed: int = 0, device: str = "auto", dataset: str | None = None) -> Path:
    """Write RUN_DIR/report.html and return its path.

    `store`: the images to show and score, split `split` of `dataset` (default the run's own dataset);
    without it, the run's dataset at `split` (default: the run's evaluation split, as `labelless run`
    scored it). `tsne_points`: how many images, sampled at random, the 2-D map embeds (t-SNE is
    quadratic-ish; 2000 keeps it to seconds on a CPU). A run whose last stage learns an embedding only
    shows the k-means clusters that `evaluate` scored, each image's confidence its cosine similarity
    to its cluster's centre.
    """
    start = time.perf_counter()
    run = load_run(run_dir, device=device)
    dataset = dataset or run.config.dataset.name
    if store is None:
        store, split = _run_store(run, split)
    split = split or "given"
    clusters, confidence, probabilities = _assignments(run, store, split, dataset)
    images = store.images.cpu().numpy()
    labels = store.labels.cpu().numpy() if store.labels is not None else None
    class_names = store.class_names or (None if labels is None else [str(c) for c in range(int(labels.max()) + 1)])

    sections = [_header(run, dataset, split, len(clusters), store)]
    if labels is not None:
        sections.append(_metrics_section(run, labels, clusters, probabilities, split, dataset))
    sections.append(_gallery_section(run.k, images, clusters, confidence, labels, class_names, store.paths,
                                     probabilities is not None))
    if labels is not None:
        sections.append(_confusion_section(labels, clusters, run.k, class_names))
    sections.append(_map_section(run, store, clusters, tsne_points, seed))
    sections.append(_curves_section(run.run_dir / "metrics.jsonl"))
    footer = f"<footer>Written by <code>labelless report</code> in {time.perf_counter() - start:.1f} s.</footer>"
    path = run.run_dir / "report.html"
    path.write_text(_page(run.config.name, "\n".join(s for s in sections if s) + footer), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------ data
def _run_store(run: Run, split: str | None) -> tuple[ImageStore, str]:
    """The run's dataset at its evaluation split (folders: read at the run's input size)."""
    dataset = run.config.dataset
    train_split = dataset.split or default_train_split(dataset.name)
    split = split or dataset.eval_split or default_eval_split(dataset.name)
    options = dict(dataset.options) if split == train_split else {}
    if dataset.name.startswith("folder:"):
        options["image_size"] = run.image_size[0]
        options.setdefault("progress", False)
    store = load_dataset(dataset.name, split=split, root=dataset.root, **options)
    return store, split


def _assignments(run: Run, store: ImageStore, split: str,
                 dataset: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Each image's cluster and confidence, and the N×K probabilities (None for an embedding-only run).
    Read back from predictions.csv when it scored this very dataset and split (no second forward pass
    over a large test set, and an embedding run's k-means clusters are the scored ones), else predicted
    in batches."""
    saved = _saved_predictions(run, len(store), split, dataset)
    if run.has_clusters:
        probabilities = saved[:, 2:] if saved is not None else run.probabilities(store.images).numpy()
        return probabilities.argmax(1), probabilities.max(1), probabilities
    from labelless.pipeline import kmeans_predictions

    features = torch.nn.functional.normalize(run.embed(store.images), dim=1)  # embed works in chunks itself
    clusters = (torch.from_numpy(saved[:, 1]).long() if saved is not None
                else kmeans_predictions(features, run.k, run.config.seed))
    centres = torch.zeros(run.k, features.shape[1]).index_add_(0, clusters, features)
    confidence = (features * torch.nn.functional.normalize(centres, dim=1)[clusters]).sum(1)
    return clusters.numpy(), confidence.numpy(), None


def _read_metrics_json(path: Path) -> dict | None:
    """metrics.json, or None with one line on stderr when it is unreadable (the report then predicts again
    and leaves out what only that file holds, e.g. the per-head ACC)."""
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        print(f"labelless: warning: {path} is unreadable ({error}); the report predicts again without it",
              file=sys.stderr)
        return None
    return saved if isinstance(saved, dict) else None


def _saved_predictions(run: Run, n: int, split: str, dataset: str) -> np.ndarray | None:
    """predictions.csv as an N×(2 + K) table (index, cluster, probabilities; N×2 for an embedding run)
    when metrics.json says it predicted this dataset's split of n images; else None."""
    csv_path = run.run_dir / "predictions.csv"
    scored = _read_metrics_json(run.run_dir / "metrics.json") if csv_path.is_file() else None
    if scored is None or scored.get("split") != split or scored.get("n") != n \
            or not same_dataset(scored.get("dataset"), dataset):
        return None
    with open(csv_path, newline="", encoding="utf-8", errors="surrogateescape") as f:
        rows = list(csv.reader(f))
    if rows and rows[0][-1:] == ["path"]:  # a folder run names each row's file last
        rows = [row[:-1] for row in rows]
    columns = 2 + (run.k if run.has_clusters else 0)
    if not rows or rows[0][:2] != ["index", "cluster"] or len(rows[0]) != columns or len(rows) - 1 != n:
        return None
    try:
        table = np.array(rows[1:], dtype=np.float64)
    except ValueError:  # a damaged file is a cache miss: the model predicts the split again
        return None
    if not np.array_equal(table[:, 0], np.arange(n)) or not ((0 <= table[:, 1]) & (table[:, 1] < run.k)).all():
        return None
    return table


# ------------------------------------------------------------------------------------------ sections
def _header(run: Run, dataset: str, split: str, n: int, store: ImageStore) -> str:
    stages = " → ".join(f"{s.name} ({s.method['name']}, {s.train.epochs} epochs)" for s in run.config.stages)
    height, width = run.image_size
    trained = "" if same_dataset(dataset, run.config.dataset.name) else f" (trained on {run.config.dataset.name})"
    rows = [("dataset", f"{dataset}, split '{split}', {n} images{trained}"),
            ("pipeline", stages), ("clusters (K)", run.k),
            ("input", f"{width}×{height}, {run.channels} channel{'s' if run.channels > 1 else ''}"),
            ("seed", run.config.seed), ("run directory", run.run_dir.resolve())]
    if store.skipped:
        rows.append(("skipped files", f"{len(store.skipped)} unreadable (listed in skipped_files.txt)"))
    return (f"<h1>{_e(run.config.name)}</h1><table class='facts'>"
            + "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows) + "</table>")


def _metrics_section(run: Run, labels: np.ndarray, clusters: np.ndarray, probabilities: np.ndarray | None,
                     split: str, dataset: str) -> str:
    metrics = cluster_metrics(labels, clusters, probabilities, 0.9 if probabilities is not None else None)
    saved = _read_metrics_json(run.run_dir / "metrics.json") or {}
    same = (saved.get("split"), saved.get("n")) == (split, len(labels)) and same_dataset(saved.get("dataset"), dataset)
    per_head = saved.get("ACC_PER_HEAD") if same else None  # scored on this very split only
    labelled = run.config.labelled_fraction
    protocol = [
        ("split scored", f"{split} ({len(labels)} images)"),
        ("head selection", _head_selection(run, saved)),
        ("labels used in training", "false" if not run.labels_used else
         f"true: {labelled:.1%} of the images" if labelled else "true: every training image (supervised reference)"),
        ("cluster → class mapping", "Hungarian (one-to-one) for ACC; majority vote for ACC_VOTE"
         + ("; metrics.json's ACC is the plain accuracy (cluster c was trained as class c), its Hungarian-matched "
            "ACC is this table's" if run.labels_used else "")),
    ]
    cells = "".join(f"<tr><th>{_e(k)}</th><td>{v:.4f}</td></tr>" for k, v in metrics.items())
    if per_head:
        cells += f"<tr><th>ACC per head (diagnostic)</th><td>{_e(', '.join(f'{a:.3f}' for a in per_head))}</td></tr>"
    return ("<section id='metrics'><h2>Metrics</h2><div class='row'><table class='metrics'>" + cells + "</table>"
            "<table class='facts'><caption>Protocol</caption>"
            + "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in protocol)
            + "</table></div>" + ("<p class='note'>CONFIDENT_FRACTION / ACC_CONFIDENT: images whose top probability "
                                  "is above 0.9.</p>" if probabilities is not None else "") + "</section>")


def _head_selection(run: Run, saved: dict) -> str:
    """What chose the clusters shown, from the run's metrics.json (any split: the choice is the run's)."""
    if not run.has_clusters:
        return f"none: the last stage learns an embedding; clusters are k-means (K {run.k}) on it"
    losses = saved.get("head_losses")
    if isinstance(losses, list) and "chosen_head" in saved:
        return (f"head {saved['chosen_head']} of {len(losses)}: the lowest mean training loss in stage "
                f"'{saved.get('chosen_head_stage')}'; no label involved")
    return "lowest training loss (multi-head methods); no label involved"


def _gallery_section(k: int, images: np.ndarray, clusters: np.ndarray, confidence: np.ndarray,
                     labels: np.ndarray | None, class_names: list[str] | None, paths: list[str] | None,
                     probabilities: bool = True) -> str:
    sizes = np.bincount(clusters, minlength=k)
    cards = []
    for c in range(k):
        members = np.flatnonzero(clusters == c)
        title = f"Cluster {c}"
        facts = f"{sizes[c]} images ({sizes[c] / len(clusters):.1%})"
        if labels is not None and len(members):
            counts = np.bincount(labels[members])
            majority = int(counts.argmax())
            facts += f" · majority <b>{_e(class_names[majority])}</b> · purity {counts[majority] / len(members):.0%}"
        if not len(members):
            cards.append(f"<div class='card'><h3>{title}</h3><p class='facts'>{facts}: empty</p></div>")
            continue
        order = members[np.argsort(-confidence[members], kind="stable")]
        best = order[:MOST_CONFIDENT]
        worst = order[MOST_CONFIDENT:][::-1][:LEAST_CONFIDENT]  # never repeats a most-confident image
        cards.append(f"<div class='card'><h3>{title}</h3><p class='facts'>{facts}</p>"
                     f"<div class='label'>most confident</div>{_thumbs(best, images, confidence, labels, class_names, paths)}"
                     + (f"<div class='label'>least confident</div>"
                        f"{_thumbs(worst, images, confidence, labels, class_names, paths)}" if len(worst) else "")
                     + "</div>")
    meaning = ("the top cluster probability" if probabilities else
               "the cosine similarity to the cluster's k-means centre")
    return ("<section id='clusters'><h2>Clusters</h2><p class='note'>Each cluster's 16 most and 8 least confident "
            f"images (confidence = {meaning}; hover for details).</p>"
            f"<div class='cards'>{''.join(cards)}</div></section>")


def _thumbs(rows: np.ndarray, images: np.ndarray, confidence: np.ndarray, labels: np.ndarray | None,
            class_names: list[str] | None, paths: list[str] | None) -> str:
    tags = []
    for i in rows:
        tip = f"#{i} · confidence {confidence[i]:.3f}"
        if labels is not None:
            tip += f" · class {class_names[labels[i]]}"
        if paths is not None:
            tip += f" · {paths[i]}"
        tags.append(f"<img src='{_data_url(plots.thumbnail_png(images[i]))}' title='{_e(tip)}' alt=''>")
    return f"<div class='thumbs'>{''.join(tags)}</div>"


def _confusion_section(labels: np.ndarray, clusters: np.ndarray, k: int, class_names: list[str]) -> str:
    k_true = max(len(class_names), int(labels.max()) + 1)
    counts = confusion_matrix(labels, clusters, k_pred=k, k_true=k_true)
    matched = hungarian_match(labels, clusters, k_pred=k, k_true=k_true)  # cluster → class
    order = sorted(matched, key=matched.get) + [c for c in range(k) if c not in matched]
    png = plots.confusion_heatmap(counts, class_names, order)
    return ("<section id='confusion'><h2>Confusion matrix</h2><p class='note'>Rows: true classes; columns: "
            "clusters reordered by the Hungarian match (unmatched clusters last). Colour: fraction of the class; "
            f"numbers: image counts.</p><img class='figure' src='{_data_url(png)}' alt='confusion matrix'></section>")


def _map_section(run: Run, store: ImageStore, clusters: np.ndarray, points: int, seed: int) -> str:
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(len(store), size=min(points, len(store)), replace=False))
    if len(sample) < 5:
        return ""
    images = store.images[torch.from_numpy(sample)]
    features = run.embed(images).numpy()  # embed works in chunks itself
    features = features.reshape(len(features), -1)
    if min(features.shape) > TSNE_DIMS:  # the usual PCA first: t-SNE's neighbour search is cheaper in 50-D
        features = PCA(TSNE_DIMS, random_state=seed).fit_transform(features)
    xy = TSNE(n_components=2, init="pca", perplexity=min(30.0, (len(sample) - 1) / 3), max_iter=TSNE_ITERATIONS,
              random_state=seed).fit_transform(features)
    png = plots.embedding_map(xy, clusters[sample], run.k, images.cpu().numpy(), seed=seed)
    return ("<section id='map'><h2>Embedding map</h2>"
            f"<p class='note'>t-SNE (scikit-learn) of the final model's embedding for {len(sample)} images sampled "
            "at random, coloured by cluster; a few points show their image.</p>"
            f"<img class='figure' src='{_data_url(png)}' alt='t-SNE map'></section>")


def _curves_section(path: Path) -> str:
    if not path.is_file():
        return ""
    lines, bad = [], []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        if line.strip():
            try:
                lines.append(json.loads(line))
            except ValueError:
                bad.append(number)
    lines = [line for line in lines if isinstance(line, dict)]
    skipped = ""
    if bad:  # a run killed mid-write leaves a partial last line
        skipped = (f" {len(bad)} unreadable line(s) of metrics.jsonl left out (line {', '.join(map(str, bad[:5]))}"
                   f"{' …' if len(bad) > 5 else ''}).")
        print(f"labelless: warning: {path}: {skipped.strip()}", file=sys.stderr)
    png = plots.training_curves(lines)
    if png is None:
        return ""
    return ("<section id='training'><h2>Training</h2><p class='note'>From metrics.jsonl: one point per epoch. "
            "Entropy is that of the predicted cluster sizes (higher = more balanced); no label is logged during "
            f"training.{_e(skipped)}</p><img class='figure' src='{_data_url(png)}' alt='training curves'></section>")


# ------------------------------------------------------------------------------------------ page
def _data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


STYLE = """
body { font: 15px/1.45 system-ui, -apple-system, 'Segoe UI', sans-serif; color: #1d2330; background: #f6f7f9;
       margin: 0 auto; max-width: 1240px; padding: 24px; }
h1 { margin: 0 0 12px; font-size: 26px; }
h2 { margin: 32px 0 8px; font-size: 20px; border-bottom: 1px solid #d5d9e0; padding-bottom: 4px; }
h3 { margin: 0 0 2px; font-size: 15px; }
nav a { margin-right: 14px; color: #2456a6; text-decoration: none; }
table { border-collapse: collapse; background: #fff; margin: 6px 16px 6px 0; }
th, td { text-align: left; padding: 4px 12px; border-bottom: 1px solid #e7e9ee; vertical-align: top; }
th { font-weight: 600; color: #4a5263; }
caption { text-align: left; font-weight: 600; padding: 4px 0; }
table.metrics td { font-variant-numeric: tabular-nums; text-align: right; min-width: 70px; }
.row { display: flex; flex-wrap: wrap; align-items: flex-start; }
.note { color: #5b6375; font-size: 13px; margin: 4px 0 10px; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(300px, 1fr)); gap: 12px; }
.card { background: #fff; border: 1px solid #dde1e8; border-radius: 8px; padding: 10px 12px; }
.card .facts { margin: 0 0 6px; font-size: 13px; color: #4a5263; }
.label { font-size: 11px; text-transform: uppercase; letter-spacing: .04em; color: #7a8294; margin: 6px 0 2px; }
.thumbs { display: grid; grid-template-columns: repeat(8, 1fr); gap: 3px; }
.thumbs img { width: 100%; aspect-ratio: 1; object-fit: cover; image-rendering: pixelated; border-radius: 2px;
              background: #eee; }
img.figure { max-width: 100%; height: auto; background: #fff; border: 1px solid #dde1e8; border-radius: 6px; }
footer { margin-top: 32px; color: #7a8294; font-size: 12px; }
"""


def _page(title: str, body: str) -> str:
    nav = "".join(f"<a href='#{anchor}'>{name}</a>" for anchor, name in
                  (("metrics", "Metrics"), ("clusters", "Clusters"), ("confusion", "Confusion"), ("map", "Map"),
                   ("training", "Training")) if f"id='{anchor}'" in body)
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>labelless report: {_e(title)}</title><style>{STYLE}</style></head>"
            f"<body><nav>{nav}</nav>{body}</body></html>\n")
