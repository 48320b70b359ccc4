"""benchmarks/time_to_accuracy.py: epoch scaling, seed hand-out, and a tiny real run on MNIST."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from labelless.cli import load_benchmark

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "mnist"
VALIDATOR = ROOT.parent / "shared" / "tools" / "validate_results.py"


@pytest.fixture(scope="module")
def tta() -> ModuleType:
    return load_benchmark("time_to_accuracy")


def test_epochs_scale_with_the_budget_and_never_reach_zero(tta):
    assert tta.scaled_epochs(150, 30, 10) == 450
    assert tta.scaled_epochs(25, 5, 10) == 12  # round half to even: 12.5 → 12
    assert tta.scaled_epochs(3, 1, 10) == 1


def test_the_parent_hands_each_seed_to_its_own_process(tta):
    argv = ["--config", "c.yaml", "--seeds", "0", "1", "2", "--budget-min", "1"]
    assert tta._without(argv, "--seeds", 3) == ["--config", "c.yaml", "--budget-min", "1"]
    assert tta._without(["--config", "c.yaml"], "--seeds", 3) == ["--config", "c.yaml"]


@pytest.mark.skipif(not DATA.is_dir(), reason=f"real MNIST not found at {DATA} (see ../shared/data/README)")
def test_a_tiny_budget_run_on_mnist_writes_a_valid_result(tmp_path):
    """SCAN on 2,000 MNIST train images for a few epochs, scored on the 10k test images: the result
    file carries the protocol fields, the curve, and an ACC far above chance (0.1)."""
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({
        "name": "tiny-tta", "dataset": {"name": "mnist"},
        "train": {"batch_size": 256, "optimizer": "adam", "weight_decay": 1e-4, "schedule": "constant",
                  "checkpoint_every": 100, "log_every": 4},
        "stages": [{"name": "cluster", "method": {"name": "scan", "backbone": "mlp", "heads": 2, "num_neighbours": 10,
                                                  "entropy_weight": 10.0, "augment": "none", "pixel_space": "deskewed",
                                                  "neighbour_pca": 30},
                    "train": {"epochs": 8, "lr": 1e-3}}]}))
    out = tmp_path / "tta.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "time_to_accuracy.py"), "--config", str(config),
                           "--budget-min", "1", "--reference-min", "2", "--device", "cpu", "--subsample", "2000",
                           "--seeds", "0", "--run-dir", str(tmp_path / "runs"), "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["epochs"] == {"cluster": 4} and result["train_images"] == 2000  # 8 epochs × 1/2 budget
    assert result["split"] == "test" and result["labels_used_in_training"] is False
    assert result["metrics"]["ACC"] > 0.4
    curve = result["curves"]["0"]
    assert [point["epoch"] for point in curve] == [0, 1, 2, 3]
    assert all(a["minutes"] <= b["minutes"] for a, b in zip(curve, curve[1:]))
    seed = result["per_seed"][0]
    assert set(seed["stage_seconds"]) == {"cluster", "evaluate"}
    assert 0.8 < seed["neighbour_agreement"] < 1.0  # deskewed MNIST neighbours mostly share the digit
    assert abs(sum(seed["stage_seconds"].values()) - (seed["wall_seconds"] - seed["curve_seconds"])) < 2.0
    assert result["within_budget"] == (seed["wall_seconds"] - seed["curve_seconds"] <= 60)
    assert (tmp_path / "tta.png").stat().st_size > 1000
    if VALIDATOR.is_file():
        check = subprocess.run([sys.executable, str(VALIDATOR), str(out)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
