"""`mgw cloud init`: a whole cloud on a blank host in one command (docs/deployment.md).

It makes, each only when it does not exist yet, so that running it again changes nothing
(``--force`` rewrites the configuration files and units, never a key, a certificate or the CA):

- the fleet CA (``<state>/pki``) and the cloud's keys: envelope, archive, ack (``<state>/keys``);
- the broker's directory ``<state>/broker``: CA, server certificate for the host names, CRL,
  the ``mgw_guard`` plugin and ``mosquitto.conf``, through the mosquitto profile as
  `mgw cloud broker-config` writes them;
- one identity per cloud process, ``cloud.ingest.1..N`` and ``cloud.fleet.1`` (``<state>/keys``);
- the configuration: ``<config>/cloud.toml``, which every cloud command reads, and a layer per
  process (``cloud-ingest-<n>.toml``, ``cloud-fleet.toml``: worker id, metrics port, identity);
- the systemd units (``cloud_units``) and the console's first admin account.

Files with secrets are 0600. Run as root, it hands the state directory to the service user
(``--user``, default ``mgw``) when that user exists, as systemd's ``StateDirectory=`` would.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway import cloud_units, config
from gateway.core.errors import ConfigError
from gateway.i18n import _
from gateway.tomlwrite import render_toml

ENROL_METRICS_PORT = 9472
POSTGRES_PASSWORD_FILE = "keys/postgres.password"  # noqa: S105 - a path, relative to the state directory
MAX_WORKERS = 64
HOST_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9.:-]{0,252}")  # DNS name, IPv4 or IPv6 address


@dataclass(frozen=True)
class Plan:
    """Where everything goes and what it is configured with, from the command's options."""

    state_dir: Path
    config_dir: Path
    units_dir: Path
    hostnames: tuple[str, ...]  # first: what boxes are told; the certificates carry all, and loopback
    broker_port: int
    enrol_port: int
    console_port: int
    metrics_port: int  # worker n's /metrics on metrics_port + n - 1; 0 = any free port for every service
    workers: int
    postgres: str
    postgres_password_file: str
    user: str
    admin: str
    admin_password_file: str
    force: bool

    @property
    def keys(self) -> Path:
        return self.state_dir / "keys"

    @property
    def broker_dir(self) -> Path:
        return self.state_dir / "broker"

    @property
    def cloud_toml(self) -> Path:
        return self.config_dir / "cloud.toml"

    def layer(self, role: str, n: int) -> Path:
        return self.config_dir / ("cloud-fleet.toml" if role == "fleet" else f"cloud-ingest-{n}.toml")

    @property
    def names(self) -> list[str]:
        return list(dict.fromkeys([*self.hostnames, "127.0.0.1", "localhost"]))


@dataclass
class Outcome:
    made: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    admin_password: str = ""

    def note(self, path: Path | str, made: bool) -> None:
        (self.made if made else self.kept).append(str(path))


def plan_of(args: argparse.Namespace) -> Plan:
    root = Path(args.dir)
    if not 1 <= args.workers <= MAX_WORKERS:
        raise ConfigError(_("--workers must be 1 to {max}").format(max=MAX_WORKERS))
    for name in ("broker_port", "enrol_port", "console_port", "metrics_port"):
        if not 0 <= getattr(args, name) <= 65535:
            raise ConfigError(_("{option} must be a port, 0 to 65535").format(option="--" + name.replace("_", "-")))
    if args.broker_port == 0:
        raise ConfigError(_("--broker-port must be a port: mosquitto cannot bind port 0 and tell"))
    for name in args.hostname or []:
        if not HOST_NAME.fullmatch(name):
            raise ConfigError(_("--hostname {name}: a DNS name or an IP address").format(name=repr(name)))
    return Plan(state_dir=root / "var/lib/gateway", config_dir=root / "etc/gateway", units_dir=Path(args.units_dir),
                hostnames=tuple(args.hostname or [socket.getfqdn()]), broker_port=args.broker_port,
                enrol_port=args.enrol_port, console_port=args.console_port, metrics_port=args.metrics_port,
                workers=args.workers, postgres=args.postgres or "",
                postgres_password_file=args.postgres_password_file or "", user=args.user, admin=args.admin,
                admin_password_file=args.admin_password_file or "", force=args.force)


