"""The package's top level: its public names resolve on first use, and importing it (as the command
line does before parsing its arguments) does not load torch."""
from __future__ import annotations

import subprocess
import sys

import pytest

import labelless


def test_importing_labelless_or_its_cli_does_not_load_torch():
    code = "import sys, labelless, labelless.cli; print(sorted({'torch', 'sklearn', 'torchvision'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr


def test_public_names_resolve_to_the_api_and_unknown_ones_fail():
    from labelless.config import load_config
    from labelless.pipeline import Run, train

    assert labelless.train is train and labelless.Run is Run and labelless.load_config is load_config
    assert callable(labelless.evaluate.cluster_metrics) and callable(labelless.load_dataset)
    assert set(labelless.__all__) <= set(dir(labelless))
    with pytest.raises(AttributeError, match="no attribute 'trian'"):
        labelless.trian  # noqa: B018


def test_results_stamp_takes_the_commit_from_the_environment_before_git(monkeypatch):
    """The device machine's copy of the tree has no `.git`: LABELLESS_COMMIT names the commit there."""
    from labelless import provenance

    monkeypatch.setattr(provenance, "git_commit", lambda: None)
    monkeypatch.delenv("LABELLESS_COMMIT", raising=False)
    assert provenance.stamp("x")["commit"] == "unknown"
    monkeypatch.setenv("LABELLESS_COMMIT", "abc123\n")
    assert provenance.stamp("x")["commit"] == "abc123"
    assert provenance.stamp("x", commit="def456")["commit"] == "def456"
    monkeypatch.setattr(provenance, "git_commit", lambda: "0" * 40)
    monkeypatch.setenv("LABELLESS_COMMIT", "")
    assert provenance.stamp("x")["commit"] == "0" * 40
