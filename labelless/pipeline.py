"""Runs a config end to end: load the data, train each stage in order (each hands its trained method
to the next as `pretrained`), evaluate on the split the config names, write the run directory.

Run directory: `config.yaml` (resolved), `metrics.jsonl` (training), `tb/`, `checkpoints/`,
`artefacts/` (e.g. mined neighbours), `model.safetensors` (the final stage), `predictions.csv`,
`metrics.json` (the evaluation, when labels exist), `k_selection.json` (with `--k auto`).
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, get_type_hints

import torch
from torch import Tensor

from labelless.config import RunConfig, coerce, save_config
from labelless.data.folder import write_skip_list
from labelless.data.sources import load_dataset, splits_overlap
from labelless.data.stores import ImageStore, partial_labels, to_float
from labelless.errors import UserError
from labelless.evaluate.knn import knn_accuracy
from labelless.evaluate.metrics import cluster_metrics
from labelless.kselect import RULE, format_scores, scores_table, second_opinion, select_k
from labelless.methods.base import Method
from labelless.methods.scan import PIXEL_SPACES, pixel_space_features
from labelless.registry import METHODS, NEEDS_PREVIOUS_STAGE
from labelless.train import (Deadline, Trainer, distributed_info, export_weights, labels_refused, more_epochs_than_asked,
                             rank_0_value, resolve_device, steps_per_epoch, takes_labels)

PROJECT_CONFIGS = Path(__file__).resolve().parents[1] / "configs"
CONFIDENT_THRESHOLD = 0.9  # LSD-C reports the share of samples above 0.9 and their ACC
# Run.probabilities/embed/head_logits convert this many images to float at a time: a whole store as
# float takes 4× its uint8 size, and a memory-mapped store would be read into memory whole.
EVAL_BATCH = 1024
K_SELECTION_MAX_IMAGES = 10_000  # `--k auto` scores K on a random subset this large (k-means per K runs on the CPU)


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
    # how the scored head was chosen (RESULTS.md): "lowest_loss" when a stage trained several heads and
    # kept the one with the lowest training loss, "single_head", or "none" for an embedding (k-means)
    head_selection: str = "single_head"
    # with "lowest_loss": the stage that chose, its chosen head and every head's mean loss (label-free)
    head_choice: dict = field(default_factory=dict)

    @property
    def labels_used(self) -> bool:
        """True for weakly-supervised runs and supervised references: cluster c was trained as class c."""
        return (self.config.labelled_fraction is not None
                or any(bool(s.method.get("uses_labels")) for s in self.config.stages))

    @property
    def device(self) -> torch.device:
        return next(self.method.parameters()).device

    def _float(self, images: Tensor) -> Tensor:
        images = images.to(self.device)  # before the conversion: uint8 crosses in 4× fewer bytes
        return to_float(images) if images.dtype == torch.uint8 else images  # N×H×W×C as a store holds them

    def _in_chunks(self, fn, images: Tensor) -> list:
        """`fn` over EVAL_BATCH images at a time (at least one call, so that an empty input still says
        whether the method has cluster logits)."""
        self.method.eval()
        starts = range(0, max(len(images), 1), EVAL_BATCH)
        return [fn(self._float(images[start:start + EVAL_BATCH])) for start in starts]

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
        chunks = self._in_chunks(self.method.cluster_logits, images)
        if chunks[0] is None:
            raise UserError(f"method '{self.method.name}' learns an embedding, not clusters")
        return torch.cat([logits.float().softmax(1).cpu() for logits in chunks])

    def predict(self, images: Tensor) -> Tensor:
        """N cluster ids."""
        return self.probabilities(images).argmax(1)

    @torch.no_grad()
    def embed(self, images: Tensor) -> Tensor:
        return torch.cat([features.float().cpu() for features in self._in_chunks(self.method.embed, images)])

    @torch.no_grad()
    def head_logits(self, images: Tensor) -> list[Tensor] | None:
        """N×K logits of every head (multi-head methods), None for pure embedding methods."""
        chunks = self._in_chunks(self.method.head_logits, images)
        if chunks[0] is None:
            return None
        return [torch.cat([heads[h].float().cpu() for heads in chunks]) for h in range(len(chunks[0]))]


# not read from the config: the arguments build_method gives itself, and the return annotation
BUILT_PARAMS = ("k", "in_channels", "image_size", "pretrained", "return")


def build_method(name: str, params: dict, *, k: int, store: ImageStore, previous: Method | None,
                 where: str) -> Method:
    if name not in METHODS:
        raise UserError(f"{where}: unknown method '{name}': choose one of {', '.join(sorted(METHODS))}")
    if name in NEEDS_PREVIOUS_STAGE and previous is None:
        raise UserError(f"{where}: method '{name}' continues a previous stage and cannot come first")
    # each value as its constructor parameter's type: `ue: flase` is an error, not a truthy string
    hints = get_type_hints(METHODS[name].__init__)
    try:
        params = {key: coerce(value, hints[key], f"method.{key}") if key in hints and key not in BUILT_PARAMS
                  else value for key, value in params.items()}
    except UserError as error:
        raise UserError(f"{where}: {error}") from None
    try:
        return METHODS[name](k=k, in_channels=store.channels, image_size=store.image_size[0], pretrained=previous,
                             **params)
    except (TypeError, UserError) as error:  # an unknown or missing parameter, or a value out of range
        raise UserError(f"{where}: {error}") from None


def build_pipeline(config: RunConfig, k: int, store: ImageStore, *, check_train: bool = False) -> Method:
    """Every stage's method, untrained, each given the previous one as `pretrained` exactly as training
    does; returns the last. `train` builds it once before training, with `check_train` (a stage that
    cannot follow the previous one, or whose train config contradicts the method's schedule, fails in a
    second, not after hours of the stages before it) and `load_run` to rebuild a finished run
    (unchecked: runs trained before a check existed still load). Only `store`'s channels and image size
    are read."""
    method: Method | None = None
    for stage in config.stages:
        params = dict(stage.method)
        method = build_method(params.pop("name"), params, k=k, store=store, previous=method,
                              where=f"stage '{stage.name}'")
        if check_train:
            try:
                method.check_train(stage.train)
            except UserError as error:
                raise UserError(f"stage '{stage.name}': {error}") from None
    return method


NO_LABELS_TO_KEEP = ("labelled_fraction needs a dataset with labels (a folder of class subfolders: "
                     "--labels-from-folders)")


def resolve_k(config: RunConfig, store: ImageStore) -> int:
    k = config.k or store.num_classes
    if k is None:
        raise UserError(NO_LABELS_TO_KEEP if config.labelled_fraction is not None else
                        "the dataset has no labels to count classes: give the number of clusters with --k")
    if k < 2:
        raise UserError(f"--k must be at least 2, got {k}")
    if k >= len(store):
        raise UserError(f"--k {k} is not smaller than the number of images ({len(store)})")
    return k


def embedding_only(method_name: str) -> bool:
    """True for methods that learn an embedding and no cluster head (SimCLR, Super-AND, RotNet): they
    leave `Method.cluster_logits` as the base class's None, and their K is unused."""
    return METHODS[method_name].cluster_logits is Method.cluster_logits


