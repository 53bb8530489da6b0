"""Fuzz target for the dataset reader (gateway.core.dataset), run as a child process:

    python -m tests.fuzz_dataset SEED CASES [MEMORY_MIB] [CASE_SECONDS]

Under RLIMIT_AS (MEMORY_MIB, default 512) and a per-case wall-clock alarm (CASE_SECONDS,
default 5), it walks the fixed regression cases (1 MB deflate bomb, 200,000-item sequence in
2.4 KB, the once-"truncated" deflated length) and then CASES mutations of real files from
pydicom's test files and pydicom-data, in every transfer syntax family the listener accepts:
implicit and explicit VR little endian, explicit big endian, deflated, encapsulated. The
invariant: each case ends in a ``Walked``, a ``DatasetStructureError`` or a
``DatasetLimitError``, within the time, without MemoryError. Prints one JSON summary line;
exit status 0 when every case held, 1 otherwise.
"""

from __future__ import annotations

import json
import random
import resource
import signal
import struct
import sys
import time
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

from gateway.core.dataset import Syntax, walk
from gateway.core.errors import DatasetLimitError, DatasetStructureError, FrameError
from gateway.core.part10 import dataset_offset
from tests.dicom_cases import DEFLATED_LE, deflate, deflate_bomb, item_flood, truncation_length_case

WANTED = frozenset({0x0020000D, 0x0020000E, 0x00080060})
MAX_SEED_BYTES = 256 * 1024
_MARKERS = [struct.pack("<HHL", 0xFFFE, e, n) for e in (0xE000, 0xE00D, 0xE0DD) for n in (0, 0xFFFFFFFF, 8)]


def family(uid: str) -> str:
    syntax = Syntax.from_uid(uid)
    if syntax.deflated:
        return "deflated"
    if syntax.implicit_vr:
        return "implicit LE"
    if not syntax.little_endian:
        return "explicit BE"
    return "explicit LE" if uid == "1.2.840.10008.1.2.1" else "encapsulated"


def _transfer_syntax(raw: bytes) -> str:
    pos = 132
    while pos + 8 <= len(raw) and raw[pos:pos + 2] == b"\x02\x00":
        element, vr = struct.unpack_from("<H", raw, pos + 2)[0], raw[pos + 4:pos + 6]
        if vr in (b"OB", b"OW", b"UN", b"SQ", b"UT"):
            length, start = struct.unpack_from("<L", raw, pos + 8)[0], pos + 12
        else:
            length, start = struct.unpack_from("<H", raw, pos + 6)[0], pos + 8
        if element == 0x0010:
            return raw[start:start + length].decode("ascii", "replace").rstrip("\0 ")
        pos = start + length
    return ""


def seeds() -> list[tuple[str, bytes]]:
    """(transfer syntax UID, dataset bytes) of every small real file installed."""
    import importlib.util

    roots = []
    for package, sub in (("pydicom", "data/test_files"), ("data_store", "data")):
        spec = importlib.util.find_spec(package)
        if spec is not None and spec.origin is not None:
            roots.append(Path(spec.origin).parent / sub)
    found = []
    for path in sorted(p for root in roots for p in root.glob("*.dcm")):
        raw = path.read_bytes()
        if len(raw) > MAX_SEED_BYTES:
            continue
        try:
            uid, start = _transfer_syntax(raw), dataset_offset(raw)
        except (FrameError, struct.error):
            continue
        if uid:
            found.append((uid, raw[start:]))
    return found


