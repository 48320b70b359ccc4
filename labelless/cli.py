"""`labelless` command line: a thin layer over the Python API with one vocabulary everywhere
(`--dataset`, `--k`, `--device`, `--seed`, `--run-dir`, `--json`). Mistakes a user can fix end in one
line on stderr and exit code 2, never a traceback; a diverged training exits 1, a `--time-limit` stop 75."""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

from labelless.allocator import tune_by_reexec
from labelless.errors import EXIT_TIME_LIMIT, TimeLimitReached, TrainingDiverged, UserError
from labelless.provenance import device_name

START = time.perf_counter()
STARTED = time.monotonic()  # `--time-limit` counts from here: the command's start (imports are before it)

DATASET_HELP = ("dataset name: cifar10, mnist, digits (bundled, no download), cifar100, cifar20, stl10, svhn, "
                "or folder:PATH for your own images")


def _add_data_options(p: argparse.ArgumentParser, split_help: str) -> None:
    p.add_argument("--dataset", required=True, help=DATASET_HELP)
    p.add_argument("--split", help=split_help)
    p.add_argument("--data-root", help="where the dataset files are (default: $LABELLESS_DATA, else ../shared/data)")
    p.add_argument("--labels-from-folders", action="store_true",
                   help="folder:PATH only: take labels from the first-level subfolder names (evaluation only)")
    p.add_argument("--image-size", type=int,
                   help="folder:PATH only: resize to this side (short side + centre crop); default keeps equal "
                        "sizes, else 64 px")


def _folder_options(args: argparse.Namespace) -> dict:
    if args.dataset.startswith("folder:"):
        return {"labels_from_folders": args.labels_from_folders, "image_size": args.image_size}
    given = [flag for flag, value in (("--labels-from-folders", args.labels_from_folders),
                                      ("--image-size", args.image_size)) if value not in (False, None)]
    if given:  # a built-in dataset has its own labels and size: refused, not silently ignored
        raise UserError(f"{' and '.join(given)} only appl{'y' if len(given) > 1 else 'ies'} to folder:PATH, "
                        f"not to '{args.dataset}'")
    return {}


def _print(result: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result))
        return
    width = max(len(k) for k in result)
    for key, value in result.items():
        shown = f"{value:.4f}" if isinstance(value, float) else value
        print(f"{key:<{width}}  {shown}")


def without_options(argv: list[str], options: dict[str, int]) -> list[str]:
    """`argv` without every occurrence of each option in `options` and the number of words it takes
    after it (e.g. `{"--seeds": 3, "--json": 0}`): what the benchmark scripts strip from a command they
    hand on or compare."""
    words, kept = list(argv), []
    while words:
        word = words.pop(0)
        if word in options:
            del words[:options[word]]
        else:
            kept.append(word)
    return kept


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got '{text}'") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got '{text}'")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _k_choice(args: argparse.Namespace) -> tuple[int | None, range | None]:
    """(K, None) for `--k N`, (None, range) for `--k auto [--k-range LOW..HIGH]`, (None, None) without --k."""
    from labelless.kselect import parse_k_range

    if args.k != "auto":
        if args.k_range is not None:
            raise UserError("--k-range needs --k auto")
        if args.k is None:
            return None, None
        try:
            k = int(args.k)
        except ValueError:
            k = 0
        if k < 2 or str(k) != args.k.strip():
            raise UserError(f"--k must be a whole number of clusters, at least 2, or 'auto', got '{args.k}'")
        return k, None
    return None, parse_k_range(args.k_range or "2..30")


def _add_labelled_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--labelled-fraction", type=float, metavar="F",
                   help="weakly-supervised mode: add cross-entropy on the labels of a random fraction F of each "
                        "class (e.g. 0.01) — the only labels that reach training; the result records it")


def _add_k_options(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--k", help=f"number of clusters (default: {default}), or 'auto' to choose it without labels: "
                               "the embedding stage trains once, then K is scored by silhouette, Davies-Bouldin and "
                               "stability (see k_selection.json in the run directory)")
    p.add_argument("--k-range", metavar="LOW..HIGH", help="with --k auto: the Ks to try, inclusive (default 2..30)")


# ------------------------------------------------------------------------------------------ commands
def cmd_list(args: argparse.Namespace) -> int:
    from labelless import registry

    names = {"methods": registry.list_methods, "datasets": registry.list_datasets,
             "backbones": registry.list_backbones, "augments": registry.list_augments}[args.what]()
    print("\n".join(names))
    return 0


