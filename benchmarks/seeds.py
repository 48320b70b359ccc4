"""Run one `labelless` command for several seeds and write a RESULTS.md file with mean ± std.

    python benchmarks/seeds.py --out benchmarks/results/main-digits-cpu.json --seeds 0 1 2 -- \\
        run --dataset digits --device cpu

Each seed is a separate process (`labelless ... --seed S --json`), so `wall_seconds` is the whole
job from process start: imports, data, training, evaluation.

Schedules longer than one call of a time-limited machine (the lent GPU: 10 minutes a command) run as a
chain: with `--time-limit MIN --run-root DIR`, seed S trains in DIR/seedS with `--resume --time-limit`,
this command exits 75 when the time is up (the seed's last epoch checkpointed), and the *same command*,
repeated, continues; finished seeds are kept in DIR/seeds_chain.json and skipped. A seed's wall time is
then the sum of its calls' (start-ups counted every call) and `chained_calls` says how many it took.
Without `--run-root` (and without a `--run-dir` in the command) each seed trains in a fresh temporary
directory, deleted at the end: never in a directory an earlier job left behind.

    python benchmarks/seeds.py --seeds 0 --time-limit 8.5 --run-root /root/runs/lsd_c --out lsd_c.json -- \
        train --config configs/cifar10/lsd_c.yaml --device cuda

Seeds too long for one session (a 67-minute CPU seed) are added to a file written earlier with `--add-to`:
the new seeds run as usual, and the file is rewritten with both sets of per-seed results and the mean ±
std over all of them. It must come from the same labelless command (method, dataset, split, variant,
epochs, device), and each per-seed entry keeps the commit it was made at.

    python benchmarks/seeds.py --seeds 1 2 --add-to benchmarks/results/two_stage-mnist-cpu.json \
        --out benchmarks/results/two_stage-mnist-cpu.json -- train --config configs/mnist/two_stage.yaml …"""
from __future__ import annotations

import argparse
import atexit
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from labelless.cli import positive_float, without_options
from labelless.errors import EXIT_TIME_LIMIT
from labelless.provenance import stamp

METRICS = ("ACC", "NMI", "ARI", "KNN", "ACC_CONFIDENT", "CONFIDENT_FRACTION", "ACC_VOTE")


def _save_state(path: Path, state: dict) -> None:
    """The chain's record of each seed's calls and finished results (read back by the next call)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(state, indent=2) + "\n")


def _mean_std(per_seed: list[dict]) -> dict:
    """Mean and population std over seeds of each metric that every seed has."""
    keys = [k for k in METRICS if all(k in r for r in per_seed)]
    return {"metrics": {k: statistics.mean(r[k] for r in per_seed) for k in keys},
            "metrics_std": {k: statistics.pstdev(r[k] for r in per_seed) for k in keys}}


def _also_scored(runs: list[dict]) -> dict:
    """`--also-score SPLIT` (e.g. train, which some papers score): that split's mean ± std over seeds."""
    splits = [split for split in runs[0].get("also_scored", {}) if all(split in r.get("also_scored", {}) for r in runs)]
    out = {}
    for split in splits:
        scored = [{"seed": r["seed"], **r["also_scored"][split]} for r in runs]
        keys = [k for k in METRICS if all(k in m for m in scored)]
        out[split] = {**_mean_std(scored), "per_seed": [{"seed": m["seed"], **{k: m[k] for k in keys}} for m in scored]}
    return {"also_scored": out} if out else {}


# what must agree for seeds of two runs to be one result (command: the labelless command before its seed)
SAME_RUN = ("method", "dataset", "split", "train_split", "epochs", "variant", "head_selection",
            "labels_used_in_training", "labelled_fraction", "device")


# where a seed's run lives and how its calls are chained, not what it trains: ignored when comparing commands
# (older files put `--run-dir DIR/seedS --resume` before `--seed S`, newer ones after it)
_BOOKKEEPING = {"--seed": 1, "--json": 0, "--run-dir": 1, "--resume": 0, "--time-limit": 1}


def _labelless_command(command: str) -> str:
    return " ".join(without_options(command.split(" (chained:")[0].split(), _BOOKKEEPING))


def seeds_already_in(earlier: dict, seeds: list[int], where: str) -> str | None:
    """The one-line refusal when `--add-to` would add a seed the earlier file already holds, else None."""
    shared = sorted(set(earlier.get("seeds", [])) & set(seeds))
    return f"--add-to: seed(s) {shared} already in {where}; run other seeds" if shared else None


