"""One export fuzz case (driven by fuzz_usb.py): a hostile stick folder and a damaged box."""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from pathlib import Path

from gateway.appliance import export
from tests.appliance.sticks import BOX_ID, Canary, edge_box

NOW = 1_900_000_000.0


def export_case(case_dir: Path, rng: random.Random) -> None:
    box = edge_box(case_dir, items=rng.randrange(0, 5), size=rng.randrange(1, 70_000), seed=rng.randrange(1 << 30))
    canary = Canary.plant(case_dir / "outside")
    before, listing = canary.snapshot(), sorted(os.listdir(canary.path.parent))
    stick = case_dir / "stick"
    stick.mkdir()
    base = f"{export.EXPORT_PREFIX}{BOX_ID}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(NOW))}"
    for n in rng.sample(range(4), rng.randrange(0, 4)):  # traps on the names the export tries
        name = stick / (base if n == 0 else f"{base}-{n}")
        rng.choice([lambda p: p.symlink_to(canary.path.parent), lambda p: os.mkfifo(p),
                    lambda p: p.write_bytes(b"x"), lambda p: p.mkdir()])(name)
    blobs = sorted(box.paths.blob_dir.iterdir())
    for blob in rng.sample(blobs, rng.randrange(0, len(blobs) + 1)):  # damage on the box
        rng.choice([lambda b: b.unlink(), lambda b: (b.unlink(), b.symlink_to(canary.path)),
                    lambda b: b.write_bytes(b.read_bytes()[:-1]), lambda b: (b.unlink(), os.mkfifo(b))])(blob)
    summary = export.export_unacked(box.settings, box.paths, stick, NOW)
    _check(summary.directory, box.item_ids, canary.secret)
    assert canary.snapshot() == before and sorted(os.listdir(canary.path.parent)) == listing


def _check(directory: Path, item_ids: list[int], secret: bytes) -> None:
    manifest = json.loads((directory / export.MANIFEST_NAME).read_text())
    files = {t["file"]: t for t in manifest["transfers"]}
    assert set(os.listdir(directory)) == {export.MANIFEST_NAME, *files}
    for name, entry in files.items():
        data = (directory / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"] and secret not in data
    written, failed = {t["item_id"] for t in manifest["transfers"]}, {f["item_id"] for f in manifest["failed"]}
    assert written | failed == set(item_ids) and not written & failed
    assert manifest["complete"] is (not failed)
