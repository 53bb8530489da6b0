"""`mgw cloud command issue|list|show|bundle-download|config-diff|rollout|rollout-show` (docs/cli.md).

Registered into the parser by ``cli.build_parser``. Each command opens the fleet store the
configuration names (SQLite or PostgreSQL) and the fleet's keys (the envelope key seals arguments at
rest and opens bundles; the command key is the fleet service's), queues or reads commands; the leading
fleet instance publishes what is queued while the box is online. Whoever can read the fleet's
configuration and keys on the fleet host acts as an admin: there is no role check here, but every issue,
rollout and bundle download is in the audit log (actor ``cli:<user>``). Arguments are checked before
anything is written; what a person reads (results, tables, refusals, help) is in the CLI's language
(gateway/i18n.py), ``--json`` never changes. A reason from the rules the console shares (an argument's
check) stays English after a translated prefix, as the API answers it. States are shown translated in
text; kinds, ids and the box's own result text are values (control characters escaped). Times are
shown in the fleet's time zone (``fleet.time_zone``).
"""

from __future__ import annotations

import argparse
import getpass
import json
import re
import sys
import time
import unicodedata
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from gateway.adapters.time_zone import format_at
from gateway.cloud.commands import resend, views
from gateway.cloud.commands.queue import CommandQueue
from gateway.cloud.commands.rollout import Rollouts
from gateway.cloud.fleet.accounts import Accounts, Actor
from gateway.core.command_wire import Kind
from gateway.core.errors import ConfigError
from gateway.core.topics import BOX_ID_PATTERN
from gateway.i18n import N_, _
from gateway.logs import escape

_BOX = re.compile(BOX_ID_PATTERN)
_ID = re.compile(r"^[0-9a-f]{32}$")
NUMBERS = ("log_lines", "item")  # the arguments that are whole numbers


# a command's or a rollout's state as text shows it (--json keeps the value); the console's words
STATES = {"pending": N_("pending"), "delivered": N_("delivered"), "running": N_("running"),
          "succeeded": N_("succeeded"), "failed": N_("failed"), "refused": N_("refused"), "expired": N_("expired"),
          "stopped": N_("stopped"), "waiting": N_("waiting")}
LIST_HEADER = (N_("seq"), N_("kind"), N_("state"), N_("issued"), N_("command"), N_("result"))
LIST_WIDTHS = (5, 10, 9, 25, 32, 0)
ROLLOUT_HEADER = (N_("rollout"), N_("kind"), N_("state"), N_("issued/total"), N_("started"), N_("detail"))
ROLLOUT_WIDTHS = (7, 7, 9, 12, 25, 0)
WAVE_WIDTHS = (7, 10, 24, 0)  # a rollout's boxes under it: blank, wave, box, state
# `show`: a label per field of the command's document, in the order shown
SHOW_FIELDS = (("id", N_("command")), ("box_id", N_("box")), ("seq", N_("seq")), ("kind", N_("kind")),
               ("state", N_("state")), ("issued_by", N_("issued by")), ("reason", N_("reason")),
               ("message", N_("message")), ("sends", N_("sends")), ("rollout_id", N_("rollout")))
SHOW_TIMES = (("issued_at", N_("issued")), ("expires_at", N_("expires")), ("sent_at", N_("sent")),
              ("updated_at", N_("updated")))


def _tell(text: str) -> None:
    """A result for the person at the terminal, already translated."""
    print(text)


def _state(value: Any) -> str:
    return _(STATES[value]) if value in STATES else str(value)


def _width(text: str) -> int:
    """Terminal columns: a Chinese character takes two."""
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def _cell(text: str, width: int, right: bool = False) -> str:
    pad = " " * max(0, width - _width(text))
    return pad + text if right else text + pad