def cmd_baseline(args: argparse.Namespace) -> int:
    from labelless.baselines import BASELINES, run_baseline
    from labelless.data.sources import load_dataset

    if args.name not in BASELINES:
        raise UserError(f"unknown baseline '{args.name}': choose one of {', '.join(BASELINES)}")
    options = _folder_options(args)
    if args.dataset in ("digits",) or args.dataset.startswith("folder:"):
        train, test, train_split = load_dataset(args.dataset, root=args.data_root, **options), None, "all"
        if BASELINES[args.name].supervised:
            raise UserError(f"'{args.name}' is supervised and needs a dataset with train and test splits")
    else:
        train = load_dataset(args.dataset, split="train", root=args.data_root)
        test = load_dataset(args.dataset, split="test", root=args.data_root)
        train_split = "train"
    k = args.k or train.num_classes
    if k is None:
        raise UserError("the dataset has no labels: give --k")
    out = run_baseline(args.name, train, test, k, subsample=args.subsample, seed=args.seed, train_split=train_split)
    result = {**out.pop("metrics"), "n": out["n_scored"], "k": k, "split": out["split"], "dataset": args.dataset,
              "seconds": time.perf_counter() - START, "method": f"baseline:{args.name}", "n_train": out["n"],
              "pca_dims": out["pca_dims"], "labels_used_in_training": out["labels_used_in_training"]}
    _print(result, args.json)
    return 0


def _scores(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k.isupper() or k in ("n", "k", "split", "dataset", "seed")}


def _run_result(run, metrics: dict, dataset: str, train_split: str, also: dict | None = None,
                overrides: list[str] | None = None) -> dict:
    """The JSON of `run`/`train` (RESULTS.md's fields): a single-stage config is named by its method,
    a pipeline by its stages; `variant` = the config's name and the overrides it ran with."""
    from labelless.config import method_label

    stages = run.config.stages
    return {**_scores(metrics),
            "dataset": dataset, "train_split": train_split, "seconds": time.perf_counter() - START,
            "train_seconds": run.seconds,
            "method": method_label(stages),
            "epochs": stages[0].train.epochs if len(stages) == 1 else {s.name: s.train.epochs for s in stages},
            "head_selection": run.head_selection,
            "variant": " ".join([run.config.name, *(overrides or [])]),
            **({"also_scored": {split: _scores(m) for split, m in also.items()}} if also else {}),
            "labels_used_in_training": run.labels_used,
            **({"labelled_fraction": run.config.labelled_fraction} if run.config.labelled_fraction is not None else {}),
            "device": device_name(str(run.device)),
            "run_dir": str(run.run_dir)}


