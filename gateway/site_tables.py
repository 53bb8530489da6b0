"""Site tables: the part of a box's configuration that provisioning may set for its site.

An enrolment token (``mgw cloud token``), a signed USB bundle (``mgw cloud bundle``) and the
``mgw provision`` command line may each carry edge configuration tables for the site the box
serves: the DICOM listener facing the modality (AE title, port, allowed peers, bind address),
the site's time zone, opening hours and region, and the uplink, spool and worklist policies.
Identity, broker and keys never come this way: they come from the enrolment itself.

These tables cross a trust boundary twice (typed in by a person, then carried to a box in an
enrolment answer or on a stick), so they are checked where they are made and again on the box
(``check``): only the tables and keys below, each of its type and range as the edge's own
configuration requires (``config.build`` and the edge's rules). ``merge`` layers them: the
token's, then the bundle's, then the command line's, each key of a later one winning.
"""

from __future__ import annotations

from typing import Any

from gateway import config
from gateway.core.errors import ConfigError
from gateway.i18n import _

TABLES: dict[str, type] = {
    "dicom": config.DicomSettings, "uplink": config.UplinkSettings, "spool": config.SpoolSettings,
    "worklist": config.WorklistSettings, "site": config.SiteSettings,
    "network": config.NetworkSettings,  # which links get an address (docs/operations.md, "Network")
}
Tables = dict[str, dict[str, Any]]


def check(tables: object, source: str) -> Tables:
    """``tables`` if they are site tables a box may take; ``ConfigError`` naming the table or key."""
    if not isinstance(tables, dict):
        raise ConfigError(_("{source}: site tables must be a table of tables").format(source=source))
    for table, keys in tables.items():
        if table not in TABLES:
            raise ConfigError(_("{source}: may not set [{table}] (allowed: {allowed})").format(
                source=source, table=table, allowed=", ".join(sorted(TABLES))))
        if not isinstance(keys, dict):
            raise ConfigError(_("{source}: [{table}] must be a table").format(source=source, table=table))
        built: Any = config.build(TABLES[table], keys, source, f"{table}.")
        _check_table(table, built, source)
    return tables


def _check_table(table: str, built: Any, source: str) -> None:
    if table == "site":
        try:
            config.site_rules_hours(built)
        except ValueError as exc:
            raise ConfigError(f"{source}: {exc}") from exc
    elif table == "network":
        from gateway.core.networkd import parse_patterns

        for name in ("uplink_interfaces", "modality_interfaces"):
            try:
                parse_patterns(getattr(built, name), f"network.{name}")
            except ValueError as exc:
                raise ConfigError(f"{source}: {exc}") from exc
    elif table == "dicom":
        from gateway.core.admission import parse_rules

        if not config.AE_TITLE.match(built.ae_title):
            raise ConfigError(_("{source}: 'dicom.ae_title' must be 1-16 printable characters").format(source=source))
        if not 0 < built.port < 65536:
            raise ConfigError(_("{source}: 'dicom.port' must be 1..65535").format(source=source))
        try:
            rules = parse_rules(built.allowed_peers)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from exc
        if any(not config.AE_TITLE.match(rule.ae_title) for rule in rules):
            raise ConfigError(_("{source}: 'dicom.allowed_peers' has an invalid AE title").format(source=source))


def merge(*layers: Tables) -> Tables:
    """The layers' tables, key by key, later layers winning."""
    out: Tables = {}
    for layer in layers:
        for table, keys in layer.items():
            out.setdefault(table, {}).update(keys)
    return out


def from_options(*, ae_title: str | None = None, port: int | None = None, peers: list[str] | None = None,
                 bind: str | None = None, time_zone: str | None = None, hours: list[str] | None = None,
                 region: str | None = None) -> Tables:
    """Site tables from command-line options; an option not given sets nothing."""
    given = {("dicom", "ae_title"): ae_title, ("dicom", "port"): port, ("dicom", "allowed_peers"): peers or None,
             ("dicom", "bind_host"): bind, ("site", "time_zone"): time_zone, ("site", "weekly_hours"): hours or None,
             ("site", "region"): region}
    out: Tables = {}
    for (table, key), value in given.items():
        if value is not None:
            out.setdefault(table, {})[key] = list(value) if isinstance(value, list) else value
    return out
