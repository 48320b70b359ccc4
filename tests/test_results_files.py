"""Every committed result file follows ../shared/RESULTS.md (checked by the project's shared validator); every
tuning file was scored on holdout."""
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
    import json

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