def _train_and_evaluate(config, args: argparse.Namespace, k_range: range | None = None) -> int:
    from labelless.data.sources import canonical_name, default_eval_split, default_train_split, load_dataset
    from labelless.pipeline import evaluate, train
    from labelless.report import write_report
    from labelless.train import end_distributed

    config.dataset.name = canonical_name(config.dataset.name)  # a folder absolute: report, --resume from anywhere
    from labelless.pipeline import check_run_dir

    check_run_dir(Path(args.run_dir), config, args.resume)  # before the images are read
    store = load_dataset(config.dataset.name, split=config.dataset.split, root=config.dataset.root,
                         **config.dataset.options)
    eval_split = config.dataset.eval_split or default_eval_split(config.dataset.name)
    train_split = config.dataset.split or default_train_split(config.dataset.name)
    # loaded before training, so that a split that does not exist fails in a second, not after the run
    eval_store = store if eval_split == train_split else load_dataset(config.dataset.name, split=eval_split,
                                                                      root=config.dataset.root)
    also_stores = {split: store if split == train_split else load_dataset(config.dataset.name, split=split,
                                                                         root=config.dataset.root)
                   for split in dict.fromkeys(args.also_score) if split != eval_split}
    if eval_split == "holdout" and train_split != "fit":
        print(f"warning: scored on 'holdout' after training on '{train_split}', which contains it; tune with "
              f"--set dataset.split=fit", file=sys.stderr)
    if config.labelled_fraction is not None and eval_split == train_split:
        print(f"warning: weakly-supervised run scored on the split it trains on ('{eval_split}'): the "
              f"labelled images are part of the score", file=sys.stderr)
    deadline = None
    if args.time_limit is not None:
        from labelless.train import Deadline

        deadline = Deadline.after(args.time_limit * 60, start=STARTED)
    run = train(config, args.run_dir, resume=args.resume, progress=not args.json, store=store,
                k_range=k_range, deadline=deadline)
    if not end_distributed():  # under torchrun rank 0 alone evaluates, reports and prints: one result
        return 0
    metrics = evaluate(run, eval_store, eval_split, config.dataset.name, train_store=store, train_split=train_split)
    also = {}
    for split, other in also_stores.items():  # no kNN for a split that shares images with the bank
        also[split] = evaluate(run, other, split, config.dataset.name, tag=f"-{split}",
                               train_store=None if other is store else store, train_split=train_split)
    if not args.no_report:
        write_report(run.run_dir, store=eval_store, split=eval_split, device=str(run.device),
                     dataset=config.dataset.name)
    _print(_run_result(run, metrics, config.dataset.name, train_split, also, getattr(args, "set", None)), args.json)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from labelless.config import load_config
    from labelless.pipeline import default_config_path

    dataset_key = "folder" if args.dataset.startswith("folder:") else args.dataset
    k, k_range = _k_choice(args)
    overrides = [f"seed={args.seed}", f"device={args.device}"] + _labelled_override(args) + (args.set or [])
    if k is not None:
        overrides.append(f"k={k}")
    from labelless.train import resolve_device

    config = load_config(default_config_path(dataset_key, resolve_device(args.device)), overrides)
    config.dataset.name = args.dataset
    config.dataset.root = args.data_root or config.dataset.root
    config.dataset.options.update({k: v for k, v in _folder_options(args).items() if v is not None})
    if args.split:
        config.dataset.eval_split = args.split
    args.run_dir = args.run_dir or _default_run_dir(Path("runs") / f"{config.name}-seed{args.seed}", args.resume)
    return _train_and_evaluate(config, args, k_range)


def _default_run_dir(base: Path, resume: bool) -> str:
    """`base`, or, when it holds an earlier trained run and this is no --resume, the first free
    `base-2`, `base-3`, … (said on stderr): a second `make run`, or a second folder, never overwrites the
    first run and never fails for it. An explicit --run-dir holding a run is refused instead."""
    from labelless.pipeline import holds_run

    if resume or not holds_run(base):
        return str(base)
    n = 2
    while holds_run(chosen := base.with_name(f"{base.name}-{n}")) or chosen.is_file():
        n += 1
    print(f"labelless: {base} holds an earlier run; this one goes to {chosen} (--run-dir DIR to choose)", file=sys.stderr)
    return str(chosen)


def _labelled_override(args: argparse.Namespace) -> list[str]:
    fraction = args.labelled_fraction
    if fraction is None:
        return []
    if not 0 < fraction <= 1:
        raise UserError(f"--labelled-fraction must be in (0, 1], e.g. 0.01 for 1% of each class, not {fraction}")
    return [f"labelled_fraction={fraction}"]


def cmd_train(args: argparse.Namespace) -> int:
    from labelless.config import load_config

    k, k_range = _k_choice(args)
    overrides = [f"{key}={value}" for key, value in (("k", k), ("seed", args.seed), ("device", args.device))
                 if value is not None] + _labelled_override(args)
    config = load_config(args.config, (args.set or []) + overrides)
    args.run_dir = args.run_dir or _default_run_dir(
        Path("runs") / (config.name + (f"-seed{args.seed}" if args.seed is not None else "")), args.resume)
    return _train_and_evaluate(config, args, k_range)


