"""Time-to-accuracy (issue 8): how much test ACC a pipeline reaches within a wall-clock budget.

    python benchmarks/time_to_accuracy.py --config configs/mnist/fast.yaml --budget-min 10 \\
        --device cpu --seeds 0 1 2 --out benchmarks/results/tta-mnist-10min-cpu.json
    labelless bench tta --config configs/cifar10/fast.yaml --budget-min 30 --device cuda ...

Protocol. Each seed is its own process and its clock starts when that process is spawned, so the
wall time holds everything: interpreter start, imports, data load, neighbour mining, compilation,
training and the final evaluation. The pipeline trains on the train split and is scored on the test
split; no label reaches training or model selection (heads are chosen by loss). A fast config's
epochs are tuned for `--reference-min` minutes on its reference device (written in the config);
`--budget-min B` scales every stage's epochs (and `min_steps`) by B / reference, or by (B − F) / (reference − F) with
`--fixed-min F`, the minutes that do not grow with epochs (compilation, start-up). `within_budget`
says whether the run really ended in time on this machine — nothing is cut short to fit.

Budgets longer than one call of a time-limited machine (the lent GPU runs a command for at most 10
minutes) run as a chain: `--time-limit MIN --run-dir DIR` makes this command stop at the last epoch end
that fits in MIN minutes, checkpointed, and exit 75; the *same command*, repeated, resumes exactly and
finally writes the result. A call starts a second seed only when the whole budget is left, so a seed
that fits one call runs in one process. A seed's wall time is then the sum of its calls' (each call's start-up, data
load and compilation counted again: the chain is never faster than one process would be), and
`chained_calls` says how many calls each seed took.

Compilation is paid cold by every seed: each seed's process gets fresh, empty TorchInductor and
Triton caches (on the H100, compiling the SimCLR step took ~110 s of a 10-minute budget), so seeds 1
and 2 are not faster than seed 0 for having run on the same machine. In a chain, a seed's caches
are emptied at its first call and kept for its later calls, as one process would keep them.
`--warm-compile-cache` keeps the user's caches instead, and the result says which (`compile_cache`).

Tuning (`--tune`): train on the `fit` split and score on `holdout` (a fixed 10 % of train that the
run never sees; `labelless.data.sources`), so that a recipe is chosen without the test split; the
result says `"split": "holdout", "train_split": "fit"`. Report the chosen recipe without `--tune`.

The curve of test ACC against minutes is an evaluation-only side channel (after each epoch of a
stage with a cluster head, the test split is predicted); its own time is taken off the clock of the
curve points and reported as `curve_seconds`, and it is never used for any decision. `--no-curve`
turns it off. So is `neighbour_agreement` (the share of SCAN's mined neighbours that share the
label), computed after the clock stopped.

One device: the issue's record is for one GPU, so under `torchrun` (WORLD_SIZE > 1) this command refuses
to start rather than run every seed once per rank; multi-GPU training is `labelless train` under torchrun.
"""
from __future__ import annotations

if __name__ == "__main__":  # first of all: re-execute with the training allocator (labelless/allocator.py)
    from labelless.allocator import tune_by_reexec

    tune_by_reexec()

import time  # noqa: E402

START = time.perf_counter()  # before the heavy imports: they are part of the measured time

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

# light: `import labelless` loads no torch
from labelless.cli import OneLineParser, positive_float, without_options  # noqa: E402
from labelless.errors import EXIT_TIME_LIMIT, UserError  # noqa: E402
from labelless.ranks import distributed_info  # noqa: E402

METRICS = ("ACC", "NMI", "ARI", "ACC_CONFIDENT", "CONFIDENT_FRACTION")


