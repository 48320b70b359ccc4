"""labelless/allocator.py: the command line re-executes itself once with glibc's malloc thresholds raised,
unless the user chose otherwise or the platform is not glibc/Linux."""
from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from labelless import allocator
from labelless.allocator import TUNED, tune_by_reexec, wants_tuning


def test_tuning_is_wanted_only_on_glibc_linux_and_never_over_the_users_choice():
    assert wants_tuning({}, "Linux", "glibc")
    assert wants_tuning({"LABELLESS_SYSTEM_MALLOC": "0"}, "Linux", "glibc")
    assert not wants_tuning({"LABELLESS_SYSTEM_MALLOC": "1"}, "Linux", "glibc")
    for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES"):
        assert not wants_tuning({name: "65536"}, "Linux", "glibc"), name
    assert not wants_tuning({}, "Linux", "")  # musl: libc_ver() names no glibc
    assert not wants_tuning({}, "Darwin", "")
    assert not wants_tuning({}, "Windows", "")


def test_reexec_runs_the_same_command_line_with_the_thresholds_set(monkeypatch):
    for name in allocator.USER_SETTINGS + (allocator.OPT_OUT,):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(allocator, "wants_tuning", lambda environ: "MALLOC_MMAP_THRESHOLD_" not in environ)
    calls = []
    tune_by_reexec(execv=lambda path, argv: calls.append((path, argv)))
    assert calls == [(sys.executable, list(sys.orig_argv))]
    assert all(os.environ[name] == value for name, value in TUNED.items())
    tune_by_reexec(execv=lambda path, argv: calls.append((path, argv)))  # already tuned: no second exec
    assert len(calls) == 1


def test_a_failed_reexec_runs_on_untuned(monkeypatch):
    for name in allocator.USER_SETTINGS + (allocator.OPT_OUT,):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(allocator, "wants_tuning", lambda environ: True)

    def fail(path, argv):
        raise OSError("exec refused")

    tune_by_reexec(execv=fail)
    assert not any(name in os.environ for name in TUNED)


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="needs glibc on Linux")
def test_the_process_really_reexecutes_once_before_doing_any_work():
    code = ("import os; from labelless.allocator import tune_by_reexec; print('started', flush=True); "
            "tune_by_reexec(); print(os.environ.get('MALLOC_MMAP_THRESHOLD_'), os.environ.get('MALLOC_TRIM_THRESHOLD_'))")
    environ = {k: v for k, v in os.environ.items() if k not in allocator.USER_SETTINGS + (allocator.OPT_OUT,)}
    out = subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True, text=True, check=True).stdout
    # the first process prints "started" and becomes the second, which prints it again, then the tuned values
    assert out.splitlines() == ["started", "started", f"{4 << 30} {4 << 30}"]
    opted_out = subprocess.run([sys.executable, "-c", code], env={**environ, "LABELLESS_SYSTEM_MALLOC": "1"},
                               capture_output=True, text=True, check=True).stdout
    assert opted_out.splitlines() == ["started", "None None"]
