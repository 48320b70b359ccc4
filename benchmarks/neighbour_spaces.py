"""How often SCAN's mined neighbours share the label, per pixel space (evaluation only).

    python benchmarks/neighbour_spaces.py --dataset mnist --out benchmarks/results/neighbours-mnist.json

    python benchmarks/neighbour_spaces.py --dataset cifar10 --spaces centred patches --out …

For each of SCAN's `pixel_space`s in `--spaces` — centred pixels, the same after moment deskewing
(`labelless.data.augment.deskew`), Coates et al.'s patch k-means features
(`labelless.methods.patch_features`) — and for all its dimensions and its first 50 principal
components, the k nearest neighbours (cosine) of every train image are mined as SCAN mines them, and
the share of neighbour pairs with the same label is reported, overall and, on MNIST, for the 4s and
9s (the pair SCAN merged on raw MNIST pixels). Labels only score.
"""
from __future__ import annotations

import time

START = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="mnist", help="dataset name (default mnist)")
    p.add_argument("--split", default="train", help="split to mine (default train)")
    p.add_argument("--neighbours", type=int, default=20, help="k, as SCAN's num_neighbours (default 20)")
    p.add_argument("--spaces", nargs="+", default=["centred", "deskewed"], choices=["centred", "deskewed", "patches"],
                   help="pixel spaces to score (default: centred deskewed)")
    p.add_argument("--seed", type=int, default=0, help="seed of the patch k-means (default 0)")
    p.add_argument("--data-root", help="dataset directory (default: $LABELLESS_DATA, else ../shared/data)")
    p.add_argument("--out", help="result JSON to write")
    args = p.parse_args(argv)

    import torch

    from labelless.data.sources import load_dataset
    from labelless.evaluate.knn import knn_indices
    from labelless.methods.scan import pixel_space_features, principal_components
    from labelless.provenance import device_name, stamp

    torch.manual_seed(args.seed)
    store = load_dataset(args.dataset, split=args.split, root=args.data_root)
    labels = store.labels
    pair = (labels == 4) | (labels == 9) if args.dataset == "mnist" else None
    spaces = {}
    for space in args.spaces:
        started = time.perf_counter()
        features = pixel_space_features(store, space)
        feature_seconds = round(time.perf_counter() - started, 1)
        for dims in (0, 50):
            name = space + (f" + PCA {dims}" if dims else "")
            started = time.perf_counter()
            same = (labels[knn_indices(principal_components(features, dims), args.neighbours)] == labels[:, None]).float()
            spaces[name] = {"agreement": round(float(same.mean()), 4),
                            **({"agreement_4_9": round(float(same[pair].mean()), 4)} if pair is not None else {}),
                            "feature_seconds": feature_seconds, "mining_seconds": round(time.perf_counter() - started, 1)}
            print(f"{name:22s} {spaces[name]}", file=sys.stderr, flush=True)
    out = {
        "method": "scan-neighbour-mining", "dataset": args.dataset, "split": args.split, "metrics": {},
        "neighbours": args.neighbours, "spaces": spaces, "labels_used_in_training": False,
        "device": device_name("cpu"), "threads": torch.get_num_threads(),
        "wall_seconds": round(time.perf_counter() - START, 1),
        **stamp("python benchmarks/neighbour_spaces.py " + " ".join(argv if argv is not None else sys.argv[1:])),
    }
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
