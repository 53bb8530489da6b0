"""`mgw cloud worklist route add|remove|list` and `mgw cloud worklist status` (docs/cli.md).

Registered into the parser by ``cli.build_parser``. Each command opens the fleet store the
configuration names (SQLite or PostgreSQL) and reads or changes the worklist feed's routes; the
leading fleet instance publishes the changed snapshots within ``fleet.worklist.publish_s``. Every
argument is checked before the store is opened, and a refusal says why, in the CLI's language
(gateway/i18n.py). The status shows counts, sequence numbers and times, never patient data.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from gateway.adapters.time_zone import format_at
from gateway.cloud.worklist.store import WorklistStore
from gateway.cloud.worklist.summary import status_doc
from gateway.core.errors import ConfigError
from gateway.core.topics import BOX_ID_PATTERN
from gateway.i18n import N_, _

_BOX = re.compile(BOX_ID_PATTERN)
_MODALITY = re.compile(r"^[A-Z0-9_]{1,16}$")
_AE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")
_STATION_NAME = re.compile(r"^[^\x00-\x1f\x7f\\]{0,16}$")


def _tell(text: str) -> None:
    """A result for the person at the terminal, already translated."""
    print(text)


def _check(args: argparse.Namespace) -> None:
    if not _BOX.match(args.box):
        raise ConfigError(_("--box {value} is not a box id").format(value=repr(args.box[:70])))
    if not _MODALITY.match(args.modality):
        raise ConfigError(_("--modality {value} is not a DICOM modality code (CT, MR, DX...)").format(
            value=repr(args.modality[:20])))
    if not _AE.match(args.station_ae) or args.station_ae != args.station_ae.strip():
        raise ConfigError(_("--station-ae {value} is not an AE title (1-16 characters, no backslash, no leading or "
                            "trailing space)").format(value=repr(args.station_ae[:20])))
    if not _STATION_NAME.match(getattr(args, "station_name", "") or ""):
        raise ConfigError(_("--station-name is at most 16 characters, no control character nor backslash"))


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
                # untranslated: values
                print(f"{r['box_id']:24s} {r['modality']:6s} {r['station_ae_title']:16s} {r['station_name']}")
            return 0
        if action == "add":
            if not store.add_route(args.box, args.modality, args.station_ae, args.station_name, time.time()):
                raise ConfigError(_("box {box} already serves {modality} at {ae}").format(
                    box=args.box, modality=args.modality, ae=args.station_ae))
            _tell(_("route added: {box} serves {modality} at {ae}").format(
                box=args.box, modality=args.modality, ae=args.station_ae))
            if args.box not in known_boxes():
                _tell(_("note: the fleet has not seen box {box} yet (a typo?); it is fed once it connects").format(
                    box=args.box))
        else:
            if not store.remove_route(args.box, args.modality, args.station_ae):
                raise ConfigError(_("box {box} has no route {modality} at {ae}").format(
                    box=args.box, modality=args.modality, ae=args.station_ae))
            _tell(_("route removed: {box} no longer serves {modality} at {ae}").format(
                box=args.box, modality=args.modality, ae=args.station_ae))
        if not settings.fleet.worklist.enabled:
            _tell(_("note: [fleet.worklist] enabled is false; no worklist is published"))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from gateway.adapters.time_zone import zone

    with _store(args) as (store, settings, _known):
        doc = status_doc(store)
        tz = zone(settings.fleet.time_zone, settings.fleet.utc_offset_minutes)
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    _tell(_("Boxes"))
    for b in doc["boxes"]:
        key = "" if b["has_key"] else _("  no worklist key in its birth")
        print(_("  {box:24s} routes: {routes}").format(box=b["box_id"], routes=", ".join(b["routes"]) or "-") + key)
        cleared = _("  cleared") if b["cleared"] else ""
        print(_("  {blank:24s} entries: {entries} (left out: {left_out})  seq: {seq}  published: {published}").format(
            blank="", entries=b["entries"], left_out=b["left_out"], seq=b["seq"],
            published=format_at(b["published_at"], tz.utc_offset_s)) + cleared)
    _tell(_("Sources"))
    for s in doc["sources"]:
        orders = ", ".join(f"{k} {v}" for k, v in sorted(s["orders"].items())) or "0"
        print(_("  {source:6s} last poll: {last_poll}  last good: {last_ok}  orders: {orders}  errors: {errors}")
              .format(source=s["source"], last_poll=format_at(s["last_poll"], tz.utc_offset_s),
                      last_ok=format_at(s["last_ok"], tz.utc_offset_s), orders=orders, errors=s["errors"])
              + (f"  ({s['last_error'][:120]})" if s["last_error"] else ""))
    o = doc["outbox"]
    _tell(_("Statuses to the RIS: {pending} waiting (most attempts {attempts}), {sent} sent").format(
        pending=o["pending"], attempts=o["max_attempts"], sent=o["sent"]))
    return 0


def add_commands(cloud: Any, with_config: Callable[[argparse.ArgumentParser], argparse.ArgumentParser]) -> None:
    wl = cloud.add_parser("worklist", help=_("the worklist feed: routes and status")).add_subparsers(
        dest="worklist_cmd", required=True, metavar="ACTION")
    route = wl.add_parser("route", help=_("which box serves which scheduled station")).add_subparsers(
        dest="route_cmd", required=True, metavar="ACTION")
    for name, text in (("add", N_("route a station's steps to a box")), ("remove", N_("stop routing them"))):
        p = with_config(route.add_parser(name, help=_(text)))
        p.add_argument("--box", required=True, help=_("the box id"))
        p.add_argument("--modality", required=True, help=_("the modality code the RIS schedules (CT, MR, ...)"))
        p.add_argument("--station-ae", required=True, help=_("the Scheduled Station AE Title"))
        if name == "add":
            p.add_argument("--station-name", default="", help=_("the Scheduled Station Name (optional)"))
        p.set_defaults(func=cmd_route)
    listing = with_config(route.add_parser("list", help=_("every route (or one box's)")))
    listing.add_argument("--box", default="", help=_("only this box's"))
    listing.add_argument("--json", action="store_true", help=_("print JSON"))
    listing.set_defaults(func=cmd_route)
    status = with_config(wl.add_parser("status", help=_("per box and per source: the feed at a glance (no PHI)")))
    status.add_argument("--json", action="store_true", help=_("print JSON"))
    status.set_defaults(func=cmd_status)
