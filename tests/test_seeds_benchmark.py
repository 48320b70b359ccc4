"""benchmarks/seeds.py: one process per seed, mean ± std, and chains of time-limited calls that end
with the result of uninterrupted runs (scikit-learn digits, bundled: no real data needed)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMAND = ["train", "--config", str(ROOT / "configs" / "digits" / "default.yaml"), "--set", "stages.0.train.epochs=1",
           "--set", "stages.1.train.epochs=1", "--device", "cpu", "--no-report"]


def seeds(*options: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "seeds.py"), *options, "--", *COMMAND],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)


def test_two_seeds_in_one_go_and_as_a_chain_of_calls_give_the_same_result(tmp_path):
    done = seeds("--seeds", "0", "1", "--out", str(tmp_path / "straight.json"))
    assert done.returncode == 0, done.stderr[-2000:]
    straight = json.loads((tmp_path / "straight.json").read_text())
    per_seed = [run["ACC"] for run in straight["per_seed"]]
    assert straight["seeds"] == [0, 1] and straight["metrics"]["ACC"] == sum(per_seed) / 2
    assert straight["labels_used_in_training"] is False and "chained_calls" not in straight["per_seed"][0]
    assert straight["epochs"] == {"cluster": 1, "selflabel": 1} and straight["head_selection"] == "lowest_loss"
    assert straight["variant"] == "digits-default stages.0.train.epochs=1 stages.1.train.epochs=1"

    out, codes = tmp_path / "chain.json", []
    for _ in range(10):  # far below one epoch: each call trains one epoch (or finishes a seed's last)
        done = seeds("--seeds", "0", "1", "--out", str(out), "--time-limit", "0.0001", "--run-root", str(tmp_path / "r"))
        codes.append(done.returncode)
        if done.returncode != 75:
            break
        assert not out.exists() and "run this same seeds.py command again" in done.stderr
    # seed 0: cluster, selflabel not started | selflabel, then seed 1 waits for the next call; seed 1 the same
    assert codes == [75, 75, 75, 0], done.stderr[-2000:]
    chained = json.loads(out.read_text())
    assert chained["metrics"] == straight["metrics"]
    assert [run["chained_calls"] for run in chained["per_seed"]] == [2, 2]
    assert "--time-limit" in chained["command"] and "summed over the calls" in chained["wall_clock"]


def test_time_limit_without_a_run_root_is_refused(tmp_path):
    done = seeds("--seeds", "0", "--out", str(tmp_path / "x.json"), "--time-limit", "1")
    assert done.returncode == 2 and "needs --run-root" in done.stderr


def test_a_call_killed_from_outside_is_not_resumed_uncounted(tmp_path):
    """A chained call killed by the machine's cap leaves its mark (a call without a time) in the chain's
    record: the next call refuses in one line instead of resuming with that call's time left out."""
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "seeds_chain.json").write_text(json.dumps({"0": {"calls": [12.5, None], "result": None}}))
    done = seeds("--seeds", "0", "--out", str(tmp_path / "x.json"), "--time-limit", "5", "--run-root", str(tmp_path / "r"))
    assert done.returncode == 2 and "was killed before it could record its time" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not (tmp_path / "x.json").exists()
