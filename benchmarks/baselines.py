"""Reproduce the comparison study's classic baselines and write one RESULTS.md file per baseline.

The study (../shared/papers/comparison-study-cifar10.txt) reports CIFAR-10 test accuracy on PCA-658
features: logistic regression 0.393, SVM 0.474, random forest 0.355. Examples:

    python benchmarks/baselines.py pca-logreg                     # full 50,000 train images
    python benchmarks/baselines.py pca-rf                         # ~2.5 min on 2 cores
    python benchmarks/baselines.py pca-svm --subsample 20000      # ~9 min; 10000: ~2 min

libsvm is single-threaded and roughly quadratic in the number of images: on all 50,000 it had not
finished after 50 minutes here (shared cores). `--subsample N` fits on a seeded random N-image subset
of train (PCA included; always scored on the full test split) and the file records it.
`wall_seconds` is process start to loaded data (imports included) plus that baseline's PCA, fit and
prediction, so each file stands for one run of one baseline.
"""
from __future__ import annotations

import time

PROCESS_START = time.perf_counter()  # before the heavy imports: RESULTS.md's wall time starts with the process

import argparse
import json
import shlex
import sys
from pathlib import Path

from labelless.baselines import BASELINES, run_baseline
from labelless.data import load_dataset
from labelless.data.sources import DEFAULT_SPLIT
from labelless.provenance import device_name, stamp


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="+", choices=list(BASELINES), metavar="NAME",
                        help=f"baselines to run: {', '.join(BASELINES)}")
    parser.add_argument("--dataset", default="cifar10",
                        help="dataset with train and test splits, or digits (one split, unsupervised baselines)")
    parser.add_argument("--subsample", type=int, default=None,
                        help="fit on a seeded random subset of train of this size (pca-svm: 20000 takes ~9 min)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()

    if DEFAULT_SPLIT.get(args.dataset) == "all":  # digits: one split, fitted and scored (unsupervised only)
        train, test, train_split = load_dataset(args.dataset), None, "all"
    else:
        train, train_split = load_dataset(args.dataset, split="train"), "train"
        test = load_dataset(args.dataset, split="test")
    setup_seconds = time.perf_counter() - PROCESS_START
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name in args.names:
        result = run_baseline(name, train, test, k=train.num_classes, subsample=args.subsample, seed=args.seed,
                              train_split=train_split)
        record = {
            "method": f"baseline:{name}",
            "description": BASELINES[name].description,
            "dataset": args.dataset,
            "split": result["split"],
            "train_split": result["train_split"],
            "seeds": [args.seed],
            "metrics": result["metrics"],
            "labels_used_in_training": result["labels_used_in_training"],
            "subsample": args.subsample,
            "n_train": result["n"],
            "n_scored": result["n_scored"],
            "pca_dims": result["pca_dims"],
            "device": device_name("cpu"),
            "wall_seconds": round(setup_seconds + result["seconds"], 1),
            "fit_seconds": round(result["seconds"], 1),
            **stamp(shlex.join(["python", "benchmarks/baselines.py", *sys.argv[1:]])),
        }
        path = args.out_dir / f"baseline-{name}-{args.dataset}.json"
        path.write_text(json.dumps(record, indent=2) + "\n")
        metrics = "  ".join(f"{k} {v:.4f}" for k, v in result["metrics"].items())
        print(f"{name}: {metrics}  (n_train {result['n']}, pca_dims {result['pca_dims']}, "
              f"{result['seconds']:.0f} s fit+predict) → {path}", flush=True)


if __name__ == "__main__":
    main()
