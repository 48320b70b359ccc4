"""How often `--k auto` (labelless.kselect.select_k) finds the true K on MNIST digit subsets.

    python benchmarks/k_recovery.py --pixel-space deskewed --out benchmarks/results/k_recovery-mnist-deskewed.json

For each true K in 3, 5 and 10, `--draws` subsets of `--per-digit` train images per digit (the digits
drawn at random for K < 10) are embedded as `labelless run --dataset mnist --k auto` embeds them —
SCAN's pixel space, centred or deskewed pixels or patch k-means features (`--pixel-space`) — and
`select_k` picks K from `--k-range`.
Labels only build the subsets and score the outcome; select_k never sees them.
"""
from __future__ import annotations

import time

START = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--per-digit", type=int, default=300, help="train images per digit in a subset")
    p.add_argument("--draws", type=int, default=3, help="subsets per true K")
    p.add_argument("--k-range", default="2..15", help="the Ks select_k tries")
    p.add_argument("--pixel-space", choices=["centred", "deskewed", "patches"], default="deskewed")
    p.add_argument("--data-root", help="dataset directory (default: $LABELLESS_DATA, else ../shared/data)")
    p.add_argument("--out", help="result JSON to write")
    args = p.parse_args(argv)

    from labelless.data.sources import load_dataset
    from labelless.data.stores import ImageStore
    from labelless.kselect import parse_k_range, select_k
    import torch

    from labelless.methods.scan import pixel_space_features
    from labelless.provenance import device_name, stamp

    k_range = parse_k_range(args.k_range)
    store = load_dataset("mnist", split="train", root=args.data_root)
    labels = store.labels.numpy()
    cases = []
    for true_k in (3, 5, 10):
        for draw in range(args.draws):
            rng = np.random.default_rng(100 * true_k + draw)
            digits = np.sort(rng.choice(10, true_k, replace=False)) if true_k < 10 else np.arange(10)
            rows = np.concatenate([rng.choice(np.flatnonzero(labels == d), args.per_digit, replace=False)
                                   for d in digits])
            torch.manual_seed(draw)  # the patch k-means
            features = pixel_space_features(ImageStore(store.images[np.sort(rows)]), args.pixel_space).numpy()
            chosen, _ = select_k(features, k_range, seed=draw)
            cases.append({"true_k": true_k, "digits": digits.tolist(), "chosen_k": chosen})
            elapsed = time.perf_counter() - START
            print(f"true K {true_k:2d}  digits {digits.tolist()}  chose {chosen:2d}  ({elapsed:.0f} s)",
                  file=sys.stderr, flush=True)
    exact = sum(c["chosen_k"] == c["true_k"] for c in cases)
    near = sum(abs(c["chosen_k"] - c["true_k"]) <= 1 for c in cases)
    print(f"exact {exact}/{len(cases)}, within ±1 {near}/{len(cases)}", file=sys.stderr)
    out = {
        "method": "kselect", "dataset": "mnist", "split": "train", "metrics": {},
        "k_recovery": {"exact": exact, "within_one": near, "cases": len(cases), "per_case": cases},
        "embedding": ("patch k-means features, standardised over the subset" if args.pixel_space == "patches"
                      else f"{args.pixel_space} pixels centred on the subset mean"), "k_range": args.k_range,
        "per_digit": args.per_digit, "labels_used_in_training": False,
        "device": device_name("cpu"), "wall_seconds": round(time.perf_counter() - START, 1),
        **stamp("python benchmarks/k_recovery.py " + " ".join(argv if argv is not None else sys.argv[1:])),
    }
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
