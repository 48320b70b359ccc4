"""Every committed result file follows ../shared/RESULTS.md (checked by the project's shared validator)."""
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
