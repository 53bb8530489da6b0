"""The diagnostic bundle of a box (the ``bundle`` remote command): what an engineer would look at on site.

One JSON document: the last log lines of this edge process (``LogRing``, in memory: what the
process logged since it started, at most ``RING_LINES``), the configuration with every secret
removed, the spool's queue state, the quarantine (no patient data by its own rule), disk, the
certificate's and keyrings' state. Logs carry no PHI by the codebase's rule; the bundle scrubs
again whatever looks like a DICOM UID, and drops the log fields that may name a study
(``SCRUBBED_FIELDS``), so that a bundle holds no patient data even if a log line ever did
(``tests/system/test_commands.py`` proves it with a study sent through the box).

The document is sealed for the cloud's envelope key (``command_wire.seal_blob``) and sent in
parts of ``BLOB_PART_BYTES`` (``schema.CommandBlobPart``); a bundle too large is cut, log tail
first.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import logging
import os
import re
import threading
import time
from pathlib import Path
from typing import Any

from gateway import __version__
from gateway.adapters import host
from gateway.adapters.store import SpoolStore
from gateway.config import EdgeSettings
from gateway.core import command_wire, schema
from gateway.edge import ack_keyring, command_keyring
from gateway.edge.quarantine import Quarantine
from gateway.logs import escape
from gateway.paths import Paths

RING_LINES = 20000
SECRET_KEY = re.compile(r"(token|secret|password|passphrase|private|credential)", re.IGNORECASE)
UID_LIKE = re.compile(r"\b[0-9]+(?:\.[0-9]+){4,}\b")  # five or more numeric components: a DICOM UID, not an IP
SCRUBBED_FIELDS = frozenset({"STUDY_INSTANCE_UID", "SOP_INSTANCE_UID", "SERIES_INSTANCE_UID", "ACCESSION",
                             "PATIENT_ID", "PATIENT_NAME"})
REMOVED = "<removed>"
_STD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class LogRing(logging.Handler):
    """The last ``RING_LINES`` log lines of this process, formatted and escaped, in memory."""

    def __init__(self, lines: int = RING_LINES) -> None:
        super().__init__(logging.INFO)
        self._lines: collections.deque[str] = collections.deque(maxlen=lines)
        self._guard = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            ts = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created))
            fields = " ".join(f"{k}={escape(v, 200)}" for k, v in record.__dict__.items()
                              if k not in _STD and not k.startswith("_") and k not in SCRUBBED_FIELDS)
            line = f"{ts} {record.levelname} {record.name} {escape(record.getMessage(), 500)} {fields}".rstrip()
        except Exception:  # a log line that cannot be formatted is left out, never raised
            return
        with self._guard:
            self._lines.append(line)

    def tail(self, n: int) -> list[str]:
        with self._guard:
            return list(self._lines)[-n:]


def scrub(text: str) -> str:
    return UID_LIKE.sub("<uid>", text)


def _without_secrets(value: Any, key: str = "") -> Any:
    if isinstance(value, dict):
        return {k: _without_secrets(v, k) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_without_secrets(v, key) for v in value]
    if key and SECRET_KEY.search(key) and value not in ("", None):
        return REMOVED
    return value


def config_document(settings: EdgeSettings) -> dict[str, Any]:
    """The settings the box runs with, every value under a key naming a secret removed."""
    return dict(_without_secrets(dataclasses.asdict(settings)))


def _keyring_ids(path: Path, load: Any) -> list[str] | str:
    try:
        keyring = load(path)
    except Exception as exc:  # absent or unreadable: say so
        return f"unavailable: {type(exc).__name__}"
    return "none" if keyring is None else [k.hex() for k in keyring.key_ids]


def collect(settings: EdgeSettings, paths: Paths, store: SpoolStore, logs: LogRing, log_lines: int,
            now: float) -> bytes:
    """The bundle document, scrubbed, as UTF-8 JSON."""
    disk = host.disk(paths.state_dir)
    doc: dict[str, Any] = {
        "v": 1, "box_id": settings.box.id, "version": __version__, "at": round(now, 3),
        "config": config_document(settings),
        "queue": store.counts(),
        "quarantine": [e.as_dict() for e in Quarantine(store, paths).entries()][:500],
        "disk": None if disk is None else {"free_bytes": disk.free_bytes, "total_bytes": disk.total_bytes},
        "certificate": {"file": settings.mqtt.cert_file, "not_after": host.cert_not_after(settings.mqtt.cert_file)},
        "ack_keys": _keyring_ids(ack_keyring.keyring_path(paths.state_dir), ack_keyring.load),
        "command_keys": _keyring_ids(command_keyring.keyring_path(paths.state_dir), command_keyring.load),
        "logs": logs.tail(log_lines),
    }
    limit = command_wire.MAX_BLOB_BYTES - 64 * 1024
    raw = scrub(json.dumps(doc, default=str, ensure_ascii=False)).encode()
    while len(raw) > limit and doc["logs"]:
        doc["logs"] = doc["logs"][len(doc["logs"]) // 2 + 1:]  # cut the log tail's older half
        doc["logs_cut"] = True
        raw = scrub(json.dumps(doc, default=str, ensure_ascii=False)).encode()
    return raw


def seal_parts(plain: bytes, cloud_public: bytes, box_id: str, command_id: str) -> tuple[list[bytes], bytes, str]:
    """The encoded ``CommandBlobPart`` messages of ``plain`` sealed for the cloud, the sealed bytes, their SHA-256."""
    sealed = command_wire.seal_blob(cloud_public, box_id, command_id, plain, data_key=os.urandom(32),
                                    eph_private=os.urandom(32),
                                    nonce=os.urandom(command_wire.NONCE_BYTES))
    digest = hashlib.sha256(sealed).hexdigest()
    step = command_wire.BLOB_PART_BYTES
    chunks = [sealed[i:i + step] for i in range(0, len(sealed), step)]
    parts = [schema.encode(schema.CommandBlobPart(v=1, box_id=box_id, id=command_id, part=n, parts=len(chunks),
                                                  size=len(sealed), sha256=digest, data=chunk))
             for n, chunk in enumerate(chunks)]
    return parts, sealed, digest


def open_parts(parts: list[bytes], cloud_private: bytes, box_id: str, command_id: str) -> dict[str, Any]:
    """The bundle document from its parts (the cloud's side; tests and ``mgw`` tools)."""
    decoded = sorted((schema.parse(schema.CommandBlobPart, p, "blob part", schema.MAX_BLOB_PART_BYTES)
                      for p in parts), key=lambda p: p.part)
    sealed = b"".join(p.data for p in decoded)
    if hashlib.sha256(sealed).hexdigest() != decoded[0].sha256:
        raise ValueError("blob digest mismatch")
    return dict(json.loads(command_wire.open_blob(cloud_private, box_id, command_id, sealed)))

