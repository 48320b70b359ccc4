"""Resident memory and speed of one `labelless` command under several settings of glibc's allocator.

    python benchmarks/allocator_memory.py --settings tuned system trim256 --out /tmp/allocator.json -- \\
        train --config configs/mnist/super_and.yaml --set method.backbone=lenet --device cpu --no-report \\
        --time-limit 9

`labelless/allocator.py` re-executes the command line with MALLOC_MMAP_THRESHOLD_ and
MALLOC_TRIM_THRESHOLD_ at 4 GiB (`tuned`), which made CPU training steps ~3× faster and keeps freed
memory with the process. This measures what that costs. Each setting runs the same command, same seed,
in its own process and run directory, one after the other (run it on a quiet machine: the timings are
compared); a sampler reads the process's /proc status (VmRSS, VmHWM) every second. Per setting it
reports the peak resident size, a resident-size timeline, and each epoch's seconds, images per second and
loss from the run's metrics.jsonl. The allocator must not change a number: `losses_identical` says
whether every setting's epoch losses agree bit for bit with the first's.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from labelless.allocator import OPT_OUT, TUNED, USER_SETTINGS

SETTINGS = {
    "tuned": {},  # the default: labelless sets TUNED itself
    "system": {OPT_OUT: "1"},  # glibc's own dynamic thresholds
    "trim256": {**TUNED, "MALLOC_TRIM_THRESHOLD_": str(256 << 20)},  # no mmap for big blocks, trim the heap top
    "arena1": {"MALLOC_ARENA_MAX": "1"},  # tuned, all threads in one arena
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
    names = (*USER_SETTINGS, OPT_OUT, "MALLOC_ARENA_MAX")
    pairs = (entry.decode(errors="replace").split("=", 1) for entry in entries if b"=" in entry)
    return {name: value for name, value in pairs if name in names}


def measure(setting: str, command: list[str], run_dir: Path, every: float = 1.0) -> dict:
    """Run `labelless COMMAND --run-dir RUN_DIR` under `setting`, sampling its resident size."""
    env = {k: v for k, v in os.environ.items() if k not in (*USER_SETTINGS, OPT_OUT, "MALLOC_ARENA_MAX")}
    env.update(SETTINGS[setting])
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "labelless", *command, "--run-dir", str(run_dir)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    timeline, peak_kib, seen_env = [], 0, None  # the re-execution keeps the PID: the sampler follows it
    while proc.poll() is None:
        status, environ = _status_kib(proc.pid), _allocator_env(proc.pid)
        seen_env = seen_env if environ is None else environ
        if status:
            peak_kib = max(peak_kib, status.get("VmHWM", 0))
            timeline.append((round(time.monotonic() - started, 1), status.get("VmRSS", 0) >> 10))
        time.sleep(every)
    stderr = proc.stderr.read() if proc.stderr else ""
    metrics = run_dir / "metrics.jsonl"
    epochs = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
    return {"setting": setting, "env": SETTINGS[setting], "ran_with": seen_env, "exit_code": proc.returncode,
            "wall_seconds": round(time.monotonic() - started, 1), "peak_rss_mib": peak_kib >> 10,
            "rss_mib_timeline": timeline[::10],  # every 10th sample: [seconds, MiB]
            "epochs": [{k: e.get(k) for k in ("stage", "epoch", "loss", "seconds", "img_per_s")} for e in epochs],
            "stderr_tail": stderr.strip().splitlines()[-1:]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", nargs="+", choices=sorted(SETTINGS), default=["tuned", "system"])
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
    args.out.write_text(json.dumps({"command": ["labelless", *command], "losses_identical": identical,
                                    "epochs_compared": shared, "runs": runs}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