def parse_args(argv: list[str] | None, prog: str | None) -> argparse.Namespace:
    p = OneLineParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="the pipeline, e.g. configs/mnist/fast.yaml")
    p.add_argument("--budget-min", type=positive_float, default=10.0, help="wall-clock budget in minutes (default 10)")
    p.add_argument("--reference-min", type=positive_float, default=10.0,
                   help="the budget the config's epochs are tuned for (default 10)")
    p.add_argument("--fixed-min", type=float, default=0.0,
                   help="minutes of a run that do not grow with epochs (start-up, compilation, mining); epochs "
                        "scale by (budget − fixed) / (reference − fixed) instead of budget / reference (default 0)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds, one process each")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--data-root", help="dataset directory (default: $LABELLESS_DATA, else ../shared/data)")
    p.add_argument("--subsample", type=int, help="train on a random N of the train images (smoke runs)")
    p.add_argument("--tune", action="store_true",
                   help="train on the 'fit' split, score on 'holdout' (10%% of train): for choosing a recipe "
                        "without the test split")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    p.add_argument("--run-dir", help="where the runs go (default: a temporary directory)")
    p.add_argument("--out", help="result JSON to write")
    p.add_argument("--png", help="curve of test ACC against minutes (default: next to --out)")
    p.add_argument("--no-curve", action="store_true", help="skip the evaluation-only ACC curve")
    p.add_argument("--time-limit", type=positive_float, metavar="MIN",
                   help=f"chain mode (needs --run-dir): stop after MIN minutes at an epoch end, checkpointed, exit "
                        f"{EXIT_TIME_LIMIT}; repeat the same command to continue (budgets longer than one call)")
    p.add_argument("--warm-compile-cache", action="store_true",
                   help="let seeds reuse torch.compile's on-disk caches (default: every seed compiles cold)")
    p.add_argument("--single-seed", type=int, help=argparse.SUPPRESS)  # internal: one seed, this process
    p.add_argument("--result-file", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if not 0 <= args.fixed_min < min(args.budget_min, args.reference_min):
        p.error(f"--fixed-min must be at least 0 and below both --budget-min and --reference-min, got {args.fixed_min:g}")
    return args


def scaled_epochs(epochs: int, budget_min: float, reference_min: float, fixed_min: float = 0.0) -> int:
    """A stage's epochs for `budget_min` when `epochs` fit `reference_min`, of which `fixed_min` minutes
    do not grow with epochs (start-up, data load, compilation, mining, evaluation); at least one."""
    return max(1, round(epochs * (budget_min - fixed_min) / (reference_min - fixed_min)))


def scaled_to_budget(config, args: argparse.Namespace):
    """`config` with every stage's epochs, and its step floor `min_steps` where it has one (training time
    too), scaled from `--reference-min` to `--budget-min` (`scaled_epochs`)."""
    def scaled(value: int) -> int:
        return scaled_epochs(value, args.budget_min, args.reference_min, args.fixed_min)

    for stage in config.stages:
        stage.train.epochs = scaled(stage.train.epochs)
        if stage.train.min_steps is not None:
            stage.train.min_steps = scaled(stage.train.min_steps)
    return config


def splits(args: argparse.Namespace) -> tuple[str, str]:
    """(what training sees, what is scored): train → test, or fit → holdout under `--tune`."""
    return ("fit", "holdout") if args.tune else ("train", "test")


def may_start_seed(started_a_seed: bool, seconds_left: float, budget_seconds: float) -> bool:
    """Chain mode: the first seed of a call always starts (every call makes progress); a later one only
    with its whole budget left, so a seed that fits one call is never split over two."""
    return not started_a_seed or seconds_left >= budget_seconds


def run_one_seed(args: argparse.Namespace) -> dict:
    """Train and score one seed in this process; the clock is this process's START."""
    import torch

    from labelless.config import load_config, method_label
    from labelless.data.sources import load_dataset
    from labelless.data.stores import to_float
    from labelless.evaluate.metrics import cluster_metrics
    from labelless.pipeline import evaluate, train
    from labelless.provenance import device_name

    from labelless.errors import TimeLimitReached
    from labelless.train import Deadline

    seed = args.single_seed
    config = scaled_to_budget(load_config(args.config, [f"seed={seed}", f"device={args.device}", *args.set]), args)
    run_dir = Path(args.run_dir or tempfile.mkdtemp(prefix="labelless-tta-")) / f"seed{seed}"
    chain_path = run_dir / "tta_chain.json"  # chain mode: what the earlier calls of this seed measured
    chain = (json.loads(chain_path.read_text()) if args.time_limit and chain_path.is_file()
             else {"calls": [], "curve": [], "ends": {}})
    if args.time_limit:
        if chain.get("open_call") is not None:  # the last call neither stopped at its limit nor finished
            raise UserError(f"seed {seed}: a call that began {chain['open_call']} was killed before it could record "
                            f"its time, so this seed's wall time cannot be summed; delete {run_dir} and run the "
                            f"same command again")
    root, name = config.dataset.root if args.data_root is None else args.data_root, config.dataset.name
    train_split, scored_split = splits(args)
    store = load_dataset(name, split=train_split, root=root, **config.dataset.options)
    if args.subsample and args.subsample < len(store):
        rows = torch.randperm(len(store), generator=torch.Generator().manual_seed(seed))[: args.subsample]
        store = store.subset(rows.sort().values)
    scored = load_dataset(name, split=scored_split, root=root, **config.dataset.options)
    labels = scored.labels.numpy()
    before = sum(call["wall_seconds"] - call["curve_seconds"] for call in chain["calls"])  # earlier calls' clock
    curve: list[dict] = chain["curve"]
    ends: dict[str, float] = chain["ends"]  # stage → clock seconds at its last epoch's end, curve time excluded
    side = {"seconds": 0.0}

    def observe(stage: str, epoch: int, method) -> None:
        now = time.perf_counter()
        ends[stage] = before + now - START - side["seconds"]
        if args.no_curve:
            return
        method.eval()
        device = next(method.parameters()).device
        with torch.no_grad():
            chunks = [method.cluster_logits(to_float(chunk.to(device))) for chunk in scored.images.split(1024)]
        if chunks[0] is not None:
            predictions = torch.cat([logits.argmax(1).cpu() for logits in chunks]).numpy()
            acc = cluster_metrics(labels, predictions)["ACC"]
            curve.append({"minutes": round(ends[stage] / 60, 3), "stage": stage, "epoch": epoch, "ACC": round(acc, 4)})
        side["seconds"] += time.perf_counter() - now

    deadline = None
    if args.time_limit:
        # marked before training: a call killed from outside (the device's cap) leaves this mark behind,
        # and the next call refuses instead of resuming the killed call's checkpoints uncounted
        run_dir.mkdir(parents=True, exist_ok=True)
        chain_path.write_text(json.dumps({**chain, "open_call": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(START))}) + "\n")
        deadline = Deadline.after(args.time_limit * 60 - (time.perf_counter() - START))
    try:
        run = train(config, run_dir, progress=False, store=store, on_epoch_end=observe,
                    resume=bool(args.time_limit), deadline=deadline)
    except (TimeLimitReached, Exception) as stop:  # a failed call's time counts too, if the seed goes on
        if args.time_limit:
            chain["calls"].append({"wall_seconds": round(time.perf_counter() - START, 1),
                                   "curve_seconds": round(side["seconds"], 1),
                                   ("stopped" if isinstance(stop, TimeLimitReached) else "failed"): str(stop)})
            chain_path.write_text(json.dumps({**chain, "open_call": None}) + "\n")
        if not isinstance(stop, TimeLimitReached):
            raise
        return {"seed": seed, "stopped": str(stop)}
    metrics = evaluate(run, scored, scored_split, name)
    calls = chain["calls"] + [{"wall_seconds": time.perf_counter() - START, "curve_seconds": side["seconds"]}]
    wall = sum(call["wall_seconds"] for call in calls)
    side["seconds"] = sum(call["curve_seconds"] for call in calls)
    agreement = neighbour_agreement(run_dir, store)
    # per-stage split: the first stage also holds start-up and data loading; "evaluate" is the final scoring
    stage_seconds, previous_end = {}, 0.0
    for stage, end in ends.items():
        stage_seconds[stage], previous_end = end - previous_end, end
    stage_seconds["evaluate"] = wall - side["seconds"] - previous_end
    return {"seed": seed, **{k: metrics[k] for k in (*METRICS, "ACC_HUNGARIAN") if k in metrics},  # the last: label-trained runs
            "wall_seconds": round(wall, 1),
            "curve_seconds": round(side["seconds"], 1), "neighbour_agreement": agreement,
            "stage_seconds": {k: round(v, 1) for k, v in stage_seconds.items()},
            "epochs": {s.name: s.train.epochs for s in run.config.stages}, "train_images": len(store),
            "device": device_name(str(run.device)), "curve": curve, "method": method_label(config.stages), "dataset": name, "chained_calls": len(calls),
            "head_selection": run.head_selection, "labels_used": run.labels_used}


