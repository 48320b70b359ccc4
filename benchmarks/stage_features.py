"""Score the features of one stage of a finished run: k-means on them (ACC/NMI/ARI), a linear probe
(LINEAR) or weighted kNN (KNN). Evaluation only: the run is read from disk, never trained; labels reach
the scores alone.

    # issue 5: k-means on the RotNet features before LSD-C clusters them (paper: 14.3 on CIFAR-10)
    python benchmarks/stage_features.py runs/cifar10-lsd_c --stage rotnet --kmeans --split test \\
        --out benchmarks/results/rotnet-kmeans-cifar10.json
    # issue 6 §3: the comparison study's linear probes at conv3 / conv5 of a stage's backbone
    python benchmarks/stage_features.py runs/cifar10-pseudo_label --stage pseudo_label --probe --layer 3 \\
        --train-split train --split test --out benchmarks/results/pseudo_label-probe-conv3-cifar10.json
    # issue 4: the Super-AND stage of a TwoStageUC run, by its paper's weighted kNN (k 200, τ 0.1)
    python benchmarks/stage_features.py runs/cifar10-two_stage --stage super_and --knn --split test

The stage is rebuilt from `RUN_DIR/checkpoints/<stage>.safetensors` (written when the stage finished;
the last stage may also come from `model.safetensors`) with `labelless.predict.load_stage`: the stages
before it are built as training built them, those after it are not built at all. A run whose later
stages are still training (no run.json yet) works too.

Features. Without `--layer`: the stage's embedding (`Method.embed`, what kNN and `evaluate` use; for
RotNet and LSD-C the backbone's globally average-pooled last block). With `--layer L`: the map after
macro-block L (1-based) of the stage's backbone (`Backbone.forward_blocks`), taken while `embed` runs so
the method's own input view (Sobel, resizing) applies, average-pooled to G×G (`--grid G`, default 1 =
global average pooling) and flattened. The blocks are conv1…conv5 of AlexNet and VGG16-bn and stem,
layer1…layer4 (= conv1, conv2_x…conv5_x) of a ResNet, so `--layer 3` and `--layer 5` are the study's
"conv3" and "conv5" probes.

k-means (`--kmeans`): scikit-learn KMeans, K = the scored split's class count (`--k` to change it),
10 initialisations, seeded with the run's seed (`--seed`), on the plain features as LSD-C reports it
("k-means on the RotNet features"). `--normalise` L2-normalises them first, which is what
`labelless evaluate` does for embedding-only methods (pipeline.kmeans_predictions on normalised
embeddings): the default here is off, and the result records which.

Linear probe (`--probe`): `labelless.evaluate.probe.logistic_regression` (standardise, then
multinomial L2 logistic regression, L-BFGS; `linear_probe`'s model) fitted on the features and labels
of `--train-split`, scored on `--split`: LINEAR is its test accuracy, `probe.train_accuracy` its accuracy on the
fitting split (the study's two columns). Deviations from the comparison study
(../shared/papers/comparison-study-cifar10.txt, "Linear Probing"): it does not say how the maps were
reduced — its ResNet-18 kept torchvision's head (global average pooling, one fully-connected layer),
hence the default `--grid 1`; DeepCluster's probes average-pool conv maps to ~9,600 features (use
`--grid`) — and it trained the probe with SGD on augmented images, where this one is fitted to frozen
features of the un-augmented images (the linear-evaluation protocol of Zhang et al. 2016).

Weighted kNN (`--knn`): `labelless.evaluate.knn.knn_accuracy` (Wu et al. 2018's vote, the one
`labelless train` reports; `--knn-k` 200, `--knn-temperature` 0.1), queries = the L2-normalised
features of `--split`, bank = the method's own bank when it keeps one row per image of the training
split (Super-AND's memory bank: the released code's protocol, VERIFIED-DETAILS.md), else the features
of `--train-split` (default: the run's training split), embedded; the two splits must differ (a query
would find itself). The stage's label-free diagnostics scored after training (`Method.diagnostics`,
e.g. Super-AND's neighbourhood consistency per round, Fig. 4 of its paper) are added when the run's
training split has labels.

The result follows ../shared/RESULTS.md: `labels_used_in_training` is the run's (false unless it was
weakly supervised); a probe adds `"labels_used_by_probe": true`. Bad input (unknown stage, missing
weights, layer out of range, a split without labels) ends in one line and exit code 2.
"""
from __future__ import annotations