def choose_k(config: RunConfig, embedding_stage: Method | None, store: ImageStore, k_range: range, run_dir: Path,
             resume: bool = False, pixel_space: str = "centred") -> int:
    """`--k auto`: K chosen by `labelless.kselect.select_k` on the shared embedding — the trained
    leading embedding-only stages' `embed` output, or, when the pipeline starts with a clustering stage
    (the digits and MNIST defaults: SCAN on pixel neighbours), SCAN's own neighbour space, the stage's
    `pixel_space` (`scan.pixel_space_features`). Images only: the labels never reach it. Scored on a
    random subset of at most `K_SELECTION_MAX_IMAGES` images; prints the table to stderr and writes
    `run_dir/k_selection.json`. A resumed run keeps the K it chose before, so that the checkpoints of
    later stages still fit."""
    path = run_dir / "k_selection.json"
    wanted = [k_range[0], k_range[-1]]
    if resume and path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("k_range") == wanted:
            return int(saved["k"])
    seed = config.seed
    subset = torch.randperm(len(store), generator=torch.Generator().manual_seed(seed))[:K_SELECTION_MAX_IMAGES]
    images = ImageStore(store.images[subset.sort().values.to(store.images.device)])
    if embedding_stage is None:
        features, source = pixel_space_features(images, pixel_space), PIXEL_SPACES[pixel_space]
    else:
        run = Run(config, run_dir, embedding_stage, k_range[0], store.image_size, store.channels)
        features, source = run.embed(images.images), f"the embedding of the trained '{embedding_stage.name}' stage"
    k, scores = select_k(features.float().cpu().numpy(), k_range, seed=seed)
    k = rank_0_value(k)  # under torchrun each rank's BatchNorm statistics, so its embedding, differ
    if not distributed_info().is_main:
        return k
    note = second_opinion(scores, k)
    print(f"labelless: --k auto on {source} ({len(images)} images), K range {wanted[0]}..{wanted[1]}; "
          f"rule: {RULE}\n{format_scores(scores, k)}\nlabelless: chose K = {k}"
          + (f"\nlabelless: note: {note}" if note else ""), file=sys.stderr)
    path.write_text(json.dumps({"k": k, "k_range": wanted, "embedding": source, "images": len(images),
                                "seed": seed, "rule": RULE, **({"note": note} if note else {}),
                                "scores": scores_table(scores)}, indent=2) + "\n")
    return k


