"""The CPU's memory allocator, tuned for training: big blocks stay with the process between steps.

glibc's malloc serves every block above its mmap threshold (dynamic, at most 32 MiB) with a fresh
`mmap` and hands it back to the kernel when it is freed, so a training step that allocates tensors of
tens of MiB page-faults all of them in again, every step. Super-AND's 2B×N bank logits are 61 MiB at
MNIST's N = 60,000: on this project's 2-core CPU a step took 1078 ms, half of it in the kernel, and
370 ms with both thresholds raised (a Super-AND MNIST epoch: 333 s → 133 s, same losses bit for bit).
PyTorch's CUDA memory is cached by its own allocator; this is the CPU's equivalent.

Thresholds above 32 MiB can only be set through glibc's environment tunables, which the C library
reads once at process start. So the command line (`labelless`, `python -m labelless`,
`benchmarks/time_to_accuracy.py`) re-executes itself once, before it has done any work, with
MALLOC_MMAP_THRESHOLD_ and MALLOC_TRIM_THRESHOLD_ set to 4 GiB (the child processes it starts
inherit them). It does nothing off glibc/Linux, when either variable or GLIBC_TUNABLES is already set
(the user's choice wins), or with LABELLESS_SYSTEM_MALLOC=1. The cost: freed memory is kept for reuse,
so the process's resident size stays at its peak instead of shrinking between steps.

Blocks of hundreds of MiB now live in the heap too, and a heap fragments: chunked N×N passes therefore
fill one output allocated up front (labelless/chunks.py says why; benchmarks/allocator_memory.py
measures a whole run).
"""
from __future__ import annotations

import os
import platform
import sys
from collections.abc import Callable, Mapping

TUNED = {"MALLOC_MMAP_THRESHOLD_": str(4 << 30), "MALLOC_TRIM_THRESHOLD_": str(4 << 30)}
OPT_OUT = "LABELLESS_SYSTEM_MALLOC"
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")


def wants_tuning(environ: Mapping[str, str], system: str | None = None, libc: str | None = None) -> bool:
    """Whether the process should re-execute itself with `TUNED` (see the module docstring)."""
    system = platform.system() if system is None else system
    libc = platform.libc_ver()[0] if libc is None else libc
    if system != "Linux" or libc != "glibc":
        return False
    if environ.get(OPT_OUT, "") not in ("", "0"):
        return False
    return not any(name in environ for name in USER_SETTINGS)


def tune_by_reexec(execv: Callable[[str, list[str]], object] = os.execv) -> None:
    """Re-execute this very command line (`sys.orig_argv`: interpreter options included) with the tuned
    allocator, if `wants_tuning`; returns only when it does not. Call it first thing in an entry point,
    before anything was printed or started."""
    if not wants_tuning(os.environ):
        return
    os.environ.update(TUNED)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        execv(sys.executable, list(sys.orig_argv))
    except OSError:  # could not re-execute: run on with the system's allocator
        for name in TUNED:
            os.environ.pop(name, None)