# -- the configuration --------------------------------------------------------------------------
def cloud_tables(plan: Plan) -> dict[str, dict[str, object]]:
    """``cloud.toml``: what every cloud process and command of this host reads."""
    tables: dict[str, dict[str, object]] = {
        "cloud": {"state_dir": str(plan.state_dir)},
        "mqtt": {"host": "127.0.0.1", "port": plan.broker_port, "ca_file": str(plan.state_dir / "pki" / "ca.pem")},
        "authority": {"enrol_host": "0.0.0.0", "enrol_port": plan.enrol_port,  # noqa: S104 - boxes reach it
                      "enrol_hostnames": plan.names,
                      "enrol_metrics_port": ENROL_METRICS_PORT if plan.metrics_port else 0,
                      "broker_host": plan.hostnames[0], "broker_port": plan.broker_port,
                      "broker_crl_file": "broker/crl.pem"},
        "fleet": {"http_port": plan.console_port, "tls_hostnames": plan.names},
    }
    if plan.postgres:
        tables["index"] = {"backend": "postgres", "dsn": plan.postgres}
        if plan.postgres_password_file:
            tables["index"]["password_file"] = POSTGRES_PASSWORD_FILE
    return tables


def layer_tables(plan: Plan, role: str, n: int) -> dict[str, dict[str, object]]:
    """A cloud process's own layer: its identity, and for a worker its id and metrics port."""
    mqtt: dict[str, object] = {"cert_file": str(plan.keys / f"{role}-{n}.pem"),
                               "key_file": str(plan.keys / f"{role}-{n}.key")}
    if role == "fleet":
        return {"mqtt": mqtt}
    port = plan.metrics_port + n - 1 if plan.metrics_port else 0
    return {"ingest": {"worker_id": str(n), "metrics_port": port}, "mqtt": mqtt}


def _write(path: Path, text: str, plan: Plan, outcome: Outcome, mode: int = 0o644) -> None:
    from gateway.adapters import blobs

    exists = path.exists()
    if exists and not plan.force:
        outcome.note(path, False)
        return
    if exists and path.read_text() == text:
        outcome.note(path, False)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    blobs.write_atomic(path, text.encode(), mode=mode)
    outcome.note(path, True)


HEADER = "# Written by `mgw cloud init` (docs/deployment.md); keys in docs/config.md.\n"


def write_configuration(plan: Plan, outcome: Outcome) -> None:
    _write(plan.cloud_toml, HEADER + render_toml(cloud_tables(plan)), plan, outcome)
    for n in range(1, plan.workers + 1):
        _write(plan.layer("ingest", n), HEADER + render_toml(layer_tables(plan, "ingest", n)), plan, outcome)
    _write(plan.layer("fleet", 1), HEADER + render_toml(layer_tables(plan, "fleet", 1)), plan, outcome)
    config.load_cloud([plan.cloud_toml, plan.layer("fleet", 1)])  # what the services will read: refuse now


# -- keys, CA, broker, identities ----------------------------------------------------------------
def make_keys(plan: Plan, outcome: Outcome) -> None:
    from gateway.adapters import keystore
    from gateway.cloud.authority import ack_keys

    plan.keys.mkdir(parents=True, exist_ok=True, mode=0o700)
    for name, make in (("envelope.key", keystore.load_or_create_x25519),
                       ("archive.key", lambda p: keystore.load_or_create_raw(p, 32)),
                       ("ack.key", ack_keys.load_signer),
                       ("command.key", ack_keys.load_signer)):  # signs remote commands ([fleet] command_key_file)
        path = plan.keys / name
        existed = path.exists()
        make(path)
        outcome.note(path, not existed)
    copy = plan.state_dir / POSTGRES_PASSWORD_FILE
    if plan.postgres_password_file and not copy.exists():  # the services' own copy, handed over with the rest
        from gateway.adapters import blobs
        from gateway.cloud import backends

        blobs.write_atomic(copy, (backends.read_secret(Path(plan.postgres_password_file)) + "\n").encode(), 0o600)
        outcome.note(copy, True)