def _weak_labels(config: RunConfig, store: ImageStore, k: int | None) -> Tensor | None:
    """Weakly-supervised mode (`labelled_fraction`): the labels of that fraction of each class, −1
    elsewhere — the only labels that reach training (the run records it; `partial_labels`)."""
    if config.labelled_fraction is None:
        return None
    if store.labels is None:
        raise UserError(NO_LABELS_TO_KEEP)
    classes = int(store.labels.max()) + 1
    if k != classes:  # fewer clusters cannot hold every class; more would be scored as wrong answers
        raise UserError(f"labelled_fraction trains cluster c as class c: set k to the class count "
                        f"({classes}), not {k if k is not None else 'auto'}")
    for stage in config.stages:  # refuse before any stage trains, not when the first such stage starts
        cls = METHODS.get(stage.method["name"])
        if cls is not None and not takes_labels(cls) and not stage.method.get("uses_labels"):
            raise labels_refused(stage.name, cls.name)
    return partial_labels(store.labels, config.labelled_fraction, config.seed)


def with_min_steps(config: RunConfig, n: int, say: bool = True) -> RunConfig:
    """`config` fitted to `n` images: a stage whose batch is larger than the dataset trains on batches
    of all `n` images (a folder of 300 images is not refused for a recipe's batch of 512), and each
    stage's epochs are raised, where it sets `train.min_steps`, to reach that many optimiser steps: a
    small folder gets about the training its recipe had on the datasets it was measured on.
    config.yaml, the run's JSON and every resumed call see the fitted values."""
    stages = []
    world = distributed_info().world_size
    for stage in config.stages:
        t = stage.train
        if world <= n < t.batch_size:
            if say:
                print(f"labelless: stage '{stage.name}': {n} images, fewer than a batch of {t.batch_size}, "
                      f"so batches of {n}", file=sys.stderr)
            t = dataclasses.replace(t, batch_size=n)
        per_epoch = steps_per_epoch(n, t.batch_size, world, t.drop_last)
        if t.min_steps is not None and 0 < per_epoch and per_epoch * t.epochs < t.min_steps:
            epochs = math.ceil(t.min_steps / per_epoch)
            if say:
                print(f"labelless: stage '{stage.name}': {n} images make {per_epoch} step(s) an epoch, so "
                      f"{epochs} epochs instead of {t.epochs} (train.min_steps {t.min_steps})", file=sys.stderr)
            t = dataclasses.replace(t, epochs=epochs)
        stages.append(dataclasses.replace(stage, train=t) if t is not stage.train else stage)
    return dataclasses.replace(config, stages=stages)


