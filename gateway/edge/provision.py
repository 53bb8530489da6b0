"""`mgw provision`: give a fresh box its identity, from a one-time enrolment token.

1. fetch the fleet CA from the enrolment endpoint and check it against the pinned fingerprint;
2. generate the box key in the key store (it never leaves the box) and a CSR;
3. redeem the token: the cloud signs the CSR for the box id the token is bound to and answers
   with the certificate, the cloud's envelope public key, the public keys its acks are signed
   with, and where the broker is;
4. write ``pki/ca.pem``, ``pki/box.pem``, ``pki/ack_keys.json`` (and ``pki/command_keys.json`` when the
   answer carries ``command_keys``) and ``device.toml`` (which
   overrides the site file),
   with the modality the listener admits (``--modality AE@ADDRESS`` or the bundle's [dicom]
   ``allowed_peers``) and the address it listens on: ``--dicom-bind``, the bundle's
   ``bind_host``, else this box's address on the route to the modality. A provisioned box's
   listener is deny-by-default (core.admission): with no modality recorded it admits none;
5. self-test: key and certificate match, the certificate chains to the CA and is valid, the
   configuration loads, and the broker accepts us over mutual TLS.

Renewal (``gateway.edge.renewal``) reuses the same files and endpoint.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gateway import config
from gateway import site_tables as siteconf
from gateway.adapters import blobs, enrolment_client
from gateway.adapters.keystore import FileKeyStore, KeyStore
from gateway.core import admission
from gateway.core.errors import ConfigError, KeyringError, LocalError
from gateway.edge import ack_keyring, command_keyring
from gateway.i18n import N_, Message, _, tr
from gateway.logs import MSG
from gateway.paths import Paths
from gateway.tomlwrite import render_toml

log = logging.getLogger(__name__)
BOX_KEY = "box"
PENDING_KEY = "box.pending"


@dataclass(frozen=True)
class Enrolment:
    url: str
    ca_fingerprint: str
    token: str


@dataclass(frozen=True)
class Lan:
    """What the DICOM listener admits and where it listens, recorded by provisioning."""

    modalities: tuple[str, ...] = ()  # dicom.allowed_peers entries, AE@address or AE@network/prefix
    bind: str = ""  # dicom.bind_host; "" = this box's address towards the modality


@dataclass
class Provisioned:
    box_id: str
    site: str
    modality: str
    not_after: float
    device_toml: Path
    checks: list[tuple[str, bool, str]] = field(default_factory=list)
    allowed_peers: tuple[str, ...] = ()
    bind_host: str = ""
    ae_title: str = ""
    port: int = 0
    time_zone: str = ""
    weekly_hours: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return all(ok for _name, ok, _detail in self.checks)


def pki_dir(paths: Paths) -> Path:
    return paths.state_dir / "pki"


def keys_dir(paths: Paths) -> Path:
    return paths.state_dir / "keys"


def device_toml(paths: Paths) -> Path:
    return paths.state_dir / "device.toml"


def key_store(paths: Paths) -> KeyStore:
    return FileKeyStore(keys_dir(paths))


def provision(enrolment: Enrolment, paths: Paths, *, keystore: KeyStore | None = None,
              site_tables: dict[str, dict[str, Any]] | None = None, force: bool = False,
              self_test: bool = True, say: Callable[[str], None] = lambda _m: None, lan: Lan = Lan()) -> Provisioned:
    """Enrol this box and write its ``device.toml``. ``site_tables`` (a signed bundle's) and ``lan``
    (the command line's) are layered over the tables the token carries, later ones winning; all
    are checked (``gateway/site_tables.py``) before the token is spent, the token's once they arrive."""
    store = keystore or key_store(paths)
    local = siteconf.merge(site_tables or {}, _lan_tables(lan))
    siteconf.check(local, "provisioning")
    _dicom_table(local.get("dicom", {}))  # checked before the token is spent
    if device_toml(paths).exists() and store.exists(BOX_KEY) and not force:
        raise LocalError(_("this box is already provisioned ({path}); run `mgw decommission` first, or pass --force "
                           "to replace its identity").format(path=device_toml(paths)))
    say(_("fetching the fleet CA from {url} (pinned {pin}...)").format(url=enrolment.url,
                                                                       pin=enrolment.ca_fingerprint[:16]))
    ca_pem = enrolment_client.fetch_ca(enrolment.url, enrolment.ca_fingerprint)
    say(_("generating the box key on this box"))
    store.generate_ec(PENDING_KEY)
    try:
        say(_("redeeming the enrolment token"))
        answer = enrolment_client.enrol(enrolment.url, ca_pem, enrolment.token, store.csr(PENDING_KEY, ""))
        result = _install(answer, ca_pem, enrolment, paths, store, local)
    finally:
        if store.exists(PENDING_KEY):
            store.path(PENDING_KEY).unlink()
    log.info("box provisioned", extra={"MESSAGE_ID": MSG.BOX_PROVISIONED.value, "BOX_ID": result.box_id})
    say(_("provisioned as box {box} (site {site}, modality {modality})").format(
        box=result.box_id, site=result.site or "-", modality=result.modality or "-"))
    bind = result.bind_host or _("127.0.0.1 (loopback only: give --dicom-bind)")
    admitting = ", ".join(result.allowed_peers) if result.allowed_peers else _(
        "NO modality (deny-by-default): set one with `mgw provision --modality AE@ADDRESS` or in {path} [dicom] "
        "allowed_peers").format(path=device_toml(paths))
    say(_("DICOM listener {ae} on {bind} port {port}, admitting {peers}").format(
        ae=result.ae_title, bind=bind, port=result.port, peers=admitting))
    if result.time_zone or result.weekly_hours:
        say(_("site time zone {zone}, opening hours {hours}").format(zone=result.time_zone or "-",
                                                                    hours="; ".join(result.weekly_hours) or "-"))
    if self_test:
        say(_("self-test"))
        result.checks = run_self_test(paths, store)
    return result


def _check_answer(answer: dict[str, Any], ca_pem: bytes, store: KeyStore) -> x509.Certificate:
    try:
        cert = x509.load_pem_x509_certificate(str(answer["certificate"]).encode())
        ca = x509.load_pem_x509_certificate(ca_pem)
        cert.verify_directly_issued_by(ca)
        key = serialization.load_pem_private_key(store.path(PENDING_KEY).read_bytes(), None)
    except (KeyError, ValueError, TypeError) as exc:
        raise enrolment_client.EnrolmentError(f"the enrolment answer is not a certificate of our CA: {exc}") from exc
    if cert.public_key() != key.public_key():
        raise enrolment_client.EnrolmentError("the issued certificate is not for the key this box generated")
    return cert


def _install(answer: dict[str, Any], ca_pem: bytes, enrolment: Enrolment, paths: Paths, store: KeyStore,
             local: dict[str, dict[str, Any]]) -> Provisioned:
    cert = _check_answer(answer, ca_pem, store)
    try:  # what the token carries crossed the network: checked here as any input
        carried = siteconf.check(answer.get("site_tables") or {}, "the enrolment answer's site tables")
    except ConfigError as exc:
        raise enrolment_client.EnrolmentError(str(exc)) from exc
    site_tables = siteconf.merge(carried, local)
    if "dicom" in site_tables:
        site_tables["dicom"] = _dicom_table(site_tables["dicom"])
    box_id = str(answer.get("box_id", ""))
    if not config.BOX_ID.match(box_id):
        raise enrolment_client.EnrolmentError("the enrolment answer carries no valid box id")
    try:
        keyring = ack_keyring.from_answer(answer)
    except KeyringError as exc:
        raise enrolment_client.EnrolmentError(f"the enrolment answer's ack keys are unusable: {exc}") from exc
    pki = pki_dir(paths)
    pki.mkdir(parents=True, exist_ok=True, mode=0o755)
    ack_keyring.save(ack_keyring.keyring_path(paths.state_dir), keyring)
    command_keyring.install_from_answer(command_keyring.keyring_path(paths.state_dir), answer)
    blobs.write_atomic(pki / "ca.pem", ca_pem, mode=0o644)
    blobs.write_atomic(pki / "box.pem", str(answer["certificate"]).encode(), mode=0o644)
    store.replace(PENDING_KEY, BOX_KEY)
    mqtt = answer.get("mqtt") or {}
    tables: dict[str, dict[str, Any]] = {
        "box": {"id": box_id, "cloud_public_key": str(answer["cloud_public_key"]), "state_dir": str(paths.state_dir),
                "site": str(answer.get("site", "")), "modality": str(answer.get("modality", ""))},
        "mqtt": {"host": str(mqtt.get("host", "")), "port": int(mqtt.get("port", 8883)),
                 "topic_prefix": str(mqtt.get("topic_prefix", "mgw/v1")),
                 "ca_file": str(pki / "ca.pem"), "cert_file": str(pki / "box.pem"),
                 "key_file": str(store.path(BOX_KEY))},
        "enrolment": {"url": enrolment.url, "ca_fingerprint": enrolment.ca_fingerprint},
    }
    for table, keys in site_tables.items():
        tables.setdefault(table, {}).update(keys)
    blobs.write_atomic(device_toml(paths), render_toml(tables).encode(), mode=0o644)
    dicom = config.build(config.DicomSettings, tables.get("dicom", {}), "device.toml", "dicom.")
    site = tables.get("site", {})
    return Provisioned(box_id, tables["box"]["site"], tables["box"]["modality"],
                       cert.not_valid_after_utc.timestamp(), device_toml(paths),
                       allowed_peers=dicom.allowed_peers, bind_host=dicom.bind_host, ae_title=dicom.ae_title,
                       port=dicom.port, time_zone=str(site.get("time_zone", "")),
                       weekly_hours=tuple(site.get("weekly_hours", ())))


def _lan_tables(lan: Lan) -> dict[str, dict[str, Any]]:
    """The command line's [dicom] keys: the modalities admitted, and where to listen."""
    dicom: dict[str, Any] = {}
    if lan.modalities:
        dicom["allowed_peers"] = list(lan.modalities)
    if lan.bind:
        dicom["bind_host"] = lan.bind
    return {"dicom": dicom} if dicom else {}


def _dicom_table(dicom: dict[str, Any]) -> dict[str, Any]:
    """The [dicom] keys to record, with the bind address worked out from the modalities' when
    none is named; ``ConfigError`` if the one named is not an IP address."""
    dicom = dict(dicom)
    rules = admission.parse_rules(tuple(dicom.get("allowed_peers", ())))
    if rules and "bind_host" not in dicom and (towards := address_towards(rules)):
        dicom["bind_host"] = towards
    if "bind_host" in dicom:
        try:
            ipaddress.ip_address(str(dicom["bind_host"]))
        except ValueError as exc:
            raise ConfigError(_("dicom bind address {address} is not an IP address").format(
                address=repr(dicom["bind_host"]))) from exc
        if ipaddress.ip_address(str(dicom["bind_host"])).is_unspecified and dicom.get("allow_any_address") is not True:
            raise ConfigError(_("dicom bind address {address} is every interface; give the box's address on the "
                                "modality side, or allow_any_address = true in the bundle's [dicom] table").format(
                address=dicom["bind_host"]))
    return dicom


def address_towards(rules: tuple[admission.PeerRule, ...]) -> str:
    """This box's source address on the route to every modality, if they share one (no packet
    is sent: a UDP connect only picks the route); "" when they differ or there is no route."""
    found = set()
    for rule in rules:
        family = socket.AF_INET6 if rule.network.version == 6 else socket.AF_INET
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as sock:
                sock.connect((str(rule.network.network_address), 104))
                found.add(str(sock.getsockname()[0]))
        except OSError:
            return ""
    return found.pop() if len(found) == 1 else ""


# the self-test's check names, as `mgw provision` shows them (its JSON keeps the English)
SELF_TEST_NAMES = {"configuration loads": N_("configuration loads"), "certificate": N_("certificate"),
                   "broker (mutual TLS)": N_("broker (mutual TLS)")}


def run_self_test(paths: Paths, store: KeyStore, broker_timeout_s: float = 15.0,
                  clock: Callable[[], float] = time.time) -> list[tuple[str, bool, str]]:
    """``(check, ok, detail or what to check)`` for identity, configuration and the broker: the check's
    name in English (``SELF_TEST_NAMES`` translates it), the detail in the CLI's language."""
    checks: list[tuple[str, bool, str]] = []
    try:
        files = [f for f in paths.default_config_files("gateway")]
        if device_toml(paths) not in files:
            files.append(device_toml(paths))
        settings = config.load_edge(files)
        checks.append(("configuration loads", True, " + ".join(map(str, files))))
    except ConfigError as exc:
        return [("configuration loads", False, _("{reason}: fix the named key").format(reason=exc))]
    name, ok, detail = identity_check(settings, clock)
    checks.append((name, ok, detail.shown()))
    if ok:
        name, ok, detail = broker_check(settings, broker_timeout_s)
        checks.append((name, ok, detail.shown()))
    return checks


def identity_check(settings: config.EdgeSettings, clock: Callable[[], float] = time.time
                   ) -> tuple[str, bool, Message]:
    try:
        cert = x509.load_pem_x509_certificate(Path(settings.mqtt.cert_file).read_bytes())
        ca = x509.load_pem_x509_certificate(Path(settings.mqtt.ca_file).read_bytes())
        key = serialization.load_pem_private_key(Path(settings.mqtt.key_file).read_bytes(), None)
        cert.verify_directly_issued_by(ca)
    except (OSError, ValueError, TypeError) as exc:
        return ("certificate", False, tr("{reason}: re-run `mgw provision` with a new token", reason=exc))
    now = clock()
    if cert.public_key() != key.public_key():
        return ("certificate", False, tr("certificate and key do not match: re-run `mgw provision`"))
    start, end = cert.not_valid_before_utc.strftime("%Y-%m-%d"), cert.not_valid_after_utc.strftime("%Y-%m-%d")
    if not cert.not_valid_before_utc.timestamp() <= now <= cert.not_valid_after_utc.timestamp():
        return ("certificate", False, tr("not valid now (valid {start} to {end}): check the clock, or re-provision",
                                         start=start, end=end))
    days = (cert.not_valid_after_utc.timestamp() - now) / 86400
    cn = cert.subject.rfc4514_string()
    if f"CN={settings.box.id}" not in cn.split(","):
        return ("certificate", False, tr("certificate is for {cn}, config says box {box}", cn=cn, box=settings.box.id))
    until = dt.datetime.fromtimestamp(cert.not_valid_after_utc.timestamp(), dt.UTC).strftime("%Y-%m-%d")
    return ("certificate", True, tr("box {box}, valid until {until} ({days:.0f} days)", box=settings.box.id,
                                    until=until, days=days))


def broker_check(settings: config.EdgeSettings, timeout_s: float) -> tuple[str, bool, Message]:
    from gateway.adapters.mqtt_link import MqttLink

    link = MqttLink(settings.mqtt, client_id=f"{settings.box.id}:selftest", subscriptions=[],
                    on_message=lambda _m: None, session_expiry_s=0)
    link.start()
    try:
        ok = link.wait_connected(timeout_s)
    finally:
        link.stop()
    where = f"{settings.mqtt.host}:{settings.mqtt.port}"
    if ok:
        return ("broker (mutual TLS)", True, tr("connected to {where} as {box}", where=where, box=settings.box.id))
    return ("broker (mutual TLS)", False, tr("no connection to {where} within {seconds:.0f} s: check the "
                                             "network/firewall (outbound TCP to that port), the clock, and that "
                                             "the box is not revoked", where=where, seconds=timeout_s))