def cmd_evaluate(args: argparse.Namespace) -> int:
    import numpy as np

    from labelless.data.sources import default_eval_split, load_dataset
    from labelless.evaluate.metrics import cluster_metrics

    path = Path(args.predictions)
    run_k = None  # K of the run whose directory was given: run.json records it
    if path.is_dir():
        run_k = _recorded_k(path / "run.json")
        path = path / "predictions.csv"
    if not path.is_file():
        raise UserError(f"no predictions file at {path}")
    index, clusters, probabilities = _read_predictions(path)
    split = args.split or default_eval_split(args.dataset)  # the split scored is the split recorded
    store = load_dataset(args.dataset, split=split, root=args.data_root, **_folder_options(args))
    if store.labels is None:
        raise UserError(f"dataset '{args.dataset}' has no labels to evaluate against")
    if index.max() >= len(store):
        raise UserError(f"{path}: index {int(index.max())} is outside the {len(store)} images of that split")
    labels = store.labels.numpy()[index]
    if len(index) < len(store):  # e.g. another dataset's predictions, or a partial file: say what was scored
        print(f"labelless: warning: {path} predicts {len(index)} of the {len(store)} images of that split: "
              f"the scores cover those {len(index)} only", file=sys.stderr)
    metrics = cluster_metrics(labels, clusters, probabilities, 0.9 if probabilities is not None else None)
    # K is the width of the probability columns, else the run's recorded K; a bare CSV of clusters only
    # tells how many clusters it uses (fewer than K when some stayed empty), so that is what is said
    k = probabilities.shape[1] if probabilities is not None else run_k
    _print({**metrics, "n": len(index), **({"k": k} if k is not None else {}),
            "clusters_used": int(np.unique(clusters).size), "split": split,
            "dataset": args.dataset, "seconds": time.perf_counter() - START}, args.json)
    return 0


def _recorded_k(path: Path) -> int | None:
    """The K a run directory's run.json records, or None when it is missing or unreadable."""
    try:
        k = json.loads(path.read_text(encoding="utf-8")).get("k")
    except (OSError, ValueError, AttributeError):
        return None
    return k if isinstance(k, int) else None


def _read_predictions(path: Path):
    """index, cluster and (if the header names prob_0..prob_{K-1}) probabilities (a last `path` column is
    ignored), each row checked: a value
    that is not a whole number, a repeated index, a probability outside [0, 1] or a cluster without its
    probability column is a one-line error naming the line, never truncated or scored."""
    import csv
    import math

    import numpy as np

    with open(path, newline="") as f:
        rows = [(number, row) for number, row in enumerate(csv.reader(f), start=1) if row]  # blank lines hold nothing
    if not rows or [v.strip() for v in rows[0][1][:2]] != ["index", "cluster"]:
        raise UserError(f"{path}: the first line must be 'index,cluster[,prob_0,...]'")
    header = [v.strip() for v in rows[0][1]]
    if header[-1] == "path":  # a folder run's predictions.csv names each index's file last
        header = header[:-1]
        rows = [(number, row[:len(header)]) for number, row in rows]
    k = len(header) - 2
    if header[2:] != [f"prob_{c}" for c in range(k)]:
        raise UserError(f"{path}: after index,cluster the header must name prob_0..prob_{max(k - 1, 0)}, "
                        f"got {','.join(header[2:])}")
    if len(rows) == 1:
        raise UserError(f"{path}: no predictions")

    def whole(value: str, number: int, what: str) -> int:
        try:
            number_value = float(value)
        except ValueError:
            raise UserError(f"{path}: line {number}: {what} {value.strip()!r} is not a number") from None
        if not number_value.is_integer() or number_value < 0:
            raise UserError(f"{path}: line {number}: {what} {value.strip()!r} is not a whole number ≥ 0")
        return int(number_value)

    index, clusters, probabilities, seen = [], [], [], {}
    for number, row in rows[1:]:
        if len(row) != len(header):
            raise UserError(f"{path}: line {number} has {len(row)} columns, the header {len(header)}")
        i, c = whole(row[0], number, "index"), whole(row[1], number, "cluster")
        if i in seen:
            raise UserError(f"{path}: line {number}: index {i} again (first on line {seen[i]})")
        seen[i] = number
        if k:
            if c >= k:
                raise UserError(f"{path}: line {number}: cluster {c} has no column among prob_0..prob_{k - 1}")
            try:
                p = [float(v) for v in row[2:]]
            except ValueError as error:
                raise UserError(f"{path}: line {number}: a probability is not a number ({error})") from None
            if not all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in p):
                raise UserError(f"{path}: line {number}: probabilities must lie in [0, 1]")
            probabilities.append(p)
        index.append(i)
        clusters.append(c)
    return (np.array(index, dtype=np.int64), np.array(clusters, dtype=np.int64),
            np.array(probabilities, dtype=np.float64) if k else None)