def seed_environment(args: argparse.Namespace, caches: str) -> dict[str, str]:
    """The environment of a seed's process: ours, with empty compile caches in `caches` unless
    `--warm-compile-cache` (a later seed must not compile faster for having followed an earlier one)."""
    env = dict(os.environ)
    if not args.warm_compile_cache:
        env["TORCHINDUCTOR_CACHE_DIR"] = str(Path(caches) / "inductor")
        env["TRITON_CACHE_DIR"] = str(Path(caches) / "triton")
    return env


def chain_compile_cache(run_dir: str, seed: int, first_call: bool) -> Path:
    """In chain mode, a seed's compile caches outlive its calls, as they would live through one
    process: emptied at the seed's first call, reused by its later ones (which still pay start-up and
    cache loading). Kept beside, not inside, the run directory, so `carry.py` does not pack them."""
    import hashlib
    import shutil

    key = hashlib.sha1(str(Path(run_dir).resolve()).encode()).hexdigest()[:12]
    path = Path(tempfile.gettempdir()) / "labelless-tta-compile" / key / f"seed{seed}"
    if first_call:
        shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)
    return path


def neighbour_agreement(run_dir: Path, store) -> float | None:
    """Share of mined neighbour pairs whose labels agree (SCAN's artefact; evaluation only, after the
    clock stopped); None when the run mined no neighbours or the store has no labels."""
    import torch

    path = run_dir / "artefacts" / "neighbour_indices.pt"
    if not path.is_file() or store.labels is None:
        return None
    neighbours, labels = torch.load(path), store.labels.cpu()
    if len(neighbours) != len(labels):
        return None
    return round(float((labels[neighbours] == labels[:, None]).float().mean()), 4)


