"""`mgw cloud command issue|list|show|bundle-download|config-diff|rollout|rollout-show` (docs/cli.md).

Registered into the parser by ``cli.build_parser``. Each command opens the fleet store the
configuration names (SQLite or PostgreSQL) and the fleet's keys (the envelope key seals arguments at
rest and opens bundles; the command key is the fleet service's), queues or reads commands; the leading
fleet instance publishes what is queued while the box is online. Whoever can read the fleet's
configuration and keys on the fleet host acts as an admin: there is no role check here, but every issue,
rollout and bundle download is in the audit log (actor ``cli:<user>``). Arguments are checked before
anything is written; a refusal says why, in English and Simplified Chinese. Times are shown in the
fleet's time zone (``fleet.time_zone``).
"""

from __future__ import annotations

import argparse
import getpass
import json
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from gateway.cloud.commands import views
from gateway.cloud.commands.queue import CommandQueue
from gateway.cloud.commands.rollout import Rollouts
from gateway.cloud.fleet.accounts import Accounts, Actor
from gateway.core.command_wire import Kind
from gateway.core.errors import ConfigError
from gateway.core.topics import BOX_ID_PATTERN

_BOX = re.compile(BOX_ID_PATTERN)
_ID = re.compile(r"^[0-9a-f]{32}$")
NUMBERS = ("log_lines", "item")  # the arguments that are whole numbers


def _tell(english: str, chinese: str) -> None:
    print(english)
    print(chinese)


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
        yield queue, Accounts(store.auth, settings.fleet.auth), lambda at: _when(at, tz.utc_offset_s), store
    finally:
        store.close()


def _when(at: Any, offset_s: Callable[[float], int]) -> str:
    if at is None:
        return "-"
    offset = offset_s(float(at))
    sign = "+" if offset >= 0 else "-"
    return (time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(float(at) + offset))
            + f" {sign}{abs(offset) // 3600:02d}:{abs(offset) % 3600 // 60:02d}")


def _arguments(args: argparse.Namespace) -> dict[str, Any]:
    """``--arg key=value`` (``log_lines`` and ``item`` are numbers) and ``--document-file`` (a config's TOML)."""
    out: dict[str, Any] = {}
    for pair in args.arg or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--arg {pair[:40]!r} must be key=value / 参数格式应为 key=value")
        out[key] = int(value) if key in NUMBERS and value.isdigit() else value
    if args.document_file:
        try:
            out["document"] = Path(args.document_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"--document-file {args.document_file}: {exc} / 无法读取配置文件") from exc
    return out


def _kind(raw: str) -> Kind:
    try:
        return Kind(raw)
    except ValueError:
        raise ConfigError(f"--kind must be one of {', '.join(k.value for k in Kind)} / 命令类型无效") from None


