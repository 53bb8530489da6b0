"""Structured logging with stable MESSAGE_IDs (explained in docs/catalog.md).

Log facts, never patients: item ids, SOP Class names, byte counts, AE titles.
Under systemd (stderr is the journal stream ``$JOURNAL_STREAM`` names) each event goes to
journald through its native protocol (``adapters/journald.py``): ``MESSAGE``, ``PRIORITY``,
``MESSAGE_ID`` and every ``extra`` field as a journal field, so ``journalctl MESSAGE_ID=...``
and ``journalctl ITEM=42`` find it. On a terminal the same fields print as ``key=value`` after
the message; ``--log-json`` prints one JSON object a line instead (docs/operations.md, "Logs").
"""

from __future__ import annotations

import enum
import json
import logging
import sys
import time
import warnings

from gateway.adapters import journald


class MSG(enum.StrEnum):
    """Stable journald MESSAGE_IDs (128-bit, hex) for the events a field engineer cares about."""

    SERVICE_STARTED = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e0001"
    ASSOCIATION_ACCEPTED = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e0002"
    ASSOCIATION_REJECTED = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e0003"
    INSTANCE_STORED = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e0004"
    STORE_FAILED = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e0005"
    SPOOL_HIGH_WATER = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e0006"
    ITEM_PACKED = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e0007"
    ITEM_ACKNOWLEDGED = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e0008"
    ITEM_QUARANTINED = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e0009"
    ITEM_PURGED = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e000a"
    UPLINK_UP = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e000b"
    UPLINK_DOWN = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e000c"
    ACK_REJECTED = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e000d"
    UPLINK_SUBSCRIBED = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e0014"
    SUBSCRIPTION_REFUSED = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e0015"
    INSTANCE_RESENT = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e0016"
    INSTANCE_NEW_VERSION = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e0017"
    PUBLISH_REFUSED = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e0018"
    CHUNK_REJECTED = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e000e"
    OBJECT_ARCHIVED = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e000f"
    OBJECT_REJECTED = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e0010"
    OBJECT_DUPLICATE = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e0011"
    STAGING_EXPIRED = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e0012"
    DICOM_ADMISSION = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e0013"
    BOX_ENROLLED = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e0200"
    ENROLMENT_REFUSED = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e0201"
    CERT_RENEWED = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e0202"
    CERT_RENEWAL_FAILED = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e0203"
    BOX_PROVISIONED = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e0204"
    BUNDLE_REFUSED = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e0205"
    BOX_DECOMMISSIONED = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e0206"
    CERT_REVOKED = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e0207"
    ENROLMENT_RATE_LIMITED = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e0208"
    ENROLMENT_LOCKED_OUT = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e0209"
    ENROLMENT_LOCKOUT_STARTED = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e020a"
    ENROLMENT_BAD_REQUEST = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e020b"
    # the appliance: update hooks, USB sticks, link events, watchdog (0400-04ff)
    UPDATE_ALLOWED = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e0400"
    UPDATE_DEFERRED = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e0401"
    UPDATE_MIGRATED = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e0402"
    UPDATE_COMMITTED = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e0403"
    UPDATE_GATE_FAILED = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e0404"
    UPDATE_ROLLED_BACK = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e0405"
    USB_PROVISION_APPLIED = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e0406"
    USB_PROVISION_FAILED = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e0407"
    USB_EXPORT_WRITTEN = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e0408"
    USB_STICK_IGNORED = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e0409"
    LINK_UP_NUDGE = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e040a"
    EXPORT_IMPORTED = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e040b"
    SERVICE_LOOP_DIED = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e040c"
    SERVICE_RESTARTED = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e040d"
    USB_STICK_REFUSED = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e0410"
    FORWARD_DONE = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e0600"
    FORWARD_RETRY = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e0601"
    FORWARD_FAILED = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e0602"
    INDEX_OPENED = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e0603"
    FRAMES_TOO_LARGE = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e0604"
    FLEET_STORE_OPENED = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e0680"
    # Modality Worklist (issue 18): 0800-08ff
    WORKLIST_ANSWERED = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e0800"
    WORKLIST_REFUSED = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e0801"
    WORKLIST_UPDATED = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e0802"
    WORKLIST_EXPIRED = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e0803"
    WORKLIST_ORDER_REFUSED = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e0804"
    # the cloud's worklist feed (gateway/cloud/worklist/): 0880-08bf
    WORKLIST_FEED_PUBLISHED = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e0880"
    WORKLIST_FEED_TRUNCATED = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e0881"
    WORKLIST_STATUS_TAKEN = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e0882"
    WORKLIST_STATUS_SENT = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e0883"
    WORKLIST_STATUS_NOT_SENT = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e0884"
    WORKLIST_SOURCE_FAILED = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e0885"
    WORKLIST_FRAME_REFUSED = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e0810"  # the edge's feed subscriber
    # remote commands, the box's side (gateway/edge/commands.py): 0a00-0a3f
    COMMAND_ACCEPTED = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e0a00"
    COMMAND_REFUSED = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e0a01"
    COMMAND_FINISHED = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e0a02"
    COMMAND_REDELIVERED = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e0a03"
    COMMAND_KEYRING_UPDATED = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e0a04"
    COMMAND_KEYRING_REFUSED = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e0a05"
    RESTART_REQUESTED = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e0a06"
    CONFIG_STAGED = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e0a07"
    CONFIG_APPLIED = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e0a08"
    CONFIG_ROLLED_BACK = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e0a09"
    STUDY_RESENT = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e0a0a"
    UPDATE_INSTALLED = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e0a0b"
    # signed acknowledgements (issue 7, item 6): 0700-07ff
    ACK_KEYRING_UPDATED = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e0700"
    ACK_KEYRING_REFUSED = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e0701"
    FRAMES_OUTDATED = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e0702"
    ACK_KEY_ROTATED = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e0703"
    # issue 5, fleet and utilisation: 0300-03ff
    EXAM_RECORDED = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e0300"
    MPPS_RECORDED = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e0301"
    MPPS_REFUSED = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e0302"
    BOX_ONLINE = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e0303"
    BOX_OFFLINE = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e0304"
    ALERT_RAISED = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e0305"
    ALERT_CLEARED = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e0306"
    TELEMETRY_REJECTED = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e0307"
    MESSAGE_DEAD_LETTERED = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e0309"
    BOX_OVER_BUDGET = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e030a"
    FLEET_LEADER_TAKEN = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e030b"
    FLEET_LEADER_LOST = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e030c"
    METRICS_UNAVAILABLE = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e0308"
    COMMISSION_REPORT_STORED = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e0380"  # issue 17: signed commissioning reports
    # custody (issue 3): 0100-01ff
    COMMITMENT_REQUESTED = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e0100"
    COMMITMENT_REQUEST_FAILED = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e0101"
    COMMITMENT_REPORTED = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e0102"
    COMMITMENT_UNDELIVERED = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e0103"
    COMMITMENT_ABANDONED = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e0104"
    SPOOL_PURGED_FOR_SPACE = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e0105"
    QUARANTINE_REPLAYED = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e0106"
    QUARANTINE_DELETED = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e0107"
    STUDY_COMPLETE = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e0108"
    PLAINTEXT_SEALED = "5f1d5c0a0e9b4d6c9b8f3b7c2a1e0150"  # at rest: plaintext from an older version sealed


