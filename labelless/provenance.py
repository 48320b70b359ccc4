"""Where a number was made: the device string and the commit every results file records (RESULTS.md)."""
from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def device_name(device: str) -> str:
    """`torch.cuda.get_device_name()` on a GPU, else "cpu: <model name>, <n> cores"."""
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu: {_cpu_model()}, {os.cpu_count()} cores"


def git_commit() -> str | None:
    """HEAD of the checkout this package lives in; None without git history (the device machine gets
    a copy of the working tree without `.git`)."""
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parent)
    except OSError:
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def stamp(command: str, commit: str | None = None) -> dict[str, str]:
    """The closing fields of every results file: the command that wrote it, the commit (`commit`, else
    the environment's LABELLESS_COMMIT — set it on the device machine, whose copy of the tree has no
    `.git` — else HEAD, else "unknown") and the UTC time."""
    import datetime

    commit = commit or os.environ.get("LABELLESS_COMMIT", "").strip() or git_commit() or "unknown"
    return {"command": command, "commit": commit,
            "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
