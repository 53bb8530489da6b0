"""`mgw cloud user|api-token|audit ...`: the console's accounts, API tokens and audit log (docs/cli.md).

(``mgw cloud token`` is a box's enrolment token, hence ``api-token``.)

Registered into the parser by ``cli.build_parser``. Each command opens the fleet store the
configuration names (SQLite or PostgreSQL, ``cloud/backends.py``), acts through
``accounts.Accounts`` and is audited with actor ``cli:<unix user>``. A password is read twice
from the terminal without echo, or once from stdin with ``--password-stdin``; it is never an
argument (arguments show in ``ps``). A token's secret is printed once, at its creation.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from gateway.cloud.fleet.accounts import Accounts, Actor, export_rows, parse_role, parse_sites, to_csv
from gateway.core.errors import AccountError
from gateway.i18n import N_, _


@contextmanager
def _accounts(args: argparse.Namespace) -> Iterator[Accounts]:
    from gateway.cloud import backends
    from gateway.settings_files import cloud_settings

    settings, paths = cloud_settings(args)
    store = backends.open_fleet_store(settings, paths)
    try:
        yield Accounts(store.auth, settings.fleet.auth)
    finally:
        store.close()


def _actor() -> Actor:
    return Actor(f"cli:{getpass.getuser()}", "cli", "")


def _password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass(_("Password: "))
    if getpass.getpass(_("Again: ")) != first:
        raise AccountError(_("the passwords differ"))
    return first


# what `mgw cloud user ACTION NAME` did, as its line says
DONE = {"add": N_("add"), "passwd": N_("passwd"), "disable": N_("disable"), "enable": N_("enable"),
        "unlock": N_("unlock")}


def _sites(text: str) -> frozenset[str] | None:
    return parse_sites(text.split(",")) if text else None


def _when(at: Any) -> str:
    return "-" if at is None else time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(float(at)))


def cmd_user(args: argparse.Namespace) -> int:
    with _accounts(args) as accounts:
        action = args.user_cmd
        if action == "list":
            rows = accounts.list_accounts()
            if args.json:
                print(json.dumps(rows, indent=2))
            for r in [] if args.json else rows:
                state = _("disabled") if r["disabled"] else _("locked") if r["locked"] else _("active")
                print(_("{name:24s} {role:9s} {state:9s} sites: {sites}").format(
                    name=r["name"], role=r["role"], state=state, sites=",".join(r["sites"]) or "*"))
            return 0
        if action == "add":
            accounts.create(args.name, _password(args), parse_role(args.role), _sites(args.sites), _actor())
        elif action == "passwd":
            accounts.set_password(args.name, _password(args), _actor())
        else:
            {"disable": accounts.disable, "enable": accounts.enable, "unlock": accounts.unlock}[action](
                args.name, _actor())
    print(_("{action}: {name}").format(action=_(DONE[action]), name=args.name))
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    with _accounts(args) as accounts:
        if args.token_action == "create":  # noqa: S105 - a subcommand's name
            doc, secret = accounts.create_token(args.user, args.name, parse_role(args.role), _sites(args.sites),
                                                args.days, _actor())
            print(json.dumps({**doc, "token": secret}, indent=2) if args.json else
                  _("token {id} of {owner} ({role}), expires {expires}\n{secret}\n(shown once: store it now)").format(
                      id=doc["id"], owner=doc["owner"], role=doc["role"], expires=_when(doc["expires_at"]),
                      secret=secret))
        elif args.token_action == "revoke":  # noqa: S105 - a subcommand's name
            if not accounts.revoke_token(args.id, _actor()):
                raise AccountError(_("no such token, or already revoked: {id}").format(id=args.id))
            print(_("revoked: {id}").format(id=args.id))
        else:
            rows = accounts.tokens()
            if args.json:
                print(json.dumps(rows, indent=2))
            for r in [] if args.json else rows:
                state = _("revoked") if r["revoked_at"] else _("active")
                print(_("{id}  {owner:20s} {role:9s} {state:8s} expires {expires}  {name}").format(
                    id=r["id"], owner=r["owner"], role=r["role"], state=state, expires=_when(r["expires_at"]),
                    name=r["name"]))
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    with _accounts(args) as accounts:
        accounts.audit(_actor(), "audit.export", args.format, since=args.since)
        rows = [r.as_dict() for r in export_rows(accounts, args.since)]
    sys.stdout.write(to_csv(rows) if args.format == "csv" else
                     "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return 0


def add_commands(cloud: Any, with_config: Callable[[argparse.ArgumentParser], argparse.ArgumentParser]) -> None:
    user = cloud.add_parser("user", help=_("the console's local accounts")).add_subparsers(
        dest="user_cmd", required=True, metavar="ACTION")
    add = with_config(user.add_parser("add", help=_("create an account (password from the terminal, twice)")))
    add.add_argument("name", help=_("account name (letters, digits, . _ @ -)"))
    add.add_argument("--role", required=True, choices=["viewer", "operator", "admin"], help=_("what it may do"))
    add.add_argument("--sites", default="", help=_("only these sites, comma-separated (default: every site)"))
    add.add_argument("--password-stdin", action="store_true", help=_("read the password from stdin, once"))
    for name, text in (("passwd", _("set a new password (ends the account's sessions)")),
                       ("disable", _("refuse the account's logins and end its sessions and tokens' use")),
                       ("enable", _("allow a disabled account again")), ("unlock", _("end a lockout now"))):
        p = with_config(user.add_parser(name, help=text))
        p.add_argument("name", help=_("account name"))
        if name == "passwd":
            p.add_argument("--password-stdin", action="store_true", help=_("read the password from stdin, once"))
    listing = with_config(user.add_parser("list", help=_("every account: role, sites, state")))
    listing.add_argument("--json", action="store_true", help=_("print JSON"))
    for p in user.choices.values():
        p.set_defaults(func=cmd_user)

    token = cloud.add_parser("api-token", help=_("the console's API tokens for automation")).add_subparsers(
        dest="token_action", required=True, metavar="ACTION")
    create = with_config(token.add_parser("create", help=_("make a token; its secret is printed once")))
    create.add_argument("--user", required=True, help=_("the account that owns it (it never exceeds that account)"))
    create.add_argument("--name", required=True, help=_("what it is for, e.g. 'prometheus'"))
    create.add_argument("--role", required=True, choices=["viewer", "operator", "admin"], help=_("what it may do"))
    create.add_argument("--sites", default="", help=_("only these sites, comma-separated (default: the owner's)"))
    create.add_argument("--days", type=float, help=_("expires after this many days (default: never)"))
    create.add_argument("--json", action="store_true", help=_("print JSON"))
    revoke = with_config(token.add_parser("revoke", help=_("revoke a token at once")))
    revoke.add_argument("id", help=_("the token's id (the part after mgw_)"))
    tlist = with_config(token.add_parser("list", help=_("every token (never a secret)")))
    tlist.add_argument("--json", action="store_true", help=_("print JSON"))
    for p in token.choices.values():
        p.set_defaults(func=cmd_token)

    audit = cloud.add_parser("audit", help=_("the console's audit log")).add_subparsers(
        dest="audit_cmd", required=True, metavar="ACTION")
    export = with_config(audit.add_parser("export",
                                          help=_("print the audit log, oldest first (the export is audited)")))
    export.add_argument("--format", choices=["csv", "jsonl"], default="csv", help=_("csv (default) or jsonl"))
    export.add_argument("--since", type=float, default=0.0, help=_("only entries at or after this Unix time"))
    export.set_defaults(func=cmd_audit)