def mutate(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    how = rng.choice(("flip", "truncate", "length", "splice", "marker", "repeat"))
    if not out:
        return bytes(rng.randbytes(16))
    if how == "flip":
        for _ in range(rng.randint(1, 8)):
            out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    elif how == "truncate":
        del out[rng.randrange(len(out)):]
    elif how == "length":
        pos = rng.randrange(max(1, len(out) - 4))
        out[pos:pos + 4] = rng.choice((b"\xff\xff\xff\xff", b"\xff\xff\xff\x7f", b"\x00\x00\x00\x80", b"\0\0\0\0"))
    elif how == "splice":
        pos = rng.randrange(len(out))
        out[pos:pos] = rng.randbytes(rng.randint(1, 64))
    elif how == "marker":  # item and delimiter tags where they do not belong
        pos = rng.randrange(len(out))
        out[pos:pos] = rng.choice(_MARKERS) * rng.randint(1, 50)
    else:  # a region repeated: long runs of elements or items
        start = rng.randrange(len(out))
        region = out[start:start + rng.randint(8, 64)]
        out[start:start] = region * rng.randint(2, 200)
    return bytes(out)


class _TooSlow(Exception):
    pass


def _alarm(_signum: int, _frame: Any) -> None:
    raise _TooSlow


def run_case(data: bytes, uid: str, case_s: float) -> tuple[str, float]:
    started = time.monotonic()
    signal.setitimer(signal.ITIMER_REAL, case_s)
    try:
        walk(data, Syntax.from_uid(uid), WANTED, clock=time.monotonic)
        outcome = "ok"
    except DatasetLimitError:
        outcome = "limit"
    except DatasetStructureError:
        outcome = "structure"
    except _TooSlow:
        outcome = "FAIL: over the time limit"
    except MemoryError:
        outcome = "FAIL: out of memory"
    except Exception as exc:  # the invariant broken: report, keep going
        outcome = f"FAIL: {type(exc).__name__}: {exc}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    return outcome, time.monotonic() - started


def _deflated_variant(uid: str, data: bytes, rng: random.Random) -> tuple[str, bytes]:
    """Mutate the inflated dataset and deflate it again, or mutate the deflated bytes."""
    if Syntax.from_uid(uid).deflated:
        try:
            inner = zlib.decompress(data, -zlib.MAX_WBITS)
        except zlib.error:
            return uid, mutate(data, rng)
        return uid, deflate(mutate(inner, rng)) if rng.random() < 0.7 else mutate(data, rng)
    return DEFLATED_LE, deflate(mutate(data, rng))  # any explicit LE seed, deflated


def main(argv: list[str]) -> int:
    seed, cases = int(argv[0]), int(argv[1])
    memory = int(argv[2]) if len(argv) > 2 else 512
    case_s = float(argv[3]) if len(argv) > 3 else 5.0
    corpus = seeds()  # read before the limit: the limit is for the reader, not for file loading
    resource.setrlimit(resource.RLIMIT_AS, (memory << 20, memory << 20))
    signal.signal(signal.SIGALRM, _alarm)
    summary: dict[str, Any] = {"regression": {}, "families": sorted({family(u) for u, _ in corpus}),
                               "rlimit_as": resource.getrlimit(resource.RLIMIT_AS)[0], "seeds": len(corpus)}
    for name, data in (("deflate bomb", deflate_bomb()), ("item flood", item_flood()),
                       ("truncation length", truncation_length_case())):
        outcome, took = run_case(data, DEFLATED_LE, case_s)
        summary["regression"][name] = {"outcome": outcome, "seconds": round(took, 3), "bytes": len(data)}
    rng, outcomes, failures, slowest = random.Random(seed), Counter[str](), [], 0.0
    explicit = [(u, d) for u, d in corpus if family(u) == "explicit LE"]
    for n in range(cases):
        uid, data = rng.choice(corpus)
        if n % 4 == 0:
            uid, data = _deflated_variant(*rng.choice(explicit + [(u, d) for u, d in corpus if family(u) ==
                                                                   "deflated"]), rng)
        else:
            data = mutate(data, rng)
        outcome, took = run_case(data, uid, case_s)
        slowest = max(slowest, took)
        outcomes[outcome.split(":")[0]] += 1
        if outcome.startswith("FAIL") and len(failures) < 5:
            failures.append({"case": n, "syntax": uid, "outcome": outcome, "hex": data[:512].hex()})
    summary.update(cases=cases, outcomes=dict(outcomes), failures=failures, slowest_case_s=round(slowest, 3))
    print(json.dumps(summary))
    return 1 if failures or any(r["outcome"].startswith("FAIL") for r in summary["regression"].values()) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
