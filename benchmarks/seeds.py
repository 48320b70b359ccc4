"""Run one `labelless` command for several seeds and write a RESULTS.md file with mean ± std.

    python benchmarks/seeds.py --out benchmarks/results/main-digits-cpu.json --seeds 0 1 2 -- \\
        run --dataset digits --device cpu

Each seed is a separate process (`labelless ... --seed S --json`), so `wall_seconds` is the whole
job from process start: imports, data, training, evaluation."""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from labelless.provenance import stamp

METRICS = ("ACC", "NMI", "ARI", "KNN", "ACC_CONFIDENT", "CONFIDENT_FRACTION", "ACC_VOTE")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="result JSON to write")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds, one process each")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the labelless command and its options")
    args = parser.parse_args(argv)
    command = [c for c in args.command if c != "--"]
    runs = []
    for seed in args.seeds:
        argv_seed = [*command, "--seed", str(seed), "--json"]
        start = time.time()
        done = subprocess.run([sys.executable, "-m", "labelless", *argv_seed], capture_output=True, text=True)
        if done.returncode != 0:
            print(done.stderr, file=sys.stderr)
            return done.returncode
        result = json.loads(done.stdout.strip().splitlines()[-1])
        result["wall_seconds"] = time.time() - start
        runs.append({"seed": seed, **result})
        print(f"seed {seed}: " + ", ".join(f"{k} {result[k]:.4f}" for k in METRICS if k in result)
              + f", {result['wall_seconds']:.1f} s", file=sys.stderr)
    keys = [k for k in METRICS if all(k in r for r in runs)]
    first = runs[0]
    out = {
        "method": first["method"], "dataset": first["dataset"], "split": first["split"],
        "train_split": first.get("train_split", first["split"]),
        "seeds": args.seeds,
        "metrics": {k: statistics.mean(r[k] for r in runs) for k in keys},
        "metrics_std": {k: statistics.pstdev(r[k] for r in runs) for k in keys},
        "per_seed": [{"seed": r["seed"], **{k: r[k] for k in keys}, "wall_seconds": round(r["wall_seconds"], 1),
                      **({"ACC_PER_HEAD": r["ACC_PER_HEAD"]} if "ACC_PER_HEAD" in r else {})} for r in runs],
        "head_selection": "lowest_loss",
        "labels_used_in_training": first["labels_used_in_training"],
        **({"labelled_fraction": first["labelled_fraction"]} if "labelled_fraction" in first else {}),
        "device": first["device"],
        "wall_seconds": statistics.mean(r["wall_seconds"] for r in runs),
        **stamp("labelless " + " ".join(command) + " --seed S --json"),
    }
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out["metrics"]), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