def train(config: RunConfig, run_dir: str | Path | None = None, *, resume: bool = False, progress: bool = True,
          store: ImageStore | None = None, k_range: range | None = None,
          on_epoch_end: Callable[[str, int, Method], None] | None = None,
          deadline: Deadline | None = None) -> Run:
    """Train every stage of `config` in order; returns the Run (final method, evaluated later).

    With `resume`, each stage continues from its checkpoint in `run_dir` where one exists (a finished
    stage is just restored) and starts fresh otherwise. With `k_range` (`--k auto`), `config.k` is
    ignored: the leading embedding-only stages train once, then `choose_k` picks K on their embedding
    and the remaining stages train with it; config.yaml and run.json record the chosen K.
    `on_epoch_end(stage, epoch, method)` is passed to every stage's Trainer (an observer). With a
    `deadline`, TimeLimitReached propagates from the stage that stopped, its epochs checkpointed: the same
    call with `resume=True` continues the chain."""
    start = time.perf_counter()
    run_dir = Path(run_dir or Path("runs") / config.name)
    if store is None:
        store = load_dataset(config.dataset.name, split=config.dataset.split, root=config.dataset.root,
                             **config.dataset.options)
    check_run_dir(run_dir, config, resume)
    k = resolve_k(config, store) if k_range is None else None
    main = distributed_info().is_main  # under torchrun, rank 0 alone writes the run's files
    config = with_min_steps(config, len(store), say=main)
    if resume:
        check_resumed_epochs(config, run_dir)
    torch.manual_seed(config.seed)
    device = resolve_device(config.device)
    labels = _weak_labels(config, store, k)
    with torch.random.fork_rng(devices=[]):  # the check must not move the training's random stream
        build_pipeline(config, k if k is not None else k_range[0], store, check_train=True)
    # written only once every check has passed: a refused call leaves no half-made run behind
    run_dir.mkdir(parents=True, exist_ok=True)
    if main:
        save_config(config, run_dir / "config.yaml")
    if store.skipped and main:
        listed = run_dir / "skipped_files.txt"
        write_skip_list(listed, store.skipped)
        print(f"labelless: the {len(store.skipped)} skipped file(s), each with its reason: {listed}", file=sys.stderr)
    previous: Method | None = None
    head_choice: dict = {}
    for stage in config.stages:
        params = dict(stage.method)
        name = params.pop("name")
        if k is None and name in METHODS and not embedding_only(name):
            k = choose_k(config, previous, store, k_range, run_dir, resume,
                         pixel_space=params.get("pixel_space", "centred"))
        # the leading embedding-only stages of `--k auto` ignore K: they get the range's first
        method = build_method(name, params, k=k if k is not None else k_range[0], store=store, previous=previous,
                              where=f"stage '{stage.name}'")
        trainer = Trainer(stage, store, run_dir, device, seed=config.seed, progress=progress,
                          on_epoch_end=on_epoch_end, labels=labels, deadline=deadline)
        # a stage not reached before the interruption starts fresh, so one command (`train --resume`)
        # serves every call of a chain of time-limited calls, the first included
        previous = trainer.fit(method, resume=resume and trainer.checkpoint_path.is_file())
        selector = getattr(previous, "selector", None)  # HeadSelector: the lowest-loss head of several
        if selector is not None and selector.loss_sum.numel() > 1:  # later stages (self-labelling) continue it
            head_choice = {"chosen_head": selector.chosen, "chosen_head_stage": stage.name,
                           "head_losses": [round(float(v), 6) for v in selector.mean_losses]}
    if k is None:  # every stage learns an embedding only: K is for the k-means that evaluate runs
        k = choose_k(config, previous, store, k_range, run_dir, resume)
    if k_range is not None:
        config = dataclasses.replace(config, k=k)
        if main:
            save_config(config, run_dir / "config.yaml")
    selection = ("lowest_loss" if head_choice else
                 "none" if embedding_only(config.stages[-1].method["name"]) else "single_head")
    run = Run(config, run_dir, previous, k, store.image_size, store.channels, seconds=time.perf_counter() - start,
              head_selection=selection, head_choice=head_choice)
    if not main:
        return run
    export_weights(previous, run_dir / "model.safetensors", {"method": previous.name, "k": str(k)})
    # run.json: what labelless.predict.load_run needs to rebuild the model without the data (issue 7)
    (run_dir / "run.json").write_text(json.dumps({"k": k, "image_size": list(store.image_size), "channels": store.channels,
                                                  "dataset": config.dataset.name,
                                                  "stages": [s.name for s in config.stages],
                                                  "labelled_images": 0 if labels is None else int((labels >= 0).sum())},
                                                 indent=2) + "\n")
    return run


