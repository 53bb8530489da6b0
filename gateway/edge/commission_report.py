"""The commissioning report as a document: text for the engineer, signed for the cloud, uploaded.

``text`` renders ``schema.CommissioningReport`` in the CLI's language (gateway/i18n.py) with times in the
site's time zone. ``sign`` makes the upload (``schema.SignedCommissioningReport``): the report's
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
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from gateway import config
from gateway.adapters import blobs, time_zone
from gateway.adapters.keystore import KeyStore
from gateway.core import commissioning, schema, topics
from gateway.core.errors import GatewayError
from gateway.i18n import N_, _

DIR_NAME = "commissioning"
BOX_KEY = "box"

# a check's name by key: English in the signed report (the console translates by key), else the CLI's language
CHECK_NAMES = {
    "configuration": N_("configuration"), "certificate": N_("certificate"), "clock-skew": N_("clock skew"),
    "broker": N_("broker (mutual TLS)"), "echo-to-modality": N_("C-ECHO to the modality"),
    "echo-to-box": N_("C-ECHO to this box"), "modality-echo": N_("C-ECHO from the modality console"),
    "end-to-end": N_("test object end to end"), "test-study": N_("test object end to end"),
}
OUTCOMES = {commissioning.OK: N_("ok"), commissioning.FAIL: N_("FAIL"), commissioning.SKIPPED: N_("skipped"),
            commissioning.MANUAL: N_("manual"), commissioning.CONFIRMED: N_("confirmed")}
VERDICTS = {"PASSED": N_("RESULT: PASSED"),
            "FAILED": N_("RESULT: FAILED: fix what the failed lines name, then re-run"),
            "INCOMPLETE": N_("RESULT: INCOMPLETE: a manual check is not attested (--confirm KEY)")}


def local_time(at: float, zone_name: str) -> str:
    """``at`` as ``YYYY-MM-DD HH:MM:SS +HH:MM`` in the site's zone (UTC when it has none)."""
    return time_zone.format_local(at, zone_name)


def text(doc: schema.CommissioningReport, shown: Mapping[str, str] | None = None) -> str:
    """The report for the engineer's screen and paper in the CLI's language (gateway/i18n.py), in the
    site's time zone. ``shown``: a check's detail as it was shown, by key (else the report's English)."""
    zone = doc.time_zone or "UTC"
    lines = [
        _("Commissioning report {report}").format(report=doc.report_id),
        _("  box: {box}    site: {site}    mgw {version}").format(box=doc.box_id, site=doc.site or "-",
                                                                 version=doc.software),
        _("  engineer: {engineer}").format(engineer=doc.engineer),
        _("  modality: {modality}    make: {make}    model: {model}").format(
            modality=doc.modality or "-", make=doc.modality_make or "-", model=doc.modality_model or "-"),
        _("  modality AE: {ae}    address: {address}").format(ae=doc.modality_ae or "-",
                                                              address=doc.modality_address or "-"),
        _("  started: {time} ({zone})").format(time=local_time(doc.started_at, doc.time_zone), zone=zone), ""]
    for c in doc.checks:
        name = _(CHECK_NAMES[c.key]) if c.key in CHECK_NAMES else c.name
        lines.append((_("  [{outcome}] {time} {name} (manual): {detail}") if c.manual else
                      _("  [{outcome}] {time} {name}: {detail}")).format(
            outcome=_(OUTCOMES.get(c.outcome, c.outcome)), time=local_time(c.started_at, doc.time_zone)[11:19],
            name=name, detail=(shown or {}).get(c.key, c.detail)))
    lines += ["", _(VERDICTS[doc.result])]
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
            return Uploaded((), tuple(ids), _("no connection to the broker {host}:{port}").format(
                host=settings.mqtt.host, port=settings.mqtt.port))
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
    return Uploaded(tuple(done), rest, _("no acknowledgement from the cloud within {seconds:.0f} s").format(
        seconds=timeout_s) if rest else "")
