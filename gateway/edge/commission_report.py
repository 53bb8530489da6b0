"""The commissioning report as a document: text for the engineer, signed for the cloud, uploaded.

``text`` renders ``schema.CommissioningReport`` in English and Chinese with times in the site's
time zone. ``sign`` makes the upload (``schema.SignedCommissioningReport``): the report's
canonical bytes, their ECDSA signature by the box key (``KeyStore.sign``: a TPM-backed store
signs the same way) and the box certificate. ``save`` keeps it in ``<state_dir>/commissioning/``
(``<report id>.json``) until the cloud acknowledges it (then ``<report id>.acked`` beside it), so
``mgw commission upload`` can send what could not be sent at the time.

``upload`` connects as ``<box>:selftest`` (the broker admits that client id for every box),
publishes each pending report on ``{prefix}/{box}/commission`` (QoS 1) and waits, bounded, for
the cloud's signed ack on ``.../commission/ack``, verified with the box's ack keyring.
"""

from __future__ import annotations

import json
import queue
import time
from dataclasses import dataclass
from pathlib import Path

from gateway import config
from gateway.adapters import blobs, time_zone
from gateway.adapters.keystore import KeyStore
from gateway.core import commissioning, schema, topics
from gateway.core.errors import GatewayError

DIR_NAME = "commissioning"
BOX_KEY = "box"

RESULT_ZH = {"PASSED": "通过", "FAILED": "未通过", "INCOMPLETE": "未完成"}
OUTCOME_ZH = {"ok": "通过", "FAIL": "失败", "skipped": "不适用", "manual": "待人工确认", "confirmed": "已人工确认"}


def local_time(at: float, zone_name: str) -> str:
    """``at`` as ``YYYY-MM-DD HH:MM:SS +HH:MM`` in the site's zone (UTC when it has none)."""
    return time_zone.format_local(at, zone_name)


def text(doc: schema.CommissioningReport) -> str:
    """The report for the engineer's screen and paper, English and Chinese, in the site's time zone."""
    zone = doc.time_zone or "UTC"
    lines = [
        f"Commissioning report {doc.report_id} / 调试报告",
        f"  box 设备: {doc.box_id}    site 站点: {doc.site or '-'}    mgw {doc.software}",
        f"  engineer 工程师: {doc.engineer}",
        f"  modality 设备类型: {doc.modality or '-'}    make 厂商: {doc.modality_make or '-'}    "
        f"model 型号: {doc.modality_model or '-'}",
        f"  modality AE 设备 AE: {doc.modality_ae or '-'}    address 地址: {doc.modality_address or '-'}",
        f"  started 开始: {local_time(doc.started_at, doc.time_zone)} ({zone})", ""]
    for c in doc.checks:
        kind = " (manual 人工)" if c.manual else ""
        lines.append(f"  [{c.outcome:9s}] {local_time(c.started_at, doc.time_zone)[11:19]} {c.name}{kind} "
                     f"({OUTCOME_ZH.get(c.outcome, c.outcome)}): {c.detail}")
    verdict = {"PASSED": "PASSED", "FAILED": "FAILED: fix what the failed lines name, then re-run",
               "INCOMPLETE": "INCOMPLETE: a manual check is not attested (--confirm KEY)"}[doc.result]
    lines += ["", f"RESULT: {verdict}", f"结果: {RESULT_ZH[doc.result]}"]
    return "\n".join(lines) + "\n"


def sign(doc: schema.CommissioningReport, keys: KeyStore, certificate_pem: str) -> bytes:
    """The signed upload, as JSON bytes (``schema.SignedCommissioningReport``)."""
    body = schema.encode_canonical(doc)
    signed = schema.SignedCommissioningReport(v=1, report=body, signature=keys.sign(BOX_KEY, body),
                                              certificate=certificate_pem)
    return schema.encode(signed)


def directory(state_dir: Path) -> Path:
    return state_dir / DIR_NAME


def save(state_dir: Path, report_id: str, signed: bytes) -> Path:
    out = directory(state_dir)
    out.mkdir(parents=True, exist_ok=True, mode=0o750)
    path = out / f"{report_id}.json"
    blobs.write_atomic(path, signed, mode=0o640)
    return path


def pending(state_dir: Path) -> list[Path]:
    """Signed reports the cloud has not acknowledged, oldest first."""
    where = directory(state_dir)
    if not where.is_dir():
        return []
    found = [p for p in where.glob("*.json") if not p.with_suffix(".acked").exists()]
    return sorted(found, key=lambda p: p.stat().st_mtime)


@dataclass(frozen=True)
class Uploaded:
    acknowledged: tuple[str, ...]  # report ids the cloud verified and stored
    unsent: tuple[str, ...]  # still pending (no connection, or no ack in time)
    reason: str = ""


def upload(settings: config.EdgeSettings, state_dir: Path, files: list[Path], timeout_s: float) -> Uploaded:
    """Send each pending report; wait up to ``timeout_s`` in all for the cloud's acks."""
    from gateway.adapters.mqtt_link import Inbound, MqttLink
    from gateway.edge import ack_keyring

    ids = {p.stem: p for p in files}
    if not ids:
        return Uploaded((), ())
    prefix, box = settings.mqtt.topic_prefix, settings.box.id
    keyring = ack_keyring.load(ack_keyring.keyring_path(state_dir))
    inbox: queue.Queue[Inbound] = queue.Queue()
    link = MqttLink(settings.mqtt, client_id=f"{box}:selftest",
                    subscriptions=[(topics.commission_ack_topic(prefix, box), 1)],
                    on_message=inbox.put, session_expiry_s=0)
    done: list[str] = []
    link.start()
    try:
        deadline = time.monotonic() + timeout_s
        if not link.wait_connected(min(timeout_s, 30.0)):
            return Uploaded((), tuple(ids), f"no connection to the broker {settings.mqtt.host}:{settings.mqtt.port}")
        for path in ids.values():
            link.publish(topics.commission_topic(prefix, box), path.read_bytes(), qos=1)
        while len(done) < len(ids) and time.monotonic() < deadline:
            try:
                message = inbox.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                report_id = commissioning.verify_ack(json.loads(message.payload), box, keyring)
            except (GatewayError, ValueError):
                continue  # not a valid ack: keep waiting for one
            if report_id in ids and report_id not in done:
                blobs.write_atomic(ids[report_id].with_suffix(".acked"), b"", mode=0o640)
                done.append(report_id)
    finally:
        link.stop()
    rest = tuple(i for i in ids if i not in done)
    return Uploaded(tuple(done), rest, f"no acknowledgement from the cloud within {timeout_s:.0f} s" if rest else "")
