"""Fuzz driver for the USB paths, run by tests/appliance/test_usb_fuzz.py in a child process
under a memory limit (RLIMIT_AS), each case under a time limit (an interval timer).

    python -m tests.appliance.fuzz_usb bundle SEED CASES
    python -m tests.appliance.fuzz_usb export SEED CASES

``bundle``: real bundles made by ``bundle.sign`` (the seeds), mutated (bit flips, bracket runs,
truncation, splices, huge numbers) plus the fixed regression classes, each written to a stick
folder and put through ``read_file`` and ``verify``: the only outcomes allowed are a ``Bundle``
or a ``BundleRefusedError``. ``export``: random hostile stick folders (links, FIFOs and files
named like the export folder) and random box-side damage; the manifest must match the folder
exactly and nothing outside it may change. Prints one line per failure; exits 1 if any.
"""

from __future__ import annotations

import base64
import json
import os
import random
import signal
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway import bundle

CASE_SECONDS = 5.0
NOW = 1_800_000_000.0


class CaseTimeout(Exception):
    pass


def _alarm(_signum: int, _frame: object) -> None:
    raise CaseTimeout(f"case took longer than {CASE_SECONDS} s")


def _signed(key: bytes, rng: random.Random) -> bytes:
    site = rng.choice([{}, {"dicom": {"ae_title": "CT01"}}, {"uplink": {"max_frame_bytes": 65536}}])
    return bundle.sign(key, "https://cloud.example:8443", "ab" * 32, "mgw1-" + "x" * rng.randrange(1, 64),
                       site, NOW, rng.choice([60.0, 3600.0]))


def _resigned(key: bytes, payload: bytes) -> bytes:
    """A bundle whose payload is ``payload`` exactly, correctly signed (so the parser sees it)."""
    private = Ed25519PrivateKey.from_private_bytes(key)
    doc = {"format": bundle.FORMAT, "key_id": bundle.key_id(private.public_key().public_bytes_raw()),
           "payload": base64.b64encode(payload).decode(),
           "signature": base64.b64encode(private.sign(bundle.FORMAT.encode() + b"\n" + payload)).decode()}
    return json.dumps(doc).encode()


def regression_bundles(key: bytes) -> list[bytes]:
    """The classes found against the box, fixed: each must be refused, never crash."""
    doc = json.loads(_signed(key, random.Random(0)))
    forged = dict(doc, key_id="0123\n2030-01-01T00:00:00Z INFO gateway.field box provisioned")
    return [b"[" * 100_000 + b"]" * 100_000, b"{" * 50_000, _resigned(key, b"[" * 60_000 + b"]" * 60_000),
            _resigned(key, b'{"enrolment": {"url": 1}, "created_at": 1e999, "expires_at": "nan"}'),
            _resigned(key, b'{"enrolment": [], "created_at": 0, "expires_at": 0}'),
            _resigned(key, b'"just a string"'), _resigned(key, b"\xff\xfe"), json.dumps(forged).encode(),
            b"", b"\x00" * 1000, b'{"format": "mgw-provision-bundle/1"}']


def _mutate(data: bytes, rng: random.Random) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randrange(1, 6)):
        op, pos = rng.randrange(6), rng.randrange(max(1, len(buf)))
        if op == 0 and buf:
            buf[pos] ^= 1 << rng.randrange(8)
        elif op == 1:
            buf[pos:pos] = rng.choice([b"[", b"{", b'"', b"\\", b"\n"]) * rng.randrange(1, 5000)
        elif op == 2:
            del buf[pos:]
        elif op == 3:
            buf[pos:pos] = buf[rng.randrange(max(1, len(buf))):][:rng.randrange(1, 200)]
        elif op == 4:
            buf[pos:pos] = str(10 ** rng.randrange(1, 400)).encode()
        else:
            buf[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 32)))
    return bytes(buf)


def fuzz_bundles(seed: int, cases: int) -> list[str]:
    rng = random.Random(seed)
    key = rng.randbytes(32)
    public = Ed25519PrivateKey.from_private_bytes(key).public_key()
    signers = {bundle.key_id(public.public_bytes_raw()): public}
    seeds = [_signed(key, rng) for _ in range(4)]
    inputs = regression_bundles(key) + [_mutate(rng.choice(seeds), rng) for _ in range(cases)]
    failures = []
    with tempfile.TemporaryDirectory(prefix="fuzz-stick-") as stick:
        for n, raw in enumerate(inputs):
            (Path(stick) / bundle.FILE_NAME).write_bytes(raw)
            failures += _run_case(f"bundle case {n}", lambda: _verify_file(Path(stick) / bundle.FILE_NAME, signers))
    return failures


def _verify_file(path: Path, signers: dict) -> None:
    try:
        got = bundle.verify(bundle.read_file(path), signers, NOW)
        assert isinstance(got, bundle.Bundle)
    except bundle.BundleRefusedError as exc:
        assert "\n" not in str(exc), "a refusal reason spans lines"


def _run_case(name: str, case: Callable[[], None]) -> list[str]:
    signal.setitimer(signal.ITIMER_REAL, CASE_SECONDS)
    try:
        case()
    except BaseException as exc:  # noqa: BLE001 - anything but the allowed outcomes is a finding
        return [f"{name}: {exc.__class__.__name__}: {str(exc)[:200]} | {traceback.format_exc(limit=3)[-400:]!r}"]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    return []


def fuzz_exports(seed: int, cases: int) -> list[str]:
    from tests.appliance.fuzz_export import export_case

    rng = random.Random(seed)
    failures = []
    with tempfile.TemporaryDirectory(prefix="fuzz-export-") as root:
        for n in range(cases):
            case_dir = Path(root) / f"case{n}"
            case_dir.mkdir()
            failures += _run_case(f"export case {n}", lambda d=case_dir: export_case(d, rng))  # type: ignore[misc]
    return failures


def main(argv: list[str]) -> int:
    what, seed, cases = argv[0], int(argv[1]), int(argv[2])
    signal.signal(signal.SIGALRM, _alarm)
    failures = (fuzz_bundles if what == "bundle" else fuzz_exports)(seed, cases)
    for line in failures:
        print(line)
    print(f"{what}: {len(failures)} failure(s)", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main(sys.argv[1:]))
