"""Runs a config end to end: load the data, train each stage in order (each hands its trained method
to the next as `pretrained`), evaluate on the split the config names, write the run directory.

Run directory: `config.yaml` (resolved), `metrics.jsonl` (training), `tb/`, `checkpoints/`,
`artefacts/` (e.g. mined neighbours), `model.safetensors` (the final stage), `predictions.csv`,
`metrics.json` (the evaluation, when labels exist).
"""
from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from labelless.config import RunConfig, save_config
from labelless.data.sources import load_dataset
from labelless.data.stores import ImageStore, to_float
from labelless.errors import UserError
from labelless.evaluate.knn import knn_accuracy
from labelless.evaluate.metrics import cluster_metrics
from labelless.methods.base import Method
from labelless.registry import METHODS, NEEDS_PREVIOUS_STAGE
from labelless.train import Trainer, export_weights, resolve_device

PROJECT_CONFIGS = Path(__file__).resolve().parents[1] / "configs"
CONFIDENT_THRESHOLD = 0.9  # LSD-C reports the share of samples above 0.9 and their ACC


@dataclass
class Run:
    """A trained pipeline: its final method, where it lives, and how to use it on new images."""

    config: RunConfig
    run_dir: Path
    method: Method
    k: int
    image_size: tuple[int, int]
    channels: int
    seconds: float = 0.0
    metrics: dict = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return next(self.method.parameters()).device

    def _float(self, images: Tensor) -> Tensor:
        if images.dtype == torch.uint8:  # N×H×W×C as an ImageStore holds them
            images = to_float(images)
        return images.to(self.device)

    @property
    @torch.no_grad()
    def has_clusters(self) -> bool:
        """False for pure embedding methods (Super-AND, SimCLR, RotNet), which have no cluster head."""
        self.method.eval()
        return self.method.cluster_logits(self._float(torch.zeros(2, *self.image_size, self.channels,
                                                                  dtype=torch.uint8))) is not None

    @torch.no_grad()
    def probabilities(self, images: Tensor) -> Tensor:
        """N×K cluster probabilities of the chosen head."""
        self.method.eval()
        logits = self.method.cluster_logits(self._float(images))
        if logits is None:
            raise UserError(f"method '{self.method.name}' learns an embedding, not clusters")
        return logits.float().softmax(1).cpu()

    def predict(self, images: Tensor) -> Tensor:
        """N cluster ids."""
        return self.probabilities(images).argmax(1)

    @torch.no_grad()
    def embed(self, images: Tensor) -> Tensor:
        self.method.eval()
        return self.method.embed(self._float(images)).float().cpu()


def build_method(name: str, params: dict, *, k: int, store: ImageStore, previous: Method | None,
                 where: str) -> Method:
    if name not in METHODS:
        raise UserError(f"{where}: unknown method '{name}': choose one of {', '.join(sorted(METHODS))}")
    if name in NEEDS_PREVIOUS_STAGE and previous is None:
        raise UserError(f"{where}: method '{name}' continues a previous stage and cannot come first")
    try:
        return METHODS[name](k=k, in_channels=store.channels, image_size=store.image_size[0], pretrained=previous,
                             **params)
    except TypeError as error:  # an unknown or missing constructor parameter in the config
        raise UserError(f"{where}: {error}") from None


def resolve_k(config: RunConfig, store: ImageStore) -> int:
    k = config.k or store.num_classes
    if k is None:
        raise UserError("the dataset has no labels to count classes: give the number of clusters with --k")
    if k < 2:
        raise UserError(f"--k must be at least 2, got {k}")
    if k >= len(store):
        raise UserError(f"--k {k} is not smaller than the number of images ({len(store)})")
    return k