def device_of(runs: list[dict]) -> str:
    """The device the seeds ran on. A chain spanning sessions may be lent another GPU for a later seed
    (an H100 one session, an H200 the next): then every device is named with its seeds, never one for
    all, since a time-to-accuracy figure holds for one kind of machine."""
    seeds_on: dict[str, list[str]] = {}
    for run in runs:
        seeds_on.setdefault(run["device"], []).append(str(run["seed"]))
    if len(seeds_on) == 1:
        return next(iter(seeds_on))
    return "mixed: " + "; ".join(f"{device} (seed{'s' if len(seeds) > 1 else ''} {', '.join(seeds)})"
                                 for device, seeds in seeds_on.items())


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    args = parse_args(argv, prog)
    world_size = distributed_info().world_size
    if world_size > 1:  # each rank would run every seed and write the file
        print("time_to_accuracy: error: the record is for one device; run it without torchrun (WORLD_SIZE is "
              f"{world_size})", file=sys.stderr)
        return 2
    if args.single_seed is not None:
        try:
            result = run_one_seed(args)
        except UserError as error:
            print(f"time_to_accuracy: error: {error}", file=sys.stderr)
            return 2
        Path(args.result_file).write_text(json.dumps(result) + "\n")
        return EXIT_TIME_LIMIT if "stopped" in result else 0
    if args.time_limit and not args.run_dir:
        print("--time-limit needs --run-dir: the chain's checkpoints must outlive the call", file=sys.stderr)
        return 2
    from labelless.provenance import stamp

    runs = []
    passthrough = [a for a in (argv if argv is not None else sys.argv[1:])]
    passthrough = without_options(passthrough, {"--seeds": len(args.seeds), "--time-limit": 1})
    started_a_seed = False
    for seed in args.seeds:
        # chain mode keeps each finished seed's result in its run directory; the next call skips it
        seed_dir = Path(args.run_dir) / f"seed{seed}" if args.time_limit else None
        kept = seed_dir / "tta_result.json" if seed_dir is not None else None
        if kept is not None and kept.is_file():
            runs.append(json.loads(kept.read_text()))
            continue
        limit = []
        if args.time_limit:
            left = args.time_limit * 60 - (time.perf_counter() - START)
            if not may_start_seed(started_a_seed, left, args.budget_min * 60):
                print(f"time limit: seed {seed} not started; run the same command again", file=sys.stderr)
                return EXIT_TIME_LIMIT
            limit = ["--time-limit", f"{max(left, 1.0) / 60:.6f}"]
        started_a_seed = True
        with tempfile.NamedTemporaryFile(suffix=".json") as f, tempfile.TemporaryDirectory() as fresh:
            caches = (chain_compile_cache(args.run_dir, seed, not (seed_dir / "tta_chain.json").is_file())
                      if seed_dir is not None else fresh)
            started = time.perf_counter()
            done = subprocess.run([sys.executable, str(Path(__file__).resolve()), *passthrough, *limit,
                                   "--single-seed", str(seed), "--result-file", f.name], env=seed_environment(args, caches))
            spawned_wall = time.perf_counter() - started
            if done.returncode not in (0, EXIT_TIME_LIMIT):
                print(f"seed {seed} failed (exit {done.returncode})", file=sys.stderr)
                return done.returncode
            result = json.loads(Path(f.name).read_text())
        if "stopped" in result:
            print(f"seed {seed}: {result['stopped']}; run the same command again", file=sys.stderr)
            return EXIT_TIME_LIMIT
        if kept is not None:
            kept.write_text(json.dumps(result) + "\n")
        elif spawned_wall > result["wall_seconds"]:  # one process: its spawn is part of the clock,
            first = next(iter(result["stage_seconds"]))  # and of the first stage's share (start-up, data load)
            result["stage_seconds"][first] = round(result["stage_seconds"][first] + spawned_wall - result["wall_seconds"], 1)
            result["wall_seconds"] = spawned_wall
        result["wall_seconds"] = round(result["wall_seconds"], 1)
        runs.append(result)
        print(f"seed {seed}: ACC {result['ACC']:.4f}, {result['wall_seconds']:.0f} s "
              f"(curve side channel {result['curve_seconds']:.0f} s)", file=sys.stderr)
    keys = [k for k in METRICS if all(k in r for r in runs)]
    budget_s = args.budget_min * 60
    train_split, scored_split = splits(args)
    out = {
        "method": runs[0]["method"], "dataset": runs[0]["dataset"], "split": scored_split, "train_split": train_split,
        "config": args.config, "budget_minutes": args.budget_min, "reference_minutes": args.reference_min,
        "fixed_minutes": args.fixed_min,
        "epochs": runs[0]["epochs"], "train_images": runs[0]["train_images"], "seeds": args.seeds,
        "metrics": {k: round(statistics.mean(r[k] for r in runs), 4) for k in keys},
        "metrics_std": {k: round(statistics.pstdev(r[k] for r in runs), 4) for k in keys},
        "per_seed": [{**{k: r[k] for k in ("seed", *keys, "wall_seconds", "curve_seconds", "stage_seconds",
                                           "neighbour_agreement", "device")},
                      **({"ACC_HUNGARIAN": r["ACC_HUNGARIAN"]} if "ACC_HUNGARIAN" in r else {})} for r in runs],
        "within_budget": all(r["wall_seconds"] - r["curve_seconds"] <= budget_s for r in runs),
        "head_selection": runs[0]["head_selection"], "labels_used_in_training": any(r.get("labels_used", False) for r in runs),
        "device": device_of(runs),
        "wall_seconds": round(statistics.mean(r["wall_seconds"] - r["curve_seconds"] for r in runs), 1),
        "wall_clock": f"from process spawn to the final {scored_split} evaluation, curve side channel excluded"
                      " (per_seed wall_seconds include it: subtract their curve_seconds)"
                      + ("; summed over the calls of a chain (--time-limit), each call's start-up counted"
                         if args.time_limit else ""),
        **({"chained_calls": {str(r["seed"]): r["chained_calls"] for r in runs}} if args.time_limit else {}),
        "compile_cache": ("warm: the seeds shared torch.compile's on-disk caches" if args.warm_compile_cache
                          else "cold: fresh TorchInductor and Triton caches for every seed"
                          + (" (kept across a chained seed's calls)" if args.time_limit else "")),
        "curves": {str(r["seed"]): r["curve"] for r in runs},
        **stamp(" ".join(["python benchmarks/time_to_accuracy.py", *passthrough, "--seeds", *map(str, args.seeds),
                          *(["--time-limit", f"{args.time_limit:g}"] if args.time_limit else [])])),
    }
    if out["device"].startswith("mixed"):
        print(f"warning: the seeds ran on different devices ({out['device']}): their mean is no one machine's "
              "time to accuracy", file=sys.stderr)
    print(json.dumps({"ACC": out["metrics"].get("ACC"), "ACC_std": out["metrics_std"].get("ACC"),
                      "wall_seconds": out["wall_seconds"], "within_budget": out["within_budget"]}))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
        png = args.png or str(Path(args.out).with_suffix(".png"))
        if any(out["curves"].values()):
            plot_curves(out, png)
    return 0


def plot_curves(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
    for seed, curve in result["curves"].items():
        ax.plot([p["minutes"] for p in curve], [p["ACC"] for p in curve], marker=".", label=f"seed {seed}")
    ax.axvline(result["budget_minutes"], color="grey", linestyle="--", linewidth=1, label="budget")
    ax.set_xlabel("minutes from process start")
    ax.set_ylabel(f"{result['split']} ACC (evaluation only)")
    ax.set_title(f"{result['dataset']} — {result['method']} on {result['device']}", fontsize=8)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