def make_pki(plan: Plan, outcome: Outcome) -> None:
    """The fleet CA, the broker's files and configuration, and the cloud processes' identities."""
    from gateway.cloud.authority.ca import FleetAuthority
    from gateway.cloud.broker import pki
    from gateway.cloud.broker.mosquitto import MosquittoProfile
    from gateway.cloud.broker.profile import BrokerFiles, Listener

    pki_dir, broker = plan.state_dir / "pki", plan.broker_dir
    existed = (pki_dir / "ca.key").exists()
    authority = FleetAuthority(pki_dir, crl_copies=(broker / "crl.pem",))
    try:
        outcome.note(pki_dir / "ca.pem", not existed)
        files = BrokerFiles(ca_file=broker / "ca.pem", cert_file=broker / "server.pem", key_file=broker / "server.key",
                            crl_file=broker / "crl.pem")
        if not files.cert_file.exists():
            files = pki.emit_files(authority, broker, plan.names, files.crl_file)
            outcome.note(files.cert_file, True)
        else:
            outcome.note(files.cert_file, False)
        conf = broker / "mosquitto.conf"
        render = plan.force or not conf.exists()
        if render:
            profile = MosquittoProfile(user=_service_user(plan) or None)
            profile.render(files, config.MqttSettings().topic_prefix, Listener(plan.broker_port), broker)
        outcome.note(conf, render)
        for role, count in (("ingest", plan.workers), ("fleet", 1)):
            for n in range(1, count + 1):
                cert = plan.keys / f"{role}-{n}.pem"
                issue = not cert.exists()
                if issue:
                    pki.issue_service_identity(authority, role, str(n), plan.keys)
                outcome.note(cert, issue)
    finally:
        authority.close()


def _service_user(plan: Plan) -> str:
    """The service user when it exists on this host, else ""."""
    import pwd

    try:
        pwd.getpwnam(plan.user)
    except KeyError:
        return ""
    return plan.user


# -- units, the first account, the hand-over --------------------------------------------------------
def write_units(plan: Plan, outcome: Outcome) -> None:
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    unit_plan = cloud_units.UnitPlan(
        state_dir=plan.state_dir, config_dir=plan.config_dir, user=plan.user, mosquitto=mosquitto,
        broker_conf=plan.broker_dir / "mosquitto.conf", crl_file=plan.broker_dir / "crl.pem", workers=plan.workers,
        broker_port=plan.broker_port,
        enrol_port=plan.enrol_port, console_port=plan.console_port)
    for name, text in cloud_units.render(unit_plan).items():
        _write(plan.units_dir / name, text, plan, outcome)


def make_admin(plan: Plan, outcome: Outcome) -> None:
    """The console's first admin account, when the fleet store has no account yet."""
    import getpass

    from gateway.cloud import backends
    from gateway.cloud.fleet.accounts import Accounts, Actor
    from gateway.core.access import Role
    from gateway.paths import Paths

    settings = config.load_cloud([plan.cloud_toml])
    store = backends.open_fleet_store(settings, Paths.from_env(str(plan.state_dir)))
    try:
        if store.auth.accounts():
            outcome.note(f"account {plan.admin}", False)
            return
        if plan.admin_password_file:
            password = backends.read_secret(Path(plan.admin_password_file))
        else:
            password = outcome.admin_password = secrets.token_urlsafe(15)
        accounts = Accounts(store.auth, settings.fleet.auth)
        accounts.create(plan.admin, password, Role.ADMIN, None, Actor(f"cli:{getpass.getuser()}", "cli", ""))
        outcome.note(f"account {plan.admin}", True)
    finally:
        store.close()


def hand_over(plan: Plan) -> str:
    """As root, give the state directory to the service user (no link followed); the user, or ""."""
    user = _service_user(plan)
    if os.geteuid() != 0 or not user:
        return ""
    import pwd

    entry = pwd.getpwnam(user)
    for top, dirs, files in os.walk(plan.state_dir):
        for name in [*dirs, *files]:
            os.chown(os.path.join(top, name), entry.pw_uid, entry.pw_gid, follow_symlinks=False)
    os.chown(plan.state_dir, entry.pw_uid, entry.pw_gid, follow_symlinks=False)
    return user


def init(plan: Plan) -> Outcome:
    outcome = Outcome()
    plan.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    plan.config_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
    make_keys(plan, outcome)
    make_pki(plan, outcome)
    write_configuration(plan, outcome)
    write_units(plan, outcome)
    make_admin(plan, outcome)
    hand_over(plan)
    return outcome