_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F)} | {ord("\\"): "\\\\"}


def escape(value: object, max_chars: int = 200) -> str:
    """An untrusted value made safe for one log line: control characters (newlines included) and
    backslashes escaped, cut to ``max_chars`` characters (then marked with an ellipsis)."""
    text = str(value)
    cut = len(text) > max_chars
    text = text[:max_chars].translate(_CONTROL)
    return text + "…" if cut else text


_STD_ATTRS = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


def _fields(record: logging.LogRecord) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in record.__dict__.items():
        if key in _STD_ATTRS or key.startswith("_"):
            continue
        out[key] = value.value if isinstance(value, MSG) else value
    return out


class KeyValueFormatter(logging.Formatter):
    """``2026-11-23T19:40:01Z INFO gateway.edge instance stored ITEM_ID=7 BYTES=525986``."""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created))
        extras = " ".join(
            f"{k}={escape(v, 1000)}" for k, v in _fields(record).items() if k != "MESSAGE_ID"
        )
        line = f"{ts} {record.levelname} {record.name} {escape(record.getMessage(), 2000)}"
        if extras:
            line += " " + extras
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "ts": record.created,
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        doc.update(_fields(record))
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str, ensure_ascii=False)


# syslog priorities (journald's PRIORITY) of Python's levels
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}
MAX_MESSAGE_CHARS = 8000
MAX_FIELD_CHARS = 2000
SYSLOG_IDENTIFIER = "mgw"


