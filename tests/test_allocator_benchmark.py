"""benchmarks/allocator_memory.py end to end, tiny: each setting really runs with its allocator
variables, its resident size is sampled, and the allocator changes no loss."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from labelless.allocator import TUNED
from labelless.cli import load_benchmark

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux's /proc")


def test_status_and_environment_of_a_live_and_of_a_gone_process():
    bench = load_benchmark("allocator_memory")
    status = bench._status_kib(os.getpid())
    assert status["VmHWM"] >= status["VmRSS"] > 1000  # this interpreter with torch holds far more than 1 MiB
    assert bench._status_kib(2 ** 22 + 12345) == {}  # above the kernel's largest PID: no such process
    assert bench._allocator_env(2 ** 22 + 12345) is None


def test_two_settings_of_a_two_stage_two_epoch_run(tmp_path):
    bench = load_benchmark("allocator_memory")
    out = tmp_path / "allocator.json"
    config = Path(__file__).resolve().parents[1] / "configs" / "digits" / "default.yaml"
    assert bench.main(["--settings", "default", "system", "--out", str(out), "--", "train", "--config", str(config),
                       "--set", "train.epochs=2", "--device", "cpu", "--no-report"]) == 0
    result = json.loads(out.read_text())
    tuned, system = result["runs"]
    assert (tuned["exit_code"], system["exit_code"]) == (0, 0)
    assert tuned["ran_with"] == TUNED  # labelless re-executed itself with the thresholds raised
    assert system["ran_with"] == {"LABELLESS_SYSTEM_MALLOC": "1"}
    stages = [(e["stage"], e["epoch"]) for e in tuned["epochs"]]  # --set train.epochs applies to both stages
    assert stages == [("cluster", 0), ("cluster", 1), ("selflabel", 0), ("selflabel", 1)]
    assert result["epochs_compared"] == 4 and result["losses_identical"]
    assert tuned["peak_rss_mib"] > 100 and system["peak_rss_mib"] > 100  # torch alone is more than that


def test_a_failing_command_is_recorded_with_its_one_line_error(tmp_path):
    bench = load_benchmark("allocator_memory")
    out = tmp_path / "allocator.json"
    assert bench.main(["--settings", "system", "--out", str(out), "--", "train", "--config",
                       str(tmp_path / "missing.yaml"), "--device", "cpu"]) == 0
    result = json.loads(out.read_text())
    run = result["runs"][0]
    assert run["exit_code"] == 2 and run["epochs"] == []
    assert run["stderr_tail"][0].startswith("labelless: error") and "missing.yaml" in run["stderr_tail"][0]
    assert result["epochs_compared"] == 0 and not result["losses_identical"]