import time

START = time.perf_counter()  # before the heavy imports: they are part of the measured time

import argparse
import json
import shlex
import sys
from pathlib import Path

from labelless.errors import UserError  # (light: `import labelless` loads no torch)

SCRIPT = "python benchmarks/stage_features.py"
KMEANS_INIT = 10  # pipeline.kmeans_predictions' n_init


def parse_args(argv: list[str] | None, prog: str | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (config.yaml, checkpoints/)")
    p.add_argument("--stage", required=True, help="the stage whose features are scored (a stage name of the run's "
                                                  "config.yaml, e.g. rotnet)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--kmeans", action="store_true", help="k-means on the features → ACC, NMI, ARI")
    what.add_argument("--probe", action="store_true", help="linear probe fitted on --train-split → LINEAR")
    what.add_argument("--knn", action="store_true", help="weighted kNN, --split queries against a bank → KNN")
    p.add_argument("--layer", type=int, metavar="L",
                   help="features after macro-block L (1-based) of the stage's backbone instead of its embedding")
    p.add_argument("--grid", type=int, default=1, metavar="G",
                   help="with --layer: average-pool the map to G×G before flattening (default 1: global average)")
    p.add_argument("--split", help="split to score (default: the run's eval split, else test; all for digits)")
    p.add_argument("--train-split", help="--probe: split the probe is fitted on; --knn: the bank's split (default: "
                                         "the run's training split)")
    p.add_argument("--dataset", help="dataset to score (default: the run's)")
    p.add_argument("--data-root", help="where the dataset files are (default: the run's, else $LABELLESS_DATA, "
                                       "else ../shared/data)")
    p.add_argument("--k", type=int, help="--kmeans: number of clusters (default: the split's class count)")
    p.add_argument("--normalise", action="store_true",
                   help="L2-normalise the features first (labelless evaluate does for k-means; default off)")
    p.add_argument("--seed", type=int, help="k-means seed (default: the run's seed)")
    p.add_argument("--C", type=float, default=1.0, help="--probe: inverse L2 penalty (default 1.0)")
    p.add_argument("--max-iter", type=int, default=1000, help="--probe: L-BFGS iterations (default 1000)")
    p.add_argument("--knn-k", type=int, default=200, help="--knn: neighbours that vote (default 200)")
    p.add_argument("--knn-temperature", type=float, default=0.1, help="--knn: vote weight exp(s/τ) (default 0.1)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument("--batch-size", type=int, default=1024, help="images embedded at a time (default 1024)")
    p.add_argument("--out", help="write the result JSON (RESULTS.md) here")
    p.add_argument("--json", action="store_true", help="print the result as one JSON line, no progress bar")
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------------ features
def stage_backbone(method):
    """The `Backbone` that `method.embed` runs: `method.backbone`, or the trunk inside it (TwoStageUC's
    projected encoder continued by selflabel). Two-trunk encoders (Super-AND) have none to probe."""
    from labelless.nn.backbones import Backbone

    outer = getattr(method, "backbone", None)
    for candidate in (outer, getattr(outer, "backbone", None), getattr(getattr(method, "encoder", None), "backbone", None)):
        if isinstance(candidate, Backbone):
            return candidate
    raise UserError(f"method '{method.name}' has no single backbone to cut at a block: drop --layer to score "
                    f"its embedding")


def pool_map(features, grid: int):
    """An N×C×H×W block map average-pooled to grid×grid and flattened (N×C·grid²); N×D vectors (MLP
    blocks) pass unchanged."""
    import torch.nn.functional as F

    if features.ndim == 4:
        features = F.adaptive_avg_pool2d(features.float(), grid)
    return features.flatten(1).float()


def extract(run, images, layer: int | None, grid: int, batch_size: int, desc: str, progress: bool,
            map_shape: list | None = None):
    """N×D features of `images` (uint8 N×H×W×C): the stage's embedding, or the pooled map after block
    `layer` (1-based), captured by a forward hook while `run.embed` runs. The shape of one image's map
    (C, H, W), or (D,) for a block of vectors, is appended to `map_shape` when one is given."""
    import torch
    from tqdm import tqdm

    handle, captured = None, []

    def hook(module, inputs, output):
        if map_shape is not None and not map_shape:
            map_shape.append(tuple(output.shape[1:]))
        captured.append(pool_map(output, grid).cpu())

    if layer is not None:
        handle = stage_backbone(run.method).blocks[layer - 1].register_forward_hook(hook)
    chunks = []
    try:
        for start in tqdm(range(0, len(images), batch_size), desc=desc, unit="batch", disable=not progress,
                          dynamic_ncols=True):
            batch = images[start:start + batch_size]
            embedded = run.embed(batch)
            if layer is None:
                chunks.append(embedded.float())
                continue
            rows = torch.cat(captured) if captured else torch.empty(0)
            captured.clear()
            if len(rows) != len(batch):
                raise UserError(f"method '{run.method.name}' ran block {layer} on {len(rows)} inputs for "
                                f"{len(batch)} images: its embedding does not pass each image through it once")
            chunks.append(rows)
    finally:
        if handle is not None:
            handle.remove()
    return torch.cat(chunks)


# ------------------------------------------------------------------------------------------ scores
def kmeans_scores(features, labels, k: int, seed: int) -> dict:
    """ACC/NMI/ARI of k-means (K clusters, `KMEANS_INIT` starts, `seed`) on `features`."""
    from labelless.evaluate.metrics import as_numpy, cluster_metrics
    from labelless.pipeline import kmeans_predictions

    predictions = kmeans_predictions(features.float().cpu(), k, seed)
    return cluster_metrics(as_numpy(labels), predictions.numpy())


def probe_scores(train_features, train_labels, test_features, test_labels, C: float = 1.0,
                 max_iter: int = 1000) -> dict:
    """LINEAR (test accuracy) and LINEAR_TRAIN of `linear_probe`'s model fitted on the train features."""
    from labelless.evaluate.metrics import as_numpy
    from labelless.evaluate.probe import logistic_regression

    x_train, y_train, x_test, y_test = (as_numpy(a) for a in (train_features, train_labels, test_features, test_labels))
    model = logistic_regression(C, max_iter).fit(x_train, y_train)
    return {"LINEAR": float(model.score(x_test, y_test)), "LINEAR_TRAIN": float(model.score(x_train, y_train))}


# ------------------------------------------------------------------------------------------ the job
def _training_split(config) -> str:
    from labelless.data.sources import default_train_split

    return config.dataset.split or default_train_split(config.dataset.name)


def _load_labelled(dataset: str, split: str, root, options: dict, what: str):
    from labelless.data.sources import load_dataset

    store = load_dataset(dataset, split=split, root=root, **options)
    if store.labels is None:
        raise UserError(f"split '{split}' of {dataset} has no labels to {what}")
    return store


def _check_fits(store, run, dataset: str, split: str) -> None:
    if (tuple(store.image_size), store.channels) != (tuple(run.image_size), run.channels):
        raise UserError(f"split '{split}' of {dataset} has {store.image_size[0]}×{store.image_size[1]}×"
                        f"{store.channels} images; the run was trained on {run.image_size[0]}×{run.image_size[1]}×"
                        f"{run.channels}")


def evaluate_stage(args: argparse.Namespace, command: str) -> dict:
    from labelless.config import load_config
    from labelless.data.sources import default_eval_split
    from labelless.predict import load_stage
    from labelless.provenance import device_name, stamp
    from labelless.train import resolve_device

    run_dir = Path(args.run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"'{run_dir}' is not a run directory (no config.yaml)")
    if args.layer is None and args.grid != 1:
        raise UserError("--grid pools a block's map: it needs --layer")
    if args.grid < 1 or args.batch_size < 1:
        raise UserError("--grid and --batch-size must be at least 1")
    if args.kmeans and args.train_split is not None:
        raise UserError("--train-split is the probe's fitting split or the kNN bank's: it needs --probe or --knn")
    if not args.knn and (args.knn_k, args.knn_temperature) != (200, 0.1):
        raise UserError("--knn-k and --knn-temperature set the kNN vote: they need --knn")
    if args.knn and args.layer is not None:
        raise UserError("--knn scores the stage's embedding (its own bank holds embeddings): drop --layer")
    if args.knn and (args.knn_k < 1 or args.knn_temperature <= 0):
        raise UserError("--knn-k must be at least 1 and --knn-temperature positive")
    if args.probe and args.k is not None:
        raise UserError("--k is the number of k-means clusters: it needs --kmeans")
    config = load_config(run_dir / "config.yaml")
    names = [s.name for s in config.stages]
    if args.stage not in names:  # before the data is loaded
        raise UserError(f"run '{run_dir}' has no stage '{args.stage}': its stages are {', '.join(names)}")
    dataset = args.dataset or config.dataset.name
    root = args.data_root or config.dataset.root
    options = config.dataset.options if dataset == config.dataset.name else {}
    split = args.split or config.dataset.eval_split or default_eval_split(dataset)
    device = resolve_device(args.device)
    progress = not args.json and sys.stderr.isatty()

    store = _load_labelled(dataset, split, root, options, "score")
    k = args.k or store.num_classes
    if args.kmeans and not 2 <= k < len(store):
        raise UserError(f"--k must be between 2 and the number of images ({len(store)}), got {k}")
    run = load_stage(run_dir, args.stage, device=str(device), store=store)
    _check_fits(store, run, dataset, split)
    features_info: dict = {"source": "embedding"}
    if args.layer is not None:
        blocks = len(stage_backbone(run.method).blocks)
        if not 1 <= args.layer <= blocks:
            raise UserError(f"--layer {args.layer} is out of range: stage '{args.stage}' has {blocks} macro-blocks "
                            f"(1..{blocks})")
        features_info = {"source": "block", "layer": args.layer, "blocks": blocks}
    map_shape: list = []

    def features_of(images, name: str):
        import torch.nn.functional as F

        x = extract(run, images, args.layer, args.grid, args.batch_size, f"{args.stage} features ({name})", progress,
                    map_shape)
        return F.normalize(x, dim=1) if args.normalise else x

    test = features_of(store.images, split)
    if args.layer is not None:
        features_info["map"] = "×".join(str(n) for n in map_shape[0])
        features_info["pool"] = ("none (the block outputs vectors)" if len(map_shape[0]) != 3 else "global average"
                                 if args.grid == 1 else f"adaptive average to {args.grid}×{args.grid}")
    features_info.update(dim=int(test.shape[1]), l2_normalised=args.normalise or args.knn)  # kNN normalises
    trained_on = _training_split(config)
    result = {"method": run.method.name, "dataset": dataset, "split": split, "train_split": trained_on,
              "run": str(run_dir), "stage": args.stage, "stages": [s.name for s in run.config.stages],
              "epochs": {s.name: s.train.epochs for s in run.config.stages}, "seeds": [config.seed],
              "n": len(store), "features": features_info}
    if args.kmeans:
        seed = config.seed if args.seed is None else args.seed
        result["evaluation"] = "kmeans"
        result["kmeans"] = {"k": k, "n_init": KMEANS_INIT, "seed": seed, "l2_normalised": args.normalise}
        result["metrics"] = kmeans_scores(test, store.labels, k, seed)
    elif args.knn:
        result.update(knn_result(run, store, test, split, args, trained_on, root, options, dataset, features_of))
    else:
        from labelless.data.sources import splits_overlap

        train_split = args.train_split or trained_on
        if splits_overlap(dataset, train_split, split):  # e.g. fitted on 'all', scored on 'test'
            print(f"warning: the probe is fitted on '{train_split}', which shares images with the scored split "
                  f"'{split}'", file=sys.stderr)
        if train_split == split:
            train_store, train = store, test
        else:
            train_store = _load_labelled(dataset, train_split, root, options, "fit the probe on")
            _check_fits(train_store, run, dataset, train_split)
            train = features_of(train_store.images, train_split)
        result["evaluation"] = "linear_probe"
        result["probe"] = {"model": "standardise + multinomial logistic regression (L-BFGS)", "C": args.C,
                           "max_iter": args.max_iter, "train_split": train_split, "n_train": len(train_store)}
        scores = probe_scores(train, train_store.labels, test, store.labels, args.C, args.max_iter)
        # RESULTS.md's metrics name LINEAR only: the fitting split's accuracy is kept beside them
        result["metrics"] = {"LINEAR": scores["LINEAR"]}
        result["probe"]["train_accuracy"] = scores["LINEAR_TRAIN"]
    # the stages that trained these features: the chosen one and those before it
    uses_labels = config.labelled_fraction is not None or any(s.method.get("uses_labels") for s in run.config.stages)
    result["labels_used_in_training"] = bool(uses_labels)
    if args.probe:
        result["labels_used_by_probe"] = True
    result.update(device=device_name(str(device)), wall_seconds=round(time.perf_counter() - START, 3), **stamp(command))
    return result


def knn_result(run, store, queries, split: str, args: argparse.Namespace, trained_on: str, root, options: dict,
               dataset: str, features_of) -> dict:
    """KNN of the `queries` (features of `store`, split `split`) against the method's bank or the embedded
    bank split, and the method's diagnostics on the training split's labels (see the module docstring)."""
    import torch.nn.functional as F

    from labelless.data.sources import splits_overlap
    from labelless.evaluate.knn import knn_accuracy

    bank_split = args.train_split or trained_on
    if splits_overlap(dataset, bank_split, split):
        raise UserError(f"--knn needs a bank split that shares no image with the queries' ('{split}'), got "
                        f"'{bank_split}': a query would find itself")
    bank_store = _load_labelled(dataset, bank_split, root, options, "vote with")
    _check_fits(bank_store, run, dataset, bank_split)
    own = run.method.knn_bank() if bank_split == trained_on else None
    if own is not None and len(own) == len(bank_store):
        bank, source = own.detach().float().cpu(), "the method's memory bank"
    else:
        bank, source = features_of(bank_store.images, bank_split), "the bank split, embedded"
    bank, queries = F.normalize(bank.float(), dim=1), F.normalize(queries.float(), dim=1)
    out = {"evaluation": "knn",
           "knn": {"k": args.knn_k, "temperature": args.knn_temperature, "bank": source, "bank_split": bank_split,
                   "n_bank": len(bank_store)},
           "metrics": {"KNN": knn_accuracy(bank, bank_store.labels.cpu(), queries, store.labels.cpu(), args.knn_k,
                                           args.knn_temperature)}}
    if bank_split == trained_on:  # evaluation only: the labels of the images the stage trained on
        out.update(run.method.diagnostics(bank_store.labels.cpu(), Path(args.run_dir)))
    return out


def _print(result: dict) -> None:
    shown = {**{key: result[key] for key in ("method", "stage", "dataset", "split", "evaluation")},
             "features": ", ".join(f"{k} {v}" for k, v in result["features"].items()), **result["metrics"],
             **{f"consistency round {r}": v for r, v in result.get("neighbourhood_consistency", {}).items()},
             "wall_seconds": result["wall_seconds"]}
    width = max(len(key) for key in shown)
    for key, value in shown.items():
        print(f"{key:<{width}}  {f'{value:.4f}' if isinstance(value, float) and key != 'wall_seconds' else value}")


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv, prog)
    try:
        result = evaluate_stage(args, shlex.join([*SCRIPT.split(), *argv]))
    except UserError as error:
        print(f"stage_features: error: {error}", file=sys.stderr)
        return 2
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
    if args.json:
        print(json.dumps(result))
    else:
        _print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