def cmd_issue(args: argparse.Namespace) -> int:
    if not _BOX.match(args.box):
        raise ConfigError(f"--box {args.box[:70]!r} is not a box id / 不是有效的设备编号")
    kind, arguments = _kind(args.kind), _arguments(args)
    with _opened(args) as (queue, accounts, _, _store):
        try:
            row = queue.issue(args.box, kind, arguments, _actor().name, args.ttl_s or queue.default_ttl_s)
        except ValueError as exc:
            raise ConfigError(f"{exc} / 命令参数无效") from None
        accounts.audit(_actor(), "command.issue", args.box, "ok", kind=kind.value, command=row.id, seq=row.seq,
                       expires_at=row.expires_at)
    if args.json:
        print(json.dumps(views.command_doc(row), indent=2))
    else:
        _tell(f"command {row.id} ({kind.value}, seq {row.seq}) queued for {args.box}; the fleet sends it while the "
              "box is online", f"命令 {row.id}（{kind.value}，序号 {row.seq}）已排队发往 {args.box}；设备在线时发送")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    if not _BOX.match(args.box):
        raise ConfigError(f"--box {args.box[:70]!r} is not a box id / 不是有效的设备编号")
    with _opened(args) as (queue, _, when, _store):
        doc = views.box_commands(queue, args.box, args.limit)
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    _tell(f"{args.box}: configuration version {doc['config_version']}", f"{args.box}：配置版本 {doc['config_version']}")
    for c in doc["commands"]:
        note = c["message"] or c["reason"] or ", ".join(f"{k}={v}" for k, v in sorted(c["detail"].items()))
        print(f"  {c['seq']:>5} {c['kind']:10s} {c['state']:9s} {when(c['issued_at'])}  {c['id']}  {note[:80]}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    if not _ID.match(args.id):
        raise ConfigError("the command id is 32 hexadecimal digits / 命令编号应为 32 位十六进制")
    with _opened(args) as (queue, _, when, _store):
        row = queue.store.command(args.id)
        if row is None:
            raise ConfigError(f"no command {args.id} / 没有该命令")
        doc = views.command_doc(row, bool(queue.store.blob_ids([row.id])), queue)
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    for key in ("id", "box_id", "seq", "kind", "state", "issued_by", "reason", "message", "sends", "rollout_id"):
        print(f"{key:12s} {doc[key]}")
    for key in ("issued_at", "expires_at", "sent_at", "updated_at"):
        print(f"{key:12s} {when(doc[key])}")
    print(f"{'detail':12s} {json.dumps(doc['detail'], sort_keys=True)}")
    print(f"{'bundle':12s} {'yes / 有' if doc['bundle'] else 'no / 无'}")
    return 0


def cmd_bundle_download(args: argparse.Namespace) -> int:
    if not _ID.match(args.id):
        raise ConfigError("the command id is 32 hexadecimal digits / 命令编号应为 32 位十六进制")
    from gateway.adapters import blobs

    with _opened(args) as (queue, accounts, _, _store):
        opened = queue.bundle(args.id)
        if opened is None:
            raise ConfigError(f"no bundle for command {args.id} (not yet, or not a bundle) / 尚无该命令的诊断包")
        blobs.write_atomic(Path(args.out), opened[1], mode=0o600)
        accounts.audit(_actor(), "command.bundle_download", opened[0], "ok", command=args.id, bytes=len(opened[1]))
    _tell(f"bundle of {opened[0]} written to {args.out} ({len(opened[1])} bytes)",
          f"{opened[0]} 的诊断包已写入 {args.out}（{len(opened[1])} 字节）")
    return 0


def cmd_config_diff(args: argparse.Namespace) -> int:
    if not _BOX.match(args.box):
        raise ConfigError(f"--box {args.box[:70]!r} is not a box id / 不是有效的设备编号")
    with _opened(args) as (queue, _, _when_, _store):
        doc = views.config_diff(queue, args.box, args.old, args.new)
    if doc is None:
        raise ConfigError(f"{args.box} has no configuration version {args.old} or {args.new} / 没有该配置版本")
    print(doc["diff"], end="")
    return 0


def cmd_rollout(args: argparse.Namespace) -> int:
    kind, arguments = _kind(args.kind), _arguments(args)
    if bool(args.site) == bool(args.box):
        raise ConfigError("give --site or --box (one or more) / 请指定 --site 或 --box")
    with _opened(args) as (queue, accounts, _, _store):
        rollouts = Rollouts(queue, lambda: queue.default_ttl_s)
        boxes = args.box or sorted(b.box_id for b in _store.load_boxes() if (b.site or b.box_id) == args.site)
        try:
            started = rollouts.start(kind, arguments, boxes, _actor().name, args.canary, args.wave_size)
        except ValueError as exc:
            raise ConfigError(f"{exc} / 发布参数无效") from None
        accounts.audit(_actor(), "rollout.start", str(started.id), "ok", kind=kind.value, boxes=len(boxes),
                       canary=started.canary, wave_size=started.wave_size)
    _tell(f"rollout {started.id} of {kind.value} to {len(boxes)} boxes started (canary {started.canary}, waves of "
          f"{started.wave_size}); the leading fleet instance issues its waves",
          f"已开始发布 {started.id}（{kind.value}，{len(boxes)} 台设备，先行 {started.canary} 台，"
          f"每批 {started.wave_size} 台）")
    return 0


def cmd_rollout_show(args: argparse.Namespace) -> int:
    with _opened(args) as (queue, _, when, _store):
        rollouts = Rollouts(queue, lambda: queue.default_ttl_s)
        found = [queue.store.rollout(args.id)] if args.id else queue.store.rollouts(limit=20)
        docs = [rollouts.progress(r) for r in found if r is not None]
    if args.id and not docs:
        raise ConfigError(f"no rollout {args.id} / 没有该发布")
    if args.json:
        print(json.dumps(docs, indent=2))
        return 0
    for d in docs:
        print(f"{d['id']:>4} {d['kind']:7s} {d['state']:9s} {d['issued']}/{d['total']} issued/已下发  "
              f"{when(d['created_at'])}  {d['detail'][:80]}")
        for b in d["boxes"] if args.id else []:
            print(f"       wave/批次 {b['wave']:>3} {b['box_id']:24s} {b['state']}")
    return 0


def add_commands(cloud: Any, with_config: Callable[[argparse.ArgumentParser], argparse.ArgumentParser]) -> None:
    cmd = cloud.add_parser("command", help="remote commands to boxes: issue, list, show, bundles, rollouts").\
        add_subparsers(dest="command_cmd", required=True, metavar="ACTION")
    issue = with_config(cmd.add_parser("issue", help="queue a signed command for a box"))
    issue.add_argument("--box", required=True, help="the box id")
    issue.add_argument("--kind", required=True, help=", ".join(k.value for k in Kind))
    for p in (issue,):
        p.add_argument("--arg", action="append", help="an argument, key=value (repeat)")
        p.add_argument("--document-file", default="", help="config: the TOML document to send")
    issue.add_argument("--ttl-s", type=float, default=0.0, help="expire after this many seconds "
                       "(default fleet.command_ttl_s)")
    issue.add_argument("--json", action="store_true", help="print JSON")
    issue.set_defaults(func=cmd_issue)
    listing = with_config(cmd.add_parser("list", help="a box's commands, newest first"))
    listing.add_argument("--box", required=True, help="the box id")
    listing.add_argument("--limit", type=int, default=50, help="at most this many")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(func=cmd_list)
    show = with_config(cmd.add_parser("show", help="one command: state, times, result"))
    show.add_argument("id", help="the command id")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(func=cmd_show)
    download = with_config(cmd.add_parser("bundle-download", help="write a bundle command's diagnostic bundle"))
    download.add_argument("id", help="the command id")
    download.add_argument("--out", required=True, help="the file to write (0600)")
    download.set_defaults(func=cmd_bundle_download)
    diff = with_config(cmd.add_parser("config-diff", help="the difference of two configuration versions of a box"))
    diff.add_argument("--box", required=True, help="the box id")
    diff.add_argument("--from", dest="old", type=int, required=True, help="the older version (0: empty)")
    diff.add_argument("--to", dest="new", type=int, required=True, help="the newer version")
    diff.set_defaults(func=cmd_config_diff)
    rollout = with_config(cmd.add_parser("rollout", help="a config or update to a group of boxes, in waves"))
    rollout.add_argument("--kind", required=True, help="config or update")
    rollout.add_argument("--site", default="", help="every box of this site")
    rollout.add_argument("--box", action="append", default=[], help="a box (repeat; in this order)")
    rollout.add_argument("--arg", action="append", help="an argument, key=value (repeat)")
    rollout.add_argument("--document-file", default="", help="config: the TOML document to send")
    rollout.add_argument("--canary", type=int, default=1, help="boxes in the first wave (default 1)")
    rollout.add_argument("--wave-size", type=int, default=5, help="boxes per later wave (default 5)")
    rollout.set_defaults(func=cmd_rollout)
    shown = with_config(cmd.add_parser("rollout-show", help="rollouts and their progress per box"))
    shown.add_argument("id", nargs="?", type=int, default=0, help="one rollout (default: the last 20)")
    shown.add_argument("--json", action="store_true", help="print JSON")
    shown.set_defaults(func=cmd_rollout_show)
