"""benchmarks/seeds.py: one process per seed, mean ± std, and chains of time-limited calls that end
with the result of uninterrupted runs (scikit-learn digits, bundled: no real data needed)."""
from __future__ import annotations

import importlib.util
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

    # a seed added later to a file of the other (--add-to) gives the two-seed result, each seed's commit kept
    first = tmp_path / "first.json"
    assert seeds("--seeds", "0", "--out", str(first)).returncode == 0
    earlier = json.loads(first.read_text())
    earlier["per_seed"][0]["commit"] = "0" * 40  # as if made at another commit
    first.write_text(json.dumps(earlier))
    done = seeds("--seeds", "1", "--add-to", str(first), "--out", str(first))
    assert done.returncode == 0, done.stderr[-2000:]
    added = json.loads(first.read_text())
    assert added["seeds"] == [0, 1] and added["metrics"] == straight["metrics"]
    assert added["metrics_std"] == straight["metrics_std"]
    assert [r["commit"] for r in added["per_seed"]] == ["0" * 40, added["commit"]]
    refused = seeds("--seeds", "1", "--add-to", str(first), "--out", str(first))  # refused before training
    assert refused.returncode == 2 and "seed(s) [1] already in" in refused.stderr


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


def _seeds_module():
    spec = importlib.util.spec_from_file_location("seeds_benchmark", ROOT / "benchmarks" / "seeds.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _result(seeds: list[int], accs: list[float], **fields) -> dict:
    return {"method": "m", "dataset": "d", "split": "test", "train_split": "train", "epochs": 3, "variant": "v",
            "head_selection": "lowest_loss", "labels_used_in_training": False, "device": "cpu: x, 2 cores",
            "seeds": seeds, "per_seed": [{"seed": s, "ACC": a, "wall_seconds": 10.0 * (s + 1)} for s, a in zip(seeds, accs)],
            "command": "labelless train --config c.yaml --seed S --json --run-dir /a/seedS", "commit": "abc" * 13 + "a",
            "created": "2026-12-02T00:00:00Z", **fields}


def test_add_to_merges_per_seed_results_and_refuses_other_runs():
    add_to = _seeds_module().add_to
    earlier = _result([0], [0.5], note="first seed.")
    new = {**_result([2, 1], [0.7, 0.9]), "commit": "def" * 13 + "d",
           "command": "labelless train --config c.yaml --seed S --json --run-dir /elsewhere/seedS"}
    merged = add_to(earlier, new)
    assert merged["seeds"] == [0, 1, 2] and merged["metrics"]["ACC"] == 0.7
    assert abs(merged["metrics_std"]["ACC"] - (0.08 / 3) ** 0.5) < 1e-12  # population std of .5, .9, .7
    assert [r["commit"][:3] for r in merged["per_seed"]] == ["abc", "def", "def"]
    assert merged["wall_seconds"] == 20.0 and merged["commit"] == new["commit"]
    assert merged["note"].startswith("first seed. Seeds [2, 1] added at defdefd")
    chained = {**new, "command": "labelless train --config c.yaml --seed S --json --run-dir /b/seedS --resume "
                                 "--time-limit M (chained: python benchmarks/seeds.py --time-limit 160)"}
    older_chain = {**earlier, "command": "labelless train --config c.yaml --run-dir /a/seedS --resume --seed S --json"}
    assert add_to(older_chain, chained)["seeds"] == [0, 1, 2]  # the chain's bookkeeping is not the command
    for change, message in [({"dataset": "e"}, "dataset is 'd' there, 'e' here"),
                            ({"epochs": 4}, "epochs is 3 there, 4 here"),
                            ({"command": "labelless train --config other.yaml --seed S --json"}, "not the same command"),
                            ({"command": "labelless train --config c.yaml --set x=1 --seed S --json"}, "not the same command"),
                            ({"seeds": [0], "per_seed": [{"seed": 0, "ACC": 0.1, "wall_seconds": 1.0}]},
                             "seed(s) [0] already in the file")]:
        try:
            add_to(earlier, {**new, **change})
        except ValueError as err:
            assert message in str(err) and "\n" not in str(err)
        else:
            raise AssertionError(f"{change} was merged")
