"""Field and fleet commands: `mgw provision`, `decommission`, and the cloud's CA commands.

Registered into the parser by ``cli.build_parser``; documented in docs/cli.md.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway import config, logs
from gateway.core.errors import ConfigError, GatewayError, LocalError
from gateway.i18n import _
from gateway.logs import MSG
from gateway.paths import Paths

log = logging.getLogger("gateway.field")


def _state_paths(args: argparse.Namespace) -> Paths:
    return Paths.from_env(str(args.state_dir) if args.state_dir else "")


def _say(args: argparse.Namespace) -> Callable[[str], None]:
    return (lambda _m: None) if getattr(args, "json", False) else (
        lambda m: print(_("mgw: {message}").format(message=m), file=sys.stderr))


def _tell(text: str) -> None:
    """A result for the person at the terminal, already translated (``_("...")``: gateway/i18n.py)."""
    print(text)


# -- edge: provision ---------------------------------------------------------------------------
def cmd_provision(args: argparse.Namespace) -> int:
    from gateway import bundle as bundles
    from gateway.edge import provision as prov

    logs.setup("INFO" if not args.json else "WARNING", False)
    paths = _state_paths(args)
    say = _say(args)
    site: dict[str, dict[str, Any]] = {}
    if args.bundle:
        signers = Path(args.signers) if args.signers else paths.config_dir / "bundle-signers"
        try:  # a plain file of bounded size, never through a link; the signature before any parsing
            raw = bundles.read_file(Path(args.bundle))
            got = bundles.verify(raw, bundles.load_signers(signers), time.time())
        except GatewayError as exc:
            log.error("provisioning bundle refused", extra={  # the formatter escapes both fields
                "MESSAGE_ID": MSG.BUNDLE_REFUSED.value, "BUNDLE": str(args.bundle), "REASON": str(exc)})
            raise bundles.BundleRefusedError(f"{logs.escape(args.bundle)}: {logs.escape(exc)}") from exc
        say(_("bundle signed by trusted key {key_id}").format(key_id=got.key_id))
        enrolment = prov.Enrolment(got.url, got.ca_fingerprint, got.token)
        site = got.site
    else:
        missing = [o for o, v in (("--token", args.token), ("--url", args.url),
                                  ("--ca-fingerprint", args.ca_fingerprint)) if not v]
        if missing:
            raise ConfigError(_("provision needs --bundle, or all of --token --url --ca-fingerprint "
                                "(missing {options})").format(options=" ".join(missing)))
        enrolment = prov.Enrolment(args.url, args.ca_fingerprint, args.token)
    lan = prov.Lan(tuple(args.modality or ()), args.dicom_bind or "")
    result = prov.provision(enrolment, paths, site_tables=site, force=args.force,
                            self_test=not args.no_self_test, say=say, lan=lan)
    doc = {"box_id": result.box_id, "site": result.site, "modality": result.modality,
           "dicom": {"allowed_peers": list(result.allowed_peers), "bind_host": result.bind_host},
           "not_after": result.not_after, "device_toml": str(result.device_toml),
           "self_test": [{"check": c, "ok": ok, "detail": d} for c, ok, d in result.checks], "ok": result.ok}
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        for check, ok, detail in result.checks:
            print((_("  [ok] {check}: {detail}") if ok else _("  [FAIL] {check}: {detail}")).format(
                check=_(prov.SELF_TEST_NAMES.get(check, check)), detail=detail))
        print((_("box {box} provisioned; configuration in {path}") if result.ok else
               _("box {box} provisioned; configuration in {path}; SELF-TEST FAILED (see above)")).format(
            box=result.box_id, path=result.device_toml))
    return 0 if result.ok else 1


# -- edge: decommission ------------------------------------------------------------------------
def cmd_decommission(args: argparse.Namespace) -> int:
    from gateway.edge import decommission

    if not args.yes:
        raise LocalError(_("decommission destroys this box's keys and cached studies: pass --yes to confirm"))
    logs.setup("INFO", False)
    report = decommission.crypto_erase(_state_paths(args))
    log.warning("box decommissioned", extra={"MESSAGE_ID": MSG.BOX_DECOMMISSIONED.value, **{
        k.upper(): v for k, v in report.items()}})
    print(json.dumps(report, indent=2) if args.json else
          _("decommissioned: {keys} keys crypto-erased, {files} cached files removed; revoke the box in the cloud "
            "(`mgw cloud revoke BOX`) as well").format(keys=report["keys_erased"], files=report["files_removed"]))
    return 0


# -- edge: commission --------------------------------------------------------------------------
def cmd_commission(args: argparse.Namespace) -> int:
    from gateway.edge import commission
    from gateway.settings_files import config_files

    logs.setup("ERROR", False)  # the report says what failed; progress goes to stderr, JSON to stdout
    files = config_files(args, "gateway")
    if args.upload_pending:
        return _commission_upload(files, args.ack_timeout)
    unknown = sorted(set(args.confirm or ()) - set(commission.MANUAL_KEYS))
    if unknown:
        raise ConfigError(_("--confirm {check}: not a manual check (one of {checks})").format(
            check=unknown[0], checks=", ".join(commission.MANUAL_KEYS)))
    if not args.engineer:
        raise ConfigError(_("--engineer NAME is required: the report names who commissioned the box"))
    ask = _ask_engineer if sys.stdin.isatty() and not args.json else None
    options = commission.Options(args.modality_host or "", args.modality_port, args.modality_ae or "", args.timeout,
                                 args.engineer, args.modality_make or "", args.modality_model or "",
                                 frozenset(args.confirm or ()), ask)
    report = commission.run(files, options, say=lambda m: print(_("mgw: {message}").format(message=m),
                                                                file=sys.stderr, flush=True))
    out_dir = Path(args.report_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"commission-{report.box_id or 'unknown'}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    Path(f"{stem}.txt").write_text(report.to_text())
    Path(f"{stem}.json").write_text(report.to_json())
    print(report.to_json() if args.json else report.to_text() + _("report written to {stem}.txt and {stem}.json")
          .format(stem=stem))
    if report.box_id:
        _commission_sign_and_upload(files, report, not args.no_upload, args.ack_timeout)
    return 0 if report.ok else 1


def _ask_engineer(question: str) -> bool:
    print(question, end="", file=sys.stderr, flush=True)
    return sys.stdin.readline().strip().lower() in ("y", "yes", "是")


def _commission_sign_and_upload(files: list[Path], report: Any, send: bool, timeout_s: float) -> None:
    """Sign the report with the box key, keep it in <state_dir>/commissioning/, and send it (stderr says which)."""
    from gateway.edge import commission_report, provision

    settings = config.load_edge(files)
    paths = Paths.from_env(settings.box.state_dir, base=files[0].parent)
    try:
        certificate = Path(settings.mqtt.cert_file).read_text()
        signed = commission_report.sign(report.document(), provision.key_store(paths), certificate)
    except (OSError, GatewayError) as exc:
        print(_("mgw: the report could not be signed ({reason}): provision the box, then re-run").format(reason=exc),
              file=sys.stderr)
        return
    saved = commission_report.save(paths.state_dir, report.report_id, signed)
    print(_("mgw: signed report saved to {path}").format(path=saved), file=sys.stderr)
    if send:
        _commission_send(settings, paths.state_dir, [saved], timeout_s)


def _commission_upload(files: list[Path], timeout_s: float) -> int:
    from gateway.edge import commission_report

    settings = config.load_edge(files)
    paths = Paths.from_env(settings.box.state_dir, base=files[0].parent)
    waiting = commission_report.pending(paths.state_dir)
    if not waiting:
        _tell(_("no signed commissioning report waits for upload"))
        return 0
    return 0 if _commission_send(settings, paths.state_dir, waiting, timeout_s) else 1


def _commission_send(settings: config.EdgeSettings, state_dir: Path, reports: list[Path], timeout_s: float) -> bool:
    from gateway.edge import commission_report

    try:
        result = commission_report.upload(settings, state_dir, reports, timeout_s)
    except GatewayError as exc:
        result = commission_report.Uploaded((), tuple(p.stem for p in reports), str(exc))
    for report_id in result.acknowledged:
        print(_("mgw: UPLOADED: the cloud verified and stored report {report}").format(report=report_id),
              file=sys.stderr)
    for report_id in result.unsent:
        print(_("mgw: NOT UPLOADED: report {report} ({reason}); it is kept in {path}: send it later with "
                "`mgw commission --upload-pending`").format(report=report_id, reason=result.reason,
                                                             path=commission_report.directory(state_dir)),
              file=sys.stderr)
    return not result.unsent


# -- cloud -------------------------------------------------------------------------------------
def _authority(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from gateway.cloud.authority.ca import FleetAuthority
    from gateway.settings_files import cloud_settings

    settings, paths = cloud_settings(args)
    a = settings.authority
    copies = (paths.key_file(a.broker_crl_file),) if a.broker_crl_file else ()
    return settings, paths, FleetAuthority(paths.key_file(a.pki_dir), crl_copies=copies)


def _enrol_url(settings: config.CloudSettings) -> str:
    a = settings.authority
    return f"https://{a.enrol_hostnames[0] if a.enrol_hostnames else a.enrol_host}:{a.enrol_port}"


def cmd_cloud_enrol(args: argparse.Namespace) -> int:
    from gateway.adapters import blobs, keystore
    from gateway.cloud import backends
    from gateway.cloud.authority import ack_keys
    from gateway.cloud.enrolment.server import BoxDirections, EnrolmentServer
    from gateway.supervision import StartRecord, run_service

    settings, paths, authority = _authority(args)
    logs.setup(settings.cloud.log_level, args.log_json)
    a = settings.authority
    key, cert = authority.dir / "enrolment.key", authority.dir / "enrolment.pem"
    if not cert.exists():
        key_pem, cert_pem = authority.issue_with_key("mgw enrolment", 825, server_hosts=list(a.enrol_hostnames))
        blobs.write_atomic(key, key_pem, mode=0o600)
        blobs.write_atomic(cert, cert_pem, mode=0o644)
    envelope = keystore.load_or_create_x25519(paths.key_file(settings.cloud.envelope_key_file))
    ack_key = paths.key_file(settings.cloud.ack_key_file)
    ack_keys.load_signer(ack_key)  # created here if this is the first cloud service to start
    command_key = paths.key_file(settings.fleet.command_key_file)
    ack_keys.load_signer(command_key)  # the remote commands' key (docs/operations.md, "Remote operations")
    directions = BoxDirections(keystore.public_b64(envelope), a.broker_host or settings.mqtt.host, a.broker_port,
                               settings.mqtt.topic_prefix, a.box_cert_days, lambda: ack_keys.keyring_of(ack_key),
                               lambda: ack_keys.keyring_of(command_key))
    starts = StartRecord(paths.state_dir, "enrolment", time.time)
    server = EnrolmentServer(authority, directions, cert, key, a.enrol_host, a.enrol_port, settings.enrolment,
                             metrics_bind=a.enrol_metrics_bind, metrics_port=a.enrol_metrics_port,
                             metrics_token=backends.bearer_token(paths, a.enrol_metrics_token_file), starts=starts)
    return run_service(server, "enrolment", starts)


def cmd_cloud_token(args: argparse.Namespace) -> int:
    from gateway.cloud.authority.ca import token_ref

    settings, _paths, authority = _authority(args)
    ttl_h = args.ttl_hours if args.ttl_hours is not None else settings.authority.token_ttl_hours
    carried = _site_tables(args)
    token = authority.create_token(args.box, args.site, args.modality, ttl_h * 3600, carried)
    doc = {"box_id": args.box, "site": args.site, "modality": args.modality, "site_tables": carried, "token": token,
           "token_ref": token_ref(token), "url": _enrol_url(settings), "ca_fingerprint": authority.ca_fingerprint,
           "expires_in_hours": ttl_h}
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        # untranslated: a command to paste on the box
        print(f"mgw provision --url {doc['url']} --ca-fingerprint {doc['ca_fingerprint']} --token {token}")
    return 0


def cmd_cloud_revoke(args: argparse.Namespace) -> int:
    from gateway.cloud.broker import registry

    broker = registry.by_name(args.broker)
    _settings, _paths, authority = _authority(args)
    count = authority.revoke_box(args.box, args.reason)
    logging.getLogger("gateway.field").warning("box revoked", extra={
        "MESSAGE_ID": MSG.CERT_REVOKED.value, "BOX_ID": args.box, "CERTIFICATES": count})
    where = ", ".join(str(p) for p in (authority.crl_path, *authority.crl_copies))
    _tell(_("revoked {count} certificate(s) of {box}; CRL written to {path}").format(count=count, box=args.box,
                                                                                      path=where))
    revocation = broker.revocation(args.box)
    if revocation.automatic:
        _tell(_("the broker reads the CRL within a second and disconnects the box; if the broker reads another "
                "copy, copy the CRL there"))
    else:
        _tell(_("{broker} does not read this CRL; end the box's open sessions with:").format(broker=broker.name))
        print("\n".join(revocation.commands))  # commands to run
    return 0 if count else 1


def cmd_cloud_crl(args: argparse.Namespace) -> int:
    """Write the CRL afresh (a new next update) where the authority and the broker read it."""
    _settings, _paths, authority = _authority(args)
    try:
        authority.write_crl()
        where = ", ".join(str(p) for p in (authority.crl_path, *authority.crl_copies))
    finally:
        authority.close()
    _tell(_("CRL written to {path}, valid for 7 days; the broker must re-read it (systemctl reload mgw-broker)")
          .format(path=where))
    return 0


def cmd_cloud_certs(args: argparse.Namespace) -> int:
    _settings, _paths, authority = _authority(args)
    rows = [r.__dict__ for r in authority.records(args.box)]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            state = _("revoked") if r["revoked_at"] else _("expired") if r["not_after"] < time.time() else _("valid")
            print(_("{serial:16s} {kind:7s} {subject:24s} until {date} {state}").format(
                serial=r["serial"][:16], kind=r["kind"], subject=r["subject"],
                date=time.strftime("%Y-%m-%d", time.gmtime(r["not_after"])), state=state)
                  + (_(" (renews {serial})").format(serial=r["renewed_from"][:16]) if r["renewed_from"] else ""))
    return 0


def cmd_cloud_broker_config(args: argparse.Namespace) -> int:
    from gateway.cloud.broker import pki, registry
    from gateway.cloud.broker.profile import Listener

    profile = registry.by_name(args.profile)
    settings, paths, authority = _authority(args)
    out = Path(args.out)
    a = settings.authority
    crl = paths.key_file(a.broker_crl_file) if a.broker_crl_file else out / "crl.pem"
    files = pki.emit_files(authority, out, args.host or ["127.0.0.1"], crl)
    written = profile.render(files, settings.mqtt.topic_prefix, Listener(args.port, args.bind), out)
    identities = [pki.issue_service_identity(authority, "ingest", str(n), out / "identities")
                  for n in range(1, args.ingest_workers + 1)]
    identities.append(pki.issue_service_identity(authority, "fleet", "1", out / "identities"))
    names, stems = ", ".join(p.name for p in written), ", ".join(cert.stem for _key, cert in identities)
    _tell(_("wrote the {profile} configuration in {out} ({names}) with the CA, server certificate and CRL "
            "({crl}); cloud identities in {out}/identities ({stems})").format(
        profile=profile.name, out=out, names=names, crl=crl, stems=stems))
    if not profile.revocation("BOX").automatic:
        _tell(_("{profile} does not read the CRL: after `mgw cloud revoke BOX`, run the commands "
                "`mgw cloud revoke BOX --broker {profile}` prints").format(profile=profile.name))
    if not a.broker_crl_file:
        _tell(_("set authority.broker_crl_file = \"{crl}\" so that revocations reach this broker").format(crl=crl))
    return 0


def cmd_cloud_bundle_key(args: argparse.Namespace) -> int:
    import os

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from gateway.adapters import blobs

    if Path(args.out).exists():
        raise LocalError(_("{path} exists; refusing to overwrite a signing key").format(path=args.out))
    raw = os.urandom(32)
    blobs.write_atomic(Path(args.out), raw, mode=0o600)
    public = Ed25519PrivateKey.from_private_bytes(raw).public_key().public_bytes_raw()
    print(base64.b64encode(public).decode())  # machine output: the public key
    return 0


def _site_tables(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The site tables of ``--site-config FILE`` with the options on top, checked (site_tables.check)."""
    import tomllib

    from gateway import site_tables

    base: dict[str, dict[str, Any]] = {}
    if args.site_config:
        try:
            base = tomllib.loads(Path(args.site_config).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{args.site_config}: {exc}") from exc
    options = site_tables.from_options(ae_title=args.ae_title, port=args.dicom_port, peers=args.peer,
                                       bind=args.dicom_bind, time_zone=args.time_zone, hours=args.hours,
                                       region=args.region)
    return site_tables.check(site_tables.merge(base, options), args.site_config or _("the options"))


def _add_site_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--site-config", help=_("TOML with the box's site tables: [dicom], [site], [uplink], [spool], "
                                         "[worklist] (docs/config.md); the options below go on top"))
    p.add_argument("--ae-title", help=_("the box's AE title, as the modality calls it"))
    p.add_argument("--dicom-port", type=int, help=_("the box's DICOM port"))
    p.add_argument("--peer", action="append", metavar="AE@ADDRESS",
                   help=_("a modality the box admits (AE@address or AE@network/prefix); repeat"))
    p.add_argument("--dicom-bind", metavar="ADDRESS", help=_("address the DICOM listener binds (default: the box's "
                                                           "address towards the modality)"))
    p.add_argument("--time-zone", help=_("the site's IANA time zone, e.g. Asia/Shanghai"))
    p.add_argument("--hours", action="append", metavar="'DAYS HH:MM-HH:MM'",
                   help=_("the site's opening hours, e.g. 'mon-fri 08:00-18:00'; repeat for other days"))
    p.add_argument("--region", help=_("the site's region, for the console's grouping"))


