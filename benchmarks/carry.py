"""Carry a run directory from one GPU session to the next, in parts small enough for the device tool.

A lent machine keeps `/root/runs` only while it is warm, and a session has 30 minutes of device time,
so a chain longer than one session (issue 8's 30-minute budget, Super-AND's 1000 epochs) must bring
its checkpoints home and back. A call returns at most 8 files of at most 16 MiB under $OUT, and a
call carries at most 64 MiB of the working tree, so:

    # last call of a session, on the device: the run directory → parts under $OUT
    python3 benchmarks/carry.py pack /root/runs/tta30 --out $OUT
    # here: copy the returned parts into an ignored folder of the checkout (.carry/), then on the
    # device, in the next session, carry them (≤ 4 parts a call) and append them to /root/carry/;
    # the call that has them all restores the run directory and goes on with the chain:
    python3 benchmarks/carry.py unpack /root/carry --into /root/runs/tta30

`pack` writes `<name>.carry.json` (the whole archive's SHA-256 and its parts) and
`<name>.carry.000`, `.001`, …; `unpack` refuses a missing or altered part with one line, and any
archive member that would land outside the target directory.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import tarfile
from pathlib import Path

PART_BYTES = 14 * 2**20  # 4 parts and the code fit one 64 MiB call
MAX_FILES = 8  # files one call returns


class CarryError(Exception):
    pass


def pack(run_dir: Path, out: Path, part_bytes: int = PART_BYTES, max_files: int = MAX_FILES) -> list[Path]:
    """Archive `run_dir` (uncompressed tar: weights do not compress) into parts plus a manifest."""
    if not run_dir.is_dir():
        raise CarryError(f"no run directory at {run_dir}")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        archive.add(run_dir, arcname=".")
    data = buffer.getvalue()
    parts = max(1, -(-len(data) // part_bytes))
    if parts + 1 > max_files:
        raise CarryError(f"{run_dir} packs to {len(data) / 2**20:.0f} MiB: {parts} parts of "
                         f"{part_bytes / 2**20:.0f} MiB and a manifest exceed the {max_files} files a call returns")
    out.mkdir(parents=True, exist_ok=True)
    name = run_dir.name
    written = []
    for index in range(parts):
        path = out / f"{name}.carry.{index:03d}"
        path.write_bytes(data[index * part_bytes:(index + 1) * part_bytes])
        written.append(path)
    manifest = out / f"{name}.carry.json"
    manifest.write_text(json.dumps({"name": name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                                    "parts": [p.name for p in written]}, indent=2) + "\n")
    return [manifest, *written]


def unpack(folder: Path, into: Path) -> Path:
    """Check and join the parts in `folder` (one manifest), extract them into `into`."""
    manifests = sorted(folder.glob("*.carry.json"))
    if len(manifests) != 1:
        raise CarryError(f"{folder} holds {len(manifests)} *.carry.json manifests, not one")
    manifest = json.loads(manifests[0].read_text())
    missing = [part for part in manifest["parts"] if not (folder / part).is_file()]
    if missing:
        raise CarryError(f"{len(missing)} of {len(manifest['parts'])} parts missing in {folder}: {', '.join(missing)}")
    data = b"".join((folder / part).read_bytes() for part in manifest["parts"])
    if len(data) != manifest["bytes"] or hashlib.sha256(data).hexdigest() != manifest["sha256"]:
        raise CarryError(f"the parts in {folder} do not match their manifest (altered or from another pack)")
    into.mkdir(parents=True, exist_ok=True)
    root = into.resolve()
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as archive:
        for member in archive.getmembers():
            target = (root / member.name).resolve()
            if not (target == root or root in target.parents) or member.issym() or member.islnk():
                raise CarryError(f"archive member {member.name!r} would land outside {into}")
        # the "data" filter (Python ≥ 3.11.4) re-checks every member; the loop above covers older ones
        archive.extractall(root, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    return into


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="action", required=True)
    p = sub.add_parser("pack", help="run directory → parts and a manifest")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--out", type=Path, required=True, help="where the parts go ($OUT on the device)")
    p.add_argument("--part-mib", type=float, default=PART_BYTES / 2**20, help="part size in MiB (default 14)")
    p = sub.add_parser("unpack", help="parts and their manifest → run directory")
    p.add_argument("folder", type=Path, help="the folder holding the parts and the manifest")
    p.add_argument("--into", type=Path, required=True, help="the run directory to restore")
    args = parser.parse_args(argv)
    try:
        if args.action == "pack":
            written = pack(args.run_dir, args.out, int(args.part_mib * 2**20))
            print(f"{len(written) - 1} parts + manifest in {args.out}", file=sys.stderr)
        else:
            print(f"restored {unpack(args.folder, args.into)}", file=sys.stderr)
    except CarryError as error:
        print(f"carry: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
