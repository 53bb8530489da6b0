"""`mgw cloud worklist route add|remove|list` and `mgw cloud worklist status` (docs/cli.md).

Registered into the parser by ``cli.build_parser``. Each command opens the fleet store the
configuration names (SQLite or PostgreSQL) and reads or changes the worklist feed's routes; the
leading fleet instance publishes the changed snapshots within ``fleet.worklist.publish_s``. Every
argument is checked before the store is opened, and a refusal says why, in English and
Simplified Chinese. The status shows counts, sequence numbers and times, never patient data.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from gateway.cloud.worklist.store import WorklistStore
from gateway.cloud.worklist.summary import status_doc
from gateway.core.errors import ConfigError
from gateway.core.topics import BOX_ID_PATTERN

_BOX = re.compile(BOX_ID_PATTERN)
_MODALITY = re.compile(r"^[A-Z0-9_]{1,16}$")
_AE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")
_STATION_NAME = re.compile(r"^[^\x00-\x1f\x7f\\]{0,16}$")


def _tell(english: str, chinese: str) -> None:
    print(english)
    print(chinese)


def _check(args: argparse.Namespace) -> None:
    if not _BOX.match(args.box):
        raise ConfigError(f"--box {args.box[:70]!r} is not a box id / 不是有效的设备编号")
    if not _MODALITY.match(args.modality):
        raise ConfigError(f"--modality {args.modality[:20]!r} is not a DICOM modality code (CT, MR, DX...) / "
                          "不是 DICOM 设备类型代码")
    if not _AE.match(args.station_ae) or args.station_ae != args.station_ae.strip():
        raise ConfigError(f"--station-ae {args.station_ae[:20]!r} is not an AE title (1-16 characters, no "
                          "backslash, no leading or trailing space) / 不是有效的 AE 名称")
    if not _STATION_NAME.match(getattr(args, "station_name", "") or ""):
        raise ConfigError("--station-name is at most 16 characters, no control character nor backslash / "
                          "站点名称最多 16 个字符")


@contextmanager
def _store(args: argparse.Namespace) -> Iterator[tuple[WorklistStore, Any, Callable[[], set[str]]]]:
    from gateway.cloud import backends
    from gateway.settings_files import cloud_settings

    settings, paths = cloud_settings(args)
    store = backends.open_fleet_store(settings, paths)
    try:
        yield store.worklist, settings, lambda: {b.box_id for b in store.load_boxes()}
    finally:
        store.close()


def _when(at: Any, offset_s: Callable[[float], int]) -> str:
    """A time in the fleet's time zone (``fleet.time_zone``), with its offset."""
    if at is None:
        return "-"
    offset = offset_s(float(at))
    sign = "+" if offset >= 0 else "-"
    return (time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(float(at) + offset))
            + f" {sign}{abs(offset) // 3600:02d}:{abs(offset) % 3600 // 60:02d}")