def cmd_cloud_bundle(args: argparse.Namespace) -> int:
    from gateway import bundle as bundles
    from gateway.adapters import blobs, keystore

    settings, _paths, authority = _authority(args)
    site = _site_tables(args)
    ttl_h = args.ttl_hours if args.ttl_hours is not None else settings.authority.token_ttl_hours
    token = authority.create_token(args.box, args.site, args.modality, ttl_h * 3600)
    signing = keystore.read_raw_secret(Path(args.signing_key), 32)
    raw = bundles.sign(signing, args.url or _enrol_url(settings), authority.ca_fingerprint, token, site,
                       time.time(), ttl_h * 3600)
    blobs.write_atomic(Path(args.out), raw, mode=0o600)
    print(_("wrote {path} for box {box}; copy it to the root of a USB stick as {name}").format(
        path=args.out, box=args.box, name=bundles.FILE_NAME))
    return 0


def add_commands(sub: Any, cloud: Any, with_config: Callable[[argparse.ArgumentParser], argparse.ArgumentParser]
                 ) -> None:
    p = sub.add_parser("provision", help=_("give this box its identity from an enrolment token or a signed bundle"))
    p.add_argument("--token", help=_("one-time enrolment token (mgw1-...)"))
    p.add_argument("--url", help=_("enrolment endpoint, https://host:port"))
    p.add_argument("--ca-fingerprint", help=_("SHA-256 of the fleet CA certificate (hex), pinned"))
    p.add_argument("--bundle", type=Path, help=_("a signed provisioning bundle (MGW-PROVISION.bundle)"))
    p.add_argument("--signers", type=Path, help=_("directory of trusted bundle signer keys (*.pub)"))
    p.add_argument("--state-dir", type=Path, help=_("state directory (default $STATE_DIRECTORY or /var/lib/gateway)"))
    p.add_argument("--modality", action="append", metavar="AE@ADDRESS",
                   help=_("the modality the DICOM listener admits (its calling AE title and IP address or "
                        "network/prefix); repeat for more; replaces the bundle's dicom.allowed_peers"))
    p.add_argument("--dicom-bind", metavar="ADDRESS",
                   help=_("address the DICOM listener binds (default: this box's address towards the modality)"))
    p.add_argument("--force", action="store_true", help=_("replace an existing identity"))
    p.add_argument("--no-self-test", action="store_true", help=_("skip the self-test (broker connection)"))
    p.add_argument("--json", action="store_true", help=_("print the result as JSON"))
    p.set_defaults(func=cmd_provision)

    d = sub.add_parser("decommission", help=_("crypto-erase this box: keys, cached studies, identity"))
    d.add_argument("--state-dir", type=Path, help=_("state directory (default $STATE_DIRECTORY or /var/lib/gateway)"))
    d.add_argument("--yes", action="store_true", help=_("confirm; nothing happens without it"))
    d.add_argument("--json", action="store_true", help=_("print what was erased as JSON"))
    d.set_defaults(func=cmd_decommission)

    m = with_config(sub.add_parser("commission", help=_("acceptance checks with a hand-over report (text and JSON)")))
    m.add_argument("--modality-host", help=_("the modality's address, for a C-ECHO to its SCP"))
    m.add_argument("--modality-port", type=int, default=104, help=_("the modality's DICOM port"))
    m.add_argument("--modality-ae", help=_("the modality's AE title"))
    m.add_argument("--timeout", type=float, default=120.0, help=_("seconds to wait for the cloud acknowledgement"))
    m.add_argument("--report-dir", default=".", help=_("where to write the report files"))
    m.add_argument("--json", action="store_true", help=_("print the report as JSON"))
    m.add_argument("--engineer", help=_("the commissioning engineer's name (required; in the signed report)"))
    m.add_argument("--modality-make", help=_("the modality's manufacturer, for the report"))
    m.add_argument("--modality-model", help=_("the modality's model, for the report"))
    m.add_argument("--confirm", action="append", metavar="CHECK",
                   help=_("attest a manual check done and seen to work: modality-echo (the echo from the modality "
                        "console) or test-study (a study sent from the modality); repeat. Without it a manual "
                        "check leaves the report INCOMPLETE (at a terminal, mgw asks instead)"))
    m.add_argument("--no-upload", action="store_true",
                   help=_("sign and keep the report in <state_dir>/commissioning/ without sending it"))
    m.add_argument("--upload-pending", action="store_true",
                   help=_("only send the signed reports kept in <state_dir>/commissioning/ that the cloud has not "
                        "acknowledged, then exit"))
    m.add_argument("--ack-timeout", type=float, default=30.0,
                   help=_("seconds to wait for the cloud's acknowledgement of an uploaded report"))
    m.set_defaults(func=cmd_commission)

    e = with_config(cloud.add_parser("enrol", help=_("run the enrolment endpoint (HTTPS, EST-style)")))
    e.add_argument("--log-json", action="store_true", help=_("log JSON lines"))
    e.set_defaults(func=cmd_cloud_enrol)
    t = with_config(cloud.add_parser("token", help=_("create a one-time enrolment token for a box")))
    t.add_argument("--box", required=True, help=_("box id the token enrols"))
    t.add_argument("--site", required=True, help=_("site the box serves"))
    t.add_argument("--modality", required=True, help=_("modality the box serves (CT, MR, DX...)"))
    t.add_argument("--ttl-hours", type=float, help=_("token lifetime (default authority.token_ttl_hours)"))
    _add_site_options(t)
    t.add_argument("--json", action="store_true", help=_("print JSON"))
    t.set_defaults(func=cmd_cloud_token)
    r = with_config(cloud.add_parser("revoke", help=_("revoke every certificate of a box and rewrite the CRL")))
    r.add_argument("box", help=_("box id"))
    r.add_argument("--reason", default="unspecified", help=_("recorded in the registry"))
    r.add_argument("--broker", default="mosquitto",
                   help=_("broker profile the fleet runs (mosquitto or emqx): says how the box's open sessions end"))
    r.set_defaults(func=cmd_cloud_revoke)
    crl = with_config(cloud.add_parser("crl", help=_("write the CRL afresh, before its 7 days run out (daily timer)")))
    crl.set_defaults(func=cmd_cloud_crl)
    c = with_config(cloud.add_parser("certs", help=_("the certificate registry: issued, renewed, revoked")))
    c.add_argument("--box", help=_("only this box"))
    c.add_argument("--json", action="store_true", help=_("print JSON"))
    c.set_defaults(func=cmd_cloud_certs)
    b = with_config(cloud.add_parser("broker-config", help=_("write a broker config with mutual TLS and ACLs")))
    b.add_argument("--out", required=True, help=_("directory for the broker's configuration and its files"))
    b.add_argument("--profile", default="mosquitto", help=_("broker profile: mosquitto (default) or emqx"))
    b.add_argument("--host", action="append", help=_("broker host name or address boxes use; repeat"))
    b.add_argument("--port", type=int, default=8883, help=_("TLS listener port"))
    b.add_argument("--bind", default="0.0.0.0", help=_("address the listener binds"))  # noqa: S104 - faces the boxes
    b.add_argument("--ingest-workers", type=int, default=1,
                   help=_("ingest worker identities to issue (cloud.ingest.1..N); the fleet gets cloud.fleet.1"))
    b.set_defaults(func=cmd_cloud_broker_config)
    k = cloud.add_parser("bundle-key", help=_("create a bundle signing key; print its public half"))
    k.add_argument("--out", required=True, help=_("private key file to create (keep it offline)"))
    k.set_defaults(func=cmd_cloud_bundle_key)
    u = with_config(cloud.add_parser("bundle", help=_("create a signed USB provisioning bundle for a box")))
    u.add_argument("--signing-key", required=True, help=_("the bundle signing key (from bundle-key)"))
    u.add_argument("--box", required=True, help=_("box id"))
    u.add_argument("--site", required=True, help=_("site the box serves"))
    u.add_argument("--modality", required=True, help=_("modality the box serves"))
    _add_site_options(u)
    u.add_argument("--url", help=_("enrolment endpoint the box uses (default from [authority])"))
    u.add_argument("--ttl-hours", type=float, help=_("bundle and token lifetime"))
    u.add_argument("--out", required=True, help=_("where to write the bundle"))
    u.set_defaults(func=cmd_cloud_bundle)
