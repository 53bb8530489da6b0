"""`mgw doctor` on every configuration example in docs/, and on broken files.

Each TOML example in docs/*.md and provisioning/*.md is marked `<!-- doctor: edge|cloud NAME
[on=BASE] -->` (docs/config.md, "Examples are checked"). The test layers an example's blocks,
moves the paths under the placeholder roots into a temporary directory, and makes the files
as the project's own tools lay them out: the MQTT identity of a cloud by running the command the
example's text gives (`mgw cloud broker-config ... --out /srv/mgw/broker`, its CA the fleet CA
at `authority.pki_dir`), a box's as `mgw provision` names them (`pki/ca.pem`, `pki/box.pem`,
`keys/box.key`); so an example naming a certificate where the tools put none fails. The other
files it names (secrets, raw keys, directories) are made where it says. Then `python -m
gateway doctor` runs on them as a subprocess: every check must pass. Then it breaks one file at a time (missing,
another CA's certificate, a key readable by others, an expired certificate) and doctor must
fail naming the key.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gateway import config, doctor
from gateway.adapters import blobs
from gateway.cloud.authority.ca import FleetAuthority
from gateway.paths import Paths

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted((ROOT / "docs").glob("*.md")) + sorted((ROOT / "provisioning").glob("*.md"))
PLACEHOLDER_ROOTS = ("/etc/gateway", "/var/lib/gateway", "/srv/mgw", "/run/secrets")
MARKER = re.compile(r"<!-- doctor: (edge|cloud) ([a-z0-9-]+)(?: on=([a-z0-9-]+))? -->")
FENCE = re.compile(r"^\s*```toml\s*$")
SERVICE_FILE = re.compile(r"^(ingest|fleet)-([a-z0-9-]+)$")


@dataclass
class Example:
    kind: str
    name: str
    base: str | None
    blocks: list[str] = field(default_factory=list)
    where: list[str] = field(default_factory=list)


def _blocks(page: Path) -> list[tuple[int, str, str]]:
    """``(line, marker line, block text)`` of every ```toml block of a page."""
    lines = page.read_text().splitlines()
    found = []
    for i, line in enumerate(lines):
        if not FENCE.match(line):
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
        before = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        indent = len(line) - len(line.lstrip())
        found.append((i + 1, before.strip(), "\n".join(x[indent:] for x in lines[i + 1:end])))
    return found


def _examples() -> dict[str, Example]:
    examples: dict[str, Example] = {}
    for page in PAGES:
        for line, marker, text in _blocks(page):
            m = MARKER.fullmatch(marker)
            assert m, f"{page.name}:{line}: a TOML example without a `<!-- doctor: ... -->` marker"
            ex = examples.setdefault(m[2], Example(m[1], m[2], m[3]))
            assert ex.kind == m[1], f"{page.name}:{line}: example {m[2]} is both edge and cloud"
            ex.blocks.append(text)
            ex.where.append(f"{page.relative_to(ROOT)}:{line}")
    return examples


EXAMPLES = _examples()


def _layers(name: str) -> list[str]:
    ex = EXAMPLES[name]
    return (_layers(ex.base) if ex.base else []) + ex.blocks


def _relocate(text: str, root: Path) -> str:
    """Placeholder roots moved under ``root``; any other absolute path in a string fails the test."""
    def move(m: re.Match[str]) -> str:
        path = m[1]
        if any(path == r or path.startswith(r + "/") for r in PLACEHOLDER_ROOTS):
            return f'"{root}{path}"'
        raise AssertionError(f"example names {path}, outside the placeholder roots {PLACEHOLDER_ROOTS}")
    return re.sub(r'"(/[^"]*)"', move, text)


@dataclass
class Materialised:
    files: list[Path]
    paths: Paths
    settings: config.EdgeSettings | config.CloudSettings
    authority: FleetAuthority
    tmp: Path

    def file(self, key: str) -> Path:
        table = doctor.CLOUD_FILES if isinstance(self.settings, config.CloudSettings) else doctor.EDGE_FILES
        entry = next(e for e in table if e.key == key)
        return doctor.resolve(entry, doctor.value(self.settings, key), self.paths)


def _identity(settings: config.EdgeSettings | config.CloudSettings, cert: Path) -> str:
    """The CN an example's certificate file stands for: `<role>-<worker>.pem` as `mgw cloud
    broker-config` names them, else the box's id."""
    if isinstance(settings, config.EdgeSettings):
        return settings.box.id
    m = SERVICE_FILE.match(cert.stem)
    return f"cloud.{m[1]}.{m[2]}" if m else f"cloud.ingest.{settings.ingest.worker_id}"


def _make(entry: doctor.FileKey, path: Path, m: Materialised) -> None:
    if path.exists():
        return
    if entry.kind is doctor.Kind.DIRECTORY:
        path.mkdir(parents=True, mode=0o700)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    if entry.kind is doctor.Kind.CA:
        blobs.write_atomic(path, m.authority.ca_pem, mode=0o644)
    elif entry.kind is doctor.Kind.CERT:
        key_pem, cert_pem = m.authority.issue_with_key(_identity(m.settings, path), 30)
        blobs.write_atomic(path, cert_pem, mode=0o644)
        if entry.key_file and doctor.value(m.settings, entry.key_file):
            key = m.file(entry.key_file)
            key.parent.mkdir(parents=True, exist_ok=True)
            blobs.write_atomic(key, key_pem, mode=0o600)
    elif entry.kind is doctor.Kind.PRIVATE_KEY:
        blobs.write_atomic(path, m.authority.issue_with_key("orphan", 1)[0], mode=0o600)
    elif entry.kind is doctor.Kind.RAW_KEY:
        blobs.write_atomic(path, os.urandom(32), mode=0o600)
    elif entry.kind is doctor.Kind.SECRET:
        blobs.write_atomic(path, b"a-secret-of-sixteen-or-more\n", mode=0o600)
    elif entry.kind is doctor.Kind.CRL:
        blobs.write_atomic(path, m.authority.crl_pem(), mode=0o644)


MQTT_IDENTITY = ("mqtt.ca_file", "mqtt.cert_file", "mqtt.key_file")  # only the tools' layout makes these
BROKER_CONFIG = re.compile(r"`(mgw cloud broker-config [^`]*)`")


def _provisioned_layout(m: Materialised) -> None:
    """The files `mgw provision` leaves (gateway/edge/provision.py `_install`), from the test's CA."""
    from gateway.edge import provision

    pki = provision.pki_dir(m.paths)
    pki.mkdir(parents=True, exist_ok=True)
    key_pem, cert_pem = m.authority.issue_with_key(m.settings.box.id, 30)  # type: ignore[union-attr]
    blobs.write_atomic(pki / "ca.pem", m.authority.ca_pem, mode=0o644)
    blobs.write_atomic(pki / "box.pem", cert_pem, mode=0o644)
    key = provision.key_store(m.paths).path(provision.BOX_KEY)
    key.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    blobs.write_atomic(key, key_pem, mode=0o600)


def _broker_config_layout(m: Materialised) -> None:
    """Run the `mgw cloud broker-config` line docs/config.md gives, relocated (EMQX profile: no
    plugin to compile; the identities are the same for every profile)."""
    page = (ROOT / "docs" / "config.md").read_text()
    line = " ".join(BROKER_CONFIG.search(page)[1].split())  # type: ignore[index]
    words = _relocate(" ".join(f'"{w}"' if w.startswith("/") else w for w in line.split()), m.tmp)
    args = [w.strip('"') for w in words.split()][1:]
    args = [str(m.files[0]) if a.endswith("/etc/gateway/cloud.toml") else a for a in args]
    done = subprocess.run([sys.executable, "-m", "gateway", *args, "--profile", "emqx"],
                          capture_output=True, text=True, timeout=120, cwd=m.tmp)
    assert done.returncode == 0, done.stderr


def materialise(name: str, tmp: Path) -> Materialised:
    """The example's layers as files under ``tmp``, and every file they name."""
    conf = tmp / "conf"
    conf.mkdir(parents=True, exist_ok=True)
    files = []
    for i, text in enumerate(_layers(name)):
        files.append(conf / f"{name}-{i}.toml")
        files[-1].write_text(_relocate(text, tmp))
    kind = EXAMPLES[name].kind
    settings = (config.load_cloud if kind == "cloud" else config.load_edge)(files)
    state = settings.cloud.state_dir if isinstance(settings, config.CloudSettings) else settings.box.state_dir
    paths = Paths(Path("/nonexistent"), Paths.from_env(state, base=files[0].parent).state_dir, tmp / "run")
    if isinstance(settings, config.CloudSettings):
        m = Materialised(files, paths, settings, FleetAuthority(paths.key_file(settings.authority.pki_dir)), tmp)
        _broker_config_layout(m)
    else:
        m = Materialised(files, paths, settings, FleetAuthority(tmp / "ca"), tmp)
        _provisioned_layout(m)
    table = doctor.CLOUD_FILES if kind == "cloud" else doctor.EDGE_FILES
    ordered = sorted(table, key=lambda e: e.kind is not doctor.Kind.DIRECTORY)  # directories first
    for entry in ordered:
        raw = doctor.value(settings, entry.key)
        path = doctor.resolve(entry, raw, paths)
        if raw and entry.key not in MQTT_IDENTITY and path.is_relative_to(tmp):  # not a default such as /sys/...
            _make(entry, path, m)
    return m


def run_doctor(m: Materialised) -> subprocess.CompletedProcess[str]:
    args = [sys.executable, "-m", "gateway", "doctor", "--json"]
    if isinstance(m.settings, config.CloudSettings):
        args.append("--cloud")
    for f in m.files:
        args += ["--config", str(f)]
    env = {k: v for k, v in os.environ.items() if k not in ("STATE_DIRECTORY", "CONFIGURATION_DIRECTORY")}
    return subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=m.tmp, env=env)


def test_every_toml_block_is_a_marked_example_when_docs_are_read() -> None:
    assert {"edge", "cloud", "fleet", "bundle"} <= set(EXAMPLES), sorted(EXAMPLES)
    for ex in EXAMPLES.values():
        assert ex.base is None or ex.base in EXAMPLES, f"{ex.where}: on={ex.base} names no example"


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_doctor_passes_every_check_when_run_on_a_docs_example(name: str, tmp_path: Path) -> None:
    m = materialise(name, tmp_path)
    done = run_doctor(m)
    assert done.returncode == 0, f"{EXAMPLES[name].where}: {done.stderr}{done.stdout}"
    report = json.loads(done.stdout)
    assert report["ok"] is True
    checked = {c["key"]: c for c in report["checks"]}
    assert all(c["ok"] for c in checked.values()), checked
    cert = checked["mqtt.cert_file"]  # every example connects with mutual TLS: its chain was checked
    assert "issued by 'mgw fleet" in cert["detail"] and "matches mqtt.key_file" in cert["detail"], cert
    assert 25 < cert["days_left"] <= 366  # as issued: 30 days here, 365 by broker-config


def _broken_edge(tmp_path: Path) -> Materialised:
    m = materialise("edge", tmp_path)
    assert run_doctor(m).returncode == 0
    return m


def _fails_naming(m: Materialised, key: str, reason: str) -> None:
    done = run_doctor(m)
    assert done.returncode == 2, done.stdout
    line = done.stderr.strip()
    assert line.startswith("mgw: error: ") and key in line and reason in line, line
    failed = [c["key"] for c in json.loads(done.stdout)["checks"] if not c["ok"]]
    assert failed == [key], failed


def test_doctor_fails_naming_the_key_when_a_named_file_is_missing(tmp_path: Path) -> None:
    m = _broken_edge(tmp_path)
    m.file("mqtt.cert_file").unlink()
    _fails_naming(m, "mqtt.cert_file", "not found")


def test_doctor_fails_naming_the_key_when_the_certificate_is_from_another_ca(tmp_path: Path) -> None:
    m = _broken_edge(tmp_path)
    other = FleetAuthority(tmp_path / "other-ca")
    key_pem, cert_pem = other.issue_with_key(m.settings.box.id, 30)  # type: ignore[union-attr]
    blobs.write_atomic(m.file("mqtt.cert_file"), cert_pem, mode=0o644)
    blobs.write_atomic(m.file("mqtt.key_file"), key_pem, mode=0o600)
    _fails_naming(m, "mqtt.cert_file", "not by a CA of")


def test_doctor_fails_naming_the_key_when_a_private_key_is_readable_by_others(tmp_path: Path) -> None:
    m = _broken_edge(tmp_path)
    m.file("mqtt.key_file").chmod(0o644)
    _fails_naming(m, "mqtt.key_file", "chmod 600")


def test_doctor_fails_naming_the_key_when_the_certificate_has_expired(tmp_path: Path) -> None:
    m = _broken_edge(tmp_path)
    m.authority.close()
    past = FleetAuthority(tmp_path / "ca", clock=lambda: time.time() - 10 * 86400)
    key_pem, cert_pem = past.issue_with_key(m.settings.box.id, 2)  # type: ignore[union-attr]
    blobs.write_atomic(m.file("mqtt.cert_file"), cert_pem, mode=0o644)
    blobs.write_atomic(m.file("mqtt.key_file"), key_pem, mode=0o600)
    _fails_naming(m, "mqtt.cert_file", "expired on")


def test_doctor_fails_naming_the_key_when_the_certificate_is_another_identity(tmp_path: Path) -> None:
    m = _broken_edge(tmp_path)
    key_pem, cert_pem = m.authority.issue_with_key("ct-elsewhere-02", 30)
    blobs.write_atomic(m.file("mqtt.cert_file"), cert_pem, mode=0o644)
    blobs.write_atomic(m.file("mqtt.key_file"), key_pem, mode=0o600)
    _fails_naming(m, "mqtt.cert_file", "connects as ct-suzhou-01")


@pytest.mark.parametrize("settings, table", [(config.EdgeSettings, doctor.EDGE_FILES),
                                             (config.CloudSettings, doctor.CLOUD_FILES)])
def test_doctor_table_names_a_key_when_the_settings_define_a_path(settings: type, table: tuple[doctor.FileKey, ...]
                                                                   ) -> None:
    paths = {k for k, _, _ in config.iter_keys(settings) if k.endswith(("_file", "_dir"))}
    assert paths == {e.key for e in table}


@pytest.mark.parametrize("line, key", [('[box]\nlog_level = "VERBOSE"', "'box.log_level' must be one of"),
                                       ('[site]\ntime_zone = "Mars/Base"', "'site.time_zone': unknown time zone")])
def test_doctor_fails_naming_the_key_when_a_box_value_is_unknown(tmp_path: Path, line: str, key: str) -> None:
    m = _broken_edge(tmp_path)
    extra = m.files[-1].parent / "extra.toml"
    extra.write_text(f"{line}\n")
    m.files.append(extra)
    done = run_doctor(m)
    assert done.returncode == 2 and key in done.stderr, done.stderr


def test_doctor_passes_a_bundle_when_one_of_its_cas_is_expired_and_another_issued_the_certificate(
        tmp_path: Path) -> None:
    m = _broken_edge(tmp_path)
    old = FleetAuthority(tmp_path / "old-ca", clock=lambda: time.time() - 20 * 365 * 86400)  # expired a decade ago
    ca = m.file("mqtt.ca_file")
    blobs.write_atomic(ca, old.ca_pem + ca.read_bytes(), mode=0o644)
    done = run_doctor(m)
    assert done.returncode == 0, done.stderr
    checks = {c["key"]: c for c in json.loads(done.stdout)["checks"]}
    assert "and 1 more" in checks["mqtt.ca_file"]["detail"] and checks["mqtt.ca_file"]["days_left"] > 3000
    blobs.write_atomic(ca, old.ca_pem, mode=0o644)  # only the expired one: the bundle and the chain fail
    done = run_doctor(m)
    assert done.returncode == 2 and "mqtt.ca_file" in done.stderr and "expired on" in done.stderr


def test_doctor_fails_naming_the_key_when_the_ca_file_is_not_the_pinned_fleet_ca(tmp_path: Path) -> None:
    from gateway.cloud.authority.ca import fingerprint

    m = _broken_edge(tmp_path)
    pin = m.files[-1].parent / "pin.toml"
    pin.write_text(f'[enrolment]\nca_fingerprint = "{fingerprint(m.authority.ca_pem)}"\n')
    m.files.append(pin)
    done = run_doctor(m)
    assert done.returncode == 0 and "the CA pinned by enrolment.ca_fingerprint" in done.stdout, done.stderr
    pin.write_text(f'[enrolment]\nca_fingerprint = "{fingerprint(FleetAuthority(tmp_path / "other").ca_pem)}"\n')
    _fails_naming(m, "mqtt.ca_file", "not the CA pinned by enrolment.ca_fingerprint")