def cmd_demo(args: argparse.Namespace) -> int:
    from labelless.demo_margin import demo_margin

    print(demo_margin(args.out, gammas=tuple(args.gamma)))
    return 0


BENCHMARKS = {"throughput": "throughput", "tta": "time_to_accuracy"}  # `labelless bench NAME` → benchmarks/<file>.py


def load_benchmark(stem: str):
    """benchmarks/<stem>.py as a module (benchmarks/ is not a package and ships only with the source)."""
    import importlib.util

    script = Path(__file__).resolve().parents[1] / "benchmarks" / f"{stem}.py"
    if not script.is_file():
        raise UserError(f"benchmark '{stem}' needs the source checkout ({script} is missing)")
    spec = importlib.util.spec_from_file_location(f"labelless_bench_{stem}", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cmd_bench(args: argparse.Namespace) -> int:
    return load_benchmark(BENCHMARKS[args.name]).main(args.rest, prog=f"labelless bench {args.name}")


def cmd_predict(args: argparse.Namespace) -> int:
    from labelless.data.folder import _shown, write_skip_list
    from labelless.predict import (
        check_sort_target,
        check_writable,
        load_run,
        predict_files,
        sort_into,
        write_predictions_csv,
    )

    out = Path(args.out)
    if out.is_dir():
        raise UserError(f"--out '{_shown(str(out))}' is a folder: name the CSV file to write, "
                        f"e.g. {_shown(str(out / 'predictions.csv'))}")
    check_writable(out.parent)
    if args.copy and not args.sort_into:
        raise UserError("--copy needs --sort-into DIR (it copies the images there instead of linking them)")
    if args.sort_into:
        check_sort_target(Path(args.sort_into), args.images)
        check_writable(Path(args.sort_into))
    run = load_run(args.run_dir, device=args.device)
    predictions = predict_files(run, args.images, batch_size=args.batch_size)
    if predictions.resized:
        height, width = run.image_size
        print(f"labelless: {predictions.resized} image(s) resized to the run's input size {width}×{height} "
              "(short side + centre crop, as in training)", file=sys.stderr)
    if predictions.converted:
        wanted = "grey" if run.channels == 1 else "colour"
        print(f"labelless: {predictions.converted} image(s) converted to {wanted}, the run's input "
              f"({run.channels} channel{'s' if run.channels > 1 else ''}): clusters learnt on "
              f"{wanted} images may not fit them", file=sys.stderr)
    skipped_list = None
    if predictions.skipped:
        skipped_list = out.with_name(out.stem + ".skipped.txt")
        write_skip_list(skipped_list, predictions.skipped)
        listed = ", ".join(f"{_shown(p)} ({why})" for p, why in predictions.skipped[:5])
        more = f" and {len(predictions.skipped) - 5} more" if len(predictions.skipped) > 5 else ""
        print(f"labelless: skipped {len(predictions.skipped)} unreadable file(s): {listed}{more}; "
              f"all of them, each with its reason: {_shown(str(skipped_list))}", file=sys.stderr)
    write_predictions_csv(out, predictions, with_probabilities=args.probs)
    if args.sort_into:
        sort_into(Path(args.sort_into), predictions, copy=args.copy)
    counts = predictions.clusters.bincount(minlength=run.k).tolist()
    _print({"n": len(predictions.paths), "skipped": len(predictions.skipped),
            **({"skipped_list": str(skipped_list)} if skipped_list else {}), "k": run.k,
            "cluster_sizes": " ".join(map(str, counts)), "out": str(out),
            "sorted_into": args.sort_into or "-", "seconds": time.perf_counter() - START}, args.json)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from labelless.data.sources import same_dataset
    from labelless.report import write_report

    store, split = None, args.split
    if args.dataset:
        from labelless.config import load_config
        from labelless.data.sources import default_eval_split, load_dataset
        from labelless.predict import read_run_info

        options = _folder_options(args)
        if options and options["image_size"] is None:  # show the images as the model saw them
            options["image_size"] = read_run_info(args.run_dir).image_size[0]
        if split is None:  # the run's own evaluation split for its own dataset, else the dataset's usual one
            trained = load_config(Path(args.run_dir) / "config.yaml").dataset
            split = (trained.eval_split if same_dataset(trained.name, args.dataset) else None) \
                or default_eval_split(args.dataset)
        store = load_dataset(args.dataset, split=split, root=args.data_root, **options)
    path = write_report(args.run_dir, store=store, split=split, dataset=args.dataset)
    print(path)
    return 0


# ------------------------------------------------------------------------------------------ parser
class OneLineParser(argparse.ArgumentParser):
    """A usage mistake ends in one line, like every other error (argparse prints the usage block first);
    the subcommands' parsers are of this class too (add_subparsers' default), and so are those of the
    benchmarks `labelless bench` runs."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="labelless", description="Unsupervised image classification: learn K classes with no labels.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="train the default pipeline on a dataset, evaluate, write the run directory",
                       description="The one-shot job: train the dataset's default pipeline (configs/<dataset>/"
                                   "default.yaml, else its fast.yaml, else configs/default.yaml on a GPU and "
                                   "configs/cpu.yaml on a CPU), score it when labels exist, write runs/<name>/.")
    _add_data_options(p, "split to score (default: test where it exists, else all); 'holdout' (a fixed 10%% of "
                         "train) with --set dataset.split=fit tunes without the test split")
    _add_k_options(p, "the dataset's class count")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (GPU when present)")
    p.add_argument("--seed", type=int, default=0, help="random seed; report mean ± std over several")
    _add_labelled_option(p)
    p.add_argument("--run-dir", help="where to write the run (default: runs/<config name>-seed<seed>)")
    _add_chain_options(p)
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config value, e.g. --set stages.0.train.epochs=50 (repeatable)")
    p.add_argument("--json", action="store_true", help="print one JSON object (keys as in RESULTS.md) instead of a table")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("train", help="train a YAML config (a method or a pipeline of stages)")
    p.add_argument("--config", required=True, help="YAML file, e.g. configs/digits/default.yaml")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value (repeatable)")
    _add_k_options(p, "the config's k, else the dataset's class count")
    p.add_argument("--device", help="cpu, cuda or auto (default: the config's device)")
    p.add_argument("--seed", type=int, help="random seed (default: the config's seed); report mean ± std over several")
    _add_labelled_option(p)
    p.add_argument("--run-dir", help="where to write the run (default: runs/<config name>, with --seed S "
                                     "runs/<config name>-seed<S>)")
    _add_chain_options(p)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="score a predictions CSV (or a run directory) against a labelled dataset")
    p.add_argument("predictions", help="predictions.csv with columns index,cluster[,prob_0..], or a run directory")
    _add_data_options(p, "the split the CSV's index refers to (default: test, or all for digits/folders)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("baseline", help="classic reference: kmeans, pca-kmeans, pca-logreg, pca-svm, pca-rf, pca-knn",
                       description="Unsupervised (kmeans, pca-kmeans) and supervised (pca-*: fitted on train with "
                                   "labels, scored on test) references from the comparison study.")
    p.add_argument("name", help="kmeans | pca-kmeans | pca-logreg | pca-svm | pca-rf | pca-knn")
    _add_data_options(p, "ignored: supervised baselines fit train and score test; unsupervised score all")
    p.add_argument("--k", type=_positive, help="clusters for kmeans (default: the class count)")
    p.add_argument("--subsample", type=_positive, help="fit on a random N of the train images (SVM on 50k is slow)")
    p.add_argument("--seed", type=int, default=0, help="random seed for subsampling and k-means")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.set_defaults(func=cmd_baseline)

    p = sub.add_parser("bench", help="run a benchmark from benchmarks/ (throughput, tta); its options follow the name",
                       description="Benchmarks write benchmarks/results/*.json (RESULTS.md). "
                                   "`labelless bench throughput --help` lists the benchmark's own options.")
    p.add_argument("name", choices=sorted(BENCHMARKS), help="which benchmark: throughput, or tta (time to accuracy)")
    p.add_argument("rest", nargs=argparse.REMAINDER, help="the benchmark's own options")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("predict", help="cluster new images with a trained run; write a CSV, optionally sort the files",
                       description="Rebuilds the run from RUN_DIR/{config.yaml, run.json, model.safetensors} (the "
                                   "exported trio alone is enough) and preprocesses like training: the run's input "
                                   "size (short side + centre crop) and channels.")
    p.add_argument("run_dir", help="a run directory, or a folder with its exported config.yaml, run.json and "
                                   "model.safetensors")
    p.add_argument("images", nargs="+", help="image files and/or folders (searched recursively; unreadable files "
                                             "are skipped and listed)")
    p.add_argument("--out", default="predictions.csv",
                   help="CSV with columns path,cluster,confidence[,prob_0..] (default: predictions.csv)")
    p.add_argument("--probs", action="store_true", help="add the full probability vector (prob_0..prob_K-1)")
    p.add_argument("--sort-into", metavar="DIR",
                   help="link each image into DIR/cluster_XX/ to browse the clusters in a file manager")
    p.add_argument("--copy", action="store_true", help="with --sort-into: copy the files instead of symlinking them")
    p.add_argument("--batch-size", type=_positive, default=256,
                   help="images decoded and predicted at once (default 256; lower it for very large inputs)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (GPU when present)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("report", help="(re)write RUN_DIR/report.html: metrics, galleries, confusion, t-SNE, curves",
                       description="A self-contained HTML page (images inlined, no network). The images come from "
                                   "the run's own dataset and evaluation split unless --dataset is given.")
    p.add_argument("run_dir", help="the run directory")
    p.add_argument("--dataset", help=DATASET_HELP + " (default: the run's dataset)")
    p.add_argument("--split", help="split to show and score (default: the run's evaluation split)")
    p.add_argument("--data-root", help="where the dataset files are (default: $LABELLESS_DATA, else ../shared/data)")
    p.add_argument("--labels-from-folders", action="store_true",
                   help="folder:PATH only: take labels from the first-level subfolder names (evaluation only)")
    p.add_argument("--image-size", type=int, help="folder:PATH only: resize to this side (default: the run's)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("demo", help="margin: the entropy-clustering margin demo (decision regions for several γ)",
                       description="Zhang & Boykov's toy: 2-D blobs, a linear softmax classifier trained with the "
                                   "entropy clustering loss and γ‖v‖²; one panel per γ, saturation = confidence.")
    p.add_argument("name", choices=["margin"], help="which demo")
    p.add_argument("--out", default="margin.png", help="PNG to write (default: margin.png)")
    p.add_argument("--gamma", type=float, nargs="+", default=[0.0, 0.01, 0.1], help="margin weights, one panel each")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("list", help="list registered methods, datasets, backbones or augmentations")
    p.add_argument("what", choices=["methods", "datasets", "backbones", "augments"], help="which registry to list")
    p.set_defaults(func=cmd_list)
    return parser


def _add_chain_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--resume", action="store_true",
                   help="continue each stage from its checkpoint in --run-dir (stages without one start fresh): "
                        "repeat the same command to chain time-limited calls")
    p.add_argument("--time-limit", type=positive_float, metavar="MIN",
                   help="stop at the last epoch end that fits in MIN minutes from the command's start, checkpoint, "
                        f"and exit {EXIT_TIME_LIMIT}; the same command with --resume continues (chains of "
                        "time-limited calls; every call trains at least one epoch)")
    p.add_argument("--also-score", action="append", metavar="SPLIT", default=[],
                   help="after training, score this split too (repeatable; e.g. train, for papers that report "
                        "it): its metrics go to the JSON's also_scored, RUN_DIR/metrics-SPLIT.json and "
                        "predictions-SPLIT.csv")
    p.add_argument("--no-report", action="store_true",
                   help="skip RUN_DIR/report.html (its t-SNE takes seconds to minutes); `labelless report RUN_DIR` "
                        "writes it later")


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # the command line itself, not a call from Python
        tune_by_reexec()
    parser = build_parser()
    args = parser.parse_args(argv)
    with warnings.catch_warnings():
        warnings.showwarning = _one_line_warning
        return _dispatch(args)


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """labelless's own warnings (skipped files, collapse, changed settings) as one line on stderr, without
    the source line Python's default format echoes; other libraries' keep their usual form."""
    if Path(filename).resolve().is_relative_to(Path(__file__).resolve().parent):
        print(f"labelless: warning: {message}", file=sys.stderr)
    else:
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def _dispatch(args: argparse.Namespace) -> int:
    try:
        return args.func(args)
    except UserError as error:
        print(f"labelless: error: {error}", file=sys.stderr)
        return 2
    except TimeLimitReached as stop:
        print(f"labelless: {stop}; run the same command with --resume to continue", file=sys.stderr)
        return EXIT_TIME_LIMIT
    except TrainingDiverged as error:
        print(f"labelless: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("labelless: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
