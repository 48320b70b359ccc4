"""benchmarks/throughput.py end to end on the CPU, tiny: the result file is what RESULTS.md asks for."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from labelless.cli import load_benchmark

ROOT = Path(__file__).resolve().parents[1]
VALIDATOR = ROOT.parent / "shared" / "tools" / "validate_results.py"
FIELDS = ["raw_view_img_s", "engine_view_img_s", "standard_view_img_s", "engine_over_raw", "engine_over_standard",
          "batch", "backbone", "device", "command", "commit", "created", "torch", "steps"]


@pytest.fixture(scope="module")
def throughput() -> ModuleType:
    return load_benchmark("throughput")


@pytest.fixture(scope="module")
def result(throughput: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """One tiny run: the `mlp` backbone keeps a step to milliseconds, one worker exercises the
    DataLoader's worker processes, one thread avoids the shared cores' thread contention (--threads
    sets torch's global count, so the other tests get theirs back)."""
    out = tmp_path_factory.mktemp("throughput") / "throughput-cpu.json"
    argv = ["--device", "cpu", "--batch", "16", "--steps", "2", "--warmup", "1", "--dataset", "synthetic",
            "--workers", "1", "--threads", "1", "--backbone", "mlp", "--out", str(out)]
    threads = torch.get_num_threads()
    try:
        assert throughput.main(argv, prog="labelless bench throughput") == 0
    finally:
        torch.set_num_threads(threads)
    return out, json.loads(out.read_text())


def test_record_has_every_field_and_positive_rates(result: tuple[Path, dict]) -> None:
    _, record = result
    assert [field for field in FIELDS if field not in record] == []
    for field in ("raw_view_img_s", "engine_view_img_s", "standard_view_img_s"):
        assert record[field] > 0
    assert record["batch"] == 16 and record["steps"] == 2 and record["backbone"] == "mlp"
    assert record["device"].startswith("cpu: ") and record["precision"] == "fp32"
    assert record["torch"] == torch.__version__
    assert record["created"].endswith("Z")
    assert record["command"].startswith("labelless bench throughput --device cpu --batch 16")


def test_ratios_follow_from_the_rates(result: tuple[Path, dict]) -> None:
    _, record = result
    assert record["engine_over_raw"] == pytest.approx(record["engine_view_img_s"] / record["raw_view_img_s"], abs=1e-4)
    assert record["engine_over_standard"] == pytest.approx(
        record["engine_view_img_s"] / record["standard_view_img_s"], abs=1e-4)


def test_shared_validator_accepts_the_file(result: tuple[Path, dict]) -> None:
    if not VALIDATOR.exists():
        pytest.skip(f"no {VALIDATOR} beside this checkout")
    path, _ = result
    done = subprocess.run([sys.executable, str(VALIDATOR), str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_impossible_settings_end_in_exit_code_2(throughput: ModuleType, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--device", "cpu", "--batch", "0", "--dataset", "synthetic", "--out", str(tmp_path / "x.json")]
    assert throughput.main(argv) == 2
    assert "--batch" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()
