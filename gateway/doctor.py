"""`mgw doctor`: what the configuration names exists and is what the services will need.

``config.load_edge``/``load_cloud`` check the TOML itself; this module checks the files it
names, without starting anything: every path exists (or is one a service creates on its
first start, which is said), key and secret files are 0600 (no group or other bits, as the
code that reads them insists), certificates parse, are valid now (with the days they have
left), belong to the private key beside them, and chain to the CA bundle they are paired with;
the MQTT client certificate names the identity the broker will hold this process to.

``EDGE_FILES`` and ``CLOUD_FILES`` are the table of every key that names a path: the checks
and the test that materialises the documentation's examples (tests/test_doctor.py) both read
it, and that test fails on a ``*_file``/``*_dir`` key the table lacks.
"""

from __future__ import annotations

import datetime as dt
import enum
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway import config
from gateway.adapters import pem_files
from gateway.i18n import N_, _
from gateway.paths import Paths

DAY_S = 86400.0


class Kind(enum.Enum):
    CA = "CA bundle"
    CERT = "certificate"
    PRIVATE_KEY = "private key"
    RAW_KEY = "raw 32-byte key"
    SECRET = "secret file"  # noqa: S105 - a kind of file, not a password
    CRL = "CRL"
    DIRECTORY = "directory"


class Base(enum.Enum):
    CWD = "the service's working directory"
    STATE = "the state directory"


@dataclass(frozen=True)
class FileKey:
    """One configuration key that names a path, and what must be there."""

    key: str
    kind: Kind
    base: Base = Base.CWD
    when_absent: str = ""  # "" = a missing file is a failure; else why absence is fine
    key_file: str = ""  # CERT: the key holding its private key
    ca_key: str = ""  # CERT: the key of the CA bundle it must chain to
    identity: bool = False  # CERT: the CN must be this process's MQTT identity
    pinned: str = ""  # CA: the key of a SHA-256 fingerprint the bundle must hold, when it is set


EDGE_FILES = (
    FileKey("box.state_dir", Kind.DIRECTORY, when_absent=N_("created by the service (systemd StateDirectory=)")),
    FileKey("dicom.tls_ca_file", Kind.CA),
    FileKey("dicom.tls_cert_file", Kind.CERT, key_file="dicom.tls_key_file"),
    FileKey("dicom.tls_key_file", Kind.PRIVATE_KEY),
    FileKey("mqtt.ca_file", Kind.CA, pinned="enrolment.ca_fingerprint"),
    FileKey("mqtt.cert_file", Kind.CERT, key_file="mqtt.key_file", ca_key="mqtt.ca_file", identity=True),
    FileKey("mqtt.key_file", Kind.PRIVATE_KEY),
    FileKey("health.thermal_dir", Kind.DIRECTORY, when_absent=N_("no CPU temperature is reported")),
)
CLOUD_FILES = (
    FileKey("cloud.state_dir", Kind.DIRECTORY, when_absent=N_("created by the service (systemd StateDirectory=)")),
    FileKey("cloud.envelope_key_file", Kind.RAW_KEY, Base.STATE,
            when_absent=N_("created by `mgw cloud keygen` or the first start")),
    FileKey("cloud.archive_key_file", Kind.RAW_KEY, Base.STATE,
            when_absent=N_("created at the first start while the archive holds no sealed object")),
    FileKey("cloud.ack_key_file", Kind.RAW_KEY, Base.STATE,
            when_absent=N_("created by `mgw cloud ack-key create` or the first start")),
    FileKey("mqtt.ca_file", Kind.CA),
    FileKey("mqtt.cert_file", Kind.CERT, key_file="mqtt.key_file", ca_key="mqtt.ca_file", identity=True),
    FileKey("mqtt.key_file", Kind.PRIVATE_KEY),
    FileKey("ingest.metrics_token_file", Kind.SECRET, Base.STATE),
    FileKey("authority.pki_dir", Kind.DIRECTORY, Base.STATE,
            when_absent=N_("the fleet CA is created there at first use")),
    FileKey("authority.enrol_metrics_token_file", Kind.SECRET, Base.STATE),
    FileKey("authority.broker_crl_file", Kind.CRL, Base.STATE, when_absent=N_("written at the authority's next start")),
    FileKey("index.password_file", Kind.SECRET, Base.STATE),
    FileKey("forward.stow_password_file", Kind.SECRET, Base.STATE),
    FileKey("fleet.tls_cert_file", Kind.CERT, Base.STATE, key_file="fleet.tls_key_file"),
    FileKey("fleet.tls_key_file", Kind.PRIVATE_KEY, Base.STATE),
    FileKey("fleet.command_key_file", Kind.RAW_KEY, Base.STATE,
            when_absent=N_("created by `mgw cloud init` or the first start of the fleet or enrolment "
                            "service")),
    FileKey("fleet.oidc.client_secret_file", Kind.SECRET, Base.STATE),
    FileKey("fleet.oidc.ca_file", Kind.CA, Base.STATE),
)
SECRET_KINDS = (Kind.PRIVATE_KEY, Kind.RAW_KEY, Kind.SECRET)


@dataclass(frozen=True)
class Finding:
    """One checked key: ``ok`` or not, and what was found (days left for a certificate)."""

    key: str
    ok: bool
    detail: str
    days_left: float | None = None


def value(settings: Any, key: str) -> str:
    """The value of dotted ``key`` in a settings tree."""
    node = settings
    for part in key.split("."):
        node = getattr(node, part)
    return str(node)


def resolve(entry: FileKey, raw: str, paths: Paths) -> Path:
    return paths.key_file(raw) if entry.base is Base.STATE else Path(raw)


def _date(ts: float) -> str:
    return f"{dt.datetime.fromtimestamp(ts, dt.UTC):%Y-%m-%d}"