def add_to(earlier: dict, new: dict) -> dict:
    """`new` (this call's seeds) merged into `earlier` (a file this script wrote before): per-seed results of
    both, each with its commit, and the mean ± std over all of them. ValueError (one line) when the two are
    not the same run, or share a seed."""
    for key in SAME_RUN:
        if earlier.get(key) != new.get(key):
            raise ValueError(f"--add-to: not the same run: {key} is {earlier.get(key)!r} there, {new.get(key)!r} here")
    if _labelless_command(earlier.get("command", "")) != _labelless_command(new["command"]):
        raise ValueError(f"--add-to: not the same command: {_labelless_command(earlier.get('command', ''))!r} "
                         f"there, {_labelless_command(new['command'])!r} here")
    clash = seeds_already_in(earlier, new["seeds"], "the file")
    if clash:
        raise ValueError(clash)
    if "per_seed" not in earlier or len(earlier["per_seed"]) != len(earlier["seeds"]):
        raise ValueError("--add-to: the file has no per-seed results to add to")
    per_seed = sorted([{**r, "commit": r.get("commit", earlier["commit"])} for r in earlier["per_seed"]]
                      + [{**r, "commit": new["commit"]} for r in new["per_seed"]], key=lambda r: r["seed"])
    merged = {**earlier, **new, "seeds": [r["seed"] for r in per_seed], **_mean_std(per_seed), "per_seed": per_seed,
              "wall_seconds": statistics.mean(r["wall_seconds"] for r in per_seed)}
    also = {}
    for split in set(earlier.get("also_scored", {})) & set(new.get("also_scored", {})):
        rows = sorted(earlier["also_scored"][split]["per_seed"] + new["also_scored"][split]["per_seed"],
                      key=lambda r: r["seed"])
        also[split] = {**_mean_std(rows), "per_seed": rows}
    merged.pop("also_scored", None)
    if also:
        merged["also_scored"] = also
    if "note" in earlier:
        merged["note"] = (f"{earlier['note']} Seeds {new['seeds']} added at {new['commit'][:7]} "
                          f"({new['created']}) by seeds.py --add-to.")
    return merged


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="result JSON to write")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds, one process each")
    parser.add_argument("--time-limit", type=positive_float, metavar="MIN",
                        help="chain mode (needs --run-root): stop after MIN minutes, exit 75; repeat the same command")
    parser.add_argument("--run-root", help="chain mode: seed S trains in RUN_ROOT/seedS (outside the checkout)")
    parser.add_argument("--add-to", metavar="FILE",
                        help="a result file of the same command written earlier: merge these seeds into it")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the labelless command and its options")
    args = parser.parse_args(argv)
    command = [c for c in args.command if c != "--"]
    earlier = None
    if args.add_to:
        try:
            earlier = json.loads(Path(args.add_to).read_text())
        except (OSError, ValueError) as err:
            print(f"--add-to: cannot read {args.add_to}: {err}", file=sys.stderr)
            return 2
        clash = seeds_already_in(earlier, args.seeds, args.add_to)
        if clash:  # refused before hours of training, not after
            print(clash, file=sys.stderr)
            return 2
    if args.time_limit is not None and not args.run_root:
        print("--time-limit needs --run-root: the chain's checkpoints must outlive the call", file=sys.stderr)
        return 2
    started = time.perf_counter()
    scratch = tempfile.mkdtemp(prefix="labelless-seeds-")  # without --run-root, the seeds' run directories
    atexit.register(shutil.rmtree, scratch, ignore_errors=True)
    state_path = Path(args.run_root) / "seeds_chain.json" if args.run_root else None
    state = json.loads(state_path.read_text()) if state_path is not None and state_path.is_file() else {}
    runs, ran_a_seed = [], False
    for seed in args.seeds:
        seed_state = state.setdefault(str(seed), {"calls": [], "result": None})
        if seed_state["result"] is None:
            extra = []
            if args.run_root:
                extra = ["--run-dir", str(Path(args.run_root) / f"seed{seed}"), "--resume"]
            elif "--run-dir" not in command:  # a fresh directory per seed: never a run left from an earlier job
                extra = ["--run-dir", str(Path(scratch) / f"seed{seed}")]
            if args.time_limit is not None:
                left = args.time_limit * 60 - (time.perf_counter() - started)
                if ran_a_seed and left < 60:  # the first seed a call trains always starts: progress
                    print(f"time limit: seed {seed} not started; run this same seeds.py command again", file=sys.stderr)
                    return EXIT_TIME_LIMIT
                extra += ["--time-limit", f"{max(left, 1.0) / 60:.6f}"]
            if None in seed_state["calls"]:  # a call that neither finished nor stopped at its limit
                print(f"seed {seed}: an earlier call was killed before it could record its time, so this seed's "
                      f"wall time cannot be summed; delete {Path(args.run_root) / f'seed{seed}'} and its entry in "
                      f"{state_path}, then run this same command again", file=sys.stderr)
                return 2
            start, ran_a_seed = time.perf_counter(), True
            if state_path is not None:  # marked before training: a call killed from outside leaves the mark
                seed_state["calls"].append(None)
                _save_state(state_path, state)
                seed_state["calls"].pop()
            done = subprocess.run([sys.executable, "-m", "labelless", *command, "--seed", str(seed), "--json", *extra],
                                  capture_output=True, text=True)
            seed_state["calls"].append(round(time.perf_counter() - start, 1))
            if done.returncode == EXIT_TIME_LIMIT and state_path is not None:
                _save_state(state_path, state)
                stopped = done.stderr.strip().splitlines()[-1].split("; run the same command")[0]
                print(f"seed {seed}: {stopped}; run this same seeds.py command again", file=sys.stderr)
                return EXIT_TIME_LIMIT
            if done.returncode != 0:  # a failed call's time counts too, if the seed goes on
                if state_path is not None:
                    _save_state(state_path, state)
                print(done.stderr, file=sys.stderr)
                return done.returncode
            seed_state["result"] = json.loads(done.stdout.strip().splitlines()[-1])
            if state_path is not None:
                _save_state(state_path, state)
        result = {**seed_state["result"], "wall_seconds": sum(seed_state["calls"]),
                  "chained_calls": len(seed_state["calls"])}
        runs.append({"seed": seed, **result})
        print(f"seed {seed}: " + ", ".join(f"{k} {result[k]:.4f}" for k in METRICS if k in result)
              + f", {result['wall_seconds']:.1f} s", file=sys.stderr)
    keys = [k for k in METRICS if all(k in r for r in runs)]
    first = runs[0]
    out = {
        "method": first["method"], "dataset": first["dataset"], "split": first["split"],
        "train_split": first.get("train_split", first["split"]),
        "seeds": args.seeds,
        **_mean_std(runs),
        **{key: first[key] for key in ("epochs", "variant") if key in first},
        "per_seed": [{"seed": r["seed"], **{k: r[k] for k in keys}, "wall_seconds": round(r["wall_seconds"], 1),
                      **({"ACC_PER_HEAD": r["ACC_PER_HEAD"]} if "ACC_PER_HEAD" in r else {}),
                      **({"ACC_HUNGARIAN": r["ACC_HUNGARIAN"]} if "ACC_HUNGARIAN" in r else {}),
                      **({"chained_calls": r["chained_calls"]} if args.time_limit is not None else {})}
                     for r in runs],
        **_also_scored(runs),
        "head_selection": first.get("head_selection", "none"),  # a baseline has no head to choose
        "labels_used_in_training": first["labels_used_in_training"],
        **({"labelled_fraction": first["labelled_fraction"]} if "labelled_fraction" in first else {}),
        "device": first["device"],
        "wall_seconds": statistics.mean(r["wall_seconds"] for r in runs),
        **({"wall_clock": "summed over the calls of a chain (--time-limit), each call's start-up counted"}
           if args.time_limit is not None else {}),
        **stamp("labelless " + " ".join(command) + " --seed S --json"
                + (f" --run-dir {args.run_root}/seedS --resume" if args.run_root else "")
                + (f" --time-limit M (chained: python benchmarks/seeds.py --time-limit {args.time_limit:g})"
                   if args.time_limit is not None else "")),
    }
    if earlier is not None:
        try:
            out = add_to(earlier, out)
        except ValueError as err:  # this call's own result is kept beside the file it could not join
            Path(args.out).with_suffix(".new.json").write_text(json.dumps(out, indent=2) + "\n")
            print(f"{err}; this call's seeds are in {Path(args.out).with_suffix('.new.json')}", file=sys.stderr)
            return 2
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out["metrics"]), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
