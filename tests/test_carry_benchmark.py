"""benchmarks/carry.py: a run directory packed into parts and unpacked elsewhere is the same run — a
chain stopped in one place continues in another to the uninterrupted result — and bad parts are
refused with one line."""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path
from types import ModuleType

import pytest

from labelless.cli import load_benchmark, main

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "digits" / "default.yaml"


@pytest.fixture(scope="module")
def carry() -> ModuleType:
    return load_benchmark("carry")


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_pack_splits_into_parts_and_unpack_restores_every_file(carry, tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "cluster.pt").write_bytes(bytes(range(256)) * 20)
    (run / "metrics.jsonl").write_text('{"epoch": 0}\n')
    written = carry.pack(run, tmp_path / "out", part_bytes=4000)
    assert written[0].name == "run.carry.json" and len(written) > 3  # several parts: the tar is > 10 kB
    assert all(p.stat().st_size <= 4000 for p in written[1:])
    restored = carry.unpack(tmp_path / "out", tmp_path / "elsewhere")
    assert tree(restored) == tree(run)
    with pytest.raises(carry.CarryError, match="exceed the 3 files"):
        carry.pack(run, tmp_path / "small", part_bytes=4000, max_files=3)


def test_missing_altered_or_escaping_parts_are_refused(carry, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "a.txt").write_text("a" * 5000)
    out = tmp_path / "out"
    written = carry.pack(run, out, part_bytes=2000)
    written[2].write_bytes(b"x" + written[2].read_bytes()[1:])
    with pytest.raises(carry.CarryError, match="do not match their manifest"):
        carry.unpack(out, tmp_path / "x")
    written[2].unlink()
    assert carry.main(["unpack", str(out), "--into", str(tmp_path / "x")]) == 2
    assert "1 of 6 parts missing" in capsys.readouterr().err  # a 10 kB tar record in parts of 2000 bytes

    evil, buffer = tmp_path / "evil", io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        info = tarfile.TarInfo("../outside.txt")
        info.size = 2
        archive.addfile(info, io.BytesIO(b"hi"))
    data = buffer.getvalue()
    evil.mkdir()
    (evil / "e.carry.000").write_bytes(data)
    (evil / "e.carry.json").write_text(json.dumps({"name": "e", "bytes": len(data), "parts": ["e.carry.000"],
                                                   "sha256": hashlib.sha256(data).hexdigest()}))
    with pytest.raises(carry.CarryError, match="would land outside"):
        carry.unpack(evil, tmp_path / "target")
    assert not (tmp_path / "outside.txt").exists()


def test_a_chain_stopped_in_one_run_directory_finishes_from_its_carried_copy(carry, tmp_path, capsys):
    common = ["train", "--config", str(CONFIG), "--json", "--no-report", "--set", "stages.0.train.epochs=2",
              "--set", "stages.1.train.epochs=1", "--set", "device=cpu"]
    assert main([*common, "--run-dir", str(tmp_path / "straight")]) == 0
    assert main([*common, "--run-dir", str(tmp_path / "first"), "--resume", "--time-limit", "0.0001"]) == 75
    carry.pack(tmp_path / "first", tmp_path / "parts", part_bytes=1_000_000)
    carry.unpack(tmp_path / "parts", tmp_path / "second")
    codes = [main([*common, "--run-dir", str(tmp_path / "second"), "--resume", "--time-limit", "0.0001"])
             for _ in range(2)]
    capsys.readouterr()
    assert codes == [75, 0]  # cluster's 2nd epoch (selflabel not started), then selflabel and the evaluation
    assert (tmp_path / "second" / "predictions.csv").read_text() == (tmp_path / "straight" / "predictions.csv").read_text()