def _validity(info: pem_files.CertInfo, now: float) -> tuple[bool, str, float]:
    days = (info.not_after - now) / DAY_S
    if now < info.not_before:
        return False, _("not valid before {date} (check the clock)").format(date=_date(info.not_before)), days
    if days < 0:
        return False, _("expired on {date}").format(date=_date(info.not_after)), days
    return True, _("valid until {date} ({days:.0f} days left)").format(date=_date(info.not_after), days=days), days


def _mode_problem(path: Path) -> str:
    if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        return _("{path}: readable by group or others (chmod 600)").format(path=path)
    return ""


class _Check:
    def __init__(self, table: tuple[FileKey, ...], settings: Any, paths: Paths, now: float, identities: list[str]):
        self.table = {e.key: e for e in table}
        self.settings, self.paths, self.now, self.identities = settings, paths, now, identities

    def path_of(self, key: str) -> Path | None:
        raw = value(self.settings, key)
        return resolve(self.table[key], raw, self.paths) if raw else None

    def run(self) -> list[Finding]:
        found = []
        for entry in self.table.values():
            path = self.path_of(entry.key)
            if path is not None:
                found.append(self.one(entry, path))
        return found

    def one(self, entry: FileKey, path: Path) -> Finding:
        if not path.exists():
            if entry.when_absent:
                return Finding(entry.key, True, _("{path}: absent; {why}").format(path=path, why=_(entry.when_absent)))
            return Finding(entry.key, False, _("{path}: not found").format(path=path))
        if entry.kind is Kind.DIRECTORY:
            is_dir = path.is_dir()
            return Finding(entry.key, is_dir, (_("{path}: directory") if is_dir else _("{path}: not a directory"))
                           .format(path=path))
        if not path.is_file():
            return Finding(entry.key, False, _("{path}: not a plain file").format(path=path))
        if entry.kind in SECRET_KINDS and (problem := _mode_problem(path)):
            return Finding(entry.key, False, problem)
        try:
            return self.content(entry, path)
        except pem_files.PemError as exc:
            return Finding(entry.key, False, str(exc))

    def content(self, entry: FileKey, path: Path) -> Finding:
        if entry.kind is Kind.CA:
            return self.ca(entry, path)
        if entry.kind is Kind.CERT:
            return self.cert(entry, path)
        if entry.kind is Kind.PRIVATE_KEY:
            pem_files.private_key(path)
            return Finding(entry.key, True, _("{path}: private key, 0600").format(path=path))
        if entry.kind is Kind.RAW_KEY:
            size = path.stat().st_size
            return Finding(entry.key, size == 32, (_("{path}: {size} bytes") if size == 32 else
                                                   _("{path}: {size} bytes, expected 32")).format(path=path, size=size))
        if entry.kind is Kind.SECRET:
            empty = not path.read_text(errors="replace").strip()
            return Finding(entry.key, not empty, (_("{path}: empty") if empty else _("{path}: secret, 0600"))
                           .format(path=path))
        return Finding(entry.key, True, _("{path}: present").format(path=path))

    def ca(self, entry: FileKey, path: Path) -> Finding:
        """A bundle passes while one of its CAs is valid (a system bundle carries expired ones);
        the days left are those of the first to expire among the valid."""
        checked = [(ca, *_validity(ca, self.now)) for ca in pem_files.ca_bundle(path)]
        valid = [c for c in checked if c[1]]
        ca, ok, text, days = min(valid or checked, key=lambda c: c[3])
        detail = (_("{path}: CA '{name}' and {more} more, {validity}") if len(checked) > 1 else
                  _("{path}: CA '{name}', {validity}")).format(path=path, name=ca.subject_cn, more=len(checked) - 1,
                                                                validity=text)
        pin = value(self.settings, entry.pinned).lower() if entry.pinned else ""
        if pin and pin not in pem_files.fingerprints(path):
            return Finding(entry.key, False, _("{detail}, but not the CA pinned by {key} ({pin}...)").format(
                detail=detail, key=entry.pinned, pin=pin[:16]), days)
        return Finding(entry.key, ok, _("{detail}, the CA pinned by {key}").format(detail=detail, key=entry.pinned)
                       if pin else detail, days)

    def cert(self, entry: FileKey, path: Path) -> Finding:
        info = pem_files.certificate(path)
        ok, text, days = _validity(info, self.now)
        parts = [_("{path}: '{name}', {validity}").format(path=path, name=info.subject_cn, validity=text)]
        if entry.ca_key and (ca := self.path_of(entry.ca_key)) is not None and ca.is_file():
            parts.append(_("issued by '{name}'").format(name=pem_files.issued_by(path, ca)))
        elif entry.ca_key:
            parts.append(_("no {key} to chain to").format(key=entry.ca_key))
            ok = ok and self.path_of(entry.ca_key) is not None
        if entry.key_file and (key := self.path_of(entry.key_file)) is not None and key.is_file():
            pem_files.private_key_matches(key, path)
            parts.append(_("matches {key}").format(key=entry.key_file))
        if entry.identity and self.identities and info.subject_cn not in self.identities:
            ok = False
            parts.append(_("but this process connects as {identities}").format(identities=_(" or ").join(
                self.identities)))
        return Finding(entry.key, ok, _(", ").join(parts), days)


def check_edge(settings: config.EdgeSettings, paths: Paths, now: float) -> list[Finding]:
    return _Check(EDGE_FILES, settings, paths, now, [settings.box.id]).run()


def check_cloud(settings: config.CloudSettings, paths: Paths, now: float) -> list[Finding]:
    worker = settings.ingest.worker_id
    return _Check(CLOUD_FILES, settings, paths, now, [f"cloud.ingest.{worker}", f"cloud.fleet.{worker}"]).run()
