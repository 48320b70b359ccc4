"""benchmarks/time_to_accuracy.py: epoch scaling, seed hand-out, and a tiny real run on MNIST."""
from __future__ import annotations

import json
import shutil
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
    # 2 of the reference's 10 minutes are fixed: 8 minutes of epochs become 28 in a 30-minute budget
    assert tta.scaled_epochs(160, 30, 10, fixed_min=2) == 560
    assert tta.scaled_epochs(160, 10, 10, fixed_min=2) == 160


def test_a_step_floor_scales_with_the_budget_like_the_epochs(tta):
    """configs/cpu.yaml's min_steps is training time too: in a tenth of the budget, a tenth of both."""
    from labelless.config import load_config

    args = tta.parse_args(["--config", "configs/cpu.yaml", "--budget-min", "1"], "time_to_accuracy.py")
    stage = tta.scaled_to_budget(load_config(ROOT / "configs" / "cpu.yaml"), args).stages[0]
    assert (stage.train.epochs, stage.train.min_steps) == (3, 290)


def test_fixed_minutes_must_leave_time_for_epochs(tta, capsys):
    assert tta.parse_args(["--config", "c.yaml", "--fixed-min", "2.5"], None).fixed_min == 2.5
    for bad in (["--fixed-min", "10"], ["--fixed-min", "-1"], ["--budget-min", "2", "--fixed-min", "3"]):
        with pytest.raises(SystemExit) as stop:
            tta.parse_args(["--config", "c.yaml", *bad], None)
        assert stop.value.code == 2 and "--fixed-min must be" in capsys.readouterr().err
    for option in ("--budget-min", "--reference-min", "--time-limit"):
        for bad in ("0", "-1", "nan", "ten"):
            with pytest.raises(SystemExit) as stop:
                tta.parse_args(["--config", "c.yaml", option, bad], None)
            assert stop.value.code == 2 and f"{option}: expected a positive number, got '{bad}'" in capsys.readouterr().err


