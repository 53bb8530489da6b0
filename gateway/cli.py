"""``mgw``: the one console script. Subcommands are documented in docs/cli.md.

Any failure exits non-zero with a one-line reason on stderr; ``--json`` gives
machine-readable output where a script would use it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from gateway import __version__, config, i18n, logs
from gateway.core.errors import GatewayError
from gateway.i18n import _
from gateway.paths import Paths
from gateway.settings_files import cloud_settings, config_files, edge_settings
from gateway.supervision import StartRecord, run_service

log = logging.getLogger("gateway.cli")


def cmd_edge_run(args: argparse.Namespace) -> int:
    settings, paths = edge_settings(args, starting=True)
    logs.setup(settings.box.log_level, args.log_json)
    from gateway.edge.service import EdgeService

    edge = EdgeService(settings, paths, config_files=config_files(args, "gateway"))
    return run_service(edge, "edge", StartRecord(paths.state_dir, "edge", time.time))


def cmd_edge_worklist_import(args: argparse.Namespace) -> int:
    from gateway.adapters.keystore import FileKeyStore
    from gateway.adapters.worklist_store import WorklistStore
    from gateway.edge import cache
    from gateway.edge.worklist_feed import apply_update, read_update
    from gateway.field import _tell

    settings, paths = edge_settings(args)
    logs.setup(settings.box.log_level, False)
    update = read_update(args.file)  # refused before anything is opened
    owner = paths.state_dir.stat().st_uid if paths.state_dir.exists() else os.geteuid()
    if owner != os.geteuid():  # files made by root here would lock the edge (User=mgw) out of its cache
        raise config.ConfigError(_("{path} belongs to uid {uid}: run this as that user "
                                   "(sudo -u mgw mgw edge worklist import ...)").format(path=paths.state_dir,
                                                                                        uid=owner))
    store = WorklistStore(paths.worklist_db, FileKeyStore(paths.state_dir / "keys").secret(cache.KEY_NAME))
    try:
        applied = apply_update(store, update, settings.box.id, time.time(), "import")
        waiting = store.count()
    finally:
        store.close()
    doc = {"applied": applied.applied, "seq": update.seq, "last_seq": applied.last_seq,
           "upserted": applied.upserted, "cancelled": applied.cancelled, "items": waiting}
    if args.json:
        print(json.dumps(doc))
    elif applied.applied:
        _tell(_("worklist update {seq} applied: {upserted} scheduled, {cancelled} cancelled; {waiting} steps in "
                "the cache").format(seq=update.seq, upserted=applied.upserted, cancelled=applied.cancelled,
                                    waiting=waiting))
    else:
        _tell(_("worklist update {seq} ignored: update {last_seq} was already applied").format(
            seq=update.seq, last_seq=applied.last_seq))
    return 0


def cmd_cloud_run(args: argparse.Namespace) -> int:
    settings, paths = cloud_settings(args)
    logs.setup(settings.cloud.log_level, args.log_json)
    from gateway.cloud.ingest.service import CloudService

    service = CloudService(settings, paths)
    return run_service(service, "cloud ingest", service.starts)


def cmd_cloud_fleet(args: argparse.Namespace) -> int:
    settings, paths = cloud_settings(args)
    logs.setup(settings.cloud.log_level, args.log_json)
    from gateway.cloud.fleet.service import FleetService

    fleet = FleetService(settings, paths)
    return run_service(fleet, "cloud fleet", fleet.starts)


def cmd_simulate(args: argparse.Namespace) -> int:
    from gateway.simulator import run_simulation

    settings, paths = cloud_settings(args)
    logs.setup("ERROR", False)
    report = run_simulation(settings, paths, boxes=args.boxes, minutes=args.minutes, heartbeat_s=args.heartbeat_s,
                            outage_percent=args.outage_percent, seed=args.seed, backfill_hours=args.backfill_hours,
                            say=(lambda _m: None) if args.json else (lambda m: print(_("mgw: {message}").format(
                                message=m), file=sys.stderr)))
    print(json.dumps(report, indent=2) if args.json else
          _("simulated {boxes} boxes for {seconds} s: {heartbeats} heartbeats, {exams} exams, {outages} outages")
          .format(boxes=report["boxes"], seconds=report["seconds"], heartbeats=report["heartbeats"],
                  exams=report["exams"], outages=report["outages"]))
    lost = report["publish_failures"] + report["publish_refused"]
    if lost:
        print(_("mgw: {refused} messages refused by the broker and {failed} not sent: the cloud did not get them "
                "(see PUBLISH_REFUSED in the log)").format(refused=report["publish_refused"],
                                                           failed=report["publish_failures"]), file=sys.stderr)
    return 1 if lost else 0


def cmd_cloud_keygen(args: argparse.Namespace) -> int:
    from gateway.adapters import keystore

    settings, paths = cloud_settings(args)
    key = keystore.load_or_create_x25519(paths.key_file(settings.cloud.envelope_key_file))
    print(keystore.public_b64(key))
    return 0


def cmd_cloud_import(args: argparse.Namespace) -> int:
    from gateway.adapters import keystore
    from gateway.cloud import backends
    from gateway.cloud.authority import ack_keys
    from gateway.cloud.ingest.importer import import_exports
    from gateway.cloud.ingest.pipeline import Ingest

    settings, paths = cloud_settings(args)
    logs.setup(settings.cloud.log_level, False)
    key = keystore.load_or_create_x25519(paths.key_file(settings.cloud.envelope_key_file))
    signer = ack_keys.load_signer(paths.key_file(settings.cloud.ack_key_file))
    archive = backends.open_archive(settings, paths)  # the configured index: SQLite or PostgreSQL
    try:
        staging = backends.open_staging(settings, paths)
        summary = import_exports(args.directory, Ingest(settings.ingest, key, signer, archive, staging), archive)
    finally:
        archive.close()
    if args.json:
        print(json.dumps(summary.as_dict(), indent=2))
    else:
        print(_("imported {exports} export(s): {stored} stored, {rejected} rejected, {incomplete} incomplete, "
                "{unreadable} unreadable").format(exports=len(summary.exports), stored=summary.stored,
                                                  rejected=summary.rejected, incomplete=summary.incomplete,
                                                  unreadable=summary.unreadable))
    return 0 if summary.rejected + summary.incomplete + summary.unreadable == 0 else 1


def cmd_cloud_seal_archive(args: argparse.Namespace) -> int:
    from gateway.cloud import backends

    settings, paths = cloud_settings(args)
    logs.setup(settings.cloud.log_level, False)
    archive = backends.open_archive(settings, paths, migrating=True)  # may create the archive key
    try:
        sealed, damaged = archive.seal_plaintext()
    finally:
        archive.close()
    if sealed:
        log.warning("plaintext archive objects sealed", extra={
            "MESSAGE_ID": logs.MSG.PLAINTEXT_SEALED.value, "ITEMS": sealed, "DAMAGED": damaged})
    print(_("sealed {sealed} plaintext object(s); {damaged} left (no longer match their index row)").format(
        sealed=sealed, damaged=damaged))
    return 0 if damaged == 0 else 1


def cmd_update_hook(args: argparse.Namespace) -> int:
    """The A/B update hook contract: 0 go on, 1 roll back, 21 retry later (firmware_hooks/)."""
    from gateway.appliance import update

    logs.setup("INFO", args.log_json)
    try:
        if args.step == "rollback":
            return int(update.rolled_back())
        files = config_files(args, "gateway")
        paths = Paths.from_env(config.load_edge(files).box.state_dir, base=files[0].parent)
        if args.step == "migrate":
            return int(update.migrate(files, paths))
        settings = config.load_edge(files)
        if args.step == "pre-install":
            return int(update.pre_install(settings, paths, proc_root=args.proc_root))
        if args.step == "pre-reboot":
            return int(update.pre_reboot(settings, paths, proc_root=args.proc_root))
        return int(update.commit_gate(settings, paths, update.default_probe(settings, paths), timeout_s=args.timeout_s,
                                      settle_s=args.settle_s))
    except GatewayError as exc:
        print(_("mgw: error: {reason}").format(reason=exc), file=sys.stderr)
        return int(update.HookResult.ROLLBACK)


def cmd_usb_handle(args: argparse.Namespace) -> int:
    import shlex
    from contextlib import AbstractContextManager, nullcontext

    from gateway.adapters import udev_watch
    from gateway.appliance import usb

    logs.setup("INFO", False)
    if args.mountpoint is None:
        device = udev_watch.usb_filesystem(args.device)
        if device.bus != "usb" or device.fs_usage != "filesystem":
            print(_("mgw: {device} is not a USB filesystem; ignored").format(device=args.device), file=sys.stderr)
            return 0
        mount: AbstractContextManager[udev_watch.Stick] = udev_watch.mounted(
            device, Paths.from_env().runtime_dir.parent / "gateway-usb")
    else:
        mount = nullcontext(udev_watch.Stick(Path(args.mountpoint)))
    # the links provisioning designated get their address, then the listener binds it
    restart = (["systemctl", "restart", "mgw-network.service", "mgw-edge.service"]
               if Path("/run/systemd/system").is_dir() else None)

    def load() -> config.EdgeSettings:
        return edge_settings(args)[0]

    try:
        paths = edge_settings(args)[1]
    except config.ConfigError:  # unprovisioned: the default places
        paths = Paths.from_env()
    with mount as stick:
        action = usb.handle_stick(stick.path, load, paths, shlex.split(args.provision_command), restart,
                                  make_writable=stick.make_writable)
    print(action.value)  # machine output: the udev unit's journal and tests read the action's name
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from gateway.appliance import glance

    settings, paths = edge_settings(args)
    if not paths.spool_db.exists():
        raise config.ConfigError(_("{path}: no spool database yet (has the edge run?)").format(path=paths.spool_db))
    seen = glance.glance(settings, paths, time.time())
    if args.json:
        print(json.dumps(seen.as_dict(), indent=2))
        return 0
    print("\n".join(glance.lines(seen)))  # translated by glance.lines
    print(_("  spool:"))
    for state in ("received", "packed", "sending", "acknowledged", "purged", "quarantined"):
        c = seen.spool.get(state, {"items": 0, "bytes": 0})
        print(_("    {state:13s} {items:7d} items {megabytes:10.1f} MB").format(
            state=_(glance.SPOOL_STATES[state]), items=int(c["items"]), megabytes=int(c["bytes"]) / 1e6))
    return 0


def cmd_quarantine(args: argparse.Namespace) -> int:
    from gateway.adapters.store import SpoolStore
    from gateway.edge.quarantine import Quarantine

    _settings, paths = edge_settings(args)
    if not paths.spool_db.exists():
        raise config.ConfigError(_("{path}: no spool database yet (has the edge run?)").format(path=paths.spool_db))
    store = SpoolStore(paths.spool_db)
    try:
        desk = Quarantine(store, paths)
        if args.quarantine_cmd == "list":
            docs = [e.as_dict() for e in desk.entries()]
        else:
            action = {"show": desk.get, "replay": desk.replay, "delete": desk.delete}[args.quarantine_cmd]
            docs = [action(args.id).as_dict()]
    finally:
        store.close()
    if args.json:
        print(json.dumps(docs if args.quarantine_cmd == "list" else docs[0], indent=2))
        return 0
    verb = {"replay": _("replayed "), "delete": _("deleted ")}.get(args.quarantine_cmd, "")
    for d in docs:
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(float(d["received_at"])))  # type: ignore[arg-type]
        print(_("{verb}{id:>10}  {kind:4s}  {when}  {bytes:>11d} B  {sop_class}  AE={ae}  reason: {reason}").format(
            verb=verb, id=d["id"], kind=d["kind"], when=when, bytes=int(d["bytes"]),  # type: ignore[call-overload]
            sop_class=d["sop_class"] or "-", ae=d["calling_ae"] or "-", reason=d["reason"] or "-"))
    if args.quarantine_cmd == "list" and not docs:
        print(_("quarantine is empty"))
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from gateway import doctor
    from gateway.field import _tell

    files = config_files(args, "cloud" if args.cloud else "gateway")
    if args.cloud:
        cloud = config.load_cloud(files)
        findings = doctor.check_cloud(cloud, Paths.from_env(cloud.cloud.state_dir, base=files[0].parent), time.time())
    else:
        edge = config.load_edge(files)
        findings = doctor.check_edge(edge, Paths.from_env(edge.box.state_dir, base=files[0].parent), time.time())
    if args.json:
        print(json.dumps({"files": [str(f) for f in files], "ok": all(f.ok for f in findings),
                          "checks": [{"key": f.key, "ok": f.ok, "detail": f.detail, "days_left": f.days_left}
                                     for f in findings]}, indent=2))
    else:
        for f in findings:
            line = _("ok    {key}: {detail}") if f.ok else _("FAIL  {key}: {detail}")
            print(line.format(key=f.key, detail=f.detail))
    failed = [f for f in findings if not f.ok]
    if failed:
        raise config.ConfigError("; ".join(f"{f.key}: {f.detail}" for f in failed))
    if not args.json:
        names = " + ".join(map(str, files))
        _tell(_("ok: {files} is valid and every file it names checks out").format(files=names))
    return 0


def cmd_network_render(args: argparse.Namespace) -> int:
    """The .network files of the designated links; on a configuration error the default uplink
    links still get theirs (the box stays reachable) and the exit status is 1."""
    from gateway.appliance.network import render_to

    code = 0
    try:
        network, bind_host = config.load_network(config_files(args, "gateway"))
        written = render_to(args.out, network, bind_host)
    except (GatewayError, ValueError) as exc:
        print(_("mgw: error: {reason}; rendering the default uplink links only").format(reason=exc), file=sys.stderr)
        written, code = render_to(args.out, config.NetworkSettings(), "127.0.0.1"), 1
    for path in written:
        print(path)  # machine output: one path a line
    return code


def cmd_demo(args: argparse.Namespace) -> int:
    from gateway.demo import run_demo

    logs.setup("WARNING", False)
    return run_demo(once=args.once, as_json=args.json, workdir=args.workdir, keep=args.keep)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mgw", description=_("Modality gateway: edge box, cloud ingest and field tools."))
    parser.add_argument("--version", action="version", version=f"mgw {__version__}",
                        help=_("show the version and exit"))
    parser.add_argument("--lang", choices=sorted(i18n.LANGUAGES), help=_(
        "language of what mgw prints: en (English) or zh (Simplified Chinese); default from the locale "
        "(LC_ALL, LC_MESSAGES, LANG), else English. --json output never changes"))
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--config", action="append", metavar="FILE", help=_("TOML file; repeat to layer (later wins)"))
        return p

    demo = sub.add_parser("demo", help=_("all-in-one demo: broker, cloud, edge, a real study end to end"))
    demo.add_argument("--once", action="store_true", help=_("exit when the study is verified (0) or failed (1)"))
    demo.add_argument("--json", action="store_true", help=_("print the summary as JSON"))
    demo.add_argument("--workdir", type=Path, help=_("keep state here instead of a temporary directory"))
    demo.add_argument("--keep", action="store_true", help=_("do not delete the temporary directory"))
    demo.set_defaults(func=cmd_demo)

    edge = sub.add_parser("edge", help=_("the edge box service")).add_subparsers(
        dest="edge_cmd", required=True, metavar="ACTION")
    run = with_config(edge.add_parser("run", help=_("run the edge service (DICOM listener, spool, uplink)")))
    run.add_argument("--log-json", action="store_true", help=_("log JSON lines"))
    run.set_defaults(func=cmd_edge_run)
    wl = edge.add_parser("worklist", help=_("the Modality Worklist cache")).add_subparsers(
        dest="worklist_cmd", required=True, metavar="ACTION")
    wimport = with_config(wl.add_parser("import", help=_("apply a worklist update (JSON file) to the cache")))
    wimport.add_argument("file", type=Path, metavar="FILE", help=_("one WorklistUpdate as JSON (docs/protocol.md)"))
    wimport.add_argument("--json", action="store_true", help=_("print the result as JSON"))
    wimport.set_defaults(func=cmd_edge_worklist_import)

    cloud = sub.add_parser("cloud", help=_("the cloud services")).add_subparsers(
        dest="cloud_cmd", required=True, metavar="ACTION")
    crun = with_config(cloud.add_parser("run", help=_("run one cloud ingest worker")))
    crun.add_argument("--log-json", action="store_true", help=_("log JSON lines"))
    crun.set_defaults(func=cmd_cloud_run)
    fleet = with_config(cloud.add_parser("fleet", help=_("run the fleet registry, alerts, REST API and dashboard")))
    fleet.add_argument("--log-json", action="store_true", help=_("log JSON lines"))
    fleet.set_defaults(func=cmd_cloud_fleet)
    keygen = with_config(cloud.add_parser("keygen", help=_("create the envelope key if absent; print its public half")))
    keygen.set_defaults(func=cmd_cloud_keygen)

    cimport = with_config(cloud.add_parser("import", help=_("import an emergency export from a USB stick")))
    cimport.add_argument("directory", type=Path, metavar="DIR", help=_("an MGW-EXPORT-* directory or a stick's root"))
    cimport.add_argument("--json", action="store_true", help=_("print the summary as JSON"))
    cimport.set_defaults(func=cmd_cloud_import)
    seal = with_config(cloud.add_parser(
        "seal-archive", help=_("seal a plaintext archive (from before encryption at rest)")))
    seal.set_defaults(func=cmd_cloud_seal_archive)

    hook = with_config(sub.add_parser("update-hook",
                                      help=_("A/B update hook step (exit 0 go on, 1 roll back, 21 retry)")))
    hook.add_argument("step", choices=["pre-install", "pre-reboot", "migrate", "commit-gate", "rollback"],
                      help=_("which step"))
    hook.add_argument("--proc-root", type=Path, default=Path("/proc"), help=_("where /proc is (tests)"))
    hook.add_argument("--timeout-s", type=float,
                      help=_("commit gate deadline (default appliance.commit_gate_timeout_s)"))
    hook.add_argument("--settle-s", type=float, help=_("gate settle window (default appliance.commit_gate_settle_s)"))
    hook.add_argument("--log-json", action="store_true", help=_("log JSON lines"))
    hook.set_defaults(func=cmd_update_hook)

    usbp = sub.add_parser("usb", help=_("USB sticks (started by udev through mgw-usb@.service)")).add_subparsers(
        dest="usb_cmd", required=True, metavar="ACTION")
    handle = with_config(usbp.add_parser("handle", help=_("mount a stick, then provision or export, then unmount")))
    handle.add_argument("device", help=_("block device, e.g. /dev/sdb1"))
    handle.add_argument("--mountpoint", type=Path, help=_("use this already-mounted directory instead (tests)"))
    handle.add_argument("--provision-command", default="mgw provision", help=_("command that applies a bundle"))
    handle.set_defaults(func=cmd_usb_handle)

    status = with_config(sub.add_parser("status", help=_("the box at a glance: uplink, certificate, backlog, studies")))
    status.add_argument("--json", action="store_true", help=_("print JSON"))
    status.set_defaults(func=cmd_status)

    sim = with_config(sub.add_parser("simulate", help=_("drive N simulated boxes against a real broker and cloud")))
    sim.add_argument("--boxes", type=int, default=10, help=_("simulated boxes (1-5000)"))
    sim.add_argument("--minutes", type=float, default=1.0, help=_("run this long, then stop (at most 1440)"))
    sim.add_argument("--heartbeat-s", type=float, default=30.0, help=_("heartbeat period of each box"))
    sim.add_argument("--outage-percent", type=float, default=2.0, help=_("chance per box and minute of an outage"))
    sim.add_argument("--backfill-hours", type=float, default=8.0,
                     help=_("exams each box reports from before the start"))
    sim.add_argument("--seed", type=int, default=1, help=_("random seed, for repeatable runs"))
    sim.add_argument("--json", action="store_true", help=_("print the report as JSON"))
    sim.set_defaults(func=cmd_simulate)

    quarantine = sub.add_parser("quarantine", help=_("quarantined instances: list, show, replay, delete (no PHI)"))
    qsub = quarantine.add_subparsers(dest="quarantine_cmd", required=True, metavar="ACTION")
    for name, text in (("list", _("every quarantined entry with its reason")), ("show", _("one entry")),
                       ("replay", _("send a quarantined item through the queue again")),
                       ("delete", _("delete a quarantined entry's data (the item's row is kept)"))):
        q = with_config(qsub.add_parser(name, help=text))
        if name != "list":
            q.add_argument("id", help=_("entry id from `mgw quarantine list` (an item id, or file:<name>)"))
        q.add_argument("--json", action="store_true", help=_("print JSON"))
        q.set_defaults(func=cmd_quarantine)

    doctor = with_config(sub.add_parser("doctor", help=_("validate configuration without starting anything")))
    doctor.add_argument("--cloud", action="store_true", help=_("validate a cloud configuration"))
    doctor.add_argument("--json", action="store_true", help=_("print every check as JSON"))
    doctor.set_defaults(func=cmd_doctor)

    network = sub.add_parser("network", help=_("the appliance's network links")).add_subparsers(
        dest="network_cmd", required=True, metavar="ACTION")
    nrender = with_config(network.add_parser(
        "render", help=_("write systemd-networkd files for the designated links only (mgw-network.service)")))
    nrender.add_argument("--out", type=Path, default=Path("/run/systemd/network"), metavar="DIR",
                         help=_("where to write them (default /run/systemd/network)"))
    nrender.set_defaults(func=cmd_network_render)

    from gateway import field  # provisioning, decommissioning and the fleet CA (issue 4)

    field.add_commands(sub, cloud, with_config)
    from gateway.cloud.authority import ack_key_cli  # the ack signing keys (signed acks, wire v2)

    ack_key_cli.add_command(cloud, with_config)
    from gateway.cloud.fleet import accounts_cli  # the console's accounts, API tokens and audit log

    accounts_cli.add_commands(cloud, with_config)
    from gateway.cloud.archive import versions_cli  # the archive's versions of an instance (issue 18)

    versions_cli.add_command(cloud, with_config)
    from gateway.cloud.worklist import cli as worklist_cli  # the worklist feed's routes and status

    worklist_cli.add_commands(cloud, with_config)
    from gateway.cloud.commands import cli as command_cli  # remote commands, bundles, rollouts (issue 20)

    command_cli.add_commands(cloud, with_config)
    from gateway import cloud_init  # a cloud on a blank host: CA, keys, broker, identities, units

    cloud_init.add_command(cloud)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    i18n.use(i18n.choose(i18n.flag_in(argv), os.environ))  # before the parser: its help is translated too
    args = build_parser().parse_args(argv)
    if getattr(args, "json", False):
        i18n.use("en")  # machine output, and every text beside it, never changes with the language
    try:
        return int(args.func(args))
    except GatewayError as exc:
        print(_("mgw: error: {reason}").format(reason=exc), file=sys.stderr)
        return 2 if isinstance(exc, config.ConfigError) else 1
    except KeyboardInterrupt:
        return 130