def _row(cells: tuple[str, ...] | list[str], widths: tuple[int, ...]) -> str:
    return "  ".join(_cell(c, w, right=i == 0) for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()


def _actor() -> Actor:
    return Actor(f"cli:{getpass.getuser()}", "cli", "")


@contextmanager
def _opened(args: argparse.Namespace) -> Iterator[tuple[CommandQueue, Accounts, Callable[[float], str], Any]]:
    """The queue, the audit log, the fleet's time formatter and the fleet store."""
    from gateway.adapters import keystore
    from gateway.adapters.time_zone import zone
    from gateway.cloud import backends
    from gateway.cloud.authority import ack_keys
    from gateway.settings_files import cloud_settings

    settings, paths = cloud_settings(args)
    store = backends.open_fleet_store(settings, paths)
    try:
        envelope = keystore.load_or_create_x25519(paths.key_file(settings.cloud.envelope_key_file))
        signer = ack_keys.load_signer(paths.key_file(settings.fleet.command_key_file))
        tz = zone(settings.fleet.time_zone, settings.fleet.utc_offset_minutes)
        queue = CommandQueue(store.commands, signer, envelope, settings.mqtt.topic_prefix, time.time,
                             settings.fleet.command_resend_s)
        queue.default_ttl_s = settings.fleet.command_ttl_s
        yield queue, Accounts(store.auth, settings.fleet.auth), lambda at: format_at(at, tz.utc_offset_s), store
    finally:
        store.close()



def _arguments(args: argparse.Namespace) -> dict[str, Any]:
    """``--arg key=value`` (``log_lines`` and ``item`` are numbers) and ``--document-file`` (a config's TOML)."""
    out: dict[str, Any] = {}
    for pair in args.arg or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(_("--arg {value} must be key=value").format(value=repr(pair[:40])))
        out[key] = int(value) if key in NUMBERS and value.isdigit() else value
    if args.document_file:
        try:
            out["document"] = Path(args.document_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(_("--document-file {path}: cannot read it ({reason})").format(
                path=args.document_file, reason=exc)) from exc
    return out


def _kind(raw: str) -> Kind:
    try:
        return Kind(raw)
    except ValueError:
        raise ConfigError(_("--kind must be one of {kinds}").format(kinds=", ".join(k.value for k in Kind))) from None


def _check_box(box: str) -> None:
    if not _BOX.match(box):
        raise ConfigError(_("--box {value} is not a box id").format(value=repr(box[:70])))


def _check_id(command_id: str) -> None:
    if not _ID.match(command_id):
        raise ConfigError(_("the command id is 32 hexadecimal digits"))


def cmd_issue(args: argparse.Namespace) -> int:
    _check_box(args.box)
    kind, arguments = _kind(args.kind), _arguments(args)
    if args.accession:
        arguments["accession"] = args.accession
    with _opened(args) as (queue, accounts, _when_, store):
        unseen = args.box not in {b.box_id for b in store.load_boxes()}  # queued anyway: a box may enrol later
        try:
            issued = resend.issue(queue, args.box, kind, arguments, _actor().name,
                                  args.ttl_s or queue.default_ttl_s, _archive_studies(args))
        except ValueError as exc:  # the rules the console shares: their reason stays English
            raise ConfigError(_("the command is refused: {reason}").format(reason=exc)) from None
        except resend.UnknownAccession as exc:  # audited with the accession's digest, never the number
            digest = queue.accession_digest(args.box, str(arguments["accession"]))
            accounts.audit(_actor(), "command.issue", args.box, "refused", kind=kind.value, accession=digest,
                           reason=str(exc))
            if exc.found:
                raise ConfigError(_("the command is refused: the accession number names more than {count} studies "
                                    "archived from {box}; resend them by Study Instance UID").format(
                    count=resend.MAX_STUDIES, box=args.box)) from None
            raise ConfigError(_("the command is refused: no study archived from {box} has this accession "
                                "number").format(box=args.box)) from None
        if unseen:
            print(_("note: the fleet has not seen box {box} yet (a typo?); the command waits until it connects "
                    "or expires").format(box=args.box), file=sys.stderr)
        more = {"accession": issued.accession_hmac} if issued.accession_hmac else {}
        for row in issued.rows:
            accounts.audit(_actor(), "command.issue", args.box, "ok", kind=kind.value, command=row.id, seq=row.seq,
                           expires_at=row.expires_at, **more)
    if args.json:
        docs = [views.command_doc(row) for row in issued.rows]
        print(json.dumps(docs if issued.accession_hmac else docs[0], indent=2))
        return 0
    if issued.accession_hmac:
        _tell(_("the accession number names {count} study(ies) archived from {box}: one resend each").format(
            count=len(issued.rows), box=args.box))
    for row in issued.rows:
        _tell(_("command {id} ({kind}, seq {seq}) queued for {box}; the fleet sends it while the box is online")
              .format(id=row.id, kind=kind.value, seq=row.seq, box=args.box))
    return 0


def _archive_studies(args: argparse.Namespace) -> resend.Studies:
    """The archive index's lookup of studies by accession digest, opened only when asked."""
    def studies(box_id: str, digest: str, limit: int) -> list[str]:
        from gateway.cloud import backends
        from gateway.settings_files import cloud_settings

        settings, paths = cloud_settings(args)
        index = backends.open_archive_index(settings, paths)
        if index is None:
            return []  # no archive.db here: nothing archived on this node
        try:
            return index.studies_by_accession(box_id, digest, limit)
        finally:
            index.close()
    return studies


def cmd_list(args: argparse.Namespace) -> int:
    _check_box(args.box)
    with _opened(args) as (queue, _accounts, when, _store):
        doc = views.box_commands(queue, args.box, args.limit)
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    _tell(_("{box}: configuration version {version}").format(box=args.box, version=doc["config_version"]))
    if not doc["commands"]:
        _tell(_("no command for this box"))
        return 0
    print(_row([_(h) for h in LIST_HEADER], LIST_WIDTHS))
    for c in doc["commands"]:
        note = c["message"] or c["reason"] or ", ".join(f"{k}={v}" for k, v in sorted(c["detail"].items()))
        print(_row([str(c["seq"]), c["kind"], _state(c["state"]), when(c["issued_at"]), c["id"], escape(note, 80)],
                   LIST_WIDTHS))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    _check_id(args.id)
    with _opened(args) as (queue, _accounts, when, _store):
        row = queue.store.command(args.id)
        if row is None:
            raise ConfigError(_("no command {id}").format(id=args.id))
        doc = views.command_doc(row, bool(queue.store.blob_ids([row.id])), queue)
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    shown = [(label, _state(doc[key]) if key == "state" else "-" if doc[key] in (None, "") else escape(doc[key], 600))
             for key, label in SHOW_FIELDS]
    shown += [(label, when(doc[key])) for key, label in SHOW_TIMES]
    shown += [(N_("detail"), json.dumps(doc["detail"], sort_keys=True)),
              (N_("bundle"), _("arrived") if doc["bundle"] else _("none"))]
    for label, value in shown:
        print(_cell(_(label), 12) + " " + value)
    return 0


def cmd_bundle_download(args: argparse.Namespace) -> int:
    _check_id(args.id)
    from gateway.adapters import blobs

    with _opened(args) as (queue, accounts, _when_, _store):
        opened = queue.bundle(args.id)
        if opened is None:
            raise ConfigError(_("no bundle for command {id} (not yet, or not a bundle)").format(id=args.id))
        blobs.write_atomic(Path(args.out), opened[1], mode=0o600)
        accounts.audit(_actor(), "command.bundle_download", opened[0], "ok", command=args.id, bytes=len(opened[1]))
    _tell(_("bundle of {box} written to {path} ({size} bytes)").format(box=opened[0], path=args.out,
                                                                      size=len(opened[1])))
    return 0


def cmd_config_diff(args: argparse.Namespace) -> int:
    _check_box(args.box)
    with _opened(args) as (queue, _accounts, _when_, _store):
        doc = views.config_diff(queue, args.box, args.old, args.new)
    if doc is None:
        raise ConfigError(_("{box} has no configuration version {old} or {new}").format(
            box=args.box, old=args.old, new=args.new))
    print(doc["diff"], end="")  # the unified diff of two TOML documents, as they are
    return 0


def cmd_rollout(args: argparse.Namespace) -> int:
    kind, arguments = _kind(args.kind), _arguments(args)
    if bool(args.site) == bool(args.box):
        raise ConfigError(_("give --site or --box (one or more)"))
    with _opened(args) as (queue, accounts, _when_, _store):
        rollouts = Rollouts(queue, lambda: queue.default_ttl_s)
        boxes = args.box or sorted(b.box_id for b in _store.load_boxes() if (b.site or b.box_id) == args.site)
        try:
            started = rollouts.start(kind, arguments, boxes, _actor().name, args.canary, args.wave_size)
        except ValueError as exc:  # the rules the console shares: their reason stays English
            raise ConfigError(_("the rollout is refused: {reason}").format(reason=exc)) from None
        accounts.audit(_actor(), "rollout.start", str(started.id), "ok", kind=kind.value, boxes=len(boxes),
                       canary=started.canary, wave_size=started.wave_size)
    _tell(_("rollout {id} of {kind} to {count} box(es) started (canary {canary}, waves of {wave_size}); the leading "
            "fleet instance issues its waves").format(id=started.id, kind=kind.value, count=len(boxes),
                                                     canary=started.canary, wave_size=started.wave_size))
    return 0


def cmd_rollout_show(args: argparse.Namespace) -> int:
    with _opened(args) as (queue, _accounts, when, _store):
        rollouts = Rollouts(queue, lambda: queue.default_ttl_s)
        found = [queue.store.rollout(args.id)] if args.id else queue.store.rollouts(limit=20)
        docs = [rollouts.progress(r) for r in found if r is not None]
    if args.id and not docs:
        raise ConfigError(_("no rollout {id}").format(id=args.id))
    if args.json:
        print(json.dumps(docs, indent=2))
        return 0
    if not docs:
        _tell(_("no rollout yet"))
        return 0
    print(_row([_(h) for h in ROLLOUT_HEADER], ROLLOUT_WIDTHS))
    for d in docs:
        print(_row([str(d["id"]), d["kind"], _state(d["state"]), f"{d['issued']}/{d['total']}",
                    when(d["created_at"]), escape(d["detail"], 80)], ROLLOUT_WIDTHS))
        for b in d["boxes"] if args.id else []:
            wave = _("canary") if b["wave"] == 0 else _("wave {wave}").format(wave=b["wave"])
            print(_row(["", wave, b["box_id"], _state(b["state"])], WAVE_WIDTHS))
    return 0


def add_commands(cloud: Any, with_config: Callable[[argparse.ArgumentParser], argparse.ArgumentParser]) -> None:
    cmd = cloud.add_parser("command", help=_("remote commands to boxes: issue, list, show, bundles, rollouts")).\
        add_subparsers(dest="command_cmd", required=True, metavar="ACTION")
    issue = with_config(cmd.add_parser("issue", help=_("queue a signed command for a box")))
    issue.add_argument("--box", required=True, help=_("the box id"))
    issue.add_argument("--kind", required=True, help=_("the command: {kinds}").format(
        kinds=", ".join(k.value for k in Kind)))
    for p in (issue,):
        p.add_argument("--arg", action="append", help=_("an argument, key=value (repeat)"))
        p.add_argument("--document-file", default="", help=_("config: the TOML document to send"))
    issue.add_argument("--accession", default="", help=_(
        "resend: the accession number; the cloud queues one resend per study it archived from the box under it"))
    issue.add_argument("--ttl-s", type=float, default=0.0, help=_(
        "expire after this many seconds (60 to 2592000; default fleet.command_ttl_s)"))
    issue.add_argument("--json", action="store_true", help=_("print JSON"))
    issue.set_defaults(func=cmd_issue)
    listing = with_config(cmd.add_parser("list", help=_("a box's commands, newest first")))
    listing.add_argument("--box", required=True, help=_("the box id"))
    listing.add_argument("--limit", type=int, default=50, help=_("at most this many"))
    listing.add_argument("--json", action="store_true", help=_("print JSON"))
    listing.set_defaults(func=cmd_list)
    show = with_config(cmd.add_parser("show", help=_("one command: state, times, result")))
    show.add_argument("id", help=_("the command id"))
    show.add_argument("--json", action="store_true", help=_("print JSON"))
    show.set_defaults(func=cmd_show)
    download = with_config(cmd.add_parser("bundle-download", help=_("write a bundle command's diagnostic bundle")))
    download.add_argument("id", help=_("the command id"))
    download.add_argument("--out", required=True, help=_("the file to write (0600)"))
    download.set_defaults(func=cmd_bundle_download)
    diff = with_config(cmd.add_parser("config-diff", help=_("the difference of two configuration versions of a box")))
    diff.add_argument("--box", required=True, help=_("the box id"))
    diff.add_argument("--from", dest="old", type=int, required=True, help=_("the older version (0: empty)"))
    diff.add_argument("--to", dest="new", type=int, required=True, help=_("the newer version"))
    diff.set_defaults(func=cmd_config_diff)
    rollout = with_config(cmd.add_parser("rollout", help=_("a config or update to a group of boxes, in waves")))
    rollout.add_argument("--kind", required=True, help=_("config or update"))
    rollout.add_argument("--site", default="", help=_("every box of this site"))
    rollout.add_argument("--box", action="append", default=[], help=_("a box (repeat; in this order)"))
    rollout.add_argument("--arg", action="append", help=_("an argument, key=value (repeat)"))
    rollout.add_argument("--document-file", default="", help=_("config: the TOML document to send"))
    rollout.add_argument("--canary", type=int, default=1, help=_("boxes in the first wave (default 1)"))
    rollout.add_argument("--wave-size", type=int, default=5, help=_("boxes per later wave (default 5)"))
    rollout.set_defaults(func=cmd_rollout)
    shown = with_config(cmd.add_parser("rollout-show", help=_("rollouts and their progress per box")))
    shown.add_argument("id", nargs="?", type=int, default=0, help=_("one rollout (default: the last 20)"))
    shown.add_argument("--json", action="store_true", help=_("print JSON"))
    shown.set_defaults(func=cmd_rollout_show)
