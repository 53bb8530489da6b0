"""The console's commissioning-report documents: a box's list, one report, its PDF. Framework-free.

Role-scoped like every document (``core/access.py``): a principal sees a report only when it may
see the box's site (the registry's, else the site the report names). Times are Unix seconds with
the site's zone beside them (``tz``) for the browser; the PDF prints them in that zone. The PDF's
texts are the console's own msgids (``web/app.js``) translated through its gettext catalogue
(``i18n.messages``), so the page and the PDF say the same in both languages.
"""

from __future__ import annotations

import base64
from typing import Any, Protocol

from gateway.adapters import fpdf_report, time_zone
from gateway.cloud.fleet import i18n
from gateway.cloud.fleet.overview import site_zone
from gateway.cloud.fleet.store import FleetStore
from gateway.config import FleetSettings
from gateway.core.access import Principal

MAX_LISTED = 50
OUTCOMES = {"ok": "passed", "FAIL": "failed", "skipped": "not applicable", "manual": "manual check not attested",
            "confirmed": "attested by the engineer"}
CHECK_NAMES = {"configuration": "configuration", "certificate": "certificate", "clock-skew": "clock skew",
               "broker": "broker (mutual TLS)", "echo-to-modality": "C-ECHO to the modality",
               "echo-to-box": "C-ECHO to this box", "modality-echo": "C-ECHO from the modality console",
               "end-to-end": "test object end to end", "test-study": "test study from the modality"}
RESULTS = {"PASSED": "PASSED", "FAILED": "FAILED", "INCOMPLETE": "INCOMPLETE"}


class Registry(Protocol):
    def site_of(self, box_id: str) -> str: ...


def _site(registry: Registry, row: dict[str, Any]) -> str:
    known = registry.site_of(row["box_id"])
    return row["site"] if known == row["box_id"] and row["site"] else known


def box_reports(store: FleetStore, registry: Registry, who: Principal, box_id: str) -> list[dict[str, Any]]:
    """The box's reports the principal may see (its site's), newest first."""
    rows = store.commissions.list(box_id=box_id, limit=MAX_LISTED)
    return [{**r, "site": _site(registry, r)} for r in rows if who.can_see(_site(registry, r))]


def report(store: FleetStore, registry: Registry, fleet: FleetSettings, who: Principal,
           report_id: str) -> dict[str, Any] | None:
    """One report with its signed document, signature and certificate, or None (absent or not visible)."""
    row = store.commissions.get(report_id)
    if row is None:
        return None
    site = _site(registry, row)
    if not who.can_see(site):
        return None
    row["site"] = site
    row["tz"] = site_zone(fleet, site) or row["document"].get("time_zone", "")
    row["verified"] = True  # stored only after its signature and certificate verified (commission_verify)
    return row


def _check_name(check: dict[str, Any], t: Any) -> str:
    name = CHECK_NAMES.get(check["key"])
    return str(t(name)) if name else str(check["name"])


def pdf(doc: dict[str, Any], lang: str) -> bytes:
    """The report ``report`` returned, as a PDF in ``lang`` (``en`` or ``zh-CN``)."""
    words = i18n.messages(lang)["messages"]

    def t(msgid: str, **values: Any) -> str:
        text = str(words.get(msgid, msgid))
        for key, value in values.items():
            text = text.replace("{" + key + "}", str(value))
        return text

    d, tz = doc["document"], doc["tz"]

    def at(seconds: float) -> str:
        return time_zone.format_local(seconds, tz)

    fields = [(t("Box"), d["box_id"]), (t("Site"), doc["site"]), (t("Engineer"), d["engineer"]),
              (t("Modality"), d["modality"]), (t("Make"), d["modality_make"]), (t("Model"), d["modality_model"]),
              (t("AE title"), d["modality_ae"]), (t("Address"), d["modality_address"]),
              (t("Started"), at(d["started_at"])), (t("Finished"), at(d["finished_at"])),
              (t("Time zone"), tz or "UTC"), (t("Software version"), d["software"]),
              (t("Report"), d["report_id"])]
    rows: list[tuple[str, ...]] = [
        (at(c["started_at"])[11:19], _check_name(c, t) + (f" ({t('manual')})" if c["manual"] else ""),
         t(OUTCOMES.get(c["outcome"], c["outcome"])), str(c["detail"])) for c in d["checks"]]
    fingerprint = base64.b64decode(doc["signature"])[:8].hex()
    return fpdf_report.render(fpdf_report.PdfReport(
        title=t("Commissioning report"), fields=fields,
        headings=(t("Time"), t("Check"), t("Outcome"), t("Detail")), widths=(0.12, 0.26, 0.17, 0.45), rows=rows,
        verdict=t("Result: {result}", result=t(RESULTS.get(d["result"], d["result"]))),
        footer=t("Signed by the box's key; the signature and certificate verified against the fleet CA "
                 "when received ({when}). Signature {sig}…", when=at(doc["received_at"]), sig=fingerprint)))