def _priority(levelno: int) -> int:
    return next((p for level, p in sorted(_PRIORITY.items(), reverse=True) if levelno >= level), 7)


def journal_fields(record: logging.LogRecord, exc_text: str = "") -> list[tuple[str, str]]:
    """One record as journal fields: the message, its priority, where it was logged, and every
    ``extra`` (``MESSAGE_ID`` among them) under its own name. Values are cut, never escaped: the
    native protocol keeps each one inside its field whatever it holds."""
    message = record.getMessage()[:MAX_MESSAGE_CHARS]
    fields = [("MESSAGE", message + ("\n" + exc_text if exc_text else "")),
              ("PRIORITY", str(_priority(record.levelno))), ("SYSLOG_IDENTIFIER", SYSLOG_IDENTIFIER),
              ("LOGGER", record.name), ("CODE_FILE", record.pathname), ("CODE_LINE", str(record.lineno)),
              ("CODE_FUNC", str(record.funcName)), ("THREAD_NAME", str(record.threadName))]
    reserved = {name for name, _ in fields}
    for key, value in _fields(record).items():
        name = journald.field_name(key)
        fields.append((name if name not in reserved else f"FIELD_{name}", str(value)[:MAX_FIELD_CHARS]))
    if exc_text:
        fields.append(("EXCEPTION_TEXT", exc_text))
    return fields


class JournalHandler(logging.Handler):
    """Each record to journald with its fields; on a failed send, the line on stderr instead."""

    def __init__(self, journal: journald.JournalSocket) -> None:
        super().__init__()
        self.journal = journal
        self.fallback = logging.StreamHandler(sys.stderr)
        self.fallback.setFormatter(KeyValueFormatter())
        self._exc = logging.Formatter()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            exc_text = self._exc.formatException(record.exc_info) if record.exc_info else ""
            self.journal.send(journal_fields(record, exc_text))
        except OSError:
            self.fallback.emit(record)  # journald restarting: stderr is the journal stream too


def _drop_pydicom(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.CRITICAL


def setup(level: str = "INFO", json_lines: bool = False) -> None:
    """Configure the root logger once, for a service or the CLI: journald's native protocol when
    stderr is the journal, else ``key=value`` lines on stderr, or JSON lines with ``json_lines``."""
    handler: logging.Handler
    if not json_lines and journald.stderr_is_journal():
        handler = JournalHandler(journald.JournalSocket())
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter() if json_lines else KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("pynetdicom", "paho"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # pydicom reports an invalid value (a worklist query's malformed birth date, say) by logging and
    # warning it with the value quoted: that would put patient data in the journal. Its messages stay out.
    # A filter, not a level: importing pydicom sets its logger's level.
    logging.getLogger("pydicom").addFilter(_drop_pydicom)
    warnings.filterwarnings("ignore", module=r"pydicom(\.|$)")