# -- the command ----------------------------------------------------------------------------------
def cmd_cloud_init(args: argparse.Namespace) -> int:
    from gateway import logs
    from gateway.field import _tell

    logs.setup("WARNING", False)
    plan = plan_of(args)
    outcome = init(plan)
    units = sorted(p.name for p in plan.units_dir.glob("mgw-*"))
    config_arg = f"--config {plan.cloud_toml}"
    owner = _service_user(plan) if os.geteuid() == 0 else ""
    as_owner = f"sudo -u {owner} " if owner else ""  # the CA's registry and the fleet store are the user's
    steps = ["systemctl daemon-reload", "systemctl enable --now mgw-cloud.target",
             f"mgw doctor --cloud {config_arg}",
             f"{as_owner}mgw cloud token {config_arg} --box BOX --site SITE --modality CT"]
    if args.json:
        doc: dict[str, Any] = {"state_dir": str(plan.state_dir), "config": str(plan.cloud_toml),
                               "units_dir": str(plan.units_dir), "units": units, "made": outcome.made,
                               "kept": outcome.kept, "admin": plan.admin,
                               "admin_password": outcome.admin_password or None, "next": steps}
        print(json.dumps(doc, indent=2))
        return 0
    _tell(_("cloud initialised: {made} made, {kept} kept as they were; configuration {config}, state {state}, "
            "units in {units_dir} ({units})").format(made=len(outcome.made), kept=len(outcome.kept),
                                                     config=plan.cloud_toml, state=plan.state_dir,
                                                     units_dir=plan.units_dir, units=", ".join(units)))
    if outcome.admin_password:
        _tell(_("console account {admin} (admin), password: {password}  (shown once; change it with "
                "`{command}`)").format(admin=plan.admin, password=outcome.admin_password,
                                       command=f"{as_owner}mgw cloud user passwd {plan.admin} {config_arg}"))
    _tell(_("next steps:"))
    print("\n".join(f"  {step}" for step in steps))  # commands to run
    return 0


def add_command(cloud: Any) -> None:
    p = cloud.add_parser("init", help=_("bring up a cloud on this host: CA, keys, broker, identities, config, units"))
    p.add_argument("--dir", default="/",
                   help=_("root under which var/lib/gateway and etc/gateway are made (default /)"))
    p.add_argument("--hostname", action="append", help=_("name or address boxes reach this host by (the broker's "
                                                       "and the console's certificates); repeat; first is told "
                                                       "to boxes (default: this host's name)"))
    p.add_argument("--broker-port", type=int, default=8883, help=_("the broker's TLS port (default 8883)"))
    p.add_argument("--enrol-port", type=int, default=8443, help=_("the enrolment endpoint's port (default 8443)"))
    p.add_argument("--console-port", type=int, default=8080, help=_("the console's HTTPS port (default 8080)"))
    p.add_argument("--metrics-port", type=int, default=9481,
                   help=_("ingest worker n's /metrics on this port + n - 1 (default 9481); 0 = any free port"))
    p.add_argument("--workers", type=int, default=1, help=_("ingest workers on this host (default 1)"))
    p.add_argument("--postgres", metavar="DSN", help=_("keep the index, staging and fleet store in PostgreSQL "
                                                     "(a libpq DSN without a password); default SQLite"))
    p.add_argument("--postgres-password-file", help=_("file (0600) holding the PostgreSQL role's password; copied "
                                                     "to keys/postgres.password as index.password_file"))
    p.add_argument("--user", default="mgw", help=_("the services' user (default mgw)"))
    p.add_argument("--admin", default="admin", help=_("the console's first admin account (default admin)"))
    p.add_argument("--admin-password-file", help=_("file holding its password (else one is made and printed once)"))
    p.add_argument("--units-dir", default="/etc/systemd/system", help=_("where the units go "
                                                                       "(default /etc/systemd/system)"))
    p.add_argument("--force", action="store_true",
                   help=_("rewrite configuration and units; never a key or certificate"))
    p.add_argument("--json", action="store_true", help=_("print what was made as JSON"))
    p.set_defaults(func=cmd_cloud_init)