def test_under_torchrun_it_refuses_in_one_line_instead_of_running_every_seed_per_rank(tta, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert tta.main(["--config", "configs/mnist/fast.yaml", "--out", "never.json"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "run it without torchrun (WORLD_SIZE is 2)" in err
    assert not Path("never.json").exists()


def test_seeds_kept_from_different_devices_are_named_each(tta):
    h100, h200 = "cuda: NVIDIA H100 80GB HBM3", "cuda: NVIDIA H200"
    assert tta.device_of([{"seed": 0, "device": h200}, {"seed": 1, "device": h200}]) == h200
    mixed = tta.device_of([{"seed": 0, "device": h200}, {"seed": 1, "device": h100}, {"seed": 2, "device": h200}])
    assert mixed == f"mixed: {h200} (seeds 0, 2); {h100} (seed 1)"


def test_tuning_trains_on_fit_and_scores_holdout_instead_of_test(tta):
    assert tta.splits(tta.parse_args(["--config", "c.yaml"], None)) == ("train", "test")
    assert tta.splits(tta.parse_args(["--config", "c.yaml", "--tune"], None)) == ("fit", "holdout")


def test_the_parent_hands_each_seed_to_its_own_process(tta):
    argv = ["--config", "c.yaml", "--seeds", "0", "1", "2", "--budget-min", "1"]
    assert tta.without_options(argv, {"--seeds": 3}) == ["--config", "c.yaml", "--budget-min", "1"]
    assert tta.without_options(["--config", "c.yaml"], {"--seeds": 3}) == ["--config", "c.yaml"]


def test_a_call_of_a_chain_starts_another_seed_only_with_its_whole_budget_left(tta):
    assert tta.may_start_seed(False, seconds_left=1.0, budget_seconds=600.0)  # the call's first: progress
    assert not tta.may_start_seed(True, seconds_left=599.0, budget_seconds=600.0)
    assert tta.may_start_seed(True, seconds_left=600.0, budget_seconds=600.0)


def test_every_seed_compiles_with_empty_caches_unless_asked_to_share_them(tta, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/users/inductor-cache")
    monkeypatch.delenv("TRITON_CACHE_DIR", raising=False)
    cold = tta.seed_environment(tta.parse_args(["--config", "c.yaml"], None), str(tmp_path))
    assert cold["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "inductor")
    assert cold["TRITON_CACHE_DIR"] == str(tmp_path / "triton")
    warm = tta.seed_environment(tta.parse_args(["--config", "c.yaml", "--warm-compile-cache"], None), str(tmp_path))
    assert warm["TORCHINDUCTOR_CACHE_DIR"] == "/users/inductor-cache" and "TRITON_CACHE_DIR" not in warm


def test_a_chained_seed_keeps_its_compile_cache_across_calls_but_not_across_chains(tta, tmp_path):
    first = tta.chain_compile_cache(str(tmp_path / "runs"), 0, first_call=True)
    (first / "compiled").write_text("x")
    assert (tta.chain_compile_cache(str(tmp_path / "runs"), 0, first_call=False) / "compiled").is_file()
    assert tta.chain_compile_cache(str(tmp_path / "runs"), 1, first_call=False) != first  # per seed
    assert not (tta.chain_compile_cache(str(tmp_path / "runs"), 0, first_call=True) / "compiled").exists()
    assert tmp_path not in first.parents  # beside the run directory: carry.py does not pack it
    shutil.rmtree(first.parent)


def test_a_call_killed_from_outside_is_not_resumed_uncounted(tta, tmp_path, capsys):
    """A call killed by the machine's cap (no exit 75) leaves its chain mark open: the next call refuses in
    one line rather than resume the killed call's checkpoints with that call's time left out."""
    seed_dir = tmp_path / "runs" / "seed0"
    seed_dir.mkdir(parents=True)
    (seed_dir / "tta_chain.json").write_text(json.dumps({"calls": [], "curve": [], "ends": {},
                                                         "open_call": "2026-11-23T09:00:00Z"}))
    code = tta.main(["--config", str(ROOT / "configs" / "mnist" / "fast.yaml"), "--time-limit", "9",
                     "--run-dir", str(tmp_path / "runs"), "--single-seed", "0", "--result-file", str(tmp_path / "r.json")])
    error = capsys.readouterr().err.strip()
    assert code == 2 and "was killed before it could record its time" in error and "\n" not in error
    assert str(seed_dir) in error and not (tmp_path / "r.json").exists()


def tiny_config(tmp_path: Path) -> Path:
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({
        "name": "tiny-tta", "dataset": {"name": "mnist"},
        "train": {"batch_size": 256, "optimizer": "adam", "weight_decay": 1e-4, "schedule": "constant",
                  "checkpoint_every": 100, "log_every": 4},
        "stages": [{"name": "cluster", "method": {"name": "scan", "backbone": "mlp", "heads": 2, "num_neighbours": 10,
                                                  "entropy_weight": 10.0, "augment": "none", "pixel_space": "deskewed",
                                                  "neighbour_pca": 30},
                    "train": {"epochs": 8, "lr": 1e-3}}]}))
    return config


def run_tta(config: Path, run_dir: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "time_to_accuracy.py"), "--config", str(config),
                           "--budget-min", "1", "--reference-min", "2", "--device", "cpu", "--subsample", "2000",
                           "--seeds", "0", "--run-dir", str(run_dir), "--out", str(out), *extra],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(not DATA.is_dir(), reason=f"real MNIST not found at {DATA} (see ../shared/data/README)")
def test_a_tiny_budget_run_on_mnist_writes_a_valid_result(tmp_path):
    """SCAN on 2,000 MNIST train images for a few epochs, scored on the 10k test images: the result
    file carries the protocol fields, the curve, and an ACC far above chance (0.1)."""
    out = tmp_path / "tta.json"
    done = run_tta(tiny_config(tmp_path), tmp_path / "runs", out)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["epochs"] == {"cluster": 4} and result["train_images"] == 2000  # 8 epochs × 1/2 budget
    assert result["split"] == "test" and result["labels_used_in_training"] is False
    assert result["compile_cache"].startswith("cold")
    assert result["metrics"]["ACC"] > 0.4
    curve = result["curves"]["0"]
    assert [point["epoch"] for point in curve] == [0, 1, 2, 3]
    assert all(a["minutes"] <= b["minutes"] for a, b in zip(curve, curve[1:]))
    seed = result["per_seed"][0]
    assert set(seed["stage_seconds"]) == {"cluster", "evaluate"} and seed["device"] == result["device"]
    assert 0.8 < seed["neighbour_agreement"] < 1.0  # deskewed MNIST neighbours mostly share the digit
    assert abs(sum(seed["stage_seconds"].values()) - (seed["wall_seconds"] - seed["curve_seconds"])) < 2.0
    assert result["within_budget"] == (seed["wall_seconds"] - seed["curve_seconds"] <= 60)
    assert (tmp_path / "tta.png").stat().st_size > 1000
    if VALIDATOR.is_file():
        check = subprocess.run([sys.executable, str(VALIDATOR), str(out)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.skipif(not DATA.is_dir(), reason=f"real MNIST not found at {DATA} (see ../shared/data/README)")
def test_a_run_trained_on_labels_is_recorded_as_one(tmp_path):
    """The supervised reference trains on labels: its file must say so (it said false, a fixed value,
    until 2026-12-07) and keep each seed's Hungarian-matched ACC beside the plain accuracy that ACC then
    is (in per_seed, as seeds.py does: RESULTS.md's metrics have no ACC_HUNGARIAN)."""
    out = tmp_path / "sup.json"
    done = run_tta(ROOT / "configs" / "mnist" / "supervised_mlp.yaml", tmp_path / "runs", out, "--no-curve",
                   "--set", "train.epochs=1", "--set", "method.backbone_options.width=64")
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["labels_used_in_training"] is True
    assert result["method"] == "supervised"  # one stage: its method's name, as `labelless train` says
    assert result["per_seed"][0]["ACC_HUNGARIAN"] >= result["per_seed"][0]["ACC"] > 0.5
    if VALIDATOR.is_file():
        check = subprocess.run([sys.executable, str(VALIDATOR), str(out)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.skipif(not DATA.is_dir(), reason=f"real MNIST not found at {DATA} (see ../shared/data/README)")
def test_a_chain_of_time_limited_calls_gives_the_result_of_one_process(tmp_path):
    """With --time-limit far below one epoch every call trains one epoch and exits 75; the same command,
    repeated, ends with the metrics and curve epochs of one uninterrupted process, and a wall time summed
    over its calls."""
    config = tiny_config(tmp_path)
    done = run_tta(config, tmp_path / "straight", tmp_path / "straight.json", "--no-curve")
    assert done.returncode == 0, done.stderr[-2000:]
    straight = json.loads((tmp_path / "straight.json").read_text())
    out = tmp_path / "chain.json"
    codes = []
    for _ in range(8):
        done = run_tta(config, tmp_path / "chain", out, "--time-limit", "0.0001")
        codes.append(done.returncode)
        if done.returncode != 75:
            break
        assert "run the same command again" in done.stderr
        assert json.loads((tmp_path / "chain" / "seed0" / "tta_chain.json").read_text())["open_call"] is None
    assert codes == [75, 75, 75, 0], done.stderr[-2000:]  # 4 epochs: the 4th call finishes and evaluates
    chained = json.loads(out.read_text())
    assert chained["metrics"] == straight["metrics"]
    assert chained["chained_calls"] == {"0": 4} and "--time-limit 0.0001" in chained["command"]
    assert [point["epoch"] for point in chained["curves"]["0"]] == [0, 1, 2, 3]
    minutes = [point["minutes"] for point in chained["curves"]["0"]]
    assert minutes == sorted(minutes)
    seed = chained["per_seed"][0]
    assert abs(sum(seed["stage_seconds"].values()) - (seed["wall_seconds"] - seed["curve_seconds"])) < 2.0