def cmd_route(args: argparse.Namespace) -> int:
    action = args.route_cmd
    if action != "list":
        _check(args)
    with _store(args) as (store, settings, known_boxes):
        if action == "list":
            rows = [{"box_id": r.box_id, "modality": r.modality, "station_ae_title": r.station_ae_title,
                     "station_name": r.station_name, "created_at": r.created_at}
                    for r in store.routes(args.box or None)]
            if args.json:
                print(json.dumps(rows, indent=2))
            for r in [] if args.json else rows:
                print(f"{r['box_id']:24s} {r['modality']:6s} {r['station_ae_title']:16s} {r['station_name']}")
            return 0
        if action == "add":
            if not store.add_route(args.box, args.modality, args.station_ae, args.station_name, time.time()):
                raise ConfigError(f"box {args.box} already serves {args.modality} at {args.station_ae} / "
                                  "该路由已存在")
            _tell(f"route added: {args.box} serves {args.modality} at {args.station_ae}",
                  f"已添加路由：{args.box} 服务 {args.station_ae} 的 {args.modality}")
            if args.box not in known_boxes():
                _tell(f"note: the fleet has not seen box {args.box} yet (a typo?); it is fed once it connects",
                      f"注意：设备 {args.box} 尚未连接过（是否拼写错误？）；连接后即开始下发")
        else:
            if not store.remove_route(args.box, args.modality, args.station_ae):
                raise ConfigError(f"box {args.box} has no route {args.modality} at {args.station_ae} / 没有该路由")
            _tell(f"route removed: {args.box} no longer serves {args.modality} at {args.station_ae}",
                  f"已删除路由：{args.box} 不再服务 {args.station_ae} 的 {args.modality}")
        if not settings.fleet.worklist.enabled:
            _tell("note: [fleet.worklist] enabled is false; no worklist is published",
                  "注意：[fleet.worklist] 未启用，不会发布工作列表")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from gateway.adapters.time_zone import zone

    with _store(args) as (store, settings, _):
        doc = status_doc(store)
        tz = zone(settings.fleet.time_zone, settings.fleet.utc_offset_minutes)
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    _tell("Boxes", "设备")
    for b in doc["boxes"]:
        key = "" if b["has_key"] else "  no worklist key in its birth / 出生消息中没有工作列表密钥"
        print(f"  {b['box_id']:24s} routes/路由: {', '.join(b['routes']) or '-'}{key}")
        cleared = "  cleared/已清除" if b["cleared"] else ""
        print(f"  {'':24s} entries/条目: {b['entries']} (left out/未发送: {b['left_out']})  seq: {b['seq']}  "
              f"published/发布于: {_when(b['published_at'], tz.utc_offset_s)}{cleared}")
    _tell("Sources", "来源")
    for s in doc["sources"]:
        orders = ", ".join(f"{k} {v}" for k, v in sorted(s["orders"].items())) or "0"
        print(f"  {s['source']:6s} last poll/上次读取: {_when(s['last_poll'], tz.utc_offset_s)}  last good/上次成功: "
              f"{_when(s['last_ok'], tz.utc_offset_s)}  orders/医嘱: {orders}  errors/错误: {s['errors']}"
              + (f"  ({s['last_error'][:120]})" if s["last_error"] else ""))
    o = doc["outbox"]
    _tell(f"Statuses to the RIS: {o['pending']} waiting (most attempts {o['max_attempts']}), {o['sent']} sent",
          f"待发往 RIS 的状态：{o['pending']} 条等待（最多尝试 {o['max_attempts']} 次），已发送 {o['sent']} 条")
    return 0


def add_commands(cloud: Any, with_config: Callable[[argparse.ArgumentParser], argparse.ArgumentParser]) -> None:
    wl = cloud.add_parser("worklist", help="the worklist feed: routes and status").add_subparsers(
        dest="worklist_cmd", required=True, metavar="ACTION")
    route = wl.add_parser("route", help="which box serves which scheduled station").add_subparsers(
        dest="route_cmd", required=True, metavar="ACTION")
    for name, text in (("add", "route a station's steps to a box"), ("remove", "stop routing them")):
        p = with_config(route.add_parser(name, help=text))
        p.add_argument("--box", required=True, help="the box id")
        p.add_argument("--modality", required=True, help="the modality code the RIS schedules (CT, MR, ...)")
        p.add_argument("--station-ae", required=True, help="the Scheduled Station AE Title")
        if name == "add":
            p.add_argument("--station-name", default="", help="the Scheduled Station Name (optional)")
        p.set_defaults(func=cmd_route)
    listing = with_config(route.add_parser("list", help="every route (or one box's)"))
    listing.add_argument("--box", default="", help="only this box's")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(func=cmd_route)
    status = with_config(wl.add_parser("status", help="per box and per source: the feed at a glance (no PHI)"))
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(func=cmd_status)