def holds_run(run_dir: Path) -> list[str]:
    """What in `run_dir` a new run would overwrite: its model and checkpoints (empty: nothing)."""
    return [name for name in ("model.safetensors", "checkpoints") if (run_dir / name).exists()]


def check_run_dir(run_dir: Path, config: RunConfig, resume: bool) -> None:
    """Refuse, in one line and before any work, a run directory that cannot hold this run: a path that
    is a file or cannot be created; without `resume`, one that already holds a trained run (its model
    or checkpoints would be overwritten: every folder trains into runs/cpu-seed0 unless told
    otherwise); with `resume`, one whose run was trained on other data or with other stages."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--run-dir '{run_dir}' is a file, not a directory")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create the run directory '{run_dir}': {error.strerror or error}") from None
    trained = holds_run(run_dir)
    if not resume:
        if trained:
            raise UserError(f"'{run_dir}' already holds a run ({', '.join(trained)}): --resume continues it, "
                            f"--run-dir DIR trains a new one elsewhere (or delete that folder first)")
        return
    saved_path = run_dir / "config.yaml"
    if not trained or not saved_path.is_file():
        return
    from labelless.config import load_config

    try:
        saved = load_config(saved_path)
    except UserError:
        return  # an unreadable snapshot is overwritten; the checkpoints' own checks still apply
    was, now = saved.dataset, config.dataset
    if (was.name, was.split, was.root) != (now.name, now.split, now.root):
        raise UserError(f"--resume: '{run_dir}' was trained on {was.name}"
                        f"{'' if was.split is None else ' (' + was.split + ')'}, not {now.name}"
                        f"{'' if now.split is None else ' (' + now.split + ')'}: use another --run-dir")
    stages = lambda c: [(s.name, s.method["name"]) for s in c.stages]  # noqa: E731
    if stages(saved) != stages(config):
        raise UserError(f"--resume: '{run_dir}' holds the stages {stages(saved)}, this config has "
                        f"{stages(config)}: use another --run-dir")


def check_resumed_epochs(config: RunConfig, run_dir: Path) -> None:
    """Before any file of the run changes: no stage's checkpoint may hold more epochs than the config
    asks (the Trainer checks again; an unreadable checkpoint is left to it to explain)."""
    for stage in config.stages:
        path = run_dir / "checkpoints" / f"{stage.name}.pt"
        if not path.is_file():
            continue
        try:
            # mmap: the tensors stay on disk, only the epoch is read (the Trainer loads the file for real)
            trained = int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["epoch"])
        except Exception:  # noqa: BLE001 — the Trainer's load_checkpoint says why the file cannot be used
            continue
        if trained > stage.train.epochs:
            raise more_epochs_than_asked(stage.name, trained, stage.train.epochs, path)


def evaluate(run: Run, store: ImageStore, split: str, dataset: str, train_store: ImageStore | None = None,
             tag: str = "", train_split: str | None = None) -> dict:
    """Predict every image of `store`, write `predictions{tag}.csv`, and score it when labels exist
    (`metrics{tag}.json`; a tag such as "-train" scores a second split without overwriting the first).

    Labels are read here and only here, after training; a multi-head method's head was chosen by its
    loss. A pure embedding method (no cluster head) is clustered by k-means on its normalised
    embedding, and scored by weighted kNN (k 200, τ 0.1) with `train_store` (split `train_split`) as the
    labelled bank, unless the two share images (the same store, or splits such as `holdout` and `train`,
    `test` and `all`): a query that finds itself in the bank would be counted right. When labels
    trained the model (supervised, weakly-supervised) cluster c is class c: ACC is then the plain
    accuracy and the Hungarian-matched one, never lower, is kept as ACC_HUNGARIAN."""
    start = time.perf_counter()
    if run.has_clusters:
        probabilities = run.probabilities(store.images)
        predictions = probabilities.argmax(1)
        features = None
    else:
        features = torch.nn.functional.normalize(run.embed(store.images), dim=1)
        predictions, probabilities = kmeans_predictions(features, run.k, run.config.seed), None
    write_predictions(run.run_dir / f"predictions{tag}.csv", predictions, probabilities, store.paths)
    result: dict = {"dataset": dataset, "split": split, "n": len(store), "k": run.k, "seed": run.config.seed,
                    "labels_used_in_training": run.labels_used}
    if store.labels is not None:
        labels = store.labels.cpu().numpy()
        probs = probabilities.numpy() if probabilities is not None else None
        result.update(cluster_metrics(labels, predictions.numpy(), probs, CONFIDENT_THRESHOLD if probs is not None else None))
        if run.labels_used and run.has_clusters:  # cluster c was trained as class c: no matching, here too
            result["ACC_HUNGARIAN"] = result["ACC"]
            correct = predictions.numpy() == labels
            result["ACC"] = float(correct.mean())
            if "ACC_CONFIDENT" in result:
                result["ACC_CONFIDENT"] = float(correct[probs.max(1) > CONFIDENT_THRESHOLD].mean())
        # kNN needs a bank that holds none of the queries: a query finding itself would score 100%
        other_store = features is not None and train_store is not None and train_store is not store
        if other_store and train_split is not None and splits_overlap(dataset, train_split, split):
            result["knn_bank"] = f"none: the scored split '{split}' shares images with the training split " \
                                 f"'{train_split}', so no KNN"
        elif other_store and train_store.labels is not None:
            bank = run.method.knn_bank()
            if bank is not None and len(bank) == len(train_store):  # the method's own (Super-AND: memory bank)
                bank, result["knn_bank"] = bank.detach().float().cpu(), "the method's memory bank"
            else:
                bank, result["knn_bank"] = run.embed(train_store.images), "the training images, embedded"
            bank = torch.nn.functional.normalize(bank, dim=1)
            result["KNN"] = knn_accuracy(bank, train_store.labels.cpu(), features, store.labels.cpu())
        heads = run.head_logits(store.images) if features is None else None
        if heads is not None and len(heads) > 1:  # evaluation-only diagnostic: how lucky was the loss's choice
            result["ACC_PER_HEAD"] = [round(cluster_metrics(labels, h.argmax(1).cpu().numpy())["ACC"], 4)
                                      for h in heads]
    result.update(run.head_choice)  # what chose the scored head, label-free, even when a later stage refined it
    if train_store is not None and train_store.labels is not None:  # evaluation only: training has ended
        result.update(run.method.diagnostics(train_store.labels.cpu(), run.run_dir))
    result["eval_seconds"] = time.perf_counter() - start
    (run.run_dir / f"metrics{tag}.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def kmeans_predictions(features: Tensor, k: int, seed: int) -> Tensor:
    from sklearn.cluster import KMeans

    return torch.from_numpy(KMeans(k, n_init=10, random_state=seed).fit_predict(features.numpy())).long()


def write_predictions(path: Path, predictions: Tensor, probabilities: Tensor | None = None,
                      files: list[str] | None = None) -> None:
    """index, cluster[, prob_0..][, path]: `files` (a folder's images) names the file behind each index."""
    with open(path, "w", newline="", encoding="utf-8", errors="surrogateescape") as f:
        writer = csv.writer(f, lineterminator="\n")
        k = probabilities.shape[1] if probabilities is not None else 0
        writer.writerow(["index", "cluster"] + [f"prob_{c}" for c in range(k)] + (["path"] if files is not None else []))
        for i, cluster in enumerate(predictions.tolist()):
            row = [i, cluster]
            if probabilities is not None:
                row += [f"{p:.5f}" for p in probabilities[i].tolist()]
            writer.writerow(row + ([files[i]] if files is not None else []))


def default_config_path(dataset: str, device: str | torch.device = "cuda") -> Path:
    """The default pipeline for a dataset: `configs/<dataset>/default.yaml`, else its time-to-accuracy
    recipe `configs/<dataset>/fast.yaml` (MNIST, CIFAR-10), else the generic one —
    `configs/default.yaml` (SimCLR → SCAN → self-labelling, sized for a GPU) on a GPU and
    `configs/cpu.yaml` (SCAN on patch k-means neighbours, minutes) on a CPU, e.g. for a folder of your own images."""
    for name in ("default.yaml", "fast.yaml"):
        specific = PROJECT_CONFIGS / dataset / name
        if specific.is_file():
            return specific
    return PROJECT_CONFIGS / ("cpu.yaml" if torch.device(device).type == "cpu" else "default.yaml")
