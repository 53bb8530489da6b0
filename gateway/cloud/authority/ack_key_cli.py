"""`mgw cloud ack-key|command-key create|show|stage|promote`: the cloud's signing keys (docs/cli.md).

The ack key signs acknowledgements (ingest and fleet); the command key signs remote commands
(the fleet service only). Both rotate the same way: stage a next key, which boxes learn at
enrolment and renewal, then promote it once every box has renewed.

Registered into the parser by ``cli.build_parser``. The private keys never leave the
cloud node and nothing here prints them; see ``gateway.cloud.authority.ack_keys``.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable
from typing import Any

from gateway import logs
from gateway.cloud.authority import ack_keys
from gateway.i18n import _
from gateway.logs import MSG

log = logging.getLogger("gateway.cloud.authority.ack_keys")


def _untold_boxes(args: argparse.Namespace, since: float) -> list[str] | None:
    """Boxes whose newest certificate predates ``since`` (so they lack the next key), or None
    when this node holds no certificate registry."""
    from gateway.cloud.authority.ca import FleetAuthority
    from gateway.settings_files import cloud_settings

    settings, paths = cloud_settings(args)
    pki = paths.key_file(settings.authority.pki_dir)
    if not (pki / "registry.db").exists():
        return None
    authority = FleetAuthority(pki)
    try:
        newest: dict[str, float] = {}
        for r in authority.records():
            if r.kind == "box" and r.revoked_at is None:
                newest[r.subject] = max(newest.get(r.subject, 0.0), r.issued_at)
    finally:
        authority.close()
    return sorted(box for box, issued in newest.items() if issued < since)


def cmd_cloud_ack_key(args: argparse.Namespace) -> int:
    from gateway.settings_files import cloud_settings

    settings, paths = cloud_settings(args)
    logs.setup(settings.cloud.log_level, False)
    command_key = args.key_role == "command"
    path = paths.key_file(settings.fleet.command_key_file if command_key else settings.cloud.ack_key_file)
    action = args.ack_key_cmd
    if action == "create":
        keys = ack_keys.load(path, create=True)
    elif action == "stage":
        keys = ack_keys.stage(path)
    elif action == "promote":
        keys = ack_keys.promote(path)
    else:
        keys = ack_keys.load(path, create=False)
    if action in ("stage", "promote"):
        log.warning("%s signing key %s", args.key_role, "staged" if action == "stage" else "promoted", extra={
            "MESSAGE_ID": MSG.ACK_KEY_ROTATED.value, "ACTION": action, "KEY": args.key_role,
            "KEY_ID": keys.current.key_id.hex(),
            "NEXT_KEY_ID": keys.next.key_id.hex() if keys.next else None})
    doc: dict[str, Any] = {"keys": ack_keys.describe(keys)}
    if keys.next_since is not None:
        doc["boxes_without_next_key"] = _untold_boxes(args, keys.next_since)
    _print(doc, args.json, action, command_key)
    return 0


def _print(doc: dict[str, Any], as_json: bool, action: str, command_key: bool) -> None:
    if as_json:
        print(json.dumps(doc, indent=2))
        return
    for row in doc["keys"]:
        print(f"{row['role']:8s} {row['key_id']}  {row['public']}"  # untranslated: values
              + (_("  staged {at}").format(at=row["staged_at"]) if "staged_at" in row else ""))
    untold = doc.get("boxes_without_next_key")
    if untold:
        shown = " ".join(untold[:20]) + (" ..." if len(untold) > 20 else "")
        print(_("{count} box(es) not renewed since the next key was staged: {boxes}").format(count=len(untold),
                                                                                             boxes=shown))
    elif untold is not None:
        print(_("every box renewed since the next key was staged: it may be promoted"))
    if action == "promote" and command_key:
        print(_("now restart the fleet service and the enrolment endpoint"))
    elif action == "promote":
        print(_("now restart every ingest worker, the fleet service and the enrolment endpoint"))


def add_command(cloud: Any, with_config: Callable[[argparse.ArgumentParser], argparse.ArgumentParser]) -> None:
    ack = cloud.add_parser("ack-key", help=_("the key that signs acks: create, show, stage and promote the next"))
    _actions(ack, with_config, "ack", (
        ("create", _("create the ack signing key if absent; print the keyring")),
        ("show", _("print the keyring: current and staged next key, and boxes not yet told")),
        ("stage", _("create the next key; boxes learn it at enrolment and renewal")),
        ("promote", _("make the next key the current one; the old key is erased"))))
    command = cloud.add_parser("command-key", help=_("the key that signs remote commands: create, show, stage and "
                                                     "promote the next"))
    _actions(command, with_config, "command", (
        ("create", _("create the command signing key if absent; print the keyring")),
        ("show", _("print the keyring: current and staged next key, and boxes not yet told")),
        ("stage", _("create the next key; boxes learn it at enrolment and renewal")),
        ("promote", _("make the next key the current one; the old key is erased"))))


def _actions(parser: argparse.ArgumentParser, with_config: Callable[[argparse.ArgumentParser], argparse.ArgumentParser],
             role: str, actions: tuple[tuple[str, str], ...]) -> None:
    sub = parser.add_subparsers(dest="ack_key_cmd", required=True, metavar="ACTION")
    for name, text in actions:
        p = with_config(sub.add_parser(name, help=text))
        p.add_argument("--json", action="store_true", help=_("print JSON"))
        p.set_defaults(func=cmd_cloud_ack_key, key_role=role)
