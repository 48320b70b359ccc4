"""Train a config on a seeded random subset of its training split, score the full evaluation split,
and write one RESULTS.md file — the CPU measurement of a method when one epoch of the whole split
does not fit the time budget.

    python benchmarks/train_subsample.py --config configs/mnist/entropy_margin.yaml --subsample 6000 \\
        --set train.epochs=2 --out benchmarks/results/entropy_margin-mnist-cpu.json

Why: VGG4 trains at ~25–45 MNIST images/s (forward + backward) on this project's contended 2-core
CPU, so one epoch of the 60,000 training images alone takes 25–45 min, and `labelless train` has no
way to train on part of a split. Here the same pipeline (`labelless.pipeline.train` and `evaluate`,
as the CLI runs them) sees `--subsample` rows of the split, drawn with `--seed`; the file records
`subsample` and `n_train`. `wall_seconds` runs from process start to metrics, imports included.
"""
from __future__ import annotations

import time

PROCESS_START = time.perf_counter()  # before the heavy imports: RESULTS.md's wall time starts with the process

import argparse
import json
import shlex
import sys
from pathlib import Path

import torch

from labelless.config import load_config, method_label
from labelless.provenance import device_name, stamp
from labelless.data import load_dataset
from labelless.data.sources import default_eval_split, default_train_split
from labelless.pipeline import evaluate, train

RESULT_METRICS = ("ACC", "ACC_VOTE", "NMI", "ARI")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="a one-stage or pipeline config (configs/<dataset>/<method>.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, as `labelless train --set` (repeatable)")
    parser.add_argument("--subsample", type=int, default=None, help="train on this many random rows of the split")
    parser.add_argument("--seed", type=int, default=0, help="run seed and subset seed")
    parser.add_argument("--run-dir", type=Path, default=None, help="run directory (default runs/<config name>)")
    parser.add_argument("--out", type=Path, required=True, help="the RESULTS.md JSON file to write")
    args = parser.parse_args()

    config = load_config(args.config, [*args.set, f"seed={args.seed}"])
    dataset = config.dataset
    store = load_dataset(dataset.name, split=dataset.split, root=dataset.root, **dataset.options)
    if args.subsample is not None and args.subsample < len(store):
        order = torch.randperm(len(store), generator=torch.Generator().manual_seed(args.seed))
        store = store.subset(order[: args.subsample].sort().values)
    run = train(config, args.run_dir or Path("runs") / config.name, progress=False, store=store)
    eval_split = dataset.eval_split or default_eval_split(dataset.name)
    metrics = evaluate(run, load_dataset(dataset.name, split=eval_split, root=dataset.root), eval_split, dataset.name)
    stages = config.stages
    record = {
        "method": method_label(stages),
        "dataset": dataset.name,
        "split": eval_split,
        "train_split": dataset.split or default_train_split(dataset.name),
        "subsample": args.subsample,
        "n_train": len(store),
        "epochs": stages[0].train.epochs if len(stages) == 1 else {s.name: s.train.epochs for s in stages},
        "seeds": [args.seed],
        "metrics": {key: round(metrics[key], 4) for key in RESULT_METRICS if key in metrics},
        "head_selection": run.head_selection,
        "acc_per_head": metrics.get("ACC_PER_HEAD"),
        "labels_used_in_training": run.labels_used,
        "device": device_name(str(run.device)),
        "wall_seconds": round(time.perf_counter() - PROCESS_START, 1),
        "train_seconds": round(run.seconds, 1),
        "eval_seconds": round(metrics["eval_seconds"], 1),
        **stamp(shlex.join(["python", "benchmarks/train_subsample.py", *sys.argv[1:]])),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
