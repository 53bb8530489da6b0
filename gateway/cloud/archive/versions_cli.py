"""`mgw cloud archive versions`: which versions of an instance (or of a study's instances) the archive holds.

Registered into the parser by ``cli.build_parser``. Opens the archive index the configuration names
(SQLite or PostgreSQL, ``cloud/backends.py``) and the fleet store, whose registry says each box's
site, so that each version's time is shown in its site's zone (``[fleet.sites.<site>] time_zone``,
else ``fleet.time_zone``, else ``fleet.utc_offset_minutes``). Text output is in the CLI's language
(gateway/i18n.py), as the other cloud commands; ``--json`` is for scripts. Nothing is logged: the UIDs
asked for and shown are patient-linked identifiers.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from gateway.cloud.archive import versions
from gateway.config import CloudSettings, site_zone
from gateway.core.utilisation import Zone
from gateway.i18n import _
from gateway.paths import Paths


def _zones(settings: CloudSettings, sites: dict[str, str]) -> Callable[[str], Zone]:
    return lambda box_id: site_zone(settings.fleet, sites.get(box_id, ""))


def _box_sites(settings: CloudSettings, paths: Paths) -> dict[str, str]:
    from gateway.cloud import backends

    store = backends.open_fleet_store(settings, paths)
    try:
        return {box.box_id: box.site for box in store.load_boxes()}
    finally:
        store.close()


def cmd_versions(args: argparse.Namespace) -> int:
    from gateway.cloud import backends
    from gateway.settings_files import cloud_settings

    settings, paths = cloud_settings(args)
    uid = versions.parse_uid(args.sop_instance_uid or args.study_instance_uid,
                             "--sop-instance-uid" if args.sop_instance_uid else "--study-instance-uid")
    index = backends.open_archive_index(settings, paths)
    found: list[versions.Version] = []
    if index is not None:  # None: no archive.db on this node, so nothing archived
        try:
            found = versions.of_instance(index, uid) if args.sop_instance_uid else versions.of_study(index, uid)
        finally:
            index.close()
    zone_of = _zones(settings, _box_sites(settings, paths) if found else {})
    if args.json:
        print(json.dumps({"versions": [versions.as_json(v, zone_of(v.box_id)) for v in found]}, indent=2))
    elif not found:
        print(_("no archived instance"))
    else:
        print(versions.text_table(found, zone_of))
    return 0


def add_command(cloud: Any, with_config: Callable[[argparse.ArgumentParser], argparse.ArgumentParser]) -> None:
    archive = cloud.add_parser("archive", help=_("the cloud archive: versions of instances"))
    sub = archive.add_subparsers(dest="archive_cmd", required=True, metavar="ACTION")
    p = with_config(sub.add_parser("versions", help=_("list the archived versions of an instance or a study, "
                                                    "and which one is current")))
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--sop-instance-uid", metavar="UID", help=_("one instance"))
    which.add_argument("--study-instance-uid", metavar="UID", help=_("every instance of a study"))
    p.add_argument("--json", action="store_true", help=_("print JSON"))
    p.set_defaults(func=cmd_versions)
