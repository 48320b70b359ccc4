"""Resident memory and speed of one `labelless` command under several settings of glibc's allocator.

    OMP_NUM_THREADS=1 python benchmarks/allocator_memory.py --settings mmap4g mmap128 system \\
        --out benchmarks/memory/allocator-super_and-lenet-mnist-cpu.json -- \\
        train --config configs/mnist/super_and.yaml --set method.backbone=lenet --device cpu --no-report \\
        --time-limit 14 --set method.epochs_per_round=2 …   (the file's `command` has the whole line)

`labelless/allocator.py` re-executes the command line with glibc's MALLOC_MMAP_THRESHOLD_ raised, so
that the tens-of-MiB tensors of a CPU training step are reused instead of page-faulted in anew every step.
This measures what a setting gains in speed and costs in memory. Each setting (`SETTINGS`; `default` is
whatever labelless sets by itself) runs the same command, same seed, in its own process and run
directory, one after the other: run it on a quiet machine, the timings are compared. A sampler reads the
process's /proc status (VmRSS, VmHWM) and the allocator variables it really runs with every second. Per
setting the file holds the peak resident size, a resident-size timeline, and each epoch's seconds, images
per second and loss from the run's metrics.jsonl. The allocator must not change a number:
`losses_identical` says whether every setting's epoch losses agree bit for bit with the first's.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from labelless.allocator import OPT_OUT, TUNED, USER_SETTINGS
from labelless.provenance import device_name, stamp

ALLOCATOR_VARIABLES = (*USER_SETTINGS, OPT_OUT)  # what a setting may set; cleared from the inherited environment

SETTINGS = {
    "default": {},  # whatever labelless/allocator.py sets by itself
    "mmap4g": dict(TUNED),  # the default's values (4 GiB both), set here rather than by labelless
    "mmap128": {**TUNED, "MALLOC_MMAP_THRESHOLD_": str(128 << 20)},
    "trim256": {**TUNED, "MALLOC_TRIM_THRESHOLD_": str(256 << 20)},
    "system": {OPT_OUT: "1"},  # glibc's own dynamic thresholds (mmap above 128 KiB to 32 MiB)
}


def _status_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a live process, in KiB (empty once it has exited)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    fields = (line.split(":", 1) for line in text.splitlines() if line.startswith(("VmRSS", "VmHWM")))
    return {name: int(value.split()[0]) for name, value in fields}


def _allocator_env(pid: int) -> dict[str, str] | None:
    """The allocator variables a live process runs with (after labelless's re-execution), None once gone."""
    try:
        entries = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    pairs = (entry.decode(errors="replace").split("=", 1) for entry in entries if b"=" in entry)
    return {name: value for name, value in pairs if name in ALLOCATOR_VARIABLES}


def measure(setting: str, command: list[str], run_dir: Path, every: float = 1.0) -> dict:
    """Run `labelless COMMAND --run-dir RUN_DIR` under `setting`, sampling its resident size."""
    env = {k: v for k, v in os.environ.items() if k not in ALLOCATOR_VARIABLES}
    env.update(SETTINGS[setting])
    stderr_path = run_dir.with_name(run_dir.name + ".stderr")  # a file, not a pipe: a full pipe would stall the run
    started = time.monotonic()
    with stderr_path.open("w") as stderr_file:
        proc = subprocess.Popen([sys.executable, "-m", "labelless", *command, "--run-dir", str(run_dir)], env=env,
                                stdout=subprocess.DEVNULL, stderr=stderr_file)
    timeline, peak_kib, seen_env = [], 0, None  # the re-execution keeps the PID: the sampler follows it
    while proc.poll() is None:
        status, environ = _status_kib(proc.pid), _allocator_env(proc.pid)
        seen_env = seen_env if environ is None else environ
        if status:
            peak_kib = max(peak_kib, status.get("VmHWM", 0))
            timeline.append((round(time.monotonic() - started, 1), status.get("VmRSS", 0) >> 10))
        time.sleep(every)
    stderr = stderr_path.read_text(errors="replace")
    metrics = run_dir / "metrics.jsonl"
    epochs = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
    return {"setting": setting, "env": SETTINGS[setting], "ran_with": seen_env, "exit_code": proc.returncode,
            "wall_seconds": round(time.monotonic() - started, 1), "peak_rss_mib": peak_kib >> 10,
            "rss_mib_timeline": timeline[::10],  # every 10th sample: [seconds, MiB]
            "epochs": [{k: e.get(k) for k in ("stage", "epoch", "loss", "seconds", "img_per_s")} for e in epochs],
            "stderr_tail": stderr.strip().splitlines()[-1:]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", nargs="+", choices=sorted(SETTINGS), default=["default", "system"])
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the labelless command")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the labelless command after --")
    runs = []
    with tempfile.TemporaryDirectory(prefix="allocator-") as root:
        for setting in args.settings:
            runs.append(measure(setting, command, Path(root) / setting))
            seconds = sorted(e["seconds"] or 0.0 for e in runs[-1]["epochs"]) or [0.0]
            print(f"{setting}: peak {runs[-1]['peak_rss_mib']} MiB, exit {runs[-1]['exit_code']}, "
                  f"{len(seconds)} epochs, median {seconds[len(seconds) // 2]:.1f} s", flush=True)
    first = [e["loss"] for e in runs[0]["epochs"]]
    shared = min(len(r["epochs"]) for r in runs)
    identical = shared > 0 and all([e["loss"] for e in r["epochs"][:shared]] == first[:shared] for r in runs)
    argv = sys.argv[1:] if argv is None else argv
    args.out.write_text(json.dumps({"measured": ["labelless", *command], "losses_identical": identical,
                                    "epochs_compared": shared, "runs": runs, "device": device_name("cpu"),
                                    "threads": os.environ.get("OMP_NUM_THREADS", "torch's default"),
                                    **stamp(shlex.join(["python", "benchmarks/allocator_memory.py", *argv]))},
                                   indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
