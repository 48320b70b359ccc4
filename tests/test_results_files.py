"""Every committed result file follows ../shared/RESULTS.md (checked by the project's shared validator); every
tuning file was scored on holdout."""
import json
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VALIDATOR = ROOT.parent / "shared" / "tools" / "validate_results.py"


@pytest.mark.skipif(not VALIDATOR.is_file(), reason=f"the shared validator is absent ({VALIDATOR})")
def test_committed_results_follow_the_schema():
    files = sorted(str(p) for p in (ROOT / "benchmarks" / "results").glob("*.json"))
    assert files, "benchmarks/results/ holds no result file"
    done = subprocess.run([sys.executable, str(VALIDATOR), *files], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stdout


def test_tuning_files_were_scored_on_holdout_after_training_on_fit():
    """benchmarks/tuning/ holds the evidence for choices: never a test-split score, never a label in training."""
    files = sorted((ROOT / "benchmarks" / "tuning").glob("*.json"))
    assert files, "benchmarks/tuning/ holds no tuning file"
    for path in files:
        result = json.loads(path.read_text())
        assert (result["split"], result["train_split"], result["labels_used_in_training"]) == \
            ("holdout", "fit", False), path.name
        command = result["command"]
        holdout_command = "--tune" in command or (
            "--set dataset.split=fit" in command and "--set dataset.eval_split=holdout" in command)
        assert 0 <= result["metrics"]["ACC"] <= 1 and holdout_command, path.name


NUMBER = re.compile(r"\*{0,2}(\d\.\d+)(?: ± (\d\.\d+))?\*{0,2}")  # a README cell: 0.976, **0.976 ± 0.002**


def _agrees(shown: str, value: float) -> bool:
    """`shown` is `value` rounded to the digits it shows."""
    return abs(float(shown) - value) <= 0.5 * 10 ** -len(shown.split(".")[1]) + 1e-9


def _readme_result_rows() -> list[tuple[list[str], list[dict]]]:
    """Each Results-table row that names a result file: its cells and the file(s) behind its numbers (a
    `NAME-seed0.json` row averages NAME-seed*.json)."""
    rows = []
    for line in (ROOT / "README.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        files = re.findall(r"`([\w.-]+\.json)`", cells[-1]) if line.startswith("| ") and len(cells) == 7 else []
        if not files:
            continue
        first = ROOT / "benchmarks" / "results" / files[0]
        assert first.is_file(), f"README names {files[0]}, which benchmarks/results/ lacks"
        paths = sorted(first.parent.glob(first.name.replace("-seed0.json", "-seed*.json"))) \
            if first.name.endswith("-seed0.json") else [first]
        rows.append((cells, [json.loads(p.read_text()) for p in paths]))
    return rows


def test_readme_results_table_shows_what_its_files_hold():
    """ACC, NMI and ARI of every row (mean ± std where shown) are its file's, rounded: a rerun that
    updates a file but not its row, or the other way round, fails here."""
    checked = 0
    for cells, results in _readme_result_rows():
        for column, key in ((2, "ACC"), (3, "NMI"), (4, "ARI")):
            shown = NUMBER.fullmatch(cells[column])
            if shown is None:  # "—": the row reports another metric
                continue
            values = [r["metrics"][key] for r in results]
            std = results[0].get("metrics_std", {}).get(key) if len(results) == 1 else statistics.pstdev(values)
            assert _agrees(shown.group(1), statistics.mean(values)), (cells[-1][:60], key, cells[column])
            assert shown.group(2) is None or (std is not None and _agrees(shown.group(2), std)), \
                (cells[-1][:60], key, cells[column])
            checked += 1
    assert checked >= 100, f"only {checked} README figures were found to check: has the table's layout changed?"


def test_readme_make_run_table_is_seed_0_of_the_digits_result():
    readme = (ROOT / "README.md").read_text()
    seed0 = json.loads((ROOT / "benchmarks" / "results" / "main-digits-cpu.json").read_text())["per_seed"][0]
    assert seed0["seed"] == 0
    for key in ("ACC", "NMI", "ARI"):
        shown = re.search(rf"^{key} +(\d\.\d{{4}})$", readme, re.MULTILINE)
        assert shown is not None and _agrees(shown.group(1), seed0[key]), (key, shown and shown.group(1))