def train(config: RunConfig, run_dir: str | Path | None = None, *, resume: bool = False, progress: bool = True,
          store: ImageStore | None = None) -> Run:
    """Train every stage of `config` in order; returns the Run (final method, evaluated later).

    With `resume`, each stage continues from its checkpoint in `run_dir` where one exists (a finished
    stage is just restored) and starts fresh otherwise."""
    start = time.time()
    run_dir = Path(run_dir or Path("runs") / config.name)
    if store is None:
        store = load_dataset(config.dataset.name, split=config.dataset.split, root=config.dataset.root,
                             **config.dataset.options)
    k = resolve_k(config, store)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, run_dir / "config.yaml")
    if store.skipped:
        (run_dir / "skipped_files.txt").write_text("".join(f"{path}\t{reason}\n" for path, reason in store.skipped))
    torch.manual_seed(config.seed)
    device = resolve_device(config.device)
    previous: Method | None = None
    for stage in config.stages:
        params = dict(stage.method)
        method = build_method(params.pop("name"), params, k=k, store=store, previous=previous,
                              where=f"stage '{stage.name}'")
        trainer = Trainer(stage, store, run_dir, device, seed=config.seed, progress=progress)
        # a stage not reached before the interruption starts fresh, so one command (`train --resume`)
        # serves every call of a chain of time-limited calls, the first included
        previous = trainer.fit(method, resume=resume and trainer.checkpoint_path.is_file())
    export_weights(previous, run_dir / "model.safetensors", {"method": previous.name, "k": str(k)})
    # run.json: what labelless.predict.load_run needs to rebuild the model without the data (issue 7)
    (run_dir / "run.json").write_text(json.dumps({"k": k, "image_size": list(store.image_size), "channels": store.channels,
                                                  "dataset": config.dataset.name,
                                                  "stages": [s.name for s in config.stages]}, indent=2) + "\n")
    return Run(config, run_dir, previous, k, store.image_size, store.channels, seconds=time.time() - start)


def evaluate(run: Run, store: ImageStore, split: str, dataset: str, train_store: ImageStore | None = None) -> dict:
    """Predict every image of `store`, write `predictions.csv`, and score it when labels exist.

    Labels are read here and only here, after training; a multi-head method's head was chosen by its
    loss. A pure embedding method (no cluster head) is clustered by k-means on its normalised
    embedding, and scored by weighted kNN (k 200, τ 0.1) with `train_store` as the labelled bank."""
    start = time.time()
    if run.has_clusters:
        probabilities = run.probabilities(store.images)
        predictions = probabilities.argmax(1)
        features = None
    else:
        features = torch.nn.functional.normalize(run.embed(store.images), dim=1)
        predictions, probabilities = kmeans_predictions(features, run.k, run.config.seed), None
    write_predictions(run.run_dir / "predictions.csv", predictions, probabilities)
    result: dict = {"dataset": dataset, "split": split, "n": len(store), "k": run.k}
    if store.labels is not None:
        labels = store.labels.cpu().numpy()
        probs = probabilities.numpy() if probabilities is not None else None
        result.update(cluster_metrics(labels, predictions.numpy(), probs, CONFIDENT_THRESHOLD if probs is not None else None))
        # kNN needs a bank other than the queries: a query finding itself would score 100%
        if features is not None and train_store is not None and train_store is not store \
                and train_store.labels is not None:
            bank = torch.nn.functional.normalize(run.embed(train_store.images), dim=1)
            result["KNN"] = knn_accuracy(bank, train_store.labels.cpu(), features, store.labels.cpu())
        heads = run.method.head_logits(run._float(store.images)) if features is None else None
        if heads is not None and len(heads) > 1:  # evaluation-only diagnostic: how lucky was the loss's choice
            result["ACC_PER_HEAD"] = [round(cluster_metrics(labels, h.argmax(1).cpu().numpy())["ACC"], 4)
                                      for h in heads]
    result["eval_seconds"] = time.time() - start
    (run.run_dir / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def kmeans_predictions(features: Tensor, k: int, seed: int) -> Tensor:
    from sklearn.cluster import KMeans

    return torch.from_numpy(KMeans(k, n_init=10, random_state=seed).fit_predict(features.numpy())).long()


def write_predictions(path: Path, predictions: Tensor, probabilities: Tensor | None = None) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        k = probabilities.shape[1] if probabilities is not None else 0
        writer.writerow(["index", "cluster"] + [f"prob_{c}" for c in range(k)])
        for i, cluster in enumerate(predictions.tolist()):
            row = [i, cluster]
            if probabilities is not None:
                row += [f"{p:.5f}" for p in probabilities[i].tolist()]
            writer.writerow(row)


def default_config_path(dataset: str) -> Path:
    """The default pipeline for a dataset: `configs/<dataset>/default.yaml`, else `configs/default.yaml`."""
    specific = PROJECT_CONFIGS / dataset / "default.yaml"
    return specific if specific.is_file() else PROJECT_CONFIGS / "default.yaml"
